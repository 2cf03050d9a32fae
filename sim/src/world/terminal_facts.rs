//! What each slave's terminal reports to its EA: its account, its broker's symbol info and a
//! price that drifts (price jumps), so the slave-side copy terms (`policy::terms`) have facts
//! to size from and the price-deviation guard something to refuse.
//!
//! This module owns the world's own copy of those facts (the checkers read it, never the EA's)
//! and when they reach a slave EA: all of them whenever it (re)starts, a quote whenever a price
//! jumps. Draws come from its own streams (forked from the seed), so they never shift the fault
//! schedule. It must never decide a fault and never read a machine's state.

use echo_statemachine::ea::slave::Fact;
use echo_statemachine::ids::Symbol;
use echo_statemachine::policy::terms::{AccountFacts, SymbolFacts};
use echo_statemachine::policy::SymbolLimits;

use super::nodes::SlaveM;
use super::World;
use crate::rng::Rng;

/// The master's fill of every scripted trade (`workload::build_script`).
pub const MASTER_PRICE: f64 = 1.1;
/// Largest drift of a price from the master's fill, in points.
const MAX_DRIFT: i64 = 120;
const BASES: [&str; 3] = ["EURUSD", "GBPUSD", "USDJPY"];

/// Per-run market of the slaves' terminals.
#[derive(Clone, Debug)]
pub struct TerminalFacts {
    pub accounts: Vec<AccountFacts>,
    pub margin_per_lot: Vec<f64>,
    /// Drift of each base symbol's mid price from [`MASTER_PRICE`], in points.
    pub drift: [i64; 3],
    /// Chance per 100 ms that a price jumps (‰); 0 in fault-free worlds.
    pub jump_rate: u64,
    rng: Rng,
}

impl TerminalFacts {
    pub fn draw(seed: u64, slaves: usize, faults: bool) -> TerminalFacts {
        let mut rng = Rng::new(seed ^ 0x7E2F_AC75_u64);
        let accounts = (0..slaves)
            .map(|_| {
                let balance = rng.range(2_000, 40_000) as f64;
                let equity = balance * rng.range(70, 110) as f64 / 100.0;
                AccountFacts {
                    balance,
                    equity,
                    free_margin: equity * rng.range(5, 100) as f64 / 100.0,
                }
            })
            .collect();
        let margin_per_lot = (0..slaves).map(|_| rng.range(50, 3_000) as f64).collect();
        let jump_rate = if faults && rng.chance(3, 4) {
            rng.range(20, 400)
        } else {
            0
        };
        TerminalFacts {
            accounts,
            margin_per_lot,
            drift: [0; 3],
            jump_rate,
            rng,
        }
    }

    /// (bid, ask) of `base` now: a one-point spread around the drifted mid.
    pub fn quote(&self, base: usize) -> (f64, f64) {
        let point = SymbolLimits::fx().point;
        let mid = MASTER_PRICE + self.drift[base] as f64 * point;
        (mid - point, mid + point)
    }

    /// The quote of a slave symbol (mapped names keep their base as a prefix).
    pub fn quote_of(&self, symbol: &Symbol) -> Option<(f64, f64)> {
        base_of(symbol).map(|b| self.quote(b))
    }
}

fn base_of(symbol: &Symbol) -> Option<usize> {
    BASES.iter().position(|b| symbol.as_str().starts_with(b))
}

/// Every name a slave may trade a base symbol under: its own, the affix rule's (`.m`) and the
/// symbol map's (`.s`) — see `policies` and `workload`.
fn names(base: &str) -> [Symbol; 3] {
    [
        Symbol::new(base),
        Symbol::new(format!("{base}.m")),
        Symbol::new(format!("{base}.s")),
    ]
}

impl World {
    /// The slave's broker limits: its drawn policy's (the world's single truth for both the
    /// core's configured `limits/*` and the terminal's symbol info).
    pub(super) fn slave_limits(&self, s: usize) -> SymbolLimits {
        self.policies.get(s).map(|p| p.limits).unwrap_or_default()
    }

    /// The terminal of slave `s` reports everything (on every start of its EA).
    pub(super) fn report_all_facts(&mut self, s: usize) {
        let now = self.now;
        let limits = self.slave_limits(s);
        let account = self.terminal.accounts[s];
        let margin_per_lot = self.terminal.margin_per_lot[s];
        let quotes: Vec<(Symbol, (f64, f64))> = (0..BASES.len())
            .flat_map(|b| {
                let q = self.terminal.quote(b);
                names(BASES[b]).into_iter().map(move |n| (n, q))
            })
            .collect();
        let Some(ea) = self.slaves[s].as_mut() else {
            return;
        };
        ea.handle_fact(now, Fact::Account(account));
        for (symbol, (bid, ask)) in quotes {
            ea.handle_fact(
                now,
                Fact::Symbol(
                    symbol.clone(),
                    SymbolFacts {
                        limits,
                        margin_per_lot,
                    },
                ),
            );
            ea.handle_fact(now, Fact::Quote { symbol, bid, ask });
        }
        self.drain::<SlaveM>(s, "terminal facts");
    }

    /// One tick of the market (fault phase): maybe a price jumps, and every live slave EA
    /// sees the new quote.
    pub(super) fn market_tick(&mut self) {
        if self.terminal.jump_rate == 0 || !self.terminal.rng.chance(self.terminal.jump_rate, 1_000)
        {
            return;
        }
        let base = self.terminal.rng.below(BASES.len() as u64) as usize;
        let size = self.terminal.rng.range(1, 60) as i64;
        let up = self.terminal.rng.chance(1, 2);
        let d = &mut self.terminal.drift[base];
        *d = (*d + if up { size } else { -size }).clamp(-MAX_DRIFT, MAX_DRIFT);
        self.fault(
            "price_jump",
            format!(
                "{} drifts to {} points",
                BASES[base], self.terminal.drift[base]
            ),
        );
        self.report_quote(base);
    }

    /// Healing: every price returns to the master's fill.
    pub(super) fn market_heal(&mut self) {
        for b in 0..BASES.len() {
            if self.terminal.drift[b] != 0 {
                self.terminal.drift[b] = 0;
                self.report_quote(b);
            }
        }
    }

    fn report_quote(&mut self, base: usize) {
        let now = self.now;
        let (bid, ask) = self.terminal.quote(base);
        for s in 0..self.slaves.len() {
            let Some(ea) = self.slaves[s].as_mut() else {
                continue;
            };
            for symbol in names(BASES[base]) {
                ea.handle_fact(now, Fact::Quote { symbol, bid, ask });
            }
            self.drain::<SlaveM>(s, "quote");
        }
    }
}
