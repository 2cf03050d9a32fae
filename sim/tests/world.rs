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

/// Subscriptions change at run time in the seeds that draw it: the report expects each intent
/// at exactly the slaves its admission planned, some plan differs from the home slaves, and
/// the seeds still pass.
#[test]
fn subscription_changes_decide_the_copies_of_later_intents() {
    use echo_sim::report::Report;
    use echo_sim::world::{Capacity, World};
    let cfg = echo_sim::run::RunOptions::default().world_config();
    assert_eq!(cfg.capacity, Capacity::TestMin);
    let mut differing = 0;
    let mut changed_seeds = 0;
    for seed in 0..40 {
        let mut w = World::new(cfg.clone(), seed, true);
        assert!(w.run(), "seed {seed} settles:\n{}", w.pending_summary());
        if w.book.faults.get("subscription").copied().unwrap_or(0) == 0 {
            continue;
        }
        changed_seeds += 1;
        let r = Report::of(&w);
        assert!(r.is_clean() && r.lost.is_empty(), "seed {seed}:\n{r}");
        let home = |m: usize| -> Vec<String> {
            w.slaves_of(m)
                .into_iter()
                .map(|s| w.slave_accounts()[s].to_string())
                .collect()
        };
        let mut expected = 0;
        for (intent, plan) in &w.book.plan {
            let m: usize = intent.as_str()[1..]
                .split('-')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            let plan: Vec<String> = plan.iter().map(|a| a.to_string()).collect();
            if plan != home(m) {
                differing += 1;
            }
            expected += plan.len() as u64;
        }
        let never_journaled: u64 = w
            .book
            .emitted
            .keys()
            .filter(|i| !w.book.plan.contains_key(*i))
            .count() as u64
            * cfg.slaves_per_master as u64;
        assert_eq!(r.copies_expected, expected + never_journaled, "seed {seed}");
    }
    assert!(
        changed_seeds >= 5,
        "only {changed_seeds} seeds changed a subscription"
    );
    assert!(
        differing > 0,
        "no intent was planned differently from its home slaves"
    );
}

/// A core that missed a subscription change plans intents against the old set: the admission
/// check reports it (the checker is not vacuous).
#[test]
fn a_core_that_misses_a_subscription_change_is_caught() {
    use echo_sim::world::World;
    let cfg = echo_sim::run::RunOptions::default().world_config();
    let caught = (0..60).find(|&seed| {
        let mut w = World::new(cfg.clone(), seed, true);
        w.core_misses_subscription_changes = true;
        w.run();
        w.violations
            .iter()
            .any(|v| v.what.contains("against the subscriptions in force"))
    });
    assert!(
        caught.is_some(),
        "no seed in 0..60 caught a core planning with stale subscriptions"
    );
    println!("caught by seed {caught:?}");
}
