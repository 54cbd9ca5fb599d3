//! Browser-based clients, such as the MCP Inspector at http://localhost:6274, call
//! discovery, registration, token and /mcp from another origin: every preflight is
//! answered (never 401) and every answer carries the CORS headers they need.

mod common;

use axum::{
    body::Body,
    http::{header, Method, Request, StatusCode},
};
use common::*;
use serde_json::json;

const INSPECTOR: &str = "http://localhost:6274";

fn preflight(path: &str, method: &str) -> Request<Body> {
    Request::options(path)
        .header(header::HOST, "gate.example.com")
        .header(header::ORIGIN, INSPECTOR)
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, method)
        .header(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            "authorization, content-type, accept, mcp-session-id, mcp-protocol-version, last-event-id",
        )
        .body(Body::empty())
        .expect("request")
}

#[tokio::test]
async fn the_inspector_origin_gets_cors_on_every_endpoint_it_calls() {
    let app = TestApp::new(&[]);
    for (path, method) in [
        ("/.well-known/oauth-protected-resource/mcp", "GET"),
        ("/.well-known/oauth-protected-resource", "GET"),
        ("/.well-known/oauth-authorization-server", "GET"),
        ("/.well-known/openid-configuration", "GET"),
        ("/oauth/register", "POST"),
        ("/oauth/token", "POST"),
        ("/oauth/revoke", "POST"),
        ("/mcp", "POST"),
        ("/mcp", "GET"),
        ("/mcp", "DELETE"),
    ] {
        let answer = app.send(preflight(path, method)).await;
        // /mcp answers the origins its guard allows, by name; the rest any origin.
        let origin = if path == "/mcp" { INSPECTOR } else { "*" };
        assert_cors_preflight(&answer, &format!("{method} {path}"), origin);
    }

    // The answers themselves carry the origin and expose what clients read.
    let with_origin =
        |request: axum::http::request::Builder| request.header(header::ORIGIN, INSPECTOR);
    let discovery = app
        .send(
            with_origin(Request::get("/.well-known/oauth-authorization-server"))
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    let registration = app
        .send(
            with_origin(Request::post("/oauth/register"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(json!({"redirect_uris": ["http://localhost:6274/oauth/callback"], "token_endpoint_auth_method": "none"}).to_string()))
                .expect("request"),
        )
        .await;
    assert_eq!(registration.status, StatusCode::CREATED);
    let token = app
        .send(
            with_origin(Request::builder().method(Method::POST).uri("/oauth/token"))
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(
                    "grant_type=refresh_token&refresh_token=ghr.a.b&client_id=nobody",
                ))
                .expect("request"),
        )
        .await;
    let mcp = app
        .send(
            McpPost {
                origin: Some(INSPECTOR),
                ..McpPost::default()
            }
            .body(json!({})),
        )
        .await;
    assert_eq!(mcp.status, StatusCode::UNAUTHORIZED);
    for (answer, what) in [
        (&discovery, "discovery"),
        (&registration, "registration"),
        (&token, "token"),
        (&mcp, "mcp"),
    ] {
        let origin = if what == "mcp" { INSPECTOR } else { "*" };
        assert_cors_exposed(answer, what, origin);
    }
}

/// 2026-07-28 (SEP-2243) clients send a tool's annotated arguments as
/// `Mcp-Param-<name>` headers: a page the guard allows may send them to `/mcp`, and
/// discovery, open to every origin, keeps to its list.
#[tokio::test]
async fn an_allowed_origin_may_send_mcp_param_headers_to_mcp() {
    let app = TestApp::new(&[]);
    let ask = |path: &str| {
        Request::options(path)
            .header(header::HOST, "gate.example.com")
            .header(header::ORIGIN, INSPECTOR)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                "authorization, content-type, mcp-method, mcp-name, mcp-param-region",
            )
            .body(Body::empty())
            .expect("request")
    };
    let mcp = app.send(ask("/mcp")).await;
    assert_eq!(mcp.headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], INSPECTOR);
    let allowed = header_list(&mcp, header::ACCESS_CONTROL_ALLOW_HEADERS);
    for needed in [
        "authorization",
        "content-type",
        "mcp-method",
        "mcp-name",
        "mcp-param-region",
    ] {
        assert!(
            allowed.iter().any(|h| h == needed),
            "{allowed:?} lacks {needed}"
        );
    }
    let discovery = app.send(ask("/oauth/token")).await;
    let allowed = header_list(&discovery, header::ACCESS_CONTROL_ALLOW_HEADERS);
    assert!(allowed.iter().any(|h| h == "authorization"), "{allowed:?}");
    assert!(
        !allowed.iter().any(|h| h == "mcp-param-region"),
        "{allowed:?}"
    );
}

#[tokio::test]
async fn mcp_gives_no_cors_grant_to_an_origin_it_refuses() {
    let app = TestApp::new(&[]);
    let request = Request::builder()
        .method(Method::OPTIONS)
        .uri("/mcp")
        .header(header::ORIGIN, "https://evil.example")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "authorization")
        .body(Body::empty())
        .expect("request");
    let answer = app.send(request).await;
    assert!(
        answer
            .headers
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none(),
        "{:?}",
        answer.headers
    );
}

/// A POST without `Origin` (every non-browser client) is served past the router
/// (`http::mcp::front`): its answer carries the same CORS headers as one that went
/// through the router's CORS layer, and is counted by route as before.
#[tokio::test]
async fn mcp_answers_carry_the_same_cors_headers_with_or_without_origin() {
    let app = TestApp::new(&[]);
    let (_, tokens) = app.tokens_for("read:articles").await;
    let token = tokens["access_token"].as_str().expect("at");
    let initialize = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "t", "version": "1"}},
    });
    let (with, without) = (
        McpPost {
            origin: Some(INSPECTOR),
            token: Some(token),
            ..McpPost::default()
        },
        McpPost {
            token: Some(token),
            ..McpPost::default()
        },
    );
    let browser = app.send(with.body(initialize.clone())).await;
    let client = app.send(without.body(initialize)).await;
    assert_eq!(browser.status, StatusCode::OK, "{}", browser.body);
    assert_eq!(client.status, StatusCode::OK, "{}", client.body);
    for name in [header::VARY, header::ACCESS_CONTROL_EXPOSE_HEADERS] {
        let values = |answer: &Answer| -> Vec<String> {
            answer
                .headers
                .get_all(&name)
                .iter()
                .map(|v| v.to_str().expect("text").to_owned())
                .collect()
        };
        assert!(!values(&client).is_empty(), "{name}: {:?}", client.headers);
        assert_eq!(values(&browser), values(&client), "{name}");
    }
    assert!(client
        .headers
        .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .is_none());
}
