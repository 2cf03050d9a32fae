//! Echo's configuration: one key space, two sources, strict validation, live changes.
//!
//! **Owns**: the typed [`EchoConfig`] (core, agent, subscriptions, agents); the key layout
//! shared by the TOML file and etcd (`[core.router] worker_pool_size` ≡
//! `/echo/core/router/worker_pool_size`, listed in SPEC.md §5); validation through the
//! machines' own [`KeySpec`](echo_statemachine::config::KeySpec)s; the etcd snapshot + watch;
//! hashed agent tokens and their constant-time check.
//!
//! **Must never**: clamp a value (out of range is a [`ConfigError`] naming key, value and range;
//! the old value stays); accept an unknown key; print a token, a token hash or a journal
//! password (in `Debug`, `Display` or a log line); decide anything about trades.
//!
//! # How a driver uses it
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use echo_runtime::config::{ConfigEvent, ConfigSource, EtcdSource};
//! // Embedded default: a TOML file. Production: etcd (optionally over a local file).
//! let handle = ConfigSource::File("echo.toml".into()).open().await?;
//! let mut etcd = EtcdSource::new(["http://127.0.0.1:2379"]);
//! etcd.base_file = Some("echo.toml".into());
//! let handle = ConfigSource::Etcd(etcd).open().await?;
//!
//! let cfg = handle.current();                 // Arc<EchoConfig>, always valid
//! let mut rx = handle.subscribe();            // tokio watch of the config in effect
//! let mut events = handle.events();           // what changed and how
//! tokio::spawn(async move {
//!     while rx.changed().await.is_ok() {
//!         let snap = rx.borrow_and_update().clone();
//!         // feed snap.config.core.delivery / agent.delivery / subscriptions to the machine,
//!         // snap.version as DeliveryHeartbeat::config_version
//!     }
//! });
//! if let Ok(ConfigEvent::RestartRequired { key, .. }) = events.recv().await { /* metric */ }
//! // Agent auth (core side):
//! let entry = cfg.authenticate(&"agent-1".into(), "presented-token")?;
//! # Ok(()) }
//! ```
//!
//! # Change rules (etcd)
//! - `/echo/core/delivery/*`, `/echo/agent/delivery/*`, `/echo/subscriptions/*`,
//!   `/echo/agents/*` apply live: the watch channel gets the new config and
//!   [`ConfigEvent::Applied`] is sent.
//! - Router keys and process settings (addresses, paths, journal, TLS) are valid-checked, then
//!   logged and reported as [`ConfigEvent::RestartRequired`]; the config in effect keeps the
//!   old value ([`ConfigSnapshot::restart_pending`] lists them).
//! - An invalid value is [`ConfigEvent::Rejected`] with a `warn` line naming key, value and
//!   range; the old value stays. The changes of one etcd transaction are applied together.
//! - The watch reconnects with capped exponential backoff and resumes from the last revision
//!   ([`ConfigEvent::Disconnected`] / [`ConfigEvent::Reconnected`]); if etcd compacted past
//!   it, everything is re-read and the difference applied.
//! - At startup everything in etcd applies (router keys too); invalid keys are refused one by
//!   one ([`ConfigHandle::startup_rejections`]) and the rest load. A base TOML file, if any,
//!   must be fully valid.

mod error;
mod etcd;
mod file;
mod keys;
mod model;
mod source;
mod store;
mod token;

pub use error::{ConfigError, OpenError};
pub use file::{
    check_file, exercise_untrusted, flatten_toml, parse_pairs, parse_toml, EXAMPLE_TOML,
};
pub use keys::{apply_class, build, loggable_value, Apply, FlatConfig, RawValue, PREFIX};
pub use model::{
    redact_url, AgentEntry, AgentSection, AgentTls, CoreSection, CoreTls, EchoConfig,
    JournalBackend, Role, DEFAULT_CORE_ADDR, DEFAULT_DATA_DIR, DEFAULT_JOURNAL,
    DEFAULT_LISTEN_ADDR, DEFAULT_METRICS_ADDR,
};
pub use source::{ConfigHandle, ConfigSource, EtcdSource, EVENT_CAPACITY};
pub use store::{Change, ConfigEvent, ConfigSnapshot, ConfigStore};
pub use token::{generate_token, hash_token, verify_token, AuthError, SecretToken, TokenHash};
