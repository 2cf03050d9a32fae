//! Safety checks, made at the moment each message or action happens, and the run's
//! bookkeeping they and the end-of-run report read.
//!
//! This module owns what counts as a violation: an execution twice or out of the master's
//! order, an ack before the write it depends on was durable, an execution without an accepted
//! intent, a silent drop, a queue above its cap, two live deliveries in one chain. It only
//! observes: it must never change a machine, a store or the event queue, and never draw from
//! the run's generator.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use echo_statemachine::config::Subscription;
use echo_statemachine::core::{DeliveryRecord, DeliveryStatus, JournalWrite};
use echo_statemachine::ids::{AccountId, CommandId, IntentId, TradeId};
use echo_statemachine::msg::*;
use echo_statemachine::policy::deviation::deviation_points;
use echo_statemachine::policy::filters::glob;
use echo_statemachine::policy::reverse::{mirror_pending, opposite};
use echo_statemachine::policy::sizing::{risk_of, AboveMax, BelowMin};
use echo_statemachine::policy::stops::StopsMode;
use echo_statemachine::policy::subscription::SizingKind;
use echo_statemachine::policy::{SkipReason, Volume};
use echo_statemachine::time::Instant;

use super::describe::json_str;
use super::{Ea, World};

/// A safety or liveness failure, with what the checker saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub at: Instant,
    pub what: String,
}

/// Per-run bookkeeping for the checkers and the report.
#[derive(Clone, Debug, Default)]
pub struct Ledgerbook {
    /// Intents whose append to the master's IntentQueue file was durable: (at, kind, trade).
    pub emitted: BTreeMap<IntentId, (Instant, IntentKind, TradeId)>,
    /// (slave, command) → how many times the slave EA sent it to the broker (must be ≤ 1).
    pub placed: BTreeMap<(usize, CommandId), u32>,
    /// Command → first time its filled ExecutionResult reached the core.
    pub confirmed_at: BTreeMap<CommandId, Instant>,
    /// Per (slave, trade): master_seq of each command placed, in order.
    pub order: BTreeMap<(usize, TradeId), Vec<u64>>,
    /// Intents a master gave up on (never accepted).
    pub gave_up: BTreeSet<IntentId>,
    /// Intents the core refused for good (non-retryable).
    pub refused: BTreeMap<IntentId, ErrorCode>,
    pub faults: BTreeMap<&'static str, u64>,
    /// Intent → the slaves its committed AcceptIntent planned a delivery for.
    pub plan: BTreeMap<IntentId, Vec<AccountId>>,
    pub busy_acks: u64,
    /// Command → how many times the core sent it (every life, reached the agent or not).
    pub sends: BTreeMap<CommandId, u32>,
    /// Send tag → the command it carried (tags number the core's Command sends).
    pub send_tags: BTreeMap<u64, CommandId>,
    /// Command → the tags of its sends the agent refused for a full table (agent T17) and
    /// whose refusal reached the core.
    pub busy_sends: BTreeMap<CommandId, BTreeSet<u64>>,
    /// The smallest `max_retries` the core ran with in this run.
    pub min_max_retries: u32,
}

impl World {
    pub(super) fn violation(&mut self, what: String) {
        if let Some(t) = &mut self.trace {
            let _ = writeln!(
                t,
                "{{\"type\":\"violation\",\"t_us\":{},\"what\":{}}}",
                self.now.0 / 1_000,
                json_str(&what)
            );
        }
        self.violations.push(Violation { at: self.now, what });
    }

    /// Every intent the core receives is answered, journaled, or already being journaled:
    /// explicit backpressure, never a silent drop.
    pub(super) fn check_answered(&mut self, id: &IntentId) {
        if self.answered.as_ref() == Some(id) {
            return;
        }
        let pending = self.journal.pending.values().any(
            |w| matches!(w, JournalWrite::AcceptIntent { intent, .. } if intent.intent_id == *id),
        ) || self.core.as_ref().is_some_and(|c| c.intent_persisting(id));
        if !pending {
            let v = format!("core neither answered nor journaled intent {id} (silent drop)");
            self.violation(v);
        }
    }

    pub(super) fn check_core_invariants(&mut self) {
        let Some(core) = self.core.as_ref() else {
            return;
        };
        let mut found = Vec::new();
        let max = core.router_config().queue_depth_max;
        if let Some(d) = core.queue_depths().iter().find(|d| **d > max) {
            found.push(format!(
                "router queue depth {d} above queue_depth_max {max}"
            ));
        }
        let mut live: BTreeMap<(AccountId, TradeId), u32> = BTreeMap::new();
        for v in core.delivery_views() {
            if v.state != "Blocked" {
                *live
                    .entry((v.slave.clone(), v.trade_id.clone()))
                    .or_insert(0) += 1;
            }
        }
        if let Some(((s, t), n)) = live.iter().find(|(_, n)| **n > 1) {
            found.push(format!("{n} live deliveries in the chain of {s}/{t}"));
        }
        for v in found {
            self.violation(v);
        }
    }

    /// Safety at the moment a slave sends an order to its broker.
    pub(super) fn on_place_order(&mut self, s: usize, command_id: &CommandId) {
        let n = self.book.placed.entry((s, command_id.clone())).or_insert(0);
        *n += 1;
        if *n > 1 {
            let v = format!("slave-{s} placed {command_id} twice");
            self.violation(v);
        }
        let intent = IntentId::new(command_id.as_str().split('@').next().unwrap_or(""));
        let Some(i) = self.journal.intents.get(&intent).cloned() else {
            let v = format!("slave-{s} executed {command_id} for an intent never journaled");
            self.violation(v);
            return;
        };
        if !self.journal.deliveries.contains_key(command_id) {
            let v = format!(
                "slave-{s} executed {command_id}, which no journaled plan of its intent holds (not subscribed at admission)"
            );
            self.violation(v);
        }
        let order = self.book.order.entry((s, i.trade_id.clone())).or_default();
        if order.last().is_some_and(|last| *last >= i.master_seq) {
            let v = format!(
                "slave-{s} got {command_id} (seq {}) after seq {:?} of trade {}",
                i.master_seq, order, i.trade_id
            );
            order.push(i.master_seq);
            self.violation(v);
            return;
        }
        order.push(i.master_seq);
    }

    /// Slave `s` placed leg `leg` (client order id `order_id`) of `command_id`: never the
    /// same leg twice (across crashes too); the first leg is the command's placement (order,
    /// journal, copy terms); an open's every leg is within the slave's min / max / step. The
    /// open volume of the trade when a partial close's first leg goes out is kept to judge
    /// the close on the position's total (`check_split_result`).
    pub(super) fn on_place_leg(
        &mut self,
        s: usize,
        command_id: &CommandId,
        leg: u32,
        order_id: &CommandId,
        body: &CommandBody,
    ) {
        if leg == 0 {
            self.check_open_terms(s, command_id, body);
            self.on_place_order(s, command_id);
            let trade = self.trade_of(command_id);
            let before: Vec<Volume> = self
                .positions
                .held
                .range((s, i64::MIN)..=(s, i64::MAX))
                .filter(|(_, h)| Some(&h.trade) == trade.as_ref())
                .map(|(_, h)| h.open)
                .collect();
            self.positions
                .split_before
                .insert((s, command_id.clone()), before);
        } else {
            let n = self.book.placed.entry((s, order_id.clone())).or_insert(0);
            *n += 1;
            if *n > 1 {
                let v = format!("slave-{s} placed leg {order_id} twice");
                self.violation(v);
            }
        }
        if let CommandBody::Execute { volume, .. } = body {
            let l = self.slave_limits(s);
            let v = Volume::from_lots(*volume).unwrap_or_default();
            if !l.is_tradable(v) {
                let v = format!(
                    "slave-{s} placed leg {order_id} of {volume} lots outside min {} max {} step {}",
                    l.min.lots(),
                    l.max.lots(),
                    l.step.lots()
                );
                self.violation(v);
            }
        }
    }

    /// Bookkeeping of a message from an agent at the moment the core receives it; `tag`
    /// is the core's send the agent answered with it (0: none).
    pub(super) fn check_to_core(&mut self, msg: &AgentToCore, tag: u64) {
        let now = self.now;
        if let AgentToCore::CommandAck(a) = msg {
            let busy = a.stage == AckStage::AgentBuffered
                && a.result == AckResult::Failed
                && a.error == Some(ErrorCode::BrokerBusy);
            if busy && self.book.send_tags.get(&tag) == Some(&a.command_id) {
                self.book
                    .busy_sends
                    .entry(a.command_id.clone())
                    .or_default()
                    .insert(tag);
            }
        }
        if let AgentToCore::ExecutionResult(r) = msg {
            self.on_result_reported(r);
            if r.status == BrokerStatus::Filled {
                self.book
                    .confirmed_at
                    .entry(r.command_id.clone())
                    .or_insert(now);
            }
        }
    }

    /// A copy the core gives up on (FAILED MAX_RETRIES) was tried at least `max_retries`
    /// times in ways the agent did not refuse for a full table: a busy agent is flow control
    /// and must never use up a copy's attempts (core.delivery.T40). Counted from the wire —
    /// every Command send of every core life, less the sends whose BROKER_BUSY refusal
    /// reached the core — against the smallest `max_retries` of the run. In a calm world
    /// (nothing lost or cut, [`super::calm_world`]) no copy may be given up on at all.
    pub(super) fn check_give_up(&mut self, command_id: &CommandId) {
        let sends = self.book.sends.get(command_id).copied().unwrap_or(0);
        let busy = self.book.busy_sends.get(command_id).map_or(0, |b| b.len()) as u32;
        let tried = sends.saturating_sub(busy);
        if self.calm {
            let v = format!(
                "{command_id} FAILED MAX_RETRIES in a calm world (no lost message, crash, storage or pipe failure: {sends} sends, {busy} refused BROKER_BUSY)"
            );
            self.violation(v);
        } else if tried < self.book.min_max_retries {
            let v = format!(
                "{command_id} FAILED MAX_RETRIES after {tried} tries the agent did not refuse as full ({sends} sends, {busy} refused BROKER_BUSY; max_retries never below {})",
                self.book.min_max_retries
            );
            self.violation(v);
        }
    }

    /// Safety of a message at the moment agent `agent` sends it to the core: AGENT_BUFFERED
    /// only for a command whose ledger record is durable. (Checked at sending: by the time the
    /// ack arrives, the agent may rightly have evicted a finished record.)
    pub(super) fn check_agent_sends(&mut self, agent: usize, msg: &AgentToCore) {
        if let AgentToCore::CommandAck(a) = msg {
            if a.stage == AckStage::AgentBuffered
                && a.result == AckResult::Ok
                && !self.ledgers[agent].contains_key(&a.command_id)
            {
                let m = format!(
                    "AGENT_BUFFERED for {} before its ledger write was durable",
                    a.command_id
                );
                self.violation(m);
            }
        }
    }

    /// Safety of a message from an EA at the moment its agent reads it from the pipe.
    pub(super) fn check_from_ea(&mut self, ea: Ea, msg: &EaToAgent) {
        if let EaToAgent::PipeAck(p) = msg {
            if let Ea::Slave(s) = ea {
                if p.status == PipeStatus::Ok && !self.slave_files[s].contains_key(&p.command_id) {
                    let m = format!(
                        "slave-{s} acked {} OK before its write-ahead was durable",
                        p.command_id
                    );
                    self.violation(m);
                }
            }
        }
    }

    /// Safety of a message from the agent at the moment master `m` reads it.
    pub(super) fn check_to_master(&mut self, m: usize, msg: &AgentToEa) {
        if let AgentToEa::IntentAck(a) = msg {
            if a.result == AckResult::Ok && !self.journal.intents.contains_key(&a.intent_id) {
                let v = format!(
                    "master-{m} got CORE_ACCEPTED for {} before it was journaled",
                    a.intent_id
                );
                self.violation(v);
            }
            if a.error == Some(ErrorCode::BrokerBusy) {
                self.book.busy_acks += 1;
            }
        }
    }

    /// The plan of an intent follows the subscriptions in force when the core admits it
    /// (`core.intake.T01`): one delivery per subscribed slave, each within its subscription's
    /// copy policy (see [`policy_violations`]). A retried write (`core.intake.T07`) carries
    /// the same plan.
    pub(super) fn check_admission(&mut self, intent: &TradeIntent, deliveries: &[DeliveryRecord]) {
        let got: Vec<AccountId> = deliveries.iter().map(|d| d.slave.clone()).collect();
        let mut bad = Vec::new();
        if self.last_fired == Some(ADMIT) {
            let subs = self.subscribed(&intent.master);
            if subs.len() != deliveries.len() {
                bad.push(format!(
                    "{} deliveries for {} subscribed slaves",
                    deliveries.len(),
                    subs.len()
                ));
            }
            for sub in subs {
                let Some(d) = deliveries.iter().find(|d| d.slave == sub.slave) else {
                    bad.push(format!("no delivery for subscribed {}", sub.slave));
                    continue;
                };
                bad.extend(policy_violations(sub, intent, d));
            }
            self.planned.insert(intent.intent_id.clone(), got);
        } else if let Some(p) = self.planned.get(&intent.intent_id) {
            if *p != got {
                bad.push(format!("a retried write planned {got:?}, the first {p:?}"));
            }
        }
        if !bad.is_empty() {
            let v = format!(
                "core planned intent {} against the subscriptions in force: {}",
                intent.intent_id,
                bad.join("; ")
            );
            self.violation(v);
        }
    }
}

impl World {
    /// Safety of an open at the moment slave `s` places it, against its copy terms and the
    /// facts its terminal reported (the world's copy, never the EA's) and the positions its
    /// broker holds: a slave-sized volume is tradable and on the step, never above the risk
    /// budget or the ratio's volume (unless `trade_min` opened the minimum), the free margin
    /// carries it, the exposure limits are never exceeded, and the price is within the
    /// deviation guard.
    pub(super) fn check_open_terms(&mut self, s: usize, id: &CommandId, body: &CommandBody) {
        let CommandBody::Execute {
            symbol,
            side,
            volume,
            price,
            stop_loss,
            terms,
            ..
        } = body
        else {
            return;
        };
        let mut bad = Vec::new();
        let limits = self.slave_limits(s);
        let acct = self.terminal.accounts[s];
        let v = Volume::from_lots(*volume).unwrap_or_default();
        let at_min = terms.trade_min && v == limits.min;
        let intent = IntentId::new(id.as_str().split('@').next().unwrap_or(""));
        let master_lots = self.journal.intents.get(&intent).map(|i| i.volume);
        let contract = if terms.master_contract_size > 0.0 {
            terms.master_contract_size / limits.contract_size
        } else {
            1.0
        };
        if terms.sizing != SlaveSizing::Final && !limits.is_tradable(v) {
            bad.push(format!(
                "sized {} outside min {} max {} step {}",
                volume,
                limits.min.lots(),
                limits.max.lots(),
                limits.step.lots()
            ));
        }
        let cap = match terms.sizing {
            SlaveSizing::Final => None,
            SlaveSizing::RiskPercent => {
                let budget = acct.equity * terms.sizing_value / 100.0;
                let risk = risk_of(v, *price, *stop_loss, &limits);
                if risk > budget * (1.0 + 1e-9) && !at_min {
                    bad.push(format!("risk {risk} above the budget {budget}"));
                }
                None
            }
            SlaveSizing::BalanceRatio => Some(acct.balance),
            SlaveSizing::EquityRatio => Some(acct.equity),
        };
        if let (Some(slave_amount), Some(lots)) = (cap, master_lots) {
            let want = lots * slave_amount / terms.master_amount * terms.sizing_value * contract;
            if v.lots() > want * (1.0 + 1e-9) && !at_min {
                bad.push(format!("ratio-sized {} above {want}", v.lots()));
            }
        }
        if terms.check_free_margin {
            let need = v.lots() * self.terminal.margin_per_lot[s];
            if need > acct.free_margin * (1.0 + 1e-9) {
                bad.push(format!(
                    "margin {need} above free margin {}",
                    acct.free_margin
                ));
            }
        }
        // Positions are trades: a split position's legs are one position.
        let mut trades = BTreeSet::new();
        let mut held_lots = Volume::ZERO;
        for (_, h) in self.positions.held.range((s, i64::MIN)..=(s, i64::MAX)) {
            trades.insert(h.trade.clone());
            held_lots = held_lots.saturating_add(h.open);
        }
        if terms.max_open_positions > 0 && trades.len() + 1 > terms.max_open_positions as usize {
            bad.push(format!(
                "a position beyond max_open_positions {} ({} held)",
                terms.max_open_positions,
                trades.len()
            ));
        }
        let total: f64 = held_lots.lots() + v.lots();
        if terms.max_total_lots > 0.0 && total > terms.max_total_lots + 1e-9 {
            bad.push(format!(
                "{total} lots beyond max_total_lots {}",
                terms.max_total_lots
            ));
        }
        if terms.max_deviation_points > 0 {
            match self.terminal.quote_of(symbol) {
                Some((bid, ask)) => {
                    let dev = deviation_points(*side, *price, bid, ask, limits.point);
                    if dev > f64::from(terms.max_deviation_points) + 1e-6 {
                        bad.push(format!(
                            "placed {dev} points from the master's fill, guard {}",
                            terms.max_deviation_points
                        ));
                    }
                }
                None => bad.push(format!("placed {symbol} with no quote reported")),
            }
        }
        if !bad.is_empty() {
            let v = format!(
                "slave-{s} placed {id} against its copy terms: {}",
                bad.join("; ")
            );
            self.violation(v);
        }
    }

    /// A refusal by the copy terms names a true reason: PRICE_DEVIATION only with the price
    /// beyond the guard at the moment the EA decided. A record retry (`ea.slave.T18`) writes
    /// a verdict taken earlier, when the price may have been elsewhere, so it is not judged
    /// against the quote of its own moment.
    ///
    /// Catch-up (SPEC.md §5.2): an open the core sent as a catch-up (`Execute.catch_up`, as
    /// the EA's write-ahead record holds it) is never refused PRICE_DEVIATION — beyond the
    /// guard it is EXPIRED — and the EA answers EXPIRED only for such an open, beyond the guard.
    pub(super) fn check_terms_refusal(&mut self, s: usize, id: &CommandId, r: &ExecutionResult) {
        let catch_up = match self.slave_files[s].get(id).map(|rec| &rec.command.body) {
            Some(CommandBody::Execute { catch_up, .. }) => Some(*catch_up),
            _ => None,
        };
        match (r.reason, catch_up) {
            (Some(ErrorCode::PriceDeviation), Some(true)) => {
                let v = format!(
                    "slave-{s} refused catch-up open {id} PRICE_DEVIATION: beyond the guard a \
                     catch-up is EXPIRED"
                );
                self.violation(v);
                return;
            }
            (Some(ErrorCode::Expired), Some(false)) => {
                let v = format!("slave-{s} refused live open {id} EXPIRED: it is no catch-up");
                self.violation(v);
                return;
            }
            _ => {}
        }
        // A trigger's refusal was decided when it went to the broker (`check_trigger`).
        let guard_reason = matches!(
            (r.reason, catch_up),
            (Some(ErrorCode::PriceDeviation), _) | (Some(ErrorCode::Expired), Some(true))
        );
        if !guard_reason
            || self.last_fired == Some(SLAVE_RECORD_RETRY)
            || self.last_fired == Some(SLAVE_TRIGGER_REFUSED)
        {
            return;
        }
        let Some((rec, max)) = self.guard_of(id) else {
            return;
        };
        let Some((bid, ask)) = self.terminal.quote_of(&rec.symbol) else {
            return;
        };
        let dev = deviation_points(rec.side, rec.price, bid, ask, self.slave_limits(s).point);
        if dev <= f64::from(max) + 1e-6 {
            let v = format!(
                "slave-{s} refused {id} {:?} at {dev} points, guard {max}",
                r.reason
            );
            self.violation(v);
        }
    }
}

impl World {
    /// An open reaches the slave EA with the master's facts its intent carried: a ratio-sized
    /// open's terms hold the master's balance (equity) exactly as reported — in every core
    /// life, since the facts are journaled with the intent (SPEC.md §5.2). A recovered open
    /// is then never refused ACCOUNT_FACTS_UNKNOWN for a fact the master did report.
    pub(super) fn check_terms_facts(&mut self, s: usize, command: &Command) {
        let (CommandBody::Execute { terms, .. } | CommandBody::PlacePending { terms, .. }) =
            &command.body
        else {
            return;
        };
        let Some(intent) = self.journal.intents.get(&command.intent_id) else {
            return;
        };
        // Read back after its subscription was removed: refused on purpose.
        if *terms == echo_statemachine::policy::terms::unsubscribed_terms() {
            return;
        }
        let reported = match terms.sizing {
            SlaveSizing::BalanceRatio => intent.origin.balance,
            SlaveSizing::EquityRatio => intent.origin.equity,
            SlaveSizing::Final | SlaveSizing::RiskPercent => return,
        };
        if terms.master_amount.to_bits() != reported.to_bits() {
            let v = format!(
                "slave-{s} got {} with {:?} terms for a master amount of {}, the master \
                 reported {reported}",
                command.command_id, terms.sizing, terms.master_amount
            );
            self.violation(v);
        }
    }

    /// A delivery as journaled, with its deviation guard (points; 0 = off).
    fn guard_of(&self, id: &CommandId) -> Option<(DeliveryRecord, u32)> {
        let rec = self.journal.deliveries.get(id).cloned()?;
        let max = self
            .journal
            .terms
            .get(id)
            .map_or(0, |t| t.max_deviation_points);
        Some((rec, max))
    }

    /// A trigger goes to the broker without its market fallback only when the deviation guard
    /// refuses a market open at this moment (its quote beyond the guard, or none reported).
    pub(super) fn check_trigger(&mut self, s: usize, id: &CommandId, body: &CommandBody) {
        let CommandBody::TriggerPending { market: false, .. } = body else {
            return;
        };
        let Some((rec, max)) = self.guard_of(id) else {
            return;
        };
        let refused = max > 0
            && match self.terminal.quote_of(&rec.symbol) {
                None => true,
                Some((bid, ask)) => {
                    let point = self.slave_limits(s).point;
                    deviation_points(rec.side, rec.price, bid, ask, point) > f64::from(max) + 1e-6
                }
            };
        if !refused {
            let v = format!(
                "slave-{s} sent trigger {id} without its market fallback, guard {max} admits it"
            );
            self.violation(v);
        }
    }
}

/// How one planned delivery breaks its subscription's copy policy, checked from the policy's
/// promises rather than by planning again: every non-copy names a policy reason (and
/// `SYMBOL_NOT_MAPPED` exactly where the mapping leaves the symbol out); a copy keeps the
/// mapped symbol; the side is the master's, mirrored exactly when the policy reverses; an
/// open's volume is on the slave's step, within its limits, and never above the master's
/// volume × multiplier unless the policy trades the minimum; reversed SL/TP at master prices
/// swap; a partial close carries the master's fraction unchanged; a close or modify is never skipped
/// for a policy reason other than the symbol.
pub(super) fn policy_violations(
    sub: &Subscription,
    intent: &TradeIntent,
    d: &DeliveryRecord,
) -> Vec<String> {
    let mut bad = Vec::new();
    let who = &d.slave;
    let mapped = sub.map_symbol(&intent.symbol);
    if d.status == DeliveryStatus::Failed {
        match d.reason.and_then(SkipReason::from_error_code) {
            None => bad.push(format!(
                "{who} not copied without a policy reason: {:?}",
                d.reason
            )),
            Some(r) => {
                // Filters run before mapping, so an unmapped symbol may be filtered first.
                if r == SkipReason::SymbolNotMapped && mapped.is_ok() {
                    bad.push(format!("{who} {r} but mapping says {mapped:?}"));
                }
                if !intent.kind.starts_trade() && r != SkipReason::SymbolNotMapped {
                    bad.push(format!("{who}: a {:?} skipped with {r}", intent.kind));
                }
                let f = &sub.policy.filters;
                let o = &intent.origin;
                // Each filter's reason only where that filter refuses the trade.
                let refuses = match r {
                    SkipReason::FilteredMagic => Some(
                        f.magic_deny.contains(&o.magic)
                            || (!f.magic_allow.is_empty() && !f.magic_allow.contains(&o.magic)),
                    ),
                    SkipReason::FilteredComment => Some(
                        f.comment_deny.iter().any(|p| glob(p, &o.comment))
                            || (!f.comment_allow.is_empty()
                                && !f.comment_allow.iter().any(|p| glob(p, &o.comment))),
                    ),
                    SkipReason::FilteredOrderType => {
                        // A placement's own type is filtered, whatever was reported beside it.
                        let t = intent.kind.placed_order_type().unwrap_or(o.order_type);
                        Some(!f.order_types.is_empty() && !f.order_types.contains(&t))
                    }
                    _ => None,
                };
                if refuses == Some(false) {
                    bad.push(format!("{who} {r} but its filter admits {o:?}"));
                }
            }
        }
        return bad;
    }
    if d.status != DeliveryStatus::Inflight || d.reason.is_some() {
        bad.push(format!("{who} planned {:?} {:?}", d.status, d.reason));
    }
    match &mapped {
        Ok(m) if *m != d.symbol => {
            bad.push(format!("{who} planned symbol {}, mapped {m}", d.symbol))
        }
        Err(r) => bad.push(format!("{who} copied although mapping says {r}")),
        _ => {}
    }
    let p = &sub.policy;
    let want_side = if p.reverse {
        opposite(intent.side)
    } else {
        intent.side
    };
    if d.side != want_side {
        bad.push(format!(
            "{who} side {:?}, reverse={} master {:?}",
            d.side, p.reverse, intent.side
        ));
    }
    let per_symbol = p.sizing.symbol_multiplier(&intent.symbol);
    let slave_sized = matches!(
        p.sizing_kind,
        SizingKind::BalanceRatio | SizingKind::EquityRatio | SizingKind::RiskPercent
    );
    if d.kind != mirror_pending(p.reverse, intent.kind) {
        bad.push(format!(
            "{who} planned {:?} for the master's {:?} (reverse={})",
            d.kind, intent.kind, p.reverse
        ));
    }
    match intent.kind {
        k if k.starts_trade() && slave_sized => {
            // The slave EA sizes from its own account: it must get the master's lots and terms.
            let sizing = d.terms.map(|t| t.sizing);
            if d.volume.to_bits() != intent.volume.to_bits()
                || sizing.is_none_or(|s| s == SlaveSizing::Final)
            {
                bad.push(format!(
                    "{who} slave-sized open planned {} lots, terms {sizing:?}",
                    d.volume
                ));
            }
        }
        IntentKind::Open | IntentKind::PlaceLimit | IntentKind::PlaceStop => {
            let l = &p.limits;
            let v = Volume::from_lots(d.volume).unwrap_or_default();
            // A split open may be above the maximum: its legs are each within the limits
            // (checked when placed). A pending order is one ticket: never above it.
            let split = p.sizing.above_max == AboveMax::Split && intent.kind == IntentKind::Open;
            let tradable = if split {
                v >= l.min && l.is_on_step(v)
            } else {
                l.is_tradable(v)
            };
            if !tradable {
                bad.push(format!(
                    "{who} volume {} outside min {} max {} step {}",
                    d.volume,
                    l.min.lots(),
                    l.max.lots(),
                    l.step.lots()
                ));
            }
            let cap = match p.sizing_kind {
                SizingKind::FixedLots => p.sizing_values.fixed_lots.lots() * per_symbol,
                _ => intent.volume * sub.multiplier * per_symbol,
            };
            let at_min = p.sizing.below_min == BelowMin::TradeMin && v == l.min;
            if d.volume > cap * (1.0 + 1e-9) && !at_min {
                bad.push(format!("{who} volume {} above the sized {cap}", d.volume));
            }
            if p.reverse
                && p.stops.0 == StopsMode::MasterPrice
                && (d.stop_loss != intent.take_profit || d.take_profit != intent.stop_loss)
            {
                bad.push(format!(
                    "{who} reversed SL/TP {}/{} do not mirror {}/{}",
                    d.stop_loss, d.take_profit, intent.stop_loss, intent.take_profit
                ));
            }
            if p.stops.0 == StopsMode::DontCopy && (d.stop_loss, d.take_profit) != (0.0, 0.0) {
                bad.push(format!("{who} copied SL/TP under dont_copy"));
            }
        }
        // The fraction, exactly as the master stated it: the slave applies it to its own
        // position (checked where its broker fills it, `positions`).
        IntentKind::PartialClose => {
            let got = (d.volume.to_bits(), d.master_volume_before.to_bits());
            let want = (
                intent.volume.to_bits(),
                intent.master_volume_before.to_bits(),
            );
            if got != want {
                bad.push(format!(
                    "{who} partial close {} of {}, the master's {} of {}",
                    d.volume, d.master_volume_before, intent.volume, intent.master_volume_before
                ));
            }
        }
        _ => {}
    }
    bad
}

/// The transition that admits an intent and plans its deliveries.
const ADMIT: &str = "core.intake.T01";
/// The slave EA writes a result it decided earlier once more (its first write failed).
const SLAVE_RECORD_RETRY: &str = "ea.slave.T18";
/// The slave EA records a trigger whose market fallback its guard refused earlier (T34).
const SLAVE_TRIGGER_REFUSED: &str = "ea.slave.T36";
