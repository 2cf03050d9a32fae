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

/// A failing seed shrinks to a smaller fault schedule that still fails the same way, and the
/// schedule it reports replays to that failure.
#[test]
fn a_failing_seed_shrinks_to_fewer_faults_that_still_fail() {
    let opts = RunOptions {
        mutant: Some(Mutant::GiveUpWithoutCancel),
        ..RunOptions::default()
    };
    let (seed, verdict) = (0..BUDGET)
        .find_map(|seed| {
            let o = run_seed(seed, &opts, None);
            (o.verdict != Verdict::Pass).then_some((seed, o.verdict))
        })
        .expect("the mutant is caught");
    let s = echo_sim::run::shrink(seed, &opts).expect("a failing seed shrinks");
    assert_eq!(s.verdict, verdict);
    assert!(!s.zeroed.is_empty(), "seed {seed}: nothing could be zeroed");
    let replay = RunOptions {
        zeroed: s.zeroed.clone(),
        ..opts.clone()
    };
    let o = run_seed(seed, &replay, None);
    assert_eq!(o.verdict, verdict, "seed {seed} with {:?}", s.zeroed);
    let mut w = echo_sim::world::World::with_zeroed(replay.world_config(), seed, true, &s.zeroed);
    let mut rates = w.profile.rates_mut();
    rates.extend(w.workload.rates_mut());
    for (name, rate) in rates {
        let zeroed = s.zeroed.iter().any(|z| z == name);
        assert_eq!(
            *rate == 0,
            zeroed || !s.needed.iter().any(|n| n == name),
            "{name}"
        );
    }
    // Without the mutant the same small schedule passes: the failure is the bug's.
    let clean = RunOptions {
        mutant: None,
        ..replay
    };
    assert_eq!(run_seed(seed, &clean, None).verdict, Verdict::Pass);
    println!("seed {seed} shrank to {:?} ({} runs)", s.needed, s.runs);
}
