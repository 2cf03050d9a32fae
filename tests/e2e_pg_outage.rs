//! End-to-end with the real binaries on loopback, the core journaling to Postgres: Postgres
//! stopped under load (`pg_ctlcluster … stop`) and started again a few seconds later, and the
//! core's backends terminated (`pg_terminate_backend`) under load. Each ends with every intent
//! CORE_ACCEPTED and every trade confirmed at every slave exactly once, in order per trade.
//!
//! These stop the whole Postgres cluster: CI runs the `e2e_pg_*` binaries alone, after every
//! other test, one test at a time. A guard starts Postgres again even when a test panics.

#[path = "e2e_support.rs"]
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use sqlx::Connection;
use support::{E2e, Journal, Setup};

const SETTLE: Duration = Duration::from_secs(45);

/// The Debian cluster version (`/etc/postgresql/<version>/main`).
fn pg_version() -> String {
    let mut versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .expect("/etc/postgresql: the Postgres outage tests drive the local Debian cluster")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("a cluster version under /etc/postgresql")
}

fn pg_ctl(action: &str) {
    let out = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &pg_version(), "main", action])
        .output()
        .expect("running pg_ctlcluster (Debian's postgresql-common)");
    assert!(
        out.status.success(),
        "pg_ctlcluster {action} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pg_ready() -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], 5432)),
        Duration::from_millis(500),
    )
    .is_ok()
        && Command::new("pg_isready")
            .args(["-q", "-h", "127.0.0.1", "-p", "5432"])
            .status()
            .is_ok_and(|s| s.success())
}

/// Stops Postgres; starts it again on `start()` or when dropped (even on panic).
struct PgStopped {
    up: bool,
}

impl PgStopped {
    fn stop() -> PgStopped {
        pg_ctl("stop");
        PgStopped { up: false }
    }

    fn start(&mut self) {
        if self.up {
            return;
        }
        // `stop` may not have finished its shutdown when `start` is asked: retry briefly.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = Command::new("pg_ctlcluster")
                .args(["--skip-systemctl-redirect", &pg_version(), "main", "start"])
                .status()
                .is_ok_and(|s| s.success());
            if ok || pg_ready() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        while !pg_ready() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        self.up = true;
        assert!(pg_ready(), "Postgres did not come back within 30 s");
    }
}

impl Drop for PgStopped {
    fn drop(&mut self) {
        if !self.up {
            self.up = true;
            let _ = Command::new("pg_ctlcluster")
                .args(["--skip-systemctl-redirect", &pg_version(), "main", "start"])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while !pg_ready() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
            }
            if !pg_ready() {
                // Loud: every later Postgres test on this machine would fail for this reason.
                eprintln!("e2e_pg_outage: PostgreSQL did NOT come back after the test; start it with pg_ctlcluster --skip-systemctl-redirect {} main start", pg_version());
            }
        }
    }
}

fn outage_setup() -> Setup {
    Setup {
        masters: 1,
        slaves: 3,
        trades: 30,
        rate: 12,
        journal: Journal::Postgres,
        ..Setup::default()
    }
}

#[test]
fn postgres_stopped_and_started_under_load_loses_nothing() {
    assert!(
        pg_ready(),
        "Postgres must be up on 127.0.0.1:5432 before the test"
    );
    // Longer than the core's journal retry budget (the demo's timings: 20 retries, 100 ms
    // backoff); the masters keep streaming through the outage and after it.
    let mut t = E2e::start(
        "pg-stop-start",
        Setup {
            trades: 40,
            timings: echo_runtime::app::cluster::Timings::default(),
            ..outage_setup()
        },
    );
    t.at_percent(20);
    t.assert_mid_stream("Postgres");
    let mut pg = PgStopped::stop();
    t.cluster.faults.push(format!(
        "Postgres stopped at {}/{} intents",
        t.cluster.emitted(),
        t.cluster.total()
    ));
    std::thread::sleep(Duration::from_secs(6));
    pg.start();
    t.cluster.faults.push(format!(
        "Postgres started at {}/{} intents",
        t.cluster.emitted(),
        t.cluster.total()
    ));
    t.finish(SETTLE);
}

/// Terminates every backend connected to the test's database except this one.
fn terminate_backends(db: &str) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        let mut c = sqlx::PgConnection::connect(&support::journal_support::admin_url())
            .await
            .expect("connecting to Postgres to terminate the core's backends");
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()) t",
        )
        .bind(db)
        .fetch_one(&mut c)
        .await
        .expect("pg_terminate_backend");
        n as u64
    })
}

#[test]
fn postgres_backends_terminated_under_load_loses_nothing() {
    assert!(
        pg_ready(),
        "Postgres must be up on 127.0.0.1:5432 before the test"
    );
    let mut t = E2e::start("pg-terminate", outage_setup());
    let db = t.database().expect("the test's database");
    for pct in [25, 50, 75] {
        t.at_percent(pct);
        t.assert_mid_stream("Postgres backends");
        let n = terminate_backends(&db);
        t.cluster.faults.push(format!(
            "{n} Postgres backends terminated at {}/{} intents",
            t.cluster.emitted(),
            t.cluster.total()
        ));
    }
    t.finish(SETTLE);
}
