//! The hardening rules, each with a test that fails without it: what is stored and for
//! how long, what a page refuses, what a token may see, and what the headers say.

mod common;

use std::time::Duration;

use axum::{
    body::Body,
    http::{header, Request, StatusCode},
};
use common::*;
use futures::StreamExt;
use gatehouse::oauth::grace;
use http_body_util::BodyExt;
use serde_json::json;

/// Keys of one grant, as the store holds them.
async fn grant_keys(app: &TestApp, grant: &str) -> Vec<String> {
    app.store
        .scan("")
        .await
        .expect("scan")
        .into_iter()
        .map(|(key, _)| key.as_str().to_owned())
        .filter(|key| key.contains(&format!("{{{grant}}}")))
        .collect()
}

/// However often a grant rotates, it holds a bounded number of keys: the grant
/// record, its used code, at most two access tokens and one sealed successor. (The
/// app runs with [`ROTATING`]: a second passes between rotations, so that none waits
/// for a token retired lately to be remembered long enough.)
async fn rotations_leave_a_bounded_number_of_keys(app: &TestApp, rotations: usize) {
    let (client_id, tokens) = app.tokens_for("read:articles").await;
    let mut refresh = tokens["refresh_token"].as_str().expect("rt").to_owned();
    let grant = grant_of(&refresh);
    for _ in 0..rotations {
        app.clock.advance(Duration::from_secs(1));
        refresh = app.rotate(&client_id, &refresh).await["refresh_token"]
            .as_str()
            .expect("rt")
            .to_owned();
    }
    let keys = grant_keys(app, &grant).await;
    assert!(keys.len() <= 5, "{} keys: {keys:?}", keys.len());
}

/// Access tokens of 16 s: a grant remembers its last 16 refresh tokens, each at
/// least an access token's lifetime, so rotations a second apart never wait.
const ROTATING: &[&str] = &["--access-token-ttl", "16s"];

/// The same on the embedded store, with fewer rotations: each is three durable
/// commits, and the rule is the same code.
#[tokio::test]
async fn rotations_on_the_embedded_store_leave_a_bounded_number_of_keys() {
    let app = TestApp::new(ROTATING);
    rotations_leave_a_bounded_number_of_keys(&app, 300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_rotations_on_redis_leave_a_bounded_number_of_keys() {
    let prefix = format!("gatehouse-test:{}:", gatehouse::oauth::secret::random_id());
    let app = TestApp::on_redis(&redis_url(), &prefix, ROTATING).await;
    rotations_leave_a_bounded_number_of_keys(&app, 5000).await;
    // The group's bookkeeping set is bounded too.
    let client = redis_client().await;
    let sets: Vec<String> = redis_keys(&client, &format!("{prefix}grp:*")).await;
    assert!(!sets.is_empty(), "the grant's set is there to be measured");
    for set in sets {
        let size: i64 = fred::interfaces::SetsInterface::scard(&client, &set)
            .await
            .expect("scard");
        assert!(size <= 8, "{set} has {size} members");
    }
}

fn redis_url() -> String {
    std::env::var("GATEHOUSE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn redis_client() -> fred::clients::Client {
    use fred::interfaces::ClientLike;
    let client = fred::clients::Client::new(
        fred::types::config::Config::from_url(&redis_url()).expect("url"),
        None,
        None,
        None,
    );
    client.init().await.expect("connect");
    client
}

async fn redis_keys(client: &fred::clients::Client, pattern: &str) -> Vec<String> {
    let mut stream = client.scan_buffered(pattern, Some(1000), None);
    let mut keys = Vec::new();
    while let Some(key) = stream.next().await {
        if let Some(key) = key.expect("scan").as_str() {
            keys.push(key.to_owned());
        }
    }
    keys
}

/// Revoking a grant with 40,000 members (say, a store full of junk planted in it)
/// runs in batches of a few hundred keys, each well under a millisecond of Redis's
/// time, so Redis keeps answering others. Redis runs one script at a time, so a
/// watcher on another connection sees the group shrink in steps only when the
/// deletion is batched; one 40,000-key script (tens of milliseconds during which
/// Redis answers nobody) would take it from full to empty at once. (Timing the
/// watcher's PINGs instead measured this machine's scheduler more than Redis.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_huge_group_never_blocks_redis() {
    use fred::interfaces::SetsInterface;
    use gatehouse::store::{Group, Key, Kind, Put, Store};
    const MEMBERS: u64 = 40_000;
    let prefix = format!("gatehouse-test:{}:", gatehouse::oauth::secret::random_id());
    let _purge = gatehouse::store::redis::PurgeOnDrop {
        url: redis_url(),
        prefix: prefix.clone(),
    };
    let store = gatehouse::store::redis::RedisStore::connect(&redis_url(), &prefix, 2)
        .await
        .expect("redis");
    let group = Group::random();
    let writes: Vec<_> = (0..MEMBERS)
        .map(|i| Key::in_group(Kind::ACCESS, &group, &format!("h{i}")))
        .collect();
    for chunk in writes.chunks(500) {
        futures::future::try_join_all(chunk.iter().map(|key| {
            store.put(
                key,
                b"x",
                Put::ttl(Duration::from_secs(600)).in_group(&group),
            )
        }))
        .await
        .expect("put");
    }
    let probe = redis_client().await;
    let sets = redis_keys(&probe, &format!("{prefix}grp:*")).await;
    assert_eq!(sets.len(), 1, "one group set: {sets:?}");
    let set = sets[0].clone();
    let size: u64 = probe.scard(&set).await.expect("scard");
    assert_eq!(size, MEMBERS);

    let (watching_ready, ready) = tokio::sync::oneshot::channel();
    let watching = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut ready = Some(watching_ready);
        loop {
            let size: u64 = probe.scard(&set).await.expect("scard");
            if let Some(ready) = ready.take() {
                let _ = ready.send(());
            }
            if seen.last() != Some(&size) {
                seen.push(size);
            }
            if size == 0 {
                return seen;
            }
        }
    });
    ready.await.expect("the watcher runs");
    let deleted = store.delete_group(&group).await.expect("revoke");
    assert_eq!(deleted, MEMBERS);
    let seen = tokio::time::timeout(Duration::from_secs(10), watching)
        .await
        .expect("the group set empties")
        .expect("join");
    let steps = seen.iter().filter(|n| **n > 0 && **n < MEMBERS).count();
    assert!(
        steps >= 2,
        "the group went {seen:?}: deleted in one long call, not in batches"
    );
    assert!(
        redis_keys(&redis_client().await, &format!("{prefix}*"))
            .await
            .is_empty(),
        "every member and the set are gone"
    );
}

/// The sealed successor of a rotated refresh token lives for the grace window only:
/// afterwards nothing in the store opens with the old token.
#[tokio::test]
async fn after_the_grace_window_nothing_decrypts_with_an_old_refresh_token() {
    let app = TestApp::new(&["--refresh-grace", "30s"]);
    let (client_id, tokens) = app.tokens_for("read:articles").await;
    let old = tokens["refresh_token"].as_str().expect("rt").to_owned();
    let rotated = app.refresh(&client_id, &old, &[]).await;
    assert_eq!(rotated.status, StatusCode::OK);
    let opens = |records: &[(gatehouse::store::Key, Vec<u8>)]| {
        records
            .iter()
            .filter(|(_, value)| grace::open(&old, value).is_some())
            .count()
    };
    let during = app.store.scan("").await.expect("scan");
    assert_eq!(opens(&during), 1, "the successor, within the window");
    // A retry within the window gets the same pair, with the time its access token
    // has left.
    app.clock.advance(Duration::from_secs(10));
    let retried = app.refresh(&client_id, &old, &[]).await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.body);
    let (rotated, retried) = (rotated.json(), retried.json());
    assert_eq!(retried["access_token"], rotated["access_token"]);
    assert_eq!(retried["refresh_token"], rotated["refresh_token"]);
    assert_eq!(
        retried["expires_in"].as_u64().expect("expires_in") + 10,
        rotated["expires_in"].as_u64().expect("expires_in")
    );
    app.clock.advance(Duration::from_secs(21));
    let after = app.store.scan("").await.expect("scan");
    assert_eq!(opens(&after), 0, "nothing decryptable after the window");
    // And the export, a copy of the store, holds nothing either.
    let mut exported = Vec::new();
    gatehouse::migrate::export(app.store.as_ref(), &mut exported)
        .await
        .expect("export");
    for line in String::from_utf8(exported).expect("utf-8").lines() {
        let record: serde_json::Value = serde_json::from_str(line).expect("json");
        if record.get("end").is_some() {
            continue; // the count of records, last
        }
        let value = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            record["value"].as_str().expect("value"),
        )
        .expect("base64");
        assert!(grace::open(&old, &value).is_none());
    }
}

#[tokio::test]
async fn a_write_only_token_does_not_read_bodies_through_write_tools() {
    let app = TestApp::new(&[]);
    let (_, both) = app.tokens_for("read:articles write:articles").await;
    let (_, write_only) = app.tokens_for("write:articles").await;
    let both = both["access_token"].as_str().expect("at");
    let write_only = write_only["access_token"].as_str().expect("at");
    let both_session = app.mcp_session(both, "2025-06-18").await;
    let write_session = app.mcp_session(write_only, "2025-06-18").await;
    let call = |id: u64, name: &str, arguments: serde_json::Value| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
               "params": {"name": name, "arguments": arguments}})
    };
    let created = app
        .mcp(
            Some(both),
            Some(&both_session),
            Some("2025-06-18"),
            call(
                1,
                "create_article",
                json!({"title": "Secret draft", "body": "the secret body"}),
            ),
        )
        .await;
    assert!(created.body.contains("the secret body"), "{}", created.body);
    for (id, name, arguments) in [
        (
            2,
            "update_article",
            json!({"slug": "secret-draft", "title": "Renamed"}),
        ),
        (3, "publish_article", json!({"slug": "secret-draft"})),
    ] {
        let answer = app
            .mcp(
                Some(write_only),
                Some(&write_session),
                Some("2025-06-18"),
                call(id, name, arguments.clone()),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        let result = answer.rpc();
        assert_eq!(result["result"]["isError"], false, "{name}: {result}");
        assert!(
            !answer.body.contains("the secret body"),
            "{name}: {}",
            answer.body
        );
        assert!(result["result"]["structuredContent"]["body"].is_null());
        // A token that may also read gets the body.
        let answer = app
            .mcp(
                Some(both),
                Some(&both_session),
                Some("2025-06-18"),
                call(id, name, arguments),
            )
            .await;
        assert!(
            answer.body.contains("the secret body"),
            "{name}: {}",
            answer.body
        );
    }
}

#[tokio::test]
async fn approve_links_refuse_prefetches_heads_and_cross_site_navigations_and_keep_the_ticket() {
    let app = TestApp::new(&[]);
    let client_id = app.public_client("Prefetched").await;
    let cookie = app.sign_in().await;
    let consent = app.authorize(&client_id, &[], Some(&cookie)).await;
    let link = TestApp::link(&consent, "approve");
    for (name, value) in [
        ("sec-purpose", "prefetch;prerender"),
        ("purpose", "prefetch"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let request = Request::get(&link)
            .header(header::COOKIE, &cookie)
            .header(name, value)
            .body(Body::empty())
            .expect("request");
        let answer = app.send(request).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{name}");
        assert!(answer.headers.get(header::LOCATION).is_none());
        assert!(
            answer.body.contains("Nothing was decided"),
            "{}",
            answer.body
        );
    }
    // A HEAD (a link checker in the owner's browser) decides nothing either way.
    for link in [&link, &TestApp::link(&consent, "deny")] {
        let request = Request::head(link)
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .expect("request");
        let answer = app.send(request).await;
        assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED, "{link}");
        assert!(answer.headers.get(header::LOCATION).is_none());
        assert_eq!(answer.headers[header::ALLOW], "GET");
    }
    // The ticket is still good for the owner's own click.
    let request = Request::get(&link)
        .header(header::COOKIE, &cookie)
        .header("sec-fetch-site", "same-origin")
        .body(Body::empty())
        .expect("request");
    let approved = app.send(request).await;
    assert_eq!(approved.status, StatusCode::SEE_OTHER, "{}", approved.body);
    assert!(approved.param("code").is_some());
}

#[tokio::test]
async fn sign_in_sign_out_and_setup_posts_must_come_from_our_pages() {
    let app = TestApp::new(&[]);
    let post = |path: &str, origin: Option<&str>, site: Option<&str>| {
        let mut request =
            Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(origin) = origin {
            request = request.header(header::ORIGIN, origin);
        }
        if let Some(site) = site {
            request = request.header("sec-fetch-site", site);
        }
        request
            .body(Body::from(format!("password={}", urlencode(PASSWORD))))
            .expect("request")
    };
    for path in ["/oauth/login", "/oauth/logout", "/setup"] {
        for (origin, site) in [
            (Some("https://evil.example"), None),
            (Some("null"), None),
            (None, Some("cross-site")),
            (None, Some("same-site")),
            (Some(PUBLIC_URL), Some("cross-site")),
        ] {
            let answer = app.send(post(path, origin, site)).await;
            assert_eq!(
                answer.status,
                StatusCode::FORBIDDEN,
                "{path} {origin:?} {site:?}"
            );
            assert!(answer.headers.get(header::SET_COOKIE).is_none());
        }
    }
    // Our own form as a browser sends it under Referrer-Policy: no-referrer.
    let ours = app
        .send(post("/oauth/login", Some("null"), Some("same-origin")))
        .await;
    assert_eq!(ours.status, StatusCode::SEE_OTHER, "{}", ours.body);
    let older_browser = app.send(post("/oauth/login", Some(PUBLIC_URL), None)).await;
    assert_eq!(
        older_browser.status,
        StatusCode::SEE_OTHER,
        "{}",
        older_browser.body
    );
}

fn urlencode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

#[tokio::test]
async fn pages_and_api_answers_carry_the_security_headers() {
    let https = TestApp::new(&[]);
    for path in [
        "/",
        "/oauth/login",
        "/.well-known/oauth-authorization-server",
    ] {
        let answer = https.get(path, None).await;
        assert_eq!(
            answer.headers[header::X_CONTENT_TYPE_OPTIONS],
            "nosniff",
            "{path}"
        );
        assert_eq!(
            answer.headers[header::REFERRER_POLICY],
            "no-referrer",
            "{path}"
        );
        assert_eq!(
            answer.headers[header::STRICT_TRANSPORT_SECURITY],
            "max-age=31536000",
            "{path}"
        );
    }
    let plain = TestApp::with_public_url("http://127.0.0.1:3000");
    let answer = plain.get("/", None).await;
    assert!(answer
        .headers
        .get(header::STRICT_TRANSPORT_SECURITY)
        .is_none());
    assert_eq!(answer.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
}

/// An open SSE stream ends once its token is revoked (checked every 30 s; here every
/// 200 ms, in real time: rmcp's keep-alive stream spins under tokio's paused clock).
#[tokio::test]
async fn an_open_stream_ends_when_its_grant_is_revoked() {
    let app = TestApp::new(&["--stream-recheck", "200ms"]);
    let (client_id, tokens) = app.tokens_for("read:articles").await;
    let access = tokens["access_token"].as_str().expect("at");
    let session = app.mcp_session(access, "2025-06-18").await;
    let request = Request::get("/mcp")
        .header(header::HOST, "gate.example.com")
        .header(header::ACCEPT, "text/event-stream")
        .header(header::AUTHORIZATION, format!("Bearer {access}"))
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-06-18")
        .body(Body::empty())
        .expect("request");
    let response = tower::ServiceExt::oneshot(app.router.clone(), request)
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    // Still open over several rechecks while the token is good.
    let open = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(frame) = body.frame().await {
            frame.expect("frame");
        }
    })
    .await;
    assert!(open.is_err(), "the stream ended with a valid token");

    let revoked = app
        .revoke(&client_id, tokens["refresh_token"].as_str().expect("rt"))
        .await;
    assert_eq!(revoked.status, StatusCode::OK);
    let ended = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived its grant");
}

/// A client-ID metadata document may call itself anything: the consent page names the
/// host that published it, and Unicode format characters are stripped from the name.
#[tokio::test]
async fn a_metadata_document_client_is_shown_with_its_host_and_a_clean_name() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let url = format!("{base}/client.json");
    let document = json!({
        "client_id": url,
        "client_name": "Claude\u{202E}edoC\u{200B} Code",
        "redirect_uris": ["https://client.example/cb"],
        "token_endpoint_auth_method": "none",
    })
    .to_string();
    let server = axum::Router::new().route(
        "/client.json",
        axum::routing::get(move || {
            let document = document.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], document) }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, server).await;
    });
    let app = TestApp::new(&["--insecure-allow-loopback-client-metadata"]);
    let cookie = app.sign_in().await;
    let consent = app.authorize(&url, &[], Some(&cookie)).await;
    assert_eq!(consent.status, StatusCode::OK, "{}", consent.body);
    assert!(
        consent
            .body
            .contains("data-testid=\"client-name\" class=\"client-name\">ClaudeedoC Code<")
            || consent.body.contains(">ClaudeedoC Code<"),
        "{}",
        consent.body
    );
    assert!(!consent.body.contains('\u{202E}') && !consent.body.contains('\u{200B}'));
    let host = url::Url::parse(&base)
        .expect("url")
        .host_str()
        .expect("host")
        .to_owned();
    assert!(
        consent.body.contains(&format!("<strong>{host}</strong>")),
        "the document's host vouches for the name: {}",
        consent.body
    );
    assert!(consent.body.contains("data-testid=\"document-host\""));
}

/// DNS rebinding: another site whose name resolves to Gatehouse's address (one bound
/// to loopback, say) shares an origin with it in the owner's browser. The pages, the
/// sign-in, the consent and the console's calls answer only under a `Host` of ours,
/// as `/mcp` does; a request without one (no browser sends that) passes.
#[tokio::test]
async fn pages_and_sign_in_answer_only_under_a_host_of_ours() {
    let app = TestApp::new(&["--allowed-host", "gate.internal:8080"]);
    let cookie = app.sign_in().await;
    let request = |method: &str, path: &str, host: Option<&str>| {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::COOKIE, &cookie)
            .header(header::ACCEPT, "text/html")
            // The rebound page and Gatehouse share an origin.
            .header("sec-fetch-site", "same-origin");
        if let Some(host) = host {
            request = request.header(header::HOST, host);
        }
        if method == "POST" {
            request = request.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        let body = if method == "POST" {
            Body::from(format!("password={}", PASSWORD.replace(' ', "+")))
        } else {
            Body::empty()
        };
        request.body(body).expect("request")
    };
    let paths = [
        ("GET", "/"),
        ("GET", "/console"),
        ("GET", "/oauth/login"),
        ("POST", "/oauth/login"),
        ("GET", "/oauth/authorize?client_id=x"),
        ("GET", "/setup"),
        ("POST", "/api/console/signed_in"),
    ];
    for (method, path) in paths {
        for host in [
            "rebound.example:8080",
            "rebound.example",
            "127.0.0.1.evil.example",
        ] {
            let refused = app.send(request(method, path, Some(host))).await;
            assert_eq!(
                refused.status,
                StatusCode::FORBIDDEN,
                "{method} {path} {host}"
            );
            // (The console's calls get its own error page for a form's refusal.)
            if !path.starts_with("/api/") {
                assert!(
                    refused.body.contains("--allowed-host"),
                    "{method} {path} {host}"
                );
            }
            assert_eq!(refused.headers[header::X_FRAME_OPTIONS], "DENY");
            assert!(refused.headers.get(header::SET_COOKIE).is_none());
        }
        for host in [
            Some("gate.example.com"),
            Some("127.0.0.1:8080"),
            Some("localhost"),
            Some("gate.internal:8080"),
            None,
        ] {
            let served = app.send(request(method, path, host)).await;
            assert_ne!(
                served.status,
                StatusCode::FORBIDDEN,
                "{method} {path} {host:?}"
            );
        }
    }
    // Over HTTP/2 the authority comes as `:authority`, in the URI, without `Host`.
    for (authority, allowed) in [("rebound.example", false), ("gate.example.com", true)] {
        let answer = app
            .send(
                Request::get(format!("http://{authority}/oauth/login"))
                    .version(axum::http::Version::HTTP_2)
                    .body(Body::empty())
                    .expect("request"),
            )
            .await;
        assert_eq!(
            answer.status == StatusCode::FORBIDDEN,
            !allowed,
            "{authority}"
        );
    }
    // Discovery, tokens and metadata involve no cookies: any Host, as before.
    let discovery = app
        .send(
            Request::get("/.well-known/oauth-authorization-server")
                .header(header::HOST, "rebound.example")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(discovery.status, StatusCode::OK);
}

/// An export edited to carry an owner password hash that would have every sign-in
/// attempt ask for terabytes (or one cut short, which no password matches) is
/// refused whole, naming the line.
#[tokio::test]
async fn an_import_refuses_an_owner_password_hash_no_sign_in_can_check() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = gatehouse::open_store(&gatehouse::config::StoreSpec::Embedded(
        dir.path().join("gatehouse.redb"),
    ))
    .await
    .expect("store");
    let hash = gatehouse::oauth::owner::hash_password(PASSWORD).expect("hash");
    let salt_and_hash = hash.splitn(5, '$').nth(4).expect("salt$hash");
    let greedy = format!("$argon2id$v=19$m=4294967295,t=2,p=1${salt_and_hash}");
    let short = hash.rsplit_once('$').expect("parts").0.to_owned();
    for (bad, why) in [(greedy, "MiB"), (short, "cut short")] {
        let value = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &bad);
        let input = format!(
            "{}\n{}\n{{\"end\":2}}\n",
            json!({"key": "client:one", "value": "b25l"}),
            json!({"key": "owner:password", "value": value}),
        );
        let refused = gatehouse::migrate::import(store.as_ref(), input.as_bytes(), false).await;
        let Err(e) = refused else {
            panic!("imported {bad}");
        };
        let e = e.to_string();
        assert!(e.contains("line 2") && e.contains(why), "{e}");
        assert!(store.export().await.expect("export").is_empty());
    }
    // The hash this server writes goes in.
    let value = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &hash);
    let input = format!(
        "{}\n{{\"end\":1}}\n",
        json!({"key": "owner:password", "value": value})
    );
    let imported = gatehouse::migrate::import(store.as_ref(), input.as_bytes(), false).await;
    assert_eq!(imported.expect("import"), 1);
}
