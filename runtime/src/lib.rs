//! Echo's production runtime: thin tokio drivers that move bytes, time and storage results in
//! and out of the `echo-statemachine` machines.
//!
//! It must never decide anything about trades itself: every `if` about a trade belongs in
//! `echo-statemachine`. Each module owns one kind of IO:
//!
//! | module | owns |
//! |---|---|
//! | [`journal`] | the core's journal: one trait, SQLite (embedded default) and Postgres (production), group commit, wake-ups |
//! | [`ledger`] | the agent's crash-safe ledger (redb) |
//! | [`config`] | typed config from a TOML file (embedded default) or etcd, validated key by key, watched live |
//! | [`pipe`] | the framed protocol between an agent and its terminals, over Unix sockets / Windows named pipes |
//! | [`terminal`] | `echo terminal`: the reference master / slave terminal that speaks the pipe protocol |
//! | [`link`] | the agent ↔ core gRPC stream: conversions, TLS, token auth |
//! | [`marketdata`] | the market-data path: sharded bounded queues, micro-batches, one coalescing buffer per shard |
//! | [`histogram`] | fixed-size log-bucketed latency histograms |
//! | [`drivers`] | one tokio task per machine, feeding inputs, draining outputs, re-arming the timer |

pub use echo_statemachine as machines;

/// mimalloc instead of the system allocator for every binary linking the runtime: the drivers
/// allocate per message (wire conversions, commands, JSON frames), and under load glibc's
/// malloc/free was the first entry of the tokio workers' profile (`e2e_bench`, 2026-12-03).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod app;
pub mod config;
pub mod drivers;
pub use echo_statemachine::histogram;
pub mod journal;
pub mod ledger;
pub mod link;
pub mod marketdata;
#[cfg(feature = "rt-mutants")]
pub mod mutants;
pub mod observe;
pub mod pipe;
pub mod terminal;
