//! The terminal's end of a pipe: connect, say `hello`, then read agent frames and write
//! terminal frames.
//!
//! Owns the terminal side of the transport (Unix socket or Windows named pipe) and the framing
//! of its traffic. It must never interpret what it carries: the terminal's machines do. Every
//! read yields a decoded frame or the typed [`DecodeError`] of a malformed line, so the caller
//! can answer it and keep the connection.

use std::path::Path;

use tokio::io::{AsyncWriteExt, BufReader};

use super::frame::{decode_agent, encode_ea, AgentFrame, DecodeError, EaFrame, Hello};
use super::lines::{Framed, LineReader};
use super::{BoxRead, BoxWrite};

/// Opens the raw connection to an agent's pipe (`<dir>/<account>.sock` or the named pipe).
pub async fn connect_raw(path: &Path) -> std::io::Result<(BoxRead, BoxWrite)> {
    #[cfg(unix)]
    {
        super::unix::connect(path).await
    }
    #[cfg(windows)]
    {
        super::windows::connect(path).await
    }
}

/// The read half of a terminal's connection.
pub struct FrameReader {
    lines: LineReader<BufReader<BoxRead>>,
}

impl FrameReader {
    pub fn new(r: BoxRead, max_frame_len: usize) -> Self {
        FrameReader {
            lines: LineReader::new(BufReader::new(r), max_frame_len),
        }
    }

    /// The next agent frame, or the typed error of a malformed line; `Ok(None)` at end of
    /// stream. Cancel-safe.
    pub async fn next(&mut self) -> std::io::Result<Option<Result<AgentFrame, DecodeError>>> {
        Ok(match self.lines.next().await? {
            None => None,
            Some(Framed::Line(l)) => Some(decode_agent(&l)),
            Some(Framed::TooLong { len }) => {
                Some(Err(DecodeError::too_long(len, self.lines.max_len())))
            }
        })
    }
}

/// The write half of a terminal's connection.
pub struct FrameWriter {
    w: BoxWrite,
}

impl FrameWriter {
    pub fn new(w: BoxWrite) -> Self {
        FrameWriter { w }
    }

    /// Writes and flushes one frame.
    pub async fn send(&mut self, frame: &EaFrame) -> std::io::Result<()> {
        self.w.write_all(encode_ea(frame).as_bytes()).await?;
        self.w.flush().await
    }

    /// Writes and flushes several frames with one write.
    pub async fn send_all(&mut self, frames: &[EaFrame]) -> std::io::Result<()> {
        let mut buf = String::new();
        for f in frames {
            buf.push_str(&encode_ea(f));
        }
        self.w.write_all(buf.as_bytes()).await?;
        self.w.flush().await
    }

    pub async fn shutdown(&mut self) -> std::io::Result<()> {
        self.w.shutdown().await
    }
}

/// Connects and says `hello`. The agent answers with a `handshake` frame (or an `error`
/// frame and a close), which the caller reads from the returned reader.
pub async fn connect(
    path: &Path,
    hello: Hello,
    max_frame_len: usize,
) -> std::io::Result<(FrameReader, FrameWriter)> {
    let (r, w) = connect_raw(path).await?;
    let mut writer = FrameWriter::new(w);
    writer.send(&EaFrame::Hello(hello)).await?;
    Ok((FrameReader::new(r, max_frame_len), writer))
}
