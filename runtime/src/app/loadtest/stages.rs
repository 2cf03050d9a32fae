//! Stage latencies and the per-second timeline, read from the terminals' durable files while
//! they grow.
//!
//! Owns the incremental reading of `<master>.emitted.jsonl` (emitted, `acked` = CORE_ACCEPTED
//! at the master), `<slave>.commands.jsonl` (`executing` = the slave EA holds the command
//! durably, just before it answers PIPE_DELIVERED) and `<slave>.broker.jsonl` (the fill: end
//! to end). Every clock is the wall clock in µs of processes on one machine. It only measures:
//! lost and duplicated copies are counted elsewhere (`cluster::account`), from the same files,
//! after the run; it must never infer correctness from what it saw live.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use serde_json::Value;

use crate::histogram::Histogram;

/// New complete lines of a growing JSON-lines file, from where the last read stopped. A file
/// replaced by a compaction (a new inode, or shorter than what was read) is read again from
/// its start; the compacted rows it begins with say so (`"compacted":true`, `retained`,
/// `positions`) and are not taken for new events.
pub struct Tail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    /// (device, inode) of the file last read.
    id: Option<(u64, u64)>,
}

/// A row a compaction wrote (a summary of rows read before): skipped without parsing, so
/// re-reading a compacted file costs no memory (serde_json writes keys sorted, no spaces).
fn is_compacted(line: &[u8]) -> bool {
    let has = |pat: &[u8]| line.windows(pat.len()).any(|w| w == pat);
    has(b"\"compacted\":true") || has(b"\"op\":\"retained\"") || has(b"\"op\":\"positions\"")
}

#[cfg(unix)]
fn file_id(m: &std::fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    Some((m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_id(_m: &std::fs::Metadata) -> Option<(u64, u64)> {
    None
}

impl Tail {
    pub fn new(path: PathBuf) -> Tail {
        Tail {
            path,
            offset: 0,
            partial: Vec::new(),
            id: None,
        }
    }

    /// Rows completed since the previous call; a line still being written waits for the next.
    pub fn read_new(&mut self) -> Vec<Value> {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        if let Ok(m) = f.metadata() {
            let id = file_id(&m);
            if id != self.id || m.len() < self.offset {
                // Replaced (compacted): its rows so far are a summary, read from the start.
                if self.id.is_some() {
                    self.offset = 0;
                    self.partial.clear();
                }
                self.id = id;
            }
        }
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut buf = Vec::new();
        let Ok(n) = f.read_to_end(&mut buf) else {
            return Vec::new();
        };
        self.offset += n as u64;
        self.partial.extend_from_slice(&buf);
        let Some(end) = self.partial.iter().rposition(|b| *b == b'\n') else {
            return Vec::new();
        };
        let rest = self.partial.split_off(end + 1);
        let done = std::mem::replace(&mut self.partial, rest);
        done.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty() && !is_compacted(l))
            .filter_map(|l| serde_json::from_slice(l).ok())
            .collect()
    }
}

/// One second of the run.
#[derive(Clone, Debug, Default)]
pub struct Second {
    pub emitted: u64,
    pub accepted: u64,
    pub executed: u64,
    pub end_to_end: Histogram,
    /// Filled by the caller from live samples.
    pub md_depth_peak: usize,
    pub md_delivered: u64,
    pub lag_max_us: u64,
    pub agents_heartbeats: u64,
}

struct Open {
    emitted_us: i64,
    /// Slave copies not yet filled; the entry goes when it reaches 0, so the map holds only
    /// what is in flight.
    copies_left: usize,
    accepted: bool,
    accepted_us: Option<i64>,
}

/// Live stage accounting over every terminal file.
pub struct Stages {
    masters: Vec<Tail>,
    commands: Vec<Tail>,
    brokers: Vec<Tail>,
    copies: usize,
    open: BTreeMap<String, Open>,
    /// Rows about an intent whose `emitted` row was not read yet (files are read one after
    /// the other): kept for the next round.
    early: Vec<(u8, String, i64)>,
    t0_us: i64,
    pub emitted: u64,
    pub accepted: u64,
    pub executed: u64,
    pub core_accepted: Histogram,
    pub pipe_delivered: Histogram,
    /// CORE_ACCEPTED seen at the master → the slave EA holds the command: the journal write →
    /// worker start latency (seed 002), give or take the ack's hop back to the master. Only
    /// copies whose ack row was read before their `executing` row are sampled.
    pub journal_to_slave: Histogram,
    pub end_to_end: Histogram,
    pub timeline: Vec<Second>,
    /// First `emitted` and last fill seen (wall µs), for a sustained rate.
    pub first_emit_us: Option<i64>,
    pub last_fill_us: Option<i64>,
}

const ACCEPTED: u8 = 0;
const DELIVERED: u8 = 1;
const EXECUTED: u8 = 2;

impl Stages {
    /// `masters`: `<account>.emitted.jsonl`; `slaves`: `(commands.jsonl, broker.jsonl)`.
    pub fn new(masters: Vec<PathBuf>, slaves: Vec<(PathBuf, PathBuf)>, t0_us: i64) -> Stages {
        let copies = slaves.len();
        let (commands, brokers) = slaves
            .into_iter()
            .map(|(c, b)| (Tail::new(c), Tail::new(b)))
            .unzip();
        Stages {
            masters: masters.into_iter().map(Tail::new).collect(),
            commands,
            brokers,
            copies,
            open: BTreeMap::new(),
            early: Vec::new(),
            t0_us,
            emitted: 0,
            accepted: 0,
            executed: 0,
            core_accepted: Histogram::default(),
            pipe_delivered: Histogram::default(),
            journal_to_slave: Histogram::default(),
            end_to_end: Histogram::default(),
            timeline: Vec::new(),
            first_emit_us: None,
            last_fill_us: None,
        }
    }

    /// The timeline's second for a wall-clock µs (clamped to the start and to a day after it:
    /// a clock that jumped must not allocate a year of seconds).
    pub fn second(&mut self, at_us: i64) -> &mut Second {
        let i = ((at_us - self.t0_us).clamp(0, 86_400_000_000) / 1_000_000) as usize;
        if self.timeline.len() <= i {
            self.timeline.resize_with(i + 1, Second::default);
        }
        &mut self.timeline[i]
    }

    fn apply(&mut self, stage: u8, intent: String, at_us: i64) -> bool {
        let Some(o) = self.open.get_mut(&intent) else {
            return false;
        };
        let d = at_us - o.emitted_us;
        match stage {
            ACCEPTED => {
                o.accepted = true;
                o.accepted_us = Some(at_us);
                if o.copies_left == 0 {
                    self.open.remove(&intent);
                }
                self.core_accepted.record_signed(d);
                self.accepted += 1;
                self.second(at_us).accepted += 1;
            }
            DELIVERED => {
                self.pipe_delivered.record_signed(d);
                if let Some(acc) = o.accepted_us {
                    self.journal_to_slave.record_signed(at_us - acc);
                }
            }
            _ => {
                o.copies_left = o.copies_left.saturating_sub(1);
                if o.copies_left == 0 && o.accepted {
                    self.open.remove(&intent);
                }
                self.end_to_end.record_signed(d);
                self.executed += 1;
                self.last_fill_us = Some(self.last_fill_us.map_or(at_us, |l| l.max(at_us)));
                let s = self.second(at_us);
                s.executed += 1;
                s.end_to_end.record_signed(d);
            }
        }
        true
    }

    /// Reads what the files gained since the last call.
    pub fn poll(&mut self) {
        let mut rows: Vec<(u8, String, i64)> = std::mem::take(&mut self.early);
        let master_rows: Vec<Value> = self.masters.iter_mut().flat_map(Tail::read_new).collect();
        for r in master_rows {
            let id = r["intent_id"].as_str().unwrap_or_default().to_string();
            match r["event"].as_str() {
                Some("emitted") => {
                    let at = r["emitted_at_us"]
                        .as_i64()
                        .unwrap_or_else(|| r["emitted_at_ms"].as_i64().unwrap_or(0) * 1000);
                    self.open.insert(
                        id,
                        Open {
                            emitted_us: at,
                            copies_left: self.copies,
                            accepted: false,
                            accepted_us: None,
                        },
                    );
                    self.emitted += 1;
                    self.first_emit_us = Some(self.first_emit_us.map_or(at, |f| f.min(at)));
                    self.second(at).emitted += 1;
                }
                Some("acked") => {
                    if let Some(at) = r["at_us"].as_i64() {
                        rows.push((ACCEPTED, id, at));
                    }
                }
                _ => {}
            }
        }
        for t in &mut self.commands {
            for r in t.read_new() {
                if r["op"].as_str() == Some("executing") && r["compacted"].as_bool() != Some(true) {
                    if let (Some(id), Some(at)) =
                        (r["command"]["intent_id"].as_str(), r["at_us"].as_i64())
                    {
                        rows.push((DELIVERED, id.to_string(), at));
                    }
                }
            }
        }
        for t in &mut self.brokers {
            for r in t.read_new() {
                if let (Some(id), Some(at)) =
                    (r["intent_id"].as_str(), r["executed_at_us"].as_i64())
                {
                    rows.push((EXECUTED, id.to_string(), at));
                }
            }
        }
        for (stage, id, at) in rows {
            if !self.apply(stage, id.clone(), at) {
                self.early.push((stage, id, at));
            }
        }
    }

    /// Rows that never matched an emitted intent (a duplicate after its intent completed, or
    /// a row from an earlier run): not latency samples.
    pub fn unmatched(&self) -> usize {
        self.early.len()
    }

    /// Intents with slave copies not yet filled.
    pub fn in_flight(&self) -> usize {
        self.open.len()
    }
}
