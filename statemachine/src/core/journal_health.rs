//! Whether the journal is usable, and the seed-001 rule for when it is not.
//!
//! When an intent's journal write has failed `max_retries` times the journal is `Down`: the
//! core stops admitting intents (each is refused with `JOURNAL_UNAVAILABLE`, nothing is
//! pretended), logs `core_delivery_failed`, and probes the journal on a backoff timer. Any
//! successful journal answer brings it back `Up`. This module must never let an intent be
//! acknowledged while the journal is down.

use super::journal::JournalWrite;
use super::{Core, CoreLog, PendingOp, TimerKey};
use crate::spec::{MachineSpec, Subject};
use crate::time::{backoff, Instant};
use crate::transitions;

transitions! {
    /// Journal health transitions.
    pub enum JournalT ("core.journal") {
        GoDown = "T01": "Up",
            "an AcceptIntent failed max_retries times" => "Down";
            "log JournalDown (core_delivery_failed already logged by core.intake); probe timer armed",
        Probe = "T02": "Down",
            "probe timer" => "Down (probing)";
            "Journal Probe",
        ComeUp = "T03": "Down",
            "any journal write answered Ok" => "Up";
            "log JournalUp; intents admitted again",
        ProbeFailed = "T04": "Down (probing)",
            "Probe answered Failed" => "Down";
            "probe timer re-armed with backoff",
    }
}

pub const SPEC: MachineSpec = MachineSpec {
    name: "core.journal",
    summary: "Journal availability as the core sees it: stop fan-out while Down, probe until Up (seed 001).",
    states: &[
        ("Up", "writes are attempted; failures are retried per write"),
        ("Down", "no intent is admitted; a probe runs on a backoff timer"),
    ],
    invariants: &[
        "While Down, no TradeIntentAck{OK} is sent for a new intent.",
        "Down always has a probe timer or a probe in flight, so the core notices recovery.",
    ],
    transitions: JournalT::TABLE,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum JournalHealth {
    Up,
    Down {
        probes: u32,
        probe_at: Option<Instant>,
    },
}

impl JournalHealth {
    pub fn is_down(&self) -> bool {
        matches!(self, JournalHealth::Down { .. })
    }
}

impl Core {
    /// Whether the journal is considered down (intents refused).
    pub fn journal_is_down(&self) -> bool {
        self.journal.is_down()
    }

    pub(crate) fn journal_gave_up(&mut self, now: Instant) {
        if self.journal.is_down() {
            return;
        }
        let at = now + backoff(self.cfg.delivery.retry_backoff_ms.into(), 1);
        self.journal = JournalHealth::Down {
            probes: 0,
            probe_at: Some(at),
        };
        self.fire(JournalT::GoDown.spec(), Subject::None);
        self.log(CoreLog::JournalDown);
        self.arm(TimerKey::JournalProbe, at);
    }

    pub(crate) fn journal_succeeded(&mut self, _now: Instant) {
        if let JournalHealth::Down { probe_at, .. } = self.journal {
            self.disarm(TimerKey::JournalProbe, probe_at);
            self.journal = JournalHealth::Up;
            self.fire(JournalT::ComeUp.spec(), Subject::None);
            self.log(CoreLog::JournalUp);
        }
    }

    pub(crate) fn on_probe_timer(&mut self, _now: Instant) {
        if let JournalHealth::Down { probes, .. } = self.journal {
            self.journal = JournalHealth::Down {
                probes: probes + 1,
                probe_at: None,
            };
            self.fire(JournalT::Probe.spec(), Subject::None);
            self.journal_write(JournalWrite::Probe, Some(PendingOp::Probe));
        }
    }

    pub(crate) fn on_probe_result(&mut self, now: Instant, ok: bool) {
        if ok {
            return; // journal_succeeded already brought it Up
        }
        if let JournalHealth::Down { probes, .. } = self.journal {
            let at = now + backoff(self.cfg.delivery.retry_backoff_ms.into(), probes + 1);
            self.journal = JournalHealth::Down {
                probes,
                probe_at: Some(at),
            };
            self.fire(JournalT::ProbeFailed.spec(), Subject::None);
            self.arm(TimerKey::JournalProbe, at);
        }
    }
}
