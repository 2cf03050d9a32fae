//! One seed, one run: build the world the seed describes, run its fault phase, heal, check
//! liveness, and classify the outcome.
//!
//! This module owns the mapping from a seed and a profile name to a world and from a finished
//! world to an [`Outcome`]. It must never let anything but the seed choose what happens.

use std::panic::{catch_unwind, AssertUnwindSafe};

use echo_statemachine::time::Duration;

use crate::report::Report;
use crate::world::{Capacity, World, WorldConfig};

/// How a seed ended. Exit codes of `echo-sim` follow it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// A safety property broke (duplicate execution, order, ack before durable, …).
    Safety,
    /// After healing, something did not settle (lost, or still pending past the bound).
    Liveness,
    /// A machine or the world panicked.
    Crash,
}

impl Verdict {
    pub fn exit_code(&self) -> u8 {
        match self {
            Verdict::Pass => 0,
            Verdict::Safety => 1,
            Verdict::Liveness => 2,
            Verdict::Crash => 3,
        }
    }
}

/// Options shared by every seed of a run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub capacity: Capacity,
    /// Multiplies masters (2 × scale) and trades.
    pub scale: usize,
    pub trades: usize,
    /// A planted bug to switch on for this run (needs the `sim-mutants` machines).
    pub mutant: Option<echo_statemachine::mutants::Mutant>,
    /// Rates (by name) forced to zero after the seed drew them: a smaller fault schedule.
    pub zeroed: Vec<String>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            capacity: Capacity::TestMin,
            scale: 1,
            trades: 12,
            mutant: None,
            zeroed: Vec::new(),
        }
    }
}

impl RunOptions {
    pub fn world_config(&self) -> WorldConfig {
        WorldConfig {
            masters: 2 * self.scale,
            slaves_per_master: 5,
            trades: self.trades * self.scale,
            capacity: self.capacity,
            fault_phase: Duration::from_millis(4_000),
            liveness_bound: Duration::from_millis(300_000),
            ..WorldConfig::default()
        }
    }
}

#[derive(Clone, Debug)]
pub struct Outcome {
    pub seed: u64,
    pub verdict: Verdict,
    pub profile: String,
    pub summary: String,
    pub trace: Option<String>,
    pub steps: u64,
    pub intents: u64,
    /// Transition ids taken during the run.
    pub fired: std::collections::BTreeSet<&'static str>,
}

/// Runs one seed; `trace` records the NDJSON trace with the given commit id.
pub fn run_seed(seed: u64, opts: &RunOptions, trace: Option<&str>) -> Outcome {
    let cfg = opts.world_config();
    if !echo_statemachine::mutants::set(opts.mutant) {
        return Outcome {
            seed,
            verdict: Verdict::Crash,
            profile: String::new(),
            summary: "this build cannot plant mutants: build echo-sim with --features mutants"
                .into(),
            trace: None,
            steps: 0,
            intents: 0,
            fired: Default::default(),
        };
    }
    let result = catch_unwind(AssertUnwindSafe(|| {
        let mut w = World::with_zeroed(cfg, seed, true, &opts.zeroed);
        if let Some(commit) = trace {
            w.enable_trace(commit);
        }
        let settled = w.run();
        let report = Report::of(&w);
        let verdict = if !report.safety.is_empty()
            || !report.duplicated.is_empty()
            || !report.inconsistent.is_empty()
        {
            Verdict::Safety
        } else if !settled || !report.lost.is_empty() {
            Verdict::Liveness
        } else {
            Verdict::Pass
        };
        let mut summary = format!("{report}");
        if !settled {
            summary.push_str("\nstill pending after the liveness bound:\n");
            summary.push_str(&w.pending_summary());
        }
        (
            verdict,
            w.describe_mix(),
            summary,
            w.trace.take(),
            w.steps,
            report.intents_emitted,
            std::mem::take(&mut w.fired),
        )
    }));
    echo_statemachine::mutants::set(None);
    match result {
        Ok((verdict, profile, summary, trace, steps, intents, fired)) => Outcome {
            seed,
            verdict,
            profile,
            summary,
            trace,
            steps,
            intents,
            fired,
        },
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            Outcome {
                seed,
                verdict: Verdict::Crash,
                profile: String::new(),
                summary: format!("panicked: {msg}"),
                trace: None,
                steps: 0,
                intents: 0,
                fired: Default::default(),
            }
        }
    }
}

/// The result of shrinking a failing seed: the rates that could be zeroed with the seed still
/// failing the same way, and the rates it still needs.
#[derive(Clone, Debug)]
pub struct Shrunk {
    pub verdict: Verdict,
    pub zeroed: Vec<String>,
    pub needed: Vec<String>,
    pub runs: u64,
}

/// Shrinks seed `seed` to a smaller fault schedule: tries zeroing each non-zero rate of its
/// fault profile and workload mix in turn, keeping each zero under which the seed still fails
/// with the same verdict. `None` if the seed passes. Deterministic: the same seed shrinks the
/// same way.
pub fn shrink(seed: u64, opts: &RunOptions) -> Option<Shrunk> {
    let first = run_seed(seed, opts, None);
    if first.verdict == Verdict::Pass {
        return None;
    }
    let mut w = World::with_zeroed(opts.world_config(), seed, true, &opts.zeroed);
    let mut names: Vec<&'static str> = Vec::new();
    for (name, rate) in w.profile.rates_mut() {
        if *rate > 0 {
            names.push(name);
        }
    }
    for (name, rate) in w.workload.rates_mut() {
        if *rate > 0 {
            names.push(name);
        }
    }
    let mut zeroed = opts.zeroed.clone();
    let mut needed: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut runs = 1;
    // Zeroing one rate shifts every later draw, so a rate needed in one pass may be
    // removable in the next: repeat until a pass removes nothing.
    for _pass in 0..4 {
        let mut removed = false;
        for name in std::mem::take(&mut needed) {
            let mut trial = opts.clone();
            trial.zeroed = zeroed.clone();
            trial.zeroed.push(name.clone());
            runs += 1;
            if run_seed(seed, &trial, None).verdict == first.verdict {
                zeroed = trial.zeroed;
                removed = true;
            } else {
                needed.push(name);
            }
        }
        if !removed {
            break;
        }
    }
    Some(Shrunk {
        verdict: first.verdict,
        zeroed,
        needed,
        runs,
    })
}
