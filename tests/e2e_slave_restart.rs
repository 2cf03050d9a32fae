//! End-to-end with the real binaries on loopback: a slave terminal that disappears (`kill -9`)
//! mid-stream and comes back later — while the masters still stream, and after they are done.
//! The agent keeps its commands in its ledger and the core keeps re-sending; the slave executes
//! each command once (its executed-command file survives the crash), in order per trade.

#[path = "e2e_support.rs"]
mod support;

use std::time::Duration;

use support::{E2e, Setup};

const SETTLE: Duration = Duration::from_secs(40);

#[test]
fn a_slave_terminal_killed_mid_stream_and_back_gets_every_trade_once() {
    let mut t = E2e::start(
        "slave-back-mid-stream",
        Setup {
            masters: 1,
            slaves: 4,
            ..Setup::default()
        },
    );
    t.at_percent(25);
    t.kill9_restart("slave-2", Duration::from_secs(3));
    t.finish(SETTLE);
}

#[test]
fn a_slave_terminal_back_after_the_masters_finished_gets_every_trade_once() {
    let mut t = E2e::start(
        "slave-back-late",
        Setup {
            masters: 2,
            slaves: 3,
            trades: 20,
            ..Setup::default()
        },
    );
    t.at_percent(20);
    t.assert_mid_stream("slave-3");
    if let Err(e) = t.cluster.kill9("slave-3") {
        t.fail(&format!("kill -9 slave-3: {e}"));
    }
    if !t
        .cluster
        .wait_for(Duration::from_secs(30), |c| c.masters_done())
    {
        t.fail("the masters did not finish while slave-3 was down");
    }
    // The others are served meanwhile; slave-3 still has deliveries open.
    std::thread::sleep(Duration::from_secs(2));
    if let Err(e) = t.cluster.spawn("slave-3") {
        t.fail(&format!("restarting slave-3: {e}"));
    }
    t.cluster
        .faults
        .push("SIGKILL slave-3 at 20 %; back after the masters finished".into());
    t.finish(SETTLE);
}

/// Down for longer than the agent's and the core's retry budgets (the demo's timings: agent
/// pipe retries 10 × 100 ms backoff, core 20 retries of a 1 s ack timeout).
#[test]
fn a_slave_terminal_down_longer_than_the_retry_budgets_gets_every_trade_once() {
    let mut t = E2e::start(
        "slave-back-after-budget",
        Setup {
            masters: 1,
            slaves: 3,
            trades: 20,
            timings: echo_runtime::app::cluster::Timings::default(),
            ..Setup::default()
        },
    );
    t.at_percent(20);
    t.kill9_restart("slave-1", Duration::from_secs(12));
    t.finish(SETTLE);
}
