//! The turmoil suite: each scenario at its fixed seed must pass every checker; a soak mode
//! sweeps seeds (`ECHO_SIM_RT_SEEDS=FROM..TO`); one seed run twice must give the same trace.

use echo_sim_runtime::scenario::{self, Scenario};

fn assert_clean(sc: &Scenario, seed: u64) -> String {
    let out = scenario::run(sc, seed);
    if std::env::var_os("ECHO_SIM_RT_TRACE").is_some() {
        eprintln!("=== {} seed {seed:#x}\n{}", sc.name, out.trace);
    }
    assert!(
        out.violations.is_empty(),
        "scenario {} seed {seed:#x}: {} violation(s):\n{}\n--- trace tail ---\n{}",
        sc.name,
        out.violations.len(),
        out.violations.join("\n"),
        out.trace
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    out.trace
}

fn fixed(name: &str) {
    let sc = scenario::by_name(name);
    assert_clean(&sc, sc.seed);
}

#[test]
fn calm() {
    fixed("calm");
}

#[test]
fn partition_hold() {
    fixed("partition_hold");
}

#[test]
fn journal_faults() {
    fixed("journal_faults");
}

#[test]
fn journal_loss_core_bounce() {
    fixed("journal_loss_core_bounce");
}

#[test]
fn journal_flaky() {
    fixed("journal_flaky");
}

#[test]
fn journal_down_long() {
    fixed("journal_down_long");
}

#[test]
fn crash_bounce() {
    fixed("crash_bounce");
}

#[test]
fn latency_loss() {
    fixed("latency_loss");
}

/// Same seed, same trace, byte for byte.
#[test]
fn one_seed_twice_gives_the_same_trace() {
    let sc = scenario::by_name("crash_bounce");
    let a = scenario::run(&sc, sc.seed).trace;
    let b = scenario::run(&sc, sc.seed).trace;
    assert!(a.len() > 100, "trace too short to mean anything: {a}");
    assert!(
        a == b,
        "traces differ:\n--- first ---\n{a}\n--- second ---\n{b}"
    );
}

/// `ECHO_SIM_RT_SEEDS=1..200 cargo test -p echo-sim-runtime --test turmoil_runtime soak --release`
/// runs every scenario at every seed in the range (without it, this test does nothing).
#[test]
fn soak() {
    let Ok(range) = std::env::var("ECHO_SIM_RT_SEEDS") else {
        return;
    };
    let (from, to) = range
        .split_once("..")
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
        .unwrap_or_else(|| panic!("ECHO_SIM_RT_SEEDS must be FROM..TO, got {range:?}"));
    for seed in from..to {
        for sc in scenario::all() {
            assert_clean(&sc, seed);
        }
    }
}
