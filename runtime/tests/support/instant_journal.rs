//! A journal port for tests about the core task's other duties (the link, the published
//! status): every awaited write is answered durable at once. It must never model storage.

use echo_runtime::drivers::core::JournalPort;
use echo_runtime::journal::Completion;
use echo_statemachine::core::{JournalReply, JournalResult, JournalWrite, OpId};
use tokio::sync::mpsc;

/// Answers every awaited write `Ok(Done)` on the core's results channel.
pub struct InstantJournal(pub mpsc::UnboundedSender<Completion>);

impl JournalPort for InstantJournal {
    fn submit(&mut self, op: OpId, write: JournalWrite) {
        if write.is_awaited() {
            let _ = self.0.send(Completion {
                op,
                result: JournalResult::Ok(JournalReply::Done),
            });
        }
    }
}
