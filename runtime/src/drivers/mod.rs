//! One tokio task per machine instance. (Being filled.)
