//! A cluster of real Echo processes on loopback: one core, two agents (`agent-1` serves the
//! masters, `agent-2` the slaves), master and slave reference terminals over real Unix sockets.
//!
//! [`Cluster`] writes the config (throw-away TLS certificates and tokens; the core journals to
//! SQLite in its data dir or to a given Postgres URL), spawns every process from the `echo`
//! binary, kills (SIGKILL) and restarts them by name, reads progress from the terminals' files
//! and the core's `/metrics`, waits for the system to settle and computes the [`DemoReport`]
//! from what the terminals wrote to disk and the journal's failed deliveries. `echo demo` and
//! the end-to-end tests (`tests/e2e_*.rs`) are both built on it.
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
use crate::link::tls::DemoPki;

/// Intents per trade in rate mode: open, one modify, one partial close, close.
pub const INTENTS_PER_TRADE: u64 = 4;

/// Where the core journals.
#[derive(Clone, Debug)]
pub enum JournalSpec {
    /// `sqlite:journal.sqlite3` in the core's data dir.
    Sqlite,
    /// A Postgres URL (the database must exist; the core migrates it).
    Postgres(String),
}

/// `[core.delivery]` / `[agent.delivery]` timings written to the config.
#[derive(Clone, Debug)]
pub struct Timings {
    pub ack_timeout_ms: u64,
    pub retry_backoff_ms: u64,
    pub max_retries: u64,
    pub heartbeat_interval_ms: u64,
    pub reconcile_interval_ms: u64,
    pub agent_ack_timeout_ms: u64,
    pub agent_retry_backoff_ms: u64,
    pub agent_max_retries: u64,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            ack_timeout_ms: 1000,
            retry_backoff_ms: 100,
            max_retries: 20,
            heartbeat_interval_ms: 1000,
            reconcile_interval_ms: 2000,
            agent_ack_timeout_ms: 1000,
            agent_retry_backoff_ms: 100,
            agent_max_retries: 10,
        }
    }
}

/// What to start.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// The `echo` binary every process is started from.
    pub exe: PathBuf,
    /// Working directory (emptied first): config, PKI, data dirs, sockets, logs, terminal files.
    pub dir: PathBuf,
    /// `master-1..=N`, served by agent-1.
    pub masters: usize,
    /// `slave-1..=N`, served by agent-2, each following every master.
    pub slaves: usize,
    /// Trades per master (each [`INTENTS_PER_TRADE`] intents).
    pub trades: u64,
    /// Intents per second per master.
    pub rate: u64,
    pub journal: JournalSpec,
    pub timings: Timings,
    /// Trades each master keeps open at once (`echo terminal --concurrent`).
    pub concurrent: u32,
    /// More agents in the config, `(id, token hash)`, each with one slave account
    /// `acct-<id>` and no subscription: for a load client that connects them itself.
    pub extra_agents: Vec<(String, String)>,
    /// Leave the masters for [`Cluster::start_masters`] (a load client connects first).
    pub hold_masters: bool,
    /// Give every fourth slave a copy policy that skips some trades (the demo shows it); off
    /// for the end-to-end tests, which expect every trade confirmed at every slave.
    pub copy_policies: bool,
}

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
    /// Lots each slave opened (filled EXECUTE orders): the subscriptions' sizing at work.
    pub opened_lots: BTreeMap<String, f64>,
    /// (slave, reason) → deliveries that slave did not make, per reason.
    pub failed_by_slave: BTreeMap<(String, String), u64>,
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
            let lots = self.opened_lots.get(slave).copied().unwrap_or(0.0);
            writeln!(f, "  confirmed at {slave:<10} {n}  (opened {lots:.2} lots)")?;
            for ((s, reason), n) in &self.failed_by_slave {
                if s == slave {
                    writeln!(f, "    not copied {n} × {reason}")?;
                }
            }
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
                if row["action"].as_str() == Some("EXECUTE") {
                    *r.opened_lots.entry(slave.clone()).or_insert(0.0) +=
                        row["volume"].as_f64().unwrap_or(0.0);
                }
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
                Some(why) => {
                    *r.failed.entry(why.clone()).or_insert(0) += 1;
                    *r.failed_by_slave
                        .entry((slave.clone(), why.clone()))
                        .or_insert(0) += 1;
                }
                None => r.lost.push(format!("{id} ({}) at {slave}", e.trade)),
            }
        }
    }
    r
}

/// Who follows whom: master account → its slave accounts.
type Subscriptions = BTreeMap<String, Vec<String>>;

/// Writes the cluster's TOML config; returns its path, who follows whom and the PKI.
fn write_config(
    dir: &Path,
    o: &ClusterOptions,
    link_port: u16,
    metrics_port: u16,
    hashes: (&str, &str),
) -> Result<(PathBuf, Subscriptions, DemoPki), AppError> {
    let pki = crate::link::tls::generate_demo_pki(&dir.join("pki"))?;
    let masters: Vec<String> = (1..=o.masters).map(|i| format!("master-{i}")).collect();
    let slaves: Vec<String> = (1..=o.slaves).map(|i| format!("slave-{i}")).collect();
    let journal = match &o.journal {
        JournalSpec::Sqlite => "sqlite:journal.sqlite3".to_string(),
        JournalSpec::Postgres(url) => url.clone(),
    };
    let t8 = &o.timings;
    let mut t = format!(
        "# Written by echo's cluster orchestration (`echo demo`, end-to-end tests): throw-away\n\
         # certificates and tokens.\n\
         [core]\nlisten_addr = \"127.0.0.1:{link_port}\"\ndata_dir = \"{core_dir}\"\n\
         journal = \"{journal}\"\nmetrics_addr = \"127.0.0.1:{metrics_port}\"\n\n\
         [core.tls]\ncert = \"{cert}\"\nkey = \"{key}\"\nclient_ca = \"{ca}\"\nrequire_client_cert = true\n\n\
         [core.delivery]\nack_timeout_ms = {}\nretry_backoff_ms = {}\nmax_retries = {}\n\
         heartbeat_interval_ms = {}\nreconcile_interval_ms = {}\n\n\
         [agent]\ncore_addr = \"https://localhost:{link_port}\"\n\n\
         [agent.tls]\nca = \"{ca}\"\ncert = \"{acert}\"\nkey = \"{akey}\"\n\n\
         [agent.delivery]\nack_timeout_ms = {}\nretry_backoff_ms = {}\nmax_retries = {}\n\
         heartbeat_interval_ms = {}\n\n",
        t8.ack_timeout_ms,
        t8.retry_backoff_ms,
        t8.max_retries,
        t8.heartbeat_interval_ms,
        t8.reconcile_interval_ms,
        t8.agent_ack_timeout_ms,
        t8.agent_retry_backoff_ms,
        t8.agent_max_retries,
        t8.heartbeat_interval_ms,
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
            // Every fourth one copies in reverse at a fifth of the size and only the masters'
            // sells (a copy policy: SPEC.md §5.2; its skipped buys show with their reason).
            if o.copy_policies && i % 4 == 3 {
                t += &format!(
                    "[subscriptions.{m}.{s}]\nmultiplier = 0.2\nreverse = true\n\
                     [subscriptions.{m}.{s}.filters]\ndirection = \"sell_only\"\n\n"
                );
            } else if i % 2 == 1 {
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
    for (id, hash) in &o.extra_agents {
        t += &format!(
            "\n[agents.{id}]\ntoken_hash = \"{hash}\"\naccounts = {{ \"acct-{id}\" = \"slave\" }}\n"
        );
    }
    let path = dir.join("echo.toml");
    std::fs::write(&path, t).map_err(AppError::io("writing the cluster config"))?;
    if let Err(errors) = crate::config::check_file(&path) {
        let msg: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        return Err(AppError::Usage(format!(
            "cluster config invalid: {}",
            msg.join("; ")
        )));
    }
    Ok((path, subs, pki))
}

/// Real Echo processes on loopback; every child is stopped when the cluster is dropped.
pub struct Cluster {
    exe: PathBuf,
    dir: PathBuf,
    journal: JournalSpec,
    /// In start order: core, agent-1, agent-2, slaves, masters.
    procs: Vec<Proc>,
    master_files: Vec<(String, PathBuf)>,
    slave_files: Vec<(String, PathBuf)>,
    subs: BTreeMap<String, Vec<String>>,
    metrics_addr: SocketAddr,
    link_port: u16,
    pki: DemoPki,
    total: u64,
    started: Instant,
    /// Faults injected, in words, for the report.
    pub faults: Vec<String>,
}

impl Cluster {
    /// Writes the config and starts core, agents, slaves and masters (masters stream at once).
    pub fn start(o: ClusterOptions) -> Result<Cluster, AppError> {
        let dir = o.dir.clone();
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["logs", "pipes", "core", "agent-1", "agent-2", "terminals"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(AppError::io(format!("creating {}", dir.display())))?;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ =
                std::fs::set_permissions(dir.join("pipes"), std::fs::Permissions::from_mode(0o700));
        }
        let (link_port, metrics_port) = (free_port()?, free_port()?);
        let tok1 = generate_token().map_err(|e| AppError::Usage(format!("no randomness: {e}")))?;
        let tok2 = generate_token().map_err(|e| AppError::Usage(format!("no randomness: {e}")))?;
        for (name, t) in [("agent-1.token", &tok1), ("agent-2.token", &tok2)] {
            std::fs::write(dir.join(name), t.expose()).map_err(AppError::io("writing a token"))?;
        }
        let (config, subs, pki) = write_config(
            &dir,
            &o,
            link_port,
            metrics_port,
            (&hash_token(tok1.expose()), &hash_token(tok2.expose())),
        )?;
        let cfg = config.display().to_string();
        let pipes = dir.join("pipes").display().to_string();
        let term_dir = dir.join("terminals");
        let terms = term_dir.display().to_string();
        let proc = |name: &str, args: &[&str]| Proc {
            name: name.to_string(),
            log: dir.join("logs").join(format!("{name}.log")),
            args: args.iter().map(|x| x.to_string()).collect(),
            child: None,
        };
        let mut procs = vec![proc("core", &["core", "--config", &cfg, "--json-logs"])];
        for id in ["agent-1", "agent-2"] {
            let token = dir.join(format!("{id}.token")).display().to_string();
            let data = dir.join(id).display().to_string();
            procs.push(proc(
                id,
                &[
                    "agent",
                    "--config",
                    &cfg,
                    "--id",
                    id,
                    "--token-file",
                    &token,
                    "--data-dir",
                    &data,
                    "--socket-dir",
                    &pipes,
                    "--json-logs",
                ],
            ));
        }
        let (rate, trades) = (o.rate.to_string(), o.trades.to_string());
        let concurrent = o.concurrent.max(1).to_string();
        let capacity = (o.concurrent.max(1) * 4).max(1024).to_string();
        let mut slave_files = Vec::new();
        for i in 1..=o.slaves {
            let acc = format!("slave-{i}");
            procs.push(proc(
                &acc,
                &[
                    "terminal",
                    "--role",
                    "slave",
                    "--account",
                    &acc,
                    "--socket-dir",
                    &pipes,
                    "--data-dir",
                    &terms,
                ],
            ));
            let f = term_dir.join(format!("{acc}.broker.jsonl"));
            slave_files.push((acc, f));
        }
        let mut master_files = Vec::new();
        for i in 1..=o.masters {
            let acc = format!("master-{i}");
            procs.push(proc(
                &acc,
                &[
                    "terminal",
                    "--role",
                    "master",
                    "--account",
                    &acc,
                    "--socket-dir",
                    &pipes,
                    "--data-dir",
                    &terms,
                    "--rate",
                    &rate,
                    "--trades",
                    &trades,
                    "--concurrent",
                    &concurrent,
                    "--capacity",
                    &capacity,
                    "--exit-when-done",
                ],
            ));
            let f = term_dir.join(format!("{acc}.emitted.jsonl"));
            master_files.push((acc, f));
        }
        let mut c = Cluster {
            exe: o.exe.clone(),
            dir,
            journal: o.journal.clone(),
            procs,
            master_files,
            slave_files,
            subs,
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], metrics_port)),
            link_port,
            pki,
            total: o.trades * INTENTS_PER_TRADE * o.masters as u64,
            started: Instant::now(),
            faults: Vec::new(),
        };
        c.spawn("core")?;
        std::thread::sleep(Duration::from_millis(500));
        c.spawn("agent-1")?;
        c.spawn("agent-2")?;
        std::thread::sleep(Duration::from_millis(300));
        for i in 1..=o.slaves {
            c.spawn(&format!("slave-{i}"))?;
        }
        if !o.hold_masters {
            c.start_masters()?;
        }
        Ok(c)
    }

    /// Starts every master terminal (they stream at once); [`Cluster::elapsed`] counts from here.
    pub fn start_masters(&mut self) -> Result<(), AppError> {
        let masters: Vec<String> = self.master_files.iter().map(|(m, _)| m.clone()).collect();
        for m in masters {
            self.spawn(&m)?;
        }
        self.started = Instant::now();
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Intents the masters will emit in all.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Since the masters were started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn proc_mut(&mut self, name: &str) -> Result<&mut Proc, AppError> {
        self.procs
            .iter_mut()
            .find(|p| p.name == name)
            .ok_or_else(|| AppError::Usage(format!("no process named {name:?} in the cluster")))
    }

    /// Starts (or restarts) the named process; its log is appended to.
    pub fn spawn(&mut self, name: &str) -> Result<(), AppError> {
        let exe = self.exe.clone();
        let p = self.proc_mut(name)?;
        if p.child.is_some() && p.exited().is_none() {
            return Err(AppError::Usage(format!("{name} is already running")));
        }
        p.spawn(&exe)
    }

    /// SIGKILLs the named process (no shutdown path runs).
    pub fn kill9(&mut self, name: &str) -> Result<(), AppError> {
        self.proc_mut(name)?.kill9();
        Ok(())
    }

    /// SIGKILLs `name`, waits `down`, starts it again, and records the fault.
    pub fn kill9_restart(&mut self, name: &str, down: Duration) -> Result<(), AppError> {
        let emitted = self.emitted();
        self.kill9(name)?;
        std::thread::sleep(down);
        self.spawn(name)?;
        let who = match name {
            "agent-1" => "agent-1 (the masters' agent)",
            "agent-2" => "agent-2 (the slaves' agent)",
            other => other,
        };
        self.faults.push(format!(
            "SIGKILL {who} at {emitted}/{} intents; restarted after {:.1} s",
            self.total,
            down.as_secs_f64()
        ));
        Ok(())
    }

    /// Intents the masters have emitted so far (from their files).
    pub fn emitted(&self) -> u64 {
        self.master_files
            .iter()
            .map(|(_, f)| {
                read_jsonl(f)
                    .iter()
                    .filter(|r| r["event"].as_str() == Some("emitted"))
                    .count() as u64
            })
            .sum()
    }

    /// Whether every master terminal has exited (they exit once all their intents are acked).
    pub fn masters_done(&mut self) -> bool {
        self.procs
            .iter_mut()
            .filter(|p| p.name.starts_with("master-"))
            .all(|m| m.exited().is_some())
    }

    /// `echo_core_open_deliveries` from the core's `/metrics`; `None` if unreachable.
    pub fn open_deliveries(&self) -> Option<u64> {
        scrape(self.metrics_addr).and_then(|t| metric(&t, "echo_core_open_deliveries"))
    }

    /// The core's whole `/metrics` text; `None` if unreachable.
    pub fn core_metrics_text(&self) -> Option<String> {
        scrape(self.metrics_addr)
    }

    /// A metric of the core's `/metrics` (an unlabelled one); `None` if unreachable.
    pub fn core_metric(&self, name: &str) -> Option<u64> {
        scrape(self.metrics_addr).and_then(|t| metric(&t, name))
    }

    /// A core or agent that exited by itself: `(name, exit code)`.
    pub fn crashed(&mut self) -> Option<(String, i32)> {
        self.procs
            .iter_mut()
            .filter(|p| p.name == "core" || p.name.starts_with("agent-"))
            .find_map(|p| p.exited().map(|code| (p.name.clone(), code)))
    }

    /// Settled: the masters are done and the core has no open delivery. Exact because the
    /// core republishes its gauge when it crosses zero before an intent's ack leaves it: once
    /// every master saw its intents acked, a 0 here is newer than their deliveries.
    pub fn settled(&mut self) -> bool {
        self.masters_done() && self.open_deliveries() == Some(0)
    }

    /// Polls `until` every 200 ms, up to `timeout`; `true` once it held.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        mut until: impl FnMut(&mut Cluster) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if until(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until at least `n` intents were emitted.
    pub fn wait_emitted(&mut self, n: u64, timeout: Duration) -> bool {
        self.wait_for(timeout, |c| c.emitted() >= n)
    }

    /// Waits until [`Cluster::settled`].
    pub fn wait_settled(&mut self, timeout: Duration) -> bool {
        self.wait_for(timeout, Cluster::settled)
    }

    /// Stops every process (SIGTERM, then SIGKILL after 10 s), masters first.
    pub fn stop(&mut self) {
        for p in self.procs.iter_mut().rev() {
            p.terminate();
        }
    }

    /// Stops everything, then computes the report from the terminals' files and the
    /// journal's failed deliveries.
    pub fn report(&mut self) -> Result<DemoReport, AppError> {
        self.stop();
        let failed_rows = read_failed(&self.journal, &self.dir.join("core"))?;
        let mut report = account(
            &self.master_files,
            &self.slave_files,
            &self.subs,
            &failed_rows,
        );
        report.kills = self.faults.clone();
        Ok(report)
    }

    /// `(account, <account>.emitted.jsonl)` of every master terminal.
    pub fn master_files(&self) -> &[(String, PathBuf)] {
        &self.master_files
    }

    /// `(account, <account>.broker.jsonl)` of every slave terminal.
    pub fn slave_files(&self) -> &[(String, PathBuf)] {
        &self.slave_files
    }

    /// `(name, pid)` of every running process.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.procs
            .iter()
            .filter_map(|p| p.child.as_ref().map(|c| (p.name.clone(), c.id())))
            .collect()
    }

    /// The core's link address as an agent dials it (TLS, `localhost`).
    pub fn link_endpoint(&self) -> String {
        format!("https://localhost:{}", self.link_port)
    }

    /// The throw-away PKI: CA, and the client certificate every agent presents.
    pub fn pki(&self) -> &DemoPki {
        &self.pki
    }

    /// The core's `/metrics` address.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// The slave accounts (each follows every master).
    pub fn slaves(&self) -> Vec<String> {
        self.slave_files.iter().map(|(s, _)| s.clone()).collect()
    }

    /// The last `lines` lines of every process's log, for a failure message.
    pub fn logs_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for p in &self.procs {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let from = all.len().saturating_sub(lines);
            out += &format!(
                "----- {} ({} lines, last {}) -----\n",
                p.log.display(),
                all.len(),
                all.len() - from
            );
            for l in &all[from..] {
                out += l;
                out.push('\n');
            }
        }
        out
    }
}

fn read_failed(
    journal: &JournalSpec,
    core_dir: &Path,
) -> Result<Vec<(String, String, String)>, AppError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AppError::io("runtime"))?;
    rt.block_on(async {
        let j = match journal {
            JournalSpec::Sqlite => {
                crate::journal::Journal::open_sqlite(
                    &core_dir.join("journal.sqlite3"),
                    Default::default(),
                )
                .await?
            }
            JournalSpec::Postgres(url) => {
                crate::journal::Journal::open_postgres(
                    crate::journal::PostgresOptions::new(url.clone()),
                    Default::default(),
                )
                .await?
            }
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, rows: &[Value]) {
        let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
        std::fs::write(path, text).expect("writing a test file");
    }

    fn emitted(id: &str, trade: &str, seq: u64) -> Value {
        serde_json::json!({"event": "emitted", "intent_id": id, "trade_id": trade,
                           "master_seq": seq, "emitted_at_ms": 1000})
    }

    fn acked(id: &str) -> Value {
        serde_json::json!({"event": "acked", "intent_id": id})
    }

    fn executed(id: &str) -> Value {
        serde_json::json!({"intent_id": id, "command_id": format!("c-{id}"),
                           "status": "FILLED", "executed_at_ms": 1010})
    }

    /// The accounting the demo and the end-to-end tests rely on must see every kind of damage.
    #[test]
    fn account_reports_lost_duplicated_out_of_order_and_failed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let m = dir.path().join("m.jsonl");
        write(
            &m,
            &[
                emitted("i1", "t1", 1),
                emitted("i2", "t1", 2),
                emitted("i3", "t1", 3),
                emitted("i4", "t2", 4),
                acked("i1"),
                acked("i2"),
                acked("i3"),
                acked("i4"),
            ],
        );
        let (s1, s2) = (dir.path().join("s1.jsonl"), dir.path().join("s2.jsonl"));
        // s1: i2 before i1 (out of order), i3 twice (duplicated), i4 missing but failed.
        write(
            &s1,
            &[
                executed("i2"),
                executed("i1"),
                executed("i3"),
                executed("i3"),
            ],
        );
        // s2: clean except i4 missing with no failed row (lost); a torn last line is skipped.
        let mut text: String = [executed("i1"), executed("i2"), executed("i3")]
            .iter()
            .map(|r| format!("{r}\n"))
            .collect();
        text += "{\"intent_id\": \"i4\", \"comm";
        std::fs::write(&s2, text).expect("writing a test file");
        let subs = BTreeMap::from([("m".to_string(), vec!["s1".to_string(), "s2".to_string()])]);
        let r = account(
            &[("m".into(), m)],
            &[("s1".into(), s1), ("s2".into(), s2)],
            &subs,
            &[("i4".into(), "s1".into(), "SYMBOL_NOT_MAPPED".into())],
        );
        assert_eq!(
            (r.emitted, r.core_accepted, r.expected_deliveries),
            (4, 4, 8)
        );
        assert_eq!(r.confirmed.get("s1"), Some(&3));
        assert_eq!(r.confirmed.get("s2"), Some(&3));
        assert_eq!(r.duplicated.len(), 1, "{r}");
        assert_eq!(r.out_of_order.len(), 1, "{r}");
        assert_eq!(r.lost.len(), 1, "{r}");
        assert!(r.lost[0].contains("i4") && r.lost[0].contains("s2"), "{r}");
        assert_eq!(r.failed.get("SYMBOL_NOT_MAPPED"), Some(&1));
        assert!(!r.is_clean());
    }
}
