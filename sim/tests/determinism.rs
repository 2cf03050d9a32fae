//! Same seed, same run: traces are byte-identical, and every step of them is a SPEC.md
//! transition. A corrupted trace is refused.

use echo_sim::run::{run_seed, RunOptions, Verdict};

#[test]
fn replaying_a_seed_gives_a_byte_identical_trace() {
    let opts = RunOptions::default();
    for seed in [0u64, 7, 42, 1_234, 99_999] {
        let a = run_seed(seed, &opts, Some("test"));
        let b = run_seed(seed, &opts, Some("test"));
        let (ta, tb) = (a.trace.expect("trace"), b.trace.expect("trace"));
        assert!(ta.lines().count() > 100, "seed {seed}: a real run");
        assert_eq!(ta, tb, "seed {seed}: two runs differ");
        assert_eq!(a.verdict, Verdict::Pass, "seed {seed}:\n{}", a.summary);
    }
}

#[test]
fn different_seeds_differ() {
    let opts = RunOptions::default();
    let a = run_seed(1, &opts, Some("test")).trace.expect("trace");
    let b = run_seed(2, &opts, Some("test")).trace.expect("trace");
    assert_ne!(a, b);
}

#[test]
fn traces_conform_to_spec_and_corruption_is_caught() {
    let t = run_seed(3, &RunOptions::default(), Some("test"))
        .trace
        .expect("trace");
    let c = echo_sim::trace::check(&t).expect("a real trace conforms");
    assert!(c.steps > 100);
    // A step naming a transition SPEC.md does not list.
    let bad = t.replacen("\"transition\":\"core.", "\"transition\":\"core.bogus.", 1);
    assert!(echo_sim::trace::check(&bad)
        .unwrap_err()
        .contains("not in SPEC.md"));
    // A step whose states disagree with SPEC.md.
    let line = t
        .lines()
        .find(|l| l.contains("\"type\":\"step\""))
        .expect("a step");
    let v: serde_json::Value = serde_json::from_str(line).expect("json");
    let from = v["from"].as_str().expect("from").to_string();
    let wrong = line.replace(
        &format!("\"from\":{}", serde_json::Value::String(from)),
        "\"from\":\"Nowhere\"",
    );
    let bad = t.replacen(line, &wrong, 1);
    assert!(echo_sim::trace::check(&bad)
        .unwrap_err()
        .contains("SPEC.md says"));
    // No header.
    let headless: String = t.lines().skip(1).map(|l| format!("{l}\n")).collect();
    assert!(echo_sim::trace::check(&headless).is_err());
}
