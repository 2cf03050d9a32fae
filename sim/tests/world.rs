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
    let steps = echo_sim::world::workload::STEPS as u64;
    assert_eq!(r.intents_emitted, 2 * 20 * steps);
    assert_eq!(r.copies_expected, 2 * 20 * steps * 5);
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

/// Market data: in every seed with feed bursts, every critical session event produced is
/// delivered exactly once (after crashes too), ticks are delivered, and coalescing, stale and
/// old-routing drops all happen somewhere in the budget — so the reference model is exercised.
#[test]
fn market_data_keeps_every_critical_event_and_drops_only_ticks() {
    use echo_sim::world::World;
    let cfg = echo_sim::run::RunOptions::default().world_config();
    let (mut coalesced, mut stale, mut routing, mut bursts) = (0, 0, 0, 0);
    for seed in 0..30 {
        let mut w = World::new(cfg.clone(), seed, true);
        assert!(w.run(), "seed {seed} settles:\n{}", w.pending_summary());
        assert!(w.violations.is_empty(), "seed {seed}: {:?}", w.violations);
        let md = &w.md;
        assert_eq!(
            md.critical_delivered, md.critical_produced,
            "seed {seed}: {md:?}"
        );
        assert!(md.ticks_delivered <= md.ticks_sent, "seed {seed}: {md:?}");
        if w.workload.md_burst > 0 && md.ticks_sent > 0 {
            bursts += 1;
            assert!(md.ticks_delivered > 0, "seed {seed}: {md:?}");
        }
        coalesced += md.coalesced;
        stale += md.stale_dropped;
        routing += md.routing_dropped;
    }
    assert!(bursts >= 10, "only {bursts} seeds had a feed burst");
    assert!(
        coalesced > 0 && stale > 0 && routing > 0,
        "{coalesced} {stale} {routing}"
    );
}

/// Seeds with a legacy (compat) agent: the core accepts it in compat mode and, without any
/// stage ack from it, every copy still ends confirmed or FAILED with a reason.
#[test]
fn a_legacy_agent_still_gets_every_copy_settled() {
    use echo_sim::report::Report;
    use echo_sim::world::World;
    let cfg = echo_sim::run::RunOptions::default().world_config();
    let mut compat = 0;
    for seed in 0..40 {
        let mut w = World::new(cfg.clone(), seed, true);
        if w.workload.compat_agent.is_none() {
            continue;
        }
        compat += 1;
        assert!(w.run(), "seed {seed} settles:\n{}", w.pending_summary());
        assert!(
            w.fired.contains("core.registry.T02"),
            "seed {seed}: compat hello"
        );
        let r = Report::of(&w);
        assert!(r.is_clean() && r.lost.is_empty(), "seed {seed}:\n{r}");
        let settled: u64 =
            r.confirmed_per_slave.values().sum::<u64>() + r.failed.values().sum::<u64>();
        assert_eq!(settled, r.copies_expected, "seed {seed}:\n{r}");
    }
    assert!(compat >= 5, "only {compat} seeds had a legacy agent");
}
