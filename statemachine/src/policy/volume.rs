//! Volumes as integer units and the slave broker's volume limits.
//!
//! This module owns the one conversion between wire lots (`f64`) and [`Volume`] (an integer
//! count of 10⁻⁸ lot) and the step/min/max arithmetic on it. Every policy decision that adds,
//! subtracts or splits volumes does it on `Volume`: repeated `f64` arithmetic leaves dust
//! (0.1 + 0.2 ≠ 0.3) and a final close must close exactly what remains. It must never round
//! up past a limit: rounding is always down to the step unless a caller asks for the minimum.

/// Units per lot: 10⁻⁸ lot resolves every volume step a broker offers (crypto goes to 10⁻⁸).
pub const UNITS_PER_LOT: u64 = 100_000_000;

/// A volume in 10⁻⁸ lot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Volume(pub u64);

impl Volume {
    pub const ZERO: Volume = Volume(0);

    /// The nearest unit count to `lots`; `None` for a negative, non-finite or absurd value.
    pub fn from_lots(lots: f64) -> Option<Volume> {
        if !lots.is_finite() || lots < 0.0 {
            return None;
        }
        let units = (lots * UNITS_PER_LOT as f64).round();
        // 10¹¹ lots is far above any broker's maximum; beyond it the f64 → u64 cast would
        // saturate silently.
        if units > 1e19 {
            return None;
        }
        Some(Volume(units as u64))
    }

    pub fn lots(self) -> f64 {
        self.0 as f64 / UNITS_PER_LOT as f64
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    pub fn saturating_sub(self, other: Volume) -> Volume {
        Volume(self.0.saturating_sub(other.0))
    }

    pub fn saturating_add(self, other: Volume) -> Volume {
        Volume(self.0.saturating_add(other.0))
    }
}

/// What the slave EA reports about one of its broker's symbols (hello / symbol info).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SymbolLimits {
    pub min: Volume,
    pub max: Volume,
    /// Every traded volume is a multiple of `step`. Never zero.
    pub step: Volume,
    /// Units of the base asset in one lot (100 000 for most FX brokers, 1 for some CFDs).
    pub contract_size: f64,
    /// Smallest price change.
    pub tick_size: f64,
    /// Account-currency value of one tick move for one lot.
    pub tick_value: f64,
    /// Price size of one "point" for deviation and fixed-distance settings.
    pub point: f64,
}

impl Default for SymbolLimits {
    fn default() -> Self {
        SymbolLimits::fx()
    }
}

impl SymbolLimits {
    /// The common FX limits: 0.01 – 100 lots in steps of 0.01, 100 000 units a lot.
    pub fn fx() -> SymbolLimits {
        SymbolLimits {
            min: Volume(UNITS_PER_LOT / 100),
            max: Volume(100 * UNITS_PER_LOT),
            step: Volume(UNITS_PER_LOT / 100),
            contract_size: 100_000.0,
            tick_size: 0.00001,
            tick_value: 1.0,
            point: 0.00001,
        }
    }

    /// Whether the limits are usable: step > 0, min ≤ max, min and max on the step.
    pub fn is_valid(&self) -> bool {
        self.step.0 > 0
            && self.min.0 > 0
            && self.min <= self.max
            && self.min.0.is_multiple_of(self.step.0)
            && self.max.0.is_multiple_of(self.step.0)
            && self.contract_size.is_finite()
            && self.contract_size > 0.0
    }

    /// `v` rounded down to a multiple of the step.
    pub fn floor_to_step(&self, v: Volume) -> Volume {
        let step = self.step.0.max(1);
        Volume(v.0 / step * step)
    }

    pub fn is_on_step(&self, v: Volume) -> bool {
        v.0.is_multiple_of(self.step.0.max(1))
    }

    /// Whether the broker would take `v` as one order.
    pub fn is_tradable(&self, v: Volume) -> bool {
        v >= self.min && v <= self.max && self.is_on_step(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lots_round_trip_without_dust() {
        let a = Volume::from_lots(0.1).unwrap();
        let b = Volume::from_lots(0.2).unwrap();
        assert_eq!(a.saturating_add(b), Volume::from_lots(0.3).unwrap());
        assert_eq!(Volume::from_lots(1.23).unwrap().lots(), 1.23);
        assert_eq!(Volume::from_lots(-0.01), None);
        assert_eq!(Volume::from_lots(f64::NAN), None);
        assert_eq!(Volume::from_lots(1e30), None);
    }

    #[test]
    fn floor_to_step_never_rounds_up() {
        let l = SymbolLimits::fx();
        assert!(l.is_valid());
        assert_eq!(
            l.floor_to_step(Volume::from_lots(0.019).unwrap()),
            Volume::from_lots(0.01).unwrap()
        );
        assert_eq!(
            l.floor_to_step(Volume::from_lots(0.02).unwrap()),
            Volume::from_lots(0.02).unwrap()
        );
        assert!(!l.is_tradable(Volume::from_lots(0.005).unwrap()));
        assert!(l.is_tradable(Volume::from_lots(100.0).unwrap()));
        assert!(!l.is_tradable(Volume::from_lots(100.01).unwrap()));
    }
}
