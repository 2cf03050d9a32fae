//! The workload: what the masters trade. Every master runs a script of trade lifecycles
//! (open → modify → partial close → close, four trades interleaved, across symbols), its trade
//! ids carrying a checksum of their index and alternating letter case, emitted at a steady pace
//! and in bursts.
//!
//! This module owns what the terminals do. It must never bypass a master's IntentQueue and
//! never decide a fault.

use echo_statemachine::ids::{AccountId, IntentId, Symbol, TradeId};
use echo_statemachine::msg::*;
use echo_statemachine::time::Duration;

use super::nodes::MasterM;
use super::{Ev, World};

const KINDS: [IntentKind; 4] = [
    IntentKind::Open,
    IntentKind::Modify,
    IntentKind::PartialClose,
    IntentKind::Close,
];

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
        if q.is_full() {
            return;
        }
        let Some(intent) = self.script[m].get(self.script_pos[m]).cloned() else {
            return;
        };
        self.script_pos[m] += 1;
        if self.master_files[m].contains_key(&intent.intent_id)
            || self.book.emitted.contains_key(&intent.intent_id)
        {
            return; // durable already: recovery re-queued it
        }
        self.unappended[m].insert(intent.intent_id.clone());
        if q.handle_emit(now, intent).is_err() {
            self.script_pos[m] -= 1;
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
    let total = trades * 4;
    let mut pos = 0;
    while out.len() < total {
        // Interleave 4 trades at a time: t0.open t1.open t2.open t3.open t0.modify …
        let group = pos / 16;
        let within = pos % 16;
        pos += 1;
        let trade = group * 4 + within % 4;
        let step = within / 4;
        if trade >= trades {
            continue;
        }
        let seq = out.len() as u64;
        out.push(TradeIntent {
            intent_id: IntentId::new(format!("m{m}-i{seq}")),
            // Odd steps spell the trade id in lower case: one trade, two spellings.
            trade_id: if step % 2 == 1 {
                TradeId::new(trade_id(m, trade).as_str().to_lowercase())
            } else {
                trade_id(m, trade)
            },
            master: master.clone(),
            kind: KINDS[step],
            symbol: Symbol::new(["EURUSD", "GBPUSD", "USDJPY"][trade % 3]),
            side: if trade.is_multiple_of(2) {
                Side::Buy
            } else {
                Side::Sell
            },
            volume: if KINDS[step] == IntentKind::PartialClose {
                0.5
            } else {
                1.0
            },
            price: 1.1,
            stop_loss: 1.0 + step as f64 * 0.01,
            take_profit: 1.3,
            master_ticket: trade as i64,
            master_seq: seq,
            emitted_at_ms: 0,
        });
    }
    out
}
