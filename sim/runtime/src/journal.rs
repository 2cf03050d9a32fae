//! The simulated journal server host and the [`BatchStore`] the core's real group-commit
//! writer commits through.
//!
//! Owns the server's behaviour: a batch arrives, waits `slow_ms`, commits (applied to the
//! durable state in [`World`]) and is answered — unless the host crashed first (the batch is
//! lost: uncommitted work does not survive a restart) or `lose_replies` is on (committed, reply
//! lost). Frames on the simulated TCP carry a batch id; the writes themselves sit in a side
//! table of [`World`], since the journal's wire protocol (SQL) is not what is under test here.
//! It must never answer a batch it did not commit.

use std::time::Duration;

use echo_runtime::journal::{BatchOk, BatchStore, JournalError};
use echo_statemachine::core::{CoreDurableState, JournalReply, JournalWrite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::world::{Shared, World};

pub const JOURNAL_HOST: &str = "journal";
pub const JOURNAL_PORT: u16 = 5432;

/// The journal server host's program.
pub async fn serve(world: Shared) -> turmoil::Result {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", JOURNAL_PORT)).await?;
    loop {
        let (mut conn, _) = listener.accept().await?;
        let world = world.clone();
        tokio::spawn(async move {
            loop {
                let Ok(id) = conn.read_u64().await else {
                    return;
                };
                let knobs = world.get().journal_knobs;
                if knobs.slow_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(knobs.slow_ms)).await;
                }
                {
                    let mut w = world.get();
                    let Some(batch) = w.wire_batches.remove(&id) else {
                        return;
                    };
                    let replies = batch.iter().map(|b| w.journal.apply(b)).collect();
                    w.wire_replies.insert(id, replies);
                    w.log(format!("journal commit batch={id} writes={}", batch.len()));
                }
                if world.get().journal_knobs.lose_replies {
                    world.log(format!("journal reply lost batch={id}"));
                    return;
                }
                if conn.write_u64(id).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// What a restarted core loads.
pub fn durable_state(w: &World) -> CoreDurableState {
    w.journal.durable_state()
}

/// The core's connection to the journal server, reconnecting after any failure.
pub struct RemoteStore {
    pub world: Shared,
    conn: Option<turmoil::net::TcpStream>,
}

impl RemoteStore {
    pub fn new(world: Shared) -> Self {
        RemoteStore { world, conn: None }
    }

    async fn round_trip(&mut self, writes: &[&JournalWrite]) -> std::io::Result<BatchOk> {
        // Taken out for the round trip and put back only after it: a round trip the writer's
        // batch timeout abandons leaves no half-used connection behind.
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => turmoil::net::TcpStream::connect((JOURNAL_HOST, JOURNAL_PORT)).await?,
        };
        let id = {
            let mut w = self.world.get();
            w.next_wire_id += 1;
            let id = w.next_wire_id;
            w.wire_batches
                .insert(id, writes.iter().map(|w| (*w).clone()).collect());
            id
        };
        conn.write_u64(id).await?;
        let back = conn.read_u64().await?;
        if back != id {
            // A late reply to a batch the writer already timed out: this connection is stale.
            return Err(std::io::ErrorKind::InvalidData.into());
        }
        let replies = self
            .world
            .get()
            .wire_replies
            .remove(&back)
            .ok_or(std::io::ErrorKind::InvalidData)?;
        self.conn = Some(conn);
        let new_work = writes.iter().zip(&replies).any(|(w, r)| {
            matches!(w, JournalWrite::AcceptIntent { .. }) && *r == JournalReply::Done
        });
        Ok(BatchOk { replies, new_work })
    }
}

impl BatchStore for RemoteStore {
    fn run_batch<'a>(
        &'a mut self,
        writes: &'a [&'a JournalWrite],
    ) -> futures::future::BoxFuture<'a, Result<BatchOk, JournalError>> {
        Box::pin(async move {
            match self.round_trip(writes).await {
                Ok(ok) => Ok(ok),
                Err(e) => {
                    self.conn = None;
                    Err(JournalError::Database {
                        retryable: true,
                        source: sqlx::Error::Io(e),
                    })
                }
            }
        })
    }
}
