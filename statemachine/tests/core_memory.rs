//! The core's memory does not grow with history: after any number of intents have run to
//! completion, every internal table is back to a size that depends on the configuration only
//! (the recent-dedupe window, the heartbeat timer), never on how many intents came before.

mod support;

use echo_statemachine::core::CoreSizes;
use echo_statemachine::msg::IntentKind;
use support::core_harness::*;

/// Runs `rounds` open → modify → close lifecycles (one trade each, to both slaves of the
/// standard world), every delivery confirmed and journaled. Returns the largest table sizes
/// seen between intents.
fn run_rounds(h: &mut H, from: u64, rounds: u64) -> CoreSizes {
    let mut peak = CoreSizes::default();
    for r in from..from + rounds {
        let trade = format!("t{}", r % 8);
        for (n, kind) in [IntentKind::Open, IntentKind::Modify, IntentKind::Close]
            .into_iter()
            .enumerate()
        {
            let id = format!("i{r}-{n}");
            let cmds = h.accept(intent(&id, &trade, kind, 3 * r + n as u64));
            assert_eq!(cmds.len(), 2, "{id}: one command per slave");
            for c in &cmds {
                h.confirm(&c.command_id, c.slave.as_str(), 100 + r as i64);
            }
            let s = h.core.debug_sizes();
            peak = CoreSizes {
                intents: peak.intents.max(s.intents),
                deliveries: peak.deliveries.max(s.deliveries),
                by_command: peak.by_command.max(s.by_command),
                chains: peak.chains.max(s.chains),
                pending_ops: peak.pending_ops.max(s.pending_ops),
                timers: peak.timers.max(s.timers),
                persisting_trades: peak.persisting_trades.max(s.persisting_trades),
                recent_intents: peak.recent_intents.max(s.recent_intents),
                open_tickets: peak.open_tickets.max(s.open_tickets),
                outputs: peak.outputs.max(s.outputs),
                send_windows: peak.send_windows.max(s.send_windows),
            };
        }
        // The harness's own transcript grows; the core's state must not.
        h.fired = Vec::new();
        h.take();
    }
    peak
}

#[test]
fn tables_return_to_a_bound_independent_of_history() {
    let mut h = H::world();
    let peak_short = run_rounds(&mut h, 0, 50);
    let after_short = h.core.debug_sizes();
    let peak_long = run_rounds(&mut h, 50, 500);
    let after_long = h.core.debug_sizes();

    // Nothing of a finished intent is kept but its id in the capped recent window.
    let settled = CoreSizes {
        timers: 1,          // the heartbeat tick
        recent_intents: 16, // `recent_intents` of the test config
        ..CoreSizes::default()
    };
    assert_eq!(after_short, settled);
    assert_eq!(
        after_long, settled,
        "ten times the history, the same tables"
    );
    // Work in progress between intents is bounded by the work itself, not by history.
    assert_eq!(peak_short, peak_long);
    assert!(
        peak_long.deliveries == 0 && peak_long.open_tickets <= 2,
        "{peak_long:?}"
    );
}
