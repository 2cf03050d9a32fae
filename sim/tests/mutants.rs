//! The simulator is not vacuous: every planted bug (echo_statemachine::mutants) must be
//! reported within a fixed seed budget, and the test prints which seed caught it.

use echo_sim::run::{run_seed, RunOptions, Verdict};
use echo_statemachine::mutants::Mutant;

/// Seeds tried per mutant before the simulator is declared blind to it.
const BUDGET: u64 = 300;

fn first_catch(m: Mutant) -> Option<(u64, Verdict, String)> {
    let opts = RunOptions {
        mutant: Some(m),
        ..RunOptions::default()
    };
    (0..BUDGET).find_map(|seed| {
        let o = run_seed(seed, &opts, None);
        assert!(
            !o.summary.contains("cannot plant mutants"),
            "this test build must plant mutants (dev-dependency feature sim-mutants)"
        );
        (o.verdict != Verdict::Pass).then_some((seed, o.verdict, o.summary))
    })
}

#[test]
fn every_planted_bug_is_caught_within_the_budget() {
    let mut blind = Vec::new();
    for &m in Mutant::ALL {
        match first_catch(m) {
            Some((seed, verdict, summary)) => {
                let why = summary
                    .lines()
                    .find(|l| {
                        l.contains("SAFETY")
                            || l.contains("INCONSISTENT")
                            || l.contains("LOST")
                            || l.contains("DUPLICATED")
                            || l.contains("panicked")
                    })
                    .unwrap_or("")
                    .trim()
                    .to_string();
                println!(
                    "mutant {:<26} caught by seed {seed:>3} ({verdict:?}): {why}",
                    m.name()
                );
            }
            None => blind.push(m.name()),
        }
    }
    assert!(
        blind.is_empty(),
        "the simulator missed planted bugs: {blind:?}"
    );
}

#[test]
fn without_a_mutant_the_same_seeds_pass() {
    let opts = RunOptions::default();
    for seed in 0..20 {
        let o = run_seed(seed, &opts, None);
        assert_eq!(o.verdict, Verdict::Pass, "seed {seed}:\n{}", o.summary);
    }
}
