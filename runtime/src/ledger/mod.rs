//! The agent's durable command ledger: performs the `DeliveryManager`'s
//! [`AgentOutput::PersistLedger`](echo_statemachine::agent::AgentOutput::PersistLedger) and
//! `DeleteLedger` outputs and reads the records back for `DeliveryManager::recover`.
//!
//! Storage is [redb](https://docs.rs/redb) 2, an embedded key-value store chosen because it is
//! pure Rust (no C library to build or link on the trading hosts, Windows included), ACID with
//! copy-on-write B-trees and checksummed commit slots, so a crash at any point leaves the last
//! committed state intact and a reopen needs no manual repair; and a commit with
//! `Durability::Immediate` returns only after `fsync`. It is well kept (regular releases, a
//! stable file format since 1.0, fuzzed). redb 2 rather than the newest line because the
//! workspace's `rust-version` is 1.88.
//!
//! One record per command id (a write overwrites), value = versioned JSON of the
//! [`LedgerRecord`]. All blocking redb calls run on one dedicated thread that owns the
//! database: it takes every queued write into one transaction (group commit), commits it with
//! `Durability::Immediate`, and only then answers each write `Ok` — `AGENT_BUFFERED` depends on
//! that. A failed commit answers every write in it `Failed`; a write queued after a close
//! answers `Failed`. The batch loop itself is [`echo_handoff::ledger_batches`] (checked by loom
//! in `runtime/handoff/tests/loom_ledger.rs`); this module is its redb and tokio side.
//!
//! It must never decide anything about a command (stages, retries, retention are the machine's)
//! and never report a write before the transaction holding it was committed and synced.

mod codec;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use echo_handoff::ledger_batches::{self, Op, Outcome};
use echo_statemachine::agent::{LedgerOpId, LedgerRecord, LedgerResult};
use echo_statemachine::ids::CommandId;
use redb::{Database, Durability, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

/// command id → JSON record.
const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("ledger_records");

/// The ledger's file name inside the agent's data dir.
pub const LEDGER_FILE: &str = "echo-agent-ledger.redb";

/// Most writes taken into one transaction.
const MAX_BATCH: usize = 1_024;

/// Errors of opening and loading the ledger. Writes never return these: they answer
/// [`LedgerResult::Failed`] as the machine expects.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger file {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: Box<redb::Error>,
    },
    #[error("ledger data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ledger storage error: {0}")]
    Storage(#[from] Box<redb::Error>),
    #[error("ledger record {key:?} cannot be decoded: {detail}")]
    Corrupt { key: String, detail: String },
    #[error("ledger thread could not be started: {0}")]
    Thread(#[source] std::io::Error),
    #[error("ledger is closed")]
    Closed,
}

/// The answer to one submitted write, delivered on the driver's channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LedgerCompletion {
    pub op: LedgerOpId,
    pub result: LedgerResult,
}

/// Counters of the ledger thread (monotonic since open).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LedgerStats {
    /// Persist writes answered.
    pub writes: u64,
    /// Deletes applied.
    pub deletes: u64,
    /// Transactions committed.
    pub commits: u64,
    /// Transactions that failed.
    pub failed_commits: u64,
}

#[derive(Default)]
struct Stats {
    writes: AtomicU64,
    deletes: AtomicU64,
    commits: AtomicU64,
    failed_commits: AtomicU64,
}

enum Reply {
    Once(oneshot::Sender<LedgerResult>),
    Chan {
        op: LedgerOpId,
        tx: mpsc::UnboundedSender<LedgerCompletion>,
    },
}

impl Reply {
    fn send(self, result: LedgerResult) {
        match self {
            Reply::Once(tx) => {
                let _ = tx.send(result);
            }
            Reply::Chan { op, tx } => {
                let _ = tx.send(LedgerCompletion { op, result });
            }
        }
    }
}

type Request = ledger_batches::Request<
    Persist,
    CommandId,
    oneshot::Sender<Result<Vec<LedgerRecord>, LedgerError>>,
    oneshot::Sender<()>,
>;

/// A handle to the ledger; cheap to clone. The ledger thread stops (closing the file) once
/// every handle is dropped, or on [`Ledger::close`].
#[derive(Clone)]
pub struct Ledger {
    tx: mpsc::UnboundedSender<Request>,
    stats: Arc<Stats>,
}

impl Ledger {
    /// Opens (creating if needed) `echo-agent-ledger.redb` in `data_dir`.
    pub async fn open_in(data_dir: &Path) -> Result<Ledger, LedgerError> {
        let dir = data_dir.to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|source| LedgerError::DataDir {
            path: dir.clone(),
            source,
        })?;
        Self::open(&dir.join(LEDGER_FILE)).await
    }

    /// Opens (creating if needed) the ledger file at `path`; a file left by a crash is
    /// recovered to its last committed transaction.
    pub async fn open(path: &Path) -> Result<Ledger, LedgerError> {
        let p = path.to_path_buf();
        let db = tokio::task::spawn_blocking(move || open_db(&p))
            .await
            .map_err(|_| LedgerError::Closed)??;
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        let thread_stats = stats.clone();
        let path = path.to_path_buf();
        std::thread::Builder::new()
            .name("echo-ledger".into())
            .spawn(move || run(db, path, rx, thread_stats))
            .map_err(LedgerError::Thread)?;
        Ok(Ledger { tx, stats })
    }

    /// Every durable record, in arrival (`seq`) order: the input of `DeliveryManager::recover`.
    pub async fn load(&self) -> Result<Vec<LedgerRecord>, LedgerError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Load(tx))
            .map_err(|_| LedgerError::Closed)?;
        rx.await.map_err(|_| LedgerError::Closed)?
    }

    /// Writes one record (overwriting by command id) and waits until it is synced or failed.
    pub async fn persist(&self, record: LedgerRecord) -> LedgerResult {
        let (tx, rx) = oneshot::channel();
        let req = Request::Persist(Persist {
            record,
            reply: Reply::Once(tx),
            bytes: Vec::new(),
        });
        if self.tx.send(req).is_err() {
            return LedgerResult::Failed { retryable: true };
        }
        rx.await.unwrap_or(LedgerResult::Failed { retryable: true })
    }

    /// Queues `PersistLedger{op, record}`; its [`LedgerCompletion`] arrives on `done` once the
    /// transaction holding it is committed and synced (or failed). Never blocks.
    pub fn submit(
        &self,
        op: LedgerOpId,
        record: LedgerRecord,
        done: &mpsc::UnboundedSender<LedgerCompletion>,
    ) {
        let req = Request::Persist(Persist {
            record,
            reply: Reply::Chan {
                op,
                tx: done.clone(),
            },
            bytes: Vec::new(),
        });
        if self.tx.send(req).is_err() {
            let _ = done.send(LedgerCompletion {
                op,
                result: LedgerResult::Failed { retryable: true },
            });
        }
    }

    /// `DeleteLedger{command_id}`: fire and forget (a delete lost to a crash is issued again
    /// by `DeliveryManager::recover`).
    pub fn delete(&self, command_id: CommandId) {
        let _ = self.tx.send(Request::Delete(command_id));
    }

    pub fn stats(&self) -> LedgerStats {
        LedgerStats {
            writes: self.stats.writes.load(Ordering::Relaxed),
            deletes: self.stats.deletes.load(Ordering::Relaxed),
            commits: self.stats.commits.load(Ordering::Relaxed),
            failed_commits: self.stats.failed_commits.load(Ordering::Relaxed),
        }
    }

    /// Answers everything queued, then closes the file. Later writes answer `Failed`.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Request::Shutdown(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// redb's page cache for the ledger. redb's default is 1 GiB, which the agent's RSS grows into
/// as the file churns (every command is written two to four times and deleted when evicted):
/// a memory that grows with history. The live ledger is `max_active_commands` +
/// `max_completed_retained` records (about 12 MB at the defaults); pages beyond the cache are
/// read from the OS page cache.
pub const LEDGER_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// A commit (with its fsync) this slow is logged: the latency budget is ~10 ms end to end.
const SLOW_COMMIT_MS: u128 = 20;

fn create_db(path: &Path) -> Result<Database, redb::DatabaseError> {
    let mut b = redb::Builder::new();
    b.set_cache_size(LEDGER_CACHE_BYTES);
    b.create(path)
}

fn open_db(path: &Path) -> Result<Database, LedgerError> {
    let open_err = |source: redb::Error| LedgerError::Open {
        path: path.to_path_buf(),
        source: Box::new(source),
    };
    let db = create_db(path).map_err(|e| open_err(e.into()))?;
    // Make sure the table exists, so readers never meet a missing table.
    let mut w = db.begin_write().map_err(|e| open_err(e.into()))?;
    w.set_durability(Durability::Immediate);
    w.open_table(RECORDS).map_err(|e| open_err(e.into()))?;
    w.commit().map_err(|e| open_err(e.into()))?;
    Ok(db)
}

/// Whether a failed write may succeed later (an IO error, e.g. a full or flaky disk) or never
/// will (a corrupt file, a value too large).
fn retryable(e: &redb::Error) -> bool {
    matches!(
        e,
        redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::DatabaseAlreadyOpen
    )
}

/// The ledger's request queue as [`echo_handoff::ledger_batches`] sees it (that module owns
/// the batch loop; loom checks it in `runtime/handoff/tests/loom_ledger.rs`).
struct Queue(mpsc::UnboundedReceiver<Request>);

impl ledger_batches::Queue<Request> for Queue {
    fn recv(&mut self) -> Option<Request> {
        self.0.blocking_recv()
    }
    fn try_recv(&mut self) -> Option<Request> {
        self.0.try_recv().ok()
    }
    fn close(&mut self) {
        self.0.close();
    }
}

/// A persist as the batch loop carries it: the bytes are filled by [`Store::admit`].
struct Persist {
    record: LedgerRecord,
    reply: Reply,
    bytes: Vec<u8>,
}

/// The redb side of the ledger thread: owns the database.
struct Store {
    /// `None` once closed.
    db: Option<Database>,
    path: PathBuf,
    /// After an IO error redb refuses further writes on this handle; reopening recovers.
    reopen: bool,
    stats: Arc<Stats>,
}

impl ledger_batches::Store for Store {
    type Write = Persist;
    type Delete = CommandId;
    type Load = oneshot::Sender<Result<Vec<LedgerRecord>, LedgerError>>;
    type Shutdown = oneshot::Sender<()>;

    fn ready(&mut self) -> Result<(), bool> {
        if self.db.is_some() && !self.reopen {
            return Ok(());
        }
        // Drop the old handle first: redb holds a file lock per open database.
        self.db = None;
        match reopen_db(&self.path) {
            Some(d) => {
                self.db = Some(d);
                self.reopen = false;
                Ok(())
            }
            None => {
                self.stats.failed_commits.fetch_add(1, Ordering::Relaxed);
                Err(true)
            }
        }
    }

    fn admit(&mut self, write: &mut Persist) -> bool {
        match codec::encode(&write.record) {
            Ok(bytes) => {
                write.bytes = bytes;
                true
            }
            Err(detail) => {
                tracing::warn!(%detail, "ledger record refused");
                false
            }
        }
    }

    fn commit(&mut self, batch: &[Op<Persist, CommandId>]) -> Result<(), bool> {
        let Some(db) = &self.db else {
            return Err(true);
        };
        let started = std::time::Instant::now();
        match commit(db, batch) {
            Ok(()) => {
                let ms = started.elapsed().as_millis();
                if ms >= SLOW_COMMIT_MS {
                    // Every write of the batch waited this long for its AGENT_BUFFERED.
                    tracing::warn!(ms = ms as u64, writes = batch.len(), "slow ledger commit");
                }
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                let deletes = batch
                    .iter()
                    .filter(|op| matches!(op, Op::Delete(_)))
                    .count();
                self.stats
                    .deletes
                    .fetch_add(deletes as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                let retry = retryable(&e);
                self.reopen = retry;
                tracing::warn!(error = %e, retryable = retry, "ledger commit failed");
                self.stats.failed_commits.fetch_add(1, Ordering::Relaxed);
                Err(retry)
            }
        }
    }

    fn answer(&mut self, write: Persist, outcome: Outcome) {
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        write.reply.send(match outcome {
            Outcome::Committed => LedgerResult::Ok,
            Outcome::Failed { retryable } => LedgerResult::Failed { retryable },
        });
    }

    fn load(&mut self, tx: Self::Load) {
        let _ = tx.send(match &self.db {
            Some(db) => load(db),
            None => Err(LedgerError::Closed),
        });
    }

    fn refuse_load(&mut self, tx: Self::Load) {
        let _ = tx.send(Err(LedgerError::Closed));
    }

    fn close(&mut self) {
        self.db = None;
    }

    fn ack(&mut self, tx: oneshot::Sender<()>) {
        let _ = tx.send(());
    }
}

/// The ledger thread: owns the database until every handle is gone or it is closed.
fn run(db: Database, path: PathBuf, rx: mpsc::UnboundedReceiver<Request>, stats: Arc<Stats>) {
    let mut store = Store {
        db: Some(db),
        path,
        reopen: false,
        stats,
    };
    ledger_batches::run(&mut Queue(rx), MAX_BATCH, &mut store);
}

fn reopen_db(path: &Path) -> Option<Database> {
    match create_db(path) {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!(error = %e, "ledger reopen failed");
            None
        }
    }
}

/// One transaction holding the batch's persists and deletes, in order.
fn commit(db: &Database, batch: &[Op<Persist, CommandId>]) -> Result<(), Box<redb::Error>> {
    let e = |e: redb::Error| Box::new(e);
    let mut w = db.begin_write().map_err(|x| e(x.into()))?;
    let any_persist = batch.iter().any(|op| matches!(op, Op::Persist(_)));
    // Deletes alone need no fsync: a delete lost to a crash is issued again on recover.
    w.set_durability(if any_persist {
        Durability::Immediate
    } else {
        Durability::Eventual
    });
    {
        let mut t = w.open_table(RECORDS).map_err(|x| e(x.into()))?;
        for op in batch {
            match op {
                Op::Persist(p) => {
                    t.insert(p.record.command.command_id.as_str(), p.bytes.as_slice())
                        .map_err(|x| e(x.into()))?;
                }
                Op::Delete(command_id) => {
                    t.remove(command_id.as_str()).map_err(|x| e(x.into()))?;
                }
            }
        }
    }
    w.commit().map_err(|x| e(x.into()))?;
    Ok(())
}

fn load(db: &Database) -> Result<Vec<LedgerRecord>, LedgerError> {
    let e = |x: redb::Error| LedgerError::Storage(Box::new(x));
    let r = db.begin_read().map_err(|x| e(x.into()))?;
    let t = r.open_table(RECORDS).map_err(|x| e(x.into()))?;
    let mut out = Vec::new();
    for item in t.iter().map_err(|x| e(x.into()))? {
        let (k, v) = item.map_err(|x| e(x.into()))?;
        let rec = codec::decode(v.value()).map_err(|detail| LedgerError::Corrupt {
            key: k.value().chars().take(128).collect(),
            detail,
        })?;
        out.push(rec);
    }
    out.sort_by_key(|r| r.seq);
    Ok(out)
}
