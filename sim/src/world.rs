//! One deterministic world of real Echo machines — a core, agents, master and slave EAs, their
//! storage and a broker — stepped by an event queue in simulated time, with faults drawn from
//! one seed.
//!
//! This module owns the wiring (which output of which machine becomes which input of which
//! other, after what delay), the simulated storage (what is durable when a node crashes), the
//! fault injection, and the safety checks made at the moment each message or action happens.
//! It plays the runtime's part exactly where the runtime decides nothing: streams break when a
//! partition is two-way or when the core declares an agent silent, crashed processes come back
//! through `recover()` from durable state only. It must never read a wall clock or use any
//! randomness but the run's [`Rng`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use echo_statemachine::agent::{
    AgentLimits, AgentOutput, DeliveryManager, LedgerOpId, LedgerRecord, LedgerResult,
};
use echo_statemachine::config::{AgentDeliveryConfig, DeliveryConfig, RouterConfig, Subscription};
use echo_statemachine::core::{
    Core, CoreConfig, CoreDurableState, CoreLog, CoreOutput, DeliveryRecord, DeliveryStatus,
    JournalReply, JournalResult, JournalWrite, OpId,
};
use echo_statemachine::ea::master::{self, IntentQueue, IntentQueueConfig, PersistError};
use echo_statemachine::ea::slave::{
    self, BrokerOutcome, ExecutedRecord, SlaveConfig, SlaveExecutor,
};
use echo_statemachine::ids::{AccountId, AgentId, CommandId, IntentId, Symbol, TradeId};
use echo_statemachine::msg::*;
use echo_statemachine::spec::Fired;
use echo_statemachine::time::{Duration, Instant};

use crate::profile::FaultProfile;
use crate::rng::Rng;

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

/// A safety or liveness failure, with what the checker saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub at: Instant,
    pub what: String,
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
    },
    FromCore {
        agent: usize,
        link: u64,
        msg: CoreToAgent,
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
    Broker {
        slave: usize,
        epoch: u64,
        command_id: CommandId,
        body: Option<CommandBody>,
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

#[derive(Clone, Copy, Debug, Default)]
enum Partition {
    #[default]
    None,
    /// Messages agent → core are lost.
    Up,
    /// Messages core → agent are lost.
    Down,
}

#[derive(Clone, Debug, Default)]
struct Link {
    /// Stream generation; messages of an older one are lost.
    gen: u64,
    connected: bool,
    partition: Partition,
    partition_until: Option<Instant>,
    reconnect_pending: bool,
}

/// What storage has made durable.
#[derive(Default)]
struct Journal {
    intents: BTreeMap<IntentId, TradeIntent>,
    deliveries: BTreeMap<CommandId, DeliveryRecord>,
    down_until: Option<Instant>,
    pending: BTreeMap<OpId, JournalWrite>,
}

/// Per-run bookkeeping for the checkers and the report.
#[derive(Clone, Debug, Default)]
pub struct Ledgerbook {
    /// Intents whose append to the master's IntentQueue file was durable: (at, kind, trade).
    pub emitted: BTreeMap<IntentId, (Instant, IntentKind, TradeId)>,
    /// (slave, command) → how many times the slave EA sent it to the broker (must be ≤ 1).
    pub placed: BTreeMap<(usize, CommandId), u32>,
    /// Command → first time its filled ExecutionResult reached the core.
    pub confirmed_at: BTreeMap<CommandId, Instant>,
    /// Per (slave, trade): master_seq of each command placed, in order.
    pub order: BTreeMap<(usize, TradeId), Vec<u64>>,
    /// Intents a master gave up on (never accepted).
    pub gave_up: BTreeSet<IntentId>,
    /// Intents the core refused for good (non-retryable).
    pub refused: BTreeMap<IntentId, ErrorCode>,
    pub faults: BTreeMap<&'static str, u64>,
    pub busy_acks: u64,
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
    pub core: Option<Core>,
    core_epoch: u64,
    agents: Vec<Option<DeliveryManager>>,
    agent_epoch: Vec<u64>,
    agent_ids: Vec<AgentId>,
    agent_accounts: Vec<Vec<(AccountId, Role)>>,
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
    journal: Journal,
    ledgers: Vec<BTreeMap<CommandId, LedgerRecord>>,
    ledger_pending: Vec<BTreeMap<LedgerOpId, LedgerRecord>>,
    master_files: Vec<BTreeMap<IntentId, TradeIntent>>,
    master_pending: Vec<BTreeMap<master::OpId, MasterWrite>>,
    slave_files: Vec<BTreeMap<CommandId, ExecutedRecord>>,
    slave_pending: Vec<BTreeMap<slave::OpId, SlaveWrite>>,
    broker: BTreeMap<(usize, CommandId), BrokerOutcome>,
    next_ticket: i64,
    script: Vec<Vec<TradeIntent>>,
    script_pos: Vec<usize>,
    /// Intents handed to a master whose append is not durable yet: re-emitted after a crash.
    unappended: Vec<BTreeSet<IntentId>>,
    pub book: Ledgerbook,
    pub violations: Vec<Violation>,
    pub steps: u64,
    pub trace: Option<String>,
    /// The intent the core answered or journaled in the step being drained.
    answered: Option<IntentId>,
    /// Every transition id any machine took in this run (for `echo-sim coverage`).
    pub fired: BTreeSet<&'static str>,
    healed_at: Option<Instant>,
}

#[derive(Clone, Debug)]
enum MasterWrite {
    Append(TradeIntent),
    Remove(IntentId),
}

#[derive(Clone, Debug)]
enum SlaveWrite {
    Cancelled(Command, ExecutionResult),
    Executing(Command),
    Executed(CommandId, ExecutionResult),
}

const KINDS: [IntentKind; 4] = [
    IntentKind::Open,
    IntentKind::Modify,
    IntentKind::PartialClose,
    IntentKind::Close,
];

const TICK: Duration = Duration::from_millis(100);

/// A trade id carries a checksum of its index, so a checker can tell a real one from garbage.
pub fn trade_id(master: usize, trade: usize) -> TradeId {
    let sum = (master * 31 + trade * 7) % 97;
    TradeId::new(format!("M{master}-T{trade}-C{sum:02}"))
}

impl World {
    /// Builds a world whose faults (if `faults`) and jitter are drawn from `seed`.
    pub fn new(cfg: WorldConfig, seed: u64, faults: bool) -> Self {
        let mut rng = Rng::new(seed);
        let profile = if faults {
            FaultProfile::draw(&mut rng)
        } else {
            FaultProfile::none()
        };
        let masters: Vec<AccountId> = (0..cfg.masters)
            .map(|m| AccountId::new(format!("master-{m}")))
            .collect();
        let slaves: Vec<AccountId> = (0..cfg.masters * cfg.slaves_per_master)
            .map(|s| AccountId::new(format!("slave-{s}")))
            .collect();
        let agent_ids = vec![AgentId::new("agent-0"), AgentId::new("agent-1")];
        // Even slaves on agent-0 (beside the masters), odd ones on agent-1.
        let slave_agent: Vec<usize> = (0..slaves.len()).map(|s| s % 2).collect();
        let subs = slaves
            .iter()
            .enumerate()
            .map(|(s, acc)| {
                let m = s / cfg.slaves_per_master;
                Subscription::new(masters[m].as_str(), acc.as_str(), 1.0 + (s % 3) as f64)
            })
            .collect();
        let (router, delivery) = match cfg.capacity {
            Capacity::Default => (RouterConfig::default(), DeliveryConfig::default()),
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
                },
            ),
        };
        let core_cfg = CoreConfig {
            router,
            delivery,
            agent_delivery: AgentDeliveryConfig::default(),
            subscriptions: subs,
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
        let script: Vec<Vec<TradeIntent>> = masters
            .iter()
            .enumerate()
            .map(|(m, acc)| build_script(m, cfg.trades, acc))
            .collect();
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
            core_epoch: 0,
            agents: (0..n_agents).map(|_| None).collect(),
            agent_epoch: vec![0; n_agents],
            agent_ids,
            agent_accounts,
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
            journal: Journal::default(),
            ledgers: vec![BTreeMap::new(); n_agents],
            ledger_pending: vec![BTreeMap::new(); n_agents],
            master_files: vec![BTreeMap::new(); n_m],
            master_pending: vec![BTreeMap::new(); n_m],
            slave_files: vec![BTreeMap::new(); n_s],
            slave_pending: vec![BTreeMap::new(); n_s],
            broker: BTreeMap::new(),
            next_ticket: 1_000,
            script,
            script_pos: vec![0; n_m],
            unappended: vec![BTreeSet::new(); n_m],
            book: Ledgerbook::default(),
            violations: Vec::new(),
            steps: 0,
            trace: None,
            fired: BTreeSet::new(),
            answered: None,
            healed_at: None,
            cfg,
        };
        w.drain_core("boot");
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
            "{{\"type\":\"header\",\"seed\":{},\"commit\":{},\"masters\":{},\"slaves_per_master\":{},\"trades\":{},\"capacity\":\"{:?}\",\"profile\":{}}}",
            self.seed,
            json_str(commit),
            self.cfg.masters,
            self.cfg.slaves_per_master,
            self.cfg.trades,
            self.cfg.capacity,
            json_str(&self.profile.to_string())
        );
        self.trace = Some(h);
    }

    fn at(&mut self, delay: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.insert((self.now + delay, self.seq), ev);
    }

    fn fault(&mut self, kind: &'static str, detail: String) {
        *self.book.faults.entry(kind).or_insert(0) += 1;
        if let Some(t) = &mut self.trace {
            let _ = writeln!(
                t,
                "{{\"type\":\"fault\",\"t_us\":{},\"fault\":\"{}\",\"detail\":{}}}",
                self.now.0 / 1_000,
                kind,
                json_str(&detail)
            );
        }
    }

    fn violation(&mut self, what: String) {
        if let Some(t) = &mut self.trace {
            let _ = writeln!(
                t,
                "{{\"type\":\"violation\",\"t_us\":{},\"what\":{}}}",
                self.now.0 / 1_000,
                json_str(&what)
            );
        }
        self.violations.push(Violation { at: self.now, what });
    }

    fn trace_step(&mut self, node: &str, input: &str, f: &Fired, outputs: &[String]) {
        self.fired.insert(f.transition.id);
        if let Some(t) = &mut self.trace {
            let tr = f.transition;
            let _ = writeln!(
                t,
                "{{\"type\":\"step\",\"t_us\":{},\"node\":{},\"input\":{},\"transition\":\"{}\",\"from\":{},\"to\":{},\"subject\":{},\"outputs\":[{}]}}",
                self.now.0 / 1_000,
                json_str(node),
                json_str(input),
                tr.id,
                json_str(tr.from),
                json_str(tr.to),
                json_str(&subject(f)),
                outputs.iter().map(|o| json_str(o)).collect::<Vec<_>>().join(",")
            );
        }
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.faults_on && self.rng.chance(per_mille, 1_000)
    }

    // ---- lifecycle of nodes -------------------------------------------------------------

    fn start_agent(&mut self, a: usize) {
        let ledger: Vec<LedgerRecord> = self.ledgers[a].values().cloned().collect();
        self.agents[a] = Some(DeliveryManager::recover(
            self.agent_ids[a].clone(),
            self.agent_accounts[a].clone(),
            AgentDeliveryConfig::default(),
            AgentLimits::default(),
            ledger,
        ));
        self.connect(a);
        let eas: Vec<Ea> = self.eas_of(a);
        for ea in eas {
            if self.ea_up(ea) {
                self.open_pipe(ea);
            }
        }
    }

    fn eas_of(&self, a: usize) -> Vec<Ea> {
        let mut v = Vec::new();
        if a == 0 {
            v.extend((0..self.master_accounts.len()).map(Ea::Master));
        }
        v.extend(
            (0..self.slave_accounts.len())
                .filter(|s| self.slave_agent[*s] == a)
                .map(Ea::Slave),
        );
        v
    }

    fn agent_of(&self, ea: Ea) -> usize {
        match ea {
            Ea::Master(_) => 0,
            Ea::Slave(s) => self.slave_agent[s],
        }
    }

    fn account_of(&self, ea: Ea) -> AccountId {
        match ea {
            Ea::Master(m) => self.master_accounts[m].clone(),
            Ea::Slave(s) => self.slave_accounts[s].clone(),
        }
    }

    fn ea_up(&self, ea: Ea) -> bool {
        match ea {
            Ea::Master(m) => self.masters[m].is_some(),
            Ea::Slave(s) => self.slaves[s].is_some(),
        }
    }

    fn start_ea(&mut self, ea: Ea) {
        match ea {
            Ea::Master(m) => {
                let mut durable: Vec<TradeIntent> =
                    self.master_files[m].values().cloned().collect();
                durable.sort_by_key(|i| i.master_seq);
                self.masters[m] = Some(IntentQueue::recover(IntentQueueConfig::default(), durable));
            }
            Ea::Slave(s) => {
                let durable: Vec<ExecutedRecord> = self.slave_files[s].values().cloned().collect();
                self.slaves[s] = Some(SlaveExecutor::recover(
                    SlaveConfig::new(self.slave_accounts[s].as_str()),
                    durable,
                ));
                self.drain_slave(s);
            }
        }
        if self.agents[self.agent_of(ea)].is_some() {
            self.open_pipe(ea);
        }
    }

    fn open_pipe(&mut self, ea: Ea) {
        let entry = self.pipes.entry(ea).or_insert((0, false));
        entry.0 += 1;
        entry.1 = true;
        let a = self.agent_of(ea);
        let account = self.account_of(ea);
        let now = self.now;
        if let Some(agent) = self.agents[a].as_mut() {
            agent.handle_pipe_connected(now, account);
        }
        self.drain_agent(a, "pipe connected");
        if let Ea::Master(m) = ea {
            if let Some(q) = self.masters[m].as_mut() {
                q.handle_pipe_connected(now);
            }
            self.drain_master(m, "pipe connected");
        }
    }

    fn close_pipe(&mut self, ea: Ea) {
        let Some(p) = self.pipes.get_mut(&ea) else {
            return;
        };
        if !p.1 {
            return;
        }
        p.1 = false;
        p.0 += 1;
        let a = self.agent_of(ea);
        let account = self.account_of(ea);
        let now = self.now;
        if let Some(agent) = self.agents[a].as_mut() {
            agent.handle_pipe_closed(now, account);
            self.drain_agent(a, "pipe closed");
        }
        match ea {
            Ea::Master(m) => {
                if let Some(q) = self.masters[m].as_mut() {
                    q.handle_pipe_closed(now);
                    self.drain_master(m, "pipe closed");
                }
            }
            Ea::Slave(s) => {
                if let Some(x) = self.slaves[s].as_mut() {
                    x.handle_pipe_closed(now);
                    self.drain_slave(s);
                }
            }
        }
    }

    fn connect(&mut self, a: usize) {
        if self.core.is_none() || self.agents[a].is_none() || self.links[a].connected {
            return;
        }
        if matches!(self.links[a].partition, Partition::Up | Partition::Down)
            && self.links[a].partition_until.is_some()
            && !self.links[a].connected
        {
            // A stream cannot be set up through a partition; try again when it heals.
            self.links[a].reconnect_pending = true;
            return;
        }
        self.links[a].gen += 1;
        self.links[a].connected = true;
        self.links[a].reconnect_pending = false;
        let now = self.now;
        if let Some(agent) = self.agents[a].as_mut() {
            agent.handle_core_connected(now);
        }
        self.drain_agent(a, "core connected");
    }

    fn disconnect(&mut self, a: usize, why: &str) {
        if !self.links[a].connected {
            return;
        }
        self.links[a].connected = false;
        self.links[a].gen += 1;
        let now = self.now;
        if let Some(core) = self.core.as_mut() {
            core.handle_agent_disconnected(now, &self.agent_ids[a]);
        }
        self.drain_core(why);
        if let Some(agent) = self.agents[a].as_mut() {
            agent.handle_core_disconnected(now);
        }
        self.drain_agent(a, why);
        if !self.links[a].reconnect_pending {
            self.links[a].reconnect_pending = true;
            let d = Duration::from_millis(self.rng.range(20, 300));
            self.at(d, Ev::Reconnect { agent: a });
        }
    }

    fn crash(&mut self, node: Node) {
        let down = Duration::from_millis(
            self.rng
                .range(5, self.profile.crash_downtime_max_ms.max(10)),
        );
        match node {
            Node::Core => {
                if self.core.is_none() {
                    return;
                }
                self.fault("crash", "core".into());
                for a in 0..self.links.len() {
                    self.disconnect(a, "core crashed");
                }
                self.core = None;
                self.core_epoch += 1;
                // Writes in flight either committed before the crash or are lost with it.
                let pending = std::mem::take(&mut self.journal.pending);
                for (_, w) in pending {
                    if self.rng.chance(1, 2) {
                        self.apply_journal(&w);
                    }
                }
            }
            Node::Agent(a) => {
                if self.agents[a].is_none() {
                    return;
                }
                self.fault("crash", format!("agent-{a}"));
                self.disconnect(a, "agent crashed");
                for ea in self.eas_of(a) {
                    self.close_pipe(ea);
                }
                self.agents[a] = None;
                self.agent_epoch[a] += 1;
                // Unsynced ledger writes may or may not have reached the disk.
                let pending = std::mem::take(&mut self.ledger_pending[a]);
                for (_, rec) in pending {
                    if self.rng.chance(1, 2) {
                        self.ledgers[a].insert(rec.command.command_id.clone(), rec);
                    }
                }
            }
            Node::Ea(ea) => {
                if !self.ea_up(ea) {
                    return;
                }
                self.fault("crash", format!("{ea:?}"));
                self.close_pipe(ea);
                match ea {
                    Ea::Master(m) => {
                        self.masters[m] = None;
                        self.master_epoch[m] += 1;
                        let pending = std::mem::take(&mut self.master_pending[m]);
                        for (_, w) in pending {
                            if self.rng.chance(1, 2) {
                                self.apply_master_write(m, w);
                            }
                        }
                        // Terminal events not yet durable are seen again after the restart.
                        let lost: Vec<IntentId> = self.unappended[m]
                            .iter()
                            .filter(|id| {
                                !self.master_files[m].contains_key(*id)
                                    && !self.book.emitted.contains_key(*id)
                            })
                            .cloned()
                            .collect();
                        self.unappended[m].clear();
                        if let Some(first) = lost
                            .iter()
                            .filter_map(|id| self.script[m].iter().position(|i| &i.intent_id == id))
                            .min()
                        {
                            self.script_pos[m] = self.script_pos[m].min(first);
                        }
                    }
                    Ea::Slave(s) => {
                        self.slaves[s] = None;
                        self.slave_epoch[s] += 1;
                        let pending = std::mem::take(&mut self.slave_pending[s]);
                        for (_, w) in pending {
                            if self.rng.chance(1, 2) {
                                self.apply_slave_write(s, w);
                            }
                        }
                    }
                }
            }
        }
        self.at(down, Ev::Restart { node });
    }

    fn restart(&mut self, node: Node) {
        match node {
            Node::Core => {
                if self.core.is_some() {
                    return;
                }
                let durable = self.journal_durable_state();
                self.core = Some(Core::recover(self.core_cfg.clone(), durable, self.now));
                self.drain_core("recover");
                for a in 0..self.links.len() {
                    self.connect(a);
                }
            }
            Node::Agent(a) => {
                if self.agents[a].is_none() {
                    self.start_agent(a);
                }
            }
            Node::Ea(ea) => {
                if !self.ea_up(ea) {
                    self.start_ea(ea);
                }
            }
        }
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

    fn heal(&mut self) {
        self.faults_on = false;
        self.healed_at = Some(self.now);
        self.fault(
            "heal",
            "all faults off; every node restarted, every link repaired".into(),
        );
        self.journal.down_until = None;
        for s in 0..self.slave_slow.len() {
            self.slave_slow[s] = Duration::ZERO;
        }
        if self.core.is_none() {
            self.restart(Node::Core);
        }
        for a in 0..self.agents.len() {
            if self.agents[a].is_none() {
                self.restart(Node::Agent(a));
            }
            self.links[a].partition = Partition::None;
            self.links[a].partition_until = None;
            self.connect(a);
        }
        for m in 0..self.masters.len() {
            if self.masters[m].is_none() {
                self.restart(Node::Ea(Ea::Master(m)));
            }
        }
        for s in 0..self.slaves.len() {
            if self.slaves[s].is_none() {
                self.restart(Node::Ea(Ea::Slave(s)));
            }
        }
        let eas: Vec<Ea> = self
            .pipes
            .iter()
            .filter(|(_, p)| !p.1)
            .map(|(e, _)| *e)
            .collect();
        for ea in eas {
            if self.ea_up(ea) && self.agents[self.agent_of(ea)].is_some() {
                self.open_pipe(ea);
            }
        }
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
                self.drain_core("timer");
            }
        }
        for a in 0..self.agents.len() {
            if let Some(x) = self.agents[a].as_mut() {
                if x.poll_timeout().is_some_and(|t| t <= now) {
                    x.handle_timeout(now);
                    self.drain_agent(a, "timer");
                }
            }
        }
        for m in 0..self.masters.len() {
            if let Some(x) = self.masters[m].as_mut() {
                if x.poll_timeout().is_some_and(|t| t <= now) {
                    x.handle_timeout(now);
                    self.drain_master(m, "timer");
                }
            }
        }
        for s in 0..self.slaves.len() {
            if let Some(x) = self.slaves[s].as_mut() {
                if x.poll_timeout().is_some_and(|t| t <= now) {
                    x.handle_timeout(now);
                    self.drain_slave(s);
                }
            }
        }
    }

    fn tick(&mut self) {
        self.at(TICK, Ev::Tick);
        let now = self.now;
        // Healing of timed faults.
        if self.journal.down_until.is_some_and(|t| t <= now) {
            self.journal.down_until = None;
        }
        for a in 0..self.links.len() {
            if self.links[a].partition_until.is_some_and(|t| t <= now) {
                self.links[a].partition = Partition::None;
                self.links[a].partition_until = None;
                if self.links[a].reconnect_pending || !self.links[a].connected {
                    self.links[a].reconnect_pending = false;
                    self.connect(a);
                }
            }
        }
        self.check_core_invariants();
        if !self.faults_on {
            return;
        }
        let p = self.profile.clone();
        if self.chance(p.journal_outage) && self.journal.down_until.is_none() {
            let d = self.rng.range(10, p.journal_outage_max_ms.max(10));
            self.journal.down_until = Some(now + Duration::from_millis(d));
            self.fault("journal_outage", format!("{d} ms"));
        }
        for a in 0..self.links.len() {
            if self.chance(p.partition) && self.links[a].partition_until.is_none() {
                let d = self.rng.range(10, p.partition_max_ms.max(10));
                self.links[a].partition_until = Some(now + Duration::from_millis(d));
                match self.rng.below(3) {
                    0 => {
                        self.links[a].partition = Partition::Up;
                        self.fault("partition", format!("agent-{a} → core one-way, {d} ms"));
                    }
                    1 => {
                        self.links[a].partition = Partition::Down;
                        self.fault("partition", format!("core → agent-{a} one-way, {d} ms"));
                    }
                    _ => {
                        self.links[a].partition = Partition::Up;
                        self.fault("partition", format!("agent-{a} ↔ core two-way, {d} ms"));
                        self.disconnect(a, "partition");
                    }
                }
            }
        }
        if self.chance(p.crash_core) {
            self.crash(Node::Core);
        }
        for a in 0..self.agents.len() {
            if self.chance(p.crash_agent) {
                self.crash(Node::Agent(a));
            }
        }
        let eas: Vec<Ea> = (0..self.masters.len())
            .map(Ea::Master)
            .chain((0..self.slaves.len()).map(Ea::Slave))
            .collect();
        for ea in eas {
            if self.chance(p.crash_ea) {
                self.crash(Node::Ea(ea));
            } else if self.chance(p.pipe_close) && self.pipes.get(&ea).is_some_and(|x| x.1) {
                self.fault("pipe_close", format!("{ea:?}"));
                self.close_pipe(ea);
                let d = Duration::from_millis(self.rng.range(5, 500));
                self.at(d, Ev::Reopen { ea });
            }
        }
        if self.chance(p.config_change) {
            let core = DeliveryConfig {
                ack_timeout_ms: self.rng.range(100, 3_000) as u32,
                retry_backoff_ms: self.rng.range(10, 500) as u32,
                max_retries: self.rng.range(2, 10) as u32,
                heartbeat_interval_ms: self.rng.range(1_000, 5_000) as u32,
                reconcile_interval_ms: self.rng.range(500, 5_000) as u32,
            };
            let agent = AgentDeliveryConfig {
                ack_timeout_ms: self.rng.range(100, 3_000) as u32,
                retry_backoff_ms: self.rng.range(10, 500) as u32,
                max_retries: self.rng.range(2, 20) as u32,
                heartbeat_interval_ms: self.rng.range(1_000, 5_000) as u32,
            };
            self.fault("config_change", format!("{core:?} {agent:?}"));
            self.core_cfg.delivery = core;
            self.core_cfg.agent_delivery = agent;
            if let Some(c) = self.core.as_mut() {
                c.handle_delivery_config(now, core, agent);
            }
            self.drain_core("config change");
        }
        for m in 0..self.masters.len() {
            if self.chance(p.burst) {
                let n = self.rng.range(5, 40);
                self.fault("burst", format!("master-{m} emits {n} at once"));
                for _ in 0..n {
                    self.emit(m);
                }
            }
        }
    }

    /// Every intent the core receives is answered, journaled, or already being journaled:
    /// explicit backpressure, never a silent drop.
    fn check_answered(&mut self, id: &IntentId) {
        if self.answered.as_ref() == Some(id) {
            return;
        }
        let pending = self.journal.pending.values().any(
            |w| matches!(w, JournalWrite::AcceptIntent { intent, .. } if intent.intent_id == *id),
        ) || self.core.as_ref().is_some_and(|c| c.intent_persisting(id));
        if !pending {
            let v = format!("core neither answered nor journaled intent {id} (silent drop)");
            self.violation(v);
        }
    }

    fn check_core_invariants(&mut self) {
        let Some(core) = self.core.as_ref() else {
            return;
        };
        let mut found = Vec::new();
        let max = core.router_config().queue_depth_max;
        if let Some(d) = core.queue_depths().iter().find(|d| **d > max) {
            found.push(format!(
                "router queue depth {d} above queue_depth_max {max}"
            ));
        }
        let mut live: BTreeMap<(AccountId, TradeId), u32> = BTreeMap::new();
        for v in core.delivery_views() {
            if v.state != "Blocked" {
                *live
                    .entry((v.slave.clone(), v.trade_id.clone()))
                    .or_insert(0) += 1;
            }
        }
        if let Some(((s, t), n)) = live.iter().find(|(_, n)| **n > 1) {
            found.push(format!("{n} live deliveries in the chain of {s}/{t}"));
        }
        for v in found {
            self.violation(v);
        }
    }

    // ---- events -------------------------------------------------------------------------

    fn emit(&mut self, m: usize) {
        let now = self.now;
        let Some(q) = self.masters[m].as_mut() else {
            return;
        };
        if q.is_full() {
            return;
        }
        let Some(intent) = self.script[m].get(self.script_pos[m]).cloned() else {
            return;
        };
        self.script_pos[m] += 1;
        if self.master_files[m].contains_key(&intent.intent_id)
            || self.book.emitted.contains_key(&intent.intent_id)
        {
            return; // durable already: recovery re-queued it
        }
        self.unappended[m].insert(intent.intent_id.clone());
        if q.handle_emit(now, intent).is_err() {
            self.script_pos[m] -= 1;
        }
        self.drain_master(m, "terminal event");
    }

    fn deliver(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::Tick => self.tick(),
            Ev::Emit { master } => {
                self.emit(master);
                if self.script_pos[master] < self.script[master].len() {
                    self.at(self.cfg.emit_every, Ev::Emit { master });
                } else {
                    // Crash recovery may rewind the script: keep looking.
                    self.at(Duration::from_millis(50), Ev::Emit { master });
                }
            }
            Ev::ToCore { agent, link, msg } => {
                if link != self.links[agent].gen || !self.links[agent].connected {
                    return;
                }
                if let AgentToCore::ExecutionResult(r) = &msg {
                    if r.status == BrokerStatus::Filled {
                        self.book
                            .confirmed_at
                            .entry(r.command_id.clone())
                            .or_insert(now);
                    }
                }
                if let AgentToCore::CommandAck(a) = &msg {
                    if a.stage == AckStage::AgentBuffered
                        && a.result == AckResult::Ok
                        && !self.ledgers[agent].contains_key(&a.command_id)
                    {
                        let m = format!(
                            "AGENT_BUFFERED for {} before its ledger write was durable",
                            a.command_id
                        );
                        self.violation(m);
                    }
                }
                let input = describe_to_core(&msg);
                let asked = match &msg {
                    AgentToCore::Intent(i) => Some(i.intent_id.clone()),
                    _ => None,
                };
                if let Some(c) = self.core.as_mut() {
                    c.handle_agent_message(now, &self.agent_ids[agent], msg);
                    self.answered = None;
                    self.drain_core(&input);
                    if let Some(id) = asked {
                        self.check_answered(&id);
                    }
                }
            }
            Ev::FromCore { agent, link, msg } => {
                if link != self.links[agent].gen || !self.links[agent].connected {
                    return;
                }
                let input = describe_from_core(&msg);
                if let Some(x) = self.agents[agent].as_mut() {
                    x.handle_from_core(now, msg);
                    self.drain_agent(agent, &input);
                }
            }
            Ev::FromEa {
                agent,
                pipe,
                ea,
                msg,
            } => {
                if self.pipes.get(&ea).map(|p| p.0) != Some(pipe) {
                    return;
                }
                if let EaToAgent::PipeAck(p) = &msg {
                    if let Ea::Slave(s) = ea {
                        if p.status == PipeStatus::Ok
                            && !self.slave_files[s].contains_key(&p.command_id)
                        {
                            let m = format!(
                                "slave-{s} acked {} OK before its write-ahead was durable",
                                p.command_id
                            );
                            self.violation(m);
                        }
                    }
                }
                let input = format!("pipe {ea:?}: {}", describe_from_ea(&msg));
                let account = self.account_of(ea);
                if let Some(x) = self.agents[agent].as_mut() {
                    x.handle_from_ea(now, account, msg);
                    self.drain_agent(agent, &input);
                }
            }
            Ev::ToEa { ea, pipe, msg } => {
                if self.pipes.get(&ea).map(|p| p.0) != Some(pipe) {
                    return;
                }
                match ea {
                    Ea::Master(m) => {
                        if let AgentToEa::IntentAck(a) = &msg {
                            if a.result == AckResult::Ok
                                && !self.journal.intents.contains_key(&a.intent_id)
                            {
                                let v = format!(
                                    "master-{m} got CORE_ACCEPTED for {} before it was journaled",
                                    a.intent_id
                                );
                                self.violation(v);
                            }
                            if a.error == Some(ErrorCode::BrokerBusy) {
                                self.book.busy_acks += 1;
                            }
                        }
                        let Some(q) = self.masters[m].as_mut() else {
                            return;
                        };
                        match msg {
                            AgentToEa::IntentAck(ack) => q.handle_ack(now, ack),
                            AgentToEa::DeliveryConfig(c) => q.handle_delivery_config(now, c),
                            AgentToEa::Handshake { .. }
                            | AgentToEa::Command(_)
                            | AgentToEa::Cancel(_) => {}
                        }
                        self.drain_master(m, "from agent");
                    }
                    Ea::Slave(s) => {
                        if let Some(x) = self.slaves[s].as_mut() {
                            x.handle_from_agent(now, msg);
                            self.drain_slave(s);
                        }
                    }
                }
            }
            Ev::Journal {
                op,
                epoch,
                commit,
                reply,
            } => {
                if epoch != self.core_epoch {
                    return;
                }
                let Some(w) = self.journal.pending.remove(&op) else {
                    return;
                };
                let down = self.journal.down_until.is_some_and(|t| t > now);
                let result = if down || !commit {
                    JournalResult::Failed { retryable: true }
                } else {
                    let r = self.apply_journal(&w);
                    if reply {
                        JournalResult::Ok(r)
                    } else {
                        JournalResult::Failed { retryable: true }
                    }
                };
                if let Some(c) = self.core.as_mut() {
                    c.handle_journal_result(now, op, result);
                    self.drain_core("journal result");
                }
            }
            Ev::Ledger {
                agent,
                op,
                epoch,
                ok,
            } => {
                if epoch != self.agent_epoch[agent] {
                    return;
                }
                let Some(rec) = self.ledger_pending[agent].remove(&op) else {
                    return;
                };
                let res = if ok {
                    self.ledgers[agent].insert(rec.command.command_id.clone(), rec);
                    LedgerResult::Ok
                } else {
                    LedgerResult::Failed { retryable: true }
                };
                if let Some(x) = self.agents[agent].as_mut() {
                    x.handle_ledger_result(now, op, res);
                    self.drain_agent(agent, "ledger result");
                }
            }
            Ev::MasterDisk {
                master,
                op,
                epoch,
                ok,
            } => {
                if epoch != self.master_epoch[master] {
                    return;
                }
                let Some(w) = self.master_pending[master].remove(&op) else {
                    return;
                };
                let res = if ok {
                    self.apply_master_write(master, w);
                    Ok(())
                } else {
                    Err(PersistError { retryable: true })
                };
                if let Some(q) = self.masters[master].as_mut() {
                    q.handle_persist_result(now, op, res);
                    self.drain_master(master, "disk result");
                }
            }
            Ev::SlaveDisk {
                slave,
                op,
                epoch,
                ok,
            } => {
                if epoch != self.slave_epoch[slave] {
                    return;
                }
                let Some(w) = self.slave_pending[slave].remove(&op) else {
                    return;
                };
                let res = if ok {
                    self.apply_slave_write(slave, w);
                    Ok(())
                } else {
                    Err(slave::PersistError { retryable: true })
                };
                if let Some(x) = self.slaves[slave].as_mut() {
                    x.handle_persist_result(now, op, res);
                    self.drain_slave(slave);
                }
            }
            Ev::Broker {
                slave,
                epoch,
                command_id,
                body,
            } => {
                let outcome = self.broker(slave, &command_id, body.as_ref());
                if epoch != self.slave_epoch[slave] {
                    return; // the order was placed; its answer is lost with the crashed EA
                }
                if let Some(x) = self.slaves[slave].as_mut() {
                    x.handle_broker_result(now, command_id, outcome);
                    self.drain_slave(slave);
                }
            }
            Ev::Restart { node } => {
                self.restart(node);
            }
            Ev::Reconnect { agent } => {
                self.links[agent].reconnect_pending = false;
                self.connect(agent);
            }
            Ev::Reopen { ea } => {
                if self.ea_up(ea)
                    && self.agents[self.agent_of(ea)].is_some()
                    && !self.pipes.get(&ea).is_some_and(|p| p.1)
                {
                    self.open_pipe(ea);
                }
            }
        }
    }

    /// The simulated broker: idempotent by client order id (the command id). `None` is a
    /// query for an order whose fate the EA does not know.
    fn broker(
        &mut self,
        slave: usize,
        command_id: &CommandId,
        body: Option<&CommandBody>,
    ) -> BrokerOutcome {
        let key = (slave, command_id.clone());
        if let Some(o) = self.broker.get(&key) {
            return o.clone();
        }
        let Some(body) = body else {
            return BrokerOutcome::Rejected {
                reason: "no such client order id".into(),
            };
        };
        let outcome = if self.faults_on && self.rng.chance(self.profile.broker_reject, 1_000) {
            self.fault("broker_reject", format!("slave-{slave} {command_id}"));
            BrokerOutcome::Rejected {
                reason: "market closed".into(),
            }
        } else {
            let (ticket, volume) = match body {
                CommandBody::Execute { volume, .. } => {
                    self.next_ticket += 1;
                    (self.next_ticket, *volume)
                }
                CommandBody::Modify { slave_ticket, .. } => (*slave_ticket, 0.0),
                CommandBody::Close {
                    slave_ticket,
                    volume,
                } => (*slave_ticket, *volume),
            };
            BrokerOutcome::Filled {
                ticket,
                price: 1.1,
                volume,
            }
        };
        self.broker.insert(key, outcome.clone());
        outcome
    }

    fn apply_journal(&mut self, w: &JournalWrite) -> JournalReply {
        match w {
            JournalWrite::AcceptIntent { intent, deliveries } => {
                if self.journal.intents.contains_key(&intent.intent_id) {
                    let unfinished = self
                        .journal
                        .deliveries
                        .values()
                        .filter(|d| {
                            d.intent_id == intent.intent_id && d.status == DeliveryStatus::Inflight
                        })
                        .cloned()
                        .collect();
                    return JournalReply::IntentExisted { unfinished };
                }
                self.journal
                    .intents
                    .insert(intent.intent_id.clone(), intent.clone());
                for d in deliveries {
                    self.journal
                        .deliveries
                        .insert(d.command_id.clone(), d.clone());
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
                if let Some(d) = self.journal.deliveries.get_mut(command_id) {
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
                if let Some(d) = self.journal.deliveries.get_mut(command_id) {
                    if d.status == DeliveryStatus::Inflight && *stage > d.stage {
                        d.stage = *stage;
                    }
                }
                JournalReply::Done
            }
            _ => JournalReply::Done,
        }
    }

    fn journal_durable_state(&self) -> CoreDurableState {
        let unfinished = self
            .journal
            .deliveries
            .values()
            .filter(|d| d.status == DeliveryStatus::Inflight)
            .cloned()
            .collect();
        let mut open: BTreeMap<(TradeId, AccountId), i64> = BTreeMap::new();
        let mut ds: Vec<&DeliveryRecord> = self
            .journal
            .deliveries
            .values()
            .filter(|d| d.status == DeliveryStatus::Acked)
            .collect();
        ds.sort_by_key(|d| d.master_seq);
        for d in ds {
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

    fn apply_master_write(&mut self, m: usize, w: MasterWrite) {
        match w {
            MasterWrite::Append(i) => {
                self.unappended[m].remove(&i.intent_id);
                self.book.emitted.entry(i.intent_id.clone()).or_insert((
                    self.now,
                    i.kind,
                    i.trade_id.clone(),
                ));
                self.master_files[m].insert(i.intent_id.clone(), i);
            }
            MasterWrite::Remove(id) => {
                self.master_files[m].remove(&id);
            }
        }
    }

    fn apply_slave_write(&mut self, s: usize, w: SlaveWrite) {
        match w {
            SlaveWrite::Executing(c) => {
                self.slave_files[s]
                    .entry(c.command_id.clone())
                    .or_insert(ExecutedRecord {
                        command: c,
                        result: None,
                    });
            }
            SlaveWrite::Cancelled(c, r) => {
                // An upsert over a write-ahead whose success was never reported.
                self.slave_files[s].insert(
                    c.command_id.clone(),
                    ExecutedRecord {
                        command: c,
                        result: Some(r),
                    },
                );
            }
            SlaveWrite::Executed(id, r) => {
                if let Some(rec) = self.slave_files[s].get_mut(&id) {
                    rec.result = Some(r);
                }
            }
        }
    }

    // ---- outputs ------------------------------------------------------------------------

    fn drain_core(&mut self, input: &str) {
        let mut pending: Option<(Fired, Vec<String>)> = None;
        while let Some(o) = self.core.as_mut().and_then(|c| c.poll()) {
            if let CoreOutput::Fired(f) = o {
                if let Some((pf, outs)) = pending.take() {
                    self.trace_step("core", input, &pf, &outs);
                }
                pending = Some((f, Vec::new()));
                continue;
            }
            if self.trace.is_some() {
                if let Some((_, outs)) = pending.as_mut() {
                    outs.push(describe_core_output(&o));
                }
            }
            match &o {
                CoreOutput::Send {
                    msg: CoreToAgent::IntentAck(a),
                    ..
                } => {
                    self.answered = Some(a.intent_id.clone());
                }
                CoreOutput::Journal {
                    write: JournalWrite::AcceptIntent { intent, .. },
                    ..
                } => {
                    self.answered = Some(intent.intent_id.clone());
                }
                _ => {}
            }
            match o {
                CoreOutput::Send { agent, msg } => {
                    let a = self.agent_ids.iter().position(|x| *x == agent).unwrap_or(0);
                    self.net_send(true, a, None, Some(msg));
                }
                CoreOutput::Journal { op, write } => {
                    if write.is_awaited() {
                        self.journal.pending.insert(op, write);
                        let mut d = self.cfg.journal_latency;
                        if self.chance(self.profile.journal_slow) {
                            d = d + Duration::from_millis(self.rng.range(5, 500));
                        }
                        let reply = !self.chance(self.profile.journal_reply_lost);
                        if !reply {
                            self.fault("journal_reply_lost", format!("op {}", op.0));
                        }
                        let epoch = self.core_epoch;
                        self.at(
                            d,
                            Ev::Journal {
                                op,
                                epoch,
                                commit: true,
                                reply,
                            },
                        );
                    } else if self.journal.down_until.is_none_or(|t| t <= self.now) {
                        self.apply_journal(&write);
                    }
                }
                CoreOutput::Log(CoreLog::AgentOffline { agent }) => {
                    // The runtime closes a stream whose agent went silent.
                    let a = self.agent_ids.iter().position(|x| *x == agent).unwrap_or(0);
                    self.at(Duration::ZERO, Ev::Reconnect { agent: a });
                    if self.links[a].connected {
                        self.links[a].connected = false;
                        self.links[a].gen += 1;
                        let now = self.now;
                        if let Some(x) = self.agents[a].as_mut() {
                            x.handle_core_disconnected(now);
                        }
                        self.drain_agent(a, "stream closed by core");
                    }
                }
                CoreOutput::Log(_) | CoreOutput::Fired(_) => {}
            }
        }
        if let Some((pf, outs)) = pending.take() {
            self.trace_step("core", input, &pf, &outs);
        }
    }

    /// Sends on the agent↔core stream `a`, in the given direction, with network faults.
    fn net_send(
        &mut self,
        to_agent: bool,
        a: usize,
        up: Option<AgentToCore>,
        down: Option<CoreToAgent>,
    ) {
        let link = &self.links[a];
        if !link.connected {
            return;
        }
        let gen = link.gen;
        let blocked = matches!(
            (link.partition, to_agent),
            (Partition::Up, false) | (Partition::Down, true)
        );
        if blocked {
            return;
        }
        if self.chance(self.profile.net_drop) {
            self.fault(
                "net_drop",
                if to_agent {
                    format!("core → agent-{a}")
                } else {
                    format!("agent-{a} → core")
                },
            );
            return;
        }
        let copies = if self.chance(self.profile.net_duplicate) {
            self.fault("net_duplicate", format!("agent-{a} link"));
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut d = self.cfg.net_latency;
            if self.chance(self.profile.net_delay) {
                d = d + Duration::from_micros(
                    self.rng.range(1, self.profile.net_delay_max_us.max(1)),
                );
            }
            match (&up, &down) {
                (Some(m), _) => self.at(
                    d,
                    Ev::ToCore {
                        agent: a,
                        link: gen,
                        msg: m.clone(),
                    },
                ),
                (_, Some(m)) => self.at(
                    d,
                    Ev::FromCore {
                        agent: a,
                        link: gen,
                        msg: m.clone(),
                    },
                ),
                _ => {}
            }
        }
    }

    fn drain_agent(&mut self, a: usize, input: &str) {
        let mut pending: Option<(Fired, Vec<String>)> = None;
        let node = format!("agent-{a}");
        while let Some(o) = self.agents[a].as_mut().and_then(|x| x.poll()) {
            if let AgentOutput::Fired(f) = o {
                if let Some((pf, outs)) = pending.take() {
                    self.trace_step(&node, input, &pf, &outs);
                }
                pending = Some((f, Vec::new()));
                continue;
            }
            if self.trace.is_some() {
                if let Some((_, outs)) = pending.as_mut() {
                    outs.push(describe_agent_output(&o));
                }
            }
            match o {
                AgentOutput::ToCore(msg) => self.net_send(false, a, Some(msg), None),
                AgentOutput::ToEa { account, msg } => {
                    let ea = if let Some(m) =
                        self.master_accounts.iter().position(|x| *x == account)
                    {
                        Ea::Master(m)
                    } else if let Some(s) = self.slave_accounts.iter().position(|x| *x == account) {
                        Ea::Slave(s)
                    } else {
                        continue;
                    };
                    let Some((pipe, open)) = self.pipes.get(&ea).copied() else {
                        continue;
                    };
                    if !open {
                        continue;
                    }
                    if let (Ea::Slave(_), AgentToEa::Command(c)) = (ea, &msg) {
                        if self.chance(self.profile.pipe_write_fail) {
                            self.fault("pipe_write_fail", format!("{ea:?} {}", c.command_id));
                            let now = self.now;
                            let id = c.command_id.clone();
                            if let Some(x) = self.agents[a].as_mut() {
                                x.handle_pipe_write_failed(now, account, id);
                            }
                            continue;
                        }
                    }
                    let d = match ea {
                        Ea::Slave(s) => Duration::from_micros(20) + self.slave_slow[s],
                        Ea::Master(_) => Duration::from_micros(20),
                    };
                    self.at(d, Ev::ToEa { ea, pipe, msg });
                }
                AgentOutput::PersistLedger { op, record } => {
                    self.ledger_pending[a].insert(op, record);
                    let ok = !self.chance(self.profile.ledger_fail);
                    let epoch = self.agent_epoch[a];
                    self.at(
                        self.cfg.disk_latency,
                        Ev::Ledger {
                            agent: a,
                            op,
                            epoch,
                            ok,
                        },
                    );
                }
                AgentOutput::DeleteLedger { command_id } => {
                    self.ledgers[a].remove(&command_id);
                }
                AgentOutput::Fired(_) => {}
            }
        }
        if let Some((pf, outs)) = pending.take() {
            self.trace_step(&node, input, &pf, &outs);
        }
    }

    fn drain_master(&mut self, m: usize, input: &str) {
        let mut pending: Option<(Fired, Vec<String>)> = None;
        let node = format!("master-{m}");
        while let Some(o) = self.masters[m].as_mut().and_then(|x| x.poll()) {
            if let master::Output::Fired(f) = o {
                if let Some((pf, outs)) = pending.take() {
                    self.trace_step(&node, input, &pf, &outs);
                }
                pending = Some((f, Vec::new()));
                continue;
            }
            if self.trace.is_some() {
                if let Some((_, outs)) = pending.as_mut() {
                    outs.push(format!("{o:?}").chars().take(160).collect());
                }
            }
            let epoch = self.master_epoch[m];
            match o {
                master::Output::PersistAppend { op, intent } => {
                    self.master_pending[m].insert(op, MasterWrite::Append(intent));
                    let ok = !self.chance(self.profile.disk_fail);
                    self.at(
                        self.cfg.disk_latency,
                        Ev::MasterDisk {
                            master: m,
                            op,
                            epoch,
                            ok,
                        },
                    );
                }
                master::Output::PersistRemove { op, intent_id, .. } => {
                    self.master_pending[m].insert(op, MasterWrite::Remove(intent_id));
                    let ok = !self.chance(self.profile.disk_fail);
                    self.at(
                        self.cfg.disk_latency,
                        Ev::MasterDisk {
                            master: m,
                            op,
                            epoch,
                            ok,
                        },
                    );
                }
                master::Output::ToAgent(msg) => {
                    let ea = Ea::Master(m);
                    if let Some((pipe, true)) = self.pipes.get(&ea).copied() {
                        self.at(
                            Duration::from_micros(20),
                            Ev::FromEa {
                                agent: 0,
                                pipe,
                                ea,
                                msg,
                            },
                        );
                    }
                }
                master::Output::GaveUp { intent_id, .. } => {
                    self.book.gave_up.insert(intent_id);
                }
                master::Output::Failed {
                    intent_id, error, ..
                } => {
                    self.book.refused.insert(intent_id, error);
                }
                master::Output::Fired(_) => {}
            }
        }
        if let Some((pf, outs)) = pending.take() {
            self.trace_step(&node, input, &pf, &outs);
        }
    }

    fn drain_slave(&mut self, s: usize) {
        let mut pending: Option<(Fired, Vec<String>)> = None;
        let node = format!("slave-{s}");
        while let Some(o) = self.slaves[s].as_mut().and_then(|x| x.poll()) {
            if let slave::Output::Fired(f) = o {
                if let Some((pf, outs)) = pending.take() {
                    self.trace_step(&node, "", &pf, &outs);
                }
                pending = Some((f, Vec::new()));
                continue;
            }
            if self.trace.is_some() {
                if let Some((_, outs)) = pending.as_mut() {
                    outs.push(format!("{o:?}").chars().take(160).collect());
                }
            }
            let epoch = self.slave_epoch[s];
            match o {
                slave::Output::ToAgent(msg) => {
                    let ea = Ea::Slave(s);
                    if let Some((pipe, true)) = self.pipes.get(&ea).copied() {
                        let agent = self.slave_agent[s];
                        self.at(
                            Duration::from_micros(20),
                            Ev::FromEa {
                                agent,
                                pipe,
                                ea,
                                msg,
                            },
                        );
                    }
                }
                slave::Output::PersistExecuting { op, command } => {
                    self.slave_pending[s].insert(op, SlaveWrite::Executing(command));
                    let ok = !self.chance(self.profile.disk_fail);
                    self.at(
                        self.cfg.disk_latency,
                        Ev::SlaveDisk {
                            slave: s,
                            op,
                            epoch,
                            ok,
                        },
                    );
                }
                slave::Output::PersistExecuted {
                    op,
                    command_id,
                    result,
                } => {
                    self.slave_pending[s].insert(op, SlaveWrite::Executed(command_id, result));
                    let ok = !self.chance(self.profile.disk_fail);
                    self.at(
                        self.cfg.disk_latency,
                        Ev::SlaveDisk {
                            slave: s,
                            op,
                            epoch,
                            ok,
                        },
                    );
                }
                slave::Output::PlaceOrder { command_id, body } => {
                    self.on_place_order(s, &command_id);
                    // The broker takes the order the moment it is sent; only its answer
                    // travels back with latency (and is lost if the EA crashes meanwhile).
                    self.broker(s, &command_id, Some(&body));
                    let d = self.cfg.broker_latency + self.slave_slow[s];
                    self.at(
                        d,
                        Ev::Broker {
                            slave: s,
                            epoch,
                            command_id,
                            body: Some(body),
                        },
                    );
                }
                slave::Output::PersistCancelled {
                    op,
                    command,
                    result,
                } => {
                    self.slave_pending[s].insert(op, SlaveWrite::Cancelled(command, result));
                    let ok = !self.chance(self.profile.disk_fail);
                    self.at(
                        self.cfg.disk_latency,
                        Ev::SlaveDisk {
                            slave: s,
                            op,
                            epoch,
                            ok,
                        },
                    );
                }
                slave::Output::QueryOrder { command_id } => {
                    self.at(
                        self.cfg.broker_latency,
                        Ev::Broker {
                            slave: s,
                            epoch,
                            command_id,
                            body: None,
                        },
                    );
                }
                slave::Output::Fired(_) => {}
            }
        }
        if let Some((pf, outs)) = pending.take() {
            self.trace_step(&node, "", &pf, &outs);
        }
    }

    /// Safety at the moment a slave sends an order to its broker.
    fn on_place_order(&mut self, s: usize, command_id: &CommandId) {
        let n = self.book.placed.entry((s, command_id.clone())).or_insert(0);
        *n += 1;
        if *n > 1 {
            let v = format!("slave-{s} placed {command_id} twice");
            self.violation(v);
        }
        let intent = IntentId::new(command_id.as_str().split('@').next().unwrap_or(""));
        let Some(i) = self.journal.intents.get(&intent).cloned() else {
            let v = format!("slave-{s} executed {command_id} for an intent never journaled");
            self.violation(v);
            return;
        };
        let order = self.book.order.entry((s, i.trade_id.clone())).or_default();
        if order.last().is_some_and(|last| *last >= i.master_seq) {
            let v = format!(
                "slave-{s} got {command_id} (seq {}) after seq {:?} of trade {}",
                i.master_seq, order, i.trade_id
            );
            order.push(i.master_seq);
            self.violation(v);
            return;
        }
        order.push(i.master_seq);
    }

    // ---- views for the report -----------------------------------------------------------

    pub fn master_accounts(&self) -> &[AccountId] {
        &self.master_accounts
    }

    pub fn slave_accounts(&self) -> &[AccountId] {
        &self.slave_accounts
    }

    /// The slaves subscribed to `master`.
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
        s
    }
}

fn build_script(m: usize, trades: usize, master: &AccountId) -> Vec<TradeIntent> {
    let mut out = Vec::new();
    let total = trades * 4;
    let mut pos = 0;
    while out.len() < total {
        // Interleave 4 trades at a time: t0.open t1.open t2.open t3.open t0.modify …
        let group = pos / 16;
        let within = pos % 16;
        pos += 1;
        let trade = group * 4 + within % 4;
        let step = within / 4;
        if trade >= trades {
            continue;
        }
        let seq = out.len() as u64;
        out.push(TradeIntent {
            intent_id: IntentId::new(format!("m{m}-i{seq}")),
            // Odd steps spell the trade id in lower case: one trade, two spellings.
            trade_id: if step % 2 == 1 {
                TradeId::new(trade_id(m, trade).as_str().to_lowercase())
            } else {
                trade_id(m, trade)
            },
            master: master.clone(),
            kind: KINDS[step],
            symbol: Symbol::new(["EURUSD", "GBPUSD", "USDJPY"][trade % 3]),
            side: if trade.is_multiple_of(2) {
                Side::Buy
            } else {
                Side::Sell
            },
            volume: if KINDS[step] == IntentKind::PartialClose {
                0.5
            } else {
                1.0
            },
            price: 1.1,
            stop_loss: 1.0 + step as f64 * 0.01,
            take_profit: 1.3,
            master_ticket: trade as i64,
            master_seq: seq,
            emitted_at_ms: 0,
        });
    }
    out
}

fn subject(f: &Fired) -> String {
    use echo_statemachine::spec::Subject;
    match &f.subject {
        Subject::None => String::new(),
        Subject::Intent(i) => i.to_string(),
        Subject::Command(c) => c.to_string(),
        Subject::Agent(a) => a.to_string(),
        Subject::Account(a) => a.to_string(),
        Subject::Symbol(s) => s.to_string(),
        Subject::Worker(w) => format!("worker-{w}"),
    }
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn describe_to_core(m: &AgentToCore) -> String {
    match m {
        AgentToCore::Hello(h) => format!("AgentHello {}", h.agent_id),
        AgentToCore::Intent(i) => format!(
            "TradeIntent {} trade {} {:?}",
            i.intent_id, i.trade_id, i.kind
        ),
        AgentToCore::CommandAck(a) => format!(
            "CommandAck {} {} {:?}",
            a.command_id,
            a.stage.name(),
            a.result
        ),
        AgentToCore::ExecutionResult(r) => format!(
            "ExecutionResult {} {:?} ticket {}",
            r.command_id, r.status, r.slave_ticket
        ),
        AgentToCore::Heartbeat => "Heartbeat".into(),
    }
}

fn describe_from_core(m: &CoreToAgent) -> String {
    match m {
        CoreToAgent::Hello(h) => format!("CoreHello accepted={}", h.accepted),
        CoreToAgent::IntentAck(a) => format!(
            "TradeIntentAck {} {:?} {:?}",
            a.intent_id, a.result, a.error
        ),
        CoreToAgent::Command(c) => format!("Command {} trade {}", c.command_id, c.trade_id),
        CoreToAgent::Heartbeat(h) => format!("DeliveryHeartbeat v{}", h.config_version),
        CoreToAgent::DeliveryReport(a) => format!("DeliveryReport {} {:?}", a.command_id, a.result),
        CoreToAgent::Cancel(c) => format!("Cancel {} trade {}", c.command_id, c.trade_id),
    }
}

fn describe_from_ea(m: &EaToAgent) -> String {
    match m {
        EaToAgent::Intent(i) => format!(
            "TradeIntent {} trade {} {:?}",
            i.intent_id, i.trade_id, i.kind
        ),
        EaToAgent::PipeAck(p) => format!("PipeDeliveryAck {} {:?}", p.command_id, p.status),
        EaToAgent::Execution(r) => format!("ExecutionResult {} {:?}", r.command_id, r.status),
    }
}

fn describe_core_output(o: &CoreOutput) -> String {
    match o {
        CoreOutput::Send { agent, msg } => format!("→ {agent}: {}", describe_from_core(msg)),
        CoreOutput::Journal { op, write } => {
            format!("journal op {}: {}", op.0, describe_write(write))
        }
        CoreOutput::Log(l) => format!("log {l:?}"),
        CoreOutput::Fired(f) => f.id().to_string(),
    }
}

fn describe_write(w: &JournalWrite) -> String {
    match w {
        JournalWrite::AcceptIntent { intent, deliveries } => {
            format!(
                "AcceptIntent {} ({} deliveries)",
                intent.intent_id,
                deliveries.len()
            )
        }
        JournalWrite::FinishDelivery {
            command_id,
            status,
            reason,
            ..
        } => {
            format!("FinishDelivery {command_id} {status:?} {reason:?}")
        }
        JournalWrite::UpdateStage {
            command_id, stage, ..
        } => format!("UpdateStage {command_id} {}", stage.name()),
        JournalWrite::RecordRetry {
            command_id,
            attempt,
            ..
        } => format!("RecordRetry {command_id} #{attempt}"),
        JournalWrite::RecordRejection {
            intent_id, worker, ..
        } => format!("RecordRejection {intent_id} worker {worker}"),
        JournalWrite::Probe => "Probe".into(),
    }
}

fn describe_agent_output(o: &AgentOutput) -> String {
    match o {
        AgentOutput::ToCore(m) => format!("→ core: {}", describe_to_core(m)),
        AgentOutput::ToEa { account, msg } => format!(
            "→ pipe {account}: {}",
            format!("{msg:?}").chars().take(120).collect::<String>()
        ),
        AgentOutput::PersistLedger { op, record } => format!(
            "ledger op {}: {} {:?}",
            op.0, record.command.command_id, record.state
        ),
        AgentOutput::DeleteLedger { command_id } => format!("ledger delete {command_id}"),
        AgentOutput::Fired(f) => f.id().to_string(),
    }
}
