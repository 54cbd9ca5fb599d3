//! `cargo xtask bench`: Gatehouse's hot paths under load, measured in one run beside
//! the MCP TypeScript SDK's example server, so the ratios are comparable on a noisy
//! machine.
//!
//! For each store (embedded, then Redis) it starts the release server, obtains tokens
//! through the real flow (owner sign-in, registration, consent, code redemption: no
//! back door into the store), then drives two loads at concurrency 64 for a fixed
//! time from this separate process: authenticated `tools/call get_article`, and
//! refresh grants (each worker rotating its own grant's refresh token). The reference
//! row runs `simpleStreamableHttp.js --oauth` and calls its `greet` tool.

use std::{
    io::Write,
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use rand::RngCore;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

mod soak;

const CONCURRENCY: usize = 64;
const PASSWORD: &str = "benchmark owner password";

type Result<T = ()> = std::result::Result<T, String>;

struct Options {
    gatehouse: PathBuf,
    reference: PathBuf,
    redis: String,
    seconds: u64,
}

fn options() -> Result<Options> {
    let mut args = std::env::args().skip(1);
    let mut opts = Options {
        gatehouse: PathBuf::from("target/release/gatehouse"),
        reference: PathBuf::from("bench/reference"),
        redis: "redis://127.0.0.1:6379".into(),
        seconds: 10,
    };
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--gatehouse" => opts.gatehouse = value()?.into(),
            "--reference" => opts.reference = value()?.into(),
            "--redis" => opts.redis = value()?,
            "--seconds" => {
                opts.seconds = value()?.parse().map_err(|_| "--seconds takes a number")?
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(opts)
}

#[tokio::main]
async fn main() {
    // `bench soak …` is the soak run (`cargo xtask soak`); anything else benchmarks.
    let outcome = if std::env::args().nth(1).as_deref() == Some("soak") {
        soak::run().await
    } else {
        run().await
    };
    if let Err(e) = outcome {
        eprintln!("bench: {e}");
        std::process::exit(1);
    }
}

#[derive(Default, Clone)]
struct Load {
    requests: u64,
    errors: u64,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl Load {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

struct Row {
    name: String,
    tools: Load,
    refresh: Option<Load>,
    idle_rss_mb: f64,
    after_rss_mb: f64,
}

async fn run() -> Result {
    let opts = options()?;
    let duration = Duration::from_secs(opts.seconds);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(CONCURRENCY * 2)
        .build()
        .map_err(|e| e.to_string())?;

    let mut rows = Vec::new();
    let data = std::env::temp_dir().join(format!("gatehouse-bench-{}", std::process::id()));
    std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
    let stores = [
        (
            "gatehouse, embedded",
            format!("embedded:{}/bench.redb", data.display()),
            None,
        ),
        (
            "gatehouse, Redis",
            opts.redis.clone(),
            Some(format!("gatehouse-bench-{}:", random(8))),
        ),
    ];
    for (name, store, prefix) in stores {
        eprintln!("\n== {name}");
        rows.push(bench_gatehouse(&opts, &http, name, &store, prefix.as_deref(), duration).await?);
    }
    eprintln!("\n== reference");
    let reference = bench_reference(&opts, &http, duration).await?;
    let _ = std::fs::remove_dir_all(&data);

    print_table(&rows, &reference, opts.seconds);
    Ok(())
}

fn print_table(rows: &[Row], reference: &Row, seconds: u64) {
    let reference_rate = reference.tools.rate();
    println!();
    println!("tools/call at concurrency {CONCURRENCY} for {seconds} s each; refresh grants likewise (64 grants rotating).");
    println!();
    println!("| Server | tools/call req/s | p50 ms | p99 ms | errors | × reference | refresh req/s | p50 ms | p99 ms | errors | idle RSS MB | RSS after MB |");
    println!(
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for row in rows.iter().chain(std::iter::once(reference)) {
        let refresh = row.refresh.clone();
        let cell =
            |f: &dyn Fn(&Load) -> String| refresh.as_ref().map(f).unwrap_or_else(|| "–".into());
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} |",
            row.name,
            row.tools.rate(),
            row.tools.p50_ms,
            row.tools.p99_ms,
            row.tools.errors,
            if std::ptr::eq(row, reference) {
                "1.0".to_owned()
            } else {
                format!("{:.1}", row.tools.rate() / reference_rate.max(1e-9))
            },
            cell(&|l| format!("{:.0}", l.rate())),
            cell(&|l| format!("{:.2}", l.p50_ms)),
            cell(&|l| format!("{:.2}", l.p99_ms)),
            cell(&|l| l.errors.to_string()),
            row.idle_rss_mb,
            row.after_rss_mb,
        );
    }
}

// ----- processes --------------------------------------------------------------------

struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn rss_mb(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
            .map(|kb| kb / 1024.0)
            .unwrap_or(0.0)
    }
}

fn free_port() -> Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

async fn wait_until_up(http: &reqwest::Client, url: &str) -> Result {
    for _ in 0..200 {
        if http.get(url).send().await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("{url} did not come up"))
}

fn random(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

fn pkce() -> (String, String) {
    let verifier = random(32);
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

// ----- gatehouse ----------------------------------------------------------------------

async fn bench_gatehouse(
    opts: &Options,
    http: &reqwest::Client,
    name: &str,
    store: &str,
    prefix: Option<&str>,
    duration: Duration,
) -> Result<Row> {
    let mut store_args = vec!["--store".to_owned(), store.to_owned()];
    if let Some(prefix) = prefix {
        store_args.extend(["--redis-key-prefix".to_owned(), prefix.to_owned()]);
    }
    // The owner password, the way an operator sets it.
    let mut set = Command::new(&opts.gatehouse)
        .args(["owner", "set-password"])
        .args(&store_args)
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", opts.gatehouse.display()))?;
    if let Some(stdin) = set.stdin.as_mut() {
        let _ = writeln!(stdin, "{PASSWORD}");
    }
    set.wait().map_err(|e| e.to_string())?;

    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let server = Server {
        child: Command::new(&opts.gatehouse)
            .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
            .args(&store_args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| e.to_string())?,
    };
    wait_until_up(http, &format!("{base}/healthz")).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss_mb = server.rss_mb();

    let flow = Flow::new(http.clone(), base.clone()).await?;
    // One token for the tool calls; an article to read.
    let writer = flow.tokens("read:articles write:articles").await?;
    let token = writer["access_token"]
        .as_str()
        .ok_or("no access token")?
        .to_owned();
    let session = mcp_session(http, &format!("{base}/mcp"), &token).await?;
    let created = tools_call(
        http,
        &format!("{base}/mcp"),
        &token,
        &session,
        json!({"name": "create_article", "arguments": {"title": "Benchmark", "body": "Read me quickly."}}),
    )
    .await?;
    if !created.contains("\"slug\"") {
        return Err(format!("create_article failed: {created}"));
    }

    eprintln!("tools/call get_article …");
    let tools = tools_load(
        http,
        &format!("{base}/mcp"),
        &token,
        json!({"name": "get_article", "arguments": {"slug": "benchmark"}}),
        "Read me quickly.",
        duration,
    )
    .await?;

    // Refresh grants: 64 grants, each worker rotating its own.
    let mut grants = Vec::new();
    for _ in 0..CONCURRENCY {
        let tokens = flow.tokens("read:articles").await?;
        let refresh = tokens["refresh_token"]
            .as_str()
            .ok_or("no refresh token")?
            .to_owned();
        grants.push((flow.client_id.clone(), refresh));
    }
    eprintln!("refresh grants …");
    let token_url = format!("{base}/oauth/token");
    let refresh = load(duration, grants, {
        let http = http.clone();
        move |grant: &mut (String, String)| {
            let (http, url, client_id, rt) = (
                http.clone(),
                token_url.clone(),
                grant.0.clone(),
                grant.1.clone(),
            );
            async move {
                let answer: Value = http
                    .post(&url)
                    .form(&[
                        ("grant_type", "refresh_token"),
                        ("refresh_token", rt.as_str()),
                        ("client_id", client_id.as_str()),
                    ])
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .json()
                    .await
                    .map_err(|e| e.to_string())?;
                answer["refresh_token"]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("refresh failed: {answer}"))
            }
        }
    })
    .await;
    let after_rss_mb = server.rss_mb();
    drop(server);
    Ok(Row {
        name: name.to_owned(),
        tools,
        refresh: Some(refresh),
        idle_rss_mb,
        after_rss_mb,
    })
}

/// The OAuth flow as a client and the owner's browser perform it.
struct Flow {
    http: reqwest::Client,
    base: String,
    cookie: String,
    client_id: String,
}

const REDIRECT: &str = "http://127.0.0.1:9/callback";

impl Flow {
    async fn new(http: reqwest::Client, base: String) -> Result<Self> {
        let login = http
            .post(format!("{base}/oauth/login"))
            .form(&[("password", PASSWORD), ("return_to", "/")])
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let cookie = login
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .ok_or("sign-in failed")?
            .to_owned();
        let registered: Value = http
            .post(format!("{base}/oauth/register"))
            .json(&json!({"client_name": "bench", "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"}))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let client_id = registered["client_id"]
            .as_str()
            .ok_or("registration failed")?
            .to_owned();
        Ok(Flow {
            http,
            base,
            cookie,
            client_id,
        })
    }

    async fn tokens(&self, scope: &str) -> Result<Value> {
        let (verifier, challenge) = pkce();
        let url = authorize_url(
            &format!("{}/oauth/authorize", self.base),
            &self.client_id,
            &challenge,
            Some(scope),
            None,
        )?;
        let consent = self
            .http
            .get(url)
            .header("cookie", &self.cookie)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        let start = consent
            .find("/oauth/authorize/approve?ticket=")
            .ok_or("no consent page")?;
        let end = start + consent[start..].find('"').ok_or("no approve link")?;
        let approve = self
            .http
            .get(format!("{}{}", self.base, &consent[start..end]))
            .header("cookie", &self.cookie)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let code = code_of(&approve)?;
        redeem(
            &self.http,
            &format!("{}/oauth/token", self.base),
            &code,
            &verifier,
            &self.client_id,
            None,
        )
        .await
    }
}

/// An authorization request URL with PKCE for the bench client.
fn authorize_url(
    endpoint: &str,
    client_id: &str,
    challenge: &str,
    scope: Option<&str>,
    resource: Option<&str>,
) -> Result<url::Url> {
    let mut url = url::Url::parse(endpoint).map_err(|e| e.to_string())?;
    {
        let mut query = url.query_pairs_mut();
        query
            .append_pair("client_id", client_id)
            .append_pair("redirect_uri", REDIRECT)
            .append_pair("response_type", "code")
            .append_pair("code_challenge", challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("state", "bench");
        if let Some(scope) = scope {
            query.append_pair("scope", scope);
        }
        if let Some(resource) = resource {
            query.append_pair("resource", resource);
        }
    }
    Ok(url)
}

/// The `code` in an authorization response's redirect.
fn code_of(response: &reqwest::Response) -> Result<String> {
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| format!("no redirect ({})", response.status()))?;
    url::Url::parse(location)
        .map_err(|e| e.to_string())?
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| "no code in the redirect".to_owned())
}

/// Redeems a code with its PKCE verifier; returns the token response.
async fn redeem(
    http: &reqwest::Client,
    token_url: &str,
    code: &str,
    verifier: &str,
    client_id: &str,
    resource: Option<&str>,
) -> Result<Value> {
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", REDIRECT),
        ("code_verifier", verifier),
        ("client_id", client_id),
    ];
    if let Some(resource) = resource {
        form.push(("resource", resource));
    }
    http.post(token_url)
        .form(&form)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())
}

// ----- MCP --------------------------------------------------------------------------

async fn mcp_session(http: &reqwest::Client, url: &str, token: &str) -> Result<String> {
    let init = http
        .post(url)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let session = init
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| format!("initialize answered {} without a session", init.status()))?
        .to_owned();
    let _ = init.text().await;
    http.post(url)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-06-18")
        .json(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    Ok(session)
}

async fn tools_call(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    session: &str,
    params: Value,
) -> Result<String> {
    let response = http
        .post(url)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", session)
        .header("mcp-protocol-version", "2025-06-18")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status}: {body}"));
    }
    Ok(body)
}

/// `tools/call` with `params` from 64 MCP sessions (one per worker, as separate clients
/// would have), each worker on its own keep-alive connection; an answer counts only
/// when it contains `expect` and no tool error.
async fn tools_load(
    http: &reqwest::Client,
    mcp: &str,
    token: &str,
    params: Value,
    expect: &'static str,
    duration: Duration,
) -> Result<Load> {
    let url = url::Url::parse(mcp).map_err(|e| e.to_string())?;
    let address = format!(
        "{}:{}",
        url.host_str().unwrap_or("127.0.0.1"),
        url.port().unwrap_or(80)
    );
    let host = address.clone();
    let body = bytes::Bytes::from(
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}).to_string(),
    );
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let session = mcp_session(http, mcp, token).await?;
        let stream = tokio::net::TcpStream::connect(&address)
            .await
            .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        workers.push((sender, session));
    }
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|(mut sender, session)| {
            let (path, host, token, body) = (
                url.path().to_owned(),
                host.clone(),
                token.to_owned(),
                body.clone(),
            );
            tokio::spawn(async move {
                let (mut latencies, mut errors) = (Vec::new(), 0u64);
                while Instant::now() < deadline {
                    let request = hyper::Request::post(path.as_str())
                        .header("host", host.as_str())
                        .header("authorization", format!("Bearer {token}"))
                        .header("content-type", "application/json")
                        .header("accept", "application/json, text/event-stream")
                        .header("mcp-session-id", session.as_str())
                        .header("mcp-protocol-version", "2025-06-18")
                        .body(http_body_util::Full::new(body.clone()));
                    let began = Instant::now();
                    let outcome = match request {
                        Ok(request) => exchange(&mut sender, request, expect).await,
                        Err(e) => Err(e.to_string()),
                    };
                    match outcome {
                        Ok(()) => latencies.push(began.elapsed().as_micros() as u32),
                        Err(e) => {
                            if errors == 0 {
                                eprintln!("  error: {e}");
                            }
                            errors += 1;
                            if sender.is_closed() {
                                break;
                            }
                        }
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        if let Ok((latencies, e)) = task.await {
            all.extend(latencies);
            errors += e;
        }
    }
    Ok(summarize(all, errors, started.elapsed().as_secs_f64()))
}

async fn exchange(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    request: hyper::Request<http_body_util::Full<bytes::Bytes>>,
    expect: &str,
) -> Result {
    use http_body_util::BodyExt;
    sender.ready().await.map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    if !status.is_success() || text.contains("\"isError\":true") || !text.contains(expect) {
        return Err(format!("{status}: {text}"));
    }
    Ok(())
}

// ----- load -------------------------------------------------------------------------

/// Runs one worker per state for `duration`; each call's output becomes its next state
/// when it is a `String` (refresh rotation), else the state stays.
async fn load<S, F, Fut, O>(duration: Duration, states: Vec<S>, call: F) -> Load
where
    S: Send + 'static + NextState<O>,
    F: Fn(&mut S) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<O>> + Send,
    O: Send + 'static,
{
    let call = Arc::new(call);
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = states
        .into_iter()
        .map(|mut state| {
            let call = call.clone();
            tokio::spawn(async move {
                let (mut latencies, mut errors) = (Vec::new(), 0u64);
                while Instant::now() < deadline {
                    let began = Instant::now();
                    match call(&mut state).await {
                        Ok(output) => {
                            latencies.push(began.elapsed().as_micros() as u32);
                            state.advance(output);
                        }
                        Err(e) => {
                            if errors == 0 {
                                eprintln!("  error: {e}");
                            }
                            errors += 1;
                        }
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for worker in workers {
        if let Ok((latencies, e)) = worker.await {
            all.extend(latencies);
            errors += e;
        }
    }
    summarize(all, errors, started.elapsed().as_secs_f64())
}

fn summarize(mut all: Vec<u32>, errors: u64, seconds: f64) -> Load {
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    Load {
        requests: all.len() as u64,
        errors,
        seconds,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    }
}

/// How a worker's state moves on after a successful call.
trait NextState<O> {
    fn advance(&mut self, output: O);
}

impl NextState<String> for (String, String) {
    fn advance(&mut self, next_refresh_token: String) {
        self.1 = next_refresh_token;
    }
}

// ----- reference --------------------------------------------------------------------

async fn bench_reference(
    opts: &Options,
    http: &reqwest::Client,
    duration: Duration,
) -> Result<Row> {
    let script = opts.reference.join(
        "node_modules/@modelcontextprotocol/sdk/dist/esm/examples/server/simpleStreamableHttp.js",
    );
    let (mcp_port, auth_port) = (free_port()?, free_port()?);
    let server = Server {
        child: Command::new("node")
            .arg(&script)
            .arg("--oauth")
            .env("MCP_PORT", mcp_port.to_string())
            .env("MCP_AUTH_PORT", auth_port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run node {}: {e}", script.display()))?,
    };
    let base = format!("http://localhost:{mcp_port}");
    let auth = format!("http://localhost:{auth_port}");
    wait_until_up(
        http,
        &format!("{auth}/.well-known/oauth-authorization-server"),
    )
    .await?;
    wait_until_up(
        http,
        &format!("{base}/.well-known/oauth-protected-resource/mcp"),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss_mb = server.rss_mb();

    // Its demo authorization server approves at once: register, authorize, redeem.
    let registered: Value = http
        .post(format!("{auth}/register"))
        .json(&json!({"client_name": "bench", "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none",
                      "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"]}))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let client_id = registered["client_id"]
        .as_str()
        .ok_or_else(|| format!("reference registration: {registered}"))?
        .to_owned();
    let (verifier, challenge) = pkce();
    let resource = format!("{base}/mcp");
    let url = authorize_url(
        &format!("{auth}/authorize"),
        &client_id,
        &challenge,
        None,
        Some(&resource),
    )?;
    let authorized = http.get(url).send().await.map_err(|e| e.to_string())?;
    let code = code_of(&authorized).map_err(|e| format!("reference: {e}"))?;
    let tokens = redeem(
        http,
        &format!("{auth}/token"),
        &code,
        &verifier,
        &client_id,
        Some(&resource),
    )
    .await?;
    let token = tokens["access_token"]
        .as_str()
        .ok_or_else(|| format!("reference token: {tokens}"))?
        .to_owned();

    eprintln!("tools/call greet …");
    let tools = tools_load(
        http,
        &format!("{base}/mcp"),
        &token,
        json!({"name": "greet", "arguments": {"name": "bench"}}),
        "Hello, bench",
        duration,
    )
    .await?;
    let after_rss_mb = server.rss_mb();
    Ok(Row {
        name: "reference: TS SDK simpleStreamableHttp --oauth".into(),
        tools,
        refresh: None,
        idle_rss_mb,
        after_rss_mb,
    })
}
