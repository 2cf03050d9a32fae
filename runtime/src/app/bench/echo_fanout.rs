//! The Echo side of `echo bench peers`: one master × K slaves as real processes (the `echo
//! demo` cluster) with the Postgres journal in a fresh database, `window` trades open at once
//! (one intent in flight per trade), as fast as acknowledgements allow.
//!
//! Owns that run and reading its result from the terminals' files (the load test's stage
//! reader). It must never count a copy the slave's file does not hold.

use std::path::Path;
use std::time::Duration;

use super::Side;
use crate::app::cluster::{Cluster, ClusterOptions, JournalSpec, Timings, INTENTS_PER_TRADE};
use crate::app::loadtest::stages::Stages;
use crate::app::loadtest::{pg_admin, with_db};
use crate::app::AppError;

/// Runs `intents` intents through Echo with `window` in flight; `work` is emptied first.
pub fn run(
    rt: &tokio::runtime::Runtime,
    work: &Path,
    admin_url: &str,
    db: &str,
    intents: u64,
    window: u32,
    slaves: usize,
) -> Result<Side, AppError> {
    rt.block_on(pg_admin(admin_url, &format!("CREATE DATABASE {db}")))?;
    let result = (|| {
        let t0_us = crate::app::loadtest::wall_us();
        let mut c = Cluster::start(ClusterOptions {
            exe: std::env::current_exe().map_err(AppError::io("locating the echo binary"))?,
            dir: work.to_path_buf(),
            masters: 1,
            slaves,
            trades: intents.div_ceil(INTENTS_PER_TRADE),
            // Paced by acknowledgements, not by the clock.
            rate: 1_000_000,
            journal: JournalSpec::Postgres(with_db(admin_url, db)),
            timings: Timings::default(),
            concurrent: window,
            extra_agents: Vec::new(),
            copy_policies: false,
            hold_masters: false,
        })?;
        let settled = c.wait_settled(Duration::from_secs(300));
        let mut stages = Stages::new(
            c.master_files().iter().map(|(_, f)| f.clone()).collect(),
            c.slave_files()
                .iter()
                .map(|(s, b)| {
                    (
                        work.join("terminals").join(format!("{s}.commands.jsonl")),
                        b.clone(),
                    )
                })
                .collect(),
            t0_us,
        );
        stages.poll();
        let report = c.report()?;
        if !settled || !report.is_clean() {
            return Err(AppError::Usage(format!(
                "Echo run did not settle cleanly (settled {settled}):\n{report}"
            )));
        }
        let (first, last) = (
            stages.first_emit_us.unwrap_or(0),
            stages.last_fill_us.unwrap_or(0),
        );
        Ok(Side {
            intents: stages.emitted,
            seconds: (last - first) as f64 / 1e6,
            latency: stages.end_to_end.clone(),
        })
    })();
    let _ = rt.block_on(pg_admin(
        admin_url,
        &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
    ));
    result
}
