//! `echo` — Echo's operator command.
//!
//! `echo demo` copies trades from masters to slaves through the real Echo machines (core,
//! agents, master IntentQueue, slave executor) and prints the run's ledger. Until the runtime
//! issue lands real processes, gRPC and on-disk storage, the demo runs every machine in this
//! process over simulated time and storage; its exit code is non-zero if anything was lost,
//! executed twice or delivered out of order.

use std::io::Write;
use std::process::ExitCode;

use echo_sim::world::WorldConfig;

const USAGE: &str = "usage: echo demo [--masters N] [--slaves N] [--trades N]

  --masters N   master accounts (default 1, 1..=16)
  --slaves N    slaves per master (default 5, 1..=64)
  --trades N    trades per master, each open → modify → partial close → close (default 200, 1..=100000)";

fn parse_num(flag: &str, raw: Option<String>, min: usize, max: usize) -> Result<usize, String> {
    let raw = raw.ok_or_else(|| format!("{flag} needs a value"))?;
    let v: usize = raw
        .parse()
        .map_err(|_| format!("{flag} expects an integer, got {raw:?}"))?;
    if v < min || v > max {
        return Err(format!("{flag} must be in {min}..={max}, got {v}"));
    }
    Ok(v)
}

fn demo(args: impl Iterator<Item = String>) -> Result<ExitCode, String> {
    let mut cfg = WorldConfig {
        trades: 200,
        ..WorldConfig::default()
    };
    let mut args = args.peekable();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--masters" => cfg.masters = parse_num("--masters", args.next(), 1, 16)?,
            "--slaves" => cfg.slaves_per_master = parse_num("--slaves", args.next(), 1, 64)?,
            "--trades" => cfg.trades = parse_num("--trades", args.next(), 1, 100_000)?,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            other => return Err(format!("unknown option {other:?}\n{USAGE}")),
        }
    }
    println!(
        "echo demo: {} master(s) × {} slaves, {} trades each (in-process machines, simulated time)",
        cfg.masters, cfg.slaves_per_master, cfg.trades
    );
    let mut last = u64::MAX;
    let (report, settled) = echo_sim::run_world(cfg, |done, total| {
        let pct = done * 100 / total.max(1);
        if pct != last {
            last = pct;
            let bar = "#".repeat((pct / 4) as usize);
            eprint!("\r[{bar:<25}] {pct:>3}% intents emitted {done}/{total}");
            let _ = std::io::stderr().flush();
        }
    });
    eprintln!();
    println!("{report}");
    if !settled {
        println!("NOT SETTLED: deliveries were still open when the time budget ran out");
    }
    if report.is_clean() && settled {
        println!("result: OK — nothing lost, nothing duplicated, order kept");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("result: FAILED");
        Ok(ExitCode::from(1))
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let result = match args.next().as_deref() {
        Some("demo") => demo(args),
        Some("-h" | "--help") | None => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => Err(format!("unknown command {other:?}\n{USAGE}")),
    };
    match result {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("echo: {msg}");
            ExitCode::from(2)
        }
    }
}
