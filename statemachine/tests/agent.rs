//! The agent's DeliveryManager: one scenario per group of transitions with real assertions, a
//! test per transition id, a coverage test requiring every id of `agent::T::TABLE` to fire, and a
//! proptest driving random input sequences against the lossless invariants.

use std::collections::{BTreeMap, BTreeSet};

use echo_statemachine::agent::{
    AgentLimits, AgentMetrics, AgentOutput, DeliveryManager, EntryPhase, LedgerOpId, LedgerRecord,
    LedgerResult, LedgerState, LinkState, SPEC, T,
};
use echo_statemachine::config::{AgentDeliveryConfig, DeliveryConfig};
use echo_statemachine::ids::{AccountId, AgentId, CommandId, IntentId, Symbol, TradeId};
use echo_statemachine::msg::*;
use echo_statemachine::spec::Subject;
use echo_statemachine::time::{backoff, Duration, Instant};

// ----- fixtures ------------------------------------------------------------------------------

fn acc(s: &str) -> AccountId {
    AccountId::new(s)
}

fn cid(s: &str) -> CommandId {
    CommandId::new(s)
}

fn accounts() -> Vec<(AccountId, Role)> {
    vec![
        (acc("m1"), Role::Master),
        (acc("m2"), Role::Master),
        (acc("s1"), Role::Slave),
        (acc("s2"), Role::Slave),
    ]
}

fn cfg() -> AgentDeliveryConfig {
    AgentDeliveryConfig {
        ack_timeout_ms: 1_000,
        retry_backoff_ms: 100,
        max_retries: 3,
        heartbeat_interval_ms: 1_000,
    }
}

/// The core's config differs from the local one only in the heartbeat period, so entry
/// deadlines stay well before the first heartbeat in every scenario.
fn core_cfg() -> AgentDeliveryConfig {
    AgentDeliveryConfig {
        heartbeat_interval_ms: 5_000,
        ..cfg()
    }
}

fn heartbeat(agent: AgentDeliveryConfig) -> DeliveryHeartbeat {
    DeliveryHeartbeat {
        core: DeliveryConfig::default(),
        agent,
        config_version: 1,
    }
}

fn hello(accepted: bool) -> CoreToAgent {
    CoreToAgent::Hello(CoreHello {
        protocol_version: PROTOCOL_VERSION,
        accepted,
        compat_mode: false,
        reason: (!accepted).then_some(ErrorCode::Unauthenticated),
        delivery: heartbeat(core_cfg()),
    })
}

fn command(id: &str, slave: &str) -> Command {
    Command {
        command_id: cid(id),
        intent_id: IntentId::new(format!("i-{id}")),
        trade_id: TradeId::new(format!("t-{id}")),
        slave: acc(slave),
        body: CommandBody::Close {
            slave_ticket: 7,
            volume: 0.0,
        },
    }
}

fn intent(id: &str, master: &str) -> TradeIntent {
    TradeIntent {
        origin: Default::default(),
        intent_id: IntentId::new(id),
        trade_id: TradeId::new(format!("t-{id}")),
        master: acc(master),
        kind: IntentKind::Open,
        symbol: Symbol::new("EURUSD"),
        side: Side::Buy,
        volume: 1.0,
        price: 1.1,
        stop_loss: 0.0,
        take_profit: 0.0,
        master_ticket: 1,
        master_seq: 1,
        emitted_at_ms: 0,
        master_volume_before: 0.0,
    }
}

fn intent_ack(id: &str, result: AckResult) -> TradeIntentAck {
    TradeIntentAck {
        intent_id: IntentId::new(id),
        trade_id: TradeId::new(format!("t-{id}")),
        result,
        error: None,
        retry_after_ms: 0,
    }
}

fn result(id: &str, slave: &str) -> ExecutionResult {
    ExecutionResult {
        reason: None,
        command_id: cid(id),
        trade_id: TradeId::new(format!("t-{id}")),
        slave: acc(slave),
        slave_ticket: 42,
        fill_price: 1.1,
        filled_volume: 1.0,
        status: BrokerStatus::Filled,
        legs: Vec::new(),
    }
}

fn record(seq: u64, id: &str, slave: &str, state: LedgerState) -> LedgerRecord {
    LedgerRecord {
        seq,
        command: command(id, slave),
        state,
        attempts: 0,
    }
}

// ----- output views --------------------------------------------------------------------------

type Outs = Vec<AgentOutput>;

fn fired(outs: &[AgentOutput]) -> Vec<&'static str> {
    outs.iter()
        .filter_map(|o| match o {
            AgentOutput::Fired(f) => Some(f.id()),
            _ => None,
        })
        .collect()
}

fn core_msgs(outs: &[AgentOutput]) -> Vec<AgentToCore> {
    outs.iter()
        .filter_map(|o| match o {
            AgentOutput::ToCore(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

fn acks(outs: &[AgentOutput]) -> Vec<CommandAck> {
    core_msgs(outs)
        .into_iter()
        .filter_map(|m| match m {
            AgentToCore::CommandAck(a) => Some(a),
            _ => None,
        })
        .collect()
}

fn results_sent(outs: &[AgentOutput]) -> Vec<CommandId> {
    core_msgs(outs)
        .into_iter()
        .filter_map(|m| match m {
            AgentToCore::ExecutionResult(r) => Some(r.command_id),
            _ => None,
        })
        .collect()
}

fn persists(outs: &[AgentOutput]) -> Vec<(LedgerOpId, LedgerRecord)> {
    outs.iter()
        .filter_map(|o| match o {
            AgentOutput::PersistLedger { op, record } => Some((*op, record.clone())),
            _ => None,
        })
        .collect()
}

fn deletes(outs: &[AgentOutput]) -> Vec<CommandId> {
    outs.iter()
        .filter_map(|o| match o {
            AgentOutput::DeleteLedger { command_id } => Some(command_id.clone()),
            _ => None,
        })
        .collect()
}

fn ea_msgs(outs: &[AgentOutput]) -> Vec<(AccountId, AgentToEa)> {
    outs.iter()
        .filter_map(|o| match o {
            AgentOutput::ToEa { account, msg } => Some((account.clone(), msg.clone())),
            _ => None,
        })
        .collect()
}

fn pipe_commands(outs: &[AgentOutput]) -> Vec<(AccountId, CommandId)> {
    ea_msgs(outs)
        .into_iter()
        .filter_map(|(a, m)| match m {
            AgentToEa::Command(c) => Some((a, c.command_id)),
            _ => None,
        })
        .collect()
}

fn intent_acks_to(outs: &[AgentOutput]) -> Vec<(AccountId, TradeIntentAck)> {
    ea_msgs(outs)
        .into_iter()
        .filter_map(|(a, m)| match m {
            AgentToEa::IntentAck(k) => Some((a, k)),
            _ => None,
        })
        .collect()
}

fn ack_is(a: &CommandAck, id: &str, stage: AckStage, res: AckResult, err: Option<ErrorCode>) {
    assert_eq!(
        (a.command_id.as_str(), a.stage, a.result, a.error),
        (id, stage, res, err),
        "{a:?}"
    );
}

/// Index of the first output matching `p` (panics if none), to check ordering.
fn pos(outs: &[AgentOutput], p: impl Fn(&AgentOutput) -> bool) -> usize {
    outs.iter()
        .position(p)
        .unwrap_or_else(|| panic!("no such output in {outs:#?}"))
}

fn is_fired(id: &'static str) -> impl Fn(&AgentOutput) -> bool {
    move |o| matches!(o, AgentOutput::Fired(f) if f.id() == id)
}

// ----- harness -------------------------------------------------------------------------------

struct H {
    m: DeliveryManager,
    now: Instant,
    fired: BTreeSet<&'static str>,
}

impl H {
    fn new() -> H {
        H::with(AgentLimits::default())
    }

    fn with(limits: AgentLimits) -> H {
        H::from(DeliveryManager::new(
            AgentId::new("a1"),
            accounts(),
            cfg(),
            limits,
        ))
    }

    fn recovered(limits: AgentLimits, ledger: Vec<LedgerRecord>) -> (H, Outs) {
        let m = DeliveryManager::recover(AgentId::new("a1"), accounts(), cfg(), limits, ledger);
        let mut h = H::from(m);
        let outs = h.drain();
        (h, outs)
    }

    fn from(m: DeliveryManager) -> H {
        H {
            m,
            now: Instant::ZERO,
            fired: BTreeSet::new(),
        }
    }

    fn drain(&mut self) -> Outs {
        let mut v = Vec::new();
        while let Some(o) = self.m.poll() {
            if let AgentOutput::Fired(f) = &o {
                self.fired.insert(f.id());
            }
            v.push(o);
        }
        v
    }

    fn at(&mut self, ms: u64) {
        self.now = Instant::from_millis(ms);
    }

    fn connect(&mut self) -> Outs {
        self.m.handle_core_connected(self.now);
        self.drain()
    }

    fn core(&mut self, msg: CoreToAgent) -> Outs {
        self.m.handle_from_core(self.now, msg);
        self.drain()
    }

    fn online(&mut self) -> Outs {
        let mut o = self.connect();
        o.extend(self.core(hello(true)));
        assert_eq!(self.m.link_state(), LinkState::Online);
        o
    }

    fn disconnect(&mut self) -> Outs {
        self.m.handle_core_disconnected(self.now);
        self.drain()
    }

    fn pipe(&mut self, a: &str) -> Outs {
        self.m.handle_pipe_connected(self.now, acc(a));
        self.drain()
    }

    fn close(&mut self, a: &str) -> Outs {
        self.m.handle_pipe_closed(self.now, acc(a));
        self.drain()
    }

    fn cmd(&mut self, id: &str, slave: &str) -> Outs {
        self.core(CoreToAgent::Command(command(id, slave)))
    }

    fn ea(&mut self, a: &str, msg: EaToAgent) -> Outs {
        self.m.handle_from_ea(self.now, acc(a), msg);
        self.drain()
    }

    fn pipe_ack(&mut self, a: &str, id: &str, status: PipeStatus) -> Outs {
        self.ea(
            a,
            EaToAgent::PipeAck(PipeDeliveryAck {
                command_id: cid(id),
                status,
                reason: None,
            }),
        )
    }

    fn exec(&mut self, a: &str, id: &str, slave: &str) -> Outs {
        self.ea(a, EaToAgent::Execution(result(id, slave)))
    }

    fn ledger(&mut self, op: LedgerOpId, r: LedgerResult) -> Outs {
        self.m.handle_ledger_result(self.now, op, r);
        self.drain()
    }

    /// Answers every PersistLedger in `outs` (and in what that causes) with Ok.
    fn ok_all(&mut self, outs: &[AgentOutput]) -> Outs {
        let mut all = Vec::new();
        let mut todo: Vec<LedgerOpId> = persists(outs).into_iter().map(|(op, _)| op).collect();
        while let Some(op) = todo.first().copied() {
            todo.remove(0);
            let o = self.ledger(op, LedgerResult::Ok);
            todo.extend(persists(&o).into_iter().map(|(op, _)| op));
            all.extend(o);
        }
        all
    }

    fn timeout(&mut self) -> Outs {
        self.m.handle_timeout(self.now);
        self.drain()
    }

    /// Jumps to the next deadline and handles it.
    fn next_deadline(&mut self) -> Outs {
        let at = self.m.poll_timeout().expect("a deadline is armed");
        assert!(at >= self.now, "deadline {at} before now {}", self.now);
        self.now = at;
        self.timeout()
    }

    /// A command taken and made durable (written to the pipe if it is open).
    fn buffered(&mut self, id: &str, slave: &str) -> Outs {
        let o = self.cmd(id, slave);
        let mut all = o.clone();
        all.extend(self.ok_all(&o));
        all
    }

    /// A command taken, durable, acked OK by the EA and durable as Delivered.
    fn delivered(&mut self, id: &str, slave: &str) -> Outs {
        let mut all = self.buffered(id, slave);
        let o = self.pipe_ack(slave, id, PipeStatus::Ok);
        all.extend(self.ok_all(&o));
        all.extend(o);
        assert_eq!(self.m.entry_phase(&cid(id)), Some(EntryPhase::Delivered));
        all
    }

    fn phase(&self, id: &str) -> Option<EntryPhase> {
        self.m.entry_phase(&cid(id))
    }

    fn done(self) -> BTreeSet<&'static str> {
        self.fired
    }
}

// ----- scenarios: link -----------------------------------------------------------------------

type Fired = BTreeSet<&'static str>;

fn link_connect_sends_hello() -> Fired {
    let mut h = H::new();
    let o = h.connect();
    assert_eq!(fired(&o), vec![T::T01.id()]);
    assert_eq!(
        core_msgs(&o),
        vec![AgentToCore::Hello(AgentHello {
            agent_id: AgentId::new("a1"),
            protocol_version: PROTOCOL_VERSION,
            supports_lossless_delivery: true,
            accounts: accounts(),
        })]
    );
    assert_eq!(h.m.link_state(), LinkState::Connecting);
    // A new stream while Online: the old stream's pending intent is answered, heartbeat stops.
    h.core(hello(true));
    h.ea("m1", EaToAgent::Intent(intent("i1", "m1")));
    assert!(h.m.poll_timeout().is_some());
    let o = h.connect();
    let busy = intent_acks_to(&o);
    assert_eq!(busy.len(), 1);
    assert_eq!(busy[0].0, acc("m1"));
    assert_eq!(busy[0].1.error, Some(ErrorCode::BrokerBusy));
    assert!(pos(&o, is_fired(T::T01.id())) < pos(&o, |o| matches!(o, AgentOutput::ToEa { .. })));
    assert_eq!(
        h.m.poll_timeout(),
        Some(h.now + Duration::from_millis(h.m.config().heartbeat_interval_ms.into())),
        "the old stream's heartbeat stopped; only the new stream's hello timer runs"
    );
    assert_eq!(h.m.pending_intents(), 0);
    h.done()
}

fn link_online_rereports_ledger() -> Fired {
    let ledger = vec![
        record(4, "c-done", "s1", LedgerState::Completed),
        record(1, "c-buf", "s1", LedgerState::Buffered),
        record(2, "c-del", "s2", LedgerState::Delivered),
        record(
            3,
            "c-rej",
            "s1",
            LedgerState::Rejected {
                reason: ErrorCode::InvalidArgument,
            },
        ),
    ];
    let (mut h, _) = H::recovered(AgentLimits::default(), ledger);
    h.pipe("m1");
    h.at(10);
    let o = h.online();
    // T02 first, then config to the master, then each durable stage in ledger order.
    assert_eq!(fired(&o), vec![T::T01.id(), T::T02.id()]);
    let t02 = pos(&o, is_fired(T::T02.id()));
    let cfg_at = pos(&o, |o| {
        matches!(o, AgentOutput::ToEa { account, msg: AgentToEa::DeliveryConfig(c) }
            if account.as_str() == "m1" && *c == core_cfg())
    });
    assert!(t02 < cfg_at);
    let a = acks(&o);
    assert_eq!(a.len(), 3, "completed entries are not re-reported: {a:?}");
    ack_is(&a[0], "c-buf", AckStage::AgentBuffered, AckResult::Ok, None);
    ack_is(&a[1], "c-del", AckStage::PipeDelivered, AckResult::Ok, None);
    ack_is(
        &a[2],
        "c-rej",
        AckStage::PipeDelivered,
        AckResult::Failed,
        Some(ErrorCode::InvalidArgument),
    );
    assert_eq!(h.m.config(), core_cfg(), "CoreHello's agent config applied");
    assert_eq!(
        h.m.poll_timeout(),
        Some(Instant::from_millis(5_010)),
        "heartbeat armed"
    );
    h.done()
}

fn link_refused() -> Fired {
    let mut h = H::new();
    h.connect();
    let o = h.core(hello(false));
    assert_eq!(fired(&o), vec![T::T03.id()]);
    assert!(core_msgs(&o).is_empty());
    assert_eq!(h.m.link_state(), LinkState::Refused);
    assert_eq!(h.m.metrics().hello_refused, 1);
    let o = h.ea("m1", EaToAgent::Intent(intent("i1", "m1")));
    assert_eq!(fired(&o), vec![T::T09.id()]);
    assert!(
        core_msgs(&o).is_empty(),
        "no intent forwarded while refused"
    );
    assert_eq!(h.m.poll_timeout(), None, "no heartbeat while refused");
    h.done()
}

fn link_disconnect_answers_pending_intents() -> Fired {
    let mut h = H::new();
    h.online();
    h.ea("m1", EaToAgent::Intent(intent("i1", "m1")));
    h.ea("m2", EaToAgent::Intent(intent("i2", "m2")));
    let o = h.disconnect();
    assert_eq!(fired(&o), vec![T::T04.id()]);
    let busy = intent_acks_to(&o);
    assert_eq!(
        busy.iter()
            .map(|(a, k)| (a.as_str(), k.intent_id.as_str(), k.result, k.error))
            .collect::<Vec<_>>(),
        vec![
            ("m1", "i1", AckResult::Failed, Some(ErrorCode::BrokerBusy)),
            ("m2", "i2", AckResult::Failed, Some(ErrorCode::BrokerBusy)),
        ]
    );
    assert_eq!(busy[0].1.retry_after_ms, core_cfg().retry_backoff_ms);
    assert_eq!(h.m.link_state(), LinkState::Offline);
    assert_eq!(h.m.poll_timeout(), None);
    assert!(h.disconnect().is_empty(), "a second close changes nothing");
    // Stage reports are withheld while offline, then re-derived on Online.
    h.pipe("s1");
    let o = h.buffered("c1", "s1");
    assert!(acks(&o).is_empty());
    assert!(h.m.metrics().reports_withheld >= 1);
    let o = h.online();
    ack_is(
        &acks(&o)[0],
        "c1",
        AckStage::AgentBuffered,
        AckResult::Ok,
        None,
    );
    h.done()
}

fn link_heartbeat() -> Fired {
    let mut h = H::new();
    h.online();
    assert_eq!(h.m.poll_timeout(), Some(Instant::from_millis(5_000)));
    h.at(4_999);
    assert!(h.timeout().is_empty());
    h.at(5_000);
    let o = h.timeout();
    assert_eq!(fired(&o), vec![T::T05.id()]);
    assert_eq!(core_msgs(&o), vec![AgentToCore::Heartbeat]);
    assert_eq!(h.m.poll_timeout(), Some(Instant::from_millis(10_000)));
    // Late wake-up: the next one is a full period after the wake, not a burst.
    h.at(12_000);
    assert_eq!(core_msgs(&h.timeout()), vec![AgentToCore::Heartbeat]);
    assert_eq!(h.m.poll_timeout(), Some(Instant::from_millis(17_000)));
    h.done()
}

fn config_heartbeat_pushes_to_masters() -> Fired {
    let mut h = H::new();
    h.pipe("m1");
    h.pipe("s1");
    h.online();
    let new = AgentDeliveryConfig {
        max_retries: 9,
        ..core_cfg()
    };
    let o = h.core(CoreToAgent::Heartbeat(heartbeat(new)));
    assert_eq!(fired(&o), vec![T::T06.id()]);
    assert_eq!(
        ea_msgs(&o),
        vec![(acc("m1"), AgentToEa::DeliveryConfig(new))],
        "only open master pipes get it"
    );
    assert_eq!(h.m.config(), new);
    assert!(
        h.core(CoreToAgent::Heartbeat(heartbeat(new))).is_empty(),
        "unchanged: silent"
    );
    // The applied config drives retries: max_retries 9 now.
    let mut writes = pipe_commands(&h.buffered("c1", "s1")).len();
    for _ in 0..100 {
        if h.phase("c1") == Some(EntryPhase::Parked) {
            break;
        }
        writes += pipe_commands(&h.next_deadline()).len();
    }
    assert_eq!(writes, 9);
    h.done()
}

fn config_out_of_range_is_refused() -> Fired {
    let mut h = H::new();
    h.pipe("m1");
    h.online();
    let bad = AgentDeliveryConfig {
        max_retries: 0,
        ..core_cfg()
    };
    let o = h.core(CoreToAgent::Heartbeat(heartbeat(bad)));
    assert_eq!(fired(&o), vec![T::T07.id()]);
    assert!(ea_msgs(&o).is_empty());
    assert_eq!(h.m.config(), core_cfg(), "old config kept");
    assert_eq!(h.m.metrics().config_rejected, 1);
    h.done()
}

// ----- scenarios: intents --------------------------------------------------------------------

fn intents_forwarded_and_acked() -> Fired {
    let mut h = H::new();
    h.online();
    let o = h.ea("m1", EaToAgent::Intent(intent("i1", "m1")));
    assert_eq!(fired(&o), vec![T::T08.id()]);
    assert_eq!(core_msgs(&o), vec![AgentToCore::Intent(intent("i1", "m1"))]);
    assert_eq!(h.m.pending_intents(), 1);
    // PENDING is forwarded but keeps the route for the final answer.
    let o = h.core(CoreToAgent::IntentAck(intent_ack("i1", AckResult::Pending)));
    assert_eq!(fired(&o), vec![T::T12.id()]);
    assert_eq!(h.m.pending_intents(), 1);
    let o = h.core(CoreToAgent::IntentAck(intent_ack("i1", AckResult::Ok)));
    assert_eq!(fired(&o), vec![T::T12.id()]);
    assert_eq!(
        intent_acks_to(&o),
        vec![(acc("m1"), intent_ack("i1", AckResult::Ok))]
    );
    assert_eq!(h.m.pending_intents(), 0);
    let o = h.core(CoreToAgent::IntentAck(intent_ack("i1", AckResult::Ok)));
    assert_eq!(fired(&o), vec![T::T13.id()]);
    assert!(ea_msgs(&o).is_empty());
    assert_eq!(h.m.metrics().acks_unroutable, 1);
    assert_eq!(h.m.metrics().intents_forwarded, 1);
    h.done()
}

fn intents_refused_when_not_online() -> Fired {
    let mut h = H::new();
    for setup in 0..2 {
        if setup == 1 {
            h.connect(); // Connecting is not Online either.
        }
        let o = h.ea("m1", EaToAgent::Intent(intent("i1", "m1")));
        assert_eq!(fired(&o), vec![T::T09.id()]);
        assert!(core_msgs(&o).is_empty());
        let k = &intent_acks_to(&o)[0].1;
        assert_eq!(
            (k.result, k.error, k.retry_after_ms),
            (AckResult::Failed, Some(ErrorCode::BrokerBusy), 100)
        );
    }
    assert_eq!(h.m.pending_intents(), 0, "the agent keeps nothing");
    h.done()
}

fn intents_table_full_is_backpressure() -> Fired {
    let mut h = H::with(AgentLimits {
        max_intent_routes: 1,
        ..AgentLimits::default()
    });
    h.online();
    h.ea("m1", EaToAgent::Intent(intent("i1", "m1")));
    let o = h.ea("m1", EaToAgent::Intent(intent("i2", "m1")));
    assert_eq!(fired(&o), vec![T::T10.id()]);
    assert!(core_msgs(&o).is_empty());
    assert_eq!(
        intent_acks_to(&o)[0].1.error,
        Some(ErrorCode::BrokerBusy),
        "explicit backpressure, never a silent drop"
    );
    // A re-send of the routed intent is forwarded again (no growth).
    let o = h.ea("m1", EaToAgent::Intent(intent("i1", "m1")));
    assert_eq!(fired(&o), vec![T::T08.id()]);
    // The same id from another master waits for the first route to clear.
    let mut other = intent("i1", "m2");
    other.trade_id = TradeId::new("t-other");
    let o = h.ea("m2", EaToAgent::Intent(other));
    assert_eq!(fired(&o), vec![T::T10.id()]);
    assert_eq!(intent_acks_to(&o)[0].0, acc("m2"));
    assert_eq!(h.m.metrics().intents_refused, 2);
    h.done()
}

fn intents_from_wrong_account() -> Fired {
    let mut h = H::new();
    h.online();
    for (pipe, master, code) in [
        ("s1", "s1", ErrorCode::UnknownAccount),
        ("zz", "zz", ErrorCode::UnknownAccount),
        ("m1", "m2", ErrorCode::ProtocolViolation),
    ] {
        let o = h.ea(pipe, EaToAgent::Intent(intent("i1", master)));
        assert_eq!(fired(&o), vec![T::T11.id()]);
        assert!(core_msgs(&o).is_empty());
        let (to, k) = &intent_acks_to(&o)[0];
        assert_eq!((to.as_str(), k.error), (pipe, Some(code)));
    }
    assert_eq!(h.m.metrics().intents_rejected, 3);
    h.done()
}

fn intents_stale_route_expires() -> Fired {
    let mut h = H::with(AgentLimits {
        max_intent_routes: 1,
        ..AgentLimits::default()
    });
    h.online();
    h.ea("m1", EaToAgent::Intent(intent("i1", "m1")));
    h.at(29_999);
    let o = h.ea("m1", EaToAgent::Intent(intent("i2", "m1")));
    assert_eq!(fired(&o), vec![T::T10.id()]);
    h.at(30_000);
    let o = h.ea("m1", EaToAgent::Intent(intent("i2", "m1")));
    assert_eq!(fired(&o), vec![T::T14.id(), T::T08.id()]);
    assert_eq!(core_msgs(&o), vec![AgentToCore::Intent(intent("i2", "m1"))]);
    let o = h.core(CoreToAgent::IntentAck(intent_ack("i1", AckResult::Ok)));
    assert_eq!(
        fired(&o),
        vec![T::T13.id()],
        "the expired route cannot be routed"
    );
    assert_eq!(h.m.metrics().intent_routes_expired, 1);
    h.done()
}

// ----- scenarios: ledger ---------------------------------------------------------------------

fn commands_buffered_only_after_durable() -> Fired {
    let mut h = H::new();
    h.online();
    h.pipe("s1");
    let o = h.cmd("c1", "s1");
    assert_eq!(fired(&o), vec![T::T15.id()]);
    assert!(
        acks(&o).is_empty(),
        "AGENT_BUFFERED never before the ledger write is durable"
    );
    assert!(
        pipe_commands(&o).is_empty(),
        "no pipe write before the ledger write"
    );
    let p = persists(&o);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].1.state, LedgerState::Buffered);
    assert_eq!(p[0].1.command, command("c1", "s1"));
    assert_eq!(h.phase("c1"), Some(EntryPhase::Persisting));
    h.at(5);
    let o = h.ledger(p[0].0, LedgerResult::Ok);
    assert_eq!(fired(&o), vec![T::T18.id(), T::T28.id()]);
    ack_is(
        &acks(&o)[0],
        "c1",
        AckStage::AgentBuffered,
        AckResult::Ok,
        None,
    );
    let ack_at = pos(&o, |o| matches!(o, AgentOutput::ToCore(_)));
    let write_at = pos(&o, |o| matches!(o, AgentOutput::ToEa { .. }));
    assert!(ack_at < write_at, "ack first, then the pipe write");
    assert_eq!(pipe_commands(&o), vec![(acc("s1"), cid("c1"))]);
    assert_eq!(h.phase("c1"), Some(EntryPhase::AwaitingAck));
    assert_eq!(
        h.m.poll_timeout(),
        Some(Instant::from_millis(1_005)),
        "ack timer"
    );
    // Pipe closed: durable entry waits, no timer.
    let mut h2 = H::new();
    h2.online();
    let o = h2.buffered("c2", "s2");
    assert_eq!(fired(&o), vec![T::T15.id(), T::T18.id()]);
    assert_eq!(h2.phase("c2"), Some(EntryPhase::WaitingPipe));
    assert_eq!(
        h2.m.poll_timeout(),
        Some(Instant::from_millis(5_000)),
        "only heartbeat"
    );
    h.fired.extend(h2.done());
    h.done()
}

fn commands_for_unknown_accounts() -> Fired {
    let mut h = H::new();
    h.online();
    for slave in ["zz", "m1"] {
        let o = h.cmd("c1", slave);
        assert_eq!(fired(&o), vec![T::T16.id()]);
        assert!(persists(&o).is_empty());
        ack_is(
            &acks(&o)[0],
            "c1",
            AckStage::AgentBuffered,
            AckResult::Failed,
            Some(ErrorCode::UnknownAccount),
        );
    }
    assert_eq!(h.m.ledger_len(), 0);
    h.done()
}

fn commands_ledger_full() -> Fired {
    let mut h = H::with(AgentLimits {
        max_active_commands: 1,
        ..AgentLimits::default()
    });
    h.online();
    h.cmd("c1", "s1");
    let o = h.cmd("c2", "s1");
    assert_eq!(fired(&o), vec![T::T17.id()]);
    assert!(persists(&o).is_empty());
    ack_is(
        &acks(&o)[0],
        "c2",
        AckStage::AgentBuffered,
        AckResult::Failed,
        Some(ErrorCode::BrokerBusy),
    );
    assert_eq!(h.m.ledger_len(), 1);
    h.done()
}

fn ledger_write_retried_with_backoff() -> Fired {
    let mut h = H::new();
    h.online();
    let o = h.cmd("c1", "s1");
    let (op1, _) = persists(&o)[0].clone();
    h.at(10);
    let o = h.ledger(op1, LedgerResult::Failed { retryable: true });
    assert_eq!(fired(&o), vec![T::T19.id()]);
    assert!(acks(&o).is_empty() && persists(&o).is_empty());
    assert_eq!(
        h.m.poll_timeout(),
        Some(Instant::from_millis(10) + backoff(100, 1))
    );
    let o = h.next_deadline();
    assert_eq!(fired(&o), vec![T::T21.id()]);
    let p = persists(&o);
    assert_eq!(p.len(), 1);
    assert_ne!(p[0].0, op1, "a new op id");
    assert_eq!(p[0].1.state, LedgerState::Buffered);
    // The lost reply of the first op is stale now.
    assert!(h.ledger(op1, LedgerResult::Ok).is_empty());
    assert_eq!(h.m.metrics().stale_ledger_results, 1);
    let o = h.ledger(p[0].0, LedgerResult::Ok);
    ack_is(
        &acks(&o)[0],
        "c1",
        AckStage::AgentBuffered,
        AckResult::Ok,
        None,
    );
    h.done()
}

fn ledger_gives_up_on_first_write() -> Fired {
    let mut h = H::new();
    h.online();
    let o = h.cmd("c1", "s1");
    let o = h.ledger(persists(&o)[0].0, LedgerResult::Failed { retryable: false });
    assert_eq!(fired(&o), vec![T::T20.id()]);
    ack_is(
        &acks(&o)[0],
        "c1",
        AckStage::AgentBuffered,
        AckResult::Failed,
        Some(ErrorCode::JournalUnavailable),
    );
    assert_eq!(h.m.ledger_len(), 0);
    // Retryable failures stop at max_retries (3) writes.
    let mut o = h.cmd("c2", "s1");
    for i in 1..=3 {
        let op = persists(&o)[0].0;
        o = h.ledger(op, LedgerResult::Failed { retryable: true });
        if i < 3 {
            assert_eq!(fired(&o), vec![T::T19.id()]);
            o = h.next_deadline();
        }
    }
    assert_eq!(fired(&o), vec![T::T20.id()]);
    assert_eq!(h.m.ledger_len(), 0);
    assert_eq!(h.m.outstanding_ledger_ops(), 0);
    h.done()
}

// ----- scenarios: duplicates -----------------------------------------------------------------

fn duplicate_while_persisting_is_not_persisted_again() -> Fired {
    let mut h = H::new();
    h.online();
    let o1 = h.cmd("c1", "s1");
    let o2 = h.cmd("c1", "s1");
    assert_eq!(fired(&o2), vec![T::T22.id()]);
    assert!(persists(&o2).is_empty() && acks(&o2).is_empty());
    let o = h.ok_all(&o1);
    assert_eq!(acks(&o).len(), 1, "one AGENT_BUFFERED, after the one write");
    assert_eq!(h.m.metrics().duplicate_commands, 1);
    h.done()
}

fn duplicate_while_buffered_rereports() -> Fired {
    let mut h = H::new();
    h.online();
    h.buffered("c1", "s1");
    for _ in 0..2 {
        let o = h.cmd("c1", "s1");
        assert_eq!(fired(&o), vec![T::T23.id()]);
        assert!(
            persists(&o).is_empty(),
            "a duplicate is never persisted twice"
        );
        ack_is(
            &acks(&o)[0],
            "c1",
            AckStage::AgentBuffered,
            AckResult::Ok,
            None,
        );
        assert!(pipe_commands(&o).is_empty(), "pipe pending: no extra write");
    }
    h.done()
}

fn duplicate_unparks() -> Fired {
    let mut h = H::new();
    h.online();
    h.pipe("s1");
    h.buffered("c1", "s1");
    // Unanswered writes (ack timeouts) until the pipe budget is spent.
    for _ in 0..100 {
        if h.phase("c1") == Some(EntryPhase::Parked) {
            break;
        }
        h.next_deadline();
    }
    assert_eq!(h.phase("c1"), Some(EntryPhase::Parked));
    let o = h.cmd("c1", "s1");
    assert_eq!(fired(&o), vec![T::T24.id(), T::T28.id()]);
    ack_is(
        &acks(&o)[0],
        "c1",
        AckStage::AgentBuffered,
        AckResult::Ok,
        None,
    );
    assert_eq!(pipe_commands(&o), vec![(acc("s1"), cid("c1"))]);
    assert_eq!(h.m.entry_attempts(&cid("c1")), Some(1), "fresh budget");
    assert!(persists(&o).is_empty());
    h.done()
}

fn duplicate_delivered_rewrites_pipe() -> Fired {
    let mut h = H::new();
    h.online();
    h.pipe("s1");
    h.delivered("c1", "s1");
    let before = h.m.poll_timeout();
    let o = h.cmd("c1", "s1");
    assert_eq!(fired(&o), vec![T::T25.id()]);
    ack_is(
        &acks(&o)[0],
        "c1",
        AckStage::PipeDelivered,
        AckResult::Ok,
        None,
    );
    assert_eq!(pipe_commands(&o), vec![(acc("s1"), cid("c1"))]);
    assert!(persists(&o).is_empty());
    assert_eq!(h.m.poll_timeout(), before, "no ack timer for a re-delivery");
    // Completed too: the slave dedupes and re-sends its cached result, which is forwarded.
    let o = h.exec("s1", "c1", "s1");
    h.ok_all(&o);
    assert_eq!(h.phase("c1"), Some(EntryPhase::Completed));
    let o = h.cmd("c1", "s1");
    assert_eq!(fired(&o), vec![T::T25.id()]);
    assert_eq!(pipe_commands(&o).len(), 1);
    let o = h.exec("s1", "c1", "s1");
    assert_eq!(fired(&o), vec![T::T39.id()]);
    assert_eq!(results_sent(&o), vec![cid("c1")]);
    // Pipe closed: the stage is re-reported, nothing is written.
    h.close("s1");
    let o = h.cmd("c1", "s1");
    assert!(pipe_commands(&o).is_empty());
    assert_eq!(acks(&o).len(), 1);
    h.done()
}

fn duplicate_rejected_rereports_failure() -> Fired {
    let mut h = H::new();
    h.online();
    h.pipe("s1");
    h.buffered("c1", "s1");
    let o = h.pipe_ack("s1", "c1", PipeStatus::Failed);
    h.ok_all(&o);
    let o = h.cmd("c1", "s1");
    assert_eq!(fired(&o), vec![T::T26.id()]);
    ack_is(
        &acks(&o)[0],
        "c1",
        AckStage::PipeDelivered,
        AckResult::Failed,
        Some(ErrorCode::EaRejected),
    );
    assert!(persists(&o).is_empty() && pipe_commands(&o).is_empty());
    h.done()
}

// ----- scenarios: pipe -----------------------------------------------------------------------

fn pipe_connect_writes_buffered_in_order() -> Fired {
    let mut h = H::new();
    h.online();
    h.buffered("c1", "s1");
    h.buffered("c2", "s2");
    h.buffered("c3", "s1");
    for id in ["c1", "c2", "c3"] {
        assert_eq!(h.phase(id), Some(EntryPhase::WaitingPipe));
    }
    let o = h.pipe("s1");
    assert_eq!(
        fired(&o),
        vec![T::T27.id(), T::T28.id(), T::T28.id()],
        "handshake, then each buffered entry of this slave"
    );
    let msgs = ea_msgs(&o);
    assert_eq!(
        msgs[0],
        (
            acc("s1"),
            AgentToEa::Handshake {
                account: acc("s1"),
                protocol_version: PROTOCOL_VERSION
            }
        ),
        "handshake first"
    );
    assert_eq!(
        pipe_commands(&o),
        vec![(acc("s1"), cid("c1")), (acc("s1"), cid("c3"))],
        "ledger order; s2's entry untouched"
    );
    assert_eq!(h.phase("c2"), Some(EntryPhase::WaitingPipe));
    // A master pipe gets the handshake and the core's config.
    let o = h.pipe("m1");
    assert_eq!(
        ea_msgs(&o).into_iter().map(|(_, m)| m).collect::<Vec<_>>(),
        vec![
            AgentToEa::Handshake {
                account: acc("m1"),
                protocol_version: PROTOCOL_VERSION
            },
            AgentToEa::DeliveryConfig(core_cfg()),
        ]
    );
    // Before the core ever spoke, a master gets no local defaults.
    let mut h2 = H::new();
    let o = h2.pipe("m1");
    assert_eq!(ea_msgs(&o).len(), 1);
    h.done()
}

fn pipe_close_stops_timers_without_consuming() -> Fired {
    let mut h = H::new();
    h.online();
    h.pipe("s1");
    h.buffered("c1", "s1");
    h.buffered("c2", "s1");
    h.pipe_ack("s1", "c2", PipeStatus::Retry);
    assert_eq!(h.phase("c2"), Some(EntryPhase::Backoff));
    let retries = h.m.metrics().pipe_retry_total;
    let o = h.close("s1");
    assert_eq!(fired(&o), vec![T::T29.id()]);
    assert_eq!(h.phase("c1"), Some(EntryPhase::WaitingPipe));
    assert_eq!(h.phase("c2"), Some(EntryPhase::WaitingPipe));
    assert_eq!(
        h.m.metrics().pipe_retry_total,
        retries,
        "a close is not a failed attempt"
    );
    assert_eq!(
        h.m.poll_timeout(),
        Some(Instant::from_millis(5_000)),
        "only the heartbeat is left"
    );
    assert!(
        h.close("s1").is_empty(),
        "closing a closed pipe changes nothing"
    );
    let o = h.pipe("s1");
    assert_eq!(pipe_commands(&o).len(), 2);
    assert_eq!(
        h.m.entry_attempts(&cid("c2")),
        Some(1),
        "budget reset on reconnect"
    );
    h.done()
}

fn pipe_unknown_account() -> Fired {
    let mut h = H::new();
    let o = h.pipe("zz");
    assert_eq!(fired(&o), vec![T::T30.id()]);
    assert!(ea_msgs(&o).is_empty());
    assert_eq!(h.m.metrics().unknown_pipes, 1);
    h.done()
}

fn pipe_ok_delivers_after_durable() -> Fired {
    let mut h = H::new();
    h.online();
    h.pipe("s1");
    h.buffered("c1", "s1");
    h.at(40);
    let o = h.pipe_ack("s1", "c1", PipeStatus::Ok);
    assert_eq!(fired(&o), vec![T::T31.id()]);
    assert!(
        acks(&o).is_empty(),
        "PIPE_DELIVERED waits for the Delivered write"
    );
    let p = persists(&o);
    assert_eq!(p[0].1.state, LedgerState::Delivered);
    assert_eq!(h.phase("c1"), Some(EntryPhase::Confirming));
    assert_eq!(h.m.metrics().pipe_delivery_latency_last_ms, 40);
    assert_eq!(h.m.metrics().pipe_delivery_latency_count, 1);
    let o = h.ledger(p[0].0, LedgerResult::Ok);
    assert_eq!(fired(&o), vec![T::T32.id()]);
    ack_is(
        &acks(&o)[0],
        "c1",
        AckStage::PipeDelivered,
        AckResult::Ok,
        None,
    );
    assert_eq!(h.phase("c1"), Some(EntryPhase::Delivered));
    // A late OK while backing off is accepted: the EA has it.
    h.buffered("c2", "s1");
    h.pipe_ack("s1", "c2", PipeStatus::Retry);
    let o = h.pipe_ack("s1", "c2", PipeStatus::Ok);
    assert_eq!(fired(&o), vec![T::T31.id()]);
    assert_eq!(
        h.m.metrics().pipe_delivery_latency_count,
        1,
        "only a write answered OK in time is a latency sample"
    );
    // A failed Delivered write is retried; the stage waits for it.
    let o = h.ledger(persists(&o)[0].0, LedgerResult::Failed { retryable: false });
    assert_eq!(fired(&o), vec![T::T19.id()]);
    assert!(acks(&o).is_empty());
    let o = h.next_deadline();
    let o = h.ok_all(&o);
    ack_is(
        &acks(&o)[0],
        "c2",
        AckStage::PipeDelivered,
        AckResult::Ok,
        None,
    );
    h.done()
}

fn pipe_retries_with_backoff() -> Fired {
    let mut h = H::new();
    h.online();
    h.pipe("s1");
    h.buffered("c1", "s1");
    h.at(20);
    h.m.handle_pipe_write_failed(h.now, acc("s1"), cid("c1"));
    let o = h.drain();
    assert_eq!(fired(&o), vec![T::T33.id()]);
    assert!(acks(&o).is_empty());
    assert_eq!(h.phase("c1"), Some(EntryPhase::Backoff));
    assert_eq!(
        h.m.poll_timeout(),
        Some(Instant::from_millis(20) + backoff(100, 1))
    );
    let o = h.next_deadline();
    assert_eq!(fired(&o), vec![T::T28.id()]);
    assert_eq!(pipe_commands(&o), vec![(acc("s1"), cid("c1"))]);
    assert_eq!(h.m.entry_attempts(&cid("c1")), Some(2));
    // Ack timeout: second failure, backoff doubles.
    let written = h.now;
    let o = h.next_deadline();
    assert_eq!(h.now, Instant::from_millis(written.as_millis() + 1_000));
    assert_eq!(fired(&o), vec![T::T33.id()]);
    assert_eq!(h.m.poll_timeout(), Some(h.now + backoff(100, 2)));
    assert_eq!(h.m.metrics().pipe_retry_total, 2);
    h.next_deadline();
    // Write failure of the awaited write is a failed attempt too.
    h.m.handle_pipe_write_failed(h.now, acc("s1"), cid("c1"));
    let o = h.drain();
    assert_eq!(
        fired(&o),
        vec![T::T34.id()],
        "third attempt of max_retries=3"
    );
    h.done()
}

fn pipe_retries_stop_at_max_retries() -> Fired {
    let mut h = H::new();
    h.online();
    h.pipe("s1");
    h.buffered("c1", "s1");
    let mut writes = 1;
    let mut last = Vec::new();
    for _ in 0..100 {
        if h.phase("c1") == Some(EntryPhase::Parked) {
            break;
        }
        last = h.next_deadline();
        writes += pipe_commands(&last).len();
        assert!(writes <= 3, "never more than max_retries writes");
    }
    assert_eq!(writes, 3);
    assert_eq!(fired(&last), vec![T::T34.id()]);
    ack_is(
        &acks(&last)[0],
        "c1",
        AckStage::PipeDelivered,
        AckResult::Failed,
        Some(ErrorCode::PipeUnavailable),
    );
    assert_eq!(h.m.metrics().pipe_unavailable_total, 1);
    assert_eq!(h.m.metrics().pipe_retry_total, 3);
    // Parked: no timer of its own (only the heartbeat is left); it stays in the ledger.
    h.disconnect();
    assert_eq!(h.m.poll_timeout(), None);
    assert_eq!(h.phase("c1"), Some(EntryPhase::Parked));
    assert_eq!(h.m.ledger_len(), 1);
    // Reconnect resets the budget.
    h.at(1_000_000);
    h.close("s1");
    let o = h.pipe("s1");
    assert_eq!(pipe_commands(&o), vec![(acc("s1"), cid("c1"))]);
    assert_eq!(h.m.entry_attempts(&cid("c1")), Some(1));
    h.done()
}

fn pipe_failed_is_rejected_after_durable() -> Fired {
    let mut h = H::new();
    h.online();
    h.pipe("s1");
    h.buffered("c1", "s1");
    let o = h.ea(
        "s1",
        EaToAgent::PipeAck(PipeDeliveryAck {
            command_id: cid("c1"),
            status: PipeStatus::Failed,
            reason: Some(ErrorCode::SymbolNotMapped),
        }),
    );
    assert_eq!(fired(&o), vec![T::T35.id()]);
    assert!(acks(&o).is_empty());
    let p = persists(&o);
    assert_eq!(
        p[0].1.state,
        LedgerState::Rejected {
            reason: ErrorCode::SymbolNotMapped
        }
    );
    assert_eq!(
        h.m.poll_timeout(),
        Some(Instant::from_millis(5_000)),
        "ack timer stopped"
    );
    let o = h.ledger(p[0].0, LedgerResult::Ok);
    assert_eq!(fired(&o), vec![T::T36.id()]);
    ack_is(
        &acks(&o)[0],
        "c1",
        AckStage::PipeDelivered,
        AckResult::Failed,
        Some(ErrorCode::SymbolNotMapped),
    );
    assert_eq!(h.phase("c1"), Some(EntryPhase::Rejected));
    assert_eq!(h.m.active_len(), 0);
    assert_eq!(h.m.metrics().ea_rejected_total, 1);
    h.done()
}

fn pipe_stale_events_change_nothing() -> Fired {
    let mut h = H::new();
    h.online();
    h.pipe("s1");
    h.pipe("s2");
    h.buffered("c1", "s1");
    let deadline = h.m.poll_timeout();
    for o in [
        h.pipe_ack("s1", "nope", PipeStatus::Ok),
        h.pipe_ack("s2", "c1", PipeStatus::Ok),
    ] {
        assert_eq!(fired(&o), vec![T::T37.id()]);
        assert_eq!(o.len(), 1);
    }
    assert_eq!(h.phase("c1"), Some(EntryPhase::AwaitingAck));
    h.pipe_ack("s1", "c1", PipeStatus::Retry);
    let o = h.pipe_ack("s1", "c1", PipeStatus::Retry);
    assert_eq!(
        fired(&o),
        vec![T::T37.id()],
        "RETRY while backing off is stale"
    );
    // The first RETRY gave its attempt back (T49); the stale one changed nothing.
    assert_eq!(h.m.entry_attempts(&cid("c1")), Some(0));
    h.m.handle_pipe_write_failed(h.now, acc("s1"), cid("c1"));
    assert_eq!(fired(&h.drain()), vec![T::T37.id()]);
    h.pipe_ack("s1", "c1", PipeStatus::Ok);
    let o = h.pipe_ack("s1", "c1", PipeStatus::Failed);
    assert_eq!(fired(&o), vec![T::T37.id()], "an OK is not undone");
    assert_ne!(h.m.poll_timeout(), deadline);
    assert_eq!(h.m.metrics().stale_pipe_events, 5);
    h.done()
}

// ----- scenarios: results --------------------------------------------------------------------

fn results_forwarded_and_completed() -> Fired {
    let mut h = H::new();
    h.online();
    h.pipe("s1");
    h.delivered("c1", "s1");
    let o = h.exec("s1", "c1", "s1");
    assert_eq!(fired(&o), vec![T::T38.id()]);
    assert_eq!(results_sent(&o), vec![cid("c1")]);
    let p = persists(&o);
    assert_eq!(p[0].1.state, LedgerState::Completed);
    assert_eq!(h.phase("c1"), Some(EntryPhase::Completing));
    let o = h.ledger(p[0].0, LedgerResult::Ok);
    assert_eq!(fired(&o), vec![T::T41.id()]);
    assert_eq!(h.phase("c1"), Some(EntryPhase::Completed));
    // A result while awaiting the pipe ack: implies delivery, timer stopped.
    h.buffered("c2", "s1");
    let o = h.exec("s1", "c2", "s1");
    assert_eq!(fired(&o), vec![T::T38.id()]);
    assert_eq!(
        h.m.poll_timeout(),
        Some(Instant::from_millis(5_000)),
        "heartbeat only"
    );
    // A result while the Delivered write is in flight waits for it, then writes Completed.
    h.buffered("c3", "s1");
    let o = h.pipe_ack("s1", "c3", PipeStatus::Ok);
    let delivered_op = persists(&o)[0].0;
    let o = h.exec("s1", "c3", "s1");
    assert!(persists(&o).is_empty(), "one write in flight per entry");
    let o = h.ledger(delivered_op, LedgerResult::Ok);
    assert_eq!(fired(&o), vec![T::T21.id()]);
    assert_eq!(persists(&o)[0].1.state, LedgerState::Completed);
    h.done()
}

fn results_held_while_offline() -> Fired {
    let mut h = H::new();
    h.online();
    h.pipe("s1");
    h.delivered("c1", "s1");
    h.disconnect();
    let o = h.exec("s1", "c1", "s1");
    assert_eq!(fired(&o), vec![T::T38.id()]);
    assert!(core_msgs(&o).is_empty());
    h.ok_all(&o);
    assert_eq!(
        h.phase("c1"),
        Some(EntryPhase::Completing),
        "not Completed until the result went out"
    );
    // A re-sent result of an unknown command waits in the outbox.
    let o = h.exec("s1", "c-old", "s1");
    assert_eq!(fired(&o), vec![T::T39.id()]);
    let o = h.online();
    assert_eq!(results_sent(&o), vec![cid("c1"), cid("c-old")]);
    assert!(fired(&o).contains(&T::T41.id()));
    assert_eq!(h.phase("c1"), Some(EntryPhase::Completed));
    h.done()
}

fn results_from_wrong_account_dropped() -> Fired {
    let mut h = H::new();
    h.online();
    h.pipe("s1");
    h.buffered("c1", "s1");
    for (pipe, slave) in [("s2", "s1"), ("m1", "m1"), ("s2", "s2")] {
        let o = h.exec(pipe, "c1", slave);
        assert_eq!(fired(&o), vec![T::T40.id()]);
        assert!(core_msgs(&o).is_empty());
    }
    assert_eq!(h.phase("c1"), Some(EntryPhase::AwaitingAck));
    assert_eq!(h.m.metrics().results_protocol_violations, 3);
    h.done()
}

fn retention_cap_deletes_oldest() -> Fired {
    let mut h = H::with(AgentLimits {
        max_completed_retained: 1,
        ..AgentLimits::default()
    });
    h.online();
    h.pipe("s1");
    h.delivered("c1", "s1");
    let o = h.exec("s1", "c1", "s1");
    let o = h.ok_all(&o);
    assert!(deletes(&o).is_empty());
    h.delivered("c2", "s1");
    let o = h.exec("s1", "c2", "s1");
    let o = h.ok_all(&o);
    assert_eq!(fired(&o), vec![T::T41.id(), T::T42.id()]);
    assert_eq!(deletes(&o), vec![cid("c1")]);
    assert_eq!(h.m.ledger_len(), 1);
    assert_eq!(h.phase("c1"), None);
    h.done()
}

fn recover_rebuilds_and_rewrites_buffered() -> Fired {
    let ledger = vec![
        record(7, "c7", "s1", LedgerState::Buffered),
        record(3, "c3", "s1", LedgerState::Buffered),
        record(5, "c5", "s1", LedgerState::Delivered),
        // Listed newest first: retention must follow seq, not the store's iteration order.
        record(2, "c2", "s1", LedgerState::Completed),
        record(1, "c1", "s1", LedgerState::Completed),
        record(4, "c4", "s2", LedgerState::Buffered),
    ];
    let (mut h, o) = H::recovered(
        AgentLimits {
            max_completed_retained: 1,
            ..AgentLimits::default()
        },
        ledger,
    );
    assert_eq!(fired(&o).iter().filter(|id| **id == T::T43.id()).count(), 6);
    assert_eq!(deletes(&o), vec![cid("c1")], "cap enforced at recovery");
    assert!(core_msgs(&o).is_empty() && persists(&o).is_empty());
    assert_eq!(h.m.ledger_len(), 5);
    assert_eq!(
        h.m.poll_timeout(),
        None,
        "nothing in flight after a restart"
    );
    assert_eq!(h.phase("c3"), Some(EntryPhase::WaitingPipe));
    assert_eq!(h.phase("c5"), Some(EntryPhase::Delivered));
    assert_eq!(h.phase("c2"), Some(EntryPhase::Completed));
    let o = h.pipe("s1");
    assert_eq!(
        pipe_commands(&o),
        vec![(acc("s1"), cid("c3")), (acc("s1"), cid("c7"))],
        "buffered entries re-written in ledger (seq) order"
    );
    // Duplicates after recovery are answered from the ledger, never persisted again.
    h.online();
    let o = h.cmd("c5", "s1");
    ack_is(
        &acks(&o)[0],
        "c5",
        AckStage::PipeDelivered,
        AckResult::Ok,
        None,
    );
    assert!(persists(&o).is_empty());
    let o = h.cmd("c2", "s1");
    assert!(persists(&o).is_empty());
    // New commands continue the sequence after the recovered ones.
    let o = h.cmd("c9", "s1");
    assert_eq!(persists(&o)[0].1.seq, 8);
    h.done()
}

fn outbox_evicts_oldest_unknown_result() -> Fired {
    let mut h = H::with(AgentLimits {
        max_result_outbox: 1,
        ..AgentLimits::default()
    });
    let o1 = h.exec("s1", "x1", "s1");
    assert_eq!(fired(&o1), vec![T::T39.id()]);
    let o = h.exec("s1", "x2", "s1");
    assert_eq!(fired(&o), vec![T::T39.id(), T::T44.id()]);
    assert_eq!(h.m.metrics().results_evicted, 1);
    let o = h.online();
    assert_eq!(results_sent(&o), vec![cid("x2")]);
    h.done()
}

fn hello_is_retried_until_answered() -> Fired {
    let mut h = H::new();
    let o = h.connect();
    let first = core_msgs(&o);
    assert!(matches!(first[..], [AgentToCore::Hello(_)]), "{first:?}");
    // The hello timer runs on the heartbeat period of the config in force (the local one).
    assert_eq!(h.m.poll_timeout(), Some(Instant::from_millis(1_000)));
    h.at(999);
    assert!(h.timeout().is_empty(), "nothing before the deadline");
    // No CoreHello (lost): exactly one identical hello at the deadline, and the timer re-armed.
    h.at(1_000);
    let o = h.timeout();
    assert_eq!(fired(&o), vec![T::T45.id()]);
    assert_eq!(core_msgs(&o), first, "the same hello again, once");
    assert!(ea_msgs(&o).is_empty() && persists(&o).is_empty());
    assert_eq!(h.m.link_state(), LinkState::Connecting);
    assert_eq!(h.m.poll_timeout(), Some(Instant::from_millis(2_000)));
    // A late wake-up sends one hello, not a burst, and re-arms a full period after the wake.
    h.at(2_500);
    let o = h.timeout();
    assert_eq!(fired(&o), vec![T::T45.id()]);
    assert_eq!(core_msgs(&o), first);
    assert_eq!(h.m.poll_timeout(), Some(Instant::from_millis(3_500)));
    // Accepted: the timer becomes the heartbeat (core config, 5 s); no hello from now on.
    h.at(2_600);
    let o = h.core(hello(true));
    assert_eq!(h.m.link_state(), LinkState::Online);
    assert!(!core_msgs(&o)
        .iter()
        .any(|m| matches!(m, AgentToCore::Hello(_))));
    assert_eq!(h.m.poll_timeout(), Some(Instant::from_millis(7_600)));
    for _ in 0..3 {
        let o = h.next_deadline();
        assert_eq!(fired(&o), vec![T::T05.id()]);
        assert_eq!(core_msgs(&o), vec![AgentToCore::Heartbeat]);
    }
    // Refused: T45 is for Connecting only; the leftover timer sends nothing.
    let o = h.connect();
    assert_eq!(core_msgs(&o), first);
    h.core(hello(false));
    assert_eq!(h.m.link_state(), LinkState::Refused);
    h.now = h.now + Duration::from_millis(60_000);
    let o = h.timeout();
    assert!(o.is_empty(), "sent while Refused: {o:#?}");
    assert_eq!(
        h.m.poll_timeout(),
        None,
        "a refused agent does not knock again on its own"
    );
    // Offline: the hello timer dies with the stream.
    h.connect();
    assert!(h.m.poll_timeout().is_some());
    h.disconnect();
    assert_eq!(h.m.poll_timeout(), None);
    h.done()
}

fn cancel_is_forwarded_to_an_open_slave_pipe() -> Fired {
    let mut h = H::new();
    h.online();
    h.pipe("s1");
    h.pipe("s2");
    h.pipe("m1");
    h.delivered("c1", "s1");
    let ledger_len = h.m.ledger_len();
    let deadline = h.m.poll_timeout();
    let metrics = h.m.metrics().clone();
    // A cancel for a command the ledger holds: written, unchanged, to its slave's pipe only.
    let c = Command {
        body: CommandBody::Execute {
            terms: Default::default(),
            catch_up: false,
            symbol: Symbol::new("EURUSD"),
            side: Side::Sell,
            volume: 0.5,
            price: 1.2,
            stop_loss: 1.3,
            take_profit: 1.1,
        },
        ..command("c1", "s1")
    };
    let o = h.core(CoreToAgent::Cancel(c.clone()));
    assert_eq!(fired(&o), vec![T::T46.id()]);
    assert!(matches!(&o[0], AgentOutput::Fired(f) if f.subject == Subject::Command(cid("c1"))));
    assert_eq!(
        o[1..],
        [AgentOutput::ToEa {
            account: acc("s1"),
            msg: AgentToEa::Cancel(c),
        }],
        "only the cancel: nothing persisted, nothing to the core"
    );
    assert_eq!(
        h.phase("c1"),
        Some(EntryPhase::Delivered),
        "the ledger is untouched"
    );
    assert_eq!(h.m.ledger_len(), ledger_len);
    assert_eq!(h.m.outstanding_ledger_ops(), 0);
    assert_eq!(h.m.poll_timeout(), deadline);
    assert_eq!(h.m.metrics(), &metrics);
    // A cancel for a command the ledger does not hold still reaches the slave (it alone knows).
    let c2 = command("c2", "s2");
    let o = h.core(CoreToAgent::Cancel(c2.clone()));
    assert_eq!(fired(&o), vec![T::T46.id()]);
    assert_eq!(ea_msgs(&o), vec![(acc("s2"), AgentToEa::Cancel(c2))]);
    assert!(persists(&o).is_empty() && core_msgs(&o).is_empty());
    assert_eq!(h.phase("c2"), None);
    assert_eq!(h.m.metrics(), &metrics);
    h.done()
}

fn cancel_without_a_pipe_is_dropped_and_counted() -> Fired {
    let mut h = H::new();
    h.online();
    h.pipe("m1");
    h.pipe("s2");
    h.close("s2");
    // c1 is buffered for s1, whose pipe has never been open.
    h.buffered("c1", "s1");
    assert_eq!(h.phase("c1"), Some(EntryPhase::WaitingPipe));
    let deadline = h.m.poll_timeout();
    let metrics = h.m.metrics().clone();
    let cases = [
        command("c1", "s1"), // served slave, pipe never opened
        command("c2", "s2"), // served slave, pipe closed again
        command("c3", "m1"), // pipe open, but a master account
        command("c4", "zz"), // not served here
    ];
    for (n, c) in cases.into_iter().enumerate() {
        let o = h.core(CoreToAgent::Cancel(c.clone()));
        assert_eq!(o.len(), 1, "nothing but the Fired: {o:#?}");
        assert!(matches!(&o[0], AgentOutput::Fired(f)
            if f.id() == T::T47.id() && f.subject == Subject::Command(c.command_id.clone())));
        assert_eq!(h.m.metrics().cancels_dropped, n as u64 + 1);
    }
    assert_eq!(
        h.m.metrics(),
        &AgentMetrics {
            cancels_dropped: 4,
            ..metrics
        },
        "only cancels_dropped moved"
    );
    assert_eq!(h.phase("c1"), Some(EntryPhase::WaitingPipe));
    assert_eq!(h.m.poll_timeout(), deadline);
    // Once s1's pipe is open a cancel gets through (T46) and the counter stays.
    h.pipe("s1");
    let o = h.core(CoreToAgent::Cancel(command("c1", "s1")));
    assert_eq!(fired(&o), vec![T::T46.id()]);
    assert_eq!(h.m.metrics().cancels_dropped, 4);
    h.done()
}

/// The pipe's send window: a slow EA sees at most `max_pipe_inflight` unanswered commands, the
/// rest wait without an ack timer (so its slowness never turns into re-writes), and each answer
/// lets the next waiting command go, in ledger order.
fn pipe_window_bounds_unanswered_writes() -> Fired {
    let mut h = H::with(AgentLimits {
        max_pipe_inflight: 2,
        ..AgentLimits::default()
    });
    h.online();
    h.pipe("s1");
    let mut written = Vec::new();
    let mut queued = 0;
    for id in ["c1", "c2", "c3", "c4", "c5"] {
        let o = h.buffered(id, "s1");
        written.extend(pipe_commands(&o));
        queued += fired(&o).iter().filter(|t| **t == T::T48.id()).count();
    }
    assert_eq!(
        written,
        vec![(acc("s1"), cid("c1")), (acc("s1"), cid("c2"))]
    );
    assert_eq!(queued, 3, "c3..c5 wait for the window");
    assert_eq!(
        h.m.pipe_queued_len(),
        3,
        "what echo_agent_pipe_queued reports"
    );
    assert_eq!(h.phase("c3"), Some(EntryPhase::WaitingPipe));
    // Another slave's pipe has its own window.
    h.pipe("s2");
    let o = h.buffered("d1", "s2");
    assert_eq!(pipe_commands(&o), vec![(acc("s2"), cid("d1"))]);
    // Only the two written commands have ack timers: a long wait re-writes those two only.
    h.at(1_000);
    let o = h.timeout();
    assert!(
        pipe_commands(&o).is_empty(),
        "a timed-out write backs off and keeps its place; nothing waiting is written"
    );
    assert_eq!(h.phase("c1"), Some(EntryPhase::Backoff));
    assert_eq!(
        h.m.entry_attempts(&cid("c3")),
        Some(0),
        "no attempt spent waiting"
    );
    // An OK frees a place: the next waiting command (ledger order) is written at once.
    let o = h.pipe_ack("s1", "c2", PipeStatus::Ok);
    assert_eq!(pipe_commands(&o), vec![(acc("s1"), cid("c3"))]);
    // So does a result (the EA may answer with its execution first).
    let o = h.exec("s1", "c3", "s1");
    assert_eq!(pipe_commands(&o), vec![(acc("s1"), cid("c4"))]);
    // A retried write keeps its place: no second place is taken for it.
    let o = h.next_deadline();
    let s1: Vec<_> = pipe_commands(&o)
        .into_iter()
        .filter(|(a, _)| *a == acc("s1"))
        .collect();
    assert_eq!(s1, vec![(acc("s1"), cid("c1"))]);
    assert_eq!(h.phase("c5"), Some(EntryPhase::WaitingPipe));
    // A closed pipe drops the window; on reopen the undelivered are re-written in ledger order,
    // as far as the window goes.
    h.close("s1");
    let o = h.pipe("s1");
    assert_eq!(
        pipe_commands(&o),
        vec![(acc("s1"), cid("c1")), (acc("s1"), cid("c4"))]
    );
    assert_eq!(h.phase("c5"), Some(EntryPhase::WaitingPipe));
    let o = h.pipe_ack("s1", "c1", PipeStatus::Ok);
    assert_eq!(pipe_commands(&o), vec![(acc("s1"), cid("c5"))]);
    h.done()
}

// ----- one test per transition, and the coverage test ----------------------------------------

macro_rules! per_transition {
    ($($test:ident: $t:ident => $scenario:ident;)+) => {
        mod each_transition {
            use super::*;
            $(
                #[test]
                fn $test() {
                    let fired = $scenario();
                    assert!(
                        fired.contains(T::$t.id()),
                        "{} did not fire in {}",
                        T::$t.id(),
                        stringify!($scenario)
                    );
                }
            )+
        }
        const SCENARIOS: &[(&str, fn() -> Fired)] = &[$((stringify!($scenario), $scenario)),+];
    };
}

per_transition! {
    t01_core_connected: T01 => link_connect_sends_hello;
    t02_hello_accepted: T02 => link_online_rereports_ledger;
    t03_hello_refused: T03 => link_refused;
    t04_core_disconnected: T04 => link_disconnect_answers_pending_intents;
    t05_heartbeat_timer: T05 => link_heartbeat;
    t06_config_changed: T06 => config_heartbeat_pushes_to_masters;
    t07_config_out_of_range: T07 => config_out_of_range_is_refused;
    t08_intent_forwarded: T08 => intents_forwarded_and_acked;
    t09_intent_link_down: T09 => intents_refused_when_not_online;
    t10_intent_table_full: T10 => intents_table_full_is_backpressure;
    t11_intent_wrong_account: T11 => intents_from_wrong_account;
    t12_intent_ack_routed: T12 => intents_forwarded_and_acked;
    t13_intent_ack_unroutable: T13 => intents_forwarded_and_acked;
    t14_route_expired: T14 => intents_stale_route_expires;
    t15_command_persisting: T15 => commands_buffered_only_after_durable;
    t16_command_unknown_account: T16 => commands_for_unknown_accounts;
    t17_command_ledger_full: T17 => commands_ledger_full;
    t18_buffered_durable: T18 => commands_buffered_only_after_durable;
    t19_write_failed_retry: T19 => ledger_write_retried_with_backoff;
    t20_first_write_abandoned: T20 => ledger_gives_up_on_first_write;
    t21_write_reissued: T21 => ledger_write_retried_with_backoff;
    t22_dup_persisting: T22 => duplicate_while_persisting_is_not_persisted_again;
    t23_dup_buffered: T23 => duplicate_while_buffered_rereports;
    t24_dup_parked: T24 => duplicate_unparks;
    t25_dup_delivered: T25 => duplicate_delivered_rewrites_pipe;
    t26_dup_rejected: T26 => duplicate_rejected_rereports_failure;
    t27_pipe_connected: T27 => pipe_connect_writes_buffered_in_order;
    t28_pipe_write: T28 => pipe_retries_with_backoff;
    t29_pipe_closed: T29 => pipe_close_stops_timers_without_consuming;
    t30_pipe_unknown: T30 => pipe_unknown_account;
    t31_pipe_ack_ok: T31 => pipe_ok_delivers_after_durable;
    t32_delivered_durable: T32 => pipe_ok_delivers_after_durable;
    t33_pipe_retry: T33 => pipe_retries_with_backoff;
    t34_pipe_unavailable: T34 => pipe_retries_stop_at_max_retries;
    t35_pipe_ack_failed: T35 => pipe_failed_is_rejected_after_durable;
    t36_rejected_durable: T36 => pipe_failed_is_rejected_after_durable;
    t37_stale_pipe_event: T37 => pipe_stale_events_change_nothing;
    t38_result_first: T38 => results_forwarded_and_completed;
    t39_result_resent: T39 => results_held_while_offline;
    t40_result_wrong_account: T40 => results_from_wrong_account_dropped;
    t41_completed: T41 => results_forwarded_and_completed;
    t42_retention_evicts: T42 => retention_cap_deletes_oldest;
    t43_recovered: T43 => recover_rebuilds_and_rewrites_buffered;
    t44_outbox_evicts: T44 => outbox_evicts_oldest_unknown_result;
    t45_hello_retried: T45 => hello_is_retried_until_answered;
    t46_cancel_forwarded: T46 => cancel_is_forwarded_to_an_open_slave_pipe;
    t47_cancel_dropped: T47 => cancel_without_a_pipe_is_dropped_and_counted;
    t48_pipe_window_full: T48 => pipe_window_bounds_unanswered_writes;
    t49_ea_busy: T49 => ea_retry_is_backpressure_not_a_failure;
}

#[test]
fn every_agent_transition_is_exercised() {
    let mut seen = BTreeSet::new();
    for (_, scenario) in SCENARIOS {
        seen.extend(scenario());
    }
    let all: BTreeSet<&str> = T::TABLE.iter().map(|t| t.id).collect();
    let missing: Vec<_> = all.difference(&seen).collect();
    assert!(missing.is_empty(), "never fired: {missing:?}");
    let unknown: Vec<_> = seen.difference(&all).collect();
    assert!(
        unknown.is_empty(),
        "fired but not in the table: {unknown:?}"
    );
}

#[test]
fn spec_table_is_complete_and_ordered() {
    assert_eq!(SPEC.name, "agent.delivery");
    assert_eq!(SPEC.transitions.len(), T::ALL.len());
    for (i, t) in SPEC.transitions.iter().enumerate() {
        assert_eq!(t.id, format!("agent.delivery.T{:02}", i + 1));
        assert!(!t.from.is_empty() && !t.input.is_empty() && !t.to.is_empty());
        assert!(!t.outputs.is_empty());
    }
    assert!(!SPEC.states.is_empty() && !SPEC.invariants.is_empty());
}

/// Every Fired precedes the outputs of the same step it causes: a step's first output is a
/// Fired whenever the step emits anything.
#[test]
fn fired_precedes_outputs() {
    let mut h = H::new();
    let steps: Vec<Outs> = vec![
        h.online(),
        h.pipe("s1"),
        h.pipe("m1"),
        h.cmd("c1", "s1"),
        h.cmd("c9", "zz"),
    ];
    for o in steps {
        if let Some(first) = o.first() {
            assert!(matches!(first, AgentOutput::Fired(_)), "{o:#?}");
        }
    }
}

// ----- proptest ------------------------------------------------------------------------------

mod props {
    use super::*;
    use proptest::prelude::*;

    const IDS: [&str; 5] = ["c0", "c1", "c2", "c3", "c4"];
    const SLAVES: [&str; 3] = ["s1", "s2", "zz"];
    /// Accounts a cancel may name: the slaves above and a master (never a cancel target here).
    const CANCEL_TO: [&str; 4] = ["s1", "s2", "zz", "m1"];

    #[derive(Clone, Debug)]
    enum Step {
        CoreUp,
        /// Connect and be accepted in one step, so random runs spend time Online.
        Online,
        Hello(bool),
        CoreDown,
        Heartbeat(u32),
        Cmd(usize, usize),
        LedgerOk(usize),
        LedgerFail(usize, bool),
        PipeUp(usize),
        PipeDown(usize),
        WriteFailed(usize, usize),
        Ack(usize, usize, u8),
        Exec(usize, usize),
        Intent(usize),
        IntentAck(usize),
        Cancel(usize, usize),
        Advance(u64),
        Timeout,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            1 => Just(Step::CoreUp),
            2 => Just(Step::Online),
            1 => any::<bool>().prop_map(Step::Hello),
            1 => Just(Step::CoreDown),
            1 => (1u32..6).prop_map(Step::Heartbeat),
            5 => (0..IDS.len(), 0..SLAVES.len()).prop_map(|(i, s)| Step::Cmd(i, s)),
            5 => (0usize..8).prop_map(Step::LedgerOk),
            2 => (0usize..8, any::<bool>()).prop_map(|(i, r)| Step::LedgerFail(i, r)),
            2 => (0..SLAVES.len()).prop_map(Step::PipeUp),
            1 => (0..SLAVES.len()).prop_map(Step::PipeDown),
            1 => (0..IDS.len(), 0..SLAVES.len()).prop_map(|(i, s)| Step::WriteFailed(i, s)),
            4 => (0..IDS.len(), 0..SLAVES.len(), 0u8..3).prop_map(|(i, s, k)| Step::Ack(i, s, k)),
            3 => (0..IDS.len(), 0..SLAVES.len()).prop_map(|(i, s)| Step::Exec(i, s)),
            2 => (0usize..4).prop_map(Step::Intent),
            1 => (0usize..3).prop_map(Step::IntentAck),
            2 => (0..IDS.len(), 0..CANCEL_TO.len()).prop_map(|(i, a)| Step::Cancel(i, a)),
            3 => (0u64..3_000).prop_map(Step::Advance),
            3 => Just(Step::Timeout),
        ]
    }

    const LIMITS: AgentLimits = AgentLimits {
        max_intent_routes: 2,
        intent_route_ttl: echo_statemachine::time::Duration::from_millis(5_000),
        max_active_commands: 3,
        max_completed_retained: 1,
        max_result_outbox: 2,
        max_pipe_inflight: 1,
    };

    /// What the test knows independently of the machine.
    #[derive(Default)]
    struct Model {
        /// op → (command, state) for every PersistLedger not yet answered.
        ops: BTreeMap<LedgerOpId, (CommandId, LedgerState)>,
        seen_ops: BTreeSet<LedgerOpId>,
        /// Commands whose Buffered record was reported durable (and not deleted since).
        durable: BTreeSet<CommandId>,
        /// Commands whose Delivered/Completed record was reported durable.
        durable_delivered: BTreeSet<CommandId>,
        /// Pipes of served accounts that are open.
        pipes: BTreeSet<AccountId>,
    }

    struct World {
        h: H,
        model: Model,
    }

    impl World {
        fn apply(&mut self, s: &Step) -> Result<(), TestCaseError> {
            if let Step::Cancel(i, a) = s {
                return self.cancel(command(IDS[*i], CANCEL_TO[*a]));
            }
            let h = &mut self.h;
            let before = h.m.poll_timeout();
            let mut is_timeout = false;
            match s {
                Step::CoreUp => h.m.handle_core_connected(h.now),
                Step::Online => {
                    h.m.handle_core_connected(h.now);
                    h.m.handle_from_core(h.now, hello(true));
                }
                Step::Hello(ok) => h.m.handle_from_core(h.now, hello(*ok)),
                Step::CoreDown => h.m.handle_core_disconnected(h.now),
                Step::Heartbeat(r) => h.m.handle_from_core(
                    h.now,
                    CoreToAgent::Heartbeat(heartbeat(AgentDeliveryConfig {
                        max_retries: *r,
                        ..core_cfg()
                    })),
                ),
                Step::Cmd(i, s) => {
                    h.m.handle_from_core(h.now, CoreToAgent::Command(command(IDS[*i], SLAVES[*s])))
                }
                Step::LedgerOk(k) | Step::LedgerFail(k, _) => {
                    let Some((&op, (id, state))) =
                        self.model.ops.iter().nth(k % self.model.ops.len().max(1))
                    else {
                        return Ok(());
                    };
                    let (id, state) = (id.clone(), *state);
                    self.model.ops.remove(&op);
                    let r = match s {
                        Step::LedgerOk(_) => {
                            self.model.durable.insert(id.clone());
                            if matches!(state, LedgerState::Delivered | LedgerState::Completed) {
                                self.model.durable_delivered.insert(id);
                            }
                            LedgerResult::Ok
                        }
                        Step::LedgerFail(_, retryable) => LedgerResult::Failed {
                            retryable: *retryable,
                        },
                        _ => unreachable!(),
                    };
                    h.m.handle_ledger_result(h.now, op, r);
                }
                Step::PipeUp(a) => {
                    if accounts().iter().any(|(x, _)| *x == acc(SLAVES[*a])) {
                        self.model.pipes.insert(acc(SLAVES[*a]));
                    }
                    h.m.handle_pipe_connected(h.now, acc(SLAVES[*a]))
                }
                Step::PipeDown(a) => {
                    self.model.pipes.remove(&acc(SLAVES[*a]));
                    h.m.handle_pipe_closed(h.now, acc(SLAVES[*a]))
                }
                Step::WriteFailed(i, a) => {
                    h.m.handle_pipe_write_failed(h.now, acc(SLAVES[*a]), cid(IDS[*i]))
                }
                Step::Ack(i, a, k) => {
                    let status =
                        [PipeStatus::Ok, PipeStatus::Retry, PipeStatus::Failed][*k as usize];
                    h.m.handle_from_ea(
                        h.now,
                        acc(SLAVES[*a]),
                        EaToAgent::PipeAck(PipeDeliveryAck {
                            command_id: cid(IDS[*i]),
                            status,
                            reason: None,
                        }),
                    );
                }
                Step::Exec(i, a) => h.m.handle_from_ea(
                    h.now,
                    acc(SLAVES[*a]),
                    EaToAgent::Execution(result(IDS[*i], SLAVES[*a])),
                ),
                Step::Intent(k) => h.m.handle_from_ea(
                    h.now,
                    acc("m1"),
                    EaToAgent::Intent(intent(&format!("i{k}"), "m1")),
                ),
                Step::IntentAck(k) => h.m.handle_from_core(
                    h.now,
                    CoreToAgent::IntentAck(intent_ack(&format!("i{k}"), AckResult::Ok)),
                ),
                Step::Cancel(..) => unreachable!("handled above"),
                Step::Advance(ms) => {
                    h.now = h.now + echo_statemachine::time::Duration::from_millis(*ms)
                }
                Step::Timeout => {
                    is_timeout = true;
                    h.m.handle_timeout(h.now);
                }
            }
            let outs = h.drain();
            prop_assert!(
                !ea_msgs(&outs)
                    .iter()
                    .any(|(_, m)| matches!(m, AgentToEa::Cancel(_))),
                "a Cancel written without one from the core: {outs:?}"
            );
            self.check(&outs, before, is_timeout)
        }

        /// A cancel from the core reaches its slave's pipe unchanged iff that slave is served
        /// here and its pipe is open (T46), else it is counted (T47); it never touches the
        /// ledger, the timers, the link or anything sent to the core.
        fn cancel(&mut self, c: Command) -> Result<(), TestCaseError> {
            let h = &mut self.h;
            let before = h.m.poll_timeout();
            let metrics = h.m.metrics().clone();
            let link = h.m.link_state();
            let phases: Vec<_> = IDS.iter().map(|id| h.m.entry_phase(&cid(id))).collect();
            let (ledger_len, ops) = (h.m.ledger_len(), h.m.outstanding_ledger_ops());
            let served = accounts().contains(&(c.slave.clone(), Role::Slave));
            let open = served && self.model.pipes.contains(&c.slave);
            h.m.handle_from_core(h.now, CoreToAgent::Cancel(c.clone()));
            let outs = h.drain();
            let subject = Subject::Command(c.command_id.clone());
            prop_assert!(
                matches!(&outs[..], [AgentOutput::Fired(f), ..] if f.subject == subject),
                "{outs:?}"
            );
            if open {
                prop_assert_eq!(fired(&outs), vec![T::T46.id()]);
                prop_assert_eq!(
                    &outs[1..],
                    &[AgentOutput::ToEa {
                        account: c.slave.clone(),
                        msg: AgentToEa::Cancel(c),
                    }][..]
                );
                prop_assert_eq!(h.m.metrics(), &metrics);
            } else {
                prop_assert_eq!(fired(&outs), vec![T::T47.id()]);
                prop_assert_eq!(outs.len(), 1, "a dropped cancel emits nothing: {:?}", outs);
                prop_assert_eq!(
                    h.m.metrics(),
                    &AgentMetrics {
                        cancels_dropped: metrics.cancels_dropped + 1,
                        ..metrics
                    }
                );
            }
            prop_assert_eq!(h.m.link_state(), link);
            prop_assert_eq!(h.m.poll_timeout(), before);
            prop_assert_eq!(h.m.ledger_len(), ledger_len);
            prop_assert_eq!(h.m.outstanding_ledger_ops(), ops);
            let after: Vec<_> = IDS.iter().map(|id| h.m.entry_phase(&cid(id))).collect();
            prop_assert_eq!(after, phases);
            self.check(&outs, before, false)
        }

        fn check(
            &mut self,
            outs: &[AgentOutput],
            before: Option<Instant>,
            is_timeout: bool,
        ) -> Result<(), TestCaseError> {
            let h = &self.h;
            let online = h.m.link_state() == LinkState::Online;
            for o in outs {
                match o {
                    AgentOutput::ToCore(AgentToCore::CommandAck(a)) => {
                        prop_assert!(online, "stage reported while not Online: {a:?}");
                        if a.stage == AckStage::AgentBuffered && a.result == AckResult::Ok {
                            prop_assert!(
                                self.model.durable.contains(&a.command_id),
                                "AGENT_BUFFERED OK before the ledger write was durable: {a:?}"
                            );
                        }
                        if a.stage == AckStage::PipeDelivered && a.result == AckResult::Ok {
                            prop_assert!(
                                self.model.durable_delivered.contains(&a.command_id),
                                "PIPE_DELIVERED OK before the Delivered write: {a:?}"
                            );
                        }
                    }
                    AgentOutput::ToCore(AgentToCore::Hello(_)) => {}
                    AgentOutput::ToCore(m) => prop_assert!(online, "sent while not Online: {m:?}"),
                    AgentOutput::ToEa {
                        msg: AgentToEa::Command(c),
                        ..
                    } => prop_assert!(
                        self.model.durable.contains(&c.command_id),
                        "written to the pipe before durable: {:?}",
                        c.command_id
                    ),
                    AgentOutput::PersistLedger { op, record } => {
                        prop_assert!(self.model.seen_ops.insert(*op), "op id reused");
                        let id = record.command.command_id.clone();
                        if record.state == LedgerState::Buffered {
                            prop_assert!(
                                !self.model.durable.contains(&id),
                                "a durable command persisted as new again: {id:?}"
                            );
                        }
                        prop_assert!(
                            !self.model.ops.values().any(|(c, _)| *c == id),
                            "two writes in flight for {id:?}"
                        );
                        self.model.ops.insert(*op, (id, record.state));
                    }
                    AgentOutput::DeleteLedger { command_id } => {
                        self.model.durable.remove(command_id);
                        self.model.durable_delivered.remove(command_id);
                    }
                    _ => {}
                }
            }
            // Bounded state.
            prop_assert!(h.m.active_len() <= LIMITS.max_active_commands);
            prop_assert!(
                h.m.ledger_len() <= LIMITS.max_active_commands + LIMITS.max_completed_retained
            );
            prop_assert_eq!(h.m.outstanding_ledger_ops(), self.model.ops.len());
            prop_assert!(h.m.outstanding_ledger_ops() <= h.m.ledger_len());
            prop_assert!(h.m.pending_intents() <= LIMITS.max_intent_routes);
            // Deadlines: none in the past after a timeout; otherwise only ones already due.
            if let Some(next) = h.m.poll_timeout() {
                if is_timeout {
                    prop_assert!(next > h.now, "timeout left due work: {next} <= {}", h.now);
                } else if next < h.now {
                    prop_assert!(
                        before.is_some_and(|b| b <= next),
                        "new deadline armed in the past: {next} < {}",
                        h.now
                    );
                }
            }
            Ok(())
        }

        /// Every fault heals: link up, pipes up, writes durable, the EA acks OK.
        fn heal(&mut self) -> Result<(), TestCaseError> {
            self.apply(&Step::CoreUp)?;
            self.apply(&Step::Hello(true))?;
            for _ in 0..12 {
                for a in 0..2 {
                    self.apply(&Step::PipeDown(a))?;
                    self.apply(&Step::PipeUp(a))?;
                }
                for _ in 0..8 {
                    self.apply(&Step::LedgerOk(0))?;
                }
                for i in 0..IDS.len() {
                    for a in 0..2 {
                        self.apply(&Step::Ack(i, a, 0))?;
                    }
                }
                for _ in 0..8 {
                    self.apply(&Step::LedgerOk(0))?;
                }
                self.apply(&Step::Advance(60_000))?;
                self.apply(&Step::Timeout)?;
            }
            for id in IDS {
                if let Some(p) = self.h.m.entry_phase(&cid(id)) {
                    prop_assert!(
                        matches!(
                            p,
                            EntryPhase::Delivered | EntryPhase::Completed | EntryPhase::Rejected
                        ),
                        "{id} stuck in {p:?} after healing"
                    );
                }
            }
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn random_inputs_keep_the_invariants(steps in proptest::collection::vec(step(), 1..120)) {
            let mut w = World {
                h: H::from(DeliveryManager::new(AgentId::new("a1"), accounts(), cfg(), LIMITS)),
                model: Model::default(),
            };
            for s in &steps {
                w.apply(s)?;
            }
            w.heal()?;
        }
    }
}

/// T49: a slave EA's PipeDeliveryAck RETRY says "alive, busy" (its `max_pending` commands are
/// unfinished, or its write-ahead of this one is not durable yet). It spends no pipe attempt:
/// however often the EA answers RETRY, the command is never parked and the core never hears
/// PIPE_UNAVAILABLE (a busy EA must not end copies MAX_RETRIES). It is written again after a
/// backoff that grows with the RETRYs in a row and is capped at the ack timeout; an OK starts
/// the count again; an unanswered write after RETRYs still spends its attempt.
fn ea_retry_is_backpressure_not_a_failure() -> Fired {
    let mut h = H::new();
    h.online();
    h.pipe("s1");
    h.buffered("c1", "s1");
    let mut waits = Vec::new();
    for round in 0..12 {
        let o = h.pipe_ack("s1", "c1", PipeStatus::Retry);
        assert_eq!(fired(&o), vec![T::T49.id()], "round {round}");
        assert!(acks(&o).is_empty(), "round {round}: nothing to the core");
        assert_eq!(h.phase("c1"), Some(EntryPhase::Backoff));
        assert_eq!(h.m.entry_attempts(&cid("c1")), Some(0), "round {round}");
        let before = h.now;
        // Other timers (the heartbeat) may come first; the re-write is the one that ends Backoff.
        let mut o = h.next_deadline();
        while h.phase("c1") == Some(EntryPhase::Backoff) {
            o = h.next_deadline();
        }
        waits.push(h.now.as_millis() - before.as_millis());
        assert_eq!(
            pipe_commands(&o),
            vec![(acc("s1"), cid("c1"))],
            "round {round}"
        );
        assert_eq!(h.m.entry_attempts(&cid("c1")), Some(1), "round {round}");
    }
    // 12 RETRYs against max_retries = 3: never parked, never PIPE_UNAVAILABLE.
    assert_eq!(h.m.metrics().pipe_unavailable_total, 0);
    assert_eq!(h.m.metrics().pipe_retry_total, 12);
    assert_eq!(
        &waits[..4],
        &[100, 200, 400, 800],
        "backoff grows: {waits:?}"
    );
    assert!(
        waits[4..].iter().all(|w| *w == 1_000),
        "capped at the ack timeout: {waits:?}"
    );
    // An unanswered write is a failed attempt still (T33), counted from 1.
    let mut o = h.next_deadline();
    while h.phase("c1") == Some(EntryPhase::AwaitingAck) {
        o = h.next_deadline();
    }
    assert_eq!(fired(&o), vec![T::T33.id()]);
    assert_eq!(h.m.poll_timeout(), Some(h.now + backoff(100, 1)));
    h.next_deadline();
    // OK delivers and ends the RETRY count: the next RETRY waits the base backoff again.
    let o = h.pipe_ack("s1", "c1", PipeStatus::Ok);
    assert_eq!(fired(&o), vec![T::T31.id()]);
    h.buffered("c2", "s1");
    h.pipe_ack("s1", "c2", PipeStatus::Retry);
    assert_eq!(h.m.poll_timeout(), Some(h.now + backoff(100, 1)));
    h.done()
}
