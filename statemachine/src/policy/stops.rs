//! SL/TP placement on the slave, at open and on every master modify.
//!
//! This module owns the SL/TP modes: the master's exact prices, the same distances measured
//! from the slave's own fill, no SL/TP at all (the slave then closes when the master's SL/TP
//! closes the master), or fixed distances in points. It must never place a level on the wrong
//! side of the slave's fill (a stop-loss above a buy's fill would close it at once) and never
//! invent a level the mode does not ask for: a missing master level stays missing (0).

use super::reverse::mirror;
use crate::msg::Side;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopsMode {
    MasterPrice,
    SameDistance,
    DontCopy,
    /// Distances in points from the slave's fill; 0 points = no level.
    FixedDistance {
        sl_points: u32,
        tp_points: u32,
    },
}

/// The master's trade as the slave sees it when it places or modifies its copy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StopsFacts {
    pub master_side: Side,
    pub master_entry: f64,
    /// 0 = none.
    pub master_stop_loss: f64,
    pub master_take_profit: f64,
    pub reverse: bool,
    /// The slave's fill price (or its current price before it opens).
    pub slave_fill: f64,
    pub point: f64,
}

/// The slave's (stop_loss, take_profit); 0 means none.
pub fn slave_stops(mode: StopsMode, f: &StopsFacts) -> (f64, f64) {
    let (side, sl, tp) = mirror(
        f.reverse,
        f.master_side,
        f.master_stop_loss,
        f.master_take_profit,
    );
    let dist = |level: f64| (level > 0.0).then(|| (level - f.master_entry).abs());
    match mode {
        StopsMode::DontCopy => (0.0, 0.0),
        StopsMode::MasterPrice => (sl, tp),
        StopsMode::SameDistance => (
            place(side, f.slave_fill, dist(sl), true),
            place(side, f.slave_fill, dist(tp), false),
        ),
        StopsMode::FixedDistance {
            sl_points,
            tp_points,
        } => {
            let pts = |p: u32| (p > 0).then(|| f64::from(p) * f.point);
            (
                place(side, f.slave_fill, pts(sl_points), true),
                place(side, f.slave_fill, pts(tp_points), false),
            )
        }
    }
}

/// A level `distance` away from `fill` on the losing (stop) or winning (target) side.
fn place(side: Side, fill: f64, distance: Option<f64>, stop: bool) -> f64 {
    let Some(d) = distance else {
        return 0.0;
    };
    let below = matches!((side, stop), (Side::Buy, true) | (Side::Sell, false));
    let level = if below { fill - d } else { fill + d };
    // A level at or below zero cannot exist on a price chart: no level rather than a wrong one.
    if level > 0.0 {
        level
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(reverse: bool) -> StopsFacts {
        StopsFacts {
            master_side: Side::Buy,
            master_entry: 1.1000,
            master_stop_loss: 1.0950,
            master_take_profit: 1.1100,
            reverse,
            slave_fill: 1.1010,
            point: 0.0001,
        }
    }

    fn close(a: (f64, f64), b: (f64, f64)) -> bool {
        (a.0 - b.0).abs() < 1e-9 && (a.1 - b.1).abs() < 1e-9
    }

    #[test]
    fn every_mode() {
        assert_eq!(
            slave_stops(StopsMode::MasterPrice, &facts(false)),
            (1.0950, 1.1100)
        );
        assert_eq!(
            slave_stops(StopsMode::MasterPrice, &facts(true)),
            (1.1100, 1.0950)
        );
        assert_eq!(slave_stops(StopsMode::DontCopy, &facts(false)), (0.0, 0.0));
        assert!(close(
            slave_stops(StopsMode::SameDistance, &facts(false)),
            (1.0960, 1.1110)
        ));
        // Reversed: a sell at 1.1010; its SL is the master's TP distance (100 pts) above.
        assert!(close(
            slave_stops(StopsMode::SameDistance, &facts(true)),
            (1.1110, 1.0960)
        ));
        let fixed = StopsMode::FixedDistance {
            sl_points: 20,
            tp_points: 0,
        };
        assert!(close(slave_stops(fixed, &facts(false)), (1.0990, 0.0)));
        let mut none = facts(false);
        none.master_stop_loss = 0.0;
        assert_eq!(slave_stops(StopsMode::SameDistance, &none).0, 0.0);
    }
}
