//! An upstream MCP server at `/mcp/NAME`, behind the same guard as `/mcp`: rmcp's
//! Streamable HTTP transport in front of the relay (`crate::gateway`), and for HTTP
//! upstreams a direct path (`crate::gateway::direct`) for what a live session's tool
//! calls consist of: the call, the client's answers to what the upstream asks during
//! it, and its cancellation. A session whose client lost its grant for the upstream
//! is ended with what it holds upstream ([`end_ungranted`]).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex as StdMutex, Weak,
    },
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    http::{header, request::Parts, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use futures::StreamExt;
use rmcp::{
    model::ClientJsonRpcMessage,
    transport::streamable_http_server::{
        session::{local::LocalSessionManager, store::SessionStore, SessionId, SessionManager},
        StreamableHttpServerConfig, StreamableHttpService,
    },
};
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    direct_session,
    guard::{rebuild, ToolOutcome},
    session_id,
    sessions::{binding_key, binding_of, unbind, Binding, StoreSessions},
    Endpoint, Guarded, GuardedBody, Prepared, MAX_BODY_BYTES, SESSION_ID,
};
use crate::{
    gateway::{
        direct::{Answer, CallText},
        relay::{GatewayHandler, SessionSlot},
        text::{plain_str, Members},
        upstream::{Health, Shared, UpSession},
    },
    http::AppState,
    mcp::{Call, CallPolicy, Need},
    resource::Resource,
    store::{Key, SharedStore, StoreError, StoreResult},
};

pub struct GatewayEndpoint {
    shared: Arc<Shared>,
    sessions: Arc<LocalSessionManager>,
    /// Where rmcp keeps each session's `initialize` parameters.
    stored: Arc<StoreSessions>,
    transport: StreamableHttpService<GatewayHandler, LocalSessionManager>,
    /// Live sessions of an HTTP upstream, for the direct path.
    live: StdMutex<HashMap<String, Live>>,
    touches: Arc<AtomicU64>,
    /// Sessions found without a binding by [`end_ungranted`], and since when (ms).
    unbound: StdMutex<HashMap<SessionId, u64>>,
}

/// How long a touch (see [`GatewayEndpoint::touch`]) waits for rmcp's answer.
const TOUCH_TIMEOUT: Duration = Duration::from_secs(10);

/// A session the direct path may serve.
struct Live {
    upstream: Weak<UpSession>,
    /// When rmcp last saw the session. rmcp closes a session it has not seen for the
    /// upstream's `idle_timeout`, so the direct path shows it the session (a `ping`)
    /// every quarter of that.
    relayed: Instant,
    /// When the session's client last sent a request (see [`GatewayEndpoint::close_idle`]).
    heard: Instant,
}

/// What the direct path may take, read from the body once, before the token check.
pub enum Direct {
    /// A `tools/call`: the client's text of it.
    Call(CallText),
    /// The client's answer to a request the direct path relayed to it.
    Answer(Value),
    /// `notifications/cancelled`.
    Cancel(Value),
}

/// A body the direct path can take, before the upstream's policy is applied.
pub(crate) enum Read {
    /// A `tools/call`, and the tool it names.
    Call(CallText, String),
    /// An answer or a cancellation.
    Reply(Direct),
}

impl GatewayEndpoint {
    pub fn new(shared: Arc<Shared>, store: SharedStore, shutdown: CancellationToken) -> Self {
        let mut config = StreamableHttpServerConfig::default()
            // The guard alone checks Host and Origin.
            .disable_allowed_hosts()
            .disable_allowed_origins()
            .with_max_request_body_bytes(MAX_BODY_BYTES)
            .with_json_response(true)
            .with_cancellation_token(shutdown);
        let stored = Arc::new(StoreSessions(store));
        config.session_store = Some(stored.clone());
        let mut sessions = LocalSessionManager::default();
        // rmcp closes a session after this long without traffic, which ends its
        // upstream session or process.
        sessions.session_config.keep_alive = Some(shared.config.idle_timeout);
        let sessions = Arc::new(sessions);
        let transport = {
            let shared = shared.clone();
            StreamableHttpService::new(
                move || Ok(GatewayHandler::new(shared.clone())),
                sessions.clone(),
                config,
            )
        };
        GatewayEndpoint {
            shared,
            sessions,
            stored,
            transport,
            live: StdMutex::default(),
            touches: Arc::default(),
            unbound: StdMutex::default(),
        }
    }

    /// Sessions live on this instance.
    pub async fn live_sessions(&self) -> usize {
        self.sessions.sessions.read().await.len()
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn health(&self) -> Health {
        self.shared.health()
    }

    /// The ids of the sessions live on this instance.
    async fn session_ids(&self) -> Vec<SessionId> {
        self.sessions
            .sessions
            .read()
            .await
            .keys()
            .cloned()
            .collect()
    }

    /// Ends a session on this instance: rmcp closes it, its upstream session or
    /// process ends, and its record goes, so that no instance restores it.
    async fn end_session(&self, id: &SessionId) {
        let upstream = self
            .live()
            .remove(id.as_ref())
            .and_then(|entry| entry.upstream.upgrade());
        match tokio::time::timeout(END_TIMEOUT, self.sessions.close_session(id)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(upstream = %self.shared.config.name, error = %e, "cannot close a session")
            }
            Err(_) => {
                tracing::warn!(upstream = %self.shared.config.name, "closing a session timed out; its upstream side ends all the same")
            }
        }
        // rmcp's close lets the session's worker go, and with it the upstream side;
        // a worker stuck writing to a client that stopped reading would keep it (and
        // its places) until that client hung up.
        if let Some(upstream) = upstream {
            upstream.shut();
        }
        if let Err(e) = self.stored.delete(id).await {
            tracing::warn!(error = %e, "cannot remove an ended session's record");
        }
    }

    /// Closes this instance's sessions that no request of their client has reached
    /// for the upstream's `idle_timeout` and that have nothing in flight, as rmcp's
    /// own idle close does: their upstream sessions or processes end, their records
    /// stay, and a client that comes back has its session brought back. rmcp's close
    /// alone misses a session whose upstream keeps talking (a server logging every
    /// few seconds): each message relayed to the client restarts rmcp's timer, so a
    /// session its client left without ending it would hold its places, and a stdio
    /// server's process, until its binding expired a day later. Returns how many
    /// closed.
    pub async fn close_idle(&self) -> usize {
        let idle = self.shared.config.idle_timeout;
        let is_idle = |entry: &Live| {
            entry.heard.elapsed() >= idle && entry.upstream.upgrade().is_some_and(|up| !up.busy())
        };
        let ids: Vec<String> = self
            .live()
            .iter()
            .filter(|(_, entry)| is_idle(entry))
            .map(|(id, _)| id.clone())
            .collect();
        let mut closed = 0;
        for id in &ids {
            // Looked at again: closing the ones before may have taken seconds.
            let upstream = {
                let mut live = self.live();
                if !live.get(id).is_some_and(is_idle) {
                    continue;
                }
                live.remove(id).and_then(|entry| entry.upstream.upgrade())
            };
            // Told to close, the session's worker ends as after rmcp's own idle
            // close, and rmcp then forgets the session. (`close_session` would
            // forget it at once, and the ended worker's own `close_session` after
            // it would take down the session a request brought back meanwhile.)
            let handle = self
                .sessions
                .sessions
                .read()
                .await
                .get(&SessionId::from(id.as_str()))
                .cloned();
            if let Some(handle) = handle {
                if tokio::time::timeout(END_TIMEOUT, handle.close())
                    .await
                    .is_err()
                {
                    tracing::warn!(upstream = %self.shared.config.name, "closing an idle session timed out; its upstream side ends all the same");
                }
            }
            if let Some(upstream) = upstream {
                upstream.shut();
            }
            tracing::info!(upstream = %self.shared.config.name, "closed a session its client left idle");
            closed += 1;
        }
        closed
    }

    /// Of `unbound` (this instance's sessions without a binding in the store now),
    /// those that have had none for longer than an `initialize` may take, as seen at
    /// earlier sweeps; remembers the others.
    fn long_unbound(&self, unbound: Vec<SessionId>, now: u64) -> Vec<SessionId> {
        // Opening the upstream session and its `initialize` are bounded by the
        // connect timeout; the longer of the two is kept in case that changes.
        let config = &self.shared.config;
        let grace = config
            .timeout
            .max(config.connect_timeout)
            .saturating_add(SWEEP_EVERY)
            .as_millis() as u64;
        let mut seen = self.unbound.lock().unwrap_or_else(|p| p.into_inner());
        let mut still = HashMap::with_capacity(unbound.len());
        let mut long = Vec::new();
        for id in unbound {
            let since = seen.get(&id).copied().unwrap_or(now);
            if now.saturating_sub(since) > grace {
                long.push(id);
            } else {
                still.insert(id, since);
            }
        }
        *seen = still;
        long
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The upstream connection of a live session, when the direct path may use it.
    async fn upstream_of(&self, session: &str, revision: Option<&str>) -> Option<Arc<UpSession>> {
        let (upstream, stale) = {
            let mut live = self.live();
            let entry = live.get_mut(session)?;
            entry.heard = Instant::now();
            let stale = entry.relayed.elapsed() > self.shared.config.idle_timeout / 4;
            if stale {
                entry.relayed = Instant::now();
            }
            (entry.upstream.upgrade()?, stale)
        };
        let leg = upstream.leg.as_ref()?;
        // Both legs speak one revision, which the request must name.
        let same = leg
            .revision()
            .zip(revision)
            .is_some_and(|(up, down)| up.as_bytes() == down.as_bytes());
        if !same || upstream.peer().is_transport_closed() {
            return None;
        }
        // rmcp may have closed the session (DELETE, idle) while its upstream lives on
        // in a call still in flight.
        let id = SessionId::from(session);
        if !self.sessions.has_session(&id).await.unwrap_or(false) {
            return None;
        }
        if stale {
            self.touch(id);
        }
        Some(upstream)
    }

    /// Lets rmcp see a session the direct path serves, which it would otherwise close
    /// as idle: a `ping` of Gatehouse's own through the session, which rmcp answers.
    fn touch(&self, session: SessionId) {
        touch(&self.sessions, &self.touches, session);
    }

    /// `answer`, touching `session` (see [`Self::touch`]) every quarter of the idle
    /// timeout while it streams: a call that streams for longer than that, with
    /// nothing else in its session, would otherwise see rmcp close the session as
    /// idle under it, and the session, brought back at the client's next request,
    /// would need places upstream while the call still holds the old ones.
    fn touching(&self, answer: Answer, session: &str) -> Answer {
        let Answer::Stream(messages) = answer else {
            return answer;
        };
        let (sessions, touches) = (self.sessions.clone(), self.touches.clone());
        let session = SessionId::from(session);
        let period = (self.shared.config.idle_timeout / 4).max(MIN_TOUCH_EVERY);
        let busy = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut every = tokio::time::interval_at(Instant::now() + period, period);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Answer::Stream(
            Touching {
                messages,
                every,
                // One touch at a time: a session whose queue is stuck must not
                // gather a touch per tick, each waiting for its timeout.
                touch: move || {
                    if !busy.swap(true, Ordering::AcqRel) {
                        let busy = busy.clone();
                        touch_then(&sessions, &touches, session.clone(), move || {
                            busy.store(false, Ordering::Release)
                        });
                    }
                },
            }
            .boxed(),
        )
    }

    /// Serves `direct` without rmcp, or `None` to leave it to rmcp.
    async fn directly(&self, direct: Direct, parts: &Parts) -> Option<Response> {
        // `Direct::read` checked the headers with `direct_session`.
        let session = session_id(&parts.headers)?;
        let revision = parts
            .headers
            .get(&super::PROTOCOL_VERSION)
            .and_then(|v| v.to_str().ok());
        let upstream = self.upstream_of(session, revision).await?;
        let leg = upstream.leg.as_ref()?;
        match direct {
            Direct::Call(request) => {
                // Without a place, the relay answers it (with the error).
                let place = upstream.call_place()?;
                let answer = leg.call(&self.shared, request).await?;
                // The answer holds its place, its upstream session, and with it the
                // session's places (`max_sessions`, the client's share), until it
                // has been sent: a stream may outlive the session (DELETE, an idle
                // close, an upstream streaming on to a session ended on its side),
                // and an answer its client does not read would otherwise wait in
                // memory with its place given back, as many as the client asks for.
                let answer = self.touching(answer, session);
                Some(answer_response(answer, (place, upstream.clone())))
            }
            // Boxed, as the relay is in `serve`: only calls are frequent.
            Direct::Answer(message) => Box::pin(leg.answer(&self.shared, message))
                .await
                .then(accepted),
            Direct::Cancel(message) => Box::pin(leg.cancel(&self.shared, message))
                .await
                .then(accepted),
        }
    }

    /// Whether rmcp holds `session` in memory on this instance.
    async fn is_live(&self, session: &str) -> bool {
        let id = SessionId::from(session);
        self.sessions.has_session(&id).await.unwrap_or(true)
    }

    /// rmcp answers a plain 500 when it cannot bring a stored session back (after an
    /// idle close or a restart): its upstream is down or full, the client holds its
    /// share of sessions, or the store failed. No client recovers from a 500, and the
    /// record would bring the same answer for a day. So the record goes, and the
    /// client hears that the session is gone (404, as for any ended session): it
    /// opens another, whose failure, if any, is a JSON-RPC error naming the upstream.
    /// A store that cannot be read now (the restore may have failed for that alone)
    /// keeps the record and gets the client a 503 to retry. (A store that failed
    /// rmcp's read and answers this one ends the session: the client opens another.)
    async fn not_restored(&self, session: &str) -> Response {
        let upstream = &self.shared.config.name;
        let unavailable = |e: &dyn std::fmt::Display| {
            tracing::warn!(%upstream, error = %e, "a stored session could not be restored");
            super::reply::rpc_error(
                StatusCode::SERVICE_UNAVAILABLE,
                super::reply::code::INTERNAL_ERROR,
                &format!(
                    "the session with upstream {upstream:?} cannot be resumed just now; try again"
                ),
            )
        };
        match self.stored.load(session).await {
            Err(e) => return unavailable(&e),
            Ok(None) => return super::guard::unknown_session(),
            Ok(Some(_)) => {}
        }
        match self.stored.delete(session).await {
            Ok(()) => {
                tracing::info!(%upstream, "a stored session could not be restored; it ended");
                super::guard::unknown_session()
            }
            Err(e) => unavailable(&e),
        }
    }

    /// Whether `session`'s upstream connection or process has closed (it crashed,
    /// or it ended the upstream session).
    fn upstream_closed(&self, session: &str) -> bool {
        let upstream = self
            .live()
            .get(session)
            .and_then(|entry| entry.upstream.upgrade());
        upstream.is_some_and(|upstream| upstream.peer().is_transport_closed())
    }

    /// Ends a session whose upstream side has closed, and says it is gone (404).
    /// Every call in it would fail, and clients open a new session on a 404 only
    /// (Streamable HTTP, "Session Management"), not on a JSON-RPC error: the session
    /// would stay useless, holding its places, until its client gave up.
    async fn end_closed(&self, session: &str) -> Response {
        self.end_session(&SessionId::from(session)).await;
        tracing::info!(
            upstream = %self.shared.config.name,
            "ended a session whose upstream side closed"
        );
        super::guard::unknown_session()
    }

    /// Remembers a session `initialize` opened, for the direct path.
    fn opened(&self, session: &str, slot: &SessionSlot) {
        // Every session, for `end_session`; only an HTTP upstream's for the direct
        // path (`upstream_of` checks).
        let Some(upstream) = slot.0.get() else { return };
        let mut live = self.live();
        live.retain(|_, entry| entry.upstream.strong_count() > 0);
        live.insert(
            session.to_owned(),
            Live {
                upstream: Arc::downgrade(upstream),
                relayed: Instant::now(),
                heard: Instant::now(),
            },
        );
    }
}

/// The shortest time between two touches of a session while a call streams (one
/// runs at a time, however short the idle timeout).
const MIN_TOUCH_EVERY: Duration = Duration::from_millis(100);

/// Calls its function when dropped.
struct OnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// A streamed answer that calls `touch` each time `every` ticks while it streams
/// (hyper polls it then: the interval wakes it), however quiet the call is.
struct Touching<F> {
    messages: futures::stream::BoxStream<'static, Option<Vec<u8>>>,
    every: tokio::time::Interval,
    touch: F,
}

impl<F: FnMut() + Unpin> futures::Stream for Touching<F> {
    type Item = Option<Vec<u8>>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        while self.every.poll_tick(cx).is_ready() {
            (self.touch)();
        }
        self.messages.poll_next_unpin(cx)
    }
}

/// Lets rmcp see `session` (see [`GatewayEndpoint::touch`]).
fn touch(sessions: &Arc<LocalSessionManager>, touches: &AtomicU64, session: SessionId) {
    touch_then(sessions, touches, session, || {});
}

/// [`touch`], then `done` (once the touch is answered, or given up).
fn touch_then(
    sessions: &Arc<LocalSessionManager>,
    touches: &AtomicU64,
    session: SessionId,
    done: impl FnOnce() + Send + 'static,
) {
    let sessions = sessions.clone();
    let ping = json!({
        "jsonrpc": "2.0",
        "id": format!("gatehouse-touch-{}", touches.fetch_add(1, Ordering::Relaxed)),
        "method": "ping",
    });
    // Bounded as a whole: a session whose worker no longer takes messages (its
    // client stopped reading) must not keep this task for ever.
    let touched = tokio::time::timeout(TOUCH_TIMEOUT, async move {
        let Ok(ping) = serde_json::from_value::<ClientJsonRpcMessage>(ping) else {
            return;
        };
        if let Ok(answer) = sessions.create_stream(&session, ping).await {
            let mut answer = Box::pin(answer);
            answer.next().await;
        }
    });
    tokio::spawn(async move {
        // `done` however the touch ends, a panic included: a stream whose touches
        // stopped for good would lose its session.
        let _done = OnDrop(Some(done));
        let _ = touched.await;
    });
}

/// How often each instance ends the gateway sessions whose client lost its grant
/// (see [`end_ungranted`]).
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// How long ending one session may take: rmcp's close waits for room in the
/// session's queue, which a session whose client stopped reading may never make.
const END_TIMEOUT: Duration = Duration::from_secs(5);

/// Ends the gateway sessions on this instance whose client no longer holds a grant
/// for their upstream: the owner revoked it, the client revoked its refresh token,
/// or it expired. Every request in such a session is refused (401) already; what
/// this ends is the upstream session or process it holds, which would otherwise
/// live until the session idles out. The client may sign in again and open a new
/// session. Returns how many ended. The console runs it after each revocation, and
/// each instance every [`SWEEP_EVERY`] (see [`sweep`]).
///
/// A session without a binding in the store may be one whose `initialize` is being
/// answered; it ends once it has had none for longer than that may take (its
/// binding expired, or another instance ended it: the guard refuses it already).
pub async fn end_ungranted(state: &AppState) -> StoreResult<usize> {
    // Sessions first, then grants: a session opened after the grants were read
    // could hold a grant they miss.
    let mut open = Vec::new();
    for (index, endpoint) in state.upstreams.iter().enumerate() {
        for id in endpoint.session_ids().await {
            open.push((index, id));
        }
    }
    if open.is_empty() {
        return Ok(0);
    }
    let mut bindings: Vec<Option<Arc<Binding>>> =
        open.iter().map(|(_, id)| state.bindings.get(id)).collect();
    let unknown: Vec<usize> = (0..open.len()).filter(|&i| bindings[i].is_none()).collect();
    for chunk in unknown.chunks(256) {
        let keys: Vec<Key> = chunk.iter().map(|&i| binding_key(&open[i].1)).collect();
        let records = state
            .store
            .get_many(&keys.iter().collect::<Vec<_>>())
            .await?;
        if records.len() != chunk.len() {
            return Err(StoreError::Backend(
                "the store answered the wrong number of records".into(),
            ));
        }
        for (&i, record) in chunk.iter().zip(records) {
            bindings[i] = binding_of(record.as_deref()).map(Arc::new);
        }
    }
    let granted = state.auth.granted().await?;
    let now = state.clock.now_ms();
    let mut ended = 0;
    for (index, endpoint) in state.upstreams.iter().enumerate() {
        let (mut end, mut unbound) = (Vec::new(), Vec::new());
        let sessions = open.iter().zip(&bindings).filter(|((i, _), _)| *i == index);
        for ((_, id), binding) in sessions {
            match binding {
                Some(binding) => {
                    if !granted.contains(&(binding.client_id.clone(), binding.resource.clone())) {
                        end.push(id.clone());
                    }
                }
                None => unbound.push(id.clone()),
            }
        }
        end.extend(endpoint.long_unbound(unbound, now));
        for id in end {
            endpoint.end_session(&id).await;
            if let Err(e) = unbind(&state.store, &state.bindings, &id).await {
                tracing::warn!(error = %e, "cannot remove an ended session's binding");
            }
            tracing::info!(
                upstream = %endpoint.shared.config.name,
                "ended a session whose client can no longer use it"
            );
            ended += 1;
        }
    }
    Ok(ended)
}

/// Runs [`end_ungranted`] every [`SWEEP_EVERY`] until shutdown; nothing to do
/// without upstreams.
pub async fn sweep(state: AppState) {
    if state.upstreams.is_empty() {
        return;
    }
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    // Idle sessions are looked for every quarter of the shortest `idle_timeout`
    // (a second to a minute).
    let idle_every = state
        .upstreams
        .iter()
        .map(|endpoint| endpoint.shared.config.idle_timeout / 4)
        .min()
        .unwrap_or(SWEEP_EVERY)
        .clamp(Duration::from_secs(1), SWEEP_EVERY);
    let mut idle = tokio::time::interval(idle_every);
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    idle.tick().await;
    loop {
        tokio::select! {
            _ = every.tick() => {
                if let Err(e) = end_ungranted(&state).await {
                    tracing::warn!(error = %e, "cannot check the gateway sessions' grants");
                }
            }
            _ = idle.tick() => {
                for endpoint in &state.upstreams {
                    endpoint.close_idle().await;
                }
            }
            () = state.shutdown.cancelled() => return,
        }
    }
}

fn accepted() -> Response {
    StatusCode::ACCEPTED.into_response()
}

/// One SSE event holding one JSON-RPC message. The message is the upstream's text
/// with its ids spliced in, and JSON may have line breaks between its tokens, which in
/// SSE would end the `data:` line: as whitespace outside strings (the only place JSON
/// allows them raw) they become spaces, and the message means the same.
pub(crate) fn sse_frame(mut json: Vec<u8>) -> Vec<u8> {
    for byte in json.iter_mut().filter(|b| matches!(**b, b'\n' | b'\r')) {
        *byte = b' ';
    }
    let mut frame = Vec::with_capacity(json.len() + 22);
    frame.extend_from_slice(b"event: message\ndata: ");
    frame.extend_from_slice(&json);
    frame.extend_from_slice(b"\n\n");
    frame
}

/// `answer` as a response whose body holds `held` until it has been sent (see
/// [`Holding`]).
fn answer_response<T: Send + Unpin + 'static>(answer: Answer, held: T) -> Response {
    let mut response = match answer {
        Answer::Json { body, error } => {
            let mut response = (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                Body::new(Pieces::new(body)),
            )
                .into_response();
            response.extensions_mut().insert(if error {
                ToolOutcome::Error
            } else {
                ToolOutcome::Ok
            });
            response
        }
        Answer::Stream(messages) => {
            let frames = messages.map(|message| {
                let frame = match message {
                    Some(json) => sse_frame(json),
                    None => b": keep-alive\n\n".to_vec(),
                };
                Ok::<_, std::convert::Infallible>(Bytes::from(frame))
            });
            (
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/event-stream"),
                    ),
                    (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                    // As rmcp's own streams: a proxy such as nginx must not hold
                    // progress or an upstream's request back in its buffer.
                    (
                        header::HeaderName::from_static("x-accel-buffering"),
                        HeaderValue::from_static("no"),
                    ),
                ],
                Body::from_stream(frames),
            )
                .into_response()
        }
    };
    let body = std::mem::take(response.body_mut());
    *response.body_mut() = Body::new(Holding::new(body, held));
    response
}

/// Whether a POST's body is a request, which is answered, rather than a
/// notification or a client's answer (never refused for want of a place: a
/// cancellation frees places): a method, and an id rmcp runs a request by, as the
/// guard judges a call.
fn is_request(body: &[u8]) -> bool {
    match crate::mcp::call::Message::peek(body) {
        crate::mcp::call::Message::Single(call) => {
            !call.method().is_empty()
                && super::reply::is_request_id(&super::reply::request_id(body))
        }
        _ => false,
    }
}

/// A place an answer holds until it has been sent.
type Held = Box<dyn std::any::Any + Send>;

/// A response body that holds `held` until it ends or is dropped: an answer's
/// place in flight (and a direct call's upstream session). hyper asks a body for
/// more only when the connection can take it (HTTP/2 flow control, HTTP/1's
/// write buffer), so an answer its client does not read keeps its place, and the
/// caps on places bound what unread answers hold.
struct Holding<T> {
    body: Body,
    held: Option<T>,
}

impl<T> Holding<T> {
    fn new(body: Body, held: T) -> Self {
        Holding {
            body,
            held: Some(held),
        }
    }
}

impl<T: Unpin> http_body::Body for Holding<T> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let frame = std::pin::Pin::new(&mut this.body).poll_frame(cx);
        if let std::task::Poll::Ready(None) = frame {
            this.held = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The most of a JSON answer handed to the connection at once.
const SENDING_PIECE: usize = 16 * 1024;

/// A whole JSON answer, handed to the connection a piece at a time, so that a
/// [`Holding`] around it holds its place until the client has taken nearly all of
/// it. Its length is known, so it goes out with `Content-Length`.
pub(crate) struct Pieces {
    rest: Bytes,
}

impl Pieces {
    pub(crate) fn new(body: Vec<u8>) -> Self {
        Pieces {
            rest: Bytes::from(body),
        }
    }
}

impl http_body::Body for Pieces {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if self.rest.is_empty() {
            return std::task::Poll::Ready(None);
        }
        let take = self.rest.len().min(SENDING_PIECE);
        let piece = self.rest.split_to(take);
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.rest.len() as u64)
    }
}

impl Direct {
    /// What a POST's body holds, when the direct path may take it.
    fn read(
        shared: &Shared,
        parts: &Parts,
        body: &Bytes,
    ) -> Option<(Direct, Need, Option<String>)> {
        shared.is_http().then_some(())?;
        direct_session(&parts.headers)?;
        match Direct::of(body)? {
            Read::Call(call, name) => {
                // A tool whose needs are unknown (or denied) goes to the relay, which
                // learns or refuses it.
                if !shared.policy.knows(&name) {
                    return None;
                }
                let access = shared.policy.tool_access(&name)?;
                Some((Direct::Call(call), Need::Scope(access), Some(name)))
            }
            Read::Reply(reply) => Some((reply, Need::Nothing, None)),
        }
    }

    /// What the direct path makes of a POST's body alone, before any policy: a
    /// `tools/call` and the tool it names, or a client's answer or cancellation.
    pub(crate) fn of(body: &Bytes) -> Option<Read> {
        // The members only: a call's text goes upstream as the client wrote it.
        let message = Members::parse(body)?;
        if plain_str(message.get("jsonrpc"))?? != "2.0" {
            return None;
        }
        let id = message.get("id");
        match (plain_str(message.get("method")), id) {
            (Some(Some("tools/call")), Some(_)) => {
                let (call, name) = CallText::read(body, &message)?;
                Some(Read::Call(call, name))
            }
            (None, Some(_)) | (Some(Some("notifications/cancelled")), None) => {
                Some(Read::Reply(Direct::reply(body, &message)?))
            }
            _ => None,
        }
    }

    /// A client's answer to a request relayed to it, or its cancellation of a call,
    /// when the direct path may send it upstream. What goes upstream is the client's
    /// message with only its ids replaced, so it must be exactly what it claims to
    /// be: an answer has `jsonrpc`, an id of ours (a string) and one of `result` and
    /// `error` (JSON-RPC 2.0 §5); a cancellation `jsonrpc`, `method` and `params`
    /// with `requestId`, `reason` and `_meta`. Another member (a `METHOD`, which Go's
    /// `encoding/json` reads as `method`) could make it a request, checked for no
    /// scope, to the upstream's parser; such a message is read as rmcp's typed
    /// model reads it, which drops what it does not know, and goes on as that.
    /// (Left to the relay, it was lost: rmcp's session knows neither the ids of
    /// the requests this path relayed nor its calls.)
    fn reply(body: &Bytes, message: &Members<'_>) -> Option<Direct> {
        if plain_str(message.get("method")) == Some(Some("notifications/cancelled")) {
            let params = Members::of(message.get("params")?)?;
            if !only(message, &["jsonrpc", "method", "params"])
                || !only(&params, &["requestId", "reason", "_meta"])
            {
                return Direct::retyped(body);
            }
            return Some(Direct::Cancel(serde_json::from_slice(body).ok()?));
        }
        let id = message.get("id")?.get().starts_with('"');
        let one_outcome = message.contains("result") != message.contains("error");
        if !(id && one_outcome) {
            return None;
        }
        if !only(message, &["jsonrpc", "id", "result", "error"]) {
            return Direct::retyped(body);
        }
        Some(Direct::Answer(serde_json::from_slice(body).ok()?))
    }

    /// An answer or a cancellation with members it should not have, as rmcp's
    /// typed model reads it (without them).
    fn retyped(body: &Bytes) -> Option<Direct> {
        let typed: rmcp::model::ClientJsonRpcMessage = serde_json::from_slice(body).ok()?;
        let message = serde_json::to_value(&typed).ok()?;
        let object = message.as_object()?;
        match object.get("method").map(Value::as_str) {
            Some(Some("notifications/cancelled")) => Some(Direct::Cancel(message)),
            None if object.get("id").is_some_and(Value::is_string) => Some(Direct::Answer(message)),
            _ => None,
        }
    }
}

/// Whether `message` has no members but `allowed`.
fn only(message: &Members<'_>, allowed: &[&str]) -> bool {
    message.names().all(|name| allowed.contains(&name))
}

impl Endpoint for GatewayEndpoint {
    type Prepared = Option<Direct>;

    async fn holds(&self, session: &str) -> bool {
        self.is_live(session).await || self.stored.may_restore(session).await
    }

    async fn abandon(&self, session: &str) {
        self.end_session(&SessionId::from(session)).await;
    }

    fn resource(&self) -> &Arc<Resource> {
        &self.shared.resource
    }

    async fn needs(&self, call: &Call<'_>) -> Need {
        if call.method() == "tools/call" {
            // Bounded: an upstream that does not answer its listing leaves the tool
            // unknown (it needs the write scope), not the call waiting. A known tool,
            // the usual case, costs no timer.
            if let Some(tool) = call.name().filter(|t| !self.shared.policy.knows(t)) {
                let learning = self.shared.learn_tool(tool);
                let _ = tokio::time::timeout(self.shared.config.timeout, learning).await;
            }
        }
        self.shared.policy.needs(call)
    }

    fn prepare(&self, parts: &Parts, body: Option<&Bytes>) -> Prepared<Option<Direct>> {
        let read = body.and_then(|body| Direct::read(&self.shared, parts, body));
        let (state, need, tool) = match read {
            Some((direct, need, tool)) => (Some(direct), Some(need), tool),
            None => (None, None, None),
        };
        Prepared {
            state,
            read_ahead: None,
            need,
            tool,
        }
    }

    async fn serve(&self, request: Guarded<Option<Direct>>) -> Response {
        let Guarded {
            parts,
            body,
            access,
            prepared,
            ..
        } = request;
        if let Some(direct) = prepared {
            if let Some(answer) = self.directly(direct, &parts).await {
                return answer;
            }
        }
        // Boxed: the relay's future (rmcp's, around the upstream's) is several times
        // the direct path's, and a future is as large as its largest path. Inline, it
        // made every direct call allocate and copy it.
        Box::pin(self.relayed(parts, body, access)).await
    }
}

impl GatewayEndpoint {
    /// Serves a request through rmcp (see [`Endpoint::serve`]).
    async fn relayed(
        &self,
        mut parts: Parts,
        body: GuardedBody,
        access: crate::oauth::records::AccessToken,
    ) -> Response {
        let session = session_id(&parts.headers).map(str::to_owned);
        if let Some(session) = &session {
            if self.upstream_closed(session) {
                return self.end_closed(session).await;
            }
            if let Some(entry) = self.live().get_mut(session) {
                (entry.relayed, entry.heard) = (Instant::now(), Instant::now());
            }
        }
        // Where `initialize` leaves the session's upstream: a new session's, or that
        // of a session rmcp brings back from the store (after a restart or an idle
        // close), whose `initialize` it replays within this request.
        let slot = SessionSlot::default();
        parts.extensions.insert(slot.clone());
        // Whether rmcp will have to bring the session back for this request: looked
        // at before, as a restore that failed may leave the session in rmcp's memory
        // (its service ended) for a moment after the answer.
        let restoring = match &session {
            Some(session) => !self.is_live(session).await,
            None => false,
        };
        // A relayed request holds a place until its answer has been sent, its live
        // session's (see `UpSession::answer_place`) or, without a session, one of
        // its client's share of the pool: rmcp holds the answer until the client
        // reads it.
        let answer_place = match &body {
            GuardedBody::Read(bytes) if is_request(bytes) => {
                let place = match session.as_deref() {
                    Some(session) => self.live().get(session).and_then(|entry| {
                        let upstream = entry.upstream.upgrade()?;
                        let place = upstream.answer_place().map(|p| Box::new(p) as Held);
                        Some(place.ok_or_else(|| self.shared.busy_error()))
                    }),
                    None => Some(
                        self.shared
                            .pooled_answer_place(&access.client_id)
                            .map(|p| Box::new(p) as Held),
                    ),
                };
                match place {
                    Some(Ok(place)) => Some(place),
                    Some(Err(busy)) => return super::reply::error_data_to(&busy, bytes),
                    None => None,
                }
            }
            _ => None,
        };
        let mut response = self
            .transport
            .handle(rebuild(parts, body, access))
            .await
            .map(|body| match answer_place {
                Some(place) => Body::new(Holding::new(Body::new(body), place)),
                None => Body::new(body),
            });
        if let Some(session) = &session {
            if response.status() == StatusCode::INTERNAL_SERVER_ERROR
                && (restoring || !self.is_live(session).await)
            {
                // What is left of it in rmcp goes too, so that the next request
                // with its id is answered as for any ended session.
                let id = SessionId::from(session.as_str());
                let _ = tokio::time::timeout(END_TIMEOUT, self.sessions.close_session(&id)).await;
                return self.not_restored(session).await;
            }
            // Brought back: its calls may take the direct path again, and
            // `end_session` finds its upstream. Also when this request then failed
            // (rmcp checks the protocol version header after bringing it back): the
            // session lives on in rmcp, which will not replay its `initialize` again.
            if slot.0.get().is_some() {
                self.opened(session, &slot);
            }
        } else {
            let opened = response
                .headers()
                .get(&SESSION_ID)
                .and_then(|v| v.to_str().ok());
            match opened {
                Some(opened) if slot.0.get().is_some() => self.opened(opened, &slot),
                // rmcp names a session even when `initialize` failed (the upstream is
                // down, or has its maximum of sessions). Unnamed, the session is never
                // bound to the client, so using its id is answered 404, as a session
                // that does not exist, not a 500 from rmcp failing to restore it.
                // rmcp has stored the client's `initialize` parameters for it all the
                // same, for a day: removed, or every failed attempt would leave up to
                // a request body's worth in the store.
                Some(failed) => {
                    // rmcp closes the session once its worker has ended, after this
                    // answer; closed here, it is gone before the client can try again.
                    let id = SessionId::from(failed);
                    match tokio::time::timeout(END_TIMEOUT, self.sessions.close_session(&id)).await
                    {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "cannot close a failed session")
                        }
                        Err(_) => tracing::warn!("closing a failed session timed out"),
                    }
                    if let Err(e) = self.stored.delete(failed).await {
                        tracing::warn!(error = %e, "cannot remove a failed session's record");
                    }
                    response.headers_mut().remove(&SESSION_ID);
                }
                None => {}
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A whole answer keeps its place in flight until the connection has taken all
    /// of it, a piece at a time, and says its length.
    #[tokio::test]
    async fn a_whole_answer_holds_its_place_until_its_last_piece_is_taken() {
        use http_body::Body as _;
        use http_body_util::BodyExt;

        let places = Arc::new(tokio::sync::Semaphore::new(1));
        let place = places.clone().try_acquire_owned().expect("a place");
        let answer: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let mut body = Holding::new(Body::new(Pieces::new(answer.clone())), place);
        assert_eq!(body.size_hint().exact(), Some(40_000));
        let mut sent = Vec::new();
        while let Some(frame) = body.frame().await {
            let piece = frame.expect("infallible").into_data().expect("data");
            assert!(piece.len() <= SENDING_PIECE);
            sent.extend_from_slice(&piece);
            assert_eq!(places.available_permits(), 0, "held while pieces are taken");
        }
        assert_eq!(sent, answer);
        assert!(body.is_end_stream());
        assert_eq!(places.available_permits(), 1, "given back at the end");

        // A connection that goes away before the end gives it back too.
        let place = places.clone().try_acquire_owned().expect("a place");
        let mut body = Holding::new(Body::new(Pieces::new(answer)), place);
        let _first = body.frame().await;
        assert_eq!(places.available_permits(), 0);
        drop(body);
        assert_eq!(places.available_permits(), 1);
    }

    #[test]
    fn a_message_with_line_breaks_stays_one_sse_event_that_means_the_same() {
        let upstream =
            b"{\"jsonrpc\":\"2.0\",\r\n  \"id\":1,\n\"result\":{\"text\":\"a\\nb\"}}".to_vec();
        let frame = sse_frame(upstream.clone());
        let text = std::str::from_utf8(&frame).expect("utf-8");
        let data = text
            .strip_prefix("event: message\ndata: ")
            .and_then(|rest| rest.strip_suffix("\n\n"))
            .expect("one event");
        assert!(!data.contains(['\n', '\r']), "{data:?}");
        let read: serde_json::Value = serde_json::from_str(data).expect("JSON");
        let meant: serde_json::Value = serde_json::from_slice(&upstream).expect("JSON");
        assert_eq!(read, meant);
    }

    fn reply(json: &str) -> Option<Direct> {
        let body = Bytes::copy_from_slice(json.as_bytes());
        let message = Members::parse(&body).expect("an object");
        Direct::reply(&body, &message)
    }

    #[test]
    fn only_a_plain_answer_or_cancellation_goes_up_as_written() {
        let answer = r#"{"jsonrpc":"2.0","id":"gatehouse-7","result":{"action":"accept"}}"#;
        assert!(matches!(reply(answer), Some(Direct::Answer(_))));
        let error = r#"{"jsonrpc":"2.0","id":"gatehouse-7","error":{"code":-1,"message":"no"}}"#;
        assert!(matches!(reply(error), Some(Direct::Answer(_))));
        let cancel = r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":3,"reason":"r"}}"#;
        assert!(matches!(reply(cancel), Some(Direct::Cancel(_))));

        // A member that a case-blind parser reads as `method` would make the answer
        // a request upstream: it goes on as rmcp's typed model reads it, without
        // what JSON-RPC does not have.
        let members = |message: &Value| -> Vec<String> {
            let mut names: Vec<String> = message
                .as_object()
                .expect("an object")
                .keys()
                .cloned()
                .collect();
            names.sort();
            names
        };
        for smuggled in [
            r#"{"jsonrpc":"2.0","id":"gatehouse-7","result":{},"METHOD":"tools/call","params":{"name":"delete"}}"#,
            r#"{"jsonrpc":"2.0","id":"gatehouse-7","result":{},"params":{}}"#,
        ] {
            let Some(Direct::Answer(answer)) = reply(smuggled) else {
                panic!("{smuggled}: not an answer");
            };
            assert_eq!(members(&answer), ["id", "jsonrpc", "result"], "{smuggled}");
            assert_eq!(answer["id"], "gatehouse-7");
        }
        for smuggled in [
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":3},"Id":1}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":3,"NAME":"x"}}"#,
        ] {
            let Some(Direct::Cancel(cancel)) = reply(smuggled) else {
                panic!("{smuggled}: not a cancellation");
            };
            assert_eq!(
                members(&cancel),
                ["jsonrpc", "method", "params"],
                "{smuggled}"
            );
            assert_eq!(members(&cancel["params"]), ["requestId"], "{smuggled}");
        }
        // Not an answer or a cancellation at all: the relay's.
        for other in [
            r#"{"jsonrpc":"2.0","id":"gatehouse-7","result":{},"error":{"code":1,"message":"m"}}"#,
            r#"{"jsonrpc":"2.0","id":"gatehouse-7"}"#,
            r#"{"jsonrpc":"2.0","id":7,"result":{}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":[3]}"#,
        ] {
            assert!(reply(other).is_none(), "{other}");
        }
    }
}
