//! Wire-contract tests: every envelope variant survives encode/decode unchanged, unknown
//! enum values and unknown fields decode without panic, and published numbers stay put.

use echo_proto::v1::{
    agent_to_core, core_to_agent, echo_link_client, echo_link_server, slave_command,
    AccountBinding, AckResult, AckStage, AgentHello, AgentToCore, BrokerStatus, CloseOrder,
    CommandAck, CoreHello, CoreToAgent, DeliveryConfig, DeliveryHeartbeat, ErrorCode, ExecTerms,
    ExecuteOrder, ExecutionResult, IntentKind, MarketData, MarketDataKind, MasterOrderType,
    ModifyOrder, ModifyPendingOrder, PendingOrderType, PendingResolution, PipeDeliveryAck,
    PipeStatus, PlacePendingOrder, ResolvePendingOrder, Role, Side, SlaveCommand, SlaveSizing,
    SplitLeg, TradeIntent, TradeIntentAck,
};
use echo_proto::{FILE_DESCRIPTOR_SET, PROTOCOL_VERSION};
use prost::Message;

/// Encodes `msg`, decodes the bytes back and asserts the result equals the original.
/// Also checks the encoding is not empty when the message is not the default.
fn assert_roundtrip<M: Message + Default + PartialEq + std::fmt::Debug>(msg: &M) {
    let bytes = msg.encode_to_vec();
    assert_eq!(bytes.len(), msg.encoded_len());
    if *msg != M::default() {
        assert!(
            !bytes.is_empty(),
            "non-default message encoded to nothing: {msg:?}"
        );
    }
    let decoded = M::decode(bytes.as_slice()).expect("decode");
    assert_eq!(&decoded, msg);
    // Length-delimited framing (as used on pipes/files) must round-trip too.
    let framed = msg.encode_length_delimited_to_vec();
    let decoded = M::decode_length_delimited(framed.as_slice()).expect("decode delimited");
    assert_eq!(&decoded, msg);
}

fn delivery_config(seed: u32) -> DeliveryConfig {
    DeliveryConfig {
        ack_timeout_ms: 1_500 + seed,
        retry_backoff_ms: 250 + seed,
        max_retries: 5 + seed,
        heartbeat_interval_ms: 2_000 + seed,
        reconcile_interval_ms: 5_000 + seed,
    }
}

fn agent_hello() -> AgentHello {
    AgentHello {
        agent_id: "agent-ny4-01".into(),
        auth_token: "s3cr3t".into(),
        protocol_version: PROTOCOL_VERSION,
        supports_lossless_delivery: true,
        accounts: vec![
            AccountBinding {
                account_id: "icm:1001".into(),
                role: Role::Master as i32,
            },
            AccountBinding {
                account_id: "pepper:2002".into(),
                role: Role::Slave as i32,
            },
        ],
    }
}

fn core_hello() -> CoreHello {
    CoreHello {
        core_id: "core-a".into(),
        protocol_version: PROTOCOL_VERSION,
        supports_lossless_delivery: true,
        accepted: true,
        compat_mode: false,
        reason: "ok".into(),
        delivery_config: Some(delivery_config(0)),
    }
}

fn trade_intent() -> TradeIntent {
    TradeIntent {
        magic: 20_260_101,
        comment: "grid #3".into(),
        order_type: MasterOrderType::Limit as i32,
        master_balance: 10_000.0,
        master_equity: 9_876.5,
        intent_id: "int-0001".into(),
        trade_id: "T-42".into(),
        master_account: "icm:1001".into(),
        kind: IntentKind::PartialClose as i32,
        symbol: "EURUSD".into(),
        side: Side::Sell as i32,
        volume: 0.37,
        price: 1.084_21,
        stop_loss: 1.09,
        take_profit: 1.07,
        master_ticket: 9_876_543_210,
        master_seq: u64::MAX - 1,
        emitted_at_unix_ms: 1_763_856_000_123,
        master_volume_before: 0.0,
    }
}

fn trade_intent_ack() -> TradeIntentAck {
    TradeIntentAck {
        intent_id: "int-0001".into(),
        trade_id: "T-42".into(),
        result: AckResult::Failed as i32,
        error_code: ErrorCode::BrokerBusy as i32,
        retry_after_ms: 200,
        message: "worker 3 queue full".into(),
    }
}

fn command_ack() -> CommandAck {
    CommandAck {
        command_id: "cmd-0001-pepper:2002".into(),
        trade_id: "T-42".into(),
        slave_account: "pepper:2002".into(),
        stage: AckStage::PipeDelivered as i32,
        result: AckResult::Ok as i32,
        error_code: ErrorCode::Unspecified as i32,
        message: String::new(),
        attempt: 3,
    }
}

fn execution_result() -> ExecutionResult {
    ExecutionResult {
        command_id: "cmd-0001-pepper:2002".into(),
        trade_id: "T-42".into(),
        slave_account: "pepper:2002".into(),
        slave_ticket: -1, // negative values must survive (int64, not uint64)
        fill_price: 1.084_25,
        filled_volume: 0.5,
        broker_status: BrokerStatus::PartiallyFilled as i32,
        broker_message: "TRADE_RETCODE_DONE_PARTIAL".into(),
        executed_at_unix_ms: 1_763_856_000_456,
        error_code: ErrorCode::Unspecified as i32,
        legs: vec![SplitLeg {
            ticket: -1,
            volume: 0.5,
        }],
    }
}

fn heartbeat() -> DeliveryHeartbeat {
    DeliveryHeartbeat {
        core_id: "core-a".into(),
        agent_id: String::new(),
        sent_at_unix_ms: 1_763_856_001_000,
        core: Some(delivery_config(1)),
        agent: Some(delivery_config(2)),
        config_version: 17,
    }
}

fn market_data() -> MarketData {
    MarketData {
        symbol: "XAUUSD".into(),
        bid: 2_650.15,
        ask: 2_650.45,
        kind: MarketDataKind::ExecReport as i32,
        routing_version: 9,
        seq: 123_456,
        ingest_unix_ms: 1_763_856_002_000,
        ref_id: "cmd-0001-pepper:2002".into(),
    }
}

fn execute_order() -> ExecuteOrder {
    ExecuteOrder {
        terms: Some(ExecTerms {
            sizing: SlaveSizing::RiskPercent as i32,
            sizing_value: 1.5,
            master_amount: 0.0,
            master_contract_size: 100_000.0,
            trade_min: true,
            check_free_margin: true,
            max_deviation_points: 30,
            deviation_window_ms: 500,
            max_open_positions: 5,
            max_total_lots: 2.5,
            split_max_lots: 0.0,
            split_min_lots: 0.0,
        }),
        command_id: "cmd-0001-pepper:2002".into(),
        intent_id: "int-0001".into(),
        trade_id: "T-42".into(),
        slave_account: "pepper:2002".into(),
        symbol: "EURUSD.r".into(),
        side: Side::Buy as i32,
        volume: 0.1,
        price: 1.084_21,
        stop_loss: 1.08,
        take_profit: 1.1,
        catch_up: true,
    }
}

fn modify_order() -> ModifyOrder {
    ModifyOrder {
        command_id: "cmd-0002-pepper:2002".into(),
        intent_id: "int-0002".into(),
        trade_id: "T-42".into(),
        slave_account: "pepper:2002".into(),
        slave_ticket: 555,
        stop_loss: 1.081,
        take_profit: 0.0,
    }
}

fn close_order() -> CloseOrder {
    CloseOrder {
        command_id: "cmd-0003-pepper:2002".into(),
        intent_id: "int-0003".into(),
        trade_id: "T-42".into(),
        slave_account: "pepper:2002".into(),
        slave_ticket: 555,
        volume: 0.0, // close all,
        min_volume: Default::default(),
        master_volume_before: 0.0,
        master_closed_volume: Default::default(),
        volume_step: Default::default(),
    }
}

fn all_agent_to_core() -> Vec<AgentToCore> {
    use agent_to_core::Body;
    vec![
        Body::Hello(agent_hello()),
        Body::Intent(trade_intent()),
        Body::CommandAck(command_ack()),
        Body::ExecutionResult(execution_result()),
        Body::Heartbeat(DeliveryHeartbeat {
            core_id: String::new(),
            agent_id: "agent-ny4-01".into(),
            ..heartbeat()
        }),
        Body::MarketData(market_data()),
    ]
    .into_iter()
    .map(|body| AgentToCore { body: Some(body) })
    .collect()
}

fn all_core_to_agent() -> Vec<CoreToAgent> {
    use core_to_agent::Body;
    vec![
        Body::Hello(core_hello()),
        Body::IntentAck(trade_intent_ack()),
        Body::Command(SlaveCommand {
            command: Some(slave_command::Command::Execute(execute_order())),
        }),
        Body::Command(SlaveCommand {
            command: Some(slave_command::Command::Modify(modify_order())),
        }),
        Body::Command(SlaveCommand {
            command: Some(slave_command::Command::Close(close_order())),
        }),
        Body::Command(SlaveCommand {
            command: Some(slave_command::Command::PlacePending(PlacePendingOrder {
                command_id: "cmd-0004-pepper:2002".into(),
                intent_id: "int-0004".into(),
                trade_id: "T-43".into(),
                slave_account: "pepper:2002".into(),
                symbol: "EURUSD".into(),
                side: Side::Sell as i32,
                order_type: PendingOrderType::Stop as i32,
                volume: 0.3,
                price: 1.0987,
                stop_loss: 1.1,
                take_profit: 1.08,
                terms: None,
            })),
        }),
        Body::Command(SlaveCommand {
            command: Some(slave_command::Command::ModifyPending(ModifyPendingOrder {
                command_id: "cmd-0005-pepper:2002".into(),
                intent_id: "int-0005".into(),
                trade_id: "T-43".into(),
                slave_account: "pepper:2002".into(),
                slave_ticket: 556,
                price: 1.0991,
                stop_loss: 1.1,
                take_profit: 0.0,
            })),
        }),
        Body::Command(SlaveCommand {
            command: Some(slave_command::Command::ResolvePending(
                ResolvePendingOrder {
                    command_id: "cmd-0006-pepper:2002".into(),
                    intent_id: "int-0006".into(),
                    trade_id: "T-43".into(),
                    slave_account: "pepper:2002".into(),
                    slave_ticket: 556,
                    resolution: PendingResolution::Trigger as i32,
                    symbol: "EURUSD".into(),
                    side: Side::Sell as i32,
                    price: 1.0991,
                    stop_loss: 1.1,
                    take_profit: 1.08,
                    terms: None,
                },
            )),
        }),
        Body::Heartbeat(heartbeat()),
        Body::MarketData(MarketData {
            kind: MarketDataKind::Tick as i32,
            ref_id: String::new(),
            ..market_data()
        }),
        Body::CommandAck(CommandAck {
            stage: AckStage::CoreAccepted as i32,
            result: AckResult::Failed as i32,
            error_code: ErrorCode::MaxRetries as i32,
            message: "gave up after 5 retries".into(),
            ..command_ack()
        }),
    ]
    .into_iter()
    .map(|body| CoreToAgent { body: Some(body) })
    .collect()
}

#[test]
fn every_agent_to_core_variant_roundtrips() {
    let envelopes = all_agent_to_core();
    // One envelope per oneof variant: if a variant is added, this list must grow.
    assert_eq!(envelopes.len(), 6);
    for envelope in &envelopes {
        assert!(envelope.body.is_some());
        assert_roundtrip(envelope);
    }
}

#[test]
fn every_core_to_agent_variant_roundtrips() {
    let envelopes = all_core_to_agent();
    assert_eq!(envelopes.len(), 11); // 6 variants, `command` in its 6 forms
    for envelope in &envelopes {
        assert!(envelope.body.is_some());
        assert_roundtrip(envelope);
    }
}

#[test]
fn variants_decode_to_the_variant_that_was_sent() {
    let bytes = AgentToCore {
        body: Some(agent_to_core::Body::Intent(trade_intent())),
    }
    .encode_to_vec();
    match AgentToCore::decode(bytes.as_slice()).unwrap().body {
        Some(agent_to_core::Body::Intent(intent)) => {
            assert_eq!(intent.kind(), IntentKind::PartialClose);
            assert_eq!(intent.side(), Side::Sell);
            assert_eq!(intent.master_seq, u64::MAX - 1);
        }
        other => panic!("wrong variant decoded: {other:?}"),
    }

    let bytes = CoreToAgent {
        body: Some(core_to_agent::Body::Command(SlaveCommand {
            command: Some(slave_command::Command::Close(close_order())),
        })),
    }
    .encode_to_vec();
    match CoreToAgent::decode(bytes.as_slice()).unwrap().body {
        Some(core_to_agent::Body::Command(SlaveCommand {
            command: Some(slave_command::Command::Close(close)),
        })) => {
            assert_eq!(close.slave_ticket, 555);
            assert_eq!(close.volume, 0.0);
        }
        other => panic!("wrong variant decoded: {other:?}"),
    }
}

#[test]
fn empty_envelopes_and_messages_roundtrip() {
    assert_roundtrip(&AgentToCore::default());
    assert_roundtrip(&CoreToAgent::default());
    assert_roundtrip(&SlaveCommand::default());
    assert!(AgentToCore::decode(&[][..]).unwrap().body.is_none());
    assert!(CoreToAgent::decode(&[][..]).unwrap().body.is_none());
}

#[test]
fn pipe_delivery_ack_roundtrips() {
    for status in [PipeStatus::Ok, PipeStatus::Retry, PipeStatus::Failed] {
        let ack = PipeDeliveryAck {
            command_id: "cmd-0001-pepper:2002".into(),
            status: status as i32,
            reason: "terminal reconnecting".into(),
        };
        assert_roundtrip(&ack);
        assert_eq!(
            PipeDeliveryAck::decode(ack.encode_to_vec().as_slice())
                .unwrap()
                .status(),
            status
        );
    }
}

#[test]
fn unknown_enum_values_decode_without_panic() {
    // A newer peer may send enum values this build does not know. They must decode (proto3
    // open enums keep the raw number) and the typed getters must fall back to UNSPECIFIED.
    let ack = CommandAck {
        stage: 99,
        result: 1234,
        error_code: 10_000,
        ..command_ack()
    };
    let envelope = AgentToCore {
        body: Some(agent_to_core::Body::CommandAck(ack)),
    };
    let decoded = AgentToCore::decode(envelope.encode_to_vec().as_slice()).unwrap();
    assert_eq!(decoded, envelope);
    let Some(agent_to_core::Body::CommandAck(ack)) = decoded.body else {
        panic!("wrong variant");
    };
    assert_eq!(ack.stage, 99);
    assert_eq!(ack.result, 1234);
    assert_eq!(ack.error_code, 10_000);
    assert!(AckStage::try_from(ack.stage).is_err());
    assert!(AckResult::try_from(ack.result).is_err());
    assert!(ErrorCode::try_from(ack.error_code).is_err());
    assert_eq!(ack.stage(), AckStage::Unspecified);
    assert_eq!(ack.result(), AckResult::Unspecified);
    assert_eq!(ack.error_code(), ErrorCode::Unspecified);

    // Negative raw values too (enums are int32 on the wire).
    let md = MarketData {
        kind: -7,
        ..market_data()
    };
    let decoded = MarketData::decode(md.encode_to_vec().as_slice()).unwrap();
    assert_eq!(decoded.kind, -7);
    assert_eq!(decoded.kind(), MarketDataKind::Unspecified);

    let er = ExecutionResult {
        broker_status: 42,
        ..execution_result()
    };
    let decoded = ExecutionResult::decode(er.encode_to_vec().as_slice()).unwrap();
    assert_eq!(decoded.broker_status(), BrokerStatus::Unspecified);

    let binding = AccountBinding {
        account_id: "x".into(),
        role: 3,
    };
    let decoded = AccountBinding::decode(binding.encode_to_vec().as_slice()).unwrap();
    assert_eq!(decoded.role(), Role::Unspecified);
}

#[test]
fn unknown_fields_from_a_newer_peer_are_skipped() {
    // TradeIntentAck followed by field 99 (varint) and field 100 (length-delimited), as a
    // newer peer that added fields would send.
    let ack = trade_intent_ack();
    let mut bytes = ack.encode_to_vec();
    prost::encoding::uint64::encode(99, &7, &mut bytes);
    prost::encoding::string::encode(100, &"future".to_string(), &mut bytes);
    let decoded = TradeIntentAck::decode(bytes.as_slice()).unwrap();
    assert_eq!(decoded, ack);
}

#[test]
fn truncated_input_is_an_error_not_a_panic() {
    let bytes = CoreToAgent {
        body: Some(core_to_agent::Body::Hello(core_hello())),
    }
    .encode_to_vec();
    for cut in 1..bytes.len() {
        // Any prefix either decodes (it may end on a field boundary) or errors; never panics.
        let _ = CoreToAgent::decode(&bytes[..cut]);
    }
    assert!(CoreToAgent::decode(&bytes[..bytes.len() - 1]).is_err());
}

#[test]
fn error_code_numbers_are_stable() {
    // These numbers are stored in journals and compared across versions: never change them.
    assert_eq!(ErrorCode::BrokerBusy as i32, 1);
    assert_eq!(
        ErrorCode::from_str_name("ERROR_CODE_BROKER_BUSY"),
        Some(ErrorCode::BrokerBusy)
    );
    assert_eq!(
        ErrorCode::BrokerBusy.as_str_name(),
        "ERROR_CODE_BROKER_BUSY"
    );
    assert_eq!(ErrorCode::try_from(1), Ok(ErrorCode::BrokerBusy));

    let expected = [
        (ErrorCode::Unspecified, 0, "ERROR_CODE_UNSPECIFIED"),
        (ErrorCode::BrokerBusy, 1, "ERROR_CODE_BROKER_BUSY"),
        (ErrorCode::InvalidArgument, 2, "ERROR_CODE_INVALID_ARGUMENT"),
        (ErrorCode::Unauthenticated, 3, "ERROR_CODE_UNAUTHENTICATED"),
        (ErrorCode::UnknownAccount, 4, "ERROR_CODE_UNKNOWN_ACCOUNT"),
        (
            ErrorCode::JournalUnavailable,
            5,
            "ERROR_CODE_JOURNAL_UNAVAILABLE",
        ),
        (
            ErrorCode::SymbolNotMapped,
            6,
            "ERROR_CODE_SYMBOL_NOT_MAPPED",
        ),
        (ErrorCode::MaxRetries, 7, "ERROR_CODE_MAX_RETRIES"),
        (ErrorCode::BrokerRejected, 8, "ERROR_CODE_BROKER_REJECTED"),
        (ErrorCode::EaRejected, 9, "ERROR_CODE_EA_REJECTED"),
        (ErrorCode::NoPosition, 10, "ERROR_CODE_NO_POSITION"),
        (ErrorCode::Duplicate, 11, "ERROR_CODE_DUPLICATE"),
        (
            ErrorCode::ProtocolViolation,
            12,
            "ERROR_CODE_PROTOCOL_VIOLATION",
        ),
        (ErrorCode::Internal, 13, "ERROR_CODE_INTERNAL"),
        (
            ErrorCode::PipeUnavailable,
            14,
            "ERROR_CODE_PIPE_UNAVAILABLE",
        ),
        (ErrorCode::VolumeBelowMin, 15, "ERROR_CODE_VOLUME_BELOW_MIN"),
        (ErrorCode::PriceDeviation, 16, "ERROR_CODE_PRICE_DEVIATION"),
        (ErrorCode::Expired, 17, "ERROR_CODE_EXPIRED"),
        (ErrorCode::FilteredSymbol, 18, "ERROR_CODE_FILTERED_SYMBOL"),
        (ErrorCode::FilteredMagic, 19, "ERROR_CODE_FILTERED_MAGIC"),
        (
            ErrorCode::FilteredComment,
            20,
            "ERROR_CODE_FILTERED_COMMENT",
        ),
        (
            ErrorCode::FilteredDirection,
            21,
            "ERROR_CODE_FILTERED_DIRECTION",
        ),
        (
            ErrorCode::FilteredOrderType,
            22,
            "ERROR_CODE_FILTERED_ORDER_TYPE",
        ),
        (
            ErrorCode::MaxOpenPositions,
            23,
            "ERROR_CODE_MAX_OPEN_POSITIONS",
        ),
        (ErrorCode::MaxTotalLots, 24, "ERROR_CODE_MAX_TOTAL_LOTS"),
        (
            ErrorCode::InsufficientMargin,
            25,
            "ERROR_CODE_INSUFFICIENT_MARGIN",
        ),
        (ErrorCode::NoStopLoss, 26, "ERROR_CODE_NO_STOP_LOSS"),
        (
            ErrorCode::AccountFactsUnknown,
            27,
            "ERROR_CODE_ACCOUNT_FACTS_UNKNOWN",
        ),
        (
            ErrorCode::SplitIncomplete,
            40,
            "ERROR_CODE_SPLIT_INCOMPLETE",
        ),
    ];
    for (code, number, name) in expected {
        assert_eq!(code as i32, number, "{name}");
        assert_eq!(code.as_str_name(), name);
        assert_eq!(ErrorCode::try_from(number), Ok(code));
    }
    for unused in (28..40).chain(41..43) {
        assert!(
            ErrorCode::try_from(unused).is_err(),
            "a new ErrorCode needs this test updated"
        );
    }
}

#[test]
fn ack_stage_numbers_follow_the_pipeline_order() {
    let stages = [
        (AckStage::Unspecified, 0),
        (AckStage::CoreAccepted, 1),
        (AckStage::AgentBuffered, 2),
        (AckStage::PipeDelivered, 3),
        (AckStage::EaConfirmed, 4),
    ];
    for (stage, number) in stages {
        assert_eq!(stage as i32, number);
    }
    assert_eq!(AckResult::Pending as i32, 1);
    assert_eq!(AckResult::Ok as i32, 2);
    assert_eq!(AckResult::Failed as i32, 3);
    assert_eq!(Role::Master as i32, 1);
    assert_eq!(Role::Slave as i32, 2);
    assert_eq!(PipeStatus::Ok as i32, 1);
    assert_eq!(PipeStatus::Retry as i32, 2);
    assert_eq!(PipeStatus::Failed as i32, 3);
}

#[test]
fn pending_order_numbers_stay_put() {
    // IntentKind 5–9 and SlaveCommand fields 4–6 are the pending orders' (SPEC.md §5.2).
    let kinds = [
        (IntentKind::Close, 4),
        (IntentKind::PlaceLimit, 5),
        (IntentKind::PlaceStop, 6),
        (IntentKind::PendingModify, 7),
        (IntentKind::PendingCancel, 8),
        (IntentKind::PendingTrigger, 9),
    ];
    for (kind, number) in kinds {
        assert_eq!(kind as i32, number);
    }
    let place = SlaveCommand {
        command: Some(slave_command::Command::PlacePending(
            PlacePendingOrder::default(),
        )),
    };
    // Field 4, length-delimited: tag byte (4 << 3) | 2.
    assert_eq!(place.encode_to_vec().first(), Some(&0x22));
    let modify = SlaveCommand {
        command: Some(slave_command::Command::ModifyPending(
            ModifyPendingOrder::default(),
        )),
    };
    assert_eq!(modify.encode_to_vec().first(), Some(&0x2a));
    let resolve = SlaveCommand {
        command: Some(slave_command::Command::ResolvePending(
            ResolvePendingOrder::default(),
        )),
    };
    assert_eq!(resolve.encode_to_vec().first(), Some(&0x32));
}

#[test]
fn split_numbers_stay_put() {
    // ExecTerms 30–31 and ExecutionResult 20 are the split positions' (SPEC.md §5.2 "Split").
    let terms = ExecTerms {
        split_max_lots: 1.0,
        ..Default::default()
    };
    // Field 30, fixed64: tag varint (30 << 3) | 1 = 241 = 0xf1 0x01.
    assert_eq!(terms.encode_to_vec()[..2], [0xf1, 0x01]);
    let terms = ExecTerms {
        split_min_lots: 1.0,
        ..Default::default()
    };
    assert_eq!(terms.encode_to_vec()[..2], [0xf9, 0x01]);
    let r = ExecutionResult {
        legs: vec![SplitLeg {
            ticket: 7,
            volume: 1.0,
        }],
        ..Default::default()
    };
    // Field 20, length-delimited: (20 << 3) | 2 = 162 = 0xa2 0x01.
    assert_eq!(r.encode_to_vec()[..2], [0xa2, 0x01]);
    let back = ExecutionResult::decode(r.encode_to_vec().as_slice()).unwrap();
    assert_eq!(back.legs, r.legs);
}

#[test]
fn catch_up_field_number_stays_put() {
    // ExecuteOrder.catch_up is field 35 (the command messages' 35–39 are this change's): bool,
    // varint — tag (35 << 3) | 0 = 280 = 0x98 0x02, then 1.
    let only = ExecuteOrder {
        catch_up: true,
        ..ExecuteOrder::default()
    };
    assert_eq!(only.encode_to_vec(), vec![0x98, 0x02, 0x01]);
    // A legacy peer's message (no field 35) reads as a live open.
    assert!(!ExecuteOrder::decode(&[][..]).unwrap().catch_up);
}

#[test]
fn protocol_version_is_one() {
    assert_eq!(PROTOCOL_VERSION, 1);
}

#[test]
fn descriptor_set_describes_the_echo_link_service() {
    let fds = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
    let names: Vec<&str> = fds.file.iter().map(|f| f.name()).collect();
    for file in [
        "echo/v1/common.proto",
        "echo/v1/trading.proto",
        "echo/v1/market_data.proto",
        "echo/v1/link.proto",
    ] {
        assert!(names.contains(&file), "{file} missing from {names:?}");
    }
    let link = fds
        .file
        .iter()
        .find(|f| f.name() == "echo/v1/link.proto")
        .unwrap();
    assert_eq!(link.package(), "echo.v1");
    assert_eq!(link.syntax(), "proto3");
    assert_eq!(link.service.len(), 1);
    let service = &link.service[0];
    assert_eq!(service.name(), "EchoLink");
    assert_eq!(service.method.len(), 1);
    let connect = &service.method[0];
    assert_eq!(connect.name(), "Connect");
    assert_eq!(connect.input_type(), ".echo.v1.AgentToCore");
    assert_eq!(connect.output_type(), ".echo.v1.CoreToAgent");
    assert!(connect.client_streaming());
    assert!(connect.server_streaming());
}

/// A minimal server: expects an AgentHello first, answers with a CoreHello that echoes the
/// agent's protocol version, then ends the stream. Anything else first is refused.
struct HelloOnly;

type Replies =
    tonic::codegen::tokio_stream::Iter<std::vec::IntoIter<Result<CoreToAgent, tonic::Status>>>;

#[tonic::async_trait]
impl echo_link_server::EchoLink for HelloOnly {
    type ConnectStream = Replies;

    async fn connect(
        &self,
        request: tonic::Request<tonic::Streaming<AgentToCore>>,
    ) -> Result<tonic::Response<Self::ConnectStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        let Some(AgentToCore {
            body: Some(agent_to_core::Body::Hello(hello)),
        }) = inbound.message().await?
        else {
            return Err(tonic::Status::failed_precondition("hello first"));
        };
        let reply = CoreToAgent {
            body: Some(core_to_agent::Body::Hello(CoreHello {
                protocol_version: hello.protocol_version,
                reason: format!("welcome {}", hello.agent_id),
                ..core_hello()
            })),
        };
        Ok(tonic::Response::new(tonic::codegen::tokio_stream::iter(
            vec![Ok(reply)],
        )))
    }
}

#[test]
fn generated_server_is_named_after_the_proto_service() {
    use tonic::server::NamedService;
    assert_eq!(
        <echo_link_server::EchoLinkServer<HelloOnly> as NamedService>::NAME,
        "echo.v1.EchoLink"
    );
}

/// Drives the generated client straight into the generated server (no network): proves the
/// bidirectional `Connect` stream is wired end to end through gRPC framing and prost.
#[tokio::test]
async fn generated_client_talks_to_generated_server_in_process() {
    let server = echo_link_server::EchoLinkServer::new(HelloOnly);
    let mut client = echo_link_client::EchoLinkClient::new(server);

    let outbound = tonic::codegen::tokio_stream::iter(vec![AgentToCore {
        body: Some(agent_to_core::Body::Hello(agent_hello())),
    }]);
    let mut inbound = client
        .connect(outbound)
        .await
        .expect("connect")
        .into_inner();
    let first = inbound
        .message()
        .await
        .expect("stream ok")
        .expect("one reply");
    let Some(core_to_agent::Body::Hello(hello)) = first.body else {
        panic!("expected CoreHello, got {first:?}");
    };
    assert!(hello.accepted);
    assert_eq!(hello.protocol_version, PROTOCOL_VERSION);
    assert_eq!(hello.reason, "welcome agent-ny4-01");
    assert_eq!(hello.delivery_config, Some(delivery_config(0)));
    assert!(inbound.message().await.expect("clean end").is_none());

    // A stream that does not start with a hello is refused with the server's status.
    let server = echo_link_server::EchoLinkServer::new(HelloOnly);
    let mut client = echo_link_client::EchoLinkClient::new(server);
    let outbound = tonic::codegen::tokio_stream::iter(vec![AgentToCore {
        body: Some(agent_to_core::Body::Intent(trade_intent())),
    }]);
    let status = client.connect(outbound).await.expect_err("must be refused");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(status.message(), "hello first");
}
