//! Planted runtime bugs, compiled only with the `rt-mutants` feature, so the turmoil suite
//! (`sim/runtime`) can show that it catches a dropped hand-off, a timer not re-armed and an ack
//! sent before the journal committed.
//!
//! Owns the switch only: one process-wide mutant, chosen by the suite before a simulation runs.
//! It must never be enabled in a build that ships, and no code path may consult it without
//! the feature (every hook is `#[cfg(feature = "rt-mutants")]`).

use std::sync::atomic::{AtomicU8, Ordering};

/// The planted bugs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mutant {
    /// The journal writer answers `Ok` before the batch's transaction resolved (and whatever
    /// storage then says is ignored).
    AckBeforeCommit = 1,
    /// The core driver arms its timer once and never re-arms it: not after an input, not after
    /// it fired.
    TimerNotRearmed = 2,
    /// `Journal::try_submit` drops a write when the writer's queue is momentarily full instead
    /// of answering it `Failed{retryable}` at once.
    DropWhenFull = 3,
}

static ACTIVE: AtomicU8 = AtomicU8::new(0);

/// Plants `m` (or none) for everything that runs from now on in this process.
pub fn plant(m: Option<Mutant>) {
    ACTIVE.store(m.map_or(0, |m| m as u8), Ordering::SeqCst);
}

/// Whether `m` is planted.
pub fn is(m: Mutant) -> bool {
    ACTIVE.load(Ordering::SeqCst) == m as u8
}
