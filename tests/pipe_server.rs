//! The agent's pipe listener over real Unix sockets: socket files (mode 0600, stale files,
//! live listeners), the hello handshake and its refusals, every malformed frame answered while
//! the connection keeps working, newest-connection-wins, and write failures reported.
#![cfg(unix)]

#[path = "pipe_support.rs"]
mod support;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::Duration;

use echo_runtime::machines::ids::{AccountId, CommandId, IntentId, Symbol, TradeId};
use echo_runtime::machines::msg::{
    AgentToEa, Command, CommandBody, EaToAgent, PipeStatus, Role, Side,
};
use echo_runtime::pipe::{
    AgentFrame, CloseReason, PipeError, PipeErrorCode, PipeEvent, PipeServer, PipeServerConfig,
    SendError, WriteFailure,
};
use support::{next_event, temp_dir, wait_event, RawClient};

const HELLO_M1: &str = r#"{"type":"hello","account":"M1","role":"MASTER","protocol_version":1}"#;
const HELLO_S1: &str = r#"{"type":"hello","account":"S1","role":"SLAVE","protocol_version":1}"#;
const INTENT: &str = r#"{"type":"intent","intent_id":"M1-1","trade_id":"m1-t0","master":"M1","kind":"OPEN","symbol":"EURUSD","side":"BUY","volume":1.0,"price":1.1,"stop_loss":1.095,"take_profit":1.11,"master_ticket":1000001,"master_seq":1,"emitted_at_ms":1764726000123}"#;
const ACK: &str = r#"{"type":"pipe_ack","command_id":"M1-1@S1","status":"OK","reason":null}"#;

fn accounts() -> Vec<(AccountId, Role)> {
    vec![
        (AccountId::new("M1"), Role::Master),
        (AccountId::new("S1"), Role::Slave),
    ]
}

fn command(n: u32) -> Command {
    Command {
        command_id: CommandId::new(format!("M1-{n}@S1")),
        intent_id: IntentId::new(format!("M1-{n}")),
        trade_id: TradeId::new("m1-t0"),
        slave: AccountId::new("S1"),
        body: CommandBody::Execute {
            terms: Default::default(),
            catch_up: false,
            symbol: Symbol::new("EURUSD"),
            side: Side::Buy,
            volume: 0.5,
            price: 1.1,
            stop_loss: 0.0,
            take_profit: 0.0,
        },
    }
}

async fn error_code(c: &mut RawClient) -> PipeErrorCode {
    match c.recv_frame().await {
        AgentFrame::Error(e) => e.code,
        other => panic!("expected an error frame, got {other:?}"),
    }
}

#[tokio::test]
async fn socket_files_are_0600_and_removed_on_shutdown() {
    let dir = temp_dir("pipe-mode");
    let _rm_dir = support::Cleanup(dir.clone());
    let (server, _events) = PipeServer::bind(PipeServerConfig::new(&dir, accounts()))
        .await
        .expect("bind");
    let dir_mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700, "a created socket dir is private");
    assert_eq!(server.endpoints().len(), 2);
    for p in server.endpoints() {
        let m = std::fs::symlink_metadata(p).expect("socket file");
        assert!(m.file_type().is_socket(), "{}", p.display());
        assert_eq!(m.permissions().mode() & 0o777, 0o600, "{}", p.display());
    }
    assert!(dir.join("M1.sock").exists() && dir.join("S1.sock").exists());
    // No temporary names left behind.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
    server.shutdown().await;
    assert!(!dir.join("M1.sock").exists() && !dir.join("S1.sock").exists());
}

#[tokio::test]
async fn stale_sockets_are_replaced_live_ones_and_other_files_refused() {
    let dir = temp_dir("pipe-stale");
    let _rm_dir = support::Cleanup(dir.clone());
    std::fs::create_dir_all(&dir).unwrap();
    // A crashed agent's socket: the file exists, nobody listens.
    drop(std::os::unix::net::UnixListener::bind(dir.join("M1.sock")).unwrap());
    assert!(dir.join("M1.sock").exists());
    let one = vec![(AccountId::new("M1"), Role::Master)];
    let (server, mut events) = PipeServer::bind(PipeServerConfig::new(&dir, one.clone()))
        .await
        .expect("a stale socket is replaced");
    let mut c = RawClient::connect(&dir.join("M1.sock")).await;
    c.send_line(HELLO_M1).await;
    assert!(matches!(
        next_event(&mut events).await,
        PipeEvent::Connected { .. }
    ));

    // A second agent for the same account is refused while the first one lives.
    match PipeServer::bind(PipeServerConfig::new(&dir, one.clone())).await {
        Err(PipeError::InUse { .. }) => {}
        Err(e) => panic!("expected InUse, got {e}"),
        Ok(_) => panic!("expected InUse, got a second listener"),
    }
    // ...and the refused attempt did not remove the live socket.
    let mut c2 = RawClient::connect(&dir.join("M1.sock")).await;
    c2.send_line(HELLO_M1).await;
    assert!(matches!(
        wait_event(&mut events, |e| matches!(e, PipeEvent::Connected { .. })).await,
        PipeEvent::Connected { .. }
    ));
    drop(server);

    // A regular file where the socket goes is never deleted.
    let dir2 = temp_dir("pipe-file");
    let _rm_dir2 = support::Cleanup(dir2.clone());
    std::fs::create_dir_all(&dir2).unwrap();
    std::fs::write(dir2.join("M1.sock"), b"precious").unwrap();
    match PipeServer::bind(PipeServerConfig::new(&dir2, one)).await {
        Err(PipeError::NotASocket { .. }) => {}
        other => panic!("expected NotASocket, got {:?}", other.err()),
    }
    assert_eq!(std::fs::read(dir2.join("M1.sock")).unwrap(), b"precious");
}

#[tokio::test]
async fn bad_configuration_is_refused() {
    let dir = temp_dir("pipe-cfg");
    let _rm_dir = support::Cleanup(dir.clone());
    let bad = vec![(AccountId::new("../etc"), Role::Master)];
    assert!(matches!(
        PipeServer::bind(PipeServerConfig::new(&dir, bad))
            .await
            .err(),
        Some(PipeError::BadAccountName { .. })
    ));
    // A socket directory others may write is refused (they could swap the socket), and the
    // refused attempt leaves nothing behind.
    let open_dir = temp_dir("pipe-777");
    let _rm_open_dir = support::Cleanup(open_dir.clone());
    std::fs::create_dir_all(&open_dir).unwrap();
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    match PipeServer::bind(PipeServerConfig::new(&open_dir, accounts())).await {
        Err(PipeError::UnsafeDir { .. }) => {}
        other => panic!("expected UnsafeDir, got {:?}", other.err()),
    }
    assert_eq!(std::fs::read_dir(&open_dir).unwrap().count(), 0);
    let twice = vec![
        (AccountId::new("M1"), Role::Master),
        (AccountId::new("M1"), Role::Slave),
    ];
    assert!(matches!(
        PipeServer::bind(PipeServerConfig::new(&dir, twice))
            .await
            .err(),
        Some(PipeError::DuplicateAccount { .. })
    ));
}

#[tokio::test]
async fn hello_messages_and_close_reach_the_driver_in_order() {
    let dir = temp_dir("pipe-flow");
    let _rm_dir = support::Cleanup(dir.clone());
    let (server, mut events) = PipeServer::bind(PipeServerConfig::new(&dir, accounts()))
        .await
        .unwrap();
    let pipes = server.sender();
    let mut c = RawClient::connect(&dir.join("S1.sock")).await;
    c.send_line(HELLO_S1).await;
    let conn = match next_event(&mut events).await {
        PipeEvent::Connected {
            account,
            conn,
            hello,
        } => {
            assert_eq!(account.as_str(), "S1");
            assert_eq!(hello.role, Role::Slave);
            conn
        }
        other => panic!("{other:?}"),
    };
    // Nothing overtakes the handshake on a new connection (e.g. a command the machine
    // wrote for the previous connection): reported unwritten instead.
    let s1 = AccountId::new("S1");
    pipes.send(&s1, AgentToEa::Command(command(0))).unwrap();
    match next_event(&mut events).await {
        PipeEvent::WriteFailed { reason, .. } => assert_eq!(reason, WriteFailure::NotConnected),
        other => panic!("{other:?}"),
    }
    // The driver answers with the machine's Handshake and a command.
    pipes
        .send(
            &s1,
            AgentToEa::Handshake {
                account: s1.clone(),
                protocol_version: 1,
            },
        )
        .unwrap();
    pipes.send(&s1, AgentToEa::Command(command(1))).unwrap();
    assert!(matches!(
        c.recv_frame().await,
        AgentFrame::Msg(AgentToEa::Handshake { .. })
    ));
    assert_eq!(
        c.recv_frame().await,
        AgentFrame::Msg(AgentToEa::Command(command(1)))
    );
    c.send_line(ACK).await;
    match next_event(&mut events).await {
        PipeEvent::Message {
            account,
            conn: c2,
            msg: EaToAgent::PipeAck(a),
        } => {
            assert_eq!((account.as_str(), c2), ("S1", conn));
            assert_eq!(a.status, PipeStatus::Ok);
        }
        other => panic!("{other:?}"),
    }
    drop(c);
    match next_event(&mut events).await {
        PipeEvent::Closed {
            account,
            conn: c3,
            reason,
        } => {
            assert_eq!((account.as_str(), c3), ("S1", conn));
            assert_eq!(reason, CloseReason::Eof);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn every_malformed_frame_is_answered_and_the_connection_keeps_working() {
    let dir = temp_dir("pipe-bad");
    let _rm_dir = support::Cleanup(dir.clone());
    let (_server, mut events) = PipeServer::bind(PipeServerConfig::new(&dir, accounts()))
        .await
        .unwrap();
    let mut c = RawClient::connect(&dir.join("M1.sock")).await;
    c.send_line(HELLO_M1).await;
    assert!(matches!(
        next_event(&mut events).await,
        PipeEvent::Connected { .. }
    ));

    let too_long = format!("{{\"type\":\"intent\",\"pad\":\"{}\"}}", "x".repeat(70_000));
    let cases: Vec<(Vec<u8>, PipeErrorCode)> = vec![
        (b"{\"type\":\"intent\",".to_vec(), PipeErrorCode::BadJson),
        (b"\xff\xfe garbage".to_vec(), PipeErrorCode::NotUtf8),
        (b"[1,2,3]".to_vec(), PipeErrorCode::NotAnObject),
        (b"{\"kind\":\"OPEN\"}".to_vec(), PipeErrorCode::MissingType),
        (
            b"{\"type\":\"command\"}".to_vec(),
            PipeErrorCode::UnknownType,
        ),
        (
            b"{\"type\":\"pipe_ack\",\"command_id\":\"x\"}".to_vec(),
            PipeErrorCode::MissingField,
        ),
        (
            b"{\"type\":\"pipe_ack\",\"command_id\":\"x\",\"status\":\"ok\"}".to_vec(),
            PipeErrorCode::BadField,
        ),
        (too_long.into_bytes(), PipeErrorCode::TooLong),
        (HELLO_M1.as_bytes().to_vec(), PipeErrorCode::BadHello),
    ];
    for (n, (bad, code)) in cases.into_iter().enumerate() {
        let mut line = bad.clone();
        line.push(b'\n');
        c.send_raw(&line).await;
        assert_eq!(error_code(&mut c).await, code, "case {n}");
        // The very next valid frame still gets through.
        c.send_line(INTENT).await;
        let ev = wait_event(&mut events, |e| {
            matches!(e, PipeEvent::Message { .. } | PipeEvent::Closed { .. })
        })
        .await;
        assert!(
            matches!(
                ev,
                PipeEvent::Message {
                    msg: EaToAgent::Intent(_),
                    ..
                }
            ),
            "case {n}: {ev:?}"
        );
    }
    // The error reply names the offending frame.
    c.send_line(r#"{"type":"pipe_ack","command_id":"M1-9@S1","status":7}"#)
        .await;
    match c.recv_frame().await {
        AgentFrame::Error(e) => {
            assert_eq!(e.code, PipeErrorCode::BadField);
            assert_eq!(e.ref_type.as_deref(), Some("pipe_ack"));
            assert_eq!(e.ref_id.as_deref(), Some("M1-9@S1"));
            assert!(e.message.contains("status"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
    // CRLF line ends and blank keep-alive lines are fine.
    c.send_raw(format!("\r\n\n{INTENT}\r\n").as_bytes()).await;
    assert!(matches!(
        wait_event(&mut events, |e| matches!(e, PipeEvent::Message { .. })).await,
        PipeEvent::Message { .. }
    ));
    // A broken error frame is not answered; a peer error frame is reported to the driver.
    c.send_line(r#"{"type":"error"}"#).await;
    c.send_line(r#"{"type":"error","code":"BAD_FIELD","message":"side","ref_type":"command","ref_id":"c1"}"#)
        .await;
    match wait_event(&mut events, |e| matches!(e, PipeEvent::PeerError { .. })).await {
        PipeEvent::PeerError { error, .. } => {
            assert_eq!(error.code, PipeErrorCode::BadField);
            assert_eq!(error.ref_id.as_deref(), Some("c1"));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        c.quiet_for(Duration::from_millis(200)).await,
        "no reply to error frames"
    );
}

#[tokio::test]
async fn frames_before_hello_are_refused_and_bad_hellos_close() {
    let dir = temp_dir("pipe-hello");
    let _rm_dir = support::Cleanup(dir.clone());
    let mut cfg = PipeServerConfig::new(&dir, accounts());
    cfg.hello_timeout = Duration::from_millis(300);
    let (_server, mut events) = PipeServer::bind(cfg).await.unwrap();

    // Not yet hello: answered, not passed on, connection open.
    let mut c = RawClient::connect(&dir.join("M1.sock")).await;
    c.send_line(INTENT).await;
    match c.recv_frame().await {
        AgentFrame::Error(e) => {
            assert_eq!(e.code, PipeErrorCode::HelloRequired);
            assert_eq!(e.ref_id.as_deref(), Some("M1-1"));
        }
        other => panic!("{other:?}"),
    }
    c.send_line(HELLO_M1).await;
    assert!(matches!(
        next_event(&mut events).await,
        PipeEvent::Connected { .. }
    ));
    c.send_line(INTENT).await;
    assert!(matches!(
        next_event(&mut events).await,
        PipeEvent::Message { .. }
    ));

    // Wrong account, wrong role, wrong version: error frame, then the connection is closed.
    for (path, hello, code) in [
        ("M1.sock", HELLO_S1, PipeErrorCode::BadHello),
        (
            "S1.sock",
            r#"{"type":"hello","account":"S1","role":"MASTER","protocol_version":1}"#,
            PipeErrorCode::BadHello,
        ),
        (
            "S1.sock",
            r#"{"type":"hello","account":"S1","role":"SLAVE","protocol_version":2}"#,
            PipeErrorCode::UnsupportedVersion,
        ),
    ] {
        let mut bad = RawClient::connect(&dir.join(path)).await;
        bad.send_line(hello).await;
        assert_eq!(error_code(&mut bad).await, code);
        assert!(bad.recv().await.is_none(), "closed after a refused hello");
        match next_event(&mut events).await {
            PipeEvent::HelloRefused { error, .. } => assert_eq!(error.code, code),
            other => panic!("{other:?}"),
        }
    }

    // Silence: HELLO_TIMEOUT, closed.
    let mut silent = RawClient::connect(&dir.join("S1.sock")).await;
    assert_eq!(error_code(&mut silent).await, PipeErrorCode::HelloTimeout);
    assert!(silent.recv().await.is_none());

    // The refused connections never disturbed the live one.
    c.send_line(INTENT).await;
    assert!(matches!(
        wait_event(&mut events, |e| matches!(e, PipeEvent::Message { .. })).await,
        PipeEvent::Message { .. }
    ));
}

#[tokio::test]
async fn the_newest_connection_wins() {
    let dir = temp_dir("pipe-replace");
    let _rm_dir = support::Cleanup(dir.clone());
    let (_server, mut events) = PipeServer::bind(PipeServerConfig::new(&dir, accounts()))
        .await
        .unwrap();
    let mut old = RawClient::connect(&dir.join("M1.sock")).await;
    old.send_line(HELLO_M1).await;
    let first = match next_event(&mut events).await {
        PipeEvent::Connected { conn, .. } => conn,
        other => panic!("{other:?}"),
    };
    let mut new = RawClient::connect(&dir.join("M1.sock")).await;
    new.send_line(HELLO_M1).await;
    match next_event(&mut events).await {
        PipeEvent::Closed { conn, reason, .. } => {
            assert_eq!(conn, first);
            assert_eq!(reason, CloseReason::Replaced);
        }
        other => panic!("{other:?}"),
    }
    let second = match next_event(&mut events).await {
        PipeEvent::Connected { conn, .. } => conn,
        other => panic!("{other:?}"),
    };
    assert_ne!(first, second);
    assert_eq!(error_code(&mut old).await, PipeErrorCode::Replaced);
    assert!(old.recv().await.is_none());
    new.send_line(INTENT).await;
    match next_event(&mut events).await {
        PipeEvent::Message { conn, .. } => assert_eq!(conn, second),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn undeliverable_writes_are_reported() {
    let dir = temp_dir("pipe-wfail");
    let _rm_dir = support::Cleanup(dir.clone());
    let mut cfg = PipeServerConfig::new(&dir, accounts());
    cfg.write_timeout = Duration::from_millis(300);
    cfg.outbound_capacity = 100_000;
    let (server, mut events) = PipeServer::bind(cfg).await.unwrap();
    let pipes = server.sender();
    let s1 = AccountId::new("S1");

    assert_eq!(
        pipes.send(&AccountId::new("nobody"), AgentToEa::Command(command(1))),
        Err(SendError::UnknownAccount)
    );
    // Nobody connected: reported, with the command id the machine needs.
    pipes.send(&s1, AgentToEa::Command(command(1))).unwrap();
    let ev = next_event(&mut events).await;
    assert!(matches!(
        &ev,
        PipeEvent::WriteFailed {
            reason: WriteFailure::NotConnected,
            ..
        }
    ));
    let (acct, id) = ev.failed_command().expect("a command");
    assert_eq!((acct.as_str(), id.as_str()), ("S1", "M1-1@S1"));

    // A terminal that never reads: the socket buffer fills, the write times out, every
    // unwritten command comes back as WriteFailed, and the connection is closed.
    let mut c = RawClient::connect(&dir.join("S1.sock")).await;
    c.send_line(HELLO_S1).await;
    assert!(matches!(
        next_event(&mut events).await,
        PipeEvent::Connected { .. }
    ));
    pipes
        .send(
            &s1,
            AgentToEa::Handshake {
                account: s1.clone(),
                protocol_version: 1,
            },
        )
        .unwrap();
    let total = 20_000;
    for n in 0..total {
        loop {
            match pipes.send(&s1, AgentToEa::Command(command(n))) {
                Ok(()) => break,
                Err(SendError::Full) => tokio::task::yield_now().await,
                Err(e) => panic!("{e}"),
            }
        }
    }
    let mut failed = 0;
    loop {
        match next_event(&mut events).await {
            PipeEvent::WriteFailed { reason, .. } => {
                assert!(matches!(
                    reason,
                    WriteFailure::Io(_) | WriteFailure::QueueFull | WriteFailure::NotConnected
                ));
                failed += 1;
            }
            PipeEvent::Closed { reason, .. } => {
                assert!(matches!(reason, CloseReason::WriteError(_)), "{reason:?}");
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(failed > 0, "some commands were reported unwritten");
    drop(c);
}
