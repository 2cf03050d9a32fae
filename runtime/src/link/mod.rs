//! The agent ↔ core gRPC stream. (Being filled.)
