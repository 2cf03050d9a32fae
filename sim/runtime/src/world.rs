//! What outlives a host crash — the journal server's committed state, each agent's ledger,
//! each terminal's files, the broker's book — plus the fault knobs and the run's trace.
//!
//! Owns that shared state and nothing else: every host reaches it through one
//! `Arc<Mutex<World>>` (turmoil runs all hosts on one thread, so the lock is never contended
//! and never changes the order of events; it is there because the drivers' tasks are `Send`). It must never decide a fault itself: scenarios set the
//! knobs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use echo_sim::journal_book::JournalBook;
use echo_statemachine::agent::LedgerRecord;
use echo_statemachine::core::{JournalReply, JournalWrite};
use echo_statemachine::ea::slave::ExecutedRecord;
use echo_statemachine::ids::{CommandId, IntentId};
use echo_statemachine::msg::{Command, TradeIntent};

#[derive(Clone, Default)]
pub struct Shared(Arc<Mutex<World>>);

impl Shared {
    pub fn get(&self) -> MutexGuard<'_, World> {
        // One thread only: a poisoned lock means a checker already panicked.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub fn log(&self, what: impl AsRef<str>) {
        self.get().log(what)
    }
}

/// One order the broker took (the execution record the checkers read).
#[derive(Clone, Debug)]
pub struct Order {
    /// The client order id: the command id, or a split leg's (`ea::slave::leg_order_id`).
    pub order_id: CommandId,
    pub command: Command,
    pub ticket: i64,
    /// The lots the broker filled (a partial close's lots as the executor resolved them).
    pub volume: f64,
}

/// Journal server knobs (set by scenarios, read by the server host).
#[derive(Clone, Copy, Debug, Default)]
pub struct JournalKnobs {
    /// Extra time each batch takes before it commits.
    pub slow_ms: u64,
    /// Commit each batch but close the connection instead of replying.
    pub lose_replies: bool,
}

#[derive(Default)]
pub struct World {
    /// The journal server's committed state.
    pub journal: JournalBook,
    /// Batches in flight over the simulated wire (the frame carries only the id; see
    /// [`crate::journal`]).
    pub wire_batches: BTreeMap<u64, Vec<JournalWrite>>,
    pub wire_replies: BTreeMap<u64, Vec<JournalReply>>,
    pub next_wire_id: u64,
    pub journal_knobs: JournalKnobs,
    /// Each agent's fsynced ledger, by command id.
    pub ledgers: BTreeMap<String, BTreeMap<CommandId, LedgerRecord>>,
    /// The master terminal's IntentQueue file.
    pub master_file: BTreeMap<IntentId, TradeIntent>,
    /// Every intent the master made durable, in emission order.
    pub emitted: Vec<TradeIntent>,
    /// The slave terminal's executed-record file.
    pub slave_file: BTreeMap<CommandId, ExecutedRecord>,
    /// The broker's book in placement order, idempotent by command id.
    pub orders: Vec<Order>,
    pub next_ticket: i64,
    /// The run's trace: one line per event, simulated time first.
    pub trace: Vec<String>,
}

impl World {
    pub fn shared() -> Shared {
        Shared(Arc::new(Mutex::new(World {
            next_ticket: 1000,
            ..World::default()
        })))
    }

    /// Logs at the current host's simulated time (inside a host).
    pub fn log(&mut self, what: impl AsRef<str>) {
        let t = turmoil::sim_elapsed().unwrap_or_default().as_millis() as u64;
        self.log_at(t, what);
    }

    /// Logs at `ms` (the driver of the simulation, outside every host).
    pub fn log_at(&mut self, ms: u64, what: impl AsRef<str>) {
        self.trace.push(format!("{ms:>8} {}", what.as_ref()));
    }
}
