//! The journal suite: every scenario runs against SQLite (a temp dir) and against a real
//! Postgres (a fresh database per test, dropped afterwards), asserting the same behaviour.
//! A Postgres that is not reachable fails the Postgres half loudly; nothing is skipped.

#[path = "journal_support.rs"]
#[macro_use]
mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use echo_runtime::journal::{Journal, WakeReason};
use echo_statemachine::core::{
    Core, CoreConfig, DeliveryStatus, JournalReply, JournalResult, JournalWrite, OpId,
};
use echo_statemachine::ids::{AccountId, CommandId, IntentId, TradeId};
use echo_statemachine::msg::{AckStage, ErrorCode, IntentKind};
use support::*;

const DONE: JournalResult = JournalResult::Ok(JournalReply::Done);

async fn accept_then_load(kind: Kind) {
    let env = Env::new(kind).await;
    let j = env.open().await;
    let i = intent("i1", "T-1", IntentKind::Open, 1);
    let (w, ds) = accept(&i, &["s1", "s2", "s3"]);
    assert_eq!(j.write(w).await, DONE);
    let state = j.load().await.expect("load");
    // Read back with the master's facts journaled with the intent (SPEC.md §5.2).
    assert_eq!(sorted(state.unfinished.clone()), sorted(loaded(&ds, &i)));
    assert_eq!(
        state.unfinished[0]
            .intent_facts
            .as_ref()
            .map(|f| (f.origin.balance, f.origin.comment.as_str())),
        Some((10_000.0, "grid #1"))
    );
    assert!(state.open_tickets.is_empty());
    // Trade ids are stored lower-cased, as the machine normalises them.
    let report = j.trade(&TradeId::new("t-1")).await.expect("trade");
    assert_eq!(report.intents.len(), 1);
    assert_eq!(report.intents[0].intent, i);
    assert_eq!(report.deliveries.len(), 3);
    j.close().await;
}

async fn duplicate_intent_reports_exactly_the_unfinished(kind: Kind) {
    let env = Env::new(kind).await;
    let j = env.open().await;
    let i = intent("i1", "t1", IntentKind::Open, 1);
    let (w, ds) = accept(&i, &["s1", "s2", "s3"]);
    assert_eq!(j.write(w.clone()).await, DONE);
    assert_eq!(
        j.write(finish(&ds[0], DeliveryStatus::Acked, Some(501), None))
            .await,
        DONE
    );
    assert_eq!(
        j.write(finish(
            &ds[2],
            DeliveryStatus::Failed,
            None,
            Some(ErrorCode::BrokerRejected)
        ))
        .await,
        DONE
    );
    // The same intent again (a retry after a lost reply), even with other content: nothing
    // changes, and only s2 is reported unfinished.
    let mut changed = i.clone();
    changed.volume = 9.0;
    let (w2, _) = accept(&changed, &["s1", "s2", "s3", "s4"]);
    let r = j.write(w2).await;
    assert_eq!(
        r,
        JournalResult::Ok(JournalReply::IntentExisted {
            unfinished: vec![ds[1].clone()]
        })
    );
    let report = j.trade(&TradeId::new("t1")).await.expect("trade");
    assert_eq!(report.intents.len(), 1);
    assert_eq!(report.intents[0].intent.volume, 1.0);
    assert_eq!(report.deliveries.len(), 3);
    // All finished: the duplicate reports none.
    j.write(finish(&ds[1], DeliveryStatus::Acked, Some(502), None))
        .await;
    assert_eq!(
        j.write(w).await,
        JournalResult::Ok(JournalReply::IntentExisted { unfinished: vec![] })
    );
    j.close().await;
}

async fn finish_never_regresses(kind: Kind) {
    let env = Env::new(kind).await;
    let j = env.open().await;
    let i = intent("i1", "t1", IntentKind::Open, 1);
    let (w, ds) = accept(&i, &["s1", "s2"]);
    assert_eq!(j.write(w).await, DONE);
    assert_eq!(
        j.write(finish(&ds[0], DeliveryStatus::Acked, Some(77), None))
            .await,
        DONE
    );
    // A later, different final answer and a stage update change nothing.
    assert_eq!(
        j.write(finish(
            &ds[0],
            DeliveryStatus::Failed,
            None,
            Some(ErrorCode::MaxRetries)
        ))
        .await,
        DONE
    );
    assert_eq!(
        j.write(JournalWrite::UpdateStage {
            command_id: ds[0].command_id.clone(),
            stage: AckStage::AgentBuffered,
            attempts: 9,
        })
        .await,
        DONE
    );
    // Finishing an unknown command is a no-op, not an error.
    let mut ghost = ds[1].clone();
    ghost.command_id = CommandId::new("nope@s9");
    assert_eq!(
        j.write(finish(&ghost, DeliveryStatus::Acked, Some(1), None))
            .await,
        DONE
    );
    let report = j.trade(&TradeId::new("t1")).await.expect("trade");
    let row = report
        .deliveries
        .iter()
        .find(|d| d.record.command_id == ds[0].command_id)
        .expect("row");
    assert_eq!(row.record.status, DeliveryStatus::Acked);
    assert_eq!(row.record.stage, AckStage::EaConfirmed);
    assert_eq!(row.record.slave_ticket, Some(77));
    assert_eq!(row.record.reason, None);
    let state = j.load().await.expect("load");
    assert_eq!(state.unfinished, loaded(&ds[1..2], &i));
    let failed = j.failed(10).await.expect("failed");
    assert!(failed.is_empty());
    j.close().await;
}

async fn best_effort_writes(kind: Kind) {
    let env = Env::new(kind).await;
    let j = env.open().await;
    let i = intent("i1", "t1", IntentKind::Open, 1);
    let (w, ds) = accept(&i, &["s1"]);
    assert_eq!(j.write(w).await, DONE);
    let cid = ds[0].command_id.clone();
    let stage = |s, a| JournalWrite::UpdateStage {
        command_id: cid.clone(),
        stage: s,
        attempts: a,
    };
    assert_eq!(j.write(stage(AckStage::PipeDelivered, 2)).await, DONE);
    // Never backwards.
    assert_eq!(j.write(stage(AckStage::AgentBuffered, 1)).await, DONE);
    assert_eq!(
        j.write(JournalWrite::RecordRetry {
            command_id: cid.clone(),
            attempt: 1,
            stage: AckStage::AgentBuffered,
            reason: ErrorCode::PipeUnavailable,
        })
        .await,
        DONE
    );
    assert_eq!(
        j.write(JournalWrite::RecordRejection {
            intent_id: IntentId::new("i2"),
            trade_id: TradeId::new("t1"),
            worker: 3,
            reason: ErrorCode::BrokerBusy,
        })
        .await,
        DONE
    );
    // Best-effort writes about unknown commands are harmless.
    assert_eq!(
        j.write(JournalWrite::UpdateStage {
            command_id: CommandId::new("ghost@s1"),
            stage: AckStage::EaConfirmed,
            attempts: 1,
        })
        .await,
        DONE
    );
    assert_eq!(j.write(JournalWrite::Probe).await, DONE);
    let report = j.trade(&TradeId::new("t1")).await.expect("trade");
    assert_eq!(report.deliveries[0].record.stage, AckStage::PipeDelivered);
    assert_eq!(report.deliveries[0].record.attempts, 2);
    assert_eq!(report.deliveries[0].record.status, DeliveryStatus::Inflight);
    assert_eq!(report.retries.len(), 1);
    assert_eq!(report.retries[0].command_id, cid);
    assert_eq!(report.retries[0].reason, ErrorCode::PipeUnavailable);
    assert_eq!(report.rejections.len(), 1);
    assert_eq!(report.rejections[0].worker, 3);
    assert_eq!(report.rejections[0].reason, ErrorCode::BrokerBusy);
    // The unfinished delivery comes back with its latest stage.
    let state = j.load().await.expect("load");
    assert_eq!(state.unfinished.len(), 1);
    assert_eq!(state.unfinished[0].stage, AckStage::PipeDelivered);
    j.close().await;
}

async fn open_tickets_follow_opens_and_closes(kind: Kind) {
    let env = Env::new(kind).await;
    let j = env.open().await;
    let open = intent("o1", "t1", IntentKind::Open, 1);
    let (w, ds) = accept(&open, &["s1", "s2", "s3"]);
    assert_eq!(j.write(w).await, DONE);
    j.write(finish(&ds[0], DeliveryStatus::Acked, Some(71), None))
        .await;
    j.write(finish(&ds[1], DeliveryStatus::Acked, Some(72), None))
        .await;
    j.write(finish(
        &ds[2],
        DeliveryStatus::Failed,
        None,
        Some(ErrorCode::BrokerRejected),
    ))
    .await;
    let other = intent("o2", "t2", IntentKind::Open, 2);
    let (w, ods) = accept(&other, &["s1"]);
    j.write(w).await;
    j.write(finish(&ods[0], DeliveryStatus::Acked, Some(90), None))
        .await;
    let tickets = |s: &echo_statemachine::core::CoreDurableState| {
        s.open_tickets
            .iter()
            .map(|(t, a, k)| (t.as_str().to_string(), a.as_str().to_string(), *k))
            .collect::<BTreeSet<_>>()
    };
    let want: BTreeSet<_> = [
        ("t1".to_string(), "s1".to_string(), 71),
        ("t1".into(), "s2".into(), 72),
        ("t2".into(), "s1".into(), 90),
    ]
    .into_iter()
    .collect();
    assert_eq!(tickets(&j.load().await.expect("load")), want);
    // A modify keeps the ticket; a close of s1 removes only that position.
    let modify = intent("m1", "t1", IntentKind::Modify, 3);
    let (w, mds) = accept(&modify, &["s1", "s2"]);
    j.write(w).await;
    j.write(finish(&mds[0], DeliveryStatus::Acked, Some(71), None))
        .await;
    let close = intent("c1", "t1", IntentKind::Close, 4);
    let (w, cds) = accept(&close, &["s1", "s2"]);
    j.write(w).await;
    j.write(finish(&cds[0], DeliveryStatus::Acked, Some(71), None))
        .await;
    // The close for s2 failed: its position stays open.
    j.write(finish(
        &cds[1],
        DeliveryStatus::Failed,
        None,
        Some(ErrorCode::BrokerRejected),
    ))
    .await;
    let want: BTreeSet<_> = [
        ("t1".to_string(), "s2".to_string(), 72),
        ("t2".into(), "s1".into(), 90),
    ]
    .into_iter()
    .collect();
    let state = j.load().await.expect("load");
    assert_eq!(tickets(&state), want);
    // Only the modify to s2 is unfinished.
    assert_eq!(state.unfinished, loaded(&mds[1..2], &modify));
    let report = j.trade(&TradeId::new("t1")).await.expect("trade");
    assert_eq!(report.open_tickets, vec![(AccountId::new("s2"), 72)]);
    let failed = j.failed(10).await.expect("failed");
    assert_eq!(failed.len(), 2);
    assert!(failed
        .iter()
        .all(|f| f.record.reason == Some(ErrorCode::BrokerRejected)));
    j.close().await;
}

/// Pending orders (SPEC.md §5.2): a filled placement records the slave's pending ticket in
/// `open_position`, the trigger replaces it by the position's (here a new one: the slave opened
/// at market), a later modify keeps it, a cancel removes its trade's row — durable across a
/// reopen of the journal, and the widened intent kinds are accepted by both schemas.
async fn pending_tickets_follow_placement_trigger_and_cancel(kind: Kind) {
    let env = Env::new(kind).await;
    let j = env.open().await;
    let mut writes = 0;
    let mut step = |id: &str, trade: &str, k: IntentKind, ticket: i64| {
        writes += 1;
        let i = intent(id, trade, k, writes);
        let (w, ds) = accept(&i, &["s1"]);
        let fin = finish(&ds[0], DeliveryStatus::Acked, Some(ticket), None);
        (w, fin)
    };
    let tickets = |s: &echo_statemachine::core::CoreDurableState| {
        s.open_tickets
            .iter()
            .map(|(t, _, k)| (t.as_str().to_string(), *k))
            .collect::<BTreeSet<_>>()
    };
    for (id, trade, k, ticket) in [
        ("p1", "t1", IntentKind::PlaceLimit, 501),
        ("p2", "t2", IntentKind::PlaceStop, 502),
        ("m1", "t1", IntentKind::PendingModify, 501),
    ] {
        let (w, fin) = step(id, trade, k, ticket);
        assert_eq!(j.write(w).await, DONE, "{id}");
        assert_eq!(j.write(fin).await, DONE, "{id}");
    }
    let want: BTreeSet<_> = [("t1".to_string(), 501), ("t2".to_string(), 502)].into();
    assert_eq!(tickets(&j.load().await.expect("load")), want);
    for (id, trade, k, ticket) in [
        ("tr1", "t1", IntentKind::PendingTrigger, 601),
        ("mo1", "t1", IntentKind::Modify, 601),
        ("c2", "t2", IntentKind::PendingCancel, 502),
    ] {
        let (w, fin) = step(id, trade, k, ticket);
        assert_eq!(j.write(w).await, DONE, "{id}");
        assert_eq!(j.write(fin).await, DONE, "{id}");
    }
    j.close().await;
    let j = env.open().await;
    let state = j.load().await.expect("load");
    let want: BTreeSet<_> = [("t1".to_string(), 601)].into();
    assert_eq!(
        tickets(&state),
        want,
        "the trigger's position, the cancel gone"
    );
    let report = j.trade(&TradeId::new("t1")).await.expect("trade");
    assert_eq!(report.open_tickets, vec![(AccountId::new("s1"), 601)]);
    j.close().await;
}

/// Ticket correlation across crashes between every step of a partial close: the fraction is
/// journaled with the delivery (a restarted core re-sends the same one), and the ticket a
/// partial close's result names (the broker moved the rest of the position) is the one a
/// restarted core's close addresses.
async fn a_partial_close_keeps_its_fraction_and_moves_the_ticket_across_restarts(kind: Kind) {
    use echo_statemachine::ids::AgentId;
    use echo_statemachine::msg::{AgentHello, AgentToCore, CommandBody, Role};
    let env = Env::new(kind).await;
    let j = env.open().await;
    let open = intent("o1", "t1", IntentKind::Open, 1);
    let (w, ods) = accept(&open, &["s1"]);
    assert_eq!(j.write(w).await, DONE);
    j.write(finish(&ods[0], DeliveryStatus::Acked, Some(71), None))
        .await;
    let part = intent("p1", "t1", IntentKind::PartialClose, 2);
    let (w, pds) = accept(&part, &["s1"]);
    assert_eq!(j.write(w).await, DONE);
    // Crash 1: after the partial close was accepted, before its result.
    j.close().await;
    drop(j);
    let j = env.open().await;
    let state = j.load().await.expect("load");
    assert_eq!(state.unfinished, loaded(&pds, &part), "fraction journaled");
    let cfg = core_config();
    let mut core = Core::recover(cfg.clone(), state, echo_statemachine::time::Instant::ZERO);
    let hello = AgentToCore::Hello(AgentHello {
        agent_id: AgentId::new("b"),
        protocol_version: echo_statemachine::msg::PROTOCOL_VERSION,
        supports_lossless_delivery: true,
        accounts: vec![(AccountId::new("s1"), Role::Slave)],
    });
    let now = echo_statemachine::time::Instant::ZERO;
    core.handle_agent_message(now, &AgentId::new("b"), hello.clone());
    let bodies = drive(&mut core, &j).await;
    assert!(
        matches!(
            bodies.as_slice(),
            [CommandBody::ClosePart { slave_ticket: 71, fraction }]
                if fraction.master_closed == 1.0 && fraction.master_volume_before == 2.0
        ),
        "the restarted core re-sends the same fraction to ticket 71: {bodies:?}"
    );
    // The partial close filled; the broker moved the remaining lots to ticket 81.
    j.write(finish(&pds[0], DeliveryStatus::Acked, Some(81), None))
        .await;
    // Crash 2: after the partial's result, before the master's close.
    j.close().await;
    drop(j);
    let j = env.open().await;
    let state = j.load().await.expect("load");
    let tickets: Vec<(String, String, i64)> = state
        .open_tickets
        .iter()
        .map(|(t, a, k)| (t.as_str().to_string(), a.as_str().to_string(), *k))
        .collect();
    assert_eq!(tickets, vec![("t1".to_string(), "s1".to_string(), 81)]);
    let cfg = CoreConfig {
        subscriptions: vec![echo_statemachine::config::Subscription::new(
            "m1", "s1", 1.0,
        )],
        ..cfg
    };
    let mut core = Core::recover(cfg, state, now);
    core.handle_agent_message(now, &AgentId::new("b"), hello);
    let master = AgentToCore::Hello(AgentHello {
        agent_id: AgentId::new("a"),
        protocol_version: echo_statemachine::msg::PROTOCOL_VERSION,
        supports_lossless_delivery: true,
        accounts: vec![(AccountId::new("m1"), Role::Master)],
    });
    core.handle_agent_message(now, &AgentId::new("a"), master);
    assert!(drive(&mut core, &j).await.is_empty(), "nothing unfinished");
    let close = intent("c1", "t1", IntentKind::Close, 3);
    core.handle_agent_message(now, &AgentId::new("a"), AgentToCore::Intent(close));
    let bodies = drive(&mut core, &j).await;
    assert_eq!(
        bodies,
        vec![CommandBody::Close {
            slave_ticket: 81,
            volume: 0.0
        }],
        "the close addresses the ticket the partial close left"
    );
    j.close().await;
}

/// Runs the core's journal writes against `j` (feeding each result back) until it is quiet;
/// returns the bodies of the commands it sent.
async fn drive(core: &mut Core, j: &Journal) -> Vec<echo_statemachine::msg::CommandBody> {
    use echo_statemachine::core::CoreOutput;
    use echo_statemachine::msg::CoreToAgent;
    let now = echo_statemachine::time::Instant::ZERO;
    let mut bodies = Vec::new();
    loop {
        let mut writes = Vec::new();
        while let Some(o) = core.poll() {
            match o {
                CoreOutput::Send {
                    msg: CoreToAgent::Command(c),
                    ..
                } => bodies.push(c.body),
                CoreOutput::Journal { op, write } => writes.push((op, write)),
                _ => {}
            }
        }
        if writes.is_empty() {
            return bodies;
        }
        for (op, write) in writes {
            let result = j.write(write).await;
            core.handle_journal_result(now, op, result);
        }
    }
}

/// A core with no subscriptions and default settings, as a restart would build it.
fn core_config() -> CoreConfig {
    CoreConfig {
        router: Default::default(),
        delivery: Default::default(),
        agent_delivery: Default::default(),
        subscriptions: vec![],
        recent_intents: 100,
    }
}

async fn reload_after_reopen_rebuilds_the_core(kind: Kind) {
    let env = Env::new(kind).await;
    let j = env.open().await;
    let mut all = Vec::new();
    for n in 0..20u64 {
        let i = intent(
            &format!("i{n}"),
            &format!("t{}", n % 5),
            IntentKind::Open,
            n + 1,
        );
        let (w, ds) = accept(&i, &["s1", "s2"]);
        assert_eq!(j.write(w).await, DONE);
        all.extend(ds);
    }
    for d in all.iter().step_by(3) {
        j.write(finish(d, DeliveryStatus::Acked, Some(7), None))
            .await;
    }
    let before = j.load().await.expect("load");
    let inflight = j.inflight(1000).await.expect("inflight");
    assert_eq!(inflight.len(), before.unfinished.len());
    j.close().await;
    drop(j);
    // A restarted core: a new journal on the same storage reads the same state back.
    let j2 = env.open().await;
    let after = j2.load().await.expect("load after reopen");
    assert_eq!(sorted(after.unfinished.clone()), sorted(before.unfinished));
    assert_eq!(after.open_tickets.len(), before.open_tickets.len());
    let cfg = core_config();
    let n = after.unfinished.len();
    let core = Core::recover(cfg, after, echo_statemachine::time::Instant::ZERO);
    assert_eq!(core.delivery_views().len(), n);
    // The reopened journal still dedupes what the first one accepted.
    let i = intent("i0", "t0", IntentKind::Open, 1);
    let (w, _) = accept(&i, &["s1", "s2"]);
    assert!(matches!(
        j2.write(w).await,
        JournalResult::Ok(JournalReply::IntentExisted { .. })
    ));
    j2.close().await;
}

async fn group_commit_answers_each_op(kind: Kind) {
    let env = Env::new(kind).await;
    let j = env.open().await;
    // 50 intents already journaled, each with s1 finished.
    let mut old = Vec::new();
    for n in 0..50u64 {
        let i = intent(
            &format!("old{n}"),
            &format!("t{n}"),
            IntentKind::Open,
            n + 1,
        );
        let (w, ds) = accept(&i, &["s1", "s2", "s3"]);
        assert_eq!(j.write(w).await, DONE);
        assert_eq!(
            j.write(finish(&ds[0], DeliveryStatus::Acked, Some(n as i64), None))
                .await,
            DONE
        );
        old.push((i, ds));
    }
    let before = j.stats();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut expected = std::collections::BTreeMap::new();
    let mut op = 0u64;
    let mut new_ds = Vec::new();
    // Hundreds of concurrent writes: new intents, duplicates of old ones, probes.
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..300u64 {
        let i = intent(
            &format!("new{n}"),
            &format!("n{n}"),
            IntentKind::Open,
            n + 1,
        );
        let (w, ds) = accept(&i, &["s1", "s2"]);
        new_ds.extend(ds);
        op += 1;
        expected.insert(op, DONE);
        let (j, tx) = (j.clone(), tx.clone());
        let id = OpId(op);
        tasks.spawn(async move { j.submit(id, w, &tx).await });
    }
    for (i, ds) in &old {
        let (w, _) = accept(i, &["s1", "s2", "s3"]);
        op += 1;
        expected.insert(
            op,
            JournalResult::Ok(JournalReply::IntentExisted {
                unfinished: vec![ds[1].clone(), ds[2].clone()],
            }),
        );
        let (j, tx) = (j.clone(), tx.clone());
        let id = OpId(op);
        tasks.spawn(async move { j.submit(id, w, &tx).await });
    }
    for _ in 0..50 {
        op += 1;
        expected.insert(op, DONE);
        let (j, tx) = (j.clone(), tx.clone());
        let id = OpId(op);
        tasks.spawn(async move { j.submit(id, JournalWrite::Probe, &tx).await });
    }
    while tasks.join_next().await.is_some() {}
    let total = expected.len();
    for _ in 0..total {
        let c = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("every op is answered")
            .expect("channel open");
        let want = expected.remove(&c.op.0).expect("each op answered once");
        let got = match c.result {
            JournalResult::Ok(JournalReply::IntentExisted { unfinished }) => {
                JournalResult::Ok(JournalReply::IntentExisted {
                    unfinished: sorted(unfinished),
                })
            }
            other => other,
        };
        assert_eq!(got, want, "op {}", c.op.0);
    }
    assert!(expected.is_empty());
    let after = j.stats();
    let ops = after.ops - before.ops;
    let txs = after.transactions - before.transactions;
    assert_eq!(ops, total as u64);
    assert!(
        txs < ops,
        "group commit: {txs} transactions for {ops} ops (largest batch {})",
        after.largest_batch
    );
    assert!(after.largest_batch > 1);
    let state = j.load().await.expect("load");
    let unfinished: BTreeSet<String> = state
        .unfinished
        .iter()
        .map(|d| d.command_id.as_str().to_string())
        .collect();
    for d in &new_ds {
        assert!(unfinished.contains(d.command_id.as_str()));
    }
    assert_eq!(unfinished.len(), new_ds.len() + 100);
    j.close().await;
}

async fn repeats_in_one_batch_insert_once(kind: Kind) {
    let env = Env::new(kind).await;
    let j = env.open().await;
    let old = intent("old", "t1", IntentKind::Open, 1);
    let (w_old, old_ds) = accept(&old, &["s1", "s2"]);
    assert_eq!(j.write(w_old.clone()).await, DONE);
    j.write(finish(&old_ds[0], DeliveryStatus::Acked, Some(5), None))
        .await;
    // Queued back to back so they share batches: a new intent twice, an old one, the new one
    // again, other new intents in between.
    let x = intent("x", "t2", IntentKind::Open, 2);
    let (w_x, x_ds) = accept(&x, &["s2", "s1", "s3"]);
    let mut writes = vec![w_x.clone()];
    for n in 0..5u64 {
        writes.push(
            accept(
                &intent(&format!("y{n}"), "t3", IntentKind::Open, 3 + n),
                &["s1"],
            )
            .0,
        );
    }
    writes.push(w_x.clone());
    writes.push(w_old);
    writes.push(w_x);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (n, w) in writes.into_iter().enumerate() {
        assert!(j.try_submit(OpId(n as u64), w, &tx));
    }
    let mut answers = std::collections::BTreeMap::new();
    for _ in 0..9 {
        let c = rx.recv().await.expect("answer");
        answers.insert(c.op.0, c.result);
    }
    let x_unfinished = JournalResult::Ok(JournalReply::IntentExisted {
        unfinished: sorted(x_ds),
    });
    let x_answers: Vec<&JournalResult> = [0u64, 6, 8].iter().map(|k| &answers[k]).collect();
    assert_eq!(x_answers.iter().filter(|r| ***r == DONE).count(), 1);
    assert_eq!(
        x_answers.iter().filter(|r| ***r == x_unfinished).count(),
        2,
        "{x_answers:?}"
    );
    for k in 1..=5 {
        assert_eq!(answers[&k], DONE);
    }
    assert_eq!(
        answers[&7],
        JournalResult::Ok(JournalReply::IntentExisted {
            unfinished: vec![old_ds[1].clone()]
        })
    );
    assert_eq!(j.load().await.expect("load").unfinished.len(), 1 + 3 + 5);
    j.close().await;
}

async fn new_work_wakes_at_once_and_poll_backstops(kind: Kind) {
    let env = Env::new(kind).await;
    let j = env.open().await;
    let mut w = j.subscribe();
    // Nothing happens: the safety poll (300 ms in tests) returns.
    let t0 = Instant::now();
    assert_eq!(w.wait().await, WakeReason::Poll);
    assert!(t0.elapsed() >= Duration::from_millis(250));
    // A commit with new deliveries wakes the waiter at once (safety polls meanwhile are
    // skipped: under load the write itself may outlast one).
    let waiter = tokio::spawn(async move {
        loop {
            let r = w.wait().await;
            if r != WakeReason::Poll {
                return (r, Instant::now());
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (aw, _) = accept(&intent("i1", "t1", IntentKind::Open, 1), &["s1"]);
    assert_eq!(j.write(aw).await, DONE);
    let answered = Instant::now();
    let (reason, woke) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("woken")
        .expect("waiter");
    assert_eq!(reason, WakeReason::Committed);
    let late = woke.saturating_duration_since(answered);
    assert!(
        late < Duration::from_millis(200),
        "woke {late:?} after the answer"
    );
    j.close().await;
}

/// SPEC.md §5.2 "Later intents of a skipped open": a restarted core reads back the opens and
/// placements the copy policy did not make (whoever decided: at intake, the slave's terms,
/// EXPIRED) of every trade still live — an open ticket or an unfinished delivery — and of no
/// other; a row failed for another reason (the broker's) is not one.
async fn policy_failed_opens_of_live_trades_are_loaded(kind: Kind) {
    let env = Env::new(kind).await;
    let j = env.open().await;
    // t1: live (s2 holds it); s1's terms refused it, s3's broker rejected it.
    let (w, ds) = accept(
        &intent("o1", "t1", IntentKind::Open, 1),
        &["s1", "s2", "s3"],
    );
    assert_eq!(j.write(w).await, DONE);
    let refuse = |d, r| finish(d, DeliveryStatus::Failed, None, Some(r));
    j.write(refuse(&ds[0], ErrorCode::MaxOpenPositions)).await;
    j.write(finish(&ds[1], DeliveryStatus::Acked, Some(72), None))
        .await;
    j.write(refuse(&ds[2], ErrorCode::BrokerRejected)).await;
    // t2: refused everywhere and nothing unfinished: not live, not read.
    let (w, ds) = accept(&intent("o2", "t2", IntentKind::Open, 2), &["s1"]);
    j.write(w).await;
    j.write(refuse(&ds[0], ErrorCode::PriceDeviation)).await;
    // t3: a placement failed at intake (journaled FAILED with its intent), its modify unfinished.
    let place = intent("p3", "t3", IntentKind::PlaceLimit, 3);
    let mut ds = accept(&place, &["s1"]).1;
    ds[0].status = DeliveryStatus::Failed;
    ds[0].reason = Some(ErrorCode::FilteredDirection);
    j.write(JournalWrite::AcceptIntent {
        intent: place,
        deliveries: ds,
    })
    .await;
    let (w, _) = accept(&intent("m3", "t3", IntentKind::PendingModify, 4), &["s1"]);
    j.write(w).await;
    // t4: EXPIRED at the core, its close unfinished.
    let (w, ds) = accept(&intent("o4", "t4", IntentKind::Open, 5), &["s1"]);
    j.write(w).await;
    j.write(refuse(&ds[0], ErrorCode::Expired)).await;
    let (w, _) = accept(&intent("c4", "t4", IntentKind::Close, 6), &["s1"]);
    j.write(w).await;
    let state = j.load().await.expect("load");
    let got: Vec<(String, Option<ErrorCode>)> = state
        .skipped_opens
        .iter()
        .map(|d| (d.command_id.as_str().to_string(), d.reason))
        .collect();
    assert_eq!(
        got,
        vec![
            ("o1@s1".to_string(), Some(ErrorCode::MaxOpenPositions)),
            ("o4@s1".into(), Some(ErrorCode::Expired)),
            ("p3@s1".into(), Some(ErrorCode::FilteredDirection)),
        ]
    );
    j.close().await;
}

async fn closed_journal_answers_retryable(kind: Kind) {
    let env = Env::new(kind).await;
    let j: Journal = env.open().await;
    j.close().await;
    assert_eq!(
        j.write(JournalWrite::Probe).await,
        JournalResult::Failed { retryable: true }
    );
}

per_backend!(
    accept_then_load,
    duplicate_intent_reports_exactly_the_unfinished,
    finish_never_regresses,
    best_effort_writes,
    open_tickets_follow_opens_and_closes,
    pending_tickets_follow_placement_trigger_and_cancel,
    a_partial_close_keeps_its_fraction_and_moves_the_ticket_across_restarts,
    reload_after_reopen_rebuilds_the_core,
    group_commit_answers_each_op,
    repeats_in_one_batch_insert_once,
    new_work_wakes_at_once_and_poll_backstops,
    closed_journal_answers_retryable,
    policy_failed_opens_of_live_trades_are_loaded,
);
