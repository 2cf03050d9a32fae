//! [`ConfigSource`] → [`ConfigHandle`]: how drivers get the config and hear about changes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use super::error::OpenError;
use super::file::flatten_toml;
use super::keys::FlatConfig;
use super::model::EchoConfig;
use super::store::{ConfigEvent, ConfigSnapshot, ConfigStore};

/// Where the config comes from.
#[derive(Clone, Debug)]
pub enum ConfigSource {
    /// Every key at its default (no subscriptions, no agents).
    Defaults,
    /// TOML text (e.g. a demo's generated config).
    Toml(String),
    /// A TOML file, read once.
    File(PathBuf),
    /// etcd: snapshot at open, then watched.
    Etcd(EtcdSource),
}

/// etcd connection settings.
#[derive(Clone, Debug)]
pub struct EtcdSource {
    /// e.g. `["http://127.0.0.1:2379"]`.
    pub endpoints: Vec<String>,
    /// Optional TOML file underneath: its keys apply where etcd has none (process-local
    /// settings such as addresses and TLS paths usually live here).
    pub base_file: Option<PathBuf>,
    /// Reconnect backoff: starts at `backoff_min`, doubles, capped at `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Bound on connecting and on each unary request.
    pub request_timeout: Duration,
}

impl EtcdSource {
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        EtcdSource {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            base_file: None,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            request_timeout: Duration::from_secs(3),
        }
    }
}

/// Capacity of the event channel; a receiver that falls further behind gets `Lagged` and
/// should re-read [`ConfigHandle::snapshot`].
pub const EVENT_CAPACITY: usize = 256;

struct Inner {
    snapshot: watch::Receiver<ConfigSnapshot>,
    events: broadcast::Sender<ConfigEvent>,
    startup: Vec<ConfigEvent>,
    // Keeps a file source's sender alive (receivers never see "closed").
    _sender: Option<watch::Sender<ConfigSnapshot>>,
    task: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// The config in effect plus its change stream. Cheap to clone; the etcd watcher stops when
/// the last clone is dropped.
#[derive(Clone)]
pub struct ConfigHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ConfigHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigHandle")
            .field("version", &self.inner.snapshot.borrow().version)
            .finish_non_exhaustive()
    }
}

impl ConfigHandle {
    /// The config in effect now.
    pub fn current(&self) -> Arc<EchoConfig> {
        self.inner.snapshot.borrow().config.clone()
    }

    /// The config in effect now, with its version, revision and pending restarts.
    pub fn snapshot(&self) -> ConfigSnapshot {
        self.inner.snapshot.borrow().clone()
    }

    /// A receiver that wakes on every applied change (`changed().await`, then `borrow()`).
    pub fn subscribe(&self) -> watch::Receiver<ConfigSnapshot> {
        self.inner.snapshot.clone()
    }

    /// Every change outcome from now on: applied, restart-required, rejected, reconnects.
    pub fn events(&self) -> broadcast::Receiver<ConfigEvent> {
        self.inner.events.subscribe()
    }

    /// Keys refused while loading the first snapshot (already logged).
    pub fn startup_rejections(&self) -> &[ConfigEvent] {
        &self.inner.startup
    }

    pub(super) fn from_parts(
        snapshot: watch::Receiver<ConfigSnapshot>,
        events: broadcast::Sender<ConfigEvent>,
        startup: Vec<ConfigEvent>,
        task: JoinHandle<()>,
    ) -> Self {
        ConfigHandle {
            inner: Arc::new(Inner {
                snapshot,
                events,
                startup,
                _sender: None,
                task: Some(task),
            }),
        }
    }

    fn fixed(cfg_flat: FlatConfig) -> Result<Self, OpenError> {
        let store = ConfigStore::new(cfg_flat).map_err(OpenError::Invalid)?;
        let (tx, rx) = watch::channel(store.snapshot());
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        Ok(ConfigHandle {
            inner: Arc::new(Inner {
                snapshot: rx,
                events,
                startup: Vec::new(),
                _sender: Some(tx),
                task: None,
            }),
        })
    }
}

pub(super) fn read_flat(path: &PathBuf) -> Result<FlatConfig, OpenError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        OpenError::Invalid(vec![super::error::ConfigError::Io {
            path: path.clone(),
            message: e.to_string(),
        }])
    })?;
    flatten_toml(&text).map_err(OpenError::Invalid)
}

impl ConfigSource {
    /// Loads the config (and for etcd starts the watcher, which needs a tokio runtime).
    /// A file with any error is refused whole, every error listed.
    pub async fn open(self) -> Result<ConfigHandle, OpenError> {
        match self {
            ConfigSource::Defaults => ConfigHandle::fixed(FlatConfig::new()),
            ConfigSource::Toml(text) => {
                ConfigHandle::fixed(flatten_toml(&text).map_err(OpenError::Invalid)?)
            }
            ConfigSource::File(path) => ConfigHandle::fixed(read_flat(&path)?),
            ConfigSource::Etcd(src) => super::etcd::open(src).await,
        }
    }
}
