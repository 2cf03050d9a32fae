//! The agent↔core streams: connecting and breaking them, one-way and two-way partitions, and
//! the network faults on every message (drop, duplicate, extra delay that reorders).
//!
//! This module owns what the network does to a message between an agent and the core. It must
//! never look inside a message to decide its fate (every message is equally exposed) and never
//! touch a node's durable state.

use echo_statemachine::msg::*;
use echo_statemachine::time::{Duration, Instant};

use super::faults::F;
use super::nodes::{AgentM, CoreM};
use super::{Ev, World};

#[derive(Clone, Copy, Debug, Default)]
pub(super) enum Partition {
    #[default]
    None,
    /// Messages agent → core are lost.
    Up,
    /// Messages core → agent are lost.
    Down,
}

#[derive(Clone, Debug, Default)]
pub(super) struct Link {
    /// Stream generation; messages of an older one are lost.
    pub(super) gen: u64,
    pub(super) connected: bool,
    pub(super) partition: Partition,
    pub(super) partition_until: Option<Instant>,
    pub(super) reconnect_pending: bool,
}

impl World {
    pub(super) fn connect(&mut self, a: usize) {
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
        self.drain::<AgentM>(a, "core connected");
    }

    /// The agent's end of the stream is gone but the core was not told (a half-open
    /// connection): whatever either side sends on it is lost; the agent reconnects on a new
    /// stream when it restarts (or after a delay if it is still up).
    pub(super) fn drop_link_silently(&mut self, a: usize) {
        if !self.links[a].connected {
            return;
        }
        self.links[a].connected = false;
        self.links[a].gen += 1;
        let now = self.now;
        if let Some(agent) = self.agents[a].as_mut() {
            agent.handle_core_disconnected(now);
        }
        self.drain::<AgentM>(a, "stream lost (half-open)");
        if !self.links[a].reconnect_pending {
            self.links[a].reconnect_pending = true;
            let d = Duration::from_millis(self.reconfig_rng.range(20, 300));
            self.at(d, Ev::Reconnect { agent: a });
        }
    }

    pub(super) fn disconnect(&mut self, a: usize, why: &str) {
        if !self.links[a].connected {
            return;
        }
        self.links[a].connected = false;
        self.links[a].gen += 1;
        let now = self.now;
        if let Some(core) = self.core.as_mut() {
            core.handle_agent_disconnected(now, &self.agent_ids[a]);
        }
        self.drain::<CoreM>(0, why);
        if let Some(agent) = self.agents[a].as_mut() {
            agent.handle_core_disconnected(now);
        }
        self.drain::<AgentM>(a, why);
        if !self.links[a].reconnect_pending {
            self.links[a].reconnect_pending = true;
            let d = Duration::from_millis(self.rng.range(20, 300));
            self.at(d, Ev::Reconnect { agent: a });
        }
    }

    pub(super) fn net_send(
        &mut self,
        to_agent: bool,
        a: usize,
        up: Option<AgentToCore>,
        down: Option<CoreToAgent>,
        tag: u64,
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
        if self.chance(F::NetDrop) {
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
        let copies = if self.chance(F::NetDuplicate) {
            self.fault("net_duplicate", format!("agent-{a} link"));
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut d = self.cfg.net_latency;
            if self.chance(F::NetDelay) {
                let max = self.profile.net_delay_max_us.max(1);
                d = d + Duration::from_micros(self.draw(F::NetDelay).range(1, max));
            }
            match (&up, &down) {
                (Some(m), _) => self.at(
                    d,
                    Ev::ToCore {
                        agent: a,
                        link: gen,
                        msg: m.clone(),
                        tag,
                    },
                ),
                (_, Some(m)) => self.at(
                    d,
                    Ev::FromCore {
                        agent: a,
                        link: gen,
                        msg: m.clone(),
                        tag,
                    },
                ),
                _ => {}
            }
        }
    }

    pub(super) fn on_reconnect(&mut self, agent: usize) {
        self.links[agent].reconnect_pending = false;
        self.connect(agent);
    }
}
