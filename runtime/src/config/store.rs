//! The applied config and the rules for changing it: a pure, synchronous state holder that
//! the etcd watcher feeds (and tests drive directly). It owns which etcd keys are in effect,
//! which changes wait for a restart, and the version counter; it must never do IO.

use std::collections::BTreeMap;
use std::sync::Arc;

use tracing::{info, warn};

use super::error::ConfigError;
use super::keys::{apply_class, build, loggable_value, Apply, FlatConfig, RawValue};
use super::model::EchoConfig;

/// One key changed in etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Put { key: String, value: String },
    Delete { key: String },
}

impl Change {
    pub fn key(&self) -> &str {
        match self {
            Change::Put { key, .. } | Change::Delete { key } => key,
        }
    }

    fn value(&self) -> Option<&str> {
        match self {
            Change::Put { value, .. } => Some(value),
            Change::Delete { .. } => None,
        }
    }

    fn loggable(&self) -> Option<String> {
        self.value()
            .map(|v| loggable_value(self.key(), v).into_owned())
    }

    fn apply_to(&self, flat: &mut FlatConfig) {
        match self {
            Change::Put { key, value } => {
                flat.insert(key.clone(), RawValue::Text(value.clone()));
            }
            Change::Delete { key } => {
                flat.remove(key);
            }
        }
    }
}

/// What happened to one change. Values are already redacted for logs (token hashes hidden,
/// journal passwords masked); `None` means the key was deleted.
#[derive(Clone, Debug, PartialEq)]
pub enum ConfigEvent {
    /// In effect now: the current config (and its `version`) already has it.
    Applied {
        key: String,
        value: Option<String>,
        revision: i64,
        version: u64,
    },
    /// Valid, but only a restart applies it (router keys, addresses, paths, journal, TLS). The
    /// current config keeps the old value.
    RestartRequired {
        key: String,
        value: Option<String>,
        revision: i64,
    },
    /// Refused: the old value stays.
    Rejected {
        key: String,
        value: Option<String>,
        error: ConfigError,
        revision: i64,
    },
    /// The etcd watch broke; the watcher is reconnecting with backoff.
    Disconnected { error: String },
    /// The etcd watch is back, resumed after `revision` (no change was missed).
    Reconnected { revision: i64 },
}

/// The config in effect, as published to subscribers.
#[derive(Clone, Debug)]
pub struct ConfigSnapshot {
    /// Starts at 1, +1 per applied change that altered the config. Drivers may put it in
    /// `DeliveryHeartbeat::config_version`.
    pub version: u64,
    /// The etcd revision this snapshot reflects (0 for a file).
    pub revision: i64,
    pub config: Arc<EchoConfig>,
    /// Valid changes waiting for a restart: key → redacted value (`None` = deleted).
    pub restart_pending: Arc<BTreeMap<String, Option<String>>>,
}

/// The applied config: base (file) keys, etcd keys in effect over them, pending restarts.
pub struct ConfigStore {
    base: FlatConfig,
    overlay: FlatConfig,
    pending: BTreeMap<String, Option<String>>,
    current: Arc<EchoConfig>,
    version: u64,
    revision: i64,
}

impl ConfigStore {
    /// A store over `base` (the file's keys), which must be valid.
    pub fn new(base: FlatConfig) -> Result<Self, Vec<ConfigError>> {
        let cfg = build(&base)?;
        Ok(ConfigStore {
            base,
            overlay: FlatConfig::new(),
            pending: BTreeMap::new(),
            current: Arc::new(cfg),
            version: 1,
            revision: 0,
        })
    }

    pub fn snapshot(&self) -> ConfigSnapshot {
        ConfigSnapshot {
            version: self.version,
            revision: self.revision,
            config: self.current.clone(),
            restart_pending: Arc::new(self.pending.clone()),
        }
    }

    pub fn current(&self) -> &Arc<EchoConfig> {
        &self.current
    }

    /// The etcd keys in effect, as text.
    pub fn etcd_keys(&self) -> BTreeMap<String, String> {
        self.overlay
            .iter()
            .map(|(k, v)| (k.clone(), v.text()))
            .collect()
    }

    fn try_build(&self, overlay: &FlatConfig) -> Result<EchoConfig, Vec<ConfigError>> {
        let mut merged = self.base.clone();
        merged.extend(overlay.iter().map(|(k, v)| (k.clone(), v.clone())));
        build(&merged)
    }

    /// Startup: everything in `kvs` applies (restart keys too). Invalid keys are rejected one
    /// by one and the rest applied; the returned events list the rejections.
    pub fn load_snapshot(&mut self, revision: i64, kvs: Vec<(String, String)>) -> Vec<ConfigEvent> {
        self.revision = revision;
        let changes: Vec<Change> = kvs
            .into_iter()
            .map(|(key, value)| Change::Put { key, value })
            .collect();
        let mut events = Vec::new();
        let mut all = FlatConfig::new();
        for c in &changes {
            c.apply_to(&mut all);
        }
        match self.try_build(&all) {
            Ok(cfg) => {
                self.overlay = all;
                self.publish(cfg);
            }
            Err(_) => {
                self.overlay.clear();
                let (accepted, rejected) = self.fixpoint(&changes, revision);
                for c in accepted {
                    c.apply_to(&mut self.overlay);
                }
                match self.try_build(&self.overlay) {
                    Ok(cfg) => self.publish(cfg),
                    Err(_) => self.overlay.clear(),
                }
                events.extend(rejected);
            }
        }
        events
    }

    /// Applies the changes of one etcd revision (one transaction). Valid live changes take
    /// effect; valid restart-only changes are recorded as pending; invalid ones are refused and
    /// the old value stays. Each outcome is logged and returned.
    pub fn apply(&mut self, revision: i64, changes: Vec<Change>) -> Vec<ConfigEvent> {
        self.revision = self.revision.max(revision);
        let mut all = self.overlay.clone();
        for c in &changes {
            c.apply_to(&mut all);
        }
        let (accepted, mut events) = if self.try_build(&all).is_ok() {
            (changes.iter().collect::<Vec<_>>(), Vec::new())
        } else {
            self.fixpoint(&changes, revision)
        };

        let mut live = self.overlay.clone();
        let mut live_changes = Vec::new();
        for c in accepted {
            let in_effect = self
                .overlay
                .get(c.key())
                .or_else(|| self.base.get(c.key()))
                .map(RawValue::text);
            if apply_class(c.key()) == Apply::Restart && in_effect.as_deref() != c.value() {
                let value = c.loggable();
                warn!(key = c.key(), value = ?value, revision,
                    "config change needs a restart: not applied until then");
                self.pending.insert(c.key().to_string(), value.clone());
                events.push(ConfigEvent::RestartRequired {
                    key: c.key().to_string(),
                    value,
                    revision,
                });
            } else {
                self.pending.remove(c.key());
                c.apply_to(&mut live);
                live_changes.push(c);
            }
        }
        match self.try_build(&live) {
            Ok(cfg) => {
                self.overlay = live;
                self.publish(cfg);
                for c in live_changes {
                    let value = c.loggable();
                    info!(key = c.key(), value = ?value, revision, version = self.version,
                        "config change applied");
                    events.push(ConfigEvent::Applied {
                        key: c.key().to_string(),
                        value,
                        revision,
                        version: self.version,
                    });
                }
            }
            Err(errors) => {
                // Live changes that are only valid together with a restart-only one: refuse
                // them rather than apply half a transaction.
                for c in live_changes {
                    events.push(self.reject(c, &errors, revision));
                }
            }
        }
        events
    }

    /// After a compaction or a lost watch: diff `kvs` (the whole prefix now) against the keys
    /// in effect and apply the difference as one change set.
    pub fn resync(&mut self, revision: i64, kvs: Vec<(String, String)>) -> Vec<ConfigEvent> {
        let now: BTreeMap<String, String> = kvs.into_iter().collect();
        let before = self.etcd_keys();
        let mut changes = Vec::new();
        for key in before.keys() {
            if !now.contains_key(key) {
                changes.push(Change::Delete { key: key.clone() });
            }
        }
        for (key, value) in now {
            let pending_same = self.pending.get(&key).map(Option::as_deref)
                == Some(Some(loggable_value(&key, &value).as_ref()));
            if before.get(&key) != Some(&value) && !pending_same {
                changes.push(Change::Put { key, value });
            }
        }
        if changes.is_empty() {
            self.revision = self.revision.max(revision);
            return Vec::new();
        }
        self.apply(revision, changes)
    }

    /// Accepts changes one at a time over the current overlay, retrying the refused ones while
    /// any progress is made (so key order never matters); returns the accepted changes and the
    /// rejection events for the rest.
    fn fixpoint<'c>(
        &self,
        changes: &'c [Change],
        revision: i64,
    ) -> (Vec<&'c Change>, Vec<ConfigEvent>) {
        let mut overlay = self.overlay.clone();
        let mut accepted = Vec::new();
        let mut remaining: Vec<&Change> = changes.iter().collect();
        loop {
            let mut progress = false;
            let mut still = Vec::new();
            for c in remaining {
                let mut candidate = overlay.clone();
                c.apply_to(&mut candidate);
                if self.try_build(&candidate).is_ok() {
                    overlay = candidate;
                    accepted.push(c);
                    progress = true;
                } else {
                    still.push(c);
                }
            }
            remaining = still;
            if !progress || remaining.is_empty() {
                break;
            }
        }
        let mut events = Vec::new();
        for c in remaining {
            let mut candidate = overlay.clone();
            c.apply_to(&mut candidate);
            let errors = self.try_build(&candidate).err().unwrap_or_default();
            events.push(self.reject(c, &errors, revision));
        }
        // Keep etcd order for the accepted ones.
        accepted.sort_by_key(|c| changes.iter().position(|x| std::ptr::eq(x, *c)));
        (accepted, events)
    }

    fn reject(&self, c: &Change, errors: &[ConfigError], revision: i64) -> ConfigEvent {
        let error = errors
            .iter()
            .find(|e| e.key() == c.key())
            .or_else(|| errors.first())
            .cloned()
            .unwrap_or_else(|| ConfigError::Invalid {
                key: c.key().to_string(),
                value: c.value().unwrap_or_default().to_string(),
                expected: "a value valid together with the rest of the config".into(),
            });
        let value = c.loggable();
        warn!(key = c.key(), value = ?value, error = %error, revision,
            "config change rejected: old value stays");
        ConfigEvent::Rejected {
            key: c.key().to_string(),
            value,
            error,
            revision,
        }
    }

    fn publish(&mut self, cfg: EchoConfig) {
        if *self.current != cfg {
            self.current = Arc::new(cfg);
            self.version += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> Change {
        Change::Put {
            key: k.into(),
            value: v.into(),
        }
    }

    const ACK: &str = "/echo/core/delivery/ack_timeout_ms";
    const POOL: &str = "/echo/core/router/worker_pool_size";

    #[test]
    fn live_restart_and_rejected() {
        let mut s = ConfigStore::new(FlatConfig::new()).expect("defaults");
        assert!(s
            .load_snapshot(5, vec![(POOL.into(), "8".into())])
            .is_empty());
        assert_eq!(
            s.current().core.router.worker_pool_size,
            8,
            "startup applies router keys"
        );
        let v = s.snapshot().version;

        let ev = s.apply(6, vec![put(ACK, "3000")]);
        assert!(
            matches!(&ev[..], [ConfigEvent::Applied { key, .. }] if key == ACK),
            "{ev:?}"
        );
        assert_eq!(s.current().core.delivery.ack_timeout_ms, 3000);
        assert_eq!(s.snapshot().version, v + 1);

        let ev = s.apply(7, vec![put(ACK, "1")]);
        assert!(matches!(&ev[..], [ConfigEvent::Rejected { error, .. }] if error.key() == ACK));
        assert_eq!(
            s.current().core.delivery.ack_timeout_ms,
            3000,
            "old value stays"
        );

        let ev = s.apply(8, vec![put(POOL, "16")]);
        assert!(
            matches!(&ev[..], [ConfigEvent::RestartRequired { .. }]),
            "{ev:?}"
        );
        assert_eq!(s.current().core.router.worker_pool_size, 8);
        assert!(s.snapshot().restart_pending.contains_key(POOL));
        let ev = s.apply(9, vec![put(POOL, "8")]);
        assert!(
            matches!(&ev[..], [ConfigEvent::Applied { .. }]),
            "back to the value in effect"
        );
        assert!(s.snapshot().restart_pending.is_empty());
    }

    #[test]
    fn order_inside_a_transaction_does_not_matter() {
        let mut s = ConfigStore::new(FlatConfig::new()).expect("defaults");
        let h = super::super::token::hash_token("t");
        let ev = s.load_snapshot(
            3,
            vec![
                ("/echo/agents/a/accounts/m".into(), "master".into()),
                ("/echo/agents/a/token_hash".into(), h),
                ("/echo/core/delivery/max_retries".into(), "0".into()),
            ],
        );
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(s.current().agents.len(), 1);
        let ev = s.apply(
            4,
            vec![
                Change::Delete {
                    key: "/echo/agents/a/accounts/m".into(),
                },
                Change::Delete {
                    key: "/echo/agents/a/token_hash".into(),
                },
            ],
        );
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert!(s.current().agents.is_empty());
    }

    #[test]
    fn resync_applies_only_the_difference() {
        let mut s = ConfigStore::new(FlatConfig::new()).expect("defaults");
        s.load_snapshot(
            2,
            vec![
                (ACK.into(), "3000".into()),
                ("/echo/core/delivery/max_retries".into(), "7".into()),
            ],
        );
        s.apply(3, vec![put(POOL, "16")]);
        // After a compaction: max_retries deleted, ack changed, pool still 16 (pending).
        let ev = s.resync(
            9,
            vec![(ACK.into(), "4000".into()), (POOL.into(), "16".into())],
        );
        assert_eq!(ev.len(), 2, "{ev:?}");
        let c = s.current();
        assert_eq!(c.core.delivery.ack_timeout_ms, 4000);
        assert_eq!(
            c.core.delivery.max_retries, 5,
            "deleted key back to its default"
        );
        assert_eq!(c.core.router.worker_pool_size, 4);
        assert_eq!(s.snapshot().revision, 9);
    }
}
