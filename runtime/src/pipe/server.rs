//! The agent's side of the pipes: one listener and one actor per account.
//!
//! Owns, per account: the accepted connections until their `hello`, the one current
//! connection (newest `hello` wins), its reader and writer tasks, and the translation of all of
//! it into [`PipeEvent`]s in a strict per-account order: `Connected`, its `Message`s, `Closed`.
//! It must never hand on a frame from a connection after that connection's `Closed`, never
//! write on a connection that has not said `hello`, never let anything overtake the machine's
//! `handshake` on a new connection, and never decide about a message's content.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use echo_statemachine::ids::{AccountId, CommandId};
use echo_statemachine::msg::{AgentToEa, EaToAgent, Role, PROTOCOL_VERSION};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

use super::frame::{
    decode_ea, encode_agent, AgentFrame, EaFrame, ErrorFrame, Hello, PipeErrorCode,
};
use super::lines::{Framed, LineReader};
use super::{check_account_name, BoxRead, BoxWrite, DecodeError, PipeError, MAX_FRAME_LEN};

/// Identifies one accepted connection, unique within a [`PipeServer`].
pub type ConnId = u64;

/// What the listener learned; delivered in order per account.
#[derive(Debug)]
pub enum PipeEvent {
    /// A terminal said a valid `hello`: call `handle_pipe_connected`.
    Connected {
        account: AccountId,
        conn: ConnId,
        hello: Hello,
    },
    /// A decoded message from the current connection: call `handle_from_ea`.
    Message {
        account: AccountId,
        conn: ConnId,
        msg: EaToAgent,
    },
    /// The current connection ended: call `handle_pipe_closed`.
    Closed {
        account: AccountId,
        conn: ConnId,
        reason: CloseReason,
    },
    /// An outbound message was not written. For a command, call `handle_pipe_write_failed`
    /// (see [`PipeEvent::failed_command`]).
    WriteFailed {
        account: AccountId,
        msg: AgentToEa,
        reason: WriteFailure,
    },
    /// A malformed frame arrived; it was answered with an `error` frame (informational).
    BadFrame {
        account: AccountId,
        conn: ConnId,
        error: DecodeError,
    },
    /// The terminal sent an `error` frame (informational).
    PeerError {
        account: AccountId,
        conn: ConnId,
        error: ErrorFrame,
    },
    /// A connection's `hello` was refused (wrong account, role or version, or none in time);
    /// it was answered with an `error` frame and closed. No `Connected` preceded it.
    HelloRefused {
        account: AccountId,
        conn: ConnId,
        error: ErrorFrame,
    },
}

impl PipeEvent {
    /// For a `WriteFailed` of a `command`: the account and command id to report to the
    /// machine with `handle_pipe_write_failed`.
    pub fn failed_command(&self) -> Option<(&AccountId, &CommandId)> {
        match self {
            PipeEvent::WriteFailed {
                account,
                msg: AgentToEa::Command(c),
                ..
            } => Some((account, &c.command_id)),
            _ => None,
        }
    }

    pub fn account(&self) -> &AccountId {
        match self {
            PipeEvent::Connected { account, .. }
            | PipeEvent::Message { account, .. }
            | PipeEvent::Closed { account, .. }
            | PipeEvent::WriteFailed { account, .. }
            | PipeEvent::BadFrame { account, .. }
            | PipeEvent::PeerError { account, .. }
            | PipeEvent::HelloRefused { account, .. } => account,
        }
    }
}

/// Why a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The terminal closed it.
    Eof,
    /// Reading failed.
    ReadError(String),
    /// Writing failed or timed out (the failed messages were reported as `WriteFailed`).
    WriteError(String),
    /// A newer connection for the same account said `hello`.
    Replaced,
}

/// Why an outbound message was not written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteFailure {
    /// No terminal is connected for the account.
    NotConnected,
    /// The connection's outbound queue is full (the terminal is not reading).
    QueueFull,
    /// The write failed or did not finish within the write timeout.
    Io(String),
}

/// Why [`PipeSender::send`] could not queue a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendError {
    /// The account has no pipe on this server.
    UnknownAccount,
    /// The account's queue is full (the actor is behind); the message was not queued.
    Full,
    /// The server was shut down.
    Closed,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SendError::UnknownAccount => "no pipe for this account",
            SendError::Full => "pipe queue full",
            SendError::Closed => "pipe server shut down",
        })
    }
}

impl std::error::Error for SendError {}

/// Settings of a [`PipeServer`].
#[derive(Clone, Debug)]
pub struct PipeServerConfig {
    /// Directory of the Unix sockets, `<dir>/<account>.sock` (created with mode 0700 if
    /// missing). Ignored on Windows, where the pipes are `\\.\pipe\echo-<account>`.
    pub socket_dir: PathBuf,
    /// The accounts served, with the role each terminal must announce in its `hello`.
    pub accounts: Vec<(AccountId, Role)>,
    pub max_frame_len: usize,
    /// A connection that has not said `hello` by then is answered `HELLO_TIMEOUT` and closed.
    pub hello_timeout: Duration,
    /// A write (with flush) that takes longer fails the connection.
    pub write_timeout: Duration,
    /// Capacity of the event channel to the driver.
    pub event_capacity: usize,
    /// Capacity of each account's and each connection's outbound queue.
    pub outbound_capacity: usize,
}

impl PipeServerConfig {
    pub fn new(socket_dir: impl Into<PathBuf>, accounts: Vec<(AccountId, Role)>) -> Self {
        PipeServerConfig {
            socket_dir: socket_dir.into(),
            accounts,
            max_frame_len: MAX_FRAME_LEN,
            hello_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(5),
            event_capacity: 4_096,
            outbound_capacity: 4_096,
        }
    }
}

/// A cloneable handle for writing to the terminals.
#[derive(Clone, Debug)]
pub struct PipeSender {
    accounts: std::sync::Arc<BTreeMap<AccountId, mpsc::Sender<AgentToEa>>>,
}

impl PipeSender {
    /// Queues `msg` for `account`'s terminal without waiting. `Ok` means queued: a message
    /// that then cannot be written comes back as [`PipeEvent::WriteFailed`]. `Err(Full)` means
    /// it was not queued: for a command, report `handle_pipe_write_failed` at once (the machine
    /// retries with backoff); `UnknownAccount` is a configuration mismatch between the machine's
    /// accounts and [`PipeServerConfig::accounts`].
    pub fn send(&self, account: &AccountId, msg: AgentToEa) -> Result<(), SendError> {
        let tx = self
            .accounts
            .get(account)
            .ok_or(SendError::UnknownAccount)?;
        tx.try_send(msg).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::Full,
            mpsc::error::TrySendError::Closed(_) => SendError::Closed,
        })
    }

    /// The accounts this server has pipes for.
    pub fn accounts(&self) -> impl Iterator<Item = &AccountId> {
        self.accounts.keys()
    }
}

/// The agent's pipe listeners. Dropping it stops every task and removes its socket files.
pub struct PipeServer {
    sender: PipeSender,
    tasks: JoinSet<()>,
    endpoints: Vec<PathBuf>,
    #[cfg(unix)]
    _sockets: Vec<super::unix::SocketFile>,
}

impl PipeServer {
    /// Binds one listener per configured account and starts serving. Must be called inside a
    /// tokio runtime.
    pub async fn bind(
        cfg: PipeServerConfig,
    ) -> Result<(PipeServer, mpsc::Receiver<PipeEvent>), PipeError> {
        let mut seen = std::collections::BTreeSet::new();
        for (account, _) in &cfg.accounts {
            check_account_name(account)?;
            if !seen.insert(account.clone()) {
                return Err(PipeError::DuplicateAccount {
                    account: account.to_string(),
                });
            }
        }
        let (events_tx, events_rx) = mpsc::channel(cfg.event_capacity.max(1));
        let mut tasks = JoinSet::new();
        let mut senders = BTreeMap::new();
        let mut endpoints = Vec::new();
        #[cfg(unix)]
        let mut sockets = Vec::new();
        let conn_ids = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1));
        for (account, role) in &cfg.accounts {
            let (accept_tx, accept_rx) = mpsc::channel::<(BoxRead, BoxWrite)>(16);
            #[cfg(unix)]
            {
                let (listener, file) = super::unix::bind(&cfg.socket_dir, account)?;
                endpoints.push(file.path().to_path_buf());
                sockets.push(file);
                tasks.spawn(super::unix::accept_loop(
                    listener,
                    account.clone(),
                    accept_tx,
                ));
            }
            #[cfg(windows)]
            {
                let (first, name) = super::windows::create_first(account)?;
                endpoints.push(PathBuf::from(&name));
                tasks.spawn(super::windows::accept_loop(
                    first,
                    name,
                    account.clone(),
                    accept_tx,
                ));
            }
            let (out_tx, out_rx) = mpsc::channel(cfg.outbound_capacity.max(1));
            senders.insert(account.clone(), out_tx);
            let actor = Actor {
                account: account.clone(),
                role: *role,
                cfg: cfg.clone(),
                events: events_tx.clone(),
                conn_ids: conn_ids.clone(),
                current: None,
            };
            tasks.spawn(actor.run(accept_rx, out_rx));
            tracing::info!(account = %account, role = ?role, "pipe listening");
        }
        Ok((
            PipeServer {
                sender: PipeSender {
                    accounts: std::sync::Arc::new(senders),
                },
                tasks,
                endpoints,
                #[cfg(unix)]
                _sockets: sockets,
            },
            events_rx,
        ))
    }

    pub fn sender(&self) -> PipeSender {
        self.sender.clone()
    }

    /// The socket paths (or pipe names), one per account, in configuration order.
    pub fn endpoints(&self) -> &[PathBuf] {
        &self.endpoints
    }

    /// Stops every task and removes the socket files.
    pub async fn shutdown(mut self) {
        self.tasks.shutdown().await;
    }
}

/// Outbound items of one connection's writer.
enum Outgoing {
    Msg(AgentToEa),
    Error(ErrorFrame),
}

/// What a connection's tasks tell the actor.
enum Note {
    Frame(ConnId, EaToAgent),
    Bad(ConnId, DecodeError),
    Peer(ConnId, ErrorFrame),
    Ended(ConnId, CloseReason),
    WriteFailed(ConnId, Vec<AgentToEa>, String),
}

struct Current {
    id: ConnId,
    writer: mpsc::Sender<Outgoing>,
    reader: AbortHandle,
    /// Whether the machine's `handshake` went out on this connection. Until it has, nothing
    /// else is written (a message queued for the previous connection must not overtake it).
    handshaken: bool,
}

type Handshaken = (
    ConnId,
    Result<(LineReader<BufReader<BoxRead>>, BoxWrite, Hello), ErrorFrame>,
);

struct Actor {
    account: AccountId,
    role: Role,
    cfg: PipeServerConfig,
    events: mpsc::Sender<PipeEvent>,
    conn_ids: std::sync::Arc<std::sync::atomic::AtomicU64>,
    current: Option<Current>,
}

impl Actor {
    async fn run(
        mut self,
        mut accept_rx: mpsc::Receiver<(BoxRead, BoxWrite)>,
        mut out_rx: mpsc::Receiver<AgentToEa>,
    ) {
        let (note_tx, mut note_rx) = mpsc::channel::<Note>(self.cfg.event_capacity.max(1));
        let mut hellos: JoinSet<Handshaken> = JoinSet::new();
        let mut conn_tasks: JoinSet<()> = JoinSet::new();
        loop {
            let alive = tokio::select! {
                Some((r, w)) = accept_rx.recv() => {
                    let id = self.conn_ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let (account, role, cfg) = (self.account.clone(), self.role, self.cfg.clone());
                    hellos.spawn(async move { (id, handshake(id, r, w, account, role, cfg).await) });
                    true
                }
                Some(joined) = hellos.join_next(), if !hellos.is_empty() => {
                    match joined {
                        Ok((id, Ok((reader, writer, hello)))) => {
                            self.install(id, reader, writer, hello, &note_tx, &mut conn_tasks).await
                        }
                        Ok((id, Err(error))) => {
                            tracing::warn!(account = %self.account, conn = id, code = %error.code, message = %error.message, "pipe hello refused");
                            self.emit(PipeEvent::HelloRefused { account: self.account.clone(), conn: id, error }).await
                        }
                        Err(e) => {
                            tracing::error!(account = %self.account, error = %e, "pipe handshake task failed");
                            true
                        }
                    }
                }
                Some(note) = note_rx.recv() => self.on_note(note).await,
                Some(msg) = out_rx.recv() => self.on_outbound(msg).await,
                Some(_) = conn_tasks.join_next(), if !conn_tasks.is_empty() => true,
                else => false,
            };
            if !alive {
                return;
            }
        }
    }

    /// Sends an event to the driver; `false` once the driver is gone (the actor then stops).
    async fn emit(&self, ev: PipeEvent) -> bool {
        self.events.send(ev).await.is_ok()
    }

    async fn install(
        &mut self,
        id: ConnId,
        reader: LineReader<BufReader<BoxRead>>,
        writer: BoxWrite,
        hello: Hello,
        notes: &mpsc::Sender<Note>,
        tasks: &mut JoinSet<()>,
    ) -> bool {
        if let Some(old) = self.current.take() {
            old.reader.abort();
            // Best effort: the old terminal learns why; the writer then flushes and closes.
            let _ = old.writer.try_send(Outgoing::Error(ErrorFrame {
                code: PipeErrorCode::Replaced,
                message: "a newer connection for this account said hello".into(),
                ref_type: None,
                ref_id: None,
            }));
            tracing::info!(account = %self.account, conn = old.id, "pipe replaced by a newer connection");
            if !self
                .emit(PipeEvent::Closed {
                    account: self.account.clone(),
                    conn: old.id,
                    reason: CloseReason::Replaced,
                })
                .await
            {
                return false;
            }
        }
        let (wtx, wrx) = mpsc::channel(self.cfg.outbound_capacity.max(1));
        tasks.spawn(write_loop(
            id,
            writer,
            wrx,
            notes.clone(),
            self.cfg.write_timeout,
        ));
        let reader = tasks.spawn(read_loop(id, reader, wtx.clone(), notes.clone()));
        self.current = Some(Current {
            id,
            writer: wtx,
            reader,
            handshaken: false,
        });
        tracing::info!(account = %self.account, conn = id, software = ?hello.software, "pipe connected");
        self.emit(PipeEvent::Connected {
            account: self.account.clone(),
            conn: id,
            hello,
        })
        .await
    }

    fn is_current(&self, id: ConnId) -> bool {
        self.current.as_ref().is_some_and(|c| c.id == id)
    }

    async fn on_note(&mut self, note: Note) -> bool {
        let account = self.account.clone();
        match note {
            Note::Frame(conn, msg) if self.is_current(conn) => {
                self.emit(PipeEvent::Message { account, conn, msg }).await
            }
            Note::Bad(conn, error) if self.is_current(conn) => {
                tracing::warn!(account = %account, conn, code = %error.code(), frame_type = ?error.frame_type, frame_id = ?error.frame_id, error = %error, "malformed pipe frame answered with an error frame");
                self.emit(PipeEvent::BadFrame {
                    account,
                    conn,
                    error,
                })
                .await
            }
            Note::Peer(conn, error) if self.is_current(conn) => {
                tracing::warn!(account = %account, conn, code = %error.code, message = %error.message, ref_type = ?error.ref_type, ref_id = ?error.ref_id, "terminal reported a pipe error");
                self.emit(PipeEvent::PeerError {
                    account,
                    conn,
                    error,
                })
                .await
            }
            Note::WriteFailed(conn, msgs, why) if self.is_current(conn) => {
                for msg in msgs {
                    let ev = PipeEvent::WriteFailed {
                        account: account.clone(),
                        msg,
                        reason: WriteFailure::Io(why.clone()),
                    };
                    if !self.emit(ev).await {
                        return false;
                    }
                }
                true
            }
            Note::Ended(conn, reason) if self.is_current(conn) => {
                if let Some(c) = self.current.take() {
                    c.reader.abort();
                }
                tracing::info!(account = %account, conn, reason = ?reason, "pipe closed");
                self.emit(PipeEvent::Closed {
                    account,
                    conn,
                    reason,
                })
                .await
            }
            // A note of a connection already closed or replaced: its Closed was reported, so
            // nothing of it may reach the machine any more.
            _ => true,
        }
    }

    async fn on_outbound(&mut self, msg: AgentToEa) -> bool {
        let account = self.account.clone();
        let is_handshake = matches!(msg, AgentToEa::Handshake { .. });
        let c = match &mut self.current {
            Some(c) if c.handshaken || is_handshake => {
                c.handshaken = true;
                c
            }
            // No connection, or one the machine has not greeted yet: what was meant for an
            // earlier connection does not reach this one.
            _ => {
                return self
                    .emit(PipeEvent::WriteFailed {
                        account,
                        msg,
                        reason: WriteFailure::NotConnected,
                    })
                    .await;
            }
        };
        match c.writer.try_send(Outgoing::Msg(msg)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(Outgoing::Msg(msg))) => {
                tracing::warn!(account = %account, conn = c.id, "pipe outbound queue full; terminal is not reading");
                self.emit(PipeEvent::WriteFailed {
                    account,
                    msg,
                    reason: WriteFailure::QueueFull,
                })
                .await
            }
            Err(mpsc::error::TrySendError::Closed(Outgoing::Msg(msg))) => {
                self.emit(PipeEvent::WriteFailed {
                    account,
                    msg,
                    reason: WriteFailure::NotConnected,
                })
                .await
            }
            Err(_) => true,
        }
    }
}

/// Writes one frame to a connection that has no writer task yet (handshake phase).
async fn write_direct(w: &mut BoxWrite, frame: &AgentFrame) -> std::io::Result<()> {
    w.write_all(encode_agent(frame).as_bytes()).await?;
    w.flush().await
}

/// Reads until a valid `hello`; answers anything else before it. The whole exchange is bounded
/// by the hello timeout. On refusal the error frame has been written and the connection is
/// dropped by the caller.
async fn handshake(
    id: ConnId,
    r: BoxRead,
    mut w: BoxWrite,
    account: AccountId,
    role: Role,
    cfg: PipeServerConfig,
) -> Result<(LineReader<BufReader<BoxRead>>, BoxWrite, Hello), ErrorFrame> {
    let mut reader = LineReader::new(BufReader::new(r), cfg.max_frame_len);
    let wait = async {
        loop {
            let framed = match reader.next().await {
                Ok(Some(f)) => f,
                Ok(None) => return Err(()),
                Err(e) => {
                    tracing::debug!(conn = id, error = %e, "pipe read failed before hello");
                    return Err(());
                }
            };
            let reply = match framed {
                Framed::TooLong { len } => {
                    Some(DecodeError::too_long(len, cfg.max_frame_len).to_error_frame())
                }
                Framed::Line(line) => match decode_ea(&line) {
                    Ok(EaFrame::Hello(h)) => return Ok(h),
                    Ok(EaFrame::Error(e)) => {
                        tracing::warn!(conn = id, code = %e.code, message = %e.message, "terminal error frame before hello");
                        None
                    }
                    Ok(EaFrame::Msg(m)) => Some(ErrorFrame {
                        code: PipeErrorCode::HelloRequired,
                        message: "the first frame on a connection must be hello".into(),
                        ref_type: Some(frame_type_of(&m).into()),
                        ref_id: Some(frame_id_of(&m)),
                    }),
                    Err(e) if e.deserves_reply() => Some(e.to_error_frame()),
                    Err(_) => None,
                },
            };
            if let Some(reply) = reply {
                if write_direct(&mut w, &AgentFrame::Error(reply))
                    .await
                    .is_err()
                {
                    return Err(());
                }
            }
        }
    };
    let refusal = match tokio::time::timeout(cfg.hello_timeout, wait).await {
        Ok(Ok(hello)) => {
            let why = if hello.account != account {
                Some((
                    PipeErrorCode::BadHello,
                    format!("this pipe serves account {account}, not {}", hello.account),
                ))
            } else if hello.role != role {
                Some((
                    PipeErrorCode::BadHello,
                    format!(
                        "account {account} is configured as {role:?}, not {:?}",
                        hello.role
                    ),
                ))
            } else if hello.protocol_version != PROTOCOL_VERSION {
                Some((
                    PipeErrorCode::UnsupportedVersion,
                    format!(
                        "protocol_version {} is not supported; this agent speaks {PROTOCOL_VERSION}",
                        hello.protocol_version
                    ),
                ))
            } else {
                None
            };
            match why {
                None => return Ok((reader, w, hello)),
                Some((code, message)) => ErrorFrame {
                    code,
                    message,
                    ref_type: Some("hello".into()),
                    ref_id: Some(hello.account.to_string()),
                },
            }
        }
        Ok(Err(_closed)) => ErrorFrame {
            code: PipeErrorCode::HelloRequired,
            message: "connection closed before hello".into(),
            ref_type: None,
            ref_id: None,
        },
        Err(_elapsed) => ErrorFrame {
            code: PipeErrorCode::HelloTimeout,
            message: format!("no hello within {} ms", cfg.hello_timeout.as_millis()),
            ref_type: None,
            ref_id: None,
        },
    };
    // Best effort, bounded: the terminal may already be gone.
    let _ = tokio::time::timeout(cfg.write_timeout, async {
        let _ = write_direct(&mut w, &AgentFrame::Error(refusal.clone())).await;
        let _ = w.shutdown().await;
    })
    .await;
    Err(refusal)
}

fn frame_type_of(m: &EaToAgent) -> &'static str {
    match m {
        EaToAgent::Intent(_) => "intent",
        EaToAgent::PipeAck(_) => "pipe_ack",
        EaToAgent::Execution(_) => "execution",
    }
}

fn frame_id_of(m: &EaToAgent) -> String {
    match m {
        EaToAgent::Intent(i) => i.intent_id.to_string(),
        EaToAgent::PipeAck(a) => a.command_id.to_string(),
        EaToAgent::Execution(r) => r.command_id.to_string(),
    }
}

async fn read_loop(
    id: ConnId,
    mut reader: LineReader<BufReader<BoxRead>>,
    replies: mpsc::Sender<Outgoing>,
    notes: mpsc::Sender<Note>,
) {
    let max = reader.max_len();
    loop {
        let note = match reader.next().await {
            Ok(None) => Note::Ended(id, CloseReason::Eof),
            Err(e) => Note::Ended(id, CloseReason::ReadError(e.to_string())),
            Ok(Some(Framed::TooLong { len })) => {
                let e = DecodeError::too_long(len, max);
                reply(&replies, e.to_error_frame());
                Note::Bad(id, e)
            }
            Ok(Some(Framed::Line(line))) => match decode_ea(&line) {
                Ok(EaFrame::Msg(m)) => Note::Frame(id, m),
                Ok(EaFrame::Error(e)) => Note::Peer(id, e),
                Ok(EaFrame::Hello(h)) => {
                    reply(
                        &replies,
                        ErrorFrame {
                            code: PipeErrorCode::BadHello,
                            message: "hello was already received on this connection; ignored"
                                .into(),
                            ref_type: Some("hello".into()),
                            ref_id: Some(h.account.to_string()),
                        },
                    );
                    continue;
                }
                Err(e) => {
                    if e.deserves_reply() {
                        reply(&replies, e.to_error_frame());
                    }
                    Note::Bad(id, e)
                }
            },
        };
        let end = matches!(note, Note::Ended(..));
        if notes.send(note).await.is_err() || end {
            return;
        }
    }
}

/// Queues an error reply; skipped (and logged) if the terminal is not reading its replies.
fn reply(replies: &mpsc::Sender<Outgoing>, e: ErrorFrame) {
    if replies.try_send(Outgoing::Error(e)).is_err() {
        tracing::warn!("pipe error reply dropped: outbound queue full or closed");
    }
}

async fn write_loop(
    id: ConnId,
    mut w: BoxWrite,
    mut rx: mpsc::Receiver<Outgoing>,
    notes: mpsc::Sender<Note>,
    write_timeout: Duration,
) {
    let mut batch: Vec<Outgoing> = Vec::new();
    let mut buf = String::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        // Group what is already queued into one write.
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(o) => batch.push(o),
                Err(_) => break,
            }
        }
        buf.clear();
        for o in &batch {
            buf.push_str(&match o {
                Outgoing::Msg(m) => encode_agent(&AgentFrame::Msg(m.clone())),
                Outgoing::Error(e) => encode_agent(&AgentFrame::Error(e.clone())),
            });
        }
        let wrote = tokio::time::timeout(write_timeout, async {
            w.write_all(buf.as_bytes()).await?;
            w.flush().await
        })
        .await;
        let why = match wrote {
            Ok(Ok(())) => {
                batch.clear();
                continue;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("write timed out after {} ms", write_timeout.as_millis()),
        };
        // Everything in the batch and everything still queued did not reach the terminal.
        rx.close();
        while let Ok(o) = rx.try_recv() {
            batch.push(o);
        }
        let failed: Vec<AgentToEa> = batch
            .drain(..)
            .filter_map(|o| match o {
                Outgoing::Msg(m) => Some(m),
                Outgoing::Error(_) => None,
            })
            .collect();
        let _ = notes.send(Note::WriteFailed(id, failed, why.clone())).await;
        let _ = notes
            .send(Note::Ended(id, CloseReason::WriteError(why)))
            .await;
        return;
    }
    // The actor let go of this connection (closed or replaced): flush what was queued, close.
    let _ = tokio::time::timeout(write_timeout, w.shutdown()).await;
}
