//! `echo terminal`: the reference master / slave terminal that speaks the pipe protocol.
//!
//! This module owns a stand-in for a MetaTrader terminal with its EA: the options, the pipe
//! connection to the agent (hello, reconnect with capped backoff), the durable files in the
//! data dir, a trade generator (master) and a simulated broker (slave), and the record files a
//! demo reads to count lost, duplicated and out-of-order executions and latency. The decisions
//! are the machines': the master drives the real [`IntentQueue`](crate::machines::ea::master),
//! the slave the real [`SlaveExecutor`](crate::machines::ea::slave). This module must never
//! decide whether to send, retry, execute or deduplicate anything itself — it performs the
//! machines' outputs and feeds back their results — and never report a write as durable
//! before its `fsync` returned.
//!
//! File writes are synchronous inside the terminal's loop (one batch, one `fsync`): a terminal
//! is one process standing in for one EA, and its loop must not run ahead of its disk anyway.
//!
//! Files in `--data-dir` (JSON lines, one object per line, append + fsync):
//!
//! | file | who | rows |
//! |---|---|---|
//! | `<account>.intents.jsonl` | master | the IntentQueue: `{"op":"append","intent":{…}}`, `{"op":"remove","intent_id":…,"reason":…}` |
//! | `<account>.emitted.jsonl` | master | the demo record: `{"event":"emitted",…}`, then `acked` / `rejected` / `gave_up` |
//! | `<account>.intents.jsonl` (compaction) | master | rewritten atomically to its live appends at start and whenever it holds [`master::COMPACT_FACTOR`]× more rows than live intents (and at least [`master::COMPACT_MIN_ROWS`]) |
//! | `<account>.commands.jsonl` | slave | the executor's file: `executing`, `executed`, `cancelled` rows; after a compaction it starts with `retained` rows (command + result, dedupe only), one `positions` row and `executing` rows marked `"compacted":true` (see [`slave::compact_lines`]) |
//! | `<account>.broker.jsonl` | slave | the simulated broker's book = the demo's execution record, one row per order placed |

pub mod master;
pub mod plan;
pub mod slave;
pub mod store;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use echo_statemachine::ids::AccountId;
use echo_statemachine::msg::{Role, PROTOCOL_VERSION};
use tokio::sync::mpsc;

use crate::pipe::client::connect;
use crate::pipe::{AgentFrame, DecodeError, EaFrame, Hello, MAX_FRAME_LEN};

pub const USAGE: &str = "usage: echo terminal --role master|slave --account ID [options]

  --role master|slave     which EA this terminal plays (required)
  --account ID            its trading account (required; A-Z a-z 0-9 . _ -)
  --socket PATH           the agent's pipe for this account (default <socket-dir>/<account>.sock)
  --socket-dir DIR        the agent's socket directory (default $ECHO_SOCKET_DIR or /tmp/echo-pipes)
  --data-dir DIR          where the terminal keeps its files (default ./echo-terminal-<account>)
  --max-frame-len N       longest pipe line in bytes (default 65536)
  --reconnect-max-ms N    cap of the reconnect backoff (default 5000)

master:
  --script FILE           emit the lifecycle steps of FILE (see SPEC.md, Pipe protocol)
  --rate N[/s]            emit N intents per second (default 100) ...
  --trades N              ... for N trades (default 10), each open, modifies, partials, close
                          (every fourth trade: a pending limit/stop order whose first modify
                          is its trigger)
  --modifies N            modifies per trade in rate mode (default 1)
  --partials N            partial closes per trade in rate mode (default 1, at most 49)
  --concurrent N          trades open at once in rate mode (default 4)
  --symbol SYM            symbol in rate mode (default EURUSD)
  --capacity N            IntentQueue capacity (default 1024)
  --exit-when-done        exit once every step was emitted and every intent resolved

slave:
  --reject-rate F         fraction of orders the simulated broker rejects, 0..=1 (default 0)
  --fill-delay-ms N       broker fill latency (default 0)
  --seed N                seed of the broker's deterministic rejections and price drift (default 0)
  --balance X             account balance (and equity) the terminal reports (default 10000)
  --price-drift-points N  the broker's price wanders up to N points from the master's fill,
                          so the price-deviation guard can trigger (default 0)
  --max-executed-retained N  executed commands the EA keeps for dedupe, oldest evicted first;
                          the commands file is compacted to them (default 32768, >= 1)
  --min-retained-ms N     ... and none younger than N ms is evicted (default 60000)";

/// Where the master's intents come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    Script(PathBuf),
    Rate {
        per_sec: f64,
        trades: u64,
        modifies: u32,
        partials: u32,
        concurrent: u32,
        symbol: String,
    },
}

/// The parsed options of `echo terminal`.
#[derive(Clone, Debug, PartialEq)]
pub struct TerminalArgs {
    pub role: Role,
    pub account: AccountId,
    pub socket: PathBuf,
    pub data_dir: PathBuf,
    pub max_frame_len: usize,
    pub reconnect_max: Duration,
    // master
    pub source: Source,
    pub capacity: usize,
    pub exit_when_done: bool,
    // slave
    pub reject_rate: f64,
    pub fill_delay: Duration,
    pub seed: u64,
    /// The account the terminal reports to its EA (balance; equity and free margin follow).
    pub balance: f64,
    /// How far (in points) the simulated broker's price may drift from the master's fill.
    pub price_drift_points: u32,
    /// The slave EA's dedupe window (`SlaveConfig::max_executed_retained`).
    pub max_executed_retained: usize,
    /// Its age floor (`SlaveConfig::min_retained_ms`).
    pub min_retained_ms: u64,
    /// The simulated broker's maximum lots per order (reported as the symbol's maximum; an
    /// order above it is rejected, so a larger copy needs `sizing/above_max = split`).
    pub max_lots: f64,
}

/// A bad command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgsError(pub String);

impl fmt::Display for ArgsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\n\n{USAGE}", self.0)
    }
}

impl std::error::Error for ArgsError {}

fn num<T: std::str::FromStr>(flag: &str, raw: Option<String>) -> Result<T, ArgsError> {
    let raw = raw.ok_or_else(|| ArgsError(format!("{flag} needs a value")))?;
    raw.parse()
        .map_err(|_| ArgsError(format!("{flag}: {raw:?} is not a valid number")))
}

impl TerminalArgs {
    /// Parses the options after `echo terminal`.
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<TerminalArgs, ArgsError> {
        let mut role = None;
        let mut account = None;
        let mut socket = None;
        let mut socket_dir = None;
        let mut data_dir = None;
        let mut max_frame_len = MAX_FRAME_LEN;
        let mut reconnect_max_ms: u64 = 5_000;
        let mut script = None;
        let mut rate: f64 = 100.0;
        let mut trades: u64 = 10;
        let mut modifies: u32 = 1;
        let mut partials: u32 = 1;
        let mut concurrent: u32 = 4;
        let mut symbol = "EURUSD".to_string();
        let mut capacity: usize = 1_024;
        let mut exit_when_done = false;
        let mut reject_rate: f64 = 0.0;
        let mut fill_delay_ms: u64 = 0;
        let mut seed: u64 = 0;
        let mut balance: f64 = 10_000.0;
        let mut price_drift_points: u32 = 0;
        let mut max_executed_retained: usize = echo_statemachine::ea::slave::MAX_EXECUTED_RETAINED;
        let mut min_retained_ms: u64 = echo_statemachine::ea::slave::MIN_RETAINED_MS;
        let mut max_lots: f64 = 100.0;
        let mut it = args.into_iter();
        while let Some(flag) = it.next() {
            match flag.as_str() {
                "--role" => {
                    role = Some(match it.next().as_deref() {
                        Some("master") => Role::Master,
                        Some("slave") => Role::Slave,
                        other => {
                            return Err(ArgsError(format!(
                                "--role must be master or slave, got {other:?}"
                            )))
                        }
                    })
                }
                "--account" => account = it.next(),
                "--socket" => socket = it.next().map(PathBuf::from),
                "--socket-dir" => socket_dir = it.next().map(PathBuf::from),
                "--data-dir" => data_dir = it.next().map(PathBuf::from),
                "--max-frame-len" => max_frame_len = num(&flag, it.next())?,
                "--reconnect-max-ms" => reconnect_max_ms = num(&flag, it.next())?,
                "--script" => script = it.next().map(PathBuf::from),
                "--rate" => {
                    let raw = it.next();
                    let raw = raw.map(|r| r.trim_end_matches("/s").to_string());
                    rate = num(&flag, raw)?;
                }
                "--trades" => trades = num(&flag, it.next())?,
                "--modifies" => modifies = num(&flag, it.next())?,
                "--partials" => partials = num(&flag, it.next())?,
                "--concurrent" => concurrent = num(&flag, it.next())?,
                "--symbol" => {
                    symbol = it
                        .next()
                        .ok_or_else(|| ArgsError("--symbol needs a value".into()))?
                }
                "--capacity" => capacity = num(&flag, it.next())?,
                "--exit-when-done" => exit_when_done = true,
                "--reject-rate" => reject_rate = num(&flag, it.next())?,
                "--fill-delay-ms" => fill_delay_ms = num(&flag, it.next())?,
                "--seed" => seed = num(&flag, it.next())?,
                "--balance" => balance = num(&flag, it.next())?,
                "--price-drift-points" => price_drift_points = num(&flag, it.next())?,
                "--max-executed-retained" => max_executed_retained = num(&flag, it.next())?,
                "--min-retained-ms" => min_retained_ms = num(&flag, it.next())?,
                "--max-lots" => max_lots = num(&flag, it.next())?,
                "-h" | "--help" => return Err(ArgsError("help requested".into())),
                other => return Err(ArgsError(format!("unknown option {other:?}"))),
            }
        }
        let role = role.ok_or_else(|| ArgsError("--role is required".into()))?;
        let account = AccountId::new(
            account.ok_or_else(|| ArgsError("--account is required (with a value)".into()))?,
        );
        crate::pipe::check_account_name(&account).map_err(|e| ArgsError(e.to_string()))?;
        if !(rate.is_finite() && rate > 0.0) {
            return Err(ArgsError(format!("--rate must be > 0, got {rate}")));
        }
        if !(balance.is_finite() && balance >= 0.0) || price_drift_points > 100_000 {
            return Err(ArgsError(format!(
                "--balance must be >= 0 and --price-drift-points <= 100000, got {balance} and {price_drift_points}"
            )));
        }
        if !(0.0..=1.0).contains(&reject_rate) {
            return Err(ArgsError(format!(
                "--reject-rate must be in 0..=1, got {reject_rate}"
            )));
        }
        if partials > 49 {
            return Err(ArgsError(format!(
                "--partials must be at most 49, got {partials}"
            )));
        }
        // On the FX step (0.01) and at least the FX minimum.
        let on_step = (max_lots * 100.0 - (max_lots * 100.0).round()).abs() < 1e-6;
        if !(max_lots.is_finite() && (0.01..=100_000.0).contains(&max_lots) && on_step) {
            return Err(ArgsError(format!(
                "--max-lots must be a multiple of 0.01 in 0.01..=100000, got {max_lots}"
            )));
        }
        if max_executed_retained == 0 {
            return Err(ArgsError("--max-executed-retained must be >= 1".into()));
        }
        if concurrent == 0 || capacity == 0 || max_frame_len < 1_024 {
            return Err(ArgsError(
                "--concurrent and --capacity must be >= 1, --max-frame-len >= 1024".into(),
            ));
        }
        let socket = socket.unwrap_or_else(|| {
            let dir = socket_dir.unwrap_or_else(crate::pipe::default_socket_dir);
            crate::pipe::endpoint_path(&dir, &account)
        });
        let data_dir =
            data_dir.unwrap_or_else(|| PathBuf::from(format!("echo-terminal-{account}")));
        let source = match script {
            Some(p) => Source::Script(p),
            None => Source::Rate {
                per_sec: rate,
                trades,
                modifies,
                partials,
                concurrent,
                symbol,
            },
        };
        Ok(TerminalArgs {
            role,
            account,
            socket,
            data_dir,
            max_frame_len,
            reconnect_max: Duration::from_millis(reconnect_max_ms.max(1)),
            source,
            capacity,
            exit_when_done,
            reject_rate,
            fill_delay: Duration::from_millis(fill_delay_ms),
            seed,
            balance,
            price_drift_points,
            max_executed_retained,
            min_retained_ms,
            max_lots,
        })
    }
}

/// Why a terminal stopped before its work was done.
#[derive(Debug)]
pub enum TerminalError {
    Store(store::StoreError),
    Script(plan::ScriptError),
    Io(std::io::Error),
}

impl fmt::Display for TerminalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TerminalError::Store(e) => e.fmt(f),
            TerminalError::Script(e) => e.fmt(f),
            TerminalError::Io(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for TerminalError {}

impl From<store::StoreError> for TerminalError {
    fn from(e: store::StoreError) -> Self {
        TerminalError::Store(e)
    }
}

impl From<plan::ScriptError> for TerminalError {
    fn from(e: plan::ScriptError) -> Self {
        TerminalError::Script(e)
    }
}

/// How a terminal run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Shut down from outside (signal or the shutdown future).
    Stopped,
    /// `--exit-when-done`: everything emitted and resolved; `failed` intents were refused or
    /// given up (loudly).
    Done { failed: u64 },
}

/// Runs the terminal until Ctrl-C or SIGTERM, or until done with
/// `--exit-when-done`. Exit code 0 on a clean end, 1 if intents failed, 2 on errors.
pub async fn run(args: TerminalArgs) -> ExitCode {
    let shutdown = async {
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        let int = async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = term => {}
            _ = int => {}
        }
    };
    match run_until(args, shutdown).await {
        Ok(Outcome::Stopped) | Ok(Outcome::Done { failed: 0 }) => ExitCode::SUCCESS,
        Ok(Outcome::Done { failed }) => {
            tracing::error!(failed, "terminal done with failed intents");
            ExitCode::from(1)
        }
        Err(e) => {
            tracing::error!(error = %e, "terminal stopped");
            ExitCode::from(2)
        }
    }
}

/// Runs the terminal until `shutdown` completes (or it is done, see [`Outcome`]).
pub async fn run_until(
    args: TerminalArgs,
    shutdown: impl Future<Output = ()>,
) -> Result<Outcome, TerminalError> {
    std::fs::create_dir_all(&args.data_dir).map_err(TerminalError::Io)?;
    match args.role {
        Role::Master => master::run(args, shutdown).await,
        Role::Slave => slave::run(args, shutdown).await,
    }
}

/// Monotonic time for the machines: nanoseconds since the terminal started.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock(std::time::Instant);

impl Clock {
    pub(crate) fn new() -> Self {
        Clock(std::time::Instant::now())
    }

    pub(crate) fn now(&self) -> echo_statemachine::Instant {
        echo_statemachine::Instant(self.0.elapsed().as_nanos() as u64)
    }

    /// The tokio instant of a machine deadline.
    pub(crate) fn to_tokio(self, at: echo_statemachine::Instant) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.0 + Duration::from_nanos(at.0))
    }
}

/// What the connection task tells the terminal's main loop.
pub(crate) enum LinkEvent {
    /// Connected and `hello` written; frames go to this writer until `Closed`.
    Connected(mpsc::Sender<EaFrame>),
    Frame(Result<AgentFrame, DecodeError>),
    Closed,
}

/// Connects to the agent, says hello, forwards frames both ways, and reconnects with capped
/// exponential backoff (100 ms doubling up to `reconnect_max`) whenever the pipe goes away.
pub(crate) async fn link(
    path: PathBuf,
    hello: Hello,
    max_frame_len: usize,
    reconnect_max: Duration,
    events: mpsc::Sender<LinkEvent>,
) {
    let mut failures: u32 = 0;
    loop {
        if failures > 0 {
            let ms = 100u64
                .saturating_mul(1 << failures.min(16).saturating_sub(1))
                .min(reconnect_max.as_millis() as u64);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let (mut reader, mut writer) = match connect(&path, hello.clone(), max_frame_len).await {
            Ok(c) => c,
            Err(e) => {
                if failures == 0 {
                    tracing::info!(socket = %path.display(), error = %e, "agent pipe unavailable; retrying");
                }
                failures = failures.saturating_add(1);
                continue;
            }
        };
        tracing::info!(socket = %path.display(), "connected to the agent");
        let (tx, mut rx) = mpsc::channel::<EaFrame>(4_096);
        if events.send(LinkEvent::Connected(tx)).await.is_err() {
            return;
        }
        let mut heard = false;
        loop {
            tokio::select! {
                r = reader.next() => match r {
                    Ok(Some(frame)) => {
                        heard = true;
                        if events.send(LinkEvent::Frame(frame)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::info!(error = %e, "agent pipe read failed");
                        break;
                    }
                },
                Some(first) = rx.recv() => {
                    let mut batch = vec![first];
                    while batch.len() < 256 {
                        match rx.try_recv() {
                            Ok(f) => batch.push(f),
                            Err(_) => break,
                        }
                    }
                    if let Err(e) = writer.send_all(&batch).await {
                        tracing::info!(error = %e, frames = batch.len(), "agent pipe write failed");
                        break;
                    }
                }
            }
        }
        tracing::info!(socket = %path.display(), "agent pipe closed; reconnecting");
        if events.send(LinkEvent::Closed).await.is_err() {
            return;
        }
        // A connection that carried frames resets the backoff; one closed at once does not.
        failures = if heard { 1 } else { failures.saturating_add(1) };
    }
}

/// The terminal's `hello`.
pub(crate) fn hello_for(args: &TerminalArgs) -> Hello {
    Hello {
        account: args.account.clone(),
        role: args.role,
        protocol_version: PROTOCOL_VERSION,
        software: Some(format!("echo-terminal {}", env!("CARGO_PKG_VERSION"))),
    }
}

/// Writes a frame if the pipe is up; a full or closed writer drops it (the machines resend on
/// their own timers, which is exactly what a lost pipe write looks like to them).
pub(crate) fn send_frame(writer: &Option<mpsc::Sender<EaFrame>>, frame: EaFrame) {
    match writer {
        Some(w) => {
            if w.try_send(frame).is_err() {
                tracing::warn!(
                    "pipe write queue full or closed; frame dropped (the machine will resend)"
                );
            }
        }
        None => tracing::debug!("pipe down; frame dropped (the machine will resend)"),
    }
}

/// Starts the pipe connection task of a terminal; it is aborted when the guard drops.
pub(crate) fn spawn_link(args: &TerminalArgs) -> (AbortOnDrop<()>, mpsc::Receiver<LinkEvent>) {
    let (tx, rx) = mpsc::channel(4_096);
    let task = tokio::spawn(link(
        args.socket.clone(),
        hello_for(args),
        args.max_frame_len,
        args.reconnect_max,
        tx,
    ));
    (AbortOnDrop(task), rx)
}

/// Sleeps until `at`, or forever without a deadline.
pub(crate) async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Aborts a spawned task when dropped (the terminal's pipe task dies with its loop).
pub(crate) struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
