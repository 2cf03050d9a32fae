//! The trace: NDJSON lines for steps and faults (see SPEC.md, "Traces"), and the short text
//! of every input and output a step line carries.
//!
//! This module owns the trace's format. It must never change what happens in the world: it
//! only writes text, and only when tracing is on (the set of fired transitions is kept
//! always, for `echo-sim coverage`).

use std::fmt::Write as _;

use echo_statemachine::agent::AgentOutput;
use echo_statemachine::core::{CoreOutput, JournalWrite};
use echo_statemachine::msg::*;
use echo_statemachine::spec::Fired;

use super::World;

impl World {
    pub(super) fn fault(&mut self, kind: &'static str, detail: String) {
        *self.book.faults.entry(kind).or_insert(0) += 1;
        if let Some(t) = &mut self.trace {
            let _ = writeln!(
                t,
                "{{\"type\":\"fault\",\"t_us\":{},\"fault\":\"{}\",\"detail\":{}}}",
                self.now.0 / 1_000,
                kind,
                json_str(&detail)
            );
        }
    }

    pub(super) fn trace_step(&mut self, node: &str, input: &str, f: &Fired, outputs: &[String]) {
        self.fired.insert(f.transition.id);
        if let Some(t) = &mut self.trace {
            let tr = f.transition;
            let _ = writeln!(
                t,
                "{{\"type\":\"step\",\"t_us\":{},\"node\":{},\"input\":{},\"transition\":\"{}\",\"from\":{},\"to\":{},\"subject\":{},\"outputs\":[{}]}}",
                self.now.0 / 1_000,
                json_str(node),
                json_str(input),
                tr.id,
                json_str(tr.from),
                json_str(tr.to),
                json_str(&subject(f)),
                outputs.iter().map(|o| json_str(o)).collect::<Vec<_>>().join(",")
            );
        }
    }
}

fn subject(f: &Fired) -> String {
    use echo_statemachine::spec::Subject;
    match &f.subject {
        Subject::None => String::new(),
        Subject::Intent(i) => i.to_string(),
        Subject::Command(c) => c.to_string(),
        Subject::Agent(a) => a.to_string(),
        Subject::Account(a) => a.to_string(),
        Subject::Symbol(s) => s.to_string(),
        Subject::Worker(w) => format!("worker-{w}"),
    }
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

pub(super) fn describe_to_core(m: &AgentToCore) -> String {
    match m {
        AgentToCore::Hello(h) => format!("AgentHello {}", h.agent_id),
        AgentToCore::Intent(i) => format!(
            "TradeIntent {} trade {} {:?}",
            i.intent_id, i.trade_id, i.kind
        ),
        AgentToCore::CommandAck(a) => format!(
            "CommandAck {} {} {:?}",
            a.command_id,
            a.stage.name(),
            a.result
        ),
        AgentToCore::ExecutionResult(r) => format!(
            "ExecutionResult {} {:?} ticket {}",
            r.command_id, r.status, r.slave_ticket
        ),
        AgentToCore::Heartbeat => "Heartbeat".into(),
    }
}

pub(super) fn describe_from_core(m: &CoreToAgent) -> String {
    match m {
        CoreToAgent::Hello(h) => format!("CoreHello accepted={}", h.accepted),
        CoreToAgent::IntentAck(a) => format!(
            "TradeIntentAck {} {:?} {:?}",
            a.intent_id, a.result, a.error
        ),
        CoreToAgent::Command(c) => format!("Command {} trade {}", c.command_id, c.trade_id),
        CoreToAgent::Heartbeat(h) => format!("DeliveryHeartbeat v{}", h.config_version),
        CoreToAgent::DeliveryReport(a) => format!("DeliveryReport {} {:?}", a.command_id, a.result),
        CoreToAgent::Cancel(c) => format!("Cancel {} trade {}", c.command_id, c.trade_id),
    }
}

pub(super) fn describe_from_ea(m: &EaToAgent) -> String {
    match m {
        EaToAgent::Intent(i) => format!(
            "TradeIntent {} trade {} {:?}",
            i.intent_id, i.trade_id, i.kind
        ),
        EaToAgent::PipeAck(p) => format!("PipeDeliveryAck {} {:?}", p.command_id, p.status),
        EaToAgent::Execution(r) => format!("ExecutionResult {} {:?}", r.command_id, r.status),
    }
}

pub(super) fn describe_core_output(o: &CoreOutput) -> String {
    match o {
        CoreOutput::Send { agent, msg } => format!("→ {agent}: {}", describe_from_core(msg)),
        CoreOutput::Journal { op, write } => {
            format!("journal op {}: {}", op.0, describe_write(write))
        }
        CoreOutput::Log(l) => format!("log {l:?}"),
        CoreOutput::Fired(f) => f.id().to_string(),
    }
}

fn describe_write(w: &JournalWrite) -> String {
    match w {
        JournalWrite::AcceptIntent { intent, deliveries } => {
            format!(
                "AcceptIntent {} ({} deliveries)",
                intent.intent_id,
                deliveries.len()
            )
        }
        JournalWrite::FinishDelivery {
            command_id,
            status,
            reason,
            ..
        } => {
            format!("FinishDelivery {command_id} {status:?} {reason:?}")
        }
        JournalWrite::UpdateStage {
            command_id, stage, ..
        } => format!("UpdateStage {command_id} {}", stage.name()),
        JournalWrite::RecordRetry {
            command_id,
            attempt,
            ..
        } => format!("RecordRetry {command_id} #{attempt}"),
        JournalWrite::RecordRejection {
            intent_id, worker, ..
        } => format!("RecordRejection {intent_id} worker {worker}"),
        JournalWrite::Probe => "Probe".into(),
    }
}

pub(super) fn describe_agent_output(o: &AgentOutput) -> String {
    match o {
        AgentOutput::ToCore(m) => format!("→ core: {}", describe_to_core(m)),
        AgentOutput::ToEa { account, msg } => format!(
            "→ pipe {account}: {}",
            format!("{msg:?}").chars().take(120).collect::<String>()
        ),
        AgentOutput::PersistLedger { op, record } => format!(
            "ledger op {}: {} {:?}",
            op.0, record.command.command_id, record.state
        ),
        AgentOutput::DeleteLedger { command_id } => format!("ledger delete {command_id}"),
        AgentOutput::Fired(f) => f.id().to_string(),
    }
}
