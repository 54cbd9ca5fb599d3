//! MCP sessions in the store: each session's `initialize` parameters, so that any
//! instance of a deployment can continue a session another instance started (rmcp
//! replays the handshake from them). Keys hold the SHA-256 of the session id.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use rmcp::transport::streamable_http_server::session::store::{
    SessionState, SessionStore, SessionStoreError,
};

use serde::{Deserialize, Serialize};

use crate::{
    clock::Clock,
    oauth::{client::ClientId, secret::SecretHash},
    resource::ResourceUri,
    store::{decode, encode, Key, Kind, Put, SharedStore, StoreResult},
    telemetry::FastHash,
};

/// How long an idle MCP session can be restored on another instance.
pub const MCP_SESSION_TTL: Duration = Duration::from_secs(24 * 3600);

/// How long a session in use is kept ([`renew`]); then it expires like an idle one,
/// and its client opens another (a client must, on 404). Without an end, a client
/// could keep every session it ever opened, and what it made the store hold would be
/// bounded only by its requests.
pub const MAX_SESSION_LIFE: Duration = Duration::from_secs(7 * 24 * 3600);

pub struct StoreSessions(pub SharedStore);

impl StoreSessions {
    /// Whether rmcp could still bring `session` back from its record (a store that
    /// fails counts as yes): a session not held in memory here may be after an idle
    /// close, a restart, or on another instance.
    pub async fn may_restore(&self, session: &str) -> bool {
        !matches!(self.0.get(&session_key(session)).await, Ok(None))
    }
}

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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub client_id: ClientId,
    pub resource: ResourceUri,
    /// When the session was opened, and when this was written (ms since the epoch;
    /// 0 for bindings written before these were kept). See [`Binding::is_due`].
    #[serde(default)]
    pub opened_at: u64,
    #[serde(default)]
    pub bound_at: u64,
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

/// Forgets an ended session's binding, here and in the store, so that its id is
/// refused (404) from now on; whether the store held it (of two removals of one,
/// one says so).
pub async fn unbind(
    store: &SharedStore,
    bindings: &RecentBindings,
    session_id: &str,
) -> StoreResult<bool> {
    bindings.forget(session_id);
    store.delete(&binding_key(session_id)).await
}

/// Bindings this instance read or wrote lately, so that every call in a session
/// does not hash its id and read its binding again. A binding never changes (a
/// session id is random and never reused), so an entry is trusted for
/// [`RecentBindings::TRUST`]; after that, or once the session ends here, the store
/// is asked again: a session ended on another instance is refused here within that
/// long, as a binding that expired in the store is.
pub struct RecentBindings {
    clock: Clock,
    seen: Mutex<crate::telemetry::FastMap<String, (Arc<Binding>, u64)>>,
}

impl RecentBindings {
    pub const TRUST: Duration = Duration::from_secs(60);
    /// Entries at most; when full, it starts again empty (sessions come back from
    /// the store at the cost of one read each).
    pub const MAX: usize = 4096;

    pub fn new(clock: Clock) -> Self {
        RecentBindings {
            clock,
            seen: Mutex::default(),
        }
    }

    fn seen(
        &self,
    ) -> std::sync::MutexGuard<'_, crate::telemetry::FastMap<String, (Arc<Binding>, u64)>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session's binding, when this instance saw it less than [`Self::TRUST`] ago.
    pub fn get(&self, session: &str) -> Option<Arc<Binding>> {
        let now = self.clock.now_ms();
        let seen = self.seen();
        let (binding, at) = seen.get(session)?;
        (now.saturating_sub(*at) < Self::TRUST.as_millis() as u64).then(|| binding.clone())
    }

    pub fn remember(&self, session: &str, binding: Arc<Binding>) {
        let now = self.clock.now_ms();
        let mut seen = self.seen();
        if seen.len() >= Self::MAX && !seen.contains_key(session) {
            seen.clear();
        }
        seen.insert(session.to_owned(), (binding, now));
    }

    pub fn forget(&self, session: &str) {
        self.seen().remove(session);
    }
}

/// Keeps a session in use past [`MCP_SESSION_TTL`]: its binding (read as `raw`),
/// written again with `now`, and rmcp's record of its `initialize`, for another TTL
/// each. Without this a session used for longer than a day would be answered 404 in
/// the middle of its work, once its binding expired. Each is replaced only while it
/// is still what was read, so a session ended meanwhile is not brought back.
pub async fn renew(
    store: &SharedStore,
    session_id: &str,
    raw: &[u8],
    binding: &Binding,
    now: u64,
) -> StoreResult<()> {
    let renewed = Binding {
        opened_at: binding.opened(now),
        bound_at: now,
        ..binding.clone()
    };
    let ttl = Put::ttl(MCP_SESSION_TTL);
    let key = binding_key(session_id);
    if !store
        .compare_and_swap(&key, raw, &encode(&renewed)?, ttl)
        .await?
    {
        return Ok(());
    }
    let record = session_key(session_id);
    if let Some(state) = store.get(&record).await? {
        store.compare_and_swap(&record, &state, &state, ttl).await?;
    }
    Ok(())
}

impl Binding {
    /// Whether the session has been in use for half its TTL since its binding was
    /// written, so that [`renew`] should keep it for another, unless it is near its
    /// [`MAX_SESSION_LIFE`]. A binding written before `opened_at` was kept renews
    /// once, with its session counted as opened then.
    pub fn is_due(&self, now: u64) -> bool {
        now.saturating_sub(self.bound_at) >= MCP_SESSION_TTL.as_millis() as u64 / 2
            && now
                .saturating_sub(self.opened(now))
                .saturating_add(MCP_SESSION_TTL.as_millis() as u64)
                <= MAX_SESSION_LIFE.as_millis() as u64
    }

    /// When the session opened; `now` for a binding written before that was kept.
    fn opened(&self, now: u64) -> u64 {
        if self.opened_at == 0 {
            now
        } else {
            self.opened_at
        }
    }

    /// Whether this client may use the session on this resource.
    pub fn allows(&self, client_id: &ClientId, resource: &ResourceUri) -> bool {
        self.client_id == *client_id && self.resource == *resource
    }
}

/// The binding a record holds, if it is one.
pub fn binding_of(record: Option<&[u8]>) -> Option<Binding> {
    record.and_then(|raw| decode::<Binding>(raw).ok())
}

/// The keys of tokens that passed the guard lately: only their calls have what
/// they will read fetched with the token (see the guard). At [`VerifiedTokens::MAX`]
/// it starts again empty; a token that lost its place has one more call without
/// reading ahead.
#[derive(Default)]
pub struct VerifiedTokens {
    keys: Mutex<HashSet<Key, FastHash>>,
}

impl VerifiedTokens {
    pub const MAX: usize = 4096;

    pub fn contains(&self, key: &Key) -> bool {
        self.lock().contains(key)
    }

    pub fn insert(&self, key: &Key) {
        let mut keys = self.lock();
        if keys.contains(key) {
            return;
        }
        if keys.len() >= Self::MAX {
            keys.clear();
        }
        keys.insert(key.clone());
    }

    pub fn remove(&self, key: &Key) {
        self.lock().remove(key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<Key, FastHash>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(client: &str) -> Binding {
        Binding {
            client_id: ClientId::parse(client).expect("client id"),
            resource: ResourceUri::new("https://gh.example/mcp".into()),
            opened_at: 0,
            bound_at: 0,
        }
    }

    #[test]
    fn a_remembered_binding_answers_for_a_while_then_the_store_is_asked_again() {
        let clock = Clock::manual();
        let recent = RecentBindings::new(clock.clone());
        assert_eq!(recent.get("s1"), None);
        recent.remember("s1", Arc::new(binding("c1")));
        assert_eq!(recent.get("s1").as_deref(), Some(&binding("c1")));
        assert_eq!(recent.get("s2"), None);
        // The manual clock is the system's plus what the test adds, so real time
        // passes too: a second of margin for a loaded machine.
        clock.advance(RecentBindings::TRUST - Duration::from_secs(1));
        assert!(recent.get("s1").is_some());
        clock.advance(Duration::from_secs(1));
        assert_eq!(recent.get("s1"), None, "stale");
        recent.remember("s1", Arc::new(binding("c1")));
        recent.forget("s1");
        assert_eq!(recent.get("s1"), None, "ended");
    }

    #[test]
    fn a_binding_allows_only_its_client_on_its_resource() {
        let bound = binding("c1");
        let resource = ResourceUri::new("https://gh.example/mcp".into());
        let other = ResourceUri::new("https://gh.example/mcp/x".into());
        assert!(bound.allows(&binding("c1").client_id, &resource));
        assert!(!bound.allows(&binding("c2").client_id, &resource));
        assert!(!bound.allows(&binding("c1").client_id, &other));
    }

    #[test]
    fn a_binding_renews_after_half_a_day_until_its_session_is_a_week_old() {
        const HOUR: u64 = 3600 * 1000;
        let opened = 1_000 * HOUR;
        let at = |bound: u64| Binding {
            opened_at: opened,
            bound_at: opened + bound * HOUR,
            ..binding("c1")
        };
        assert!(!at(0).is_due(opened + 11 * HOUR));
        assert!(at(0).is_due(opened + 12 * HOUR));
        // Renewed for a day from now, so not after 6 days: it ends within the week.
        assert!(at(130).is_due(opened + 144 * HOUR));
        assert!(!at(140).is_due(opened + 145 * HOUR));
        assert!(!at(132).is_due(opened + 145 * HOUR), "past the week");
        // Written before the times were kept: renewed once, as if opened now.
        let old = binding("c1");
        assert!(old.is_due(opened));
    }

    #[test]
    fn the_remembered_bindings_are_bounded() {
        let recent = RecentBindings::new(Clock::manual());
        for i in 0..RecentBindings::MAX + 10 {
            recent.remember(&format!("s{i}"), Arc::new(binding("c1")));
        }
        assert!(recent.seen().len() <= RecentBindings::MAX);
    }
}
