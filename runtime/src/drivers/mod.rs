//! One tokio task per machine instance: it owns the machine (`&mut`, no lock), takes inputs
//! from bounded channels, drains every output after each input and re-arms the one timer from
//! `poll_timeout()`. Drivers move bytes, time and storage results; they never decide about a
//! trade.

pub mod agent;
pub mod clock;
pub mod core;
