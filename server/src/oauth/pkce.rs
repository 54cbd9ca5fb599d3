//! PKCE (RFC 7636) with S256 only: OAuth 2.1 requires it for every authorization
//! request, and `plain` gives no protection against a code interceptor.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A `code_challenge` sent with `code_challenge_method=S256`: the base64url SHA-256 of
/// the verifier, 43 characters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeChallenge(String);

impl CodeChallenge {
    pub fn parse(challenge: Option<&str>, method: Option<&str>) -> Result<Self, &'static str> {
        let challenge = challenge.ok_or("code_challenge is required (PKCE with S256)")?;
        match method {
            Some("S256") => {}
            Some("plain") => return Err("code_challenge_method plain is not allowed; use S256"),
            Some(_) => return Err("code_challenge_method must be S256"),
            None => return Err("code_challenge_method is required and must be S256"),
        }
        let decoded = URL_SAFE_NO_PAD
            .decode(challenge)
            .map_err(|_| "code_challenge must be base64url without padding")?;
        if decoded.len() != 32 {
            return Err("code_challenge must be the base64url SHA-256 of the verifier");
        }
        Ok(CodeChallenge(challenge.to_owned()))
    }

    /// RFC 7636 §4.6, compared in constant time.
    pub fn verify(&self, verifier: &str) -> bool {
        let valid_shape = (43..=128).contains(&verifier.len())
            && verifier
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
        if !valid_shape {
            return false;
        }
        let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        computed.as_bytes().ct_eq(self.0.as_bytes()).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7636 Appendix B.
    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    #[test]
    fn verifies_the_rfc_example() {
        let challenge = CodeChallenge::parse(Some(CHALLENGE), Some("S256")).expect("valid");
        assert!(challenge.verify(VERIFIER));
        assert!(!challenge.verify(&VERIFIER.replace('d', "e")));
        assert!(!challenge.verify("short"));
    }

    #[test]
    fn refuses_plain_and_missing_challenges() {
        assert!(CodeChallenge::parse(Some(CHALLENGE), Some("plain")).is_err());
        assert!(CodeChallenge::parse(Some(CHALLENGE), None).is_err());
        assert!(CodeChallenge::parse(None, Some("S256")).is_err());
        assert!(CodeChallenge::parse(Some("not-a-hash"), Some("S256")).is_err());
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::strategies::tricky_text;

    /// RFC 7636 §4.1: 43 to 128 unreserved characters.
    fn verifier() -> impl Strategy<Value = String> {
        "[A-Za-z0-9._~-]{43,128}"
    }

    fn s256(verifier: &str) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
    }

    proptest! {
        #[test]
        fn the_challenge_of_a_verifier_verifies_it_and_nothing_else(
            verifier in verifier(),
            other in prop_oneof![verifier(), tricky_text()],
        ) {
            let challenge = CodeChallenge::parse(Some(&s256(&verifier)), Some("S256"))
                .expect("a SHA-256 is a challenge");
            prop_assert!(challenge.verify(&verifier));
            prop_assert_eq!(challenge.verify(&other), other == verifier);
        }

        #[test]
        fn only_s256_challenges_of_32_bytes_parse(
            challenge in prop::option::of(prop_oneof![
                "[A-Za-z0-9_-]{42,44}",
                "[A-Za-z0-9+/=_-]{0,60}",
                tricky_text(),
            ]),
            method in prop::option::of(prop_oneof![Just("S256".to_owned()), Just("plain".to_owned()), Just("s256".to_owned()), tricky_text()]),
            verifier in prop_oneof![verifier(), tricky_text()],
        ) {
            let Ok(parsed) = CodeChallenge::parse(challenge.as_deref(), method.as_deref()) else {
                return Ok(());
            };
            prop_assert_eq!(method.as_deref(), Some("S256"));
            let raw = challenge.expect("parsed from a challenge");
            prop_assert_eq!(raw.len(), 43);
            prop_assert!(URL_SAFE_NO_PAD.decode(&raw).is_ok_and(|d| d.len() == 32));
            if parsed.verify(&verifier) {
                prop_assert_eq!(s256(&verifier), raw);
            }
        }
    }
}
