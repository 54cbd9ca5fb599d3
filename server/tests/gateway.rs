//! The gateway through the real router: a stdio server Gatehouse starts (a small
//! hand-written Python server, `upstreams/stdio_server.py`) and a Streamable HTTP
//! server (rmcp, in this process), each its own protected resource with per-tool
//! scopes. Real third-party servers and clients are in the end-to-end suite.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::http::{header, Request, StatusCode};
use common::*;
use rmcp::{
    model::*,
    service::RequestContext,
    transport::streamable_http_server::{
        session::local::LocalSessionManager, StreamableHttpServerConfig, StreamableHttpService,
    },
    ErrorData, RoleServer, ServerHandler,
};
use serde_json::{json, Value};

const V2025: &str = "2025-06-18";
const PY_URL: &str = "https://gate.example.com/mcp/py";

/// The Python interpreter itself, not a wrapper (pyenv's `python3` is a shell script
/// that adds variables of its own to the environment).
fn python() -> String {
    let output = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 is needed for the gateway tests");
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// A config file with the Python server, a deny rule, a short timeout, and one
/// configured variable.
fn config_file(dir: &std::path::Path) -> String {
    let path = dir.join("gatehouse.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[[upstream]]
name = "py"
title = "Python test server"
command = "{}"
args = ["{}/tests/upstreams/stdio_server.py"]
env = {{ CONFIGURED_VAR = "configured" }}
timeout = "2s"
tools = [{{ match = "secret-*", access = "deny" }}]
"#,
            python(),
            env!("CARGO_MANIFEST_DIR")
        ),
    )
    .expect("write config");
    path.to_str().expect("utf-8").to_owned()
}

fn gateway_app() -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_file(dir.path());
    let app = TestApp::new(&["--config", &config]);
    drop(dir);
    app
}

fn call(id: u64, tool: &str, arguments: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": tool, "arguments": arguments}})
}

/// A 2026-07-28 request of `message` (a `tools/call`) at `path`: no session, the
/// revision's `_meta` fields beside any it has, and its method and tool in headers
/// (SEP-2243).
fn sessionless(path: &str, token: &str, mut message: Value) -> Request<axum::body::Body> {
    let tool = message["params"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let meta = &mut message["params"]["_meta"];
    if !meta.is_object() {
        *meta = json!({});
    }
    meta["io.modelcontextprotocol/protocolVersion"] = json!("2026-07-28");
    meta["io.modelcontextprotocol/clientInfo"] = json!({"name": "t", "version": "1"});
    meta["io.modelcontextprotocol/clientCapabilities"] = json!({});
    let mut request = McpPost {
        path,
        token: Some(token),
        version: Some("2026-07-28"),
        ..McpPost::default()
    }
    .body(message);
    for (name, value) in [("mcp-method", "tools/call"), ("mcp-name", tool.as_str())] {
        request
            .headers_mut()
            .insert(name, value.parse().expect("header"));
    }
    request
}

async fn post(app: &TestApp, token: &str, session: &str, body: Value) -> Answer {
    app.send(
        McpPost {
            path: "/mcp/py",
            token: Some(token),
            session: Some(session),
            version: Some(V2025),
            ..McpPost::default()
        }
        .body(body),
    )
    .await
}

fn text(answer: &Answer) -> String {
    answer.rpc()["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text: {}", answer.body))
        .to_owned()
}

fn initialize_body(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
    "protocolVersion": V2025, "capabilities": {},
    "clientInfo": {"name": "t", "version": "1"}}})
}

/// A client's `initialize` at `path`, without a session.
fn initialize(path: &str, token: &str, id: u64) -> Request<axum::body::Body> {
    McpPost {
        path,
        token: Some(token),
        ..McpPost::default()
    }
    .body(initialize_body(id))
}

/// Every tool call in the activity log, as (tool, outcome), sorted.
async fn tool_outcomes(app: &TestApp) -> Vec<(String, String)> {
    app.state.audit.flush().await.expect("flush");
    let mut outcomes: Vec<(String, String)> = app
        .state
        .audit
        .read(
            100,
            &gatehouse::audit::Cursor::default(),
            Some(gatehouse::audit::EventKind::ToolCall),
        )
        .await
        .expect("activity")
        .events
        .into_iter()
        .filter_map(|(_, event)| Some((event.tool?, event.outcome?)))
        .collect();
    outcomes.sort();
    outcomes
}

/// An app guarding only the Python server, with `settings` added to its upstream
/// table and `flags` on the command line.
fn py_app(settings: &str, flags: &[&str]) -> TestApp {
    with_py_config(settings, flags, TestApp::new)
}

/// `app` given the command line of [`py_app`].
fn with_py_config<T>(settings: &str, flags: &[&str], app: impl FnOnce(&[&str]) -> T) -> T {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("gatehouse.toml");
    std::fs::write(
        &config,
        format!(
            "[[upstream]]\nname = \"py\"\ncommand = \"{}\"\nargs = [\"{}/tests/upstreams/stdio_server.py\"]\n{settings}",
            python(),
            env!("CARGO_MANIFEST_DIR")
        ),
    )
    .expect("write");
    let mut args = vec!["--config", config.to_str().expect("utf-8")];
    args.extend_from_slice(flags);
    app(&args)
}

/// A new session at `/mcp/py`, tried for up to 5 s while a place upstream is being
/// given back; the answer that opened it.
async fn initialize_once_free(app: &TestApp, token: &str, id: u64) -> Answer {
    for _ in 0..50 {
        let answer = app.send(initialize("/mcp/py", token, id)).await;
        if answer.headers.get("mcp-session-id").is_some() {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no place upstream within 5 s");
}

/// The session id an answer opened.
fn opened_session(answer: &Answer) -> String {
    answer.headers["mcp-session-id"]
        .to_str()
        .expect("ascii")
        .to_owned()
}

#[tokio::test]
async fn a_stdio_server_is_guarded_with_per_tool_scopes() {
    let app = gateway_app();
    let (_, read) = app.tokens_at(PY_URL, "py:read").await;
    let read = read["access_token"].as_str().expect("at").to_owned();
    let session = app.session_at("/mcp/py", &read, V2025).await;

    // Listed: everything but the denied tool.
    let listed = post(
        &app,
        &read,
        &session,
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    )
    .await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    let names: Vec<String> = listed.rpc()["result"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .map(|t| t["name"].as_str().expect("name").to_owned())
        .collect();
    assert!(names.contains(&"echo".to_owned()), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("secret")), "{names:?}");

    // A read-only tool with a read token.
    let echoed = post(
        &app,
        &read,
        &session,
        call(3, "echo", json!({"message": "hi"})),
    )
    .await;
    assert_eq!(text(&echoed), "echo: hi");

    // A tool that writes: 403 with the step-up challenge for this resource.
    let refused = post(
        &app,
        &read,
        &session,
        call(4, "add", json!({"a": 1, "b": 2})),
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    let challenge = refused.headers[header::WWW_AUTHENTICATE]
        .to_str()
        .expect("ascii");
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(
        challenge.contains("scope=\"py:read py:write\""),
        "{challenge}"
    );
    assert!(
        challenge.contains("resource_metadata=\"https://gate.example.com/.well-known/oauth-protected-resource/mcp/py\""),
        "{challenge}"
    );

    // A denied tool is unknown, whatever the token.
    let (_, both) = app.tokens_at(PY_URL, "py:read py:write").await;
    let both = both["access_token"].as_str().expect("at").to_owned();
    let session = app.session_at("/mcp/py", &both, V2025).await;
    let added = post(
        &app,
        &both,
        &session,
        call(5, "add", json!({"a": 1, "b": 2})),
    )
    .await;
    assert_eq!(text(&added), "3");
    let denied = post(&app, &both, &session, call(6, "secret-admin", json!({}))).await;
    assert_eq!(denied.rpc()["error"]["code"], -32602, "{}", denied.body);
    assert!(!denied.body.contains("the secret"));

    // The server's environment: PATH, HOME and what was configured, nothing else.
    let env = text(&post(&app, &both, &session, call(7, "env", json!({}))).await);
    let names: Vec<&str> = env.split(' ').collect();
    assert!(names.contains(&"CONFIGURED_VAR"), "{env}");
    for name in &names {
        // Python may set LC_CTYPE itself (PEP 538).
        assert!(
            ["PATH", "HOME", "CONFIGURED_VAR", "LC_CTYPE"].contains(name),
            "{name} leaked into the upstream: {env}"
        );
    }
}

#[tokio::test]
async fn tokens_are_bound_to_their_resource() {
    let app = gateway_app();
    let (_, upstream) = app.tokens_at(PY_URL, "py:read").await;
    let (_, articles) = app.tokens_for("read:articles").await;
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    for (path, token) in [
        ("/mcp", upstream["access_token"].as_str().expect("at")),
        ("/mcp/py", articles["access_token"].as_str().expect("at")),
    ] {
        let answer = app
            .send(
                McpPost {
                    path,
                    token: Some(token),
                    ..McpPost::default()
                }
                .body(list.clone()),
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::UNAUTHORIZED,
            "{path}: {}",
            answer.body
        );
        let challenge = answer.headers[header::WWW_AUTHENTICATE]
            .to_str()
            .expect("ascii");
        assert!(challenge.contains("invalid_token"), "{challenge}");
    }
    // Without a token, each resource points at its own metadata and scope.
    let answer = app
        .send(
            McpPost {
                path: "/mcp/py",
                ..McpPost::default()
            }
            .body(list),
        )
        .await;
    let challenge = answer.headers[header::WWW_AUTHENTICATE]
        .to_str()
        .expect("ascii");
    assert!(
        challenge.contains("oauth-protected-resource/mcp/py"),
        "{challenge}"
    );
    assert!(challenge.contains("scope=\"py:read\""), "{challenge}");
    let metadata = app
        .get("/.well-known/oauth-protected-resource/mcp/py", None)
        .await
        .json();
    assert_eq!(metadata["resource"], PY_URL);
    assert_eq!(metadata["scopes_supported"], json!(["py:read", "py:write"]));
}

#[tokio::test]
async fn progress_reaches_the_client_with_its_own_token() {
    let app = gateway_app();
    let (_, tokens) = app.tokens_at(PY_URL, "py:read").await;
    let token = tokens["access_token"].as_str().expect("at").to_owned();
    let session = app.session_at("/mcp/py", &token, V2025).await;
    let mut request = call(2, "slow", json!({}));
    request["params"]["_meta"] = json!({"progressToken": "client-token-42"});
    let answer = post(&app, &token, &session, request).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let progress: Vec<Value> = answer
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .filter(|m| m["method"] == "notifications/progress")
        .collect();
    assert_eq!(progress.len(), 3, "{}", answer.body);
    for message in &progress {
        assert_eq!(message["params"]["progressToken"], "client-token-42");
    }
    assert_eq!(text(&answer), "slow done");
}

/// A call longer than the upstream's timeout (2 s here) that reports progress more
/// often than that is not cut off: each notification restarts the timeout.
#[tokio::test]
async fn progress_keeps_a_long_call_alive() {
    let app = gateway_app();
    let (_, tokens) = app.tokens_at(PY_URL, "py:read").await;
    let token = tokens["access_token"].as_str().expect("at").to_owned();
    let session = app.session_at("/mcp/py", &token, V2025).await;
    let mut request = call(2, "slow", json!({"delay": 0.9}));
    request["params"]["_meta"] = json!({"progressToken": 7});
    let started = std::time::Instant::now();
    let answer = post(&app, &token, &session, request).await;
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "not longer than the timeout"
    );
    assert_eq!(text(&answer), "slow done");
}

/// A server that sends requests to the client without end holds at most
/// `MAX_ASKS_WAITING` (64) of them waiting for it; the rest are refused at once,
/// each with an error the server can read, so it cannot pile up tasks for five
/// minutes each. Without the bound, nothing is refused and the call times out.
#[tokio::test]
async fn a_server_flooding_the_client_with_requests_is_refused_past_a_bound() {
    let app = gateway_app();
    let (_, tokens) = app.tokens_at(PY_URL, "py:read").await;
    let token = tokens["access_token"].as_str().expect("at").to_owned();
    let session = app.session_at("/mcp/py", &token, V2025).await;
    let request = call(2, "flood", json!({"count": 80, "refusals": 16}));
    let answer = post(&app, &token, &session, request).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(
        text(&answer),
        format!("refused {}", ["too_many_requests"; 16].join(" ")),
        "{}",
        answer.body
    );
    let relayed = answer
        .body
        .lines()
        .filter(|l| l.starts_with("data:") && l.contains("sampling/createMessage"))
        .count();
    assert_eq!(relayed, 64, "those within the bound reach the client");
    // The session goes on.
    let echo = post(
        &app,
        &token,
        &session,
        call(3, "echo", json!({"message": "on"})),
    )
    .await;
    assert_eq!(text(&echo), "echo: on");
}

/// A server that asks the client something during a call, then ends the call
/// without waiting or saying so: the client hears that the request is cancelled
/// (on the session's stream, where rmcp sends it), or its form would stay open for
/// five minutes, for an answer nobody waits for.
#[tokio::test]
async fn a_request_of_the_servers_still_open_when_its_call_ends_is_cancelled() {
    let app = gateway_app();
    let (_, tokens) = app.tokens_at(PY_URL, "py:read").await;
    let token = tokens["access_token"].as_str().expect("at").to_owned();
    let session = app.session_at("/mcp/py", &token, V2025).await;
    let mut stream = Events {
        body: session_stream(&app, "/mcp/py", &token, &session).await,
        buffer: String::new(),
    };
    let answer = post(&app, &token, &session, call(2, "abandon", json!({}))).await;
    assert_eq!(text(&answer), "abandoned", "{}", answer.body);
    let asked: Value = answer
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|data| serde_json::from_str::<Value>(data.trim()).ok())
        .find(|m| m["method"] == "sampling/createMessage")
        .unwrap_or_else(|| panic!("the request reaches the client: {}", answer.body));
    loop {
        let heard = stream.next().await;
        if heard["method"] == "notifications/cancelled" {
            assert_eq!(heard["params"]["requestId"], asked["id"], "{heard}");
            break;
        }
    }
}

#[tokio::test]
async fn failures_are_clear_errors_that_name_the_upstream() {
    let app = gateway_app();
    let (_, tokens) = app.tokens_at(PY_URL, "py:read").await;
    let token = tokens["access_token"].as_str().expect("at").to_owned();
    let session = app.session_at("/mcp/py", &token, V2025).await;

    // Garbage on its stdout is ignored.
    let garbage = post(&app, &token, &session, call(2, "garbage", json!({}))).await;
    assert_eq!(text(&garbage), "after garbage");

    // A call that never answers: an error after the configured 2 s.
    let started = std::time::Instant::now();
    let hung = post(&app, &token, &session, call(3, "hang", json!({}))).await;
    let error = &hung.rpc()["error"];
    assert!(
        error["message"]
            .as_str()
            .expect("message")
            .contains("upstream py did not answer within 2s"),
        "{}",
        hung.body
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // A crash mid-call: an error naming the upstream. The session has ended: its
    // next request hears so (404), which is what makes clients open another; a new
    // session starts a new process.
    let crashed = post(&app, &token, &session, call(4, "crash", json!({}))).await;
    assert_eq!(
        crashed.rpc()["error"]["data"]["upstream"],
        "py",
        "{}",
        crashed.body
    );
    let after = post(
        &app,
        &token,
        &session,
        call(5, "echo", json!({"message": "x"})),
    )
    .await;
    assert_eq!(after.status, StatusCode::NOT_FOUND, "{}", after.body);
    // Its binding went with it (so it no longer counts among the client's sessions
    // of the day).
    assert!(!app.is_bound(&session).await);
    let fresh = app.session_at("/mcp/py", &token, V2025).await;
    let echoed = post(
        &app,
        &token,
        &fresh,
        call(6, "echo", json!({"message": "again"})),
    )
    .await;
    assert_eq!(text(&echoed), "echo: again");

    // The activity log has each call's outcome, read from the relayed answers: the
    // errors as errors, though each came back as 200.
    let outcomes = tool_outcomes(&app).await;
    let expected = [
        ("crash", "error"),
        ("echo", "error"),
        ("echo", "ok"),
        ("garbage", "ok"),
        ("hang", "error"),
    ];
    assert_eq!(
        outcomes,
        expected.map(|(t, o)| (t.to_owned(), o.to_owned())),
    );

    // /healthz reports the upstream.
    let health = app.get("/healthz", None).await.json();
    let upstream = &health["upstreams"][0];
    assert_eq!(upstream["name"], "py");
    assert_eq!(upstream["transport"], "stdio");
    assert_eq!(upstream["status"], "up");
}

#[tokio::test]
async fn a_server_that_cannot_start_is_an_error_naming_it() {
    let app = TestApp::new(&["--upstream", "gone=stdio:/nonexistent/mcp-server --flag"]);
    let (_, tokens) = app
        .tokens_at("https://gate.example.com/mcp/gone", "gone:read")
        .await;
    let token = tokens["access_token"].as_str().expect("at");
    let init = app.send(initialize("/mcp/gone", token, 1)).await;
    let error = &init.rpc()["error"];
    assert_eq!(error["data"]["upstream"], "gone", "{}", init.body);
    // What failed upstream stays in the log: the client and the public /healthz get
    // fixed words, whatever the upstream printed or answered.
    assert!(!init.body.contains("nonexistent"), "{}", init.body);
    let health = app.get("/healthz", None).await.json();
    assert_eq!(health["upstreams"][0]["status"], "down");
    assert_eq!(
        health["upstreams"][0]["error"],
        "it could not be started or reached"
    );
}

/// An HTTP upstream that cannot be reached: the client's error names it but not its
/// URL (whose query may hold a key), neither does the public `/healthz`, and the
/// failed `initialize` leaves nothing in the store.
#[tokio::test]
async fn an_unreachable_http_server_is_an_error_without_its_url_and_leaves_no_session() {
    // Nothing listens on port 1 of this machine: the connection is refused at once.
    let app = TestApp::new(&["--upstream", "down=http://127.0.0.1:1/mcp?key=hunter2"]);
    let (_, tokens) = app
        .tokens_at("https://gate.example.com/mcp/down", "down:read")
        .await;
    let token = tokens["access_token"].as_str().expect("at");
    for id in 1..=3 {
        let init = app.send(initialize("/mcp/down", token, id)).await;
        assert_eq!(
            init.rpc()["error"]["data"]["upstream"],
            "down",
            "{}",
            init.body
        );
        assert!(!init.body.contains("hunter2"), "{}", init.body);
        assert!(init.headers.get("mcp-session-id").is_none());
    }
    let health = app.get("/healthz", None).await;
    assert_eq!(health.json()["upstreams"][0]["status"], "down");
    assert!(!health.body.contains("hunter2"), "{}", health.body);
    let stored = app.state.store.scan("mcp-session:").await.expect("scan");
    assert!(stored.is_empty(), "{} session records left", stored.len());
}

/// Serves `handler` as a Streamable HTTP MCP server at `/mcp` on a free local port (one
/// clone per session, rmcp's default configuration); returns its address.
async fn serve_upstream<H: ServerHandler + Clone>(handler: H) -> std::net::SocketAddr {
    serve_local(axum::Router::new().nest_service("/mcp", mcp_service(handler))).await
}

/// rmcp's Streamable HTTP server for `handler`, as most servers run it.
fn mcp_service<H: ServerHandler + Clone>(
    handler: H,
) -> StreamableHttpService<H, LocalSessionManager> {
    StreamableHttpService::new(
        move || Ok(handler.clone()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    )
}

/// `app` served on a port of 127.0.0.1 of its own.
async fn serve_local(app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    address
}

/// What a test server says of itself: `name`, with tools.
fn tools_server(name: &str) -> ServerConfig {
    ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
        .with_server_info(Implementation::new(name, "1"))
}

/// A listing of one read-only tool.
fn one_read_only_tool(name: &'static str, description: &'static str) -> ListToolsResult {
    let tool = Tool::new(name, description, Arc::new(serde_json::Map::new()))
        .with_annotations(ToolAnnotations::new().read_only(true));
    ListToolsResult::with_all_items(vec![tool])
}

/// An upstream whose tool listing never ends: every page names one more tool and
/// the cursor of another page. It counts the pages it gave.
#[derive(Clone, Default)]
struct EndlessListing(Arc<std::sync::atomic::AtomicUsize>);

impl ServerHandler for EndlessListing {
    fn get_info(&self) -> ServerConfig {
        tools_server("endless")
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let page = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let tool = Tool::new(
            format!("tool-{page}"),
            "one of many",
            Arc::new(serde_json::Map::new()),
        )
        .with_annotations(ToolAnnotations::new().read_only(true));
        let mut listing = ListToolsResult::with_all_items(vec![tool]);
        listing.next_cursor = Some(format!("page-{}", page + 1));
        Ok(listing)
    }
}

/// Gatehouse reads a bounded number of pages of an upstream's tool listing: one
/// whose cursor never ends holds up neither a call nor Gatehouse's memory until
/// the timeout.
#[tokio::test]
async fn an_endless_tool_listing_is_read_for_a_bounded_number_of_pages() {
    let pages = EndlessListing::default();
    let addr = serve_upstream(pages.clone()).await;
    let (app, token, _dir) = web_upstream(&format!("http://{addr}/mcp"), "").await;
    let session = app.session_at("/mcp/web", &token, V2025).await;
    let web = McpPost {
        path: "/mcp/web",
        token: Some(&token),
        session: Some(&session),
        version: Some(V2025),
        ..McpPost::default()
    };
    let started = std::time::Instant::now();
    // A tool nobody listed: Gatehouse lists the upstream's tools to learn it.
    let answer = app.send(web.body(call(2, "unlisted", json!({})))).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);
    assert!(started.elapsed() < Duration::from_secs(20));
    let read = pages.0.load(std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        pages.0.load(std::sync::atomic::Ordering::SeqCst),
        read,
        "no more pages are read"
    );
    assert!(read <= 2 * 64, "{read} pages");
}

/// An upstream whose one tool, `report`, is read-only until it is first called: the
/// call makes it a write tool, and the upstream says its tools changed. Its listings
/// may be kept for an hour (`ttlMs`, 2026-07-28).
#[derive(Clone, Default)]
struct TurnsWrite(Arc<std::sync::atomic::AtomicBool>);

impl ServerHandler for TurnsWrite {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_tool_list_changed()
            .build();
        ServerConfig::new(capabilities).with_server_info(Implementation::new("turns", "1"))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let read_only = !self.0.load(std::sync::atomic::Ordering::SeqCst);
        let tool = Tool::new("report", "read-only at first", Arc::default())
            .with_annotations(ToolAnnotations::new().read_only(read_only));
        let mut listing = ListToolsResult::with_all_items(vec![tool]);
        listing.ttl_ms = Some(3_600_000);
        Ok(listing)
    }

    async fn call_tool(
        &self,
        _request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if !self.0.swap(true, std::sync::atomic::Ordering::SeqCst) {
            let _ = context.peer.notify_tool_list_changed().await;
        }
        Ok(CallToolResult::success(vec![ContentBlock::text("reported")]).into())
    }
}

/// When an upstream says its tools changed, the next call is decided on a listing
/// read from the upstream then, not on one rmcp's client kept (for as long as the
/// upstream's `ttlMs` allows): a tool that stopped being read-only needs the write
/// scope at once.
#[tokio::test]
async fn a_tool_no_longer_read_only_needs_the_write_scope_whatever_listings_may_be_kept() {
    let addr = serve_upstream(TurnsWrite::default()).await;
    // One pooled connection: each listing goes through the same rmcp client.
    let (app, token, _dir) = web_upstream(&format!("http://{addr}/mcp"), "pool_size = 1\n").await;
    let session = app.session_at("/mcp/web", &token, V2025).await;
    let web = McpPost {
        path: "/mcp/web",
        token: Some(&token),
        session: Some(&session),
        version: Some(V2025),
        ..McpPost::default()
    };
    // Not listed in this session: Gatehouse lists the tools on its own connection,
    // which the upstream tells nothing of the change to come.
    let answer = app.send(web.body(call(2, "report", json!({})))).await;
    assert_eq!(text(&answer), "reported");
    // Past the pause between listings after a change (`RELIST_STALE`).
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let answer = app.send(web.body(call(3, "report", json!({})))).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);
    let challenge = answer.headers[header::WWW_AUTHENTICATE]
        .to_str()
        .expect("ascii");
    assert!(challenge.contains("web:write"), "{challenge}");
}

/// An upstream that offers tasks and says when its tools change; its one tool tells
/// what the server knows of its client's capabilities.
#[derive(Clone, Default)]
struct OffersTasks;

impl ServerHandler for OffersTasks {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_tool_list_changed()
            .enable_tasks()
            .build();
        ServerConfig::new(capabilities).with_server_info(Implementation::new("tasks", "1"))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(one_read_only_tool("client", "the client's capabilities"))
    }

    async fn call_tool(
        &self,
        _request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let info = context.peer.peer_info().expect("an initialized session");
        let capabilities = serde_json::to_string(&info.capabilities).expect("json");
        Ok(CallToolResult::success(vec![ContentBlock::text(capabilities)]).into())
    }
}

/// The relay carries no `tasks/*`: the tasks extension is offered neither to the
/// client (which would start a task it could never read nor cancel) nor, for it, to
/// the upstream. A request without a session is not offered notifications of changes
/// either: they would reach it only through `subscriptions/listen`.
#[tokio::test]
async fn only_what_the_relay_carries_is_offered() {
    const TASKS: &str = "io.modelcontextprotocol/tasks";
    let addr = serve_upstream(OffersTasks).await;
    let (app, token, _dir) = web_upstream(&format!("http://{addr}/mcp"), "").await;
    let post = |session: Option<&str>, body: Value| {
        McpPost {
            path: "/mcp/web",
            token: Some(&token),
            session,
            version: session.map(|_| V2025),
            ..McpPost::default()
        }
        .body(body)
    };
    let init = app
        .send(post(
            None,
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": V2025,
                "capabilities": {"extensions": {TASKS: {}}, "roots": {}},
                "clientInfo": {"name": "t", "version": "1"}}}),
        ))
        .await;
    assert_eq!(init.status, StatusCode::OK, "{}", init.body);
    let offered = &init.rpc()["result"]["capabilities"];
    assert_eq!(offered["tools"]["listChanged"], true, "{offered}");
    assert!(offered["extensions"].get(TASKS).is_none(), "{offered}");
    let session = init.headers["mcp-session-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let initialized = app
        .send(post(
            Some(&session),
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        ))
        .await;
    assert_eq!(initialized.status, StatusCode::ACCEPTED);
    let answer = app
        .send(post(Some(&session), call(2, "client", json!({}))))
        .await;
    let upstream_saw: Value = serde_json::from_str(&text(&answer)).expect("json");
    assert!(
        upstream_saw["extensions"].get(TASKS).is_none(),
        "{upstream_saw}"
    );
    assert!(upstream_saw.get("roots").is_some(), "{upstream_saw}");

    let mut discover = sessionless(
        "/mcp/web",
        &token,
        json!({"jsonrpc": "2.0", "id": 3, "method": "server/discover", "params": {}}),
    );
    discover
        .headers_mut()
        .insert("mcp-method", "server/discover".parse().expect("header"));
    discover.headers_mut().remove("mcp-name");
    let discovered = app.send(discover).await;
    assert_eq!(discovered.status, StatusCode::OK, "{}", discovered.body);
    let offered = &discovered.rpc()["result"]["capabilities"];
    assert!(offered["tools"].is_object(), "{offered}");
    assert!(offered["tools"].get("listChanged").is_none(), "{offered}");
    assert!(offered["extensions"].get(TASKS).is_none(), "{offered}");
}

/// An HTTP upstream (rmcp, here) that records the headers it was sent.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<axum::http::HeaderMap>>>);

impl ServerHandler for Recorder {
    fn get_info(&self) -> ServerConfig {
        tools_server("recorder")
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(one_read_only_tool("whoami", "who called"))
    }

    async fn call_tool(
        &self,
        _request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if let Some(parts) = context.extensions.get::<axum::http::request::Parts>() {
            self.0.lock().expect("lock").push(parts.headers.clone());
        }
        Ok(CallToolResult::success(vec![ContentBlock::text("you")]).into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_server_gets_its_own_credentials_never_the_clients_token() {
    let recorder = Recorder::default();
    // Every request the upstream gets, whichever way it is sent (rmcp's client for
    // initialize, listings and DELETE; the direct path for calls).
    let every = Recorder::default();
    let record = {
        let every = every.0.clone();
        axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                every.lock().expect("lock").push(request.headers().clone());
                next.run(request)
            },
        )
    };
    let upstream = axum::Router::new()
        .nest_service("/mcp", mcp_service(recorder.clone()))
        .layer(record);
    let url = format!("http://{}/mcp", serve_local(upstream).await);
    std::env::set_var("GATEHOUSE_TEST_UPSTREAM_SECRET", "upstream-secret-123");
    let (app, token, _dir) = web_upstream(
        &url,
        "headers = { Authorization = \"Bearer ${GATEHOUSE_TEST_UPSTREAM_SECRET}\", X-Tenant = \"t1\" }\n",
    )
    .await;
    let session = app.session_at("/mcp/web", &token, V2025).await;
    let web = McpPost {
        path: "/mcp/web",
        token: Some(&token),
        session: Some(&session),
        version: Some(V2025),
        ..McpPost::default()
    };
    // Listed first, as clients do: the call then takes the direct path.
    let listed = app
        .send(web.body(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})))
        .await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    let answer = app.send(web.body(call(3, "whoami", json!({})))).await;
    assert_eq!(text(&answer), "you");
    let ended = app.end_session("/mcp/web", &token, &session, V2025).await;
    assert!(ended.status.is_success(), "{} {}", ended.status, ended.body);
    // The call reached the tool with them (the direct path), and so did every
    // request before and after it: initialize, initialized, the listing, and
    // whatever ending the session sent.
    assert_eq!(recorder.0.lock().expect("lock").len(), 1);
    let seen = every.0.lock().expect("lock").clone();
    assert!(
        seen.len() >= 4,
        "{} requests reached the upstream",
        seen.len()
    );
    for headers in seen {
        assert_eq!(headers[header::AUTHORIZATION], "Bearer upstream-secret-123");
        assert_eq!(headers["x-tenant"], "t1");
        for (_, value) in &headers {
            assert!(
                !value.to_str().unwrap_or("").contains(&token),
                "the client's token reached the upstream"
            );
        }
    }
}

/// 2026-07-28 requests carry no session: they go through a small pool of upstream
/// connections.
#[tokio::test]
async fn sessionless_requests_use_the_pool() {
    let app = gateway_app();
    let (_, tokens) = app.tokens_at(PY_URL, "py:read").await;
    let token = tokens["access_token"].as_str().expect("at").to_owned();
    for id in 1..=3 {
        let request = sessionless("/mcp/py", &token, call(id, "echo", json!({"message": id})));
        let answer = app.send(request).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(text(&answer), format!("echo: {id}"));
    }
    // A pooled connection serves many clients: the server's request during a call
    // there reaches none (not whichever client's call is in flight), and the server
    // hears so at once.
    let answer = app
        .send(sessionless("/mcp/py", &token, call(8, "sample", json!({}))))
        .await;
    assert!(
        text(&answer).contains("the connection is shared"),
        "{}",
        answer.body
    );
    // Headers that disagree with the body are refused before anything runs.
    let mut request = sessionless("/mcp/py", &token, call(9, "echo", json!({"message": "x"})));
    request
        .headers_mut()
        .insert("mcp-name", "add".parse().expect("header"));
    let refused = app.send(request).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.body);
    assert!(refused.body.contains("does not match"), "{}", refused.body);
    // The 2026-07-28 code for it, answering the request by its id.
    assert_eq!(refused.rpc()["id"], 9, "{}", refused.body);
}

/// An upstream whose tool asks 2026-07-28 clients to send its `region` argument as
/// an `Mcp-Param-Region` header, which rmcp's server then requires.
#[derive(Clone)]
struct Regional;

impl ServerHandler for Regional {
    fn get_info(&self) -> ServerConfig {
        tools_server("regional")
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let schema = json!({
            "type": "object",
            "properties": { "region": { "type": "string", "x-mcp-header": "Region" } }
        });
        let Value::Object(schema) = schema else {
            unreachable!("an object")
        };
        let tool = Tool::new("regional", "by region", Arc::new(schema))
            .with_annotations(ToolAnnotations::new().read_only(true));
        Ok(ListToolsResult::with_all_items(vec![tool]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let region = request
            .arguments
            .and_then(|a| a.get("region").and_then(|r| r.as_str()).map(str::to_owned))
            .unwrap_or_default();
        Ok(CallToolResult::success(vec![ContentBlock::text(format!("in {region}"))]).into())
    }
}

/// A tool that asks for `Mcp-Param-*` headers (2026-07-28) is relayed without
/// the annotation, so clients send none (Gatehouse could not check them against
/// the body), and sessionless calls of it through the pool are answered.
#[tokio::test]
async fn sessionless_calls_carry_the_param_headers_the_upstream_asks_for() {
    let upstream = serve_upstream(Regional).await;
    let (app, token, _dir) = web_upstream(&format!("http://{upstream}/mcp"), "").await;
    let mut list = sessionless(
        "/mcp/web",
        &token,
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}),
    );
    list.headers_mut()
        .insert("mcp-method", "tools/list".parse().expect("header"));
    list.headers_mut().remove("mcp-name");
    let listed = app.send(list).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    assert!(listed.body.contains("regional"), "{}", listed.body);
    assert!(!listed.body.contains("x-mcp-header"), "{}", listed.body);
    for id in 2..6 {
        let region = format!("region-{id}");
        let answer = app
            .send(sessionless(
                "/mcp/web",
                &token,
                call(id, "regional", json!({ "region": region })),
            ))
            .await;
        assert_eq!(text(&answer), format!("in {region}"), "{}", answer.body);
    }
}

/// A pooled stdio server that exits on some request is not started again for each
/// such request: one client repeating the request cannot make Gatehouse start a
/// process per request. The pool opens again after a short wait.
#[tokio::test]
async fn a_pooled_server_that_exits_on_a_request_is_not_started_for_each() {
    let dir = tempfile::tempdir().expect("temp dir");
    let starts = dir.path().join("starts");
    let config = dir.path().join("gatehouse.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[upstream]]
name = "py"
command = "sh"
args = ["-c", "echo started >> \"$STARTS\"; exec '{}' '{}/tests/upstreams/stdio_server.py'"]
env = {{ STARTS = "{}" }}
pool_size = 1
"#,
            python(),
            env!("CARGO_MANIFEST_DIR"),
            starts.display()
        ),
    )
    .expect("write config");
    let app = TestApp::new(&["--config", config.to_str().expect("utf-8")]);
    let (_, tokens) = app.tokens_at(PY_URL, "py:read").await;
    let token = tokens["access_token"].as_str().expect("at").to_owned();
    let sessionless = |id: u64, tool: &str| {
        sessionless(
            "/mcp/py",
            &token,
            call(id, tool, json!({"message": "back"})),
        )
    };
    let started = || {
        std::fs::read_to_string(&starts)
            .unwrap_or_default()
            .lines()
            .count()
    };
    for id in 1..=8 {
        let answer = app.send(sessionless(id, "crash")).await;
        assert_eq!(
            answer.rpc()["error"]["data"]["upstream"],
            "py",
            "{}",
            answer.body
        );
    }
    // One start a second at most: once, unless the machine is slow.
    assert!(started() <= 3, "{} starts for 8 requests", started());
    // Then it is started again.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let answer = app.send(sessionless(7, "echo")).await;
        if answer.rpc()["result"].is_object() {
            assert_eq!(text(&answer), "echo: back");
            break;
        }
        assert_eq!(
            answer.rpc()["error"]["data"]["reason"],
            "unavailable",
            "{}",
            answer.body
        );
        assert!(std::time::Instant::now() < deadline, "{}", answer.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(started() <= 4, "{} starts", started());
}

/// An HTTP upstream (rmcp, here) whose one tool never answers, counting its calls
/// and telling the test of each.
#[derive(Clone, Default)]
struct Holds {
    calls: Arc<std::sync::atomic::AtomicUsize>,
    called: Arc<tokio::sync::Notify>,
}

impl Holds {
    /// Once `n` calls have reached it.
    async fn reached(&self, n: usize) {
        while self.calls.load(std::sync::atomic::Ordering::SeqCst) < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl ServerHandler for Holds {
    fn get_info(&self) -> ServerConfig {
        tools_server("holds")
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(one_read_only_tool("hold", "never answers"))
    }

    async fn call_tool(
        &self,
        _request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.called.notify_one();
        std::future::pending().await
    }
}

/// The pool of connections for sessionless requests is shared by every client: one
/// client holds at most half its places, so another's requests still go through
/// while the first one's slow ones wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_holds_at_most_half_of_the_pool() {
    use tower::ServiceExt;
    let holds = Holds::default();
    let url = format!("http://{}/mcp", serve_upstream(holds.clone()).await);
    // One connection: 64 places, 32 for each client.
    let (app, first, _dir) = web_upstream(&url, "pool_size = 1\ntimeout = \"10s\"\n").await;
    let (_, tokens) = app
        .tokens_at("https://gate.example.com/mcp/web", "web:read")
        .await;
    let second = tokens["access_token"].as_str().expect("at").to_owned();
    let hold = |token: &str, id: u64| sessionless("/mcp/web", token, call(id, "hold", json!({})));
    let reason = |answer: &Answer| {
        let error = &answer.rpc()["error"];
        assert_eq!(error["data"]["upstream"], "web", "{}", answer.body);
        error["data"]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let mut waiting = Vec::new();
    for id in 1..=32 {
        waiting.push(tokio::spawn(app.router.clone().oneshot(hold(&first, id))));
    }
    // The upstream (rmcp's server) runs 16 of a session's calls at once; the others
    // wait in Gatehouse, holding their places.
    tokio::time::timeout(Duration::from_secs(5), holds.reached(16))
        .await
        .expect("the first client's calls reach the upstream");
    // Once the others hold their places too (a loaded machine may take a moment),
    // the first client's next call is refused at once. One sent sooner takes a
    // place, and is dropped (giving it back) when it is not answered at once.
    let mut refused = None;
    for id in 33..60 {
        if let Ok(answer) =
            tokio::time::timeout(Duration::from_millis(500), app.send(hold(&first, id))).await
        {
            refused = Some(answer);
            break;
        }
    }
    let refused = refused.expect("a call past the client's share is refused at once");
    assert_eq!(reason(&refused), "too_many_requests", "{}", refused.body);
    // Another client's call still gets a place (and waits, as the upstream is busy,
    // until its timeout).
    let other = app.send(hold(&second, 34)).await;
    assert_eq!(reason(&other), "timeout", "{}", other.body);
    for task in waiting {
        task.abort();
    }
}

/// An HTTP upstream (rmcp, here) with two read-only tools: `chatty` sends 200
/// progress notifications, then answers; `quick` answers at once. It counts the
/// progress notifications it got out.
#[derive(Clone, Default)]
struct Chatty(Arc<std::sync::atomic::AtomicUsize>);

impl Chatty {
    const PROGRESS: usize = 200;

    async fn sent(&self, n: usize) {
        while self.0.load(std::sync::atomic::Ordering::SeqCst) < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl ServerHandler for Chatty {
    fn get_info(&self) -> ServerConfig {
        tools_server("chatty")
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let tools = ["chatty", "quick"].map(|name| {
            Tool::new(name, "read-only", Arc::new(serde_json::Map::new()))
                .with_annotations(ToolAnnotations::new().read_only(true))
        });
        Ok(ListToolsResult::with_all_items(tools.to_vec()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if let (true, Some(token)) = (request.name == "chatty", context.meta.get_progress_token()) {
            for step in 1..=Self::PROGRESS {
                let progress = ProgressNotificationParam::new(token.clone(), step as f64);
                if context.peer.notify_progress(progress).await.is_err() {
                    break;
                }
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        Ok(CallToolResult::success(vec![ContentBlock::text(request.name.to_string())]).into())
    }
}

/// Progress goes to its client from a queue of its call's own: a client that reads
/// nothing of its answer holds up neither the pooled upstream connection that every
/// sessionless request shares, nor anyone else's call on it. (Relaying progress in
/// the connection's reading once waited for the client: one call whose client read
/// nothing stopped the pool for everyone until that call's timeout.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_no_progress_holds_up_no_other_call_on_the_pool() {
    use tower::ServiceExt;
    let chatty = Chatty::default();
    let url = format!("http://{}/mcp", serve_upstream(chatty.clone()).await);
    let (app, token, _dir) = web_upstream(
        &url,
        "pool_size = 1
timeout = \"30s\"\n",
    )
    .await;
    let sessionless = |id: u64, tool: &str| {
        let mut message = call(id, tool, json!({}));
        message["params"]["_meta"] = json!({ "progressToken": id });
        sessionless("/mcp/web", &token, message)
    };
    let unread = app
        .router
        .clone()
        .oneshot(sessionless(1, "chatty"))
        .await
        .expect("response");
    assert_eq!(unread.status(), StatusCode::OK);
    tokio::time::timeout(Duration::from_secs(10), chatty.sent(Chatty::PROGRESS))
        .await
        .expect("the upstream's progress is read, though its client reads none");
    let other = tokio::time::timeout(Duration::from_secs(10), app.send(sessionless(2, "quick")))
        .await
        .expect("another call on the pool is answered");
    assert_eq!(text(&other), "quick", "{}", other.body);
    drop(unread);
}

/// An HTTP upstream (rmcp, here) whose one read-only tool, `noise`, answers at once
/// and has a task of its own send 400 logging notifications, which belong to no
/// call (they go to the session's stream). It counts those it got out.
#[derive(Clone, Default)]
struct Noisy(Arc<std::sync::atomic::AtomicUsize>);

impl Noisy {
    const NOTES: usize = 400;
}

// Logging is deprecated by SEP-2577 but still relayed for the 2025 revisions.
#[allow(deprecated)]
impl ServerHandler for Noisy {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_logging()
                .build(),
        )
        .with_server_info(Implementation::new("noisy", "1"))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(one_read_only_tool("noise", "notifications without end"))
    }

    async fn call_tool(
        &self,
        _request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let (peer, sent) = (context.peer.clone(), self.0.clone());
        tokio::spawn(async move {
            for n in 0..Self::NOTES {
                let note = LoggingMessageNotificationParam::new(LoggingLevel::Info, json!(n));
                if peer.notify_logging_message(note).await.is_err() {
                    break;
                }
                sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        Ok(CallToolResult::success(vec![ContentBlock::text("started")]).into())
    }
}

/// An upstream's notifications wait for a client that reads nothing of its stream
/// in a bounded number of places, and past them are dropped. (Each waited in a task
/// of its own: a server that wrote them without end grew Gatehouse's memory without
/// end.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_waiting_for_a_client_are_bounded() {
    use http_body_util::BodyExt;
    let noisy = Noisy::default();
    let web = Web::open(serve_upstream(noisy.clone()).await).await;
    // The session's stream: open, and read only once the upstream is done.
    let mut body = session_stream(&web.app, "/mcp/web", &web.token, &web.session).await;
    // Gatehouse's own stream from the upstream is open by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = web
        .app
        .send(web.post().body(call(3, "noise", json!({}))))
        .await;
    assert_eq!(text(&started), "started", "{}", started.body);
    tokio::time::timeout(Duration::from_secs(10), async {
        while noisy.0.load(std::sync::atomic::Ordering::SeqCst) < Noisy::NOTES {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the upstream got its notifications out");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut received = 0;
    while let Ok(Some(Ok(frame))) = tokio::time::timeout(Duration::from_secs(1), body.frame()).await
    {
        if let Ok(data) = frame.into_data() {
            received += String::from_utf8_lossy(&data)
                .matches("notifications/message")
                .count();
        }
    }
    assert!(received > 0, "no notification reached the client");
    assert!(received < 120, "{received} of {} waited", Noisy::NOTES);
}

/// The session's own stream (a GET), open, at the MCP URL `path`.
async fn session_stream(app: &TestApp, path: &str, token: &str, session: &str) -> axum::body::Body {
    let request = Request::get(path)
        .header(header::HOST, "gate.example.com")
        .header(header::ACCEPT, "text/event-stream")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header("mcp-session-id", session)
        .header("mcp-protocol-version", V2025)
        .body(axum::body::Body::empty())
        .expect("request");
    let stream = tower::ServiceExt::oneshot(app.router.clone(), request)
        .await
        .expect("response");
    assert_eq!(stream.status(), StatusCode::OK);
    stream.into_body()
}

/// Gatehouse whose one upstream, `web`, is the HTTP server at `url`, with `extra`
/// lines in its config section; and a `web:read` token for it. The directory holds
/// the config.
async fn web_upstream(url: &str, extra: &str) -> (TestApp, String, tempfile::TempDir) {
    web_upstream_with(url, extra, &[]).await
}

/// [`web_upstream`], with `flags` on Gatehouse's command line.
async fn web_upstream_with(
    url: &str,
    extra: &str,
    flags: &[&str],
) -> (TestApp, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("gatehouse.toml");
    let section = format!("[[upstream]]\nname = \"web\"\nurl = \"{url}\"\n{extra}");
    std::fs::write(&config, section).expect("write");
    let app = TestApp::new(&[&["--config", config.to_str().expect("utf-8")], flags].concat());
    let (_, tokens) = app
        .tokens_at("https://gate.example.com/mcp/web", "web:read")
        .await;
    let token = tokens["access_token"].as_str().expect("at").to_owned();
    (app, token, dir)
}

/// Gatehouse with one HTTP upstream, `web`, at `addr`; a `web:read` token and a
/// session in which the tools were listed, as clients do (so calls take the
/// direct path).
struct Web {
    app: TestApp,
    token: String,
    session: String,
    _dir: tempfile::TempDir,
}

impl Web {
    async fn open(addr: std::net::SocketAddr) -> Web {
        Web::at(&format!("http://{addr}/mcp"), "", &[]).await
    }

    /// [`Web::open`] for the server at `url`, with `extra` lines in its config
    /// section and `flags` on Gatehouse's command line.
    async fn at(url: &str, extra: &str, flags: &[&str]) -> Web {
        let (app, token, dir) = web_upstream_with(url, extra, flags).await;
        let session = app.session_at("/mcp/web", &token, V2025).await;
        let web = Web {
            app,
            token,
            session,
            _dir: dir,
        };
        let listed = web.list_tools(2).await;
        assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
        web
    }

    /// `tools/list` in the session, as clients do.
    async fn list_tools(&self, id: u64) -> Answer {
        let listing = json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"});
        self.app.send(self.post().body(listing)).await
    }

    /// A POST in the session.
    fn post(&self) -> McpPost<'_> {
        McpPost {
            path: "/mcp/web",
            token: Some(&self.token),
            session: Some(&self.session),
            version: Some(V2025),
            ..McpPost::default()
        }
    }

    /// A call of `tool` with a progress token, its answer read as it streams.
    async fn streamed_call(&self, id: u64, tool: &str) -> Events {
        use tower::ServiceExt;
        let mut request = call(id, tool, json!({}));
        request["params"]["_meta"] = json!({"progressToken": "p"});
        let response = self
            .app
            .router
            .clone()
            .oneshot(self.post().body(request))
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        Events {
            body: response.into_body(),
            buffer: String::new(),
        }
    }
}

/// A TCP relay in front of a server, so that a test can make the server vanish as a
/// crashed process does: `cut` resets every open connection and stops listening.
struct Cuttable {
    addr: std::net::SocketAddr,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Cuttable {
    async fn start(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let accepted = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let relay = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                accepted.lock().expect("lock").push(relay.abort_handle());
            }
        });
        tasks.lock().expect("lock").push(accept.abort_handle());
        Cuttable { addr, tasks }
    }

    fn cut(&self) {
        for task in self.tasks.lock().expect("lock").drain(..) {
            task.abort();
        }
    }

    /// How many connections it has accepted.
    fn connections(&self) -> usize {
        self.tasks.lock().expect("lock").len().saturating_sub(1)
    }
}

/// An HTTP server that dies while a call waits on its event stream: the call fails
/// within a few resumption attempts as "not reachable", naming the upstream, instead
/// of waiting out its `timeout` while rmcp tries to resume the stream without end.
/// (rmcp's server asks for 3 s between attempts, which the client must honour.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_server_that_dies_mid_call_is_an_error_at_once() {
    let holds = Holds::default();
    let upstream = serve_upstream(holds.clone()).await;
    let relay = Cuttable::start(upstream).await;
    let opened = Web::open(relay.addr).await;
    let (app, web) = (&opened.app, opened.post());

    let answer = app.send(web.body(call(3, "hold", json!({}))));
    let crash = async {
        holds.called.notified().await;
        relay.cut();
        std::time::Instant::now()
    };
    let (answer, crashed_at) = tokio::join!(answer, crash);
    let waited = crashed_at.elapsed();
    let error = &answer.rpc()["error"];
    assert_eq!(error["data"]["upstream"], "web", "{}", answer.body);
    assert_eq!(error["data"]["reason"], "unavailable", "{}", answer.body);
    assert!(
        waited < Duration::from_secs(20),
        "the call waited {waited:?} after its server died"
    );
}

/// A session rmcp must bring back from the store (after a restart, here, or an idle
/// close) while its upstream is down: rmcp answered a plain-text 500, and would for
/// the record's day, and clients open a new session only on 404. Now the record goes
/// and the client hears the session is gone; a new session is then a JSON-RPC error
/// naming the upstream, as long as it is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_cannot_be_restored_ends_instead_of_failing() {
    let upstream = serve_upstream(Holds::default()).await;
    let relay = Cuttable::start(upstream).await;
    let (app, token, dir) = web_upstream(&format!("http://{}/mcp", relay.addr), "").await;
    let session = app.session_at("/mcp/web", &token, V2025).await;
    let config = dir.path().join("gatehouse.toml");
    let app = app
        .restart(&["--config", config.to_str().expect("utf-8")])
        .await;
    relay.cut();
    for id in 2..4 {
        let listed = app
            .send(
                McpPost {
                    path: "/mcp/web",
                    token: Some(&token),
                    session: Some(&session),
                    version: Some(V2025),
                    ..McpPost::default()
                }
                .body(json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"})),
            )
            .await;
        assert_eq!(listed.status, StatusCode::NOT_FOUND, "{}", listed.body);
    }
    let stored = app.state.store.scan("mcp-session:").await.expect("scan");
    assert!(stored.is_empty(), "{} session records left", stored.len());
    let again = app.send(initialize("/mcp/web", &token, 4)).await;
    assert_eq!(
        again.rpc()["error"]["data"]["upstream"],
        "web",
        "{}",
        again.body
    );
}

/// An HTTP upstream (rmcp, here) whose one tool answers with the id it was called
/// by, as JSON text: a string of Gatehouse's on the direct path, a number through
/// rmcp's relay.
#[derive(Clone, Default)]
struct Ids;

impl ServerHandler for Ids {
    fn get_info(&self) -> ServerConfig {
        tools_server("ids")
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(one_read_only_tool("id", "the call's id"))
    }

    async fn call_tool(
        &self,
        _request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let id = serde_json::to_string(&context.id).expect("id");
        Ok(CallToolResult::success(vec![ContentBlock::text(id)]).into())
    }
}

/// A session brought back from the store (after a restart, here) is one like any
/// other: its calls take the direct path again, and its upstream side is found when
/// it must end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_session_takes_the_direct_path_again() {
    let url = format!("http://{}/mcp", serve_upstream(Ids).await);
    let (app, token, dir) = web_upstream(&url, "").await;
    let session = app.session_at("/mcp/web", &token, V2025).await;
    let post = |body: Value| {
        McpPost {
            path: "/mcp/web",
            token: Some(&token),
            session: Some(&session),
            version: Some(V2025),
            ..McpPost::default()
        }
        .body(body)
    };
    let called_by = |answer: &Answer| -> Value {
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        serde_json::from_str(&text(answer)).expect("an id")
    };
    let listed = app
        .send(post(
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
        ))
        .await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    let id = called_by(&app.send(post(call(3, "id", json!({})))).await);
    assert!(
        id.as_str().is_some_and(|id| id.starts_with("gatehouse-")),
        "{id}"
    );

    let config = dir.path().join("gatehouse.toml");
    let app = app
        .restart(&["--config", config.to_str().expect("utf-8")])
        .await;
    let listed = app
        .send(post(
            json!({"jsonrpc": "2.0", "id": 4, "method": "tools/list"}),
        ))
        .await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    for id in 5..7 {
        let seen = called_by(&app.send(post(call(id, "id", json!({})))).await);
        assert!(
            seen.as_str().is_some_and(|id| id.starts_with("gatehouse-")),
            "call {id} in the restored session reached the upstream as {seen}"
        );
    }
}

/// An HTTP upstream (rmcp, here) whose tools talk back during a call: `ask` reports
/// progress, asks the client for its roots, and answers with what it saw; `hold`
/// waits until it is cancelled. It records the ids and progress tokens it is sent.
/// A call's id and progress token as the upstream saw them (JSON text).
type SeenCall = (String, Option<String>);

#[derive(Clone, Default)]
struct TalksBack {
    seen: Arc<Mutex<Vec<SeenCall>>>,
    holding: Arc<tokio::sync::Notify>,
    cancelled: Arc<tokio::sync::Notify>,
}

impl ServerHandler for TalksBack {
    fn get_info(&self) -> ServerConfig {
        tools_server("talks-back")
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let read_only = |name: &'static str| {
            Tool::new(name, name, Arc::new(serde_json::Map::new()))
                .with_annotations(ToolAnnotations::new().read_only(true))
        };
        Ok(ListToolsResult::with_all_items(vec![
            read_only("ask"),
            read_only("hold"),
            read_only("gives-up"),
        ]))
    }

    // Roots are deprecated by SEP-2577 but still relayed for the 2025 revisions.
    #[allow(deprecated)]
    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let token = context.meta.get_progress_token();
        self.seen.lock().expect("lock").push((
            serde_json::to_string(&context.id).expect("id"),
            token
                .as_ref()
                .map(|t| serde_json::to_string(t).expect("token")),
        ));
        // Asks the client, then gives up waiting, as the TypeScript SDK does when its
        // wait times out.
        if request.name == "gives-up" {
            let asking = context
                .peer
                .send_request_with_option(
                    ServerRequest::ListRootsRequest(ListRootsRequest::default()),
                    rmcp::service::PeerRequestOptions::no_options(),
                )
                .await
                .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
            let _ = asking.cancel(Some("no answer in time".into())).await;
            return Ok(CallToolResult::success(vec![ContentBlock::text("gave up")]).into());
        }
        if request.name == "hold" {
            self.holding.notify_one();
            context.ct.cancelled().await;
            self.cancelled.notify_one();
            return Err(ErrorData::internal_error("cancelled", None));
        }
        if let Some(token) = token {
            let _ = context
                .peer
                .notify_progress(ProgressNotificationParam::new(token, 1.0))
                .await;
        }
        let roots = context
            .peer
            .list_roots()
            .await
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        let uri = roots
            .roots
            .first()
            .map(|r| r.uri.clone())
            .unwrap_or_default();
        Ok(CallToolResult::success(vec![ContentBlock::text(format!("roots: {uri}"))]).into())
    }
}

/// An HTTP upstream (rmcp, here) whose one tool sends progress, then answers when the
/// test says; it tells the test when the progress went.
#[derive(Clone, Default)]
struct Ticks {
    ticked: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Notify>,
}

impl ServerHandler for Ticks {
    fn get_info(&self) -> ServerConfig {
        tools_server("ticks")
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let tool = Tool::new(
            "tick",
            "progress, then done",
            Arc::new(serde_json::Map::new()),
        )
        .with_annotations(ToolAnnotations::new().read_only(true));
        Ok(ListToolsResult::with_all_items(vec![tool]))
    }

    async fn call_tool(
        &self,
        _request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if let Some(token) = context.meta.get_progress_token() {
            let _ = context
                .peer
                .notify_progress(ProgressNotificationParam::new(token, 1.0))
                .await;
        }
        self.ticked.notify_one();
        self.release.notified().await;
        Ok(CallToolResult::success(vec![ContentBlock::text("done")]).into())
    }
}

/// A call streaming its answer holds its session's place upstream (`max_sessions`)
/// until it ends, even once the session has ended: here the client ends it with
/// DELETE, and the upstream, which keeps a DELETE to itself (as a server may), goes
/// on streaming. Without that, a client could hold many calls upstream while holding
/// no session, past every session cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_call_holds_its_sessions_place_until_it_ends() {
    let ticks = Ticks::default();
    let keeps_deletes = axum::middleware::from_fn(
        |request: axum::extract::Request, next: axum::middleware::Next| async move {
            if request.method() == axum::http::Method::DELETE {
                return axum::response::IntoResponse::into_response(StatusCode::OK);
            }
            next.run(request).await
        },
    );
    let addr = serve_local(
        axum::Router::new()
            .nest_service("/mcp", mcp_service(ticks.clone()))
            .layer(keeps_deletes),
    )
    .await;
    let web = Web::at(
        &format!("http://{addr}/mcp"),
        "max_sessions = 1\ntimeout = \"30s\"\n",
        // The attempts below are new sessions too.
        &["--sessions-per-minute", "1000"],
    )
    .await;
    let (app, token, session) = (&web.app, web.token.as_str(), web.session.as_str());
    let mut events = web.streamed_call(3, "tick").await;
    let progress = events.next().await;
    assert_eq!(progress["method"], "notifications/progress", "{progress}");
    let ended = app.end_session("/mcp/web", token, session, V2025).await;
    assert!(ended.status.is_success(), "{} {}", ended.status, ended.body);

    // However long one waits while the call streams, the upstream is full.
    for id in 10..20 {
        let answer = app.send(initialize("/mcp/web", token, id)).await;
        let reason = &answer.rpc()["error"]["data"]["reason"];
        assert!(
            reason == "busy" || reason == "client_busy",
            "a new session while the ended one's call streams: {}",
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ticks.release.notify_one();
    let done = events.next().await;
    assert_eq!(done["result"]["content"][0]["text"], "done", "{done}");
    drop(events);
    // Once the call has ended, its place is given back.
    for id in 20.. {
        let answer = app.send(initialize("/mcp/web", token, id)).await;
        if answer.headers.get("mcp-session-id").is_some() {
            break;
        }
        assert!(id < 70, "no place upstream within 5 s: {}", answer.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An HTTP upstream (rmcp, here) whose one tool reports progress once, says nothing
/// until the test lets it go (30 s at most), then answers.
#[derive(Clone, Default)]
struct Slow(Arc<tokio::sync::Notify>);

impl ServerHandler for Slow {
    fn get_info(&self) -> ServerConfig {
        tools_server("slow")
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(one_read_only_tool("slow", "silence until let go"))
    }

    async fn call_tool(
        &self,
        _request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if let Some(token) = context.meta.get_progress_token() {
            let _ = context
                .peer
                .notify_progress(ProgressNotificationParam::new(token, 1.0))
                .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), self.0.notified()).await;
        Ok(CallToolResult::success(vec![ContentBlock::text("done")]).into())
    }
}

/// A call that streams for longer than its upstream's `idle_timeout`, with nothing
/// else in its session and nothing to say for most of it, keeps the session open: rmcp does not see the direct path's
/// traffic, so it would close the session as idle, and the client's next request
/// would have to bring it back, which needs a place upstream that the streaming
/// call still holds (here the only one): 404, and the session lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_streamed_call_keeps_its_session_open() {
    let slow = Slow::default();
    let url = format!("http://{}/mcp", serve_upstream(slow.clone()).await);
    let web = Web::at(
        &url,
        "max_sessions = 1\nidle_timeout = \"2s\"\ntimeout = \"30s\"\n",
        &[],
    )
    .await;
    let mut events = web.streamed_call(3, "slow").await;
    let streamed = tokio::spawn(async move {
        loop {
            let event = events.next().await;
            if event.get("result").is_some() || event.get("error").is_some() {
                return event;
            }
        }
    });
    // Past the idle timeout, while the call still streams.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let listed = web.list_tools(4).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    // Only now may the call end: the listing above came while it streamed, however
    // slow this machine is.
    assert!(!streamed.is_finished(), "the call ended before the listing");
    slow.0.notify_one();
    let done = streamed.await.expect("the stream");
    assert_eq!(done["result"]["content"][0]["text"], "done", "{done}");
}

/// An upstream that logs to its client every 100 ms from the moment a session
/// opens, until the session ends.
#[derive(Clone, Default)]
struct Talkative;

// Logging, deprecated by SEP-2577, is what servers of today send in numbers.
#[allow(deprecated)]
impl ServerHandler for Talkative {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_logging()
                .build(),
        )
        .with_server_info(Implementation::new("chatty", "1"))
    }

    async fn on_initialized(&self, context: rmcp::service::NotificationContext<RoleServer>) {
        let peer = context.peer.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let note = LoggingMessageNotificationParam::new(LoggingLevel::Info, json!("tick"));
                if peer.notify_logging_message(note).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// A session its client left (without DELETE) is closed once no request of the
/// client's has come for `idle_timeout`, although its upstream keeps sending it
/// messages, each of which restarts rmcp's own idle timer: it held its place (here
/// the only one) for as long as its binding lived, a day. The client that comes
/// back has its session brought back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_its_client_left_closes_though_the_upstream_keeps_talking() {
    let url = format!("http://{}/mcp", serve_upstream(Talkative).await);
    let web = Web::at(&url, "max_sessions = 1\nidle_timeout = \"2s\"\n", &[]).await;
    let endpoint = &web.app.state.upstreams[0];
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(endpoint.close_idle().await, 0, "not idle yet");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        endpoint.live_sessions().await,
        1,
        "rmcp keeps a session its upstream talks to"
    );
    assert_eq!(endpoint.close_idle().await, 1);
    // rmcp forgets it, and its place comes back once the upstream session has
    // ended.
    let freed = async {
        while endpoint.live_sessions().await > 0 || endpoint.health().sessions > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), freed)
        .await
        .expect("the session's place given back");
    let again = web.list_tools(4).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(endpoint.live_sessions().await, 1);
}

/// The messages of an SSE answer, read as they arrive.
struct Events {
    body: axum::body::Body,
    buffer: String,
}

impl Events {
    async fn next(&mut self) -> Value {
        use http_body_util::BodyExt;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let event: String = self.buffer.drain(..end + 2).collect();
                let data: String = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim)
                    .collect();
                if data.is_empty() {
                    continue;
                }
                return serde_json::from_str(&data).expect("a JSON-RPC message");
            }
            let frame = tokio::time::timeout(Duration::from_secs(10), self.body.frame())
                .await
                .expect("the next event in time")
                .expect("more events")
                .expect("a frame");
            if let Ok(data) = frame.into_data() {
                self.buffer
                    .push_str(std::str::from_utf8(&data).expect("utf-8"));
            }
        }
    }
}

/// A tool call in a live session of an HTTP upstream takes the direct path (the
/// upstream sees Gatehouse's own string ids, never the client's, so they cannot
/// collide with the relay's numeric ones) and keeps everything the relay gives:
/// progress with the client's own token, a request of the upstream's answered by
/// the client in the same call, the client's ids in the answer, and cancellation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_upstreams_calls_take_the_direct_path_with_everything_relayed() {
    use tower::ServiceExt;
    let upstream = TalksBack::default();
    let url = format!("http://{}/mcp", serve_upstream(upstream.clone()).await);
    let (app, token, _dir) = web_upstream(&url, "timeout = \"30s\"\n").await;
    let post = |session: Option<&str>, body: Value| {
        McpPost {
            path: "/mcp/web",
            token: Some(&token),
            session,
            version: session.map(|_| V2025),
            ..McpPost::default()
        }
        .body(body)
    };
    // A client that offers roots.
    let init = app
        .send(post(
            None,
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": V2025, "capabilities": {"roots": {}},
                "clientInfo": {"name": "t", "version": "1"}}}),
        ))
        .await;
    let session = init.headers["mcp-session-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let session = session.as_str();
    let sent = app
        .send(post(
            Some(session),
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        ))
        .await;
    assert_eq!(sent.status, StatusCode::ACCEPTED);
    let listed = app
        .send(post(
            Some(session),
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
        ))
        .await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);

    // The call, with the client's progress token.
    let mut request = call(3, "ask", json!({}));
    request["params"]["_meta"] = json!({"progressToken": "client-token"});
    let response = app
        .router
        .clone()
        .oneshot(post(Some(session), request))
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    let mut events = Events {
        body: response.into_body(),
        buffer: String::new(),
    };
    let progress = events.next().await;
    assert_eq!(progress["method"], "notifications/progress", "{progress}");
    assert_eq!(progress["params"]["progressToken"], "client-token");
    let ask = events.next().await;
    assert_eq!(ask["method"], "roots/list", "{ask}");
    let ask_id = ask["id"].as_str().expect("a string id").to_owned();
    assert!(ask_id.starts_with("gatehouse-"), "{ask}");
    // With a member JSON-RPC does not have: dropped on the way (an upstream's
    // parser might read it as something else), the answer itself is not.
    let answered = app
        .send(post(
            Some(session),
            json!({"jsonrpc": "2.0", "id": ask_id, "x-trace": "t",
                   "result": {"roots": [{"uri": "file:///home/owner/project"}]}}),
        ))
        .await;
    assert_eq!(answered.status, StatusCode::ACCEPTED, "{}", answered.body);
    let answer = events.next().await;
    assert_eq!(answer["id"], 3, "{answer}");
    assert_eq!(
        answer["result"]["content"][0]["text"],
        "roots: file:///home/owner/project"
    );
    let seen = upstream.seen.lock().expect("lock").clone();
    let (id, token) = seen.last().expect("the upstream saw the call").clone();
    assert!(id.starts_with("\"gatehouse-"), "the upstream saw id {id}");
    let token = token.expect("a progress token upstream");
    assert!(
        token.starts_with("\"gatehouse-"),
        "the upstream saw token {token}"
    );

    // The upstream gives up a request of its own: the client hears so, under the
    // request's id as it knows it. rmcp's server says so on the session's own
    // stream, where it may come before the request itself: it is said on the call's
    // stream when the call ends (the TypeScript SDK says so on the call's stream:
    // see `an_upstream_giving_up_its_request_on_the_calls_stream_is_relayed`).
    let response = app
        .router
        .clone()
        .oneshot(post(Some(session), call(5, "gives-up", json!({}))))
        .await
        .expect("response");
    let mut events = Events {
        body: response.into_body(),
        buffer: String::new(),
    };
    let ask = events.next().await;
    assert_eq!(ask["method"], "roots/list", "{ask}");
    let cancelled = events.next().await;
    assert_eq!(
        cancelled["method"], "notifications/cancelled",
        "{cancelled}"
    );
    assert_eq!(cancelled["params"]["requestId"], ask["id"], "{cancelled}");
    let answer = events.next().await;
    assert_eq!(answer["id"], 5, "{answer}");
    // Its answer, had the client sent one, would find nothing to answer.
    let late = app
        .send(post(
            Some(session),
            json!({"jsonrpc": "2.0", "id": ask["id"], "result": {"roots": []}}),
        ))
        .await;
    assert_eq!(late.status, StatusCode::ACCEPTED, "{}", late.body);

    // Cancelled by the client: the upstream hears of it, the call ends at once.
    let held = app
        .router
        .clone()
        .oneshot(post(Some(session), call(4, "hold", json!({}))));
    let cancel = async {
        upstream.holding.notified().await;
        let cancelled = app
            .send(post(
                Some(session),
                json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                       "params": {"requestId": 4, "reason": "the person gave up"}}),
            ))
            .await;
        assert_eq!(cancelled.status, StatusCode::ACCEPTED);
        tokio::time::timeout(Duration::from_secs(10), upstream.cancelled.notified())
            .await
            .expect("the upstream heard of the cancellation");
    };
    let (held, ()) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(held, cancel)
    })
    .await
    .expect("the cancelled call ended");
    let held = held.expect("response");
    assert_eq!(held.status(), StatusCode::OK);
    // A cancelled request gets no answer (it ends without a message).
    use http_body_util::BodyExt;
    let rest = held.into_body().collect().await.expect("body").to_bytes();
    assert!(
        !String::from_utf8_lossy(&rest).contains("data:"),
        "{rest:?}"
    );
    // The activity log has it as cancelled, not as an error.
    let held: Vec<String> = tool_outcomes(&app)
        .await
        .into_iter()
        .filter(|(tool, _)| tool == "hold")
        .map(|(_, outcome)| outcome)
        .collect();
    assert_eq!(held, ["cancelled"]);
    // A second cancellation of the same call goes nowhere: the relay takes it.
    let again = app
        .send(post(
            Some(session),
            json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                   "params": {"requestId": 4}}),
        ))
        .await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
}

/// A hand-written HTTP upstream that gives up a request of its own as the TypeScript
/// SDK's server does when its wait times out: on the call's stream, before the
/// call's answer. Its one tool asks the client for its roots.
async fn gives_up_on_the_calls_stream() -> std::net::SocketAddr {
    use axum::response::IntoResponse;
    async fn mcp(body: String) -> axum::response::Response {
        let message: Value = serde_json::from_str(&body).unwrap_or_default();
        let id = message["id"].clone();
        let json = |result: Value| {
            let answer = json!({"jsonrpc": "2.0", "id": id, "result": result});
            (
                [
                    (header::CONTENT_TYPE, "application/json"),
                    (header::HeaderName::from_static("mcp-session-id"), "s1"),
                ],
                answer.to_string(),
            )
                .into_response()
        };
        match message["method"].as_str() {
            Some("initialize") => json(json!({
                "protocolVersion": message["params"]["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "gives-up", "version": "1"}})),
            Some("tools/list") => json(json!({"tools": [{
                "name": "gives-up", "inputSchema": {"type": "object"},
                "annotations": {"readOnlyHint": true}}]})),
            Some("tools/call") => {
                let events = [
                    json!({"jsonrpc": "2.0", "id": 7, "method": "roots/list"}),
                    json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                           "params": {"requestId": 7, "reason": "timed out"}}),
                    json!({"jsonrpc": "2.0", "id": id, "result": {
                        "content": [{"type": "text", "text": "gave up"}]}}),
                ];
                let body: String = events
                    .iter()
                    .map(|event| format!("event: message\ndata: {event}\n\n"))
                    .collect();
                ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
            }
            _ => StatusCode::ACCEPTED.into_response(),
        }
    }
    serve_local(
        axum::Router::new().route(
            "/mcp",
            axum::routing::post(mcp)
                .get(|| async { StatusCode::METHOD_NOT_ALLOWED })
                .delete(|| async { StatusCode::OK }),
        ),
    )
    .await
}

/// An upstream that gives up its request to the client on the call's stream (the
/// TypeScript SDK's way): the client hears so there, under the id it knows, before
/// the call's answer.
#[tokio::test]
async fn an_upstream_giving_up_its_request_on_the_calls_stream_is_relayed() {
    let web = Web::open(gives_up_on_the_calls_stream().await).await;
    let response = tower::ServiceExt::oneshot(
        web.app.router.clone(),
        web.post().body(call(3, "gives-up", json!({}))),
    )
    .await
    .expect("response");
    let mut events = Events {
        body: response.into_body(),
        buffer: String::new(),
    };
    let ask = events.next().await;
    assert_eq!(ask["method"], "roots/list", "{ask}");
    assert!(
        ask["id"].is_string(),
        "the client sees Gatehouse's id: {ask}"
    );
    let cancelled = events.next().await;
    assert_eq!(
        cancelled["method"], "notifications/cancelled",
        "{cancelled}"
    );
    assert_eq!(cancelled["params"]["requestId"], ask["id"], "{cancelled}");
    let answer = events.next().await;
    assert_eq!(answer["id"], 3, "{answer}");
    assert_eq!(answer["result"]["content"][0]["text"], "gave up");
}

/// What [`resumable`] has been sent besides its requests: the notifications (a
/// cancellation, say), and the `Last-Event-ID`s of its GETs.
#[derive(Clone, Default)]
struct Resumable {
    notified: Arc<Mutex<Vec<Value>>>,
    resumed_after: Arc<Mutex<Vec<String>>>,
    call: Arc<Mutex<Value>>,
    /// The sessions it knows (cleared: it restarted), and how many it opened.
    sessions: Arc<Mutex<std::collections::HashSet<String>>>,
    opened: Arc<std::sync::atomic::AtomicUsize>,
}

/// A hand-written HTTP upstream of the 2025-11-25 kind: its tool `resumes` sends an
/// event id and closes the call's stream at once, and answers on a GET with that
/// `Last-Event-ID`; its tool `slow` never answers, and `echo` at once. A request in
/// a session it does not know (see [`Resumable::sessions`]) is answered 404.
async fn resumable(seen: Resumable) -> std::net::SocketAddr {
    use axum::{extract::State, response::IntoResponse};
    const SSE: (header::HeaderName, &str) = (header::CONTENT_TYPE, "text/event-stream");
    async fn mcp(
        State(seen): State<Resumable>,
        headers: header::HeaderMap,
        body: String,
    ) -> axum::response::Response {
        let message: Value = serde_json::from_str(&body).unwrap_or_default();
        let id = message["id"].clone();
        let session = match headers.get("mcp-session-id").and_then(|v| v.to_str().ok()) {
            Some(session) => session.to_owned(),
            None if message["method"] == "initialize" => {
                let n = seen
                    .opened
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let session = format!("s{n}");
                seen.sessions.lock().expect("lock").insert(session.clone());
                session
            }
            None => return StatusCode::BAD_REQUEST.into_response(),
        };
        if !seen.sessions.lock().expect("lock").contains(&session) {
            return StatusCode::NOT_FOUND.into_response();
        }
        let json = |result: Value| {
            let answer = json!({"jsonrpc": "2.0", "id": id, "result": result});
            (
                [(header::CONTENT_TYPE, "application/json")],
                [(
                    header::HeaderName::from_static("mcp-session-id"),
                    session.clone(),
                )],
                answer.to_string(),
            )
                .into_response()
        };
        match (
            message["method"].as_str(),
            message["params"]["name"].as_str(),
        ) {
            (Some("initialize"), _) => json(json!({
                "protocolVersion": message["params"]["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "resumable", "version": "1"}})),
            (Some("tools/call"), Some("echo")) => {
                json(json!({"content": [{"type": "text", "text": "echo"}]}))
            }
            (Some("tools/list"), _) => {
                let tools: Vec<Value> = ["resumes", "slow", "echo"]
                    .iter()
                    .map(|name| {
                        json!({"name": name, "inputSchema": {"type": "object"},
                                       "annotations": {"readOnlyHint": true}})
                    })
                    .collect();
                json(json!({ "tools": tools }))
            }
            (Some("tools/call"), Some("resumes")) => {
                *seen.call.lock().expect("lock") = id;
                ([SSE], "id: e1\nretry: 50\ndata: \n\n").into_response()
            }
            (Some("tools/call"), _) => {
                tokio::time::sleep(Duration::from_secs(60)).await;
                StatusCode::GATEWAY_TIMEOUT.into_response()
            }
            _ => {
                seen.notified.lock().expect("lock").push(message);
                StatusCode::ACCEPTED.into_response()
            }
        }
    }
    async fn resume(
        State(seen): State<Resumable>,
        headers: header::HeaderMap,
    ) -> axum::response::Response {
        let after = headers.get("last-event-id").and_then(|v| v.to_str().ok());
        let Some(after) = after else {
            return StatusCode::METHOD_NOT_ALLOWED.into_response();
        };
        seen.resumed_after
            .lock()
            .expect("lock")
            .push(after.to_owned());
        let id = seen.call.lock().expect("lock").clone();
        let answer = json!({"jsonrpc": "2.0", "id": id, "result": {
            "content": [{"type": "text", "text": "resumed"}]}});
        ([SSE], format!("id: e2\ndata: {answer}\n\n")).into_response()
    }
    serve_local(
        axum::Router::new()
            .route(
                "/mcp",
                axum::routing::post(mcp)
                    .get(resume)
                    .delete(|| async { StatusCode::OK }),
            )
            .with_state(seen),
    )
    .await
}

/// An upstream may close a call's stream once it has sent an event id (2025-11-25):
/// the call's answer comes from the stream taken up again with `Last-Event-ID`, as
/// through rmcp's client, not an error saying the upstream is unreachable.
#[tokio::test]
async fn a_calls_stream_the_upstream_closed_is_taken_up_again() {
    let seen = Resumable::default();
    let web = Web::open(resumable(seen.clone()).await).await;
    let answer = web
        .app
        .send(web.post().body(call(3, "resumes", json!({}))))
        .await;
    let answer = answer.rpc();
    assert_eq!(answer["id"], 3, "{answer}");
    assert_eq!(
        answer["result"]["content"][0]["text"], "resumed",
        "{answer}"
    );
    assert_eq!(*seen.resumed_after.lock().expect("lock"), ["e1"]);
}

/// An upstream that no longer knows the session (it restarted) answers 404: the
/// call is sent again in a new upstream session, as rmcp's client does, rather than
/// failed as if the upstream were down.
#[tokio::test]
async fn a_call_in_a_session_the_upstream_forgot_is_sent_again_in_a_new_one() {
    let seen = Resumable::default();
    let web = Web::open(resumable(seen.clone()).await).await;
    let first = web
        .app
        .send(web.post().body(call(3, "echo", json!({}))))
        .await;
    assert_eq!(
        first.rpc()["result"]["content"][0]["text"],
        "echo",
        "{}",
        first.body
    );
    let before = seen.opened.load(std::sync::atomic::Ordering::SeqCst);
    seen.sessions.lock().expect("lock").clear();
    for id in [4, 5] {
        let again = web
            .app
            .send(web.post().body(call(id, "echo", json!({}))))
            .await;
        let again = again.rpc();
        assert_eq!(again["id"], id, "{again}");
        assert_eq!(again["result"]["content"][0]["text"], "echo", "{again}");
    }
    assert!(seen.opened.load(std::sync::atomic::Ordering::SeqCst) > before);
    let health = web.app.get("/healthz", None).await;
    assert_eq!(
        health.json()["upstreams"][0]["status"],
        "up",
        "{}",
        health.body
    );
}

/// A call that runs out of its `timeout` gets its error, and the upstream is told
/// to stop it: what a session may have in flight upstream stays bounded by what it
/// may have in flight here.
#[tokio::test]
async fn a_call_that_times_out_is_cancelled_upstream() {
    let seen = Resumable::default();
    let addr = resumable(seen.clone()).await;
    let web = Web::at(&format!("http://{addr}/mcp"), "timeout = \"1s\"\n", &[]).await;
    let answer = web
        .app
        .send(web.post().body(call(3, "slow", json!({}))))
        .await;
    let answer = answer.rpc();
    assert_eq!(answer["error"]["data"]["upstream"], "web", "{answer}");
    let cancelled = async {
        loop {
            let notified = seen.notified.lock().expect("lock").clone();
            if let Some(cancelled) = notified
                .iter()
                .find(|n| n["method"] == "notifications/cancelled")
            {
                return cancelled.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let cancelled = tokio::time::timeout(Duration::from_secs(10), cancelled)
        .await
        .expect("the upstream hears the call is cancelled");
    assert!(
        cancelled["params"]["requestId"]
            .as_str()
            .is_some_and(|id| id.starts_with("gatehouse-")),
        "the call's id upstream: {cancelled}"
    );
}

/// An upstream at its `max_sessions`, or a client at its `max_sessions_per_client`:
/// the next `initialize` is a JSON-RPC error naming the upstream, without a session
/// id to use (so nothing answers 500 later); once a session ends, a new one opens.
#[tokio::test]
async fn a_full_upstream_refuses_new_sessions_until_one_ends() {
    // The retries below are new sessions too.
    let app = py_app(
        "max_sessions = 2\nmax_sessions_per_client = 1\n",
        &["--sessions-per-minute", "1000"],
    );
    let token = |scope| {
        let app = &app;
        async move {
            let (_, tokens) = app.tokens_at(PY_URL, scope).await;
            tokens["access_token"].as_str().expect("at").to_owned()
        }
    };
    let refused = |answer: Answer, reason: &str| {
        let error = &answer.rpc()["error"];
        assert_eq!(error["data"]["upstream"], "py", "{}", answer.body);
        assert_eq!(error["data"]["reason"], reason, "{}", answer.body);
        assert!(
            answer.headers.get("mcp-session-id").is_none(),
            "a failed initialize named a session"
        );
    };
    let (one, two, three) = (
        token("py:read").await,
        token("py:read").await,
        token("py:read").await,
    );
    let first = app.session_at("/mcp/py", &one, V2025).await;
    // An `initialize` sent again in the session starts nothing upstream.
    let again = post(&app, &one, &first, initialize_body(9)).await;
    assert_eq!(
        again.rpc()["error"]["message"],
        "this session is already initialized",
        "{}",
        again.body
    );
    // The first client holds its one place; another client still gets one of the
    // upstream's two, and then the upstream is full for everyone.
    refused(
        app.send(initialize("/mcp/py", &one, 1)).await,
        "client_busy",
    );
    app.session_at("/mcp/py", &two, V2025).await;
    refused(app.send(initialize("/mcp/py", &three, 1)).await, "busy");

    let ended = app.end_session("/mcp/py", &one, &first, V2025).await;
    assert!(ended.status.is_success(), "{} {}", ended.status, ended.body);
    // The upstream's place, and the client's, are given back once rmcp has closed
    // the session.
    let opened = initialize_once_free(&app, &one, 2).await;
    assert!(
        opened.rpc()["result"]["serverInfo"].is_object(),
        "{}",
        opened.body
    );
}

/// A console call, as the console's page sends it.
async fn console(app: &TestApp, endpoint: &str, form: &[(&str, &str)], cookie: &str) -> Answer {
    app.send(
        Request::post(format!("/api/console/{endpoint}"))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .header("sec-fetch-site", "same-origin")
            .header(header::COOKIE, cookie)
            .body(axum::body::Body::from(
                serde_urlencoded::to_string(form).expect("form"),
            ))
            .expect("request"),
    )
    .await
}

/// An `initialize` whose session cannot be bound to its client (the store takes no
/// writes: Redis going away mid-handshake) gets 503, and the session opened for it
/// ends at once with its process: its client never learns its id, and it held an
/// upstream place (here the only one) until a sweep found it.
#[tokio::test]
async fn a_session_that_cannot_be_bound_ends_at_once() {
    use common::faults::Mode;
    let (app, faults) = with_py_config("max_sessions = 1\n", &[], TestApp::with_faults_and_args);
    let (_, tokens) = app.tokens_at(PY_URL, "py:read").await;
    let token = tokens["access_token"].as_str().expect("at").to_owned();
    faults.set(Mode::WritesFailAfter(0));
    let refused = app.send(initialize("/mcp/py", &token, 1)).await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.body
    );
    assert_eq!(app.state.upstreams[0].live_sessions().await, 0);
    faults.set(Mode::Pass);
    let opened = initialize_once_free(&app, &token, 2).await;
    assert_eq!(opened.status, StatusCode::OK, "{}", opened.body);
}

#[tokio::test]
async fn a_session_ends_upstream_once_its_client_has_no_grant() {
    use gatehouse::http::mcp::{gateway::end_ungranted, sessions::binding_key};

    // One place upstream: a session kept after its grant went would keep every other
    // client out until it idled (10 minutes).
    let app = py_app("max_sessions = 1\n", &[]);
    let access = |tokens: &Value| tokens["access_token"].as_str().expect("at").to_owned();
    let (first_client, first) = app.tokens_at(PY_URL, "py:read").await;
    let (second_client, second) = app.tokens_at(PY_URL, "py:read").await;
    let (_, third) = app.tokens_at(PY_URL, "py:read").await;
    let session = app.session_at("/mcp/py", &access(&first), V2025).await;
    let busy = app.send(initialize("/mcp/py", &access(&second), 1)).await;
    assert_eq!(
        busy.rpc()["error"]["data"]["reason"],
        "busy",
        "{}",
        busy.body
    );
    // A refused `initialize` leaves no session behind (rmcp opened one for it).
    assert_eq!(app.state.upstreams[0].live_sessions().await, 1);
    // Where the session's client holds its grant, the sweep leaves it alone.
    assert_eq!(end_ungranted(&app.state).await.expect("sweep"), 0);
    let listed = post(
        &app,
        &access(&first),
        &session,
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    )
    .await;
    assert!(
        listed.rpc()["result"]["tools"].is_array(),
        "{}",
        listed.body
    );

    // The owner revokes the first client in the console: its session ends here and
    // now, with its process, and the next client gets the place.
    let cookie = app.sign_in().await;
    let apps = console(&app, "apps", &[], &cookie).await;
    let csrf = apps.json()["csrf"].as_str().expect("csrf").to_owned();
    let revoked = console(
        &app,
        "revoke_client",
        &[("client_id", &first_client), ("csrf", &csrf)],
        &cookie,
    )
    .await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
    assert!(
        !app.is_bound(&session).await,
        "the ended session's binding is kept"
    );
    // (the place of the revoked client's session)
    let second_session = opened_session(&initialize_once_free(&app, &access(&second), 2).await);

    // A grant that goes otherwise (the client revokes its refresh token, or the owner
    // on another instance) is noticed by the sweep each instance runs.
    let refresh = second["refresh_token"].as_str().expect("rt");
    let gone = app.revoke(&second_client, refresh).await;
    assert!(gone.status.is_success(), "{}", gone.body);
    assert_eq!(end_ungranted(&app.state).await.expect("sweep"), 1);
    assert!(!app.is_bound(&second_session).await);
    // (the place of the session the sweep ended)
    let third_session = opened_session(&initialize_once_free(&app, &access(&third), 3).await);

    // A session whose binding is gone (it expired, or another instance ended the
    // session) is refused by the guard; the sweep ends it here once it has had none
    // for longer than an `initialize` may take (the timeout and a sweep).
    let ends_after = Duration::from_secs(60 + 60);
    let endpoint = &app.state.upstreams[0];
    assert_eq!(endpoint.live_sessions().await, 1);
    app.state
        .store
        .delete(&binding_key(&third_session))
        .await
        .expect("store");
    app.state.bindings.forget(&third_session);
    // (The test clock runs on with the system's: a few seconds of margin.)
    assert_eq!(end_ungranted(&app.state).await.expect("sweep"), 0);
    app.clock.advance(ends_after - Duration::from_secs(5));
    assert_eq!(end_ungranted(&app.state).await.expect("sweep"), 0);
    assert_eq!(endpoint.live_sessions().await, 1);
    app.clock.advance(Duration::from_secs(10));
    assert_eq!(end_ungranted(&app.state).await.expect("sweep"), 1);
    assert_eq!(endpoint.live_sessions().await, 0);
}

/// One session cannot make Gatehouse hold more than 64 requests (so upstream
/// connections) at once: the next is refused with a JSON-RPC error, and a place is
/// free again once a request's client goes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_has_a_bounded_number_of_requests_in_flight() {
    use futures::StreamExt;
    const MAX: usize = 64;
    let holds = Holds::default();
    let upstream = serve_upstream(holds.clone()).await;
    let opened = Web::open(upstream).await;
    let (app, web) = (&opened.app, opened.post());
    let mut calls: futures::stream::FuturesUnordered<_> = (0..MAX as u64)
        .map(|i| app.send(web.body(call(100 + i, "hold", json!({})))))
        .collect();
    tokio::select! {
        answer = calls.next() => panic!("a held call was answered: {:?}", answer.map(|a| a.body)),
        reached = tokio::time::timeout(Duration::from_secs(30), holds.reached(MAX)) => {
            reached.expect("every call reached the upstream");
        }
    }
    // The calls are still open (their futures live): one more is refused.
    let refused = tokio::time::timeout(
        Duration::from_secs(20),
        app.send(web.body(call(1, "hold", json!({})))),
    )
    .await
    .expect("refused at once, not held");
    let error = &refused.rpc()["error"];
    assert_eq!(
        error["data"]["reason"], "too_many_requests",
        "{}",
        refused.body
    );
    assert_eq!(error["data"]["upstream"], "web", "{}", refused.body);
    assert_eq!(holds.calls.load(std::sync::atomic::Ordering::SeqCst), MAX);

    // Their client went away: the places are free again.
    drop(calls);
    let again = app.send(web.body(call(3, "hold", json!({}))));
    tokio::select! {
        answer = again => panic!("the call was answered: {}", answer.body),
        reached = tokio::time::timeout(Duration::from_secs(30), holds.reached(MAX + 1)) => {
            reached.expect("the call reached the upstream");
        }
    }
}

/// An upstream that answers at once, counting the listings it gave and the calls
/// it answered.
#[derive(Clone, Default)]
struct Quick(
    Arc<std::sync::atomic::AtomicUsize>,
    Arc<std::sync::atomic::AtomicUsize>,
);

impl ServerHandler for Quick {
    fn get_info(&self) -> ServerConfig {
        tools_server("quick")
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(one_read_only_tool("quick", "answers at once"))
    }

    async fn call_tool(
        &self,
        _request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(CallToolResult::success(vec![ContentBlock::text("done")]).into())
    }
}

/// Answers a client has not read keep their places: a client asking and never
/// reading cannot make Gatehouse hold more answers than a session's places, on the
/// direct path (tool calls) or through rmcp (everything else).
#[tokio::test]
async fn answers_a_client_does_not_read_hold_their_places() {
    const MAX: usize = 64;
    let quick = Quick::default();
    let upstream = serve_upstream(quick.clone()).await;
    let opened = Web::open(upstream).await;
    let (app, web) = (&opened.app, opened.post());
    let busy = |answer: &Answer| answer.rpc()["error"]["data"]["reason"] == "too_many_requests";

    // Direct calls: each answered upstream, its answer here unread.
    let mut unread = Vec::new();
    for i in 0..MAX as u64 {
        let response = app
            .respond(web.body(call(100 + i, "quick", json!({}))))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        unread.push(response);
    }
    let refused = app.send(web.body(call(1, "quick", json!({})))).await;
    assert!(busy(&refused), "{}", refused.body);
    drop(unread);
    let answered = app.send(web.body(call(2, "quick", json!({})))).await;
    assert!(answered.body.contains("done"), "{}", answered.body);

    // Relayed requests: rmcp answers them in a stream, here unread.
    let listed = quick.0.load(std::sync::atomic::Ordering::SeqCst);
    let list = |id: u64| web.body(json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"}));
    let mut unread = Vec::new();
    for i in 0..MAX as u64 {
        unread.push(app.respond(list(200 + i)).await);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while quick.0.load(std::sync::atomic::Ordering::SeqCst) < listed + MAX {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upstream listed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused = app.send(list(3)).await;
    assert!(busy(&refused), "{}", refused.body);
    // A notification is never refused for want of a place.
    let note = app
        .send(web.body(json!({"jsonrpc": "2.0", "method": "notifications/roots/list_changed"})))
        .await;
    assert_eq!(note.status, StatusCode::ACCEPTED, "{}", note.body);
    drop(unread);
    let again = app.send(list(4)).await;
    assert!(again.body.contains("quick"), "{}", again.body);
}

/// Without a session (2026-07-28), answers a client has not read hold places of
/// its share of the pool, as a session's do of the session's: listings, and tool
/// calls, whose answer the guard reads for the activity log's outcome (it gave the
/// place back as it read it).
#[tokio::test]
async fn sessionless_answers_a_client_does_not_read_hold_their_places() {
    const SHARE: usize = 64; // half of the pool's: 2 connections × 64
    for method in ["tools/list", "tools/call"] {
        let quick = Quick::default();
        let upstream = serve_upstream(quick.clone()).await;
        let (app, token, _dir) = web_upstream(&format!("http://{upstream}/mcp"), "").await;
        let ask = |id: u64| {
            let params = match method {
                "tools/call" => json!({"name": "quick", "arguments": {}}),
                _ => json!({}),
            };
            let mut request = sessionless(
                "/mcp/web",
                &token,
                json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
            );
            let headers = request.headers_mut();
            headers.insert("mcp-method", method.parse().expect("header"));
            if method == "tools/list" {
                headers.remove("mcp-name");
            }
            request
        };
        let answered = || match method {
            "tools/call" => quick.1.load(std::sync::atomic::Ordering::SeqCst),
            _ => quick.0.load(std::sync::atomic::Ordering::SeqCst),
        };
        let busy = |answer: &Answer| answer.rpc()["error"]["data"]["reason"] == "too_many_requests";
        let mut unread = Vec::new();
        for id in 0..SHARE as u64 {
            unread.push(app.respond(ask(100 + id)).await);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while answered() < SHARE {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{method}: the upstream answered"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let refused = app.send(ask(1)).await;
        assert!(busy(&refused), "{method}: {}", refused.body);
        drop(unread);
        let again = app.send(ask(2)).await;
        assert!(
            again.body.contains("quick") || again.body.contains("done"),
            "{method}: {}",
            again.body
        );
    }
}

/// An HTTP upstream (rmcp, here) whose one tool sends the client a flood of `ping`s
/// during the call, then answers; it counts the pings answered.
#[derive(Clone, Default)]
struct Pings(Arc<std::sync::atomic::AtomicUsize>);

impl ServerHandler for Pings {
    fn get_info(&self) -> ServerConfig {
        tools_server("pings")
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(one_read_only_tool("pings", "pings a lot"))
    }

    async fn call_tool(
        &self,
        _request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        // Sent from the call's own task, as rmcp puts them in the call's stream.
        let pings = (0..200).map(|_| {
            let ping = context
                .peer
                .send_request(ServerRequest::PingRequest(Default::default()));
            let answered = self.0.clone();
            async move {
                if ping.await.is_ok() {
                    answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        });
        let _ = tokio::time::timeout(Duration::from_millis(500), futures::future::join_all(pings))
            .await;
        Ok(CallToolResult::success(vec![ContentBlock::text("pinged")]).into())
    }
}

/// An upstream that floods a call with `ping`s cannot make Gatehouse open a
/// connection for each answer: they are answered one at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_flooding_pings_does_not_multiply_connections() {
    let pings = Pings::default();
    let upstream = serve_upstream(pings.clone()).await;
    let relay = Cuttable::start(upstream).await;
    let opened = Web::open(relay.addr).await;
    let (app, web) = (&opened.app, opened.post());
    let before = relay.connections();
    let answer = app.send(web.body(call(3, "pings", json!({})))).await;
    assert!(answer.body.contains("pinged"), "{}", answer.body);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let opened = relay.connections() - before;
    assert!(
        opened < 20,
        "{opened} connections opened for one call's pings"
    );
    // And they were answered (not dropped, which would open nothing either).
    let answered = pings.0.load(std::sync::atomic::Ordering::SeqCst);
    assert!(answered > 0, "no ping was answered");
}

/// A stdio server that never initializes and ignores SIGTERM (its child too): the
/// failed `initialize` keeps its place until the whole process group is killed, so
/// `max_sessions` bounds the processes alive, not only the sessions; then the place
/// is free again.
#[tokio::test]
async fn a_server_that_fails_to_start_holds_its_place_until_its_processes_are_gone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("gatehouse.toml");
    // Its child's command line, to find it by.
    let marker = format!("sleep {}", 100_000 + rand::random::<u32>() % 900_000);
    std::fs::write(
        &config,
        format!(
            "[[upstream]]\nname = \"stuck\"\ncommand = \"sh\"\nargs = [\"-c\", \"trap '' TERM; {marker} & while :; do sleep 1; done\"]\nmax_sessions = 1\nconnect_timeout = \"1s\"\n"
        ),
    )
    .expect("write");
    let app = TestApp::new(&[
        "--config",
        config.to_str().expect("utf-8"),
        "--sessions-per-minute",
        "1000",
    ]);
    let (_, tokens) = app
        .tokens_at("https://gate.example.com/mcp/stuck", "stuck:read")
        .await;
    let token = tokens["access_token"].as_str().expect("at").to_owned();
    let reason = |answer: &Answer| answer.rpc()["error"]["data"]["reason"].clone();
    let first = app.send(initialize("/mcp/stuck", &token, 1)).await;
    assert_eq!(reason(&first), "timeout", "{}", first.body);
    // Its processes are still being ended (3 s, SIGTERM, 3 s, SIGKILL): no place.
    let second = app.send(initialize("/mcp/stuck", &token, 2)).await;
    assert!(
        ["busy", "client_busy"].contains(&reason(&second).as_str().unwrap_or("")),
        "{}",
        second.body
    );
    // Then the place is free again, and what the server started is gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let next = app.send(initialize("/mcp/stuck", &token, 3)).await;
        if reason(&next) == "timeout" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", next.body);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let running = std::process::Command::new("pgrep")
        .args(["-f", &marker])
        .output()
        .expect("pgrep");
    let pids = String::from_utf8_lossy(&running.stdout);
    // The third server's own, at most (it is being ended now): one process group.
    let groups: std::collections::HashSet<String> = pids
        .lines()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let rest = &stat[stat.rfind(')')? + 1..];
            rest.split_whitespace().nth(2).map(str::to_owned)
        })
        .collect();
    assert!(
        groups.len() <= 1,
        "still running: {pids} in groups {groups:?}"
    );
}
