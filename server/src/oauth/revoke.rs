//! RFC 7009 revocation. Revoking a refresh token revokes its whole grant; an access
//! token goes alone. Unknown tokens are not an error (§2.2), but a token issued to
//! another client is refused (§2.1): a client may revoke only its own.

use super::{
    clients::ClientCredentials,
    records::{grant_key, token_key, AccessToken, Grant},
    secret::{GrantToken, TokenKind},
    AuthServer, TokenError,
};
use crate::{
    audit::{Event, EventKind},
    store::decode,
};

impl AuthServer {
    pub async fn revoke(
        &self,
        credentials: &ClientCredentials,
        raw_token: &str,
    ) -> Result<(), TokenError> {
        let client = self.authenticate(credentials).await?;
        let Some(token) = GrantToken::parse(raw_token) else {
            return Ok(());
        };
        let not_yours =
            || TokenError::UnauthorizedClient("this token was issued to another client".into());
        match token.kind {
            TokenKind::Access => {
                let key = token_key(&token);
                let Some(raw) = self.store.get(&key).await? else {
                    return Ok(());
                };
                if decode::<AccessToken>(&raw)?.client_id != client.client_id {
                    return Err(not_yours());
                }
                self.store.delete(&key).await?;
                self.audit.record(
                    Event::new(EventKind::TokenRevoked)
                        .client(client.client_id.to_string())
                        .grant(token.grant.as_str()),
                );
            }
            TokenKind::Refresh => {
                let Some(raw) = self.store.get(&grant_key(&token.grant)).await? else {
                    return Ok(());
                };
                let grant: Grant = decode(&raw)?;
                // A rotated token too: its client may be signing out with the token
                // it last held, which someone who stole it has rotated since (the
                // token endpoint revokes the grant on its reuse just the same).
                let known = grant.refresh.as_ref().is_some_and(|h| h.same(&token.hash))
                    || grant.was_rotated(&token.hash);
                // A made-up token naming another client's grant is just unknown:
                // whose grant is live is not told.
                if known && grant.client_id != client.client_id {
                    return Err(not_yours());
                }
                if known {
                    self.store.delete_group(&token.grant).await?;
                    self.audit.record(
                        Event::new(EventKind::TokenRevoked)
                            .client(client.client_id.to_string())
                            .grant(token.grant.as_str()),
                    );
                }
            }
            // Codes are not revocable tokens; RFC 7009 covers access and refresh.
            TokenKind::Code => {}
        }
        Ok(())
    }
}
