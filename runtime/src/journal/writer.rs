//! Group commit: the writer task(s) that turn queued journal writes into transactions.
//!
//! Owns batching (take every write queued, up to `max_batch`, into one transaction), answering
//! each write only after its transaction's commit returned, and the classification of storage
//! errors into retryable or not. It must never answer `Ok` for a write whose transaction did
//! not commit, and never decide what a failed write means for a trade (the machine does).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use echo_handoff::group_commit::{self, run_writer, Committer, QueueGuard, SharedQueue};
use echo_statemachine::core::{JournalReply, JournalResult, JournalWrite, OpId};
use tokio::sync::{mpsc, oneshot, Mutex, MutexGuard};

use super::{Completion, JournalError, JournalOptions, Stats, WakeReason, Waker};

pub(crate) enum Reply {
    Once(oneshot::Sender<JournalResult>),
    Chan {
        op: OpId,
        tx: mpsc::UnboundedSender<Completion>,
    },
}

impl Reply {
    fn send(self, result: JournalResult) {
        match self {
            Reply::Once(tx) => {
                let _ = tx.send(result);
            }
            Reply::Chan { op, tx } => {
                let _ = tx.send(Completion { op, result });
            }
        }
    }
}

pub(crate) type Request = group_commit::Request<(JournalWrite, Reply), oneshot::Sender<()>>;

/// What one committed batch did.
pub struct BatchOk {
    /// One reply per write, in order.
    pub replies: Vec<JournalReply>,
    /// Whether the batch inserted new deliveries (someone should wake up).
    pub new_work: bool,
}

/// A store other than SQLite or Postgres that the group-commit writer commits to (the turmoil
/// suite's simulated journal server). `run_batch` applies every write in one transaction and
/// returns only after it committed; an `Err` means the batch may or may not have committed.
pub trait BatchStore: Send + 'static {
    fn run_batch<'a>(
        &'a mut self,
        writes: &'a [&'a JournalWrite],
    ) -> futures::future::BoxFuture<'a, Result<BatchOk, JournalError>>;
}

pub(crate) enum Store {
    Sqlite(super::sqlite::SqliteStore),
    Postgres(super::postgres::PgStore),
    Injected(Box<dyn BatchStore>),
}

impl Store {
    async fn run_batch(&mut self, writes: &[&JournalWrite]) -> Result<BatchOk, JournalError> {
        match self {
            Store::Sqlite(s) => s.run_batch(writes).await,
            Store::Postgres(s) => s.run_batch(writes).await,
            Store::Injected(s) => s.run_batch(writes).await,
        }
    }
}

/// Whether a storage error can heal by itself (connection lost, server restarting, busy,
/// timeout, serialization conflict) — as opposed to a write the store will never take.
pub(crate) fn retryable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            if let Ok(n) = code.parse::<i64>() {
                // SQLite (extended) result code: primary code is the low byte.
                // BUSY, LOCKED, IOERR, FULL, CANTOPEN, PROTOCOL.
                matches!(n & 0xff, 5 | 6 | 10 | 13 | 14 | 15)
            } else {
                // Postgres SQLSTATE: connection exceptions, transaction rollback
                // (serialization, deadlock), insufficient resources, operator intervention
                // (admin shutdown, crash shutdown, cannot connect now, statement timeout),
                // lock not available, system errors.
                code.starts_with("08")
                    || code.starts_with("40")
                    || code.starts_with("53")
                    || code.starts_with("57")
                    || code.starts_with("58")
                    || code == "55P03"
            }
        }
        _ => false,
    }
}

fn failed_retryable(e: &JournalError) -> bool {
    match e {
        JournalError::Database { retryable, .. } => *retryable,
        JournalError::Closed => true,
        _ => false,
    }
}

/// The shared request queue, as [`echo_handoff::group_commit`] sees it (that module owns the
/// batching and shutdown protocol; loom checks it there).
pub(crate) struct Queue(pub(crate) Arc<Mutex<mpsc::Receiver<Request>>>);

pub(crate) struct QueueLock<'a>(MutexGuard<'a, mpsc::Receiver<Request>>);

impl SharedQueue<(JournalWrite, Reply), oneshot::Sender<()>> for Queue {
    type Guard<'a> = QueueLock<'a>;
    async fn lock(&self) -> QueueLock<'_> {
        QueueLock(self.0.lock().await)
    }
}

impl QueueGuard<(JournalWrite, Reply), oneshot::Sender<()>> for QueueLock<'_> {
    async fn recv(&mut self) -> Option<Request> {
        self.0.recv().await
    }
    fn try_recv(&mut self) -> Option<Request> {
        self.0.try_recv().ok()
    }
    fn close(&mut self) {
        self.0.close();
    }
}

/// One writer: takes a batch from the shared queue, commits it, answers it; repeats until the
/// queue is closed and drained.
pub(crate) async fn run(
    mut store: Store,
    rx: Arc<Mutex<mpsc::Receiver<Request>>>,
    stats: Arc<Stats>,
    waker: Waker,
    opts: JournalOptions,
) {
    let mut committer = Writer {
        store: &mut store,
        stats: &stats,
        waker: &waker,
        opts: &opts,
    };
    run_writer(&Queue(rx), opts.max_batch, &mut committer).await;
}

struct Writer<'a> {
    store: &'a mut Store,
    stats: &'a Stats,
    waker: &'a Waker,
    opts: &'a JournalOptions,
}

impl Committer<(JournalWrite, Reply), oneshot::Sender<()>> for Writer<'_> {
    async fn commit(&mut self, batch: Vec<(JournalWrite, Reply)>) {
        commit_batch(self.store, batch, self.stats, self.waker, self.opts).await
    }
    fn ack(&mut self, shutdown: oneshot::Sender<()>) {
        let _ = shutdown.send(());
    }
}

async fn commit_batch(
    store: &mut Store,
    batch: Vec<(JournalWrite, Reply)>,
    stats: &Stats,
    waker: &Waker,
    opts: &JournalOptions,
) {
    let n = batch.len() as u64;
    stats.largest_batch.fetch_max(n, Ordering::Relaxed);
    #[cfg(feature = "rt-mutants")]
    if crate::mutants::is(crate::mutants::Mutant::AckBeforeCommit) {
        let (writes, replies): (Vec<JournalWrite>, Vec<Reply>) = batch.into_iter().unzip();
        for reply in replies {
            reply.send(JournalResult::Ok(JournalReply::Done));
        }
        let writes: Vec<&JournalWrite> = writes.iter().collect();
        let _ = store.run_batch(&writes).await;
        return;
    }
    let started = std::time::Instant::now();
    let outcome = attempt(store, &batch, stats, opts).await;
    let ms = started.elapsed().as_millis();
    if ms >= 20 {
        // Every write of the batch waited this long for its answer; the latency budget is
        // ~10 ms end to end.
        tracing::warn!(ms = ms as u64, writes = batch.len(), "slow journal batch");
    }
    match outcome {
        Ok(ok) => answer_ok(batch, ok, stats, waker),
        Err(e) if failed_retryable(&e) || batch.len() == 1 => {
            let retryable = failed_retryable(&e);
            tracing::warn!(
                writes = batch.len(),
                retryable,
                error = %e,
                "journal batch failed; every write in it answered Failed"
            );
            stats.failed_batches.fetch_add(1, Ordering::Relaxed);
            stats.ops.fetch_add(n, Ordering::Relaxed);
            for (_, reply) in batch {
                reply.send(JournalResult::Failed { retryable });
            }
        }
        Err(e) => {
            // A write the store refuses (not a connection problem) must not take the rest of
            // its batch down with it: each write gets its own transaction and its own answer.
            tracing::warn!(
                writes = batch.len(),
                error = %e,
                "journal batch refused; retrying its writes one transaction each"
            );
            stats.failed_batches.fetch_add(1, Ordering::Relaxed);
            for (write, reply) in batch {
                let one = vec![(write, reply)];
                match attempt(store, &one, stats, opts).await {
                    Ok(ok) => answer_ok(one, ok, stats, waker),
                    Err(e) => {
                        let retryable = failed_retryable(&e);
                        tracing::warn!(retryable, error = %e, "journal write failed");
                        stats.ops.fetch_add(1, Ordering::Relaxed);
                        for (_, reply) in one {
                            reply.send(JournalResult::Failed { retryable });
                        }
                    }
                }
            }
        }
    }
}

async fn attempt(
    store: &mut Store,
    batch: &[(JournalWrite, Reply)],
    stats: &Stats,
    opts: &JournalOptions,
) -> Result<BatchOk, JournalError> {
    let writes: Vec<&JournalWrite> = batch.iter().map(|(w, _)| w).collect();
    stats.transactions.fetch_add(1, Ordering::Relaxed);
    match tokio::time::timeout(opts.batch_timeout, store.run_batch(&writes)).await {
        Ok(Ok(ok)) if ok.replies.len() == writes.len() => Ok(ok),
        Ok(Ok(_)) => Err(JournalError::Corrupt {
            column: "batch",
            value: "reply count differs from write count".into(),
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(JournalError::Database {
            retryable: true,
            source: sqlx::Error::PoolTimedOut,
        }),
    }
}

fn answer_ok(batch: Vec<(JournalWrite, Reply)>, ok: BatchOk, stats: &Stats, waker: &Waker) {
    stats.commits.fetch_add(1, Ordering::Relaxed);
    stats.ops.fetch_add(batch.len() as u64, Ordering::Relaxed);
    if ok.new_work {
        waker.wake(WakeReason::Committed);
    }
    for ((_, reply), r) in batch.into_iter().zip(ok.replies) {
        reply.send(JournalResult::Ok(r));
    }
}
