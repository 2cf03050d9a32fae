//! Property tests of the copy policy's pure decisions (`echo_statemachine::policy`): sizing
//! never breaks the slave broker's limits or the risk budget, partial closes by fraction add
//! up exactly to the position, symbol mapping never guesses, reversal mirrors, and catch-up
//! never drops a close.

use std::collections::{BTreeMap, BTreeSet};

use echo_statemachine::ids::Symbol;
use echo_statemachine::msg::CloseFraction;
use echo_statemachine::msg::{IntentKind, Side};
use echo_statemachine::policy::catchup::{self, CatchUpPolicy};
use echo_statemachine::policy::partial::{
    fraction_limits, partial_close, slave_close, CloseDecision,
};
use echo_statemachine::policy::reverse::mirror;
use echo_statemachine::policy::sizing::{
    risk_budget, risk_of, size, AboveMax, BelowMin, SizingFacts, SizingMode, SizingPolicy,
    MAX_SPLIT_LEGS,
};
use echo_statemachine::policy::stops::{slave_stops, StopsFacts, StopsMode};
use echo_statemachine::policy::symbols::SymbolMapping;
use echo_statemachine::policy::{SkipReason, SymbolLimits, Volume};
use proptest::prelude::*;

const LOT: u64 = echo_statemachine::policy::volume::UNITS_PER_LOT;

/// Broker limits as brokers publish them: step 0.001 – 1 lot, min and max multiples of it.
fn limits() -> impl Strategy<Value = SymbolLimits> {
    (
        prop_oneof![Just(LOT / 1000), Just(LOT / 100), Just(LOT / 10), Just(LOT)],
        1u64..20,
        1u64..5_000,
        prop_oneof![Just(1.0), Just(100.0), Just(10_000.0), Just(100_000.0)],
        prop_oneof![Just(0.00001), Just(0.001), Just(0.01)],
        0.01f64..20.0,
    )
        .prop_map(
            |(step, min_steps, span, contract_size, tick_size, tick_value)| {
                let min = Volume(step * min_steps);
                SymbolLimits {
                    min,
                    max: Volume(min.0 + step * span),
                    step: Volume(step),
                    contract_size,
                    tick_size,
                    tick_value,
                    point: tick_size,
                }
            },
        )
}

fn mode() -> impl Strategy<Value = SizingMode> {
    prop_oneof![
        (1u64..100 * LOT).prop_map(|u| SizingMode::FixedLots(Volume(u))),
        (0.001f64..50.0).prop_map(SizingMode::Multiplier),
        (0.001f64..50.0).prop_map(SizingMode::BalanceRatio),
        (0.001f64..50.0).prop_map(SizingMode::EquityRatio),
        (0.01f64..100.0).prop_map(SizingMode::RiskPercent),
    ]
}

fn policy() -> impl Strategy<Value = SizingPolicy> {
    (
        mode(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(0.01f64..10.0),
    )
        .prop_map(|(mode, trade_min, split, align, margin, per_symbol)| {
            let mut symbol_multipliers = BTreeMap::new();
            if let Some(m) = per_symbol {
                symbol_multipliers.insert(Symbol::new("EURUSD"), m);
            }
            SizingPolicy {
                mode,
                symbol_multipliers,
                align_contract_size: align,
                below_min: if trade_min {
                    BelowMin::TradeMin
                } else {
                    BelowMin::Skip
                },
                above_max: if split {
                    AboveMax::Split
                } else {
                    AboveMax::Cap
                },
                check_free_margin: margin,
            }
        })
}

fn facts() -> impl Strategy<Value = SizingFacts> {
    (
        limits(),
        0u64..500 * LOT,
        (
            1.0f64..1e7,
            1.0f64..1e7,
            0.0f64..1e7,
            0.0f64..1e7,
            0.0f64..1e7,
        ),
        0.0f64..5_000.0,
        (0.5f64..2_000.0, 0.0f64..0.2),
        prop_oneof![Just(1.0), Just(100_000.0)],
    )
        .prop_map(
            |(limits, mv, (mb, me, sb, se, fm), mpl, (entry, dist), mcs)| SizingFacts {
                symbol: Symbol::new("EURUSD"),
                master_volume: Volume(mv),
                master_contract_size: mcs,
                master_balance: mb,
                master_equity: me,
                slave_balance: sb,
                slave_equity: se,
                slave_free_margin: fm,
                margin_per_lot: mpl,
                entry,
                // dist 0 stands for "no stop-loss".
                stop_loss: if dist == 0.0 {
                    0.0
                } else {
                    entry * (1.0 - dist)
                },
                limits,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// Every leg is an order the broker takes; the total never exceeds the maximum unless the
    /// policy splits, never falls below the minimum, and never exceeds the risk budget unless
    /// the policy says trade the minimum.
    #[test]
    fn sizing_respects_limits_step_and_risk(p in policy(), f in facts()) {
        let l = f.limits;
        match size(&p, &f) {
            Ok(sized) => {
                prop_assert!(!sized.legs.is_empty());
                prop_assert!(sized.legs.len() <= MAX_SPLIT_LEGS);
                for leg in &sized.legs {
                    prop_assert!(l.is_tradable(*leg), "leg {leg:?} outside {l:?}");
                }
                if p.above_max == AboveMax::Cap {
                    prop_assert_eq!(sized.legs.len(), 1);
                }
                if let SizingMode::RiskPercent(pct) = p.mode {
                    let risk = risk_of(sized.total(), f.entry, f.stop_loss, &l);
                    let budget = risk_budget(pct, &f);
                    let at_min = sized.total() == l.min && p.below_min == BelowMin::TradeMin;
                    prop_assert!(at_min || risk <= budget * (1.0 + 1e-9) + 1e-9,
                        "risk {risk} above budget {budget}");
                }
                if p.check_free_margin {
                    prop_assert!(sized.total().lots() * f.margin_per_lot <= f.slave_free_margin + 1e-9);
                }
            }
            Err(SkipReason::VolumeBelowMin) => {
                // Skipping is only allowed when the policy says so — or when there was
                // nothing to trade at all.
                prop_assert!(p.below_min == BelowMin::Skip || f.master_volume.is_zero()
                    || matches!(p.mode, SizingMode::BalanceRatio(_) | SizingMode::EquityRatio(_) | SizingMode::RiskPercent(_)));
            }
            Err(SkipReason::NoStopLoss) => {
                prop_assert!(matches!(p.mode, SizingMode::RiskPercent(_)));
            }
            Err(SkipReason::InsufficientMargin) => prop_assert!(p.check_free_margin),
            Err(other) => prop_assert!(false, "unexpected reason {other}"),
        }
    }

    /// Multiplier sizing never rounds up: the total is the exact product rounded down to the
    /// step (to the nearest 10⁻⁸ lot first), capped or split — and a split loses nothing when
    /// the limits allow it.
    #[test]
    fn multiplier_rounds_down_to_the_step(l in limits(), mv in 1u64..500 * LOT, m in 0.01f64..20.0, split in any::<bool>()) {
        let p = SizingPolicy {
            mode: SizingMode::Multiplier(m),
            above_max: if split { AboveMax::Split } else { AboveMax::Cap },
            ..SizingPolicy::default()
        };
        let f = SizingFacts {
            symbol: Symbol::new("X"),
            master_volume: Volume(mv),
            master_contract_size: 1.0,
            master_balance: 1.0,
            master_equity: 1.0,
            slave_balance: 1.0,
            slave_equity: 1.0,
            slave_free_margin: 0.0,
            margin_per_lot: 0.0,
            entry: 1.0,
            stop_loss: 0.0,
            limits: l,
        };
        let want = l.floor_to_step(Volume::from_lots(Volume(mv).lots() * m).unwrap());
        match size(&p, &f) {
            Ok(s) => {
                prop_assert!(s.total() <= want);
                let fits = l.max.0 >= 2 * l.min.0 && want.0 / l.max.0 < MAX_SPLIT_LEGS as u64;
                if split && fits {
                    prop_assert_eq!(s.total(), want);
                } else if !split {
                    prop_assert_eq!(s.total(), want.min(l.max));
                }
            }
            Err(r) => {
                prop_assert_eq!(r, SkipReason::VolumeBelowMin);
                prop_assert!(want < l.min);
            }
        }
    }

    /// Successive partial closes, each a fraction of what is left, then a final close: the
    /// slave never closes more than it holds, never leaves a remainder below its minimum,
    /// never closes more than the master's fraction of its position, and everything it closed
    /// adds up exactly to the position it opened.
    #[test]
    fn partial_closes_sum_exactly_to_the_position(
        l in limits(),
        slave_steps in 1u64..10_000,
        master_units in 2u64..1_000 * LOT,
        cuts in prop::collection::vec(1u64..1_000, 0..12),
    ) {
        if let Err(e) = partial_sequence(&l, slave_steps, master_units, &cuts) {
            prop_assert!(false, "{}", e);
        }
    }

    /// What the slave EA decides from the lots on the wire (`ClosePart`) is the integer
    /// decision for the same volumes: lots survive the wire exactly, the limits keep the
    /// slave's minimum and step, and a fraction that cannot be evaluated (zero, negative or
    /// non-finite lots, a zero step) is refused (`None`) rather than guessed.
    #[test]
    fn a_close_fraction_on_the_wire_decides_as_the_integer_policy(
        l in limits(),
        slave_steps in 1u64..10_000,
        master_units in 2u64..1_000 * LOT,
        cut in 1u64..1_000,
        spoil in 0u8..6,
    ) {
        let before = Volume(master_units);
        let closed = Volume((master_units * cut / 1_000).max(1));
        let slave_open = Volume(l.step.0 * slave_steps);
        let mut f = CloseFraction {
            master_closed: closed.lots(),
            master_volume_before: before.lots(),
            slave_min: l.min.lots(),
            slave_step: l.step.lots(),
        };
        match spoil {
            0 => f.master_closed = 0.0,
            1 => f.master_volume_before = f64::NAN,
            2 => f.slave_step = 0.0,
            3 => f.master_closed = -1.0,
            _ => {}
        }
        let got = slave_close(&f, slave_open.lots());
        if spoil < 4 {
            prop_assert_eq!(got, None);
        } else {
            let fl = fraction_limits(&f).expect("valid limits");
            prop_assert_eq!((fl.min, fl.step), (l.min, l.step));
            prop_assert_eq!(got, Some(partial_close(before, closed, slave_open, &l)));
        }
    }

    /// Mapping never guesses: the explicit map wins; a rule-mapped name carries the
    /// configured affixes around the stripped master name; distinct masters never collapse
    /// onto one slave name through the rule; with `explicit_only` or a slave symbol list,
    /// nothing outside them is produced.
    #[test]
    fn symbol_mapping_never_guesses(
        names in prop::collection::btree_set("[A-Z]{3,8}(pro|\\.x)?", 1..12),
        explicit in prop::collection::btree_map("[A-Z]{3,8}", "[A-Z]{3,8}\\.e", 0..4),
        strip in prop_oneof![Just(""), Just("pro")],
        add_prefix in prop_oneof![Just(""), Just("#")],
        add_suffix in prop_oneof![Just(""), Just(".m")],
        explicit_only in any::<bool>(),
        known_cut in any::<bool>(),
    ) {
        let m = SymbolMapping {
            explicit: explicit.iter().map(|(a, b)| (Symbol::new(a), Symbol::new(b))).collect(),
            strip_prefix: String::new(),
            strip_suffix: strip.to_string(),
            add_prefix: add_prefix.to_string(),
            add_suffix: add_suffix.to_string(),
            explicit_only,
        };
        let known: BTreeSet<Symbol> = names.iter().take(3).map(|n| Symbol::new(format!("{add_prefix}{n}{add_suffix}"))).collect();
        let mut by_rule: BTreeMap<Symbol, Symbol> = BTreeMap::new();
        for n in names.iter().chain(explicit.keys()) {
            let master = Symbol::new(n);
            let got = m.map(&master, None);
            if let Some(e) = explicit.get(n) {
                prop_assert_eq!(got.clone(), Ok(Symbol::new(e)));
            } else if explicit_only {
                prop_assert_eq!(got.clone(), Err(SkipReason::SymbolNotMapped));
            } else {
                match n.strip_suffix(strip) {
                    Some(base) if !base.is_empty() => {
                        let s = got.clone().unwrap();
                        prop_assert_eq!(s.as_str(), format!("{add_prefix}{base}{add_suffix}"));
                        if let Some(prev) = by_rule.insert(s.clone(), master.clone()) {
                            prop_assert_eq!(prev, master.clone(), "two masters collapsed onto {}", s.as_str());
                        }
                    }
                    _ => prop_assert_eq!(got.clone(), Err(SkipReason::SymbolNotMapped)),
                }
            }
            if known_cut {
                match m.map(&master, Some(&known)) {
                    Ok(s) => prop_assert!(known.contains(&s)),
                    Err(r) => prop_assert_eq!(r, SkipReason::SymbolNotMapped),
                }
            }
        }
    }

    /// Reversal mirrors: the side flips, SL and TP swap, twice is the identity; and stops
    /// placed by distance always sit on the right side of the slave's fill.
    #[test]
    fn reversal_mirrors_and_stops_sit_on_the_right_side(
        buy in any::<bool>(),
        reverse in any::<bool>(),
        entry in 0.5f64..2_000.0,
        sl_d in prop::option::of(0.0001f64..0.2),
        tp_d in prop::option::of(0.0001f64..0.2),
        slip in -0.01f64..0.01,
        mode in 0u8..4,
    ) {
        let side = if buy { Side::Buy } else { Side::Sell };
        let sign = if buy { 1.0 } else { -1.0 };
        let sl = sl_d.map_or(0.0, |d| entry * (1.0 - sign * d));
        let tp = tp_d.map_or(0.0, |d| entry * (1.0 + sign * d));
        let (s2, sl2, tp2) = mirror(reverse, side, sl, tp);
        prop_assert_eq!(s2 != side, reverse);
        prop_assert_eq!(mirror(reverse, s2, sl2, tp2), (side, sl, tp));
        let fill = entry * (1.0 + slip);
        let mode = match mode {
            0 => StopsMode::MasterPrice,
            1 => StopsMode::SameDistance,
            2 => StopsMode::DontCopy,
            _ => StopsMode::FixedDistance { sl_points: 150, tp_points: 0 },
        };
        let f = StopsFacts { master_side: side, master_entry: entry, master_stop_loss: sl,
            master_take_profit: tp, reverse, slave_fill: fill, point: 0.0001 };
        let (ssl, stp) = slave_stops(mode, &f);
        if !matches!(mode, StopsMode::MasterPrice) {
            let slave_buy = s2 == Side::Buy;
            if ssl > 0.0 { prop_assert_eq!(ssl < fill, slave_buy, "SL {} fill {}", ssl, fill); }
            if stp > 0.0 { prop_assert_eq!(stp > fill, slave_buy, "TP {} fill {}", stp, fill); }
        } else {
            prop_assert_eq!((ssl, stp), (sl2, tp2));
        }
        if matches!(mode, StopsMode::DontCopy) {
            prop_assert_eq!((ssl, stp), (0.0, 0.0));
        }
    }

    /// Catch-up never drops a close, a partial close or a modify, whatever its age or price.
    #[test]
    fn catch_up_never_drops_a_close(max_age in 0u64..1_000_000, age in any::<u64>(), away in any::<bool>(), dev_ok in any::<bool>()) {
        let p = CatchUpPolicy { max_age_ms: max_age };
        for k in [IntentKind::Close, IntentKind::PartialClose, IntentKind::Modify] {
            prop_assert_eq!(catchup::admit(p, k, age, away, dev_ok), Ok(()));
        }
        let open = catchup::admit(p, IntentKind::Open, age, away, dev_ok);
        let late = max_age > 0 && age > max_age;
        prop_assert_eq!(open.is_ok(), !late && dev_ok);
        if late || (away && !dev_ok) {
            prop_assert_eq!(open, Err(SkipReason::Expired));
        }
    }
}

/// Runs one slave position through the master's partial closes (`cuts` ‰ of what the master
/// has left, each) and a final close; the first broken promise, if any.
fn partial_sequence(
    l: &SymbolLimits,
    slave_steps: u64,
    master_units: u64,
    cuts: &[u64],
) -> Result<(), String> {
    let slave_open0 = Volume(l.min.0 + l.step.0 * (slave_steps - 1));
    let mut slave_open = slave_open0;
    let mut master_open = Volume(master_units);
    let mut closed_total = Volume::ZERO;
    for &cut in cuts {
        if master_open.0 < 2 || slave_open.is_zero() {
            break;
        }
        // The master closes cut‰ of what it has left (at least one unit, never all).
        let master_closed = Volume((master_open.0 * cut / 1_000).clamp(1, master_open.0 - 1));
        let d = partial_close(master_open, master_closed, slave_open, l);
        let closed = d.closed(slave_open);
        if !(l.is_on_step(closed) || closed == slave_open) {
            return Err(format!("closed {closed:?} off the step"));
        }
        let share =
            u128::from(slave_open.0) * u128::from(master_closed.0) / u128::from(master_open.0);
        if d == CloseDecision::All {
            // Closing everything on a partial is only the no-dust rule at work.
            let kept = slave_open.saturating_sub(l.floor_to_step(Volume(share as u64)));
            if kept >= l.min {
                return Err(format!(
                    "closed all {slave_open:?} on a partial that leaves {kept:?}"
                ));
            }
        }
        if let CloseDecision::Partial(v) = d {
            if u128::from(v.0) > share {
                return Err(format!("closed {v:?} above the fraction {share}"));
            }
            if slave_open.saturating_sub(v) < l.min {
                return Err(format!("dust left: {:?}", slave_open.saturating_sub(v)));
            }
        }
        slave_open = slave_open.saturating_sub(closed);
        closed_total = closed_total.saturating_add(closed);
        master_open = master_open.saturating_sub(master_closed);
    }
    // The master closes the rest: the slave closes exactly what remains.
    let last = partial_close(master_open, master_open, slave_open, l);
    if last != CloseDecision::All {
        return Err(format!("final close {last:?}"));
    }
    closed_total = closed_total.saturating_add(last.closed(slave_open));
    if closed_total != slave_open0 {
        return Err(format!("closed {closed_total:?} of {slave_open0:?}"));
    }
    Ok(())
}

/// The planted bug `partial-by-master-lots` (a partial close closes the master's lots, not
/// the fraction) breaks the partial-close property: the check above is not vacuous.
#[cfg(feature = "sim-mutants")]
#[test]
fn partial_by_master_lots_is_caught() {
    use echo_statemachine::mutants::{self, Mutant};
    let l = SymbolLimits::fx();
    // The master holds 10 lots and closes 30%; the slave holds 1 lot.
    let args = (l, 100, 10 * LOT, vec![300u64]);
    assert_eq!(partial_sequence(&args.0, args.1, args.2, &args.3), Ok(()));
    assert!(mutants::set(Some(Mutant::PartialByMasterLots)));
    let caught = partial_sequence(&args.0, args.1, args.2, &args.3);
    mutants::set(None);
    assert!(caught.is_err(), "the mutant went unnoticed");
}
