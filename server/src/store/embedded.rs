//! The default store: one redb file. redb is crash-safe (copy-on-write B-trees, a
//! commit is durable when it returns), so a restart keeps everything stored.
//!
//! Layout, three tables:
//! - `kv`: key → record (`expires_at` in ms since the epoch or 0, the group, the value);
//! - `expiry`: (`expires_at` big-endian ‖ key) → (), so the sweeper finds expired keys
//!   in order without reading every record;
//! - `members`: (group ‖ NUL ‖ key) → (), so a group is deleted without a full scan.
//!
//! redb serialises writers, which makes every trait operation atomic; readers never
//! block. Calls run on tokio's blocking pool because commits wait for the disk.

use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Weak,
    },
    time::Duration,
};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};

use super::{Entry, Group, Key, Put, Store, StoreError, StoreResult};
use crate::clock::Clock;

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const EXPIRY: TableDefinition<&[u8], ()> = TableDefinition::new("expiry");
const MEMBERS: TableDefinition<&str, ()> = TableDefinition::new("members");
/// Append-only logs: (log name ‖ NUL ‖ 20-digit id) → entry, and each log's length.
const LOG: TableDefinition<&str, &[u8]> = TableDefinition::new("log");
const LOG_LEN: TableDefinition<&str, u64> = TableDefinition::new("log_len");

/// How often the background sweeper removes expired records from disk. Reads never
/// depend on it: an expired record is invisible from the moment it expires.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

const CACHE_BYTES: usize = 16 * 1024 * 1024;

#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    clock: Clock,
    /// Set once a write failed to reach the file (a full disk, say). redb then
    /// refuses every write until the database is opened again, while reads from
    /// its cache go on: `ping` (and so `/healthz`) reports it, for a supervisor to
    /// restart Gatehouse, which opens it again with every record committed before.
    broken: Arc<AtomicBool>,
}

impl EmbeddedStore {
    /// Opens (or creates) the database file and starts the expiry sweeper on the
    /// current tokio runtime.
    pub fn open(path: &Path) -> StoreResult<Self> {
        Self::open_with_clock(path, Clock::system())
    }

    /// Opens the store with expiry measured by `clock` (tests move it forward). The
    /// file is readable by its owner only.
    pub fn open_with_clock(path: &Path, clock: Clock) -> StoreResult<Self> {
        restrict_to_owner(path)
            .map_err(|e| StoreError::Backend(format!("cannot create {}: {e}", path.display())))?;
        // A bounded page cache: the records here are small, and an idle server should
        // stay small too (redb's default cache is large). Every open checks the
        // file: one altered since redb last wrote it (a partial restore, a bad copy)
        // is refused with an error, where a plain open trusts it and may panic. It
        // reads the whole file, which is small here.
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .set_check_integrity_on_open(true)
            .create(path)
            .map_err(|e| match e {
                // The usual cause: a maintenance command run beside the server.
                redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Backend(format!(
                    "cannot open {}: another process (a running Gatehouse?) has it open, and \
                     the embedded store admits one at a time: stop it first",
                    path.display()
                )),
                e => StoreError::Backend(format!("cannot open {}: {e}", path.display())),
            })?;
        Self::with_database(db, clock)
    }

    /// The store over an opened database.
    fn with_database(db: Database, clock: Clock) -> StoreResult<Self> {
        // Create the tables up front so that read transactions always find them.
        let txn = db.begin_write().map_err(backend)?;
        txn.open_table(KV).map_err(backend)?;
        txn.open_table(EXPIRY).map_err(backend)?;
        txn.open_table(MEMBERS).map_err(backend)?;
        txn.open_table(LOG).map_err(backend)?;
        txn.open_table(LOG_LEN).map_err(backend)?;
        txn.commit().map_err(backend)?;
        let store = EmbeddedStore {
            db: Arc::new(db),
            clock,
            broken: Arc::new(AtomicBool::new(false)),
        };
        store.spawn_sweeper();
        Ok(store)
    }

    fn spawn_sweeper(&self) {
        let weak: Weak<Database> = Arc::downgrade(&self.db);
        let clock = self.clock.clone();
        let broken = self.broken.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let mut tick = tokio::time::interval(SWEEP_INTERVAL);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    // Stop once the store is dropped, so tests do not leak sweepers.
                    let Some(db) = weak.upgrade() else { break };
                    let store = EmbeddedStore {
                        db,
                        clock: clock.clone(),
                        broken: broken.clone(),
                    };
                    if let Err(e) = store.sweep().await {
                        tracing::warn!(error = %e, "expiry sweep failed");
                    }
                }
            });
        }
    }

    /// Physically removes every record that has expired; returns how many.
    pub async fn sweep(&self) -> StoreResult<u64> {
        let now = self.clock.now_ms();
        self.write(move |txn| {
            let expired: Vec<Vec<u8>> = {
                let expiry = txn.open_table(EXPIRY).map_err(backend)?;
                let end = (now + 1).to_be_bytes();
                let range = expiry.range::<&[u8]>(..&end[..]).map_err(backend)?;
                let mut keys = Vec::new();
                for entry in range {
                    let (k, _) = entry.map_err(backend)?;
                    keys.push(k.value().to_vec());
                }
                keys
            };
            let mut tables = Tables::open(txn)?;
            let mut removed = 0;
            for index_key in expired {
                let key = std::str::from_utf8(&index_key[8..])
                    .map_err(|_| StoreError::Backend("corrupt expiry index".into()))?;
                tables.expiry.remove(&index_key[..]).map_err(backend)?;
                if let Some(record) = tables.read(key)? {
                    if record.expires_at != 0 && record.expires_at <= now {
                        tables.remove(key, &record)?;
                        removed += 1;
                    }
                }
            }
            Ok(removed)
        })
        .await
    }

    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> StoreResult<T> + Send + 'static,
    {
        let (db, broken) = (self.db.clone(), self.broken.clone());
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_write().map_err(|e| {
                // What redb answers once a write reached the file only in part, or
                // a commit failed and its allocator state was discarded.
                if let redb::TransactionError::Storage(
                    e @ (redb::StorageError::Io(_)
                    | redb::StorageError::PreviousIo
                    | redb::StorageError::Corrupted(_)),
                ) = &e
                {
                    mark_broken(&broken, e);
                }
                backend(e)
            })?;
            let out = f(&txn)?;
            txn.commit().map_err(|e| {
                // redb: after a commit that failed with any storage error, the
                // database refuses writes until it is opened again.
                if let redb::CommitError::Storage(e) = &e {
                    mark_broken(&broken, e);
                }
                backend(e)
            })?;
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }

    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&redb::ReadOnlyTable<&'static str, &'static [u8]>) -> StoreResult<T>
            + Send
            + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(backend)?;
            let kv = txn.open_table(KV).map_err(backend)?;
            f(&kv)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }

    /// A read on the calling task. Point lookups are served from redb's page cache in
    /// microseconds, less than the thread hand-off of the blocking pool would cost;
    /// the bearer guard does one per request, so this is the hot path.
    fn read_now<T>(
        &self,
        f: impl FnOnce(&redb::ReadOnlyTable<&'static str, &'static [u8]>) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let txn = self.db.begin_read().map_err(backend)?;
        let kv = txn.open_table(KV).map_err(backend)?;
        f(&kv)
    }
}

/// The value of `key` in a read transaction, unless it has expired.
fn live_value(
    kv: &redb::ReadOnlyTable<&'static str, &'static [u8]>,
    key: &Key,
    now: u64,
) -> StoreResult<Option<Vec<u8>>> {
    match kv.get(key.as_str()).map_err(backend)? {
        Some(raw) => Ok(Record::decode(raw.value())?
            .filter(|r| r.is_live(now))
            .map(|r| r.value)),
        None => Ok(None),
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn put(&self, key: &Key, value: &[u8], put: Put<'_>) -> StoreResult<()> {
        let now = self.clock.now_ms();
        let (key, record) = (key.as_str().to_owned(), Record::new(key, value, put, now)?);
        self.write(move |txn| {
            let mut tables = Tables::open(txn)?;
            tables.replace(&key, &record)
        })
        .await
    }

    async fn put_new(&self, key: &Key, value: &[u8], put: Put<'_>) -> StoreResult<bool> {
        let now = self.clock.now_ms();
        let (key, record) = (key.as_str().to_owned(), Record::new(key, value, put, now)?);
        self.write(move |txn| {
            let mut tables = Tables::open(txn)?;
            if tables.read_live(&key, now)?.is_some() {
                return Ok(false);
            }
            tables.replace(&key, &record)?;
            Ok(true)
        })
        .await
    }

    async fn get(&self, key: &Key) -> StoreResult<Option<Vec<u8>>> {
        let now = self.clock.now_ms();
        self.read_now(|kv| live_value(kv, key, now))
    }

    /// One read transaction for all the keys (the default reads each in its own).
    async fn get_many(&self, keys: &[&Key]) -> StoreResult<Vec<Option<Vec<u8>>>> {
        let now = self.clock.now_ms();
        self.read_now(|kv| keys.iter().map(|key| live_value(kv, key, now)).collect())
    }

    async fn take(&self, key: &Key) -> StoreResult<Option<Vec<u8>>> {
        let (key, now) = (key.as_str().to_owned(), self.clock.now_ms());
        self.write(move |txn| {
            let mut tables = Tables::open(txn)?;
            match tables.read(&key)? {
                Some(record) => {
                    tables.remove(&key, &record)?;
                    Ok(record.is_live(now).then_some(record.value))
                }
                None => Ok(None),
            }
        })
        .await
    }

    async fn compare_and_swap(
        &self,
        key: &Key,
        expected: &[u8],
        new: &[u8],
        put: Put<'_>,
    ) -> StoreResult<bool> {
        let now = self.clock.now_ms();
        let (key, record) = (key.as_str().to_owned(), Record::new(key, new, put, now)?);
        let expected = expected.to_vec();
        self.write(move |txn| {
            let mut tables = Tables::open(txn)?;
            match tables.read_live(&key, now)? {
                Some(current) if current.value == expected => {
                    tables.replace(&key, &record)?;
                    Ok(true)
                }
                _ => Ok(false),
            }
        })
        .await
    }

    async fn delete(&self, key: &Key) -> StoreResult<bool> {
        let (key, now) = (key.as_str().to_owned(), self.clock.now_ms());
        self.write(move |txn| {
            let mut tables = Tables::open(txn)?;
            match tables.read(&key)? {
                Some(record) => {
                    tables.remove(&key, &record)?;
                    Ok(record.is_live(now))
                }
                None => Ok(false),
            }
        })
        .await
    }

    async fn delete_group(&self, group: &Group) -> StoreResult<u64> {
        let (group, now) = (group.as_str().to_owned(), self.clock.now_ms());
        self.write(move |txn| {
            let prefix = format!("{group}\0");
            let members: Vec<String> = {
                let members = txn.open_table(MEMBERS).map_err(backend)?;
                let mut keys = Vec::new();
                for entry in members.range(prefix.as_str()..).map_err(backend)? {
                    let (k, _) = entry.map_err(backend)?;
                    match k.value().strip_prefix(prefix.as_str()) {
                        Some(key) => keys.push(key.to_owned()),
                        None => break,
                    }
                }
                keys
            };
            let mut tables = Tables::open(txn)?;
            let mut removed = 0;
            for key in members {
                match tables.read(&key)? {
                    // The key may have been rewritten outside the group since.
                    Some(record) if record.group.as_deref() == Some(group.as_str()) => {
                        tables.remove(&key, &record)?;
                        removed += u64::from(record.is_live(now));
                    }
                    _ => {
                        tables
                            .members
                            .remove(format!("{prefix}{key}").as_str())
                            .map_err(backend)?;
                    }
                }
            }
            Ok(removed)
        })
        .await
    }

    async fn scan(&self, prefix: &str) -> StoreResult<Vec<(Key, Vec<u8>)>> {
        let (prefix, now) = (prefix.to_owned(), self.clock.now_ms());
        self.read(move |kv| {
            let mut out = Vec::new();
            for entry in kv.range(prefix.as_str()..).map_err(backend)? {
                let (k, v) = entry.map_err(backend)?;
                if !k.value().starts_with(prefix.as_str()) {
                    break;
                }
                if let Some(record) = Record::decode(v.value())?.filter(|r| r.is_live(now)) {
                    out.push((Key::from_raw(k.value()), record.value));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn export(&self) -> StoreResult<Vec<Entry>> {
        let now = self.clock.now_ms();
        self.read(move |kv| {
            let mut out = Vec::new();
            for entry in kv.iter().map_err(backend)? {
                let (k, v) = entry.map_err(backend)?;
                if let Some(record) = Record::decode(v.value())?.filter(|r| r.is_live(now)) {
                    out.push(Entry {
                        key: Key::from_raw(k.value()),
                        ttl: (record.expires_at != 0)
                            .then(|| Duration::from_millis(record.expires_at - now)),
                        group: record.group.as_deref().and_then(Group::parse),
                        value: record.value,
                    });
                }
            }
            Ok(out)
        })
        .await
    }

    async fn log_append(
        &self,
        name: &str,
        entries: &[Vec<u8>],
        cap: usize,
        max_age: Duration,
    ) -> StoreResult<()> {
        let (name, entries, now) = (name.to_owned(), entries.to_vec(), self.clock.now_ms());
        self.write(move |txn| {
            let prefix = format!("{name}\0");
            let mut log = txn.open_table(LOG).map_err(backend)?;
            let mut lengths = txn.open_table(LOG_LEN).map_err(backend)?;
            let mut length = lengths
                .get(name.as_str())
                .map_err(backend)?
                .map_or(0, |v| v.value());
            // Ids are milliseconds × 1000 plus a counter: increasing, and they say
            // when an entry was written.
            let last: u64 = {
                let mut range = log
                    .range(prefix.as_str()..format!("{name}\u{1}").as_str())
                    .map_err(backend)?;
                match range.next_back() {
                    Some(entry) => {
                        let (k, _) = entry.map_err(backend)?;
                        log_id(k.value()).unwrap_or(0)
                    }
                    None => 0,
                }
            };
            let first = (now * 1000).max(last + 1);
            for (id, entry) in (first..).zip(entries.iter()) {
                log.insert(format!("{prefix}{id:020}").as_str(), entry.as_slice())
                    .map_err(backend)?;
                length += 1;
            }
            let oldest_kept = now.saturating_sub(max_age.as_millis() as u64) * 1000;
            let mut doomed = Vec::new();
            for entry in log
                .range(prefix.as_str()..format!("{name}\u{1}").as_str())
                .map_err(backend)?
            {
                let (k, _) = entry.map_err(backend)?;
                let too_many = length - doomed.len() as u64 > cap as u64;
                let too_old = log_id(k.value()).is_some_and(|id| id < oldest_kept);
                if !(too_many || too_old) {
                    break;
                }
                doomed.push(k.value().to_owned());
            }
            for key in &doomed {
                log.remove(key.as_str()).map_err(backend)?;
            }
            length -= doomed.len() as u64;
            lengths.insert(name.as_str(), length).map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn log_read(
        &self,
        name: &str,
        limit: usize,
        before: Option<&str>,
    ) -> StoreResult<Vec<(String, Vec<u8>)>> {
        let (name, before) = (name.to_owned(), before.map(str::to_owned));
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(backend)?;
            let log = txn.open_table(LOG).map_err(backend)?;
            let start = format!("{name}\0");
            let end = match before.as_deref().and_then(|b| b.parse::<u64>().ok()) {
                Some(before) => format!("{name}\0{before:020}"),
                None => format!("{name}\u{1}"),
            };
            let mut out = Vec::new();
            for entry in log
                .range(start.as_str()..end.as_str())
                .map_err(backend)?
                .rev()
                .take(limit)
            {
                let (k, v) = entry.map_err(backend)?;
                if let Some(id) = log_id(k.value()) {
                    out.push((id.to_string(), v.value().to_vec()));
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }

    async fn ping(&self) -> StoreResult<()> {
        if self.broken.load(Ordering::Relaxed) {
            return Err(StoreError::Unavailable(BROKEN.into()));
        }
        self.read(|_| Ok(())).await
    }

    fn backend(&self) -> &'static str {
        "embedded"
    }
}

/// The three tables of one write transaction, with the bookkeeping that keeps the
/// expiry index and group membership in step with `kv`.
struct Tables<'txn> {
    kv: Table<'txn, &'static str, &'static [u8]>,
    expiry: Table<'txn, &'static [u8], ()>,
    members: Table<'txn, &'static str, ()>,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> StoreResult<Self> {
        Ok(Tables {
            kv: txn.open_table(KV).map_err(backend)?,
            expiry: txn.open_table(EXPIRY).map_err(backend)?,
            members: txn.open_table(MEMBERS).map_err(backend)?,
        })
    }

    fn read(&self, key: &str) -> StoreResult<Option<Record>> {
        match self.kv.get(key).map_err(backend)? {
            Some(raw) => Record::decode(raw.value()),
            None => Ok(None),
        }
    }

    fn read_live(&self, key: &str, now: u64) -> StoreResult<Option<Record>> {
        Ok(self.read(key)?.filter(|r| r.is_live(now)))
    }

    fn replace(&mut self, key: &str, record: &Record) -> StoreResult<()> {
        if let Some(old) = self.read(key)? {
            self.unindex(key, &old)?;
        }
        self.kv
            .insert(key, record.encode().as_slice())
            .map_err(backend)?;
        if record.expires_at != 0 {
            self.expiry
                .insert(expiry_key(record.expires_at, key).as_slice(), ())
                .map_err(backend)?;
        }
        if let Some(group) = &record.group {
            self.members
                .insert(format!("{group}\0{key}").as_str(), ())
                .map_err(backend)?;
        }
        Ok(())
    }

    fn remove(&mut self, key: &str, record: &Record) -> StoreResult<()> {
        self.unindex(key, record)?;
        self.kv.remove(key).map_err(backend)?;
        Ok(())
    }

    fn unindex(&mut self, key: &str, record: &Record) -> StoreResult<()> {
        if record.expires_at != 0 {
            self.expiry
                .remove(expiry_key(record.expires_at, key).as_slice())
                .map_err(backend)?;
        }
        if let Some(group) = &record.group {
            self.members
                .remove(format!("{group}\0{key}").as_str())
                .map_err(backend)?;
        }
        Ok(())
    }
}

/// One stored value: `expires_at` (u64 BE, 0 = never) ‖ group length (u16 BE) ‖ group
/// ‖ value.
struct Record {
    expires_at: u64,
    group: Option<String>,
    value: Vec<u8>,
}

impl Record {
    /// `key`'s record. A group is refused unless the key carries its tag, as Redis
    /// refuses it: a record the two backends hold differently would not move.
    fn new(key: &Key, value: &[u8], put: Put<'_>, now: u64) -> StoreResult<Self> {
        if let Some(group) = put.group {
            if key.group().as_ref() != Some(group) {
                return Err(StoreError::Backend(format!(
                    "{key} is not a key of group {}",
                    group.as_str()
                )));
            }
        }
        let expires_at = match put.ttl {
            // A zero TTL still expires: at least one millisecond from now.
            Some(ttl) => now.saturating_add((ttl.as_millis() as u64).max(1)),
            None => 0,
        };
        Ok(Record {
            expires_at,
            group: put.group.map(|g| g.as_str().to_owned()),
            value: value.to_vec(),
        })
    }

    fn is_live(&self, now: u64) -> bool {
        self.expires_at == 0 || self.expires_at > now
    }

    fn encode(&self) -> Vec<u8> {
        let group = self.group.as_deref().unwrap_or("").as_bytes();
        let mut out = Vec::with_capacity(10 + group.len() + self.value.len());
        out.extend_from_slice(&self.expires_at.to_be_bytes());
        out.extend_from_slice(&(group.len() as u16).to_be_bytes());
        out.extend_from_slice(group);
        out.extend_from_slice(&self.value);
        out
    }

    fn decode(raw: &[u8]) -> StoreResult<Option<Self>> {
        let corrupt = || StoreError::Corrupt("a record of the embedded store".into());
        let expires_at = u64::from_be_bytes(
            raw.get(..8)
                .ok_or_else(corrupt)?
                .try_into()
                .map_err(|_| corrupt())?,
        );
        let group_len = u16::from_be_bytes(
            raw.get(8..10)
                .ok_or_else(corrupt)?
                .try_into()
                .map_err(|_| corrupt())?,
        ) as usize;
        let group = raw.get(10..10 + group_len).ok_or_else(corrupt)?;
        let group = match group {
            [] => None,
            g => Some(String::from_utf8(g.to_vec()).map_err(|_| corrupt())?),
        };
        Ok(Some(Record {
            expires_at,
            group,
            value: raw[10 + group_len..].to_vec(),
        }))
    }
}

fn expiry_key(expires_at: u64, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&expires_at.to_be_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

/// The id of a log key (`name ‖ NUL ‖ id`).
fn log_id(key: &str) -> Option<u64> {
    key.rsplit_once('\0')?.1.parse().ok()
}

/// Creates the database file with mode 0600, or narrows an existing one to it: it
/// holds every grant and the owner's password hash.
fn restrict_to_owner(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// What `ping` says once a write could not reach the file.
const BROKEN: &str = "the store's file could not be written (is the disk full?); \
    restart Gatehouse to open it again";

/// Notes a write that failed to reach the file: redb refuses every later write
/// until the database is opened again.
fn mark_broken(broken: &AtomicBool, e: &redb::StorageError) {
    if !broken.swap(true, Ordering::Relaxed) {
        tracing::error!(error = %e, "{BROKEN}");
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{conformance, Kind};
    use redb::ReadableTableMetadata;

    async fn fresh() -> (tempfile::TempDir, EmbeddedStore, conformance::Time) {
        let dir = tempfile::tempdir().expect("temp dir");
        let clock = Clock::manual();
        let store = EmbeddedStore::open_with_clock(&dir.path().join("store.redb"), clock.clone())
            .expect("open store");
        (dir, store, conformance::Time::Manual(clock))
    }

    conformance::suite!(fresh);

    /// Memory that refuses writes while `full` is set, as a full disk does.
    #[derive(Debug, Default)]
    struct Disk {
        bytes: redb::backends::InMemoryBackend,
        full: Arc<AtomicBool>,
    }

    impl Disk {
        fn check(&self) -> std::io::Result<()> {
            if self.full.load(Ordering::Relaxed) {
                return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
            }
            Ok(())
        }
    }

    impl redb::StorageBackend for Disk {
        fn len(&self) -> std::io::Result<u64> {
            self.bytes.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            self.bytes.read(offset, out)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.check()?;
            self.bytes.set_len(len)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            self.check()?;
            self.bytes.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.check()?;
            self.bytes.write(offset, data)
        }
    }

    /// Once a write cannot reach the disk, redb refuses every later one until the
    /// database is opened again; the health check says so rather than staying up
    /// while nothing can be stored.
    #[tokio::test]
    async fn a_write_that_cannot_reach_the_disk_shows_in_the_health_check() {
        let disk = Disk::default();
        let full = disk.full.clone();
        let db = Database::builder().create_with_backend(disk).expect("open");
        let store = EmbeddedStore::with_database(db, Clock::manual()).expect("store");
        let key = Key::new(Kind::CLIENT, "abc");
        store.put(&key, b"kept", Put::forever()).await.expect("put");
        assert!(store.ping().await.is_ok());

        full.store(true, Ordering::Relaxed);
        let other = Key::new(Kind::CLIENT, "def");
        assert!(store.put(&other, b"lost", Put::forever()).await.is_err());
        // Space again: redb still refuses until opened again, and the check says so.
        full.store(false, Ordering::Relaxed);
        assert!(store.put(&other, b"lost", Put::forever()).await.is_err());
        let refused = store.ping().await.expect_err("not healthy");
        assert!(
            matches!(&refused, StoreError::Unavailable(why) if why.contains("restart")),
            "{refused:?}"
        );
        assert_eq!(store.get(&key).await.expect("read"), Some(b"kept".to_vec()));
    }

    /// A file altered since redb last wrote it (a partial restore, a bad copy, a
    /// flipped bit) is refused with an error naming it, never trusted: a plain
    /// open may panic on it, or hand back what it holds wrong.
    #[tokio::test]
    async fn an_altered_file_is_refused_with_an_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("store.redb");
        {
            let store = EmbeddedStore::open(&path).expect("open");
            for i in 0..200 {
                let key = Key::new(Kind::CLIENT, &format!("client-{i}"));
                store
                    .put(&key, &[b'x'; 512], Put::forever())
                    .await
                    .expect("put");
            }
        }
        let mut bytes = std::fs::read(&path).expect("read");
        // Every byte past the header pages, flipped.
        for byte in bytes.iter_mut().skip(8192) {
            *byte = !*byte;
        }
        std::fs::write(&path, &bytes).expect("write");
        let opened = std::panic::AssertUnwindSafe(async { EmbeddedStore::open(&path).err() });
        let refused = futures::FutureExt::catch_unwind(opened)
            .await
            .expect("an error, not a panic")
            .expect("the altered file refused");
        assert!(
            refused.to_string().contains(&path.display().to_string()),
            "{refused}"
        );
    }

    #[tokio::test]
    async fn a_reopened_store_keeps_what_it_held() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("store.redb");
        let key = Key::new(Kind::CLIENT, "abc");
        let token = Key::new(Kind::ACCESS, "hash");
        {
            let store = EmbeddedStore::open(&path).expect("open");
            store
                .put(&key, b"forever", Put::forever())
                .await
                .expect("put");
            store
                .put(&token, b"for an hour", Put::ttl(Duration::from_secs(3600)))
                .await
                .expect("put");
        }
        let store = EmbeddedStore::open(&path).expect("reopen");
        assert_eq!(
            store.get(&key).await.expect("get"),
            Some(b"forever".to_vec())
        );
        assert_eq!(
            store.get(&token).await.expect("get"),
            Some(b"for an hour".to_vec())
        );
    }

    #[test]
    fn a_store_in_use_says_so_when_opened_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("store.redb");
        let _running = EmbeddedStore::open(&path).expect("open");
        let Err(e) = EmbeddedStore::open(&path) else {
            panic!("a second open succeeded");
        };
        assert!(e.to_string().contains("stop it first"), "{e}");
    }

    #[tokio::test]
    async fn the_sweeper_removes_expired_records_from_disk() {
        let (_dir, store, time) = fresh().await;
        let group = Group::parse("g1").expect("group");
        let short = Key::in_group(Kind::ACCESS, &group, "short");
        let long = Key::new(Kind::CLIENT, "long");
        store
            .put(
                &short,
                b"x",
                Put::ttl(Duration::from_millis(10)).in_group(&group),
            )
            .await
            .expect("put");
        store.put(&long, b"y", Put::forever()).await.expect("put");
        let conformance::Time::Manual(clock) = time else {
            unreachable!("the embedded store runs on a manual clock here")
        };
        clock.advance(Duration::from_millis(30));
        assert_eq!(store.sweep().await.expect("sweep"), 1);
        assert_eq!(store.sweep().await.expect("sweep"), 0);
        // The expired key left no index entries behind.
        let db = store.db.clone();
        let txn = db.begin_read().expect("read");
        assert_eq!(txn.open_table(EXPIRY).expect("t").len().expect("len"), 0);
        assert_eq!(txn.open_table(MEMBERS).expect("t").len().expect("len"), 0);
        assert_eq!(txn.open_table(KV).expect("t").len().expect("len"), 1);
    }
}
