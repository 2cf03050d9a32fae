//! The agent's side of the link: connect to the core, keep one `Connect` stream open, and
//! reconnect with capped backoff whenever it ends.
//!
//! Owns the channel, TLS and keepalive settings and the reconnect loop. Every stream gets an
//! epoch so the agent task can tell a late event of an old stream from the current one. It
//! must never decide about messages: it converts and forwards them, both ways.

use std::time::Duration;

use echo_proto::v1 as pb;
use echo_proto::v1::echo_link_client::EchoLinkClient;
use echo_statemachine::msg::CoreToAgent;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::convert;

/// What the link tells the agent task.
#[derive(Debug)]
pub enum LinkEvent {
    /// A stream is open; send on `tx` (wire messages) until `Down` with the same epoch.
    Up {
        epoch: u64,
        tx: mpsc::Sender<pb::AgentToCore>,
    },
    Message {
        epoch: u64,
        msg: CoreToAgent,
    },
    Down {
        epoch: u64,
    },
}

#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// `https://host:port` with TLS, `http://127.0.0.1:port` for plain loopback.
    pub endpoint: String,
    pub tls: Option<ClientTlsConfig>,
    /// HTTP/2 keepalive period: follows the heartbeat interval.
    pub keepalive: Duration,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub outbound_cap: usize,
}

impl ClientSettings {
    pub fn new(endpoint: impl Into<String>) -> Self {
        ClientSettings {
            endpoint: endpoint.into(),
            tls: None,
            keepalive: Duration::from_secs(1),
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(5),
            outbound_cap: 8_192,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("core endpoint {endpoint:?}: {source}")]
    Endpoint {
        endpoint: String,
        source: tonic::transport::Error,
    },
}

/// Capped exponential backoff: base · 2^attempt, at most `cap`.
pub fn reconnect_delay(base: Duration, cap: Duration, attempt: u32) -> Duration {
    base.saturating_mul(1u32 << attempt.min(16)).min(cap)
}

/// Runs until `events` is closed. Returns an error only for a configuration that can never
/// connect (a malformed endpoint or TLS setting).
pub async fn run_client(
    settings: ClientSettings,
    events: mpsc::Sender<LinkEvent>,
) -> Result<(), ClientError> {
    run_client_with(settings, events, |e: &Endpoint| {
        let e = e.clone();
        async move { e.connect().await }
    })
    .await
}

/// [`run_client`] with the connection made by `connect` (the turmoil suite dials over its
/// simulated network with `Endpoint::connect_with_connector`).
pub async fn run_client_with<C, F>(
    settings: ClientSettings,
    events: mpsc::Sender<LinkEvent>,
    connect: C,
) -> Result<(), ClientError>
where
    C: Fn(&Endpoint) -> F,
    F: std::future::Future<Output = Result<Channel, tonic::transport::Error>>,
{
    let bad = |source| ClientError::Endpoint {
        endpoint: settings.endpoint.clone(),
        source,
    };
    let mut endpoint = Endpoint::from_shared(settings.endpoint.clone())
        .map_err(bad)?
        .connect_timeout(Duration::from_secs(3))
        .http2_keep_alive_interval(settings.keepalive)
        .keep_alive_timeout(settings.keepalive * 2)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    match &settings.tls {
        Some(tls) => endpoint = endpoint.tls_config(tls.clone()).map_err(bad)?,
        None => {
            tracing::warn!(endpoint = %settings.endpoint, "core link is PLAIN TEXT (loopback only)")
        }
    }
    let mut epoch = 0u64;
    let mut attempt = 0u32;
    loop {
        if events.is_closed() {
            return Ok(());
        }
        match connect(&endpoint).await {
            Ok(channel) => {
                let (tx, rx) = mpsc::channel(settings.outbound_cap);
                let mut client = EchoLinkClient::new(channel)
                    .max_decoding_message_size(super::server::MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(super::server::MAX_MESSAGE_BYTES);
                match client.connect(ReceiverStream::new(rx)).await {
                    Ok(resp) => {
                        epoch += 1;
                        // The backoff restarts only once the core accepted this stream's hello:
                        // a refused agent (wrong token, foreign account) must not knock again
                        // every `backoff_base`.
                        tracing::info!(epoch, "core link up");
                        if events.send(LinkEvent::Up { epoch, tx }).await.is_err() {
                            return Ok(());
                        }
                        let mut inbound = resp.into_inner();
                        loop {
                            match inbound.message().await {
                                Ok(Some(m)) => match convert::core_to_agent_from_wire(m) {
                                    Ok(Some(msg)) => {
                                        if matches!(&msg, CoreToAgent::Hello(h) if h.accepted) {
                                            attempt = 0;
                                        }
                                        if events
                                            .send(LinkEvent::Message { epoch, msg })
                                            .await
                                            .is_err()
                                        {
                                            return Ok(());
                                        }
                                    }
                                    Ok(None) => {}
                                    Err(e) => {
                                        tracing::warn!(error = %e, "malformed message from the core; reconnecting");
                                        break;
                                    }
                                },
                                Ok(None) => {
                                    tracing::info!(epoch, "core closed the stream");
                                    break;
                                }
                                Err(status) => {
                                    tracing::warn!(epoch, code = ?status.code(), message = status.message(), "core stream failed");
                                    break;
                                }
                            }
                        }
                        if events.send(LinkEvent::Down { epoch }).await.is_err() {
                            return Ok(());
                        }
                    }
                    Err(status) => {
                        tracing::warn!(code = ?status.code(), message = status.message(), "core refused the stream");
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "core not reachable"),
        }
        tokio::time::sleep(reconnect_delay(
            settings.backoff_base,
            settings.backoff_cap,
            attempt,
        ))
        .await;
        attempt = attempt.saturating_add(1);
    }
}
