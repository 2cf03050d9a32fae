//! Slave side, storage half: the durable command ledger and the stage reports that depend on it.
//!
//! Owns the ledger records and their writes (one in flight per entry, newer states waiting for
//! it), admission of commands from the core (bounded, deduplicated), the stage re-reports for
//! duplicates, retention of terminal entries and recovery. It must never report a stage whose
//! write has not been reported durable, and never persist a second Buffered entry for a command
//! the ledger already holds.

use super::{later, AgentOutput, DeliveryManager, EntryPhase, T};
use crate::ids::CommandId;
use crate::msg::{AckResult, AckStage, Command, CommandAck, ErrorCode, ExecutionResult, Role};
use crate::spec::Subject;
use crate::time::{backoff, Instant};

/// Id of one ledger write, echoed in its [`LedgerResult`]. Not durable: restarts begin at 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LedgerOpId(pub u64);

/// What the ledger holds for one command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LedgerState {
    /// Taken from the core; the slave EA has not acked it OK.
    Buffered,
    /// The slave EA acked it OK; its result is awaited.
    Delivered,
    /// Its ExecutionResult was seen and forwarded.
    Completed,
    /// The slave EA refused it for good.
    Rejected { reason: ErrorCode },
}

/// One durable ledger record, keyed by `command.command_id` (a write overwrites).
#[derive(Clone, Debug, PartialEq)]
pub struct LedgerRecord {
    /// Arrival order. Persisted because a key-value store returns records in key order, and
    /// pipe re-writes after a restart must keep arrival order.
    pub seq: u64,
    pub command: Command,
    pub state: LedgerState,
    /// Pipe attempts when the record was written (informational; a restart starts a fresh
    /// budget, as a reopened pipe does).
    pub attempts: u32,
}

/// The fate of one `PersistLedger`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LedgerResult {
    /// Written and synced.
    Ok,
    /// Not known to be written. `retryable: false` means the store will not take it (disk full,
    /// corrupt): only a first write gives up on it.
    Failed { retryable: bool },
}

/// One command in the ledger, with what memory knows beyond the durable record.
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) seq: u64,
    pub(super) command: Command,
    pub(super) phase: EntryPhase,
    /// Pipe attempts in the current budget (a RETRY answer spends none, T49).
    pub(super) attempts: u32,
    /// The EA's RETRY answers to this entry in a row (its backoff while the EA is busy).
    pub(super) busy: u32,
    /// The one deadline of the entry: ack / backoff in pipe phases, write retry in writing
    /// phases (the two never overlap).
    pub(super) deadline: Option<Instant>,
    pub(super) written_at: Option<Instant>,
    /// What the store has confirmed.
    pub(super) durable: Option<LedgerState>,
    /// What the store should hold.
    pub(super) target: LedgerState,
    pub(super) write: Option<LedgerOpId>,
    /// Consecutive failed writes.
    pub(super) write_failures: u32,
    /// The result, while the link is not Online.
    pub(super) unsent: Option<ExecutionResult>,
}

impl Entry {
    pub(super) fn ack(
        &self,
        stage: AckStage,
        result: AckResult,
        error: Option<ErrorCode>,
    ) -> CommandAck {
        command_ack(&self.command, stage, result, error, self.attempts)
    }
}

fn command_ack(
    c: &Command,
    stage: AckStage,
    result: AckResult,
    error: Option<ErrorCode>,
    attempt: u32,
) -> CommandAck {
    CommandAck {
        command_id: c.command_id.clone(),
        trade_id: c.trade_id.clone(),
        slave: c.slave.clone(),
        stage,
        result,
        error,
        attempt,
    }
}

impl DeliveryManager {
    pub(super) fn on_command(&mut self, now: Instant, c: Command) {
        if let Some(&seq) = self.index.get(&c.command_id) {
            return self.on_duplicate(now, seq);
        }
        let subject = Subject::Command(c.command_id.clone());
        let refusal = if self.accounts.get(&c.slave) != Some(&Role::Slave) {
            Some((T::T16, ErrorCode::UnknownAccount))
        } else if self.active_len() >= self.limits.max_active_commands {
            Some((T::T17, ErrorCode::BrokerBusy))
        } else {
            None
        };
        if let Some((t, error)) = refusal {
            self.fire(t, subject);
            self.metrics.commands_refused += 1;
            let ack = command_ack(
                &c,
                AckStage::AgentBuffered,
                AckResult::Failed,
                Some(error),
                0,
            );
            return self.report(ack);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.fire(T::T15, subject);
        if crate::mutants::active(crate::mutants::Mutant::BufferedBeforeLedger) {
            let ack = command_ack(&c, AckStage::AgentBuffered, AckResult::Ok, None, 0);
            self.report(ack);
        }
        self.index.insert(c.command_id.clone(), seq);
        self.entries.insert(
            seq,
            Entry {
                seq,
                command: c,
                phase: EntryPhase::Persisting,
                attempts: 0,
                deadline: None,
                written_at: None,
                durable: None,
                target: LedgerState::Buffered,
                write: None,
                write_failures: 0,
                busy: 0,
                unsent: None,
            },
        );
        self.issue_write(seq);
    }

    fn on_duplicate(&mut self, now: Instant, seq: u64) {
        let Some(e) = self.entries.get(&seq) else {
            return;
        };
        self.metrics.duplicate_commands += 1;
        let subject = Subject::Command(e.command.command_id.clone());
        let buffered = e.ack(AckStage::AgentBuffered, AckResult::Ok, None);
        let delivered = e.ack(AckStage::PipeDelivered, AckResult::Ok, None);
        match e.phase {
            EntryPhase::Persisting => self.fire(T::T22, subject),
            EntryPhase::WaitingPipe
            | EntryPhase::Backoff
            | EntryPhase::AwaitingAck
            | EntryPhase::Confirming
            | EntryPhase::Rejecting => {
                self.fire(T::T23, subject);
                self.report(buffered);
            }
            EntryPhase::Parked => {
                self.fire(T::T24, subject);
                if let Some(e) = self.entries.get_mut(&seq) {
                    e.phase = EntryPhase::WaitingPipe;
                    e.attempts = 0;
                }
                self.report(buffered);
                self.write_if_pipe_open(now, seq);
            }
            EntryPhase::Delivered | EntryPhase::Completing | EntryPhase::Completed => {
                // Only the durable stage is re-reported: a result can overtake the writes.
                let stage = match e.durable {
                    Some(LedgerState::Delivered | LedgerState::Completed) => Some(delivered),
                    Some(_) => Some(buffered),
                    None => None,
                };
                let rewrite = e.durable.is_some() && self.pipes.contains(&e.command.slave);
                let (slave, command) = (e.command.slave.clone(), e.command.clone());
                self.fire(T::T25, subject);
                if let Some(ack) = stage {
                    self.report(ack);
                }
                if rewrite {
                    self.push(AgentOutput::ToEa {
                        account: slave,
                        msg: crate::msg::AgentToEa::Command(command),
                    });
                }
            }
            EntryPhase::Rejected => {
                let reason = rejection_reason(e.target);
                let ack = e.ack(AckStage::PipeDelivered, AckResult::Failed, Some(reason));
                self.fire(T::T26, subject);
                self.report(ack);
            }
        }
    }

    pub(super) fn on_ledger_result(&mut self, now: Instant, op: LedgerOpId, result: LedgerResult) {
        let Some((seq, state)) = self.ops.remove(&op) else {
            self.metrics.stale_ledger_results += 1;
            return;
        };
        let max_retries = self.config.max_retries;
        let base = self.config.retry_backoff_ms.into();
        let Some(e) = self.entries.get_mut(&seq) else {
            return;
        };
        e.write = None;
        let subject = Subject::Command(e.command.command_id.clone());
        match result {
            LedgerResult::Ok => {
                e.write_failures = 0;
                e.durable = Some(state);
                self.after_durable(now, seq);
            }
            LedgerResult::Failed { retryable } => {
                self.metrics.ledger_write_failures += 1;
                e.write_failures += 1;
                let first_write = e.phase == EntryPhase::Persisting && e.durable.is_none();
                if first_write && (!retryable || e.write_failures >= max_retries) {
                    // Nothing was promised yet: give the command back to the core to retry.
                    let ack = e.ack(
                        AckStage::AgentBuffered,
                        AckResult::Failed,
                        Some(ErrorCode::JournalUnavailable),
                    );
                    self.fire(T::T20, subject);
                    self.forget(seq);
                    self.metrics.commands_refused += 1;
                    self.report(ack);
                } else {
                    let at = later(now, backoff(base, e.write_failures));
                    self.fire(T::T19, subject);
                    self.set_deadline(seq, Some(at));
                }
            }
        }
    }

    /// The store confirmed a write: report what it unblocks, then write any newer state.
    fn after_durable(&mut self, now: Instant, seq: u64) {
        let Some(e) = self.entries.get_mut(&seq) else {
            return;
        };
        let subject = Subject::Command(e.command.command_id.clone());
        match (e.phase, e.durable) {
            (EntryPhase::Persisting, Some(LedgerState::Buffered)) => {
                e.phase = EntryPhase::WaitingPipe;
                let ack = e.ack(AckStage::AgentBuffered, AckResult::Ok, None);
                self.fire(T::T18, subject);
                self.metrics.commands_buffered += 1;
                self.report(ack);
                self.write_if_pipe_open(now, seq);
            }
            (EntryPhase::Confirming, Some(LedgerState::Delivered)) => {
                e.phase = EntryPhase::Delivered;
                let ack = e.ack(AckStage::PipeDelivered, AckResult::Ok, None);
                self.fire(T::T32, subject);
                self.report(ack);
            }
            (EntryPhase::Rejecting, Some(LedgerState::Rejected { reason })) => {
                e.phase = EntryPhase::Rejected;
                let ack = e.ack(AckStage::PipeDelivered, AckResult::Failed, Some(reason));
                self.fire(T::T36, subject);
                self.report(ack);
                self.retain(seq);
            }
            (EntryPhase::Completing, Some(LedgerState::Completed)) => self.complete_if_done(seq),
            _ => {}
        }
        self.write_if_due(seq);
    }

    /// Moves the entry's target forward; writes at once unless a write is in flight or waiting
    /// for its retry timer (that one will carry the newest state).
    pub(super) fn set_target(&mut self, seq: u64, state: LedgerState) {
        if let Some(e) = self.entries.get_mut(&seq) {
            e.target = state;
            if e.write.is_none() && e.deadline.is_none() && e.durable != Some(state) {
                self.issue_write(seq);
            }
        }
    }

    /// Issues the entry's pending write if nothing is in flight (T21).
    pub(super) fn write_if_due(&mut self, seq: u64) {
        let Some(e) = self.entries.get(&seq) else {
            return;
        };
        if e.write.is_some() || e.deadline.is_some() || e.durable == Some(e.target) {
            return;
        }
        self.fire(T::T21, Subject::Command(e.command.command_id.clone()));
        self.issue_write(seq);
    }

    fn issue_write(&mut self, seq: u64) {
        let op = LedgerOpId(self.next_op);
        let Some(e) = self.entries.get_mut(&seq) else {
            return;
        };
        self.next_op += 1;
        e.write = Some(op);
        let record = LedgerRecord {
            seq,
            command: e.command.clone(),
            state: e.target,
            attempts: e.attempts,
        };
        self.ops.insert(op, (seq, e.target));
        self.push(AgentOutput::PersistLedger { op, record });
    }

    /// Completing becomes Completed once the record is durable and the result has gone out.
    pub(super) fn complete_if_done(&mut self, seq: u64) {
        let Some(e) = self.entries.get_mut(&seq) else {
            return;
        };
        if e.phase != EntryPhase::Completing
            || e.durable != Some(LedgerState::Completed)
            || e.unsent.is_some()
        {
            return;
        }
        e.phase = EntryPhase::Completed;
        let subject = Subject::Command(e.command.command_id.clone());
        self.fire(T::T41, subject);
        self.retain(seq);
    }

    /// Keeps a durable terminal entry for dedupe, evicting the oldest past the cap.
    fn retain(&mut self, seq: u64) {
        self.retained.push_back(seq);
        while self.retained.len() > self.limits.max_completed_retained {
            let Some(old) = self.retained.pop_front() else {
                break;
            };
            if let Some(e) = self.entries.get(&old) {
                let command_id = e.command.command_id.clone();
                self.fire(T::T42, Subject::Command(command_id.clone()));
                self.forget(old);
                self.metrics.ledger_evictions += 1;
                self.push(AgentOutput::DeleteLedger { command_id });
            }
        }
    }

    /// Drops an entry from memory (its timer and index too). Callers ensure no write is in
    /// flight: terminal entries and failed first writes have none.
    fn forget(&mut self, seq: u64) {
        self.set_deadline(seq, None);
        if let Some(e) = self.entries.remove(&seq) {
            self.index.remove(&e.command.command_id);
        }
    }

    pub(super) fn set_deadline(&mut self, seq: u64, at: Option<Instant>) {
        if let Some(e) = self.entries.get_mut(&seq) {
            if let Some(old) = e.deadline.take() {
                self.timers.remove(&(old, seq));
            }
            e.deadline = at;
            if let Some(t) = at {
                self.timers.insert((t, seq));
            }
        }
    }

    /// T02's ledger part: every entry's durable stage again, in ledger order, and held results.
    pub(super) fn report_ledger_on_online(&mut self) {
        let seqs: Vec<u64> = self.entries.keys().copied().collect();
        for seq in seqs {
            let Some(e) = self.entries.get_mut(&seq) else {
                continue;
            };
            let ack = match (e.phase, e.durable) {
                (EntryPhase::Completing | EntryPhase::Completed, _) => None,
                (EntryPhase::Rejected, _) => {
                    let reason = rejection_reason(e.target);
                    Some(e.ack(AckStage::PipeDelivered, AckResult::Failed, Some(reason)))
                }
                (EntryPhase::Delivered, _) => {
                    Some(e.ack(AckStage::PipeDelivered, AckResult::Ok, None))
                }
                (_, Some(_)) => Some(e.ack(AckStage::AgentBuffered, AckResult::Ok, None)),
                (_, None) => None,
            };
            let unsent = e.unsent.take();
            if let Some(ack) = ack {
                self.report(ack);
            }
            if let Some(r) = unsent {
                self.send_result(r);
                self.complete_if_done(seq);
            }
        }
    }

    /// Rebuilds entries from durable records (T43), oldest first.
    pub(super) fn restore(&mut self, ledger: Vec<LedgerRecord>) {
        let mut records = ledger;
        records.sort_by_key(|r| r.seq);
        for r in records {
            // A key-value store holds one record per command; should a caller pass two, the
            // later one wins.
            if let Some(&old) = self.index.get(&r.command.command_id) {
                self.retained.retain(|&s| s != old);
                self.forget(old);
            }
            let seq = r.seq;
            let phase = match r.state {
                LedgerState::Buffered => EntryPhase::WaitingPipe,
                LedgerState::Delivered => EntryPhase::Delivered,
                LedgerState::Completed => EntryPhase::Completed,
                LedgerState::Rejected { .. } => EntryPhase::Rejected,
            };
            self.fire(T::T43, Subject::Command(r.command.command_id.clone()));
            self.next_seq = self.next_seq.max(seq.saturating_add(1));
            self.index.insert(r.command.command_id.clone(), seq);
            self.entries.insert(
                seq,
                Entry {
                    seq,
                    command: r.command,
                    phase,
                    attempts: 0,
                    deadline: None,
                    written_at: None,
                    durable: Some(r.state),
                    target: r.state,
                    write: None,
                    write_failures: 0,
                    busy: 0,
                    unsent: None,
                },
            );
            if matches!(phase, EntryPhase::Completed | EntryPhase::Rejected) {
                self.retain(seq);
            }
        }
    }

    pub(super) fn seq_of(&self, id: &CommandId) -> Option<u64> {
        self.index.get(id).copied()
    }
}

pub(super) fn rejection_reason(state: LedgerState) -> ErrorCode {
    match state {
        LedgerState::Rejected { reason } => reason,
        _ => ErrorCode::EaRejected,
    }
}
