//! `echo bench`: benchmarks that print figures (never tests; nothing here asserts a time).
//!
//! `echo bench peers` runs one durable fan-out workload on Echo and on NATS JetStream on this
//! machine in one run and prints one table, with the disk's fsync floor beside it. This module
//! owns the command line and the shared result shape; each side lives in its own file.

pub mod echo_fanout;
pub mod fsync;
pub mod jetstream;
pub mod peers;

use crate::app::AppError;
use crate::histogram::Histogram;

pub const USAGE: &str = "usage: echo bench peers [options]

One master × K slaves, every intent durable before it is acknowledged, every slave
acknowledging each copy: on Echo (processes: core with the Postgres journal, two agents,
reference terminals) and on NATS JetStream (file storage, publish with ack, K durable pull
consumers with explicit ack), in two modes — one intent in flight, and a pipelined window —
then one table of sustained rate and end-to-end p50/p99 and their ratio, and the disk's fsync
floor.

  --slaves K        copies per intent (default 10)
  --intents N       intents per run in the one-in-flight mode (default 200)
  --pipelined N     intents per run in the pipelined mode (default 2000)
  --window W        intents in flight in the pipelined mode (default 64)
  --nats URL        JetStream server (default 127.0.0.1:4222)
  --pg-url URL      Postgres admin URL (default postgres://postgres@127.0.0.1:5432/postgres)
  --fsync-dir DIR   directory whose disk is probed (default the temp dir)
  --only echo|jetstream   run one side only";

/// One side's result in one mode.
#[derive(Clone, Debug, Default)]
pub struct Side {
    pub intents: u64,
    /// First publish / emit to the last slave acknowledgement / fill.
    pub seconds: f64,
    /// Publish / emit → each slave's receipt, µs, one sample per copy.
    pub latency: Histogram,
}

impl Side {
    pub fn rate(&self) -> f64 {
        self.intents as f64 / self.seconds.max(1e-9)
    }
}

/// `echo bench <name> …`; `Ok(false)` when a run failed.
pub fn run(args: &[String]) -> Result<bool, AppError> {
    match args.split_first() {
        Some((cmd, rest)) if cmd == "peers" => {
            if rest.iter().any(|a| a == "-h" || a == "--help") {
                println!("{USAGE}");
                return Ok(true);
            }
            peers::run(peers::PeersOptions::parse(rest)?)
        }
        _ => Err(AppError::Usage(USAGE.into())),
    }
}
