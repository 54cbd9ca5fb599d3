//! The bearer guard in front of every MCP endpoint. In order:
//! 1. `Host` (DNS-rebinding protection) and `Origin` ([`super::policy`]): 400/403;
//! 2. a bearer token from the `Authorization` header only (RFC 6750 §2.1): 401 with
//!    `WWW-Authenticate` naming the resource's metadata;
//! 3. the token's record, read by its hash in one round trip together with whatever
//!    the endpoint reads ahead: unexpired, unrevoked and issued for this very resource
//!    (RFC 8707 audience), else 401 `invalid_token`;
//! 4. a session id, when sent, belongs to this token's client (else 404, exactly as
//!    for an unknown session); its binding is read with the token, unless this
//!    instance saw it in the last minute ([`sessions::RecentBindings`]);
//! 5. one JSON-RPC message per POST, which the guard can read (else 400: a batch, not
//!    JSON, a member given twice); a new session's `initialize` at
//!    most 4 KiB (413) and within its client's `--sessions-per-minute` (429); and
//!    the scope the call needs: 403 `insufficient_scope` so clients can step up;
//! 6. the store answering within [`VERIFY_TIMEOUT`], else 503.
//!
//! A new session is bound to the client that opened it. A streamed answer (SSE) is
//! closed once its token expires or is revoked, checked every `--stream-recheck`
//! (30 s).
//!
//! The guard knows no tools: each [`Endpoint`] says which scope a call needs.

use std::{sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::Request,
    http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version},
    response::{IntoResponse, Response},
};
use futures::StreamExt;

use super::{
    policy::Refusal,
    reply::{
        code, insufficient_scope, is_request_id, request_id, rpc_error, rpc_error_to,
        store_unavailable, unauthorized,
    },
    session_id,
    sessions::{self, binding_key, Binding},
    Endpoint, Guarded, GuardedBody, MAX_BODY_BYTES,
};
use crate::{
    audit::{Event, EventKind},
    http::{bodies::Unread, AppState},
    mcp::{call::Message, Access, Need},
    net::content_type_is,
    oauth::{client::ClientId, records::AccessToken, AuthServer},
    ratelimit::RetryAfter,
    resource::{Resource, ResourceUri},
    store::{Key, StoreError},
};

/// A token check that does not answer within this long counts as a store outage.
pub const VERIFY_TIMEOUT: Duration = Duration::from_secs(5);

const INVALID_TOKEN: &str = "the access token is invalid, expired or revoked";

/// The bearer token of `Authorization: Bearer <token>`; never from the query string.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Guards one request for `endpoint`, then lets it serve.
pub async fn handle<E: Endpoint>(state: AppState, endpoint: Arc<E>, request: Request) -> Response {
    let public_url = state.config.public_url.as_str();
    let resource = endpoint.resource();
    let token_key = match admit(&state, resource, &request) {
        Ok(key) => key,
        Err(refusal) => return unread_body(*refusal, &request),
    };

    // A POST's body is read before the token is looked up, so that what the endpoint
    // reads ahead travels to the store with the token: one round trip per call.
    // Nothing read is used before the token and its scopes pass.
    let (parts, body) = request.into_parts();
    let body = if parts.method == Method::POST {
        match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
            Ok(bytes) => GuardedBody::Read(bytes),
            Err(e) => {
                let unread = Unread::of(&e);
                let code = if unread.status.is_client_error() {
                    code::INVALID_REQUEST
                } else {
                    code::INTERNAL_ERROR
                };
                return unread.finish(rpc_error(unread.status, code, unread.why));
            }
        }
    } else {
        GuardedBody::Stream(body)
    };
    let bytes = match &body {
        GuardedBody::Read(bytes) => Some(bytes),
        GuardedBody::Stream(_) => None,
    };
    let started = tokio::time::Instant::now();
    let prepared = endpoint.prepare(&parts, bytes);
    // The tool a `tools/call` names, for the activity log.
    let mut tool = prepared.tool.clone();
    // Whether this request counted as a new session (see `admit_session`).
    let mut counted = false;
    let session = session_id(&parts.headers).map(str::to_owned);
    // A binding this instance saw lately is not read again (see `RecentBindings`).
    let known = session.as_deref().and_then(|s| state.bindings.get(s));
    let binding = session
        .as_deref()
        .filter(|_| known.is_none())
        .map(binding_key);
    // What the call will read is read with the token only for a token that passed
    // here lately: anyone can present a token of the right shape, and must not make
    // the store hand out an article (up to 48 KiB) for each made-up one.
    let reads_ahead = prepared.read_ahead.is_some();
    let read_ahead_key = prepared
        .read_ahead
        .filter(|_| state.verified_tokens.contains(&token_key));
    let keys: Vec<&Key> = std::iter::once(&token_key)
        .chain(binding.as_ref())
        .chain(read_ahead_key.as_ref())
        .collect();
    let mut records = match tokio::time::timeout(VERIFY_TIMEOUT, state.store.get_many(&keys)).await
    {
        Ok(Ok(records)) if records.len() == keys.len() => records,
        Ok(Ok(_)) => {
            return store_unavailable(&StoreError::Backend(
                "the store answered the wrong number of records".into(),
            ))
        }
        Ok(Err(e)) => return store_unavailable(&e),
        Err(_) => {
            return store_unavailable(&StoreError::Unavailable("the token check timed out".into()))
        }
    };
    let read_ahead = read_ahead_key.map(|key| (key, records.pop().flatten()));
    let access = match state
        .auth
        .access_token_from(records[0].as_deref(), &resource.uri)
    {
        Ok(Some(access)) => {
            // Only calls that would read ahead look for it: no lock on other calls.
            if reads_ahead {
                state.verified_tokens.insert(&token_key);
            }
            access
        }
        Ok(None) => {
            // Revoked or expired: nothing is read ahead for it any more.
            state.verified_tokens.remove(&token_key);
            return unauthorized(public_url, resource, Some(INVALID_TOKEN));
        }
        Err(e) => return store_unavailable(&e),
    };
    if let Some(session) = &session {
        let from_store = known.is_none();
        let bound = known.or_else(|| {
            let bound = Arc::new(sessions::binding_of(records[1].as_deref())?);
            state.bindings.remember(session, bound.clone());
            Some(bound)
        });
        let Some(bound) = bound.filter(|b| b.allows(&access.client_id, &resource.uri)) else {
            return unknown_session();
        };
        // Read from the store at most once a minute per instance; a session in use
        // for half a day is kept for another, up to a week.
        let now = state.clock.now_ms();
        if from_store && bound.is_due(now) {
            let raw = records[1].as_deref().unwrap_or_default();
            let renew = Box::pin(sessions::renew(&state.store, session, raw, &bound, now));
            match tokio::time::timeout(VERIFY_TIMEOUT, renew).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot renew an MCP session in use"),
                Err(_) => tracing::warn!("renewing an MCP session in use timed out"),
            }
        }
    }

    if let Some(bytes) = bytes {
        // SEP-2243 (2026-07-28): a request may name its method and target in headers,
        // for intermediaries to route by. The body decides; headers that say
        // otherwise are refused, so nothing downstream can be misled by them.
        if !headers_agree(&parts.headers, bytes) {
            return rpc_error_to(
                StatusCode::BAD_REQUEST,
                code::HEADER_MISMATCH,
                "the Mcp-Method or Mcp-Name header does not match the request body",
                bytes,
            );
        }
        let need = match prepared.need {
            Some(need) => need,
            None => match Message::peek(bytes) {
                // One JSON-RPC message per POST since 2025-06-18.
                Message::Batch => {
                    return rpc_error(
                        StatusCode::BAD_REQUEST,
                        code::INVALID_REQUEST,
                        "batched JSON-RPC requests are not supported",
                    )
                }
                // Not JSON, and not said to be: the transport's 415, as rmcp answers a
                // readable body sent so.
                Message::Unreadable if !content_type_is(&parts.headers, "application/json") => {
                    return rpc_error(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        code::INVALID_REQUEST,
                        "the request body must be JSON (Content-Type: application/json)",
                    )
                }
                Message::Unreadable => return unreadable(bytes),
                Message::Single(call) => {
                    if session.is_none() && call.method() == "initialize" {
                        if let Err(refusal) = admit_session(&state, &access, bytes) {
                            return *refusal;
                        }
                        counted = true;
                    }
                    // Only a request is a call: a `tools/call` without an `id` is a
                    // notification, which runs nothing (answered 202), and must
                    // neither show in the activity log as a call nor name a tool in
                    // the metrics.
                    if call.method() == "tools/call" && is_request_id(&request_id(bytes)) {
                        tool = call.name().map(str::to_owned);
                    }
                    // Boxed, as every path the direct one does not take: a
                    // future is as large as its largest path, and each call
                    // allocates and copies the guard's.
                    Box::pin(endpoint.needs(&call)).await
                }
            },
        };
        if let Need::Scope(access_needed) = need {
            let needed = match access_needed {
                Access::Read => &resource.read,
                Access::Write => &resource.write,
            };
            if !access.scopes.contains(needed) {
                if let Some(tool) = &tool {
                    let event = Event::new(EventKind::ToolCall)
                        .client(access.client_id.to_string())
                        .resource(resource.uri.to_string())
                        .tool(tool.clone(), "denied", started.elapsed());
                    state.audit.record(match token_key.group() {
                        Some(grant) => event.grant(grant.as_str()),
                        None => event,
                    });
                }
                let mut wanted = access.scopes.clone();
                wanted.insert(needed.clone());
                return insufficient_scope(public_url, resource, &wanted, bytes);
            }
        }
    }

    let client_id = access.client_id.clone();
    // A new session takes its place for the day here, after every refusal above (so
    // none keeps it), and gives it back below if no session comes of it. Counted
    // before it is served, so that requests at once cannot all pass the check.
    if counted {
        if let Err(wait) = state.daily_sessions.hit_key(&client_id) {
            return too_many_today(&client_id, wait);
        }
    }
    let deleting = parts.method == Method::DELETE;
    let grant = token_key.group();
    // What was sent as JSON, should the endpoint find it unreadable (a cheap copy).
    let sent_as_json = bytes
        .filter(|_| content_type_is(&parts.headers, "application/json"))
        .cloned();
    let response = endpoint
        .serve(Guarded {
            parts,
            body,
            access,
            prepared: prepared.state,
            read_ahead,
        })
        .await;

    // A session answered 404 that the resource can no longer serve is gone as well:
    // ended because its upstream closed, say, or not to be brought back (a server
    // crashing in a loop must not use up its client's sessions for the day). Not
    // every 404 means so: rmcp answers a 2026-07-28 request for a method the server
    // lacks with 404 too, whatever session it names.
    let gone = match &session {
        Some(id) if response.status() == StatusCode::NOT_FOUND => {
            !Box::pin(endpoint.holds(id)).await
        }
        _ => false,
    };
    match session {
        // A new session: bind it to this client before the client can use it.
        None => {
            let opened = response
                .headers()
                .get(&super::SESSION_ID)
                .and_then(|v| v.to_str().ok());
            if let Some(opened) = opened {
                if !counted {
                    // Whatever opened it, it counts towards the client's next.
                    let _ = state.new_sessions.hit_key(&client_id);
                }
                let now = state.clock.now_ms();
                let binding = Binding {
                    client_id: client_id.clone(),
                    resource: resource.uri.clone(),
                    opened_at: now,
                    bound_at: now,
                };
                if let Err(e) = Box::pin(sessions::bind(&state.store, opened, &binding)).await {
                    Box::pin(endpoint.abandon(opened)).await;
                    if counted {
                        state.daily_sessions.give_back(&client_id);
                    }
                    return store_unavailable(&e);
                }
                state.bindings.remember(opened, Arc::new(binding));
                if !counted {
                    let _ = state.daily_sessions.hit_key(&client_id);
                }
            } else if counted {
                // No session came of it: its place for the day is given back.
                state.daily_sessions.give_back(&client_id);
            }
        }
        Some(ended) if (deleting && response.status().is_success()) || gone => {
            // Its records are gone: it no longer counts among the day's sessions. Only
            // the removal that found the binding gives its place back (rmcp answers a
            // DELETE of a session it does not hold with success too).
            if let Ok(true) =
                Box::pin(sessions::unbind(&state.store, &state.bindings, &ended)).await
            {
                state.daily_sessions.give_back(&client_id);
            }
        }
        Some(_) => {}
    }
    // rmcp answers a body it cannot read as a message (an `id` of 1.5, no
    // `jsonrpc`, nesting past 128) with its transport's plain-text 415, which reads
    // as a wrong Content-Type: one sent as JSON gets the guard's own answer instead.
    let response = match &sent_as_json {
        Some(sent)
            if response.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE
                && !content_type_is(response.headers(), "application/json") =>
        {
            unreadable(sent)
        }
        _ => response,
    };
    let response = match tool {
        Some(tool) => {
            // The grant's use counts now; the event waits for the outcome.
            if let Some(grant) = &grant {
                state.audit.used(grant);
            }
            let record = {
                let (state, resource) = (state.clone(), resource.uri.to_string());
                move |outcome: &str| {
                    let mut event = Event::new(EventKind::ToolCall)
                        .client(client_id.to_string())
                        .resource(resource)
                        .tool(tool, outcome, started.elapsed());
                    if let Some(grant) = &grant {
                        event = event.grant(grant.as_str());
                    }
                    state.audit.record(event);
                }
            };
            let response = if response.extensions().get::<ToolOutcome>().is_none() {
                with_outcome(response).await
            } else {
                response
            };
            match response.extensions().get::<ToolOutcome>() {
                Some(ToolOutcome::Error) => record("error"),
                Some(ToolOutcome::Ok) if response.status().is_success() => record("ok"),
                _ if !response.status().is_success() => record("error"),
                // A streamed answer: the outcome (and the time) when the answer passes.
                _ if content_type_is(response.headers(), "text/event-stream") => {
                    return watch_stream(
                        state,
                        token_key,
                        resource.uri.clone(),
                        watch_answer(response, record),
                    )
                }
                _ => record("ok"),
            }
            response
        }
        None => response,
    };
    watch_stream(state, token_key, resource.uri.clone(), response)
}

/// A body sent as JSON that is not a message this server can read: JSON (a
/// `method` that is not a string, a member given twice, an `id` rmcp does not take)
/// is an invalid request, answered by its id; not JSON at all, a parse error
/// (JSON-RPC 2.0 §5.1).
fn unreadable(bytes: &[u8]) -> Response {
    if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() {
        rpc_error_to(
            StatusCode::BAD_REQUEST,
            code::INVALID_REQUEST,
            "the request body is not a JSON-RPC message this server can read",
            bytes,
        )
    } else {
        rpc_error(
            StatusCode::BAD_REQUEST,
            code::PARSE_ERROR,
            "the request body is not JSON",
        )
    }
}

/// The largest `initialize` request. rmcp keeps each session's `initialize` in the
/// store for a day ([`sessions::MCP_SESSION_TTL`]), a week if in use; a client's is a
/// few hundred bytes.
pub const MAX_INITIALIZE_BYTES: usize = 4 * 1024;

/// A new session, if its client may open one now: each keeps its `initialize` in the
/// store for a day (a week at most while in use, [`sessions::MAX_SESSION_LIFE`]), so
/// what a token can make the store hold is bounded by the client's sessions per day
/// (those it did not end), times eight for sessions kept in use a week, times
/// [`MAX_INITIALIZE_BYTES`] (per instance).
fn admit_session(state: &AppState, access: &AccessToken, body: &[u8]) -> Result<(), Box<Response>> {
    if body.len() > MAX_INITIALIZE_BYTES {
        return Err(Box::new(rpc_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            code::INVALID_REQUEST,
            "the initialize request is too large (4 KiB at most)",
        )));
    }
    if let Err(wait) = state.daily_sessions.check_key(&access.client_id) {
        return Err(Box::new(too_many_today(&access.client_id, wait)));
    }
    if let Err(wait) = state.new_sessions.hit_key(&access.client_id) {
        crate::warn_throttled!(client = %access.client_id, "refused a new MCP session: too many this minute");
        let mut refusal = rpc_error(
            StatusCode::TOO_MANY_REQUESTS,
            code::INVALID_REQUEST,
            "this client opened too many sessions in the last minute; try again later",
        );
        refusal
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(wait.seconds()));
        return Err(Box::new(refusal));
    }
    Ok(())
}

/// The refusal of a new session past `--sessions-per-day`.
fn too_many_today(client_id: &ClientId, wait: RetryAfter) -> Response {
    crate::warn_throttled!(client = %client_id, "refused a new MCP session: too many today that were not ended");
    let mut refusal = rpc_error(
        StatusCode::TOO_MANY_REQUESTS,
        code::INVALID_REQUEST,
        "this client opened too many sessions in the last day without ending them (DELETE); try again later",
    );
    refusal
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(wait.seconds()));
    refusal
}

/// Steps 1 and 2, before the body is read: the hash of the bearer token, or the
/// refusal.
fn admit(state: &AppState, resource: &Resource, request: &Request) -> Result<Key, Box<Response>> {
    let public_url = state.config.public_url.as_str();
    match state.hosts.check(request.uri(), request.headers()) {
        Ok(()) => {}
        Err(Refusal::MalformedHost) => {
            return Err(Box::new(rpc_error(
                StatusCode::BAD_REQUEST,
                code::INVALID_REQUEST,
                "the Host header is invalid",
            )))
        }
        Err(Refusal::HostNotAllowed) => {
            crate::warn_throttled!("refused an MCP request for a Host that is not ours");
            return Err(Box::new(rpc_error(
                StatusCode::FORBIDDEN,
                code::INVALID_REQUEST,
                "this Host is not served here; add it with --allowed-host",
            )));
        }
        Err(Refusal::OriginNotAllowed) => {
            return Err(Box::new(rpc_error(
                StatusCode::FORBIDDEN,
                code::INVALID_REQUEST,
                "this Origin may not call the MCP endpoint",
            )))
        }
    }
    let Some(token) = bearer(request.headers()) else {
        return Err(Box::new(unauthorized(public_url, resource, None)));
    };
    AuthServer::access_token_key(token)
        .ok_or_else(|| Box::new(unauthorized(public_url, resource, Some(INVALID_TOKEN))))
}

/// A refusal sent before the request's body was read, over HTTP/1.1, says that the
/// connection closes. Hyper cannot reuse a connection whose request body it did not
/// read (it reads off only what has already arrived), so it closes it after the
/// answer; without the header a client may send its next request on it first and see
/// the server hang up without answering. Clients send a request right after the
/// 401 to their first, tokenless `initialize` (the Python SDK's test failed once in
/// CI with httpx's "Server disconnected without sending a response" there).
fn unread_body(mut refusal: Response, request: &Request) -> Response {
    let headers = request.headers();
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|length| length.as_bytes() != b"0");
    // HTTP/2 has no such header: a stream ends on its own.
    if has_body && request.version() <= Version::HTTP_11 {
        refusal
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    refusal
}

/// What an endpoint knows of a tool call's outcome beyond the HTTP status (a tool
/// error in a `200` answer), in the response's extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolOutcome {
    Ok,
    Error,
}

/// The largest plain JSON answer to a tool call whose outcome the guard reads itself.
const MAX_OUTCOME_BYTES: u64 = 1024 * 1024;

/// A tool call's answer with its [`ToolOutcome`], read from the answer itself when
/// the endpoint did not say (a call relayed through rmcp): a JSON-RPC error, or a
/// result with `isError`, is an error. Only a plain JSON answer of known length, in
/// memory already, is read; a streamed answer is read as it passes (see
/// [`watch_answer`]).
async fn with_outcome(response: Response) -> Response {
    let is_json = content_type_is(response.headers(), "application/json");
    let small = axum::body::HttpBody::size_hint(response.body())
        .exact()
        .is_some_and(|n| n <= MAX_OUTCOME_BYTES);
    if !is_json || !small {
        return response;
    }
    let (mut parts, mut body) = response.into_parts();
    let length = axum::body::HttpBody::size_hint(&body).lower() as usize;
    // Read up to its length, not to its end: what the body holds until its end (a
    // place among the answers waiting for the client, see the gateway's `Holding`)
    // is held until the answer is sent, not given back as it is read here.
    let mut bytes = bytes::BytesMut::with_capacity(length);
    while bytes.len() < length {
        match http_body_util::BodyExt::frame(&mut body).await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    bytes.extend_from_slice(&data);
                }
            }
            // The body said its length and broke off: what is left of it is an error.
            Some(Err(_)) | None => {
                return rpc_error(
                    StatusCode::BAD_GATEWAY,
                    code::INTERNAL_ERROR,
                    "the answer broke off",
                );
            }
        }
    }
    let bytes = bytes.freeze();
    let error = answer_outcome(&bytes).unwrap_or(false);
    parts.extensions.insert(if error {
        ToolOutcome::Error
    } else {
        ToolOutcome::Ok
    });
    let read = ReadAhead {
        bytes: Some(bytes),
        rest: body,
    };
    Response::from_parts(parts, Body::new(read))
}

/// An answer [`with_outcome`] read: its bytes, then what is left of the body they
/// came from (its end), which keeps what it holds until then.
struct ReadAhead {
    bytes: Option<bytes::Bytes>,
    rest: Body,
}

impl http_body::Body for ReadAhead {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        if let Some(bytes) = self.bytes.take() {
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(bytes))));
        }
        std::pin::Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.bytes.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let read = self.bytes.as_ref().map_or(0, |b| b.len() as u64);
        let rest = self.rest.size_hint();
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(rest.lower() + read);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + read);
        }
        hint
    }
}

/// Records a streamed tool call's activity event (through `record`) once its answer
/// passes: an error if the answer is a JSON-RPC error or a result with `isError`;
/// cancelled if the stream ends, or the client leaves, before any answer. Every
/// failure on Gatehouse's or the upstream's side is an answer (a JSON-RPC error
/// naming the upstream, say), so an answer that never came is the client's doing:
/// its `notifications/cancelled` (after which it expects none), or its going away.
fn watch_answer(response: Response, record: impl FnOnce(&str) + Send + 'static) -> Response {
    type Record = Box<dyn FnOnce(&str) + Send>;
    /// The event until it is recorded: by the answer, by the stream's end or the
    /// client leaving (cancelled), or after [`ANSWER_WAIT`] (an error), whichever is
    /// first. A client that stops reading (an HTTP/2 window left shut) cannot hold
    /// the event back longer than that.
    struct Pending {
        record: Arc<std::sync::Mutex<Option<Record>>>,
        timer: tokio::task::JoinHandle<()>,
    }
    impl Pending {
        fn finish(&self, outcome: &str) {
            let record = self.record.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(record) = record {
                self.timer.abort();
                record(outcome);
            }
        }
    }
    impl Drop for Pending {
        fn drop(&mut self) {
            self.finish("cancelled");
        }
    }
    let record: Arc<std::sync::Mutex<Option<Record>>> =
        Arc::new(std::sync::Mutex::new(Some(Box::new(record))));
    let timer = tokio::spawn({
        let record = record.clone();
        async move {
            tokio::time::sleep(ANSWER_WAIT).await;
            let record = record.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(record) = record {
                record("error");
            }
        }
    });
    let pending = Pending { record, timer };
    let (parts, body) = response.into_parts();
    let mut answered = false;
    let frames = body.into_data_stream().map(move |frame| {
        if let (Ok(bytes), false) = (&frame, answered) {
            if let Some(error) = answer_in(bytes) {
                answered = true;
                pending.finish(if error { "error" } else { "ok" });
            }
        }
        frame
    });
    Response::from_parts(parts, Body::from_stream(frames))
}

/// How long a streamed tool call's activity event waits for the answer to pass.
const ANSWER_WAIT: Duration = Duration::from_secs(15 * 60);

/// Whether an SSE frame carries a JSON-RPC answer (a message with `result` or `error`
/// and no `method`), and if so whether it is an error (a JSON-RPC error, or a result
/// with `isError: true`). Each frame is read on its own: both producers (the direct
/// path's `answer_response` and rmcp's SSE body) send one whole event, with one
/// `data:` line, per frame. An answer split across frames would go unseen, and the
/// call would be logged as an error when the stream ends.
fn answer_in(frame: &[u8]) -> Option<bool> {
    let text = std::str::from_utf8(frame).ok()?;
    text.lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .find_map(|data| answer_outcome(data.trim_start().as_bytes()))
}

/// Whether one JSON-RPC message is an answer (`result` or `error`, no `method`), and
/// if so whether it is an error (a JSON-RPC error, or a result with `isError: true`).
fn answer_outcome(json: &[u8]) -> Option<bool> {
    #[derive(serde::Deserialize)]
    struct Message {
        method: Option<serde::de::IgnoredAny>,
        error: Option<serde::de::IgnoredAny>,
        result: Option<ResultOutcome>,
    }
    #[derive(serde::Deserialize)]
    struct ResultOutcome {
        #[serde(rename = "isError", default)]
        is_error: Option<bool>,
    }
    let message = serde_json::from_slice::<Message>(json).ok()?;
    if message.method.is_some() || (message.error.is_none() && message.result.is_none()) {
        return None;
    }
    Some(message.error.is_some() || message.result.is_some_and(|r| r.is_error == Some(true)))
}

/// Whether `Mcp-Method` and `Mcp-Name`, when sent, say what the body says (SEP-2243):
/// the method, and the name the method acts on: `params.name` for `tools/call` and
/// `prompts/get`, `params.uri` for `resources/read`, `resources/subscribe` and
/// `resources/unsubscribe`. A name that is not plain ASCII comes Base64-wrapped
/// (`=?base64?…?=`). Refused: a header sent twice (two claims, and whoever reads it
/// may take either), a name for a method that has none, a body that is not one
/// message.
pub fn headers_agree(headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &HeaderName| -> Result<Option<&str>, ()> {
        let mut values = headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (None, _) => Ok(None),
            (Some(value), None) => value.to_str().map(Some).map_err(|_| ()),
            (Some(_), Some(_)) => Err(()),
        }
    };
    let (Ok(method), Ok(name)) = (header(&super::METHOD), header(&super::NAME)) else {
        return false;
    };
    if method.is_none() && name.is_none() {
        return true;
    }
    let Message::Single(call) = Message::peek(body) else {
        return false;
    };
    let method_agrees = method.is_none_or(|m| call.method.as_deref() == Some(m));
    let name_agrees = name.is_none_or(|sent| {
        let named = match call.method() {
            "tools/call" | "prompts/get" => call.name.as_deref(),
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                call.uri.as_deref()
            }
            "tasks/get" | "tasks/update" | "tasks/cancel" => {
                return task_id(body).is_some_and(|id| header_text(sent).is_some_and(|s| s == id))
            }
            _ => None,
        };
        named.is_some_and(|named| header_text(sent).is_some_and(|sent| sent == named))
    });
    method_agrees && name_agrees
}

/// `params.taskId` of a request of the tasks extension (SEP-2663), what its
/// `Mcp-Name` names; read only for those requests that send the header.
fn task_id(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Request {
        params: Params,
    }
    #[derive(serde::Deserialize)]
    struct Params {
        #[serde(rename = "taskId")]
        task_id: String,
    }
    serde_json::from_slice::<Request>(body)
        .ok()
        .map(|r| r.params.task_id)
}

/// An SEP-2243 header's text: as sent, or Base64-decoded from `=?base64?…?=`.
fn header_text(value: &str) -> Option<std::borrow::Cow<'_, str>> {
    use base64::{engine::general_purpose::STANDARD, Engine};
    match value
        .strip_prefix("=?base64?")
        .and_then(|inner| inner.strip_suffix("?="))
    {
        Some(encoded) => {
            let bytes = STANDARD.decode(encoded).ok()?;
            String::from_utf8(bytes).ok().map(Into::into)
        }
        None => Some(value.into()),
    }
}

/// What rmcp answers for a session it does not know, to the byte: a session of
/// another client must look exactly like no session at all.
pub(super) fn unknown_session() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "Not Found: Session not found",
    )
        .into_response()
}

/// Ends a streamed (SSE) answer once its token expires or is revoked. A store that
/// cannot answer does not end the stream: a revocation it cannot confirm is checked
/// again at the next tick.
fn watch_stream(
    state: AppState,
    token_key: Key,
    resource: ResourceUri,
    response: Response,
) -> Response {
    if !content_type_is(response.headers(), "text/event-stream") {
        return response;
    }
    let every = state.config.limits.stream_recheck;
    let (parts, body) = response.into_parts();
    let frames = body.into_data_stream();
    let tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let watched = futures::stream::unfold(
        (frames, tick, state, token_key, resource),
        |(mut frames, mut tick, state, token_key, resource)| async move {
            loop {
                // The recheck first when both are ready: once it is due, no frame
                // goes out before it. A store that does not answer in time holds
                // the stream no longer than that; the token is checked again at the
                // next tick.
                tokio::select! {
                    biased;
                    _ = tick.tick() => {
                        let read = tokio::time::timeout(VERIFY_TIMEOUT, state.store.get(&token_key));
                        let record = match read.await {
                            Ok(Ok(record)) => record,
                            Ok(Err(e)) => {
                                tracing::warn!(error = %e, "cannot recheck a streaming token");
                                continue;
                            }
                            Err(_) => {
                                tracing::warn!("rechecking a streaming token timed out");
                                continue;
                            }
                        };
                        if !matches!(state.auth.access_token_from(record.as_deref(), &resource), Ok(Some(_))) {
                            tracing::info!("closing an MCP stream: its token expired or was revoked");
                            return None;
                        }
                    }
                    frame = frames.next() => {
                        return frame.map(|f| (f, (frames, tick, state, token_key, resource)));
                    }
                }
            }
        },
    );
    Response::from_parts(parts, Body::from_stream(watched))
}

/// The request again, for endpoints that hand it on (to rmcp), with the token that
/// passed in its extensions for the handlers behind. Only then: an answer the
/// endpoint makes itself needs no copy of it there.
pub fn rebuild(
    mut parts: axum::http::request::Parts,
    body: GuardedBody,
    access: AccessToken,
) -> Request<Body> {
    parts.extensions.insert(access);
    Request::from_parts(parts, body.into_body())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn mcp_method_and_name_headers_must_match_the_body() {
        let call = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#;
        let read =
            br#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///a"}}"#;
        let with = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (name, value) in pairs {
                h.insert(*name, HeaderValue::from_str(value).expect("v"));
            }
            h
        };
        assert!(headers_agree(&HeaderMap::new(), call));
        assert!(headers_agree(
            &with(&[("mcp-method", "tools/call"), ("mcp-name", "echo")]),
            call
        ));
        assert!(headers_agree(
            &with(&[("mcp-method", "resources/read"), ("mcp-name", "file:///a")]),
            read
        ));
        assert!(!headers_agree(&with(&[("mcp-method", "tools/list")]), call));
        assert!(!headers_agree(
            &with(&[("mcp-name", "delete_everything")]),
            call
        ));
        assert!(!headers_agree(
            &with(&[("mcp-method", "tools/call")]),
            b"[]"
        ));
        // The name the method acts on, not any name: a resource's URI is not a tool.
        assert!(!headers_agree(&with(&[("mcp-name", "file:///a")]), call));
        assert!(!headers_agree(
            &with(&[("mcp-name", "echo")]),
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"name":"echo"}}"#
        ));
        // A task's id, for the tasks extension's methods (as rmcp's clients send it).
        let task = br#"{"jsonrpc":"2.0","id":1,"method":"tasks/get","params":{"taskId":"t-1"}}"#;
        assert!(headers_agree(
            &with(&[("mcp-method", "tasks/get"), ("mcp-name", "t-1")]),
            task
        ));
        assert!(!headers_agree(&with(&[("mcp-name", "t-2")]), task));
        // A name that is not plain ASCII comes Base64-wrapped.
        let accented =
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"caf\u00e9"}}"#;
        assert!(headers_agree(
            &with(&[("mcp-name", "=?base64?Y2Fmw6k=?=")]),
            accented.as_bytes()
        ));
        assert!(!headers_agree(
            &with(&[("mcp-name", "=?base64?ZWNobw==?=")]),
            accented.as_bytes()
        ));
        // Sent twice, a header is two claims.
        let mut twice = with(&[("mcp-method", "tools/call")]);
        twice.append("mcp-method", HeaderValue::from_static("tools/list"));
        assert!(!headers_agree(&twice, call));
        let mut same_twice = with(&[("mcp-name", "echo")]);
        same_twice.append("mcp-name", HeaderValue::from_static("echo"));
        assert!(!headers_agree(&same_twice, call));
    }

    #[test]
    fn a_streamed_answer_and_its_outcome_are_found_in_its_frames() {
        let frame = |json: &str| format!("event: message\nid: 3\ndata: {json}\n\n");
        let progress =
            r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}"#;
        let ask =
            r#"{"jsonrpc":"2.0","id":"gatehouse-1","method":"sampling/createMessage","params":{}}"#;
        let ok = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[],"isError":false}}"#;
        let tool_error = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[],"isError":true}}"#;
        let rpc_error = r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"x"}}"#;
        assert_eq!(answer_in(frame(progress).as_bytes()), None);
        assert_eq!(answer_in(frame(ask).as_bytes()), None);
        assert_eq!(answer_in(b": keep-alive\n\n"), None);
        assert_eq!(answer_in(frame(ok).as_bytes()), Some(false));
        assert_eq!(answer_in(frame(tool_error).as_bytes()), Some(true));
        assert_eq!(answer_in(frame(rpc_error).as_bytes()), Some(true));
        let two = frame(progress) + &frame(tool_error);
        assert_eq!(answer_in(two.as_bytes()), Some(true));
    }

    /// A streamed answer's body: `frames`, then nothing more, ever.
    fn streamed(frames: Vec<String>) -> Response {
        let frames = futures::stream::iter(frames)
            .map(|f| Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(f)))
            .chain(futures::stream::pending());
        Response::new(Body::from_stream(frames))
    }

    fn recorder() -> (
        impl FnOnce(&str) + Send + 'static,
        std::sync::mpsc::Receiver<String>,
    ) {
        let (sender, receiver) = std::sync::mpsc::channel();
        (
            move |outcome: &str| sender.send(outcome.to_owned()).expect("send"),
            receiver,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_streamed_calls_event_is_recorded_once_when_its_answer_passes_or_never_comes() {
        let answer = r#"data: {"jsonrpc":"2.0","id":1,"result":{"isError":true}}"#;
        let progress = r#"data: {"jsonrpc":"2.0","method":"notifications/progress"}"#;

        // Read to the answer: recorded then, once.
        let (record, outcomes) = recorder();
        let response = watch_answer(
            streamed(vec![format!("{progress}\n\n"), format!("{answer}\n\n")]),
            record,
        );
        let mut body = response.into_body().into_data_stream();
        body.next().await;
        assert!(outcomes.try_recv().is_err(), "not before the answer");
        body.next().await;
        assert_eq!(outcomes.try_recv().as_deref(), Ok("error"));
        drop(body);
        tokio::time::advance(ANSWER_WAIT * 2).await;
        assert!(outcomes.try_recv().is_err(), "recorded once");

        // The client leaves before the answer: cancelled.
        let (record, outcomes) = recorder();
        let response = watch_answer(streamed(vec![format!("{progress}\n\n")]), record);
        drop(response);
        assert_eq!(outcomes.try_recv().as_deref(), Ok("cancelled"));

        // The stream ends without an answer (the client cancelled the call): cancelled.
        let (record, outcomes) = recorder();
        let frames = futures::stream::iter([Ok::<_, std::convert::Infallible>(
            axum::body::Bytes::from(format!("{progress}\n\n")),
        )]);
        let response = watch_answer(Response::new(Body::from_stream(frames)), record);
        let mut body = response.into_body().into_data_stream();
        while body.next().await.is_some() {}
        drop(body);
        assert_eq!(outcomes.try_recv().as_deref(), Ok("cancelled"));

        // Nobody reads the stream: an error after ANSWER_WAIT, not never.
        let (record, outcomes) = recorder();
        let _held = watch_answer(streamed(vec![format!("{answer}\n\n")]), record);
        tokio::time::sleep(ANSWER_WAIT - Duration::from_secs(1)).await;
        assert!(outcomes.try_recv().is_err());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(outcomes.try_recv().as_deref(), Ok("error"));
    }

    #[test]
    fn only_ids_rmcp_runs_a_request_by_make_a_call() {
        use serde_json::json;
        for id in [
            json!(0),
            json!(7),
            json!(-3),
            json!("a"),
            json!(""),
            json!(2.0),
        ] {
            assert!(is_request_id(&id), "{id}");
        }
        for id in [
            json!(null),
            json!(true),
            json!(1.5),
            json!({}),
            json!([]),
            json!(1e300),
        ] {
            assert!(!is_request_id(&id), "{id}");
        }
    }

    #[test]
    fn bearer_tokens_come_from_the_authorization_header() {
        let headers = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(value).expect("v"),
            );
            h
        };
        assert_eq!(bearer(&headers("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&headers("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&headers("Basic abc")), None);
        assert_eq!(bearer(&headers("Bearer ")), None);
        assert_eq!(bearer(&headers("Bearer")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }
}

#[cfg(test)]
mod properties {
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    use super::*;

    fn with_authorization(value: &[u8]) -> Option<HeaderMap> {
        let value = HeaderValue::from_bytes(value).ok()?;
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value);
        Some(headers)
    }

    proptest! {
        #[test]
        fn a_bearer_token_is_the_trimmed_rest_of_a_bearer_header(
            value in prop_oneof![
                any::<Vec<u8>>(),
                "(Bearer|bearer|BEARER|Basic|Bearerx)?( {0,2})[ -~]{0,30}".prop_map(String::into_bytes),
            ]
        ) {
            let Some(headers) = with_authorization(&value) else { return Ok(()) };
            let Some(token) = bearer(&headers) else { return Ok(()) };
            prop_assert!(!token.is_empty());
            prop_assert_eq!(token, token.trim());
            let text = std::str::from_utf8(&value).expect("a token came from text");
            let (scheme, rest) = text.split_once(' ').expect("a scheme and a token");
            prop_assert!(scheme.eq_ignore_ascii_case("bearer"));
            prop_assert_eq!(rest.trim(), token);
        }

        /// SEP-2243: a client that names the method and its target in headers, plain
        /// or Base64-wrapped, is never refused; headers of any other bytes pass only
        /// when they say what the body says.
        #[test]
        fn mcp_method_and_name_headers_pass_exactly_when_they_say_what_the_body_says(
            method in prop_oneof![
                Just("tools/call"), Just("prompts/get"), Just("resources/read"),
                Just("tools/list"), Just("initialize"),
            ],
            target in prop_oneof![
                3 => "[a-z_]{1,12}",
                1 => crate::strategies::tricky_text(),
            ],
            wrapped in any::<bool>(),
            sent in prop::collection::vec(
                (any::<bool>(), prop_oneof![
                    any::<Vec<u8>>(),
                    "(tools/call|tools/list|=\\?base64\\?[A-Za-z0-9+/=]{0,12}\\?=|[a-z_]{1,4})"
                        .prop_map(String::into_bytes),
                ]),
                0..3,
            ),
        ) {
            use base64::{engine::general_purpose::STANDARD, Engine};
            let member = if method.starts_with("resources/") { "uri" } else { "name" };
            let body = serde_json::json!({
                "jsonrpc": "2.0", "id": 1, "method": method, "params": { member: target },
            })
            .to_string();
            let named = matches!(method, "tools/call" | "prompts/get" | "resources/read");

            // As a client writes them: plain when the value is printable ASCII with no
            // space at either end, else (or when it likes) Base64-wrapped.
            let printable = target.bytes().all(|b| (0x20..0x7f).contains(&b))
                && !target.starts_with(' ')
                && !target.ends_with(' ');
            let plain = HeaderValue::from_str(&target).ok().filter(|_| printable && !wrapped);
            let name = plain.unwrap_or_else(|| {
                let wrapped = format!("=?base64?{}?=", STANDARD.encode(&target));
                HeaderValue::from_str(&wrapped).expect("Base64 is a header value")
            });
            let mut headers = HeaderMap::new();
            headers.insert(&super::super::METHOD, HeaderValue::from_static(method));
            prop_assert!(headers_agree(&headers, body.as_bytes()));
            headers.insert(&super::super::NAME, name);
            prop_assert_eq!(headers_agree(&headers, body.as_bytes()), named);

            // Any bytes: what passes says what the body says.
            let mut headers = HeaderMap::new();
            for (is_name, value) in &sent {
                let Ok(value) = HeaderValue::from_bytes(value) else { continue };
                let which = if *is_name { &super::super::NAME } else { &super::super::METHOD };
                headers.append(which, value);
            }
            if headers_agree(&headers, body.as_bytes()) {
                for (which, said) in [(&super::super::METHOD, method.to_owned()), (&super::super::NAME, target.clone())] {
                    let mut values = headers.get_all(which).iter();
                    let Some(value) = values.next() else { continue };
                    prop_assert!(values.next().is_none(), "one value each");
                    let text = value.to_str().expect("a text header passed");
                    let decoded = header_text(text).expect("a header that passed decodes");
                    prop_assert_eq!(decoded.as_ref(), said.as_str());
                }
            }
        }

        #[test]
        fn any_token_sent_as_bearer_is_read_back(
            scheme in "[Bb][Ee][Aa][Rr][Ee][Rr]",
            token in "[A-Za-z0-9._~+/=-]{1,80}",
            padding in " {0,3}",
        ) {
            let value = format!("{scheme} {padding}{token}{padding}");
            let headers = with_authorization(value.as_bytes()).expect("a valid header");
            prop_assert_eq!(bearer(&headers), Some(token.as_str()));
        }
    }
}
