//! A run's fault profile, drawn from its seed ("swarm" testing).
//!
//! Each seed gets its own rate for every fault, some near zero and some high, so different
//! seeds stress different mixes. Rates are per-mille integers. The profile is printed beside
//! the seed and written in the trace header. This module must never draw from anything but
//! the run's generator.

use std::fmt;

use crate::rng::Rng;

/// Per-mille rates and sizes of every fault the world can inject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultProfile {
    pub net_drop: u64,
    pub net_duplicate: u64,
    /// Chance that a message gets an extra random delay (which reorders it).
    pub net_delay: u64,
    pub net_delay_max_us: u64,
    /// Chance per agent↔core link per 100 ms that it partitions (both ways or one way).
    pub partition: u64,
    pub partition_max_ms: u64,
    /// Chance per 100 ms that the journal goes down for a while.
    pub journal_outage: u64,
    pub journal_outage_max_ms: u64,
    pub journal_slow: u64,
    /// Chance that a journal write commits but its reply is lost.
    pub journal_reply_lost: u64,
    pub ledger_fail: u64,
    pub disk_fail: u64,
    /// Chances per 100 ms of a crash of the core, of an agent, of an EA.
    pub crash_core: u64,
    pub crash_agent: u64,
    pub crash_ea: u64,
    pub crash_downtime_max_ms: u64,
    pub pipe_close: u64,
    pub pipe_write_fail: u64,
    pub slow_slave: u64,
    pub broker_reject: u64,
    /// Chance per 100 ms of a live delivery-config change.
    pub config_change: u64,
    /// Chance per 100 ms that a master bursts many intents at once (overload → BROKER_BUSY).
    pub burst: u64,
    /// Chance per 100 ms that a stray peer (not one of Echo's agents: a newer or broken
    /// client) connects to the core and says something it must refuse or drop.
    pub stray_peer: u64,
}

impl FaultProfile {
    /// No faults at all (the demo, and the heal phase of every run).
    pub fn none() -> Self {
        FaultProfile {
            net_drop: 0,
            net_duplicate: 0,
            net_delay: 0,
            net_delay_max_us: 0,
            partition: 0,
            partition_max_ms: 0,
            journal_outage: 0,
            journal_outage_max_ms: 0,
            journal_slow: 0,
            journal_reply_lost: 0,
            ledger_fail: 0,
            disk_fail: 0,
            crash_core: 0,
            crash_agent: 0,
            crash_ea: 0,
            crash_downtime_max_ms: 0,
            pipe_close: 0,
            pipe_write_fail: 0,
            slow_slave: 0,
            broker_reject: 0,
            config_change: 0,
            burst: 0,
            stray_peer: 0,
        }
    }

    /// Draws a profile: each rate is zero a quarter of the time, else low, medium or high.
    pub fn draw(rng: &mut Rng) -> Self {
        let mut rate = |high: u64| -> u64 {
            match rng.below(4) {
                0 => 0,
                1 => rng.range(1, (high / 10).max(1)),
                2 => rng.range(1, (high / 3).max(1)),
                _ => rng.range(1, high),
            }
        };
        let mut p = FaultProfile {
            net_drop: rate(100),
            net_duplicate: rate(100),
            net_delay: rate(300),
            net_delay_max_us: 0,
            partition: rate(60),
            partition_max_ms: 0,
            journal_outage: rate(40),
            journal_outage_max_ms: 0,
            journal_slow: rate(200),
            journal_reply_lost: rate(100),
            ledger_fail: rate(100),
            disk_fail: rate(100),
            crash_core: rate(20),
            crash_agent: rate(30),
            crash_ea: rate(30),
            crash_downtime_max_ms: 0,
            pipe_close: rate(30),
            pipe_write_fail: rate(100),
            slow_slave: rate(200),
            broker_reject: rate(50),
            config_change: rate(50),
            burst: rate(30),
            stray_peer: rate(20),
        };
        p.net_delay_max_us = rng.range(100, 20_000);
        p.partition_max_ms = rng.range(50, 6_000);
        p.journal_outage_max_ms = rng.range(50, 5_000);
        p.crash_downtime_max_ms = rng.range(10, 2_000);
        p
    }
}

impl FaultProfile {
    /// Every per-mille rate by name (sizes and bounds are not rates: shrinking leaves them).
    pub fn rates_mut(&mut self) -> Vec<(&'static str, &mut u64)> {
        vec![
            ("net_drop", &mut self.net_drop),
            ("net_duplicate", &mut self.net_duplicate),
            ("net_delay", &mut self.net_delay),
            ("partition", &mut self.partition),
            ("journal_outage", &mut self.journal_outage),
            ("journal_slow", &mut self.journal_slow),
            ("journal_reply_lost", &mut self.journal_reply_lost),
            ("ledger_fail", &mut self.ledger_fail),
            ("disk_fail", &mut self.disk_fail),
            ("crash_core", &mut self.crash_core),
            ("crash_agent", &mut self.crash_agent),
            ("crash_ea", &mut self.crash_ea),
            ("pipe_close", &mut self.pipe_close),
            ("pipe_write_fail", &mut self.pipe_write_fail),
            ("slow_slave", &mut self.slow_slave),
            ("broker_reject", &mut self.broker_reject),
            ("config_change", &mut self.config_change),
            ("burst", &mut self.burst),
            ("stray_peer", &mut self.stray_peer),
        ]
    }
}

impl fmt::Display for FaultProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "drop={} dup={} delay={}(≤{}us) partition={}(≤{}ms) journal_outage={}(≤{}ms) journal_slow={} reply_lost={} ledger_fail={} disk_fail={} crash core={} agent={} ea={}(≤{}ms) pipe_close={} pipe_write_fail={} slow_slave={} broker_reject={} config={} burst={} stray_peer={} (‰)",
            self.net_drop, self.net_duplicate, self.net_delay, self.net_delay_max_us,
            self.partition, self.partition_max_ms, self.journal_outage, self.journal_outage_max_ms,
            self.journal_slow, self.journal_reply_lost, self.ledger_fail, self.disk_fail,
            self.crash_core, self.crash_agent, self.crash_ea, self.crash_downtime_max_ms,
            self.pipe_close, self.pipe_write_fail, self.slow_slave, self.broker_reject,
            self.config_change, self.burst, self.stray_peer
        )
    }
}
