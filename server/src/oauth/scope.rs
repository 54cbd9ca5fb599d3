//! Scopes: the permissions a grant carries. Parsed once at the edge; unknown scopes
//! are dropped, never fatal (Claude.ai has sent `scope: "claudeai"` at registration).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The scopes this server defines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    ReadArticles,
    WriteArticles,
}

impl Scope {
    pub const ALL: [Scope; 2] = [Scope::ReadArticles, Scope::WriteArticles];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ReadArticles => "read:articles",
            Scope::WriteArticles => "write:articles",
        }
    }

    /// What the scope allows, in plain words for the consent page.
    pub fn description(self) -> &'static str {
        match self {
            Scope::ReadArticles => "Read your articles, drafts included",
            Scope::WriteArticles => "Create, edit, publish and delete your articles",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s)
    }

    fn bit(self) -> u8 {
        match self {
            Scope::ReadArticles => 1,
            Scope::WriteArticles => 2,
        }
    }
}

/// A set of known scopes. Serialised as the space-separated OAuth string.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ScopeSet(u8);

/// The result of parsing a `scope` parameter: what we know, and what we dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParsedScopes {
    pub known: ScopeSet,
    pub unknown: Vec<String>,
}

impl ScopeSet {
    pub fn all() -> Self {
        Scope::ALL.into_iter().collect()
    }

    pub fn only(scope: Scope) -> Self {
        ScopeSet(scope.bit())
    }

    /// Parses a space-separated `scope` parameter (RFC 6749 §3.3).
    pub fn parse(raw: &str) -> ParsedScopes {
        let mut parsed = ParsedScopes::default();
        for token in raw.split(' ').filter(|t| !t.is_empty()) {
            match Scope::parse(token) {
                Some(scope) => parsed.known.insert(scope),
                None if !parsed.unknown.iter().any(|u| u == token) => {
                    parsed.unknown.push(token.to_owned())
                }
                None => {}
            }
        }
        parsed
    }

    pub fn insert(&mut self, scope: Scope) {
        self.0 |= scope.bit();
    }

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn is_subset_of(self, other: ScopeSet) -> bool {
        self.0 & !other.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }
}

impl FromIterator<Scope> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        let mut set = ScopeSet::default();
        for scope in iter {
            set.insert(scope);
        }
        set
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for scope in self.iter() {
            if !first {
                f.write_str(" ")?;
            }
            f.write_str(scope.as_str())?;
            first = false;
        }
        Ok(())
    }
}

impl fmt::Debug for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ScopeSet({self})")
    }
}

impl Serialize for ScopeSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ScopeSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Ok(ScopeSet::parse(&raw).known)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_scopes_and_keeps_unknown_ones_aside() {
        let parsed = ScopeSet::parse("read:articles  claudeai read:articles <script>");
        assert_eq!(parsed.known, ScopeSet::only(Scope::ReadArticles));
        assert_eq!(parsed.unknown, ["claudeai", "<script>"]);
        assert_eq!(
            ScopeSet::parse("write:articles read:articles")
                .known
                .to_string(),
            "read:articles write:articles"
        );
    }

    #[test]
    fn subsets() {
        let read = ScopeSet::only(Scope::ReadArticles);
        assert!(read.is_subset_of(ScopeSet::all()));
        assert!(!ScopeSet::all().is_subset_of(read));
        assert!(ScopeSet::default().is_subset_of(read));
    }
}
