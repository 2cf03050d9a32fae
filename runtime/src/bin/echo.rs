//! `echo` — Echo's operator command, and the one binary behind every Echo process.
//!
//! `echo demo` runs the main job as real processes (see `echo_runtime::app::demo`); `echo core`,
//! `echo agent` and `echo terminal` are the processes themselves (`echo-core` and `echo-agent`
//! are the same entry points under their own names); `echo journal` and `echo config` are the
//! operator's read-only tools.

use std::process::ExitCode;

use echo_runtime::app::{self, AppError};

const USAGE: &str = "usage: echo <command> [options]   (echo <command> --help for its options)

  demo       run core, agents and terminals as processes, kill some mid-stream, report
  bench      peers: durable fan-out on Echo and on NATS JetStream, one table
  loadtest   drive a load through real processes; write metrics.json and report.html
  core       the core process (gRPC link, journal, config)
  agent      an agent process (ledger, terminal pipes, core link)
  terminal   a reference master / slave terminal on an agent's pipe
  journal    ls | show TRADE_ID: what the journal holds
  config     check FILE | hash-token | new-token";

fn runtime() -> Result<tokio::runtime::Runtime, AppError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(AppError::io("starting the tokio runtime"))
}

fn run(cmd: &str, rest: &[String]) -> Result<ExitCode, AppError> {
    match cmd {
        "demo" => {
            if rest.iter().any(|a| a == "-h" || a == "--help") {
                println!("{}", app::demo::USAGE);
                return Ok(ExitCode::SUCCESS);
            }
            let ok = app::demo::run(app::demo::DemoOptions::parse(rest)?)?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        "bench" => Ok(if app::bench::run(rest)? {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }),
        "loadtest" => {
            if rest.iter().any(|a| a == "-h" || a == "--help") {
                println!("{}", app::loadtest::USAGE);
                return Ok(ExitCode::SUCCESS);
            }
            let ok = app::loadtest::run(app::loadtest::options::LoadtestOptions::parse(rest)?)?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        "core" => runtime()?
            .block_on(app::core::main(rest))
            .map(|_| ExitCode::SUCCESS),
        "agent" => runtime()?
            .block_on(app::agent::main(rest))
            .map(|_| ExitCode::SUCCESS),
        "terminal" => {
            if rest.iter().any(|a| a == "-h" || a == "--help") {
                println!("{}", echo_runtime::terminal::USAGE);
                return Ok(ExitCode::SUCCESS);
            }
            let args = echo_runtime::terminal::TerminalArgs::parse(rest.iter().cloned())
                .map_err(|e| AppError::Usage(format!("{e}\n{}", echo_runtime::terminal::USAGE)))?;
            echo_runtime::observe::init_logging(false);
            Ok(runtime()?.block_on(echo_runtime::terminal::run(args)))
        }
        "journal" => runtime()?
            .block_on(app::cli::journal(rest))
            .map(|_| ExitCode::SUCCESS),
        "config" => app::cli::config(rest).map(|ok| {
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => Err(AppError::Usage(format!(
            "unknown command {other:?}\n{USAGE}"
        ))),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    };
    match run(cmd, rest) {
        Ok(code) => code,
        Err(AppError::Usage(msg)) => {
            eprintln!("echo {cmd}: {msg}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("echo {cmd}: {e}");
            ExitCode::from(2)
        }
    }
}
