//! Replays `fuzz/corpus/wire_decode/` (and mutations of it) through the wire fuzz target's own
//! function on stable: every input decodes to a message or a typed error, never a panic, and
//! every decoded message survives machine → wire → machine. Also (re)writes the seed corpus
//! from real messages, so the seeds follow the contract.

use std::path::PathBuf;

use echo_proto::v1 as pb;
use echo_runtime::link::convert::{self, exercise_untrusted};
use echo_statemachine::ids::{AccountId, CommandId, IntentId, Symbol, TradeId};
use echo_statemachine::msg::{
    AckResult, AckStage, AgentToCore, Command, CommandAck, CommandBody, CoreToAgent, IntentKind,
    Side, TradeIntent, TradeIntentAck,
};
use prost::Message as _;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/wire_decode")
}

fn seeds() -> Vec<(String, Vec<u8>)> {
    let intent = TradeIntent {
        origin: Default::default(),
        intent_id: IntentId::new("i-1"),
        trade_id: TradeId::new("T-1"),
        master: AccountId::new("m1"),
        kind: IntentKind::Open,
        symbol: Symbol::new("EURUSD"),
        side: Side::Buy,
        volume: 1.0,
        price: 1.1,
        stop_loss: 1.0,
        take_profit: 1.2,
        master_ticket: 7,
        master_seq: 1,
        emitted_at_ms: 1_700_000_000_000,
        master_volume_before: 0.0,
    };
    let cmd = Command {
        command_id: CommandId::new("c-1"),
        intent_id: IntentId::new("i-1"),
        trade_id: TradeId::new("t-1"),
        slave: AccountId::new("s1"),
        body: CommandBody::Close {
            slave_ticket: 9,
            volume: 0.5,
        },
    };
    let ack = CommandAck {
        command_id: CommandId::new("c-1"),
        trade_id: TradeId::new("t-1"),
        slave: AccountId::new("s1"),
        stage: AckStage::PipeDelivered,
        result: AckResult::Ok,
        error: None,
        attempt: 2,
    };
    let mut v = vec![
        (
            "intent".to_string(),
            convert::agent_to_core_to_wire(&AgentToCore::Intent(intent), "", "a").encode_to_vec(),
        ),
        (
            "command_ack".to_string(),
            convert::agent_to_core_to_wire(&AgentToCore::CommandAck(ack), "", "a").encode_to_vec(),
        ),
        (
            "command".to_string(),
            convert::core_to_agent_to_wire(&CoreToAgent::Command(cmd.clone()), "c", 0)[0]
                .encode_to_vec(),
        ),
        (
            "cancel".to_string(),
            convert::core_to_agent_to_wire(&CoreToAgent::Cancel(cmd), "c", 0)[0].encode_to_vec(),
        ),
        (
            "intent_ack".to_string(),
            convert::core_to_agent_to_wire(
                &CoreToAgent::IntentAck(TradeIntentAck {
                    intent_id: IntentId::new("i-1"),
                    trade_id: TradeId::new("t-1"),
                    result: AckResult::Failed,
                    error: Some(echo_statemachine::msg::ErrorCode::BrokerBusy),
                    retry_after_ms: 250,
                }),
                "c",
                0,
            )[0]
            .encode_to_vec(),
        ),
    ];
    let bad_enum = pb::AgentToCore {
        body: Some(pb::agent_to_core::Body::Intent(pb::TradeIntent {
            kind: 99,
            ..Default::default()
        })),
    };
    v.push(("bad_enum".into(), bad_enum.encode_to_vec()));
    v.push(("empty".into(), Vec::new()));
    v
}

#[test]
fn seed_corpus_is_current_and_replays_without_panic() {
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).expect("corpus dir");
    for (name, bytes) in seeds() {
        let path = dir.join(format!("{name}.bin"));
        if std::fs::read(&path).ok().as_deref() != Some(bytes.as_slice()) {
            std::fs::write(&path, &bytes).expect("write seed");
        }
    }
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("read corpus") {
        let bytes = std::fs::read(entry.expect("entry").path()).expect("read seed");
        exercise_untrusted(&bytes);
        n += 1;
    }
    assert!(n >= 7, "corpus has {n} files");
}

#[test]
fn malformed_envelopes_are_typed_errors() {
    let bad = pb::AgentToCore {
        body: Some(pb::agent_to_core::Body::Intent(pb::TradeIntent {
            kind: 99,
            side: 1,
            ..Default::default()
        })),
    };
    assert_eq!(
        convert::agent_to_core_from_wire(bad),
        Err(convert::WireError::BadEnum {
            field: "kind",
            value: 99
        })
    );
    assert_eq!(
        convert::agent_to_core_from_wire(pb::AgentToCore { body: None }),
        Err(convert::WireError::EmptyBody)
    );
    let no_cmd = pb::CoreToAgent {
        body: Some(pb::core_to_agent::Body::Command(pb::SlaveCommand {
            command: None,
        })),
    };
    assert_eq!(
        convert::core_to_agent_from_wire(no_cmd),
        Err(convert::WireError::Missing("command"))
    );
}

#[test]
fn mutations_of_the_seeds_never_panic() {
    // A deterministic xorshift: the same mutations every run.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for (_, seed) in seeds() {
        for _ in 0..500 {
            let mut b = seed.clone();
            match next() % 3 {
                0 if !b.is_empty() => {
                    let i = (next() as usize) % b.len();
                    b[i] ^= (next() & 0xff) as u8;
                }
                1 if !b.is_empty() => {
                    let cut = (next() as usize) % b.len();
                    b.truncate(cut);
                }
                _ => b.push((next() & 0xff) as u8),
            }
            exercise_untrusted(&b);
        }
    }
}

/// A close and a partial close by fraction keep their meaning on the wire: the fraction
/// (`CloseOrder.master_volume_before > 0`) comes back as `ClosePart` with every field, a plain
/// close (`master_volume_before = 0`) as `Close`; and a partial close's intent keeps its
/// `master_volume_before`.
#[test]
fn close_and_partial_close_by_fraction_survive_the_wire() {
    use echo_statemachine::ids::{AccountId, CommandId, IntentId, TradeId};
    use echo_statemachine::msg::CloseFraction;
    let cmd = |body| Command {
        command_id: CommandId::new("i1@s1"),
        intent_id: IntentId::new("i1"),
        trade_id: TradeId::new("t1"),
        slave: AccountId::new("s1"),
        body,
    };
    for body in [
        CommandBody::Close {
            slave_ticket: 7,
            volume: 0.25,
        },
        CommandBody::ClosePart {
            slave_ticket: 7,
            fraction: CloseFraction {
                master_closed: 0.3,
                master_volume_before: 1.7,
                slave_min: 0.02,
                slave_step: 0.01,
            },
        },
    ] {
        let c = cmd(body);
        let back = convert::command_from_wire(convert::command_to_wire(&c));
        assert_eq!(back, Ok(c));
    }
    let i = TradeIntent {
        intent_id: IntentId::new("i-2"),
        trade_id: TradeId::new("T-1"),
        master: AccountId::new("m1"),
        kind: IntentKind::PartialClose,
        symbol: echo_statemachine::ids::Symbol::new("EURUSD"),
        side: echo_statemachine::msg::Side::Buy,
        volume: 0.5,
        price: 1.1,
        stop_loss: 1.0,
        take_profit: 1.2,
        master_ticket: 7,
        master_seq: 2,
        emitted_at_ms: 1_700_000_000_000,
        master_volume_before: 2.5,
        origin: echo_statemachine::msg::MasterFacts {
            magic: 42,
            comment: "hedge".into(),
            ..Default::default()
        },
    };
    let back = convert::intent_from_wire(convert::intent_to_wire(&i));
    assert_eq!(back, Ok(i));
}

/// Pending orders keep their meaning on the wire (`SlaveCommand` fields 4–6, `IntentKind`
/// 5–9) and on the pipe (`PLACE_PENDING` / `MODIFY_PENDING` / `RESOLVE_PENDING`): every field
/// comes back, and a legacy peer that knows none of the new fields reads a command with none set,
/// which it refuses rather than executes.
#[test]
fn pending_orders_survive_the_wire_and_the_pipe() {
    use echo_runtime::pipe::frame::{command_from_value, command_value, intent_from_value};
    use echo_statemachine::ids::{AccountId, CommandId, IntentId, Symbol, TradeId};
    use echo_statemachine::msg::{ExecTerms, PendingResolution, PendingType, Side};
    let cmd = |body| Command {
        command_id: CommandId::new("i1@s1"),
        intent_id: IntentId::new("i1"),
        trade_id: TradeId::new("t1"),
        slave: AccountId::new("s1"),
        body,
    };
    let terms = ExecTerms {
        max_deviation_points: 25,
        max_open_positions: 4,
        ..ExecTerms::default()
    };
    for body in [
        CommandBody::PlacePending {
            symbol: Symbol::new("EURUSD"),
            side: Side::Sell,
            order_type: PendingType::Stop,
            volume: 0.3,
            price: 1.0987,
            stop_loss: 1.1,
            take_profit: 1.08,
            terms,
        },
        CommandBody::ModifyPending {
            slave_ticket: 9,
            price: 1.0991,
            stop_loss: 0.0,
            take_profit: 1.12,
        },
        CommandBody::ResolvePending {
            slave_ticket: 9,
            resolution: PendingResolution::Trigger,
            symbol: Symbol::new("EURUSD"),
            side: Side::Buy,
            price: 1.0991,
            stop_loss: 1.09,
            take_profit: 1.11,
            terms,
        },
        CommandBody::ResolvePending {
            slave_ticket: 9,
            resolution: PendingResolution::Cancel,
            symbol: Symbol::new("EURUSD"),
            side: Side::Buy,
            price: 0.0,
            stop_loss: 0.0,
            take_profit: 0.0,
            terms: ExecTerms::default(),
        },
    ] {
        let c = cmd(body);
        let wire = convert::command_to_wire(&c);
        assert_eq!(convert::command_from_wire(wire.clone()), Ok(c.clone()));
        assert_eq!(command_from_value(&command_value(&c)), Ok(c.clone()));
        // A legacy peer decodes the bytes without the new oneof fields: no command at all.
        let bytes = prost::Message::encode_to_vec(&wire);
        let legacy = LegacySlaveCommand::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(legacy, LegacySlaveCommand::default(), "{c:?}");
    }
    for k in [
        IntentKind::PlaceLimit,
        IntentKind::PlaceStop,
        IntentKind::PendingModify,
        IntentKind::PendingCancel,
        IntentKind::PendingTrigger,
    ] {
        let w = convert::kind_to_wire(k);
        assert!((5..=9).contains(&(w as i32)), "{k:?} is {w:?}");
        assert_eq!(convert::kind_from_wire(w as i32), Ok(k));
        let v = serde_json::json!({
            "intent_id": "i", "trade_id": "t", "master": "m", "kind": k.name(),
            "symbol": "EURUSD", "side": "BUY", "volume": 1.0, "price": 1.1,
            "stop_loss": 0.0, "take_profit": 0.0, "master_ticket": 1, "master_seq": 1,
            "emitted_at_ms": 0,
        });
        assert_eq!(intent_from_value(&v).map(|i| i.kind), Ok(k));
    }
}

/// `SlaveCommand` as an agent built before pending orders knew it (fields 1–3 only).
#[derive(Clone, PartialEq, prost::Message)]
struct LegacySlaveCommand {
    #[prost(message, optional, tag = "1")]
    execute: Option<echo_proto::v1::ExecuteOrder>,
    #[prost(message, optional, tag = "2")]
    modify: Option<echo_proto::v1::ModifyOrder>,
    #[prost(message, optional, tag = "3")]
    close: Option<echo_proto::v1::CloseOrder>,
}
