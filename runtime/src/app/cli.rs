//! The operator's small commands: `echo journal ls|show` and `echo config check|hash-token`.
//! They read; they never change a journal row or a config key.

use std::path::PathBuf;

use echo_statemachine::ids::TradeId;

use super::{config_source, parse_flags, AppError};
use crate::journal::DeliveryRow;

pub const JOURNAL_USAGE: &str =
    "usage: echo journal ls [--failed] [--limit N] [--config FILE] [--etcd URLS]
       echo journal show TRADE_ID [--config FILE] [--etcd URLS]

  ls        unfinished deliveries (or, with --failed, failed ones with their reasons)
  show      everything the journal holds about one trade: intents, deliveries, retries,
            rejections and open slave positions";

pub const CONFIG_USAGE: &str = "usage: echo config check FILE
       echo config hash-token [TOKEN]      (reads the token from stdin when not given)
       echo config new-token               (prints a fresh random token and its hash)";

fn row(r: &DeliveryRow) -> String {
    let d = &r.record;
    format!(
        "{:<28} {:<14} {:<10} {:<12} {:<14} {:<8} {:>3} {}",
        d.command_id.as_str(),
        d.trade_id.as_str(),
        d.slave.as_str(),
        format!("{:?}", d.kind),
        d.stage.name(),
        format!("{:?}", d.status),
        d.attempts,
        d.reason.map(|e| e.name()).unwrap_or("")
    )
}

const HEADER: &str =
    "COMMAND                      TRADE          SLAVE      KIND         STAGE          STATUS   TRY REASON";

pub async fn journal(args: &[String]) -> Result<(), AppError> {
    let Some((cmd, rest)) = args.split_first() else {
        return Err(AppError::Usage(JOURNAL_USAGE.into()));
    };
    let (trade, rest) = if cmd == "show" {
        match rest.split_first() {
            Some((t, r)) if !t.starts_with("--") => (Some(TradeId::new(t)), r),
            _ => {
                return Err(AppError::Usage(format!(
                    "show needs a TRADE_ID\n{JOURNAL_USAGE}"
                )))
            }
        }
    } else {
        (None, rest)
    };
    let flags = parse_flags(rest, &["--config", "--etcd", "--limit"], &["--failed"])?;
    let limit: u32 = match flags.get("--limit") {
        Some(l) => l
            .parse()
            .map_err(|_| AppError::Usage(format!("--limit expects a number, got {l:?}")))?,
        None => 200,
    };
    let cfg = config_source(
        flags.get("--config").map(PathBuf::from),
        flags.get("--etcd").cloned(),
    )
    .open()
    .await?;
    let journal = super::core::open_journal(&cfg.current()).await?;
    match (cmd.as_str(), trade) {
        ("ls", _) => {
            let rows = if flags.contains_key("--failed") {
                journal.failed(limit).await?
            } else {
                journal.inflight(limit).await?
            };
            println!("{HEADER}");
            for r in &rows {
                println!("{}", row(r));
            }
            println!("({} rows)", rows.len());
        }
        ("show", Some(trade)) => {
            let t = journal.trade(&trade).await?;
            println!("trade {trade}");
            println!("intents ({}):", t.intents.len());
            for i in &t.intents {
                let it = &i.intent;
                println!(
                    "  {:<28} seq {:>6} {:?} {} {:?} vol {} price {}",
                    it.intent_id.as_str(),
                    it.master_seq,
                    it.kind,
                    it.symbol.as_str(),
                    it.side,
                    it.volume,
                    it.price
                );
            }
            println!("deliveries ({}):\n  {HEADER}", t.deliveries.len());
            for r in &t.deliveries {
                println!("  {}", row(r));
            }
            println!("retries ({}):", t.retries.len());
            for r in &t.retries {
                println!(
                    "  {} attempt {} at {} {}",
                    r.command_id.as_str(),
                    r.attempt,
                    r.stage.name(),
                    r.reason.name()
                );
            }
            println!("rejections ({}):", t.rejections.len());
            for r in &t.rejections {
                println!(
                    "  {} worker {} {}",
                    r.intent_id.as_str(),
                    r.worker,
                    r.reason.name()
                );
            }
            println!("open slave positions ({}):", t.open_tickets.len());
            for (slave, ticket) in &t.open_tickets {
                println!("  {slave} ticket {ticket}");
            }
        }
        _ => return Err(AppError::Usage(JOURNAL_USAGE.into())),
    }
    journal.close().await;
    Ok(())
}

/// `echo config …`; `Ok(false)` when a checked file is invalid (every problem printed).
pub fn config(args: &[String]) -> Result<bool, AppError> {
    match args {
        [cmd, file] if cmd == "check" => match crate::config::check_file(file) {
            Ok(cfg) => {
                println!(
                    "{file}: valid ({} agents, {} subscriptions)",
                    cfg.agents.len(),
                    cfg.subscriptions.len()
                );
                Ok(true)
            }
            Err(errors) => {
                for e in &errors {
                    println!("{file}: {e}");
                }
                println!("{file}: {} problem(s)", errors.len());
                Ok(false)
            }
        },
        [cmd, rest @ ..] if cmd == "hash-token" => {
            let token = match rest {
                [t] => t.clone(),
                [] => {
                    let mut s = String::new();
                    std::io::stdin()
                        .read_line(&mut s)
                        .map_err(AppError::io("reading the token from stdin"))?;
                    s.trim().to_string()
                }
                _ => return Err(AppError::Usage(CONFIG_USAGE.into())),
            };
            if token.is_empty() {
                return Err(AppError::Usage("the token is empty".into()));
            }
            println!("{}", crate::config::hash_token(&token));
            Ok(true)
        }
        [cmd] if cmd == "new-token" => {
            let t = crate::config::generate_token()
                .map_err(|e| AppError::Usage(format!("no randomness: {e}")))?;
            println!(
                "token {}\nhash  {}",
                t.expose(),
                crate::config::hash_token(t.expose())
            );
            Ok(true)
        }
        _ => Err(AppError::Usage(CONFIG_USAGE.into())),
    }
}
