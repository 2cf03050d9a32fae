//! Echo's workspace-level integration tests live in `tests/*.rs` beside this file.
//!
//! This library exists so cargo treats the top-level `tests/` directory as a crate whose
//! integration tests can use every Echo crate together; it holds only shared test helpers.

/// A real etcd started by the test (`etcd` from Debian's `etcd-server`).
#[path = "support/etcd_server.rs"]
pub mod etcd_server;
