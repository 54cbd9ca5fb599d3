//! `GET /healthz`: whether this instance can serve, for load balancers and operators.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

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

/// What the store said when asked.
#[derive(Clone, Copy, Debug)]
enum Store {
    Up,
    Down,
    TimedOut,
}

/// The looks at the store `/healthz` takes: one at a time, in a task of its own (a
/// check that goes away neither ends it nor lets another start), each answering for
/// [`FRESH_FOR`]. A check takes the newest answer that is fresh, or that came after
/// the check did; it waits at most [`STORE_PING_TIMEOUT`] for one.
pub struct StoreCheck {
    latest: tokio::sync::watch::Sender<Option<(tokio::time::Instant, Store)>>,
    looking: Arc<AtomicBool>,
}

impl Default for StoreCheck {
    fn default() -> Self {
        StoreCheck {
            latest: tokio::sync::watch::Sender::new(None),
            looking: Arc::default(),
        }
    }
}

/// Clears the "a look is being taken" flag when dropped.
struct Over(Arc<AtomicBool>);

impl Drop for Over {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl StoreCheck {
    async fn look(&self, state: &AppState) -> Store {
        let arrived = tokio::time::Instant::now();
        let usable = move |latest: &Option<(tokio::time::Instant, Store)>| {
            latest.is_some_and(|(at, _)| at + FRESH_FOR > arrived)
        };
        let mut latest = self.latest.subscribe();
        if !usable(&latest.borrow_and_update()) && !self.looking.swap(true, Ordering::AcqRel) {
            let (store, sender, looking) = (
                state.store.clone(),
                self.latest.clone(),
                self.looking.clone(),
            );
            tokio::spawn(async move {
                // Another look may start once this one is over, however it ends (a
                // store that panics, a runtime that stops): never stuck "looking".
                let _over = Over(looking);
                let store = match tokio::time::timeout(STORE_PING_TIMEOUT, store.ping()).await {
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
                sender.send_replace(Some((tokio::time::Instant::now(), store)));
            });
        }
        let seen = tokio::time::timeout(STORE_PING_TIMEOUT, latest.wait_for(usable)).await;
        match seen {
            Ok(Ok(seen)) => seen.map_or(Store::TimedOut, |(_, store)| store),
            _ => Store::TimedOut,
        }
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
