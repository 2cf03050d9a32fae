//! Filters: which of a master's trades a slave copies at all.
//!
//! This module owns the per-subscription filters — symbol allow/deny lists, magic numbers,
//! comment patterns (`*` and `?` wildcards), direction, order types — and the per-slave
//! exposure limits (max open positions, max total lots). The trade filters need only the
//! master's trade (the core can apply them); the exposure limits need the slave's own open
//! positions (the slave EA applies them). It must never filter a close, a partial close or a
//! modify: a filter decides whether a position is copied, never whether a copied one is left
//! behind.

use std::collections::BTreeSet;

use super::reason::SkipReason;
use super::volume::Volume;
use crate::ids::Symbol;
use crate::msg::Side;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Both,
    BuyOnly,
    SellOnly,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OrderType {
    #[default]
    Market,
    Limit,
    Stop,
    StopLimit,
}

impl OrderType {
    pub const ALL: &'static [OrderType] = &[
        OrderType::Market,
        OrderType::Limit,
        OrderType::Stop,
        OrderType::StopLimit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OrderType::Market => "market",
            OrderType::Limit => "limit",
            OrderType::Stop => "stop",
            OrderType::StopLimit => "stop_limit",
        }
    }

    pub fn from_name(s: &str) -> Option<OrderType> {
        OrderType::ALL.iter().copied().find(|t| t.name() == s)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filters {
    /// Empty = every symbol.
    pub symbols_allow: BTreeSet<Symbol>,
    pub symbols_deny: BTreeSet<Symbol>,
    /// Empty = every magic number.
    pub magic_allow: BTreeSet<i64>,
    pub magic_deny: BTreeSet<i64>,
    /// Empty = every comment.
    pub comment_allow: Vec<String>,
    pub comment_deny: Vec<String>,
    pub direction: Direction,
    /// Empty = every order type.
    pub order_types: BTreeSet<OrderType>,
    /// 0 = no limit.
    pub max_open_positions: u32,
    /// 0 = no limit.
    pub max_total_lots: Volume,
}

impl Default for Filters {
    fn default() -> Self {
        Filters {
            symbols_allow: BTreeSet::new(),
            symbols_deny: BTreeSet::new(),
            magic_allow: BTreeSet::new(),
            magic_deny: BTreeSet::new(),
            comment_allow: Vec::new(),
            comment_deny: Vec::new(),
            direction: Direction::Both,
            order_types: BTreeSet::new(),
            max_open_positions: 0,
            max_total_lots: Volume::ZERO,
        }
    }
}

/// The master's trade as the filters see it (the master's symbol and side, before mapping
/// and reversal: a desk filters what the master does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TradeFacts<'a> {
    pub symbol: &'a Symbol,
    pub side: Side,
    pub magic: i64,
    pub comment: &'a str,
    pub order_type: OrderType,
}

/// Whether the subscription copies this opening trade at all.
pub fn admit_trade(f: &Filters, t: &TradeFacts<'_>) -> Result<(), SkipReason> {
    if f.symbols_deny.contains(t.symbol)
        || (!f.symbols_allow.is_empty() && !f.symbols_allow.contains(t.symbol))
    {
        return Err(SkipReason::FilteredSymbol);
    }
    if f.magic_deny.contains(&t.magic)
        || (!f.magic_allow.is_empty() && !f.magic_allow.contains(&t.magic))
    {
        return Err(SkipReason::FilteredMagic);
    }
    if f.comment_deny.iter().any(|p| glob(p, t.comment))
        || (!f.comment_allow.is_empty() && !f.comment_allow.iter().any(|p| glob(p, t.comment)))
    {
        return Err(SkipReason::FilteredComment);
    }
    let direction_ok = match f.direction {
        Direction::Both => true,
        Direction::BuyOnly => t.side == Side::Buy,
        Direction::SellOnly => t.side == Side::Sell,
    };
    if !direction_ok {
        return Err(SkipReason::FilteredDirection);
    }
    if !f.order_types.is_empty() && !f.order_types.contains(&t.order_type) {
        return Err(SkipReason::FilteredOrderType);
    }
    Ok(())
}

/// Whether the slave may add `volume` to its `open_positions` copied positions of
/// `open_volume` in total.
pub fn admit_exposure(
    f: &Filters,
    open_positions: u32,
    open_volume: Volume,
    volume: Volume,
) -> Result<(), SkipReason> {
    if f.max_open_positions > 0 && open_positions >= f.max_open_positions {
        return Err(SkipReason::MaxOpenPositions);
    }
    if !f.max_total_lots.is_zero() && open_volume.saturating_add(volume) > f.max_total_lots {
        return Err(SkipReason::MaxTotalLots);
    }
    Ok(())
}

/// `*` matches any run of characters, `?` exactly one; everything else matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    // Backtrack point: the last `*` and the text position it currently swallows up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_wildcards() {
        assert!(glob("*", ""));
        assert!(glob("scalp*", "scalper v2"));
        assert!(!glob("scalp*", "a scalper"));
        assert!(glob("*v?", "scalper v2"));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
        assert!(glob("", ""));
        assert!(!glob("", "x"));
    }

    #[test]
    fn every_trade_filter_has_its_reason() {
        let eur = Symbol::new("EURUSD");
        let t = TradeFacts {
            symbol: &eur,
            side: Side::Buy,
            magic: 7,
            comment: "grid #3",
            order_type: OrderType::Limit,
        };
        let mut f = Filters::default();
        assert_eq!(admit_trade(&f, &t), Ok(()));
        f.symbols_allow.insert(Symbol::new("GBPUSD"));
        assert_eq!(admit_trade(&f, &t), Err(SkipReason::FilteredSymbol));
        f.symbols_allow.insert(eur.clone());
        f.magic_deny.insert(7);
        assert_eq!(admit_trade(&f, &t), Err(SkipReason::FilteredMagic));
        f.magic_deny.clear();
        f.comment_deny.push("grid*".into());
        assert_eq!(admit_trade(&f, &t), Err(SkipReason::FilteredComment));
        f.comment_deny.clear();
        f.direction = Direction::SellOnly;
        assert_eq!(admit_trade(&f, &t), Err(SkipReason::FilteredDirection));
        f.direction = Direction::BuyOnly;
        f.order_types.insert(OrderType::Market);
        assert_eq!(admit_trade(&f, &t), Err(SkipReason::FilteredOrderType));
        f.order_types.insert(OrderType::Limit);
        assert_eq!(admit_trade(&f, &t), Ok(()));
    }

    #[test]
    fn exposure_limits() {
        let lots = |x: f64| Volume::from_lots(x).unwrap();
        let f = Filters {
            max_open_positions: 2,
            max_total_lots: lots(1.0),
            ..Filters::default()
        };
        assert_eq!(admit_exposure(&f, 1, lots(0.5), lots(0.5)), Ok(()));
        assert_eq!(
            admit_exposure(&f, 2, lots(0.1), lots(0.1)),
            Err(SkipReason::MaxOpenPositions)
        );
        assert_eq!(
            admit_exposure(&f, 1, lots(0.5), lots(0.51)),
            Err(SkipReason::MaxTotalLots)
        );
    }
}
