//! Redeeming an authorization code (RFC 6749 §4.1.3 with PKCE, RFC 7636 §4.6, and
//! RFC 8707). A code works once: a second use by the client it was issued to, with
//! the code's PKCE verifier, even a concurrent one, is a replay and revokes the whole
//! grant, so tokens already issued
//! from the code stop working too (OAuth 2.1 §4.1.3: "SHOULD revoke all tokens
//! previously issued based on that authorization code"). Of two concurrent
//! redemptions at most one is answered with tokens, and those tokens are revoked by
//! the other.

use super::{
    client::Client,
    records::{grant_key, token_key, CodeRecord, Grant, TokenResponse},
    redirect::RedirectUri,
    secret::{GrantToken, TokenKind},
    token::TokenParams,
    AuthServer, TokenError, CODE_TTL,
};
use crate::{
    audit::{Event, EventKind},
    store::{decode, encode, Put},
};

impl AuthServer {
    pub(super) async fn redeem_code(
        &self,
        client: &Client,
        params: TokenParams,
    ) -> Result<TokenResponse, TokenError> {
        let raw_code = params
            .code
            .as_deref()
            .ok_or_else(|| TokenError::InvalidRequest("code is required".into()))?;
        let verifier = params
            .code_verifier
            .as_deref()
            .ok_or_else(|| TokenError::InvalidRequest("code_verifier is required (PKCE)".into()))?;
        let invalid =
            || TokenError::InvalidGrant("the code is invalid, expired or already used".into());
        let token = GrantToken::parse(raw_code)
            .filter(|t| t.kind == TokenKind::Code)
            .ok_or_else(invalid)?;
        let key = token_key(&token);
        let current = self.store.get(&key).await?.ok_or_else(invalid)?;
        let record: CodeRecord = decode(&current)?;
        // The client first: a replay counts only from the client the code was
        // issued to. Anyone can register a client, so a confidential client's
        // leaked, used code must not let a stranger revoke its grant.
        if record.client_id != client.client_id {
            return Err(invalid());
        }
        match (params.redirect_uri.as_deref(), record.redirect_uri_explicit) {
            // RFC 6749 §4.1.3: the same URI. Compared as stored, parsed: a client that
            // sent `http://127.0.0.1:8080` sends it again, and it is stored with `/`.
            (Some(sent), _)
                if sent == record.redirect_uri.as_str()
                    || RedirectUri::parse(sent).is_ok_and(|sent| sent == record.redirect_uri) => {}
            (None, false) => {}
            _ => {
                return Err(TokenError::InvalidGrant(
                    "redirect_uri does not match the authorization request".into(),
                ))
            }
        }
        if !record.challenge.verify(verifier) {
            return Err(TokenError::InvalidGrant(
                "the PKCE code_verifier does not match".into(),
            ));
        }
        if let Some(resource) = params.resource.as_deref() {
            if resource != record.resource.as_str() {
                return Err(TokenError::InvalidTarget(format!(
                    "the code was issued for {}, not {resource:?}",
                    record.resource
                )));
            }
        }
        // A replay counts only from a party that proves it holds the verifier: a
        // used code seen in a browser's history or a callback's log must not let
        // whoever saw it revoke the owner's grant (without the verifier it could
        // not have redeemed the code anyway).
        if record.used {
            self.store.delete_group(&token.grant).await?;
            self.audit.record(
                Event::new(EventKind::TokenRevoked)
                    .client(client.client_id.to_string())
                    .grant(token.grant.as_str()),
            );
            tracing::warn!(client_id = %client.client_id, "authorization code replayed; its grant is revoked");
            return Err(invalid());
        }
        let grant_raw = self
            .store
            .get(&grant_key(&token.grant))
            .await?
            .ok_or_else(invalid)?;
        let grant: Grant = decode(&grant_raw)?;
        if !self.same_server(&grant) {
            return Err(self.another_server(client, &token.grant).await);
        }

        // Before the code is used: a store failure here leaves the code for the
        // client's retry, where after the swap the retry would be a replay.
        self.keep_client(client).await?;

        // The access token first, then the code is marked used: of concurrent
        // redemptions exactly one swap succeeds, and each loser revokes the grant.
        let server = self.server_of(&grant);
        let minted = self.mint(
            &token.grant,
            &record.subject,
            &client.client_id,
            record.scopes.clone(),
            &record.resource,
            server.as_deref(),
        )?;
        self.store_access(&minted).await?;
        let used = encode(&CodeRecord {
            used: true,
            ..record
        })?;
        let swapped = self
            .store
            .compare_and_swap(
                &key,
                &current,
                &used,
                Put::ttl(CODE_TTL).in_group(&token.grant),
            )
            .await?;
        if !swapped {
            self.store.delete_group(&token.grant).await?;
            tracing::warn!(client_id = %client.client_id, "authorization code redeemed twice at once; its grant is revoked");
            return Err(invalid());
        }
        // The grant now lives as long as its refresh token. A swap, not a write, so
        // that a grant revoked meanwhile stays revoked.
        let grant_resource = grant.resource.clone();
        let started = encode(&Grant {
            refresh: Some(minted.refresh.clone()),
            access: vec![minted.access.hash.clone()],
            server,
            ..grant
        })?;
        let kept = self
            .store
            .compare_and_swap(
                &grant_key(&token.grant),
                &grant_raw,
                &started,
                Put::ttl(self.settings.refresh_token_ttl).in_group(&token.grant),
            )
            .await?;
        if !kept {
            self.store.delete_group(&token.grant).await?;
            return Err(invalid());
        }
        self.audit.record(
            Event::new(EventKind::CodeRedeemed)
                .client(client.client_id.to_string())
                .grant(token.grant.as_str())
                .resource(grant_resource.to_string()),
        );
        Ok(minted.response)
    }
}
