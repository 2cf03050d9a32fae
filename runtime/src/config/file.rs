//! The TOML file: Echo's embedded default config source and the input of
//! `echo config check FILE`. Its tables mirror the etcd tree, so every leaf is one etcd key:
//! `[core.router] worker_pool_size = 4` is `/echo/core/router/worker_pool_size = 4`.

use std::path::Path;

use super::error::ConfigError;
use super::keys::{build, FlatConfig, RawValue, PREFIX};
use super::model::EchoConfig;
use super::store::{Change, ConfigStore};

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

/// Everything the config parsers do with untrusted bytes — the body of the `config_parse`
/// fuzz target and of the stable test that replays its corpus: the bytes as a TOML file, as
/// `key=value` lines, and as one etcd transaction applied to a live [`ConfigStore`]. Returns the
/// TOML outcome. Panics only if an invariant breaks (a config accepted that fails its own
/// validation), which is what the fuzzer looks for.
pub fn exercise_untrusted(data: &[u8]) -> Result<EchoConfig, Vec<ConfigError>> {
    let text = String::from_utf8_lossy(data);
    let toml = match std::str::from_utf8(data) {
        Ok(t) => parse_toml(t),
        Err(e) => Err(vec![ConfigError::Syntax {
            message: format!("not UTF-8: {e}"),
        }]),
    };
    if let Ok(cfg) = &toml {
        assert_valid(cfg);
    }
    if let Ok(cfg) = parse_pairs(&text) {
        assert_valid(&cfg);
    }
    let changes: Vec<Change> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| Change::Put {
            key: k.trim().to_string(),
            value: v.trim().to_string(),
        })
        .collect();
    if let Ok(mut store) = ConfigStore::new(FlatConfig::new()) {
        let _ = store.apply(1, changes);
        assert_valid(store.current());
    }
    toml
}

fn assert_valid(cfg: &EchoConfig) {
    assert!(
        cfg.core.delivery.validate().is_ok(),
        "accepted invalid core delivery"
    );
    assert!(
        cfg.agent.delivery.validate().is_ok(),
        "accepted invalid agent delivery"
    );
    let r = cfg.core.router;
    assert!(
        echo_statemachine::config::RouterConfig::new(
            r.worker_pool_size.into(),
            r.queue_depth_max.into(),
            r.worker_timeout_ms.into()
        )
        .is_ok(),
        "accepted invalid router config"
    );
    for s in &cfg.subscriptions {
        assert!(s.validate().is_ok(), "accepted invalid subscription");
    }
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
