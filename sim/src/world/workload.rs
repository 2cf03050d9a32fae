//! The workload: what the masters trade, and what else changes while they do. Every master
//! runs a script of trade lifecycles ([`LIFECYCLE`]: open → modify → three successive partial
//! closes by fraction with a modify between them → close; four trades interleaved, across
//! symbols and open volumes), its trade ids carrying a checksum of their index and
//! alternating letter case, emitted at a steady pace and in bursts. Per seed ([`Workload`]),
//! price-feed bursts drive the market-data path ([`super::marketdata`]), subscriptions change
//! at run time, and one agent may be a legacy (compat-mode) peer.
//!
//! **Which slaves an intent is copied to.** The subscriptions in force when the core admits
//! the intent (`core.intake.T01` plans one delivery per subscribed slave, and the plan is
//! journaled atomically with the intent) decide its copies, once and for all: a later change
//! neither adds nor removes a copy of an intent already admitted (`core.registry.T10`:
//! "journaled deliveries keep their slaves"); a retried write (`core.intake.T07`) keeps the
//! plan. An intent refused before admission (BROKER_BUSY, JOURNAL_UNAVAILABLE) is planned
//! afresh when the master's retry is admitted, under the subscriptions of that moment. A
//! subscribed slave whose symbol map leaves the intent's symbol out gets an explicit
//! FAILED `SYMBOL_NOT_MAPPED`. [`super::checks`] verifies every plan against the world's own
//! copy of the subscriptions at the moment of admission, and every execution against the plan.
//!
//! This module owns what the terminals do. It must never bypass a master's IntentQueue and
//! never decide a fault.

use echo_statemachine::config::Subscription;
use echo_statemachine::ids::{AccountId, IntentId, Symbol, TradeId};
use echo_statemachine::msg::*;
use echo_statemachine::policy::subscription::CopyPolicy;
use echo_statemachine::time::Duration;

use super::faults::F;
use super::nodes::{CoreM, MasterM};
use super::{Ev, World};
use crate::rng::Rng;

/// One trade's lifecycle: open, SL/TP modify, three successive partial closes (with a modify
/// between them, so a modify must find the ticket a partial close left) and the final close.
/// A partial close names the share of the master's *current* volume it closes (‰).
pub const LIFECYCLE: [(IntentKind, u64); 7] = [
    (IntentKind::Open, 0),
    (IntentKind::Modify, 0),
    (IntentKind::PartialClose, 300),
    (IntentKind::PartialClose, 250),
    (IntentKind::Modify, 0),
    (IntentKind::PartialClose, 500),
    (IntentKind::Close, 0),
];

/// Intents per trade in the script.
pub const STEPS: usize = LIFECYCLE.len();

/// A trade id carries a checksum of its index, so a checker can tell a real one from garbage.
pub fn trade_id(master: usize, trade: usize) -> TradeId {
    let sum = (master * 31 + trade * 7) % 97;
    TradeId::new(format!("M{master}-T{trade}-C{sum:02}"))
}

impl World {
    pub(super) fn emit(&mut self, m: usize) {
        let now = self.now;
        let Some(q) = self.masters[m].as_mut() else {
            return;
        };
        let Some(intent) = self.script[m].get(self.script_pos[m]).cloned() else {
            return;
        };
        self.script_pos[m] += 1;
        if self.master_files[m].contains_key(&intent.intent_id)
            || self.book.emitted.contains_key(&intent.intent_id)
        {
            return; // durable already: recovery re-queued it
        }
        let id = intent.intent_id.clone();
        if q.handle_emit(now, intent).is_err() {
            // The queue is full: the terminal pauses and emits the same event again later.
            self.script_pos[m] -= 1;
        } else {
            self.unappended[m].insert(id);
        }
        self.drain::<MasterM>(m, "terminal event");
    }

    pub(super) fn on_emit_timer(&mut self, master: usize) {
        self.emit(master);
        if self.script_pos[master] < self.script[master].len() {
            self.at(self.cfg.emit_every, Ev::Emit { master });
        } else {
            // Crash recovery may rewind the script: keep looking.
            self.at(Duration::from_millis(50), Ev::Emit { master });
        }
    }
}

pub(super) fn build_script(m: usize, trades: usize, master: &AccountId) -> Vec<TradeIntent> {
    let mut out = Vec::new();
    let total = trades * STEPS;
    // The master's open volume per trade, in 10⁻⁸ lot (integers: the partials' lots are
    // exact, as a terminal reports them with two decimals).
    let lot = echo_statemachine::policy::volume::UNITS_PER_LOT;
    let mut open_units: Vec<u64> = (0..trades)
        .map(|t| [100, 70, 250][t % 3] * lot / 100)
        .collect();
    let mut pos = 0;
    while out.len() < total {
        // Interleave 4 trades at a time: t0.open t1.open t2.open t3.open t0.modify …
        let group = pos / (4 * STEPS);
        let within = pos % (4 * STEPS);
        pos += 1;
        let trade = group * 4 + within % 4;
        let step = within / 4;
        if trade >= trades {
            continue;
        }
        let seq = out.len() as u64;
        let (kind, per_mille) = LIFECYCLE[step];
        let before = open_units[trade];
        let volume_units = match kind {
            IntentKind::Open | IntentKind::PlaceLimit | IntentKind::PlaceStop => before,
            // Rounded down to 0.01 lot, at least 0.01: what the master's broker closes.
            IntentKind::PartialClose => {
                let cut = before * per_mille / 1_000 / (lot / 100) * (lot / 100);
                cut.max(lot / 100).min(before)
            }
            _ => 0,
        };
        if kind == IntentKind::PartialClose {
            open_units[trade] = before - volume_units;
        }
        out.push(TradeIntent {
            // Magic numbers 1–3, comments "grid #N" or "scalp N", every order type; the
            // master's account (0 = not reported, for one trade in 16).
            origin: MasterFacts {
                magic: (trade % 3) as i64 + 1,
                comment: if trade % 4 == 3 {
                    format!("scalp {trade}")
                } else {
                    format!("grid #{}", trade % 10)
                },
                order_type: OrderType::ALL[(trade / 2) % OrderType::ALL.len()],
                balance: if trade % 16 == 15 { 0.0 } else { 10_000.0 },
                equity: if trade % 16 == 15 {
                    0.0
                } else {
                    9_000.0 + (trade % 7) as f64 * 250.0
                },
            },
            intent_id: IntentId::new(format!("m{m}-i{seq}")),
            // Odd steps spell the trade id in lower case: one trade, two spellings.
            trade_id: if step % 2 == 1 {
                TradeId::new(trade_id(m, trade).as_str().to_lowercase())
            } else {
                trade_id(m, trade)
            },
            master: master.clone(),
            kind,
            symbol: Symbol::new(["EURUSD", "GBPUSD", "USDJPY"][trade % 3]),
            side: if trade.is_multiple_of(2) {
                Side::Buy
            } else {
                Side::Sell
            },
            volume: volume_units as f64 / lot as f64,
            price: 1.1,
            stop_loss: 1.0 + step as f64 * 0.01,
            take_profit: 1.3,
            master_ticket: trade as i64,
            master_seq: seq,
            emitted_at_ms: 0,
            master_volume_before: if kind == IntentKind::PartialClose {
                before as f64 / lot as f64
            } else {
                0.0
            },
        });
    }
    out
}

/// The per-seed mix of the workload beyond the trade script, drawn from the seed like the
/// fault profile ("swarm" testing: some seeds never change a subscription, some often).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Chance per agent per 100 ms that the price feed sends a burst (‰).
    pub md_burst: u64,
    /// Chance per 100 ms that a subscription changes at run time (‰).
    pub sub_change: u64,
    /// The agent that is a legacy peer (no lossless delivery, no stage acks), if any.
    pub compat_agent: Option<usize>,
    /// Chance per trade that a broken terminal spoils one of its intents (‰): an open with a
    /// negative stop-loss (valid for the core, refused by slave EAs) or a non-finite price
    /// (refused by the core with INVALID_ARGUMENT; a pending placement loses its price
    /// instead: `core.intake.T14`).
    pub malformed: u64,
    /// Chance per trade that it starts as a pending order (‰): placed (limit or stop),
    /// modified, then cancelled by the master or triggered — a triggered one goes on with the
    /// position's modify, partial closes and close ([`pendings_some`]).
    pub pending: u64,
    /// Chance per 100 ms that one slave's pending order fills on its own at its broker (‰),
    /// before (or without) its master's trigger.
    pub pending_fill: u64,
    /// Chance per agent (re)start during the fault phase that it comes back configured without
    /// one of its slave accounts (‰): its operator removed the account from it. The agent
    /// says hello without it, opens no pipe for it, and keeps its ledger; the slave's
    /// deliveries wait for an agent that serves it — this one, once it restarts with its full
    /// configuration (at the latest when the faults heal). Drawn from a stream of its own, so
    /// the seeds' other draws are where they were before this rate existed.
    pub agent_reconfig: u64,
    /// Chance per agent crash that the core does not see its stream end (‰): a half-open
    /// connection (the host vanished, no FIN, no RST). The core keeps the agent online until
    /// its restarted self says hello on a new stream (a re-hello of an online agent) or its
    /// silence times out. Drawn from the same stream of its own as `agent_reconfig`.
    pub half_open: u64,
}

impl Workload {
    /// Trades only (the demo and fault-free worlds).
    pub fn none() -> Self {
        Workload {
            md_burst: 0,
            sub_change: 0,
            compat_agent: None,
            malformed: 0,
            pending: 0,
            pending_fill: 0,
            agent_reconfig: 0,
            half_open: 0,
        }
    }

    pub fn draw(rng: &mut Rng, agents: usize) -> Self {
        let mut rate = |high: u64| -> u64 {
            match rng.below(4) {
                0 => 0,
                1 => rng.range(1, (high / 10).max(1)),
                _ => rng.range(1, high),
            }
        };
        let md_burst = rate(300);
        let sub_change = rate(150);
        let malformed = rate(80);
        let pending = rate(400);
        let pending_fill = rate(200);
        let compat_agent = if rng.chance(1, 4) {
            Some(rng.below(agents as u64) as usize)
        } else {
            None
        };
        Workload {
            md_burst,
            sub_change,
            compat_agent,
            malformed,
            pending,
            pending_fill,
            // Drawn by the world from their own stream (`World::with_zeroed`).
            agent_reconfig: 0,
            half_open: 0,
        }
    }

    /// The `agent_reconfig` and `half_open` rates of a faulty seed, from a generator of
    /// their own.
    pub fn agent_restart_rates(seed: u64) -> (u64, u64) {
        let mut r = Rng::new(seed ^ 0xA6E7_2EC0_F16A_3D01);
        let mut rate = || match r.below(3) {
            0 => 0,
            _ => r.range(1, 500),
        };
        let reconfig = rate();
        (reconfig, rate())
    }
}

impl Workload {
    /// Every per-mille rate of the mix by name (for shrinking).
    pub fn rates_mut(&mut self) -> Vec<(&'static str, &mut u64)> {
        vec![
            ("md_burst", &mut self.md_burst),
            ("sub_change", &mut self.sub_change),
            ("malformed", &mut self.malformed),
            ("pending", &mut self.pending),
            ("pending_fill", &mut self.pending_fill),
            ("agent_reconfig", &mut self.agent_reconfig),
            ("half_open", &mut self.half_open),
        ]
    }
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "md_burst={} sub_change={} malformed={} pending={} pending_fill={} agent_reconfig={} half_open={} (‰) compat_agent={}",
            self.md_burst,
            self.sub_change,
            self.malformed,
            self.pending,
            self.pending_fill,
            self.agent_reconfig,
            self.half_open,
            match self.compat_agent {
                Some(a) => format!("agent-{a}"),
                None => "none".into(),
            }
        )
    }
}

/// Pending orders: with chance `per_mille` per trade, the trade starts as a pending order
/// instead of a market open — PLACE_LIMIT or PLACE_STOP (drawn) at the open's price and lots,
/// a PENDING_MODIFY of its price, then either the master's PENDING_CANCEL (the trade ends
/// there: its later intents are dropped) or its PENDING_TRIGGER (the fill, with the open's
/// lots), after which the trade's modify, partial closes and close follow as scripted. All of
/// one trade share its trade id; the script is renumbered (intent ids, `master_seq`) so
/// emission order stays the master's order.
pub(super) fn pendings_some(
    script: &mut Vec<TradeIntent>,
    m: usize,
    per_mille: u64,
    rng: &mut Rng,
) {
    let opens: Vec<usize> = (0..script.len())
        .filter(|&k| script[k].kind == IntentKind::Open)
        .collect();
    // (index of the open, limit?, triggered?) of each trade made pending.
    let mut chosen = Vec::new();
    for k in opens {
        // Three draws per trade whatever the rate, so zeroing it (shrink) moves no other draw.
        let (pick, limit, triggered) = (
            rng.chance(per_mille, 1_000),
            rng.chance(1, 2),
            rng.chance(3, 4),
        );
        if pick {
            chosen.push((k, limit, triggered));
        }
    }
    let mut dropped = std::collections::BTreeSet::new();
    let mut out: Vec<TradeIntent> = Vec::with_capacity(script.len() + 2 * chosen.len());
    for (k, intent) in script.iter().enumerate() {
        let trade = intent.trade_id.as_str().to_lowercase();
        if dropped.contains(&trade) {
            continue;
        }
        let Some(&(_, limit, triggered)) = chosen.iter().find(|(o, _, _)| *o == k) else {
            out.push(intent.clone());
            continue;
        };
        let (kind, order_type) = if limit {
            (IntentKind::PlaceLimit, OrderType::Limit)
        } else {
            (IntentKind::PlaceStop, OrderType::Stop)
        };
        let origin = MasterFacts {
            order_type,
            ..intent.origin.clone()
        };
        out.push(TradeIntent {
            kind,
            origin: origin.clone(),
            ..intent.clone()
        });
        out.push(TradeIntent {
            kind: IntentKind::PendingModify,
            origin: origin.clone(),
            price: intent.price - 0.0005,
            volume: 0.0,
            ..intent.clone()
        });
        if triggered {
            out.push(TradeIntent {
                kind: IntentKind::PendingTrigger,
                origin,
                ..intent.clone()
            });
        } else {
            out.push(TradeIntent {
                kind: IntentKind::PendingCancel,
                origin,
                volume: 0.0,
                ..intent.clone()
            });
            dropped.insert(trade);
        }
    }
    for (seq, i) in out.iter_mut().enumerate() {
        i.master_seq = seq as u64;
        i.intent_id = IntentId::new(format!("m{m}-i{seq}"));
    }
    *script = out;
}

/// A broken terminal: with chance `per_mille` per trade, one intent of the trade is spoiled —
/// its open gets a negative stop-loss (finite, so valid for the core; refused as malformed by
/// every slave EA whose policy copies the master's SL/TP prices — sizing would turn a volume
/// of 0 into VOLUME_BELOW_MIN at the core before any EA saw it), or one of its intents a
/// non-finite price (a pending placement: a price of 0). Every copy of it must
/// still end explicitly (FAILED with a reason), and the trade's later intents NO_POSITION
/// where the open never executed.
pub(super) fn spoil_some(script: &mut [TradeIntent], per_mille: u64, rng: &mut Rng) {
    let trades: std::collections::BTreeSet<String> = script
        .iter()
        .map(|i| i.trade_id.as_str().to_lowercase())
        .collect();
    for t in trades {
        if !rng.chance(per_mille, 1_000) {
            continue;
        }
        let of_trade: Vec<usize> = (0..script.len())
            .filter(|&k| script[k].trade_id.as_str().to_lowercase() == t)
            .collect();
        if rng.chance(1, 2) {
            if let Some(&k) = of_trade
                .iter()
                .find(|&&k| script[k].kind == IntentKind::Open)
            {
                script[k].stop_loss = -1.0;
            }
        } else {
            let k = of_trade[rng.below(of_trade.len() as u64) as usize];
            // A pending order without its price is refused by the core (`core.intake.T14`).
            script[k].price = if script[k].kind.placed_order_type().is_some() {
                0.0
            } else {
                f64::NAN
            };
        }
    }
}

/// The subscription of slave `s` as the world first configures it.
pub(super) fn home_subscription(
    master: &AccountId,
    slave: &AccountId,
    s: usize,
    policies: &[CopyPolicy],
) -> Subscription {
    let mut sub = Subscription::new(master.as_str(), slave.as_str(), 1.0 + (s % 3) as f64);
    if let Some(p) = policies.get(s) {
        sub.policy = p.clone();
    }
    sub
}

impl World {
    /// The workload's own events of one tick (fault phase only).
    pub(super) fn workload_tick(&mut self) {
        for a in 0..self.feeds.len() {
            if self.chance(F::MdBurst) {
                self.md_burst(a);
            }
        }
        if self.chance(F::SubChange) {
            self.change_subscription();
        }
        if self.chance(F::PendingFill) {
            self.fill_a_pending_order();
        }
    }

    /// Changes one slave's subscription: drop it, add it back, change its multiplier, or
    /// give it a symbol map that leaves one symbol out (SYMBOL_NOT_MAPPED) — then tells the
    /// core (intents admitted from now on fan out over the new set) and raises the
    /// market-data routing version.
    fn change_subscription(&mut self) {
        let n = self.slave_accounts.len() as u64;
        let s = self.draw(F::SubChange).below(n) as usize;
        let m = s / self.cfg.slaves_per_master;
        let (master, slave) = (
            self.master_accounts[m].clone(),
            self.slave_accounts[s].clone(),
        );
        let what = match (self.draw(F::SubChange).below(4), self.subs[s].is_some()) {
            (_, false) => {
                self.subs[s] = Some(home_subscription(&master, &slave, s, &self.policies));
                "subscribed again"
            }
            (0, true) => {
                self.subs[s] = None;
                "unsubscribed"
            }
            (1, true) => {
                let x = self.draw(F::SubChange).range(1, 5) as f64 / 2.0;
                if let Some(sub) = self.subs[s].as_mut() {
                    sub.multiplier = x;
                }
                "multiplier changed"
            }
            (2, true) => {
                if let Some(sub) = self.subs[s].as_mut() {
                    sub.symbol_map = [("EURUSD", "EURUSD.s"), ("GBPUSD", "GBPUSD.s")]
                        .into_iter()
                        .map(|(a, b)| (Symbol::new(a), Symbol::new(b)))
                        .collect();
                }
                "symbol map without USDJPY"
            }
            _ => {
                if let Some(sub) = self.subs[s].as_mut() {
                    sub.symbol_map.clear();
                }
                "symbol map cleared"
            }
        };
        self.fault("subscription", format!("{master} → {slave}: {what}"));
        let subs: Vec<Subscription> = self.subs.iter().flatten().cloned().collect();
        if !self.core_misses_subscription_changes {
            self.core_cfg.subscriptions = subs.clone();
            let now = self.now;
            if let Some(c) = self.core.as_mut() {
                c.handle_subscriptions(now, subs);
            }
            self.drain::<CoreM>(0, "subscriptions replaced");
        }
        self.routing_version += 1;
        let v = self.routing_version;
        // The agent's buffer and the feed each learn of it a little later, in either order.
        for a in 0..self.feeds.len() {
            let d = Duration::from_micros(self.draw(F::SubChange).range(100, 20_000));
            self.at(
                d,
                Ev::MdRouting {
                    agent: a,
                    v,
                    feed: false,
                },
            );
            let d = Duration::from_micros(self.draw(F::SubChange).range(100, 50_000));
            self.at(
                d,
                Ev::MdRouting {
                    agent: a,
                    v,
                    feed: true,
                },
            );
        }
    }

    /// The slaves subscribed to master `m` now, with their subscriptions.
    pub(super) fn subscribed(&self, m: &AccountId) -> Vec<&Subscription> {
        self.subs
            .iter()
            .flatten()
            .filter(|s| s.master == *m)
            .collect()
    }

    /// The wire edge of a legacy (compat) agent: it announces no lossless delivery and sends
    /// no stage acks; everything else it sends as a current agent does.
    pub(super) fn legacy_wire(&self, a: usize, msg: AgentToCore) -> Option<AgentToCore> {
        if self.workload.compat_agent != Some(a) {
            return Some(msg);
        }
        match msg {
            AgentToCore::Hello(mut h) => {
                h.supports_lossless_delivery = false;
                Some(AgentToCore::Hello(h))
            }
            AgentToCore::CommandAck(_) => None,
            m => Some(m),
        }
    }
}
