//! Identifiers of the trading domain.
//!
//! Every id is an immutable, cheaply cloned string (`Arc<str>`), so machines can keep them in
//! several indexes without copying bytes. `TradeId` is the one with a rule: it is normalised to
//! lower case when built, so `ABC-1` and `abc-1` are one trade everywhere (routing, ordering,
//! ticket correlation). This module must never hash with a per-process random seed: `stable_hash`
//! is the only hash whose value reaches a decision.

use std::fmt;
use std::sync::Arc;

/// The strings' order, settled without a compare when both share one allocation (ids are
/// cloned far more than they are built, so ordered maps mostly compare an id with itself).
macro_rules! shared_str_ord {
    ($name:ident) => {
        impl PartialOrd for $name {
            #[inline]
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }

        impl Ord for $name {
            #[inline]
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                if Arc::ptr_eq(&self.0, &other.0) {
                    std::cmp::Ordering::Equal
                } else {
                    self.0.cmp(&other.0)
                }
            }
        }
    };
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name(Arc<str>);

        shared_str_ord!($name);

        impl std::hash::Hash for $name {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                self.0.hash(state)
            }
        }

        impl PartialEq for $name {
            #[inline]
            fn eq(&self, other: &Self) -> bool {
                // Ids are cloned far more than they are built: one pointer compare settles most.
                Arc::ptr_eq(&self.0, &other.0) || *self.0 == *other.0
            }
        }

        impl Eq for $name {}

        impl $name {
            pub fn new(s: impl AsRef<str>) -> Self {
                $name(Arc::from(s.as_ref()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name::new(s)
            }
        }
    };
}

string_id!(
    /// One intent emitted by a master EA; unique per master and the key of intent dedupe.
    IntentId
);
string_id!(
    /// One per-slave command. Derived deterministically from intent and slave, so a retried
    /// delivery carries the same id and the slave can refuse to execute it twice.
    CommandId
);
string_id!(
    /// A trading account (master or slave) on a broker.
    AccountId
);
string_id!(
    /// One agent process (one trading host).
    AgentId
);
string_id!(
    /// A broker symbol such as `EURUSD` or `EURUSD.m`.
    Symbol
);

/// The master's position identity, normalised to lower case at construction.
#[derive(Clone)]
pub struct TradeId(Arc<str>);

shared_str_ord!(TradeId);

impl std::hash::Hash for TradeId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state)
    }
}

impl PartialEq for TradeId {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || *self.0 == *other.0
    }
}

impl Eq for TradeId {}

impl TradeId {
    /// Builds a trade id, lower-casing it so every spelling of one trade is one key.
    pub fn new(raw: impl AsRef<str>) -> Self {
        let raw = raw.as_ref();
        if crate::mutants::active(crate::mutants::Mutant::HashWithoutNormalising) {
            return TradeId(Arc::from(raw));
        }
        if raw.bytes().any(|b| b.is_ascii_uppercase()) || !raw.is_ascii() {
            TradeId(Arc::from(raw.to_lowercase().as_str()))
        } else {
            TradeId(Arc::from(raw))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The empty trade id marks messages that take the control path.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for TradeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TradeId({:?})", &*self.0)
    }
}

impl fmt::Display for TradeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for TradeId {
    fn from(s: &str) -> Self {
        TradeId::new(s)
    }
}

impl CommandId {
    /// The command id of one (intent, slave) delivery: stable across retries, crashes and
    /// recoveries because it is a pure function of its two parts.
    pub fn for_delivery(intent: &IntentId, slave: &AccountId) -> Self {
        let (i, s) = (intent.as_str(), slave.as_str());
        let len = i.len() + 1 + s.len();
        // Built on the stack when short (the usual case): one allocation, the Arc's own.
        let mut buf = [0u8; 128];
        if len <= buf.len() {
            buf[..i.len()].copy_from_slice(i.as_bytes());
            buf[i.len()] = b'@';
            buf[i.len() + 1..len].copy_from_slice(s.as_bytes());
            if let Ok(joined) = std::str::from_utf8(&buf[..len]) {
                return CommandId(Arc::from(joined));
            }
        }
        CommandId(Arc::from(format!("{i}@{s}").as_str()))
    }
}

/// FNV-1a, 64 bit: portable, seedless and stable across processes, releases and platforms —
/// the properties routing by `trade_id` needs (std's `DefaultHasher` promises none of them).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trade_id_is_case_insensitive() {
        assert_eq!(TradeId::new("ABC-1"), TradeId::new("abc-1"));
        assert_eq!(TradeId::new("ÄBC").as_str(), "äbc");
        assert_eq!(TradeId::new("x").as_str(), "x");
    }

    #[test]
    fn stable_hash_matches_reference_vectors() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(stable_hash(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn command_id_is_deterministic() {
        let a = CommandId::for_delivery(&IntentId::new("i1"), &AccountId::new("s1"));
        let b = CommandId::for_delivery(&IntentId::new("i1"), &AccountId::new("s1"));
        assert_eq!(a, b);
        assert_eq!(a.as_str(), "i1@s1");
    }
}

/// A fast, seedless hasher for the machines' lookup tables (the Fx mix used inside rustc).
///
/// Those tables are never iterated, so the hash never reaches an output; what matters is the
/// cost per lookup on the hot path, which SipHash dominated. Keys come from authenticated
/// agents only, which is why flooding resistance is not bought here.
#[derive(Clone, Copy, Default)]
pub struct FastHasher(u64);

const FX_K: u64 = 0x517c_c1b7_2722_0a95;

impl FastHasher {
    #[inline]
    fn mix(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(FX_K);
    }
}

impl std::hash::Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.mix(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            // Byte by byte (at most 7): a variable-length copy would be a `memcpy` call.
            let mut w = (rest.len() as u64) << 56;
            for (k, &b) in rest.iter().enumerate() {
                w ^= u64::from(b) << (8 * k);
            }
            self.mix(w);
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.mix(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.mix(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.mix(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.mix(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        // The Fx mix leaves the low bits depending on the low input bytes only, and hashbrown
        // picks buckets with the low bits: ids sharing a prefix ("i1…", "t2…") would pile
        // into a few buckets. A folded 128-bit multiply spreads every input bit over all
        // output bits.
        let m = u128::from(self.0) * u128::from(FX_K);
        (m as u64) ^ ((m >> 64) as u64)
    }
}

/// `BuildHasher` for [`FastHasher`].
pub type BuildFast = std::hash::BuildHasherDefault<FastHasher>;
/// A lookup-only hash map (never iterate it where order could reach an output).
pub type FastMap<K, V> = std::collections::HashMap<K, V, BuildFast>;
/// A lookup-only hash set.
pub type FastSet<K> = std::collections::HashSet<K, BuildFast>;
