//! The runtime's shared-memory hand-off protocols, written once over small traits so that the
//! SAME code runs on tokio in production (`echo-runtime` implements the traits with tokio's
//! primitives) and on loom in the models (`tests/loom_*.rs`, built with `--cfg loom`).
//!
//! This crate must never depend on tokio (tokio does not build under `--cfg loom`) and never
//! decide anything about a trade: it only moves requests and answers between tasks.

pub mod group_commit;
pub mod ledger_batches;
