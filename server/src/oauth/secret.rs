//! Secrets Gatehouse hands out (codes, tokens, client secrets, session ids, tickets):
//! 256 random bits, base64url. The store only ever sees their SHA-256 ([`SecretHash`]).
//!
//! Codes and tokens carry the id of their grant in clear (`<kind>.<grant>.<secret>`),
//! so their keys can live under the grant's group (one Redis Cluster slot, one
//! revocation). The hash covers the whole string, so editing the grant id finds nothing.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::store::Group;

/// 32 bytes from the OS's CSPRNG, base64url (43 characters).
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A shorter random id (128 bits) for identifiers that are not secrets: grant ids,
/// client ids.
pub fn random_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The SHA-256 of a secret, base64url: what keys and records hold instead of it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct SecretHash(String);

impl SecretHash {
    pub fn of(secret: &str) -> Self {
        SecretHash(URL_SAFE_NO_PAD.encode(Sha256::digest(secret.as_bytes())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `secret` hashes to this, in constant time.
    pub fn matches(&self, secret: &str) -> bool {
        self.same(&SecretHash::of(secret))
    }

    /// Whether two hashes are equal, in constant time.
    pub fn same(&self, other: &SecretHash) -> bool {
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

/// The longest secret part a token of ours can have (ours are 43 characters).
const MAX_SECRET_LEN: usize = 64;

/// The kinds of grant-bound secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    Code,
    Access,
    Refresh,
}

impl TokenKind {
    fn prefix(self) -> &'static str {
        match self {
            TokenKind::Code => "ghc",
            TokenKind::Access => "gha",
            TokenKind::Refresh => "ghr",
        }
    }
}

/// A grant-bound secret as a client presents it, split but not yet looked up.
#[derive(Debug)]
pub struct GrantToken {
    pub kind: TokenKind,
    pub grant: Group,
    pub hash: SecretHash,
}

impl GrantToken {
    /// A new secret of `kind` for `grant`; returns the string to hand out.
    pub fn issue(kind: TokenKind, grant: &Group) -> (String, GrantToken) {
        let raw = format!("{}.{}.{}", kind.prefix(), grant.as_str(), random_token());
        let token = GrantToken {
            kind,
            grant: grant.clone(),
            hash: SecretHash::of(&raw),
        };
        (raw, token)
    }

    /// Splits a presented token; `None` when it is not one of ours.
    pub fn parse(raw: &str) -> Option<GrantToken> {
        let mut parts = raw.split('.');
        let kind = match parts.next()? {
            "ghc" => TokenKind::Code,
            "gha" => TokenKind::Access,
            "ghr" => TokenKind::Refresh,
            _ => return None,
        };
        let grant = Group::parse(parts.next()?)?;
        let secret = parts.next()?;
        let plain = !secret.is_empty()
            && secret.len() <= MAX_SECRET_LEN
            && secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if parts.next().is_some() || !plain {
            return None;
        }
        Some(GrantToken {
            kind,
            grant,
            hash: SecretHash::of(raw),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_parse_back() {
        let grant = Group::random();
        let (a, parsed_a) = GrantToken::issue(TokenKind::Access, &grant);
        let (b, _) = GrantToken::issue(TokenKind::Access, &grant);
        assert_ne!(a, b);
        let parsed = GrantToken::parse(&a).expect("ours");
        assert_eq!(parsed.kind, TokenKind::Access);
        assert_eq!(parsed.grant, grant);
        assert_eq!(parsed.hash, parsed_a.hash);
        assert!(!a.contains(parsed.hash.as_str()));
    }

    #[test]
    fn foreign_or_malformed_tokens_are_not_ours() {
        for bad in [
            "",
            "gha",
            "gha.x",
            "xyz.a.b",
            "gha.a.b.c",
            "gha.a{b}.c",
            "gha..c",
            "gha.a.b c",
            &format!("gha.a.{}", "x".repeat(65)),
            &format!("gha.{}.b", "x".repeat(65)),
        ] {
            assert!(GrantToken::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn hashes_compare_in_constant_time() {
        let hash = SecretHash::of("s3cret");
        assert!(hash.matches("s3cret"));
        assert!(!hash.matches("s3cret "));
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::strategies::tricky_text;

    const KINDS: [TokenKind; 3] = [TokenKind::Code, TokenKind::Access, TokenKind::Refresh];

    /// Strings near the token shape: a prefix, a grant id and a secret, each sometimes
    /// wrong, sometimes with an extra part.
    fn near_token() -> impl Strategy<Value = String> {
        prop_oneof![
            tricky_text(),
            "(ghc|gha|ghr|ghx|GHA)?\\.[A-Za-z0-9_{} -]{0,70}(\\.[A-Za-z0-9_ .-]{0,70})?",
        ]
    }

    proptest! {
        #[test]
        fn issued_tokens_parse_back_to_the_same_kind_grant_and_hash(
            kind in prop::sample::select(KINDS.to_vec()),
            grant in "[A-Za-z0-9_-]{1,64}",
        ) {
            let grant = Group::parse(&grant).expect("a valid group id");
            let (raw, issued) = GrantToken::issue(kind, &grant);
            let parsed = GrantToken::parse(&raw).expect("an issued token is ours");
            prop_assert_eq!(parsed.kind, kind);
            prop_assert_eq!(&parsed.grant, &grant);
            prop_assert_eq!(&parsed.hash, &issued.hash);
            prop_assert!(issued.hash.matches(&raw));
        }

        /// Anything accepted is exactly `<kind>.<grant>.<secret>` and re-formats to the
        /// very string that was hashed.
        #[test]
        fn what_parses_re_formats_to_itself(raw in near_token()) {
            let Some(token) = GrantToken::parse(&raw) else { return Ok(()) };
            let parts: Vec<&str> = raw.split('.').collect();
            prop_assert_eq!(parts.len(), 3);
            prop_assert_eq!(token.kind.prefix(), parts[0]);
            prop_assert_eq!(token.grant.as_str(), parts[1]);
            prop_assert!(!parts[2].is_empty() && parts[2].len() <= MAX_SECRET_LEN);
            let reformatted = format!("{}.{}.{}", token.kind.prefix(), token.grant.as_str(), parts[2]);
            prop_assert_eq!(&reformatted, &raw);
            prop_assert_eq!(token.hash, SecretHash::of(&reformatted));
        }

        #[test]
        fn a_hash_matches_only_its_secret(secret in tricky_text(), other in tricky_text()) {
            let hash = SecretHash::of(&secret);
            prop_assert!(hash.matches(&secret));
            prop_assert_eq!(hash.matches(&other), other == secret);
        }
    }
}
