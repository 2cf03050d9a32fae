//! The real core machine driven over the real journal (SQLite and Postgres): every
//! `CoreOutput::Journal` goes to the journal, every answer comes back through
//! `handle_journal_result`; then the core "crashes" and is rebuilt from `load()` alone.
//! A minimal stand-in for the core driver, to show the journal gives the machine what it needs.

#[path = "journal_support.rs"]
#[macro_use]
mod support;

use std::time::Duration;

use echo_runtime::journal::{Completion, Journal};
use echo_statemachine::config::{AgentDeliveryConfig, DeliveryConfig, RouterConfig, Subscription};
use echo_statemachine::core::{Core, CoreConfig, CoreOutput};
use echo_statemachine::ids::{AccountId, AgentId, CommandId, IntentId, TradeId};
use echo_statemachine::msg::{
    AckResult, AgentHello, AgentToCore, BrokerStatus, CoreToAgent, ExecutionResult, IntentKind,
    Role, PROTOCOL_VERSION,
};
use echo_statemachine::time::Instant;
use support::*;
use tokio::sync::mpsc;

fn cfg() -> CoreConfig {
    CoreConfig {
        router: RouterConfig::default(),
        delivery: DeliveryConfig::default(),
        agent_delivery: AgentDeliveryConfig::default(),
        subscriptions: vec![
            Subscription::new("m1", "s1", 2.0),
            Subscription::new("m1", "s2", 1.0),
        ],
        recent_intents: 16,
    }
}

fn hello(agent: &str, accounts: &[(&str, Role)]) -> AgentToCore {
    AgentToCore::Hello(AgentHello {
        agent_id: AgentId::new(agent),
        protocol_version: PROTOCOL_VERSION,
        supports_lossless_delivery: true,
        accounts: accounts
            .iter()
            .map(|(a, r)| (AccountId::new(a), *r))
            .collect(),
    })
}

/// The driver's inner loop, cut down: drain outputs, send journal writes, feed answers back
/// until nothing is owed. Returns what the core sent to agents.
struct Drive {
    core: Core,
    journal: Journal,
    done_tx: mpsc::UnboundedSender<Completion>,
    done_rx: mpsc::UnboundedReceiver<Completion>,
    now: Instant,
}

impl Drive {
    fn new(core: Core, journal: Journal) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Drive {
            core,
            journal,
            done_tx,
            done_rx,
            now: Instant::ZERO,
        }
    }

    async fn input(&mut self, agent: &str, msg: AgentToCore) -> Vec<(AgentId, CoreToAgent)> {
        self.core
            .handle_agent_message(self.now, &AgentId::new(agent), msg);
        self.settle().await
    }

    async fn settle(&mut self) -> Vec<(AgentId, CoreToAgent)> {
        let mut sent = Vec::new();
        let mut owed = 0usize;
        loop {
            while let Some(o) = self.core.poll() {
                match o {
                    CoreOutput::Journal { op, write } => {
                        owed += 1;
                        self.journal.submit(op, write, &self.done_tx).await;
                    }
                    CoreOutput::Send { agent, msg } => sent.push((agent, msg)),
                    _ => {}
                }
            }
            if owed == 0 {
                return sent;
            }
            let c = tokio::time::timeout(Duration::from_secs(30), self.done_rx.recv())
                .await
                .expect("journal answers")
                .expect("channel");
            owed -= 1;
            self.core.handle_journal_result(self.now, c.op, c.result);
        }
    }
}

fn commands(sent: &[(AgentId, CoreToAgent)]) -> Vec<CommandId> {
    sent.iter()
        .filter_map(|(_, m)| match m {
            CoreToAgent::Command(c) => Some(c.command_id.clone()),
            _ => None,
        })
        .collect()
}

async fn core_recovers_from_the_journal_alone(kind: Kind) {
    let env = Env::new(kind).await;
    let j = env.open().await;
    let core = Core::recover(cfg(), j.load().await.expect("load"), Instant::ZERO);
    let mut d = Drive::new(core, j.clone());
    d.input("am", hello("am", &[("m1", Role::Master)])).await;
    d.input(
        "as",
        hello("as", &[("s1", Role::Slave), ("s2", Role::Slave)]),
    )
    .await;
    let sent = d
        .input(
            "am",
            AgentToCore::Intent(intent("i1", "T1", IntentKind::Open, 1)),
        )
        .await;
    // CORE_ACCEPTED only after the journal answered; then both slaves get their command.
    let acked = sent.iter().any(|(a, m)| {
        a.as_str() == "am"
            && matches!(m, CoreToAgent::IntentAck(k) if k.intent_id == IntentId::new("i1") && k.result == AckResult::Ok)
    });
    assert!(acked, "no CORE_ACCEPTED: {sent:?}");
    let cmds = commands(&sent);
    assert_eq!(cmds.len(), 2, "{sent:?}");
    // s1 executes; s2 has not answered when the core dies.
    let s1 = cmds
        .iter()
        .find(|c| c.as_str().ends_with("@s1"))
        .expect("s1 command")
        .clone();
    d.input(
        "as",
        AgentToCore::ExecutionResult(ExecutionResult {
            reason: None,
            command_id: s1.clone(),
            trade_id: TradeId::new("t1"),
            slave: AccountId::new("s1"),
            slave_ticket: 4242,
            fill_price: 1.1,
            filled_volume: 1.0,
            status: BrokerStatus::Filled,
            legs: Vec::new(),
        }),
    )
    .await;
    // Crash: the machine is gone, the journal is closed; a new process opens it again.
    drop(d);
    j.close().await;
    let j2 = env.open().await;
    let durable = j2.load().await.expect("load after crash");
    assert_eq!(durable.unfinished.len(), 1, "{durable:?}");
    assert!(durable.unfinished[0].command_id.as_str().ends_with("@s2"));
    assert_eq!(
        durable.open_tickets,
        vec![(TradeId::new("t1"), AccountId::new("s1"), 4242)]
    );
    let core = Core::recover(cfg(), durable, Instant::ZERO);
    assert_eq!(core.delivery_views().len(), 1);
    let mut d = Drive::new(core, j2.clone());
    // The slave's agent comes back: the unfinished delivery is resumed, and only that one.
    let sent = d
        .input(
            "as",
            hello("as", &[("s1", Role::Slave), ("s2", Role::Slave)]),
        )
        .await;
    let resumed = commands(&sent);
    assert_eq!(resumed.len(), 1, "{sent:?}");
    assert!(resumed[0].as_str().ends_with("@s2"));
    j2.close().await;
}

per_backend!(core_recovers_from_the_journal_alone);
