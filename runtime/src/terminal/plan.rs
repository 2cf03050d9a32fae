//! What the reference master emits: trade lifecycles from a script file or generated at a rate.
//!
//! Owns the deterministic list of steps (the n-th intent is always the same trade event), so a
//! restarted master resumes where its files say it stopped and regenerates any step it had not
//! made durable with the same ids. It must never talk to the pipe or the files, and never
//! decide about delivery: it only says what the master's trader did, in order.
//!
//! Script format (one step per line; `#` starts a comment; blank lines are skipped):
//!
//! ```text
//! open    <trade> <SYMBOL> buy|sell <volume> <price> [sl=<price>] [tp=<price>]
//! modify  <trade> [sl=<price>] [tp=<price>]
//! partial <trade> <volume> [<price>]
//! close   <trade> [<price>]
//! pending <trade> <SYMBOL> buy|sell limit|stop <volume> <price> [sl=<price>] [tp=<price>]
//! pending_modify <trade> <price> [sl=<price>] [tp=<price>]
//! cancel  <trade>
//! trigger <trade> [<price>]
//! sleep   <milliseconds>
//! ```
//!
//! A `pending` trade is a pending order until its `trigger` (then `modify`, `partial` and
//! `close` apply to the position) or its `cancel` (the trade ends). In rate mode every fourth
//! trade (with at least one modify) starts as a pending order — a buy/sell limit or stop at
//! its price — whose first modify is its trigger (SPEC.md §5.2 "Pending orders").

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use echo_statemachine::msg::{IntentKind, Side};

/// One intent to emit, before ids and timestamps are attached.
#[derive(Clone, Debug, PartialEq)]
pub struct IntentSpec {
    /// The trade's name, unique per master (the trade id is `<account>-<name>`, lower case).
    pub trade: String,
    pub kind: IntentKind,
    pub symbol: String,
    pub side: Side,
    pub volume: f64,
    pub price: f64,
    pub stop_loss: f64,
    pub take_profit: f64,
    pub master_ticket: i64,
    /// For a partial close: the position's lots before it (the fraction's denominator);
    /// 0 for every other kind.
    pub volume_before: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Emit(IntentSpec),
    Sleep(Duration),
}

/// A script line that cannot be understood.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptError {
    pub path: PathBuf,
    /// 1-based; 0 when the file itself could not be read.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.path.display(), self.line, self.message)
    }
}

impl std::error::Error for ScriptError {}

/// The master's steps, consumed in order.
#[derive(Clone, Debug)]
pub struct Plan {
    kind: PlanKind,
    /// Emit steps handed out (or skipped) so far.
    emitted: u64,
    /// Script: index of the next step.
    pos: usize,
}

#[derive(Clone, Debug)]
enum PlanKind {
    Script(Vec<Step>),
    Rate {
        interval: Duration,
        trades: u64,
        modifies: u32,
        partials: u32,
        concurrent: u32,
        symbol: String,
    },
}

fn round_lots(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn round_price(v: f64) -> f64 {
    (v * 100_000.0).round() / 100_000.0
}

impl Plan {
    pub fn rate(
        per_sec: f64,
        trades: u64,
        modifies: u32,
        partials: u32,
        concurrent: u32,
        symbol: &str,
    ) -> Plan {
        Plan {
            kind: PlanKind::Rate {
                interval: Duration::from_secs_f64(1.0 / per_sec.max(1e-3)),
                trades,
                modifies,
                partials,
                concurrent: concurrent.max(1),
                symbol: symbol.to_string(),
            },
            emitted: 0,
            pos: 0,
        }
    }

    pub fn script_file(path: &Path) -> Result<Plan, ScriptError> {
        let text = std::fs::read_to_string(path).map_err(|e| ScriptError {
            path: path.to_path_buf(),
            line: 0,
            message: e.to_string(),
        })?;
        Plan::script(path, &text)
    }

    /// Parses a script (`path` names it in errors).
    pub fn script(path: &Path, text: &str) -> Result<Plan, ScriptError> {
        struct Open {
            symbol: String,
            side: Side,
            remaining: f64,
            price: f64,
            sl: f64,
            tp: f64,
            ticket: i64,
            /// Still a pending order (not triggered yet).
            pending: bool,
        }
        let mut trades: BTreeMap<String, Open> = BTreeMap::new();
        let mut next_ticket: i64 = 1_000_000;
        let mut steps = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let err = |message: String| ScriptError {
                path: path.to_path_buf(),
                line: n + 1,
                message,
            };
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let words: Vec<&str> = content.split_whitespace().collect();
            let num = |w: Option<&&str>, what: &str| -> Result<f64, ScriptError> {
                let w = w.ok_or_else(|| err(format!("missing {what}")))?;
                w.parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v >= 0.0)
                    .ok_or_else(|| err(format!("{what} {w:?} is not a non-negative number")))
            };
            let levels = |rest: &[&str], sl: &mut f64, tp: &mut f64| -> Result<(), ScriptError> {
                for w in rest {
                    let (key, val) = w.split_once('=').ok_or_else(|| {
                        err(format!("expected sl=<price> or tp=<price>, got {w:?}"))
                    })?;
                    let v = num(Some(&val), key)?;
                    match key {
                        "sl" => *sl = v,
                        "tp" => *tp = v,
                        _ => return Err(err(format!("unknown level {key:?}"))),
                    }
                }
                Ok(())
            };
            let verb = words[0];
            if verb == "sleep" {
                let ms = words
                    .get(1)
                    .and_then(|w| w.parse::<u64>().ok())
                    .ok_or_else(|| err("sleep needs milliseconds".into()))?;
                steps.push(Step::Sleep(Duration::from_millis(ms)));
                continue;
            }
            let trade = words
                .get(1)
                .ok_or_else(|| err(format!("{verb} needs a trade name")))?
                .to_string();
            let spec = match verb {
                "open" | "pending" => {
                    if trades.contains_key(&trade) {
                        return Err(err(format!("trade {trade:?} is already open")));
                    }
                    let symbol = words
                        .get(2)
                        .ok_or_else(|| err(format!("{verb} needs a symbol")))?
                        .to_string();
                    let side = match words.get(3).map(|s| s.to_ascii_lowercase()).as_deref() {
                        Some("buy") => Side::Buy,
                        Some("sell") => Side::Sell,
                        _ => return Err(err(format!("{verb} needs buy or sell"))),
                    };
                    // A pending order names its type after the side.
                    let (kind, at) = if verb == "pending" {
                        let kind = match words.get(4).map(|s| s.to_ascii_lowercase()).as_deref() {
                            Some("limit") => IntentKind::PlaceLimit,
                            Some("stop") => IntentKind::PlaceStop,
                            _ => return Err(err("pending needs limit or stop".into())),
                        };
                        (kind, 5)
                    } else {
                        (IntentKind::Open, 4)
                    };
                    let volume = num(words.get(at), "volume")?;
                    if volume <= 0.0 {
                        return Err(err("volume must be > 0".into()));
                    }
                    let price = num(words.get(at + 1), "price")?;
                    if kind != IntentKind::Open && price <= 0.0 {
                        return Err(err("a pending order needs a price > 0".into()));
                    }
                    let (mut sl, mut tp) = (0.0, 0.0);
                    levels(words.get(at + 2..).unwrap_or(&[]), &mut sl, &mut tp)?;
                    next_ticket += 1;
                    trades.insert(
                        trade.clone(),
                        Open {
                            symbol: symbol.clone(),
                            side,
                            remaining: volume,
                            price,
                            sl,
                            tp,
                            ticket: next_ticket,
                            pending: kind != IntentKind::Open,
                        },
                    );
                    IntentSpec {
                        trade,
                        kind,
                        symbol,
                        side,
                        volume,
                        price,
                        stop_loss: sl,
                        take_profit: tp,
                        master_ticket: next_ticket,
                        volume_before: 0.0,
                    }
                }
                "modify" | "partial" | "close" | "pending_modify" | "cancel" | "trigger" => {
                    let t = trades
                        .get_mut(&trade)
                        .ok_or_else(|| err(format!("trade {trade:?} is not open")))?;
                    let of_pending = matches!(verb, "pending_modify" | "cancel" | "trigger");
                    if of_pending != t.pending {
                        let what = if t.pending {
                            "a pending order (trigger it first)"
                        } else {
                            "not a pending order"
                        };
                        return Err(err(format!("{verb}: trade {trade:?} is {what}")));
                    }
                    let before = t.remaining;
                    let (kind, volume) = match verb {
                        "pending_modify" => {
                            t.price = num(words.get(2), "price")?;
                            if t.price <= 0.0 {
                                return Err(err("a pending order needs a price > 0".into()));
                            }
                            levels(words.get(3..).unwrap_or(&[]), &mut t.sl, &mut t.tp)?;
                            (IntentKind::PendingModify, t.remaining)
                        }
                        "cancel" => (IntentKind::PendingCancel, t.remaining),
                        "trigger" => {
                            if let Some(p) = words.get(2) {
                                t.price = num(Some(p), "price")?;
                            }
                            t.pending = false;
                            (IntentKind::PendingTrigger, t.remaining)
                        }
                        "modify" => {
                            levels(words.get(2..).unwrap_or(&[]), &mut t.sl, &mut t.tp)?;
                            (IntentKind::Modify, t.remaining)
                        }
                        "partial" => {
                            let v = num(words.get(2), "volume")?;
                            if v <= 0.0 || v >= t.remaining {
                                return Err(err(format!(
                                    "partial volume must be in (0, {}) for {trade:?}",
                                    t.remaining
                                )));
                            }
                            if let Some(p) = words.get(3) {
                                t.price = num(Some(p), "price")?;
                            }
                            t.remaining = round_lots(t.remaining - v);
                            (IntentKind::PartialClose, v)
                        }
                        _ => {
                            if let Some(p) = words.get(2) {
                                t.price = num(Some(p), "price")?;
                            }
                            (IntentKind::Close, t.remaining)
                        }
                    };
                    let spec = IntentSpec {
                        trade: trade.clone(),
                        kind,
                        symbol: t.symbol.clone(),
                        side: t.side,
                        volume,
                        price: t.price,
                        stop_loss: t.sl,
                        take_profit: t.tp,
                        master_ticket: t.ticket,
                        volume_before: if kind == IntentKind::PartialClose {
                            before
                        } else {
                            0.0
                        },
                    };
                    if matches!(kind, IntentKind::Close | IntentKind::PendingCancel) {
                        trades.remove(&trade);
                    }
                    spec
                }
                other => return Err(err(format!("unknown step {other:?}"))),
            };
            steps.push(Step::Emit(spec));
        }
        Ok(Plan {
            kind: PlanKind::Script(steps),
            emitted: 0,
            pos: 0,
        })
    }

    /// Total intents this plan emits.
    pub fn total(&self) -> u64 {
        match &self.kind {
            PlanKind::Script(steps) => {
                steps.iter().filter(|s| matches!(s, Step::Emit(_))).count() as u64
            }
            PlanKind::Rate {
                trades,
                modifies,
                partials,
                ..
            } => trades.saturating_mul(2 + u64::from(*modifies) + u64::from(*partials)),
        }
    }

    /// Intents handed out so far (including skipped ones).
    pub fn emitted(&self) -> u64 {
        self.emitted
    }

    /// In rate mode, the pause between two intents.
    pub fn interval(&self) -> Option<Duration> {
        match &self.kind {
            PlanKind::Rate { interval, .. } => Some(*interval),
            PlanKind::Script(_) => None,
        }
    }

    /// Skips the first `n` intents (a restarted master resumes after what it already emitted).
    /// Sleeps before a skipped intent are skipped with it.
    pub fn skip(&mut self, n: u64) {
        while self.emitted < n {
            if self.next_step().is_none() {
                return;
            }
        }
    }

    /// The next step, `None` when the plan is exhausted.
    pub fn next_step(&mut self) -> Option<Step> {
        match &self.kind {
            PlanKind::Script(steps) => {
                let step = steps.get(self.pos)?.clone();
                self.pos += 1;
                if matches!(step, Step::Emit(_)) {
                    self.emitted += 1;
                }
                Some(step)
            }
            PlanKind::Rate { .. } => {
                let spec = self.rate_intent(self.emitted)?;
                self.emitted += 1;
                Some(Step::Emit(spec))
            }
        }
    }

    /// The k-th generated intent: `concurrent` trades run side by side, round robin, each
    /// open → modifies → partial closes → close.
    fn rate_intent(&self, k: u64) -> Option<IntentSpec> {
        let PlanKind::Rate {
            trades,
            modifies,
            partials,
            concurrent,
            symbol,
            ..
        } = &self.kind
        else {
            return None;
        };
        let life = 2 + u64::from(*modifies) + u64::from(*partials);
        if k >= trades.saturating_mul(life) {
            return None;
        }
        let conc = u64::from(*concurrent);
        let group = k / (conc * life);
        let lanes = conc.min(trades - group * conc);
        let p = k - group * conc * life;
        let (step, lane) = (p / lanes, p % lanes);
        let n = group * conc + lane;
        let side = if n.is_multiple_of(2) {
            Side::Buy
        } else {
            Side::Sell
        };
        let sign = if side == Side::Buy { 1.0 } else { -1.0 };
        let price = round_price(1.1 + (n % 100) as f64 * 0.0001);
        let m = u64::from(*modifies);
        let nudge = (step.min(m + 1)) as f64 * 0.0001;
        let sl = round_price(price - sign * (0.0050 - nudge));
        let tp = round_price(price + sign * (0.0100 + nudge));
        let part = round_lots(1.0 / (f64::from(*partials) + 1.0)).max(0.01);
        // Every fourth trade (given a modify to turn into its trigger) is a pending order.
        let pending = n % 4 == 3 && m >= 1;
        let (kind, volume, volume_before) = if step == 0 && pending && n % 8 == 3 {
            (IntentKind::PlaceLimit, 1.0, 0.0)
        } else if step == 0 && pending {
            (IntentKind::PlaceStop, 1.0, 0.0)
        } else if step == 0 {
            (IntentKind::Open, 1.0, 0.0)
        } else if step == 1 && pending {
            (IntentKind::PendingTrigger, 1.0, 0.0)
        } else if step <= m {
            (IntentKind::Modify, 1.0, 0.0)
        } else if step < life - 1 {
            // The j-th partial (from 0) finds 1.0 - j·part lots open.
            let j = step - m - 1;
            (
                IntentKind::PartialClose,
                part,
                round_lots(1.0 - part * j as f64),
            )
        } else {
            (
                IntentKind::Close,
                round_lots(1.0 - part * f64::from(*partials)).max(0.01),
                0.0,
            )
        };
        Some(IntentSpec {
            trade: format!("t{n}"),
            kind,
            symbol: symbol.clone(),
            side,
            volume,
            price,
            stop_loss: sl,
            take_profit: tp,
            master_ticket: 1_000_000 + n as i64,
            volume_before,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emits(plan: &mut Plan) -> Vec<IntentSpec> {
        let mut v = Vec::new();
        while let Some(s) = plan.next_step() {
            if let Step::Emit(i) = s {
                v.push(i);
            }
        }
        v
    }

    #[test]
    fn rate_mode_runs_every_lifecycle_in_order() {
        for (trades, conc, modifies, partials) in [(7, 3, 2, 1), (1, 4, 0, 0), (6, 2, 1, 3)] {
            let mut plan = Plan::rate(100.0, trades, modifies, partials, conc, "EURUSD");
            let all = emits(&mut plan);
            let life = 2 + modifies as usize + partials as usize;
            assert_eq!(all.len(), trades as usize * life);
            assert_eq!(plan.total(), all.len() as u64);
            for t in 0..trades {
                let mine: Vec<&IntentSpec> =
                    all.iter().filter(|i| i.trade == format!("t{t}")).collect();
                assert_eq!(mine.len(), life, "trade {t}");
                assert!(mine[0].kind.starts_trade());
                // A pending order (every fourth trade with a modify) triggers first.
                assert_eq!(
                    mine[0].kind != IntentKind::Open,
                    t % 4 == 3 && modifies >= 1,
                    "trade {t}"
                );
                if mine[0].kind != IntentKind::Open {
                    assert_eq!(mine[1].kind, IntentKind::PendingTrigger);
                }
                assert_eq!(mine[life - 1].kind, IntentKind::Close);
                let closed: f64 = mine[1..]
                    .iter()
                    .filter(|i| !matches!(i.kind, IntentKind::Modify | IntentKind::PendingTrigger))
                    .map(|i| i.volume)
                    .sum();
                assert!(
                    (closed - mine[0].volume).abs() < 1e-9,
                    "trade {t} closes what it opened"
                );
            }
        }
    }

    #[test]
    fn skip_resumes_at_the_same_step() {
        let mut a = Plan::rate(100.0, 5, 1, 1, 2, "X");
        let all = emits(&mut a);
        let mut b = Plan::rate(100.0, 5, 1, 1, 2, "X");
        b.skip(7);
        assert_eq!(emits(&mut b), all[7..].to_vec());
        let text = "open a X buy 1 1.1\nsleep 5\nmodify a sl=1\nclose a\n";
        let mut s = Plan::script(Path::new("s"), text).unwrap();
        s.skip(1);
        assert_eq!(s.next_step(), Some(Step::Sleep(Duration::from_millis(5))));
        assert!(matches!(
            s.next_step(),
            Some(Step::Emit(IntentSpec {
                kind: IntentKind::Modify,
                ..
            }))
        ));
    }

    #[test]
    fn scripts_place_modify_trigger_and_cancel_pending_orders() {
        let text =
            "pending a X buy limit 1 1.09 sl=1.08\npending_modify a 1.085\ntrigger a 1.085\n\
                    modify a tp=1.2\nclose a\npending b X sell stop 2 1.05\ncancel b\n";
        let mut s = Plan::script(Path::new("s"), text).unwrap();
        let kinds: Vec<(IntentKind, f64)> =
            emits(&mut s).iter().map(|i| (i.kind, i.price)).collect();
        assert_eq!(
            kinds,
            vec![
                (IntentKind::PlaceLimit, 1.09),
                (IntentKind::PendingModify, 1.085),
                (IntentKind::PendingTrigger, 1.085),
                (IntentKind::Modify, 1.085),
                (IntentKind::Close, 1.085),
                (IntentKind::PlaceStop, 1.05),
                (IntentKind::PendingCancel, 1.05),
            ]
        );
        for (text, line) in [
            ("pending a X buy limit 1 1.1\nmodify a sl=1\n", 2),
            ("open a X buy 1 1.1\ntrigger a\n", 2),
            ("pending a X buy market 1 1.1\n", 1),
            ("pending a X buy limit 1 1.1\ncancel a\ntrigger a\n", 3),
        ] {
            let e = Plan::script(Path::new("s"), text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
        }
    }

    #[test]
    fn script_errors_name_the_line() {
        for (text, line) in [
            ("open a X buy 1 1.1\nopen a X buy 1 1.1\n", 2),
            ("modify z sl=1\n", 1),
            ("# c\n\nopen a X long 1 1\n", 3),
            ("open a X buy 1 1\npartial a 1\n", 2),
            ("open a X buy 1 1 sl=oops\n", 1),
            ("jump a\n", 1),
            ("sleep\n", 1),
        ] {
            let e = Plan::script(Path::new("s"), text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
        }
    }
}
