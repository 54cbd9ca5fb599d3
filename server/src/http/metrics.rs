//! `/metrics` in the Prometheus text format: on the main listener behind a bearer
//! secret (`--metrics-token`), or on an address of its own (`--metrics-bind`). Gauges
//! that are states rather than events (live sessions, upstream health) are read when
//! the metrics are.

use axum::{
    extract::State,
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};

use super::{mcp::Endpoint, AppState};
use crate::telemetry;

/// `GET /metrics` on the main listener: only with the configured bearer secret.
pub async fn guarded(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(expected) = &state.config.metrics.token else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let sent = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match sent {
        Some(token) if expected.matches(token) => render(&state).await,
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"metrics\"")],
        )
            .into_response(),
    }
}

/// The router of `--metrics-bind`: `/metrics` and nothing else.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(state): State<AppState>| async move { render(&state).await }),
        )
        .with_state(state)
}

async fn render(state: &AppState) -> Response {
    if let Some(endpoint) = &state.article_endpoint {
        let live = endpoint.live_sessions().await;
        ::metrics::gauge!(telemetry::MCP_SESSIONS, "resource" => endpoint.resource().uri.to_string())
            .set(live as f64);
    }
    for upstream in &state.upstreams {
        let live = upstream.live_sessions().await;
        let resource = upstream.resource().uri.to_string();
        ::metrics::gauge!(telemetry::MCP_SESSIONS, "resource" => resource).set(live as f64);
        let up = if upstream.health().status == "up" {
            1.0
        } else {
            0.0
        };
        ::metrics::gauge!(telemetry::UPSTREAM_UP, "upstream" => upstream.health().name).set(up);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        telemetry::handle().render(),
    )
        .into_response()
}
