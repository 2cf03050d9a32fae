//! The agent ↔ core link's security, against the real tonic server, real TLS and the real
//! core machine: a wrong token, a token used for another agent's account, a client without TLS
//! on a TLS listener, and plain text on a public address are each refused, counted and logged
//! without the secret; a correctly configured agent gets online.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use echo_proto::v1 as pb;
use echo_proto::v1::echo_link_client::EchoLinkClient;
use echo_runtime::drivers::core::{spawn_core, CoreHandle};
use echo_runtime::link::server::{
    serve, Authenticator, LinkMetrics, LinkService, Refusal, ServeError, Transport,
};
use echo_runtime::link::tls::{client_config, generate_demo_pki, server_config, DemoPki};
use echo_statemachine::core::{Core, CoreConfig};
use echo_statemachine::ids::{AccountId, AgentId};
use echo_statemachine::msg::Role;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tonic::transport::Endpoint;

#[path = "support/instant_journal.rs"]
mod instant_journal;
use instant_journal::InstantJournal;

/// agent → (token, accounts it may speak for).
struct Table(BTreeMap<String, (String, Vec<(AccountId, Role)>)>);

impl Authenticator for Table {
    fn authenticate(
        &self,
        agent: &AgentId,
        token: &str,
        accounts: &[(AccountId, Role)],
    ) -> Result<(), Refusal> {
        let (expected, allowed) = self.0.get(agent.as_str()).ok_or(Refusal::UnknownAgent)?;
        if expected != token {
            return Err(Refusal::BadToken);
        }
        if accounts.iter().any(|a| !allowed.contains(a)) {
            return Err(Refusal::AccountNotAllowed);
        }
        Ok(())
    }
}

const SECRET_A: &str = "tok-A-7f3a9c-very-secret";
const SECRET_B: &str = "tok-B-55e1d0-very-secret";

struct Harness {
    _dir: tempdir::Dir,
    pki: DemoPki,
    addr: std::net::SocketAddr,
    metrics: Arc<LinkMetrics>,
    _core: CoreHandle,
}

mod tempdir {
    /// A temp directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new(tag: &str) -> Dir {
            let p = std::env::temp_dir().join(format!(
                "echo-{tag}-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0)
            ));
            std::fs::create_dir_all(&p).expect("temp dir");
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

async fn start(mutual: bool) -> Harness {
    let dir = tempdir::Dir::new("link");
    let pki = generate_demo_pki(&dir.0).expect("demo pki");
    let mut files = pki.server.clone();
    if !mutual {
        files.ca = None;
    }
    let tls = server_config(&files).expect("server tls");
    let (jtx, jrx) = mpsc::unbounded_channel();
    let (core, _join) = spawn_core(
        Core::new(CoreConfig::default()),
        "core-test".into(),
        InstantJournal(jtx),
        jrx,
        1024,
    );
    let mut table = BTreeMap::new();
    table.insert(
        "agent-a".to_string(),
        (
            SECRET_A.to_string(),
            vec![(AccountId::new("m1"), Role::Master)],
        ),
    );
    table.insert(
        "agent-b".to_string(),
        (
            SECRET_B.to_string(),
            vec![(AccountId::new("s1"), Role::Slave)],
        ),
    );
    let metrics = Arc::new(LinkMetrics::default());
    let svc = LinkService::new(core.inputs.clone(), Arc::new(Table(table)), metrics.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(serve(
        listener,
        Transport::Tls(tls),
        svc,
        Duration::from_secs(1),
        std::future::pending(),
    ));
    Harness {
        _dir: dir,
        pki,
        addr,
        metrics,
        _core: core,
    }
}

fn hello(agent: &str, token: &str, account: &str, role: pb::Role) -> pb::AgentToCore {
    pb::AgentToCore {
        body: Some(pb::agent_to_core::Body::Hello(pb::AgentHello {
            agent_id: agent.into(),
            auth_token: token.into(),
            protocol_version: 1,
            supports_lossless_delivery: true,
            accounts: vec![pb::AccountBinding {
                account_id: account.into(),
                role: role as i32,
            }],
        })),
    }
}

/// Opens a TLS stream, sends one hello, returns the first CoreHello.
async fn first_answer(h: &Harness, mutual: bool, msg: pb::AgentToCore) -> pb::CoreHello {
    let identity = mutual.then_some((h.pki.client_cert.as_path(), h.pki.client_key.as_path()));
    let tls = client_config(&h.pki.ca, "localhost", identity).expect("client tls");
    let channel = Endpoint::from_shared(format!("https://localhost:{}", h.addr.port()))
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("connect over TLS");
    let (tx, rx) = mpsc::channel(4);
    tx.send(msg).await.expect("queue hello");
    let mut inbound = EchoLinkClient::new(channel)
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), inbound.message())
        .await
        .expect("an answer within 10 s")
        .expect("stream ok")
        .expect("a message");
    match first.body {
        Some(pb::core_to_agent::Body::Hello(h)) => h,
        other => panic!("expected CoreHello, got {other:?}"),
    }
}

/// Opens a stream on `endpoint`, sends a valid hello, and returns the first answer or the
/// error that ended the attempt (within 10 s).
async fn attempt(
    endpoint: Endpoint,
) -> Result<Option<pb::CoreToAgent>, Box<dyn std::error::Error>> {
    let outcome = async {
        let ch = endpoint.connect().await?;
        let (tx, rx) = mpsc::channel(1);
        tx.send(hello("agent-a", SECRET_A, "m1", pb::Role::Master))
            .await
            .ok();
        let mut s = EchoLinkClient::new(ch)
            .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok::<_, Box<dyn std::error::Error>>(s.message().await?)
    };
    tokio::time::timeout(Duration::from_secs(10), outcome)
        .await
        .expect("the refusal is prompt")
}

/// Waits until refusal counter `i` reaches `n` (the accept task counts off the stream).
async fn await_refusal(h: &Harness, i: usize, n: u64) {
    for _ in 0..100 {
        if h.metrics.refusals()[i].1 >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

fn capture_logs() -> (Captured, tracing::subscriber::DefaultGuard) {
    let buf = Captured::default();
    let writer = buf.clone();
    let sub = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    (buf, tracing::subscriber::set_default(sub))
}

#[tokio::test(flavor = "current_thread")]
async fn the_right_token_is_accepted_over_mutual_tls() {
    let h = start(true).await;
    let answer = first_answer(&h, true, hello("agent-a", SECRET_A, "m1", pb::Role::Master)).await;
    assert!(answer.accepted, "refused: {answer:?}");
    assert!(!answer.compat_mode);
    assert_eq!(answer.protocol_version, 1);
    let dc = answer
        .delivery_config
        .expect("delivery config in the hello");
    assert!(dc.ack_timeout_ms > 0 && dc.heartbeat_interval_ms >= 1000);
    assert_eq!(
        h.metrics
            .streams_accepted
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_wrong_token_is_refused_counted_and_logged_without_the_secret() {
    let (logs, _g) = capture_logs();
    let h = start(false).await;
    let wrong = "tok-A-WRONG-guess-123456";
    let answer = first_answer(&h, false, hello("agent-a", wrong, "m1", pb::Role::Master)).await;
    assert!(!answer.accepted);
    assert_eq!(answer.reason, "ERROR_CODE_UNAUTHENTICATED");
    let refusals = h.metrics.refusals();
    assert_eq!(refusals[1], ("bad_token", 1), "{refusals:?}");
    // The unknown agent is its own reason.
    let answer = first_answer(&h, false, hello("nobody", SECRET_A, "m1", pb::Role::Master)).await;
    assert!(!answer.accepted);
    assert_eq!(h.metrics.refusals()[0], ("unknown_agent", 1));
    let text = logs.text();
    assert!(text.contains("bad_token"), "refusal not logged: {text}");
    assert!(text.contains("agent-a"), "agent id not logged: {text}");
    // The presented (wrong) token and the right one, which the core holds only as a hash.
    for secret in [wrong, SECRET_A] {
        assert!(
            !text.contains(secret),
            "a token leaked into the log: {text}"
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_token_used_for_another_agents_account_is_refused() {
    let (logs, _g) = capture_logs();
    let h = start(false).await;
    // agent-a's own token, but claiming agent-b's slave account.
    let answer = first_answer(&h, false, hello("agent-a", SECRET_A, "s1", pb::Role::Slave)).await;
    assert!(!answer.accepted);
    assert_eq!(answer.reason, "ERROR_CODE_UNKNOWN_ACCOUNT");
    assert_eq!(h.metrics.refusals()[2], ("account_not_allowed", 1));
    // Its own account with the wrong role is refused too.
    let answer = first_answer(&h, false, hello("agent-a", SECRET_A, "m1", pb::Role::Slave)).await;
    assert!(!answer.accepted);
    assert_eq!(h.metrics.refusals()[2], ("account_not_allowed", 2));
    assert!(!logs.text().contains(SECRET_A));
}

#[tokio::test(flavor = "current_thread")]
async fn a_client_without_tls_is_refused_on_the_tls_listener() {
    let (logs, _g) = capture_logs();
    let h = start(false).await;
    let plain = Endpoint::from_shared(format!("http://127.0.0.1:{}", h.addr.port()))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(3));
    let r = attempt(plain).await;
    assert!(r.is_err(), "a plain-text client got an answer: {r:?}");
    await_refusal(&h, 3, 1).await;
    assert_eq!(h.metrics.refusals()[3], ("plaintext_on_tls", 1));
    assert!(logs.text().contains("client without TLS refused"));
    assert!(!logs.text().contains(SECRET_A));
}

#[tokio::test(flavor = "current_thread")]
async fn plain_text_is_refused_on_a_non_loopback_address() {
    let (jtx, jrx) = mpsc::unbounded_channel();
    let (core, _join) = spawn_core(
        Core::new(CoreConfig::default()),
        "c".into(),
        InstantJournal(jtx),
        jrx,
        16,
    );
    let svc = LinkService::new(
        core.inputs.clone(),
        Arc::new(Table(BTreeMap::new())),
        Arc::new(LinkMetrics::default()),
    );
    let listener = TcpListener::bind("0.0.0.0:0").await.expect("bind");
    let r = serve(
        listener,
        Transport::Plain,
        svc,
        Duration::from_secs(1),
        std::future::pending(),
    )
    .await;
    assert!(
        matches!(r, Err(ServeError::PlainOnPublicAddress(_))),
        "{r:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn mutual_tls_refuses_a_client_without_a_certificate() {
    let h = start(true).await;
    let tls = client_config(&h.pki.ca, "localhost", None).expect("client tls");
    let endpoint = Endpoint::from_shared(format!("https://localhost:{}", h.addr.port()))
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls");
    let r = attempt(endpoint).await;
    assert!(r.is_err(), "a client without a certificate got: {r:?}");
    await_refusal(&h, 4, 1).await;
    assert_eq!(h.metrics.refusals()[4], ("tls_handshake", 1));
    assert_eq!(
        h.metrics
            .streams_accepted
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}
