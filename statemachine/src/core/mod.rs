//! The core: the server's machines, composed into one [`Core`] a driver owns.
//!
//! Sub-modules each own one concern and its transition table — `router` (trade → worker shard,
//! bounded queues, BROKER_BUSY), `intake` (intent dedupe and journaling), `journal_health`
//! (stop fan-out while the journal is down), `delivery` (one slave copy through its ack stages,
//! retries, reconciler and per-trade order), `registry` (agents, heartbeats, config push). This
//! file owns only the plumbing they share: the output queue, op ids, timers and metrics. It
//! must never perform IO or read a clock.

pub mod delivery;
pub mod intake;
pub mod journal;
pub mod journal_health;
pub mod registry;
pub mod router;
mod timers;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::config::{AgentDeliveryConfig, DeliveryConfig, RouterConfig, Subscription};
use crate::histogram::Histogram;
use crate::ids::{AccountId, AgentId, CommandId, FastMap, FastSet, IntentId, TradeId};
use crate::msg::{AckStage, AgentToCore, CoreToAgent, ErrorCode};
use crate::spec::{Fired, Subject, Transition};
use crate::time::Instant;

pub use journal::{
    CoreDurableState, DeliveryRecord, DeliveryStatus, IntentFacts, JournalReply, JournalResult,
    JournalWrite, OpId,
};

/// Everything the core machine needs to start.
#[derive(Clone, Debug, Default)]
pub struct CoreConfig {
    pub router: RouterConfig,
    pub delivery: DeliveryConfig,
    pub agent_delivery: AgentDeliveryConfig,
    pub subscriptions: Vec<Subscription>,
    /// Completed intent ids remembered for cheap re-acks; older ones are answered by the
    /// journal's own dedupe (`IntentExisted`).
    pub recent_intents: usize,
}

/// Notable events a driver logs (with the BRIEF's names) and counts.
#[derive(Clone, Debug, PartialEq)]
pub enum CoreLog {
    /// `core_delivery_failed`: an intent could not be journaled, or a delivery ended FAILED.
    DeliveryFailed {
        intent_id: IntentId,
        command_id: Option<CommandId>,
        reason: ErrorCode,
    },
    JournalDown,
    JournalUp,
    AgentOffline {
        agent: AgentId,
    },
    /// A message the protocol does not allow in the sender's state.
    ProtocolViolation {
        agent: AgentId,
        what: &'static str,
    },
}

/// One output for the driver to perform.
#[derive(Clone, Debug, PartialEq)]
pub enum CoreOutput {
    /// A transition was taken; emitted before the outputs it caused.
    Fired(Fired),
    /// Send a message to an agent on its stream.
    Send {
        agent: AgentId,
        msg: CoreToAgent,
    },
    /// Perform a journal write and report its result with `handle_journal_result(op, …)`.
    Journal {
        op: OpId,
        write: JournalWrite,
    },
    Log(CoreLog),
}

/// Counters and gauges behind the BRIEF's metric names (the runtime exports them).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CoreMetrics {
    /// `echo_core_router_dispatch_total{worker_id,result="ok"}`: intents journaled per worker.
    pub router_dispatch_total: Vec<u64>,
    /// `echo_core_router_rejections_total{worker_id,reason}`: BROKER_BUSY per worker.
    pub router_rejections_total: Vec<u64>,
    /// `echo_core_router_dispatch_duration_ms`: admitted → journaled, sum and count (ns).
    pub router_dispatch_duration_ns_sum: u64,
    pub router_dispatch_duration_count: u64,
    /// `echo_core_delivery_retry_total{stage,result}`.
    pub delivery_retry_total: BTreeMap<(AckStage, &'static str), u64>,
    /// `echo_core_delivery_compat_mode_total`.
    pub compat_mode_total: u64,
    /// `core_delivery_failed` occurrences: deliveries FAILED plus intents not journaled.
    pub delivery_failed_total: u64,
    /// `echo_core_delivery_failed_total{reason}`: the same, by `ErrorCode` name; sums to
    /// `delivery_failed_total`.
    pub delivery_failed_by_reason: BTreeMap<&'static str, u64>,
    /// `echo_core_copy_skipped_total{reason}`: deliveries the copy policy did not make, by
    /// [`crate::policy::SkipReason`] name.
    pub copy_skipped_total: BTreeMap<&'static str, u64>,
    /// `echo_core_delivery_stage_latency_ms{stage,quantile}`: CORE_ACCEPTED (the accept
    /// reached this core) → each later stage's ack reaching it, in µs, for deliveries accepted
    /// in this core's life (a recovered delivery's earlier stages happened in another life).
    pub delivery_stage_latency_us: BTreeMap<AckStage, Histogram>,
    pub deliveries_acked_total: u64,
    pub intents_accepted_total: u64,
    pub intents_rejected_total: u64,
    pub journal_failures_total: u64,
    pub reconcile_resends_total: u64,
    pub late_or_unknown_total: u64,
    pub protocol_violations_total: u64,
    /// Results of split positions that executed on some legs only (`core.delivery.T33`/`T34`).
    pub split_incomplete_total: u64,
    /// Intents answered BROKER_BUSY because a slave's agent had a full backlog (`core.intake.T15`).
    pub backlog_rejections_total: u64,
}

/// Entry counts of the core's internal tables (see [`Core::debug_sizes`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreSizes {
    /// Intents persisting or with unfinished deliveries.
    pub intents: usize,
    /// Deliveries unfinished or finishing.
    pub deliveries: usize,
    /// The command id index over `deliveries`.
    pub by_command: usize,
    /// (slave, trade) chains with an unfinished delivery.
    pub chains: usize,
    /// Journal writes whose result is awaited.
    pub pending_ops: usize,
    /// Armed timers.
    pub timers: usize,
    /// Trades with an intent persisting.
    pub persisting_trades: usize,
    /// The recent-dedupe window (capped by `CoreConfig::recent_intents`).
    pub recent_intents: usize,
    /// Slave positions still open: (trade, slave) → ticket.
    pub open_tickets: usize,
    /// Outputs not yet polled.
    pub outputs: usize,
    /// Places taken in the agents' send windows, queued deliveries, agents to pump and agents
    /// marked full (T40).
    pub send_windows: usize,
}

/// Timer owners. Each owner remembers its one armed deadline; re-arming retires the old entry
/// (see `timers`), so the timers never grow with history. The derived order (deadline, then
/// this) is the order due timers fire in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum TimerKey {
    Delivery(u64),
    IntentRetry(IntentId),
    HeartbeatTick,
    JournalProbe,
}

/// What an awaited journal op was for.
#[derive(Clone, Debug)]
pub(crate) enum PendingOp {
    Accept(IntentId),
    Finish(u64),
    Probe,
}

/// The core state machine. See the module docs and SPEC.md.
pub struct Core {
    pub(crate) cfg: CoreConfig,
    pub(crate) subs: BTreeMap<AccountId, Vec<Subscription>>,
    pub(crate) config_version: u64,
    pub(crate) out: VecDeque<CoreOutput>,
    pub(crate) now: Instant,
    next_op: u64,
    pub(crate) ops: FastMap<OpId, PendingOp>,
    pub(crate) timers: timers::Timers,
    pub(crate) router: router::Router,
    pub(crate) intents: FastMap<IntentId, intake::IntentEntry>,
    pub(crate) recent: VecDeque<IntentId>,
    pub(crate) recent_set: FastSet<IntentId>,
    pub(crate) persisting_trades: FastSet<TradeId>,
    pub(crate) deliveries: FastMap<u64, delivery::Delivery>,
    pub(crate) by_command: FastMap<CommandId, u64>,
    pub(crate) next_delivery: u64,
    /// Per (slave, trade): the deliveries in master order, as a list linked through the
    /// deliveries themselves (no allocation per chain); only the head is ever in flight.
    pub(crate) chains: FastMap<(AccountId, TradeId), delivery::Chain>,
    pub(crate) tickets: FastMap<(TradeId, AccountId), i64>,
    /// Opens not copied to a slave for a copy-policy reason (filters, sizing, EXPIRED, the
    /// slave EA's copy terms …; this life's, or read back from the journal at recovery), so
    /// the trade's later modifies and closes end with the same reason instead of NO_POSITION.
    /// Bounded: the oldest is forgotten first (its trade's later intents then end
    /// NO_POSITION, still explicit). Never iterated.
    pub(crate) skipped_opens: FastMap<(TradeId, AccountId), ErrorCode>,
    pub(crate) skipped_order: VecDeque<(TradeId, AccountId)>,
    pub(crate) registry: registry::Registry,
    /// Per agent: deliveries sent to it and not yet AGENT_BUFFERED (its send window, at most
    /// `agent_window`), and the chain heads waiting for a place in it, in delivery order.
    pub(crate) agent_windows: BTreeMap<AgentId, BTreeSet<u64>>,
    pub(crate) agent_queues: BTreeMap<AgentId, BTreeSet<u64>>,
    /// Agents whose window lost a member since the last pump.
    pub(crate) windows_freed: BTreeSet<AgentId>,
    /// Agents that refused a command for a full table (T40), until one of their commands
    /// reaches AGENT_BUFFERED again or they go offline.
    pub(crate) agents_full: BTreeMap<AgentId, delivery::Probe>,
    pub(crate) journal: journal_health::JournalHealth,
    pub(crate) metrics: CoreMetrics,
    /// Whether `Fired` outputs are emitted (on by default; drivers that neither log nor
    /// trace transitions may turn it off — decisions never depend on it).
    pub(crate) trace: bool,
}

impl Core {
    /// A core with an empty journal.
    pub fn new(cfg: CoreConfig) -> Self {
        let workers = cfg.router.worker_pool_size as usize;
        let mut subs: BTreeMap<AccountId, Vec<Subscription>> = BTreeMap::new();
        for s in &cfg.subscriptions {
            subs.entry(s.master.clone()).or_default().push(s.clone());
        }
        let metrics = CoreMetrics {
            router_dispatch_total: vec![0; workers],
            router_rejections_total: vec![0; workers],
            ..CoreMetrics::default()
        };
        // The driver's epoch is its own; if it is far from zero the first tick simply fires
        // at once and re-arms from then on.
        let first_tick = Instant::ZERO
            + crate::time::Duration::from_millis(cfg.delivery.heartbeat_interval_ms.into());
        let mut core = Core {
            router: router::Router::new(cfg.router),
            cfg,
            subs,
            config_version: 1,
            out: VecDeque::new(),
            now: Instant::ZERO,
            next_op: 1,
            ops: FastMap::default(),
            timers: timers::Timers::default(),
            intents: FastMap::default(),
            recent: VecDeque::new(),
            recent_set: FastSet::default(),
            persisting_trades: FastSet::default(),
            deliveries: FastMap::default(),
            by_command: FastMap::default(),
            next_delivery: 1,
            chains: FastMap::default(),
            tickets: FastMap::default(),
            skipped_opens: FastMap::default(),
            skipped_order: VecDeque::new(),
            registry: registry::Registry::default(),
            agent_windows: BTreeMap::new(),
            agent_queues: BTreeMap::new(),
            windows_freed: BTreeSet::new(),
            agents_full: BTreeMap::new(),
            journal: journal_health::JournalHealth::Up,
            metrics,
            trace: true,
        };
        core.arm(TimerKey::HeartbeatTick, first_tick);
        core
    }

    /// Turns `Fired` outputs on or off. Decisions are identical either way.
    pub fn set_trace(&mut self, on: bool) {
        self.trace = on;
    }

    /// Rebuilds a core after a crash from what the journal made durable, and nothing else:
    /// every unfinished delivery is waiting again (its agent must say hello first), open
    /// positions keep their slave tickets so later modifies and closes find them.
    pub fn recover(cfg: CoreConfig, durable: CoreDurableState, now: Instant) -> Self {
        let mut core = Core::new(cfg);
        core.now = now;
        for (trade, slave, ticket) in durable.open_tickets {
            core.tickets.insert((trade, slave), ticket);
        }
        // Before the deliveries: a recovered chain head may be a later intent of one (T26).
        let mut skipped = durable.skipped_opens;
        skipped.sort_by(|a, b| a.command_id.cmp(&b.command_id));
        core.adopt_skipped_opens(skipped);
        let mut unfinished = durable.unfinished;
        // Master order per trade is master_seq; command id breaks ties deterministically.
        unfinished.sort_by(|a, b| {
            (&a.slave, &a.trade_id, a.master_seq, &a.command_id).cmp(&(
                &b.slave,
                &b.trade_id,
                b.master_seq,
                &b.command_id,
            ))
        });
        core.adopt_deliveries(unfinished, now);
        core.settle_timers();
        core
    }

    // ---- driver API -------------------------------------------------------------------

    /// A message arrived from `agent` on its stream (already authenticated by the runtime).
    pub fn handle_agent_message(&mut self, now: Instant, agent: &AgentId, msg: AgentToCore) {
        self.on_agent_message(now, agent, msg);
        self.settle_timers();
    }

    fn on_agent_message(&mut self, now: Instant, agent: &AgentId, msg: AgentToCore) {
        self.now = now;
        match msg {
            AgentToCore::Hello(h) => {
                self.fire(
                    router::RouterT::Control.spec(),
                    Subject::Agent(agent.clone()),
                );
                self.on_hello(now, agent, h)
            }
            other => {
                if !self.registry.touch(agent, now) {
                    self.on_unregistered(agent, &other);
                    return;
                }
                match other {
                    AgentToCore::Intent(i) => self.on_intent(now, agent, i),
                    AgentToCore::CommandAck(a) => self.on_command_ack(now, a),
                    AgentToCore::ExecutionResult(r) => {
                        self.on_execution_result(now, r);
                        // It finished a command: if it was full, it may have room now.
                        self.agent_showed_life(agent);
                    }
                    AgentToCore::Heartbeat => {
                        self.fire(
                            router::RouterT::Control.spec(),
                            Subject::Agent(agent.clone()),
                        );
                        self.on_agent_heartbeat(agent)
                    }
                    AgentToCore::Hello(_) => {}
                }
            }
        }
    }

    /// The agent's stream ended.
    pub fn handle_agent_disconnected(&mut self, now: Instant, agent: &AgentId) {
        self.now = now;
        self.on_disconnected(now, agent);
        self.settle_timers();
    }

    /// The result of journal write `op`.
    pub fn handle_journal_result(&mut self, now: Instant, op: OpId, result: JournalResult) {
        self.on_journal_result(now, op, result);
        self.settle_timers();
    }

    fn on_journal_result(&mut self, now: Instant, op: OpId, result: JournalResult) {
        self.now = now;
        let ok = matches!(result, JournalResult::Ok(_));
        if ok {
            self.journal_succeeded(now);
        }
        let Some(pending) = self.ops.remove(&op) else {
            return; // best-effort writes are not tracked
        };
        match pending {
            PendingOp::Accept(intent) => self.on_accept_result(now, intent, result),
            PendingOp::Finish(key) => self.on_finish_result(now, key, result),
            PendingOp::Probe => self.on_probe_result(now, ok),
        }
    }

    /// Live delivery config change (etcd watch / TOML reload), already validated.
    pub fn handle_delivery_config(
        &mut self,
        now: Instant,
        core: DeliveryConfig,
        agent: AgentDeliveryConfig,
    ) {
        self.now = now;
        self.on_config(now, core, agent);
        self.settle_timers();
    }

    /// Replaces the subscriptions; intents accepted from now on fan out over the new set.
    pub fn handle_subscriptions(&mut self, now: Instant, subs: Vec<Subscription>) {
        self.now = now;
        self.on_subscriptions(subs);
        self.settle_timers();
    }

    /// Processes every deadline at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        while let Some(key) = self.pop_due(now) {
            match key {
                TimerKey::Delivery(k) => self.on_delivery_timer(now, k),
                TimerKey::IntentRetry(id) => self.on_intent_retry(now, id),
                TimerKey::HeartbeatTick => self.on_heartbeat_tick(now),
                TimerKey::JournalProbe => self.on_probe_timer(now),
            }
        }
        self.settle_timers();
    }

    /// Next output, until `None`.
    pub fn poll(&mut self) -> Option<CoreOutput> {
        self.out.pop_front()
    }

    /// The earliest deadline the driver must call `handle_timeout` at.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_deadline()
    }

    pub fn metrics(&self) -> &CoreMetrics {
        &self.metrics
    }

    /// `echo_core_router_queue_depth{worker_id}`.
    pub fn queue_depths(&self) -> &[u32] {
        self.router.depths()
    }

    pub fn router_config(&self) -> RouterConfig {
        self.cfg.router
    }

    pub fn delivery_config(&self) -> DeliveryConfig {
        self.cfg.delivery
    }

    /// Deliveries held in memory (unfinished, or finishing).
    pub fn open_deliveries(&self) -> usize {
        self.deliveries.len()
    }

    /// Intents held in memory (persisting or with unfinished deliveries).
    pub fn open_intents(&self) -> usize {
        self.intents.len()
    }

    /// Armed timers (bounded by open intents + deliveries + 2).
    pub fn armed_timers(&self) -> usize {
        self.live_timers()
    }

    /// The sizes of the core's internal tables, for checks that memory does not grow with
    /// history (every one of them is bounded by work in progress, open positions, or a
    /// configured window).
    pub fn debug_sizes(&self) -> CoreSizes {
        CoreSizes {
            intents: self.intents.len(),
            deliveries: self.deliveries.len(),
            by_command: self.by_command.len(),
            chains: self.chains.len(),
            pending_ops: self.ops.len(),
            timers: self.live_timers(),
            persisting_trades: self.persisting_trades.len(),
            recent_intents: self.recent.len(),
            open_tickets: self.tickets.len(),
            outputs: self.out.len(),
            send_windows: self.agent_windows.values().map(|w| w.len()).sum::<usize>()
                + self.agent_queues.values().map(|q| q.len()).sum::<usize>()
                + self.windows_freed.len()
                + self.agents_full.len(),
        }
    }

    /// A read-only view of one delivery, for checkers and operators.
    pub fn delivery_view(&self, command: &CommandId) -> Option<delivery::DeliveryView> {
        let key = self.by_command.get(command)?;
        self.deliveries.get(key).map(|d| d.view())
    }

    /// Every in-memory delivery, in creation order (deterministic).
    pub fn delivery_views(&self) -> Vec<delivery::DeliveryView> {
        let mut keys: Vec<&u64> = self.deliveries.keys().collect();
        keys.sort();
        keys.into_iter()
            .filter_map(|k| self.deliveries.get(k).map(|d| d.view()))
            .collect()
    }

    /// Whether an intent is being journaled (its answer is owed and will come).
    pub fn intent_persisting(&self, id: &IntentId) -> bool {
        matches!(
            self.intents.get(id).map(|e| &e.state),
            Some(intake::IntentState::Persisting { .. })
        )
    }

    pub fn agent_online(&self, agent: &AgentId) -> bool {
        self.registry.is_online(agent)
    }

    // ---- shared plumbing --------------------------------------------------------------

    pub(crate) fn fire(&mut self, t: &'static Transition, subject: Subject) {
        if !self.trace {
            return;
        }
        self.out.push_back(CoreOutput::Fired(Fired {
            transition: t,
            subject,
        }));
    }

    /// The subject of an intent's transition; nothing is cloned when tracing is off.
    pub(crate) fn intent_subject(&self, id: &IntentId) -> Subject {
        if self.trace {
            Subject::Intent(id.clone())
        } else {
            Subject::None
        }
    }

    pub(crate) fn send(&mut self, agent: AgentId, msg: CoreToAgent) {
        self.out.push_back(CoreOutput::Send { agent, msg });
    }

    pub(crate) fn log(&mut self, l: CoreLog) {
        self.out.push_back(CoreOutput::Log(l));
    }

    /// Emits a journal write; `awaited` ops are remembered so their result routes back.
    pub(crate) fn journal_write(
        &mut self,
        write: JournalWrite,
        pending: Option<PendingOp>,
    ) -> OpId {
        let op = OpId(self.next_op);
        self.next_op += 1;
        if let Some(p) = pending {
            self.ops.insert(op, p);
        }
        self.out.push_back(CoreOutput::Journal { op, write });
        op
    }

    pub(crate) fn heartbeat_interval(&self) -> crate::time::Duration {
        crate::time::Duration::from_millis(self.cfg.delivery.heartbeat_interval_ms.into())
    }
}
