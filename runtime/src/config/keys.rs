//! The one key space shared by the TOML file and etcd, and the one path that turns a set of
//! `key → value` pairs into a validated [`EchoConfig`].
//!
//! A TOML leaf at `core.router.worker_pool_size` *is* the etcd key
//! `/echo/core/router/worker_pool_size`; both go through [`build`]. Numeric machine keys are
//! checked by the machines' own [`KeySpec`]s (never clamped). This module must never read a
//! file or a socket.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use echo_statemachine::config::{KeySpec, Subscription, ALL_KEYS};
use echo_statemachine::ids::{AccountId, AgentId, Symbol};
use echo_statemachine::policy::subscription::CopyPolicy;

use super::error::ConfigError;
use super::model::{
    redact_url, AgentEntry, AgentSection, AgentTls, CoreSection, CoreTls, EchoConfig,
    JournalBackend, Role, DEFAULT_CORE_ADDR, DEFAULT_DATA_DIR, DEFAULT_JOURNAL,
    DEFAULT_LISTEN_ADDR, DEFAULT_METRICS_ADDR,
};
use super::token::TokenHash;

/// Every key starts with this.
pub const PREFIX: &str = "/echo/";

/// One value as it came in. etcd values are untyped [`RawValue::Text`] (parsed per key);
/// TOML values keep their TOML type, so `worker_pool_size = "4"` in a file is a type error.
#[derive(Clone, Debug, PartialEq)]
pub enum RawValue {
    /// Untyped text (etcd): parsed according to the key.
    Text(String),
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl RawValue {
    /// The value as etcd would store it.
    pub fn text(&self) -> String {
        match self {
            RawValue::Text(s) | RawValue::Str(s) => s.clone(),
            RawValue::Int(i) => i.to_string(),
            RawValue::Float(f) => f.to_string(),
            RawValue::Bool(b) => b.to_string(),
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            RawValue::Text(_) | RawValue::Str(_) => "a string",
            RawValue::Int(_) => "an integer",
            RawValue::Float(_) => "a float",
            RawValue::Bool(_) => "a boolean",
        }
    }
}

/// A whole config as flat `key → value` pairs (keys in etcd form).
pub type FlatConfig = BTreeMap<String, RawValue>;

/// When a changed key takes effect in a running process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Apply {
    /// Applied at once: core/agent delivery keys, subscriptions, agents.
    Live,
    /// Logged and kept for the next start: router keys and process settings (addresses,
    /// paths, journal, TLS).
    Restart,
}

/// How a change to `key` applies. Unknown keys are `Restart` (they are refused anyway).
pub fn apply_class(key: &str) -> Apply {
    let rest = key.strip_prefix(PREFIX).unwrap_or(key);
    if rest.starts_with("core/delivery/")
        || rest.starts_with("agent/delivery/")
        || rest.starts_with("subscriptions/")
        || rest.starts_with("agents/")
    {
        Apply::Live
    } else {
        Apply::Restart
    }
}

/// The value of `key` as it may appear in a log line: token hashes are hidden, passwords in a
/// journal URL are masked.
pub fn loggable_value<'a>(key: &str, value: &'a str) -> Cow<'a, str> {
    if key.ends_with("/token_hash") || key.ends_with("/token") {
        Cow::Borrowed("<redacted>")
    } else if key == "/echo/core/journal" && !value.trim_start().starts_with("sqlite:") {
        Cow::Owned(redact_url(value.trim()))
    } else {
        Cow::Borrowed(value)
    }
}

const ID_RULE: &str = "an id of 1-128 characters without white space, control characters or '/'";

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/')
}

#[derive(Default)]
struct SubBuilder {
    multiplier: Option<f64>,
    symbol_map: BTreeMap<Symbol, Symbol>,
    policy: CopyPolicy,
}

#[derive(Default)]
struct AgentBuilder {
    token_hash: Option<TokenHash>,
    accounts: BTreeMap<AccountId, Role>,
}

struct Builder {
    cfg: EchoConfig,
    subs: BTreeMap<(String, String), SubBuilder>,
    agents: BTreeMap<String, AgentBuilder>,
    errors: Vec<ConfigError>,
}

/// Builds and validates a config from `flat` over the defaults. Lists every problem.
pub fn build(flat: &FlatConfig) -> Result<EchoConfig, Vec<ConfigError>> {
    let mut b = Builder {
        cfg: defaults(),
        subs: BTreeMap::new(),
        agents: BTreeMap::new(),
        errors: Vec::new(),
    };
    for (key, value) in flat {
        if let Err(e) = b.set(key, value) {
            b.errors.push(redacted(e));
        }
    }
    b.finish()
}

/// Errors keep no secret: an invalid token hash or journal URL is stored redacted, so even
/// `Debug` of the error is safe to log.
fn redacted(e: ConfigError) -> ConfigError {
    match e {
        ConfigError::Invalid {
            key,
            value,
            expected,
        } => ConfigError::Invalid {
            value: loggable_value(&key, &value).into_owned(),
            key,
            expected,
        },
        other => other,
    }
}

fn defaults() -> EchoConfig {
    // Parsed from the same constants the docs show; each is covered by `tests::defaults_build`.
    let addr = |s: &str| s.parse::<SocketAddr>().ok();
    EchoConfig {
        core: CoreSection {
            router: Default::default(),
            delivery: Default::default(),
            listen_addr: addr(DEFAULT_LISTEN_ADDR)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7700))),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            journal: JournalBackend::parse(DEFAULT_JOURNAL)
                .unwrap_or_else(|| JournalBackend::Sqlite(PathBuf::from("journal.sqlite3"))),
            metrics_addr: addr(DEFAULT_METRICS_ADDR),
            tls: CoreTls::default(),
        },
        agent: AgentSection {
            delivery: Default::default(),
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

fn invalid(key: &str, value: &str, expected: &str) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        value: value.into(),
        expected: expected.into(),
    }
}

fn wrong_type(key: &str, expected: &str, v: &RawValue) -> ConfigError {
    ConfigError::WrongType {
        key: key.into(),
        expected: expected.into(),
        found: v.type_name().into(),
    }
}

fn number(key: &str, spec: &KeySpec, v: &RawValue) -> Result<u32, ConfigError> {
    let n = match v {
        RawValue::Text(s) => spec.parse(s)?,
        RawValue::Int(i) => match u64::try_from(*i) {
            Ok(u) => spec.check(u)?,
            Err(_) => return Err(invalid(key, &i.to_string(), &spec.expected())),
        },
        other => return Err(wrong_type(key, "an integer", other)),
    };
    // Every KeySpec max fits u32; a future one that does not is refused, not truncated.
    u32::try_from(n).map_err(|_| invalid(key, &n.to_string(), &spec.expected()))
}

fn float(key: &str, v: &RawValue) -> Result<f64, ConfigError> {
    match v {
        RawValue::Float(f) => Ok(*f),
        RawValue::Int(i) => Ok(*i as f64),
        RawValue::Text(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| invalid(key, s, "a finite number in (0, 1000]")),
        other => Err(wrong_type(key, "a number", other)),
    }
}

fn boolean(key: &str, v: &RawValue) -> Result<bool, ConfigError> {
    match v {
        RawValue::Bool(b) => Ok(*b),
        RawValue::Text(s) => match s.trim() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(invalid(key, s, "true or false")),
        },
        other => Err(wrong_type(key, "a boolean", other)),
    }
}

fn string<'a>(key: &str, v: &'a RawValue) -> Result<&'a str, ConfigError> {
    match v {
        RawValue::Text(s) | RawValue::Str(s) => Ok(s.as_str()),
        other => Err(wrong_type(key, "a string", other)),
    }
}

fn socket_addr(key: &str, v: &RawValue) -> Result<SocketAddr, ConfigError> {
    let s = string(key, v)?;
    s.trim()
        .parse()
        .map_err(|_| invalid(key, s, "an IP socket address such as 127.0.0.1:7700"))
}

fn opt_socket_addr(key: &str, v: &RawValue) -> Result<Option<SocketAddr>, ConfigError> {
    if string(key, v)?.trim().is_empty() {
        return Ok(None);
    }
    socket_addr(key, v).map(Some)
}

fn path(key: &str, v: &RawValue) -> Result<PathBuf, ConfigError> {
    let s = string(key, v)?;
    if s.trim().is_empty() || s.contains('\0') {
        return Err(invalid(key, s, "a non-empty path"));
    }
    Ok(PathBuf::from(s.trim()))
}

fn opt_path(key: &str, v: &RawValue) -> Result<Option<PathBuf>, ConfigError> {
    if string(key, v)?.trim().is_empty() {
        return Ok(None);
    }
    path(key, v).map(Some)
}

fn core_url(key: &str, v: &RawValue) -> Result<String, ConfigError> {
    let s = string(key, v)?.trim();
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    match rest {
        Some(r) if !r.is_empty() && !r.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            Ok(s.to_string())
        }
        _ => Err(invalid(key, s, "http://HOST:PORT or https://HOST:PORT")),
    }
}

fn id_segment(key: &str, seg: &str) -> Result<(), ConfigError> {
    if valid_id(seg) {
        Ok(())
    } else {
        Err(invalid(key, seg, ID_RULE))
    }
}

impl Builder {
    fn set(&mut self, key: &str, v: &RawValue) -> Result<(), ConfigError> {
        let Some(rest) = key.strip_prefix(PREFIX) else {
            return Err(ConfigError::UnknownKey { key: key.into() });
        };
        let segs: Vec<&str> = rest.split('/').collect();
        let core = &mut self.cfg.core;
        let agent = &mut self.cfg.agent;
        match segs.as_slice() {
            ["core", "router", _] | ["core", "delivery", _] | ["agent", "delivery", _] => {
                let Some(spec) = ALL_KEYS.iter().find(|k| k.key == key) else {
                    return Err(ConfigError::UnknownKey { key: key.into() });
                };
                let n = number(key, spec, v)?.to_string();
                let applied = core.router.set(key, &n)?
                    || core.delivery.set(key, &n)?
                    || agent.delivery.set(key, &n)?;
                if !applied {
                    return Err(ConfigError::UnknownKey { key: key.into() });
                }
            }
            ["core", "listen_addr"] => core.listen_addr = socket_addr(key, v)?,
            ["core", "data_dir"] => core.data_dir = path(key, v)?,
            ["core", "journal"] => {
                let s = string(key, v)?;
                core.journal = JournalBackend::parse(s)
                    .ok_or_else(|| invalid(key, s, "sqlite:PATH or a postgres://… URL"))?;
            }
            ["core", "metrics_addr"] => core.metrics_addr = opt_socket_addr(key, v)?,
            ["core", "tls", "cert"] => core.tls.cert = opt_path(key, v)?,
            ["core", "tls", "key"] => core.tls.key = opt_path(key, v)?,
            ["core", "tls", "client_ca"] => core.tls.client_ca = opt_path(key, v)?,
            ["core", "tls", "require_client_cert"] => {
                core.tls.require_client_cert = boolean(key, v)?
            }
            ["agent", "core_addr"] => agent.core_addr = core_url(key, v)?,
            ["agent", "id"] => {
                let s = string(key, v)?.trim();
                if s.is_empty() {
                    agent.id = None;
                } else {
                    id_segment(key, s)?;
                    agent.id = Some(AgentId::new(s));
                }
            }
            ["agent", "token_file"] => agent.token_file = opt_path(key, v)?,
            ["agent", "data_dir"] => agent.data_dir = path(key, v)?,
            ["agent", "metrics_addr"] => agent.metrics_addr = opt_socket_addr(key, v)?,
            ["agent", "tls", "ca"] => agent.tls.ca = opt_path(key, v)?,
            ["agent", "tls", "cert"] => agent.tls.cert = opt_path(key, v)?,
            ["agent", "tls", "key"] => agent.tls.key = opt_path(key, v)?,
            ["subscriptions", master, slave, "multiplier"] => {
                id_segment(key, master)?;
                id_segment(key, slave)?;
                let m = float(key, v)?;
                self.subs
                    .entry((master.to_string(), slave.to_string()))
                    .or_default()
                    .multiplier = Some(m);
            }
            ["subscriptions", master, slave, "symbol_map", from] => {
                id_segment(key, master)?;
                id_segment(key, slave)?;
                id_segment(key, from)?;
                let to = string(key, v)?.trim();
                if !valid_id(to) {
                    return Err(invalid(
                        key,
                        to,
                        "a symbol name: 1-128 characters, no spaces",
                    ));
                }
                self.subs
                    .entry((master.to_string(), slave.to_string()))
                    .or_default()
                    .symbol_map
                    .insert(Symbol::new(from), Symbol::new(to));
            }
            ["subscriptions", master, slave, policy_key @ ..] if !policy_key.is_empty() => {
                id_segment(key, master)?;
                id_segment(key, slave)?;
                let name = policy_key.join("/");
                let sb = self
                    .subs
                    .entry((master.to_string(), slave.to_string()))
                    .or_default();
                match sb.policy.set(master, slave, &name, &v.text()) {
                    Ok(true) => {}
                    Ok(false) => return Err(ConfigError::UnknownKey { key: key.into() }),
                    Err(e) => return Err(e.into()),
                }
            }
            ["agents", id, "token_hash"] => {
                id_segment(key, id)?;
                let s = string(key, v)?;
                let h = TokenHash::parse(s).ok_or_else(|| {
                    invalid(
                        key,
                        s,
                        "sha256:<64 hex digits> (hash_token of the agent's token)",
                    )
                })?;
                self.agents.entry(id.to_string()).or_default().token_hash = Some(h);
            }
            ["agents", id, "accounts", account] => {
                id_segment(key, id)?;
                id_segment(key, account)?;
                let s = string(key, v)?;
                let role = Role::parse(s).ok_or_else(|| invalid(key, s, "master or slave"))?;
                self.agents
                    .entry(id.to_string())
                    .or_default()
                    .accounts
                    .insert(AccountId::new(account), role);
            }
            _ => return Err(ConfigError::UnknownKey { key: key.into() }),
        }
        Ok(())
    }

    fn finish(mut self) -> Result<EchoConfig, Vec<ConfigError>> {
        let missing = |key: &str, why: &str| ConfigError::Missing {
            key: key.into(),
            why: why.into(),
        };
        let tls = &self.cfg.core.tls;
        if tls.cert.is_some() && tls.key.is_none() {
            self.errors.push(missing(
                "/echo/core/tls/key",
                "a TLS certificate needs its key",
            ));
        }
        if tls.key.is_some() && tls.cert.is_none() {
            self.errors.push(missing(
                "/echo/core/tls/cert",
                "a TLS key needs its certificate",
            ));
        }
        if tls.require_client_cert && tls.client_ca.is_none() {
            self.errors.push(missing(
                "/echo/core/tls/client_ca",
                "mutual TLS needs the CA that client certificates chain to",
            ));
        }
        if (tls.require_client_cert || tls.client_ca.is_some()) && tls.cert.is_none() {
            self.errors.push(missing(
                "/echo/core/tls/cert",
                "client certificates need the core to serve TLS",
            ));
        }
        let atls = &self.cfg.agent.tls;
        if atls.cert.is_some() != atls.key.is_some() {
            let which = if atls.cert.is_some() { "key" } else { "cert" };
            self.errors.push(missing(
                &format!("/echo/agent/tls/{which}"),
                "a client certificate and its key go together",
            ));
        }

        for ((master, slave), sb) in std::mem::take(&mut self.subs) {
            let base = format!("/echo/subscriptions/{master}/{slave}");
            let Some(multiplier) = sb.multiplier else {
                self.errors.push(missing(
                    &format!("{base}/multiplier"),
                    "a subscription is declared by its multiplier",
                ));
                continue;
            };
            let sub = Subscription {
                master: AccountId::new(&master),
                slave: AccountId::new(&slave),
                multiplier,
                symbol_map: sb.symbol_map,
                policy: sb.policy,
            };
            match sub.validate() {
                Ok(()) => self.cfg.subscriptions.push(sub),
                Err(e) => self.errors.push(e.into()),
            }
        }

        let mut owner: BTreeMap<AccountId, String> = BTreeMap::new();
        for (id, ab) in std::mem::take(&mut self.agents) {
            let Some(token_hash) = ab.token_hash else {
                self.errors.push(missing(
                    &format!("/echo/agents/{id}/token_hash"),
                    "an agent needs a token hash",
                ));
                continue;
            };
            for account in ab.accounts.keys() {
                if let Some(first) = owner.insert(account.clone(), id.clone()) {
                    self.errors.push(ConfigError::Conflict {
                        key: format!("/echo/agents/{id}/accounts/{account}"),
                        why: format!("account {account} already belongs to agent {first}"),
                    });
                }
            }
            let agent = AgentId::new(&id);
            self.cfg.agents.insert(
                agent.clone(),
                AgentEntry {
                    id: agent,
                    token_hash,
                    accounts: ab.accounts,
                },
            );
        }

        if self.errors.is_empty() {
            Ok(self.cfg)
        } else {
            Err(self.errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(pairs: &[(&str, &str)]) -> FlatConfig {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), RawValue::Text(v.to_string())))
            .collect()
    }

    #[test]
    fn defaults_build() {
        let c = build(&FlatConfig::new()).expect("defaults are valid");
        assert_eq!(c.core.listen_addr.to_string(), DEFAULT_LISTEN_ADDR);
        assert_eq!(
            c.core.metrics_addr.map(|a| a.to_string()).as_deref(),
            Some(DEFAULT_METRICS_ADDR)
        );
        assert_eq!(c.core.journal.to_string(), DEFAULT_JOURNAL);
        assert_eq!(c, EchoConfig::default());
    }

    #[test]
    fn every_machine_key_is_reachable_and_range_checked() {
        for spec in ALL_KEYS {
            let ok = build(&text(&[(spec.key, &spec.max.to_string())]));
            assert!(ok.is_ok(), "{}: {ok:?}", spec.key);
            let bad =
                build(&text(&[(spec.key, &(spec.max + 1).to_string())])).expect_err("out of range");
            assert_eq!(bad[0].key(), spec.key);
        }
    }

    #[test]
    fn cross_checks_name_their_key() {
        let e = build(&text(&[("/echo/core/tls/cert", "c.pem")])).expect_err("no key");
        assert_eq!(e[0].key(), "/echo/core/tls/key");
        let e = build(&text(&[(
            "/echo/subscriptions/m/s/symbol_map/EURUSD",
            "EURUSD.m",
        )]))
        .expect_err("no multiplier");
        assert_eq!(e[0].key(), "/echo/subscriptions/m/s/multiplier");
        let h = super::super::token::hash_token("t");
        let e = build(&text(&[
            ("/echo/agents/a/token_hash", &h),
            ("/echo/agents/a/accounts/x", "master"),
            ("/echo/agents/b/token_hash", &h),
            ("/echo/agents/b/accounts/x", "slave"),
        ]))
        .expect_err("shared account");
        assert_eq!(e[0].key(), "/echo/agents/b/accounts/x");
    }

    #[test]
    fn subscription_policy_keys_are_parsed_and_refused_by_name() {
        let c = build(&text(&[
            ("/echo/subscriptions/m/s/multiplier", "2"),
            ("/echo/subscriptions/m/s/reverse", "true"),
            ("/echo/subscriptions/m/s/symbols/add_suffix", ".m"),
            ("/echo/subscriptions/m/s/sizing/below_min", "trade_min"),
            (
                "/echo/subscriptions/m/s/sizing/symbol_multiplier/XAUUSD",
                "0.1",
            ),
            ("/echo/subscriptions/m/s/filters/direction", "buy_only"),
            ("/echo/subscriptions/m/s/catchup/max_age_ms", "30000"),
        ]))
        .expect("valid policy");
        let p = &c.subscriptions[0].policy;
        assert!(p.reverse);
        assert_eq!(p.symbols.add_suffix, ".m");
        assert_eq!(p.catch_up.max_age_ms, 30_000);
        let e = build(&text(&[
            ("/echo/subscriptions/m/s/multiplier", "2"),
            ("/echo/subscriptions/m/s/sizing/risk_percent", "250"),
        ]))
        .expect_err("out of range");
        assert_eq!(e[0].key(), "/echo/subscriptions/m/s/sizing/risk_percent");
        let e = build(&text(&[
            ("/echo/subscriptions/m/s/multiplier", "2"),
            ("/echo/subscriptions/m/s/sizing/bogus", "1"),
        ]))
        .expect_err("unknown");
        assert_eq!(e[0].key(), "/echo/subscriptions/m/s/sizing/bogus");
        // The slave-side terms are wired: sizing modes, margin, exposure, deviation, filters.
        let c = build(&text(&[
            ("/echo/subscriptions/m/s/multiplier", "2"),
            ("/echo/subscriptions/m/s/sizing/mode", "risk_percent"),
            ("/echo/subscriptions/m/s/sizing/risk_percent", "1.5"),
            ("/echo/subscriptions/m/s/sizing/check_free_margin", "true"),
            ("/echo/subscriptions/m/s/filters/max_open_positions", "5"),
            ("/echo/subscriptions/m/s/filters/max_total_lots", "2.5"),
            ("/echo/subscriptions/m/s/filters/magic_allow", "1,2"),
            ("/echo/subscriptions/m/s/filters/comment_deny", "scalp*"),
            (
                "/echo/subscriptions/m/s/filters/order_types",
                "market,limit",
            ),
            ("/echo/subscriptions/m/s/deviation/max_points", "30"),
            ("/echo/subscriptions/m/s/deviation/retry_window_ms", "500"),
        ]))
        .expect("wired policy");
        let p = &c.subscriptions[0].policy;
        assert_eq!(
            p.sizing.mode,
            echo_statemachine::policy::sizing::SizingMode::RiskPercent(1.5)
        );
        assert_eq!(
            (p.deviation.max_points, p.filters.max_open_positions),
            (30, 5)
        );
        // Split is wired (SPEC.md §5.2 "Split"); a limits pair that disagrees is refused.
        let c = build(&text(&[
            ("/echo/subscriptions/m/s/multiplier", "2"),
            ("/echo/subscriptions/m/s/sizing/above_max", "split"),
        ]))
        .expect("split is a valid setting");
        assert_eq!(
            c.subscriptions[0].policy.sizing.above_max,
            echo_statemachine::policy::sizing::AboveMax::Split
        );
        let e = build(&text(&[
            ("/echo/subscriptions/m/s/multiplier", "2"),
            ("/echo/subscriptions/m/s/limits/min_lots", "5"),
            ("/echo/subscriptions/m/s/limits/max_lots", "1"),
        ]))
        .expect_err("min above max");
        assert_eq!(e[0].key(), "/echo/subscriptions/m/s/limits/min_lots");
        let t = super::super::file::parse_toml(
            "[subscriptions.m.s]\nmultiplier = 1.0\nreverse = true\n[subscriptions.m.s.filters]\ndirection = \"sell_only\"\n",
        )
        .expect("toml policy");
        assert!(t.subscriptions[0].policy.reverse);
        assert_eq!(
            t.subscriptions[0].policy.filters.direction,
            echo_statemachine::policy::filters::Direction::SellOnly
        );
    }

    #[test]
    fn secrets_are_not_logged() {
        let h = super::super::token::hash_token("t");
        let e = build(&text(&[("/echo/agents/a/token_hash", &h[..20])])).expect_err("short");
        assert!(!e[0].to_string().contains(&h[7..20]), "{}", e[0]);
        let url = "postgres://echo:hunter2@db/echo?password=hunter2";
        assert!(!loggable_value("/echo/core/journal", url).contains("hunter2"));
        let e =
            build(&text(&[("/echo/core/journal", "postgres://u:hunter2@ db")])).expect_err("space");
        assert!(!e[0].to_string().contains("hunter2"), "{}", e[0]);
        let c = build(&text(&[("/echo/core/journal", url)])).expect("valid");
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
