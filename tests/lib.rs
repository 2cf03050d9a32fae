//! Echo's workspace-level integration tests live in `tests/*.rs` beside this file.
//!
//! This library is intentionally empty: it exists so cargo treats the top-level `tests/`
//! directory as a crate whose integration tests can use every Echo crate together.
