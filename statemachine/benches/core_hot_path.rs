//! The core machine's hot path, on one thread: intent in → AcceptIntent out → journal Ok in →
//! command(s) out, and (in the lifecycle variants) the slave's ExecutionResult in →
//! FinishDelivery out → Ok in → delivery forgotten. Reports intents per second; memory stays
//! flat because every intent completes and is evicted.

use std::time::Instant as WallClock;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use echo_statemachine::config::{DeliveryConfig, RouterConfig, Subscription};
use echo_statemachine::core::{Core, CoreConfig, CoreOutput, JournalReply, JournalResult, OpId};
use echo_statemachine::ids::{AccountId, AgentId, IntentId, Symbol, TradeId};
use echo_statemachine::msg::*;
use echo_statemachine::time::Instant;

struct Bench {
    core: Core,
    a: AgentId,
    b: AgentId,
    ops: Vec<OpId>,
    cmds: Vec<Command>,
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
            accounts: (0..slaves)
                .map(|k| (AccountId::new(format!("s{k}")), Role::Slave))
                .collect(),
        }),
    );
    while core.poll().is_some() {}
    Bench {
        core,
        a,
        b,
        ops: Vec::with_capacity(64),
        cmds: Vec::with_capacity(64),
    }
}

fn intents(n: usize, offset: usize) -> Vec<TradeIntent> {
    let master = AccountId::new("m1");
    let symbol = Symbol::new("EURUSD");
    (0..n)
        .map(|k| TradeIntent {
            intent_id: IntentId::new(format!("i{}", k + offset)),
            trade_id: TradeId::new(format!("t{}", k + offset)),
            master: master.clone(),
            kind: IntentKind::Open,
            symbol: symbol.clone(),
            side: Side::Buy,
            volume: 1.0,
            price: 1.1,
            stop_loss: 1.0,
            take_profit: 1.2,
            master_ticket: k as i64,
            master_seq: (k + offset) as u64,
            emitted_at_ms: 0,
        })
        .collect()
}

impl Bench {
    fn drain(&mut self) {
        while let Some(o) = self.core.poll() {
            match o {
                CoreOutput::Journal { op, write } if write.is_awaited() => self.ops.push(op),
                CoreOutput::Send {
                    msg: CoreToAgent::Command(c),
                    ..
                } => self.cmds.push(c),
                other => {
                    black_box(other);
                }
            }
        }
    }

    fn persist_all(&mut self, now: Instant) {
        while let Some(op) = self.ops.pop() {
            self.core
                .handle_journal_result(now, op, JournalResult::Ok(JournalReply::Done));
        }
    }

    /// Accept one intent: in → AcceptIntent → Ok → commands out.
    fn accept(&mut self, now: Instant, i: TradeIntent) {
        self.core
            .handle_agent_message(now, &self.a, AgentToCore::Intent(i));
        self.drain();
        self.persist_all(now);
        self.drain();
    }

    /// Confirm every command produced so far and journal the final states.
    fn confirm_all(&mut self, now: Instant) {
        let cmds = std::mem::take(&mut self.cmds);
        for c in cmds {
            self.core.handle_agent_message(
                now,
                &self.b,
                AgentToCore::ExecutionResult(ExecutionResult {
                    command_id: c.command_id,
                    trade_id: c.trade_id,
                    slave: c.slave,
                    slave_ticket: 1,
                    fill_price: 1.1,
                    filled_volume: 1.0,
                    status: BrokerStatus::Filled,
                }),
            );
        }
        self.drain();
        self.persist_all(now);
        self.drain();
    }
}

fn run(c: &mut Criterion, name: &str, slaves: usize, lifecycle: bool, trace: bool) {
    let mut g = c.benchmark_group("core");
    g.throughput(Throughput::Elements(1));
    g.bench_function(name, |bch| {
        bch.iter_custom(|iters| {
            let mut b = setup(slaves, trace);
            let batch = intents(iters as usize, 0);
            let start = WallClock::now();
            for (k, i) in batch.into_iter().enumerate() {
                let now = Instant(k as u64 * 1_000);
                b.accept(now, i);
                if lifecycle {
                    b.confirm_all(now);
                } else {
                    b.cmds.clear();
                }
            }
            let el = start.elapsed();
            if lifecycle {
                assert_eq!(b.core.open_deliveries(), 0, "every delivery completed");
                assert_eq!(b.core.open_intents(), 0);
            }
            el
        })
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    // "traced": every transition reported as a Fired output (what the simulator and auditors
    // use); "untraced": the same decisions without those outputs (a production driver that
    // does not log transitions).
    run(c, "accept_1_slave/traced", 1, false, true);
    run(c, "accept_1_slave/untraced", 1, false, false);
    run(c, "lifecycle_1_slave/traced", 1, true, true);
    run(c, "lifecycle_1_slave/untraced", 1, true, false);
    run(c, "lifecycle_10_slaves/untraced", 10, true, false);
}

criterion_group!(core, benches);
criterion_main!(core);
