//! The direct path to an HTTP upstream: a `tools/call` in a live session, and what
//! belongs to it (the client's answers to the upstream's requests, and its
//! cancellations), sent as the client wrote it over the upstream session that rmcp's
//! client opened, without either leg's rmcp session machinery.
//!
//! Why: through rmcp a relayed call crossed the downstream session worker and its
//! per-request SSE stream, the upstream client's worker, and a typed parse and
//! re-serialisation on each leg; about 0.3 ms of CPU per call, and the gateway rows
//! of `cargo xtask bench` ran at a quarter of the upstream called directly. Here a
//! call is one HTTP exchange upstream, and a message's members are read as text
//! (`super::text`), with only its id and progress token replaced.
//!
//! As faithful as the relay: a message passes unchanged except for its id and
//! progress token, which are Gatehouse's own on the upstream leg (so they cannot
//! collide with what rmcp's client sends in the same upstream session) and are
//! restored on the way back. What the upstream sends before its answer (progress,
//! logging, sampling, elicitation and roots requests) goes to the client on the
//! call's own stream; the client's answers and cancellations come back here by their
//! ids. Vendor fields rmcp's model does not know pass too, and nested values pass as
//! written (names twice inside `arguments`, say), where rmcp's typed relay would have
//! rebuilt them; what the gateway decides on is read strictly (`super::text`). Whatever this path is
//! unsure of goes through the relay instead (`crate::http::mcp::gateway` decides).

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex as StdMutex,
    },
    time::Duration,
};

use bytes::Bytes;
use futures::{stream::BoxStream, FutureExt, StreamExt};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use rmcp::{
    model::ClientJsonRpcMessage,
    transport::streamable_http_client::{
        SseError, StreamableHttpClient, StreamableHttpError, StreamableHttpPostResponse,
        StreamableHttpResponseLimits,
    },
};
use serde_json::{json, Value};
use sse_stream::{Sse, SseStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    lock,
    plain::{Pool, DRAIN},
    text::{self, plain_str, Members},
    upstream::Shared,
};
use crate::{
    http::mcp::{PROTOCOL_VERSION, SESSION_ID},
    net::media_type,
};

/// The largest JSON answer, and the longest SSE event, read from an upstream (rmcp's
/// own limits for its client).
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// How often a streamed answer that has nothing to say sends an SSE comment, so that
/// proxies do not close it while, say, a person reads an elicitation form.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// How many answered SSE responses of one upstream session are read off at once
/// through reqwest (see [`drain`]); each for [`DRAIN`] at most, as in an `http://`
/// upstream's pool.
const DRAINS: usize = 16;

/// How many requests of the upstream's (sampling, elicitation, roots) one call may
/// have waiting for the client's answer at once.
const MAX_ASKS: usize = 16;

/// The longest string id of such a request that is relayed, and the longest SSE
/// event id a stream is resumed from.
const MAX_ID_BYTES: usize = 256;

/// How many times in a row, without a message between, one call's stream is taken
/// up again after the upstream ended it before the answer (see
/// [`InFlight::resume`]); the longest wait before each that an upstream's `retry`
/// may ask for; and how many tries each takes, this far apart (and first, when the
/// upstream asked for no wait), as rmcp's client does.
const MAX_RESUMES: u8 = 3;
const MAX_RETRY_WAIT: Duration = Duration::from_secs(5);
const RESUME_TRIES: usize = 3;
const RESUME_BACKOFF: Duration = Duration::from_millis(250);

/// Ids (and progress tokens) Gatehouse gives on the upstream leg, and to the requests
/// it relays to the client: strings, where rmcp's own ids are numbers.
const ID_PREFIX: &str = "gatehouse-";

/// What rmcp's client sent with its last message in the upstream session: enough to
/// send another in it.
#[derive(Clone)]
struct Seen {
    /// Parsed once: reqwest would parse a string on every call.
    url: reqwest013::Url,
    uri: http::Uri,
    /// The URI's path and query: what an `http://` upstream gets on the request line.
    path: http::Uri,
    session: Arc<str>,
    /// Every header a message in the session carries: the configured ones,
    /// `MCP-Protocol-Version`, the session's id, the content types, and for an
    /// `http://` upstream `Host` (reqwest writes its own).
    headers: HeaderMap,
}

/// How the direct path sends to an upstream. An `http://` upstream on connections
/// the call drives itself (`super::plain`): reqwest, which wraps hyper's pooled
/// client, parses the URL again, merges headers and wraps the body on every request,
/// and that client runs each connection as a task of its own; `perf` showed both as
/// a sizeable share of the server's own time on this path. An `https://` upstream
/// through the reqwest client rmcp's side uses, with its TLS set-up.
#[derive(Clone)]
pub enum Sender {
    Plain(Arc<Pool>),
    Tls(reqwest013::Client),
}

/// An upstream's answer, from either client.
struct Reply {
    status: http::StatusCode,
    /// The media type, lower case, without parameters.
    content_type: String,
    length: Option<u64>,
    body: BoxStream<'static, Result<Bytes, std::io::Error>>,
}

impl Sender {
    /// A pooled HTTP client for `http://` upstreams: no proxy and no redirects (it
    /// follows none), and reqwest's TCP settings, so that a pooled connection to an
    /// upstream that vanished is noticed without waiting for a call's timeout. The
    /// connect timeout covers each TCP attempt; a name lookup is bounded by the
    /// call's timeout and the system resolver's own.
    pub fn plain(connect_timeout: Duration, idle_per_host: usize, idle: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(15)));
        connector.set_keepalive_interval(Some(Duration::from_secs(15)));
        connector.set_keepalive_retries(Some(3));
        #[cfg(target_os = "linux")]
        connector.set_tcp_user_timeout(Some(Duration::from_secs(30)));
        Sender::Plain(Pool::new(connector, idle_per_host, idle))
    }

    async fn send(&self, seen: &Seen, body: Vec<u8>) -> Result<Reply, String> {
        self.exchange(seen, http::Method::POST, seen.headers.clone(), body)
            .await
    }

    /// Takes up the session's stream after the event `last_event` (Streamable HTTP,
    /// "Resumability and Redelivery"): a GET with `Last-Event-ID`.
    async fn resume(&self, seen: &Seen, last_event: &str) -> Result<Reply, String> {
        let last_event = HeaderValue::from_str(last_event).map_err(|e| e.to_string())?;
        let mut headers = seen.headers.clone();
        headers.remove(http::header::CONTENT_TYPE);
        headers.insert(
            http::header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(HeaderName::from_static("last-event-id"), last_event);
        self.exchange(seen, http::Method::GET, headers, Vec::new())
            .await
    }

    async fn exchange(
        &self,
        seen: &Seen,
        method: http::Method,
        headers: HeaderMap,
        body: Vec<u8>,
    ) -> Result<Reply, String> {
        let (status, headers, length, body) = match self {
            Sender::Plain(pool) => {
                let mut request = http::Request::new(Full::new(Bytes::from(body)));
                *request.method_mut() = method;
                *request.uri_mut() = seen.path.clone();
                *request.headers_mut() = headers;
                let response = pool.send(&seen.uri, request).await?;
                let (parts, body) = response.into_parts();
                let length = body.exact_len();
                (parts.status, parts.headers, length, body.boxed())
            }
            Sender::Tls(client) => {
                let mut request = client
                    .request(method.clone(), seen.url.clone())
                    .headers(headers);
                if method == http::Method::POST {
                    request = request.body(body);
                }
                let response = request
                    .send()
                    .await
                    // reqwest's text names the URL, whose query may hold a secret.
                    .map_err(|e| causes(&e.without_url()))?;
                let (status, headers, length) = (
                    response.status(),
                    response.headers().clone(),
                    response.content_length(),
                );
                let body = response
                    .bytes_stream()
                    .map(|chunk| chunk.map_err(std::io::Error::other))
                    .boxed();
                (status, headers, length, body)
            }
        };
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(media_type)
            .unwrap_or_default();
        Ok(Reply {
            status,
            content_type,
            length,
            body,
        })
    }
}

/// An error and its causes, as one line ("client error (Connect): tcp connect error:
/// Connection refused").
pub(super) fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

/// What is in flight on the direct path of one upstream session.
#[derive(Default)]
struct Pending {
    /// The client's id of a call (as JSON text) → Gatehouse's id for it upstream,
    /// and what ends the call when the client cancels it.
    calls: HashMap<String, (String, CancellationToken)>,
    /// Gatehouse's id of a request relayed to the client → the call it belongs to
    /// and the upstream's own id for it.
    asks: HashMap<String, (String, Value)>,
}

/// One upstream session's direct path.
pub struct Leg {
    /// rmcp's client, which [`Recorder`] wraps.
    client: reqwest013::Client,
    sender: Sender,
    seen: StdMutex<Option<Arc<Seen>>>,
    /// `gatehouse-` and a random part of this leg's own: its ids upstream never equal
    /// another session's, so an answer that reached the wrong call (were a connection
    /// ever to go out of step) would not be taken for its own.
    prefix: String,
    /// A `ping` of the upstream's is being answered (one at a time; see
    /// [`InFlight::relay`]).
    pinging: AtomicBool,
    next: AtomicU64,
    pending: StdMutex<Pending>,
    /// Answered SSE responses being read off (see [`drain`]).
    drains: Arc<tokio::sync::Semaphore>,
}

impl Leg {
    pub fn new(client: reqwest013::Client, sender: Sender) -> Arc<Self> {
        Arc::new(Leg {
            client,
            sender,
            seen: StdMutex::default(),
            prefix: format!("{ID_PREFIX}{:016x}-", rand::random::<u64>()),
            pinging: AtomicBool::new(false),
            next: AtomicU64::new(1),
            pending: StdMutex::default(),
            drains: Arc::new(tokio::sync::Semaphore::new(DRAINS)),
        })
    }

    /// The revision the upstream session speaks, once rmcp's client has opened it.
    pub fn revision(&self) -> Option<HeaderValue> {
        lock(&self.seen)
            .as_ref()
            .and_then(|seen| seen.headers.get(&PROTOCOL_VERSION).cloned())
    }

    fn record(
        &self,
        uri: &Arc<str>,
        session: Option<&Arc<str>>,
        headers: &HashMap<HeaderName, HeaderValue>,
    ) {
        let Some(session) = session else { return };
        let mut seen = lock(&self.seen);
        if seen.as_ref().is_some_and(|s| s.session == *session) {
            return;
        }
        let (Ok(url), Ok(uri), Ok(id)) = (
            reqwest013::Url::parse(uri),
            uri.parse::<http::Uri>(),
            HeaderValue::from_str(session),
        ) else {
            return;
        };
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let (Ok(path), Some(Ok(host))) = (
            http::Uri::try_from(path),
            uri.authority().map(|a| HeaderValue::from_str(a.as_str())),
        ) else {
            return;
        };
        let mut all = HeaderMap::with_capacity(headers.len() + 3);
        all.extend(headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        all.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        all.insert(
            http::header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        all.insert(SESSION_ID.clone(), id);
        if let Sender::Plain(_) = self.sender {
            all.insert(http::header::HOST, host);
        }
        *seen = Some(Arc::new(Seen {
            url,
            uri,
            path,
            session: session.clone(),
            headers: all,
        }));
    }

    fn next_id(&self) -> String {
        format!(
            "{}{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Sends a message that is not a request (an answer or a notification); the
    /// upstream answers `202 Accepted`.
    async fn notify(&self, shared: &Shared, message: Value) {
        let Some(seen) = lock(&self.seen).clone() else {
            return;
        };
        self.notify_in(shared, &seen, message).await;
    }

    /// [`Self::notify`] in the upstream session `seen`.
    async fn notify_in(&self, shared: &Shared, seen: &Seen, message: Value) {
        let Ok(body) = serde_json::to_vec(&message) else {
            return;
        };
        let sent = tokio::time::timeout(shared.config.timeout, self.sender.send(seen, body)).await;
        match sent {
            Ok(Ok(reply)) if reply.status.is_success() => {}
            Ok(Ok(reply)) => {
                tracing::warn!(upstream = %shared.config.name, status = %reply.status, "the upstream refused a relayed message")
            }
            Ok(Err(e)) => {
                tracing::warn!(upstream = %shared.config.name, error = %e, "cannot relay a message to the upstream")
            }
            Err(_) => {
                tracing::warn!(upstream = %shared.config.name, "relaying a message to the upstream timed out")
            }
        }
    }

    /// Relays the client's answer to a request this path relayed to it; `false` when
    /// the id is not one of those (the relay then has it).
    pub async fn answer(&self, shared: &Shared, mut message: Value) -> bool {
        let Some(ours) = message.get("id").and_then(Value::as_str) else {
            return false;
        };
        let Some((_, upstream_id)) = lock(&self.pending).asks.remove(ours) else {
            return false;
        };
        if let Some(object) = message.as_object_mut() {
            object.insert("id".into(), upstream_id);
            self.notify(shared, message).await;
        }
        true
    }

    /// Gatehouse's id for the request the upstream gave `upstream_id` and relayed to
    /// the client on this path during the call `call`, now that the upstream gave it
    /// up: the client's answer to it goes nowhere.
    fn ask_given_up(&self, upstream_id: &Value, call: &str) -> Option<String> {
        let mut pending = lock(&self.pending);
        let ours = pending
            .asks
            .iter()
            .find(|(_, (of, id))| id == upstream_id && of == call)
            .map(|(ours, _)| ours.clone())?;
        pending.asks.remove(&ours);
        Some(ours)
    }

    /// Relays the client's cancellation of a call on this path; `false` when it
    /// names no such call.
    pub async fn cancel(&self, shared: &Shared, mut message: Value) -> bool {
        let Some(request_id) = message.pointer_mut("/params/requestId") else {
            return false;
        };
        // Removed: a second cancellation of the call goes nowhere.
        let Some((ours, cancelled)) = lock(&self.pending).calls.remove(&request_id.to_string())
        else {
            return false;
        };
        *request_id = Value::String(ours);
        self.notify(shared, message).await;
        // The client expects no answer now; the call's stream ends at once.
        cancelled.cancel();
        true
    }

    /// Sends a `tools/call` (the client's whole JSON-RPC request) upstream and reads
    /// its answer; `None` when the upstream session is not open yet, or no longer
    /// (the relay then has the call).
    pub async fn call(self: &Arc<Self>, shared: &Arc<Shared>, request: CallText) -> Option<Answer> {
        let seen = lock(&self.seen).clone()?;
        let client_id_text = request.body.slice(request.id.clone());
        let client_id = request.id_value.clone();
        let client_key = client_id.to_string();
        let ours = self.next_id();
        let body = request.with_id(&ours)?;
        let client_token = match &request.token {
            Some(token) => {
                Some(serde_json::from_slice::<Value>(&request.body[token.clone()]).ok()?)
            }
            None => None,
        };
        let cancelled = CancellationToken::new();
        {
            // A client reusing the id of a call in flight (which it must not) goes
            // through the relay, so each id here names one call.
            let mut pending = lock(&self.pending);
            if pending.calls.contains_key(&client_key) {
                return None;
            }
            pending
                .calls
                .insert(client_key.clone(), (ours.clone(), cancelled.clone()));
        }
        let call = InFlight {
            cancelled,
            seen: seen.clone(),
            leg: self.clone(),
            shared: shared.clone(),
            client_id,
            client_id_text,
            client_key,
            ours,
            client_token,
            progress: f64::MIN,
            finished: false,
            timed_out: false,
            last_event: None,
            retry: None,
            resumes: 0,
        };
        call.start(body).await
    }
}

/// A `tools/call` the direct path may send: the client's text, and where in it its
/// id and progress token stand (the two values that change on the way up).
pub struct CallText {
    body: Bytes,
    /// The id, as read once to check it is a string or an integer.
    id_value: Value,
    id: std::ops::Range<usize>,
    token: Option<std::ops::Range<usize>>,
}

impl CallText {
    /// The call in `body`, whose top-level members are `message` and whose id is a
    /// string or an integer (as rmcp reads ids), and the tool it names. `None` for
    /// what the direct path leaves to the relay: per-request metadata (2026-07-28),
    /// answers to input requests, or anything it cannot read as text.
    pub fn read(body: &Bytes, message: &Members<'_>) -> Option<(CallText, String)> {
        let id = message.get("id")?;
        let id_value: Value = serde_json::from_str(id.get()).ok()?;
        if !(id_value.is_string() || id_value.is_i64() || id_value.is_u64()) {
            return None;
        }
        let params = Members::of(message.get("params")?)?;
        let name = plain_str(params.get("name"))??;
        // Also in another case: an upstream that matches names as Go does would read
        // `_META` as metadata, or `INPUTRESPONSES` as answers, that this path passed
        // over.
        let relayed = ["inputResponses", "requestState", "_meta"];
        if params.contains("inputResponses")
            || params.contains("requestState")
            || relayed.iter().any(|name| params.loosely(name))
        {
            return None;
        }
        let meta = match params.get("_meta") {
            // An object it cannot read as text (a name twice, or with escapes) could
            // hide metadata or a progress token from it: the relay's.
            Some(meta) if meta.get().starts_with('{') => Some(Members::of(meta)?),
            // Anything else is no metadata, as rmcp reads it.
            _ => None,
        };
        let meta = meta.as_ref();
        const PER_REQUEST: &str = "io.modelcontextprotocol/";
        let per_request = |k: &str| {
            k.get(..PER_REQUEST.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(PER_REQUEST))
        };
        if meta.is_some_and(|m| m.names().any(per_request) || m.loosely("progressToken")) {
            return None;
        }
        let token = match meta.and_then(|m| m.get("progressToken")) {
            Some(token) => Some(text::span(body, token)?),
            None => None,
        };
        let id = text::span(body, id)?;
        let call = CallText {
            body: body.clone(),
            id_value,
            id,
            token,
        };
        Some((call, name.to_owned()))
    }

    /// The call's text with `ours` (an id without escapes) as its id and progress
    /// token.
    pub(crate) fn with_id(&self, ours: &str) -> Option<Vec<u8>> {
        let ours = format!("\"{ours}\"");
        let mut replacements = vec![(self.id.clone(), ours.as_bytes())];
        if let Some(token) = &self.token {
            replacements.push((token.clone(), ours.as_bytes()));
        }
        // The id may come after `params` in the text.
        replacements.sort_by_key(|(span, _)| span.start);
        text::splice(&self.body, &replacements)
    }
}

/// The answer to a call on the direct path.
pub enum Answer {
    /// One JSON-RPC message, the whole answer (with the client's id), and whether it
    /// is an error (JSON-RPC or the tool's own).
    Json { body: Vec<u8>, error: bool },
    /// Messages to stream to the client as SSE, each one serialised JSON-RPC message
    /// (or `None` for a keep-alive comment); the last is the call's answer.
    Stream(BoxStream<'static, Option<Vec<u8>>>),
}

/// A call on the direct path, from its request to its answer. Dropped before its
/// answer (the client went away), it cancels the call upstream.
struct InFlight {
    leg: Arc<Leg>,
    /// The upstream session the call was sent in: its stream is taken up again in
    /// it, and it is cancelled in it, whichever session the leg has opened since.
    seen: Arc<Seen>,
    shared: Arc<Shared>,
    client_id: Value,
    /// The client's id as it wrote it, for its answer.
    client_id_text: Bytes,
    client_key: String,
    ours: String,
    client_token: Option<Value>,
    /// The last progress relayed.
    progress: f64,
    cancelled: CancellationToken,
    finished: bool,
    /// The call ran out of time: the client has its error, and the upstream is told
    /// to stop (as rmcp's client does on a timeout), so that what a session may have
    /// in flight upstream stays bounded.
    timed_out: bool,
    /// The last SSE event id of the call's stream, the wait the upstream asked for
    /// before taking it up again, and how often it was taken up (see
    /// [`InFlight::resume`]).
    last_event: Option<String>,
    retry: Option<Duration>,
    resumes: u8,
}

/// What came of taking up a call's stream again.
enum Resumed {
    Events(Events),
    Cancelled,
    TimedOut,
    No,
}

/// `messages`, with a keep-alive (`vec![None]`) whenever none has come for
/// [`KEEP_ALIVE`]; the pending message is kept while the keep-alive goes out.
struct KeepAlive {
    messages: BoxStream<'static, Vec<Option<Vec<u8>>>>,
    quiet: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl futures::Stream for KeepAlive {
    type Item = Vec<Option<Vec<u8>>>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if let Poll::Ready(next) = self.messages.poll_next_unpin(cx) {
            self.quiet.as_mut().reset(Instant::now() + KEEP_ALIVE);
            return Poll::Ready(next);
        }
        if self.quiet.as_mut().poll(cx).is_ready() {
            self.quiet.as_mut().reset(Instant::now() + KEEP_ALIVE);
            return Poll::Ready(Some(vec![None]));
        }
        Poll::Pending
    }
}

/// One message from the upstream, as the client gets it.
enum Relayed {
    /// The call's answer, and whether it is an error.
    Answer(Vec<u8>, bool),
    /// Something to relay before the answer; `true` when it is the call's progress
    /// (which extends the call's timeout, as on the relay).
    Message(Vec<u8>, bool),
    Nothing,
}

type Events = BoxStream<'static, Result<Sse, SseError>>;

impl InFlight {
    fn error(&mut self, error: rmcp::ErrorData) -> Vec<u8> {
        self.finished = true;
        serde_json::to_vec(&json!({ "jsonrpc": "2.0", "id": self.client_id, "error": error }))
            .unwrap_or_default()
    }

    /// The error for a call that ran out of `timeout`; dropped, it cancels the call
    /// upstream.
    fn timed_out(&mut self, timeout: Duration) -> Vec<u8> {
        self.timed_out = true;
        let error = self.shared.timeout_error(timeout);
        self.error(error)
    }

    /// Sends the call and reads its answer; `None` when the upstream no longer knows
    /// the session (404: it restarted, or reaped it), and the relay is to take the
    /// call: rmcp's client opens a new upstream session and sends it again, as it
    /// would have, where failing it would fail a call the upstream never ran.
    async fn start(mut self, body: Vec<u8>) -> Option<Answer> {
        let timeout = self.shared.config.timeout;
        let sent = tokio::select! {
            sent = tokio::time::timeout(timeout, self.leg.sender.send(&self.seen, body)) => sent,
            () = self.cancelled.cancelled() => {
                self.finished = true;
                return Some(Answer::nothing());
            }
        };
        let response = match sent {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                tracing::warn!(upstream = %self.shared.config.name, error = %self.shared.cut(&e), "the upstream cannot be reached");
                self.shared.unreachable("it could not be reached");
                let error = self.shared.closed_error();
                return Some(Answer::json(self.error(error), true));
            }
            Err(_) => return Some(Answer::json(self.timed_out(timeout), true)),
        };
        let mut response = response;
        let (status, content_type) = (response.status, std::mem::take(&mut response.content_type));
        if status == http::StatusCode::NOT_FOUND {
            // Later calls go through the relay too, until rmcp's client has sent a
            // message in the new session (unless it has already).
            let mut seen = lock(&self.leg.seen);
            if seen
                .as_ref()
                .is_some_and(|s| s.session == self.seen.session)
            {
                *seen = None;
            }
            drop(seen);
            self.finished = true;
            return None;
        }
        if content_type == "text/event-stream" && status.is_success() {
            let events = SseStream::from_bytes_stream(bounded(response.body)).boxed();
            return Some(self.stream(events).await);
        }
        // A JSON answer, or an error with (perhaps) a JSON-RPC error in its body.
        let body = tokio::select! {
            body = tokio::time::timeout(timeout, read_bounded(response)) => {
                match body {
                    Ok(body) => body,
                    Err(_) => return Some(Answer::json(self.timed_out(timeout), true)),
                }
            }
            () = self.cancelled.cancelled() => {
                self.finished = true;
                return Some(Answer::nothing());
            }
        };
        let relayed = match body {
            Ok(body) if content_type == "application/json" => self.relay_text(&body),
            _ => Relayed::Nothing,
        };
        Some(match relayed {
            Relayed::Answer(body, error) => {
                self.finished = true;
                self.shared.answered();
                Answer::json(body, error)
            }
            _ => {
                let error = self
                    .shared
                    .failed_error(&format!("it answered HTTP {status}"));
                Answer::json(self.error(error), true)
            }
        })
    }

    /// Reads an SSE answer up to its first message: the answer itself goes to the
    /// client as plain JSON (as rmcp's server answers when nothing comes first);
    /// anything else starts a stream.
    async fn stream(mut self, mut events: Events) -> Answer {
        let timeout = self.shared.config.timeout;
        let (started, mut deadline) = (Instant::now(), Instant::now() + timeout);
        let limit = started + timeout * 10;
        loop {
            match self.next(&mut events, deadline.min(limit)).await {
                Next::Relayed(Relayed::Answer(body, error)) => {
                    self.finished = true;
                    self.shared.answered();
                    drain(&self.leg, events);
                    return Answer::json(body, error);
                }
                Next::Relayed(Relayed::Message(body, extends)) => {
                    if extends {
                        deadline = Instant::now() + timeout;
                    }
                    let first = futures::stream::once(async move { Some(body) });
                    let rest = self.rest(events, deadline, limit);
                    return Answer::Stream(first.chain(rest).boxed());
                }
                Next::Relayed(Relayed::Nothing) => {}
                Next::Failed(body) => return Answer::json(body, true),
                // An answer without messages: the client expects none.
                Next::Cancelled => return Answer::nothing(),
            }
        }
    }

    /// The rest of a streamed answer, until the call's answer (or an error in its
    /// place), with keep-alive comments while nothing comes.
    fn rest(
        self,
        events: Events,
        deadline: Instant,
        limit: Instant,
    ) -> impl futures::Stream<Item = Option<Vec<u8>>> + Send + 'static {
        let timeout = self.shared.config.timeout;
        let messages = futures::stream::unfold(
            (self, events, deadline),
            move |(mut call, mut events, mut deadline)| async move {
                if call.finished {
                    return None;
                }
                loop {
                    match call.next(&mut events, deadline.min(limit)).await {
                        Next::Relayed(Relayed::Answer(body, _)) => {
                            call.finished = true;
                            call.shared.answered();
                            drain(
                                &call.leg,
                                std::mem::replace(&mut events, futures::stream::empty().boxed()),
                            );
                            let mut last = call.given_up();
                            last.push(Some(body));
                            return Some((last, (call, events, deadline)));
                        }
                        Next::Relayed(Relayed::Message(body, extends)) => {
                            if extends {
                                deadline = Instant::now() + timeout;
                            }
                            return Some((vec![Some(body)], (call, events, deadline)));
                        }
                        Next::Relayed(Relayed::Nothing) => {}
                        Next::Failed(body) => {
                            let mut last = call.given_up();
                            last.push(Some(body));
                            return Some((last, (call, events, deadline)));
                        }
                        // The client's form for a request of this call is moot too.
                        Next::Cancelled => {
                            let last = call.given_up();
                            return (!last.is_empty()).then_some((last, (call, events, deadline)));
                        }
                    }
                }
            },
        );
        // The keep-alive does not interrupt the wait for the next message, which
        // may be in the middle of taking the stream up again.
        KeepAlive {
            messages: messages.boxed(),
            quiet: Box::pin(tokio::time::sleep(KEEP_ALIVE)),
        }
        .flat_map(futures::stream::iter)
    }

    /// Cancellations, for the client, of the upstream's requests this call relayed
    /// that are still open: the call has ended, and their answers would go nowhere
    /// (an upstream may have given them up on a stream of its own, as rmcp's server
    /// does, or answered without waiting for them).
    fn given_up(&self) -> Vec<Option<Vec<u8>>> {
        let open: Vec<String> = {
            let mut pending = lock(&self.leg.pending);
            let open: Vec<String> = pending
                .asks
                .iter()
                .filter(|(_, (call, _))| *call == self.ours)
                .map(|(ours, _)| ours.clone())
                .collect();
            for ours in &open {
                pending.asks.remove(ours);
            }
            open
        };
        open.into_iter()
            .map(|ours| {
                let cancelled = json!({
                    "jsonrpc": "2.0",
                    "method": "notifications/cancelled",
                    "params": {"requestId": ours, "reason": "the call it belonged to has ended"},
                });
                Some(serde_json::to_vec(&cancelled).unwrap_or_default())
            })
            .collect()
    }

    /// The next message of an SSE answer, or the error that ends it.
    async fn next(&mut self, events: &mut Events, deadline: Instant) -> Next {
        let next = tokio::select! {
            next = tokio::time::timeout_at(deadline, events.next()) => next,
            () = self.cancelled.cancelled() => {
                self.finished = true;
                return Next::Cancelled;
            }
        };
        match next {
            Ok(Some(Ok(event))) => {
                if let Some(id) = event.id {
                    self.last_event = (!id.is_empty() && id.len() <= MAX_ID_BYTES).then_some(id);
                }
                if let Some(retry) = event.retry {
                    self.retry = Some(Duration::from_millis(retry).min(MAX_RETRY_WAIT));
                }
                let data = event.data.as_deref().unwrap_or("");
                let is_message = event.event.as_deref().is_none_or(|e| e == "message");
                if data.is_empty() || !is_message {
                    // A priming event (an id for resumption), or one of another kind.
                    return Next::Relayed(Relayed::Nothing);
                }
                // The stream moves on: it may be taken up again as often.
                self.resumes = 0;
                let answer = answer_text(data.as_bytes(), &self.ours, &self.client_id_text);
                if let Some((body, error)) = answer {
                    return Next::Relayed(Relayed::Answer(body, error));
                }
                match serde_json::from_str::<Value>(data) {
                    Ok(message) => Next::Relayed(self.relay(message)),
                    Err(e) => {
                        let error = self
                            .shared
                            .failed_error(&format!("it sent a message that is not JSON: {e}"));
                        Next::Failed(self.error(error))
                    }
                }
            }
            Ok(ended) => {
                match self.resume(deadline).await {
                    Resumed::Events(resumed) => {
                        *events = resumed;
                        return Next::Relayed(Relayed::Nothing);
                    }
                    Resumed::Cancelled => return Next::Cancelled,
                    Resumed::TimedOut => {
                        return Next::Failed(self.timed_out(self.shared.config.timeout))
                    }
                    Resumed::No => {}
                }
                match ended {
                    Some(Err(e)) => {
                        tracing::warn!(upstream = %self.shared.config.name, error = %e, "the upstream's answer broke off");
                        self.shared.unreachable("its answer broke off");
                    }
                    _ => self
                        .shared
                        .unreachable("it closed the stream before answering"),
                }
                let error = self.shared.closed_error();
                Next::Failed(self.error(error))
            }
            Err(_) => Next::Failed(self.timed_out(self.shared.config.timeout)),
        }
    }

    /// The call's stream from after its last event, when the upstream ended it
    /// before the answer: since 2025-11-25 a server may close a request's stream
    /// once it has sent an event id, and keeps what follows for a GET with
    /// `Last-Event-ID` (after the `retry` it asked for). At most [`MAX_RESUMES`]
    /// times per call, and only while the call has time left; an upstream that
    /// cannot be reached or does not resume ends the call as before.
    async fn resume(&mut self, deadline: Instant) -> Resumed {
        let Some(last_event) = self.last_event.clone() else {
            return Resumed::No;
        };
        if self.resumes >= MAX_RESUMES {
            return Resumed::No;
        }
        self.resumes += 1;
        let (leg, seen) = (self.leg.clone(), self.seen.clone());
        let first = self.retry.unwrap_or(RESUME_BACKOFF);
        let attempts = async move {
            // An upstream that is restarting may refuse the first tries, or fail
            // them from within. Event ids mean something only in their session.
            let mut wait = first;
            for _ in 0..RESUME_TRIES {
                tokio::time::sleep(wait).await;
                wait = RESUME_BACKOFF;
                match leg.sender.resume(&seen, &last_event).await {
                    Ok(reply)
                        if reply.status.is_success()
                            && reply.content_type == "text/event-stream" =>
                    {
                        return Some(reply);
                    }
                    Ok(reply) if !reply.status.is_server_error() => return None,
                    _ => {}
                }
            }
            None
        };
        let reply = tokio::select! {
            reply = tokio::time::timeout_at(deadline, attempts) => reply,
            () = self.cancelled.cancelled() => {
                self.finished = true;
                return Resumed::Cancelled;
            }
        };
        match reply {
            Ok(Some(reply)) => {
                Resumed::Events(SseStream::from_bytes_stream(bounded(reply.body)).boxed())
            }
            Ok(None) => Resumed::No,
            Err(_) => Resumed::TimedOut,
        }
    }

    /// One message from the upstream, as text, with the client's ids put back.
    fn relay_text(&mut self, message: &[u8]) -> Relayed {
        if let Some((body, error)) = answer_text(message, &self.ours, &self.client_id_text) {
            return Relayed::Answer(body, error);
        }
        match serde_json::from_slice::<Value>(message) {
            Ok(message) => self.relay(message),
            Err(_) => Relayed::Nothing,
        }
    }

    /// One message from the upstream, with the client's ids put back.
    fn relay(&mut self, mut message: Value) -> Relayed {
        let Some(object) = message.as_object_mut() else {
            return Relayed::Nothing;
        };
        let method = object
            .get("method")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let encode = |message: &Value| serde_json::to_vec(message).unwrap_or_default();
        match (object.contains_key("id"), method.as_deref()) {
            // The answer: to this call, or to nothing of ours.
            (true, None) => {
                if object.get("id").and_then(Value::as_str) != Some(self.ours.as_str()) {
                    return Relayed::Nothing;
                }
                object.insert("id".into(), self.client_id.clone());
                let error = object.contains_key("error")
                    || object
                        .get("result")
                        .and_then(|r| r.get("isError"))
                        .and_then(Value::as_bool)
                        == Some(true);
                Relayed::Answer(encode(&message), error)
            }
            // The upstream checking on us: answered here, as the relay does; one at a
            // time, so that an upstream streaming pings cannot make Gatehouse send (and
            // open connections for) as many answers as it can write pings.
            (true, Some("ping")) => {
                if self.leg.pinging.swap(true, Ordering::AcqRel) {
                    return Relayed::Nothing;
                }
                let answer = json!({ "jsonrpc": "2.0", "id": object.get("id"), "result": {} });
                let (leg, shared) = (self.leg.clone(), self.shared.clone());
                tokio::spawn(async move {
                    leg.notify(&shared, answer).await;
                    leg.pinging.store(false, Ordering::Release);
                });
                Relayed::Nothing
            }
            // A request of the upstream's (sampling, elicitation, roots): under an id of
            // ours, so the client's answer finds its way back; without the upstream's
            // progress token, which means nothing to the client.
            (true, Some(_)) => {
                if let Some(meta) = object
                    .get_mut("params")
                    .and_then(|p| p.get_mut("_meta"))
                    .and_then(Value::as_object_mut)
                {
                    meta.remove("progressToken");
                }
                // At most MAX_ASKS open per call, each under an id of a sane size: the
                // rest go unanswered, as from a client that does not answer.
                let upstream_id_fits = object.get("id").is_some_and(|id| {
                    id.is_i64()
                        || id.is_u64()
                        || id.as_str().is_some_and(|s| s.len() <= MAX_ID_BYTES)
                });
                let mut pending = lock(&self.leg.pending);
                let open = pending
                    .asks
                    .values()
                    .filter(|(call, _)| *call == self.ours)
                    .count();
                if !upstream_id_fits || open >= MAX_ASKS {
                    drop(pending);
                    tracing::warn!(upstream = %self.shared.config.name, "dropped a request of the upstream's: too many open in one call, or an odd id");
                    return Relayed::Nothing;
                }
                let ours = self.leg.next_id();
                let upstream_id = object.insert("id".into(), Value::String(ours.clone()));
                if let Some(upstream_id) = upstream_id {
                    pending.asks.insert(ours, (self.ours.clone(), upstream_id));
                }
                drop(pending);
                Relayed::Message(encode(&message), true)
            }
            (false, Some("notifications/progress")) => {
                // Progress must increase; anything else is dropped, as on the relay.
                let progress = message
                    .pointer("/params/progress")
                    .and_then(Value::as_f64)
                    .filter(|p| *p > self.progress);
                let token = message.pointer_mut("/params/progressToken");
                match (token, &self.client_token, progress) {
                    (Some(token), Some(client_token), Some(progress))
                        if token.as_str() == Some(&self.ours) =>
                    {
                        *token = client_token.clone();
                        self.progress = progress;
                        Relayed::Message(encode(&message), true)
                    }
                    _ => Relayed::Nothing,
                }
            }
            // The upstream giving up a request of its own to the client on this stream
            // (the TypeScript SDK does when its wait times out): relayed under the id
            // the client knows, so that it closes, say, an elicitation form (one it
            // gives up elsewhere is at the call's end: `given_up`). Anything else it
            // might name is ours (this call), which the client cannot cancel twice.
            (false, Some("notifications/cancelled")) => {
                let given_up = message
                    .pointer("/params/requestId")
                    .and_then(|id| self.leg.ask_given_up(id, &self.ours));
                let Some(ours) = given_up else {
                    return Relayed::Nothing;
                };
                message["params"]["requestId"] = Value::String(ours);
                Relayed::Message(encode(&message), false)
            }
            (false, Some(method)) => {
                if method == "notifications/tools/list_changed" {
                    self.shared.policy.mark_stale();
                }
                Relayed::Message(encode(&message), false)
            }
            (false, None) => Relayed::Nothing,
        }
    }
}

/// The answer to the call `ours` with `client_id` (its text) in place of ours, and
/// whether it is an error (a JSON-RPC error, or a result with `isError: true`), when
/// `message` is that answer and can be read as text; else `None`, and
/// [`InFlight::relay`] reads it as a tree.
pub(crate) fn answer_text(message: &[u8], ours: &str, client_id: &[u8]) -> Option<(Vec<u8>, bool)> {
    #[derive(serde::Deserialize)]
    struct Outcome {
        #[serde(rename = "isError", default)]
        is_error: Option<bool>,
    }
    let members = Members::parse(message)?;
    if members.contains("method") {
        return None;
    }
    let id = members.get("id")?;
    if plain_str(Some(id))? != Some(ours) {
        return None;
    }
    let error = match (members.get("error"), members.get("result")) {
        (Some(_), _) => true,
        (None, Some(result)) => {
            // A large result is scanned once more only if it may say `isError` (a
            // name may be written with escapes).
            let text = result.get();
            let may_say = text.contains("isError") || text.contains('\\');
            may_say && serde_json::from_str::<Outcome>(text).ok()?.is_error == Some(true)
        }
        (None, None) => return None,
    };
    let id = text::span(message, id)?;
    let body = text::splice(message, &[(id, client_id)])?;
    Some((body, error))
}

enum Next {
    Relayed(Relayed),
    /// The client cancelled the call: it expects no answer.
    Cancelled,
    /// An error in place of the answer, which ends the call.
    Failed(Vec<u8>),
}

impl Answer {
    /// No answer: the call was cancelled, and the client expects none.
    fn nothing() -> Self {
        Answer::Stream(futures::stream::empty().boxed())
    }

    fn json(body: Vec<u8>, error: bool) -> Self {
        Answer::Json { body, error }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        {
            let mut pending = lock(&self.leg.pending);
            if pending
                .calls
                .get(&self.client_key)
                .is_some_and(|(ours, _)| *ours == self.ours)
            {
                pending.calls.remove(&self.client_key);
            }
            pending.asks.retain(|_, (call, _)| *call != self.ours);
        }
        if self.finished && !self.timed_out {
            return;
        }
        // The client went away before the answer, or the call ran out of time: tell
        // the upstream, as the relay does.
        let reason = if self.timed_out {
            "timed out"
        } else {
            "cancelled by the client"
        };
        let (leg, shared, ours) = (self.leg.clone(), self.shared.clone(), self.ours.clone());
        let seen = self.seen.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let cancelled = json!({
                    "jsonrpc": "2.0",
                    "method": "notifications/cancelled",
                    "params": { "requestId": ours, "reason": reason },
                });
                leg.notify_in(&shared, &seen, cancelled).await;
            });
        }
    }
}

/// Reads what is left of an answered SSE response, so that its connection goes back
/// to the pool: dropped before its end, it would be closed, and the next call would
/// open another. The end has usually arrived with the answer. Else, on an `http://`
/// upstream, the connection waits in its pool (`super::plain`) until its end is
/// read; through reqwest, a task waits for it, for [`DRAIN`] at most and [`DRAINS`]
/// at once per upstream session, so that an upstream that keeps its streams open
/// cannot make a client's calls pile up connections (past that, the response is
/// dropped and its connection closed).
fn drain(leg: &Leg, mut events: Events) {
    if let Some(None) = events.next().now_or_never() {
        return;
    }
    if let Sender::Plain(_) = leg.sender {
        // Its pool reads the rest off when it next needs a connection.
        return;
    }
    let Ok(permit) = leg.drains.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let rest = async { while events.next().await.is_some() {} };
        let _ = tokio::time::timeout(DRAIN, rest).await;
        drop(permit);
    });
}

/// An upstream's body, cut off once a run of bytes without a blank line (an SSE event
/// boundary) grows past [`MAX_MESSAGE_BYTES`].
fn bounded(
    body: impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    bounded_by(body, MAX_MESSAGE_BYTES)
}

fn bounded_by(
    body: impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    max: usize,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    // The bytes since the last boundary, and the chunk's last byte: a boundary may
    // fall between two chunks (an upstream that writes an event's final newline on
    // its own).
    body.scan((0usize, 0u8), move |(run, last), chunk| {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => return futures::future::ready(Some(Err(e))),
        };
        let is_boundary = |a: u8, b: u8| matches!((a, b), (b'\n', b'\n' | b'\r') | (b'\r', b'\r'));
        // Where a boundary ends: the index of its second byte. The first one matters
        // only when the event running into this chunk may be too long.
        let across = chunk.first().is_some_and(|&b| is_boundary(*last, b));
        let within = |w: &[u8]| is_boundary(w[0], w[1]);
        let last_end = chunk
            .windows(2)
            .rposition(within)
            .map(|at| at + 1)
            .or_else(|| across.then_some(0));
        match last_end {
            Some(end) => {
                let first = match (*run + chunk.len() > max, across) {
                    (false, _) => 0,
                    (true, true) => 0,
                    (true, false) => chunk.windows(2).position(within).map_or(end, |at| at + 1),
                };
                // The event that was running ends in this chunk: it too must fit.
                *run = if *run + first > max {
                    *run + first
                } else {
                    chunk.len() - end
                };
            }
            None => *run += chunk.len(),
        }
        if let Some(&b) = chunk.last() {
            *last = b;
        }
        if *run > max {
            return futures::future::ready(Some(Err(std::io::Error::other(
                "an event is larger than the limit",
            ))));
        }
        futures::future::ready(Some(Ok(chunk)))
    })
}

/// A whole (JSON) body, at most [`MAX_MESSAGE_BYTES`].
async fn read_bounded(reply: Reply) -> Result<Vec<u8>, ()> {
    if reply.length.is_some_and(|n| n > MAX_MESSAGE_BYTES as u64) {
        return Err(());
    }
    // What arrives, not what the upstream claims, decides how much is held.
    let mut body = Vec::with_capacity(reply.length.map_or(0, |n| n.min(64 * 1024) as usize));
    let mut chunks = reply.body;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|_| ())?;
        if body.len() + chunk.len() > MAX_MESSAGE_BYTES {
            return Err(());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// rmcp's HTTP client for an upstream, unchanged, except that it remembers the
/// session it opened: the direct path sends in that session too.
#[derive(Clone)]
pub struct Recorder {
    leg: Arc<Leg>,
}

impl Recorder {
    pub fn new(leg: Arc<Leg>) -> Self {
        Recorder { leg }
    }
}

/// reqwest's errors name the URL, query and all, and rmcp's carry them into the
/// JSON-RPC error a client gets, the log and the public `/healthz`; an upstream's URL
/// may hold a key in its query. Taken out here, as the direct path does.
fn without_url<T>(
    result: Result<T, StreamableHttpError<reqwest013::Error>>,
) -> Result<T, StreamableHttpError<reqwest013::Error>> {
    result.map_err(|e| match e {
        StreamableHttpError::Client(e) => StreamableHttpError::Client(e.without_url()),
        e => e,
    })
}

type PostResult = Result<StreamableHttpPostResponse, StreamableHttpError<reqwest013::Error>>;
type StreamResult = Result<Events, StreamableHttpError<reqwest013::Error>>;

impl StreamableHttpClient for Recorder {
    type Error = reqwest013::Error;

    fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> impl Future<Output = PostResult> + Send + '_ {
        self.leg.record(&uri, session_id.as_ref(), &custom_headers);
        self.leg
            .client
            .post_message(uri, message, session_id, auth_header, custom_headers)
            .map(without_url)
    }

    fn post_message_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> impl Future<Output = PostResult> + Send + '_ {
        self.leg.record(&uri, session_id.as_ref(), &custom_headers);
        self.leg
            .client
            .post_message_with_max_sse_event_size(
                uri,
                message,
                session_id,
                auth_header,
                custom_headers,
                max_sse_event_size,
            )
            .map(without_url)
    }

    fn post_message_with_response_limits(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        limits: StreamableHttpResponseLimits,
    ) -> impl Future<Output = PostResult> + Send + '_ {
        self.leg.record(&uri, session_id.as_ref(), &custom_headers);
        self.leg
            .client
            .post_message_with_response_limits(
                uri,
                message,
                session_id,
                auth_header,
                custom_headers,
                limits,
            )
            .map(without_url)
    }

    fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> impl Future<Output = Result<(), StreamableHttpError<reqwest013::Error>>> + Send + '_ {
        *lock(&self.leg.seen) = None;
        self.leg
            .client
            .delete_session(uri, session_id, auth_header, custom_headers)
            .map(without_url)
    }

    fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> impl Future<Output = StreamResult> + Send + '_ {
        self.leg
            .client
            .get_stream(uri, session_id, last_event_id, auth_header, custom_headers)
            .map(without_url)
    }

    fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> impl Future<Output = StreamResult> + Send + '_ {
        self.leg
            .client
            .get_stream_with_max_sse_event_size(
                uri,
                session_id,
                last_event_id,
                auth_header,
                custom_headers,
                max_sse_event_size,
            )
            .map(without_url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many chunks of `chunks` pass [`bounded_by`] with a limit of 10 bytes.
    fn passed(chunks: &[&'static [u8]]) -> usize {
        let body = futures::stream::iter(
            chunks
                .iter()
                .map(|c| Ok::<_, std::io::Error>(Bytes::from_static(c)))
                .collect::<Vec<_>>(),
        );
        let results: Vec<_> = futures::executor::block_on(bounded_by(body, 10).collect());
        results.iter().take_while(|r| r.is_ok()).count()
    }

    #[test]
    fn an_event_longer_than_the_limit_is_cut_off_wherever_its_boundaries_fall() {
        // Events of 8 bytes: within the limit, in one chunk or with the final newline
        // in a chunk of its own, however many follow one another.
        assert_eq!(passed(&[&b"data: 1\n\n"[..]; 6]), 6);
        assert_eq!(
            passed(&[
                b"data: 1\n",
                b"\n",
                b"data: 2\n",
                b"\n",
                b"data: 3\n",
                b"\n"
            ]),
            6
        );
        assert_eq!(
            passed(&[b"data: 1\r", b"\rdata: 2\r\n", b"\r\n", b"data: 3\n\n"]),
            4
        );
        // One event of 12 bytes, in pieces: cut at the piece that passes the limit.
        assert_eq!(passed(&[b"data: ", b"123", b"456\n\n"]), 2);
        // Bytes after the last boundary count towards the next event.
        assert_eq!(passed(&[b"data: 1\n\ndata: 2", b"3456"]), 1);
    }

    #[test]
    fn a_call_goes_up_as_written_with_only_its_id_and_progress_token_ours() {
        // The id after `params`, a vendor member, members in no particular order.
        let body = Bytes::from_static(
            br#"{"params":{"_meta":{"progressToken":"p-1"},"name":"echo","arguments":{"s":"\u00e9"}},"id":7,"jsonrpc":"2.0","method":"tools/call","x-vendor":{"k":[1]}}"#,
        );
        let members = Members::parse(&body).expect("members");
        let (call, tool) = CallText::read(&body, &members).expect("a call");
        assert_eq!(tool, "echo");
        assert_eq!(
            call.with_id("gatehouse-3").expect("spliced"),
            br#"{"params":{"_meta":{"progressToken":"gatehouse-3"},"name":"echo","arguments":{"s":"\u00e9"}},"id":"gatehouse-3","jsonrpc":"2.0","method":"tools/call","x-vendor":{"k":[1]}}"#
        );

        // What the relay reads instead: per-request metadata, an id that is neither a
        // string nor an integer, a tool name written with escapes.
        for refused in [
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","_meta":{"io.modelcontextprotocol/x":1}}}"#.as_slice(),
            br#"{"jsonrpc":"2.0","id":1.5,"method":"tools/call","params":{"name":"a"}}"#,
            br#"{"jsonrpc":"2.0","id":null,"method":"tools/call","params":{"name":"a"}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\u0061"}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","inputResponses":{}}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","_meta":{"progressToken":1,"progressToken":2}}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","_meta":{"io.modelcontextprotocol\/x":1}}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}"#,
            // Names a case-blind parser reads as the ones this path looks for.
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","_META":{"io.modelcontextprotocol/x":1}}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","_meta":{"IO.modelcontextprotocol/x":1}}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","_meta":{"PROGRESSTOKEN":"t"}}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","InputResponses":{}}}"#,
            // A name outside ASCII, which Go folds (`ſ` is `s`) into `params`.
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"a\"},\"param\u{17f}\":{\"name\":\"b\"}}".as_bytes(),
        ] {
            let body = Bytes::copy_from_slice(refused);
            let read = Members::parse(&body).and_then(|m| CallText::read(&body, &m));
            assert!(read.is_none(), "{}", String::from_utf8_lossy(refused));
        }
    }

    #[test]
    fn an_answer_comes_back_as_written_with_the_clients_id() {
        let ours = "gatehouse-3";
        let (body, error) = answer_text(
            br#"{"jsonrpc":"2.0","result":{"content":[],"isError":true,"x":{}},"id":"gatehouse-3"}"#,
            ours,
            br#""c-1""#,
        )
        .expect("the answer");
        assert_eq!(
            body,
            br#"{"jsonrpc":"2.0","result":{"content":[],"isError":true,"x":{}},"id":"c-1"}"#
        );
        assert!(error);
        let ok = br#"{"jsonrpc":"2.0","id":"gatehouse-3","result":{"content":[]}}"#;
        assert_eq!(answer_text(ok, ours, b"7").map(|(_, e)| e), Some(false));
        let failed = br#"{"jsonrpc":"2.0","id":"gatehouse-3","error":{"code":-1,"message":"x"}}"#;
        assert_eq!(answer_text(failed, ours, b"7").map(|(_, e)| e), Some(true));
        // Not this call's answer, or not an answer: read as a tree instead.
        let other = br#"{"jsonrpc":"2.0","id":"gatehouse-4","result":{}}"#;
        assert!(answer_text(other, ours, b"7").is_none());
        let request = br#"{"jsonrpc":"2.0","id":"gatehouse-3","method":"ping"}"#;
        assert!(answer_text(request, ours, b"7").is_none());
        let odd = br#"{"jsonrpc":"2.0","id":"gatehouse-3","result":{"isError":"yes"}}"#;
        assert!(answer_text(odd, ours, b"7").is_none());
        let escaped = br#"{"jsonrpc":"2.0","id":"gatehouse-3","result":{"is\u0045rror":true}}"#;
        assert_eq!(answer_text(escaped, ours, b"7").map(|(_, e)| e), Some(true));
    }

    #[tokio::test]
    async fn an_event_larger_than_the_limit_ends_the_body() {
        let big = Bytes::from(vec![b'a'; MAX_MESSAGE_BYTES / 2 + 1]);
        let chunks = vec![Ok(big.clone()), Ok(big)];
        let read: Vec<_> = bounded(futures::stream::iter(chunks)).collect().await;
        assert!(read[0].is_ok());
        assert!(read[1].is_err());

        let half = Bytes::from(vec![b'a'; MAX_MESSAGE_BYTES / 2 + 1]);
        let mut with_boundary = half.to_vec();
        with_boundary.extend_from_slice(b"\n\ndata: x");
        let chunks = vec![Ok(Bytes::from(with_boundary)), Ok(half)];
        let read: Vec<_> = bounded(futures::stream::iter(chunks)).collect().await;
        assert!(
            read.iter().all(Result::is_ok),
            "a blank line starts a new event"
        );
    }
}

/// The direct path's text handling against what a parser reads in the same text, on
/// messages near the ones it takes: members in any order, line breaks, names written
/// with escapes, in another case or twice (`crate::fuzzing` holds the checks, which
/// the `gateway_text` fuzz target runs on any bytes).
#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;
    use crate::{
        fuzzing,
        strategies::{json, tricky_text},
    };

    /// An object's text from members already written, in the order given, compact
    /// or with line breaks.
    fn object(members: Vec<(String, String)>, broken: bool) -> String {
        let separator = if broken { ",\r\n  " } else { "," };
        let members: Vec<String> = members
            .into_iter()
            .map(|(name, value)| format!("{}:{value}", Value::from(name)))
            .collect();
        format!("{{{}}}", members.join(separator))
    }

    fn text(value: &Value) -> String {
        value.to_string()
    }

    /// Changes to a message's text that parsers may read differently: the first
    /// `"name"` written with an escape, in capitals, or after a member of the same
    /// name (or the same in capitals, or with the letters Go folds into `s` and `k`).
    fn mutated(message: String, names: &'static [&'static str]) -> impl Strategy<Value = String> {
        let change = (prop::sample::select(names), 0..5u8);
        prop::collection::vec(change, 0..3).prop_map(move |changes| {
            let mut message = message.clone();
            for (name, how) in changes {
                let quoted = format!("\"{name}\"");
                let Some(at) = message.find(&quoted) else {
                    continue;
                };
                let replacement = match how {
                    0 => format!("\"\\u{:04x}{}\"", name.as_bytes()[0], &name[1..]),
                    1 => format!("\"{}\"", name.to_uppercase()),
                    2 => format!("\"{name}\":\"other\",{quoted}"),
                    3 => {
                        let folded = name.replace('s', "\u{17f}").replace('k', "\u{212a}");
                        format!("\"{folded}\":\"other\",{quoted}")
                    }
                    _ => format!("\"{}\":\"other\",{quoted}", name.to_uppercase()),
                };
                message.replace_range(at..at + quoted.len(), &replacement);
            }
            message
        })
    }

    fn call() -> impl Strategy<Value = String> {
        let id = prop_oneof![
            4 => any::<i64>().prop_map(Value::from),
            4 => "[a-z0-9-]{0,12}".prop_map(Value::from),
            1 => Just(Value::from(1.5)),
            1 => Just(Value::Null),
        ];
        let tool = prop_oneof![
            3 => prop::sample::select(vec!["echo", "add", "delete"]).prop_map(str::to_owned),
            1 => tricky_text(),
        ];
        // Mostly what the direct path takes, so that most cases reach the checks.
        let rare = || prop::bool::weighted(0.15);
        let meta = prop::option::weighted(
            0.7,
            (
                prop::option::weighted(
                    0.8,
                    prop_oneof![
                        any::<i64>().prop_map(Value::from),
                        "[a-z0-9-]{0,8}".prop_map(Value::from),
                    ],
                ),
                rare(),
                rare(),
            ),
        );
        let arguments = json(&["name", "id", "_meta", "progressToken"]);
        let shape = (
            prop::bool::weighted(0.9),
            prop::bool::weighted(0.9),
            any::<bool>(),
            rare(),
        );
        (id, tool, meta, arguments, shape)
            .prop_flat_map(
                |(id, tool, meta, arguments, (rpc, method, broken, extra))| {
                    let mut params = vec![
                        ("name".to_owned(), text(&tool.into())),
                        ("arguments".to_owned(), text(&arguments)),
                    ];
                    if let Some((token, per_request, non_object)) = meta {
                        let mut members = Vec::new();
                        if let Some(token) = token {
                            members.push(("progressToken".to_owned(), text(&token)));
                        }
                        if per_request {
                            members.push(("io.modelcontextprotocol/x".to_owned(), "1".to_owned()));
                        }
                        let meta = if non_object {
                            "\"meta\"".to_owned()
                        } else {
                            object(members, broken)
                        };
                        params.push(("_meta".to_owned(), meta));
                    }
                    if extra {
                        params.push(("inputResponses".to_owned(), "{}".to_owned()));
                    }
                    let params = Just(params).prop_shuffle();
                    (params, Just((id, rpc, method, broken, extra)))
                },
            )
            .prop_flat_map(|(params, (id, rpc, method, broken, extra))| {
                let mut message = vec![
                    (
                        "jsonrpc".to_owned(),
                        if rpc { "\"2.0\"" } else { "\"1.0\"" }.to_owned(),
                    ),
                    ("id".to_owned(), text(&id)),
                    (
                        "method".to_owned(),
                        if method {
                            "\"tools/call\""
                        } else {
                            "\"tools/list\""
                        }
                        .to_owned(),
                    ),
                    ("params".to_owned(), object(params, broken)),
                ];
                if extra {
                    message.push(("x-vendor".to_owned(), "{\"k\":[1]}".to_owned()));
                }
                Just(message).prop_shuffle().prop_flat_map(move |message| {
                    mutated(
                        object(message, broken),
                        &[
                            "name",
                            "method",
                            "id",
                            "params",
                            "jsonrpc",
                            "_meta",
                            "progressToken",
                        ],
                    )
                })
            })
    }

    fn answer() -> impl Strategy<Value = String> {
        let id = prop_oneof![
            4 => Just(Value::from("gatehouse-9")),
            1 => Just(Value::from("gatehouse-1")),
            1 => Just(Value::from(9)),
        ];
        let is_error = prop::option::of(prop_oneof![
            any::<bool>().prop_map(Value::from),
            Just(Value::from("yes")),
            Just(Value::Null),
        ]);
        let content = json(&["isError", "id", "text"]);
        let shape = (0..3u8, any::<bool>(), any::<bool>());
        (id, is_error, content, shape).prop_flat_map(
            |(id, is_error, content, (kind, method, broken))| {
                let mut result = vec![("content".to_owned(), text(&content))];
                if let Some(is_error) = is_error {
                    result.push(("isError".to_owned(), text(&is_error)));
                }
                let mut message = vec![
                    ("jsonrpc".to_owned(), "\"2.0\"".to_owned()),
                    ("id".to_owned(), text(&id)),
                ];
                if kind != 1 {
                    message.push(("result".to_owned(), object(result, broken)));
                }
                if kind != 0 {
                    message.push((
                        "error".to_owned(),
                        r#"{"code":-32000,"message":"m"}"#.to_owned(),
                    ));
                }
                if method {
                    message.push(("method".to_owned(), "\"ping\"".to_owned()));
                }
                Just(message).prop_shuffle().prop_flat_map(move |message| {
                    mutated(
                        object(message, broken),
                        &["id", "isError", "result", "error", "method"],
                    )
                })
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn a_call_goes_up_as_every_parser_reads_it(body in call()) {
            fuzzing::check_direct_call(body.as_bytes());
        }

        #[test]
        fn an_answer_comes_back_as_the_upstream_wrote_it(
            message in answer(),
            client_id in prop_oneof![
                any::<i64>().prop_map(Value::from),
                tricky_text().prop_map(Value::from),
            ],
        ) {
            fuzzing::check_direct_answer(message.as_bytes(), &client_id);
            fuzzing::check_sse_frame(message.as_bytes());
        }

        /// A plain call and its plain answer, in any member order, with line breaks
        /// or without, take the direct path: the properties above check something.
        #[test]
        fn plain_calls_and_answers_take_the_direct_path(
            id in prop_oneof![
                any::<i64>().prop_map(Value::from),
                "[a-z0-9-]{0,12}".prop_map(Value::from),
            ],
            tool in "[a-z_]{1,12}",
            arguments in json(&["name", "id", "_meta"]),
            token in prop::option::of("[a-z0-9]{1,8}"),
            is_error in prop::option::of(any::<bool>()),
            broken in any::<bool>(),
            order in Just((0..5).collect::<Vec<usize>>()).prop_shuffle(),
        ) {
            let mut params = vec![
                ("name".to_owned(), text(&Value::from(tool.clone()))),
                ("arguments".to_owned(), text(&arguments)),
            ];
            if let Some(token) = &token {
                let meta = vec![("progressToken".to_owned(), text(&Value::from(token.clone())))];
                params.push(("_meta".to_owned(), object(meta, broken)));
            }
            let members = [
                ("jsonrpc".to_owned(), "\"2.0\"".to_owned()),
                ("id".to_owned(), text(&id)),
                ("method".to_owned(), "\"tools/call\"".to_owned()),
                ("params".to_owned(), object(params, broken)),
                ("x-vendor".to_owned(), "[1]".to_owned()),
            ];
            let call = object(order.iter().map(|i| members[*i].clone()).collect(), broken);
            let body = Bytes::from(call.clone().into_bytes());
            let read = crate::http::mcp::gateway::Direct::of(&body);
            let taken = matches!(&read, Some(crate::http::mcp::gateway::Read::Call(_, name)) if *name == tool);
            prop_assert!(taken, "{}", call);
            fuzzing::check_direct_call(call.as_bytes());

            let mut result = vec![("content".to_owned(), text(&arguments))];
            if let Some(is_error) = is_error {
                result.push(("isError".to_owned(), text(&Value::from(is_error))));
            }
            let members = [
                ("jsonrpc".to_owned(), "\"2.0\"".to_owned()),
                ("id".to_owned(), text(&Value::from(fuzzing::OURS))),
                ("result".to_owned(), object(result, broken)),
            ];
            let order = order.iter().filter(|i| **i < 3);
            let answer = object(order.map(|i| members[*i].clone()).collect(), broken);
            let back = answer_text(answer.as_bytes(), fuzzing::OURS, text(&id).as_bytes());
            prop_assert_eq!(back.map(|(_, error)| error), Some(is_error == Some(true)), "{}", answer);
            fuzzing::check_direct_answer(answer.as_bytes(), &id);
        }

        /// With chunks no longer than the limit (reads are far shorter than the real
        /// limit), an event passes if and only if it fits, wherever the chunks split
        /// the events and their boundaries.
        #[test]
        fn an_event_is_cut_off_exactly_when_it_is_longer_than_the_limit(
            bytes in prop::collection::vec(
                prop_oneof![6 => Just(b'a'), 1 => Just(b'\n'), 1 => Just(b'\r')],
                0..160,
            ),
            cuts in prop::collection::vec(1usize..=16, 1..40),
        ) {
            const MAX: usize = 16;
            let is_boundary =
                |a: u8, b: u8| matches!((a, b), (b'\n', b'\n' | b'\r') | (b'\r', b'\r'));
            // The longest run of bytes between two boundaries, counting the second
            // byte of the boundary before and the first of the one after.
            let (mut run, mut longest, mut last) = (0usize, 0usize, 0u8);
            for &b in &bytes {
                run = if is_boundary(last, b) { 1 } else { run + 1 };
                longest = longest.max(run);
                last = b;
            }
            let mut chunks = Vec::new();
            let mut rest = bytes.as_slice();
            for size in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (chunk, after) = rest.split_at((*size).min(rest.len()));
                chunks.push(Ok(Bytes::copy_from_slice(chunk)));
                rest = after;
            }
            let read: Vec<_> = futures::executor::block_on(
                bounded_by(futures::stream::iter(chunks), MAX).collect(),
            );
            prop_assert_eq!(read.iter().any(Result::is_err), longest > MAX, "{:?}", String::from_utf8_lossy(&bytes));
        }
    }
}
