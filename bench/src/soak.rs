//! `cargo xtask soak`: Gatehouse under a steady mixed load for a minute per store, to
//! show that its memory stays flat, that nothing fails except the limits and the
//! outage meant to, and that it recovers promptly when Redis comes back.
//!
//! For each store (embedded, then a Redis server of its own) it starts the release
//! server, obtains tokens through the real flow, then for `--seconds` (60) runs:
//! - [`TOOL_WORKERS`] workers calling `tools/call get_article`, each in its own MCP
//!   session;
//! - [`REFRESH_WORKERS`] workers, each rotating its own grant's refresh token;
//! - [`REGISTRATION_WORKERS`] workers registering clients, paced a little above the
//!   per-address limit the server is started with, so both `201` and `429` occur;
//! - one worker signing in with a wrong password, paced: `401`, then `429` once the
//!   address is slowed down;
//! - [`GATEWAY_WORKERS`] workers calling the bench upstream's tool through the gateway
//!   (`/mcp/fast`, an HTTP upstream), each in its own session;
//! - [`STDIO_WORKERS`] workers opening a session at a stdio upstream (`/mcp/stdio`, one
//!   process per session), calling its tool [`CALLS_PER_STDIO_SESSION`] times and
//!   ending the session, over and over.
//!
//! Gatehouse's child processes (the stdio upstream's) are counted with the RSS; once
//! the load stops, none but those there before it may be left after
//! [`PROCESSES_GONE_GOAL`] (compared by process id), and none may be a zombie. A
//! stdio session refused as `busy` is unexpected.
//!
//! The server's RSS is sampled every 5 s. On Redis, halfway through, the Redis server is
//! killed (SIGKILL), restarted [`OUTAGE`] later on the same port and directory, and the
//! recovery time is measured from its first `PONG` to the first successful tool call
//! and refresh after it. Answers other than success, `429` and `503` (and the `401` the
//! wrong password asks for) are unexpected, and counted by kind.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{
    fast_params, free_port, gateway_config, mcp_session, tools_call, upstream, wait_until_up, Flow,
    Result, Server, HTTP_UPSTREAM, PASSWORD, REDIRECT, STDIO_UPSTREAM,
};

const TOOL_WORKERS: usize = 16;
const REFRESH_WORKERS: usize = 4;
const REGISTRATION_WORKERS: usize = 2;
const GATEWAY_WORKERS: usize = 4;
/// Four sessions at a time, a process each, under the stdio upstream's cap of 16: a
/// session's place is given back only once its process is gone, so a cap reached
/// here (an unexpected `busy`) would mean processes outliving their sessions.
const STDIO_WORKERS: usize = 4;
const CALLS_PER_STDIO_SESSION: usize = 5;
/// How long a stdio session's `DELETE` is tried again (a `503` while Redis is down)
/// after the run, as a client would, so that its process is not left to idle out.
const DELETE_GRACE: Duration = Duration::from_secs(5);
/// Each registration worker registers once per this: 10 a second together, 600 a
/// minute, against a limit of [`REGISTRATIONS_PER_MINUTE`]: mostly `201`, and the
/// limiter's `429` in the last seconds of each minute.
const REGISTRATION_PACE: Duration = Duration::from_millis(200);
const REGISTRATIONS_PER_MINUTE: u32 = 500;
/// New MCP sessions per client per minute (default 30): raised, so the stdio workers
/// start and end processes as fast as they can.
const SESSIONS_PER_MINUTE: u32 = 60_000;
/// Two wrong passwords a second: a guesser, not a flood (Argon2 would eat the CPU the
/// other loads need, and the slow-down turns almost all of them into `429` anyway).
const SIGN_IN_PACE: Duration = Duration::from_millis(500);
const RSS_EVERY: Duration = Duration::from_secs(5);
/// An answer that takes longer than this is a hang, and counts as unexpected.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long Redis stays dead.
const OUTAGE: Duration = Duration::from_secs(3);
const DEFAULT_SECONDS: u64 = 60;

/// The goals of issue #12.
const RSS_GROWTH_ALLOWED: f64 = 1.2;
const RECOVERY_GOAL: Duration = Duration::from_secs(2);
/// A stdio server has 3 s after its stdin closes, then 3 s after `SIGTERM`; the bench
/// upstream exits at once, so this leaves room for a slow machine.
const PROCESSES_GONE_GOAL: Duration = Duration::from_secs(10);

const ARTICLE_TITLE: &str = "Soak";
const ARTICLE_SLUG: &str = "soak";
const ARTICLE_BODY: &str = "Read me again and again.";

struct Options {
    gatehouse: PathBuf,
    redis_server: PathBuf,
    seconds: u64,
}

fn options() -> Result<Options> {
    // `bench soak [--gatehouse PATH] [--redis-server PATH] [--seconds N]`
    let mut args = std::env::args().skip(2);
    let mut opts = Options {
        gatehouse: PathBuf::from("target/release/gatehouse"),
        redis_server: PathBuf::from("redis-server"),
        seconds: DEFAULT_SECONDS,
    };
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--gatehouse" => opts.gatehouse = value()?.into(),
            "--redis-server" => opts.redis_server = value()?.into(),
            "--seconds" => {
                opts.seconds = value()?
                    .parse()
                    .ok()
                    .filter(|n| *n >= 10)
                    .ok_or("--seconds takes a whole number of seconds, at least 10")?
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(opts)
}

/// Runs the soak on both stores, prints the table, and fails when a goal is missed.
/// Ctrl-C drops everything, and with it the child processes.
pub(crate) async fn run() -> Result {
    let opts = options()?;
    let dir = std::env::temp_dir().join(format!("gatehouse-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let outcome = tokio::select! {
        outcome = soak_both(&opts, &dir) => outcome,
        _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
    };
    match &outcome {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&dir);
        }
        Err(_) => eprintln!("soak: logs kept in {}", dir.display()),
    }
    outcome
}

async fn soak_both(opts: &Options, dir: &Path) -> Result {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(64)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let embedded = format!("embedded:{}", dir.join("soak.redb").display());
    eprintln!("\n== embedded store");
    let first = soak_store(opts, &http, "embedded", &embedded, None, dir).await?;
    eprintln!("\n== Redis (its own redis-server, killed and restarted halfway)");
    let mut redis = Redis::start(&opts.redis_server, &dir.join("redis")).await?;
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let second = soak_store(opts, &http, "Redis", &url, Some(&mut redis), dir).await?;

    let rows = [first, second];
    print_table(&rows, opts.seconds);
    let missed: Vec<String> = rows.iter().flat_map(Row::missed).collect();
    if missed.is_empty() {
        println!("\nEvery goal met.");
        Ok(())
    } else {
        println!("\nGoals missed:");
        for miss in &missed {
            println!("- {miss}");
        }
        Err(format!("{} goal(s) missed", missed.len()))
    }
}

// ----- outcomes ---------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Tools,
    Refresh,
    Registration,
    SignIn,
    Gateway,
    StdioSession,
}

const KINDS: [Kind; 6] = [
    Kind::Tools,
    Kind::Refresh,
    Kind::Registration,
    Kind::SignIn,
    Kind::Gateway,
    Kind::StdioSession,
];

/// One counter per kind.
type Counters = [AtomicU64; KINDS.len()];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Tools => "tools/call",
            Kind::Refresh => "refresh",
            Kind::Registration => "registration",
            Kind::SignIn => "failed sign-in",
            Kind::Gateway => "gateway tools/call",
            Kind::StdioSession => "stdio session",
        }
    }
}

enum Outcome {
    /// What the request is for: a tool's answer, a rotated token, a new client, and
    /// for a wrong password its refusal.
    Ok,
    /// `429`: a limit doing its job.
    Limited,
    /// `503`: the store is down, said promptly.
    Unavailable,
    Unexpected(String),
}

/// Counts per kind, and the moments the recovery time is measured from. Shared by
/// every worker of one store's run.
struct Soak {
    started: Instant,
    deadline: Instant,
    ok: Counters,
    limited: Counters,
    unavailable: Counters,
    unexpected: Counters,
    /// The slowest answer (µs), or the longest wait for none: a hang shows here.
    slowest: Counters,
    /// Each unexpected answer, by kind and reason.
    reasons: Mutex<BTreeMap<String, u64>>,
    /// Successes at or after this (µs since `started`) are noted below; `u64::MAX`
    /// until Redis is back.
    watch_from: AtomicU64,
    first_tools: AtomicU64,
    first_refresh: AtomicU64,
}

impl Soak {
    fn new(duration: Duration) -> Self {
        let started = Instant::now();
        Soak {
            started,
            deadline: started + duration,
            ok: Default::default(),
            limited: Default::default(),
            unavailable: Default::default(),
            unexpected: Default::default(),
            slowest: Default::default(),
            reasons: Mutex::default(),
            watch_from: AtomicU64::new(u64::MAX),
            first_tools: AtomicU64::new(u64::MAX),
            first_refresh: AtomicU64::new(u64::MAX),
        }
    }

    fn running(&self) -> bool {
        Instant::now() < self.deadline
    }

    fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    fn record(&self, kind: Kind, outcome: Outcome) {
        let i = kind as usize;
        match outcome {
            Outcome::Ok => {
                self.ok[i].fetch_add(1, Ordering::Relaxed);
                self.note_success(kind);
            }
            Outcome::Limited => {
                self.limited[i].fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Unavailable => {
                self.unavailable[i].fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Unexpected(reason) => {
                self.unexpected[i].fetch_add(1, Ordering::Relaxed);
                let key = format!("{}: {reason}", kind.name());
                let mut reasons = self.reasons.lock().unwrap_or_else(|p| p.into_inner());
                let count = reasons.entry(key.clone()).or_insert(0);
                if *count == 0 {
                    eprintln!(
                        "  {:>5.1} s  unexpected {key}",
                        self.started.elapsed().as_secs_f64()
                    );
                }
                *count += 1;
            }
        }
    }

    /// The first tool call and refresh to succeed once Redis answers again.
    fn note_success(&self, kind: Kind) {
        let now = self.now_us();
        if now < self.watch_from.load(Ordering::Acquire) {
            return;
        }
        match kind {
            Kind::Tools => self.first_tools.fetch_min(now, Ordering::AcqRel),
            Kind::Refresh => self.first_refresh.fetch_min(now, Ordering::AcqRel),
            _ => return,
        };
    }

    fn count(&self, counters: &Counters, kind: Kind) -> u64 {
        counters[kind as usize].load(Ordering::Relaxed)
    }

    fn answered(&self, kind: Kind) -> u64 {
        [&self.ok, &self.limited, &self.unavailable, &self.unexpected]
            .into_iter()
            .map(|c| self.count(c, kind))
            .sum()
    }

    fn total(&self, counters: &Counters) -> u64 {
        KINDS.iter().map(|k| self.count(counters, *k)).sum()
    }

    fn total_max(&self, counters: &Counters) -> u64 {
        KINDS
            .iter()
            .map(|k| self.count(counters, *k))
            .max()
            .unwrap_or(0)
    }
}

/// Sends `request`; the status and body, or why there was no answer. Keeps the
/// slowest time per kind.
async fn answer(
    soak: &Soak,
    kind: Kind,
    request: reqwest::RequestBuilder,
) -> std::result::Result<(StatusCode, String), String> {
    let began = Instant::now();
    let answer = async {
        let response = request.send().await.map_err(transport_error)?;
        let status = response.status();
        let body = response.text().await.map_err(transport_error)?;
        Ok((status, body))
    }
    .await;
    soak.slowest[kind as usize].fetch_max(began.elapsed().as_micros() as u64, Ordering::Relaxed);
    answer
}

fn transport_error(e: reqwest::Error) -> String {
    if e.is_timeout() {
        format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())
    } else if e.is_connect() {
        "cannot connect".into()
    } else {
        format!("transport error: {}", e.without_url())
    }
}

/// The outcome of an answer whose only success is `success`.
fn outcome(
    answer: std::result::Result<(StatusCode, String), String>,
    success: StatusCode,
) -> Outcome {
    match answer {
        Err(e) => Outcome::Unexpected(e),
        Ok((status, _)) if status == success => Outcome::Ok,
        Ok((status, body)) => status_outcome(status, &body),
    }
}

fn status_outcome(status: StatusCode, body: &str) -> Outcome {
    match status {
        StatusCode::TOO_MANY_REQUESTS => Outcome::Limited,
        StatusCode::SERVICE_UNAVAILABLE => Outcome::Unavailable,
        _ => Outcome::Unexpected(reason(status, body)),
    }
}

/// A status and the error code its body names (OAuth `error` or a JSON-RPC error's
/// code), never the body itself: no token or other secret reaches the output.
fn reason(status: StatusCode, body: &str) -> String {
    let code = json_of(body).and_then(|v| match v.get("error")? {
        Value::String(code) => Some(code.clone()),
        Value::Object(e) => Some(format!("JSON-RPC error {}", e.get("code")?)),
        _ => None,
    });
    match code {
        Some(code) => format!("{} {code}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

/// A JSON body, or the first message of a server-sent event stream (past an event
/// without data, such as the one a server may send first to give the stream an id).
fn json_of(body: &str) -> Option<Value> {
    serde_json::from_str(body).ok().or_else(|| {
        body.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .find_map(|data| serde_json::from_str(data.trim()).ok())
    })
}

// ----- workers ----------------------------------------------------------------------

/// A tool call that must answer with a text: `get_article` at `/mcp`, or the bench
/// upstream's tool through the gateway.
#[derive(Clone)]
struct Call {
    kind: Kind,
    url: String,
    token: String,
    params: Value,
    expected: &'static str,
}

impl Call {
    fn request(&self, http: &reqwest::Client, session: &str, id: usize) -> reqwest::RequestBuilder {
        mcp_request(http, &self.url, &self.token, Some(session)).json(
            &json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": self.params}),
        )
    }

    /// Calls once in `session`, and records the outcome; how it went.
    async fn once(&self, soak: &Soak, http: &reqwest::Client, session: &str, id: usize) -> Step {
        let outcome = match answer(soak, self.kind, self.request(http, session, id)).await {
            Err(e) => Outcome::Unexpected(e),
            Ok((StatusCode::OK, body)) => tool_answer(&body, self.expected),
            Ok((status, body)) => status_outcome(status, &body),
        };
        let step = Step::of(&outcome);
        soak.record(self.kind, outcome);
        step
    }
}

/// How a step of a stdio session went; the worst step decides the cycle's outcome.
#[derive(Clone, Copy, PartialEq, PartialOrd)]
enum Step {
    Ok,
    /// `429` or `503`: a limit, or the store down.
    Refused,
    Failed,
}

impl Step {
    fn of(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Ok => Step::Ok,
            Outcome::Limited | Outcome::Unavailable => Step::Refused,
            Outcome::Unexpected(_) => Step::Failed,
        }
    }

    fn status(status: StatusCode) -> Self {
        match status {
            s if s.is_success() => Step::Ok,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => Step::Refused,
            _ => Step::Failed,
        }
    }
}

/// A POST to an MCP endpoint, in `session` when there is one.
fn mcp_request(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    session: Option<&str>,
) -> reqwest::RequestBuilder {
    let request = http
        .post(url)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18");
    match session {
        Some(session) => request.header("mcp-session-id", session),
        None => request,
    }
}

/// `call` in its own session, as fast as it is answered.
async fn tools_worker(soak: Arc<Soak>, http: reqwest::Client, call: Call, session: String) {
    while soak.running() {
        call.once(&soak, &http, &session, 1).await;
    }
}

/// A session at the stdio upstream (a process of its own), [`CALLS_PER_STDIO_SESSION`]
/// calls in it, and its end, over and over. A cycle is one answer of its kind: a
/// success when every step succeeded (each call is also counted as a gateway call).
async fn stdio_worker(soak: Arc<Soak>, http: reqwest::Client, call: Call) {
    let kind = Kind::StdioSession;
    let initialize = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "soak", "version": "1"}}});
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    while soak.running() {
        let request = mcp_request(&http, &call.url, &call.token, None).json(&initialize);
        let began = Instant::now();
        let opened = request.send().await.map_err(transport_error);
        soak.slowest[kind as usize]
            .fetch_max(began.elapsed().as_micros() as u64, Ordering::Relaxed);
        let session = match opened {
            Err(e) => {
                soak.record(kind, Outcome::Unexpected(e));
                continue;
            }
            Ok(response) => {
                let status = response.status();
                let session = response
                    .headers()
                    .get("mcp-session-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body = response.text().await.unwrap_or_default();
                let message = json_of(&body);
                match (status, session) {
                    (StatusCode::OK, Some(session))
                        if message.as_ref().is_some_and(|m| m.get("result").is_some()) =>
                    {
                        session
                    }
                    (StatusCode::OK, session) => {
                        // A session named all the same is ended, as a client would.
                        if let Some(session) = session {
                            end_session(&soak, &http, &call, &session).await;
                        }
                        // `busy` included: four sessions at a time are far from the
                        // cap unless processes outlive their sessions.
                        let why = message
                            .as_ref()
                            .and_then(|m| m["error"]["data"]["reason"].as_str())
                            .map_or_else(|| reason(status, &body), str::to_owned);
                        soak.record(kind, Outcome::Unexpected(format!("initialize: {why}")));
                        continue;
                    }
                    (status, _) => {
                        soak.record(kind, status_outcome(status, &body));
                        continue;
                    }
                }
            }
        };
        let mut worst = mcp_request(&http, &call.url, &call.token, Some(&session))
            .json(&initialized)
            .send()
            .await
            .map_or(Step::Failed, |r| Step::status(r.status()));
        for id in 1..=CALLS_PER_STDIO_SESSION {
            let step = call.once(&soak, &http, &session, id).await;
            worst = if step > worst { step } else { worst };
        }
        if !end_session(&soak, &http, &call, &session).await {
            worst = Step::Failed;
        }
        soak.record(
            kind,
            match worst {
                Step::Ok => Outcome::Ok,
                Step::Refused => Outcome::Unavailable,
                Step::Failed => Outcome::Unexpected("a step failed (see the gateway calls)".into()),
            },
        );
    }
}

/// `DELETE`s `session`, again after a `503` (Redis down) until [`DELETE_GRACE`] after
/// the run; whether it ended.
async fn end_session(soak: &Soak, http: &reqwest::Client, call: &Call, session: &str) -> bool {
    let give_up = soak.deadline + DELETE_GRACE;
    loop {
        let ended = http
            .delete(&call.url)
            .bearer_auth(&call.token)
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", "2025-06-18")
            .send()
            .await
            .map(|r| r.status());
        match ended {
            Ok(status) if status.is_success() => return true,
            Ok(StatusCode::SERVICE_UNAVAILABLE) | Err(_) if Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => return false,
        }
    }
}

/// A `200` is a success only when it carries `expected`, not an error.
fn tool_answer(body: &str, expected: &str) -> Outcome {
    let Some(message) = json_of(body) else {
        return Outcome::Unexpected("200 that is not JSON-RPC".into());
    };
    if let Some(error) = message.get("error") {
        return Outcome::Unexpected(format!("200 with JSON-RPC error {}", error["code"]));
    }
    if message["result"]["isError"] == true {
        return Outcome::Unexpected("200 with a tool error".into());
    }
    if !message["result"].to_string().contains(expected) {
        return Outcome::Unexpected("200 without the expected answer".into());
    }
    Outcome::Ok
}

/// Rotates one grant's refresh token, as fast as it is answered. A `503` keeps the
/// token (the next attempt presents it again, as a client would); a dead grant is
/// replaced through the real flow so the load goes on.
async fn refresh_worker(
    soak: Arc<Soak>,
    http: reqwest::Client,
    flow: Arc<Flow>,
    mut refresh_token: String,
) {
    let token_url = format!("{}/oauth/token", flow.base);
    while soak.running() {
        let request = http.post(&token_url).form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.as_str()),
            ("client_id", flow.client_id.as_str()),
        ]);
        let outcome = match answer(&soak, Kind::Refresh, request).await {
            Err(e) => Outcome::Unexpected(e),
            Ok((StatusCode::OK, body)) => match next_refresh_token(&body) {
                Some(next) => {
                    refresh_token = next;
                    Outcome::Ok
                }
                None => Outcome::Unexpected("200 without a refresh token".into()),
            },
            Ok((status, body)) => {
                let outcome = status_outcome(status, &body);
                if reason(status, &body).contains("invalid_grant") {
                    if let Some(fresh) = new_grant(&flow).await {
                        refresh_token = fresh;
                    }
                }
                outcome
            }
        };
        soak.record(Kind::Refresh, outcome);
    }
}

fn next_refresh_token(body: &str) -> Option<String> {
    serde_json::from_str::<Value>(body).ok()?["refresh_token"]
        .as_str()
        .map(str::to_owned)
}

/// A new grant's refresh token, through consent and code redemption.
async fn new_grant(flow: &Flow) -> Option<String> {
    let tokens = flow.tokens("read:articles").await.ok()?;
    tokens["refresh_token"].as_str().map(str::to_owned)
}

/// The address registrations come from: not 127.0.0.1, which Gatehouse (started
/// without `--trusted-proxy`) takes for a local proxy that names nobody and does not
/// hold to the per-minute limit (its clients would share one minute), but another
/// loopback address, which is one client like any other.
const REGISTRATION_FROM: std::net::IpAddr =
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

/// Registers a public client every [`REGISTRATION_PACE`], from [`REGISTRATION_FROM`].
async fn registration_worker(soak: Arc<Soak>, base: String) {
    let Ok(http) = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .local_address(REGISTRATION_FROM)
        .timeout(REQUEST_TIMEOUT)
        .build()
    else {
        let why = format!("no HTTP client from {REGISTRATION_FROM}");
        soak.record(Kind::Registration, Outcome::Unexpected(why));
        return;
    };
    let url = format!("{base}/oauth/register");
    let metadata = json!({"client_name": "soak", "redirect_uris": [REDIRECT],
        "token_endpoint_auth_method": "none"});
    let mut pace = tokio::time::interval(REGISTRATION_PACE);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while soak.running() {
        pace.tick().await;
        let answer = answer(&soak, Kind::Registration, http.post(&url).json(&metadata)).await;
        soak.record(Kind::Registration, outcome(answer, StatusCode::CREATED));
    }
}

/// Signs in with a wrong password every [`SIGN_IN_PACE`]; the `401` is the success.
async fn sign_in_worker(soak: Arc<Soak>, http: reqwest::Client, base: String) {
    let url = format!("{base}/oauth/login");
    let mut pace = tokio::time::interval(SIGN_IN_PACE);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while soak.running() {
        pace.tick().await;
        let form = [("password", "not the owner password"), ("return_to", "/")];
        let answer = answer(&soak, Kind::SignIn, http.post(&url).form(&form)).await;
        soak.record(Kind::SignIn, outcome(answer, StatusCode::UNAUTHORIZED));
    }
}

// ----- one store --------------------------------------------------------------------

enum Recovery {
    /// The embedded store has no outage.
    NotMeasured,
    /// Tool calls and refreshes did not both succeed again before the run ended.
    Never,
    After(Duration),
}

struct Row {
    store: &'static str,
    seconds: u64,
    answered: [u64; KINDS.len()],
    limited: u64,
    unavailable: u64,
    unexpected: u64,
    reasons: BTreeMap<String, u64>,
    slowest: Duration,
    rss_at_10s: f64,
    rss_last: f64,
    recovery: Recovery,
    processes: Processes,
}

/// Gatehouse's child processes (the stdio upstream's, one per session).
struct Processes {
    /// Before the load.
    before: usize,
    /// The most seen at once in the samples taken with the RSS.
    most: usize,
    /// How long after the load no child was left but those before it; `None`: not
    /// within twice [`PROCESSES_GONE_GOAL`].
    gone_after: Option<Duration>,
    /// Left as zombies, then.
    zombies: usize,
}

impl Row {
    fn missed(&self) -> Vec<String> {
        let mut missed = Vec::new();
        if self.rss_last > self.rss_at_10s * RSS_GROWTH_ALLOWED {
            missed.push(format!(
                "{}: RSS grew from {:.1} MB at 10 s to {:.1} MB (more than {:.0} %)",
                self.store,
                self.rss_at_10s,
                self.rss_last,
                (RSS_GROWTH_ALLOWED - 1.0) * 100.0
            ));
        }
        if self.unexpected > 0 {
            missed.push(format!(
                "{}: {} unexpected answer(s): {}",
                self.store,
                self.unexpected,
                self.reasons
                    .iter()
                    .map(|(reason, n)| format!("{n} × {reason}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        let processes = &self.processes;
        match processes.gone_after {
            Some(t) if t <= PROCESSES_GONE_GOAL => {}
            Some(t) => missed.push(format!(
                "{}: the stdio servers' processes took {:.1} s to go (goal: {} s)",
                self.store,
                t.as_secs_f64(),
                PROCESSES_GONE_GOAL.as_secs()
            )),
            None => missed.push(format!(
                "{}: stdio servers' processes outlived their sessions",
                self.store
            )),
        }
        if processes.zombies > 0 {
            missed.push(format!(
                "{}: {} zombie process(es) left",
                self.store, processes.zombies
            ));
        }
        match self.recovery {
            Recovery::After(t) if t > RECOVERY_GOAL => missed.push(format!(
                "{}: recovery took {:.2} s (goal: {} s)",
                self.store,
                t.as_secs_f64(),
                RECOVERY_GOAL.as_secs()
            )),
            Recovery::Never => missed.push(format!(
                "{}: no successful tool call and refresh after Redis came back",
                self.store
            )),
            _ => {}
        }
        missed
    }
}

/// Starts the server on `store`, gets tokens through the real flow, runs the mixed
/// load (killing and restarting `redis` halfway, when given), and measures.
async fn soak_store(
    opts: &Options,
    http: &reqwest::Client,
    name: &'static str,
    store: &str,
    redis: Option<&mut Redis>,
    dir: &Path,
) -> Result<Row> {
    let store_args = ["--store".to_owned(), store.to_owned()];
    set_owner_password(&opts.gatehouse, &store_args)?;
    // The bench's fast upstream over HTTP, and (started by Gatehouse) over stdio.
    let upstream_port = free_port()?;
    let _upstream = Server::this_binary(&["upstream", "--http", &upstream_port.to_string()])?;
    let upstream_url = format!("http://127.0.0.1:{upstream_port}/mcp");
    wait_until_up(http, &upstream_url).await?;
    let config = gateway_config(dir, &upstream_url)?;
    let log = dir.join(format!("gatehouse-{}.log", name.to_lowercase()));
    let (mut server, base) =
        start_gatehouse(&opts.gatehouse, &store_args, &config, &log, http).await?;
    let mcp = format!("{base}/mcp");

    let flow = Arc::new(Flow::new(http.clone(), base.clone()).await?);
    let token = access_token(&flow.tokens("read:articles write:articles").await?)?;
    let session = mcp_session(http, &mcp, Some(&token)).await?;
    let created = tools_call(
        http,
        &mcp,
        &token,
        &session,
        json!({"name": "create_article",
        "arguments": {"title": ARTICLE_TITLE, "body": ARTICLE_BODY}}),
    )
    .await?;
    if !created.contains("\"slug\"") {
        return Err("create_article failed".into());
    }
    let mut sessions = Vec::new();
    for _ in 0..TOOL_WORKERS {
        sessions.push(mcp_session(http, &mcp, Some(&token)).await?);
    }
    let mut grants = Vec::new();
    for _ in 0..REFRESH_WORKERS {
        grants.push(new_grant(&flow).await.ok_or("no refresh token")?);
    }
    let tools = Call {
        kind: Kind::Tools,
        url: mcp.clone(),
        token: token.clone(),
        params: json!({"name": "get_article", "arguments": {"slug": ARTICLE_SLUG}}),
        expected: ARTICLE_BODY,
    };
    let through = |upstream: &str, token: String| Call {
        kind: Kind::Gateway,
        url: format!("{base}/mcp/{upstream}"),
        token,
        params: fast_params(),
        expected: upstream::ANSWER,
    };
    let gateway = through(
        HTTP_UPSTREAM,
        gateway_token(&flow, &base, HTTP_UPSTREAM).await?,
    );
    let stdio = through(
        STDIO_UPSTREAM,
        gateway_token(&flow, &base, STDIO_UPSTREAM).await?,
    );
    let mut gateway_sessions = Vec::new();
    for _ in 0..GATEWAY_WORKERS {
        gateway_sessions.push(mcp_session(http, &gateway.url, Some(&gateway.token)).await?);
    }
    let before = children(server.child.id());

    eprintln!(
        "{TOOL_WORKERS} tool-call, {REFRESH_WORKERS} refresh, {REGISTRATION_WORKERS} registration, \
         1 failed-sign-in, {GATEWAY_WORKERS} gateway and {STDIO_WORKERS} stdio-session workers \
         for {} s …",
        opts.seconds
    );
    let soak = Arc::new(Soak::new(Duration::from_secs(opts.seconds)));
    let mut workers = Vec::new();
    let in_sessions = (sessions.into_iter().map(|s| (&tools, s)))
        .chain(gateway_sessions.into_iter().map(|s| (&gateway, s)));
    for (call, session) in in_sessions {
        let (soak, http, call) = (soak.clone(), http.clone(), call.clone());
        workers.push(tokio::spawn(tools_worker(soak, http, call, session)));
    }
    for _ in 0..STDIO_WORKERS {
        let (soak, http, call) = (soak.clone(), http.clone(), stdio.clone());
        workers.push(tokio::spawn(stdio_worker(soak, http, call)));
    }
    for grant in grants {
        let (soak, http, flow) = (soak.clone(), http.clone(), flow.clone());
        workers.push(tokio::spawn(refresh_worker(soak, http, flow, grant)));
    }
    for _ in 0..REGISTRATION_WORKERS {
        let (soak, base) = (soak.clone(), base.clone());
        workers.push(tokio::spawn(registration_worker(soak, base)));
    }
    workers.push(tokio::spawn(sign_in_worker(
        soak.clone(),
        http.clone(),
        base.clone(),
    )));

    let ((samples, most), recovery) = tokio::join!(sample_rss(&soak, &server), async {
        match redis {
            Some(redis) => outage(&soak, redis).await,
            None => Ok(Recovery::NotMeasured),
        }
    });
    let recovery = recovery?;
    for worker in workers {
        if worker.await.is_err() {
            soak.record(Kind::Tools, Outcome::Unexpected("a worker panicked".into()));
        }
    }
    if let Ok(Some(status)) = server.child.try_wait() {
        return Err(format!("the server exited during the run ({status})"));
    }
    let processes = processes_after(server.child.id(), &before, most).await;
    drop(server);
    print_breakdown(&soak);

    let reasons = soak
        .reasons
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(Row {
        store: name,
        seconds: opts.seconds,
        answered: KINDS.map(|k| soak.answered(k)),
        limited: soak.total(&soak.limited),
        unavailable: soak.total(&soak.unavailable),
        unexpected: soak.total(&soak.unexpected),
        reasons,
        slowest: Duration::from_micros(soak.total_max(&soak.slowest)),
        rss_at_10s: rss_at(&samples, 10),
        rss_last: samples.last().map(|s| s.1).unwrap_or(0.0),
        recovery,
        processes,
    })
}

/// An access token for the gateway's upstream `NAME`, with `NAME:read`, through the
/// real flow.
async fn gateway_token(flow: &Flow, base: &str, upstream: &str) -> Result<String> {
    let resource = format!("{base}/mcp/{upstream}");
    access_token(
        &flow
            .tokens_for(&format!("{upstream}:read"), Some(&resource))
            .await?,
    )
}

/// The children of `pid`, each with whether it is a zombie (`/proc/*/stat`).
fn children(pid: u32) -> BTreeMap<u32, bool> {
    let mut children = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return children;
    };
    for entry in entries.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `PID (COMM) STATE PPID …`; COMM may hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let mut fields = rest.split(' ');
        let (Some(state), Some(ppid)) = (fields.next(), fields.next()) else {
            continue;
        };
        let child = entry.file_name().to_str().and_then(|n| n.parse().ok());
        if let (Some(child), Ok(true)) = (child, ppid.parse().map(|p: u32| p == pid)) {
            children.insert(child, state == "Z");
        }
    }
    children
}

/// Waits (up to twice [`PROCESSES_GONE_GOAL`]) until no child of `pid` is left but
/// those in `before` (by process id: a leaked process cannot stand in for one that
/// ended), once the load has stopped.
async fn processes_after(pid: u32, before: &BTreeMap<u32, bool>, most: usize) -> Processes {
    let stopped = Instant::now();
    loop {
        let now = children(pid);
        let new = now.keys().filter(|c| !before.contains_key(c)).count();
        let zombies = now.values().filter(|z| **z).count();
        let waited = stopped.elapsed();
        if new == 0 || waited > PROCESSES_GONE_GOAL * 2 {
            let gone_after = (new == 0).then_some(waited);
            eprintln!(
                "  stdio processes: {} before the load, at most {most} during it, {new} new ones \
                 and {zombies} zombies {:.1} s after it",
                before.len(),
                waited.as_secs_f64()
            );
            return Processes {
                before: before.len(),
                most,
                gone_after,
                zombies,
            };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn access_token(tokens: &Value) -> Result<String> {
    tokens["access_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "no access token".into())
}

/// The owner password, the way an operator sets it.
fn set_owner_password(gatehouse: &Path, store_args: &[String]) -> Result {
    let mut set = Command::new(gatehouse)
        .args(["owner", "set-password"])
        .args(store_args)
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", gatehouse.display()))?;
    // Written, then closed, so the command never waits for more input.
    if let Some(mut stdin) = set.stdin.take() {
        let _ = writeln!(stdin, "{PASSWORD}");
    }
    let status = set.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("gatehouse owner set-password failed ({status})"));
    }
    Ok(())
}

/// `gatehouse serve` on a free port, its log (warnings and up) in `log`; the
/// registration limit is raised so the registration workers see both answers.
async fn start_gatehouse(
    gatehouse: &Path,
    store_args: &[String],
    config: &Path,
    log: &Path,
    http: &reqwest::Client,
) -> Result<(Server, String)> {
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let log = std::fs::File::create(log).map_err(|e| e.to_string())?;
    let server = Server {
        child: Command::new(gatehouse)
            .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
            .args(store_args)
            .args([
                "--registrations-per-minute",
                &REGISTRATIONS_PER_MINUTE.to_string(),
                // The limit in all must not be what the registration load meets.
                "--registrations-per-hour",
                &(REGISTRATIONS_PER_MINUTE * 60).to_string(),
                "--sessions-per-minute",
                &SESSIONS_PER_MINUTE.to_string(),
                // Every stdio session is ended, but not those a run's end cuts short.
                "--sessions-per-day",
                "1000000000",
                // Each refresh worker rotates its grant as fast as it is answered,
                // as no client does: a rotation would otherwise wait for a token
                // retired within the hour to be remembered that long.
                "--refresh-reuse-window",
                "0s",
            ])
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            // The server logs to stdout.
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| e.to_string())?,
    };
    wait_until_up(http, &format!("{base}/healthz")).await?;
    Ok((server, base))
}

/// The server's RSS every [`RSS_EVERY`] until the end of the run, and at its end;
/// and the most child processes it had at those moments.
async fn sample_rss(soak: &Soak, server: &Server) -> (Vec<(u64, f64)>, usize) {
    let mut samples = Vec::new();
    let mut most = 0;
    let mut at = soak.started;
    loop {
        at = (at + RSS_EVERY).min(soak.deadline);
        tokio::time::sleep_until(at.into()).await;
        let second = (at - soak.started).as_secs();
        let mb = server.rss_mb();
        let processes = children(server.child.id()).len();
        most = most.max(processes);
        eprintln!("  {second:>5} s  RSS {mb:.1} MB, {processes} child processes");
        samples.push((second, mb));
        if at >= soak.deadline {
            return (samples, most);
        }
    }
}

/// The sample taken at `second` (or the first one after it).
fn rss_at(samples: &[(u64, f64)], second: u64) -> f64 {
    samples
        .iter()
        .find(|(s, _)| *s >= second)
        .map(|s| s.1)
        .unwrap_or(0.0)
}

/// Halfway through: kills Redis, restarts it after [`OUTAGE`], and measures the time
/// from its first `PONG` to the first successful tool call and refresh after it.
async fn outage(soak: &Soak, redis: &mut Redis) -> Result<Recovery> {
    tokio::time::sleep_until((soak.started + (soak.deadline - soak.started) / 2).into()).await;
    let since = |at: Instant| (at - soak.started).as_secs_f64();
    redis.kill();
    eprintln!("  {:>5.1} s  Redis killed (SIGKILL)", since(Instant::now()));
    tokio::time::sleep(OUTAGE).await;
    redis.restart().await?;
    let back = soak.now_us();
    soak.watch_from.store(back, Ordering::Release);
    eprintln!(
        "  {:>5.1} s  Redis restarted and answering PING",
        back as f64 / 1e6
    );
    while soak.running() {
        let tools = soak.first_tools.load(Ordering::Acquire);
        let refresh = soak.first_refresh.load(Ordering::Acquire);
        if tools != u64::MAX && refresh != u64::MAX {
            let recovery = Duration::from_micros(tools.max(refresh) - back);
            eprintln!(
                "  {:>5.1} s  recovered: tool call after {:.3} s, refresh after {:.3} s",
                tools.max(refresh) as f64 / 1e6,
                (tools - back) as f64 / 1e6,
                (refresh - back) as f64 / 1e6
            );
            return Ok(Recovery::After(recovery));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(Recovery::Never)
}

fn print_breakdown(soak: &Soak) {
    for kind in KINDS {
        eprintln!(
            "  {:<15} {:>8} ok  {:>6} × 429  {:>6} × 503  {:>4} unexpected  slowest {:.3} s",
            kind.name(),
            soak.count(&soak.ok, kind),
            soak.count(&soak.limited, kind),
            soak.count(&soak.unavailable, kind),
            soak.count(&soak.unexpected, kind),
            soak.count(&soak.slowest, kind) as f64 / 1e6,
        );
    }
}

fn print_table(rows: &[Row], seconds: u64) {
    println!();
    println!(
        "{TOOL_WORKERS} tool-call, {REFRESH_WORKERS} refresh, {REGISTRATION_WORKERS} registration, \
         1 failed-sign-in, {GATEWAY_WORKERS} gateway and {STDIO_WORKERS} stdio-session workers \
         for {seconds} s per store; requests answered per kind (a stdio session is \
         initialize, {CALLS_PER_STDIO_SESSION} calls, counted among the gateway's, and DELETE)."
    );
    println!();
    println!("| Store | Seconds | tools/call | refresh | registrations | failed sign-ins | gateway tools/call | stdio sessions | 429 | 503 | unexpected | slowest answer s | RSS at 10 s MB | RSS last MB | Recovery s | stdio processes: before · most · gone after s · zombies |");
    println!(
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for row in rows {
        let [tools, refresh, registrations, sign_ins, gateway, stdio] = row.answered;
        let processes = &row.processes;
        let gone = match processes.gone_after {
            Some(t) => format!("{:.1}", t.as_secs_f64()),
            None => "never".to_owned(),
        };
        let recovery = match row.recovery {
            Recovery::NotMeasured => "–".to_owned(),
            Recovery::Never => "never".to_owned(),
            Recovery::After(t) => format!("{:.2}", t.as_secs_f64()),
        };
        println!(
            "| {} | {} | {tools} | {refresh} | {registrations} | {sign_ins} | {gateway} | {stdio} | {} | {} | {} | {:.2} | {:.1} | {:.1} | {recovery} | {} · {} · {gone} · {} |",
            row.store, row.seconds, row.limited, row.unavailable, row.unexpected,
            row.slowest.as_secs_f64(), row.rss_at_10s, row.rss_last,
            processes.before, processes.most, processes.zombies,
        );
    }
}

// ----- Redis ------------------------------------------------------------------------

/// A `redis-server` of the soak's own on a free port, persisting every write before
/// acknowledging it (`appendfsync always`), so a SIGKILL loses nothing the server was
/// told had been stored. The shared Redis on 6379 is never touched.
struct Redis {
    binary: PathBuf,
    dir: PathBuf,
    port: u16,
    process: Option<Server>,
}

impl Redis {
    async fn start(binary: &Path, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let mut redis = Redis {
            binary: binary.to_owned(),
            dir: dir.to_owned(),
            port: free_port()?,
            process: None,
        };
        redis.restart().await?;
        Ok(redis)
    }

    /// Starts the server (again, on the same port and directory) and waits for `PONG`.
    async fn restart(&mut self) -> Result {
        let child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
        self.process = Some(Server { child });
        for _ in 0..1000 {
            if self.pong().await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Err(format!(
            "redis-server on port {} did not answer PING",
            self.port
        ))
    }

    /// SIGKILL: no chance to flush or say goodbye.
    fn kill(&mut self) {
        self.process = None;
    }

    /// Whether Redis answers `PING` (not `-LOADING` while it replays its log).
    async fn pong(&self) -> bool {
        let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        if stream.write_all(b"PING\r\n").await.is_err() {
            return false;
        }
        let mut reply = [0u8; 7];
        matches!(
            tokio::time::timeout(Duration::from_secs(1), stream.read_exact(&mut reply)).await,
            Ok(Ok(_))
        ) && &reply == b"+PONG\r\n"
    }
}
