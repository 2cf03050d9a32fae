//! The agent's DeliveryManager: one machine per trading host, between the core's stream and the
//! local pipes of the EAs it serves.
//!
//! It owns the core link state (hello, heartbeat), the routing of master intents to the core and
//! of their acks back (with explicit `BROKER_BUSY` backpressure), the durable command **ledger**
//! (what was buffered, delivered, refused, completed), pipe writes to slave EAs with ack timeout,
//! backoff and `max_retries`, the stage reports to the core, and execution results on their way
//! to the core.
//!
//! It must never report a stage before the ledger write that stage depends on is reported
//! durable, never write a command to a pipe before its `Buffered` record is durable, never drop an
//! intent or an execution result without an explicit, counted answer, and never read a clock,
//! draw a random number or iterate a `HashMap`. Storage is an output (`PersistLedger`) and its
//! fate an input ([`DeliveryManager::handle_ledger_result`]).

mod intents;
mod ledger;
mod pipe;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

pub use ledger::{LedgerOpId, LedgerRecord, LedgerResult, LedgerState};

use crate::config::AgentDeliveryConfig;
use crate::ids::{AccountId, AgentId, CommandId};
use crate::msg::{
    AgentHello, AgentToCore, AgentToEa, CommandAck, CoreHello, CoreToAgent, EaToAgent,
    ExecutionResult, Role, PROTOCOL_VERSION,
};
use crate::spec::{Fired, MachineSpec, Subject};
use crate::time::{Duration, Instant};

use intents::IntentRoutes;
use ledger::Entry;

crate::transitions! {
    /// Every transition of the agent's DeliveryManager. Ids are stable: never renumber or reuse.
    pub enum T ("agent.delivery") {
        T01 = "T01": "any link state",
            "core stream connected"
            => "Connecting";
            "ToCore AgentHello{agent_id, protocol_version, supports_lossless_delivery=true, accounts}; if a stream was up: heartbeat stopped and every intent still awaiting its ack answered IntentAck FAILED BROKER_BUSY",
        T02 = "T02": "Connecting",
            "CoreHello accepted=true"
            => "Online";
            "agent config applied; ToEa DeliveryConfig to every open master pipe; per ledger entry, in ledger order, its durable stage re-reported (AGENT_BUFFERED OK / PIPE_DELIVERED OK / PIPE_DELIVERED FAILED) and any held ExecutionResult sent; held results of unknown commands sent; heartbeat timer armed",
        T03 = "T03": "Connecting",
            "CoreHello accepted=false"
            => "Refused";
            "counted (hello_refused); from now on intents are answered BROKER_BUSY and nothing but Hello is sent to the core",
        T04 = "T04": "Connecting / Online / Refused",
            "core stream closed"
            => "Offline";
            "heartbeat stopped; every intent awaiting its ack answered IntentAck FAILED BROKER_BUSY (the master re-sends); stage reports and ExecutionResults are held from now on",
        T05 = "T05": "Online",
            "heartbeat timer expired"
            => "Online";
            "ToCore Heartbeat; next heartbeat in heartbeat_interval_ms",
        T06 = "T06": "any link state",
            "DeliveryHeartbeat whose agent config is in range and differs from the current one"
            => "same link state, new config";
            "config applied to new timers (armed ones keep their deadline); ToEa DeliveryConfig to every open master pipe",
        T07 = "T07": "any link state",
            "CoreHello or DeliveryHeartbeat whose agent config is out of range"
            => "unchanged (old config kept)";
            "counted (config_rejected)",
        T08 = "T08": "Online",
            "Intent from a master EA (intent.master = its account), route table has room"
            => "Online, route intent_id -> master remembered";
            "ToCore Intent",
        T09 = "T09": "Offline / Connecting / Refused",
            "Intent from a master EA"
            => "unchanged (the agent keeps nothing)";
            "ToEa IntentAck FAILED BROKER_BUSY retry_after_ms=retry_backoff_ms (the master's IntentQueue re-sends)",
        T10 = "T10": "Online",
            "Intent from a master EA while the route table is full of live routes, or while the same intent_id awaits an ack for another master"
            => "unchanged";
            "ToEa IntentAck FAILED BROKER_BUSY retry_after_ms=retry_backoff_ms",
        T11 = "T11": "any link state",
            "Intent from a slave or unknown account, or whose intent.master is not the pipe's account"
            => "unchanged";
            "ToEa IntentAck FAILED UNKNOWN_ACCOUNT (not a master here) or PROTOCOL_VIOLATION (master mismatch)",
        T12 = "T12": "route known",
            "core IntentAck"
            => "route forgotten (kept while the result is PENDING)";
            "ToEa{master} IntentAck as received",
        T13 = "T13": "no route",
            "core IntentAck"
            => "unchanged";
            "dropped, counted (acks_unroutable): it cannot be routed; the master re-sends and the core re-acks",
        T14 = "T14": "Online, route table full",
            "Intent while the oldest route is older than intent_route_ttl"
            => "oldest route forgotten";
            "counted (intent_routes_expired); then T08 for the new intent",
        T15 = "T15": "no entry",
            "Command for a slave this agent serves, active entries below max_active_commands"
            => "Persisting";
            "PersistLedger{state Buffered}; nothing is reported to the core yet",
        T16 = "T16": "no entry",
            "Command for an account this agent does not serve as slave"
            => "no entry";
            "ToCore CommandAck AGENT_BUFFERED FAILED UNKNOWN_ACCOUNT",
        T17 = "T17": "no entry",
            "Command while active entries = max_active_commands"
            => "no entry";
            "ToCore CommandAck AGENT_BUFFERED FAILED BROKER_BUSY (the core queues it, spending no attempt, and sends again once the agent shows room: core.delivery.T40)",
        T18 = "T18": "Persisting",
            "LedgerResult Ok for the Buffered write"
            => "WaitingPipe";
            "ToCore CommandAck AGENT_BUFFERED OK; then T28 if the slave's pipe is open",
        T19 = "T19": "Persisting / Confirming / Rejecting / Completing",
            "LedgerResult Failed (retryable, or any failure of a write after the first)"
            => "unchanged";
            "write retry timer at backoff(retry_backoff_ms, failed writes); no stage reported",
        T20 = "T20": "Persisting",
            "LedgerResult Failed not retryable, or the max_retries-th failed Buffered write"
            => "no entry";
            "ToCore CommandAck AGENT_BUFFERED FAILED JOURNAL_UNAVAILABLE (retryable: the core re-sends)",
        T21 = "T21": "Persisting / Confirming / Rejecting / Completing",
            "write retry timer expired, or the previous write became durable while a newer state waits"
            => "unchanged";
            "PersistLedger of the entry's latest state (new op id; the write is idempotent by command_id)",
        T22 = "T22": "Persisting",
            "same Command again"
            => "Persisting";
            "nothing: AGENT_BUFFERED follows the pending write; no second PersistLedger",
        T23 = "T23": "WaitingPipe / Backoff / AwaitingAck / Confirming / Rejecting",
            "same Command again"
            => "unchanged";
            "ToCore CommandAck AGENT_BUFFERED OK",
        T24 = "T24": "Parked",
            "same Command again"
            => "WaitingPipe, attempts reset";
            "ToCore CommandAck AGENT_BUFFERED OK; then T28 if the slave's pipe is open",
        T25 = "T25": "Delivered / Completing / Completed",
            "same Command again (the core lacks the ExecutionResult)"
            => "unchanged";
            "ToCore CommandAck of the durable stage (PIPE_DELIVERED OK once Delivered or Completed is durable, else AGENT_BUFFERED OK); ToEa Command again if durable and the pipe is open, without ack timer (the slave dedupes and re-sends its result)",
        T26 = "T26": "Rejected",
            "same Command again"
            => "Rejected";
            "ToCore CommandAck PIPE_DELIVERED FAILED with the EA's reason",
        T27 = "T27": "PipeClosed / PipeOpen",
            "pipe connected for an account this agent serves"
            => "PipeOpen";
            "ToEa Handshake first; master: ToEa DeliveryConfig if the config came from the core; slave: its WaitingPipe / Backoff / AwaitingAck / Parked entries -> WaitingPipe with attempts reset, then T28 for each in ledger order",
        T28 = "T28": "WaitingPipe (pipe open) / Backoff (retry timer expired)",
            "the slave's pipe is open, and its window has room (fewer than max_pipe_inflight entries AwaitingAck / Backoff) or the entry already holds a place in it (Backoff)"
            => "AwaitingAck";
            "ToEa Command; attempts + 1; ack timer at now + ack_timeout_ms",
        T29 = "T29": "PipeOpen",
            "pipe closed"
            => "PipeClosed";
            "that slave's AwaitingAck / Backoff entries -> WaitingPipe, timers stopped; the cut-off write is not counted as a failed attempt",
        T30 = "T30": "PipeClosed",
            "pipe connected for an account this agent does not serve"
            => "PipeClosed";
            "nothing written to it; counted (unknown_pipes)",
        T31 = "T31": "AwaitingAck (or a late ack in Backoff / WaitingPipe / Parked)",
            "PipeDeliveryAck OK from the command's slave"
            => "Confirming";
            "timer stopped; PersistLedger{state Delivered}; latency sample (echo_agent_pipe_delivery_latency_ms)",
        T32 = "T32": "Confirming",
            "LedgerResult Ok for the Delivered write"
            => "Delivered";
            "ToCore CommandAck PIPE_DELIVERED OK",
        T33 = "T33": "AwaitingAck",
            "ack timer expired or pipe write failed, attempts < max_retries"
            => "Backoff";
            "retry timer at backoff(retry_backoff_ms, attempts); echo_agent_pipe_retry_total + 1",
        T34 = "T34": "AwaitingAck",
            "ack timer expired or pipe write failed, attempts >= max_retries"
            => "Parked";
            "ToCore CommandAck PIPE_DELIVERED FAILED PIPE_UNAVAILABLE (retryable at the core); no timer; echo_agent_pipe_retry_total + 1",
        T35 = "T35": "AwaitingAck / Backoff / WaitingPipe / Parked",
            "PipeDeliveryAck FAILED from the command's slave"
            => "Rejecting";
            "timer stopped; PersistLedger{state Rejected(reason or EA_REJECTED)}; echo_agent_pipe_retry_total + 1",
        T36 = "T36": "Rejecting",
            "LedgerResult Ok for the Rejected write"
            => "Rejected (retained for dedupe)";
            "ToCore CommandAck PIPE_DELIVERED FAILED with the reason",
        T37 = "T37": "any",
            "stale pipe event: PipeDeliveryAck for an unknown command, from another account, or not expected in the entry's state; pipe write failure not awaited"
            => "unchanged";
            "ignored, counted (stale_pipe_events)",
        T38 = "T38": "Persisting / WaitingPipe / Backoff / AwaitingAck / Parked / Confirming / Delivered / Rejecting",
            "ExecutionResult from the command's slave"
            => "Completing";
            "pipe timer stopped; ToCore ExecutionResult (held in the entry while the link is not Online); PersistLedger{state Completed} once no other write is in flight",
        T39 = "T39": "Completing / Completed / Rejected / no entry",
            "ExecutionResult from the slave it names (a re-sent result)"
            => "unchanged";
            "ToCore ExecutionResult; while the link is not Online it waits in the bounded outbox instead",
        T40 = "T40": "any",
            "ExecutionResult from an account that is not a served slave, or naming another slave than the pipe's"
            => "unchanged";
            "dropped, counted (results_protocol_violations): forwarding it would corrupt another account's state",
        T41 = "T41": "Completing",
            "the Completed write is durable and the result has been sent to the core (whichever comes last)"
            => "Completed (retained for dedupe)";
            "none",
        T42 = "T42": "Completed / Rejected",
            "retained terminal entries exceed max_completed_retained (oldest first)"
            => "no entry";
            "DeleteLedger{command_id}",
        T43 = "T43": "(restart)",
            "DeliveryManager::recover, one durable LedgerRecord"
            => "Buffered -> WaitingPipe; Delivered -> Delivered; Completed -> Completed; Rejected -> Rejected";
            "none (the pipe's reconnect re-writes WaitingPipe entries, T27)",
        T44 = "T44": "Offline / Connecting / Refused, outbox full",
            "ExecutionResult for a command the ledger no longer holds"
            => "oldest held result evicted";
            "counted (results_evicted); the core's reconciler re-sends that command and the slave EA re-sends its cached result",
        T45 = "T45": "Connecting",
            "hello timer (heartbeat_interval_ms) with no CoreHello"
            => "Connecting";
            "AgentHello sent again; hello timer re-armed (a lost Hello or CoreHello must not leave the link half-open)",
        T46 = "T46": "any",
            "CoreToAgent::Cancel(command) for a slave this agent serves, its pipe open"
            => "unchanged";
            "AgentToEa::Cancel(command) written to the slave's pipe — the slave EA, which alone knows whether it executed, answers with an ExecutionResult (CANCELLED, or the real one)",
        T47 = "T47": "any",
            "CoreToAgent::Cancel for an account not served here, or whose pipe is closed"
            => "unchanged";
            "nothing (counted cancels_dropped); the core re-sends the cancel on its timer",
        T48 = "T48": "WaitingPipe (pipe open) / Parked re-sent",
            "its turn to be written, but max_pipe_inflight of the slave's entries are AwaitingAck / Backoff (the pipe's window is full)"
            => "WaitingPipe (queued)";
            "nothing written, no ack timer; T28 in ledger order as soon as an entry of that slave leaves AwaitingAck / Backoff (PipeDeliveryAck, ExecutionResult, parked after max_retries)",
        T49 = "T49": "AwaitingAck",
            "PipeDeliveryAck RETRY from the command's slave: the EA is alive and asks for time (max_pending commands unfinished, or its write-ahead of this command not yet durable)"
            => "Backoff";
            "the attempt is given back (backpressure, not a failed write: RETRY never parks a command nor reaches the core as PIPE_UNAVAILABLE); keeps its place in the pipe window; retry timer at min(backoff(retry_backoff_ms, RETRYs in a row), max(ack_timeout_ms, retry_backoff_ms)); echo_agent_pipe_retry_total + 1",
    }
}

/// The specification SPEC.md prints for this machine.
pub const SPEC: MachineSpec = MachineSpec {
    name: "agent.delivery",
    summary: "The agent's DeliveryManager (one per trading host). Forwards master intents to the \
              core with explicit BROKER_BUSY backpressure and routes their acks back; keeps a \
              durable ledger of every command handed to it; acknowledges AGENT_BUFFERED only once \
              the ledger write is on disk; writes commands to the slave EA's pipe with an ack \
              timeout, exponential backoff and max_retries; reports PIPE_DELIVERED / \
              PIPE_UNAVAILABLE / EA refusals to the core; forwards execution results; and is \
              rebuilt from the ledger alone after a crash.",
    states: &[
        ("Offline", "link: no stream to the core; intents are answered BROKER_BUSY"),
        ("Connecting", "link: AgentHello sent, waiting for CoreHello"),
        ("Online", "link: the core accepted the hello; intents are forwarded, stages reported, heartbeats sent"),
        ("Refused", "link: the core refused the hello (counted); nothing but Hello is sent"),
        ("PipeClosed", "pipe of one EA account: not connected; nothing is written to it"),
        ("PipeOpen", "pipe of one EA account: connected and Handshake written first"),
        ("Persisting", "entry: Buffered ledger write in flight or waiting to be retried; nothing reported"),
        ("WaitingPipe", "entry: durable Buffered, waiting for the slave's pipe; no timer"),
        ("AwaitingAck", "entry: written to the pipe, ack timer armed"),
        ("Backoff", "entry: a pipe attempt failed, retry timer armed"),
        ("Parked", "entry: max_retries pipe attempts failed, PIPE_UNAVAILABLE reported; no timer until the core re-sends or the pipe reopens"),
        ("Confirming", "entry: the EA acked OK; Delivered ledger write in flight"),
        ("Delivered", "entry: durable Delivered, PIPE_DELIVERED reported; waiting for the ExecutionResult"),
        ("Rejecting", "entry: the EA refused it (PipeDeliveryAck FAILED); Rejected ledger write in flight"),
        ("Rejected", "entry: durable Rejected and reported; retained for dedupe"),
        ("Completing", "entry: ExecutionResult seen; Completed write or its sending to the core pending"),
        ("Completed", "entry: durable Completed, result sent; retained for dedupe until evicted"),
    ],
    invariants: &[
        "AGENT_BUFFERED OK is reported only after the Buffered ledger write of that command was reported durable; PIPE_DELIVERED OK only after the Delivered write; PIPE_DELIVERED FAILED for an EA refusal only after the Rejected write.",
        "A command is written to a slave's pipe only after its Buffered record is durable, and on a pipe only after that pipe's Handshake.",
        "A command id held in the ledger is never persisted as a new Buffered entry again: a duplicate re-reports the stage that is durable.",
        "Each entry has at most one ledger write in flight; a newer state waits for it, so the store applies an entry's writes in order.",
        "Between resets (pipe reopened, command re-sent by the core) an entry makes at most max_retries pipe attempts; the last failure reports PIPE_DELIVERED FAILED PIPE_UNAVAILABLE and parks the entry with no timer.",
        "Bounded: intent routes <= max_intent_routes; active entries <= max_active_commands (excess commands answered BROKER_BUSY); retained terminal entries <= max_completed_retained (oldest deleted); held results of unknown commands <= max_result_outbox; per slave, entries AwaitingAck / Backoff <= max_pipe_inflight (the rest wait in WaitingPipe without an ack timer, T48).",
        "Every intent is forwarded or answered: UNKNOWN_ACCOUNT / PROTOCOL_VIOLATION when it did not come from its master's pipe, BROKER_BUSY when the link is not Online, the table is full, or the link dropped before the core's ack.",
        "Execution results of ledger entries are held in their entry until the link is Online and never dropped; only results of commands the ledger no longer holds can be evicted (T44, counted), and the core's reconciler recovers those.",
        "Nothing but AgentHello is sent to the core unless the link is Online; stage reports withheld meanwhile are re-derived from the ledger when it comes Online (T02).",
        "Deterministic: no clock, no randomness, no HashMap iteration; entries are processed in ledger order (seq).",
    ],
    transitions: T::TABLE,
};

/// Where the core link stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    Offline,
    Connecting,
    Online,
    Refused,
}

/// Where one ledger entry stands (the entry states of [`SPEC`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryPhase {
    Persisting,
    WaitingPipe,
    AwaitingAck,
    Backoff,
    Parked,
    Confirming,
    Delivered,
    Rejecting,
    Rejected,
    Completing,
    Completed,
}

impl EntryPhase {
    /// Durable as Buffered and still trying to reach the EA.
    fn is_pipe_pending(self) -> bool {
        matches!(
            self,
            EntryPhase::WaitingPipe
                | EntryPhase::AwaitingAck
                | EntryPhase::Backoff
                | EntryPhase::Parked
        )
    }
}

/// Everything the machine asks its driver to do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum AgentOutput {
    /// A transition was taken; it precedes the outputs it causes.
    Fired(Fired),
    /// Send on the core stream.
    ToCore(AgentToCore),
    /// Write on the local pipe of `account` (dropped by the driver if that pipe is closed).
    ToEa { account: AccountId, msg: AgentToEa },
    /// Write (insert or overwrite, keyed by `record.command.command_id`) and fsync the ledger
    /// record, then report [`DeliveryManager::handle_ledger_result`] with `op`.
    PersistLedger {
        op: LedgerOpId,
        record: LedgerRecord,
    },
    /// Remove a retained terminal record. Fire-and-forget: a delete lost to a crash is issued
    /// again by [`DeliveryManager::recover`] when the cap is enforced.
    DeleteLedger { command_id: CommandId },
}

/// Bounds of every table the machine keeps. Not live config: fixed for the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentLimits {
    /// Intents forwarded and still awaiting the core's ack.
    pub max_intent_routes: usize,
    /// A route older than this may be forgotten to make room (its master has re-sent by then).
    pub intent_route_ttl: Duration,
    /// Ledger entries not yet terminal; beyond it a new command is answered BROKER_BUSY.
    pub max_active_commands: usize,
    /// Terminal (Completed / Rejected) entries kept to answer duplicates. The core must stop
    /// re-sending a command well before this many newer commands of this agent have finished,
    /// and the slave EA's own dedupe window must be at least as long: a re-sent command whose
    /// record was evicted is buffered and delivered again, and only the EA stops a second
    /// execution.
    pub max_completed_retained: usize,
    /// Results of commands the ledger no longer holds, kept while the core link is down.
    pub max_result_outbox: usize,
    /// Commands of one slave written to its pipe and not yet answered (AwaitingAck, or in
    /// Backoff before the next attempt): the pipe's send window. Beyond it a command waits in
    /// WaitingPipe, without an ack timer, until an earlier one is answered — so a slow EA sees
    /// a bounded backlog, and its slowness is not mistaken for lost writes (re-writes that
    /// would only add to its backlog).
    pub max_pipe_inflight: usize,
}

impl Default for AgentLimits {
    fn default() -> Self {
        AgentLimits {
            max_intent_routes: 4_096,
            intent_route_ttl: Duration::from_millis(30_000),
            max_active_commands: 4_096,
            max_completed_retained: 16_384,
            max_result_outbox: 1_024,
            max_pipe_inflight: 128,
        }
    }
}

/// Counters the runtime exports. Metric names in backticks are the exported names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentMetrics {
    /// `echo_agent_pipe_retry_total`: failed pipe attempts: RETRY / FAILED acks, ack
    /// timeouts, write failures.
    pub pipe_retry_total: u64,
    /// `echo_agent_pipe_delivery_latency_ms`: count of write → ack OK samples.
    pub pipe_delivery_latency_count: u64,
    /// `echo_agent_pipe_delivery_latency_ms`: sum of samples, ms.
    pub pipe_delivery_latency_sum_ms: u64,
    /// `echo_agent_pipe_delivery_latency_ms`: last sample, ms.
    pub pipe_delivery_latency_last_ms: u64,
    /// `echo_agent_pipe_delivery_latency_ms`: largest sample, ms.
    pub pipe_delivery_latency_max_ms: u64,
    /// Entries parked after max_retries (PIPE_UNAVAILABLE reported).
    pub pipe_unavailable_total: u64,
    /// PipeDeliveryAck FAILED received.
    pub ea_rejected_total: u64,
    /// Intents sent to the core.
    pub intents_forwarded: u64,
    /// Intents answered BROKER_BUSY (link not Online, table full, link dropped).
    pub intents_refused: u64,
    /// Intents answered UNKNOWN_ACCOUNT / PROTOCOL_VIOLATION.
    pub intents_rejected: u64,
    /// Routes forgotten because they outlived `intent_route_ttl`.
    pub intent_routes_expired: u64,
    /// Core IntentAcks with no route (dropped).
    pub acks_unroutable: u64,
    /// Commands durably buffered (AGENT_BUFFERED OK the first time).
    pub commands_buffered: u64,
    /// Commands answered AGENT_BUFFERED FAILED (unknown account, busy, ledger down).
    pub commands_refused: u64,
    /// Commands received again while in the ledger.
    pub duplicate_commands: u64,
    /// Ledger writes reported failed.
    pub ledger_write_failures: u64,
    /// Terminal records deleted by the retention cap.
    pub ledger_evictions: u64,
    /// Execution results sent to the core.
    pub results_forwarded: u64,
    /// Execution results held because the link was not Online.
    pub results_held: u64,
    /// Held results of unknown commands evicted by the outbox cap.
    pub results_evicted: u64,
    /// Execution results refused (wrong account).
    pub results_protocol_violations: u64,
    /// Pipe acks / write failures that matched nothing awaited.
    pub stale_pipe_events: u64,
    /// Stage reports not sent because the link was not Online (re-derived on Online).
    pub reports_withheld: u64,
    /// Ledger results for unknown op ids.
    pub stale_ledger_results: u64,
    /// CoreHello refusals.
    pub hello_refused: u64,
    /// Out-of-range agent configs refused.
    pub config_rejected: u64,
    /// Pipes opened for accounts this agent does not serve.
    pub unknown_pipes: u64,
    /// Core messages out of protocol (a Hello outside Connecting).
    pub core_protocol_violations: u64,
    /// DeliveryReports received (informational only).
    pub delivery_reports: u64,
    /// Cancels from the core that could not reach a slave pipe (the core retries them).
    pub cancels_dropped: u64,
}

/// The agent's DeliveryManager. See the module documentation and [`SPEC`].
#[derive(Debug)]
pub struct DeliveryManager {
    agent_id: AgentId,
    /// As configured, for the hello (order kept as given).
    hello_accounts: Vec<(AccountId, Role)>,
    accounts: BTreeMap<AccountId, Role>,
    config: AgentDeliveryConfig,
    /// Whether `config` came from the core (only then is it pushed to master EAs).
    config_from_core: bool,
    limits: AgentLimits,
    link: LinkState,
    heartbeat_at: Option<Instant>,
    pipes: BTreeSet<AccountId>,
    intents: IntentRoutes,
    /// Ledger entries by `seq` (ledger order).
    entries: BTreeMap<u64, Entry>,
    /// command_id → seq. Lookups only, never iterated.
    index: HashMap<CommandId, u64>,
    /// Terminal entries kept for dedupe, oldest first.
    retained: VecDeque<u64>,
    /// Ledger writes in flight: op → (seq, state written).
    ops: BTreeMap<LedgerOpId, (u64, LedgerState)>,
    /// Every entry deadline (ack, backoff, write retry): (deadline, seq).
    timers: BTreeSet<(Instant, u64)>,
    /// Results of commands the ledger does not hold, waiting for the link.
    outbox: VecDeque<ExecutionResult>,
    /// Per slave: entries holding a place in its pipe window (written, not yet answered).
    /// Pruned lazily: a seq whose entry left AwaitingAck / Backoff no longer counts.
    pipe_window: BTreeMap<AccountId, BTreeSet<u64>>,
    /// Per slave: WaitingPipe entries that found its window full, in ledger order.
    pipe_queue: BTreeMap<AccountId, BTreeSet<u64>>,
    next_seq: u64,
    next_op: u64,
    out: VecDeque<AgentOutput>,
    metrics: AgentMetrics,
}

/// A deadline strictly after `now`, so a zero duration can never make a timer loop.
fn later(now: Instant, d: Duration) -> Instant {
    now + Duration(d.0.max(1))
}

impl DeliveryManager {
    /// A fresh agent with an empty ledger. `config` is used until the core sends its own.
    pub fn new(
        agent_id: AgentId,
        accounts: Vec<(AccountId, Role)>,
        config: AgentDeliveryConfig,
        limits: AgentLimits,
    ) -> Self {
        DeliveryManager {
            agent_id,
            accounts: accounts.iter().cloned().collect(),
            hello_accounts: accounts,
            config,
            config_from_core: false,
            limits,
            link: LinkState::Offline,
            heartbeat_at: None,
            pipes: BTreeSet::new(),
            intents: IntentRoutes::default(),
            entries: BTreeMap::new(),
            index: HashMap::new(),
            retained: VecDeque::new(),
            ops: BTreeMap::new(),
            timers: BTreeSet::new(),
            outbox: VecDeque::new(),
            pipe_window: BTreeMap::new(),
            pipe_queue: BTreeMap::new(),
            next_seq: 1,
            next_op: 1,
            out: VecDeque::new(),
            metrics: AgentMetrics::default(),
        }
    }

    /// Rebuilds the machine from the durable ledger only, as after `kill -9`: links and pipes
    /// are down, nothing is in flight. Buffered entries wait for their pipe, Delivered ones for
    /// their result, terminal ones are retained for dedupe (the cap is enforced at once, so a
    /// delete lost in the crash is issued again).
    pub fn recover(
        agent_id: AgentId,
        accounts: Vec<(AccountId, Role)>,
        config: AgentDeliveryConfig,
        limits: AgentLimits,
        ledger: Vec<LedgerRecord>,
    ) -> Self {
        let mut m = DeliveryManager::new(agent_id, accounts, config, limits);
        m.restore(ledger);
        m
    }

    // ----- inputs -------------------------------------------------------------------------

    /// A stream to the core is up: introduce ourselves.
    pub fn handle_core_connected(&mut self, now: Instant) {
        self.fire(T::T01, self.agent_subject());
        if self.link != LinkState::Offline {
            self.drop_stream_state();
        }
        self.link = LinkState::Connecting;
        self.send_hello(now);
    }

    fn send_hello(&mut self, now: Instant) {
        self.push(AgentOutput::ToCore(AgentToCore::Hello(AgentHello {
            agent_id: self.agent_id.clone(),
            protocol_version: PROTOCOL_VERSION,
            supports_lossless_delivery: true,
            accounts: self.hello_accounts.clone(),
        })));
        // Until a CoreHello arrives the heartbeat timer doubles as the hello timer.
        let every = Duration::from_millis(u64::from(self.config.heartbeat_interval_ms));
        self.heartbeat_at = Some(later(now, every));
    }

    pub fn handle_core_disconnected(&mut self, _now: Instant) {
        if self.link == LinkState::Offline {
            return;
        }
        self.fire(T::T04, self.agent_subject());
        self.drop_stream_state();
        self.link = LinkState::Offline;
    }

    /// One message from the core.
    pub fn handle_from_core(&mut self, now: Instant, msg: CoreToAgent) {
        match msg {
            CoreToAgent::Hello(h) => self.on_core_hello(now, h),
            CoreToAgent::IntentAck(a) => self.on_intent_ack(a),
            CoreToAgent::Command(c) => self.on_command(now, c),
            CoreToAgent::Heartbeat(hb) => {
                if self.apply_config(hb.agent) {
                    self.fire(T::T06, self.agent_subject());
                    self.push_config_to_masters();
                }
            }
            CoreToAgent::DeliveryReport(_) => self.metrics.delivery_reports += 1,
            CoreToAgent::Cancel(c) => {
                let subject = Subject::Command(c.command_id.clone());
                let served = self.accounts.get(&c.slave) == Some(&Role::Slave);
                if served && self.pipes.contains(&c.slave) {
                    self.fire(T::T46, subject);
                    let account = c.slave.clone();
                    self.push(AgentOutput::ToEa {
                        account,
                        msg: AgentToEa::Cancel(c),
                    });
                } else {
                    self.fire(T::T47, subject);
                    self.metrics.cancels_dropped += 1;
                }
            }
        }
    }

    /// One message an EA wrote on its pipe; `account` is the pipe's account.
    pub fn handle_from_ea(&mut self, now: Instant, account: AccountId, msg: EaToAgent) {
        match msg {
            EaToAgent::Intent(i) => self.on_intent(now, account, i),
            EaToAgent::PipeAck(a) => self.on_pipe_ack(now, account, a),
            EaToAgent::Execution(r) => self.on_execution(now, account, r),
        }
    }

    /// Fate of a `PersistLedger` op.
    pub fn handle_ledger_result(&mut self, now: Instant, op: LedgerOpId, result: LedgerResult) {
        self.on_ledger_result(now, op, result);
    }

    /// An EA's pipe is connected.
    pub fn handle_pipe_connected(&mut self, now: Instant, account: AccountId) {
        self.on_pipe_connected(now, account);
    }

    /// An EA's pipe is closed.
    pub fn handle_pipe_closed(&mut self, _now: Instant, account: AccountId) {
        self.on_pipe_closed(account);
    }

    /// Writing `command_id` on `account`'s pipe failed.
    pub fn handle_pipe_write_failed(
        &mut self,
        now: Instant,
        account: AccountId,
        command_id: CommandId,
    ) {
        self.on_pipe_write_failed(now, account, command_id);
    }

    /// Processes every deadline at or before `now`, earliest first.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(at) = self.heartbeat_at {
            if at <= now {
                self.heartbeat_at = None;
                if self.link == LinkState::Online {
                    self.fire(T::T05, self.agent_subject());
                    self.push(AgentOutput::ToCore(AgentToCore::Heartbeat));
                    self.arm_heartbeat(now);
                } else if self.link == LinkState::Connecting {
                    self.fire(T::T45, self.agent_subject());
                    self.send_hello(now);
                }
            }
        }
        while let Some(&(at, seq)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, seq));
            let phase = match self.entries.get_mut(&seq) {
                Some(e) => {
                    e.deadline = None;
                    e.phase
                }
                None => continue,
            };
            match phase {
                EntryPhase::AwaitingAck => self.attempt_failed(now, seq),
                EntryPhase::Backoff => self.write_to_pipe(now, seq),
                EntryPhase::Persisting
                | EntryPhase::Confirming
                | EntryPhase::Rejecting
                | EntryPhase::Completing => self.write_if_due(seq),
                _ => {}
            }
        }
        // A safety net, not the mechanism: every place an entry leaves a window pumps it.
        self.pump_all_pipes(now);
    }

    // ----- outputs and queries ------------------------------------------------------------

    /// Next output, in the order the driver must perform them.
    pub fn poll(&mut self) -> Option<AgentOutput> {
        self.out.pop_front()
    }

    /// The earliest deadline the driver must call [`Self::handle_timeout`] at.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let entry = self.timers.first().map(|&(at, _)| at);
        match (entry, self.heartbeat_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn metrics(&self) -> &AgentMetrics {
        &self.metrics
    }

    pub fn link_state(&self) -> LinkState {
        self.link
    }

    /// The agent delivery config in force.
    pub fn config(&self) -> AgentDeliveryConfig {
        self.config
    }

    /// Entries in the ledger (active and retained).
    pub fn ledger_len(&self) -> usize {
        self.entries.len()
    }

    /// Entries not yet terminal (what `max_active_commands` bounds).
    pub fn active_len(&self) -> usize {
        self.entries.len() - self.retained.len()
    }

    /// Durable commands waiting for a place in their slave's pipe window (their pipe is open:
    /// with a closed pipe they wait for the pipe, not the window).
    pub fn pipe_queued_len(&self) -> usize {
        self.entries
            .values()
            .filter(|e| e.phase == EntryPhase::WaitingPipe && self.pipes.contains(&e.command.slave))
            .count()
    }

    /// Ledger writes issued and not yet answered.
    pub fn outstanding_ledger_ops(&self) -> usize {
        self.ops.len()
    }

    /// Intents forwarded and awaiting the core's ack.
    pub fn pending_intents(&self) -> usize {
        self.intents.len()
    }

    /// Where a command stands, if the ledger holds it.
    pub fn entry_phase(&self, command_id: &CommandId) -> Option<EntryPhase> {
        let seq = self.index.get(command_id)?;
        self.entries.get(seq).map(|e| e.phase)
    }

    /// Pipe attempts of a command in its current budget.
    pub fn entry_attempts(&self, command_id: &CommandId) -> Option<u32> {
        let seq = self.index.get(command_id)?;
        self.entries.get(seq).map(|e| e.attempts)
    }

    // ----- link internals -----------------------------------------------------------------

    fn on_core_hello(&mut self, now: Instant, h: CoreHello) {
        if self.link != LinkState::Connecting {
            self.metrics.core_protocol_violations += 1;
            return;
        }
        if !h.accepted {
            self.fire(T::T03, self.agent_subject());
            self.metrics.hello_refused += 1;
            self.link = LinkState::Refused;
            // A refused agent does not knock again on its own: the hello timer stops.
            self.heartbeat_at = None;
            return;
        }
        // An out-of-range config is refused first (T07) so T02's outputs use the kept one.
        self.apply_config(h.delivery.agent);
        self.fire(T::T02, self.agent_subject());
        self.link = LinkState::Online;
        self.push_config_to_masters();
        self.report_ledger_on_online();
        while let Some(r) = self.outbox.pop_front() {
            self.send_result(r);
        }
        self.arm_heartbeat(now);
    }

    /// Validates and applies an agent config from the core; true if it changed. Refusal is T07.
    fn apply_config(&mut self, cfg: AgentDeliveryConfig) -> bool {
        if cfg.validate().is_err() {
            self.fire(T::T07, self.agent_subject());
            self.metrics.config_rejected += 1;
            return false;
        }
        let changed = cfg != self.config || !self.config_from_core;
        self.config = cfg;
        self.config_from_core = true;
        changed
    }

    /// Only a config the core sent is pushed: local defaults must not override a master's.
    fn push_config_to_masters(&mut self) {
        if !self.config_from_core {
            return;
        }
        let masters: Vec<AccountId> = self
            .pipes
            .iter()
            .filter(|a| self.accounts.get(*a) == Some(&Role::Master))
            .cloned()
            .collect();
        for account in masters {
            self.push(AgentOutput::ToEa {
                account,
                msg: AgentToEa::DeliveryConfig(self.config),
            });
        }
    }

    /// What belongs to one stream dies with it: the heartbeat, and the routes of intents whose
    /// ack would have come on it (answered BROKER_BUSY so the masters re-send promptly).
    fn drop_stream_state(&mut self) {
        self.heartbeat_at = None;
        let retry_after_ms = self.config.retry_backoff_ms;
        for (master, ack) in self.intents.drain_busy(retry_after_ms) {
            self.metrics.intents_refused += 1;
            self.push(AgentOutput::ToEa {
                account: master,
                msg: AgentToEa::IntentAck(ack),
            });
        }
    }

    fn arm_heartbeat(&mut self, now: Instant) {
        let every = Duration::from_millis(self.config.heartbeat_interval_ms.into());
        self.heartbeat_at = Some(later(now, every));
    }

    /// Sends a stage report, or withholds it (counted) while the link is not Online: T02
    /// re-derives it from the ledger.
    fn report(&mut self, ack: CommandAck) {
        if self.link == LinkState::Online {
            self.push(AgentOutput::ToCore(AgentToCore::CommandAck(ack)));
        } else {
            self.metrics.reports_withheld += 1;
        }
    }

    fn send_result(&mut self, r: ExecutionResult) {
        self.metrics.results_forwarded += 1;
        self.push(AgentOutput::ToCore(AgentToCore::ExecutionResult(r)));
    }

    fn fire(&mut self, t: T, subject: Subject) {
        self.out.push_back(AgentOutput::Fired(Fired {
            transition: t.spec(),
            subject,
        }));
    }

    fn push(&mut self, o: AgentOutput) {
        self.out.push_back(o);
    }

    fn agent_subject(&self) -> Subject {
        Subject::Agent(self.agent_id.clone())
    }
}
