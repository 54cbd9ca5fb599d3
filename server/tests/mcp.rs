//! Router tests for `/mcp`: every status code the transport and the bearer guard
//! answer, the tools under their scopes, and the resources.

mod common;

use std::time::Duration;

use axum::{
    body::Body,
    http::{header, Request, StatusCode},
};
use common::*;
use gatehouse::{
    http::mcp::sessions::StoreSessions,
    oauth::{
        client::ClientId,
        records::{access_key, AccessToken},
        scope::ScopeSet,
        secret::{GrantToken, TokenKind},
    },
    resource::ResourceUri,
    store::{Group, Put},
};
use rmcp::transport::streamable_http_server::session::store::SessionStore;
use serde_json::{json, Value};

const V2025_06: &str = "2025-06-18";

fn call(id: u64, tool: &str, arguments: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": arguments}})
}

fn www_authenticate(answer: &Answer) -> String {
    answer
        .headers
        .get(header::WWW_AUTHENTICATE)
        .unwrap_or_else(|| panic!("no WWW-Authenticate ({}): {}", answer.status, answer.body))
        .to_str()
        .expect("ascii")
        .to_owned()
}

#[tokio::test]
async fn protected_resource_metadata_is_served_at_both_paths() {
    let app = TestApp::new(&[]);
    let with_path = app
        .get("/.well-known/oauth-protected-resource/mcp", None)
        .await;
    let root = app.get("/.well-known/oauth-protected-resource", None).await;
    assert_eq!(with_path.status, StatusCode::OK);
    assert_eq!(root.status, StatusCode::OK);
    let doc = with_path.json();
    assert_eq!(doc, root.json());
    assert_no_nulls(&doc);
    assert_eq!(doc["resource"], "https://gate.example.com/mcp");
    assert_eq!(
        doc["authorization_servers"],
        json!(["https://gate.example.com"])
    );
    assert_eq!(
        doc["scopes_supported"],
        json!(["read:articles", "write:articles"])
    );
    assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
}

#[tokio::test]
async fn without_a_token_the_answer_is_401_pointing_at_the_metadata() {
    let app = TestApp::new(&[]);
    let answer = app
        .mcp(
            None,
            None,
            None,
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        www_authenticate(&answer),
        "Bearer resource_metadata=\"https://gate.example.com/.well-known/oauth-protected-resource/mcp\", scope=\"read:articles\""
    );
    // A token in the query string is not a token, even a good one (RFC 6750 §2.3 is
    // not offered): the challenge is that of a request without one.
    let (_, tokens) = app.tokens_for("read:articles").await;
    let token = tokens["access_token"].as_str().expect("at");
    let path = format!("/mcp?access_token={token}");
    let post = McpPost {
        path: &path,
        ..McpPost::default()
    };
    let query = app
        .send(post.body(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})))
        .await;
    assert_eq!(query.status, StatusCode::UNAUTHORIZED, "{}", query.body);
    assert!(!www_authenticate(&query).contains("error="));
    // The same token in the header is one.
    let header = app
        .mcp(
            Some(token),
            None,
            None,
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
        )
        .await;
    assert_ne!(header.status, StatusCode::UNAUTHORIZED, "{}", header.body);
}

#[tokio::test]
async fn a_bad_token_is_401_with_invalid_token() {
    let app = TestApp::new(&[]);
    for token in ["nonsense", "gha.abc.def", "ghr.abc.def"] {
        let answer = app
            .mcp(
                Some(token),
                None,
                None,
                json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
            )
            .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{token}");
        let challenge = www_authenticate(&answer);
        assert!(
            challenge.starts_with("Bearer error=\"invalid_token\""),
            "{challenge}"
        );
        assert!(challenge.contains("resource_metadata=\"https://gate.example.com/.well-known/oauth-protected-resource/mcp\""));
        assert!(challenge.contains("scope=\"read:articles\""));
    }
}

/// Writes an access token straight into the store, for the cases the real flow
/// cannot produce (another resource, an expiry in the past).
async fn planted_token(app: &TestApp, resource: &str, expires_at: u64) -> String {
    let grant = Group::random();
    let (raw, token) = GrantToken::issue(TokenKind::Access, &grant);
    let record = serde_json::to_vec(&AccessToken {
        subject: "owner".into(),
        client_id: ClientId::parse("planted").expect("id"),
        scopes: ScopeSet::parse("read:articles write:articles").expect("scopes"),
        resource: ResourceUri::new(resource.into()),
        expires_at,
        server: None,
    })
    .expect("json");
    app.store
        .put(
            &access_key(&grant, &token.hash),
            &record,
            Put::ttl(Duration::from_secs(3600)).in_group(&grant),
        )
        .await
        .expect("put");
    raw
}

#[tokio::test]
async fn tokens_for_another_resource_expired_or_revoked_are_refused() {
    let app = TestApp::new(&[]);
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    let foreign = planted_token(
        &app,
        "https://other.example/mcp",
        app.clock.now_secs() + 3600,
    )
    .await;
    let expired = planted_token(
        &app,
        "https://gate.example.com/mcp",
        app.clock.now_secs() - 1,
    )
    .await;
    let control = planted_token(
        &app,
        "https://gate.example.com/mcp",
        app.clock.now_secs() + 3600,
    )
    .await;
    for token in [&foreign, &expired] {
        let answer = app.mcp(Some(token), None, None, list.clone()).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert!(www_authenticate(&answer).contains("invalid_token"));
    }
    let init = app
        .mcp(Some(&control), None, None, json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": V2025_06, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}))
        .await;
    assert_eq!(
        init.status,
        StatusCode::OK,
        "the planted control token works: {}",
        init.body
    );

    let (client_id, tokens) = app.tokens_for("read:articles").await;
    let access = tokens["access_token"].as_str().expect("at");
    assert!(!app.mcp_session(access, V2025_06).await.is_empty());
    let revoked = app
        .revoke(&client_id, tokens["refresh_token"].as_str().expect("rt"))
        .await;
    assert_eq!(revoked.status, StatusCode::OK);
    let answer = app.mcp(Some(access), None, None, list).await;
    assert_eq!(
        answer.status,
        StatusCode::UNAUTHORIZED,
        "revocation is immediate"
    );
}

#[tokio::test]
async fn a_foreign_origin_is_403_and_preflights_are_never_401() {
    let app = TestApp::new(&[]);
    let (_, tokens) = app.tokens_for("read:articles").await;
    let access = tokens["access_token"].as_str().expect("at");
    for token in [Some(access), None] {
        let post = McpPost {
            origin: Some("https://evil.example"),
            token,
            ..McpPost::default()
        };
        let answer = app
            .send(post.body(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})))
            .await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN);
    }
    let preflight = app
        .send(
            Request::options("/mcp")
                .header(header::ORIGIN, "http://localhost:6274")
                .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
                .header(
                    header::ACCESS_CONTROL_REQUEST_HEADERS,
                    CORS_REQUEST_HEADERS.join(","),
                )
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_cors_preflight(&preflight, "OPTIONS /mcp", "http://localhost:6274");
    // The Inspector's origin may call /mcp, and sees the headers it needs.
    let from_inspector = app
        .send(
            McpPost {
                origin: Some("http://localhost:6274"),
                ..McpPost::default()
            }
            .body(json!({})),
        )
        .await;
    assert_eq!(from_inspector.status, StatusCode::UNAUTHORIZED);
    assert_cors_exposed(&from_inspector, "POST /mcp", "http://localhost:6274");
}

#[tokio::test]
async fn sessions_protocol_versions_and_transport_errors() {
    let app = TestApp::new(&[]);
    let (_, tokens) = app.tokens_for("read:articles").await;
    let token = tokens["access_token"].as_str().expect("at");
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});

    for version in ["2025-03-26", V2025_06, "2025-11-25"] {
        let session = app.mcp_session(token, version).await;
        let listed = app
            .mcp(Some(token), Some(&session), Some(version), list.clone())
            .await;
        assert_eq!(listed.status, StatusCode::OK, "{version}: {}", listed.body);
        assert_eq!(
            listed.rpc()["result"]["tools"].as_array().map(Vec::len),
            Some(7),
            "{version}"
        );
    }

    let missing = app
        .mcp(Some(token), None, Some(V2025_06), list.clone())
        .await;
    assert_eq!(
        missing.status,
        StatusCode::BAD_REQUEST,
        "missing session: {}",
        missing.body
    );
    let unknown = app
        .mcp(
            Some(token),
            Some("no-such-session"),
            Some(V2025_06),
            list.clone(),
        )
        .await;
    assert_eq!(
        unknown.status,
        StatusCode::NOT_FOUND,
        "unknown session: {}",
        unknown.body
    );
    let session = app.mcp_session(token, V2025_06).await;
    let bad_version = app
        .mcp(
            Some(token),
            Some(&session),
            Some("1999-01-01"),
            list.clone(),
        )
        .await;
    assert_eq!(
        bad_version.status,
        StatusCode::BAD_REQUEST,
        "unsupported version: {}",
        bad_version.body
    );

    let batch = app
        .mcp(
            Some(token),
            Some(&session),
            Some(V2025_06),
            json!([list.clone(), list.clone()]),
        )
        .await;
    assert!(batch.status.is_client_error(), "batch: {}", batch.status);
    // serde reads a struct from an array too: a call written as one is a batch.
    let positional = app
        .mcp(
            Some(token),
            Some(&session),
            Some(V2025_06),
            json!([
                "2.0",
                9,
                "tools/call",
                [null, "list_articles", {}, null, null]
            ]),
        )
        .await;
    assert_eq!(
        positional.status,
        StatusCode::BAD_REQUEST,
        "{}",
        positional.body
    );
    assert!(
        positional.body.contains("batched"),
        "positional: {}",
        positional.body
    );
    let notification = app
        .mcp(Some(token), Some(&session), Some(V2025_06), json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 99}}))
        .await;
    assert_eq!(notification.status, StatusCode::ACCEPTED);
    assert!(notification.body.is_empty());

    let with = |accept, content_type| {
        McpPost {
            token: Some(token),
            session: Some(&session),
            version: Some(V2025_06),
            accept,
            content_type,
            ..McpPost::default()
        }
        .body(list.clone())
    };
    assert_eq!(
        app.send(with("text/html", "application/json")).await.status,
        StatusCode::NOT_ACCEPTABLE
    );
    assert_eq!(
        app.send(with("application/json, text/event-stream", "text/plain"))
            .await
            .status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    let redirect = app
        .send(Request::post("/mcp/").body(Body::empty()).expect("request"))
        .await;
    assert!(!redirect.status.is_redirection());
}

/// What one client can make the store hold is bounded by day too: at most
/// `--sessions-per-day` sessions opened and not ended; one ended with `DELETE` makes
/// room again. Its sessions keep working, and other clients are not affected.
#[tokio::test]
async fn sessions_opened_and_not_ended_are_limited_per_client_per_day() {
    let app = TestApp::new(&["--sessions-per-day", "2"]);
    let token = |tokens: &Value| tokens["access_token"].as_str().expect("at").to_owned();
    let (_, one) = app.tokens_for("read:articles").await;
    let (_, other) = app.tokens_for("read:articles").await;
    let (one, other) = (token(&one), token(&other));
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": V2025_06, "capabilities": {},
        "clientInfo": {"name": "router-test", "version": "1"}}});

    let first = app.mcp_session(&one, V2025_06).await;
    let second = app.mcp_session(&one, V2025_06).await;
    let refused = app.mcp(Some(&one), None, None, initialize.clone()).await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.body
    );
    assert!(refused.headers.get("mcp-session-id").is_none());
    let wait: u64 = refused.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(wait > 23 * 3600 && wait <= 24 * 3600, "{wait}");
    app.mcp_session(&other, V2025_06).await;
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let listed = app
        .mcp(Some(&one), Some(&second), Some(V2025_06), list)
        .await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);

    // One session ended, by several DELETEs at once: one place back, not several.
    let ends =
        futures::future::join_all((0..3).map(|_| app.end_session("/mcp", &one, &first, V2025_06)))
            .await;
    assert!(ends.iter().any(|ended| ended.status.is_success()));
    // Several `initialize`s at once for that one place: one session, not several.
    let opened = futures::future::join_all(
        (0..3).map(|_| app.mcp(Some(&one), None, None, initialize.clone())),
    )
    .await;
    let statuses: Vec<_> = opened.iter().map(|answer| answer.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
            .count(),
        2,
        "{statuses:?}"
    );
    let refused = app.mcp(Some(&one), None, None, initialize).await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.body
    );
}

/// Each session keeps its `initialize` in the store for a day, so a client opens a
/// bounded number per minute, each of a bounded size; sessions it has keep working,
/// and other clients are not affected.
#[tokio::test]
async fn new_sessions_are_limited_per_client_and_in_size() {
    let app = TestApp::new(&["--sessions-per-minute", "2"]);
    let (mut tokens, mut clients) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        let (client, issued) = app.tokens_for("read:articles").await;
        tokens.push(issued["access_token"].as_str().expect("at").to_owned());
        clients.push(client);
    }
    assert_ne!(clients[0], clients[1]);
    let (one, other) = (&tokens[0], &tokens[1]);
    let initialize = |padding: usize| {
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": V2025_06, "capabilities": {"experimental": {"pad": {"x": "p".repeat(padding)}}},
            "clientInfo": {"name": "router-test", "version": "1"}}})
    };

    let large = app.mcp(Some(one), None, None, initialize(5 * 1024)).await;
    assert_eq!(
        large.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        large.body
    );
    assert!(large.headers.get("mcp-session-id").is_none());
    // rmcp ignores members it does not know, even given twice, where the guard's
    // reading of the body fails: such a body is refused, never taken for less.
    let twice = serde_json::to_string(&initialize(9 * 1024))
        .expect("json")
        .replacen(r#""params":{"#, r#""params":{"uri":0,"uri":0,"#, 1);
    assert!(twice.contains(r#""uri":0,"uri":0"#), "{twice:.80}");
    let request = McpPost {
        token: Some(one),
        ..McpPost::default()
    };
    let hidden = app.send(request.with_body(Body::from(twice))).await;
    assert_eq!(hidden.status, StatusCode::BAD_REQUEST, "{}", hidden.body);
    // JSON, but not a message the guard can read: an invalid request (JSON-RPC 2.0
    // §5.1), answered by its id; not JSON at all is a parse error.
    assert_eq!(hidden.rpc()["error"]["code"], -32600, "{}", hidden.body);
    assert_eq!(hidden.rpc()["id"], 1, "{}", hidden.body);
    let garbage = app
        .send(request.with_body(Body::from("{\"jsonrpc\": \"2.0\", \"id\": 1,")))
        .await;
    assert_eq!(garbage.status, StatusCode::BAD_REQUEST, "{}", garbage.body);
    assert_eq!(garbage.rpc()["error"]["code"], -32700, "{}", garbage.body);
    assert_eq!(garbage.rpc()["id"], Value::Null, "{}", garbage.body);
    assert!(hidden.headers.get("mcp-session-id").is_none());

    let session = app.mcp_session(one, V2025_06).await;
    app.mcp_session(one, V2025_06).await;
    let refused = app.mcp(Some(one), None, None, initialize(0)).await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.body
    );
    assert_eq!(refused.rpc()["error"]["code"], -32600, "{}", refused.body);
    let wait: u64 = refused.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&wait), "{wait}");
    assert!(refused.headers.get("mcp-session-id").is_none());

    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let listed = app
        .mcp(Some(one), Some(&session), Some(V2025_06), list)
        .await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    app.mcp_session(other, V2025_06).await;
}

/// A session's binding, and rmcp's record of its `initialize`, are kept for a day;
/// a session still in use after half of that is kept for another day, so a client
/// working on for days is not told its session is unknown, up to a week: then it
/// ends like an idle one, and the client opens another.
#[tokio::test]
async fn a_session_in_use_outlives_a_day_up_to_a_week() {
    let app = TestApp::new(&["--access-token-ttl", "9d"]);
    let (_, tokens) = app.tokens_for("read:articles").await;
    let token = tokens["access_token"].as_str().expect("at");
    let session = app.mcp_session(token, V2025_06).await;
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let stored = || async {
        let store = StoreSessions(app.state.store.clone());
        SessionStore::load(&store, &session).await.expect("load")
    };

    // Used every 13 hours: renewed at 13, 26, … 143 hours (the last renewal that
    // ends within a week), still there at 156.
    for step in 1..=12 {
        app.clock.advance(Duration::from_secs(13 * 3600));
        let listed = app
            .mcp(Some(token), Some(&session), Some(V2025_06), list.clone())
            .await;
        assert_eq!(
            listed.status,
            StatusCode::OK,
            "{}h: {}",
            step * 13,
            listed.body
        );
        assert!(
            stored().await.is_some(),
            "{}h: rmcp's record expired",
            step * 13
        );
    }
    app.clock.advance(Duration::from_secs(13 * 3600));
    let ended = app
        .mcp(Some(token), Some(&session), Some(V2025_06), list)
        .await;
    assert_eq!(ended.status, StatusCode::NOT_FOUND, "{}", ended.body);
    assert!(stored().await.is_none());
}

/// rmcp answers a 2026-07-28 request for a method the server lacks with 404,
/// whatever session it names: that session lives on, so it keeps its binding and
/// its place among its client's sessions of the day, also when it is not in this
/// instance's memory but can be brought back from its record (after a restart,
/// an idle close, or on another instance).
#[tokio::test]
async fn a_404_for_a_session_that_lives_on_unbinds_nothing() {
    let mut app = TestApp::new(&["--sessions-per-day", "1"]);
    let (_, tokens) = app.tokens_for("read:articles").await;
    let token = tokens["access_token"].as_str().expect("at").to_owned();
    let session = app.mcp_session(&token, V2025_06).await;
    assert_live_after_404(&app, &token, &session).await;
    // Its place for the day is still taken.
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": V2025_06, "capabilities": {},
        "clientInfo": {"name": "router-test", "version": "1"}}});
    let another = app.mcp(Some(&token), None, None, initialize).await;
    assert_eq!(
        another.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        another.body
    );
    // Not in memory after a restart (whose day's counts start afresh), but its
    // record can bring it back: its binding stays.
    app = app.restart(&["--sessions-per-day", "1"]).await;
    assert_live_after_404(&app, &token, &session).await;
}

async fn assert_live_after_404(app: &TestApp, token: &str, session: &str) {
    let meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "router-test", "version": "1"}
    });
    let request = Request::post("/mcp")
        .header(header::HOST, "gate.example.com")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "prompts/list")
        .header("mcp-session-id", session)
        .body(Body::from(
            json!({"jsonrpc": "2.0", "id": 5, "method": "prompts/list", "params": {"_meta": meta}})
                .to_string(),
        ))
        .expect("request");
    let answer = app.send(request).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND, "{}", answer.body);
    assert!(app.is_bound(session).await);
}

#[tokio::test]
async fn the_2026_revision_works_without_a_session() {
    let app = TestApp::new(&[]);
    let (_, tokens) = app.tokens_for("read:articles").await;
    let token = tokens["access_token"].as_str().expect("at");
    let meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "router-test", "version": "1"}
    });
    // 2026-07-28 clients also name the method (and tool) in headers.
    let request = |body: Value, name: Option<&str>| {
        let mut request = Request::post("/mcp")
            .header(header::HOST, "gate.example.com")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", body["method"].as_str().expect("method"));
        if let Some(name) = name {
            request = request.header("mcp-name", name);
        }
        request.body(Body::from(body.to_string())).expect("request")
    };
    let listed = app
        .send(request(
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": meta}}),
            None,
        ))
        .await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    assert!(listed.headers.get("mcp-session-id").is_none());
    assert_eq!(
        listed.rpc()["result"]["tools"].as_array().map(Vec::len),
        Some(7)
    );
    let called = app
        .send(request(
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "list_articles", "arguments": {}, "_meta": meta}}),
            Some("list_articles"),
        ))
        .await;
    assert_eq!(called.status, StatusCode::OK, "{}", called.body);
    assert_eq!(
        called.rpc()["result"]["structuredContent"]["articles"],
        json!([])
    );
}

#[tokio::test]
async fn tools_list_shows_every_tool_with_schema_and_annotations() {
    let app = TestApp::new(&[]);
    let (_, tokens) = app.tokens_for("read:articles").await;
    let token = tokens["access_token"].as_str().expect("at");
    let session = app.mcp_session(token, V2025_06).await;
    let listed = app
        .mcp(
            Some(token),
            Some(&session),
            Some(V2025_06),
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
        )
        .await;
    let tools = listed.rpc()["result"]["tools"]
        .as_array()
        .expect("tools")
        .clone();
    let names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "list_articles",
            "get_article",
            "search_articles",
            "create_article",
            "update_article",
            "publish_article",
            "delete_article"
        ]
    );
    for tool in &tools {
        assert_eq!(tool["inputSchema"]["type"], "object", "{tool}");
        assert_eq!(tool["outputSchema"]["type"], "object", "{tool}");
        let read_only = tool["annotations"]["readOnlyHint"]
            .as_bool()
            .expect("readOnlyHint");
        assert!(tool["annotations"]["destructiveHint"].is_boolean());
        assert!(tool["annotations"]["idempotentHint"].is_boolean());
        assert_eq!(
            read_only,
            tool["name"].as_str().is_some_and(|n| n.starts_with("list")
                || n.starts_with("get")
                || n.starts_with("search"))
        );
    }
    let delete = tools
        .iter()
        .find(|t| t["name"] == "delete_article")
        .expect("delete");
    assert_eq!(delete["annotations"]["destructiveHint"], true);
}

#[tokio::test]
async fn write_tools_need_write_scope_and_answer_403_insufficient_scope() {
    let app = TestApp::new(&[]);
    let (_, tokens) = app.tokens_for("read:articles").await;
    let token = tokens["access_token"].as_str().expect("at");
    let session = app.mcp_session(token, V2025_06).await;
    let create = call(3, "create_article", json!({"title": "Nope", "body": "x"}));
    let answer = app
        .mcp(Some(token), Some(&session), Some(V2025_06), create)
        .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);
    assert_eq!(
        www_authenticate(&answer),
        "Bearer error=\"insufficient_scope\", scope=\"read:articles write:articles\", \
         resource_metadata=\"https://gate.example.com/.well-known/oauth-protected-resource/mcp\""
    );
    // The JSON-RPC error answers the call by its id (JSON-RPC 2.0 §5).
    assert_eq!(answer.rpc()["id"], 3, "{}", answer.body);
    // A member of another type beside the tool's name (which rmcp passes over)
    // does not hide the call from the scope check, wherever it would go after.
    let mut disguised = call(5, "create_article", json!({"title": "Nope", "body": "x"}));
    disguised["params"]["uri"] = json!(0);
    for session in [Some(session.as_str()), None] {
        let answer = app
            .mcp(Some(token), session, Some(V2025_06), disguised.clone())
            .await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);
    }
    // Reading still works with the same token and session.
    let listed = app
        .mcp(
            Some(token),
            Some(&session),
            Some(V2025_06),
            call(4, "list_articles", json!({})),
        )
        .await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(listed.rpc()["result"]["isError"], false);
}

/// A record that cannot be read is not "try again": the answer says what is wrong,
/// and that the log names it.
#[tokio::test]
async fn an_unreadable_article_is_named_as_such_not_as_an_outage() {
    let app = TestApp::new(&[]);
    app.store
        .put(
            &gatehouse::articles::Articles::key_of(
                &gatehouse::articles::Slug::parse("broken").expect("slug"),
            ),
            b"not json",
            Put::forever(),
        )
        .await
        .expect("put");
    let (_, tokens) = app.tokens_for("read:articles").await;
    let token = tokens["access_token"].as_str().expect("at");
    let session = app.mcp_session(token, V2025_06).await;
    let answer = app
        .mcp(
            Some(token),
            Some(&session),
            Some(V2025_06),
            call(2, "get_article", json!({"slug": "broken"})),
        )
        .await;
    let message = answer.rpc()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("cannot be read"), "{}", answer.body);
}

#[tokio::test]
async fn articles_are_created_read_searched_updated_published_and_deleted() {
    let app = TestApp::new(&[]);
    let (_, tokens) = app.tokens_for("read:articles write:articles").await;
    let token = tokens["access_token"].as_str().expect("at");
    let session = app.mcp_session(token, V2025_06).await;
    let run = |id: u64, tool: &'static str, args: Value| {
        let (app, session) = (&app, session.clone());
        async move {
            let answer = app
                .mcp(
                    Some(token),
                    Some(&session),
                    Some(V2025_06),
                    call(id, tool, args),
                )
                .await;
            assert_eq!(answer.status, StatusCode::OK, "{tool}: {}", answer.body);
            answer.rpc()["result"].clone()
        }
    };

    let created = run(
        10,
        "create_article",
        json!({"title": "Hello, World!", "body": "First post about gates."}),
    )
    .await;
    assert_eq!(created["isError"], false, "{created}");
    assert_eq!(created["structuredContent"]["slug"], "hello-world");
    assert_eq!(created["structuredContent"]["status"], "draft");
    assert!(
        created["content"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("hello-world")),
        "text content for older clients"
    );

    let got = run(11, "get_article", json!({"slug": "hello-world"})).await;
    assert_eq!(got["structuredContent"]["body"], "First post about gates.");
    let found = run(12, "search_articles", json!({"query": "GATES"})).await;
    assert_eq!(
        found["structuredContent"]["articles"][0]["slug"],
        "hello-world"
    );
    let updated = run(
        13,
        "update_article",
        json!({"slug": "hello-world", "title": "Hello again"}),
    )
    .await;
    assert_eq!(updated["structuredContent"]["title"], "Hello again");
    // With the revision it read, an update applies only to that version.
    assert_eq!(updated["structuredContent"]["revision"], 1);
    let stale = run(
        16,
        "update_article",
        json!({"slug": "hello-world", "body": "Overwrites?", "revision": 0}),
    )
    .await;
    assert_eq!(stale["isError"], true, "{stale}");
    assert!(stale["content"][0]["text"]
        .as_str()
        .is_some_and(|t| t.contains("changed since it was read")));
    let current = run(
        17,
        "update_article",
        json!({"slug": "hello-world", "body": "Then again.", "revision": 1}),
    )
    .await;
    assert_eq!(current["structuredContent"]["revision"], 2, "{current}");
    let published = run(14, "publish_article", json!({"slug": "hello-world"})).await;
    assert_eq!(published["structuredContent"]["status"], "published");
    let drafts = run(15, "list_articles", json!({"status": "draft"})).await;
    assert_eq!(drafts["structuredContent"]["articles"], json!([]));

    // Bad arguments are tool errors the model can read, not protocol failures.
    for (tool, args, says) in [
        ("get_article", json!({"slug": "Not A Slug"}), "slug"),
        ("get_article", json!({}), "missing field `slug`"),
        ("get_article", json!({"slug": "missing"}), "no article"),
        (
            "create_article",
            json!({"title": "Hello again", "body": "dup", "slug": "hello-world"}),
            "already exists",
        ),
        (
            "list_articles",
            json!({"status": "archived"}),
            "invalid arguments",
        ),
        ("update_article", json!({"slug": "hello-world"}), "title"),
    ] {
        let result = run(20, tool, args).await;
        assert_eq!(result["isError"], true, "{tool}: {result}");
        assert!(
            result["content"][0]["text"]
                .as_str()
                .is_some_and(|t| t.contains(says)),
            "{tool}: {result}"
        );
    }

    // Articles are resources too.
    let read = app
        .mcp(Some(token), Some(&session), Some(V2025_06), json!({"jsonrpc": "2.0", "id": 30, "method": "resources/read", "params": {"uri": "article://hello-world"}}))
        .await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    let contents = &read.rpc()["result"]["contents"][0];
    assert_eq!(contents["uri"], "article://hello-world");
    assert!(contents["text"]
        .as_str()
        .is_some_and(|t| t.starts_with("# Hello again")));
    let listed = app
        .mcp(
            Some(token),
            Some(&session),
            Some(V2025_06),
            json!({"jsonrpc": "2.0", "id": 31, "method": "resources/list"}),
        )
        .await;
    assert_eq!(
        listed.rpc()["result"]["resources"][0]["uri"],
        "article://hello-world"
    );

    let deleted = run(40, "delete_article", json!({"slug": "hello-world"})).await;
    assert_eq!(deleted["structuredContent"]["deleted"], "hello-world");
    let gone = run(41, "get_article", json!({"slug": "hello-world"})).await;
    assert_eq!(gone["isError"], true);
}

#[tokio::test]
async fn listing_pages_through_articles() {
    let app = TestApp::new(&[]);
    let (_, tokens) = app.tokens_for("read:articles write:articles").await;
    let token = tokens["access_token"].as_str().expect("at");
    let session = app.mcp_session(token, V2025_06).await;
    for i in 0..5 {
        let answer = app
            .mcp(
                Some(token),
                Some(&session),
                Some(V2025_06),
                call(
                    i,
                    "create_article",
                    json!({"title": format!("Post {i}"), "body": "b"}),
                ),
            )
            .await;
        assert_eq!(answer.rpc()["result"]["isError"], false);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0..3 {
        let mut args = json!({"limit": 2});
        if let Some(c) = &cursor {
            args["cursor"] = json!(c);
        }
        let result = app
            .mcp(
                Some(token),
                Some(&session),
                Some(V2025_06),
                call(100 + page, "list_articles", args),
            )
            .await
            .rpc()["result"]
            .clone();
        let articles = result["structuredContent"]["articles"]
            .as_array()
            .expect("articles")
            .clone();
        seen.extend(
            articles
                .iter()
                .filter_map(|a| a["slug"].as_str().map(str::to_owned)),
        );
        cursor = result["structuredContent"]["next_cursor"]
            .as_str()
            .map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    seen.sort();
    assert_eq!(seen, ["post-0", "post-1", "post-2", "post-3", "post-4"]);
    assert!(cursor.is_none());
}

#[tokio::test]
async fn articles_survive_a_restart() {
    let app = TestApp::new(&[]);
    let (client_id, tokens) = app.tokens_for("read:articles write:articles").await;
    let token = tokens["access_token"].as_str().expect("at").to_owned();
    let session = app.mcp_session(&token, V2025_06).await;
    let created = app
        .mcp(
            Some(&token),
            Some(&session),
            Some(V2025_06),
            call(
                1,
                "create_article",
                json!({"title": "Kept", "body": "across restarts"}),
            ),
        )
        .await;
    assert_eq!(created.rpc()["result"]["isError"], false);
    let app = app.restart(&[]).await;
    let session = app.mcp_session(&token, V2025_06).await;
    let got = app
        .mcp(
            Some(&token),
            Some(&session),
            Some(V2025_06),
            call(2, "get_article", json!({"slug": "kept"})),
        )
        .await;
    assert_eq!(
        got.rpc()["result"]["structuredContent"]["body"],
        "across restarts",
        "client {client_id}"
    );
}

#[tokio::test]
async fn the_guard_answers_503_when_the_store_is_unreachable() {
    let (app, faults) = TestApp::with_faults();
    faults.set(faults::Mode::Down);
    let answer = app
        .mcp(
            Some("gha.some.token"),
            None,
            None,
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.json()["error"]["code"], -32603);
}

/// A store failure after the token was read (listing the articles, here) is a
/// JSON-RPC error with a few fixed words; the store's own detail goes to the log
/// only, whichever read fails.
#[tokio::test]
async fn a_store_failure_behind_the_guard_tells_the_caller_no_details() {
    let (app, faults) = TestApp::with_faults();
    let (_, tokens) = app.tokens_for("read:articles").await;
    let token = tokens["access_token"].as_str().expect("at").to_owned();
    let session = app.mcp_session(&token, V2025_06).await;
    let mut failed_in_handler = false;
    for reads in 0..6 {
        faults.set(faults::Mode::ReadsFailAfter(reads));
        let answer = app
            .mcp(
                Some(&token),
                Some(&session),
                Some(V2025_06),
                json!({"jsonrpc": "2.0", "id": 2, "method": "resources/list"}),
            )
            .await;
        faults.set(faults::Mode::Pass);
        assert!(
            !answer.body.contains("injected"),
            "{reads} reads: {}",
            answer.body
        );
        failed_in_handler |= answer.status == StatusCode::OK && answer.body.contains("-32603");
    }
    assert!(failed_in_handler, "no read failed past the guard");
}

/// A call's article is read with its token only for a token that passed the guard
/// before: a made-up token of the right shape, which anyone can send, makes the
/// store hand out nothing but the token's (missing) record.
#[tokio::test]
async fn made_up_tokens_have_nothing_read_ahead() {
    let (app, faults) = TestApp::with_faults();
    let (client_id, tokens) = app.tokens_for("read:articles write:articles").await;
    let token = tokens["access_token"].as_str().expect("at").to_owned();
    let session = app.mcp_session(&token, V2025_06).await;
    let created = app
        .mcp(
            Some(&token),
            Some(&session),
            Some(V2025_06),
            call(
                2,
                "create_article",
                json!({"title": "Read ahead", "body": "b"}),
            ),
        )
        .await;
    assert_eq!(
        created.rpc()["result"]["isError"],
        false,
        "{}",
        created.body
    );
    let get = call(3, "get_article", json!({"slug": "read-ahead"}));
    faults.keys_read();
    let refused = app
        .mcp(
            Some("gha.made.up"),
            Some(&session),
            Some(V2025_06),
            get.clone(),
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.body);
    let read = faults.keys_read();
    assert!(
        !read.iter().any(|key| key.contains("read-ahead")),
        "read for a made-up token: {read:?}"
    );
    // The real token's calls still read it (with the token, once it has passed).
    for _ in 0..2 {
        let got = app
            .mcp(Some(&token), Some(&session), Some(V2025_06), get.clone())
            .await;
        assert_eq!(got.rpc()["result"]["isError"], false, "{}", got.body);
    }
    assert!(
        faults
            .keys_read()
            .iter()
            .any(|key| key.contains("read-ahead")),
        "the article was read"
    );
    // Once the token is revoked, the first call refused forgets it: the next reads
    // nothing ahead either.
    let revoked = app.revoke(&client_id, &token).await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
    let refused = app
        .mcp(Some(&token), Some(&session), Some(V2025_06), get.clone())
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.body);
    faults.keys_read();
    let refused = app
        .mcp(Some(&token), Some(&session), Some(V2025_06), get.clone())
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.body);
    let read = faults.keys_read();
    assert!(
        !read.iter().any(|key| key.contains("read-ahead")),
        "read for a revoked token: {read:?}"
    );
}

#[tokio::test]
async fn an_unknown_host_is_refused_and_allowed_hosts_can_be_added() {
    let app = TestApp::new(&["--allowed-host", "internal.example"]);
    let (_, tokens) = app.tokens_for("read:articles").await;
    let token = tokens["access_token"].as_str().expect("at");
    let with_host = |host| {
        McpPost {
            host,
            token: Some(token),
            ..McpPost::default()
        }
        .body(json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": V2025_06, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}))
    };
    // DNS rebinding protection: a Host that is not ours is refused.
    assert_eq!(
        app.send(with_host("evil.example")).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.send(with_host("internal.example")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.send(with_host("127.0.0.1:3000")).await.status,
        StatusCode::OK
    );

    // The Host is checked before anything else: a rebound name does not even learn
    // that a token is needed, and tool calls in a live session are refused too.
    let no_token = app
        .send(
            McpPost {
                host: "evil.example",
                ..McpPost::default()
            }
            .body(json!({})),
        )
        .await;
    assert_eq!(no_token.status, StatusCode::FORBIDDEN);
    assert!(no_token.headers.get(header::WWW_AUTHENTICATE).is_none());
    let session = app.mcp_session(token, V2025_06).await;
    let tool_call = app
        .send(
            McpPost {
                host: "evil.example",
                token: Some(token),
                session: Some(&session),
                version: Some(V2025_06),
                ..McpPost::default()
            }
            .body(call(2, "list_articles", json!({}))),
        )
        .await;
    assert_eq!(
        tool_call.status,
        StatusCode::FORBIDDEN,
        "{}",
        tool_call.body
    );
}

fn content_type(answer: &Answer) -> &str {
    answer
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn tool_calls_in_a_session_are_answered_with_plain_json() {
    let app = TestApp::new(&[]);
    let (client_id, tokens) = app.tokens_for("read:articles write:articles").await;
    let token = tokens["access_token"].as_str().expect("at");
    let mut slug_of_first = String::new();
    for version in ["2025-03-26", V2025_06, "2025-11-25"] {
        let session = app.mcp_session(token, version).await;
        let created = app
            .mcp(
                Some(token),
                Some(&session),
                Some(version),
                call(
                    7,
                    "create_article",
                    json!({"title": format!("Plain {version}"), "body": "JSON"}),
                ),
            )
            .await;
        assert_eq!(created.status, StatusCode::OK, "{}", created.body);
        assert_eq!(content_type(&created), "application/json", "{version}");
        let slug = created.json()["result"]["structuredContent"]["slug"]
            .as_str()
            .expect("slug")
            .to_owned();
        if slug_of_first.is_empty() {
            slug_of_first = slug.clone();
        }
        let got = app
            .mcp(
                Some(token),
                Some(&session),
                Some(version),
                json!({"jsonrpc": "2.0", "id": "read-1", "method": "tools/call",
                       "params": {"name": "get_article", "arguments": {"slug": slug}}}),
            )
            .await;
        let got = got.json();
        assert_eq!(got["jsonrpc"], "2.0");
        assert_eq!(got["id"], "read-1", "the request id is echoed as it came");
        assert_eq!(got["result"]["structuredContent"]["body"], "JSON");

        // Other methods still go through rmcp's session stream.
        let listed = app
            .mcp(
                Some(token),
                Some(&session),
                Some(version),
                json!({"jsonrpc": "2.0", "id": 8, "method": "tools/list"}),
            )
            .await;
        assert!(content_type(&listed).starts_with("text/event-stream"));
    }

    let session = app.mcp_session(token, V2025_06).await;
    let in_session = |body: Value| app.mcp(Some(token), Some(&session), Some(V2025_06), body);
    // Tool errors and protocol errors keep their JSON-RPC shapes.
    let missing = in_session(call(9, "get_article", json!({"slug": "nope"}))).await;
    assert_eq!(
        missing.json()["result"]["isError"],
        true,
        "{}",
        missing.body
    );
    let invalid = in_session(call(10, "get_article", json!({"slug": "Not A Slug!"}))).await;
    assert_eq!(
        invalid.json()["result"]["isError"],
        true,
        "{}",
        invalid.body
    );
    let unknown = in_session(call(11, "no_such_tool", json!({}))).await;
    assert_eq!(unknown.json()["error"]["code"], -32602, "{}", unknown.body);
    assert_eq!(unknown.json()["id"], 11);

    // Unknown or ended sessions, and unsupported versions, are answered as before.
    let stranger = app
        .mcp(
            Some(token),
            Some("no-such-session"),
            Some(V2025_06),
            call(12, "get_article", json!({"slug": "x"})),
        )
        .await;
    assert_eq!(stranger.status, StatusCode::NOT_FOUND, "{}", stranger.body);
    let bad_version = app
        .mcp(
            Some(token),
            Some(&session),
            Some("1999-01-01"),
            call(13, "get_article", json!({"slug": "x"})),
        )
        .await;
    assert_eq!(bad_version.status, StatusCode::BAD_REQUEST);
    let with = |accept, content_type| {
        McpPost {
            token: Some(token),
            session: Some(&session),
            version: Some(V2025_06),
            accept,
            content_type,
            ..McpPost::default()
        }
        .body(call(14, "get_article", json!({"slug": "x"})))
    };
    assert_eq!(
        app.send(with("application/json", "application/json"))
            .await
            .status,
        StatusCode::NOT_ACCEPTABLE
    );
    assert_eq!(
        app.send(with("application/json, text/event-stream", "text/plain"))
            .await
            .status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    // A body that is not JSON either: still the media type's 415, and a JSON body
    // that cannot be read is 400.
    let garbage = |content_type| {
        McpPost {
            token: Some(token),
            session: Some(&session),
            version: Some(V2025_06),
            content_type,
            ..McpPost::default()
        }
        .with_body(Body::from("hello"))
    };
    assert_eq!(
        app.send(garbage("text/plain")).await.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    assert_eq!(
        app.send(garbage("application/json")).await.status,
        StatusCode::BAD_REQUEST
    );
    let deleted = app.end_session("/mcp", token, &session, V2025_06).await;
    assert!(deleted.status.is_success(), "{}", deleted.status);
    let after = in_session(call(15, "get_article", json!({"slug": "x"}))).await;
    assert_eq!(after.status, StatusCode::NOT_FOUND, "{}", after.body);

    // The article read together with the token is not shown to a token without the
    // scope: the answer is the step-up challenge, without the article.
    let (_, writer) = app.tokens_for("write:articles").await;
    let writer = writer["access_token"].as_str().expect("at");
    let writer_session = app.mcp_session(writer, V2025_06).await;
    let refused = app
        .mcp(
            Some(writer),
            Some(&writer_session),
            Some(V2025_06),
            call(17, "get_article", json!({"slug": slug_of_first})),
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    assert!(!refused.body.contains("JSON"), "{}", refused.body);

    // Revocation is immediate on this path too.
    let session = app.mcp_session(token, V2025_06).await;
    app.revoke(&client_id, token).await;
    let revoked = app
        .mcp(
            Some(token),
            Some(&session),
            Some(V2025_06),
            call(16, "get_article", json!({"slug": "x"})),
        )
        .await;
    assert_eq!(revoked.status, StatusCode::UNAUTHORIZED);
}

/// A body sent as JSON that rmcp cannot read as a message (an `id` it does not
/// take, no `jsonrpc`, nesting past serde's 128) is JSON-RPC's 400 (an invalid
/// request: it is JSON), as the guard answers what it cannot read itself: rmcp's
/// own answer is a plain-text 415, which reads as a wrong Content-Type.
#[tokio::test]
async fn a_json_body_that_is_no_message_is_400_not_415() {
    let app = TestApp::new(&[]);
    let (_, tokens) = app.tokens_for("read:articles").await;
    let token = tokens["access_token"].as_str().expect("at");
    let session = app.mcp_session(token, V2025_06).await;
    let post = McpPost {
        token: Some(token),
        session: Some(&session),
        version: Some(V2025_06),
        ..McpPost::default()
    };
    let deep = format!(
        r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"list_articles","arguments":{{"a":{}1{}}}}}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    for (body, code) in [
        (
            r#"{"jsonrpc":"2.0","id":1.5,"method":"tools/list"}"#.to_owned(),
            -32600,
        ),
        (r#"{"id":2,"method":"tools/list"}"#.to_owned(), -32600),
        ("{}".to_owned(), -32600),
        (deep, -32600),
    ] {
        let answer = app.send(post.with_body(Body::from(body.clone()))).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{body:.60}: {}",
            answer.body
        );
        assert_eq!(
            answer.rpc()["error"]["code"],
            code,
            "{body:.60}: {}",
            answer.body
        );
    }
    // The session still works.
    let listed = app
        .send(post.body(json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"})))
        .await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
}
