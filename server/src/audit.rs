//! The activity log: what happened, for the owner's console and for the log.
//!
//! Events are recorded without waiting: they go to a bounded queue, and one task
//! writes them to the store in batches (a log with a retention and a count cap, on
//! either backend) and to the process log as structured events. A hot path (a tool
//! call) therefore costs a queue send, which wakes nothing while the writer gathers;
//! when the queue is full, events are dropped and counted rather than slowing
//! requests down.
//!
//! Per grant, the time of last use and the tool calls per hour are kept in memory and
//! written at most once a minute, into the grant's group (so revoking removes them).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::{
    clock::Clock,
    store::{decode, encode, Group, Key, Kind, Put, SharedStore, StoreError, StoreResult},
    telemetry::{self, FastHash, FastMap},
};

/// The store log the activity goes to, tool calls apart.
const LOG: &str = "activity";
/// The store log of tool calls, and of the other events that a client, or anyone,
/// can cause in numbers ([`in_numbers`]). Each log has its own cap: a busy agent
/// writes thousands of calls an hour (and a client may call made-up tool names, or
/// refresh its tokens, in a loop), and none of them may push a sign-in, a consent
/// or a revocation out.
const CALLS: &str = "calls";

/// Whether events of `kind` go to the [`CALLS`] log: tool calls, refreshes (a
/// client may refresh in a loop), registrations (anyone may register, 200 an hour)
/// and failed sign-ins (anyone may try, within the sign-in limits).
fn in_numbers(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::ToolCall
            | EventKind::TokenRefreshed
            | EventKind::ClientRegistered
            | EventKind::SignInFailed
    )
}
/// Events waiting to be written; more are dropped (and counted).
const QUEUE: usize = 8192;
/// Events written per store call at most.
const BATCH: usize = 512;
/// How long the writer gathers events before writing them, unless the queue fills to
/// half or a flush asks for them sooner.
const GATHER: Duration = Duration::from_millis(200);
/// The characters of a tool name an event keeps.
pub const MAX_TOOL_NAME: usize = 128;

/// Distinct (resource, tool) label pairs the tool-call metrics take; calls to tools
/// beyond them count as `tool="other"`, so that clients calling made-up names
/// cannot grow the metrics without bound.
pub const MAX_TOOL_LABELS: usize = 512;

/// How often usage counters are written.
pub const USAGE_EVERY: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    SignInSucceeded,
    SignInFailed,
    ConsentApproved,
    ConsentDenied,
    ClientRegistered,
    CodeRedeemed,
    TokenRefreshed,
    RefreshReuseDetected,
    TokenRevoked,
    GrantRevoked,
    ToolCall,
}

impl EventKind {
    pub const ALL: [EventKind; 11] = [
        EventKind::SignInSucceeded,
        EventKind::SignInFailed,
        EventKind::ConsentApproved,
        EventKind::ConsentDenied,
        EventKind::ClientRegistered,
        EventKind::CodeRedeemed,
        EventKind::TokenRefreshed,
        EventKind::RefreshReuseDetected,
        EventKind::TokenRevoked,
        EventKind::GrantRevoked,
        EventKind::ToolCall,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::SignInSucceeded => "sign_in_succeeded",
            EventKind::SignInFailed => "sign_in_failed",
            EventKind::ConsentApproved => "consent_approved",
            EventKind::ConsentDenied => "consent_denied",
            EventKind::ClientRegistered => "client_registered",
            EventKind::CodeRedeemed => "code_redeemed",
            EventKind::TokenRefreshed => "token_refreshed",
            EventKind::RefreshReuseDetected => "refresh_reuse_detected",
            EventKind::TokenRevoked => "token_revoked",
            EventKind::GrantRevoked => "grant_revoked",
            EventKind::ToolCall => "tool_call",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == raw)
    }
}

/// One thing that happened. Never a secret: no token, code, password or cookie.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Milliseconds since the epoch.
    pub at: u64,
    pub kind: Option<EventKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    /// The client's address (sign-in, registration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// `ok`, `error` (a tool error or a failure), `denied` (a missing scope).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// How long the call took; for an event that stands for several, the longest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// How many alike tool calls this event stands for, when more than one (see
    /// [`coalesce`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls: Option<u64>,
}

impl Event {
    pub fn new(kind: EventKind) -> Self {
        Event {
            kind: Some(kind),
            ..Event::default()
        }
    }

    pub fn client(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(client_id.into());
        self
    }

    pub fn grant(mut self, grant: impl Into<String>) -> Self {
        self.grant = Some(grant.into());
        self
    }

    pub fn address(mut self, address: impl ToString) -> Self {
        self.address = Some(address.to_string());
        self
    }

    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = Some(resource.into());
        self
    }

    pub fn scopes(mut self, scopes: impl ToString) -> Self {
        self.scopes = Some(scopes.to_string());
        self
    }

    /// A tool call. The name is the client's to choose: only its first
    /// [`MAX_TOOL_NAME`] characters are kept, and those that would not show as
    /// themselves (bidi overrides, zero-width spaces, controls) are written out
    /// (`\u{200b}`), so that `delete\u{200b}_article` does not pass for a real tool in
    /// the console, nor reorder what is shown beside it.
    pub fn tool(mut self, tool: impl Into<String>, outcome: &str, duration: Duration) -> Self {
        let tool: String = tool.into();
        let mut shown = String::with_capacity(tool.len());
        for c in tool.chars().take(MAX_TOOL_NAME) {
            if c == '\\' {
                // So that a name written `a\u{200b}b` is not taken for one holding
                // the character.
                shown.push_str("\\\\");
            } else if crate::oauth::client::is_hidden_char(c) {
                shown.extend(c.escape_unicode());
            } else {
                shown.push(c);
            }
        }
        self.tool = Some(shown);
        self.outcome = Some(outcome.to_owned());
        self.duration_ms = Some(duration.as_millis() as u64);
        self
    }
}

/// What the console shows of a grant's use.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Milliseconds since the epoch.
    pub last_used: u64,
    /// Tool calls per hour (hour number since the epoch, count), the last 25 hours.
    pub hours: Vec<(u64, u64)>,
}

impl Usage {
    /// Tool calls in the 24 hours before `now_ms`.
    pub fn calls_last_day(&self, now_ms: u64) -> u64 {
        let hour = now_ms / 3_600_000;
        self.hours
            .iter()
            .filter(|(h, _)| hour.saturating_sub(*h) < 24)
            .map(|(_, n)| n)
            .sum()
    }

    fn add(&mut self, last_used: u64, calls: &[(u64, u64)]) {
        self.last_used = self.last_used.max(last_used);
        for (hour, count) in calls {
            match self.hours.iter_mut().find(|(h, _)| h == hour) {
                Some((_, n)) => *n += count,
                None => self.hours.push((*hour, *count)),
            }
        }
        let newest = self.hours.iter().map(|(h, _)| *h).max().unwrap_or(0);
        self.hours.retain(|(h, _)| newest.saturating_sub(*h) < 25);
        self.hours.sort_unstable();
    }
}

pub fn usage_key(grant: &Group) -> Key {
    Key::in_group(Kind::USAGE, grant, "usage")
}

// Nearly every message is an event: boxing it would cost an allocation per event.
#[allow(clippy::large_enum_variant)]
enum Message {
    Event(Event),
    Flush(oneshot::Sender<()>),
}

/// Unwritten use of one grant.
#[derive(Default)]
struct Pending {
    last_used: u64,
    calls: Vec<(u64, u64)>,
}

impl Pending {
    fn merge(&mut self, other: Pending) {
        self.last_used = self.last_used.max(other.last_used);
        for (hour, count) in other.calls {
            match self.calls.iter_mut().find(|(h, _)| *h == hour) {
                Some((_, n)) => *n += count,
                None => self.calls.push((hour, count)),
            }
        }
    }
}

/// The tools that are metric labels, by resource (looked up without allocating).
#[derive(Default)]
struct ToolLabels {
    by_resource: FastMap<String, std::collections::HashSet<String, FastHash>>,
    count: usize,
}

/// The tool-call metrics' handles, by labels.
#[derive(Default)]
struct ToolMetrics {
    calls: telemetry::Handles<metrics::Counter>,
    durations: telemetry::Handles<metrics::Histogram>,
}

pub struct Audit {
    queue: mpsc::Sender<Message>,
    /// Cuts the writer's gathering short (a flush, or a queue half full).
    hurry: Arc<Notify>,
    store: SharedStore,
    clock: Clock,
    dropped: AtomicU64,
    usage: Mutex<FastMap<Group, Pending>>,
    /// The tool labels the metrics have taken so far.
    tool_labels: Mutex<ToolLabels>,
    metrics: ToolMetrics,
    retention: Duration,
    cap: usize,
}

impl Audit {
    /// Starts the writer on the current tokio runtime.
    pub fn new(store: SharedStore, clock: Clock, retention: Duration, cap: usize) -> Arc<Self> {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let hurry = Arc::new(Notify::new());
        let audit = Arc::new(Audit {
            queue,
            hurry: hurry.clone(),
            store,
            clock,
            dropped: AtomicU64::new(0),
            usage: Mutex::default(),
            tool_labels: Mutex::default(),
            metrics: ToolMetrics::default(),
            retention,
            cap,
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(write_events(Arc::downgrade(&audit), receiver, hurry));
            runtime.spawn(write_usage(Arc::downgrade(&audit)));
            runtime.spawn(trim_logs(Arc::downgrade(&audit)));
        }
        audit
    }

    /// Records an event: to the process log at once, to the store soon.
    pub fn record(&self, mut event: Event) {
        event.at = self.clock.now_ms();
        let kind = event.kind.map_or("unknown", EventKind::as_str);
        // Tool calls can be thousands a second: in the log at debug level only.
        if event.kind == Some(EventKind::ToolCall) {
            tracing::debug!(target: "gatehouse::audit", kind, client_id = event.client_id.as_deref(), tool = event.tool.as_deref(), outcome = event.outcome.as_deref(), duration_ms = event.duration_ms, "activity");
        } else {
            // Not the grant id: with a client id it would let a log reader end the grant.
            tracing::info!(target: "gatehouse::audit", kind, client_id = event.client_id.as_deref(), address = event.address.as_deref(), resource = event.resource.as_deref(), scopes = event.scopes.as_deref(), "activity");
        }
        match event.kind {
            Some(EventKind::ToolCall) => {
                let resource = event.resource.as_deref().unwrap_or_default();
                let outcome = event.outcome.as_deref().unwrap_or_default();
                let tool = self.tool_label(
                    resource,
                    event.tool.as_deref().unwrap_or_default(),
                    outcome == "ok",
                );
                self.metrics
                    .calls
                    .get(&[resource, tool, outcome], || {
                        metrics::counter!(telemetry::TOOL_CALLS, "resource" => resource.to_owned(), "tool" => tool.to_owned(), "outcome" => outcome.to_owned())
                    })
                    .increment(1);
                if let Some(ms) = event.duration_ms {
                    self.metrics
                        .durations
                        .get(&[resource], || {
                            metrics::histogram!(telemetry::TOOL_DURATION, "resource" => resource.to_owned())
                        })
                        .record(ms as f64 / 1000.0);
                }
            }
            Some(EventKind::RefreshReuseDetected) => {
                metrics::counter!(telemetry::REFRESH_REUSE).increment(1);
            }
            _ => {}
        }
        if self.queue.try_send(Message::Event(event)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(telemetry::ACTIVITY_DROPPED).increment(1);
        } else if self.queue.capacity() < QUEUE / 2 {
            self.hurry.notify_one();
        }
    }

    /// `tool` as a metric label: a tool becomes a label once a call to it succeeds
    /// (so names of tools that do not exist never do), while fewer than
    /// [`MAX_TOOL_LABELS`] are in use; anything else is `other`.
    fn tool_label<'a>(&self, resource: &str, tool: &'a str, succeeded: bool) -> &'a str {
        let mut labels = self.tool_labels.lock().unwrap_or_else(|p| p.into_inner());
        let known = labels
            .by_resource
            .get(resource)
            .is_some_and(|tools| tools.contains(tool));
        if known {
            return tool;
        }
        if succeeded && labels.count < MAX_TOOL_LABELS {
            labels
                .by_resource
                .entry(resource.to_owned())
                .or_default()
                .insert(tool.to_owned());
            labels.count += 1;
            return tool;
        }
        "other"
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Notes a tool call of `grant`: when, and one more call this hour.
    pub fn used(&self, grant: &Group) {
        let now = self.clock.now_ms();
        let hour = now / 3_600_000;
        let mut usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        if !usage.contains_key(grant) {
            usage.insert(grant.clone(), Pending::default());
        }
        let Some(pending) = usage.get_mut(grant) else {
            return;
        };
        pending.last_used = now;
        match pending.calls.iter_mut().find(|(h, _)| *h == hour) {
            Some((_, n)) => *n += 1,
            None => pending.calls.push((hour, 1)),
        }
    }

    /// Waits until every event recorded so far is in the store, and writes the usage
    /// counters (for tests and shutdown).
    pub async fn flush(&self) -> StoreResult<()> {
        let (done, wait) = oneshot::channel();
        if self.queue.send(Message::Flush(done)).await.is_ok() {
            self.hurry.notify_one();
            let _ = wait.await;
        }
        self.write_usage().await
    }

    /// The newest events first, at most `limit`, older than `before`: both logs
    /// merged by time, or only the one that holds `kind` when given. Each event
    /// comes with the cursor that reads on after it, and [`Reading::end`] with the
    /// cursor past everything this reading looked at (entries that do not decode,
    /// from a newer version, say, included). Fewer than `limit` events does not mean
    /// the end: [`Cursor::is_done`] does.
    pub async fn read(
        &self,
        limit: usize,
        before: &Cursor,
        kind: Option<EventKind>,
    ) -> StoreResult<Reading> {
        // Events written before they had a place in the second log are in the main
        // log, so a reading of them reads both.
        let calls_wanted = kind.is_none_or(in_numbers);
        let mut others = self.slice(LOG, limit, &before.others, true).await?;
        let mut calls = self
            .slice(CALLS, limit, &before.calls, calls_wanted)
            .await?;
        let mut events = Vec::new();
        while events.len() < limit {
            // A log whose entries read so far are all taken (or did not decode), and
            // that has more, must be read on before anything older of the other log
            // is taken: the next reading does.
            if others.must_read_on() || calls.must_read_on() {
                break;
            }
            let from_others = match (others.newest(), calls.newest()) {
                (Some(a), Some(b)) => a >= b,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let slice = if from_others { &mut others } else { &mut calls };
            let Some(event) = slice.take() else { break };
            events.push((
                Cursor {
                    others: others.part(),
                    calls: calls.part(),
                },
                event,
            ));
        }
        Ok(Reading {
            events,
            end: Cursor {
                others: others.part(),
                calls: calls.part(),
            },
        })
    }

    /// What `log` holds from `from` on: up to `limit` entries, none when not
    /// `wanted`.
    async fn slice(
        &self,
        log: &str,
        limit: usize,
        from: &Part,
        wanted: bool,
    ) -> StoreResult<Slice> {
        let before = match from {
            Part::Done => None,
            _ if !wanted => None,
            Part::Newest => Some(None),
            Part::Before(id) => Some(Some(id.as_str())),
        };
        let Some(before) = before else {
            return Ok(Slice {
                start: Part::Done,
                events: Default::default(),
                exhausted: true,
                last_read: None,
                last_taken: None,
            });
        };
        let entries = self.store.log_read(log, limit, before).await?;
        let exhausted = entries.len() < limit;
        let last_read = entries.last().map(|(id, _)| id.clone());
        let events = entries
            .into_iter()
            .filter_map(|(id, raw)| decode(&raw).ok().map(|e| (id, e)))
            .collect();
        Ok(Slice {
            start: from.clone(),
            events,
            exhausted,
            last_read,
            last_taken: None,
        })
    }

    /// A grant's use as last written.
    pub async fn usage(&self, grant: &Group) -> StoreResult<Usage> {
        Ok(match self.store.get(&usage_key(grant)).await? {
            Some(raw) => decode(&raw)?,
            None => Usage::default(),
        })
    }

    async fn write_usage(&self) -> StoreResult<()> {
        let pending: Vec<(Group, Pending)> = {
            let mut usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
            usage.drain().collect()
        };
        let mut failed = None;
        let mut pending = pending.into_iter();
        while let Some((grant, delta)) = pending.next() {
            let Err(e) = self.add_usage(&grant, &delta).await else {
                continue;
            };
            // Kept for the next write while the store is away (a store that fails
            // for a moment loses no counts; a write that failed after it took may
            // count twice), the rest untried: each would wait out the timeout. A
            // grant whose record cannot be written for another reason (one of
            // another version, say) holds up no other.
            if matches!(e, StoreError::Unavailable(_)) {
                let mut usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
                for (grant, delta) in std::iter::once((grant, delta)).chain(pending) {
                    usage.entry(grant).or_default().merge(delta);
                }
                return Err(e);
            }
            failed.get_or_insert(e);
        }
        failed.map_or(Ok(()), Err)
    }

    async fn add_usage(&self, grant: &Group, delta: &Pending) -> StoreResult<()> {
        let key = usage_key(grant);
        // Several instances add to the same record: compare-and-swap.
        for _ in 0..5 {
            let current = self.store.get(&key).await?;
            let mut usage: Usage = match &current {
                Some(raw) => decode(raw)?,
                None => Usage::default(),
            };
            usage.add(delta.last_used, &delta.calls);
            let put = Put::ttl(Duration::from_secs(25 * 3600)).in_group(grant);
            let written = match &current {
                Some(raw) => {
                    self.store
                        .compare_and_swap(&key, raw, &encode(&usage)?, put)
                        .await?
                }
                // A grant revoked since its calls (here or on another instance)
                // gets no record: revoking removed its group, and nothing may
                // bring a part of it back. Looked at again after writing, for a
                // revocation that came in between.
                None if !self.grant_is_live(grant).await? => return Ok(()),
                None => {
                    let written = self.store.put_new(&key, &encode(&usage)?, put).await?;
                    if written && !self.grant_is_live(grant).await? {
                        self.store.delete(&key).await?;
                    }
                    written
                }
            };
            if written {
                break;
            }
        }
        Ok(())
    }

    async fn grant_is_live(&self, grant: &Group) -> StoreResult<bool> {
        Ok(self
            .store
            .get(&crate::oauth::records::grant_key(grant))
            .await?
            .is_some())
    }
}

/// How long after start-up both logs are first trimmed, and how often after that.
/// Each log trims itself to its retention and cap as it is written to, but one
/// nothing is written to any more (the main log once the owner stops signing in
/// and approving, say) would keep its events, addresses among them, past
/// `--activity-retention`, as would a lowered `--activity-max-events`.
const TRIM_FIRST: Duration = Duration::from_secs(60);
const TRIM_EVERY: Duration = Duration::from_secs(3600);

async fn trim_logs(audit: std::sync::Weak<Audit>) {
    tokio::time::sleep(TRIM_FIRST).await;
    loop {
        let Some(audit) = audit.upgrade() else { break };
        for log in [LOG, CALLS] {
            if let Err(e) = audit
                .store
                .log_append(log, &[], audit.cap, audit.retention)
                .await
            {
                tracing::warn!(error = %e, "cannot trim the activity log");
            }
        }
        drop(audit);
        tokio::time::sleep(TRIM_EVERY).await;
    }
}

async fn write_events(
    audit: std::sync::Weak<Audit>,
    mut receiver: mpsc::Receiver<Message>,
    hurry: Arc<Notify>,
) {
    let mut messages = Vec::new();
    while let Some(first) = receiver.recv().await {
        // The first event wakes the writer; those after it wait in the queue for
        // GATHER without waking it once each (under load, a wake of this task per
        // tool call cost more than the writes), and are written with it: one
        // (durable) store write for many. A flush, or a queue half full, cuts the
        // wait short.
        if !matches!(first, Message::Flush(_)) {
            tokio::select! {
                () = tokio::time::sleep(GATHER) => {}
                () = hurry.notified() => {}
            }
        }
        messages.push(first);
        while messages.len() < QUEUE {
            match receiver.try_recv() {
                Ok(message) => messages.push(message),
                Err(_) => break,
            }
        }
        let mut batch = Vec::with_capacity(messages.len());
        let mut waiting = Vec::new();
        for message in messages.drain(..) {
            match message {
                Message::Event(event) => batch.push(event),
                Message::Flush(done) => waiting.push(done),
            }
        }
        let Some(audit) = audit.upgrade() else { break };
        let (calls, others): (Vec<Event>, Vec<Event>) = coalesce(batch)
            .into_iter()
            .partition(|e| e.kind.is_some_and(in_numbers));
        for (log, events) in [(LOG, others), (CALLS, calls)] {
            for events in events.chunks(BATCH) {
                let entries: Vec<Vec<u8>> = events.iter().filter_map(|e| encode(e).ok()).collect();
                if let Err(e) = audit
                    .store
                    .log_append(log, &entries, audit.cap, audit.retention)
                    .await
                {
                    tracing::warn!(error = %e, lost = entries.len(), "cannot write the activity log");
                }
            }
        }
        for done in waiting {
            let _ = done.send(());
        }
    }
}

/// Events read from the activity, each with the cursor after it, and the cursor
/// after all of them.
pub struct Reading {
    pub events: Vec<(Cursor, Event)>,
    pub end: Cursor,
}

/// One log's part of a reading: the events read from it and not yet taken.
struct Slice {
    start: Part,
    events: std::collections::VecDeque<(String, Event)>,
    /// Fewer entries than asked for were read: there are no more.
    exhausted: bool,
    /// The id of the oldest entry read, whether or not it decoded.
    last_read: Option<String>,
    last_taken: Option<String>,
}

impl Slice {
    /// When the newest event not yet taken happened.
    fn newest(&self) -> Option<u64> {
        self.events.front().map(|(_, e)| e.at)
    }

    fn must_read_on(&self) -> bool {
        self.events.is_empty() && !self.exhausted
    }

    fn take(&mut self) -> Option<Event> {
        let (id, event) = self.events.pop_front()?;
        self.last_taken = Some(id);
        Some(event)
    }

    /// Where a reading after the events taken so far starts in this log.
    fn part(&self) -> Part {
        match (self.events.is_empty(), &self.last_read, &self.last_taken) {
            // Every event read is taken: past what was read, undecodable included.
            (true, _, _) if self.exhausted => Part::Done,
            (true, Some(id), _) | (false, _, Some(id)) => Part::Before(id.clone()),
            _ => self.start.clone(),
        }
    }
}

/// Where a reading of the activity stopped, in each of its two logs: an opaque
/// string to the console (`<others>~<calls>`), checked when it comes back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    others: Part,
    calls: Part,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum Part {
    /// From the newest entry.
    #[default]
    Newest,
    /// Before this entry id.
    Before(String),
    /// Nothing more to read.
    Done,
}

impl Cursor {
    /// A cursor as [`Cursor::to_string`] wrote it; `None` for anything else.
    pub fn parse(raw: &str) -> Option<Cursor> {
        // An entry id: digits (embedded) or digits-digits (a Redis stream id).
        fn part(raw: &str) -> Option<Part> {
            // Digits that fit the stores' u64s.
            let digits =
                |s: &str| s.bytes().all(|b| b.is_ascii_digit()) && s.parse::<u64>().is_ok();
            match raw {
                "" => Some(Part::Newest),
                "-" => Some(Part::Done),
                id => {
                    let zero = |s: &str| s.parse::<u64>() == Ok(0);
                    let (valid, first) = match id.split_once('-') {
                        Some((ms, seq)) => (digits(ms) && digits(seq), zero(ms) && zero(seq)),
                        None => (digits(id), zero(id)),
                    };
                    // Nothing comes before the first id (and Redis refuses an
                    // exclusive range that ends before it): that log is read.
                    valid.then(|| {
                        if first {
                            Part::Done
                        } else {
                            Part::Before(id.to_owned())
                        }
                    })
                }
            }
        }
        let (others, calls) = raw.split_once('~')?;
        Some(Cursor {
            others: part(others)?,
            calls: part(calls)?,
        })
    }

    /// Whether both logs are read to their end.
    pub fn is_done(&self) -> bool {
        self.others == Part::Done && self.calls == Part::Done
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let part = |p: &Part| match p {
            Part::Newest => String::new(),
            Part::Before(id) => id.clone(),
            Part::Done => "-".to_owned(),
        };
        write!(f, "{}~{}", part(&self.others), part(&self.calls))
    }
}

/// Folds the tool calls of one batch that differ only in time (same client, grant,
/// server, tool and outcome) into the first of them, counting them in
/// [`Event::calls`] and keeping the longest duration. A client calling in a loop
/// then writes one event per batch instead of one per call: the log of calls stays
/// readable, and the store does one insert where it did thousands (under load, the log's writes were
/// the server's largest single cost after the sockets).
fn coalesce(batch: Vec<Event>) -> Vec<Event> {
    type Alike = (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let mut kept: Vec<Event> = Vec::with_capacity(batch.len());
    // Keyed by tool names a caller chooses (denied calls are logged too): std's
    // SipHash, not `FastMap` (see `telemetry::FastHash`).
    let mut first: std::collections::HashMap<Alike, usize> = std::collections::HashMap::new();
    for event in batch {
        if event.kind != Some(EventKind::ToolCall) {
            kept.push(event);
            continue;
        }
        let alike = (
            event.client_id.clone(),
            event.grant.clone(),
            event.resource.clone(),
            event.tool.clone(),
            event.outcome.clone(),
        );
        match first.get(&alike) {
            Some(&index) => {
                let into = &mut kept[index];
                into.calls = Some(into.calls.unwrap_or(1) + event.calls.unwrap_or(1));
                into.duration_ms = into.duration_ms.max(event.duration_ms);
            }
            None => {
                first.insert(alike, kept.len());
                kept.push(event);
            }
        }
    }
    kept
}

async fn write_usage(audit: std::sync::Weak<Audit>) {
    let mut tick = tokio::time::interval(USAGE_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(audit) = audit.upgrade() else { break };
        if let Err(e) = audit.write_usage().await {
            tracing::warn!(error = %e, "cannot write usage counters");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_name_shows_what_it_holds() {
        let event = Event::new(EventKind::ToolCall).tool(
            "delete\u{200b}_article\u{202e} ok\u{fe0f}\u{e0100}",
            "denied",
            Duration::ZERO,
        );
        assert_eq!(
            event.tool.as_deref(),
            Some("delete\\u{200b}_article\\u{202e} ok\\u{fe0f}\\u{e0100}")
        );
        // A name that writes such an escape itself does not pass for one.
        let written = Event::new(EventKind::ToolCall).tool("a\\u{200b}b", "ok", Duration::ZERO);
        assert_eq!(written.tool.as_deref(), Some("a\\\\u{200b}b"));
        let long = Event::new(EventKind::ToolCall).tool("x".repeat(500), "ok", Duration::ZERO);
        assert_eq!(long.tool.map(|t| t.chars().count()), Some(MAX_TOOL_NAME));
    }

    /// A log nothing is written to any more keeps to its retention all the same:
    /// both logs are trimmed a minute after start-up and every hour after.
    #[tokio::test(start_paused = true)]
    async fn a_log_nothing_is_written_to_keeps_to_its_retention() {
        let dir = tempfile::tempdir().expect("dir");
        let clock = Clock::manual();
        let path = dir.path().join("store.redb");
        let store = crate::store::embedded::EmbeddedStore::open_with_clock(&path, clock.clone())
            .expect("open");
        let audit = Audit::new(
            Arc::new(store),
            clock.clone(),
            Duration::from_secs(3600),
            100,
        );
        audit.record(Event::new(EventKind::SignInSucceeded));
        audit.flush().await.expect("flush");
        let read = audit
            .read(10, &Cursor::default(), None)
            .await
            .expect("read");
        assert_eq!(read.events.len(), 1);
        clock.advance(Duration::from_secs(2 * 3600));
        // Past the next trim, whether the first came before this point or not.
        tokio::time::sleep(TRIM_FIRST + TRIM_EVERY + Duration::from_secs(1)).await;
        let read = audit
            .read(10, &Cursor::default(), None)
            .await
            .expect("read");
        assert!(read.events.is_empty(), "{} events", read.events.len());
    }

    /// Usage goes into the grant's group, so revoking removes it; calls counted
    /// before a revocation must not bring a record back after it.
    #[tokio::test]
    async fn a_revoked_grant_gets_no_usage_record() {
        let dir = tempfile::tempdir().expect("dir");
        let clock = Clock::manual();
        let store: SharedStore = Arc::new(
            crate::store::embedded::EmbeddedStore::open_with_clock(
                &dir.path().join("store.redb"),
                clock.clone(),
            )
            .expect("open"),
        );
        let audit = Audit::new(store.clone(), clock, Duration::from_secs(3600), 100);
        let grant = Group::random();
        let record = crate::oauth::records::grant_key(&grant);
        store
            .put(&record, b"grant", Put::forever().in_group(&grant))
            .await
            .expect("put");
        audit.used(&grant);
        audit.flush().await.expect("flush");
        assert_ne!(audit.usage(&grant).await.expect("usage").last_used, 0);
        store.delete_group(&grant).await.expect("revoke");
        audit.used(&grant);
        audit.flush().await.expect("flush");
        assert!(store.get(&usage_key(&grant)).await.expect("get").is_none());
    }

    #[test]
    fn a_cursor_reads_back_what_it_wrote_and_nothing_else() {
        for cursor in [
            Cursor::default(),
            Cursor {
                others: Part::Before("1733480000000123".into()),
                calls: Part::Done,
            },
            Cursor {
                others: Part::Done,
                calls: Part::Before("1733480000000-7".into()),
            },
        ] {
            assert_eq!(Cursor::parse(&cursor.to_string()), Some(cursor));
        }
        for bad in ["", "1", "a~", "~-1", "1--2~", "-~-~", "1-~", "ä~"] {
            assert_eq!(Cursor::parse(bad), None, "{bad:?}");
        }
        // Nothing is before the first id: Redis refused such a range (a 503 in the
        // console), so a log read up to it is read to its end.
        for first in ["0-0~", "00-0~", "0~"] {
            let cursor = Cursor::parse(first).expect(first);
            assert_eq!(cursor.others, Part::Done, "{first:?}");
        }
    }

    #[test]
    fn usage_counts_the_last_day() {
        let hour = 3_600_000u64;
        let mut usage = Usage::default();
        usage.add(100 * hour, &[(100, 3), (90, 2)]);
        usage.add(101 * hour, &[(101, 1), (100, 1), (70, 9)]);
        assert_eq!(usage.last_used, 101 * hour);
        assert_eq!(usage.calls_last_day(101 * hour), 7, "{usage:?}");
        assert!(
            usage.hours.iter().all(|(h, _)| *h != 70),
            "older than 25 h dropped"
        );
    }

    /// Paging through both logs yields every event once, newest first, whatever the
    /// page size, and gets past entries that do not decode (from a newer version,
    /// say) to the end.
    #[tokio::test]
    async fn readings_page_through_both_logs_by_time_past_what_does_not_decode() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: SharedStore = std::sync::Arc::new(
            crate::store::embedded::EmbeddedStore::open(&dir.path().join("s.redb")).expect("store"),
        );
        let audit = Audit::new(
            store.clone(),
            Clock::system(),
            Duration::from_secs(3600),
            1000,
        );
        let now = Clock::system().now_ms();
        let event = |kind: EventKind, at: u64| {
            encode(&Event {
                at: now + at,
                ..Event::new(kind)
            })
            .expect("encode")
        };
        let garbage = |n: usize| vec![b"{\"kind\":\"from_the_future\"}".to_vec(); n];
        // Oldest first, as written: calls and other events interleaved in time,
        // with runs of undecodable entries between them in the main log.
        let mut expected = Vec::new();
        for at in 0..60u64 {
            let (log, kind) = if at % 3 == 0 {
                (LOG, EventKind::ConsentApproved)
            } else {
                (CALLS, EventKind::ToolCall)
            };
            store
                .log_append(log, &[event(kind, at)], 1000, Duration::from_secs(3600))
                .await
                .expect("append");
            if at % 20 == 0 {
                store
                    .log_append(LOG, &garbage(25), 1000, Duration::from_secs(3600))
                    .await
                    .expect("append");
            }
            expected.push(now + at);
        }
        expected.reverse();
        for limit in [1, 4, 7, 10, 100] {
            let mut seen = Vec::new();
            let mut cursor = Cursor::default();
            for _ in 0..1000 {
                let reading = audit.read(limit, &cursor, None).await.expect("read");
                assert!(reading.events.len() <= limit);
                seen.extend(reading.events.iter().map(|(_, e)| e.at));
                // Each event's own cursor reads on right after it.
                if let Some((after, _)) = reading.events.first() {
                    let on = audit.read(limit, after, None).await.expect("read");
                    let next: Vec<u64> = on.events.iter().map(|(_, e)| e.at).collect();
                    let rest: Vec<u64> = reading.events.iter().skip(1).map(|(_, e)| e.at).collect();
                    assert!(
                        next.starts_with(&rest) || rest.starts_with(&next),
                        "limit {limit}: {next:?} after {rest:?}"
                    );
                }
                cursor = Cursor::parse(&reading.end.to_string()).expect("round trip");
                if cursor.is_done() {
                    break;
                }
            }
            assert!(cursor.is_done(), "limit {limit}: reached the end");
            assert_eq!(seen, expected, "limit {limit}");
            // A kind of the main log only: the other is not even read.
            let others = audit
                .read(100, &Cursor::default(), Some(EventKind::ConsentApproved))
                .await
                .expect("read");
            assert_eq!(others.events.len(), 20);
            assert!(others.end.is_done());
        }
    }

    /// However many refreshes, registrations and failed sign-ins there are, a
    /// consent stays in the log: they have the other log, with its own cap.
    #[tokio::test]
    async fn events_anyone_can_cause_in_numbers_push_no_consent_out() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: SharedStore = std::sync::Arc::new(
            crate::store::embedded::EmbeddedStore::open(&dir.path().join("s.redb")).expect("store"),
        );
        let audit = Audit::new(store, Clock::system(), Duration::from_secs(3600), 20);
        audit.record(Event::new(EventKind::ConsentApproved).client("c1"));
        for i in 0..50 {
            audit.record(
                Event::new(EventKind::TokenRefreshed)
                    .client("c1")
                    .grant("g1"),
            );
            audit.record(Event::new(EventKind::ClientRegistered).client(format!("r{i}")));
            audit.record(Event::new(EventKind::SignInFailed).address("192.0.2.1"));
        }
        audit.flush().await.expect("flush");
        let consents = audit
            .read(100, &Cursor::default(), Some(EventKind::ConsentApproved))
            .await
            .expect("read");
        assert_eq!(consents.events.len(), 1);
        let refreshes = audit
            .read(100, &Cursor::default(), Some(EventKind::TokenRefreshed))
            .await
            .expect("read");
        assert!(!refreshes.events.is_empty());
    }

    #[tokio::test]
    async fn alike_tool_calls_in_one_write_become_one_event_that_counts_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: SharedStore = std::sync::Arc::new(
            crate::store::embedded::EmbeddedStore::open(&dir.path().join("s.redb")).expect("store"),
        );
        let audit = Audit::new(store, Clock::system(), Duration::from_secs(3600), 1000);
        let call = |tool: &str, outcome: &str, ms: u64| {
            Event::new(EventKind::ToolCall)
                .client("c1")
                .grant("g1")
                .resource("https://gh.example/mcp")
                .tool(tool, outcome, Duration::from_millis(ms))
        };
        for i in 0..300 {
            audit.record(call("search", "ok", i % 7));
        }
        audit.record(Event::new(EventKind::SignInFailed).address("192.0.2.1"));
        audit.record(call("search", "error", 2));
        audit.record(call("search", "ok", 50).client("c2"));
        audit.flush().await.expect("flush");

        let events: Vec<Event> = audit
            .read(100, &Cursor::default(), None)
            .await
            .expect("read")
            .events
            .into_iter()
            .map(|(_, e)| e)
            .collect();
        assert_eq!(events.len(), 4, "{events:#?}");
        let folded = events
            .iter()
            .find(|e| e.client_id.as_deref() == Some("c1") && e.outcome.as_deref() == Some("ok"))
            .expect("the folded calls");
        assert_eq!(folded.calls, Some(300));
        assert_eq!(folded.duration_ms, Some(6), "the longest");
        for other in events.iter().filter(|e| !std::ptr::eq(*e, folded)) {
            assert_eq!(other.calls, None, "{other:?}");
        }
        assert!(events
            .iter()
            .any(|e| e.kind == Some(EventKind::SignInFailed)));
    }

    #[test]
    fn kinds_round_trip() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
            let json = serde_json::to_string(&kind).expect("json");
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
    }

    #[test]
    fn a_clients_tool_names_are_bounded_in_events_and_metrics() {
        let long = "t".repeat(10_000);
        let event = Event::new(EventKind::ToolCall).tool(&long, "error", Duration::ZERO);
        assert_eq!(event.tool.as_deref().map(str::len), Some(MAX_TOOL_NAME));
        let wide = "é".repeat(MAX_TOOL_NAME + 5);
        let event = Event::new(EventKind::ToolCall).tool(&wide, "error", Duration::ZERO);
        assert_eq!(event.tool.map(|t| t.chars().count()), Some(MAX_TOOL_NAME));

        let dir = tempfile::tempdir().expect("temp dir");
        let store: SharedStore = std::sync::Arc::new(
            crate::store::embedded::EmbeddedStore::open(&dir.path().join("s.redb")).expect("store"),
        );
        let audit = Audit::new(store, Clock::system(), Duration::from_secs(60), 10);
        // Failed calls to made-up names take no label.
        for i in 0..2 * MAX_TOOL_LABELS {
            assert_eq!(
                audit.tool_label("r", &format!("made-up{i}"), false),
                "other"
            );
        }
        for i in 0..MAX_TOOL_LABELS {
            assert_eq!(
                audit.tool_label("r", &format!("tool{i}"), true),
                format!("tool{i}")
            );
        }
        assert_eq!(audit.tool_label("r", "one-more", true), "other");
        assert_eq!(
            audit.tool_label("r", "tool7", false),
            "tool7",
            "known labels stay"
        );
    }
}
