//! `GET /healthz`: whether this instance can serve, for load balancers and operators.

use std::time::Duration;

use axum::{extract::State, http::StatusCode, response::IntoResponse, Json};
use serde_json::json;

use super::AppState;

/// A store that does not answer within this long counts as down: a health check
/// must answer quickly even when the store hangs.
const STORE_PING_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one look at the store answers every health check: anyone may ask, as
/// often as they like, and each look is a store operation (on the embedded store, a
/// blocking thread's).
const FRESH_FOR: Duration = Duration::from_millis(100);

/// What the store said when last asked.
#[derive(Clone, Copy)]
enum Store {
    Up,
    Down,
    TimedOut,
}

/// The last look at the store, shared: one look at a time, and none again for
/// [`FRESH_FOR`]; checks that come meanwhile wait for it and take its answer.
#[derive(Default)]
pub struct StoreCheck(tokio::sync::Mutex<Option<(tokio::time::Instant, Store)>>);

impl StoreCheck {
    async fn look(&self, state: &AppState) -> Store {
        let mut last = self.0.lock().await;
        if let Some((at, store)) = *last {
            if at.elapsed() < FRESH_FOR {
                return store;
            }
        }
        let store = match tokio::time::timeout(STORE_PING_TIMEOUT, state.store.ping()).await {
            Ok(Ok(())) => Store::Up,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "health check: store is down");
                Store::Down
            }
            Err(_) => {
                tracing::warn!("health check: store timed out");
                Store::TimedOut
            }
        };
        *last = Some((tokio::time::Instant::now(), store));
        store
    }
}

pub async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let backend = state.store.backend();
    let (status, store) = match state.store_check.look(&state).await {
        Store::Up => (
            StatusCode::OK,
            json!({ "backend": backend, "status": "up" }),
        ),
        Store::Down => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "backend": backend, "status": "down", "error": "the store did not answer" }),
        ),
        Store::TimedOut => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "backend": backend, "status": "down", "error": "the store timed out" }),
        ),
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
