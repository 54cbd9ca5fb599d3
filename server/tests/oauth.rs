//! Router tests for the authorization server: every rule, success and refusal, with
//! the exact status, error code and headers. The real router, driven with `oneshot`.

mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::Body,
    http::{header, Request, StatusCode},
};
use base64::Engine as _;
use common::*;
use gatehouse::{config::Cli, outbound::NOT_PUBLIC, resource::ResourceUri};
use serde_json::json;

// ----- discovery -------------------------------------------------------------------

#[tokio::test]
async fn metadata_lists_what_clients_require_under_both_names() {
    let app = TestApp::new(&[]);
    let request = Request::get("/.well-known/oauth-authorization-server")
        .header(header::ORIGIN, "http://localhost:6274")
        .body(Body::empty())
        .expect("request");
    let answer = app.send(request).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    let doc = answer.json();
    assert_no_nulls(&doc);
    assert_eq!(doc["issuer"], PUBLIC_URL);
    assert_eq!(
        doc["authorization_endpoint"],
        "https://gate.example.com/oauth/authorize"
    );
    assert_eq!(
        doc["token_endpoint"],
        "https://gate.example.com/oauth/token"
    );
    assert_eq!(
        doc["registration_endpoint"],
        "https://gate.example.com/oauth/register"
    );
    assert_eq!(
        doc["revocation_endpoint"],
        "https://gate.example.com/oauth/revoke"
    );
    assert_eq!(doc["response_types_supported"], json!(["code"]));
    assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(
        doc["grant_types_supported"],
        json!(["authorization_code", "refresh_token"])
    );
    assert_eq!(
        doc["token_endpoint_auth_methods_supported"],
        json!(["none", "client_secret_post", "client_secret_basic"])
    );
    assert_eq!(
        doc["scopes_supported"],
        json!(["read:articles", "write:articles"])
    );
    assert_eq!(doc["authorization_response_iss_parameter_supported"], true);

    let openid = app.get("/.well-known/openid-configuration", None).await;
    assert_eq!(openid.status, StatusCode::OK);
    assert_eq!(openid.json(), doc);
}

#[tokio::test]
async fn api_paths_never_redirect() {
    let app = TestApp::new(&[]);
    for path in [
        "/oauth/register/",
        "/oauth/token/",
        "/.well-known/oauth-authorization-server/",
    ] {
        let answer = app
            .send(Request::post(path).body(Body::empty()).expect("request"))
            .await;
        assert!(!answer.status.is_redirection(), "{path}: {}", answer.status);
        assert!(answer.headers.get(header::LOCATION).is_none());
    }
}

#[tokio::test]
async fn preflights_on_api_endpoints_are_answered_for_browser_clients() {
    let app = TestApp::new(&[]);
    for path in [
        "/oauth/register",
        "/oauth/token",
        "/oauth/revoke",
        "/.well-known/oauth-authorization-server",
    ] {
        let request = Request::options(path)
            .header(header::ORIGIN, "http://localhost:6274")
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                "content-type,authorization",
            )
            .body(Body::empty())
            .expect("request");
        let answer = app.send(request).await;
        assert_cors_preflight(&answer, path, "*");
    }
}

// ----- registration ------------------------------------------------------------------

#[tokio::test]
async fn public_clients_register_without_a_secret() {
    let app = TestApp::new(&[]);
    let answer = app
        .register(json!({
            "client_name": "Claude",
            "redirect_uris": ["https://claude.ai/api/mcp/auth_callback"],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "scope": "claudeai",
        }))
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    assert_eq!(answer.headers[header::CACHE_CONTROL], "no-store");
    let client = answer.json();
    assert_no_nulls(&client);
    assert!(client["client_id"]
        .as_str()
        .is_some_and(|id| id.len() >= 16));
    assert!(client.get("client_secret").is_none());
    assert!(
        client.get("scope").is_none(),
        "unknown scopes are dropped: {client}"
    );
    assert_eq!(client["token_endpoint_auth_method"], "none");
    assert_eq!(
        client["redirect_uris"],
        json!(["https://claude.ai/api/mcp/auth_callback"])
    );
    assert_eq!(client["client_name"], "Claude");

    let second = app.public_client("Claude").await;
    assert_ne!(
        second, client["client_id"],
        "every registration gets its own id"
    );
}

#[tokio::test]
async fn confidential_clients_get_their_own_secret_stored_only_as_a_hash() {
    let app = TestApp::new(&[]);
    let mut secrets = Vec::new();
    for method in ["client_secret_basic", "client_secret_post"] {
        let answer = app
            .register(json!({"redirect_uris": ["https://client.example/cb"], "token_endpoint_auth_method": method}))
            .await;
        assert_eq!(answer.status, StatusCode::CREATED);
        let client = answer.json();
        assert_eq!(client["token_endpoint_auth_method"], method);
        assert_eq!(client["client_secret_expires_at"], 0);
        secrets.push(client["client_secret"].as_str().expect("secret").to_owned());
    }
    assert_ne!(secrets[0], secrets[1]);
    for (_, value) in app.store.scan("").await.expect("scan") {
        let value = String::from_utf8_lossy(&value);
        for secret in &secrets {
            assert!(!value.contains(secret.as_str()), "a raw secret is stored");
        }
    }
}

#[tokio::test]
async fn bad_registrations_get_clear_errors() {
    let app = TestApp::new(&[]);
    let bad_uri = app
        .register(json!({"redirect_uris": ["http://evil.example/cb"]}))
        .await;
    assert_oauth_error(&bad_uri, StatusCode::BAD_REQUEST, "invalid_redirect_uri");
    let fragment = app
        .register(json!({"redirect_uris": ["https://a.example/cb#x"]}))
        .await;
    assert_oauth_error(&fragment, StatusCode::BAD_REQUEST, "invalid_redirect_uri");
    let missing = app.register(json!({"client_name": "x"})).await;
    assert_oauth_error(&missing, StatusCode::BAD_REQUEST, "invalid_redirect_uri");
    let method = app
        .register(json!({"redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "private_key_jwt"}))
        .await;
    assert_oauth_error(&method, StatusCode::BAD_REQUEST, "invalid_client_metadata");
    let garbage = app
        .send(
            Request::post("/oauth/register")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{not json"))
                .expect("request"),
        )
        .await;
    assert_oauth_error(&garbage, StatusCode::BAD_REQUEST, "invalid_client_metadata");
    let huge =
        json!({"redirect_uris": ["https://a.example/cb"], "client_name": "x".repeat(100_000)});
    let too_big = app.register(huge).await;
    assert_eq!(
        too_big.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        too_big.body
    );
}

// ----- authorization endpoint -----------------------------------------------------------

/// RFC 6749 §4.1.2.1: with a bad client or redirect URI the person is told what is
/// wrong, and nothing is sent to the redirect URI. Each mistake has its own words.
#[tokio::test]
async fn a_bad_client_or_redirect_uri_is_shown_and_never_redirected() {
    let app = TestApp::new(&[]);
    let client_id = app.public_client("Test").await;
    let cookie = app.sign_in().await;
    let cases = [
        (
            app.authorize("no-such-client", &[], Some(&cookie)).await,
            "Unknown client",
            "This client is not registered here.",
        ),
        (
            app.authorize("", &[("client_id", "")], Some(&cookie)).await,
            "Missing client",
            "The request names no client_id.",
        ),
        (
            app.authorize(
                &client_id,
                &[("redirect_uri", "https://evil.example/cb")],
                Some(&cookie),
            )
            .await,
            "Unregistered redirect URI",
            "The redirect_uri \"https://evil.example/cb\" is not one this client registered",
        ),
        (
            app.authorize(
                &client_id,
                &[("redirect_uri", "https://client.example/cb/extra")],
                Some(&cookie),
            )
            .await,
            "Unregistered redirect URI",
            "\"https://client.example/cb/extra\" is not one this client registered",
        ),
        (
            app.authorize(
                &client_id,
                &[("redirect_uri", "http://client.example/cb")],
                Some(&cookie),
            )
            .await,
            "Invalid redirect URI",
            "\"http://client.example/cb\" uses http on a host that is not loopback",
        ),
        (
            app.authorize(
                &client_id,
                &[("redirect_uri", "https://client.example/cb#frag")],
                Some(&cookie),
            )
            .await,
            "Invalid redirect URI",
            "must not contain a fragment",
        ),
        // Several registered URIs: the request must name one.
        (
            app.authorize(&client_id, &[("redirect_uri", "")], Some(&cookie))
                .await,
            "Missing redirect URI",
            "This client registered several redirect URIs; the request must name one.",
        ),
        // Even with other errors too, and before signing in, the redirect URI is
        // judged first.
        (
            app.authorize(
                &client_id,
                &[
                    ("redirect_uri", "https://evil.example/cb"),
                    ("code_challenge", ""),
                ],
                None,
            )
            .await,
            "Unregistered redirect URI",
            "\"https://evil.example/cb\" is not one this client registered",
        ),
        // A repeated parameter cannot be read at all.
        (
            app.get(
                &format!(
                    "/oauth/authorize?client_id={client_id}&client_id=other&response_type=code"
                ),
                Some(&cookie),
            )
            .await,
            "Malformed authorization request",
            "could not be read (a parameter may be repeated)",
        ),
    ];
    for (answer, title, message) in cases {
        assert_error_page(&answer, StatusCode::BAD_REQUEST, title, message);
        assert!(
            answer.body.contains("error-card"),
            "the styled error page: {}",
            answer.body
        );
    }
}

/// The error page echoes the redirect URI the request named; markup in it must reach
/// the page as text.
#[tokio::test]
async fn an_echoed_redirect_uri_is_escaped_on_the_error_page() {
    let app = TestApp::new(&[]);
    let client_id = app.public_client("Test").await;
    let cookie = app.sign_in().await;
    for (redirect_uri, title, markup, escaped) in [
        (
            "https://evil.example/cb?x=<script>alert(1)</script>",
            "Unregistered redirect URI",
            "<script>alert(1)</script>",
            "&lt;script&gt;alert(1)&lt;/script&gt;",
        ),
        (
            "https://client.example/cb#<img src=x onerror=alert(2)>",
            "Invalid redirect URI",
            "<img src=x onerror=alert(2)>",
            "&lt;img src=x onerror=alert(2)&gt;",
        ),
    ] {
        let answer = app
            .authorize(&client_id, &[("redirect_uri", redirect_uri)], Some(&cookie))
            .await;
        assert_error_page(&answer, StatusCode::BAD_REQUEST, title, redirect_uri);
        assert!(answer.body.contains(escaped), "{}", answer.body);
        assert!(!answer.body.contains(markup), "{}", answer.body);
    }
}

#[tokio::test]
async fn loopback_redirect_uris_match_on_any_port() {
    let app = TestApp::new(&[]);
    let client_id = app.public_client("CLI").await;
    let cookie = app.sign_in().await;
    let answer = app
        .authorize(
            &client_id,
            &[("redirect_uri", "http://localhost:53682/callback")],
            Some(&cookie),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert!(answer.body.contains("loopback-warning"));
    let approved = app
        .get(&TestApp::link(&answer, "approve"), Some(&cookie))
        .await;
    assert!(approved
        .location()
        .starts_with("http://localhost:53682/callback?code="));
}

/// The later errors of an authorization request, each with the error it must carry.
const LATER_ERRORS: [(Overrides<'static>, &str); 7] = [
    (&[("code_challenge", "")], "invalid_request"),
    (&[("code_challenge_method", "plain")], "invalid_request"),
    (&[("code_challenge_method", "")], "invalid_request"),
    (&[("response_type", "token")], "unsupported_response_type"),
    (&[("response_type", "")], "invalid_request"),
    (
        &[("resource", "https://other.example/mcp")],
        "invalid_target",
    ),
    (&[("scope", "admin everything")], "invalid_scope"),
];

/// An app with the static client `claude-fixed` (redirect `https://client.example/cb`),
/// and its secret.
fn with_static_client() -> (TestApp, &'static str) {
    let secret = "a-static-secret-of-more-than-32-characters";
    let app = TestApp::new(&[
        "--static-client-id",
        "claude-fixed",
        "--static-client-secret",
        secret,
        "--static-client-redirect-uris",
        "https://client.example/cb",
    ]);
    (app, secret)
}

#[tokio::test]
async fn later_errors_go_back_to_a_verified_client_with_state_and_iss() {
    let (app, _) = with_static_client();
    for (extra, error) in LATER_ERRORS {
        let answer = app.authorize("claude-fixed", extra, None).await;
        assert_eq!(
            answer.status,
            StatusCode::SEE_OTHER,
            "{extra:?}: {}",
            answer.body
        );
        assert!(answer.location().starts_with("https://client.example/cb?"));
        assert_eq!(answer.param("error").as_deref(), Some(error), "{extra:?}");
        assert_eq!(answer.param("state").as_deref(), Some("xyz-state"));
        assert_eq!(answer.param("iss").as_deref(), Some(PUBLIC_URL));
        assert!(answer.param("code").is_none());
    }
    // Each consent page keeps the request, `state` too: a long one is refused, and
    // not sent back.
    let long = "s".repeat(2049);
    let answer = app
        .authorize("claude-fixed", &[("state", &long)], None)
        .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    assert_eq!(answer.param("error").as_deref(), Some("invalid_request"));
    assert_eq!(answer.param("state"), None);
    let longest = "s".repeat(2048);
    let cookie = app.sign_in().await;
    let consent = app
        .authorize("claude-fixed", &[("state", &longest)], Some(&cookie))
        .await;
    assert_eq!(consent.status, StatusCode::OK, "{}", consent.body);
}

/// RFC 8707 §2 lets a request name several resources; a grant here is for one, so
/// several different ones are `invalid_target` sent back to the client (not an
/// unreadable request), and one named twice is that one.
#[tokio::test]
async fn several_resources_in_one_request_are_invalid_target() {
    let (app, _) = with_static_client();
    let cookie = app.sign_in().await;
    let challenge = challenge(VERIFIER);
    let request = |resources: &[&str]| {
        let mut params = vec![
            ("client_id", "claude-fixed"),
            ("redirect_uri", "https://client.example/cb"),
            ("response_type", "code"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("state", "xyz-state"),
        ];
        params.extend(resources.iter().map(|r| ("resource", *r)));
        format!(
            "/oauth/authorize?{}",
            serde_urlencoded::to_string(&params).expect("query")
        )
    };
    let ours = "https://gate.example.com/mcp";
    let several = app
        .get(
            &request(&[ours, "https://other.example/mcp"]),
            Some(&cookie),
        )
        .await;
    assert_eq!(several.status, StatusCode::SEE_OTHER, "{}", several.body);
    assert_eq!(several.param("error").as_deref(), Some("invalid_target"));
    assert_eq!(several.param("state").as_deref(), Some("xyz-state"));
    assert_eq!(several.param("iss").as_deref(), Some(PUBLIC_URL));
    let twice = app.get(&request(&[ours, ours]), Some(&cookie)).await;
    assert_eq!(twice.status, StatusCode::OK, "{}", twice.body);
    assert!(twice.body.contains("approve?ticket="), "{}", twice.body);
}

/// RFC 9700 §4.11.2: before the owner has acted, a self-registered client (whose
/// redirect URI anyone may have chosen) gets a page naming the error and the
/// destination, with a link, never an automatic redirect.
#[tokio::test]
async fn later_errors_of_a_self_registered_client_are_shown_not_redirected() {
    let app = TestApp::new(&[]);
    let client_id = app.public_client("Test").await;
    assert_later_errors_are_shown(&app, &client_id).await;
}

/// Each of [`LATER_ERRORS`] is a page naming the error and the destination, with a
/// link there (`error`, `state`, `iss`), and no redirect.
async fn assert_later_errors_are_shown(app: &TestApp, client_id: &str) {
    for (extra, error) in LATER_ERRORS {
        let answer = app.authorize(client_id, extra, None).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{extra:?}: {}",
            answer.body
        );
        assert!(answer.headers.get(header::LOCATION).is_none());
        assert!(answer
            .body
            .contains("data-testid=\"redirect-host\">client.example<"));
        let marker = "data-testid=\"continue\" href=\"";
        let start = answer.body.find(marker).expect("a continue link") + marker.len();
        let end = start + answer.body[start..].find('"').expect("end");
        let href = answer.body[start..end].replace("&amp;", "&");
        let url = url::Url::parse(&href).expect("absolute");
        assert!(href.starts_with("https://client.example/cb?"), "{href}");
        let param = |name: &str| {
            url.query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        assert_eq!(param("error").as_deref(), Some(error), "{extra:?}");
        assert_eq!(param("state").as_deref(), Some("xyz-state"));
        assert_eq!(param("iss").as_deref(), Some(PUBLIC_URL));
    }
}

#[tokio::test]
async fn without_a_session_sign_in_comes_first_and_returns_to_the_request() {
    let app = TestApp::new(&[]);
    let client_id = app.public_client("Test").await;
    let answer = app.authorize(&client_id, &[], None).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    let location = answer.location();
    assert!(
        location.starts_with("/oauth/login?return_to=%2Foauth%2Fauthorize%3F"),
        "{location}"
    );

    let page = app.get(&location, None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("type=\"password\""));
    assert!(page
        .body
        .contains("name=\"return_to\" value=\"/oauth/authorize?"));

    // Signing in with that return_to leads back to the same authorization request.
    let return_to =
        url::form_urlencoded::parse(location.split_once('?').expect("query").1.as_bytes())
            .find(|(k, _)| k == "return_to")
            .map(|(_, v)| v.into_owned())
            .expect("return_to");
    let signed_in = app
        .post_form(
            "/oauth/login",
            &[("password", PASSWORD), ("return_to", &return_to)],
            None,
        )
        .await;
    assert_eq!(signed_in.status, StatusCode::SEE_OTHER);
    assert_eq!(signed_in.location(), return_to);
}

#[tokio::test]
async fn sign_in_never_redirects_off_site() {
    let app = TestApp::new(&[]);
    for target in [
        "https://evil.example/",
        "//evil.example/",
        "/oauth/authorize\r\nX: y",
    ] {
        let answer = app
            .post_form(
                "/oauth/login",
                &[("password", PASSWORD), ("return_to", target)],
                None,
            )
            .await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER);
        assert_eq!(answer.location(), "/");
    }
}

#[tokio::test]
async fn the_consent_page_names_client_host_and_scopes_escaped_and_unframeable() {
    let app = TestApp::new(&[]);
    let client_id = app.public_client("<script>alert(1)</script>").await;
    let cookie = app.sign_in().await;
    let answer = app
        .authorize(
            &client_id,
            &[("scope", "read:articles <img src=x onerror=alert(2)>")],
            Some(&cookie),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.headers[header::X_FRAME_OPTIONS], "DENY");
    assert_eq!(
        answer.headers[header::CONTENT_SECURITY_POLICY],
        "frame-ancestors 'none'"
    );
    assert_eq!(answer.headers[header::CACHE_CONTROL], "no-store");
    let body = &answer.body;
    assert!(
        body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{body}"
    );
    assert!(!body.contains("<script>alert(1)"), "{body}");
    assert!(!body.contains("<img src=x"), "{body}");
    assert!(
        body.contains("&lt;img"),
        "ignored scopes are shown as text: {body}"
    );
    assert!(body.contains("client.example"), "the redirect host: {body}");
    assert!(
        body.contains("Read your articles"),
        "scopes in plain words: {body}"
    );
    assert!(
        !body.contains("Create, edit, publish"),
        "only the granted scopes: {body}"
    );
    assert!(body.contains("Unverified"), "{body}");
}

// ----- approve and deny ------------------------------------------------------------------

#[tokio::test]
async fn approval_sends_code_state_and_iss_once() {
    let app = TestApp::new(&[]);
    let client_id = app.public_client("Test").await;
    let cookie = app.sign_in().await;
    let consent = app.authorize(&client_id, &[], Some(&cookie)).await;
    let approve = TestApp::link(&consent, "approve");

    let approved = app.get(&approve, Some(&cookie)).await;
    assert_eq!(approved.status, StatusCode::SEE_OTHER);
    assert!(approved
        .location()
        .starts_with("https://client.example/cb?code="));
    assert!(approved.param("code").is_some_and(|c| c.len() > 43));
    assert_eq!(approved.param("state").as_deref(), Some("xyz-state"));
    assert_eq!(approved.param("iss").as_deref(), Some(PUBLIC_URL));

    let replayed = app.get(&approve, Some(&cookie)).await;
    assert_eq!(replayed.status, StatusCode::BAD_REQUEST);
    assert!(replayed.headers.get(header::LOCATION).is_none());
}

#[tokio::test]
async fn an_approve_link_from_another_session_approves_nothing() {
    let app = TestApp::new(&[]);
    let client_id = app.public_client("Test").await;
    let owner = app.sign_in().await;
    let other = app.sign_in().await;
    assert_ne!(owner, other);
    let consent = app.authorize(&client_id, &[], Some(&owner)).await;
    let approve = TestApp::link(&consent, "approve");

    for cookie in [Some(other.as_str()), None, Some("gatehouse_session=forged")] {
        let answer = app.get(&approve, cookie).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{cookie:?}");
        assert!(answer.headers.get(header::LOCATION).is_none());
    }
    let forged = app
        .get("/oauth/authorize/approve?ticket=forged", Some(&owner))
        .await;
    assert_eq!(forged.status, StatusCode::BAD_REQUEST);
    // The foreign attempts did not burn the owner's link.
    let answer = app.get(&approve, Some(&owner)).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn deny_sends_access_denied() {
    let app = TestApp::new(&[]);
    let client_id = app.public_client("Test").await;
    let cookie = app.sign_in().await;
    let consent = app.authorize(&client_id, &[], Some(&cookie)).await;
    let denied = app
        .get(&TestApp::link(&consent, "deny"), Some(&cookie))
        .await;
    assert_eq!(denied.status, StatusCode::SEE_OTHER);
    assert_eq!(denied.param("error").as_deref(), Some("access_denied"));
    assert_eq!(denied.param("state").as_deref(), Some("xyz-state"));
    assert_eq!(denied.param("iss").as_deref(), Some(PUBLIC_URL));
    assert!(denied.param("code").is_none());
    // The ticket is spent: approving afterwards does nothing.
    let approve = app
        .get(&TestApp::link(&consent, "approve"), Some(&cookie))
        .await;
    assert_eq!(approve.status, StatusCode::BAD_REQUEST);
}

/// The consent page's "Approve read-only" link, if it has one.
fn read_only_link(consent: &Answer) -> Option<String> {
    let at = consent.body.find("data-testid=\"approve-read-only\"")?;
    let rest = &consent.body[at..];
    let start = rest.find("href=\"")? + 6;
    let end = start + rest[start..].find('"')?;
    Some(rest[start..end].replace("&amp;", "&"))
}

#[tokio::test]
async fn the_owner_can_approve_only_the_read_scope_of_a_request_that_writes() {
    let app = TestApp::new(&[]);
    let client_id = app.public_client("Test").await;
    let cookie = app.sign_in().await;

    // Nothing to narrow when only reading is asked.
    let reading = app
        .authorize(&client_id, &[("scope", "read:articles")], Some(&cookie))
        .await;
    assert_eq!(reading.status, StatusCode::OK);
    assert_eq!(read_only_link(&reading), None);

    let consent = app.authorize(&client_id, &[], Some(&cookie)).await;
    let read_only = read_only_link(&consent).expect("an approve read-only link");
    assert_ne!(read_only, TestApp::link(&consent, "approve"));
    let approved = app.get(&read_only, Some(&cookie)).await;
    assert_eq!(approved.status, StatusCode::SEE_OTHER, "{}", approved.body);
    assert_eq!(approved.param("state").as_deref(), Some("xyz-state"));
    let code = approved.param("code").expect("code");
    let tokens = app.redeem(&client_id, &code).await;
    assert_eq!(tokens.status, StatusCode::OK, "{}", tokens.body);
    assert_eq!(tokens.json()["scope"], "read:articles");
    let refreshed = app
        .refresh(
            &client_id,
            tokens.json()["refresh_token"].as_str().expect("present"),
            &[],
        )
        .await;
    assert_eq!(
        refreshed.json()["scope"],
        "read:articles",
        "{}",
        refreshed.body
    );
}

#[tokio::test]
async fn the_first_choice_on_a_consent_page_voids_the_others() {
    let app = TestApp::new(&[]);
    let client_id = app.public_client("Test").await;
    let cookie = app.sign_in().await;

    // Approving everything voids approving read-only, and the reverse.
    let consent = app.authorize(&client_id, &[], Some(&cookie)).await;
    let full = app
        .get(&TestApp::link(&consent, "approve"), Some(&cookie))
        .await;
    assert_eq!(full.status, StatusCode::SEE_OTHER);
    let late = app
        .get(&read_only_link(&consent).expect("present"), Some(&cookie))
        .await;
    assert_eq!(late.status, StatusCode::BAD_REQUEST);
    assert!(late.headers.get(header::LOCATION).is_none());

    let consent = app.authorize(&client_id, &[], Some(&cookie)).await;
    let narrow = app
        .get(&read_only_link(&consent).expect("present"), Some(&cookie))
        .await;
    assert_eq!(narrow.status, StatusCode::SEE_OTHER);
    for which in ["approve", "deny"] {
        let late = app
            .get(&TestApp::link(&consent, which), Some(&cookie))
            .await;
        assert_eq!(late.status, StatusCode::BAD_REQUEST, "{which}");
    }

    // Denying voids the read-only choice too.
    let consent = app.authorize(&client_id, &[], Some(&cookie)).await;
    let denied = app
        .get(&TestApp::link(&consent, "deny"), Some(&cookie))
        .await;
    assert_eq!(denied.param("error").as_deref(), Some("access_denied"));
    let late = app
        .get(&read_only_link(&consent).expect("present"), Some(&cookie))
        .await;
    assert_eq!(late.status, StatusCode::BAD_REQUEST);

    // Another session's click burns neither link.
    let other = app.sign_in().await;
    let consent = app.authorize(&client_id, &[], Some(&cookie)).await;
    let foreign = app
        .get(&read_only_link(&consent).expect("present"), Some(&other))
        .await;
    assert_eq!(foreign.status, StatusCode::BAD_REQUEST);
    let owners = app
        .get(&read_only_link(&consent).expect("present"), Some(&cookie))
        .await;
    assert_eq!(owners.status, StatusCode::SEE_OTHER);
}

// ----- token endpoint ----------------------------------------------------------------------

#[tokio::test]
async fn a_code_is_redeemed_with_pkce_for_tokens_bound_to_the_resource() {
    let app = TestApp::new(&[]);
    let (client_id, _, code) = app.code_for("read:articles").await;
    let answer = app.redeem(&client_id, &code).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.headers[header::CACHE_CONTROL], "no-store");
    let tokens = answer.json();
    assert_no_nulls(&tokens);
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 3600);
    assert_eq!(tokens["scope"], "read:articles");
    let access = tokens["access_token"].as_str().expect("access token");
    assert!(tokens["refresh_token"].is_string());
    let verified = app
        .state
        .auth
        .verify_access_token(access, &ResourceUri::new(MCP_URL.into()))
        .await
        .expect("store")
        .expect("valid");
    assert_eq!(verified.resource.as_str(), MCP_URL);
    assert_eq!(verified.client_id.as_str(), client_id);
    assert_eq!(verified.subject, "owner");

    // Nothing raw is stored: neither the code nor the tokens.
    for (key, value) in app.store.scan("").await.expect("scan") {
        let text = format!("{key} {}", String::from_utf8_lossy(&value));
        for secret in [
            code.as_str(),
            access,
            tokens["refresh_token"].as_str().expect("rt"),
        ] {
            let secret_part = secret.rsplit('.').next().expect("secret");
            assert!(!text.contains(secret_part), "{key} holds a raw secret");
        }
    }
}

#[tokio::test]
async fn code_redemption_checks_verifier_redirect_uri_resource_and_client() {
    let app = TestApp::new(&[]);
    let other_client = app.public_client("Other").await;
    let cases: [(Overrides, StatusCode, &str); 5] = [
        (
            &[(
                "code_verifier",
                "wrong-verifier-wrong-verifier-wrong-verifier-0000",
            )],
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            &[("redirect_uri", "https://client.example/other")],
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            &[("resource", "https://other.example/mcp")],
            StatusCode::BAD_REQUEST,
            "invalid_target",
        ),
        (
            &[("client_id", other_client.as_str())],
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            &[("code_verifier", "")],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ];
    for (overrides, status, error) in cases {
        let (client_id, _, code) = app.code_for("read:articles").await;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", "https://client.example/cb"),
            ("code_verifier", VERIFIER),
            ("client_id", client_id.as_str()),
        ];
        for (name, value) in overrides {
            form.retain(|(n, _)| n != name);
            if !value.is_empty() {
                form.push((name, value));
            }
        }
        let answer = app.post_form("/oauth/token", &form, None).await;
        assert_oauth_error(&answer, status, error);
    }
}

#[tokio::test]
async fn a_replayed_code_fails_and_revokes_what_it_issued() {
    let app = TestApp::new(&[]);
    let (client_id, _, code) = app.code_for("read:articles").await;
    let first = app.redeem(&client_id, &code).await.json();
    let access = first["access_token"].as_str().expect("token");
    assert!(app.token_is_valid(access).await);

    // Whoever saw the used code (a browser's history, a callback's log) but lacks the
    // verifier is refused, and revokes nothing.
    let guess = app
        .post_form(
            "/oauth/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("code_verifier", &"x".repeat(43)),
                ("client_id", &client_id),
                ("redirect_uri", "https://client.example/cb"),
            ],
            None,
        )
        .await;
    assert_oauth_error(&guess, StatusCode::BAD_REQUEST, "invalid_grant");
    assert!(app.token_is_valid(access).await, "the grant lives on");

    let replay = app.redeem(&client_id, &code).await;
    assert_oauth_error(&replay, StatusCode::BAD_REQUEST, "invalid_grant");
    assert!(
        !app.token_is_valid(access).await,
        "the first redemption's token is revoked"
    );
    let refresh = app
        .refresh(
            &client_id,
            first["refresh_token"].as_str().expect("rt"),
            &[],
        )
        .await;
    assert_oauth_error(&refresh, StatusCode::BAD_REQUEST, "invalid_grant");
}

/// The upstream `web` the next tests configure.
const WEB: &str = "https://gate.example.com/mcp/web";

/// `app` restarted with another server configured as `web`, where `refresh` (of
/// `client_id`) is refused.
async fn refused_once_web_is_another_server(app: TestApp, client_id: &str, refresh: &str) {
    let app = app
        .restart(&["--upstream", "web=http://127.0.0.1:10/mcp"])
        .await;
    let refused = app.refresh(client_id, refresh, &[]).await;
    assert_oauth_error(&refused, StatusCode::BAD_REQUEST, "invalid_grant");
}

/// A grant is for the server the owner consented to: another server configured
/// later under the same name (here: at another address) does not inherit it. Its
/// next refresh, or the redemption of a code issued before, is refused and revokes
/// the grant. The same server taken out for a while and put back keeps its grants,
/// and an instance that does not serve it (yet, in a rolling change) refreshes them:
/// its tokens work only where it is served.
#[tokio::test]
async fn a_grant_does_not_pass_to_another_server_under_the_same_name() {
    let first = ["--upstream", "web=http://127.0.0.1:9/mcp?key=1"];
    let app = TestApp::new(&first);
    let (client_id, tokens) = app.tokens_at(WEB, "web:read").await;
    let refresh = tokens["refresh_token"].as_str().expect("rt").to_owned();
    let refreshed = |answer: Answer| {
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        let tokens = answer.json();
        let token = |name: &str| tokens[name].as_str().expect("token").to_owned();
        (token("refresh_token"), token("access_token"))
    };

    let app = app.restart(&[]).await;
    let (refresh, _) = refreshed(app.refresh(&client_id, &refresh, &[]).await);
    // Back, with another key in its query: the same server.
    let app = app
        .restart(&["--upstream", "web=http://127.0.0.1:9/mcp?key=2"])
        .await;
    let (refresh, access) = refreshed(app.refresh(&client_id, &refresh, &[]).await);
    let pending = app.public_client("Second client").await;
    let cookie = app.sign_in().await;
    let consent = app
        .authorize(
            &pending,
            &[("scope", "web:read"), ("resource", WEB)],
            Some(&cookie),
        )
        .await;
    let approved = app
        .get(&TestApp::link(&consent, "approve"), Some(&cookie))
        .await;
    let code = approved.param("code").expect("code");

    // A consent page shown for this server, approved once it was replaced.
    let (third, cookie) = (app.public_client("Third client").await, app.sign_in().await);
    let consent = app
        .authorize(
            &third,
            &[("scope", "web:read"), ("resource", WEB)],
            Some(&cookie),
        )
        .await;
    let valid = |app: &TestApp| {
        let access = access.clone();
        let auth = app.state.auth.clone();
        async move {
            auth.verify_access_token(&access, &ResourceUri::new(WEB.into()))
                .await
                .expect("store")
                .is_some()
        }
    };
    assert!(valid(&app).await);

    let app = app
        .restart(&["--upstream", "web=http://127.0.0.1:10/mcp"])
        .await;
    assert!(
        !valid(&app).await,
        "an access token works only at its server"
    );
    let approved = app
        .get(&TestApp::link(&consent, "approve"), Some(&cookie))
        .await;
    assert_eq!(approved.status, StatusCode::CONFLICT, "{}", approved.body);
    assert!(approved.body.contains("Nothing was approved"));
    let refused = app.refresh(&client_id, &refresh, &[]).await;
    assert_oauth_error(&refused, StatusCode::BAD_REQUEST, "invalid_grant");
    let refused = app.redeem_at(&pending, &code, WEB).await;
    assert_oauth_error(&refused, StatusCode::BAD_REQUEST, "invalid_grant");
    // Revoked, not only refused: the first server back does not bring them back.
    let app = app.restart(&first).await;
    let refused = app.refresh(&client_id, &refresh, &[]).await;
    assert_oauth_error(&refused, StatusCode::BAD_REQUEST, "invalid_grant");
    let refused = app.redeem_at(&pending, &code, WEB).await;
    assert_oauth_error(&refused, StatusCode::BAD_REQUEST, "invalid_grant");
}

/// A grant written without its server (made before grants named one, or rewritten
/// by such a version during a rolling upgrade) names the server serving it at its
/// next refresh, and from then on passes to no other one.
#[tokio::test]
async fn a_grant_without_its_server_takes_the_one_serving_it_at_its_next_refresh() {
    use gatehouse::{oauth::records::grant_key, store::Group};
    let first = ["--upstream", "web=http://127.0.0.1:9/mcp"];
    let app = TestApp::new(&first);
    let (client_id, tokens) = app.tokens_at(WEB, "web:read").await;
    let refresh = tokens["refresh_token"].as_str().expect("rt");
    let group = Group::parse(refresh.split('.').nth(1).expect("grant id")).expect("group");
    let key = grant_key(&group);
    let record = app.store.get(&key).await.expect("get").expect("grant");
    let mut grant: serde_json::Value = serde_json::from_slice(&record).expect("json");
    assert!(grant["server"].is_string(), "{grant}");
    grant.as_object_mut().expect("object").remove("server");
    let legacy = serde_json::to_vec(&grant).expect("json");
    assert!(app
        .store
        .compare_and_swap(
            &key,
            &record,
            &legacy,
            gatehouse::store::Put::ttl(Duration::from_secs(3600)).in_group(&group)
        )
        .await
        .expect("swap"));

    let answer = app.refresh(&client_id, refresh, &[]).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let refresh = answer.json()["refresh_token"]
        .as_str()
        .expect("rt")
        .to_owned();
    refused_once_web_is_another_server(app, &client_id, &refresh).await;
}

/// A consent page shown by a version that did not name the server (a restart onto
/// this one, or a rolling upgrade) still approves, and its grant and tokens take the
/// server serving it then.
#[tokio::test]
async fn a_consent_page_that_named_no_server_approves_the_one_serving_it() {
    use gatehouse::{oauth::records::ticket_key, store::Put};
    let app = TestApp::new(&["--upstream", "web=http://127.0.0.1:9/mcp"]);
    let client_id = app.public_client("Test client").await;
    let cookie = app.sign_in().await;
    let consent = app
        .authorize(
            &client_id,
            &[("scope", "web:read"), ("resource", WEB)],
            Some(&cookie),
        )
        .await;
    let link = TestApp::link(&consent, "approve");
    let ticket = link.split("ticket=").nth(1).expect("ticket");
    let key = ticket_key(ticket);
    let record = app.store.get(&key).await.expect("get").expect("ticket");
    let mut stored: serde_json::Value = serde_json::from_slice(&record).expect("json");
    assert!(stored["request"]["server"].is_string(), "{stored}");
    stored["request"]
        .as_object_mut()
        .expect("request")
        .remove("server");
    let old = serde_json::to_vec(&stored).expect("json");
    app.store
        .put(&key, &old, Put::ttl(Duration::from_secs(600)))
        .await
        .expect("put");

    let approved = app.get(&link, Some(&cookie)).await;
    assert_eq!(approved.status, StatusCode::SEE_OTHER, "{}", approved.body);
    let code = approved.param("code").expect("code");
    let tokens = app.redeem_at(&client_id, &code, WEB).await;
    assert_eq!(tokens.status, StatusCode::OK, "{}", tokens.body);
    let refresh = tokens.json()["refresh_token"]
        .as_str()
        .expect("rt")
        .to_owned();
    refused_once_web_is_another_server(app, &client_id, &refresh).await;
}

/// A redemption cut short by the store before the code is marked used leaves the
/// code for the client's retry. (Keeping a self-registered client alive came after
/// the code's swap: its failure made the retry a replay that revoked the grant.)
#[tokio::test]
async fn a_redemption_interrupted_before_the_code_is_used_succeeds_when_retried() {
    // The writes: the client kept, the access token, then the code's swap.
    for fail_at in 0..3 {
        let (app, faults) = TestApp::with_faults();
        let (client_id, _, code) = app.code_for("read:articles").await;
        // The activity so far written now, not amid the writes counted below.
        app.state.audit.flush().await.expect("flush");
        faults.set(faults::Mode::WritesFailAfter(fail_at));
        let first = app.redeem(&client_id, &code).await;
        faults.set(faults::Mode::Pass);
        assert_eq!(
            first.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{fail_at}: {}",
            first.body
        );
        let retry = app.redeem(&client_id, &code).await;
        assert_eq!(retry.status, StatusCode::OK, "{fail_at}: {}", retry.body);
        let access = retry.json()["access_token"]
            .as_str()
            .expect("at")
            .to_owned();
        assert!(app.token_is_valid(&access).await, "{fail_at}");
    }
}

/// Without a grace window a retried refresh is a reuse: so a refresh whose rotation
/// is done is answered with its pair even when tidying up after it fails (an access
/// token the rotation replaced, deleted after the swap). Before the swap, a failure
/// leaves the refresh token live for the retry.
#[tokio::test]
async fn a_refresh_that_rotated_is_answered_even_when_tidying_up_fails() {
    for fail_at in 0..4 {
        let (app, faults) = TestApp::with_faults_and_args(&["--refresh-grace", "0s"]);
        let (client_id, tokens) = app.tokens_for("read:articles").await;
        let mut refresh = tokens["refresh_token"].as_str().expect("rt").to_owned();
        // Two access tokens are kept per grant: the next refresh replaces one.
        let first = app.refresh(&client_id, &refresh, &[]).await;
        assert_eq!(first.status, StatusCode::OK, "{}", first.body);
        refresh = first.json()["refresh_token"]
            .as_str()
            .expect("rt")
            .to_owned();
        app.state.audit.flush().await.expect("flush");

        faults.set(faults::Mode::WritesFailAfter(fail_at));
        let answer = app.refresh(&client_id, &refresh, &[]).await;
        faults.set(faults::Mode::Pass);
        let pair = if answer.status == StatusCode::OK {
            answer.json()
        } else {
            assert_eq!(
                answer.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{}",
                answer.body
            );
            let retried = app.refresh(&client_id, &refresh, &[]).await;
            assert_eq!(
                retried.status,
                StatusCode::OK,
                "write {fail_at} failing answered 503, then the retry: {}",
                retried.body
            );
            retried.json()
        };
        let access = pair["access_token"].as_str().expect("at");
        assert!(app.token_is_valid(access).await, "write {fail_at}");
        let next = app
            .refresh(&client_id, pair["refresh_token"].as_str().expect("rt"), &[])
            .await;
        assert_eq!(
            next.status,
            StatusCode::OK,
            "write {fail_at}: {}",
            next.body
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_redemptions_revoke_and_concurrent_refreshes_rotate_once() {
    let app = Arc::new(TestApp::new(&[]));
    concurrent_redemptions_and_refreshes(&app, &app).await;
}

/// A refresh cut short by the store at any of its writes (Redis went away, the
/// process stopped) is retried with the same refresh token and succeeds: our failure
/// never signs the client out, and the pair it ends up with is live and rotates in
/// turn. (Storing the grant before the successor left a rotated grant whose pair no
/// one could obtain, and the retry was refused.)
#[tokio::test]
async fn a_refresh_interrupted_at_any_write_succeeds_when_retried() {
    for fail_at in 0..8 {
        let (app, faults) = TestApp::with_faults();
        let (client_id, tokens) = app.tokens_for("read:articles").await;
        let refresh = tokens["refresh_token"]
            .as_str()
            .expect("refresh")
            .to_owned();

        faults.set(faults::Mode::WritesFailAfter(fail_at));
        let first = app.refresh(&client_id, &refresh, &[]).await;
        faults.set(faults::Mode::Pass);
        assert!(
            [StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE].contains(&first.status),
            "write {fail_at} failing: {} {}",
            first.status,
            first.body
        );

        let retried = app.refresh(&client_id, &refresh, &[]).await;
        assert_eq!(
            retried.status,
            StatusCode::OK,
            "write {fail_at} failing answered {}, then the retry: {}",
            first.status,
            retried.body
        );
        let pair = retried.json();
        if first.status == StatusCode::OK {
            assert_eq!(
                first.json(),
                pair,
                "the retry within the grace window gets the same pair"
            );
        }
        let access = pair["access_token"].as_str().expect("access");
        assert!(
            app.token_is_valid(access).await,
            "write {fail_at}: the pair's access token is live"
        );
        let next = app
            .refresh(
                &client_id,
                pair["refresh_token"].as_str().expect("refresh"),
                &[],
            )
            .await;
        assert_eq!(
            next.status,
            StatusCode::OK,
            "write {fail_at}: {}",
            next.body
        );
    }
}

#[tokio::test]
async fn refresh_rotates_with_a_grace_window_then_revokes_on_reuse() {
    let app = TestApp::new(&["--refresh-grace", "1s"]);
    let (client_id, _, code) = app.code_for("read:articles write:articles").await;
    let first = app.redeem(&client_id, &code).await.json();
    let rt1 = first["refresh_token"].as_str().expect("rt").to_owned();

    let second = app.refresh(&client_id, &rt1, &[]).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.body);
    assert_eq!(second.headers[header::CACHE_CONTROL], "no-store");
    let second = second.json();
    let rt2 = second["refresh_token"].as_str().expect("rt").to_owned();
    assert_ne!(rt1, rt2, "refresh tokens rotate");
    assert_ne!(first["access_token"], second["access_token"]);

    // A retry asks what the lost request asked: another resource or other scopes
    // are refused (and revoke nothing).
    let retarget = app
        .refresh(
            &client_id,
            &rt1,
            &[("resource", "https://other.example/mcp")],
        )
        .await;
    assert_oauth_error(&retarget, StatusCode::BAD_REQUEST, "invalid_target");
    let narrower = app
        .refresh(&client_id, &rt1, &[("scope", "read:articles")])
        .await;
    assert_oauth_error(&narrower, StatusCode::BAD_REQUEST, "invalid_scope");

    // A lost response: the same old token within the window yields the same pair.
    let again = app.refresh(&client_id, &rt1, &[]).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.json(), second);

    // Past the window, the old token is a reuse.
    app.clock.advance(Duration::from_secs(2));
    let reuse = app.refresh(&client_id, &rt1, &[]).await;
    assert_oauth_error(&reuse, StatusCode::BAD_REQUEST, "invalid_grant");
    // The reuse revoked the whole grant: the successor no longer works either.
    assert!(
        !app.token_is_valid(second["access_token"].as_str().expect("at"))
            .await
    );
    let successor = app.refresh(&client_id, &rt2, &[]).await;
    assert_oauth_error(&successor, StatusCode::BAD_REQUEST, "invalid_grant");
}

/// Without a grace window, the token just rotated is a reuse at once, in the very
/// second of its rotation: it revokes the grant (it used to wait for a successor
/// that is never stored, then revoke nothing).
#[tokio::test]
async fn without_a_grace_window_a_reuse_in_the_same_second_revokes_the_grant() {
    let app = TestApp::new(&["--refresh-grace", "0s"]);
    let (client_id, tokens) = app.tokens_for("read:articles").await;
    let rt1 = tokens["refresh_token"].as_str().expect("rt").to_owned();
    let second = app.refresh(&client_id, &rt1, &[]).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.body);
    let second = second.json();

    let reuse = app.refresh(&client_id, &rt1, &[]).await;
    assert_oauth_error(&reuse, StatusCode::BAD_REQUEST, "invalid_grant");
    assert!(
        !app.token_is_valid(second["access_token"].as_str().expect("at"))
            .await
    );
    let rt2 = second["refresh_token"].as_str().expect("rt");
    let successor = app.refresh(&client_id, rt2, &[]).await;
    assert_oauth_error(&successor, StatusCode::BAD_REQUEST, "invalid_grant");
}

/// The just-rotated token presented once its sealed pair is gone (it expired a
/// moment before the rotation's own grace, which a retry that finished another
/// request's rotation records later) is a retry come too late, not a theft: it is
/// refused, and the grant lives on.
#[tokio::test]
async fn a_late_retry_whose_successor_expired_is_refused_without_revoking() {
    let app = TestApp::new(&["--refresh-grace", "30s"]);
    let (client_id, tokens) = app.tokens_for("read:articles").await;
    let rt1 = tokens["refresh_token"].as_str().expect("rt").to_owned();
    let second = app.refresh(&client_id, &rt1, &[]).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.body);
    let second = second.json();
    let sealed: Vec<_> = app
        .store
        .scan("next:")
        .await
        .expect("scan")
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(sealed.len(), 1, "{sealed:?}");
    app.store.delete(&sealed[0]).await.expect("delete");

    let late = app.refresh(&client_id, &rt1, &[]).await;
    assert_oauth_error(&late, StatusCode::BAD_REQUEST, "invalid_grant");
    assert!(
        app.token_is_valid(second["access_token"].as_str().expect("at"))
            .await
    );
    let rt2 = second["refresh_token"].as_str().expect("rt");
    let third = app.refresh(&client_id, rt2, &[]).await;
    assert_eq!(third.status, StatusCode::OK, "{}", third.body);
}

/// Someone holding a stolen refresh token must not make the token its client holds
/// unknown (refused, revoking nothing) by rotating 16 times in a second: a rotation
/// that would forget a token retired less than an access token's lifetime ago waits,
/// and the client's token, presented meanwhile, is a reuse that revokes the grant.
/// A client refreshing at its pace never waits.
#[tokio::test]
async fn quick_rotations_cannot_make_a_clients_token_unknown() {
    let app = TestApp::new(&["--access-token-ttl", "1h"]);
    let (client_id, tokens) = app.tokens_for("read:articles").await;
    let held = tokens["refresh_token"].as_str().expect("rt").to_owned();
    let mut stolen = held.clone();
    for _ in 0..16 {
        stolen = app.rotate(&client_id, &stolen).await["refresh_token"]
            .as_str()
            .expect("rt")
            .to_owned();
    }
    let held_back = app.refresh(&client_id, &stolen, &[]).await;
    assert_oauth_error(
        &held_back,
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
    );
    // Until the first of the 16 was retired an hour ago (the clock runs meanwhile).
    let wait: u64 = held_back.headers[header::RETRY_AFTER]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((3590..=3600).contains(&wait), "{wait}");
    let reuse = app.refresh(&client_id, &held, &[]).await;
    assert_oauth_error(&reuse, StatusCode::BAD_REQUEST, "invalid_grant");
    let revoked = app.refresh(&client_id, &stolen, &[]).await;
    assert_oauth_error(&revoked, StatusCode::BAD_REQUEST, "invalid_grant");

    // Turned off, nothing waits.
    let off = TestApp::new(&["--refresh-reuse-window", "0s"]);
    let (client_id, tokens) = off.tokens_for("read:articles").await;
    let mut refresh = tokens["refresh_token"].as_str().expect("rt").to_owned();
    for _ in 0..20 {
        refresh = off.rotate(&client_id, &refresh).await["refresh_token"]
            .as_str()
            .expect("rt")
            .to_owned();
    }

    // At a client's pace (here: 16 at once, then an hour later), nothing waits.
    let (client_id, tokens) = app.tokens_for("read:articles").await;
    let mut refresh = tokens["refresh_token"].as_str().expect("rt").to_owned();
    for round in 0..20 {
        if round == 16 {
            app.clock.advance(Duration::from_secs(3600));
        }
        refresh = app.rotate(&client_id, &refresh).await["refresh_token"]
            .as_str()
            .expect("rt")
            .to_owned();
    }
}

/// The grant id is in clear in every token (and a code sits in a callback URL), so
/// anyone who saw one can make up a refresh token of that grant. Only a token the
/// grant really issued counts as a reuse; a made-up one revokes nothing.
#[tokio::test]
async fn a_made_up_refresh_token_of_a_grant_is_refused_and_revokes_nothing() {
    let app = TestApp::new(&[]);
    let (client_id, tokens) = app.tokens_for("read:articles").await;
    let access = tokens["access_token"].as_str().expect("access");
    let grant = access.split('.').nth(1).expect("grant id");
    let made_up = format!("ghr.{grant}.{}", "A".repeat(43));
    let refused = app.refresh(&client_id, &made_up, &[]).await;
    assert_oauth_error(&refused, StatusCode::BAD_REQUEST, "invalid_grant");
    assert!(app.token_is_valid(access).await, "the grant lives on");
    let real = app
        .refresh(
            &client_id,
            tokens["refresh_token"].as_str().expect("refresh"),
            &[],
        )
        .await;
    assert_eq!(real.status, StatusCode::OK, "{}", real.body);
}

#[tokio::test]
async fn refresh_may_narrow_scopes_but_not_widen_them_or_change_the_resource() {
    let app = TestApp::new(&[]);
    let (client_id, _, code) = app.code_for("read:articles").await;
    let tokens = app.redeem(&client_id, &code).await.json();
    let rt = tokens["refresh_token"].as_str().expect("rt").to_owned();

    let widen = app
        .refresh(
            &client_id,
            &rt,
            &[("scope", "read:articles write:articles")],
        )
        .await;
    assert_oauth_error(&widen, StatusCode::BAD_REQUEST, "invalid_scope");
    let retarget = app
        .refresh(
            &client_id,
            &rt,
            &[("resource", "https://other.example/mcp")],
        )
        .await;
    assert_oauth_error(&retarget, StatusCode::BAD_REQUEST, "invalid_target");
    let other_client = app.public_client("Other").await;
    let stolen = app.refresh(&other_client, &rt, &[]).await;
    assert_oauth_error(&stolen, StatusCode::BAD_REQUEST, "invalid_grant");

    let (client_id, _, code) = app.code_for("read:articles write:articles").await;
    let tokens = app.redeem(&client_id, &code).await.json();
    let narrowed = app
        .refresh(
            &client_id,
            tokens["refresh_token"].as_str().expect("rt"),
            &[("scope", "read:articles")],
        )
        .await;
    assert_eq!(narrowed.status, StatusCode::OK, "{}", narrowed.body);
    assert_eq!(narrowed.json()["scope"], "read:articles");
    // The grant keeps its scopes: the next refresh may ask for both again.
    let restored = app
        .refresh(
            &client_id,
            narrowed.json()["refresh_token"].as_str().expect("rt"),
            &[],
        )
        .await;
    assert_eq!(restored.json()["scope"], "read:articles write:articles");
}

#[tokio::test]
async fn grant_types_and_bodies_are_checked() {
    let app = TestApp::new(&[]);
    let client_id = app.public_client("Test").await;
    let unsupported = app
        .post_form(
            "/oauth/token",
            &[("grant_type", "password"), ("client_id", &client_id)],
            None,
        )
        .await;
    assert_oauth_error(
        &unsupported,
        StatusCode::BAD_REQUEST,
        "unsupported_grant_type",
    );
    let missing = app
        .post_form("/oauth/token", &[("client_id", &client_id)], None)
        .await;
    assert_oauth_error(&missing, StatusCode::BAD_REQUEST, "invalid_request");
    let json_body = app
        .send(
            Request::post("/oauth/token")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{}"))
                .expect("request"),
        )
        .await;
    assert_oauth_error(&json_body, StatusCode::BAD_REQUEST, "invalid_request");
    let bad_code = app
        .post_form(
            "/oauth/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", "ghc.x.y"),
                ("code_verifier", VERIFIER),
                ("client_id", &client_id),
            ],
            None,
        )
        .await;
    assert_oauth_error(&bad_code, StatusCode::BAD_REQUEST, "invalid_grant");
}

/// RFC 6749 §3.1 and §3.2: a parameter sent without a value is as if omitted. Some
/// clients send every field of their form, empty or not (`client_secret=` from a
/// public client, an empty `scope` or `resource` on a refresh).
#[tokio::test]
async fn parameters_sent_without_a_value_count_as_omitted() {
    let app = TestApp::new(&[]);
    let client_id = app.public_client("Sends every field").await;
    let cookie = app.sign_in().await;
    let challenge = challenge(VERIFIER);
    let query = serde_urlencoded::to_string([
        ("client_id", client_id.as_str()),
        ("redirect_uri", "https://client.example/cb"),
        ("response_type", "code"),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("scope", "read:articles"),
        ("state", ""),
        ("resource", ""),
    ])
    .expect("query");
    let consent = app
        .get(&format!("/oauth/authorize?{query}"), Some(&cookie))
        .await;
    assert_eq!(consent.status, StatusCode::OK, "{}", consent.body);
    let approved = app
        .get(&TestApp::link(&consent, "approve"), Some(&cookie))
        .await;
    assert_eq!(approved.status, StatusCode::SEE_OTHER, "{}", approved.body);
    assert_eq!(
        approved.param("state"),
        None,
        "an empty state is not echoed"
    );
    let code = approved.param("code").expect("code");

    let empty = [("client_secret", ""), ("scope", ""), ("resource", "")];
    let mut form = vec![("redirect_uri", "https://client.example/cb")];
    form.extend_from_slice(&empty);
    let redeemed = app.redeem_with(&client_id, &code, &form).await;
    assert_eq!(redeemed.status, StatusCode::OK, "{}", redeemed.body);
    let refresh = redeemed.json()["refresh_token"]
        .as_str()
        .expect("refresh token")
        .to_owned();
    let refreshed = app.refresh(&client_id, &refresh, &empty).await;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.body);
    let tokens = refreshed.json();
    assert_eq!(tokens["scope"], "read:articles");
    let access = tokens["access_token"].as_str().expect("access token");
    assert!(app.token_is_valid(access).await);

    let revoked = app
        .post_form(
            "/oauth/revoke",
            &[
                ("token", tokens["refresh_token"].as_str().expect("rt")),
                ("token_type_hint", ""),
                ("client_id", &client_id),
                ("client_secret", ""),
            ],
            None,
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
    assert!(!app.token_is_valid(access).await);

    // A parameter given twice with values is still refused.
    let twice = app
        .post_form(
            "/oauth/token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", "ghr.x.y"),
                ("scope", "read:articles"),
                ("scope", "write:articles"),
                ("client_id", &client_id),
            ],
            None,
        )
        .await;
    assert_oauth_error(&twice, StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn clients_must_authenticate_the_way_they_registered() {
    let app = TestApp::new(&[]);
    let basic = app
        .register(json!({"redirect_uris": ["https://client.example/cb"], "token_endpoint_auth_method": "client_secret_basic"}))
        .await
        .json();
    let (id, secret) = (
        basic["client_id"].as_str().expect("id"),
        basic["client_secret"].as_str().expect("secret"),
    );
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", "ghr.a.b"),
    ];

    let wrong = app
        .post_form("/oauth/token", &form, Some((id, "wrong-secret")))
        .await;
    assert_oauth_error(&wrong, StatusCode::UNAUTHORIZED, "invalid_client");
    assert!(wrong.headers[header::WWW_AUTHENTICATE]
        .to_str()
        .expect("ascii")
        .starts_with("Basic"));

    let as_post = app
        .post_form(
            "/oauth/token",
            &[
                form[0],
                form[1],
                ("client_id", id),
                ("client_secret", secret),
            ],
            None,
        )
        .await;
    assert_oauth_error(&as_post, StatusCode::UNAUTHORIZED, "invalid_client");
    let no_secret = app
        .post_form("/oauth/token", &[form[0], form[1], ("client_id", id)], None)
        .await;
    assert_oauth_error(&no_secret, StatusCode::UNAUTHORIZED, "invalid_client");
    let unknown = app
        .post_form(
            "/oauth/token",
            &[form[0], form[1], ("client_id", "nobody")],
            None,
        )
        .await;
    assert_oauth_error(&unknown, StatusCode::UNAUTHORIZED, "invalid_client");
    let anonymous = app.post_form("/oauth/token", &form, None).await;
    assert_oauth_error(&anonymous, StatusCode::UNAUTHORIZED, "invalid_client");

    // The right secret passes authentication (and then fails on the fake token),
    // whatever the case of the scheme name (RFC 9110 §11.1).
    let right = app
        .post_form("/oauth/token", &form, Some((id, secret)))
        .await;
    assert_oauth_error(&right, StatusCode::BAD_REQUEST, "invalid_grant");
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    let shouted = app
        .send(
            Request::post("/oauth/token")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(header::AUTHORIZATION, format!("BASIC {encoded}"))
                .body(Body::from(serde_urlencoded::to_string(form).expect("form")))
                .expect("request"),
        )
        .await;
    assert_oauth_error(&shouted, StatusCode::BAD_REQUEST, "invalid_grant");
}

#[tokio::test]
async fn revoking_a_refresh_token_revokes_the_grant() {
    let app = TestApp::new(&[]);
    let (client_id, _, code) = app.code_for("read:articles").await;
    let tokens = app.redeem(&client_id, &code).await.json();
    let access = tokens["access_token"].as_str().expect("at");

    let unknown = app.revoke(&client_id, "gha.nothing.here").await;
    assert_eq!(unknown.status, StatusCode::OK);

    // Another client cannot revoke it, and is told so (RFC 7009 §2.1).
    let other = app.public_client("Other").await;
    for token in [tokens["refresh_token"].as_str().expect("rt"), access] {
        let foreign = app.revoke(&other, token).await;
        assert_oauth_error(&foreign, StatusCode::BAD_REQUEST, "unauthorized_client");
    }
    // A made-up refresh token naming that grant is unknown to it, as to anyone: the
    // answer does not tell whether another client's grant is live (RFC 7009 §2.2).
    let grant = tokens["refresh_token"]
        .as_str()
        .expect("rt")
        .split('.')
        .nth(1)
        .expect("grant");
    let made_up = app.revoke(&other, &format!("ghr.{grant}.madeup")).await;
    assert_eq!(made_up.status, StatusCode::OK, "{}", made_up.body);
    assert!(app.token_is_valid(access).await);

    let revoked = app
        .post_form(
            "/oauth/revoke",
            &[
                ("token", tokens["refresh_token"].as_str().expect("rt")),
                ("token_type_hint", "refresh_token"),
                ("client_id", &client_id),
            ],
            None,
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK);
    assert!(!app.token_is_valid(access).await);
    let refresh = app
        .refresh(
            &client_id,
            tokens["refresh_token"].as_str().expect("rt"),
            &[],
        )
        .await;
    assert_oauth_error(&refresh, StatusCode::BAD_REQUEST, "invalid_grant");
}

/// A client signing out revokes the refresh token it holds. When someone who stole
/// it has rotated it twice since, the client's token is only remembered as retired:
/// its revocation still ends the grant, and with it the thief's tokens.
#[tokio::test]
async fn revoking_a_refresh_token_rotated_since_revokes_the_grant() {
    let app = TestApp::new(&[]);
    let (client_id, tokens) = app.tokens_for("read:articles").await;
    let held = tokens["refresh_token"].as_str().expect("rt").to_owned();
    let mut stolen = held.clone();
    let mut access = String::new();
    for _ in 0..2 {
        let rotated = app.rotate(&client_id, &stolen).await;
        stolen = rotated["refresh_token"].as_str().expect("rt").to_owned();
        access = rotated["access_token"].as_str().expect("at").to_owned();
    }
    assert!(app.token_is_valid(&access).await);

    let revoked = app.revoke(&client_id, &held).await;
    assert_eq!(revoked.status, StatusCode::OK);
    assert!(
        !app.token_is_valid(&access).await,
        "the thief's token is revoked"
    );
    let refresh = app.refresh(&client_id, &stolen, &[]).await;
    assert_oauth_error(&refresh, StatusCode::BAD_REQUEST, "invalid_grant");
}

#[tokio::test]
async fn revoking_an_access_token_leaves_the_refresh_token() {
    let app = TestApp::new(&[]);
    let (client_id, _, code) = app.code_for("read:articles").await;
    let tokens = app.redeem(&client_id, &code).await.json();
    let access = tokens["access_token"].as_str().expect("at");
    let revoked = app.revoke(&client_id, access).await;
    assert_eq!(revoked.status, StatusCode::OK);
    assert!(!app.token_is_valid(access).await);
    let refreshed = app
        .refresh(
            &client_id,
            tokens["refresh_token"].as_str().expect("rt"),
            &[],
        )
        .await;
    assert_eq!(refreshed.status, StatusCode::OK);
}

#[tokio::test]
async fn a_static_client_from_configuration_works() {
    let (app, secret) = with_static_client();
    let cookie = app.sign_in().await;
    let consent = app.authorize("claude-fixed", &[], Some(&cookie)).await;
    assert_eq!(consent.status, StatusCode::OK, "{}", consent.body);
    assert!(!consent.body.contains("Unverified"));
    let code = app
        .get(&TestApp::link(&consent, "approve"), Some(&cookie))
        .await
        .param("code")
        .expect("code");
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", "https://client.example/cb"),
        ("code_verifier", VERIFIER),
        ("client_id", "claude-fixed"),
        ("client_secret", "not-the-secret"),
    ];
    let wrong = app.post_form("/oauth/token", &form, None).await;
    assert_oauth_error(&wrong, StatusCode::UNAUTHORIZED, "invalid_client");
    let mut form = form;
    form[5] = ("client_secret", secret);
    // The failed attempt did not consume the code: client authentication comes first.
    let right = app.post_form("/oauth/token", &form, None).await;
    assert_eq!(right.status, StatusCode::OK, "{}", right.body);

    // Anyone can register a client. A stranger who replays the used code (seen in a
    // callback URL, say) as their own client is refused, and revokes nothing: only
    // the static client, with its secret, could make it count as a replay.
    let stranger = app.public_client("Stranger").await;
    let replay = app
        .post_form(
            "/oauth/token",
            &[form[0], form[1], form[2], form[3], ("client_id", &stranger)],
            None,
        )
        .await;
    assert_oauth_error(&replay, StatusCode::BAD_REQUEST, "invalid_grant");
    let access = right.json()["access_token"]
        .as_str()
        .expect("access")
        .to_owned();
    assert!(app.token_is_valid(&access).await, "the grant lives on");
}

// ----- owner sign-in and setup ---------------------------------------------------------------

#[tokio::test]
async fn session_cookies_are_host_only_secure_httponly_lax_under_https() {
    let app = TestApp::new(&[]);
    let answer = app.sign_in_from([127, 0, 0, 1], PASSWORD).await;
    let cookie = answer.headers[header::SET_COOKIE].to_str().expect("ascii");
    assert!(cookie.starts_with("__Host-gatehouse_session="), "{cookie}");
    for attribute in ["Path=/", "HttpOnly", "SameSite=Lax", "Secure"] {
        assert!(cookie.contains(attribute), "{cookie} lacks {attribute}");
    }
    assert!(!cookie.contains("Domain"));
}

#[tokio::test]
async fn failed_sign_ins_are_limited_per_address() {
    let app = TestApp::new(&[]);
    for _ in 0..10 {
        let answer = app.sign_in_from([192, 0, 2, 1], "wrong password!").await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert!(answer.body.contains("not right"));
    }
    let limited = app.sign_in_from([192, 0, 2, 1], PASSWORD).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.body.contains("Too many failed sign-ins"));
    assert!(limited.headers.get(header::SET_COOKIE).is_none());
    // Another address may still sign in.
    let other = app.sign_in_from([192, 0, 2, 2], PASSWORD).await;
    assert_eq!(other.status, StatusCode::SEE_OTHER);
}

/// An app on a fresh store without an owner password (first run), its store
/// passed through `wrap` (which may keep a handle on it).
fn without_password<T>(
    wrap: impl FnOnce(gatehouse::store::SharedStore) -> (gatehouse::store::SharedStore, T),
) -> (TestApp, T) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = Cli::parse_ignoring_env([
        "gatehouse",
        "--public-url",
        "http://127.0.0.1:9",
        "--data-dir",
        dir.path().to_str().expect("utf-8"),
    ])
    .expect("flags")
    .serve
    .into_config()
    .expect("config");
    let clock = gatehouse::clock::Clock::manual();
    let (store, kept) = wrap(embedded(&config, &clock));
    (TestApp::assemble(Arc::new(dir), config, store, clock), kept)
}

/// A store that fails while the first password is being set does not use up the
/// setup link: either the link still works, or the password was set (and signs in).
/// The link was spent before the password was stored, and a failure between the
/// two left neither: only a restart or the command line got the owner in.
#[tokio::test]
async fn a_setup_the_store_failed_does_not_use_up_the_link() {
    // The first write fails (the password's), or the one after it.
    for fail_after in [0, 1] {
        let (app, faults) = without_password(common::faults::FaultStore::wrap);
        let token = app
            .state
            .owner
            .create_setup_token()
            .await
            .expect("store")
            .expect("a token");
        let form = [
            ("token", token.as_str()),
            ("password", PASSWORD),
            ("confirm", PASSWORD),
        ];
        let setup = || app.post_form("/setup", &form, None);
        faults.set(common::faults::Mode::WritesFailAfter(fail_after));
        let failed = setup().await;
        faults.set(common::faults::Mode::Pass);
        if failed.status != StatusCode::SEE_OTHER {
            assert_eq!(
                failed.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{}",
                failed.body
            );
            let signed_in = app.sign_in_from([127, 0, 0, 1], PASSWORD).await;
            if signed_in.status != StatusCode::SEE_OTHER {
                let again = setup().await;
                assert_eq!(
                    again.status,
                    StatusCode::SEE_OTHER,
                    "after {fail_after} writes: {}",
                    again.body
                );
            }
        }
        let signed_in = app.sign_in_from([127, 0, 0, 1], PASSWORD).await;
        assert_eq!(
            signed_in.status,
            StatusCode::SEE_OTHER,
            "after {fail_after} writes: {}",
            signed_in.body
        );
    }
}

#[tokio::test]
async fn first_run_setup_sets_the_password_once() {
    let (app, ()) = without_password(|store| (store, ()));
    // No password yet: a sign-in fails exactly like a wrong password.
    let before = app.sign_in_from([127, 0, 0, 1], PASSWORD).await;
    assert_eq!(before.status, StatusCode::UNAUTHORIZED);
    assert!(before.body.contains("not right"));

    let token = app
        .state
        .owner
        .create_setup_token()
        .await
        .expect("store")
        .expect("a token");
    let page = app.get(&format!("/setup?token={token}"), None).await;
    assert_eq!(page.status, StatusCode::OK);
    let short = app
        .post_form(
            "/setup",
            &[
                ("token", &token),
                ("password", "short"),
                ("confirm", "short"),
            ],
            None,
        )
        .await;
    assert_eq!(short.status, StatusCode::BAD_REQUEST);
    let done = app
        .post_form(
            "/setup",
            &[
                ("token", &token),
                ("password", PASSWORD),
                ("confirm", PASSWORD),
            ],
            None,
        )
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert_eq!(done.location(), "/oauth/login?setup=done");

    let reused = app
        .post_form(
            "/setup",
            &[
                ("token", &token),
                ("password", "another long password"),
                ("confirm", "another long password"),
            ],
            None,
        )
        .await;
    assert_eq!(reused.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        app.get(&format!("/setup?token={token}"), None).await.status,
        StatusCode::BAD_REQUEST
    );
    assert!(app
        .state
        .owner
        .create_setup_token()
        .await
        .expect("store")
        .is_none());

    let signed_in = app.sign_in_from([127, 0, 0, 1], PASSWORD).await;
    assert_eq!(signed_in.status, StatusCode::SEE_OTHER);
    let cookie = signed_in.headers[header::SET_COOKIE]
        .to_str()
        .expect("ascii");
    assert!(
        cookie.starts_with("gatehouse_session="),
        "plain http: no __Host- prefix: {cookie}"
    );
    assert!(!cookie.contains("Secure"));
}

#[tokio::test]
async fn a_refresh_token_survives_a_restart() {
    let app = TestApp::new(&[]);
    let (client_id, _, code) = app.code_for("read:articles").await;
    let tokens = app.redeem(&client_id, &code).await.json();
    let restarted = app.restart(&[]).await;
    let refreshed = restarted
        .refresh(
            &client_id,
            tokens["refresh_token"].as_str().expect("rt"),
            &[],
        )
        .await;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.body);
}

#[tokio::test]
async fn registered_clients_that_never_obtain_a_grant_expire() {
    let app = TestApp::new(&["--unused-client-ttl", "1s"]);
    let unused = app.public_client("Unused").await;
    let (used, _, code) = app.code_for("read:articles").await;
    assert_eq!(app.redeem(&used, &code).await.status, StatusCode::OK);
    app.clock.advance(Duration::from_secs(2));
    assert!(app
        .state
        .auth
        .client(&unused)
        .await
        .expect("store")
        .is_none());
    assert!(app.state.auth.client(&used).await.expect("store").is_some());
    let answer = app.authorize(&unused, &[], None).await;
    assert_error_page(
        &answer,
        StatusCode::BAD_REQUEST,
        "Unknown client",
        "not registered here",
    );
}

/// A registered client that obtained a grant was kept for good, even after every
/// grant of it was gone. It now lives as long as the refresh tokens it gets, and
/// `--unused-client-ttl` more: refreshing keeps it (here for twice the refresh
/// tokens' lifetime), and once it stops, it is forgotten with its grant.
#[tokio::test]
async fn a_client_with_a_grant_lives_as_long_as_it_refreshes() {
    let app = TestApp::new(&["--refresh-token-ttl", "3d", "--unused-client-ttl", "1d"]);
    let (client, _, code) = app.code_for("read:articles").await;
    let redeemed = app.redeem(&client, &code).await;
    assert_eq!(redeemed.status, StatusCode::OK, "{}", redeemed.body);
    let mut refresh = redeemed.json()["refresh_token"]
        .as_str()
        .expect("rt")
        .to_owned();
    // Every 13 hours for six days: past both lifetimes, and past their sum.
    for _ in 0..12 {
        app.clock.advance(Duration::from_secs(13 * 3600));
        let refreshed = app.refresh(&client, &refresh, &[]).await;
        assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.body);
        refresh = refreshed.json()["refresh_token"]
            .as_str()
            .expect("rt")
            .to_owned();
    }
    let kept = || async { app.state.auth.client(&client).await.expect("store") };
    assert!(kept().await.is_some());
    // Then it stops: its grant ends after three days, the client one day later.
    app.clock.advance(Duration::from_secs(3 * 86400) + PAST);
    assert!(kept().await.is_some(), "kept a margin past its grant");
    app.clock.advance(Duration::from_secs(86400));
    assert!(kept().await.is_none(), "forgotten once its grants are gone");
}

// ----- expiry, on the app's manual clock ---------------------------------------------------

/// A minute past a lifetime: clearly expired, whatever the rounding to seconds.
const PAST: Duration = Duration::from_secs(60);

// The lifetimes the server promises, written out rather than read from its
// constants, so that changing one fails a test. Codes: RFC 6749 §4.1.2 (at most 10
// minutes); approve links live as long as the code they would mint.
const TEN_MINUTES: Duration = Duration::from_secs(10 * 60);
const SIGN_IN: Duration = Duration::from_secs(12 * 3600);
const SETUP_LINK: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn an_authorization_code_expires_after_ten_minutes() {
    let app = TestApp::new(&[]);
    let (client_id, _, code) = app.code_for("read:articles").await;
    app.clock.advance(TEN_MINUTES + PAST);
    let late = app.redeem(&client_id, &code).await;
    assert_oauth_error(&late, StatusCode::BAD_REQUEST, "invalid_grant");

    // The control: a code redeemed within its lifetime works.
    let (client_id, _, code) = app.code_for("read:articles").await;
    app.clock.advance(TEN_MINUTES - PAST);
    assert_eq!(app.redeem(&client_id, &code).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_consent_pages_approve_link_expires_after_ten_minutes() {
    let app = TestApp::new(&[]);
    let client_id = app.public_client("Test").await;
    let cookie = app.sign_in().await;
    let consent = app.authorize(&client_id, &[], Some(&cookie)).await;
    assert_eq!(consent.status, StatusCode::OK, "{}", consent.body);
    app.clock.advance(TEN_MINUTES + PAST);
    let late = app
        .get(&TestApp::link(&consent, "approve"), Some(&cookie))
        .await;
    assert_error_page(
        &late,
        StatusCode::BAD_REQUEST,
        "This link is not valid",
        "Approval links work once, for a few minutes",
    );
}

#[tokio::test]
async fn a_sign_in_session_expires_after_twelve_hours() {
    let app = TestApp::new(&[]);
    let client_id = app.public_client("Test").await;
    let cookie = app.sign_in().await;
    app.clock.advance(SIGN_IN - PAST);
    let still = app.authorize(&client_id, &[], Some(&cookie)).await;
    assert_eq!(still.status, StatusCode::OK, "{}", still.body);

    app.clock.advance(PAST + PAST);
    let later = app.authorize(&client_id, &[], Some(&cookie)).await;
    assert_eq!(later.status, StatusCode::SEE_OTHER, "{}", later.body);
    assert!(
        later
            .location()
            .starts_with("/oauth/login?return_to=%2Foauth%2Fauthorize%3F"),
        "asks to sign in again: {}",
        later.location()
    );
}

#[tokio::test]
async fn the_first_run_setup_link_expires_after_an_hour() {
    let (app, ()) = without_password(|store| (store, ()));
    let token = app
        .state
        .owner
        .create_setup_token()
        .await
        .expect("store")
        .expect("a token");
    app.clock.advance(SETUP_LINK - PAST);
    let page = app.get(&format!("/setup?token={token}"), None).await;
    assert_eq!(page.status, StatusCode::OK, "valid within the hour");

    app.clock.advance(PAST + PAST);
    let page = app.get(&format!("/setup?token={token}"), None).await;
    assert_error_page(
        &page,
        StatusCode::BAD_REQUEST,
        "This setup link is not valid",
        "Setup links work once, for an hour",
    );
    let set = app
        .post_form(
            "/setup",
            &[
                ("token", &token),
                ("password", PASSWORD),
                ("confirm", PASSWORD),
            ],
            None,
        )
        .await;
    assert_error_page(
        &set,
        StatusCode::BAD_REQUEST,
        "This setup link is not valid",
        "Setup links work once, for an hour",
    );
    assert!(!app.state.owner.has_password().await.expect("store"));
}

#[tokio::test]
async fn a_refresh_token_expires_after_its_lifetime() {
    let app = TestApp::new(&["--refresh-token-ttl", "1d"]);
    let (early_client, early) = app.tokens_for("read:articles").await;
    let (late_client, late) = app.tokens_for("read:articles").await;

    app.clock
        .advance(Duration::from_secs(24 * 3600) - Duration::from_secs(60));
    assert!(
        !app.token_is_valid(early["access_token"].as_str().expect("at"))
            .await,
        "the access token's hour is long over"
    );
    let within = app
        .refresh(
            &early_client,
            early["refresh_token"].as_str().expect("rt"),
            &[],
        )
        .await;
    assert_eq!(within.status, StatusCode::OK, "{}", within.body);

    app.clock.advance(PAST + PAST);
    let expired = app
        .refresh(
            &late_client,
            late["refresh_token"].as_str().expect("rt"),
            &[],
        )
        .await;
    assert_oauth_error(&expired, StatusCode::BAD_REQUEST, "invalid_grant");
}

// ----- client-ID metadata documents --------------------------------------------------------

/// Serves metadata documents on a loopback port and counts the requests for each path.
struct DocumentServer {
    base: String,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl DocumentServer {
    /// How many requests reached `path`.
    fn hits(&self, path: &str) -> usize {
        self.hits
            .lock()
            .expect("lock")
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    fn total_hits(&self) -> usize {
        self.hits.lock().expect("lock").values().sum()
    }
}

/// A valid metadata document for the document at `base` + `path`.
fn document(base: &str, path: &str, name: &str) -> serde_json::Value {
    json!({
        "client_id": format!("{base}{path}"),
        "client_name": name,
        "redirect_uris": ["https://client.example/cb"],
        "grant_types": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_method": "none",
    })
}

/// The most of a metadata document Gatehouse reads (outbound.rs); written out so
/// that raising or removing the cap fails the tests below.
const DOCUMENT_CAP: usize = 16 * 1024;

/// A document that would be valid but for its size: padded with an extra field (which
/// the parser ignores) to just over the cap.
fn oversized_document(base: &str, path: &str) -> Vec<u8> {
    let mut doc = document(base, path, "Too big");
    doc["padding"] = json!("x".repeat(DOCUMENT_CAP));
    let body = doc.to_string().into_bytes();
    assert!(body.len() > DOCUMENT_CAP && body.len() < DOCUMENT_CAP + 1024);
    body
}

async fn document_server() -> DocumentServer {
    use axum::{extract::Request, middleware::Next, response::IntoResponse, routing::get};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let hits = Arc::new(Mutex::new(HashMap::new()));
    let json_body = |body: Body| {
        (
            [
                (header::CACHE_CONTROL, "max-age=60"),
                (header::CONTENT_TYPE, "application/json"),
            ],
            body,
        )
    };
    let good = document(&base, "/client.json", "Documented client").to_string();
    let mismatch = document(&base, "/elsewhere.json", "Liar");
    let big = oversized_document(&base, "/big.json");
    let big_chunked = oversized_document(&base, "/big-chunked.json");
    // What the redirect points at would pass every check, were it followed.
    let redirect_target = document(&base, "/redirect.json", "Followed a redirect").to_string();
    let slow = document(&base, "/slow-no-store.json", "Slow").to_string();
    // As ChatGPT publishes its own (2026-08): it prefers private_key_jwt, which
    // Gatehouse does not offer, and lists none as well.
    let mut prefers_jwt = document(&base, "/prefers-jwt.json", "Prefers JWT");
    prefers_jwt["token_endpoint_auth_method"] = json!("private_key_jwt");
    prefers_jwt["token_endpoint_auth_methods_supported"] = json!(["none", "private_key_jwt"]);
    prefers_jwt["token_endpoint_auth_signing_alg"] = json!("RS256");
    prefers_jwt["jwks_uri"] = json!(format!("{base}/jwks.json"));
    let prefers_jwt = prefers_jwt.to_string();
    let counter = hits.clone();
    let app = axum::Router::new()
        .route(
            "/client.json",
            get(move || async move { json_body(Body::from(good)) }),
        )
        .route(
            "/mismatch.json",
            get(move || async move { axum::Json(mismatch) }),
        )
        // Content-Length says how big it is.
        .route(
            "/big.json",
            get(move || async move { json_body(Body::from(big)) }),
        )
        // No Content-Length: only counting the bytes read finds out.
        .route(
            "/big-chunked.json",
            get(move || async move { json_body(streamed(big_chunked, 8)) }),
        )
        .route(
            "/redirect.json",
            get(|| async {
                (
                    StatusCode::FOUND,
                    [(header::LOCATION, "/redirect-target.json")],
                )
                    .into_response()
            }),
        )
        .route(
            "/redirect-target.json",
            get(move || async move { json_body(Body::from(redirect_target)) }),
        )
        // Slow, and not to be kept: every lookup is a fetch.
        .route(
            "/slow-no-store.json",
            get(move || async move {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                (
                    [
                        (header::CACHE_CONTROL, "no-store"),
                        (header::CONTENT_TYPE, "application/json"),
                    ],
                    slow,
                )
            }),
        )
        .route(
            "/slow-failing.json",
            get(|| async {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                StatusCode::SERVICE_UNAVAILABLE
            }),
        )
        .route(
            "/prefers-jwt.json",
            get(move || async move { json_body(Body::from(prefers_jwt)) }),
        )
        .route("/missing.json", get(|| async { StatusCode::NOT_FOUND }))
        .route(
            "/failing.json",
            get(|| async { StatusCode::SERVICE_UNAVAILABLE }),
        )
        .layer(axum::middleware::from_fn(
            move |request: Request, next: Next| {
                let counter = counter.clone();
                async move {
                    *counter
                        .lock()
                        .expect("lock")
                        .entry(request.uri().path().to_owned())
                        .or_default() += 1;
                    next.run(request).await
                }
            },
        ));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    DocumentServer { base, hits }
}

/// Requests that name a document while it is being fetched share that fetch, found
/// or failed: a flood naming one document that is not cached (served `no-store`,
/// here) costs one fetch, not one each, and the first request going away does not
/// start it again. Once it is done, the next lookup fetches again, as `no-store`
/// says. (The documents take 2 s, for the requests to gather on a loaded machine.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_naming_a_document_being_fetched_share_the_fetch() {
    let docs = document_server().await;
    let app = Arc::new(TestApp::new(&["--insecure-allow-loopback-client-metadata"]));
    let at_once = |path: &'static str| {
        let client_id = format!("{}{path}", docs.base);
        let app = app.clone();
        async move {
            let lookups = (0..8).map(|_| {
                let app = app.clone();
                let client_id = client_id.clone();
                tokio::spawn(async move { app.authorize(&client_id, &[], None).await })
            });
            let mut statuses = Vec::new();
            for lookup in futures::future::join_all(lookups).await {
                statuses.push(lookup.expect("lookup").status);
            }
            statuses
        }
    };
    // The first request gives up at once; the fetch it started goes on for the
    // others.
    let client_id = format!("{}/slow-no-store.json", docs.base);
    let gave_up = tokio::time::timeout(
        std::time::Duration::from_millis(100),
        app.authorize(&client_id, &[], None),
    )
    .await;
    assert!(gave_up.is_err(), "the document takes 2 s");
    // Found: every request goes on to sign in.
    let statuses = at_once("/slow-no-store.json").await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::SEE_OTHER),
        "{statuses:?}"
    );
    assert_eq!(docs.hits("/slow-no-store.json"), 1);
    // Failed: every request hears so.
    let statuses = at_once("/slow-failing.json").await;
    assert!(
        statuses
            .iter()
            .all(|s| *s == statuses[0] && s.is_client_error()),
        "{statuses:?}"
    );
    assert_eq!(docs.hits("/slow-failing.json"), 1);
    // Not kept: the next lookup fetches it again.
    let again = app.authorize(&client_id, &[], None).await;
    assert_eq!(again.status, StatusCode::SEE_OTHER, "{}", again.body);
    assert_eq!(docs.hits("/slow-no-store.json"), 2);
}

#[tokio::test]
async fn metadata_document_clients_are_fetched_validated_and_cached() {
    let docs = document_server().await;
    let app = TestApp::new(&["--insecure-allow-loopback-client-metadata"]);
    let discovery = app
        .get("/.well-known/oauth-authorization-server", None)
        .await
        .json();
    assert_eq!(discovery["client_id_metadata_document_supported"], true);

    let client_id = format!("{}/client.json", docs.base);
    let cookie = app.sign_in().await;
    let consent = app.authorize(&client_id, &[], Some(&cookie)).await;
    assert_eq!(consent.status, StatusCode::OK, "{}", consent.body);
    assert!(consent.body.contains("Documented client"));
    assert!(!consent.body.contains("Unverified"));
    let code = app
        .get(&TestApp::link(&consent, "approve"), Some(&cookie))
        .await
        .param("code")
        .expect("code");
    let document = url::Url::parse(&client_id).expect("url");
    assert!(!app.state.auth.document_is_proven(&document).await);
    let tokens = app.redeem(&client_id, &code).await;
    assert_eq!(tokens.status, StatusCode::OK, "{}", tokens.body);
    // The document's host vouches for the name it gives, and the activity log says
    // so, as the consent page did: any site can call its client "Claude Code".
    let activity = app
        .send(
            Request::post("/api/console/activity")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(header::ACCEPT, "application/json")
                .header("sec-fetch-site", "same-origin")
                .header(header::COOKIE, &cookie)
                .body(Body::from("kind=consent_approved"))
                .expect("request"),
        )
        .await;
    assert_eq!(activity.status, StatusCode::OK, "{}", activity.body);
    assert_eq!(
        activity.json()["events"][0]["client"],
        "Documented client (127.0.0.1)"
    );
    assert_eq!(
        docs.hits("/client.json"),
        1,
        "the document is cached per its max-age"
    );
    // Its client obtained tokens: the document keeps its place in the cache, and
    // fetch places of its own, whatever anonymous callers name; after a restart
    // too, when it is not cached (and on other instances: the store says so).
    assert!(app.state.auth.document_is_proven(&document).await);
    let app = app
        .restart(&["--insecure-allow-loopback-client-metadata"])
        .await;
    assert!(app.state.auth.document_is_proven(&document).await);
    let other = url::Url::parse(&format!("{}/other.json", docs.base)).expect("url");
    assert!(!app.state.auth.document_is_proven(&other).await);
}

/// A client whose document prefers `private_key_jwt` and lists `none` among the
/// methods it can use (ChatGPT's does) connects as a public client: consent, code,
/// tokens and a refresh, with no secret and no assertion.
#[tokio::test]
async fn a_document_client_that_can_use_none_connects_whatever_it_prefers() {
    let docs = document_server().await;
    let app = TestApp::new(&["--insecure-allow-loopback-client-metadata"]);
    let client_id = format!("{}/prefers-jwt.json", docs.base);
    let cookie = app.sign_in().await;
    let consent = app.authorize(&client_id, &[], Some(&cookie)).await;
    assert_eq!(consent.status, StatusCode::OK, "{}", consent.body);
    assert!(consent.body.contains("Prefers JWT"));
    let code = app
        .get(&TestApp::link(&consent, "approve"), Some(&cookie))
        .await
        .param("code")
        .expect("code");
    let tokens = app.redeem(&client_id, &code).await;
    assert_eq!(tokens.status, StatusCode::OK, "{}", tokens.body);
    let refresh = tokens.json()["refresh_token"]
        .as_str()
        .expect("refresh token")
        .to_owned();
    let rotated = app.rotate(&client_id, &refresh).await;
    assert!(rotated["access_token"].is_string());
}

/// Anyone can publish a metadata document naming any redirect URI, so a fetched
/// document's client gets its errors shown, like a self-registered one: a link to
/// this server must not send a person on to anywhere at once (RFC 9700 §4.11.2).
#[tokio::test]
async fn later_errors_of_a_fetched_document_client_are_shown_not_redirected() {
    let docs = document_server().await;
    let app = TestApp::new(&["--insecure-allow-loopback-client-metadata"]);
    assert_later_errors_are_shown(&app, &format!("{}/client.json", docs.base)).await;
}

#[tokio::test]
async fn bad_metadata_documents_are_refused_and_never_redirected_to() {
    let docs = document_server().await;
    let app = TestApp::new(&["--insecure-allow-loopback-client-metadata"]);
    let cookie = app.sign_in().await;
    for (path, reason) in [
        (
            "/mismatch.json",
            "the metadata document's client_id differs from its URL",
        ),
        ("/big.json", "the metadata document is too large"),
        ("/big-chunked.json", "the metadata document is too large"),
        (
            "/redirect.json",
            "the metadata document URL redirects; redirects are not followed",
        ),
        ("/missing.json", "the metadata document answered 404"),
    ] {
        let client_id = format!("{}{path}", docs.base);
        let answer = app.authorize(&client_id, &[], Some(&cookie)).await;
        assert_error_page(
            &answer,
            StatusCode::BAD_REQUEST,
            "Client metadata unavailable",
            reason,
        );
        let token = app.refresh(&client_id, "ghr.a.b", &[]).await;
        assert_oauth_error(&token, StatusCode::UNAUTHORIZED, "invalid_client");
        assert_eq!(token.json()["error_description"], reason, "{path}");
    }
    assert!(docs.hits("/redirect.json") > 0, "the redirect was fetched");
    assert_eq!(
        docs.hits("/redirect-target.json"),
        0,
        "the redirect's target was never fetched"
    );
}

/// A document that cannot be had just now (its host fails or is slow, or this
/// server is fetching too many) says nothing against the client: the token endpoint
/// answers 503, which a client retries, not `invalid_client`, which makes Claude
/// register again. Anyone can keep the fetcher busy for a few seconds.
#[tokio::test]
async fn a_document_that_cannot_be_had_just_now_is_a_503_at_the_token_endpoint() {
    let docs = document_server().await;
    let app = TestApp::new(&["--insecure-allow-loopback-client-metadata"]);
    let client_id = format!("{}/failing.json", docs.base);
    let token = app.refresh(&client_id, "ghr.a.b", &[]).await;
    assert_oauth_error(
        &token,
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
    );
    assert_eq!(
        token.json()["error_description"],
        "the metadata document answered 503"
    );
    let cookie = app.sign_in().await;
    let answer = app.authorize(&client_id, &[], Some(&cookie)).await;
    assert_error_page(
        &answer,
        StatusCode::BAD_REQUEST,
        "Client metadata unavailable",
        "the metadata document answered 503",
    );
}

#[tokio::test]
async fn metadata_documents_on_private_addresses_are_refused_without_the_test_opt_in() {
    let docs = document_server().await;
    let app = TestApp::new(&[]);
    let port = docs.base.rsplit(':').next().expect("port");
    let cookie = app.sign_in().await;
    let not_public = format!("{NOT_PUBLIC}.");
    for client_id in [
        format!("https://127.0.0.1:{port}/client.json"),
        format!("https://[::1]:{port}/client.json"),
        // IPv4-mapped IPv6 for 127.0.0.1 (in the normal form a client_id URL must have).
        format!("https://[::ffff:7f00:1]:{port}/client.json"),
        "https://10.0.0.1/client.json".to_owned(),
        "https://192.168.1.1/client.json".to_owned(),
        "https://169.254.169.254/latest/meta-data".to_owned(),
        "https://[fd00::1]/client.json".to_owned(),
        "https://[fe80::1]/client.json".to_owned(),
    ] {
        let answer = app.authorize(&client_id, &[], Some(&cookie)).await;
        assert_error_page(
            &answer,
            StatusCode::BAD_REQUEST,
            "Client metadata unavailable",
            &not_public,
        );
    }
    // A name without a dot is refused before it is looked up: only this server's
    // search domains could give it an address, and a lookup would tell anyone which
    // internal names exist. (A dotted name with only private addresses is refused as
    // one that does not resolve: `outbound`'s unit tests.)
    let private = app
        .authorize("https://localhost/client.json", &[], Some(&cookie))
        .await;
    let internal = app
        .authorize("https://intranet/client.json", &[], Some(&cookie))
        .await;
    assert_error_page(
        &private,
        StatusCode::BAD_REQUEST,
        "Client metadata unavailable",
        "must name a public host",
    );
    assert_eq!(private.error_page(), internal.error_page());
    assert!(!private.body.contains(NOT_PUBLIC), "{}", private.body);
    // Plain http document URLs are not metadata documents at all without the opt-in:
    // the id is looked up as a registered client, and there is none.
    let answer = app
        .authorize(&format!("{}/client.json", docs.base), &[], Some(&cookie))
        .await;
    assert_error_page(
        &answer,
        StatusCode::BAD_REQUEST,
        "Unknown client",
        "not registered here",
    );
    assert_eq!(docs.total_hits(), 0, "nothing was fetched");
}

/// RFC 6749 §4.1.3: the token request names the same redirect URI. One without a
/// path is stored with `/` (URL normalisation); the client sends it again as it
/// first did, and that is the same URI.
#[tokio::test]
async fn a_redirect_uri_without_a_path_is_the_same_uri_when_sent_again() {
    let app = TestApp::new(&[]);
    let redirect = "http://127.0.0.1:8080";
    let registered = app
        .register(json!({"redirect_uris": [redirect], "token_endpoint_auth_method": "none"}))
        .await;
    assert_eq!(
        registered.status,
        StatusCode::CREATED,
        "{}",
        registered.body
    );
    let client_id = registered.json()["client_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let cookie = app.sign_in().await;
    let code = || async {
        let consent = app
            .authorize(&client_id, &[("redirect_uri", redirect)], Some(&cookie))
            .await;
        assert_eq!(consent.status, StatusCode::OK, "{}", consent.body);
        let approved = app
            .get(&TestApp::link(&consent, "approve"), Some(&cookie))
            .await;
        approved.param("code").expect("code")
    };
    let redeem = |code: String, sent: &'static str| {
        let (app, client_id) = (&app, client_id.clone());
        async move {
            app.redeem_with(&client_id, &code, &[("redirect_uri", sent)])
                .await
        }
    };
    let other = redeem(code().await, "http://127.0.0.1:8080/other").await;
    assert_oauth_error(&other, StatusCode::BAD_REQUEST, "invalid_grant");
    let same = redeem(code().await, redirect).await;
    assert_eq!(same.status, StatusCode::OK, "{}", same.body);
}
