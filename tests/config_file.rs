//! The TOML config file: the shipped example validates, and every kind of bad value is an
//! error that names its key (what `echo config check FILE` prints).

use std::path::PathBuf;

use echo_runtime::config::{
    check_file, hash_token, parse_toml, verify_token, AuthError, ConfigError, ConfigSource,
    EchoConfig, OpenError, Role,
};
use echo_statemachine::ids::{AccountId, AgentId, Symbol};

fn example_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../runtime/config/echo.example.toml")
}

/// The errors of `text`, which must be invalid.
fn errors(text: &str) -> Vec<ConfigError> {
    match parse_toml(text) {
        Ok(c) => panic!("expected errors, got a config: {c:?}"),
        Err(e) => e,
    }
}

fn only_key(text: &str) -> (String, ConfigError) {
    let e = errors(text);
    assert_eq!(e.len(), 1, "{e:?}");
    (e[0].key().to_string(), e[0].clone())
}

#[test]
fn shipped_example_file_validates_and_says_what_it_means() {
    let cfg = check_file(example_path()).expect("example is valid");
    assert_eq!(cfg.core.router.worker_pool_size, 4);
    assert_eq!(cfg.core.delivery.ack_timeout_ms, 2000);
    assert_eq!(cfg.agent.delivery.max_retries, 10);
    assert!(!cfg.core.tls.enabled(), "empty cert/key = plain text");
    assert_eq!(cfg.subscriptions.len(), 2);
    let s2 = cfg
        .subscriptions
        .iter()
        .find(|s| s.slave == AccountId::new("slave-2"))
        .expect("slave-2 subscription");
    assert_eq!(s2.multiplier, 0.5);
    assert_eq!(
        s2.map_symbol(&Symbol::new("XAUUSD")),
        Ok(Symbol::new("GOLD"))
    );
    assert_eq!(
        s2.map_symbol(&Symbol::new("GBPUSD")),
        Err(echo_statemachine::policy::SkipReason::SymbolNotMapped),
        "only these"
    );
    assert_eq!(cfg.agents.len(), 2);
}

#[test]
fn example_agents_authenticate_and_are_limited_to_their_accounts() {
    let cfg = check_file(example_path()).expect("example is valid");
    let a1 = AgentId::new("agent-1");
    let entry = cfg
        .authenticate(&a1, "demo-agent-1-token-change-me")
        .expect("right token");
    assert!(entry.may_speak_for(&AccountId::new("master-1"), Role::Master));
    assert!(!entry.may_speak_for(&AccountId::new("master-1"), Role::Slave));
    assert!(!entry.may_speak_for(&AccountId::new("slave-1"), Role::Slave));
    assert_eq!(
        cfg.authenticate(&a1, "demo-agent-2-token-change-me"),
        Err(AuthError::WrongToken(a1.clone())),
        "another agent's token"
    );
    assert!(matches!(
        cfg.authenticate(&AgentId::new("ghost"), "x"),
        Err(AuthError::UnknownAgent(_))
    ));
    let by_token = cfg
        .agent_for_token("demo-agent-2-token-change-me")
        .expect("token lookup");
    assert_eq!(by_token.id, AgentId::new("agent-2"));
    assert_eq!(
        cfg.agent_of_account(&AccountId::new("slave-2"))
            .map(|a| a.id.clone()),
        Some(AgentId::new("agent-2"))
    );
    // Secrets stay out of Debug output.
    let dbg = format!("{cfg:?}");
    let stored = hash_token("demo-agent-1-token-change-me");
    assert!(!dbg.contains(&stored[7..]), "token hash leaked in Debug");
    assert!(verify_token(&stored, "demo-agent-1-token-change-me"));
}

#[test]
fn out_of_range_names_key_value_and_range_and_never_clamps() {
    let (key, e) = only_key("[core.router]\nworker_pool_size = 6\n");
    assert_eq!(key, "/echo/core/router/worker_pool_size");
    assert!(e.to_string().contains("power of two in 2..=32"), "{e}");
    let (key, e) = only_key("[core.delivery]\nheartbeat_interval_ms = 999\n");
    assert_eq!(key, "/echo/core/delivery/heartbeat_interval_ms");
    assert!(
        e.to_string().contains("999") && e.to_string().contains("1000..=5000"),
        "{e}"
    );
    let (key, _) = only_key("[agent.delivery]\nmax_retries = -1\n");
    assert_eq!(key, "/echo/agent/delivery/max_retries");
    let (key, _) = only_key("[core]\nlisten_addr = \"localhost\"\n");
    assert_eq!(key, "/echo/core/listen_addr");
    let (key, _) = only_key("[core]\njournal = \"mysql://x\"\n");
    assert_eq!(key, "/echo/core/journal");
    let (key, _) = only_key("[agent]\ncore_addr = \"127.0.0.1:7700\"\n");
    assert_eq!(key, "/echo/agent/core_addr");
}

#[test]
fn wrong_type_names_key() {
    let (key, e) = only_key("[core.delivery]\nmax_retries = \"5\"\n");
    assert_eq!(key, "/echo/core/delivery/max_retries");
    assert!(matches!(e, ConfigError::WrongType { .. }), "{e:?}");
    let (key, _) = only_key("[core.tls]\nrequire_client_cert = \"yes\"\n");
    assert_eq!(key, "/echo/core/tls/require_client_cert");
    let (key, _) = only_key("[core.router]\nworker_pool_size = 4.0\n");
    assert_eq!(key, "/echo/core/router/worker_pool_size");
    let (key, _) = only_key("core = 3\n");
    assert_eq!(key, "/echo/core");
    let (key, _) = only_key("[core]\nlisten_addr = [\"127.0.0.1:1\"]\n");
    assert_eq!(key, "/echo/core/listen_addr");
}

#[test]
fn unknown_keys_are_errors() {
    let (key, e) = only_key("[core.router]\nworkers = 4\n");
    assert_eq!(key, "/echo/core/router/workers");
    assert!(matches!(e, ConfigError::UnknownKey { .. }));
    assert_eq!(only_key("colour = \"blue\"\n").0, "/echo/colour");
    let h = hash_token("t");
    let (key, _) = only_key(&format!(
        "[agents.a1]\ntoken_hash = \"{h}\"\nrole = \"master\"\n"
    ));
    assert_eq!(key, "/echo/agents/a1/role");
}

#[test]
fn bad_subscriptions_name_their_key() {
    let (key, _) = only_key("[subscriptions.m1.s1]\nmultiplier = 0.0\n");
    assert_eq!(key, "/echo/subscriptions/m1/s1/multiplier");
    let (key, _) = only_key("[subscriptions.m1.s1]\nmultiplier = 1001\n");
    assert_eq!(key, "/echo/subscriptions/m1/s1/multiplier");
    let (key, _) = only_key("[subscriptions.m1.s1]\nmultiplier = nan\n");
    assert_eq!(key, "/echo/subscriptions/m1/s1/multiplier");
    let (key, _) = only_key("[subscriptions.m1.m1]\nmultiplier = 1.0\n");
    assert_eq!(key, "/echo/subscriptions/m1/m1");
    let (key, e) = only_key("[subscriptions.m1.s1]\nsymbol_map = { EURUSD = \"EURUSD.m\" }\n");
    assert_eq!(key, "/echo/subscriptions/m1/s1/multiplier");
    assert!(matches!(e, ConfigError::Missing { .. }));
    let (key, _) =
        only_key("[subscriptions.m1.s1]\nmultiplier = 1.0\nsymbol_map = { EURUSD = \"\" }\n");
    assert_eq!(key, "/echo/subscriptions/m1/s1/symbol_map/EURUSD");
    let (key, _) = only_key("[subscriptions.\"m 1\".s1]\nmultiplier = 1.0\n");
    assert_eq!(key, "/echo/subscriptions/m 1/s1/multiplier");
    let (key, _) = only_key("[subscriptions.m1.s1]\nmultiplier = 1.0\nratio = 2\n");
    assert_eq!(key, "/echo/subscriptions/m1/s1/ratio");
}

#[test]
fn bad_agents_name_their_key() {
    let h = hash_token("t");
    let (key, _) = only_key("[agents.a1]\naccounts = { m1 = \"master\" }\n");
    assert_eq!(key, "/echo/agents/a1/token_hash");
    let (key, e) = only_key("[agents.a1]\ntoken_hash = \"sha256:abc\"\n");
    assert_eq!(key, "/echo/agents/a1/token_hash");
    assert!(!e.to_string().contains("abc"), "hash shown: {e}");
    let (key, _) = only_key(&format!(
        "[agents.a1]\ntoken_hash = \"{h}\"\naccounts = {{ m1 = \"owner\" }}\n"
    ));
    assert_eq!(key, "/echo/agents/a1/accounts/m1");
    let (key, e) = only_key(&format!(
        "[agents.a1]\ntoken_hash = \"{h}\"\naccounts = {{ m1 = \"master\" }}\n\
         [agents.a2]\ntoken_hash = \"{h}\"\naccounts = {{ m1 = \"slave\" }}\n"
    ));
    assert_eq!(key, "/echo/agents/a2/accounts/m1");
    assert!(matches!(e, ConfigError::Conflict { .. }));
}

#[test]
fn tls_pairs_are_checked() {
    let (key, _) = only_key("[core.tls]\ncert = \"c.pem\"\n");
    assert_eq!(key, "/echo/core/tls/key");
    let (key, _) =
        only_key("[core.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nrequire_client_cert = true\n");
    assert_eq!(key, "/echo/core/tls/client_ca");
    let cfg = parse_toml(
        "[core.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nclient_ca = \"ca.pem\"\nrequire_client_cert = true\n",
    )
    .expect("mutual TLS config");
    assert!(cfg.core.tls.enabled() && cfg.core.tls.require_client_cert);
    let (key, _) = only_key("[agent.tls]\nkey = \"k.pem\"\n");
    assert_eq!(key, "/echo/agent/tls/cert");
}

#[test]
fn every_problem_is_listed_at_once() {
    let e = errors(
        "[core.router]\nworker_pool_size = 3\nqueue_depth_max = 500\n\
         [core.delivery]\nmax_retries = \"x\"\nbogus = 1\n\
         [subscriptions.m.s]\nmultiplier = -1.0\n",
    );
    let mut keys: Vec<&str> = e.iter().map(ConfigError::key).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "/echo/core/delivery/bogus",
            "/echo/core/delivery/max_retries",
            "/echo/core/router/queue_depth_max",
            "/echo/core/router/worker_pool_size",
            "/echo/subscriptions/m/s/multiplier",
        ]
    );
}

#[test]
fn syntax_and_io_errors_are_typed() {
    let e = errors("[core\nlisten_addr = 1");
    assert!(matches!(e[..], [ConfigError::Syntax { .. }]), "{e:?}");
    let e = check_file("/nonexistent/echo.toml").expect_err("missing file");
    assert!(matches!(e[..], [ConfigError::Io { .. }]), "{e:?}");
}

#[test]
fn postgres_password_never_shown() {
    let cfg = parse_toml("[core]\njournal = \"postgres://echo:hunter2@127.0.0.1:5432/echo\"\n")
        .expect("postgres journal");
    assert_eq!(
        cfg.core.journal.postgres_url(),
        Some("postgres://echo:hunter2@127.0.0.1:5432/echo")
    );
    assert!(!format!("{cfg:?}").contains("hunter2"));
    assert!(!cfg.core.journal.to_string().contains("hunter2"));
}

#[tokio::test]
async fn file_source_serves_the_file() {
    let handle = ConfigSource::File(example_path())
        .open()
        .await
        .expect("opens");
    assert_eq!(handle.current().agents.len(), 2);
    assert_eq!(handle.snapshot().version, 1);
    let bad = ConfigSource::Toml("[core.router]\nworker_pool_size = 5\n".into())
        .open()
        .await
        .expect_err("invalid");
    assert!(
        matches!(bad, OpenError::Invalid(ref e) if e[0].key() == "/echo/core/router/worker_pool_size")
    );
    let d = ConfigSource::Defaults.open().await.expect("defaults");
    assert_eq!(*d.current(), EchoConfig::default());
}
