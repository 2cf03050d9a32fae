//! Agent tokens: stored only as a SHA-256 hash, compared in constant time.
//!
//! **Why SHA-256 and not argon2**: agent tokens are not passwords. [`generate_token`] makes them
//! from 32 random bytes (256 bits), so there is nothing to brute-force and a deliberately slow
//! hash buys no security — while it would cost tens of milliseconds of CPU per handshake, which
//! turns the reconnect of 1 000 agents after a core restart into a self-inflicted outage. A
//! leaked config (or etcd dump) reveals only hashes, from which no token can be recovered.
//! Hand-chosen short tokens would need argon2; operators must use `generate_token` output.
//!
//! The stored form is `sha256:<64 lowercase hex>`. Neither the token nor its hash is ever
//! printed: [`TokenHash`] and [`SecretToken`] have redacting `Debug`, and config error messages
//! for `token_hash` keys redact the value.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use echo_statemachine::ids::AgentId;

use super::model::{AgentEntry, EchoConfig};

const PREFIX: &str = "sha256:";

/// A stored token hash (32 bytes of SHA-256).
#[derive(Clone, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// Parses the stored form `sha256:<64 hex>` (hex case-insensitive).
    pub fn parse(stored: &str) -> Option<TokenHash> {
        let hex = stored.trim().strip_prefix(PREFIX)?;
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
            let hi = hex_val(chunk[0])?;
            let lo = hex_val(chunk[1])?;
            out[i] = (hi << 4) | lo;
        }
        Some(TokenHash(out))
    }

    /// The hash of `token`.
    pub fn of(token: &str) -> TokenHash {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    /// Whether `presented` hashes to this value, compared in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        let h = TokenHash::of(presented);
        bool::from(self.0.ct_eq(&h.0))
    }

    /// The stored form, `sha256:<hex>` (for writing config, never for logs).
    pub fn to_stored(&self) -> String {
        let mut s = String::with_capacity(PREFIX.len() + 64);
        s.push_str(PREFIX);
        for b in self.0 {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        s
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(sha256:<redacted>)")
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The stored form of `token`'s hash: `sha256:<64 hex>` (what goes into
/// `/echo/agents/{id}/token_hash`).
pub fn hash_token(token: &str) -> String {
    TokenHash::of(token).to_stored()
}

/// Whether `presented` is the token whose hash is `stored`, in constant time. A malformed
/// `stored` never matches.
pub fn verify_token(stored: &str, presented: &str) -> bool {
    match TokenHash::parse(stored) {
        Some(h) => h.matches(presented),
        None => {
            // Same work as a real check, so a malformed entry is not a timing oracle.
            let _ = TokenHash::of(presented);
            false
        }
    }
}

/// A new random token: 32 bytes from the OS, as 64 hex characters.
pub fn generate_token() -> Result<SecretToken, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(SecretToken(
        TokenHash(bytes).to_stored()[PREFIX.len()..].to_string(),
    ))
}

/// A plain token held in memory (an agent's own, or one presented to the core). `Debug` shows
/// nothing of it; [`SecretToken::expose`] is the only way to the text.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretToken(String);

impl SecretToken {
    pub fn new(token: impl Into<String>) -> Self {
        SecretToken(token.into())
    }

    /// The token text, for sending it or checking it — never for logging.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretToken(<redacted>)")
    }
}

/// Why an agent was refused. Carries the agent id only, never the token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("unknown agent {0}")]
    UnknownAgent(AgentId),
    #[error("wrong token for agent {0}")]
    WrongToken(AgentId),
    #[error("no agent has this token")]
    NoSuchToken,
}

impl EchoConfig {
    /// Checks `presented` against the hash stored for `agent`, in constant time. Unknown agents
    /// cost the same hash as known ones.
    pub fn authenticate(&self, agent: &AgentId, presented: &str) -> Result<&AgentEntry, AuthError> {
        match self.agents.get(agent) {
            Some(entry) if entry.token_hash.matches(presented) => Ok(entry),
            Some(_) => Err(AuthError::WrongToken(agent.clone())),
            None => {
                let _ = TokenHash::of(presented);
                Err(AuthError::UnknownAgent(agent.clone()))
            }
        }
    }

    /// The agent whose token is `presented` (when the peer does not name itself). Every entry
    /// is compared, in constant time each, whatever matches first.
    pub fn agent_for_token(&self, presented: &str) -> Result<&AgentEntry, AuthError> {
        let h = TokenHash::of(presented);
        let mut found = None;
        for entry in self.agents.values() {
            if bool::from(entry.token_hash.0.ct_eq(&h.0)) && found.is_none() {
                found = Some(entry);
            }
        }
        found.ok_or(AuthError::NoSuchToken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let stored = hash_token("s3cret-token");
        assert!(stored.starts_with("sha256:") && stored.len() == 7 + 64);
        assert!(verify_token(&stored, "s3cret-token"));
        assert!(!verify_token(&stored, "s3cret-tokeN"));
        assert!(!verify_token(&stored, ""));
        assert!(!verify_token("sha256:zz", "s3cret-token"));
        assert!(!verify_token("plain", "plain"));
        assert!(verify_token(
            &stored.to_uppercase().replace("SHA256:", "sha256:"),
            "s3cret-token"
        ));
        let h = TokenHash::parse(&stored).expect("parses");
        assert_eq!(h.to_stored(), stored);
        assert!(!format!("{h:?}").contains(&stored[7..]));
    }

    #[test]
    fn generated_tokens_are_distinct_and_redacted() {
        let a = generate_token().expect("os rng");
        let b = generate_token().expect("os rng");
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 64);
        assert!(!format!("{a:?}").contains(a.expose()));
        assert!(verify_token(&hash_token(a.expose()), a.expose()));
    }
}
