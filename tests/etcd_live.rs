//! Live config, end to end: a real etcd (started by the test), a real core and a real agent
//! started in-process (`app::core::start`, `app::agent::start`) over plain-text loopback gRPC,
//! a SQLite journal and a redb ledger in a temp dir, the agent's token stored hashed in etcd,
//! and terminals on the agent's real Unix sockets.
//!
//! - a delivery key changed in etcd reaches the agent in a `DeliveryHeartbeat` with a higher
//!   `config_version`, the agent machine applies it, and a connected master terminal gets the
//!   new `delivery_config` on its pipe;
//! - an out-of-range value is refused (a `warn` line naming key and range) and the agent keeps
//!   the old value;
//! - a subscription added in etcd takes effect for the next intent;
//! - an agent with a wrong token is refused, counted, and knocks again with a growing backoff.
//!
//! A missing `etcd` binary fails these tests with the install command; they never skip.
#![cfg(unix)]

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use echo_runtime::app::agent::{self as agent_app, AgentSettings, RunningAgent};
use echo_runtime::app::core::{self as core_app, RunningCore};
use echo_runtime::config::{hash_token, ConfigEvent, ConfigHandle, ConfigSource, EtcdSource};
use echo_runtime::drivers::agent::AgentStatus;
use echo_runtime::link::client::ClientSettings;
use echo_runtime::machines::config::AgentDeliveryConfig;
use echo_runtime::machines::ids::{AccountId, AgentId, IntentId, Symbol, TradeId};
use echo_runtime::machines::msg::{AgentToEa, EaToAgent, IntentKind, Role, Side, TradeIntent};
use echo_runtime::pipe::client::{connect, FrameReader, FrameWriter};
use echo_runtime::pipe::{endpoint_path, AgentFrame, EaFrame, Hello, MAX_FRAME_LEN};
use echo_tests::etcd_server::EtcdServer;
use etcd_client::Client;
use tokio::sync::broadcast;
use tokio::time::{sleep, timeout, Instant};

const WAIT: Duration = Duration::from_secs(20);
const TOKEN: &str = "etcd-live-agent-token";
const AGENT_ACK: &str = "/echo/agent/delivery/ack_timeout_ms";
const CORE_ACK: &str = "/echo/core/delivery/ack_timeout_ms";

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

/// Every log line of the process (core, agent and config tasks run on several threads).
fn capture_logs() -> LogBuf {
    let logs = LogBuf::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    tracing::subscriber::set_global_default(subscriber)
        .expect("one global subscriber per test process (nextest)");
    logs
}

fn short_temp_dir(tag: &str) -> tempfile::TempDir {
    // Socket paths must stay under 108 bytes.
    tempfile::Builder::new()
        .prefix(&format!("echo-{tag}-"))
        .tempdir_in("/tmp")
        .expect("temp dir")
}

async fn put(c: &mut Client, key: &str, value: &str) {
    c.put(key, value, None).await.expect("etcd put");
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

/// etcd + core + agent (accounts m1 master, s1 and s2 slaves; subscription m1 → s1).
struct Rig {
    etcd: EtcdServer,
    client: Client,
    cfg: ConfigHandle,
    core: Option<RunningCore>,
    agent: Option<RunningAgent>,
    sockets: PathBuf,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn start() -> Rig {
        let etcd = EtcdServer::start();
        let dir = short_temp_dir("etcdlive");
        let mut client = Client::connect([etcd.endpoint()], None)
            .await
            .expect("test client connects");
        // The agent's token is stored hashed; its accounts and the first subscription too.
        put(
            &mut client,
            "/echo/agents/a1/token_hash",
            &hash_token(TOKEN),
        )
        .await;
        put(&mut client, "/echo/agents/a1/accounts/m1", "master").await;
        put(&mut client, "/echo/agents/a1/accounts/s1", "slave").await;
        put(&mut client, "/echo/agents/a1/accounts/s2", "slave").await;
        put(&mut client, "/echo/subscriptions/m1/s1/multiplier", "1.0").await;
        put(&mut client, AGENT_ACK, "1500").await;

        // Process settings come from a base TOML file under etcd's keys.
        let base = dir.path().join("echo.toml");
        std::fs::write(
            &base,
            format!(
                "[core]\nlisten_addr = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n\
                 journal = \"sqlite:journal.sqlite3\"\nmetrics_addr = \"\"\n",
                dir.path().join("core").display()
            ),
        )
        .expect("write base config");
        let mut src = EtcdSource::new([etcd.endpoint()]);
        src.base_file = Some(base);
        src.backoff_min = Duration::from_millis(50);
        src.backoff_max = Duration::from_millis(500);
        let cfg = ConfigSource::Etcd(src)
            .open()
            .await
            .expect("config source opens");
        assert!(
            cfg.startup_rejections().is_empty(),
            "{:?}",
            cfg.startup_rejections()
        );

        let core = core_app::start(cfg.clone()).await.expect("core starts");
        let sockets = dir.path().join("s");
        let settings = AgentSettings {
            id: AgentId::new("a1"),
            token: TOKEN.to_string(),
            accounts: vec![
                (AccountId::new("m1"), Role::Master),
                (AccountId::new("s1"), Role::Slave),
                (AccountId::new("s2"), Role::Slave),
            ],
            data_dir: dir.path().join("agent"),
            socket_dir: sockets.clone(),
            metrics_addr: None,
            link: ClientSettings::new(format!("http://{}", core.link_addr)),
            delivery: Default::default(),
        };
        let agent = agent_app::start(settings).await.expect("agent starts");
        let rig = Rig {
            etcd,
            client,
            cfg,
            core: Some(core),
            agent: Some(agent),
            sockets,
            _dir: dir,
        };
        rig.status_until("the agent is online with the core's config", |s| {
            s.link_online && s.config_version > 0 && s.delivery_config.ack_timeout_ms == 1500
        })
        .await;
        rig
    }

    fn status(&self) -> Arc<AgentStatus> {
        let agent = self.agent.as_ref().expect("agent running");
        let s = agent.handle.status.borrow().clone();
        s
    }

    /// Polls the agent's published status (every 500 ms) until `ok`, or panics after `WAIT`.
    async fn status_until(
        &self,
        what: &str,
        ok: impl Fn(&AgentStatus) -> bool,
    ) -> Arc<AgentStatus> {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = self.status();
            if ok(&s) {
                return s;
            }
            if Instant::now() > deadline {
                panic!(
                    "{what}: not within {WAIT:?}; last status {s:?}; etcd log:\n{}",
                    self.etcd.log_tail()
                );
            }
            sleep(Duration::from_millis(50)).await;
        }
    }

    async fn terminal(&self, account: &str, role: Role) -> (FrameReader, FrameWriter) {
        let path = endpoint_path(&self.sockets, &AccountId::new(account));
        let hello = Hello {
            account: AccountId::new(account),
            role,
            protocol_version: 1,
            software: Some("etcd_live test".into()),
        };
        let (mut r, w) = connect(&path, hello, MAX_FRAME_LEN)
            .await
            .expect("connect to the agent's pipe");
        match next_msg(&mut r, account).await {
            AgentToEa::Handshake { account: a, .. } => assert_eq!(a.as_str(), account),
            other => panic!("{account}: expected a handshake first, got {other:?}"),
        }
        (r, w)
    }

    async fn stop(mut self) {
        if let Some(a) = self.agent.take() {
            a.stop().await;
        }
        if let Some(c) = self.core.take() {
            c.stop().await.expect("core stops cleanly");
        }
    }
}

async fn next_msg(r: &mut FrameReader, who: &str) -> AgentToEa {
    let frame = timeout(WAIT, r.next())
        .await
        .unwrap_or_else(|_| panic!("{who}: no frame within {WAIT:?}"))
        .expect("pipe read")
        .unwrap_or_else(|| panic!("{who}: pipe closed"))
        .expect("a frame the terminal can decode");
    match frame {
        AgentFrame::Msg(m) => m,
        AgentFrame::Error(e) => panic!("{who}: error frame {e:?}"),
    }
}

/// The first message on `r` that `pick` accepts (others are skipped), or a panic after `WAIT`.
async fn wait_msg<T>(r: &mut FrameReader, who: &str, pick: impl Fn(AgentToEa) -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = timeout(left, next_msg(r, who))
            .await
            .unwrap_or_else(|_| panic!("{who}: the awaited message did not come within {WAIT:?}"));
        if let Some(t) = pick(m) {
            return t;
        }
    }
}

fn open_intent(n: u64) -> TradeIntent {
    TradeIntent {
        origin: Default::default(),
        intent_id: IntentId::new(format!("m1-i{n}")),
        trade_id: TradeId::new(format!("m1-t{n}")),
        master: AccountId::new("m1"),
        kind: IntentKind::Open,
        symbol: Symbol::new("EURUSD"),
        side: Side::Buy,
        volume: 0.1,
        price: 1.1,
        stop_loss: 0.0,
        take_profit: 0.0,
        master_ticket: n as i64,
        master_seq: n,
        emitted_at_ms: 1_700_000_000_000 + n as i64,
        master_volume_before: 0.0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_delivery_change_reaches_agent_and_master_and_bad_value_is_refused() {
    let logs = capture_logs();
    let mut rig = Rig::start().await;
    let (mut master, _mw) = rig.terminal("m1", Role::Master).await;
    // The master gets the core's agent config right after its handshake.
    let first = wait_msg(&mut master, "m1", |m| match m {
        AgentToEa::DeliveryConfig(c) => Some(c),
        _ => None,
    })
    .await;
    assert_eq!(first.ack_timeout_ms, 1500);

    let before = rig.status();
    let v0 = before.config_version;
    let mut events = rig.cfg.events();
    put(&mut rig.client, AGENT_ACK, "3333").await;
    put(&mut rig.client, CORE_ACK, "4444").await;
    assert!(matches!(
        event_for(&mut events, AGENT_ACK).await,
        ConfigEvent::Applied { .. }
    ));
    assert!(matches!(
        event_for(&mut events, CORE_ACK).await,
        ConfigEvent::Applied { .. }
    ));

    // The agent machine applied the new agent config, from a heartbeat of a higher version that
    // carries both keys.
    let s = rig
        .status_until("the agent applies ack_timeout_ms = 3333", |s| {
            s.delivery_config.ack_timeout_ms == 3333
                && s.last_heartbeat.is_some_and(|hb| {
                    hb.core.ack_timeout_ms == 4444 && hb.agent.ack_timeout_ms == 3333
                })
        })
        .await;
    assert!(
        s.config_version > v0,
        "version {} after {v0}",
        s.config_version
    );
    let hb = s.last_heartbeat.expect("a heartbeat arrived");
    assert_eq!(hb.config_version, s.config_version);
    assert_eq!(
        hb.agent,
        AgentDeliveryConfig {
            ack_timeout_ms: 3333,
            ..before.delivery_config
        }
    );

    // …and pushed it on to the master terminal's pipe.
    let pushed = wait_msg(&mut master, "m1", |m| match m {
        AgentToEa::DeliveryConfig(c) if c.ack_timeout_ms == 3333 => Some(c),
        _ => None,
    })
    .await;
    assert_eq!(pushed, s.delivery_config);

    // Out of range (50..=120000): refused by the config layer, logged, nothing pushed.
    put(&mut rig.client, AGENT_ACK, "10").await;
    match event_for(&mut events, AGENT_ACK).await {
        ConfigEvent::Rejected { value, error, .. } => {
            assert_eq!(value.as_deref(), Some("10"));
            assert_eq!(error.key(), AGENT_ACK);
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(rig.cfg.current().agent.delivery.ack_timeout_ms, 3333);
    let v1 = rig.status().config_version;
    // Two heartbeat periods: every heartbeat still carries the old value.
    sleep(Duration::from_millis(2_500)).await;
    let s = rig.status();
    assert_eq!(
        s.delivery_config.ack_timeout_ms, 3333,
        "the agent keeps the old value"
    );
    assert_eq!(s.config_version, v1, "no new version for a refused value");
    let hb = s.last_heartbeat.expect("heartbeats keep coming");
    assert_eq!(hb.agent.ack_timeout_ms, 3333);
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("WARN") && l.contains("rejected") && l.contains(AGENT_ACK))
        .unwrap_or_else(|| panic!("no warn line for the refused key in:\n{text}"));
    assert!(line.contains("50..=120000"), "names the range: {line}");
    assert!(!text.contains(TOKEN), "the token leaked into the logs");

    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_added_in_etcd_applies_to_the_next_intent() {
    let mut rig = Rig::start().await;
    let (mut master, mut mw) = rig.terminal("m1", Role::Master).await;
    let (mut s1, _s1w) = rig.terminal("s1", Role::Slave).await;
    let (mut s2, _s2w) = rig.terminal("s2", Role::Slave).await;

    let i1 = open_intent(1);
    mw.send(&EaFrame::Msg(EaToAgent::Intent(i1.clone())))
        .await
        .expect("master writes");
    let c1 = wait_msg(&mut s1, "s1", |m| match m {
        AgentToEa::Command(c) => Some(c),
        _ => None,
    })
    .await;
    assert_eq!(c1.trade_id, i1.trade_id);
    let ack = wait_msg(&mut master, "m1", |m| match m {
        AgentToEa::IntentAck(a) if a.intent_id == i1.intent_id => Some(a),
        _ => None,
    })
    .await;
    assert_eq!(ack.error, None, "{ack:?}");

    // Add m1 → s2 in etcd; the core gets it with the next config version.
    let v0 = rig.status().config_version;
    let mut events = rig.cfg.events();
    let key = "/echo/subscriptions/m1/s2/multiplier";
    put(&mut rig.client, key, "2.0").await;
    assert!(matches!(
        event_for(&mut events, key).await,
        ConfigEvent::Applied { .. }
    ));
    rig.status_until("the core pushes a new config version", |s| {
        s.config_version > v0
    })
    .await;

    let i2 = open_intent(2);
    mw.send(&EaFrame::Msg(EaToAgent::Intent(i2.clone())))
        .await
        .expect("master writes");
    let c2 = wait_msg(&mut s2, "s2", |m| match m {
        AgentToEa::Command(c) => Some(c),
        _ => None,
    })
    .await;
    assert_eq!(
        c2.trade_id, i2.trade_id,
        "s2 gets the next intent, not the earlier one"
    );
    assert_eq!(c2.slave.as_str(), "s2");
    match &c2.body {
        echo_runtime::machines::msg::CommandBody::Execute { volume, .. } => {
            assert!(
                (volume - 0.2).abs() < 1e-9,
                "multiplier 2.0 applied: {volume}"
            )
        }
        other => panic!("expected an execute, got {other:?}"),
    }
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_a_wrong_token_is_refused_and_backs_off() {
    let rig = Rig::start().await;
    let core = rig.core.as_ref().expect("core running");
    let dir = short_temp_dir("etcdlive-bad");
    let settings = AgentSettings {
        id: AgentId::new("a1"),
        token: "not-the-token".to_string(),
        accounts: vec![(AccountId::new("m1"), Role::Master)],
        data_dir: dir.path().join("agent"),
        socket_dir: dir.path().join("s"),
        metrics_addr: None,
        link: ClientSettings::new(format!("http://{}", core.link_addr)),
        delivery: Default::default(),
    };
    let bad = agent_app::start(settings).await.expect("agent starts");
    let refused = || {
        core.link_metrics
            .refused_bad_token
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let deadline = Instant::now() + WAIT;
    while refused() == 0 {
        assert!(
            Instant::now() < deadline,
            "the wrong token was never refused"
        );
        sleep(Duration::from_millis(20)).await;
    }
    // Backoff 100, 200, 400, 800 ms, … after each refusal: a handful of hellos in 2 s, not
    // one every 100 ms.
    sleep(Duration::from_secs(2)).await;
    let n = refused();
    assert!((2..=7).contains(&n), "{n} refusals in ~2 s");
    assert!(!bad.handle.status.borrow().link_online);
    // The good agent is untouched.
    assert!(rig.status().link_online);
    bad.stop().await;
    rig.stop().await;
}
