//! The end-of-run ledger of a world: what the masters emitted against what every subscribed
//! slave confirmed, failed, lost or executed twice, and how long copies took.
//!
//! This module only reads a finished world's bookkeeping; it must never change the world.

use std::collections::BTreeMap;
use std::fmt;

use echo_statemachine::core::DeliveryStatus;
use echo_statemachine::ea::slave::{leg_order_id, BrokerOutcome};
use echo_statemachine::ids::{AccountId, CommandId};
use echo_statemachine::msg::{ErrorCode, IntentKind};
use echo_statemachine::policy::sizing::MAX_SPLIT_LEGS;

use crate::world::World;

/// Per-run figures, as `echo demo` prints them.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub intents_emitted: u64,
    pub copies_expected: u64,
    pub confirmed_per_slave: BTreeMap<AccountId, u64>,
    pub failed: BTreeMap<&'static str, u64>,
    pub lost: Vec<CommandId>,
    pub duplicated: Vec<String>,
    pub out_of_order: Vec<String>,
    /// Journal and slave disagree (acked but not executed once, FAILED but executed).
    pub inconsistent: Vec<String>,
    /// Every safety violation the world saw, in order.
    pub safety: Vec<String>,
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
        self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.out_of_order.is_empty()
            && self.inconsistent.is_empty()
            && self.safety.is_empty()
    }

    pub fn of(w: &World) -> Report {
        let mut r = Report {
            intents_emitted: w.book.emitted.len() as u64,
            master_gave_up: w.book.gave_up.len() as u64,
            simulated_ms: w.now.as_millis(),
            steps: w.steps,
            ..Report::default()
        };
        let mut latencies = Vec::new();
        for (m, _) in w.master_accounts().iter().enumerate() {
            let prefix = format!("m{m}-");
            for (intent, (at, kind, _)) in w.book.emitted.iter() {
                if !intent.as_str().starts_with(&prefix) {
                    continue;
                }
                // Journaled: the slaves its plan held at admission; else its home slaves.
                let slaves: Vec<usize> = match w.book.plan.get(intent) {
                    Some(plan) => plan
                        .iter()
                        .filter_map(|a| w.slave_accounts().iter().position(|x| x == a))
                        .collect(),
                    None => w.slaves_of(m),
                };
                for s in slaves {
                    r.copies_expected += 1;
                    let account = &w.slave_accounts()[s];
                    let cmd = CommandId::for_delivery(intent, account);
                    let placed = w.book.placed.get(&(s, cmd.clone())).copied().unwrap_or(0);
                    // A split's legs are orders of their own: filled if any of them is. A
                    // trigger's fill of no volume is its pending order deleted, nothing opened.
                    let trigger = *kind == IntentKind::PendingTrigger;
                    let filled = (0..MAX_SPLIT_LEGS as u32).any(|leg| {
                        matches!(
                            w.broker_outcome(s, &leg_order_id(&cmd, leg)),
                            Some(BrokerOutcome::Filled { volume, .. }) if !(trigger && *volume == 0.0)
                        )
                    });
                    if !w.journal_has_intent(intent) {
                        if w.book.gave_up.contains(intent) {
                            *r.failed.entry("MASTER_GAVE_UP").or_insert(0) += 1;
                        } else if let Some(e) = w.book.refused.get(intent) {
                            *r.failed.entry(reason_name(*e)).or_insert(0) += 1;
                        } else {
                            r.lost.push(cmd.clone());
                        }
                        if placed > 0 {
                            r.inconsistent
                                .push(format!("{cmd} executed but its intent was never journaled"));
                        }
                        continue;
                    }
                    match w.journal_delivery(&cmd).map(|d| (d.status, d.reason)) {
                        Some((DeliveryStatus::Acked, _)) => {
                            *r.confirmed_per_slave.entry(account.clone()).or_insert(0) += 1;
                            if let Some(done) = w.book.confirmed_at.get(&cmd) {
                                latencies.push(done.saturating_since(*at).0 / 1_000);
                            }
                            // A partial close whose share was below the slave's step, or a
                            // close of a position already closed in full, is FILLED with 0
                            // lots and never placed.
                            let kept = placed == 0 && w.kept_share(s, &cmd);
                            if !(kept || placed == 1 && filled) {
                                r.inconsistent.push(format!("{cmd} acked in the journal but placed {placed}× (filled: {filled})"));
                            }
                        }
                        Some((DeliveryStatus::Failed, Some(ErrorCode::NoPosition))) => {
                            *r.failed
                                .entry(reason_name(ErrorCode::NoPosition))
                                .or_insert(0) += 1;
                            // The script closes last, so NO_POSITION is only right when the
                            // trade's open did not succeed at this slave.
                            if let Some(open) = open_of(w, intent) {
                                let oc = CommandId::for_delivery(&open, account);
                                if w.journal_delivery(&oc).map(|d| d.status)
                                    == Some(DeliveryStatus::Acked)
                                {
                                    r.inconsistent.push(format!(
                                        "{cmd} FAILED NO_POSITION although its open {oc} was confirmed at that slave"
                                    ));
                                }
                            }
                        }
                        Some((DeliveryStatus::Failed, reason)) => {
                            let reason = reason.map(reason_name).unwrap_or("NO_REASON");
                            *r.failed.entry(reason).or_insert(0) += 1;
                            // A close of a split position that closed some legs, not all.
                            if filled && reason != ErrorCode::SplitIncomplete.name() {
                                r.inconsistent.push(format!("{cmd} FAILED ({reason}) in the journal but filled at the slave's broker"));
                            }
                        }
                        _ => r.lost.push(cmd.clone()),
                    }
                }
            }
        }
        r.inconsistent.extend(w.lifecycle_inconsistencies());
        for ((s, cmd), n) in &w.book.placed {
            if *n > 1 {
                r.duplicated.push(format!("slave-{s} {cmd}"));
            }
        }
        r.out_of_order = w
            .violations
            .iter()
            .filter(|v| v.what.contains(" after seq "))
            .map(|v| v.what.clone())
            .collect();
        r.safety = w
            .violations
            .iter()
            .map(|v| format!("{}: {}", v.at, v.what))
            .collect();
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

/// The OPEN intent of the trade `intent` belongs to (trade ids compared case-blind, as the
/// master meant them).
fn open_of(
    w: &World,
    intent: &echo_statemachine::ids::IntentId,
) -> Option<echo_statemachine::ids::IntentId> {
    let (_, _, trade) = w.book.emitted.get(intent)?;
    let prefix = intent.as_str().split('-').next()?;
    let want = trade.as_str().to_lowercase();
    w.book
        .emitted
        .iter()
        .find(|(id, (_, kind, t))| {
            kind.starts_trade()
                && id.as_str().split('-').next() == Some(prefix)
                && t.as_str().to_lowercase() == want
        })
        .map(|(id, _)| id.clone())
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
        writeln!(f, "inconsistent         {}", self.inconsistent.len())?;
        writeln!(f, "safety violations    {}", self.safety.len())?;
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
        for c in self.inconsistent.iter().take(10) {
            write!(f, "\n  INCONSISTENT {c}")?;
        }
        for c in self.safety.iter().take(10) {
            write!(f, "\n  SAFETY {c}")?;
        }
        Ok(())
    }
}
