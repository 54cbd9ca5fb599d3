//! The HTTP layer: the one route table, shared state, and the handlers that turn
//! requests into calls on the domain and the store. Handlers stay thin.

use std::{sync::Arc, time::Duration};

use app::{shell, App, SiteInfo};
use axum::{
    extract::FromRef,
    http::{header, HeaderName, Method},
    routing::{get, post},
    Router,
};
use leptos::prelude::*;
use leptos_axum::{generate_route_list, LeptosRoutes};
use tokio_util::sync::CancellationToken;
use tower_http::{
    cors::{Any, CorsLayer},
    limit::RequestBodyLimitLayer,
    trace::TraceLayer,
};

use crate::{
    articles::Articles,
    config::Config,
    oauth::{
        owner::{Owner, SignInLimiter},
        AuthServer,
    },
    store::SharedStore,
};

mod health;
pub mod mcp;
pub mod oauth;
pub mod pages;

/// Request bodies larger than this are refused with 413 before any handler reads them.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Failed sign-ins allowed per client address, and in total, per window.
const SIGN_IN_LIMIT_PER_ADDRESS: u32 = 10;
const SIGN_IN_LIMIT_GLOBAL: u32 = 100;
const SIGN_IN_WINDOW: Duration = Duration::from_secs(15 * 60);

/// What every handler can reach. Cloned for every request, so it is one `Arc`.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub config: Arc<Config>,
    pub store: SharedStore,
    pub auth: Arc<AuthServer>,
    pub owner: Arc<Owner>,
    pub limiter: Arc<SignInLimiter>,
    pub articles: Articles,
    pub mcp: Arc<mcp::Endpoint>,
    /// Cancelled at shutdown: ends the MCP sessions (which hold the store).
    pub shutdown: CancellationToken,
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
        let articles = Articles::new(store.clone());
        let shutdown = CancellationToken::new();
        AppState(Arc::new(Shared {
            auth: AuthServer::new(store.clone(), config.oauth.clone()),
            owner: Arc::new(Owner::new(
                store.clone(),
                config.owner_password_hash.clone(),
            )),
            limiter: Arc::new(SignInLimiter::new(
                SIGN_IN_LIMIT_PER_ADDRESS,
                SIGN_IN_LIMIT_GLOBAL,
                SIGN_IN_WINDOW,
            )),
            mcp: Arc::new(mcp::Endpoint::new(
                store.clone(),
                articles.clone(),
                &config,
                shutdown.child_token(),
            )),
            articles,
            config: Arc::new(config),
            store,
            shutdown,
            leptos,
        }))
    }

    fn site_info(&self) -> SiteInfo {
        SiteInfo {
            public_url: self.config.public_url.as_str().to_owned(),
            mcp_url: self.config.public_url.mcp_url(),
        }
    }
}

/// CORS for the endpoints browser-based clients call (the MCP Inspector runs at
/// `http://localhost:6274`). No cookies are involved, so any origin may call them;
/// preflights are answered here and never reach authentication.
fn api_cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::ACCEPT,
            HeaderName::from_static("mcp-session-id"),
            HeaderName::from_static("mcp-protocol-version"),
            HeaderName::from_static("last-event-id"),
            HeaderName::from_static("mcp-method"),
            HeaderName::from_static("mcp-name"),
        ])
        .expose_headers([
            header::WWW_AUTHENTICATE,
            HeaderName::from_static("mcp-session-id"),
        ])
        .max_age(Duration::from_secs(24 * 3600))
}

/// Every path Gatehouse serves, in one place. API paths are exact: no trailing-slash
/// redirects (a 301 turns a client's POST into a GET).
pub fn router(state: AppState) -> Router {
    let routes = generate_route_list(App);
    let site_info = state.site_info();

    let api = Router::new()
        // RFC 8414 discovery, also under the OpenID name some clients try first.
        .route(
            "/.well-known/oauth-authorization-server",
            get(oauth::metadata::authorization_server),
        )
        .route(
            "/.well-known/openid-configuration",
            get(oauth::metadata::authorization_server),
        )
        .route("/oauth/register", post(oauth::register::register))
        .route("/oauth/token", post(oauth::token::token))
        .route("/oauth/revoke", post(oauth::token::revoke))
        .layer(api_cors());

    // The MCP endpoint, exact path only (never redirected), behind the bearer guard.
    let mcp = Router::new()
        .route_service("/mcp", state.mcp.transport.clone())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            mcp::guard,
        ))
        .route(
            "/.well-known/oauth-protected-resource",
            get(mcp::protected_resource_metadata),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(mcp::protected_resource_metadata),
        )
        .layer(api_cors());

    let browser = Router::new()
        .route("/oauth/authorize", get(oauth::authorize::authorize))
        .route("/oauth/authorize/approve", get(oauth::authorize::approve))
        .route("/oauth/authorize/deny", get(oauth::authorize::deny))
        .route(
            "/oauth/login",
            get(oauth::owner::login_page).post(oauth::owner::login),
        )
        .route("/oauth/logout", post(oauth::owner::logout))
        .route(
            "/setup",
            get(oauth::owner::setup_page).post(oauth::owner::setup),
        );

    Router::new()
        .route("/healthz", get(health::healthz))
        .merge(api)
        .merge(mcp)
        .merge(browser)
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
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &axum::http::Request<_>| {
                // The path only: query strings carry single-use tickets, setup tokens
                // and authorization parameters, which must never reach a log.
                tracing::debug_span!("request", method = %request.method(), path = %request.uri().path())
            }),
        )
        .with_state(state)
}
