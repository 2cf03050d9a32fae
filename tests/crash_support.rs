//! Shared by the crash suites: run one test of this binary as a separate writer process,
//! collect the ids it reports durable (`DURABLE <n>` lines), and `SIGKILL` it mid-stream.

use std::io::{BufRead, BufReader};
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

/// Starts `child_test` of the current test binary with `env = value`, waits until it reported
/// at least `at_least` durable writes, kills it with SIGKILL (no destructor, no close), and
/// returns every id it reported before dying.
pub fn kill_writer_after(
    child_test: &str,
    env: &str,
    value: &std::path::Path,
    at_least: usize,
) -> Vec<u64> {
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Process::new(exe)
        .args([child_test, "--exact", "--nocapture", "--test-threads=1"])
        .env(env, value)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn writer");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut durable = Vec::new();
    let t0 = Instant::now();
    while durable.len() < at_least {
        match lines.next() {
            Some(Ok(l)) => {
                if let Some(n) = l.strip_prefix("DURABLE ") {
                    durable.push(n.parse::<u64>().expect("op number"));
                }
            }
            _ => panic!("the writer stopped after {} durable writes", durable.len()),
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "writer too slow");
    }
    child.kill().expect("kill");
    let _ = child.wait();
    // Everything it printed before dying is still in the pipe.
    for l in lines.map_while(Result::ok) {
        if let Some(n) = l.strip_prefix("DURABLE ") {
            if let Ok(n) = n.parse::<u64>() {
                durable.push(n);
            }
        }
    }
    durable
}
