//! Line framing: splits a byte stream into `\n`-terminated frames of bounded length.
//!
//! This module owns the framing rules of SPEC.md's "Pipe protocol": a frame ends at `\n`, an
//! optional `\r` before it is dropped, empty lines are skipped (keep-alives), and a line longer
//! than the limit is discarded up to its `\n` and reported once as too long, after which the
//! stream goes on. It holds at most `max + 1` bytes of one line, never the whole stream, and
//! must never interpret a frame's content.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// One framing result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Framed {
    /// A complete line, without `\n` / `\r\n`, never empty.
    Line(Vec<u8>),
    /// A line of `len` bytes (at least) exceeded the limit and was discarded.
    TooLong { len: usize },
}

/// Reads framed lines from a buffered reader. Cancel-safe: dropping a pending
/// [`LineReader::next`] future loses no bytes (state lives in the reader, and the underlying
/// buffer is consumed only after its bytes were copied).
#[derive(Debug)]
pub struct LineReader<R> {
    inner: R,
    max: usize,
    buf: Vec<u8>,
    /// Bytes of an oversized line seen so far while skipping to its end.
    discarding: Option<usize>,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    pub fn new(inner: R, max: usize) -> Self {
        LineReader {
            inner,
            max,
            buf: Vec::new(),
            discarding: None,
        }
    }

    /// The line length limit, in bytes.
    pub fn max_len(&self) -> usize {
        self.max
    }

    /// The next frame; `Ok(None)` at end of stream (a last line without `\n` is dropped: the
    /// peer went away in the middle of writing it, so it was never a frame).
    pub async fn next(&mut self) -> std::io::Result<Option<Framed>> {
        loop {
            let avail = self.inner.fill_buf().await?;
            if avail.is_empty() {
                if !self.buf.is_empty() || self.discarding.is_some() {
                    tracing::debug!(
                        bytes = self.buf.len(),
                        "pipe closed in the middle of a line; partial line dropped"
                    );
                }
                self.buf.clear();
                self.discarding = None;
                return Ok(None);
            }
            let n = avail.len();
            match avail.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let result = if let Some(seen) = self.discarding.take() {
                        Some(Framed::TooLong { len: seen + i })
                    } else if self.buf.len() + i > self.max + 1 {
                        // +1: a trailing '\r' does not count against the limit.
                        let len = self.buf.len() + i;
                        self.buf.clear();
                        Some(Framed::TooLong { len })
                    } else {
                        self.buf.extend_from_slice(&avail[..i]);
                        let mut line = std::mem::take(&mut self.buf);
                        if line.last() == Some(&b'\r') {
                            line.pop();
                        }
                        if line.len() > self.max {
                            Some(Framed::TooLong { len: line.len() })
                        } else if line.is_empty() {
                            None
                        } else {
                            Some(Framed::Line(line))
                        }
                    };
                    self.inner.consume(i + 1);
                    if let Some(r) = result {
                        return Ok(Some(r));
                    }
                }
                None => {
                    if let Some(seen) = self.discarding.as_mut() {
                        *seen += n;
                    } else if self.buf.len() + n > self.max + 1 {
                        self.discarding = Some(self.buf.len() + n);
                        self.buf.clear();
                    } else {
                        self.buf.extend_from_slice(avail);
                    }
                    self.inner.consume(n);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    /// Every framing result of `input`, read through a buffer of `cap` bytes.
    async fn frames(input: &[u8], cap: usize, max: usize) -> Vec<Framed> {
        let mut r = LineReader::new(BufReader::with_capacity(cap, input), max);
        let mut out = Vec::new();
        while let Some(f) = r.next().await.expect("in-memory read") {
            out.push(f);
        }
        out
    }

    fn line(s: &str) -> Framed {
        Framed::Line(s.as_bytes().to_vec())
    }

    #[tokio::test]
    async fn splits_lines_whatever_the_chunking() {
        let input = b"{\"a\":1}\n\r\n\n{\"b\":2}\r\nxyz\ntail-without-newline";
        for cap in [1, 2, 3, 7, 64] {
            assert_eq!(
                frames(input, cap, 16).await,
                vec![line("{\"a\":1}"), line("{\"b\":2}"), line("xyz")],
                "cap {cap}"
            );
        }
    }

    #[tokio::test]
    async fn an_oversized_line_is_reported_once_and_the_stream_goes_on() {
        let mut input = b"ok\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 40));
        input.extend(b"\nafter\n1234567890\r\n12345678901\n");
        for cap in [1, 5, 8, 100] {
            assert_eq!(
                frames(&input, cap, 10).await,
                vec![
                    line("ok"),
                    Framed::TooLong { len: 40 },
                    line("after"),
                    line("1234567890"),
                    Framed::TooLong { len: 11 },
                ],
                "cap {cap}"
            );
        }
    }
}
