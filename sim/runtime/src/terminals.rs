//! The stand-ins around an agent on its host: the master and slave terminals (running the real
//! `IntentQueue` and `SlaveExecutor` machines), their files, the broker, the agent's pipes and
//! its ledger.
//!
//! Owns performing those machines' outputs against [`World`]'s durable state and feeding back
//! their results; the pipes are in-memory (the Unix-socket transport is not simulated) and the
//! ledger is an in-memory map standing in for redb (written before it is answered). It must
//! never decide whether to send, retry, execute or deduplicate anything: the machines do.

use std::collections::VecDeque;
use std::time::Duration;

use echo_runtime::drivers::agent::{AgentInput, LedgerPort, PipePort, PipeRefused};
use echo_runtime::drivers::clock::Clock;
use echo_runtime::ledger::LedgerCompletion;
use echo_statemachine::agent::{LedgerOpId, LedgerRecord, LedgerResult};
use echo_statemachine::ea::master::{self, IntentQueue, IntentQueueConfig};
use echo_statemachine::ea::slave::{
    self, BrokerOutcome, ExecutedRecord, SlaveConfig, SlaveExecutor,
};
use echo_statemachine::ids::{AccountId, CommandId};
use echo_statemachine::msg::{AgentToEa, CommandBody, EaToAgent, TradeIntent};
use tokio::sync::mpsc;

use crate::world::{Order, Shared, World};

/// The agent's pipes: every message for a terminal goes to its task on this host.
pub struct SimPipes {
    pub to: Vec<(AccountId, mpsc::UnboundedSender<AgentToEa>)>,
}

impl PipePort for SimPipes {
    fn send(&mut self, account: &AccountId, msg: AgentToEa) -> Result<(), PipeRefused> {
        // Taken even when the terminal task is gone (crashed host): as a socket write whose
        // connection died, the machine learns it from the pipe closing, not from a refusal.
        if let Some((_, tx)) = self.to.iter().find(|(a, _)| a == account) {
            let _ = tx.send(msg);
        }
        Ok(())
    }
}

/// The agent's ledger: one task applies records in order, then answers.
pub struct SimLedger {
    tx: mpsc::UnboundedSender<LedgerJob>,
}

enum LedgerJob {
    Persist(LedgerOpId, LedgerRecord),
    Delete(CommandId),
}

impl SimLedger {
    pub fn start(
        world: Shared,
        agent: String,
        done: mpsc::UnboundedSender<LedgerCompletion>,
    ) -> SimLedger {
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                // One fsync's worth of time.
                tokio::time::sleep(Duration::from_millis(1)).await;
                let mut w = world.get();
                let book = w.ledgers.entry(agent.clone()).or_default();
                match job {
                    LedgerJob::Persist(op, record) => {
                        book.insert(record.command.command_id.clone(), record);
                        drop(w);
                        let _ = done.send(LedgerCompletion {
                            op,
                            result: LedgerResult::Ok,
                        });
                    }
                    LedgerJob::Delete(id) => {
                        book.remove(&id);
                    }
                }
            }
        });
        SimLedger { tx }
    }
}

impl LedgerPort for SimLedger {
    fn persist(&mut self, op: LedgerOpId, record: LedgerRecord) {
        let _ = self.tx.send(LedgerJob::Persist(op, record));
    }
    fn delete(&mut self, command_id: CommandId) {
        let _ = self.tx.send(LedgerJob::Delete(command_id));
    }
}

/// Writes `msg` on the terminal's pipe to the agent; `false` once the agent is gone.
async fn to_agent(agent: &mpsc::Sender<AgentInput>, account: &AccountId, msg: EaToAgent) -> bool {
    agent
        .send(AgentInput::FromEa {
            account: account.clone(),
            msg,
        })
        .await
        .is_ok()
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The master terminal: emits `plan` (resuming after what its file already holds) through
/// the real IntentQueue.
pub async fn run_master(
    world: Shared,
    account: AccountId,
    agent: mpsc::Sender<AgentInput>,
    mut from_agent: mpsc::UnboundedReceiver<AgentToEa>,
    plan: Vec<TradeIntent>,
    every: Duration,
) {
    let clock = Clock::new();
    let (durable, mut next) = {
        let w = world.get();
        let mut d: Vec<TradeIntent> = w.master_file.values().cloned().collect();
        d.sort_by_key(|i| i.master_seq);
        (d, w.emitted.len())
    };
    let mut q = IntentQueue::recover(IntentQueueConfig::default(), durable);
    let mut done: VecDeque<master::OpId> = VecDeque::new();
    if agent
        .send(AgentInput::PipeUp {
            account: account.clone(),
        })
        .await
        .is_err()
    {
        return;
    }
    q.handle_pipe_connected(clock.now());
    let mut tick = tokio::time::interval(every);
    loop {
        while let Some(out) = q.poll() {
            match out {
                master::Output::PersistAppend { op, intent } => {
                    let mut w = world.get();
                    if w.master_file
                        .insert(intent.intent_id.clone(), intent.clone())
                        .is_none()
                        && !w.emitted.iter().any(|e| e.intent_id == intent.intent_id)
                    {
                        w.log(format!(
                            "master emitted {} seq={}",
                            intent.intent_id, intent.master_seq
                        ));
                        w.emitted.push(intent);
                    }
                    done.push_back(op);
                }
                master::Output::PersistRemove { op, intent_id, .. } => {
                    world.get().master_file.remove(&intent_id);
                    done.push_back(op);
                }
                master::Output::ToAgent(msg) => {
                    if !to_agent(&agent, &account, msg).await {
                        return;
                    }
                }
                master::Output::GaveUp { intent_id, .. } => {
                    world.log(format!("master gave up {intent_id}"))
                }
                master::Output::Failed { intent_id, .. } => {
                    world.log(format!("master refused {intent_id}"))
                }
                master::Output::Fired(_) => {}
            }
        }
        if let Some(op) = done.pop_front() {
            q.handle_persist_result(clock.now(), op, Ok(()));
            continue;
        }
        let deadline = q.poll_timeout().map(|d| clock.deadline(d));
        tokio::select! {
            biased;
            msg = from_agent.recv() => match msg {
                Some(AgentToEa::IntentAck(ack)) => q.handle_ack(clock.now(), ack),
                Some(AgentToEa::DeliveryConfig(c)) => q.handle_delivery_config(clock.now(), c),
                Some(_) => {}
                None => return,
            },
            _ = sleep_until_opt(deadline) => q.handle_timeout(clock.now()),
            _ = tick.tick() => {
                if let Some(intent) = plan.get(next) {
                    if q.handle_emit(clock.now(), intent.clone()).is_ok() {
                        next += 1;
                    }
                }
            }
        }
    }
}

/// The slave terminal and its broker.
pub async fn run_slave(
    world: Shared,
    account: AccountId,
    agent: mpsc::Sender<AgentInput>,
    mut from_agent: mpsc::UnboundedReceiver<AgentToEa>,
) {
    let clock = Clock::new();
    let durable: Vec<ExecutedRecord> = world.get().slave_file.values().cloned().collect();
    let mut x = SlaveExecutor::recover(SlaveConfig::new(account.as_str()), durable);
    let mut done: VecDeque<slave::OpId> = VecDeque::new();
    // (command id, leg of a split or None, the broker's answer)
    let (broker_tx, mut broker_rx) =
        mpsc::unbounded_channel::<(CommandId, Option<u32>, BrokerOutcome)>();
    if agent
        .send(AgentInput::PipeUp {
            account: account.clone(),
        })
        .await
        .is_err()
    {
        return;
    }
    loop {
        while let Some(out) = x.poll() {
            match out {
                slave::Output::ToAgent(msg) => {
                    if !to_agent(&agent, &account, msg).await {
                        return;
                    }
                }
                slave::Output::PersistExecuting { op, command } => {
                    world.get().slave_file.insert(
                        command.command_id.clone(),
                        ExecutedRecord {
                            command,
                            result: None,
                        },
                    );
                    done.push_back(op);
                }
                slave::Output::PersistExecuted {
                    op,
                    command_id,
                    result,
                } => {
                    if let Some(r) = world.get().slave_file.get_mut(&command_id) {
                        r.result = Some(result);
                    }
                    done.push_back(op);
                }
                slave::Output::PersistCancelled {
                    op,
                    command,
                    result,
                } => {
                    world.get().slave_file.insert(
                        command.command_id.clone(),
                        ExecutedRecord {
                            command,
                            result: Some(result),
                        },
                    );
                    done.push_back(op);
                }
                slave::Output::PlaceOrder { command_id, body } => {
                    let outcome = broker(&mut world.get(), &command_id, &command_id, Some(&body));
                    let tx = broker_tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        let _ = tx.send((command_id, None, outcome));
                    });
                }
                slave::Output::QueryOrder { command_id } => {
                    let outcome = broker(&mut world.get(), &command_id, &command_id, None);
                    let _ = broker_tx.send((command_id, None, outcome));
                }
                slave::Output::PlaceLeg {
                    command_id,
                    leg,
                    order_id,
                    body,
                } => {
                    let outcome = broker(&mut world.get(), &order_id, &command_id, Some(&body));
                    let tx = broker_tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        let _ = tx.send((command_id, Some(leg), outcome));
                    });
                }
                slave::Output::QueryLeg {
                    command_id,
                    leg,
                    order_id,
                } => {
                    let outcome = broker(&mut world.get(), &order_id, &command_id, None);
                    let _ = broker_tx.send((command_id, Some(leg), outcome));
                }
                slave::Output::Fired(_) => {}
            }
        }
        if let Some(op) = done.pop_front() {
            x.handle_persist_result(clock.now(), op, Ok(()));
            continue;
        }
        let deadline = x.poll_timeout().map(|d| clock.deadline(d));
        tokio::select! {
            biased;
            Some((id, leg, outcome)) = broker_rx.recv() => match leg {
                Some(leg) => x.handle_leg_result(clock.now(), id, leg, outcome),
                None => x.handle_broker_result(clock.now(), id, outcome),
            },
            msg = from_agent.recv() => match msg {
                Some(msg) => x.handle_from_agent(clock.now(), msg),
                None => return,
            },
            _ = sleep_until_opt(deadline) => x.handle_timeout(clock.now()),
        }
    }
}

/// The broker: idempotent by client order id (`id`: the command id, or a split leg's of
/// command `command_id`). `body: None` is a query.
fn broker(
    w: &mut World,
    id: &CommandId,
    command_id: &CommandId,
    body: Option<&CommandBody>,
) -> BrokerOutcome {
    if let Some(o) = w.orders.iter().find(|o| &o.order_id == id) {
        return BrokerOutcome::Filled {
            ticket: o.ticket,
            price: 1.1,
            volume: o.volume,
        };
    }
    let Some(body) = body else {
        return BrokerOutcome::Rejected {
            reason: "no such client order id".into(),
        };
    };
    let Some(command) = w.slave_file.get(command_id).map(|r| r.command.clone()) else {
        return BrokerOutcome::Rejected {
            reason: "order without a write-ahead record".into(),
        };
    };
    // This world's script opens and closes only; a pending order (never scripted here) would
    // keep its ticket through modify, cancel and trigger.
    let ticket = match body {
        CommandBody::Execute { .. } | CommandBody::PlacePending { .. } => {
            w.next_ticket += 1;
            w.next_ticket
        }
        other => other.slave_ticket(),
    };
    w.log(format!(
        "broker filled {} intent={} trade={}",
        id, command.intent_id, command.trade_id
    ));
    let filled = volume(body);
    w.orders.push(Order {
        order_id: id.clone(),
        command,
        ticket,
        volume: filled,
    });
    BrokerOutcome::Filled {
        ticket,
        price: 1.1,
        volume: filled,
    }
}

fn volume(body: &CommandBody) -> f64 {
    match body {
        CommandBody::Execute { volume, .. }
        | CommandBody::Close { volume, .. }
        | CommandBody::PlacePending { volume, .. } => *volume,
        // Never placed: the slave executor resolves a fraction to lots first.
        CommandBody::Modify { .. }
        | CommandBody::ClosePart { .. }
        | CommandBody::ModifyPending { .. }
        | CommandBody::ResolvePending { .. }
        | CommandBody::TriggerPending { .. } => 0.0,
    }
}
