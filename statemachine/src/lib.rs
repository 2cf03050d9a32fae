//! # echo-statemachine — every Echo decision, as a pure sans-IO machine
//!
//! Routing by `trade_id`, backpressure, retries, dedupe, ack stages and fan-out live here and
//! nowhere else. Each machine is a plain struct shaped like quinn-proto:
//!
//! ```text
//! machine.handle_*(now, input);              // one input: a message, a storage result
//! machine.handle_timeout(now);               // the deadline from poll_timeout() passed
//! while let Some(out) = machine.poll() {}    // drain outputs: Send, Persist…, Fired, …
//! let next = machine.poll_timeout();         // the one deadline the driver must wake it at
//! ```
//!
//! The contract every machine keeps:
//! - **No IO, no clock, no randomness.** Time is [`time::Instant`], passed in. This crate has
//!   no dependencies at all; CI checks that its tree holds no IO crate.
//! - **Storage is an output, its result an input.** A machine emits `Persist…`/journal writes
//!   and learns their fate from `Persisted`/`PersistFailed { retryable }`. Nothing that depends
//!   on a write is acknowledged before the write is reported durable, and every write is
//!   idempotent (keyed by intent id / command id) because a lost reply looks like a failure.
//! - **Recovery is a constructor.** `recover(config, durable_state)` rebuilds a machine from
//!   what was durable only, as after `kill -9`.
//! - **Deterministic.** `BTreeMap`/`VecDeque`/`Vec`, or hash maps that are never iterated: no
//!   iteration order of a `HashMap` reaches an output.
//! - **Every transition has a stable id** (`core.delivery.T07`) declared once with
//!   [`transitions!`]; the machine reports each one it takes as a [`spec::Fired`] output and
//!   SPEC.md's tables are generated from the same declarations.

pub mod agent;
pub mod config;
pub mod core;
pub mod ea;
pub mod histogram;
pub mod ids;
pub mod marketdata;
pub mod msg;
pub mod mutants;
pub mod policy;
pub mod spec;
pub mod telemetry;
pub mod time;

pub use time::{Duration, Instant};
