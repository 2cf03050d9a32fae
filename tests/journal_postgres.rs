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
use echo_statemachine::core::{JournalReply, JournalResult, JournalWrite, OpId};
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
    let (w2, ds2) = accept(&intent("i2", "t2", IntentKind::Open, 50), &["s1", "s2"]);
    let r = write_until_ok(&j, w2, Duration::from_secs(10)).await;
    assert_eq!(r, JournalReply::Done);
    let state = j.load().await.expect("load after recovery");
    for d in &ds2 {
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
