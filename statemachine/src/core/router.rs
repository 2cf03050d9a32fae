//! Seed 000's router: a trade always lands on the same worker, and each worker's queue is
//! bounded.
//!
//! `trade_id` is normalised to lower case when it is built ([`crate::ids::TradeId`]), hashed
//! with the seedless FNV-1a ([`crate::ids::stable_hash`]) and masked to one of
//! `worker_pool_size` (a power of two) workers, so a trade's intents are handled in order by
//! one worker. A worker's queue holds the intents it admitted and has not finished journaling;
//! when it is full the intent is refused with `ERROR_CODE_BROKER_BUSY`, the refusal is
//! journaled and acknowledged so the master retries. Messages without a trade id never enter
//! the pool. This module must never let a queue exceed `queue_depth_max`, nor use `trade_id`
//! as a metric label.

use crate::config::RouterConfig;
use crate::ids::{stable_hash, TradeId};
use crate::spec::MachineSpec;
use crate::transitions;

transitions! {
    /// Router transitions.
    pub enum RouterT ("core.router") {
        Enqueue = "T01": "worker w = hash(lower(trade_id)) mod pool, depth < queue_depth_max",
            "TradeIntent with a trade_id" => "depth(w) + 1";
            "intent handed to core.intake on worker w (span core.router.schedule)",
        RejectFull = "T02": "worker w with depth = queue_depth_max",
            "TradeIntent with a trade_id" => "depth(w) unchanged";
            "TradeIntentAck{FAILED, ERROR_CODE_BROKER_BUSY, retry_after_ms}; RecordRejection write; rejections_total{worker_id,reason=queue_full}++",
        Control = "T03": "any",
            "AgentHello or Heartbeat (no trade_id)" => "unchanged";
            "handled on the control path, outside the worker pool",
        Dequeue = "T04": "worker w with an intent admitted",
            "that intent journaled, or refused after admission" => "depth(w) - 1";
            "dispatch_total{worker_id,result}++; dispatch_duration_ms observed (span core.router.worker)",
    }
}

pub const SPEC: MachineSpec = MachineSpec {
    name: "core.router",
    summary: "Maps each trade to one worker shard and bounds every shard's queue (seed 000).",
    states: &[(
        "depth(w)",
        "intents worker w admitted and has not finished journaling, 0..=queue_depth_max",
    )],
    invariants: &[
        "Every spelling of a trade_id (any case) maps to the same worker.",
        "depth(w) <= queue_depth_max for every worker, at every step.",
        "An intent refused for a full queue is answered (BROKER_BUSY), never dropped silently.",
    ],
    transitions: RouterT::TABLE,
};

/// The worker pool's bookkeeping: which worker a trade belongs to and how full each is.
#[derive(Clone, Debug)]
pub struct Router {
    mask: u64,
    max_depth: u32,
    depth: Vec<u32>,
}

impl Router {
    pub fn new(cfg: RouterConfig) -> Self {
        // RouterConfig is validated to a power of two in 2..=32; fall back to 1 shard rather
        // than panicking if a caller bypassed validation.
        let n = cfg.worker_pool_size.max(1).next_power_of_two();
        Router {
            mask: u64::from(n) - 1,
            max_depth: cfg.queue_depth_max.max(1),
            depth: vec![0; n as usize],
        }
    }

    /// The worker that owns `trade`.
    pub fn worker_for(&self, trade: &TradeId) -> u32 {
        (stable_hash(trade.as_str().as_bytes()) & self.mask) as u32
    }

    /// Admits one intent to worker `w` if its queue has room.
    pub fn try_admit(&mut self, w: u32) -> bool {
        let d = &mut self.depth[w as usize];
        if *d >= self.max_depth {
            return false;
        }
        *d += 1;
        true
    }

    /// Releases one admitted intent of worker `w`.
    pub fn release(&mut self, w: u32) {
        let d = &mut self.depth[w as usize];
        debug_assert!(*d > 0, "release without admit on worker {w}");
        *d = d.saturating_sub(1);
    }

    pub fn depths(&self) -> &[u32] {
        &self.depth
    }

    pub fn max_depth(&self) -> u32 {
        self.max_depth
    }
}
