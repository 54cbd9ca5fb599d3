//! A store wrapper that fails on command: every operation errors (a Redis server that
//! is down), hangs (one that stopped answering), or writes (or reads) fail after the
//! next `n` succeed (a failure between two writes of one flow). Tests switch the mode while
//! the app runs.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc, Mutex,
};

use async_trait::async_trait;
use gatehouse::store::{Entry, Group, Key, Put, SharedStore, Store, StoreError, StoreResult};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Every operation fails as unavailable.
    Down,
    /// Every operation waits forever.
    Hang,
    /// Reads pass; the next `n` writes pass, later ones fail.
    WritesFailAfter(usize),
    /// Writes pass; the next `n` reads pass, later ones fail.
    ReadsFailAfter(usize),
    /// Every operation panics (a bug in a backend).
    Panic,
}

/// The switch a test holds.
#[derive(Clone)]
pub struct Faults(Arc<Inner>);

struct Inner {
    mode: Mutex<Mode>,
    writes: AtomicUsize,
    /// Every key read with `get_many`, in order, until taken.
    read: Mutex<Vec<String>>,
}

impl Faults {
    /// The keys read with `get_many` since the last call.
    #[allow(dead_code)]
    pub fn keys_read(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.read.lock().expect("lock"))
    }

    pub fn set(&self, mode: Mode) {
        self.0.writes.store(0, Ordering::SeqCst);
        *self.0.mode.lock().expect("lock") = mode;
    }

    async fn gate(&self, write: bool) -> StoreResult<()> {
        let mode = *self.0.mode.lock().expect("lock");
        match mode {
            Mode::Pass => Ok(()),
            Mode::Down => Err(StoreError::Unavailable(
                "injected: connection refused".into(),
            )),
            Mode::Hang => std::future::pending().await,
            Mode::WritesFailAfter(n) if write => {
                if self.0.writes.fetch_add(1, Ordering::SeqCst) >= n {
                    Err(StoreError::Unavailable("injected: write failed".into()))
                } else {
                    Ok(())
                }
            }
            Mode::WritesFailAfter(_) => Ok(()),
            Mode::ReadsFailAfter(n) if !write => {
                if self.0.writes.fetch_add(1, Ordering::SeqCst) >= n {
                    Err(StoreError::Unavailable("injected: read failed".into()))
                } else {
                    Ok(())
                }
            }
            Mode::ReadsFailAfter(_) => Ok(()),
            Mode::Panic => panic!("injected: the store panicked"),
        }
    }
}

pub struct FaultStore {
    inner: SharedStore,
    faults: Faults,
}

impl FaultStore {
    /// Wraps `inner`; the returned switch starts at [`Mode::Pass`].
    pub fn wrap(inner: SharedStore) -> (SharedStore, Faults) {
        let faults = Faults(Arc::new(Inner {
            mode: Mutex::new(Mode::Pass),
            writes: AtomicUsize::new(0),
            read: Mutex::default(),
        }));
        (
            Arc::new(FaultStore {
                inner,
                faults: faults.clone(),
            }),
            faults,
        )
    }
}

#[async_trait]
impl Store for FaultStore {
    async fn put(&self, key: &Key, value: &[u8], put: Put<'_>) -> StoreResult<()> {
        self.faults.gate(true).await?;
        self.inner.put(key, value, put).await
    }
    async fn put_new(&self, key: &Key, value: &[u8], put: Put<'_>) -> StoreResult<bool> {
        self.faults.gate(true).await?;
        self.inner.put_new(key, value, put).await
    }
    async fn get(&self, key: &Key) -> StoreResult<Option<Vec<u8>>> {
        self.faults.gate(false).await?;
        self.inner.get(key).await
    }
    async fn get_many(&self, keys: &[&Key]) -> StoreResult<Vec<Option<Vec<u8>>>> {
        self.faults.gate(false).await?;
        self.faults
            .0
            .read
            .lock()
            .expect("lock")
            .extend(keys.iter().map(|key| key.as_str().to_owned()));
        self.inner.get_many(keys).await
    }
    async fn take(&self, key: &Key) -> StoreResult<Option<Vec<u8>>> {
        self.faults.gate(true).await?;
        self.inner.take(key).await
    }
    async fn compare_and_swap(
        &self,
        key: &Key,
        expected: &[u8],
        new: &[u8],
        put: Put<'_>,
    ) -> StoreResult<bool> {
        self.faults.gate(true).await?;
        self.inner.compare_and_swap(key, expected, new, put).await
    }
    async fn delete(&self, key: &Key) -> StoreResult<bool> {
        self.faults.gate(true).await?;
        self.inner.delete(key).await
    }
    async fn delete_group(&self, group: &Group) -> StoreResult<u64> {
        self.faults.gate(true).await?;
        self.inner.delete_group(group).await
    }
    async fn scan(&self, prefix: &str) -> StoreResult<Vec<(Key, Vec<u8>)>> {
        self.faults.gate(false).await?;
        self.inner.scan(prefix).await
    }
    async fn export(&self) -> StoreResult<Vec<Entry>> {
        self.faults.gate(false).await?;
        self.inner.export().await
    }
    async fn log_append(
        &self,
        name: &str,
        entries: &[Vec<u8>],
        cap: usize,
        max_age: std::time::Duration,
    ) -> StoreResult<()> {
        self.faults.gate(true).await?;
        self.inner.log_append(name, entries, cap, max_age).await
    }
    async fn log_read(
        &self,
        name: &str,
        limit: usize,
        before: Option<&str>,
    ) -> StoreResult<Vec<(String, Vec<u8>)>> {
        self.faults.gate(false).await?;
        self.inner.log_read(name, limit, before).await
    }
    async fn ping(&self) -> StoreResult<()> {
        self.faults.gate(false).await?;
        self.inner.ping().await
    }
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}
