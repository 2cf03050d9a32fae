//! `metrics.json`: the run's figures in the schema of SPEC.md §10.8, and the check that a
//! document follows it.
//!
//! Owns the layout and the schema check. Every number is handed in by the caller; it must
//! never measure or estimate anything itself.

use serde_json::{json, Value};

use crate::histogram::Histogram;

pub const SCHEMA: &str = "echo.loadtest.v1";

fn ms(us: u64) -> f64 {
    (us as f64 / 10.0).round() / 100.0
}

/// `{count, p50, p90, p99, p999, max, mean}` in ms of a µs histogram.
pub fn summary(h: &Histogram) -> Value {
    json!({
        "count": h.count(),
        "p50": ms(h.quantile(0.50)),
        "p90": ms(h.quantile(0.90)),
        "p99": ms(h.quantile(0.99)),
        "p999": ms(h.quantile(0.999)),
        "max": ms(h.max()),
        "mean": (h.mean() / 10.0).round() / 100.0,
    })
}

pub fn millis(us: u64) -> f64 {
    ms(us)
}

/// The stages the core times, as `metrics.json` names them under `latency_ms/at_core`.
pub const CORE_STAGES: &[(&str, &str)] = &[
    ("AGENT_BUFFERED", "agent_buffered"),
    ("PIPE_DELIVERED", "pipe_delivered"),
    ("EA_CONFIRMED", "ea_confirmed"),
];

/// `latency_ms/at_core`: CORE_ACCEPTED → AGENT_BUFFERED / PIPE_DELIVERED / EA_CONFIRMED as the
/// core measured them (`echo_core_delivery_stage_latency_ms`, read from its `/metrics` text
/// after the run): per stage `{count, p50, p90, p99, p999, max}` in ms, a stage no delivery
/// reached has count 0; `{"error": …}` when the core could not be read. Percentiles are the
/// core histogram's bucket edges (at most 12.5 % high), max is exact.
pub fn stages_at_core(text: Option<&str>) -> Value {
    let Some(text) = text else {
        return json!({"error": "the core's /metrics could not be read"});
    };
    let name = "echo_core_delivery_stage_latency_ms";
    let mut out = serde_json::Map::new();
    for (stage, key) in CORE_STAGES {
        let sample = |suffix: &str, labels: String| -> f64 {
            let prefix = format!("{name}{suffix}{{{labels}}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let q = |q: &str| sample("", format!("stage=\"{stage}\",quantile=\"{q}\""));
        out.insert(
            (*key).to_string(),
            json!({
                "count": sample("_count", format!("stage=\"{stage}\"")) as u64,
                "p50": q("0.5"),
                "p90": q("0.9"),
                "p99": q("0.99"),
                "p999": q("0.999"),
                "max": q("1"),
            }),
        );
    }
    Value::Object(out)
}

/// Every required key with its JSON type: `(path, kind)`, kind one of `n` (number),
/// `s` (string), `b` (bool), `a` (array), `o` (object).
pub const REQUIRED: &[(&str, char)] = &[
    ("schema", 's'),
    ("started_at", 's'),
    ("machine/cpus", 'n'),
    ("machine/loadavg_start", 's'),
    ("machine/loadavg_end", 's'),
    ("config/rate", 'n'),
    ("config/nominal", 'n'),
    ("config/load_pct", 'n'),
    ("config/md_rate", 'n'),
    ("config/duration_s", 'n'),
    ("config/symbols", 'n'),
    ("config/batch", 'n'),
    ("config/batch_window_ms", 'n'),
    ("config/shards", 'n'),
    ("config/masters", 'n'),
    ("config/slaves", 'n'),
    ("config/agents", 'n'),
    ("config/journal", 's'),
    ("intents/emitted", 'n'),
    ("intents/confirmed", 'n'),
    ("intents/failed", 'n'),
    ("intents/lost", 'n'),
    ("intents/unsettled", 'n'),
    ("intents/duplicated", 'n'),
    ("intents/out_of_order", 'n'),
    ("intents/expected_copies", 'n'),
    ("intents/copies_filled", 'n'),
    ("intents/settled", 'b'),
    ("latency_ms/core_accepted", 'o'),
    ("latency_ms/pipe_delivered", 'o'),
    ("latency_ms/end_to_end", 'o'),
    ("latency_ms/at_core", 'o'),
    ("runtime_lag_ms/p95", 'n'),
    ("runtime_lag_ms/max", 'n'),
    ("workers", 'a'),
    ("market_data/offered", 'n'),
    ("market_data/delivered", 'n'),
    ("market_data/coalesced", 'n'),
    ("market_data/stale_dropped", 'n'),
    ("market_data/critical_offered", 'n'),
    ("market_data/critical_delivered", 'n'),
    ("processes", 'a'),
    ("agents", 'o'),
    ("kpis", 'a'),
    ("timeline", 'a'),
];

const STAGE_KEYS: &[&str] = &["count", "p50", "p90", "p99", "p999", "max", "mean"];
const WORKER_KEYS: &[&str] = &[
    "name",
    "queue_time_mean_ms",
    "queue_time_p95_ms",
    "queue_depth_peak",
];
const PROCESS_KEYS: &[&str] = &["name", "rss_peak_mb", "cpu_s"];

fn kind_ok(v: &Value, kind: char) -> bool {
    match kind {
        'n' => v.is_number(),
        's' => v.is_string(),
        'b' => v.is_boolean(),
        'a' => v.is_array(),
        'o' => v.is_object(),
        _ => false,
    }
}

/// Every way `doc` departs from the schema (empty when it follows it).
pub fn check(doc: &Value) -> Vec<String> {
    let mut errs = Vec::new();
    for (path, kind) in REQUIRED {
        let v = path.split('/').fold(doc, |v, k| &v[k]);
        if !kind_ok(v, *kind) {
            errs.push(format!("{path}: expected {kind}, found {v}"));
        }
    }
    if doc["schema"].as_str().is_some_and(|s| s != SCHEMA) {
        errs.push(format!("schema: {} is not {SCHEMA}", doc["schema"]));
    }
    for stage in ["core_accepted", "pipe_delivered", "end_to_end"] {
        for k in STAGE_KEYS {
            if !doc["latency_ms"][stage][k].is_number() {
                errs.push(format!("latency_ms/{stage}/{k}: not a number"));
            }
        }
    }
    for (list, keys) in [("workers", WORKER_KEYS), ("processes", PROCESS_KEYS)] {
        for (i, w) in doc[list].as_array().into_iter().flatten().enumerate() {
            for k in keys {
                if w[k].is_null() {
                    errs.push(format!("{list}[{i}]/{k}: missing"));
                }
            }
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::core::CoreStatus;
    use crate::link::server::LinkMetrics;
    use crate::observe::render_core;
    use echo_statemachine::msg::AckStage;

    /// The parser reads what the core's exporter writes (not a hand-made text).
    #[test]
    fn stages_at_core_read_back_what_the_core_exports() {
        let mut core = CoreStatus::default();
        let mut h = Histogram::default();
        for us in [1_000, 2_000, 40_000] {
            h.record(us);
        }
        core.metrics
            .delivery_stage_latency_us
            .insert(AckStage::PipeDelivered, h);
        let text = render_core(&core, &LinkMetrics::default());
        let v = stages_at_core(Some(&text));
        assert_eq!(v["pipe_delivered"]["count"], 3);
        assert_eq!(v["pipe_delivered"]["max"], 40.0);
        let p50 = v["pipe_delivered"]["p50"].as_f64().unwrap_or(0.0);
        assert!((2.0..=2.25).contains(&p50), "p50 {p50}");
        assert_eq!(v["ea_confirmed"]["count"], 0, "a stage never reached");
        assert!(stages_at_core(None)["error"].is_string());
    }
}
