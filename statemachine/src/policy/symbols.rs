//! Symbol mapping: the slave broker's name for a master's symbol.
//!
//! This module owns the explicit map and the prefix/suffix rule (`EURUSD` → `EURUSD.m`, or
//! `EURUSDpro` → `EURUSD.m` by stripping the master broker's affixes first). It must never
//! guess: a symbol neither the map nor the rule names, a rule whose master affix is absent, or
//! a name the slave reported it does not trade, is `SYMBOL_NOT_MAPPED`.

use std::collections::{BTreeMap, BTreeSet};

use super::reason::SkipReason;
use crate::ids::Symbol;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SymbolMapping {
    /// Master symbol → slave symbol; checked first.
    pub explicit: BTreeMap<Symbol, Symbol>,
    /// Removed from the master's name before the slave's affixes are added; a master symbol
    /// without it is not mapped by the rule.
    pub strip_prefix: String,
    pub strip_suffix: String,
    /// Added around the (stripped) master name.
    pub add_prefix: String,
    pub add_suffix: String,
    /// Only the explicit map: symbols it does not list are `SYMBOL_NOT_MAPPED`. When false and
    /// no affix is configured the rule is the identity (both brokers use the same names).
    pub explicit_only: bool,
}

impl SymbolMapping {
    /// Whether an affix rule is configured.
    pub fn has_rule(&self) -> bool {
        !(self.strip_prefix.is_empty()
            && self.strip_suffix.is_empty()
            && self.add_prefix.is_empty()
            && self.add_suffix.is_empty())
    }

    /// The slave's name for `master`. `slave_symbols`, when the slave EA reported its symbol
    /// list, must contain the result.
    pub fn map(
        &self,
        master: &Symbol,
        slave_symbols: Option<&BTreeSet<Symbol>>,
    ) -> Result<Symbol, SkipReason> {
        let mapped = match self.explicit.get(master) {
            Some(s) => s.clone(),
            None if self.explicit_only => return Err(SkipReason::SymbolNotMapped),
            None => {
                let name = master.as_str();
                let base = name
                    .strip_prefix(self.strip_prefix.as_str())
                    .and_then(|n| n.strip_suffix(self.strip_suffix.as_str()))
                    .ok_or(SkipReason::SymbolNotMapped)?;
                if base.is_empty() {
                    return Err(SkipReason::SymbolNotMapped);
                }
                if self.has_rule() {
                    Symbol::new(format!("{}{}{}", self.add_prefix, base, self.add_suffix))
                } else {
                    master.clone()
                }
            }
        };
        match slave_symbols {
            Some(known) if !known.contains(&mapped) => Err(SkipReason::SymbolNotMapped),
            _ => Ok(mapped),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Symbol {
        Symbol::new(x)
    }

    #[test]
    fn explicit_then_rule_never_guessed() {
        let mut m = SymbolMapping::default();
        assert_eq!(m.map(&s("EURUSD"), None), Ok(s("EURUSD")));
        m.add_suffix = ".m".into();
        assert_eq!(m.map(&s("EURUSD"), None), Ok(s("EURUSD.m")));
        m.strip_suffix = "pro".into();
        assert_eq!(m.map(&s("EURUSDpro"), None), Ok(s("EURUSD.m")));
        assert_eq!(m.map(&s("EURUSD"), None), Err(SkipReason::SymbolNotMapped));
        m.explicit.insert(s("XAUUSDpro"), s("GOLD"));
        assert_eq!(m.map(&s("XAUUSDpro"), None), Ok(s("GOLD")));
        let known: BTreeSet<Symbol> = [s("EURUSD.m")].into_iter().collect();
        assert_eq!(m.map(&s("EURUSDpro"), Some(&known)), Ok(s("EURUSD.m")));
        assert_eq!(
            m.map(&s("XAUUSDpro"), Some(&known)),
            Err(SkipReason::SymbolNotMapped)
        );
        m.explicit_only = true;
        assert_eq!(
            m.map(&s("EURUSDpro"), None),
            Err(SkipReason::SymbolNotMapped)
        );
        assert_eq!(m.map(&s("XAUUSDpro"), None), Ok(s("GOLD")));
    }
}
