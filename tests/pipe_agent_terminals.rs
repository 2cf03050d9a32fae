//! The real agent machine (DeliveryManager) driven over the real pipe listener, with a reference
//! master and a reference slave terminal on real Unix sockets, and a minimal in-test core that
//! accepts every intent and turns it into the slave's command. It checks that the listener's
//! events and sender fit the machine's inputs and outputs one to one, and that every intent
//! the master emitted is executed at the slave exactly once, in per-trade order.
#![cfg(unix)]

#[path = "pipe_support.rs"]
mod support;

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use echo_runtime::machines::agent::{AgentLimits, AgentOutput, DeliveryManager, LedgerResult};
use echo_runtime::machines::config::{AgentDeliveryConfig, DeliveryConfig};
use echo_runtime::machines::ids::{AccountId, AgentId, CommandId, TradeId};
use echo_runtime::machines::msg::{
    AckResult, AgentToCore, BrokerStatus, Command, CommandBody, CoreHello, CoreToAgent,
    DeliveryHeartbeat, IntentKind, PendingResolution, PendingType, Role, TradeIntent,
    TradeIntentAck,
};
use echo_runtime::machines::Instant;
use echo_runtime::pipe::{PipeEvent, PipeServer, PipeServerConfig};
use echo_runtime::terminal::{run_until, Outcome};
use support::{rows, temp_dir, terminal_args};

/// The core's side, reduced to what one master → one slave needs: accept, then one command per
/// trade at a time, modify/close addressed to the ticket the open reported.
#[derive(Default)]
struct MiniCore {
    /// Intents taken (the real core dedupes by intent id in its journal).
    seen: std::collections::BTreeSet<echo_runtime::machines::ids::IntentId>,
    waiting: BTreeMap<TradeId, VecDeque<TradeIntent>>,
    in_flight: BTreeMap<TradeId, CommandId>,
    tickets: BTreeMap<TradeId, i64>,
    executed: Vec<(CommandId, BrokerStatus)>,
}

impl MiniCore {
    fn on_intent(&mut self, i: TradeIntent, out: &mut Vec<CoreToAgent>) {
        out.push(CoreToAgent::IntentAck(TradeIntentAck {
            intent_id: i.intent_id.clone(),
            trade_id: i.trade_id.clone(),
            result: AckResult::Ok,
            error: None,
            retry_after_ms: 0,
        }));
        if self.seen.insert(i.intent_id.clone()) {
            self.waiting
                .entry(i.trade_id.clone())
                .or_default()
                .push_back(i.clone());
        }
        self.pump(&i.trade_id, out);
    }

    fn pump(&mut self, trade: &TradeId, out: &mut Vec<CoreToAgent>) {
        if self.in_flight.contains_key(trade) {
            return;
        }
        let Some(i) = self.waiting.get_mut(trade).and_then(VecDeque::pop_front) else {
            return;
        };
        let ticket = self.tickets.get(trade).copied().unwrap_or(0);
        let body = match i.kind {
            IntentKind::Open => CommandBody::Execute {
                terms: Default::default(),
                catch_up: false,
                symbol: i.symbol.clone(),
                side: i.side,
                volume: i.volume,
                price: i.price,
                stop_loss: i.stop_loss,
                take_profit: i.take_profit,
            },
            IntentKind::Modify => CommandBody::Modify {
                slave_ticket: ticket,
                stop_loss: i.stop_loss,
                take_profit: i.take_profit,
            },
            IntentKind::PartialClose => CommandBody::Close {
                slave_ticket: ticket,
                volume: i.volume,
            },
            IntentKind::Close => CommandBody::Close {
                slave_ticket: ticket,
                volume: 0.0,
            },
            // The rate workload's pending orders: placed, then triggered.
            IntentKind::PlaceLimit | IntentKind::PlaceStop => CommandBody::PlacePending {
                symbol: i.symbol.clone(),
                side: i.side,
                order_type: if i.kind == IntentKind::PlaceLimit {
                    PendingType::Limit
                } else {
                    PendingType::Stop
                },
                volume: i.volume,
                price: i.price,
                stop_loss: i.stop_loss,
                take_profit: i.take_profit,
                terms: Default::default(),
            },
            IntentKind::PendingModify => CommandBody::ModifyPending {
                slave_ticket: ticket,
                price: i.price,
                stop_loss: i.stop_loss,
                take_profit: i.take_profit,
            },
            IntentKind::PendingCancel | IntentKind::PendingTrigger => CommandBody::ResolvePending {
                slave_ticket: ticket,
                resolution: if i.kind == IntentKind::PendingCancel {
                    PendingResolution::Cancel
                } else {
                    PendingResolution::Trigger
                },
                symbol: i.symbol.clone(),
                side: i.side,
                price: i.price,
                stop_loss: i.stop_loss,
                take_profit: i.take_profit,
                terms: Default::default(),
            },
        };
        let slave = AccountId::new("S1");
        let c = Command {
            command_id: CommandId::for_delivery(&i.intent_id, &slave),
            intent_id: i.intent_id.clone(),
            trade_id: i.trade_id.clone(),
            slave,
            body,
        };
        self.in_flight.insert(trade.clone(), c.command_id.clone());
        out.push(CoreToAgent::Command(c));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_machine_pipes_master_intents_to_the_slave_exactly_once() {
    let dir = temp_dir("pipe-e2e");
    let _rm_dir = support::Cleanup(dir.clone());
    let (sock_dir, mdata, sdata) = (dir.join("sock"), dir.join("m"), dir.join("s"));
    let accounts = vec![
        (AccountId::new("M1"), Role::Master),
        (AccountId::new("S1"), Role::Slave),
    ];
    let (server, mut events) = PipeServer::bind(PipeServerConfig::new(&sock_dir, accounts.clone()))
        .await
        .expect("bind");
    let pipes = server.sender();
    let fast = AgentDeliveryConfig {
        ack_timeout_ms: 200,
        retry_backoff_ms: 20,
        ..AgentDeliveryConfig::default()
    };
    let mut dm = DeliveryManager::new(AgentId::new("A1"), accounts, fast, AgentLimits::default());
    let start = std::time::Instant::now();
    let now = || Instant(start.elapsed().as_nanos() as u64);
    dm.handle_core_connected(now());
    dm.handle_from_core(
        now(),
        CoreToAgent::Hello(CoreHello {
            protocol_version: 1,
            accepted: true,
            compat_mode: false,
            reason: None,
            delivery: DeliveryHeartbeat {
                core: DeliveryConfig::default(),
                agent: fast,
                config_version: 1,
            },
        }),
    );

    let master = tokio::spawn(run_until(
        terminal_args(
            "master",
            "M1",
            &sock_dir.join("M1.sock"),
            &mdata,
            &[
                "--rate",
                "300/s",
                "--trades",
                "4",
                "--modifies",
                "1",
                "--partials",
                "1",
                "--exit-when-done",
            ],
        ),
        std::future::pending(),
    ));
    let slave = tokio::spawn(run_until(
        terminal_args("slave", "S1", &sock_dir.join("S1.sock"), &sdata, &[]),
        std::future::pending(),
    ));

    let mut core = MiniCore::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let total = 16;
    // Until every command executed and the master saw every ack (it exits by itself).
    while core.executed.len() < total || !master.is_finished() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stalled at {:?}",
            core.executed
        );
        // Drain the machine, exactly as an agent driver does.
        let mut to_core = Vec::new();
        while let Some(out) = dm.poll() {
            match out {
                AgentOutput::Fired(_) | AgentOutput::DeleteLedger { .. } => {}
                AgentOutput::ToEa { account, msg } => {
                    if let Err(e) = pipes.send(&account, msg) {
                        panic!("pipe send {account}: {e}");
                    }
                }
                AgentOutput::PersistLedger { op, .. } => to_core.push(Err(op)),
                AgentOutput::ToCore(m) => to_core.push(Ok(m)),
            }
        }
        // Storage results and core answers cause more outputs: drain again before waiting.
        let busy = !to_core.is_empty();
        let mut from_core = Vec::new();
        for item in to_core {
            match item {
                Err(op) => dm.handle_ledger_result(now(), op, LedgerResult::Ok),
                Ok(AgentToCore::Intent(i)) => core.on_intent(i, &mut from_core),
                Ok(AgentToCore::ExecutionResult(r)) => {
                    if core.in_flight.get(&r.trade_id) == Some(&r.command_id) {
                        core.in_flight.remove(&r.trade_id);
                        if r.status == BrokerStatus::Filled && r.slave_ticket > 0 {
                            core.tickets.insert(r.trade_id.clone(), r.slave_ticket);
                        }
                        core.executed.push((r.command_id.clone(), r.status));
                        core.pump(&r.trade_id, &mut from_core);
                    }
                }
                Ok(_) => {}
            }
        }
        for m in from_core {
            dm.handle_from_core(now(), m);
        }
        if busy {
            continue;
        }
        if dm.poll_timeout().is_some_and(|at| at <= now()) {
            dm.handle_timeout(now());
            continue;
        }
        let ev = match tokio::time::timeout(Duration::from_millis(20), events.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => panic!("pipe server gone"),
            Err(_) => continue,
        };
        match ev {
            PipeEvent::Connected { account, .. } => dm.handle_pipe_connected(now(), account),
            PipeEvent::Message { account, msg, .. } => dm.handle_from_ea(now(), account, msg),
            PipeEvent::Closed { account, .. } => dm.handle_pipe_closed(now(), account),
            PipeEvent::WriteFailed { .. } => {
                if let Some((account, id)) = ev.failed_command() {
                    dm.handle_pipe_write_failed(now(), account.clone(), id.clone());
                }
            }
            other => panic!("unexpected pipe event {other:?}"),
        }
    }
    let outcome = master.await.unwrap().expect("master run");
    assert_eq!(outcome, Outcome::Done { failed: 0 });
    assert!(
        core.executed
            .iter()
            .all(|(_, s)| *s == BrokerStatus::Filled),
        "{:?}",
        core.executed
    );

    let book = rows(sdata.join("S1.broker.jsonl"));
    assert_eq!(book.len(), total, "one broker order per command");
    let mut per_trade: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in &book {
        per_trade
            .entry(r["trade_id"].as_str().unwrap().to_string())
            .or_default()
            .push(r["action"].as_str().unwrap().to_string());
    }
    assert_eq!(per_trade.len(), 4);
    for (t, actions) in per_trade {
        // The rate workload's fourth trade is a pending order: placed, then triggered (the
        // slave's broker deletes its pending and opens at market), then closed as any other.
        let want = if t.ends_with("-t3") {
            ["PLACE_PENDING", "TRIGGER_PENDING", "CLOSE", "CLOSE"]
        } else {
            ["EXECUTE", "MODIFY", "CLOSE", "CLOSE"]
        };
        assert_eq!(actions, want, "trade {t}");
    }
    // Latency can be computed from the two records, joined by intent id.
    let emitted: BTreeMap<String, i64> = rows(mdata.join("M1.emitted.jsonl"))
        .iter()
        .filter(|r| r["event"] == "emitted")
        .map(|r| {
            (
                r["intent_id"].as_str().unwrap().to_string(),
                r["emitted_at_ms"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(emitted.len(), total);
    for r in &book {
        let at = emitted[r["intent_id"].as_str().unwrap()];
        assert!(r["executed_at_ms"].as_i64().unwrap() >= at);
    }
    slave.abort();
}
