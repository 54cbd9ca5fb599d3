//! The bearer check of a protected resource (RFC 6750, RFC 8707): one store read by the
//! token's hash. Expired and revoked tokens have no live record; the token must have
//! been issued for the very resource it is presented to.

use super::{
    records::{token_key, AccessToken},
    secret::{GrantToken, TokenKind},
    AuthServer,
};
use crate::{
    resource::ResourceUri,
    store::{decode, Key, StoreError},
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
        let access: AccessToken = decode(record)?;
        let valid = access.expires_at > self.now() && access.resource == *resource;
        Ok(valid.then_some(access))
    }
}
