//! SPEC.md and the code never disagree: the generated sections of SPEC.md must equal what the
//! crate renders from its transition tables, config keys and telemetry names.
//! `ECHO_BLESS_SPEC=1` rewrites them (review the diff).

use std::collections::BTreeSet;
use std::path::PathBuf;

fn spec_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("SPEC.md")
}

fn sections() -> Vec<(&'static str, String)> {
    vec![
        ("config", echo_statemachine::spec::render_config_keys()),
        ("policy", echo_statemachine::spec::render_policy()),
        ("telemetry", echo_statemachine::telemetry::render_markdown()),
        ("machines", echo_statemachine::spec::render_markdown()),
    ]
}

/// Replaces the body between a section's markers; `None` if the markers are missing.
fn splice(doc: &str, name: &str, body: &str) -> Option<String> {
    let begin = format!("<!-- BEGIN GENERATED: {name} -->");
    let end = format!("<!-- END GENERATED: {name} -->");
    let b = doc.find(&begin)? + begin.len();
    let e = doc[b..].find(&end)? + b;
    Some(format!("{}\n{}{}", &doc[..b], body, &doc[e..]))
}

#[test]
fn spec_md_matches_the_code() {
    let path = spec_path();
    let doc = std::fs::read_to_string(&path).expect("SPEC.md at the workspace root");
    let mut want = doc.clone();
    for (name, body) in sections() {
        want = splice(&want, name, &body)
            .unwrap_or_else(|| panic!("SPEC.md lacks the markers of section {name}"));
    }
    if std::env::var_os("ECHO_BLESS_SPEC").is_some() {
        std::fs::write(&path, &want).expect("write SPEC.md");
        return;
    }
    if want != doc {
        let first = want
            .lines()
            .zip(doc.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        panic!(
            "SPEC.md is out of date with the code (first difference at line {}).\n  code says: {:?}\n  SPEC says: {:?}\nRegenerate with `ECHO_BLESS_SPEC=1 cargo test -p echo-statemachine --test spec_sync` and review the diff.",
            first + 1,
            want.lines().nth(first).unwrap_or(""),
            doc.lines().nth(first).unwrap_or("")
        );
    }
}

#[test]
fn splice_detects_a_transition_missing_from_spec() {
    // The check above compares whole sections, so a transition added in code but not in
    // SPEC.md is a difference. Show it on a doc whose machine table lacks one row.
    let full = splice(
        "<!-- BEGIN GENERATED: machines -->\n<!-- END GENERATED: machines -->",
        "machines",
        &echo_statemachine::spec::render_markdown(),
    )
    .expect("markers");
    let last_row = full
        .lines()
        .rfind(|l| l.starts_with("| `"))
        .expect("a transition row")
        .to_string();
    let stale = full.replace(&format!("{last_row}\n"), "");
    assert_ne!(stale, full);
    let regenerated = splice(
        &stale,
        "machines",
        &echo_statemachine::spec::render_markdown(),
    )
    .expect("markers");
    assert_eq!(regenerated, full, "regeneration restores the missing row");
}

#[test]
fn transition_ids_are_unique_and_well_formed() {
    let mut seen = BTreeSet::new();
    for m in echo_statemachine::spec::machines() {
        assert!(!m.transitions.is_empty(), "{} has no transitions", m.name);
        assert!(!m.states.is_empty(), "{} has no states", m.name);
        for t in m.transitions {
            assert!(
                t.id.starts_with(&format!("{}.T", m.name)),
                "{} not under {}",
                t.id,
                m.name
            );
            assert!(seen.insert(t.id), "duplicate transition id {}", t.id);
        }
    }
}
