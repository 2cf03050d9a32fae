//! Catch-up after a slave, its agent or its terminal was away.
//!
//! This module owns which late commands still execute: an open that reaches the slave later
//! than `max_age_ms` after the master emitted it, or — while catching up — beyond the
//! price-deviation guard, expires with `EXPIRED`. Both halves share [`admit`]: the core applies
//! the age (`core.delivery.T25`, `within_deviation` = true: it has no slave prices), the slave
//! EA the guard (`ea.slave.T47`, `catching_up` = the command's `catch_up` flag, which the core
//! sets on an open that waited for its slave: `core.delivery.T36`). A pending placement never expires: it rests
//! at the master's price, so a late one is still the master's order (SPEC.md §5.2). It must
//! never expire a close, a partial close, a modify or any later command of a pending order: a
//! close is never the thing that gets dropped.

use super::reason::SkipReason;
use crate::msg::IntentKind;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CatchUpPolicy {
    /// Oldest open the slave still executes; 0 = no age limit.
    pub max_age_ms: u64,
}

/// Whether a command of `kind`, `age_ms` old, may still execute. `within_deviation` is the
/// deviation guard's verdict at the slave's current price; `catching_up` says the command
/// waited for the slave rather than for the market.
pub fn admit(
    policy: CatchUpPolicy,
    kind: IntentKind,
    age_ms: u64,
    catching_up: bool,
    within_deviation: bool,
) -> Result<(), SkipReason> {
    let opens = matches!(kind, IntentKind::Open);
    let drop_close = crate::mutants::active(crate::mutants::Mutant::CatchUpExpiresCloses)
        && policy.max_age_ms > 0
        && age_ms > policy.max_age_ms;
    if !opens {
        return if drop_close {
            Err(SkipReason::Expired)
        } else {
            Ok(())
        };
    }
    if policy.max_age_ms > 0 && age_ms > policy.max_age_ms {
        return Err(SkipReason::Expired);
    }
    if catching_up && !within_deviation {
        return Err(SkipReason::Expired);
    }
    if !within_deviation {
        return Err(SkipReason::PriceDeviation);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_expire_closes_never() {
        let p = CatchUpPolicy { max_age_ms: 60_000 };
        assert_eq!(admit(p, IntentKind::Open, 60_000, true, true), Ok(()));
        assert_eq!(
            admit(p, IntentKind::Open, 60_001, true, true),
            Err(SkipReason::Expired)
        );
        assert_eq!(
            admit(p, IntentKind::Open, 10, true, false),
            Err(SkipReason::Expired)
        );
        assert_eq!(
            admit(p, IntentKind::Open, 10, false, false),
            Err(SkipReason::PriceDeviation)
        );
        for k in [
            IntentKind::Close,
            IntentKind::PartialClose,
            IntentKind::Modify,
        ] {
            assert_eq!(admit(p, k, u64::MAX, true, false), Ok(()), "{k:?}");
        }
        let off = CatchUpPolicy { max_age_ms: 0 };
        assert_eq!(admit(off, IntentKind::Open, u64::MAX, true, true), Ok(()));
    }
}
