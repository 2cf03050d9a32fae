//! The agent's crash-safe ledger. (Being filled.)
