//! The EA-side machines: the master's durable IntentQueue and the slave's at-most-once executor.
pub mod master;
pub mod slave;
