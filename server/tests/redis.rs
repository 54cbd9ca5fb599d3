//! One deployment, several instances, one Redis: codes, tokens, sessions and
//! revocations cross instances; concurrency rules hold across them; an outage is
//! answered quickly and recovered from without a restart; a deployment moves from the
//! embedded store to Redis without losing its connections.

mod common;

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use axum::http::StatusCode;
use common::*;
use serde_json::json;

fn redis_url() -> String {
    std::env::var("GATEHOUSE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn random_prefix() -> String {
    format!("gatehouse-test:{}:", gatehouse::oauth::secret::random_id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_share_codes_tokens_sessions_and_revocations() {
    let prefix = random_prefix();
    let a = TestApp::on_redis(&redis_url(), &prefix, &[])
        .await
        .serve()
        .await;
    let b = TestApp::on_redis(&redis_url(), &prefix, &[])
        .await
        .serve()
        .await;
    assert_ne!(a.base, b.base, "two ports");

    // Registered and signed in at A; the consent page comes from B with A's cookie.
    let client_id = a.public_client("Across instances").await;
    let cookie = a.sign_in().await;
    let consent = b
        .authorize(&client_id, &[("scope", "read:articles")], Some(&cookie))
        .await;
    assert_eq!(consent.status, StatusCode::OK, "{}", consent.body);
    let code = a
        .get(&TestApp::link(&consent, "approve"), Some(&cookie))
        .await
        .param("code")
        .expect("code issued by A");

    // A code issued by A is redeemed at B.
    let tokens = b.redeem(&client_id, &code).await;
    assert_eq!(tokens.status, StatusCode::OK, "{}", tokens.body);
    let tokens = tokens.json();
    let access = tokens["access_token"].as_str().expect("at");

    // A token issued by B works at A.
    let session = a.mcp_session(access, "2025-06-18").await;
    let listed = a
        .mcp(
            Some(access),
            Some(&session),
            Some("2025-06-18"),
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
        )
        .await;
    assert_eq!(listed.status, StatusCode::OK);

    // Revoking at A is refused at B immediately.
    let revoked = a
        .revoke(&client_id, tokens["refresh_token"].as_str().expect("rt"))
        .await;
    assert_eq!(revoked.status, StatusCode::OK);
    let refused = b
        .mcp(
            Some(access),
            None,
            None,
            json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}),
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let refresh = b
        .refresh(
            &client_id,
            tokens["refresh_token"].as_str().expect("rt"),
            &[],
        )
        .await;
    assert_oauth_error(&refresh, StatusCode::BAD_REQUEST, "invalid_grant");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_redemptions_and_refreshes_follow_the_rules() {
    let prefix = random_prefix();
    let a = Arc::new(TestApp::on_redis(&redis_url(), &prefix, &[]).await);
    let b = Arc::new(TestApp::on_redis(&redis_url(), &prefix, &[]).await);

    concurrent_redemptions_and_refreshes(&a, &b).await;
}

/// A redis-server of the test's own, on a free port, that it can stop and restart.
struct OwnRedis {
    port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    fn start_on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (cargo xtask test installs it)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        OwnRedis {
            port,
            child: Some(child),
        }
    }

    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("port")
            .local_addr()
            .expect("addr")
            .port();
        Self::start_on(port)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Redis at its `maxmemory` under `noeviction` answers `PING` and reads and
/// refuses every write: `/healthz` says so (503), for a supervisor or a load
/// balancer, and says "up" again once Redis takes writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_reports_a_redis_that_refuses_writes() {
    let redis = OwnRedis::start();
    let app = TestApp::on_redis(&redis.url(), "gatehouse:", &[]).await;
    assert_eq!(app.get("/healthz", None).await.status, StatusCode::OK);
    // Redis's inline commands, over a connection of the test's own.
    let config = |args: &[&str]| {
        use std::io::{Read, Write};
        let mut redis = std::net::TcpStream::connect(("127.0.0.1", redis.port)).expect("connect");
        write!(redis, "CONFIG SET {}\r\n", args.join(" ")).expect("write");
        let mut reply = [0u8; 64];
        let read = redis.read(&mut reply).expect("read");
        assert!(reply[..read].starts_with(b"+OK"), "{:?}", &reply[..read]);
    };
    config(&["maxmemory-policy", "noeviction"]);
    config(&["maxmemory", "1"]);
    let full = || async {
        // Past the 100 ms for which one look answers every check.
        tokio::time::sleep(Duration::from_millis(150)).await;
        app.get("/healthz", None).await
    };
    let health = full().await;
    assert_eq!(
        health.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        health.body
    );
    config(&["maxmemory", "0"]);
    let health = full().await;
    assert_eq!(health.status, StatusCode::OK, "{}", health.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_outage_is_answered_quickly_and_recovered_from() {
    let mut redis = OwnRedis::start();
    let app = TestApp::on_redis(&redis.url(), "gatehouse:", &[])
        .await
        .serve()
        .await;
    let (client_id, tokens) = app.tokens_for("read:articles").await;
    let access = tokens["access_token"].as_str().expect("at").to_owned();
    assert_eq!(app.get("/healthz", None).await.status, StatusCode::OK);

    redis.stop();

    let started = Instant::now();
    let mcp = app
        .mcp(
            Some(&access),
            None,
            None,
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
        )
        .await;
    assert_eq!(mcp.status, StatusCode::SERVICE_UNAVAILABLE, "{}", mcp.body);
    assert_eq!(mcp.json()["error"]["code"], -32603);
    let token = app
        .refresh(
            &client_id,
            tokens["refresh_token"].as_str().expect("rt"),
            &[],
        )
        .await;
    assert_oauth_error(
        &token,
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
    );
    let health = app.get("/healthz", None).await;
    assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(health.json()["store"]["status"], "down");
    let page = app.authorize(&client_id, &[], None).await;
    assert_eq!(page.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        page.body.contains("Temporarily unavailable"),
        "{}",
        page.body
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "answers are bounded: {:?}",
        started.elapsed()
    );

    // Redis returns (empty: it keeps nothing on disk); service resumes without a
    // restart, and promptly: reconnection attempts are at most a second apart.
    let _redis = OwnRedis::start_on(redis.port);
    let back = Instant::now();
    loop {
        if app.get("/healthz", None).await.status == StatusCode::OK {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(2),
            "service did not recover within 2 s of Redis's return"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again = app.public_client("After the outage").await;
    assert!(!again.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn export_and_import_move_a_deployment_from_embedded_to_redis() {
    // Connections made on the embedded store...
    let embedded = TestApp::new(&[]);
    let (client_id, tokens) = embedded.tokens_for("read:articles write:articles").await;
    let access = tokens["access_token"].as_str().expect("at").to_owned();
    let session = embedded.mcp_session(&access, "2025-06-18").await;
    let created = embedded
        .mcp(
            Some(&access),
            Some(&session),
            Some("2025-06-18"),
            json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "create_article", "arguments": {"title": "Moved", "body": "to Redis"}}}),
        )
        .await;
    assert_eq!(created.rpc()["result"]["isError"], false);

    let mut exported = Vec::new();
    let count = gatehouse::migrate::export(embedded.store.as_ref(), &mut exported)
        .await
        .expect("export");
    assert!(
        count >= 5,
        "clients, grant, tokens, owner data and articles: {count}"
    );
    let text = String::from_utf8_lossy(&exported);
    assert!(!text.contains(&access), "the export holds no raw token");

    // ...keep working on Redis after the move.
    let prefix = random_prefix();
    let redis = TestApp::on_redis(&redis_url(), &prefix, &[]).await;
    let imported = gatehouse::migrate::import(redis.store.as_ref(), exported.as_slice(), false)
        .await
        .expect("import");
    assert_eq!(imported, count);
    let refreshed = redis
        .refresh(
            &client_id,
            tokens["refresh_token"].as_str().expect("rt"),
            &[],
        )
        .await;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.body);
    let new_access = refreshed.json()["access_token"]
        .as_str()
        .expect("at")
        .to_owned();
    let session = redis.mcp_session(&new_access, "2025-06-18").await;
    let got = redis
        .mcp(
            Some(&new_access),
            Some(&session),
            Some("2025-06-18"),
            json!({"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {"name": "get_article", "arguments": {"slug": "moved"}}}),
        )
        .await;
    assert_eq!(got.rpc()["result"]["structuredContent"]["body"], "to Redis");
    // Revoking the migrated grant still revokes everything in it (groups survived).
    let revoked = redis
        .post_form(
            "/oauth/revoke",
            &[
                (
                    "token",
                    refreshed.json()["refresh_token"].as_str().expect("rt"),
                ),
                ("client_id", &client_id),
            ],
            None,
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK);
    assert!(!redis.token_is_valid(&new_access).await);
    assert!(!redis.token_is_valid(&access).await);
}

const V2025_06: &str = "2025-06-18";

fn tool_call(id: u64, tool: &str, arguments: serde_json::Value) -> serde_json::Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": tool, "arguments": arguments}})
}

fn content_type(answer: &Answer) -> &str {
    answer
        .headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// A session opened (initialize) on one instance is continued with a tool call on
/// another: rmcp there finds no such session in memory, restores it from the store
/// and replays the handshake; from then on that instance answers it directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_opened_on_one_instance_is_continued_on_another() {
    let prefix = random_prefix();
    let a = TestApp::on_redis(&redis_url(), &prefix, &[]).await;
    let b = TestApp::another_instance(&a, &redis_url(), &prefix).await;
    let (_, tokens) = a.tokens_for("read:articles write:articles").await;
    let token = tokens["access_token"].as_str().expect("at");
    let session = a.mcp_session(token, V2025_06).await;
    let created = a
        .mcp(
            Some(token),
            Some(&session),
            Some(V2025_06),
            tool_call(
                1,
                "create_article",
                json!({"title": "Crossing", "body": "from A to B"}),
            ),
        )
        .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.body);

    let got = b
        .mcp(
            Some(token),
            Some(&session),
            Some(V2025_06),
            tool_call(2, "get_article", json!({"slug": "crossing"})),
        )
        .await;
    assert_eq!(
        got.status,
        StatusCode::OK,
        "B continues A's session: {}",
        got.body
    );
    assert_eq!(
        got.rpc()["result"]["structuredContent"]["body"],
        "from A to B"
    );
    let again = b
        .mcp(
            Some(token),
            Some(&session),
            Some(V2025_06),
            tool_call(3, "list_articles", json!({})),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(
        content_type(&again),
        "application/json",
        "the restored session is live on B: the direct path answers"
    );
}

/// A session outlives the rmcp worker that served it. Here the instance that opened
/// it shuts down and a fresh one, which never saw it, continues it. That is the same
/// path as a session rmcp dropped from memory after its 5-minute idle timeout: the
/// session is not in memory, so it is restored from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_continued_after_its_in_memory_state_is_gone() {
    let prefix = random_prefix();
    let first = TestApp::on_redis(&redis_url(), &prefix, &[]).await;
    let (_, tokens) = first.tokens_for("read:articles").await;
    let token = tokens["access_token"].as_str().expect("at").to_owned();
    let session = first.mcp_session(&token, V2025_06).await;
    let fresh = TestApp::another_instance(&first, &redis_url(), &prefix).await;
    first.state.shutdown.cancel();
    drop(first);

    // rmcp's path first (tools/list is never answered directly), then a tool call.
    let listed = fresh
        .mcp(
            Some(&token),
            Some(&session),
            Some(V2025_06),
            json!({"jsonrpc": "2.0", "id": 4, "method": "tools/list"}),
        )
        .await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    assert_eq!(
        listed.rpc()["result"]["tools"].as_array().map(Vec::len),
        Some(7)
    );
    let called = fresh
        .mcp(
            Some(&token),
            Some(&session),
            Some(V2025_06),
            tool_call(5, "list_articles", json!({})),
        )
        .await;
    assert_eq!(called.status, StatusCode::OK, "{}", called.body);
    assert_eq!(called.rpc()["result"]["isError"], false);
}

/// Every record of a store, by key.
async fn records(store: &gatehouse::store::SharedStore) -> Vec<gatehouse::store::Entry> {
    let mut entries = store.export().await.expect("export");
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    entries
}

/// Embedded → Redis → embedded keeps every record, its remaining lifetime (less the
/// time the move took) and its group, so a moved grant is still revoked as a whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_import_round_trip_keeps_records_lifetimes_and_groups() {
    let source = TestApp::new(&[]);
    let (client_id, tokens) = source.tokens_for("read:articles write:articles").await;
    let access = tokens["access_token"].as_str().expect("at").to_owned();
    let refresh = tokens["refresh_token"].as_str().expect("rt").to_owned();
    let session = source.mcp_session(&access, V2025_06).await;
    let created = source
        .mcp(
            Some(&access),
            Some(&session),
            Some(V2025_06),
            tool_call(
                1,
                "create_article",
                json!({"title": "Round", "body": "trip"}),
            ),
        )
        .await;
    assert_eq!(created.rpc()["result"]["isError"], false);
    let before = records(&source.store).await;
    for needed in [
        "client:",
        "grant:",
        "code:",
        "at:",
        "session:",
        "article:",
        "mcp-session:",
    ] {
        assert!(
            before.iter().any(|e| e.key.as_str().starts_with(needed)),
            "the source holds a {needed} record"
        );
    }
    assert!(before.iter().any(|e| e.ttl.is_some() && e.group.is_some()));
    assert!(before.iter().any(|e| e.ttl.is_none()));

    let mut exported = Vec::new();
    gatehouse::migrate::export(source.store.as_ref(), &mut exported)
        .await
        .expect("export");
    let redis = TestApp::on_redis(&redis_url(), &random_prefix(), &[]).await;
    gatehouse::migrate::import(redis.store.as_ref(), exported.as_slice(), false)
        .await
        .expect("import into Redis");
    let mut exported_again = Vec::new();
    gatehouse::migrate::export(redis.store.as_ref(), &mut exported_again)
        .await
        .expect("export from Redis");
    let target = TestApp::new(&[]);
    assert!(records(&target.store).await.is_empty());
    gatehouse::migrate::import(target.store.as_ref(), exported_again.as_slice(), false)
        .await
        .expect("import into embedded");
    let after = records(&target.store).await;
    // Into a store that holds records: only when asked to write over them.
    let again =
        gatehouse::migrate::import(target.store.as_ref(), exported_again.as_slice(), false).await;
    assert!(
        matches!(again, Err(gatehouse::migrate::MigrateError::NotEmpty(n)) if n == after.len()),
        "{again:?}"
    );
    gatehouse::migrate::import(target.store.as_ref(), exported_again.as_slice(), true)
        .await
        .expect("import with replace");
    assert_eq!(records(&target.store).await.len(), after.len());
    // What is not a record of ours is refused, before anything is written.
    for line in [
        r#"{"key":"grp:{abc}","value":""}"#,
        r#"{"key":"staging:owner:password","value":""}"#,
        r#"{"key":"client:x","value":"","ttl_ms":18446744073709551615}"#,
    ] {
        let refused =
            gatehouse::migrate::import(target.store.as_ref(), line.as_bytes(), true).await;
        assert!(
            matches!(
                refused,
                Err(gatehouse::migrate::MigrateError::Malformed { .. })
            ),
            "{line}: {refused:?}"
        );
    }

    let keys = |entries: &[gatehouse::store::Entry]| -> Vec<String> {
        entries.iter().map(|e| e.key.to_string()).collect()
    };
    assert_eq!(keys(&after), keys(&before), "every record, no other");
    for (old, new) in before.iter().zip(&after) {
        assert_eq!(new.value, old.value, "{}", old.key);
        assert_eq!(new.group, old.group, "{}", old.key);
        match (old.ttl, new.ttl) {
            (None, None) => {}
            (Some(old_ttl), Some(new_ttl)) => assert!(
                new_ttl <= old_ttl && old_ttl - new_ttl < Duration::from_secs(30),
                "{}: {old_ttl:?} became {new_ttl:?}",
                old.key
            ),
            (old_ttl, new_ttl) => panic!("{}: {old_ttl:?} became {new_ttl:?}", old.key),
        }
    }

    // The time a record waited in the file counts: one whose lifetime ran out since
    // the export is left out, another keeps only what is left of its own.
    let hour: u64 = 3_600_000;
    let now_ms = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms");
    let lines = format!(
        "{{\"key\":\"session:waited-out\",\"value\":\"\",\"ttl_ms\":{},\"exported_at_ms\":{}}}\n\
         {{\"key\":\"session:waited-some\",\"value\":\"\",\"ttl_ms\":{},\"exported_at_ms\":{}}}\n",
        hour / 2,
        now_ms - hour,
        2 * hour,
        now_ms - hour
    );
    // An export stamped by a clock that was wrong (before there were exports) counts
    // from the import.
    let lines = format!(
        "{lines}{{\"key\":\"session:stamped-wrong\",\"value\":\"\",\"ttl_ms\":{},\"exported_at_ms\":0}}\n{{\"end\":3}}\n",
        2 * hour
    );
    let written = gatehouse::migrate::import(target.store.as_ref(), lines.as_bytes(), true)
        .await
        .expect("records that waited");
    assert_eq!(written, 2);
    let held = records(&target.store).await;
    assert!(!held.iter().any(|e| e.key.as_str() == "session:waited-out"));
    let kept = held
        .iter()
        .find(|e| e.key.as_str() == "session:waited-some")
        .and_then(|e| e.ttl)
        .expect("kept, with a lifetime");
    assert!(kept <= Duration::from_millis(hour), "{kept:?}");
    assert!(kept > Duration::from_millis(hour - 60_000), "{kept:?}");
    let wrong = held
        .iter()
        .find(|e| e.key.as_str() == "session:stamped-wrong")
        .and_then(|e| e.ttl)
        .expect("kept, with a lifetime");
    assert!(
        wrong > Duration::from_millis(2 * hour - 60_000),
        "{wrong:?}"
    );

    // A record that carries the grant's tag but names no group (as one exported from
    // a store that lost the grant's member set) joins the grant's group.
    let grant = grant_of(&refresh);
    let line = format!(
        r#"{{"key":"at:{{{grant}}}:imported-without-group","value":"","ttl_ms":60000}}
{{"end":1}}"#
    );
    gatehouse::migrate::import(target.store.as_ref(), line.as_bytes(), true)
        .await
        .expect("a tagged record");

    // The moved grant is still one group: revoking its refresh token revokes it all.
    let revoked = target.revoke(&client_id, &refresh).await;
    assert_eq!(revoked.status, StatusCode::OK);
    assert!(!target.token_is_valid(&access).await);
    let left: Vec<String> = keys(&records(&target.store).await)
        .into_iter()
        .filter(|key| key.contains(&grant))
        .collect();
    assert!(left.is_empty(), "nothing of the grant is left: {left:?}");
}

/// A proxy to Redis that, once armed, passes the next command on and then closes
/// the connection without passing the reply back: a reply lost with its connection.
struct ReplyDropper {
    url: String,
    armed: Arc<std::sync::atomic::AtomicBool>,
}

impl ReplyDropper {
    async fn start() -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let target = redis_url()
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("redis://{}", listener.local_addr().expect("addr"));
        let armed = Arc::new(AtomicBool::new(false));
        let arm = armed.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(redis) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let armed = arm.clone();
                tokio::spawn(async move {
                    let cutting = Arc::new(AtomicBool::new(false));
                    let (mut from_client, mut to_client) = client.into_split();
                    let (mut from_redis, mut to_redis) = redis.into_split();
                    let down = {
                        let cutting = cutting.clone();
                        async move {
                            let mut buf = vec![0; 64 * 1024];
                            loop {
                                let n = from_client.read(&mut buf).await?;
                                if n == 0 {
                                    return Ok::<_, std::io::Error>(());
                                }
                                let cut = armed.swap(false, Ordering::SeqCst);
                                if cut {
                                    cutting.store(true, Ordering::SeqCst);
                                }
                                to_redis.write_all(&buf[..n]).await?;
                                if cut {
                                    // Let Redis run it, then hang up.
                                    tokio::time::sleep(Duration::from_millis(300)).await;
                                    return Ok(());
                                }
                            }
                        }
                    };
                    let up = async move {
                        let mut buf = vec![0; 64 * 1024];
                        loop {
                            let n = from_redis.read(&mut buf).await?;
                            if n == 0 {
                                return Ok::<_, std::io::Error>(());
                            }
                            if !cutting.load(Ordering::SeqCst) {
                                to_client.write_all(&buf[..n]).await?;
                            }
                        }
                    };
                    tokio::select! {
                        _ = down => {}
                        _ = up => {}
                    }
                });
            }
        });
        ReplyDropper { url, armed }
    }

    fn drop_next_reply(&self) {
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A write whose reply is lost with its connection is not sent again. Redis ran it
/// once; a second run answers differently (a compare-and-swap that already swapped
/// says no, which a code redemption reads as a replay: it revoked the grant the
/// owner had just approved). The caller gets an error instead, a 503 it may retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_reply_is_lost_is_an_error_not_a_second_run() {
    use gatehouse::store::{Key, Kind, Put, Store};
    let proxy = ReplyDropper::start().await;
    let store = gatehouse::store::redis::RedisStore::connect(&proxy.url, &random_prefix(), 1)
        .await
        .expect("connect");
    let key = Key::new(Kind::CLIENT, "lost-reply");
    store
        .put(&key, b"before", Put::forever())
        .await
        .expect("put");
    proxy.drop_next_reply();
    let swapped = store
        .compare_and_swap(&key, b"before", b"after", Put::forever())
        .await;
    assert!(
        swapped.is_err(),
        "an outcome nobody saw is an error, not {swapped:?}"
    );
    // It ran once; the store answers again once reconnected.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.get(&key).await {
            Ok(value) => {
                assert_eq!(value.as_deref(), Some(&b"after"[..]));
                break;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the store did not come back: {e}"),
        }
    }
}

/// Two deployments on one Redis, one prefix extending the other's: each exports
/// its own records only (the longer prefix's keys match the shorter one's pattern).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_whose_prefix_extends_ours_is_not_ours() {
    use gatehouse::store::{Key, Kind, Put, Store};
    let ours = random_prefix();
    let theirs = format!("{ours}staging:");
    let connect = |prefix: String| async move {
        gatehouse::store::redis::RedisStore::connect(&redis_url(), &prefix, 1)
            .await
            .expect("connect")
    };
    let (a, b) = (connect(ours).await, connect(theirs).await);
    b.put(
        &Key::new(Kind::OWNER, "password"),
        b"theirs",
        Put::forever(),
    )
    .await
    .expect("put");
    b.put(&Key::new(Kind::CLIENT, "c"), b"theirs", Put::forever())
        .await
        .expect("put");
    a.put(&Key::new(Kind::CLIENT, "c"), b"ours", Put::forever())
        .await
        .expect("put");
    let exported = a.export().await.expect("export");
    let keys: Vec<&str> = exported.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["client:c"]);
    assert_eq!(exported[0].value, b"ours");
}

/// Gatehouse reads Redis's eviction policy at start (and warns unless it is
/// `noeviction`, under which no grant's key set can vanish): here Debian's default.
#[tokio::test]
async fn the_eviction_policy_is_read_at_start() {
    let store = gatehouse::store::redis::RedisStore::connect(&redis_url(), &random_prefix(), 1)
        .await
        .expect("connect");
    let config = |name: &str| {
        std::process::Command::new("redis-cli")
            .args(["-u", &redis_url(), "config", "get", name])
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|out| out.lines().nth(1).map(str::to_owned))
            .expect("redis-cli answered")
    };
    let expected = (config("maxmemory"), config("maxmemory-policy"));
    assert_eq!(store.eviction_policy().await, Some(expected));
    use gatehouse::store::redis::evicts;
    let of = |memory: &str, policy: &str| (memory.to_owned(), policy.to_owned());
    assert!(evicts(&of("1gb", "volatile-lru")));
    assert!(!evicts(&of("1gb", "noeviction")));
    assert!(
        !evicts(&of("0", "allkeys-lru")),
        "no limit, nothing evicted"
    );
}
