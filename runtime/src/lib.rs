//! Echo's production runtime — **stub**.
//!
//! This crate will own the tokio drivers that move bytes, time and storage results in and
//! out of the `echo-statemachine` machines (tonic gRPC, sqlx journal, etcd config, terminal
//! pipes). It is filled by the runtime issue; until then it only re-exports the machines so the
//! workspace layout is fixed. It must never decide anything about trades itself: every `if`
//! about a trade belongs in `echo-statemachine`.

pub use echo_statemachine as machines;
