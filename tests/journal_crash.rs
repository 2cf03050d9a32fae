//! The SQLite journal (embedded default) under `SIGKILL`: a core process killed mid-stream
//! loses no intent the journal had answered `Ok` (WAL + `synchronous=FULL`), and the reopened
//! journal still dedupes them.

#[path = "crash_support.rs"]
mod crash;
#[path = "journal_support.rs"]
mod support;

use std::io::Write;

use echo_runtime::journal::{Journal, JournalOptions};
use echo_statemachine::core::{JournalReply, JournalResult, OpId};
use echo_statemachine::ids::CommandId;
use echo_statemachine::msg::IntentKind;
use support::*;

const CHILD_ENV: &str = "ECHO_JOURNAL_CRASH_CHILD";
const SLAVES: [&str; 3] = ["s1", "s2", "s3"];

/// Not a test on its own: the writing process of `sigkill_loses_no_accepted_intent`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child_core() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let j = Journal::open_sqlite_in(std::path::Path::new(&dir), JournalOptions::default())
        .await
        .expect("child open");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut out = std::io::stdout();
    let mut next = 1u64;
    let mut answered = 0u64;
    loop {
        while next <= answered + 64 {
            let (w, _) = accept(
                &intent(
                    &format!("i{next}"),
                    &format!("t{}", next % 9),
                    IntentKind::Open,
                    next,
                ),
                &SLAVES,
            );
            j.submit(OpId(next), w, &tx).await;
            next += 1;
        }
        let Some(c) = rx.recv().await else { return };
        answered += 1;
        if c.result == JournalResult::Ok(JournalReply::Done) {
            let _ = writeln!(out, "DURABLE {}", c.op.0);
            let _ = out.flush();
        }
    }
}

#[test]
fn sigkill_loses_no_accepted_intent() {
    let dir = tempfile::tempdir().expect("tmp");
    let durable = crash::kill_writer_after("crash_child_core", CHILD_ENV, dir.path(), 500);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let j = Journal::open_sqlite_in(dir.path(), JournalOptions::default())
            .await
            .expect("reopen after SIGKILL");
        let state = j.load().await.expect("load");
        let have: std::collections::BTreeSet<CommandId> = state
            .unfinished
            .iter()
            .map(|d| d.command_id.clone())
            .collect();
        for n in &durable {
            let i = intent(
                &format!("i{n}"),
                &format!("t{}", n % 9),
                IntentKind::Open,
                *n,
            );
            let (w, ds) = accept(&i, &SLAVES);
            for d in &ds {
                assert!(
                    have.contains(&d.command_id),
                    "intent {n} was answered Ok but {} is gone",
                    d.command_id
                );
            }
            // And the journal still knows the intent (a master's retry is deduped).
            assert!(matches!(
                j.write(w).await,
                JournalResult::Ok(JournalReply::IntentExisted { .. })
            ));
        }
        // Every intent is all or nothing: no delivery without its siblings.
        let mut per_intent = std::collections::BTreeMap::<String, usize>::new();
        for d in &state.unfinished {
            *per_intent
                .entry(d.intent_id.as_str().to_string())
                .or_default() += 1;
        }
        assert!(per_intent.values().all(|&c| c == SLAVES.len()));
        j.close().await;
    });
    assert!(durable.len() >= 500);
}
