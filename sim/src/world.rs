//! One deterministic world of real Echo machines: a core, agents, master and slave EAs, their
//! storage and a broker, stepped by an event queue in simulated time.
//!
//! This module owns the wiring — which output of which machine becomes which input of which
//! other, after what delay — and the bookkeeping a checker needs (what the masters emitted,
//! what each slave executed). It is the base the fault-injecting simulator builds on; here the
//! network and the storage are perfect. It must never read a wall clock or use unseeded
//! randomness: the same parameters give the same run, event for event.

use std::collections::{BTreeMap, BTreeSet};

use echo_statemachine::agent::{
    AgentLimits, AgentOutput, DeliveryManager, LedgerOpId, LedgerResult,
};
use echo_statemachine::config::{AgentDeliveryConfig, DeliveryConfig, RouterConfig, Subscription};
use echo_statemachine::core::{
    Core, CoreConfig, CoreOutput, DeliveryStatus, JournalReply, JournalResult, JournalWrite, OpId,
};
use echo_statemachine::ea::master::{self, IntentQueue, IntentQueueConfig};
use echo_statemachine::ea::slave::{self, BrokerOutcome, SlaveConfig, SlaveExecutor};
use echo_statemachine::ids::{AccountId, AgentId, CommandId, IntentId, Symbol, TradeId};
use echo_statemachine::msg::*;
use echo_statemachine::time::{Duration, Instant};

/// The shape of a world.
#[derive(Clone, Debug)]
pub struct WorldConfig {
    pub masters: usize,
    pub slaves_per_master: usize,
    pub trades: usize,
    /// Simulated time between two trade events of one master.
    pub emit_every: Duration,
    pub net_latency: Duration,
    pub journal_latency: Duration,
    pub disk_latency: Duration,
    pub broker_latency: Duration,
}

impl Default for WorldConfig {
    fn default() -> Self {
        WorldConfig {
            masters: 1,
            slaves_per_master: 5,
            trades: 100,
            emit_every: Duration::from_millis(2),
            net_latency: Duration::from_micros(200),
            journal_latency: Duration::from_micros(1_500),
            disk_latency: Duration::from_micros(150),
            broker_latency: Duration::from_millis(3),
        }
    }
}

#[derive(Clone, Debug)]
enum Ev {
    /// A master's terminal saw the next event of its script.
    Emit {
        master: usize,
    },
    ToCore {
        agent: AgentId,
        msg: AgentToCore,
    },
    FromCore {
        agent: AgentId,
        msg: CoreToAgent,
    },
    FromEa {
        agent: AgentId,
        account: AccountId,
        msg: EaToAgent,
    },
    ToMaster {
        master: usize,
        msg: AgentToEa,
    },
    ToSlave {
        slave: usize,
        msg: AgentToEa,
    },
    Journal {
        op: OpId,
    },
    Ledger {
        agent: usize,
        op: LedgerOpId,
    },
    MasterDisk {
        master: usize,
        op: master::OpId,
    },
    SlaveDisk {
        slave: usize,
        op: slave::OpId,
    },
    Broker {
        slave: usize,
        command_id: CommandId,
        body: CommandBody,
    },
}

/// Per-run results, for the report and the checkers.
#[derive(Clone, Debug, Default)]
pub struct Ledgerbook {
    /// Intent id → (emitted at, kind, trade).
    pub emitted: BTreeMap<IntentId, (Instant, IntentKind, TradeId)>,
    /// (slave, command) → executions at the broker (must be 1).
    pub executions: BTreeMap<(AccountId, CommandId), u32>,
    /// Command → time its ExecutionResult reached the core (EA_CONFIRMED).
    pub confirmed_at: BTreeMap<CommandId, Instant>,
    /// Command → final failure reason.
    pub failed: BTreeMap<CommandId, ErrorCode>,
    /// Per (slave, trade): the master_seq of each command in execution order.
    pub order: BTreeMap<(AccountId, TradeId), Vec<u64>>,
    pub gave_up: u64,
}

pub struct World {
    pub cfg: WorldConfig,
    pub now: Instant,
    seq: u64,
    queue: BTreeMap<(Instant, u64), Ev>,
    pub core: Core,
    pub agents: Vec<DeliveryManager>,
    agent_ids: Vec<AgentId>,
    pub masters: Vec<IntentQueue>,
    master_accounts: Vec<AccountId>,
    master_agent: Vec<usize>,
    pub slaves: Vec<SlaveExecutor>,
    slave_accounts: Vec<AccountId>,
    slave_agent: Vec<usize>,
    journal_pending: BTreeMap<OpId, JournalWrite>,
    journal_intents: BTreeSet<IntentId>,
    journal_finished: BTreeMap<CommandId, DeliveryStatus>,
    ledger_pending: BTreeMap<(usize, LedgerOpId), ()>,
    broker_tickets: BTreeMap<(usize, CommandId), i64>,
    next_ticket: i64,
    script_pos: Vec<usize>,
    seq_of: BTreeMap<IntentId, u64>,
    pub book: Ledgerbook,
    pub steps: u64,
}

const KINDS: [IntentKind; 4] = [
    IntentKind::Open,
    IntentKind::Modify,
    IntentKind::PartialClose,
    IntentKind::Close,
];

impl World {
    /// Builds the world: agent 0 serves every master, the slaves are spread over two agents.
    pub fn new(cfg: WorldConfig) -> Self {
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
        let delivery = DeliveryConfig {
            heartbeat_interval_ms: 1_000,
            ..DeliveryConfig::default()
        };
        let core = Core::new(CoreConfig {
            router: RouterConfig::default(),
            delivery,
            agent_delivery: AgentDeliveryConfig::default(),
            subscriptions: subs,
            recent_intents: 4_096,
        });
        let mut agents = Vec::new();
        for (a, id) in agent_ids.iter().enumerate() {
            let mut accounts: Vec<(AccountId, Role)> = Vec::new();
            if a == 0 {
                accounts.extend(masters.iter().map(|m| (m.clone(), Role::Master)));
            }
            for (s, acc) in slaves.iter().enumerate() {
                if slave_agent[s] == a {
                    accounts.push((acc.clone(), Role::Slave));
                }
            }
            agents.push(DeliveryManager::new(
                id.clone(),
                accounts,
                AgentDeliveryConfig::default(),
                AgentLimits::default(),
            ));
        }
        let master_qs = masters
            .iter()
            .map(|_| IntentQueue::new(IntentQueueConfig::default()))
            .collect();
        let slave_es = slaves
            .iter()
            .map(|s| SlaveExecutor::new(SlaveConfig::new(s.as_str())))
            .collect();
        let mut w = World {
            now: Instant::from_millis(1),
            seq: 0,
            queue: BTreeMap::new(),
            core,
            agents,
            agent_ids,
            masters: master_qs,
            master_agent: vec![0; masters.len()],
            master_accounts: masters,
            slaves: slave_es,
            slave_accounts: slaves,
            slave_agent,
            journal_pending: BTreeMap::new(),
            journal_intents: BTreeSet::new(),
            journal_finished: BTreeMap::new(),
            ledger_pending: BTreeMap::new(),
            broker_tickets: BTreeMap::new(),
            next_ticket: 1_000,
            script_pos: vec![0; cfg.masters],
            seq_of: BTreeMap::new(),
            book: Ledgerbook::default(),
            steps: 0,
            cfg,
        };
        w.boot();
        w
    }

    fn at(&mut self, delay: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.insert((self.now + delay, self.seq), ev);
    }

    fn boot(&mut self) {
        let now = self.now;
        for a in 0..self.agents.len() {
            self.agents[a].handle_core_connected(now);
            let accounts: Vec<AccountId> = self
                .slave_accounts
                .iter()
                .enumerate()
                .filter(|(s, _)| self.slave_agent[*s] == a)
                .map(|(_, acc)| acc.clone())
                .chain(if a == 0 {
                    self.master_accounts.clone()
                } else {
                    Vec::new()
                })
                .collect();
            for acc in accounts {
                self.agents[a].handle_pipe_connected(now, acc);
            }
            self.drain_agent(a);
        }
        for m in 0..self.masters.len() {
            self.masters[m].handle_pipe_connected(now);
            self.drain_master(m);
            let offset = Duration::from_micros(37 * m as u64);
            self.at(self.cfg.emit_every + offset, Ev::Emit { master: m });
        }
    }

    /// The trade script of master `m`: every trade opens, is modified, partially closed and
    /// closed; trades interleave so several are open at once.
    fn next_intent(&mut self, m: usize) -> Option<TradeIntent> {
        let pos = self.script_pos[m];
        let total = self.cfg.trades * 4;
        if pos >= total {
            return None;
        }
        self.script_pos[m] += 1;
        // Interleave 4 trades at a time: t0.open t1.open t2.open t3.open t0.modify …
        let group = pos / 16;
        let within = pos % 16;
        let trade = group * 4 + within % 4;
        let step = within / 4;
        if trade >= self.cfg.trades {
            return self.next_intent(m);
        }
        let trade_id = TradeId::new(format!("M{m}-T{trade}"));
        let intent_id = IntentId::new(format!("m{m}-i{pos}"));
        let seq = pos as u64;
        self.seq_of.insert(intent_id.clone(), seq);
        Some(TradeIntent {
            intent_id,
            trade_id,
            master: self.master_accounts[m].clone(),
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
            emitted_at_ms: self.now.as_millis() as i64,
        })
    }

    /// Runs until nothing is left to do or `deadline` passes. Returns true if quiescent.
    pub fn run_until(&mut self, deadline: Instant) -> bool {
        loop {
            let next_ev = self.queue.keys().next().map(|(t, _)| *t);
            let next_timer = self.next_timer();
            let next = match (next_ev, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => return true,
            };
            if next > deadline {
                return self.is_quiescent();
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
            if self.is_quiescent() {
                return true;
            }
        }
    }

    /// Every master finished its script and every emitted intent is settled at every slave.
    pub fn is_quiescent(&self) -> bool {
        self.script_pos.iter().all(|p| *p >= self.cfg.trades * 4)
            && self.masters.iter().all(|q| q.metrics().depth == 0)
            && self.core.open_deliveries() == 0
            && self.core.open_intents() == 0
            && !self.queue.values().any(|e| {
                !matches!(
                    e,
                    Ev::FromCore {
                        msg: CoreToAgent::Heartbeat(_),
                        ..
                    } | Ev::ToCore {
                        msg: AgentToCore::Heartbeat,
                        ..
                    }
                )
            })
    }

    fn next_timer(&self) -> Option<Instant> {
        let mut t = self.core.poll_timeout();
        let mut take = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |c| c.min(x)));
            }
        };
        for a in &self.agents {
            take(a.poll_timeout());
        }
        for m in &self.masters {
            take(m.poll_timeout());
        }
        for s in &self.slaves {
            take(s.poll_timeout());
        }
        t
    }

    fn fire_timers(&mut self) {
        let now = self.now;
        if self.core.poll_timeout().is_some_and(|t| t <= now) {
            self.core.handle_timeout(now);
            self.drain_core();
        }
        for a in 0..self.agents.len() {
            if self.agents[a].poll_timeout().is_some_and(|t| t <= now) {
                self.agents[a].handle_timeout(now);
                self.drain_agent(a);
            }
        }
        for m in 0..self.masters.len() {
            if self.masters[m].poll_timeout().is_some_and(|t| t <= now) {
                self.masters[m].handle_timeout(now);
                self.drain_master(m);
            }
        }
        for s in 0..self.slaves.len() {
            if self.slaves[s].poll_timeout().is_some_and(|t| t <= now) {
                self.slaves[s].handle_timeout(now);
                self.drain_slave(s);
            }
        }
    }

    fn deliver(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::Emit { master } => {
                if self.masters[master].is_full() {
                    self.at(self.cfg.emit_every, Ev::Emit { master });
                    return;
                }
                if let Some(i) = self.next_intent(master) {
                    self.book
                        .emitted
                        .insert(i.intent_id.clone(), (now, i.kind, i.trade_id.clone()));
                    // The queue refuses only when full (checked above) or on a duplicate id,
                    // which the script never produces.
                    let _ = self.masters[master].handle_emit(now, i);
                    self.drain_master(master);
                    self.at(self.cfg.emit_every, Ev::Emit { master });
                }
            }
            Ev::ToCore { agent, msg } => {
                if let AgentToCore::ExecutionResult(r) = &msg {
                    self.book
                        .confirmed_at
                        .entry(r.command_id.clone())
                        .or_insert(now);
                }
                self.core.handle_agent_message(now, &agent, msg);
                self.drain_core();
            }
            Ev::FromCore { agent, msg } => {
                let a = self.agent_index(&agent);
                self.agents[a].handle_from_core(now, msg);
                self.drain_agent(a);
            }
            Ev::FromEa {
                agent,
                account,
                msg,
            } => {
                let a = self.agent_index(&agent);
                self.agents[a].handle_from_ea(now, account, msg);
                self.drain_agent(a);
            }
            Ev::ToMaster { master, msg } => {
                match msg {
                    AgentToEa::IntentAck(ack) => self.masters[master].handle_ack(now, ack),
                    AgentToEa::DeliveryConfig(c) => {
                        self.masters[master].handle_delivery_config(now, c)
                    }
                    AgentToEa::Handshake { .. } | AgentToEa::Command(_) => {}
                }
                self.drain_master(master);
            }
            Ev::ToSlave { slave, msg } => {
                self.slaves[slave].handle_from_agent(now, msg);
                self.drain_slave(slave);
            }
            Ev::Journal { op } => {
                let Some(w) = self.journal_pending.remove(&op) else {
                    return;
                };
                let reply = self.apply_journal(&w);
                self.core
                    .handle_journal_result(now, op, JournalResult::Ok(reply));
                self.drain_core();
            }
            Ev::Ledger { agent, op } => {
                self.ledger_pending.remove(&(agent, op));
                self.agents[agent].handle_ledger_result(now, op, LedgerResult::Ok);
                self.drain_agent(agent);
            }
            Ev::MasterDisk { master, op } => {
                self.masters[master].handle_persist_result(now, op, Ok(()));
                self.drain_master(master);
            }
            Ev::SlaveDisk { slave, op } => {
                self.slaves[slave].handle_persist_result(now, op, Ok(()));
                self.drain_slave(slave);
            }
            Ev::Broker {
                slave,
                command_id,
                body,
            } => {
                let outcome = self.broker(slave, &command_id, &body);
                self.slaves[slave].handle_broker_result(now, command_id, outcome);
                self.drain_slave(slave);
            }
        }
    }

    /// The simulated broker: idempotent by client order id (the command id).
    fn broker(
        &mut self,
        slave: usize,
        command_id: &CommandId,
        body: &CommandBody,
    ) -> BrokerOutcome {
        let key = (slave, command_id.clone());
        let n = self
            .book
            .executions
            .entry((self.slave_accounts[slave].clone(), command_id.clone()))
            .or_insert(0);
        *n += 1;
        let ticket = match body {
            CommandBody::Execute { .. } => {
                if let Some(t) = self.broker_tickets.get(&key) {
                    *t
                } else {
                    self.next_ticket += 1;
                    self.broker_tickets.insert(key, self.next_ticket);
                    self.next_ticket
                }
            }
            CommandBody::Modify { slave_ticket, .. } | CommandBody::Close { slave_ticket, .. } => {
                *slave_ticket
            }
        };
        let intent = command_id.as_str().split('@').next().unwrap_or("");
        let seq = self
            .seq_of
            .get(&IntentId::new(intent))
            .copied()
            .unwrap_or(0);
        let trade = self
            .book
            .emitted
            .get(&IntentId::new(intent))
            .map(|(_, _, t)| t.clone())
            .unwrap_or_else(|| TradeId::new(""));
        self.book
            .order
            .entry((self.slave_accounts[slave].clone(), trade))
            .or_default()
            .push(seq);
        BrokerOutcome::Filled {
            ticket,
            price: 1.1,
            volume: 1.0,
        }
    }

    fn apply_journal(&mut self, w: &JournalWrite) -> JournalReply {
        match w {
            JournalWrite::AcceptIntent { intent, .. } => {
                if !self.journal_intents.insert(intent.intent_id.clone()) {
                    return JournalReply::IntentExisted {
                        unfinished: Vec::new(),
                    };
                }
                JournalReply::Done
            }
            JournalWrite::FinishDelivery {
                command_id,
                status,
                reason,
                ..
            } => {
                self.journal_finished
                    .entry(command_id.clone())
                    .or_insert(*status);
                if *status == DeliveryStatus::Failed {
                    self.book
                        .failed
                        .entry(command_id.clone())
                        .or_insert(reason.unwrap_or(ErrorCode::Internal));
                }
                JournalReply::Done
            }
            _ => JournalReply::Done,
        }
    }

    fn agent_index(&self, id: &AgentId) -> usize {
        self.agent_ids.iter().position(|a| a == id).unwrap_or(0)
    }

    fn drain_core(&mut self) {
        while let Some(o) = self.core.poll() {
            match o {
                CoreOutput::Send { agent, msg } => {
                    self.at(self.cfg.net_latency, Ev::FromCore { agent, msg })
                }
                CoreOutput::Journal { op, write } => {
                    if write.is_awaited() {
                        self.journal_pending.insert(op, write);
                        self.at(self.cfg.journal_latency, Ev::Journal { op });
                    } else {
                        self.apply_journal(&write);
                    }
                }
                CoreOutput::Fired(_) | CoreOutput::Log(_) => {}
            }
        }
    }

    fn drain_agent(&mut self, a: usize) {
        let agent = self.agent_ids[a].clone();
        while let Some(o) = self.agents[a].poll() {
            match o {
                AgentOutput::ToCore(msg) => self.at(
                    self.cfg.net_latency,
                    Ev::ToCore {
                        agent: agent.clone(),
                        msg,
                    },
                ),
                AgentOutput::ToEa { account, msg } => {
                    if let Some(m) = self.master_accounts.iter().position(|x| *x == account) {
                        self.at(Duration::from_micros(20), Ev::ToMaster { master: m, msg });
                    } else if let Some(s) = self.slave_accounts.iter().position(|x| *x == account) {
                        self.at(Duration::from_micros(20), Ev::ToSlave { slave: s, msg });
                    }
                }
                AgentOutput::PersistLedger { op, .. } => {
                    self.ledger_pending.insert((a, op), ());
                    self.at(self.cfg.disk_latency, Ev::Ledger { agent: a, op });
                }
                AgentOutput::DeleteLedger { .. } | AgentOutput::Fired(_) => {}
            }
        }
    }

    fn drain_master(&mut self, m: usize) {
        let agent = self.agent_ids[self.master_agent[m]].clone();
        while let Some(o) = self.masters[m].poll() {
            match o {
                master::Output::PersistAppend { op, .. }
                | master::Output::PersistRemove { op, .. } => {
                    self.at(self.cfg.disk_latency, Ev::MasterDisk { master: m, op })
                }
                master::Output::ToAgent(msg) => self.at(
                    Duration::from_micros(20),
                    Ev::FromEa {
                        agent: agent.clone(),
                        account: self.master_accounts[m].clone(),
                        msg,
                    },
                ),
                master::Output::GaveUp { .. } => self.book.gave_up += 1,
                master::Output::Failed { .. } | master::Output::Fired(_) => {}
            }
        }
    }

    fn drain_slave(&mut self, s: usize) {
        let agent = self.agent_ids[self.slave_agent[s]].clone();
        while let Some(o) = self.slaves[s].poll() {
            match o {
                slave::Output::ToAgent(msg) => self.at(
                    Duration::from_micros(20),
                    Ev::FromEa {
                        agent: agent.clone(),
                        account: self.slave_accounts[s].clone(),
                        msg,
                    },
                ),
                slave::Output::PersistExecuting { op, .. }
                | slave::Output::PersistExecuted { op, .. } => {
                    self.at(self.cfg.disk_latency, Ev::SlaveDisk { slave: s, op })
                }
                slave::Output::PlaceOrder { command_id, body } => self.at(
                    self.cfg.broker_latency,
                    Ev::Broker {
                        slave: s,
                        command_id,
                        body,
                    },
                ),
                slave::Output::QueryOrder { command_id } => {
                    // Nothing is ever in doubt in a fault-free world; answer as the broker would.
                    let body = CommandBody::Close {
                        slave_ticket: 0,
                        volume: 0.0,
                    };
                    self.at(
                        self.cfg.broker_latency,
                        Ev::Broker {
                            slave: s,
                            command_id,
                            body,
                        },
                    );
                }
                slave::Output::Fired(_) => {}
            }
        }
    }

    /// The slaves subscribed to `master`.
    pub fn slaves_of(&self, master: usize) -> Vec<AccountId> {
        let n = self.cfg.slaves_per_master;
        self.slave_accounts[master * n..(master + 1) * n].to_vec()
    }

    pub fn master_accounts(&self) -> &[AccountId] {
        &self.master_accounts
    }
}
