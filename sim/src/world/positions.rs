//! The slave brokers' positions, and the trade-lifecycle checks made against them.
//!
//! This module owns what each simulated slave broker holds (ticket → trade and open volume)
//! and how an order changes it: an open makes a position; a partial close moves what it
//! leaves to a new ticket, as MT4 does, so a later modify or close must address that ticket;
//! a modify or close of a ticket the broker does not hold, or a close above the position, is
//! rejected. It checks the lifecycle from the policy's promises rather than by calling the
//! policy: a partial close closes the master's fraction of the slave's *own* position (rounded
//! down to the slave's step, everything when the rest would be below its minimum, nothing when
//! the share is below the minimum); what a slave reports closed adds up exactly to what it
//! opened once its master closed; no slave holds a position its master closed unless that
//! close failed with a reason that is true. It only observes the machines; it must never draw
//! from the run's generator.

use std::collections::{BTreeMap, BTreeSet};

use echo_statemachine::core::{DeliveryRecord, DeliveryStatus};
use echo_statemachine::ea::slave::BrokerOutcome;
use echo_statemachine::ids::{AccountId, CommandId, IntentId, TradeId};
use echo_statemachine::msg::{
    BrokerStatus, CloseFraction, Command, CommandBody, ErrorCode, ExecutionResult, IntentKind,
    PendingResolution, PendingType, Side,
};
use echo_statemachine::policy::reverse::{opposite, pending_type, rests_below};
use echo_statemachine::policy::{SkipReason, Volume};

use super::World;

/// The slave EA's transition for a modify/close of a ticket it holds no position for.
const SLAVE_NO_POSITION: &str = "ea.slave.T10";

/// One position a slave's broker holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// The master's trade id, lower-cased (the core's spelling).
    pub trade: String,
    pub open: Volume,
}

/// The brokers' books and the lifecycle bookkeeping of a run.
#[derive(Clone, Debug, Default)]
pub struct Positions {
    /// (slave, ticket) → what its broker holds under that ticket.
    pub held: BTreeMap<(usize, i64), Held>,
    /// (slave, trade) → (lots opened, lots closed) as the slave EA reported them to the core,
    /// the first report of each command only.
    pub reported: BTreeMap<(usize, String), (Volume, Volume)>,
    reported_cmds: BTreeSet<CommandId>,
    /// Closes a slave EA answered REJECTED without placing them: it held no such ticket.
    pub rejected_unplaced: BTreeSet<(usize, CommandId)>,
    /// Closes a slave answered FILLED with 0 lots without placing them: a partial close whose
    /// share it kept (below one step), or a close of a position it had already closed in full.
    pub kept: BTreeSet<(usize, CommandId)>,
    /// Opens the core told us were not copied (`core.delivery.T20`/`T25`/`T27`, or read back
    /// at recovery: `T37`), with the core life that knew it: that life must not answer the
    /// trade's later intents NO_POSITION.
    skipped_opens: BTreeMap<CommandId, u64>,
    /// (slave, lower-cased trade) → the command id of the trade's opening delivery (an OPEN
    /// or a placement) to that slave, as journaled.
    pub(super) openings: BTreeMap<(AccountId, String), CommandId>,
    /// (slave, ticket) → a pending order its broker holds (not filled yet).
    pub pending: BTreeMap<(usize, i64), Held>,
    /// (slave, trade) → positions its broker ever opened for the trade (an open, a pending
    /// order that filled on its own, a trigger's market fallback; not a partial close's
    /// ticket move): more than one is a second order for one master trade.
    created: BTreeMap<(usize, String), u32>,
    /// (slave, command) → the trade's open lots at the slave's broker when the command's
    /// first leg went out (a command on a split position, or a split open).
    pub split_before: BTreeMap<(usize, CommandId), Vec<Volume>>,
    /// (slave, trade) → lots of a pending order of the slave that filled on its own at its
    /// broker: the trade's open when no trigger ever reports one (its master's trigger was
    /// refused, e.g. malformed, so the position is known to the EA only as its pending order).
    pub self_filled: BTreeMap<(usize, String), Volume>,
}

/// What a partial close of `fraction` must close of a slave position of `open`, from the
/// promise of SPEC.md §5.2: the exact share rounded down to the step; everything when that
/// leaves less than the minimum (or the master closed everything); nothing when the share
/// is below the minimum. `None` if the fraction cannot be read.
fn promised_close(fraction: &CloseFraction, open: Volume) -> Option<Volume> {
    let before = Volume::from_lots(fraction.master_volume_before)?;
    let closed = Volume::from_lots(fraction.master_closed)?;
    let min = Volume::from_lots(fraction.slave_min)?;
    let step = Volume::from_lots(fraction.slave_step)?.0.max(1);
    if before.0 == 0 || closed >= before {
        return Some(open);
    }
    let exact = (u128::from(open.0) * u128::from(closed.0) / u128::from(before.0)) as u64;
    let floor = exact / step * step;
    Some(if floor >= open.0 || open.0 - floor < min.0 {
        open
    } else if floor < min.0 || floor == 0 {
        Volume::ZERO
    } else {
        Volume(floor)
    })
}

/// The core's transitions that decide (or learn) that an open was not copied: at intake,
/// expired, refused by the slave's copy terms, read back from the journal at recovery.
const NOT_COPIED: [&str; 4] = [
    "core.delivery.T20",
    "core.delivery.T25",
    "core.delivery.T27",
    "core.delivery.T37",
];

impl World {
    /// A transition the core fired: remembers which life of it skipped which open.
    pub(super) fn note_core_fired(&mut self, f: &echo_statemachine::spec::Fired) {
        if !NOT_COPIED.contains(&f.id()) {
            return;
        }
        if let echo_statemachine::spec::Subject::Command(c) = &f.subject {
            self.positions
                .skipped_opens
                .insert(c.clone(), self.core_epoch);
        }
    }

    /// The journaled opening delivery (an OPEN or a placement) of `trade` to `slave`.
    pub(super) fn opening_of(&self, slave: &AccountId, trade: &TradeId) -> Option<&DeliveryRecord> {
        let key = (slave.clone(), trade.as_str().to_lowercase());
        let id = self.positions.openings.get(&key)?;
        self.journal.deliveries.get(id)
    }

    /// The copy-policy reason the opening delivery of `trade` to `slave` ended FAILED with.
    fn skipped_open_reason(&self, slave: &AccountId, trade: &TradeId) -> Option<ErrorCode> {
        let open = self.opening_of(slave, trade)?;
        let reason = open
            .reason
            .filter(|r| SkipReason::from_error_code(*r).is_some());
        (open.status == DeliveryStatus::Failed).then_some(reason)?
    }

    /// A later command of a trade whose opening delivery to this slave the copy policy did
    /// not make (the core, or the slave's copy terms) never reaches the slave EA.
    pub(super) fn check_later_command_of_skipped_open(&mut self, s: usize, command: &Command) {
        if matches!(
            command.body,
            CommandBody::Execute { .. } | CommandBody::PlacePending { .. }
        ) {
            return;
        }
        if let Some(r) = self.skipped_open_reason(&command.slave, &command.trade_id) {
            let v = format!(
                "slave-{s} was sent {} although the trade's open was not copied ({r:?})",
                command.command_id
            );
            self.violation(v);
        }
    }

    /// A later intent of a trade whose open the copy policy did not make at that slave ends
    /// FAILED with the open's reason — or NO_POSITION when the core life that ended it never
    /// learnt of that open (an earlier life's skip of a trade no longer live at the restart:
    /// SPEC.md §5.2, checked by `check_no_position_noise`).
    pub(super) fn check_later_reason(&mut self, command_id: &CommandId, reason: Option<ErrorCode>) {
        let Some(d) = self.journal.deliveries.get(command_id) else {
            return;
        };
        if d.kind.starts_trade() || d.status != DeliveryStatus::Inflight {
            return;
        }
        let (slave, trade) = (d.slave.clone(), d.trade_id.clone());
        let Some(r) = self.skipped_open_reason(&slave, &trade) else {
            return;
        };
        if reason != Some(r) && reason != Some(ErrorCode::NoPosition) {
            let v = format!(
                "{command_id} FAILED {reason:?}: the trade's open at {slave} was not copied ({r:?}), \
                 its later intents carry that reason"
            );
            self.violation(v);
        }
    }

    /// `command_id` (a modify or close) ends NO_POSITION: wrong if the core life that ends it
    /// knew that the trade's open was not copied to that slave — it must say why (T26).
    pub(super) fn check_no_position_noise(&mut self, command_id: &CommandId) {
        let Some(d) = self.journal.deliveries.get(command_id) else {
            return;
        };
        let Some(open) = self.opening_of(&d.slave, &d.trade_id) else {
            return;
        };
        if self.positions.skipped_opens.get(&open.command_id) == Some(&self.core_epoch) {
            let v = format!(
                "{command_id} FAILED NO_POSITION although this core skipped its open {} ({:?}):                  it must end with the open's reason",
                open.command_id, open.reason
            );
            self.violation(v);
        }
    }

    /// The lower-cased trade of a command, from its journaled intent.
    pub(super) fn trade_of(&self, command_id: &CommandId) -> Option<String> {
        let intent = IntentId::new(command_id.as_str().split('@').next().unwrap_or(""));
        self.journal
            .intents
            .get(&intent)
            .map(|i| i.trade_id.as_str().to_lowercase())
    }

    /// The fraction slave `s` was asked to close by `command_id`, as its file holds it.
    fn fraction_of(&self, s: usize, command_id: &CommandId) -> Option<CloseFraction> {
        match &self.slave_files.get(s)?.get(command_id)?.command.body {
            CommandBody::ClosePart { fraction, .. } => Some(*fraction),
            _ => None,
        }
    }

    /// Slave `s`'s broker executes `body` (client order id `order_id`, of command
    /// `command_id`; `leg`: one broker step of a split) on its book. Like a real broker it
    /// refuses an order above its maximum volume per order: a split is really needed.
    pub(super) fn broker_fill(
        &mut self,
        s: usize,
        order_id: &CommandId,
        command_id: &CommandId,
        body: &CommandBody,
        leg: bool,
    ) -> BrokerOutcome {
        let reject = |why: &str| BrokerOutcome::Rejected { reason: why.into() };
        match body {
            CommandBody::Execute { volume, .. } => {
                let open = Volume::from_lots(*volume).unwrap_or_default();
                if open > self.slave_limits(s).max {
                    return reject("volume above the maximum per order");
                }
                self.next_ticket += 1;
                let ticket = self.next_ticket;
                let trade = self.trade_of(command_id).unwrap_or_default();
                // A split's legs are one position: only its first leg makes it.
                if order_id == command_id {
                    self.note_position_created(s, &trade, command_id.as_str());
                }
                self.positions
                    .held
                    .insert((s, ticket), Held { trade, open });
                BrokerOutcome::Filled {
                    ticket,
                    price: 1.1,
                    volume: *volume,
                }
            }
            CommandBody::Modify { slave_ticket, .. } => {
                if self.positions.held.contains_key(&(s, *slave_ticket)) {
                    BrokerOutcome::Filled {
                        ticket: *slave_ticket,
                        price: 1.1,
                        volume: 0.0,
                    }
                } else {
                    reject("no such position")
                }
            }
            CommandBody::Close {
                slave_ticket,
                volume,
            } => {
                let Some(held) = self.positions.held.get(&(s, *slave_ticket)).cloned() else {
                    return reject("no such position");
                };
                let want = if *volume == 0.0 {
                    held.open
                } else {
                    Volume::from_lots(*volume).unwrap_or_default()
                };
                if want > held.open || want.is_zero() {
                    return reject("volume above the position");
                }
                // A split position's partial close is judged on its total (on_slave_records).
                if let (Some(f), false) = (self.fraction_of(s, command_id), leg) {
                    self.check_partial(s, command_id, &f, held.open, want);
                }
                self.positions.held.remove(&(s, *slave_ticket));
                let left = held.open.saturating_sub(want);
                let ticket = if left.is_zero() {
                    *slave_ticket
                } else {
                    // What a partial close leaves lives on under a new ticket (MT4).
                    self.next_ticket += 1;
                    let t = self.next_ticket;
                    let trade = held.trade;
                    self.positions
                        .held
                        .insert((s, t), Held { trade, open: left });
                    t
                };
                BrokerOutcome::Filled {
                    ticket,
                    price: 1.1,
                    volume: want.lots(),
                }
            }
            CommandBody::ClosePart { .. } => {
                let v = format!("slave-{s} placed {command_id} without resolving its fraction");
                self.violation(v);
                reject("unresolved partial close")
            }
            CommandBody::PlacePending {
                side,
                order_type,
                volume,
                price,
                ..
            } => {
                self.check_pending_mirror(s, command_id, *side, *order_type, *price);
                self.next_ticket += 1;
                let ticket = self.next_ticket;
                let open = Volume::from_lots(*volume).unwrap_or_default();
                let trade = self.trade_of(command_id).unwrap_or_default();
                self.positions
                    .pending
                    .insert((s, ticket), Held { trade, open });
                BrokerOutcome::Filled {
                    ticket,
                    price: *price,
                    volume: *volume,
                }
            }
            CommandBody::ModifyPending { slave_ticket, .. } => {
                // A pending order, or the position it became on its own (SL/TP only).
                let k = (s, *slave_ticket);
                if self.positions.pending.contains_key(&k) || self.positions.held.contains_key(&k) {
                    BrokerOutcome::Filled {
                        ticket: *slave_ticket,
                        price: 1.1,
                        volume: 0.0,
                    }
                } else {
                    reject("no such order")
                }
            }
            CommandBody::ResolvePending {
                slave_ticket,
                resolution: PendingResolution::Cancel,
                ..
            } => {
                let k = (s, *slave_ticket);
                if self.positions.pending.remove(&k).is_some() {
                    BrokerOutcome::Filled {
                        ticket: *slave_ticket,
                        price: 0.0,
                        volume: 0.0,
                    }
                } else if let Some(held) = self.positions.held.remove(&k) {
                    // Filled on its own before the master cancelled: closed, as the master
                    // decided.
                    BrokerOutcome::Filled {
                        ticket: *slave_ticket,
                        price: 1.1,
                        volume: held.open.lots(),
                    }
                } else {
                    reject("no such order")
                }
            }
            CommandBody::ResolvePending { .. } => {
                let v = format!(
                    "slave-{s} sent {command_id} to its broker without converging the trigger"
                );
                self.violation(v);
                reject("unresolved trigger")
            }
            CommandBody::TriggerPending {
                slave_ticket,
                market,
                ..
            } => {
                let k = (s, *slave_ticket);
                if let Some(held) = self.positions.held.get(&k) {
                    // The slave's pending order filled on its own: it is the position.
                    return BrokerOutcome::Filled {
                        ticket: *slave_ticket,
                        price: 1.1,
                        volume: held.open.lots(),
                    };
                }
                let Some(p) = self.positions.pending.remove(&k) else {
                    return reject("no such order");
                };
                if !*market {
                    // Deleted, nothing opened: done, with no volume (a Rejected would say the
                    // pending order still rests).
                    return BrokerOutcome::Filled {
                        ticket: *slave_ticket,
                        price: 0.0,
                        volume: 0.0,
                    };
                }
                self.next_ticket += 1;
                let ticket = self.next_ticket;
                self.note_position_created(s, &p.trade, command_id.as_str());
                let volume = p.open.lots();
                self.positions.held.insert((s, ticket), p);
                BrokerOutcome::Filled {
                    ticket,
                    price: 1.1,
                    volume,
                }
            }
        }
    }

    /// One more position for (slave, trade) at its broker: a second one for one master trade
    /// is a violation (a pending order becomes exactly one position).
    fn note_position_created(&mut self, s: usize, trade: &str, why: &str) {
        let n = self
            .positions
            .created
            .entry((s, trade.to_string()))
            .or_insert(0);
        *n += 1;
        if *n > 1 {
            let v = format!("slave-{s} opened position #{n} for trade {trade} ({why}): one master trade, one slave position");
            self.violation(v);
        }
    }

    /// The workload: one slave's pending order fills on its own at its broker (same ticket,
    /// MT5's position id), before or without its master's trigger.
    pub(super) fn fill_a_pending_order(&mut self) {
        let n = self.positions.pending.len() as u64;
        if n == 0 {
            return;
        }
        let i = self.draw(super::faults::F::PendingFill).below(n) as usize;
        let Some(k) = self.positions.pending.keys().nth(i).copied() else {
            return;
        };
        let Some(p) = self.positions.pending.remove(&k) else {
            return;
        };
        self.fault(
            "pending_fill",
            format!(
                "slave-{} pending {} of {} filled at its broker",
                k.0, k.1, p.trade
            ),
        );
        let why = format!("pending {} filled", k.1);
        self.note_position_created(k.0, &p.trade, &why);
        self.positions
            .self_filled
            .insert((k.0, p.trade.clone()), p.open);
        self.positions.held.insert(k, p);
    }

    /// A placed pending order mirrors its master's: the master's price; the master's side and
    /// type, or — reversed — the opposite side with limit ↔ stop, so it rests on the same side
    /// of the market and fills at the same price move.
    fn check_pending_mirror(
        &mut self,
        s: usize,
        command_id: &CommandId,
        side: Side,
        order_type: PendingType,
        price: f64,
    ) {
        let intent = IntentId::new(command_id.as_str().split('@').next().unwrap_or(""));
        let Some(i) = self.journal.intents.get(&intent) else {
            return;
        };
        let Some(master_type) = pending_type(i.kind) else {
            let v = format!(
                "slave-{s} placed a pending order for {:?} intent {intent}",
                i.kind
            );
            self.violation(v);
            return;
        };
        let reverse = self.policies.get(s).is_some_and(|p| p.reverse);
        let (want_side, want_type) = if reverse {
            let t = match master_type {
                PendingType::Limit => PendingType::Stop,
                PendingType::Stop => PendingType::Limit,
            };
            (opposite(i.side), t)
        } else {
            (i.side, master_type)
        };
        if (side, order_type) != (want_side, want_type)
            || rests_below(side, order_type) != rests_below(i.side, master_type)
            || price.to_bits() != i.price.to_bits()
        {
            let v = format!(
                "slave-{s} placed {side:?} {order_type:?} at {price} for the master's {:?} {master_type:?} at {} (reverse={reverse})",
                i.side, i.price
            );
            self.violation(v);
        }
    }

    /// A partial close closes the master's fraction of the slave's own position.
    fn check_partial(
        &mut self,
        s: usize,
        command_id: &CommandId,
        f: &CloseFraction,
        open: Volume,
        closed: Volume,
    ) {
        let want = promised_close(f, open);
        if want != Some(closed) {
            let v = format!(
                "slave-{s} {command_id}: closed {} of its {} lots for the master's {} of {} \
                 (step {}, min {}): the promise is {:?}",
                closed.lots(),
                open.lots(),
                f.master_closed,
                f.master_volume_before,
                f.slave_step,
                f.slave_min,
                want.map(Volume::lots)
            );
            self.violation(v);
        }
    }

    /// Slave `s` records `result` for `command_id` (its PersistExecuted): a partial close
    /// kept without placing must be one whose share the promise keeps; a rejection of a
    /// command it never placed is remembered for the end-of-run check.
    pub(super) fn on_slave_records(
        &mut self,
        s: usize,
        command_id: &CommandId,
        r: &ExecutionResult,
    ) {
        self.check_split_result(s, command_id, r);
        let placed = self.book.placed.contains_key(&(s, command_id.clone()));
        // `ea.slave.T10`: answered as the broker would for a ticket the EA does not hold (a
        // query after a crash that finds no order is a different, true, rejection).
        if r.status == BrokerStatus::Rejected && self.last_fired == Some(SLAVE_NO_POSITION) {
            self.positions
                .rejected_unplaced
                .insert((s, command_id.clone()));
        }
        if r.status != BrokerStatus::Filled || placed || r.filled_volume != 0.0 {
            return;
        }
        let is_close = matches!(
            self.slave_files
                .get(s)
                .and_then(|f| f.get(command_id))
                .map(|rec| &rec.command.body),
            Some(CommandBody::Close { .. })
        );
        let fraction = self.fraction_of(s, command_id);
        if !(is_close || fraction.is_some()) || !self.positions.kept.insert((s, command_id.clone()))
        {
            return;
        }
        let held = self
            .positions
            .held
            .get(&(s, r.slave_ticket))
            .map(|h| h.open);
        match (fraction, held) {
            (Some(f), _) => {
                self.check_partial(s, command_id, &f, held.unwrap_or_default(), Volume::ZERO)
            }
            // "Already closed in full" must be true of the broker's book.
            (None, Some(open)) => {
                let v = format!(
                    "slave-{s} answered {command_id} as already closed, but its broker holds {} lots under ticket {}",
                    open.lots(),
                    r.slave_ticket
                );
                self.violation(v);
            }
            (None, None) => {}
        }
    }

    /// A split's result (SPEC.md §5.2 "Split"), against the broker's book: its legs are
    /// exactly the broker's tickets of the trade with their lots (none untracked, none
    /// invented); a complete split open's legs sum to the sized volume (a core-sized one: the
    /// journaled volume); a complete partial close by fraction closed exactly the promised
    /// share of the position's total, across its legs. An incomplete one
    /// (`SPLIT_INCOMPLETE`, a result found after a crash) must still name what is held.
    fn check_split_result(&mut self, s: usize, command_id: &CommandId, r: &ExecutionResult) {
        let Some(before_legs) = self.positions.split_before.remove(&(s, command_id.clone())) else {
            return;
        };
        let before = before_legs
            .iter()
            .fold(Volume::ZERO, |acc, v| acc.saturating_add(*v));
        let Some(trade) = self.trade_of(command_id) else {
            return;
        };
        let body = self
            .slave_files
            .get(s)
            .and_then(|f| f.get(command_id))
            .map(|rec| rec.command.body.clone());
        let held: BTreeMap<i64, Volume> = self
            .positions
            .held
            .range((s, i64::MIN)..=(s, i64::MAX))
            .filter(|(_, h)| h.trade == trade)
            .map(|((_, t), h)| (*t, h.open))
            .collect();
        let legs: BTreeMap<i64, Volume> = r
            .legs
            .iter()
            .map(|l| (l.ticket, Volume::from_lots(l.volume).unwrap_or_default()))
            .collect();
        let named_all = r.legs.len() >= 2
            || matches!(
                body,
                Some(
                    CommandBody::Close { .. }
                        | CommandBody::ClosePart { .. }
                        | CommandBody::Modify { .. }
                )
            );
        if r.status != BrokerStatus::Cancelled && named_all && legs != held {
            let v = format!(
                "slave-{s} {command_id}: its result names legs {:?}, its broker holds {:?} of trade {trade}",
                r.legs, held
            );
            self.violation(v);
        }
        if r.reason.is_some() || r.status != BrokerStatus::Filled {
            return;
        }
        let got = Volume::from_lots(r.filled_volume).unwrap_or_default();
        match body {
            Some(CommandBody::Execute { volume, terms, .. })
                if terms.sizing == echo_statemachine::msg::SlaveSizing::Final =>
            {
                let want = Volume::from_lots(volume).unwrap_or_default();
                if got != want {
                    let v = format!(
                        "slave-{s} {command_id}: its legs sum to {} lots, the core sized {}",
                        got.lots(),
                        want.lots()
                    );
                    self.violation(v);
                }
            }
            Some(CommandBody::ClosePart { fraction, .. }) => {
                // At most the promised share of the total; exactly it whenever one leg could
                // give it and keep the minimum (otherwise the orders round it down).
                let want = promised_close(&fraction, before);
                let min = Volume::from_lots(fraction.slave_min).unwrap_or_default();
                let exact = want.is_some_and(|w| {
                    w == before || before_legs.iter().any(|l| *l >= w.saturating_add(min))
                });
                let ok = match want {
                    Some(w) if exact => got == w,
                    Some(w) => got <= w,
                    None => false,
                };
                if !ok {
                    let v = format!(
                        "slave-{s} {command_id}: closed {} of a split position of {} lots for the master's {} of {}: the promise is {:?} (exact: {exact})",
                        got.lots(),
                        before.lots(),
                        fraction.master_closed,
                        fraction.master_volume_before,
                        want.map(Volume::lots)
                    );
                    self.violation(v);
                }
            }
            _ => {}
        }
    }

    /// Bookkeeping of an ExecutionResult at the moment the core receives it.
    pub(super) fn on_result_reported(&mut self, r: &ExecutionResult) {
        if r.status != BrokerStatus::Filled || self.positions.reported_cmds.contains(&r.command_id)
        {
            return;
        }
        let Some(s) = self.slave_accounts.iter().position(|a| *a == r.slave) else {
            return;
        };
        let (Some(d), Some(trade)) = (
            self.journal.deliveries.get(&r.command_id),
            self.trade_of(&r.command_id),
        ) else {
            return;
        };
        let kind = d.kind;
        self.positions.reported_cmds.insert(r.command_id.clone());
        let v = Volume::from_lots(r.filled_volume).unwrap_or_default();
        let e = self.positions.reported.entry((s, trade)).or_default();
        match kind {
            // A trigger's volume is the position it left (the pending's own fill, or the
            // market fallback); a placement opens nothing yet.
            IntentKind::Open | IntentKind::PendingTrigger => e.0 = e.0.saturating_add(v),
            IntentKind::PartialClose | IntentKind::Close | IntentKind::PendingCancel => {
                e.1 = e.1.saturating_add(v)
            }
            IntentKind::Modify
            | IntentKind::PlaceLimit
            | IntentKind::PlaceStop
            | IntentKind::PendingModify => {}
        }
    }

    /// End of run: positions left open against their master's close, closes that do not add
    /// up to the open, closes that failed without a true reason.
    pub fn lifecycle_inconsistencies(&self) -> Vec<String> {
        let mut bad = Vec::new();
        // (slave, trade) → its CLOSE delivery as journaled.
        let mut closes: BTreeMap<(usize, String), (&CommandId, DeliveryStatus, Option<ErrorCode>)> =
            BTreeMap::new();
        for d in self.journal.deliveries.values() {
            if d.kind != IntentKind::Close {
                continue;
            }
            let Some(s) = self.slave_accounts.iter().position(|a| *a == d.slave) else {
                continue;
            };
            let trade = d.trade_id.as_str().to_lowercase();
            closes.insert((s, trade), (&d.command_id, d.status, d.reason));
        }
        // A trigger that failed (broker rejection, the guard) leaves its trade unmanaged at
        // that slave, explicitly: the later intents address a ticket that never became a
        // position (SPEC.md §5.2, pending orders, known limits).
        let failed_triggers: BTreeSet<(usize, String)> = self
            .journal
            .deliveries
            .values()
            .filter(|d| d.kind == IntentKind::PendingTrigger && d.status == DeliveryStatus::Failed)
            .filter_map(|d| {
                let s = self.slave_accounts.iter().position(|a| *a == d.slave)?;
                Some((s, d.trade_id.as_str().to_lowercase()))
            })
            .collect();
        for ((s, ticket), held) in &self.positions.held {
            let Some((cmd, status, reason)) = closes.get(&(*s, held.trade.clone())) else {
                continue;
            };
            if failed_triggers.contains(&(*s, held.trade.clone())) {
                continue;
            }
            let holds = format!(
                "slave-{s} still holds {} lots of trade {} (ticket {ticket})",
                held.open.lots(),
                held.trade
            );
            match (status, reason) {
                (DeliveryStatus::Acked, _) => {
                    bad.push(format!("{holds} although its close {cmd} was confirmed"))
                }
                (DeliveryStatus::Failed, None) => {
                    bad.push(format!("{holds}: its close {cmd} FAILED without a reason"))
                }
                (DeliveryStatus::Failed, Some(ErrorCode::NoPosition)) => bad.push(format!(
                    "{holds}: its close {cmd} FAILED NO_POSITION (the core lost the ticket)"
                )),
                (DeliveryStatus::Failed, Some(_))
                    if self
                        .positions
                        .rejected_unplaced
                        .contains(&(*s, (*cmd).clone())) =>
                {
                    bad.push(format!(
                        "{holds}: its close {cmd} was addressed to a ticket the slave does not hold"
                    ))
                }
                _ => {}
            }
        }
        for ((s, trade), (cmd, status, _)) in &closes {
            if *status != DeliveryStatus::Acked {
                continue;
            }
            let (mut opened, closed) = self
                .positions
                .reported
                .get(&(*s, trade.clone()))
                .copied()
                .unwrap_or_default();
            if opened == Volume::default() {
                if let Some(v) = self.positions.self_filled.get(&(*s, trade.clone())) {
                    opened = *v;
                }
            }
            if opened != closed {
                bad.push(format!(
                    "slave-{s} trade {trade}: closes add up to {} lots, the open to {} (close {cmd})",
                    closed.lots(),
                    opened.lots()
                ));
            }
        }
        for d in self.journal.deliveries.values() {
            if d.status == DeliveryStatus::Failed && d.reason.is_none() {
                bad.push(format!("{} not copied without a reason", d.command_id));
            }
        }
        bad.extend(self.pending_inconsistencies());
        bad
    }

    /// End of run: no slave still holds a pending order its master cancelled or triggered,
    /// unless that command failed with a true reason (a broker rejection, the guard).
    fn pending_inconsistencies(&self) -> Vec<String> {
        let mut bad = Vec::new();
        // (slave, trade) → its master's cancel or trigger as journaled.
        let mut ends: BTreeMap<(usize, String), (&CommandId, DeliveryStatus, Option<ErrorCode>)> =
            BTreeMap::new();
        for d in self.journal.deliveries.values() {
            if !matches!(
                d.kind,
                IntentKind::PendingCancel | IntentKind::PendingTrigger
            ) {
                continue;
            }
            let Some(s) = self.slave_accounts.iter().position(|a| *a == d.slave) else {
                continue;
            };
            let trade = d.trade_id.as_str().to_lowercase();
            ends.insert((s, trade), (&d.command_id, d.status, d.reason));
        }
        for ((s, ticket), p) in &self.positions.pending {
            let Some((cmd, status, reason)) = ends.get(&(*s, p.trade.clone())) else {
                continue;
            };
            let holds = format!(
                "slave-{s} still holds pending order {ticket} ({} lots) of trade {}",
                p.open.lots(),
                p.trade
            );
            match (status, reason) {
                (DeliveryStatus::Acked, _) => {
                    bad.push(format!("{holds} although its master's {cmd} was confirmed"))
                }
                (DeliveryStatus::Failed, None | Some(ErrorCode::NoPosition)) => bad.push(format!(
                    "{holds}: its master's {cmd} FAILED {reason:?} (ticket lost)"
                )),
                _ => {}
            }
        }
        bad
    }

    /// Whether slave `s` answered close `cmd` FILLED with 0 lots without placing it (a kept
    /// share, or a position it had already closed in full).
    pub fn kept_share(&self, s: usize, cmd: &CommandId) -> bool {
        self.positions.kept.contains(&(s, cmd.clone()))
    }
}
