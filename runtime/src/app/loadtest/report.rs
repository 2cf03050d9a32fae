//! `report.html`: a self-contained page (inline SVG, no script, no network) with the run's
//! summary table and its latency-over-time, throughput, queue-depth and runtime-lag charts.
//!
//! Owns the rendering of `metrics.json` into a page; it must never compute a figure that
//! metrics.json does not hold, so the page and the file cannot disagree.

use std::fmt::Write as _;

use serde_json::Value;

const W: f64 = 1160.0;
const H: f64 = 300.0;
const PAD_L: f64 = 70.0;
const PAD_R: f64 = 20.0;
const PAD_T: f64 = 36.0;
const PAD_B: f64 = 40.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" upper bound for an axis: 1, 2 or 5 × 10^k at or above `v`.
fn nice(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

/// One line chart; `series` are `(label, colour, values by second)`.
fn chart(title: &str, unit: &str, series: &[(&str, &str, Vec<f64>)]) -> String {
    let n = series.iter().map(|s| s.2.len()).max().unwrap_or(0).max(2);
    let ymax = nice(
        series
            .iter()
            .flat_map(|s| s.2.iter().copied())
            .fold(0.0, f64::max),
    );
    let (pw, ph) = (W - PAD_L - PAD_R, H - PAD_T - PAD_B);
    let x = |i: usize| PAD_L + pw * i as f64 / (n - 1) as f64;
    let y = |v: f64| PAD_T + ph * (1.0 - v / ymax);
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="{t}"><rect width="{W}" height="{H}" fill="#fff"/><text x="{PAD_L}" y="22" font-size="16" font-weight="bold">{t}</text>"##,
        t = esc(title)
    );
    for k in 0..=4 {
        let v = ymax * k as f64 / 4.0;
        let _ = write!(
            s,
            r##"<line x1="{PAD_L}" x2="{x2}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{tx}" y="{ty:.1}" font-size="11" text-anchor="end">{v} {u}</text>"##,
            x2 = W - PAD_R,
            yy = y(v),
            tx = PAD_L - 6.0,
            ty = y(v) + 4.0,
            v = if ymax >= 10.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            },
            u = esc(unit)
        );
    }
    let ticks = 10.min(n - 1).max(1);
    for k in 0..=ticks {
        let i = (n - 1) * k / ticks;
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{}" font-size="11" text-anchor="middle">{i} s</text>"##,
            x(i),
            H - PAD_B + 16.0
        );
    }
    let _ = write!(
        s,
        r##"<line x1="{PAD_L}" x2="{PAD_L}" y1="{PAD_T}" y2="{yb}" stroke="#333"/><line x1="{PAD_L}" x2="{xr}" y1="{yb}" y2="{yb}" stroke="#333"/>"##,
        yb = H - PAD_B,
        xr = W - PAD_R
    );
    for (k, (label, colour, vals)) in series.iter().enumerate() {
        let pts: Vec<String> = vals
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v)))
            .collect();
        let _ = write!(
            s,
            r##"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/><rect x="{lx}" y="10" width="14" height="4" fill="{colour}"/><text x="{tx}" y="16" font-size="12">{}</text>"##,
            pts.join(" "),
            esc(label),
            lx = W - PAD_R - 170.0 * (series.len() - k) as f64,
            tx = W - PAD_R - 170.0 * (series.len() - k) as f64 + 18.0,
        );
    }
    s.push_str("</svg>");
    s
}

fn col(timeline: &[Value], key: &str) -> Vec<f64> {
    timeline
        .iter()
        .map(|r| r[key].as_f64().unwrap_or(0.0))
        .collect()
}

/// A JSON value as text, strings without their quotes.
fn txt(v: &Value) -> String {
    v.as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string())
}

fn row(out: &mut String, k: &str, v: &str) {
    let _ = write!(out, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v));
}

fn lat(m: &Value, stage: &str) -> String {
    stage_row(&m["latency_ms"][stage])
}

fn stage_row(s: &Value) -> String {
    format!(
        "n {} · p50 {} · p90 {} · p99 {} · p99.9 {} · max {} ms",
        s["count"], s["p50"], s["p90"], s["p99"], s["p999"], s["max"]
    )
}

/// The page for one run's metrics.json.
pub fn render(m: &Value) -> String {
    let tl = m["timeline"].as_array().cloned().unwrap_or_default();
    let mut t = String::new();
    let c = &m["config"];
    row(
        &mut t,
        "load point",
        &format!(
            "{} intents/s ({}% of nominal {}), {} md msgs/s over {} symbols, {} s",
            c["rate"], c["load_pct"], c["nominal"], c["md_rate"], c["symbols"], c["duration_s"]
        ),
    );
    row(
        &mut t,
        "topology",
        &format!(
            "{} master(s) × {} slave(s), journal {}, {} extra agents",
            c["masters"],
            c["slaves"],
            txt(&c["journal"]),
            c["agents"]
        ),
    );
    let i = &m["intents"];
    row(
        &mut t,
        "intents",
        &format!(
            "emitted {} · confirmed {} · failed {} · lost {} · unsettled {} · duplicated {}",
            i["emitted"], i["confirmed"], i["failed"], i["lost"], i["unsettled"], i["duplicated"]
        ),
    );
    for stage in [
        "core_accepted",
        "pipe_delivered",
        "journal_to_slave",
        "end_to_end",
    ] {
        row(&mut t, &format!("latency {stage}"), &lat(m, stage));
    }
    for (_, key) in super::metrics::CORE_STAGES {
        let s = &m["latency_ms"]["at_core"][key];
        if s.is_object() {
            row(&mut t, &format!("at the core: {key}"), &stage_row(s));
        }
    }
    row(
        &mut t,
        "runtime lag",
        &format!(
            "p95 {} ms · max {} ms",
            m["runtime_lag_ms"]["p95"], m["runtime_lag_ms"]["max"]
        ),
    );
    let md = &m["market_data"];
    row(
        &mut t,
        "market data",
        &format!(
            "offered {} · delivered {} · coalesced {} · stale drops {} · critical {} / {}",
            md["offered"],
            md["delivered"],
            md["coalesced"],
            md["stale_dropped"],
            md["critical_delivered"],
            md["critical_offered"]
        ),
    );
    for p in m["processes"].as_array().into_iter().flatten() {
        row(
            &mut t,
            &format!("process {}", p["name"].as_str().unwrap_or("?")),
            &format!("RSS peak {} MB · CPU {} s", p["rss_peak_mb"], p["cpu_s"]),
        );
    }
    for k in m["kpis"].as_array().into_iter().flatten() {
        row(
            &mut t,
            &format!("KPI {}", k["name"].as_str().unwrap_or("?")),
            &format!(
                "{} {} (limit {}) {}",
                k["value"],
                k["unit"].as_str().unwrap_or(""),
                k["limit"],
                if k["ok"].as_bool() == Some(true) {
                    "OK"
                } else {
                    "MISSED"
                }
            ),
        );
    }
    let charts = [
        chart(
            "End-to-end latency (master emit → slave fill), per second",
            "ms",
            &[
                ("p50", "#1f77b4", col(&tl, "e2e_p50_ms")),
                ("p99", "#d62728", col(&tl, "e2e_p99_ms")),
            ],
        ),
        chart(
            "Throughput",
            "/s",
            &[
                ("intents emitted", "#1f77b4", col(&tl, "emitted")),
                ("CORE_ACCEPTED", "#2ca02c", col(&tl, "accepted")),
                ("slave fills", "#ff7f0e", col(&tl, "executed")),
            ],
        ),
        chart(
            "Market data: queue depth peak (all shards) and deliveries",
            "",
            &[
                (
                    "sum of shard depth peaks",
                    "#9467bd",
                    col(&tl, "md_depth_peak"),
                ),
                ("delivered/s ÷ 100", "#8c564b", {
                    col(&tl, "md_delivered").iter().map(|v| v / 100.0).collect()
                }),
            ],
        ),
        chart(
            "Tokio runtime lag (worst per second)",
            "ms",
            &[("lag max", "#e377c2", col(&tl, "lag_max_ms"))],
        ),
    ];
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>echo loadtest {ts}</title>\
         <style>body{{font-family:sans-serif;margin:20px;color:#222}}table{{border-collapse:collapse;margin-bottom:16px}}\
         th,td{{border:1px solid #ccc;padding:4px 8px;text-align:left;font-size:13px}}th{{background:#f4f4f4}}\
         svg{{display:block;margin:8px 0;border:1px solid #eee}}</style></head><body>\
         <h1>echo loadtest — {ts}</h1><p>{machine}</p><table>{t}</table>{charts}</body></html>",
        ts = esc(m["started_at"].as_str().unwrap_or("")),
        machine = esc(&format!(
            "{} CPUs, load average {} → {}",
            m["machine"]["cpus"], txt(&m["machine"]["loadavg_start"]), txt(&m["machine"]["loadavg_end"])
        )),
        charts = charts.join("")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_bounds() {
        assert_eq!(nice(0.0), 1.0);
        assert_eq!(nice(3.2), 5.0);
        assert_eq!(nice(12.0), 20.0);
        assert_eq!(nice(100.0), 100.0);
    }

    #[test]
    fn page_is_self_contained() {
        let m = serde_json::json!({"timeline": [{"e2e_p50_ms": 1.0, "e2e_p99_ms": 3.0}], "started_at": "x<y"});
        let page = render(&m);
        assert!(page.contains("<svg") && page.contains("x&lt;y"));
        assert!(
            !page.contains("src=") && !page.contains("href="),
            "no external resource"
        );
        assert!(!page.contains("<script"));
    }
}
