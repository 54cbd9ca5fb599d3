//! `/mcp` answers a request down one of two paths: the direct path, which answers a
//! well-formed `tools/call` in a live session itself with plain JSON
//! (`http/mcp/articles.rs`), and rmcp's Streamable HTTP transport, which answers
//! everything else. Every answer, refusal or not, must not depend on the path: each
//! case here is sent twice, once shaped for the direct path and once with the one
//! difference that makes the direct path decline, and both answers must agree.

mod common;

use axum::{
    body::Body,
    http::{header, HeaderMap, Request, StatusCode},
};
use common::{faults::Mode, *};
use gatehouse::http::{mcp::guard::VERIFY_TIMEOUT, MAX_BODY_BYTES};
use serde_json::{json, Value};
use tower::ServiceExt;

const VERSION: &str = "2025-06-18";
const METADATA: &str = "https://gate.example.com/.well-known/oauth-protected-resource/mcp";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Direct,
    Rmcp,
}

const PATHS: [Path; 2] = [Path::Direct, Path::Rmcp];

/// The JSON-RPC request of most cases: a read tool, so a read token may call it.
fn list_call() -> Value {
    json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
           "params": {"name": "list_articles", "arguments": {}}})
}

/// One request, as a client in a live session sends it; [`Probe::send`] shapes it for
/// either path.
#[derive(Clone)]
struct Probe<'a> {
    post: McpPost<'a>,
    body: Vec<u8>,
    /// Say how long the body is (`Content-Length`), or stream it without saying.
    announce_length: bool,
}

impl<'a> Probe<'a> {
    fn new(token: &'a str, session: &'a str) -> Self {
        Probe {
            post: McpPost {
                token: Some(token),
                session: Some(session),
                version: Some(VERSION),
                ..McpPost::default()
            },
            body: list_call().to_string().into_bytes(),
            announce_length: true,
        }
    }

    /// The id of the request in the body (`null` without one).
    fn id(&self) -> Value {
        serde_json::from_slice::<Value>(&self.body).map_or(Value::Null, |v| v["id"].clone())
    }

    fn body(self, body: Value) -> Self {
        Probe {
            body: body.to_string().into_bytes(),
            ..self
        }
    }

    fn post(self, post: impl FnOnce(McpPost<'a>) -> McpPost<'a>) -> Self {
        Probe {
            post: post(self.post),
            ..self
        }
    }

    /// The request for `path`. For rmcp's path the first `Accept` entry gets a weight
    /// (`;q=1`): rmcp reads weights, the direct path leaves any weighted `Accept` to
    /// rmcp (`DirectCall::parse`), and nothing else changes.
    async fn send(&self, app: &TestApp, path: Path) -> Answer {
        let weighted = match self.post.accept.split_once(',') {
            Some((first, rest)) => format!("{first};q=1,{rest}"),
            None => format!("{};q=1", self.post.accept),
        };
        let post = McpPost {
            accept: match path {
                Path::Direct => self.post.accept,
                Path::Rmcp => &weighted,
            },
            ..self.post
        };
        let request = if self.announce_length {
            let mut request = post.with_body(Body::from(self.body.clone()));
            request
                .headers_mut()
                .insert(header::CONTENT_LENGTH, self.body.len().into());
            request
        } else {
            post.with_body(streamed(self.body.clone(), 4))
        };
        app.send(request).await
    }
}

fn content_type(answer: &Answer) -> &str {
    answer
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn www_authenticate(answer: &Answer) -> Option<&str> {
    answer
        .headers
        .get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().expect("ascii"))
}

/// What a case expects of both answers, beyond the status.
enum Expect {
    /// The tool's result: plain JSON from the direct path, SSE from rmcp's.
    Result,
    /// A JSON-RPC error with this code, and this challenge (if any); its `id` is the
    /// request's when the guard read the body before refusing (a step-up), else
    /// `null`.
    RpcError {
        code: i64,
        challenge: Option<&'static str>,
    },
    /// rmcp's own plain answer (404, 406, 415).
    Plain,
}

/// Sends `probe` down both paths and checks that they agree and match `expect`.
async fn both_paths(
    app: &TestApp,
    what: &str,
    probe: &Probe<'_>,
    status: StatusCode,
    expect: Expect,
) {
    let direct = probe.send(app, Path::Direct).await;
    let rmcp = probe.send(app, Path::Rmcp).await;
    for (path, answer) in [(Path::Direct, &direct), (Path::Rmcp, &rmcp)] {
        assert_eq!(answer.status, status, "{what}, {path:?}: {}", answer.body);
    }
    match expect {
        Expect::Result => {
            assert_eq!(
                content_type(&direct),
                "application/json",
                "{what}: the direct path answered"
            );
            assert!(
                content_type(&rmcp).starts_with("text/event-stream"),
                "{what}: rmcp answered: {}",
                content_type(&rmcp)
            );
            assert_eq!(direct.rpc(), rmcp.rpc(), "{what}");
            assert_eq!(direct.rpc()["result"]["isError"], false, "{what}");
        }
        Expect::RpcError { code, challenge } => {
            for (path, answer) in [(Path::Direct, &direct), (Path::Rmcp, &rmcp)] {
                assert_eq!(content_type(answer), "application/json", "{what}, {path:?}");
                let error = answer.json();
                assert_eq!(error["jsonrpc"], "2.0", "{what}, {path:?}");
                assert_eq!(error["error"]["code"], code, "{what}, {path:?}");
                assert!(error["error"]["message"].is_string(), "{what}, {path:?}");
                let step_up =
                    challenge.is_some_and(|c| c.starts_with("Bearer error=\"insufficient_scope\""));
                let id = if step_up { probe.id() } else { Value::Null };
                assert_eq!(error["id"], id, "{what}, {path:?}");
            }
            assert_eq!(direct.body, rmcp.body, "{what}");
            match challenge {
                Some(prefix) => {
                    let (d, r) = (www_authenticate(&direct), www_authenticate(&rmcp));
                    assert_eq!(d, r, "{what}: the same challenge");
                    let challenge = d.unwrap_or_else(|| panic!("{what}: no WWW-Authenticate"));
                    assert!(challenge.starts_with(prefix), "{what}: {challenge}");
                    assert!(
                        challenge.contains(&format!("resource_metadata=\"{METADATA}\"")),
                        "{what}: {challenge}"
                    );
                }
                None => {
                    assert_eq!(www_authenticate(&direct), None, "{what}");
                    assert_eq!(www_authenticate(&rmcp), None, "{what}");
                }
            }
        }
        Expect::Plain => {
            assert_eq!(content_type(&direct), content_type(&rmcp), "{what}");
            assert_eq!(direct.body, rmcp.body, "{what}");
        }
    }
}

/// A read-only token and a live session on an app whose store can fail on command.
async fn live_session() -> (TestApp, faults::Faults, String, String) {
    let (app, faults) = TestApp::with_faults();
    let (_, tokens) = app.tokens_for("read:articles").await;
    let token = tokens["access_token"].as_str().expect("at").to_owned();
    let session = app.mcp_session(&token, VERSION).await;
    (app, faults, token, session)
}

#[tokio::test]
async fn every_answer_is_the_same_on_the_direct_path_and_on_rmcps() {
    let (app, faults, token, session) = live_session().await;
    let probe = Probe::new(&token, &session);
    let over_limit = {
        let mut call = list_call();
        call["params"]["arguments"]["padding"] = json!("x".repeat(MAX_BODY_BYTES));
        call
    };
    let unauthorized = Expect::RpcError {
        code: -32001,
        challenge: Some("Bearer resource_metadata="),
    };
    let invalid_token = || Expect::RpcError {
        code: -32001,
        challenge: Some("Bearer error=\"invalid_token\""),
    };
    let refused = || Expect::RpcError {
        code: -32600,
        challenge: None,
    };
    let cases = [
        ("a tool call", probe.clone(), StatusCode::OK, Expect::Result),
        (
            "no token",
            probe.clone().post(|p| McpPost { token: None, ..p }),
            StatusCode::UNAUTHORIZED,
            unauthorized,
        ),
        (
            "an invalid token",
            probe.clone().post(|p| McpPost {
                token: Some("gha.abc.def"),
                ..p
            }),
            StatusCode::UNAUTHORIZED,
            invalid_token(),
        ),
        (
            "a Host that is not ours",
            probe.clone().post(|p| McpPost {
                host: "evil.example",
                ..p
            }),
            StatusCode::FORBIDDEN,
            refused(),
        ),
        (
            "a malformed Host",
            probe.clone().post(|p| McpPost { host: "a b", ..p }),
            StatusCode::BAD_REQUEST,
            refused(),
        ),
        // Loopback origins are local tools (the MCP Inspector), on any address of
        // 127.0.0.0/8 and any port.
        (
            "a loopback Origin",
            probe.clone().post(|p| McpPost {
                origin: Some("http://127.0.0.2:1"),
                ..p
            }),
            StatusCode::OK,
            Expect::Result,
        ),
        (
            "a foreign Origin",
            probe.clone().post(|p| McpPost {
                origin: Some("https://evil.example"),
                ..p
            }),
            StatusCode::FORBIDDEN,
            refused(),
        ),
        (
            "a write tool with a read token",
            probe
                .clone()
                .body(json!({"jsonrpc": "2.0", "id": 8, "method": "tools/call",
                "params": {"name": "create_article", "arguments": {"title": "t", "body": "b"}}})),
            StatusCode::FORBIDDEN,
            Expect::RpcError {
                code: -32001,
                challenge: Some(
                    "Bearer error=\"insufficient_scope\", scope=\"read:articles write:articles\"",
                ),
            },
        ),
        (
            "a batch",
            probe.clone().body(json!([list_call(), list_call()])),
            StatusCode::BAD_REQUEST,
            refused(),
        ),
        (
            "an unknown session",
            probe.clone().post(|p| McpPost {
                session: Some("no-such-session"),
                ..p
            }),
            StatusCode::NOT_FOUND,
            Expect::Plain,
        ),
        (
            "an Accept without SSE",
            probe.clone().post(|p| McpPost {
                accept: "application/json",
                ..p
            }),
            StatusCode::NOT_ACCEPTABLE,
            Expect::Plain,
        ),
        (
            "a body over the limit, announced",
            probe.clone().body(over_limit.clone()),
            StatusCode::PAYLOAD_TOO_LARGE,
            refused(),
        ),
        (
            "a body over the limit, streamed",
            Probe {
                announce_length: false,
                ..probe.clone().body(over_limit)
            },
            StatusCode::PAYLOAD_TOO_LARGE,
            refused(),
        ),
        (
            "a body that is not JSON",
            probe.clone().post(|p| McpPost {
                content_type: "text/plain",
                ..p
            }),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Expect::Plain,
        ),
    ];
    for (what, probe, status, expect) in cases {
        both_paths(&app, what, &probe, status, expect).await;
    }

    faults.set(Mode::Down);
    both_paths(
        &app,
        "the store is down",
        &probe,
        StatusCode::SERVICE_UNAVAILABLE,
        Expect::RpcError {
            code: -32603,
            challenge: None,
        },
    )
    .await;
}

/// Paused time: the guard's deadline passes without waiting for it (paused time
/// needs the current-thread runtime, the default of `#[tokio::test]`).
#[tokio::test(start_paused = true)]
async fn a_hanging_store_is_503_after_the_deadline_on_both_paths() {
    let (app, faults, token, session) = live_session().await;
    let probe = Probe::new(&token, &session);
    faults.set(Mode::Hang);
    for path in PATHS {
        let started = tokio::time::Instant::now();
        let answer = probe.send(&app, path).await;
        assert_eq!(
            answer.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{path:?}: {}",
            answer.body
        );
        assert_eq!(answer.json()["error"]["code"], -32603, "{path:?}");
        let waited = started.elapsed();
        assert!(
            waited >= VERIFY_TIMEOUT && waited < VERIFY_TIMEOUT * 2,
            "{path:?}: {waited:?}"
        );
    }
}

/// Only the head of an answer: an SSE stream stays open, so its body is never read.
async fn head(app: &TestApp, request: Request<Body>) -> (StatusCode, HeaderMap) {
    let response = app.router.clone().oneshot(request).await.expect("response");
    (response.status(), response.headers().clone())
}

fn sse_get(token: Option<&str>, session: &str) -> Request<Body> {
    let mut request = Request::get("/mcp")
        .header(header::HOST, "gate.example.com")
        .header(header::ACCEPT, "text/event-stream")
        .header("mcp-session-id", session)
        .header("mcp-protocol-version", VERSION);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    request.body(Body::empty()).expect("request")
}

#[tokio::test]
async fn get_opens_the_session_stream_and_delete_ends_the_session() {
    let (app, _, token, session) = live_session().await;
    let (status, headers) = head(&app, sse_get(Some(&token), &session)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .expect("ascii")
            .starts_with("text/event-stream"),
        "{headers:?}"
    );
    let (status, headers) = head(&app, sse_get(None, &session)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers[header::WWW_AUTHENTICATE]
        .to_str()
        .expect("ascii")
        .contains(METADATA));

    // Both paths serve the session until it is deleted...
    let probe = Probe::new(&token, &session);
    both_paths(
        &app,
        "before DELETE",
        &probe,
        StatusCode::OK,
        Expect::Result,
    )
    .await;
    let deleted = app.end_session("/mcp", &token, &session, VERSION).await;
    assert_eq!(deleted.status, StatusCode::ACCEPTED, "{}", deleted.body);
    // ...and neither, nor the stream, knows it afterwards.
    both_paths(
        &app,
        "after DELETE",
        &probe,
        StatusCode::NOT_FOUND,
        Expect::Plain,
    )
    .await;
    let (status, _) = head(&app, sse_get(Some(&token), &session)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
