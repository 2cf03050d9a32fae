//! `echo agent`: the agent process. Config → ledger → `DeliveryManager::recover` from the
//! ledger → the agent task → the terminals' pipes, the reconnecting core link and the metrics
//! endpoint. It must never decide about trades.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use echo_statemachine::agent::{AgentLimits, DeliveryManager};
use echo_statemachine::ids::{AccountId, AgentId};
use echo_statemachine::msg::Role;
use tokio::sync::mpsc;

use super::{process_start, shutdown_signal, AppError};
use crate::config::{self, EchoConfig};
use crate::drivers::agent::{
    spawn_agent, AgentHandle, AgentInput, LedgerWriterPort, PipeServerPort,
};
use crate::ledger::Ledger;
use crate::link::client::{run_client, ClientSettings};
use crate::link::tls::client_config;
use crate::observe::{spawn_http, AgentObserved};
use crate::pipe::{default_socket_dir, PipeEvent, PipeServer, PipeServerConfig};

pub const USAGE: &str = "usage: echo agent [--config FILE] [--etcd URLS] [--id ID] [--token-file FILE]
                  [--data-dir DIR] [--socket-dir DIR] [--metrics-addr ADDR] [--json-logs]

  --id ID            this agent's id (default /echo/agent/id); its accounts come from /echo/agents/ID
  --token-file FILE  file holding this agent's token (default /echo/agent/token_file)
  --data-dir DIR     where the ledger lives (default /echo/agent/data_dir)
  --socket-dir DIR   the terminals' sockets (default $ECHO_SOCKET_DIR or /tmp/echo-pipes)
  --metrics-addr A   /metrics, /healthz, /readyz (default /echo/agent/metrics_addr)";

/// Everything an agent process needs, resolved from config and flags.
#[derive(Clone, Debug)]
pub struct AgentSettings {
    pub id: AgentId,
    pub token: String,
    pub accounts: Vec<(AccountId, Role)>,
    pub data_dir: PathBuf,
    pub socket_dir: PathBuf,
    pub metrics_addr: Option<SocketAddr>,
    pub link: ClientSettings,
    /// `/echo/agent/delivery/*` from local config: used until the core's first hello.
    pub delivery: echo_statemachine::config::AgentDeliveryConfig,
}

impl AgentSettings {
    pub fn resolve(
        cfg: &EchoConfig,
        flags: &std::collections::BTreeMap<String, String>,
    ) -> Result<AgentSettings, AppError> {
        let id = flags
            .get("--id")
            .map(AgentId::new)
            .or_else(|| cfg.agent.id.clone())
            .ok_or_else(|| {
                AppError::Usage("no agent id: pass --id or set /echo/agent/id".into())
            })?;
        let entry = cfg.agents.get(&id).ok_or_else(|| {
            AppError::Usage(format!(
                "agent {id} is not configured under /echo/agents/{id}"
            ))
        })?;
        let token_file = flags
            .get("--token-file")
            .map(PathBuf::from)
            .or_else(|| cfg.agent.token_file.clone())
            .ok_or_else(|| {
                AppError::Usage(
                    "no token file: pass --token-file or set /echo/agent/token_file".into(),
                )
            })?;
        let token = std::fs::read_to_string(&token_file)
            .map_err(AppError::io(format!(
                "reading the token file {}",
                token_file.display()
            )))?
            .trim()
            .to_string();
        if token.is_empty() {
            return Err(AppError::Usage(format!(
                "token file {} is empty",
                token_file.display()
            )));
        }
        let accounts = entry
            .accounts
            .iter()
            .map(|(a, r)| {
                let role = match r {
                    config::Role::Master => Role::Master,
                    config::Role::Slave => Role::Slave,
                };
                (a.clone(), role)
            })
            .collect();
        let mut link = ClientSettings::new(cfg.agent.core_addr.clone());
        link.keepalive = Duration::from_millis(u64::from(cfg.agent.delivery.heartbeat_interval_ms));
        if cfg.agent.core_addr.starts_with("https://") {
            let ca = cfg.agent.tls.ca.as_deref().ok_or_else(|| {
                AppError::Usage("an https:// core address needs /echo/agent/tls/ca".into())
            })?;
            let host = cfg
                .agent
                .core_addr
                .trim_start_matches("https://")
                .split([':', '/'])
                .next()
                .unwrap_or("localhost")
                .to_string();
            let identity = match (&cfg.agent.tls.cert, &cfg.agent.tls.key) {
                (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
                _ => None,
            };
            link.tls = Some(client_config(ca, &host, identity)?);
        }
        Ok(AgentSettings {
            id,
            token,
            accounts,
            data_dir: flags
                .get("--data-dir")
                .map(PathBuf::from)
                .unwrap_or_else(|| cfg.agent.data_dir.clone()),
            socket_dir: flags
                .get("--socket-dir")
                .map(PathBuf::from)
                .unwrap_or_else(default_socket_dir),
            metrics_addr: match flags.get("--metrics-addr") {
                Some(a) => Some(a.parse().map_err(|_| {
                    AppError::Usage(format!("--metrics-addr expects host:port, got {a:?}"))
                })?),
                None => cfg.agent.metrics_addr,
            },
            link,
            delivery: cfg.agent.delivery,
        })
    }
}

pub struct RunningAgent {
    pub handle: AgentHandle,
    pub metrics_addr: Option<SocketAddr>,
    _pipes: PipeServer,
    ledger: Ledger,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningAgent {
    pub async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.ledger.close().await;
    }
}

pub async fn start(s: AgentSettings) -> Result<RunningAgent, AppError> {
    let ledger = Ledger::open_in(&s.data_dir).await?;
    let records = ledger.load().await?;
    tracing::info!(agent = %s.id, records = records.len(), accounts = s.accounts.len(), "ledger loaded");
    let machine = DeliveryManager::recover(
        s.id.clone(),
        s.accounts.clone(),
        s.delivery,
        AgentLimits::default(),
        records,
    );
    let (pipes, mut pipe_events) =
        PipeServer::bind(PipeServerConfig::new(&s.socket_dir, s.accounts.clone())).await?;
    let (tx, rx) = mpsc::channel(8_192);
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let (handle, join) = spawn_agent(
        machine,
        s.id.clone(),
        s.token.clone(),
        PipeServerPort {
            sender: pipes.sender(),
        },
        LedgerWriterPort {
            ledger: ledger.clone(),
            done: done_tx,
        },
        done_rx,
        (tx.clone(), rx),
    );
    let mut tasks = vec![join];

    // Pipe events → the machine.
    let inputs = tx.clone();
    tasks.push(tokio::spawn(async move {
        while let Some(ev) = pipe_events.recv().await {
            let input = match ev {
                PipeEvent::Connected { account, .. } => AgentInput::PipeUp { account },
                PipeEvent::Message { account, msg, .. } => AgentInput::FromEa { account, msg },
                PipeEvent::Closed { account, .. } => AgentInput::PipeDown { account },
                ev @ PipeEvent::WriteFailed { .. } => match ev.failed_command() {
                    Some((account, command_id)) => AgentInput::PipeWriteFailed {
                        account: account.clone(),
                        command_id: command_id.clone(),
                    },
                    None => continue,
                },
                // Answered with an error frame and logged by the pipe layer.
                _ => continue,
            };
            if inputs.send(input).await.is_err() {
                return;
            }
        }
    }));

    // The core link → the machine.
    let (link_tx, mut link_rx) = mpsc::channel(1_024);
    let settings = s.link.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = run_client(settings, link_tx).await {
            tracing::error!(error = %e, "core link cannot start");
        }
    }));
    let inputs = tx.clone();
    tasks.push(tokio::spawn(async move {
        while let Some(ev) = link_rx.recv().await {
            if inputs.send(AgentInput::Link(ev)).await.is_err() {
                return;
            }
        }
    }));

    let metrics_addr = match s.metrics_addr {
        Some(addr) => Some(
            spawn_http(
                addr,
                Arc::new(AgentObserved {
                    status: handle.status.clone(),
                }),
            )
            .await
            .map_err(AppError::io(format!("binding metrics on {addr}")))?,
        ),
        None => None,
    };
    tracing::info!(agent = %s.id, sockets = %s.socket_dir.display(), core = %s.link.endpoint, "echo agent ready");
    Ok(RunningAgent {
        handle,
        metrics_addr,
        _pipes: pipes,
        ledger,
        tasks,
    })
}

/// `echo agent …` until SIGTERM / Ctrl-C.
pub async fn main(args: &[String]) -> Result<(), AppError> {
    let Some((flags, source)) = process_start(
        args,
        USAGE,
        &[
            "--id",
            "--token-file",
            "--data-dir",
            "--socket-dir",
            "--metrics-addr",
        ],
    )?
    else {
        return Ok(());
    };
    let cfg = source.open().await?;
    let settings = AgentSettings::resolve(&cfg.current(), &flags)?;
    // Live agent delivery settings arrive from the core in every heartbeat; the local config's
    // copy only seeds the machine until the first CoreHello.
    let agent = start(settings).await?;
    shutdown_signal().await;
    tracing::info!("stopping");
    agent.stop().await;
    Ok(())
}
