//! The core driver: one tokio task that owns the [`Core`] machine and the agent connections.
//!
//! It is also the connection supervisor — the only owner of every agent's outbound sender, fed
//! through its mailbox, so no lock sits on the hot path. After every input it drains the
//! machine's outputs (messages to agents, journal writes, log events) and re-arms the one timer
//! from `poll_timeout()`. It must never decide anything about a trade: a slow agent is cut off
//! (its deliveries wait in the machine for the reconnect), a full journal queue answers
//! "retryable failure" (the machine retries) — the machine decides what either means.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use echo_proto::v1 as pb;
use echo_statemachine::config::{AgentDeliveryConfig, DeliveryConfig, Subscription};
use echo_statemachine::core::{Core, CoreLog, CoreMetrics, CoreOutput, JournalWrite, OpId};
use echo_statemachine::ids::{AgentId, CommandId};
use echo_statemachine::msg::{AgentHello, AgentToCore};
use tokio::sync::{mpsc, watch};

use super::clock::{unix_ms, Clock};
use crate::journal::Completion;
use crate::link::convert;

/// The outbound half of one agent's stream.
pub type AgentTx = mpsc::Sender<Result<pb::CoreToAgent, tonic::Status>>;

/// Everything the core task is told, besides journal results.
#[derive(Debug)]
pub enum CoreInput {
    /// An authenticated stream opened with this hello.
    Connected {
        conn: u64,
        agent: AgentId,
        tx: AgentTx,
        hello: AgentHello,
    },
    FromAgent {
        conn: u64,
        agent: AgentId,
        msg: AgentToCore,
    },
    Disconnected {
        conn: u64,
        agent: AgentId,
    },
    /// Live delivery configuration (validated by the config layer).
    DeliveryConfig {
        core: DeliveryConfig,
        agent: AgentDeliveryConfig,
    },
    Subscriptions(Vec<Subscription>),
}

/// Where journal writes go. Results come back as [`Completion`]s on the unbounded channel
/// given to [`spawn_core`]: they are bounded by the machine's own in-flight caps, and must
/// never be dropped or block the task that produces them.
pub trait JournalPort: Send + 'static {
    /// Queue one write. Must not block; if the write cannot even be queued, report
    /// `JournalResult::Failed { retryable: true }` for it through the results channel.
    fn submit(&mut self, op: OpId, write: JournalWrite);
}

/// The production port: the group-commit writer of [`crate::journal::Journal`].
pub struct JournalWriterPort {
    pub journal: crate::journal::Journal,
    pub done: mpsc::UnboundedSender<Completion>,
}

impl JournalPort for JournalWriterPort {
    fn submit(&mut self, op: OpId, write: JournalWrite) {
        // A full queue answers Failed{retryable} at once: the machine's retry is the backoff.
        self.journal.try_submit(op, write, &self.done);
    }
}

/// A snapshot of the core for `/metrics`, `/readyz` and the operator.
#[derive(Clone, Debug, Default)]
pub struct CoreStatus {
    pub metrics: CoreMetrics,
    pub queue_depths: Vec<u32>,
    pub open_deliveries: usize,
    /// Deliveries waiting for a place in their agent's send window (`core.delivery.T38`).
    pub queued_deliveries: usize,
    pub open_intents: usize,
    pub agents_connected: usize,
    /// Age of the oldest unfinished delivery per stage name, ms.
    pub pending_age_ms: BTreeMap<&'static str, u64>,
    /// Streams cut because the agent did not read fast enough.
    pub slow_agents_cut: u64,
    /// Agent messages that arrived on a stream the supervisor had already replaced.
    pub stale_stream_messages: u64,
    pub journal_down: bool,
    /// Inputs the core task has handled (agent messages, connects, config, journal results,
    /// timer firings): the load the one core task carries (benchmarks read it).
    pub inputs_handled: u64,
}

/// How the rest of the process talks to the core task.
#[derive(Clone)]
pub struct CoreHandle {
    pub inputs: mpsc::Sender<CoreInput>,
    pub status: watch::Receiver<Arc<CoreStatus>>,
}

struct Conn {
    id: u64,
    tx: AgentTx,
}

struct CoreTask<J: JournalPort> {
    core: Core,
    core_id: String,
    clock: Clock,
    journal: J,
    conns: HashMap<AgentId, Conn>,
    status: CoreStatus,
    first_seen: HashMap<CommandId, tokio::time::Instant>,
    status_tx: watch::Sender<Arc<CoreStatus>>,
}

/// Starts the core task. `journal_results` is where the [`JournalPort`] answers.
pub fn spawn_core<J: JournalPort>(
    core: Core,
    core_id: String,
    journal: J,
    journal_results: mpsc::UnboundedReceiver<Completion>,
    inputs_cap: usize,
) -> (CoreHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(inputs_cap);
    let (status_tx, status_rx) = watch::channel(Arc::new(CoreStatus::default()));
    let task = CoreTask {
        core,
        core_id,
        clock: Clock::new(),
        journal,
        conns: HashMap::new(),
        status: CoreStatus::default(),
        first_seen: HashMap::new(),
        status_tx,
    };
    let join = tokio::spawn(task.run(rx, journal_results));
    (
        CoreHandle {
            inputs: tx,
            status: status_rx,
        },
        join,
    )
}

impl<J: JournalPort> CoreTask<J> {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<CoreInput>,
        mut jrx: mpsc::UnboundedReceiver<Completion>,
    ) {
        let mut publish = tokio::time::interval(std::time::Duration::from_millis(500));
        publish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut inputs_open = true;
        #[cfg(feature = "rt-mutants")]
        let mut stale: Option<Option<tokio::time::Instant>> = None;
        loop {
            let deadline = self.core.poll_timeout().map(|d| self.clock.deadline(d));
            #[cfg(feature = "rt-mutants")]
            let deadline = match stale {
                Some(old) if crate::mutants::is(crate::mutants::Mutant::TimerNotRearmed) => old,
                _ => deadline,
            };
            #[cfg(feature = "rt-mutants")]
            {
                stale = Some(deadline);
            }
            tokio::select! {
                biased;
                Some(Completion { op, result }) = jrx.recv() => {
                    self.status.inputs_handled += 1;
                    self.core.handle_journal_result(self.clock.now(), op, result);
                }
                // Timers before inputs: under a sustained input stream (always ready) a
                // biased select would otherwise never fire the machine's deadlines or publish.
                _ = sleep_until_opt(deadline) => {
                    self.status.inputs_handled += 1;
                    self.core.handle_timeout(self.clock.now());
                    #[cfg(feature = "rt-mutants")]
                    {
                        // The timer that fired is never re-armed.
                        stale = Some(None);
                    }
                }
                _ = publish.tick() => self.publish(),
                inp = rx.recv(), if inputs_open => match inp {
                    Some(inp) => {
                        self.status.inputs_handled += 1;
                        self.handle_input(inp);
                    }
                    None => inputs_open = false,
                },
            }
            // Before any output leaves (an intent's ack above all): a status that says "no
            // open deliveries" must never be older than the last delivery created, or a reader
            // that saw the masters acked and the gauge at 0 (the end-to-end tests' "settled")
            // would stop the cluster while deliveries are still on their way.
            if (self.core.open_deliveries() == 0) != (self.status.open_deliveries == 0) {
                self.publish();
            }
            self.drain();
            if !inputs_open && self.conns.is_empty() {
                // Every input source is gone: nothing can reach the machine any more.
                self.publish();
                return;
            }
        }
    }

    fn handle_input(&mut self, inp: CoreInput) {
        let now = self.clock.now();
        match inp {
            CoreInput::Connected {
                conn,
                agent,
                tx,
                hello,
            } => {
                if let Some(old) = self.conns.remove(&agent) {
                    tracing::info!(agent = %agent, old_conn = old.id, new_conn = conn, "agent reconnected; previous stream replaced");
                    self.core.handle_agent_disconnected(now, &agent);
                }
                self.conns.insert(agent.clone(), Conn { id: conn, tx });
                self.core
                    .handle_agent_message(now, &agent, AgentToCore::Hello(hello));
            }
            CoreInput::FromAgent { conn, agent, msg } => {
                if self.conns.get(&agent).is_some_and(|c| c.id == conn) {
                    self.core.handle_agent_message(now, &agent, msg);
                } else {
                    self.status.stale_stream_messages += 1;
                }
            }
            CoreInput::Disconnected { conn, agent } => {
                if self.conns.get(&agent).is_some_and(|c| c.id == conn) {
                    self.conns.remove(&agent);
                    self.core.handle_agent_disconnected(now, &agent);
                }
            }
            CoreInput::DeliveryConfig { core, agent } => {
                self.core.handle_delivery_config(now, core, agent);
            }
            CoreInput::Subscriptions(subs) => self.core.handle_subscriptions(now, subs),
        }
    }

    fn drain(&mut self) {
        while let Some(out) = self.core.poll() {
            match out {
                CoreOutput::Fired(f) => {
                    tracing::trace!(transition = f.transition.id, "core transition");
                }
                CoreOutput::Send { agent, msg } => {
                    let Some(conn) = self.conns.get(&agent) else {
                        // The machine tracks liveness itself; a message to a gone agent is
                        // re-sent by its own retry once the agent is back.
                        continue;
                    };
                    let mut cut = false;
                    for wire in convert::core_to_agent_to_wire(&msg, &self.core_id, unix_ms()) {
                        if conn.tx.try_send(Ok(wire)).is_err() {
                            cut = true;
                            break;
                        }
                    }
                    if cut {
                        tracing::warn!(agent = %agent, "agent stream full or closed; cutting it (its deliveries wait for the reconnect)");
                        self.status.slow_agents_cut += 1;
                        self.conns.remove(&agent);
                        self.core
                            .handle_agent_disconnected(self.clock.now(), &agent);
                    }
                }
                CoreOutput::Journal { op, write } => self.journal.submit(op, write),
                CoreOutput::Log(l) => log_core(&l, &mut self.status),
            }
        }
    }

    fn publish(&mut self) {
        let now = tokio::time::Instant::now();
        let views = self.core.delivery_views();
        let mut ages: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut seen = HashMap::with_capacity(views.len());
        let mut queued = 0;
        for v in &views {
            if v.state == "Queued" {
                queued += 1;
            }
            let first = self.first_seen.get(&v.command_id).copied().unwrap_or(now);
            seen.insert(v.command_id.clone(), first);
            let age = now.saturating_duration_since(first).as_millis() as u64;
            let e = ages.entry(v.stage.name()).or_insert(0);
            *e = (*e).max(age);
        }
        self.first_seen = seen;
        self.status.metrics = self.core.metrics().clone();
        self.status.queue_depths = self.core.queue_depths().to_vec();
        self.status.open_deliveries = self.core.open_deliveries();
        self.status.queued_deliveries = queued;
        self.status.open_intents = self.core.open_intents();
        self.status.agents_connected = self.conns.len();
        self.status.pending_age_ms = ages;
        self.status_tx.send_replace(Arc::new(self.status.clone()));
    }
}

fn log_core(l: &CoreLog, status: &mut CoreStatus) {
    match l {
        CoreLog::DeliveryFailed {
            intent_id,
            command_id,
            reason,
        } => tracing::warn!(
            event = "core_delivery_failed",
            intent_id = %intent_id,
            command_id = command_id.as_ref().map(|c| c.as_str()).unwrap_or(""),
            reason = reason.name(),
            "delivery failed"
        ),
        CoreLog::JournalDown => {
            status.journal_down = true;
            tracing::error!(
                event = "core.journal.down",
                "journal down past max_retries: fan-out stopped"
            )
        }
        CoreLog::JournalUp => {
            status.journal_down = false;
            tracing::info!(
                event = "core.journal.up",
                "journal answers again: fan-out resumed"
            )
        }
        CoreLog::AgentOffline { agent } => {
            tracing::warn!(event = "core.agent.offline", agent = %agent, "agent offline")
        }
        CoreLog::ProtocolViolation { agent, what } => tracing::warn!(
            event = "core.protocol_violation",
            agent = %agent,
            what = *what,
            "agent broke the protocol"
        ),
    }
}

/// Sleeps until `at`, or forever when there is no deadline.
pub(crate) async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
