//! The typed, validated configuration every driver reads. Built only through
//! [`super::keys::build`] (from a TOML file, etcd, or both), so an `EchoConfig` in hand has
//! passed every check.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use echo_statemachine::config::{AgentDeliveryConfig, DeliveryConfig, RouterConfig, Subscription};
use echo_statemachine::ids::{AccountId, AgentId};

use super::token::TokenHash;

/// Default core gRPC listen address.
pub const DEFAULT_LISTEN_ADDR: &str = "127.0.0.1:7700";
/// Default core `/metrics` address.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9700";
/// Default data directory (journal file, agent ledger), relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "echo-data";
/// Default journal: an SQLite file in the data directory.
pub const DEFAULT_JOURNAL: &str = "sqlite:journal.sqlite3";
/// Default core address an agent dials.
pub const DEFAULT_CORE_ADDR: &str = "http://127.0.0.1:7700";

/// Everything Echo's processes read from config.
#[derive(Clone, Debug, PartialEq)]
pub struct EchoConfig {
    pub core: CoreSection,
    pub agent: AgentSection,
    /// Every master → slave subscription, ordered by (master, slave).
    pub subscriptions: Vec<Subscription>,
    /// Every agent allowed to connect, by id.
    pub agents: BTreeMap<AgentId, AgentEntry>,
}

/// The core process (`/echo/core/*`).
#[derive(Clone, Debug, PartialEq)]
pub struct CoreSection {
    /// `/echo/core/router/*` — applies at restart.
    pub router: RouterConfig,
    /// `/echo/core/delivery/*` — applies live.
    pub delivery: DeliveryConfig,
    /// `/echo/core/listen_addr` — the gRPC address agents dial.
    pub listen_addr: SocketAddr,
    /// `/echo/core/data_dir`.
    pub data_dir: PathBuf,
    /// `/echo/core/journal` — `sqlite:PATH` (relative to `data_dir`) or a `postgres://` URL.
    pub journal: JournalBackend,
    /// `/echo/core/metrics_addr` — `/metrics`, `/healthz`, `/readyz`; `None` when set to `""`.
    pub metrics_addr: Option<SocketAddr>,
    /// `/echo/core/tls/*`.
    pub tls: CoreTls,
}

/// The core's TLS settings. No certificate means plain text, which the link allows only on
/// loopback.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CoreTls {
    /// `/echo/core/tls/cert` — PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// `/echo/core/tls/key` — PEM private key (the path only; the key is never read here).
    pub key: Option<PathBuf>,
    /// `/echo/core/tls/client_ca` — PEM CA that agent client certificates must chain to.
    pub client_ca: Option<PathBuf>,
    /// `/echo/core/tls/require_client_cert` — mutual TLS required.
    pub require_client_cert: bool,
}

impl CoreTls {
    /// Whether the core serves TLS (certificate and key both set; validation guarantees pairs).
    pub fn enabled(&self) -> bool {
        self.cert.is_some() && self.key.is_some()
    }
}

/// An agent process (`/echo/agent/*`).
#[derive(Clone, Debug, PartialEq)]
pub struct AgentSection {
    /// `/echo/agent/delivery/*` — applies live; the core also pushes these in every
    /// `DeliveryHeartbeat`.
    pub delivery: AgentDeliveryConfig,
    /// `/echo/agent/core_addr` — `http://host:port` (loopback only) or `https://host:port`.
    pub core_addr: String,
    /// `/echo/agent/id` — this agent's id, when not given on the command line.
    pub id: Option<AgentId>,
    /// `/echo/agent/token_file` — file holding this agent's plain token (never the token itself).
    pub token_file: Option<PathBuf>,
    /// `/echo/agent/data_dir` — where the ledger lives.
    pub data_dir: PathBuf,
    /// `/echo/agent/metrics_addr`; `None` when unset or `""`.
    pub metrics_addr: Option<SocketAddr>,
    /// `/echo/agent/tls/*`.
    pub tls: AgentTls,
}

/// The agent's TLS settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentTls {
    /// `/echo/agent/tls/ca` — PEM CA to verify the core's certificate.
    pub ca: Option<PathBuf>,
    /// `/echo/agent/tls/cert` — client certificate for mutual TLS.
    pub cert: Option<PathBuf>,
    /// `/echo/agent/tls/key` — its private key.
    pub key: Option<PathBuf>,
}

/// Where the core journals.
#[derive(Clone, PartialEq, Eq)]
pub enum JournalBackend {
    /// `sqlite:PATH`; a relative path is relative to the core's data directory.
    Sqlite(PathBuf),
    /// `postgres://…` or `postgresql://…` (may hold a password: never printed).
    Postgres(String),
}

impl JournalBackend {
    /// Parses `sqlite:PATH` or a postgres URL; `None` for anything else.
    pub fn parse(raw: &str) -> Option<Self> {
        let raw = raw.trim();
        if let Some(path) = raw.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return None;
            }
            return Some(JournalBackend::Sqlite(PathBuf::from(path)));
        }
        let rest = raw
            .strip_prefix("postgres://")
            .or_else(|| raw.strip_prefix("postgresql://"))?;
        if rest.is_empty() || rest.chars().any(char::is_whitespace) {
            return None;
        }
        Some(JournalBackend::Postgres(raw.to_string()))
    }

    /// The SQLite file, resolved against `data_dir`; `None` for Postgres.
    pub fn sqlite_file(&self, data_dir: &Path) -> Option<PathBuf> {
        match self {
            JournalBackend::Sqlite(p) if p.is_absolute() => Some(p.clone()),
            JournalBackend::Sqlite(p) => Some(data_dir.join(p)),
            JournalBackend::Postgres(_) => None,
        }
    }

    /// The Postgres URL (secret: pass it to the driver, never to a log).
    pub fn postgres_url(&self) -> Option<&str> {
        match self {
            JournalBackend::Postgres(url) => Some(url),
            JournalBackend::Sqlite(_) => None,
        }
    }
}

/// Shows the backend with any password replaced by `***`.
impl fmt::Display for JournalBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JournalBackend::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
            JournalBackend::Postgres(url) => f.write_str(&redact_url(url)),
        }
    }
}

impl fmt::Debug for JournalBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JournalBackend({self})")
    }
}

/// `scheme://user:secret@host/db` → `scheme://user:***@host/db`; also hides `password=` query
/// parameters. Anything unparseable is hidden whole after the scheme.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".into();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let q: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => p.to_string(),
                })
                .collect();
            format!("{path}?{}", q.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// What an account is to the agent that speaks for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Master,
    Slave,
}

impl Role {
    pub fn parse(raw: &str) -> Option<Role> {
        match raw.trim() {
            "master" => Some(Role::Master),
            "slave" => Some(Role::Slave),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Slave => "slave",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One agent allowed to connect (`/echo/agents/{id}/*`). Its `Debug` never shows the hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentEntry {
    pub id: AgentId,
    /// `/echo/agents/{id}/token_hash` — see [`super::token`].
    pub token_hash: TokenHash,
    /// `/echo/agents/{id}/accounts/{account}` = `master` | `slave`: the accounts this agent may
    /// speak for, and as what.
    pub accounts: BTreeMap<AccountId, Role>,
}

impl AgentEntry {
    /// The role this agent may speak for `account` in, or `None` if the account is not its.
    pub fn role_of(&self, account: &AccountId) -> Option<Role> {
        self.accounts.get(account).copied()
    }

    /// Whether this agent may speak for `account` as `role`.
    pub fn may_speak_for(&self, account: &AccountId, role: Role) -> bool {
        self.role_of(account) == Some(role)
    }
}

impl Default for EchoConfig {
    /// Every key at its default: no subscriptions, no agents.
    fn default() -> Self {
        super::keys::build(&BTreeMap::new()).unwrap_or_else(|_| unreachable_defaults())
    }
}

/// The defaults are compile-time constants that `tests::defaults_build` checks; this is only
/// reached if that test is failing.
#[cold]
fn unreachable_defaults() -> EchoConfig {
    EchoConfig {
        core: CoreSection {
            router: RouterConfig::default(),
            delivery: DeliveryConfig::default(),
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 7700)),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            journal: JournalBackend::Sqlite(PathBuf::from("journal.sqlite3")),
            metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 9700))),
            tls: CoreTls::default(),
        },
        agent: AgentSection {
            delivery: AgentDeliveryConfig::default(),
            core_addr: DEFAULT_CORE_ADDR.into(),
            id: None,
            token_file: None,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            metrics_addr: None,
            tls: AgentTls::default(),
        },
        subscriptions: Vec::new(),
        agents: BTreeMap::new(),
    }
}

impl EchoConfig {
    /// The agent that owns `account`, if any (an account belongs to at most one agent).
    pub fn agent_of_account(&self, account: &AccountId) -> Option<&AgentEntry> {
        self.agents
            .values()
            .find(|a| a.accounts.contains_key(account))
    }

    /// Subscriptions whose master is `master`.
    pub fn subscriptions_of(&self, master: &AccountId) -> impl Iterator<Item = &Subscription> {
        let master = master.clone();
        self.subscriptions
            .iter()
            .filter(move |s| s.master == master)
    }
}
