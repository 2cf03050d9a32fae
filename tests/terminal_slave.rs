//! The reference slave terminal against an in-test fake agent (the real pipe listener writing
//! commands by hand): every command_id reaches the simulated broker at most once — across
//! repeated deliveries, a kill and restart, and a crash that left a command in doubt — and each
//! delivery is answered with the right pipe_ack / execution frames.
#![cfg(unix)]

#[path = "pipe_support.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use echo_runtime::machines::ids::{AccountId, CommandId, IntentId, Symbol, TradeId};
use echo_runtime::machines::msg::{
    AgentToEa, BrokerStatus, Command, CommandBody, EaToAgent, ErrorCode, ExecutionResult,
    PendingResolution, PendingType, PipeDeliveryAck, PipeStatus, Role, Side,
};
use echo_runtime::pipe::{PipeEvent, PipeSender, PipeServer, PipeServerConfig};
use echo_runtime::terminal::{run_until, TerminalArgs};
use support::{next_event, rows, temp_dir, terminal_args, wait_event};
use tokio::sync::mpsc;

fn s1() -> AccountId {
    AccountId::new("S1")
}

fn cmd(n: u32, body: CommandBody) -> Command {
    Command {
        command_id: CommandId::new(format!("M1-{n}@S1")),
        intent_id: IntentId::new(format!("M1-{n}")),
        trade_id: TradeId::new("m1-t0"),
        slave: s1(),
        body,
    }
}

fn open(n: u32) -> Command {
    cmd(
        n,
        CommandBody::Execute {
            terms: Default::default(),
            catch_up: false,
            symbol: Symbol::new("EURUSD"),
            side: Side::Buy,
            volume: 0.5,
            price: 1.1,
            stop_loss: 1.09,
            take_profit: 1.12,
        },
    )
}

fn args(sock: &Path, data: &Path, extra: &[&str]) -> TerminalArgs {
    terminal_args("slave", "S1", sock, data, extra)
}

struct FakeAgent {
    _server: PipeServer,
    events: mpsc::Receiver<PipeEvent>,
    pipes: PipeSender,
}

impl FakeAgent {
    async fn bind(dir: &Path) -> FakeAgent {
        let (server, events) =
            PipeServer::bind(PipeServerConfig::new(dir, vec![(s1(), Role::Slave)]))
                .await
                .expect("bind");
        let pipes = server.sender();
        FakeAgent {
            _server: server,
            events,
            pipes,
        }
    }

    async fn connected(&mut self) {
        wait_event(&mut self.events, |e| {
            matches!(e, PipeEvent::Connected { .. })
        })
        .await;
    }

    async fn closed(&mut self) {
        wait_event(&mut self.events, |e| matches!(e, PipeEvent::Closed { .. })).await;
    }

    fn handshake(&self) {
        self.send(AgentToEa::Handshake {
            account: s1(),
            protocol_version: 1,
        });
    }

    fn send(&self, m: AgentToEa) {
        self.pipes.send(&s1(), m).expect("queue to the slave");
    }

    async fn msg(&mut self) -> EaToAgent {
        loop {
            match next_event(&mut self.events).await {
                PipeEvent::Message { msg, .. } => return msg,
                PipeEvent::Closed { .. } => panic!("slave pipe closed unexpectedly"),
                _ => {}
            }
        }
    }

    async fn ack(&mut self) -> PipeDeliveryAck {
        match self.msg().await {
            EaToAgent::PipeAck(a) => a,
            other => panic!("expected pipe_ack, got {other:?}"),
        }
    }

    async fn execution(&mut self) -> ExecutionResult {
        match self.msg().await {
            EaToAgent::Execution(r) => r,
            other => panic!("expected execution, got {other:?}"),
        }
    }

    /// Delivers `c` until it is answered OK, then returns its execution.
    async fn deliver(&mut self, c: &Command) -> ExecutionResult {
        for _ in 0..50 {
            self.send(AgentToEa::Command(c.clone()));
            let a = self.ack().await;
            assert_eq!(a.command_id, c.command_id);
            match a.status {
                PipeStatus::Ok => {
                    let r = self.execution().await;
                    assert_eq!(r.command_id, c.command_id);
                    return r;
                }
                PipeStatus::Retry => tokio::time::sleep(Duration::from_millis(20)).await,
                PipeStatus::Failed => panic!("{c:?} refused: {a:?}"),
            }
        }
        panic!("{c:?} never answered OK");
    }
}

/// Orders the broker placed, per command id.
fn book(data: &Path) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for r in rows(data.join("S1.broker.jsonl")) {
        *n.entry(r["command_id"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_command_executes_once_across_redelivery_and_restart() {
    let dir = temp_dir("term-s");
    let _rm_dir = support::Cleanup(dir.clone());
    let (sock_dir, data) = (dir.join("sock"), dir.join("data"));
    let sock = sock_dir.join("S1.sock");
    let mut agent = FakeAgent::bind(&sock_dir).await;
    let a = args(&sock, &data, &[]);
    let first = tokio::spawn(run_until(a.clone(), std::future::pending()));
    agent.connected().await;

    // (A command before the handshake is answered RETRY: see the raw-agent test below; the
    // real listener never lets one overtake the handshake.)
    agent.handshake();

    // The open executes once; a repeated delivery is answered from the record.
    let e1 = agent.deliver(&open(1)).await;
    assert_eq!(e1.status, BrokerStatus::Filled);
    assert_eq!((e1.fill_price, e1.filled_volume), (1.1, 0.5));
    assert_eq!(e1.slave.as_str(), "S1");
    assert_eq!(e1.trade_id.as_str(), "m1-t0");
    let ticket = e1.slave_ticket;
    assert!(ticket > 0);
    assert_eq!(agent.deliver(&open(1)).await, e1);

    // A modify delivered twice back to back: one execution at the broker.
    let modify = cmd(
        2,
        CommandBody::Modify {
            slave_ticket: ticket,
            stop_loss: 1.095,
            take_profit: 1.12,
        },
    );
    agent.send(AgentToEa::Command(modify.clone()));
    agent.send(AgentToEa::Command(modify.clone()));
    let (mut acks, mut oks) = (0, 0);
    let mut results = Vec::new();
    while acks < 2 || results.len() < oks {
        match agent.msg().await {
            EaToAgent::PipeAck(a) => {
                assert_eq!(a.command_id, modify.command_id);
                assert_ne!(a.status, PipeStatus::Failed);
                acks += 1;
                if a.status == PipeStatus::Ok {
                    oks += 1;
                }
            }
            EaToAgent::Execution(r) => results.push(r),
            other => panic!("{other:?}"),
        }
    }
    assert!(oks >= 1);
    assert!(results.iter().all(|r| r == &results[0]));
    assert_eq!(results[0].slave_ticket, ticket);

    // A partial close.
    let partial = cmd(
        3,
        CommandBody::Close {
            slave_ticket: ticket,
            volume: 0.2,
        },
    );
    let e3 = agent.deliver(&partial).await;
    assert_eq!((e3.status, e3.filled_volume), (BrokerStatus::Filled, 0.2));
    // As MT4 does, the broker moved the remaining 0.3 lots to a new ticket: later commands
    // address that one.
    let rest = e3.slave_ticket;
    assert!(rest > ticket, "{e3:?}");

    // A command that cannot be executed: FAILED INVALID_ARGUMENT, always the same answer.
    let mut bad = open(8);
    bad.body = CommandBody::Execute {
        terms: Default::default(),
        catch_up: false,
        symbol: Symbol::new("EURUSD"),
        side: Side::Sell,
        volume: 0.0,
        price: 1.1,
        stop_loss: 0.0,
        take_profit: 0.0,
    };
    for _ in 0..2 {
        agent.send(AgentToEa::Command(bad.clone()));
        let r = agent.ack().await;
        assert_eq!(
            (r.status, r.reason),
            (PipeStatus::Failed, Some(ErrorCode::InvalidArgument))
        );
    }
    // A command for another account is refused too.
    let mut foreign = open(10);
    foreign.slave = AccountId::new("S2");
    agent.send(AgentToEa::Command(foreign));
    let r = agent.ack().await;
    assert_eq!(
        (r.status, r.reason),
        (PipeStatus::Failed, Some(ErrorCode::UnknownAccount))
    );

    // A cancel of a command never seen: CANCELLED, never executed.
    agent.send(AgentToEa::Cancel(open(9)));
    let c9 = agent.execution().await;
    assert_eq!(c9.status, BrokerStatus::Cancelled);
    assert_eq!(c9.command_id.as_str(), "M1-9@S1");

    // Kill the terminal and start it again on the same files.
    first.abort();
    let _ = first.await;
    agent.closed().await;
    let second = tokio::spawn(run_until(a, std::future::pending()));
    agent.connected().await;
    agent.handshake();

    // Every earlier command delivered again: same answers, nothing executed again.
    assert_eq!(agent.deliver(&open(1)).await, e1);
    assert_eq!(agent.deliver(&modify).await, results[0]);
    assert_eq!(agent.deliver(&partial).await, e3);
    assert_eq!(
        agent.deliver(&open(9)).await.status,
        BrokerStatus::Cancelled
    );
    // The same cancel again: the stored CANCELLED result.
    agent.send(AgentToEa::Cancel(open(9)));
    assert_eq!(agent.ack().await.status, PipeStatus::Ok);
    assert_eq!(agent.execution().await.status, BrokerStatus::Cancelled);
    // The rest of the position closes (volume 0 = all), restored under its new ticket by the
    // restarted terminal from its files.
    let close = cmd(
        4,
        CommandBody::Close {
            slave_ticket: rest,
            volume: 0.0,
        },
    );
    let e4 = agent.deliver(&close).await;
    assert_eq!(e4.status, BrokerStatus::Filled);
    assert!((e4.filled_volume - 0.3).abs() < 1e-9, "{e4:?}");
    // A modify of the closed position: the broker rejects it (no position).
    let late = cmd(
        5,
        CommandBody::Modify {
            slave_ticket: rest,
            stop_loss: 1.0,
            take_profit: 1.2,
        },
    );
    assert_eq!(agent.deliver(&late).await.status, BrokerStatus::Rejected);

    let placed = book(&data);
    assert_eq!(placed.get("M1-1@S1"), Some(&1));
    assert_eq!(placed.get("M1-2@S1"), Some(&1));
    assert_eq!(placed.get("M1-3@S1"), Some(&1));
    assert_eq!(placed.get("M1-4@S1"), Some(&1));
    assert_eq!(
        placed.get("M1-9@S1"),
        None,
        "a cancelled command never executes"
    );
    assert_eq!(
        placed.get("M1-8@S1"),
        None,
        "a refused command never executes"
    );
    assert!(placed.values().all(|&n| n == 1), "{placed:?}");
    // The execution record names the command, intent, trade, kind and time.
    let first_row = &rows(data.join("S1.broker.jsonl"))[0];
    assert_eq!(first_row["intent_id"], "M1-1");
    assert_eq!(first_row["trade_id"], "m1-t0");
    assert_eq!(first_row["action"], "EXECUTE");
    assert!(first_row["executed_at_ms"].as_i64().unwrap() > 1_600_000_000_000);
    second.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_in_doubt_after_a_crash_is_asked_of_the_broker_not_placed_again() {
    let dir = temp_dir("term-d");
    let _rm_dir = support::Cleanup(dir.clone());
    let (sock_dir, data) = (dir.join("sock"), dir.join("data"));
    let sock = sock_dir.join("S1.sock");
    std::fs::create_dir_all(&data).unwrap();
    // The state a crash leaves between "order sent to the broker" and "result recorded":
    // the write-ahead row and the broker's fill exist, the result row does not. Plus a torn
    // last line from the write that the crash interrupted.
    let c = open(1);
    let cmd_row = serde_json::json!({"op": "executing", "command": echo_runtime::pipe::frame::command_value(&c)});
    std::fs::write(
        data.join("S1.commands.jsonl"),
        format!("{cmd_row}\n{{\"op\":\"exec"),
    )
    .unwrap();
    std::fs::write(
        data.join("S1.broker.jsonl"),
        "{\"command_id\":\"M1-1@S1\",\"intent_id\":\"M1-1\",\"trade_id\":\"m1-t0\",\"slave\":\"S1\",\"action\":\"EXECUTE\",\"status\":\"FILLED\",\"ticket\":777,\"price\":1.1,\"volume\":0.5,\"reason\":null,\"executed_at_ms\":1764726000000}\n",
    )
    .unwrap();

    let mut agent = FakeAgent::bind(&sock_dir).await;
    let run = tokio::spawn(run_until(
        args(&sock, &data, &["--fill-delay-ms", "5"]),
        std::future::pending(),
    ));
    agent.connected().await;
    agent.handshake();
    let r = agent.deliver(&c).await;
    assert_eq!(
        (r.status, r.slave_ticket, r.filled_volume),
        (BrokerStatus::Filled, 777, 0.5)
    );
    assert_eq!(book(&data).get("M1-1@S1"), Some(&1), "not placed again");
    // A new order after recovery gets a fresh ticket, beyond the recovered one.
    let r2 = agent.deliver(&open(2)).await;
    assert!(r2.slave_ticket > 777, "{r2:?}");
    run.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulated_broker_rejects_deterministically() {
    let dir = temp_dir("term-j");
    let _rm_dir = support::Cleanup(dir.clone());
    let (sock_dir, data) = (dir.join("sock"), dir.join("data"));
    let sock = sock_dir.join("S1.sock");
    let mut agent = FakeAgent::bind(&sock_dir).await;
    let run = tokio::spawn(run_until(
        args(&sock, &data, &["--reject-rate", "1"]),
        std::future::pending(),
    ));
    agent.connected().await;
    agent.handshake();
    let r = agent.deliver(&open(1)).await;
    assert_eq!(r.status, BrokerStatus::Rejected);
    assert_eq!(book(&data)["M1-1@S1"], 1);
    let row = &rows(data.join("S1.broker.jsonl"))[0];
    assert_eq!(row["status"], "REJECTED");
    run.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_agent_frame_is_answered_and_the_slave_keeps_working() {
    use echo_runtime::pipe::lines::LineReader;
    use echo_runtime::pipe::{encode_agent, AgentFrame, EaFrame, PipeErrorCode};
    use tokio::io::{AsyncWriteExt, BufReader};

    let dir = temp_dir("term-x");

    let _rm_dir = support::Cleanup(dir.clone());
    let (sock_dir, data) = (dir.join("sock"), dir.join("data"));
    std::fs::create_dir_all(&sock_dir).unwrap();
    let sock = sock_dir.join("S1.sock");
    // A raw agent, to write what the real one never would.
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let run = tokio::spawn(run_until(args(&sock, &data, &[]), std::future::pending()));
    let (stream, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .unwrap()
        .unwrap();
    let (r, mut w) = stream.into_split();
    let mut lines = LineReader::new(BufReader::new(r), 65_536);
    match next_ea(&mut lines).await {
        EaFrame::Hello(h) => assert_eq!((h.account.as_str(), h.role), ("S1", Role::Slave)),
        other => panic!("{other:?}"),
    }
    let handshake = encode_agent(&AgentFrame::Msg(AgentToEa::Handshake {
        account: s1(),
        protocol_version: 1,
    }));
    let bad = r#"{"type":"command","command_id":"M1-5@S1","intent_id":"M1-5","trade_id":"m1-t0","slave":"S1","action":"EXECUTE","symbol":"EURUSD","side":"LONG","volume":0.5,"price":1.1,"stop_loss":0.0,"take_profit":0.0}"#;
    let good = encode_agent(&AgentFrame::Msg(AgentToEa::Command(open(5))));
    // Before the handshake the slave executes nothing: RETRY.
    w.write_all(good.as_bytes()).await.unwrap();
    match next_ea(&mut lines).await {
        EaFrame::Msg(EaToAgent::PipeAck(a)) => {
            assert_eq!(
                (a.command_id.as_str(), a.status),
                ("M1-5@S1", PipeStatus::Retry)
            )
        }
        other => panic!("{other:?}"),
    }
    w.write_all(format!("{handshake}{bad}\nnot json\n{good}").as_bytes())
        .await
        .unwrap();
    match next_ea(&mut lines).await {
        EaFrame::Error(e) => {
            assert_eq!(e.code, PipeErrorCode::BadField);
            assert_eq!(e.ref_id.as_deref(), Some("M1-5@S1"));
        }
        other => panic!("{other:?}"),
    }
    match next_ea(&mut lines).await {
        EaFrame::Error(e) => assert_eq!(e.code, PipeErrorCode::BadJson),
        other => panic!("{other:?}"),
    }
    match next_ea(&mut lines).await {
        EaFrame::Msg(EaToAgent::PipeAck(a)) => {
            assert_eq!(
                (a.command_id.as_str(), a.status),
                ("M1-5@S1", PipeStatus::Ok)
            )
        }
        other => panic!("{other:?}"),
    }
    match next_ea(&mut lines).await {
        EaFrame::Msg(EaToAgent::Execution(r)) => assert_eq!(r.status, BrokerStatus::Filled),
        other => panic!("{other:?}"),
    }
    run.abort();
}

async fn next_ea<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut echo_runtime::pipe::lines::LineReader<R>,
) -> echo_runtime::pipe::EaFrame {
    use echo_runtime::pipe::lines::Framed;
    match tokio::time::timeout(Duration::from_secs(10), lines.next()).await {
        Ok(Ok(Some(Framed::Line(l)))) => {
            echo_runtime::pipe::decode_ea(&l).expect("a terminal frame")
        }
        other => panic!("{other:?}"),
    }
}

fn pending_cmd(n: u32, trade: &str, body: CommandBody) -> Command {
    Command {
        trade_id: TradeId::new(trade),
        ..cmd(n, body)
    }
}

fn resolve(ticket: i64, resolution: PendingResolution) -> CommandBody {
    CommandBody::ResolvePending {
        slave_ticket: ticket,
        resolution,
        symbol: Symbol::new("EURUSD"),
        side: Side::Sell,
        price: 1.0895,
        stop_loss: 1.1,
        take_profit: 1.08,
        terms: Default::default(),
    }
}

/// Pending orders through the reference slave terminal (SPEC.md §9 "Pending orders at the
/// slave's broker"): a placement gets a ticket, its modify and trigger address it, the trigger
/// leaves a position its close reaches — across a restart in the middle, which rebuilds the
/// pending order from the files; a cancelled placement leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_orders_are_placed_modified_triggered_and_cancelled() {
    let dir = temp_dir("term-p");
    let _rm_dir = support::Cleanup(dir.clone());
    let (sock_dir, data) = (dir.join("sock"), dir.join("data"));
    let sock = sock_dir.join("S1.sock");
    let mut agent = FakeAgent::bind(&sock_dir).await;
    let a = args(&sock, &data, &[]);
    let run = tokio::spawn(run_until(a.clone(), std::future::pending()));
    agent.connected().await;
    agent.handshake();
    let place = |n: u32, trade: &str| {
        pending_cmd(
            n,
            trade,
            CommandBody::PlacePending {
                symbol: Symbol::new("EURUSD"),
                side: Side::Sell,
                order_type: PendingType::Stop,
                volume: 0.5,
                price: 1.09,
                stop_loss: 1.1,
                take_profit: 1.08,
                terms: Default::default(),
            },
        )
    };
    let placed = agent.deliver(&place(1, "m1-t0")).await;
    assert_eq!(placed.status, BrokerStatus::Filled);
    let ticket = placed.slave_ticket;
    let modified = agent
        .deliver(&pending_cmd(
            2,
            "m1-t0",
            CommandBody::ModifyPending {
                slave_ticket: ticket,
                price: 1.0895,
                stop_loss: 1.1,
                take_profit: 1.08,
            },
        ))
        .await;
    assert_eq!(
        (modified.status, modified.slave_ticket),
        (BrokerStatus::Filled, ticket)
    );
    // A restart: the pending order is rebuilt from the terminal's files.
    run.abort();
    let _ = run.await;
    agent.closed().await;
    let run = tokio::spawn(run_until(a, std::future::pending()));
    agent.connected().await;
    agent.handshake();
    let trig = pending_cmd(3, "m1-t0", resolve(ticket, PendingResolution::Trigger));
    let triggered = agent.deliver(&trig).await;
    assert_eq!(triggered.status, BrokerStatus::Filled, "{triggered:?}");
    assert_eq!(triggered.filled_volume, 0.5);
    let position = triggered.slave_ticket;
    // Redelivered: answered from the record, never converged twice.
    assert_eq!(agent.deliver(&trig).await, triggered);
    let closed = agent
        .deliver(&pending_cmd(
            4,
            "m1-t0",
            CommandBody::Close {
                slave_ticket: position,
                volume: 0.0,
            },
        ))
        .await;
    assert_eq!(
        (closed.status, closed.filled_volume),
        (BrokerStatus::Filled, 0.5),
        "the close reaches the triggered position"
    );
    // Another trade: placed, then cancelled by its master; a later trigger finds nothing.
    let other = agent.deliver(&place(5, "m1-t1")).await;
    let cancelled = agent
        .deliver(&pending_cmd(
            6,
            "m1-t1",
            resolve(other.slave_ticket, PendingResolution::Cancel),
        ))
        .await;
    assert_eq!(cancelled.status, BrokerStatus::Filled);
    let late = agent
        .deliver(&pending_cmd(
            7,
            "m1-t1",
            resolve(other.slave_ticket, PendingResolution::Trigger),
        ))
        .await;
    assert_eq!(late.status, BrokerStatus::Rejected, "no pending order left");
    let b = book(&data);
    for id in [
        "M1-1@S1", "M1-2@S1", "M1-3@S1", "M1-4@S1", "M1-5@S1", "M1-6@S1",
    ] {
        assert_eq!(b.get(id), Some(&1), "{id} reached the broker once");
    }
    assert_eq!(b.get("M1-7@S1"), None, "never placed");
    let actions: Vec<String> = rows(data.join("S1.broker.jsonl"))
        .iter()
        .map(|r| r["action"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        actions,
        [
            "PLACE_PENDING",
            "MODIFY_PENDING",
            "TRIGGER_PENDING",
            "CLOSE",
            "PLACE_PENDING",
            "RESOLVE_PENDING"
        ]
    );
    run.abort();
}

/// With a dedupe window of 4 records (no age floor), 40 opens leave a commands file compacted
/// to about the window; a restarted terminal answers the retained ones from their records
/// (nothing placed again) and still holds every position, evicted records' included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commands_file_is_compacted_and_recovers_dedupe_and_positions() {
    let dir = temp_dir("term-compact");
    let _rm_dir = support::Cleanup(dir.clone());
    let (sock_dir, data) = (dir.join("sock"), dir.join("data"));
    let sock = sock_dir.join("S1.sock");
    let mut agent = FakeAgent::bind(&sock_dir).await;
    let a = args(
        &sock,
        &data,
        &["--max-executed-retained", "4", "--min-retained-ms", "0"],
    );
    let first = tokio::spawn(run_until(a.clone(), std::future::pending()));
    agent.connected().await;
    agent.handshake();
    let mut results = Vec::new();
    for n in 1..=40 {
        results.push(agent.deliver(&open(n)).await);
    }
    let file_rows = rows(data.join("S1.commands.jsonl")).len();
    assert!(
        file_rows <= 2 * 2 * 4 + 2,
        "{file_rows} rows: the file was compacted"
    );
    first.abort();
    let _ = first.await;
    agent.closed().await;
    let second = tokio::spawn(run_until(a, std::future::pending()));
    agent.connected().await;
    agent.handshake();
    // The newest records are retained: answered from them, never placed again.
    for n in 37..=40 {
        assert_eq!(agent.deliver(&open(n)).await, results[n as usize - 1]);
    }
    assert!(book(&data).values().all(|&k| k == 1), "{:?}", book(&data));
    // The first open's record is long evicted, its position is not: a modify of it executes.
    let modify = cmd(
        41,
        CommandBody::Modify {
            slave_ticket: results[0].slave_ticket,
            stop_loss: 1.0,
            take_profit: 1.2,
        },
    );
    assert_eq!(agent.deliver(&modify).await.status, BrokerStatus::Filled);
    second.abort();
    let _ = second.await;
}

/// `--max-lots 1`: the reference broker refuses an order above 1 lot, so a 2.5-lot copy with
/// split allowed opens as three legs under their own order ids; a partial close and the
/// master's close act on every leg exactly, across a restart of the terminal (the legs are
/// rebuilt from its file); without split the same open is refused by the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_open_is_placed_as_legs_and_closed_leg_by_leg() {
    let dir = temp_dir("term-split");
    let _rm_dir = support::Cleanup(dir.clone());
    let (sock_dir, data) = (dir.join("sock"), dir.join("data"));
    let sock = sock_dir.join("S1.sock");
    let mut agent = FakeAgent::bind(&sock_dir).await;
    let a = args(&sock, &data, &["--max-lots", "1"]);
    let run = tokio::spawn(run_until(a.clone(), std::future::pending()));
    agent.connected().await;
    agent.handshake();
    let execute = |split: bool| CommandBody::Execute {
        terms: echo_statemachine::msg::ExecTerms {
            split_max_lots: if split { 1.0 } else { 0.0 },
            split_min_lots: if split { 0.01 } else { 0.0 },
            ..Default::default()
        },
        symbol: Symbol::new("EURUSD"),
        side: Side::Buy,
        volume: 2.5,
        price: 1.1,
        stop_loss: 0.0,
        take_profit: 0.0,
        catch_up: false,
    };
    let refused = agent.deliver(&cmd(1, execute(false))).await;
    assert_eq!(
        refused.status,
        BrokerStatus::Rejected,
        "above the broker's maximum"
    );
    let opened = agent.deliver(&cmd(2, execute(true))).await;
    assert_eq!(
        (opened.status, opened.filled_volume, opened.legs.len()),
        (BrokerStatus::Filled, 2.5, 3),
        "{opened:?}"
    );
    let position = opened.slave_ticket;
    assert_eq!(position, opened.legs[0].ticket);
    let b = book(&data);
    for id in ["M1-2@S1", "M1-2@S1#1", "M1-2@S1#2"] {
        assert_eq!(b.get(id), Some(&1), "leg {id} reached the broker once");
    }
    // A restart: the legs come back from the commands file.
    run.abort();
    let _ = run.await;
    agent.closed().await;
    let run = tokio::spawn(run_until(a, std::future::pending()));
    agent.connected().await;
    agent.handshake();
    let part = agent
        .deliver(&cmd(
            3,
            CommandBody::ClosePart {
                slave_ticket: position,
                fraction: echo_statemachine::msg::CloseFraction {
                    master_closed: 1.0,
                    master_volume_before: 2.0,
                    slave_min: 0.01,
                    slave_step: 0.01,
                },
            },
        ))
        .await;
    assert_eq!(
        (part.status, part.filled_volume, part.slave_ticket),
        (BrokerStatus::Filled, 1.25, position),
        "{part:?}"
    );
    let left: f64 = part.legs.iter().map(|l| l.volume).sum();
    assert!((left - 1.25).abs() < 1e-9, "{part:?}");
    let closed = agent
        .deliver(&cmd(
            4,
            CommandBody::Close {
                slave_ticket: position,
                volume: 0.0,
            },
        ))
        .await;
    assert_eq!(
        (closed.status, closed.filled_volume, closed.legs.len()),
        (BrokerStatus::Filled, 1.25, 0),
        "{closed:?}"
    );
    run.abort();
}
