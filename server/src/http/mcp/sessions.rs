//! MCP sessions in the store: each session's `initialize` parameters, so that any
//! instance of a deployment can continue a session another instance started (rmcp
//! replays the handshake from them). Keys hold the SHA-256 of the session id.

use std::time::Duration;

use rmcp::transport::streamable_http_server::session::store::{
    SessionState, SessionStore, SessionStoreError,
};

use crate::{
    oauth::secret::SecretHash,
    store::{decode, encode, Key, Kind, Put, SharedStore},
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
