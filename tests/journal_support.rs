//! Shared by the journal suites: a fresh SQLite file or a fresh Postgres database per test,
//! dropped afterwards, and builders for intents and deliveries.
//!
//! Postgres is required: if it is not reachable the test fails with a message saying so,
//! it is never skipped. `ECHO_TEST_PG_URL` (default `postgres://postgres@127.0.0.1:5432/test`)
//! names a database the suite may connect to in order to create and drop its own.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use echo_runtime::journal::{Journal, JournalOptions, PostgresOptions};
use echo_statemachine::core::{DeliveryRecord, DeliveryStatus, JournalWrite};
use echo_statemachine::ids::{AccountId, CommandId, IntentId, Symbol, TradeId};
use echo_statemachine::msg::{AckStage, IntentKind, Side, TradeIntent};
use sqlx::Connection;

pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub fn admin_url() -> String {
    std::env::var("ECHO_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_string())
}

/// `admin_url` with its database replaced by `db` (query parameters kept).
pub fn url_for(db: &str) -> String {
    let admin = admin_url();
    let (base, query) = match admin.find('?') {
        Some(q) => (&admin[..q], &admin[q..]),
        None => (admin.as_str(), ""),
    };
    let start = base.find("://").map(|i| i + 3).unwrap_or(0);
    match base[start..].rfind('/') {
        Some(i) => format!("{}/{db}{query}", &base[..start + i]),
        None => format!("{base}/{db}{query}"),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

/// One test's private storage.
pub struct Env {
    pub kind: Kind,
    pub dir: tempfile::TempDir,
    pub db: Option<String>,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

impl Env {
    pub async fn new(kind: Kind) -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = match kind {
            Kind::Sqlite => None,
            Kind::Postgres => Some(create_database().await),
        };
        Env { kind, dir, db }
    }

    pub fn pg_url(&self) -> String {
        url_for(self.db.as_deref().expect("a Postgres env"))
    }

    pub fn pg_options(&self) -> PostgresOptions {
        PostgresOptions::new(self.pg_url())
    }

    pub fn options() -> JournalOptions {
        JournalOptions {
            safety_poll: Duration::from_millis(300),
            ..JournalOptions::default()
        }
    }

    pub async fn open(&self) -> Journal {
        self.open_with(Self::options()).await
    }

    pub async fn open_with(&self, opts: JournalOptions) -> Journal {
        match self.kind {
            Kind::Sqlite => Journal::open_sqlite_in(self.dir.path(), opts)
                .await
                .expect("open SQLite journal"),
            Kind::Postgres => Journal::open_postgres(self.pg_options(), opts)
                .await
                .expect("open Postgres journal"),
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let Some(db) = self.db.take() else { return };
        // Runs even when the test panicked; a thread of its own so no runtime is needed.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    if let Ok(mut c) = sqlx::PgConnection::connect(&admin_url()).await {
                        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                            .execute(&mut c)
                            .await;
                    }
                });
            }
        })
        .join();
    }
}

async fn create_database() -> String {
    let url = admin_url();
    let mut conn = match sqlx::PgConnection::connect(&url).await {
        Ok(c) => c,
        Err(e) => panic!(
            "Postgres is not reachable at {url}: {e}.\n\
             The journal suite runs against a real Postgres and is never skipped: start it \
             (e.g. `pg_ctlcluster 15 main start`) or point ECHO_TEST_PG_URL at one."
        ),
    };
    sweep_leftovers(&mut conn).await;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = format!(
        "echo_t_{}_{}_{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed),
        nanos % 1_000_000_000
    );
    // CREATE DATABASE copies template1 and fails while another session is in it: retry.
    let mut last = None;
    for _ in 0..20 {
        match sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
        {
            Ok(_) => return name,
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    panic!("cannot create test database {name} at {url}: {last:?}");
}

static SWEPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Drops test and bench databases whose process is gone (a run killed before its cleanup),
/// once per process. Names carry the creating pid: `echo_t_<pid>_…`, `echo_bench_<pid>`.
async fn sweep_leftovers(conn: &mut sqlx::PgConnection) {
    if SWEPT.swap(true, Ordering::SeqCst) {
        return;
    }
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT datname FROM pg_database \
         WHERE datname LIKE 'echo\\_t\\_%' OR datname LIKE 'echo\\_bench\\_%'",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap_or_default();
    for name in names {
        let pid = name
            .trim_start_matches("echo_t_")
            .trim_start_matches("echo_bench_")
            .split('_')
            .next()
            .and_then(|p| p.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut *conn)
            .await;
    }
}

pub fn intent(id: &str, trade: &str, kind: IntentKind, seq: u64) -> TradeIntent {
    TradeIntent {
        // The master's facts travel with every intent and are journaled with it.
        origin: echo_statemachine::msg::MasterFacts {
            magic: 7,
            comment: "grid #1".into(),
            order_type: echo_statemachine::msg::OrderType::Limit,
            balance: 10_000.0,
            equity: 9_850.5,
        },
        intent_id: IntentId::new(id),
        trade_id: TradeId::new(trade),
        master: AccountId::new("m1"),
        kind,
        symbol: Symbol::new("EURUSD"),
        side: Side::Buy,
        volume: 1.0,
        price: 1.1,
        stop_loss: 1.0,
        take_profit: 1.3,
        master_ticket: 1000 + seq as i64,
        master_seq: seq,
        emitted_at_ms: 1_700_000_000_000 + seq as i64,
        // A partial close of 1.0 out of the master's 2.0 lots.
        master_volume_before: if kind == IntentKind::PartialClose {
            2.0
        } else {
            0.0
        },
    }
}

pub fn delivery(i: &TradeIntent, slave: &str) -> DeliveryRecord {
    let slave = AccountId::new(slave);
    DeliveryRecord {
        terms: None,
        intent_facts: None,
        command_id: CommandId::for_delivery(&i.intent_id, &slave),
        intent_id: i.intent_id.clone(),
        trade_id: i.trade_id.clone(),
        master: i.master.clone(),
        slave,
        kind: i.kind,
        symbol: Symbol::new("EURUSD.m"),
        side: i.side,
        // A partial close carries the master's lots (the fraction's numerator), an open the
        // slave's sized lots.
        volume: if i.kind == IntentKind::PartialClose {
            i.volume
        } else {
            i.volume * 0.5
        },
        price: i.price,
        stop_loss: i.stop_loss,
        take_profit: i.take_profit,
        master_seq: i.master_seq,
        status: DeliveryStatus::Inflight,
        stage: AckStage::CoreAccepted,
        attempts: 0,
        slave_ticket: None,
        reason: None,
        master_volume_before: i.master_volume_before,
    }
}

/// `ds` (records of intent `i`) as the journal's load returns them: with the intent's facts.
pub fn loaded(ds: &[DeliveryRecord], i: &TradeIntent) -> Vec<DeliveryRecord> {
    ds.iter()
        .map(|d| DeliveryRecord {
            intent_facts: Some(Box::new(echo_statemachine::core::IntentFacts::of(i))),
            ..d.clone()
        })
        .collect()
}

/// `AcceptIntent` for `intent` fanned out to `slaves`, and the records it carries.
pub fn accept(i: &TradeIntent, slaves: &[&str]) -> (JournalWrite, Vec<DeliveryRecord>) {
    let ds: Vec<DeliveryRecord> = slaves.iter().map(|s| delivery(i, s)).collect();
    (
        JournalWrite::AcceptIntent {
            intent: i.clone(),
            deliveries: ds.clone(),
        },
        ds,
    )
}

pub fn finish(
    d: &DeliveryRecord,
    status: DeliveryStatus,
    ticket: Option<i64>,
    reason: Option<echo_statemachine::msg::ErrorCode>,
) -> JournalWrite {
    JournalWrite::FinishDelivery {
        command_id: d.command_id.clone(),
        trade_id: d.trade_id.clone(),
        slave: d.slave.clone(),
        status,
        stage: if status == DeliveryStatus::Acked {
            AckStage::EaConfirmed
        } else {
            AckStage::PipeDelivered
        },
        attempts: 2,
        slave_ticket: ticket,
        reason,
    }
}

pub fn sorted(mut v: Vec<DeliveryRecord>) -> Vec<DeliveryRecord> {
    v.sort_by(|a, b| a.command_id.cmp(&b.command_id));
    v
}

/// One `#[tokio::test]` per scenario and backend: `sqlite::NAME` and `postgres::NAME`, each
/// calling `NAME(Kind)` from the including file.
#[allow(unused_macros)]
macro_rules! per_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::Postgres).await
                }
            )*
        }
    };
}
