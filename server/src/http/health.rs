//! `GET /healthz`: whether this instance can serve, for load balancers and operators.

use std::time::Duration;

use axum::{extract::State, http::StatusCode, response::IntoResponse, Json};
use serde_json::json;

use super::AppState;

/// A store that does not answer within this long counts as down: a health check
/// must answer quickly even when the store hangs.
const STORE_PING_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let backend = state.store.backend();
    let ping = tokio::time::timeout(STORE_PING_TIMEOUT, state.store.ping()).await;
    let (status, store) = match ping {
        Ok(Ok(())) => (
            StatusCode::OK,
            json!({ "backend": backend, "status": "up" }),
        ),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "health check: store is down");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "backend": backend, "status": "down", "error": "the store did not answer" }),
            )
        }
        Err(_) => {
            tracing::warn!("health check: store timed out");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "backend": backend, "status": "down", "error": "the store timed out" }),
            )
        }
    };
    let overall = if status == StatusCode::OK {
        "ok"
    } else {
        "unavailable"
    };
    // Upstreams are reported, not judged: one that is down does not take Gatehouse
    // out of a load balancer's rotation.
    let upstreams: Vec<_> = state.upstreams.iter().map(|u| u.health()).collect();
    (
        status,
        [("cache-control", "no-store")],
        Json(json!({
            "status": overall,
            "store": store,
            "upstreams": upstreams,
            "version": env!("CARGO_PKG_VERSION"),
        })),
    )
}
