//! The load client for `--agents N`: N agents, each its own gRPC stream to the core (its own
//! `AgentHello` with its own token, over mutual TLS) and its own heartbeats, multiplexed over
//! `--agent-connections` HTTP/2 connections.
//!
//! Owns connecting, the heartbeat pacing and the counters. It stands in for agents only on
//! the link: it has no ledger and never acknowledges a command (its accounts have no
//! subscription, so none comes). It must never send anything but a hello and heartbeats.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use echo_proto::v1 as pb;
use echo_proto::v1::echo_link_client::EchoLinkClient;
use echo_statemachine::ids::{AccountId, AgentId};
use echo_statemachine::msg::{AgentHello, AgentToCore, Role, PROTOCOL_VERSION};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::app::AppError;
use crate::link::convert;
use crate::link::tls::DemoPki;

#[derive(Debug, Default)]
pub struct SwarmCounters {
    pub streams_open: AtomicUsize,
    pub accepted: AtomicUsize,
    pub heartbeats_sent: AtomicU64,
    pub heartbeats_blocked: AtomicU64,
    pub inbound: AtomicU64,
    pub connect_errors: AtomicU64,
}

/// Agent id and token of agent `i` of the swarm.
pub fn agent(i: usize, nonce: &str) -> (String, String) {
    (
        format!("swarm-{i:05}"),
        format!("swarm-token-{nonce}-{i:05}"),
    )
}

pub struct Swarm {
    pub counters: Arc<SwarmCounters>,
    senders: Vec<mpsc::Sender<pb::AgentToCore>>,
    pub connect_s: f64,
}

impl Swarm {
    /// Opens every stream and sends every hello; returns once all are open.
    pub async fn connect(
        endpoint: &str,
        pki: &DemoPki,
        agents: usize,
        connections: usize,
        nonce: &str,
    ) -> Result<Swarm, AppError> {
        let t0 = Instant::now();
        let tls = crate::link::tls::client_config(
            &pki.ca,
            "localhost",
            Some((&pki.client_cert, &pki.client_key)),
        )?;
        let bad = |e: tonic::transport::Error| AppError::Usage(format!("swarm endpoint: {e}"));
        let mut channels = Vec::new();
        for _ in 0..connections.clamp(1, agents.max(1)) {
            let ch = tonic::transport::Endpoint::from_shared(endpoint.to_string())
                .map_err(bad)?
                .tls_config(tls.clone())
                .map_err(bad)?
                .tcp_nodelay(true)
                .http2_adaptive_window(true)
                .connect()
                .await
                .map_err(bad)?;
            channels.push(ch);
        }
        let counters = Arc::new(SwarmCounters::default());
        let mut senders = Vec::with_capacity(agents);
        let mut opening = tokio::task::JoinSet::new();
        for i in 0..agents {
            let ch = channels[i % channels.len()].clone();
            let (id, token) = agent(i, nonce);
            let (tx, rx) = mpsc::channel(16);
            let hello = AgentToCore::Hello(AgentHello {
                agent_id: AgentId::new(&id),
                protocol_version: PROTOCOL_VERSION,
                supports_lossless_delivery: true,
                accounts: vec![(AccountId::new(format!("acct-{id}")), Role::Slave)],
            });
            if tx
                .try_send(convert::agent_to_core_to_wire(&hello, &token, &id))
                .is_err()
            {
                return Err(AppError::Usage(
                    "swarm: a fresh stream's queue is full".into(),
                ));
            }
            senders.push(tx);
            let c = counters.clone();
            opening.spawn(async move {
                let mut client = EchoLinkClient::new(ch);
                match client.connect(ReceiverStream::new(rx)).await {
                    Ok(resp) => {
                        c.streams_open.fetch_add(1, Ordering::Relaxed);
                        let mut inbound = resp.into_inner();
                        tokio::spawn(async move {
                            while let Ok(Some(m)) = inbound.message().await {
                                if matches!(m.body, Some(pb::core_to_agent::Body::Hello(ref h)) if h.accepted)
                                {
                                    c.accepted.fetch_add(1, Ordering::Relaxed);
                                }
                                c.inbound.fetch_add(1, Ordering::Relaxed);
                            }
                            c.streams_open.fetch_sub(1, Ordering::Relaxed);
                        });
                    }
                    Err(_) => {
                        c.connect_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
            // Keep the number of handshakes in flight bounded.
            while opening.len() >= 256 {
                opening.join_next().await;
            }
        }
        while opening.join_next().await.is_some() {}
        Ok(Swarm {
            counters,
            senders,
            connect_s: t0.elapsed().as_secs_f64(),
        })
    }

    /// Sends every agent's heartbeat once per `interval`, spread over the interval, until
    /// `until`.
    pub async fn heartbeat(&self, interval: Duration, until: Instant) {
        let n = self.senders.len();
        if n == 0 {
            return;
        }
        let beats: Vec<pb::AgentToCore> = (0..n)
            .map(|i| {
                convert::agent_to_core_to_wire(
                    &AgentToCore::Heartbeat,
                    "",
                    &format!("swarm-{i:05}"),
                )
            })
            .collect();
        let step = Duration::from_millis(5);
        let per_step = (n as f64 * step.as_secs_f64() / interval.as_secs_f64()).ceil() as usize;
        let mut next = 0usize;
        let mut tick = tokio::time::interval(step);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        while Instant::now() < until {
            tick.tick().await;
            for _ in 0..per_step.max(1) {
                let i = next % n;
                next += 1;
                match self.senders[i].try_send(beats[i].clone()) {
                    Ok(()) => self
                        .counters
                        .heartbeats_sent
                        .fetch_add(1, Ordering::Relaxed),
                    Err(_) => self
                        .counters
                        .heartbeats_blocked
                        .fetch_add(1, Ordering::Relaxed),
                };
            }
        }
    }
}
