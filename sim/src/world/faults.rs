//! The fault clock: every `TICK` it heals timed faults, runs the periodic safety checks, and
//! (during the fault phase) draws from the seed's [`FaultProfile`](crate::profile::FaultProfile)
//! which faults happen — journal outages, partitions, crashes of any node, pipe closes, config
//! changes, bursts; crashes themselves (what survives is decided here, by coin flip per
//! in-flight write); and the final heal that turns every fault off.
//!
//! This module owns *when* and *whether* a fault happens. It must never inject a fault after
//! [`World::heal`] and never draw from anything but the run's generator.

use echo_statemachine::config::{AgentDeliveryConfig, DeliveryConfig};

use echo_statemachine::ids::{AccountId, AgentId, IntentId};
use echo_statemachine::msg::{AgentHello, AgentToCore, Role, PROTOCOL_VERSION};
use echo_statemachine::time::Duration;

use super::describe::describe_to_core;
use super::net::Partition;
use super::nodes::CoreM;
use super::{Ea, Ev, Node, World, TICK};
use crate::rng::Rng;

/// One kind of random decision. Each draws from its own stream of the run's generator, so
/// zeroing one rate (`echo-sim shrink`) leaves the draws of every other kind where they were.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum F {
    NetDrop,
    NetDuplicate,
    NetDelay,
    Partition,
    JournalOutage,
    JournalSlow,
    JournalReplyLost,
    LedgerFail,
    DiskFail,
    CrashCore,
    CrashAgent,
    CrashEa,
    PipeClose,
    PipeWriteFail,
    BrokerReject,
    ConfigChange,
    Burst,
    StrayPeer,
    MdBurst,
    SubChange,
    PendingFill,
}

impl F {
    pub(super) const COUNT: usize = 21;

    fn rate(self, w: &World) -> u64 {
        let (p, l) = (&w.profile, &w.workload);
        match self {
            F::NetDrop => p.net_drop,
            F::NetDuplicate => p.net_duplicate,
            F::NetDelay => p.net_delay,
            F::Partition => p.partition,
            F::JournalOutage => p.journal_outage,
            F::JournalSlow => p.journal_slow,
            F::JournalReplyLost => p.journal_reply_lost,
            F::LedgerFail => p.ledger_fail,
            F::DiskFail => p.disk_fail,
            F::CrashCore => p.crash_core,
            F::CrashAgent => p.crash_agent,
            F::CrashEa => p.crash_ea,
            F::PipeClose => p.pipe_close,
            F::PipeWriteFail => p.pipe_write_fail,
            F::BrokerReject => p.broker_reject,
            F::ConfigChange => p.config_change,
            F::Burst => p.burst,
            F::StrayPeer => p.stray_peer,
            F::MdBurst => l.md_burst,
            F::SubChange => l.sub_change,
            F::PendingFill => l.pending_fill,
        }
    }
}

impl World {
    /// Whether a fault (or workload event) of kind `f` happens now: never after healing.
    pub(super) fn chance(&mut self, f: F) -> bool {
        let rate = f.rate(self);
        self.faults_on && self.streams[f as usize].chance(rate, 1_000)
    }

    /// The stream of kind `f`, for the size of a fault that happened.
    pub(super) fn draw(&mut self, f: F) -> &mut Rng {
        &mut self.streams[f as usize]
    }

    pub(super) fn tick(&mut self) {
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
        self.market_tick();
        let p = self.profile.clone();
        if self.chance(F::JournalOutage) && self.journal.down_until.is_none() {
            let d = self
                .draw(F::JournalOutage)
                .range(10, p.journal_outage_max_ms.max(10));
            self.journal.down_until = Some(now + Duration::from_millis(d));
            self.fault("journal_outage", format!("{d} ms"));
        }
        for a in 0..self.links.len() {
            if self.chance(F::Partition) && self.links[a].partition_until.is_none() {
                let d = self
                    .draw(F::Partition)
                    .range(10, p.partition_max_ms.max(10));
                self.links[a].partition_until = Some(now + Duration::from_millis(d));
                match self.draw(F::Partition).below(3) {
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
        if self.chance(F::CrashCore) {
            self.crash(Node::Core);
        }
        for a in 0..self.agents.len() {
            if self.chance(F::CrashAgent) {
                self.crash(Node::Agent(a));
            }
        }
        let eas: Vec<Ea> = (0..self.masters.len())
            .map(Ea::Master)
            .chain((0..self.slaves.len()).map(Ea::Slave))
            .collect();
        for ea in eas {
            if self.chance(F::CrashEa) {
                self.crash(Node::Ea(ea));
            } else if self.chance(F::PipeClose) && self.pipes.get(&ea).is_some_and(|x| x.1) {
                self.fault("pipe_close", format!("{ea:?}"));
                self.close_pipe(ea);
                let d = Duration::from_millis(self.draw(F::PipeClose).range(5, 500));
                self.at(d, Ev::Reopen { ea });
            }
        }
        if self.chance(F::ConfigChange) {
            let r = self.draw(F::ConfigChange);
            let core = DeliveryConfig {
                ack_timeout_ms: r.range(100, 3_000) as u32,
                retry_backoff_ms: r.range(10, 500) as u32,
                max_retries: r.range(2, 10) as u32,
                heartbeat_interval_ms: r.range(1_000, 5_000) as u32,
                reconcile_interval_ms: r.range(500, 5_000) as u32,
                journal_stage_acks: 0,
                agent_window: DeliveryConfig::default().agent_window,
            };
            let agent = AgentDeliveryConfig {
                ack_timeout_ms: r.range(100, 3_000) as u32,
                retry_backoff_ms: r.range(10, 500) as u32,
                max_retries: r.range(2, 20) as u32,
                heartbeat_interval_ms: r.range(1_000, 5_000) as u32,
            };
            // Drawn last, so the draws above stay what they were.
            let core = DeliveryConfig {
                journal_stage_acks: r.range(0, 1) as u32,
                agent_window: r.range(1, 8) as u32,
                ..core
            };
            self.fault("config_change", format!("{core:?} {agent:?}"));
            self.core_cfg.delivery = core;
            self.core_cfg.agent_delivery = agent;
            self.book.min_max_retries = self.book.min_max_retries.min(core.max_retries);
            if let Some(c) = self.core.as_mut() {
                c.handle_delivery_config(now, core, agent);
            }
            self.drain::<CoreM>(0, "config change");
        }
        for m in 0..self.masters.len() {
            if self.chance(F::Burst) {
                let n = self.draw(F::Burst).range(5, 40);
                self.fault("burst", format!("master-{m} emits {n} at once"));
                for _ in 0..n {
                    self.emit(m);
                }
            }
        }
        if self.chance(F::StrayPeer) {
            self.stray_peer();
        }
        self.workload_tick();
    }

    /// A connection from a peer that is none of the world's agents sends one message: a
    /// heartbeat before any hello, a hello of a newer protocol, or a hello with no accounts.
    /// The core must refuse or drop it and change nothing for the real agents.
    fn stray_peer(&mut self) {
        let stray = AgentId::new("agent-stray");
        let hello = |protocol_version: u32, accounts: Vec<(AccountId, Role)>| {
            AgentToCore::Hello(AgentHello {
                agent_id: stray.clone(),
                protocol_version,
                supports_lossless_delivery: true,
                accounts,
            })
        };
        let msg = match self.draw(F::StrayPeer).below(3) {
            0 => AgentToCore::Heartbeat,
            1 => hello(
                PROTOCOL_VERSION + 1,
                vec![(AccountId::new("stray-account"), Role::Slave)],
            ),
            _ => hello(PROTOCOL_VERSION, Vec::new()),
        };
        let input = describe_to_core(&msg);
        self.fault("stray_peer", input.clone());
        let now = self.now;
        if let Some(c) = self.core.as_mut() {
            c.handle_agent_message(now, &stray, msg);
            self.drain::<CoreM>(0, &input);
        }
    }

    pub(super) fn crash(&mut self, node: Node) {
        let f = match node {
            Node::Core => F::CrashCore,
            Node::Agent(_) => F::CrashAgent,
            Node::Ea(_) => F::CrashEa,
        };
        let max = self.profile.crash_downtime_max_ms.max(10);
        let down = Duration::from_millis(self.draw(f).range(5, max));
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
                self.planned.clear();
                // Writes in flight either committed before the crash or are lost with it.
                let pending = std::mem::take(&mut self.journal.pending);
                for (_, w) in pending {
                    if self.draw(f).chance(1, 2) {
                        self.apply_journal(&w);
                    }
                }
            }
            Node::Agent(a) => {
                if self.agents[a].is_none() {
                    return;
                }
                self.fault("crash", format!("agent-{a}"));
                if self.reconfig_rng.chance(self.workload.half_open, 1_000) {
                    // Half-open: the core does not learn that the stream ended.
                    self.fault(
                        "half_open",
                        format!("the core does not see agent-{a}'s stream end"),
                    );
                    self.drop_link_silently(a);
                } else {
                    self.disconnect(a, "agent crashed");
                }
                // Unsynced ledger writes may or may not have reached the disk.
                self.agent_down(a, Some(f));
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
                            if self.draw(f).chance(1, 2) {
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
                            if self.draw(f).chance(1, 2) {
                                self.apply_slave_write(s, w);
                            }
                        }
                    }
                }
            }
        }
        self.at(down, Ev::Restart { node });
    }

    /// A clean stop of agent `a` (not a crash): its link and pipes close, and every ledger
    /// write it issued completes first.
    pub(super) fn stop_agent(&mut self, a: usize, why: &str) {
        if self.agents[a].is_none() {
            return;
        }
        self.disconnect(a, why);
        self.agent_down(a, None);
    }

    /// Agent `a` is gone (its link already handled): its pipes close and its ledger writes
    /// in flight land — every one (`torn: None`, a clean stop) or each by a coin from
    /// `torn`'s stream (a crash: an unsynced write may or may not have reached the disk).
    fn agent_down(&mut self, a: usize, torn: Option<F>) {
        for ea in self.eas_of(a) {
            self.close_pipe(ea);
        }
        self.agents[a] = None;
        self.agent_epoch[a] += 1;
        self.md_crash(a);
        let pending = std::mem::take(&mut self.ledger_pending[a]);
        for (_, rec) in pending {
            if torn.is_none_or(|f| self.draw(f).chance(1, 2)) {
                self.ledgers[a].insert(rec.command.command_id.clone(), rec);
            }
        }
    }

    pub(super) fn heal(&mut self) {
        self.faults_on = false;
        self.healed_at = Some(self.now);
        self.fault(
            "heal",
            "all faults off; every node restarted, every link repaired".into(),
        );
        self.journal.down_until = None;
        self.market_heal();
        for s in 0..self.slave_slow.len() {
            self.slave_slow[s] = Duration::ZERO;
        }
        self.slow_broker = Duration::ZERO;
        if self.core.is_none() {
            self.restart(Node::Core);
        }
        for a in 0..self.agents.len() {
            if self.agents[a].is_some() && self.agent_served[a] != self.agent_accounts[a] {
                // Its operator restores its configuration: a clean restart (every ledger
                // write it issued completes), with every account again.
                self.stop_agent(a, "agent restarted with its full configuration");
            }
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
}
