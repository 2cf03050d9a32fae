//! Copier-grade trade policy: every per-subscription decision about *what* a slave does with a
//! master's trade, as pure functions.
//!
//! This module tree owns the decisions a desk configures per subscription (master → slave):
//! volume sizing and rounding, symbol mapping, reverse copying, SL/TP placement, partial closes
//! by fraction, filters, the price-deviation guard and catch-up expiry, and the one closed
//! [`SkipReason`] enum every non-copy carries. One concept per file. It must never hold state
//! across calls, do IO, read a clock or use randomness: callers (the core, the slave EA) pass in
//! every fact and act on the returned decision.

pub mod catchup;
pub mod deviation;
pub mod filters;
pub mod partial;
pub mod plan;
pub mod reason;
pub mod reverse;
pub mod sizing;
pub mod stops;
pub mod subscription;
pub mod symbols;
pub mod terms;
pub mod volume;

pub use reason::SkipReason;
pub use volume::{SymbolLimits, Volume};
