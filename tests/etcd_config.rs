//! The etcd config suite, against a real etcd started by each test (Debian's `etcd-server`).
//! A missing `etcd` binary fails these tests with the install command; they never skip.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use echo_runtime::config::{
    hash_token, ConfigEvent, ConfigHandle, ConfigSource, EtcdSource, OpenError,
};
use echo_statemachine::ids::{AccountId, AgentId};
use echo_tests::etcd_server::EtcdServer;
use etcd_client::Client;
use tokio::sync::broadcast;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(20);

async fn client(etcd: &EtcdServer) -> Client {
    Client::connect([etcd.endpoint()], None)
        .await
        .expect("test client connects")
}

async fn put(c: &mut Client, key: &str, value: &str) {
    c.put(key, value, None).await.expect("etcd put");
}

async fn open(etcd: &EtcdServer) -> ConfigHandle {
    let mut src = EtcdSource::new([etcd.endpoint()]);
    src.backoff_min = Duration::from_millis(50);
    src.backoff_max = Duration::from_millis(500);
    ConfigSource::Etcd(src)
        .open()
        .await
        .expect("config source opens")
}

/// The next event about `key` (skipping others), or a panic after `WAIT`.
async fn event_for(rx: &mut broadcast::Receiver<ConfigEvent>, key: &str) -> ConfigEvent {
    let wait = async {
        loop {
            let ev = rx.recv().await.expect("event stream open");
            let k = match &ev {
                ConfigEvent::Applied { key, .. }
                | ConfigEvent::RestartRequired { key, .. }
                | ConfigEvent::Rejected { key, .. } => key.as_str(),
                _ => continue,
            };
            if k == key {
                return ev;
            }
        }
    };
    timeout(WAIT, wait)
        .await
        .unwrap_or_else(|_| panic!("no config event for {key} within {WAIT:?}"))
}

#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuf {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_load_reads_every_kind_of_key() {
    let etcd = EtcdServer::start();
    let mut c = client(&etcd).await;
    put(&mut c, "/echo/core/delivery/ack_timeout_ms", "4000").await;
    put(&mut c, "/echo/core/router/worker_pool_size", "8").await;
    put(&mut c, "/echo/agent/delivery/max_retries", "20").await;
    put(&mut c, "/echo/subscriptions/m1/s1/multiplier", "2.5").await;
    put(
        &mut c,
        "/echo/subscriptions/m1/s1/symbol_map/EURUSD",
        "EURUSD.m",
    )
    .await;
    put(&mut c, "/echo/agents/a1/token_hash", &hash_token("tok-1")).await;
    put(&mut c, "/echo/agents/a1/accounts/m1", "master").await;
    put(&mut c, "/echo/core/delivery/max_retries", "1000").await; // out of range
    put(&mut c, "/echo/core/delivery/nonsense", "1").await; // unknown

    let h = open(&etcd).await;
    let cfg = h.current();
    assert_eq!(cfg.core.delivery.ack_timeout_ms, 4000);
    assert_eq!(
        cfg.core.router.worker_pool_size, 8,
        "startup applies router keys"
    );
    assert_eq!(cfg.agent.delivery.max_retries, 20);
    assert_eq!(
        cfg.core.delivery.max_retries, 5,
        "invalid key keeps the default"
    );
    assert_eq!(cfg.subscriptions.len(), 1);
    assert_eq!(cfg.subscriptions[0].multiplier, 2.5);
    assert_eq!(cfg.subscriptions[0].symbol_map.len(), 1);
    let entry = cfg
        .authenticate(&AgentId::new("a1"), "tok-1")
        .expect("token accepted");
    assert!(entry.may_speak_for(&AccountId::new("m1"), echo_runtime::config::Role::Master));
    assert!(cfg.authenticate(&AgentId::new("a1"), "tok-2").is_err());

    let rejected: Vec<&str> = h
        .startup_rejections()
        .iter()
        .filter_map(|e| match e {
            ConfigEvent::Rejected { key, .. } => Some(key.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        rejected,
        [
            "/echo/core/delivery/max_retries",
            "/echo/core/delivery/nonsense"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_delivery_change_arrives_as_event_and_in_current_config() {
    let etcd = EtcdServer::start();
    let h = open(&etcd).await;
    let mut events = h.events();
    let mut watch = h.subscribe();
    let v0 = h.snapshot().version;
    let mut c = client(&etcd).await;

    put(&mut c, "/echo/core/delivery/ack_timeout_ms", "3000").await;
    match event_for(&mut events, "/echo/core/delivery/ack_timeout_ms").await {
        ConfigEvent::Applied { value, version, .. } => {
            assert_eq!(value.as_deref(), Some("3000"));
            assert_eq!(version, v0 + 1);
        }
        other => panic!("expected Applied, got {other:?}"),
    }
    assert_eq!(h.current().core.delivery.ack_timeout_ms, 3000);
    timeout(WAIT, watch.changed())
        .await
        .expect("watch wakes")
        .expect("sender alive");
    assert_eq!(watch.borrow().config.core.delivery.ack_timeout_ms, 3000);

    put(&mut c, "/echo/agent/delivery/retry_backoff_ms", "250").await;
    let ev = event_for(&mut events, "/echo/agent/delivery/retry_backoff_ms").await;
    assert!(matches!(ev, ConfigEvent::Applied { .. }), "{ev:?}");
    assert_eq!(h.current().agent.delivery.retry_backoff_ms, 250);

    // Deleting the key brings the default back, live.
    c.delete("/echo/core/delivery/ack_timeout_ms", None)
        .await
        .expect("delete");
    let ev = event_for(&mut events, "/echo/core/delivery/ack_timeout_ms").await;
    assert!(
        matches!(ev, ConfigEvent::Applied { value: None, .. }),
        "{ev:?}"
    );
    assert_eq!(h.current().core.delivery.ack_timeout_ms, 2000);

    // A subscription added live.
    put(&mut c, "/echo/subscriptions/m/s/multiplier", "0.1").await;
    event_for(&mut events, "/echo/subscriptions/m/s/multiplier").await;
    assert_eq!(h.current().subscriptions.len(), 1);
    put(
        &mut c,
        "/echo/subscriptions/m/s/symbol_map/EURUSD",
        "EURUSD.x",
    )
    .await;
    event_for(&mut events, "/echo/subscriptions/m/s/symbol_map/EURUSD").await;
    assert_eq!(h.current().subscriptions[0].symbol_map.len(), 1);

    // Removed whole in one transaction (`etcdctl del --prefix`): key order inside it does
    // not matter.
    c.delete(
        "/echo/subscriptions/m/s/",
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
    .await
    .expect("delete prefix");
    let ev = event_for(&mut events, "/echo/subscriptions/m/s/symbol_map/EURUSD").await;
    assert!(matches!(ev, ConfigEvent::Applied { .. }), "{ev:?}");
    assert!(h.current().subscriptions.is_empty());
}

#[tokio::test(flavor = "current_thread")]
async fn invalid_value_is_refused_logged_and_old_value_stays() {
    // current_thread: the watcher task runs on this thread, under this thread's subscriber.
    let logs = LogBuf::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let etcd = EtcdServer::start();
    let h = open(&etcd).await;
    let mut events = h.events();
    let mut c = client(&etcd).await;

    put(&mut c, "/echo/agent/delivery/max_retries", "7").await;
    event_for(&mut events, "/echo/agent/delivery/max_retries").await;
    assert_eq!(h.current().agent.delivery.max_retries, 7);

    put(&mut c, "/echo/agent/delivery/max_retries", "0").await;
    match event_for(&mut events, "/echo/agent/delivery/max_retries").await {
        ConfigEvent::Rejected { value, error, .. } => {
            assert_eq!(value.as_deref(), Some("0"));
            assert_eq!(error.key(), "/echo/agent/delivery/max_retries");
            assert!(error.to_string().contains("1..=1000"), "{error}");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(h.current().agent.delivery.max_retries, 7, "old value stays");

    put(&mut c, "/echo/core/delivery/heartbeat_interval_ms", "fast").await;
    let ev = event_for(&mut events, "/echo/core/delivery/heartbeat_interval_ms").await;
    assert!(matches!(ev, ConfigEvent::Rejected { .. }), "{ev:?}");
    assert_eq!(h.current().core.delivery.heartbeat_interval_ms, 1000);

    // A bad token hash is refused without echoing it.
    let secret_ish = "sha256:0123456789abcdef";
    put(&mut c, "/echo/agents/x/token_hash", secret_ish).await;
    let ev = event_for(&mut events, "/echo/agents/x/token_hash").await;
    assert!(!format!("{ev:?}").contains("0123456789abcdef"), "{ev:?}");

    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("rejected") && l.contains("/echo/agent/delivery/max_retries"))
        .unwrap_or_else(|| panic!("no warn line for the rejected key in:\n{text}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("\"0\""), "names the value: {line}");
    assert!(line.contains("1..=1000"), "names the range: {line}");
    assert!(
        !text.contains("0123456789abcdef"),
        "token hash leaked:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_key_change_is_flagged_restart_required() {
    let etcd = EtcdServer::start();
    let h = open(&etcd).await;
    let mut events = h.events();
    let mut c = client(&etcd).await;

    put(&mut c, "/echo/core/router/queue_depth_max", "64").await;
    match event_for(&mut events, "/echo/core/router/queue_depth_max").await {
        ConfigEvent::RestartRequired { value, .. } => assert_eq!(value.as_deref(), Some("64")),
        other => panic!("expected RestartRequired, got {other:?}"),
    }
    let snap = h.snapshot();
    assert_eq!(
        snap.config.core.router.queue_depth_max, 8,
        "not applied live"
    );
    assert_eq!(
        snap.restart_pending
            .get("/echo/core/router/queue_depth_max")
            .cloned()
            .flatten()
            .as_deref(),
        Some("64")
    );

    // Still validated: an invalid router value is refused, not flagged.
    put(&mut c, "/echo/core/router/worker_pool_size", "6").await;
    let ev = event_for(&mut events, "/echo/core/router/worker_pool_size").await;
    assert!(matches!(ev, ConfigEvent::Rejected { .. }), "{ev:?}");

    // A restart (a new source over the same etcd) applies it.
    let again = open(&etcd).await;
    assert_eq!(again.current().core.router.queue_depth_max, 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_after_etcd_restart() {
    let mut etcd = EtcdServer::start();
    let h = open(&etcd).await;
    let mut events = h.events();
    {
        let mut c = client(&etcd).await;
        put(&mut c, "/echo/core/delivery/max_retries", "9").await;
        event_for(&mut events, "/echo/core/delivery/max_retries").await;
    }

    etcd.kill();
    let lost = timeout(WAIT, async {
        loop {
            if let ConfigEvent::Disconnected { .. } = events.recv().await.expect("open") {
                return;
            }
        }
    })
    .await;
    assert!(lost.is_ok(), "watcher did not notice etcd going away");
    tokio::time::sleep(Duration::from_millis(300)).await;
    etcd.restart();

    // Written right after the restart, possibly before the watcher is back: resuming from
    // the last revision must still deliver it.
    let mut c = client(&etcd).await;
    put(&mut c, "/echo/core/delivery/max_retries", "11").await;
    put(&mut c, "/echo/agent/delivery/ack_timeout_ms", "777").await;
    event_for(&mut events, "/echo/core/delivery/max_retries").await;
    event_for(&mut events, "/echo/agent/delivery/ack_timeout_ms").await;
    let cfg = h.current();
    assert_eq!(cfg.core.delivery.max_retries, 11);
    assert_eq!(cfg.agent.delivery.ack_timeout_ms, 777);

    // And later changes keep arriving.
    put(&mut c, "/echo/core/delivery/retry_backoff_ms", "300").await;
    event_for(&mut events, "/echo/core/delivery/retry_backoff_ms").await;
    assert_eq!(h.current().core.delivery.retry_backoff_ms, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_etcd_is_a_typed_error() {
    let etcd = EtcdServer::start();
    let endpoint = etcd.endpoint();
    drop(etcd);
    let mut src = EtcdSource::new([endpoint]);
    src.request_timeout = Duration::from_millis(500);
    let err = ConfigSource::Etcd(src).open().await.expect_err("no etcd");
    assert!(matches!(err, OpenError::Etcd(_)), "{err:?}");
}
