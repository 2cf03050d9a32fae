//! Observability endpoints: Prometheus `/metrics`, `/healthz` and `/readyz` for the core and
//! the agent, and the JSON log setup.
//!
//! Owns the rendering of the drivers' status snapshots in the BRIEF's metric names (see
//! `echo_statemachine::telemetry::METRICS`); no metric carries a `trade_id` label. It reads
//! snapshots published by the driver tasks (a `watch` channel), so scraping never touches a
//! machine. It must never decide anything.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::drivers::agent::AgentStatus;
use crate::drivers::core::CoreStatus;
use crate::link::server::LinkMetrics;

/// JSON logs on stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        b.json().flatten_event(true).try_init()
    } else {
        b.try_init()
    };
}

fn line(out: &mut String, name: &str, labels: &[(&str, &str)], value: u64) {
    line_of(out, name, labels, value);
}

fn line_of(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{v}\"");
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// The quantiles `echo_core_delivery_stage_latency_ms` reports; `1` is the exact maximum.
pub const STAGE_QUANTILES: &[(f64, &str)] = &[
    (0.5, "0.5"),
    (0.9, "0.9"),
    (0.99, "0.99"),
    (0.999, "0.999"),
    (1.0, "1"),
];

/// A sample line whose value is microseconds, written as milliseconds.
fn line_ms(out: &mut String, name: &str, labels: &[(&str, &str)], micros: u64) {
    let ms = format!("{}.{:03}", micros / 1_000, micros % 1_000);
    line_of(out, name, labels, ms);
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The core's `/metrics` text.
pub fn render_core(s: &CoreStatus, link: &LinkMetrics) -> String {
    let mut o = String::new();
    let m = &s.metrics;
    head(
        &mut o,
        "echo_core_router_queue_depth",
        "gauge",
        "intents a worker admitted and has not finished journaling",
    );
    for (w, d) in s.queue_depths.iter().enumerate() {
        line(
            &mut o,
            "echo_core_router_queue_depth",
            &[("worker_id", &w.to_string()), ("component", "core")],
            u64::from(*d),
        );
    }
    head(
        &mut o,
        "echo_core_router_dispatch_total",
        "counter",
        "intents a worker journaled",
    );
    for (w, n) in m.router_dispatch_total.iter().enumerate() {
        line(
            &mut o,
            "echo_core_router_dispatch_total",
            &[
                ("worker_id", &w.to_string()),
                ("result", "ok"),
                ("component", "core"),
            ],
            *n,
        );
    }
    head(
        &mut o,
        "echo_core_router_rejections_total",
        "counter",
        "intents refused because the worker queue was full",
    );
    for (w, n) in m.router_rejections_total.iter().enumerate() {
        line(
            &mut o,
            "echo_core_router_rejections_total",
            &[
                ("worker_id", &w.to_string()),
                ("reason", "queue_full"),
                ("component", "core"),
            ],
            *n,
        );
    }
    head(
        &mut o,
        "echo_core_router_dispatch_duration_ms",
        "summary",
        "admission to journaled",
    );
    line(
        &mut o,
        "echo_core_router_dispatch_duration_ms_sum",
        &[("component", "core")],
        m.router_dispatch_duration_ns_sum / 1_000_000,
    );
    line(
        &mut o,
        "echo_core_router_dispatch_duration_ms_count",
        &[("component", "core")],
        m.router_dispatch_duration_count,
    );
    head(
        &mut o,
        "echo_core_delivery_retry_total",
        "counter",
        "delivery re-sends after a timeout or a retryable failure",
    );
    for ((stage, result), n) in &m.delivery_retry_total {
        line(
            &mut o,
            "echo_core_delivery_retry_total",
            &[("stage", stage.name()), ("result", result)],
            *n,
        );
    }
    head(
        &mut o,
        "echo_core_delivery_pending_age_ms",
        "gauge",
        "age of the oldest unfinished delivery per stage",
    );
    for (stage, age) in &s.pending_age_ms {
        line(
            &mut o,
            "echo_core_delivery_pending_age_ms",
            &[("stage", stage)],
            *age,
        );
    }
    head(
        &mut o,
        "echo_core_delivery_compat_mode_total",
        "counter",
        "agents accepted in compat mode",
    );
    line(
        &mut o,
        "echo_core_delivery_compat_mode_total",
        &[],
        m.compat_mode_total,
    );
    head(
        &mut o,
        "echo_core_delivery_failed_total",
        "counter",
        "deliveries ended FAILED and intents not journaled, by reason",
    );
    for (reason, n) in &m.delivery_failed_by_reason {
        line(
            &mut o,
            "echo_core_delivery_failed_total",
            &[("reason", reason)],
            *n,
        );
    }
    head(
        &mut o,
        "echo_core_copy_skipped_total",
        "counter",
        "deliveries the copy policy did not make, by reason",
    );
    for (reason, n) in &m.copy_skipped_total {
        line(
            &mut o,
            "echo_core_copy_skipped_total",
            &[("reason", reason)],
            *n,
        );
    }
    head(
        &mut o,
        "echo_core_delivery_stage_latency_ms",
        "summary",
        "CORE_ACCEPTED to each later stage's ack at the core, deliveries accepted in this life",
    );
    for (stage, h) in &m.delivery_stage_latency_us {
        for (q, label) in STAGE_QUANTILES {
            line_ms(
                &mut o,
                "echo_core_delivery_stage_latency_ms",
                &[("stage", stage.name()), ("quantile", label)],
                h.quantile(*q),
            );
        }
        line_ms(
            &mut o,
            "echo_core_delivery_stage_latency_ms_sum",
            &[("stage", stage.name())],
            h.sum(),
        );
        line(
            &mut o,
            "echo_core_delivery_stage_latency_ms_count",
            &[("stage", stage.name())],
            h.count(),
        );
    }
    head(
        &mut o,
        "echo_core_deliveries_acked_total",
        "counter",
        "deliveries confirmed by the slave EA",
    );
    line(
        &mut o,
        "echo_core_deliveries_acked_total",
        &[],
        m.deliveries_acked_total,
    );
    head(
        &mut o,
        "echo_core_intents_accepted_total",
        "counter",
        "intents journaled (CORE_ACCEPTED)",
    );
    line(
        &mut o,
        "echo_core_intents_accepted_total",
        &[],
        m.intents_accepted_total,
    );
    head(
        &mut o,
        "echo_core_open_deliveries",
        "gauge",
        "deliveries not finished",
    );
    line(
        &mut o,
        "echo_core_open_deliveries",
        &[],
        s.open_deliveries as u64,
    );
    head(
        &mut o,
        "echo_core_deliveries_queued",
        "gauge",
        "deliveries waiting for a place in their agent's send window",
    );
    line(
        &mut o,
        "echo_core_deliveries_queued",
        &[],
        s.queued_deliveries as u64,
    );
    head(
        &mut o,
        "echo_core_backlog_rejections_total",
        "counter",
        "intents answered BROKER_BUSY because a slave's agent had a full backlog",
    );
    line(
        &mut o,
        "echo_core_backlog_rejections_total",
        &[],
        s.metrics.backlog_rejections_total,
    );
    head(
        &mut o,
        "echo_core_delivery_split_incomplete_total",
        "counter",
        "split positions a result left incomplete (some legs executed, not all)",
    );
    line(
        &mut o,
        "echo_core_delivery_split_incomplete_total",
        &[],
        s.metrics.split_incomplete_total,
    );
    head(
        &mut o,
        "echo_core_agents_connected",
        "gauge",
        "agent streams open",
    );
    line(
        &mut o,
        "echo_core_agents_connected",
        &[],
        s.agents_connected as u64,
    );
    head(
        &mut o,
        "echo_core_link_refused_total",
        "counter",
        "agent connections refused, by reason",
    );
    for (reason, n) in link.refusals() {
        line(
            &mut o,
            "echo_core_link_refused_total",
            &[("reason", reason)],
            n,
        );
    }
    head(
        &mut o,
        "echo_core_link_wire_errors_total",
        "counter",
        "malformed messages on agent streams",
    );
    line(
        &mut o,
        "echo_core_link_wire_errors_total",
        &[],
        link.wire_errors.load(Ordering::Relaxed),
    );
    head(
        &mut o,
        "echo_core_link_slow_agents_cut_total",
        "counter",
        "agent streams cut because the agent did not read",
    );
    line(
        &mut o,
        "echo_core_link_slow_agents_cut_total",
        &[],
        s.slow_agents_cut,
    );
    head(
        &mut o,
        "echo_core_link_hello_missing_total",
        "counter",
        "agent streams closed because their first message was not an AgentHello (or none came)",
    );
    line(
        &mut o,
        "echo_core_link_hello_missing_total",
        &[],
        link.hello_missing.load(Ordering::Relaxed),
    );
    head(
        &mut o,
        "echo_core_link_market_data_dropped_total",
        "counter",
        "market data from agents dropped: the core does not route it",
    );
    line(
        &mut o,
        "echo_core_link_market_data_dropped_total",
        &[],
        link.market_data_dropped.load(Ordering::Relaxed),
    );
    o
}

/// The agent's `/metrics` text.
pub fn render_agent(s: &AgentStatus) -> String {
    let mut o = String::new();
    let m = &s.metrics;
    head(
        &mut o,
        "echo_agent_pipe_retry_total",
        "counter",
        "agent pipe re-writes",
    );
    line(
        &mut o,
        "echo_agent_pipe_retry_total",
        &[("result", "failed")],
        m.pipe_retry_total,
    );
    line(
        &mut o,
        "echo_agent_pipe_retry_total",
        &[("result", "unavailable")],
        m.pipe_unavailable_total,
    );
    head(
        &mut o,
        "echo_agent_pipe_delivery_latency_ms",
        "summary",
        "pipe write to PipeDeliveryAck OK",
    );
    line(
        &mut o,
        "echo_agent_pipe_delivery_latency_ms_sum",
        &[],
        m.pipe_delivery_latency_sum_ms,
    );
    line(
        &mut o,
        "echo_agent_pipe_delivery_latency_ms_count",
        &[],
        m.pipe_delivery_latency_count,
    );
    head(
        &mut o,
        "echo_agent_commands_buffered_total",
        "counter",
        "commands durably buffered (AGENT_BUFFERED)",
    );
    line(
        &mut o,
        "echo_agent_commands_buffered_total",
        &[],
        m.commands_buffered,
    );
    head(
        &mut o,
        "echo_agent_intents_forwarded_total",
        "counter",
        "master intents sent to the core",
    );
    line(
        &mut o,
        "echo_agent_intents_forwarded_total",
        &[],
        m.intents_forwarded,
    );
    head(
        &mut o,
        "echo_agent_ledger_entries",
        "gauge",
        "records in the agent ledger",
    );
    line(
        &mut o,
        "echo_agent_ledger_entries",
        &[],
        s.ledger_len as u64,
    );
    head(
        &mut o,
        "echo_agent_pipe_queued",
        "gauge",
        "durable commands waiting for a place in their slave's pipe window",
    );
    line(&mut o, "echo_agent_pipe_queued", &[], s.pipe_queued as u64);
    head(
        &mut o,
        "echo_agent_link_online",
        "gauge",
        "1 when the core link is online",
    );
    line(
        &mut o,
        "echo_agent_link_online",
        &[],
        u64::from(s.link_online),
    );
    head(
        &mut o,
        "echo_agent_delivery_config_version",
        "gauge",
        "config_version of the last delivery config from the core the agent applied (0: none yet)",
    );
    line(
        &mut o,
        "echo_agent_delivery_config_version",
        &[],
        s.config_version,
    );
    o
}

/// What an HTTP endpoint serves, refreshed from a driver's snapshot.
pub trait Observed: Send + Sync + 'static {
    fn metrics(&self) -> String;
    /// `Ok` when the process can do its job now; `Err(why)` otherwise.
    fn ready(&self) -> Result<(), String>;
}

pub struct CoreObserved {
    pub status: watch::Receiver<Arc<CoreStatus>>,
    pub link: Arc<LinkMetrics>,
}

impl Observed for CoreObserved {
    fn metrics(&self) -> String {
        render_core(&self.status.borrow(), &self.link)
    }
    fn ready(&self) -> Result<(), String> {
        if self.status.borrow().journal_down {
            Err("journal down: fan-out stopped".into())
        } else {
            Ok(())
        }
    }
}

pub struct AgentObserved {
    pub status: watch::Receiver<Arc<AgentStatus>>,
}

impl Observed for AgentObserved {
    fn metrics(&self) -> String {
        render_agent(&self.status.borrow())
    }
    fn ready(&self) -> Result<(), String> {
        if self.status.borrow().link_online {
            Ok(())
        } else {
            Err("core link not online".into())
        }
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until the task is dropped.
pub async fn serve_http(listener: TcpListener, observed: Arc<dyn Observed>) -> std::io::Result<()> {
    let m = observed.clone();
    let r = observed.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move { m.metrics() }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let r = r.clone();
                async move {
                    match r.ready() {
                        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
                        Err(why) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {why}\n"),
                        ),
                    }
                }
            }),
        );
    axum::serve(listener, app).await
}

/// Binds `addr` and serves in the background; returns the bound address.
pub async fn spawn_http(
    addr: SocketAddr,
    observed: Arc<dyn Observed>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = serve_http(listener, observed).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use echo_statemachine::telemetry::METRICS;

    #[test]
    fn every_core_and_agent_metric_of_the_spec_is_exported_without_trade_labels() {
        let mut core = CoreStatus {
            queue_depths: vec![0; 2],
            ..Default::default()
        };
        core.metrics.router_dispatch_total = vec![1, 2];
        core.metrics.router_rejections_total = vec![0, 3];
        core.metrics.delivery_retry_total.insert(
            (echo_statemachine::msg::AckStage::AgentBuffered, "timeout"),
            4,
        );
        core.pending_age_ms.insert("AGENT_BUFFERED", 12);
        core.metrics
            .delivery_failed_by_reason
            .insert("SPLIT_INCOMPLETE", 2);
        core.metrics.split_incomplete_total = 3;
        core.metrics.backlog_rejections_total = 4;
        core.queued_deliveries = 7;
        let agent = AgentStatus {
            pipe_queued: 5,
            ..AgentStatus::default()
        };
        let text = render_core(&core, &LinkMetrics::default()) + &render_agent(&agent);
        for spec in METRICS.iter().filter(|m| !m.name.starts_with("echo_ea_")) {
            assert!(
                text.contains(&format!("# TYPE {} ", spec.name)),
                "{} is in SPEC but not exported",
                spec.name
            );
        }
        assert!(!text.contains("trade_id"));
        assert!(text.contains("echo_core_router_rejections_total{worker_id=\"1\",reason=\"queue_full\",component=\"core\"} 3"));
        assert!(text.contains("echo_core_delivery_pending_age_ms{stage=\"AGENT_BUFFERED\"} 12"));
        assert!(text.contains("echo_core_delivery_failed_total{reason=\"SPLIT_INCOMPLETE\"} 2"));
        assert!(text.contains("echo_core_delivery_split_incomplete_total 3"));
        assert!(text.contains("echo_core_backlog_rejections_total 4"));
        assert!(text.contains("echo_core_deliveries_queued 7"));
        assert!(text.contains("echo_agent_pipe_queued 5"));
    }

    #[test]
    fn stage_latencies_are_exported_in_milliseconds_with_the_exact_maximum() {
        let mut core = CoreStatus::default();
        let mut h = echo_statemachine::histogram::Histogram::default();
        for us in [900, 1_500, 2_750] {
            h.record(us);
        }
        core.metrics
            .delivery_stage_latency_us
            .insert(echo_statemachine::msg::AckStage::EaConfirmed, h);
        let text = render_core(&core, &LinkMetrics::default());
        let at = |q: &str| {
            let key = format!(
                "echo_core_delivery_stage_latency_ms{{stage=\"EA_CONFIRMED\",quantile=\"{q}\"}} "
            );
            let v = text
                .lines()
                .find_map(|l| l.strip_prefix(key.as_str()))
                .unwrap_or_else(|| panic!("no {key} in {text}"));
            v.parse::<f64>().expect("a number")
        };
        assert_eq!(at("1"), 2.75);
        assert!(
            (1.5..=1.5 * 1.125).contains(&at("0.5")),
            "p50 {}",
            at("0.5")
        );
        assert!(
            text.contains("echo_core_delivery_stage_latency_ms_count{stage=\"EA_CONFIRMED\"} 3")
        );
        assert!(
            text.contains("echo_core_delivery_stage_latency_ms_sum{stage=\"EA_CONFIRMED\"} 5.150")
        );
    }
}
