//! `echo loadtest` smoke (CI, well under 60 s): a short run of the real binary — core, agents,
//! terminals as processes, the market-data path, a small agent swarm — must end with nothing
//! lost or duplicated (counted from the terminals' durable files), exit 0, and leave a
//! metrics.json that follows the SPEC §10.8 schema and a self-contained report.html.
//! No timing is asserted: figures are for the benchmark, not the test.

#[path = "e2e_support.rs"]
mod support;

use std::process::Command;

use echo_runtime::app::loadtest::metrics;
use serde_json::Value;

#[test]
fn short_loadtest_loses_nothing_and_writes_valid_metrics() {
    let out = tempfile::tempdir().expect("temp dir");
    let work = out.path().join("work");
    let run = Command::new(support::echo_bin())
        .args([
            "loadtest",
            "--rate",
            "20",
            "--md-rate",
            "500",
            "--symbols",
            "20",
            "--duration",
            "4",
            "--masters",
            "1",
            "--slaves",
            "2",
            "--agents",
            "20",
            "--agent-connections",
            "4",
            "--journal",
            "sqlite",
            "--settle-s",
            "30",
            "--out",
        ])
        .arg(out.path())
        .arg("--work-dir")
        .arg(&work)
        .output()
        .expect("running echo loadtest");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "echo loadtest failed ({}):\n{stdout}\n{stderr}",
        run.status
    );
    let runs: Vec<_> = std::fs::read_dir(out.path())
        .expect("reading the artifacts dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with('Z'))
        .collect();
    assert_eq!(
        runs.len(),
        1,
        "one timestamped run dir:\n{stdout}\n{stderr}"
    );
    let dir = runs[0].path();
    let text = std::fs::read_to_string(dir.join("metrics.json")).expect("metrics.json");
    let doc: Value = serde_json::from_str(&text).expect("metrics.json parses");
    let problems = metrics::check(&doc);
    assert!(problems.is_empty(), "schema: {problems:?}");
    let i = &doc["intents"];
    assert_eq!(i["lost"], 0, "{i}");
    assert_eq!(i["duplicated"], 0, "{i}");
    assert_eq!(i["out_of_order"], 0, "{i}");
    assert_eq!(i["settled"], true, "{i}");
    let emitted = i["emitted"].as_u64().expect("emitted");
    assert_eq!(emitted, 80, "4 s × 20 intents/s: {i}");
    assert_eq!(i["confirmed"], emitted, "{i}");
    assert_eq!(i["expected_copies"], emitted * 2, "{i}");
    assert_eq!(i["copies_filled"], emitted * 2, "{i}");
    assert_eq!(doc["latency_ms"]["end_to_end"]["count"], emitted * 2);
    // The core timed every copy's ExecutionResult (no restarts in this run).
    assert_eq!(
        doc["latency_ms"]["at_core"]["ea_confirmed"]["count"],
        emitted * 2,
        "{}",
        doc["latency_ms"]["at_core"]
    );
    let md = &doc["market_data"];
    assert_eq!(md["critical_offered"], md["critical_delivered"], "{md}");
    assert_eq!(md["stale_dropped"], 0, "{md}");
    assert!(md["offered"].as_u64().unwrap_or(0) > 0, "{md}");
    assert_eq!(doc["agents"]["hellos_accepted"], 20, "{}", doc["agents"]);
    assert!(doc["processes"]
        .as_array()
        .is_some_and(|p| p.iter().any(|p| p["name"] == "core")));
    let page = std::fs::read_to_string(dir.join("report.html")).expect("report.html");
    assert!(page.matches("<svg").count() >= 4, "charts in the page");
    assert!(
        !page.contains("src=") && !page.contains("href="),
        "no external resource"
    );
}

/// A document missing a required key, or with a wrong type, is refused by the schema check.
#[test]
fn schema_check_refuses_a_broken_document() {
    assert!(!metrics::check(&serde_json::json!({})).is_empty());
    let mut doc = serde_json::json!({"intents": {"lost": "0"}});
    let errs = metrics::check(&doc);
    assert!(
        errs.iter().any(|e| e.starts_with("intents/lost")),
        "{errs:?}"
    );
    doc["intents"]["lost"] = 0.into();
    assert!(!metrics::check(&doc)
        .iter()
        .any(|e| e.starts_with("intents/lost")));
}
