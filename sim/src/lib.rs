//! Echo's deterministic simulator.
//!
//! [`world::World`] wires the real `echo-statemachine` machines — core, agents, master and
//! slave EAs — to simulated storage, network and broker, stepped by an event queue in
//! simulated time; [`report::Report`] is the end-of-run ledger (emitted = confirmed + failed,
//! lost = 0, duplicated = 0); [`run`] turns a seed into a world and a verdict and shrinks a
//! failing seed; [`trace`] and [`render`] read traces back. `sim/COVERAGE.md` lists the SPEC.md
//! transitions the CI budget does not reach, and why. Nothing here may read a wall clock,
//! depend on thread scheduling or use unseeded randomness.

pub mod journal_book;
pub mod profile;
pub mod render;
pub mod report;
pub mod rng;
pub mod run;
pub mod trace;
pub mod world;

pub use echo_statemachine as machines;

use echo_statemachine::time::{Duration, Instant};

/// Runs one fault-free world to the end, calling `progress(done, total)` as intents settle.
pub fn run_world(
    cfg: world::WorldConfig,
    mut progress: impl FnMut(u64, u64),
) -> (report::Report, bool) {
    let mut w = world::World::new(cfg, 0, false);
    let total = w.script_len() as u64;
    let budget = Instant::from_millis(10 * 60 * 1_000);
    let mut settled = false;
    while w.now < budget {
        let until = w.now + Duration::from_millis(50);
        if w.run_until(until, true) {
            settled = true;
            break;
        }
        progress(w.book.emitted.len() as u64, total);
    }
    progress(w.book.emitted.len() as u64, total);
    (report::Report::of(&w), settled)
}
