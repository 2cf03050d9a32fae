//! A small driver for the core machine in tests: it feeds inputs, drains outputs, answers
//! journal writes on demand and records every transition id the core reports.

#![allow(dead_code)]

use echo_statemachine::config::{AgentDeliveryConfig, DeliveryConfig, RouterConfig, Subscription};
use echo_statemachine::core::{
    Core, CoreConfig, CoreDurableState, CoreLog, CoreOutput, JournalReply, JournalResult,
    JournalWrite, OpId,
};
use echo_statemachine::ids::{AccountId, AgentId, CommandId, IntentId, Symbol, TradeId};
use echo_statemachine::msg::*;
use echo_statemachine::time::{Duration, Instant};

pub struct H {
    pub core: Core,
    pub now: Instant,
    pub fired: Vec<&'static str>,
    /// Every output except Fired, in order, since the last `take()`.
    pub outs: Vec<CoreOutput>,
    /// Journal writes the core awaits or emitted, not yet answered, in order.
    pub journal: Vec<(OpId, JournalWrite)>,
}

pub fn cfg() -> CoreConfig {
    CoreConfig {
        router: RouterConfig::new(2, 4, 50).expect("valid"),
        delivery: DeliveryConfig {
            ack_timeout_ms: 100,
            retry_backoff_ms: 10,
            max_retries: 3,
            heartbeat_interval_ms: 1_000,
            reconcile_interval_ms: 500,
            journal_stage_acks: 1,
            agent_window: 1_024,
        },
        agent_delivery: AgentDeliveryConfig::default(),
        subscriptions: vec![
            Subscription::new("m1", "s1", 2.0),
            Subscription::new("m1", "s2", 1.0),
        ],
        recent_intents: 16,
    }
}

pub fn a(s: &str) -> AgentId {
    AgentId::new(s)
}

pub fn intent(id: &str, trade: &str, kind: IntentKind, seq: u64) -> TradeIntent {
    TradeIntent {
        origin: Default::default(),
        intent_id: IntentId::new(id),
        trade_id: TradeId::new(trade),
        master: AccountId::new("m1"),
        kind,
        symbol: Symbol::new("EURUSD"),
        side: Side::Buy,
        volume: 0.5,
        price: 1.1,
        stop_loss: 1.0,
        take_profit: 1.2,
        master_ticket: 7,
        master_seq: seq,
        emitted_at_ms: 0,
        // A partial close of 0.5 out of the master's 1.0 lots: half of each slave's position.
        master_volume_before: if kind == IntentKind::PartialClose {
            1.0
        } else {
            0.0
        },
    }
}

pub fn hello(agent: &str, accounts: &[(&str, Role)]) -> AgentToCore {
    AgentToCore::Hello(AgentHello {
        agent_id: AgentId::new(agent),
        protocol_version: PROTOCOL_VERSION,
        supports_lossless_delivery: true,
        accounts: accounts
            .iter()
            .map(|(acc, r)| (AccountId::new(acc), *r))
            .collect(),
    })
}

pub fn cmd_id(intent: &str, slave: &str) -> CommandId {
    CommandId::for_delivery(&IntentId::new(intent), &AccountId::new(slave))
}

pub fn stage_ack(cmd: &CommandId, slave: &str, stage: AckStage) -> AgentToCore {
    AgentToCore::CommandAck(CommandAck {
        command_id: cmd.clone(),
        trade_id: TradeId::new(""),
        slave: AccountId::new(slave),
        stage,
        result: AckResult::Ok,
        error: None,
        attempt: 1,
    })
}

pub fn fail_ack(cmd: &CommandId, slave: &str, err: ErrorCode) -> AgentToCore {
    AgentToCore::CommandAck(CommandAck {
        command_id: cmd.clone(),
        trade_id: TradeId::new(""),
        slave: AccountId::new(slave),
        stage: AckStage::PipeDelivered,
        result: AckResult::Failed,
        error: Some(err),
        attempt: 1,
    })
}

pub fn result(cmd: &CommandId, slave: &str, ticket: i64, status: BrokerStatus) -> AgentToCore {
    AgentToCore::ExecutionResult(ExecutionResult {
        reason: None,
        command_id: cmd.clone(),
        trade_id: TradeId::new(""),
        slave: AccountId::new(slave),
        slave_ticket: ticket,
        fill_price: 1.1,
        filled_volume: 1.0,
        status,
        legs: Vec::new(),
    })
}

impl H {
    pub fn new() -> Self {
        Self::with(cfg())
    }

    pub fn with(c: CoreConfig) -> Self {
        let mut h = H {
            core: Core::new(c),
            now: Instant::from_millis(1),
            fired: Vec::new(),
            outs: Vec::new(),
            journal: Vec::new(),
        };
        h.drain();
        h
    }

    pub fn recover(c: CoreConfig, d: CoreDurableState) -> Self {
        let now = Instant::from_millis(1);
        let mut h = H {
            core: Core::recover(c, d, now),
            now,
            fired: Vec::new(),
            outs: Vec::new(),
            journal: Vec::new(),
        };
        h.drain();
        h
    }

    /// The standard world: agent A serves master m1, agent B serves slaves s1 and s2.
    pub fn world() -> Self {
        let mut h = H::new();
        h.msg("A", hello("A", &[("m1", Role::Master)]));
        h.msg("B", hello("B", &[("s1", Role::Slave), ("s2", Role::Slave)]));
        h.take();
        h
    }

    pub fn drain(&mut self) {
        while let Some(o) = self.core.poll() {
            match o {
                CoreOutput::Fired(f) => self.fired.push(f.id()),
                CoreOutput::Journal { op, write } => {
                    self.journal.push((op, write.clone()));
                    self.outs.push(CoreOutput::Journal { op, write });
                }
                other => self.outs.push(other),
            }
        }
    }

    pub fn msg(&mut self, agent: &str, m: AgentToCore) {
        self.core.handle_agent_message(self.now, &a(agent), m);
        self.drain();
    }

    pub fn disconnect(&mut self, agent: &str) {
        self.core.handle_agent_disconnected(self.now, &a(agent));
        self.drain();
    }

    pub fn advance(&mut self, ms: u64) {
        self.now = self.now + Duration::from_millis(ms);
        self.core.handle_timeout(self.now);
        self.drain();
    }

    /// Advances to the next deadline and fires it.
    pub fn next_timer(&mut self) {
        if let Some(t) = self.core.poll_timeout() {
            if t > self.now {
                self.now = t;
            }
            self.core.handle_timeout(self.now);
            self.drain();
        }
    }

    pub fn take(&mut self) -> Vec<CoreOutput> {
        std::mem::take(&mut self.outs)
    }

    /// Answers the oldest awaited journal write matching `pred` with `res`.
    pub fn answer(&mut self, pred: impl Fn(&JournalWrite) -> bool, res: JournalResult) -> bool {
        let Some(pos) = self
            .journal
            .iter()
            .position(|(_, w)| w.is_awaited() && pred(w))
        else {
            return false;
        };
        let (op, _) = self.journal.remove(pos);
        self.core.handle_journal_result(self.now, op, res);
        self.drain();
        true
    }

    /// Answers every awaited journal write Ok (repeatedly, until none is left).
    pub fn journal_ok_all(&mut self) {
        while self.answer(|_| true, JournalResult::Ok(JournalReply::Done)) {}
        self.journal.retain(|(_, w)| w.is_awaited());
    }

    pub fn sent(&self) -> Vec<(AgentId, CoreToAgent)> {
        self.outs
            .iter()
            .filter_map(|o| match o {
                CoreOutput::Send { agent, msg } => Some((agent.clone(), msg.clone())),
                _ => None,
            })
            .collect()
    }

    pub fn commands(&self) -> Vec<Command> {
        self.sent()
            .into_iter()
            .filter_map(|(_, m)| match m {
                CoreToAgent::Command(c) => Some(c),
                _ => None,
            })
            .collect()
    }

    pub fn intent_acks(&self) -> Vec<TradeIntentAck> {
        self.sent()
            .into_iter()
            .filter_map(|(_, m)| match m {
                CoreToAgent::IntentAck(x) => Some(x),
                _ => None,
            })
            .collect()
    }

    pub fn writes(&self) -> Vec<JournalWrite> {
        self.outs
            .iter()
            .filter_map(|o| match o {
                CoreOutput::Journal { write, .. } => Some(write.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn logs(&self) -> Vec<CoreLog> {
        self.outs
            .iter()
            .filter_map(|o| match o {
                CoreOutput::Log(l) => Some(l.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn has_fired(&self, id: &str) -> bool {
        self.fired.contains(&id)
    }

    /// Accepts one intent end to end (journal Ok) and returns the commands it produced.
    pub fn accept(&mut self, i: TradeIntent) -> Vec<Command> {
        self.take();
        self.msg("A", AgentToCore::Intent(i));
        self.journal_ok_all();
        self.commands()
    }

    /// Confirms `cmd` at `slave` through every stage, journal Ok.
    pub fn confirm(&mut self, cmd: &CommandId, slave: &str, ticket: i64) {
        self.msg("B", stage_ack(cmd, slave, AckStage::AgentBuffered));
        self.msg("B", stage_ack(cmd, slave, AckStage::PipeDelivered));
        self.msg("B", result(cmd, slave, ticket, BrokerStatus::Filled));
        self.journal_ok_all();
    }
}
