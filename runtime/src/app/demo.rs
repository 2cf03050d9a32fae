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
//! It owns orchestration and accounting only, and must never decide anything about a trade:
//! it counts what the machines did.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::AppError;
use crate::config::{generate_token, hash_token};

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

/// Intents per trade in rate mode: open, one modify, one partial close, close.
const INTENTS_PER_TRADE: u64 = 4;

fn free_port() -> Result<u16, AppError> {
    let l =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(AppError::io("finding a free port"))?;
    Ok(l.local_addr()
        .map_err(AppError::io("finding a free port"))?
        .port())
}

struct Proc {
    name: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn spawn(&mut self, exe: &Path) -> Result<(), AppError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(AppError::io(format!("opening {}", self.log.display())))?;
        let err = log.try_clone().map_err(AppError::io("log file"))?;
        let child = Command::new(exe)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .spawn()
            .map_err(AppError::io(format!("starting {}", self.name)))?;
        self.child = Some(child);
        Ok(())
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            // std's kill is SIGKILL on Unix: no shutdown path runs.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            #[cfg(unix)]
            {
                let _ = Command::new("kill")
                    .args(["-TERM", &c.id().to_string()])
                    .stderr(Stdio::null())
                    .status();
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = c.try_wait() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `Some(code)` once the process has exited.
    fn exited(&mut self) -> Option<i32> {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(st))) => Some(st.code().unwrap_or(-1)),
            _ => None,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.terminate();
    }
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    // A torn last line (a process killed mid-write) is skipped, as the terminals do.
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

/// Reads `/metrics` of the core over plain HTTP/1.1 (loopback).
fn scrape(addr: SocketAddr) -> Option<String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.trim().parse().ok())
}

/// The demo's ledger, computed from files.
#[derive(Debug, Default)]
pub struct DemoReport {
    pub emitted: u64,
    pub core_accepted: u64,
    pub master_refused: u64,
    pub expected_deliveries: u64,
    pub confirmed: BTreeMap<String, u64>,
    pub broker_rejected: u64,
    pub failed: BTreeMap<String, u64>,
    pub lost: Vec<String>,
    pub duplicated: Vec<String>,
    pub out_of_order: Vec<String>,
    pub latencies_ms: Vec<i64>,
    pub kills: Vec<String>,
}

impl DemoReport {
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty() && self.duplicated.is_empty() && self.out_of_order.is_empty()
    }

    fn pct(&self, p: f64) -> i64 {
        let mut v = self.latencies_ms.clone();
        v.sort_unstable();
        if v.is_empty() {
            return 0;
        }
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v[i.min(v.len() - 1)]
    }
}

impl std::fmt::Display for DemoReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "== echo demo report")?;
        for k in &self.kills {
            writeln!(f, "fault injected:          {k}")?;
        }
        writeln!(f, "intents emitted:         {}", self.emitted)?;
        writeln!(f, "intents CORE_ACCEPTED:   {}", self.core_accepted)?;
        writeln!(f, "intents refused (final): {}", self.master_refused)?;
        writeln!(f, "deliveries expected:     {}", self.expected_deliveries)?;
        for (slave, n) in &self.confirmed {
            writeln!(f, "  confirmed at {slave:<10} {n}")?;
        }
        writeln!(f, "broker rejections:       {}", self.broker_rejected)?;
        if self.failed.is_empty() {
            writeln!(f, "failed with reason:      0")?;
        }
        for (reason, n) in &self.failed {
            writeln!(f, "failed with reason:      {n} × {reason}")?;
        }
        writeln!(f, "lost:                    {}", self.lost.len())?;
        for l in self.lost.iter().take(10) {
            writeln!(f, "  lost {l}")?;
        }
        writeln!(f, "duplicated:              {}", self.duplicated.len())?;
        for d in self.duplicated.iter().take(10) {
            writeln!(f, "  duplicated {d}")?;
        }
        writeln!(f, "out of order:            {}", self.out_of_order.len())?;
        for d in self.out_of_order.iter().take(10) {
            writeln!(f, "  out of order {d}")?;
        }
        writeln!(
            f,
            "latency master→slave:    p50 {} ms, p99 {} ms, max {} ms ({} executions)",
            self.pct(0.50),
            self.pct(0.99),
            self.latencies_ms.iter().max().copied().unwrap_or(0),
            self.latencies_ms.len()
        )
    }
}

struct Emitted {
    trade: String,
    master: String,
    seq: u64,
    emitted_at: i64,
}

/// Computes the report from the terminals' files and the journal's failed rows
/// (`(intent_id, slave, reason)`).
pub fn account(
    masters: &[(String, PathBuf)],
    slaves: &[(String, PathBuf)],
    subscriptions: &BTreeMap<String, Vec<String>>,
    failed_rows: &[(String, String, String)],
) -> DemoReport {
    let mut r = DemoReport::default();
    let mut intents: BTreeMap<String, Emitted> = BTreeMap::new();
    let mut accepted: BTreeSet<String> = BTreeSet::new();
    for (master, file) in masters {
        for row in read_jsonl(file) {
            let id = row["intent_id"].as_str().unwrap_or_default().to_string();
            match row["event"].as_str() {
                Some("emitted") => {
                    intents.insert(
                        id,
                        Emitted {
                            trade: row["trade_id"].as_str().unwrap_or_default().to_string(),
                            master: master.clone(),
                            seq: row["master_seq"].as_u64().unwrap_or(0),
                            emitted_at: row["emitted_at_ms"].as_i64().unwrap_or(0),
                        },
                    );
                }
                Some("acked") => {
                    accepted.insert(id);
                }
                Some("rejected") | Some("gave_up") => r.master_refused += 1,
                _ => {}
            }
        }
    }
    r.emitted = intents.len() as u64;
    r.core_accepted = accepted.len() as u64;
    let failed: BTreeMap<(String, String), String> = failed_rows
        .iter()
        .map(|(i, s, why)| ((i.clone(), s.clone()), why.clone()))
        .collect();
    for (slave, file) in slaves {
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut last_seq: BTreeMap<String, u64> = BTreeMap::new();
        let mut confirmed = 0;
        for row in read_jsonl(file) {
            let intent = row["intent_id"].as_str().unwrap_or_default().to_string();
            let command = row["command_id"].as_str().unwrap_or_default().to_string();
            if !seen.insert(intent.clone()) {
                r.duplicated.push(format!("{command} at {slave}"));
                continue;
            }
            let Some(e) = intents.get(&intent) else {
                r.duplicated
                    .push(format!("{command} at {slave}: executed but never emitted"));
                continue;
            };
            if let Some(prev) = last_seq.insert(e.trade.clone(), e.seq) {
                if prev > e.seq {
                    r.out_of_order.push(format!(
                        "trade {} at {slave}: seq {} after {prev}",
                        e.trade, e.seq
                    ));
                }
            }
            if row["status"].as_str() == Some("FILLED") {
                confirmed += 1;
            } else {
                r.broker_rejected += 1;
            }
            if let Some(at) = row["executed_at_ms"].as_i64() {
                r.latencies_ms.push(at - e.emitted_at);
            }
        }
        r.confirmed.insert(slave.clone(), confirmed);
        // Every accepted intent of a master this slave follows: executed, or failed with a reason.
        for (id, e) in &intents {
            let follows = subscriptions
                .get(&e.master)
                .is_some_and(|s| s.contains(slave));
            if !follows || !accepted.contains(id) {
                continue;
            }
            r.expected_deliveries += 1;
            if seen.contains(id) {
                continue;
            }
            match failed.get(&(id.clone(), slave.clone())) {
                Some(why) => *r.failed.entry(why.clone()).or_insert(0) += 1,
                None => r.lost.push(format!("{id} ({}) at {slave}", e.trade)),
            }
        }
    }
    r
}

fn progress(done: u64, total: u64, note: &str) {
    let pct = done * 100 / total.max(1);
    let bar = "#".repeat((pct / 4) as usize);
    eprint!("\r[{bar:<25}] {pct:>3}% intents emitted {done}/{total} {note:<40}");
    let _ = std::io::stderr().flush();
}

fn write_config(
    dir: &Path,
    o: &DemoOptions,
    link_port: u16,
    metrics_port: u16,
    hashes: (&str, &str),
) -> Result<(PathBuf, BTreeMap<String, Vec<String>>), AppError> {
    let pki = crate::link::tls::generate_demo_pki(&dir.join("pki"))?;
    let masters: Vec<String> = (1..=o.masters).map(|i| format!("master-{i}")).collect();
    let slaves: Vec<String> = (1..=o.slaves).map(|i| format!("slave-{i}")).collect();
    let mut t = format!(
        "# Written by `echo demo`: throw-away certificates and tokens.\n\
         [core]\nlisten_addr = \"127.0.0.1:{link_port}\"\ndata_dir = \"{core_dir}\"\n\
         journal = \"sqlite:journal.sqlite3\"\nmetrics_addr = \"127.0.0.1:{metrics_port}\"\n\n\
         [core.tls]\ncert = \"{cert}\"\nkey = \"{key}\"\nclient_ca = \"{ca}\"\nrequire_client_cert = true\n\n\
         [core.delivery]\nack_timeout_ms = 1000\nretry_backoff_ms = 100\nmax_retries = 20\n\
         heartbeat_interval_ms = 1000\nreconcile_interval_ms = 2000\n\n\
         [agent]\ncore_addr = \"https://localhost:{link_port}\"\n\n\
         [agent.tls]\nca = \"{ca}\"\ncert = \"{acert}\"\nkey = \"{akey}\"\n\n",
        core_dir = dir.join("core").display(),
        cert = pki.server.cert.display(),
        key = pki.server.key.display(),
        ca = pki.ca.display(),
        acert = pki.client_cert.display(),
        akey = pki.client_key.display(),
    );
    let mut subs = BTreeMap::new();
    for m in &masters {
        for (i, s) in slaves.iter().enumerate() {
            // Some slaves trade half size under a broker suffix: the fan-out rules at work.
            if i % 2 == 1 {
                t += &format!(
                    "[subscriptions.{m}.{s}]\nmultiplier = 0.5\nsymbol_map = {{ EURUSD = \"EURUSD.m\" }}\n\n"
                );
            } else {
                t += &format!("[subscriptions.{m}.{s}]\nmultiplier = 1.0\n\n");
            }
        }
        subs.insert(m.clone(), slaves.clone());
    }
    let accounts = |names: &[String], role: &str| {
        names
            .iter()
            .map(|n| format!("\"{n}\" = \"{role}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    t += &format!(
        "[agents.agent-1]\ntoken_hash = \"{}\"\naccounts = {{ {} }}\n\n[agents.agent-2]\ntoken_hash = \"{}\"\naccounts = {{ {} }}\n",
        hashes.0,
        accounts(&masters, "master"),
        hashes.1,
        accounts(&slaves, "slave"),
    );
    let path = dir.join("echo.toml");
    std::fs::write(&path, t).map_err(AppError::io("writing the demo config"))?;
    if let Err(errors) = crate::config::check_file(&path) {
        let msg: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        return Err(AppError::Usage(format!(
            "demo config invalid: {}",
            msg.join("; ")
        )));
    }
    Ok((path, subs))
}

/// Runs the demo; `Ok(true)` when nothing was lost, duplicated or reordered.
pub fn run(o: DemoOptions) -> Result<bool, AppError> {
    let exe = std::env::current_exe().map_err(AppError::io("locating the echo binary"))?;
    let temp = o.dir.is_none();
    let dir = match &o.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("echo-demo-{}", std::process::id())),
    };
    let _ = std::fs::remove_dir_all(&dir);
    for sub in ["logs", "pipes", "core", "agent-1", "agent-2", "terminals"] {
        std::fs::create_dir_all(dir.join(sub))
            .map_err(AppError::io(format!("creating {}", dir.display())))?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir.join("pipes"), std::fs::Permissions::from_mode(0o700));
    }
    let (link_port, metrics_port) = (free_port()?, free_port()?);
    let tok1 = generate_token().map_err(|e| AppError::Usage(format!("no randomness: {e}")))?;
    let tok2 = generate_token().map_err(|e| AppError::Usage(format!("no randomness: {e}")))?;
    for (name, t) in [("agent-1.token", &tok1), ("agent-2.token", &tok2)] {
        std::fs::write(dir.join(name), t.expose()).map_err(AppError::io("writing a token"))?;
    }
    let (config, subs) = write_config(
        &dir,
        &o,
        link_port,
        metrics_port,
        (&hash_token(tok1.expose()), &hash_token(tok2.expose())),
    )?;
    println!(
        "echo demo: core + 2 agents + {} master(s) + {} slaves as processes in {}",
        o.masters,
        o.slaves,
        dir.display()
    );
    let cfg = config.display().to_string();
    let pipes = dir.join("pipes").display().to_string();
    let proc = |name: &str, args: Vec<String>| Proc {
        name: name.to_string(),
        log: dir.join("logs").join(format!("{name}.log")),
        args,
        child: None,
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let mut core = proc("core", s(&["core", "--config", &cfg, "--json-logs"]));
    let agent = |id: &str| {
        s(&[
            "agent",
            "--config",
            &cfg,
            "--id",
            id,
            "--token-file",
            &dir.join(format!("{id}.token")).display().to_string(),
            "--data-dir",
            &dir.join(id).display().to_string(),
            "--socket-dir",
            &pipes,
            "--json-logs",
        ])
    };
    let mut agent1 = proc("agent-1", agent("agent-1"));
    let mut agent2 = proc("agent-2", agent("agent-2"));
    let term_dir = dir.join("terminals");
    let mut slaves: Vec<Proc> = (1..=o.slaves)
        .map(|i| {
            let acc = format!("slave-{i}");
            proc(
                &acc,
                s(&[
                    "terminal",
                    "--role",
                    "slave",
                    "--account",
                    &acc,
                    "--socket-dir",
                    &pipes,
                    "--data-dir",
                    &term_dir.display().to_string(),
                ]),
            )
        })
        .collect();
    let rate = o.rate.to_string();
    let trades = o.trades.to_string();
    let mut masters: Vec<Proc> = (1..=o.masters)
        .map(|i| {
            let acc = format!("master-{i}");
            proc(
                &acc,
                s(&[
                    "terminal",
                    "--role",
                    "master",
                    "--account",
                    &acc,
                    "--socket-dir",
                    &pipes,
                    "--data-dir",
                    &term_dir.display().to_string(),
                    "--rate",
                    &rate,
                    "--trades",
                    &trades,
                    "--exit-when-done",
                ]),
            )
        })
        .collect();

    core.spawn(&exe)?;
    std::thread::sleep(Duration::from_millis(500));
    agent1.spawn(&exe)?;
    agent2.spawn(&exe)?;
    std::thread::sleep(Duration::from_millis(300));
    for p in slaves.iter_mut() {
        p.spawn(&exe)?;
    }
    for p in masters.iter_mut() {
        p.spawn(&exe)?;
    }

    let master_files: Vec<(String, PathBuf)> = (1..=o.masters)
        .map(|i| {
            let acc = format!("master-{i}");
            let f = term_dir.join(format!("{acc}.emitted.jsonl"));
            (acc, f)
        })
        .collect();
    let slave_files: Vec<(String, PathBuf)> = (1..=o.slaves)
        .map(|i| {
            let acc = format!("slave-{i}");
            let f = term_dir.join(format!("{acc}.broker.jsonl"));
            (acc, f)
        })
        .collect();
    let total = o.trades * INTENTS_PER_TRADE * o.masters as u64;
    let metrics_addr = SocketAddr::from(([127, 0, 0, 1], metrics_port));
    let started = Instant::now();
    let mut kills = Vec::new();
    let mut killed_agent = !o.kill;
    let mut killed_core = !o.kill;
    let mut note = String::new();
    let settled = loop {
        std::thread::sleep(Duration::from_millis(200));
        let emitted: u64 = master_files
            .iter()
            .map(|(_, f)| {
                read_jsonl(f)
                    .iter()
                    .filter(|r| r["event"].as_str() == Some("emitted"))
                    .count() as u64
            })
            .sum();
        if !killed_agent && emitted * 10 >= total * 3 {
            agent2.kill9();
            kills.push(format!("SIGKILL agent-2 (the slaves' agent) at {emitted}/{total} intents; restarted after 1 s"));
            note = "agent-2 killed".into();
            progress(emitted, total, &note);
            std::thread::sleep(Duration::from_secs(1));
            agent2.spawn(&exe)?;
            killed_agent = true;
        } else if !killed_core && emitted * 10 >= total * 6 {
            core.kill9();
            kills.push(format!(
                "SIGKILL core at {emitted}/{total} intents; restarted after 1 s"
            ));
            note = "core killed".into();
            progress(emitted, total, &note);
            std::thread::sleep(Duration::from_secs(1));
            core.spawn(&exe)?;
            killed_core = true;
        }
        progress(emitted, total, &note);
        let masters_done = masters.iter_mut().all(|m| m.exited().is_some());
        if masters_done {
            let open = scrape(metrics_addr).and_then(|t| metric(&t, "echo_core_open_deliveries"));
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
        for p in [&mut core, &mut agent1, &mut agent2] {
            if let Some(code) = p.exited() {
                eprintln!("\n{} exited with {code}; see {}", p.name, p.log.display());
                break;
            }
        }
        if started.elapsed() > o.timeout {
            break false;
        }
    };
    eprintln!();
    let elapsed = started.elapsed();
    // Stop everything, then read the journal's failed deliveries from the core's SQLite file.
    for m in masters.iter_mut() {
        m.terminate();
    }
    for p in slaves.iter_mut() {
        p.terminate();
    }
    agent1.terminate();
    agent2.terminate();
    core.terminate();
    let failed_rows = read_failed(&dir.join("core").join("journal.sqlite3"))?;
    let mut report = account(&master_files, &slave_files, &subs, &failed_rows);
    report.kills = kills;
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

fn read_failed(path: &Path) -> Result<Vec<(String, String, String)>, AppError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AppError::io("runtime"))?;
    rt.block_on(async {
        let j = crate::journal::Journal::open_sqlite(path, Default::default()).await?;
        let rows = j.failed(1_000_000).await?;
        j.close().await;
        Ok(rows
            .into_iter()
            .map(|r| {
                (
                    r.record.intent_id.to_string(),
                    r.record.slave.to_string(),
                    r.record
                        .reason
                        .map(|e| e.name().to_string())
                        .unwrap_or_else(|| "UNKNOWN".into()),
                )
            })
            .collect())
    })
}
