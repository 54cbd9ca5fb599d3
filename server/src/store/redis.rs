//! The Redis backend, through `fred`: a connection pool with bounded timeouts and
//! reconnection with backoff, for deployments where several instances share state.
//! Every URL form fred understands works: `redis://`, `rediss://` (TLS),
//! `redis-cluster://` and `redis-sentinel://`.
//!
//! Key layout (see the README's table): every store key is `<prefix><key>`; a group's
//! member set is `<prefix>grp:{<group>}`. Keys of a group are built as
//! `kind:{<group>}:id`, so a group and all its members share one hash tag and one
//! Cluster slot, which lets the group scripts below touch them atomically. TTLs are
//! Redis's own (`PX`), so nothing outlives its lifetime even if no instance runs.

use std::time::Duration;

use async_trait::async_trait;
use fred::{bytes::Bytes, prelude::*, types::config::UnresponsiveConfig};
use futures::StreamExt;

use super::{Entry, Group, Key, Kind, Put, Store, StoreError, StoreResult};

/// A command that takes longer than this fails, so callers answer 503 promptly.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest wait between reconnection attempts while Redis is away.
const RECONNECT_MAX_DELAY_MS: u32 = 1_000;
/// How long a command may go unanswered before its connection counts as dead.
const UNRESPONSIVE_AFTER: Duration = Duration::from_secs(5);

/// Writes a value and keeps its group's member set (and the set's TTL, the longest of
/// its members') in step. KEYS: the key, then its group set when the key's name carries
/// a group tag (same slot). ARGV: value, ttl ms (0 = none), mode ("set", "nx" or "cas"),
/// expected value (cas), "1" when the key is put as a member of that group.
const PUT_SCRIPT: &str = r#"
local key, tag = KEYS[1], KEYS[2]
local value, ttl, mode, expected, member = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
if mode == "nx" then
  if redis.call("EXISTS", key) == 1 then return 0 end
elseif mode == "cas" then
  if redis.call("GET", key) ~= expected then return 0 end
end
if ttl > 0 then
  redis.call("SET", key, value, "PX", ttl)
else
  redis.call("SET", key, value)
end
if tag then
  if member == "1" then
    local pttl = redis.call("PTTL", tag)
    redis.call("SADD", tag, key)
    -- Members that expired on their own stay in the set until pruned here, a
    -- random few per write, so the work per write is bounded however large the
    -- set; members deleted explicitly leave it at once (DELETE_MEMBER_SCRIPT).
    if redis.call("SCARD", tag) > PRUNE_ABOVE then
      for _, m in ipairs(redis.call("SRANDMEMBER", tag, PRUNE_SAMPLE)) do
        if redis.call("EXISTS", m) == 0 then redis.call("SREM", tag, m) end
      end
    end
    if ttl == 0 then
      redis.call("PERSIST", tag)
    elseif pttl == -2 or (pttl >= 0 and pttl < ttl) then
      redis.call("PEXPIRE", tag, ttl)
    end
  else
    redis.call("SREM", tag, key)
  end
end
return 1
"#;

/// A group set is pruned of expired members when a put finds more than this many,
/// checking this many random members per put.
const PRUNE_ABOVE: u32 = 16;
const PRUNE_SAMPLE: u32 = 8;

/// Deletes a group member and leaves its set. KEYS: the key, its group set.
const DELETE_MEMBER_SCRIPT: &str = r#"
local deleted = redis.call("DEL", KEYS[1])
redis.call("SREM", KEYS[2], KEYS[1])
return deleted
"#;

/// Deletes up to ARGV[1] members of a group; returns {deleted, members left}. Called
/// until none are left, so revoking a large group never blocks Redis for long (a
/// script runs alone). KEYS: the group set.
const DELETE_GROUP_BATCH_SCRIPT: &str = r#"
local members = redis.call("SPOP", KEYS[1], tonumber(ARGV[1]))
local deleted = 0
for _, member in ipairs(members) do
  deleted = deleted + redis.call("DEL", member)
end
return {deleted, redis.call("SCARD", KEYS[1])}
"#;

/// Appends to a log (a Redis stream) and trims it by length and by age. KEYS: the
/// stream. ARGV: the most entries to keep, the oldest id to keep, then the entries
/// (none: it only trims).
const LOG_APPEND_SCRIPT: &str = r#"
for i = 3, #ARGV do
  redis.call("XADD", KEYS[1], "*", "v", ARGV[i])
end
redis.call("XTRIM", KEYS[1], "MAXLEN", ARGV[1])
redis.call("XTRIM", KEYS[1], "MINID", ARGV[2])
return 1
"#;

/// Members deleted per script call by [`Store::delete_group`].
const DELETE_BATCH: usize = 200;

/// Keys read per round trip by `scan`.
const SCAN_READ_BATCH: usize = 200;

/// [`PUT_SCRIPT`] with its pruning threshold filled in.
fn put_script() -> &'static str {
    static SCRIPT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| {
        PUT_SCRIPT
            .replace("PRUNE_ABOVE", &PRUNE_ABOVE.to_string())
            .replace("PRUNE_SAMPLE", &PRUNE_SAMPLE.to_string())
    })
}

pub struct RedisStore {
    pool: Pool,
    prefix: String,
}

/// Redis's answers that mean "not now": it is loading its data after a restart, a
/// replica became read-only in a failover, its memory is full, a script is busy,
/// it cannot persist, or the cluster is moving slots. Callers keep what they
/// would otherwise drop (usage counts) and tell the client to try again shortly.
const REFUSED_FOR_NOW: [&str; 9] = [
    "LOADING",
    "READONLY",
    "OOM",
    "BUSY",
    "MASTERDOWN",
    "MISCONF",
    "NOREPLICAS",
    "TRYAGAIN",
    "CLUSTERDOWN",
];

fn unavailable(e: Error) -> StoreError {
    let first = e.details().split_whitespace().next().unwrap_or("");
    match e.kind() {
        ErrorKind::IO
        | ErrorKind::Timeout
        | ErrorKind::Canceled
        | ErrorKind::Backpressure
        | ErrorKind::Cluster => StoreError::Unavailable(e.to_string()),
        _ if REFUSED_FOR_NOW.contains(&first) => StoreError::Unavailable(e.to_string()),
        _ if e.to_string().contains("connection") => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Backend(e.to_string()),
    }
}

/// Whether Redis with these `maxmemory` and `maxmemory-policy` may drop keys when
/// its memory is full, a grant's member set (`grp:{…}`) among them, after which
/// revoking the grant deletes nothing. No limit (`0`) evicts nothing.
pub fn evicts((maxmemory, policy): &(String, String)) -> bool {
    maxmemory != "0" && policy != "noeviction"
}

impl RedisStore {
    /// Connects to `url` with `connections` pipelined connections; every key gets
    /// `prefix` (no braces: it must not contain a hash tag of its own).
    pub async fn connect(url: &str, prefix: &str, connections: usize) -> StoreResult<Self> {
        if prefix.contains(['{', '}']) {
            return Err(StoreError::Backend(
                "the Redis key prefix must not contain braces".into(),
            ));
        }
        let config = Config::from_url(url)
            .map_err(|e| StoreError::Backend(format!("bad Redis URL: {e}")))?;
        let pool = Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = CONNECT_TIMEOUT;
                c.internal_command_timeout = COMMAND_TIMEOUT;
                // Never send a command again: one whose connection closed before
                // its reply may have run, and a second run of a script answers
                // differently (a compare-and-swap that swapped says no, which a
                // code redemption reads as a replay). An outcome nobody saw is an
                // error, which callers answer with 503 and clients retry.
                c.max_command_attempts = 1;
                // A connection whose host vanished without a reset (a node lost, a
                // partition during a failover) looks open until the kernel gives up,
                // about 15 minutes on Linux: every command on it would time out
                // meanwhile. It is closed and made again once what was sent on it
                // goes unacknowledged this long (TCP_USER_TIMEOUT: under load), or
                // a command on it goes unanswered this long with nothing sent after
                // it (fred's check: when calls pause).
                #[cfg(target_os = "linux")]
                {
                    c.tcp.user_timeout = Some(UNRESPONSIVE_AFTER);
                }
                c.unresponsive = UnresponsiveConfig {
                    max_timeout: Some(UNRESPONSIVE_AFTER),
                    interval: Duration::from_secs(1),
                };
                // The command queue stays unbounded (`max_command_buffer_len`):
                // fred sends its own reconnection through the same queue, and a full
                // bounded one ends its routing task for good (fred 10.1). Requests
                // waiting on a Redis that is away give up after COMMAND_TIMEOUT.
            })
            .with_performance_config(|p| {
                p.default_command_timeout = COMMAND_TIMEOUT;
            })
            // Reconnect forever, backing off from 100 ms to at most 1 s: Redis may come
            // back, and service should resume within about a second when it does (the
            // soak run's goal is 2 s; with a 5 s cap it measured 3.2 s). An attempt
            // against a dead Redis is one refused TCP connect, cheap even every second.
            .set_policy(ReconnectPolicy::new_exponential(
                0,
                100,
                RECONNECT_MAX_DELAY_MS,
                2,
            ))
            .build_pool(connections.max(1))
            .map_err(|e| StoreError::Backend(format!("cannot configure Redis: {e}")))?;
        match tokio::time::timeout(CONNECT_TIMEOUT * 2, pool.init()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(StoreError::Unavailable(format!(
                    "cannot connect to Redis: {e}"
                )))
            }
            Err(_) => {
                return Err(StoreError::Unavailable(
                    "cannot connect to Redis: timed out".into(),
                ))
            }
        }
        let store = RedisStore {
            pool,
            prefix: prefix.to_owned(),
        };
        let info: Option<String> = store
            .pool
            .info(Some(fred::types::InfoKind::Server))
            .await
            .ok();
        match info.as_deref().and_then(redis_version) {
            Some(version) if version < MIN_REDIS => {
                return Err(StoreError::Backend(format!(
                    "Redis {}.{} is too old: Gatehouse needs {}.{} or newer (GETDEL, \
                     XTRIM MINID); without them no approval or sign-in setup could finish",
                    version.0, version.1, MIN_REDIS.0, MIN_REDIS.1
                )))
            }
            Some(_) => {}
            None => tracing::warn!(
                "cannot read Redis's version (INFO may be disabled); Gatehouse needs 6.2 or newer"
            ),
        }
        match store.eviction_policy().await {
            Some(policy) if evicts(&policy) => tracing::warn!(
                policy = %policy.1,
                "Redis may evict keys when its memory is full (maxmemory-policy); a grant \
                 whose key set it evicts can no longer be revoked: set it to noeviction"
            ),
            Some(_) => {}
            None => tracing::warn!(
                "cannot read Redis's maxmemory and maxmemory-policy (CONFIG may be disabled, \
                 as on managed services); Redis must not evict keys (noeviction), or a \
                 revoked grant may keep working"
            ),
        }
        Ok(store)
    }

    /// Redis's `maxmemory` and `maxmemory-policy` (of the node that answers), when
    /// `CONFIG GET` may be used.
    pub async fn eviction_policy(&self) -> Option<(String, String)> {
        let read = |name: &'static str| async move {
            let reply: std::collections::HashMap<String, String> =
                self.pool.config_get(name).await.ok()?;
            reply.get(name).cloned()
        };
        Some((read("maxmemory").await?, read("maxmemory-policy").await?))
    }

    fn key(&self, key: &Key) -> String {
        format!("{}{}", self.prefix, key.as_str())
    }

    fn log_key(&self, name: &str) -> String {
        format!("{}log:{name}", self.prefix)
    }

    fn group_set(&self, group: &str) -> String {
        format!("{}grp:{{{group}}}", self.prefix)
    }

    /// The group set of a key built with [`Key::in_group`], from its name.
    fn tag_set(&self, key: &Key) -> Option<String> {
        key.group().map(|group| self.group_set(group.as_str()))
    }

    async fn write(
        &self,
        key: &Key,
        value: &[u8],
        put: Put<'_>,
        mode: &str,
        expected: &[u8],
    ) -> StoreResult<bool> {
        // Redis keeps a key with a negative lifetime for ever: one too long for it is
        // refused instead (flags allow ten years at most).
        let ttl = match put.ttl.map(|t| i64::try_from(t.as_millis())) {
            None => 0,
            Some(Ok(ms)) => ms.max(1),
            Some(Err(_)) => {
                return Err(StoreError::Backend(format!(
                    "{key}: a lifetime too long to keep"
                )))
            }
        };
        let tag = self.tag_set(key);
        if let Some(group) = put.group {
            if tag.as_deref() != Some(self.group_set(group.as_str()).as_str()) {
                return Err(StoreError::Backend(format!(
                    "{key} is not a key of group {}",
                    group.as_str()
                )));
            }
        }
        let mut keys = vec![self.key(key)];
        keys.extend(tag);
        let args: Vec<Value> = vec![
            Value::Bytes(Bytes::copy_from_slice(value)),
            Value::from(ttl),
            Value::from(mode),
            Value::Bytes(Bytes::copy_from_slice(expected)),
            Value::from(if put.group.is_some() { "1" } else { "0" }),
        ];
        let wrote: i64 = self
            .pool
            .eval(put_script(), keys, args)
            .await
            .map_err(unavailable)?;
        Ok(wrote == 1)
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn put(&self, key: &Key, value: &[u8], put: Put<'_>) -> StoreResult<()> {
        self.write(key, value, put, "set", b"").await.map(|_| ())
    }

    async fn put_new(&self, key: &Key, value: &[u8], put: Put<'_>) -> StoreResult<bool> {
        self.write(key, value, put, "nx", b"").await
    }

    async fn get(&self, key: &Key) -> StoreResult<Option<Vec<u8>>> {
        let value: Option<Bytes> = self.pool.get(self.key(key)).await.map_err(unavailable)?;
        Ok(value.map(|b| b.to_vec()))
    }

    async fn get_many(&self, keys: &[&Key]) -> StoreResult<Vec<Option<Vec<u8>>>> {
        match keys {
            [] => return Ok(Vec::new()),
            [key] => return Ok(vec![self.get(key).await?]),
            _ => {}
        }
        let client = self.pool.next();
        let values: Vec<Option<Bytes>> = if client.is_clustered() {
            // One write and one read on one connection, whatever the number of
            // keys; unlike MGET, a pipeline also works when the keys live on
            // different cluster slots.
            let pipeline = client.pipeline();
            for key in keys {
                let _: () = pipeline.get(self.key(key)).await.map_err(unavailable)?;
            }
            pipeline.all().await.map_err(unavailable)?
        } else {
            // One command: as a pipeline of GETs, the guard's read (token and
            // session binding, on every MCP call) cost Gatehouse about 7 µs more
            // CPU per call (`cargo xtask bench`, 2026-12-02).
            let keys: Vec<String> = keys.iter().map(|key| self.key(key)).collect();
            client.mget(keys).await.map_err(unavailable)?
        };
        if values.len() != keys.len() {
            return Err(StoreError::Backend(format!(
                "Redis answered {} values for {} keys",
                values.len(),
                keys.len()
            )));
        }
        Ok(values.into_iter().map(|v| v.map(|b| b.to_vec())).collect())
    }

    async fn take(&self, key: &Key) -> StoreResult<Option<Vec<u8>>> {
        let value: Option<Bytes> = self.pool.getdel(self.key(key)).await.map_err(unavailable)?;
        Ok(value.map(|b| b.to_vec()))
    }

    async fn compare_and_swap(
        &self,
        key: &Key,
        expected: &[u8],
        new: &[u8],
        put: Put<'_>,
    ) -> StoreResult<bool> {
        self.write(key, new, put, "cas", expected).await
    }

    async fn delete(&self, key: &Key) -> StoreResult<bool> {
        let deleted: i64 = match self.tag_set(key) {
            Some(tag) => self
                .pool
                .eval(
                    DELETE_MEMBER_SCRIPT,
                    vec![self.key(key), tag],
                    Vec::<Value>::new(),
                )
                .await
                .map_err(unavailable)?,
            None => self.pool.del(self.key(key)).await.map_err(unavailable)?,
        };
        Ok(deleted > 0)
    }

    async fn delete_group(&self, group: &Group) -> StoreResult<u64> {
        let set = self.group_set(group.as_str());
        let mut total = 0;
        loop {
            let (deleted, left): (i64, i64) = self
                .pool
                .eval(
                    DELETE_GROUP_BATCH_SCRIPT,
                    vec![set.clone()],
                    vec![Value::from(DELETE_BATCH as i64)],
                )
                .await
                .map_err(unavailable)?;
            total += deleted.max(0) as u64;
            if left <= 0 {
                return Ok(total);
            }
        }
    }

    async fn scan(&self, prefix: &str) -> StoreResult<Vec<(Key, Vec<u8>)>> {
        let escaped: String = format!("{}{prefix}", self.prefix)
            .chars()
            .flat_map(|c| match c {
                '*' | '?' | '[' | ']' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        let pattern = format!("{escaped}*");
        let client = self.pool.next();
        let mut stream = if client.is_clustered() {
            client
                .scan_cluster_buffered(pattern, Some(1000), None)
                .boxed()
        } else {
            client.scan_buffered(pattern, Some(1000), None).boxed()
        };
        let mut keys = Vec::new();
        while let Some(key) = stream.next().await {
            let key = key.map_err(unavailable)?;
            if let Some(name) = key.as_str() {
                // Group sets and logs share the prefix namespace; they are not
                // records. Nor is what another deployment, whose prefix extends
                // ours, keeps.
                if let Some(name) = name.strip_prefix(self.prefix.as_str()) {
                    if Kind::owns(name) {
                        keys.push(name.to_owned());
                    }
                }
            }
        }
        keys.sort();
        keys.dedup();
        let keys: Vec<Key> = keys.into_iter().map(Key::from_raw).collect();
        let mut out = Vec::with_capacity(keys.len());
        // Read in batches, one round trip each (the console's grants, and each
        // instance's gateway session sweep, scan every minute).
        for batch in keys.chunks(SCAN_READ_BATCH) {
            let values = self.get_many(&batch.iter().collect::<Vec<_>>()).await?;
            for (key, value) in batch.iter().zip(values) {
                // A key that expired between SCAN and GET is simply not listed.
                if let Some(value) = value {
                    out.push((key.clone(), value));
                }
            }
        }
        Ok(out)
    }

    async fn export(&self) -> StoreResult<Vec<Entry>> {
        let mut out = Vec::new();
        for (key, value) in self.scan("").await? {
            let full = self.key(&key);
            let pttl: i64 = self.pool.pttl(&full).await.map_err(unavailable)?;
            if pttl == -2 {
                continue; // expired since the scan
            }
            let group = match key.group() {
                Some(group) => {
                    let member: bool = self
                        .pool
                        .sismember(self.group_set(group.as_str()), &full)
                        .await
                        .map_err(unavailable)?;
                    member.then_some(group)
                }
                None => None,
            };
            out.push(Entry {
                key,
                value,
                // -1: no expiry; 0: expiring this very millisecond.
                ttl: (pttl >= 0).then(|| Duration::from_millis(pttl.max(1) as u64)),
                group,
            });
        }
        Ok(out)
    }

    async fn log_append(
        &self,
        name: &str,
        entries: &[Vec<u8>],
        cap: usize,
        max_age: Duration,
    ) -> StoreResult<()> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let oldest = now_ms.saturating_sub(max_age.as_millis() as u64);
        let mut args: Vec<Value> = vec![Value::from(cap as i64), Value::from(oldest.to_string())];
        args.extend(
            entries
                .iter()
                .map(|e| Value::Bytes(Bytes::copy_from_slice(e))),
        );
        let _: i64 = self
            .pool
            .eval(LOG_APPEND_SCRIPT, vec![self.log_key(name)], args)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn log_read(
        &self,
        name: &str,
        limit: usize,
        before: Option<&str>,
    ) -> StoreResult<Vec<(String, Vec<u8>)>> {
        // Exclusive ranges (`(id`) need Redis 6.2.
        let end = match before {
            Some(before) if !before.is_empty() && !before.contains(char::is_whitespace) => {
                format!("({before}")
            }
            _ => "+".to_owned(),
        };
        let reply: Value = self
            .pool
            .xrevrange(self.log_key(name), end, "-", Some(limit as u64))
            .await
            .map_err(unavailable)?;
        let mut out = Vec::new();
        for entry in reply.into_array() {
            let mut parts = entry.into_array().into_iter();
            let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
                continue;
            };
            let mut fields = fields.into_array().into_iter();
            let (Some(_), Some(value)) = (fields.next(), fields.next()) else {
                continue;
            };
            if let (Some(id), Some(value)) = (id.as_string(), value.as_bytes()) {
                out.push((id, value.to_vec()));
            }
        }
        Ok(out)
    }

    /// A write, not `PING`: a Redis at its `maxmemory` under `noeviction` (the
    /// policy Gatehouse asks for) still answers `PING` and reads, and refuses every
    /// write, so that tokens, sign-ins and sessions all fail. `/healthz` takes one
    /// look at a time, at most every 100 ms. The key is no record's (exports skip
    /// it) and goes away by itself.
    async fn ping(&self) -> StoreResult<()> {
        let _: () = self
            .pool
            .set(
                format!("{}health", self.prefix),
                "1",
                Some(Expiration::PX(10_000)),
                None,
                false,
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}

/// Deletes every key under a prefix when dropped, so tests that use a random prefix
/// on a shared Redis leave nothing behind. For tests only.
#[doc(hidden)]
pub struct PurgeOnDrop {
    pub url: String,
    pub prefix: String,
}

impl Drop for PurgeOnDrop {
    fn drop(&mut self) {
        let (url, prefix) = (self.url.clone(), self.prefix.clone());
        // Drop cannot await, and the test's runtime may be shutting down: purge on a
        // thread with its own small runtime.
        let purge = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async move {
                let client = Builder::from_config(Config::from_url(&url).ok()?)
                    .build()
                    .ok()?;
                client.init().await.ok()?;
                let escaped: String = prefix
                    .chars()
                    .flat_map(|c| match c {
                        '*' | '?' | '[' | ']' | '\\' => vec!['\\', c],
                        c => vec![c],
                    })
                    .collect();
                let mut stream = client.scan_buffered(format!("{escaped}*"), Some(1000), None);
                let mut keys: Vec<fred::types::Key> = Vec::new();
                while let Some(Ok(key)) = stream.next().await {
                    keys.push(key);
                }
                for chunk in keys.chunks(500) {
                    let _: Result<i64, _> = client.unlink(chunk.to_vec()).await;
                }
                let _ = client.quit().await;
                Some(())
            })
        });
        let _ = purge.join();
    }
}

/// The oldest Redis with every command Gatehouse sends (`GETDEL`, `XTRIM MINID`,
/// exclusive `XREVRANGE` ranges).
const MIN_REDIS: (u32, u32) = (6, 2);

/// The `redis_version` (major, minor) of an `INFO server` answer.
fn redis_version(info: &str) -> Option<(u32, u32)> {
    let version = info
        .lines()
        .find_map(|line| line.trim().strip_prefix("redis_version:"))?;
    let mut parts = version.split('.').map(|part| part.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;

    /// What Redis answers while it reloads after a restart, in a failover or when
    /// full means "try again", not a broken store: callers keep what they would
    /// drop.
    #[test]
    fn redis_refusing_for_now_is_unavailable() {
        // As fred reads error replies: by their first word, most as Unknown.
        for (kind, reply) in [
            (
                ErrorKind::Unknown,
                "LOADING Redis is loading the dataset in memory",
            ),
            (
                ErrorKind::Unknown,
                "READONLY You can't write against a read only replica.",
            ),
            (
                ErrorKind::Unknown,
                "OOM command not allowed when used memory > 'maxmemory'.",
            ),
            (ErrorKind::Unknown, "MASTERDOWN Link with MASTER is down"),
            (ErrorKind::Cluster, "CLUSTERDOWN The cluster is down"),
        ] {
            let e = Error::new(kind, reply);
            assert!(
                matches!(unavailable(e), StoreError::Unavailable(_)),
                "{reply}"
            );
        }
        let wrong = Error::new(
            ErrorKind::InvalidArgument,
            "WRONGTYPE Operation against a key",
        );
        assert!(matches!(unavailable(wrong), StoreError::Backend(_)));
        let err = Error::new(ErrorKind::Unknown, "ERR unknown command 'GETDEL'");
        assert!(matches!(unavailable(err), StoreError::Backend(_)));
    }

    #[test]
    fn redis_versions_before_6_2_are_told_apart() {
        let info = |v: &str| format!("# Server\r\nredis_version:{v}\r\nredis_mode:standalone\r\n");
        assert_eq!(redis_version(&info("7.0.15")), Some((7, 0)));
        assert_eq!(redis_version(&info("6.0.16")), Some((6, 0)));
        assert!(redis_version(&info("6.0.16")).is_some_and(|v| v < MIN_REDIS));
        assert!(redis_version(&info("6.2.0")).is_some_and(|v| v >= MIN_REDIS));
        assert!(redis_version(&info("10.0.1")).is_some_and(|v| v >= MIN_REDIS));
        assert_eq!(redis_version("# Server\r\n"), None);
        assert_eq!(redis_version(&info("unknown")), None);
    }

    /// The Redis the tests use (`GATEHOUSE_TEST_REDIS_URL`, default the local one),
    /// with a random key prefix per test so tests run in parallel.
    pub(crate) async fn fresh() -> (PurgeOnDrop, RedisStore, conformance::Time) {
        let url = std::env::var("GATEHOUSE_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let prefix = format!("gatehouse-test:{}:", crate::oauth::secret::random_id());
        let store = RedisStore::connect(&url, &prefix, 2)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "Redis at {url} is needed for these tests ({e}); `cargo xtask test` starts one"
                )
            });
        (PurgeOnDrop { url, prefix }, store, conformance::Time::Real)
    }

    conformance::suite!(fresh);

    /// Passes bytes both ways, until told to go silent: then it keeps the
    /// connections open and passes nothing, as a host that vanished would.
    async fn pipe(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        silent: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if silent.load(std::sync::atomic::Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }

    /// A connection whose far end goes silent without closing is made again within
    /// seconds once calls pause, instead of failing every call until the kernel
    /// gives up on it (about 15 minutes).
    #[tokio::test]
    async fn a_connection_gone_silent_is_made_again() {
        use std::sync::{
            atomic::{AtomicBool, Ordering},
            Arc, Mutex,
        };
        let url = std::env::var("GATEHOUSE_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let mut proxied = url::Url::parse(&url).expect("Redis URL");
        let target = format!(
            "{}:{}",
            proxied.host_str().expect("host"),
            proxied.port().unwrap_or(6379)
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        proxied.set_host(Some("127.0.0.1")).expect("host");
        proxied
            .set_port(Some(listener.local_addr().expect("address").port()))
            .expect("port");
        let connections: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let made = connections.clone();
        tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let Ok(up) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let silent = Arc::new(AtomicBool::new(false));
                made.lock().expect("lock").push(silent.clone());
                let ((down_read, down_write), (up_read, up_write)) =
                    (down.into_split(), up.into_split());
                tokio::spawn(pipe(down_read, up_write, silent.clone()));
                tokio::spawn(pipe(up_read, down_write, silent));
            }
        });
        let prefix = format!("gatehouse-test:{}:", crate::oauth::secret::random_id());
        let _purge = PurgeOnDrop {
            url: url.clone(),
            prefix: prefix.clone(),
        };
        let store = RedisStore::connect(proxied.as_str(), &prefix, 1)
            .await
            .expect("connect");
        let key = Key::new(Kind::TEST, "silent");
        store.put(&key, b"kept", Put::forever()).await.expect("put");
        for silent in connections.lock().expect("lock").iter() {
            silent.store(true, Ordering::SeqCst);
        }
        assert!(store.get(&key).await.is_err(), "no answer comes");
        tokio::time::sleep(UNRESPONSIVE_AFTER + Duration::from_secs(2)).await;
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Ok(value) = store.get(&key).await {
                    return value;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await
        .expect("a new connection answers");
        assert_eq!(read.as_deref(), Some(&b"kept"[..]));
        assert!(connections.lock().expect("lock").len() >= 2);
    }
}
