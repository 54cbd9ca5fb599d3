//! The HTTP layer: the one route table, shared state, and the handlers that turn
//! requests into calls on the domain and the store. Handlers stay thin.

use std::sync::Arc;

use app::{shell, App, SiteInfo};
use axum::{extract::FromRef, routing::get, Router};
use leptos::prelude::*;
use leptos_axum::{generate_route_list, LeptosRoutes};
use tower_http::{limit::RequestBodyLimitLayer, trace::TraceLayer};

use crate::{config::Config, store::SharedStore};

mod health;
pub mod pages;

/// Request bodies larger than this are refused with 413 before any handler reads them.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: SharedStore,
    pub leptos: LeptosOptions,
}

impl FromRef<AppState> for LeptosOptions {
    fn from_ref(state: &AppState) -> Self {
        state.leptos.clone()
    }
}

impl AppState {
    pub fn new(config: Config, store: SharedStore) -> Self {
        let leptos = LeptosOptions::builder()
            .output_name("gatehouse")
            .site_root(config.site_root.to_string_lossy().as_ref())
            .site_pkg_dir("pkg")
            .site_addr(config.bind)
            .build();
        AppState {
            config: Arc::new(config),
            store,
            leptos,
        }
    }

    fn site_info(&self) -> SiteInfo {
        SiteInfo {
            public_url: self.config.public_url.as_str().to_owned(),
            mcp_url: self.config.public_url.mcp_url(),
        }
    }
}

/// Every path Gatehouse serves, in one place.
pub fn router(state: AppState) -> Router {
    let routes = generate_route_list(App);
    let site_info = state.site_info();
    Router::new()
        .route("/healthz", get(health::healthz))
        // Pages (Leptos SSR) and their server functions.
        .leptos_routes_with_context(
            &state,
            routes,
            move || provide_context(site_info.clone()),
            {
                let options = state.leptos.clone();
                move || shell(options.clone())
            },
        )
        // Static files from the site root (`/pkg/*`), else the app's 404 page.
        .fallback(leptos_axum::file_and_error_handler::<AppState, _>(shell))
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
