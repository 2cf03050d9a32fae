//! The peer side of `echo bench peers`: the same durable fan-out on NATS JetStream — one
//! publisher with publish-acks (file storage), `slaves` durable pull consumers with explicit
//! acks — in-process over async-nats.
//!
//! Owns a throw-away stream (created with a unique name, deleted afterwards) and the timing.
//! It must never touch another stream on the server.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;

use super::Side;
use crate::app::loadtest::wall_us;
use crate::histogram::Histogram;

fn err(what: &str) -> impl Fn(String) -> String + '_ {
    move |e| format!("JetStream {what}: {e}")
}

/// Publishes `n` messages (`window` publish-acks in flight at most) and waits until each of
/// `slaves` consumers received and acknowledged every one.
pub async fn run(
    url: &str,
    name: &str,
    n: u64,
    window: usize,
    slaves: usize,
) -> Result<Side, String> {
    let client = async_nats::connect(url)
        .await
        .map_err(|e| err("connect")(e.to_string()))?;
    let js = jetstream::new(client);
    let subject = format!("echo.peers.{name}");
    let st = js
        .create_stream(stream::Config {
            name: name.to_string(),
            subjects: vec![subject.clone()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| err("create stream")(e.to_string()))?;
    let latency = Arc::new(Mutex::new(Histogram::default()));
    let mut consumers = tokio::task::JoinSet::new();
    for c in 0..slaves {
        let cons: consumer::PullConsumer = st
            .create_consumer(consumer::pull::Config {
                durable_name: Some(format!("slave-{c}")),
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            })
            .await
            .map_err(|e| err("create consumer")(e.to_string()))?;
        let lat = latency.clone();
        consumers.spawn(async move {
            let mut msgs = cons
                .messages()
                .await
                .map_err(|e| err("consume")(e.to_string()))?;
            let mut local = Histogram::default();
            let mut last = 0;
            for _ in 0..n {
                let m = match tokio::time::timeout(Duration::from_secs(60), msgs.next()).await {
                    Ok(Some(Ok(m))) => m,
                    Ok(Some(Err(e))) => return Err(err("message")(e.to_string())),
                    Ok(None) | Err(_) => {
                        return Err("JetStream consumer: no message for 60 s".into())
                    }
                };
                let now = wall_us();
                let sent = m
                    .payload
                    .get(..8)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(i64::from_le_bytes)
                    .unwrap_or(now);
                local.record_signed(now - sent);
                m.double_ack()
                    .await
                    .map_err(|e| err("ack")(e.to_string()))?;
                last = wall_us();
            }
            if let Ok(mut h) = lat.lock() {
                h.merge(&local);
            }
            Ok::<i64, String>(last)
        });
    }
    let first = wall_us();
    let mut pending = VecDeque::new();
    for _ in 0..n {
        let mut payload = vec![0u8; 200];
        payload[..8].copy_from_slice(&wall_us().to_le_bytes());
        let ack = js
            .publish(subject.clone(), payload.into())
            .await
            .map_err(|e| err("publish")(e.to_string()))?;
        pending.push_back(ack);
        while pending.len() >= window.max(1) {
            if let Some(a) = pending.pop_front() {
                a.await.map_err(|e| err("publish ack")(e.to_string()))?;
            }
        }
    }
    for a in pending {
        a.await.map_err(|e| err("publish ack")(e.to_string()))?;
    }
    let mut last = first;
    let mut failure = None;
    while let Some(r) = consumers.join_next().await {
        match r {
            Ok(Ok(t)) => last = last.max(t),
            Ok(Err(e)) => failure = Some(e),
            Err(e) => failure = Some(format!("JetStream consumer task: {e}")),
        }
    }
    let _ = js.delete_stream(name).await;
    if let Some(e) = failure {
        return Err(e);
    }
    let latency = latency.lock().map(|h| h.clone()).unwrap_or_default();
    Ok(Side {
        intents: n,
        seconds: (last - first) as f64 / 1e6,
        latency,
    })
}
