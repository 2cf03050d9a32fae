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
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            capacity: Capacity::TestMin,
            scale: 1,
            trades: 12,
            mutant: None,
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
        let mut w = World::new(cfg, seed, true);
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
