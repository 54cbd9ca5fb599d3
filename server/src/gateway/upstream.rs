//! Connections to one upstream: a session's own (one child process per session for
//! stdio servers, one upstream session for HTTP ones), a small pool for sessionless
//! requests, the cap on sessions, and what `/healthz` reports.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex as StdMutex},
    time::{Duration, SystemTime},
};

use rmcp::{
    model::{
        ClientCapabilities, ClientConfig, Implementation, InitializeRequestParams, ProtocolVersion,
        ServerPeerInfo,
    },
    service::{serve_client_with_lifecycle, ClientLifecycleMode, Peer, ServiceError},
    transport::{
        common::client_side_sse::ExponentialBackoff,
        streamable_http_client::StreamableHttpClientTransportConfig, StreamableHttpClientTransport,
        TokioChildProcess,
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
    policy::ToolPolicy,
    relay::{InOrder, Routes, UpClient, UpService},
};
use crate::{oauth::client::ClientId, resource::Resource};

/// How often an unknown tool may make Gatehouse list an upstream's tools.
const RELIST_AFTER: Duration = Duration::from_secs(30);

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

/// One upstream connection, alive as long as this value: dropping it ends the rmcp
/// client, which ends a stdio server's process (group).
pub struct UpSession {
    service: UpService,
    pub routes: Arc<Mutex<Routes>>,
    /// An HTTP upstream's direct path for tool calls ([`super::direct`]).
    pub leg: Option<Arc<Leg>>,
    /// Held for a session's life (or until [`UpSession::shut`]): one place of
    /// `max_sessions`, and one of its client's `max_sessions_per_client`.
    place: StdMutex<Option<(OwnedSemaphorePermit, ClientPlace)>>,
}

/// Sessions each client holds on one upstream, for `max_sessions_per_client`.
type Held = Arc<StdMutex<HashMap<ClientId, usize>>>;

/// One of a client's places on an upstream, given back when dropped.
struct ClientPlace {
    held: Held,
    client: ClientId,
}

impl ClientPlace {
    /// A place for `client`, unless it holds `max` already.
    fn take(held: &Held, client: &ClientId, max: usize) -> Option<ClientPlace> {
        let mut counts = held.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(client.clone()).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(ClientPlace {
            held: held.clone(),
            client: client.clone(),
        })
    }
}

impl Drop for ClientPlace {
    fn drop(&mut self) {
        let mut counts = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.client);
            }
        }
    }
}

impl UpSession {
    pub fn peer(&self) -> &Peer<RoleClient> {
        self.service.peer()
    }

    /// The upstream's side of the handshake.
    pub fn info(&self) -> Option<Arc<ServerPeerInfo>> {
        self.service.peer_info()
    }

    /// Ends the upstream session (for stdio, its process) and gives its places back
    /// now, while something may still hold this value: a downstream session that
    /// rmcp could not close in time, say.
    pub fn shut(&self) {
        self.service.cancellation_token().cancel();
        drop(self.place.lock().unwrap_or_else(|p| p.into_inner()).take());
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checked_at: Option<u64>,
}

#[derive(Default)]
struct Observed {
    ok: Option<bool>,
    error: Option<String>,
    at: Option<SystemTime>,
    info: Option<Arc<ServerPeerInfo>>,
}

/// What every session of one upstream shares.
pub struct Shared {
    pub config: Upstream,
    pub resource: Arc<Resource>,
    pub policy: ToolPolicy,
    places: Arc<Semaphore>,
    held: Held,
    /// When the upstream's tools were last listed for an unknown tool: at most
    /// once per [`RELIST_AFTER`], however many unknown tools clients name.
    listed: Mutex<Option<tokio::time::Instant>>,
    pool: Vec<Mutex<Option<Arc<UpSession>>>>,
    next: std::sync::atomic::AtomicUsize,
    observed: StdMutex<Observed>,
    /// `observed.ok == Some(true)`, read without the lock on the direct path.
    up: std::sync::atomic::AtomicBool,
    /// For an HTTP upstream: rmcp's client, and the direct path's.
    http: Option<(reqwest013::Client, Sender)>,
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
            policy: ToolPolicy::new(config.tools.clone()),
            places: Arc::new(Semaphore::new(config.max_sessions)),
            held: Held::default(),
            pool: (0..config.pool_size).map(|_| Mutex::new(None)).collect(),
            next: Default::default(),
            listed: Mutex::new(None),
            observed: StdMutex::default(),
            up: Default::default(),
            config,
            resource,
            http,
        }))
    }

    /// Whether sessions of this upstream may have a direct path (HTTP upstreams).
    pub fn is_http(&self) -> bool {
        self.http.is_some()
    }

    fn observe(&self) -> std::sync::MutexGuard<'_, Observed> {
        self.observed.lock().unwrap_or_else(|p| p.into_inner())
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
            error: observed.error.clone(),
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
                self.record(false, Some(format!("{e}")));
                self.closed_error()
            }
            ServiceError::Cancelled { .. } => ErrorData::internal_error(
                format!("the request to upstream {name} was cancelled"),
                Some(json!({ "upstream": name, "reason": "cancelled" })),
            ),
            e => self.failed_error(&e.to_string()),
        }
    }

    pub fn closed_error(&self) -> ErrorData {
        let name = &self.config.name;
        ErrorData::internal_error(
            format!("upstream {name} is not reachable or stopped; a new session starts it again"),
            Some(json!({ "upstream": name, "reason": "unavailable" })),
        )
    }

    /// The upstream failed a call on the direct path.
    pub fn unreachable(&self, error: String) {
        self.record(false, Some(error));
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

    fn record(&self, ok: bool, error: Option<String>) {
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
        let client_place = ClientPlace::take(&self.held, client_id, max).ok_or_else(|| {
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
        // and identity, so the server offers what the client can take.
        let session = self
            .connect(
                request.clone(),
                Some(client),
                ClientLifecycleMode::Initialize,
            )
            .await?;
        Ok(Arc::new(UpSession {
            place: StdMutex::new(Some((place, client_place))),
            ..session
        }))
    }

    /// A pooled connection for sessionless requests, started when first needed and
    /// again after it stopped.
    pub async fn pooled(self: &Arc<Self>) -> Result<Arc<UpSession>, ErrorData> {
        let index = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.pool.len();
        let mut slot = self.pool[index].lock().await;
        if let Some(session) = slot.as_ref().filter(|s| !s.peer().is_transport_closed()) {
            return Ok(session.clone());
        }
        let mut info = InitializeRequestParams::new(
            ClientCapabilities::default(),
            Implementation::new("gatehouse", env!("CARGO_PKG_VERSION")),
        );
        info.protocol_version = ProtocolVersion::V_2025_11_25;
        let lifecycle = ClientLifecycleMode::Auto {
            preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            legacy_version: Some(ProtocolVersion::V_2025_11_25),
        };
        let session = Arc::new(self.connect(info, None, lifecycle).await?);
        *slot = Some(session.clone());
        Ok(session)
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
        let recent = listed.is_some_and(|at| at.elapsed() < RELIST_AFTER);
        if recent || self.policy.knows(tool) {
            return;
        }
        *listed = Some(tokio::time::Instant::now());
        self.list_tools().await;
    }

    async fn list_tools(self: &Arc<Self>) {
        let name = &self.config.name;
        match self.pooled().await {
            Ok(session) => {
                let listed =
                    tokio::time::timeout(self.config.timeout, session.peer().list_all_tools())
                        .await;
                match listed {
                    Ok(Ok(tools)) => self.policy.learn(&tools),
                    Ok(Err(e)) => {
                        tracing::warn!(upstream = %name, error = %e, "cannot list the upstream's tools")
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

    async fn connect(
        self: &Arc<Self>,
        info: ClientConfig,
        client: Option<Peer<RoleServer>>,
        lifecycle: ClientLifecycleMode,
    ) -> Result<UpSession, ErrorData> {
        let routes = Arc::new(Mutex::new(Routes::default()));
        let up = UpClient {
            upstream: self.config.name.clone(),
            info,
            session_peer: client,
            routes: routes.clone(),
        };
        let name = &self.config.name;
        let leg = self
            .http
            .clone()
            .map(|(client, sender)| Leg::new(client, sender));
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
                    let child = self.spawn(command, args, env, cwd.as_deref())?;
                    serve(up, InOrder::new(child, routes.clone()), lifecycle).await
                }
            }
        })
        .await;
        let service = match connected {
            Ok(Ok(service)) => service,
            Ok(Err(e)) => {
                tracing::warn!(upstream = %name, error = %e, "cannot connect to the upstream");
                self.record(false, Some(e.clone()));
                return Err(ErrorData::internal_error(
                    format!("upstream {name} could not be started or reached: {e}"),
                    Some(json!({ "upstream": name, "reason": "unavailable" })),
                ));
            }
            Err(_) => {
                self.record(false, Some("it did not initialize in time".into()));
                return Err(ErrorData::internal_error(
                    format!(
                        "upstream {name} did not initialize within {}",
                        humantime::format_duration(self.config.connect_timeout)
                    ),
                    Some(json!({ "upstream": name, "reason": "timeout" })),
                ));
            }
        };
        self.record(true, None);
        self.observe().info = service.peer_info();
        Ok(UpSession {
            service,
            routes,
            leg,
            place: StdMutex::new(None),
        })
    }

    /// Starts a stdio server in its own process group with a clean environment:
    /// `PATH`, `HOME` and the configured variables only. Its stderr goes to the log,
    /// line by line, with the upstream's name.
    fn spawn(
        &self,
        command: &str,
        args: &[String],
        env: &[(String, String)],
        cwd: Option<&std::path::Path>,
    ) -> Result<TokioChildProcess, String> {
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
        let mut wrapped = process_wrap::tokio::CommandWrap::from(cmd);
        wrapped.wrap(process_wrap::tokio::ProcessGroup::leader());
        let (child, stderr) = TokioChildProcess::builder(wrapped)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {command:?}: {e}"))?;
        if let Some(stderr) = stderr {
            let name = self.config.name.clone();
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(stderr);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match (&mut lines)
                        .take(MAX_STDERR_LINE as u64)
                        .read_until(b'\n', &mut line)
                        .await
                    {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let text = String::from_utf8_lossy(&line);
                            tracing::info!(target: "gatehouse::upstream", upstream = %name, "{}", text.trim_end());
                        }
                    }
                }
            });
        }
        Ok(child)
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
    match lifecycle {
        ClientLifecycleMode::Initialize => up.serve(transport).await.map_err(|e| e.to_string()),
        other => serve_client_with_lifecycle(up, transport, other)
            .await
            .map_err(|e| e.to_string()),
    }
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

/// How long the start-up probe may take before serving starts regardless.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(15);
