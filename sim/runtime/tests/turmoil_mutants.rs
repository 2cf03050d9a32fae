//! Each planted runtime bug (`echo_runtime::mutants`, feature `rt-mutants`) must make at least
//! one scenario of the turmoil suite fail at its fixed seed. One test runs them in turn (the
//! mutant switch is process-wide); it prints which scenario and seed caught each.
#![cfg(feature = "rt-mutants")]

use echo_runtime::mutants::{plant, Mutant};
use echo_sim_runtime::scenario;

/// The scenario that must catch each mutant (the others are tried too, and reported).
const EXPECTED: [(Mutant, &str); 3] = [
    (Mutant::AckBeforeCommit, "journal_loss_core_bounce"),
    (Mutant::TimerNotRearmed, "journal_faults"),
    (Mutant::DropWhenFull, "latency_loss"),
];

#[test]
fn every_runtime_mutant_is_caught() {
    let mut missed = Vec::new();
    for (m, expected) in EXPECTED {
        plant(Some(m));
        let sc = scenario::by_name(expected);
        let out = scenario::run(&sc, sc.seed);
        plant(None);
        if out.violations.is_empty() {
            missed.push(format!(
                "{m:?} not caught by {expected} seed {:#x}",
                sc.seed
            ));
        } else {
            eprintln!(
                "{m:?} caught by {expected} seed {:#x}: {}",
                sc.seed, out.violations[0]
            );
        }
    }
    assert!(missed.is_empty(), "{}", missed.join("\n"));
}

/// Which scenarios catch each mutant (`--ignored`; for the coverage note).
#[test]
#[ignore]
fn mutant_matrix() {
    for m in [
        Mutant::AckBeforeCommit,
        Mutant::TimerNotRearmed,
        Mutant::DropWhenFull,
    ] {
        for sc in scenario::all() {
            plant(Some(m));
            let out = scenario::run(&sc, sc.seed);
            plant(None);
            eprintln!(
                "{m:?} {} seed {:#x}: {}",
                sc.name,
                sc.seed,
                out.violations
                    .first()
                    .map(String::as_str)
                    .unwrap_or("NOT CAUGHT")
            );
        }
    }
}

/// `ECHO_SIM_RT_MUTANT=TimerNotRearmed ECHO_SIM_RT_SEEDS=1..20 cargo test … mutant_seed_sweep
/// -- --ignored --nocapture`: which scenario/seed pairs catch one mutant.
#[test]
#[ignore]
fn mutant_seed_sweep() {
    let name = std::env::var("ECHO_SIM_RT_MUTANT").unwrap_or_default();
    let m = [
        Mutant::AckBeforeCommit,
        Mutant::TimerNotRearmed,
        Mutant::DropWhenFull,
    ]
    .into_iter()
    .find(|m| format!("{m:?}") == name)
    .unwrap_or_else(|| panic!("ECHO_SIM_RT_MUTANT names no mutant: {name:?}"));
    let range = std::env::var("ECHO_SIM_RT_SEEDS").unwrap_or_else(|_| "1..5".into());
    let (from, to) = range
        .split_once("..")
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
        .unwrap_or_else(|| panic!("ECHO_SIM_RT_SEEDS must be FROM..TO, got {range:?}"));
    let only = std::env::var("ECHO_SIM_RT_SCENARIO").ok();
    for seed in from..to {
        for sc in scenario::all() {
            if only.as_deref().is_some_and(|o| o != sc.name) {
                continue;
            }
            plant(Some(m));
            let out = scenario::run(&sc, seed);
            plant(None);
            if let Some(v) = out.violations.first() {
                eprintln!("{m:?} {} seed {seed:#x}: {v}", sc.name);
            }
        }
    }
}
