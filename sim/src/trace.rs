//! Reading traces back: the SPEC.md conformance check auditors (and CI) run on a trace.
//!
//! A trace is NDJSON: a `header` line, then `step`, `fault` and `violation` lines. This module
//! owns the check that every step names a transition SPEC.md lists, with the same `from` and
//! `to` states. It must never accept a step it cannot match.

use echo_statemachine::spec;

/// What a checked trace contained.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TraceCheck {
    pub steps: u64,
    pub faults: u64,
    pub violations: u64,
}

/// Checks every line of `text`; the error names the first offending line.
pub fn check(text: &str) -> Result<TraceCheck, String> {
    let mut c = TraceCheck::default();
    for (n, line) in text.lines().enumerate() {
        let lineno = n + 1;
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("line {lineno}: not JSON: {e}"))?;
        let kind = v.get("type").and_then(|t| t.as_str()).unwrap_or("");
        match kind {
            "header" if lineno == 1 => {
                for k in ["seed", "commit", "profile"] {
                    if v.get(k).is_none() {
                        return Err(format!("line 1: header lacks {k:?}"));
                    }
                }
            }
            "header" => return Err(format!("line {lineno}: a second header")),
            _ if lineno == 1 => return Err("line 1: the trace must start with a header".into()),
            "step" => {
                c.steps += 1;
                let id = v.get("transition").and_then(|t| t.as_str()).unwrap_or("");
                let Some(t) = spec::find(id) else {
                    return Err(format!(
                        "line {lineno}: transition {id:?} is not in SPEC.md"
                    ));
                };
                let from = v.get("from").and_then(|t| t.as_str()).unwrap_or("");
                let to = v.get("to").and_then(|t| t.as_str()).unwrap_or("");
                if from != t.from || to != t.to {
                    return Err(format!(
                        "line {lineno}: {id} goes {from:?} → {to:?} but SPEC.md says {:?} → {:?}",
                        t.from, t.to
                    ));
                }
                if v.get("t_us").and_then(|t| t.as_u64()).is_none() {
                    return Err(format!("line {lineno}: step without t_us"));
                }
            }
            "fault" => c.faults += 1,
            "violation" => c.violations += 1,
            other => return Err(format!("line {lineno}: unknown line type {other:?}")),
        }
    }
    if c.steps == 0 {
        return Err("the trace has no steps".into());
    }
    Ok(c)
}
