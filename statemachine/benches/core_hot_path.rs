//! The core machine's hot path on one thread, in intents per second.
//!
//! What is timed, per intent, is exactly the core's own work plus draining its outputs:
//!
//! 1. `handle_agent_message(Intent)` → poll: `Journal{AcceptIntent}` out (plus `Fired` when
//!    traced);
//! 2. `handle_journal_result(Ok(Done))` for that op → poll: the `TradeIntentAck{OK}` to the
//!    master's agent and one `Command` per subscribed slave out;
//! 3. lifecycle variants only, for each slave: `handle_agent_message(ExecutionResult{FILLED})`
//!    → poll: `Journal{FinishDelivery}` out → `handle_journal_result(Ok(Done))` → poll: the
//!    `DeliveryReport` to the master's agent out; the delivery and, after its last one, the
//!    intent are forgotten.
//!
//! Every output is moved out of the core and dropped inside the timed region (a driver must
//! consume them), and so is every input message the core does not keep. Building the input
//! messages (`TradeIntent`, `ExecutionResult`) is decoding, the runtime's job, and is done
//! before the timed region, one chunk of `CHUNK` intents at a time; the bench's own containers
//! for them are freed after it. The accept-only variants complete each chunk's deliveries
//! after its timed region (untimed): within a chunk up to `CHUNK` deliveries are in flight
//! (armed timers, chains, commands awaiting results), as in a core whose slaves lag behind,
//! and the tables never grow with the run.
//!
//! Intents come in open/close pairs per trade (`t{k}` opened, then closed), so open positions
//! (slave tickets) stay bounded as well. An intent to ten slaves counts as one intent: its
//! deliveries per second are ten times the reported rate. After every run the bench asserts that
//! the core's internal tables ([`Core::debug_sizes`]) are back to a size independent of the
//! number of intents run.

use std::time::{Duration, Instant as WallClock};

use criterion::{black_box, criterion_group, Criterion, Throughput};
use echo_statemachine::config::{DeliveryConfig, RouterConfig, Subscription};
use echo_statemachine::core::{Core, CoreConfig, CoreOutput, JournalReply, JournalResult, OpId};
use echo_statemachine::ids::{AccountId, AgentId, CommandId, IntentId, Symbol, TradeId};
use echo_statemachine::msg::*;
use echo_statemachine::time::Instant;

/// Intents whose inputs are built (untimed) before each timed stretch.
const CHUNK: usize = 1_024;

struct Bench {
    core: Core,
    a: AgentId,
    b: AgentId,
    slaves: Vec<AccountId>,
    ops: Vec<OpId>,
    commands: usize,
}

/// One intent's inputs: the intent, then each slave's execution result.
struct Input {
    intent: TradeIntent,
    results: Vec<ExecutionResult>,
}

fn setup(slaves: usize, trace: bool) -> Bench {
    let subs = (0..slaves)
        .map(|k| Subscription::new("m1", &format!("s{k}"), 1.0))
        .collect();
    let cfg = CoreConfig {
        router: RouterConfig::new(4, 128, 50).expect("valid"),
        delivery: DeliveryConfig::default(),
        subscriptions: subs,
        ..CoreConfig::default()
    };
    let mut core = Core::new(cfg);
    core.set_trace(trace);
    let (a, b) = (AgentId::new("A"), AgentId::new("B"));
    let slaves: Vec<AccountId> = (0..slaves)
        .map(|k| AccountId::new(format!("s{k}")))
        .collect();
    core.handle_agent_message(
        Instant(1),
        &a,
        AgentToCore::Hello(AgentHello {
            agent_id: a.clone(),
            protocol_version: PROTOCOL_VERSION,
            supports_lossless_delivery: true,
            accounts: vec![(AccountId::new("m1"), Role::Master)],
        }),
    );
    core.handle_agent_message(
        Instant(1),
        &b,
        AgentToCore::Hello(AgentHello {
            agent_id: b.clone(),
            protocol_version: PROTOCOL_VERSION,
            supports_lossless_delivery: true,
            accounts: slaves.iter().map(|s| (s.clone(), Role::Slave)).collect(),
        }),
    );
    while core.poll().is_some() {}
    Bench {
        core,
        a,
        b,
        slaves,
        ops: Vec::with_capacity(64),
        commands: 0,
    }
}

/// Inputs of intents `from..from + n`. Intent `k` opens trade `t{k / 2}` when `k` is even and
/// closes it when `k` is odd. With `pairs_across_chunks`, intent `k` instead acts on trade
/// `t{k % CHUNK}`, opening it in even chunks and closing it in odd ones (the accept-only
/// variants: a close is only sent once its open completed, which happens between chunks).
fn inputs(b: &Bench, from: usize, n: usize, pairs_across_chunks: bool) -> Vec<Input> {
    let master = AccountId::new("m1");
    let symbol = Symbol::new("EURUSD");
    (from..from + n)
        .map(|k| {
            let (trade, open) = if pairs_across_chunks {
                (k % CHUNK, (k / CHUNK).is_multiple_of(2))
            } else {
                (k / 2, k.is_multiple_of(2))
            };
            let intent = TradeIntent {
                origin: Default::default(),
                intent_id: IntentId::new(format!("i{k}")),
                trade_id: TradeId::new(format!("t{trade}")),
                master: master.clone(),
                kind: if open {
                    IntentKind::Open
                } else {
                    IntentKind::Close
                },
                symbol: symbol.clone(),
                side: Side::Buy,
                volume: 1.0,
                price: 1.1,
                stop_loss: 1.0,
                take_profit: 1.2,
                master_ticket: trade as i64,
                master_seq: k as u64,
                emitted_at_ms: 0,
                master_volume_before: 0.0,
            };
            let results = b
                .slaves
                .iter()
                .map(|s| ExecutionResult {
                    reason: None,
                    command_id: CommandId::for_delivery(&intent.intent_id, s),
                    trade_id: intent.trade_id.clone(),
                    slave: s.clone(),
                    slave_ticket: 1 + trade as i64,
                    fill_price: 1.1,
                    filled_volume: 1.0,
                    status: BrokerStatus::Filled,
                    legs: Vec::new(),
                })
                .collect();
            Input { intent, results }
        })
        .collect()
}

impl Bench {
    /// Moves every output out of the core; remembers awaited journal ops, counts commands.
    fn drain(&mut self) {
        while let Some(o) = self.core.poll() {
            match &o {
                CoreOutput::Journal { op, write } if write.is_awaited() => self.ops.push(*op),
                CoreOutput::Send {
                    msg: CoreToAgent::Command(_),
                    ..
                } => self.commands += 1,
                _ => {}
            }
            black_box(&o);
        }
    }

    /// Reports every awaited journal write durable, then drains what that caused.
    fn persist_all(&mut self, now: Instant) {
        // Indexes rather than `take`, so the buffer keeps its capacity.
        let mut done = 0;
        while done < self.ops.len() {
            let end = self.ops.len();
            for k in done..end {
                let op = self.ops[k];
                self.core
                    .handle_journal_result(now, op, JournalResult::Ok(JournalReply::Done));
            }
            done = end;
            self.drain();
        }
        self.ops.clear();
    }

    /// Intent in → AcceptIntent out → Ok in → ack and commands out.
    #[inline(never)] // a symbol for profilers (callgrind --toggle-collect)
    fn accept(&mut self, now: Instant, i: TradeIntent) {
        self.core
            .handle_agent_message(now, &self.a, AgentToCore::Intent(i));
        self.drain();
        self.persist_all(now);
    }

    /// ExecutionResult in → FinishDelivery out → Ok in → report out, delivery forgotten.
    #[inline(never)] // a symbol for profilers (callgrind --toggle-collect)
    fn confirm(&mut self, now: Instant, results: &mut Vec<ExecutionResult>) {
        for r in results.drain(..) {
            self.core
                .handle_agent_message(now, &self.b, AgentToCore::ExecutionResult(r));
        }
        self.drain();
        self.persist_all(now);
    }

    /// The core's tables hold nothing that grows with the number of intents run.
    fn assert_flat(&self) {
        let s = self.core.debug_sizes();
        assert_eq!(s.intents, 0, "{s:?}");
        assert_eq!(s.deliveries, 0, "{s:?}");
        assert_eq!(s.pending_ops, 0, "{s:?}");
        assert_eq!(s.chains, 0, "{s:?}");
        assert_eq!(s.persisting_trades, 0, "{s:?}");
        assert_eq!(s.outputs, 0, "{s:?}");
        assert_eq!(s.send_windows, 0, "{s:?}");
        assert!(s.open_tickets <= CHUNK * self.slaves.len(), "{s:?}");
        // The heartbeat timer only; the recent-dedupe window is capped by configuration.
        assert!(s.timers <= 1, "{s:?}");
        assert!(s.recent_intents <= 4_096, "{s:?}");
    }
}

/// `perf stat --delay=-1 --control fifo:CTL,ACK`: with `ECHO_PERF_CTL=CTL,ACK` the counters
/// run during the timed regions only.
struct PerfControl(Option<(std::fs::File, std::io::BufReader<std::fs::File>)>);

impl PerfControl {
    fn from_env() -> Self {
        PerfControl(std::env::var("ECHO_PERF_CTL").ok().map(|v| {
            let (ctl, ack) = v.split_once(',').expect("ECHO_PERF_CTL=CTL,ACK");
            let ctl = std::fs::OpenOptions::new().write(true).open(ctl);
            let ack = std::fs::File::open(ack).expect("ack fifo");
            (ctl.expect("ctl fifo"), std::io::BufReader::new(ack))
        }))
    }

    fn toggle(&mut self, cmd: &str) {
        use std::io::{BufRead, Write};
        if let Some((ctl, ack)) = &mut self.0 {
            writeln!(ctl, "{cmd}").expect("perf control");
            let mut line = String::new();
            ack.read_line(&mut line).expect("perf ack");
        }
    }
}

/// Runs `iters` intents through a fresh core; returns the time spent in the timed regions.
fn measure(iters: usize, slaves: usize, lifecycle: bool, trace: bool) -> Duration {
    let mut perf = PerfControl::from_env();
    let mut b = setup(slaves, trace);
    let mut timed = Duration::ZERO;
    let mut done = 0usize;
    let mut clock = 0u64;
    while done < iters {
        let n = CHUNK.min(iters - done);
        let mut batch = inputs(&b, done, n, !lifecycle);
        let mut later = Vec::with_capacity(n);
        let commands = b.commands;
        perf.toggle("enable");
        let start = WallClock::now();
        // `drain`, and results emptied in place: the bench's own containers are freed after
        // the timed region.
        for mut input in batch.drain(..) {
            clock += 1_000;
            let now = Instant(clock);
            b.accept(now, input.intent);
            if lifecycle {
                b.confirm(now, &mut input.results);
            }
            later.push(input.results);
        }
        timed += start.elapsed();
        perf.toggle("disable");
        assert_eq!(
            b.commands - commands,
            n * slaves,
            "one command per delivery"
        );
        // Untimed: complete the chunk so the next one starts from steady state.
        for mut results in later {
            b.confirm(Instant(clock), &mut results);
        }
        drop(batch);
        done += n;
    }
    b.assert_flat();
    timed
}

/// `(name, slaves, lifecycle, traced)`. "traced": every transition reported as a Fired output
/// (what the simulator and auditors use); "untraced": the same decisions without those
/// outputs (a production driver that does not log transitions).
const SCENARIOS: &[(&str, usize, bool, bool)] = &[
    ("accept_1_slave/traced", 1, false, true),
    ("accept_1_slave/untraced", 1, false, false),
    ("lifecycle_1_slave/traced", 1, true, true),
    ("lifecycle_1_slave/untraced", 1, true, false),
    ("lifecycle_10_slaves/untraced", 10, true, false),
];

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("core");
    g.throughput(Throughput::Elements(1));
    for &(name, slaves, lifecycle, trace) in SCENARIOS {
        g.bench_function(name, |bch| {
            bch.iter_custom(|iters| measure(iters as usize, slaves, lifecycle, trace))
        });
    }
    g.finish();
}

criterion_group!(core, benches);

/// `ECHO_HOT_PATH=<scenario>:<intents>` runs one scenario once, without criterion, for
/// instruction and cycle counts that a busy machine does not blur:
///
/// ```text
/// mkfifo /tmp/ctl /tmp/ack
/// ECHO_HOT_PATH=accept_1_slave/untraced:200000 ECHO_PERF_CTL=/tmp/ctl,/tmp/ack \
///   perf stat --delay=-1 --control fifo:/tmp/ctl,/tmp/ack -e instructions:u,cycles:u \
///   target/release/deps/core_hot_path-*
/// ```
///
/// counts the timed regions only. Otherwise: the criterion benches.
fn main() {
    if let Ok(spec) = std::env::var("ECHO_HOT_PATH") {
        let (name, n) = spec.split_once(':').expect("<scenario>:<intents>");
        let n: usize = n.parse().expect("a number of intents");
        let &(_, slaves, lifecycle, trace) = SCENARIOS
            .iter()
            .find(|s| s.0 == name)
            .expect("a scenario name");
        let t = measure(n, slaves, lifecycle, trace);
        println!("{name}: {n} intents in {t:?} timed");
        return;
    }
    core();
    Criterion::default().configure_from_args().final_summary();
}
