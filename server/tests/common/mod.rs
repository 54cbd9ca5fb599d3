//! Shared helpers for the router tests: a real app on a fresh embedded store,
//! driven with `oneshot`, and the steps of the OAuth flow.
#![allow(dead_code)]

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
use clap::Parser;
use gatehouse::{
    config::{Cli, Config},
    http::{router, AppState},
    store::SharedStore,
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

pub struct TestApp {
    pub router: Router,
    pub store: SharedStore,
    pub state: AppState,
    pub dir: Arc<tempfile::TempDir>,
    /// Set by [`TestApp::serve`]: requests then go over HTTP to this origin.
    pub base: Option<String>,
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// A `POST /mcp` as a client sends it, every header a field, for tests that vary
/// one of them.
pub struct McpPost<'a> {
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
        let mut request = Request::post("/mcp")
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
        request.body(Body::from(body.to_string())).expect("request")
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
    let mut args = vec![
        "gatehouse",
        "--public-url",
        PUBLIC_URL,
        "--data-dir",
        dir.to_str().expect("utf-8"),
        "--owner-password-hash",
        password_hash(),
    ];
    args.extend_from_slice(extra);
    Cli::try_parse_from(args)
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
        let config = config_with(dir.path(), extra);
        let store = embedded(&config);
        Self::assemble(dir, config, store)
    }

    /// An app on the store `store` makes from the config (a failing one, say).
    pub fn with_store(store: impl FnOnce(&Config) -> SharedStore) -> Self {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let config = config_with(dir.path(), &[]);
        let store = store(&config);
        Self::assemble(dir, config, store)
    }

    fn assemble(dir: Arc<tempfile::TempDir>, config: Config, store: SharedStore) -> Self {
        let state = AppState::new(config, store.clone());
        TestApp {
            router: router(state.clone()),
            store,
            state,
            dir,
            base: None,
        }
    }

    /// An app on a Redis store with this key prefix (two apps with one prefix are two
    /// instances of one deployment).
    pub async fn on_redis(url: &str, prefix: &str, extra: &[&str]) -> Self {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let mut args = vec!["--store", url, "--redis-key-prefix", prefix];
        args.extend_from_slice(extra);
        let config = config_with(dir.path(), &args);
        let store = gatehouse::open_store(&config.store)
            .await
            .expect("Redis store");
        Self::assemble(dir, config, store)
    }

    /// Serves the app on a free loopback port, as a real instance; every request of
    /// the helpers then goes over TCP.
    pub async fn serve(mut self) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
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
        self.post_form(
            "/oauth/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", "https://client.example/cb"),
                ("code_verifier", VERIFIER),
                ("client_id", client_id),
                ("resource", "https://gate.example.com/mcp"),
            ],
            None,
        )
        .await
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

    /// RFC 7009 revocation by a public client.
    pub async fn revoke(&self, client_id: &str, token: &str) -> Answer {
        self.post_form(
            "/oauth/revoke",
            &[("token", token), ("client_id", client_id)],
            None,
        )
        .await
    }

    pub async fn token_is_valid(&self, access_token: &str) -> bool {
        self.state
            .auth
            .verify_access_token(access_token)
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

pub fn assert_no_nulls(value: &Value) {
    match value {
        Value::Null => panic!("null in a response"),
        Value::Array(items) => items.iter().for_each(assert_no_nulls),
        Value::Object(map) => map.values().for_each(assert_no_nulls),
        _ => {}
    }
}

impl TestApp {
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

/// A store whose backend cannot be reached, as when a Redis server is down.
pub struct UnreachableStore;

fn down() -> gatehouse::store::StoreError {
    gatehouse::store::StoreError::Unavailable("connection refused".into())
}

#[async_trait::async_trait]
impl gatehouse::store::Store for UnreachableStore {
    async fn put(
        &self,
        _: &gatehouse::store::Key,
        _: &[u8],
        _: gatehouse::store::Put<'_>,
    ) -> gatehouse::store::StoreResult<()> {
        Err(down())
    }
    async fn put_new(
        &self,
        _: &gatehouse::store::Key,
        _: &[u8],
        _: gatehouse::store::Put<'_>,
    ) -> gatehouse::store::StoreResult<bool> {
        Err(down())
    }
    async fn get(
        &self,
        _: &gatehouse::store::Key,
    ) -> gatehouse::store::StoreResult<Option<Vec<u8>>> {
        Err(down())
    }
    async fn take(
        &self,
        _: &gatehouse::store::Key,
    ) -> gatehouse::store::StoreResult<Option<Vec<u8>>> {
        Err(down())
    }
    async fn compare_and_swap(
        &self,
        _: &gatehouse::store::Key,
        _: &[u8],
        _: &[u8],
        _: gatehouse::store::Put<'_>,
    ) -> gatehouse::store::StoreResult<bool> {
        Err(down())
    }
    async fn delete(&self, _: &gatehouse::store::Key) -> gatehouse::store::StoreResult<bool> {
        Err(down())
    }
    async fn delete_group(
        &self,
        _: &gatehouse::store::Group,
    ) -> gatehouse::store::StoreResult<u64> {
        Err(down())
    }
    async fn scan(
        &self,
        _: &str,
    ) -> gatehouse::store::StoreResult<Vec<(gatehouse::store::Key, Vec<u8>)>> {
        Err(down())
    }
    async fn export(&self) -> gatehouse::store::StoreResult<Vec<gatehouse::store::Entry>> {
        Err(down())
    }
    async fn ping(&self) -> gatehouse::store::StoreResult<()> {
        Err(down())
    }
    fn backend(&self) -> &'static str {
        "unreachable"
    }
}

/// The embedded store a test config names (tests build apps synchronously).
pub fn embedded(config: &Config) -> SharedStore {
    match &config.store {
        gatehouse::config::StoreSpec::Embedded(path) => {
            Arc::new(gatehouse::store::embedded::EmbeddedStore::open(path).expect("store"))
        }
        other => panic!("an embedded store was expected, not {other:?}"),
    }
}
