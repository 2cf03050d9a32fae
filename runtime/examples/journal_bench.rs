//! Journal benchmark (not a test): sustained `AcceptIntent` throughput and commit latency
//! with group commit, on SQLite or Postgres.
//!
//! ```text
//! cargo run --release -p echo-runtime --example journal_bench -- \
//!     --backend postgres --intents 20000 --slaves 10 --concurrency 64
//! cargo run --release -p echo-runtime --example journal_bench -- \
//!     --backend sqlite --intents 20000 --slaves 10 --rate 1000
//! ```
//! Closed loop (`--concurrency N`): N writers each submit the next intent as soon as the last
//! one is answered. Open loop (`--rate R`): intents are submitted at R per second whatever the
//! answers, latency measured from the scheduled time. Postgres: `--url` names the admin
//! database (default `postgres://postgres@127.0.0.1:5432/test`); the bench creates its own
//! database and drops it afterwards.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use echo_runtime::journal::{Journal, JournalOptions, PostgresOptions};
use echo_statemachine::core::{
    DeliveryRecord, DeliveryStatus, JournalReply, JournalResult, JournalWrite,
};
use echo_statemachine::ids::{AccountId, CommandId, IntentId, Symbol, TradeId};
use echo_statemachine::msg::{AckStage, IntentKind, Side, TradeIntent};
use sqlx::Connection;

struct Args {
    backend: String,
    intents: u64,
    slaves: usize,
    concurrency: usize,
    rate: Option<u64>,
    url: String,
    writers: usize,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        backend: "sqlite".into(),
        intents: 20_000,
        slaves: 10,
        concurrency: 64,
        rate: None,
        url: "postgres://postgres@127.0.0.1:5432/test".into(),
        writers: 2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or(format!("{k} needs a value"));
        match k.as_str() {
            "--backend" => a.backend = v()?,
            "--intents" => a.intents = v()?.parse().map_err(|e| format!("--intents: {e}"))?,
            "--slaves" => a.slaves = v()?.parse().map_err(|e| format!("--slaves: {e}"))?,
            "--concurrency" => {
                a.concurrency = v()?.parse().map_err(|e| format!("--concurrency: {e}"))?
            }
            "--rate" => a.rate = Some(v()?.parse().map_err(|e| format!("--rate: {e}"))?),
            "--url" => a.url = v()?,
            "--writers" => a.writers = v()?.parse().map_err(|e| format!("--writers: {e}"))?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

fn accept(n: u64, slaves: usize) -> JournalWrite {
    let intent = TradeIntent {
        origin: Default::default(),
        intent_id: IntentId::new(format!("bench-{n}")),
        trade_id: TradeId::new(format!("trade-{}", n / 4)),
        master: AccountId::new("m1"),
        kind: IntentKind::Open,
        symbol: Symbol::new("EURUSD"),
        side: Side::Buy,
        volume: 1.0,
        price: 1.1,
        stop_loss: 1.0,
        take_profit: 1.2,
        master_ticket: n as i64,
        master_seq: n,
        emitted_at_ms: 0,
        master_volume_before: 0.0,
    };
    let deliveries = (0..slaves)
        .map(|s| {
            let slave = AccountId::new(format!("s{s}"));
            DeliveryRecord {
                terms: None,
                intent_facts: None,
                command_id: CommandId::for_delivery(&intent.intent_id, &slave),
                intent_id: intent.intent_id.clone(),
                trade_id: intent.trade_id.clone(),
                master: intent.master.clone(),
                slave,
                kind: intent.kind,
                symbol: intent.symbol.clone(),
                side: intent.side,
                volume: intent.volume,
                price: intent.price,
                stop_loss: intent.stop_loss,
                take_profit: intent.take_profit,
                master_seq: n,
                status: DeliveryStatus::Inflight,
                stage: AckStage::CoreAccepted,
                attempts: 0,
                slave_ticket: None,
                reason: None,
                master_volume_before: 0.0,
            }
        })
        .collect();
    JournalWrite::AcceptIntent { intent, deliveries }
}

fn with_db(url: &str, db: &str) -> String {
    let start = url.find("://").map(|i| i + 3).unwrap_or(0);
    match url[start..].rfind('/') {
        Some(i) => format!("{}/{db}", &url[..start + i]),
        None => format!("{url}/{db}"),
    }
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("journal_bench: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), String> {
    let a = args()?;
    let opts = JournalOptions::default();
    let tmp = std::env::temp_dir().join(format!("echo-journal-bench-{}", std::process::id()));
    let mut pg_db = None;
    let journal = match a.backend.as_str() {
        "sqlite" => Journal::open_sqlite_in(&tmp, opts)
            .await
            .map_err(|e| e.to_string())?,
        "postgres" => {
            let db = format!("echo_bench_{}", std::process::id());
            let mut c = sqlx::PgConnection::connect(&a.url)
                .await
                .map_err(|e| format!("Postgres at {}: {e}", a.url))?;
            sqlx::query(&format!("CREATE DATABASE {db}"))
                .execute(&mut c)
                .await
                .map_err(|e| e.to_string())?;
            pg_db = Some(db.clone());
            let pg = PostgresOptions {
                writers: a.writers,
                max_connections: a.writers as u32 + 3,
                ..PostgresOptions::new(with_db(&a.url, &db))
            };
            Journal::open_postgres(pg, opts)
                .await
                .map_err(|e| e.to_string())?
        }
        other => return Err(format!("--backend sqlite|postgres, not {other}")),
    };

    let lat = Arc::new(std::sync::Mutex::new(Vec::with_capacity(
        a.intents as usize,
    )));
    let failed = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    match a.rate {
        None => {
            let next = Arc::new(AtomicU64::new(0));
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..a.concurrency.max(1) {
                let (j, next, lat, failed) =
                    (journal.clone(), next.clone(), lat.clone(), failed.clone());
                let (n_max, slaves) = (a.intents, a.slaves);
                tasks.spawn(async move {
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= n_max {
                            return;
                        }
                        let w = accept(n, slaves);
                        let t = Instant::now();
                        let r = j.write(w).await;
                        let d = t.elapsed();
                        if r != JournalResult::Ok(JournalReply::Done) {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        if let Ok(mut l) = lat.lock() {
                            l.push(d);
                        }
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
        }
        Some(rate) => {
            let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
            let mut tasks = tokio::task::JoinSet::new();
            for n in 0..a.intents {
                let due = t0 + period.mul_f64(n as f64);
                tokio::time::sleep_until(due.into()).await;
                let (j, lat, failed) = (journal.clone(), lat.clone(), failed.clone());
                let w = accept(n, a.slaves);
                tasks.spawn(async move {
                    let r = j.write(w).await;
                    let d = due.elapsed();
                    if r != JournalResult::Ok(JournalReply::Done) {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Ok(mut l) = lat.lock() {
                        l.push(d);
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
        }
    }
    let elapsed = t0.elapsed();
    let stats = journal.stats();
    journal.close().await;

    let mut l = lat.lock().map(|l| l.clone()).unwrap_or_default();
    l.sort();
    let pct = |p: f64| -> f64 {
        if l.is_empty() {
            return 0.0;
        }
        let i = ((l.len() as f64 - 1.0) * p).round() as usize;
        l[i.min(l.len() - 1)].as_secs_f64() * 1e3
    };
    let mode = match a.rate {
        Some(r) => format!("open loop at {r} intents/s"),
        None => format!("closed loop, concurrency {}", a.concurrency),
    };
    println!(
        "backend {} | {} intents x {} slaves | {mode}",
        a.backend, a.intents, a.slaves
    );
    println!(
        "sustained {:.0} intents/s ({:.0} delivery rows/s) over {:.2}s; failed {}",
        a.intents as f64 / elapsed.as_secs_f64(),
        (a.intents * a.slaves as u64) as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        failed.load(Ordering::Relaxed)
    );
    println!(
        "commit latency ms: p50 {:.2}  p99 {:.2}  max {:.2}",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    println!(
        "group commit: {} writes in {} transactions (avg {:.1} per transaction, largest {})",
        stats.ops,
        stats.transactions,
        stats.ops as f64 / stats.transactions.max(1) as f64,
        stats.largest_batch
    );

    if let Some(db) = pg_db {
        if let Ok(mut c) = sqlx::PgConnection::connect(&a.url).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                .execute(&mut c)
                .await;
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
