//! Rendering a trace for auditors: `echo-sim trace render FILE` turns an NDJSON trace (see
//! [`crate::trace`]) into one self-contained HTML page — a timeline with one lane per node
//! (core, agents, masters, slaves), steps as marks at their simulated time, messages as arrows
//! where the receiving step can be inferred, faults and violations as markers, a filter that
//! narrows the view to one trade's or intent's journey, and a table of the filtered steps.
//!
//! This module owns reading a trace into the page's data (lanes, steps, ids found in the text,
//! inferred message arrows, fault and violation markers) and the page itself (inline CSS and
//! JavaScript, the data embedded as JSON). It must never make the page load anything from the
//! network, never put trace text into the page except as escaped text (HTML-escaped in markup,
//! `<`, `>`, `&` and line separators escaped inside the embedded JSON, `textContent` in the
//! script), and never judge a trace: whether it conforms is [`crate::trace::check`]'s job.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};

/// How far after a send the receiving step may lie, in simulated µs, for an arrow to be drawn.
const MAX_LATENCY_US: u64 = 500_000;
/// How many later steps of the receiving lane are looked at for a match.
const MAX_LOOKAHEAD: usize = 256;

/// Renders `trace_text` (an `echo-sim` NDJSON trace) as a self-contained HTML page.
///
/// Fails on an empty trace or a line that is not JSON; lines of an unknown type and a
/// missing header are reported in the page as warnings.
pub fn render_html(trace_text: &str) -> Result<String, String> {
    let model = Model::parse(trace_text)?;
    let data = model.to_json();
    let data = script_safe_json(&data);
    Ok(page(&model, &data))
}

// ---- reading the trace ------------------------------------------------------------------

struct Step {
    t: u64,
    lane: usize,
    input: String,
    transition: String,
    from: String,
    to: String,
    subject: String,
    outputs: Vec<String>,
    line: usize,
    keys: Vec<String>,
}

struct Fault {
    t: u64,
    kind: String,
    detail: String,
    lanes: Vec<usize>,
    keys: Vec<String>,
    dur_us: u64,
    line: usize,
}

struct Violation {
    t: u64,
    what: String,
    lanes: Vec<usize>,
    keys: Vec<String>,
    line: usize,
}

/// A message a step sent: output `out` of step `src`, to lane `dst_lane`, received (as far as
/// the trace shows) by step `dst`.
struct Msg {
    src: usize,
    out: usize,
    dst_lane: usize,
    dst: Option<usize>,
    /// The fault (index into `faults`) the trace logged for this message: dropped, duplicated.
    fault: Option<usize>,
}

struct Model {
    header: Option<serde_json::Map<String, Value>>,
    lanes: Vec<String>,
    steps: Vec<Step>,
    faults: Vec<Fault>,
    violations: Vec<Violation>,
    msgs: Vec<Msg>,
    /// trade id → the intents seen with it.
    trades: BTreeMap<String, Vec<String>>,
    warnings: Vec<String>,
}

struct RawStep {
    t: u64,
    node: String,
    input: String,
    transition: String,
    from: String,
    to: String,
    subject: String,
    outputs: Vec<String>,
    line: usize,
}

fn field(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

impl Model {
    fn parse(text: &str) -> Result<Model, String> {
        let mut header = None;
        let mut raw = Vec::new();
        let mut raw_faults = Vec::new();
        let mut raw_viol = Vec::new();
        let mut warnings = Vec::new();
        let mut unknown: BTreeMap<String, usize> = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let lineno = n + 1;
            if line.trim().is_empty() {
                continue;
            }
            let v: Value =
                serde_json::from_str(line).map_err(|e| format!("line {lineno}: not JSON: {e}"))?;
            let t = v.get("t_us").and_then(Value::as_u64).unwrap_or(0);
            match v.get("type").and_then(Value::as_str).unwrap_or("") {
                "header" => {
                    if header.is_some() {
                        warnings.push(format!("line {lineno}: a second header (ignored)"));
                    } else if let Value::Object(m) = v {
                        header = Some(m);
                    }
                }
                "step" => raw.push(RawStep {
                    t,
                    node: field(&v, "node"),
                    input: field(&v, "input"),
                    transition: field(&v, "transition"),
                    from: field(&v, "from"),
                    to: field(&v, "to"),
                    subject: field(&v, "subject"),
                    outputs: match v.get("outputs") {
                        Some(Value::Array(a)) => a
                            .iter()
                            .map(|o| match o {
                                Value::String(s) => s.clone(),
                                other => other.to_string(),
                            })
                            .collect(),
                        _ => Vec::new(),
                    },
                    line: lineno,
                }),
                "fault" => raw_faults.push((t, field(&v, "fault"), field(&v, "detail"), lineno)),
                "violation" => raw_viol.push((t, field(&v, "what"), lineno)),
                other => *unknown.entry(other.to_string()).or_insert(0) += 1,
            }
        }
        if header.is_none() && raw.is_empty() && raw_faults.is_empty() && raw_viol.is_empty() {
            return Err("the trace is empty".into());
        }
        if header.is_none() {
            warnings.push("the trace has no header line".into());
        }
        for (k, n) in unknown {
            warnings.push(format!("{n} line(s) of unknown type {k:?} (not shown)"));
        }

        let lanes = lane_order(&raw);
        let lane_of: HashMap<&str, usize> = lanes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        let agent_of = agent_map(&raw, &lane_of);

        let mut trades: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let steps: Vec<Step> = raw
            .into_iter()
            .map(|r| {
                let mut ids = Ids::default();
                scan_ids(&r.input, &mut ids);
                for o in &r.outputs {
                    scan_ids(o, &mut ids);
                }
                for s in std::iter::once(&r.input).chain(r.outputs.iter()) {
                    link_trades(s, &mut trades);
                }
                let mut keys = Vec::new();
                if !r.subject.is_empty() {
                    keys.push(r.subject.clone());
                }
                for k in ids
                    .commands
                    .into_iter()
                    .chain(ids.intents)
                    .chain(ids.trades)
                {
                    if !keys.contains(&k) {
                        keys.push(k);
                    }
                }
                Step {
                    t: r.t,
                    lane: lane_of[r.node.as_str()],
                    input: r.input,
                    transition: r.transition,
                    from: r.from,
                    to: r.to,
                    subject: r.subject,
                    outputs: r.outputs,
                    line: r.line,
                    keys,
                }
            })
            .collect();

        let mut msgs = infer_messages(&steps, &lanes, &lane_of, &agent_of);

        // journal op → the last core step that wrote it, to tie a lost journal reply to its ids.
        let mut journal_ops: Vec<(u64, String, usize)> = Vec::new();
        for (i, s) in steps.iter().enumerate() {
            for o in &s.outputs {
                if let Some(rest) = o.strip_prefix("journal op ") {
                    if let Some((op, _)) = rest.split_once(':') {
                        journal_ops.push((s.t, op.to_string(), i));
                    }
                }
            }
        }

        let mut faults: Vec<Fault> = raw_faults
            .into_iter()
            .map(|(t, kind, detail, line)| {
                let mut ids = Ids::default();
                scan_ids(&detail, &mut ids);
                let mut keys: Vec<String> = Vec::new();
                if kind.contains("journal") {
                    if let Some(op) = detail.strip_prefix("op ") {
                        let op = op.trim();
                        if let Some(&(_, _, i)) = journal_ops
                            .iter()
                            .rev()
                            .find(|(ot, o, _)| *ot <= t && o == op)
                        {
                            let s = &steps[i];
                            for o in &s.outputs {
                                if o.starts_with(&format!("journal op {op}:")) {
                                    scan_ids(o, &mut ids);
                                }
                            }
                        }
                    }
                }
                for k in ids
                    .commands
                    .into_iter()
                    .chain(ids.intents)
                    .chain(ids.trades)
                {
                    if !keys.contains(&k) {
                        keys.push(k);
                    }
                }
                let mut fl = nodes_in(&detail, &lane_of);
                if fl.is_empty() && kind.contains("journal") {
                    fl.extend(lane_of.get("core"));
                }
                if detail.contains(" link") {
                    if let Some(&c) = lane_of.get("core") {
                        if !fl.contains(&c) {
                            fl.push(c);
                        }
                    }
                }
                Fault {
                    t,
                    dur_us: duration_ms(&detail).map_or(0, |ms| ms * 1_000),
                    kind,
                    detail,
                    lanes: fl,
                    keys,
                    line,
                }
            })
            .collect();

        link_faults_to_messages(&mut faults, &mut msgs, &steps, &lane_of);

        let violations = raw_viol
            .into_iter()
            .map(|(t, what, line)| {
                let mut ids = Ids::default();
                scan_ids(&what, &mut ids);
                let keys = ids
                    .commands
                    .into_iter()
                    .chain(ids.intents)
                    .chain(ids.trades)
                    .collect();
                Violation {
                    t,
                    lanes: nodes_in(&what, &lane_of),
                    what,
                    keys,
                    line,
                }
            })
            .collect();

        Ok(Model {
            header,
            lanes,
            steps,
            faults,
            violations,
            msgs,
            trades,
            warnings,
        })
    }

    /// The page's data: strings are interned once (`strs`) and referred to by index.
    fn to_json(&self) -> Value {
        let mut strs = Interner::default();
        let steps: Vec<Value> = self
            .steps
            .iter()
            .map(|s| {
                json!([
                    s.t,
                    s.lane,
                    strs.id(&s.input),
                    strs.id(&s.transition),
                    strs.id(&s.from),
                    strs.id(&s.to),
                    strs.id(&s.subject),
                    s.outputs.iter().map(|o| strs.id(o)).collect::<Vec<_>>(),
                    s.line,
                    s.keys.iter().map(|k| strs.id(k)).collect::<Vec<_>>(),
                ])
            })
            .collect();
        let msgs: Vec<Value> = self
            .msgs
            .iter()
            .map(|m| {
                json!([
                    m.src,
                    m.out,
                    m.dst_lane,
                    m.dst.map_or(-1, |d| d as i64),
                    m.fault.map_or(-1, |f| f as i64)
                ])
            })
            .collect();
        let faults: Vec<Value> = self
            .faults
            .iter()
            .map(|f| {
                json!([
                    f.t,
                    strs.id(&f.kind),
                    strs.id(&f.detail),
                    f.lanes,
                    f.keys.iter().map(|k| strs.id(k)).collect::<Vec<_>>(),
                    f.dur_us,
                    f.line,
                ])
            })
            .collect();
        let viols: Vec<Value> = self
            .violations
            .iter()
            .map(|v| {
                json!([
                    v.t,
                    strs.id(&v.what),
                    v.lanes,
                    v.keys.iter().map(|k| strs.id(k)).collect::<Vec<_>>(),
                    v.line,
                ])
            })
            .collect();
        let trades: Vec<Value> = self.trades.iter().map(|(t, is)| json!([t, is])).collect();
        json!({
            "header": self.header.clone().map(Value::Object).unwrap_or(Value::Null),
            "lanes": self.lanes,
            "steps": steps,
            "msgs": msgs,
            "faults": faults,
            "viols": viols,
            "trades": trades,
            "warnings": self.warnings,
            "strs": strs.list,
        })
    }
}

#[derive(Default)]
struct Interner {
    map: HashMap<String, usize>,
    list: Vec<String>,
}

impl Interner {
    fn id(&mut self, s: &str) -> usize {
        if let Some(&i) = self.map.get(s) {
            return i;
        }
        self.list.push(s.to_string());
        self.map.insert(s.to_string(), self.list.len() - 1);
        self.list.len() - 1
    }
}

// ---- lanes ------------------------------------------------------------------------------

/// (kind rank, kind, number, name): core, agents, masters, slaves, then anything else.
fn node_sort_key(name: &str) -> (u8, String, u64, String) {
    let (kind, num) = match name.rsplit_once('-') {
        Some((k, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            (k, n.parse().unwrap_or(u64::MAX))
        }
        _ => (name, 0),
    };
    let rank = match kind {
        "core" => 0,
        "agent" => 1,
        "master" => 2,
        "slave" => 3,
        _ => 4,
    };
    (rank, kind.to_string(), num, name.to_string())
}

fn kind_of(name: &str) -> &str {
    name.rsplit_once('-').map_or(name, |(k, _)| k)
}

/// Which agent serves each EA, by majority of the pipe traffic the agents' steps show.
fn agent_map(raw: &[RawStep], lane_of: &HashMap<&str, usize>) -> HashMap<String, String> {
    let mut votes: HashMap<(String, String), usize> = HashMap::new();
    for s in raw.iter().filter(|s| kind_of(&s.node) == "agent") {
        let mut vote = |ea: String| {
            if lane_of.contains_key(ea.as_str()) {
                *votes.entry((ea, s.node.clone())).or_insert(0) += 1;
            }
        };
        if let Some(rest) = s.input.strip_prefix("pipe ") {
            if let Some(ea) = pipe_account(rest) {
                vote(ea);
            }
        }
        for o in &s.outputs {
            if let Some(rest) = o.strip_prefix("→ pipe ") {
                if let Some((ea, _)) = rest.split_once(':') {
                    vote(ea.to_string());
                }
            }
        }
    }
    let mut best: HashMap<String, (usize, String)> = HashMap::new();
    let mut sorted: Vec<_> = votes.into_iter().collect();
    sorted.sort();
    for ((ea, agent), n) in sorted {
        let e = best.entry(ea).or_insert((0, String::new()));
        if n > e.0 {
            *e = (n, agent);
        }
    }
    best.into_iter().map(|(ea, (_, a))| (ea, a)).collect()
}

/// `Slave(3): …` → `slave-3`, `Master(0)…` → `master-0`.
fn pipe_account(s: &str) -> Option<String> {
    let (kind, rest) = s.split_once('(')?;
    let (num, _) = rest.split_once(')')?;
    if kind.is_empty()
        || !kind.bytes().all(|b| b.is_ascii_alphabetic())
        || num.is_empty()
        || !num.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Some(format!("{}-{num}", kind.to_ascii_lowercase()))
}

/// Lanes: the core, then each agent followed by the masters and slaves it serves, then the rest.
fn lane_order(raw: &[RawStep]) -> Vec<String> {
    let mut nodes: Vec<String> = Vec::new();
    let mut seen: HashMap<&str, ()> = HashMap::new();
    for s in raw {
        if seen.insert(s.node.as_str(), ()).is_none() {
            nodes.push(s.node.clone());
        }
    }
    nodes.sort_by_key(|n| node_sort_key(n));
    let lane_of: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let agent_of = agent_map(raw, &lane_of);
    let mut out: Vec<String> = Vec::new();
    for n in nodes.iter().filter(|n| kind_of(n) == "core") {
        out.push(n.clone());
    }
    for a in nodes.iter().filter(|n| kind_of(n) == "agent") {
        out.push(a.clone());
        for ea in &nodes {
            if agent_of.get(ea) == Some(a) && !out.contains(ea) {
                out.push(ea.clone());
            }
        }
    }
    for n in &nodes {
        if !out.contains(n) {
            out.push(n.clone());
        }
    }
    out
}

/// The lanes a fault or violation text names (`core`, `agent-1`, `slave-3`, `Slave(3)`, …).
fn nodes_in(text: &str, lane_of: &HashMap<&str, usize>) -> Vec<usize> {
    let mut out = Vec::new();
    let mut push = |i: usize| {
        if !out.contains(&i) {
            out.push(i);
        }
    };
    for tok in text.split(|c: char| !is_tok_char(c)) {
        if let Some(&i) = lane_of.get(tok) {
            push(i);
        }
    }
    for (i, _) in text.match_indices('(') {
        let start = text[..i]
            .rfind(|c: char| !c.is_ascii_alphabetic())
            .map_or(0, |p| p + 1);
        if let Some(name) = pipe_account(&text[start..]) {
            if let Some(&l) = lane_of.get(name.as_str()) {
                push(l);
            }
        }
    }
    out
}

/// `…, 1074 ms` → 1074.
fn duration_ms(text: &str) -> Option<u64> {
    let i = text.find(" ms")?;
    let digits: String = text[..i]
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits.parse().ok()
}

// ---- ids --------------------------------------------------------------------------------

fn is_tok_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '@'
}

/// `m0-i12`: a prefix, `-i`, digits.
fn is_intent_like(s: &str) -> bool {
    match s.rsplit_once("-i") {
        Some((p, d)) => {
            !p.is_empty()
                && !d.is_empty()
                && d.bytes().all(|b| b.is_ascii_digit())
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                && p.as_bytes()[0].is_ascii_alphabetic()
        }
        None => false,
    }
}

/// `m0-t3-c21`: a prefix then a `t<digits>` part.
fn is_trade_like(s: &str) -> bool {
    let mut parts = s.split('-');
    let first = parts.next().unwrap_or("");
    !first.is_empty()
        && first.as_bytes()[0].is_ascii_alphabetic()
        && parts.any(|p| {
            p.len() > 1 && p.starts_with('t') && p[1..].bytes().all(|b| b.is_ascii_digit())
        })
}

fn is_command_like(s: &str) -> bool {
    s.split_once('@')
        .is_some_and(|(l, r)| is_intent_like(l) && !r.is_empty() && !r.contains('@'))
}

#[derive(Default)]
struct Ids {
    intents: Vec<String>,
    commands: Vec<String>,
    trades: Vec<String>,
}

fn push_new(v: &mut Vec<String>, s: &str) {
    if !s.is_empty() && !v.iter().any(|x| x == s) {
        v.push(s.to_string());
    }
}

/// The token at byte `at`, if a closing quote follows it (a quoted id cut off by a truncated
/// output is not an id).
fn quoted_token_after(text: &str, at: usize) -> &str {
    let rest = &text[at..];
    let end = rest.find(|c: char| !is_tok_char(c)).unwrap_or(rest.len());
    if rest[end..].starts_with('"') {
        &rest[..end]
    } else {
        ""
    }
}

/// The tokens of `text` with what could be an id in them; a token cut off at the end of a
/// truncated output (`IntentId("m0-i1` of `m0-i17`) is left out.
fn id_tokens(text: &str) -> impl Iterator<Item = &str> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text
        .char_indices()
        .chain(std::iter::once((text.len(), ' ')))
    {
        match (is_tok_char(c) && i < text.len(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                start = None;
                let cut = i == text.len() && text[..s].ends_with('"');
                if !cut {
                    out.push(&text[s..i]);
                }
            }
            _ => {}
        }
    }
    out.into_iter()
}

/// Collects the intent, command and trade ids `text` mentions, by shape (`m0-i12`,
/// `m0-i12@slave-3`, `m0-t3-c21`) and by context (`IntentId("…")`, `trade …`).
fn scan_ids(text: &str, ids: &mut Ids) {
    for (marker, kind) in [("IntentId(\"", 0), ("CommandId(\"", 1), ("TradeId(\"", 2)] {
        for (i, _) in text.match_indices(marker) {
            let tok = quoted_token_after(text, i + marker.len());
            match kind {
                0 => push_new(&mut ids.intents, tok),
                1 => push_new(&mut ids.commands, tok),
                _ => push_new(&mut ids.trades, tok),
            }
        }
    }
    let toks: Vec<&str> = id_tokens(text).collect();
    for w in toks.windows(2) {
        if w[0] == "trade" && !is_intent_like(w[1]) && !is_command_like(w[1]) {
            push_new(&mut ids.trades, w[1]);
        }
    }
    for tok in toks {
        if is_command_like(tok) {
            push_new(&mut ids.commands, tok);
        } else if is_intent_like(tok) {
            push_new(&mut ids.intents, tok);
        } else if is_trade_like(tok) {
            push_new(&mut ids.trades, tok);
        }
    }
}

/// Where one text names exactly one trade and one intent, the intent belongs to the trade.
fn link_trades(text: &str, trades: &mut BTreeMap<String, Vec<String>>) {
    if !text.contains("trade") && !text.contains("Trade") {
        return;
    }
    let mut ids = Ids::default();
    scan_ids(text, &mut ids);
    let mut intents: Vec<String> = Vec::new();
    for c in &ids.commands {
        if let Some((i, _)) = c.split_once('@') {
            push_new(&mut intents, i);
        }
    }
    for i in &ids.intents {
        push_new(&mut intents, i);
    }
    if let ([t], [i]) = (ids.trades.as_slice(), intents.as_slice()) {
        push_new(trades.entry(t.clone()).or_default(), i);
    }
}

/// The first command or intent id in `text`, in reading order.
fn first_id(text: &str) -> Option<&str> {
    id_tokens(text).find(|t| is_command_like(t) || is_intent_like(t))
}

/// Capitalised words naming message types (`PipeDeliveryAck`, `TradeIntent`, …).
fn kind_words(text: &str) -> Vec<&str> {
    const STOP: [&str; 10] = [
        "None",
        "Some",
        "Slave",
        "Master",
        "CommandId",
        "IntentId",
        "TradeId",
        "AccountId",
        "Command",
        "Intent",
    ];
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| w.len() >= 4 && w.as_bytes()[0].is_ascii_uppercase() && !STOP.contains(w))
        .collect()
}

// ---- messages ---------------------------------------------------------------------------

/// Inputs that are a node's own event (a timer, a storage reply, a restart), never a message.
fn is_local_input(input: &str) -> bool {
    matches!(
        input,
        "timer"
            | "disk result"
            | "ledger result"
            | "journal result"
            | "recover"
            | "terminal event"
            | "pipe connected"
            | "pipe closed"
            | "core connected"
            | "partition"
            | "config change"
    ) || input.ends_with("crashed")
}

enum Target {
    Lane(usize),
    /// `ToAgent(…)` from an EA: its agent, or any agent when the trace does not tell.
    Agents(Vec<usize>),
}

/// The message an output is, if any: where it goes and what it says.
fn message_of<'a>(
    node: &str,
    out: &'a str,
    lanes: &[String],
    lane_of: &HashMap<&str, usize>,
    agent_of: &HashMap<String, String>,
) -> Option<(Target, &'a str)> {
    if let Some(rest) = out.strip_prefix("→ ") {
        let (dst, payload) = rest.split_once(": ")?;
        let dst = dst.strip_prefix("pipe ").unwrap_or(dst).trim();
        let &l = lane_of.get(dst)?;
        return Some((Target::Lane(l), payload));
    }
    if let Some(payload) = out.strip_prefix("ToAgent(") {
        let payload = payload.strip_suffix(')').unwrap_or(payload);
        if let Some(&l) = agent_of.get(node).and_then(|a| lane_of.get(a.as_str())) {
            return Some((Target::Lane(l), payload));
        }
        let agents: Vec<usize> = lanes
            .iter()
            .enumerate()
            .filter(|(_, n)| kind_of(n) == "agent")
            .map(|(i, _)| i)
            .collect();
        if agents.is_empty() {
            return None;
        }
        return Some((Target::Agents(agents), payload));
    }
    None
}

/// One message as sent: where it may land and how its receipt shows in the trace.
struct Send<'a> {
    src: usize,
    out: usize,
    lanes: Vec<usize>,
    payload: &'a str,
    /// The receiver logs the same text as its input (`→ core: X` arrives as input `X`); pipe
    /// messages are logged in another form and match by id and message type, or by subject.
    exact_only: bool,
    /// What identifies "the same message" sent again: its text, or for pipe messages its
    /// type and id.
    key: String,
}

/// Finds, for every message a step sends, the step that received it: the first step of the
/// receiving lane after the send (within [`MAX_LATENCY_US`], and before the same message is
/// sent again there) whose input is the message or — for pipe messages, logged differently —
/// names the same id and message type, or has the id as subject where the input has no text.
fn infer_messages(
    steps: &[Step],
    lanes: &[String],
    lane_of: &HashMap<&str, usize>,
    agent_of: &HashMap<String, String>,
) -> Vec<Msg> {
    let mut by_lane: Vec<Vec<usize>> = vec![Vec::new(); lanes.len()];
    for (i, s) in steps.iter().enumerate() {
        by_lane[s.lane].push(i);
    }
    let mut sends: Vec<Send> = Vec::new();
    for (si, s) in steps.iter().enumerate() {
        for (oi, out) in s.outputs.iter().enumerate() {
            let Some((target, payload)) = message_of(&lanes[s.lane], out, lanes, lane_of, agent_of)
            else {
                continue;
            };
            let exact_only = out.starts_with("→ ") && !out.starts_with("→ pipe ");
            sends.push(Send {
                src: si,
                out: oi,
                lanes: match target {
                    Target::Lane(l) => vec![l],
                    Target::Agents(a) => a,
                },
                payload,
                exact_only,
                key: if exact_only {
                    payload.to_string()
                } else {
                    format!(
                        "{} {}",
                        payload.split('(').next().unwrap_or(""),
                        first_id(payload).unwrap_or(payload)
                    )
                },
            });
        }
    }
    // (lane, key) → the steps that sent it there, in trace order.
    let mut resent: HashMap<(usize, &str), Vec<usize>> = HashMap::new();
    for snd in &sends {
        for &l in &snd.lanes {
            resent
                .entry((l, snd.key.as_str()))
                .or_default()
                .push(snd.src);
        }
    }
    let mut consumed = vec![false; steps.len()];
    let mut msgs = Vec::new();
    for snd in &sends {
        let (si, s) = (snd.src, &steps[snd.src]);
        let pid = first_id(snd.payload);
        let words = kind_words(snd.payload);
        let mut best: Option<(u8, usize)> = None;
        for &l in &snd.lanes {
            let again = &resent[&(l, snd.key.as_str())];
            let next_send = again
                .get(again.partition_point(|&i| i <= si))
                .copied()
                .unwrap_or(usize::MAX);
            let lane = &by_lane[l];
            let start = lane.partition_point(|&i| i <= si);
            for &r in lane.iter().skip(start).take(MAX_LOOKAHEAD) {
                let rs = &steps[r];
                if rs.t < s.t || rs.t - s.t > MAX_LATENCY_US || r > next_send {
                    break;
                }
                if consumed[r] {
                    continue;
                }
                let score = if rs.input == snd.payload
                    || rs.input.ends_with(&format!(": {}", snd.payload))
                {
                    Some(0)
                } else if snd.exact_only {
                    None
                } else if let Some(pid) = pid {
                    let mut ids = Ids::default();
                    scan_ids(&rs.input, &mut ids);
                    if !ids.commands.is_empty() || !ids.intents.is_empty() {
                        let same_id = ids.commands.iter().chain(&ids.intents).any(|x| x == pid);
                        let iw = kind_words(&rs.input);
                        (same_id && words.iter().any(|w| iw.contains(w))).then_some(1)
                    } else if !is_local_input(&rs.input) && rs.subject == pid {
                        Some(2)
                    } else {
                        None
                    }
                } else {
                    None
                };
                if let Some(sc) = score {
                    if best.is_none_or(|(bs, br)| sc < bs || (sc == bs && r < br)) {
                        best = Some((sc, r));
                    }
                    break;
                }
            }
        }
        let dst_lane = match best {
            Some((_, r)) => steps[r].lane,
            None => snd.lanes[0],
        };
        if let Some((_, r)) = best {
            consumed[r] = true;
            // The same delivery handled by several machines of the node (router, intake…).
            let lane = &by_lane[steps[r].lane];
            let start = lane.partition_point(|&i| i <= r);
            for &q in &lane[start..] {
                let qs = &steps[q];
                if qs.t != steps[r].t || qs.input != steps[r].input || qs.input.is_empty() {
                    break;
                }
                consumed[q] = true;
            }
        }
        msgs.push(Msg {
            src: si,
            out: snd.out,
            dst_lane,
            dst: best.map(|(_, r)| r),
            fault: None,
        });
    }
    msgs
}

/// A network or pipe fault is logged just before the step whose message it hit, at the same
/// time: ties the fault to that message (`agent-0 → core`, `agent-0 link`, `Slave(3) <cmd>`)
/// and gives the fault the message's ids, so filtering by an intent shows what hit it.
fn link_faults_to_messages(
    faults: &mut [Fault],
    msgs: &mut [Msg],
    steps: &[Step],
    lane_of: &HashMap<&str, usize>,
) {
    let mut by_src: Vec<Vec<usize>> = vec![Vec::new(); steps.len()];
    for (i, m) in msgs.iter().enumerate() {
        by_src[m.src].push(i);
    }
    for (fi, f) in faults.iter_mut().enumerate() {
        let link = f.detail.contains(" link");
        let (srcs, dsts): (Vec<usize>, Vec<usize>) = if let Some((a, b)) = f.detail.split_once('→')
        {
            (nodes_in(a, lane_of), nodes_in(b, lane_of))
        } else if link || f.kind.starts_with("pipe_write") {
            (Vec::new(), f.lanes.clone())
        } else {
            continue;
        };
        if dsts.is_empty() {
            continue;
        }
        let want_id = first_id(&f.detail).map(str::to_string);
        let first = steps.partition_point(|s| s.line < f.line);
        'scan: for (si, s) in steps.iter().enumerate().skip(first).take(64) {
            if s.t != f.t {
                break;
            }
            for &mi in &by_src[si] {
                let m = &msgs[mi];
                let payload = &s.outputs[m.out];
                let lane_ok = if link {
                    f.lanes.contains(&s.lane)
                        && f.lanes.contains(&m.dst_lane)
                        && s.lane != m.dst_lane
                } else {
                    (srcs.is_empty() || srcs.contains(&s.lane)) && dsts.contains(&m.dst_lane)
                };
                let id_ok = want_id
                    .as_deref()
                    .is_none_or(|w| first_id(payload) == Some(w));
                if lane_ok && id_ok && m.fault.is_none() {
                    msgs[mi].fault = Some(fi);
                    let mut ids = Ids::default();
                    scan_ids(payload, &mut ids);
                    for k in ids
                        .commands
                        .into_iter()
                        .chain(ids.intents)
                        .chain(ids.trades)
                    {
                        if !f.keys.contains(&k) {
                            f.keys.push(k);
                        }
                    }
                    break 'scan;
                }
            }
        }
    }
    // Messages lost without a fault of their own: inside a partition of their link, or sent
    // to a node that crashed before taking them (and had not restarted yet).
    let mut by_lane: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, s) in steps.iter().enumerate() {
        by_lane.entry(s.lane).or_default().push(i);
    }
    for m in msgs
        .iter_mut()
        .filter(|m| m.dst.is_none() && m.fault.is_none())
    {
        let (src_lane, t) = (steps[m.src].lane, steps[m.src].t);
        m.fault = faults.iter().position(|f| match f.kind.as_str() {
            "partition" => {
                let covers = |a: &str, b: &str| {
                    let (a, b) = (nodes_in(a, lane_of), nodes_in(b, lane_of));
                    a.contains(&src_lane) && b.contains(&m.dst_lane)
                };
                let link = if let Some((a, b)) = f.detail.split_once('↔') {
                    covers(a, b) || covers(b, a)
                } else if let Some((a, b)) = f.detail.split_once('→') {
                    covers(a, b)
                } else {
                    false
                };
                link && f.t <= t && t <= f.t + f.dur_us
            }
            "crash" if f.lanes.contains(&m.dst_lane) => {
                if f.t >= t {
                    f.t - t <= MAX_LATENCY_US
                } else {
                    // Down since the crash: no step of the node between the crash and the send.
                    let lane = &by_lane[&m.dst_lane];
                    let after = lane.partition_point(|&i| steps[i].line < f.line);
                    lane.get(after).is_none_or(|&i| steps[i].t > t)
                }
            }
            _ => false,
        });
    }
}

// ---- the page ---------------------------------------------------------------------------

/// Escapes text for HTML markup and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\u{2028}' => out.push_str("&#x2028;"),
            '\u{2029}' => out.push_str("&#x2029;"),
            _ => out.push(c),
        }
    }
    out
}

/// JSON that can sit inside a `<script>` element: `<`, `>`, `&` and the JavaScript line
/// separators are written as `\uXXXX` escapes (they can only occur inside JSON strings).
fn script_safe_json(v: &Value) -> String {
    let s = v.to_string();
    let mut out = String::with_capacity(s.len() + 64);
    for c in s.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            _ => out.push(c),
        }
    }
    out
}

fn header_value(h: &serde_json::Map<String, Value>, k: &str) -> String {
    match h.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => "?".into(),
    }
}

fn page(m: &Model, data: &str) -> String {
    let (title, head) = match &m.header {
        Some(h) => {
            let seed = header_value(h, "seed");
            let mut meta = String::new();
            for (k, label) in [
                ("seed", "seed"),
                ("commit", "commit"),
                ("capacity", "capacity"),
                ("masters", "masters"),
                ("slaves_per_master", "slaves/master"),
                ("trades", "trades"),
            ] {
                if h.contains_key(k) {
                    meta.push_str(&format!(
                        "<span class=\"kv\" data-key=\"{}\"><b>{}</b> {}</span>",
                        escape_html(k),
                        escape_html(label),
                        escape_html(&header_value(h, k))
                    ));
                }
            }
            for (k, v) in h {
                if ![
                    "type",
                    "seed",
                    "commit",
                    "capacity",
                    "masters",
                    "slaves_per_master",
                    "trades",
                    "profile",
                ]
                .contains(&k.as_str())
                {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    meta.push_str(&format!(
                        "<span class=\"kv\" data-key=\"{}\"><b>{}</b> {}</span>",
                        escape_html(k),
                        escape_html(k),
                        escape_html(&v)
                    ));
                }
            }
            let profile = if h.contains_key("profile") {
                format!(
                    "<div class=\"profile\"><b>profile</b> <code id=\"profile\">{}</code></div>",
                    escape_html(&header_value(h, "profile"))
                )
            } else {
                String::new()
            };
            (
                format!("Echo trace — seed {seed}"),
                format!(
                    "<h1>Echo trace <span class=\"seed\">seed {}</span></h1><div class=\"meta\">{meta}<span class=\"kv\" id=\"counts\"><b>events</b> {} steps · {} faults · {} violations · {} lanes</span></div>{profile}",
                    escape_html(&seed),
                    m.steps.len(),
                    m.faults.len(),
                    m.violations.len(),
                    m.lanes.len()
                ),
            )
        }
        None => (
            "Echo trace".to_string(),
            format!(
                "<h1>Echo trace <span class=\"seed\">(no header)</span></h1><div class=\"meta\"><span class=\"kv\" id=\"counts\"><b>events</b> {} steps · {} faults · {} violations · {} lanes</span></div>",
                m.steps.len(),
                m.faults.len(),
                m.violations.len(),
                m.lanes.len()
            ),
        ),
    };
    let mut out = String::with_capacity(data.len() + CSS.len() + JS.len() + BODY.len() + 4096);
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    out.push_str("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">\n");
    out.push_str(&format!("<title>{}</title>\n", escape_html(&title)));
    out.push_str("<style>\n");
    out.push_str(CSS);
    out.push_str("</style>\n</head>\n<body>\n<header id=\"hdr\">");
    out.push_str(&head);
    out.push_str("</header>\n");
    out.push_str(BODY);
    out.push_str("<script type=\"application/json\" id=\"trace-data\">");
    out.push_str(data);
    out.push_str("</script>\n<script>\n");
    out.push_str(JS);
    out.push_str("</script>\n</body>\n</html>\n");
    out
}

const CSS: &str = r#"
:root { --bg:#f6f7f9; --fg:#1c1e21; --mut:#667085; --line:#d9dde3; --panel:#fff;
  --core:#2e7d32; --agent:#1565c0; --master:#7b1fa2; --slave:#e65100; --other:#546e7a;
  --viol:#d50000; --sel:#ffeb3b; }
* { box-sizing: border-box; }
body { margin:0; font:13px/1.35 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
  color:var(--fg); background:var(--bg); }
header#hdr { padding:8px 16px 8px; background:#1f2430; color:#e8eaed; }
header#hdr h1 { font-size:16px; margin:0 0 3px; font-weight:600; }
header#hdr h1 .seed { color:#ffd54f; margin-left:6px; }
header#hdr .meta .kv { margin-right:16px; white-space:nowrap; }
header#hdr .meta b, header#hdr .profile b { color:#9aa4b5; font-weight:500; margin-right:3px; }
header#hdr .profile { margin-top:3px; }
header#hdr code { font:12px/1.3 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; color:#c5e1a5; word-break:break-word; }
#errors { background:#fff0f0; color:#b00020; border:2px solid #b00020; padding:8px 16px; white-space:pre-wrap; font-family:monospace; }
#warnings { background:#fff8e1; color:#6d4c00; padding:4px 16px; }
#viol-banner { background:#ffebee; border-left:6px solid var(--viol); color:#7f0000; padding:6px 16px; }
#viol-banner b { color:var(--viol); }
#viol-banner a { color:#7f0000; cursor:pointer; text-decoration:underline; margin-right:10px; }
#controls { display:flex; flex-wrap:wrap; align-items:center; gap:6px 12px; padding:8px 16px; background:var(--panel);
  border-bottom:1px solid var(--line); position:sticky; top:0; z-index:5; }
#controls label { color:var(--mut); white-space:nowrap; }
#filter { width:260px; font:13px ui-monospace,Menlo,Consolas,monospace; padding:4px 6px; border:1px solid #98a2b3; border-radius:4px; }
#filter.active { border-color:#1565c0; box-shadow:0 0 0 2px #bbdefb; }
#controls button { font:12px system-ui,sans-serif; padding:3px 8px; border:1px solid #98a2b3; background:#fff; border-radius:4px; cursor:pointer; }
#controls button:hover { background:#eef2f7; }
#controls select { font:12px system-ui,sans-serif; padding:2px 4px; }
#controls input[type=number] { width:84px; font:12px ui-monospace,monospace; padding:3px 4px; }
#controls .grp { display:flex; align-items:center; gap:4px; }
#status { padding:6px 16px 2px; color:#344054; min-height:22px; }
#status .term { font-family:ui-monospace,Menlo,monospace; font-weight:600; color:#0d47a1; }
#status .chip { display:inline-block; font:12px ui-monospace,Menlo,monospace; background:#e3f2fd; color:#0d47a1; border-radius:10px;
  padding:0 7px; margin:0 2px; cursor:pointer; border:1px solid #bbdefb; }
#status .chip:hover { background:#bbdefb; }
#status .warn { color:#b54708; }
#overview-wrap, #chart-wrap { padding:0 16px; }
#overview { display:block; width:100%; height:30px; background:#fff; border:1px solid var(--line); border-bottom:none; cursor:crosshair; }
#chart { display:block; width:100%; background:#fff; border:1px solid var(--line); cursor:grab; user-select:none; }
#chart.dragging { cursor:grabbing; }
#chart text { font:11px system-ui,sans-serif; }
#chart .lane-bg.odd { fill:#f8f9fb; }
#chart .lane-bg.even { fill:#fff; }
#chart .lane-label { font:600 12px ui-monospace,Menlo,monospace; }
#chart .lane-count { font:10px system-ui,sans-serif; fill:var(--mut); }
#chart .lane-rule { stroke:#e4e7ec; }
#chart .k-core { fill:var(--core); } #chart .k-agent { fill:var(--agent); } #chart .k-master { fill:var(--master); }
#chart .k-slave { fill:var(--slave); } #chart .k-other { fill:var(--other); }
#chart .mark { stroke:#fff; stroke-width:1.2; cursor:pointer; }
#chart .mark.sel { stroke:#000; stroke-width:2.5; }
#chart .mark-label { font:10px ui-monospace,Menlo,monospace; fill:#344054; pointer-events:none; }
#chart .msg { stroke:#607d8b; stroke-width:1.1; fill:none; opacity:.75; }
#chart .msg.to-core { stroke:#2e7d32; } #chart .msg.to-agent { stroke:#1565c0; }
#chart .msg.to-master { stroke:#7b1fa2; } #chart .msg.to-slave { stroke:#e65100; }
#chart .msg.elsewhere { stroke-dasharray:2 3; opacity:.45; }
#chart .msg.lost { stroke:#c62828; stroke-dasharray:4 3; opacity:.95; }
#chart .lost-x { fill:#c62828; font:bold 12px system-ui,sans-serif; }
#chart .msg.unseen { stroke:#98a2b3; stroke-dasharray:2 2; }
#chart .unseen-q { fill:#98a2b3; font:bold 11px system-ui,sans-serif; }
#chart .fault-row-bg { fill:#fff7f0; }
#chart .fault-line { stroke-width:1.3; stroke-dasharray:5 3; opacity:.75; }
#chart .fault-band { opacity:.13; }
#chart .fault-flag-text { font:600 10px system-ui,sans-serif; fill:#fff; pointer-events:none; }
#chart .fault-lane-mark { stroke:#fff; stroke-width:1; }
#chart .fault-marker.ctx { opacity:.45; }
#chart .violation-line { stroke:var(--viol); stroke-width:2.5; }
#chart .violation-flag { fill:var(--viol); }
#chart .gap-line { stroke:#98a2b3; stroke-dasharray:1 4; }
#chart .gap-label { font:10px system-ui,sans-serif; fill:#667085; }
#chart .axis-text { font:10px ui-monospace,Menlo,monospace; fill:#475467; }
#chart .axis-line { stroke:#98a2b3; }
#chart .density { opacity:.85; }
#chart .hint { font:12px system-ui,sans-serif; fill:#b54708; }
#chart-hint { margin:0 16px; padding:3px 8px; background:#fff8e1; color:#7a4f01; border:1px solid #ffe082; border-top:none; font-size:12px; }
#legend { padding:4px 16px 0; color:var(--mut); font-size:12px; display:flex; flex-wrap:wrap; gap:4px 16px; }
#legend .sw { display:inline-block; width:10px; height:10px; border-radius:50%; vertical-align:-1px; margin-right:4px; }
#legend .ln { display:inline-block; width:22px; height:0; border-top:2px solid #607d8b; vertical-align:3px; margin-right:4px; }
#table-wrap { padding:8px 16px 40px; }
#table-title { font-weight:600; margin:4px 0 6px; color:#344054; }
table#events { border-collapse:collapse; width:100%; background:#fff; border:1px solid var(--line); table-layout:fixed; }
#events th { position:sticky; top:46px; background:#eef1f5; text-align:left; font-weight:600; padding:4px 6px; border-bottom:1px solid var(--line); z-index:2; }
#events td { padding:3px 6px; border-bottom:1px solid #eef0f3; vertical-align:top; font:12px/1.35 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; word-break:break-word; }
#events tr.step:hover td { background:#f5f9ff; }
#events tr.sel td { background:var(--sel) !important; }
#events tr.fault-row td { background:#fff3e0; color:#7a3b00; }
#events tr.fault-row.ctx td { background:#fffaf3; color:#8a6d52; }
#events tr.violation-row td { background:#ffebee; color:var(--viol); font-weight:700; }
#events td.node { font-weight:700; }
#events td.node.k-core { color:var(--core); } #events td.node.k-agent { color:var(--agent); }
#events td.node.k-master { color:var(--master); } #events td.node.k-slave { color:var(--slave); }
#events td .sub { cursor:pointer; color:#0d47a1; text-decoration:underline dotted; }
#events td .out { display:block; }
#events td .out.msg-out { color:#1d4ed8; }
#events td .out .tag { font:10px system-ui,sans-serif; border-radius:3px; padding:0 4px; margin-left:4px; }
#events td .out .tag.lost { background:#ffcdd2; color:#b71c1c; }
#events td .out .tag.unseen { background:#eceff1; color:#546e7a; }
#events td .out .tag.recv { background:#e8f5e9; color:#1b5e20; cursor:pointer; }
#events td.fromto .arrow { color:var(--mut); }
#events tr.more td { text-align:center; font-family:system-ui,sans-serif; color:var(--mut); padding:8px; }
#events col.c-line { width:58px; } #events col.c-time { width:98px; } #events col.c-node { width:78px; }
#events col.c-tr { width:150px; } #events col.c-ft { width:22%; } #events col.c-subj { width:132px; }
#events col.c-in { width:18%; }
"#;

const BODY: &str = r#"<div id="errors" hidden></div>
<div id="warnings" hidden></div>
<div id="viol-banner" hidden></div>
<noscript><p style="padding:8px 16px">This page draws the timeline and table with JavaScript; the trace data is embedded below as JSON.</p></noscript>
<section id="controls">
  <span class="grp"><label for="filter">Filter</label>
  <input id="filter" type="search" spellcheck="false" autocomplete="off"
    placeholder="m0-i12 · m0-i12@slave-3 · m0-t3-c21 · @slave-3 · m0-i1* · node:core   ( / )"
    title="Filter by intent id (m0-i12: the intent and all its deliveries m0-i12@slave-*), command id, trade id (all the trade's intents), @slave-3 (deliveries to a slave), a prefix ending in * or node:NAME; several terms separated by spaces match any. Press / to focus, Esc to clear.">
  <button id="clear" title="Show the whole trace">clear</button></span>
  <span class="grp"><select id="mode" title="compact: every step gets room, idle time is squeezed (gaps are labelled); linear: true simulated time">
  <option value="compact">compact time</option><option value="linear">linear time</option></select></span>
  <span class="grp"><label title="crashes, partitions, heals, … on the filtered lanes during the journey"><input type="checkbox" id="opt-ctx" checked> major faults nearby</label>
  <label><input type="checkbox" id="opt-msgs" checked> messages</label>
  <label><input type="checkbox" id="opt-idle" checked> hide idle lanes</label>
  <label><input type="checkbox" id="opt-follow" checked> table follows zoom</label></span>
  <span class="grp"><button id="zoom-out" title="Zoom out">−</button><button id="zoom-in" title="Zoom in (or Ctrl + wheel on the chart)">+</button>
  <button id="pan-left" title="Pan left">◀</button><button id="pan-right" title="Pan right">▶</button><button id="fit" title="Fit the filtered events">fit</button></span>
  <span class="grp"><label for="t-from">ms</label><input id="t-from" type="number" step="any" title="view from (ms)"><label for="t-to">…</label><input id="t-to" type="number" step="any" title="view to (ms)"></span>
</section>
<div id="status"></div>
<div id="overview-wrap"><svg id="overview" xmlns="http://www.w3.org/2000/svg"></svg></div>
<div id="chart-wrap"><svg id="chart" xmlns="http://www.w3.org/2000/svg"></svg></div>
<div id="chart-hint" hidden></div>
<div id="legend"></div>
<div id="table-wrap"><div id="table-title"></div>
<table id="events"><colgroup><col class="c-line"><col class="c-time"><col class="c-node"><col class="c-tr"><col class="c-ft"><col class="c-subj"><col class="c-in"><col class="c-out"></colgroup>
<thead><tr><th>line</th><th>time</th><th>node</th><th>transition</th><th>from → to</th><th>subject</th><th>input</th><th>outputs</th></tr></thead>
<tbody id="rows"></tbody></table></div>
"#;

const JS: &str = r#"(function () {
'use strict';
var errBox = document.getElementById('errors');
function showError(msg) { errBox.hidden = false; errBox.textContent += msg + '\n'; }
window.addEventListener('error', function (e) { showError('script error: ' + e.message); });

var started = Date.now();
var D = JSON.parse(document.getElementById('trace-data').textContent);
var S = D.strs;
var lanes = D.lanes;
var NS = 'http://www.w3.org/2000/svg';
var DENSE = 2500, ARROW_LIMIT = 1500, LABEL_LIMIT = 600, CHUNK = 400;
var PL = 112, PR = 14, TOP = 30, AX = 30;
var FAULT_COLORS = { net_drop: '#c62828', net_duplicate: '#8e24aa', partition: '#b71c1c', crash: '#212121',
  journal_reply_lost: '#6d4c41', journal_outage: '#6d4c41', journal_slow: '#8d6e63', pipe_write_fail: '#f57f17',
  pipe_close: '#ef6c00', broker_reject: '#00838f', heal: '#2e7d32', burst: '#3949ab', config_change: '#455a64',
  ledger_fail: '#5d4037', disk_fail: '#5d4037', slow_slave: '#827717', delay: '#0277bd' };
var KIND_COLORS = { core: '#2e7d32', agent: '#1565c0', master: '#7b1fa2', slave: '#e65100', other: '#546e7a', lost: '#c62828' };
function faultColor(k) { return FAULT_COLORS[k] || '#e65100'; }
function laneKind(name) { var m = /^([a-z]+)/.exec(name); var k = m ? m[1] : ''; return (k === 'core' || k === 'agent' || k === 'master' || k === 'slave') ? k : 'other'; }
function fmtT(us) { return (us / 1000).toFixed(3) + ' ms'; }
function fmtDur(us) { return us >= 1e6 ? (us / 1e6).toFixed(2) + ' s' : us >= 1000 ? (us / 1000).toFixed(1) + ' ms' : us + ' µs'; }

// ---- events ------------------------------------------------------------------------------
var EV = [], STEPS = [];
D.steps.forEach(function (r) {
  var ev = { k: 'step', t: r[0], lane: r[1], input: S[r[2]], tr: S[r[3]], from: S[r[4]], to: S[r[5]], subj: S[r[6]],
    outs: r[7].map(function (i) { return S[i]; }), line: r[8], keys: r[9].map(function (i) { return S[i].toLowerCase(); }),
    msgs: [], recv: [] };
  STEPS.push(ev); EV.push(ev);
});
var FAULTS = [];
D.faults.forEach(function (r) {
  var ev = { k: 'fault', t: r[0], kind: S[r[1]], detail: S[r[2]], lanes: r[3], keys: r[4].map(function (i) { return S[i].toLowerCase(); }), dur: r[5], line: r[6], msgs: [] };
  FAULTS.push(ev); EV.push(ev);
});
D.msgs.forEach(function (m) {
  var src = STEPS[m[0]], dst = m[3] >= 0 ? STEPS[m[3]] : null, fault = m[4] >= 0 ? FAULTS[m[4]] : null;
  var msg = { src: src, out: m[1], dstLane: m[2], dst: dst, fault: fault };
  src.msgs.push(msg); if (dst) dst.recv.push(msg); if (fault) fault.msgs.push(msg);
});
// Faults that change the whole picture, shown in full even where faults are many.
var MAJOR = { crash: 1, partition: 1, heal: 1, burst: 1, config_change: 1, pipe_close: 1, journal_outage: 1 };
D.viols.forEach(function (r) {
  EV.push({ k: 'viol', t: r[0], what: S[r[1]], lanes: r[2], keys: r[3].map(function (i) { return S[i].toLowerCase(); }), line: r[4] });
});
EV.sort(function (a, b) { return a.line - b.line; });
var tradeMap = {};
D.trades.forEach(function (p) { tradeMap[p[0].toLowerCase()] = p[1].map(function (x) { return x.toLowerCase(); }); });
var intentTrades = {};
D.trades.forEach(function (p) { p[1].forEach(function (i) { (intentTrades[i.toLowerCase()] = intentTrades[i.toLowerCase()] || []).push(p[0]); }); });
function evText(ev) {
  if (ev._text === undefined) {
    ev._text = (ev.k === 'step' ? [lanes[ev.lane], ev.input, ev.tr, ev.from, ev.to, ev.subj].concat(ev.outs)
      : ev.k === 'fault' ? [ev.kind, ev.detail] : ['violation', ev.what]).join('\n').toLowerCase();
  }
  return ev._text;
}
function evLanes(ev) { return ev.k === 'step' ? [ev.lane] : ev.lanes; }

// ---- state -------------------------------------------------------------------------------
var state = { q: '', mode: 'compact', ctx: true, msgs: true, idle: true, follow: true, v0: 0, v1: 1, sel: null };
var V = [], ctxSet = new Set(), direct = new Set(), shown = [], laneRow = {}, filt = null;

function compile(q) {
  var terms = q.trim().split(/[\s,]+/).filter(Boolean);
  if (!terms.length) return null;
  var preds = [], textTerms = [], expanded = [];
  terms.forEach(function (term) {
    var lt = term.toLowerCase();
    if (lt.indexOf('node:') === 0) {
      var n = lt.slice(5);
      preds.push(function (ev) { return evLanes(ev).some(function (l) { return lanes[l].toLowerCase() === n; }); });
      return;
    }
    var kp;
    if (lt.length > 1 && lt.charAt(lt.length - 1) === '*') {
      var p = lt.slice(0, -1);
      kp = function (k) { return k.indexOf(p) === 0; };
    } else if (lt.charAt(0) === '@') {
      kp = function (k) { return k.length >= lt.length && k.slice(k.length - lt.length) === lt; };
    } else {
      var set = [lt];
      if (tradeMap[lt]) { set = set.concat(tradeMap[lt]); expanded = expanded.concat(tradeMap[lt]); }
      kp = function (k) { for (var i = 0; i < set.length; i++) { var x = set[i]; if (k === x || (k.length > x.length && k.indexOf(x) === 0 && k.charAt(x.length) === '@')) return true; } return false; };
    }
    var hit = function (ev) { return ev.keys.some(kp); };
    if (EV.some(hit)) preds.push(hit);
    else { textTerms.push(term); preds.push(function (ev) { return evText(ev).indexOf(lt) >= 0; }); }
  });
  return { terms: terms, textTerms: textTerms, expanded: expanded, match: function (ev) { return preds.some(function (p) { return p(ev); }); } };
}

function applyFilter(keepView) {
  filt = compile(state.q);
  ctxSet = new Set(); direct = new Set();
  if (!filt) { V = EV.slice(); }
  else {
    var hits = EV.filter(filt.match);
    hits.forEach(function (ev) { direct.add(ev); });
    if (state.ctx && hits.length) {
      // Nearby: violations and major faults (crash, partition, heal…) within the journey's
      // span on its lanes. Faults that hit the journey's own messages name its ids and are
      // direct matches already.
      var t0 = Infinity, t1 = -Infinity, involved = new Set();
      hits.forEach(function (ev) {
        if (ev.k !== 'step') return;
        t0 = Math.min(t0, ev.t); t1 = Math.max(t1, ev.t); involved.add(ev.lane);
      });
      if (t0 <= t1) {
        EV.forEach(function (ev) {
          if (ev.k === 'step' || direct.has(ev) || ev.t < t0 || ev.t > t1) return;
          if (ev.k === 'fault' && !MAJOR[ev.kind]) return;
          var ls = ev.lanes;
          if (!ls.length || ls.some(function (l) { return involved.has(l); })) ctxSet.add(ev);
        });
      }
    }
    V = EV.filter(function (ev) { return direct.has(ev) || ctxSet.has(ev); });
  }
  computeWarp();
  computeLanes();
  if (!keepView) fit();
  renderStatus();
  renderAll();
}

// The compact axis: every step (and fault naming the filter) gets room of its own and idle
// time is compressed logarithmically; nearby faults sit where their time falls between them.
var K = [];
function computeWarp() {
  K = [];
  var w = 0, prev = null;
  V.forEach(function (ev) {
    if (state.mode === 'linear') { ev.w = ev.t; return; }
    if (ctxSet.has(ev)) return;
    if (prev !== null) { var d = ev.t - prev; w += d === 0 ? 0.55 : 1 + Math.log2(1 + d / 150); }
    ev.w = w; prev = ev.t; K.push(ev);
  });
  if (state.mode !== 'linear') {
    if (!K.length) K = V.slice(0, 1).map(function (ev) { ev.w = 0; return ev; });
    V.forEach(function (ev) { if (ctxSet.has(ev)) ev.w = warpAt(ev.t); });
  }
}
// w of an arbitrary time (nearby faults, durations).
function warpAt(t) {
  if (state.mode === 'linear' || !K.length) return t;
  var lo = 0, hi = K.length - 1;
  if (t <= K[0].t) return K[0].w - Math.log2(1 + (K[0].t - t) / 150);
  if (t >= K[hi].t) return K[hi].w + Math.log2(1 + (t - K[hi].t) / 150);
  while (hi - lo > 1) { var mid = (lo + hi) >> 1; if (K[mid].t <= t) lo = mid; else hi = mid; }
  var a = K[lo], b = K[hi];
  return a.w + (b.w - a.w) * (t - a.t) / Math.max(1, b.t - a.t);
}
function unwarp(w) {
  if (state.mode === 'linear' || !K.length) return w;
  var lo = 0, hi = K.length - 1;
  if (w <= K[0].w) return K[0].t;
  if (w >= K[hi].w) return K[hi].t;
  while (hi - lo > 1) { var mid = (lo + hi) >> 1; if (K[mid].w <= w) lo = mid; else hi = mid; }
  var a = K[lo], b = K[hi];
  return b.w === a.w ? a.t : a.t + (b.t - a.t) * (w - a.w) / (b.w - a.w);
}
function computeLanes() {
  var used = new Set();
  if (filt && state.idle) {
    V.forEach(function (ev) { if (ev.k === 'step' || direct.has(ev)) evLanes(ev).forEach(function (l) { used.add(l); }); });
    shown = lanes.map(function (_, i) { return i; }).filter(function (i) { return used.has(i); });
    if (!shown.length) shown = lanes.map(function (_, i) { return i; });
  } else shown = lanes.map(function (_, i) { return i; });
  laneRow = {}; shown.forEach(function (l, r) { laneRow[l] = r; });
}
function extent() {
  if (!V.length) return [0, 1];
  var a = V[0].w, b = V[V.length - 1].w;
  V.forEach(function (ev) { if (ev.k === 'fault' && ev.dur) b = Math.max(b, warpAt(ev.t + ev.dur)); });
  var pad = Math.max((b - a) * 0.02, state.mode === 'linear' ? 200 : 1);
  return [a - pad, b + pad];
}
function fit() { var e = extent(); state.v0 = e[0]; state.v1 = e[1]; }
function lowerW(w) { var lo = 0, hi = V.length; while (lo < hi) { var m = (lo + hi) >> 1; if (V[m].w < w) lo = m + 1; else hi = m; } return lo; }

// ---- status, banner ----------------------------------------------------------------------
function chip(parent, text, q) {
  var c = document.createElement('span'); c.className = 'chip'; c.textContent = text; c.title = 'filter by ' + q;
  c.addEventListener('click', function () { setFilter(q); }); parent.appendChild(c); return c;
}
function renderStatus() {
  var st = document.getElementById('status');
  st.textContent = '';
  var steps = 0, faults = 0, cf = 0, viols = 0, perLane = {}, t0 = Infinity, t1 = -Infinity;
  V.forEach(function (ev) {
    if (ev.k === 'step') { steps++; perLane[ev.lane] = (perLane[ev.lane] || 0) + 1; t0 = Math.min(t0, ev.t); t1 = Math.max(t1, ev.t); }
    else if (ev.k === 'fault') { if (ctxSet.has(ev)) cf++; else faults++; }
    else viols++;
  });
  st.dataset.steps = steps; st.dataset.faults = faults + cf; st.dataset.violations = viols;
  var b = document.createElement('b');
  if (filt) {
    b.textContent = 'Filter ';
    st.appendChild(b);
    filt.terms.forEach(function (t) { var s = document.createElement('span'); s.className = 'term'; s.textContent = t + ' '; st.appendChild(s); });
  } else { b.textContent = 'Whole trace: '; st.appendChild(b); }
  var nodes = Object.keys(perLane).length;
  var pl = function (n, w) { return n + ' ' + w + (n === 1 ? '' : 's'); };
  st.appendChild(document.createTextNode(' — ' + pl(steps, 'step') + ' on ' + pl(nodes, 'lane') + ', ' + pl(faults, 'fault') +
    (filt && cf ? ' (+' + cf + ' nearby major: crash, partition, heal…)' : '') + ', ' + pl(viols, 'violation') +
    (steps ? '; ' + fmtT(t0) + ' … ' + fmtT(t1) + ' (' + fmtDur(t1 - t0) + ')' : '') + '. '));
  if (filt && filt.textTerms.length) {
    var w = document.createElement('span'); w.className = 'warn';
    w.textContent = 'No id matched ' + filt.textTerms.join(', ') + ' — showing text matches. ';
    st.appendChild(w);
  }
  if (filt) {
    // The trades of the intents shown, to widen to a trade's whole journey (and back).
    var trades = new Set(), intents = new Set();
    V.forEach(function (ev) {
      if (ev.k !== 'step' || !direct.has(ev)) return;
      ev.keys.forEach(function (k) {
        var i = k.split('@')[0];
        if (intentTrades[i]) { intents.add(i); intentTrades[i].forEach(function (t) { trades.add(t); }); }
      });
    });
    if (trades.size && trades.size <= 6) {
      st.appendChild(document.createTextNode(' Trade: '));
      trades.forEach(function (t) { chip(st, t, t); });
    }
    if (intents.size > 1 && intents.size <= 12) {
      st.appendChild(document.createTextNode(' Intents: '));
      Array.from(intents).sort(natCmp).forEach(function (i) { chip(st, i, i); });
    }
  }
}
function natCmp(a, b) { return a.localeCompare(b, undefined, { numeric: true }); }
function renderBanner() {
  var vb = document.getElementById('viol-banner');
  var vs = EV.filter(function (e) { return e.k === 'viol'; });
  if (!vs.length) { vb.hidden = true; return; }
  vb.hidden = false; vb.textContent = '';
  var b = document.createElement('b'); b.textContent = vs.length + ' violation' + (vs.length > 1 ? 's' : '') + ': ';
  vb.appendChild(b);
  vs.slice(0, 8).forEach(function (v) {
    var a = document.createElement('a'); a.textContent = fmtT(v.t) + ' — ' + v.what;
    a.addEventListener('click', function () {
      var q = v.keys.length ? v.keys[0] : '';
      setFilter(q);
      select(v, true);
    });
    vb.appendChild(a);
  });
  if (vs.length > 8) vb.appendChild(document.createTextNode('… and ' + (vs.length - 8) + ' more (red rows in the table).'));
}
function renderWarnings() {
  var w = document.getElementById('warnings');
  if (!D.warnings.length) return;
  w.hidden = false; w.textContent = 'Note: ' + D.warnings.join('; ');
}

// ---- chart -------------------------------------------------------------------------------
function el(name, attrs, parent, text) {
  var e = document.createElementNS(NS, name);
  for (var a in attrs) e.setAttribute(a, attrs[a]);
  if (text !== undefined && text !== null) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}
function stepTitle(ev) {
  var s = fmtT(ev.t) + '   ' + lanes[ev.lane] + '   (trace line ' + ev.line + ')\n' + ev.tr + ':  ' + ev.from + '  →  ' + ev.to +
    '\nsubject: ' + (ev.subj || '—') + '\ninput: ' + (ev.input || '—');
  if (ev.outs.length) s += '\noutputs:\n  ' + ev.outs.join('\n  ');
  return s;
}
function faultTitle(ev) {
  return (ev.k === 'viol' ? 'VIOLATION  ' + fmtT(ev.t) + '\n' + ev.what
    : 'fault ' + ev.kind + '  ' + fmtT(ev.t) + (ev.dur ? '  for ' + fmtDur(ev.dur) : '') + '\n' + ev.detail +
      (ev.msgs.length ? '\nhit: ' + ev.msgs[0].src.outs[ev.msgs[0].out] + (ev.msgs.length > 1 ? ' and ' + (ev.msgs.length - 1) + ' more' : '') : '')) + '\n(trace line ' + ev.line + ')' +
    (ctxSet.has(ev) ? '\n(nearby: not naming the filtered ids)' : '');
}
function shortTr(tr) { var p = tr.split('.'); return p.length > 1 ? p[p.length - 1] : tr; }

var chartW = 1200, plotW = 1000, LH = 30;
function X(w) { return PL + (w - state.v0) * plotW / (state.v1 - state.v0); }
function Y(lane) { return TOP + laneRow[lane] * LH + LH / 2; }

function renderChart() {
  var svg = document.getElementById('chart');
  chartW = Math.max(640, svg.parentNode.clientWidth - 32);
  plotW = chartW - PL - PR;
  var n = shown.length;
  LH = n > 30 ? 16 : n > 20 ? 22 : n > 12 ? 28 : 36;
  var lanesH = n * LH, H = TOP + lanesH + AX;
  svg.setAttribute('width', chartW); svg.setAttribute('height', H);
  svg.setAttribute('viewBox', '0 0 ' + chartW + ' ' + H);
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  var defs = el('defs', {}, svg);
  var clip = el('clipPath', { id: 'plot-clip' }, defs);
  el('rect', { x: PL, y: 0, width: plotW, height: H }, clip);
  ['core', 'agent', 'master', 'slave', 'other', 'lost'].forEach(function (k) {
    var m = el('marker', { id: 'ah-' + k, viewBox: '0 0 8 8', refX: 7.5, refY: 4, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' }, defs);
    el('path', { d: 'M0,0.5 L8,4 L0,7.5 z', fill: KIND_COLORS[k] || '#607d8b' }, m);
  });
  // lanes
  el('rect', { x: 0, y: 0, width: chartW, height: TOP, class: 'fault-row-bg' }, svg);
  el('text', { x: 8, y: TOP / 2 + 4, class: 'lane-count' }, svg, 'faults');
  var perLane = {};
  V.forEach(function (ev) { if (ev.k === 'step') perLane[ev.lane] = (perLane[ev.lane] || 0) + 1; });
  shown.forEach(function (l, r) {
    var y = TOP + r * LH;
    el('rect', { x: 0, y: y, width: chartW, height: LH, class: 'lane-bg ' + (r % 2 ? 'odd' : 'even'), 'data-lane': lanes[l] }, svg);
    el('line', { x1: PL, x2: chartW - PR, y1: y + LH / 2, y2: y + LH / 2, class: 'lane-rule' }, svg);
    var kind = laneKind(lanes[l]);
    var lab = el('text', { x: 8, y: y + LH / 2 + (LH >= 28 ? -1 : 4), class: 'lane-label k-' + kind }, svg, lanes[l]);
    lab.setAttribute('data-lane', lanes[l]);
    if (LH >= 28) el('text', { x: 8, y: y + LH / 2 + 11, class: 'lane-count' }, svg, (perLane[l] || 0) + ' steps');
  });
  el('line', { x1: PL - 0.5, x2: PL - 0.5, y1: 0, y2: TOP + lanesH, class: 'axis-line' }, svg);
  var plot = el('g', { 'clip-path': 'url(#plot-clip)' }, svg);
  var bottom = TOP + lanesH;

  var lo = lowerW(state.v0), hi = lowerW(state.v1 + 1e-9);
  var vis = V.slice(lo, hi), hint = '';
  var visSteps = vis.filter(function (e) { return e.k === 'step'; });
  var dense = visSteps.length > DENSE;

  // gaps (compact axis)
  var gapG = el('g', {}, plot), lastGapX = -1e9;
  if (state.mode === 'compact' && !dense) {
    for (var i = Math.max(1, lo); i < Math.min(V.length, hi + 1); i++) {
      var d = V[i].t - V[i - 1].t;
      if (d >= 20000) {
        var gx = (X(V[i].w) + X(V[i - 1].w)) / 2;
        if (X(V[i].w) - X(V[i - 1].w) < 14) continue;
        el('line', { x1: gx, x2: gx, y1: TOP, y2: bottom, class: 'gap-line' }, gapG);
        if (gx - lastGapX > 80) { el('text', { x: gx, y: bottom + 26, 'text-anchor': 'middle', class: 'gap-label' }, gapG, '⋯ ' + fmtDur(d) + ' ⋯'); lastGapX = gx; }
      }
    }
  }
  // faults & violations (also those whose band reaches into view)
  var fg = el('g', {}, plot);
  var lastFlagX = -1e9;
  var marks = V.filter(function (ev) { return ev.k !== 'step'; });
  var inView = marks.filter(function (ev) { return ev.w >= state.v0 && ev.w <= state.v1; }).length;
  var busy = inView > 60;
  var quiet = function (ev) { return ctxSet.has(ev) || (busy && ev.k === 'fault' && !MAJOR[ev.kind] && !direct.has(ev)) ? 1 : 0; };
  marks.sort(function (a, b) { return (quiet(b) - quiet(a)) || (a.line - b.line); });
  marks.forEach(function (ev) {
    var x = X(ev.w);
    var x2 = ev.k === 'fault' && ev.dur ? X(warpAt(ev.t + ev.dur)) : x;
    if (x2 < PL - 40 || x > chartW + 40) return;
    var g = el('g', { class: (ev.k === 'viol' ? 'violation-marker' : 'fault-marker') + (ctxSet.has(ev) || (busy && ev.k === 'fault' && !MAJOR[ev.kind] && !direct.has(ev)) ? ' ctx' : ''), 'data-kind': ev.k === 'viol' ? 'violation' : ev.kind, 'data-line': ev.line }, fg);
    el('title', {}, g, faultTitle(ev));
    var col = ev.k === 'viol' ? '#d50000' : faultColor(ev.kind);
    var ls = ev.lanes.filter(function (l) { return laneRow[l] !== undefined; });
    if (x2 > x + 1) {
      if (ls.length) ls.forEach(function (l) { el('rect', { x: x, y: Y(l) - LH / 2, width: x2 - x, height: LH, fill: col, class: 'fault-band' }, g); });
      else el('rect', { x: x, y: TOP, width: x2 - x, height: bottom - TOP, fill: col, class: 'fault-band' }, g);
    }
    var ctx = ctxSet.has(ev) || (busy && ev.k === 'fault' && !MAJOR[ev.kind] && !direct.has(ev));
    if (!ctx) el('line', { x1: x, x2: x, y1: 2, y2: bottom, stroke: col, class: ev.k === 'viol' ? 'violation-line' : 'fault-line' }, g);
    var label = ev.k === 'viol' ? 'VIOLATION' : ev.kind;
    var fw = label.length * 5.9 + 8;
    if (!ctx && x - lastFlagX > fw + 2) {
      el('rect', { x: x, y: 4, width: fw, height: 15, rx: 2, fill: col, class: ev.k === 'viol' ? 'violation-flag' : 'fault-flag' }, g);
      el('text', { x: x + 4, y: 15, class: 'fault-flag-text' }, g, label);
      lastFlagX = x;
    } else {
      el('path', { d: 'M' + x + ',4 l5,7 l-5,7 l-5,-7 z', fill: col, class: 'fault-flag' }, g);
    }
    var dm = ctx ? 6 : 9;
    ls.forEach(function (l) {
      var y = Y(l);
      el('path', { d: 'M' + x + ',' + (y - dm) + ' l' + (dm * 2 / 3) + ',' + dm + ' l' + (-dm * 2 / 3) + ',' + dm + ' l' + (-dm * 2 / 3) + ',' + (-dm) + ' z', fill: col, class: 'fault-lane-mark' }, g);
    });
  });

  if (dense) {
    // Too many marks: a density strip per lane instead.
    var bw = 3, nb = Math.ceil(plotW / bw), counts = {}, max = 1;
    visSteps.forEach(function (ev) {
      if (laneRow[ev.lane] === undefined) return;
      var b = Math.floor((X(ev.w) - PL) / bw), key = ev.lane + ':' + b;
      counts[key] = (counts[key] || 0) + 1; if (counts[key] > max) max = counts[key];
    });
    var dg = el('g', { class: 'density' }, plot);
    Object.keys(counts).forEach(function (key) {
      var p = key.split(':'), l = +p[0], b = +p[1], c = counts[key];
      var h = Math.max(3, (LH - 6) * Math.sqrt(c / max));
      el('rect', { x: PL + b * bw, y: Y(l) - h / 2, width: bw - 0.5, height: h, class: 'k-' + laneKind(lanes[l]) }, dg);
    });
    hint = visSteps.length + ' steps in view, drawn as density — zoom in (Ctrl + wheel, +, or drag across the overview) or filter to see single steps and messages.';
  } else {
    // messages
    var rr = LH >= 28 ? 5.5 : LH >= 22 ? 4.5 : 3.5;
    if (state.msgs && visSteps.length <= ARROW_LIMIT) {
      var mg = el('g', {}, plot);
      var inV = new Set(V);
      var srcs = V.length <= 4000 ? V : vis;
      srcs.forEach(function (ev) {
        if (ev.k !== 'step' || !ev.msgs.length || laneRow[ev.lane] === undefined) return;
        ev.msgs.forEach(function (m) {
          var x1 = X(ev.w), y1 = Y(ev.lane), cls, x2, y2, kind = laneKind(lanes[m.dstLane]);
          var tgtShown = laneRow[m.dstLane] !== undefined;
          var full = m.dst && inV.has(m.dst) && laneRow[m.dst.lane] !== undefined;
          if (full) {
            x2 = X(m.dst.w); y2 = Y(m.dst.lane); cls = 'msg to-' + kind;
            if ((x1 < PL && x2 < PL) || (x1 > chartW && x2 > chartW)) return;
            // End at the receiving mark's rim so the arrowhead stays visible.
            var dx = x2 - x1, dy = y2 - y1, len = Math.sqrt(dx * dx + dy * dy);
            if (len > 2 * rr + 2) { x2 -= dx / len * (rr + 1); y2 -= dy / len * (rr + 1); }
          } else {
            if (x1 < PL - 30 || x1 > chartW + 30) return;
            var ty = tgtShown ? Y(m.dstLane) : y1 + (m.dstLane < ev.lane ? -LH * 0.5 : LH * 0.5);
            x2 = x1 + 18; y2 = y1 + (ty - y1) * (tgtShown ? 0.6 : 1);
            cls = m.dst ? 'msg elsewhere to-' + kind : m.fault ? 'msg lost' : 'msg unseen';
          }
          var attrs = { x1: x1, y1: y1, x2: x2, y2: y2, class: cls };
          if (full) attrs['marker-end'] = 'url(#ah-' + kind + ')';
          var line = el('line', attrs, mg);
          el('title', {}, line, (m.dst ? 'message ' : m.fault ? 'message lost to a fault ' : 'message with no receiving step in the trace ') + lanes[ev.lane] + ' → ' + lanes[m.dstLane] + '\n' + ev.outs[m.out] +
            (m.dst ? '\nreceived ' + fmtT(m.dst.t) + ' (line ' + m.dst.line + ', +' + fmtDur(m.dst.t - ev.t) + ')' : '') +
            (m.fault ? '\nfault ' + m.fault.kind + ' (line ' + m.fault.line + '): ' + m.fault.detail : ''));
          if (!m.dst) el('text', { x: x2, y: y2 + 4, 'text-anchor': 'middle', class: m.fault ? 'lost-x' : 'unseen-q' }, mg, m.fault ? '✕' : '?');
        });
      });
    } else if (state.msgs) {
      hint = 'Messages hidden: ' + visSteps.length + ' steps in view — zoom in to see them.';
    }
    // marks
    var kg = el('g', {}, plot);
    var showLabels = visSteps.length <= LABEL_LIMIT, lastLabel = {};
    var r = rr;
    visSteps.forEach(function (ev) {
      if (laneRow[ev.lane] === undefined) return;
      var x = X(ev.w), y = Y(ev.lane), kind = laneKind(lanes[ev.lane]);
      var c = el('circle', { cx: x, cy: y, r: r, class: 'mark k-' + kind + (state.sel === ev ? ' sel' : ''), 'data-line': ev.line, 'data-node': lanes[ev.lane] }, kg);
      c._ev = ev;
      el('title', {}, c, stepTitle(ev));
      if (showLabels && LH >= 22) {
        var lbl = shortTr(ev.tr), wpx = lbl.length * 6.2 + 6;
        if (lastLabel[ev.lane] === undefined || x - lastLabel[ev.lane] >= wpx) {
          el('text', { x: x, y: y - r - 3, 'text-anchor': 'middle', class: 'mark-label' }, kg, lbl);
          lastLabel[ev.lane] = x;
        }
      }
    });
  }
  // axis
  var ag = el('g', {}, svg);
  el('line', { x1: PL, x2: chartW - PR, y1: bottom + 0.5, y2: bottom + 0.5, class: 'axis-line' }, ag);
  if (state.mode === 'linear') {
    var span = state.v1 - state.v0, raw = span / Math.max(1, plotW / 120), pow = Math.pow(10, Math.floor(Math.log10(Math.max(raw, 1e-9))));
    var step = [1, 2, 5, 10].map(function (m) { return m * pow; }).find(function (s) { return s >= raw; }) || raw;
    for (var tt = Math.ceil(state.v0 / step) * step; tt <= state.v1; tt += step) {
      var tx = X(tt);
      el('line', { x1: tx, x2: tx, y1: bottom, y2: bottom + 5, class: 'axis-line' }, ag);
      el('text', { x: tx, y: bottom + 15, 'text-anchor': 'middle', class: 'axis-text' }, ag, fmtT(tt));
    }
  } else {
    var lastX = -1e9;
    vis.forEach(function (ev) {
      var x = X(ev.w);
      if (x - lastX < 100 || x < PL + 30 || x > chartW - PR - 30) return;
      lastX = x;
      el('line', { x1: x, x2: x, y1: bottom, y2: bottom + 5, class: 'axis-line' }, ag);
      el('text', { x: x, y: bottom + 15, 'text-anchor': 'middle', class: 'axis-text' }, ag, fmtT(ev.t));
    });
  }
  var hb = document.getElementById('chart-hint');
  hb.textContent = hint; hb.hidden = !hint;
  var tf = document.getElementById('t-from'), tt2 = document.getElementById('t-to');
  if (document.activeElement !== tf) tf.value = (unwarp(state.v0) / 1000).toFixed(3);
  if (document.activeElement !== tt2) tt2.value = (unwarp(state.v1) / 1000).toFixed(3);
}

// ---- overview ----------------------------------------------------------------------------
var ovExt = [0, 1];
function renderOverview() {
  var svg = document.getElementById('overview');
  var W = chartW, H = 30;
  svg.setAttribute('width', W); svg.setAttribute('viewBox', '0 0 ' + W + ' ' + H);
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  ovExt = extent();
  var pw = W - PL - PR, k = pw / (ovExt[1] - ovExt[0]);
  el('text', { x: 8, y: 19, class: 'lane-count', style: 'font:10px system-ui;fill:#667085' }, svg, 'overview');
  var nb = Math.max(1, Math.floor(pw / 2)), bins = new Array(nb).fill(0), max = 1;
  V.forEach(function (ev) {
    if (ev.k !== 'step') return;
    var b = Math.min(nb - 1, Math.max(0, Math.floor((ev.w - ovExt[0]) * k / 2)));
    bins[b]++; if (bins[b] > max) max = bins[b];
  });
  var path = '';
  bins.forEach(function (c, b) { if (c) { var h = Math.max(1.5, 24 * c / max); path += 'M' + (PL + b * 2) + ',' + (H - 1) + 'v' + (-h) + 'h1.6v' + h + 'z'; } });
  el('path', { d: path, fill: '#90a4ae' }, svg);
  V.forEach(function (ev) {
    if (ev.k === 'step') return;
    var x = PL + (ev.w - ovExt[0]) * k;
    el('line', { x1: x, x2: x, y1: 0, y2: ev.k === 'viol' ? H : 8, stroke: ev.k === 'viol' ? '#d50000' : faultColor(ev.kind), 'stroke-width': ev.k === 'viol' ? 2 : 1 }, svg);
  });
  var wx0 = PL + (state.v0 - ovExt[0]) * k, wx1 = PL + (state.v1 - ovExt[0]) * k;
  wx0 = Math.max(PL, wx0); wx1 = Math.min(W - PR, wx1);
  el('rect', { x: wx0, y: 0.5, width: Math.max(2, wx1 - wx0), height: H - 1, fill: 'rgba(21,101,192,0.10)', stroke: '#1565c0', 'stroke-width': 1 }, svg);
}

// ---- table -------------------------------------------------------------------------------
var tableRows = [], rendered = 0;
function td(tr, cls, text) { var c = document.createElement('td'); if (cls) c.className = cls; if (text !== undefined) c.textContent = text; tr.appendChild(c); return c; }
function rowFor(ev) {
  var tr = document.createElement('tr');
  tr._ev = ev; ev._row = tr;
  tr.dataset.line = ev.line;
  td(tr, 'ln', String(ev.line));
  td(tr, 'time', fmtT(ev.t));
  if (ev.k === 'step') {
    var node = lanes[ev.lane], kind = laneKind(node);
    tr.className = 'step'; tr.dataset.node = node; tr.dataset.kind = kind;
    td(tr, 'node k-' + kind, node);
    td(tr, 'tr', ev.tr);
    var ft = td(tr, 'fromto');
    ft.appendChild(document.createTextNode(ev.from));
    var ar = document.createElement('span'); ar.className = 'arrow'; ar.textContent = '  →  '; ft.appendChild(ar);
    ft.appendChild(document.createTextNode(ev.to));
    var sc = td(tr, 'subj');
    if (ev.subj) { var s = document.createElement('span'); s.className = 'sub'; s.textContent = ev.subj; s.title = 'filter by ' + ev.subj; s.addEventListener('click', function (e) { e.stopPropagation(); setFilter(ev.subj); }); sc.appendChild(s); }
    td(tr, 'in', ev.input);
    var oc = td(tr, 'outs');
    ev.outs.forEach(function (o, i) {
      var d = document.createElement('span'); d.className = 'out'; d.textContent = o;
      var m = ev.msgs.find(function (mm) { return mm.out === i; });
      if (m) {
        d.className += ' msg-out';
        var tag = document.createElement('span');
        if (m.dst) {
          tag.className = 'tag recv'; tag.textContent = 'received ' + fmtT(m.dst.t);
          tag.title = 'line ' + m.dst.line + ' on ' + lanes[m.dst.lane] + ' — click to select';
          tag.addEventListener('click', function (e) { e.stopPropagation(); select(m.dst, true); });
        } else if (m.fault) { tag.className = 'tag lost'; tag.textContent = 'lost'; }
        else { tag.className = 'tag unseen'; tag.textContent = 'no receiving step in the trace'; }
        d.appendChild(tag);
        if (m.fault) {
          var ft2 = document.createElement('span'); ft2.className = 'tag lost'; ft2.textContent = m.fault.kind + ' (line ' + m.fault.line + ')';
          ft2.title = m.fault.detail; d.appendChild(ft2);
        }
      }
      oc.appendChild(d);
    });
  } else if (ev.k === 'fault') {
    tr.className = 'fault-row' + (ctxSet.has(ev) ? ' ctx' : ''); tr.dataset.kind = ev.kind;
    td(tr, 'node', (ev.lanes.map(function (l) { return lanes[l]; }).join(' ') || 'all'));
    td(tr, 'tr', 'fault: ' + ev.kind);
    var hit = ev.msgs.length === 1 ? '  — hit the message ' + lanes[ev.msgs[0].src.lane] + ' ' + ev.msgs[0].src.outs[ev.msgs[0].out] + ' (line ' + ev.msgs[0].src.line + ')'
      : ev.msgs.length > 1 ? '  — ' + ev.msgs.length + ' messages lost to it, first ' + lanes[ev.msgs[0].src.lane] + ' ' + ev.msgs[0].src.outs[ev.msgs[0].out] + ' (line ' + ev.msgs[0].src.line + ')' : '';
    var c = td(tr, 'detail', ev.detail + (ev.dur ? '  (for ' + fmtDur(ev.dur) + ')' : '') + hit + (ctxSet.has(ev) ? '  — nearby: on a lane of this journey, during it' : ''));
    c.colSpan = 4;
  } else {
    tr.className = 'violation-row';
    td(tr, 'node', ev.lanes.map(function (l) { return lanes[l]; }).join(' ') || '—');
    td(tr, 'tr', 'VIOLATION');
    var c2 = td(tr, 'detail', ev.what); c2.colSpan = 4;
  }
  if (state.sel === ev) tr.classList.add('sel');
  tr.addEventListener('click', function () { select(ev, false); });
  return tr;
}
function renderTable() {
  var tb = document.getElementById('rows');
  tb.textContent = '';
  if (state.follow) {
    var lo = lowerW(state.v0), hi = lowerW(state.v1 + 1e-9);
    tableRows = V.slice(lo, hi);
  } else tableRows = V;
  rendered = 0;
  moreRows(CHUNK);
  var title = document.getElementById('table-title');
  title.textContent = tableRows.length + ' events' + (state.follow && tableRows.length !== V.length ? ' in the zoom window (of ' + V.length + ' filtered)' : '') + (filt ? ' matching the filter' : '') + ' — click a row to mark it on the timeline';
}
var moreObs = null;
function moreRows(n) {
  var tb = document.getElementById('rows');
  var old = tb.querySelector('tr.more'); if (old) tb.removeChild(old);
  var frag = document.createDocumentFragment();
  var end = Math.min(tableRows.length, rendered + n);
  for (; rendered < end; rendered++) frag.appendChild(rowFor(tableRows[rendered]));
  tb.appendChild(frag);
  if (rendered < tableRows.length) {
    var tr = document.createElement('tr'); tr.className = 'more';
    var c = td(tr, '', ''); c.colSpan = 8;
    var b = document.createElement('button'); b.textContent = 'show ' + Math.min(CHUNK, tableRows.length - rendered) + ' more of ' + (tableRows.length - rendered) + ' remaining rows';
    b.addEventListener('click', function () { moreRows(CHUNK); });
    c.appendChild(b); tb.appendChild(tr);
    if ('IntersectionObserver' in window) {
      if (moreObs) moreObs.disconnect();
      moreObs = new IntersectionObserver(function (es) { if (es.some(function (e) { return e.isIntersecting; })) moreRows(CHUNK); });
      moreObs.observe(tr);
    }
  }
}

// ---- selection & navigation --------------------------------------------------------------
function select(ev, center) {
  state.sel = ev;
  if (center && ev.w !== undefined && V.indexOf(ev) >= 0) {
    var half = (state.v1 - state.v0) / 2;
    if (ev.w < state.v0 || ev.w > state.v1) { state.v0 = ev.w - half; state.v1 = ev.w + half; }
  }
  renderAll();
  var idx = tableRows.indexOf(ev);
  if (idx >= 0) {
    if (idx >= rendered) moreRows(idx - rendered + 20);
    if (ev._row) ev._row.scrollIntoView({ block: 'center' });
  }
}

var pending = false;
function renderAll() { renderChart(); renderOverview(); renderTable(); }
function renderView() {
  if (pending) return; pending = true;
  requestAnimationFrame(function () { pending = false; renderChart(); renderOverview(); scheduleTable(); });
}
var tableTimer = null;
function scheduleTable() { if (!state.follow) return; clearTimeout(tableTimer); tableTimer = setTimeout(renderTable, 200); }

function zoom(f, cw) {
  if (cw === undefined) cw = (state.v0 + state.v1) / 2;
  var span = (state.v1 - state.v0) * f;
  if (span < 1e-3) return;
  state.v0 = cw - (cw - state.v0) * f; state.v1 = state.v0 + span;
  renderView();
}
function pan(frac) { var d = (state.v1 - state.v0) * frac; state.v0 += d; state.v1 += d; renderView(); }

function setFilter(q) {
  state.q = q;
  var f = document.getElementById('filter');
  f.value = q; f.classList.toggle('active', !!q.trim());
  writeHash();
  applyFilter(false);
}
function writeHash() {
  var parts = [];
  if (state.q.trim()) parts.push('filter=' + encodeURIComponent(state.q.trim()));
  if (state.mode !== 'compact') parts.push('mode=' + state.mode);
  var h = parts.length ? '#' + parts.join('&') : ' ';
  try { history.replaceState(null, '', h === ' ' ? location.pathname + location.search : h); } catch (e) { /* file: URLs in some browsers */ }
}
function readParams() {
  var p = {};
  [location.search.replace(/^\?/, ''), location.hash.replace(/^#/, '')].forEach(function (s) {
    s.split('&').forEach(function (kv) {
      if (!kv) return;
      var i = kv.indexOf('='), k = i < 0 ? kv : kv.slice(0, i), v = i < 0 ? '' : kv.slice(i + 1);
      try { p[decodeURIComponent(k)] = decodeURIComponent(v.replace(/\+/g, ' ')); } catch (e) { /* ignore malformed */ }
    });
  });
  return p;
}

// ---- wiring ------------------------------------------------------------------------------
function init() {
  var p = readParams();
  if (p.mode === 'linear' || p.mode === 'compact') state.mode = p.mode;
  document.getElementById('mode').value = state.mode;
  state.q = p.filter || p.q || '';
  var f = document.getElementById('filter');
  f.value = state.q; f.classList.toggle('active', !!state.q.trim());
  var legend = document.getElementById('legend');
  [['core', 'core'], ['agent', 'agent'], ['master', 'master EA'], ['slave', 'slave EA']].forEach(function (k) {
    var s = document.createElement('span'), sw = document.createElement('span');
    sw.className = 'sw'; sw.style.background = 'var(--' + k[0] + ')'; s.appendChild(sw); s.appendChild(document.createTextNode(k[1] + ' step'));
    legend.appendChild(s);
  });
  [['msg', 'message → the step that received it', '#607d8b', 'solid'], ['lost', '✕ lost to a fault', '#c62828', 'dashed'], ['unseen', '? no receiving step in the trace', '#98a2b3', 'dotted']].forEach(function (k) {
    var s = document.createElement('span'), ln = document.createElement('span');
    ln.className = 'ln'; ln.style.borderTop = '2px ' + k[3] + ' ' + k[2]; s.appendChild(ln); s.appendChild(document.createTextNode(k[1])); legend.appendChild(s);
  });
  var s2 = document.createElement('span'); s2.textContent = '◆ fault (flag on top, diamond on the lanes it hits; faded = nearby, not naming the filter) · red line = violation · drag to pan, Ctrl+wheel to zoom, hover for details';
  legend.appendChild(s2);

  var timer = null;
  f.addEventListener('input', function () { clearTimeout(timer); timer = setTimeout(function () { setFilter(f.value); }, 250); });
  f.addEventListener('keydown', function (e) { if (e.key === 'Enter') { clearTimeout(timer); setFilter(f.value); } });
  document.getElementById('clear').addEventListener('click', function () { setFilter(''); });
  document.addEventListener('keydown', function (e) {
    if (e.key === '/' && document.activeElement !== f) { e.preventDefault(); f.focus(); f.select(); }
    else if (e.key === 'Escape' && document.activeElement === f) { setFilter(''); f.blur(); }
  });
  document.getElementById('mode').addEventListener('change', function (e) { state.mode = e.target.value; writeHash(); applyFilter(false); });
  [['opt-ctx', 'ctx', true], ['opt-msgs', 'msgs', false], ['opt-idle', 'idle', true], ['opt-follow', 'follow', false]].forEach(function (o) {
    var c = document.getElementById(o[0]);
    c.addEventListener('change', function () { state[o[1]] = c.checked; if (o[2]) applyFilter(true); else renderAll(); });
  });
  document.getElementById('zoom-in').addEventListener('click', function () { zoom(0.5); });
  document.getElementById('zoom-out').addEventListener('click', function () { zoom(2); });
  document.getElementById('pan-left').addEventListener('click', function () { pan(-0.4); });
  document.getElementById('pan-right').addEventListener('click', function () { pan(0.4); });
  document.getElementById('fit').addEventListener('click', function () { fit(); renderAll(); });
  function setRange() {
    var a = parseFloat(document.getElementById('t-from').value), b = parseFloat(document.getElementById('t-to').value);
    if (isFinite(a) && isFinite(b) && b > a) { state.v0 = warpAt(a * 1000); state.v1 = warpAt(b * 1000); if (state.v1 <= state.v0) state.v1 = state.v0 + 1; renderAll(); }
  }
  document.getElementById('t-from').addEventListener('change', setRange);
  document.getElementById('t-to').addEventListener('change', setRange);

  var svg = document.getElementById('chart'), drag = null;
  svg.addEventListener('mousedown', function (e) { if (e.button !== 0) return; drag = { x: e.clientX, v0: state.v0, v1: state.v1, moved: false, target: e.target }; svg.classList.add('dragging'); e.preventDefault(); });
  window.addEventListener('mousemove', function (e) {
    if (!drag) return;
    var dx = e.clientX - drag.x;
    if (Math.abs(dx) > 3) drag.moved = true;
    if (!drag.moved) return;
    var dw = dx * (drag.v1 - drag.v0) / plotW;
    state.v0 = drag.v0 - dw; state.v1 = drag.v1 - dw; renderView();
  });
  window.addEventListener('mouseup', function () {
    if (!drag) return;
    svg.classList.remove('dragging');
    var d = drag; drag = null;
    if (!d.moved && d.target && d.target._ev) select(d.target._ev, false);
    else if (d.moved) scheduleTable();
  });
  svg.addEventListener('wheel', function (e) {
    if (!(e.ctrlKey || e.metaKey || e.shiftKey)) return;
    e.preventDefault();
    var rect = svg.getBoundingClientRect();
    if (e.shiftKey && !e.ctrlKey) { pan((e.deltaY || e.deltaX) > 0 ? 0.15 : -0.15); return; }
    var x = e.clientX - rect.left, cw = state.v0 + (x - PL) * (state.v1 - state.v0) / plotW;
    zoom(Math.exp(e.deltaY * 0.0025), cw);
  }, { passive: false });
  var ov = document.getElementById('overview'), brush = null;
  function ovW(e) { var rect = ov.getBoundingClientRect(); var pw = rect.width - PL - PR; return ovExt[0] + (e.clientX - rect.left - PL) * (ovExt[1] - ovExt[0]) / pw; }
  ov.addEventListener('mousedown', function (e) { brush = { w0: ovW(e) }; e.preventDefault(); });
  window.addEventListener('mouseup', function (e) {
    if (!brush) return;
    var w1 = ovW(e), w0 = brush.w0; brush = null;
    if (Math.abs(w1 - w0) < (ovExt[1] - ovExt[0]) / 400) { var half = (state.v1 - state.v0) / 2; state.v0 = w0 - half; state.v1 = w0 + half; }
    else { state.v0 = Math.min(w0, w1); state.v1 = Math.max(w0, w1); }
    renderAll();
  });
  window.addEventListener('resize', function () { renderView(); });
  window.addEventListener('hashchange', function () {
    var q = readParams().filter || '';
    if (q !== state.q) setFilter(q);
  });
  renderWarnings();
  renderBanner();
  applyFilter(false);
  document.body.setAttribute('data-ready', '1');
}
try { init(); } catch (e) { showError('render failed: ' + (e && e.stack || e)); }
document.body.setAttribute('data-render-ms', String(Date.now() - started));
})();
"#;
