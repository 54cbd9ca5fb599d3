//! The built-in article server at `/mcp`: rmcp's Streamable HTTP transport, and a
//! direct path for `tools/call` in live sessions.
//!
//! The direct path answers with a plain JSON response, which Streamable HTTP allows for
//! any request (every revision: "the server MUST either return `Content-Type:
//! text/event-stream` ... or `application/json`"). Our tools never send notifications
//! or requests before their result, so the per-request SSE stream and session worker
//! rmcp would use add only cost. Whatever the direct path is unsure of goes to rmcp.

use std::sync::Arc;

use axum::{
    body::{Body, Bytes},
    http::{header, request::Parts, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use rmcp::{
    model::{CallToolRequestParams, RequestId, ServerJsonRpcMessage, ServerResult},
    transport::streamable_http_server::{
        session::{local::LocalSessionManager, store::SessionStore, SessionId, SessionManager},
        StreamableHttpServerConfig, StreamableHttpService,
    },
    ErrorData,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use super::{
    direct_session,
    guard::{rebuild, ToolOutcome},
    reply::{code, rpc_error},
    sessions::StoreSessions,
    Endpoint, Guarded, GuardedBody, Prepared, MAX_BODY_BYTES, SESSION_ID,
};
use crate::{
    articles::Articles,
    mcp::{
        articles::{tool_access, ArticlePolicy, ArticleServer, Outcome, Prefetched},
        call::Message,
        Call, CallPolicy, Need,
    },
    oauth::scope::ScopeSet,
    resource::Resource,
    store::SharedStore,
};

pub struct ArticleEndpoint {
    resource: Arc<Resource>,
    server: ArticleServer,
    sessions: Arc<LocalSessionManager>,
    /// The sessions' records, as rmcp keeps them.
    records: StoreSessions,
    transport: StreamableHttpService<ArticleServer, LocalSessionManager>,
}

impl ArticleEndpoint {
    pub fn new(
        resource: Arc<Resource>,
        store: SharedStore,
        articles: Articles,
        max_sessions_per_client: usize,
        shutdown: CancellationToken,
    ) -> Self {
        let mut config = StreamableHttpServerConfig::default()
            // The guard alone checks Host and Origin, for this path and the direct one.
            .disable_allowed_hosts()
            .disable_allowed_origins()
            .with_max_request_body_bytes(MAX_BODY_BYTES)
            // Sessionless (2026-07-28) requests that only answer get plain JSON.
            .with_json_response(true)
            .with_cancellation_token(shutdown);
        config.session_store = Some(Arc::new(StoreSessions(store.clone())));
        let server = ArticleServer::new(articles, resource.clone())
            .with_max_sessions_per_client(max_sessions_per_client);
        let sessions = Arc::new(LocalSessionManager::default());
        let transport = {
            let server = server.clone();
            StreamableHttpService::new(move || Ok(server.for_session()), sessions.clone(), config)
        };
        ArticleEndpoint {
            resource,
            server,
            sessions,
            records: StoreSessions(store),
            transport,
        }
    }

    /// Whether rmcp would start a session for this request: an `initialize`, or a
    /// session it would restore from the store (one not live here).
    async fn opens_session(&self, parts: &Parts, body: Option<Bytes>) -> bool {
        // A DELETE ends a session; rmcp never restores one for it.
        if parts.method == axum::http::Method::DELETE {
            return false;
        }
        match parts.headers.get(&SESSION_ID).and_then(|v| v.to_str().ok()) {
            Some(id) => !self
                .sessions
                .has_session(&SessionId::from(id))
                .await
                .unwrap_or(false),
            None => body.is_some_and(|bytes| {
                matches!(Message::peek(&bytes), Message::Single(call) if call.method() == "initialize")
            }),
        }
    }

    /// Sessions live on this instance.
    pub async fn live_sessions(&self) -> usize {
        self.sessions.sessions.read().await.len()
    }

    /// Answers a direct call, or `None` when its session is not live here: rmcp then
    /// restores it from the store or answers 404, exactly as without the direct path.
    async fn answer_directly(
        &self,
        call: DirectCall,
        granted: &ScopeSet,
        prefetched: Option<Prefetched>,
    ) -> Option<Response> {
        if !self.sessions.has_session(&call.session).await.ok()? {
            return None;
        }
        let id = call.id;
        let mut outcome = ToolOutcome::Ok;
        // Once the call has run, it is answered here: never handed to rmcp to run again.
        let message = match self.server.call(call.params, granted, prefetched).await {
            Ok(Outcome::Structured(raw)) => {
                let body = serde_json::to_vec(&StructuredAnswer::new(&id, &raw))
                    .unwrap_or_else(|e| cannot_encode(e, id));
                return Some(answer(body, outcome));
            }
            Ok(Outcome::Result(result)) => {
                if result.is_error == Some(true) {
                    outcome = ToolOutcome::Error;
                }
                // As rmcp answers the 2025 revisions: without 2026-07-28's resultType.
                let mut result = ServerResult::CallToolResult(result);
                result.strip_result_type_for_legacy_peer();
                ServerJsonRpcMessage::response(result, id.clone())
            }
            Err(error) => {
                outcome = ToolOutcome::Error;
                ServerJsonRpcMessage::error(error, Some(id.clone()))
            }
        };
        let body = serde_json::to_vec(&message).unwrap_or_else(|e| cannot_encode(e, id));
        Some(answer(body, outcome))
    }
}

/// An encoding failure's answer (none is expected: the values are ours).
fn cannot_encode(error: serde_json::Error, id: RequestId) -> Vec<u8> {
    tracing::error!(error = %error, "cannot encode a tool result");
    let error = ErrorData::internal_error("the tool's result could not be encoded", None);
    serde_json::to_vec(&ServerJsonRpcMessage::error(error, Some(id))).unwrap_or_default()
}

/// The direct path's plain JSON answer, with the call's outcome for the activity log.
fn answer(body: Vec<u8>, outcome: ToolOutcome) -> Response {
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    response.extensions_mut().insert(outcome);
    response
}

/// The answer to a call with a structured result, as rmcp writes
/// `CallToolResult::structured` to a 2025 revision (no `resultType`; member order as
/// rmcp's), from the result's JSON text: that text is the text content, escaped as
/// a string, and the structured content, as it is.
#[derive(Serialize)]
struct StructuredAnswer<'a> {
    jsonrpc: &'static str,
    id: &'a RequestId,
    result: StructuredResult<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StructuredResult<'a> {
    content: [TextContent<'a>; 1],
    structured_content: &'a RawValue,
    is_error: bool,
}

#[derive(Serialize)]
struct TextContent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
}

impl<'a> StructuredAnswer<'a> {
    fn new(id: &'a RequestId, raw: &'a RawValue) -> Self {
        StructuredAnswer {
            jsonrpc: "2.0",
            id,
            result: StructuredResult {
                content: [TextContent {
                    kind: "text",
                    text: raw.get(),
                }],
                structured_content: raw,
                is_error: false,
            },
        }
    }
}

/// How long removing an abandoned session's record may take (the store has just
/// failed once).
const ABANDON_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

impl Endpoint for ArticleEndpoint {
    async fn abandon(&self, session: &str) {
        let _ = self.sessions.close_session(&SessionId::from(session)).await;
        // Its record, if rmcp wrote one, is of no use without a binding (the guard
        // answers 404): removed if the store lets it, else it expires.
        let removal = self.records.delete(session);
        let _ = tokio::time::timeout(ABANDON_TIMEOUT, removal).await;
    }

    type Prepared = Option<DirectCall>;

    async fn holds(&self, session: &str) -> bool {
        let id = SessionId::from(session);
        self.sessions.has_session(&id).await.unwrap_or(true)
            || self.records.may_restore(session).await
    }

    fn resource(&self) -> &Arc<Resource> {
        &self.resource
    }

    async fn needs(&self, call: &Call<'_>) -> Need {
        ArticlePolicy.needs(call)
    }

    fn prepare(&self, parts: &Parts, body: Option<&Bytes>) -> Prepared<Option<DirectCall>> {
        let direct = body.and_then(|body| DirectCall::parse(&parts.headers, body));
        let read_ahead = direct
            .as_ref()
            .and_then(|call| ArticleServer::first_read(&call.params));
        let need = direct
            .as_ref()
            .map(|call| tool_access(&call.params.name).map_or(Need::Nothing, Need::Scope));
        let tool = direct.as_ref().map(|call| call.params.name.to_string());
        Prepared {
            state: direct,
            read_ahead,
            need,
            tool,
        }
    }

    async fn serve(&self, request: Guarded<Option<DirectCall>>) -> Response {
        let Guarded {
            parts,
            body,
            access,
            prepared,
            read_ahead,
        } = request;
        if let Some(call) = prepared {
            let prefetched = read_ahead.map(|(key, value)| Prefetched { key, value });
            if let Some(answer) = self.answer_directly(call, &access.scopes, prefetched).await {
                return answer;
            }
        }
        if !self.server.has_room_for(&access.client_id) {
            let read = match &body {
                GuardedBody::Read(bytes) => Some(bytes.clone()),
                GuardedBody::Stream(_) => None,
            };
            if self.opens_session(&parts, read).await {
                return rpc_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    code::INVALID_REQUEST,
                    &self.server.too_many_sessions(),
                );
            }
        }
        self.transport
            .handle(rebuild(parts, body, access))
            .await
            .map(Body::new)
    }
}

/// A `tools/call` the guard may answer itself.
pub struct DirectCall {
    session: SessionId,
    id: RequestId,
    params: CallToolRequestParams,
}

/// A JSON-RPC `tools/call` request, as the direct path reads it.
#[derive(Deserialize)]
struct CallRequest {
    jsonrpc: String,
    id: RequestId,
    method: String,
    params: CallToolRequestParams,
}

impl DirectCall {
    /// The call in `body`, when nothing about the request needs rmcp's judgement: a
    /// session id, a 2025 revision (no per-request metadata or standard headers),
    /// `Accept` naming JSON and SSE without weights, a JSON `Content-Type`, and a
    /// well-formed `tools/call`. Everything else goes to rmcp, which answers it
    /// (400, 404, 406, 415, ...) as it always has.
    fn parse(headers: &HeaderMap, body: &[u8]) -> Option<Self> {
        let (session, _) = direct_session(headers)?;
        // serde reads a struct from an array too: a batch goes to the guard's refusal.
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
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
