//! `echo loadtest` options: parsing, defaults and the load point (`--nominal` × `--load`).
//!
//! Owns the meaning of every flag. It must never start anything.

use std::path::PathBuf;
use std::time::Duration;

use crate::app::{parse_flags, AppError};

pub const USAGE: &str = "usage: echo loadtest [options]

Starts a core, two agents, M master and K slave reference terminals as real processes over
loopback gRPC (mutual TLS) and Unix sockets, a market-data feed through the runtime's
market-data path, and optionally N more agents multiplexed by a load client; runs the load,
waits for every delivery to settle, counts lost and duplicated copies from the terminals'
durable files and writes artifacts/loadtest/<UTC timestamp>/{metrics.json,report.html}.

  --rate N            intents/s over all masters at 100 % (default 100)
  --nominal N         the 100 % point in intents/s (same as --rate; the KPI reference)
  --load P%           run at P % of nominal: intents and market data (default 100%)
  --md-rate N         market-data messages/s at 100 % (default 2000; 0 = none)
  --symbols N         market-data symbols (default 50)
  --batch N           market-data micro-batch: most messages per batch, 1..=5000 (default 256)
  --batch-window-ms N market-data micro-batch: longest collection time (default 50)
  --shards N          market-data worker shards (default 4)
  --duration S        seconds of load (default 20; suffix s or m accepted)
  --masters M         master terminals (default 1)
  --slaves K          slave terminals, each following every master (default 2)
  --agents N          more agents, each its own gRPC stream with hello and heartbeats,
                      multiplexed by a load client (default 0)
  --agent-connections N  connections the load client spreads them over (default one per
                      100 agents)
  --heartbeat-ms N    heartbeat interval of those agents (default 500)
  --journal J         sqlite (default) | postgres (a fresh database, dropped afterwards)
  --pg-url URL        Postgres admin URL (default postgres://postgres@127.0.0.1:5432/postgres)
  --out DIR           artifacts root (default artifacts/loadtest)
  --work-dir DIR      the cluster's working dir, kept (default a temp dir, removed)
  --settle-s N        longest wait for every delivery after the load (default 120)
  --check-kpis        exit 1 when a seed-003 KPI is missed (runtime lag p95 < 0.5 s, queue
                      time mean < 200 ms, queue depth peak < 50, zero stale drops)

Exit codes: 0 clean, 1 something lost or duplicated (or a KPI missed with --check-kpis),
2 usage or start-up error.";

/// Agent streams per HTTP/2 connection when `--agent-connections` is not given: well under
/// the 200 concurrent streams an HTTP/2 server commonly allows per connection.
pub const AGENTS_PER_CONNECTION: usize = 100;

#[derive(Clone, Debug, PartialEq)]
pub enum JournalChoice {
    Sqlite,
    Postgres { admin_url: String },
}

#[derive(Clone, Debug, PartialEq)]
pub struct LoadtestOptions {
    /// The 100 % point, intents/s over all masters.
    pub nominal: f64,
    /// Percent of nominal to run at.
    pub load_pct: f64,
    /// Market-data messages/s at 100 %.
    pub md_nominal: f64,
    pub symbols: usize,
    pub batch: usize,
    pub batch_window: Duration,
    pub shards: usize,
    pub duration: Duration,
    pub masters: usize,
    pub slaves: usize,
    pub agents: usize,
    /// 0: one connection per [`AGENTS_PER_CONNECTION`] agents.
    pub agent_connections: usize,
    pub heartbeat: Duration,
    pub journal: JournalChoice,
    pub out: PathBuf,
    pub work_dir: Option<PathBuf>,
    pub settle: Duration,
    pub check_kpis: bool,
}

impl Default for LoadtestOptions {
    fn default() -> Self {
        LoadtestOptions {
            nominal: 100.0,
            load_pct: 100.0,
            md_nominal: 2_000.0,
            symbols: 50,
            batch: 256,
            batch_window: Duration::from_millis(50),
            shards: 4,
            duration: Duration::from_secs(20),
            masters: 1,
            slaves: 2,
            agents: 0,
            agent_connections: 0,
            heartbeat: Duration::from_millis(500),
            journal: JournalChoice::Sqlite,
            out: PathBuf::from("artifacts/loadtest"),
            work_dir: None,
            settle: Duration::from_secs(120),
            check_kpis: false,
        }
    }
}

fn number(flag: &str, raw: &str) -> Result<f64, AppError> {
    raw.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| AppError::Usage(format!("{flag} expects a number >= 0, got {raw:?}")))
}

fn count(flag: &str, raw: &str, min: usize, max: usize) -> Result<usize, AppError> {
    raw.trim()
        .parse::<usize>()
        .ok()
        .filter(|v| (min..=max).contains(v))
        .ok_or_else(|| AppError::Usage(format!("{flag} expects {min}..={max}, got {raw:?}")))
}

fn seconds(flag: &str, raw: &str) -> Result<Duration, AppError> {
    let (num, mult) = match raw.strip_suffix('m') {
        Some(n) => (n, 60.0),
        None => (raw.strip_suffix('s').unwrap_or(raw), 1.0),
    };
    let s = number(flag, num)? * mult;
    if s <= 0.0 {
        return Err(AppError::Usage(format!("{flag} must be above 0")));
    }
    Ok(Duration::from_secs_f64(s))
}

impl LoadtestOptions {
    pub fn parse(args: &[String]) -> Result<LoadtestOptions, AppError> {
        let flags = parse_flags(
            args,
            &[
                "--rate",
                "--nominal",
                "--load",
                "--md-rate",
                "--symbols",
                "--batch",
                "--batch-window-ms",
                "--shards",
                "--duration",
                "--masters",
                "--slaves",
                "--agents",
                "--agent-connections",
                "--heartbeat-ms",
                "--journal",
                "--pg-url",
                "--out",
                "--work-dir",
                "--settle-s",
            ],
            &["--check-kpis"],
        )?;
        let mut o = LoadtestOptions::default();
        let get = |k: &str| flags.get(k).map(String::as_str);
        if let (Some(r), Some(n)) = (get("--rate"), get("--nominal")) {
            if r != n {
                return Err(AppError::Usage(format!(
                    "--rate {r} and --nominal {n} name the same 100 % point; give one"
                )));
            }
        }
        if let Some(v) = get("--rate").or(get("--nominal")) {
            o.nominal = number("--rate", v)?;
        }
        if let Some(v) = get("--load") {
            o.load_pct = number("--load", v.strip_suffix('%').unwrap_or(v))?;
        }
        if let Some(v) = get("--md-rate") {
            o.md_nominal = number("--md-rate", v)?;
        }
        if let Some(v) = get("--symbols") {
            o.symbols = count("--symbols", v, 1, 100_000)?;
        }
        if let Some(v) = get("--batch") {
            o.batch = count("--batch", v, 1, 5_000)?;
        }
        if let Some(v) = get("--batch-window-ms") {
            o.batch_window =
                Duration::from_millis(count("--batch-window-ms", v, 1, 10_000)? as u64);
        }
        if let Some(v) = get("--shards") {
            o.shards = count("--shards", v, 1, 256)?;
        }
        if let Some(v) = get("--duration") {
            o.duration = seconds("--duration", v)?;
        }
        if let Some(v) = get("--masters") {
            o.masters = count("--masters", v, 1, 100)?;
        }
        if let Some(v) = get("--slaves") {
            o.slaves = count("--slaves", v, 1, 100)?;
        }
        if let Some(v) = get("--agents") {
            o.agents = count("--agents", v, 0, 50_000)?;
        }
        if let Some(v) = get("--agent-connections") {
            o.agent_connections = count("--agent-connections", v, 1, 10_000)?;
        }
        if let Some(v) = get("--heartbeat-ms") {
            o.heartbeat = Duration::from_millis(count("--heartbeat-ms", v, 10, 60_000)? as u64);
        }
        let admin_url = get("--pg-url")
            .unwrap_or("postgres://postgres@127.0.0.1:5432/postgres")
            .to_string();
        o.journal = match get("--journal").unwrap_or("sqlite") {
            "sqlite" => JournalChoice::Sqlite,
            "postgres" => JournalChoice::Postgres { admin_url },
            other => {
                return Err(AppError::Usage(format!(
                    "--journal postgres|sqlite, not {other:?}"
                )))
            }
        };
        if let Some(v) = get("--out") {
            o.out = PathBuf::from(v);
        }
        o.work_dir = get("--work-dir").map(PathBuf::from);
        if let Some(v) = get("--settle-s") {
            o.settle = seconds("--settle-s", v)?;
        }
        o.check_kpis = flags.contains_key("--check-kpis");
        if o.rate() < 0.1 {
            return Err(AppError::Usage(
                "the intent rate (--rate × --load) must be at least 0.1/s".into(),
            ));
        }
        Ok(o)
    }

    /// Intents/s over all masters at this load point.
    pub fn rate(&self) -> f64 {
        self.nominal * self.load_pct / 100.0
    }

    /// Connections the swarm spreads its agents over.
    pub fn connections(&self) -> usize {
        if self.agent_connections > 0 {
            self.agent_connections.min(self.agents.max(1))
        } else {
            self.agents.div_ceil(AGENTS_PER_CONNECTION).max(1)
        }
    }

    /// Market-data messages/s at this load point.
    pub fn md_rate(&self) -> f64 {
        self.md_nominal * self.load_pct / 100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<LoadtestOptions, AppError> {
        let args: Vec<String> = s.split_whitespace().map(String::from).collect();
        LoadtestOptions::parse(&args)
    }

    #[test]
    fn load_scales_both_rates() {
        let o = parse("--nominal 500 --load 120% --md-rate 1000 --duration 2m").expect("valid");
        assert!((o.rate() - 600.0).abs() < 1e-9);
        assert!((o.md_rate() - 1200.0).abs() < 1e-9);
        assert_eq!(o.duration, Duration::from_secs(120));
        assert!(parse("--rate 5 --nominal 6").is_err());
        assert!(parse("--journal mysql").is_err());
        assert!(parse("--batch 0").is_err());
        assert!(parse("--load -5").is_err());
        assert!(parse("--rate 0").is_err());
    }
}
