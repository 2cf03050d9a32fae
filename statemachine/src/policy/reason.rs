//! The closed set of reasons a master's trade is not copied (or not copied as asked).
//!
//! This module owns the names (`SCREAMING_SNAKE` on the wire, in SPEC.md and in the `reason`
//! metric label). It must never grow a catch-all variant: every non-copy names its cause.

use crate::msg::ErrorCode;

/// Why a slave did not copy a master's trade. On the wire each is an `echo.v1.ErrorCode`
/// (`ERROR_CODE_` + name), the closed enum every FAILED delivery already carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SkipReason {
    /// The sized volume is below the slave broker's minimum and the policy says skip.
    VolumeBelowMin,
    /// No explicit map entry or affix rule gives the slave's name for the master's symbol, or
    /// the slave does not trade the mapped name.
    SymbolNotMapped,
    /// The slave's price differs from the master's fill by more than the configured points.
    PriceDeviation,
    /// An open (or pending placement) reached the slave after `max_age_ms`, or beyond the
    /// deviation guard, when catching up after an absence.
    Expired,
    /// The symbol is on the deny list or missing from a non-empty allow list.
    FilteredSymbol,
    /// The master's magic number is not accepted.
    FilteredMagic,
    /// The master's order comment matches no accepted pattern (or a denied one).
    FilteredComment,
    /// The slave copies only the other direction.
    FilteredDirection,
    /// The slave does not copy this order type (market / pending kinds).
    FilteredOrderType,
    /// The slave already holds `max_open_positions` copied positions.
    MaxOpenPositions,
    /// Opening would take the slave above `max_total_lots`.
    MaxTotalLots,
    /// The free-margin check failed: the slave cannot afford the sized volume.
    InsufficientMargin,
    /// Risk-% sizing needs a stop-loss and the master's trade has none (or the slave's symbol
    /// info has no tick value).
    NoStopLoss,
    /// The sizing mode or a guard needs a fact nobody reported: the master's balance/equity
    /// (ratio sizing), or the slave's account, symbol info or price (sizing, free margin,
    /// deviation). Never guessed.
    AccountFactsUnknown,
}

impl SkipReason {
    pub const ALL: &'static [SkipReason] = &[
        SkipReason::VolumeBelowMin,
        SkipReason::SymbolNotMapped,
        SkipReason::PriceDeviation,
        SkipReason::Expired,
        SkipReason::FilteredSymbol,
        SkipReason::FilteredMagic,
        SkipReason::FilteredComment,
        SkipReason::FilteredDirection,
        SkipReason::FilteredOrderType,
        SkipReason::MaxOpenPositions,
        SkipReason::MaxTotalLots,
        SkipReason::InsufficientMargin,
        SkipReason::NoStopLoss,
        SkipReason::AccountFactsUnknown,
    ];

    /// The name used in SPEC.md, on the wire (`SKIP_REASON_` + name) and as the metric label.
    pub fn name(self) -> &'static str {
        match self {
            SkipReason::VolumeBelowMin => "VOLUME_BELOW_MIN",
            SkipReason::SymbolNotMapped => "SYMBOL_NOT_MAPPED",
            SkipReason::PriceDeviation => "PRICE_DEVIATION",
            SkipReason::Expired => "EXPIRED",
            SkipReason::FilteredSymbol => "FILTERED_SYMBOL",
            SkipReason::FilteredMagic => "FILTERED_MAGIC",
            SkipReason::FilteredComment => "FILTERED_COMMENT",
            SkipReason::FilteredDirection => "FILTERED_DIRECTION",
            SkipReason::FilteredOrderType => "FILTERED_ORDER_TYPE",
            SkipReason::MaxOpenPositions => "MAX_OPEN_POSITIONS",
            SkipReason::MaxTotalLots => "MAX_TOTAL_LOTS",
            SkipReason::InsufficientMargin => "INSUFFICIENT_MARGIN",
            SkipReason::NoStopLoss => "NO_STOP_LOSS",
            SkipReason::AccountFactsUnknown => "ACCOUNT_FACTS_UNKNOWN",
        }
    }

    /// The wire code carrying this reason in a FAILED delivery, ack or report.
    pub fn error_code(self) -> ErrorCode {
        match self {
            SkipReason::VolumeBelowMin => ErrorCode::VolumeBelowMin,
            SkipReason::SymbolNotMapped => ErrorCode::SymbolNotMapped,
            SkipReason::PriceDeviation => ErrorCode::PriceDeviation,
            SkipReason::Expired => ErrorCode::Expired,
            SkipReason::FilteredSymbol => ErrorCode::FilteredSymbol,
            SkipReason::FilteredMagic => ErrorCode::FilteredMagic,
            SkipReason::FilteredComment => ErrorCode::FilteredComment,
            SkipReason::FilteredDirection => ErrorCode::FilteredDirection,
            SkipReason::FilteredOrderType => ErrorCode::FilteredOrderType,
            SkipReason::MaxOpenPositions => ErrorCode::MaxOpenPositions,
            SkipReason::MaxTotalLots => ErrorCode::MaxTotalLots,
            SkipReason::InsufficientMargin => ErrorCode::InsufficientMargin,
            SkipReason::NoStopLoss => ErrorCode::NoStopLoss,
            SkipReason::AccountFactsUnknown => ErrorCode::AccountFactsUnknown,
        }
    }

    /// The policy reason a wire code stands for, if it is one.
    pub fn from_error_code(e: ErrorCode) -> Option<SkipReason> {
        SkipReason::ALL
            .iter()
            .copied()
            .find(|r| r.error_code() == e)
    }

    pub fn from_name(s: &str) -> Option<SkipReason> {
        SkipReason::ALL.iter().copied().find(|r| r.name() == s)
    }

    /// One line for SPEC.md's reason table.
    pub fn doc(self) -> &'static str {
        match self {
            SkipReason::VolumeBelowMin => "sized volume below the slave's minimum and `below_min = \"skip\"`",
            SkipReason::SymbolNotMapped => "no map entry or affix rule names the slave's symbol, or the slave does not trade it",
            SkipReason::PriceDeviation => "slave price further than `deviation/max_points` from the master's fill (after `deviation/retry_window_ms`)",
            SkipReason::Expired => "an open reached the slave after `max_age_ms`, or was sent as a catch-up (its slave was away) and the slave's price is beyond `deviation/max_points`; never a close or SL/TP change",
            SkipReason::FilteredSymbol => "symbol denied, or not in a non-empty allow list",
            SkipReason::FilteredMagic => "magic number not accepted",
            SkipReason::FilteredComment => "comment matches no accepted pattern, or a denied one",
            SkipReason::FilteredDirection => "the slave copies only the other direction",
            SkipReason::FilteredOrderType => "order type not copied",
            SkipReason::MaxOpenPositions => "slave already holds `max_open_positions` copied positions",
            SkipReason::MaxTotalLots => "opening would exceed `max_total_lots`",
            SkipReason::InsufficientMargin => "free margin below what the sized volume needs",
            SkipReason::NoStopLoss => "risk sizing without a stop-loss or tick value",
            SkipReason::AccountFactsUnknown => "a sizing mode or guard needs a fact nobody reported (master balance/equity, slave account, symbol info or price)",
        }
    }
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for r in SkipReason::ALL {
            assert_eq!(SkipReason::from_name(r.name()), Some(*r));
            assert!(seen.insert(r.name()), "duplicate {}", r.name());
        }
        assert_eq!(SkipReason::from_name("NOPE"), None);
        for r in SkipReason::ALL {
            assert_eq!(SkipReason::from_error_code(r.error_code()), Some(*r));
            assert_eq!(r.error_code().name(), format!("ERROR_CODE_{}", r.name()));
            assert!(!r.error_code().is_retryable(), "a policy verdict is final");
        }
    }
}
