//! `bench proxy --port N --upstream URL`: the least any HTTP gateway does. Every
//! request to `/mcp` goes to the upstream as it came (headers, body, method), and the
//! answer comes back as it went, streamed, on pooled connections: one hyper server
//! and one hyper client in one process, no token, no policy, no parsing. The gateway
//! rows' `% of direct` reads against this row's: what a relay costs on this machine
//! before it does anything of its own.

use std::sync::Arc;

use axum::{
    body::Body,
    extract::{Request, State},
    http::{header, StatusCode, Uri},
    response::{IntoResponse, Response},
};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};

struct Proxy {
    upstream: Uri,
    client: Client<HttpConnector, Body>,
}

async fn forward(State(proxy): State<Arc<Proxy>>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    parts.uri = proxy.upstream.clone();
    parts.headers.remove(header::HOST);
    match proxy.client.request(Request::from_parts(parts, body)).await {
        Ok(answer) => answer.map(Body::new),
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

pub async fn serve(port: u16, upstream: &str) -> Result<(), String> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let proxy = Arc::new(Proxy {
        upstream: upstream.parse().map_err(|e| format!("{upstream}: {e}"))?,
        // As many idle connections as Gatehouse keeps per upstream.
        client: Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build(connector),
    });
    let app = axum::Router::new()
        .route("/mcp", axum::routing::any(forward))
        .with_state(proxy);
    crate::serve_local(port, app).await
}
