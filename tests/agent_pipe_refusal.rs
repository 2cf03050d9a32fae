//! The agent task's report of a command its pipe refused: the machine must learn of every
//! refused write, even when the agent's mailbox is full (the report once went through that
//! mailbox with `try_send` and was lost, leaving the machine waiting for the ack of a command
//! that was never written, until the ack timeout).

use std::time::{Duration, Instant};

use echo_runtime::drivers::agent::{spawn_agent, AgentInput, LedgerPort, PipeServerPort};
use echo_runtime::ledger::LedgerCompletion;
use echo_runtime::pipe::{PipeServer, PipeServerConfig};
use echo_statemachine::agent::{
    AgentLimits, DeliveryManager, LedgerOpId, LedgerRecord, LedgerResult, LedgerState,
};
use echo_statemachine::config::AgentDeliveryConfig;
use echo_statemachine::ids::{AccountId, AgentId, CommandId, IntentId, TradeId};
use echo_statemachine::msg::{Command, CommandBody, Role};
use tokio::sync::mpsc;

/// A ledger that stores nothing and answers every write `Ok` at once.
struct AnsweringLedger(mpsc::UnboundedSender<LedgerCompletion>);

impl LedgerPort for AnsweringLedger {
    fn persist(&mut self, op: LedgerOpId, _: LedgerRecord) {
        let _ = self.0.send(LedgerCompletion {
            op,
            result: LedgerResult::Ok,
        });
    }
    fn delete(&mut self, _: CommandId) {}
}

fn buffered(n: u64, slave: &AccountId) -> LedgerRecord {
    let intent = IntentId::new(format!("i{n}"));
    LedgerRecord {
        seq: n,
        command: Command {
            command_id: CommandId::for_delivery(&intent, slave),
            intent_id: intent,
            trade_id: TradeId::new(format!("t{n}")),
            slave: slave.clone(),
            body: CommandBody::Close {
                slave_ticket: n as i64,
                volume: 0.0,
            },
        },
        state: LedgerState::Buffered,
        attempts: 0,
    }
}

/// Two buffered commands are written when the slave's pipe comes up; the pipe server has no
/// pipe for that account, so both writes are refused. The mailbox holds one input: after the
/// task took `PipeUp` it has room for one report, so the old code lost the second. With one
/// attempt allowed, each reported refusal parks its command at once; a lost report would park
/// it only at the ack timeout (ten minutes here).
#[tokio::test(flavor = "current_thread")]
async fn every_refused_command_write_reaches_the_machine_even_with_a_full_mailbox() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (pipes, _events) = PipeServer::bind(PipeServerConfig::new(dir.path(), vec![]))
        .await
        .expect("pipe server binds");
    let slave = AccountId::new("s1");
    let config = AgentDeliveryConfig {
        ack_timeout_ms: 600_000,
        max_retries: 1,
        ..AgentDeliveryConfig::default()
    };
    let machine = DeliveryManager::recover(
        AgentId::new("a1"),
        vec![(slave.clone(), Role::Slave)],
        config,
        AgentLimits::default(),
        vec![buffered(1, &slave), buffered(2, &slave)],
    );
    let (tx, rx) = mpsc::channel(1);
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let (handle, _join) = spawn_agent(
        machine,
        AgentId::new("a1"),
        "token".into(),
        PipeServerPort {
            sender: pipes.sender(),
        },
        AnsweringLedger(done_tx),
        done_rx,
        (tx.clone(), rx),
    );
    tx.send(AgentInput::PipeUp {
        account: slave.clone(),
    })
    .await
    .expect("agent task runs");

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut status = handle.status.clone();
    loop {
        let m = status.borrow_and_update().metrics.clone();
        if m.pipe_unavailable_total == 2 {
            assert_eq!(m.pipe_retry_total, 2, "{m:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the machine learned of {} of 2 refused writes: {m:?}",
            m.pipe_unavailable_total
        );
        let _ = tokio::time::timeout(Duration::from_millis(100), status.changed()).await;
    }
}
