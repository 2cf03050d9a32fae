//! Echo's deterministic simulator — **stub**.
//!
//! The simulator issue fills this crate: one seed drives one world of real
//! `echo-statemachine` machines through network, journal, ledger and crash faults, checking
//! safety at every step and liveness after the faults heal. It must never use wall-clock time,
//! thread scheduling or unseeded randomness.

pub use echo_statemachine as machines;
