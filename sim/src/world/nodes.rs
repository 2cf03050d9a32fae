//! Node wiring: which output of which machine becomes which input of which other, after what
//! delay; the one generic drain that groups every machine's outputs under the transition
//! record (`Fired`) that produced them; starting nodes, their pipes, and restarts through
//! `recover()` from durable state only.
//!
//! This module owns routing and lifecycle. It must never decide a fault (that is
//! [`super::faults`] and [`super::net`]), never judge a message (that is [`super::checks`]),
//! and never make a write durable itself (that is [`super::storage`]).

use echo_statemachine::agent::{AgentOutput, DeliveryManager, LedgerRecord};
use echo_statemachine::core::{Core, CoreLog, CoreOutput, DeliveryStatus, JournalWrite};
use echo_statemachine::ea::master::{self, IntentQueue, IntentQueueConfig};
use echo_statemachine::ea::slave::{self, ExecutedRecord, SlaveConfig, SlaveExecutor};
use echo_statemachine::ids::AccountId;
use echo_statemachine::msg::*;
use echo_statemachine::spec::Fired;
use echo_statemachine::time::Duration;

use super::describe::{
    describe_agent_output, describe_core_output, describe_from_core, describe_from_ea,
    describe_to_core,
};
use super::faults::F;
use super::storage::{MasterWrite, SlaveWrite};
use super::{Ea, Ev, Node, World};

/// One kind of machine the world drains.
pub(super) trait Drained {
    type Out;
    /// The node's name in the trace.
    fn name(key: usize) -> String;
    fn poll(w: &mut World, key: usize) -> Option<Self::Out>;
    /// A transition record, or an output to route.
    fn fired(o: Self::Out) -> Result<Fired, Self::Out>;
    fn describe(w: &World, key: usize, o: &Self::Out) -> String;
    /// Where the output goes.
    fn route(w: &mut World, key: usize, o: Self::Out);
}

pub(super) struct CoreM;
pub(super) struct AgentM;
pub(super) struct MasterM;
pub(super) struct SlaveM;

impl Drained for CoreM {
    type Out = CoreOutput;
    fn name(_: usize) -> String {
        "core".into()
    }
    fn poll(w: &mut World, _: usize) -> Option<CoreOutput> {
        w.core.as_mut().and_then(|c| c.poll())
    }
    fn fired(o: CoreOutput) -> Result<Fired, CoreOutput> {
        match o {
            CoreOutput::Fired(f) => Ok(f),
            o => Err(o),
        }
    }
    fn describe(_: &World, _: usize, o: &CoreOutput) -> String {
        describe_core_output(o)
    }
    fn route(w: &mut World, _: usize, o: CoreOutput) {
        w.route_core(o)
    }
}

/// A machine kept in a `Vec<Option<_>>` field of the world, one per key.
macro_rules! drained {
    ($m:ident, $out:ty, $fired:path, $field:ident, $name:literal, $describe:expr, $route:ident) => {
        impl Drained for $m {
            type Out = $out;
            fn name(key: usize) -> String {
                format!($name, key)
            }
            fn poll(w: &mut World, key: usize) -> Option<$out> {
                w.$field[key].as_mut().and_then(|x| x.poll())
            }
            fn fired(o: $out) -> Result<Fired, $out> {
                match o {
                    $fired(f) => Ok(f),
                    o => Err(o),
                }
            }
            fn describe(w: &World, key: usize, o: &$out) -> String {
                $describe(w, key, o)
            }
            fn route(w: &mut World, key: usize, o: $out) {
                w.$route(key, o)
            }
        }
    };
}

/// An agent's output as the trace shows it: a legacy peer's stage acks never reach the wire.
fn agent_output_on_wire(w: &World, a: usize, o: &AgentOutput) -> String {
    match o {
        AgentOutput::ToCore(AgentToCore::CommandAck(_)) if w.workload.compat_agent == Some(a) => {
            format!("legacy peer, not sent: {}", describe_agent_output(o))
        }
        _ => describe_agent_output(o),
    }
}

fn debug_160<T: std::fmt::Debug>(_: &World, _: usize, o: &T) -> String {
    format!("{o:?}").chars().take(160).collect()
}

drained!(
    AgentM,
    AgentOutput,
    AgentOutput::Fired,
    agents,
    "agent-{}",
    agent_output_on_wire,
    route_agent
);
drained!(
    MasterM,
    master::Output,
    master::Output::Fired,
    masters,
    "master-{}",
    debug_160,
    route_master
);
drained!(
    SlaveM,
    slave::Output,
    slave::Output::Fired,
    slaves,
    "slave-{}",
    debug_160,
    route_slave
);

impl World {
    /// Polls machine `key` of kind `M` until it is quiet: routes every output and writes one
    /// trace step per transition record, with the outputs that followed it.
    pub(super) fn drain<M: Drained>(&mut self, key: usize, input: &str) {
        let node = if self.trace.is_some() {
            M::name(key)
        } else {
            String::new()
        };
        let mut pending: Option<(Fired, Vec<String>)> = None;
        while let Some(o) = M::poll(self, key) {
            match M::fired(o) {
                Ok(f) => {
                    self.note_core_fired(&f);
                    if let Some((pf, outs)) = pending.replace((f, Vec::new())) {
                        self.trace_step(&node, input, &pf, &outs);
                    }
                }
                Err(o) => {
                    if self.trace.is_some() {
                        if let Some((_, outs)) = pending.as_mut() {
                            outs.push(M::describe(self, key, &o));
                        }
                    }
                    self.last_fired = pending.as_ref().map(|(f, _)| f.transition.id);
                    M::route(self, key, o);
                }
            }
        }
        if let Some((pf, outs)) = pending.take() {
            self.trace_step(&node, input, &pf, &outs);
        }
    }

    fn route_core(&mut self, o: CoreOutput) {
        match &o {
            CoreOutput::Send {
                msg: CoreToAgent::IntentAck(a),
                ..
            } => {
                self.answered = Some(a.intent_id.clone());
            }
            CoreOutput::Journal {
                write: JournalWrite::AcceptIntent { intent, deliveries },
                ..
            } => {
                self.answered = Some(intent.intent_id.clone());
                self.check_admission(intent, deliveries);
            }
            CoreOutput::Journal {
                write:
                    JournalWrite::FinishDelivery {
                        command_id,
                        status: DeliveryStatus::Failed,
                        reason: Some(ErrorCode::MaxRetries),
                        ..
                    },
                ..
            } => self.check_give_up(command_id),
            _ => {}
        }
        match o {
            CoreOutput::Send { agent, msg } => {
                let mut tag = 0;
                if let CoreToAgent::Command(c) = &msg {
                    self.next_tag += 1;
                    tag = self.next_tag;
                    *self.book.sends.entry(c.command_id.clone()).or_insert(0) += 1;
                    self.book.send_tags.insert(tag, c.command_id.clone());
                }
                // Only the world's agents have a stream; a stray peer's answer goes nowhere.
                let Some(a) = self.agent_ids.iter().position(|x| *x == agent) else {
                    return;
                };
                self.net_send(true, a, None, Some(msg), tag);
            }
            CoreOutput::Journal { op, write } => {
                if write.is_awaited() {
                    self.journal.pending.insert(op, write);
                    let mut d = self.cfg.journal_latency;
                    if self.chance(F::JournalSlow) {
                        d = d + Duration::from_millis(self.draw(F::JournalSlow).range(5, 500));
                    }
                    let reply = !self.chance(F::JournalReplyLost);
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
                let Some(a) = self.agent_ids.iter().position(|x| *x == agent) else {
                    return;
                };
                self.at(Duration::ZERO, Ev::Reconnect { agent: a });
                if self.links[a].connected {
                    self.links[a].connected = false;
                    self.links[a].gen += 1;
                    let now = self.now;
                    if let Some(x) = self.agents[a].as_mut() {
                        x.handle_core_disconnected(now);
                    }
                    self.drain::<AgentM>(a, "stream closed by core");
                }
            }
            CoreOutput::Log(_) | CoreOutput::Fired(_) => {}
        }
    }

    fn route_agent(&mut self, a: usize, o: AgentOutput) {
        match o {
            AgentOutput::ToCore(msg) => {
                self.check_agent_sends(a, &msg);
                if let Some(msg) = self.legacy_wire(a, msg) {
                    let tag = self.cause;
                    self.net_send(false, a, Some(msg), None, tag);
                }
            }
            AgentOutput::ToEa { account, msg } => {
                let ea = if let Some(m) = self.master_accounts.iter().position(|x| *x == account) {
                    Ea::Master(m)
                } else if let Some(s) = self.slave_accounts.iter().position(|x| *x == account) {
                    Ea::Slave(s)
                } else {
                    return;
                };
                let Some((pipe, open)) = self.pipes.get(&ea).copied() else {
                    return;
                };
                if !open {
                    return;
                }
                if let (Ea::Slave(_), AgentToEa::Command(c)) = (ea, &msg) {
                    if self.chance(F::PipeWriteFail) {
                        self.fault("pipe_write_fail", format!("{ea:?} {}", c.command_id));
                        let now = self.now;
                        let id = c.command_id.clone();
                        if let Some(x) = self.agents[a].as_mut() {
                            x.handle_pipe_write_failed(now, account, id);
                        }
                        return;
                    }
                }
                let d = match ea {
                    Ea::Slave(s) => Duration::from_micros(20) + self.slave_slow[s],
                    Ea::Master(_) => Duration::from_micros(20),
                };
                // A pipe is FIFO: nothing overtakes what was written before it (a slow slave
                // that speeds up at healing must not reorder its pipe).
                let at = (self.now + d).max(self.pipe_tail.get(&ea).copied().unwrap_or(self.now));
                self.pipe_tail.insert(ea, at);
                self.at(at.saturating_since(self.now), Ev::ToEa { ea, pipe, msg });
            }
            AgentOutput::PersistLedger { op, record } => {
                self.ledger_pending[a].insert(op, record);
                let ok = !self.chance(F::LedgerFail);
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

    fn route_master(&mut self, m: usize, o: master::Output) {
        match o {
            master::Output::PersistAppend { op, intent } => {
                self.persist_master(m, op, MasterWrite::Append(intent));
            }
            master::Output::PersistRemove { op, intent_id, .. } => {
                self.persist_master(m, op, MasterWrite::Remove(intent_id));
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

    fn route_slave(&mut self, s: usize, o: slave::Output) {
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
                self.check_later_command_of_skipped_open(s, &command);
                self.check_terms_facts(s, &command);
                self.persist_slave(s, op, SlaveWrite::Executing(command));
            }
            slave::Output::PersistExecuted {
                op,
                command_id,
                result,
            } => {
                self.check_terms_refusal(s, &command_id, &result);
                self.on_slave_records(s, &command_id, &result);
                self.persist_slave(s, op, SlaveWrite::Executed(command_id, result));
            }
            slave::Output::PlaceOrder { command_id, body } => {
                self.check_open_terms(s, &command_id, &body);
                self.check_trigger(s, &command_id, &body);
                self.on_place_order(s, &command_id);
                // The broker takes the order the moment it is sent; only its answer
                // travels back with latency (and is lost if the EA crashes meanwhile).
                self.broker(s, &command_id, &command_id, Some(&body), false);
                let d = self.cfg.broker_latency + self.slave_slow[s] + self.slow_broker;
                self.at(
                    d,
                    Ev::Broker {
                        slave: s,
                        epoch,
                        command_id,
                        body: Some(body),
                        leg: None,
                    },
                );
            }
            slave::Output::PlaceLeg {
                command_id,
                leg,
                order_id,
                body,
            } => {
                self.on_place_leg(s, &command_id, leg, &order_id, &body);
                self.broker(s, &order_id, &command_id, Some(&body), true);
                let d = self.cfg.broker_latency + self.slave_slow[s] + self.slow_broker;
                self.at(
                    d,
                    Ev::Broker {
                        slave: s,
                        epoch,
                        command_id: order_id,
                        body: Some(body),
                        leg: Some((command_id, leg)),
                    },
                );
            }
            slave::Output::QueryLeg {
                command_id,
                leg,
                order_id,
            } => {
                self.at(
                    self.cfg.broker_latency,
                    Ev::Broker {
                        slave: s,
                        epoch,
                        command_id: order_id,
                        body: None,
                        leg: Some((command_id, leg)),
                    },
                );
            }
            slave::Output::PersistCancelled {
                op,
                command,
                result,
            } => {
                self.persist_slave(s, op, SlaveWrite::Cancelled(command, result));
            }
            slave::Output::QueryOrder { command_id } => {
                self.at(
                    self.cfg.broker_latency,
                    Ev::Broker {
                        slave: s,
                        epoch,
                        command_id,
                        body: None,
                        leg: None,
                    },
                );
            }
            slave::Output::Fired(_) => {}
        }
    }

    /// Issues a write to slave `s`'s file; it completes (or fails) after the disk latency.
    fn persist_slave(&mut self, s: usize, op: slave::OpId, write: SlaveWrite) {
        self.slave_pending[s].insert(op, write);
        let ok = !self.chance(F::DiskFail);
        let epoch = self.slave_epoch[s];
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

    /// Issues a write to master `m`'s IntentQueue file.
    fn persist_master(&mut self, m: usize, op: master::OpId, write: MasterWrite) {
        self.master_pending[m].insert(op, write);
        let ok = !self.chance(F::DiskFail);
        let epoch = self.master_epoch[m];
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

    // ---- lifecycle of nodes -------------------------------------------------------------

    pub(super) fn start_agent(&mut self, a: usize) {
        let ledger: Vec<LedgerRecord> = self.ledgers[a].values().cloned().collect();
        let mut accounts = self.agent_accounts[a].clone();
        let slaves: Vec<usize> = (0..accounts.len())
            .filter(|i| accounts[*i].1 == Role::Slave)
            .collect();
        if self.faults_on
            && !slaves.is_empty()
            && self
                .reconfig_rng
                .chance(self.workload.agent_reconfig, 1_000)
        {
            let i = slaves[self.reconfig_rng.below(slaves.len() as u64) as usize];
            let (gone, _) = accounts.remove(i);
            self.fault(
                "agent_reconfig",
                format!("agent-{a} restarts configured without {gone}"),
            );
        }
        self.agent_served[a] = accounts.clone();
        self.agents[a] = Some(DeliveryManager::recover(
            self.agent_ids[a].clone(),
            accounts,
            self.core_cfg.agent_delivery,
            self.cfg.capacity.agent_limits(),
            ledger,
        ));
        self.connect(a);
        let eas: Vec<Ea> = self.eas_of(a);
        for ea in eas {
            if self.ea_up(ea) {
                self.open_pipe(ea);
            }
        }
        self.md_start(a);
    }

    pub(super) fn eas_of(&self, a: usize) -> Vec<Ea> {
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

    pub(super) fn agent_of(&self, ea: Ea) -> usize {
        match ea {
            Ea::Master(_) => 0,
            Ea::Slave(s) => self.slave_agent[s],
        }
    }

    pub(super) fn account_of(&self, ea: Ea) -> AccountId {
        match ea {
            Ea::Master(m) => self.master_accounts[m].clone(),
            Ea::Slave(s) => self.slave_accounts[s].clone(),
        }
    }

    pub(super) fn ea_up(&self, ea: Ea) -> bool {
        match ea {
            Ea::Master(m) => self.masters[m].is_some(),
            Ea::Slave(s) => self.slaves[s].is_some(),
        }
    }

    pub(super) fn start_ea(&mut self, ea: Ea) {
        match ea {
            Ea::Master(m) => {
                let mut durable: Vec<TradeIntent> =
                    self.master_files[m].values().cloned().collect();
                durable.sort_by_key(|i| i.master_seq);
                let config = IntentQueueConfig {
                    delivery: self.core_cfg.agent_delivery,
                    capacity: self.cfg.capacity.intent_queue_capacity(),
                };
                self.masters[m] = Some(IntentQueue::recover(config, durable));
            }
            Ea::Slave(s) => {
                // In file order, as an append-only file replays: a trade's next command is
                // written ahead only after the previous one's result, so positions (and the
                // tickets a partial close moves them to) are rebuilt in the order they changed.
                let mut durable: Vec<(u64, ExecutedRecord)> = self.slave_files[s]
                    .iter()
                    .map(|(id, r)| {
                        let at = self.slave_file_order[s]
                            .get(id)
                            .copied()
                            .unwrap_or(u64::MAX);
                        (at, r.clone())
                    })
                    .collect();
                durable.sort_by_key(|(at, _)| *at);
                let durable: Vec<ExecutedRecord> = durable.into_iter().map(|(_, r)| r).collect();
                self.slaves[s] = Some(SlaveExecutor::recover(
                    SlaveConfig {
                        max_pending: self.cfg.capacity.slave_max_pending(),
                        max_executed_retained: self.cfg.capacity.slave_retention().0,
                        min_retained_ms: self.cfg.capacity.slave_retention().1,
                        ..SlaveConfig::new(self.slave_accounts[s].as_str())
                    },
                    durable,
                ));
                self.drain::<SlaveM>(s, "");
                self.report_all_facts(s);
            }
        }
        if self.agents[self.agent_of(ea)].is_some() {
            self.open_pipe(ea);
        }
    }

    pub(super) fn open_pipe(&mut self, ea: Ea) {
        let a = self.agent_of(ea);
        let account = self.account_of(ea);
        if !self.agent_served[a].iter().any(|(acc, _)| *acc == account) {
            // The agent opened no socket for an account it is not configured for.
            return;
        }
        let entry = self.pipes.entry(ea).or_insert((0, false));
        entry.0 += 1;
        entry.1 = true;
        let now = self.now;
        if let Some(agent) = self.agents[a].as_mut() {
            agent.handle_pipe_connected(now, account);
        }
        self.drain::<AgentM>(a, "pipe connected");
        if let Ea::Master(m) = ea {
            if let Some(q) = self.masters[m].as_mut() {
                q.handle_pipe_connected(now);
            }
            self.drain::<MasterM>(m, "pipe connected");
        }
    }

    pub(super) fn close_pipe(&mut self, ea: Ea) {
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
            self.drain::<AgentM>(a, "pipe closed");
        }
        match ea {
            Ea::Master(m) => {
                if let Some(q) = self.masters[m].as_mut() {
                    q.handle_pipe_closed(now);
                    self.drain::<MasterM>(m, "pipe closed");
                }
            }
            Ea::Slave(s) => {
                if let Some(x) = self.slaves[s].as_mut() {
                    x.handle_pipe_closed(now);
                    self.drain::<SlaveM>(s, "");
                }
            }
        }
    }

    pub(super) fn restart(&mut self, node: Node) {
        match node {
            Node::Core => {
                if self.core.is_some() {
                    return;
                }
                let durable = self.journal_durable_state();
                self.core = Some(Core::recover(self.core_cfg.clone(), durable, self.now));
                self.drain::<CoreM>(0, "recover");
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

    // ---- messages between nodes ---------------------------------------------------------

    pub(super) fn on_to_core(&mut self, agent: usize, link: u64, msg: AgentToCore, tag: u64) {
        if link != self.links[agent].gen || !self.links[agent].connected {
            return;
        }
        let now = self.now;
        self.check_to_core(&msg, tag);
        let input = describe_to_core(&msg);
        let asked = match &msg {
            AgentToCore::Intent(i) => Some(i.intent_id.clone()),
            _ => None,
        };
        if let Some(c) = self.core.as_mut() {
            c.handle_agent_message(now, &self.agent_ids[agent], msg);
            self.answered = None;
            self.drain::<CoreM>(0, &input);
            if let Some(id) = asked {
                self.check_answered(&id);
            }
        }
    }

    pub(super) fn on_from_core(&mut self, agent: usize, link: u64, msg: CoreToAgent, tag: u64) {
        if link != self.links[agent].gen || !self.links[agent].connected {
            return;
        }
        let now = self.now;
        let input = describe_from_core(&msg);
        if let Some(x) = self.agents[agent].as_mut() {
            x.handle_from_core(now, msg);
            // What the agent answers now, it answers to this send.
            self.cause = tag;
            self.drain::<AgentM>(agent, &input);
            self.cause = 0;
        }
    }

    pub(super) fn on_from_ea(&mut self, agent: usize, pipe: u64, ea: Ea, msg: EaToAgent) {
        if self.pipes.get(&ea).map(|p| p.0) != Some(pipe) {
            return;
        }
        let now = self.now;
        self.check_from_ea(ea, &msg);
        let input = format!("pipe {ea:?}: {}", describe_from_ea(&msg));
        let account = self.account_of(ea);
        if let Some(x) = self.agents[agent].as_mut() {
            x.handle_from_ea(now, account, msg);
            self.drain::<AgentM>(agent, &input);
        }
    }

    pub(super) fn on_to_ea(&mut self, ea: Ea, pipe: u64, msg: AgentToEa) {
        if self.pipes.get(&ea).map(|p| p.0) != Some(pipe) {
            return;
        }
        let now = self.now;
        match ea {
            Ea::Master(m) => {
                self.check_to_master(m, &msg);
                let Some(q) = self.masters[m].as_mut() else {
                    return;
                };
                match msg {
                    AgentToEa::IntentAck(ack) => q.handle_ack(now, ack),
                    AgentToEa::DeliveryConfig(c) => q.handle_delivery_config(now, c),
                    AgentToEa::Handshake { .. } | AgentToEa::Command(_) | AgentToEa::Cancel(_) => {}
                }
                self.drain::<MasterM>(m, "from agent");
            }
            Ea::Slave(s) => {
                if let Some(x) = self.slaves[s].as_mut() {
                    x.handle_from_agent(now, msg);
                    self.drain::<SlaveM>(s, "");
                }
            }
        }
    }

    pub(super) fn on_reopen(&mut self, ea: Ea) {
        if self.ea_up(ea)
            && self.agents[self.agent_of(ea)].is_some()
            && !self.pipes.get(&ea).is_some_and(|p| p.1)
        {
            self.open_pipe(ea);
        }
    }
}
