//! Master side: intents from master EAs to the core, and the core's acks back.
//!
//! Owns the bounded table that remembers which master sent which forwarded intent (the
//! `TradeIntentAck` names no master). It must never keep an intent the core has not taken, and
//! never refuse one silently: every refusal is an `IntentAck FAILED` the master's durable
//! IntentQueue acts on.

use std::collections::{BTreeMap, HashMap};

use super::{AgentOutput, DeliveryManager, LinkState, T};
use crate::ids::{AccountId, IntentId, TradeId};
use crate::msg::{AckResult, AgentToCore, AgentToEa, ErrorCode, Role, TradeIntent, TradeIntentAck};
use crate::spec::Subject;
use crate::time::Instant;

#[derive(Debug)]
struct Route {
    order: u64,
    master: AccountId,
    trade_id: TradeId,
    at: Instant,
}

/// intent_id → master, oldest first by `order`.
#[derive(Debug, Default)]
pub(super) struct IntentRoutes {
    /// Lookups only, never iterated.
    by_id: HashMap<IntentId, Route>,
    /// Forwarding order; the only thing iterated.
    order: BTreeMap<u64, IntentId>,
    next: u64,
}

impl IntentRoutes {
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    fn master_of(&self, id: &IntentId) -> Option<&AccountId> {
        self.by_id.get(id).map(|r| &r.master)
    }

    fn oldest(&self) -> Option<(&IntentId, Instant)> {
        let (_, id) = self.order.first_key_value()?;
        self.by_id.get(id).map(|r| (id, r.at))
    }

    /// Remembers (or refreshes, for a master's re-send) a route as the newest.
    fn insert(&mut self, id: IntentId, master: AccountId, trade_id: TradeId, at: Instant) {
        self.remove(&id);
        let order = self.next;
        self.next += 1;
        self.order.insert(order, id.clone());
        self.by_id.insert(
            id,
            Route {
                order,
                master,
                trade_id,
                at,
            },
        );
    }

    fn remove(&mut self, id: &IntentId) -> Option<Route> {
        let r = self.by_id.remove(id)?;
        self.order.remove(&r.order);
        Some(r)
    }

    /// Empties the table, oldest first, as BROKER_BUSY answers to each master.
    pub(super) fn drain_busy(&mut self, retry_after_ms: u32) -> Vec<(AccountId, TradeIntentAck)> {
        let order = std::mem::take(&mut self.order);
        let mut answers = Vec::with_capacity(order.len());
        for (_, id) in order {
            if let Some(r) = self.by_id.remove(&id) {
                let ack = failed_ack(id, r.trade_id, ErrorCode::BrokerBusy, retry_after_ms);
                answers.push((r.master, ack));
            }
        }
        self.by_id.clear();
        answers
    }
}

fn failed_ack(
    intent_id: IntentId,
    trade_id: TradeId,
    error: ErrorCode,
    retry_after_ms: u32,
) -> TradeIntentAck {
    TradeIntentAck {
        intent_id,
        trade_id,
        result: AckResult::Failed,
        error: Some(error),
        retry_after_ms,
    }
}

impl DeliveryManager {
    pub(super) fn on_intent(&mut self, now: Instant, account: AccountId, i: TradeIntent) {
        let subject = Subject::Intent(i.intent_id.clone());
        if self.accounts.get(&account) != Some(&Role::Master) {
            return self.refuse_intent(T::T11, account, i, ErrorCode::UnknownAccount);
        }
        if i.master != account {
            return self.refuse_intent(T::T11, account, i, ErrorCode::ProtocolViolation);
        }
        if self.link != LinkState::Online {
            return self.refuse_intent(T::T09, account, i, ErrorCode::BrokerBusy);
        }
        match self.intents.master_of(&i.intent_id) {
            // Ids are unique per master only: one route per id at a time, the other waits.
            Some(m) if *m != account => {
                return self.refuse_intent(T::T10, account, i, ErrorCode::BrokerBusy);
            }
            Some(_) => {}
            None if self.intents.len() >= self.limits.max_intent_routes => {
                let expired = match self.intents.oldest() {
                    Some((id, at)) if now.saturating_since(at) >= self.limits.intent_route_ttl => {
                        Some(id.clone())
                    }
                    _ => None,
                };
                let Some(old) = expired else {
                    return self.refuse_intent(T::T10, account, i, ErrorCode::BrokerBusy);
                };
                self.fire(T::T14, Subject::Intent(old.clone()));
                self.intents.remove(&old);
                self.metrics.intent_routes_expired += 1;
            }
            None => {}
        }
        self.fire(T::T08, subject);
        self.intents
            .insert(i.intent_id.clone(), account, i.trade_id.clone(), now);
        self.metrics.intents_forwarded += 1;
        self.push(AgentOutput::ToCore(AgentToCore::Intent(i)));
    }

    fn refuse_intent(&mut self, t: T, account: AccountId, i: TradeIntent, error: ErrorCode) {
        self.fire(t, Subject::Intent(i.intent_id.clone()));
        let retry_after_ms = if error.is_retryable() {
            self.metrics.intents_refused += 1;
            self.config.retry_backoff_ms
        } else {
            self.metrics.intents_rejected += 1;
            0
        };
        let ack = failed_ack(i.intent_id, i.trade_id, error, retry_after_ms);
        self.push(AgentOutput::ToEa {
            account,
            msg: AgentToEa::IntentAck(ack),
        });
    }

    pub(super) fn on_intent_ack(&mut self, a: TradeIntentAck) {
        let subject = Subject::Intent(a.intent_id.clone());
        let Some(master) = self.intents.master_of(&a.intent_id).cloned() else {
            self.fire(T::T13, subject);
            self.metrics.acks_unroutable += 1;
            return;
        };
        self.fire(T::T12, subject);
        if a.result != AckResult::Pending {
            self.intents.remove(&a.intent_id);
        }
        self.push(AgentOutput::ToEa {
            account: master,
            msg: AgentToEa::IntentAck(a),
        });
    }
}
