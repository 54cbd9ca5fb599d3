//! PKCE S256: any challenge and method through `CodeChallenge::parse`, any verifier
//! through `verify`; the challenge of a well-formed verifier always verifies it.
#![no_main]

use arbitrary::Arbitrary;
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use gatehouse::oauth::pkce::CodeChallenge;
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    challenge: Option<&'a str>,
    method: Option<&'a str>,
    verifier: &'a str,
}

/// RFC 7636 §4.1: 43 to 128 unreserved characters.
fn well_formed(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

fuzz_target!(|input: Input| {
    let s256 = URL_SAFE_NO_PAD.encode(Sha256::digest(input.verifier.as_bytes()));
    if let Ok(challenge) = CodeChallenge::parse(input.challenge, input.method) {
        assert_eq!(input.method, Some("S256"));
        let raw = input.challenge.expect("a challenge was given");
        assert_eq!(raw.len(), 43);
        assert!(URL_SAFE_NO_PAD.decode(raw).is_ok_and(|d| d.len() == 32));
        if challenge.verify(input.verifier) {
            assert!(well_formed(input.verifier));
            assert_eq!(s256, raw);
        }
    }
    let own = CodeChallenge::parse(Some(&s256), Some("S256")).expect("a SHA-256 is a challenge");
    assert_eq!(own.verify(input.verifier), well_formed(input.verifier));
});
