//! Pipe frames: every machine message round-trips through its JSON line; every way a line can
//! be malformed yields its typed error and the defined `error` reply; SPEC.md's examples decode
//! to exactly what the code encodes; the fuzz corpus decodes without a panic.

use std::path::PathBuf;

use echo_runtime::machines::config::AgentDeliveryConfig;
use echo_runtime::machines::ids::{AccountId, CommandId, IntentId, Symbol, TradeId};
use echo_runtime::machines::msg::{
    AckResult, AgentToEa, BrokerStatus, Command, CommandBody, EaToAgent, ErrorCode, ExecTerms,
    ExecutionResult, IntentKind, MasterFacts, OrderType, PipeDeliveryAck, PipeStatus, Role, Side,
    SlaveSizing, TradeIntent, TradeIntentAck,
};
use echo_runtime::pipe::{
    decode_agent, decode_ea, encode_agent, encode_ea, AgentFrame, DecodeErrorKind, EaFrame,
    ErrorFrame, Hello, PipeErrorCode, MAX_FRAME_LEN,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn intent(kind: IntentKind) -> TradeIntent {
    TradeIntent {
        origin: MasterFacts {
            magic: -42,
            comment: "grid \"#3\" ü".into(),
            order_type: OrderType::StopLimit,
            balance: 10_000.5,
            equity: 9_876.25,
        },
        intent_id: IntentId::new("M1-7"),
        trade_id: TradeId::new("m1-t3"),
        master: AccountId::new("M1"),
        kind,
        symbol: Symbol::new("EURUSD"),
        side: Side::Sell,
        volume: 0.5,
        price: 1.08345,
        stop_loss: 1.09,
        take_profit: 0.0,
        master_ticket: 123_456_789,
        master_seq: 7,
        emitted_at_ms: 1_764_726_000_123,
        master_volume_before: 0.0,
    }
}

fn command(body: CommandBody) -> Command {
    Command {
        command_id: CommandId::new("M1-7@S1"),
        intent_id: IntentId::new("M1-7"),
        trade_id: TradeId::new("m1-t3"),
        slave: AccountId::new("S1"),
        body,
    }
}

fn ea_frames() -> Vec<EaFrame> {
    let mut v = vec![
        EaFrame::Hello(Hello {
            account: AccountId::new("M1"),
            role: Role::Master,
            protocol_version: 1,
            software: Some("MyEA 2.1 \"quoted\" ü".into()),
        }),
        EaFrame::Hello(Hello {
            account: AccountId::new("S1"),
            role: Role::Slave,
            protocol_version: 1,
            software: None,
        }),
    ];
    for k in [
        IntentKind::Open,
        IntentKind::Modify,
        IntentKind::PartialClose,
        IntentKind::Close,
    ] {
        v.push(EaFrame::Msg(EaToAgent::Intent(intent(k))));
    }
    let mut buy = intent(IntentKind::Open);
    buy.side = Side::Buy;
    buy.master_ticket = -1;
    buy.master_seq = u64::MAX;
    v.push(EaFrame::Msg(EaToAgent::Intent(buy)));
    for (status, reason) in [
        (PipeStatus::Ok, None),
        (PipeStatus::Retry, None),
        (PipeStatus::Failed, Some(ErrorCode::InvalidArgument)),
        (PipeStatus::Failed, Some(ErrorCode::UnknownAccount)),
    ] {
        v.push(EaFrame::Msg(EaToAgent::PipeAck(PipeDeliveryAck {
            command_id: CommandId::new("M1-7@S1"),
            status,
            reason,
        })));
    }
    for status in [
        BrokerStatus::Filled,
        BrokerStatus::Rejected,
        BrokerStatus::Cancelled,
    ] {
        v.push(EaFrame::Msg(EaToAgent::Execution(ExecutionResult {
            reason: None,
            command_id: CommandId::new("M1-7@S1"),
            trade_id: TradeId::new("m1-t3"),
            slave: AccountId::new("S1"),
            slave_ticket: 500_001,
            fill_price: 1.08345,
            filled_volume: 0.5,
            status,
            legs: Vec::new(),
        })));
    }
    v.push(EaFrame::Msg(EaToAgent::Execution(ExecutionResult {
        reason: Some(ErrorCode::PriceDeviation),
        command_id: CommandId::new("M1-7@S1"),
        trade_id: TradeId::new("m1-t3"),
        slave: AccountId::new("S1"),
        slave_ticket: 0,
        fill_price: 0.0,
        filled_volume: 0.0,
        status: BrokerStatus::Rejected,
        legs: Vec::new(),
    })));
    v.push(EaFrame::Error(ErrorFrame {
        code: PipeErrorCode::BadJson,
        message: "x".into(),
        ref_type: None,
        ref_id: Some("id".into()),
    }));
    v
}

fn agent_frames() -> Vec<AgentFrame> {
    let mut v = vec![AgentFrame::Msg(AgentToEa::Handshake {
        account: AccountId::new("S1"),
        protocol_version: 1,
    })];
    for (result, error, retry) in [
        (AckResult::Ok, None, 0),
        (AckResult::Pending, None, 0),
        (AckResult::Failed, Some(ErrorCode::BrokerBusy), 200),
        (
            AckResult::Failed,
            Some(ErrorCode::JournalUnavailable),
            1_000,
        ),
        (AckResult::Failed, Some(ErrorCode::Internal), 0),
    ] {
        v.push(AgentFrame::Msg(AgentToEa::IntentAck(TradeIntentAck {
            intent_id: IntentId::new("M1-7"),
            trade_id: TradeId::new("m1-t3"),
            result,
            error,
            retry_after_ms: retry,
        })));
    }
    let bodies = [
        CommandBody::Execute {
            terms: ExecTerms {
                sizing: SlaveSizing::EquityRatio,
                sizing_value: 1.5,
                master_amount: 9_876.25,
                master_contract_size: 100_000.0,
                trade_min: true,
                check_free_margin: true,
                max_deviation_points: 30,
                deviation_window_ms: 500,
                max_open_positions: 5,
                max_total_lots: 2.5,
                split_max_lots: 0.0,
                split_min_lots: 0.0,
            },
            symbol: Symbol::new("EURUSD.m"),
            side: Side::Buy,
            volume: 0.1,
            price: 1.1,
            stop_loss: 1.095,
            take_profit: 1.11,
            catch_up: true,
        },
        CommandBody::Modify {
            slave_ticket: 500_001,
            stop_loss: 1.096,
            take_profit: 0.0,
        },
        CommandBody::Close {
            slave_ticket: 500_001,
            volume: 0.0,
        },
        CommandBody::Close {
            slave_ticket: 500_001,
            volume: 0.05,
        },
        CommandBody::ClosePart {
            slave_ticket: 500_001,
            fraction: echo_statemachine::msg::CloseFraction {
                master_closed: 0.3,
                master_volume_before: 1.7,
                slave_min: 0.01,
                slave_step: 0.01,
            },
        },
    ];
    for b in bodies {
        v.push(AgentFrame::Msg(AgentToEa::Command(command(b.clone()))));
        v.push(AgentFrame::Msg(AgentToEa::Cancel(command(b))));
    }
    v.push(AgentFrame::Msg(AgentToEa::DeliveryConfig(
        AgentDeliveryConfig::default(),
    )));
    v.push(AgentFrame::Error(ErrorFrame {
        code: PipeErrorCode::Other("SOMETHING_NEW".into()),
        message: String::new(),
        ref_type: Some("intent".into()),
        ref_id: None,
    }));
    v
}

#[test]
fn every_terminal_frame_round_trips() {
    for f in ea_frames() {
        let line = encode_ea(&f);
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
        assert!(line.starts_with("{\"type\":"), "type first: {line}");
        let back = decode_ea(line.trim_end().as_bytes()).expect(&line);
        assert_eq!(back, f, "{line}");
    }
}

#[test]
fn every_agent_frame_round_trips() {
    for f in agent_frames() {
        let line = encode_agent(&f);
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
        let back = decode_agent(line.trim_end().as_bytes()).expect(&line);
        assert_eq!(back, f, "{line}");
    }
}

#[test]
fn directions_do_not_mix() {
    // A command is not a terminal frame, an intent is not an agent frame.
    let cmd = encode_agent(&agent_frames()[6]);
    let e = decode_ea(cmd.trim_end().as_bytes()).unwrap_err();
    assert_eq!(e.code(), PipeErrorCode::UnknownType);
    assert_eq!(e.frame_id.as_deref(), Some("M1-7@S1"));
    let int = encode_ea(&ea_frames()[2]);
    let e = decode_agent(int.trim_end().as_bytes()).unwrap_err();
    assert_eq!(e.code(), PipeErrorCode::UnknownType);
}

#[test]
fn malformed_lines_yield_typed_errors() {
    let cases: Vec<(&[u8], PipeErrorCode)> = vec![
        (b"\xff\xfe{}", PipeErrorCode::NotUtf8),
        (b"{\"type\":\"hello\"", PipeErrorCode::BadJson),
        (b"not json", PipeErrorCode::BadJson),
        (b"[1,2,3]", PipeErrorCode::NotAnObject),
        (b"\"hello\"", PipeErrorCode::NotAnObject),
        (b"{}", PipeErrorCode::MissingType),
        (b"{\"type\":7}", PipeErrorCode::MissingType),
        (b"{\"type\":\"bogus\"}", PipeErrorCode::UnknownType),
        (b"{\"type\":\"hello\",\"role\":\"MASTER\",\"protocol_version\":1}", PipeErrorCode::MissingField),
        (b"{\"type\":\"hello\",\"account\":null,\"role\":\"MASTER\",\"protocol_version\":1}", PipeErrorCode::MissingField),
        (b"{\"type\":\"hello\",\"account\":\"M1\",\"role\":\"master\",\"protocol_version\":1}", PipeErrorCode::BadField),
        (b"{\"type\":\"hello\",\"account\":\"M1\",\"role\":\"MASTER\",\"protocol_version\":1.5}", PipeErrorCode::BadField),
        (b"{\"type\":\"hello\",\"account\":\"M1\",\"role\":\"MASTER\",\"protocol_version\":4294967296}", PipeErrorCode::BadField),
        (b"{\"type\":\"hello\",\"account\":5,\"role\":\"MASTER\",\"protocol_version\":1}", PipeErrorCode::BadField),
        (b"{\"type\":\"pipe_ack\",\"command_id\":\"c\",\"status\":\"MAYBE\"}", PipeErrorCode::BadField),
        (b"{\"type\":\"pipe_ack\",\"command_id\":\"c\",\"status\":\"OK\",\"reason\":\"NOPE\"}", PipeErrorCode::BadField),
        (b"{\"type\":\"execution\",\"command_id\":\"c\"}", PipeErrorCode::MissingField),
        (b"{\"type\":\"intent\",\"intent_id\":\"i\",\"trade_id\":\"t\",\"master\":\"M1\",\"kind\":\"OPEN\",\"symbol\":\"X\",\"side\":\"BUY\",\"volume\":\"1\",\"price\":1,\"stop_loss\":0,\"take_profit\":0,\"master_ticket\":1,\"master_seq\":1,\"emitted_at_ms\":1}", PipeErrorCode::BadField),
        (b"{\"type\":\"intent\",\"intent_id\":\"i\",\"trade_id\":\"t\",\"master\":\"M1\",\"kind\":\"OPEN\",\"symbol\":\"X\",\"side\":\"BUY\",\"volume\":1,\"price\":1,\"stop_loss\":0,\"take_profit\":0,\"master_ticket\":1,\"master_seq\":-1,\"emitted_at_ms\":1}", PipeErrorCode::BadField),
        (b"{\"type\":\"error\"}", PipeErrorCode::MissingField),
    ];
    for (line, code) in cases {
        let e = decode_ea(line).unwrap_err();
        assert_eq!(e.code(), code, "{}", String::from_utf8_lossy(line));
        let reply = e.to_error_frame();
        assert_eq!(reply.code, code);
        assert!(!reply.message.is_empty());
        // The reply itself is a valid agent frame.
        let enc = encode_agent(&AgentFrame::Error(reply.clone()));
        assert_eq!(
            decode_agent(enc.trim_end().as_bytes()).unwrap(),
            AgentFrame::Error(reply)
        );
    }
    // Missing fields name the field, and the reply carries the frame's type and id.
    let e = decode_ea(b"{\"type\":\"pipe_ack\",\"command_id\":\"c9\"}").unwrap_err();
    assert_eq!(e.kind, DecodeErrorKind::MissingField { field: "status" });
    assert_eq!(e.frame_type.as_deref(), Some("pipe_ack"));
    assert_eq!(e.frame_id.as_deref(), Some("c9"));
    // A broken error frame is never answered (no error ping-pong).
    assert!(!decode_ea(b"{\"type\":\"error\"}")
        .unwrap_err()
        .deserves_reply());
    assert!(decode_ea(b"{\"type\":\"bogus\"}")
        .unwrap_err()
        .deserves_reply());
}

#[test]
fn unknown_fields_are_ignored_and_integers_are_numbers() {
    let line =
        br#"{"type":"pipe_ack","command_id":"c","status":"OK","reason":null,"future_field":[1,2]}"#;
    assert!(matches!(
        decode_ea(line),
        Ok(EaFrame::Msg(EaToAgent::PipeAck(_)))
    ));
    // An integer is a valid float field.
    let line = br#"{"type":"execution","command_id":"c","trade_id":"t","slave":"S1","slave_ticket":5,"fill_price":1,"filled_volume":2,"status":"FILLED"}"#;
    match decode_ea(line) {
        Ok(EaFrame::Msg(EaToAgent::Execution(r))) => assert_eq!(r.fill_price, 1.0),
        other => panic!("{other:?}"),
    }
}

#[test]
fn non_finite_numbers_encode_as_null_and_are_refused() {
    let mut i = intent(IntentKind::Open);
    i.price = f64::NAN;
    let line = encode_ea(&EaFrame::Msg(EaToAgent::Intent(i)));
    assert!(line.contains("\"price\":null"));
    let e = decode_ea(line.trim_end().as_bytes()).unwrap_err();
    assert_eq!(e.kind, DecodeErrorKind::MissingField { field: "price" });
}

// ---------------------------------------------------------------- SPEC.md examples

/// The fenced blocks of SPEC.md with the given info string.
fn spec_blocks(tag: &str) -> Vec<Vec<String>> {
    let spec = std::fs::read_to_string(root().join("SPEC.md")).expect("SPEC.md");
    let mut blocks = Vec::new();
    let mut cur: Option<Vec<String>> = None;
    for l in spec.lines() {
        match &mut cur {
            None if l.trim() == format!("```{tag}") => cur = Some(Vec::new()),
            Some(b) if l.trim() == "```" => {
                blocks.push(std::mem::take(b));
                cur = None;
            }
            Some(b) => b.push(l.to_string()),
            None => {}
        }
    }
    blocks
}

#[test]
fn spec_examples_decode_and_are_canonical() {
    let ea = spec_blocks("jsonl-terminal");
    let agent = spec_blocks("jsonl-agent");
    assert!(
        ea.len() >= 2 && agent.len() >= 2,
        "SPEC.md pipe examples missing"
    );
    let mut types = std::collections::BTreeSet::new();
    for line in ea.iter().flatten() {
        let f = decode_ea(line.as_bytes()).unwrap_or_else(|e| panic!("SPEC line {line}: {e}"));
        assert_eq!(
            encode_ea(&f).trim_end(),
            line,
            "SPEC example is not canonical"
        );
        types.insert(line.split('"').nth(3).unwrap_or("").to_string());
    }
    for line in agent.iter().flatten() {
        let f = decode_agent(line.as_bytes()).unwrap_or_else(|e| panic!("SPEC line {line}: {e}"));
        assert_eq!(
            encode_agent(&f).trim_end(),
            line,
            "SPEC example is not canonical"
        );
        types.insert(line.split('"').nth(3).unwrap_or("").to_string());
    }
    for t in [
        "hello",
        "intent",
        "pipe_ack",
        "execution",
        "handshake",
        "intent_ack",
        "command",
        "cancel",
        "delivery_config",
        "error",
    ] {
        assert!(types.contains(t), "SPEC.md has no example of a {t} frame");
    }
}

/// `catch_up` (SPEC.md §9, EXECUTE): written only when true, absent (a legacy agent) reads as
/// a live open, and SPEC.md shows a catch-up open and the slave's EXPIRED answer.
#[test]
fn a_catch_up_open_is_flagged_only_when_it_is_one() {
    let live = br#"{"type":"command","command_id":"M1-20@S1","intent_id":"M1-20","trade_id":"m1-t9","slave":"S1","action":"EXECUTE","symbol":"EURUSD","side":"BUY","volume":0.5,"price":1.1,"stop_loss":0.0,"take_profit":0.0}"#;
    let Ok(AgentFrame::Msg(AgentToEa::Command(c))) = decode_agent(live) else {
        panic!("a legacy EXECUTE must decode");
    };
    assert!(matches!(
        c.body,
        CommandBody::Execute {
            catch_up: false,
            ..
        }
    ));
    assert!(!encode_agent(&AgentFrame::Msg(AgentToEa::Command(c.clone()))).contains("catch_up"));
    let mut late = c;
    if let CommandBody::Execute { catch_up, .. } = &mut late.body {
        *catch_up = true;
    }
    let line = encode_agent(&AgentFrame::Msg(AgentToEa::Command(late.clone())));
    assert!(line.contains(r#""catch_up":true"#), "{line}");
    assert_eq!(
        decode_agent(line.trim_end().as_bytes()).ok(),
        Some(AgentFrame::Msg(AgentToEa::Command(late)))
    );
    let bad = br#"{"type":"command","command_id":"M1-20@S1","intent_id":"M1-20","trade_id":"m1-t9","slave":"S1","action":"EXECUTE","symbol":"EURUSD","side":"BUY","volume":0.5,"price":1.1,"stop_loss":0.0,"take_profit":0.0,"catch_up":1}"#;
    assert!(decode_agent(bad).is_err(), "catch_up is a boolean");
    let spec = spec_blocks("jsonl-agent");
    assert!(
        spec.iter()
            .flatten()
            .any(|l| l.contains(r#""catch_up":true"#)),
        "SPEC.md §9 shows no catch-up open"
    );
    assert!(
        spec_blocks("jsonl-terminal")
            .iter()
            .flatten()
            .any(|l| l.contains("ERROR_CODE_EXPIRED")),
        "SPEC.md §9 shows no EXPIRED answer"
    );
}

#[test]
fn spec_error_examples_match_the_code() {
    let blocks = spec_blocks("pipe-errors");
    assert!(!blocks.is_empty(), "SPEC.md error examples missing");
    let mut n = 0;
    for block in blocks {
        let mut lines = block.iter();
        while let Some(sent) = lines.next() {
            let sent = sent
                .strip_prefix("> ")
                .expect("'> ' line: what the terminal sent");
            let reply = lines
                .next()
                .and_then(|r| r.strip_prefix("< "))
                .expect("'< ' line: the agent's reply");
            let err = decode_ea(sent.as_bytes()).expect_err(sent);
            let want = decode_agent(reply.as_bytes()).expect(reply);
            assert_eq!(AgentFrame::Error(err.to_error_frame()), want, "{sent}");
            assert_eq!(encode_agent(&want).trim_end(), reply);
            n += 1;
        }
    }
    assert!(n >= 3);
}

// ---------------------------------------------------------------- fuzz corpus

#[test]
fn fuzz_corpus_decodes_without_panic() {
    let dir = root().join("fuzz").join("corpus").join("pipe_frame");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/corpus/pipe_frame") {
        let path = entry.expect("dir entry").path();
        let bytes = std::fs::read(&path).expect("corpus file");
        // Exactly what the fuzz target does.
        let _ = decode_ea(&bytes);
        let _ = decode_agent(&bytes);
        for line in bytes.split(|&b| b == b'\n') {
            if let Ok(f) = decode_ea(line) {
                assert_eq!(decode_ea(encode_ea(&f).trim_end().as_bytes()).ok(), Some(f));
            }
            if let Ok(f) = decode_agent(line) {
                assert_eq!(
                    decode_agent(encode_agent(&f).trim_end().as_bytes()).ok(),
                    Some(f)
                );
            }
        }
        n += 1;
    }
    assert!(n >= 10, "corpus has only {n} files");
}

#[test]
fn max_frame_len_is_generous_for_real_frames() {
    let line = encode_ea(&ea_frames()[2]);
    assert!(line.len() * 50 < MAX_FRAME_LEN);
}
