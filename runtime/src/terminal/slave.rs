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
    BrokerOutcome, ExecutedRecord, Fact, Output, PersistError, SlaveConfig, SlaveExecutor,
};
use echo_statemachine::ids::{stable_hash, CommandId, Symbol};
use echo_statemachine::msg::{AgentToEa, Command, CommandBody, PendingResolution, Side};
use echo_statemachine::policy::terms::{AccountFacts, SymbolFacts};
use echo_statemachine::policy::SymbolLimits;
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

/// `<data>/<account>.commands.jsonl`
pub fn commands_path(args: &TerminalArgs) -> PathBuf {
    args.data_dir
        .join(format!("{}.commands.jsonl", args.account))
}

/// `<data>/<account>.broker.jsonl`
pub fn broker_path(args: &TerminalArgs) -> PathBuf {
    args.data_dir.join(format!("{}.broker.jsonl", args.account))
}

/// The executor's file as `ExecutedRecord`s, in file order.
fn read_commands_file(
    path: &std::path::Path,
    rows: &[Value],
) -> Result<Vec<ExecutedRecord>, StoreError> {
    let mut records: Vec<ExecutedRecord> = Vec::new();
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
                records.push(ExecutedRecord {
                    command,
                    result: None,
                });
            }
            Some("cancelled") => {
                let (command, result) = (command()?, result()?);
                index.insert(command.command_id.to_string(), records.len());
                records.push(ExecutedRecord {
                    command,
                    result: Some(result),
                });
            }
            Some("executed") => {
                let result = result()?;
                match index.get(result.command_id.as_str()) {
                    Some(&i) => {
                        if let Some(r) = records.get_mut(i) {
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
            _ => return Err(corrupt("row without a known op".into())),
        }
    }
    Ok(records)
}

/// One order the simulated broker answered.
#[derive(Clone, Debug)]
struct BookEntry {
    outcome: BrokerOutcome,
}

/// A broker that fills at the command's price and keeps a durable book keyed by client order id.
struct Broker {
    file: JsonlFile,
    orders: BTreeMap<String, BookEntry>,
    /// ticket → (open volume, open price)
    positions: BTreeMap<i64, (f64, f64)>,
    /// ticket → (volume, price) of a pending order not yet resolved (this broker has no price
    /// feed: its pending orders fill only on the master's trigger).
    pendings: BTreeMap<i64, (f64, f64)>,
    next_ticket: i64,
    reject_rate: f64,
    seed: u64,
}

impl Broker {
    fn open(args: &TerminalArgs) -> Result<Broker, StoreError> {
        let (file, rows) = JsonlFile::open(&broker_path(args))?;
        let mut b = Broker {
            file,
            orders: BTreeMap::new(),
            positions: BTreeMap::new(),
            pendings: BTreeMap::new(),
            next_ticket: 500_001,
            reject_rate: args.reject_rate,
            seed: args.seed,
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
            b.orders
                .entry(id.to_string())
                .or_insert(BookEntry { outcome });
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
                            BrokerOutcome::Rejected {
                                reason: "pending order deleted; no market fallback".into(),
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
        self.orders
            .entry(c.command_id.to_string())
            .or_insert(BookEntry {
                outcome: outcome.clone(),
            });
        (outcome, row)
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

struct Slave {
    args: TerminalArgs,
    clock: Clock,
    ex: SlaveExecutor,
    file: JsonlFile,
    broker: Broker,
    /// Commands written ahead and not yet answered by the broker (for `PlaceOrder` details).
    commands: BTreeMap<CommandId, Command>,
    /// Orders waiting for the simulated fill delay, in placement order, with the body the
    /// executor placed (a partial close arrives resolved to lots).
    delayed: VecDeque<(tokio::time::Instant, (CommandId, CommandBody))>,
    writer: Option<mpsc::Sender<EaFrame>>,
    /// symbol → (reference price: the last master fill seen, drift in points).
    prices: BTreeMap<Symbol, (f64, i64)>,
    drift_steps: u64,
}

/// Margin one lot needs on the reference terminal's broker (1:100 leverage on 100 000 units).
const MARGIN_PER_LOT: f64 = 1_000.0;

pub(super) async fn run(
    args: TerminalArgs,
    shutdown: impl Future<Output = ()>,
) -> Result<Outcome, TerminalError> {
    let clock = Clock::new();
    let (file, rows) = JsonlFile::open(&commands_path(&args))?;
    let records = read_commands_file(file.path(), &rows)?;
    let broker = Broker::open(&args)?;
    let commands: BTreeMap<CommandId, Command> = records
        .iter()
        .filter(|r| r.result.is_none())
        .map(|r| (r.command.command_id.clone(), r.command.clone()))
        .collect();
    let in_doubt = commands.len();
    let config = SlaveConfig::new(args.account.as_str());
    tracing::info!(account = %args.account, records = records.len(), in_doubt, "slave terminal starting");
    let ex = SlaveExecutor::recover(config, records);
    let mut s = Slave {
        args,
        clock,
        ex,
        file,
        broker,
        commands,
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
            let mut place: Vec<(CommandId, CommandBody)> = Vec::new();
            let mut queries: Vec<CommandId> = Vec::new();
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
                    Output::PlaceOrder { command_id, body } => place.push((command_id, body)),
                    Output::QueryOrder { command_id } => queries.push(command_id),
                }
            }
            if ops.is_empty() && place.is_empty() && queries.is_empty() {
                return;
            }
            let now = self.clock.now();
            if !ops.is_empty() {
                let result = self.file.append(&rows);
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
            for id in queries {
                let outcome = self.broker.query(&id);
                tracing::info!(command_id = %id, outcome = ?outcome, "in-doubt command answered by the broker");
                self.ex.handle_broker_result(now, id, outcome);
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
                        limits: SymbolLimits::fx(),
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
    fn fill(&mut self, orders: Vec<(CommandId, CommandBody)>) {
        if orders.is_empty() {
            return;
        }
        let mut rows = Vec::new();
        let mut answers = Vec::new();
        for (id, body) in orders {
            let Some(c) = self.commands.get(&id).cloned() else {
                tracing::error!(command_id = %id, "PlaceOrder for a command not written ahead; not placed");
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
            let (outcome, row) = self.broker.place(&Command { body, ..c }, fill);
            rows.push(row);
            answers.push((id, outcome));
        }
        // The broker's book is the world's record: if it cannot be written the simulation is
        // broken, but the order did execute, so the answer still goes to the executor.
        if let Err(e) = self.broker.file.append(&rows) {
            tracing::error!(path = %self.broker.file.path().display(), error = %e, "broker book write failed");
        }
        let now = self.clock.now();
        for (id, outcome) in answers {
            self.ex.handle_broker_result(now, id, outcome);
        }
    }
}
