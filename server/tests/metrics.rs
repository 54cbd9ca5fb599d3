//! `/metrics`, scraped and parsed as Prometheus would: behind its bearer secret, with
//! the counters and histograms each flow records. In a binary of its own: the
//! recorder is process-wide.

mod common;

use axum::{
    body::Body,
    http::{header, Request, StatusCode},
};
use common::*;
use serde_json::json;

const SECRET: &str = "a-metrics-secret-of-at-least-32-chars";

/// Held by each test for its whole run: the recorder is process-wide, and a scrape
/// sets the gauges of every app it renders (the same MCP URL's live sessions among
/// them), so a test scraping in parallel could read another's values.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn scrape(token: Option<&str>) -> Request<Body> {
    let mut request = Request::get("/metrics");
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    request.body(Body::empty()).expect("request")
}

fn parse(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text")
}

/// The value of the sample named `name` whose labels include `labels`.
fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => {
                buckets.iter().map(|b| b.count).fold(0.0, f64::max)
            }
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
}

#[tokio::test]
async fn metrics_are_served_behind_their_secret_and_parse() {
    let _alone = ONE_AT_A_TIME.lock().await;
    // Not configured: nothing there.
    let plain = TestApp::new(&[]);
    assert_eq!(plain.send(scrape(None)).await.status, StatusCode::NOT_FOUND);

    let app = TestApp::new(&["--metrics-token", SECRET]);
    assert_eq!(
        app.send(scrape(None)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.send(scrape(Some("wrong-secret-wrong-secret-wrong-secret")))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );

    // Some traffic: a flow to tokens, a tool call, a refused call, a bad grant.
    let (client_id, tokens) = app.tokens_for("read:articles").await;
    let access = tokens["access_token"].as_str().expect("at");
    let session = app.mcp_session(access, "2025-06-18").await;
    let call = |tool: &str| {
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
               "params": {"name": tool, "arguments": {}}})
    };
    let listed = app
        .mcp(
            Some(access),
            Some(&session),
            Some("2025-06-18"),
            call("list_articles"),
        )
        .await;
    assert_eq!(listed.status, StatusCode::OK);
    let refused = app
        .mcp(
            Some(access),
            Some(&session),
            Some("2025-06-18"),
            call("delete_article"),
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let bad = app.refresh(&client_id, "ghr.nothing.here", &[]).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    // A `tools/call` without an id is a notification: it runs nothing, and must not
    // count as a call (nor take a label) for the name it carries.
    let notified = app
        .mcp(
            Some(access),
            Some(&session),
            Some("2025-06-18"),
            json!({"jsonrpc": "2.0", "method": "tools/call",
                   "params": {"name": "minted_by_a_notification", "arguments": {}}}),
        )
        .await;
    assert_eq!(notified.status, StatusCode::ACCEPTED, "{}", notified.body);

    let answer = app.send(scrape(Some(SECRET))).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.headers[header::CONTENT_TYPE]
        .to_str()
        .expect("ascii")
        .starts_with("text/plain; version=0.0.4"));
    let metrics = parse(&answer.body);

    let counted = |name: &str, labels: &[(&str, &str)]| {
        let v = value(&metrics, name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{}", answer.body));
        assert!(v >= 1.0, "{name} {labels:?} = {v}");
    };
    counted(
        "gatehouse_token_grants_total",
        &[("grant_type", "authorization_code"), ("outcome", "ok")],
    );
    counted(
        "gatehouse_token_grants_total",
        &[
            ("grant_type", "refresh_token"),
            ("outcome", "invalid_grant"),
        ],
    );
    counted(
        "gatehouse_tool_calls_total",
        &[("tool", "list_articles"), ("outcome", "ok")],
    );
    // A tool becomes a label once a call to it succeeds; until then its refusals
    // count as `other`, so callers cannot mint labels with names of their choosing.
    counted(
        "gatehouse_tool_calls_total",
        &[("tool", "other"), ("outcome", "denied")],
    );
    assert!(
        value(
            &metrics,
            "gatehouse_tool_calls_total",
            &[("tool", "delete_article")]
        )
        .is_none(),
        "a refused tool took a label:\n{}",
        answer.body
    );
    assert!(
        !answer.body.contains("minted_by_a_notification"),
        "a notification took a label:\n{}",
        answer.body
    );
    counted(
        "gatehouse_http_requests_total",
        &[("route", "/oauth/token"), ("status", "200")],
    );
    counted(
        "gatehouse_http_request_duration_seconds_count",
        &[("route", "/mcp")],
    );
    counted(
        "gatehouse_store_operation_duration_seconds_count",
        &[("op", "get_many")],
    );
    counted("gatehouse_mcp_sessions", &[("resource", MCP_URL)]);
}

#[tokio::test]
async fn rate_limit_refusals_are_counted() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let app = TestApp::new(&["--metrics-token", SECRET, "--registrations-per-minute", "1"]);
    for _ in 0..2 {
        app.register(json!({"redirect_uris": ["https://client.example/cb"]}))
            .await;
    }
    let metrics = parse(&app.send(scrape(Some(SECRET))).await.body);
    let refused = value(
        &metrics,
        "gatehouse_rate_limited_total",
        &[("limit", "registration")],
    );
    assert!(refused.is_some_and(|v| v >= 1.0), "{refused:?}");
}

/// What request bodies hold of `--max-body-memory` is a gauge: up while a body is
/// being read, down once its request is done.
#[tokio::test]
async fn request_bodies_held_are_a_gauge() {
    let _alone = ONE_AT_A_TIME.lock().await;
    use gatehouse::http::bodies::{Budget, FRAME_COST};
    let app = TestApp::new(&["--metrics-token", SECRET]);
    let held = || async {
        let answer = app.send(scrape(Some(SECRET))).await;
        value(&parse(&answer.body), "gatehouse_request_body_bytes", &[]).unwrap_or(0.0)
    };
    let before = held().await;
    let budget = Budget::new(1 << 20);
    let body = budget.charge("192.0.2.1".parse().expect("ip"), false, Some(1000));
    body.take(1000).expect("within the budget");
    assert_eq!(held().await - before, (1000 + FRAME_COST) as f64);
    drop(body);
    assert_eq!(held().await, before);
}

/// `--metrics-bind`'s router (an address of its own, no secret): `/metrics` as
/// Prometheus reads it, and nothing else there.
#[tokio::test]
async fn the_metrics_address_serves_metrics_without_a_secret_and_nothing_else() {
    let _alone = ONE_AT_A_TIME.lock().await;
    use tower::ServiceExt as _;
    let app = TestApp::new(&["--metrics-bind", "127.0.0.1:0"]);
    let (_, tokens) = app.tokens_for("read:articles").await;
    assert!(tokens["access_token"].is_string());
    let own = gatehouse::http::metrics::router(app.state.clone());
    let scraped = own.clone().oneshot(scrape(None)).await.expect("answer");
    assert_eq!(scraped.status(), StatusCode::OK);
    let body = axum::body::to_bytes(scraped.into_body(), 1 << 20)
        .await
        .expect("body");
    let text = String::from_utf8(body.to_vec()).expect("utf-8");
    let samples = parse(&text);
    assert!(
        samples
            .samples
            .iter()
            .any(|s| s.metric.starts_with("gatehouse_")),
        "{text}"
    );
    for path in ["/", "/mcp", "/oauth/token", "/healthz"] {
        let other = own
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("answer");
        assert_eq!(other.status(), StatusCode::NOT_FOUND, "{path}");
    }
    // The main listener does not serve them without a token.
    assert_eq!(app.send(scrape(None)).await.status, StatusCode::NOT_FOUND);
}
