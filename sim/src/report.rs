//! The end-of-run ledger of a world: what the masters emitted against what every subscribed
//! slave confirmed, failed, lost or executed twice, and how long copies took.
//!
//! This module only reads a finished world's bookkeeping; it must never change the world.

use std::collections::BTreeMap;
use std::fmt;

use echo_statemachine::ids::{AccountId, CommandId};
use echo_statemachine::msg::ErrorCode;

use crate::world::World;

/// Per-run figures, as `echo demo` prints them.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub intents_emitted: u64,
    pub copies_expected: u64,
    pub confirmed_per_slave: BTreeMap<AccountId, u64>,
    pub failed: BTreeMap<&'static str, u64>,
    pub lost: Vec<CommandId>,
    pub duplicated: Vec<CommandId>,
    pub out_of_order: Vec<String>,
    pub master_gave_up: u64,
    pub latency_p50_us: u64,
    pub latency_p99_us: u64,
    pub latency_max_us: u64,
    pub simulated_ms: u64,
    pub steps: u64,
}

impl Report {
    /// Nothing lost, nothing executed twice, nothing out of order.
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty() && self.duplicated.is_empty() && self.out_of_order.is_empty()
    }

    pub fn of(w: &World) -> Report {
        let mut r = Report {
            intents_emitted: w.book.emitted.len() as u64,
            master_gave_up: w.book.gave_up,
            simulated_ms: w.now.as_millis(),
            steps: w.steps,
            ..Report::default()
        };
        let mut latencies = Vec::new();
        for (m, master) in w.master_accounts().iter().enumerate() {
            let slaves = w.slaves_of(m);
            for (intent, (at, _, _)) in w.book.emitted.iter() {
                if !intent.as_str().starts_with(&format!("m{m}-")) {
                    continue;
                }
                let _ = master;
                for s in &slaves {
                    r.copies_expected += 1;
                    let cmd = CommandId::for_delivery(intent, s);
                    if let Some(done) = w.book.confirmed_at.get(&cmd) {
                        *r.confirmed_per_slave.entry(s.clone()).or_insert(0) += 1;
                        latencies.push(done.saturating_since(*at).0 / 1_000);
                    } else if let Some(reason) = w.book.failed.get(&cmd) {
                        *r.failed.entry(reason_name(*reason)).or_insert(0) += 1;
                    } else {
                        r.lost.push(cmd);
                    }
                }
            }
        }
        for ((_, cmd), n) in &w.book.executions {
            if *n > 1 {
                r.duplicated.push(cmd.clone());
            }
        }
        for ((slave, trade), seqs) in &w.book.order {
            if seqs.windows(2).any(|p| p[1] <= p[0]) {
                r.out_of_order.push(format!("{slave}/{trade}: {seqs:?}"));
            }
        }
        latencies.sort_unstable();
        let pick = |q: u64| -> u64 {
            if latencies.is_empty() {
                0
            } else {
                let i = ((latencies.len() as u64 - 1) * q / 100) as usize;
                latencies[i]
            }
        };
        r.latency_p50_us = pick(50);
        r.latency_p99_us = pick(99);
        r.latency_max_us = latencies.last().copied().unwrap_or(0);
        r
    }
}

fn reason_name(e: ErrorCode) -> &'static str {
    e.name()
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "intents emitted      {}", self.intents_emitted)?;
        writeln!(f, "copies expected      {}", self.copies_expected)?;
        for (s, n) in &self.confirmed_per_slave {
            writeln!(f, "  confirmed at {s:<10} {n}")?;
        }
        if self.failed.is_empty() {
            writeln!(f, "failed               0")?;
        }
        for (reason, n) in &self.failed {
            writeln!(f, "failed ({reason})  {n}")?;
        }
        writeln!(f, "lost                 {}", self.lost.len())?;
        writeln!(f, "duplicated           {}", self.duplicated.len())?;
        writeln!(f, "out of order         {}", self.out_of_order.len())?;
        writeln!(f, "master gave up       {}", self.master_gave_up)?;
        writeln!(
            f,
            "latency master→slave p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (simulated)",
            self.latency_p50_us as f64 / 1e3,
            self.latency_p99_us as f64 / 1e3,
            self.latency_max_us as f64 / 1e3
        )?;
        write!(
            f,
            "simulated {} ms in {} steps",
            self.simulated_ms, self.steps
        )?;
        for c in self.lost.iter().take(10) {
            write!(f, "\n  LOST {c}")?;
        }
        for c in self.duplicated.iter().take(10) {
            write!(f, "\n  DUPLICATED {c}")?;
        }
        for c in self.out_of_order.iter().take(10) {
            write!(f, "\n  OUT OF ORDER {c}")?;
        }
        Ok(())
    }
}
