//! The reference slave terminal: the real `SlaveExecutor` in front of a simulated broker.
//!
//! Owns the slave's executed-command file (write-ahead, result and cancel rows, appended and
//! fsynced in one batch before their results are fed back), the simulated broker and its book
//! (durable, so a restarted terminal's `QueryOrder` finds what the broker did), and the pipe
//! loop. It must never place, skip, deduplicate or acknowledge a command on its own — the
//! executor decides every `PlaceOrder` and every `pipe_ack` — and never feed `Ok` for a write
//! that is not on disk. The broker never deduplicates: if the executor ever placed a command
//! twice, the book would show it twice, which is what a demo must be able to see. The terminal
//! also reports what an MT terminal tells its EA (`ea::slave::Fact`): the account (`--balance`),
//! each symbol's info (FX limits) and a price that wanders up to `--price-drift-points` from the
//! master's fill, so the slave's copy terms (sizing, margin, deviation guard) act on real
//! numbers; the broker fills opens at that price.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;

use echo_statemachine::ea::slave::{
    BrokerOutcome, DurableRow, ExecutedRecord, Fact, Output, PersistError, SlaveConfig,
    SlaveExecutor,
};
use echo_statemachine::ids::{stable_hash, CommandId, Symbol};
use echo_statemachine::msg::{AgentToEa, Command, CommandBody, PendingResolution, Side};
use echo_statemachine::policy::terms::{AccountFacts, SymbolFacts};
use echo_statemachine::policy::{SymbolLimits, Volume};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::store::{line, wall_ms, wall_us, JsonlFile, StoreError};
use super::{
    send_frame, sleep_until_opt, spawn_link, Clock, LinkEvent, Outcome, TerminalArgs, TerminalError,
};
use crate::pipe::frame::{
    action_str, command_from_value, command_value, execution_from_value, execution_value,
};
use crate::pipe::{AgentFrame, EaFrame};

/// `[[ticket, lots], …]` of a positions row (open positions, pending orders, a split
/// position's legs); `None` if any pair is malformed or its lots are not finite.
fn ticket_lots(v: &Value) -> Option<Vec<(i64, f64)>> {
    v.as_array()?
        .iter()
        .map(|p| match (p.get(0)?.as_i64(), p.get(1)?.as_f64()) {
            (Some(t), Some(lots)) if lots.is_finite() => Some((t, lots)),
            _ => None,
        })
        .collect()
}

/// `<data>/<account>.commands.jsonl`
pub fn commands_path(args: &TerminalArgs) -> PathBuf {
    args.data_dir
        .join(format!("{}.commands.jsonl", args.account))
}

/// `<data>/<account>.broker.jsonl`
pub fn broker_path(args: &TerminalArgs) -> PathBuf {
    args.data_dir.join(format!("{}.broker.jsonl", args.account))
}

/// A compaction runs when the file holds at least this many times more rows than the
/// executor's durable image, and at least `COMPACT_FACTOR × max_executed_retained` rows: so
/// the file stays below about twice the image plus one window of commands.
pub const COMPACT_FACTOR: usize = 2;

/// The executor's file as [`DurableRow`]s, in file order (a `positions` row marks where a
/// compaction's snapshot sits; `retained` rows before it are records with their result).
pub fn read_commands_file(
    path: &std::path::Path,
    rows: &[Value],
) -> Result<Vec<DurableRow>, StoreError> {
    let mut records: Vec<DurableRow> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    for (n, row) in rows.iter().enumerate() {
        let corrupt = |detail: String| StoreError::Corrupt {
            path: path.to_path_buf(),
            line: n + 1,
            detail,
        };
        let command = || {
            row.get("command")
                .ok_or_else(|| corrupt("row without command".into()))
                .and_then(|v| command_from_value(v).map_err(|e| corrupt(format!("{e:?}"))))
        };
        let result = || {
            row.get("result")
                .ok_or_else(|| corrupt("row without result".into()))
                .and_then(|v| execution_from_value(v).map_err(|e| corrupt(format!("{e:?}"))))
        };
        match row.get("op").and_then(Value::as_str) {
            Some("executing") => {
                let command = command()?;
                index.insert(command.command_id.to_string(), records.len());
                records.push(DurableRow::Record(ExecutedRecord {
                    command,
                    result: None,
                }));
            }
            Some("cancelled") | Some("retained") => {
                let (command, result) = (command()?, result()?);
                index.insert(command.command_id.to_string(), records.len());
                records.push(DurableRow::Record(ExecutedRecord {
                    command,
                    result: Some(result),
                }));
            }
            Some("executed") => {
                let result = result()?;
                match index.get(result.command_id.as_str()) {
                    Some(&i) => {
                        if let Some(DurableRow::Record(r)) = records.get_mut(i) {
                            r.result = Some(result);
                        }
                    }
                    None => {
                        return Err(corrupt(format!(
                            "result for {} without its write-ahead row",
                            result.command_id
                        )))
                    }
                }
            }
            Some("positions") => {
                let bad = || {
                    corrupt(
                        "positions row without open [[ticket, lots]] and closed [ticket]".into(),
                    )
                };
                let open = row.get("open").and_then(ticket_lots).ok_or_else(bad)?;
                // A pending order's ticket and lots; absent in rows written before pending
                // orders existed (none were held then).
                let pendings = match row.get("pendings") {
                    None => Vec::new(),
                    Some(v) => ticket_lots(v).ok_or_else(bad)?,
                };
                let closed = row
                    .get("closed")
                    .and_then(Value::as_array)
                    .ok_or_else(bad)?
                    .iter()
                    .map(|t| t.as_i64().ok_or_else(bad))
                    .collect::<Result<Vec<_>, _>>()?;
                // The legs of split positions, `[[id, [[ticket, lots], …]], …]`; absent in
                // rows written before split positions existed (none were held then).
                let split = match row.get("split") {
                    None => Vec::new(),
                    Some(v) => v
                        .as_array()
                        .ok_or_else(bad)?
                        .iter()
                        .map(|p| {
                            let id = p.get(0).and_then(Value::as_i64).ok_or_else(bad)?;
                            let legs = p.get(1).and_then(ticket_lots).ok_or_else(bad)?;
                            Ok((id, legs))
                        })
                        .collect::<Result<Vec<_>, StoreError>>()?,
                };
                records.push(DurableRow::Positions {
                    open,
                    pendings,
                    closed,
                    split,
                });
            }
            _ => return Err(corrupt("row without a known op".into())),
        }
    }
    Ok(records)
}

/// The lines of a compacted commands file for the executor's durable image: `retained`
/// rows (command + result), the `positions` row, and `executing` rows for the commands in
/// flight, marked `"compacted":true` so a reader of the live file (the load test's stage
/// latencies) does not take them for new write-aheads. [`read_commands_file`] reads them back
/// to the same rows.
pub fn compact_lines(image: &[DurableRow]) -> Vec<String> {
    image.iter().map(compact_line).collect()
}

/// One line of [`compact_lines`].
pub fn compact_line(row: &DurableRow) -> String {
    match row {
        DurableRow::Record(ExecutedRecord {
            command,
            result: Some(result),
        }) => line(
            &json!({"op": "retained", "command": command_value(command), "result": execution_value(result)}),
        ),
        DurableRow::Record(ExecutedRecord {
            command,
            result: None,
        }) => {
            line(&json!({"op": "executing", "command": command_value(command), "compacted": true}))
        }
        DurableRow::Positions {
            open,
            pendings,
            closed,
            split,
        } => {
            let mut row = json!({
                "op": "positions",
                "open": open.iter().map(|(t, v)| json!([t, v])).collect::<Vec<_>>(),
                "pendings": pendings.iter().map(|(t, v)| json!([t, v])).collect::<Vec<_>>(),
                "closed": closed,
            });
            if let (false, Some(m)) = (split.is_empty(), row.as_object_mut()) {
                let split: Vec<Value> = split
                    .iter()
                    .map(|(id, legs)| {
                        json!([
                            id,
                            legs.iter().map(|(t, v)| json!([t, v])).collect::<Vec<_>>()
                        ])
                    })
                    .collect();
                m.insert("split".into(), Value::Array(split));
            }
            line(&row)
        }
    }
}

/// Answers the simulated broker keeps in memory for `QueryOrder`: far more than the commands
/// a slave EA can have unfinished (`max_pending`, 64), which are all a restart asks about.
pub const BROKER_ORDERS_KEPT: usize = 16_384;

/// One order the simulated broker answered.
#[derive(Clone, Debug)]
struct BookEntry {
    outcome: BrokerOutcome,
}

/// A broker that fills at the command's price and keeps a durable book keyed by client order id.
struct Broker {
    file: JsonlFile,
    /// The latest [`BROKER_ORDERS_KEPT`] answers by client order id (the book file keeps
    /// them all), oldest first in `order_ids`.
    orders: BTreeMap<String, BookEntry>,
    order_ids: VecDeque<String>,
    /// ticket → (open volume, open price)
    positions: BTreeMap<i64, (f64, f64)>,
    /// ticket → (volume, price) of a pending order not yet resolved (this broker has no price
    /// feed: its pending orders fill only on the master's trigger).
    pendings: BTreeMap<i64, (f64, f64)>,
    next_ticket: i64,
    reject_rate: f64,
    seed: u64,
    /// Most lots one order may open (`--max-lots`): above it the order is rejected.
    max_lots: f64,
}

impl Broker {
    fn open(args: &TerminalArgs) -> Result<Broker, StoreError> {
        let (file, rows) = JsonlFile::open(&broker_path(args))?;
        let mut b = Broker {
            file,
            orders: BTreeMap::new(),
            order_ids: VecDeque::new(),
            positions: BTreeMap::new(),
            pendings: BTreeMap::new(),
            next_ticket: 500_001,
            reject_rate: args.reject_rate,
            seed: args.seed,
            max_lots: args.max_lots,
        };
        for row in &rows {
            let id = row.get("command_id").and_then(Value::as_str).unwrap_or("");
            let ticket = row.get("ticket").and_then(Value::as_i64).unwrap_or(0);
            let price = row.get("price").and_then(Value::as_f64).unwrap_or(0.0);
            let volume = row.get("volume").and_then(Value::as_f64).unwrap_or(0.0);
            let filled = row.get("status").and_then(Value::as_str) == Some("FILLED");
            let outcome = if filled {
                match row.get("action").and_then(Value::as_str) {
                    Some("EXECUTE") => {
                        b.positions.insert(ticket, (volume, price));
                    }
                    Some("PLACE_PENDING") => {
                        b.pendings.insert(ticket, (volume, price));
                    }
                    Some("RESOLVE_PENDING") => {
                        let from = row.get("from_ticket").and_then(Value::as_i64);
                        if let Some(from) = from {
                            b.pendings.remove(&from);
                            b.positions.remove(&from);
                        }
                    }
                    Some("TRIGGER_PENDING") => {
                        let from = row.get("from_ticket").and_then(Value::as_i64);
                        if let Some(from) = from {
                            b.pendings.remove(&from);
                        }
                        b.positions.insert(ticket, (volume, price));
                    }
                    Some("CLOSE") => {
                        // A partial close moved the rest from `from_ticket` to `ticket`.
                        let from = row
                            .get("from_ticket")
                            .and_then(Value::as_i64)
                            .unwrap_or(ticket);
                        let held = b.positions.remove(&from);
                        let left = held.map_or(0.0, |p| p.0) - volume;
                        if let (Some((_, p)), true) = (held, left > 1e-9) {
                            b.positions.insert(ticket, (left, p));
                        }
                    }
                    _ => {}
                }
                b.next_ticket = b.next_ticket.max(ticket + 1);
                BrokerOutcome::Filled {
                    ticket,
                    price,
                    volume,
                }
            } else {
                BrokerOutcome::Rejected {
                    reason: row
                        .get("reason")
                        .and_then(Value::as_str)
                        .unwrap_or("rejected")
                        .to_string(),
                }
            };
            // The first answer for a client order id is the one a query returns.
            b.remember(id, outcome);
        }
        Ok(b)
    }

    /// Deterministic per command: the same command is always accepted or always rejected.
    fn rejects(&self, id: &CommandId) -> bool {
        if self.reject_rate <= 0.0 {
            return false;
        }
        let h = stable_hash(id.as_str().as_bytes()) ^ self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let h = stable_hash(&h.to_le_bytes());
        (h as f64 / u64::MAX as f64) < self.reject_rate
    }

    /// Executes one order; returns its outcome and the book row to make durable.
    fn place(&mut self, c: &Command, fill: Option<f64>) -> (BrokerOutcome, String) {
        let outcome = if self.rejects(&c.command_id) {
            BrokerOutcome::Rejected {
                reason: "simulated broker rejection".into(),
            }
        } else {
            match &c.body {
                CommandBody::Execute { volume, .. } if *volume > self.max_lots + 1e-9 => {
                    BrokerOutcome::Rejected {
                        reason: "volume above the maximum per order".into(),
                    }
                }
                CommandBody::Execute { volume, price, .. } => {
                    let ticket = self.next_ticket;
                    self.next_ticket += 1;
                    let price = fill.unwrap_or(*price);
                    self.positions.insert(ticket, (*volume, price));
                    BrokerOutcome::Filled {
                        ticket,
                        price,
                        volume: *volume,
                    }
                }
                CommandBody::Modify { slave_ticket, .. } => {
                    match self.positions.get(slave_ticket) {
                        Some(&(v, p)) => BrokerOutcome::Filled {
                            ticket: *slave_ticket,
                            price: p,
                            volume: v,
                        },
                        None => BrokerOutcome::Rejected {
                            reason: "no open position".into(),
                        },
                    }
                }
                CommandBody::Close {
                    slave_ticket,
                    volume,
                } => match self.positions.get(slave_ticket).copied() {
                    Some((open, p)) => {
                        self.positions.remove(slave_ticket);
                        let (v, ticket) = if *volume <= 0.0 || *volume >= open - 1e-9 {
                            (open, *slave_ticket)
                        } else {
                            // As MT4: what a partial close leaves is a new ticket.
                            let t = self.next_ticket;
                            self.next_ticket += 1;
                            self.positions.insert(t, (open - volume, p));
                            (*volume, t)
                        };
                        BrokerOutcome::Filled {
                            ticket,
                            price: p,
                            volume: v,
                        }
                    }
                    None => BrokerOutcome::Rejected {
                        reason: "no open position".into(),
                    },
                },
                // The executor resolves a fraction to lots before placing it.
                CommandBody::ClosePart { .. } => BrokerOutcome::Rejected {
                    reason: "partial close placed without its lots".into(),
                },
                CommandBody::PlacePending { volume, price, .. } => {
                    let ticket = self.next_ticket;
                    self.next_ticket += 1;
                    self.pendings.insert(ticket, (*volume, *price));
                    BrokerOutcome::Filled {
                        ticket,
                        price: *price,
                        volume: *volume,
                    }
                }
                CommandBody::ModifyPending {
                    slave_ticket,
                    price,
                    ..
                } => {
                    if let Some(p) = self.pendings.get_mut(slave_ticket) {
                        p.1 = *price;
                    }
                    match (
                        self.pendings.get(slave_ticket),
                        self.positions.get(slave_ticket),
                    ) {
                        (Some(&(_, p)), _) | (None, Some(&(_, p))) => BrokerOutcome::Filled {
                            ticket: *slave_ticket,
                            price: p,
                            volume: 0.0,
                        },
                        (None, None) => BrokerOutcome::Rejected {
                            reason: "no such order".into(),
                        },
                    }
                }
                CommandBody::ResolvePending {
                    slave_ticket,
                    resolution: PendingResolution::Cancel,
                    ..
                } => {
                    if let Some((_, p)) = self.pendings.remove(slave_ticket) {
                        BrokerOutcome::Filled {
                            ticket: *slave_ticket,
                            price: p,
                            volume: 0.0,
                        }
                    } else if let Some((v, p)) = self.positions.remove(slave_ticket) {
                        // It had filled: closed, as the master decided.
                        BrokerOutcome::Filled {
                            ticket: *slave_ticket,
                            price: p,
                            volume: v,
                        }
                    } else {
                        BrokerOutcome::Rejected {
                            reason: "no such order".into(),
                        }
                    }
                }
                // The executor turns a trigger into TriggerPending before placing it.
                CommandBody::ResolvePending { .. } => BrokerOutcome::Rejected {
                    reason: "trigger placed without converging it".into(),
                },
                CommandBody::TriggerPending {
                    slave_ticket,
                    market,
                    ..
                } => {
                    if let Some(&(v, p)) = self.positions.get(slave_ticket) {
                        BrokerOutcome::Filled {
                            ticket: *slave_ticket,
                            price: p,
                            volume: v,
                        }
                    } else if let Some((v, p)) = self.pendings.remove(slave_ticket) {
                        if *market {
                            let ticket = self.next_ticket;
                            self.next_ticket += 1;
                            let price = fill.unwrap_or(p);
                            self.positions.insert(ticket, (v, price));
                            BrokerOutcome::Filled {
                                ticket,
                                price,
                                volume: v,
                            }
                        } else {
                            // Deleted, nothing opened: done, with no volume (a Rejected
                            // would say the pending order still rests).
                            BrokerOutcome::Filled {
                                ticket: *slave_ticket,
                                price: 0.0,
                                volume: 0.0,
                            }
                        }
                    } else {
                        BrokerOutcome::Rejected {
                            reason: "no such order".into(),
                        }
                    }
                }
            }
        };
        let (status, ticket, price, volume, reason) = match &outcome {
            BrokerOutcome::Filled {
                ticket,
                price,
                volume,
            } => ("FILLED", *ticket, *price, *volume, None),
            BrokerOutcome::Rejected { reason } => ("REJECTED", 0, 0.0, 0.0, Some(reason.clone())),
        };
        let row = line(&json!({
            "command_id": c.command_id.as_str(),
            "intent_id": c.intent_id.as_str(),
            "trade_id": c.trade_id.as_str(),
            "slave": c.slave.as_str(),
            "action": action_str(&c.body),
            "status": status,
            "ticket": ticket,
            "from_ticket": match &c.body {
                CommandBody::Close { slave_ticket, .. }
                | CommandBody::ModifyPending { slave_ticket, .. }
                | CommandBody::ResolvePending { slave_ticket, .. }
                | CommandBody::TriggerPending { slave_ticket, .. } => *slave_ticket,
                _ => ticket,
            },
            "price": price,
            "volume": volume,
            "reason": reason,
            "executed_at_ms": wall_ms(),
            "executed_at_us": wall_us(),
        }));
        self.remember(c.command_id.as_str(), outcome.clone());
        (outcome, row)
    }

    /// Keeps the first answer for a client order id, forgetting the oldest past
    /// [`BROKER_ORDERS_KEPT`]: only a command in doubt after a restart is ever asked about, and
    /// it is among the last few the EA placed.
    fn remember(&mut self, id: &str, outcome: BrokerOutcome) {
        if self.orders.contains_key(id) {
            return;
        }
        self.orders.insert(id.to_string(), BookEntry { outcome });
        self.order_ids.push_back(id.to_string());
        while self.order_ids.len() > BROKER_ORDERS_KEPT {
            if let Some(old) = self.order_ids.pop_front() {
                self.orders.remove(&old);
            }
        }
    }

    /// What became of a client order id (a driver maps "unknown" to Rejected).
    fn query(&self, id: &CommandId) -> BrokerOutcome {
        match self.orders.get(id.as_str()) {
            Some(e) => e.outcome.clone(),
            None => BrokerOutcome::Rejected {
                reason: "no order with this client order id".into(),
            },
        }
    }
}

/// One order the executor placed: a command's (`leg` None: client order id = command id) or a
/// leg of a split (its index and client order id).
struct Order {
    command_id: CommandId,
    leg: Option<(u32, CommandId)>,
    body: CommandBody,
}

struct Slave {
    args: TerminalArgs,
    clock: Clock,
    ex: SlaveExecutor,
    file: JsonlFile,
    broker: Broker,
    /// Commands written ahead and not yet answered by the broker (for `PlaceOrder` details).
    commands: BTreeMap<CommandId, Command>,
    /// Rows in the commands file (complete lines), for the compaction threshold.
    file_rows: usize,
    /// After a failed compaction, the next is tried at this many rows.
    compact_deferred_until: usize,
    /// Orders waiting for the simulated fill delay, in placement order, with the body the
    /// executor placed (a partial close arrives resolved to lots).
    delayed: VecDeque<(tokio::time::Instant, Order)>,
    writer: Option<mpsc::Sender<EaFrame>>,
    /// symbol → (reference price: the last master fill seen, drift in points).
    prices: BTreeMap<Symbol, (f64, i64)>,
    drift_steps: u64,
}

fn slave_config(args: &TerminalArgs) -> SlaveConfig {
    SlaveConfig {
        max_executed_retained: args.max_executed_retained.max(1),
        min_retained_ms: args.min_retained_ms,
        ..SlaveConfig::new(args.account.as_str())
    }
}

/// Margin one lot needs on the reference terminal's broker (1:100 leverage on 100 000 units).
const MARGIN_PER_LOT: f64 = 1_000.0;

pub(super) async fn run(
    args: TerminalArgs,
    shutdown: impl Future<Output = ()>,
) -> Result<Outcome, TerminalError> {
    let clock = Clock::new();
    let (file, rows) = JsonlFile::open(&commands_path(&args))?;
    let file_rows = rows.len();
    let records = read_commands_file(file.path(), &rows)?;
    drop(rows);
    let broker = Broker::open(&args)?;
    let ex = SlaveExecutor::recover_rows(slave_config(&args), records);
    // The commands in doubt, for their PlaceOrder details (a query never places, but the
    // executor may not ask before a restart).
    let commands: BTreeMap<CommandId, Command> = ex
        .durable_image()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|r| match r {
            DurableRow::Record(ExecutedRecord {
                command,
                result: None,
            }) => Some((command.command_id.clone(), command)),
            _ => None,
        })
        .collect();
    let in_doubt = commands.len();
    tracing::info!(account = %args.account, rows = file_rows, retained = ex.metrics().retained_executed, in_doubt, "slave terminal starting");
    let mut s = Slave {
        args,
        clock,
        ex,
        file,
        broker,
        commands,
        file_rows,
        compact_deferred_until: 0,
        delayed: VecDeque::new(),
        writer: None,
        prices: BTreeMap::new(),
        drift_steps: 0,
    };
    let now = s.clock.now();
    s.ex.handle_fact(
        now,
        Fact::Account(AccountFacts {
            balance: s.args.balance,
            equity: s.args.balance,
            free_margin: s.args.balance,
        }),
    );
    s.main_loop(shutdown).await
}

impl Slave {
    async fn main_loop(
        &mut self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<Outcome, TerminalError> {
        let (_link, mut link_rx) = spawn_link(&self.args);
        tokio::pin!(shutdown);
        let mut progress = tokio::time::interval(std::time::Duration::from_secs(5));
        let mut drift = tokio::time::interval(std::time::Duration::from_millis(100));
        loop {
            self.drain();
            let timer = self.ex.poll_timeout().map(|at| self.clock.to_tokio(at));
            let fill_at = self.delayed.front().map(|(at, _)| *at);
            tokio::select! {
                _ = &mut shutdown => {
                    tracing::info!(account = %self.args.account, "slave terminal stopping");
                    return Ok(Outcome::Stopped);
                }
                _ = sleep_until_opt(timer) => self.ex.handle_timeout(self.clock.now()),
                _ = sleep_until_opt(fill_at) => {
                    let now = tokio::time::Instant::now();
                    let mut due = Vec::new();
                    while self.delayed.front().is_some_and(|(at, _)| *at <= now) {
                        if let Some((_, order)) = self.delayed.pop_front() {
                            due.push(order);
                        }
                    }
                    self.fill(due);
                }
                ev = link_rx.recv() => match ev {
                    Some(ev) => {
                        self.on_link(ev);
                        // Take what else already arrived: one drain, one fsync for all of it.
                        for _ in 0..1_024 {
                            let Ok(ev) = link_rx.try_recv() else { break };
                            self.on_link(ev);
                        }
                    }
                    None => return Err(TerminalError::Io(std::io::Error::other("pipe task ended"))),
                },
                _ = drift.tick(), if self.args.price_drift_points > 0 => self.drift_prices(),
                _ = progress.tick() => {
                    let m = self.ex.metrics();
                    tracing::info!(account = %self.args.account, executed = m.executed, placed = m.placed, duplicates = m.duplicates, pending = m.pending, rejected = m.rejected_by_broker, gate_open = self.ex.is_gate_open(), "slave progress");
                }
            }
        }
    }

    fn on_link(&mut self, ev: LinkEvent) {
        let now = self.clock.now();
        match ev {
            LinkEvent::Connected(w) => self.writer = Some(w),
            LinkEvent::Closed => {
                self.writer = None;
                self.ex.handle_pipe_closed(now);
            }
            LinkEvent::Frame(Ok(AgentFrame::Msg(msg))) => {
                if let AgentToEa::Command(Command {
                    body: CommandBody::Execute { symbol, price, .. },
                    ..
                }) = &msg
                {
                    self.report_symbol(symbol, *price);
                }
                self.ex.handle_from_agent(now, msg)
            }
            LinkEvent::Frame(Ok(AgentFrame::Error(e))) => {
                tracing::warn!(code = %e.code, message = %e.message, ref_type = ?e.ref_type, ref_id = ?e.ref_id, "agent reported a pipe error");
            }
            LinkEvent::Frame(Err(e)) => {
                // A command we cannot read is not acknowledged at all: the agent's ack timer
                // re-sends it, and the error frame tells its operator why.
                tracing::warn!(error = %e, "malformed frame from the agent");
                if e.deserves_reply() {
                    send_frame(&self.writer, EaFrame::Error(e.to_error_frame()));
                }
            }
        }
    }

    /// Performs every pending output until the executor has nothing more to say.
    fn drain(&mut self) {
        loop {
            let mut rows: Vec<String> = Vec::new();
            let mut ops = Vec::new();
            let mut place: Vec<Order> = Vec::new();
            // (client order id, command id and leg of a split)
            let mut queries: Vec<(CommandId, Option<(CommandId, u32)>)> = Vec::new();
            while let Some(out) = self.ex.poll() {
                match out {
                    Output::Fired(f) => tracing::trace!(fired = ?f, "ea.slave"),
                    Output::ToAgent(msg) => send_frame(&self.writer, EaFrame::Msg(msg)),
                    Output::PersistExecuting { op, command } => {
                        rows.push(line(
                            &json!({"op": "executing", "command": command_value(&command), "at_us": wall_us()}),
                        ));
                        ops.push(op);
                        self.commands.insert(command.command_id.clone(), command);
                    }
                    Output::PersistExecuted {
                        op,
                        command_id,
                        result,
                    } => {
                        rows.push(line(&json!({"op": "executed", "command_id": command_id.as_str(), "result": execution_value(&result), "at_ms": wall_ms()})));
                        ops.push(op);
                        self.commands.remove(&command_id);
                    }
                    Output::PersistCancelled {
                        op,
                        command,
                        result,
                    } => {
                        rows.push(line(&json!({"op": "cancelled", "command": command_value(&command), "result": execution_value(&result), "at_ms": wall_ms()})));
                        ops.push(op);
                    }
                    // The executor may have sized an open or resolved a partial close itself:
                    // the broker executes its body, not the command as written.
                    Output::PlaceOrder { command_id, body } => place.push(Order {
                        command_id,
                        leg: None,
                        body,
                    }),
                    Output::PlaceLeg {
                        command_id,
                        leg,
                        order_id,
                        body,
                    } => place.push(Order {
                        command_id,
                        leg: Some((leg, order_id)),
                        body,
                    }),
                    Output::QueryOrder { command_id } => queries.push((command_id, None)),
                    Output::QueryLeg {
                        command_id,
                        leg,
                        order_id,
                    } => queries.push((order_id, Some((command_id, leg)))),
                }
            }
            if ops.is_empty() && place.is_empty() && queries.is_empty() {
                self.maybe_compact();
                return;
            }
            let now = self.clock.now();
            if !ops.is_empty() {
                let result = self.file.append(&rows);
                self.file_rows += rows.len();
                if let Err(e) = &result {
                    tracing::error!(path = %self.file.path().display(), error = %e, "command file write failed; the executor retries");
                }
                for op in ops {
                    let r = match &result {
                        Ok(()) => Ok(()),
                        Err(_) => Err(PersistError { retryable: true }),
                    };
                    self.ex.handle_persist_result(now, op, r);
                }
            }
            for (id, leg) in queries {
                let outcome = self.broker.query(&id);
                tracing::info!(order_id = %id, outcome = ?outcome, "in-doubt order answered by the broker");
                match leg {
                    Some((command_id, leg)) => {
                        self.ex.handle_leg_result(now, command_id, leg, outcome)
                    }
                    None => self.ex.handle_broker_result(now, id, outcome),
                }
            }
            if self.args.fill_delay.is_zero() {
                self.fill(place);
            } else {
                let at = tokio::time::Instant::now() + self.args.fill_delay;
                self.delayed
                    .extend(place.into_iter().map(|order| (at, order)));
            }
        }
    }

    /// Rewrites the commands file to the executor's durable image once it holds
    /// [`COMPACT_FACTOR`]× more rows (atomically: temp file, fsync, rename, fsync dir — a
    /// crash at any point leaves the old file or the new one, each recovering the same
    /// executor). Only between writes: the image is `None` while one is in flight.
    fn maybe_compact(&mut self) {
        let m = self.ex.metrics();
        let floor = COMPACT_FACTOR * self.args.max_executed_retained.max(1);
        let image_rows = m.retained_executed + m.pending + 1;
        if self.file_rows < floor
            || self.file_rows < COMPACT_FACTOR * image_rows
            || self.file_rows < self.compact_deferred_until
        {
            return;
        }
        let Some(rows) = self.ex.durable_rows() else {
            return;
        };
        // Streamed: one row cloned and written at a time, never the whole image in memory.
        let started = std::time::Instant::now();
        match self.file.rewrite_lines(rows.map(|r| compact_line(&r))) {
            Ok(n) => {
                tracing::info!(account = %self.args.account, rows_before = self.file_rows, rows_after = n, ms = started.elapsed().as_millis() as u64, "commands file compacted");
                self.file_rows = n;
            }
            Err(e) => {
                // The old file is intact (the rename is the commit); try again later.
                // Before the rename the old file is intact; after it (a failed directory fsync)
                // the next append syncs the directory first. Either way: try again later.
                tracing::error!(error = %e, "commands file compaction failed");
                self.compact_deferred_until = self.file_rows + floor;
            }
        }
    }

    /// The terminal's symbol info and quote for `symbol`, whose master fill is `price` (the
    /// first command naming a symbol sets its reference price).
    fn report_symbol(&mut self, symbol: &Symbol, price: f64) {
        let now = self.clock.now();
        if !self.prices.contains_key(symbol) && price.is_finite() && price > 0.0 {
            self.prices.insert(symbol.clone(), (price, 0));
            self.ex.handle_fact(
                now,
                Fact::Symbol(
                    symbol.clone(),
                    SymbolFacts {
                        limits: SymbolLimits {
                            max: Volume::from_lots(self.args.max_lots)
                                .unwrap_or(SymbolLimits::fx().max),
                            ..SymbolLimits::fx()
                        },
                        margin_per_lot: MARGIN_PER_LOT,
                    },
                ),
            );
            self.report_quote(symbol);
        }
    }

    /// (bid, ask) of `symbol` now: the drifted price, without a spread (with no drift the
    /// broker fills exactly at the master's price, as before prices could drift).
    fn quote(&self, symbol: &Symbol) -> Option<(f64, f64)> {
        let point = SymbolLimits::fx().point;
        self.prices.get(symbol).map(|(p, d)| {
            let px = if *d == 0 { *p } else { p + *d as f64 * point };
            (px, px)
        })
    }

    fn report_quote(&mut self, symbol: &Symbol) {
        if let Some((bid, ask)) = self.quote(symbol) {
            let now = self.clock.now();
            self.ex.handle_fact(
                now,
                Fact::Quote {
                    symbol: symbol.clone(),
                    bid,
                    ask,
                },
            );
        }
    }

    /// One step of every price's seeded random walk, bounded by `--price-drift-points`.
    fn drift_prices(&mut self) {
        let max = i64::from(self.args.price_drift_points);
        let symbols: Vec<Symbol> = self.prices.keys().cloned().collect();
        for symbol in symbols {
            self.drift_steps += 1;
            let h = stable_hash(&(self.args.seed ^ self.drift_steps).to_le_bytes());
            let step = (h % 7) as i64 - 3;
            if let Some((_, d)) = self.prices.get_mut(&symbol) {
                *d = (*d + step).clamp(-max, max);
            }
            self.report_quote(&symbol);
        }
    }

    /// The broker executes these orders: book rows fsynced first, then the answers fed back.
    fn fill(&mut self, orders: Vec<Order>) {
        if orders.is_empty() {
            return;
        }
        let mut rows = Vec::new();
        let mut answers = Vec::new();
        for Order {
            command_id,
            leg,
            body,
        } in orders
        {
            let Some(c) = self.commands.get(&command_id).cloned() else {
                tracing::error!(command_id = %command_id, "PlaceOrder for a command not written ahead; not placed");
                continue;
            };
            // The broker executes what the executor placed, not the command as written; opens
            // fill at the broker's price: the ask for a buy, the bid for a sell.
            let fill = match &body {
                // A trigger's market fallback fills like an open.
                CommandBody::Execute { symbol, side, .. }
                | CommandBody::TriggerPending { symbol, side, .. } => {
                    self.quote(symbol).map(|(bid, ask)| match side {
                        Side::Buy => ask,
                        Side::Sell => bid,
                    })
                }
                _ => None,
            };
            // A leg is its own order at the broker, under its own client order id.
            let order_id = leg
                .as_ref()
                .map_or_else(|| command_id.clone(), |(_, id)| id.clone());
            let order = Command {
                body,
                command_id: order_id,
                ..c
            };
            let (outcome, row) = self.broker.place(&order, fill);
            rows.push(row);
            answers.push((command_id, leg.map(|(n, _)| n), outcome));
        }
        // The broker's book is the world's record: if it cannot be written the simulation is
        // broken, but the order did execute, so the answer still goes to the executor.
        if let Err(e) = self.broker.file.append(&rows) {
            tracing::error!(path = %self.broker.file.path().display(), error = %e, "broker book write failed");
        }
        let now = self.clock.now();
        for (id, leg, outcome) in answers {
            match leg {
                Some(leg) => self.ex.handle_leg_result(now, id, leg, outcome),
                None => self.ex.handle_broker_result(now, id, outcome),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use echo_statemachine::ids::{AccountId, IntentId, TradeId};
    use echo_statemachine::msg::{ExecTerms, PROTOCOL_VERSION};
    use echo_statemachine::time::Instant;

    fn open_cmd(id: &str) -> Command {
        Command {
            command_id: CommandId::new(id),
            intent_id: IntentId::new(format!("{id}-i")),
            trade_id: TradeId::new(format!("t-{id}")),
            slave: AccountId::new("S1"),
            body: CommandBody::Execute {
                terms: ExecTerms::default(),
                symbol: Symbol::new("EURUSD"),
                side: Side::Buy,
                volume: 1.0,
                price: 1.1,
                stop_loss: 0.0,
                take_profit: 0.0,
                catch_up: false,
            },
        }
    }

    fn close_cmd(id: &str, ticket: i64) -> Command {
        Command {
            body: CommandBody::Close {
                slave_ticket: ticket,
                volume: 0.0,
            },
            ..open_cmd(id)
        }
    }

    /// Drives the real executor with a file in the terminal's format: every write appended to
    /// `file` (one fsync per batch, like `Slave::drain`), results fed back, orders filled.
    struct Rig {
        ex: SlaveExecutor,
        file: JsonlFile,
        next_ticket: i64,
    }

    impl Rig {
        fn open(path: &std::path::Path, retained: usize) -> Rig {
            let (file, rows) = JsonlFile::open(path).expect("open");
            let records = read_commands_file(path, &rows).expect("read");
            let config = SlaveConfig {
                max_executed_retained: retained,
                min_retained_ms: 0,
                ..SlaveConfig::new("S1")
            };
            let mut ex = SlaveExecutor::recover_rows(config, records);
            ex.handle_from_agent(
                Instant::ZERO,
                AgentToEa::Handshake {
                    account: AccountId::new("S1"),
                    protocol_version: PROTOCOL_VERSION,
                },
            );
            Rig {
                ex,
                file,
                next_ticket: 1,
            }
        }

        /// Performs outputs until none is left; `fill` answers every PlaceOrder.
        fn drain(&mut self, fill: bool) {
            loop {
                let (mut rows, mut ops, mut placed) = (Vec::new(), Vec::new(), Vec::new());
                while let Some(out) = self.ex.poll() {
                    match out {
                        Output::PersistExecuting { op, command } => {
                            rows.push(line(
                                &json!({"op": "executing", "command": command_value(&command)}),
                            ));
                            ops.push(op);
                        }
                        Output::PersistExecuted {
                            op,
                            command_id,
                            result,
                        } => {
                            rows.push(line(&json!({"op": "executed", "command_id": command_id.as_str(), "result": execution_value(&result)})));
                            ops.push(op);
                        }
                        Output::PersistCancelled {
                            op,
                            command,
                            result,
                        } => {
                            rows.push(line(&json!({"op": "cancelled", "command": command_value(&command), "result": execution_value(&result)})));
                            ops.push(op);
                        }
                        Output::PlaceOrder { command_id, body } => placed.push((command_id, body)),
                        _ => {}
                    }
                }
                if ops.is_empty() && (placed.is_empty() || !fill) {
                    return;
                }
                self.file.append(&rows).expect("append");
                for op in ops {
                    self.ex.handle_persist_result(Instant::ZERO, op, Ok(()));
                }
                if fill {
                    for (id, body) in placed {
                        let ticket = match body {
                            CommandBody::Close { slave_ticket, .. } => slave_ticket,
                            _ => {
                                self.next_ticket += 1;
                                self.next_ticket
                            }
                        };
                        self.ex.handle_broker_result(
                            Instant::ZERO,
                            id,
                            BrokerOutcome::Filled {
                                ticket,
                                price: 1.1,
                                volume: 1.0,
                            },
                        );
                    }
                }
            }
        }

        fn deliver(&mut self, c: Command, fill: bool) {
            self.ex
                .handle_from_agent(Instant::ZERO, AgentToEa::Command(c));
            self.drain(fill);
        }

        fn compact(&mut self) -> usize {
            let lines = compact_lines(&self.ex.durable_image().expect("idle"));
            self.file.rewrite(&lines).expect("rewrite");
            lines.len()
        }
    }

    fn rows_of(path: &std::path::Path) -> usize {
        std::fs::read_to_string(path).expect("read").lines().count()
    }

    /// What a recovered executor remembers: its image (dedupe set in order, positions, closed
    /// tickets, commands in doubt).
    fn state(path: &std::path::Path, retained: usize) -> Vec<DurableRow> {
        Rig::open(path, retained)
            .ex
            .durable_image()
            .expect("a recovered executor has nothing in flight")
    }

    /// 200 trades (open, then close for most) through an EA retaining 16 records, one command
    /// left at the broker: the compacted file recovers exactly the executor the long file
    /// recovers, is a fraction of its size, and later appends apply on top of it.
    #[test]
    fn a_compacted_file_recovers_the_same_dedupe_set_and_positions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("S1.commands.jsonl");
        let mut rig = Rig::open(&path, 16);
        for n in 0..200 {
            rig.deliver(open_cmd(&format!("o{n}")), true);
            let ticket = rig.next_ticket;
            if n % 10 != 0 {
                rig.deliver(close_cmd(&format!("c{n}"), ticket), true);
            }
        }
        rig.deliver(open_cmd("pending"), false);
        // What the running executor holds (recover() keeps every record of the long file until
        // they are old enough, T39, so the comparison is with the live executor).
        let before = rig.ex.durable_image().expect("idle");
        let long = rows_of(&path);
        let short = rig.compact();
        assert_eq!(rows_of(&path), short);
        assert!(short * 10 < long, "{short} rows of {long}");
        assert_eq!(
            state(&path, 16),
            before,
            "same executor from the compacted file"
        );
        let positions = before
            .iter()
            .find_map(|r| match r {
                DurableRow::Positions { open, closed, .. } => Some((open.len(), closed.len())),
                _ => None,
            })
            .expect("positions row");
        assert_eq!(
            positions,
            (20, 16),
            "20 opens never closed; 16 closed tickets kept"
        );
        // The command at the broker is in doubt after a restart, from either file.
        assert!(before.iter().any(|r| matches!(r, DurableRow::Record(ExecutedRecord { command, result: None }) if command.command_id.as_str() == "pending")));

        // Appends after the compaction apply on top; a second compaction keeps it all.
        let mut rig = Rig::open(&path, 16);
        let outcome = BrokerOutcome::Filled {
            ticket: 999,
            price: 1.1,
            volume: 1.0,
        };
        rig.ex
            .handle_broker_result(Instant::ZERO, CommandId::new("pending"), outcome);
        rig.drain(true);
        rig.deliver(close_cmd("close-999", 999), true);
        assert_eq!(rig.ex.metrics().retained_executed, 16);
        let after = rig.ex.durable_image().expect("idle");
        rig.compact();
        assert_eq!(state(&path, 16), after);
        assert!(after.iter().any(|r| matches!(r, DurableRow::Positions { open, .. } if !open.iter().any(|(t, _)| *t == 999))), "999 opened then closed after the compaction");
        // A redelivery of a retained command is answered from its record, never placed.
        let mut rig = Rig::open(&path, 16);
        rig.ex.handle_from_agent(
            Instant::ZERO,
            AgentToEa::Command(close_cmd("close-999", 999)),
        );
        let mut placed = 0;
        while let Some(o) = rig.ex.poll() {
            placed += usize::from(matches!(o, Output::PlaceOrder { .. }));
        }
        assert_eq!(placed, 0);
    }

    /// A crash in the middle of a compaction leaves a temporary file next to the untouched
    /// original (before the rename): the original recovers the same executor, the stale
    /// temporary file is ignored, and the next compaction overwrites it.
    #[test]
    fn an_interrupted_compaction_recovers_from_the_old_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("S1.commands.jsonl");
        let mut rig = Rig::open(&path, 4);
        for n in 0..30 {
            rig.deliver(open_cmd(&format!("o{n}")), true);
        }
        let before = state(&path, 4);
        let tmp = rig.file.temp_path();
        drop(rig);
        // The crash: half of a compacted file written, a torn line at its end, no rename.
        let lines = compact_lines(&before);
        let half: String = lines[..lines.len() / 2].concat() + "{\"op\":\"retai";
        std::fs::write(&tmp, half).expect("write tmp");
        assert_eq!(state(&path, 4), before, "the original is intact");
        let mut rig = Rig::open(&path, 4);
        rig.compact();
        assert!(!tmp.exists(), "the temporary file became the file");
        assert_eq!(state(&path, 4), before);
        // A crash right after the rename: the new file alone recovers the same executor.
        assert_eq!(rows_of(&path), lines.len());
    }

    /// A positions row round-trips through its line (open positions, pending orders, split
    /// legs), and a row with a malformed `[ticket, lots]` pair is refused as corrupt — never
    /// read as fewer positions than the EA held.
    #[test]
    fn positions_rows_round_trip_and_malformed_pairs_are_corrupt() {
        let path = std::path::Path::new("S1.commands.jsonl");
        let row = DurableRow::Positions {
            open: vec![(11, 1.5), (12, 0.25)],
            pendings: vec![(21, 0.1)],
            closed: vec![9],
            split: vec![(12, vec![(12, 0.2), (13, 0.05)])],
        };
        let value: Value = serde_json::from_str(compact_line(&row).trim_end()).expect("json");
        let back = read_commands_file(path, std::slice::from_ref(&value)).expect("reads back");
        assert_eq!(back, vec![row]);
        for (key, bad) in [
            ("open", json!([[11, "1.5"]])),
            ("open", json!([[11]])),
            ("pendings", json!([["21", 0.1]])),
            ("split", json!([[12, [[12]]]])),
            ("split", json!([[12, 0.2]])),
        ] {
            let mut v = value.clone();
            v[key] = bad.clone();
            assert!(
                matches!(
                    read_commands_file(path, &[v]),
                    Err(StoreError::Corrupt { .. })
                ),
                "{key} = {bad} must be refused"
            );
        }
    }
}
