//! The core task's published status (what `/metrics` serves) against the real core driver and
//! machine: once a master's intent is acknowledged, the status must not still say "no open
//! deliveries". End-to-end tests call the cluster settled when the masters are done and
//! `echo_core_open_deliveries` is 0; a zero published before the intent's deliveries existed
//! (the status used to be republished only every 500 ms) made them stop the cluster while
//! deliveries were still on their way, and report a delivery as lost.

use std::time::Duration;

use echo_proto::v1 as pb;
use echo_runtime::drivers::core::{spawn_core, CoreInput};
use echo_statemachine::config::Subscription;
use echo_statemachine::core::{Core, CoreConfig};
use echo_statemachine::ids::{AccountId, AgentId, IntentId, Symbol, TradeId};
use echo_statemachine::msg::{
    AgentHello, AgentToCore, IntentKind, Role, Side, TradeIntent, PROTOCOL_VERSION,
};
use tokio::sync::mpsc;

#[path = "support/instant_journal.rs"]
mod instant_journal;
use instant_journal::InstantJournal;

fn intent(seq: u64) -> TradeIntent {
    TradeIntent {
        origin: Default::default(),
        intent_id: IntentId::new(format!("m1-{seq}")),
        trade_id: TradeId::new(format!("m1-t{seq}")),
        master: AccountId::new("m1"),
        kind: IntentKind::Open,
        symbol: Symbol::new("EURUSD"),
        side: Side::Buy,
        volume: 1.0,
        price: 1.1,
        stop_loss: 1.0,
        take_profit: 1.2,
        master_ticket: 1000 + seq as i64,
        master_seq: seq,
        emitted_at_ms: 1,
        master_volume_before: 0.0,
    }
}

/// Waits for the master's agent to receive the intent's ack; `true` if it said OK.
async fn acked(rx: &mut mpsc::Receiver<Result<pb::CoreToAgent, tonic::Status>>) -> bool {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("an intent ack within 5 s")
            .expect("the core keeps the master's stream open")
            .expect("no error on the master's stream");
        if let Some(pb::core_to_agent::Body::IntentAck(a)) = msg.body {
            return a.result == pb::AckResult::Ok as i32;
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn status_shows_the_open_deliveries_of_an_acked_intent() {
    let (jtx, jrx) = mpsc::unbounded_channel();
    let (core, _join) = spawn_core(
        Core::new(CoreConfig::default()),
        "core-test".into(),
        InstantJournal(jtx),
        jrx,
        64,
    );
    core.inputs
        .send(CoreInput::Subscriptions(vec![
            Subscription::new("m1", "s1", 1.0),
            Subscription::new("m1", "s2", 1.0),
        ]))
        .await
        .expect("core task alive");
    // Only the master's agent connects: the slaves' agent is away, so the deliveries stay open.
    let (tx, mut rx) = mpsc::channel(64);
    core.inputs
        .send(CoreInput::Connected {
            conn: 1,
            agent: AgentId::new("agent-m"),
            tx,
            hello: AgentHello {
                agent_id: AgentId::new("agent-m"),
                protocol_version: PROTOCOL_VERSION,
                supports_lossless_delivery: true,
                accounts: vec![(AccountId::new("m1"), Role::Master)],
            },
        })
        .await
        .expect("core task alive");
    let mut status = core.status.clone();
    for seq in 1..=3 {
        core.inputs
            .send(CoreInput::FromAgent {
                conn: 1,
                agent: AgentId::new("agent-m"),
                msg: AgentToCore::Intent(intent(seq)),
            })
            .await
            .expect("core task alive");
        assert!(acked(&mut rx).await, "intent {seq} acked OK");
        // The ack left the core and neither slave's agent ever connected, so none of the
        // intent's deliveries can have finished: whatever the status says now must not be 0
        // (the gauge is exact at zero; between two republishes a non-zero count may lag).
        let open = status.borrow_and_update().open_deliveries;
        assert_ne!(
            open, 0,
            "published open deliveries after intent {seq} was acked"
        );
    }
}
