//! The HTTP layer: the one route table, shared state, and the handlers that turn
//! requests into calls on the domain and the store. Handlers stay thin.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use app::{shell, App, SiteInfo};
use axum::{
    extract::{FromRef, Request, State},
    http::{header, HeaderName, HeaderValue, Method},
    routing::{any, get, post},
    Router,
};
use leptos::prelude::*;
use leptos_axum::{generate_route_list, LeptosRoutes};
use tokio_util::sync::CancellationToken;
use tower_http::{
    cors::{AllowHeaders, AllowOrigin, CorsLayer},
    limit::RequestBodyLimitLayer,
    set_header::SetResponseHeaderLayer,
    trace::TraceLayer,
};

use self::mcp::Endpoint;
use crate::{
    articles::Articles,
    audit::Audit,
    clock::Clock,
    config::Config,
    oauth::{
        client::ClientId,
        owner::{Owner, SignInLimiter},
        secret::SecretHash,
        AuthServer,
    },
    ratelimit::{Network, WindowLimiter},
    resource::Resource,
    store::SharedStore,
    telemetry::{self, MeteredStore},
};

pub mod address;
pub mod bodies;
pub mod console;
mod health;
pub mod listener;
pub mod mcp;
pub mod metrics;
pub mod oauth;
pub mod pages;
pub mod session;

/// Client-ID metadata documents not yet proven here that one address (an IPv6 /64)
/// may have Gatehouse fetch in a minute, through the consent page or the token and
/// revocation endpoints. A person connects a new client once; a stranger naming
/// document after document on hosts of its own would otherwise have Gatehouse send
/// requests to any public host on port 443 as fast as 32 fetches at once allow.
pub const DOCUMENT_FETCHES_PER_MINUTE: u32 = 30;

/// Consent pages one sign-in session may open a minute. Each stores its two
/// tickets for ten minutes, and a page elsewhere that the signed-in owner visits
/// could keep sending the browser to them (a pop-up it navigates, say); a person
/// opens a few.
pub const CONSENT_PAGES_PER_MINUTE: u32 = 30;

/// Request bodies larger than this are refused with 413 before any handler reads them.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The pages' server functions take more: the console saves an article of up to
/// 48 KiB, which form encoding can triple.
pub const PAGE_BODY_BYTES: usize = 3 * crate::articles::MAX_ARTICLE_BYTES + 16 * 1024;

/// Failed sign-ins per client address before each further attempt must wait, the
/// longest such wait, and how long a quiet address is remembered.
const SIGN_IN_FREE_FAILURES: u32 = 10;
const SIGN_IN_MAX_DELAY: Duration = Duration::from_secs(5 * 60);
const SIGN_IN_FORGET_AFTER: Duration = Duration::from_secs(15 * 60);

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
    pub clock: Clock,
    /// The activity log and per-grant usage.
    pub audit: Arc<Audit>,
    pub auth: Arc<AuthServer>,
    pub owner: Arc<Owner>,
    pub limiter: Arc<SignInLimiter>,
    /// Dynamic registration requests per client address (an IPv6 /64) and per IPv6
    /// /48 per minute.
    pub registrations: WindowLimiter<Network>,
    /// Registrations kept per address (an IPv6 /64) and per IPv6 /48 in an hour:
    /// each a [`oauth::register::REGISTRATION_SHARE`] of `all_registrations`.
    pub registration_shares: WindowLimiter<Network>,
    /// All registrations kept, whatever their address.
    pub all_registrations: WindowLimiter<()>,
    /// Consent pages per sign-in session ([`CONSENT_PAGES_PER_MINUTE`] a minute).
    pub consent_pages: WindowLimiter<SecretHash>,
    /// Fetches of metadata documents not yet proven here, per client address and
    /// per IPv6 /48 ([`DOCUMENT_FETCHES_PER_MINUTE`] a minute each).
    pub document_fetches: WindowLimiter<crate::ratelimit::Network>,
    /// New MCP sessions per client per minute.
    pub new_sessions: WindowLimiter<ClientId>,
    /// Sessions opened per client in the last day and not ended: what a client can
    /// make the store hold (`--sessions-per-day`).
    pub daily_sessions: WindowLimiter<ClientId>,
    pub articles: Articles,
    /// Which `Host`s and `Origin`s may reach the MCP endpoints.
    pub hosts: mcp::policy::HostPolicy,
    /// MCP session bindings seen lately, so the guard need not read them per call.
    pub bindings: mcp::sessions::RecentBindings,
    /// Tokens that passed the MCP guard lately (see `mcp::sessions::VerifiedTokens`).
    pub verified_tokens: mcp::sessions::VerifiedTokens,
    /// The built-in article server at `/mcp`, unless turned off.
    pub article_endpoint: Option<Arc<mcp::articles::ArticleEndpoint>>,
    /// The guarded upstream servers at `/mcp/NAME`.
    pub upstreams: Vec<Arc<mcp::gateway::GatewayEndpoint>>,
    /// The last look `/healthz` took at the store.
    store_check: health::StoreCheck,
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
    /// The state for `config` on `store`, on the system clock. Fails only when a
    /// part cannot be built (the guarded HTTP client, say): a start-up error.
    pub fn new(config: Config, store: SharedStore) -> Result<Self, String> {
        Self::with_clock(config, store, Clock::system())
    }

    /// The same, with time read from `clock` (tests move it forward).
    pub fn with_clock(config: Config, store: SharedStore, clock: Clock) -> Result<Self, String> {
        // Every store operation is timed; the recorder is installed on first use.
        telemetry::handle();
        let store = MeteredStore::wrap(store);
        let leptos = LeptosOptions::builder()
            .output_name("gatehouse")
            .site_root(config.site_root.to_string_lossy().as_ref())
            .site_pkg_dir("pkg")
            .site_addr(config.bind)
            .build();
        let articles = Articles::new(store.clone(), clock.clone());
        let shutdown = CancellationToken::new();
        let resources = &config.oauth.resources;
        let article_endpoint = match resources.get(&config.public_url.mcp_url()) {
            Some(resource) if config.articles => {
                Some(Arc::new(mcp::articles::ArticleEndpoint::new(
                    resource.clone(),
                    store.clone(),
                    articles.clone(),
                    config.limits.max_sessions_per_client,
                    shutdown.child_token(),
                )))
            }
            _ => None,
        };
        let mut upstreams = Vec::new();
        for upstream in &config.upstreams {
            let resource = resources
                .get(&config.public_url.join(&format!("/mcp/{}", upstream.name)))
                .cloned()
                .ok_or_else(|| {
                    format!("upstream {}: its resource is not configured", upstream.name)
                })?;
            let shared = crate::gateway::upstream::Shared::new(upstream.clone(), resource)?;
            upstreams.push(Arc::new(mcp::gateway::GatewayEndpoint::new(
                shared,
                store.clone(),
                shutdown.child_token(),
            )));
        }
        let audit = Audit::new(
            store.clone(),
            clock.clone(),
            config.limits.activity_retention,
            config.limits.activity_max_events,
        );
        Ok(AppState(Arc::new(Shared {
            auth: AuthServer::new(
                store.clone(),
                config.oauth.clone(),
                clock.clone(),
                audit.clone(),
            )?,
            audit,
            owner: Arc::new(Owner::new(
                store.clone(),
                config.owner_password_hash.clone(),
            )),
            limiter: Arc::new(SignInLimiter::new(
                SIGN_IN_FREE_FAILURES,
                SIGN_IN_MAX_DELAY,
                SIGN_IN_FORGET_AFTER,
            )),
            registrations: WindowLimiter::new(
                config.limits.registrations_per_minute,
                Duration::from_secs(60),
            ),
            registration_shares: WindowLimiter::new(
                config.limits.registrations_per_hour / oauth::register::REGISTRATION_SHARE,
                Duration::from_secs(3600),
            ),
            all_registrations: WindowLimiter::new(
                config.limits.registrations_per_hour,
                Duration::from_secs(3600),
            ),
            consent_pages: WindowLimiter::new(CONSENT_PAGES_PER_MINUTE, Duration::from_secs(60)),
            document_fetches: WindowLimiter::new(
                DOCUMENT_FETCHES_PER_MINUTE,
                Duration::from_secs(60),
            ),
            new_sessions: WindowLimiter::new(
                config.limits.sessions_per_minute,
                Duration::from_secs(60),
            ),
            daily_sessions: WindowLimiter::new(
                config.limits.sessions_per_day,
                Duration::from_secs(24 * 3600),
            ),
            hosts: mcp::policy::HostPolicy::new(&config),
            bindings: mcp::sessions::RecentBindings::new(clock.clone()),
            verified_tokens: Default::default(),
            article_endpoint,
            upstreams,
            store_check: health::StoreCheck::default(),
            articles,
            config: Arc::new(config),
            store,
            clock,
            shutdown,
            leptos,
        })))
    }

    fn site_info(&self) -> SiteInfo {
        let endpoints = self
            .resources()
            .map(|resource| app::McpEndpoint {
                name: match resource.path.strip_prefix("/mcp/") {
                    Some(name) => name.to_owned(),
                    None => "gatehouse".to_owned(),
                },
                title: resource.title.clone(),
                url: resource.uri.to_string(),
            })
            .collect();
        SiteInfo {
            public_url: self.config.public_url.as_str().to_owned(),
            endpoints,
        }
    }

    fn resources(&self) -> impl Iterator<Item = &Arc<Resource>> {
        self.auth.settings().resources.iter()
    }
}

/// CORS for the endpoints browser-based clients call (the MCP Inspector runs at
/// `http://localhost:6274`); preflights are answered here and never reach
/// authentication. Discovery, registration and tokens involve no cookies, so any
/// origin may call them; the MCP endpoints answer only the origins the guard allows
/// (`origins`), echoing the origin rather than `*`, and whatever headers such an
/// origin asks to send: 2026-07-28 (SEP-2243) has clients send a tool's annotated
/// arguments as `Mcp-Param-<name>` headers, names no fixed list can hold, and a page
/// the guard allows gains nothing by a header that it lacks without one.
fn api_cors(origins: Option<mcp::policy::HostPolicy>) -> CorsLayer {
    let (allow_origin, allow_headers) = match origins {
        None => (
            AllowOrigin::any(),
            AllowHeaders::list([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::ACCEPT,
                mcp::SESSION_ID.clone(),
                mcp::PROTOCOL_VERSION.clone(),
                HeaderName::from_static("last-event-id"),
                mcp::METHOD.clone(),
                mcp::NAME.clone(),
            ]),
        ),
        Some(policy) => (
            AllowOrigin::predicate(move |origin, _| {
                origin
                    .to_str()
                    .ok()
                    .and_then(|o| crate::net::Origin::parse(o).ok())
                    .is_some_and(|o| policy.allows_origin(&o))
            }),
            AllowHeaders::mirror_request(),
        ),
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
        .allow_headers(allow_headers)
        .expose_headers([header::WWW_AUTHENTICATE, mcp::SESSION_ID.clone()])
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
        .route(
            "/oauth/register",
            post(oauth::register::register).fallback(oauth::post_only),
        )
        .route(
            "/oauth/token",
            post(oauth::token::token).fallback(oauth::post_only),
        )
        .route(
            "/oauth/revoke",
            post(oauth::token::revoke).fallback(oauth::post_only),
        )
        .layer(api_cors(None));

    // The MCP endpoints, exact paths only (never redirected), behind the bearer guard.
    let mut mcp = Router::new();
    if let Some(endpoint) = state.article_endpoint.clone() {
        mcp = mcp.route(
            crate::mcp::articles::PATH,
            any(move |State(state): State<AppState>, request: Request| {
                mcp::guard::handle(state, endpoint.clone(), request)
            }),
        );
    }
    for endpoint in &state.upstreams {
        let path = endpoint.resource().path.clone();
        let endpoint = endpoint.clone();
        mcp = mcp.route(
            &path,
            any(move |State(state): State<AppState>, request: Request| {
                mcp::guard::handle(state, endpoint.clone(), request)
            }),
        );
    }
    let mcp_cors = api_cors(Some(state.hosts.clone()));
    let mcp = mcp.layer(mcp_cors.clone());

    // Each resource's RFC 9728 metadata: public documents.
    let mut metadata = Router::new();
    for (index, resource) in state.resources().enumerate() {
        let document = {
            let (resource, public_url) = (resource.clone(), state.config.public_url.clone());
            move || {
                let (resource, public_url) = (resource.clone(), public_url.clone());
                async move { mcp::metadata::document(public_url.as_str(), &resource) }
            }
        };
        metadata = metadata.route(&resource.metadata_path(), get(document.clone()));
        // RFC 9728 §3.1 puts the document at the path-suffixed URL; older clients
        // look at the bare one, which describes the default resource.
        if index == 0 {
            metadata = metadata.route("/.well-known/oauth-protected-resource", get(document));
        }
    }
    let metadata = metadata.layer(api_cors(None));

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
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            browser_host,
        ));

    // Pages (Leptos SSR) and their server functions, with the owner's console.
    let console: Arc<dyn app::console::ConsoleBackend> =
        Arc::new(console::Console::new(state.clone()));
    let pages = Router::new()
        .leptos_routes_with_context(
            &state,
            routes,
            move || {
                provide_context(site_info.clone());
                provide_context(console.clone());
            },
            {
                let options = state.leptos.clone();
                move || shell(options.clone())
            },
        )
        .layer(RequestBodyLimitLayer::new(PAGE_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            browser_host,
        ));

    // Routes, with what must see the matched route (the request count) or apply to
    // some routes only. Each layer here wraps every route, and axum clones each
    // route's stack for every request, so what applies to all requests alike goes
    // around the router instead, below.
    let routes = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(metrics::guarded))
        .merge(api)
        .merge(mcp)
        .merge(metadata)
        .merge(browser)
        // Static files from the site root (`/pkg/*`), else the app's 404 page.
        .fallback(leptos_axum::file_and_error_handler::<AppState, _>(shell))
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .merge(pages)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            console::guard,
        ))
        .layer(axum::middleware::from_fn(count_request))
        .with_state(state.clone());

    let around = tower::ServiceBuilder::new()
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &axum::http::Request<_>| {
                // The path only: query strings carry single-use tickets, setup tokens
                // and authorization parameters, which must never reach a log.
                tracing::debug_span!("request", method = %request.method(), path = %request.uri().path())
            }),
        )
        .layer(SetResponseHeaderLayer::if_not_present(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        // RFC 6797: browsers keep to https once they have seen it here.
        .option_layer(state.config.public_url.is_https().then(|| {
            SetResponseHeaderLayer::if_not_present(
                header::STRICT_TRANSPORT_SECURITY,
                HeaderValue::from_static("max-age=31536000"),
            )
        }))
        // A 413 or 408 leaves the rest of the body unread, and hyper then closes the
        // connection after the answer: the answer says so, or a client could send its
        // next request on it and see it closed without an answer (HTTP/2 drops it).
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONNECTION,
            |response: &axum::response::Response| {
                matches!(
                    response.status(),
                    axum::http::StatusCode::PAYLOAD_TOO_LARGE
                        | axum::http::StatusCode::REQUEST_TIMEOUT
                )
                .then(|| HeaderValue::from_static("close"))
            },
        ))
        .service(mcp::front::McpFirst::new(state.clone(), routes, &mcp_cors));
    Router::new().fallback_service(around)
}

/// In front of the pages, the console's calls, and the owner's sign-in and consent:
/// only under a `Host` of ours (see `HostPolicy::allows_host`), as for `/mcp`.
async fn browser_host(
    State(state): State<AppState>,
    request: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if state.hosts.allows_host(request.uri(), request.headers()) {
        return next.run(request).await;
    }
    crate::warn_throttled!("refused a page request for a Host that is not ours");
    axum::response::IntoResponse::into_response((
        axum::http::StatusCode::FORBIDDEN,
        oauth::page_headers(),
        app::error_document(
            403,
            "Not served here",
            "This Gatehouse does not answer under this address. Its owner can add the address with --allowed-host.",
        ),
    ))
}

/// Counts a request by route and status, timed from `started` to its answer's head.
fn count_request_as(route: &str, status: axum::http::StatusCode, started: std::time::Instant) {
    static DURATIONS: OnceLock<telemetry::Handles<::metrics::Histogram>> = OnceLock::new();
    static REQUESTS: OnceLock<telemetry::Handles<::metrics::Counter>> = OnceLock::new();
    DURATIONS
        .get_or_init(telemetry::Handles::new)
        .get(
            &[route],
            || ::metrics::histogram!(telemetry::HTTP_DURATION, "route" => route.to_owned()),
        )
        .record(started.elapsed().as_secs_f64());
    REQUESTS
        .get_or_init(telemetry::Handles::new)
        .get(&[route, status.as_str()], || {
            ::metrics::counter!(
                telemetry::HTTP_REQUESTS,
                "route" => route.to_owned(),
                "status" => status.as_str().to_owned()
            )
        })
        .increment(1);
}

/// Counts every request by route (the path pattern, never the path itself, which may
/// carry ids) and status, and times it to the answer's head.
async fn count_request(request: Request, next: axum::middleware::Next) -> axum::response::Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .cloned();
    let route = route.as_ref().map_or("unmatched", |p| p.as_str());
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    count_request_as(route, response.status(), started);
    response
}
