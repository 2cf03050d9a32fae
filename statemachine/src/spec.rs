//! The transition tables SPEC.md is generated from and checked against.
//!
//! Each machine declares its transitions once, with [`transitions!`], as an enum whose every
//! variant carries its stable id, source state, input, target state and outputs. The machine
//! reports the variant it took; SPEC.md's tables are rendered from the same declaration, and
//! `tests/spec_sync.rs` fails when the two differ. This module must never hold behaviour.

/// One row of a transition table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// Stable id, e.g. `core.delivery.T07`. Never reused for a different meaning.
    pub id: &'static str,
    pub from: &'static str,
    pub input: &'static str,
    pub to: &'static str,
    pub outputs: &'static str,
}

/// A machine's specification: what SPEC.md prints for it.
#[derive(Clone, Copy, Debug)]
pub struct MachineSpec {
    /// Prefix of its transition ids, e.g. `core.delivery`.
    pub name: &'static str,
    pub summary: &'static str,
    pub states: &'static [(&'static str, &'static str)],
    pub invariants: &'static [&'static str],
    pub transitions: &'static [Transition],
}

/// Declares a transition enum and its table in one place.
#[macro_export]
macro_rules! transitions {
    (
        $(#[$doc:meta])*
        pub enum $name:ident ($prefix:literal) {
            $( $variant:ident = $num:literal : $from:literal, $input:literal => $to:literal ; $outputs:literal ),+ $(,)?
        }
    ) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name { $( $variant ),+ }

        impl $name {
            /// Every transition, in table order.
            pub const ALL: &'static [$name] = &[ $( $name::$variant ),+ ];
            /// The table rows, in the same order.
            pub const TABLE: &'static [$crate::spec::Transition] = &[
                $( $crate::spec::Transition {
                    id: concat!($prefix, ".", $num),
                    from: $from,
                    input: $input,
                    to: $to,
                    outputs: $outputs,
                } ),+
            ];
            pub fn spec(self) -> &'static $crate::spec::Transition {
                &Self::TABLE[self as usize]
            }
            pub fn id(self) -> &'static str {
                self.spec().id
            }
        }
    };
}

/// Every machine of the crate, in SPEC.md order.
pub fn machines() -> Vec<MachineSpec> {
    vec![
        crate::core::router::SPEC,
        crate::core::intake::SPEC,
        crate::core::journal_health::SPEC,
        crate::core::delivery::SPEC,
        crate::core::registry::SPEC,
        crate::agent::SPEC,
        crate::ea::master::SPEC,
        crate::ea::slave::SPEC,
        crate::marketdata::SPEC,
    ]
}

fn escape(cell: &str) -> String {
    cell.replace('|', "\\|")
}

/// Renders the generated part of SPEC.md: one section per machine.
pub fn render_markdown() -> String {
    let mut out = String::new();
    for m in machines() {
        out.push_str(&format!("### `{}`\n\n{}\n\n", m.name, m.summary));
        out.push_str("States:\n\n");
        for (s, doc) in m.states {
            out.push_str(&format!("- `{s}` — {doc}\n"));
        }
        out.push_str("\nInvariants:\n\n");
        for inv in m.invariants {
            out.push_str(&format!("- {inv}\n"));
        }
        out.push_str("\n| id | from | input | to | outputs |\n|---|---|---|---|---|\n");
        for t in m.transitions {
            out.push_str(&format!(
                "| `{}` | {} | {} | {} | {} |\n",
                t.id,
                escape(t.from),
                escape(t.input),
                escape(t.to),
                escape(t.outputs)
            ));
        }
        out.push('\n');
    }
    out
}

/// Renders the config-key table of SPEC.md.
pub fn render_config_keys() -> String {
    let mut out = String::from("| key | default | range | meaning |\n|---|---|---|---|\n");
    for k in crate::config::ALL_KEYS {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            k.key,
            k.default,
            k.expected(),
            k.doc
        ));
    }
    out
}

/// Renders SPEC.md's copy-policy tables: every per-subscription key and every skip reason.
pub fn render_policy() -> String {
    let mut out = String::from(
        "| key under `/echo/subscriptions/{master}/{slave}/` | default | range | meaning |\n|---|---|---|---|\n",
    );
    for k in crate::policy::subscription::POLICY_KEYS {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            k.name, k.default, k.range, k.doc
        ));
    }
    out.push_str("\n| reason | wire (`echo.v1.ErrorCode`) | when |\n|---|---|---|\n");
    for r in crate::policy::SkipReason::ALL {
        out.push_str(&format!(
            "| `{}` | `{}` | {} |\n",
            r.name(),
            r.error_code().name(),
            r.doc()
        ));
    }
    out
}

/// Every transition id of every machine.
pub fn all_ids() -> Vec<&'static str> {
    machines()
        .iter()
        .flat_map(|m| m.transitions.iter().map(|t| t.id))
        .collect()
}

/// Looks a transition up by id (used by trace checkers).
pub fn find(id: &str) -> Option<&'static Transition> {
    machines()
        .into_iter()
        .flat_map(|m| m.transitions.iter())
        .find(|t| t.id == id)
}

/// What a transition was about: the entity whose state moved.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Subject {
    None,
    Intent(crate::ids::IntentId),
    Command(crate::ids::CommandId),
    Agent(crate::ids::AgentId),
    Account(crate::ids::AccountId),
    Symbol(crate::ids::Symbol),
    Worker(u32),
}

/// One transition a machine took, reported among its outputs so drivers can log it and the
/// simulator can trace it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fired {
    pub transition: &'static Transition,
    pub subject: Subject,
}

impl Fired {
    pub fn id(&self) -> &'static str {
        self.transition.id
    }
}
