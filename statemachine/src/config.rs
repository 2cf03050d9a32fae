//! Typed configuration with the BRIEF's defaults and ranges.
//!
//! This module owns every tunable a machine reads, its etcd key, default and allowed range,
//! and the one validation path shared by etcd, TOML and tests. It must never clamp: a value out
//! of range is a [`ConfigError`] naming the key, and the caller keeps the old value.

use std::collections::BTreeMap;
use std::fmt;

use crate::ids::{AccountId, Symbol};
use crate::policy::subscription::CopyPolicy;
use crate::policy::SkipReason;

/// Why a config value was refused. Always names the key, the value and the allowed range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub value: String,
    pub expected: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid config {}={:?}: expected {}",
            self.key, self.value, self.expected
        )
    }
}

impl std::error::Error for ConfigError {}

/// One numeric key: its full path, default, inclusive range and extra rule.
#[derive(Clone, Copy, Debug)]
pub struct KeySpec {
    pub key: &'static str,
    pub default: u64,
    pub min: u64,
    pub max: u64,
    pub power_of_two: bool,
    pub doc: &'static str,
}

impl KeySpec {
    /// Parses and validates `raw` (decimal, surrounding white space allowed).
    pub fn parse(&self, raw: &str) -> Result<u64, ConfigError> {
        let err = || ConfigError {
            key: self.key.to_string(),
            value: raw.to_string(),
            expected: self.expected(),
        };
        let v: u64 = raw.trim().parse().map_err(|_| err())?;
        self.check(v).map_err(|_| err())
    }

    /// Validates an already numeric value.
    pub fn check(&self, v: u64) -> Result<u64, ConfigError> {
        if v < self.min || v > self.max || (self.power_of_two && !v.is_power_of_two()) {
            return Err(ConfigError {
                key: self.key.to_string(),
                value: v.to_string(),
                expected: self.expected(),
            });
        }
        Ok(v)
    }

    pub fn expected(&self) -> String {
        if self.power_of_two {
            format!("a power of two in {}..={}", self.min, self.max)
        } else {
            format!("an integer in {}..={}", self.min, self.max)
        }
    }
}

const fn key(
    key: &'static str,
    default: u64,
    min: u64,
    max: u64,
    power_of_two: bool,
    doc: &'static str,
) -> KeySpec {
    KeySpec {
        key,
        default,
        min,
        max,
        power_of_two,
        doc,
    }
}

pub const ROUTER_WORKER_POOL_SIZE: KeySpec = key(
    "/echo/core/router/worker_pool_size",
    4,
    2,
    32,
    true,
    "workers (shards) of the core router; a trade always maps to one",
);
pub const ROUTER_QUEUE_DEPTH_MAX: KeySpec = key(
    "/echo/core/router/queue_depth_max",
    8,
    4,
    128,
    false,
    "intents a worker holds before it answers ERROR_CODE_BROKER_BUSY",
);
pub const ROUTER_WORKER_TIMEOUT_MS: KeySpec = key(
    "/echo/core/router/worker_timeout_ms",
    50,
    20,
    200,
    false,
    "bound on one send from a worker to an agent's connection (runtime)",
);
pub const CORE_ACK_TIMEOUT_MS: KeySpec = key(
    "/echo/core/delivery/ack_timeout_ms",
    2_000,
    50,
    120_000,
    false,
    "a delivery with no stage progress for this long is retried",
);
pub const CORE_RETRY_BACKOFF_MS: KeySpec = key(
    "/echo/core/delivery/retry_backoff_ms",
    200,
    10,
    60_000,
    false,
    "base of the exponential backoff for deliveries and journal writes",
);
pub const CORE_MAX_RETRIES: KeySpec = key(
    "/echo/core/delivery/max_retries",
    5,
    1,
    100,
    false,
    "attempts before a delivery, or a journal write, is FAILED",
);
pub const CORE_HEARTBEAT_INTERVAL_MS: KeySpec = key(
    "/echo/core/delivery/heartbeat_interval_ms",
    1_000,
    1_000,
    5_000,
    false,
    "DeliveryHeartbeat period; an agent silent for 3 periods (of this or `/echo/agent/delivery/heartbeat_interval_ms`, whichever is longer) is offline",
);
pub const CORE_RECONCILE_INTERVAL_MS: KeySpec = key(
    "/echo/core/delivery/reconcile_interval_ms",
    5_000,
    100,
    600_000,
    false,
    "a delivery at PIPE_DELIVERED with no ExecutionResult for this long is re-sent",
);
pub const CORE_JOURNAL_STAGE_ACKS: KeySpec = key(
    "/echo/core/delivery/journal_stage_acks",
    0,
    0,
    1,
    false,
    "1 = also journal each delivery's AGENT_BUFFERED / PIPE_DELIVERED (audit; about half the journal's row writes); 0 = accept and final state only",
);
pub const CORE_AGENT_WINDOW: KeySpec = key(
    "/echo/core/delivery/agent_window",
    1_024,
    1,
    65_536,
    false,
    "commands sent to one agent and not yet in its ledger (AGENT_BUFFERED); more wait at the core, without spending attempts or running their ack timers, until one is buffered",
);
pub const AGENT_ACK_TIMEOUT_MS: KeySpec = key(
    "/echo/agent/delivery/ack_timeout_ms",
    1_000,
    50,
    120_000,
    false,
    "a pipe write with no PipeDeliveryAck for this long is retried",
);
pub const AGENT_RETRY_BACKOFF_MS: KeySpec = key(
    "/echo/agent/delivery/retry_backoff_ms",
    100,
    10,
    60_000,
    false,
    "base of the agent's pipe-write backoff",
);
pub const AGENT_MAX_RETRIES: KeySpec = key(
    "/echo/agent/delivery/max_retries",
    10,
    1,
    1_000,
    false,
    "pipe attempts before the agent reports the delivery FAILED (retryable) to the core",
);
pub const AGENT_HEARTBEAT_INTERVAL_MS: KeySpec = key(
    "/echo/agent/delivery/heartbeat_interval_ms",
    1_000,
    1_000,
    5_000,
    false,
    "agent → core heartbeat period",
);

/// Every key, in the order SPEC.md lists them.
pub const ALL_KEYS: &[KeySpec] = &[
    ROUTER_WORKER_POOL_SIZE,
    ROUTER_QUEUE_DEPTH_MAX,
    ROUTER_WORKER_TIMEOUT_MS,
    CORE_ACK_TIMEOUT_MS,
    CORE_RETRY_BACKOFF_MS,
    CORE_MAX_RETRIES,
    CORE_HEARTBEAT_INTERVAL_MS,
    CORE_RECONCILE_INTERVAL_MS,
    CORE_JOURNAL_STAGE_ACKS,
    CORE_AGENT_WINDOW,
    AGENT_ACK_TIMEOUT_MS,
    AGENT_RETRY_BACKOFF_MS,
    AGENT_MAX_RETRIES,
    AGENT_HEARTBEAT_INTERVAL_MS,
];

/// Seed 000's router settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouterConfig {
    pub worker_pool_size: u32,
    pub queue_depth_max: u32,
    pub worker_timeout_ms: u32,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            worker_pool_size: ROUTER_WORKER_POOL_SIZE.default as u32,
            queue_depth_max: ROUTER_QUEUE_DEPTH_MAX.default as u32,
            worker_timeout_ms: ROUTER_WORKER_TIMEOUT_MS.default as u32,
        }
    }
}

impl RouterConfig {
    /// Builds a config from numbers, validating each against its key.
    pub fn new(pool: u64, depth: u64, timeout_ms: u64) -> Result<Self, ConfigError> {
        Ok(RouterConfig {
            worker_pool_size: ROUTER_WORKER_POOL_SIZE.check(pool)? as u32,
            queue_depth_max: ROUTER_QUEUE_DEPTH_MAX.check(depth)? as u32,
            worker_timeout_ms: ROUTER_WORKER_TIMEOUT_MS.check(timeout_ms)? as u32,
        })
    }

    /// Applies one `key = raw` pair; `Ok(false)` if the key is not a router key.
    pub fn set(&mut self, key: &str, raw: &str) -> Result<bool, ConfigError> {
        match key {
            k if k == ROUTER_WORKER_POOL_SIZE.key => {
                self.worker_pool_size = ROUTER_WORKER_POOL_SIZE.parse(raw)? as u32
            }
            k if k == ROUTER_QUEUE_DEPTH_MAX.key => {
                self.queue_depth_max = ROUTER_QUEUE_DEPTH_MAX.parse(raw)? as u32
            }
            k if k == ROUTER_WORKER_TIMEOUT_MS.key => {
                self.worker_timeout_ms = ROUTER_WORKER_TIMEOUT_MS.parse(raw)? as u32
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// Seed 001's core delivery settings (live: applied at run time and pushed to agents).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeliveryConfig {
    pub ack_timeout_ms: u32,
    pub retry_backoff_ms: u32,
    pub max_retries: u32,
    pub heartbeat_interval_ms: u32,
    pub reconcile_interval_ms: u32,
    /// 1: intermediate stage acks are journaled too (`UpdateStage`); 0: only the accept and
    /// the final state. Nothing reads the stage back but operators: a recovered delivery is
    /// re-sent from CORE_ACCEPTED either way and the agent and EA dedupe it.
    pub journal_stage_acks: u32,
    /// Commands one agent may hold unbuffered: the core's send window per agent, so an agent
    /// slower than the masters sees a bounded backlog, and its slowness never becomes ack
    /// timeouts and re-sends that only add to it.
    pub agent_window: u32,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            ack_timeout_ms: CORE_ACK_TIMEOUT_MS.default as u32,
            retry_backoff_ms: CORE_RETRY_BACKOFF_MS.default as u32,
            max_retries: CORE_MAX_RETRIES.default as u32,
            heartbeat_interval_ms: CORE_HEARTBEAT_INTERVAL_MS.default as u32,
            reconcile_interval_ms: CORE_RECONCILE_INTERVAL_MS.default as u32,
            journal_stage_acks: CORE_JOURNAL_STAGE_ACKS.default as u32,
            agent_window: CORE_AGENT_WINDOW.default as u32,
        }
    }
}

impl DeliveryConfig {
    /// Applies one `key = raw` pair; `Ok(false)` if the key is not a core delivery key.
    pub fn set(&mut self, key: &str, raw: &str) -> Result<bool, ConfigError> {
        let slot = match key {
            k if k == CORE_ACK_TIMEOUT_MS.key => (&mut self.ack_timeout_ms, CORE_ACK_TIMEOUT_MS),
            k if k == CORE_RETRY_BACKOFF_MS.key => {
                (&mut self.retry_backoff_ms, CORE_RETRY_BACKOFF_MS)
            }
            k if k == CORE_MAX_RETRIES.key => (&mut self.max_retries, CORE_MAX_RETRIES),
            k if k == CORE_HEARTBEAT_INTERVAL_MS.key => {
                (&mut self.heartbeat_interval_ms, CORE_HEARTBEAT_INTERVAL_MS)
            }
            k if k == CORE_RECONCILE_INTERVAL_MS.key => {
                (&mut self.reconcile_interval_ms, CORE_RECONCILE_INTERVAL_MS)
            }
            k if k == CORE_JOURNAL_STAGE_ACKS.key => {
                (&mut self.journal_stage_acks, CORE_JOURNAL_STAGE_ACKS)
            }
            k if k == CORE_AGENT_WINDOW.key => (&mut self.agent_window, CORE_AGENT_WINDOW),
            _ => return Ok(false),
        };
        *slot.0 = slot.1.parse(raw)? as u32;
        Ok(true)
    }

    /// Checks every field against its range (for configs built in code).
    pub fn validate(&self) -> Result<(), ConfigError> {
        CORE_ACK_TIMEOUT_MS.check(self.ack_timeout_ms.into())?;
        CORE_RETRY_BACKOFF_MS.check(self.retry_backoff_ms.into())?;
        CORE_MAX_RETRIES.check(self.max_retries.into())?;
        CORE_HEARTBEAT_INTERVAL_MS.check(self.heartbeat_interval_ms.into())?;
        CORE_RECONCILE_INTERVAL_MS.check(self.reconcile_interval_ms.into())?;
        CORE_JOURNAL_STAGE_ACKS.check(self.journal_stage_acks.into())?;
        CORE_AGENT_WINDOW.check(self.agent_window.into())?;
        Ok(())
    }
}

/// The agent's delivery settings (`/echo/agent/delivery/*`), owned by the core's config and
/// pushed to agents in every `DeliveryHeartbeat`, and on to master EAs as `delivery_config`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentDeliveryConfig {
    pub ack_timeout_ms: u32,
    pub retry_backoff_ms: u32,
    pub max_retries: u32,
    pub heartbeat_interval_ms: u32,
}

impl Default for AgentDeliveryConfig {
    fn default() -> Self {
        AgentDeliveryConfig {
            ack_timeout_ms: AGENT_ACK_TIMEOUT_MS.default as u32,
            retry_backoff_ms: AGENT_RETRY_BACKOFF_MS.default as u32,
            max_retries: AGENT_MAX_RETRIES.default as u32,
            heartbeat_interval_ms: AGENT_HEARTBEAT_INTERVAL_MS.default as u32,
        }
    }
}

impl AgentDeliveryConfig {
    /// Applies one `key = raw` pair; `Ok(false)` if the key is not an agent delivery key.
    pub fn set(&mut self, key: &str, raw: &str) -> Result<bool, ConfigError> {
        let slot = match key {
            k if k == AGENT_ACK_TIMEOUT_MS.key => (&mut self.ack_timeout_ms, AGENT_ACK_TIMEOUT_MS),
            k if k == AGENT_RETRY_BACKOFF_MS.key => {
                (&mut self.retry_backoff_ms, AGENT_RETRY_BACKOFF_MS)
            }
            k if k == AGENT_MAX_RETRIES.key => (&mut self.max_retries, AGENT_MAX_RETRIES),
            k if k == AGENT_HEARTBEAT_INTERVAL_MS.key => {
                (&mut self.heartbeat_interval_ms, AGENT_HEARTBEAT_INTERVAL_MS)
            }
            _ => return Ok(false),
        };
        *slot.0 = slot.1.parse(raw)? as u32;
        Ok(true)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        AGENT_ACK_TIMEOUT_MS.check(self.ack_timeout_ms.into())?;
        AGENT_RETRY_BACKOFF_MS.check(self.retry_backoff_ms.into())?;
        AGENT_MAX_RETRIES.check(self.max_retries.into())?;
        AGENT_HEARTBEAT_INTERVAL_MS.check(self.heartbeat_interval_ms.into())?;
        Ok(())
    }
}

/// One master → slave subscription: who copies whom, how big, and under which symbol names.
#[derive(Clone, Debug, PartialEq)]
pub struct Subscription {
    pub master: AccountId,
    pub slave: AccountId,
    /// Slave volume = master volume × multiplier. Must be finite and > 0.
    pub multiplier: f64,
    /// Master symbol → slave symbol. Empty means "same names"; non-empty means "only these":
    /// a symbol missing from a non-empty map is `SYMBOL_NOT_MAPPED`, never guessed.
    pub symbol_map: BTreeMap<Symbol, Symbol>,
    /// Every other per-subscription policy setting (SPEC.md §5.2).
    pub policy: CopyPolicy,
}

impl Subscription {
    pub fn new(master: &str, slave: &str, multiplier: f64) -> Self {
        Subscription {
            master: AccountId::new(master),
            slave: AccountId::new(slave),
            multiplier,
            symbol_map: BTreeMap::new(),
            policy: CopyPolicy::default(),
        }
    }

    /// The slave's name for `symbol`: the explicit map first; then the policy's affix rule.
    /// A non-empty map without an affix rule means "only these" (as before affix rules).
    pub fn map_symbol(&self, symbol: &Symbol) -> Result<Symbol, SkipReason> {
        if let Some(s) = self.symbol_map.get(symbol) {
            return Ok(s.clone());
        }
        if !self.symbol_map.is_empty() && !self.policy.symbols.has_rule() {
            return Err(SkipReason::SymbolNotMapped);
        }
        self.policy.symbols.map(symbol, None)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.multiplier.is_finite() && self.multiplier > 0.0 && self.multiplier <= 1_000.0) {
            return Err(ConfigError {
                key: format!(
                    "/echo/subscriptions/{}/{}/multiplier",
                    self.master, self.slave
                ),
                value: self.multiplier.to_string(),
                expected: "a finite number in (0, 1000]".into(),
            });
        }
        if self.master == self.slave {
            return Err(ConfigError {
                key: format!("/echo/subscriptions/{}/{}", self.master, self.slave),
                value: self.slave.to_string(),
                expected: "a slave different from its master".into(),
            });
        }
        self.policy
            .validate(self.master.as_str(), self.slave.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn router_defaults_and_ranges() {
        let c = RouterConfig::default();
        assert_eq!(
            (c.worker_pool_size, c.queue_depth_max, c.worker_timeout_ms),
            (4, 8, 50)
        );
        assert!(RouterConfig::new(2, 4, 20).is_ok());
        assert!(RouterConfig::new(32, 128, 200).is_ok());
        let e = RouterConfig::new(6, 8, 50).unwrap_err();
        assert_eq!(e.key, "/echo/core/router/worker_pool_size");
        assert!(e.expected.contains("power of two"));
        assert_eq!(RouterConfig::new(64, 8, 50).unwrap_err().value, "64");
        assert_eq!(RouterConfig::new(1, 8, 50).unwrap_err().value, "1");
        assert_eq!(
            RouterConfig::new(4, 3, 50).unwrap_err().key,
            "/echo/core/router/queue_depth_max"
        );
        assert_eq!(
            RouterConfig::new(4, 8, 201).unwrap_err().key,
            "/echo/core/router/worker_timeout_ms"
        );
    }

    #[test]
    fn set_rejects_without_clamping_and_keeps_old_value() {
        let mut c = RouterConfig::default();
        let e = c
            .set("/echo/core/router/queue_depth_max", "999")
            .unwrap_err();
        assert_eq!(e.value, "999");
        assert_eq!(c.queue_depth_max, 8, "old value kept");
        assert!(c.set("/echo/core/router/queue_depth_max", " 16 ").unwrap());
        assert_eq!(c.queue_depth_max, 16);
        assert!(c.set("/echo/core/router/queue_depth_max", "abc").is_err());
        assert!(c.set("/echo/core/router/queue_depth_max", "-4").is_err());
        assert!(!c.set("/echo/other", "1").unwrap());

        let mut d = DeliveryConfig::default();
        assert!(d.set(CORE_HEARTBEAT_INTERVAL_MS.key, "999").is_err());
        assert!(d.set(CORE_HEARTBEAT_INTERVAL_MS.key, "5001").is_err());
        assert_eq!(d.heartbeat_interval_ms, 1_000);
        assert!(d.set(CORE_HEARTBEAT_INTERVAL_MS.key, "5000").unwrap());
        assert_eq!(d.heartbeat_interval_ms, 5_000);
        assert!(d.validate().is_ok());

        let mut a = AgentDeliveryConfig::default();
        assert!(a.set(AGENT_MAX_RETRIES.key, "0").is_err());
        assert!(a.set(AGENT_MAX_RETRIES.key, "7").unwrap());
        assert_eq!(a.max_retries, 7);
        assert!(a.validate().is_ok());
    }

    #[test]
    fn every_default_is_inside_its_range() {
        for k in ALL_KEYS {
            assert_eq!(k.check(k.default).unwrap(), k.default, "{}", k.key);
        }
    }

    #[test]
    fn subscription_validation_and_mapping() {
        let mut s = Subscription::new("m1", "s1", 2.0);
        assert!(s.validate().is_ok());
        assert_eq!(
            s.map_symbol(&Symbol::new("EURUSD")),
            Ok(Symbol::new("EURUSD"))
        );
        s.symbol_map
            .insert(Symbol::new("EURUSD"), Symbol::new("EURUSD.m"));
        assert_eq!(
            s.map_symbol(&Symbol::new("EURUSD")),
            Ok(Symbol::new("EURUSD.m"))
        );
        assert_eq!(
            s.map_symbol(&Symbol::new("GBPUSD")),
            Err(SkipReason::SymbolNotMapped)
        );
        s.policy.symbols.add_suffix = ".m".into();
        assert_eq!(
            s.map_symbol(&Symbol::new("GBPUSD")),
            Ok(Symbol::new("GBPUSD.m")),
            "an affix rule covers what the map leaves out"
        );
        s.multiplier = f64::NAN;
        assert!(s.validate().is_err());
        s.multiplier = 0.0;
        assert!(s.validate().is_err());
        assert!(Subscription::new("m", "m", 1.0).validate().is_err());
    }
}
