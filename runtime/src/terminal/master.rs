//! The reference master terminal: a trade generator in front of the real `IntentQueue`.
//!
//! Owns the master's files (the IntentQueue file and the emitted record), the pacing of the
//! plan, and the loop that performs the queue's outputs: appends and removals written and
//! fsynced in one batch before their results are fed back, intents written to the pipe, delivery
//! config from the agent applied through the machine. It must never send, retry, drop or
//! re-order an intent on its own (the queue decides all of that), never feed `Ok` for a write
//! that is not on disk, and never emit an intent the queue refused (a full queue pauses the plan).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;

use echo_statemachine::ea::master::{
    EmitError, IntentQueue, IntentQueueConfig, Output, PersistError, RemoveReason,
};
use echo_statemachine::ids::{AccountId, IntentId, Symbol, TradeId};
use echo_statemachine::msg::{AgentToEa, MasterFacts, OrderType, TradeIntent};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::plan::{IntentSpec, Plan, Step};
use super::store::{line, wall_ms, wall_us, JsonlFile, StoreError};
use super::{
    send_frame, sleep_until_opt, spawn_link, Clock, LinkEvent, Outcome, Source, TerminalArgs,
    TerminalError,
};
use crate::pipe::frame::{error_code_str, intent_from_value, intent_kind_str, intent_value};
use crate::pipe::{AgentFrame, EaFrame, ErrorFrame, PipeErrorCode};

/// The IntentQueue file is rewritten to its live appends once it holds this many times more
/// rows than live intents …
pub const COMPACT_FACTOR: usize = 4;
/// … and at least this many rows (so a small queue is not rewritten on every batch).
pub const COMPACT_MIN_ROWS: usize = 4_096;

/// What the IntentQueue file holds as recovery would read it — appends not removed, in file
/// order — mirrored from the rows the terminal wrote, so it can be rewritten without reading
/// the file. A row whose write failed is mirrored as if it had reached the disk: the queue
/// must already cope with either outcome of a failed write (it re-appends or re-removes).
#[derive(Debug, Default)]
pub struct QueueMirror {
    live: BTreeMap<u64, TradeIntent>,
    at: BTreeMap<IntentId, u64>,
    next: u64,
    /// Rows in the file.
    pub rows: usize,
}

impl QueueMirror {
    pub fn new(durable: &[TradeIntent], rows: usize) -> QueueMirror {
        let mut m = QueueMirror {
            rows,
            ..QueueMirror::default()
        };
        for i in durable {
            m.appended(i);
        }
        m
    }

    pub fn appended(&mut self, i: &TradeIntent) {
        if self.at.contains_key(&i.intent_id) {
            return;
        }
        self.at.insert(i.intent_id.clone(), self.next);
        self.live.insert(self.next, i.clone());
        self.next += 1;
    }

    pub fn removed(&mut self, id: &IntentId) {
        if let Some(at) = self.at.remove(id) {
            self.live.remove(&at);
        }
    }

    pub fn live(&self) -> usize {
        self.live.len()
    }

    /// Whether the file has grown enough beyond its live content to be rewritten.
    pub fn wants_compaction(&self) -> bool {
        self.rows >= COMPACT_MIN_ROWS && self.rows >= COMPACT_FACTOR * (self.live.len() + 1)
    }

    /// The lines of the compacted file: one `append` row per live intent, in file order.
    pub fn lines(&self) -> Vec<String> {
        self.live
            .values()
            .map(|i| line(&json!({"op": "append", "intent": intent_value(i)})))
            .collect()
    }
}

/// `<data>/<account>.intents.jsonl`
pub fn intents_path(args: &TerminalArgs) -> PathBuf {
    args.data_dir
        .join(format!("{}.intents.jsonl", args.account))
}

/// `<data>/<account>.emitted.jsonl`
pub fn emitted_path(args: &TerminalArgs) -> PathBuf {
    args.data_dir
        .join(format!("{}.emitted.jsonl", args.account))
}

/// The IntentQueue file's live content: intents appended and not removed, in file order.
pub fn read_queue_file(
    path: &std::path::Path,
    rows: &[Value],
) -> Result<Vec<TradeIntent>, StoreError> {
    let mut live: Vec<TradeIntent> = Vec::new();
    let mut removed: BTreeSet<String> = BTreeSet::new();
    for (n, row) in rows.iter().enumerate() {
        let corrupt = |detail: String| StoreError::Corrupt {
            path: path.to_path_buf(),
            line: n + 1,
            detail,
        };
        match row.get("op").and_then(Value::as_str) {
            Some("append") => {
                let intent = row
                    .get("intent")
                    .ok_or_else(|| corrupt("append row without intent".into()))
                    .and_then(|v| intent_from_value(v).map_err(|e| corrupt(format!("{e:?}"))))?;
                live.push(intent);
            }
            Some("remove") => {
                let id = row
                    .get("intent_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| corrupt("remove row without intent_id".into()))?;
                removed.insert(id.to_string());
            }
            _ => return Err(corrupt("row without a known op".into())),
        }
    }
    // A removal is final: an id removed and appended again (never done by the queue) stays removed.
    live.retain(|i| !removed.contains(i.intent_id.as_str()));
    Ok(live)
}

fn reason_str(r: &RemoveReason) -> String {
    match r {
        RemoveReason::Acked => "ACKED".into(),
        RemoveReason::GaveUp { .. } => "GAVE_UP".into(),
        RemoveReason::Rejected { error } => format!("REJECTED:{}", error_code_str(*error)),
    }
}

/// What the reference master reports about each order and its account: magic 0, a fixed
/// comment, the order's type (market, or a pending placement's limit / stop), and `--balance`
/// as balance and equity (for ratio sizing).
fn build_intent(account: &AccountId, seq: u64, spec: &IntentSpec, balance: f64) -> TradeIntent {
    TradeIntent {
        origin: MasterFacts {
            magic: 0,
            comment: "echo terminal".into(),
            order_type: spec.kind.placed_order_type().unwrap_or(OrderType::Market),
            balance,
            equity: balance,
        },
        intent_id: IntentId::new(format!("{account}-{seq}")),
        trade_id: TradeId::new(format!("{account}-{}", spec.trade)),
        master: account.clone(),
        kind: spec.kind,
        symbol: Symbol::new(&spec.symbol),
        side: spec.side,
        volume: spec.volume,
        price: spec.price,
        stop_loss: spec.stop_loss,
        take_profit: spec.take_profit,
        master_ticket: spec.master_ticket,
        master_seq: seq,
        emitted_at_ms: wall_ms(),
        master_volume_before: spec.volume_before,
    }
}

/// `emitted_at_us`: when the intent was built (microseconds; the benchmark's latency start),
/// `None` for an intent recovered from the queue file.
fn emitted_row(i: &TradeIntent, emitted_at_us: Option<i64>) -> String {
    line(&json!({
        "event": "emitted",
        "intent_id": i.intent_id.as_str(),
        "trade_id": i.trade_id.as_str(),
        "master": i.master.as_str(),
        "kind": intent_kind_str(i.kind),
        "master_seq": i.master_seq,
        "emitted_at_ms": i.emitted_at_ms,
        "emitted_at_us": emitted_at_us,
        "durable_at_ms": wall_ms(),
    }))
}

struct Master {
    args: TerminalArgs,
    clock: Clock,
    q: IntentQueue,
    queue_file: JsonlFile,
    mirror: QueueMirror,
    emitted_file: JsonlFile,
    plan: Plan,
    /// An intent the queue refused as full, to emit again once it has room.
    held: Option<TradeIntent>,
    writer: Option<mpsc::Sender<EaFrame>>,
    failed: u64,
    /// When each intent not yet recorded as emitted was built, µs since the epoch.
    built_at_us: std::collections::HashMap<IntentId, i64>,
}

pub(super) async fn run(
    args: TerminalArgs,
    shutdown: impl Future<Output = ()>,
) -> Result<Outcome, TerminalError> {
    let clock = Clock::new();
    let (mut queue_file, rows) = JsonlFile::open(&intents_path(&args))?;
    let durable = read_queue_file(queue_file.path(), &rows)?;
    // Compact: keep only the live appends, so the file does not grow without bound (and again
    // while running, see `QueueMirror`).
    let mut mirror = QueueMirror::new(&durable, rows.len());
    let compacted = mirror.lines();
    queue_file.rewrite(&compacted)?;
    mirror.rows = compacted.len();

    let (mut emitted_file, emitted_rows) = JsonlFile::open(&emitted_path(&args))?;
    let mut recorded: BTreeSet<String> = BTreeSet::new();
    let mut max_seq: u64 = 0;
    for row in &emitted_rows {
        if row.get("event").and_then(Value::as_str) == Some("emitted") {
            if let Some(id) = row.get("intent_id").and_then(Value::as_str) {
                recorded.insert(id.to_string());
            }
            max_seq = max_seq.max(row.get("master_seq").and_then(Value::as_u64).unwrap_or(0));
        }
    }
    // An intent made durable just before a crash that cut its emitted record: record it now.
    let missing: Vec<String> = durable
        .iter()
        .filter(|i| !recorded.contains(i.intent_id.as_str()))
        .map(|i| emitted_row(i, None))
        .collect();
    emitted_file.append(&missing).map_err(|e| {
        TerminalError::Io(std::io::Error::new(
            e.kind(),
            format!("{}: {e}", emitted_file.path().display()),
        ))
    })?;
    max_seq = durable.iter().map(|i| i.master_seq).fold(max_seq, u64::max);

    let mut plan = match &args.source {
        Source::Script(p) => Plan::script_file(p)?,
        Source::Rate {
            per_sec,
            trades,
            modifies,
            partials,
            concurrent,
            symbol,
        } => Plan::rate(*per_sec, *trades, *modifies, *partials, *concurrent, symbol),
    };
    plan.skip(max_seq);
    tracing::info!(
        account = %args.account,
        recovered = durable.len(),
        resume_at = max_seq,
        total = plan.total(),
        "master terminal starting"
    );
    let config = IntentQueueConfig {
        capacity: args.capacity,
        ..IntentQueueConfig::default()
    };
    let q = IntentQueue::recover(config, durable);
    let mut m = Master {
        clock,
        q,
        queue_file,
        mirror,
        emitted_file,
        plan,
        held: None,
        writer: None,
        failed: 0,
        built_at_us: std::collections::HashMap::new(),
        args,
    };
    m.main_loop(shutdown).await
}

impl Master {
    async fn main_loop(
        &mut self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<Outcome, TerminalError> {
        let (_link, mut link_rx) = spawn_link(&self.args);
        tokio::pin!(shutdown);
        let mut next_emit = tokio::time::Instant::now();
        let mut plan_done = false;
        let mut progress = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            self.drain()?;
            if self.args.exit_when_done
                && plan_done
                && self.held.is_none()
                && self.q.metrics().depth == 0
                && self.q.metrics().removing == 0
            {
                tracing::info!(account = %self.args.account, failed = self.failed, "master done: every intent emitted and resolved");
                return Ok(Outcome::Done {
                    failed: self.failed,
                });
            }
            let timer = self.q.poll_timeout().map(|at| self.clock.to_tokio(at));
            let can_emit = !plan_done && !self.q.is_full();
            tokio::select! {
                _ = &mut shutdown => {
                    tracing::info!(account = %self.args.account, "master terminal stopping");
                    return Ok(Outcome::Stopped);
                }
                _ = sleep_until_opt(timer) => {
                    self.q.handle_timeout(self.clock.now());
                }
                _ = tokio::time::sleep_until(next_emit), if can_emit => {
                    // Every step already due is emitted now, so one drain (one fsync) serves
                    // them all; after a stall, at most a second's worth is caught up.
                    let now = tokio::time::Instant::now();
                    for _ in 0..256 {
                        let (done, pause) = self.emit_next();
                        plan_done = done;
                        let Some(p) = pause else { break };
                        next_emit = (next_emit + p).max(now - std::time::Duration::from_secs(1));
                        if next_emit > now || self.held.is_some() || self.q.is_full() {
                            break;
                        }
                    }
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
                _ = progress.tick() => {
                    let mt = self.q.metrics();
                    tracing::info!(account = %self.args.account, emitted = self.plan.emitted(), total = self.plan.total(), depth = mt.depth, in_flight = mt.in_flight, acked = mt.acked, retries = mt.retries, failed = mt.failed, gave_up = mt.gave_up, "master progress");
                }
            }
        }
    }

    /// Emits the next plan step (or the held one). Returns (plan exhausted, pause before next).
    fn emit_next(&mut self) -> (bool, Option<std::time::Duration>) {
        let now = self.clock.now();
        let intent = match self.held.take() {
            Some(i) => i,
            None => match self.plan.next_step() {
                None => return (true, None),
                Some(Step::Sleep(d)) => return (false, Some(d)),
                Some(Step::Emit(spec)) => {
                    let i = build_intent(
                        &self.args.account,
                        self.plan.emitted(),
                        &spec,
                        self.args.balance,
                    );
                    self.built_at_us.insert(i.intent_id.clone(), wall_us());
                    i
                }
            },
        };
        match self.q.handle_emit(now, intent.clone()) {
            Ok(()) | Err(EmitError::Duplicate) => {}
            Err(EmitError::QueueFull { capacity }) => {
                tracing::debug!(capacity, "intent queue full; pausing the plan");
                self.held = Some(intent);
                return (false, Some(std::time::Duration::from_millis(5)));
            }
        }
        (false, self.plan.interval())
    }

    fn on_link(&mut self, ev: LinkEvent) {
        let now = self.clock.now();
        match ev {
            LinkEvent::Connected(w) => self.writer = Some(w),
            LinkEvent::Closed => {
                self.writer = None;
                if self.q.is_connected() {
                    self.q.handle_pipe_closed(now);
                }
            }
            LinkEvent::Frame(Ok(AgentFrame::Msg(msg))) => match msg {
                AgentToEa::Handshake { account, .. } => {
                    if account == self.args.account {
                        tracing::info!(account = %account, "agent handshake");
                        self.q.handle_pipe_connected(now);
                    } else {
                        tracing::error!(expected = %self.args.account, got = %account, "handshake for another account; not sending");
                    }
                }
                AgentToEa::IntentAck(ack) => self.q.handle_ack(now, ack),
                AgentToEa::DeliveryConfig(c) => {
                    tracing::info!(config = ?c, "delivery config from the agent");
                    self.q.handle_delivery_config(now, c);
                }
                AgentToEa::Command(c) | AgentToEa::Cancel(c) => {
                    tracing::warn!(command_id = %c.command_id, "a master terminal got a slave command; answered with an error frame");
                    send_frame(
                        &self.writer,
                        EaFrame::Error(ErrorFrame {
                            code: PipeErrorCode::UnknownType,
                            message: "this terminal is a master; it takes no commands".into(),
                            ref_type: Some("command".into()),
                            ref_id: Some(c.command_id.to_string()),
                        }),
                    );
                }
            },
            LinkEvent::Frame(Ok(AgentFrame::Error(e))) => {
                tracing::warn!(code = %e.code, message = %e.message, ref_type = ?e.ref_type, ref_id = ?e.ref_id, "agent reported a pipe error");
            }
            LinkEvent::Frame(Err(e)) => {
                tracing::warn!(error = %e, "malformed frame from the agent");
                if e.deserves_reply() {
                    send_frame(&self.writer, EaFrame::Error(e.to_error_frame()));
                }
            }
        }
    }

    /// Performs every pending output; storage writes are batched into one fsync per file.
    fn drain(&mut self) -> Result<(), TerminalError> {
        loop {
            let mut rows: Vec<String> = Vec::new();
            let mut ops = Vec::new();
            let mut appended: Vec<TradeIntent> = Vec::new();
            let mut resolved: Vec<String> = Vec::new();
            while let Some(out) = self.q.poll() {
                match out {
                    Output::Fired(f) => tracing::trace!(fired = ?f, "ea.master"),
                    Output::PersistAppend { op, intent } => {
                        rows.push(line(
                            &json!({"op": "append", "intent": intent_value(&intent)}),
                        ));
                        ops.push(op);
                        self.mirror.appended(&intent);
                        appended.push(intent);
                    }
                    Output::PersistRemove {
                        op,
                        intent_id,
                        reason,
                    } => {
                        rows.push(line(&json!({"op": "remove", "intent_id": intent_id.as_str(), "reason": reason_str(&reason)})));
                        ops.push(op);
                        self.mirror.removed(&intent_id);
                        let event = match reason {
                            RemoveReason::Acked => {
                                json!({"event": "acked", "intent_id": intent_id.as_str(), "at_ms": wall_ms(), "at_us": wall_us()})
                            }
                            RemoveReason::GaveUp { attempts } => {
                                json!({"event": "gave_up", "intent_id": intent_id.as_str(), "attempts": attempts, "at_ms": wall_ms()})
                            }
                            RemoveReason::Rejected { error } => {
                                json!({"event": "rejected", "intent_id": intent_id.as_str(), "error": error_code_str(error), "at_ms": wall_ms()})
                            }
                        };
                        resolved.push(line(&event));
                    }
                    Output::ToAgent(msg) => send_frame(&self.writer, EaFrame::Msg(msg)),
                    Output::GaveUp {
                        intent_id,
                        trade_id,
                        attempts,
                    } => {
                        self.failed += 1;
                        tracing::error!(intent_id = %intent_id, trade_id = %trade_id, attempts, "intent given up after MAX_TRIES sends");
                    }
                    Output::Failed {
                        intent_id,
                        trade_id,
                        error,
                    } => {
                        self.failed += 1;
                        tracing::error!(intent_id = %intent_id, trade_id = %trade_id, error = error.name(), "intent refused by the core");
                    }
                }
            }
            if ops.is_empty() {
                return Ok(());
            }
            let now = self.clock.now();
            let result = self.queue_file.append(&rows);
            self.mirror.rows += rows.len();
            if let Err(e) = &result {
                tracing::error!(path = %self.queue_file.path().display(), error = %e, "intent queue write failed; the queue retries");
            } else if self.mirror.wants_compaction() {
                // Between batches: every row written so far is mirrored, none is in flight.
                let lines = self.mirror.lines();
                match self.queue_file.rewrite(&lines) {
                    Ok(()) => self.mirror.rows = lines.len(),
                    Err(e) => {
                        tracing::error!(error = %e, "intent queue compaction failed; tried again later");
                        self.mirror.rows = lines.len().max(self.mirror.rows / 2);
                    }
                }
            }
            if result.is_ok() {
                // The demo's record: what became durable (emitted) and what was resolved.
                let mut record: Vec<String> = appended
                    .iter()
                    .map(|i| emitted_row(i, self.built_at_us.remove(&i.intent_id)))
                    .collect();
                record.extend(resolved);
                if let Err(e) = self.emitted_file.append(&record) {
                    tracing::error!(path = %self.emitted_file.path().display(), error = %e, "emitted record write failed");
                }
            }
            for op in ops {
                let r = match &result {
                    Ok(()) => Ok(()),
                    Err(_) => Err(PersistError { retryable: true }),
                };
                self.q.handle_persist_result(now, op, r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use echo_statemachine::msg::{IntentKind, Side};

    fn intent(n: u64) -> TradeIntent {
        TradeIntent {
            origin: MasterFacts::default(),
            intent_id: IntentId::new(format!("M1-{n}")),
            trade_id: TradeId::new(format!("M1-t{}", n % 4)),
            master: AccountId::new("M1"),
            kind: IntentKind::Open,
            symbol: Symbol::new("EURUSD"),
            side: Side::Buy,
            volume: 1.0,
            price: 1.1,
            stop_loss: 0.0,
            take_profit: 0.0,
            master_ticket: n as i64,
            master_seq: n,
            emitted_at_ms: 0,
            master_volume_before: 0.0,
        }
    }

    /// 10 000 intents appended and removed through a mirror-driven file, a few left live: the
    /// file is rewritten whenever it outgrows its live content, stays bounded, and reads back
    /// to exactly the live intents in file order (also with a stale temporary file beside it).
    #[test]
    fn the_intent_queue_file_is_compacted_to_its_live_intents() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("M1.intents.jsonl");
        let (mut file, rows) = JsonlFile::open(&path).expect("open");
        let mut mirror = QueueMirror::new(&[], rows.len());
        let mut live_expected: Vec<TradeIntent> = Vec::new();
        let mut peak_rows = 0;
        for n in 0..10_000u64 {
            let i = intent(n);
            let mut batch = vec![line(&json!({"op": "append", "intent": intent_value(&i)}))];
            mirror.appended(&i);
            if n % 1_000 == 7 {
                live_expected.push(i);
            } else {
                batch.push(line(
                    &json!({"op": "remove", "intent_id": i.intent_id.as_str(), "reason": "ACKED"}),
                ));
                mirror.removed(&i.intent_id);
            }
            file.append(&batch).expect("append");
            mirror.rows += batch.len();
            if mirror.wants_compaction() {
                let lines = mirror.lines();
                file.rewrite(&lines).expect("rewrite");
                mirror.rows = lines.len();
            }
            peak_rows = peak_rows.max(mirror.rows);
        }
        assert!(peak_rows <= COMPACT_MIN_ROWS + 2, "peak {peak_rows} rows");
        std::fs::write(file.temp_path(), "{\"op\":\"app").expect("stale tmp");
        drop(file);
        let (_file, rows) = JsonlFile::open(&path).expect("reopen");
        assert_eq!(rows.len(), mirror.rows);
        let live = read_queue_file(&path, &rows).expect("read");
        assert_eq!(live, live_expected);
        assert_eq!(mirror.live(), live_expected.len());
    }
}
