//! The simulated journal server host and the [`BatchStore`] the core's real group-commit
//! writer commits through.
//!
//! Owns the server's behaviour: a batch arrives, waits `slow_ms`, commits (applied to the
//! durable state in [`World`]) and is answered — unless the host crashed first (the batch is
//! lost: uncommitted work does not survive a restart) or `lose_replies` is on (committed, reply
//! lost). Frames on the simulated TCP carry a batch id; the writes themselves sit in a side
//! table of [`World`], since the journal's wire protocol (SQL) is not what is under test here.
//! It must never answer a batch it did not commit.

use std::collections::BTreeMap;
use std::time::Duration;

use echo_runtime::journal::{BatchOk, BatchStore, JournalError};
use echo_statemachine::core::{
    CoreDurableState, DeliveryRecord, DeliveryStatus, JournalReply, JournalWrite,
};
use echo_statemachine::ids::{AccountId, TradeId};
use echo_statemachine::msg::IntentKind;
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
                let knobs = world.get().journal;
                if knobs.slow_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(knobs.slow_ms)).await;
                }
                {
                    let mut w = world.get();
                    let Some(batch) = w.wire_batches.remove(&id) else {
                        return;
                    };
                    let replies = batch.iter().map(|b| apply(&mut w, b)).collect();
                    w.wire_replies.insert(id, replies);
                    w.log(format!("journal commit batch={id} writes={}", batch.len()));
                }
                if world.get().journal.lose_replies {
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

fn apply(w: &mut World, write: &JournalWrite) -> JournalReply {
    match write {
        JournalWrite::AcceptIntent { intent, deliveries } => {
            if w.journal_intents.contains_key(&intent.intent_id) {
                let unfinished = w
                    .journal_deliveries
                    .values()
                    .filter(|d| {
                        d.intent_id == intent.intent_id && d.status == DeliveryStatus::Inflight
                    })
                    .cloned()
                    .collect();
                return JournalReply::IntentExisted { unfinished };
            }
            w.journal_intents
                .insert(intent.intent_id.clone(), intent.clone());
            for d in deliveries {
                w.journal_deliveries.insert(d.command_id.clone(), d.clone());
            }
            JournalReply::Done
        }
        JournalWrite::FinishDelivery {
            command_id,
            status,
            stage,
            attempts,
            slave_ticket,
            reason,
            ..
        } => {
            if let Some(d) = w.journal_deliveries.get_mut(command_id) {
                if d.status == DeliveryStatus::Inflight {
                    d.status = *status;
                    d.stage = *stage;
                    d.attempts = *attempts;
                    d.slave_ticket = *slave_ticket;
                    d.reason = *reason;
                }
            }
            JournalReply::Done
        }
        JournalWrite::UpdateStage {
            command_id, stage, ..
        } => {
            if let Some(d) = w.journal_deliveries.get_mut(command_id) {
                if d.status == DeliveryStatus::Inflight && *stage > d.stage {
                    d.stage = *stage;
                }
            }
            JournalReply::Done
        }
        _ => JournalReply::Done,
    }
}

/// What a restarted core loads: unfinished deliveries and open slave tickets.
pub fn durable_state(w: &World) -> CoreDurableState {
    let unfinished = w
        .journal_deliveries
        .values()
        .filter(|d| d.status == DeliveryStatus::Inflight)
        .cloned()
        .collect();
    let mut acked: Vec<&DeliveryRecord> = w
        .journal_deliveries
        .values()
        .filter(|d| d.status == DeliveryStatus::Acked)
        .collect();
    acked.sort_by_key(|d| d.master_seq);
    let mut open: BTreeMap<(TradeId, AccountId), i64> = BTreeMap::new();
    for d in acked {
        let k = (d.trade_id.clone(), d.slave.clone());
        match d.kind {
            IntentKind::Open => {
                if let Some(t) = d.slave_ticket {
                    open.insert(k, t);
                }
            }
            IntentKind::Close => {
                open.remove(&k);
            }
            _ => {}
        }
    }
    CoreDurableState {
        unfinished,
        open_tickets: open.into_iter().map(|((t, s), x)| (t, s, x)).collect(),
    }
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
