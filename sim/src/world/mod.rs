//! One deterministic world of real Echo machines — a core, agents, master and slave EAs, their
//! storage and a broker — stepped by an event queue in simulated time, with faults drawn from
//! one seed.
//!
//! This module owns the shape of a world ([`WorldConfig`]), the [`World`] itself, its event
//! queue and main loop (fault phase, heal, liveness phase) and the dispatch of each event to
//! the submodule that owns it:
//!
//! - [`nodes`]: wiring — which output of which machine becomes which input of which other,
//!   after what delay; the one generic drain of every machine; start, pipes and restart.
//! - [`net`]: the agent↔core streams — connect, disconnect, partitions, drop/duplicate/delay.
//! - [`faults`]: the fault clock — when a fault happens, crashes, and healing.
//! - [`storage`]: what each node's storage has made durable, and the broker.
//! - [`checks`]: the safety checks made at the moment each message or action happens.
//! - [`workload`]: what the masters trade, subscription changes, compat peers.
//! - [`marketdata`]: the market-data buffers, their feed and consumer, and their checks.
//! - [`describe`]: the NDJSON trace lines and the text of inputs and outputs.
//!
//! It plays the runtime's part exactly where the runtime decides nothing: streams break when a
//! partition is two-way or when the core declares an agent silent, crashed processes come back
//! through `recover()` from durable state only. Nothing in the world may read a wall clock,
//! iterate a hash map or use any randomness but the run's [`Rng`].

mod checks;
mod describe;
mod faults;
mod marketdata;
mod net;
mod nodes;
pub mod policies;
mod positions;
mod storage;
pub mod terminal_facts;
pub mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use echo_statemachine::agent::{AgentLimits, DeliveryManager, LedgerOpId, LedgerRecord};
use echo_statemachine::config::{AgentDeliveryConfig, DeliveryConfig, RouterConfig, Subscription};
use echo_statemachine::core::{Core, CoreConfig, DeliveryRecord, OpId};
use echo_statemachine::ea::master::{self, IntentQueue, IntentQueueConfig};
use echo_statemachine::ea::slave::{
    self, BrokerOutcome, ExecutedRecord, SlaveConfig, SlaveExecutor,
};
use echo_statemachine::ids::{AccountId, AgentId, CommandId, IntentId};
use echo_statemachine::msg::*;
use echo_statemachine::time::{Duration, Instant};

use crate::profile::FaultProfile;
use crate::rng::Rng;

pub use checks::{Ledgerbook, Violation};
pub use describe::json_str;
pub use marketdata::MdBook;
pub use workload::{trade_id, Workload};

use echo_statemachine::policy::subscription::CopyPolicy;
use marketdata::Feed;
use net::Link;
use nodes::{AgentM, CoreM, MasterM, SlaveM};
use storage::{Journal, MasterWrite, SlaveWrite};
use workload::{build_script, home_subscription, pendings_some, spoil_some};

/// Capacities of a run: `test_min` makes backpressure and edge cases frequent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capacity {
    Default,
    TestMin,
}

/// The shape of a world.
#[derive(Clone, Debug)]
pub struct WorldConfig {
    pub masters: usize,
    pub slaves_per_master: usize,
    pub trades: usize,
    pub capacity: Capacity,
    /// Simulated time between two trade events of one master.
    pub emit_every: Duration,
    pub net_latency: Duration,
    pub journal_latency: Duration,
    pub disk_latency: Duration,
    pub broker_latency: Duration,
    /// Faults are injected until this time, then everything heals.
    pub fault_phase: Duration,
    /// After healing, every intent must settle within this much simulated time.
    pub liveness_bound: Duration,
}

impl Default for WorldConfig {
    fn default() -> Self {
        WorldConfig {
            masters: 1,
            slaves_per_master: 5,
            trades: 100,
            capacity: Capacity::Default,
            emit_every: Duration::from_millis(2),
            net_latency: Duration::from_micros(200),
            journal_latency: Duration::from_micros(1_500),
            disk_latency: Duration::from_micros(150),
            broker_latency: Duration::from_millis(3),
            fault_phase: Duration::from_millis(5_000),
            liveness_bound: Duration::from_millis(300_000),
        }
    }
}

#[derive(Clone, Debug)]
enum Ev {
    Tick,
    Emit {
        master: usize,
    },
    ToCore {
        agent: usize,
        link: u64,
        msg: AgentToCore,
        /// The core's send the agent answered with this message (0: none).
        tag: u64,
    },
    FromCore {
        agent: usize,
        link: u64,
        msg: CoreToAgent,
        /// Numbers the core's Command sends (0: another message).
        tag: u64,
    },
    FromEa {
        agent: usize,
        pipe: u64,
        ea: Ea,
        msg: EaToAgent,
    },
    ToEa {
        ea: Ea,
        pipe: u64,
        msg: AgentToEa,
    },
    Journal {
        op: OpId,
        epoch: u64,
        commit: bool,
        reply: bool,
    },
    Ledger {
        agent: usize,
        op: LedgerOpId,
        epoch: u64,
        ok: bool,
    },
    MasterDisk {
        master: usize,
        op: master::OpId,
        epoch: u64,
        ok: bool,
    },
    SlaveDisk {
        slave: usize,
        op: slave::OpId,
        epoch: u64,
        ok: bool,
    },
    /// A broker's answer to an order (or a query) with client order id `command_id`; for a
    /// leg of a split, its command and index.
    Broker {
        slave: usize,
        epoch: u64,
        command_id: CommandId,
        body: Option<CommandBody>,
        leg: Option<(CommandId, u32)>,
    },
    Restart {
        node: Node,
    },
    Reconnect {
        agent: usize,
    },
    Reopen {
        ea: Ea,
    },
    /// A market-data tick reaches agent `agent` from the feed.
    MdOffer {
        agent: usize,
        md: MarketData,
    },
    /// The consumer of agent `agent`'s market data takes a batch.
    MdConsume {
        agent: usize,
    },
    /// Agent `agent`'s buffer (or, with `feed`, its feed) learns of routing version `v`.
    MdRouting {
        agent: usize,
        v: u64,
        feed: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Ea {
    Master(usize),
    Slave(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Node {
    Core,
    Agent(usize),
    Ea(Ea),
}

pub struct World {
    pub cfg: WorldConfig,
    pub seed: u64,
    pub profile: FaultProfile,
    pub now: Instant,
    faults_on: bool,
    rng: Rng,
    seq: u64,
    queue: BTreeMap<(Instant, u64), Ev>,
    core_cfg: CoreConfig,
    /// Each slave's drawn copy policy (empty: defaults), kept across re-subscriptions.
    pub policies: Vec<CopyPolicy>,
    /// What the slaves' terminals report to their EAs (account, symbols, drifting prices).
    pub terminal: terminal_facts::TerminalFacts,
    pub core: Option<Core>,
    core_epoch: u64,
    agents: Vec<Option<DeliveryManager>>,
    agent_epoch: Vec<u64>,
    agent_ids: Vec<AgentId>,
    agent_accounts: Vec<Vec<(AccountId, Role)>>,
    /// The accounts each agent serves in its current life: `agent_accounts`, less one slave
    /// after a reconfigured restart (`Workload::agent_reconfig`).
    agent_served: Vec<Vec<(AccountId, Role)>>,
    /// Draws of the reconfigured restarts, a stream of its own (see `agent_reconfig`).
    reconfig_rng: Rng,
    links: Vec<Link>,
    masters: Vec<Option<IntentQueue>>,
    master_epoch: Vec<u64>,
    master_accounts: Vec<AccountId>,
    slaves: Vec<Option<SlaveExecutor>>,
    slave_epoch: Vec<u64>,
    slave_accounts: Vec<AccountId>,
    slave_agent: Vec<usize>,
    slave_slow: Vec<Duration>,
    pipes: BTreeMap<Ea, (u64, bool)>,
    /// When the last message written to each EA's pipe arrives (pipes are FIFO).
    pipe_tail: BTreeMap<Ea, Instant>,
    journal: Journal,
    ledgers: Vec<BTreeMap<CommandId, LedgerRecord>>,
    ledger_pending: Vec<BTreeMap<LedgerOpId, LedgerRecord>>,
    master_files: Vec<BTreeMap<IntentId, TradeIntent>>,
    master_pending: Vec<BTreeMap<master::OpId, MasterWrite>>,
    slave_files: Vec<BTreeMap<CommandId, ExecutedRecord>>,
    /// Where each record of a slave's file was first appended (the file's order).
    slave_file_order: Vec<BTreeMap<CommandId, u64>>,
    slave_file_appends: u64,
    slave_pending: Vec<BTreeMap<slave::OpId, SlaveWrite>>,
    broker: BTreeMap<(usize, CommandId), BrokerOutcome>,
    next_ticket: i64,
    /// What each slave's broker holds, and the lifecycle bookkeeping checked against it.
    pub positions: positions::Positions,
    script: Vec<Vec<TradeIntent>>,
    script_pos: Vec<usize>,
    /// Intents handed to a master whose append is not durable yet: re-emitted after a crash.
    unappended: Vec<BTreeSet<IntentId>>,
    pub book: Ledgerbook,
    /// The last tag given to a core Command send.
    next_tag: u64,
    /// The tag of the core send an agent is handling now (0: none).
    cause: u64,
    /// No loss fault in this world ([`calm_world`]): no copy may end MAX_RETRIES.
    pub calm: bool,
    /// Extra broker latency of a calm world until healing.
    slow_broker: Duration,
    pub violations: Vec<Violation>,
    pub steps: u64,
    pub trace: Option<String>,
    /// The intent the core answered or journaled in the step being drained.
    answered: Option<IntentId>,
    /// Every transition id any machine took in this run (for `echo-sim coverage`).
    pub fired: BTreeSet<&'static str>,
    healed_at: Option<Instant>,
    /// The workload mix of this seed.
    pub workload: Workload,
    /// The subscription of each slave now (the core's copy is always the same).
    subs: Vec<Option<Subscription>>,
    /// The transition whose outputs are being routed (set by the drain).
    last_fired: Option<&'static str>,
    /// Slaves of each intent the core planned in its current life (checked on write retries).
    planned: BTreeMap<IntentId, Vec<AccountId>>,
    /// Market-data routing version (raised on every subscription change).
    routing_version: u64,
    feeds: Vec<Feed>,
    pub md: MdBook,
    /// Self-test hook: the core is never told of a subscription change (as a core that
    /// ignored them would behave). The admission check must report it.
    pub core_misses_subscription_changes: bool,
    /// One generator stream per kind of random decision (see `faults::F`).
    streams: Vec<Rng>,
}

const TICK: Duration = Duration::from_millis(100);

/// The faults that lose or cut something (messages, storage writes, processes, pipes,
/// sessions) — the only ones that may exhaust a copy's retries. A calm world has none of
/// them (nor a legacy agent, which answers nothing and is judged by timeouts): it is slowed,
/// duplicated, reordered, resubscribed and refused by brokers (and overloaded, if its seed
/// drew bursts), but every copy it gives up on is a bug.
const LOSS_FAULTS: &[&str] = &[
    // A live config change may set an agent's pipe ack timeout below a slow EA's answer
    // time: a live peer then looks dead, as it would in production.
    "config_change",
    "net_drop",
    "partition",
    "ledger_fail",
    "disk_fail",
    "crash_core",
    "crash_agent",
    "crash_ea",
    "pipe_close",
    "pipe_write_fail",
    "half_open",
    "agent_reconfig",
];

/// Whether a faulty seed draws a calm world (one in ten), from a generator of its own so
/// the other seeds' draws stay what they were — and, for a calm one, how slow its brokers
/// are: every order waits that long on top of the usual latency until healing, so the slave
/// EAs' tables fill and they answer RETRY, which must never cost a copy.
pub fn calm_world(seed: u64) -> Option<Duration> {
    let mut r = Rng::new(seed ^ 0xCA1A_5EED_0B5E_55ED);
    r.chance(1, 10)
        .then(|| Duration::from_millis(r.range(100, 600)))
}

/// The agents' delivery config the core pushes (and agents and masters start with).
fn agent_delivery(c: Capacity) -> AgentDeliveryConfig {
    match c {
        Capacity::Default => AgentDeliveryConfig::default(),
        Capacity::TestMin => AgentDeliveryConfig {
            ack_timeout_ms: 250,
            retry_backoff_ms: 20,
            max_retries: 3,
            heartbeat_interval_ms: 1_000,
        },
    }
}

/// The slave EAs' `max_executed_retained` in test_min (see `Capacity::slave_max_executed_retained`).
pub const SLAVE_RETAINED_TEST_MIN: usize = 8;
/// The slave EAs' `min_retained_ms` in test_min: above the longest gap the core may leave
/// between two sends (or cancels) of one unfinished command — the drawn `ack_timeout_ms` (at
/// most 3 s here) plus the 30 s backoff cap — because a one-way partition (agent → core
/// down, core → agent up) lets new commands reach the slave while every result is dropped:
/// CI seed 440 evicted a filled command 20 s after its execution, the core's next cancel
/// 23 s after the previous one found it unknown, and it was answered CANCELLED. With 8
/// records alone, 67 of the first 100 seeds re-executed a command (the planted
/// `slave-evicts-young`).
pub const SLAVE_MIN_RETAINED_MS_TEST_MIN: u64 = 40_000;

impl Capacity {
    /// The agents' bounds: tiny in test_min, so every bound is reached.
    fn agent_limits(self) -> AgentLimits {
        match self {
            Capacity::Default => AgentLimits::default(),
            Capacity::TestMin => AgentLimits {
                max_intent_routes: 6,
                intent_route_ttl: Duration::from_millis(1_000),
                max_active_commands: 6,
                max_completed_retained: 16,
                max_result_outbox: 2,
                max_pipe_inflight: 2,
            },
        }
    }

    /// Most intents a master's IntentQueue holds.
    fn intent_queue_capacity(self) -> usize {
        match self {
            Capacity::Default => IntentQueueConfig::default().capacity,
            Capacity::TestMin => 8,
        }
    }

    /// Most commands a slave EA has unfinished.
    fn slave_max_pending(self) -> usize {
        match self {
            Capacity::Default => SlaveConfig::new("").max_pending,
            Capacity::TestMin => 3,
        }
    }

    /// Executed records a slave EA keeps for dedupe: tiny in test_min, so the count bound is
    /// passed in every busy seed and only the age floor keeps a record whose redelivery may
    /// still come; an eviction of the wrong record shows up as a duplicate execution.
    pub(super) fn slave_retention(self) -> (usize, u64) {
        match self {
            Capacity::Default => {
                let c = SlaveConfig::new("");
                (c.max_executed_retained, c.min_retained_ms)
            }
            Capacity::TestMin => (SLAVE_RETAINED_TEST_MIN, SLAVE_MIN_RETAINED_MS_TEST_MIN),
        }
    }
}

impl World {
    /// Builds a world whose faults (if `faults`) and jitter are drawn from `seed`.
    pub fn new(cfg: WorldConfig, seed: u64, faults: bool) -> Self {
        Self::with_zeroed(cfg, seed, faults, &[])
    }

    /// As [`World::new`], with the named rates (fault profile or workload mix, see
    /// `rates_mut`) set to zero after they were drawn — the shrinker's smaller schedules.
    pub fn with_zeroed(cfg: WorldConfig, seed: u64, faults: bool, zeroed: &[String]) -> Self {
        let mut rng = Rng::new(seed);
        let mut profile = if faults {
            FaultProfile::draw(&mut rng)
        } else {
            FaultProfile::none()
        };
        for (name, rate) in profile.rates_mut() {
            if zeroed.iter().any(|z| z == name) {
                *rate = 0;
            }
        }
        let masters: Vec<AccountId> = (0..cfg.masters)
            .map(|m| AccountId::new(format!("master-{m}")))
            .collect();
        let slaves: Vec<AccountId> = (0..cfg.masters * cfg.slaves_per_master)
            .map(|s| AccountId::new(format!("slave-{s}")))
            .collect();
        let agent_ids = vec![AgentId::new("agent-0"), AgentId::new("agent-1")];
        // Even slaves on agent-0 (beside the masters), odd ones on agent-1.
        let slave_agent: Vec<usize> = (0..slaves.len()).map(|s| s % 2).collect();
        let mut workload = if faults {
            Workload::draw(&mut rng, agent_ids.len())
        } else {
            Workload::none()
        };
        if faults {
            (workload.agent_reconfig, workload.half_open) = Workload::agent_restart_rates(seed);
        }
        for (name, rate) in workload.rates_mut() {
            if zeroed.iter().any(|z| z == name) {
                *rate = 0;
            }
        }
        let slow_broker = calm_world(seed).filter(|_| faults);
        let calm = slow_broker.is_some();
        if calm {
            for (name, rate) in profile.rates_mut().into_iter().chain(workload.rates_mut()) {
                if LOSS_FAULTS.contains(&name) {
                    *rate = 0;
                }
            }
            workload.compat_agent = None;
        }
        let policies = if faults {
            policies::draw(seed, slaves.len())
        } else {
            Vec::new()
        };
        let subs: Vec<Option<Subscription>> = slaves
            .iter()
            .enumerate()
            .map(|(s, acc)| {
                let m = s / cfg.slaves_per_master;
                Some(home_subscription(&masters[m], acc, s, &policies))
            })
            .collect();
        // Half the seeds journal the intermediate stage acks: recovery must not depend on them.
        let stage_acks = (seed % 2) as u32;
        let (router, delivery) = match cfg.capacity {
            Capacity::Default => (
                RouterConfig::default(),
                DeliveryConfig {
                    journal_stage_acks: stage_acks,
                    ..DeliveryConfig::default()
                },
            ),
            Capacity::TestMin => (
                RouterConfig {
                    worker_pool_size: 2,
                    queue_depth_max: 4,
                    worker_timeout_ms: 20,
                },
                DeliveryConfig {
                    ack_timeout_ms: 300,
                    retry_backoff_ms: 20,
                    max_retries: 4,
                    heartbeat_interval_ms: 1_000,
                    reconcile_interval_ms: 1_000,
                    journal_stage_acks: stage_acks,
                    // Tiny send windows, so commands queue at the core for their agent.
                    agent_window: 1 + (seed % 3) as u32,
                },
            ),
        };
        let core_cfg = CoreConfig {
            router,
            delivery,
            agent_delivery: agent_delivery(cfg.capacity),
            subscriptions: subs.iter().flatten().cloned().collect(),
            recent_intents: if cfg.capacity == Capacity::TestMin {
                8
            } else {
                4_096
            },
        };
        let mut agent_accounts = Vec::new();
        for a in 0..agent_ids.len() {
            let mut accounts: Vec<(AccountId, Role)> = Vec::new();
            if a == 0 {
                accounts.extend(masters.iter().map(|m| (m.clone(), Role::Master)));
            }
            for (s, acc) in slaves.iter().enumerate() {
                if slave_agent[s] == a {
                    accounts.push((acc.clone(), Role::Slave));
                }
            }
            agent_accounts.push(accounts);
        }
        let mut script: Vec<Vec<TradeIntent>> = masters
            .iter()
            .enumerate()
            .map(|(m, acc)| build_script(m, cfg.trades, acc))
            .collect();
        for (m, s) in script.iter_mut().enumerate() {
            pendings_some(s, m, workload.pending, &mut rng);
            spoil_some(s, workload.malformed, &mut rng);
        }
        let slave_slow = slaves
            .iter()
            .map(|_| {
                if rng.chance(profile.slow_slave, 1_000) {
                    Duration::from_millis(rng.range(5, 200))
                } else {
                    Duration::ZERO
                }
            })
            .collect();
        let streams: Vec<Rng> = (0..faults::F::COUNT).map(|_| rng.fork()).collect();
        let min_max_retries = core_cfg.delivery.max_retries;
        let n_agents = agent_ids.len();
        let (n_m, n_s) = (masters.len(), slaves.len());
        let mut w = World {
            seed,
            profile,
            now: Instant::from_millis(1),
            faults_on: faults,
            rng,
            seq: 0,
            queue: BTreeMap::new(),
            core: Some(Core::new(core_cfg.clone())),
            core_cfg,
            policies,
            terminal: terminal_facts::TerminalFacts::draw(seed, n_s, faults),
            core_epoch: 0,
            agents: (0..n_agents).map(|_| None).collect(),
            agent_epoch: vec![0; n_agents],
            agent_ids,
            agent_served: agent_accounts.clone(),
            agent_accounts,
            reconfig_rng: Rng::new(seed ^ 0x2EC0_F16A_A6E7_5EED),
            links: vec![Link::default(); n_agents],
            masters: (0..n_m).map(|_| None).collect(),
            master_epoch: vec![0; n_m],
            master_accounts: masters,
            slaves: (0..n_s).map(|_| None).collect(),
            slave_epoch: vec![0; n_s],
            slave_accounts: slaves,
            slave_agent,
            slave_slow,
            pipes: BTreeMap::new(),
            pipe_tail: BTreeMap::new(),
            journal: Journal::default(),
            ledgers: vec![BTreeMap::new(); n_agents],
            ledger_pending: vec![BTreeMap::new(); n_agents],
            master_files: vec![BTreeMap::new(); n_m],
            master_pending: vec![BTreeMap::new(); n_m],
            slave_files: vec![BTreeMap::new(); n_s],
            slave_file_order: vec![BTreeMap::new(); n_s],
            slave_file_appends: 0,
            slave_pending: vec![BTreeMap::new(); n_s],
            broker: BTreeMap::new(),
            next_ticket: 1_000,
            positions: positions::Positions::default(),
            script,
            script_pos: vec![0; n_m],
            unappended: vec![BTreeSet::new(); n_m],
            book: Ledgerbook {
                min_max_retries,
                ..Ledgerbook::default()
            },
            next_tag: 0,
            cause: 0,
            calm,
            slow_broker: slow_broker.unwrap_or(Duration::ZERO),
            violations: Vec::new(),
            steps: 0,
            trace: None,
            fired: BTreeSet::new(),
            answered: None,
            healed_at: None,
            workload,
            subs,
            last_fired: None,
            planned: BTreeMap::new(),
            routing_version: 1,
            feeds: (0..n_agents).map(|_| Feed::default()).collect(),
            md: MdBook::default(),
            core_misses_subscription_changes: false,
            streams,
            cfg,
        };
        w.drain::<CoreM>(0, "boot");
        for a in 0..n_agents {
            w.start_agent(a);
        }
        for m in 0..n_m {
            w.start_ea(Ea::Master(m));
            let offset = Duration::from_micros(37 * m as u64);
            w.at(w.cfg.emit_every + offset, Ev::Emit { master: m });
        }
        for s in 0..n_s {
            w.start_ea(Ea::Slave(s));
        }
        w.at(TICK, Ev::Tick);
        w
    }

    /// Records every transition and fault as NDJSON (see SPEC.md, "Traces").
    pub fn enable_trace(&mut self, commit: &str) {
        let mut h = String::new();
        let _ = writeln!(
            h,
            "{{\"type\":\"header\",\"seed\":{},\"commit\":{},\"masters\":{},\"slaves_per_master\":{},\"trades\":{},\"capacity\":\"{:?}\",\"profile\":{},\"workload\":{},\"calm\":{}}}",
            self.seed,
            json_str(commit),
            self.cfg.masters,
            self.cfg.slaves_per_master,
            self.cfg.trades,
            self.cfg.capacity,
            json_str(&self.profile.to_string()),
            json_str(&self.workload.to_string()),
            self.calm
        );
        self.trace = Some(h);
    }

    fn at(&mut self, delay: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.insert((self.now + delay, self.seq), ev);
    }

    // ---- the main loop ------------------------------------------------------------------

    /// Runs the fault phase, heals everything, and runs until every intent settled or the
    /// liveness bound passed. Returns true if the world settled.
    pub fn run(&mut self) -> bool {
        let heal_at = Instant::ZERO + self.cfg.fault_phase;
        self.run_until(heal_at, false);
        self.heal();
        let bound = self.now + self.cfg.liveness_bound;
        self.run_until(bound, true)
    }

    /// Steps until `deadline`; with `stop_when_settled`, returns as soon as all settled.
    pub fn run_until(&mut self, deadline: Instant, stop_when_settled: bool) -> bool {
        loop {
            if stop_when_settled && self.is_settled() {
                return true;
            }
            let next_ev = self.queue.keys().next().map(|(t, _)| *t);
            let next_timer = self.next_timer();
            let next = match (next_ev, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => return self.is_settled(),
            };
            if next > deadline {
                self.now = deadline.max(self.now);
                return self.is_settled();
            }
            if next > self.now {
                self.now = next;
            }
            self.steps += 1;
            if next_ev == Some(next) {
                if let Some((_, ev)) = self.queue.pop_first() {
                    self.deliver(ev);
                }
            } else {
                self.fire_timers();
            }
        }
    }

    /// The script is done and nothing is open anywhere.
    pub fn is_settled(&self) -> bool {
        let script_done =
            (0..self.script.len()).all(|m| self.script_pos[m] >= self.script[m].len());
        script_done
            && self
                .masters
                .iter()
                .all(|q| q.as_ref().is_some_and(|q| q.metrics().depth == 0))
            && self
                .core
                .as_ref()
                .is_some_and(|c| c.open_deliveries() == 0 && c.open_intents() == 0)
            && self.md_settled()
    }

    fn next_timer(&self) -> Option<Instant> {
        let mut all = Vec::new();
        all.push(self.core.as_ref().and_then(|c| c.poll_timeout()));
        all.extend(
            self.agents
                .iter()
                .map(|a| a.as_ref().and_then(|a| a.poll_timeout())),
        );
        all.extend(
            self.masters
                .iter()
                .map(|m| m.as_ref().and_then(|m| m.poll_timeout())),
        );
        all.extend(
            self.slaves
                .iter()
                .map(|s| s.as_ref().and_then(|s| s.poll_timeout())),
        );
        all.into_iter().flatten().min()
    }

    fn fire_timers(&mut self) {
        let now = self.now;
        if let Some(c) = self.core.as_mut() {
            if c.poll_timeout().is_some_and(|t| t <= now) {
                c.handle_timeout(now);
                self.drain::<CoreM>(0, "timer");
            }
        }
        for a in 0..self.agents.len() {
            if let Some(x) = self.agents[a].as_mut() {
                if x.poll_timeout().is_some_and(|t| t <= now) {
                    x.handle_timeout(now);
                    self.drain::<AgentM>(a, "timer");
                }
            }
        }
        for m in 0..self.masters.len() {
            if let Some(x) = self.masters[m].as_mut() {
                if x.poll_timeout().is_some_and(|t| t <= now) {
                    x.handle_timeout(now);
                    self.drain::<MasterM>(m, "timer");
                }
            }
        }
        for s in 0..self.slaves.len() {
            if let Some(x) = self.slaves[s].as_mut() {
                if x.poll_timeout().is_some_and(|t| t <= now) {
                    x.handle_timeout(now);
                    self.drain::<SlaveM>(s, "");
                }
            }
        }
    }

    /// Hands one event to the part of the world that owns it.
    fn deliver(&mut self, ev: Ev) {
        match ev {
            Ev::Tick => self.tick(),
            Ev::Emit { master } => self.on_emit_timer(master),
            Ev::ToCore {
                agent,
                link,
                msg,
                tag,
            } => self.on_to_core(agent, link, msg, tag),
            Ev::FromCore {
                agent,
                link,
                msg,
                tag,
            } => self.on_from_core(agent, link, msg, tag),
            Ev::FromEa {
                agent,
                pipe,
                ea,
                msg,
            } => self.on_from_ea(agent, pipe, ea, msg),
            Ev::ToEa { ea, pipe, msg } => self.on_to_ea(ea, pipe, msg),
            Ev::Journal {
                op,
                epoch,
                commit,
                reply,
            } => self.on_journal_done(op, epoch, commit, reply),
            Ev::Ledger {
                agent,
                op,
                epoch,
                ok,
            } => self.on_ledger_done(agent, op, epoch, ok),
            Ev::MasterDisk {
                master,
                op,
                epoch,
                ok,
            } => self.on_master_disk_done(master, op, epoch, ok),
            Ev::SlaveDisk {
                slave,
                op,
                epoch,
                ok,
            } => self.on_slave_disk_done(slave, op, epoch, ok),
            Ev::Broker {
                slave,
                epoch,
                command_id,
                body,
                leg,
            } => self.on_broker_answer(slave, epoch, command_id, body, leg),
            Ev::Restart { node } => self.restart(node),
            Ev::Reconnect { agent } => self.on_reconnect(agent),
            Ev::Reopen { ea } => self.on_reopen(ea),
            Ev::MdOffer { agent, md } => self.md_on_tick(agent, md),
            Ev::MdConsume { agent } => self.md_consume(agent),
            Ev::MdRouting { agent, v, feed } => {
                if feed {
                    self.md_producer_routing(agent, v)
                } else {
                    self.md_routing(agent, v)
                }
            }
        }
    }

    // ---- views for the report -----------------------------------------------------------

    pub fn master_accounts(&self) -> &[AccountId] {
        &self.master_accounts
    }

    pub fn slave_accounts(&self) -> &[AccountId] {
        &self.slave_accounts
    }

    /// The slaves first subscribed to `master` (its home slaves).
    pub fn slaves_of(&self, master: usize) -> Vec<usize> {
        let n = self.cfg.slaves_per_master;
        (master * n..(master + 1) * n).collect()
    }

    /// The journal's durable row of a delivery.
    pub fn journal_delivery(&self, c: &CommandId) -> Option<&DeliveryRecord> {
        self.journal.deliveries.get(c)
    }

    pub fn journal_has_intent(&self, id: &IntentId) -> bool {
        self.journal.intents.contains_key(id)
    }

    pub fn broker_outcome(&self, slave: usize, c: &CommandId) -> Option<&BrokerOutcome> {
        self.broker.get(&(slave, c.clone()))
    }

    pub fn script_len(&self) -> usize {
        self.script.iter().map(Vec::len).sum()
    }

    /// What is still open, for a liveness failure message.
    pub fn pending_summary(&self) -> String {
        let mut s = String::new();
        match &self.core {
            Some(c) => {
                for v in c.delivery_views().iter().take(10) {
                    let _ = writeln!(
                        s,
                        "  core: {} {:?} {} stage {} attempts {}",
                        v.command_id,
                        v.kind,
                        v.state,
                        v.stage.name(),
                        v.attempts
                    );
                }
                let _ = writeln!(
                    s,
                    "  core: {} open intents, {} open deliveries, queue depths {:?}, journal down: {}",
                    c.open_intents(),
                    c.open_deliveries(),
                    c.queue_depths(),
                    c.journal_is_down()
                );
            }
            None => s.push_str("  core: down\n"),
        }
        for (m, q) in self.masters.iter().enumerate() {
            if let Some(q) = q {
                let _ = writeln!(
                    s,
                    "  master-{m}: depth {} script {}/{}",
                    q.metrics().depth,
                    self.script_pos[m],
                    self.script[m].len()
                );
            }
        }
        s.push_str(&self.md_pending_summary());
        s
    }

    /// The fault profile and the workload mix, as printed beside the seed.
    pub fn describe_mix(&self) -> String {
        format!("{} | workload {}", self.profile, self.workload)
    }
}
