//! Grant-bound tokens (`<kind>.<grant>.<secret>`): any string parses or not without
//! panicking, what parses is exactly our shape, and what we issue always parses back.
#![no_main]

use gatehouse::{
    oauth::secret::{GrantToken, SecretHash, TokenKind},
    store::Group,
};
use libfuzzer_sys::fuzz_target;

const KINDS: [(TokenKind, &str); 3] = [
    (TokenKind::Code, "ghc"),
    (TokenKind::Access, "gha"),
    (TokenKind::Refresh, "ghr"),
];

fuzz_target!(|input: (&str, u8)| {
    let (raw, which) = input;
    if let Some(token) = GrantToken::parse(raw) {
        let parts: Vec<&str> = raw.split('.').collect();
        assert_eq!(parts.len(), 3);
        let prefix = KINDS
            .iter()
            .find(|(k, _)| *k == token.kind)
            .map(|(_, p)| *p);
        assert_eq!(prefix, Some(parts[0]));
        assert_eq!(token.grant.as_str(), parts[1]);
        assert_eq!(Group::parse(parts[1]).as_ref(), Some(&token.grant));
        assert!(!parts[2].is_empty() && parts[2].len() <= 64);
        assert_eq!(token.hash, SecretHash::of(raw));
        // Re-formatting the parts gives back the very string.
        assert_eq!(
            format!("{}.{}.{}", parts[0], token.grant.as_str(), parts[2]),
            raw
        );
    }
    if let Some(grant) = Group::parse(raw) {
        let (kind, prefix) = KINDS[usize::from(which) % KINDS.len()];
        let (issued, minted) = GrantToken::issue(kind, &grant);
        assert!(issued.starts_with(prefix));
        let back = GrantToken::parse(&issued).expect("an issued token is ours");
        assert_eq!(back.kind, kind);
        assert_eq!(back.grant, grant);
        assert_eq!(back.hash, minted.hash);
    }
});
