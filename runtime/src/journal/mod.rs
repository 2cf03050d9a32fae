//! The core's journal: performs the core machine's [`JournalWrite`]s, answers each with a
//! [`JournalResult`], and reads back the [`CoreDurableState`] that `Core::recover` starts from.
//!
//! Owns: the two storage backends (SQLite, the embedded default: one file in the data dir, WAL,
//! `synchronous=FULL`; Postgres, production: the `echo` schema from `migrations/`), group
//! commit (a writer task drains a bounded queue and writes everything queued in one
//! transaction), the "new work" wake-ups (in-process after commit; Postgres `LISTEN/NOTIFY`
//! between processes; a slow safety poll), and the read-only operator queries behind
//! `echo journal ls|show`.
//!
//! It must never decide anything about a trade: it stores what the machine asked, reports
//! exactly what storage did, and never reports `Ok` before the transaction that holds the write
//! has committed. Every retry, give-up and ordering decision stays in `echo-statemachine`.
//!
//! # How a driver uses it
//! ```ignore
//! let journal = Journal::open_sqlite_in(&data_dir, JournalOptions::default()).await?;
//! let core = Core::recover(cfg, journal.load().await?, now);
//! let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
//! // for each CoreOutput::Journal { op, write }:
//! journal.submit(op, write, &done_tx).await;
//! // in the driver's select loop:
//! //   Some(Completion { op, result }) = done_rx.recv() => core.handle_journal_result(now, op, result)
//! ```
//! A processor that waits for new work uses [`Journal::subscribe`] and [`WorkWaiter::wait`].

pub(crate) mod codec;
mod pg_bulk;
mod postgres;
mod query;
mod shared_writes;
mod sqlite;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use echo_statemachine::core::{CoreDurableState, JournalResult, JournalWrite, OpId};
use echo_statemachine::ids::TradeId;
use tokio::sync::{mpsc, oneshot, watch};

pub use postgres::PostgresOptions;
pub use query::{DeliveryRow, IntentRow, RejectionRow, RetryRow, TradeReport};
pub use writer::{BatchOk, BatchStore};

/// The Postgres `NOTIFY` channel on which a commit with new deliveries is announced.
pub const NOTIFY_CHANNEL: &str = "echo_journal_work";

/// The SQLite journal's file name inside the data dir.
pub const SQLITE_FILE: &str = "echo-journal.sqlite3";

/// Errors of opening, loading and querying the journal. Writes never return these: they
/// answer [`JournalResult::Failed`] as the machine expects.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal database error ({}): {source}", if *retryable { "retryable" } else { "not retryable" })]
    Database {
        retryable: bool,
        #[source]
        source: sqlx::Error,
    },
    #[error("journal row holds an unknown {column} {value:?}: the journal is corrupt or newer than this build")]
    Corrupt { column: &'static str, value: String },
    #[error("journal cannot store {field} = {value}: out of the column's range")]
    OutOfRange { field: &'static str, value: String },
    #[error("journal data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("journal migration {version} failed: {source}")]
    Migration {
        version: i64,
        #[source]
        source: sqlx::Error,
    },
    #[error("journal is closed")]
    Closed,
    #[error("this journal's store answers writes only, not reads or queries")]
    WritesOnly,
}

impl JournalError {
    /// Whether trying again later can help (the database was unreachable, busy or restarting).
    pub fn is_retryable(&self) -> bool {
        match self {
            JournalError::Database { retryable, .. } => *retryable,
            JournalError::Migration { source, .. } => writer::retryable(source),
            JournalError::Closed => true,
            _ => false,
        }
    }
}

impl From<sqlx::Error> for JournalError {
    fn from(source: sqlx::Error) -> Self {
        JournalError::Database {
            retryable: writer::retryable(&source),
            source,
        }
    }
}

/// Tuning shared by both backends.
#[derive(Clone, Debug)]
pub struct JournalOptions {
    /// Writes queued for the writer; [`Journal::try_submit`] answers `Failed{retryable}` past it.
    pub queue_capacity: usize,
    /// Most writes in one transaction.
    pub max_batch: usize,
    /// A batch that takes longer is answered `Failed{retryable: true}` (it may have committed;
    /// every write is idempotent).
    pub batch_timeout: Duration,
    /// [`WorkWaiter::wait`] returns [`WakeReason::Poll`] after this long without a signal.
    pub safety_poll: Duration,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            queue_capacity: 16_384,
            max_batch: 1_024,
            batch_timeout: Duration::from_secs(10),
            safety_poll: Duration::from_secs(5),
        }
    }
}

/// The answer to one submitted write, delivered on the driver's channel.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    pub op: OpId,
    pub result: JournalResult,
}

/// Counters of the writer (monotonic since open).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Writes answered.
    pub ops: u64,
    /// Transactions begun (a batch is one; a batch retried write by write is one per write).
    pub transactions: u64,
    /// Transactions committed.
    pub commits: u64,
    /// Batches answered `Failed` as a whole.
    pub failed_batches: u64,
    /// The most writes one transaction held.
    pub largest_batch: u64,
    /// Writes refused by [`Journal::try_submit`] because the queue was full.
    pub queue_full: u64,
}

#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) ops: AtomicU64,
    pub(crate) transactions: AtomicU64,
    pub(crate) commits: AtomicU64,
    pub(crate) failed_batches: AtomicU64,
    pub(crate) largest_batch: AtomicU64,
    pub(crate) queue_full: AtomicU64,
}

/// Why [`WorkWaiter::wait`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WakeReason {
    /// This process committed new deliveries.
    Committed,
    /// Another process committed new deliveries (Postgres `NOTIFY`).
    Notified,
    /// The notification connection was re-established: notifications may have been missed.
    Reconnected,
    /// Nothing was signalled within the safety poll interval: look anyway.
    Poll,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct WakeState {
    generation: u64,
    reason: WakeReason,
}

/// The sending half of the wake-ups; shared by the writer and the Postgres listener.
#[derive(Clone)]
pub(crate) struct Waker(Arc<watch::Sender<WakeState>>);

impl Waker {
    fn new() -> Self {
        Waker(Arc::new(watch::Sender::new(WakeState {
            generation: 0,
            reason: WakeReason::Poll,
        })))
    }

    pub(crate) fn wake(&self, reason: WakeReason) {
        self.0.send_modify(|s| {
            s.generation += 1;
            s.reason = reason;
        });
    }
}

/// Waits for new journal work: returns at once after a signal, or after the safety poll.
pub struct WorkWaiter {
    rx: watch::Receiver<WakeState>,
    poll: Duration,
}

impl WorkWaiter {
    /// Returns when new work may be there. Signals that arrive while nobody waits are not
    /// lost: the next call returns at once (several coalesce into one).
    pub async fn wait(&mut self) -> WakeReason {
        tokio::select! {
            changed = self.rx.changed() => match changed {
                Ok(()) => self.rx.borrow_and_update().reason,
                Err(_) => {
                    // The journal is gone: keep the caller's loop slow rather than spinning.
                    tokio::time::sleep(self.poll).await;
                    WakeReason::Poll
                }
            },
            _ = tokio::time::sleep(self.poll) => WakeReason::Poll,
        }
    }

    /// How many wake-ups were signalled since open.
    pub fn generation(&self) -> u64 {
        self.rx.borrow().generation
    }
}

/// Which storage a journal writes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    /// A [`BatchStore`] given to [`Journal::with_store`].
    Injected,
}

#[derive(Clone)]
pub(crate) enum Pool {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
    /// No pool: an injected [`BatchStore`] takes writes only.
    Injected,
}

struct Inner {
    tx: mpsc::Sender<writer::Request>,
    pool: Pool,
    stats: Arc<Stats>,
    waker: Waker,
    opts: JournalOptions,
    listener: Option<tokio::task::JoinHandle<()>>,
    /// The writer tasks; `close` waits for every one of them.
    writers: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(l) = self.listener.take() {
            l.abort();
        }
    }
}

/// A handle to the journal; cheap to clone. The writer stops once every handle is dropped
/// (after answering what was queued) or on [`Journal::close`].
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

impl Journal {
    /// Opens (creating if needed) the SQLite journal `echo-journal.sqlite3` in `data_dir`.
    pub async fn open_sqlite_in(
        data_dir: &Path,
        opts: JournalOptions,
    ) -> Result<Journal, JournalError> {
        std::fs::create_dir_all(data_dir).map_err(|source| JournalError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        Self::open_sqlite(&data_dir.join(SQLITE_FILE), opts).await
    }

    /// Opens (creating if needed) the SQLite journal at `path`.
    pub async fn open_sqlite(path: &Path, opts: JournalOptions) -> Result<Journal, JournalError> {
        let store = sqlite::SqliteStore::open(path).await?;
        let pool = Pool::Sqlite(store.pool().clone());
        Ok(Self::start(
            vec![writer::Store::Sqlite(store)],
            pool,
            opts,
            Waker::new(),
            None,
        ))
    }

    /// Connects to Postgres, applies the migrations, and starts the writer(s) and the
    /// `LISTEN` task. Fails if the database is unreachable now; later outages are answered
    /// `Failed{retryable: true}` write by write and heal by themselves.
    pub async fn open_postgres(
        pg: PostgresOptions,
        opts: JournalOptions,
    ) -> Result<Journal, JournalError> {
        let writers = pg.writers.max(1);
        let (store, listener) = postgres::PgStore::open(&pg).await?;
        let pool = Pool::Postgres(store.pool().clone());
        let waker = Waker::new();
        let instance = store.instance().to_string();
        let listen = listener.map(|l| {
            let pool = store.pool().clone();
            tokio::spawn(postgres::listen_loop(pool, l, waker.clone(), instance))
        });
        let mut stores = vec![writer::Store::Postgres(store.clone())];
        for _ in 1..writers {
            stores.push(writer::Store::Postgres(store.clone()));
        }
        Ok(Self::start(stores, pool, opts, waker, listen))
    }

    /// A journal whose group-commit writer commits to `store` (the turmoil suite's simulated
    /// journal server). It takes writes only: [`Journal::load`] and the queries answer
    /// [`JournalError::WritesOnly`].
    pub fn with_store(store: Box<dyn BatchStore>, opts: JournalOptions) -> Journal {
        Self::start(
            vec![writer::Store::Injected(store)],
            Pool::Injected,
            opts,
            Waker::new(),
            None,
        )
    }

    fn start(
        stores: Vec<writer::Store>,
        pool: Pool,
        opts: JournalOptions,
        waker: Waker,
        listener: Option<tokio::task::JoinHandle<()>>,
    ) -> Journal {
        let (tx, rx) = mpsc::channel(opts.queue_capacity.max(1));
        let stats = Arc::new(Stats::default());
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let writers = stores
            .into_iter()
            .map(|store| {
                tokio::spawn(writer::run(
                    store,
                    rx.clone(),
                    stats.clone(),
                    waker.clone(),
                    opts.clone(),
                ))
            })
            .collect();
        Journal {
            inner: Arc::new(Inner {
                tx,
                pool,
                stats,
                waker,
                opts,
                listener,
                writers: std::sync::Mutex::new(writers),
            }),
        }
    }

    /// Which storage this journal writes to.
    pub fn backend(&self) -> Backend {
        match self.inner.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
            Pool::Injected => Backend::Injected,
        }
    }

    /// Everything a restarted core needs: unfinished deliveries and open slave tickets.
    pub async fn load(&self) -> Result<CoreDurableState, JournalError> {
        match &self.inner.pool {
            Pool::Sqlite(p) => sqlite::load(p).await,
            Pool::Postgres(p) => postgres::load(p).await,
            Pool::Injected => Err(JournalError::WritesOnly),
        }
    }

    /// Performs one write and waits for its answer (after its batch committed or failed).
    pub async fn write(&self, write: JournalWrite) -> JournalResult {
        let (tx, rx) = oneshot::channel();
        let req = writer::Request::Write((write, writer::Reply::Once(tx)));
        if self.inner.tx.send(req).await.is_err() {
            return JournalResult::Failed { retryable: true };
        }
        rx.await
            .unwrap_or(JournalResult::Failed { retryable: true })
    }

    /// Queues write `op`, waiting for queue space; its [`Completion`] arrives on `done` once
    /// its batch committed (or failed). A closed journal answers `Failed{retryable: true}`.
    pub async fn submit(
        &self,
        op: OpId,
        write: JournalWrite,
        done: &mpsc::UnboundedSender<Completion>,
    ) {
        let req = writer::Request::Write((
            write,
            writer::Reply::Chan {
                op,
                tx: done.clone(),
            },
        ));
        if self.inner.tx.send(req).await.is_err() {
            let _ = done.send(Completion {
                op,
                result: JournalResult::Failed { retryable: true },
            });
        }
    }

    /// Like [`Journal::submit`] but never waits: with the queue full (or the journal closed)
    /// `Failed{retryable: true}` is sent on `done` at once, and `false` returned.
    pub fn try_submit(
        &self,
        op: OpId,
        write: JournalWrite,
        done: &mpsc::UnboundedSender<Completion>,
    ) -> bool {
        let req = writer::Request::Write((
            write,
            writer::Reply::Chan {
                op,
                tx: done.clone(),
            },
        ));
        match self.inner.tx.try_send(req) {
            Ok(()) => true,
            Err(e) => {
                if matches!(e, mpsc::error::TrySendError::Full(_)) {
                    self.inner.stats.queue_full.fetch_add(1, Ordering::Relaxed);
                    #[cfg(feature = "rt-mutants")]
                    if crate::mutants::is(crate::mutants::Mutant::DropWhenFull) {
                        return false;
                    }
                }
                let _ = done.send(Completion {
                    op,
                    result: JournalResult::Failed { retryable: true },
                });
                false
            }
        }
    }

    /// A waiter for new work (new deliveries committed here or, on Postgres, anywhere).
    pub fn subscribe(&self) -> WorkWaiter {
        WorkWaiter {
            rx: self.inner.waker.0.subscribe(),
            poll: self.inner.opts.safety_poll,
        }
    }

    /// The writer's counters.
    pub fn stats(&self) -> JournalStats {
        let s = &self.inner.stats;
        JournalStats {
            ops: s.ops.load(Ordering::Relaxed),
            transactions: s.transactions.load(Ordering::Relaxed),
            commits: s.commits.load(Ordering::Relaxed),
            failed_batches: s.failed_batches.load(Ordering::Relaxed),
            largest_batch: s.largest_batch.load(Ordering::Relaxed),
            queue_full: s.queue_full.load(Ordering::Relaxed),
        }
    }

    /// Unfinished deliveries, oldest first (`echo journal ls --inflight`).
    pub async fn inflight(&self, limit: u32) -> Result<Vec<DeliveryRow>, JournalError> {
        match &self.inner.pool {
            Pool::Sqlite(p) => sqlite::deliveries_by_status(p, "inflight", limit).await,
            Pool::Postgres(p) => postgres::deliveries_by_status(p, "inflight", limit).await,
            Pool::Injected => Err(JournalError::WritesOnly),
        }
    }

    /// Failed deliveries with their reasons, newest first (`echo journal ls --failed`).
    pub async fn failed(&self, limit: u32) -> Result<Vec<DeliveryRow>, JournalError> {
        match &self.inner.pool {
            Pool::Sqlite(p) => sqlite::deliveries_by_status(p, "failed", limit).await,
            Pool::Postgres(p) => postgres::deliveries_by_status(p, "failed", limit).await,
            Pool::Injected => Err(JournalError::WritesOnly),
        }
    }

    /// Everything journaled about one trade (`echo journal show TRADE_ID`).
    pub async fn trade(&self, trade_id: &TradeId) -> Result<TradeReport, JournalError> {
        match &self.inner.pool {
            Pool::Sqlite(p) => sqlite::trade(p, trade_id).await,
            Pool::Postgres(p) => postgres::trade(p, trade_id).await,
            Pool::Injected => Err(JournalError::WritesOnly),
        }
    }

    /// Answers everything queued so far, stops the writer(s) and closes the connections.
    /// Later writes answer `Failed{retryable: true}`.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self
            .inner
            .tx
            .send(writer::Request::Shutdown(tx))
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
        // The shutdown is acknowledged by the writer that took it once the queue is drained;
        // another writer may still be committing a batch it took before. Every write must be
        // answered before `close` returns, so wait for all writers to stop (each stops when it
        // finds the queue closed and empty). The loom model
        // `two_writers_may_ack_shutdown_before_the_other_writers_batch` shows the race.
        let writers = match self.inner.writers.lock() {
            Ok(mut w) => std::mem::take(&mut *w),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        for w in writers {
            let _ = w.await;
        }
        if let Some(l) = &self.inner.listener {
            l.abort();
        }
        match &self.inner.pool {
            Pool::Sqlite(p) => p.close().await,
            Pool::Postgres(p) => p.close().await,
            Pool::Injected => {}
        }
    }
}
