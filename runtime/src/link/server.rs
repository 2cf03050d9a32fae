//! The core's side of the link: the tonic `EchoLink` service, its TCP/TLS listener, and the
//! hello gate (token and account checks) in front of the core task.
//!
//! Owns transport and authentication: TLS (optionally mutual), the refusal of plain-text
//! clients on a TLS listener, plain text only on loopback, the per-agent token check and the
//! "an agent speaks only for its configured accounts" check at hello time. Every refusal is
//! counted and logged without the secret. It must never decide about trades: decoded messages
//! go to the core task as they are.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use echo_proto::v1 as pb;
use echo_proto::v1::echo_link_server::{EchoLink, EchoLinkServer};
use echo_statemachine::ids::{AccountId, AgentId};
use echo_statemachine::msg::{
    AgentToCore, CoreHello, CoreToAgent, DeliveryHeartbeat, ErrorCode, Role, PROTOCOL_VERSION,
};
use futures::StreamExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::convert::{self, FromAgent};
use crate::drivers::clock::unix_ms;
use crate::drivers::core::{AgentTx, CoreInput};

/// Largest message either side of the link accepts or sends (the client uses the same).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Why an agent's hello was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    UnknownAgent,
    BadToken,
    /// The hello names an account (or role) not configured for this agent.
    AccountNotAllowed,
}

impl Refusal {
    /// Every refusal (SPEC.md §10.3 lists each with its label and code).
    pub const ALL: [Refusal; 3] = [
        Refusal::UnknownAgent,
        Refusal::BadToken,
        Refusal::AccountNotAllowed,
    ];

    pub fn code(self) -> ErrorCode {
        match self {
            Refusal::UnknownAgent | Refusal::BadToken => ErrorCode::Unauthenticated,
            Refusal::AccountNotAllowed => ErrorCode::UnknownAccount,
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Refusal::UnknownAgent => "unknown_agent",
            Refusal::BadToken => "bad_token",
            Refusal::AccountNotAllowed => "account_not_allowed",
        }
    }
}

/// Decides whether a hello may open a stream. Implemented over the configured agents.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate(
        &self,
        agent: &AgentId,
        token: &str,
        accounts: &[(AccountId, Role)],
    ) -> Result<(), Refusal>;
}

/// Counters of the link (exported on `/metrics`).
#[derive(Debug, Default)]
pub struct LinkMetrics {
    pub streams_opened: AtomicU64,
    pub streams_accepted: AtomicU64,
    pub refused_unknown_agent: AtomicU64,
    pub refused_bad_token: AtomicU64,
    pub refused_account_not_allowed: AtomicU64,
    pub refused_plaintext: AtomicU64,
    pub tls_handshake_failed: AtomicU64,
    pub hello_missing: AtomicU64,
    pub wire_errors: AtomicU64,
    pub market_data_dropped: AtomicU64,
}

impl LinkMetrics {
    fn refused(&self, r: Refusal) {
        let c = match r {
            Refusal::UnknownAgent => &self.refused_unknown_agent,
            Refusal::BadToken => &self.refused_bad_token,
            Refusal::AccountNotAllowed => &self.refused_account_not_allowed,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// `(label, value)` pairs for `echo_core_link_refused_total{reason}`.
    pub fn refusals(&self) -> [(&'static str, u64); 5] {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("unknown_agent", g(&self.refused_unknown_agent)),
            ("bad_token", g(&self.refused_bad_token)),
            ("account_not_allowed", g(&self.refused_account_not_allowed)),
            ("plaintext_on_tls", g(&self.refused_plaintext)),
            ("tls_handshake", g(&self.tls_handshake_failed)),
        ]
    }
}

/// How the listener speaks.
#[derive(Clone)]
pub enum Transport {
    /// Plain HTTP/2: refused unless the listener is on a loopback address.
    Plain,
    Tls(Arc<rustls::ServerConfig>),
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "refusing a plain-text link on {0}: plain text is allowed on loopback only; configure TLS"
    )]
    PlainOnPublicAddress(SocketAddr),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The `EchoLink` service in front of the core task.
#[derive(Clone)]
pub struct LinkService {
    core: mpsc::Sender<CoreInput>,
    auth: Arc<dyn Authenticator>,
    metrics: Arc<LinkMetrics>,
    next_conn: Arc<AtomicU64>,
    outbound_cap: usize,
    hello_timeout: Duration,
}

impl LinkService {
    pub fn new(
        core: mpsc::Sender<CoreInput>,
        auth: Arc<dyn Authenticator>,
        metrics: Arc<LinkMetrics>,
    ) -> Self {
        LinkService {
            core,
            auth,
            metrics,
            next_conn: Arc::new(AtomicU64::new(1)),
            outbound_cap: 8_192,
            hello_timeout: Duration::from_secs(10),
        }
    }

    /// Each stream's outbound queue (messages the core task may queue for one agent before
    /// the stream counts as too slow and is cut).
    pub fn with_outbound_cap(mut self, cap: usize) -> Self {
        self.outbound_cap = cap.max(1);
        self
    }
}

fn refusal_hello(code: ErrorCode) -> pb::CoreToAgent {
    let hello = CoreHello {
        protocol_version: PROTOCOL_VERSION,
        accepted: false,
        compat_mode: false,
        reason: Some(code),
        delivery: DeliveryHeartbeat {
            core: Default::default(),
            agent: Default::default(),
            config_version: 0,
        },
    };
    // A refusal is one message: the CoreHello alone.
    convert::core_to_agent_to_wire(&CoreToAgent::Hello(hello), "", unix_ms())
        .into_iter()
        .next()
        .unwrap_or_default()
}

impl LinkService {
    async fn stream(
        self,
        conn: u64,
        peer: Option<SocketAddr>,
        mut inbound: Streaming<pb::AgentToCore>,
        tx: AgentTx,
    ) {
        let peer = peer.map(|p| p.to_string()).unwrap_or_default();
        let first = tokio::time::timeout(self.hello_timeout, inbound.message()).await;
        let Ok(Ok(Some(first))) = first else {
            self.metrics.hello_missing.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, "stream closed or silent before its AgentHello");
            return;
        };
        let (hello, token) = match convert::agent_to_core_from_wire(first) {
            Ok(FromAgent::Hello { hello, token }) => (hello, token),
            Ok(_) => {
                self.metrics.hello_missing.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, "first message was not an AgentHello; stream closed");
                let _ = tx
                    .send(Err(Status::failed_precondition(
                        "ERROR_CODE_PROTOCOL_VIOLATION: the first message must be AgentHello",
                    )))
                    .await;
                return;
            }
            Err(e) => {
                self.metrics.wire_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, error = %e, "malformed AgentHello; stream closed");
                let _ = tx
                    .send(Err(Status::invalid_argument(format!(
                        "ERROR_CODE_PROTOCOL_VIOLATION: {e}"
                    ))))
                    .await;
                return;
            }
        };
        let agent = hello.agent_id.clone();
        if let Err(r) = self.auth.authenticate(&agent, &token, &hello.accounts) {
            self.metrics.refused(r);
            // Never the token: only who, from where, and why.
            tracing::warn!(agent = %agent, %peer, reason = r.label(), "agent refused");
            let _ = tx.send(Ok(refusal_hello(r.code()))).await;
            return;
        }
        self.metrics
            .streams_accepted
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(agent = %agent, %peer, conn, lossless = hello.supports_lossless_delivery, "agent authenticated");
        let hello_ok = self
            .core
            .send(CoreInput::Connected {
                conn,
                agent: agent.clone(),
                tx,
                hello,
            })
            .await;
        if hello_ok.is_err() {
            return;
        }
        loop {
            let msg = match inbound.message().await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(status) => {
                    tracing::info!(agent = %agent, code = ?status.code(), "agent stream ended");
                    break;
                }
            };
            let msg = match convert::agent_to_core_from_wire(msg) {
                Ok(FromAgent::Msg(m)) => m,
                Ok(FromAgent::Hello { hello, token }) => {
                    // A repeated hello must be the same, still authorised agent.
                    let verdict = if hello.agent_id != agent {
                        Err(Refusal::AccountNotAllowed)
                    } else {
                        self.auth.authenticate(&agent, &token, &hello.accounts)
                    };
                    if let Err(r) = verdict {
                        self.metrics.refused(r);
                        tracing::warn!(agent = %agent, %peer, reason = r.label(), "repeated hello refused; stream closed");
                        break;
                    }
                    AgentToCore::Hello(hello)
                }
                Ok(FromAgent::MarketData) => {
                    self.metrics
                        .market_data_dropped
                        .fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Err(e) => {
                    // Nothing accepted is lost: whatever this frame carried is re-sent by its
                    // sender's retry on the next stream.
                    self.metrics.wire_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(agent = %agent, error = %e, "malformed message; stream closed");
                    break;
                }
            };
            let sent = self
                .core
                .send(CoreInput::FromAgent {
                    conn,
                    agent: agent.clone(),
                    msg,
                })
                .await;
            if sent.is_err() {
                return;
            }
        }
        let _ = self
            .core
            .send(CoreInput::Disconnected { conn, agent })
            .await;
    }
}

#[tonic::async_trait]
impl EchoLink for LinkService {
    type ConnectStream = ReceiverStream<Result<pb::CoreToAgent, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<pb::AgentToCore>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        self.metrics.streams_opened.fetch_add(1, Ordering::Relaxed);
        let peer = request.remote_addr();
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(self.outbound_cap);
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(self.clone().stream(conn, peer, inbound, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Serves the link on `listener` until `shutdown` resolves. `keepalive` follows the
/// heartbeat interval (HTTP/2 pings at that period, a dead peer dropped after two).
pub async fn serve(
    listener: TcpListener,
    transport: Transport,
    service: LinkService,
    keepalive: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let addr = listener.local_addr()?;
    let metrics = service.metrics.clone();
    let router = router(service, keepalive);
    match transport {
        Transport::Plain => {
            if !addr.ip().is_loopback() {
                return Err(ServeError::PlainOnPublicAddress(addr));
            }
            tracing::warn!(%addr, "agent link is PLAIN TEXT (allowed on loopback only)");
            let incoming = plain_incoming(listener);
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await?;
        }
        Transport::Tls(cfg) => {
            tracing::info!(%addr, "agent link over TLS");
            let (tx, rx) = mpsc::channel(64);
            let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
            let accept = tokio::spawn(accept_tls(listener, acceptor, tx, metrics));
            let incoming = ReceiverStream::new(rx).map(Ok::<_, std::io::Error>);
            let r = router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await;
            accept.abort();
            r?;
        }
    }
    Ok(())
}

/// The plain-text listener's connections, each with `TCP_NODELAY` set.
///
/// `Server::tcp_nodelay` applies only to listeners tonic binds itself: on sockets accepted
/// here Nagle stays on unless set, and a small message (an intent's ack) then waits for the
/// peer's delayed ACK or its next packet — 8–40 ms per ack in the end-to-end benchmark.
fn plain_incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<TcpStream>> {
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::warn!(error = %e, "TCP_NODELAY not set on an agent connection");
            }
        })
    })
}

fn router(service: LinkService, keepalive: Duration) -> tonic::transport::server::Router {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(keepalive))
        .http2_keepalive_timeout(Some(keepalive * 2))
        .tcp_nodelay(true)
        .add_service(
            EchoLinkServer::new(service)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
}

/// Serves the link, plain, on connections someone else accepts (the turmoil suite's simulated
/// network); [`serve`] is this over a TCP listener, with the loopback-only rule for plain text.
pub async fn serve_incoming<I, IO, IE>(
    incoming: I,
    service: LinkService,
    keepalive: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError>
where
    I: tokio_stream::Stream<Item = Result<IO, IE>> + Send + 'static,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    router(service, keepalive)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// Accepts TCP connections and completes TLS handshakes off the accept loop. A client that
/// speaks anything but TLS (its first byte is not a handshake record, 0x16) is refused and
/// counted before any HTTP/2 is parsed.
async fn accept_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    tx: mpsc::Sender<tokio_rustls::server::TlsStream<TcpStream>>,
    metrics: Arc<LinkMetrics>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, tx, metrics) = (acceptor.clone(), tx.clone(), metrics.clone());
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let mut first = [0u8; 1];
            let peeked = tokio::time::timeout(Duration::from_secs(10), tcp.peek(&mut first)).await;
            match peeked {
                Ok(Ok(1)) if first[0] == 0x16 => {}
                // Connected and closed at once (a port probe): not a plain-text client.
                Ok(Ok(0)) => return,
                Ok(Ok(_)) => {
                    metrics.refused_plaintext.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, "client without TLS refused on the TLS listener");
                    return;
                }
                _ => return,
            }
            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send(tls).await;
                }
                Ok(Err(e)) => {
                    metrics.tls_handshake_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    metrics.tls_handshake_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, "TLS handshake timed out");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every plain-text connection is accepted with Nagle off (the production `serve` path
    /// passes its listener through `plain_incoming`).
    #[tokio::test]
    async fn plain_connections_are_accepted_with_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let mut incoming = Box::pin(plain_incoming(listener));
        for _ in 0..3 {
            let _client = TcpStream::connect(addr).await.expect("connect");
            let accepted = incoming
                .next()
                .await
                .expect("a connection")
                .expect("accepted");
            assert!(accepted.nodelay().expect("read TCP_NODELAY"));
        }
    }
}
