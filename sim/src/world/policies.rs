//! The copy policy of each subscription, drawn from the seed.
//!
//! This module owns which per-subscription policies a seed exercises: reverse copying, SL/TP
//! modes, symbol affix rules that leave a symbol unmapped, direction and symbol filters, fixed
//! multiplier sizing against drawn broker limits (with minimums the script's volumes fall
//! below), per-symbol multipliers, catch-up expiry short enough for a slave's absence to
//! outlast it, and the copy terms the slave EA applies (`policy::terms`): fixed-lot,
//! balance/equity-ratio and risk-% sizing, contract-size alignment, the free-margin check,
//! exposure limits the script's opens reach, the price-deviation guard (with and without a
//! wait window), magic / comment / order-type filters, and `above_max = split` against a
//! small broker maximum (split positions). It draws from its own stream (forked from the seed), so adding a policy setting
//! never shifts the fault schedule; it must never draw a setting the machines refuse.

use echo_statemachine::ids::Symbol;
use echo_statemachine::policy::filters::{Direction, OrderType};
use echo_statemachine::policy::sizing::{AboveMax, BelowMin};
use echo_statemachine::policy::stops::StopsMode;
use echo_statemachine::policy::subscription::{CopyPolicy, SizingKind};
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
    p.sizing_kind = match rng.below(10) {
        0 => SizingKind::FixedLots,
        1 => SizingKind::BalanceRatio,
        2 => SizingKind::EquityRatio,
        3 | 4 => SizingKind::RiskPercent,
        _ => SizingKind::Multiplier,
    };
    p.sizing_values.fixed_lots = Volume(step * rng.range(1, 50));
    p.sizing_values.ratio = rng.range(1, 3_000) as f64 / 1_000.0;
    // Up to 5 %: with the script's 1 000-point stop and 10 000 equity, 0.01–0.5 lots.
    p.sizing_values.risk_percent = rng.range(1, 50) as f64 / 10.0;
    p.sizing.align_contract_size = rng.chance(1, 4);
    if p.sizing.align_contract_size {
        // The master's lots are 1/10 or 10× the slave's broker's.
        p.limits.contract_size = [10_000.0, 100_000.0, 1_000_000.0][rng.below(3) as usize];
    }
    p.sizing.check_free_margin = rng.chance(1, 4);
    p.sizing.mode = p.sizing_values.mode(p.sizing_kind);
    if rng.chance(1, 3) {
        p.catch_up.max_age_ms = rng.range(300, 5_000);
    }
    if rng.chance(1, 3) {
        p.filters.max_open_positions = rng.range(1, 6) as u32;
    }
    if rng.chance(1, 3) {
        p.filters.max_total_lots = Volume(step * rng.range(1, 300));
    }
    if rng.chance(1, 3) {
        p.deviation.max_points = rng.range(1, 40) as u32;
        if rng.chance(1, 2) {
            p.deviation.retry_window_ms = rng.range(1, 2_000) as u32;
        }
    }
    match rng.below(8) {
        0 => {
            p.filters.magic_allow = [1, 2].into_iter().collect();
        }
        1 => {
            p.filters.magic_deny.insert(3);
        }
        2 => p.filters.comment_deny.push("scalp*".into()),
        3 => p.filters.comment_allow.push("grid #?".into()),
        4 => {
            p.filters.order_types = [OrderType::Market, OrderType::Limit].into_iter().collect();
        }
        _ => {}
    }
    // `sizing/above_max = split` against a maximum small enough that the script's volumes
    // exceed it (3 to 8 minimums: at least three, so partial closes of the legs add up
    // exactly, SPEC.md §5.2 "Split"). Drawn last: the settings above keep their draws.
    if rng.chance(1, 3) {
        p.sizing.above_max = AboveMax::Split;
        p.limits.max = Volume(p.limits.min.0 * rng.range(3, 8));
    }
    debug_assert!(p.validate("m", "s").is_ok());
    p
}
