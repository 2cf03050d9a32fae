//! Each planted runtime bug (`echo_runtime::mutants`, feature `rt-mutants`) must make at least
//! one scenario of the turmoil suite fail at its fixed seed. One test runs them in turn (the
//! mutant switch is process-wide); it prints which scenario and seed caught each.
#![cfg(feature = "rt-mutants")]

use echo_runtime::mutants::{plant, Mutant};
use echo_sim_runtime::scenario;

/// The scenario that must catch each mutant (the others are tried too, and reported).
const EXPECTED: [(Mutant, &str); 3] = [
    (Mutant::AckBeforeCommit, "journal_faults"),
    (Mutant::TimerNotRearmed, "calm"),
    (Mutant::DropWhenFull, "partition_hold"),
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
