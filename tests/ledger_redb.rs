//! The agent ledger on a real redb file: writes are synced before they are reported, survive a
//! reopen and a `SIGKILL` of the writing process, and give `DeliveryManager::recover` what it
//! needs.

use std::io::Write;
use std::time::{Duration, Instant};

#[path = "crash_support.rs"]
mod crash;

use echo_runtime::ledger::{Ledger, LedgerCompletion, LEDGER_FILE};
use echo_statemachine::agent::{
    AgentLimits, DeliveryManager, LedgerOpId, LedgerRecord, LedgerResult, LedgerState,
};
use echo_statemachine::config::AgentDeliveryConfig;
use echo_statemachine::ids::{AccountId, AgentId, CommandId, IntentId, Symbol, TradeId};
use echo_statemachine::msg::{Command, CommandBody, ErrorCode, Role, Side};

fn record(n: u64, state: LedgerState) -> LedgerRecord {
    let intent = IntentId::new(format!("i{n}"));
    let slave = AccountId::new("s1");
    LedgerRecord {
        seq: n,
        command: Command {
            command_id: CommandId::for_delivery(&intent, &slave),
            intent_id: intent,
            trade_id: TradeId::new(format!("t{}", n % 7)),
            slave,
            body: if n.is_multiple_of(3) {
                CommandBody::Close {
                    slave_ticket: n as i64,
                    volume: 0.0,
                }
            } else if n % 3 == 1 && n.is_multiple_of(2) {
                // A partial close by fraction: every field survives the ledger bit for bit.
                CommandBody::ClosePart {
                    slave_ticket: n as i64,
                    fraction: echo_statemachine::msg::CloseFraction {
                        master_closed: 0.1 * n as f64,
                        master_volume_before: 0.3 * n as f64,
                        slave_min: 0.01,
                        slave_step: 0.01,
                    },
                }
            } else {
                CommandBody::Execute {
                    terms: Default::default(),
                    catch_up: false,
                    symbol: Symbol::new("EURUSD"),
                    side: Side::Buy,
                    volume: 0.1 * n as f64,
                    price: 1.1,
                    stop_loss: 1.0,
                    take_profit: 1.2,
                }
            },
        },
        state,
        attempts: (n % 4) as u32,
    }
}

async fn reopen(path: &std::path::Path) -> Ledger {
    // The previous handle's thread may still be closing the file: redb locks it per handle.
    let t0 = Instant::now();
    loop {
        match Ledger::open(path).await {
            Ok(l) => return l,
            Err(e) => {
                assert!(t0.elapsed() < Duration::from_secs(10), "reopen: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_a_reopen_in_arrival_order() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join(LEDGER_FILE);
    let l = Ledger::open(&path).await.expect("open");
    assert!(l.load().await.expect("load").is_empty());
    // Keys sort differently from arrival order: load must return seq order.
    let recs = vec![
        record(12, LedgerState::Buffered),
        record(3, LedgerState::Delivered),
        record(7, LedgerState::Completed),
        record(
            9,
            LedgerState::Rejected {
                reason: ErrorCode::EaRejected,
            },
        ),
    ];
    for r in &recs {
        assert_eq!(l.persist(r.clone()).await, LedgerResult::Ok);
    }
    // Overwrite by command id, and delete one.
    let newer = record(12, LedgerState::Delivered);
    assert_eq!(l.persist(newer.clone()).await, LedgerResult::Ok);
    l.delete(recs[2].command.command_id.clone());
    // A load after the delete sees it (requests are applied in order).
    let loaded = l.load().await.expect("load");
    assert_eq!(loaded.len(), 3);
    l.close().await;
    drop(l);

    let l = reopen(&path).await;
    let loaded = l.load().await.expect("load after reopen");
    let want = vec![recs[1].clone(), recs[3].clone(), newer];
    assert_eq!(loaded, want);
    let s = l.stats();
    assert_eq!(s.failed_commits, 0);
    l.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_gives_the_machine_its_entries() {
    let dir = tempfile::tempdir().expect("tmp");
    let l = Ledger::open_in(dir.path()).await.expect("open");
    let states = [
        LedgerState::Buffered,
        LedgerState::Delivered,
        LedgerState::Completed,
        LedgerState::Rejected {
            reason: ErrorCode::BrokerRejected,
        },
    ];
    for n in 1..=20u64 {
        let st = states[(n % 4) as usize];
        assert_eq!(l.persist(record(n, st)).await, LedgerResult::Ok);
    }
    l.close().await;
    drop(l);
    let l = reopen(&dir.path().join(LEDGER_FILE)).await;
    let records = l.load().await.expect("load");
    assert_eq!(records.len(), 20);
    let m = DeliveryManager::recover(
        AgentId::new("a1"),
        vec![(AccountId::new("s1"), Role::Slave)],
        AgentDeliveryConfig::default(),
        AgentLimits::default(),
        records,
    );
    assert_eq!(m.ledger_len(), 20);
    // Buffered and Delivered entries are still active; terminal ones are only retained.
    assert_eq!(m.active_len(), 10);
    assert_eq!(m.outstanding_ledger_ops(), 0);
    l.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_answers_every_submitted_write() {
    let dir = tempfile::tempdir().expect("tmp");
    let l = Ledger::open_in(dir.path()).await.expect("open");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<LedgerCompletion>();
    for n in 1..=500u64 {
        l.submit(LedgerOpId(n), record(n, LedgerState::Buffered), &tx);
    }
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..500 {
        let c = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("answered")
            .expect("channel");
        assert_eq!(c.result, LedgerResult::Ok);
        assert!(seen.insert(c.op.0));
    }
    let s = l.stats();
    assert_eq!(s.writes, 500);
    assert!(s.commits < 500, "{} commits for 500 writes", s.commits);
    assert_eq!(l.load().await.expect("load").len(), 500);
    l.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_come_back_bit_for_bit() {
    // The ledger stores what it is given, exactly: it is not its place to judge a price.
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join(LEDGER_FILE);
    let l = Ledger::open(&path).await.expect("open");
    let odd = [
        0.1 * 3.0,
        f64::MIN_POSITIVE,
        -0.0,
        f64::NAN,
        f64::INFINITY,
        1e300,
    ];
    for (n, v) in odd.iter().enumerate() {
        let mut r = record(n as u64 + 1, LedgerState::Buffered);
        r.command.body = CommandBody::Execute {
            terms: Default::default(),
            catch_up: false,
            symbol: Symbol::new("EURUSD"),
            side: Side::Sell,
            volume: *v,
            price: *v,
            stop_loss: *v,
            take_profit: *v,
        };
        assert_eq!(l.persist(r).await, LedgerResult::Ok);
    }
    l.close().await;
    drop(l);
    let l = reopen(&path).await;
    let loaded = l.load().await.expect("load");
    assert_eq!(loaded.len(), odd.len());
    for (r, v) in loaded.iter().zip(odd) {
        match &r.command.body {
            CommandBody::Execute { volume, price, .. } => {
                assert_eq!(volume.to_bits(), v.to_bits());
                assert_eq!(price.to_bits(), v.to_bits());
            }
            other => panic!("body changed: {other:?}"),
        }
    }
    l.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_without_close_loses_nothing_reported() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join(LEDGER_FILE);
    let l = Ledger::open(&path).await.expect("open");
    for n in 1..=50u64 {
        assert_eq!(
            l.persist(record(n, LedgerState::Buffered)).await,
            LedgerResult::Ok
        );
    }
    drop(l);
    let l = reopen(&path).await;
    assert_eq!(l.load().await.expect("load").len(), 50);
    l.close().await;
}

const CHILD_ENV: &str = "ECHO_LEDGER_CRASH_CHILD";

/// Not a test on its own: the writer process of `sigkill_loses_nothing_reported_durable`.
/// Writes records as fast as it can and prints each one the ledger reported durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child_writer() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let l = Ledger::open(std::path::Path::new(&path))
        .await
        .expect("child open");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<LedgerCompletion>();
    let mut next = 1u64;
    let mut out = std::io::stdout();
    loop {
        // Keep ~64 writes in flight, like a busy agent.
        while next < 64 + 1 + l.stats().writes {
            l.submit(LedgerOpId(next), record(next, LedgerState::Buffered), &tx);
            next += 1;
        }
        let Some(c) = rx.recv().await else { return };
        if c.result == LedgerResult::Ok {
            let _ = writeln!(out, "DURABLE {}", c.op.0);
            let _ = out.flush();
        }
    }
}

#[test]
fn sigkill_loses_nothing_reported_durable() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join(LEDGER_FILE);
    let durable = crash::kill_writer_after("crash_child_writer", CHILD_ENV, &path, 300);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let loaded = rt.block_on(async {
        let l = reopen(&path).await;
        let v = l.load().await.expect("load after SIGKILL");
        l.close().await;
        v
    });
    let have: std::collections::BTreeSet<u64> = loaded.iter().map(|r| r.seq).collect();
    for n in &durable {
        assert!(
            have.contains(n),
            "write {n} was reported durable but is gone"
        );
        let r = &loaded[loaded.iter().position(|r| r.seq == *n).expect("present")];
        assert_eq!(r, &record(*n, LedgerState::Buffered));
    }
    assert!(durable.len() >= 300);
}
