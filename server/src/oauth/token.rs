//! The token endpoint's front (RFC 6749 §3.2): which grant type, which client, and the
//! minting of token pairs shared by [`super::code`] and [`super::refresh`].

use serde::Deserialize;

use super::{
    clients::ClientCredentials,
    records::{access_key, AccessToken, TokenResponse},
    scope::ScopeSet,
    secret::{GrantToken, SecretHash, TokenKind},
    AuthServer, TokenError,
};
use crate::{
    resource::ResourceUri,
    store::{encode, Group, Put, StoreError},
};

/// The form of `POST /oauth/token`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct TokenParams {
    pub grant_type: Option<String>,
    pub code: Option<String>,
    pub redirect_uri: Option<String>,
    pub code_verifier: Option<String>,
    pub refresh_token: Option<String>,
    pub scope: Option<String>,
    pub resource: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
}

/// The grant types this server supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantType {
    AuthorizationCode,
    RefreshToken,
}

impl GrantType {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "authorization_code" => Some(GrantType::AuthorizationCode),
            "refresh_token" => Some(GrantType::RefreshToken),
            _ => None,
        }
    }
}

/// A freshly minted pair, not yet stored: the response for the client, and what the
/// store keeps of it.
pub(super) struct Minted {
    pub response: TokenResponse,
    pub access: GrantToken,
    pub access_record: Vec<u8>,
    pub refresh: SecretHash,
}

impl AuthServer {
    pub async fn token(
        &self,
        credentials: &ClientCredentials,
        params: TokenParams,
    ) -> Result<TokenResponse, TokenError> {
        let raw = params
            .grant_type
            .as_deref()
            .ok_or_else(|| TokenError::InvalidRequest("grant_type is required".into()))?;
        let grant_type = GrantType::parse(raw).ok_or_else(|| {
            TokenError::UnsupportedGrantType(format!(
                "grant_type {raw:?} is not supported; use authorization_code or refresh_token"
            ))
        })?;
        let client = self.authenticate(credentials).await?;
        let tokens = match grant_type {
            GrantType::AuthorizationCode => self.redeem_code(&client, params).await,
            GrantType::RefreshToken => self.refresh(&client, params).await,
        }?;
        if grant_type == GrantType::RefreshToken {
            // The tokens are minted: a record not renewed now is renewed at a later
            // refresh, well within its margin.
            if let Err(e) = self.keep_client(&client).await {
                tracing::warn!(error = %e, "cannot renew a client's record");
            }
        }
        if client.kind == super::client::ClientKind::MetadataDocument {
            self.prove_document(client.client_id.as_str()).await;
        }
        Ok(tokens)
    }

    /// A new access and refresh token for `grant`.
    pub(super) fn mint(
        &self,
        grant: &Group,
        subject: &str,
        client_id: &super::client::ClientId,
        scopes: ScopeSet,
        resource: &ResourceUri,
        server: Option<&str>,
    ) -> Result<Minted, StoreError> {
        let (access_raw, access) = GrantToken::issue(TokenKind::Access, grant);
        let (refresh_raw, refresh) = GrantToken::issue(TokenKind::Refresh, grant);
        let ttl = self.settings.access_token_ttl.as_secs();
        let response = TokenResponse {
            access_token: access_raw,
            token_type: "Bearer".into(),
            expires_in: ttl,
            refresh_token: refresh_raw,
            scope: scopes.to_string(),
        };
        let access_record = encode(&AccessToken {
            subject: subject.to_owned(),
            client_id: client_id.clone(),
            scopes,
            resource: resource.clone(),
            expires_at: self.now() + ttl,
            server: server.map(str::to_owned),
        })?;
        Ok(Minted {
            response,
            access,
            access_record,
            refresh: refresh.hash,
        })
    }

    /// Stores a minted access token in its grant.
    pub(super) async fn store_access(&self, minted: &Minted) -> Result<(), StoreError> {
        let grant = &minted.access.grant;
        self.store
            .put(
                &access_key(grant, &minted.access.hash),
                &minted.access_record,
                Put::ttl(self.settings.access_token_ttl).in_group(grant),
            )
            .await
    }

    /// Removes a minted access token that lost a race.
    pub(super) async fn discard_access(&self, minted: &Minted) -> Result<(), StoreError> {
        self.store
            .delete(&access_key(&minted.access.grant, &minted.access.hash))
            .await
            .map(|_| ())
    }
}
