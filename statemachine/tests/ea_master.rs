//! Tests of `ea::master::IntentQueue`: one scenario per transition id (each scenario is a plain
//! fn that returns the ids it saw fire, so the coverage test can run them all), then a
//! proptest state-machine run against a model of the EA's file and of the core.

use std::collections::{BTreeMap, BTreeSet};

use echo_statemachine::config::AgentDeliveryConfig;
use echo_statemachine::ea::master::{
    EmitError, IntentQueue, IntentQueueConfig, OpId, Output, PersistError, RemoveReason, MAX_TRIES,
    SPEC, T,
};
use echo_statemachine::ids::stable_hash;
use echo_statemachine::ids::{AccountId, IntentId, Symbol, TradeId};
use echo_statemachine::msg::{
    AckResult, EaToAgent, ErrorCode, IntentKind, Side, TradeIntent, TradeIntentAck,
};
use echo_statemachine::spec::Subject;
use echo_statemachine::time::{backoff, Duration, Instant};
use proptest::prelude::*;

// ---------------------------------------------------------------- helpers

fn intent(id: &str, trade: &str) -> TradeIntent {
    TradeIntent {
        origin: Default::default(),
        intent_id: IntentId::new(id),
        trade_id: TradeId::new(trade),
        master: AccountId::new("m1"),
        kind: IntentKind::Open,
        symbol: Symbol::new("EURUSD"),
        side: Side::Buy,
        volume: 1.0,
        price: 1.1,
        stop_loss: 0.0,
        take_profit: 0.0,
        master_ticket: 7,
        master_seq: 0,
        emitted_at_ms: 0,
        master_volume_before: 0.0,
    }
}

/// The retry delay the queue must choose: w/2 plus a spread in [0, w/2] derived from the intent
/// id and attempt (recomputed here independently of the machine).
fn spread(id: &str, attempts: u32, w: Duration) -> Duration {
    let key = format!("{id}#{attempts}");
    Duration(w.0 / 2 + stable_hash(key.as_bytes()) % (w.0 / 2 + 1))
}

fn ack(
    id: &str,
    result: AckResult,
    error: Option<ErrorCode>,
    retry_after_ms: u32,
) -> TradeIntentAck {
    TradeIntentAck {
        intent_id: IntentId::new(id),
        trade_id: TradeId::new("x"),
        result,
        error,
        retry_after_ms,
    }
}

fn ok_ack(id: &str) -> TradeIntentAck {
    ack(id, AckResult::Ok, None, 0)
}

const FAIL: Result<(), PersistError> = Err(PersistError { retryable: true });

struct H {
    q: IntentQueue,
    now: Instant,
    fired: Vec<&'static str>,
}

impl H {
    fn new(capacity: usize) -> H {
        H::wrap(IntentQueue::new(IntentQueueConfig {
            delivery: AgentDeliveryConfig::default(),
            capacity,
        }))
    }
    fn wrap(q: IntentQueue) -> H {
        let mut h = H {
            q,
            now: Instant::ZERO,
            fired: Vec::new(),
        };
        h.drain();
        h
    }
    fn at(&mut self, ms: u64) -> &mut Self {
        self.now = Instant::from_millis(ms);
        self
    }
    fn drain(&mut self) -> Vec<Output> {
        let mut v = Vec::new();
        while let Some(o) = self.q.poll() {
            if let Output::Fired(f) = &o {
                self.fired.push(f.id());
            }
            v.push(o);
        }
        v
    }
    fn emit(&mut self, i: TradeIntent) -> (Result<(), EmitError>, Vec<Output>) {
        let r = self.q.handle_emit(self.now, i);
        (r, self.drain())
    }
    fn persist(&mut self, op: OpId, r: Result<(), PersistError>) -> Vec<Output> {
        self.q.handle_persist_result(self.now, op, r);
        self.drain()
    }
    fn ack(&mut self, a: TradeIntentAck) -> Vec<Output> {
        self.q.handle_ack(self.now, a);
        self.drain()
    }
    /// Processes the timeout at an exact instant (retry timers are not whole milliseconds).
    fn timeout_at(&mut self, at: Instant) -> Vec<Output> {
        self.now = at;
        self.q.handle_timeout(at);
        self.drain()
    }
    fn timeout(&mut self, ms: u64) -> Vec<Output> {
        self.at(ms);
        self.q.handle_timeout(self.now);
        self.drain()
    }
    fn connect(&mut self) -> Vec<Output> {
        self.q.handle_pipe_connected(self.now);
        self.drain()
    }
    fn close(&mut self) -> Vec<Output> {
        self.q.handle_pipe_closed(self.now);
        self.drain()
    }
    /// Emits and makes the append durable; returns the outputs of the durable report.
    fn durable(&mut self, id: &str, trade: &str) -> Vec<Output> {
        let (r, outs) = self.emit(intent(id, trade));
        assert_eq!(r, Ok(()));
        let (op, _) = appends(&outs)[0].clone();
        self.persist(op, Ok(()))
    }
}

fn fired(outs: &[Output]) -> Vec<&'static str> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Fired(f) => Some(f.id()),
            _ => None,
        })
        .collect()
}

fn appends(outs: &[Output]) -> Vec<(OpId, String)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::PersistAppend { op, intent } => Some((*op, intent.intent_id.to_string())),
            _ => None,
        })
        .collect()
}

fn removes(outs: &[Output]) -> Vec<(OpId, String, RemoveReason)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::PersistRemove {
                op,
                intent_id,
                reason,
            } => Some((*op, intent_id.to_string(), *reason)),
            _ => None,
        })
        .collect()
}

fn sent(outs: &[Output]) -> Vec<String> {
    outs.iter()
        .filter_map(|o| match o {
            Output::ToAgent(EaToAgent::Intent(i)) => Some(i.intent_id.to_string()),
            _ => None,
        })
        .collect()
}

fn id(t: T) -> &'static str {
    t.id()
}

// ---------------------------------------------------------------- scenarios, one per id

fn s01_emit_appends_before_anything_else() -> Vec<&'static str> {
    let mut h = H::new(8);
    h.connect();
    let (r, outs) = h.emit(intent("a", "t1"));
    assert_eq!(r, Ok(()));
    assert_eq!(fired(&outs), vec![id(T::EmitAppend)]);
    assert!(matches!(outs[0], Output::Fired(_)), "Fired comes first");
    assert_eq!(appends(&outs).len(), 1);
    assert!(
        sent(&outs).is_empty(),
        "never sent before the append is durable"
    );
    assert_eq!(h.q.metrics().depth, 1);
    assert_eq!(h.q.metrics().emitted, 1);
    h.fired
}

fn s02_emit_behind_waits_for_older_append() -> Vec<&'static str> {
    let mut h = H::new(8);
    let (_, a) = h.emit(intent("a", "t1"));
    let (r, b) = h.emit(intent("b", "T1")); // same trade, other spelling
    assert_eq!(r, Ok(()));
    assert_eq!(fired(&b), vec![id(T::EmitBehind)]);
    assert!(appends(&b).is_empty(), "b waits for a's append");
    let (_, c) = h.emit(intent("c", "t2"));
    assert_eq!(appends(&c).len(), 1, "another trade appends at once");
    let outs = h.persist(appends(&a)[0].0, Ok(()));
    assert_eq!(
        fired(&outs),
        vec![id(T::AppendDurable), id(T::AppendIssued)]
    );
    assert_eq!(appends(&outs)[0].1, "b");
    h.fired
}

fn s03_full_or_duplicate_is_refused_explicitly() -> Vec<&'static str> {
    let mut h = H::new(2);
    assert_eq!(h.emit(intent("a", "t1")).0, Ok(()));
    let (r, outs) = h.emit(intent("a", "t9"));
    assert_eq!(r, Err(EmitError::Duplicate));
    assert_eq!(fired(&outs), vec![id(T::EmitRefused)]);
    assert_eq!(h.emit(intent("b", "t2")).0, Ok(()));
    let (r, outs) = h.emit(intent("c", "t3"));
    assert_eq!(r, Err(EmitError::QueueFull { capacity: 2 }));
    assert_eq!(fired(&outs), vec![id(T::EmitRefused)]);
    assert!(appends(&outs).is_empty());
    assert!(h.q.is_full());
    let m = h.q.metrics();
    assert_eq!((m.depth, m.rejected_full, m.rejected_duplicate), (2, 1, 1));
    h.fired
}

fn s04_append_durable_then_sent() -> Vec<&'static str> {
    let mut h = H::new(8);
    let outs = h.durable("a", "t1");
    assert_eq!(fired(&outs), vec![id(T::AppendDurable)]);
    assert!(sent(&outs).is_empty(), "pipe is down: stays queued");
    let outs = h.connect();
    assert_eq!(sent(&outs), vec!["a"]);
    h.fired
}

fn s05_append_failure_keeps_the_intent_and_retries() -> Vec<&'static str> {
    let mut h = H::new(8);
    h.connect();
    let (_, outs) = h.emit(intent("a", "t1"));
    let op1 = appends(&outs)[0].0;
    let outs = h.persist(op1, FAIL);
    assert_eq!(fired(&outs), vec![id(T::AppendFailed)]);
    assert_eq!(h.q.poll_timeout(), Some(Instant::from_millis(100)));
    assert!(h.timeout(99).is_empty());
    let outs = h.timeout(100);
    assert_eq!(fired(&outs), vec![id(T::AppendIssued)]);
    let op2 = appends(&outs)[0].0;
    assert_ne!(op1, op2);
    // A non-retryable failure is retried too, with a growing backoff: the event is kept.
    h.persist(op2, Err(PersistError { retryable: false }));
    assert_eq!(h.q.poll_timeout(), Some(Instant::from_millis(300)));
    assert_eq!(h.q.metrics().append_failures, 2);
    assert_eq!(h.q.metrics().depth, 1);
    let outs = h.timeout(300);
    let op3 = appends(&outs)[0].0;
    let outs = h.persist(op3, Ok(()));
    assert_eq!(sent(&outs), vec!["a"]);
    h.fired
}

fn s06_append_issued_after_retry_timer() -> Vec<&'static str> {
    let mut h = H::new(8);
    let (_, outs) = h.emit(intent("a", "t1"));
    h.persist(appends(&outs)[0].0, FAIL);
    let outs = h.timeout(100);
    assert_eq!(fired(&outs), vec![id(T::AppendIssued)]);
    assert_eq!(appends(&outs)[0].1, "a");
    h.fired
}

fn s07_send_pipelines_trades_but_not_within_a_trade() -> Vec<&'static str> {
    let mut h = H::new(8);
    h.connect();
    h.at(10);
    let a = h.durable("a", "t1");
    assert_eq!(fired(&a), vec![id(T::AppendDurable), id(T::Send)]);
    assert_eq!(sent(&a), vec!["a"]);
    assert_eq!(h.q.poll_timeout(), Some(Instant::from_millis(1_010)));
    let a2 = h.durable("a2", "t1");
    assert!(sent(&a2).is_empty(), "a is in flight: a2 waits");
    let b = h.durable("b", "t2");
    assert_eq!(sent(&b), vec!["b"], "another trade is not blocked");
    let m = h.q.metrics();
    assert_eq!((m.in_flight, m.depth, m.sends), (2, 3, 2));
    h.fired
}

fn s08_ack_ok_removes_and_sends_next_of_trade() -> Vec<&'static str> {
    let mut h = H::new(8);
    h.connect();
    h.durable("a", "t1");
    h.durable("a2", "t1");
    let outs = h.ack(ok_ack("a"));
    assert_eq!(fired(&outs), vec![id(T::AckOk), id(T::Send)]);
    assert!(matches!(outs[0], Output::Fired(_)));
    assert_eq!(removes(&outs)[0].1, "a");
    assert_eq!(removes(&outs)[0].2, RemoveReason::Acked);
    assert_eq!(sent(&outs), vec!["a2"]);
    let pos_remove = outs
        .iter()
        .position(|o| matches!(o, Output::PersistRemove { .. }));
    let pos_send = outs.iter().position(|o| matches!(o, Output::ToAgent(_)));
    assert!(pos_remove < pos_send);
    assert_eq!(h.q.metrics().acked, 1);
    h.fired
}

fn s09_retryable_failure_waits_max_of_hint_and_backoff() -> Vec<&'static str> {
    let mut h = H::new(8);
    h.connect();
    h.durable("a", "t1");
    h.at(5);
    let outs = h.ack(ack(
        "a",
        AckResult::Failed,
        Some(ErrorCode::BrokerBusy),
        2_500,
    ));
    assert_eq!(fired(&outs), vec![id(T::AckRetryable)]);
    // The hint (2.5 s) beats backoff(100, 1); the delay is spread over [1.25 s, 2.5 s].
    let due = Instant::from_millis(5) + spread("a", 1, Duration::from_millis(2_500));
    assert_eq!(h.q.poll_timeout(), Some(due));
    assert!(due >= Instant::from_millis(5 + 1_250) && due <= Instant::from_millis(2_505));
    assert!(sent(&h.timeout_at(Instant(due.0 - 1))).is_empty());
    assert_eq!(sent(&h.timeout_at(due)), vec!["a"]);
    // A hint shorter than the backoff loses: second attempt → backoff(100, 2) = 200 ms.
    h.at(3_000);
    h.ack(ack(
        "a",
        AckResult::Failed,
        Some(ErrorCode::JournalUnavailable),
        1,
    ));
    let due = Instant::from_millis(3_000) + spread("a", 2, Duration::from_millis(200));
    assert_eq!(h.q.poll_timeout(), Some(due));
    assert_eq!(h.q.metrics().retries, 2);
    h.fired
}

fn s10_ack_timeout_retries_with_backoff() -> Vec<&'static str> {
    let mut h = H::new(8);
    h.connect();
    h.durable("a", "t1");
    assert!(h.timeout(999).is_empty());
    let outs = h.timeout(1_000);
    assert_eq!(fired(&outs), vec![id(T::AckTimeout)]);
    // backoff(100, 1) = 100 ms, spread over [50 ms, 100 ms].
    let due = Instant::from_millis(1_000) + spread("a", 1, Duration::from_millis(100));
    assert!(due >= Instant::from_millis(1_050) && due <= Instant::from_millis(1_100));
    assert_eq!(h.q.poll_timeout(), Some(due));
    h.fired
}

fn s11_resend_uses_the_same_intent_id() -> Vec<&'static str> {
    let mut h = H::new(8);
    h.connect();
    h.durable("a", "t1");
    h.timeout(1_000);
    let due = Instant::from_millis(1_000) + spread("a", 1, Duration::from_millis(100));
    let outs = h.timeout_at(due);
    assert_eq!(fired(&outs), vec![id(T::Resend)]);
    assert_eq!(sent(&outs), vec!["a"]);
    // The ack timer of the new send: ack_timeout_ms (1 s) after it.
    assert_eq!(h.q.poll_timeout(), Some(due + Duration::from_millis(1_000)));
    assert_eq!(h.q.metrics().sends, 2);
    h.fired
}

fn s12_gives_up_loudly_after_exactly_100_tries() -> Vec<&'static str> {
    let mut h = H::new(8);
    h.connect();
    h.durable("a", "t1");
    h.durable("a2", "t1");
    let mut sends = 1;
    loop {
        // Alternate the two ways a try fails.
        let outs = if sends % 2 == 0 {
            h.ack(ack(
                "a",
                AckResult::Failed,
                Some(ErrorCode::PipeUnavailable),
                0,
            ))
        } else {
            let at = h.q.poll_timeout().expect("ack timer");
            h.timeout_at(at)
        };
        if sends < MAX_TRIES {
            assert!(
                outs.iter().all(|o| !matches!(o, Output::GaveUp { .. })),
                "gave up after only {sends} tries"
            );
            let at = h.q.poll_timeout().expect("retry timer");
            assert_eq!(sent(&h.timeout_at(at)), vec!["a"]);
            sends += 1;
        } else {
            assert_eq!(fired(&outs), vec![id(T::GaveUp), id(T::Send)]);
            assert!(outs.contains(&Output::GaveUp {
                intent_id: IntentId::new("a"),
                trade_id: TradeId::new("t1"),
                attempts: 100,
            }));
            assert_eq!(removes(&outs)[0].2, RemoveReason::GaveUp { attempts: 100 });
            assert_eq!(sent(&outs), vec!["a2"], "the trade moves on");
            break;
        }
    }
    assert_eq!(h.q.metrics().gave_up, 1);
    assert_eq!(h.q.metrics().sends, 101);
    h.fired
}

fn s13_non_retryable_failure_is_explicit() -> Vec<&'static str> {
    let mut h = H::new(8);
    h.connect();
    h.durable("a", "t1");
    h.durable("b", "t2");
    let outs = h.ack(ack(
        "a",
        AckResult::Failed,
        Some(ErrorCode::InvalidArgument),
        0,
    ));
    assert_eq!(fired(&outs), vec![id(T::Rejected)]);
    assert!(matches!(outs[0], Output::Fired(_)));
    assert!(outs.contains(&Output::Failed {
        intent_id: IntentId::new("a"),
        trade_id: TradeId::new("t1"),
        error: ErrorCode::InvalidArgument,
    }));
    assert_eq!(
        removes(&outs)[0].2,
        RemoveReason::Rejected {
            error: ErrorCode::InvalidArgument
        }
    );
    // A failure without a code is treated as INTERNAL, which is not retryable.
    let outs = h.ack(ack("b", AckResult::Failed, None, 0));
    assert_eq!(
        removes(&outs)[0].2,
        RemoveReason::Rejected {
            error: ErrorCode::Internal
        }
    );
    assert_eq!(h.q.metrics().failed, 2);
    h.fired
}

fn s14_unknown_unsent_stale_and_pending_acks_are_ignored() -> Vec<&'static str> {
    let mut h = H::new(8);
    let outs = h.ack(ok_ack("nope"));
    assert_eq!(fired(&outs), vec![id(T::AckIgnored)]);
    h.durable("a", "t1");
    let outs = h.ack(ok_ack("a"));
    assert_eq!(
        fired(&outs),
        vec![id(T::AckIgnored)],
        "never sent: not acceptable"
    );
    assert!(removes(&outs).is_empty());
    h.connect();
    h.ack(ack("a", AckResult::Pending, None, 0));
    h.ack(ack("a", AckResult::Failed, Some(ErrorCode::BrokerBusy), 0));
    let outs = h.ack(ack("a", AckResult::Failed, Some(ErrorCode::BrokerBusy), 0));
    assert_eq!(
        fired(&outs),
        vec![id(T::AckIgnored)],
        "already waiting to retry"
    );
    // A late Ok while waiting to retry is taken: the core did accept it.
    let outs = h.ack(ok_ack("a"));
    assert_eq!(fired(&outs), vec![id(T::AckOk)]);
    assert_eq!(h.q.poll_timeout(), None, "retry timer cancelled");
    let outs = h.ack(ok_ack("a"));
    assert_eq!(fired(&outs), vec![id(T::AckIgnored)]);
    assert!(removes(&outs).is_empty());
    assert_eq!(h.q.metrics().ignored_acks, 5);
    h.fired
}

fn s15_remove_durable_frees_the_slot() -> Vec<&'static str> {
    let mut h = H::new(1);
    h.connect();
    h.durable("a", "t1");
    let outs = h.ack(ok_ack("a"));
    assert_eq!(h.q.metrics().removing, 1);
    assert!(h.q.is_full(), "a removal in progress still holds its slot");
    let outs = h.persist(removes(&outs)[0].0, Ok(()));
    assert_eq!(fired(&outs), vec![id(T::RemoveDurable)]);
    let m = h.q.metrics();
    assert_eq!((m.depth, m.removing), (0, 0));
    assert_eq!(h.emit(intent("a", "t1")).0, Ok(()), "the id is free again");
    h.fired
}

fn s16_remove_failure_retries() -> Vec<&'static str> {
    let mut h = H::new(8);
    h.connect();
    h.durable("a", "t1");
    let outs = h.ack(ok_ack("a"));
    let outs = h.persist(removes(&outs)[0].0, FAIL);
    assert_eq!(fired(&outs), vec![id(T::RemoveFailed)]);
    assert_eq!(h.q.metrics().remove_failures, 1);
    assert_eq!(h.q.poll_timeout(), Some(Instant::from_millis(100)));
    h.fired
}

fn s17_remove_retry_reissues_with_same_reason() -> Vec<&'static str> {
    let mut h = H::new(8);
    h.connect();
    h.durable("a", "t1");
    let outs = h.ack(ack(
        "a",
        AckResult::Failed,
        Some(ErrorCode::UnknownAccount),
        0,
    ));
    let op1 = removes(&outs)[0].0;
    h.persist(op1, FAIL);
    let outs = h.timeout(100);
    assert_eq!(fired(&outs), vec![id(T::RemoveRetry)]);
    let (op2, iid, reason) = removes(&outs)[0].clone();
    assert_ne!(op1, op2);
    assert_eq!(iid, "a");
    assert_eq!(
        reason,
        RemoveReason::Rejected {
            error: ErrorCode::UnknownAccount
        }
    );
    h.persist(op2, Ok(()));
    assert_eq!(h.q.metrics().removing, 0);
    h.fired
}

fn s18_unknown_or_late_persist_results_are_ignored() -> Vec<&'static str> {
    let mut h = H::new(8);
    let outs = h.persist(4_242, Ok(()));
    assert_eq!(fired(&outs), vec![id(T::PersistIgnored)]);
    let (_, outs) = h.emit(intent("a", "t1"));
    let op = appends(&outs)[0].0;
    h.persist(op, Ok(()));
    let outs = h.persist(op, Ok(()));
    assert_eq!(fired(&outs), vec![id(T::PersistIgnored)]);
    assert_eq!(h.q.metrics().ignored_persist_results, 2);
    h.fired
}

fn s19_pipe_connect_sends_due_intents_in_emission_order() -> Vec<&'static str> {
    let mut h = H::new(8);
    h.durable("b", "t2");
    h.durable("a", "t1");
    h.durable("a2", "t1");
    let outs = h.connect();
    assert_eq!(fired(&outs)[0], id(T::PipeConnected));
    assert_eq!(sent(&outs), vec!["b", "a"]);
    // b waits for a retry within 1000 + [50, 100] ms and a within 1000 + [2.5, 5] s; the pipe
    // drops; b's retry time passes while it is down.
    h.at(1_000);
    h.ack(ack("b", AckResult::Failed, Some(ErrorCode::BrokerBusy), 0));
    h.ack(ack(
        "a",
        AckResult::Failed,
        Some(ErrorCode::BrokerBusy),
        5_000,
    ));
    h.close();
    assert_eq!(
        h.q.poll_timeout(),
        None,
        "no wake-ups while the pipe is down"
    );
    h.at(2_000);
    let outs = h.connect();
    assert_eq!(sent(&outs), vec!["b"], "b's backoff elapsed, a's has not");
    assert_eq!(fired(&outs), vec![id(T::PipeConnected), id(T::Resend)]);
    assert_eq!(h.q.poll_timeout(), Some(Instant::from_millis(3_000)));
    // At 6 s b's ack timed out (retry within 6 s + [100, 200] ms) and a's wait (<= 5 s) ended.
    let outs = h.timeout(6_000);
    assert_eq!(fired(&outs), vec![id(T::AckTimeout), id(T::Resend)]);
    assert_eq!(sent(&outs), vec!["a"]);
    let due = Instant::from_millis(6_000) + spread("b", 2, Duration::from_millis(200));
    assert_eq!(h.q.poll_timeout(), Some(due));
    h.fired
}

fn s20_pipe_closed_stops_sending() -> Vec<&'static str> {
    let mut h = H::new(8);
    h.connect();
    let outs = h.close();
    assert_eq!(fired(&outs), vec![id(T::PipeClosed)]);
    assert!(!h.q.is_connected());
    let outs = h.durable("a", "t1");
    assert!(sent(&outs).is_empty());
    h.fired
}

fn s21_in_flight_is_interrupted_and_resent_on_reconnect() -> Vec<&'static str> {
    let mut h = H::new(8);
    h.connect();
    h.durable("a", "t1");
    let outs = h.close();
    assert_eq!(fired(&outs), vec![id(T::PipeClosed), id(T::Interrupted)]);
    assert_eq!(h.q.poll_timeout(), None);
    assert_eq!(h.q.metrics().in_flight, 0);
    let outs = h.connect();
    assert_eq!(fired(&outs), vec![id(T::PipeConnected), id(T::Send)]);
    assert_eq!(h.q.metrics().sends, 2);
    h.fired
}

fn s22_delivery_config_applies_live() -> Vec<&'static str> {
    let mut h = H::new(8);
    h.connect();
    let cfg = AgentDeliveryConfig {
        ack_timeout_ms: 5_000,
        retry_backoff_ms: 1_000,
        ..AgentDeliveryConfig::default()
    };
    h.q.handle_delivery_config(h.now, cfg);
    assert_eq!(fired(&h.drain()), vec![id(T::ConfigApplied)]);
    h.durable("a", "t1");
    assert_eq!(h.q.poll_timeout(), Some(Instant::from_millis(5_000)));
    h.timeout(5_000);
    assert_eq!(
        h.q.poll_timeout(),
        Some(Instant::from_millis(5_000) + spread("a", 1, backoff(1_000, 1)))
    );
    h.fired
}

fn s23_out_of_range_config_is_refused() -> Vec<&'static str> {
    let mut h = H::new(8);
    let bad = AgentDeliveryConfig {
        ack_timeout_ms: 0,
        ..AgentDeliveryConfig::default()
    };
    h.q.handle_delivery_config(h.now, bad);
    assert_eq!(fired(&h.drain()), vec![id(T::ConfigRejected)]);
    assert_eq!(h.q.config().delivery, AgentDeliveryConfig::default());
    assert_eq!(h.q.metrics().config_rejected, 1);
    h.fired
}

fn s24_recover_requeues_in_file_order() -> Vec<&'static str> {
    let cfg = IntentQueueConfig {
        delivery: AgentDeliveryConfig::default(),
        capacity: 2,
    };
    let durable = vec![
        intent("a", "t1"),
        intent("b", "t1"),
        intent("c", "t2"),
        intent("a", "t1"),
    ];
    let mut h = H::wrap(IntentQueue::recover(cfg, durable));
    assert_eq!(h.fired, vec![id(T::Recovered); 3]);
    assert_eq!(
        h.q.metrics().depth,
        3,
        "over capacity after a shrink: nothing dropped"
    );
    assert_eq!(
        h.emit(intent("d", "t3")).0,
        Err(EmitError::QueueFull { capacity: 2 })
    );
    let outs = h.connect();
    assert_eq!(sent(&outs), vec!["a", "c"]);
    assert_eq!(sent(&h.ack(ok_ack("a"))), vec!["b"]);
    h.fired
}

/// A scenario drives one machine through a story and returns every transition id it saw fire.
type Scenario = fn() -> Vec<&'static str>;

const SCENARIOS: &[(&str, Scenario)] = &[
    ("ea.master.T01", s01_emit_appends_before_anything_else),
    ("ea.master.T02", s02_emit_behind_waits_for_older_append),
    ("ea.master.T03", s03_full_or_duplicate_is_refused_explicitly),
    ("ea.master.T04", s04_append_durable_then_sent),
    (
        "ea.master.T05",
        s05_append_failure_keeps_the_intent_and_retries,
    ),
    ("ea.master.T06", s06_append_issued_after_retry_timer),
    (
        "ea.master.T07",
        s07_send_pipelines_trades_but_not_within_a_trade,
    ),
    ("ea.master.T08", s08_ack_ok_removes_and_sends_next_of_trade),
    (
        "ea.master.T09",
        s09_retryable_failure_waits_max_of_hint_and_backoff,
    ),
    ("ea.master.T10", s10_ack_timeout_retries_with_backoff),
    ("ea.master.T11", s11_resend_uses_the_same_intent_id),
    ("ea.master.T12", s12_gives_up_loudly_after_exactly_100_tries),
    ("ea.master.T13", s13_non_retryable_failure_is_explicit),
    (
        "ea.master.T14",
        s14_unknown_unsent_stale_and_pending_acks_are_ignored,
    ),
    ("ea.master.T15", s15_remove_durable_frees_the_slot),
    ("ea.master.T16", s16_remove_failure_retries),
    ("ea.master.T17", s17_remove_retry_reissues_with_same_reason),
    (
        "ea.master.T18",
        s18_unknown_or_late_persist_results_are_ignored,
    ),
    (
        "ea.master.T19",
        s19_pipe_connect_sends_due_intents_in_emission_order,
    ),
    ("ea.master.T20", s20_pipe_closed_stops_sending),
    (
        "ea.master.T21",
        s21_in_flight_is_interrupted_and_resent_on_reconnect,
    ),
    ("ea.master.T22", s22_delivery_config_applies_live),
    ("ea.master.T23", s23_out_of_range_config_is_refused),
    ("ea.master.T24", s24_recover_requeues_in_file_order),
];

/// Runs the scenario registered for `tid` and checks it really took that transition.
fn run(tid: &str) {
    let (_, f) = SCENARIOS
        .iter()
        .find(|(t, _)| *t == tid)
        .expect("scenario registered");
    let seen = f();
    assert!(seen.contains(&tid), "{tid} did not fire; saw {seen:?}");
}

#[test]
fn t01_emit_append() {
    run("ea.master.T01")
}
#[test]
fn t02_emit_behind() {
    run("ea.master.T02")
}
#[test]
fn t03_emit_refused() {
    run("ea.master.T03")
}
#[test]
fn t04_append_durable() {
    run("ea.master.T04")
}
#[test]
fn t05_append_failed() {
    run("ea.master.T05")
}
#[test]
fn t06_append_issued() {
    run("ea.master.T06")
}
#[test]
fn t07_send() {
    run("ea.master.T07")
}
#[test]
fn t08_ack_ok() {
    run("ea.master.T08")
}
#[test]
fn t09_ack_retryable() {
    run("ea.master.T09")
}
#[test]
fn t10_ack_timeout() {
    run("ea.master.T10")
}
#[test]
fn t11_resend() {
    run("ea.master.T11")
}
#[test]
fn t12_gave_up() {
    run("ea.master.T12")
}
#[test]
fn t13_rejected() {
    run("ea.master.T13")
}
#[test]
fn t14_ack_ignored() {
    run("ea.master.T14")
}
#[test]
fn t15_remove_durable() {
    run("ea.master.T15")
}
#[test]
fn t16_remove_failed() {
    run("ea.master.T16")
}
#[test]
fn t17_remove_retry() {
    run("ea.master.T17")
}
#[test]
fn t18_persist_ignored() {
    run("ea.master.T18")
}
#[test]
fn t19_pipe_connected() {
    run("ea.master.T19")
}
#[test]
fn t20_pipe_closed() {
    run("ea.master.T20")
}
#[test]
fn t21_interrupted() {
    run("ea.master.T21")
}
#[test]
fn t22_config_applied() {
    run("ea.master.T22")
}
#[test]
fn t23_config_rejected() {
    run("ea.master.T23")
}
#[test]
fn t24_recovered() {
    run("ea.master.T24")
}

#[test]
fn every_master_transition_is_exercised() {
    let mut seen = BTreeSet::new();
    for (_, f) in SCENARIOS {
        seen.extend(f());
    }
    let all: BTreeSet<&str> = T::TABLE.iter().map(|t| t.id).collect();
    assert_eq!(seen, all);
    let registered: BTreeSet<&str> = SCENARIOS.iter().map(|(t, _)| *t).collect();
    assert_eq!(registered, all, "one scenario per transition id");
}

#[test]
fn spec_is_complete() {
    assert_eq!(SPEC.name, "ea.master");
    assert_eq!(SPEC.transitions.len(), T::ALL.len());
    assert!(!SPEC.summary.is_empty() && !SPEC.invariants.is_empty() && !SPEC.states.is_empty());
    for (n, t) in SPEC.transitions.iter().enumerate() {
        assert_eq!(t.id, format!("ea.master.T{:02}", n + 1));
        assert!(!t.from.is_empty() && !t.input.is_empty() && !t.to.is_empty());
        assert!(!t.outputs.is_empty());
    }
}

// ---------------------------------------------------------------- proptest

#[derive(Clone, Debug)]
enum Op {
    Emit {
        trade: u8,
    },
    Persist {
        pick: usize,
        ok: bool,
        lost_reply: bool,
    },
    Ack {
        pick: usize,
        kind: u8,
        retry_after: u32,
    },
    Advance {
        ms: u64,
    },
    NextTimeout {
        times: u8,
    },
    PipeUp,
    PipeDown,
    Config {
        backoff: u32,
    },
    Recover,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..3).prop_map(|trade| Op::Emit { trade }),
        5 => (any::<usize>(), prop::bool::weighted(0.8), prop::bool::weighted(0.2))
            .prop_map(|(pick, ok, lost_reply)| Op::Persist { pick, ok, lost_reply }),
        4 => (any::<usize>(), 0u8..5, 0u32..3_000)
            .prop_map(|(pick, kind, retry_after)| Op::Ack { pick, kind, retry_after }),
        2 => (0u64..3_000).prop_map(|ms| Op::Advance { ms }),
        2 => (1u8..60).prop_map(|times| Op::NextTimeout { times }),
        1 => Just(Op::PipeUp),
        1 => Just(Op::PipeDown),
        1 => (10u32..500).prop_map(|backoff| Op::Config { backoff }),
        1 => Just(Op::Recover),
    ]
}

#[derive(Clone, Debug)]
enum Pending {
    Append(TradeIntent),
    Remove(IntentId),
}

/// A model of the EA's file, the pipe and the core, checking every output of the queue.
struct Model {
    cfg: IntentQueueConfig,
    q: IntentQueue,
    now: Instant,
    connected: bool,
    next_id: u64,
    /// What the file holds: appended and not removed, in write order.
    file: Vec<TradeIntent>,
    ops: BTreeMap<OpId, Pending>,
    /// Emission index of every intent ever accepted.
    emitted: BTreeMap<IntentId, u64>,
    /// Intents the machine holds and has not resolved, per trade: (emission index, id).
    alive: BTreeMap<TradeId, BTreeSet<(u64, IntentId)>>,
    /// Intents whose append was reported Ok to the machine (or that came back from the file).
    durable: BTreeSet<IntentId>,
    sends: BTreeMap<IntentId, u32>,
    ok_acked: BTreeSet<IntentId>,
    refused: BTreeSet<IntentId>,
    accepted_total: usize,
    resolved: BTreeSet<IntentId>,
    /// The retry hint of the ack being handled (0 for anything but a retryable failure).
    retry_after_ms: u32,
    /// When each intent waiting to retry may be sent again: its failure instant plus
    /// `spread(id, attempts, w)`, w = max(hint, backoff(retry_backoff_ms, attempts)).
    retry_due: BTreeMap<IntentId, Instant>,
}

impl Model {
    fn new() -> Model {
        let cfg = IntentQueueConfig {
            delivery: AgentDeliveryConfig::default(),
            capacity: 5,
        };
        Model {
            cfg,
            q: IntentQueue::new(cfg),
            now: Instant::ZERO,
            connected: false,
            next_id: 0,
            file: Vec::new(),
            ops: BTreeMap::new(),
            emitted: BTreeMap::new(),
            alive: BTreeMap::new(),
            durable: BTreeSet::new(),
            sends: BTreeMap::new(),
            ok_acked: BTreeSet::new(),
            refused: BTreeSet::new(),
            accepted_total: 0,
            resolved: BTreeSet::new(),
            retry_after_ms: 0,
            retry_due: BTreeMap::new(),
        }
    }

    fn held(&self) -> usize {
        let m = self.q.metrics();
        m.depth + m.removing
    }

    fn check_outputs(&mut self) -> Result<(), TestCaseError> {
        let mut last_was_fired = false;
        while let Some(o) = self.q.poll() {
            match &o {
                Output::Fired(_) => {}
                _ => prop_assert!(last_was_fired, "{o:?} not preceded by its Fired"),
            }
            last_was_fired = matches!(o, Output::Fired(_)) || last_was_fired;
            match o {
                Output::Fired(f) => self.check_retry_timing(f.id(), &f.subject)?,
                Output::PersistAppend { op, intent } => {
                    let idx = self.emitted[&intent.intent_id];
                    let older = self.alive.get(&intent.trade_id).into_iter().flatten();
                    for (i, other) in older {
                        if *i < idx {
                            prop_assert!(
                                self.durable.contains(other),
                                "{} appended before older {} was durable",
                                intent.intent_id,
                                other
                            );
                        }
                    }
                    self.ops.insert(op, Pending::Append(intent));
                }
                Output::PersistRemove {
                    op,
                    intent_id,
                    reason,
                } => {
                    match reason {
                        RemoveReason::Acked => prop_assert!(self.ok_acked.contains(&intent_id)),
                        RemoveReason::GaveUp { attempts } => {
                            prop_assert_eq!(attempts, MAX_TRIES);
                            prop_assert_eq!(self.sends.get(&intent_id).copied(), Some(MAX_TRIES));
                        }
                        RemoveReason::Rejected { error } => {
                            prop_assert!(!error.is_retryable());
                            prop_assert!(self.refused.contains(&intent_id));
                        }
                    }
                    for set in self.alive.values_mut() {
                        set.retain(|(_, i)| *i != intent_id);
                    }
                    self.resolved.insert(intent_id.clone());
                    self.ops.insert(op, Pending::Remove(intent_id));
                }
                Output::ToAgent(EaToAgent::Intent(i)) => {
                    prop_assert!(self.connected, "sent while the pipe is down");
                    prop_assert!(
                        self.durable.contains(&i.intent_id),
                        "{} sent before its append was durable",
                        i.intent_id
                    );
                    let oldest = self
                        .alive
                        .get(&i.trade_id)
                        .and_then(|s| s.first())
                        .map(|(_, id)| id.clone());
                    prop_assert_eq!(
                        oldest.as_ref(),
                        Some(&i.intent_id),
                        "only the oldest unresolved intent of a trade may be in flight"
                    );
                    let n = self.sends.entry(i.intent_id.clone()).or_insert(0);
                    *n += 1;
                    prop_assert!(*n <= MAX_TRIES);
                }
                Output::ToAgent(other) => prop_assert!(false, "unexpected {other:?}"),
                Output::GaveUp {
                    intent_id,
                    attempts,
                    ..
                } => {
                    prop_assert_eq!(attempts, MAX_TRIES);
                    prop_assert_eq!(self.sends.get(&intent_id).copied(), Some(MAX_TRIES));
                }
                Output::Failed {
                    intent_id, error, ..
                } => {
                    prop_assert!(!error.is_retryable());
                    prop_assert!(self.refused.contains(&intent_id));
                }
            }
        }
        prop_assert!(self.held() <= self.cfg.capacity, "queue over capacity");
        // The file never holds an intent the machine has forgotten.
        for i in &self.file {
            let idx = self.emitted[&i.intent_id];
            let held = self
                .alive
                .get(&i.trade_id)
                .is_some_and(|s| s.contains(&(idx, i.intent_id.clone())))
                || self.resolved.contains(&i.intent_id);
            prop_assert!(held);
        }
        Ok(())
    }

    /// A retry waits `w/2 + spread` after the failure (T09 / T10), within [w/2, w], and the
    /// resend (T11) never comes earlier.
    fn check_retry_timing(&mut self, t: &str, subject: &Subject) -> Result<(), TestCaseError> {
        let Subject::Intent(i) = subject else {
            return Ok(());
        };
        if t == id(T::AckRetryable) || t == id(T::AckTimeout) {
            let attempts = self.sends.get(i).copied().unwrap_or(0);
            let hint = if t == id(T::AckRetryable) {
                Duration::from_millis(u64::from(self.retry_after_ms))
            } else {
                Duration::ZERO
            };
            let base = u64::from(self.q.config().delivery.retry_backoff_ms);
            let w = backoff(base, attempts).max(hint);
            let delay = spread(i.as_str(), attempts, w);
            prop_assert!(
                delay.0 >= w.0 / 2 && delay <= w,
                "{:?} outside [w/2, w]",
                delay
            );
            let due = self.now + delay;
            prop_assert!(
                self.q.poll_timeout().is_some_and(|at| at <= due),
                "{} retry not armed for {:?}",
                i,
                due
            );
            self.retry_due.insert(i.clone(), due);
        } else if t == id(T::Resend) {
            let due = self.retry_due.remove(i);
            prop_assert!(due.is_some(), "{} resent without a retry", i);
            prop_assert!(
                due.is_some_and(|due| self.now >= due),
                "{} resent at {:?}, before {:?}",
                i,
                self.now,
                due
            );
        }
        Ok(())
    }

    fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
        self.retry_after_ms = 0;
        match op {
            Op::Emit { trade } => {
                let id = IntentId::new(format!("i{}", self.next_id));
                let t = TradeId::new(format!("t{trade}"));
                let full = self.held() >= self.cfg.capacity;
                let r = self
                    .q
                    .handle_emit(self.now, intent(id.as_str(), t.as_str()));
                if full {
                    prop_assert_eq!(
                        r,
                        Err(EmitError::QueueFull {
                            capacity: self.cfg.capacity
                        })
                    );
                } else {
                    prop_assert_eq!(r, Ok(()));
                    self.emitted.insert(id.clone(), self.next_id);
                    self.alive.entry(t).or_default().insert((self.next_id, id));
                    self.accepted_total += 1;
                }
                self.next_id += 1;
            }
            Op::Persist {
                pick,
                ok,
                lost_reply,
            } => {
                if self.ops.is_empty() {
                    return Ok(());
                }
                let key = *self
                    .ops
                    .keys()
                    .nth(pick % self.ops.len())
                    .expect("non-empty");
                let p = self.ops.remove(&key).expect("present");
                if ok || lost_reply {
                    match &p {
                        Pending::Append(i) => {
                            if !self.file.iter().any(|f| f.intent_id == i.intent_id) {
                                self.file.push(i.clone());
                            }
                        }
                        Pending::Remove(id) => self.file.retain(|f| f.intent_id != *id),
                    }
                }
                if ok {
                    if let Pending::Append(i) = &p {
                        self.durable.insert(i.intent_id.clone());
                    }
                    self.q.handle_persist_result(self.now, key, Ok(()));
                } else {
                    self.q.handle_persist_result(
                        self.now,
                        key,
                        Err(PersistError { retryable: true }),
                    );
                }
            }
            Op::Ack {
                pick,
                kind,
                retry_after,
            } => {
                let candidates: Vec<IntentId> = self
                    .alive
                    .values()
                    .flatten()
                    .map(|(_, i)| i.clone())
                    .filter(|i| self.sends.get(i).copied().unwrap_or(0) > 0)
                    .collect();
                let id = if candidates.is_empty() || pick % 7 == 0 {
                    IntentId::new("unknown")
                } else {
                    candidates[pick % candidates.len()].clone()
                };
                let a = match kind {
                    0 | 1 => {
                        self.ok_acked.insert(id.clone());
                        ack(id.as_str(), AckResult::Ok, None, 0)
                    }
                    2 => {
                        self.retry_after_ms = retry_after;
                        ack(
                            id.as_str(),
                            AckResult::Failed,
                            Some(ErrorCode::BrokerBusy),
                            retry_after,
                        )
                    }
                    3 => {
                        self.refused.insert(id.clone());
                        ack(
                            id.as_str(),
                            AckResult::Failed,
                            Some(ErrorCode::SymbolNotMapped),
                            0,
                        )
                    }
                    _ => ack(id.as_str(), AckResult::Pending, None, 0),
                };
                self.q.handle_ack(self.now, a);
            }
            Op::Advance { ms } => {
                self.now = Instant::from_millis(self.now.as_millis() + ms);
                self.q.handle_timeout(self.now);
            }
            Op::NextTimeout { times } => {
                for _ in 0..times {
                    let Some(at) = self.q.poll_timeout() else {
                        break;
                    };
                    prop_assert!(at >= self.now, "deadline in the past");
                    self.now = at;
                    self.q.handle_timeout(self.now);
                    self.check_outputs()?;
                }
            }
            Op::PipeUp => {
                self.connected = true;
                self.q.handle_pipe_connected(self.now);
            }
            Op::PipeDown => {
                self.connected = false;
                self.q.handle_pipe_closed(self.now);
            }
            Op::Config { backoff } => {
                let cfg = AgentDeliveryConfig {
                    retry_backoff_ms: backoff,
                    ..AgentDeliveryConfig::default()
                };
                self.q.handle_delivery_config(self.now, cfg);
            }
            Op::Recover => {
                self.q = IntentQueue::recover(self.cfg, self.file.clone());
                self.connected = false;
                self.ops.clear();
                self.sends.clear();
                self.alive.clear();
                self.retry_due.clear();
                for i in &self.file {
                    self.durable.insert(i.intent_id.clone());
                    self.resolved.remove(&i.intent_id);
                    self.alive
                        .entry(i.trade_id.clone())
                        .or_default()
                        .insert((self.emitted[&i.intent_id], i.intent_id.clone()));
                }
                let mut n = 0;
                while let Some(o) = self.q.poll() {
                    prop_assert!(
                        matches!(&o, Output::Fired(f) if f.id() == "ea.master.T24"),
                        "recover emits only T24"
                    );
                    n += 1;
                }
                prop_assert_eq!(n, self.file.len());
            }
        }
        self.check_outputs()
    }

    /// Heals everything and checks every intent still held ends resolved and the file empty.
    fn settle(&mut self) -> Result<(), TestCaseError> {
        self.connected = true;
        self.q.handle_pipe_connected(self.now);
        self.check_outputs()?;
        for _ in 0..2_000 {
            if self.held() == 0 {
                break;
            }
            for _ in 0..self.ops.len() {
                self.apply(Op::Persist {
                    pick: 0,
                    ok: true,
                    lost_reply: false,
                })?;
            }
            let in_flight: Vec<IntentId> = self
                .alive
                .values()
                .filter_map(|s| s.first().map(|(_, i)| i.clone()))
                .filter(|i| self.sends.get(i).copied().unwrap_or(0) > 0)
                .collect();
            for i in in_flight {
                self.ok_acked.insert(i.clone());
                self.q.handle_ack(self.now, ok_ack(i.as_str()));
                self.check_outputs()?;
            }
            if let Some(at) = self.q.poll_timeout() {
                self.now = at;
                self.q.handle_timeout(self.now);
                self.check_outputs()?;
            }
        }
        prop_assert_eq!(self.held(), 0, "some intent never resolved");
        prop_assert!(self.file.is_empty(), "file not emptied: {:?}", self.file);
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn intent_queue_keeps_its_invariants(ops in prop::collection::vec(op(), 1..250)) {
        let mut m = Model::new();
        for o in ops {
            m.apply(o)?;
        }
        m.settle()?;
    }
}

/// Deterministic long run: many timeouts in a row reach the 100-try budget, and the give-up
/// happens exactly there.
#[test]
fn gave_up_only_at_exactly_max_tries_under_timeouts() {
    let mut m = Model::new();
    m.apply(Op::PipeUp).unwrap();
    m.apply(Op::Emit { trade: 0 }).unwrap();
    m.apply(Op::Persist {
        pick: 0,
        ok: true,
        lost_reply: false,
    })
    .unwrap();
    for _ in 0..10 {
        m.apply(Op::NextTimeout { times: 50 }).unwrap();
    }
    assert_eq!(m.q.metrics().gave_up, 1);
    assert_eq!(m.sends.get(&IntentId::new("i0")).copied(), Some(MAX_TRIES));
}

/// Retry instants of a burst: intents i0..i{n-1} (one trade each) sent at 0 and all refused
/// retryably at 10 ms with the same 2 s hint; returns when each was sent again.
fn burst_resend_times(n: usize) -> BTreeMap<String, Instant> {
    let mut h = H::new(64);
    h.connect();
    let ids: Vec<String> = (0..n).map(|k| format!("i{k}")).collect();
    for (k, i) in ids.iter().enumerate() {
        h.durable(i, &format!("t{k}"));
    }
    h.at(10);
    for i in &ids {
        let outs = h.ack(ack(
            i,
            AckResult::Failed,
            Some(ErrorCode::BrokerBusy),
            2_000,
        ));
        assert_eq!(fired(&outs), vec![id(T::AckRetryable)]);
    }
    let mut resent = BTreeMap::new();
    while resent.len() < n {
        let at = h.q.poll_timeout().expect("a retry timer");
        for i in sent(&h.timeout_at(at)) {
            assert!(resent.insert(i, at).is_none(), "resent twice");
        }
    }
    resent
}

#[test]
fn a_refused_burst_comes_back_spread_over_half_to_full_wait() {
    let resent = burst_resend_times(16);
    let w = Duration::from_millis(2_000);
    for (i, at) in &resent {
        // Exactly the documented spread, hence within [10 ms + 1 s, 10 ms + 2 s].
        assert_eq!(*at, Instant::from_millis(10) + spread(i, 1, w), "{i}");
        assert!(*at >= Instant::from_millis(1_010) && *at <= Instant::from_millis(2_010));
    }
    let distinct: BTreeSet<Instant> = resent.values().copied().collect();
    assert!(distinct.len() > 1, "the burst came back as one: {resent:?}");
    // Deterministic: the same story gives the same schedule.
    assert_eq!(burst_resend_times(16), resent);
}
