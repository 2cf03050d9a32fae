//! The agent driver: one tokio task that owns the agent's [`DeliveryManager`].
//!
//! Inputs are the core link's events, the terminals' pipe events and the ledger's results;
//! outputs go to the current core stream, to the pipes and to the ledger. It must never decide
//! anything: a message for a closed pipe or a down link is dropped here because the machine
//! re-sends whatever matters once the pipe or link is back.

use std::sync::Arc;

use echo_proto::v1 as pb;
use echo_statemachine::agent::{
    AgentMetrics, AgentOutput, DeliveryManager, LedgerOpId, LedgerRecord, LinkState,
};
use echo_statemachine::config::AgentDeliveryConfig;
use echo_statemachine::ids::{AccountId, AgentId, CommandId};
use echo_statemachine::msg::{AgentToEa, CoreToAgent, DeliveryHeartbeat, EaToAgent};
use tokio::sync::{mpsc, watch};

use super::clock::Clock;
use super::core::sleep_until_opt;
use crate::ledger::{Ledger, LedgerCompletion};
use crate::link::client::LinkEvent;
use crate::link::convert;
use crate::pipe::PipeSender;

/// Pipe events and link events, in one mailbox.
#[derive(Debug)]
pub enum AgentInput {
    Link(LinkEvent),
    PipeUp {
        account: AccountId,
    },
    PipeDown {
        account: AccountId,
    },
    FromEa {
        account: AccountId,
        msg: EaToAgent,
    },
    PipeWriteFailed {
        account: AccountId,
        command_id: CommandId,
    },
}

/// Where messages for terminals go. Must not block.
pub trait PipePort: Send + 'static {
    /// Queues `msg` for `account`'s terminal. `Err` means it was not queued: the agent task
    /// reports a refused command to the machine itself (so that report can never be lost to a
    /// full mailbox); a refused non-command is dropped. A message queued and then not written
    /// comes back later as [`AgentInput::PipeWriteFailed`].
    fn send(&mut self, account: &AccountId, msg: AgentToEa) -> Result<(), PipeRefused>;
}

/// A message the pipe did not take (full, closed, or an account without a pipe).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PipeRefused;

/// The durable ledger. Results come back as [`LedgerCompletion`]s on the channel given to
/// [`spawn_agent`].
pub trait LedgerPort: Send + 'static {
    /// Write and fsync `record`, then answer `(op, result)`.
    fn persist(&mut self, op: LedgerOpId, record: LedgerRecord);
    /// Fire-and-forget removal of a retained terminal record.
    fn delete(&mut self, command_id: CommandId);
}

/// The production port: the redb [`Ledger`] thread.
pub struct LedgerWriterPort {
    pub ledger: Ledger,
    pub done: mpsc::UnboundedSender<LedgerCompletion>,
}

impl LedgerPort for LedgerWriterPort {
    fn persist(&mut self, op: LedgerOpId, record: LedgerRecord) {
        self.ledger.submit(op, record, &self.done);
    }
    fn delete(&mut self, command_id: CommandId) {
        self.ledger.delete(command_id);
    }
}

/// The production pipes: the agent's per-account socket server. A command that cannot be
/// queued is refused, and the agent task reports it as a failed write (the machine backs off
/// and re-writes it).
pub struct PipeServerPort {
    pub sender: PipeSender,
}

impl PipePort for PipeServerPort {
    fn send(&mut self, account: &AccountId, msg: AgentToEa) -> Result<(), PipeRefused> {
        self.sender.send(account, msg).map_err(|_| PipeRefused)
    }
}

#[derive(Clone, Debug, Default)]
pub struct AgentStatus {
    pub metrics: AgentMetrics,
    pub link_online: bool,
    pub ledger_len: usize,
    pub active_len: usize,
    /// Commands waiting for a place in their slave's pipe window.
    pub pipe_queued: usize,
    pub pending_intents: usize,
    /// The agent delivery config the machine applies now (its defaults until the core sent one).
    pub delivery_config: AgentDeliveryConfig,
    /// `config_version` of the last `CoreHello` / `DeliveryHeartbeat` whose agent config the
    /// machine took (0 until then). An out-of-range config the machine refuses leaves it as is.
    pub config_version: u64,
    /// The last `DeliveryHeartbeat` received from the core, as received (core and agent parts).
    pub last_heartbeat: Option<DeliveryHeartbeat>,
}

#[derive(Clone)]
pub struct AgentHandle {
    pub inputs: mpsc::Sender<AgentInput>,
    pub status: watch::Receiver<Arc<AgentStatus>>,
}

struct AgentTask<P: PipePort, L: LedgerPort> {
    m: DeliveryManager,
    agent_id: String,
    token: String,
    clock: Clock,
    pipes: P,
    ledger: L,
    link: Option<(u64, mpsc::Sender<pb::AgentToCore>)>,
    status_tx: watch::Sender<Arc<AgentStatus>>,
    config_version: u64,
    last_heartbeat: Option<DeliveryHeartbeat>,
    /// Commands the pipes refused, reported to the machine on the next turn. Held here rather
    /// than sent through the mailbox: a full mailbox would lose the report, and the machine
    /// would wait for the ack of a command that was never written. Bounded by the commands
    /// one `drain` writes.
    refused_writes: Vec<(AccountId, CommandId)>,
}

/// Starts the agent task. `inputs` is its mailbox (made by the caller, so ports such as
/// [`PipeServerPort`] can hold the sender before the task exists).
pub fn spawn_agent<P: PipePort, L: LedgerPort>(
    m: DeliveryManager,
    agent_id: AgentId,
    token: String,
    pipes: P,
    ledger: L,
    ledger_results: mpsc::UnboundedReceiver<LedgerCompletion>,
    inputs: (mpsc::Sender<AgentInput>, mpsc::Receiver<AgentInput>),
) -> (AgentHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = inputs;
    let (status_tx, status_rx) = watch::channel(Arc::new(AgentStatus::default()));
    let task = AgentTask {
        m,
        agent_id: agent_id.to_string(),
        token,
        clock: Clock::new(),
        pipes,
        ledger,
        link: None,
        status_tx,
        config_version: 0,
        last_heartbeat: None,
        refused_writes: Vec::new(),
    };
    let join = tokio::spawn(task.run(rx, ledger_results));
    (
        AgentHandle {
            inputs: tx,
            status: status_rx,
        },
        join,
    )
}

impl<P: PipePort, L: LedgerPort> AgentTask<P, L> {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<AgentInput>,
        mut lrx: mpsc::UnboundedReceiver<LedgerCompletion>,
    ) {
        let mut publish = tokio::time::interval(std::time::Duration::from_millis(500));
        publish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self.m.poll_timeout().map(|d| self.clock.deadline(d));
            tokio::select! {
                biased;
                Some(LedgerCompletion { op, result }) = lrx.recv() => {
                    self.m.handle_ledger_result(self.clock.now(), op, result);
                }
                // Timers before inputs: under a sustained input stream (always ready) a
                // biased select would otherwise never fire the machine's deadlines or publish.
                _ = sleep_until_opt(deadline) => self.m.handle_timeout(self.clock.now()),
                _ = publish.tick() => self.publish(),
                // The task's own feedback before new inputs, after timers (a machine that
                // re-wrote at once into a full pipe must not starve its deadlines).
                _ = std::future::ready(()), if !self.refused_writes.is_empty() => {
                    let now = self.clock.now();
                    for (account, command_id) in std::mem::take(&mut self.refused_writes) {
                        self.m.handle_pipe_write_failed(now, account, command_id);
                    }
                }
                inp = rx.recv() => match inp {
                    Some(inp) => self.handle_input(inp),
                    None => { self.publish(); return; }
                },
            }
            self.drain();
        }
    }

    fn handle_input(&mut self, inp: AgentInput) {
        let now = self.clock.now();
        match inp {
            AgentInput::Link(LinkEvent::Up { epoch, tx }) => {
                if self.link.is_some() {
                    self.m.handle_core_disconnected(now);
                }
                self.link = Some((epoch, tx));
                self.m.handle_core_connected(now);
            }
            AgentInput::Link(LinkEvent::Message { epoch, msg }) => {
                if self.link.as_ref().is_some_and(|(e, _)| *e == epoch) {
                    // Observed only (status and /metrics); the machine decides what it takes.
                    let pushed = match &msg {
                        CoreToAgent::Heartbeat(hb) => {
                            self.last_heartbeat = Some(*hb);
                            Some(*hb)
                        }
                        // A CoreHello carries no config version on the wire (the heartbeat that
                        // follows it does): taking its 0 would make the version go backwards.
                        _ => None,
                    };
                    self.m.handle_from_core(now, msg);
                    if let Some(hb) = pushed {
                        if self.m.config() == hb.agent {
                            self.config_version = hb.config_version;
                        }
                    }
                }
            }
            AgentInput::Link(LinkEvent::Down { epoch }) => {
                if self.link.as_ref().is_some_and(|(e, _)| *e == epoch) {
                    self.link = None;
                    self.m.handle_core_disconnected(now);
                }
            }
            AgentInput::PipeUp { account } => self.m.handle_pipe_connected(now, account),
            AgentInput::PipeDown { account } => self.m.handle_pipe_closed(now, account),
            AgentInput::FromEa { account, msg } => self.m.handle_from_ea(now, account, msg),
            AgentInput::PipeWriteFailed {
                account,
                command_id,
            } => self.m.handle_pipe_write_failed(now, account, command_id),
        }
    }

    fn drain(&mut self) {
        while let Some(out) = self.m.poll() {
            match out {
                AgentOutput::Fired(f) => {
                    tracing::trace!(transition = f.transition.id, "agent transition")
                }
                AgentOutput::ToCore(msg) => {
                    let Some((_, tx)) = &self.link else { continue };
                    let wire = convert::agent_to_core_to_wire(&msg, &self.token, &self.agent_id);
                    if tx.try_send(wire).is_err() {
                        // The stream is full or gone: drop it; the machine re-sends what
                        // matters after the reconnect (its stage reports are re-derived).
                        tracing::warn!("core stream full or closed; dropping the link");
                        self.link = None;
                        self.m.handle_core_disconnected(self.clock.now());
                    }
                }
                AgentOutput::ToEa { account, msg } => {
                    let command_id = match &msg {
                        AgentToEa::Command(c) => Some(c.command_id.clone()),
                        _ => None,
                    };
                    if self.pipes.send(&account, msg).is_err() {
                        if let Some(command_id) = command_id {
                            self.refused_writes.push((account, command_id));
                        }
                    }
                }
                AgentOutput::PersistLedger { op, record } => self.ledger.persist(op, record),
                AgentOutput::DeleteLedger { command_id } => self.ledger.delete(command_id),
            }
        }
    }

    fn publish(&mut self) {
        self.status_tx.send_replace(Arc::new(AgentStatus {
            metrics: self.m.metrics().clone(),
            link_online: self.m.link_state() == LinkState::Online,
            ledger_len: self.m.ledger_len(),
            active_len: self.m.active_len(),
            pipe_queued: self.m.pipe_queued_len(),
            pending_intents: self.m.pending_intents(),
            delivery_config: self.m.config(),
            config_version: self.config_version,
            last_heartbeat: self.last_heartbeat,
        }));
    }
}
