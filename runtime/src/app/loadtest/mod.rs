//! `echo loadtest`: Echo measuring itself under a given load, as real processes.
//!
//! Starts a [`Cluster`] (core with the SQLite or Postgres journal, two agents, M master and K
//! slave reference terminals over mutual-TLS gRPC and Unix sockets), a market-data feed through
//! the runtime's [`MarketDataPath`](crate::marketdata) with a runtime-lag probe beside it, and
//! optionally a swarm of extra agents; drives the load for `--duration`, waits for every
//! delivery to settle, then counts lost and duplicated copies from the terminals' durable files
//! ([`account`](super::cluster::account)) and writes `metrics.json` (SPEC.md §10.8) and `report.html`.
//!
//! It owns orchestration and measurement; it must never decide anything about a trade, and
//! never take a figure about correctness from what the system says about itself.

pub mod feed;
pub mod kpi;
pub mod lag;
pub mod metrics;
pub mod options;
pub mod procstat;
pub mod progress;
pub mod report;
pub mod stages;
pub mod swarm;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::cluster::{
    Cluster, ClusterOptions, DemoReport, JournalSpec, Timings, INTENTS_PER_TRADE,
};
use super::AppError;
use crate::config::hash_token;
use crate::histogram::Histogram;
use crate::marketdata::{MarketDataPath, PathConfig};
use options::{JournalChoice, LoadtestOptions};

pub use options::USAGE;

/// `YYYYMMDDTHHMMSSZ` of a UTC time (days-from-civil, no calendar crate).
pub fn utc_stamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

pub(crate) fn wall_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

pub(crate) fn with_db(url: &str, db: &str) -> String {
    let base = url.rsplit_once('/').map(|(b, _)| b).unwrap_or(url);
    format!("{base}/{db}")
}

pub(crate) async fn pg_admin(admin_url: &str, sql: &str) -> Result<(), AppError> {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(admin_url)
        .await
        .map_err(|e| AppError::Usage(format!("Postgres at {admin_url}: {e}")))?;
    sqlx::query(sql)
        .execute(&mut c)
        .await
        .map_err(|e| AppError::Usage(format!("Postgres: {sql}: {e}")))?;
    let _ = c.close().await;
    Ok(())
}

/// What the run is: the load point turned into terminal settings.
struct Plan {
    per_master: u64,
    trades: u64,
    concurrent: u32,
}

fn plan(o: &LoadtestOptions) -> Plan {
    let per_master = (o.rate() / o.masters as f64).round().max(1.0) as u64;
    let trades = ((per_master as f64 * o.duration.as_secs_f64()) / INTENTS_PER_TRADE as f64)
        .ceil()
        .max(1.0) as u64;
    // Each trade's intents go one after the other (the next after CORE_ACCEPTED of the
    // previous); enough trades open at once that a ~20 ms chain never caps the rate.
    let concurrent = (per_master / 5).clamp(4, 2_048) as u32;
    Plan {
        per_master,
        trades,
        concurrent,
    }
}

/// Runs the load test; `Ok(true)` when nothing was lost or duplicated, everything settled
/// and (with `--check-kpis`) every KPI held.
pub fn run(o: LoadtestOptions) -> Result<bool, AppError> {
    let exe = std::env::current_exe().map_err(AppError::io("locating the echo binary"))?;
    let started = SystemTime::now();
    let stamp = utc_stamp(started);
    let out_dir = o.out.join(&stamp);
    std::fs::create_dir_all(&out_dir)
        .map_err(AppError::io(format!("creating {}", out_dir.display())))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(AppError::io("starting the tokio runtime"))?;
    let nonce = format!(
        "{}{}",
        std::process::id(),
        started
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    );
    let (journal, pg_db) = match &o.journal {
        JournalChoice::Sqlite => (JournalSpec::Sqlite, None),
        JournalChoice::Postgres { admin_url } => {
            let db = format!("echo_loadtest_{nonce}");
            rt.block_on(pg_admin(admin_url, &format!("CREATE DATABASE {db}")))?;
            (
                JournalSpec::Postgres(with_db(admin_url, &db)),
                Some((admin_url.clone(), db)),
            )
        }
    };
    let result = run_cluster(&o, &rt, exe, journal, &nonce, &stamp, &out_dir);
    if let Some((admin, db)) = pg_db {
        let _ = rt.block_on(pg_admin(
            &admin,
            &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
        ));
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn run_cluster(
    o: &LoadtestOptions,
    rt: &tokio::runtime::Runtime,
    exe: PathBuf,
    journal: JournalSpec,
    nonce: &str,
    stamp: &str,
    out_dir: &Path,
) -> Result<bool, AppError> {
    let p = plan(o);
    let load_start = loadavg();
    let temp = o.work_dir.is_none();
    let work = o
        .work_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("echo-loadtest-{nonce}")));
    let extra_agents: Vec<(String, String)> = (0..o.agents)
        .map(|i| {
            let (id, token) = swarm::agent(i, nonce);
            (id, hash_token(&token))
        })
        .collect();
    eprintln!(
        "loadtest: {:.1} intents/s ({} per master × {}), {} slaves, {:.0} md msgs/s, {} s, journal {}, work dir {}",
        p.per_master as f64 * o.masters as f64,
        p.per_master,
        o.masters,
        o.slaves,
        o.md_rate(),
        o.duration.as_secs_f64(),
        match &journal {
            JournalSpec::Sqlite => "sqlite",
            JournalSpec::Postgres(_) => "postgres",
        },
        work.display()
    );
    let mut cluster = Cluster::start(ClusterOptions {
        exe,
        dir: work.clone(),
        masters: o.masters,
        slaves: o.slaves,
        trades: p.trades,
        rate: p.per_master,
        journal,
        timings: Timings::default(),
        concurrent: p.concurrent,
        extra_agents,
        copy_policies: false,
        hold_masters: true,
    })?;
    // The swarm has a runtime of its own, so its thousands of streams do not show up as lag
    // of the market-data path's runtime.
    let swarm_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(AppError::io("starting the swarm's runtime"))?;
    let mut swarm_info = json!({"requested": o.agents});
    let swarm = if o.agents > 0 {
        // Give the core a moment to listen before thousands of hellos arrive.
        std::thread::sleep(Duration::from_millis(500));
        let s = swarm_rt.block_on(swarm::Swarm::connect(
            &cluster.link_endpoint(),
            cluster.pki(),
            o.agents,
            o.connections(),
            nonce,
        ))?;
        eprintln!(
            "loadtest: {} agent streams opened in {:.1} s",
            s.counters.streams_open.load(Ordering::Relaxed),
            s.connect_s
        );
        Some(Arc::new(s))
    } else {
        None
    };
    cluster.start_masters()?;
    let t0 = Instant::now();
    let t0_us = wall_us();
    let _enter = rt.enter();
    let probe = lag::start();
    let feed_counters = Arc::new(feed::FeedCounters::default());
    let (path, workers) = MarketDataPath::start(
        PathConfig {
            shards: o.shards,
            batch_max: o.batch,
            batch_window: o.batch_window,
            ..PathConfig::default()
        },
        feed::sink(feed_counters.clone()),
    );
    let waits = path.clone();
    let feed_task = rt.spawn(feed::run(
        path,
        o.md_rate(),
        o.symbols,
        o.duration,
        feed_counters.clone(),
    ));
    let hb_started = Instant::now();
    let hb_task = swarm.clone().map(|s| {
        let (every, until) = (o.heartbeat, Instant::now() + o.duration);
        swarm_rt.spawn(async move { s.heartbeat(every, until).await })
    });
    let term_dir = work.join("terminals");
    let mut stages = stages::Stages::new(
        cluster
            .master_files()
            .iter()
            .map(|(_, f)| f.clone())
            .collect(),
        cluster
            .slave_files()
            .iter()
            .map(|(s, b)| (term_dir.join(format!("{s}.commands.jsonl")), b.clone()))
            .collect(),
        t0_us,
    );
    let mut sampler = procstat::ProcSampler::default();
    let mut progress = progress::Progress::new(o.duration);
    let (mut last_emitted, mut last_fills, mut last_md, mut last_hb) = (0, 0, 0, 0);
    let mut agents_connected_peak = 0;
    let mut crashed = None;
    let settle_deadline = t0 + o.duration + o.settle;
    let mut settled = false;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        stages.poll();
        let mut pids = cluster.pids();
        pids.push(("loadtest".into(), std::process::id()));
        sampler.sample(&pids);
        let now_us = wall_us();
        let md = feed_counters.delivered.load(Ordering::Relaxed);
        let hb = swarm
            .as_ref()
            .map(|s| s.counters.heartbeats_sent.load(Ordering::Relaxed))
            .unwrap_or(0);
        let depth: usize = workers.stats().iter().map(|s| s.take_depth_peak()).sum();
        let lag_max = lag::take_window_max(&probe);
        {
            let sec = stages.second(now_us - 1);
            sec.md_depth_peak = sec.md_depth_peak.max(depth);
            sec.md_delivered += md - last_md;
            sec.lag_max_us = sec.lag_max_us.max(lag_max);
            sec.agents_heartbeats += hb - last_hb;
        }
        if o.agents > 0 {
            if let Some(n) = cluster.core_metric("echo_core_agents_connected") {
                agents_connected_peak = agents_connected_peak.max(n);
            }
        }
        let load_over = t0.elapsed() >= o.duration
            && feed_task.is_finished()
            && hb_task.as_ref().is_none_or(|h| h.is_finished());
        let phase = if load_over { "settling" } else { "load" };
        progress.show(&progress::Line {
            phase,
            elapsed: t0.elapsed(),
            emitted_per_s: stages.emitted - last_emitted,
            fills_per_s: stages.executed - last_fills,
            p99_ms: stages.end_to_end.quantile(0.99) as f64 / 1000.0,
            in_flight: stages.in_flight(),
            md_per_s: md - last_md,
            note: "",
        });
        (last_emitted, last_fills, last_md, last_hb) = (stages.emitted, stages.executed, md, hb);
        if let Some(c) = cluster.crashed() {
            crashed = Some(c);
            break;
        }
        if load_over && cluster.settled() {
            settled = true;
            break;
        }
        if Instant::now() >= settle_deadline {
            break;
        }
    }
    progress.finish();
    stages.poll();
    let at_core = metrics::stages_at_core(cluster.core_metrics_text().as_deref());
    let hb_window = hb_started.elapsed().min(o.duration).as_secs_f64();
    if let Some(s) = &swarm {
        let c = &s.counters;
        let sent = c.heartbeats_sent.load(Ordering::Relaxed);
        swarm_info = json!({
            "requested": o.agents,
            "connections": o.connections(),
            "streams_opened": c.streams_open.load(Ordering::Relaxed),
            "hellos_accepted": c.accepted.load(Ordering::Relaxed),
            "connect_errors": c.connect_errors.load(Ordering::Relaxed),
            "core_agents_connected_peak": agents_connected_peak,
            "connect_s": (s.connect_s * 10.0).round() / 10.0,
            "heartbeat_interval_ms": o.heartbeat.as_millis() as u64,
            "heartbeats_sent": sent,
            "heartbeats_per_s": (sent as f64 / hb_window.max(1e-9)).round(),
            "heartbeats_blocked": c.heartbeats_blocked.load(Ordering::Relaxed),
            "core_messages_received": c.inbound.load(Ordering::Relaxed),
        });
    }
    drop(swarm);
    let _ = rt.block_on(feed_task);
    let producer_waits = waits.producer_waits();
    drop(waits);
    let shard_stats: Vec<_> = workers.stats().to_vec();
    let machine = rt.block_on(workers.join());
    let lag_run = lag::run_histogram(&probe);
    drop(probe);
    let mut rep = cluster.report()?;
    // A copy missing from an unsettled run may still be on its way: unsettled, not lost.
    let unsettled = split_unsettled(&mut rep, settled);
    let load_end = loadavg();

    // Market data, per shard and in all.
    let mut qt_all = Histogram::default();
    let mut depth_peak = 0;
    let mut worker_rows = Vec::new();
    for (st, m) in shard_stats.iter().zip(&machine) {
        let qt = st.queue_time();
        qt_all.merge(&qt);
        depth_peak = depth_peak.max(st.depth_peak());
        worker_rows.push(json!({
            "name": format!("md-shard-{}", st.shard),
            "queue_time_mean_ms": metrics::millis(qt.mean() as u64),
            "queue_time_p95_ms": metrics::millis(qt.quantile(0.95)),
            "queue_depth_peak": st.depth_peak(),
            "batches": st.batches.load(Ordering::Relaxed),
            "messages": st.messages.load(Ordering::Relaxed),
            "coalesced": m.coalesced,
            "stale_dropped": m.stale_dropped,
            "delivered": m.delivered_ticks + m.delivered_critical,
            "refused": st.refused.load(Ordering::Relaxed),
        }));
    }
    let sum = |f: fn(&echo_statemachine::marketdata::MarketDataMetrics) -> u64| -> u64 {
        machine.iter().map(f).sum()
    };
    let stale = sum(|m| m.stale_dropped);
    let kpis = kpi::judge(
        metrics::millis(lag_run.quantile(0.95)),
        metrics::millis(qt_all.mean() as u64),
        depth_peak,
        stale,
    );
    let failed_copies: u64 = rep.failed.values().sum();
    let processes: Vec<Value> = sampler
        .usage
        .iter()
        .map(|(name, u)| {
            json!({
                "name": name,
                "rss_peak_mb": (u.rss_peak_kb as f64 / 102.4).round() / 10.0,
                "rss_last_mb": (u.rss_last_kb as f64 / 102.4).round() / 10.0,
                "rss_first_mb": (u.rss_series_kb.first().copied().unwrap_or(0) as f64 / 102.4).round() / 10.0,
                "cpu_s": (u.cpu_s * 100.0).round() / 100.0,
                "cpu_pct": (u.cpu_s / t0.elapsed().as_secs_f64() * 1000.0).round() / 10.0,
            })
        })
        .collect();
    let timeline: Vec<Value> = stages
        .timeline
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({
                "t_s": i,
                "emitted": s.emitted,
                "accepted": s.accepted,
                "executed": s.executed,
                "e2e_p50_ms": metrics::millis(s.end_to_end.quantile(0.5)),
                "e2e_p99_ms": metrics::millis(s.end_to_end.quantile(0.99)),
                "md_depth_peak": s.md_depth_peak,
                "md_delivered": s.md_delivered,
                "lag_max_ms": metrics::millis(s.lag_max_us),
                "heartbeats": s.agents_heartbeats,
            })
        })
        .collect();
    let doc = json!({
        "schema": metrics::SCHEMA,
        "started_at": stamp,
        "machine": {
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "loadavg_start": load_start,
            "loadavg_end": load_end,
        },
        "config": {
            "rate": p.per_master * o.masters as u64,
            "nominal": o.nominal,
            "load_pct": o.load_pct,
            "md_rate": o.md_rate(),
            "duration_s": o.duration.as_secs_f64(),
            "symbols": o.symbols,
            "batch": o.batch,
            "batch_window_ms": o.batch_window.as_millis() as u64,
            "shards": o.shards,
            "masters": o.masters,
            "slaves": o.slaves,
            "agents": o.agents,
            "journal": match &o.journal { JournalChoice::Sqlite => "sqlite", JournalChoice::Postgres { .. } => "postgres" },
            "trades_per_master": p.trades,
            "concurrent_trades": p.concurrent,
        },
        "intents": {
            "emitted": rep.emitted,
            "confirmed": rep.core_accepted,
            "failed": rep.master_refused,
            "lost": rep.lost.len(),
            "unsettled": unsettled.len(),
            "duplicated": rep.duplicated.len(),
            "out_of_order": rep.out_of_order.len(),
            "expected_copies": rep.expected_deliveries,
            "copies_filled": rep.confirmed.values().sum::<u64>(),
            "copies_failed": failed_copies,
            "copies_broker_rejected": rep.broker_rejected,
            "settled": settled,
            "crashed": crashed.as_ref().map(|(n, c)| format!("{n} exited with {c}")),
            "lost_sample": rep.lost.iter().take(10).collect::<Vec<_>>(),
            "unsettled_sample": unsettled.iter().take(10).collect::<Vec<_>>(),
            "duplicated_sample": rep.duplicated.iter().take(10).collect::<Vec<_>>(),
        },
        "latency_ms": {
            "core_accepted": metrics::summary(&stages.core_accepted),
            "pipe_delivered": metrics::summary(&stages.pipe_delivered),
            "journal_to_slave": metrics::summary(&stages.journal_to_slave),
            "end_to_end": metrics::summary(&stages.end_to_end),
            "at_core": at_core,
        },
        "runtime_lag_ms": {
            "p50": metrics::millis(lag_run.quantile(0.5)),
            "p95": metrics::millis(lag_run.quantile(0.95)),
            "p99": metrics::millis(lag_run.quantile(0.99)),
            "max": metrics::millis(lag_run.max()),
            "samples": lag_run.count(),
            "tick_ms": lag::TICK.as_millis() as u64,
        },
        "workers": worker_rows,
        "market_data": {
            "offered": feed_counters.offered.load(Ordering::Relaxed),
            "delivered": feed_counters.delivered.load(Ordering::Relaxed),
            "coalesced": sum(|m| m.coalesced),
            "stale_dropped": stale,
            "routing_dropped": sum(|m| m.routing_dropped),
            "critical_offered": feed_counters.offered_critical.load(Ordering::Relaxed),
            "critical_delivered": feed_counters.delivered_critical.load(Ordering::Relaxed),
            "producer_waits": producer_waits,
            "pressured": feed_counters.pressured.load(Ordering::Relaxed),
            "queue_time_mean_ms": metrics::millis(qt_all.mean() as u64),
            "queue_time_p95_ms": metrics::millis(qt_all.quantile(0.95)),
            "queue_depth_peak": depth_peak,
        },
        "processes": processes,
        "agents": swarm_info,
        "kpis": kpis,
        "timeline": timeline,
    });
    let problems = metrics::check(&doc);
    if !problems.is_empty() {
        return Err(AppError::Usage(format!(
            "metrics.json would not follow its schema: {}",
            problems.join("; ")
        )));
    }
    let text = serde_json::to_string_pretty(&doc).map_err(|e| AppError::Usage(e.to_string()))?;
    std::fs::write(out_dir.join("metrics.json"), text + "\n")
        .map_err(AppError::io("writing metrics.json"))?;
    std::fs::write(out_dir.join("report.html"), report::render(&doc))
        .map_err(AppError::io("writing report.html"))?;
    println!("{rep}");
    if !settled {
        println!(
            "unsettled:               {} (copies still in flight when the run ended; not counted lost)",
            unsettled.len()
        );
        for u in unsettled.iter().take(10) {
            println!("  unsettled {u}");
        }
    }
    println!(
        "latency core_accepted p50 {} / p99 {} ms; pipe_delivered p50 {} / p99 {} ms; journal→slave p50 {} / p99 {} ms; end to end p50 {} / p99 {} / p99.9 {} ms",
        doc["latency_ms"]["core_accepted"]["p50"],
        doc["latency_ms"]["core_accepted"]["p99"],
        doc["latency_ms"]["pipe_delivered"]["p50"],
        doc["latency_ms"]["pipe_delivered"]["p99"],
        doc["latency_ms"]["journal_to_slave"]["p50"],
        doc["latency_ms"]["journal_to_slave"]["p99"],
        doc["latency_ms"]["end_to_end"]["p50"],
        doc["latency_ms"]["end_to_end"]["p99"],
        doc["latency_ms"]["end_to_end"]["p999"],
    );
    for k in &kpis {
        println!(
            "KPI {:<18} {:>10} {:<8} limit {:<6} {}",
            k.name,
            k.value,
            k.unit,
            k.limit,
            if k.ok { "ok" } else { "MISSED" }
        );
    }
    if o.agents > 0 {
        println!("agents: {}", doc["agents"]);
    }
    println!("wrote {}/metrics.json and report.html", out_dir.display());
    if let Some((n, c)) = &crashed {
        eprintln!(
            "loadtest: {n} exited by itself with code {c}; see {}",
            work.display()
        );
    } else if !settled {
        eprintln!(
            "loadtest: deliveries did not settle within {} s after the load",
            o.settle.as_secs()
        );
    }
    if temp && settled && crashed.is_none() {
        let _ = std::fs::remove_dir_all(&work);
    }
    let kpis_ok = !o.check_kpis || kpis.iter().all(|k| k.ok);
    Ok(rep.is_clean() && settled && crashed.is_none() && kpis_ok)
}

/// The copies neither executed nor failed: lost when the run settled (the core had nothing in
/// flight, so nothing more can come), unsettled otherwise (they may still be delivered). Moves
/// them out of `rep.lost` in the second case and returns them.
pub fn split_unsettled(rep: &mut DemoReport, settled: bool) -> Vec<String> {
    if settled {
        Vec::new()
    } else {
        std::mem::take(&mut rep.lost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101T000000Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_796_288_461);
        assert_eq!(utc_stamp(t), "20261203T090101Z");
    }

    fn report_missing(ids: &[&str]) -> DemoReport {
        DemoReport {
            lost: ids.iter().map(|s| s.to_string()).collect(),
            ..DemoReport::default()
        }
    }

    /// A run that did not settle reports its missing copies as unsettled, never as lost; a
    /// settled run's missing copies are lost.
    #[test]
    fn missing_copies_are_unsettled_unless_the_run_settled() {
        let mut rep = report_missing(&["i1 (t) at s1", "i2 (t) at s2"]);
        let unsettled = split_unsettled(&mut rep, false);
        assert_eq!(unsettled, vec!["i1 (t) at s1", "i2 (t) at s2"]);
        assert!(rep.lost.is_empty(), "an unsettled run names nothing lost");

        let mut rep = report_missing(&["i3 (t) at s1"]);
        let unsettled = split_unsettled(&mut rep, true);
        assert!(unsettled.is_empty());
        assert_eq!(
            rep.lost,
            vec!["i3 (t) at s1"],
            "a settled run's missing copy is lost"
        );
    }
}
