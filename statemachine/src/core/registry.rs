//! Agents: who is connected, which accounts each serves, whether it is alive, and the live
//! delivery config pushed to them.
//!
//! An agent is Online from an accepted `AgentHello` until its stream ends or it stays silent
//! for three heartbeat intervals; while it is offline its deliveries wait (Parked) without
//! spending attempts and resume when it says hello again. Legacy peers (older protocol, or no
//! lossless support) are accepted in a counted compat mode. This module must never let two
//! online agents speak for one account, nor accept messages (other than hello) from an agent
//! that is not Online.

use std::collections::BTreeMap;

use super::{Core, CoreLog, TimerKey};
use crate::config::{AgentDeliveryConfig, DeliveryConfig, Subscription};
use crate::ids::{AccountId, AgentId, FastMap};
use crate::msg::{
    AgentHello, AgentToCore, CoreHello, CoreToAgent, DeliveryHeartbeat, ErrorCode, Role,
    PROTOCOL_VERSION,
};
use crate::spec::{MachineSpec, Subject};
use crate::time::Instant;
use crate::transitions;

transitions! {
    /// Agent registry transitions.
    pub enum RegistryT ("core.registry") {
        Hello = "T01": "Unknown | Offline | Online",
            "AgentHello{protocol_version = current, supports_lossless_delivery}" => "Online";
            "CoreHello{accepted, delivery config}; parked deliveries of its slave accounts re-sent (a re-hello of an Online agent is a new session: its slaves' live deliveries are parked first, as at T07, so those it still serves are re-sent and one it no longer serves waits for the agent that does)",
        HelloCompat = "T02": "Unknown | Offline | Online",
            "AgentHello from a legacy peer (older protocol_version or no lossless support)" => "Online(compat)";
            "CoreHello{accepted, compat_mode}; compat_mode_total++; parked deliveries re-sent (a re-hello: as T01)",
        HelloRefused = "T03": "any",
            "AgentHello with a newer protocol_version, no accounts, or an account another online agent serves" => "unchanged";
            "CoreHello{accepted = false, reason}",
        Seen = "T04": "Online",
            "Heartbeat (or any message)" => "Online (last_seen = now)";
            "nothing",
        Tick = "T05": "any",
            "heartbeat timer (heartbeat_interval_ms)" => "unchanged";
            "DeliveryHeartbeat{core, agent config} to every Online non-compat agent; timer re-armed",
        Silent = "T06": "Online",
            "heartbeat timer and no message for 3 · max(heartbeat_interval_ms, the agents' heartbeat_interval_ms)" => "Offline";
            "log AgentOffline; its live deliveries Parked (core.delivery.T16)",
        Disconnected = "T07": "Online",
            "stream ended" => "Offline";
            "its live deliveries Parked (core.delivery.T16)",
        ConfigPushed = "T08": "any",
            "validated delivery config change (etcd / TOML)" => "config_version + 1";
            "DeliveryHeartbeat with the new config to every Online non-compat agent at once",
        NotOnline = "T09": "Unknown | Offline",
            "any message but AgentHello" => "unchanged";
            "dropped; log ProtocolViolation; protocol_violations_total++",
        Subscriptions = "T10": "any",
            "subscriptions replaced" => "new fan-out set";
            "applies to intents admitted from now on; journaled deliveries keep their slaves",
    }
}

pub const SPEC: MachineSpec = MachineSpec {
    name: "core.registry",
    summary: "Connected agents, the accounts they serve, liveness by heartbeat, compat mode, and the live config push (seeds 001, 002).",
    states: &[
        ("Unknown", "never said hello"),
        ("Online", "accepted hello; heard from within 3 heartbeat intervals"),
        ("Online(compat)", "Online, legacy peer: no stage acks, no DeliveryHeartbeat"),
        ("Offline", "stream ended or silent; its deliveries are Parked"),
    ],
    invariants: &[
        "An account is served by at most one Online agent.",
        "Deliveries are only sent to an Online agent that serves the slave account.",
        "A delivery config change reaches every Online lossless agent in the same step.",
    ],
    transitions: RegistryT::TABLE,
};

#[derive(Clone, Debug)]
pub(crate) struct AgentEntry {
    pub online: bool,
    pub compat: bool,
    pub last_seen: Instant,
    pub accounts: Vec<(AccountId, Role)>,
}

/// Where an account's messages go: its Online agent, and whether that agent is a legacy peer.
#[derive(Clone, Debug)]
pub(crate) struct Route {
    pub agent: AgentId,
    pub compat: bool,
}

/// Agents and the account → agent index (online agents only).
#[derive(Default)]
pub(crate) struct Registry {
    pub agents: BTreeMap<AgentId, AgentEntry>,
    pub account_agent: FastMap<AccountId, Route>,
}

impl Registry {
    /// Marks `agent` seen; false if it is not Online.
    pub fn touch(&mut self, agent: &AgentId, now: Instant) -> bool {
        match self.agents.get_mut(agent) {
            Some(e) if e.online => {
                e.last_seen = now;
                true
            }
            _ => false,
        }
    }

    pub fn is_online(&self, agent: &AgentId) -> bool {
        self.agents.get(agent).is_some_and(|e| e.online)
    }

    pub fn serves(&self, agent: &AgentId, account: &AccountId, role: Role) -> bool {
        self.agents
            .get(agent)
            .is_some_and(|e| e.online && e.accounts.iter().any(|(a, r)| a == account && *r == role))
    }

    /// The Online agent serving `account`, if any.
    pub fn agent_for(&self, account: &AccountId) -> Option<AgentId> {
        self.account_agent.get(account).map(|r| r.agent.clone())
    }

    /// Whether an Online agent serves `account`.
    pub fn is_served(&self, account: &AccountId) -> bool {
        self.account_agent.contains_key(account)
    }

    fn slaves_of(&self, agent: &AgentId) -> Vec<AccountId> {
        self.agents
            .get(agent)
            .map(|e| {
                e.accounts
                    .iter()
                    .filter(|(_, r)| *r == Role::Slave)
                    .map(|(a, _)| a.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn go_offline(&mut self, agent: &AgentId) -> Vec<AccountId> {
        let slaves = self.slaves_of(agent);
        if let Some(e) = self.agents.get_mut(agent) {
            e.online = false;
            for (a, _) in &e.accounts {
                if self.account_agent.get(a).is_some_and(|r| r.agent == *agent) {
                    self.account_agent.remove(a);
                }
            }
        }
        slaves
    }
}

impl Core {
    fn heartbeat_payload(&self) -> DeliveryHeartbeat {
        DeliveryHeartbeat {
            core: self.cfg.delivery,
            agent: self.cfg.agent_delivery,
            config_version: self.config_version,
        }
    }

    fn refuse_hello(&mut self, agent: &AgentId, reason: ErrorCode) {
        self.fire(
            RegistryT::HelloRefused.spec(),
            Subject::Agent(agent.clone()),
        );
        let delivery = self.heartbeat_payload();
        self.send(
            agent.clone(),
            CoreToAgent::Hello(CoreHello {
                protocol_version: PROTOCOL_VERSION,
                accepted: false,
                compat_mode: false,
                reason: Some(reason),
                delivery,
            }),
        );
    }

    pub(crate) fn on_hello(&mut self, now: Instant, agent: &AgentId, h: AgentHello) {
        if h.protocol_version > PROTOCOL_VERSION {
            self.refuse_hello(agent, ErrorCode::ProtocolViolation);
            return;
        }
        if h.accounts.is_empty() || h.agent_id != *agent {
            self.refuse_hello(agent, ErrorCode::InvalidArgument);
            return;
        }
        let conflict = h.accounts.iter().any(|(a, _)| {
            self.registry
                .account_agent
                .get(a)
                .is_some_and(|owner| owner.agent != *agent)
        });
        if conflict {
            self.refuse_hello(agent, ErrorCode::ProtocolViolation);
            return;
        }
        // A re-hello is a new session (the agent restarted or reconnected without the core
        // seeing the old stream end — a half-open connection): what the old one was sent may
        // be lost, and it replaces the account set. Its slaves' live deliveries are parked as
        // at a disconnect (T07): those of the slaves it still serves are re-sent below, one it
        // no longer serves waits Parked for the agent that does.
        if self.registry.is_online(agent) {
            self.agent_offline(agent);
        }
        let compat = h.protocol_version < PROTOCOL_VERSION || !h.supports_lossless_delivery;
        for (a, _) in &h.accounts {
            let route = Route {
                agent: agent.clone(),
                compat,
            };
            self.registry.account_agent.insert(a.clone(), route);
        }
        self.registry.agents.insert(
            agent.clone(),
            AgentEntry {
                online: true,
                compat,
                last_seen: now,
                accounts: h.accounts,
            },
        );
        if compat {
            self.metrics.compat_mode_total += 1;
            self.fire(RegistryT::HelloCompat.spec(), Subject::Agent(agent.clone()));
        } else {
            self.fire(RegistryT::Hello.spec(), Subject::Agent(agent.clone()));
        }
        let delivery = self.heartbeat_payload();
        self.send(
            agent.clone(),
            CoreToAgent::Hello(CoreHello {
                protocol_version: PROTOCOL_VERSION,
                accepted: true,
                compat_mode: compat,
                reason: None,
                delivery,
            }),
        );
        let slaves = self.registry.slaves_of(agent);
        self.unpark_slaves(now, &slaves);
    }

    pub(crate) fn on_unregistered(&mut self, agent: &AgentId, _msg: &AgentToCore) {
        self.metrics.protocol_violations_total += 1;
        self.fire(RegistryT::NotOnline.spec(), Subject::Agent(agent.clone()));
        self.log(CoreLog::ProtocolViolation {
            agent: agent.clone(),
            what: "message before an accepted hello",
        });
    }

    pub(crate) fn on_agent_heartbeat(&mut self, agent: &AgentId) {
        self.fire(RegistryT::Seen.spec(), Subject::Agent(agent.clone()));
        // The backstop for a full agent whose commands finish slowly (core.delivery.T39).
        self.agent_showed_life(agent);
    }

    /// The agent is gone (disconnected, silent, or replaced by its own new session): its
    /// slaves' live deliveries wait Parked, and whatever it said of its room is forgotten.
    fn agent_offline(&mut self, agent: &AgentId) {
        let slaves = self.registry.go_offline(agent);
        self.agents_full.remove(agent);
        self.park_slaves(&slaves);
    }

    pub(crate) fn on_disconnected(&mut self, _now: Instant, agent: &AgentId) {
        if !self.registry.is_online(agent) {
            return;
        }
        self.fire(
            RegistryT::Disconnected.spec(),
            Subject::Agent(agent.clone()),
        );
        self.agent_offline(agent);
    }

    pub(crate) fn on_heartbeat_tick(&mut self, now: Instant) {
        let interval = self.heartbeat_interval();
        self.fire(RegistryT::Tick.spec(), Subject::None);
        // Agents heartbeat at the interval the core pushes them (agent config), which may be
        // longer than the core's own tick: judging them by the tick alone would declare every
        // agent offline before its first heartbeat, again after each reconnect, forever.
        let agent_every = crate::time::Duration::from_millis(
            self.cfg.agent_delivery.heartbeat_interval_ms.into(),
        );
        let silence = crate::time::Duration(interval.0.max(agent_every.0).saturating_mul(3));
        let mut silent = Vec::new();
        let mut live = Vec::new();
        for (id, e) in &self.registry.agents {
            if !e.online {
                continue;
            }
            if now.saturating_since(e.last_seen) > silence {
                silent.push(id.clone());
            } else if !e.compat {
                live.push(id.clone());
            }
        }
        let hb = self.heartbeat_payload();
        for id in live {
            self.send(id, CoreToAgent::Heartbeat(hb));
        }
        for id in silent {
            self.fire(RegistryT::Silent.spec(), Subject::Agent(id.clone()));
            self.log(CoreLog::AgentOffline { agent: id.clone() });
            self.agent_offline(&id);
        }
        self.arm(TimerKey::HeartbeatTick, now + interval);
    }

    pub(crate) fn on_config(
        &mut self,
        _now: Instant,
        core: DeliveryConfig,
        agent: AgentDeliveryConfig,
    ) {
        self.cfg.delivery = core;
        self.cfg.agent_delivery = agent;
        self.config_version += 1;
        // A wider agent_window takes effect at once: every queue is looked at again.
        let queued: Vec<AgentId> = self.agent_queues.keys().cloned().collect();
        self.windows_freed.extend(queued);
        self.fire(RegistryT::ConfigPushed.spec(), Subject::None);
        let hb = self.heartbeat_payload();
        let live: Vec<AgentId> = self
            .registry
            .agents
            .iter()
            .filter(|(_, e)| e.online && !e.compat)
            .map(|(id, _)| id.clone())
            .collect();
        for id in live {
            self.send(id, CoreToAgent::Heartbeat(hb));
        }
    }

    pub(crate) fn on_subscriptions(&mut self, subs: Vec<Subscription>) {
        self.fire(RegistryT::Subscriptions.spec(), Subject::None);
        self.subs.clear();
        for s in &subs {
            self.subs
                .entry(s.master.clone())
                .or_default()
                .push(s.clone());
        }
        self.cfg.subscriptions = subs;
    }
}
