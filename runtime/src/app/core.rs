//! `echo core`: the core process. Config → journal → `Core::recover` from the journal → the
//! core task → the link server (TLS or loopback plain text) and the metrics endpoint; config
//! changes flow to the machine live. It must never decide about trades.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use echo_statemachine::core::{Core, CoreConfig};
use echo_statemachine::ids::{AccountId, AgentId};
use echo_statemachine::msg::Role;
use echo_statemachine::time::Instant;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use super::{process_start, shutdown_signal, AppError};
use crate::config::{self, AuthError, ConfigHandle, EchoConfig, JournalBackend};
use crate::drivers::core::{spawn_core, CoreHandle, CoreInput, JournalWriterPort};
use crate::journal::{Journal, JournalOptions, PostgresOptions};
use crate::link::server::{serve, Authenticator, LinkMetrics, LinkService, Refusal, Transport};
use crate::link::tls::{server_config, TlsFiles};
use crate::observe::{spawn_http, CoreObserved};

pub const USAGE: &str = "usage: echo core [--config FILE] [--etcd URL[,URL…]] [--json-logs]

  --config FILE   TOML config (embedded default; with --etcd, the base under etcd's keys)
  --etcd URLS     read /echo/* from etcd and watch it (delivery keys and subscriptions apply live)
  --json-logs     JSON log lines on stderr (default: human-readable)";

/// Checks an agent's hello against the agents configured now.
pub struct ConfigAuth(pub ConfigHandle);

impl Authenticator for ConfigAuth {
    fn authenticate(
        &self,
        agent: &AgentId,
        token: &str,
        accounts: &[(AccountId, Role)],
    ) -> Result<(), Refusal> {
        let cfg = self.0.current();
        let entry = cfg.authenticate(agent, token).map_err(|e| match e {
            AuthError::UnknownAgent(_) | AuthError::NoSuchToken => Refusal::UnknownAgent,
            AuthError::WrongToken(_) => Refusal::BadToken,
        })?;
        let allowed = accounts.iter().all(|(a, r)| {
            let role = match r {
                Role::Master => config::Role::Master,
                Role::Slave => config::Role::Slave,
            };
            entry.may_speak_for(a, role)
        });
        if allowed {
            Ok(())
        } else {
            Err(Refusal::AccountNotAllowed)
        }
    }
}

/// Opens the journal the config names (a relative SQLite path is under the data dir).
/// Completed intent ids the core keeps for cheap re-acks (`CoreConfig::recent_intents`); an
/// older repeat is answered from the journal (`IntentExisted`), so this only trades memory for
/// a journal read. It was 65 536 (about 7 MB of ids, filling for nine minutes at 120
/// intents/s: the core's RSS rose through a 15-minute load test); 16 384 is two minutes of
/// that load, longer than a master's retries take to repeat an intent the core acknowledged.
pub const RECENT_INTENTS: usize = 16_384;

pub async fn open_journal(cfg: &EchoConfig) -> Result<Journal, AppError> {
    Ok(match &cfg.core.journal {
        JournalBackend::Sqlite(path) => {
            let path = if path.is_absolute() {
                path.clone()
            } else {
                cfg.core.data_dir.join(path)
            };
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(AppError::io(format!("creating {}", dir.display())))?;
            }
            Journal::open_sqlite(&path, JournalOptions::default()).await?
        }
        JournalBackend::Postgres(url) => {
            Journal::open_postgres(PostgresOptions::new(url.clone()), JournalOptions::default())
                .await?
        }
    })
}

/// What a started core exposes (tests and the demo use the bound addresses).
pub struct RunningCore {
    pub link_addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub handle: CoreHandle,
    pub link_metrics: Arc<LinkMetrics>,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<Result<(), crate::link::server::ServeError>>,
    journal: Journal,
}

impl RunningCore {
    /// Stops accepting, lets the journal finish what is queued.
    pub async fn stop(mut self) -> Result<(), AppError> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let r = self.server.await;
        self.journal.close().await;
        match r {
            Ok(r) => r.map_err(AppError::from),
            Err(e) => Err(AppError::Usage(format!("link server task: {e}"))),
        }
    }

    /// Waits until the link server ends by itself (it only does on error).
    pub async fn wait(&mut self) -> Result<(), AppError> {
        match (&mut self.server).await {
            Ok(r) => r.map_err(AppError::from),
            Err(e) => Err(AppError::Usage(format!("link server task: {e}"))),
        }
    }
}

/// Starts every part of the core from an opened config.
pub async fn start(cfg_handle: ConfigHandle) -> Result<RunningCore, AppError> {
    let snap0 = cfg_handle.snapshot();
    let cfg = snap0.config.clone();
    for r in cfg_handle.startup_rejections() {
        tracing::warn!(event = ?r, "config key refused at start-up; its default stays");
    }
    let journal = open_journal(&cfg).await?;
    let durable = journal.load().await?;
    tracing::info!(
        unfinished = durable.unfinished.len(),
        open_positions = durable.open_tickets.len(),
        "journal loaded; unfinished deliveries resume when their agents say hello"
    );
    let core_cfg = CoreConfig {
        router: cfg.core.router,
        delivery: cfg.core.delivery,
        agent_delivery: cfg.agent.delivery,
        subscriptions: cfg.subscriptions.clone(),
        recent_intents: RECENT_INTENTS,
    };
    let core = Core::recover(core_cfg, durable, Instant::ZERO);
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let listener = TcpListener::bind(cfg.core.listen_addr)
        .await
        .map_err(AppError::io(format!(
            "binding the link on {}",
            cfg.core.listen_addr
        )))?;
    let link_addr = listener
        .local_addr()
        .map_err(AppError::io("link address"))?;
    let core_id = format!("echo-core@{link_addr}");
    let (handle, _join) = spawn_core(
        core,
        core_id,
        JournalWriterPort {
            journal: journal.clone(),
            done: done_tx,
        },
        done_rx,
        8_192,
    );

    // Live config: delivery keys and subscriptions go to the machine as they change.
    // The snapshot also changes when only the etcd revision or the restart-pending list moved
    // (a refused value, a router key): that is no new config, so no new `config_version`.
    let mut watch = cfg_handle.subscribe();
    let mut applied_version = snap0.version;
    if watch.borrow().version != applied_version {
        watch.mark_changed(); // it changed while the core was starting
    }
    let inputs = handle.inputs.clone();
    tokio::spawn(async move {
        while watch.changed().await.is_ok() {
            let snap = watch.borrow_and_update().clone();
            if snap.version == applied_version {
                continue;
            }
            applied_version = snap.version;
            let c = &snap.config;
            let sent = inputs
                .send(CoreInput::DeliveryConfig {
                    core: c.core.delivery,
                    agent: c.agent.delivery,
                })
                .await
                .is_ok()
                && inputs
                    .send(CoreInput::Subscriptions(c.subscriptions.clone()))
                    .await
                    .is_ok();
            if !sent {
                return;
            }
            tracing::info!(version = snap.version, "config change applied to the core");
        }
    });

    let transport = if cfg.core.tls.enabled() {
        let (Some(cert), Some(key)) = (cfg.core.tls.cert.clone(), cfg.core.tls.key.clone()) else {
            return Err(AppError::Usage("TLS needs both cert and key".into()));
        };
        let files = TlsFiles {
            cert,
            key,
            ca: if cfg.core.tls.require_client_cert {
                cfg.core.tls.client_ca.clone()
            } else {
                None
            },
        };
        Transport::Tls(server_config(&files)?)
    } else {
        Transport::Plain
    };
    let link_metrics = Arc::new(LinkMetrics::default());
    let metrics_addr = match cfg.core.metrics_addr {
        Some(addr) => Some(
            spawn_http(
                addr,
                Arc::new(CoreObserved {
                    status: handle.status.clone(),
                    link: link_metrics.clone(),
                }),
            )
            .await
            .map_err(AppError::io(format!("binding metrics on {addr}")))?,
        ),
        None => None,
    };
    let svc = LinkService::new(
        handle.inputs.clone(),
        Arc::new(ConfigAuth(cfg_handle.clone())),
        link_metrics.clone(),
    );
    let keepalive = Duration::from_millis(u64::from(cfg.core.delivery.heartbeat_interval_ms));
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    // Bind errors are returned above; a plain-text link on a public address fails here.
    if matches!(transport, Transport::Plain) && !link_addr.ip().is_loopback() {
        return Err(crate::link::server::ServeError::PlainOnPublicAddress(link_addr).into());
    }
    let server = tokio::spawn(serve(listener, transport, svc, keepalive, async move {
        let _ = stop_rx.await;
    }));
    tracing::info!(%link_addr, metrics = ?metrics_addr, "echo core ready");
    Ok(RunningCore {
        link_addr,
        metrics_addr,
        handle,
        link_metrics,
        stop: Some(stop_tx),
        server,
        journal,
    })
}

/// `echo core …` until SIGTERM / Ctrl-C.
pub async fn main(args: &[String]) -> Result<(), AppError> {
    let Some((_, source)) = process_start(args, USAGE, &[])? else {
        return Ok(());
    };
    let mut core = start(source.open().await?).await?;
    tokio::select! {
        r = core.wait() => r,
        _ = shutdown_signal() => {
            tracing::info!("stopping");
            core.stop().await
        }
    }
}
