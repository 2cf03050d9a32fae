//! Postgres-only journal behaviour against a real server: outages (connections cut by a proxy
//! that is switched off, backends terminated by `pg_terminate_backend`, a closed port),
//! recovery without a restart, and `LISTEN/NOTIFY` wake-ups between two journals (two
//! processes' worth of connections).

#[path = "journal_support.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use echo_runtime::journal::{Journal, PostgresOptions, WakeReason};
use echo_statemachine::core::{DeliveryStatus, JournalReply, JournalResult, JournalWrite, OpId};
use echo_statemachine::msg::IntentKind;
use sqlx::Connection;
use support::*;
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy in front of Postgres that can be switched off (cutting every connection and
/// refusing new ones) and on again: a database outage without stopping the shared server.
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (u, c) = (up.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !u.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let target = target.clone();
                let h = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                if let Ok(mut v) = c.lock() {
                    v.push(h.abort_handle());
                }
            }
        });
        Proxy {
            addr,
            up,
            conns,
            accept,
        }
    }

    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        if let Ok(mut v) = self.conns.lock() {
            for h in v.drain(..) {
                h.abort();
            }
        }
    }

    fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.down();
        self.accept.abort();
    }
}

/// host:port of a postgres URL.
fn authority(url: &str) -> String {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let rest = rest.split('/').next().unwrap_or(rest);
    let hostport = rest.rsplit('@').next().unwrap_or(rest);
    if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:5432")
    }
}

/// `url` with its host:port replaced by `addr`.
fn via(url: &str, addr: SocketAddr) -> String {
    url.replacen(&authority(url), &addr.to_string(), 1)
}

fn fast_fail(url: String) -> PostgresOptions {
    PostgresOptions {
        acquire_timeout: Duration::from_millis(800),
        statement_timeout: Duration::from_secs(2),
        ..PostgresOptions::new(url)
    }
}

/// Writes `w` until it is answered Ok, asserting every failure on the way is retryable.
async fn write_until_ok(j: &Journal, w: JournalWrite, within: Duration) -> JournalReply {
    let t0 = Instant::now();
    loop {
        match j.write(w.clone()).await {
            JournalResult::Ok(r) => return r,
            JournalResult::Failed { retryable } => {
                assert!(retryable, "an outage must be answered retryable");
                assert!(
                    t0.elapsed() < within,
                    "the journal did not recover within {within:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_answers_retryable_promptly_and_heals_by_itself() {
    let env = Env::new(Kind::Postgres).await;
    let proxy = Proxy::start(authority(&env.pg_url())).await;
    let j = Journal::open_postgres(fast_fail(via(&env.pg_url(), proxy.addr)), Env::options())
        .await
        .expect("open through proxy");
    let (w1, _) = accept(&intent("i1", "t1", IntentKind::Open, 1), &["s1", "s2"]);
    assert_eq!(j.write(w1).await, JournalResult::Ok(JournalReply::Done));

    proxy.down();
    // Many writes queued during the outage: every one is answered Failed{retryable}, promptly.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let t0 = Instant::now();
    for n in 0..20u64 {
        let (w, _) = accept(
            &intent(&format!("x{n}"), "t2", IntentKind::Open, n + 2),
            &["s1"],
        );
        j.submit(OpId(n), w, &tx).await;
    }
    for _ in 0..20 {
        let c = tokio::time::timeout(Duration::from_secs(15), rx.recv())
            .await
            .expect("answered during the outage")
            .expect("channel");
        assert_eq!(c.result, JournalResult::Failed { retryable: true });
    }
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(12),
        "outage answers took {took:?}"
    );
    let t1 = Instant::now();
    assert_eq!(
        j.write(JournalWrite::Probe).await,
        JournalResult::Failed { retryable: true }
    );
    assert!(
        t1.elapsed() < Duration::from_secs(5),
        "probe took {:?}",
        t1.elapsed()
    );

    proxy.up();
    // No reopen: the pool reconnects by itself.
    write_until_ok(&j, JournalWrite::Probe, Duration::from_secs(20)).await;
    let i2 = intent("i2", "t2", IntentKind::Open, 50);
    let (w2, ds2) = accept(&i2, &["s1", "s2"]);
    let r = write_until_ok(&j, w2, Duration::from_secs(10)).await;
    assert_eq!(r, JournalReply::Done);
    let state = j.load().await.expect("load after recovery");
    for d in &loaded(&ds2, &i2) {
        assert!(state.unfinished.contains(d));
    }
    // None of the writes answered Failed during the outage reached the journal.
    assert_eq!(state.unfinished.len(), 4);
    j.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_backends_are_replaced() {
    let env = Env::new(Kind::Postgres).await;
    let j = Journal::open_postgres(fast_fail(env.pg_url()), Env::options())
        .await
        .expect("open");
    let mut waiter = j.subscribe();
    let (w, _) = accept(&intent("i1", "t1", IntentKind::Open, 1), &["s1"]);
    assert_eq!(j.write(w).await, JournalResult::Ok(JournalReply::Done));
    assert_eq!(waiter.wait().await, WakeReason::Committed);

    let mut admin = sqlx::PgConnection::connect(&admin_url())
        .await
        .expect("admin connection");
    let db = env.db.clone().expect("db");
    let killed: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&db)
    .fetch_all(&mut admin)
    .await
    .expect("list backends");
    assert!(!killed.is_empty(), "the journal holds connections");
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&db)
    .execute(&mut admin)
    .await
    .expect("terminate");

    for n in 2..12u64 {
        let (w, _) = accept(
            &intent(&format!("i{n}"), "t1", IntentKind::Open, n),
            &["s1"],
        );
        let r = write_until_ok(&j, w, Duration::from_secs(15)).await;
        assert!(matches!(
            r,
            JournalReply::Done | JournalReply::IntentExisted { .. }
        ));
    }
    let state = j.load().await.expect("load");
    assert_eq!(state.unfinished.len(), 11);
    // The LISTEN connection was terminated too; it comes back by itself: another process's
    // commit wakes this one again.
    let other = Journal::open_postgres(env.pg_options(), Env::options())
        .await
        .expect("open other");
    let t0 = Instant::now();
    let mut n = 100u64;
    'woken: loop {
        n += 1;
        let (w, _) = accept(
            &intent(&format!("o{n}"), "t9", IntentKind::Open, n),
            &["s1"],
        );
        assert_eq!(other.write(w).await, JournalResult::Ok(JournalReply::Done));
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            if let Ok(WakeReason::Notified) =
                tokio::time::timeout(Duration::from_millis(500), waiter.wait()).await
            {
                break 'woken;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "the listener did not come back"
        );
    }
    other.close().await;
    j.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wakes_another_process_and_not_itself() {
    let env = Env::new(Kind::Postgres).await;
    let a = Journal::open_postgres(env.pg_options(), Env::options())
        .await
        .expect("open a");
    let b = Journal::open_postgres(env.pg_options(), Env::options())
        .await
        .expect("open b");
    let mut wa = a.subscribe();
    let mut wb = b.subscribe();
    let waiter = tokio::spawn(async move {
        loop {
            let r = wa.wait().await;
            if r != WakeReason::Poll {
                return (r, Instant::now());
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    let (w, _) = accept(&intent("i1", "t1", IntentKind::Open, 1), &["s1"]);
    assert_eq!(b.write(w).await, JournalResult::Ok(JournalReply::Done));
    let answered = Instant::now();
    let (reason, woke) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("woken")
        .expect("waiter");
    assert_eq!(reason, WakeReason::Notified);
    let late = woke.saturating_duration_since(answered);
    assert!(
        late < Duration::from_millis(500),
        "woke {late:?} after the commit"
    );
    // The writer itself is woken in-process, and its own NOTIFY is not taken for another's.
    assert_eq!(wb.wait().await, WakeReason::Committed);
    assert_eq!(wb.wait().await, WakeReason::Poll);
    // Writes that add no deliveries wake nobody.
    assert_eq!(
        b.write(JournalWrite::Probe).await,
        JournalResult::Ok(JournalReply::Done)
    );
    assert_eq!(wb.wait().await, WakeReason::Poll);
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_at_open_is_a_clear_retryable_error() {
    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let url = via(&url_for("test"), closed);
    let t0 = Instant::now();
    let r = Journal::open_postgres(fast_fail(url), Env::options()).await;
    let e = match r {
        Ok(_) => panic!("opened a journal on a closed port"),
        Err(e) => e,
    };
    assert!(e.is_retryable(), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(e.to_string().contains("journal database error"), "{e}");
}

/// Postgres writes a batch's stage updates, finishes, retry events and rejections as a few set
/// statements. Whatever the grouping, the journal must end exactly as the same writes applied
/// one by one in order (SQLite's way): repeated command ids, a stage going backwards, a finish
/// after a finish, and an OPEN and a CLOSE of one (trade, slave) finished in one batch in both
/// orders. The writer is held on a row lock while the whole sequence queues, so it lands in one
/// batch (checked through the journal's stats).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bulk_batch_ends_as_the_writes_one_by_one() {
    use echo_statemachine::core::DeliveryStatus;
    use echo_statemachine::ids::TradeId;
    use echo_statemachine::msg::{AckStage, ErrorCode};

    let o1 = intent("o1", "t1", IntentKind::Open, 1);
    let m1 = intent("m1", "t1", IntentKind::Modify, 2);
    let c1 = intent("c1", "t1", IntentKind::Close, 3);
    let o2 = intent("o2", "t2", IntentKind::Open, 1);
    let gate = intent("g", "t9", IntentKind::Open, 1);
    let (a_o1, o1d) = accept(&o1, &["s1", "s2", "s3"]);
    let (a_m1, m1d) = accept(&m1, &["s1", "s2"]);
    let (a_c1, c1d) = accept(&c1, &["s1", "s2", "s3"]);
    let (a_o2, o2d) = accept(&o2, &["s1"]);
    let (a_gate, gated) = accept(&gate, &["s1"]);
    let seed = vec![a_o1, a_m1, a_c1, a_o2, a_gate];
    let stage = |d: &echo_statemachine::core::DeliveryRecord, s: AckStage, a: u32| {
        JournalWrite::UpdateStage {
            command_id: d.command_id.clone(),
            stage: s,
            attempts: a,
        }
    };
    let batch = vec![
        stage(&o1d[0], AckStage::AgentBuffered, 1),
        stage(&o1d[0], AckStage::PipeDelivered, 2),
        stage(&o1d[1], AckStage::PipeDelivered, 3),
        // Backwards: changes nothing, not even attempts.
        stage(&o1d[1], AckStage::AgentBuffered, 9),
        finish(&o1d[0], DeliveryStatus::Acked, Some(71), None),
        // After the finish: the row is final.
        stage(&o1d[0], AckStage::EaConfirmed, 5),
        finish(
            &o1d[0],
            DeliveryStatus::Failed,
            None,
            Some(ErrorCode::BrokerRejected),
        ),
        // OPEN then CLOSE of (t1, s1) in one batch: no position left.
        finish(&c1d[0], DeliveryStatus::Acked, Some(71), None),
        finish(&o1d[1], DeliveryStatus::Acked, Some(72), None),
        // CLOSE then OPEN of (t1, s3): the close finds nothing, the open stays.
        finish(&c1d[2], DeliveryStatus::Acked, None, None),
        finish(&o1d[2], DeliveryStatus::Acked, Some(73), None),
        JournalWrite::RecordRetry {
            command_id: m1d[0].command_id.clone(),
            attempt: 2,
            stage: AckStage::AgentBuffered,
            reason: ErrorCode::MaxRetries,
        },
        JournalWrite::RecordRejection {
            intent_id: echo_statemachine::ids::IntentId::new("busy1"),
            trade_id: TradeId::new("t1"),
            worker: 3,
            reason: ErrorCode::BrokerBusy,
        },
        JournalWrite::Probe,
        finish(&o2d[0], DeliveryStatus::Acked, Some(90), None),
        finish(
            &m1d[1],
            DeliveryStatus::Failed,
            None,
            Some(ErrorCode::BrokerRejected),
        ),
        stage(&m1d[0], AckStage::AgentBuffered, 1),
        stage(&m1d[0], AckStage::AgentBuffered, 4),
        // A later, higher stage with fewer attempts does not make the first update redundant:
        // the row keeps 3 attempts.
        stage(&c1d[1], AckStage::AgentBuffered, 3),
        stage(&c1d[1], AckStage::PipeDelivered, 2),
    ];

    // The reference: SQLite, one write at a time.
    let reference = Env::new(Kind::Sqlite).await;
    let rj = reference.open().await;
    let gate_write = stage(&gated[0], AckStage::AgentBuffered, 1);
    for w in seed.iter().chain([&gate_write]).chain(batch.iter()) {
        assert!(matches!(rj.write(w.clone()).await, JournalResult::Ok(_)));
    }

    // Postgres, one writer, the batch held back behind a locked row.
    let env = Env::new(Kind::Postgres).await;
    let mut pg = env.pg_options();
    pg.writers = 1;
    let j = Journal::open_postgres(pg, Env::options())
        .await
        .expect("open Postgres journal");
    for w in &seed {
        assert!(matches!(j.write(w.clone()).await, JournalResult::Ok(_)));
    }
    let mut locker = sqlx::PgConnection::connect(&env.pg_url())
        .await
        .expect("connect the locker");
    sqlx::query("BEGIN")
        .execute(&mut locker)
        .await
        .expect("begin");
    sqlx::query("SELECT 1 FROM echo.delivery_journal WHERE command_id = $1 FOR UPDATE")
        .bind(gated[0].command_id.as_str())
        .execute(&mut locker)
        .await
        .expect("lock the gate row");
    let before = j.stats();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // The gate write blocks the writer on the locked row...
    j.submit(OpId(0), gate_write, &tx).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...while the whole sequence queues behind it.
    for (n, w) in batch.iter().enumerate() {
        j.submit(OpId(n as u64 + 1), w.clone(), &tx).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query("COMMIT")
        .execute(&mut locker)
        .await
        .expect("commit");
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..=batch.len() {
        let c = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("every write is answered")
            .expect("channel open");
        assert_eq!(
            c.result,
            JournalResult::Ok(JournalReply::Done),
            "op {}",
            c.op.0
        );
        assert!(answered.insert(c.op.0), "op {} answered twice", c.op.0);
    }
    let after = j.stats();
    assert_eq!(
        after.transactions - before.transactions,
        2,
        "the gate write, then the whole sequence as one batch"
    );
    assert!(after.largest_batch >= batch.len() as u64);

    // Same journal, row for row.
    let (want, got) = (
        rj.load().await.expect("load"),
        j.load().await.expect("load"),
    );
    assert_eq!(sorted(got.unfinished), sorted(want.unfinished));
    let (mut wt, mut gt) = (want.open_tickets, got.open_tickets);
    wt.sort();
    gt.sort();
    assert_eq!(gt, wt);
    assert!(gt
        .iter()
        .any(|(t, a, k)| t.as_str() == "t1" && a.as_str() == "s3" && *k == 73));
    assert!(!gt
        .iter()
        .any(|(t, a, _)| t.as_str() == "t1" && a.as_str() == "s1"));
    for trade in ["t1", "t2"] {
        let (w, g) = (
            rj.trade(&TradeId::new(trade)).await.expect("trade"),
            j.trade(&TradeId::new(trade)).await.expect("trade"),
        );
        let records = |r: &echo_runtime::journal::TradeReport| {
            sorted(r.deliveries.iter().map(|d| d.record.clone()).collect())
        };
        assert_eq!(records(&g), records(&w), "deliveries of {trade}");
        let retries = |r: &echo_runtime::journal::TradeReport| {
            r.retries
                .iter()
                .map(|e| (e.command_id.clone(), e.attempt, e.stage, e.reason))
                .collect::<Vec<_>>()
        };
        assert_eq!(retries(&g), retries(&w), "retry events of {trade}");
        let rejections = |r: &echo_runtime::journal::TradeReport| {
            r.rejections
                .iter()
                .map(|e| (e.intent_id.clone(), e.trade_id.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(rejections(&g), rejections(&w), "rejections of {trade}");
        let mut ot = (w.open_tickets.clone(), g.open_tickets.clone());
        ot.0.sort();
        ot.1.sort();
        assert_eq!(ot.1, ot.0);
    }
    j.close().await;
    rj.close().await;
}

/// With the server's autovacuum off (as on this machine kind), the journal vacuums its own
/// tables every `vacuum_every`; with it on, the journal leaves that to Postgres. Without it a
/// long run slowed down with history until the core fell minutes behind (SPEC.md §4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_vacuums_its_tables_when_autovacuum_is_off() {
    let env = Env::new(Kind::Postgres).await;
    let mut admin = sqlx::PgConnection::connect(&env.pg_url())
        .await
        .expect("connection to the test database");
    let autovacuum: String = sqlx::query_scalar("SHOW autovacuum")
        .fetch_one(&mut admin)
        .await
        .expect("SHOW autovacuum");
    let pg = PostgresOptions {
        vacuum_every: Duration::from_millis(200),
        ..env.pg_options()
    };
    let j = Journal::open_postgres(pg, Env::options())
        .await
        .expect("open");
    let (w, _) = accept(&intent("i1", "t1", IntentKind::Open, 1), &["s1"]);
    assert_eq!(j.write(w).await, JournalResult::Ok(JournalReply::Done));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = 0;
    while Instant::now() < deadline {
        seen = sqlx::query_scalar::<_, i64>(
            "SELECT vacuum_count FROM pg_stat_user_tables \
             WHERE schemaname = 'echo' AND relname = 'delivery_journal'",
        )
        .fetch_one(&mut admin)
        .await
        .expect("vacuum_count");
        if seen > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if autovacuum == "off" {
        assert!(
            seen > 0,
            "autovacuum is off and the journal never vacuumed its tables"
        );
    } else {
        // Postgres vacuums (counted in autovacuum_count); the journal must not add its own.
        assert_eq!(
            seen, 0,
            "autovacuum is on, yet the journal ran VACUUM itself"
        );
    }
    j.close().await;
}

/// The batch statements find their rows by index however the table grew since the journal's
/// connections first ran them. Postgres caches a prepared statement's generic plan after five
/// executions; made while the table is small (a fresh journal), it is a sequential scan, kept for
/// the connection's life — every batch then reads the whole delivery table, and a core slows
/// down as its journal grows (found by `e2e_bench`: 60 % of the CPU in one statement).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_statements_stay_index_lookups_as_the_table_grows() {
    let env = Env::new(Kind::Postgres).await;
    let pg = PostgresOptions {
        // One writer, one pool connection doing the work; no vacuum (ANALYZE would replan).
        writers: 1,
        max_connections: 2,
        vacuum_every: Duration::from_secs(3600),
        ..env.pg_options()
    };
    let j = Journal::open_postgres(pg, Env::options())
        .await
        .expect("open");
    // Phase 1, a small table (20 intents × 10 slaves): batches of two stage updates, each
    // batch its own transaction, so every pool connection runs the statements many times.
    let slaves: Vec<String> = (0..10).map(|s| format!("s{s}")).collect();
    let slave_refs: Vec<&str> = slaves.iter().map(String::as_str).collect();
    let mut small = Vec::new();
    for n in 0..20u64 {
        let (w, ds) = accept(
            &intent(&format!("i{n}"), &format!("t{n}"), IntentKind::Open, n),
            &slave_refs,
        );
        assert_eq!(j.write(w).await, JournalResult::Ok(JournalReply::Done));
        small.extend(ds);
    }
    let stage = |d: &echo_statemachine::core::DeliveryRecord, stage| JournalWrite::UpdateStage {
        command_id: d.command_id.clone(),
        stage,
        attempts: 1,
    };
    for pair in small[..48].chunks(2) {
        let (a, b) = tokio::join!(
            j.write(stage(
                &pair[0],
                echo_statemachine::msg::AckStage::AgentBuffered
            )),
            j.write(stage(
                &pair[1],
                echo_statemachine::msg::AckStage::AgentBuffered
            )),
        );
        assert_eq!(a, JournalResult::Ok(JournalReply::Done));
        assert_eq!(b, JournalResult::Ok(JournalReply::Done));
    }
    // Phase 2: the table grows to 40 000 deliveries behind the journal's back.
    let mut admin = sqlx::PgConnection::connect(&env.pg_url())
        .await
        .expect("connection to the test database");
    sqlx::query(
        "INSERT INTO echo.trade_intent (intent_id, trade_id, master_account, kind, symbol, side, \
         volume, price, stop_loss, take_profit, master_ticket, master_seq, emitted_at_ms) \
         SELECT 'g' || g, 'tg' || g, 'm1', 'OPEN', 'EURUSD', 'BUY', 1, 1, 0, 0, g, g, 0 \
         FROM generate_series(1, 4000) g",
    )
    .execute(&mut admin)
    .await
    .expect("grow trade_intent");
    sqlx::query(
        "INSERT INTO echo.delivery_journal (command_id, intent_id, trade_id, master_account, \
         slave_account, kind, symbol, side, volume, price, stop_loss, take_profit, master_seq, \
         status, stage) \
         SELECT 'g' || g || '@s' || s, 'g' || g, 'tg' || g, 'm1', 's' || s, 'OPEN', 'EURUSD', \
         'BUY', 1, 1, 0, 0, g, 'acked', 'EA_CONFIRMED' \
         FROM generate_series(1, 4000) g, generate_series(1, 10) s",
    )
    .execute(&mut admin)
    .await
    .expect("grow delivery_journal");
    let scans_before = seq_scans_after_flush(&mut admin).await;
    // Phase 3: forty more batches of two on the grown table.
    for pair in small[48..128].chunks(2) {
        let (a, b) = tokio::join!(
            j.write(stage(
                &pair[0],
                echo_statemachine::msg::AckStage::PipeDelivered
            )),
            j.write(finish(&pair[1], DeliveryStatus::Acked, Some(7), None)),
        );
        assert_eq!(a, JournalResult::Ok(JournalReply::Done));
        assert_eq!(b, JournalResult::Ok(JournalReply::Done));
    }
    // Closing ends the journal's backends, which flush their statistics as they exit.
    j.close().await;
    let scans = seq_scans_after_flush(&mut admin).await - scans_before;
    eprintln!("sequential scans of delivery_journal in phase 3: {scans}");
    assert!(
        scans < 5,
        "{scans} sequential scans of delivery_journal over 40 batches on a 40 000-row table: \
         a batch statement reads the whole table"
    );
}

/// `seq_scan` of `echo.delivery_journal` once no journal backend is left to flush more.
async fn seq_scans_after_flush(admin: &mut sqlx::PgConnection) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = -1;
    let mut stable = 0;
    loop {
        sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(&mut *admin)
            .await
            .expect("clear stats snapshot");
        let n: i64 = sqlx::query_scalar(
            "SELECT seq_scan FROM pg_stat_user_tables \
             WHERE schemaname = 'echo' AND relname = 'delivery_journal'",
        )
        .fetch_one(&mut *admin)
        .await
        .expect("seq_scan");
        // A busy backend flushes its counters at most once a second, an idle one within ten.
        stable = if n == last { stable + 1 } else { 0 };
        if stable >= 12 || Instant::now() > deadline {
            return n;
        }
        last = n;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
