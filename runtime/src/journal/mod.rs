//! The core's journal: makes `JournalWrite`s durable and reads back `CoreDurableState`.
//! (Being filled: SQLite and Postgres implementations behind one trait.)
