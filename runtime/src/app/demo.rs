//! `echo demo`: Echo's main job on embedded defaults, as real processes.
//!
//! One core (SQLite journal, TOML config, TLS with throw-away certificates), two agents (one
//! for the masters, one for the slaves), master and slave reference terminals over real Unix
//! sockets — every one a child process of this binary. Trades stream with a progress bar; the
//! slaves' agent and then the core are killed with SIGKILL mid-stream and restarted. The report
//! is computed from what the terminals wrote to disk (masters' emitted records, slaves' broker
//! books) and the journal's failed deliveries: emitted, confirmed per slave, failed with
//! reasons, lost, duplicated, out of order, and master → slave latency p50/p99.
//!
//! The orchestration and the accounting live in [`super::cluster`] (shared with the end-to-end
//! tests); this module is the command line, the fault schedule and the progress bar. It must
//! never decide anything about a trade: it counts what the machines did.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use super::cluster::{Cluster, ClusterOptions, JournalSpec, Timings};
use super::AppError;

pub use super::cluster::{account, DemoReport};

pub const USAGE: &str =
    "usage: echo demo [--masters N] [--slaves N] [--trades N] [--rate N] [--no-kill]
                 [--keep-dir DIR] [--timeout-s N]

  --masters N    master accounts (1..=4, default 2), served by agent-1
  --slaves N     slave accounts (1..=20, default 5), served by agent-2, each following every master
  --trades N     trades per master, each open → modify → partial close → close (default 25)
  --rate N       intents per second per master (default 40)
  --no-kill      do not SIGKILL the slaves' agent and the core mid-stream
  --keep-dir DIR run in DIR and keep it (default: a temp dir removed on success)
  --timeout-s N  give up waiting for the system to settle after N s (default 180)";

#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub masters: usize,
    pub slaves: usize,
    pub trades: u64,
    pub rate: u64,
    pub kill: bool,
    pub dir: Option<PathBuf>,
    pub timeout: Duration,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            masters: 2,
            slaves: 5,
            trades: 25,
            rate: 40,
            kill: true,
            dir: None,
            timeout: Duration::from_secs(180),
        }
    }
}

fn num(flag: &str, v: Option<&String>, min: u64, max: u64) -> Result<u64, AppError> {
    let v = v.ok_or_else(|| AppError::Usage(format!("{flag} needs a value")))?;
    let n: u64 = v
        .parse()
        .map_err(|_| AppError::Usage(format!("{flag} expects an integer, got {v:?}")))?;
    if n < min || n > max {
        return Err(AppError::Usage(format!(
            "{flag} must be in {min}..={max}, got {n}"
        )));
    }
    Ok(n)
}

impl DemoOptions {
    pub fn parse(args: &[String]) -> Result<DemoOptions, AppError> {
        let mut o = DemoOptions::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--masters" => o.masters = num(a, it.next(), 1, 4)? as usize,
                "--slaves" => o.slaves = num(a, it.next(), 1, 20)? as usize,
                "--trades" => o.trades = num(a, it.next(), 1, 100_000)?,
                "--rate" => o.rate = num(a, it.next(), 1, 10_000)?,
                "--timeout-s" => o.timeout = Duration::from_secs(num(a, it.next(), 10, 86_400)?),
                "--no-kill" => o.kill = false,
                "--keep-dir" => {
                    o.dir =
                        Some(PathBuf::from(it.next().ok_or_else(|| {
                            AppError::Usage("--keep-dir needs a value".into())
                        })?))
                }
                other => {
                    return Err(AppError::Usage(format!(
                        "unknown option {other:?}\n{USAGE}"
                    )))
                }
            }
        }
        Ok(o)
    }
}

fn progress(done: u64, total: u64, note: &str) {
    let pct = done * 100 / total.max(1);
    let bar = "#".repeat((pct / 4) as usize);
    eprint!("\r[{bar:<25}] {pct:>3}% intents emitted {done}/{total} {note:<40}");
    let _ = std::io::stderr().flush();
}

/// Runs the demo; `Ok(true)` when nothing was lost, duplicated or reordered.
pub fn run(o: DemoOptions) -> Result<bool, AppError> {
    let exe = std::env::current_exe().map_err(AppError::io("locating the echo binary"))?;
    let temp = o.dir.is_none();
    let dir = match &o.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("echo-demo-{}", std::process::id())),
    };
    let mut cluster = Cluster::start(ClusterOptions {
        exe,
        dir: dir.clone(),
        masters: o.masters,
        slaves: o.slaves,
        trades: o.trades,
        rate: o.rate,
        journal: JournalSpec::Sqlite,
        timings: Timings::default(),
        concurrent: 4,
        extra_agents: Vec::new(),
        hold_masters: false,
        copy_policies: true,
    })?;
    println!(
        "echo demo: core + 2 agents + {} master(s) + {} slaves as processes in {}",
        o.masters,
        o.slaves,
        dir.display()
    );
    let total = cluster.total();
    let mut killed_agent = !o.kill;
    let mut killed_core = !o.kill;
    let mut note = String::new();
    let mut reported_crash = false;
    let settled = loop {
        std::thread::sleep(Duration::from_millis(200));
        let emitted = cluster.emitted();
        if !killed_agent && emitted * 10 >= total * 3 {
            note = "agent-2 (the slaves' agent) killed".into();
            progress(emitted, total, &note);
            cluster.kill9_restart("agent-2", Duration::from_secs(1))?;
            killed_agent = true;
        } else if !killed_core && emitted * 10 >= total * 6 {
            note = "core killed".into();
            progress(emitted, total, &note);
            cluster.kill9_restart("core", Duration::from_secs(1))?;
            killed_core = true;
        }
        progress(emitted, total, &note);
        if cluster.masters_done() {
            let open = cluster.open_deliveries();
            if open == Some(0) {
                note = "settled".into();
                progress(emitted, total, &note);
                break true;
            }
            note = format!(
                "masters done; {} deliveries open",
                open.map(|n| n.to_string()).unwrap_or("?".into())
            );
        }
        if let Some((name, code)) = cluster.crashed() {
            if !reported_crash {
                eprintln!("\n{name} exited with {code}; see {}/logs", dir.display());
                reported_crash = true;
            }
        }
        if cluster.elapsed() > o.timeout {
            break false;
        }
    };
    eprintln!();
    let elapsed = cluster.elapsed();
    let report = cluster.report()?;
    println!("{report}");
    let rate = report.emitted as f64 / elapsed.as_secs_f64().max(0.001);
    println!(
        "wall time: {:.1} s ({rate:.0} intents/s emitted)",
        elapsed.as_secs_f64()
    );
    if !settled {
        println!(
            "NOT SETTLED within {} s: deliveries were still open (see {}/logs)",
            o.timeout.as_secs(),
            dir.display()
        );
    }
    let ok = settled && report.is_clean() && report.emitted == total;
    drop(cluster);
    if ok {
        println!("result: OK — nothing lost, nothing duplicated, order kept");
        if temp {
            let _ = std::fs::remove_dir_all(&dir);
        }
    } else {
        println!("result: FAILED (logs and files kept in {})", dir.display());
    }
    Ok(ok)
}
