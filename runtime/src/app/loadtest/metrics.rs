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
