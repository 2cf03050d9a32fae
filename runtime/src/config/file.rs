//! The TOML file: Echo's embedded default config source and the input of
//! `echo config check FILE`. Its tables mirror the etcd tree, so every leaf is one etcd key:
//! `[core.router] worker_pool_size = 4` is `/echo/core/router/worker_pool_size = 4`.

use std::path::Path;

use super::error::ConfigError;
use super::keys::{build, FlatConfig, RawValue, PREFIX};
use super::model::EchoConfig;

/// The documented example (`runtime/config/echo.example.toml`); it validates.
pub const EXAMPLE_TOML: &str = include_str!("../../config/echo.example.toml");

/// Flattens TOML text into etcd-form keys. Arrays and dates are type errors (the layout has
/// none); a table key containing `/` is an unknown key.
pub fn flatten_toml(text: &str) -> Result<FlatConfig, Vec<ConfigError>> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        vec![ConfigError::Syntax {
            message: e.to_string().trim().replace('\n', " "),
        }]
    })?;
    let mut flat = FlatConfig::new();
    let mut errors = Vec::new();
    walk(&table, PREFIX.trim_end_matches('/'), &mut flat, &mut errors);
    if errors.is_empty() {
        Ok(flat)
    } else {
        Err(errors)
    }
}

fn walk(table: &toml::Table, base: &str, flat: &mut FlatConfig, errors: &mut Vec<ConfigError>) {
    for (name, value) in table {
        let key = format!("{base}/{name}");
        if name.contains('/') || name.is_empty() {
            errors.push(ConfigError::UnknownKey { key });
            continue;
        }
        let raw = match value {
            toml::Value::Table(t) => {
                walk(t, &key, flat, errors);
                continue;
            }
            toml::Value::String(s) => RawValue::Str(s.clone()),
            toml::Value::Integer(i) => RawValue::Int(*i),
            toml::Value::Float(f) => RawValue::Float(*f),
            toml::Value::Boolean(b) => RawValue::Bool(*b),
            toml::Value::Array(_) => {
                errors.push(ConfigError::WrongType {
                    key,
                    expected: "a single value or a table".into(),
                    found: "an array".into(),
                });
                continue;
            }
            toml::Value::Datetime(_) => {
                errors.push(ConfigError::WrongType {
                    key,
                    expected: "a single value or a table".into(),
                    found: "a date".into(),
                });
                continue;
            }
        };
        flat.insert(key, raw);
    }
}

/// Parses and validates TOML text, listing every problem with its key.
pub fn parse_toml(text: &str) -> Result<EchoConfig, Vec<ConfigError>> {
    let flat = flatten_toml(text)?;
    build(&flat)
}

/// Reads and validates a config file (`echo config check FILE`).
pub fn check_file(path: impl AsRef<Path>) -> Result<EchoConfig, Vec<ConfigError>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        }]
    })?;
    parse_toml(&text)
}

/// Parses `key=value` lines in etcd form (as `etcdctl get --prefix /echo/ -w simple` would be
/// turned into by a script; also the fuzz target's second input shape). Blank lines and lines
/// starting with `#` are skipped; a line without `=` is an error naming it.
pub fn parse_pairs(text: &str) -> Result<EchoConfig, Vec<ConfigError>> {
    let mut flat = FlatConfig::new();
    let mut errors = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some((k, v)) => {
                flat.insert(k.trim().to_string(), RawValue::Text(v.trim().to_string()));
            }
            None => errors.push(ConfigError::UnknownKey { key: line.into() }),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    build(&flat)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_validates() {
        let c = parse_toml(EXAMPLE_TOML).expect("example is valid");
        assert!(!c.subscriptions.is_empty());
        assert!(!c.agents.is_empty());
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(parse_toml("").expect("empty"), EchoConfig::default());
    }

    #[test]
    fn every_problem_is_listed() {
        let e = parse_toml(
            "[core.router]\nworker_pool_size = 6\nworkers = 4\n[core.delivery]\nmax_retries = \"5\"\n",
        )
        .expect_err("three problems");
        let keys: Vec<&str> = e.iter().map(|e| e.key()).collect();
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(keys.contains(&"/echo/core/router/worker_pool_size"));
        assert!(keys.contains(&"/echo/core/router/workers"));
        assert!(keys.contains(&"/echo/core/delivery/max_retries"));
    }
}
