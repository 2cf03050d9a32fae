//! Helpers shared by the pipe and terminal tests (included with `#[path]`, not a test itself).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use echo_runtime::pipe::client::connect_raw;
use echo_runtime::pipe::lines::{Framed, LineReader};
use echo_runtime::pipe::{
    decode_agent, AgentFrame, BoxRead, BoxWrite, DecodeError, PipeEvent, MAX_FRAME_LEN,
};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

pub const WAIT: Duration = Duration::from_secs(10);

/// A fresh, short temp directory (socket paths must stay under 108 bytes).
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "echo-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Removes a test directory when the test ends well (kept after a failure, for a look).
pub struct Cleanup(pub PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A raw terminal-side connection for tests: writes arbitrary bytes, reads agent frames.
pub struct RawClient {
    pub reader: LineReader<BufReader<BoxRead>>,
    pub w: BoxWrite,
}

impl RawClient {
    pub async fn connect(path: &Path) -> RawClient {
        let (r, w) = connect_raw(path).await.expect("connect to the pipe");
        RawClient {
            reader: LineReader::new(BufReader::new(r), MAX_FRAME_LEN),
            w,
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).await.expect("write");
        self.w.flush().await.expect("flush");
    }

    pub async fn send_line(&mut self, line: &str) {
        let mut l = line.to_string();
        if !l.ends_with('\n') {
            l.push('\n');
        }
        self.send_raw(l.as_bytes()).await;
    }

    /// The next agent frame; `None` at end of stream. Panics after [`WAIT`].
    pub async fn recv(&mut self) -> Option<Result<AgentFrame, DecodeError>> {
        let r = tokio::time::timeout(WAIT, self.reader.next())
            .await
            .expect("timed out waiting for an agent frame")
            .expect("read");
        r.map(|f| match f {
            Framed::Line(l) => decode_agent(&l),
            Framed::TooLong { len } => Err(DecodeError::too_long(len, MAX_FRAME_LEN)),
        })
    }

    pub async fn recv_frame(&mut self) -> AgentFrame {
        match self.recv().await {
            Some(Ok(f)) => f,
            other => panic!("expected an agent frame, got {other:?}"),
        }
    }

    /// Whether nothing arrives within `d`.
    pub async fn quiet_for(&mut self, d: Duration) -> bool {
        tokio::time::timeout(d, self.reader.next()).await.is_err()
    }
}

pub async fn next_event(rx: &mut mpsc::Receiver<PipeEvent>) -> PipeEvent {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("timed out waiting for a pipe event")
        .expect("pipe server gone")
}

/// Waits until `pred` holds for an event, returning it (earlier events are discarded).
pub async fn wait_event(
    rx: &mut mpsc::Receiver<PipeEvent>,
    mut pred: impl FnMut(&PipeEvent) -> bool,
) -> PipeEvent {
    loop {
        let ev = next_event(rx).await;
        if pred(&ev) {
            return ev;
        }
    }
}

/// `echo terminal` options for a test terminal.
pub fn terminal_args(
    role: &str,
    account: &str,
    sock: &Path,
    data: &Path,
    extra: &[&str],
) -> echo_runtime::terminal::TerminalArgs {
    let base = [
        "--role",
        role,
        "--account",
        account,
        "--socket",
        sock.to_str().expect("utf-8 path"),
        "--data-dir",
        data.to_str().expect("utf-8 path"),
    ];
    let all = base.iter().chain(extra.iter()).map(|s| s.to_string());
    echo_runtime::terminal::TerminalArgs::parse(all).expect("terminal args")
}

/// The JSON rows of a terminal file.
pub fn rows(path: PathBuf) -> Vec<serde_json::Value> {
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON row"))
        .collect()
}
