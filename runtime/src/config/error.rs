//! Typed config errors. Every variant names the key it is about (etcd form, e.g.
//! `/echo/core/router/worker_pool_size`; the TOML file uses the same path with `.`), so
//! `echo config check` and the etcd watcher can say exactly what was refused and why.

use std::path::PathBuf;

use thiserror::Error;

use super::keys::loggable_value;

/// One problem with one config key (or with the file as a whole).
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The value has the right type but is outside the key's range or format.
    #[error("{key} = {}: expected {expected}", loggable_value(key, value))]
    Invalid {
        key: String,
        value: String,
        expected: String,
    },
    /// The TOML value has the wrong type (e.g. a string where an integer belongs).
    #[error("{key}: expected {expected}, found {found}")]
    WrongType {
        key: String,
        expected: String,
        found: String,
    },
    /// No such key in Echo's config layout (see SPEC.md §5).
    #[error("{key}: unknown key")]
    UnknownKey { key: String },
    /// A key that must be present with another one is missing (e.g. a TLS key without its
    /// certificate, a subscription's symbol map without its multiplier).
    #[error("{key}: missing ({why})")]
    Missing { key: String, why: String },
    /// Two keys that cannot hold together (e.g. one account claimed by two agents).
    #[error("{key}: conflict ({why})")]
    Conflict { key: String, why: String },
    /// The TOML text does not parse.
    #[error("TOML syntax: {message}")]
    Syntax { message: String },
    /// The file could not be read.
    #[error("cannot read {}: {message}", path.display())]
    Io { path: PathBuf, message: String },
}

impl ConfigError {
    /// The key the error is about (`"(file)"` for syntax and IO errors).
    pub fn key(&self) -> &str {
        match self {
            ConfigError::Invalid { key, .. }
            | ConfigError::WrongType { key, .. }
            | ConfigError::UnknownKey { key }
            | ConfigError::Missing { key, .. }
            | ConfigError::Conflict { key, .. } => key,
            ConfigError::Syntax { .. } | ConfigError::Io { .. } => "(file)",
        }
    }
}

impl From<echo_statemachine::config::ConfigError> for ConfigError {
    fn from(e: echo_statemachine::config::ConfigError) -> Self {
        ConfigError::Invalid {
            key: e.key,
            value: e.value,
            expected: e.expected,
        }
    }
}

/// Why a [`super::ConfigSource`] could not be opened.
#[derive(Debug, Error)]
pub enum OpenError {
    /// The base file or the etcd snapshot has errors (every one listed).
    #[error("invalid config: {}", list(.0))]
    Invalid(Vec<ConfigError>),
    /// etcd could not be reached for the first snapshot.
    #[error("etcd: {0}")]
    Etcd(String),
}

fn list(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
