//! The fault-free world copies every trade to every slave exactly once, in order, and a run is
//! deterministic.

use echo_sim::run_world;
use echo_sim::world::WorldConfig;

#[test]
fn every_trade_reaches_every_slave_once_in_order() {
    let cfg = WorldConfig {
        masters: 2,
        slaves_per_master: 5,
        trades: 20,
        ..WorldConfig::default()
    };
    let (r, quiet) = run_world(cfg, |_, _| {});
    assert!(quiet, "the world must settle:\n{r}");
    assert_eq!(r.intents_emitted, 2 * 20 * 4);
    assert_eq!(r.copies_expected, 2 * 20 * 4 * 5);
    assert!(r.is_clean(), "{r}");
    assert_eq!(
        r.confirmed_per_slave.values().sum::<u64>(),
        r.copies_expected,
        "{r}"
    );
    assert_eq!(r.confirmed_per_slave.len(), 10);
}

#[test]
fn same_config_same_run() {
    let run = || {
        let (r, _) = run_world(
            WorldConfig {
                trades: 10,
                ..WorldConfig::default()
            },
            |_, _| {},
        );
        format!("{r}")
    };
    assert_eq!(run(), run());
}
