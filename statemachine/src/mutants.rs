//! Planted bugs, to prove the simulator is not vacuous.
//!
//! With the `sim-mutants` feature, a test or `echo-sim --mutant NAME` switches one known bug
//! on for the current thread; each machine consults [`active`] at the one place the bug lives.
//! Without the feature [`active`] is a constant `false` and every mutant compiles away. This
//! module must never be enabled in a production build, and never reads anything but its own
//! thread-local switch (so parallel seeds cannot disturb each other).

/// One planted bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mutant {
    /// core: acknowledge CORE_ACCEPTED when the intent is admitted, before the journal write.
    AckBeforeDurable,
    /// core: a failed FinishDelivery is not retried; the delivery is forgotten as if durable.
    SkipFinishRetry,
    /// core: no re-send of a delivery at AGENT_BUFFERED / PIPE_DELIVERED without a result.
    NoReconciler,
    /// core: a full worker queue drops the intent silently instead of answering BROKER_BUSY.
    FullQueueDrops,
    /// core: give up after max_retries with FAILED at once, without cancelling at the slave.
    GiveUpWithoutCancel,
    /// ids: `trade_id` is hashed and compared without lower-casing it.
    HashWithoutNormalising,
    /// agent: report AGENT_BUFFERED when the command arrives, before the ledger write.
    BufferedBeforeLedger,
    /// slave EA: a repeated command_id is executed again.
    SlaveForgetsDedupe,
    /// market data: a full critical FIFO evicts its oldest message to take the new one.
    MdCriticalEvictsOldest,
    /// market data: a tick for a symbol already queued keeps the queued (older) tick.
    MdCoalesceKeepsOldest,
    /// market data: raising the routing minimum does not purge queued ticks below it.
    MdRoutingKeepsQueued,
    /// policy: a partial close closes the master's lots instead of the same fraction of the
    /// slave's own position.
    PartialByMasterLots,
    /// policy: catch-up expiry drops a close (or modify) older than `max_age_ms` like an open.
    CatchUpExpiresCloses,
    /// policy: risk-% sizing rounds *up* to the slave's step, risking more than the budget.
    RiskSizingIgnoresBudget,
    /// policy: the price-deviation guard measures the signed distance fill − price, so a
    /// buy far above (or a sell far below) the master's fill passes.
    DeviationGuardSignFlipped,
    /// slave EA: the exposure limits count only recorded positions, not the opens already
    /// placed and unanswered.
    ExposureIgnoresInFlight,
    /// policy: a partial close rounds the slave's share *up* to its step, closing more than
    /// the master's fraction.
    PartialCloseRoundsUp,
    /// core: a modify or close is addressed to the ticket of the trade's previous slave
    /// position (the ticket map is not updated when a partial close moves the position to a
    /// new ticket).
    PartialLosesTicket,
    /// slave EA: a master's trigger opens at market whatever became of the slave's pending
    /// order — a second position when it had already filled, and the pending left behind
    /// when it had not.
    TriggerIgnoresFill,
    /// slave EA: eviction ignores `min_retained_ms`: past `max_executed_retained` the oldest
    /// record goes however young it is, so a burst of commands pushes out one whose result is
    /// still on its way to the core.
    SlaveEvictsYoung,
    /// slave EA: eviction also forgets an unfinished command (written ahead, at the broker or
    /// recording), so its redelivery is taken as new.
    SlaveEvictsUnfinished,
    /// slave EA: a close of a split position closes one leg only (and reports the position
    /// closed in full); a partial close takes its share from one leg only.
    SplitCloseFirstLegOnly,
    /// slave EA: an open sent as a catch-up is decided like a live one — beyond the deviation
    /// guard it waits for the price and answers PRICE_DEVIATION instead of EXPIRED.
    CatchUpIgnoresFlag,
    /// core: an open read back from the journal gets its copy terms rebuilt without the
    /// master's facts journaled with its intent (balance/equity unknown), as before they were
    /// journaled: a ratio-sized one is refused ACCOUNT_FACTS_UNKNOWN only because the core
    /// restarted.
    RecoveryDropsFacts,
    /// core: a delivery keeps its place in its agent's send window when it is buffered or
    /// finishes, so the window fills with finished deliveries and the commands queued behind
    /// it never go.
    WindowLeaksOnFinish,
    /// agent: a PipeDeliveryAck OK does not free the command's place in its slave's pipe
    /// window, so once the window has filled nothing more is written to that pipe.
    PipeWindowLeaksOnAck,
    /// core: an agent's refusal for a full table (BROKER_BUSY at AGENT_BUFFERED) counts as a
    /// failed attempt, as before T40: a busy agent ends copies FAILED MAX_RETRIES.
    AgentFullSpendsAttempts,
    /// agent: a slave EA's PipeDeliveryAck RETRY (busy) counts as a failed pipe write, as
    /// before T49: a busy EA parks commands and makes the core spend its attempts.
    EaBusySpendsAttempts,
}

impl Mutant {
    pub const ALL: &'static [Mutant] = &[
        Mutant::AckBeforeDurable,
        Mutant::SkipFinishRetry,
        Mutant::NoReconciler,
        Mutant::FullQueueDrops,
        Mutant::GiveUpWithoutCancel,
        Mutant::HashWithoutNormalising,
        Mutant::BufferedBeforeLedger,
        Mutant::SlaveForgetsDedupe,
        Mutant::MdCriticalEvictsOldest,
        Mutant::MdCoalesceKeepsOldest,
        Mutant::MdRoutingKeepsQueued,
        Mutant::PartialByMasterLots,
        Mutant::CatchUpExpiresCloses,
        Mutant::RiskSizingIgnoresBudget,
        Mutant::DeviationGuardSignFlipped,
        Mutant::ExposureIgnoresInFlight,
        Mutant::PartialCloseRoundsUp,
        Mutant::PartialLosesTicket,
        Mutant::TriggerIgnoresFill,
        Mutant::SlaveEvictsYoung,
        Mutant::SlaveEvictsUnfinished,
        Mutant::SplitCloseFirstLegOnly,
        Mutant::CatchUpIgnoresFlag,
        Mutant::RecoveryDropsFacts,
        Mutant::WindowLeaksOnFinish,
        Mutant::PipeWindowLeaksOnAck,
        Mutant::AgentFullSpendsAttempts,
        Mutant::EaBusySpendsAttempts,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mutant::AckBeforeDurable => "ack-before-durable",
            Mutant::SkipFinishRetry => "skip-finish-retry",
            Mutant::NoReconciler => "no-reconciler",
            Mutant::FullQueueDrops => "full-queue-drops",
            Mutant::GiveUpWithoutCancel => "give-up-without-cancel",
            Mutant::HashWithoutNormalising => "hash-without-normalising",
            Mutant::BufferedBeforeLedger => "buffered-before-ledger",
            Mutant::SlaveForgetsDedupe => "slave-forgets-dedupe",
            Mutant::MdCriticalEvictsOldest => "md-critical-evicts-oldest",
            Mutant::MdCoalesceKeepsOldest => "md-coalesce-keeps-oldest",
            Mutant::MdRoutingKeepsQueued => "md-routing-keeps-queued",
            Mutant::PartialByMasterLots => "partial-by-master-lots",
            Mutant::CatchUpExpiresCloses => "catch-up-expires-closes",
            Mutant::RiskSizingIgnoresBudget => "risk-sizing-ignores-budget",
            Mutant::DeviationGuardSignFlipped => "deviation-guard-sign-flipped",
            Mutant::ExposureIgnoresInFlight => "exposure-ignores-in-flight",
            Mutant::PartialCloseRoundsUp => "partial-close-rounds-up",
            Mutant::PartialLosesTicket => "partial-loses-ticket",
            Mutant::TriggerIgnoresFill => "trigger-ignores-fill",
            Mutant::SlaveEvictsYoung => "slave-evicts-young",
            Mutant::SlaveEvictsUnfinished => "slave-evicts-unfinished",
            Mutant::SplitCloseFirstLegOnly => "split-close-first-leg-only",
            Mutant::CatchUpIgnoresFlag => "catch-up-ignores-flag",
            Mutant::RecoveryDropsFacts => "recovery-drops-facts",
            Mutant::WindowLeaksOnFinish => "window-leaks-on-finish",
            Mutant::PipeWindowLeaksOnAck => "pipe-window-leaks-on-ack",
            Mutant::AgentFullSpendsAttempts => "agent-full-spends-attempts",
            Mutant::EaBusySpendsAttempts => "ea-busy-spends-attempts",
        }
    }

    pub fn from_name(s: &str) -> Option<Mutant> {
        Mutant::ALL.iter().copied().find(|m| m.name() == s)
    }
}

#[cfg(feature = "sim-mutants")]
thread_local! {
    static ACTIVE: std::cell::Cell<Option<Mutant>> = const { std::cell::Cell::new(None) };
}

/// Switches `m` on (or every mutant off) for the current thread; true if it took effect.
#[cfg(feature = "sim-mutants")]
pub fn set(m: Option<Mutant>) -> bool {
    ACTIVE.with(|a| a.set(m));
    true
}

/// Without `sim-mutants` a bug cannot be planted: `set(Some(_))` says so by returning false.
#[cfg(not(feature = "sim-mutants"))]
pub fn set(m: Option<Mutant>) -> bool {
    m.is_none()
}

/// Whether the planted bug `m` is switched on for this thread.
#[cfg(feature = "sim-mutants")]
#[inline]
pub fn active(m: Mutant) -> bool {
    ACTIVE.with(|a| a.get() == Some(m))
}

/// Without `sim-mutants` no bug can be switched on.
#[cfg(not(feature = "sim-mutants"))]
#[inline(always)]
pub const fn active(_m: Mutant) -> bool {
    false
}
