//! The copy policy of each subscription, drawn from the seed.
//!
//! This module owns which per-subscription policies a seed exercises: reverse copying, SL/TP
//! modes, symbol affix rules that leave a symbol unmapped, direction and symbol filters, fixed
//! multiplier sizing against drawn broker limits (with minimums the script's volumes fall
//! below), per-symbol multipliers, and catch-up expiry short enough for a slave's absence to
//! outlast it. It draws from its own stream (forked from the seed), so adding a policy setting
//! never shifts the fault schedule; it must never draw a setting the machines refuse.

use echo_statemachine::ids::Symbol;
use echo_statemachine::policy::filters::Direction;
use echo_statemachine::policy::sizing::BelowMin;
use echo_statemachine::policy::stops::StopsMode;
use echo_statemachine::policy::subscription::CopyPolicy;
use echo_statemachine::policy::volume::UNITS_PER_LOT;
use echo_statemachine::policy::Volume;

use crate::rng::Rng;

/// One drawn policy per slave.
pub fn draw(seed: u64, slaves: usize) -> Vec<CopyPolicy> {
    let mut rng = Rng::new(seed ^ 0x90_11C7_5EED_u64);
    (0..slaves).map(|_| one(&mut rng)).collect()
}

fn one(rng: &mut Rng) -> CopyPolicy {
    let mut p = CopyPolicy {
        reverse: rng.chance(1, 4),
        ..CopyPolicy::default()
    };
    p.stops.0 = match rng.below(6) {
        0 => StopsMode::DontCopy,
        1 => StopsMode::SameDistance,
        2 => StopsMode::FixedDistance {
            sl_points: rng.range(50, 500) as u32,
            tp_points: rng.below(500) as u32,
        },
        _ => StopsMode::MasterPrice,
    };
    if rng.chance(1, 6) {
        // EURUSD → EURUSD.m, GBPUSD → GBPUSD.m; USDJPY has no USD suffix: SYMBOL_NOT_MAPPED.
        p.symbols.strip_suffix = "USD".into();
        p.symbols.add_suffix = "USD.m".into();
    }
    match rng.below(8) {
        0 => p.filters.direction = Direction::BuyOnly,
        1 => p.filters.direction = Direction::SellOnly,
        2 => {
            p.filters.symbols_deny.insert(Symbol::new("GBPUSD"));
        }
        _ => {}
    }
    // Broker limits: steps of 0.01, 0.1 or 1 lot; a maximum the script's volumes can exceed.
    let step = [UNITS_PER_LOT / 100, UNITS_PER_LOT / 10, UNITS_PER_LOT][rng.below(3) as usize];
    p.limits.step = Volume(step);
    p.limits.min = Volume(step * rng.range(1, 3));
    p.limits.max = Volume(p.limits.min.0.max(step * rng.range(1, 400)));
    p.sizing.below_min = if rng.chance(1, 2) {
        BelowMin::Skip
    } else {
        BelowMin::TradeMin
    };
    if rng.chance(1, 5) {
        p.sizing
            .symbol_multipliers
            .insert(Symbol::new("EURUSD"), rng.range(1, 2_000) as f64 / 1_000.0);
    }
    p.sizing.mode = p.sizing_values.mode(p.sizing_kind);
    if rng.chance(1, 3) {
        p.catch_up.max_age_ms = rng.range(300, 5_000);
    }
    debug_assert!(p.validate("m", "s").is_ok());
    p
}
