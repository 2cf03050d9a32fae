//! The SQLite journal (the embedded default): one file in the data dir, `journal_mode=WAL`,
//! `synchronous=FULL` (a commit returns only after the WAL is fsynced), the schema from
//! `migrations/sqlite/`.
//!
//! Owns the SQLite SQL and file settings. It must never decide about a trade, and never report
//! a write before its transaction committed. One process owns the file; the wake-up is the
//! in-process signal only (there is no other process to notify).

use std::path::Path;
use std::time::Duration;

use echo_statemachine::core::{
    CoreDurableState, DeliveryRecord, DeliveryStatus, JournalReply, JournalWrite,
};
use echo_statemachine::ids::{AccountId, TradeId};
use echo_statemachine::msg::TicketEffect;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, SqlitePool, Transaction};

use super::codec::{self, seq_to_sql};
use super::query::{raw_delivery, raw_intent, DELIVERY_COLUMNS, INTENT_COLUMNS};
use super::writer::BatchOk;
use super::{DeliveryRow, IntentRow, JournalError, TradeReport};

const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        include_str!("../../../migrations/sqlite/0001_echo_journal.sql"),
    ),
    (
        2,
        include_str!("../../../migrations/sqlite/0002_echo_partial_fraction.sql"),
    ),
    (
        3,
        include_str!("../../../migrations/sqlite/0003_echo_pending_orders.sql"),
    ),
    (
        4,
        include_str!("../../../migrations/sqlite/0004_echo_master_facts.sql"),
    ),
];

pub(crate) struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    pub(crate) async fn open(path: &Path) -> Result<SqliteStore, JournalError> {
        let connect = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(connect)
            .await?;
        migrate(&pool).await?;
        Ok(SqliteStore { pool })
    }

    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub(crate) async fn run_batch(
        &mut self,
        writes: &[&JournalWrite],
    ) -> Result<BatchOk, JournalError> {
        let mut tx = self.pool.begin().await?;
        let mut replies = Vec::with_capacity(writes.len());
        let mut new_work = false;
        for w in writes {
            replies.push(apply(&mut tx, w, &mut new_work).await?);
        }
        tx.commit().await?;
        Ok(BatchOk { replies, new_work })
    }
}

/// Applies the missing migrations in one transaction, with foreign keys off so a table can be
/// rebuilt (SQLite's own procedure for schema changes ALTER TABLE cannot make: create, copy,
/// drop, rename); `PRAGMA foreign_key_check` must find nothing before the commit.
async fn migrate(pool: &SqlitePool) -> Result<(), JournalError> {
    let mut conn = pool.acquire().await?;
    // A no-op inside a transaction, so it is set before the transaction begins.
    sqlx::query("PRAGMA foreign_keys = OFF")
        .execute(&mut *conn)
        .await?;
    let applied = migrate_on(&mut conn).await;
    sqlx::query("PRAGMA foreign_keys = ON")
        .execute(&mut *conn)
        .await?;
    applied
}

async fn migrate_on(conn: &mut sqlx::SqliteConnection) -> Result<(), JournalError> {
    use sqlx::Connection as _;
    let mut tx = conn.begin().await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version INTEGER PRIMARY KEY,
             applied_at INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)));",
    )
    .execute(&mut *tx)
    .await?;
    for (version, sql) in MIGRATIONS {
        let done: Option<i64> =
            sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = ?1")
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
        sqlx::query("INSERT INTO schema_migrations (version) VALUES (?1)")
            .bind(version)
            .execute(&mut *tx)
            .await?;
    }
    let broken: Vec<SqliteRow> = sqlx::query("PRAGMA foreign_key_check")
        .fetch_all(&mut *tx)
        .await?;
    if !broken.is_empty() {
        return Err(JournalError::Corrupt {
            column: "foreign_key_check",
            value: format!("{} rows break a foreign key after migrating", broken.len()),
        });
    }
    tx.commit().await?;
    Ok(())
}

super::shared_writes::shared_writes!(
    Sqlite,
    "",
    "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"
);

async fn apply(
    tx: &mut Transaction<'static, Sqlite>,
    w: &JournalWrite,
    new_work: &mut bool,
) -> Result<JournalReply, JournalError> {
    match w {
        JournalWrite::AcceptIntent { intent, deliveries } => {
            let inserted = sqlx::query(
                "INSERT INTO trade_intent (intent_id, trade_id, master_account, kind, symbol, \
                 side, volume, price, stop_loss, take_profit, master_ticket, master_seq, \
                 emitted_at_ms, master_volume_before, magic, comment, order_type, \
                 master_balance, master_equity) \
                 VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19) \
                 ON CONFLICT (intent_id) DO NOTHING",
            )
            .bind(intent.intent_id.as_str())
            .bind(intent.trade_id.as_str())
            .bind(intent.master.as_str())
            .bind(codec::kind_str(intent.kind))
            .bind(intent.symbol.as_str())
            .bind(codec::side_str(intent.side))
            .bind(intent.volume)
            .bind(intent.price)
            .bind(intent.stop_loss)
            .bind(intent.take_profit)
            .bind(intent.master_ticket)
            .bind(seq_to_sql(intent.master_seq)?)
            .bind(intent.emitted_at_ms)
            .bind(intent.master_volume_before)
            .bind(intent.origin.magic)
            .bind(intent.origin.comment.as_str())
            .bind(codec::order_type_str(intent.origin.order_type))
            .bind(intent.origin.balance)
            .bind(intent.origin.equity)
            .execute(&mut **tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                let rows = sqlx::query(&format!(
                    "SELECT {DELIVERY_COLUMNS} FROM delivery_journal \
                     WHERE intent_id = ?1 AND status = 'inflight' ORDER BY command_id"
                ))
                .bind(intent.intent_id.as_str())
                .fetch_all(&mut **tx)
                .await?;
                let unfinished = decode_deliveries(rows)?;
                return Ok(JournalReply::IntentExisted { unfinished });
            }
            // Many rows per statement (SQLite allows 32766 parameters; 19 per row).
            for chunk in deliveries.chunks(500) {
                insert_deliveries(tx, chunk).await?;
            }
            if !deliveries.is_empty() {
                *new_work = true;
            }
            Ok(JournalReply::Done)
        }
        _ => apply_shared(tx, w).await,
    }
}

async fn insert_deliveries(
    tx: &mut Transaction<'static, Sqlite>,
    ds: &[DeliveryRecord],
) -> Result<(), JournalError> {
    let mut q = sqlx::QueryBuilder::<Sqlite>::new(
        "INSERT INTO delivery_journal (command_id, intent_id, trade_id, master_account, \
         slave_account, kind, symbol, side, volume, price, stop_loss, take_profit, master_seq, \
         status, stage, attempts, slave_ticket, reason, master_volume_before) ",
    );
    let mut seqs = Vec::with_capacity(ds.len());
    for d in ds {
        seqs.push(seq_to_sql(d.master_seq)?);
    }
    q.push_values(ds.iter().zip(seqs), |mut b, (d, seq)| {
        b.push_bind(d.command_id.as_str())
            .push_bind(d.intent_id.as_str())
            .push_bind(d.trade_id.as_str())
            .push_bind(d.master.as_str())
            .push_bind(d.slave.as_str())
            .push_bind(codec::kind_str(d.kind))
            .push_bind(d.symbol.as_str())
            .push_bind(codec::side_str(d.side))
            .push_bind(d.volume)
            .push_bind(d.price)
            .push_bind(d.stop_loss)
            .push_bind(d.take_profit)
            .push_bind(seq)
            .push_bind(codec::status_str(d.status))
            .push_bind(codec::stage_str(d.stage))
            .push_bind(i64::from(d.attempts))
            .push_bind(d.slave_ticket)
            .push_bind(d.reason.map(codec::reason_str))
            .push_bind(d.master_volume_before);
    });
    q.build().execute(&mut **tx).await?;
    Ok(())
}

fn decode_deliveries(rows: Vec<SqliteRow>) -> Result<Vec<DeliveryRecord>, JournalError> {
    rows.iter()
        .map(|r| -> Result<DeliveryRecord, JournalError> { raw_delivery!(r).decode() })
        .collect()
}

super::query::read_side!(SqlitePool, "", "updated_at", "accepted_at", "e.at", "at");
