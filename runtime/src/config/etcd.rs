//! The etcd side: first snapshot under `/echo/`, then one watch from the next revision,
//! reconnected with capped exponential backoff and resumed from the last revision seen
//! (re-read whole if etcd compacted past it). It only moves key/value changes into the
//! [`ConfigStore`]; every decision about them is the store's.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, WatchOptions};
use tokio::sync::{broadcast, watch};
use tracing::{info, warn};

use super::error::OpenError;
use super::keys::{FlatConfig, PREFIX};
use super::source::{read_flat, ConfigHandle, EtcdSource, EVENT_CAPACITY};
use super::store::{Change, ConfigEvent, ConfigSnapshot, ConfigStore};

pub(super) async fn open(src: EtcdSource) -> Result<ConfigHandle, OpenError> {
    let base = match &src.base_file {
        Some(p) => read_flat(p)?,
        None => FlatConfig::new(),
    };
    let mut store = ConfigStore::new(base).map_err(OpenError::Invalid)?;
    let mut client = connect(&src)
        .await
        .map_err(|e| OpenError::Etcd(e.to_string()))?;
    let (revision, kvs, mut startup) = fetch(&mut client)
        .await
        .map_err(|e| OpenError::Etcd(e.to_string()))?;
    startup.extend(store.load_snapshot(revision, kvs));
    info!(
        revision,
        version = store.snapshot().version,
        rejected = startup.len(),
        "config loaded from etcd"
    );
    let (tx, rx) = watch::channel(store.snapshot());
    let (events, _) = broadcast::channel(EVENT_CAPACITY);
    let task = tokio::spawn(watch_loop(src, client, store, tx, events.clone()));
    Ok(ConfigHandle::from_parts(rx, events, startup, task))
}

async fn connect(src: &EtcdSource) -> Result<Client, etcd_client::Error> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(src.request_timeout)
        .with_timeout(src.request_timeout)
        .with_keep_alive(Duration::from_secs(2), src.request_timeout)
        .with_keep_alive_while_idle(true);
    Client::connect(&src.endpoints, Some(opts)).await
}

/// The whole prefix now: (revision, UTF-8 pairs, rejections for keys or values that are not
/// UTF-8).
async fn fetch(
    client: &mut Client,
) -> Result<(i64, Vec<(String, String)>, Vec<ConfigEvent>), etcd_client::Error> {
    let resp = client
        .get(PREFIX, Some(GetOptions::new().with_prefix()))
        .await?;
    let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
    let mut kvs = Vec::new();
    let mut bad = Vec::new();
    for kv in resp.kvs() {
        match (kv.key_str(), kv.value_str()) {
            (Ok(k), Ok(v)) => kvs.push((k.to_string(), v.to_string())),
            _ => bad.push(not_utf8(kv.key(), revision)),
        }
    }
    Ok((revision, kvs, bad))
}

fn not_utf8(key: &[u8], revision: i64) -> ConfigEvent {
    let key = String::from_utf8_lossy(key).into_owned();
    warn!(key, revision, "config key or value is not UTF-8: ignored");
    ConfigEvent::Rejected {
        error: super::error::ConfigError::Invalid {
            key: key.clone(),
            value: "<not UTF-8>".into(),
            expected: "UTF-8 text".into(),
        },
        key,
        value: None,
        revision,
    }
}

fn publish(
    store: &ConfigStore,
    tx: &watch::Sender<ConfigSnapshot>,
    events: &broadcast::Sender<ConfigEvent>,
    out: Vec<ConfigEvent>,
) {
    let snap = store.snapshot();
    tx.send_if_modified(|cur| {
        let changed = cur.version != snap.version
            || cur.revision != snap.revision
            || cur.restart_pending != snap.restart_pending;
        *cur = snap;
        changed
    });
    for e in out {
        // No receiver is fine: the snapshot carries the effect.
        let _ = events.send(e);
    }
}

enum StreamEnd {
    /// etcd compacted past our revision or cancelled the watch: re-read everything.
    Resync,
    Broken(String),
}

async fn watch_loop(
    src: EtcdSource,
    mut client: Client,
    mut store: ConfigStore,
    tx: watch::Sender<ConfigSnapshot>,
    events: broadcast::Sender<ConfigEvent>,
) {
    let mut next = store.snapshot().revision + 1;
    let mut backoff = src.backoff_min;
    let mut broken = false;
    let mut need_resync = false;
    loop {
        if need_resync {
            match fetch(&mut client).await {
                Ok((revision, kvs, bad)) => {
                    let mut out = bad;
                    out.extend(store.resync(revision, kvs));
                    publish(&store, &tx, &events, out);
                    next = revision + 1;
                    need_resync = false;
                }
                Err(e) => {
                    warn!(error = %e, backoff_ms = backoff.as_millis() as u64,
                        "etcd config re-read failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(src.backoff_max);
                    continue;
                }
            }
        }
        let opts = WatchOptions::new().with_prefix().with_start_revision(next);
        let end = match client.watch(PREFIX, Some(opts)).await {
            Err(e) => StreamEnd::Broken(e.to_string()),
            Ok(mut stream) => loop {
                match stream.message().await {
                    Ok(Some(resp)) => {
                        if broken {
                            broken = false;
                            info!(revision = next - 1, "etcd config watch resumed");
                            publish(
                                &store,
                                &tx,
                                &events,
                                vec![ConfigEvent::Reconnected { revision: next - 1 }],
                            );
                        }
                        backoff = src.backoff_min;
                        if resp.compact_revision() > 0 || resp.canceled() {
                            warn!(
                                compact_revision = resp.compact_revision(),
                                reason = resp.cancel_reason(),
                                "etcd config watch cancelled; re-reading all keys"
                            );
                            break StreamEnd::Resync;
                        }
                        let mut by_rev: BTreeMap<i64, Vec<Change>> = BTreeMap::new();
                        let mut out = Vec::new();
                        for ev in resp.events() {
                            let Some(kv) = ev.kv() else { continue };
                            let rev = kv.mod_revision();
                            let Ok(key) = kv.key_str() else {
                                out.push(not_utf8(kv.key(), rev));
                                continue;
                            };
                            let change = match ev.event_type() {
                                EventType::Put => match kv.value_str() {
                                    Ok(v) => Change::Put {
                                        key: key.to_string(),
                                        value: v.to_string(),
                                    },
                                    Err(_) => {
                                        out.push(not_utf8(kv.key(), rev));
                                        continue;
                                    }
                                },
                                EventType::Delete => Change::Delete {
                                    key: key.to_string(),
                                },
                            };
                            by_rev.entry(rev).or_default().push(change);
                        }
                        for (rev, changes) in by_rev {
                            out.extend(store.apply(rev, changes));
                            next = next.max(rev + 1);
                        }
                        // Only events advance `next`: a `created` response's header revision
                        // can be ahead of history still to be replayed on this stream.
                        publish(&store, &tx, &events, out);
                    }
                    Ok(None) => break StreamEnd::Broken("watch stream ended".into()),
                    Err(e) => break StreamEnd::Broken(e.to_string()),
                }
            },
        };
        match end {
            StreamEnd::Resync => need_resync = true,
            StreamEnd::Broken(error) => {
                if !broken {
                    broken = true;
                    warn!(error, "etcd config watch lost; reconnecting");
                    let _ = events.send(ConfigEvent::Disconnected { error });
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(src.backoff_max);
            }
        }
    }
}
