//! Refresh-token rotation (RFC 6749 §6, OAuth 2.1 §4.3.1, RFC 9700 §4.14.2).
//!
//! The grant record names the one live refresh token. Presenting it rotates: a new
//! pair is minted and the grant record is swapped (compare-and-swap, so concurrent
//! rotations of one token rotate once). Clients lose responses and race themselves,
//! so for `--refresh-grace` a just-rotated token yields the same successor pair again:
//! the pair is sealed with a key derived from the old token (see [`super::grace`])
//! in a record that lives only for the grace window (and only for the same
//! `resource` and scopes the lost request asked). Any other refresh token the grant
//! issued is a reuse, and revokes the grant. A token it never issued (or rotated
//! more than [`RETIRED_KEPT`] times ago) is only refused: the grant id is in clear in
//! every token, so anyone who saw one could otherwise revoke the grant. A rotation
//! that would forget a token retired less than `--refresh-reuse-window` (an access
//! token's lifetime) ago waits (503, `temporarily_unavailable`): with a stolen refresh
//! token, 16 quick rotations would otherwise make its client's token unknown rather
//! than a reuse.
//!
//! What a grant keeps is bounded whatever the number of rotations: one grant record
//! (with the hashes of its last [`RETIRED_KEPT`] refresh tokens), two access tokens
//! (one more until it expires, when deleting the one a rotation replaced failed), and
//! the sealed successor of the last rotation (and an earlier one within its grace,
//! likewise).
//! Once a successor has itself been rotated, the client clearly received it, so the
//! token before it has no more use: presenting it again is a reuse, grace or not.

use std::time::Duration;

use super::{
    client::Client,
    grace,
    records::{access_key, grant_key, successor_key, Grant, Rotation, TokenResponse, RETIRED_KEPT},
    scope::ScopeSet,
    secret::{GrantToken, SecretHash, TokenKind},
    token::TokenParams,
    AuthServer, TokenError,
};
use crate::{
    audit::{Event, EventKind},
    store::{decode, encode, Put},
};

/// How long concurrent requests with one refresh token may keep losing the race to
/// rotate it (each lost race is followed by a look at the winner's rotation).
const SUCCESSOR_PATIENCE: Duration = Duration::from_secs(2);

/// Access tokens kept per grant: the newest and the one before it, so a client that
/// refreshed early can finish what it was doing with the previous one.
const ACCESS_TOKENS_KEPT: usize = 2;

/// The pair a rotation made for another request of the same token, if it answers
/// what this one asked: a narrower `scope` must not get a wider pair.
fn answers(
    pair: TokenResponse,
    requested: Option<&ScopeSet>,
    scopes: &ScopeSet,
) -> Result<TokenResponse, TokenError> {
    if requested.is_some() && ScopeSet::parse(&pair.scope).ok().as_ref() != Some(scopes) {
        return Err(TokenError::InvalidScope(
            "this refresh token was rotated a moment ago for other scopes".into(),
        ));
    }
    Ok(pair)
}

impl AuthServer {
    pub(super) async fn refresh(
        &self,
        client: &Client,
        params: TokenParams,
    ) -> Result<TokenResponse, TokenError> {
        let raw = params
            .refresh_token
            .as_deref()
            .ok_or_else(|| TokenError::InvalidRequest("refresh_token is required".into()))?;
        let invalid =
            || TokenError::InvalidGrant("the refresh token is invalid, expired or revoked".into());
        let token = GrantToken::parse(raw)
            .filter(|t| t.kind == TokenKind::Refresh)
            .ok_or_else(invalid)?;
        let requested = params
            .scope
            .as_deref()
            .map(ScopeSet::parse)
            .transpose()
            .map_err(|e| TokenError::InvalidScope(e.to_string()))?;
        let key = grant_key(&token.grant);

        let deadline = tokio::time::Instant::now() + SUCCESSOR_PATIENCE;
        while tokio::time::Instant::now() < deadline {
            let current = self.store.get(&key).await?.ok_or_else(invalid)?;
            let grant: Grant = decode(&current)?;
            if grant.client_id != client.client_id {
                return Err(invalid());
            }
            if !self.same_server(&grant) {
                return Err(self.another_server(client, &token.grant).await);
            }
            let live = grant.refresh.as_ref().is_some_and(|h| h.same(&token.hash));
            if !live {
                let now = self.now();
                let grace = self.settings.refresh_grace.as_secs();
                // The newest rotation only: once its successor has been rotated in
                // turn, the token before has no more use.
                let recent = grant
                    .rotated
                    .first()
                    .filter(|r| r.hash.same(&token.hash) && now.saturating_sub(r.at) <= grace);
                if let Some(rotation) = recent {
                    // The successor is stored before the grant records the rotation,
                    // and expires with the grace.
                    let successor = successor_key(&token.grant, &token.hash);
                    if let Some(sealed) = self.store.get(&successor).await? {
                        let mut pair: TokenResponse =
                            decode(&grace::open(raw, &sealed).ok_or_else(invalid)?)?;
                        // Its access token was minted then: it has that much less left.
                        let age = now.saturating_sub(rotation.at);
                        pair.expires_in = pair.expires_in.saturating_sub(age);
                        // A retry asks what the lost request asked: the same checks.
                        let scopes = self.refresh_scopes(&grant, &params, requested.as_ref())?;
                        return answers(pair, requested.as_ref(), &scopes);
                    }
                    // Gone: its grace has ended, a moment before the rotation's (a
                    // retry that finished another request's rotation recorded it
                    // later than that request stored the pair), so this is a retry
                    // come too late, not evidence of theft. Without a grace there
                    // is no successor, and the token is a reuse at once.
                    if !self.settings.refresh_grace.is_zero() {
                        return Err(invalid());
                    }
                }
                if !grant.was_rotated(&token.hash) {
                    // Never issued, or rotated long ago: no evidence of theft.
                    return Err(invalid());
                }
                self.store.delete_group(&token.grant).await?;
                self.audit.record(
                    Event::new(EventKind::RefreshReuseDetected)
                        .client(client.client_id.to_string())
                        .grant(token.grant.as_str()),
                );
                tracing::warn!(client_id = %client.client_id, "refresh token reused after rotation; its grant is revoked");
                return Err(invalid());
            }

            if let Some(wait) = self.too_soon_to_forget(&grant) {
                return Err(TokenError::Wait {
                    description: format!(
                        "this grant's refresh token was rotated too often lately; try again in {wait} second(s)"
                    ),
                    seconds: wait,
                });
            }
            let scopes = self.refresh_scopes(&grant, &params, requested.as_ref())?;
            let server = self.server_of(&grant);
            let minted = self.mint(
                &token.grant,
                &grant.subject,
                &client.client_id,
                scopes.clone(),
                &grant.resource,
                server.as_deref(),
            )?;
            self.store_access(&minted).await?;

            // With a grace window, the successor is stored before the grant is
            // swapped, and only by the first request to get there (put_new). A
            // rotation cut short between the two writes (the store failed, the
            // process died) is then finished by the client's retry with the same
            // token, which finds the successor here; in the other order the grant
            // would have rotated to a pair nobody can ever obtain, and the retry
            // would be refused as a reuse.
            let successor = successor_key(&token.grant, &token.hash);
            let mut stored_successor = false;
            let (response, refresh, access_hash) = if self.settings.refresh_grace.is_zero() {
                (
                    minted.response.clone(),
                    minted.refresh.clone(),
                    minted.access.hash.clone(),
                )
            } else {
                let sealed = grace::seal(raw, &encode(&minted.response)?);
                stored_successor = self
                    .store
                    .put_new(
                        &successor,
                        sealed.as_bytes(),
                        Put::ttl(self.settings.refresh_grace).in_group(&token.grant),
                    )
                    .await?;
                if stored_successor {
                    (
                        minted.response.clone(),
                        minted.refresh.clone(),
                        minted.access.hash.clone(),
                    )
                } else {
                    // Another request, or an earlier attempt at this one, stored a
                    // successor first: finish that rotation instead of ours.
                    self.discard_access(&minted).await?;
                    let Some(sealed) = self.store.get(&successor).await? else {
                        continue;
                    };
                    let pair: TokenResponse =
                        decode(&grace::open(raw, &sealed).ok_or_else(invalid)?)?;
                    let pair = answers(pair, requested.as_ref(), &scopes)?;
                    let refresh = GrantToken::parse(&pair.refresh_token)
                        .ok_or_else(invalid)?
                        .hash;
                    let access = GrantToken::parse(&pair.access_token)
                        .ok_or_else(invalid)?
                        .hash;
                    (pair, refresh, access)
                }
            };

            let mut rotated = vec![Rotation {
                hash: token.hash.clone(),
                at: self.now(),
            }];
            rotated.extend(grant.rotated.iter().take(RETIRED_KEPT - 1).cloned());
            let mut retired = vec![token.hash.clone()];
            retired.extend(grant.retired.iter().take(RETIRED_KEPT - 1).cloned());
            let mut access = vec![access_hash];
            access.extend(grant.access.iter().take(ACCESS_TOKENS_KEPT - 1).cloned());
            let dropped: Vec<SecretHash> = grant
                .access
                .iter()
                .skip(ACCESS_TOKENS_KEPT - 1)
                .cloned()
                .collect();
            let next = encode(&Grant {
                refresh: Some(refresh),
                rotated,
                retired,
                access,
                server,
                ..grant
            })?;
            let swapped = self
                .store
                .compare_and_swap(
                    &key,
                    &current,
                    &next,
                    Put::ttl(self.settings.refresh_token_ttl).in_group(&token.grant),
                )
                .await?;
            if !swapped {
                // Someone finished this rotation first (the next look finds the
                // successor), or the grant was revoked meanwhile: then what this
                // request stored must not outlive it.
                let revoked = self.store.get(&key).await?.is_none();
                if revoked || self.settings.refresh_grace.is_zero() {
                    self.discard_access(&minted).await?;
                    if stored_successor {
                        self.store.delete(&successor).await?;
                    }
                }
                continue;
            }
            // The rotation is done: what follows tidies up, and its failure must not
            // answer 503, whose retry (with the refresh token just rotated) would be
            // a reuse that revokes the grant when there is no grace. What is left
            // expires by itself: an access token within its lifetime, a successor
            // within the grace; and revoking the grant deletes both.
            for hash in dropped {
                if let Err(e) = self.store.delete(&access_key(&token.grant, &hash)).await {
                    tracing::warn!(error = %e, "cannot delete an access token a refresh replaced; it expires by itself");
                }
            }
            self.audit.record(
                Event::new(EventKind::TokenRefreshed)
                    .client(client.client_id.to_string())
                    .grant(token.grant.as_str()),
            );
            // The rotation before: those before it were tidied up at their own next.
            for earlier in grant.rotated.iter().take(1) {
                let key = successor_key(&token.grant, &earlier.hash);
                if let Err(e) = self.store.delete(&key).await {
                    tracing::warn!(error = %e, "cannot delete an earlier rotation's successor; it expires with its grace");
                }
            }
            return Ok(response);
        }
        Err(invalid())
    }

    /// When rotating `grant` now would forget a refresh token retired less than
    /// `--refresh-reuse-window` ago: the seconds until it may. A client in use
    /// refreshes about once an access token's lifetime (the default window), so its
    /// own rotations never wait; but someone holding a stolen refresh token could
    /// otherwise rotate it 16 times in a second, and the token its client holds
    /// would then be refused as unknown, not recognised as a reuse that revokes the
    /// grant. (A token whose retirement has no time, from a grant written before
    /// times were kept, is forgotten as before.)
    fn too_soon_to_forget(&self, grant: &Grant) -> Option<u64> {
        let forgotten = grant.retired.get(RETIRED_KEPT - 1)?;
        let retired_at = grant.rotated.iter().find(|r| r.hash.same(forgotten))?.at;
        let min_age = self.settings.refresh_reuse_window.as_secs();
        let age = self.now().saturating_sub(retired_at);
        (age < min_age).then(|| min_age - age)
    }

    /// The scopes a refresh of `grant` gets: the grant's, or fewer when asked; and
    /// only for the grant's own resource.
    fn refresh_scopes(
        &self,
        grant: &Grant,
        params: &TokenParams,
        requested: Option<&ScopeSet>,
    ) -> Result<ScopeSet, TokenError> {
        if let Some(sent) = params.resource.as_deref() {
            if sent != grant.resource.as_str() {
                return Err(TokenError::InvalidTarget(format!(
                    "this grant is for {}, not {sent:?}",
                    grant.resource
                )));
            }
        }
        match requested {
            Some(requested) if requested.is_empty() => {
                Err(TokenError::InvalidScope("no scope was requested".into()))
            }
            Some(requested) if !requested.is_subset_of(&grant.scopes) => {
                Err(TokenError::InvalidScope(format!(
                    "a refresh may narrow scopes but not widen them beyond {}",
                    grant.scopes
                )))
            }
            Some(requested) => Ok(requested.clone()),
            None => Ok(grant.scopes.clone()),
        }
    }
}
