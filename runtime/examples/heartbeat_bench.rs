//! Heartbeat benchmark (not a test): how many agent heartbeats one core task handles.
//!
//! ```text
//! export CARGO_TARGET_DIR=/work/main/target   # or your own
//! cargo run --release -p echo-runtime --example heartbeat_bench -- --agents 1000 --rate 20000 --seconds 10
//! cargo run --release -p echo-runtime --example heartbeat_bench -- --agents 1000 --rate 0   # flat out
//! ```
//!
//! One process: a core (`app::core::start`, SQLite journal in a temp dir — heartbeats never
//! touch the journal) and `--agents` gRPC clients, each its own HTTP/2 connection over loopback
//! (plain text) with its own bidirectional stream, authenticated by its own token (hashed in the
//! config, checked at hello). The clients send `DeliveryHeartbeat` messages at `--rate` in total
//! (spread round-robin over the agents, in 2 ms ticks), or as fast as the streams take them with
//! `--rate 0`. The result is the core task's own count of handled inputs
//! (`CoreStatus::inputs_handled`) per second over the measuring window — the clients run on
//! the same cores, so this understates what a core alone would do. Core-task lag: a probe
//! sends one heartbeat through the core's input channel every 10 ms and waits until the channel
//! has room and the message is queued (`send` latency); p99 of that is reported.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use echo_proto::v1 as pb;
use echo_proto::v1::echo_link_client::EchoLinkClient;
use echo_runtime::app::core as app_core;
use echo_runtime::config::{hash_token, ConfigSource};
use echo_runtime::drivers::core::CoreInput;
use echo_runtime::link::convert;
use echo_statemachine::ids::{AccountId, AgentId};
use echo_statemachine::msg::{AgentHello, AgentToCore, Role, PROTOCOL_VERSION};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

struct Args {
    agents: usize,
    rate: u64,
    seconds: u64,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        agents: 1_000,
        rate: 20_000,
        seconds: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().ok_or(format!("{k} needs a value"))?;
        let n = v.parse::<u64>().map_err(|e| format!("{k} {v:?}: {e}"))?;
        match k.as_str() {
            "--agents" => a.agents = n.clamp(1, 20_000) as usize,
            "--rate" => a.rate = n,
            "--seconds" => a.seconds = n.max(1),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

async fn run(a: Args) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("echo-hb-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let token = |i: usize| format!("hb-bench-token-{i:05}-{}", std::process::id());
    let mut toml = format!(
        "[core]\nlisten_addr = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\njournal = \"sqlite:journal.sqlite3\"\nmetrics_addr = \"\"\n\n",
        dir.display()
    );
    for i in 0..a.agents {
        toml += &format!(
            "[agents.agent-{i}]\ntoken_hash = \"{}\"\naccounts = {{ \"acct-{i}\" = \"slave\" }}\n\n",
            hash_token(&token(i))
        );
    }
    let cfg = ConfigSource::Toml(toml)
        .open()
        .await
        .map_err(|e| format!("config: {e}"))?;
    let core = app_core::start(cfg)
        .await
        .map_err(|e| format!("core: {e}"))?;
    let endpoint = format!("http://127.0.0.1:{port}");

    // Connect every agent: its own connection, stream and hello.
    let t_conn = Instant::now();
    let mut senders: Vec<mpsc::Sender<pb::AgentToCore>> = Vec::with_capacity(a.agents);
    let inbound_msgs = Arc::new(AtomicU64::new(0));
    for i in 0..a.agents {
        let ch = tonic::transport::Endpoint::from_shared(endpoint.clone())
            .map_err(|e| e.to_string())?
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| format!("agent {i}: {e}"))?;
        let mut client = EchoLinkClient::new(ch);
        let (tx, rx) = mpsc::channel(64);
        let id = format!("agent-{i}");
        let hello = AgentToCore::Hello(AgentHello {
            agent_id: AgentId::new(&id),
            protocol_version: PROTOCOL_VERSION,
            supports_lossless_delivery: true,
            accounts: vec![(AccountId::new(format!("acct-{i}")), Role::Slave)],
        });
        tx.send(convert::agent_to_core_to_wire(&hello, &token(i), &id))
            .await
            .map_err(|e| e.to_string())?;
        let resp = client
            .connect(ReceiverStream::new(rx))
            .await
            .map_err(|e| format!("agent {i}: {e}"))?;
        let mut inbound = resp.into_inner();
        let n = inbound_msgs.clone();
        tokio::spawn(async move {
            while let Ok(Some(_)) = inbound.message().await {
                n.fetch_add(1, Ordering::Relaxed);
            }
        });
        senders.push(tx);
    }
    // Wait until the core counts every agent.
    let mut status = core.handle.status.clone();
    let connected_by = Instant::now() + Duration::from_secs(60);
    while status.borrow().agents_connected < a.agents && Instant::now() < connected_by {
        let _ = tokio::time::timeout(Duration::from_secs(1), status.changed()).await;
    }
    let connected = status.borrow().agents_connected;
    println!(
        "heartbeat_bench: {connected}/{} agents connected and authenticated in {:.1} s; load {}",
        a.agents,
        t_conn.elapsed().as_secs_f64(),
        loadavg()
    );

    // Load generator.
    let hb: Vec<pb::AgentToCore> = (0..a.agents)
        .map(|i| convert::agent_to_core_to_wire(&AgentToCore::Heartbeat, "", &format!("agent-{i}")))
        .collect();
    let sent = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut gens = Vec::new();
    if a.rate == 0 {
        // Flat out: one task per 100 agents, each `send().await` round-robin (backpressured).
        for chunk in 0..a.agents.div_ceil(100) {
            let lo = chunk * 100;
            let hi = (lo + 100).min(a.agents);
            let s: Vec<_> = senders[lo..hi].to_vec();
            let m: Vec<_> = hb[lo..hi].to_vec();
            let (sent, stop) = (sent.clone(), stop.clone());
            gens.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    for (tx, msg) in s.iter().zip(&m) {
                        if tx.send(msg.clone()).await.is_err() {
                            return;
                        }
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    } else {
        let (s, m) = (senders.clone(), hb.clone());
        let (sent, dropped, stop, rate) = (sent.clone(), dropped.clone(), stop.clone(), a.rate);
        gens.push(tokio::spawn(async move {
            let tick = Duration::from_millis(2);
            let mut iv = tokio::time::interval(tick);
            iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let t0 = Instant::now();
            let mut next = 0usize;
            let mut done: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                iv.tick().await;
                let due = (t0.elapsed().as_secs_f64() * rate as f64) as u64;
                while done < due {
                    match s[next].try_send(m[next].clone()) {
                        Ok(()) => sent.fetch_add(1, Ordering::Relaxed),
                        Err(_) => dropped.fetch_add(1, Ordering::Relaxed),
                    };
                    done += 1;
                    next = (next + 1) % s.len();
                }
            }
        }));
    }

    // Core-task lag probe: the time to get one input into the core's (bounded) mailbox.
    let probe_inputs = core.handle.inputs.clone();
    let probe_stop = stop.clone();
    let probe = tokio::spawn(async move {
        let mut lags = Vec::new();
        while !probe_stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let t = Instant::now();
            // A heartbeat on a connection id the core does not know: counted as stale, no effect.
            let r = probe_inputs
                .send(CoreInput::FromAgent {
                    conn: u64::MAX,
                    agent: AgentId::new("agent-0"),
                    msg: AgentToCore::Heartbeat,
                })
                .await;
            if r.is_err() {
                break;
            }
            lags.push(t.elapsed().as_micros() as u64);
        }
        lags
    });

    // Warm up 1 s, then measure between two status publications.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = status.changed().await;
    let (t1, n1, s1) = (
        Instant::now(),
        status.borrow().inputs_handled,
        sent.load(Ordering::Relaxed),
    );
    let load1 = loadavg();
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    let _ = status.changed().await;
    let (t2, n2, s2) = (
        Instant::now(),
        status.borrow().inputs_handled,
        sent.load(Ordering::Relaxed),
    );
    let load2 = loadavg();
    stop.store(true, Ordering::Relaxed);
    let mut lags = probe.await.unwrap_or_default();
    lags.sort_unstable();
    let p = |q: f64| {
        if lags.is_empty() {
            0.0
        } else {
            lags[((lags.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0
        }
    };
    let secs = (t2 - t1).as_secs_f64();
    let still = status.borrow().agents_connected;
    println!(
        "heartbeat_bench: {} agents, offered {}: core task handled {:.0} inputs/s ({} in {:.2} s); \
         clients sent {:.0}/s, {} not queued (stream full); mailbox lag p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; \
         agents still connected {still}; load {load1} → {load2}",
        a.agents,
        if a.rate == 0 {
            "flat out".to_string()
        } else {
            format!("{}/s", a.rate)
        },
        (n2 - n1) as f64 / secs,
        n2 - n1,
        secs,
        (s2 - s1) as f64 / secs,
        dropped.load(Ordering::Relaxed),
        p(0.5),
        p(0.99),
        lags.last().copied().unwrap_or(0) as f64 / 1000.0,
    );
    for g in gens {
        g.abort();
    }
    drop(senders);
    let _ = tokio::time::timeout(Duration::from_secs(5), core.stop()).await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("heartbeat_bench: {e}");
            std::process::exit(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("heartbeat_bench: runtime: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = rt.block_on(run(a)) {
        eprintln!("heartbeat_bench: {e}");
        std::process::exit(1);
    }
}
