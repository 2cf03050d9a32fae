//! Scenarios: the hosts (`journal`, `core`, `agent-1` with the master terminal, `agent-2` with
//! the slave terminal), a fault schedule, and a run that steps turmoil, applies each fault at its
//! simulated time, then checks.
//!
//! Owns topology, timing and the fault schedule. It must never reach into a machine: it starts
//! the production drivers and reads only [`World`](crate::world::World).

use std::sync::Arc;
use std::time::Duration;

use echo_runtime::drivers::agent::{spawn_agent, AgentInput};
use echo_runtime::drivers::core::{spawn_core, JournalWriterPort};
use echo_runtime::journal::{Journal, JournalOptions};
use echo_runtime::link::client::{run_client_with, ClientSettings};
use echo_runtime::link::server::{
    serve_incoming, Authenticator, LinkMetrics, LinkService, Refusal,
};
use echo_statemachine::agent::{AgentLimits, DeliveryManager, LedgerRecord};
use echo_statemachine::config::{AgentDeliveryConfig, DeliveryConfig, RouterConfig, Subscription};
use echo_statemachine::core::{Core, CoreConfig};
use echo_statemachine::ids::{AccountId, AgentId, IntentId, Symbol, TradeId};
use echo_statemachine::msg::{IntentKind, Role, Side, TradeIntent};
use echo_statemachine::time::Instant;
use tokio::sync::mpsc;

use crate::journal::{self, RemoteStore, JOURNAL_HOST};
use crate::terminals::{run_master, run_slave, SimLedger, SimPipes};
use crate::world::{Shared, World};
use crate::{checks, net};

pub const LINK_PORT: u16 = 50051;
const MASTER: &str = "master-1";
const SLAVE: &str = "slave-1";

/// One fault, applied at a simulated time.
#[derive(Clone, Debug)]
pub enum Fault {
    Crash(&'static str),
    Bounce(&'static str),
    Partition(&'static str, &'static str),
    Repair(&'static str, &'static str),
    Hold(&'static str, &'static str),
    Release(&'static str, &'static str),
    /// Per-link latency (ms) between two hosts.
    Latency(&'static str, &'static str, u64),
    /// Chance that the link between two hosts fails at each step (dropping what is in
    /// flight); a failed link stays down until the rate is set back to 0, which repairs it.
    FailRate(&'static str, &'static str, f64),
    JournalSlow(u64),
    JournalLoseReplies(bool),
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: &'static str,
    /// The fixed seed CI runs.
    pub seed: u64,
    pub trades: usize,
    pub faults: Vec<(u64, Fault)>,
    /// Simulated milliseconds to run; every fault is healed well before.
    pub run_ms: u64,
}

/// What one run produced.
pub struct Outcome {
    pub trace: String,
    pub violations: Vec<String>,
}

/// The CI scenarios, one fixed seed each.
pub fn all() -> Vec<Scenario> {
    use Fault::*;
    vec![
        Scenario {
            name: "calm",
            seed: 0x0001,
            trades: 6,
            faults: vec![],
            run_ms: 12_000,
        },
        Scenario {
            name: "partition_hold",
            seed: 0x0002,
            trades: 8,
            faults: vec![
                (1_500, Partition("core", "agent-2")),
                (4_000, Repair("core", "agent-2")),
                (5_000, Hold("core", "agent-1")),
                (6_500, Release("core", "agent-1")),
                (7_000, Partition("core", "agent-1")),
                (7_300, Repair("core", "agent-1")),
            ],
            run_ms: 25_000,
        },
        Scenario {
            name: "journal_faults",
            seed: 0x0003,
            trades: 8,
            faults: vec![
                (1_000, JournalSlow(2_500)),
                (3_000, JournalSlow(0)),
                (3_500, JournalLoseReplies(true)),
                (5_000, JournalLoseReplies(false)),
                (6_000, Crash(JOURNAL_HOST)),
                (8_000, Bounce(JOURNAL_HOST)),
                (8_200, Partition("core", JOURNAL_HOST)),
                (9_500, Repair("core", JOURNAL_HOST)),
            ],
            run_ms: 30_000,
        },
        Scenario {
            name: "journal_loss_core_bounce",
            seed: 0x0006,
            trades: 8,
            faults: vec![
                (1_000, JournalSlow(400)),
                (1_700, Crash(JOURNAL_HOST)),
                (1_750, Bounce("core")),
                (2_500, Bounce(JOURNAL_HOST)),
                (2_600, JournalSlow(0)),
                (4_000, JournalSlow(400)),
                (4_700, Crash(JOURNAL_HOST)),
                (4_750, Bounce("core")),
                (5_500, Bounce(JOURNAL_HOST)),
                (5_600, JournalSlow(0)),
            ],
            run_ms: 25_000,
        },
        Scenario {
            name: "journal_flaky",
            seed: 0x0007,
            trades: 10,
            faults: vec![
                (300, FailRate("core", JOURNAL_HOST, 0.02)),
                (9_000, FailRate("core", JOURNAL_HOST, 0.0)),
            ],
            run_ms: 25_000,
        },
        Scenario {
            name: "journal_down_long",
            seed: 0x0008,
            trades: 8,
            faults: vec![(1_000, Crash(JOURNAL_HOST)), (9_000, Bounce(JOURNAL_HOST))],
            run_ms: 30_000,
        },
        Scenario {
            name: "crash_bounce",
            seed: 0x0004,
            trades: 8,
            faults: vec![
                (1_500, Crash("agent-2")),
                (3_000, Bounce("agent-2")),
                (4_000, Bounce("core")),
                (6_000, Crash("agent-1")),
                (6_800, Bounce("agent-1")),
                (7_500, Crash("core")),
                (8_500, Bounce("core")),
            ],
            run_ms: 30_000,
        },
        Scenario {
            name: "latency_loss",
            seed: 0x0005,
            trades: 8,
            faults: vec![
                (0, Latency("core", "agent-1", 40)),
                (0, Latency("core", "agent-2", 25)),
                (0, Latency("core", JOURNAL_HOST, 5)),
                (500, FailRate("core", "agent-2", 0.01)),
                (500, FailRate("core", JOURNAL_HOST, 0.01)),
                (7_000, FailRate("core", "agent-2", 0.0)),
                (7_000, FailRate("core", JOURNAL_HOST, 0.0)),
            ],
            run_ms: 30_000,
        },
    ]
}

pub fn by_name(name: &str) -> Scenario {
    all()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no scenario {name}"))
}

struct AllowAll;

impl Authenticator for AllowAll {
    fn authenticate(&self, _: &AgentId, _: &str, _: &[(AccountId, Role)]) -> Result<(), Refusal> {
        Ok(())
    }
}

fn core_delivery() -> DeliveryConfig {
    DeliveryConfig {
        ack_timeout_ms: 1_000,
        retry_backoff_ms: 100,
        max_retries: 100,
        heartbeat_interval_ms: 500,
        reconcile_interval_ms: 2_000,
        journal_stage_acks: 1,
        // Small, so the turmoil runs queue commands at the core for their agent.
        agent_window: 4,
    }
}

fn agent_delivery() -> AgentDeliveryConfig {
    AgentDeliveryConfig {
        heartbeat_interval_ms: 500,
        ..AgentDeliveryConfig::default()
    }
}

/// Open then close per trade, one trade after another.
fn plan(trades: usize) -> Vec<TradeIntent> {
    let mut out = Vec::new();
    for t in 0..trades {
        for kind in [IntentKind::Open, IntentKind::Close] {
            let seq = out.len() as u64 + 1;
            out.push(TradeIntent {
                origin: Default::default(),
                intent_id: IntentId::new(format!("i{seq:03}")),
                trade_id: TradeId::new(format!("t{t:02}")),
                master: AccountId::new(MASTER),
                kind,
                symbol: Symbol::new("EURUSD"),
                side: if t % 2 == 0 { Side::Buy } else { Side::Sell },
                volume: 1.0,
                price: 1.1,
                stop_loss: 1.0,
                take_profit: 1.3,
                master_ticket: t as i64 + 1,
                master_seq: seq,
                emitted_at_ms: seq as i64,
                master_volume_before: 0.0,
            });
        }
    }
    out
}

async fn core_host(world: Shared) -> turmoil::Result {
    let durable = journal::durable_state(&world.get());
    world.log(format!(
        "core start unfinished={} open={}",
        durable.unfinished.len(),
        durable.open_tickets.len()
    ));
    let cfg = CoreConfig {
        router: RouterConfig::default(),
        delivery: core_delivery(),
        agent_delivery: agent_delivery(),
        subscriptions: vec![Subscription {
            master: AccountId::new(MASTER),
            slave: AccountId::new(SLAVE),
            multiplier: 1.0,
            symbol_map: Default::default(),
            policy: Default::default(),
        }],
        recent_intents: 1_024,
    };
    let core = Core::recover(cfg, durable, Instant::ZERO);
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let journal = Journal::with_store(
        Box::new(RemoteStore::new(world.clone())),
        JournalOptions {
            // Small: a slow journal fills it, where a dropped hand-off would show.
            queue_capacity: 8,
            max_batch: 32,
            batch_timeout: Duration::from_millis(1_500),
            safety_poll: Duration::from_secs(5),
        },
    );
    // A small mailbox: bursts after a heal fill it, which is where a dropped hand-off shows.
    let (handle, _join) = spawn_core(
        core,
        "echo-core@sim".into(),
        JournalWriterPort {
            journal,
            done: done_tx,
        },
        done_rx,
        2,
    );
    let svc = LinkService::new(
        handle.inputs.clone(),
        Arc::new(AllowAll),
        Arc::new(LinkMetrics::default()),
    )
    .with_outbound_cap(64);
    serve_incoming(
        net::incoming(LINK_PORT),
        svc,
        Duration::from_millis(500),
        std::future::pending(),
    )
    .await?;
    Ok(())
}

async fn agent_host(world: Shared, id: &'static str, trades: usize) -> turmoil::Result {
    let (account, role) = if id == "agent-1" {
        (AccountId::new(MASTER), Role::Master)
    } else {
        (AccountId::new(SLAVE), Role::Slave)
    };
    let mut records: Vec<LedgerRecord> = world
        .get()
        .ledgers
        .get(id)
        .map(|b| b.values().cloned().collect())
        .unwrap_or_default();
    records.sort_by_key(|r| r.seq);
    world.log(format!("{id} start ledger={}", records.len()));
    let m = DeliveryManager::recover(
        AgentId::new(id),
        vec![(account.clone(), role)],
        agent_delivery(),
        AgentLimits::default(),
        records,
    );
    let (tx, rx) = mpsc::channel(64);
    let (ldone_tx, ldone_rx) = mpsc::unbounded_channel();
    let ledger = SimLedger::start(world.clone(), id.to_string(), ldone_tx);
    let (to_ea, from_agent) = mpsc::unbounded_channel();
    let pipes = SimPipes {
        to: vec![(account.clone(), to_ea)],
    };
    let (_handle, join) = spawn_agent(
        m,
        AgentId::new(id),
        "sim-token".into(),
        pipes,
        ledger,
        ldone_rx,
        (tx.clone(), rx),
    );
    let terminal = tx.clone();
    let w = world.clone();
    tokio::spawn(async move {
        match role {
            Role::Master => {
                run_master(
                    w,
                    account,
                    terminal,
                    from_agent,
                    plan(trades),
                    Duration::from_millis(150),
                )
                .await
            }
            Role::Slave => run_slave(w, account, terminal, from_agent).await,
        }
    });
    let mut settings = ClientSettings::new(format!("http://core:{LINK_PORT}"));
    settings.keepalive = Duration::from_millis(500);
    settings.backoff_base = Duration::from_millis(100);
    settings.backoff_cap = Duration::from_millis(1_000);
    settings.outbound_cap = 64;
    let (ltx, mut lrx) = mpsc::channel(64);
    tokio::spawn(async move {
        let _ = run_client_with(settings, ltx, net::connect).await;
    });
    tokio::spawn(async move {
        while let Some(ev) = lrx.recv().await {
            if tx.send(AgentInput::Link(ev)).await.is_err() {
                return;
            }
        }
    });
    let _ = join.await;
    Ok(())
}

/// Runs `sc` with `seed` and checks it.
pub fn run(sc: &Scenario, seed: u64) -> Outcome {
    let world = World::shared();
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_millis(sc.run_ms + 10_000))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(3))
        .repair_rate(0.05)
        .rng_seed(seed)
        .build();
    let w = world.clone();
    sim.host(JOURNAL_HOST, move || journal::serve(w.clone()));
    let w = world.clone();
    sim.host("core", move || core_host(w.clone()));
    for id in ["agent-1", "agent-2"] {
        let w = world.clone();
        let trades = sc.trades;
        sim.host(id, move || agent_host(w.clone(), id, trades));
    }
    let mut faults = sc.faults.clone();
    faults.sort_by_key(|(t, _)| *t);
    let mut next = 0;
    let mut errors = Vec::new();
    while (sim.elapsed().as_millis() as u64) < sc.run_ms {
        let now = sim.elapsed().as_millis() as u64;
        while next < faults.len() && faults[next].0 <= now {
            let f = faults[next].1.clone();
            world.get().log_at(now, format!("fault {f:?}"));
            apply(&mut sim, &world, f);
            next += 1;
        }
        if let Err(e) = sim.step() {
            errors.push(format!("simulation error: {e}"));
            break;
        }
    }
    let w = world.get();
    let mut violations = errors;
    violations.extend(checks::check(&w));
    Outcome {
        trace: w.trace.join("\n"),
        violations,
    }
}

fn apply(sim: &mut turmoil::Sim<'_>, world: &Shared, f: Fault) {
    match f {
        Fault::Crash(h) => sim.crash(h),
        Fault::Bounce(h) => sim.bounce(h),
        Fault::Partition(a, b) => sim.partition(a, b),
        Fault::Repair(a, b) => sim.repair(a, b),
        Fault::Hold(a, b) => sim.hold(a, b),
        Fault::Release(a, b) => sim.release(a, b),
        Fault::Latency(a, b, ms) => sim.set_link_latency(a, b, Duration::from_millis(ms)),
        Fault::FailRate(a, b, r) => {
            sim.set_link_fail_rate(a, b, r);
            if r == 0.0 {
                // A per-link rate has no repair rate of its own: a link that failed stays down
                // until repaired here, when the lossy window ends.
                sim.repair(a, b);
            }
        }
        Fault::JournalSlow(ms) => world.get().journal_knobs.slow_ms = ms,
        Fault::JournalLoseReplies(on) => world.get().journal_knobs.lose_replies = on,
    }
}
