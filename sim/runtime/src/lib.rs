//! Echo's turmoil suite: the real runtime drivers (`echo_runtime::drivers`), the real gRPC
//! link (`echo_runtime::link`, tonic over turmoil's simulated TCP) and the real journal writer
//! (group commit, batch timeout, retry classification) against a simulated journal server
//! host, with crashes, bounces, partitions, held links, latency and message loss.
//!
//! Owns the simulated world around the runtime: hosts, the journal server, the stand-in
//! terminals and their files, the broker, faults, the trace and the checkers. It must never
//! model a copy of runtime code: every driver, link and writer here is the production one; only
//! what production does through SQL, redb, Unix sockets or a broker is simulated.

pub mod checks;
pub mod journal;
pub mod net;
pub mod scenario;
pub mod terminals;
pub mod world;
