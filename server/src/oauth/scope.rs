//! Scopes: the permissions a grant carries (RFC 6749 §3.3). Every protected resource
//! defines its own (`read:articles`, `github:read`, …), so a scope is a validated
//! token rather than a fixed enum, and which tokens a request may have is decided by
//! the resource it names ([`crate::resource::Resource`]).
//!
//! Parsing is linear and bounded: at most [`MAX_SCOPES`] tokens of at most
//! [`MAX_SCOPE_CHARS`] characters, so a 64 KiB `scope` parameter is refused at once
//! instead of costing CPU.

use std::{fmt, sync::Arc};

use serde::{Deserialize, Serialize};

/// Most scope tokens one `scope` parameter may carry.
pub const MAX_SCOPES: usize = 32;
/// Longest scope token.
pub const MAX_SCOPE_CHARS: usize = 64;

/// One scope token: `%x21 / %x23-5B / %x5D-7E` (RFC 6749 §3.3), 1 to
/// [`MAX_SCOPE_CHARS`] characters. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(Arc<str>);

impl Scope {
    pub fn parse(raw: &str) -> Result<Self, ScopeError> {
        let valid_char =
            |b: u8| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b);
        if raw.is_empty() || raw.len() > MAX_SCOPE_CHARS {
            return Err(ScopeError::TooLong);
        }
        if !raw.bytes().all(valid_char) {
            return Err(ScopeError::BadCharacter);
        }
        Ok(Scope(Arc::from(raw)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scope({})", self.0)
    }
}

impl Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = std::borrow::Cow::<str>::deserialize(d)?;
        Scope::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// Why a `scope` parameter was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("at most {MAX_SCOPES} scopes may be requested")]
    TooMany,
    #[error("a scope has at most {MAX_SCOPE_CHARS} characters")]
    TooLong,
    #[error("a scope contains a character RFC 6749 §3.3 does not allow")]
    BadCharacter,
}

/// A set of scopes, kept sorted and without duplicates. Serialised as the
/// space-separated OAuth string. Small: a handful of scopes at most.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct ScopeSet(Vec<Scope>);

impl ScopeSet {
    pub fn only(scope: Scope) -> Self {
        ScopeSet(vec![scope])
    }

    /// Parses a space-separated `scope` parameter. Empty tokens (double spaces) are
    /// skipped; more than [`MAX_SCOPES`] tokens, or a malformed one, is an error.
    pub fn parse(raw: &str) -> Result<Self, ScopeError> {
        let mut scopes = Vec::new();
        for token in raw.split(' ').filter(|t| !t.is_empty()) {
            // Count before parsing, so a huge parameter stops after MAX_SCOPES + 1.
            if scopes.len() == MAX_SCOPES {
                return Err(ScopeError::TooMany);
            }
            scopes.push(Scope::parse(token)?);
        }
        Ok(scopes.into_iter().collect())
    }

    pub fn insert(&mut self, scope: Scope) {
        if let Err(at) = self.0.binary_search(&scope) {
            self.0.insert(at, scope);
        }
    }

    pub fn contains(&self, scope: &Scope) -> bool {
        self.0.binary_search(scope).is_ok()
    }

    pub fn contains_str(&self, scope: &str) -> bool {
        self.0.iter().any(|s| s.as_str() == scope)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_subset_of(&self, other: &ScopeSet) -> bool {
        self.0.iter().all(|s| other.contains(s))
    }

    /// The scopes of `self` that are also in `other`.
    pub fn intersection(&self, other: &ScopeSet) -> ScopeSet {
        ScopeSet(
            self.0
                .iter()
                .filter(|s| other.contains(s))
                .cloned()
                .collect(),
        )
    }

    /// Every scope of either set.
    pub fn union(&self, other: &ScopeSet) -> ScopeSet {
        self.0.iter().chain(other.0.iter()).cloned().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter()
    }
}

impl FromIterator<Scope> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        let mut scopes: Vec<Scope> = iter.into_iter().collect();
        scopes.sort_unstable();
        scopes.dedup();
        ScopeSet(scopes)
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, scope) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(scope.as_str())?;
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
        let raw = std::borrow::Cow::<str>::deserialize(d)?;
        ScopeSet::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(raw: &str) -> ScopeSet {
        ScopeSet::parse(raw).expect(raw)
    }

    #[test]
    fn parses_sorted_and_without_duplicates() {
        let parsed = set("write:articles  read:articles read:articles claudeai");
        assert_eq!(parsed.to_string(), "claudeai read:articles write:articles");
        assert_eq!(parsed.len(), 3);
        assert!(set("").is_empty());
    }

    #[test]
    fn refuses_too_many_too_long_or_malformed_tokens() {
        let many = vec!["a"; MAX_SCOPES + 1].join(" ");
        // Duplicates count: the bound is on the work, not on the result.
        assert_eq!(ScopeSet::parse(&many), Err(ScopeError::TooMany));
        assert!(ScopeSet::parse(&vec!["a"; MAX_SCOPES].join(" ")).is_ok());
        let long = "x".repeat(MAX_SCOPE_CHARS + 1);
        assert_eq!(ScopeSet::parse(&long), Err(ScopeError::TooLong));
        assert_eq!(ScopeSet::parse("a\"b"), Err(ScopeError::BadCharacter));
        assert_eq!(ScopeSet::parse("a\\b"), Err(ScopeError::BadCharacter));
        assert_eq!(ScopeSet::parse("é"), Err(ScopeError::BadCharacter));
        assert!(ScopeSet::parse("<script>").is_ok(), "allowed by RFC 6749");
    }

    #[test]
    fn subsets_unions_and_intersections() {
        let read = set("read:articles");
        let both = set("read:articles write:articles");
        assert!(read.is_subset_of(&both));
        assert!(!both.is_subset_of(&read));
        assert!(ScopeSet::default().is_subset_of(&read));
        assert_eq!(both.intersection(&read), read);
        assert_eq!(read.union(&set("write:articles")), both);
    }

    #[test]
    fn serialises_as_the_oauth_string() {
        let both = set("write:articles read:articles");
        let json = serde_json::to_string(&both).expect("json");
        assert_eq!(json, "\"read:articles write:articles\"");
        assert_eq!(serde_json::from_str::<ScopeSet>(&json).expect("back"), both);
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::strategies::tricky_text;

    /// A valid scope token (RFC 6749 §3.3).
    fn token() -> impl Strategy<Value = String> {
        "[!#-\\[\\]-~]{1,64}"
    }

    /// Sets over a small alphabet, so that generated sets overlap often.
    fn set() -> impl Strategy<Value = ScopeSet> {
        prop::collection::vec("[a-d]{1,2}", 0..8)
            .prop_map(|tokens| ScopeSet::parse(&tokens.join(" ")).expect("valid tokens"))
    }

    /// A `scope` parameter: anything, or valid tokens (sometimes too many, sometimes
    /// with a bad one) separated by one or more spaces.
    fn parameter() -> impl Strategy<Value = String> {
        prop_oneof![
            tricky_text(),
            prop::collection::vec((token(), " {1,2}"), 0..40).prop_map(|tokens| {
                tokens
                    .into_iter()
                    .map(|(token, gap)| token + &gap)
                    .collect()
            }),
        ]
    }

    proptest! {
        #[test]
        fn never_more_than_max_scopes_and_nothing_dropped(raw in parameter()) {
            let tokens: Vec<&str> = raw.split(' ').filter(|t| !t.is_empty()).collect();
            match ScopeSet::parse(&raw) {
                Ok(set) => {
                    prop_assert!(tokens.len() <= MAX_SCOPES);
                    prop_assert!(set.len() <= tokens.len());
                    for token in &tokens {
                        prop_assert!(set.contains_str(token));
                        let scope = Scope::parse(token).expect("accepted");
                        prop_assert!(set.contains(&scope), "sorted lookup agrees");
                    }
                }
                Err(ScopeError::TooMany) => prop_assert!(tokens.len() > MAX_SCOPES),
                Err(_) => prop_assert!(tokens.iter().any(|t| Scope::parse(t).is_err())),
            }
        }

        #[test]
        fn display_then_parse_round_trips(tokens in prop::collection::vec(token(), 0..=MAX_SCOPES)) {
            let set = ScopeSet::parse(&tokens.join(" ")).expect("valid tokens");
            prop_assert_eq!(ScopeSet::parse(&set.to_string()), Ok(set.clone()));
            let json = serde_json::to_string(&set).expect("json");
            prop_assert_eq!(serde_json::from_str::<ScopeSet>(&json).expect("back"), set);
        }

        #[test]
        fn parse_is_idempotent(raw in parameter()) {
            if let Ok(set) = ScopeSet::parse(&raw) {
                let shown = set.to_string();
                let again = ScopeSet::parse(&shown).expect("a displayed set parses");
                prop_assert_eq!(again.to_string(), shown);
                prop_assert_eq!(again, set);
            }
        }

        #[test]
        fn subset_intersection_and_union_obey_set_laws(a in set(), b in set(), c in set()) {
            let both = a.intersection(&b);
            let either = a.union(&b);
            prop_assert!(both.is_subset_of(&a) && both.is_subset_of(&b));
            prop_assert_eq!(&both, &b.intersection(&a));
            prop_assert!(a.is_subset_of(&either) && b.is_subset_of(&either));
            prop_assert_eq!(a.is_subset_of(&b), both == a);
            prop_assert_eq!(a.is_subset_of(&b), either == b);
            prop_assert_eq!(a.is_subset_of(&b) && b.is_subset_of(&a), a == b);
            if a.is_subset_of(&b) && b.is_subset_of(&c) {
                prop_assert!(a.is_subset_of(&c));
            }
            for scope in a.iter().chain(b.iter()).chain(c.iter()) {
                prop_assert_eq!(both.contains(scope), a.contains(scope) && b.contains(scope));
                prop_assert_eq!(either.contains(scope), a.contains(scope) || b.contains(scope));
            }
        }

        /// What `refresh.rs` accepts (a requested set that `is_subset_of` the grant's)
        /// and what registration keeps (the intersection with the known scopes) never
        /// hold a scope the grant lacks.
        #[test]
        fn narrowing_never_grows(granted in set(), requested in set()) {
            if requested.is_subset_of(&granted) {
                prop_assert!(requested.iter().all(|s| granted.contains(s)));
                prop_assert!(requested.len() <= granted.len());
                prop_assert_eq!(requested.intersection(&granted), requested.clone());
            } else {
                prop_assert!(requested.iter().any(|s| !granted.contains(s)));
            }
            let narrowed = requested.intersection(&granted);
            prop_assert!(narrowed.is_subset_of(&granted) && narrowed.is_subset_of(&requested));
            prop_assert_eq!(narrowed.intersection(&granted), narrowed.clone());
        }
    }
}
