//! The agent ↔ core gRPC stream (`echo.v1.EchoLink/Connect`): wire conversions, the core's
//! server (TLS, token auth, one supervisor mailbox) and the agent's reconnecting client.
//! It moves messages only; every decision about them is a machine's.

pub mod client;
pub mod convert;
pub mod server;
pub mod tls;
