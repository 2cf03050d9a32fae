//! The processes: `echo core` / `echo-core` and `echo agent` / `echo-agent`, assembled from the
//! drivers, the journal or ledger, the config source, the link and the pipes.
//!
//! Owns start-up order (config → storage → recover the machine → listeners), the mapping of
//! config onto the machines, and shutdown on SIGTERM / Ctrl-C. It must never decide about
//! trades; every refusal it makes is about the process (a config it cannot use, a port it
//! cannot bind), reported as an [`AppError`] naming what is wrong.

pub mod agent;
pub mod bench;
pub mod cli;
pub mod cluster;
pub mod core;
pub mod demo;
pub mod loadtest;

use std::path::PathBuf;

use crate::config::{ConfigSource, EtcdSource};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Usage(String),
    #[error("config: {0}")]
    Config(#[from] crate::config::OpenError),
    #[error("journal: {0}")]
    Journal(#[from] crate::journal::JournalError),
    #[error("ledger: {0}")]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error("pipes: {0}")]
    Pipe(#[from] crate::pipe::PipeError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::link::tls::TlsError),
    #[error("link: {0}")]
    Serve(#[from] crate::link::server::ServeError),
    #[error("core link: {0}")]
    Client(#[from] crate::link::client::ClientError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl AppError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AppError {
        let what = what.into();
        move |source| AppError::Io { what, source }
    }
}

/// `--config FILE` and/or `--etcd URL[,URL…]`: where the process reads its config.
pub fn config_source(config: Option<PathBuf>, etcd: Option<String>) -> ConfigSource {
    match etcd {
        Some(urls) => {
            let mut e = EtcdSource::new(urls.split(',').map(str::trim).filter(|s| !s.is_empty()));
            e.base_file = config;
            ConfigSource::Etcd(e)
        }
        None => match config {
            Some(path) => ConfigSource::File(path),
            None => ConfigSource::Defaults,
        },
    }
}

/// Resolves when the process is asked to stop (SIGTERM or Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Parses `--flag value` pairs; every flag must be in `known`.
pub fn parse_flags(
    args: &[String],
    known: &[&str],
    switches: &[&str],
) -> Result<std::collections::BTreeMap<String, String>, AppError> {
    let mut out = std::collections::BTreeMap::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if switches.contains(&a.as_str()) {
            out.insert(a.clone(), String::new());
        } else if known.contains(&a.as_str()) {
            let v = it
                .next()
                .ok_or_else(|| AppError::Usage(format!("{a} needs a value")))?;
            out.insert(a.clone(), v.clone());
        } else {
            return Err(AppError::Usage(format!("unknown option {a:?}")));
        }
    }
    Ok(out)
}

/// Parsed `--flag value` pairs.
pub type Flags = std::collections::BTreeMap<String, String>;

/// The common start of `echo core` / `echo agent`: parses `--config`, `--etcd`, `--json-logs`,
/// `-h` and the process's own `extra` flags, prints `usage` for `-h`, sets up logging.
/// `None` when only the usage was asked for.
pub fn process_start(
    args: &[String],
    usage: &str,
    extra: &[&str],
) -> Result<Option<(Flags, ConfigSource)>, AppError> {
    let mut known = vec!["--config", "--etcd"];
    known.extend_from_slice(extra);
    let flags = parse_flags(args, &known, &["--json-logs", "-h", "--help"])?;
    if flags.contains_key("-h") || flags.contains_key("--help") {
        println!("{usage}");
        return Ok(None);
    }
    crate::observe::init_logging(flags.contains_key("--json-logs"));
    let source = config_source(
        flags.get("--config").map(PathBuf::from),
        flags.get("--etcd").cloned(),
    );
    Ok(Some((flags, source)))
}

/// A process binary's `main`: a multi-threaded runtime around `body`, errors on stderr
/// prefixed with `name`, exit code 2 on error.
pub fn run_process<F>(name: &str, body: impl FnOnce(Vec<String>) -> F) -> std::process::ExitCode
where
    F: std::future::Future<Output = Result<(), AppError>>,
{
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: starting the runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match rt.block_on(body(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
