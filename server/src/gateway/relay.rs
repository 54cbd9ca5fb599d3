//! The relay between a downstream MCP client and an upstream MCP server, on rmcp for
//! both sides.
//!
//! Downstream, rmcp's Streamable HTTP server drives a [`GatewayHandler`] per session
//! (and per sessionless 2026-07-28 request); rmcp accepts only a `ServerHandler`
//! there, so each request kind has a method that rebuilds the request and hands it to
//! one [`GatewayHandler::forward`]. Upstream, an rmcp client ([`UpClient`]) speaks
//! to the server and relays what the server sends on its own: progress (with the
//! client's progress token restored), logging and `list_changed` notifications, and
//! sampling, elicitation and roots requests, whose answers go back up.
//!
//! rmcp gives each leg its own request ids and progress tokens, so the relay keeps
//! the mapping ([`Routes`]) and bridges cancellation both ways. A session's upstream
//! speaks the revision its client negotiated, capped at what the upstream knows.
//!
//! What rmcp's typed model does not know (vendor fields outside `_meta`) is not
//! relayed: every message is parsed and re-serialised.

use std::{
    borrow::Cow,
    collections::HashMap,
    sync::{Arc, OnceLock},
    time::Duration,
};

use futures::future::BoxFuture;
use rmcp::{
    model::*,
    service::{
        InboundStreamOrigin, NotificationContext, OriginatingRequestId, Peer, PeerRequestOptions,
        RequestContext, RunningService, RxJsonRpcMessage, ServiceError, TxJsonRpcMessage,
    },
    transport::Transport,
    ErrorData, RoleClient, RoleServer, ServerHandler,
};
use serde_json::json;
use tokio::sync::{mpsc, Mutex};

use super::upstream::{Shared, UpSession};
use crate::{mcp::Access, oauth::records::AccessToken};

/// How long a request relayed to the client (sampling, elicitation, roots) may wait
/// for its answer: a person may be reading an elicitation form. (The call it
/// belongs to keeps its own `timeout`, which progress restarts; when the call ends,
/// its requests are cancelled: see [`CallEnd`].)
const DOWNSTREAM_TIMEOUT: Duration = Duration::from_secs(300);

/// How many of an upstream connection's requests may wait for the client at once:
/// one for each of a session's requests in flight. rmcp handles every request on a
/// task of its own, so without a bound a server that sends requests without end
/// (a bug, or a package gone bad) would hold a task each for up to
/// [`DOWNSTREAM_TIMEOUT`]. The direct path has its own bound per call.
pub const MAX_ASKS_WAITING: usize = 64;

/// How many of an upstream connection's notifications (logging, `list_changed`,
/// resource updates) may wait for its client at once. rmcp hands each to a task of
/// its own, and the client may read its stream slowly or not at all; past this they
/// are dropped, so a server that writes them without end costs bounded memory.
pub const MAX_NOTES_WAITING: usize = 32;

/// How many of one call's progress notifications may wait for its client. They go
/// to the client from a task of the call's own, so that a client that does not read
/// holds up only its own call, never the upstream connection (shared by every
/// client's sessionless requests); past this they are dropped (progress is a hint).
const PROGRESS_QUEUE: usize = 16;

/// How long a call's answer waits for the progress sent before it to reach the
/// client.
const PROGRESS_FLUSH: Duration = Duration::from_secs(5);

/// One upstream connection's mapping between the legs.
#[derive(Default)]
pub struct Routes {
    /// Upstream progress token → the call's progress queue, the client's own token,
    /// and the last progress sent (progress must increase; rmcp delivers
    /// notifications from separate tasks, so late ones are dropped).
    progress: HashMap<ProgressToken, (mpsc::Sender<ProgressNotification>, ProgressToken, f64)>,
    /// Upstream request id → the client's peer and its own request id, to route the
    /// upstream's requests to the stream of the call they belong to, and the call's
    /// [`CallEnd`].
    inflight: HashMap<RequestId, (Peer<RoleServer>, RequestId, CallEnd)>,
}

/// The end of a relayed call, for the upstream's requests relayed during it
/// (sampling, elicitation, roots): when the call ends, those still open are
/// cancelled at the client, whose form would otherwise stay open for an answer
/// nobody waits for (a server may give its request up without saying so: the
/// Python SDK's does when its tool is cancelled). rmcp sends such a cancellation on
/// the session's own stream (GET), where clients listen for what belongs to no
/// call. Each request holds `open` (shared) while it waits, and the call takes it
/// (exclusive, for a moment at most) before its answer goes out, so that the
/// cancellations are handed on first.
#[derive(Clone, Default)]
struct CallEnd {
    ended: tokio_util::sync::CancellationToken,
    open: Arc<tokio::sync::RwLock<()>>,
}

/// How long a call's answer waits for the cancellations of its requests to the
/// client to go out.
const CANCELS_FLUSH: Duration = Duration::from_secs(1);

/// The upstream-facing side: an rmcp client service for one upstream connection.
pub struct UpClient {
    pub upstream: String,
    /// What Gatehouse says of itself upstream: the client's own `initialize`
    /// parameters for a session, Gatehouse's identity for a pooled connection.
    pub info: ClientConfig,
    /// The session's client, for what belongs to no call (logging, `list_changed`);
    /// `None` for pooled connections, which have no single client.
    pub session_peer: Option<Peer<RoleServer>>,
    pub routes: Arc<Mutex<Routes>>,
    /// The upstream's tool policy, told when its tools change.
    pub policy: Arc<super::policy::ToolPolicy>,
    /// Places for the upstream's requests waiting for the client
    /// ([`MAX_ASKS_WAITING`]).
    pub asks: Arc<tokio::sync::Semaphore>,
    /// Places for its notifications waiting for the client ([`MAX_NOTES_WAITING`]).
    pub notes: Arc<tokio::sync::Semaphore>,
}

/// A task that ends when its owner drops it.
struct OwnedTask(tokio::task::JoinHandle<()>);

impl Drop for OwnedTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn relay_failed(upstream: &str, what: &str, e: impl std::fmt::Display) -> ErrorData {
    ErrorData::internal_error(
        format!("upstream {upstream}: {what}: {e}"),
        Some(json!({ "upstream": upstream })),
    )
}

impl rmcp::Service<RoleClient> for UpClient {
    async fn handle_request(
        &self,
        mut request: ServerRequest,
        context: RequestContext<RoleClient>,
    ) -> Result<ClientResult, ErrorData> {
        if let ServerRequest::PingRequest(_) = request {
            return Ok(ClientResult::empty(()));
        }
        // Held until the client answers or the wait ends.
        let Ok(_place) = self.asks.clone().try_acquire_owned() else {
            return Err(ErrorData::internal_error(
                format!(
                    "{MAX_ASKS_WAITING} requests of upstream {} already wait for the client",
                    self.upstream
                ),
                Some(json!({ "upstream": self.upstream, "reason": "too_many_requests" })),
            ));
        };
        // Which call does this request belong to? An HTTP upstream says so
        // (SEP-2260); for stdio, the one call in flight, if there is exactly one and
        // the connection is a session's. A pooled connection serves many clients:
        // there a guess could hand one client's request to another, whose call
        // happens to be the one in flight.
        let origin = context.extensions.get::<InboundStreamOrigin>().cloned();
        let target = {
            let routes = self.routes.lock().await;
            match &origin {
                Some(InboundStreamOrigin::OutboundRequest(up)) => routes.inflight.get(up).cloned(),
                _ if routes.inflight.len() == 1 && self.session_peer.is_some() => {
                    routes.inflight.values().next().cloned()
                }
                _ => None,
            }
        };
        let (downstream, call, end) = match (target, &self.session_peer) {
            (Some((peer, id, end)), _) => (peer, Some(id), Some(end)),
            (None, Some(peer)) => (peer.clone(), None, None),
            (None, None) => {
                return Err(ErrorData::invalid_request(
                    "this request cannot reach a client: the connection is shared",
                    None,
                ))
            }
        };
        // Held while it waits (see `CallEnd`); a call that has ended meanwhile
        // gets no more requests relayed.
        let _open = match &end {
            Some(end) => {
                let open = end.open.clone().read_owned().await;
                if end.ended.is_cancelled() {
                    return Err(ErrorData::internal_error(
                        "the call this request belonged to has ended",
                        None,
                    ));
                }
                Some(open)
            }
            None => None,
        };
        let call_ended = async {
            match &end {
                Some(end) => end.ended.cancelled().await,
                None => std::future::pending().await,
            }
        };
        let mut meta = context.meta.clone();
        meta.0 .0.remove("progressToken");
        *request.get_meta_mut() = meta;
        if let Some(id) = call {
            request.extensions_mut().insert(OriginatingRequestId(id));
        }
        // rmcp stamps a request with the id of the request being handled (a
        // task-local: here the upstream's id), which would send it to the wrong
        // stream; task-locals do not cross a spawn.
        let handle = tokio::spawn(async move {
            downstream
                .send_request_with_option(
                    request,
                    PeerRequestOptions::with_timeout(DOWNSTREAM_TIMEOUT),
                )
                .await
        })
        .await
        .map_err(|e| relay_failed(&self.upstream, "relaying to the client failed", e))?
        .map_err(|e| relay_failed(&self.upstream, "the client cannot be reached", e))?;
        let (id, peer) = (handle.id.clone(), handle.peer.clone());
        let reason = tokio::select! {
            answer = handle.await_response() => {
                return answer.map_err(|e| match e {
                    ServiceError::McpError(e) => e,
                    e => relay_failed(&self.upstream, "the client did not answer", e),
                })
            }
            () = context.ct.cancelled() => "cancelled by the server",
            () = call_ended => "the call it belonged to has ended",
        };
        let _ = peer
            .send_notification(ServerNotification::CancelledNotification(
                CancelledNotification::new(CancelledNotificationParam::new(
                    Some(id),
                    Some(reason.into()),
                )),
            ))
            .await;
        Err(ErrorData::internal_error(reason, None))
    }

    async fn handle_notification(
        &self,
        mut notification: ServerNotification,
        context: NotificationContext<RoleClient>,
    ) -> Result<(), ErrorData> {
        if let ServerNotification::ToolListChangedNotification(_) = notification {
            self.policy.mark_stale();
        }
        let target = match &mut notification {
            // Relayed in order by the transport (`InOrder`), which hands them on to
            // rmcp only for the call's timeout.
            ServerNotification::ProgressNotification(_) => return Ok(()),
            // Its ids are the upstream's: rmcp already cancelled the request it names.
            // (One the direct path relayed is given up when its call ends.)
            ServerNotification::CancelledNotification(_) => return Ok(()),
            _ => match &self.session_peer {
                Some(peer) => peer.clone(),
                None => return Ok(()),
            },
        };
        // Held until the client's stream has taken it.
        let Ok(_place) = self.notes.clone().try_acquire_owned() else {
            crate::warn_throttled!(
                upstream = %self.upstream,
                "{MAX_NOTES_WAITING} notifications of an upstream already wait for the client; one is dropped"
            );
            return Ok(());
        };
        *notification.get_meta_mut() = context.meta;
        target
            .send_notification(notification)
            .await
            .map_err(|e| relay_failed(&self.upstream, "the client cannot be reached", e))
    }

    fn get_info(&self) -> ClientConfig {
        self.info.clone()
    }
}

/// Where `initialize` leaves the session's upstream connection, for the HTTP layer to
/// find it by the session id rmcp then answers with (the direct path's way in).
#[derive(Clone, Default)]
pub struct SessionSlot(pub Arc<OnceLock<Arc<UpSession>>>);

/// The downstream-facing side: one per session, or per sessionless request.
#[derive(Clone)]
pub struct GatewayHandler {
    shared: Arc<Shared>,
    session: Arc<OnceLock<Arc<UpSession>>>,
}

/// Re-reads a result as the type a method must return (rmcp's results are an
/// untagged union: `{}` reads as an empty result, for instance).
fn coerce<T: serde::de::DeserializeOwned>(
    upstream: &str,
    result: ServerResult,
) -> Result<T, ErrorData> {
    serde_json::to_value(&result)
        .and_then(serde_json::from_value)
        .map_err(|e| relay_failed(upstream, "it sent an unexpected result", e))
}

/// The token the guard attached to the request.
fn granted(context: &RequestContext<RoleServer>) -> Option<&AccessToken> {
    context
        .extensions
        .get::<http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<AccessToken>())
}

impl GatewayHandler {
    pub fn new(shared: Arc<Shared>) -> Self {
        GatewayHandler {
            shared,
            session: Arc::default(),
        }
    }

    fn name(&self) -> &str {
        &self.shared.config.name
    }

    /// This session's upstream, or a pooled one for a sessionless request.
    async fn upstream(&self) -> Result<Arc<UpSession>, ErrorData> {
        match self.session.get() {
            Some(session) => Ok(session.clone()),
            None => self.shared.pooled().await,
        }
    }

    /// The guard checked the scope from its reading of the body; check again from
    /// rmcp's, so that a body the two read differently cannot open a write path.
    fn check_scope(
        &self,
        access: Access,
        context: &RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let resource = &self.shared.resource;
        let needed = match access {
            Access::Read => &resource.read,
            Access::Write => &resource.write,
        };
        match granted(context) {
            Some(token) if token.scopes.contains(needed) => Ok(()),
            _ => Err(ErrorData::invalid_request(
                format!("this token lacks the {needed} scope"),
                None,
            )),
        }
    }

    async fn forward(
        &self,
        request: ClientRequest,
        context: RequestContext<RoleServer>,
    ) -> Result<ServerResult, ErrorData> {
        // Sessionless requests share the pool: each client holds at most its share.
        let _client_place = match self.session.get() {
            Some(_) => None,
            None => {
                let Some(token) = granted(&context) else {
                    return Err(ErrorData::invalid_request("no token", None));
                };
                Some(self.shared.pooled_place(&token.client_id)?)
            }
        };
        let up = self.upstream().await?;
        if up.peer().is_transport_closed() {
            return Err(self.shared.closed_error());
        }
        let _place = up.call_place().ok_or_else(|| self.shared.busy_error())?;
        let client_token = context.meta.get_progress_token();
        let mut meta = context.meta.clone();
        meta.0
             .0
            .retain(|k, _| k != "progressToken" && !k.starts_with("io.modelcontextprotocol/"));
        let options = PeerRequestOptions::with_timeout(self.shared.config.timeout)
            .reset_timeout_on_progress()
            .with_max_total_timeout(self.shared.config.timeout * 10)
            .with_meta(meta);
        let mut relaying = None;
        let end = CallEnd::default();
        let handle = {
            // Registered under the lock, before a fast upstream's first progress
            // notification can look for it.
            let mut routes = up.routes.lock().await;
            let handle = up
                .peer()
                .send_request_with_option(request, options)
                .await
                .map_err(|e| self.shared.error(e))?;
            if let Some(token) = client_token {
                let (queue, mut waiting) = mpsc::channel(PROGRESS_QUEUE);
                let client = context.peer.clone();
                relaying = Some(OwnedTask(tokio::spawn(async move {
                    while let Some(progress) = waiting.recv().await {
                        let progress = ServerNotification::ProgressNotification(progress);
                        let _ = client.send_notification(progress).await;
                    }
                })));
                routes
                    .progress
                    .insert(handle.progress_token.clone(), (queue, token, f64::MIN));
            }
            routes.inflight.insert(
                handle.id.clone(),
                (context.peer.clone(), context.id.clone(), end.clone()),
            );
            handle
        };
        let (up_id, up_token, peer) = (
            handle.id.clone(),
            handle.progress_token.clone(),
            handle.peer.clone(),
        );
        // Awaited to its end, also when the client cancels: rmcp forgets a request's
        // progress watcher only there (or in `RequestHandle::cancel`, which would
        // leave the answer unawaited), so each cancelled request would otherwise leave
        // one behind on a connection that may serve clients for days. Once the
        // cancellation is sent, rmcp ends the wait at once; its timeouts bound it.
        let response = handle.await_response();
        tokio::pin!(response);
        let answer = tokio::select! {
            answer = &mut response => answer.map_err(|e| self.shared.error(e)),
            () = context.ct.cancelled() => {
                let _ = peer
                    .send_notification(ClientNotification::CancelledNotification(
                        CancelledNotification::new(CancelledNotificationParam::new(
                            Some(up_id.clone()),
                            Some("cancelled by the client".into()),
                        )),
                    ))
                    .await;
                let _ = response.await;
                Err(ErrorData::internal_error("cancelled by the client", None))
            }
        };
        {
            let mut routes = up.routes.lock().await;
            routes.progress.remove(&up_token);
            routes.inflight.remove(&up_id);
        }
        // Its requests to the client still open are cancelled there, before the
        // answer goes out.
        end.ended.cancel();
        let _ = tokio::time::timeout(CANCELS_FLUSH, end.open.write()).await;
        // The progress sent before the answer reaches the client before it (its
        // queue now closed, the task ends once it is empty); a client that does not
        // read it holds up only this answer, and only for a while.
        if let Some(mut relaying) = relaying {
            let _ = tokio::time::timeout(PROGRESS_FLUSH, &mut relaying.0).await;
        }
        answer
    }

    async fn forward_as<T: serde::de::DeserializeOwned>(
        &self,
        request: ClientRequest,
        context: RequestContext<RoleServer>,
    ) -> Result<T, ErrorData> {
        let result = self.forward(request, context).await?;
        coerce(self.name(), result)
    }
}

impl ServerHandler for GatewayHandler {
    /// Once the upstream answered, offer the client nothing newer than the upstream's
    /// revision, so both legs speak the same one.
    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        match self.session.get().and_then(|s| s.info()) {
            Some(up) => Cow::Borrowed(ProtocolVersion::known_up_to(&up.protocol_version)),
            None => Cow::Borrowed(ProtocolVersion::KNOWN_VERSIONS),
        }
    }

    /// Called often and synchronously: answered from the last upstream handshake.
    fn get_info(&self) -> ServerConfig {
        let info = self
            .session
            .get()
            .and_then(|s| s.info())
            .or_else(|| self.shared.last_info());
        match info {
            Some(up) => {
                let sessionless = self.session.get().is_none();
                let mut config = ServerConfig::new(offered(&up.capabilities, sessionless));
                config.server_info = up
                    .server_info
                    .clone()
                    .unwrap_or_else(|| Implementation::new(self.name(), "unknown"));
                config.instructions = up.instructions.clone();
                config
            }
            None => ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
                .with_server_info(Implementation::new(self.name(), "unknown")),
        }
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        // rmcp hands an `initialize` sent again in a live session to this handler too;
        // each would start an upstream session (a process) only to drop it.
        if self.session.get().is_some() {
            return Err(ErrorData::invalid_request(
                "this session is already initialized",
                None,
            ));
        }
        let parts = context.extensions.get::<http::request::Parts>();
        // The guard put the client's token in the request.
        let client_id = parts
            .and_then(|parts| parts.extensions.get::<AccessToken>())
            .map(|access| &access.client_id);
        let session = self
            .shared
            .open_session(&request, context.peer.clone(), client_id)
            .await?;
        let info = session.info().ok_or_else(|| self.shared.closed_error())?;
        let slot = parts.and_then(|parts| parts.extensions.get::<SessionSlot>());
        if let Some(slot) = slot {
            let _ = slot.0.set(session.clone());
        }
        let _ = self.session.set(session);
        let mut result = InitializeResult::new(offered(&info.capabilities, false));
        result.server_info = info
            .server_info
            .clone()
            .unwrap_or_else(|| Implementation::new(self.name(), "unknown"));
        result.instructions = info.instructions.clone();
        // rmcp negotiates from this: the client's revision when both know it, else
        // the upstream's.
        result.protocol_version = info.protocol_version.clone();
        Ok(result)
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let as_of = self.shared.policy.changes();
        let mut page: ListToolsResult = self
            .forward_as(
                ClientRequest::ListToolsRequest(ListToolsRequest {
                    method: Default::default(),
                    params: request,
                    extensions: Default::default(),
                }),
                context,
            )
            .await?;
        self.shared.policy.learn(&page.tools, as_of, false);
        page.tools
            .retain(|tool| self.shared.policy.visible(&tool.name));
        for tool in &mut page.tools {
            without_param_headers(&mut tool.input_schema);
        }
        Ok(page)
    }

    fn get_tool(&self, _name: &str) -> Option<Tool> {
        None
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        // A denied tool is answered as a tool that does not exist (in Gatehouse's
        // words, which may not be the upstream's).
        let Some(access) = self.shared.policy.tool_access(&request.name) else {
            return Err(ErrorData::invalid_params(
                format!("Unknown tool: {}", request.name),
                None,
            ));
        };
        self.check_scope(access, &context)?;
        let name = self.name().to_owned();
        match self
            .forward(
                ClientRequest::CallToolRequest(CallToolRequest::new(request)),
                context,
            )
            .await?
        {
            ServerResult::CallToolResult(result) => Ok(CallToolResponse::Complete(result)),
            ServerResult::InputRequiredResult(result) => {
                Ok(CallToolResponse::InputRequired(result))
            }
            ServerResult::CreateTaskResult(result) => Ok(CallToolResponse::Task(result)),
            other => Ok(CallToolResponse::Complete(coerce(&name, other)?)),
        }
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        self.check_scope(Access::Read, &context)?;
        self.forward_as(
            ClientRequest::ListResourcesRequest(ListResourcesRequest {
                method: Default::default(),
                params: request,
                extensions: Default::default(),
            }),
            context,
        )
        .await
    }

    async fn list_resource_templates(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        self.check_scope(Access::Read, &context)?;
        self.forward_as(
            ClientRequest::ListResourceTemplatesRequest(ListResourceTemplatesRequest {
                method: Default::default(),
                params: request,
                extensions: Default::default(),
            }),
            context,
        )
        .await
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        self.check_scope(Access::Read, &context)?;
        let name = self.name().to_owned();
        match self
            .forward(
                ClientRequest::ReadResourceRequest(ReadResourceRequest::new(request)),
                context,
            )
            .await?
        {
            ServerResult::ReadResourceResult(result) => Ok(result.into()),
            ServerResult::InputRequiredResult(result) => Ok(result.into()),
            other => coerce::<ReadResourceResult>(&name, other).map(Into::into),
        }
    }

    // Legacy (before 2026-07-28), still what clients of those revisions send.
    #[allow(deprecated)]
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.check_scope(Access::Read, &context)?;
        self.forward(
            ClientRequest::SubscribeRequest(SubscribeRequest::new(request)),
            context,
        )
        .await
        .map(|_| ())
    }

    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.check_scope(Access::Read, &context)?;
        self.forward(
            ClientRequest::UnsubscribeRequest(UnsubscribeRequest::new(request)),
            context,
        )
        .await
        .map(|_| ())
    }

    async fn list_prompts(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        self.check_scope(Access::Read, &context)?;
        self.forward_as(
            ClientRequest::ListPromptsRequest(ListPromptsRequest {
                method: Default::default(),
                params: request,
                extensions: Default::default(),
            }),
            context,
        )
        .await
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        self.check_scope(Access::Read, &context)?;
        let name = self.name().to_owned();
        match self
            .forward(
                ClientRequest::GetPromptRequest(GetPromptRequest::new(request)),
                context,
            )
            .await?
        {
            ServerResult::GetPromptResult(result) => Ok(result.into()),
            ServerResult::InputRequiredResult(result) => Ok(result.into()),
            other => coerce::<GetPromptResult>(&name, other).map(Into::into),
        }
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        self.check_scope(Access::Read, &context)?;
        self.forward_as(
            ClientRequest::CompleteRequest(CompleteRequest::new(request)),
            context,
        )
        .await
    }

    // Deprecated by SEP-2577, still relayed for the revisions that have it.
    #[allow(deprecated)]
    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.forward(
            ClientRequest::SetLevelRequest(SetLevelRequest::new(request)),
            context,
        )
        .await
        .map(|_| ())
    }

    async fn on_roots_list_changed(&self, _context: NotificationContext<RoleServer>) {
        if let Some(session) = self.session.get() {
            let _ = session
                .peer()
                .send_notification(ClientNotification::RootsListChangedNotification(
                    RootsListChangedNotification {
                        method: Default::default(),
                        extensions: Default::default(),
                    },
                ))
                .await;
        }
    }
}

/// Extensions whose methods the relay does not carry (`tasks/*`; `skills/*` and
/// `resources/directory/read`): offered to a client, it would start a task it can
/// never read nor cancel, or ask for what is answered "method not found".
const UNRELAYED_EXTENSIONS: [&str; 2] = [TASKS_EXTENSION_ID, SKILLS_EXTENSION_ID];

/// `extensions` (a client's or a server's) without those the relay does not carry.
pub fn drop_unrelayed(extensions: &mut Option<ExtensionCapabilities>) {
    if let Some(extensions) = extensions.as_mut() {
        extensions.retain(|id, _| !UNRELAYED_EXTENSIONS.contains(&id.as_str()));
    }
}

/// What the gateway offers a client of the upstream's capabilities `up`: not the
/// extensions it does not relay, and, to a request without a session (2026-07-28),
/// no notifications of changes or resource updates, which reach such a client only
/// through `subscriptions/listen`, not relayed either.
fn offered(up: &ServerCapabilities, sessionless: bool) -> ServerCapabilities {
    let mut offered = up.clone();
    drop_unrelayed(&mut offered.extensions);
    if sessionless {
        if let Some(tools) = offered.tools.as_mut() {
            tools.list_changed = None;
        }
        if let Some(resources) = offered.resources.as_mut() {
            resources.subscribe = None;
            resources.list_changed = None;
        }
        if let Some(prompts) = offered.prompts.as_mut() {
            prompts.list_changed = None;
        }
    }
    offered
}

/// The running rmcp client of one upstream connection.
pub type UpService = RunningService<RoleClient, UpClient>;

/// Relays an upstream's progress notifications as they are read, in order. rmcp would
/// hand each notification to a task of its own, and a call's answer could then reach
/// the client before the progress sent just before it, on a stream already closed.
/// Each notification then goes on to rmcp as well, with the upstream's own token:
/// that is what restarts the call's timeout there (`reset_timeout_on_progress`), so
/// that a long call that keeps reporting is not cut off. rmcp's client ignores it
/// otherwise (`UpClient::handle_notification`).
pub struct InOrder<T> {
    inner: T,
    routes: Arc<Mutex<Routes>>,
    /// A notification being relayed, and the message to hand rmcp once it is. rmcp
    /// polls `receive` in a `select!` and drops it when another branch is ready
    /// first (a new call taking the routes' lock, say); kept here, the next
    /// `receive` finishes it instead of losing it.
    relaying: Option<(BoxFuture<'static, ()>, RxJsonRpcMessage<RoleClient>)>,
}

impl<T> InOrder<T> {
    pub fn new(inner: T, routes: Arc<Mutex<Routes>>) -> Self {
        InOrder {
            inner,
            routes,
            relaying: None,
        }
    }
}

/// Queues one upstream progress notification for the client whose call it belongs
/// to, with that client's own token; dropped when it names no call, does not
/// increase, or finds the call's queue full. It never waits for a client: this runs
/// in the upstream connection's reading, which others' calls share.
async fn relay_progress(routes: Arc<Mutex<Routes>>, mut progress: ProgressNotification) {
    let mut routes = routes.lock().await;
    if let Some((queue, token, last)) = routes.progress.get_mut(&progress.params.progress_token) {
        if progress.params.progress > *last {
            *last = progress.params.progress;
            progress.params.progress_token = token.clone();
            let _ = queue.try_send(progress);
        }
    }
}

impl<T: Transport<RoleClient>> Transport<RoleClient> for InOrder<T> {
    type Error = T::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.inner.send(item)
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
        loop {
            if let Some((relay, _)) = &mut self.relaying {
                relay.await;
                // Taken in the same poll that finished it: never polled again.
                let (_, message) = self.relaying.take()?;
                return Some(message);
            }
            let message = self.inner.receive().await?;
            let JsonRpcMessage::Notification(JsonRpcNotification {
                notification: ServerNotification::ProgressNotification(progress),
                ..
            }) = &message
            else {
                return Some(message);
            };
            let relay = relay_progress(self.routes.clone(), progress.clone());
            self.relaying = Some((Box::pin(relay), message));
        }
    }

    fn close(&mut self) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send {
        self.inner.close()
    }
}

/// `schema` without its `x-mcp-header` annotations (2026-07-28, SEP-2243): they ask
/// a client to copy those arguments into `Mcp-Param-*` headers, which a server must
/// then check against the body (400, -32020, when they differ). Gatehouse cannot
/// check them for a tool it has not described itself, so it does not ask for them;
/// its own client to the upstream sends the upstream's from the body.
fn without_param_headers(schema: &mut std::sync::Arc<JsonObject>) {
    fn strip(properties: Option<&mut serde_json::Value>) {
        let Some(serde_json::Value::Object(properties)) = properties else {
            return;
        };
        for property in properties.values_mut() {
            if let serde_json::Value::Object(property) = property {
                property.remove("x-mcp-header");
                strip(property.get_mut("properties"));
            }
        }
    }
    let annotated = |value: &serde_json::Value| value.to_string().contains("x-mcp-header");
    if schema.get("properties").is_some_and(annotated) {
        strip(std::sync::Arc::make_mut(schema).get_mut("properties"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relayed_tools_ask_for_no_param_headers() {
        let schema = json!({
            "type": "object",
            "properties": {
                "region": { "type": "string", "x-mcp-header": "Region" },
                "x-mcp-header": { "type": "string" },
                "nested": {
                    "type": "object",
                    "properties": { "tenant": { "type": "string", "x-mcp-header": "Tenant" } }
                }
            }
        });
        let serde_json::Value::Object(object) = schema else {
            panic!("an object")
        };
        let mut schema = std::sync::Arc::new(object);
        without_param_headers(&mut schema);
        assert_eq!(
            serde_json::Value::Object((*schema).clone()),
            json!({
                "type": "object",
                "properties": {
                    "region": { "type": "string" },
                    "x-mcp-header": { "type": "string" },
                    "nested": {
                        "type": "object",
                        "properties": { "tenant": { "type": "string" } }
                    }
                }
            })
        );
    }
}
