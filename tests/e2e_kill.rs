//! End-to-end with the real binaries on loopback: `kill -9` of the slaves' agent, of the
//! masters' agent and of the core while trades stream (SQLite and Postgres journals). Each
//! test ends with every intent CORE_ACCEPTED and every trade confirmed at every slave exactly
//! once, in order per trade.

#[path = "e2e_support.rs"]
mod support;

use std::time::Duration;

use support::{E2e, Journal, Setup};

const SETTLE: Duration = Duration::from_secs(40);

#[test]
fn kill9_of_the_slaves_agent_mid_stream_loses_nothing() {
    let mut t = E2e::start(
        "kill-slaves-agent",
        Setup {
            masters: 2,
            slaves: 3,
            ..Setup::default()
        },
    );
    t.at_percent(30);
    t.kill9_restart("agent-2", Duration::from_millis(1500));
    t.finish(SETTLE);
}

#[test]
fn kill9_of_the_masters_agent_mid_stream_loses_nothing() {
    let mut t = E2e::start(
        "kill-masters-agent",
        Setup {
            masters: 2,
            slaves: 3,
            ..Setup::default()
        },
    );
    t.at_percent(30);
    t.kill9_restart("agent-1", Duration::from_millis(1500));
    t.finish(SETTLE);
}

#[test]
fn kill9_of_the_core_mid_stream_on_postgres_loses_nothing() {
    let mut t = E2e::start(
        "kill-core-pg",
        Setup {
            masters: 1,
            slaves: 4,
            journal: Journal::Postgres,
            ..Setup::default()
        },
    );
    t.at_percent(40);
    t.kill9_restart("core", Duration::from_secs(1));
    t.finish(SETTLE);
}

#[test]
fn kill9_of_both_agents_and_the_core_on_postgres_loses_nothing() {
    let mut t = E2e::start(
        "kill-all-pg",
        Setup {
            masters: 2,
            slaves: 3,
            trades: 30,
            journal: Journal::Postgres,
            ..Setup::default()
        },
    );
    t.at_percent(20);
    t.kill9_restart("agent-2", Duration::from_secs(1));
    t.at_percent(45);
    t.kill9_restart("core", Duration::from_secs(1));
    t.at_percent(70);
    t.kill9_restart("agent-1", Duration::from_secs(1));
    t.finish(SETTLE);
}

#[test]
fn kill9_of_the_core_mid_stream_on_sqlite_loses_nothing() {
    let mut t = E2e::start(
        "kill-core-sqlite",
        Setup {
            masters: 2,
            slaves: 3,
            ..Setup::default()
        },
    );
    t.at_percent(50);
    t.kill9_restart("core", Duration::from_secs(1));
    t.finish(SETTLE);
}
