//! The pipe protocol between an agent and its terminals (EAs): JSON lines over a local pipe.
//!
//! This module owns the local transport of SPEC.md's "Pipe protocol": framing ([`lines`]),
//! the frames and their codec ([`frame`]), the agent's per-account listeners ([`PipeServer`]:
//! Unix domain sockets on Linux, named pipes behind `cfg(windows)`), and the terminal's
//! connector ([`client`]). It answers malformed frames with `error` frames and keeps the
//! connection open wherever the protocol allows, and it reports every connection change and
//! every undelivered outbound frame as a [`PipeEvent`].
//!
//! It must never decide anything about a trade: every decoded message goes to the machines
//! (`DeliveryManager::handle_from_ea`, `IntentQueue`, `SlaveExecutor`) as it came, and every
//! outbound message is one the machines produced. It must never drop an accepted frame silently
//! (a decoded frame is handed on with a blocking, bounded send), never block on a peer that
//! stops reading (writes have a timeout and a bounded queue, and both failures are reported),
//! and never panic on input.
//!
//! ## How the agent driver uses it
//!
//! ```no_run
//! # async fn demo() -> Result<(), echo_runtime::pipe::PipeError> {
//! use echo_runtime::pipe::{PipeEvent, PipeServer, PipeServerConfig};
//! use echo_runtime::machines::ids::AccountId;
//! use echo_runtime::machines::msg::Role;
//!
//! let cfg = PipeServerConfig::new(
//!     "/run/echo/pipes",
//!     vec![(AccountId::new("M1"), Role::Master), (AccountId::new("S1"), Role::Slave)],
//! );
//! let (server, mut events) = PipeServer::bind(cfg).await?;
//! let pipes = server.sender(); // cloneable; pipes.send(&account, AgentToEa) for ToEa outputs
//! while let Some(ev) = events.recv().await {
//!     match ev {
//!         PipeEvent::Connected { account, .. } => { /* dm.handle_pipe_connected(now, account) */ }
//!         PipeEvent::Message { account, msg, .. } => { /* dm.handle_from_ea(now, account, msg) */ }
//!         PipeEvent::Closed { account, .. } => { /* dm.handle_pipe_closed(now, account) */ }
//!         PipeEvent::WriteFailed { .. } => {
//!             if let Some((account, command_id)) = ev.failed_command() {
//!                 /* dm.handle_pipe_write_failed(now, account.clone(), command_id.clone()) */
//!             }
//!         }
//!         _ => { /* BadFrame / PeerError / HelloRefused: already answered and logged */ }
//!     }
//! }
//! # Ok(()) }
//! ```

pub mod client;
pub mod frame;
pub mod lines;
mod server;
#[cfg(unix)]
mod unix;
#[cfg(windows)]
mod windows;

pub use frame::{
    decode_agent, decode_ea, encode_agent, encode_ea, AgentFrame, DecodeError, DecodeErrorKind,
    EaFrame, ErrorFrame, Hello, PipeErrorCode, MAX_FRAME_LEN,
};
pub use server::{
    CloseReason, ConnId, PipeEvent, PipeSender, PipeServer, PipeServerConfig, SendError,
    WriteFailure,
};

use std::fmt;
use std::path::{Path, PathBuf};

use echo_statemachine::ids::AccountId;

/// Longest account id that may name a pipe.
pub const MAX_ACCOUNT_LEN: usize = 64;

/// Why a pipe could not be set up.
#[derive(Debug)]
pub enum PipeError {
    /// The account id cannot name a pipe (allowed: 1–64 of `A–Z a–z 0–9 . _ -`, not starting
    /// with `.`).
    BadAccountName { account: String },
    /// The socket path is longer than a Unix socket address allows.
    PathTooLong { path: PathBuf, max: usize },
    /// Something that is not a socket sits where the socket must go; it is left alone.
    NotASocket { path: PathBuf },
    /// Another live process is listening on the socket (a second agent?).
    InUse { path: PathBuf },
    /// The socket directory could let another user replace a socket.
    UnsafeDir { path: PathBuf, reason: String },
    /// An account appears twice in the configuration.
    DuplicateAccount { account: String },
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl fmt::Display for PipeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PipeError::BadAccountName { account } => write!(
                f,
                "account {account:?} cannot name a pipe: use 1-{MAX_ACCOUNT_LEN} of A-Z a-z 0-9 . _ - (not starting with .)"
            ),
            PipeError::PathTooLong { path, max } => write!(
                f,
                "socket path {} is longer than {max} bytes",
                path.display()
            ),
            PipeError::NotASocket { path } => write!(
                f,
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            ),
            PipeError::InUse { path } => write!(
                f,
                "{} is in use by another live listener",
                path.display()
            ),
            PipeError::UnsafeDir { path, reason } => write!(
                f,
                "socket directory {} is unsafe: {reason}",
                path.display()
            ),
            PipeError::DuplicateAccount { account } => {
                write!(f, "account {account:?} is configured twice")
            }
            PipeError::Io { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

impl std::error::Error for PipeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PipeError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Checks that an account id can name a pipe.
pub fn check_account_name(account: &AccountId) -> Result<(), PipeError> {
    let s = account.as_str();
    let ok = !s.is_empty()
        && s.len() <= MAX_ACCOUNT_LEN
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(PipeError::BadAccountName {
            account: s.to_string(),
        })
    }
}

/// The socket directory used when none is configured: `$ECHO_SOCKET_DIR`, else
/// `/tmp/echo-pipes`. Agent and terminal must agree on it.
pub fn default_socket_dir() -> PathBuf {
    std::env::var_os("ECHO_SOCKET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/echo-pipes"))
}

/// The socket of `account` in the agent's socket directory: `<dir>/<account>.sock`.
/// On Windows the pipe is `\\.\pipe\echo-<account>` and `dir` is ignored.
pub fn endpoint_path(dir: &Path, account: &AccountId) -> PathBuf {
    if cfg!(windows) {
        PathBuf::from(format!(r"\\.\pipe\echo-{}", account.as_str()))
    } else {
        dir.join(format!("{}.sock", account.as_str()))
    }
}

/// A boxed read half of a pipe connection.
pub type BoxRead = Box<dyn tokio::io::AsyncRead + Send + Unpin>;
/// A boxed write half of a pipe connection.
pub type BoxWrite = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;
