//! The Postgres journal (production): the `echo` schema from `migrations/`, batched writes,
//! `NOTIFY` inside the commit and the `LISTEN` task that wakes this process for work committed
//! by another.
//!
//! Owns the Postgres SQL, the migrations runner, connection settings that keep an outage short
//! (acquire and statement timeouts; the pool reconnects by itself) and the listener. It must
//! never decide about a trade, and never report a write before its transaction committed.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use echo_statemachine::core::{
    CoreDurableState, DeliveryRecord, DeliveryStatus, JournalReply, JournalWrite,
};
use echo_statemachine::ids::{AccountId, TradeId};
use echo_statemachine::msg::TradeIntent;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{PgPool, Postgres, Row, Transaction};

use super::codec::{self, seq_to_sql};
use super::pg_bulk;
use super::query::{raw_delivery, raw_intent, DELIVERY_COLUMNS, INTENT_COLUMNS};
use super::writer::BatchOk;
use super::{DeliveryRow, IntentRow, JournalError, TradeReport, WakeReason, Waker, NOTIFY_CHANNEL};

/// The migrations, applied in order, each once.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../../migrations/0001_echo_journal.sql")),
    (
        2,
        include_str!("../../../migrations/0002_echo_open_position.sql"),
    ),
    (
        3,
        include_str!("../../../migrations/0003_echo_delivery_fillfactor.sql"),
    ),
    (
        4,
        include_str!("../../../migrations/0004_echo_partial_fraction.sql"),
    ),
    (
        5,
        include_str!("../../../migrations/0005_echo_pending_orders.sql"),
    ),
    (
        6,
        include_str!("../../../migrations/0006_echo_master_facts.sql"),
    ),
];

/// Serialises migrations between processes starting at once.
const MIGRATION_LOCK: i64 = 0x6563_686f_6a6e_6c31; // "echojnl1"

/// How to reach Postgres. Its `Debug` hides a password in the URL.
#[derive(Clone)]
pub struct PostgresOptions {
    /// e.g. `postgres://echo@127.0.0.1:5432/echo`.
    pub url: String,
    /// Pool size (writers + readers + a spare).
    pub max_connections: u32,
    /// Writer tasks, each committing its own batches (more overlap network round trips).
    pub writers: usize,
    /// How long a write waits for a connection before it is answered `Failed{retryable}`:
    /// bounds how long an outage keeps a write waiting.
    pub acquire_timeout: Duration,
    /// Server-side `statement_timeout` of every statement.
    pub statement_timeout: Duration,
    /// Whether to `LISTEN` for other processes' commits.
    pub listen: bool,
    /// How often the journal vacuums and analyzes its own tables when the server's
    /// `autovacuum` is off (with it on, Postgres does this and the journal does nothing).
    pub vacuum_every: Duration,
}

impl std::fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("url", &redact(&self.url))
            .field("max_connections", &self.max_connections)
            .field("writers", &self.writers)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("listen", &self.listen)
            .field("vacuum_every", &self.vacuum_every)
            .finish()
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
fn redact(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let Some(at) = url[start..].find('@').map(|i| start + i) else {
        return url.to_string();
    };
    match url[start..at].find(':') {
        Some(colon) => format!("{}:***{}", &url[..start + colon], &url[at..]),
        None => url.to_string(),
    }
}

impl PostgresOptions {
    pub fn new(url: impl Into<String>) -> Self {
        PostgresOptions {
            url: url.into(),
            max_connections: 6,
            writers: 2,
            acquire_timeout: Duration::from_millis(1_500),
            statement_timeout: Duration::from_secs(3),
            listen: true,
            vacuum_every: Duration::from_secs(30),
        }
    }
}

#[derive(Clone)]
pub(crate) struct PgStore {
    pool: PgPool,
    /// This process's `NOTIFY` payload, so its own notifications are not taken for others'.
    instance: String,
}

static INSTANCE_SEQ: AtomicU64 = AtomicU64::new(0);

impl PgStore {
    pub(crate) async fn open(
        o: &PostgresOptions,
    ) -> Result<(PgStore, Option<PgListener>), JournalError> {
        let connect = PgConnectOptions::from_str(&o.url)?
            .application_name("echo-journal")
            .options([
                (
                    "statement_timeout",
                    o.statement_timeout.as_millis().to_string(),
                ),
                // Every statement is planned for its own parameters. A cached generic plan is
                // fixed while the tables are small (a fresh journal): `command_id = ANY($1)`
                // then stays a sequential scan for the pool connection's life, one full-table
                // scan per batch, and a long-running core slows down as its journal grows.
                ("plan_cache_mode", "force_custom_plan".to_owned()),
            ]);
        let pool = PgPoolOptions::new()
            .max_connections(o.max_connections.max(2))
            .acquire_timeout(o.acquire_timeout)
            // No ping before each batch (a round trip per commit): a dead connection fails its
            // batch retryably instead, and is replaced.
            .test_before_acquire(false)
            .connect_with(connect.clone())
            .await?;
        migrate(&pool).await?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let instance = format!(
            "{}-{}-{}",
            std::process::id(),
            nanos,
            INSTANCE_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let listener = if o.listen {
            let mut l = PgListener::connect_with(&pool).await?;
            l.listen(NOTIFY_CHANNEL).await?;
            Some(l)
        } else {
            None
        };
        if autovacuum_off(&pool).await {
            tracing::warn!(
                every_s = o.vacuum_every.as_secs_f64(),
                "Postgres autovacuum is OFF: the journal vacuums and analyzes its own tables \
                 (without it every update leaves a dead row behind and the journal slows down \
                 with history)"
            );
            tokio::spawn(vacuum_loop(connect.clone(), pool.clone(), o.vacuum_every));
        }
        Ok((PgStore { pool, instance }, listener))
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub(crate) fn instance(&self) -> &str {
        &self.instance
    }

    pub(crate) async fn run_batch(
        &mut self,
        writes: &[&JournalWrite],
    ) -> Result<BatchOk, JournalError> {
        let mut tx = self.pool.begin().await?;
        let mut replies = vec![JournalReply::Done; writes.len()];
        let mut new_work = false;
        // Every AcceptIntent of the batch in one bulk run, first: nothing else in a batch
        // touches the intent table, and the rows it inserts are the ones later writes name.
        let (at, accepts): (Vec<usize>, Vec<&JournalWrite>) = writes
            .iter()
            .enumerate()
            .filter(|(_, w)| matches!(w, JournalWrite::AcceptIntent { .. }))
            .map(|(i, w)| (i, *w))
            .unzip();
        if !accepts.is_empty() {
            let answers = accept_run(&mut tx, &accepts, &self.instance, &mut new_work).await?;
            for (i, r) in at.into_iter().zip(answers) {
                replies[i] = r;
            }
        }
        pg_bulk::apply(&mut tx, writes).await?;
        tx.commit().await?;
        Ok(BatchOk { replies, new_work })
    }
}

async fn migrate(pool: &PgPool) -> Result<(), JournalError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(
        "CREATE SCHEMA IF NOT EXISTS echo;
         CREATE TABLE IF NOT EXISTS echo.schema_migrations (
             version BIGINT PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now());",
    )
    .execute(&mut *tx)
    .await?;
    for (version, sql) in MIGRATIONS {
        let done: Option<i64> =
            sqlx::query_scalar("SELECT version FROM echo.schema_migrations WHERE version = $1")
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?;
        if done.is_some() {
            continue;
        }
        sqlx::raw_sql(sql)
            .execute(&mut *tx)
            .await
            .map_err(|source| JournalError::Migration {
                version: *version,
                source,
            })?;
        sqlx::query("INSERT INTO echo.schema_migrations (version) VALUES ($1)")
            .bind(version)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A batch's `AcceptIntent`s in bulk: one statement inserts the new intents, their
/// deliveries and the NOTIFY; one more reads the unfinished deliveries of intents that
/// already existed, if any did.
async fn accept_run(
    tx: &mut Transaction<'static, Postgres>,
    run: &[&JournalWrite],
    instance: &str,
    new_work: &mut bool,
) -> Result<Vec<JournalReply>, JournalError> {
    use std::collections::{HashMap, HashSet};
    let accepts: Vec<(&TradeIntent, &[DeliveryRecord])> = run
        .iter()
        .filter_map(|w| match w {
            JournalWrite::AcceptIntent { intent, deliveries } => {
                Some((intent, deliveries.as_slice()))
            }
            _ => None,
        })
        .collect();
    // The first write of each intent id is the one that may insert it.
    let mut first: HashMap<&str, usize> = HashMap::new();
    for (k, (i, _)) in accepts.iter().enumerate() {
        first.entry(i.intent_id.as_str()).or_insert(k);
    }
    let mut firsts: Vec<usize> = first.values().copied().collect();
    firsts.sort_unstable();
    let n = firsts.len();
    let mut c = IntentColumns::with_capacity(n);
    for &k in &firsts {
        c.push(accepts[k].0)?;
    }
    let mut d = DeliveryColumns::default();
    for &k in &firsts {
        for r in accepts[k].1 {
            d.push(r)?;
        }
    }
    // One statement: the intents not yet journaled, the deliveries of exactly those, and the
    // NOTIFY (sent on commit) if any delivery is new.
    let inserted: Vec<String> = sqlx::query_scalar(
        "WITH new_intent AS ( \
           INSERT INTO echo.trade_intent (intent_id, trade_id, master_account, kind, symbol, \
             side, volume, price, stop_loss, take_profit, master_ticket, master_seq, \
             emitted_at_ms, master_volume_before, magic, comment, order_type, master_balance, \
             master_equity) \
           SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
             $6::text[], $7::float8[], $8::float8[], $9::float8[], $10::float8[], \
             $11::int8[], $12::int8[], $13::int8[], $34::float8[], $36::int8[], $37::text[], \
             $38::text[], $39::float8[], $40::float8[]) \
           ON CONFLICT (intent_id) DO NOTHING RETURNING intent_id), \
         new_delivery AS ( \
           INSERT INTO echo.delivery_journal (command_id, intent_id, trade_id, \
             master_account, slave_account, kind, symbol, side, volume, price, stop_loss, \
             take_profit, master_seq, status, stage, attempts, slave_ticket, reason, \
             master_volume_before) \
           SELECT u.* FROM UNNEST($14::text[], $15::text[], $16::text[], $17::text[], \
             $18::text[], $19::text[], $20::text[], $21::text[], $22::float8[], \
             $23::float8[], $24::float8[], $25::float8[], $26::int8[], $27::text[], \
             $28::text[], $29::int4[], $30::int8[], $31::text[], $35::float8[]) \
             AS u(command_id, intent_id, trade_id, master_account, slave_account, kind, \
             symbol, side, volume, price, stop_loss, take_profit, master_seq, status, stage, \
             attempts, slave_ticket, reason, master_volume_before) \
           WHERE u.intent_id IN (SELECT intent_id FROM new_intent) \
           RETURNING 1), \
         notified AS ( \
           SELECT pg_notify($32, $33) WHERE EXISTS (SELECT 1 FROM new_delivery)) \
         SELECT intent_id FROM new_intent \
         WHERE (SELECT count(*) FROM notified) >= 0",
    )
    .bind(c.intent_id)
    .bind(c.trade_id)
    .bind(c.master)
    .bind(c.kind)
    .bind(c.symbol)
    .bind(c.side)
    .bind(c.volume)
    .bind(c.price)
    .bind(c.stop_loss)
    .bind(c.take_profit)
    .bind(c.master_ticket)
    .bind(c.master_seq)
    .bind(c.emitted_at_ms)
    .bind(d.command_id)
    .bind(d.intent_id)
    .bind(d.trade_id)
    .bind(d.master)
    .bind(d.slave)
    .bind(d.kind)
    .bind(d.symbol)
    .bind(d.side)
    .bind(d.volume)
    .bind(d.price)
    .bind(d.stop_loss)
    .bind(d.take_profit)
    .bind(d.master_seq)
    .bind(d.status)
    .bind(d.stage)
    .bind(d.attempts)
    .bind(d.slave_ticket)
    .bind(d.reason)
    .bind(NOTIFY_CHANNEL)
    .bind(instance)
    .bind(c.master_volume_before)
    .bind(d.master_volume_before)
    .bind(c.magic)
    .bind(c.comment)
    .bind(c.order_type)
    .bind(c.master_balance)
    .bind(c.master_equity)
    .fetch_all(&mut **tx)
    .await?;
    let inserted: HashSet<String> = inserted.into_iter().collect();
    let mut existed: Vec<&str> = Vec::new();
    for &k in &firsts {
        let (i, ds) = accepts[k];
        if inserted.contains(i.intent_id.as_str()) {
            if !ds.is_empty() {
                *new_work = true;
            }
        } else {
            existed.push(i.intent_id.as_str());
        }
    }
    let mut unfinished: HashMap<String, Vec<DeliveryRecord>> = HashMap::new();
    if !existed.is_empty() {
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM echo.delivery_journal \
             WHERE intent_id = ANY($1) AND status = 'inflight' ORDER BY command_id"
        ))
        .bind(&existed)
        .fetch_all(&mut **tx)
        .await?;
        for d in decode_deliveries(rows)? {
            unfinished
                .entry(d.intent_id.as_str().to_string())
                .or_default()
                .push(d);
        }
    }
    let mut replies = Vec::with_capacity(accepts.len());
    for (k, (i, _)) in accepts.iter().enumerate() {
        let id = i.intent_id.as_str();
        let f = first.get(id).copied().unwrap_or(k);
        let reply = if inserted.contains(id) {
            if f == k {
                JournalReply::Done
            } else {
                // A repeat of an intent inserted earlier in this run: its deliveries as just
                // written, all unfinished.
                let mut ds: Vec<DeliveryRecord> = accepts[f]
                    .1
                    .iter()
                    .filter(|d| d.status == DeliveryStatus::Inflight)
                    .cloned()
                    .collect();
                ds.sort_by(|a, b| a.command_id.cmp(&b.command_id));
                JournalReply::IntentExisted { unfinished: ds }
            }
        } else {
            JournalReply::IntentExisted {
                unfinished: unfinished.get(id).cloned().unwrap_or_default(),
            }
        };
        replies.push(reply);
    }
    Ok(replies)
}

#[derive(Default)]
struct IntentColumns<'a> {
    intent_id: Vec<&'a str>,
    trade_id: Vec<&'a str>,
    master: Vec<&'a str>,
    kind: Vec<&'static str>,
    symbol: Vec<&'a str>,
    side: Vec<&'static str>,
    volume: Vec<f64>,
    price: Vec<f64>,
    stop_loss: Vec<f64>,
    take_profit: Vec<f64>,
    master_ticket: Vec<i64>,
    master_seq: Vec<i64>,
    emitted_at_ms: Vec<i64>,
    master_volume_before: Vec<f64>,
    magic: Vec<i64>,
    comment: Vec<&'a str>,
    order_type: Vec<&'static str>,
    master_balance: Vec<f64>,
    master_equity: Vec<f64>,
}

impl<'a> IntentColumns<'a> {
    fn with_capacity(n: usize) -> Self {
        IntentColumns {
            intent_id: Vec::with_capacity(n),
            trade_id: Vec::with_capacity(n),
            master: Vec::with_capacity(n),
            kind: Vec::with_capacity(n),
            symbol: Vec::with_capacity(n),
            side: Vec::with_capacity(n),
            volume: Vec::with_capacity(n),
            price: Vec::with_capacity(n),
            stop_loss: Vec::with_capacity(n),
            take_profit: Vec::with_capacity(n),
            master_ticket: Vec::with_capacity(n),
            master_seq: Vec::with_capacity(n),
            emitted_at_ms: Vec::with_capacity(n),
            master_volume_before: Vec::with_capacity(n),
            magic: Vec::with_capacity(n),
            comment: Vec::with_capacity(n),
            order_type: Vec::with_capacity(n),
            master_balance: Vec::with_capacity(n),
            master_equity: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, i: &'a TradeIntent) -> Result<(), JournalError> {
        self.intent_id.push(i.intent_id.as_str());
        self.trade_id.push(i.trade_id.as_str());
        self.master.push(i.master.as_str());
        self.kind.push(codec::kind_str(i.kind));
        self.symbol.push(i.symbol.as_str());
        self.side.push(codec::side_str(i.side));
        self.volume.push(i.volume);
        self.price.push(i.price);
        self.stop_loss.push(i.stop_loss);
        self.take_profit.push(i.take_profit);
        self.master_ticket.push(i.master_ticket);
        self.master_seq.push(seq_to_sql(i.master_seq)?);
        self.emitted_at_ms.push(i.emitted_at_ms);
        self.master_volume_before.push(i.master_volume_before);
        self.magic.push(i.origin.magic);
        self.comment.push(i.origin.comment.as_str());
        self.order_type
            .push(codec::order_type_str(i.origin.order_type));
        self.master_balance.push(i.origin.balance);
        self.master_equity.push(i.origin.equity);
        Ok(())
    }
}

/// Delivery rows as column arrays, for `UNNEST`.
#[derive(Default)]
struct DeliveryColumns<'a> {
    command_id: Vec<&'a str>,
    intent_id: Vec<&'a str>,
    trade_id: Vec<&'a str>,
    master: Vec<&'a str>,
    slave: Vec<&'a str>,
    kind: Vec<&'static str>,
    symbol: Vec<&'a str>,
    side: Vec<&'static str>,
    volume: Vec<f64>,
    price: Vec<f64>,
    stop_loss: Vec<f64>,
    take_profit: Vec<f64>,
    master_seq: Vec<i64>,
    status: Vec<&'static str>,
    stage: Vec<&'static str>,
    attempts: Vec<i32>,
    slave_ticket: Vec<Option<i64>>,
    reason: Vec<Option<&'static str>>,
    master_volume_before: Vec<f64>,
}

impl<'a> DeliveryColumns<'a> {
    fn push(&mut self, d: &'a DeliveryRecord) -> Result<(), JournalError> {
        self.command_id.push(d.command_id.as_str());
        self.intent_id.push(d.intent_id.as_str());
        self.trade_id.push(d.trade_id.as_str());
        self.master.push(d.master.as_str());
        self.slave.push(d.slave.as_str());
        self.kind.push(codec::kind_str(d.kind));
        self.symbol.push(d.symbol.as_str());
        self.side.push(codec::side_str(d.side));
        self.volume.push(d.volume);
        self.price.push(d.price);
        self.stop_loss.push(d.stop_loss);
        self.take_profit.push(d.take_profit);
        self.master_seq.push(seq_to_sql(d.master_seq)?);
        self.status.push(codec::status_str(d.status));
        self.stage.push(codec::stage_str(d.stage));
        self.attempts.push(codec::count_to_sql(d.attempts));
        self.slave_ticket.push(d.slave_ticket);
        self.reason.push(d.reason.map(codec::reason_str));
        self.master_volume_before.push(d.master_volume_before);
        Ok(())
    }
}

fn decode_deliveries(
    rows: Vec<sqlx::postgres::PgRow>,
) -> Result<Vec<DeliveryRecord>, JournalError> {
    rows.iter()
        .map(|r| -> Result<DeliveryRecord, JournalError> { raw_delivery!(r).decode() })
        .collect()
}

super::query::read_side!(
    PgPool,
    "echo.",
    "(EXTRACT(EPOCH FROM updated_at) * 1000)::BIGINT",
    "(EXTRACT(EPOCH FROM accepted_at) * 1000)::BIGINT",
    "(EXTRACT(EPOCH FROM e.at) * 1000)::BIGINT",
    "(EXTRACT(EPOCH FROM at) * 1000)::BIGINT"
);

/// Tables whose rows are updated or deleted as deliveries progress (dead rows pile up).
const VACUUMED_TABLES: &str =
    "echo.delivery_journal, echo.open_position, echo.trade_intent, echo.delivery_retry_event";

async fn autovacuum_off(pool: &PgPool) -> bool {
    match sqlx::query_scalar::<_, String>("SHOW autovacuum")
        .fetch_one(pool)
        .await
    {
        Ok(v) => v == "off",
        Err(e) => {
            tracing::warn!(error = %e, "could not read the server's autovacuum setting");
            false
        }
    }
}

/// The journal's own `VACUUM (ANALYZE)` when the server's autovacuum is off: measured here
/// (15-minute load test, 120 intents/s × 3 slaves), without it the batch's row-lock statement
/// went from ~1 ms to 100–330 ms within five minutes and the core fell minutes behind; one
/// manual vacuum brought it back at once. A connection of its own, so a long vacuum never
/// holds a writer's pool slot; ends when the journal's pool is closed.
async fn vacuum_loop(connect: PgConnectOptions, pool: PgPool, every: Duration) {
    use sqlx::{ConnectOptions, Executor};
    let every = every.max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        if pool.is_closed() {
            return;
        }
        let started = std::time::Instant::now();
        let done = match connect.connect().await {
            Ok(mut c) => c
                .execute(format!("VACUUM (ANALYZE) {VACUUMED_TABLES}").as_str())
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        };
        match done {
            Ok(()) => tracing::debug!(
                took_ms = started.elapsed().as_millis() as u64,
                "journal tables vacuumed"
            ),
            Err(e) => tracing::warn!(error = %e, "journal vacuum failed; next try in one period"),
        }
    }
}

/// Wakes this process when another one commits new deliveries. Reconnects by itself; after a
/// reconnection it wakes once, since notifications sent meanwhile are lost.
pub(crate) async fn listen_loop(
    pool: PgPool,
    mut listener: PgListener,
    waker: Waker,
    instance: String,
) {
    loop {
        match listener.try_recv().await {
            Ok(Some(n)) => {
                if n.payload() != instance {
                    waker.wake(WakeReason::Notified);
                }
            }
            Ok(None) => {
                // The connection was lost and (eagerly) re-established.
                tracing::warn!("journal LISTEN connection lost; reconnected");
                waker.wake(WakeReason::Reconnected);
            }
            Err(e) => {
                tracing::warn!(error = %e, "journal LISTEN connection down; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                // Start over with a fresh listener; a pool that was closed ends the task.
                if pool.is_closed() {
                    return;
                }
                match PgListener::connect_with(&pool).await {
                    Ok(mut l) => {
                        if l.listen(NOTIFY_CHANNEL).await.is_ok() {
                            listener = l;
                            waker.wake(WakeReason::Reconnected);
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "journal LISTEN reconnect failed"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn debug_hides_the_password() {
        let o = super::PostgresOptions::new("postgres://echo:s3cret@db:5432/echo");
        let d = format!("{o:?}");
        assert!(!d.contains("s3cret"), "{d}");
        assert!(d.contains("postgres://echo:***@db:5432/echo"), "{d}");
        assert_eq!(
            super::redact("postgres://echo@db/x"),
            "postgres://echo@db/x"
        );
    }
}
