//! Resident memory and CPU time of processes, from `/proc` (Linux).
//!
//! Owns sampling and the peak / total bookkeeping per process name. It must never signal or
//! otherwise touch the processes it watches. On a system without `/proc` every figure is 0.

use std::collections::BTreeMap;

/// Clock ticks per second of `/proc/<pid>/stat` times: 100 on every Linux this runs on
/// (`getconf CLK_TCK`); reading it would take libc.
const TICKS_PER_S: f64 = 100.0;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcUsage {
    pub rss_peak_kb: u64,
    pub rss_last_kb: u64,
    /// User + system CPU seconds at the last sample.
    pub cpu_s: f64,
    /// RSS at each sample (one a second), for the flat-memory check.
    pub rss_series_kb: Vec<u64>,
}

fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn cpu_s(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields after its closing parenthesis are fixed.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_S)
}

/// Usage per process name over the run.
#[derive(Debug, Default)]
pub struct ProcSampler {
    pub usage: BTreeMap<String, ProcUsage>,
}

impl ProcSampler {
    /// One sample of every `(name, pid)`; a process that is gone keeps its last figures.
    pub fn sample(&mut self, procs: &[(String, u32)]) {
        for (name, pid) in procs {
            let u = self.usage.entry(name.clone()).or_default();
            if let Some(rss) = status_kb(*pid, "VmRSS:") {
                u.rss_last_kb = rss;
                u.rss_peak_kb = u.rss_peak_kb.max(rss);
                u.rss_series_kb.push(rss);
            }
            if let Some(hwm) = status_kb(*pid, "VmHWM:") {
                u.rss_peak_kb = u.rss_peak_kb.max(hwm);
            }
            if let Some(c) = cpu_s(*pid) {
                u.cpu_s = c;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_process() {
        let mut s = ProcSampler::default();
        s.sample(&[("self".into(), std::process::id())]);
        let u = &s.usage["self"];
        assert!(u.rss_peak_kb > 0 && u.rss_last_kb > 0, "{u:?}");
        assert!(u.cpu_s >= 0.0);
    }
}
