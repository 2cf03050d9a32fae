//! `echo bench peers`: options, the four runs (Echo and JetStream × one-in-flight and
//! pipelined), the fsync floor, and the table.
//!
//! Owns sequencing and printing. Each run starts from nothing (a fresh database, a fresh
//! stream) so one cannot warm the other's caches more than the machine itself does.

use std::path::PathBuf;
use std::time::Duration;

use super::{echo_fanout, fsync, jetstream, Side};
use crate::app::loadtest::{loadavg, metrics::millis};
use crate::app::{parse_flags, AppError};

#[derive(Clone, Debug)]
pub struct PeersOptions {
    pub slaves: usize,
    pub intents: u64,
    pub pipelined: u64,
    pub window: u32,
    pub nats: String,
    pub pg_url: String,
    pub fsync_dir: PathBuf,
    pub echo: bool,
    pub jetstream: bool,
}

impl PeersOptions {
    pub fn parse(args: &[String]) -> Result<PeersOptions, AppError> {
        let f = parse_flags(
            args,
            &[
                "--slaves",
                "--intents",
                "--pipelined",
                "--window",
                "--nats",
                "--pg-url",
                "--fsync-dir",
                "--only",
            ],
            &[],
        )?;
        let num = |k: &str, d: u64, max: u64| -> Result<u64, AppError> {
            match f.get(k) {
                None => Ok(d),
                Some(v) => v
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (1..=max).contains(n))
                    .ok_or_else(|| AppError::Usage(format!("{k} expects 1..={max}, got {v:?}"))),
            }
        };
        let only = f.get("--only").map(String::as_str);
        if only.is_some_and(|o| o != "echo" && o != "jetstream") {
            return Err(AppError::Usage("--only echo|jetstream".into()));
        }
        Ok(PeersOptions {
            slaves: num("--slaves", 10, 50)? as usize,
            intents: num("--intents", 200, 1_000_000)?,
            pipelined: num("--pipelined", 2_000, 10_000_000)?,
            window: num("--window", 64, 4_096)? as u32,
            nats: f
                .get("--nats")
                .cloned()
                .unwrap_or_else(|| "127.0.0.1:4222".into()),
            pg_url: f
                .get("--pg-url")
                .cloned()
                .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into()),
            fsync_dir: f
                .get("--fsync-dir")
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir),
            echo: only != Some("jetstream"),
            jetstream: only != Some("echo"),
        })
    }
}

fn cell(r: &Result<Side, String>) -> String {
    match r {
        Ok(s) => format!(
            "{:>9.1}/s  p50 {:>8.2} ms  p99 {:>8.2} ms",
            s.rate(),
            millis(s.latency.quantile(0.5)),
            millis(s.latency.quantile(0.99))
        ),
        Err(_) => format!("{:<44}", "failed (below)"),
    }
}

fn ratio(e: &Result<Side, String>, j: &Result<Side, String>) -> String {
    match (e, j) {
        (Ok(e), Ok(j)) => format!(
            "rate ×{:.2}, p50 ×{:.2}, p99 ×{:.2}",
            e.rate() / j.rate().max(1e-9),
            e.latency.quantile(0.5) as f64 / (j.latency.quantile(0.5) as f64).max(1.0),
            e.latency.quantile(0.99) as f64 / (j.latency.quantile(0.99) as f64).max(1.0)
        ),
        _ => "-".into(),
    }
}

pub fn run(o: PeersOptions) -> Result<bool, AppError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(AppError::io("starting the tokio runtime"))?;
    let nonce = format!("{}", std::process::id());
    println!(
        "echo bench peers: 1 master × {} slaves; {} intents one in flight, {} pipelined ({} in flight); {} CPUs, load {}",
        o.slaves,
        o.intents,
        o.pipelined,
        o.window,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        loadavg()
    );
    let floor = fsync::measure(&o.fsync_dir, Duration::from_secs(3))?;
    println!(
        "fsync floor in {}: {:.0} fdatasync/s, latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        o.fsync_dir.display(),
        floor.per_s,
        millis(floor.latency.quantile(0.5)),
        millis(floor.latency.quantile(0.99)),
        millis(floor.latency.max())
    );
    let skipped = || Err("not run (--only)".to_string());
    let modes = [
        ("one in flight", o.intents, 1u32),
        ("pipelined", o.pipelined, o.window),
    ];
    let mut rows = Vec::new();
    for (i, (mode, n, window)) in modes.iter().enumerate() {
        let echo = if o.echo {
            let work = std::env::temp_dir().join(format!("echo-bench-peers-{nonce}-{i}"));
            let r = echo_fanout::run(
                &rt,
                &work,
                &o.pg_url,
                &format!("echo_bench_peers_{nonce}_{i}"),
                *n,
                *window,
                o.slaves,
            )
            .map_err(|e| e.to_string());
            let _ = std::fs::remove_dir_all(&work);
            r
        } else {
            skipped()
        };
        eprintln!("bench peers: Echo {mode} done");
        let js = if o.jetstream {
            rt.block_on(jetstream::run(
                &o.nats,
                &format!("ECHO_PEERS_{nonce}_{i}"),
                *n,
                *window as usize,
                o.slaves,
            ))
        } else {
            skipped()
        };
        eprintln!("bench peers: JetStream {mode} done");
        rows.push((*mode, echo, js));
    }
    println!(
        "\n{:<14} | {:<44} | {:<44} | Echo / JetStream",
        "mode", "Echo (Postgres journal)", "NATS JetStream (file)"
    );
    println!("{}", "-".repeat(140));
    let mut ok = true;
    for (mode, e, j) in &rows {
        println!("{mode:<14} | {} | {} | {}", cell(e), cell(j), ratio(e, j));
    }
    for (mode, e, j) in &rows {
        for (side, r) in [("Echo", e), ("JetStream", j)] {
            if let Err(msg) = r {
                if !msg.starts_with("not run") {
                    ok = false;
                }
                println!("{mode}, {side}: {msg}");
            }
        }
    }
    println!("load after: {}", loadavg());
    Ok(ok)
}
