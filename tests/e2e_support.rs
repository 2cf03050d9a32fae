//! Shared by the end-to-end tests (`e2e_*.rs`): the real `echo` binary started as a cluster of
//! processes on loopback (`echo_runtime::app::cluster`, the same orchestration `echo demo`
//! uses), a fresh Postgres database per test when the core journals there, and the final
//! check — every intent emitted and CORE_ACCEPTED, every trade confirmed at every slave exactly
//! once and in order — with every process's log in the failure message.
//!
//! The binary comes from `ECHO_BIN_DIR` (CI exports it) or the workspace's `target/release`;
//! if it is missing the test fails saying how to build it. Nothing is skipped.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use echo_runtime::app::cluster::{Cluster, ClusterOptions, DemoReport, JournalSpec, Timings};

#[path = "journal_support.rs"]
pub mod journal_support;

/// The `echo` binary the processes are started from.
pub fn echo_bin() -> PathBuf {
    let dir = match std::env::var_os("ECHO_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target")
            .join("release"),
    };
    let exe = dir.join("echo");
    assert!(
        exe.is_file(),
        "the end-to-end tests start the real `echo` binary, and {} does not exist.\n\
         Build it with `cargo build --release -p echo-runtime --bins` and export \
         ECHO_BIN_DIR=<target dir>/release if your target dir is not the workspace's `target/`.",
        exe.display()
    );
    exe
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Journal {
    Sqlite,
    Postgres,
}

/// One test's cluster shape.
pub struct Setup {
    pub masters: usize,
    pub slaves: usize,
    pub trades: u64,
    pub rate: u64,
    pub journal: Journal,
    pub timings: Timings,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            masters: 1,
            slaves: 3,
            trades: 25,
            rate: 20,
            journal: Journal::Sqlite,
            timings: Timings {
                ack_timeout_ms: 500,
                retry_backoff_ms: 100,
                max_retries: 50,
                heartbeat_interval_ms: 1000,
                reconcile_interval_ms: 1000,
                agent_ack_timeout_ms: 500,
                agent_retry_backoff_ms: 100,
                agent_max_retries: 50,
            },
        }
    }
}

/// A running cluster plus what the test owns around it (its directory, its database).
pub struct E2e {
    pub cluster: Cluster,
    name: String,
    dir: PathBuf,
    /// The test's Postgres database, dropped after the cluster is stopped (field order).
    pg: Option<journal_support::Env>,
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime for the test's database set-up")
        .block_on(f)
}

impl E2e {
    pub fn start(name: &str, s: Setup) -> E2e {
        let exe = echo_bin();
        let pg = match s.journal {
            Journal::Sqlite => None,
            Journal::Postgres => Some(block_on(journal_support::Env::new(
                journal_support::Kind::Postgres,
            ))),
        };
        let journal = match &pg {
            None => JournalSpec::Sqlite,
            Some(env) => JournalSpec::Postgres(env.pg_url()),
        };
        let dir = std::env::temp_dir().join(format!("echo-e2e-{name}-{}", std::process::id()));
        let cluster = Cluster::start(ClusterOptions {
            exe,
            dir: dir.clone(),
            masters: s.masters,
            slaves: s.slaves,
            trades: s.trades,
            rate: s.rate,
            journal,
            timings: s.timings,
            concurrent: 4,
            extra_agents: Vec::new(),
            hold_masters: false,
            copy_policies: false,
        })
        .unwrap_or_else(|e| panic!("{name}: cannot start the cluster in {}: {e}", dir.display()));
        E2e {
            cluster,
            name: name.to_string(),
            dir,
            pg,
        }
    }

    /// The test's database name (Postgres journal only).
    pub fn database(&self) -> Option<String> {
        self.pg.as_ref().and_then(|e| e.db.clone())
    }

    /// Panics with `msg`, the cluster's state and every process's log tail.
    pub fn fail(&mut self, msg: &str) -> ! {
        let tail = self.cluster.logs_tail(60);
        panic!(
            "{}: {msg}\nemitted {}/{}, open deliveries {:?}, faults {:?}\nfiles kept in {}\n{tail}",
            self.name,
            self.cluster.emitted(),
            self.cluster.total(),
            self.cluster.open_deliveries(),
            self.cluster.faults,
            self.dir.display()
        );
    }

    /// Waits until `percent` % of the intents were emitted (the point to inject a fault).
    pub fn at_percent(&mut self, percent: u64) {
        let n = self.cluster.total() * percent / 100;
        if !self.cluster.wait_emitted(n, Duration::from_secs(30)) {
            self.fail(&format!("{n} intents not emitted within 30 s"));
        }
        if let Some((p, code)) = self.cluster.crashed() {
            self.fail(&format!("{p} exited by itself with {code}"));
        }
    }

    /// Fails unless the masters are still emitting: a fault after the stream proves less.
    pub fn assert_mid_stream(&mut self, fault: &str) {
        let (emitted, total) = (self.cluster.emitted(), self.cluster.total());
        if emitted >= total {
            self.fail(&format!(
                "the fault on {fault} came after the stream ended ({emitted}/{total}): \
                 stream more trades or at a lower rate"
            ));
        }
    }

    /// SIGKILLs `name`, keeps it down for `down`, restarts it.
    pub fn kill9_restart(&mut self, name: &str, down: Duration) {
        self.assert_mid_stream(name);
        if let Err(e) = self.cluster.kill9_restart(name, down) {
            self.fail(&format!("kill -9 / restart of {name}: {e}"));
        }
    }

    /// Waits for the cluster to settle, stops it and checks the report: every intent emitted
    /// and CORE_ACCEPTED, every one confirmed at every slave exactly once, in order per trade.
    pub fn finish(mut self, settle: Duration) -> DemoReport {
        let settled = self.cluster.wait_settled(settle);
        if let Some((p, code)) = self.cluster.crashed() {
            self.fail(&format!("{p} exited by itself with {code}"));
        }
        if !settled {
            let masters_done = self.cluster.masters_done();
            self.fail(&format!(
                "not settled within {} s (masters done: {masters_done})",
                settle.as_secs()
            ));
        }
        let elapsed = self.cluster.elapsed();
        let report = match self.cluster.report() {
            Ok(r) => r,
            Err(e) => self.fail(&format!("cannot compute the report: {e}")),
        };
        let total = self.cluster.total();
        let mut problems = Vec::new();
        if report.emitted != total {
            problems.push(format!("emitted {} of {total} intents", report.emitted));
        }
        if report.core_accepted != report.emitted || report.master_refused != 0 {
            problems.push(format!(
                "{} intents CORE_ACCEPTED of {} emitted, {} refused",
                report.core_accepted, report.emitted, report.master_refused
            ));
        }
        if !report.is_clean() {
            problems.push("lost, duplicated or out of order".into());
        }
        if !report.failed.is_empty() || report.broker_rejected != 0 {
            problems.push(format!(
                "failed {:?}, broker rejections {}",
                report.failed, report.broker_rejected
            ));
        }
        for s in self.cluster.slaves() {
            let got = report.confirmed.get(&s).copied().unwrap_or(0);
            if got != total {
                problems.push(format!("{s} confirmed {got} of {total}"));
            }
        }
        if report.expected_deliveries != total * self.cluster.slaves().len() as u64 {
            problems.push(format!(
                "{} deliveries expected, not {}",
                report.expected_deliveries,
                total * self.cluster.slaves().len() as u64
            ));
        }
        if !problems.is_empty() {
            self.fail(&format!("{}\n{report}", problems.join("; ")));
        }
        eprintln!(
            "{}: settled in {:.1} s\n{report}",
            self.name,
            elapsed.as_secs_f64()
        );
        let _ = std::fs::remove_dir_all(&self.dir);
        report
    }
}
