//! Prometheus metrics: the names Gatehouse records (the README lists each), the
//! process-wide recorder, and a store wrapper that times every store operation.
//!
//! Recording is the `metrics` facade's atomic counters and histograms, cheap enough
//! for the bearer guard's hot path; rendering happens only when `/metrics` is read.
//! The recorder keeps every histogram sample until it is folded into its buckets, so
//! [`upkeep`] folds them every few seconds whether or not anyone reads `/metrics`.

use std::{
    hash::BuildHasher,
    sync::{
        atomic::{AtomicU64, Ordering},
        OnceLock, RwLock,
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::store::{Entry, Group, Key, Put, SharedStore, Store, StoreResult};

pub const HTTP_REQUESTS: &str = "gatehouse_http_requests_total";
pub const HTTP_DURATION: &str = "gatehouse_http_request_duration_seconds";
pub const TOKEN_GRANTS: &str = "gatehouse_token_grants_total";
pub const REFRESH_REUSE: &str = "gatehouse_refresh_reuse_detected_total";
pub const MCP_SESSIONS: &str = "gatehouse_mcp_sessions";
pub const TOOL_CALLS: &str = "gatehouse_tool_calls_total";
pub const TOOL_DURATION: &str = "gatehouse_tool_call_duration_seconds";
pub const STORE_DURATION: &str = "gatehouse_store_operation_duration_seconds";
pub const STORE_ERRORS: &str = "gatehouse_store_errors_total";
pub const RATE_LIMITED: &str = "gatehouse_rate_limited_total";
pub const ACTIVITY_DROPPED: &str = "gatehouse_activity_events_dropped_total";
pub const UPSTREAM_UP: &str = "gatehouse_upstream_up";
pub const BODY_BYTES: &str = "gatehouse_request_body_bytes";

/// Buckets for request, tool and store latencies: 100 µs to 10 s.
const LATENCY_BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5, 10.0,
];

/// The process-wide recorder, installed on first use. Every app of the process
/// records into it (tests run several).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder may be installed already (a test harness): then this one
        // only renders what it is given, which is nothing; say so in the log.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        describe();
        handle
    })
}

/// The hasher of the maps that each request looks into several times: metric
/// handles, the activity log's labels and usage, recent session bindings, decoded
/// access-token records (`oauth::bearer`). foldhash, seeded at random: std's
/// SipHash cost about a twentieth of the server's instructions per `/mcp` call
/// (callgrind, 2026-12-04), on keys that are few and short. foldhash resists only
/// simple flooding, so only keys that are not a caller's to choose go into these
/// maps: label sets (tool labels only once a tool succeeded, at most 512), grant ids
/// of accepted tokens, session ids and token records of ours. A map a caller can
/// fill with names of its own (the activity batch's, keyed by tool name) keeps
/// std's SipHash.
pub type FastHash = foldhash::fast::RandomState;
pub type FastMap<K, V> = std::collections::HashMap<K, V, FastHash>;

/// Metric handles by their label values, each looked up in the recorder once. A
/// `counter!` or `histogram!` with labels builds a key of owned strings, hashes it
/// and searches the registry every time, which several times per request added up
/// on the hot paths. At most [`Handles::MAX`] label sets are kept; past that, lookups
/// go to the recorder as before. Label sets must be few anyway (they are series).
pub struct Handles<H> {
    hasher: FastHash,
    /// By the labels' hash: the labels themselves and their handle.
    map: RwLock<FastMap<u64, Vec<Labelled<H>>>>,
    len: std::sync::atomic::AtomicUsize,
}

/// A label set and its handle.
type Labelled<H> = (Box<[Box<str>]>, H);

impl<H: Clone> Handles<H> {
    pub const MAX: usize = 4096;

    pub fn new() -> Self {
        // Handles made before the recorder is installed would record nowhere.
        handle();
        Handles {
            hasher: FastHash::default(),
            map: RwLock::default(),
            len: Default::default(),
        }
    }

    /// The handle for `labels`, made by `make` the first time.
    pub fn get(&self, labels: &[&str], make: impl FnOnce() -> H) -> H {
        use std::sync::atomic::Ordering;
        let hash = self.hasher.hash_one(labels);
        let same = |(known, _): &&Labelled<H>| {
            known.len() == labels.len() && known.iter().zip(labels).all(|(k, l)| **k == **l)
        };
        {
            let map = self.map.read().unwrap_or_else(|p| p.into_inner());
            if let Some((_, handle)) = map.get(&hash).and_then(|v| v.iter().find(same)) {
                return handle.clone();
            }
        }
        let handle = make();
        if self.len.load(Ordering::Relaxed) < Self::MAX {
            let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
            let bucket = map.entry(hash).or_default();
            if !bucket.iter().any(|entry| same(&entry)) {
                bucket.push((labels.iter().map(|l| (*l).into()).collect(), handle.clone()));
                self.len.fetch_add(1, Ordering::Relaxed);
            }
        }
        handle
    }
}

impl<H: Clone> Default for Handles<H> {
    fn default() -> Self {
        Self::new()
    }
}

/// How often [`upkeep`] folds recorded histogram samples into their buckets (the
/// exporter's own default).
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Folds histogram samples into their buckets every [`UPKEEP_EVERY`], forever. The
/// recorder holds each sample (every request, store operation and tool call records
/// one) until then or until `/metrics` is rendered, so without this a server nobody
/// scrapes grows by every sample it ever took: the soak run (`cargo xtask soak`) saw
/// RSS climb by 36 MB in 50 s under load. Built with `build_recorder`, the
/// exporter spawns no such task itself.
pub async fn upkeep() {
    let mut every = tokio::time::interval(UPKEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        handle().run_upkeep();
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(HTTP_REQUESTS, "HTTP requests by route and status.");
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "Time to each answer's head, by route."
    );
    describe_counter!(
        TOKEN_GRANTS,
        "Token endpoint requests by grant type and outcome."
    );
    describe_counter!(
        REFRESH_REUSE,
        "Rotated refresh tokens presented again (the grant is revoked)."
    );
    describe_gauge!(MCP_SESSIONS, "Live MCP sessions per MCP URL.");
    describe_counter!(TOOL_CALLS, "Tool calls by MCP URL, tool and outcome.");
    describe_histogram!(
        TOOL_DURATION,
        Unit::Seconds,
        "Tool calls' time to the answer."
    );
    describe_histogram!(STORE_DURATION, Unit::Seconds, "Store operations by kind.");
    describe_counter!(STORE_ERRORS, "Failed store operations by kind.");
    describe_counter!(RATE_LIMITED, "Requests refused by a rate limit, by limit.");
    describe_counter!(
        ACTIVITY_DROPPED,
        "Activity events dropped because the queue was full."
    );
    describe_gauge!(
        UPSTREAM_UP,
        "1 when an upstream's last connection succeeded, else 0."
    );
    describe_gauge!(
        BODY_BYTES,
        Unit::Bytes,
        "Request bodies held now, as charged to --max-body-memory."
    );
}

/// Counts a refusal by one of the rate limits (`sign_in`, `registration`).
pub fn rate_limited(limit: &'static str) {
    metrics::counter!(RATE_LIMITED, "limit" => limit).increment(1);
}

/// `tracing::warn!` through a [`Throttle`] of the call site's own, with `skipped`
/// (how many were left out since the last line) among the fields.
#[macro_export]
macro_rules! warn_throttled {
    ($($field:tt)+) => {{
        static THROTTLE: $crate::telemetry::Throttle = $crate::telemetry::Throttle::new();
        if let Some(skipped) = THROTTLE.pass() {
            ::tracing::warn!(skipped, $($field)+);
        }
    }};
}

/// A warning that callers can cause as often as they like (a refusal, say) goes to
/// the log at most once a minute from each place that gives it, with how many were
/// left out since: a flood costs a line a minute, and the metrics count every one.
pub struct Throttle {
    minute: AtomicU64,
    skipped: AtomicU64,
}

impl Throttle {
    pub const fn new() -> Self {
        Throttle {
            minute: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        }
    }

    /// `Some(left out since the last line)` when a line may be logged now.
    pub fn pass(&self) -> Option<u64> {
        let minute = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / 60);
        if self.minute.swap(minute, Ordering::Relaxed) != minute {
            Some(self.skipped.swap(0, Ordering::Relaxed))
        } else {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new()
    }
}

/// The store, with every operation timed and every failure counted.
pub struct MeteredStore(pub SharedStore);

impl MeteredStore {
    pub fn wrap(store: SharedStore) -> SharedStore {
        std::sync::Arc::new(MeteredStore(store))
    }
}

fn observe<T>(op: &'static str, started: Instant, result: &StoreResult<T>) {
    static DURATIONS: OnceLock<Handles<metrics::Histogram>> = OnceLock::new();
    DURATIONS
        .get_or_init(Handles::new)
        .get(&[op], || metrics::histogram!(STORE_DURATION, "op" => op))
        .record(started.elapsed().as_secs_f64());
    if result.is_err() {
        metrics::counter!(STORE_ERRORS, "op" => op).increment(1);
    }
}

macro_rules! metered {
    ($op:literal, $call:expr) => {{
        let started = Instant::now();
        let result = $call.await;
        observe($op, started, &result);
        result
    }};
}

#[async_trait]
impl Store for MeteredStore {
    async fn put(&self, key: &Key, value: &[u8], put: Put<'_>) -> StoreResult<()> {
        metered!("put", self.0.put(key, value, put))
    }
    async fn put_new(&self, key: &Key, value: &[u8], put: Put<'_>) -> StoreResult<bool> {
        metered!("put_new", self.0.put_new(key, value, put))
    }
    async fn get(&self, key: &Key) -> StoreResult<Option<Vec<u8>>> {
        metered!("get", self.0.get(key))
    }
    async fn get_many(&self, keys: &[&Key]) -> StoreResult<Vec<Option<Vec<u8>>>> {
        metered!("get_many", self.0.get_many(keys))
    }
    async fn take(&self, key: &Key) -> StoreResult<Option<Vec<u8>>> {
        metered!("take", self.0.take(key))
    }
    async fn compare_and_swap(
        &self,
        key: &Key,
        expected: &[u8],
        new: &[u8],
        put: Put<'_>,
    ) -> StoreResult<bool> {
        metered!(
            "compare_and_swap",
            self.0.compare_and_swap(key, expected, new, put)
        )
    }
    async fn delete(&self, key: &Key) -> StoreResult<bool> {
        metered!("delete", self.0.delete(key))
    }
    async fn delete_group(&self, group: &Group) -> StoreResult<u64> {
        metered!("delete_group", self.0.delete_group(group))
    }
    async fn scan(&self, prefix: &str) -> StoreResult<Vec<(Key, Vec<u8>)>> {
        metered!("scan", self.0.scan(prefix))
    }
    async fn export(&self) -> StoreResult<Vec<Entry>> {
        metered!("export", self.0.export())
    }
    async fn log_append(
        &self,
        name: &str,
        entries: &[Vec<u8>],
        cap: usize,
        max_age: Duration,
    ) -> StoreResult<()> {
        metered!("log_append", self.0.log_append(name, entries, cap, max_age))
    }
    async fn log_read(
        &self,
        name: &str,
        limit: usize,
        before: Option<&str>,
    ) -> StoreResult<Vec<(String, Vec<u8>)>> {
        metered!("log_read", self.0.log_read(name, limit, before))
    }
    async fn ping(&self) -> StoreResult<()> {
        metered!("ping", self.0.ping())
    }
    fn backend(&self) -> &'static str {
        self.0.backend()
    }
}

#[cfg(test)]
mod handles {
    use std::cell::Cell;

    use super::Handles;

    #[test]
    fn each_label_set_is_made_once_and_kept_apart() {
        let handles = Handles::<u32>::new();
        let made = Cell::new(0);
        let get = |labels: &[&str]| {
            handles.get(labels, || {
                made.set(made.get() + 1);
                made.get()
            })
        };
        let first = get(&["/mcp", "200"]);
        assert_eq!(get(&["/mcp", "200"]), first);
        // Neither a different value nor the same text split otherwise is the same set.
        assert_ne!(get(&["/mcp", "404"]), first);
        assert_ne!(get(&["/mcp2", "00"]), first);
        assert_ne!(get(&["/mcp200"]), first);
        assert_eq!(made.get(), 4);
    }

    #[test]
    fn past_the_cap_handles_are_made_each_time() {
        let handles = Handles::<usize>::new();
        for i in 0..Handles::<usize>::MAX {
            handles.get(&[&i.to_string()], || i);
        }
        let made = Cell::new(0);
        for _ in 0..2 {
            handles.get(&["one more"], || {
                made.set(made.get() + 1);
                0
            });
        }
        assert_eq!(made.get(), 2, "nothing is kept past the cap");
        assert_eq!(handles.get(&["7"], || usize::MAX), 7, "what was kept stays");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttled_warning_passes_once_a_minute_and_counts_the_rest() {
        let throttle = Throttle::new();
        assert_eq!(throttle.pass(), Some(0));
        assert_eq!(throttle.pass(), None);
        assert_eq!(throttle.pass(), None);
        // As if the minute turned.
        throttle.minute.store(0, Ordering::Relaxed);
        assert_eq!(throttle.pass(), Some(2));
    }
}
