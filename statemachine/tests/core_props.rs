//! Property test: the core machine driven by random inputs and time, with a model journal
//! that can fail, lose replies after committing, and dedupe. Local invariants are checked after
//! every step.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use echo_statemachine::core::{
    CoreOutput, DeliveryRecord, DeliveryStatus, JournalReply, JournalResult, JournalWrite, OpId,
};
use echo_statemachine::ids::{CommandId, IntentId};
use echo_statemachine::msg::*;
use proptest::prelude::*;
use support::core_harness::*;

#[derive(Clone, Debug)]
enum Op {
    SendIntent(u8),
    Journal { pick: u8, outcome: u8 },
    Stage { pick: u8, stage: u8 },
    FailAck { pick: u8, retryable: bool },
    Result { pick: u8, status: u8 },
    DisconnectB,
    HelloB,
    Advance(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => any::<u8>().prop_map(Op::SendIntent),
        4 => (any::<u8>(), 0u8..4).prop_map(|(pick, outcome)| Op::Journal { pick, outcome }),
        3 => (any::<u8>(), 0u8..3).prop_map(|(pick, stage)| Op::Stage { pick, stage }),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(pick, retryable)| Op::FailAck { pick, retryable }),
        2 => (any::<u8>(), 0u8..10).prop_map(|(pick, status)| Op::Result { pick, status }),
        1 => Just(Op::DisconnectB),
        1 => Just(Op::HelloB),
        2 => (1u16..800).prop_map(Op::Advance),
    ]
}

/// The journal as storage would keep it.
#[derive(Default)]
struct ModelJournal {
    intents: BTreeMap<IntentId, Vec<DeliveryRecord>>,
    finished: BTreeMap<CommandId, DeliveryStatus>,
}

impl ModelJournal {
    fn apply(&mut self, w: &JournalWrite) -> JournalReply {
        match w {
            JournalWrite::AcceptIntent { intent, deliveries } => {
                if let Some(rows) = self.intents.get(&intent.intent_id) {
                    let unfinished = rows
                        .iter()
                        .filter(|r| {
                            r.status == DeliveryStatus::Inflight
                                && !self.finished.contains_key(&r.command_id)
                        })
                        .cloned()
                        .collect();
                    return JournalReply::IntentExisted { unfinished };
                }
                self.intents
                    .insert(intent.intent_id.clone(), deliveries.clone());
                JournalReply::Done
            }
            JournalWrite::FinishDelivery {
                command_id, status, ..
            } => {
                self.finished.entry(command_id.clone()).or_insert(*status);
                JournalReply::Done
            }
            _ => JournalReply::Done,
        }
    }
}

struct World {
    h: H,
    j: ModelJournal,
    /// Per trade: the lifecycle the master emits, and how far it got acknowledged.
    next: [usize; 3],
    sent_cmds: Vec<CommandId>,
    seq_of: BTreeMap<IntentId, u64>,
    max_stage: BTreeMap<CommandId, AckStage>,
    last_sent_seq: BTreeMap<(String, String), (u64, CommandId)>,
    ever_seen: BTreeSet<CommandId>,
}

const KINDS: [IntentKind; 4] = [
    IntentKind::Open,
    IntentKind::Modify,
    IntentKind::PartialClose,
    IntentKind::Close,
];

impl World {
    fn intent_for(&self, trade: usize, step: usize) -> TradeIntent {
        // Mixed case on purpose: the core must treat T0 and t0 as one trade.
        let name = if step.is_multiple_of(2) {
            format!("T{trade}")
        } else {
            format!("t{trade}")
        };
        intent(
            &format!("i{trade}-{step}"),
            &name,
            KINDS[step.min(3)],
            (trade * 10 + step) as u64,
        )
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::SendIntent(t) => {
                let trade = (t % 3) as usize;
                let step = self.next[trade].min(3);
                let i = self.intent_for(trade, step);
                self.seq_of.insert(i.intent_id.clone(), i.master_seq);
                self.h.msg("A", AgentToCore::Intent(i));
            }
            Op::Journal { pick, outcome } => {
                let awaited: Vec<(OpId, JournalWrite)> = self
                    .h
                    .journal
                    .iter()
                    .filter(|(_, w)| w.is_awaited())
                    .cloned()
                    .collect();
                self.h.journal.retain(|(_, w)| w.is_awaited());
                if awaited.is_empty() {
                    return;
                }
                let (op, w) = awaited[pick as usize % awaited.len()].clone();
                self.h.journal.retain(|(o, _)| *o != op);
                let res = match outcome {
                    0 | 1 => JournalResult::Ok(self.j.apply(&w)),
                    2 => JournalResult::Failed { retryable: true },
                    _ => {
                        // Committed, but the reply was lost.
                        self.j.apply(&w);
                        JournalResult::Failed { retryable: true }
                    }
                };
                self.h.core.handle_journal_result(self.h.now, op, res);
                self.h.drain();
            }
            Op::Stage { pick, stage } => {
                if let Some(c) = self.pick(pick) {
                    let st = [
                        AckStage::AgentBuffered,
                        AckStage::PipeDelivered,
                        AckStage::CoreAccepted,
                    ][stage as usize % 3];
                    let slave = c.as_str().rsplit('@').next().unwrap_or("").to_string();
                    self.h.msg("B", stage_ack(&c, &slave, st));
                }
            }
            Op::FailAck { pick, retryable } => {
                if let Some(c) = self.pick(pick) {
                    let slave = c.as_str().rsplit('@').next().unwrap_or("").to_string();
                    let e = if retryable {
                        ErrorCode::PipeUnavailable
                    } else {
                        ErrorCode::EaRejected
                    };
                    self.h.msg("B", fail_ack(&c, &slave, e));
                }
            }
            Op::Result { pick, status } => {
                if let Some(c) = self.pick(pick) {
                    let slave = c.as_str().rsplit('@').next().unwrap_or("").to_string();
                    let st = match status {
                        0 => BrokerStatus::Rejected,
                        1 => BrokerStatus::Cancelled,
                        _ => BrokerStatus::Filled,
                    };
                    self.h.msg("B", result(&c, &slave, 1_000 + pick as i64, st));
                }
            }
            Op::DisconnectB => self.h.disconnect("B"),
            Op::HelloB => self
                .h
                .msg("B", hello("B", &[("s1", Role::Slave), ("s2", Role::Slave)])),
            Op::Advance(ms) => {
                self.h.advance(ms.into());
                self.h.msg("A", AgentToCore::Heartbeat);
            }
        }
        self.check();
    }

    fn pick(&self, pick: u8) -> Option<CommandId> {
        if self.sent_cmds.is_empty() {
            None
        } else {
            Some(self.sent_cmds[pick as usize % self.sent_cmds.len()].clone())
        }
    }

    fn check(&mut self) {
        let outs = self.h.take();
        for o in &outs {
            match o {
                CoreOutput::Send {
                    msg: CoreToAgent::IntentAck(a),
                    ..
                } if a.result == AckResult::Ok => {
                    assert!(
                        self.j.intents.contains_key(&a.intent_id),
                        "CORE_ACCEPTED before durable: {a:?}"
                    );
                    // The master moves on to the trade's next intent only after an OK.
                    let name = a.intent_id.as_str();
                    if let Some((t, s)) = name.trim_start_matches('i').split_once('-') {
                        let (t, s): (usize, usize) =
                            (t.parse().unwrap_or(0), s.parse().unwrap_or(0));
                        if self.next[t] == s {
                            self.next[t] += 1;
                        }
                    }
                }
                CoreOutput::Send {
                    msg: CoreToAgent::Command(c),
                    agent,
                } => {
                    assert_eq!(agent.as_str(), "B", "commands only to the slave's agent");
                    assert!(
                        self.j.intents.contains_key(&c.intent_id),
                        "command for a non-durable intent"
                    );
                    let seq = self.seq_of.get(&c.intent_id).copied().unwrap_or(0);
                    let key = (
                        c.slave.as_str().to_string(),
                        c.trade_id.as_str().to_string(),
                    );
                    if let Some((last, last_cmd)) = self.last_sent_seq.get(&key) {
                        assert!(
                            seq > *last || (seq == *last && *last_cmd == c.command_id),
                            "per-trade order broken at {key:?}: {} after {}",
                            c.command_id,
                            last_cmd
                        );
                    }
                    self.last_sent_seq.insert(key, (seq, c.command_id.clone()));
                    if !self.sent_cmds.contains(&c.command_id) {
                        self.sent_cmds.push(c.command_id.clone());
                    }
                }
                _ => {}
            }
        }
        let depth_max = self.h.core.router_config().queue_depth_max;
        assert!(
            self.h.core.queue_depths().iter().all(|d| *d <= depth_max),
            "queue over its cap"
        );
        let views = self.h.core.delivery_views();
        let mut heads: BTreeMap<(String, String), usize> = BTreeMap::new();
        let now_ids: BTreeSet<CommandId> = views.iter().map(|v| v.command_id.clone()).collect();
        for v in &views {
            if v.state != "Blocked" {
                *heads
                    .entry((v.slave.to_string(), v.trade_id.to_string()))
                    .or_default() += 1;
            }
            let prev = self
                .max_stage
                .entry(v.command_id.clone())
                .or_insert(v.stage);
            assert!(v.stage >= *prev, "stage regressed for {}", v.command_id);
            *prev = v.stage;
            self.ever_seen.insert(v.command_id.clone());
        }
        assert!(
            heads.values().all(|n| *n <= 1),
            "two live deliveries in one chain: {heads:?}"
        );
        for c in &self.ever_seen {
            if !now_ids.contains(c) {
                assert!(
                    self.j.finished.contains_key(c),
                    "{c} forgotten before its final state was durable"
                );
            }
        }
        assert!(
            self.h.core.armed_timers()
                <= self.h.core.open_intents() + self.h.core.open_deliveries() + 2,
            "timers leak: {} armed",
            self.h.core.armed_timers()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn core_keeps_its_local_invariants(ops in prop::collection::vec(op(), 1..200)) {
        let mut w = World {
            h: H::world(),
            j: ModelJournal::default(),
            next: [0; 3],
            sent_cmds: Vec::new(),
            seq_of: BTreeMap::new(),
            max_stage: BTreeMap::new(),
            last_sent_seq: BTreeMap::new(),
            ever_seen: BTreeSet::new(),
        };
        for o in ops {
            w.step(o);
        }
    }

    #[test]
    fn same_trade_any_case_same_worker(name in "[a-zA-Z0-9_-]{1,24}") {
        let r = echo_statemachine::core::router::Router::new(cfg().router);
        let lower = echo_statemachine::ids::TradeId::new(name.to_lowercase());
        let upper = echo_statemachine::ids::TradeId::new(name.to_uppercase());
        prop_assert_eq!(r.worker_for(&lower), r.worker_for(&upper));
        prop_assert!(r.worker_for(&lower) < 2);
    }
}
