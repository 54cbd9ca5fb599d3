//! The doctor against a real Gatehouse on a loopback port, directly and behind
//! deliberately broken fronts (small proxies built here, each making one mistake the
//! README's troubleshooting table describes): each mistake must fail its own check
//! and name its own fix. Also pinned client-ID metadata documents, which let clients
//! sign in on a server without outbound access, and the `gatehouse doctor` command.

mod common;

use std::process::Output;

use axum::{
    body::Body,
    extract::Request,
    http::{header, StatusCode},
    response::{Html, IntoResponse, Response},
    Router,
};
use common::*;
use gatehouse::doctor::{self, Options, Report};
use serde_json::{json, Value};

/// Every check of a run against the built-in `/mcp`, in order.
const URL_CHECKS: [&str; 13] = [
    "reachable",
    "https",
    "mcp-challenge",
    "host",
    "resource-metadata",
    "resource-metadata-root",
    "authorization-server-metadata",
    "cors",
    "registration",
    "authorization-page",
    "token-endpoint",
    "no-redirects",
    "answers-from-gatehouse",
];

fn names(report: &Report) -> Vec<&str> {
    report.checks.iter().map(|c| c.check).collect()
}

/// The check named `name`, which must have failed; returns (detail, fix).
fn failed(report: &Report, name: &str) -> (String, String) {
    let check = report
        .get(name)
        .unwrap_or_else(|| panic!("no {name} check:\n{}", report.render()));
    assert!(!check.ok, "{name} passed:\n{}", report.render());
    (
        check.detail.clone(),
        check.fix.clone().expect("a failure has a fix"),
    )
}

fn passed(report: &Report, name: &str) {
    let check = report
        .get(name)
        .unwrap_or_else(|| panic!("no {name} check:\n{}", report.render()));
    assert!(check.ok, "{name} failed:\n{}", report.render());
}

#[tokio::test]
async fn a_gatehouse_reached_directly_passes_every_url_check() {
    let app = TestApp::served_at_its_own_url(&[]).await;
    let base = app.base.clone().expect("served");
    let report = doctor::run(&base, &Options::default()).await;
    assert!(report.ok(), "{}", report.render());
    assert_eq!(names(&report), URL_CHECKS);
    let registration = report.get("registration").expect("registration");
    assert!(
        registration.detail.contains("throwaway")
            && registration.detail.contains("forgets it after a day"),
        "the output says a registration was created: {}",
        registration.detail
    );

    // The MCP URL works as well as the origin, and so does an upstream's path
    // (whose bare metadata document describes another resource, so is not checked).
    let report = doctor::run(&format!("{base}/mcp"), &Options::default()).await;
    assert!(report.ok(), "{}", report.render());
    let without_registering = Options {
        register: false,
        ..Options::default()
    };
    let report = doctor::run(&base, &without_registering).await;
    assert!(report.ok(), "{}", report.render());
    assert!(report.get("registration").is_none());
    assert!(report.get("authorization-page").is_none());
}

#[tokio::test]
async fn a_wrong_mcp_path_or_an_unreachable_port_say_so() {
    let app = TestApp::served_at_its_own_url(&[]).await;
    let base = app.base.clone().expect("served");
    let report = doctor::run(&format!("{base}/mcp/nothing-here"), &Options::default()).await;
    let (detail, fix) = failed(&report, "mcp-challenge");
    assert!(detail.contains("404"), "{detail}");
    assert!(fix.contains("--mcp-path"), "{fix}");
    let (detail, _) = failed(&report, "resource-metadata");
    assert!(detail.contains("Gatehouse's page"), "{detail}");

    // Nothing listens: one failed check, and nothing else is claimed.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let report = doctor::run(&format!("http://{closed}"), &Options::default()).await;
    assert_eq!(names(&report), ["reachable"], "{}", report.render());
    let (detail, fix) = failed(&report, "reachable");
    assert!(detail.contains("no connection"), "{detail}");
    assert!(fix.contains("firewall"), "{fix}");

    let report = doctor::run("https://gate.example.com/base", &Options::default()).await;
    let (detail, _) = failed(&report, "url");
    assert!(detail.contains("root of its host"), "{detail}");
}

/// One mistake a front (a reverse proxy, a WAF) can make.
#[derive(Clone, Copy, Debug)]
enum Front {
    /// Forwards everything unchanged.
    Faithful,
    /// Forwards with its own `Host` (nginx without `proxy_set_header Host $host`).
    RewritesHost,
    /// Answers `/.well-known/*` with its own HTML page.
    HtmlWellKnown,
    /// Adds a trailing slash to the issuer (as a `--public-url` of `…/` would).
    IssuerWithSlash,
    /// Redirects `/oauth/register` to `/oauth/register/`.
    RedirectsRegistration,
    /// A bot challenge on every path.
    Challenges,
}

/// Gatehouse behind `front`, whose URL is Gatehouse's public URL. Returns the front's
/// URL and the app.
async fn behind(front: Front, extra: &[&str]) -> (String, TestApp) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let public_url = format!("http://{}", listener.local_addr().expect("addr"));
    let app = TestApp::with_public_url_and(&public_url, extra)
        .serve()
        .await;
    let upstream = app.base.clone().expect("served");
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let router = Router::new().fallback(move |request: Request| {
        let (client, upstream) = (client.clone(), upstream.clone());
        async move { relay(front, &client, &upstream, request).await }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (public_url, app)
}

async fn relay(
    front: Front,
    client: &reqwest::Client,
    upstream: &str,
    request: Request,
) -> Response {
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    match front {
        Front::HtmlWellKnown if path.starts_with("/.well-known/") => {
            return Html(
                "<!DOCTYPE html><html><head><title>Welcome to nginx!</title></head>\
                 <body><h1>Welcome to nginx!</h1></body></html>",
            )
            .into_response()
        }
        Front::RedirectsRegistration if path == "/oauth/register" => {
            return (
                StatusCode::MOVED_PERMANENTLY,
                [(header::LOCATION, "/oauth/register/")],
            )
                .into_response()
        }
        Front::Challenges => {
            return (
                StatusCode::FORBIDDEN,
                [
                    (header::CONTENT_TYPE, "text/html; charset=UTF-8"),
                    (header::HeaderName::from_static("cf-mitigated"), "challenge"),
                    (header::SERVER, "cloudflare"),
                ],
                "<!DOCTYPE html><html><head><title>Just a moment...</title></head>\
                 <body><script src=\"/cdn-cgi/challenge-platform/h/b/orchestrate\"></script></body></html>",
            )
                .into_response()
        }
        _ => {}
    }
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.expect("body");
    let mut outgoing = client
        .request(parts.method, format!("{upstream}{path}"))
        .body(body);
    for (name, value) in &parts.headers {
        if name != header::HOST {
            outgoing = outgoing.header(name, value);
        }
    }
    let host = match front {
        Front::RewritesHost => "gatehouse.internal:3000".to_owned(),
        _ => parts.headers[header::HOST]
            .to_str()
            .expect("ascii")
            .to_owned(),
    };
    let response = outgoing
        .header(header::HOST, host)
        .send()
        .await
        .expect("Gatehouse answers");
    let status = response.status();
    let headers = response.headers().clone();
    let mut body = response.bytes().await.expect("body").to_vec();
    if matches!(front, Front::IssuerWithSlash) && path == "/.well-known/oauth-authorization-server"
    {
        let mut metadata: Value = serde_json::from_slice(&body).expect("metadata");
        let issuer = metadata["issuer"].as_str().expect("issuer").to_owned();
        metadata["issuer"] = json!(format!("{issuer}/"));
        body = metadata.to_string().into_bytes();
    }
    let mut answer = Response::builder().status(status);
    for (name, value) in &headers {
        if name != header::CONTENT_LENGTH && name != header::TRANSFER_ENCODING {
            answer = answer.header(name, value);
        }
    }
    answer.body(Body::from(body)).expect("response")
}

#[tokio::test]
async fn a_faithful_proxy_passes() {
    let (front, _app) = behind(Front::Faithful, &[]).await;
    let report = doctor::run(&front, &Options::default()).await;
    assert!(report.ok(), "{}", report.render());
}

#[tokio::test]
async fn a_proxy_that_rewrites_host_fails_the_host_check() {
    let (front, _app) = behind(Front::RewritesHost, &[]).await;
    let report = doctor::run(&front, &Options::default()).await;
    let (detail, fix) = failed(&report, "host");
    assert!(detail.contains("this Host is not served here"), "{detail}");
    assert!(fix.contains("proxy_set_header Host $host"), "{fix}");
    assert!(fix.contains("--allowed-host"), "{fix}");
    let (detail, fix) = failed(&report, "mcp-challenge");
    assert!(detail.contains("403 instead of 401"), "{detail}");
    assert!(fix.contains("--allowed-host"), "{fix}");
    // The pages are Host-checked too (DNS rebinding), so the consent page fails.
    let (detail, fix) = failed(&report, "authorization-page");
    assert!(detail.contains("403"), "{detail}");
    assert!(fix.contains("--allowed-host"), "{fix}");
    // Discovery and the rest are not Host-checked, and pass.
    for name in [
        "resource-metadata",
        "authorization-server-metadata",
        "registration",
        "no-redirects",
        "answers-from-gatehouse",
    ] {
        passed(&report, name);
    }
}

#[tokio::test]
async fn html_on_well_known_paths_fails_discovery_and_names_the_page() {
    let (front, _app) = behind(Front::HtmlWellKnown, &[]).await;
    let report = doctor::run(&front, &Options::default()).await;
    for name in [
        "resource-metadata",
        "resource-metadata-root",
        "authorization-server-metadata",
    ] {
        let (detail, fix) = failed(&report, name);
        assert!(
            detail.contains("an HTML page (\"Welcome to nginx!\")"),
            "{name}: {detail}"
        );
        assert!(fix.contains("/.well-known/*"), "{name}: {fix}");
    }
    let (detail, fix) = failed(&report, "answers-from-gatehouse");
    assert!(
        detail.contains("GET /.well-known/oauth-authorization-server: an HTML page"),
        "{detail}"
    );
    assert!(fix.starts_with("Route every path"), "{fix}");
    for name in ["mcp-challenge", "host", "registration", "no-redirects"] {
        passed(&report, name);
    }
}

#[tokio::test]
async fn an_issuer_with_a_trailing_slash_fails_the_metadata_check() {
    let (front, _app) = behind(Front::IssuerWithSlash, &[]).await;
    let report = doctor::run(&front, &Options::default()).await;
    let (detail, fix) = failed(&report, "authorization-server-metadata");
    assert!(
        detail.contains(&format!("\"{front}/\" ends with a slash")),
        "{detail}"
    );
    assert!(fix.contains(&format!("--public-url {front}:")), "{fix}");
    assert_eq!(
        report.failures().count(),
        1,
        "only the issuer is wrong:\n{}",
        report.render()
    );
}

#[tokio::test]
async fn a_redirected_api_path_fails_and_names_the_location() {
    let (front, _app) = behind(Front::RedirectsRegistration, &[]).await;
    let report = doctor::run(&front, &Options::default()).await;
    let (detail, fix) = failed(&report, "no-redirects");
    assert!(
        detail.contains(
            "POST /oauth/register answered 301 Moved Permanently, Location: /oauth/register/"
        ),
        "{detail}"
    );
    assert!(fix.contains("a redirected POST arrives as a GET"), "{fix}");
    let (detail, _) = failed(&report, "registration");
    assert!(detail.contains("redirect to /oauth/register/"), "{detail}");
    let (detail, _) = failed(&report, "authorization-page");
    assert!(detail.starts_with("not checked"), "{detail}");
    for name in ["mcp-challenge", "authorization-server-metadata", "cors"] {
        passed(&report, name);
    }
}

#[tokio::test]
async fn a_bot_challenge_is_recognised_as_such() {
    let (front, _app) = behind(Front::Challenges, &[]).await;
    let report = doctor::run(&front, &Options::default()).await;
    passed(&report, "reachable");
    let (detail, fix) = failed(&report, "mcp-challenge");
    assert!(detail.contains("a Cloudflare challenge"), "{detail}");
    assert!(fix.contains("bot"), "{fix}");
    let (detail, fix) = failed(&report, "answers-from-gatehouse");
    assert!(
        detail.contains("POST /mcp: a Cloudflare challenge"),
        "{detail}"
    );
    assert!(
        fix.starts_with("Exempt /mcp, /oauth/* and /.well-known/*"),
        "{fix}"
    );
}

const UNREACHABLE_DOCUMENT: &str = "https://client.invalid/oauth/client-metadata";

/// A config file pinning `documents` (URL, content), in `dir`.
fn pinning(dir: &std::path::Path, documents: &[(&str, Value)]) -> String {
    let mut toml = String::new();
    for (i, (url, content)) in documents.iter().enumerate() {
        let file = dir.join(format!("document-{i}.json"));
        std::fs::write(&file, content.to_string()).expect("write");
        toml.push_str(&format!(
            "[[client_document]]\nurl = \"{url}\"\nfile = \"{}\"\n",
            file.display()
        ));
    }
    let path = dir.join("gatehouse.toml");
    std::fs::write(&path, toml).expect("write");
    path.to_str().expect("utf-8").to_owned()
}

fn claude_documents() -> Vec<(&'static str, Value)> {
    vec![
        (
            doctor::CLAUDE_DOCUMENTS[0].1,
            json!({
                "client_id": doctor::CLAUDE_DOCUMENTS[0].1,
                "client_name": "Claude Code",
                "redirect_uris": ["http://localhost/callback", "http://127.0.0.1/callback"],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "none",
            }),
        ),
        (
            doctor::CLAUDE_DOCUMENTS[1].1,
            json!({
                "client_id": doctor::CLAUDE_DOCUMENTS[1].1,
                "client_name": "Claude",
                "redirect_uris": ["https://claude.ai/api/mcp/auth_callback"],
                "token_endpoint_auth_method": "none",
            }),
        ),
    ]
}

#[tokio::test]
async fn the_server_side_checks_pass_with_pinned_documents() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = pinning(dir.path(), &claude_documents());
    let app = TestApp::served_at_its_own_url(&["--config", &config]).await;
    let public_url = app.state.config.public_url.as_str().to_owned();
    let report = doctor::run_checks(
        &public_url,
        Some(app.state.auth.as_ref()),
        &Options::default(),
    )
    .await;
    assert!(report.ok(), "{}", report.render());
    let mut expected = URL_CHECKS.to_vec();
    expected.extend(["claude-code-client-metadata", "claude-ai-client-metadata"]);
    assert_eq!(names(&report), expected);
    assert!(
        report.checks[13]
            .detail
            .contains("pinned in the configuration"),
        "{}",
        report.checks[13].detail
    );
    // The report is what the console serves: a JSON array of {check, ok, detail, fix}.
    let json = serde_json::to_value(&report).expect("json");
    assert_eq!(json.as_array().expect("array").len(), 15);
    assert_eq!(json[0]["check"], "reachable");
    assert_eq!(json[0]["fix"], Value::Null);
}

#[tokio::test]
async fn a_document_the_server_cannot_fetch_fails_with_the_pinning_fix() {
    let app = TestApp::new(&[]);
    let check =
        doctor::check_client_document(&app.state.auth, "test-document", UNREACHABLE_DOCUMENT).await;
    assert!(!check.ok);
    assert!(check.detail.contains("could not fetch"), "{}", check.detail);
    let fix = check.fix.expect("fix");
    assert!(
        fix.starts_with("this server cannot reach client.invalid:"),
        "{fix}"
    );
    assert!(
        fix.contains(&format!(
            "[[client_document]]\n  url = \"{UNREACHABLE_DOCUMENT}\""
        )),
        "{fix}"
    );

    // Claude's own documents: wherever claude.ai is out of reach (as on the machines
    // these tests were written on), the fix says what that means for Claude.
    let report = doctor::run_checks(
        "http://127.0.0.1:9",
        Some(app.state.auth.as_ref()),
        &Options::default(),
    )
    .await;
    for (name, url) in doctor::CLAUDE_DOCUMENTS {
        let check = report.get(name).expect("document check");
        if !check.ok {
            let fix = check.fix.as_deref().expect("fix");
            assert!(
                fix.starts_with(
                    "this server cannot reach claude.ai: Claude Code and Claude.ai cannot sign \
                     in unless outbound access is allowed, or the document is pinned (see below)."
                ),
                "{fix}"
            );
            assert!(fix.contains(&format!("url = \"{url}\"")), "{fix}");
        }
    }
}

#[tokio::test]
async fn a_pinned_document_lets_its_client_sign_in_without_any_fetch() {
    let document = json!({
        "client_id": UNREACHABLE_DOCUMENT,
        "client_name": "Pinned app",
        "redirect_uris": ["http://localhost/callback"],
        "token_endpoint_auth_method": "none",
    });
    let redirect_uri = "http://localhost:4567/callback";
    let request = [("redirect_uri", redirect_uri), ("scope", "read:articles")];

    // Without the pin: .invalid never resolves, so the fetch fails, and the page
    // says what the owner can do about it.
    let unpinned = TestApp::new(&[]);
    let cookie = unpinned.sign_in().await;
    let answer = unpinned
        .authorize(UNREACHABLE_DOCUMENT, &request, Some(&cookie))
        .await;
    assert_error_page(
        &answer,
        StatusCode::BAD_REQUEST,
        "Client metadata unavailable",
        "its owner can pin the document in Gatehouse's configuration",
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let config = pinning(dir.path(), &[(UNREACHABLE_DOCUMENT, document)]);
    let app = TestApp::new(&["--config", &config]);
    let cookie = app.sign_in().await;
    let consent = app
        .authorize(UNREACHABLE_DOCUMENT, &request, Some(&cookie))
        .await;
    assert_eq!(consent.status, StatusCode::OK, "{}", consent.body);
    assert!(consent.body.contains("Pinned app"), "{}", consent.body);
    // The operator pinned it, so vouches for its redirect URIs: an error goes back
    // at once (a fetched document's is shown instead).
    let refused = app
        .authorize(
            UNREACHABLE_DOCUMENT,
            &[("redirect_uri", redirect_uri), ("response_type", "token")],
            None,
        )
        .await;
    assert_eq!(refused.status, StatusCode::SEE_OTHER, "{}", refused.body);
    assert!(refused.location().starts_with(redirect_uri));
    assert_eq!(
        refused.param("error").as_deref(),
        Some("unsupported_response_type")
    );
    let approved = app
        .get(&TestApp::link(&consent, "approve"), Some(&cookie))
        .await;
    assert!(
        approved.location().starts_with(redirect_uri),
        "{}",
        approved.location()
    );
    let code = approved.param("code").expect("code");
    let tokens = app
        .post_form(
            "/oauth/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", redirect_uri),
                ("code_verifier", VERIFIER),
                ("client_id", UNREACHABLE_DOCUMENT),
                ("resource", MCP_URL),
            ],
            None,
        )
        .await;
    assert_eq!(tokens.status, StatusCode::OK, "{}", tokens.body);
    assert_eq!(tokens.json()["scope"], "read:articles");

    // A redirect URI the pinned document does not list is refused, as for a fetched
    // one.
    let answer = app
        .authorize(
            UNREACHABLE_DOCUMENT,
            &[("redirect_uri", "https://evil.example/cb")],
            Some(&cookie),
        )
        .await;
    assert_error_page(
        &answer,
        StatusCode::BAD_REQUEST,
        "Unregistered redirect URI",
        "not one this client registered",
    );
}

/// `gatehouse doctor ARGS` as a process, off the runtime that serves the app.
async fn doctor_command(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"));
        command.env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            command.env("PATH", path);
        }
        command.arg("doctor").args(&args).output().expect("run")
    })
    .await
    .expect("join")
}

#[tokio::test]
async fn the_command_exits_zero_on_a_healthy_deployment_and_prints_the_checklist() {
    let app = TestApp::served_at_its_own_url(&[]).await;
    let base = app.base.clone().expect("served");
    let output = doctor_command(&[&base]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for name in URL_CHECKS {
        assert!(stdout.contains(&format!("✓ {name}")), "{name}: {stdout}");
    }
    assert!(stdout.contains("All 13 checks passed."), "{stdout}");

    let output = doctor_command(&[&base, "--json"]).await;
    assert!(output.status.success());
    let checks: Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    let checks = checks.as_array().expect("an array");
    assert_eq!(checks.len(), URL_CHECKS.len());
    for check in checks {
        let keys: Vec<&str> = check
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys.len(), 4, "{check}");
        for key in ["check", "ok", "detail", "fix"] {
            assert!(keys.contains(&key), "{check}");
        }
        assert_eq!(check["ok"], true, "{check}");
    }
}

#[tokio::test]
async fn the_command_exits_non_zero_behind_a_broken_front() {
    let (front, _app) = behind(Front::RewritesHost, &[]).await;
    let output = doctor_command(&[&front]).await;
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("✗ host"), "{stdout}");
    assert!(
        stdout.contains("    fix: Pass the client's Host header"),
        "{stdout}"
    );
    assert!(stdout.contains("checks failed."), "{stdout}");

    let output = doctor_command(&[&front, "--json"]).await;
    assert_eq!(output.status.code(), Some(1));
    let checks: Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    let host = checks
        .as_array()
        .expect("array")
        .iter()
        .find(|c| c["check"] == "host")
        .expect("host check");
    assert_eq!(host["ok"], false);
    assert!(host["fix"]
        .as_str()
        .expect("fix")
        .contains("--allowed-host"));

    let output = doctor_command(&["gate.example.com"]).await;
    assert_eq!(
        output.status.code(),
        Some(2),
        "an unusable URL is a usage error"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not a URL"));
}
