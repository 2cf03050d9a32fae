//! The agent ledger (filled below).
