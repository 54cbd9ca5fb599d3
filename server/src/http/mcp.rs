//! `/mcp` and its protected-resource metadata (RFC 9728). The guard in front of the
//! MCP service checks, in order: the `Origin` (403), the bearer token from the
//! `Authorization` header only (401 with `WWW-Authenticate`), and the scope the
//! JSON-RPC call needs (403 `insufficient_scope`, so clients can step up). Then the
//! official Rust SDK (`rmcp`) speaks Streamable HTTP for every protocol revision.

use std::{sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::{Request, State},
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
    Json,
};
use rmcp::{
    model::{CallToolRequestParams, RequestId, ServerJsonRpcMessage, ServerResult},
    transport::streamable_http_server::{
        session::{
            local::LocalSessionManager,
            store::{SessionState, SessionStore, SessionStoreError},
            SessionId, SessionManager,
        },
        StreamableHttpServerConfig, StreamableHttpService,
    },
    ErrorData,
};
use serde::Deserialize;
use serde_json::json;
use url::Url;

use super::{AppState, MAX_BODY_BYTES};
use crate::{
    articles::Articles,
    config::{Config, PublicUrl},
    mcp::{required_scope, ArticleServer, Prefetched},
    oauth::{
        scope::{Scope, ScopeSet},
        secret::SecretHash,
        server::AuthServer,
    },
    store::{Key, Put, SharedStore},
};

/// A token check that does not answer within this long counts as a store outage.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(5);

/// The scope every client needs to do anything useful; advertised in 401 challenges
/// so clients do not ask for every scope.
const BASELINE: Scope = Scope::ReadArticles;

/// Which browser origins may call `/mcp`: the public URL's own origin, loopback
/// origins on any port (local tools such as the MCP Inspector), and those added with
/// `--allowed-origin`. Requests without an `Origin` (non-browser clients) pass.
#[derive(Clone, Debug)]
pub struct OriginPolicy {
    exact: Vec<String>,
}

impl OriginPolicy {
    pub fn new(public_url: &PublicUrl, extra: &[String]) -> Self {
        let mut exact = vec![public_url.as_str().to_owned()];
        exact.extend(
            extra
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase()),
        );
        OriginPolicy { exact }
    }

    pub fn allows(&self, origin: &str) -> bool {
        let Ok(url) = Url::parse(origin) else {
            return false;
        };
        if !matches!(url.scheme(), "http" | "https") {
            return false;
        }
        let loopback = match url.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        };
        loopback
            || self
                .exact
                .iter()
                .any(|allowed| *allowed == url.origin().ascii_serialization())
    }
}

/// How long an idle MCP session can be restored on another instance.
const SESSION_TTL: Duration = Duration::from_secs(24 * 3600);

/// Keeps each MCP session's `initialize` parameters in the store, so that any
/// instance of a deployment can take over a session another instance started (rmcp
/// replays the handshake from them). Keys hold the SHA-256 of the session id.
struct StoreSessions(SharedStore);

fn session_key(session_id: &str) -> Key {
    Key::new("mcp-session", SecretHash::of(session_id).as_str())
}

#[async_trait::async_trait]
impl SessionStore for StoreSessions {
    async fn load(&self, session_id: &str) -> Result<Option<SessionState>, SessionStoreError> {
        match self.0.get(&session_key(session_id)).await? {
            Some(raw) => Ok(Some(serde_json::from_slice(&raw)?)),
            None => Ok(None),
        }
    }

    async fn store(&self, session_id: &str, state: &SessionState) -> Result<(), SessionStoreError> {
        let raw = serde_json::to_vec(state)?;
        Ok(self
            .0
            .put(&session_key(session_id), &raw, Put::ttl(SESSION_TTL))
            .await?)
    }

    async fn delete(&self, session_id: &str) -> Result<(), SessionStoreError> {
        self.0.delete(&session_key(session_id)).await?;
        Ok(())
    }
}

/// One allowed `Host`: a name, and a port when the entry names one.
#[derive(Debug)]
struct AllowedHost {
    host: String,
    port: Option<u16>,
}

impl AllowedHost {
    fn parse(entry: &str) -> Option<Self> {
        let entry = entry.trim();
        if entry.is_empty() {
            return None;
        }
        let (host, port) = match entry.parse::<axum::http::uri::Authority>() {
            Ok(authority) => (authority.host().to_owned(), authority.port_u16()),
            Err(_) => (entry.to_owned(), None),
        };
        Some(AllowedHost {
            host: host.trim_matches(['[', ']']).to_ascii_lowercase(),
            port,
        })
    }
}

/// What the guard, the direct path and rmcp's transport share: which `Host`s and
/// `Origin`s may call, the live MCP sessions, and the tool server.
pub struct Endpoint {
    hosts: Vec<AllowedHost>,
    origins: OriginPolicy,
    sessions: Arc<LocalSessionManager>,
    server: ArticleServer,
    /// rmcp's Streamable HTTP transport, on the same sessions and server.
    pub transport: McpService,
}

/// Why a `Host` header was refused.
enum HostRefusal {
    Malformed,
    NotAllowed,
}

impl Endpoint {
    pub fn new(
        store: SharedStore,
        articles: Articles,
        config: &Config,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Self {
        let public_url = &config.public_url;
        // DNS-rebinding protection: loopback names, the public URL's host, and those
        // added with --allowed-host.
        let mut host_names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        if let Ok(url) = Url::parse(public_url.as_str()) {
            if let Some(host) = url.host_str() {
                host_names.push(host.trim_matches(['[', ']']).to_owned());
            }
        }
        host_names.extend(config.allowed_hosts.iter().cloned());
        // rmcp checks `Host` and `Origin` again, with the same lists.
        let mut origins = vec![
            public_url.as_str().to_owned(),
            "http://localhost:*".to_owned(),
            "http://127.0.0.1:*".to_owned(),
            "http://[::1]:*".to_owned(),
            "https://localhost:*".to_owned(),
            "https://127.0.0.1:*".to_owned(),
            "https://[::1]:*".to_owned(),
        ];
        origins.extend(config.allowed_origins.iter().cloned());
        let hosts = host_names
            .iter()
            .filter_map(|h| AllowedHost::parse(h))
            .collect();
        let mut transport_config = StreamableHttpServerConfig::default()
            .with_allowed_hosts(host_names)
            .with_allowed_origins(origins)
            .with_max_request_body_bytes(MAX_BODY_BYTES)
            // Sessionless (2026-07-28) requests that only answer get plain JSON.
            .with_json_response(true)
            .with_cancellation_token(shutdown);
        transport_config.session_store = Some(Arc::new(StoreSessions(store)));
        let server = ArticleServer::new(articles);
        let sessions = Arc::new(LocalSessionManager::default());
        let transport = {
            let server = server.clone();
            McpService(Arc::new(StreamableHttpService::new(
                move || Ok(server.clone()),
                sessions.clone(),
                transport_config,
            )))
        };
        Endpoint {
            hosts,
            origins: OriginPolicy::new(public_url, &config.allowed_origins),
            sessions,
            server,
            transport,
        }
    }

    /// The `Host` check rmcp makes, made first, so that a rebound name learns
    /// nothing, not even whether a token is needed.
    fn check_host(&self, request: &Request) -> Result<(), HostRefusal> {
        let authority = match request.headers().get(header::HOST) {
            Some(value) => value
                .to_str()
                .ok()
                .and_then(|v| v.parse::<axum::http::uri::Authority>().ok()),
            None => request.uri().authority().cloned(),
        }
        .ok_or(HostRefusal::Malformed)?;
        let host = authority
            .host()
            .trim_matches(['[', ']'])
            .to_ascii_lowercase();
        let port = authority.port_u16();
        let allowed = self
            .hosts
            .iter()
            .any(|a| a.host == host && a.port.is_none_or(|p| Some(p) == port));
        if allowed {
            Ok(())
        } else {
            Err(HostRefusal::NotAllowed)
        }
    }

    /// Answers a `tools/call` in an established session with a plain JSON response,
    /// which Streamable HTTP allows for any request (every revision: "the server MUST
    /// either return `Content-Type: text/event-stream` ... or `application/json`").
    /// Our tools never send notifications or requests before their result, so the
    /// per-request SSE stream and session worker rmcp would use add only cost.
    ///
    /// `None` when the session is not live here: rmcp then restores it from the
    /// store or answers 404, exactly as before.
    async fn answer_directly(
        &self,
        call: DirectCall,
        granted: ScopeSet,
        prefetched: Option<Prefetched>,
    ) -> Option<Response> {
        if !self.sessions.has_session(&call.session).await.ok()? {
            return None;
        }
        let id = call.id;
        let message = match self.server.call(call.params, granted, prefetched).await {
            Ok(result) => {
                ServerJsonRpcMessage::response(ServerResult::CallToolResult(result), id.clone())
            }
            Err(error) => ServerJsonRpcMessage::error(error, Some(id.clone())),
        };
        // From here on the call has run: answer it, never hand it to rmcp to run again.
        let body = serde_json::to_vec(&message).unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot encode a tool result");
            let error = ErrorData::internal_error("the tool's result could not be encoded", None);
            serde_json::to_vec(&ServerJsonRpcMessage::error(error, Some(id))).unwrap_or_default()
        });
        Some(
            (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                body,
            )
                .into_response(),
        )
    }
}

/// A `tools/call` the guard may answer itself.
struct DirectCall {
    session: SessionId,
    id: RequestId,
    params: CallToolRequestParams,
}

impl DirectCall {
    /// The call in `body`, when nothing about the request needs rmcp's judgement: a
    /// session id, a 2025 revision (no per-request metadata or standard headers),
    /// `Accept` naming JSON and SSE without weights, a JSON `Content-Type`, and a
    /// well-formed `tools/call`. Everything else goes to rmcp, which answers it
    /// (400, 404, 406, 415, ...) as it always has.
    fn parse(headers: &HeaderMap, body: &[u8]) -> Option<Self> {
        let session = headers.get(SESSION_ID)?.to_str().ok()?;
        let version = match headers.get(PROTOCOL_VERSION) {
            Some(v) => Some(v.to_str().ok()?),
            None => None,
        };
        if !version.is_none_or(|v| SESSION_REVISIONS.contains(&v)) {
            return None;
        }
        if !accepts_json_and_sse(headers) || !is_json(headers) {
            return None;
        }
        let call: CallRequest = serde_json::from_slice(body).ok()?;
        if call.jsonrpc != "2.0" || call.method != "tools/call" {
            return None;
        }
        let params = call.params;
        let per_request_meta = params
            .meta
            .as_ref()
            .is_some_and(|m| m.protocol_version().is_some());
        if per_request_meta || params.input_responses.is_some() || params.request_state.is_some() {
            return None;
        }
        Some(DirectCall {
            session: SessionId::from(session),
            id: call.id,
            params,
        })
    }
}

const SESSION_ID: &str = "mcp-session-id";
const PROTOCOL_VERSION: &str = "mcp-protocol-version";

/// The revisions with sessions and without per-request metadata or standard headers.
const SESSION_REVISIONS: [&str; 3] = ["2025-03-26", "2025-06-18", "2025-11-25"];

/// A JSON-RPC `tools/call` request, as the direct path reads it.
#[derive(Deserialize)]
struct CallRequest {
    jsonrpc: String,
    id: RequestId,
    method: String,
    params: CallToolRequestParams,
}

/// `Accept` names both `application/json` and `text/event-stream`. Weighted entries
/// (`;q=`) are left to rmcp's full parser.
fn accepts_json_and_sse(headers: &HeaderMap) -> bool {
    let (mut json, mut sse) = (false, false);
    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else {
            return false;
        };
        for entry in value.split(',') {
            let mut params = entry.split(';');
            let essence = params.next().unwrap_or("").trim();
            if params.any(|p| p.trim_start().to_ascii_lowercase().starts_with("q=")) {
                return false;
            }
            json |= essence.eq_ignore_ascii_case("application/json");
            sse |= essence.eq_ignore_ascii_case("text/event-stream");
        }
    }
    json && sse
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/json")
        })
}

/// rmcp's transport behind one `Arc`. Routers clone their services for every
/// request, and rmcp's own clone copies its whole configuration (host and origin
/// lists, a cancellation token); this clone is one reference count.
#[derive(Clone)]
pub struct McpService(Arc<StreamableHttpService<ArticleServer, LocalSessionManager>>);

impl tower::Service<Request> for McpService {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let transport = self.0.clone();
        Box::pin(async move { Ok(transport.handle(request).await.map(Body::new)) })
    }
}

/// `GET /.well-known/oauth-protected-resource[/mcp]`.
pub async fn protected_resource_metadata(State(state): State<AppState>) -> impl IntoResponse {
    let scopes: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
    Json(json!({
        "resource": state.config.public_url.mcp_url(),
        "authorization_servers": [state.config.public_url.as_str()],
        "scopes_supported": scopes,
        "bearer_methods_supported": ["header"],
        "resource_name": "Gatehouse",
        "resource_documentation": state.config.public_url.join("/"),
    }))
}

/// RFC 9728 §3.1: the metadata URL for the resource `<origin>/mcp`.
fn metadata_url(public_url: &PublicUrl) -> String {
    public_url.join("/.well-known/oauth-protected-resource/mcp")
}

/// A JSON-RPC error body with an HTTP status.
fn rpc_error(status: StatusCode, code: i64, message: &str) -> Response {
    (
        status,
        Json(
            json!({ "jsonrpc": "2.0", "error": { "code": code, "message": message }, "id": null }),
        ),
    )
        .into_response()
}

/// RFC 6750 §3: 401 with the challenge that sends clients to our metadata.
fn unauthorized(public_url: &PublicUrl, invalid: Option<&str>) -> Response {
    let mut challenge = String::from("Bearer ");
    if let Some(description) = invalid {
        challenge.push_str(&format!(
            "error=\"invalid_token\", error_description=\"{description}\", "
        ));
    }
    challenge.push_str(&format!(
        "resource_metadata=\"{}\", scope=\"{}\"",
        metadata_url(public_url),
        BASELINE.as_str()
    ));
    let mut response = rpc_error(
        StatusCode::UNAUTHORIZED,
        -32001,
        invalid.unwrap_or(
            "authorization required: send a bearer token from this server's authorization server",
        ),
    );
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

fn insufficient_scope(public_url: &PublicUrl, needed: ScopeSet) -> Response {
    let challenge = format!(
        "Bearer error=\"insufficient_scope\", scope=\"{needed}\", resource_metadata=\"{}\"",
        metadata_url(public_url)
    );
    let mut response = rpc_error(
        StatusCode::FORBIDDEN,
        -32001,
        &format!("this call needs the scopes {needed}; authorize again to grant them"),
    );
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Just enough of a JSON-RPC message to know which scope it needs.
#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(borrow)]
    method: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    params: Option<PeekParams<'a>>,
}

#[derive(Deserialize)]
struct PeekParams<'a> {
    #[serde(borrow)]
    name: Option<std::borrow::Cow<'a, str>>,
}

enum Needs {
    Scopes(ScopeSet),
    Batch,
}

fn needed_scopes(body: &[u8]) -> Needs {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        return Needs::Batch;
    }
    // Anything unparsable goes on to the transport, which answers it properly.
    let Ok(peek) = serde_json::from_slice::<Peek>(body) else {
        return Needs::Scopes(ScopeSet::default());
    };
    Needs::Scopes(match peek.method.as_deref() {
        Some("tools/call") => peek
            .params
            .and_then(|p| p.name)
            .map(|n| tool_scopes(&n))
            .unwrap_or_default(),
        Some("resources/read") | Some("resources/list") => ScopeSet::only(Scope::ReadArticles),
        _ => ScopeSet::default(),
    })
}

/// The scopes calling the tool `name` needs (none for a tool we do not have: rmcp
/// answers those).
fn tool_scopes(name: &str) -> ScopeSet {
    required_scope(name).map(ScopeSet::only).unwrap_or_default()
}

fn store_unavailable() -> Response {
    rpc_error(
        StatusCode::SERVICE_UNAVAILABLE,
        -32603,
        "the server cannot reach its store; try again shortly",
    )
}

/// The guard in front of the MCP service.
pub async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let public_url = &state.config.public_url;
    match state.mcp.check_host(&request) {
        Ok(()) => {}
        Err(HostRefusal::Malformed) => {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                -32600,
                "the Host header is invalid",
            )
        }
        Err(HostRefusal::NotAllowed) => {
            tracing::warn!("refused an MCP request for a Host that is not ours");
            return rpc_error(
                StatusCode::FORBIDDEN,
                -32600,
                "this Host is not served here; add it with --allowed-host",
            );
        }
    }
    if let Some(origin) = request.headers().get(header::ORIGIN) {
        let allowed = origin.to_str().is_ok_and(|o| state.mcp.origins.allows(o));
        if !allowed {
            return rpc_error(
                StatusCode::FORBIDDEN,
                -32600,
                "this Origin may not call the MCP endpoint",
            );
        }
    }
    const INVALID: &str = "the access token is invalid, expired or revoked";
    let Some(token) = bearer(request.headers()) else {
        return unauthorized(public_url, None);
    };
    let Some(token_key) = AuthServer::access_token_key(token) else {
        return unauthorized(public_url, Some(INVALID));
    };

    // A POST's body is read before the token is looked up, so that the one record a
    // direct tool call starts with travels to the store with the token's: one round
    // trip per call. Nothing read is used before the token and its scopes pass.
    let (mut parts, body) = request.into_parts();
    let (bytes, body) = if parts.method == Method::POST {
        match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
            Ok(bytes) => (Some(bytes), Body::empty()),
            Err(_) => {
                return rpc_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    -32600,
                    "the request body is too large",
                )
            }
        }
    } else {
        (None, body)
    };
    let direct = bytes
        .as_deref()
        .and_then(|body| DirectCall::parse(&parts.headers, body));
    let ahead = direct
        .as_ref()
        .and_then(|call| ArticleServer::first_read(&call.params));
    let keys: Vec<&Key> = std::iter::once(&token_key).chain(&ahead).collect();
    let mut records = match tokio::time::timeout(VERIFY_TIMEOUT, state.store.get_many(&keys)).await
    {
        Ok(Ok(records)) if records.len() == keys.len() => records,
        Ok(Ok(_)) => {
            tracing::error!("the store answered the wrong number of records");
            return store_unavailable();
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "store failure while checking a token");
            return store_unavailable();
        }
        Err(_) => {
            tracing::error!("token check timed out");
            return store_unavailable();
        }
    };
    let prefetched = ahead.map(|key| Prefetched {
        key,
        value: records.pop().flatten(),
    });
    let access = match state.auth.access_token_from(records[0].as_deref()) {
        Ok(Some(access)) => access,
        Ok(None) => return unauthorized(public_url, Some(INVALID)),
        Err(e) => {
            tracing::error!(error = %e, "unreadable token record");
            return store_unavailable();
        }
    };

    let body = match bytes {
        Some(bytes) => {
            // A direct call has been parsed already; read nothing twice.
            let needs = match &direct {
                Some(call) => Needs::Scopes(tool_scopes(&call.params.name)),
                None => needed_scopes(&bytes),
            };
            match needs {
                // One JSON-RPC message per POST since 2025-06-18.
                Needs::Batch => {
                    return rpc_error(
                        StatusCode::BAD_REQUEST,
                        -32600,
                        "batched JSON-RPC requests are not supported",
                    )
                }
                Needs::Scopes(needed) if !needed.is_subset_of(access.scopes) => {
                    let mut wanted = access.scopes;
                    needed.iter().for_each(|s| wanted.insert(s));
                    return insufficient_scope(public_url, wanted);
                }
                Needs::Scopes(_) => {}
            }
            if let Some(call) = direct {
                let answer = state
                    .mcp
                    .answer_directly(call, access.scopes, prefetched)
                    .await;
                if let Some(answer) = answer {
                    return answer;
                }
            }
            Body::from(bytes)
        }
        None => body,
    };
    parts.extensions.insert(access);
    next.run(Request::from_parts(parts, body)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let policy = OriginPolicy::new(
            &PublicUrl::parse("https://gate.example.com").expect("url"),
            &["https://app.example.org".to_owned()],
        );
        for ok in [
            "https://gate.example.com",
            "http://localhost:6274",
            "http://127.0.0.1:1234",
            "http://[::1]:80",
            "https://app.example.org",
        ] {
            assert!(policy.allows(ok), "{ok}");
        }
        for bad in [
            "https://evil.example",
            "null",
            "https://gate.example.com.evil.example",
            "http://gate.example.com",
        ] {
            assert!(!policy.allows(bad), "{bad}");
        }
    }

    #[test]
    fn scopes_needed_by_calls() {
        let needs = |body: &str| match needed_scopes(body.as_bytes()) {
            Needs::Scopes(s) => Some(s.to_string()),
            Needs::Batch => None,
        };
        assert_eq!(
            needs(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#).as_deref(),
            Some("")
        );
        assert_eq!(
            needs(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"create_article"}}"#).as_deref(),
            Some("write:articles")
        );
        assert_eq!(
            needs(r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"article://x"}}"#).as_deref(),
            Some("read:articles")
        );
        assert_eq!(needs(r#" [{"jsonrpc":"2.0"}]"#), None);
    }
}
