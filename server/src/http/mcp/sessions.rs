//! MCP sessions in the store: each session's `initialize` parameters, so that any
//! instance of a deployment can continue a session another instance started (rmcp
//! replays the handshake from them). Keys hold the SHA-256 of the session id.

use std::time::Duration;

use rmcp::transport::streamable_http_server::session::store::{
    SessionState, SessionStore, SessionStoreError,
};

use serde::{Deserialize, Serialize};

use crate::{
    oauth::{client::ClientId, secret::SecretHash},
    resource::ResourceUri,
    store::{decode, encode, Key, Kind, Put, SharedStore, StoreResult},
};

/// How long an idle MCP session can be restored on another instance.
pub const MCP_SESSION_TTL: Duration = Duration::from_secs(24 * 3600);

pub struct StoreSessions(pub SharedStore);

fn session_key(session_id: &str) -> Key {
    Key::new(Kind::MCP_SESSION, SecretHash::of(session_id).as_str())
}

#[async_trait::async_trait]
impl SessionStore for StoreSessions {
    async fn load(&self, session_id: &str) -> Result<Option<SessionState>, SessionStoreError> {
        match self.0.get(&session_key(session_id)).await? {
            Some(raw) => Ok(Some(decode(&raw)?)),
            None => Ok(None),
        }
    }

    async fn store(&self, session_id: &str, state: &SessionState) -> Result<(), SessionStoreError> {
        Ok(self
            .0
            .put(
                &session_key(session_id),
                &encode(state)?,
                Put::ttl(MCP_SESSION_TTL),
            )
            .await?)
    }

    async fn delete(&self, session_id: &str) -> Result<(), SessionStoreError> {
        self.0.delete(&session_key(session_id)).await?;
        Ok(())
    }
}

/// Which client opened a session, on which resource. The guard reads it with the
/// token and answers a session used by any other client as unknown (404), so a
/// session id is never a credential (MCP security best practices, "Session
/// Hijacking"). Kept in the store, so the binding holds on every instance.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub client_id: ClientId,
    pub resource: ResourceUri,
}

pub fn binding_key(session_id: &str) -> Key {
    Key::new(Kind::MCP_BINDING, SecretHash::of(session_id).as_str())
}

pub async fn bind(store: &SharedStore, session_id: &str, binding: &Binding) -> StoreResult<()> {
    store
        .put(
            &binding_key(session_id),
            &encode(binding)?,
            Put::ttl(MCP_SESSION_TTL),
        )
        .await
}

/// Whether a binding record (as read with the token) lets this client use the session.
pub fn allows(record: Option<&[u8]>, client_id: &ClientId, resource: &ResourceUri) -> bool {
    record
        .and_then(|raw| decode::<Binding>(raw).ok())
        .is_some_and(|b| b.client_id == *client_id && b.resource == *resource)
}
