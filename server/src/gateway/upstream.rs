//! Connections to one upstream: a session's own (one child process per session for
//! stdio servers, one upstream session for HTTP ones), a small pool for sessionless
//! requests, the cap on sessions, and what `/healthz` reports.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex as StdMutex},
    time::{Duration, SystemTime},
};

use process_wrap::tokio::ChildWrapper;
use rmcp::{
    model::{
        ClientCapabilities, ClientConfig, Implementation, InitializeRequestParams,
        PaginatedRequestParams, ProtocolVersion, ServerPeerInfo, Tool, ToolAnnotations,
    },
    service::{
        serve_client_with_lifecycle, ClientCacheConfig, ClientLifecycleMode, Peer, ServiceError,
    },
    transport::{
        async_rw::AsyncRwTransport, common::client_side_sse::ExponentialBackoff,
        streamable_http_client::StreamableHttpClientTransportConfig, StreamableHttpClientTransport,
    },
    ErrorData, RoleClient, RoleServer, ServiceExt,
};
use serde::Serialize;
use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt},
    sync::{Mutex, OwnedSemaphorePermit, Semaphore},
};

use super::{
    config::{Transport, Upstream},
    direct::{Leg, Recorder, Sender},
    lock,
    policy::ToolPolicy,
    relay::{InOrder, Routes, UpClient, UpService},
};
use crate::{
    oauth::client::ClientId,
    places::{Place, Places},
    resource::Resource,
};

/// How often an unknown tool may make Gatehouse list an upstream's tools.
const RELIST_AFTER: Duration = Duration::from_secs(30);

/// How often it may after the upstream said its tools changed.
const RELIST_STALE: Duration = Duration::from_secs(1);

/// Idle connections kept to an HTTP upstream, and for how long. Without reuse every
/// upstream call opened a TCP connection (thousands in `TIME_WAIT` after a few
/// seconds of load) and the gateway over HTTP ran at half its throughput. A call may
/// start before the connection of the one before it is back in the pool, so a busy
/// upstream holds more connections than calls in flight: with room for only as many
/// idle ones as calls (64 at 64 sessions), one call in forty still opened one.
const IDLE_PER_HOST: usize = 256;
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest stderr line kept; longer ones are cut.
const MAX_STDERR_LINE: usize = 8 * 1024;

/// How many requests one session (or one pooled connection) may have in flight to
/// the upstream at once; past that, a request is refused with a JSON-RPC error. Each
/// holds an upstream connection (HTTP) or a place in a server's queue (stdio), and
/// sessions are bounded by `max_sessions`, so what clients make Gatehouse hold is too.
pub const MAX_CALLS: usize = 64;

/// How long a stdio server has to exit once its session ends (its stdin closed), and
/// again after `SIGTERM`; then its process group is killed.
const EXIT_GRACE: Duration = Duration::from_secs(3);

/// One upstream connection, alive as long as this value: dropping it ends the rmcp
/// client, and a stdio server's process group (see [`end_process`]).
pub struct UpSession {
    service: UpService,
    pub routes: Arc<Mutex<Routes>>,
    /// An HTTP upstream's direct path for tool calls ([`super::direct`]).
    pub leg: Option<Arc<Leg>>,
    /// Its places and (stdio) process, until [`UpSession::shut`] or its drop.
    owned: StdMutex<Owned>,
    /// Places for the requests in flight to the upstream (see [`MAX_CALLS`]).
    calls: Arc<Semaphore>,
    /// Places for the relayed requests whose answers are not yet sent (see
    /// [`UpSession::answer_place`]).
    answers: Arc<Semaphore>,
}

/// The process groups of an upstream's stdio servers that are not reaped yet, by
/// group id: what is killed when Gatehouse stops.
type Processes = Arc<StdMutex<HashSet<i32>>>;

/// Sessions each client holds on one upstream, for `max_sessions_per_client`.
type Held = Places<ClientId>;

/// One of a client's places on an upstream, given back when dropped.
type ClientPlace = Place<ClientId>;

impl UpSession {
    pub fn peer(&self) -> &Peer<RoleClient> {
        self.service.peer()
    }

    /// The upstream's side of the handshake.
    pub fn info(&self) -> Option<Arc<ServerPeerInfo>> {
        self.service.peer_info()
    }

    /// Ends the upstream session now, while something may still hold this value (a
    /// downstream session that rmcp could not close in time, say): its places are
    /// given back at once for an HTTP upstream, and once its process is gone for a
    /// stdio one.
    pub fn shut(&self) {
        self.service.cancellation_token().cancel();
        self.end();
    }

    /// A place for one request in flight, held until its answer is done; `None`
    /// when [`MAX_CALLS`] are in flight.
    pub fn call_place(&self) -> Option<OwnedSemaphorePermit> {
        self.calls.clone().try_acquire_owned().ok()
    }

    /// A place for one request the session relays through rmcp, held until its
    /// answer has been sent to the client; `None` when [`MAX_CALLS`] are held. A
    /// call's place ([`Self::call_place`]) is given back once the upstream answers;
    /// this one bounds the answers that then wait for a client that does not read
    /// them.
    pub fn answer_place(&self) -> Option<OwnedSemaphorePermit> {
        self.answers.clone().try_acquire_owned().ok()
    }

    /// Whether a request of the session is in flight, or its answer not yet sent.
    pub fn busy(&self) -> bool {
        self.calls.available_permits() < MAX_CALLS || self.answers.available_permits() < MAX_CALLS
    }

    fn end(&self) {
        lock(&self.owned).end();
    }
}

/// What a connection holds until it ends: for a session, one place of
/// `max_sessions` and one of its client's `max_sessions_per_client`; for a stdio
/// server, its process, the leader of its own group. Dropped or ended (a session
/// that ends, an `initialize` that fails, a caller that goes away while the
/// connection is being opened), the process is ended ([`end_process`]) and the
/// places are given back only once it is gone.
struct Owned {
    place: Option<(OwnedSemaphorePermit, ClientPlace)>,
    process: Option<Box<dyn ChildWrapper>>,
    processes: Processes,
}

impl Owned {
    fn end(&mut self) {
        let place = self.place.take();
        let Some(process) = self.process.take() else {
            return drop(place);
        };
        let ending = Ending::new(process, self.processes.clone());
        match tokio::runtime::Handle::try_current() {
            // Spawned onto a runtime that is stopping, the task never runs: dropped,
            // `ending` kills the group then.
            Ok(runtime) => {
                runtime.spawn(end_process(ending, place));
            }
            // No runtime to wait in: the group is killed now.
            Err(_) => drop(ending),
        }
    }
}

/// A stdio server being ended. Dropped before [`end_process`] is done with it (its
/// task never ran, or was cut off as Gatehouse stops), its process group is killed
/// at once and forgotten, unless its leader is being reaped already.
struct Ending {
    process: Box<dyn ChildWrapper>,
    pid: Option<i32>,
    processes: Processes,
    /// Its group may still be signalled: its leader is not being reaped.
    signal_on_drop: bool,
}

impl Ending {
    fn new(process: Box<dyn ChildWrapper>, processes: Processes) -> Self {
        let pid = process.id().and_then(|id| i32::try_from(id).ok());
        Ending {
            process,
            pid,
            processes,
            signal_on_drop: true,
        }
    }

    /// Kills the group and forgets it; its leader may be reaped after this.
    fn kill(&mut self) {
        if let Some(pid) = self.pid {
            lock(&self.processes).remove(&pid);
        }
        let _ = self.process.start_kill();
    }
}

impl Drop for Ending {
    fn drop(&mut self) {
        if self.signal_on_drop {
            self.kill();
        }
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.end();
    }
}

/// Ends a stdio server as the MCP specification's stdio transport says: its stdin is
/// closed (rmcp's client closes it as the session ends), then it has [`EXIT_GRACE`]
/// to exit, then `SIGTERM` and as long again; then its whole process group gets
/// `SIGKILL`, which also ends what it left running (`npx` runs the server as its
/// child). Only then are its places given back, so that `max_sessions` bounds the
/// processes alive, not only the sessions. The leader is reaped last: until then its
/// group id cannot be given to another process.
async fn end_process<P: Send>(ending: Ending, place: P) {
    end_process_within(ending, place, EXIT_GRACE).await
}

async fn end_process_within<P: Send>(mut ending: Ending, place: P, grace: Duration) {
    if let Some(pid) = ending.pid {
        if !exits_within(pid, grace).await {
            let _ = ending
                .process
                .signal(nix::sys::signal::Signal::SIGTERM as i32);
            exits_within(pid, grace).await;
        }
    }
    ending.kill();
    ending.signal_on_drop = false;
    let _ = tokio::time::timeout(grace, ending.process.wait()).await;
    drop(place);
}

/// Whether the process `pid` (a child of Gatehouse's) exits within `grace`, looked at
/// without reaping it.
async fn exits_within(pid: i32, grace: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        // Exited, or not a child of ours any more.
        if exited(pid) != Some(false) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// When Gatehouse stops: `SIGTERM` to every stdio server's process group still
/// there, up to [`EXIT_GRACE`] for them to go, then `SIGKILL` to those that stay.
///
/// Only groups still in an upstream's set are signalled, under its lock: a group
/// leaves the set before its leader is reaped ([`end_process`]), so its id is still
/// its own.
pub async fn end_processes(upstreams: &[Arc<Shared>]) {
    use nix::sys::signal::{killpg, Signal};
    let signal_all = |signal: Signal| {
        let mut any = false;
        for upstream in upstreams {
            for &group in lock(&upstream.processes).iter() {
                let _ = killpg(nix::unistd::Pid::from_raw(group), signal);
                any = true;
            }
        }
        any
    };
    if !signal_all(Signal::SIGTERM) {
        return;
    }
    let deadline = tokio::time::Instant::now() + EXIT_GRACE;
    let running = || {
        upstreams.iter().any(|u| {
            lock(&u.processes)
                .iter()
                .any(|&pid| exited(pid) == Some(false))
        })
    };
    while tokio::time::Instant::now() < deadline && running() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal_all(Signal::SIGKILL);
}

/// Whether the process `pid`, a child of Gatehouse's, has exited (looked at without
/// reaping it); `None` when it is not a child of ours (any more).
fn exited(pid: i32) -> Option<bool> {
    use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(nix::unistd::Pid::from_raw(pid)), flags) {
        Ok(WaitStatus::StillAlive) => Some(false),
        Ok(_) => Some(true),
        Err(_) => None,
    }
}

/// What `/healthz` says of an upstream.
#[derive(Clone, Debug, Serialize)]
pub struct Health {
    pub name: String,
    pub transport: &'static str,
    /// `up` after the last connection succeeded, `down` after it failed, `unknown`
    /// before any.
    pub status: &'static str,
    pub sessions: usize,
    /// What went wrong last, in a few fixed words: this is public, and what an
    /// upstream answers (an error page, say) may say anything. The detail is in the log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checked_at: Option<u64>,
}

#[derive(Default)]
struct Observed {
    ok: Option<bool>,
    error: Option<&'static str>,
    at: Option<SystemTime>,
    info: Option<Arc<ServerPeerInfo>>,
}

/// One pooled connection for sessionless requests, and when it may be opened again.
#[derive(Default)]
struct PoolSlot {
    session: Option<Arc<UpSession>>,
    retry_at: Option<tokio::time::Instant>,
    /// The wait after the last failed start; none after a start that succeeded.
    backoff: Duration,
}

impl PoolSlot {
    /// Whether it may be opened `now`.
    fn may_open(&self, now: tokio::time::Instant) -> bool {
        self.retry_at.is_none_or(|at| now >= at)
    }

    /// An attempt to open it begins `now`: the next may begin [`POOL_BACKOFF`]`.0`
    /// after it at the earliest, so that requests that make a server exit do not
    /// start one each. A connection that ran longer than that is opened again at
    /// once when it closes.
    fn attempt(&mut self, now: tokio::time::Instant) {
        self.session = None;
        self.retry_at = Some(now + POOL_BACKOFF.0);
    }

    /// The attempt failed `now`: the next waits twice as long as after the last
    /// failure, up to [`POOL_BACKOFF`]`.1`.
    fn failed(&mut self, now: tokio::time::Instant) {
        self.backoff = (self.backoff * 2).clamp(POOL_BACKOFF.0, POOL_BACKOFF.1);
        self.retry_at = Some(now + self.backoff);
    }

    fn opened(&mut self, session: Arc<UpSession>) {
        self.session = Some(session);
        self.backoff = Duration::ZERO;
    }
}

/// A pooled connection starts at most once per the first of these; after a failed
/// start the next waits that long after the failure, doubling up to the second while
/// starts keep failing: a stdio server that dies at start, or exits on some
/// request, is not started again for every sessionless request (each such request
/// is refused meanwhile, unless another pooled connection takes it).
const POOL_BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(10));

/// What every session of one upstream shares.
pub struct Shared {
    pub config: Upstream,
    pub resource: Arc<Resource>,
    pub policy: Arc<ToolPolicy>,
    places: Arc<Semaphore>,
    held: Held,
    /// When the upstream's tools were last listed for an unknown tool: at most
    /// once per [`RELIST_AFTER`], however many unknown tools clients name.
    listed: Mutex<Option<tokio::time::Instant>>,
    pool: Vec<Mutex<PoolSlot>>,
    next: std::sync::atomic::AtomicUsize,
    /// Sessionless requests each client has in flight on the pool.
    pooled_calls: Held,
    /// Sessionless requests each client has whose answers are not yet sent (see
    /// [`UpSession::answer_place`]).
    pooled_answers: Held,
    observed: StdMutex<Observed>,
    /// `observed.ok == Some(true)`, read without the lock on the direct path.
    up: std::sync::atomic::AtomicBool,
    /// For an HTTP upstream: rmcp's client, and the direct path's.
    http: Option<(reqwest013::Client, Sender)>,
    processes: Processes,
    /// What the upstream's processes may write to the log, all of them together.
    stderr: Arc<StdMutex<Bucket>>,
    /// Its configured credentials, hidden in what it writes or answers to the log.
    hidden: Arc<Hidden>,
}

impl Shared {
    pub fn new(config: Upstream, resource: Arc<Resource>) -> Result<Arc<Self>, String> {
        let http = match &config.transport {
            Transport::Http { url, .. } => {
                // rmcp's HTTP client needs a rustls provider for the process.
                let _ = rustls::crypto::ring::default_provider().install_default();
                let client = reqwest013::Client::builder()
                    .connect_timeout(config.connect_timeout)
                    // Never replay the upstream's credentials elsewhere.
                    .redirect(reqwest013::redirect::Policy::none())
                    .no_proxy()
                    .pool_max_idle_per_host(IDLE_PER_HOST)
                    .pool_idle_timeout(IDLE_TIMEOUT)
                    .build()
                    .map_err(|e| {
                        format!(
                            "upstream {}: cannot build its HTTP client: {e}",
                            config.name
                        )
                    })?;
                let sender = match url.scheme() {
                    "http" => Sender::plain(config.connect_timeout, IDLE_PER_HOST, IDLE_TIMEOUT),
                    _ => Sender::Tls(client.clone()),
                };
                Some((client, sender))
            }
            Transport::Stdio { .. } => None,
        };
        Ok(Arc::new(Shared {
            policy: Arc::new(ToolPolicy::new(config.tools.clone())),
            places: Arc::new(Semaphore::new(config.max_sessions)),
            held: Held::default(),
            pool: (0..config.pool_size).map(|_| Mutex::default()).collect(),
            next: Default::default(),
            pooled_calls: Held::default(),
            pooled_answers: Held::default(),
            listed: Mutex::new(None),
            observed: StdMutex::default(),
            up: Default::default(),
            resource,
            http,
            processes: Processes::default(),
            stderr: Arc::new(StdMutex::new(Bucket::new(STDERR_BURST, STDERR_PER_SECOND))),
            hidden: Arc::new(Hidden::of(&config.transport, &config.filled.0)),
            config,
        }))
    }

    /// Whether sessions of this upstream may have a direct path (HTTP upstreams).
    pub fn is_http(&self) -> bool {
        self.http.is_some()
    }

    /// An error's text from or about the upstream, for the log: its configured
    /// credentials hidden, then [`cut`].
    pub fn cut(&self, text: &str) -> String {
        cut(&self.hidden.hide(text))
    }

    fn observe(&self) -> std::sync::MutexGuard<'_, Observed> {
        lock(&self.observed)
    }

    /// The last upstream handshake seen, for `get_info` of sessionless requests.
    pub fn last_info(&self) -> Option<Arc<ServerPeerInfo>> {
        self.observe().info.clone()
    }

    pub fn health(&self) -> Health {
        let observed = self.observe();
        Health {
            name: self.config.name.clone(),
            transport: match self.config.transport {
                Transport::Http { .. } => "http",
                Transport::Stdio { .. } => "stdio",
            },
            status: match observed.ok {
                Some(true) => "up",
                Some(false) => "down",
                None => "unknown",
            },
            sessions: self.config.max_sessions - self.places.available_permits(),
            error: observed.error,
            checked_at: observed
                .at
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_secs()),
        }
    }

    /// The JSON-RPC error for a failure of this upstream, naming it. The upstream's
    /// own JSON-RPC errors pass through unchanged.
    pub fn error(&self, e: ServiceError) -> ErrorData {
        let name = &self.config.name;
        match e {
            ServiceError::McpError(e) => e,
            ServiceError::Timeout { timeout } => self.timeout_error(timeout),
            ServiceError::TransportClosed | ServiceError::TransportSend(_) => {
                tracing::warn!(upstream = %name, error = %self.cut(&e.to_string()), "the upstream connection closed");
                self.record(false, Some("the connection closed"));
                self.closed_error()
            }
            ServiceError::Cancelled { .. } => ErrorData::internal_error(
                format!("the request to upstream {name} was cancelled"),
                Some(json!({ "upstream": name, "reason": "cancelled" })),
            ),
            e => self.failed_error(&e.to_string()),
        }
    }

    pub fn busy_error(&self) -> ErrorData {
        let name = &self.config.name;
        ErrorData::internal_error(
            format!(
                "this session has {MAX_CALLS} requests in flight to upstream {name}, its \
                 maximum; wait for an answer before sending more"
            ),
            Some(json!({ "upstream": name, "reason": "too_many_requests" })),
        )
    }

    /// A place for one of `client`'s sessionless requests on the pool, which all
    /// clients share: at most half of the pool's places ([`MAX_CALLS`] a connection),
    /// so that one client's slow requests cannot take them all.
    pub fn pooled_place(&self, client: &ClientId) -> Result<ClientPlace, ErrorData> {
        self.pool_share(&self.pooled_calls, client)
    }

    /// A place for one of `client`'s sessionless requests until its answer has been
    /// sent, as [`UpSession::answer_place`] is for a session's: as many as its share
    /// of the pool.
    pub fn pooled_answer_place(&self, client: &ClientId) -> Result<ClientPlace, ErrorData> {
        self.pool_share(&self.pooled_answers, client)
    }

    /// One of `client`'s places in `held`: at most half of the pool's.
    fn pool_share(&self, held: &Held, client: &ClientId) -> Result<ClientPlace, ErrorData> {
        let max = (self.pool.len() * MAX_CALLS / 2).max(1);
        held.take(client, max).ok_or_else(|| {
            let name = &self.config.name;
            ErrorData::internal_error(
                format!(
                    "this client has {max} requests without a session in flight to \
                     upstream {name}, its maximum; wait for an answer before sending more"
                ),
                Some(json!({ "upstream": name, "reason": "too_many_requests" })),
            )
        })
    }

    pub fn closed_error(&self) -> ErrorData {
        let name = &self.config.name;
        ErrorData::internal_error(
            format!("upstream {name} is not reachable or stopped; a new session starts it again"),
            Some(json!({ "upstream": name, "reason": "unavailable" })),
        )
    }

    /// The upstream failed a call on the direct path, as `reason` says (the caller
    /// logs the detail).
    pub fn unreachable(&self, reason: &'static str) {
        self.record(false, Some(reason));
    }

    pub fn timeout_error(&self, timeout: Duration) -> ErrorData {
        let name = &self.config.name;
        ErrorData::internal_error(
            format!(
                "upstream {name} did not answer within {}",
                humantime::format_duration(timeout)
            ),
            Some(json!({ "upstream": name, "reason": "timeout" })),
        )
    }

    pub fn failed_error(&self, what: &str) -> ErrorData {
        let name = &self.config.name;
        ErrorData::internal_error(
            format!("upstream {name} failed: {what}"),
            Some(json!({ "upstream": name })),
        )
    }

    /// The upstream answered a call on the direct path.
    pub fn answered(&self) {
        if !self.up.load(std::sync::atomic::Ordering::Relaxed) {
            self.record(true, None);
        }
    }

    fn record(&self, ok: bool, error: Option<&'static str>) {
        self.up.store(ok, std::sync::atomic::Ordering::Relaxed);
        let mut observed = self.observe();
        observed.ok = Some(ok);
        observed.error = error;
        observed.at = Some(SystemTime::now());
    }

    /// A session's own upstream connection, for the client (`client_id`) that sent
    /// `request`.
    pub async fn open_session(
        self: &Arc<Self>,
        request: &InitializeRequestParams,
        client: Peer<RoleServer>,
        client_id: Option<&ClientId>,
    ) -> Result<Arc<UpSession>, ErrorData> {
        // The guard puts the token in every request; without it, no session.
        let client_id = client_id
            .ok_or_else(|| ErrorData::internal_error("the session's client is not known", None))?;
        let max = self.config.max_sessions_per_client;
        let client_place = self.held.take(client_id, max).ok_or_else(|| {
            ErrorData::internal_error(
                format!(
                    "this client has {max} sessions open at upstream {}, its maximum; \
                     end one (DELETE) or let one close when idle",
                    self.config.name
                ),
                Some(json!({ "upstream": self.config.name, "reason": "client_busy" })),
            )
        })?;
        let place = self.places.clone().try_acquire_owned().map_err(|_| {
            ErrorData::internal_error(
                format!(
                    "upstream {} has its maximum of {} sessions; try again later",
                    self.config.name, self.config.max_sessions
                ),
                Some(json!({ "upstream": self.config.name, "reason": "busy" })),
            )
        })?;
        // Upstream, Gatehouse is the client it relays: same revision, capabilities
        // and identity, so the server offers what the client can take (but for the
        // extensions the relay does not carry: no task is started that the client
        // could not read).
        let mut request = request.clone();
        super::relay::drop_unrelayed(&mut request.capabilities.extensions);
        let session = self
            .connect(
                request,
                Some(client),
                ClientLifecycleMode::Initialize,
                Some((place, client_place)),
            )
            .await?;
        Ok(Arc::new(session))
    }

    /// A pooled connection for sessionless requests, started when first needed and
    /// again after it stopped.
    pub async fn pooled(self: &Arc<Self>) -> Result<Arc<UpSession>, ErrorData> {
        let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // An open connection with room, from this turn's on: one client's slow
        // requests filling one connection must not fail every request whose turn
        // lands on it. A turn that lands on a connection not open (never opened, or
        // closed: a stdio server that exited) opens it, unless it waits out its
        // back-off; then another that may be opened is, if none is open with room.
        let now = tokio::time::Instant::now();
        let mut opening = None;
        for k in 0..self.pool.len() {
            let at = (start + k) % self.pool.len();
            let Ok(slot) = self.pool[at].try_lock() else {
                continue;
            };
            let open = slot
                .session
                .as_ref()
                .filter(|session| !session.peer().is_transport_closed());
            match open {
                Some(session) if session.calls.available_permits() > 0 => {
                    return Ok(session.clone());
                }
                // Open and full: another may have room.
                Some(_) => {}
                None if opening.is_none() && slot.may_open(now) => {
                    opening = Some(at);
                    if k == 0 {
                        break;
                    }
                }
                None => {}
            }
        }
        let index = opening.unwrap_or(start % self.pool.len());
        // Waiting behind a connection being opened takes no longer than opening one.
        let wait = self.config.connect_timeout;
        let Ok(mut slot) = tokio::time::timeout(wait, self.pool[index].lock()).await else {
            return Err(self.timeout_error(wait));
        };
        if let Some(session) = slot
            .session
            .as_ref()
            .filter(|s| !s.peer().is_transport_closed())
        {
            return Ok(session.clone());
        }
        let now = tokio::time::Instant::now();
        if !slot.may_open(now) {
            return Err(self.closed_error());
        }
        slot.attempt(now);
        let mut info = InitializeRequestParams::new(
            ClientCapabilities::default(),
            Implementation::new("gatehouse", env!("CARGO_PKG_VERSION")),
        );
        info.protocol_version = ProtocolVersion::V_2025_11_25;
        let lifecycle = ClientLifecycleMode::Auto {
            preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            legacy_version: Some(ProtocolVersion::V_2025_11_25),
        };
        match self.connect(info, None, lifecycle, None).await {
            Ok(session) => {
                let session = Arc::new(session);
                slot.opened(session.clone());
                Ok(session)
            }
            Err(e) => {
                slot.failed(tokio::time::Instant::now());
                Err(e)
            }
        }
    }

    /// Checks at start-up that the upstream answers, and learns its tools (their hints
    /// decide which scope each needs).
    pub async fn probe(self: &Arc<Self>) {
        *self.listed.lock().await = Some(tokio::time::Instant::now());
        self.list_tools().await;
    }

    /// Before a call of a tool whose hints are unknown (no client listed tools yet),
    /// lists the upstream's tools, so a read-only tool is not refused to a read-only
    /// token. Unknown tools stay unknown: they need the write scope.
    pub async fn learn_tool(self: &Arc<Self>, tool: &str) {
        if self.policy.knows(tool) {
            return;
        }
        let mut listed = self.listed.lock().await;
        // At most once per RELIST_AFTER however many unknown tools clients name;
        // after the upstream said its tools changed, or once what a listing said of
        // this tool is older than HINTS_HOLD, once per RELIST_STALE however often
        // (meanwhile, what was learnt holds).
        let every = if self.policy.is_stale() || self.policy.has_hint(tool) {
            RELIST_STALE
        } else {
            RELIST_AFTER
        };
        let recent = listed.is_some_and(|at| at.elapsed() < every);
        if recent || self.policy.knows(tool) {
            return;
        }
        *listed = Some(tokio::time::Instant::now());
        self.list_tools().await;
        // Those who waited behind this listing find it recent, however long it took.
        *listed = Some(tokio::time::Instant::now());
    }

    /// Lists the upstream's tools and learns their hints (see [`ToolPolicy::learn`]).
    async fn list_tools(self: &Arc<Self>) {
        let name = &self.config.name;
        let (as_of, started) = (self.policy.changes(), tokio::time::Instant::now());
        match self.pooled().await {
            Ok(session) => {
                let listed =
                    tokio::time::timeout(self.config.timeout, list_tools(session.peer())).await;
                match listed {
                    Ok(Ok((tools, complete))) => {
                        self.policy
                            .learn_since(&tools, as_of, complete.then_some(started))
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(upstream = %name, error = %self.cut(&e.to_string()), "cannot list the upstream's tools")
                    }
                    Err(_) => {
                        tracing::warn!(upstream = %name, "listing the upstream's tools timed out")
                    }
                }
            }
            Err(e) => {
                tracing::warn!(upstream = %name, error = %e.message, "upstream not reachable")
            }
        }
    }

    /// A connection, holding `place` for its life (a session's places).
    async fn connect(
        self: &Arc<Self>,
        info: ClientConfig,
        client: Option<Peer<RoleServer>>,
        lifecycle: ClientLifecycleMode,
        place: Option<(OwnedSemaphorePermit, ClientPlace)>,
    ) -> Result<UpSession, ErrorData> {
        let routes = Arc::new(Mutex::new(Routes::default()));
        let leg = self
            .http
            .clone()
            .map(|(client, sender)| Leg::new(client, sender));
        let up = UpClient {
            upstream: self.config.name.clone(),
            info,
            session_peer: client,
            routes: routes.clone(),
            policy: self.policy.clone(),
            asks: Arc::new(tokio::sync::Semaphore::new(super::relay::MAX_ASKS_WAITING)),
            notes: Arc::new(tokio::sync::Semaphore::new(super::relay::MAX_NOTES_WAITING)),
        };
        // Ended, places and all, unless it becomes the session's: on failure, and if
        // this future is dropped half-way.
        let mut owned = Owned {
            place,
            process: None,
            processes: self.processes.clone(),
        };
        let connected = tokio::time::timeout(self.config.connect_timeout, async {
            match &self.config.transport {
                Transport::Http { url, headers } => {
                    let leg = leg.clone().ok_or("no HTTP client")?;
                    let mut config = StreamableHttpClientTransportConfig::with_uri(url.as_str())
                        .custom_headers(headers.iter().cloned().collect());
                    config.retry_config = Arc::new(resume_briefly());
                    let transport =
                        StreamableHttpClientTransport::with_client(Recorder::new(leg), config);
                    serve(up, InOrder::new(transport, routes.clone()), lifecycle).await
                }
                Transport::Stdio {
                    command,
                    args,
                    env,
                    cwd,
                } => {
                    let (transport, child) = self.spawn(command, args, env, cwd.as_deref())?;
                    owned.process = Some(child);
                    serve(up, InOrder::new(transport, routes.clone()), lifecycle).await
                }
            }
        })
        .await;
        let failure = match connected {
            Ok(Ok(service)) => Ok(service),
            Ok(Err(e)) => Err(Some(e)),
            Err(_) => Err(None),
        };
        let service = match failure {
            Ok(service) => service,
            // A server that did not start its session is ended like any other
            // (`owned`, dropped).
            Err(failure) => return Err(self.failed_to_connect(failure)),
        };
        self.record(true, None);
        self.observe().info = service.peer_info();
        Ok(UpSession {
            service,
            routes,
            leg,
            owned: StdMutex::new(owned),
            calls: Arc::new(Semaphore::new(MAX_CALLS)),
            answers: Arc::new(Semaphore::new(MAX_CALLS)),
        })
    }

    /// What the client is told when a connection could not be opened (and what
    /// `/healthz` says of it).
    /// `failure` is what went wrong, or `None` when the time was up.
    fn failed_to_connect(&self, failure: Option<String>) -> ErrorData {
        let name = &self.config.name;
        match failure {
            Some(e) => {
                // The detail may quote what the upstream answered (an error page): the
                // log has it, cut short; the client and `/healthz` get fixed words.
                tracing::warn!(upstream = %name, error = %self.cut(&e), "cannot connect to the upstream");
                self.record(false, Some("it could not be started or reached"));
                ErrorData::internal_error(
                    format!("upstream {name} could not be started or reached; its log says why"),
                    Some(json!({ "upstream": name, "reason": "unavailable" })),
                )
            }
            None => {
                self.record(false, Some("it did not initialize in time"));
                ErrorData::internal_error(
                    format!(
                        "upstream {name} did not initialize within {}",
                        humantime::format_duration(self.config.connect_timeout)
                    ),
                    Some(json!({ "upstream": name, "reason": "timeout" })),
                )
            }
        }
    }

    /// Starts a stdio server in its own process group with a clean environment:
    /// `PATH`, `HOME` and the configured variables only. Its stderr goes to the log
    /// (see [`log_stderr`]). The process is Gatehouse's to end ([`end_process`]):
    /// rmcp only gets its stdin and stdout, read a line of at most 16 MiB at a time.
    ///
    /// Call it only on a thread that lasts as long as Gatehouse (a runtime worker,
    /// never under `block_in_place` or `spawn_blocking`): the server gets `SIGTERM`
    /// when that thread ends ([`ends_with_gatehouse`]).
    fn spawn(
        &self,
        command: &str,
        args: &[String],
        env: &[(String, String)],
        cwd: Option<&std::path::Path>,
    ) -> Result<(StdioTransport, Box<dyn ChildWrapper>), String> {
        let mut cmd = tokio::process::Command::new(command);
        cmd.args(args).env_clear();
        for inherited in ["PATH", "HOME"] {
            if let Some(value) = std::env::var_os(inherited) {
                cmd.env(inherited, value);
            }
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd);
        }
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        ends_with_gatehouse(&mut cmd);
        let mut wrapped = process_wrap::tokio::CommandWrap::from(cmd);
        // Killed (its leader) if dropped without being ended, as when Gatehouse stops.
        wrapped.wrap(process_wrap::tokio::KillOnDrop);
        wrapped.wrap(process_wrap::tokio::ProcessGroup::leader());
        let mut child = wrapped
            .spawn()
            .map_err(|e| format!("cannot start {command:?}: {e}"))?;
        if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
            lock(&self.processes).insert(pid);
        }
        let (Some(stdin), Some(stdout)) = (child.stdin().take(), child.stdout().take()) else {
            if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
                lock(&self.processes).remove(&pid);
            }
            let _ = child.start_kill();
            return Err("its stdin and stdout could not be connected".into());
        };
        if let Some(stderr) = child.stderr().take() {
            tokio::spawn(log_stderr(
                self.config.name.clone(),
                stderr,
                self.stderr.clone(),
                self.hidden.clone(),
            ));
        }
        Ok((AsyncRwTransport::new_client(stdout, stdin), child))
    }
}

/// Has the kernel send a stdio server `SIGTERM` if Gatehouse dies without ending it
/// (`SIGKILL`, the out-of-memory killer): its stdin closes then too, but a server
/// that ignores that would run on with nobody to end it. Only the leader gets the
/// signal; what it started (`npx` starts the server as its child) gets what the
/// leader passes on, as npm passes `SIGTERM` on. The kernel sends it when the thread
/// that started the process ends: a runtime worker, which lasts as long as Gatehouse.
#[cfg(target_os = "linux")]
fn ends_with_gatehouse(cmd: &mut tokio::process::Command) {
    let gatehouse = nix::unistd::getpid();
    // SAFETY: between fork and exec the closure makes only async-signal-safe system
    // calls (prctl, getppid), and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)?;
            // Gatehouse died before the request took effect: no signal would come.
            if nix::unistd::getppid() != gatehouse {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn ends_with_gatehouse(_: &mut tokio::process::Command) {}

type StdioTransport =
    AsyncRwTransport<RoleClient, tokio::process::ChildStdout, tokio::process::ChildStdin>;

/// How many stderr lines of one upstream (all its processes together) are logged in
/// a burst, and how many a second after that; the rest are counted, and the count
/// logged once lines flow again. A line costs one more for each KiB it holds.
const STDERR_BURST: f64 = 200.0;
const STDERR_PER_SECOND: f64 = 20.0;

/// A stdio server's stderr, line by line into the log with the upstream's name: a
/// line is cut at [`MAX_STDERR_LINE`] (the rest of it skipped), what is not shown
/// as it is ([`escaped`]: a carriage return as `\r`, bidi overrides, line
/// separators) is escaped, so it cannot rewrite a log line, and an upstream
/// whose processes write faster than `bucket` lets through loses lines, not
/// Gatehouse's disk: one bucket for all of them, or each new process (one per
/// session) would bring a burst of its own.
async fn log_stderr(
    name: String,
    stderr: tokio::process::ChildStderr,
    bucket: Arc<StdMutex<Bucket>>,
    hidden: Arc<Hidden>,
) {
    let mut lines = tokio::io::BufReader::new(stderr);
    let mut line = Vec::new();
    let mut skipping = false;
    loop {
        line.clear();
        let read = (&mut lines)
            .take(MAX_STDERR_LINE as u64)
            .read_until(b'\n', &mut line)
            .await;
        match read {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let whole = line.last() == Some(&b'\n');
        let was_skipping = std::mem::replace(&mut skipping, !whole);
        if was_skipping {
            // The rest of a line already cut.
            continue;
        }
        let cost = 1.0 + (line.len() / 1024) as f64;
        let take = lock(&bucket).take_cost(tokio::time::Instant::now(), cost);
        match take {
            Take::Yes { dropped } => {
                if dropped > 0 {
                    tracing::warn!(target: "gatehouse::upstream", upstream = %name, dropped, "stderr lines not logged: the server wrote too many");
                }
                // A line cut short may end in the first part of a value, which
                // would not be found: that part goes too.
                if !whole {
                    line.truncate(line.len().saturating_sub(hidden.longest()));
                }
                let text = String::from_utf8_lossy(&line);
                let text = escaped(&hidden.hide(text.trim_end()));
                let cut = if whole { "" } else { " …" };
                tracing::info!(target: "gatehouse::upstream", upstream = %name, "{text}{cut}");
            }
            Take::No => {}
        }
    }
}

enum Take {
    /// Log it; `dropped` lines were not logged since the last one that was.
    Yes {
        dropped: u64,
    },
    No,
}

/// A token bucket: `burst` at most, `rate` more each second.
struct Bucket {
    tokens: f64,
    burst: f64,
    rate: f64,
    at: tokio::time::Instant,
    dropped: u64,
}

impl Bucket {
    fn new(burst: f64, rate: f64) -> Self {
        Bucket {
            tokens: burst,
            burst,
            rate,
            at: tokio::time::Instant::now(),
            dropped: 0,
        }
    }

    #[cfg(test)]
    fn take(&mut self, now: tokio::time::Instant) -> Take {
        self.take_cost(now, 1.0)
    }

    fn take_cost(&mut self, now: tokio::time::Instant, cost: f64) -> Take {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= cost {
            self.tokens -= cost;
            Take::Yes {
                dropped: std::mem::take(&mut self.dropped),
            }
        } else {
            self.dropped += 1;
            Take::No
        }
    }
}

async fn serve<T, E, A>(
    up: UpClient,
    transport: T,
    lifecycle: ClientLifecycleMode,
) -> Result<UpService, String>
where
    T: rmcp::transport::IntoTransport<RoleClient, E, A>,
    E: std::error::Error + Send + Sync + 'static,
{
    let service = match lifecycle {
        ClientLifecycleMode::Initialize => up.serve(transport).await.map_err(|e| e.to_string()),
        other => serve_client_with_lifecycle(up, transport, other)
            .await
            .map_err(|e| e.to_string()),
    }?;
    // rmcp's client keeps listings as long as the server's `ttlMs` says (up to a
    // day), and answers with an expired one when a listing fails. The tool policy
    // must read what the upstream says now: a tool that stopped being read-only,
    // announced on another connection, would otherwise keep needing only the read
    // scope. Nothing else Gatehouse sends goes through that cache.
    service
        .peer()
        .set_response_cache_config(ClientCacheConfig::disabled())
        .await;
    Ok(service)
}

/// How an HTTP upstream's broken event stream is resumed (`Last-Event-ID`): three
/// quick attempts, about 1.5 s in all. rmcp's default retries without end, so a call
/// whose server died waited out its whole `timeout`; now it fails as "not reachable"
/// at once, and a server that restarts within the attempts loses nothing.
fn resume_briefly() -> ExponentialBackoff {
    let mut backoff = ExponentialBackoff::default();
    backoff.max_times = Some(3);
    backoff.base_duration = Duration::from_millis(250);
    backoff
}

/// The shortest configured value hidden in the log: shorter ones (`true`, `8080`)
/// are rarely secrets and would blank out ordinary words.
const MIN_HIDDEN: usize = 8;

/// An upstream's configured values that may be credentials: its header values (and
/// their words, a `Bearer` token alone), its environment values, its URL's query
/// values, and whatever a `${VAR}` filled in (a key in the URL's path, say). A
/// server may print its settings or environment, and an HTTP server or proxy echo
/// the `Authorization` header it was sent, or the path it was asked for, in an error
/// page; Gatehouse holds these values, so it hides them in what it logs of the
/// upstream.
pub(super) struct Hidden(Vec<String>);

impl Hidden {
    fn of(transport: &Transport, filled: &[String]) -> Self {
        let mut values: Vec<String> = match transport {
            Transport::Http { url, headers } => {
                // Decoded, and as written (an error page may echo the request line).
                let mut values: Vec<String> = url
                    .query_pairs()
                    .map(|(_, value)| value.into_owned())
                    .chain(
                        url.query()
                            .unwrap_or_default()
                            .split('&')
                            .filter_map(|pair| pair.split_once('=').map(|(_, v)| v.to_owned())),
                    )
                    .collect();
                for (_, value) in headers {
                    if let Ok(text) = value.to_str() {
                        values.push(text.to_owned());
                        values.extend(text.split_whitespace().map(str::to_owned));
                    }
                }
                values
            }
            Transport::Stdio { env, .. } => env.iter().map(|(_, value)| value.clone()).collect(),
        };
        values.extend(filled.iter().cloned());
        if let Transport::Http { url, .. } = transport {
            // A filled-in part of the path, as written there (percent-encoded).
            let segments = url.path_segments().into_iter().flatten();
            values.extend(
                segments
                    .filter(|segment| {
                        let decoded = percent_encoding::percent_decode_str(segment)
                            .decode_utf8_lossy()
                            .into_owned();
                        filled
                            .iter()
                            .any(|value| value.len() >= MIN_HIDDEN && decoded.contains(value))
                    })
                    .map(str::to_owned),
            );
        }
        // Stderr is hidden line by line: a value of several lines (a PEM key), each.
        let lines: Vec<String> = values
            .iter()
            .filter(|value| value.contains('\n'))
            .flat_map(|value| value.lines().map(|line| line.trim().to_owned()))
            .collect();
        values.extend(lines);
        // As a JSON string holds them too (an error body may quote them so).
        let escaped: Vec<String> = values
            .iter()
            .filter_map(|value| {
                let json = serde_json::to_string(value).ok()?;
                let json = json.get(1..json.len() - 1)?.to_owned();
                Some([json.replace('/', "\\/"), json])
            })
            .flatten()
            .collect();
        values.extend(escaped);
        values.retain(|value| value.len() >= MIN_HIDDEN);
        // Longest first, so that a value is hidden whole before a part of it.
        values.sort_by_key(|value| std::cmp::Reverse(value.len()));
        values.dedup();
        Hidden(values)
    }

    /// The longest value hidden, in bytes.
    fn longest(&self) -> usize {
        self.0.first().map_or(0, String::len)
    }

    /// `text` with each configured value replaced by `…`.
    fn hide(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for value in &self.0 {
            if text.contains(value.as_str()) {
                text = text.replace(value.as_str(), "…");
            }
        }
        text
    }
}

/// The longest part of an upstream's error text that is logged.
const MAX_LOGGED_ERROR: usize = 512;

/// `text` cut to [`MAX_LOGGED_ERROR`] bytes (at a character's boundary), its control
/// characters escaped, for the log. An upstream chooses its error's words: a line
/// break in them would forge a log line, an escape sequence redraw a terminal (the
/// log's formatter escapes only the message itself, not these fields).
pub(super) fn cut(text: &str) -> String {
    let mut end = text.len().min(MAX_LOGGED_ERROR);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    escaped(&text[..end])
}

/// `text` with the characters not shown as they are
/// ([`crate::oauth::client::is_hidden_char`]) escaped (`\n`, `\u{202e}`), for the
/// log: what an upstream writes or answers must not forge a log line or reorder
/// what a terminal shows.
fn escaped(text: &str) -> String {
    let mut logged = String::with_capacity(text.len());
    for c in text.chars() {
        if crate::oauth::client::is_hidden_char(c) {
            logged.extend(c.escape_default());
        } else {
            logged.push(c);
        }
    }
    logged
}

/// Pages of an upstream's tool listing read at most.
const MAX_LISTED_PAGES: usize = 64;

/// The upstream's tools (their names and read-only hints only), page by page, and
/// whether that was all of them: at most [`MAX_LISTED_PAGES`] pages, read on only
/// while fewer tools than are remembered came. rmcp's `list_all_tools` reads on for
/// as long as the upstream gives a cursor and keeps every page: one whose cursor
/// never ends would grow Gatehouse's
/// memory until the timeout.
async fn list_tools(peer: &Peer<RoleClient>) -> Result<(Vec<Tool>, bool), ServiceError> {
    let mut tools = Vec::new();
    let mut cursor = None;
    for _ in 0..MAX_LISTED_PAGES {
        let params = PaginatedRequestParams::default().with_cursor(cursor);
        let page = peer.list_tools(Some(params)).await?;
        // Only what the policy learns is kept of a page (a page may be 16 MiB).
        let known = page
            .tools
            .into_iter()
            .filter(|tool| tool.name.len() <= super::policy::MAX_KNOWN_NAME);
        tools.extend(known.map(|tool| {
            let hint = Tool::new(tool.name, "", Arc::default());
            match tool.annotations.and_then(|a| a.read_only_hint) {
                Some(read_only) => {
                    hint.with_annotations(ToolAnnotations::new().read_only(read_only))
                }
                None => hint,
            }
        }));
        cursor = page.next_cursor;
        if cursor.is_none() {
            return Ok((tools, true));
        }
        if tools.len() >= super::policy::MAX_KNOWN_TOOLS {
            break;
        }
    }
    Ok((tools, false))
}

/// How long the start-up probe may take before serving starts regardless.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(15);

#[cfg(test)]
mod tests {
    use super::*;

    /// No stdio of the test's: a process that outlives a failing test must not hold
    /// its output open.
    fn quiet(cmd: &mut tokio::process::Command) {
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
    }

    /// Whether a process of group `pgid` still runs (a zombie does not: where nothing
    /// reaps orphans, as in some containers, it stays one).
    fn group_alive(pgid: i32) -> bool {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return false;
        };
        entries.flatten().any(|entry| {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                return false;
            };
            // "PID (COMM) STATE PPID PGRP …"; COMM may hold spaces and parentheses.
            let Some(rest) = stat.rfind(')').map(|at| &stat[at + 1..]) else {
                return false;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string()
        })
    }

    /// `script` run by `sh` as the leader of its own group, registered as a stdio
    /// server's is; its group id.
    async fn group(script: &str) -> (Box<dyn ChildWrapper>, i32, Processes) {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args(["-c", script]);
        quiet(&mut cmd);
        let mut wrapped = process_wrap::tokio::CommandWrap::from(cmd);
        wrapped.wrap(process_wrap::tokio::ProcessGroup::leader());
        let process = wrapped.spawn().expect("sh");
        let pgid = i32::try_from(process.id().expect("pid")).expect("pid");
        let processes = Processes::default();
        lock(&processes).insert(pgid);
        // Its child started.
        tokio::time::sleep(Duration::from_millis(200)).await;
        (process, pgid, processes)
    }

    /// Whether group `pgid` is gone within 2 s: SIGKILL is delivered at once, but an
    /// orphan it hit takes a moment to die.
    async fn gone(pgid: i32) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while group_alive(pgid) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        !group_alive(pgid)
    }

    #[tokio::test]
    async fn a_server_that_ignores_its_end_is_killed_with_its_group_before_its_place_is_free() {
        // A leader that ignores SIGTERM and a child of its own in its group, as `npx`
        // leaves the server it starts.
        let (process, pgid, processes) =
            group("trap '' TERM; sleep 600 & while :; do sleep 1; done").await;
        assert!(group_alive(pgid));

        let places = Arc::new(Semaphore::new(1));
        let place = places.clone().try_acquire_owned().expect("a place");
        let grace = Duration::from_millis(300);
        let ending = tokio::spawn(end_process_within(
            Ending::new(process, processes.clone()),
            place,
            grace,
        ));
        // Within the grace and after SIGTERM, still there: the place is still held.
        tokio::time::sleep(grace + grace / 2).await;
        assert!(group_alive(pgid));
        assert_eq!(places.available_permits(), 0);
        tokio::time::timeout(Duration::from_secs(5), ending)
            .await
            .expect("ended in time")
            .expect("no panic");
        assert!(gone(pgid).await, "the whole group is gone");
        assert_eq!(places.available_permits(), 1);
        assert!(lock(&processes).is_empty());
    }

    #[tokio::test]
    async fn a_server_whose_ending_never_runs_is_killed_with_its_group() {
        // As when Gatehouse stops: the task that would end it is dropped unrun.
        let (process, pgid, processes) = group("sleep 600 & while :; do sleep 1; done").await;
        let task = end_process(Ending::new(process, processes.clone()), ());
        drop(task);
        assert!(gone(pgid).await, "the whole group is gone");
        assert!(lock(&processes).is_empty());
    }

    /// Gatehouse killed with a stdio server running (no destructor runs, no ending):
    /// the server, which ignores its stdin, still gets `SIGTERM`. Here the thread
    /// that started it ends, which is what the kernel watches.
    #[test]
    fn a_server_gets_sigterm_when_gatehouse_dies_without_ending_it() {
        let script = "while :; do sleep 1; done";
        let raw = crate::gateway::config::parse_short(&format!("s=stdio:sh -c {script:?}"))
            .expect("short");
        let upstream = raw.validate(&|_| None).expect("valid");
        let resource =
            crate::gateway::resource("https://gate.example.com", &upstream).expect("resource");
        let shared = Shared::new(upstream, resource).expect("shared");
        let pgid = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let args = ["-c".to_owned(), script.to_owned()];
                let (transport, process) = shared.spawn("sh", &args, &[], None).expect("spawn");
                let pgid = i32::try_from(process.id().expect("pid")).expect("pid");
                // As after SIGKILL: nothing ends it, nor closes its stdin.
                std::mem::forget((transport, process));
                pgid
            })
        })
        .join()
        .expect("thread");
        let ended = {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while group_alive(pgid) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            !group_alive(pgid)
        };
        if !ended {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        assert!(ended, "the server outlived Gatehouse");
    }

    /// What an upstream writes or answers reaches the log without the credentials
    /// Gatehouse was configured with for it: an error page echoing the header it
    /// was sent, a server printing its environment.
    #[test]
    fn configured_credentials_are_hidden_in_what_is_logged_of_an_upstream() {
        let http = Transport::Http {
            url: url::Url::parse("https://api.example/mcp?key=query%2Bsecret-1&v=2").expect("url"),
            headers: vec![(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_static("Bearer header-secret-22"),
            )],
        };
        let hidden = Hidden::of(&http, &[]);
        let echoed = "401: bad Authorization \"Bearer header-secret-22\" (token header-secret-22, \
                      key query+secret-1, v 2) GET /mcp?key=query%2Bsecret-1&v=2";
        let logged = hidden.hide(echoed);
        for secret in ["header-secret-22", "query+secret-1", "query%2Bsecret-1"] {
            assert!(!logged.contains(secret), "{logged}");
        }
        assert!(logged.contains("401: bad Authorization") && logged.contains("v 2"));

        let stdio = Transport::Stdio {
            command: "server".into(),
            args: vec![],
            env: vec![
                ("API_KEY".into(), "env-secret-333".into()),
                ("DEBUG".into(), "true".into()),
            ],
            cwd: None,
        };
        let printed =
            Hidden::of(&stdio, &[]).hide("starting with API_KEY=env-secret-333 DEBUG=true");
        assert_eq!(printed, "starting with API_KEY=… DEBUG=true");

        // A key a `${VAR}` put in the url's path, echoed in a 404 page; a key of
        // several lines, printed line by line on stderr.
        let in_path = Transport::Http {
            url: url::Url::parse("https://api.example/s/path%20secret-4444/mcp").expect("url"),
            headers: vec![],
        };
        let hidden = Hidden::of(&in_path, &["path secret-4444".into()]);
        let logged = hidden.hide("404: Cannot POST /s/path%20secret-4444/mcp");
        assert_eq!(logged, "404: Cannot POST /s/…/mcp");
        let pem = "-----BEGIN KEY-----\nline-one-secret\nline-two-secret\n-----END KEY-----";
        let stdio = Transport::Stdio {
            command: "server".into(),
            args: vec![],
            env: vec![("KEY".into(), pem.into())],
            cwd: None,
        };
        let hidden = Hidden::of(&stdio, &[pem.into()]);
        for line in ["bad key: line-one-secret", "line-two-secret"] {
            assert!(!hidden.hide(line).contains("secret"), "{line}");
        }
    }

    #[test]
    fn a_pool_slot_starts_at_most_once_a_second_and_waits_longer_while_starts_fail() {
        let mut slot = PoolSlot::default();
        let mut now = tokio::time::Instant::now();
        assert!(slot.may_open(now));
        slot.attempt(now);
        assert!(!slot.may_open(now + Duration::from_millis(999)));
        assert!(slot.may_open(now + POOL_BACKOFF.0));
        // Failures, each noted when it happens: 1 s, doubling up to 10 s.
        for wait in [1, 2, 4, 8, 10, 10] {
            now += Duration::from_secs(30);
            slot.attempt(now);
            slot.failed(now + Duration::from_secs(30));
            assert_eq!(
                slot.retry_at,
                Some(now + Duration::from_secs(30 + wait)),
                "after a failure that took 30 s"
            );
        }
    }

    #[tokio::test]
    async fn a_server_that_exits_at_once_frees_its_place_at_once() {
        let (process, _, processes) = group("exit 0").await;
        let places = Arc::new(Semaphore::new(1));
        let place = places.clone().try_acquire_owned().expect("a place");
        let started = tokio::time::Instant::now();
        let ending = Ending::new(process, processes);
        end_process_within(ending, place, Duration::from_secs(3)).await;
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(places.available_permits(), 1);
    }

    #[test]
    fn stderr_lines_past_the_burst_are_counted_not_logged() {
        let start = tokio::time::Instant::now();
        let mut bucket = Bucket::new(3.0, 2.0);
        for _ in 0..3 {
            assert!(matches!(bucket.take(start), Take::Yes { dropped: 0 }));
        }
        assert!(matches!(bucket.take(start), Take::No));
        assert!(matches!(bucket.take(start), Take::No));
        // Half a second brings one more, and the count of those left out.
        let later = start + Duration::from_millis(500);
        assert!(matches!(bucket.take(later), Take::Yes { dropped: 2 }));
        assert!(matches!(bucket.take(later), Take::No));
        // A long line costs as much as several short ones.
        let mut bucket = Bucket::new(3.0, 2.0);
        assert!(matches!(
            bucket.take_cost(start, 3.0),
            Take::Yes { dropped: 0 }
        ));
        assert!(matches!(bucket.take(start), Take::No));
    }

    #[test]
    fn logged_errors_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_LOGGED_ERROR);
        let logged = cut(&long);
        assert!(logged.len() <= MAX_LOGGED_ERROR);
        assert!(logged.len() >= MAX_LOGGED_ERROR - 1);
        assert_eq!(cut("short"), "short");
        assert_eq!(
            cut("x\n2026-12-07 INFO forged\u{1b}[2J"),
            "x\\n2026-12-07 INFO forged\\u{1b}[2J"
        );
        assert_eq!(cut("a\u{2028}b\u{202e}c"), "a\\u{2028}b\\u{202e}c");
        // A stderr line is escaped by the same rule (a carriage return shown as
        // `\r`, as before).
        assert_eq!(escaped("50%\r60%\u{2029}x"), "50%\\r60%\\u{2029}x");
    }
}
