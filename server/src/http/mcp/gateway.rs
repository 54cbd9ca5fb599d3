//! An upstream MCP server at `/mcp/NAME`, behind the same guard as `/mcp`: rmcp's
//! Streamable HTTP transport in front of the relay (`crate::gateway`). There is no
//! direct path here: every request goes through the relay.

use std::sync::Arc;

use axum::{
    body::{Body, Bytes},
    http::request::Parts,
    response::Response,
};
use rmcp::transport::streamable_http_server::{
    session::local::LocalSessionManager, StreamableHttpServerConfig, StreamableHttpService,
};
use tokio_util::sync::CancellationToken;

use super::{guard::rebuild, sessions::StoreSessions, Endpoint, Guarded, Prepared, MAX_BODY_BYTES};
use crate::{
    gateway::{
        relay::GatewayHandler,
        upstream::{Health, Shared},
    },
    mcp::{Call, CallPolicy, Need},
    resource::Resource,
    store::SharedStore,
};

pub struct GatewayEndpoint {
    shared: Arc<Shared>,
    sessions: Arc<LocalSessionManager>,
    transport: StreamableHttpService<GatewayHandler, LocalSessionManager>,
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
        config.session_store = Some(Arc::new(StoreSessions(store)));
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
            transport,
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
}

impl Endpoint for GatewayEndpoint {
    type Prepared = ();

    fn resource(&self) -> &Arc<Resource> {
        &self.shared.resource
    }

    async fn needs(&self, call: &Call<'_>) -> Need {
        if call.method() == "tools/call" {
            if let Some(tool) = call.name() {
                self.shared.learn_tool(tool).await;
            }
        }
        self.shared.policy.needs(call)
    }

    fn prepare(&self, _parts: &Parts, _body: Option<&Bytes>) -> Prepared<()> {
        Prepared {
            state: (),
            read_ahead: None,
            need: None,
            tool: None,
        }
    }

    async fn serve(&self, request: Guarded<()>) -> Response {
        self.transport
            .handle(rebuild(request.parts, request.body))
            .await
            .map(Body::new)
    }
}
