//! The framed protocol between an agent and its terminals. (Being filled.)
