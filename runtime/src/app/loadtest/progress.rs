//! The load test's progress line on stderr: a bar with live rate and p99 on a terminal, a
//! plain line every few seconds otherwise (CI logs).
//!
//! Owns formatting and pacing of that line only; it must never read a figure itself.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    tty: bool,
    total: Duration,
    last_plain: Option<Instant>,
}

/// What the line shows.
pub struct Line<'a> {
    pub phase: &'a str,
    pub elapsed: Duration,
    pub emitted_per_s: u64,
    pub fills_per_s: u64,
    pub p99_ms: f64,
    pub in_flight: usize,
    pub md_per_s: u64,
    pub note: &'a str,
}

impl Progress {
    pub fn new(total: Duration) -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            total,
            last_plain: None,
        }
    }

    pub fn show(&mut self, l: &Line) {
        let frac = (l.elapsed.as_secs_f64() / self.total.as_secs_f64().max(1e-9)).min(1.0);
        let text = format!(
            "{:<8} {:>5.0}/{:.0} s  intents {:>6}/s  fills {:>6}/s  p99 {:>8.2} ms  in flight {:>6}  md {:>7}/s {}",
            l.phase,
            l.elapsed.as_secs_f64(),
            self.total.as_secs_f64(),
            l.emitted_per_s,
            l.fills_per_s,
            l.p99_ms,
            l.in_flight,
            l.md_per_s,
            l.note
        );
        let mut err = std::io::stderr();
        if self.tty {
            let filled = (frac * 30.0) as usize;
            let _ = write!(
                err,
                "\r[{}{}] {text}\x1b[K",
                "=".repeat(filled),
                " ".repeat(30 - filled)
            );
            let _ = err.flush();
        } else if self
            .last_plain
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(5))
        {
            self.last_plain = Some(Instant::now());
            let _ = writeln!(err, "loadtest: {text}");
        }
    }

    pub fn finish(&mut self) {
        if self.tty {
            let _ = writeln!(std::io::stderr());
        }
    }
}
