//! Core machine: one scenario per group of transitions, each with real assertions, plus a
//! coverage test that runs every scenario and requires every core transition id to fire.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use echo_statemachine::config::{DeliveryConfig, Subscription};
use echo_statemachine::core::{
    CoreDurableState, CoreLog, DeliveryRecord, DeliveryStatus, IntentFacts, JournalReply,
    JournalResult, JournalWrite,
};
use echo_statemachine::ids::{AccountId, CommandId, IntentId, Symbol, TradeId};
use echo_statemachine::msg::*;
use support::core_harness::*;

type Scenario = fn() -> Vec<&'static str>;

macro_rules! scenarios {
    ($($name:ident),+ $(,)?) => {
        mod each {
            $( #[test] fn $name() { let _ = super::$name(); } )+
        }
        const SCENARIOS: &[(&str, Scenario)] = &[ $( (stringify!($name), $name) ),+ ];
    };
}

scenarios!(
    accept_fan_out_and_confirm,
    duplicates_are_reacked_never_rejournaled,
    full_queue_answers_broker_busy,
    one_persisting_intent_per_trade,
    journal_retry_give_up_and_probe,
    intent_existed_adopts_journal_rows,
    invalid_and_unknown_intents_refused,
    per_trade_order_and_ticket_correlation,
    no_position_after_failed_open,
    offline_agent_parks_and_resumes,
    silent_agent_goes_offline,
    agents_are_judged_by_the_interval_they_heartbeat_at,
    a_rehello_is_a_new_session,
    timeout_backoff_retry_and_give_up,
    retryable_pipe_failure_backs_off,
    reconciler_resends_without_result,
    stale_and_unknown_acks_change_nothing,
    refused_by_ea_fails_explicitly,
    final_state_write_is_retried_until_durable,
    unmapped_symbol_fails_at_intake,
    hello_variants_and_control_path,
    config_push_and_subscriptions,
    recover_resumes_unfinished_in_order,
    backoff_with_account_gone_parks,
    cancel_answered_by_the_real_result,
    catch_up_expires_only_unsent_opens,
    slave_terms_ride_the_open_and_refusals_count,
    later_intents_of_a_skipped_open_keep_its_reason,
    partial_close_without_its_fraction_is_refused,
    pending_order_lifecycle_and_ticket_correlation,
    pending_orders_of_a_skipped_placement_and_after_restart,
    split_opens_carry_their_limits_and_incomplete_splits_are_explicit,
    catch_up_flag_marks_opens_that_waited_for_their_slave,
    a_terms_refused_open_is_remembered_across_a_restart,
    agent_window_bounds_unbuffered_commands,
    a_full_agent_backlog_answers_the_master_broker_busy,
    a_full_agent_spends_no_attempt,
    cancels_that_start_together_are_spread,
);

fn accept_fan_out_and_confirm() -> Vec<&'static str> {
    let mut h = H::world();
    h.msg(
        "A",
        AgentToCore::Intent(intent("i1", "T-1", IntentKind::Open, 1)),
    );
    // Nothing acknowledged before the journal says the write is durable.
    assert!(h.intent_acks().is_empty());
    assert!(h.commands().is_empty());
    let w = h.writes();
    assert_eq!(w.len(), 1);
    let JournalWrite::AcceptIntent { intent, deliveries } = &w[0] else {
        panic!("expected AcceptIntent, got {w:?}")
    };
    assert_eq!(intent.trade_id.as_str(), "t-1", "trade id normalised");
    assert_eq!(deliveries.len(), 2);
    assert_eq!(deliveries[0].volume, 1.0, "0.5 lots × multiplier 2");
    assert_eq!(deliveries[1].volume, 0.5);
    assert_eq!(h.core.queue_depths().iter().sum::<u32>(), 1);
    h.take();
    h.journal_ok_all();
    let acks = h.intent_acks();
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].result, AckResult::Ok);
    assert_eq!(h.core.queue_depths().iter().sum::<u32>(), 0);
    let cmds = h.commands();
    assert_eq!(cmds.len(), 2);
    assert!(matches!(cmds[0].body, CommandBody::Execute { volume, .. } if volume == 1.0));
    assert!(h
        .sent()
        .iter()
        .all(|(ag, m)| !matches!(m, CoreToAgent::Command(_)) || ag.as_str() == "B"));
    for (c, s, t) in [(&cmds[0], "s1", 100), (&cmds[1], "s2", 200)] {
        h.take();
        h.msg("B", stage_ack(&c.command_id, s, AckStage::AgentBuffered));
        assert!(matches!(
            h.writes()[..],
            [JournalWrite::UpdateStage {
                stage: AckStage::AgentBuffered,
                ..
            }]
        ));
        h.msg("B", stage_ack(&c.command_id, s, AckStage::PipeDelivered));
        h.msg("B", result(&c.command_id, s, t, BrokerStatus::Filled));
        let fin = h.writes();
        assert!(fin.iter().any(|w| matches!(w, JournalWrite::FinishDelivery { status: DeliveryStatus::Acked, slave_ticket: Some(tk), .. } if *tk == t)));
        // Not Done until durable.
        assert!(h.core.delivery_view(&c.command_id).is_some());
        h.take();
        h.journal_ok_all();
        assert!(h.core.delivery_view(&c.command_id).is_none());
        let reports: Vec<_> = h
            .sent()
            .into_iter()
            .filter(|(ag, m)| {
                ag.as_str() == "A"
                    && matches!(m, CoreToAgent::DeliveryReport(r) if r.result == AckResult::Ok)
            })
            .collect();
        assert_eq!(reports.len(), 1);
    }
    assert_eq!(h.core.open_intents(), 0, "intent completed and forgotten");
    assert_eq!(h.core.metrics().deliveries_acked_total, 2);
    assert_eq!(
        h.core.metrics().router_dispatch_total.iter().sum::<u64>(),
        1
    );
    h.fired
}

fn duplicates_are_reacked_never_rejournaled() -> Vec<&'static str> {
    let mut h = H::world();
    let i = intent("i1", "t1", IntentKind::Open, 1);
    h.msg("A", AgentToCore::Intent(i.clone()));
    h.take();
    h.msg("A", AgentToCore::Intent(i.clone()));
    assert!(
        h.outs.is_empty(),
        "duplicate while persisting: nothing, the ack follows the write"
    );
    assert!(h.has_fired("core.intake.T02"));
    h.journal_ok_all();
    h.take();
    h.msg("A", AgentToCore::Intent(i.clone()));
    assert_eq!(h.intent_acks().len(), 1);
    assert!(h.writes().is_empty(), "no second journal write");
    assert!(h.commands().is_empty(), "no second fan-out");
    // Completed intents are still re-acked from the recent window.
    for s in ["s1", "s2"] {
        h.confirm(&cmd_id("i1", s), s, 1);
    }
    assert_eq!(h.core.open_intents(), 0);
    h.take();
    h.msg("A", AgentToCore::Intent(i));
    assert_eq!(h.intent_acks()[0].result, AckResult::Ok);
    assert!(h.writes().is_empty() && h.commands().is_empty());
    h.fired
}

/// Trade ids that all map to worker 0 under the harness's 2-worker pool.
fn same_worker_trades(n: usize) -> Vec<String> {
    let mut h = H::new();
    let _ = &mut h;
    let router = echo_statemachine::core::router::Router::new(cfg().router);
    (0..1000)
        .map(|k| format!("trade-{k}"))
        .filter(|t| router.worker_for(&TradeId::new(t)) == 0)
        .take(n)
        .collect()
}

fn full_queue_answers_broker_busy() -> Vec<&'static str> {
    let mut h = H::world();
    let trades = same_worker_trades(5);
    for (k, t) in trades.iter().take(4).enumerate() {
        h.msg(
            "A",
            AgentToCore::Intent(intent(&format!("i{k}"), t, IntentKind::Open, k as u64)),
        );
    }
    assert_eq!(h.core.queue_depths()[0], 4);
    h.take();
    h.msg(
        "A",
        AgentToCore::Intent(intent("i4", &trades[4], IntentKind::Open, 4)),
    );
    let acks = h.intent_acks();
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].error, Some(ErrorCode::BrokerBusy));
    assert!(acks[0].retry_after_ms > 0);
    assert!(matches!(
        h.writes()[..],
        [JournalWrite::RecordRejection {
            worker: 0,
            reason: ErrorCode::BrokerBusy,
            ..
        }]
    ));
    assert_eq!(h.core.queue_depths()[0], 4, "never above queue_depth_max");
    assert_eq!(h.core.metrics().router_rejections_total[0], 1);
    // The refused intent is not remembered: after room frees up, the retry is accepted.
    h.journal_ok_all();
    h.take();
    h.msg(
        "A",
        AgentToCore::Intent(intent("i4", &trades[4], IntentKind::Open, 4)),
    );
    assert!(matches!(
        h.writes()[..],
        [JournalWrite::AcceptIntent { .. }]
    ));
    h.fired
}

fn one_persisting_intent_per_trade() -> Vec<&'static str> {
    let mut h = H::world();
    h.msg(
        "A",
        AgentToCore::Intent(intent("i1", "t1", IntentKind::Open, 1)),
    );
    h.take();
    h.msg(
        "A",
        AgentToCore::Intent(intent("i2", "T1", IntentKind::Modify, 2)),
    );
    assert_eq!(h.intent_acks()[0].error, Some(ErrorCode::BrokerBusy));
    assert!(h.writes().is_empty());
    h.fired
}

fn journal_retry_give_up_and_probe() -> Vec<&'static str> {
    let mut h = H::world();
    h.msg(
        "A",
        AgentToCore::Intent(intent("i1", "t1", IntentKind::Open, 1)),
    );
    for _ in 0..2 {
        assert!(h.answer(|_| true, JournalResult::Failed { retryable: true }));
        assert!(h.intent_acks().is_empty());
        h.take();
        h.next_timer();
        assert!(
            matches!(h.writes()[..], [JournalWrite::AcceptIntent { .. }]),
            "same write again"
        );
    }
    h.take();
    assert!(h.answer(|_| true, JournalResult::Failed { retryable: true }));
    let acks = h.intent_acks();
    assert_eq!(acks[0].error, Some(ErrorCode::JournalUnavailable));
    assert!(h.logs().iter().any(|l| matches!(
        l,
        CoreLog::DeliveryFailed {
            reason: ErrorCode::JournalUnavailable,
            ..
        }
    )));
    assert!(h.core.journal_is_down());
    assert_eq!(h.core.queue_depths().iter().sum::<u32>(), 0);
    h.take();
    h.msg(
        "A",
        AgentToCore::Intent(intent("i2", "t2", IntentKind::Open, 2)),
    );
    assert_eq!(
        h.intent_acks()[0].error,
        Some(ErrorCode::JournalUnavailable)
    );
    assert!(
        h.writes().is_empty(),
        "fan-out stopped: nothing written while down"
    );
    h.take();
    h.next_timer();
    assert!(matches!(h.writes()[..], [JournalWrite::Probe]));
    assert!(h.answer(
        |w| matches!(w, JournalWrite::Probe),
        JournalResult::Failed { retryable: true }
    ));
    assert!(h.core.journal_is_down());
    h.take();
    h.next_timer();
    assert!(h.answer(
        |w| matches!(w, JournalWrite::Probe),
        JournalResult::Ok(JournalReply::Done)
    ));
    assert!(!h.core.journal_is_down());
    h.take();
    h.msg(
        "A",
        AgentToCore::Intent(intent("i2", "t2", IntentKind::Open, 2)),
    );
    assert!(matches!(
        h.writes()[..],
        [JournalWrite::AcceptIntent { .. }]
    ));
    h.fired
}

fn record(intent_id: &str, trade: &str, slave: &str, kind: IntentKind, seq: u64) -> DeliveryRecord {
    DeliveryRecord {
        terms: None,
        intent_facts: None,
        command_id: cmd_id(intent_id, slave),
        intent_id: IntentId::new(intent_id),
        trade_id: TradeId::new(trade),
        master: AccountId::new("m1"),
        slave: AccountId::new(slave),
        kind,
        symbol: Symbol::new("EURUSD"),
        side: Side::Buy,
        volume: 1.0,
        price: 1.1,
        stop_loss: 1.0,
        take_profit: 1.3,
        master_seq: seq,
        status: DeliveryStatus::Inflight,
        stage: AckStage::CoreAccepted,
        attempts: 0,
        slave_ticket: None,
        reason: None,
        master_volume_before: 0.0,
    }
}

fn intent_existed_adopts_journal_rows() -> Vec<&'static str> {
    let mut h = H::world();
    h.msg(
        "A",
        AgentToCore::Intent(intent("i1", "t1", IntentKind::Open, 1)),
    );
    h.take();
    // The first commit succeeded but its reply was lost: the journal already has the intent,
    // and only s2's copy is unfinished.
    let reply = JournalReply::IntentExisted {
        unfinished: vec![record("i1", "t1", "s2", IntentKind::Open, 1)],
    };
    assert!(h.answer(|_| true, JournalResult::Ok(reply)));
    assert_eq!(h.intent_acks()[0].result, AckResult::Ok);
    let cmds = h.commands();
    assert_eq!(cmds.len(), 1);
    assert_eq!(cmds[0].slave.as_str(), "s2");
    h.fired
}

fn invalid_and_unknown_intents_refused() -> Vec<&'static str> {
    let mut h = H::world();
    let mut bad = intent("i1", "t1", IntentKind::Open, 1);
    bad.volume = f64::NAN;
    h.msg("A", AgentToCore::Intent(bad));
    assert_eq!(h.intent_acks()[0].error, Some(ErrorCode::InvalidArgument));
    h.take();
    h.msg(
        "A",
        AgentToCore::Intent(intent("i2", "", IntentKind::Open, 1)),
    );
    assert_eq!(h.intent_acks()[0].error, Some(ErrorCode::InvalidArgument));
    h.take();
    // Agent B serves no master account m1.
    h.msg(
        "B",
        AgentToCore::Intent(intent("i3", "t3", IntentKind::Open, 1)),
    );
    assert_eq!(h.intent_acks()[0].error, Some(ErrorCode::UnknownAccount));
    assert!(h.writes().is_empty());
    h.fired
}

fn per_trade_order_and_ticket_correlation() -> Vec<&'static str> {
    let mut h = H::world();
    h.core
        .handle_subscriptions(h.now, vec![Subscription::new("m1", "s1", 1.0)]);
    let open = h.accept(intent("o", "t1", IntentKind::Open, 1));
    assert_eq!(open.len(), 1);
    // Master modifies before the slave confirmed the open: the modify waits (Blocked).
    let m = h.accept(intent("m", "t1", IntentKind::Modify, 2));
    assert!(m.is_empty(), "modify must wait for the open");
    assert_eq!(
        h.core.delivery_view(&cmd_id("m", "s1")).map(|v| v.state),
        Some("Blocked")
    );
    h.take();
    h.confirm(&cmd_id("o", "s1"), "s1", 4242);
    let next = h.commands();
    assert_eq!(next.len(), 1);
    assert!(
        matches!(
            next[0].body,
            CommandBody::Modify {
                slave_ticket: 4242,
                ..
            }
        ),
        "{next:?}"
    );
    h.take();
    h.confirm(&cmd_id("m", "s1"), "s1", 4242);
    let pc = h.accept(intent("p", "t1", IntentKind::PartialClose, 3));
    // The slave gets the master's fraction (0.5 of 1.0) and its own symbol limits, never
    // lots: it applies the fraction to its own position.
    assert!(
        matches!(
            pc[0].body,
            CommandBody::ClosePart { slave_ticket: 4242, fraction }
                if fraction.master_closed == 0.5
                    && fraction.master_volume_before == 1.0
                    && fraction.slave_step == 0.01
        ),
        "{pc:?}"
    );
    // The broker moved what the partial close left to a new ticket (as MT4 does).
    h.confirm(&cmd_id("p", "s1"), "s1", 4343);
    let c = h.accept(intent("c", "t1", IntentKind::Close, 4));
    assert!(
        matches!(c[0].body, CommandBody::Close { slave_ticket: 4343, volume } if volume == 0.0),
        "the close must address the ticket the partial close left: {c:?}"
    );
    h.confirm(&cmd_id("c", "s1"), "s1", 4343);
    // After the close the position is gone: a later modify has no position.
    h.take();
    h.msg(
        "A",
        AgentToCore::Intent(intent("late", "t1", IntentKind::Modify, 5)),
    );
    h.journal_ok_all();
    assert!(h.commands().is_empty());
    assert!(h.logs().iter().any(|l| matches!(
        l,
        CoreLog::DeliveryFailed {
            reason: ErrorCode::NoPosition,
            ..
        }
    )));
    h.fired
}

fn no_position_after_failed_open() -> Vec<&'static str> {
    let mut h = H::world();
    h.core
        .handle_subscriptions(h.now, vec![Subscription::new("m1", "s1", 1.0)]);
    h.accept(intent("o", "t1", IntentKind::Open, 1));
    h.accept(intent("c", "t1", IntentKind::Close, 2));
    h.take();
    h.msg(
        "B",
        result(&cmd_id("o", "s1"), "s1", 0, BrokerStatus::Rejected),
    );
    assert!(h.writes().iter().any(|w| matches!(
        w,
        JournalWrite::FinishDelivery {
            reason: Some(ErrorCode::BrokerRejected),
            ..
        }
    )));
    h.take();
    h.journal_ok_all();
    assert!(
        h.commands().is_empty(),
        "the close is never sent: there is no position"
    );
    assert!(h.writes().iter().any(|w| matches!(
        w,
        JournalWrite::FinishDelivery {
            reason: Some(ErrorCode::NoPosition),
            ..
        }
    )));
    h.journal_ok_all();
    assert_eq!(h.core.open_deliveries(), 0);
    h.fired
}

fn offline_agent_parks_and_resumes() -> Vec<&'static str> {
    let mut h = H::new();
    h.msg("A", hello("A", &[("m1", Role::Master)]));
    h.take();
    let cmds = h.accept(intent("i1", "t1", IntentKind::Open, 1));
    assert!(cmds.is_empty(), "no slave agent yet: parked");
    assert_eq!(
        h.core.delivery_view(&cmd_id("i1", "s1")).map(|v| v.state),
        Some("Parked")
    );
    h.advance(10_000);
    assert_eq!(
        h.core
            .delivery_view(&cmd_id("i1", "s1"))
            .map(|v| v.attempts),
        Some(0),
        "waiting spends no attempt"
    );
    h.take();
    h.msg("B", hello("B", &[("s1", Role::Slave), ("s2", Role::Slave)]));
    assert_eq!(h.commands().len(), 2);
    h.take();
    h.disconnect("B");
    assert_eq!(
        h.core.delivery_view(&cmd_id("i1", "s1")).map(|v| v.state),
        Some("Parked")
    );
    h.advance(10_000);
    assert!(h.commands().is_empty());
    h.msg("B", hello("B", &[("s1", Role::Slave), ("s2", Role::Slave)]));
    let again = h.commands();
    assert_eq!(again.len(), 2);
    assert_eq!(
        again[0].command_id,
        cmd_id("i1", "s1"),
        "same command id on re-send"
    );
    h.fired
}

fn silent_agent_goes_offline() -> Vec<&'static str> {
    let mut h = H::world();
    h.accept(intent("i1", "t1", IntentKind::Open, 1));
    h.msg(
        "B",
        stage_ack(&cmd_id("i1", "s1"), "s1", AckStage::AgentBuffered),
    );
    h.take();
    // A keeps heartbeating, B goes silent.
    for _ in 0..5 {
        h.advance(1_000);
        h.msg("A", AgentToCore::Heartbeat);
    }
    assert!(h
        .logs()
        .iter()
        .any(|l| matches!(l, CoreLog::AgentOffline { agent } if agent.as_str() == "B")));
    assert!(h.core.agent_online(&a("A")));
    assert!(!h.core.agent_online(&a("B")));
    assert_eq!(
        h.core.delivery_view(&cmd_id("i1", "s1")).map(|v| v.state),
        Some("Parked")
    );
    assert!(h
        .sent()
        .iter()
        .any(|(ag, m)| ag.as_str() == "A" && matches!(m, CoreToAgent::Heartbeat(_))));
    h.take();
    h.msg("B", AgentToCore::Heartbeat);
    assert!(
        h.logs()
            .iter()
            .any(|l| matches!(l, CoreLog::ProtocolViolation { .. })),
        "offline agent must say hello first"
    );
    h.fired
}

/// A re-hello of an online agent is a new session (it restarted, or reconnected without the
/// core seeing its old stream end — a half-open connection): its slaves' live deliveries are
/// parked as at a disconnect. One it still serves (s2) is re-sent at once; one it left out
/// (s1, its terminal moved) waits Parked — no reconcile re-send into the void — and goes to
/// the agent that says hello with it. Before, a delivery already past PIPE_DELIVERED whose
/// slave was left out kept reconciling with no route and was never re-armed: echo-sim
/// test_min seeds 1871, 2111, 2548, 3505, 4280, 5699, 8593, 8670 once a crashed agent could
/// come back half-open and reconfigured (7 copies lost at slave-5 in seed 4280).
fn a_rehello_is_a_new_session() -> Vec<&'static str> {
    let mut h = H::world();
    let cmds = h.accept(intent("i1", "t1", IntentKind::Open, 1));
    assert_eq!(cmds.len(), 2);
    let (c1, c2) = (cmd_id("i1", "s1"), cmd_id("i1", "s2"));
    for (c, s) in [(&c1, "s1"), (&c2, "s2")] {
        h.msg("B", stage_ack(c, s, AckStage::AgentBuffered));
        h.msg("B", stage_ack(c, s, AckStage::PipeDelivered));
    }
    h.take();
    h.msg("B", hello("B", &[("s2", Role::Slave)]));
    assert_eq!(h.core.delivery_view(&c1).map(|v| v.state), Some("Parked"));
    let resent: Vec<CommandId> = h.commands().into_iter().map(|c| c.command_id).collect();
    assert_eq!(
        resent,
        vec![c2.clone()],
        "s2's copy goes again on the new session"
    );
    h.take();
    h.advance(30_000);
    assert!(
        !h.commands().iter().any(|c| c.command_id == c1),
        "no re-send of s1's copy while no agent serves s1"
    );
    assert_eq!(h.core.delivery_view(&c1).map(|v| v.state), Some("Parked"));
    h.take();
    h.msg("C", hello("C", &[("s1", Role::Slave)]));
    assert!(h
        .sent()
        .iter()
        .any(|(ag, m)| ag.as_str() == "C"
            && matches!(m, CoreToAgent::Command(c) if c.command_id == c1)));
    h.fired
}

/// The agents' heartbeat interval (pushed to them) may be longer than the core's own tick
/// (echo-sim seed 48573 of test_min drew 1 031 ms for the core, 4 396 ms for the agents):
/// an agent heartbeating at its own interval stays online; only silence for three of the
/// longer of the two takes it offline. Judged by the core's tick alone, every agent went
/// offline ~4 s after each hello, before its first heartbeat — forever.
fn agents_are_judged_by_the_interval_they_heartbeat_at() -> Vec<&'static str> {
    let mut h = H::world();
    let mut d = h.core.delivery_config();
    d.heartbeat_interval_ms = 1_000;
    let agent = echo_statemachine::config::AgentDeliveryConfig {
        heartbeat_interval_ms: 4_000,
        ..Default::default()
    };
    h.core.handle_delivery_config(h.now, d, agent);
    h.drain();
    for _ in 0..6 {
        h.advance(4_000);
        h.msg("A", AgentToCore::Heartbeat);
        h.msg("B", AgentToCore::Heartbeat);
    }
    assert!(
        !h.logs()
            .iter()
            .any(|l| matches!(l, CoreLog::AgentOffline { .. })),
        "{:?}",
        h.logs()
    );
    assert!(h.core.agent_online(&a("A")) && h.core.agent_online(&a("B")));
    // B goes silent: offline once three of its intervals (12 s) have passed, not before.
    for _ in 0..2 {
        h.advance(4_000);
        h.msg("A", AgentToCore::Heartbeat);
    }
    assert!(h.core.agent_online(&a("B")), "8 s of silence is not 12");
    for _ in 0..2 {
        h.advance(4_000);
        h.msg("A", AgentToCore::Heartbeat);
    }
    assert!(!h.core.agent_online(&a("B")));
    assert!(h.core.agent_online(&a("A")));
    h.fired
}

fn timeout_backoff_retry_and_give_up() -> Vec<&'static str> {
    let mut h = H::world();
    h.core
        .handle_subscriptions(h.now, vec![Subscription::new("m1", "s1", 1.0)]);
    h.accept(intent("i1", "t1", IntentKind::Open, 1));
    let c = cmd_id("i1", "s1");
    h.take();
    h.advance(100); // ack timeout
    assert_eq!(h.core.delivery_view(&c).map(|v| v.state), Some("Backoff"));
    assert!(h
        .writes()
        .iter()
        .any(|w| matches!(w, JournalWrite::RecordRetry { attempt: 1, .. })));
    h.take();
    h.advance(10); // backoff 10 ms
    assert_eq!(h.commands().len(), 1);
    assert_eq!(h.core.delivery_view(&c).map(|v| v.attempts), Some(2));
    h.advance(100);
    h.advance(20);
    assert_eq!(h.core.delivery_view(&c).map(|v| v.attempts), Some(3));
    h.take();
    h.advance(100); // third timeout = max_retries: the core asks the slave to cancel
    assert!(
        !h.writes()
            .iter()
            .any(|w| matches!(w, JournalWrite::FinishDelivery { .. })),
        "never FAILED before the slave confirms it will not execute"
    );
    let cancels: Vec<_> = h
        .sent()
        .into_iter()
        .filter(|(ag, m)| {
            ag.as_str() == "B" && matches!(m, CoreToAgent::Cancel(x) if x.command_id == c)
        })
        .collect();
    assert_eq!(cancels.len(), 1);
    assert_eq!(
        h.core.delivery_view(&c).map(|v| v.state),
        Some("Cancelling")
    );
    // No answer: the cancel is re-sent on its timer, never given up.
    h.take();
    h.advance(1_000);
    assert!(h
        .sent()
        .iter()
        .any(|(_, m)| matches!(m, CoreToAgent::Cancel(x) if x.command_id == c)));
    // The slave EA refused it durably: now, and only now, it is FAILED.
    h.take();
    h.msg("B", result(&c, "s1", 0, BrokerStatus::Cancelled));
    assert!(h.writes().iter().any(|w| matches!(
        w,
        JournalWrite::FinishDelivery {
            status: DeliveryStatus::Failed,
            reason: Some(ErrorCode::MaxRetries),
            ..
        }
    )));
    assert!(h.logs().iter().any(|l| matches!(
        l,
        CoreLog::DeliveryFailed {
            reason: ErrorCode::MaxRetries,
            ..
        }
    )));
    h.journal_ok_all();
    assert_eq!(h.core.open_deliveries(), 0);
    assert_eq!(h.core.metrics().delivery_failed_total, 1);
    assert_eq!(
        h.core
            .metrics()
            .delivery_failed_by_reason
            .iter()
            .map(|(r, n)| (*r, *n))
            .collect::<Vec<_>>(),
        vec![("MAX_RETRIES", 1)],
        "a FAILED delivery is counted by its reason"
    );
    h.fired
}

fn cancel_answered_by_the_real_result() -> Vec<&'static str> {
    let mut h = H::world();
    h.core
        .handle_subscriptions(h.now, vec![Subscription::new("m1", "s1", 1.0)]);
    h.accept(intent("i1", "t1", IntentKind::Open, 1));
    let c = cmd_id("i1", "s1");
    // Every stage report is lost; the slave did execute it.
    for _ in 0..3 {
        h.next_timer();
        h.next_timer();
    }
    assert_eq!(
        h.core.delivery_view(&c).map(|v| v.state),
        Some("Cancelling")
    );
    h.take();
    h.msg("B", result(&c, "s1", 55, BrokerStatus::Filled));
    assert!(h.writes().iter().any(|w| matches!(
        w,
        JournalWrite::FinishDelivery {
            status: DeliveryStatus::Acked,
            slave_ticket: Some(55),
            ..
        }
    )));
    h.journal_ok_all();
    // A later modify finds the position the cancelled-then-confirmed open produced.
    let m = h.accept(intent("m", "t1", IntentKind::Modify, 2));
    assert!(matches!(
        m[0].body,
        CommandBody::Modify {
            slave_ticket: 55,
            ..
        }
    ));
    h.fired
}

fn retryable_pipe_failure_backs_off() -> Vec<&'static str> {
    let mut h = H::world();
    h.core
        .handle_subscriptions(h.now, vec![Subscription::new("m1", "s1", 1.0)]);
    h.accept(intent("i1", "t1", IntentKind::Open, 1));
    let c = cmd_id("i1", "s1");
    h.msg("B", stage_ack(&c, "s1", AckStage::AgentBuffered));
    h.msg("B", fail_ack(&c, "s1", ErrorCode::PipeUnavailable));
    assert_eq!(h.core.delivery_view(&c).map(|v| v.state), Some("Backoff"));
    // A second retryable failure while backing off changes nothing.
    h.msg("B", fail_ack(&c, "s1", ErrorCode::PipeUnavailable));
    assert!(h.has_fired("core.delivery.T06"));
    h.take();
    h.advance(10);
    assert_eq!(h.commands().len(), 1, "re-sent after backoff");
    assert_eq!(
        h.core.delivery_view(&c).map(|v| v.stage),
        Some(AckStage::AgentBuffered),
        "stage kept"
    );
    h.fired
}

fn reconciler_resends_without_result() -> Vec<&'static str> {
    let mut h = H::world();
    h.core
        .handle_subscriptions(h.now, vec![Subscription::new("m1", "s1", 1.0)]);
    h.accept(intent("i1", "t1", IntentKind::Open, 1));
    let c = cmd_id("i1", "s1");
    h.msg("B", stage_ack(&c, "s1", AckStage::AgentBuffered));
    h.msg("B", stage_ack(&c, "s1", AckStage::PipeDelivered));
    h.take();
    for k in 1..=10 {
        h.advance(500);
        h.msg("A", AgentToCore::Heartbeat);
        h.msg("B", AgentToCore::Heartbeat);
        assert_eq!(h.commands().len(), k, "one re-send per reconcile interval");
    }
    assert_eq!(
        h.core.delivery_view(&c).map(|v| v.state),
        Some("Inflight"),
        "never FAILED by a timeout after PIPE_DELIVERED"
    );
    assert_eq!(h.core.metrics().reconcile_resends_total, 10);
    h.fired
}

fn stale_and_unknown_acks_change_nothing() -> Vec<&'static str> {
    let mut h = H::world();
    h.accept(intent("i1", "t1", IntentKind::Open, 1));
    let c = cmd_id("i1", "s1");
    h.msg("B", stage_ack(&c, "s1", AckStage::PipeDelivered));
    h.take();
    h.msg("B", stage_ack(&c, "s1", AckStage::AgentBuffered));
    assert_eq!(
        h.core.delivery_view(&c).map(|v| v.stage),
        Some(AckStage::PipeDelivered),
        "no regression"
    );
    assert!(h.writes().is_empty());
    h.msg(
        "B",
        stage_ack(&cmd_id("nope", "s1"), "s1", AckStage::AgentBuffered),
    );
    h.msg(
        "B",
        result(&cmd_id("nope", "s1"), "s1", 1, BrokerStatus::Filled),
    );
    assert_eq!(h.core.metrics().late_or_unknown_total, 2);
    // A result claimed by the wrong slave is not accepted.
    h.msg("B", result(&c, "s2", 1, BrokerStatus::Filled));
    assert_eq!(h.core.delivery_view(&c).map(|v| v.state), Some("Inflight"));
    h.fired
}

fn refused_by_ea_fails_explicitly() -> Vec<&'static str> {
    let mut h = H::world();
    h.accept(intent("i1", "t1", IntentKind::Open, 1));
    let c = cmd_id("i1", "s1");
    h.take();
    h.msg("B", fail_ack(&c, "s1", ErrorCode::EaRejected));
    assert!(h.writes().iter().any(|w| matches!(
        w,
        JournalWrite::FinishDelivery {
            status: DeliveryStatus::Failed,
            reason: Some(ErrorCode::EaRejected),
            ..
        }
    )));
    h.fired
}

fn final_state_write_is_retried_until_durable() -> Vec<&'static str> {
    let mut h = H::world();
    h.core
        .handle_subscriptions(h.now, vec![Subscription::new("m1", "s1", 1.0)]);
    h.accept(intent("i1", "t1", IntentKind::Open, 1));
    let c = cmd_id("i1", "s1");
    h.msg("B", result(&c, "s1", 9, BrokerStatus::Filled));
    for _ in 0..8 {
        assert!(h.answer(
            |w| matches!(w, JournalWrite::FinishDelivery { .. }),
            JournalResult::Failed { retryable: true }
        ));
        assert_eq!(
            h.core.delivery_view(&c).map(|v| v.state),
            Some("Finalizing")
        );
        h.take();
        // Heartbeat ticks may come first; the rewrite must come within a few deadlines.
        for _ in 0..4 {
            h.next_timer();
            if h.writes()
                .iter()
                .any(|w| matches!(w, JournalWrite::FinishDelivery { .. }))
            {
                break;
            }
        }
        assert!(h
            .writes()
            .iter()
            .any(|w| matches!(w, JournalWrite::FinishDelivery { .. })));
    }
    h.journal_ok_all();
    assert!(h.core.delivery_view(&c).is_none());
    h.fired
}

fn unmapped_symbol_fails_at_intake() -> Vec<&'static str> {
    let mut h = H::world();
    let mut sub = Subscription::new("m1", "s1", 1.0);
    sub.symbol_map
        .insert(Symbol::new("GBPUSD"), Symbol::new("GBPUSD.m"));
    h.core.handle_subscriptions(h.now, vec![sub]);
    h.msg(
        "A",
        AgentToCore::Intent(intent("i1", "t1", IntentKind::Open, 1)),
    );
    let w = h.writes();
    let JournalWrite::AcceptIntent { deliveries, .. } = &w[0] else {
        panic!()
    };
    assert_eq!(deliveries[0].status, DeliveryStatus::Failed);
    assert_eq!(deliveries[0].reason, Some(ErrorCode::SymbolNotMapped));
    h.take();
    h.journal_ok_all();
    assert_eq!(
        h.intent_acks()[0].result,
        AckResult::Ok,
        "the intent itself is accepted"
    );
    assert!(h.commands().is_empty(), "never guessed");
    assert!(h.logs().iter().any(|l| matches!(
        l,
        CoreLog::DeliveryFailed {
            reason: ErrorCode::SymbolNotMapped,
            ..
        }
    )));
    assert_eq!(h.core.open_intents(), 0);
    h.fired
}

fn hello_variants_and_control_path() -> Vec<&'static str> {
    let mut h = H::new();
    h.msg("A", hello("A", &[("m1", Role::Master)]));
    assert!(matches!(&h.sent()[0].1, CoreToAgent::Hello(c) if c.accepted && !c.compat_mode));
    h.take();
    let mut legacy = hello("L", &[("s9", Role::Slave)]);
    if let AgentToCore::Hello(x) = &mut legacy {
        x.supports_lossless_delivery = false;
    }
    h.msg("L", legacy);
    assert!(matches!(&h.sent()[0].1, CoreToAgent::Hello(c) if c.accepted && c.compat_mode));
    assert_eq!(h.core.metrics().compat_mode_total, 1);
    h.take();
    let mut newer = hello("N", &[("s8", Role::Slave)]);
    if let AgentToCore::Hello(x) = &mut newer {
        x.protocol_version = PROTOCOL_VERSION + 1;
    }
    h.msg("N", newer);
    assert!(matches!(&h.sent()[0].1, CoreToAgent::Hello(c) if !c.accepted));
    h.take();
    h.msg("X", hello("X", &[("m1", Role::Master)]));
    assert!(
        matches!(&h.sent()[0].1, CoreToAgent::Hello(c) if !c.accepted && c.reason == Some(ErrorCode::ProtocolViolation)),
        "m1 belongs to A"
    );
    h.take();
    h.msg("A", AgentToCore::Heartbeat);
    assert!(h.has_fired("core.registry.T04") && h.has_fired("core.router.T03"));
    h.advance(1_000);
    assert!(h
        .sent()
        .iter()
        .any(|(ag, m)| ag.as_str() == "A" && matches!(m, CoreToAgent::Heartbeat(_))));
    assert!(
        !h.sent().iter().any(|(ag, _)| ag.as_str() == "L"),
        "compat agents get no DeliveryHeartbeat"
    );
    h.fired
}

fn config_push_and_subscriptions() -> Vec<&'static str> {
    let mut h = H::world();
    let mut d = h.core.delivery_config();
    d.max_retries = 9;
    let agent = echo_statemachine::config::AgentDeliveryConfig {
        max_retries: 4,
        ..Default::default()
    };
    h.core.handle_delivery_config(h.now, d, agent);
    h.drain();
    let pushed: Vec<_> = h
        .sent()
        .into_iter()
        .filter_map(|(ag, m)| match m {
            CoreToAgent::Heartbeat(hb) => Some((ag, hb)),
            _ => None,
        })
        .collect();
    assert_eq!(pushed.len(), 2, "both online agents at once");
    assert!(pushed.iter().all(|(_, hb)| hb.core.max_retries == 9
        && hb.agent.max_retries == 4
        && hb.config_version == 2));
    h.core
        .handle_subscriptions(h.now, vec![Subscription::new("m1", "s2", 3.0)]);
    h.drain();
    h.take();
    h.msg(
        "A",
        AgentToCore::Intent(intent("i1", "t1", IntentKind::Open, 1)),
    );
    let w = h.writes();
    let JournalWrite::AcceptIntent { deliveries, .. } = &w[0] else {
        panic!()
    };
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].slave.as_str(), "s2");
    assert_eq!(deliveries[0].volume, 1.5);
    h.fired
}

fn recover_resumes_unfinished_in_order() -> Vec<&'static str> {
    let durable = CoreDurableState {
        // Deliberately out of order: recovery must order by master_seq.
        unfinished: vec![
            record("close", "t1", "s1", IntentKind::Close, 3),
            record("mod", "t1", "s1", IntentKind::Modify, 2),
        ],
        open_tickets: vec![(TradeId::new("t1"), AccountId::new("s1"), 77)],
        skipped_opens: vec![],
    };
    let mut h = H::recover(cfg(), durable);
    assert_eq!(h.core.open_deliveries(), 2);
    h.msg("A", hello("A", &[("m1", Role::Master)]));
    h.msg("B", hello("B", &[("s1", Role::Slave)]));
    let cmds = h.commands();
    assert_eq!(cmds.len(), 1, "only the chain head");
    assert_eq!(cmds[0].command_id, cmd_id("mod", "s1"));
    assert!(matches!(
        cmds[0].body,
        CommandBody::Modify {
            slave_ticket: 77,
            ..
        }
    ));
    // A master retry of a recovered intent is re-acked, not journaled again.
    h.take();
    h.msg(
        "A",
        AgentToCore::Intent(intent("mod", "t1", IntentKind::Modify, 2)),
    );
    assert_eq!(h.intent_acks().len(), 1);
    assert!(h.writes().is_empty());
    h.confirm(&cmd_id("mod", "s1"), "s1", 77);
    assert!(matches!(
        h.commands().last().map(|c| &c.body),
        Some(CommandBody::Close {
            slave_ticket: 77,
            ..
        })
    ));
    h.fired
}

fn backoff_with_account_gone_parks() -> Vec<&'static str> {
    let mut h = H::world();
    h.core
        .handle_subscriptions(h.now, vec![Subscription::new("m1", "s1", 1.0)]);
    h.accept(intent("i1", "t1", IntentKind::Open, 1));
    let c = cmd_id("i1", "s1");
    h.advance(100);
    assert_eq!(h.core.delivery_view(&c).map(|v| v.state), Some("Backoff"));
    // B says hello again without s1 (the terminal moved): a new session, so the delivery is
    // parked at once (T16) and waits for the agent that serves s1.
    h.msg("B", hello("B", &[("s2", Role::Slave)]));
    assert_eq!(h.core.delivery_view(&c).map(|v| v.state), Some("Parked"));
    h.advance(10_000);
    assert_eq!(h.core.delivery_view(&c).map(|v| v.state), Some("Parked"));
    h.take();
    h.msg("C", hello("C", &[("s1", Role::Slave)]));
    assert!(h
        .sent()
        .iter()
        .any(|(ag, m)| ag.as_str() == "C" && matches!(m, CoreToAgent::Command(_))));
    h.fired
}

/// Catch-up (`core.delivery.T25`): while the slaves' agent is away, an open for a slave whose
/// subscription has `catchup/max_age_ms` expires; the other slave still gets it, and a close of
/// a position the slave holds is delivered however late.
fn catch_up_expires_only_unsent_opens() -> Vec<&'static str> {
    let mut c = cfg();
    c.subscriptions[0].policy.catch_up.max_age_ms = 1_000;
    let mut h = H::with(c);
    h.msg("A", hello("A", &[("m1", Role::Master)]));
    h.msg("B", hello("B", &[("s1", Role::Slave), ("s2", Role::Slave)]));
    h.take();
    let cmds = h.accept(intent("i1", "t1", IntentKind::Open, 1));
    assert_eq!(cmds.len(), 2);
    h.confirm(&cmd_id("i1", "s1"), "s1", 11);
    h.confirm(&cmd_id("i1", "s2"), "s2", 12);
    h.disconnect("B");
    h.accept(intent("i2", "t1", IntentKind::Close, 2));
    h.accept(intent("i3", "t2", IntentKind::Open, 3));
    h.advance(5_000);
    h.take();
    h.msg("B", hello("B", &[("s1", Role::Slave), ("s2", Role::Slave)]));
    let expired: Vec<CommandId> = h
        .writes()
        .iter()
        .filter_map(|w| match w {
            JournalWrite::FinishDelivery {
                command_id,
                reason: Some(ErrorCode::Expired),
                ..
            } => Some(command_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        expired,
        vec![cmd_id("i3", "s1")],
        "only the late open to s1"
    );
    let sent: Vec<CommandId> = h.commands().into_iter().map(|c| c.command_id).collect();
    for want in [cmd_id("i2", "s1"), cmd_id("i2", "s2"), cmd_id("i3", "s2")] {
        assert!(
            sent.contains(&want),
            "{want} delivered after the absence: {sent:?}"
        );
    }
    assert!(!sent.contains(&cmd_id("i3", "s1")));
    h.journal_ok_all();
    assert_eq!(h.core.metrics().copy_skipped_total.get("EXPIRED"), Some(&1));
    h.fired
}

/// `core.delivery.T26`: a slave whose policy did not copy an open (a direction filter here)
/// gets the trade's modify, partial close and close ended with the open's reason — never
/// sent, so the slave never answers NO_POSITION for a position it was never meant to hold —
/// while the other slave copies the whole lifecycle.
fn later_intents_of_a_skipped_open_keep_its_reason() -> Vec<&'static str> {
    let mut c = cfg();
    c.subscriptions[0].policy.filters.direction =
        echo_statemachine::policy::filters::Direction::SellOnly;
    let mut h = H::with(c);
    h.msg("A", hello("A", &[("m1", Role::Master)]));
    h.msg("B", hello("B", &[("s1", Role::Slave), ("s2", Role::Slave)]));
    h.take();
    let open = h.accept(intent("o", "t1", IntentKind::Open, 1));
    assert_eq!(open.len(), 1, "only s2 copies a buy: {open:?}");
    h.confirm(&cmd_id("o", "s2"), "s2", 21);
    for (id, kind, seq) in [
        ("m", IntentKind::Modify, 2),
        ("p", IntentKind::PartialClose, 3),
        ("c", IntentKind::Close, 4),
    ] {
        let sent = h.accept(intent(id, "t1", kind, seq));
        let to: Vec<&str> = sent.iter().map(|c| c.slave.as_str()).collect();
        assert_eq!(to, vec!["s2"], "{id}: only s2 holds the position");
        assert_eq!(
            finished(&h),
            vec![(cmd_id(id, "s1"), Some(ErrorCode::FilteredDirection))],
            "{id}: s1 follows its open's reason, not NO_POSITION"
        );
        h.confirm(&cmd_id(id, "s2"), "s2", 21);
    }
    assert_eq!(
        h.core
            .metrics()
            .copy_skipped_total
            .get("FILTERED_DIRECTION"),
        Some(&4)
    );
    h.fired
}

/// `core.intake.T10`: a partial close must state its fraction exactly (0 < closed <= the
/// master's volume before); without it no slave could know its share.
fn partial_close_without_its_fraction_is_refused() -> Vec<&'static str> {
    let mut h = H::world();
    for (n, (closed, before)) in [(0.5, 0.0), (0.0, 1.0), (1.5, 1.0), (0.5, f64::NAN)]
        .into_iter()
        .enumerate()
    {
        let mut p = intent(&format!("p{n}"), "t1", IntentKind::PartialClose, 1);
        p.volume = closed;
        p.master_volume_before = before;
        h.take();
        h.msg("A", AgentToCore::Intent(p));
        assert_eq!(
            h.intent_acks()[0].error,
            Some(ErrorCode::InvalidArgument),
            "{closed} of {before}"
        );
        assert!(h.writes().is_empty());
    }
    h.fired
}

/// Transitions no correct input sequence reaches, kept as defensive branches.
/// `core.delivery.T14` (a backoff timer finds the slave unserved): every way a slave loses its
/// route — disconnect (T07), silence (T06) and, since session 7, a re-hello without it
/// (registry T01/T02) — parks its live deliveries first and disarms their timers (T16).
const DEFENSIVE: &[&str] = &["core.delivery.T14"];

#[test]
fn every_core_transition_is_exercised() {
    let mut seen = BTreeSet::new();
    for (_, s) in SCENARIOS {
        seen.extend(s());
    }
    let mut missing = Vec::new();
    for m in echo_statemachine::spec::machines() {
        if !m.name.starts_with("core.") {
            continue;
        }
        for t in m.transitions {
            if !seen.contains(t.id) && !DEFENSIVE.contains(&t.id) {
                missing.push(t.id);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "core transitions no test exercises: {missing:?}"
    );
    // A defensive branch must stay unreachable: if a change makes it fire, it is no longer
    // defensive and belongs in a scenario.
    for id in DEFENSIVE {
        assert!(!seen.contains(id), "{id} fires now: give it a scenario");
    }
}

/// Copy terms (`policy::terms`): an open under slave-side sizing carries the master's lots and
/// the terms; the slave EA's policy refusal (`ExecutionResult{REJECTED, PRICE_DEVIATION}`) is
/// FAILED with that reason and counted (`core.delivery.T27`). After a restart, recovered opens
/// get terms rebuilt from the subscription (`T28`) and are sent, never failed at the core.
fn slave_terms_ride_the_open_and_refusals_count() -> Vec<&'static str> {
    let mut c = cfg();
    let p = &mut c.subscriptions[0].policy;
    p.set("m1", "s1", "sizing/mode", "balance_ratio").unwrap();
    p.set("m1", "s1", "sizing/ratio", "2").unwrap();
    p.set("m1", "s1", "deviation/max_points", "10").unwrap();
    c.subscriptions[1]
        .policy
        .set("m1", "s2", "filters/max_open_positions", "3")
        .unwrap();
    let mut h = H::with(c.clone());
    h.msg("A", hello("A", &[("m1", Role::Master)]));
    h.msg("B", hello("B", &[("s1", Role::Slave), ("s2", Role::Slave)]));
    h.take();
    let mut i = intent("i1", "t1", IntentKind::Open, 1);
    i.origin.balance = 20_000.0;
    let cmds = h.accept(i);
    let terms = |id: &CommandId| {
        cmds.iter()
            .find(|c| c.command_id == *id)
            .map(|c| match &c.body {
                CommandBody::Execute { volume, terms, .. } => (*volume, *terms),
                b => panic!("{b:?}"),
            })
    };
    let (v1, t1) = terms(&cmd_id("i1", "s1")).unwrap();
    assert_eq!(v1, 0.5, "the slave sizes from the master's lots");
    assert_eq!(t1.sizing, SlaveSizing::BalanceRatio);
    assert_eq!((t1.sizing_value, t1.master_amount), (2.0, 20_000.0));
    assert_eq!(t1.max_deviation_points, 10);
    let (v2, t2) = terms(&cmd_id("i1", "s2")).unwrap();
    assert_eq!(v2, 0.5, "multiplier 1 sized by the core");
    assert_eq!(t2.sizing, SlaveSizing::Final);
    assert_eq!(t2.max_open_positions, 3);
    let mut refused = terms_refusal("i1", "t1", "s1", ErrorCode::PriceDeviation);
    h.msg("B", AgentToCore::ExecutionResult(refused.clone()));
    assert!(h.writes().iter().any(|w| matches!(
        w,
        JournalWrite::FinishDelivery {
            reason: Some(ErrorCode::PriceDeviation),
            ..
        }
    )));
    assert_eq!(
        h.core.metrics().copy_skipped_total.get("PRICE_DEVIATION"),
        Some(&1)
    );
    // A broker's own rejection is no policy skip.
    refused.command_id = cmd_id("i1", "s2");
    refused.slave = AccountId::new("s2");
    refused.reason = None;
    h.msg("B", AgentToCore::ExecutionResult(refused));
    assert!(h.writes().iter().any(|w| matches!(
        w,
        JournalWrite::FinishDelivery {
            reason: Some(ErrorCode::BrokerRejected),
            ..
        }
    )));
    assert_eq!(h.core.metrics().copy_skipped_total.values().sum::<u64>(), 1);
    let fired = h.fired.clone();

    // s1's open was journaled with the master's facts (balance 20 000, symbol EURUSD); t3's
    // row predates them (journaled before migration 0006: not reported).
    let mut with_facts = record("i2", "t2", "s1", IntentKind::Open, 2);
    let mut origin = intent("i2", "t2", IntentKind::Open, 2);
    origin.origin.balance = 20_000.0;
    with_facts.intent_facts = Some(Box::new(IntentFacts::of(&origin)));
    let durable = CoreDurableState {
        unfinished: vec![
            with_facts,
            record("i2", "t2", "s2", IntentKind::Open, 2),
            record("i3", "t3", "s1", IntentKind::Open, 3),
        ],
        open_tickets: vec![],
        skipped_opens: vec![],
    };
    let mut h = H::recover(c, durable);
    h.msg("A", hello("A", &[("m1", Role::Master)]));
    h.msg("B", hello("B", &[("s1", Role::Slave), ("s2", Role::Slave)]));
    // All are sent (any may have executed before the crash): s2's guards come back from its
    // subscription, s1's ratio sizing from its subscription and the master's journaled
    // balance — the same terms as before the crash; t3's row has no facts: the slave refuses
    // it ACCOUNT_FACTS_UNKNOWN unless it already executed it.
    let cmds = h.commands();
    assert_eq!(cmds.len(), 3);
    let terms_of = |slave: &str| {
        cmds.iter()
            .find(|c| c.slave.as_str() == slave && c.trade_id.as_str() == "t2")
            .map(|c| match &c.body {
                CommandBody::Execute { terms, .. } => *terms,
                b => panic!("{b:?}"),
            })
            .unwrap()
    };
    assert_eq!(terms_of("s2").max_open_positions, 3);
    assert_eq!(terms_of("s2").sizing, SlaveSizing::Final);
    let t1 = terms_of("s1");
    assert_eq!(
        (t1.sizing, t1.sizing_value, t1.master_amount),
        (SlaveSizing::BalanceRatio, 2.0, 20_000.0),
        "planned with the same facts as before the crash"
    );
    let legacy = cmds
        .iter()
        .find(|c| c.trade_id.as_str() == "t3")
        .map(|c| match &c.body {
            CommandBody::Execute { terms, .. } => *terms,
            b => panic!("{b:?}"),
        })
        .unwrap();
    assert_eq!(
        (legacy.sizing, legacy.master_amount),
        (SlaveSizing::BalanceRatio, 0.0)
    );
    assert!(h.writes().is_empty(), "nothing failed at the core");
    let mut all = fired;
    all.extend(h.fired);
    all
}

/// Stage latencies run from the accept reaching the core to each later stage reaching it,
/// once per stage; a recovered delivery is not timed (its accept happened in another life).
#[test]
fn stage_latencies_are_measured_from_the_accept() {
    let mut h = H::world();
    h.msg(
        "A",
        AgentToCore::Intent(intent("i1", "T-1", IntentKind::Open, 1)),
    );
    h.take();
    h.journal_ok_all();
    let cmds = h.commands();
    let c = &cmds[0].command_id;
    h.advance(3);
    h.msg("B", stage_ack(c, "s1", AckStage::AgentBuffered));
    h.advance(4);
    h.msg("B", stage_ack(c, "s1", AckStage::PipeDelivered));
    // A repeated ack of a stage already reached is not a second sample.
    h.msg("B", stage_ack(c, "s1", AckStage::PipeDelivered));
    h.advance(5);
    h.msg("B", result(c, "s1", 100, BrokerStatus::Filled));
    let lat = &h.core.metrics().delivery_stage_latency_us;
    let max = |s: AckStage| lat.get(&s).map(|h| (h.count(), h.max()));
    assert_eq!(max(AckStage::AgentBuffered), Some((1, 3_000)));
    assert_eq!(max(AckStage::PipeDelivered), Some((1, 7_000)));
    assert_eq!(max(AckStage::EaConfirmed), Some((1, 12_000)));

    let durable = CoreDurableState {
        unfinished: vec![record("o", "t1", "s1", IntentKind::Open, 1)],
        open_tickets: vec![],
        skipped_opens: vec![],
    };
    let mut r = H::recover(cfg(), durable);
    r.msg("B", hello("B", &[("s1", Role::Slave)]));
    let c = cmd_id("o", "s1");
    r.advance(2);
    r.msg("B", stage_ack(&c, "s1", AckStage::PipeDelivered));
    r.msg("B", result(&c, "s1", 5, BrokerStatus::Filled));
    assert!(r.has_fired("core.delivery.T05"));
    assert!(r.core.metrics().delivery_stage_latency_us.is_empty());
}

/// The commands the last accepted intent produced for `slave`.
fn to_slave(cmds: &[Command], slave: &str) -> CommandBody {
    cmds.iter()
        .find(|c| c.slave.as_str() == slave)
        .map(|c| c.body.clone())
        .unwrap_or_else(|| panic!("no command for {slave} in {cmds:?}"))
}

/// Pending orders (SPEC.md §5.2): a placement is sized and mirrored like an open (reversed:
/// buy limit ↔ sell stop, SL ↔ TP); the slave's pending ticket is correlated and replaced by
/// the position's on the master's trigger, so later modifies and closes reach the position; a
/// cancel forgets it and a later pending intent ends NO_POSITION (T29); an invalid pending
/// intent is refused (intake T14).
fn pending_order_lifecycle_and_ticket_correlation() -> Vec<&'static str> {
    let mut c = cfg();
    c.subscriptions[0].policy.reverse = true;
    let mut h = H::with(c);
    h.msg("A", hello("A", &[("m1", Role::Master)]));
    h.msg("B", hello("B", &[("s1", Role::Slave), ("s2", Role::Slave)]));
    h.take();
    // Intake T14: a placement without a price is refused, nothing journaled.
    let mut bad = intent("bad", "t9", IntentKind::PlaceLimit, 1);
    bad.price = 0.0;
    h.msg("A", AgentToCore::Intent(bad));
    assert_eq!(h.intent_acks()[0].error, Some(ErrorCode::InvalidArgument));
    assert!(h.writes().is_empty());
    let placed = h.accept(intent("pl", "t1", IntentKind::PlaceLimit, 1));
    let CommandBody::PlacePending {
        side,
        order_type,
        volume,
        price,
        stop_loss,
        take_profit,
        terms,
        ..
    } = to_slave(&placed, "s1")
    else {
        panic!("s1 gets a placement: {placed:?}")
    };
    assert_eq!(
        (side, order_type, volume, price),
        (Side::Sell, PendingType::Stop, 1.0, 1.1),
        "reversed buy limit = sell stop at the same price, sized 0.5 × 2"
    );
    assert_eq!((stop_loss, take_profit), (1.2, 1.0), "SL ↔ TP");
    assert_eq!(
        terms.max_deviation_points, 0,
        "a pending order has no guard"
    );
    assert!(matches!(
        to_slave(&placed, "s2"),
        CommandBody::PlacePending {
            side: Side::Buy,
            order_type: PendingType::Limit,
            ..
        }
    ));
    h.confirm(&cmd_id("pl", "s1"), "s1", 11);
    h.confirm(&cmd_id("pl", "s2"), "s2", 21);
    assert!(h.has_fired("core.delivery.T31"));
    assert_eq!(h.core.debug_sizes().open_tickets, 2);
    let modified = h.accept(intent("pm", "t1", IntentKind::PendingModify, 2));
    assert!(matches!(
        to_slave(&modified, "s1"),
        CommandBody::ModifyPending {
            slave_ticket: 11,
            price,
            ..
        } if price == 1.1
    ));
    h.confirm(&cmd_id("pm", "s1"), "s1", 11);
    h.confirm(&cmd_id("pm", "s2"), "s2", 21);
    let triggered = h.accept(intent("tr", "t1", IntentKind::PendingTrigger, 3));
    assert!(matches!(
        to_slave(&triggered, "s1"),
        CommandBody::ResolvePending {
            slave_ticket: 11,
            resolution: PendingResolution::Trigger,
            side: Side::Sell,
            ..
        }
    ));
    // s1 opened at market (new ticket 31); s2's pending had filled: its ticket stays 21.
    h.confirm(&cmd_id("tr", "s1"), "s1", 31);
    h.confirm(&cmd_id("tr", "s2"), "s2", 21);
    let later = h.accept(intent("m", "t1", IntentKind::Modify, 4));
    assert!(matches!(
        to_slave(&later, "s1"),
        CommandBody::Modify {
            slave_ticket: 31,
            ..
        }
    ));
    assert!(matches!(
        to_slave(&later, "s2"),
        CommandBody::Modify {
            slave_ticket: 21,
            ..
        }
    ));
    h.confirm(&cmd_id("m", "s1"), "s1", 31);
    h.confirm(&cmd_id("m", "s2"), "s2", 21);
    // A second trade: placed, cancelled (ticket forgotten), then a stray pending modify.
    h.accept(intent("p2", "t2", IntentKind::PlaceStop, 5));
    h.confirm(&cmd_id("p2", "s1"), "s1", 12);
    h.confirm(&cmd_id("p2", "s2"), "s2", 22);
    assert_eq!(h.core.debug_sizes().open_tickets, 4);
    let cancelled = h.accept(intent("c2", "t2", IntentKind::PendingCancel, 6));
    assert!(matches!(
        to_slave(&cancelled, "s2"),
        CommandBody::ResolvePending {
            slave_ticket: 22,
            resolution: PendingResolution::Cancel,
            ..
        }
    ));
    h.confirm(&cmd_id("c2", "s1"), "s1", 12);
    h.confirm(&cmd_id("c2", "s2"), "s2", 22);
    assert_eq!(h.core.debug_sizes().open_tickets, 2, "the cancel forgot t2");
    let stray = h.accept(intent("x2", "t2", IntentKind::PendingModify, 7));
    assert!(stray.is_empty(), "never sent without a ticket");
    let failed: Vec<Option<ErrorCode>> = h
        .writes()
        .iter()
        .filter_map(|w| match w {
            JournalWrite::FinishDelivery { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect();
    assert_eq!(failed, vec![Some(ErrorCode::NoPosition); 2]);
    assert!(h.has_fired("core.delivery.T29"));
    h.fired
}

/// A placement the policy does not copy (order-type filter) makes the trade's trigger end
/// with its reason (T30), not NO_POSITION; after a restart a placement and a trigger read back
/// from the journal get terms rebuilt from the subscription (T32).
fn pending_orders_of_a_skipped_placement_and_after_restart() -> Vec<&'static str> {
    let mut c = cfg();
    c.subscriptions[1].policy.filters.order_types =
        [echo_statemachine::policy::filters::OrderType::Market]
            .into_iter()
            .collect();
    c.subscriptions[0].policy.deviation.max_points = 30;
    let mut h = H::with(c.clone());
    h.msg("A", hello("A", &[("m1", Role::Master)]));
    h.msg("B", hello("B", &[("s1", Role::Slave), ("s2", Role::Slave)]));
    h.take();
    let placed = h.accept(intent("pl", "t1", IntentKind::PlaceLimit, 1));
    assert_eq!(placed.len(), 1, "s2 copies market orders only: {placed:?}");
    h.confirm(&cmd_id("pl", "s1"), "s1", 11);
    let triggered = h.accept(intent("tr", "t1", IntentKind::PendingTrigger, 2));
    let CommandBody::ResolvePending { terms, .. } = to_slave(&triggered, "s1") else {
        panic!("a trigger for s1: {triggered:?}")
    };
    assert_eq!(
        terms.max_deviation_points, 30,
        "the trigger's fallback is guarded"
    );
    let reasons: Vec<Option<ErrorCode>> = h
        .writes()
        .iter()
        .filter_map(|w| match w {
            JournalWrite::FinishDelivery { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect();
    assert_eq!(reasons, vec![Some(ErrorCode::FilteredOrderType)]);
    assert!(h.has_fired("core.delivery.T30"));
    // Restart: a placement and a trigger read back without their terms.
    let mut fired = h.fired;
    let durable = CoreDurableState {
        unfinished: vec![
            record("p3", "t3", "s1", IntentKind::PlaceStop, 3),
            record("t4", "t4", "s1", IntentKind::PendingTrigger, 4),
        ],
        open_tickets: vec![(TradeId::new("t4"), AccountId::new("s1"), 44)],
        skipped_opens: vec![],
    };
    let mut h = H::recover(c, durable);
    h.msg("A", hello("A", &[("m1", Role::Master)]));
    h.msg("B", hello("B", &[("s1", Role::Slave)]));
    let cmds = h.commands();
    assert_eq!(cmds.len(), 2);
    for cmd in &cmds {
        match &cmd.body {
            CommandBody::PlacePending { terms, .. } => {
                assert_eq!(terms.max_deviation_points, 0)
            }
            CommandBody::ResolvePending {
                terms,
                slave_ticket,
                ..
            } => assert_eq!((terms.max_deviation_points, *slave_ticket), (30, 44)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(h.has_fired("core.delivery.T32"));
    fired.extend(h.fired);
    fired
}

/// `journal_stage_acks` decides whether AGENT_BUFFERED / PIPE_DELIVERED become journal writes;
/// the delivery advances through them and finishes the same either way.
#[test]
fn stage_acks_are_journaled_only_when_configured() {
    for flag in [0u32, 1] {
        let mut c = cfg();
        c.delivery.journal_stage_acks = flag;
        let mut h = H::with(c);
        h.msg("A", hello("A", &[("m1", Role::Master)]));
        h.msg("B", hello("B", &[("s1", Role::Slave), ("s2", Role::Slave)]));
        h.take();
        h.msg(
            "A",
            AgentToCore::Intent(intent("i1", "T-1", IntentKind::Open, 1)),
        );
        h.take();
        h.journal_ok_all();
        let cmds = h.commands();
        assert_eq!(cmds.len(), 2);
        let c0 = &cmds[0];
        h.take();
        h.msg(
            "B",
            stage_ack(&c0.command_id, "s1", AckStage::AgentBuffered),
        );
        h.msg(
            "B",
            stage_ack(&c0.command_id, "s1", AckStage::PipeDelivered),
        );
        let stages: Vec<AckStage> = h
            .writes()
            .iter()
            .filter_map(|w| match w {
                JournalWrite::UpdateStage { stage, .. } => Some(*stage),
                _ => None,
            })
            .collect();
        let expected = if flag == 1 {
            vec![AckStage::AgentBuffered, AckStage::PipeDelivered]
        } else {
            Vec::new()
        };
        assert_eq!(stages, expected, "journal_stage_acks = {flag}");
        assert!(
            h.fired.contains(&"core.delivery.T05"),
            "the stage still advances in memory"
        );
        h.msg("B", result(&c0.command_id, "s1", 100, BrokerStatus::Filled));
        assert!(h.writes().iter().any(|w| matches!(
            w,
            JournalWrite::FinishDelivery {
                status: DeliveryStatus::Acked,
                stage: AckStage::EaConfirmed,
                ..
            }
        )));
    }
}

/// `sizing/above_max = split` (SPEC.md §5.2 "Split"): a core-sized open above the slave's
/// maximum is sent with its total and the per-order limits for the slave EA to split; a
/// placement is capped (one ticket). A split that filled in part is ACKED and counted (T34);
/// a close that left legs open ends FAILED SPLIT_INCOMPLETE with the ticket kept (T33).
fn split_opens_carry_their_limits_and_incomplete_splits_are_explicit() -> Vec<&'static str> {
    let mut c = cfg();
    let p = &mut c.subscriptions[0].policy;
    p.set("m1", "s1", "sizing/above_max", "split").unwrap();
    p.set("m1", "s1", "limits/max_lots", "0.4").unwrap();
    p.validate("m1", "s1").expect("split is a valid setting");
    let mut h = H::with(c);
    h.msg("A", hello("A", &[("m1", Role::Master)]));
    h.msg("B", hello("B", &[("s1", Role::Slave), ("s2", Role::Slave)]));
    h.take();
    let cmds = h.accept(intent("i1", "t1", IntentKind::Open, 1));
    let CommandBody::Execute { volume, terms, .. } = to_slave(&cmds, "s1") else {
        panic!("an open for s1: {cmds:?}")
    };
    assert_eq!(volume, 1.0, "0.5 × 2: the whole volume, not capped");
    assert_eq!((terms.split_max_lots, terms.split_min_lots), (0.4, 0.01));
    let CommandBody::Execute { terms, .. } = to_slave(&cmds, "s2") else {
        panic!("an open for s2: {cmds:?}")
    };
    assert_eq!(terms.split_max_lots, 0.0, "s2 caps");
    let mut r = ExecutionResult {
        command_id: cmd_id("i1", "s1"),
        trade_id: TradeId::new("t1"),
        slave: AccountId::new("s1"),
        slave_ticket: 70,
        fill_price: 1.1,
        filled_volume: 0.8,
        status: BrokerStatus::Filled,
        reason: Some(ErrorCode::SplitIncomplete),
        legs: vec![
            echo_statemachine::msg::Leg {
                ticket: 70,
                volume: 0.4,
            },
            echo_statemachine::msg::Leg {
                ticket: 71,
                volume: 0.4,
            },
        ],
    };
    h.msg("B", AgentToCore::ExecutionResult(r.clone()));
    assert!(h.has_fired("core.delivery.T34"));
    h.journal_ok_all();
    assert_eq!(h.core.metrics().split_incomplete_total, 1);
    let cmds = h.accept(intent("i2", "t1", IntentKind::Close, 2));
    assert_eq!(
        to_slave(&cmds, "s1"),
        CommandBody::Close {
            slave_ticket: 70,
            volume: 0.0
        }
    );
    r.command_id = cmd_id("i2", "s1");
    r.status = BrokerStatus::Rejected;
    r.filled_volume = 0.4;
    r.legs.truncate(1);
    h.msg("B", AgentToCore::ExecutionResult(r));
    assert!(h.has_fired("core.delivery.T33"));
    assert!(h.writes().iter().any(|w| matches!(
        w,
        JournalWrite::FinishDelivery {
            reason: Some(ErrorCode::SplitIncomplete),
            ..
        }
    )));
    assert_eq!(h.core.metrics().split_incomplete_total, 2);
    assert_eq!(
        h.core.metrics().copy_skipped_total.values().sum::<u64>(),
        0,
        "not a copy-policy skip"
    );
    // A pending placement is one ticket: capped at the maximum, no split terms.
    let cmds = h.accept(intent("p1", "t2", IntentKind::PlaceLimit, 3));
    let CommandBody::PlacePending { volume, terms, .. } = to_slave(&cmds, "s1") else {
        panic!("a placement for s1: {cmds:?}")
    };
    assert_eq!((volume, terms.split_max_lots), (0.4, 0.0));
    h.fired
}
/// The slave EA's answer to an open its copy terms refused with `reason`.
fn terms_refusal(intent: &str, trade: &str, slave: &str, reason: ErrorCode) -> ExecutionResult {
    ExecutionResult {
        command_id: cmd_id(intent, slave),
        trade_id: TradeId::new(trade),
        slave: AccountId::new(slave),
        slave_ticket: 0,
        fill_price: 0.0,
        filled_volume: 0.0,
        status: BrokerStatus::Rejected,
        reason: Some(reason),
        legs: Vec::new(),
    }
}

fn catch_up_of(c: &Command) -> Option<bool> {
    match &c.body {
        CommandBody::Execute { catch_up, .. } => Some(*catch_up),
        _ => None,
    }
}

/// `core.delivery.T36`: an open that became head while its slave's agent was away goes out as
/// a catch-up when the agent comes back, and keeps the flag on every re-send (the agent and
/// the EA dedupe by command id: they must see one command). An open sent when it was ready,
/// or one sent once and parked afterwards, is no catch-up; a close carries no flag. The
/// slave EA's EXPIRED refusal of a catch-up ends the delivery as a copy-policy skip (T27).
fn catch_up_flag_marks_opens_that_waited_for_their_slave() -> Vec<&'static str> {
    let mut h = H::new();
    h.msg("A", hello("A", &[("m1", Role::Master)]));
    h.take();
    assert!(h.accept(intent("i1", "t1", IntentKind::Open, 1)).is_empty());
    h.msg("B", hello("B", &[("s1", Role::Slave), ("s2", Role::Slave)]));
    assert!(h.has_fired("core.delivery.T36"));
    assert!(
        !h.has_fired("core.delivery.T04"),
        "a catch-up is T36, not T04"
    );
    let cmds = h.commands();
    assert_eq!(cmds.len(), 2);
    assert!(
        cmds.iter().all(|c| catch_up_of(c) == Some(true)),
        "{cmds:?}"
    );
    // No AGENT_BUFFERED within ack_timeout_ms: the re-send carries the same flag.
    h.take();
    h.advance(150);
    h.advance(50);
    let again = h.commands();
    assert!(!again.is_empty());
    assert!(
        again.iter().all(|c| catch_up_of(c) == Some(true)),
        "{again:?}"
    );
    // s2 executed it; s1's EA found the price beyond the guard: EXPIRED, a policy skip.
    h.confirm(&cmd_id("i1", "s2"), "s2", 22);
    h.take();
    h.msg(
        "B",
        AgentToCore::ExecutionResult(terms_refusal("i1", "t1", "s1", ErrorCode::Expired)),
    );
    assert!(h.writes().iter().any(|w| matches!(
        w,
        JournalWrite::FinishDelivery {
            reason: Some(ErrorCode::Expired),
            status: DeliveryStatus::Failed,
            ..
        }
    )));
    assert_eq!(h.core.metrics().copy_skipped_total.get("EXPIRED"), Some(&1));
    h.journal_ok_all();
    // With the agent online an open goes at once: no catch-up.
    h.take();
    let live = h.accept(intent("i2", "t2", IntentKind::Open, 2));
    assert_eq!(live.len(), 2);
    assert!(
        live.iter().all(|c| catch_up_of(c) == Some(false)),
        "{live:?}"
    );
    // Sent once, then parked by an absence: the re-send keeps its first flag (false).
    h.take();
    h.disconnect("B");
    h.msg("B", hello("B", &[("s1", Role::Slave), ("s2", Role::Slave)]));
    let resent = h.commands();
    assert!(!resent.is_empty());
    assert!(
        resent.iter().all(|c| catch_up_of(c) == Some(false)),
        "{resent:?}"
    );
    h.fired
}

fn finished(h: &H) -> Vec<(CommandId, Option<ErrorCode>)> {
    h.writes()
        .iter()
        .filter_map(|w| match w {
            JournalWrite::FinishDelivery {
                command_id, reason, ..
            } => Some((command_id.clone(), *reason)),
            _ => None,
        })
        .collect()
}

/// `core.delivery.T27` + `T26`: an open the slave EA's copy terms refused (MAX_OPEN_POSITIONS
/// here) is remembered like one the core skipped, so the trade's modify at that slave ends with
/// the open's reason, never sent, while the other slave copies it. `T37`: after a restart the
/// journal's FAILED open of a trade still live brings the same memory back — a recovered close
/// ends with the open's reason, not NO_POSITION; a row failed for another reason (the broker's)
/// is no policy skip, and its trade's close still ends NO_POSITION.
fn a_terms_refused_open_is_remembered_across_a_restart() -> Vec<&'static str> {
    let mut h = H::world();
    let cmds = h.accept(intent("o", "t1", IntentKind::Open, 1));
    assert_eq!(cmds.len(), 2);
    h.take();
    h.msg(
        "B",
        AgentToCore::ExecutionResult(terms_refusal("o", "t1", "s1", ErrorCode::MaxOpenPositions)),
    );
    assert!(h.has_fired("core.delivery.T27"));
    h.journal_ok_all();
    h.confirm(&cmd_id("o", "s2"), "s2", 21);
    let sent = h.accept(intent("m", "t1", IntentKind::Modify, 2));
    let to: Vec<&str> = sent.iter().map(|c| c.slave.as_str()).collect();
    assert_eq!(to, vec!["s2"], "never sent to s1: {sent:?}");
    assert_eq!(
        finished(&h),
        vec![(cmd_id("m", "s1"), Some(ErrorCode::MaxOpenPositions))],
        "the modify at s1 carries its open's reason, not NO_POSITION"
    );
    assert!(h.has_fired("core.delivery.T26"));
    assert_eq!(
        h.core
            .metrics()
            .copy_skipped_total
            .get("MAX_OPEN_POSITIONS"),
        Some(&2)
    );
    let fired = h.fired.clone();

    let failed = |intent: &str, trade: &str, reason: ErrorCode| DeliveryRecord {
        status: DeliveryStatus::Failed,
        reason: Some(reason),
        ..record(intent, trade, "s1", IntentKind::Open, 1)
    };
    let durable = CoreDurableState {
        unfinished: vec![
            record("c2", "t2", "s1", IntentKind::Close, 2),
            record("c3", "t3", "s1", IntentKind::Close, 2),
        ],
        open_tickets: vec![],
        skipped_opens: vec![
            failed("o2", "t2", ErrorCode::PriceDeviation),
            failed("o3", "t3", ErrorCode::BrokerRejected),
        ],
    };
    let mut h = H::recover(cfg(), durable);
    assert!(h.has_fired("core.delivery.T37"));
    h.msg("A", hello("A", &[("m1", Role::Master)]));
    h.msg("B", hello("B", &[("s1", Role::Slave), ("s2", Role::Slave)]));
    assert!(h.commands().is_empty(), "nothing reaches s1");
    let mut done = finished(&h);
    done.sort();
    assert_eq!(
        done,
        vec![
            (cmd_id("c2", "s1"), Some(ErrorCode::PriceDeviation)),
            (cmd_id("c3", "s1"), Some(ErrorCode::NoPosition)),
        ]
    );
    let mut all = fired;
    all.extend(h.fired);
    all
}

/// `agent_window`: at most that many commands per agent await AGENT_BUFFERED; the rest wait at
/// the core (T38) without an attempt or an ack timer, and go in delivery order as places free
/// up (T39) — so a slow agent is never mistaken for a lost one and flooded with re-sends.
fn agent_window_bounds_unbuffered_commands() -> Vec<&'static str> {
    let mut h = windowed(2);
    // Two trades × two slaves = four commands for agent B; two go, two wait.
    let first = h.accept(intent("i1", "t1", IntentKind::Open, 1));
    let second = h.accept(intent("i2", "t2", IntentKind::Open, 1));
    assert_eq!(first.len(), 2, "{first:?}");
    assert!(second.is_empty(), "the window is full: {second:?}");
    assert!(h.has_fired("core.delivery.T38"));
    let queued = h
        .core
        .delivery_views()
        .iter()
        .filter(|v| v.state == "Queued")
        .count();
    assert_eq!(queued, 2, "what echo_core_deliveries_queued counts");
    // The waiting ones spend nothing: past the ack timeout only the two sent time out (and
    // back off, which frees their places: the two waiting ones go, on their first attempt).
    h.take();
    h.advance(150);
    let writes = h.writes();
    let retried: Vec<&CommandId> = writes
        .iter()
        .filter_map(|w| match w {
            JournalWrite::RecordRetry { command_id, .. } => Some(command_id),
            _ => None,
        })
        .collect();
    assert_eq!(retried.len(), 2, "{writes:?}");
    assert!(retried
        .iter()
        .all(|id| first.iter().any(|c| &c.command_id == *id)));
    assert!(h.has_fired("core.delivery.T39"));
    let sent: Vec<CommandId> = h.commands().into_iter().map(|c| c.command_id).collect();
    assert_eq!(sent, vec![cmd_id("i2", "s1"), cmd_id("i2", "s2")]);
    // Their backoff over, the first two find the window full again and wait their turn.
    h.take();
    h.advance(20);
    assert!(h.commands().is_empty(), "{:?}", h.commands());
    // In a fresh run: AGENT_BUFFERED frees a place, and the oldest waiting command goes.
    let mut h2 = windowed(1);
    let go = h2.accept(intent("i1", "t1", IntentKind::Open, 1));
    assert_eq!(go.len(), 1, "{go:?}");
    let waiting = cmd_id(
        "i1",
        if go[0].slave.as_str() == "s1" {
            "s2"
        } else {
            "s1"
        },
    );
    h2.take();
    let slave = go[0].slave.as_str().to_string();
    h2.msg(
        "B",
        stage_ack(&go[0].command_id, &slave, AckStage::AgentBuffered),
    );
    let next = h2.commands();
    assert_eq!(next.len(), 1, "{next:?}");
    assert_eq!(next[0].command_id, waiting);
    // A command past AGENT_BUFFERED needs no place: its reconcile re-send goes regardless.
    h2.take();
    h2.advance(600);
    let resent: Vec<CommandId> = h2.commands().into_iter().map(|c| c.command_id).collect();
    assert!(resent.contains(&go[0].command_id), "{resent:?}");
    // An agent that goes away parks its waiting commands too; back, they go within the window.
    let mut h3 = windowed(1);
    assert_eq!(h3.accept(intent("i1", "t1", IntentKind::Open, 1)).len(), 1);
    h3.disconnect("B");
    h3.take();
    h3.msg("B", hello("B", &[("s1", Role::Slave), ("s2", Role::Slave)]));
    let back = h3.commands();
    assert_eq!(back.len(), 1, "one place, one command: {back:?}");
    // The open that waited in the queue was never sent: it waited for its slave, so when its
    // place comes it goes as a catch-up (T36's rule), unlike the one sent before the outage.
    assert_eq!(catch_up_of(&back[0]), Some(false));
    let slave = back[0].slave.as_str().to_string();
    h3.take();
    h3.msg(
        "B",
        stage_ack(&back[0].command_id, &slave, AckStage::AgentBuffered),
    );
    let next = h3.commands();
    assert_eq!(next.len(), 1, "{next:?}");
    assert_eq!(catch_up_of(&next[0]), Some(true), "{next:?}");
    // A re-hello that leaves a slave out strands nothing: its queued head is parked and goes
    // to the next agent that serves the slave.
    let mut h4 = windowed(1);
    let go = h4.accept(intent("i1", "t1", IntentKind::Open, 1));
    assert_eq!(go.len(), 1, "{go:?}");
    let (kept, dropped) = if go[0].slave.as_str() == "s1" {
        ("s1", "s2")
    } else {
        ("s2", "s1")
    };
    h4.msg("B", hello("B", &[(kept, Role::Slave)]));
    h4.take();
    h4.msg(
        "B",
        stage_ack(&go[0].command_id, kept, AckStage::AgentBuffered),
    );
    h4.msg("C", hello("C", &[(dropped, Role::Slave)]));
    let to_c: Vec<_> = h4
        .sent()
        .into_iter()
        .filter(|(a, m)| a.as_str() == "C" && matches!(m, CoreToAgent::Command(_)))
        .collect();
    assert_eq!(
        to_c.len(),
        1,
        "the stranded head reaches C: {:?}",
        h4.sent()
    );
    // Widening the window live sends what waits at once, without waiting for a place.
    let mut h5 = windowed(1);
    let c = cfg();
    assert_eq!(h5.accept(intent("i1", "t1", IntentKind::Open, 1)).len(), 1);
    h5.take();
    let wider = DeliveryConfig {
        agent_window: 8,
        ..c.delivery
    };
    h5.core
        .handle_delivery_config(h5.now, wider, c.agent_delivery);
    h5.drain();
    assert_eq!(
        h5.commands().len(),
        1,
        "the queued one went: {:?}",
        h5.sent()
    );
    let mut fired = h.fired;
    fired.extend(h2.fired);
    fired.extend(h3.fired);
    fired.extend(h4.fired);
    fired.extend(h5.fired);
    fired
}

/// `core.intake.T15`: once an agent has `AGENT_BACKLOG_FACTOR × agent_window` deliveries
/// waiting for its window, new intents of its slaves' masters are answered BROKER_BUSY and
/// nothing is journaled — overload is pushed back to the master, the core's queue stays
/// bounded; when the backlog drains, intents are taken again.
fn a_full_agent_backlog_answers_the_master_broker_busy() -> Vec<&'static str> {
    use echo_statemachine::core::intake::AGENT_BACKLOG_FACTOR;
    let mut h = windowed(1);
    // Each intent plans one delivery per slave (two for agent B); one place in the window.
    let mut n = 0;
    let mut sent = Vec::new();
    loop {
        n += 1;
        h.take();
        h.msg(
            "A",
            AgentToCore::Intent(intent(
                &format!("i{n}"),
                &format!("t{n}"),
                IntentKind::Open,
                1,
            )),
        );
        let busy = h
            .intent_acks()
            .iter()
            .any(|a| a.error == Some(ErrorCode::BrokerBusy));
        if busy {
            break;
        }
        h.journal_ok_all();
        sent.extend(h.commands());
        assert!(n < 4 * AGENT_BACKLOG_FACTOR, "the backlog is bounded");
    }
    let queued = 2 * (n - 1) - sent.len();
    assert!(
        queued >= AGENT_BACKLOG_FACTOR,
        "refused only once full: {queued}"
    );
    assert!(h.has_fired("core.intake.T15"));
    assert!(
        !h.writes()
            .iter()
            .any(|w| matches!(w, JournalWrite::AcceptIntent { .. })),
        "nothing journaled for the refused intent"
    );
    assert_eq!(h.core.metrics().backlog_rejections_total, 1);
    // The backlog drains: every command buffered and confirmed, one place at a time.
    let mut done = 0;
    while let Some(c) = sent.pop() {
        let slave = c.slave.as_str().to_string();
        h.take();
        h.confirm(&c.command_id, &slave, 100 + done);
        done += 1;
        sent.extend(h.commands());
        assert!(done < 100);
    }
    h.take();
    h.msg(
        "A",
        AgentToCore::Intent(intent("late", "tl", IntentKind::Open, 1)),
    );
    assert!(
        h.intent_acks().iter().all(|a| a.error.is_none()),
        "taken again once the backlog drained: {:?}",
        h.intent_acks()
    );
    h.fired
}

/// A core whose agents' send window is `window`, with master m1 on agent A and slaves s1, s2
/// on agent B, both online.
fn windowed(window: u32) -> H {
    let mut c = cfg();
    c.delivery.agent_window = window;
    let mut h = H::with(c);
    h.msg("A", hello("A", &[("m1", Role::Master)]));
    h.msg("B", hello("B", &[("s1", Role::Slave), ("s2", Role::Slave)]));
    h.take();
    h
}

/// `core.delivery.T40`: an agent whose table of active commands is full answers a command
/// `CommandAck{AGENT_BUFFERED, FAILED, BROKER_BUSY}` (agent.delivery.T17) — it never took it.
/// That is flow control, not a failure: the attempt is given back and the delivery waits
/// Queued, however often the agent refuses, so a busy agent never ends a copy MAX_RETRIES.
/// Nothing else goes to the agent until it shows life (its heartbeat, an ExecutionResult);
/// then one command goes as a probe (T39), and once the probe is buffered, all of them.
fn a_full_agent_spends_no_attempt() -> Vec<&'static str> {
    let mut c = cfg();
    c.delivery.agent_window = 8;
    c.delivery.max_retries = 2;
    let mut h = H::with(c);
    h.msg("A", hello("A", &[("m1", Role::Master)]));
    h.msg("B", hello("B", &[("s1", Role::Slave), ("s2", Role::Slave)]));
    h.take();
    let first = h.accept(intent("i1", "t1", IntentKind::Open, 1));
    let second = h.accept(intent("i2", "t2", IntentKind::Open, 1));
    assert_eq!((first.len(), second.len()), (2, 2));
    let busy = |cmd: &CommandId, slave: &str| {
        AgentToCore::CommandAck(CommandAck {
            command_id: cmd.clone(),
            trade_id: TradeId::new(""),
            slave: AccountId::new(slave),
            stage: AckStage::AgentBuffered,
            result: AckResult::Failed,
            error: Some(ErrorCode::BrokerBusy),
            attempt: 1,
        })
    };
    let view = |h: &H, id: &CommandId| {
        h.core
            .delivery_views()
            .into_iter()
            .find(|v| &v.command_id == id)
            .expect("the delivery is live")
    };
    let refused = first[0].command_id.clone();
    let rs = first[0].slave.as_str().to_string();
    h.take();
    h.msg("B", busy(&refused, &rs));
    assert!(h.has_fired("core.delivery.T40"));
    let v = view(&h, &refused);
    assert_eq!((v.state, v.attempts), ("Queued", 0), "{v:?}");
    assert!(
        !h.writes()
            .iter()
            .any(|w| matches!(w, JournalWrite::RecordRetry { .. })),
        "a busy agent is no failed attempt: {:?}",
        h.writes()
    );
    // Full, the agent gets nothing new: a new trade's commands wait in its queue.
    let third = h.accept(intent("i3", "t3", IntentKind::Open, 1));
    assert!(third.is_empty(), "{third:?}");
    // Its heartbeat shows life: exactly one command goes, the oldest waiting.
    for round in 0..5 {
        h.take();
        h.msg("B", AgentToCore::Heartbeat);
        let probe: Vec<CommandId> = h.commands().into_iter().map(|c| c.command_id).collect();
        assert_eq!(probe, vec![refused.clone()], "round {round}");
        // While the probe is out, life sends nothing more.
        h.take();
        h.msg("B", AgentToCore::Heartbeat);
        assert!(h.commands().is_empty(), "round {round}: {:?}", h.sent());
        // Refused again, more often than max_retries: still no attempt spent, nothing failed.
        h.msg("B", busy(&refused, &rs));
        let v = view(&h, &refused);
        assert_eq!((v.state, v.attempts), ("Queued", 0), "round {round}");
    }
    assert!(
        !h.writes().iter().any(|w| matches!(
            w,
            JournalWrite::RecordRetry { .. } | JournalWrite::FinishDelivery { .. }
        )),
        "{:?}",
        h.writes()
    );
    // An ExecutionResult of one of its commands is life too: the probe goes, and its
    // AGENT_BUFFERED shows room — every waiting command goes, in delivery order.
    h.take();
    let done = &second[0];
    h.msg(
        "B",
        result(
            &done.command_id,
            done.slave.as_str(),
            77,
            BrokerStatus::Filled,
        ),
    );
    let probe: Vec<CommandId> = h.commands().into_iter().map(|c| c.command_id).collect();
    assert_eq!(probe, vec![refused.clone()]);
    h.take();
    h.msg("B", stage_ack(&refused, &rs, AckStage::AgentBuffered));
    let rest: Vec<CommandId> = h.commands().into_iter().map(|c| c.command_id).collect();
    assert_eq!(rest, vec![cmd_id("i3", "s1"), cmd_id("i3", "s2")]);
    let v = view(&h, &refused);
    assert_eq!((v.state, v.attempts), ("Inflight", 1), "{v:?}");
    // Offline forgets that it was full: back, it takes its whole window at once.
    h.take();
    h.msg("B", busy(&rest[0], "s1"));
    h.disconnect("B");
    h.take();
    h.msg("B", hello("B", &[("s1", Role::Slave), ("s2", Role::Slave)]));
    let back: Vec<CommandId> = h.commands().into_iter().map(|c| c.command_id).collect();
    assert!(back.contains(&rest[0]), "{back:?}");
    assert!(back.len() > 1, "{back:?}");
    h.fired
}

/// `core.delivery.T24`: deliveries that gave up together (one outage) re-send their cancels
/// spread over the upper half of each wait, by command id — not in one burst every time, which
/// a slave EA with `max_pending` unfinished commands answers RETRY for all but the first few,
/// the same ones each round (echo-sim seed 4100 with --trades 60).
fn cancels_that_start_together_are_spread() -> Vec<&'static str> {
    let mut h = H::world();
    for t in 0..8 {
        let id = format!("i{t}");
        h.accept(intent(&id, &format!("t{t}"), IntentKind::Open, 1));
    }
    h.take();
    // Three ack timeouts with their backoffs (max_retries = 3): all give up in one instant.
    for ms in [100, 10, 100, 20, 100] {
        h.advance(ms);
    }
    let cancelling = h
        .core
        .delivery_views()
        .iter()
        .filter(|v| v.state == "Cancelling")
        .count();
    assert_eq!(cancelling, 16, "8 trades x 2 slaves gave up together");
    h.take();
    // First re-send: w = ack_timeout 100 ms, so each goes within [50, 100] ms.
    let mut at: BTreeMap<CommandId, u64> = BTreeMap::new();
    for ms in 1..=100 {
        h.advance(1);
        for (_, m) in h.sent() {
            if let CoreToAgent::Cancel(c) = m {
                at.entry(c.command_id).or_insert(ms);
            }
        }
    }
    assert_eq!(at.len(), 16, "every cancel re-sent within w: {at:?}");
    assert!(at.values().all(|ms| (50..=100).contains(ms)), "{at:?}");
    let instants: BTreeSet<u64> = at.values().copied().collect();
    assert!(
        instants.len() >= 8,
        "16 cancels spread over at least 8 instants, not one burst: {at:?}"
    );
    h.fired
}
