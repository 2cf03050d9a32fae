//! Slave side, delivery half: pipes to the EAs, pipe writes with ack timeout, backoff and
//! `max_retries`, the EA's acks and execution results.
//!
//! Owns which pipes are open and every pipe attempt of a durable entry. It must never write a
//! command before its Buffered record is durable or before the pipe's Handshake, never count a
//! closed pipe as the EA refusing, and never let a result from the wrong account reach the core.

use super::{later, AgentOutput, DeliveryManager, EntryPhase, LedgerState, LinkState, T};
use crate::ids::{AccountId, CommandId};
use crate::msg::{
    AckResult, AckStage, AgentToEa, ErrorCode, ExecutionResult, PipeDeliveryAck, PipeStatus, Role,
    PROTOCOL_VERSION,
};
use crate::spec::Subject;
use crate::time::{backoff, Duration, Instant};

impl DeliveryManager {
    pub(super) fn on_pipe_connected(&mut self, now: Instant, account: AccountId) {
        let subject = Subject::Account(account.clone());
        let Some(&role) = self.accounts.get(&account) else {
            self.fire(T::T30, subject);
            self.metrics.unknown_pipes += 1;
            return;
        };
        self.fire(T::T27, subject);
        self.pipes.insert(account.clone());
        self.push(AgentOutput::ToEa {
            account: account.clone(),
            msg: AgentToEa::Handshake {
                account: account.clone(),
                protocol_version: PROTOCOL_VERSION,
            },
        });
        if role == Role::Master {
            if self.config_from_core {
                self.push(AgentOutput::ToEa {
                    account,
                    msg: AgentToEa::DeliveryConfig(self.config),
                });
            }
            return;
        }
        // A (re)opened pipe is a fresh chance: every undelivered command of this slave starts a
        // new attempt budget and is written again, in ledger order (as far as its window goes).
        self.pipe_window.remove(&account);
        self.pipe_queue.remove(&account);
        let seqs: Vec<u64> = self
            .entries
            .values()
            .filter(|e| e.command.slave == account && e.phase.is_pipe_pending())
            .map(|e| e.seq)
            .collect();
        for &seq in &seqs {
            self.set_deadline(seq, None);
            if let Some(e) = self.entries.get_mut(&seq) {
                e.phase = EntryPhase::WaitingPipe;
                e.attempts = 0;
            }
        }
        for seq in seqs {
            self.write_to_pipe(now, seq);
        }
    }

    pub(super) fn on_pipe_closed(&mut self, account: AccountId) {
        if !self.pipes.remove(&account) {
            return;
        }
        self.fire(T::T29, Subject::Account(account.clone()));
        // Everything of this slave is re-written in ledger order when its pipe reopens (T27).
        self.pipe_window.remove(&account);
        self.pipe_queue.remove(&account);
        let seqs: Vec<u64> = self
            .entries
            .values()
            .filter(|e| {
                e.command.slave == account
                    && matches!(e.phase, EntryPhase::AwaitingAck | EntryPhase::Backoff)
            })
            .map(|e| e.seq)
            .collect();
        for seq in seqs {
            self.set_deadline(seq, None);
            if let Some(e) = self.entries.get_mut(&seq) {
                e.phase = EntryPhase::WaitingPipe;
                e.written_at = None;
            }
        }
    }

    pub(super) fn on_pipe_write_failed(
        &mut self,
        now: Instant,
        account: AccountId,
        command_id: CommandId,
    ) {
        match self.awaited(&account, &command_id) {
            Some((seq, EntryPhase::AwaitingAck)) => self.attempt_failed(now, seq),
            _ => self.stale_pipe_event(command_id),
        }
    }

    pub(super) fn on_pipe_ack(&mut self, now: Instant, account: AccountId, ack: PipeDeliveryAck) {
        let Some((seq, phase)) = self.awaited(&account, &ack.command_id) else {
            return self.stale_pipe_event(ack.command_id);
        };
        let subject = Subject::Command(ack.command_id.clone());
        match (ack.status, phase) {
            (PipeStatus::Ok, p) if p.is_pipe_pending() => {
                self.fire(T::T31, subject);
                self.sample_latency(now, seq);
                self.set_deadline(seq, None);
                if let Some(e) = self.entries.get_mut(&seq) {
                    e.phase = EntryPhase::Confirming;
                    e.busy = 0;
                }
                self.set_target(seq, LedgerState::Delivered);
            }
            (PipeStatus::Retry, EntryPhase::AwaitingAck) => {
                if crate::mutants::active(crate::mutants::Mutant::EaBusySpendsAttempts) {
                    self.attempt_failed(now, seq);
                } else {
                    self.ea_busy(now, seq);
                }
            }
            (PipeStatus::Failed, p) if p.is_pipe_pending() => {
                let reason = ack.reason.unwrap_or(ErrorCode::EaRejected);
                self.fire(T::T35, subject);
                self.metrics.pipe_retry_total += 1;
                self.metrics.ea_rejected_total += 1;
                self.set_deadline(seq, None);
                if let Some(e) = self.entries.get_mut(&seq) {
                    e.phase = EntryPhase::Rejecting;
                }
                self.set_target(seq, LedgerState::Rejected { reason });
            }
            _ => return self.stale_pipe_event(ack.command_id),
        }
        self.pump_pipe(now, &account);
    }

    pub(super) fn on_execution(&mut self, now: Instant, account: AccountId, r: ExecutionResult) {
        let served_slave = self.accounts.get(&account) == Some(&Role::Slave);
        let entry = self
            .seq_of(&r.command_id)
            .and_then(|seq| self.entries.get(&seq).map(|e| (seq, e)));
        let foreign = entry.is_some_and(|(_, e)| e.command.slave != account);
        if !served_slave || r.slave != account || foreign {
            self.fire(T::T40, Subject::Account(account));
            self.metrics.results_protocol_violations += 1;
            return;
        }
        let subject = Subject::Command(r.command_id.clone());
        let first = entry.and_then(|(seq, e)| match e.phase {
            EntryPhase::Completing | EntryPhase::Completed | EntryPhase::Rejected => None,
            p => Some((seq, p)),
        });
        let Some((seq, phase)) = first else {
            self.fire(T::T39, subject);
            return self.forward_or_hold(r);
        };
        self.fire(T::T38, subject);
        if matches!(phase, EntryPhase::AwaitingAck | EntryPhase::Backoff) {
            self.set_deadline(seq, None);
        }
        let online = self.link == LinkState::Online;
        if let Some(e) = self.entries.get_mut(&seq) {
            e.phase = EntryPhase::Completing;
            if !online {
                e.unsent = Some(r.clone());
            }
        }
        if online {
            self.send_result(r);
        } else {
            self.metrics.results_held += 1;
        }
        self.set_target(seq, LedgerState::Completed);
        self.complete_if_done(seq);
        self.pump_pipe(now, &account);
    }

    /// A result the ledger has no open entry for: sent, or held in the bounded outbox.
    fn forward_or_hold(&mut self, r: ExecutionResult) {
        if self.link == LinkState::Online {
            return self.send_result(r);
        }
        self.metrics.results_held += 1;
        if self.outbox.len() >= self.limits.max_result_outbox {
            self.metrics.results_evicted += 1;
            let Some(oldest) = self.outbox.pop_front() else {
                // A zero-sized outbox holds nothing: the newcomer itself is the evicted one.
                return self.fire(T::T44, Subject::Command(r.command_id));
            };
            self.fire(T::T44, Subject::Command(oldest.command_id));
        }
        self.outbox.push_back(r);
    }

    /// T28: one pipe attempt — or T48: the slave's window is full and the entry waits its turn.
    pub(super) fn write_to_pipe(&mut self, now: Instant, seq: u64) {
        let ack_timeout = Duration::from_millis(self.config.ack_timeout_ms.into());
        let Some(e) = self.entries.get(&seq) else {
            return;
        };
        let (account, id) = (e.command.slave.clone(), e.command.command_id.clone());
        if !self.pipes.contains(&account) {
            if let Some(e) = self.entries.get_mut(&seq) {
                e.phase = EntryPhase::WaitingPipe;
            }
            return;
        }
        let holds = self
            .pipe_window
            .get(&account)
            .is_some_and(|w| w.contains(&seq));
        if !holds {
            if self.window_used(&account) >= self.limits.max_pipe_inflight {
                if let Some(e) = self.entries.get_mut(&seq) {
                    e.phase = EntryPhase::WaitingPipe;
                }
                self.fire(T::T48, Subject::Command(id));
                self.pipe_queue.entry(account).or_default().insert(seq);
                return;
            }
            self.pipe_window.entry(account).or_default().insert(seq);
        }
        let Some(e) = self.entries.get_mut(&seq) else {
            return;
        };
        e.attempts += 1;
        e.phase = EntryPhase::AwaitingAck;
        e.written_at = Some(now);
        let (account, command) = (e.command.slave.clone(), e.command.clone());
        self.fire(T::T28, Subject::Command(command.command_id.clone()));
        self.set_deadline(seq, Some(later(now, ack_timeout)));
        self.push(AgentOutput::ToEa {
            account,
            msg: AgentToEa::Command(command),
        });
    }

    pub(super) fn write_if_pipe_open(&mut self, now: Instant, seq: u64) {
        let open = self
            .entries
            .get(&seq)
            .is_some_and(|e| self.pipes.contains(&e.command.slave));
        if open {
            self.write_to_pipe(now, seq);
        }
    }

    /// T49: the EA answered RETRY — it is alive and asks for time (`max_pending` commands
    /// unfinished, or its write-ahead of this command not durable yet). That is backpressure,
    /// not a failed write: the attempt is given back, so a busy EA never parks a command nor
    /// makes the core spend its attempts (PIPE_UNAVAILABLE); the entry keeps its place in the
    /// pipe window, so nothing more piles up at the EA, and is written again after a backoff
    /// that grows with the RETRYs in a row but never past the ack timeout.
    fn ea_busy(&mut self, now: Instant, seq: u64) {
        let base: u64 = self.config.retry_backoff_ms.into();
        let cap = Duration::from_millis(base.max(self.config.ack_timeout_ms.into()));
        let Some(e) = self.entries.get_mut(&seq) else {
            return;
        };
        self.metrics.pipe_retry_total += 1;
        e.attempts = e.attempts.saturating_sub(1);
        e.busy = e.busy.saturating_add(1);
        e.written_at = None;
        e.phase = EntryPhase::Backoff;
        let wait = backoff(base, e.busy);
        let at = later(now, if wait > cap { cap } else { wait });
        let subject = Subject::Command(e.command.command_id.clone());
        self.fire(T::T49, subject);
        self.set_deadline(seq, Some(at));
    }

    /// T33 / T34: the attempt in flight did not land.
    pub(super) fn attempt_failed(&mut self, now: Instant, seq: u64) {
        let max = self.config.max_retries;
        let base = self.config.retry_backoff_ms.into();
        let Some(e) = self.entries.get_mut(&seq) else {
            return;
        };
        self.metrics.pipe_retry_total += 1;
        e.written_at = None;
        let subject = Subject::Command(e.command.command_id.clone());
        if e.attempts >= max {
            e.phase = EntryPhase::Parked;
            let ack = e.ack(
                AckStage::PipeDelivered,
                AckResult::Failed,
                Some(ErrorCode::PipeUnavailable),
            );
            self.fire(T::T34, subject);
            self.metrics.pipe_unavailable_total += 1;
            self.set_deadline(seq, None);
            self.report(ack);
            if let Some(account) = self.entries.get(&seq).map(|e| e.command.slave.clone()) {
                self.pump_pipe(now, &account);
            }
        } else {
            e.phase = EntryPhase::Backoff;
            let at = later(now, backoff(base, e.attempts));
            self.fire(T::T33, subject);
            self.set_deadline(seq, Some(at));
        }
    }

    /// Places taken in `account`'s pipe window, after forgetting the entries that left it.
    fn window_used(&mut self, account: &AccountId) -> usize {
        let Some(w) = self.pipe_window.get_mut(account) else {
            return 0;
        };
        let entries = &self.entries;
        let leak = crate::mutants::active(crate::mutants::Mutant::PipeWindowLeaksOnAck);
        w.retain(|seq| {
            entries.get(seq).is_some_and(|e| {
                e.command.slave == *account
                    && (matches!(e.phase, EntryPhase::AwaitingAck | EntryPhase::Backoff)
                        || (leak && e.phase != EntryPhase::WaitingPipe))
            })
        });
        let n = w.len();
        if n == 0 {
            self.pipe_window.remove(account);
        }
        n
    }

    /// Writes the queued entries of `account` (ledger order) while its window has room.
    /// Called wherever an entry may have left the window; a call with nothing to do is cheap.
    pub(super) fn pump_pipe(&mut self, now: Instant, account: &AccountId) {
        if !self.pipes.contains(account) {
            return;
        }
        while self.pipe_queue.get(account).is_some_and(|q| !q.is_empty())
            && self.window_used(account) < self.limits.max_pipe_inflight
        {
            let Some(seq) = self.pipe_queue.get_mut(account).and_then(|q| q.pop_first()) else {
                break;
            };
            let waiting = self
                .entries
                .get(&seq)
                .is_some_and(|e| e.phase == EntryPhase::WaitingPipe && e.command.slave == *account);
            if waiting {
                self.write_to_pipe(now, seq);
            }
        }
        if self.pipe_queue.get(account).is_some_and(|q| q.is_empty()) {
            self.pipe_queue.remove(account);
        }
    }

    /// [`Self::pump_pipe`] for every slave with queued entries.
    pub(super) fn pump_all_pipes(&mut self, now: Instant) {
        let accounts: Vec<AccountId> = self.pipe_queue.keys().cloned().collect();
        for a in accounts {
            self.pump_pipe(now, &a);
        }
    }

    /// The entry `command_id` if `account` is its slave's pipe, with its phase.
    fn awaited(&self, account: &AccountId, command_id: &CommandId) -> Option<(u64, EntryPhase)> {
        let seq = self.seq_of(command_id)?;
        let e = self.entries.get(&seq)?;
        (e.command.slave == *account).then_some((seq, e.phase))
    }

    fn stale_pipe_event(&mut self, command_id: CommandId) {
        self.fire(T::T37, Subject::Command(command_id));
        self.metrics.stale_pipe_events += 1;
    }

    /// `echo_agent_pipe_delivery_latency_ms` is defined (crate::telemetry) as write → ack OK.
    fn sample_latency(&mut self, now: Instant, seq: u64) {
        let Some(at) = self.entries.get_mut(&seq).and_then(|e| e.written_at.take()) else {
            return;
        };
        let ms = now.saturating_since(at).as_millis();
        let m = &mut self.metrics;
        m.pipe_delivery_latency_count += 1;
        m.pipe_delivery_latency_sum_ms = m.pipe_delivery_latency_sum_ms.saturating_add(ms);
        m.pipe_delivery_latency_last_ms = ms;
        m.pipe_delivery_latency_max_ms = m.pipe_delivery_latency_max_ms.max(ms);
    }
}
