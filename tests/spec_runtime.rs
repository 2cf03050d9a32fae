//! Holds SPEC.md §10 (the runtime, hand-written) to the code where that is cheap: the refusal
//! table against `link::server::Refusal`, the `/metrics` tables against what the core and the
//! agent actually export.

use std::collections::{BTreeMap, BTreeSet};

use echo_runtime::drivers::agent::AgentStatus;
use echo_runtime::drivers::core::CoreStatus;
use echo_runtime::link::server::{LinkMetrics, Refusal};
use echo_runtime::machines::telemetry::METRICS;
use echo_runtime::observe::{render_agent, render_core};

fn spec() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../SPEC.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The text of the section whose heading line starts with `heading`, up to the next heading.
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let start = text
        .find(&format!("\n{heading}"))
        .unwrap_or_else(|| panic!("SPEC.md has no section {heading:?}"));
    let body = &text[start + 1..];
    let after_heading = body.find('\n').map_or(body.len(), |i| i + 1);
    let end = body[after_heading..]
        .find("\n#")
        .map_or(body.len(), |i| after_heading + i);
    &body[..end]
}

/// The rows of the first table in `text` (without header and separator), cells trimmed.
fn table_rows(text: &str) -> Vec<Vec<String>> {
    let lines: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .collect();
    assert!(lines.len() > 2, "no table in:\n{text}");
    lines[2..]
        .iter()
        .map(|l| {
            // Split on '|' that is not escaped as '\|'.
            let mut cells = Vec::new();
            let mut cur = String::new();
            let mut prev = ' ';
            for ch in l.trim().trim_matches('|').chars() {
                if ch == '|' && prev != '\\' {
                    cells.push(cur.trim().to_string());
                    cur.clear();
                } else {
                    cur.push(ch);
                }
                prev = ch;
            }
            cells.push(cur.trim().to_string());
            cells
        })
        .collect()
}

fn unquote(cell: &str) -> String {
    cell.trim().trim_matches('`').to_string()
}

#[test]
fn refusal_table_matches_the_link_server() {
    let text = spec();
    let sec = section(&text, "### 10.3");
    let in_spec: BTreeMap<String, String> = table_rows(sec)
        .into_iter()
        .map(|r| {
            assert_eq!(r.len(), 4, "row {r:?}");
            (unquote(&r[1]), unquote(&r[2]))
        })
        .collect();
    let in_code: BTreeMap<String, String> = Refusal::ALL
        .iter()
        .map(|r| {
            let code = r
                .code()
                .name()
                .trim_start_matches("ERROR_CODE_")
                .to_string();
            (r.label().to_string(), code)
        })
        .collect();
    assert_eq!(in_spec, in_code, "SPEC §10.3 vs link::server::Refusal");

    // Every label of echo_core_link_refused_total is named in SPEC §10.7.
    let metrics = section(&text, "### 10.7");
    let row = metrics
        .lines()
        .find(|l| l.starts_with("| `echo_core_link_refused_total`"))
        .expect("SPEC §10.7 lists echo_core_link_refused_total");
    for (label, _) in LinkMetrics::default().refusals() {
        assert!(
            row.contains(&format!("`{label}`")),
            "{label} missing in: {row}"
        );
    }
}

#[test]
fn runtime_metric_table_matches_what_core_and_agent_export() {
    let text = spec();
    let sec = section(&text, "### 10.7");
    let in_spec: BTreeMap<String, String> = table_rows(sec)
        .into_iter()
        .map(|r| (unquote(&r[0]), unquote(&r[1])))
        .collect();
    let exported_text = render_core(&CoreStatus::default(), &LinkMetrics::default())
        + &render_agent(&AgentStatus::default());
    let exported: BTreeMap<String, String> = exported_text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let (name, kind) = l.split_once(' ')?;
            Some((name.to_string(), kind.to_string()))
        })
        .collect();
    let generated: BTreeSet<&str> = METRICS.iter().map(|m| m.name).collect();

    for (name, kind) in &in_spec {
        assert!(
            !generated.contains(name.as_str()),
            "{name} is in §6 (generated); do not list it again in §10.7"
        );
        assert_eq!(
            exported.get(name),
            Some(kind),
            "SPEC §10.7 lists {name} as {kind}; the runtime exports {:?}",
            exported.get(name)
        );
    }
    for name in exported.keys() {
        assert!(
            generated.contains(name.as_str()) || in_spec.contains_key(name),
            "{name} is exported but neither in SPEC §6 nor in §10.7"
        );
    }
    assert!(!exported_text.contains("trade_id"));
}

#[test]
fn pending_age_metric_is_documented_as_exported() {
    let m = METRICS
        .iter()
        .find(|m| m.name == "echo_core_delivery_pending_age_ms")
        .expect("the metric exists");
    assert!(!m.doc.contains("not yet exported"), "{}", m.doc);
    let text = render_core(&CoreStatus::default(), &LinkMetrics::default());
    assert!(text.contains("# TYPE echo_core_delivery_pending_age_ms gauge"));
}

/// SPEC §10.8 names every key `metrics.json` must have (`loadtest::metrics::REQUIRED`) in the
/// row of its parent object: the schema and its documentation cannot drift apart.
#[test]
fn metrics_json_schema_matches_spec_10_8() {
    use echo_runtime::app::loadtest::metrics::REQUIRED;
    let text = spec();
    let sec = section(&text, "### 10.8");
    let rows: BTreeMap<String, String> = table_rows(sec)
        .into_iter()
        .map(|r| (r[0].trim_matches('`').to_string(), r[1].clone()))
        .collect();
    for (path, _) in REQUIRED {
        let (parent, leaf) = match path.split_once('/') {
            Some((p, l)) => (p, l),
            None => (*path, *path),
        };
        // A key may have a row of its own (`latency_ms.core_accepted`) …
        if rows.contains_key(&path.replace('/', ".")) {
            continue;
        }
        // … or be named in its parent's row (`intents` names `lost`, `unsettled`, …).
        let meaning = rows
            .get(parent)
            .or_else(|| rows.get(&format!("{parent}[]")))
            .unwrap_or_else(|| panic!("SPEC §10.8 has no row for {parent} (key {path})"));
        if parent != leaf {
            assert!(
                meaning.contains(&format!("`{leaf}`")),
                "SPEC §10.8 row {parent} does not name `{leaf}` (required key {path})"
            );
        }
    }
    // The split of missing copies is documented with both names.
    let intents = &rows["intents"];
    assert!(intents.contains("`lost`") && intents.contains("`unsettled`"));
}
