//! `echo-sim` — run, replay and inspect deterministic simulations of Echo.
//!
//! Exit codes: 0 all seeds passed; 1 a safety violation; 2 a liveness failure; 3 a crash
//! (panic); 64 bad usage.

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant as WallClock;

use echo_sim::run::{run_seed, Outcome, RunOptions, Verdict};
use echo_sim::world::Capacity;

const USAGE: &str = "usage:
  echo-sim run --seeds A..B [--profile test_min|default] [--jobs N] [--scale N] [--trades N] [--coverage FILE]
  echo-sim replay --seed S [--profile …] [--scale N] [--trades N] [--trace FILE]
  echo-sim shrink --seed S [--profile …] [--scale N] [--trades N]
  common: [--zero RATE,RATE…] zero these fault/workload rates after the seed drew them;
          [--mutant NAME] plant a known bug (a build with --features mutants)
  echo-sim coverage --seeds A..B [--profile …] [--jobs N]
  echo-sim trace check FILE
  echo-sim trace render FILE [-o OUT.html]   (default OUT: FILE with .html; open OUT#filter=m0-i12)";

fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

struct Args {
    seeds: (u64, u64),
    opts: RunOptions,
    jobs: usize,
    trace: Option<String>,
    /// `run --coverage FILE`: also write the transition coverage of the run (as `coverage`
    /// prints it) to FILE, so one pass over the seeds serves both.
    coverage: Option<String>,
}

fn parse(mut it: impl Iterator<Item = String>, replay: bool) -> Result<Args, String> {
    let mut a = Args {
        seeds: (0, 100),
        opts: RunOptions::default(),
        jobs: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        trace: None,
        coverage: None,
    };
    let num = |flag: &str, v: Option<String>| -> Result<u64, String> {
        let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
        v.parse()
            .map_err(|_| format!("{flag}: not a number: {v:?}"))
    };
    while let Some(f) = it.next() {
        match f.as_str() {
            "--seeds" if !replay => {
                let v = it.next().ok_or("--seeds needs A..B")?;
                let (x, y) = v
                    .split_once("..")
                    .ok_or(format!("--seeds expects A..B, got {v:?}"))?;
                let x: u64 = x.parse().map_err(|_| format!("bad seed range {v:?}"))?;
                let y: u64 = y.parse().map_err(|_| format!("bad seed range {v:?}"))?;
                if y <= x {
                    return Err(format!("empty seed range {v:?}"));
                }
                a.seeds = (x, y);
            }
            "--seed" if replay => {
                let s = num("--seed", it.next())?;
                a.seeds = (s, s + 1);
            }
            "--profile" => {
                a.opts.capacity = match it.next().as_deref() {
                    Some("test_min") => Capacity::TestMin,
                    Some("default") => Capacity::Default,
                    other => {
                        return Err(format!("--profile is test_min or default, got {other:?}"))
                    }
                }
            }
            "--jobs" if !replay => a.jobs = (num("--jobs", it.next())? as usize).clamp(1, 256),
            "--scale" => a.opts.scale = (num("--scale", it.next())? as usize).clamp(1, 64),
            "--trades" => a.opts.trades = (num("--trades", it.next())? as usize).clamp(1, 10_000),
            "--trace" if replay => a.trace = Some(it.next().ok_or("--trace needs a file")?),
            "--coverage" if !replay => {
                a.coverage = Some(it.next().ok_or("--coverage needs a file")?)
            }
            "--zero" => {
                let v = it.next().ok_or("--zero needs RATE,RATE…")?;
                a.opts.zeroed = v
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
                // A misspelt rate would silently zero nothing and mislead the replay command.
                let mut known: Vec<&str> = echo_sim::profile::FaultProfile::none()
                    .rates_mut()
                    .into_iter()
                    .map(|(n, _)| n)
                    .collect();
                known.extend(
                    echo_sim::world::Workload::none()
                        .rates_mut()
                        .into_iter()
                        .map(|(n, _)| n),
                );
                if let Some(bad) = a.opts.zeroed.iter().find(|z| !known.contains(&z.as_str())) {
                    return Err(format!(
                        "--zero: unknown rate {bad:?}; rates are {}",
                        known.join(",")
                    ));
                }
            }
            "--mutant" => {
                let v = it.next().ok_or("--mutant needs a name")?;
                let m = echo_statemachine::mutants::Mutant::from_name(&v).ok_or_else(|| {
                    let names: Vec<&str> = echo_statemachine::mutants::Mutant::ALL
                        .iter()
                        .map(|m| m.name())
                        .collect();
                    format!("unknown mutant {v:?}; one of {}", names.join(", "))
                })?;
                a.opts.mutant = Some(m);
            }
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok(a)
}

fn replay_cmd(seed: u64, a: &Args) -> String {
    let profile = match a.opts.capacity {
        Capacity::TestMin => "test_min",
        Capacity::Default => "default",
    };
    let mut extra = String::new();
    if !a.opts.zeroed.is_empty() {
        extra.push_str(&format!(" --zero {}", a.opts.zeroed.join(",")));
    }
    if let Some(m) = a.opts.mutant {
        extra.push_str(&format!(" --mutant {}", m.name()));
    }
    format!(
        "echo-sim replay --seed {seed} --profile {profile} --scale {} --trades {}{extra} --trace seed-{seed}.ndjson",
        a.opts.scale, a.opts.trades
    )
}

fn run(a: Args) -> ExitCode {
    let (lo, hi) = a.seeds;
    let total = hi - lo;
    println!(
        "echo-sim: seeds {lo}..{hi}, profile {:?}, scale {}, trades/master {}, {} jobs",
        a.opts.capacity,
        a.opts.scale,
        a.opts.trades * a.opts.scale,
        a.jobs
    );
    let next = Arc::new(AtomicU64::new(lo));
    let done = Arc::new(AtomicU64::new(0));
    let failures: Arc<Mutex<Vec<Outcome>>> = Arc::new(Mutex::new(Vec::new()));
    let intents = Arc::new(AtomicU64::new(0));
    let start = WallClock::now();
    let opts = Arc::new(a.opts.clone());
    let seen = Arc::new(Mutex::new(std::collections::BTreeSet::<&'static str>::new()));
    let collect = a.coverage.is_some();
    let workers: Vec<_> = (0..a.jobs)
        .map(|_| {
            let (next, done, failures, opts, intents, seen) = (
                next.clone(),
                done.clone(),
                failures.clone(),
                opts.clone(),
                intents.clone(),
                seen.clone(),
            );
            std::thread::spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if seed >= hi {
                    break;
                }
                let o = run_seed(seed, &opts, None);
                if collect {
                    if let Ok(mut s) = seen.lock() {
                        s.extend(o.fired.iter().copied());
                    }
                }
                intents.fetch_add(o.intents, Ordering::Relaxed);
                if o.verdict != Verdict::Pass {
                    if let Ok(mut f) = failures.lock() {
                        f.push(o);
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    let silent_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    loop {
        let d = done.load(Ordering::SeqCst);
        let secs = start.elapsed().as_secs_f64().max(1e-3);
        let nfail = failures.lock().map(|f| f.len()).unwrap_or(0);
        let pct = d * 100 / total.max(1);
        eprint!(
            "\r[{:<25}] {d}/{total} seeds  {:.1} seeds/s  {:.0} trades/s  failures {nfail}   ",
            "#".repeat((pct / 4) as usize),
            d as f64 / secs,
            intents.load(Ordering::Relaxed) as f64 / 4.0 / secs
        );
        let _ = std::io::stderr().flush();
        if d >= total {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    eprintln!();
    for w in workers {
        let _ = w.join();
    }
    std::panic::set_hook(silent_hook);
    let secs = start.elapsed().as_secs_f64().max(1e-3);
    let mut failures = failures.lock().map(|f| f.clone()).unwrap_or_default();
    failures.sort_by_key(|o| o.seed);
    println!(
        "{total} seeds in {secs:.1}s: {:.1} seeds/s, {:.0} simulated trades/s, {} failed",
        total as f64 / secs,
        intents.load(Ordering::Relaxed) as f64 / 4.0 / secs,
        failures.len()
    );
    if let Some(path) = &a.coverage {
        let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
        let table = coverage_table(lo, hi, &seen);
        print!("{table}");
        if let Err(e) = std::fs::write(path, &table) {
            eprintln!("echo-sim: cannot write {path}: {e}");
            return ExitCode::from(74);
        }
    }
    let mut worst = Verdict::Pass;
    for o in &failures {
        println!(
            "\nseed {} FAILED ({:?}) — profile {}\n{}",
            o.seed, o.verdict, o.profile, o.summary
        );
        println!("replay: {}", replay_cmd(o.seed, &a));
        if o.verdict.exit_code() > worst.exit_code() {
            worst = o.verdict.clone();
        }
    }
    // Safety outranks liveness outranks crash in the exit code? Report the most severe kind:
    // a crash (3) masks nothing else, so prefer safety (1) when present.
    let code = if failures.iter().any(|o| o.verdict == Verdict::Safety) {
        1
    } else {
        worst.exit_code()
    };
    ExitCode::from(code)
}

fn replay(a: Args) -> ExitCode {
    let seed = a.seeds.0;
    let c = commit();
    let o = run_seed(seed, &a.opts, Some(&c));
    println!(
        "seed {seed}: {:?} — profile {}\n{}",
        o.verdict, o.profile, o.summary
    );
    if let (Some(path), Some(t)) = (&a.trace, &o.trace) {
        if let Err(e) = std::fs::write(path, t) {
            eprintln!("echo-sim: cannot write {path}: {e}");
            return ExitCode::from(74);
        }
        println!("trace: {path} ({} lines)", t.lines().count());
    }
    ExitCode::from(o.verdict.exit_code())
}

/// Shrinks a failing seed to the fewest fault and workload rates that still fail it.
fn shrink(mut a: Args) -> ExitCode {
    let seed = a.seeds.0;
    match echo_sim::run::shrink(seed, &a.opts) {
        None => {
            println!("seed {seed} passes: nothing to shrink");
            ExitCode::SUCCESS
        }
        Some(s) => {
            println!(
                "seed {seed} still fails ({:?}) with only these rates: {} ({} runs)",
                s.verdict,
                if s.needed.is_empty() {
                    "none (the workload alone)".to_string()
                } else {
                    s.needed.join(", ")
                },
                s.runs
            );
            a.opts.zeroed = s.zeroed;
            println!("replay: {}", replay_cmd(seed, &a));
            ExitCode::from(s.verdict.exit_code())
        }
    }
}

/// Which SPEC.md transitions a suite of seeds exercised.
fn coverage(a: Args) -> ExitCode {
    let (lo, hi) = a.seeds;
    let next = Arc::new(AtomicU64::new(lo));
    let seen = Arc::new(Mutex::new(std::collections::BTreeSet::<&'static str>::new()));
    let workers: Vec<_> = (0..a.jobs)
        .map(|_| {
            let (next, seen, opts) = (next.clone(), seen.clone(), a.opts.clone());
            std::thread::spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if seed >= hi {
                    break;
                }
                let o = run_seed(seed, &opts, None);
                if let Ok(mut s) = seen.lock() {
                    s.extend(o.fired);
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    print!("{}", coverage_table(lo, hi, &seen));
    ExitCode::SUCCESS
}

/// The coverage report: per machine, the transitions no seed fired (CI greps the
/// `not covered:` lists against sim/COVERAGE.md).
fn coverage_table(lo: u64, hi: u64, seen: &std::collections::BTreeSet<&'static str>) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut total = 0;
    let mut covered = 0;
    let _ = writeln!(out, "transition coverage of seeds {lo}..{hi}:");
    for m in echo_statemachine::spec::machines() {
        let missing: Vec<&str> = m
            .transitions
            .iter()
            .map(|t| t.id)
            .filter(|id| !seen.contains(id))
            .collect();
        total += m.transitions.len();
        covered += m.transitions.len() - missing.len();
        let _ = writeln!(
            out,
            "  {:<16} {:>3}/{:<3} {}",
            m.name,
            m.transitions.len() - missing.len(),
            m.transitions.len(),
            if missing.is_empty() {
                String::new()
            } else {
                format!("not covered: {}", missing.join(" "))
            }
        );
    }
    let _ = writeln!(out, "total {covered}/{total}");
    out
}

fn trace_cmd(it: impl Iterator<Item = String>) -> ExitCode {
    let args: Vec<String> = it.collect();
    let read = |path: &str| match std::fs::read_to_string(path) {
        Ok(t) => Some(t),
        Err(e) => {
            eprintln!("echo-sim: cannot read {path}: {e}");
            None
        }
    };
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["check", path] => {
            let Some(text) = read(path) else {
                return ExitCode::from(66);
            };
            match echo_sim::trace::check(&text) {
                Ok(c) => {
                    println!(
                        "{path}: ok — {} steps, all SPEC.md transitions; {} faults, {} violations",
                        c.steps, c.faults, c.violations
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{path}: {e}");
                    ExitCode::from(1)
                }
            }
        }
        ["render", path, rest @ ..] => {
            let out = match rest {
                [] => std::path::Path::new(path).with_extension("html"),
                ["-o" | "--output", out] => std::path::PathBuf::from(out),
                _ => {
                    eprintln!("echo-sim: {USAGE}");
                    return ExitCode::from(64);
                }
            };
            if out == std::path::Path::new(path) {
                eprintln!("echo-sim: refusing to overwrite the trace {path} with its rendering");
                return ExitCode::from(64);
            }
            let Some(text) = read(path) else {
                return ExitCode::from(66);
            };
            let html = match echo_sim::render::render_html(&text) {
                Ok(h) => h,
                Err(e) => {
                    eprintln!("{path}: {e}");
                    return ExitCode::from(1);
                }
            };
            if let Err(e) = std::fs::write(&out, html.as_bytes()) {
                eprintln!("echo-sim: cannot write {}: {e}", out.display());
                return ExitCode::from(73);
            }
            let abs = std::fs::canonicalize(&out).unwrap_or_else(|_| out.clone());
            println!(
                "{}: {} KiB — open file://{}#filter=<intent, command or trade id>",
                out.display(),
                html.len() / 1024,
                abs.display()
            );
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("echo-sim: {USAGE}");
            ExitCode::from(64)
        }
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let cmd = args.next();
    let parsed = match cmd.as_deref() {
        Some("run") => parse(args, false).map(run),
        Some("replay") => parse(args, true).map(replay),
        Some("coverage") => parse(args, false).map(coverage),
        Some("shrink") => parse(args, false).map(shrink),
        Some("trace") => return trace_cmd(args),
        _ => Err(USAGE.to_string()),
    };
    match parsed {
        Ok(code) => code,
        Err(e) => {
            eprintln!("echo-sim: {e}\n{USAGE}");
            ExitCode::from(64)
        }
    }
}
