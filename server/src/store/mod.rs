//! Storage behind one small trait. The OAuth and MCP layers keep every piece of state
//! here: short-lived records with a TTL (codes, tokens, sessions, tickets), ordinary
//! records without one (clients, articles), and groups, so that every key of one grant
//! can be revoked at once.
//!
//! Backends: [`embedded::EmbeddedStore`] (redb, the default) and [`redis::RedisStore`]
//! (fred). Both run the same behaviour suite in `conformance`.

use std::{fmt, sync::Arc, time::Duration};

use async_trait::async_trait;

pub mod embedded;
pub mod redis;

#[cfg(test)]
pub(crate) mod conformance;

/// The kinds of record, one each: the first segment of every key. The README's key
/// layout table lists the same names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Kind(&'static str);

impl Kind {
    pub const CLIENT: Kind = Kind("client");
    pub const GRANT: Kind = Kind("grant");
    pub const CODE: Kind = Kind("code");
    pub const ACCESS: Kind = Kind("at");
    pub const REFRESH: Kind = Kind("rt");
    pub const SUCCESSOR: Kind = Kind("next");
    pub const SESSION: Kind = Kind("session");
    pub const TICKET: Kind = Kind("ticket");
    pub const SETUP: Kind = Kind("setup");
    pub const OWNER: Kind = Kind("owner");
    pub const MCP_SESSION: Kind = Kind("mcp-session");
    /// Which client (and resource) an MCP session belongs to.
    pub const MCP_BINDING: Kind = Kind("mcp-bind");
    pub const ARTICLE: Kind = Kind("article");
    /// A grant's use: when last, how many tool calls per hour.
    pub const USAGE: Kind = Kind("usage");
    /// A client-ID metadata document whose client obtained tokens here.
    pub const PROVEN: Kind = Kind("proven");
    /// A browser the owner signed in with.
    pub const DEVICE: Kind = Kind("device");
    /// For the store's own tests.
    #[cfg(test)]
    pub const TEST: Kind = Kind("test");

    pub fn as_str(self) -> &'static str {
        self.0
    }

    /// Whether `key`'s first segment is one of ours: what a scan of a shared Redis
    /// keeps (a deployment whose prefix extends ours, `gatehouse:staging:`, shares
    /// our pattern; its keys start with `staging:`).
    pub fn owns(key: &str) -> bool {
        let kind = key.split(':').next().unwrap_or_default();
        #[cfg(test)]
        if kind == Kind::TEST.0 {
            return true;
        }
        [
            Kind::CLIENT,
            Kind::GRANT,
            Kind::CODE,
            Kind::ACCESS,
            Kind::REFRESH,
            Kind::SUCCESSOR,
            Kind::SESSION,
            Kind::TICKET,
            Kind::SETUP,
            Kind::OWNER,
            Kind::MCP_SESSION,
            Kind::MCP_BINDING,
            Kind::ARTICLE,
            Kind::USAGE,
            Kind::PROVEN,
            Kind::DEVICE,
        ]
        .iter()
        .any(|k| k.0 == kind)
    }
}

/// A key in the store. Keys are built only through the constructors below, so every
/// key has the shape `kind:id` or, inside a group, `kind:{group}:id`. The braces make
/// the group a Redis Cluster hash tag: all keys of one group land in one slot. This
/// grammar lives here alone; both backends and the import read groups through
/// [`Key::group`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(String);

impl Key {
    /// A key outside any group.
    pub fn new(kind: Kind, id: &str) -> Self {
        Key::of(&[kind.0, ":", id])
    }

    /// A key that belongs to `group`; put it with [`Put::in_group`] so that
    /// [`Store::delete_group`] removes it.
    pub fn in_group(kind: Kind, group: &Group, id: &str) -> Self {
        Key::of(&[kind.0, ":{", &group.0, "}:", id])
    }

    /// The parts joined, in one allocation. Keys are built several times per
    /// request (the token's, a session binding's, a record the call reads), and
    /// `format!`'s machinery cost several times the copying (callgrind of the
    /// `/mcp` load, 2026-12-04).
    fn of(parts: &[&str]) -> Self {
        let mut key = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        for part in parts {
            key.push_str(part);
        }
        Key(key)
    }

    /// Rebuilds a key read back from [`Store::scan`] or an export.
    pub fn from_raw(raw: impl Into<String>) -> Self {
        Key(raw.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The group whose hash tag this key carries (`kind:{group}:id`), if any.
    pub fn group(&self) -> Option<Group> {
        let (_, rest) = self.0.split_once(":{")?;
        let (group, _) = rest.split_once("}:")?;
        Group::parse(group)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A set of keys that is deleted as one, e.g. everything issued from one grant. Its id
/// is 1 to 64 characters of `[A-Za-z0-9_-]`: it is part of every member's key and of
/// tokens handed to clients.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Group(String);

impl Group {
    pub const MAX_LEN: usize = 64;

    pub fn parse(id: &str) -> Option<Self> {
        let plain = !id.is_empty()
            && id.len() <= Self::MAX_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        plain.then(|| Group(id.to_owned()))
    }

    /// A fresh random group id (128 bits).
    pub fn random() -> Self {
        Group(crate::oauth::secret::random_id())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How a value is written.
#[derive(Clone, Copy, Debug, Default)]
pub struct Put<'a> {
    /// Expire the record after this long; `None` keeps it until deleted.
    pub ttl: Option<Duration>,
    /// Make the record a member of this group.
    pub group: Option<&'a Group>,
}

impl<'a> Put<'a> {
    /// A record without expiry, outside any group.
    pub fn forever() -> Self {
        Put::default()
    }

    pub fn ttl(ttl: Duration) -> Self {
        Put {
            ttl: Some(ttl),
            group: None,
        }
    }

    pub fn in_group(self, group: &'a Group) -> Self {
        Put {
            group: Some(group),
            ..self
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached now (a service is down, a timeout passed). Callers
    /// answer 503 and try again later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The backend answered but failed (a bug, a full disk).
    #[error("store failure: {0}")]
    Backend(String),
    /// A record is not what its key says it holds.
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// What to tell a caller (never the details, which go to the log): whether
    /// trying again may help.
    pub fn for_caller(&self) -> &'static str {
        match self {
            StoreError::Unavailable(_) => "the server cannot reach its store; try again shortly",
            StoreError::Backend(_) => "the server's store failed; its log says why",
            StoreError::Corrupt(_) => {
                "a record in the server's store cannot be read; the server's log names it"
            }
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Encodes a record as JSON, the format of every record above the store.
pub fn encode<T: serde::Serialize>(record: &T) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(record).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Decodes a record written by [`encode`].
pub fn decode<T: serde::de::DeserializeOwned>(raw: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(raw).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The operations every layer of Gatehouse needs, and no more.
///
/// Every operation is atomic on its own. Expired records are never returned, whether
/// or not the backend has physically removed them yet.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Writes `value` under `key`, replacing what was there (and its TTL and group).
    async fn put(&self, key: &Key, value: &[u8], put: Put<'_>) -> StoreResult<()>;

    /// Writes `value` only when `key` holds nothing; returns whether it wrote.
    async fn put_new(&self, key: &Key, value: &[u8], put: Put<'_>) -> StoreResult<bool>;

    async fn get(&self, key: &Key) -> StoreResult<Option<Vec<u8>>>;

    /// Reads several keys, in one round trip where the backend has round trips (Redis
    /// pipelines them). Each read is atomic on its own; the set is not a snapshot.
    async fn get_many(&self, keys: &[&Key]) -> StoreResult<Vec<Option<Vec<u8>>>> {
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            values.push(self.get(key).await?);
        }
        Ok(values)
    }

    /// Gets and deletes in one step: of many concurrent takers of one key, exactly one
    /// receives the value. Consent tickets and setup links rely on this (codes are
    /// marked used by [`Store::compare_and_swap`] instead, so that a replay is seen).
    async fn take(&self, key: &Key) -> StoreResult<Option<Vec<u8>>>;

    /// Replaces the value only while it still equals `expected`; returns whether it
    /// replaced. Refresh-token rotation relies on this to rotate exactly once.
    async fn compare_and_swap(
        &self,
        key: &Key,
        expected: &[u8],
        new: &[u8],
        put: Put<'_>,
    ) -> StoreResult<bool>;

    /// Deletes `key`; returns whether it held a live value.
    async fn delete(&self, key: &Key) -> StoreResult<bool>;

    /// Deletes every member of `group`; returns how many live records went.
    async fn delete_group(&self, group: &Group) -> StoreResult<u64>;

    /// Every live record whose key starts with `prefix`, in key order. For listings
    /// (articles, clients) and export; not for hot paths.
    async fn scan(&self, prefix: &str) -> StoreResult<Vec<(Key, Vec<u8>)>>;

    /// Every live record with its remaining lifetime and group, for moving a
    /// deployment from one backend to another (`gatehouse store export`).
    async fn export(&self) -> StoreResult<Vec<Entry>>;

    /// Appends `entries` to the append-only log `name` (the activity log), keeping at
    /// most `cap` entries and none older than `max_age` (with no entries, it only
    /// trims). Entries get increasing ids.
    /// Logs are not records: [`Store::scan`] and [`Store::export`] do not see them.
    async fn log_append(
        &self,
        name: &str,
        entries: &[Vec<u8>],
        cap: usize,
        max_age: Duration,
    ) -> StoreResult<()>;

    /// Up to `limit` entries of log `name`, newest first, each with its id; with
    /// `before`, only entries older than that id (the next page).
    async fn log_read(
        &self,
        name: &str,
        limit: usize,
        before: Option<&str>,
    ) -> StoreResult<Vec<(String, Vec<u8>)>>;

    /// Checks that the backend answers, for `/healthz`.
    async fn ping(&self) -> StoreResult<()>;

    /// A short name for logs and health output.
    fn backend(&self) -> &'static str;
}

pub type SharedStore = Arc<dyn Store>;

/// One record as [`Store::export`] reads it and an import writes it back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: Key,
    pub value: Vec<u8>,
    /// What is left of its lifetime; `None` for records that do not expire.
    pub ttl: Option<Duration>,
    pub group: Option<Group>,
}

impl Entry {
    pub fn put(&self) -> Put<'_> {
        Put {
            ttl: self.ttl,
            group: self.group.as_ref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_documented_shape_and_give_their_group_back() {
        assert_eq!(Key::new(Kind::CLIENT, "abc").as_str(), "client:abc");
        let group = Group::parse("g-1_x").expect("group");
        let key = Key::in_group(Kind::ACCESS, &group, "h4sh");
        assert_eq!(key.as_str(), format!("{}:{{g-1_x}}:h4sh", Kind::ACCESS.0));
        assert_eq!(key.group(), Some(group));
        assert_eq!(Key::new(Kind::CLIENT, "abc").group(), None);
    }
}
