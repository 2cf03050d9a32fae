//! Seed 003's KPIs, judged from a finished run's figures.
//!
//! Owns the thresholds and the verdict only; it must never measure anything itself.

use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Kpi {
    pub name: &'static str,
    pub value: f64,
    /// The value must be below this (`at_most` = false) or at most this (`at_most` = true).
    pub limit: f64,
    pub at_most: bool,
    pub unit: &'static str,
    pub ok: bool,
}

fn below(name: &'static str, value: f64, limit: f64, unit: &'static str) -> Kpi {
    Kpi {
        name,
        value,
        limit,
        at_most: false,
        unit,
        ok: value < limit,
    }
}

/// Runtime lag p95 < 0.5 s, queue time mean < 200 ms, queue depth peak < 50, zero stale drops.
pub fn judge(lag_p95_ms: f64, queue_mean_ms: f64, depth_peak: usize, stale: u64) -> Vec<Kpi> {
    vec![
        below("runtime_lag_p95", lag_p95_ms, 500.0, "ms"),
        below("queue_time_mean", queue_mean_ms, 200.0, "ms"),
        below("queue_depth_peak", depth_peak as f64, 50.0, "messages"),
        Kpi {
            name: "stale_drops",
            value: stale as f64,
            limit: 0.0,
            at_most: true,
            unit: "messages",
            ok: stale == 0,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kpi_fails_on_its_own() {
        assert!(judge(10.0, 5.0, 3, 0).iter().all(|k| k.ok));
        for (i, k) in [
            judge(500.0, 5.0, 3, 0),
            judge(10.0, 200.0, 3, 0),
            judge(10.0, 5.0, 50, 0),
            judge(10.0, 5.0, 3, 1),
        ]
        .iter()
        .enumerate()
        {
            let failed: Vec<usize> = k
                .iter()
                .enumerate()
                .filter(|(_, k)| !k.ok)
                .map(|(j, _)| j)
                .collect();
            assert_eq!(failed, vec![i]);
        }
    }
}
