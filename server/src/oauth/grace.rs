//! The refresh grace window keeps the successor of a just-rotated refresh token, so a
//! client that lost the response (or raced itself) gets the same pair again. The store
//! must not hold raw tokens, so the pair is sealed with a key derived from the *old*
//! refresh token: only someone who presents that token can open it, and the store
//! keeps only its SHA-256, from which the key cannot be derived.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use chacha20poly1305::{
    aead::{Aead, KeyInit},
    ChaCha20Poly1305, Key, Nonce,
};
use rand::RngCore;
use sha2::{Digest, Sha256};

fn key_for(old_refresh_token: &str) -> Key {
    let mut hasher = Sha256::new();
    hasher.update(b"gatehouse refresh grace v1\0");
    hasher.update(old_refresh_token.as_bytes());
    let digest = hasher.finalize();
    *Key::from_slice(&digest)
}

/// Seals `plaintext` for whoever holds `old_refresh_token`.
pub fn seal(old_refresh_token: &str, plaintext: &[u8]) -> String {
    let cipher = ChaCha20Poly1305::new(&key_for(old_refresh_token));
    let mut nonce = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    // Encryption with a fresh nonce and a valid key cannot fail.
    let sealed = cipher
        .encrypt(Nonce::from_slice(&nonce), plaintext)
        .unwrap_or_default();
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    URL_SAFE_NO_PAD.encode(out)
}

pub fn open(old_refresh_token: &str, sealed: &[u8]) -> Option<Vec<u8>> {
    let raw = URL_SAFE_NO_PAD.decode(sealed).ok()?;
    if raw.len() < 12 {
        return None;
    }
    let (nonce, body) = raw.split_at(12);
    ChaCha20Poly1305::new(&key_for(old_refresh_token))
        .decrypt(Nonce::from_slice(nonce), body)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_old_token_opens_the_successor() {
        let sealed = seal("ghr.g.old", b"successor pair");
        assert_eq!(
            open("ghr.g.old", sealed.as_bytes()).as_deref(),
            Some(&b"successor pair"[..])
        );
        assert_eq!(open("ghr.g.other", sealed.as_bytes()), None);
        assert_eq!(open("ghr.g.old", b"garbage"), None);
    }
}
