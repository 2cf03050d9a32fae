//! The names Echo reports under: metrics, spans and log events, with their labels.
//!
//! The runtime exports these and SPEC.md lists them; both read this one table, and
//! `tests/spec_sync.rs` fails if SPEC.md drifts from it. This module must never list
//! `trade_id` (or any unbounded value) as a metric label.

/// A metric: name, kind, labels, meaning.
#[derive(Clone, Copy, Debug)]
pub struct MetricSpec {
    pub name: &'static str,
    pub kind: &'static str,
    pub labels: &'static [&'static str],
    pub doc: &'static str,
}

const fn m(
    name: &'static str,
    kind: &'static str,
    labels: &'static [&'static str],
    doc: &'static str,
) -> MetricSpec {
    MetricSpec {
        name,
        kind,
        labels,
        doc,
    }
}

pub const METRICS: &[MetricSpec] = &[
    m(
        "echo_core_router_queue_depth",
        "gauge",
        &["worker_id", "component"],
        "intents a worker admitted and has not finished journaling",
    ),
    m(
        "echo_core_router_dispatch_total",
        "counter",
        &["worker_id", "result", "component"],
        "intents a worker journaled (result=ok; CoreMetrics::router_dispatch_total)",
    ),
    m(
        "echo_core_router_dispatch_duration_ms",
        "histogram",
        &["worker_id", "component"],
        "admission → journaled (enqueue → dispatch)",
    ),
    m(
        "echo_core_router_rejections_total",
        "counter",
        &["worker_id", "reason", "component"],
        "intents refused because the worker queue was full (reason=queue_full; CoreMetrics::router_rejections_total)",
    ),
    m(
        "echo_core_delivery_retry_total",
        "counter",
        &["stage", "result"],
        "delivery re-sends after a timeout or a retryable failure",
    ),
    m(
        "echo_core_delivery_pending_age_ms",
        "gauge",
        &["stage"],
        "age of the oldest unfinished delivery per stage, ms: the core runtime samples Core::delivery_views every 500 ms and ages each command from the first sample that saw it in this process (ages restart with the core)",
    ),
    m(
        "echo_core_delivery_compat_mode_total",
        "counter",
        &[],
        "agents accepted in compat mode (legacy peers)",
    ),
    m(
        "echo_core_delivery_failed_total",
        "counter",
        &["reason"],
        "deliveries ended FAILED, and intents refused for an unavailable journal, by ErrorCode without its ERROR_CODE_ prefix (MAX_RETRIES, BROKER_REJECTED, SPLIT_INCOMPLETE, a copy-policy reason, …); no series until the first",
    ),
    m(
        "echo_core_delivery_stage_latency_ms",
        "summary",
        &["stage", "quantile"],
        "CORE_ACCEPTED (the journal accept reaching the core) to each later stage's ack (AGENT_BUFFERED, PIPE_DELIVERED) or the ExecutionResult (EA_CONFIRMED) reaching the core, ms, for deliveries accepted in this core's life; quantiles 0.5/0.9/0.99/0.999 are bucket upper edges (at most 12.5 % high), 1 is the exact maximum; over the core's life, not a sliding window",
    ),
    m(
        "echo_core_copy_skipped_total",
        "counter",
        &["reason"],
        "deliveries the subscription's copy policy did not make, by reason (SPEC.md §5.2; also counted in echo_core_delivery_failed_total)",
    ),
    m(
        "echo_agent_pipe_retry_total",
        "counter",
        &["result"],
        "agent pipe re-writes",
    ),
    m(
        "echo_agent_pipe_delivery_latency_ms",
        "histogram",
        &[],
        "agent: pipe write → PipeDeliveryAck OK",
    ),
    m(
        "echo_ea_trade_intent_buffer_depth",
        "gauge",
        &["account"],
        "intents in a master EA's IntentQueue not yet acknowledged",
    ),
];

/// Tracing spans: name and meaning.
pub const SPANS: &[(&str, &str)] = &[
    ("core.router.schedule", "hashing a trade to its worker and admitting it (attributes worker_id, trade_id)"),
    ("core.router.worker", "one worker journaling an intent and fanning it out (attributes worker_id, trade_id, result)"),
];

/// Structured log events: name and when.
pub const LOG_EVENTS: &[(&str, &str)] = &[
    (
        "core.router.enqueue",
        "an intent admitted to a worker, or refused with backpressure=true",
    ),
    ("core.router.dispatch", "an intent journaled and fanned out"),
    (
        "core_delivery_failed",
        "an intent could not be journaled, or a delivery ended FAILED (with reason)",
    ),
    (
        "core.journal.down",
        "the journal stayed down past max_retries: fan-out stopped",
    ),
    (
        "core.journal.up",
        "the journal answers again: fan-out resumed",
    ),
    (
        "core.agent.offline",
        "an agent missed 3 heartbeats or its stream ended",
    ),
    (
        "core.protocol_violation",
        "a message the sender's state does not allow (logged, dropped)",
    ),
];

/// Renders the telemetry section of SPEC.md.
pub fn render_markdown() -> String {
    let mut out = String::from("| metric | kind | labels | meaning |\n|---|---|---|---|\n");
    for x in METRICS {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            x.name,
            x.kind,
            x.labels
                .iter()
                .map(|l| format!("`{l}`"))
                .collect::<Vec<_>>()
                .join(", "),
            x.doc
        ));
    }
    out.push_str("\n| span | meaning |\n|---|---|\n");
    for (n, d) in SPANS {
        out.push_str(&format!("| `{n}` | {d} |\n"));
    }
    out.push_str("\n| log event | when |\n|---|---|\n");
    for (n, d) in LOG_EVENTS {
        out.push_str(&format!("| `{n}` | {d} |\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_metric_is_labelled_by_trade_id() {
        for x in METRICS {
            assert!(
                !x.labels.contains(&"trade_id"),
                "{} uses trade_id as a label",
                x.name
            );
            assert!(x.name.starts_with("echo_"), "{}", x.name);
        }
    }
}
