//! End-to-end benchmark (not a test): master → slave latency and sustained throughput.
//!
//! ```text
//! export CARGO_TARGET_DIR=/work/main/target   # or your own
//! cargo run --release -p echo-runtime --example e2e_bench -- \
//!     --journal postgres --slaves 10 --rate 1000 --seconds 20
//! # step the rate up to find the highest one that keeps up:
//! cargo run --release -p echo-runtime --example e2e_bench -- --rates 250,500,1000,2000 --seconds 10
//! ```
//!
//! One process, one tokio runtime, everything real except process boundaries: a core
//! (`app::core::start`, the Postgres journal in a fresh database created and dropped by the
//! bench — or `--journal sqlite`), two agents (`app::agent::start`: real redb ledgers with fsync,
//! real Unix-socket pipes), one master and N slave reference terminals
//! (`terminal::run_until`: real fsynced JSON-lines files) — all talking over real loopback gRPC
//! (plain text; the link is TLS-capable but loopback plain text keeps the CPU for the path
//! measured), with token authentication. Each slave follows the master.
//!
//! The master emits `--rate` intents/s (open → modify → partial close → close per trade,
//! `--concurrent` trades open at once) for `--seconds`. Latency is per execution: the slave's
//! broker row `executed_at_us` minus the master's `emitted_at_us` (when the intent was built,
//! before the master's own IntentQueue fsync) — both wall-clock microseconds in one process,
//! so one clock. Throughput: intents emitted per second over the emit window, executions per
//! second over the execution window. `--url` names the admin database
//! (default `postgres://postgres@127.0.0.1:5432/postgres`). Print the load average with it: the
//! numbers mean little without knowing what else ran.
//!
//! `--workers N --queue-depth D` set the core router's `worker_pool_size` / `queue_depth_max`
//! (defaults 4 × 8 admit only 32 intents into the journal pipeline at once; above ~250
//! intents/s the master then spends its time in BROKER_BUSY backoff). Each terminal runs on its
//! own OS thread and runtime, as it is its own process in production. After each rate the
//! core's counters are printed (backpressure, journal failures — a full journal queue answers
//! `Failed{retryable}` and the machine backs off —, retries, resends, pipe retries).
//!
//! `--terminal-dir DIR` puts the reference terminals' files elsewhere (e.g. `/dev/shm`): in
//! production each EA's write-ahead and its broker live on the trading host, not on the disk
//! of Echo's journal; on this one VM the 11 terminals' three fsyncs per batch queue on the same
//! disk as Postgres and the agents' ledgers.
//!
//! Where the time goes (2026-12-03, session 7; 2 vCPU shared by Postgres, the core, both
//! agents and the 11 terminals; run-to-run spread on this VM is large — repeat a rate before
//! trusting it; interleave any A/B). Postgres, 1 master × 10 slaves, `--workers 32
//! --queue-depth 128 --concurrent 128`, 1 000 intents/s (≈ 10 000 executions/s, keeps up):
//! terminals beside the data p50 31–34 ms, p99 72–94 ms; with `--terminal-dir /dev/shm` p50
//! 13–15 ms, p99 52–76 ms (30 s run: p50 14.5 ms, p99 57.8 ms; per-second p99 23–40 ms with
//! spikes to ~100 ms when journal batches of 300–500 writes take 20–38 ms — see the
//! `slow journal batch` warnings with `RUST_LOG=warn`). At the default `--concurrent 16` add
//! 20–40 ms (a trade's intents are delivered one after the other to each slave — per-trade
//! order — so 16 trades at 1 000/s means 62 intents/s per trade, each waiting for the previous
//! one's confirmation). Lighter load, terminals in /dev/shm: 100/s p50 2.6 ms; 250/s p50
//! 3.6 ms; 500/s p50 7.5 ms, p99 30 ms; 750/s p50 11 ms, p99 26 ms. CPU at 1 000/s with
//! the terminals in /dev/shm: 1.85 of the 2 cores busy — Postgres 0.72, tokio workers (core,
//! agents, gRPC) 0.49, the agents' redb ledger threads 0.25, the terminals 0.34 — so ~185 µs of
//! CPU per copy, ~145 µs of it Echo's own (core, agents, journal): the machine is saturated
//! and the tail is queueing behind the CPU, not one slow step. 1 500/s is overload: it settles
//! with no re-sends thanks to the send windows (`agent_window`, `max_pipe_inflight`) and the
//! core's backlog bound answers the master BROKER_BUSY ("slave backlog" below).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use echo_runtime::app::{agent as app_agent, core as app_core};
use echo_runtime::config::{generate_token, hash_token, ConfigSource};
use echo_runtime::terminal::{run_until, TerminalArgs};
use serde_json::Value;
use sqlx::Connection;

struct Args {
    journal: String,
    url: String,
    slaves: usize,
    rates: Vec<u64>,
    seconds: u64,
    concurrent: u32,
    dir: Option<PathBuf>,
    /// `--terminal-dir DIR`: the reference terminals' files (the EAs' write-ahead, IntentQueue,
    /// the simulated brokers' books) under DIR instead of beside Echo's own data — e.g. a tmpfs
    /// (`/dev/shm`), to stand for EA hosts that are other machines with their own disks, so
    /// their 30 fsync streams do not queue on the one disk with the journal and the ledgers.
    terminal_dir: Option<PathBuf>,
    /// `--workers N --queue-depth D`: the core router's shards and per-shard bound (the
    /// production keys `/echo/core/router/*`; unset = their defaults).
    workers: Option<u64>,
    queue_depth: Option<u64>,
}

impl Args {
    fn router_toml(&self) -> String {
        let mut t = String::new();
        if self.workers.is_some() || self.queue_depth.is_some() {
            t += "[core.router]\n";
            if let Some(w) = self.workers {
                t += &format!("worker_pool_size = {w}\n");
            }
            if let Some(d) = self.queue_depth {
                t += &format!("queue_depth_max = {d}\n");
            }
            t += "\n";
        }
        t
    }
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        journal: "postgres".into(),
        url: "postgres://postgres@127.0.0.1:5432/postgres".into(),
        slaves: 10,
        rates: vec![1_000],
        seconds: 20,
        concurrent: 16,
        dir: None,
        terminal_dir: None,
        workers: None,
        queue_depth: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or(format!("{k} needs a value"));
        let n = |s: String| s.parse::<u64>().map_err(|e| format!("{s:?}: {e}"));
        match k.as_str() {
            "--journal" => a.journal = v()?,
            "--url" => a.url = v()?,
            "--slaves" => a.slaves = n(v()?)?.clamp(1, 50) as usize,
            "--rate" => a.rates = vec![n(v()?)?.max(1)],
            "--rates" => {
                a.rates = v()?
                    .split(',')
                    .map(|s| n(s.trim().to_string()).map(|r| r.max(1)))
                    .collect::<Result<_, _>>()?
            }
            "--seconds" => a.seconds = n(v()?)?.max(1),
            "--concurrent" => a.concurrent = n(v()?)?.clamp(1, 10_000) as u32,
            "--dir" => a.dir = Some(PathBuf::from(v()?)),
            "--terminal-dir" => a.terminal_dir = Some(PathBuf::from(v()?)),
            "--workers" => a.workers = Some(n(v()?)?),
            "--queue-depth" => a.queue_depth = Some(n(v()?)?),
            "-h" | "--help" => return Err("see the doc comment at the top of e2e_bench.rs".into()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.journal != "postgres" && a.journal != "sqlite" {
        return Err(format!("--journal postgres|sqlite, not {}", a.journal));
    }
    Ok(a)
}

fn with_db(url: &str, db: &str) -> String {
    let base = url
        .rsplit_once('/')
        .map(|(b, _)| b)
        .filter(|b| !b.ends_with('/'))
        .unwrap_or(url);
    format!("{base}/{db}")
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn pct(sorted: &[i64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// A reference terminal on its own OS thread and runtime, as a terminal is its own process in
/// production: its blocking file fsyncs must not stall the core's and agents' runtime threads
/// (they did, when the terminals were tasks on the shared runtime, and the bench measured that).
fn terminal_thread(
    args: TerminalArgs,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => {
                if let Err(e) = rt.block_on(run_until(args, stop)) {
                    eprintln!("terminal: {e}");
                }
            }
            Err(e) => eprintln!("terminal runtime: {e}"),
        }
    })
}

struct RunResult {
    rate: u64,
    emitted: usize,
    executions: usize,
    expected: usize,
    emit_rate: f64,
    exec_rate: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    settled: bool,
    load_before: String,
    load_after: String,
}

async fn run_once(a: &Args, rate: u64, run: usize) -> Result<RunResult, String> {
    let load_before = loadavg();
    let dir = match &a.dir {
        Some(d) => d.join(format!("run-{run}")),
        None => std::env::temp_dir().join(format!("echo-e2e-bench-{}-{run}", std::process::id())),
    };
    let _ = std::fs::remove_dir_all(&dir);
    for sub in ["pipes", "core", "agent-m", "agent-s"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let terminals = match &a.terminal_dir {
        Some(d) => d.join(format!(
            "echo-e2e-bench-terminals-{}-{run}",
            std::process::id()
        )),
        None => dir.join("terminals"),
    };
    let _ = std::fs::remove_dir_all(&terminals);
    std::fs::create_dir_all(&terminals).map_err(|e| format!("{}: {e}", terminals.display()))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();

    let mut pg_db = None;
    let journal = if a.journal == "postgres" {
        let db = format!("echo_e2e_bench_{}_{run}", std::process::id());
        let mut c = sqlx::PgConnection::connect(&a.url)
            .await
            .map_err(|e| format!("Postgres at {}: {e}", a.url))?;
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(&mut c)
            .await
            .map_err(|e| e.to_string())?;
        pg_db = Some(db.clone());
        with_db(&a.url, &db)
    } else {
        "sqlite:journal.sqlite3".into()
    };

    let tm = generate_token().map_err(|e| e.to_string())?;
    let ts = generate_token().map_err(|e| e.to_string())?;
    std::fs::write(dir.join("agent-m.token"), tm.expose()).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("agent-s.token"), ts.expose()).map_err(|e| e.to_string())?;
    let slaves: Vec<String> = (1..=a.slaves).map(|i| format!("slave-{i}")).collect();
    let mut toml = format!(
        "{router}[core]\nlisten_addr = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\njournal = \"{journal}\"\nmetrics_addr = \"\"\n\n\
         [agent]\ncore_addr = \"http://127.0.0.1:{port}\"\n\n\
         [agents.agent-m]\ntoken_hash = \"{}\"\naccounts = {{ \"master-1\" = \"master\" }}\n\n\
         [agents.agent-s]\ntoken_hash = \"{}\"\naccounts = {{ {} }}\n\n",
        dir.join("core").display(),
        hash_token(tm.expose()),
        hash_token(ts.expose()),
        slaves
            .iter()
            .map(|s| format!("\"{s}\" = \"slave\""))
            .collect::<Vec<_>>()
            .join(", "),
        router = a.router_toml(),
    );
    for s in &slaves {
        toml += &format!("[subscriptions.master-1.{s}]\nmultiplier = 1.0\n\n");
    }
    let cfg = ConfigSource::Toml(toml)
        .open()
        .await
        .map_err(|e| format!("config: {e}"))?;
    let core = app_core::start(cfg.clone())
        .await
        .map_err(|e| format!("core: {e}"))?;
    let pipes = dir.join("pipes").display().to_string();
    let mut agents = Vec::new();
    for id in ["agent-m", "agent-s"] {
        let flags: std::collections::BTreeMap<String, String> = [
            ("--id", id.to_string()),
            (
                "--token-file",
                dir.join(format!("{id}.token")).display().to_string(),
            ),
            ("--data-dir", dir.join(id).display().to_string()),
            ("--socket-dir", pipes.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let s = app_agent::AgentSettings::resolve(&cfg.current(), &flags)
            .map_err(|e| format!("{id}: {e}"))?;
        agents.push(
            app_agent::start(s)
                .await
                .map_err(|e| format!("{id}: {e}"))?,
        );
    }

    let term_dir = terminals.display().to_string();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut slave_tasks = Vec::new();
    for s in &slaves {
        let args = TerminalArgs::parse(
            [
                "--role",
                "slave",
                "--account",
                s,
                "--socket-dir",
                &pipes,
                "--data-dir",
                &term_dir,
            ]
            .map(String::from),
        )
        .map_err(|e| e.0)?;
        let mut rx = stop_rx.clone();
        slave_tasks.push(terminal_thread(args, async move {
            let _ = rx.wait_for(|s| *s).await;
        }));
    }
    // Let the slaves' pipes come up so the first intents are not measured against a reconnect.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let trades = (rate * a.seconds).div_ceil(4);
    let master_args = TerminalArgs::parse(
        [
            "--role",
            "master",
            "--account",
            "master-1",
            "--socket-dir",
            &pipes,
            "--data-dir",
            &term_dir,
            "--rate",
            &rate.to_string(),
            "--trades",
            &trades.to_string(),
            "--concurrent",
            &a.concurrent.to_string(),
            "--capacity",
            "65536",
            "--exit-when-done",
        ]
        .map(String::from),
    )
    .map_err(|e| e.0)?;
    let t0 = Instant::now();
    let mut rx = stop_rx.clone();
    let master = terminal_thread(master_args, async move {
        let _ = rx.wait_for(|s| *s).await;
    });
    let expected = trades as usize * 4 * a.slaves;
    let broker_files: Vec<PathBuf> = slaves
        .iter()
        .map(|s| terminals.join(format!("{s}.broker.jsonl")))
        .collect();
    let deadline = t0 + Duration::from_secs(a.seconds * 3 + 30);
    let mut settled = false;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if !master.is_finished() {
            continue;
        }
        let done: usize = broker_files
            .iter()
            .map(|f| {
                std::fs::read_to_string(f)
                    .map(|t| t.lines().count())
                    .unwrap_or(0)
            })
            .sum();
        if done >= expected {
            settled = true;
            break;
        }
    }
    let load_after = loadavg();
    {
        // Why a run is slow: backpressure, retries and resends show up here.
        let st = core.handle.status.borrow().clone();
        let m = &st.metrics;
        let retries: u64 = m.delivery_retry_total.values().sum();
        let am: Vec<String> = agents
            .iter()
            .map(|ag| {
                let s = ag.handle.status.borrow().clone();
                format!(
                    "pipe_retry {} refused {} rejected {}",
                    s.metrics.pipe_retry_total,
                    s.metrics.intents_refused,
                    s.metrics.intents_rejected
                )
            })
            .collect();
        eprintln!(
            "  core: accepted {} rejected {} (router busy {:?}, slave backlog {}) retries {} \
             reconcile_resends {} journal_failures {} late_or_unknown {} inputs {}; agents: {}",
            m.intents_accepted_total,
            m.intents_rejected_total,
            m.router_rejections_total,
            m.backlog_rejections_total,
            retries,
            m.reconcile_resends_total,
            m.journal_failures_total,
            m.late_or_unknown_total,
            st.inputs_handled,
            am.join(" | ")
        );
        // Where a copy waits: the core's clock from the accept reaching it to each stage.
        let stages: Vec<String> = m
            .delivery_stage_latency_us
            .iter()
            .map(|(stage, h)| {
                format!(
                    "{}: p50 {:.1} p99 {:.1} max {:.1} ms",
                    stage.name(),
                    h.quantile(0.5) as f64 / 1e3,
                    h.quantile(0.99) as f64 / 1e3,
                    h.max() as f64 / 1e3
                )
            })
            .collect();
        eprintln!("  at the core: {}", stages.join("; "));
    }
    let _ = stop_tx.send(true);
    let _ = master.join();
    for t in slave_tasks {
        let _ = t.join();
    }
    for ag in agents {
        ag.stop().await;
    }
    let _ = core.stop().await;

    // Latency from the files.
    let mut emitted_at: HashMap<String, i64> = HashMap::new();
    for row in read_jsonl(&terminals.join("master-1.emitted.jsonl")) {
        if row["event"].as_str() == Some("emitted") {
            if let (Some(id), Some(us)) = (row["intent_id"].as_str(), row["emitted_at_us"].as_i64())
            {
                emitted_at.insert(id.to_string(), us);
            }
        }
    }
    let (mut first_emit, mut last_emit) = (i64::MAX, i64::MIN);
    for &us in emitted_at.values() {
        first_emit = first_emit.min(us);
        last_emit = last_emit.max(us);
    }
    let mut lat = Vec::new();
    let (mut first_exec, mut last_exec) = (i64::MAX, i64::MIN);
    for f in &broker_files {
        for row in read_jsonl(f) {
            let (Some(id), Some(at)) = (row["intent_id"].as_str(), row["executed_at_us"].as_i64())
            else {
                continue;
            };
            first_exec = first_exec.min(at);
            last_exec = last_exec.max(at);
            if let Some(e) = emitted_at.get(id) {
                lat.push(at - e);
            }
        }
    }
    lat.sort_unstable();
    let per_s = |n: usize, a: i64, b: i64| {
        if b > a {
            n as f64 / ((b - a) as f64 / 1e6)
        } else {
            0.0
        }
    };
    let r = RunResult {
        rate,
        emitted: emitted_at.len(),
        executions: lat.len(),
        expected,
        emit_rate: per_s(emitted_at.len(), first_emit, last_emit),
        exec_rate: per_s(lat.len(), first_exec, last_exec),
        p50: pct(&lat, 0.50),
        p99: pct(&lat, 0.99),
        p999: pct(&lat, 0.999),
        max: lat.last().copied().unwrap_or(0) as f64 / 1000.0,
        settled,
        load_before,
        load_after,
    };
    if let Some(db) = pg_db {
        if let Ok(mut c) = sqlx::PgConnection::connect(&a.url).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                .execute(&mut c)
                .await;
        }
    }
    if a.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    // Kept with `--dir` (for a look at the files), like the rest of the run's data.
    if a.terminal_dir.is_some() && a.dir.is_none() {
        let _ = std::fs::remove_dir_all(&terminals);
    }
    Ok(r)
}

fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        echo_runtime::observe::init_logging(false);
    }
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("e2e_bench: {e}");
            std::process::exit(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("e2e_bench: runtime: {e}");
            std::process::exit(2);
        }
    };
    println!(
        "e2e_bench: journal {}, 1 master × {} slaves, {} s per rate, {} trades open at once, {} cpus, terminal files {}",
        a.journal,
        a.slaves,
        a.seconds,
        a.concurrent,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        a.terminal_dir
            .as_ref()
            .map_or("beside Echo's data".to_string(), |d| format!("in {}", d.display()))
    );
    let mut ok = true;
    for (i, &rate) in a.rates.iter().enumerate() {
        match rt.block_on(run_once(&a, rate, i)) {
            Ok(r) => {
                println!(
                    "rate {:>5}/s: emitted {} intents ({:.0}/s), executions {}/{} ({:.0}/s){}; \
                     latency master→slave p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; \
                     load {} → {}",
                    r.rate,
                    r.emitted,
                    r.emit_rate,
                    r.executions,
                    r.expected,
                    r.exec_rate,
                    if r.settled { "" } else { " NOT SETTLED" },
                    r.p50,
                    r.p99,
                    r.p999,
                    r.max,
                    r.load_before,
                    r.load_after
                );
                ok &= r.settled;
            }
            Err(e) => {
                eprintln!("rate {rate}/s: {e}");
                ok = false;
            }
        }
    }
    std::process::exit(if ok { 0 } else { 1 });
}
