//! The reference master terminal against an in-test fake agent (the real pipe listener, acking
//! intents by hand): it emits lifecycles in per-trade order, keeps unacked intents in its
//! IntentQueue file across a kill, re-sends exactly those after a restart, applies the
//! agent's delivery config, retries BROKER_BUSY, and reconnects when the agent goes away.
#![cfg(unix)]

#[path = "pipe_support.rs"]
mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use echo_runtime::machines::config::AgentDeliveryConfig;
use echo_runtime::machines::ids::AccountId;
use echo_runtime::machines::msg::{
    AckResult, AgentToEa, EaToAgent, ErrorCode, IntentKind, Role, TradeIntent, TradeIntentAck,
};
use echo_runtime::pipe::{PipeEvent, PipeSender, PipeServer, PipeServerConfig};
use echo_runtime::terminal::{run_until, Outcome, TerminalArgs};
use support::{next_event, rows, temp_dir, terminal_args};
use tokio::sync::mpsc;

fn m1() -> AccountId {
    AccountId::new("M1")
}

async fn agent(dir: &Path) -> (PipeServer, mpsc::Receiver<PipeEvent>) {
    PipeServer::bind(PipeServerConfig::new(dir, vec![(m1(), Role::Master)]))
        .await
        .expect("bind the fake agent's pipe")
}

fn args(sock: &Path, data: &Path, extra: &[&str]) -> TerminalArgs {
    terminal_args("master", "M1", sock, data, extra)
}

/// What a fake agent does on every event: handshake + fast delivery config on connect;
/// returns the intent if the event carried one.
fn on_connect(ev: &PipeEvent, pipes: &PipeSender) -> Option<TradeIntent> {
    match ev {
        PipeEvent::Connected { .. } => {
            pipes
                .send(
                    &m1(),
                    AgentToEa::Handshake {
                        account: m1(),
                        protocol_version: 1,
                    },
                )
                .unwrap();
            let fast = AgentDeliveryConfig {
                ack_timeout_ms: 150,
                retry_backoff_ms: 20,
                ..AgentDeliveryConfig::default()
            };
            pipes.send(&m1(), AgentToEa::DeliveryConfig(fast)).unwrap();
            None
        }
        PipeEvent::Message {
            msg: EaToAgent::Intent(i),
            ..
        } => Some(i.clone()),
        _ => None,
    }
}

fn ack(pipes: &PipeSender, i: &TradeIntent, result: AckResult, error: Option<ErrorCode>) {
    pipes
        .send(
            &m1(),
            AgentToEa::IntentAck(TradeIntentAck {
                intent_id: i.intent_id.clone(),
                trade_id: i.trade_id.clone(),
                result,
                error,
                retry_after_ms: 10,
            }),
        )
        .unwrap();
}

/// Intent ids appended and not removed in the IntentQueue file.
fn live_queue(data: &Path) -> Vec<String> {
    let mut live = Vec::new();
    let mut removed = BTreeSet::new();
    for r in rows(data.join("M1.intents.jsonl")) {
        match r["op"].as_str() {
            Some("append") => live.push(r["intent"]["intent_id"].as_str().unwrap().to_string()),
            Some("remove") => {
                removed.insert(r["intent_id"].as_str().unwrap().to_string());
            }
            other => panic!("bad op {other:?}"),
        }
    }
    live.retain(|i| !removed.contains(i));
    live
}

const SCRIPT: &str = "\
# one trade's lifecycle, and a second trade
open a EURUSD buy 1.0 1.10000 sl=1.09 tp=1.12
modify a sl=1.095
partial a 0.4 1.10100
close a 1.10200
open b GBPUSD sell 0.5 1.25000
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_intents_survive_a_kill_and_acked_ones_are_never_resent() {
    let dir = temp_dir("term-m");
    let _rm_dir = support::Cleanup(dir.clone());
    let (sock_dir, data) = (dir.join("sock"), dir.join("data"));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("script.txt");
    std::fs::write(&script, SCRIPT).unwrap();
    let sock = sock_dir.join("M1.sock");
    let (server, mut events) = agent(&sock_dir).await;
    let pipes = server.sender();
    let a = args(
        &sock,
        &data,
        &["--script", script.to_str().unwrap(), "--exit-when-done"],
    );

    // Phase 1: the agent acks trade a's open and modify only.
    let first = tokio::spawn(run_until(a.clone(), std::future::pending()));
    let mut seen: Vec<TradeIntent> = Vec::new();
    let mut partial_sends: Vec<tokio::time::Instant> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let partial_resent = seen
            .iter()
            .filter(|i| i.intent_id.as_str() == "M1-3")
            .count()
            >= 2;
        let b_seen = seen.iter().any(|i| i.intent_id.as_str() == "M1-5");
        if partial_resent && b_seen {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "phase 1 stalled: {seen:?}"
        );
        let ev = next_event(&mut events).await;
        if let Some(i) = on_connect(&ev, &pipes) {
            if matches!(i.kind, IntentKind::Open | IntentKind::Modify)
                && i.trade_id.as_str() == "m1-a"
            {
                ack(&pipes, &i, AckResult::Ok, None);
            }
            if i.intent_id.as_str() == "M1-3" {
                partial_sends.push(tokio::time::Instant::now());
            }
            seen.push(i);
        }
    }
    // The agent's delivery config applies: the unacked partial is re-sent after ~150 ms
    // (its ack_timeout_ms), not after the default 1000 ms.
    let gap = partial_sends[1] - partial_sends[0];
    assert!(gap < Duration::from_millis(800), "re-sent after {gap:?}");
    // Per-trade order: the close of a is never sent while its partial close is unacked.
    assert!(!seen.iter().any(|i| i.intent_id.as_str() == "M1-4"));
    let ids: Vec<&str> = seen.iter().map(|i| i.intent_id.as_str()).collect();
    let pos = |id: &str| ids.iter().position(|x| *x == id).unwrap();
    assert!(
        pos("M1-1") < pos("M1-2") && pos("M1-2") < pos("M1-3"),
        "{ids:?}"
    );
    let open_a = seen
        .iter()
        .find(|i| i.intent_id.as_str() == "M1-1")
        .unwrap();
    assert_eq!(open_a.master_seq, 1);
    assert_eq!(open_a.symbol.as_str(), "EURUSD");
    assert_eq!(open_a.master.as_str(), "M1");

    // Kill it (drop the task mid-stream), as SIGKILL would: only fsynced state survives.
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    loop {
        if matches!(next_event(&mut events).await, PipeEvent::Closed { .. }) {
            break;
        }
    }
    let live = live_queue(&data);
    assert_eq!(
        live,
        vec!["M1-3", "M1-4", "M1-5"],
        "the queue file holds exactly the unacked"
    );

    // Phase 2: restart; the agent acks everything now.
    let second = tokio::spawn(run_until(a, std::future::pending()));
    let mut again: Vec<TradeIntent> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let outcome = loop {
        if second.is_finished() {
            break second.await.unwrap().expect("master run");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "phase 2 stalled: {again:?}"
        );
        let ev = match tokio::time::timeout(Duration::from_millis(50), events.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => panic!("fake agent gone"),
            Err(_) => continue,
        };
        if let Some(i) = on_connect(&ev, &pipes) {
            ack(&pipes, &i, AckResult::Ok, None);
            again.push(i);
        }
    };
    assert_eq!(outcome, Outcome::Done { failed: 0 });
    let ids: BTreeSet<&str> = again.iter().map(|i| i.intent_id.as_str()).collect();
    assert_eq!(ids, ["M1-3", "M1-4", "M1-5"].into_iter().collect());
    let order: Vec<&str> = again.iter().map(|i| i.intent_id.as_str()).collect();
    let p3 = order.iter().position(|x| *x == "M1-3").unwrap();
    let p4 = order.iter().position(|x| *x == "M1-4").unwrap();
    assert!(p3 < p4, "partial before close after the restart: {order:?}");
    // The re-sent intents are the very ones emitted before the kill (same ids, same content).
    let before = seen
        .iter()
        .find(|i| i.intent_id.as_str() == "M1-3")
        .unwrap();
    let after = again
        .iter()
        .find(|i| i.intent_id.as_str() == "M1-3")
        .unwrap();
    assert_eq!(before, after);

    assert!(
        live_queue(&data).is_empty(),
        "every intent resolved and removed"
    );
    let record = rows(data.join("M1.emitted.jsonl"));
    let emitted: Vec<u64> = record
        .iter()
        .filter(|r| r["event"] == "emitted")
        .map(|r| r["master_seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        emitted,
        vec![1, 2, 3, 4, 5],
        "each intent recorded once, in order"
    );
    let acked: BTreeSet<&str> = record
        .iter()
        .filter(|r| r["event"] == "acked")
        .map(|r| r["intent_id"].as_str().unwrap())
        .collect();
    assert_eq!(acked.len(), 5);
    for r in record.iter().filter(|r| r["event"] == "emitted") {
        assert!(r["emitted_at_ms"].as_i64().unwrap() > 1_600_000_000_000);
        assert!(r["trade_id"].as_str().unwrap().starts_with("m1-"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_mode_retries_busy_keeps_trade_order_and_survives_an_agent_restart() {
    let dir = temp_dir("term-r");
    let _rm_dir = support::Cleanup(dir.clone());
    let (sock_dir, data) = (dir.join("sock"), dir.join("data"));
    let sock = sock_dir.join("M1.sock");
    let (server, mut events) = agent(&sock_dir).await;
    let a = args(
        &sock,
        &data,
        &[
            "--rate",
            "400/s",
            "--trades",
            "5",
            "--modifies",
            "1",
            "--partials",
            "1",
            "--concurrent",
            "2",
            "--exit-when-done",
            "--reconnect-max-ms",
            "200",
        ],
    );
    let run = tokio::spawn(run_until(a, std::future::pending()));
    let mut server = Some(server);
    let mut pipes = server.as_ref().unwrap().sender();
    let mut busy_once: BTreeSet<String> = BTreeSet::new();
    let mut accepted: Vec<TradeIntent> = Vec::new();
    let mut restarted = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let outcome = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stalled: {accepted:?}"
        );
        if run.is_finished() {
            break run.await.unwrap().expect("master run");
        }
        // The agent goes away once, mid-stream, and comes back on the same path.
        if !restarted && accepted.len() >= 6 {
            restarted = true;
            drop(server.take());
            tokio::time::sleep(Duration::from_millis(300)).await;
            let (s, ev) = agent(&sock_dir).await;
            pipes = s.sender();
            server = Some(s);
            events = ev;
        }
        let ev = match tokio::time::timeout(Duration::from_millis(50), events.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => panic!("fake agent gone"),
            Err(_) => continue,
        };
        if let Some(i) = on_connect(&ev, &pipes) {
            // Every intent is refused BROKER_BUSY once, then accepted.
            if busy_once.insert(i.intent_id.to_string()) {
                ack(&pipes, &i, AckResult::Failed, Some(ErrorCode::BrokerBusy));
            } else {
                ack(&pipes, &i, AckResult::Ok, None);
                if !accepted.iter().any(|x| x.intent_id == i.intent_id) {
                    accepted.push(i);
                }
            }
        }
    };
    assert_eq!(outcome, Outcome::Done { failed: 0 });
    assert!(restarted);
    assert_eq!(
        accepted.len(),
        20,
        "5 trades × open, modify, partial, close"
    );
    for t in 0..5 {
        let kinds: Vec<IntentKind> = accepted
            .iter()
            .filter(|i| i.trade_id.as_str() == format!("m1-t{t}"))
            .map(|i| i.kind)
            .collect();
        // Every fourth trade of the rate workload is a pending order, triggered first.
        let start = if t == 3 {
            [IntentKind::PlaceLimit, IntentKind::PendingTrigger]
        } else {
            [IntentKind::Open, IntentKind::Modify]
        };
        assert_eq!(
            kinds,
            vec![
                start[0],
                start[1],
                IntentKind::PartialClose,
                IntentKind::Close
            ],
            "trade t{t}"
        );
    }
    let mut seqs: Vec<u64> = accepted.iter().map(|i| i.master_seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=20).collect::<Vec<u64>>());
}

#[test]
fn options_are_parsed_and_checked() {
    let a = TerminalArgs::parse(
        [
            "--role",
            "slave",
            "--account",
            "S1",
            "--socket-dir",
            "/tmp/x",
            "--reject-rate",
            "0.25",
        ]
        .iter()
        .map(|s| s.to_string()),
    )
    .unwrap();
    assert_eq!(a.role, Role::Slave);
    assert_eq!(a.socket, PathBuf::from("/tmp/x/S1.sock"));
    assert_eq!(a.reject_rate, 0.25);
    for bad in [
        vec!["--account", "S1"],
        vec!["--role", "boss", "--account", "S1"],
        vec!["--role", "slave"],
        vec!["--role", "slave", "--account", "../x"],
        vec!["--role", "slave", "--account", "S1", "--reject-rate", "2"],
        vec!["--role", "master", "--account", "M1", "--rate", "0"],
        vec!["--role", "master", "--account", "M1", "--bogus"],
    ] {
        assert!(
            TerminalArgs::parse(bad.iter().map(|s| s.to_string())).is_err(),
            "{bad:?}"
        );
    }
}
