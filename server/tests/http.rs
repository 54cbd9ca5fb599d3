//! Router tests: the real router, driven with `oneshot`, no socket.

mod common;

use common::{assert_error_page, assert_oauth_error, faults::Mode, streamed, TestApp};

use axum::{
    body::Body,
    http::{header, Method, Request, StatusCode},
};
use gatehouse::http::MAX_BODY_BYTES;
use http_body_util::BodyExt;

fn app() -> TestApp {
    TestApp::new(&[])
}

async fn send(
    app: &TestApp,
    request: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, String) {
    let answer = app.send(request).await;
    (answer.status, answer.headers, answer.body)
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).expect("request")
}

#[tokio::test]
async fn home_page_names_the_server_and_shows_the_mcp_url() {
    let app = app();
    let (status, headers, body) = send(&app, get("/")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/html"));
    assert!(body.contains("Gatehouse"), "{body}");
    assert!(body.contains("OAuth 2.1 authorization server"), "{body}");
    // The URL comes from --public-url, never from the request's Host header.
    assert!(body.contains("https://gate.example.com/mcp"), "{body}");
}

#[tokio::test]
async fn the_public_url_is_not_taken_from_the_host_header() {
    let app = app();
    // Under a Host of ours (a proxy on this machine that does not pass Host on).
    let request = Request::get("/")
        .header("host", "127.0.0.1:3000")
        .header("x-forwarded-host", "evil.example.net")
        .body(Body::empty())
        .expect("request");
    let (status, _, body) = send(&app, request).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("https://gate.example.com/mcp"));
    assert!(!body.contains("evil.example.net"));
    assert!(!body.contains("127.0.0.1"));
    // Under another, the page is not served at all (DNS rebinding).
    let request = Request::get("/")
        .header("host", "evil.example.net")
        .body(Body::empty())
        .expect("request");
    let (status, _, body) = send(&app, request).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(!body.contains("evil.example.net"));
}

#[tokio::test]
async fn unknown_pages_get_the_styled_404_page() {
    let app = app();
    let (status, _, body) = send(&app, get("/no/such/page")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("Page not found"), "{body}");
    assert!(body.contains("error-card"), "{body}");
}

#[tokio::test]
async fn healthz_reports_the_store() {
    let app = app();
    let (status, headers, body) = send(&app, get("/healthz")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    let json: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(json["status"], "ok");
    assert_eq!(json["store"]["backend"], "embedded");
    assert_eq!(json["store"]["status"], "up");
}

#[tokio::test]
async fn healthz_is_503_when_the_store_is_unreachable() {
    let (app, faults) = TestApp::with_faults();
    faults.set(Mode::Down);
    let (status, _, body) = send(&app, get("/healthz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let json: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(json["status"], "unavailable");
    assert_eq!(json["store"]["status"], "down");
    // The internal cause goes to the log, not to the client.
    assert!(!body.contains("injected"), "{body}");
}

/// Health checks that come together share one look at the store (anyone may ask, as
/// often as they like): here the store answers its first look only, and all of them
/// are told it is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_at_once_share_one_look_at_the_store() {
    let (app, faults) = TestApp::with_faults();
    faults.set(Mode::ReadsFailAfter(1));
    let checks: Vec<_> = (0..10)
        .map(|_| {
            let router = app.router.clone();
            tokio::spawn(async move {
                use tower::ServiceExt;
                router
                    .oneshot(get("/healthz"))
                    .await
                    .expect("answer")
                    .status()
            })
        })
        .collect();
    for check in checks {
        assert_eq!(check.await.expect("join"), StatusCode::OK);
    }
}

/// A look at the store that never finishes (the store panicked) does not keep every
/// later check from taking one. Paused time: the 2 s deadline passes at once.
#[tokio::test(start_paused = true)]
async fn a_look_that_panicked_does_not_stop_later_ones() {
    let (app, faults) = TestApp::with_faults();
    faults.set(Mode::Panic);
    let (status, _, _) = send(&app, get("/healthz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    faults.set(Mode::Pass);
    let (status, _, body) = send(&app, get("/healthz")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Paused time: the 2 s deadline passes without waiting for it.
#[tokio::test(start_paused = true)]
async fn healthz_answers_503_within_bounded_time_when_the_store_hangs() {
    let (app, faults) = TestApp::with_faults();
    faults.set(Mode::Hang);
    let started = tokio::time::Instant::now();
    let (status, _, body) = send(&app, get("/healthz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("timed out"), "{body}");
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_secs(2) && waited < std::time::Duration::from_secs(3),
        "{waited:?}"
    );
}

/// Browser endpoints answer what they cannot read with the HTML error page, never
/// axum's plain-text rejections: a parameter given twice, a form body too large.
#[tokio::test]
async fn browser_endpoints_refuse_unreadable_requests_with_the_error_page() {
    let app = app();
    for path in [
        "/oauth/authorize/approve?ticket=a&ticket=b",
        "/oauth/authorize/deny?ticket=a&ticket=b",
        "/oauth/login?return_to=/&return_to=/console",
        "/setup?token=a&token=b",
    ] {
        let answer = app.send(get(path)).await;
        assert_error_page(
            &answer,
            StatusCode::BAD_REQUEST,
            "Malformed link",
            "given twice",
        );
    }
    for path in ["/oauth/login", "/setup"] {
        let request = Request::post(path)
            .header(header::HOST, "gate.example.com")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(streamed(vec![b'a'; MAX_BODY_BYTES + 1], 5))
            .expect("request");
        let answer = app.send(request).await;
        assert_error_page(
            &answer,
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request refused",
            "too large",
        );
    }
}

/// The OAuth endpoints that take a POST answer other methods with an RFC 6749
/// error and `Allow: POST`, not an empty 405.
#[tokio::test]
async fn oauth_endpoints_refuse_other_methods_as_oauth_errors() {
    let app = app();
    for path in ["/oauth/token", "/oauth/revoke", "/oauth/register"] {
        for method in [Method::GET, Method::PUT, Method::DELETE] {
            let request = Request::builder()
                .method(method.clone())
                .uri(path)
                .body(Body::empty())
                .expect("request");
            let answer = app.send(request).await;
            assert_oauth_error(&answer, StatusCode::METHOD_NOT_ALLOWED, "invalid_request");
            assert_eq!(answer.headers[header::ALLOW], "POST", "{method} {path}");
        }
    }
}

/// Every endpoint that takes a body refuses one over [`MAX_BODY_BYTES`] with 413,
/// whether its size is announced (`Content-Length`) or found out while reading it
/// (chunked), in its own error language (JSON-RPC at `/mcp`, RFC 6749 at the OAuth
/// endpoints), and reads one at the limit as usual.
#[tokio::test]
async fn oversized_bodies_are_refused_announced_or_streamed() {
    // Registrations have a smaller limit of their own (tests/abuse.rs); here they
    // get the router's.
    let app = TestApp::new(&["--max-registration-bytes", "65536"]);
    // /mcp reads a body only for a valid token, so the streamed case needs one.
    let (_, tokens) = app.tokens_for("read:articles").await;
    let token = tokens["access_token"].as_str().expect("at");
    let request = |path: &str, content_type: &str, size: usize, chunked: bool| {
        let body = vec![b'a'; size];
        let mut request = Request::post(path)
            .header(header::HOST, "gate.example.com")
            .header(header::CONTENT_TYPE, content_type)
            .header(header::ACCEPT, "application/json, text/event-stream");
        if path == "/mcp" {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if chunked {
            request.body(streamed(body, 5))
        } else {
            request
                .header(header::CONTENT_LENGTH, size.to_string())
                .body(Body::from(body))
        }
        .expect("request")
    };
    for (path, content_type) in [
        ("/mcp", "application/json"),
        ("/oauth/token", "application/x-www-form-urlencoded"),
        ("/oauth/register", "application/json"),
        ("/oauth/revoke", "application/x-www-form-urlencoded"),
    ] {
        for chunked in [false, true] {
            let what = format!("{path}, chunked: {chunked}");
            let (status, _, body) = send(
                &app,
                request(path, content_type, MAX_BODY_BYTES + 1, chunked),
            )
            .await;
            assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{what}: {body}");
            let error: serde_json::Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {body}"));
            if path == "/mcp" {
                assert_eq!(error["error"]["code"], -32600, "{what}: {body}");
            } else {
                assert_eq!(error["error"], "invalid_request", "{what}: {body}");
            }
            let (status, _, body) =
                send(&app, request(path, content_type, MAX_BODY_BYTES, chunked)).await;
            assert!(
                status.is_client_error() && status != StatusCode::PAYLOAD_TOO_LARGE,
                "{what}: a body at the limit is read: {status} {body}"
            );
        }
    }
}

#[tokio::test]
async fn error_pages_escape_what_they_echo_and_refuse_framing() {
    use axum::response::IntoResponse;
    let page = gatehouse::http::pages::ErrorPage::new(
        StatusCode::BAD_REQUEST,
        "Unknown client <b>x</b>",
        "redirect_uri \"<script>alert(1)</script>\" is not registered",
    );
    let response = page.into_response();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(response.headers()["x-frame-options"], "DENY");
    assert_eq!(
        response.headers()["content-security-policy"],
        "frame-ancestors 'none'"
    );
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(!body.contains("<script>"), "{body}");
    assert!(!body.contains("<b>x</b>"), "{body}");
    assert!(
        body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{body}"
    );
    assert!(body.contains("/pkg/gatehouse.css"), "{body}");
}
