//! The bearer check of a protected resource (RFC 6750, RFC 8707): one store read by the
//! token's hash. Expired and revoked tokens have no live record; the token must have
//! been issued for the very resource it is presented to.

use std::sync::Mutex;

use super::{
    records::{token_key, AccessToken},
    secret::{GrantToken, TokenKind},
    AuthServer,
};
use crate::{
    resource::ResourceUri,
    store::{decode, Key, StoreError},
    telemetry::FastMap,
};

impl AuthServer {
    /// The token `raw` stands for at `resource`, if it is valid there.
    pub async fn verify_access_token(
        &self,
        raw: &str,
        resource: &ResourceUri,
    ) -> Result<Option<AccessToken>, StoreError> {
        let Some(key) = Self::access_token_key(raw) else {
            return Ok(None);
        };
        let record = self.store.get(&key).await?;
        self.access_token_from(record.as_deref(), resource)
    }

    /// Where the record of the access token `raw` lives, if `raw` has the shape of
    /// one of ours. For callers that read it together with other records.
    pub fn access_token_key(raw: &str) -> Option<Key> {
        GrantToken::parse(raw)
            .filter(|t| t.kind == TokenKind::Access)
            .map(|token| token_key(&token))
    }

    /// The token a record read under [`Self::access_token_key`] stands for, when it
    /// is unexpired and issued for `resource`. A revoked token has no record.
    pub fn access_token_from(
        &self,
        record: Option<&[u8]>,
        resource: &ResourceUri,
    ) -> Result<Option<AccessToken>, StoreError> {
        let Some(record) = record else {
            return Ok(None);
        };
        let access = self.decoded.access_token(record)?;
        let valid = access.expires_at > self.now()
            && access.resource == *resource
            && self.same_server_as(access.server.as_deref(), resource);
        Ok(valid.then_some(access))
    }
}

/// Access-token records as decoded, by their bytes. The guard reads a token's record
/// on every call, so that a revocation or an expiry counts at once, but decodes the
/// same bytes once: decoding was about a twentieth of the server's instructions per
/// `/mcp` call (callgrind, 2026-12-04). Keyed by the whole record, so a record that
/// changes is decoded afresh, and nothing is decided from the cache that the record
/// read does not say. Only records read by the hash of a presented token, that is of
/// real tokens, enter it; at [`DecodedTokens::MAX`] it starts again empty.
#[derive(Default)]
pub struct DecodedTokens {
    /// Keyed by records Gatehouse wrote, of tokens it issued: `FastMap`.
    records: Mutex<FastMap<Box<[u8]>, AccessToken>>,
}

impl DecodedTokens {
    pub const MAX: usize = 4096;

    fn access_token(&self, record: &[u8]) -> Result<AccessToken, StoreError> {
        let lock = || self.records.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(access) = lock().get(record) {
            return Ok(access.clone());
        }
        let access: AccessToken = decode(record)?;
        let mut records = lock();
        if records.len() >= Self::MAX {
            records.clear();
        }
        records.insert(record.into(), access.clone());
        Ok(access)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::encode;

    fn token(expires_at: u64) -> AccessToken {
        AccessToken {
            subject: "owner".into(),
            client_id: crate::oauth::client::ClientId::try_from("client-1".to_owned())
                .expect("client id"),
            scopes: crate::oauth::scope::ScopeSet::parse("read:articles").expect("scopes"),
            resource: ResourceUri::new("https://gate.example/mcp".into()),
            expires_at,
            server: None,
        }
    }

    #[test]
    fn a_record_decodes_to_what_it_says_every_time_it_is_read() {
        let decoded = DecodedTokens::default();
        let (a, b) = (token(100), token(200));
        let (raw_a, raw_b) = (encode(&a).expect("a"), encode(&b).expect("b"));
        for _ in 0..2 {
            assert_eq!(decoded.access_token(&raw_a).expect("a"), a);
            assert_eq!(decoded.access_token(&raw_b).expect("b"), b);
        }
        assert!(decoded.access_token(b"{not a record").is_err());
    }

    #[test]
    fn the_cache_is_bounded() {
        let decoded = DecodedTokens::default();
        for n in 0..DecodedTokens::MAX as u64 + 10 {
            let access = token(n);
            let raw = encode(&access).expect("record");
            assert_eq!(decoded.access_token(&raw).expect("record"), access);
        }
        let held = decoded.records.lock().expect("lock").len();
        assert!(held <= DecodedTokens::MAX, "{held}");
    }
}
