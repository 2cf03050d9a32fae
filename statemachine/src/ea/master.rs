//! The master EA's durable IntentQueue.
//!
//! This module owns the fate of every `TradeIntent` a master terminal emits, from the moment the
//! terminal hands it over until the core has answered it for good: the append to the EA's
//! append-only file, the per-trade send order, the ack timeout, the retries with backoff (up to
//! [`MAX_TRIES`]) and the durable removal once the intent is resolved (acked, rejected or given
//! up). It is a sans-IO machine: the file and the pipe are outputs and their results are inputs.
//!
//! `handle_emit` returning `Ok` means the queue took the event in memory; it is durable once its
//! append is reported Ok (transition T04). A crash in between loses the event together with the
//! process that saw it — only the EA's restart reconciliation (positions against the file) can
//! recover it — which is why appends are issued at once and retried until they succeed.
//!
//! It must never send an intent whose append has not been reported durable, never let two
//! intents of one trade be in flight at once or overtake each other, never drop an intent
//! silently (a full queue is answered with [`EmitError::QueueFull`], a hopeless one with a loud
//! [`Output::GaveUp`] or [`Output::Failed`]), and never read a clock or touch a file itself.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::config::AgentDeliveryConfig;
use crate::ids::{IntentId, TradeId};
use crate::msg::{AckResult, EaToAgent, ErrorCode, TradeIntent, TradeIntentAck};
use crate::spec::{Fired, MachineSpec, Subject};
use crate::time::{backoff, Duration, Instant};
use crate::transitions;

/// Sends of one intent before the queue gives up on it (BRIEF §1: "up to 100 tries").
///
/// Fixed rather than read from `AgentDeliveryConfig::max_retries`: that key bounds the agent's
/// pipe writes, and the brief fixes the master's budget independently of it.
pub const MAX_TRIES: u32 = 100;

/// Name of the gauge fed from [`IntentQueueMetrics::depth`].
pub const METRIC_BUFFER_DEPTH: &str = "echo_ea_trade_intent_buffer_depth";

/// Identifies one storage request so its result can be matched to it.
pub type OpId = u64;

transitions! {
    /// Transitions of the master EA's IntentQueue. One intent moves
    /// `append_waiting → appending → queued → in_flight ⇄ retry_wait → removing → (gone)`.
    pub enum T ("ea.master") {
        EmitAppend = "T01": "(none)", "handle_emit(intent): the queue has room and no older intent of the same trade is still waiting for its append" => "appending"; "PersistAppend{op, intent}; handle_emit returns Ok",
        EmitBehind = "T02": "(none)", "handle_emit(intent): the queue has room but an older intent of the same trade is not yet durable" => "append_waiting"; "nothing yet: its append is issued (T06) once the older one is durable, so the file keeps the trade's order; handle_emit returns Ok",
        EmitRefused = "T03": "(none)", "handle_emit(intent): the queue already holds `capacity` intents, or already holds this intent_id" => "(none)"; "handle_emit returns Err(QueueFull) or Err(Duplicate); counted rejected_full / rejected_duplicate; nothing is queued and the terminal must pause and emit again",
        AppendDurable = "T04": "appending", "persist result Ok for its append op" => "queued"; "nothing by itself; T07 follows if it heads its trade and the pipe is connected, T06 for the next intent of the trade waiting for its append",
        AppendFailed = "T05": "appending", "persist result Failed (retryable or not) for its append op" => "append_retry_wait"; "timer at now + backoff(retry_backoff_ms, failures); counted append_failures; the intent is kept, never dropped",
        AppendIssued = "T06": "append_waiting / append_retry_wait", "the older intent of its trade became durable, or the append retry timer expired" => "appending"; "PersistAppend{op (new), intent}",
        Send = "T07": "queued", "it is the oldest unresolved intent of its trade and the pipe is connected" => "in_flight"; "ToAgent(Intent(intent)); attempts += 1; counted sends; ack timer at now + ack_timeout_ms",
        AckOk = "T08": "in_flight / retry_wait / queued after a send", "TradeIntentAck{result: Ok} (CORE_ACCEPTED)" => "removing"; "PersistRemove{op, intent_id, reason: Acked}; counted acked; the next intent of the trade may be sent (T07)",
        AckRetryable = "T09": "in_flight", "TradeIntentAck{result: Failed, retryable error}, attempts < 100" => "retry_wait"; "retry timer at now + w/2 + spread(intent_id, attempt) with w = max(retry_after_ms, backoff(retry_backoff_ms, attempts)) — a deterministic spread in [w/2, w] so a refused burst does not come back as one; counted retries",
        AckTimeout = "T10": "in_flight", "ack timer expired, attempts < 100" => "retry_wait"; "retry timer at now + w/2 + spread(intent_id, attempt), w = backoff(retry_backoff_ms, attempts); counted retries",
        Resend = "T11": "retry_wait", "retry timer expired while the pipe is connected, or the pipe reconnected after it expired" => "in_flight"; "ToAgent(Intent(intent)) with the same intent_id; attempts += 1; counted sends; ack timer at now + ack_timeout_ms",
        GaveUp = "T12": "in_flight", "retryable failure or ack timeout after the 100th send (MAX_TRIES)" => "removing"; "GaveUp{intent_id, trade_id, attempts}; PersistRemove{op, intent_id, reason: GaveUp}; counted gave_up; the next intent of the trade may be sent",
        Rejected = "T13": "in_flight / retry_wait / queued after a send", "TradeIntentAck{result: Failed, non-retryable error; a missing code counts as INTERNAL}" => "removing"; "Failed{intent_id, trade_id, error}; PersistRemove{op, intent_id, reason: Rejected(error)}; counted failed; the next intent of the trade may be sent",
        AckIgnored = "T14": "any", "TradeIntentAck for an unknown, never-sent or already resolved intent; a retryable failure for an intent not in flight; result Pending" => "unchanged"; "counted ignored_acks",
        RemoveDurable = "T15": "removing", "persist result Ok for its remove op" => "(gone)"; "nothing; its slot in the queue is freed",
        RemoveFailed = "T16": "removing", "persist result Failed for its remove op" => "remove_retry_wait"; "timer at now + backoff(retry_backoff_ms, failures); counted remove_failures",
        RemoveRetry = "T17": "remove_retry_wait", "remove retry timer expired" => "removing"; "PersistRemove{op (new), intent_id, reason}",
        PersistIgnored = "T18": "any", "persist result for an op that is not an intent's current op (late, duplicated or unknown)" => "unchanged"; "counted ignored_persist_results",
        PipeConnected = "T19": "pipe: any", "handle_pipe_connected" => "pipe: connected"; "T07 / T11 for every intent whose turn it is, in emission order; pending retry timers re-armed",
        PipeClosed = "T20": "pipe: any", "handle_pipe_closed" => "pipe: disconnected"; "T21 for each in_flight intent; retry timers parked until the pipe reconnects",
        Interrupted = "T21": "in_flight", "pipe closed before the ack arrived" => "queued"; "ack timer cancelled; the send stays counted; sent again (T07) when the pipe reconnects",
        ConfigApplied = "T22": "any", "handle_delivery_config(valid AgentDeliveryConfig)" => "unchanged"; "ack_timeout_ms and retry_backoff_ms apply to every timer armed from now on",
        ConfigRejected = "T23": "any", "handle_delivery_config(config out of range)" => "unchanged"; "old config kept; counted config_rejected",
        Recovered = "T24": "(durable)", "recover(config, intents appended and not removed), in file order" => "queued"; "nothing until the pipe connects; attempts restart at 0",
    }
}

pub const SPEC: MachineSpec = MachineSpec {
    name: "ea.master",
    summary: "The master EA's durable IntentQueue: every open / modify / partial close / close the \
              terminal sees is appended to the EA's file, then sent to the agent in per-trade \
              order and re-sent with backoff until the core answers (CORE_ACCEPTED, a \
              non-retryable failure, or 100 tries), then removed from the file.",
    states: &[
        ("append_waiting", "accepted in memory; waits for an older intent of its trade to be durable before its own append, so the file keeps per-trade order"),
        ("appending", "PersistAppend issued, result not yet known; never sent"),
        ("append_retry_wait", "the append failed; waits for its backoff before appending again"),
        ("queued", "durable; waits for its turn in the trade (older intents resolved) and for a connected pipe"),
        ("in_flight", "sent to the agent; waits for TradeIntentAck or the ack timeout"),
        ("retry_wait", "the last send failed retryably or timed out; waits for its backoff"),
        ("removing", "resolved (acked, rejected or given up); PersistRemove issued"),
        ("remove_retry_wait", "the removal failed; waits for its backoff before removing again"),
        ("pipe: connected / disconnected", "whether the local pipe to the agent is up; nothing is sent while it is down"),
    ],
    invariants: &[
        "An intent is sent only after its PersistAppend was reported durable.",
        "Per trade_id at most one intent is in flight, and a trade's intents are sent in the order the terminal emitted them; different trades are sent independently.",
        "Per trade_id appends are issued in emission order, so recover() restores the trade's order from the file.",
        "The queue never holds more than `capacity` intents accepted by handle_emit; a full queue answers Err(QueueFull) and drops nothing.",
        "Every accepted intent ends acked, or with a loud, counted GaveUp (after exactly 100 sends) or Failed (non-retryable error); none disappears silently.",
        "A retry re-sends the same intent_id, so the core can deduplicate it.",
        "Only sends count as tries: while the pipe is down nothing is sent and nothing is given up.",
    ],
    transitions: T::TABLE,
};

/// What builds an [`IntentQueue`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntentQueueConfig {
    /// Timeouts and backoff; replaced live by [`IntentQueue::handle_delivery_config`].
    pub delivery: AgentDeliveryConfig,
    /// Most intents held at once (appending, queued, in flight or being removed).
    pub capacity: usize,
}

impl Default for IntentQueueConfig {
    fn default() -> Self {
        IntentQueueConfig {
            delivery: AgentDeliveryConfig::default(),
            capacity: 1_024,
        }
    }
}

/// A storage request that did not complete. A lost reply is reported the same way, which is
/// safe because every write is keyed by intent id and therefore idempotent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PersistError {
    pub retryable: bool,
}

/// Why an intent leaves the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoveReason {
    /// The core answered Ok (CORE_ACCEPTED).
    Acked,
    /// MAX_TRIES sends brought no acceptance.
    GaveUp { attempts: u32 },
    /// The core refused it for good.
    Rejected { error: ErrorCode },
}

/// Why `handle_emit` refused an intent. Either way nothing was queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmitError {
    /// The queue is full: the terminal must pause and emit the event again later.
    QueueFull { capacity: usize },
    /// An intent with this id is already held.
    Duplicate,
}

/// Everything the queue asks its driver to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    Fired(Fired),
    /// Append the intent to the file (idempotent by intent_id), then call
    /// `handle_persist_result(op, …)`.
    PersistAppend {
        op: OpId,
        intent: TradeIntent,
    },
    /// Mark the intent resolved in the file (idempotent by intent_id), then call
    /// `handle_persist_result(op, …)`.
    PersistRemove {
        op: OpId,
        intent_id: IntentId,
        reason: RemoveReason,
    },
    /// Write on the pipe to the agent.
    ToAgent(EaToAgent),
    /// Loud: the intent was sent MAX_TRIES times without acceptance and is abandoned.
    GaveUp {
        intent_id: IntentId,
        trade_id: TradeId,
        attempts: u32,
    },
    /// Loud: the core refused the intent with a non-retryable error.
    Failed {
        intent_id: IntentId,
        trade_id: TradeId,
        error: ErrorCode,
    },
}

/// Gauges and counters of the queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IntentQueueMetrics {
    /// `echo_ea_trade_intent_buffer_depth`: intents held and not yet resolved.
    pub depth: usize,
    pub capacity: usize,
    pub in_flight: usize,
    /// Resolved intents whose removal is not yet durable (they still take a slot).
    pub removing: usize,
    pub emitted: u64,
    pub rejected_full: u64,
    pub rejected_duplicate: u64,
    pub append_failures: u64,
    pub sends: u64,
    pub retries: u64,
    pub acked: u64,
    pub gave_up: u64,
    pub failed: u64,
    pub ignored_acks: u64,
    pub remove_failures: u64,
    pub ignored_persist_results: u64,
    pub config_rejected: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    AppendWaiting,
    Appending { op: OpId },
    AppendRetryWait,
    Queued,
    InFlight,
    RetryWait,
    Removing { op: OpId, reason: RemoveReason },
    RemoveRetryWait { reason: RemoveReason },
}

impl Stage {
    fn durable(self) -> bool {
        !matches!(
            self,
            Stage::AppendWaiting | Stage::Appending { .. } | Stage::AppendRetryWait
        )
    }
    fn resolved(self) -> bool {
        matches!(self, Stage::Removing { .. } | Stage::RemoveRetryWait { .. })
    }
}

#[derive(Clone, Debug)]
struct Entry {
    intent: TradeIntent,
    stage: Stage,
    /// Sends so far in this incarnation.
    attempts: u32,
    /// Failed storage writes in the current stage, for their backoff.
    write_failures: u32,
    /// The armed or parked deadline of the current stage.
    deadline: Option<Instant>,
}

/// The master EA's durable, bounded, per-trade ordered queue of trade intents.
#[derive(Debug)]
pub struct IntentQueue {
    config: IntentQueueConfig,
    connected: bool,
    next_seq: u64,
    next_op: OpId,
    /// Keyed by local emission order, so iteration is emission order.
    entries: BTreeMap<u64, Entry>,
    by_intent: BTreeMap<IntentId, u64>,
    /// Unresolved intents per trade, oldest first; the front is the only one that may be sent.
    trades: BTreeMap<TradeId, VecDeque<u64>>,
    ops: BTreeMap<OpId, u64>,
    /// Armed deadlines; a parked retry keeps its `Entry::deadline` but leaves this index.
    timers: BTreeSet<(Instant, u64)>,
    out: VecDeque<Output>,
    m: IntentQueueMetrics,
}

impl IntentQueue {
    /// An empty queue with the pipe disconnected.
    pub fn new(config: IntentQueueConfig) -> Self {
        IntentQueue {
            config,
            connected: false,
            next_seq: 0,
            next_op: 0,
            entries: BTreeMap::new(),
            by_intent: BTreeMap::new(),
            trades: BTreeMap::new(),
            ops: BTreeMap::new(),
            timers: BTreeSet::new(),
            out: VecDeque::new(),
            m: IntentQueueMetrics {
                capacity: config.capacity,
                ..IntentQueueMetrics::default()
            },
        }
    }

    /// Rebuilds the queue from the file: `durable` is every intent appended and not removed, in
    /// file order. All of them are queued again (even beyond `capacity`: a durable intent is
    /// never dropped; `handle_emit` refuses until the queue drains). Send counts restart at 0.
    pub fn recover(config: IntentQueueConfig, durable: Vec<TradeIntent>) -> Self {
        let mut q = IntentQueue::new(config);
        for intent in durable {
            if q.by_intent.contains_key(&intent.intent_id) {
                // The file is keyed by intent id; a repeated row is the same intent.
                continue;
            }
            let subject = Subject::Intent(intent.intent_id.clone());
            q.insert(intent, Stage::Queued);
            q.fire(T::Recovered, subject);
        }
        q
    }

    /// The terminal saw an open / modify / partial close / close. `Ok` means the queue took
    /// responsibility for it (it is durable only once the append is reported Ok).
    pub fn handle_emit(&mut self, _now: Instant, intent: TradeIntent) -> Result<(), EmitError> {
        let subject = Subject::Intent(intent.intent_id.clone());
        if self.by_intent.contains_key(&intent.intent_id) {
            self.m.rejected_duplicate += 1;
            self.fire(T::EmitRefused, subject);
            return Err(EmitError::Duplicate);
        }
        if self.entries.len() >= self.config.capacity {
            self.m.rejected_full += 1;
            self.fire(T::EmitRefused, subject);
            return Err(EmitError::QueueFull {
                capacity: self.config.capacity,
            });
        }
        self.m.emitted += 1;
        let behind = self
            .trades
            .get(&intent.trade_id)
            .and_then(|q| q.back())
            .and_then(|s| self.entries.get(s))
            .is_some_and(|e| !e.stage.durable());
        if behind {
            self.insert(intent, Stage::AppendWaiting);
            self.fire(T::EmitBehind, subject);
        } else {
            let seq = self.insert(intent, Stage::AppendWaiting);
            self.issue_append(seq, T::EmitAppend);
        }
        Ok(())
    }

    /// The result of a `PersistAppend` or `PersistRemove`.
    pub fn handle_persist_result(
        &mut self,
        now: Instant,
        op: OpId,
        result: Result<(), PersistError>,
    ) {
        let Some(seq) = self.ops.remove(&op) else {
            self.m.ignored_persist_results += 1;
            self.fire(T::PersistIgnored, Subject::None);
            return;
        };
        let Some(entry) = self.entries.get(&seq) else {
            self.m.ignored_persist_results += 1;
            self.fire(T::PersistIgnored, Subject::None);
            return;
        };
        let subject = Subject::Intent(entry.intent.intent_id.clone());
        match (entry.stage, result) {
            (Stage::Appending { op: cur }, Ok(())) if cur == op => {
                let trade = entry.intent.trade_id.clone();
                self.set_stage(seq, Stage::Queued);
                self.fire(T::AppendDurable, subject);
                self.pump_trade(now, &trade);
                // The next intent of the trade may now append: the file keeps the trade's order.
                let next = self.trades.get(&trade).and_then(|q| {
                    let pos = q.iter().position(|s| *s == seq)?;
                    q.get(pos + 1).copied()
                });
                if let Some(next) = next {
                    if self.stage(next) == Some(Stage::AppendWaiting) {
                        self.issue_append(next, T::AppendIssued);
                    }
                }
            }
            (Stage::Appending { op: cur }, Err(_)) if cur == op => {
                self.m.append_failures += 1;
                let failures = self.bump_write_failures(seq);
                self.set_stage(seq, Stage::AppendRetryWait);
                let at = now + backoff(self.backoff_base(), failures);
                self.arm(seq, at);
                self.fire(T::AppendFailed, subject);
            }
            (Stage::Removing { op: cur, .. }, Ok(())) if cur == op => {
                self.fire(T::RemoveDurable, subject);
                self.forget(seq);
            }
            (Stage::Removing { op: cur, reason }, Err(_)) if cur == op => {
                self.m.remove_failures += 1;
                let failures = self.bump_write_failures(seq);
                self.set_stage(seq, Stage::RemoveRetryWait { reason });
                let at = now + backoff(self.backoff_base(), failures);
                self.arm(seq, at);
                self.fire(T::RemoveFailed, subject);
            }
            _ => {
                self.m.ignored_persist_results += 1;
                self.fire(T::PersistIgnored, subject);
            }
        }
    }

    /// The core's answer to an intent, relayed by the agent.
    pub fn handle_ack(&mut self, now: Instant, ack: TradeIntentAck) {
        let subject = Subject::Intent(ack.intent_id.clone());
        let Some(&seq) = self.by_intent.get(&ack.intent_id) else {
            self.ignore_ack(subject);
            return;
        };
        let Some(stage) = self.stage(seq) else {
            self.ignore_ack(subject);
            return;
        };
        let attempts = self.entries.get(&seq).map_or(0, |e| e.attempts);
        let sent_unresolved =
            attempts > 0 && matches!(stage, Stage::InFlight | Stage::RetryWait | Stage::Queued);
        if !sent_unresolved {
            self.ignore_ack(subject);
            return;
        }
        match ack.result {
            AckResult::Ok => {
                self.m.acked += 1;
                self.resolve(now, seq, RemoveReason::Acked, T::AckOk, subject);
            }
            AckResult::Pending => self.ignore_ack(subject),
            AckResult::Failed => {
                let error = ack.error.unwrap_or(ErrorCode::Internal);
                if !error.is_retryable() {
                    self.m.failed += 1;
                    let failed = self.entries.get(&seq).map(|e| Output::Failed {
                        intent_id: e.intent.intent_id.clone(),
                        trade_id: e.intent.trade_id.clone(),
                        error,
                    });
                    self.fire(T::Rejected, subject);
                    self.out.extend(failed);
                    self.resolve_quiet(now, seq, RemoveReason::Rejected { error });
                } else if stage == Stage::InFlight {
                    let after = Duration::from_millis(u64::from(ack.retry_after_ms));
                    self.retry_or_give_up(now, seq, after, T::AckRetryable, subject);
                } else {
                    // Already waiting for a retry: a second failure report changes nothing.
                    self.ignore_ack(subject);
                }
            }
        }
    }

    /// The agent's pipe is up: whatever's turn it is goes out now.
    pub fn handle_pipe_connected(&mut self, now: Instant) {
        self.connected = true;
        self.fire(T::PipeConnected, Subject::None);
        let seqs: Vec<u64> = self.entries.keys().copied().collect();
        for seq in seqs {
            let Some(e) = self.entries.get(&seq) else {
                continue;
            };
            if e.stage == Stage::RetryWait {
                match e.deadline {
                    Some(at) if at > now => self.arm(seq, at),
                    _ => self.send(now, seq, T::Resend),
                }
            } else if e.stage == Stage::Queued && self.is_head(seq) {
                self.send(now, seq, T::Send);
            }
        }
    }

    /// The agent's pipe is down: in-flight intents will be sent again on reconnect.
    pub fn handle_pipe_closed(&mut self, _now: Instant) {
        self.connected = false;
        self.fire(T::PipeClosed, Subject::None);
        let seqs: Vec<u64> = self.entries.keys().copied().collect();
        for seq in seqs {
            let Some(e) = self.entries.get(&seq) else {
                continue;
            };
            match e.stage {
                Stage::InFlight => {
                    let subject = Subject::Intent(e.intent.intent_id.clone());
                    self.clear_timer(seq);
                    self.set_stage(seq, Stage::Queued);
                    self.fire(T::Interrupted, subject);
                }
                Stage::RetryWait => self.park_timer(seq),
                _ => {}
            }
        }
    }

    /// Live retry settings pushed by the core through the agent.
    pub fn handle_delivery_config(&mut self, _now: Instant, config: AgentDeliveryConfig) {
        if config.validate().is_ok() {
            self.config.delivery = config;
            self.fire(T::ConfigApplied, Subject::None);
        } else {
            self.m.config_rejected += 1;
            self.fire(T::ConfigRejected, Subject::None);
        }
    }

    /// Processes every deadline at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Collect first: deadlines armed while processing (possibly at `now` itself) wait for
        // the next call, so a zero backoff cannot spin this loop.
        let due: Vec<(Instant, u64)> = self.timers.range(..=(now, u64::MAX)).copied().collect();
        for (at, seq) in due {
            self.timers.remove(&(at, seq));
            let Some(e) = self.entries.get_mut(&seq) else {
                continue;
            };
            e.deadline = None;
            let subject = Subject::Intent(e.intent.intent_id.clone());
            match e.stage {
                Stage::AppendRetryWait => self.issue_append(seq, T::AppendIssued),
                Stage::InFlight => {
                    self.retry_or_give_up(now, seq, Duration::ZERO, T::AckTimeout, subject)
                }
                Stage::RetryWait => self.send(now, seq, T::Resend),
                Stage::RemoveRetryWait { reason } => self.issue_remove(seq, reason, T::RemoveRetry),
                _ => {}
            }
        }
    }

    /// Next output for the driver, `None` when drained.
    pub fn poll(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The one deadline at which `handle_timeout` must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    pub fn metrics(&self) -> IntentQueueMetrics {
        let mut m = self.m;
        m.capacity = self.config.capacity;
        m.depth = 0;
        m.in_flight = 0;
        m.removing = 0;
        for e in self.entries.values() {
            if e.stage.resolved() {
                m.removing += 1;
            } else {
                m.depth += 1;
            }
            if e.stage == Stage::InFlight {
                m.in_flight += 1;
            }
        }
        m
    }

    /// Whether `handle_emit` would refuse for lack of room.
    pub fn is_full(&self) -> bool {
        self.entries.len() >= self.config.capacity
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    pub fn config(&self) -> IntentQueueConfig {
        self.config
    }

    // ---- internals ----

    fn fire(&mut self, t: T, subject: Subject) {
        self.out.push_back(Output::Fired(Fired {
            transition: t.spec(),
            subject,
        }));
    }

    fn ignore_ack(&mut self, subject: Subject) {
        self.m.ignored_acks += 1;
        self.fire(T::AckIgnored, subject);
    }

    fn backoff_base(&self) -> u64 {
        u64::from(self.config.delivery.retry_backoff_ms)
    }

    fn insert(&mut self, intent: TradeIntent, stage: Stage) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_intent.insert(intent.intent_id.clone(), seq);
        self.trades
            .entry(intent.trade_id.clone())
            .or_default()
            .push_back(seq);
        self.entries.insert(
            seq,
            Entry {
                intent,
                stage,
                attempts: 0,
                write_failures: 0,
                deadline: None,
            },
        );
        seq
    }

    fn stage(&self, seq: u64) -> Option<Stage> {
        self.entries.get(&seq).map(|e| e.stage)
    }

    fn set_stage(&mut self, seq: u64, stage: Stage) {
        if let Some(e) = self.entries.get_mut(&seq) {
            if e.stage.durable() != stage.durable() || e.stage.resolved() != stage.resolved() {
                e.write_failures = 0;
            }
            e.stage = stage;
        }
    }

    fn bump_write_failures(&mut self, seq: u64) -> u32 {
        self.entries.get_mut(&seq).map_or(1, |e| {
            e.write_failures = e.write_failures.saturating_add(1);
            e.write_failures
        })
    }

    fn alloc_op(&mut self, seq: u64) -> OpId {
        let op = self.next_op;
        self.next_op += 1;
        self.ops.insert(op, seq);
        op
    }

    fn arm(&mut self, seq: u64, at: Instant) {
        self.clear_timer(seq);
        if let Some(e) = self.entries.get_mut(&seq) {
            e.deadline = Some(at);
            self.timers.insert((at, seq));
        }
    }

    fn clear_timer(&mut self, seq: u64) {
        if let Some(e) = self.entries.get_mut(&seq) {
            if let Some(at) = e.deadline.take() {
                self.timers.remove(&(at, seq));
            }
        }
    }

    /// Leaves the deadline on the entry but stops the driver from waking for it.
    fn park_timer(&mut self, seq: u64) {
        if let Some(at) = self.entries.get(&seq).and_then(|e| e.deadline) {
            self.timers.remove(&(at, seq));
        }
    }

    fn is_head(&self, seq: u64) -> bool {
        self.entries
            .get(&seq)
            .and_then(|e| self.trades.get(&e.intent.trade_id))
            .and_then(|q| q.front())
            == Some(&seq)
    }

    fn issue_append(&mut self, seq: u64, t: T) {
        let op = self.alloc_op(seq);
        self.set_stage(seq, Stage::Appending { op });
        let Some(e) = self.entries.get(&seq) else {
            return;
        };
        let intent = e.intent.clone();
        self.fire(t, Subject::Intent(intent.intent_id.clone()));
        self.out.push_back(Output::PersistAppend { op, intent });
    }

    fn issue_remove(&mut self, seq: u64, reason: RemoveReason, t: T) {
        let op = self.alloc_op(seq);
        self.set_stage(seq, Stage::Removing { op, reason });
        let Some(e) = self.entries.get(&seq) else {
            return;
        };
        let intent_id = e.intent.intent_id.clone();
        self.fire(t, Subject::Intent(intent_id.clone()));
        self.out.push_back(Output::PersistRemove {
            op,
            intent_id,
            reason,
        });
    }

    /// Sends the head of `trade` if it is queued and the pipe is up.
    fn pump_trade(&mut self, now: Instant, trade: &TradeId) {
        if !self.connected {
            return;
        }
        let Some(&head) = self.trades.get(trade).and_then(|q| q.front()) else {
            return;
        };
        if self.stage(head) == Some(Stage::Queued) {
            self.send(now, head, T::Send);
        }
    }

    fn send(&mut self, now: Instant, seq: u64, t: T) {
        let ack_timeout = Duration::from_millis(u64::from(self.config.delivery.ack_timeout_ms));
        let Some(e) = self.entries.get_mut(&seq) else {
            return;
        };
        e.attempts = e.attempts.saturating_add(1);
        let intent = e.intent.clone();
        self.set_stage(seq, Stage::InFlight);
        self.arm(seq, now + ack_timeout);
        self.m.sends += 1;
        self.fire(t, Subject::Intent(intent.intent_id.clone()));
        self.out
            .push_back(Output::ToAgent(EaToAgent::Intent(intent)));
    }

    fn retry_or_give_up(
        &mut self,
        now: Instant,
        seq: u64,
        retry_after: Duration,
        t: T,
        subject: Subject,
    ) {
        let Some(e) = self.entries.get(&seq) else {
            return;
        };
        let attempts = e.attempts;
        if attempts >= MAX_TRIES {
            self.m.gave_up += 1;
            let gave_up = Output::GaveUp {
                intent_id: e.intent.intent_id.clone(),
                trade_id: e.intent.trade_id.clone(),
                attempts,
            };
            self.fire(T::GaveUp, subject);
            self.out.push_back(gave_up);
            self.resolve_quiet(now, seq, RemoveReason::GaveUp { attempts });
            return;
        }
        self.m.retries += 1;
        let wait = backoff(self.backoff_base(), attempts);
        let wait = if retry_after > wait {
            retry_after
        } else {
            wait
        };
        // Spread retries over [wait/2, wait]: without it, every intent refused in one burst
        // comes back in the same instant and meets the same full queue again. The spread is a
        // pure function of the intent id and attempt, so runs stay deterministic.
        let key = format!("{}#{attempts}", e.intent.intent_id);
        let spread = crate::ids::stable_hash(key.as_bytes()) % (wait.0 / 2 + 1);
        let wait = Duration(wait.0 / 2 + spread);
        self.set_stage(seq, Stage::RetryWait);
        self.arm(seq, now + wait);
        self.fire(t, subject);
    }

    /// Resolution with its own Fired record.
    fn resolve(&mut self, now: Instant, seq: u64, reason: RemoveReason, t: T, subject: Subject) {
        self.fire(t, subject);
        self.resolve_quiet(now, seq, reason);
    }

    /// Takes the intent out of its trade's order, persists its removal and lets the trade's
    /// next intent go. The caller has already reported the transition.
    fn resolve_quiet(&mut self, now: Instant, seq: u64, reason: RemoveReason) {
        self.clear_timer(seq);
        let Some(trade) = self.entries.get(&seq).map(|e| e.intent.trade_id.clone()) else {
            return;
        };
        if let Some(q) = self.trades.get_mut(&trade) {
            q.retain(|s| *s != seq);
            if q.is_empty() {
                self.trades.remove(&trade);
            }
        }
        let op = self.alloc_op(seq);
        self.set_stage(seq, Stage::Removing { op, reason });
        if let Some(e) = self.entries.get(&seq) {
            self.out.push_back(Output::PersistRemove {
                op,
                intent_id: e.intent.intent_id.clone(),
                reason,
            });
        }
        self.pump_trade(now, &trade);
    }

    fn forget(&mut self, seq: u64) {
        self.clear_timer(seq);
        if let Some(e) = self.entries.remove(&seq) {
            self.by_intent.remove(&e.intent.intent_id);
        }
    }
}
