//! Shared helpers for the router tests: a real app on a fresh embedded store and a
//! manual clock, driven with `oneshot`, and the steps of the OAuth flow.
#![allow(dead_code)]

pub mod faults;

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
};

use axum::{
    body::Body,
    extract::ConnectInfo,
    http::{header, HeaderMap, Request, StatusCode},
    Router,
};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use gatehouse::{
    clock::Clock,
    config::{Cli, Config},
    http::{router, AppState},
    resource::ResourceUri,
    store::{embedded::EmbeddedStore, redis::PurgeOnDrop, SharedStore},
};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

pub const PASSWORD: &str = "correct horse battery staple";
pub const VERIFIER: &str = "a-verifier-that-is-long-enough-for-pkce-rules-0123456789";
pub const PUBLIC_URL: &str = "https://gate.example.com";

pub fn password_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| gatehouse::oauth::owner::hash_password(PASSWORD).expect("hash"))
}

pub fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

pub const MCP_URL: &str = "https://gate.example.com/mcp";

pub struct TestApp {
    pub router: Router,
    pub store: SharedStore,
    pub state: AppState,
    pub dir: Arc<tempfile::TempDir>,
    /// The app's clock: manual on the embedded store (tests move it forward), the
    /// system clock on Redis (whose TTLs are its own).
    pub clock: Clock,
    /// Set by [`TestApp::serve`]: requests then go over HTTP to this origin.
    pub base: Option<String>,
    /// Deletes a Redis test's keys when the app goes.
    purge: Option<Arc<PurgeOnDrop>>,
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// A `POST /mcp` as a client sends it, every header a field, for tests that vary
/// one of them.
#[derive(Clone, Copy)]
pub struct McpPost<'a> {
    /// `/mcp`, or `/mcp/NAME` for an upstream.
    pub path: &'a str,
    pub host: &'a str,
    pub origin: Option<&'a str>,
    pub token: Option<&'a str>,
    pub session: Option<&'a str>,
    pub version: Option<&'a str>,
    pub accept: &'a str,
    pub content_type: &'a str,
}

impl Default for McpPost<'_> {
    fn default() -> Self {
        McpPost {
            path: "/mcp",
            host: "gate.example.com",
            origin: None,
            token: None,
            session: None,
            version: None,
            accept: "application/json, text/event-stream",
            content_type: "application/json",
        }
    }
}

impl McpPost<'_> {
    pub fn body(&self, body: Value) -> Request<Body> {
        self.with_body(Body::from(body.to_string()))
    }

    /// The request with any body (raw bytes, a stream without `Content-Length`).
    pub fn with_body(&self, body: Body) -> Request<Body> {
        let mut request = Request::post(self.path)
            .header(header::HOST, self.host)
            .header(header::CONTENT_TYPE, self.content_type)
            .header(header::ACCEPT, self.accept);
        let optional = [
            (header::ORIGIN.as_str(), self.origin.map(str::to_owned)),
            (
                header::AUTHORIZATION.as_str(),
                self.token.map(|t| format!("Bearer {t}")),
            ),
            ("mcp-session-id", self.session.map(str::to_owned)),
            ("mcp-protocol-version", self.version.map(str::to_owned)),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                request = request.header(name, value);
            }
        }
        request.body(body).expect("request")
    }
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn location(&self) -> String {
        self.headers
            .get(header::LOCATION)
            .unwrap_or_else(|| panic!("no Location ({}): {}", self.status, self.body))
            .to_str()
            .expect("ascii")
            .to_owned()
    }

    pub fn query(&self) -> Vec<(String, String)> {
        let location = self.location();
        let url = url::Url::parse(&location).expect("absolute redirect");
        url.query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    pub fn param(&self, name: &str) -> Option<String> {
        self.query()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

pub fn config_with(dir: &std::path::Path, extra: &[&str]) -> Config {
    config_for(PUBLIC_URL, dir, extra)
}

pub fn config_for(public_url: &str, dir: &std::path::Path, extra: &[&str]) -> Config {
    let mut args = vec![
        "gatehouse",
        "--public-url",
        public_url,
        "--data-dir",
        dir.to_str().expect("utf-8"),
        "--owner-password-hash",
        password_hash(),
    ];
    args.extend_from_slice(extra);
    Cli::parse_ignoring_env(args)
        .expect("flags")
        .serve
        .into_config()
        .expect("valid config")
}

impl TestApp {
    pub fn new(extra: &[&str]) -> Self {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        Self::open(dir, extra)
    }

    /// The same data directory, a fresh process: what a restart looks like.
    pub fn open(dir: Arc<tempfile::TempDir>, extra: &[&str]) -> Self {
        Self::open_with_clock(dir, extra, Clock::manual())
    }

    /// An app whose public URL is `public_url` instead of [`PUBLIC_URL`].
    pub fn with_public_url(public_url: &str) -> Self {
        Self::with_public_url_and(public_url, &[])
    }

    /// The same, with more flags.
    pub fn with_public_url_and(public_url: &str, extra: &[&str]) -> Self {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let config = config_for(public_url, dir.path(), extra);
        let clock = Clock::manual();
        let store = embedded(&config, &clock);
        Self::assemble(dir, config, store, clock)
    }

    /// A restart that keeps the clock where the previous process left it.
    pub fn open_with_clock(dir: Arc<tempfile::TempDir>, extra: &[&str], clock: Clock) -> Self {
        let config = config_with(dir.path(), extra);
        let store = embedded(&config, &clock);
        Self::assemble(dir, config, store, clock)
    }

    /// Restarts the app as a shutdown and a new start would: the MCP sessions end,
    /// the store is let go, and the same data directory opens on the same clock.
    /// redb allows one handle per file and session tasks drop theirs only once they
    /// see the cancellation, so the reopen yields to them until the file is free
    /// instead of waiting for wall-clock time.
    pub async fn restart(self, extra: &[&str]) -> Self {
        let (dir, clock) = (self.dir.clone(), self.clock.clone());
        self.state.shutdown.cancel();
        drop(self);
        let config = config_with(dir.path(), extra);
        let gatehouse::config::StoreSpec::Embedded(path) = config.store.clone() else {
            panic!("a restart reopens an embedded store")
        };
        let mut refused = None;
        for _ in 0..10_000 {
            match EmbeddedStore::open_with_clock(&path, clock.clone()) {
                Ok(store) => return Self::assemble(dir, config, Arc::new(store), clock),
                Err(e) => refused = Some(e),
            }
            tokio::task::yield_now().await;
        }
        panic!("the old app never let go of its store: {refused:?}");
    }

    /// An app on the store `store` makes from the config and the clock (a failing
    /// one, say).
    pub fn with_store(store: impl FnOnce(&Config, &Clock) -> SharedStore) -> Self {
        Self::with_store_and_args(&[], store)
    }

    /// The same, with `args` on the command line.
    pub fn with_store_and_args(
        args: &[&str],
        store: impl FnOnce(&Config, &Clock) -> SharedStore,
    ) -> Self {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let config = config_with(dir.path(), args);
        let clock = Clock::manual();
        let store = store(&config, &clock);
        Self::assemble(dir, config, store, clock)
    }

    /// An app on an embedded store behind a fault switch.
    pub fn with_faults() -> (Self, faults::Faults) {
        Self::with_faults_and_args(&[])
    }

    /// The same, with `args` on the command line.
    pub fn with_faults_and_args(args: &[&str]) -> (Self, faults::Faults) {
        let mut switch = None;
        let app = Self::with_store_and_args(args, |config, clock| {
            let (store, faults) = faults::FaultStore::wrap(embedded(config, clock));
            switch = Some(faults);
            store
        });
        (app, switch.expect("the store was built"))
    }

    pub fn assemble(
        dir: Arc<tempfile::TempDir>,
        config: Config,
        store: SharedStore,
        clock: Clock,
    ) -> Self {
        let state = AppState::with_clock(config, store.clone(), clock.clone()).expect("state");
        TestApp {
            router: router(state.clone()),
            store,
            state,
            dir,
            clock,
            base: None,
            purge: None,
        }
    }

    /// An app on a Redis store with this key prefix (two apps with one prefix are two
    /// instances of one deployment). The prefix's keys are deleted when the last app
    /// using it goes.
    pub async fn on_redis(url: &str, prefix: &str, extra: &[&str]) -> Self {
        Self::on_redis_sharing(url, prefix, extra, None).await
    }

    /// A second instance on the same prefix as `other`.
    pub async fn another_instance(other: &TestApp, url: &str, prefix: &str) -> Self {
        Self::on_redis_sharing(url, prefix, &[], other.purge.clone()).await
    }

    async fn on_redis_sharing(
        url: &str,
        prefix: &str,
        extra: &[&str],
        purge: Option<Arc<PurgeOnDrop>>,
    ) -> Self {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let mut args = vec!["--store", url, "--redis-key-prefix", prefix];
        args.extend_from_slice(extra);
        let config = config_with(dir.path(), &args);
        let store = gatehouse::open_store(&config.store)
            .await
            .expect("Redis store");
        // Manual: the real time until a test moves it on (Redis keeps its own).
        let mut app = Self::assemble(dir, config, store, Clock::manual());
        app.purge = Some(purge.unwrap_or_else(|| {
            Arc::new(PurgeOnDrop {
                url: url.to_owned(),
                prefix: prefix.to_owned(),
            })
        }));
        app
    }

    /// Serves the app on a free loopback port, as a real instance; every request of
    /// the helpers then goes over TCP.
    pub async fn serve(self) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        self.serve_on(listener).await
    }

    /// An app whose public URL is the loopback address it is served on: a
    /// deployment with nothing in front, as a client on this machine reaches it.
    pub async fn served_at_its_own_url(extra: &[&str]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        Self::with_public_url_and(&format!("http://{addr}"), extra)
            .serve_on(listener)
            .await
    }

    /// Serves the app on `listener`, bound by the caller (who may need its port
    /// first).
    pub async fn serve_on(mut self, listener: tokio::net::TcpListener) -> Self {
        let addr = listener.local_addr().expect("addr");
        let app = self
            .router
            .clone()
            .into_make_service_with_connect_info::<SocketAddr>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        self.base = Some(format!("http://{addr}"));
        self
    }

    async fn send_http(&self, base: &str, request: Request<Body>) -> Answer {
        let (parts, body) = request.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let mut outgoing = client
            .request(parts.method, format!("{base}{}", parts.uri))
            .body(body);
        for (name, value) in &parts.headers {
            outgoing = outgoing.header(name, value);
        }
        let response = outgoing.send().await.expect("response");
        Answer {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.text().await.expect("text"),
        }
    }

    /// `request`'s response, its body not read: a client that has not read its
    /// answer yet (in-process only).
    pub async fn respond(&self, request: Request<Body>) -> axum::response::Response {
        assert!(self.base.is_none(), "in-process only");
        self.router
            .clone()
            .oneshot(request)
            .await
            .expect("response")
    }

    pub async fn send(&self, request: Request<Body>) -> Answer {
        if let Some(base) = &self.base {
            return self.send_http(base, request).await;
        }
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("response");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    pub async fn get(&self, path: &str, cookie: Option<&str>) -> Answer {
        let mut request = Request::get(path);
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        self.send(request.body(Body::empty()).expect("request"))
            .await
    }

    pub async fn post_form(
        &self,
        path: &str,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
    ) -> Answer {
        let body = serde_urlencoded::to_string(form).expect("form");
        let mut request =
            Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some((id, secret)) = basic {
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
            request = request.header(header::AUTHORIZATION, format!("Basic {encoded}"));
        }
        self.send(request.body(Body::from(body)).expect("request"))
            .await
    }

    pub async fn register(&self, metadata: Value) -> Answer {
        let request = Request::post("/oauth/register")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(metadata.to_string()))
            .expect("request");
        self.send(request).await
    }

    /// Registers a public client with one https and one loopback redirect URI.
    pub async fn public_client(&self, name: &str) -> String {
        let answer = self
            .register(json!({
                "client_name": name,
                "redirect_uris": ["https://client.example/cb", "http://localhost/callback"],
                "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"],
            }))
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        answer.json()["client_id"]
            .as_str()
            .expect("client_id")
            .to_owned()
    }

    pub async fn sign_in_from(&self, ip: [u8; 4], password: &str) -> Answer {
        let body = serde_urlencoded::to_string([("password", password), ("return_to", "/")])
            .expect("form");
        let mut request = Request::post("/oauth/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .expect("request");
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from((ip, 40000))));
        self.send(request).await
    }

    /// Signs in; returns the `Cookie` header value.
    pub async fn sign_in(&self) -> String {
        let answer = self.sign_in_from([127, 0, 0, 1], PASSWORD).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
        let set_cookie = answer.headers[header::SET_COOKIE].to_str().expect("ascii");
        set_cookie.split(';').next().expect("pair").to_owned()
    }

    pub async fn authorize(
        &self,
        client_id: &str,
        extra: &[(&str, &str)],
        cookie: Option<&str>,
    ) -> Answer {
        let challenge = challenge(VERIFIER);
        let mut params = vec![
            ("client_id", client_id),
            ("redirect_uri", "https://client.example/cb"),
            ("response_type", "code"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("scope", "read:articles write:articles"),
            ("state", "xyz-state"),
            ("resource", "https://gate.example.com/mcp"),
        ];
        for (name, value) in extra {
            params.retain(|(n, _)| n != name);
            if !value.is_empty() {
                params.push((name, value));
            }
        }
        let query = serde_urlencoded::to_string(&params).expect("query");
        self.get(&format!("/oauth/authorize?{query}"), cookie).await
    }

    /// The consent page's approve (or deny) link.
    pub fn link(consent: &Answer, which: &str) -> String {
        let marker = format!("href=\"/oauth/authorize/{which}?ticket=");
        let start = consent
            .body
            .find(&marker)
            .unwrap_or_else(|| panic!("no {which} link: {}", consent.body))
            + 6;
        let end = start + consent.body[start..].find('"').expect("closing quote");
        consent.body[start..end].replace("&amp;", "&")
    }

    /// Runs the whole flow to a code; returns (client_id, cookie, code).
    pub async fn code_for(&self, scope: &str) -> (String, String, String) {
        let client_id = self.public_client("Test client").await;
        let cookie = self.sign_in().await;
        let consent = self
            .authorize(&client_id, &[("scope", scope)], Some(&cookie))
            .await;
        assert_eq!(consent.status, StatusCode::OK, "{}", consent.body);
        let approved = self
            .get(&Self::link(&consent, "approve"), Some(&cookie))
            .await;
        assert_eq!(approved.status, StatusCode::SEE_OTHER, "{}", approved.body);
        let code = approved.param("code").expect("code");
        (client_id, cookie, code)
    }

    pub async fn redeem(&self, client_id: &str, code: &str) -> Answer {
        self.redeem_at(client_id, code, MCP_URL).await
    }

    /// Redeems a code issued for `resource`.
    pub async fn redeem_at(&self, client_id: &str, code: &str, resource: &str) -> Answer {
        self.redeem_with(
            client_id,
            code,
            &[
                ("redirect_uri", "https://client.example/cb"),
                ("resource", resource),
            ],
        )
        .await
    }

    /// Redeems a code with the test's verifier and the given other parameters.
    pub async fn redeem_with(&self, client_id: &str, code: &str, extra: &[(&str, &str)]) -> Answer {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("code_verifier", VERIFIER),
            ("client_id", client_id),
        ];
        form.extend_from_slice(extra);
        self.post_form("/oauth/token", &form, None).await
    }

    pub async fn refresh(
        &self,
        client_id: &str,
        refresh_token: &str,
        extra: &[(&str, &str)],
    ) -> Answer {
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", client_id),
        ];
        form.extend_from_slice(extra);
        self.post_form("/oauth/token", &form, None).await
    }

    /// A refresh that must succeed: the new pair.
    pub async fn rotate(&self, client_id: &str, refresh_token: &str) -> Value {
        let answer = self.refresh(client_id, refresh_token, &[]).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        answer.json()
    }

    /// RFC 7009 revocation by a public client.
    pub async fn revoke(&self, client_id: &str, token: &str) -> Answer {
        self.post_form(
            "/oauth/revoke",
            &[("token", token), ("client_id", client_id)],
            None,
        )
        .await
    }

    /// Whether the MCP session `session` is still bound to a client in the store.
    pub async fn is_bound(&self, session: &str) -> bool {
        let binding = gatehouse::http::mcp::sessions::binding_key(session);
        self.store.get(&binding).await.expect("store").is_some()
    }

    pub async fn token_is_valid(&self, access_token: &str) -> bool {
        self.state
            .auth
            .verify_access_token(access_token, &ResourceUri::new(MCP_URL.into()))
            .await
            .expect("store")
            .is_some()
    }
}

/// Form fields to override in a request (an empty value removes the field).
pub type Overrides<'a> = &'a [(&'a str, &'a str)];

pub fn assert_oauth_error(answer: &Answer, status: StatusCode, error: &str) {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert_eq!(answer.json()["error"], error, "{}", answer.body);
    assert!(answer.json()["error_description"].is_string());
    assert_eq!(answer.headers[header::CACHE_CONTROL], "no-store");
}

/// Text of an HTML page as a person reads it: tags dropped, entities decoded.
fn page_text(html: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#34;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&amp;", "&")
}

impl Answer {
    /// The error page's title and message (the `data-testid` elements), as shown.
    pub fn error_page(&self) -> (String, String) {
        let element = |testid: &str, close: &str| {
            let marker = format!("data-testid=\"{testid}\"");
            let start = self
                .body
                .find(&marker)
                .unwrap_or_else(|| panic!("no {testid} ({}): {}", self.status, self.body));
            let open_end = start + self.body[start..].find('>').expect("tag end") + 1;
            let end = open_end + self.body[open_end..].find(close).expect("closing tag");
            page_text(&self.body[open_end..end])
        };
        (
            element("error-title", "</h1>"),
            element("error-message", "</p>"),
        )
    }
}

/// A browser endpoint's refusal: the styled error page with this title and a message
/// that contains `message`, never a redirect.
#[track_caller]
pub fn assert_error_page(answer: &Answer, status: StatusCode, title: &str, message: &str) {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert!(
        answer.headers.get(header::LOCATION).is_none(),
        "redirected: {:?}",
        answer.headers.get(header::LOCATION)
    );
    assert!(answer.headers[header::CONTENT_TYPE]
        .to_str()
        .expect("ascii")
        .starts_with("text/html"));
    let (shown_title, shown_message) = answer.error_page();
    assert_eq!(shown_title, title, "{shown_message}");
    assert!(
        shown_message.contains(message),
        "{title}: {shown_message:?} does not say {message:?}"
    );
}

/// The request headers browser-based MCP and OAuth clients send, which every preflight
/// must allow.
pub const CORS_REQUEST_HEADERS: [&str; 6] = [
    "authorization",
    "content-type",
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
];

#[track_caller]
pub fn header_list(answer: &Answer, name: header::HeaderName) -> Vec<String> {
    let value = answer
        .headers
        .get(&name)
        .unwrap_or_else(|| panic!("no {name} ({}): {:?}", answer.status, answer.headers));
    value
        .to_str()
        .expect("ascii")
        .split(',')
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty())
        .collect()
}

/// A CORS preflight answered for any origin, with every method, request header and
/// the cache lifetime browser clients of `/mcp` and the OAuth endpoints need.
#[track_caller]
pub fn assert_cors_preflight(answer: &Answer, what: &str, origin: &str) {
    assert!(
        answer.status.is_success(),
        "{what}: preflight got {}",
        answer.status
    );
    assert_eq!(
        answer.headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        origin,
        "{what}"
    );
    let methods = header_list(answer, header::ACCESS_CONTROL_ALLOW_METHODS);
    for method in ["get", "post", "delete", "options"] {
        assert!(
            methods.iter().any(|m| m == method),
            "{what}: {methods:?} lacks {method}"
        );
    }
    let allowed = header_list(answer, header::ACCESS_CONTROL_ALLOW_HEADERS);
    for needed in CORS_REQUEST_HEADERS {
        assert!(
            allowed.iter().any(|h| h == needed),
            "{what}: {allowed:?} lacks {needed}"
        );
    }
    assert_eq!(
        answer.headers[header::ACCESS_CONTROL_MAX_AGE],
        "86400",
        "{what}: preflights are cached for a day"
    );
}

/// A cross-origin answer (not a preflight) that lets browser clients read the
/// challenge and the session id.
#[track_caller]
pub fn assert_cors_exposed(answer: &Answer, what: &str, origin: &str) {
    assert_eq!(
        answer.headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        origin,
        "{what}"
    );
    let exposed = header_list(answer, header::ACCESS_CONTROL_EXPOSE_HEADERS);
    for needed in ["www-authenticate", "mcp-session-id"] {
        assert!(
            exposed.iter().any(|h| h == needed),
            "{what}: {exposed:?} lacks {needed}"
        );
    }
}

/// A body sent in `chunks` pieces without a `Content-Length` (chunked transfer).
pub fn streamed(body: Vec<u8>, chunks: usize) -> Body {
    let size = body.len().div_ceil(chunks).max(1);
    let pieces: Vec<Result<axum::body::Bytes, std::io::Error>> = body
        .chunks(size)
        .map(|c| Ok(axum::body::Bytes::copy_from_slice(c)))
        .collect();
    Body::from_stream(futures::stream::iter(pieces))
}

pub fn assert_no_nulls(value: &Value) {
    match value {
        Value::Null => panic!("null in a response"),
        Value::Array(items) => items.iter().for_each(assert_no_nulls),
        Value::Object(map) => map.values().for_each(assert_no_nulls),
        _ => {}
    }
}

impl TestApp {
    /// The whole OAuth flow to tokens for `resource` with `scope`.
    pub async fn tokens_at(&self, resource: &str, scope: &str) -> (String, Value) {
        let client_id = self.public_client("Test client").await;
        let cookie = self.sign_in().await;
        let consent = self
            .authorize(
                &client_id,
                &[("scope", scope), ("resource", resource)],
                Some(&cookie),
            )
            .await;
        assert_eq!(consent.status, StatusCode::OK, "{}", consent.body);
        let approved = self
            .get(&Self::link(&consent, "approve"), Some(&cookie))
            .await;
        let code = approved.param("code").expect("code");
        let answer = self.redeem_at(&client_id, &code, resource).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        (client_id, answer.json())
    }

    /// `initialize` and `notifications/initialized` at `path`; returns the session id.
    pub async fn session_at(&self, path: &str, token: &str, version: &str) -> String {
        let post = |session: Option<&str>, body: Value| {
            McpPost {
                path,
                token: Some(token),
                session,
                version: session.map(|_| version),
                ..McpPost::default()
            }
            .body(body)
        };
        let init = self
            .send(post(
                None,
                json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                    "protocolVersion": version,
                    "capabilities": {},
                    "clientInfo": {"name": "router-test", "version": "1"}
                }}),
            ))
            .await;
        assert_eq!(init.status, StatusCode::OK, "{}", init.body);
        let session = init
            .headers
            .get("mcp-session-id")
            .expect("session id")
            .to_str()
            .expect("ascii")
            .to_owned();
        let initialized = self
            .send(post(
                Some(&session),
                json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            ))
            .await;
        assert_eq!(
            initialized.status,
            StatusCode::ACCEPTED,
            "{}",
            initialized.body
        );
        session
    }

    /// Ends `session` at `path` with a DELETE, as a Streamable HTTP client does.
    pub async fn end_session(
        &self,
        path: &str,
        token: &str,
        session: &str,
        version: &str,
    ) -> Answer {
        self.send(
            Request::delete(path)
                .header(header::HOST, "gate.example.com")
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .header("mcp-session-id", session)
                .header("mcp-protocol-version", version)
                .body(Body::empty())
                .expect("request"),
        )
        .await
    }

    /// The whole OAuth flow to tokens with `scope`; returns (client_id, token response).
    pub async fn tokens_for(&self, scope: &str) -> (String, Value) {
        let (client_id, _, code) = self.code_for(scope).await;
        let answer = self.redeem(&client_id, &code).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        (client_id, answer.json())
    }

    /// A POST to `/mcp` as a Streamable HTTP client sends it.
    pub async fn mcp(
        &self,
        token: Option<&str>,
        session: Option<&str>,
        version: Option<&str>,
        body: Value,
    ) -> Answer {
        let post = McpPost {
            token,
            session,
            version,
            ..McpPost::default()
        };
        self.send(post.body(body)).await
    }

    /// `initialize` then `notifications/initialized`; returns the session id.
    pub async fn mcp_session(&self, token: &str, version: &str) -> String {
        let init = self
            .mcp(
                Some(token),
                None,
                None,
                json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                    "protocolVersion": version,
                    "capabilities": {},
                    "clientInfo": {"name": "router-test", "version": "1"}
                }}),
            )
            .await;
        assert_eq!(init.status, StatusCode::OK, "{}", init.body);
        let session = init
            .headers
            .get("mcp-session-id")
            .expect("session id")
            .to_str()
            .expect("ascii")
            .to_owned();
        assert_eq!(init.rpc()["result"]["protocolVersion"], version);
        let initialized = self
            .mcp(
                Some(token),
                Some(&session),
                Some(version),
                json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            )
            .await;
        assert_eq!(
            initialized.status,
            StatusCode::ACCEPTED,
            "{}",
            initialized.body
        );
        session
    }
}

impl Answer {
    /// The JSON-RPC response in a JSON or SSE body.
    pub fn rpc(&self) -> Value {
        let content_type = self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if content_type.starts_with("text/event-stream") {
            self.body
                .lines()
                .rev()
                .filter_map(|line| line.strip_prefix("data:"))
                .filter_map(|data| serde_json::from_str::<Value>(data.trim()).ok())
                .find(|message| message.get("id").is_some())
                .unwrap_or_else(|| panic!("no JSON-RPC response in the stream: {}", self.body))
        } else {
            self.json()
        }
    }
}

/// The embedded store a test config names, on `clock` (tests build apps
/// synchronously).
pub fn embedded(config: &Config, clock: &Clock) -> SharedStore {
    match &config.store {
        gatehouse::config::StoreSpec::Embedded(path) => {
            Arc::new(EmbeddedStore::open_with_clock(path, clock.clone()).expect("store"))
        }
        other => panic!("an embedded store was expected, not {other:?}"),
    }
}

/// The grant id a token names (`<kind>.<grant>.<secret>`).
pub fn grant_of(token: &str) -> String {
    token.split('.').nth(1).expect("a grant id").to_owned()
}

/// 50 concurrent redemptions of one code, then 50 concurrent refreshes of one refresh
/// token, spread over two apps (two instances, or one app twice).
///
/// A code redeemed twice is a replay (OAuth 2.1 §4.1.3), even when the two arrive
/// together: at most one redemption is answered with tokens, and the grant is
/// revoked, so those tokens stop working too. Concurrent refreshes inside the grace
/// window rotate once, every caller gets the same successor pair, and the losers
/// leave no token behind.
pub async fn concurrent_redemptions_and_refreshes(a: &Arc<TestApp>, b: &Arc<TestApp>) {
    let (client_id, _, code) = a.code_for("read:articles").await;
    let redemptions: Vec<_> = (0..50)
        .map(|i| {
            let (app, client_id, code) = (
                if i % 2 == 0 { a.clone() } else { b.clone() },
                client_id.clone(),
                code.clone(),
            );
            tokio::spawn(async move { app.redeem(&client_id, &code).await })
        })
        .collect();
    let mut issued = Vec::new();
    for redemption in redemptions {
        let answer = redemption.await.expect("join");
        match answer.status {
            StatusCode::OK => issued.push(answer.json()),
            _ => assert_eq!(answer.json()["error"], "invalid_grant", "{}", answer.body),
        }
    }
    assert!(issued.len() <= 1, "at most one redemption succeeds");
    for tokens in &issued {
        let access = tokens["access_token"].as_str().expect("at");
        assert!(!a.token_is_valid(access).await, "the replay revoked it");
        let rt = tokens["refresh_token"].as_str().expect("rt");
        let refresh = a.refresh(&client_id, rt, &[]).await;
        assert_oauth_error(&refresh, StatusCode::BAD_REQUEST, "invalid_grant");
    }
    let grant = grant_of(&code);
    let left = a.store.scan("").await.expect("scan");
    assert!(
        left.iter().all(|(key, _)| !key.as_str().contains(&grant)),
        "nothing of the replayed grant is left: {left:?}"
    );

    let (client_id, tokens) = a.tokens_for("read:articles").await;
    let refresh_token = tokens["refresh_token"].as_str().expect("rt").to_owned();
    let refreshes: Vec<_> = (0..50)
        .map(|i| {
            let (app, client_id, rt) = (
                if i % 2 == 0 { a.clone() } else { b.clone() },
                client_id.clone(),
                refresh_token.clone(),
            );
            tokio::spawn(async move { app.refresh(&client_id, &rt, &[]).await })
        })
        .collect();
    let mut successors = Vec::new();
    for refresh in refreshes {
        let answer = refresh.await.expect("join");
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        successors.push(answer.json());
    }
    // The same pair for all; a retry's `expires_in` says what its access token has
    // left, a second less for those answered in the next second.
    let pair = |answer: &Value| {
        let mut pair = answer.clone();
        let left = pair["expires_in"].take().as_u64().expect("expires_in");
        (pair, left)
    };
    let (first, lifetime) = pair(&successors[0]);
    for successor in &successors {
        let (same, left) = pair(successor);
        assert_eq!(same, first, "one successor pair for all");
        assert!(lifetime.abs_diff(left) <= 2, "{lifetime} {left}");
    }
    assert_ne!(successors[0]["refresh_token"], tokens["refresh_token"]);
    // The losers' access tokens are gone: the grant holds the first token and the
    // successor's, nothing else.
    let grant = grant_of(&refresh_token);
    let access_keys = a
        .store
        .scan(&format!("at:{{{grant}}}:"))
        .await
        .expect("scan")
        .len();
    assert_eq!(access_keys, 2, "only the original and the successor remain");
    assert!(
        a.token_is_valid(tokens["access_token"].as_str().expect("at"))
            .await
    );
    assert!(
        a.token_is_valid(successors[0]["access_token"].as_str().expect("at"))
            .await
    );
}
