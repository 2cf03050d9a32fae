//! One subscription's copy policy and its configuration keys.
//!
//! This module owns [`CopyPolicy`] — every per-subscription policy setting in one value — the
//! table of its keys under `/echo/subscriptions/<master>/<slave>/` (name, default, range;
//! SPEC.md's policy table is generated from it) and the one parser shared by etcd and TOML. It
//! must never clamp or guess: a value out of range or of the wrong shape is a [`ConfigError`]
//! naming the full key, and the policy keeps its old value.

use std::collections::BTreeSet;

use super::catchup::CatchUpPolicy;
use super::deviation::DeviationGuard;
use super::filters::{Direction, Filters, OrderType};
use super::sizing::{AboveMax, BelowMin, SizingMode, SizingPolicy};
use super::stops::StopsMode;
use super::symbols::SymbolMapping;
use super::volume::{SymbolLimits, Volume};
use crate::config::ConfigError;
use crate::ids::Symbol;

/// Everything a subscription decides about its slave's copies.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CopyPolicy {
    /// Derived from `sizing_kind` and `sizing_values` whenever either is set.
    pub sizing: SizingPolicy,
    pub sizing_kind: SizingKind,
    pub sizing_values: SizingValues,
    pub symbols: SymbolMapping,
    pub reverse: bool,
    pub stops: StopsModeSetting,
    pub filters: Filters,
    pub deviation: DeviationGuard,
    pub catch_up: CatchUpPolicy,
    /// The slave broker's volume limits the core sizes against (`limits/*`), until the slave
    /// EA reports its own symbol info.
    pub limits: SymbolLimits,
}

/// Which [`SizingMode`] the subscription uses; its number comes from [`SizingValues`], so
/// changing the mode never loses a configured value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SizingKind {
    FixedLots,
    #[default]
    Multiplier,
    BalanceRatio,
    EquityRatio,
    RiskPercent,
}

impl SizingKind {
    pub fn name(self) -> &'static str {
        match self {
            SizingKind::FixedLots => "fixed_lots",
            SizingKind::Multiplier => "multiplier",
            SizingKind::BalanceRatio => "balance_ratio",
            SizingKind::EquityRatio => "equity_ratio",
            SizingKind::RiskPercent => "risk_percent",
        }
    }
}

/// The numbers of every sizing mode, kept while another mode is active.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SizingValues {
    pub multiplier: f64,
    pub fixed_lots: Volume,
    pub ratio: f64,
    pub risk_percent: f64,
}

impl Default for SizingValues {
    fn default() -> Self {
        SizingValues {
            multiplier: 1.0,
            fixed_lots: Volume(super::volume::UNITS_PER_LOT / 100),
            ratio: 1.0,
            risk_percent: 1.0,
        }
    }
}

impl SizingValues {
    pub fn mode(&self, kind: SizingKind) -> SizingMode {
        match kind {
            SizingKind::FixedLots => SizingMode::FixedLots(self.fixed_lots),
            SizingKind::Multiplier => SizingMode::Multiplier(self.multiplier),
            SizingKind::BalanceRatio => SizingMode::BalanceRatio(self.ratio),
            SizingKind::EquityRatio => SizingMode::EquityRatio(self.ratio),
            SizingKind::RiskPercent => SizingMode::RiskPercent(self.risk_percent),
        }
    }
}

/// [`StopsMode`] with a default (the master's exact prices).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StopsModeSetting(pub StopsMode);

impl Default for StopsModeSetting {
    fn default() -> Self {
        StopsModeSetting(StopsMode::MasterPrice)
    }
}

/// One policy key: its name below `/echo/subscriptions/<master>/<slave>/`, default, allowed
/// values and meaning. `*` in a name stands for a master symbol.
#[derive(Clone, Copy, Debug)]
pub struct PolicyKey {
    pub name: &'static str,
    pub default: &'static str,
    pub range: &'static str,
    pub doc: &'static str,
}

const fn k(
    name: &'static str,
    default: &'static str,
    range: &'static str,
    doc: &'static str,
) -> PolicyKey {
    PolicyKey {
        name,
        default,
        range,
        doc,
    }
}

/// Every policy key, in SPEC.md's order. `multiplier` and `symbol_map/*` predate the policy
/// and keep their meaning (multiplier sizing; the explicit symbol map).
pub const POLICY_KEYS: &[PolicyKey] = &[
    k(
        "multiplier",
        "(required)",
        "(0, 1000]",
        "factor of `sizing/mode = multiplier`; declares the subscription",
    ),
    k(
        "sizing/mode",
        "multiplier",
        "fixed_lots, multiplier, balance_ratio, equity_ratio, risk_percent",
        "how the slave's volume is derived",
    ),
    k(
        "sizing/fixed_lots",
        "0.01",
        "(0, 1000] lots",
        "volume of `fixed_lots`",
    ),
    k(
        "sizing/ratio",
        "1",
        "(0, 1000]",
        "extra factor of `balance_ratio` / `equity_ratio`",
    ),
    k(
        "sizing/risk_percent",
        "1",
        "(0, 100]",
        "percent of slave equity risked between entry and stop-loss",
    ),
    k(
        "sizing/symbol_multiplier/*",
        "1",
        "(0, 1000]",
        "extra factor for one master symbol (not for risk_percent)",
    ),
    k(
        "sizing/align_contract_size",
        "false",
        "true, false",
        "scale by master / slave contract size",
    ),
    k(
        "sizing/below_min",
        "skip",
        "skip, trade_min",
        "below the slave's minimum: skip (VOLUME_BELOW_MIN) or open the minimum",
    ),
    k(
        "sizing/above_max",
        "cap",
        "cap, split",
        "above the slave's maximum: open the maximum, or split into orders within limits",
    ),
    k(
        "sizing/check_free_margin",
        "false",
        "true, false",
        "refuse an open the slave's free margin cannot carry (INSUFFICIENT_MARGIN)",
    ),
    k(
        "symbol_map/*",
        "(none)",
        "a symbol name",
        "explicit slave name for one master symbol; checked first",
    ),
    k(
        "symbols/strip_prefix",
        "\"\"",
        "0..=32 printable, no spaces",
        "removed from the master's name (a name without it is not mapped)",
    ),
    k(
        "symbols/strip_suffix",
        "\"\"",
        "0..=32 printable, no spaces",
        "removed from the master's name (a name without it is not mapped)",
    ),
    k(
        "symbols/add_prefix",
        "\"\"",
        "0..=32 printable, no spaces",
        "added to the stripped name",
    ),
    k(
        "symbols/add_suffix",
        "\"\"",
        "0..=32 printable, no spaces",
        "added to the stripped name (`.m`: EURUSD → EURUSD.m)",
    ),
    k(
        "symbols/explicit_only",
        "false",
        "true, false",
        "only `symbol_map/*`: any other symbol is SYMBOL_NOT_MAPPED",
    ),
    k(
        "reverse",
        "false",
        "true, false",
        "buy ↔ sell, stop-loss ↔ take-profit",
    ),
    k(
        "stops/mode",
        "master_price",
        "master_price, same_distance, dont_copy, fixed_distance",
        "how SL/TP are placed at open and on every modify",
    ),
    k(
        "stops/sl_points",
        "0",
        "0..=1000000",
        "stop-loss distance of `fixed_distance` in points (0 = none)",
    ),
    k(
        "stops/tp_points",
        "0",
        "0..=1000000",
        "take-profit distance of `fixed_distance` in points (0 = none)",
    ),
    k(
        "filters/symbols_allow",
        "\"\" (all)",
        "comma-separated master symbols",
        "only these symbols are copied",
    ),
    k(
        "filters/symbols_deny",
        "\"\"",
        "comma-separated master symbols",
        "these symbols are never copied",
    ),
    k(
        "filters/magic_allow",
        "\"\" (all)",
        "comma-separated integers",
        "only these magic numbers are copied",
    ),
    k(
        "filters/magic_deny",
        "\"\"",
        "comma-separated integers",
        "these magic numbers are never copied",
    ),
    k(
        "filters/comment_allow",
        "\"\" (all)",
        "comma-separated patterns (`*`, `?`)",
        "only comments matching one pattern are copied",
    ),
    k(
        "filters/comment_deny",
        "\"\"",
        "comma-separated patterns (`*`, `?`)",
        "comments matching a pattern are never copied",
    ),
    k(
        "filters/direction",
        "both",
        "both, buy_only, sell_only",
        "which master direction is copied",
    ),
    k(
        "filters/order_types",
        "\"\" (all)",
        "comma-separated: market, limit, stop, stop_limit",
        "which master order types are copied",
    ),
    k(
        "filters/max_open_positions",
        "0 (no limit)",
        "0..=100000",
        "copied positions the slave may hold at once",
    ),
    k(
        "filters/max_total_lots",
        "0 (no limit)",
        "[0, 100000] lots",
        "total copied lots the slave may hold at once",
    ),
    k(
        "deviation/max_points",
        "0 (off)",
        "0..=1000000",
        "slave price further than this from the master's fill: PRICE_DEVIATION",
    ),
    k(
        "deviation/retry_window_ms",
        "0",
        "0..=60000",
        "how long the slave waits for the price to come back before PRICE_DEVIATION",
    ),
    k(
        "catchup/max_age_ms",
        "0 (no limit)",
        "0..=86400000",
        "an open older than this when it reaches the slave: EXPIRED (never a close or modify)",
    ),
];

/// The full key of `name` for one subscription.
pub fn full_key(master: &str, slave: &str, name: &str) -> String {
    format!("/echo/subscriptions/{master}/{slave}/{name}")
}

impl CopyPolicy {
    /// A policy with multiplier sizing by `multiplier` and every other setting at its default.
    pub fn with_multiplier(multiplier: f64) -> CopyPolicy {
        let mut p = CopyPolicy::default();
        p.set_multiplier(multiplier);
        p
    }

    pub fn set_multiplier(&mut self, multiplier: f64) {
        self.sizing_values.multiplier = multiplier;
        self.sizing.mode = self.sizing_values.mode(self.sizing_kind);
    }

    /// Checks what single keys cannot: the limits agree with each other. Names the offending
    /// key.
    pub fn validate(&self, master: &str, slave: &str) -> Result<(), ConfigError> {
        let refuse = |name: &str, value: String, expected: &str| ConfigError {
            key: full_key(master, slave, name),
            value,
            expected: expected.to_string(),
        };
        let l = &self.limits;
        if !l.is_valid() {
            return Err(refuse(
                "limits/min_lots",
                format!(
                    "min {} max {} step {}",
                    l.min.lots(),
                    l.max.lots(),
                    l.step.lots()
                ),
                "min_lots ≤ max_lots, both multiples of step_lots",
            ));
        }
        Ok(())
    }

    /// Applies one policy key (`name` below the subscription's prefix). `Ok(false)` if the
    /// name is not a policy key (the caller owns `multiplier` and `symbol_map/*`). On error
    /// the policy is unchanged.
    pub fn set(
        &mut self,
        master: &str,
        slave: &str,
        name: &str,
        raw: &str,
    ) -> Result<bool, ConfigError> {
        let err = |expected: &str| ConfigError {
            key: full_key(master, slave, name),
            value: raw.to_string(),
            expected: expected.to_string(),
        };
        let v = raw.trim();
        let number = |hi: f64, zero_ok: bool, what: &str| -> Result<f64, ConfigError> {
            match v.parse::<f64>() {
                Ok(x) if x.is_finite() && (x > 0.0 || (zero_ok && x == 0.0)) && x <= hi => Ok(x),
                _ => Err(err(what)),
            }
        };
        let int = |hi: u64| -> Result<u64, ConfigError> {
            match v.parse::<u64>() {
                Ok(x) if x <= hi => Ok(x),
                _ => Err(err(&format!("an integer in 0..={hi}"))),
            }
        };
        let boolean = || match v {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(err("true or false")),
        };
        let affix = || {
            if v.chars().count() <= 32 && v.chars().all(|c| c.is_ascii_graphic()) {
                Ok(v.to_string())
            } else {
                Err(err("0..=32 printable ASCII characters, no spaces"))
            }
        };
        let items: Vec<&str> = v
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let symbols = || -> BTreeSet<Symbol> { items.iter().map(Symbol::new).collect() };
        let magics = || -> Result<BTreeSet<i64>, ConfigError> {
            items
                .iter()
                .map(|m| {
                    m.parse::<i64>()
                        .map_err(|_| err("comma-separated integers"))
                })
                .collect()
        };
        let patterns = || -> Vec<String> { items.iter().map(|p| p.to_string()).collect() };
        let mut sizing_changed = false;
        match name {
            "sizing/mode" => {
                self.sizing_kind =
                    match v {
                        "fixed_lots" => SizingKind::FixedLots,
                        "multiplier" => SizingKind::Multiplier,
                        "balance_ratio" => SizingKind::BalanceRatio,
                        "equity_ratio" => SizingKind::EquityRatio,
                        "risk_percent" => SizingKind::RiskPercent,
                        _ => return Err(err(
                            "fixed_lots, multiplier, balance_ratio, equity_ratio or risk_percent",
                        )),
                    };
                sizing_changed = true;
            }
            "sizing/fixed_lots" => {
                let lots = number(1_000.0, false, "lots in (0, 1000]")?;
                self.sizing_values.fixed_lots = Volume::from_lots(lots)
                    .filter(|v| !v.is_zero())
                    .ok_or_else(|| err("lots in (0, 1000]"))?;
                sizing_changed = true;
            }
            "sizing/ratio" => {
                self.sizing_values.ratio = number(1_000.0, false, "a number in (0, 1000]")?;
                sizing_changed = true;
            }
            "sizing/risk_percent" => {
                self.sizing_values.risk_percent = number(100.0, false, "a number in (0, 100]")?;
                sizing_changed = true;
            }
            "sizing/align_contract_size" => self.sizing.align_contract_size = boolean()?,
            "sizing/below_min" => {
                self.sizing.below_min = match v {
                    "skip" => BelowMin::Skip,
                    "trade_min" => BelowMin::TradeMin,
                    _ => return Err(err("skip or trade_min")),
                }
            }
            "sizing/above_max" => {
                self.sizing.above_max = match v {
                    "cap" => AboveMax::Cap,
                    "split" => AboveMax::Split,
                    _ => return Err(err("cap or split")),
                }
            }
            "sizing/check_free_margin" => self.sizing.check_free_margin = boolean()?,
            "symbols/strip_prefix" => self.symbols.strip_prefix = affix()?,
            "symbols/strip_suffix" => self.symbols.strip_suffix = affix()?,
            "symbols/add_prefix" => self.symbols.add_prefix = affix()?,
            "symbols/add_suffix" => self.symbols.add_suffix = affix()?,
            "symbols/explicit_only" => self.symbols.explicit_only = boolean()?,
            "reverse" => self.reverse = boolean()?,
            "stops/mode" => {
                let (sl_points, tp_points) = match self.stops.0 {
                    StopsMode::FixedDistance {
                        sl_points,
                        tp_points,
                    } => (sl_points, tp_points),
                    _ => (0, 0),
                };
                self.stops.0 = match v {
                    "master_price" => StopsMode::MasterPrice,
                    "same_distance" => StopsMode::SameDistance,
                    "dont_copy" => StopsMode::DontCopy,
                    "fixed_distance" => StopsMode::FixedDistance {
                        sl_points,
                        tp_points,
                    },
                    _ => {
                        return Err(err(
                            "master_price, same_distance, dont_copy or fixed_distance",
                        ))
                    }
                };
            }
            "stops/sl_points" | "stops/tp_points" => {
                let pts = int(1_000_000)? as u32;
                let StopsMode::FixedDistance {
                    sl_points,
                    tp_points,
                } = &mut self.stops.0
                else {
                    return Err(err("set only after stops/mode = fixed_distance"));
                };
                if name == "stops/sl_points" {
                    *sl_points = pts;
                } else {
                    *tp_points = pts;
                }
            }
            "filters/symbols_allow" => self.filters.symbols_allow = symbols(),
            "filters/symbols_deny" => self.filters.symbols_deny = symbols(),
            "filters/magic_allow" => self.filters.magic_allow = magics()?,
            "filters/magic_deny" => self.filters.magic_deny = magics()?,
            "filters/comment_allow" => self.filters.comment_allow = patterns(),
            "filters/comment_deny" => self.filters.comment_deny = patterns(),
            "filters/direction" => {
                self.filters.direction = match v {
                    "both" => Direction::Both,
                    "buy_only" => Direction::BuyOnly,
                    "sell_only" => Direction::SellOnly,
                    _ => return Err(err("both, buy_only or sell_only")),
                }
            }
            "filters/order_types" => {
                self.filters.order_types = items
                    .iter()
                    .map(|t| {
                        OrderType::from_name(t)
                            .ok_or_else(|| err("comma-separated: market, limit, stop, stop_limit"))
                    })
                    .collect::<Result<_, _>>()?
            }
            "filters/max_open_positions" => self.filters.max_open_positions = int(100_000)? as u32,
            "filters/max_total_lots" => {
                let lots = number(100_000.0, true, "lots in [0, 100000]")?;
                self.filters.max_total_lots =
                    Volume::from_lots(lots).ok_or_else(|| err("lots in [0, 100000]"))?;
            }
            "deviation/max_points" => self.deviation.max_points = int(1_000_000)? as u32,
            "deviation/retry_window_ms" => self.deviation.retry_window_ms = int(60_000)? as u32,
            "catchup/max_age_ms" => self.catch_up.max_age_ms = int(86_400_000)?,
            "limits/min_lots" | "limits/max_lots" | "limits/step_lots" => {
                let hi = if name == "limits/max_lots" {
                    100_000.0
                } else {
                    1_000.0
                };
                let what = format!("lots in (0, {hi}]");
                let v = Volume::from_lots(number(hi, false, &what)?)
                    .filter(|v| !v.is_zero())
                    .ok_or_else(|| err(&what))?;
                match name {
                    "limits/min_lots" => self.limits.min = v,
                    "limits/max_lots" => self.limits.max = v,
                    _ => self.limits.step = v,
                }
            }
            _ => match name.strip_prefix("sizing/symbol_multiplier/") {
                Some(sym) if !sym.is_empty() => {
                    let m = number(1_000.0, false, "a number in (0, 1000]")?;
                    self.sizing.symbol_multipliers.insert(Symbol::new(sym), m);
                }
                _ => return Ok(false),
            },
        }
        if sizing_changed {
            self.sizing.mode = self.sizing_values.mode(self.sizing_kind);
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_key_is_parsed() {
        let samples = [
            ("sizing/mode", "risk_percent"),
            ("sizing/fixed_lots", "0.5"),
            ("sizing/ratio", "2"),
            ("sizing/risk_percent", "1.5"),
            ("sizing/symbol_multiplier/XAUUSD", "0.1"),
            ("sizing/align_contract_size", "true"),
            ("sizing/below_min", "trade_min"),
            ("sizing/above_max", "split"),
            ("sizing/check_free_margin", "true"),
            ("symbols/strip_prefix", "a"),
            ("symbols/strip_suffix", "pro"),
            ("symbols/add_prefix", "b"),
            ("symbols/add_suffix", ".m"),
            ("symbols/explicit_only", "false"),
            ("reverse", "true"),
            ("stops/mode", "fixed_distance"),
            ("stops/sl_points", "200"),
            ("stops/tp_points", "300"),
            ("filters/symbols_allow", "EURUSD, GBPUSD"),
            ("filters/symbols_deny", "XAUUSD"),
            ("filters/magic_allow", "1,2"),
            ("filters/magic_deny", "-3"),
            ("filters/comment_allow", "grid*"),
            ("filters/comment_deny", "*test*"),
            ("filters/direction", "buy_only"),
            ("filters/order_types", "market,limit"),
            ("filters/max_open_positions", "5"),
            ("filters/max_total_lots", "2.5"),
            ("deviation/max_points", "30"),
            ("deviation/retry_window_ms", "500"),
            ("catchup/max_age_ms", "60000"),
        ];
        let mut p = CopyPolicy::with_multiplier(2.0);
        for (name, raw) in samples {
            assert!(p.set("m", "s", name, raw).unwrap(), "{name}");
        }
        // Every documented key except the caller-owned ones has a sample.
        for key in POLICY_KEYS {
            if key.name == "multiplier" || key.name == "symbol_map/*" {
                continue;
            }
            let prefix = key.name.trim_end_matches('*');
            assert!(
                samples.iter().any(|(n, _)| n.starts_with(prefix)),
                "{}",
                key.name
            );
        }
        assert_eq!(p.sizing.mode, SizingMode::RiskPercent(1.5));
        assert_eq!(
            p.stops.0,
            StopsMode::FixedDistance {
                sl_points: 200,
                tp_points: 300
            }
        );
        assert_eq!(p.filters.symbols_allow.len(), 2);
        assert_eq!(p.filters.magic_deny, [-3].into_iter().collect());
        assert!(p.reverse);
        assert_eq!(p.catch_up.max_age_ms, 60_000);
        p.set("m", "s", "sizing/mode", "multiplier").unwrap();
        assert_eq!(
            p.sizing.mode,
            SizingMode::Multiplier(2.0),
            "values survive a mode change"
        );
        assert!(!p.set("m", "s", "nope", "1").unwrap());
    }

    #[test]
    fn refusals_name_the_key_and_keep_the_old_value() {
        let mut p = CopyPolicy::default();
        let bad = [
            ("sizing/mode", "martingale"),
            ("sizing/fixed_lots", "0"),
            ("sizing/fixed_lots", "1001"),
            ("sizing/ratio", "NaN"),
            ("sizing/risk_percent", "101"),
            ("sizing/symbol_multiplier/EURUSD", "-1"),
            ("sizing/align_contract_size", "yes"),
            ("sizing/below_min", "round"),
            ("sizing/above_max", "drop"),
            ("symbols/add_suffix", "has space"),
            ("symbols/add_prefix", "0123456789012345678901234567890123"),
            ("stops/mode", "trailing"),
            ("stops/sl_points", "10"),
            ("filters/magic_allow", "1,x"),
            ("filters/direction", "up"),
            ("filters/order_types", "market,iceberg"),
            ("filters/max_open_positions", "-1"),
            ("filters/max_total_lots", "100001"),
            ("deviation/max_points", "1000001"),
            ("deviation/retry_window_ms", "60001"),
            ("catchup/max_age_ms", "86400001"),
        ];
        for (name, raw) in bad {
            let e = p.set("m1", "s1", name, raw).unwrap_err();
            assert_eq!(e.key, format!("/echo/subscriptions/m1/s1/{name}"));
            assert_eq!(e.value, raw);
            assert_eq!(p, CopyPolicy::default(), "{name} left the policy unchanged");
        }
    }
}
