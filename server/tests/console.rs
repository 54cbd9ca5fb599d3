//! The owner's console: who may call its server functions, what they change, the
//! pages' sign-in redirect and headers, and the activity each flow writes.

mod common;

use axum::{
    body::Body,
    http::{header, Request, StatusCode},
};
use common::*;
use serde_json::{json, Value};

/// Every console server function with arguments that would work, and whether it
/// changes something (then it needs the CSRF token too).
type Call = (&'static str, &'static [(&'static str, &'static str)], bool);

const CALLS: [Call; 11] = [
    ("signed_in", &[], false),
    ("apps", &[], false),
    ("activity", &[], false),
    ("articles", &[], false),
    ("article", &[("slug", "new")], false),
    ("connect", &[("check", "false")], false),
    ("revoke_grant", &[("grant", "g")], true),
    ("revoke_client", &[("client_id", "c")], true),
    (
        "save_article",
        &[("slug", ""), ("title", "T"), ("body", "B"), ("version", "")],
        true,
    ),
    ("publish_article", &[("slug", "s")], true),
    ("delete_article", &[("slug", "s")], true),
];

/// A console call as the console's own page sends it once hydrated.
fn call(endpoint: &str, form: &[(&str, &str)], cookie: Option<&str>, site: &str) -> Request<Body> {
    let mut request = Request::post(format!("/api/console/{endpoint}"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/json")
        .header("sec-fetch-site", site);
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    request
        .body(Body::from(serde_urlencoded::to_string(form).expect("form")))
        .expect("request")
}

impl TestApp {
    async fn console(&self, endpoint: &str, form: &[(&str, &str)], cookie: &str) -> Answer {
        self.send(call(endpoint, form, Some(cookie), "same-origin"))
            .await
    }

    /// A console call that changes something, with the session's token.
    async fn console_act(&self, endpoint: &str, form: &[(&str, &str)], cookie: &str) -> Answer {
        let csrf = self.csrf(cookie).await;
        let mut form = form.to_vec();
        form.push(("csrf", &csrf));
        self.console(endpoint, &form, cookie).await
    }

    async fn csrf(&self, cookie: &str) -> String {
        let apps = self.console("apps", &[], cookie).await;
        assert_eq!(apps.status, StatusCode::OK, "{}", apps.body);
        apps.json()["csrf"].as_str().expect("csrf").to_owned()
    }

    async fn apps(&self, cookie: &str) -> Vec<Value> {
        let apps = self.console("apps", &[], cookie).await;
        assert_eq!(apps.status, StatusCode::OK, "{}", apps.body);
        apps.json()["apps"].as_array().expect("apps").clone()
    }

    /// The activity log, newest first, as the console shows it.
    async fn activity(&self, cookie: &str, filter: &[(&str, &str)]) -> Vec<Value> {
        let answer = self.console("activity", filter, cookie).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        answer.json()["events"].as_array().expect("events").clone()
    }

    async fn kinds(&self, cookie: &str) -> Vec<String> {
        self.activity(cookie, &[])
            .await
            .iter()
            .map(|e| e["kind"].as_str().expect("kind").to_owned())
            .collect()
    }
}

// ----- authorization -----------------------------------------------------------------

#[tokio::test]
async fn every_console_call_needs_the_owners_session() {
    let app = TestApp::new(&[]);
    let (client_id, tokens) = app.tokens_for("read:articles write:articles").await;
    let access = tokens["access_token"].as_str().expect("token").to_owned();
    let cookie = app.sign_in().await;
    let csrf = app.csrf(&cookie).await;
    // Real targets, so that a call that got through would show.
    let grant = app.apps(&cookie).await[0]["grant"]
        .as_str()
        .expect("grant")
        .to_owned();
    let draft = app
        .console_act(
            "save_article",
            &[
                ("slug", ""),
                ("title", "Kept"),
                ("body", "B"),
                ("version", ""),
            ],
            &cookie,
        )
        .await;
    assert_eq!(draft.status, StatusCode::OK, "{}", draft.body);

    for (endpoint, form, _) in CALLS {
        let mut form: Vec<(&str, &str)> = form
            .iter()
            .map(|&(name, value)| match (name, value) {
                ("grant", _) => (name, grant.as_str()),
                ("client_id", _) => (name, client_id.as_str()),
                ("slug", "s") => (name, "kept"),
                other => other,
            })
            .collect();
        form.push(("csrf", &csrf));
        for cookie in [None, Some("gatehouse_session=forged"), Some("other=1")] {
            let answer = app.send(call(endpoint, &form, cookie, "same-origin")).await;
            if endpoint == "signed_in" {
                assert_eq!(answer.status, StatusCode::OK, "{endpoint}");
                assert_eq!(answer.body, "false", "{endpoint}");
                continue;
            }
            assert_eq!(
                answer.status,
                StatusCode::UNAUTHORIZED,
                "{endpoint} {cookie:?}: {}",
                answer.body
            );
            // In the words the console's script reads (`Type|message`), not a page
            // it would show as a complaint about their format.
            assert!(
                answer.body.starts_with("ServerError|Sign in"),
                "{endpoint}: {}",
                answer.body
            );
        }
    }
    // Nothing changed: the client's token still works, the draft is still there and
    // still a draft, and no other article appeared.
    assert!(app.token_is_valid(&access).await);
    let articles = app.console("articles", &[], &cookie).await;
    let listed = articles.json()["articles"].clone();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["slug"], "kept", "{listed}");
    assert_eq!(listed[0]["published"], false, "{listed}");

    // A session that ended is no session.
    let signed_out = app
        .send(
            Request::post("/oauth/logout")
                .header(header::COOKIE, &cookie)
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(signed_out.status, StatusCode::SEE_OTHER);
    let answer = app.console("apps", &[], &cookie).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
}

/// A console call whose body the listener's budget for request bodies refuses gets
/// that refusal (429 or 503, with `Retry-After`), not Leptos' 400 or 500.
#[tokio::test]
async fn a_console_call_refused_by_the_body_budget_says_so() {
    use gatehouse::http::bodies::Refused;
    let app = TestApp::new(&[]);
    let cookie = app.sign_in().await;
    let csrf = app.csrf(&cookie).await;
    for (refused, status) in [
        (Refused::Address, StatusCode::TOO_MANY_REQUESTS),
        (Refused::All, StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let form = serde_urlencoded::to_string([("slug", "s"), ("csrf", &csrf)]).expect("form");
        let body = futures::stream::iter([
            Ok(bytes::Bytes::from(form)),
            Err::<bytes::Bytes, _>(refused),
        ]);
        let mut request = call("publish_article", &[], Some(&cookie), "same-origin");
        *request.body_mut() = Body::from_stream(body);
        let answer = app.send(request).await;
        assert_eq!(answer.status, status, "{}", answer.body);
        assert_eq!(answer.headers[header::RETRY_AFTER], "1");
        assert_eq!(answer.headers[header::CONNECTION], "close");
        // In words the console's script shows.
        assert!(answer.body.starts_with("ServerError|"), "{}", answer.body);
    }
    // The same for the pages' own server function, which anyone may call.
    let body = futures::stream::iter([Err::<bytes::Bytes, _>(Refused::All)]);
    let mut request = call("signed_in", &[], None, "same-origin");
    *request.uri_mut() = <app::GetSiteInfo as leptos::server_fn::ServerFn>::PATH
        .parse()
        .expect("path");
    *request.body_mut() = Body::from_stream(body);
    let answer = app.send(request).await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answer.body
    );
}

/// The server functions anyone may call take no arguments, and a body no larger than
/// any other anonymous request's (64 KiB): the console's 160 KiB are the owner's.
#[tokio::test]
async fn server_functions_anyone_may_call_take_small_bodies_only() {
    let app = TestApp::new(&[]);
    let site_info = <app::GetSiteInfo as leptos::server_fn::ServerFn>::PATH;
    let to = |path: &str, body: Body| {
        let mut request = call("signed_in", &[], None, "same-origin");
        *request.uri_mut() = path.parse().expect("path");
        *request.body_mut() = body;
        request
    };
    for path in ["/api/console/signed_in", site_info] {
        let answer = app.send(to(path, Body::empty())).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.body);
        // Announced, or streamed without a length (refused once 64 KiB are read).
        let large = || format!("x={}", "a".repeat(100 * 1024)).into_bytes();
        for body in [Body::from(large()), streamed(large(), 8)] {
            let answer = app.send(to(path, body)).await;
            assert_eq!(
                answer.status,
                StatusCode::PAYLOAD_TOO_LARGE,
                "{path}: {}",
                answer.body
            );
            assert_eq!(answer.headers[header::CONNECTION], "close", "{path}");
        }
    }
}

#[tokio::test]
async fn console_actions_need_the_sessions_token_and_a_same_origin_request() {
    let app = TestApp::new(&[]);
    let (_, tokens) = app.tokens_for("read:articles").await;
    let access = tokens["access_token"].as_str().expect("token").to_owned();
    let cookie = app.sign_in().await;
    let grant = app.apps(&cookie).await[0]["grant"]
        .as_str()
        .expect("grant")
        .to_owned();
    let csrf = app.csrf(&cookie).await;
    // Another session's token is not this session's.
    let other = app.sign_in().await;
    let others = app.csrf(&other).await;
    assert_ne!(csrf, others);

    for (endpoint, form, changes) in CALLS.iter().filter(|c| c.2) {
        assert!(changes);
        let mut form = form.to_vec();
        if *endpoint == "revoke_grant" {
            form = vec![("grant", grant.as_str())];
        }
        for token in [None, Some(""), Some("forged"), Some(others.as_str())] {
            let mut form = form.clone();
            if let Some(token) = token {
                form.push(("csrf", token));
            }
            let answer = app.console(endpoint, &form, &cookie).await;
            // A missing argument fails to parse (400); either way nothing happens.
            assert!(
                answer.status == StatusCode::FORBIDDEN
                    || (token.is_none() && answer.status == StatusCode::BAD_REQUEST),
                "{endpoint} {token:?}: {} {}",
                answer.status,
                answer.body
            );
        }
        // The right token from another site: refused.
        let mut with_token = form.clone();
        with_token.push(("csrf", csrf.as_str()));
        for site in ["cross-site", "same-site"] {
            let answer = app
                .send(call(endpoint, &with_token, Some(&cookie), site))
                .await;
            assert_eq!(answer.status, StatusCode::FORBIDDEN, "{endpoint} {site}");
            assert!(answer.body.contains("Cross-site"), "{}", answer.body);
        }
    }
    // Without Sec-Fetch-Site, the Origin decides.
    let form = [("grant", grant.as_str()), ("csrf", csrf.as_str())];
    let body = serde_urlencoded::to_string(form).expect("form");
    let foreign = app
        .send(
            Request::post("/api/console/revoke_grant")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(header::COOKIE, &cookie)
                .header(header::ORIGIN, "https://evil.example")
                .body(Body::from(body))
                .expect("request"),
        )
        .await;
    assert_eq!(foreign.status, StatusCode::FORBIDDEN);

    assert!(app.token_is_valid(&access).await);
    assert_eq!(app.apps(&cookie).await.len(), 1);
    let articles = app.console("articles", &[], &cookie).await;
    assert_eq!(articles.json()["articles"], json!([]));
}

#[tokio::test]
async fn a_plain_form_post_gets_a_redirect_or_an_error_page() {
    let app = TestApp::new(&[]);
    let (_, tokens) = app.tokens_for("read:articles").await;
    let access = tokens["access_token"].as_str().expect("token").to_owned();
    let cookie = app.sign_in().await;
    let grant = app.apps(&cookie).await[0]["grant"]
        .as_str()
        .expect("grant")
        .to_owned();
    let csrf = app.csrf(&cookie).await;
    let form_post = |form: &[(&str, &str)], site: &str| {
        Request::post("/api/console/revoke_grant")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "text/html,application/xhtml+xml,*/*;q=0.8")
            .header("sec-fetch-site", site)
            .header(header::COOKIE, &cookie)
            .body(Body::from(serde_urlencoded::to_string(form).expect("form")))
            .expect("request")
    };

    let refused = app
        .send(form_post(
            &[("grant", &grant), ("csrf", &csrf)],
            "cross-site",
        ))
        .await;
    assert_error_page(
        &refused,
        StatusCode::FORBIDDEN,
        "Request refused",
        "Console actions work only from the console's own pages",
    );
    assert_eq!(refused.headers[header::X_FRAME_OPTIONS], "DENY");
    assert!(app.token_is_valid(&access).await);

    let revoked = app
        .send(form_post(
            &[("grant", &grant), ("csrf", &csrf)],
            "same-origin",
        ))
        .await;
    assert!(revoked.status.is_redirection(), "{}", revoked.body);
    assert_eq!(revoked.location(), "/console");
    assert!(!app.token_is_valid(&access).await);

    // A form missing a field, and one whose body the listener's budget refuses, get
    // their error pages (server_fn would send them back to a Referer browsers do not
    // send us: a silent redirect to `/`).
    let missing = app.send(form_post(&[("csrf", &csrf)], "same-origin")).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST, "{}", missing.body);
    assert!(missing.headers.get(header::LOCATION).is_none());
    assert!(missing.body.contains("<html"), "{}", missing.body);
    let form =
        serde_urlencoded::to_string([("grant", grant.as_str()), ("csrf", &csrf)]).expect("form");
    let mut refused = form_post(&[], "same-origin");
    *refused.body_mut() = Body::from_stream(futures::stream::iter([
        Ok(bytes::Bytes::from(form)),
        Err::<bytes::Bytes, _>(gatehouse::http::bodies::Refused::Address),
    ]));
    let refused = app.send(refused).await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.body
    );
    assert!(refused.headers.get(header::LOCATION).is_none());
    assert_eq!(refused.headers[header::RETRY_AFTER], "1");
    assert!(refused.body.contains("<html"), "{}", refused.body);
}

// ----- pages ---------------------------------------------------------------------------

#[tokio::test]
async fn console_pages_send_a_visitor_to_sign_in_and_back() {
    let app = TestApp::new(&[]);
    for path in [
        "/console",
        "/console/activity?kind=tool_call",
        "/console/articles",
        "/console/articles/new",
        "/console/connect",
    ] {
        let answer = app.get(path, None).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{path}");
        let location = answer.location();
        let (_, query) = location.split_once('?').expect("query");
        let return_to: Vec<(String, String)> = serde_urlencoded::from_str(query).expect("query");
        assert_eq!(return_to, [("return_to".to_owned(), path.to_owned())]);
        assert!(location.starts_with("/oauth/login?"));
        // The sign-in form sends the owner back there.
        let page = app.get(&location, None).await;
        assert!(page.body.contains(&format!(
            "name=\"return_to\" value=\"{}\"",
            path.replace('&', "&amp;")
        )));
    }
    let signed_in = app
        .post_form(
            "/oauth/login",
            &[("password", PASSWORD), ("return_to", "/console/activity")],
            None,
        )
        .await;
    assert_eq!(signed_in.location(), "/console/activity");
    for unsafe_target in [
        "/console//evil.example",
        "/console/../oauth/logout",
        "/console/%2e%2e/oauth/logout",
        "/console/%2E%2E%2Foauth",
        "/console\\@evil.example",
        "/consolex",
        "https://evil.example/console",
    ] {
        let answer = app
            .post_form(
                "/oauth/login",
                &[("password", PASSWORD), ("return_to", unsafe_target)],
                None,
            )
            .await;
        assert_eq!(answer.location(), "/", "{unsafe_target}");
    }
}

#[tokio::test]
async fn console_pages_render_for_the_owner_unframed_and_uncached() {
    let app = TestApp::new(&[]);
    let (_, tokens) = app.tokens_for("read:articles write:articles").await;
    let cookie = app.sign_in().await;
    let _ = tokens;

    let home = app.get("/", Some(&cookie)).await;
    assert!(home.body.contains("href=\"/console\""), "{}", home.body);
    let anonymous_home = app.get("/", None).await;
    assert!(!anonymous_home.body.contains("href=\"/console\""));

    for path in [
        "/console",
        "/console/activity",
        "/console/articles",
        "/console/articles/new",
        "/console/connect",
    ] {
        let page = app.get(path, Some(&cookie)).await;
        assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.body);
        assert_eq!(page.headers[header::CACHE_CONTROL], "no-store", "{path}");
        assert_eq!(page.headers[header::X_FRAME_OPTIONS], "DENY", "{path}");
        assert_eq!(
            page.headers[header::CONTENT_SECURITY_POLICY],
            "frame-ancestors 'none'"
        );
    }
    let apps = app.get("/console", Some(&cookie)).await;
    assert!(apps.body.contains("Test client"), "{}", apps.body);
    assert!(apps.body.contains("self-registered"));
    assert!(apps.body.contains("read:articles write:articles"));
    // A revoke link opens a confirmation with a plain form.
    let grant = app.apps(&cookie).await[0]["grant"]
        .as_str()
        .expect("grant")
        .to_owned();
    let confirm = app
        .get(&format!("/console?revoke={grant}"), Some(&cookie))
        .await;
    assert!(confirm.body.contains("data-testid=\"confirm-revoke\""));
    assert!(confirm
        .body
        .contains("action=\"/api/console/revoke_grant\""));
    assert!(confirm.body.contains(&format!("value=\"{grant}\"")));
}

/// A confirmation that another site (or a sibling subdomain) opens could take the
/// second click of a double-click made there ("double-clickjacking"): such a
/// navigation gets the page without it. The console's own links, and a typed
/// address, open it.
#[tokio::test]
async fn a_confirmation_opened_from_another_site_is_not_shown() {
    let app = TestApp::new(&[]);
    let _ = app.tokens_for("read:articles").await;
    let cookie = app.sign_in().await;
    let grant = app.apps(&cookie).await[0]["grant"]
        .as_str()
        .expect("grant")
        .to_owned();
    let open = |path: &str, site: &str| {
        Request::get(path)
            .header(header::COOKIE, &cookie)
            .header(header::ACCEPT, "text/html")
            .header("sec-fetch-site", site)
            .body(Body::empty())
            .expect("request")
    };
    let confirmations = [
        (format!("/console?revoke={grant}"), "/console"),
        ("/console?revoke_client=c&x=1".to_owned(), "/console"),
        (
            "/console/articles/some-draft?delete=1".to_owned(),
            "/console/articles/some-draft",
        ),
    ];
    for (path, plain) in &confirmations {
        for site in ["cross-site", "same-site"] {
            let answer = app.send(open(path, site)).await;
            assert_eq!(answer.status, StatusCode::SEE_OTHER, "{path} {site}");
            assert_eq!(answer.headers[header::LOCATION], *plain, "{path} {site}");
        }
        for site in ["same-origin", "none"] {
            let answer = app.send(open(path, site)).await;
            assert_eq!(
                answer.status,
                StatusCode::OK,
                "{path} {site}: {}",
                answer.body
            );
        }
    }
    let shown = app.send(open(&confirmations[0].0, "same-origin")).await;
    assert!(shown.body.contains("data-testid=\"confirm-revoke\""));

    // Nor after signing in: the answer to the sign-in is a same-origin navigation,
    // and another site may link to the sign-in page (or send a signed-out owner to a
    // confirmation, which sends them to sign in).
    let after_sign_in = [
        (confirmations[0].0.as_str(), "/console"),
        ("/console?revoke_client=c&x=1", "/console?x=1"),
        (
            "/console/articles/some-draft?delete=1",
            "/console/articles/some-draft",
        ),
        (
            "/console/activity?kind=tool_call",
            "/console/activity?kind=tool_call",
        ),
    ];
    for (path, plain) in after_sign_in {
        let query = serde_urlencoded::to_string([("return_to", path)]).expect("query");
        let page = app.get(&format!("/oauth/login?{query}"), None).await;
        assert!(
            page.body.contains(&format!(
                "name=\"return_to\" value=\"{}\"",
                plain.replace('&', "&amp;")
            )),
            "{path}: {}",
            page.body
        );
        let signed_in = app
            .post_form(
                "/oauth/login",
                &[("password", PASSWORD), ("return_to", path)],
                None,
            )
            .await;
        assert_eq!(signed_in.location(), plain, "{path}");
    }
    // Other pages open from anywhere.
    let linked = app.send(open("/console/activity", "cross-site")).await;
    assert_eq!(linked.status, StatusCode::OK);
}

/// Leptos shows a failed form's error from the page's address (`__path`, `__err`),
/// where anyone can write one: a console page opens without them, so no other site
/// puts its own words in the console's alert, also not through the sign-in.
#[tokio::test]
async fn a_console_address_cannot_put_words_in_its_alert() {
    use base64::Engine as _;
    let app = TestApp::new(&[]);
    let cookie = app.sign_in().await;
    // "ServerError|Your password leaked: sign in at evil.example", as Leptos encodes it.
    let words = "Your password leaked: sign in at evil.example";
    let err = base64::engine::general_purpose::URL_SAFE.encode(format!("ServerError|{words}"));
    let forged = format!("/console?__path=/api/console/revoke_grant&__err={err}&kind=x");
    let opened = app.get(&forged, Some(&cookie)).await;
    assert_eq!(opened.status, StatusCode::SEE_OTHER, "{}", opened.body);
    assert_eq!(opened.location(), "/console?kind=x");
    let shown = app.get(&opened.location(), Some(&cookie)).await;
    assert_eq!(shown.status, StatusCode::OK);
    assert!(!shown.body.contains(words));
    let article =
        format!("/console/articles/some-draft?__path=/api/console/save_article&__err={err}");
    let opened = app.get(&article, Some(&cookie)).await;
    assert_eq!(opened.location(), "/console/articles/some-draft");
    // Signed out: sent to sign in without them, and back without them.
    let opened = app.get(&forged, None).await;
    assert_eq!(opened.location(), "/console?kind=x");
    let signed_in = app
        .post_form(
            "/oauth/login",
            &[("password", PASSWORD), ("return_to", &forged)],
            None,
        )
        .await;
    assert_eq!(signed_in.location(), "/console?kind=x");
    // Nor through the activity page's client filter, which a link chooses too.
    let query = serde_urlencoded::to_string([("client", words)]).expect("query");
    let filter = format!("/console/activity?{query}");
    let shown = app.get(&filter, Some(&cookie)).await;
    assert_eq!(shown.status, StatusCode::OK);
    // Kept as the filter's value (an attribute), never shown as text.
    assert!(
        !shown.body.contains(">Your password leaked"),
        "{}",
        shown.body
    );
    assert!(
        shown
            .body
            .contains("selected>a client not seen here</option>"),
        "{}",
        shown.body
    );
}

// ----- what the console shows and does -------------------------------------------------

#[tokio::test]
async fn an_approved_code_not_yet_redeemed_is_listed_and_revoked_with_its_client() {
    let app = TestApp::new(&[]);
    let (client_id, cookie, code) = app.code_for("read:articles").await;
    let apps = app.apps(&cookie).await;
    assert_eq!(apps.len(), 1, "{apps:?}");
    assert_eq!(apps[0]["pending"], true);
    let page = app.get("/console", Some(&cookie)).await;
    assert!(page.body.contains("code not yet redeemed"), "{}", page.body);

    let revoked = app
        .console_act("revoke_client", &[("client_id", &client_id)], &cookie)
        .await;
    assert_eq!(revoked.body, "1", "{}", revoked.body);
    // The code the client still holds is worthless now.
    let late = app.redeem(&client_id, &code).await;
    assert_oauth_error(&late, StatusCode::BAD_REQUEST, "invalid_grant");
    assert!(app.apps(&cookie).await.is_empty());
}

#[tokio::test]
async fn what_clients_write_is_shown_as_text_in_the_console() {
    let app = TestApp::new(&[]);
    let (_, tokens) = app.tokens_for("read:articles write:articles").await;
    let token = tokens["access_token"].as_str().expect("token");
    let session = app.mcp_session(token, "2025-06-18").await;
    let created = app
        .mcp(
            Some(token),
            Some(&session),
            Some("2025-06-18"),
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
                "name": "create_article",
                "arguments": {
                    "slug": "payload",
                    "title": "</title><script>alert('title')</script>",
                    "body": "\nfirst line kept</textarea><script>alert('body')</script>&lt;"
                }
            }}),
        )
        .await;
    assert_eq!(
        created.rpc()["result"]["isError"],
        false,
        "{}",
        created.body
    );
    let cookie = app.sign_in().await;
    for path in ["/console/articles", "/console/articles/payload"] {
        let page = app.get(path, Some(&cookie)).await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(
            !page.body.contains("<script>alert"),
            "{path}: {}",
            page.body
        );
        assert!(!page.body.contains("</textarea><script"), "{path}");
    }
    let page = app.get("/console/articles/payload", Some(&cookie)).await;
    // The body, escaped once, after the newline the parser drops.
    assert!(
        page.body.contains(
            "\n\nfirst line kept&lt;/textarea&gt;&lt;script&gt;alert('body')&lt;/script&gt;&amp;lt;</textarea>"
        ),
        "{}",
        page.body
    );
}

/// A store that cannot be reached is not a signed-out owner: the console's pages and
/// calls answer 503 (try again), not "sign in" (which could not help).
#[tokio::test]
async fn a_store_that_fails_is_not_a_signed_out_owner() {
    let (app, faults) = TestApp::with_faults();
    let cookie = app.sign_in().await;
    faults.set(faults::Mode::Down);
    let page = app.get("/console", Some(&cookie)).await;
    assert_eq!(
        page.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        page.body
    );
    assert!(page.headers.get(header::LOCATION).is_none());
    assert_eq!(page.headers[header::RETRY_AFTER], "1");
    let called = app.console("apps", &[], &cookie).await;
    assert_eq!(
        called.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        called.body
    );
    assert!(called.body.starts_with("ServerError|"), "{}", called.body);
    faults.set(faults::Mode::Pass);
    let page = app.get("/console", Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK);
}

/// A store that fails while the usage counters are written loses none of them:
/// they are written with the next ones.
#[tokio::test]
async fn usage_counters_outlast_a_failed_write() {
    let (app, faults) = TestApp::with_faults();
    let (client_id, tokens) = app.tokens_for("read:articles").await;
    let token = tokens["access_token"].as_str().expect("token");
    let session = app.mcp_session(token, "2025-06-18").await;
    for id in 2..4 {
        let listed = app
            .mcp(
                Some(token),
                Some(&session),
                Some("2025-06-18"),
                json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                       "params": {"name": "list_articles", "arguments": {}}}),
            )
            .await;
        assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    }
    faults.set(faults::Mode::Down);
    assert!(app.state.audit.flush().await.is_err());
    faults.set(faults::Mode::Pass);
    app.state.audit.flush().await.expect("written");
    let cookie = app.sign_in().await;
    let reading = app
        .apps(&cookie)
        .await
        .into_iter()
        .find(|a| a["client_id"] == client_id.as_str())
        .expect("row");
    assert_eq!(reading["calls_last_day"], 2, "{reading}");
}

#[tokio::test]
async fn connected_apps_list_live_grants_and_revoking_ends_them_at_once() {
    let app = TestApp::new(&[]);
    let (reader_id, reader) = app.tokens_for("read:articles").await;
    let (writer_id, writer) = app.tokens_for("read:articles write:articles").await;
    let cookie = app.sign_in().await;

    let apps = app.apps(&cookie).await;
    assert_eq!(apps.len(), 2, "{apps:?}");
    let row = |id: &str| {
        apps.iter()
            .find(|a| a["client_id"] == id)
            .unwrap_or_else(|| panic!("no row for {id}"))
            .clone()
    };
    let reading = row(&reader_id);
    assert_eq!(reading["client_name"], "Test client");
    assert_eq!(reading["identity"], "self-registered");
    assert_eq!(reading["verified"], false);
    assert_eq!(reading["scopes"], "read:articles");
    assert_eq!(reading["resource"], MCP_URL);
    assert_eq!(
        reading["redirect_hosts"],
        json!(["client.example", "localhost"])
    );
    assert_eq!(reading["last_used"], Value::Null);
    assert_eq!(row(&writer_id)["scopes"], "read:articles write:articles");

    // A tool call shows as use.
    let token = reader["access_token"].as_str().expect("token");
    let session = app.mcp_session(token, "2025-06-18").await;
    let listed = app
        .mcp(
            Some(token),
            Some(&session),
            Some("2025-06-18"),
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                   "params": {"name": "list_articles", "arguments": {}}}),
        )
        .await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    let reading = app
        .apps(&cookie)
        .await
        .into_iter()
        .find(|a| a["client_id"] == reader_id.as_str())
        .expect("row");
    assert_eq!(reading["calls_last_day"], 1, "{reading}");
    assert!(reading["last_used"].is_string(), "{reading}");

    // Revoke one grant: its tokens stop working now, the other's do not.
    let grant = reading["grant"].as_str().expect("grant");
    let revoked = app
        .console_act("revoke_grant", &[("grant", grant)], &cookie)
        .await;
    assert!(revoked.status.is_success() || revoked.status.is_redirection());
    let refused = app
        .mcp(
            Some(token),
            Some(&session),
            Some("2025-06-18"),
            json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}),
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let refresh = app
        .refresh(
            &reader_id,
            reader["refresh_token"].as_str().expect("rt"),
            &[],
        )
        .await;
    assert_oauth_error(&refresh, StatusCode::BAD_REQUEST, "invalid_grant");
    assert!(
        app.token_is_valid(writer["access_token"].as_str().expect("token"))
            .await
    );
    let apps = app.apps(&cookie).await;
    assert_eq!(apps.len(), 1);
    assert_eq!(apps[0]["client_id"], writer_id.as_str());

    // Revoke all of one client: every grant it holds.
    let (_, again) = {
        let consent = app.authorize(&writer_id, &[], Some(&cookie)).await;
        let approved = app
            .get(&TestApp::link(&consent, "approve"), Some(&cookie))
            .await;
        let code = approved.param("code").expect("code");
        let answer = app.redeem(&writer_id, &code).await;
        (writer_id.clone(), answer.json())
    };
    assert_eq!(app.apps(&cookie).await.len(), 2);
    let all = app
        .console_act("revoke_client", &[("client_id", &writer_id)], &cookie)
        .await;
    assert_eq!(all.body, "2", "{}", all.body);
    assert!(app.apps(&cookie).await.is_empty());
    for tokens in [&writer, &again] {
        assert!(
            !app.token_is_valid(tokens["access_token"].as_str().expect("present"))
                .await
        );
    }
}

#[tokio::test]
async fn the_console_edits_articles_that_mcp_clients_then_read() {
    let app = TestApp::new(&[]);
    let (_, tokens) = app.tokens_for("read:articles write:articles").await;
    let token = tokens["access_token"].as_str().expect("token").to_owned();
    let cookie = app.sign_in().await;

    let created = app
        .console_act(
            "save_article",
            &[
                ("slug", ""),
                ("title", "Release notes"),
                ("body", "line one\r\nline two"),
                ("version", ""),
            ],
            &cookie,
        )
        .await;
    // The hydrated page's call: the server function tells it where to go next.
    assert_eq!(created.status, StatusCode::OK, "{}", created.body);
    assert!(created.headers.contains_key("serverfnredirect"));
    assert_eq!(
        created.location(),
        "/console/articles/release-notes?saved=1"
    );

    let read = app
        .console("article", &[("slug", "release-notes")], &cookie)
        .await;
    let article = read.json()["article"].clone();
    assert_eq!(article["body"], "line one\nline two");
    assert_eq!(article["published"], false);
    let version = article["version"].as_u64().expect("version").to_string();

    // A client edits it meanwhile: the console's save over the old version is refused.
    app.clock.advance(std::time::Duration::from_secs(5));
    let session = app.mcp_session(&token, "2025-06-18").await;
    let tool = |id: u64, name: &str, arguments: Value| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
               "params": {"name": name, "arguments": arguments}})
    };
    let edited = app
        .mcp(
            Some(&token),
            Some(&session),
            Some("2025-06-18"),
            tool(
                2,
                "update_article",
                json!({"slug": "release-notes", "body": "the client's words"}),
            ),
        )
        .await;
    assert_eq!(edited.rpc()["result"]["isError"], false, "{}", edited.body);
    let stale = app
        .console_act(
            "save_article",
            &[
                ("slug", "release-notes"),
                ("title", "Release notes"),
                ("body", "the owner's words"),
                ("version", &version),
            ],
            &cookie,
        )
        .await;
    assert_eq!(stale.status, StatusCode::CONFLICT, "{}", stale.body);

    // Re-read, edit, publish: the client reads the owner's words.
    let fresh = app
        .console("article", &[("slug", "release-notes")], &cookie)
        .await
        .json()["article"]["version"]
        .as_u64()
        .expect("version")
        .to_string();
    let saved = app
        .console_act(
            "save_article",
            &[
                ("slug", "release-notes"),
                ("title", "Release notes, corrected"),
                ("body", "the owner's words"),
                ("version", &fresh),
            ],
            &cookie,
        )
        .await;
    assert_eq!(saved.status, StatusCode::OK, "{}", saved.body);
    let published = app
        .console_act("publish_article", &[("slug", "release-notes")], &cookie)
        .await;
    assert_eq!(published.status, StatusCode::OK, "{}", published.body);
    let got = app
        .mcp(
            Some(&token),
            Some(&session),
            Some("2025-06-18"),
            tool(3, "get_article", json!({"slug": "release-notes"})),
        )
        .await;
    let text = got.rpc()["result"].to_string();
    assert!(text.contains("the owner's words"), "{text}");
    assert!(text.contains("Release notes, corrected"), "{text}");
    assert!(text.contains("published"), "{text}");

    // Bad input is the owner's to fix, not a failure.
    for (form, status) in [
        (
            vec![
                ("slug", "Not A Slug"),
                ("title", "x"),
                ("body", ""),
                ("version", ""),
            ],
            400,
        ),
        (
            vec![
                ("slug", "release-notes"),
                ("title", "x"),
                ("body", ""),
                ("version", ""),
            ],
            409,
        ),
        (
            vec![("slug", ""), ("title", ""), ("body", "b"), ("version", "")],
            400,
        ),
        (
            vec![
                ("slug", "missing"),
                ("title", "x"),
                ("body", ""),
                ("version", "1"),
            ],
            404,
        ),
        (
            vec![
                ("slug", "release-notes"),
                ("title", "x"),
                ("body", ""),
                ("version", "x"),
            ],
            400,
        ),
    ] {
        let answer = app.console_act("save_article", &form, &cookie).await;
        assert_eq!(answer.status.as_u16(), status, "{form:?}: {}", answer.body);
    }
    let big = "x".repeat(gatehouse::articles::MAX_ARTICLE_BYTES + 1);
    let answer = app
        .console_act(
            "save_article",
            &[
                ("slug", ""),
                ("title", "Big"),
                ("body", &big),
                ("version", ""),
            ],
            &cookie,
        )
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
    // The largest article saves, even when form encoding triples it.
    let largest = "é".repeat(gatehouse::articles::MAX_ARTICLE_BYTES / 2);
    let answer = app
        .console_act(
            "save_article",
            &[
                ("slug", ""),
                ("title", "Largest"),
                ("body", &largest),
                ("version", ""),
            ],
            &cookie,
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);

    let deleted = app
        .console_act("delete_article", &[("slug", "release-notes")], &cookie)
        .await;
    assert_eq!(deleted.location(), "/console/articles");
    let gone = app
        .mcp(
            Some(&token),
            Some(&session),
            Some("2025-06-18"),
            tool(4, "get_article", json!({"slug": "release-notes"})),
        )
        .await;
    assert_eq!(gone.rpc()["result"]["isError"], true, "{}", gone.body);
}

// ----- the activity each flow writes ---------------------------------------------------

#[tokio::test]
async fn each_flow_writes_its_activity() {
    let app = TestApp::new(&[]);
    let failed = app.sign_in_from([192, 0, 2, 7], "wrong password").await;
    assert_eq!(failed.status, StatusCode::UNAUTHORIZED);
    let cookie = app.sign_in().await;
    let kinds = app.kinds(&cookie).await;
    assert_eq!(kinds, ["sign_in_succeeded", "sign_in_failed"]);
    let events = app.activity(&cookie, &[]).await;
    assert!(events[1]["detail"]
        .as_str()
        .expect("present")
        .contains("from 192.0.2.7"));

    // Registration, consent, redemption.
    let client_id = app.public_client("Flow client").await;
    let consent = app.authorize(&client_id, &[], Some(&cookie)).await;
    let approved = app
        .get(&TestApp::link(&consent, "approve"), Some(&cookie))
        .await;
    let code = approved.param("code").expect("code");
    let tokens = app.redeem(&client_id, &code).await.json();
    assert_eq!(
        app.kinds(&cookie).await[..3],
        ["code_redeemed", "consent_approved", "client_registered"]
    );
    let approved = &app.activity(&cookie, &[("kind", "consent_approved")]).await[0];
    assert_eq!(approved["client"], "Flow client (self-registered)");
    assert!(approved["detail"]
        .as_str()
        .expect("present")
        .contains("scopes read:articles write:articles"));

    // Denial.
    let consent = app.authorize(&client_id, &[], Some(&cookie)).await;
    app.get(&TestApp::link(&consent, "deny"), Some(&cookie))
        .await;
    assert_eq!(app.kinds(&cookie).await[0], "consent_denied");

    // A tool call, allowed and denied.
    let access = tokens["access_token"].as_str().expect("token");
    let session = app.mcp_session(access, "2025-06-18").await;
    app.mcp(
        Some(access),
        Some(&session),
        Some("2025-06-18"),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
               "params": {"name": "list_articles", "arguments": {}}}),
    )
    .await;
    let calls = app.activity(&cookie, &[("kind", "tool_call")]).await;
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["outcome"], "ok");
    assert!(calls[0]["detail"]
        .as_str()
        .expect("present")
        .contains("tool list_articles"));
    let (reader_id, reader) = app.tokens_for("read:articles").await;
    let reader_token = reader["access_token"].as_str().expect("token");
    let reader_session = app.mcp_session(reader_token, "2025-06-18").await;
    let denied = app
        .mcp(
            Some(reader_token),
            Some(&reader_session),
            Some("2025-06-18"),
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                   "params": {"name": "create_article",
                              "arguments": {"title": "t", "body": "b"}}}),
        )
        .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    let calls = app
        .activity(&cookie, &[("kind", "tool_call"), ("client", &reader_id)])
        .await;
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["outcome"], "denied");

    // Rotation, then reuse of the rotated token after the grace window.
    let refresh = tokens["refresh_token"].as_str().expect("rt");
    let rotated = app.refresh(&client_id, refresh, &[]).await;
    assert_eq!(rotated.status, StatusCode::OK);
    assert_eq!(app.kinds(&cookie).await[0], "token_refreshed");
    app.clock.advance(std::time::Duration::from_secs(3600));
    let reused = app.refresh(&client_id, refresh, &[]).await;
    assert_oauth_error(&reused, StatusCode::BAD_REQUEST, "invalid_grant");
    assert_eq!(app.kinds(&cookie).await[0], "refresh_reuse_detected");

    // RFC 7009 revocation, then the console's.
    let (other_id, other) = app.tokens_for("read:articles").await;
    app.revoke(&other_id, other["refresh_token"].as_str().expect("rt"))
        .await;
    assert_eq!(app.kinds(&cookie).await[0], "token_revoked");
    let grant = app.apps(&cookie).await[0]["grant"]
        .as_str()
        .expect("grant")
        .to_owned();
    app.console_act("revoke_grant", &[("grant", &grant)], &cookie)
        .await;
    assert_eq!(app.kinds(&cookie).await[0], "grant_revoked");

    // Filters: by client, by kind, and both; an unknown kind is the caller's error.
    let of_reader = app.activity(&cookie, &[("client", &reader_id)]).await;
    assert!(!of_reader.is_empty());
    assert!(of_reader.iter().all(
        |e| e["client"] == "Test client (self-registered)" || e["client"] == reader_id.as_str()
    ));
    let unknown = app
        .console("activity", &[("kind", "no_such_kind")], &cookie)
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_activity_log_pages_back_through_older_events() {
    let app = TestApp::new(&[]);
    // From as many addresses, so the sign-in limiter lets each through.
    for i in 0..55 {
        let failed = app.sign_in_from([198, 51, 100, i], "wrong password").await;
        assert_eq!(failed.status, StatusCode::UNAUTHORIZED);
    }
    let cookie = app.sign_in().await;
    let first = app
        .console("activity", &[("kind", "sign_in_failed")], &cookie)
        .await
        .json();
    assert_eq!(first["events"].as_array().expect("present").len(), 50);
    let cursor = first["next"].as_str().expect("a next page").to_owned();
    let second = app
        .console(
            "activity",
            &[("kind", "sign_in_failed"), ("before", &cursor)],
            &cookie,
        )
        .await
        .json();
    assert_eq!(second["events"].as_array().expect("present").len(), 5);
    assert_eq!(second["next"], Value::Null);

    // A cursor is the server's own: anything else is the caller's error.
    for bad in ["abc", "12", "1~2~3", "1-x~", "~99999999999999999999999"] {
        let refused = app
            .console(
                "activity",
                &[("kind", "sign_in_failed"), ("before", bad)],
                &cookie,
            )
            .await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

/// Tool calls have a log of their own: a client calling made-up names in a loop (so
/// that no two calls fold into one event) pushes out older calls only, and paging
/// through the activity still reaches the sign-in, the consent and the redemption.
#[tokio::test]
async fn tool_calls_never_push_other_activity_out_of_the_log() {
    let app = TestApp::new(&["--activity-max-events", "100"]);
    let (_, tokens) = app.tokens_for("read:articles").await;
    let access = tokens["access_token"].as_str().expect("token");
    let session = app.mcp_session(access, "2025-06-18").await;
    for i in 0..150 {
        app.mcp(
            Some(access),
            Some(&session),
            Some("2025-06-18"),
            json!({"jsonrpc": "2.0", "id": i + 2, "method": "tools/call",
                   "params": {"name": format!("made_up_{i}"), "arguments": {}}}),
        )
        .await;
    }
    let cookie = app.sign_in().await;
    let mut kinds = Vec::new();
    let mut before: Option<String> = None;
    for _ in 0..10 {
        let mut filter = Vec::new();
        if let Some(cursor) = &before {
            filter.push(("before", cursor.as_str()));
        }
        let page = app.console("activity", &filter, &cookie).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let page = page.json();
        kinds.extend(
            page["events"]
                .as_array()
                .expect("events")
                .iter()
                .map(|e| e["kind"].as_str().expect("kind").to_owned()),
        );
        match page["next"].as_str() {
            Some(next) => before = Some(next.to_owned()),
            None => break,
        }
    }
    let calls = kinds.iter().filter(|k| *k == "tool_call").count();
    assert_eq!(calls, 100, "the calls' own cap");
    let others: Vec<&str> = kinds
        .iter()
        .filter(|k| *k != "tool_call")
        .map(String::as_str)
        .collect();
    assert_eq!(
        others,
        [
            "sign_in_succeeded",
            "code_redeemed",
            "consent_approved",
            "sign_in_succeeded",
        ],
        "newest first, after the calls (the registration, an event anyone can cause \
         in numbers, shares their log and went with the oldest of it)"
    );
    assert_eq!(kinds[0], "sign_in_succeeded", "merged by time");
}
