//! The disk's floor: how many `fdatasync`s per second a directory's file system takes, and how
//! long each one is. Every durable figure (a journal commit, a ledger write, a JetStream store)
//! sits on top of this.
//!
//! Owns one probe file in the directory, removed afterwards. It must never touch another file.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::app::AppError;
use crate::histogram::Histogram;

pub struct FsyncFloor {
    pub per_s: f64,
    pub latency: Histogram,
}

/// Appends 512 bytes and `fdatasync`s, over and over, for `span`.
pub fn measure(dir: &Path, span: Duration) -> Result<FsyncFloor, AppError> {
    let path = dir.join(format!(".echo-fsync-probe-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(AppError::io(format!("creating {}", path.display())))?;
    let block = [0x5au8; 512];
    let mut latency = Histogram::default();
    let start = Instant::now();
    let result = (|| {
        while start.elapsed() < span {
            let t = Instant::now();
            f.write_all(&block)?;
            f.sync_data()?;
            latency.record(t.elapsed().as_micros() as u64);
        }
        Ok::<(), std::io::Error>(())
    })();
    let elapsed = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    result.map_err(AppError::io(format!("fsync probe in {}", dir.display())))?;
    Ok(FsyncFloor {
        per_s: latency.count() as f64 / elapsed.max(1e-9),
        latency,
    })
}
