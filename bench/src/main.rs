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
//!
//! The gateway rows call a fast rmcp server (`upstream.rs`) directly and through
//! Gatehouse (`/mcp/NAME`, over HTTP and over stdio), in the same run; the ceiling rows
//! drive a bare handler that does only the token's hash and one store read
//! (`ceiling.rs`), so each Gatehouse row also reads as a share of what the machine
//! allows; and a bare proxy (`proxy.rs`) relays to the same upstream, which is what
//! any HTTP gateway costs before it does anything of its own.
//!
//! Rows that are compared with one another (Gatehouse and its ceiling; the upstream
//! directly, through the bare proxy and through the gateway) run at once and take
//! turns in [`ROUNDS`] slices, so that a drift in the machine's speed, which on
//! shared machines is larger than the differences measured, reaches them alike.

mod ceiling;
mod cores;
mod proxy;
mod upstream;

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
    /// Only the gateway rows, on the embedded store: a quick loop while tuning them.
    gateway_only: bool,
}

fn options() -> Result<Options> {
    let mut args = std::env::args().skip(1);
    let mut opts = Options {
        gatehouse: PathBuf::from("target/release/gatehouse"),
        reference: PathBuf::from("bench/reference"),
        redis: "redis://127.0.0.1:6379".into(),
        seconds: 10,
        gateway_only: false,
    };
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--gatehouse" => opts.gatehouse = value()?.into(),
            "--reference" => opts.reference = value()?.into(),
            "--redis" => opts.redis = value()?,
            "--gateway-only" => opts.gateway_only = true,
            "--seconds" => {
                opts.seconds = value()?.parse().map_err(|_| "--seconds takes a number")?
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(opts)
}

/// `bench [OPTIONS]` runs the benchmark; `bench soak …` is the soak run (`cargo xtask
/// soak`); `bench upstream …` and `bench ceiling …` are the servers the benchmark
/// starts as separate processes (one binary, so nothing more to build).
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.first().map(String::as_str) {
        Some("upstream") => serve_upstream(&args[1..]),
        Some("ceiling") => serve_ceiling(&args[1..]),
        Some("proxy") => serve_proxy(&args[1..]),
        Some("soak") => runtime(true).and_then(|rt| rt.block_on(soak::run())),
        _ => runtime(true).and_then(|rt| rt.block_on(run())),
    };
    if let Err(e) = outcome {
        eprintln!("bench: {e}");
        std::process::exit(1);
    }
}

fn runtime(multi_thread: bool) -> Result<tokio::runtime::Runtime> {
    let mut builder = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build().map_err(|e| e.to_string())
}

/// Serves `app` on `127.0.0.1:PORT`, as Gatehouse's own listener does without Nagle's
/// delay on small answers: the servers the benchmark starts (`upstream`, `ceiling`,
/// `proxy`).
async fn serve_local(port: u16, app: axum::Router) -> Result {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await.map_err(|e| e.to_string())
}

/// `upstream --http PORT` or `upstream --stdio`. A stdio server is one process per
/// session with one client, so one thread is enough.
fn serve_upstream(args: &[String]) -> Result {
    match args {
        [flag, port] if flag == "--http" => {
            let port = port.parse().map_err(|_| "--http takes a port")?;
            runtime(true)?.block_on(upstream::serve_http(port))
        }
        [flag] if flag == "--stdio" => runtime(false)?.block_on(upstream::serve_stdio()),
        _ => Err("usage: bench upstream --http PORT | --stdio".into()),
    }
}

/// `proxy --port N --upstream URL`.
fn serve_proxy(args: &[String]) -> Result {
    match args {
        [port_flag, port, upstream_flag, upstream]
            if port_flag == "--port" && upstream_flag == "--upstream" =>
        {
            let port = port.parse().map_err(|_| "--port takes a port")?;
            runtime(true)?.block_on(proxy::serve(port, upstream))
        }
        _ => Err("usage: bench proxy --port N --upstream URL".into()),
    }
}

/// `ceiling --port N --store SPEC --prefix P --hash H`.
fn serve_ceiling(args: &[String]) -> Result {
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .ok_or(format!("ceiling needs {name}"))
    };
    let port = value("--port")?
        .parse()
        .map_err(|_| "--port takes a port")?;
    let (store, prefix, hash) = (value("--store")?, value("--prefix")?, value("--hash")?);
    runtime(true)?.block_on(ceiling::serve(port, store, prefix, hash))
}

#[derive(Default, Clone)]
struct Load {
    requests: u64,
    errors: u64,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// What each process spent per call, for the rows that measure it.
    cpu: Option<CpuPerCall>,
}

/// CPU time (user and system) per successful call during a load, in microseconds, of
/// each process on the path. Unlike throughput, it hardly depends on what else the
/// machine runs, so it says where a row's time goes.
#[derive(Default, Clone, Copy)]
struct CpuPerCall {
    /// This process, the load generator.
    load: f64,
    /// The upstream server, when it is a process of its own that the bench started.
    upstream: Option<f64>,
    /// The server under test: Gatehouse, or the ceiling or reference server.
    server: Option<f64>,
}

/// The CPU seconds a process has used so far (`/proc/PID/stat`, in the kernel's
/// 1/100 s ticks).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

/// Runs `load` and records what the load generator, the upstream (`upstream`) and
/// the server under test (`server`) spent per call during it.
async fn with_cpu(
    upstream: Option<u32>,
    server: Option<u32>,
    load: impl std::future::Future<Output = Result<Load>>,
) -> Result<Load> {
    let read = |pid: Option<u32>| pid.and_then(|pid| cpu_seconds(&pid.to_string()));
    let before = (cpu_seconds("self"), read(upstream), read(server));
    let mut load = load.await?;
    let after = (cpu_seconds("self"), read(upstream), read(server));
    // `requests` counts the calls that succeeded.
    let calls = load.requests.max(1) as f64;
    let per_call = |a: Option<f64>, b: Option<f64>| Some((b? - a?) * 1e6 / calls);
    load.cpu = Some(CpuPerCall {
        load: per_call(before.0, after.0).unwrap_or(0.0),
        upstream: per_call(before.1, after.1),
        server: per_call(before.2, after.2),
    });
    Ok(load)
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
            "embedded",
            format!("embedded:{}/bench.redb", data.display()),
            None,
        ),
        (
            "Redis",
            opts.redis.clone(),
            Some(format!("gatehouse-bench-{}:", random(8))),
        ),
    ];
    // The fast upstream, first called directly: the gateway rows' yardstick. It keeps
    // running for the gateway rows of both stores.
    let (upstream, upstream_url) = start_upstream(&http).await?;
    let upstream_pid = Some(upstream.child.id());
    // The least any relay costs: a bare hyper proxy in front of the same upstream.
    let proxy_port = free_port()?;
    let proxy = Server::this_binary(&[
        "proxy",
        "--port",
        &proxy_port.to_string(),
        "--upstream",
        &upstream_url,
    ])?;
    let proxy_url = format!("http://127.0.0.1:{proxy_port}/mcp");
    wait_until_up(&http, &proxy_url).await?;
    // Both kept open for the whole run: each gateway row at full concurrency runs in
    // slices that alternate with them (see `Yardsticks`).
    let mut yardsticks = Yardsticks {
        direct: Sessions::open(
            &http,
            &upstream_url,
            None,
            fast_params(),
            upstream::ANSWER,
            CONCURRENCY,
        )
        .await?,
        proxied: Sessions::open(
            &http,
            &proxy_url,
            None,
            fast_params(),
            upstream::ANSWER,
            CONCURRENCY,
        )
        .await?,
        one: Sessions::open(
            &http,
            &upstream_url,
            None,
            fast_params(),
            upstream::ANSWER,
            1,
        )
        .await?,
        upstream: upstream_pid,
        proxy: Some(proxy.child.id()),
        cores: cores::Cores::two(),
    };
    let config = gateway_config(&data, &upstream_url)?;
    let stores = if opts.gateway_only {
        &stores[..1]
    } else {
        &stores[..]
    };
    for (name, store, prefix) in stores.iter().cloned() {
        let gatehouse_name = format!("gatehouse, {name}");
        eprintln!("\n== {gatehouse_name}");
        let ceiling_store = match &prefix {
            Some(_) => store.clone(),
            None => format!("embedded:{}/ceiling.redb", data.display()),
        };
        let mut gatehouse = bench_gatehouse(
            &opts,
            &http,
            &gatehouse_name,
            (&store, &ceiling_store),
            prefix.as_deref(),
            &config,
            duration,
            &mut yardsticks,
        )
        .await?;
        if opts.gateway_only {
            rows.push(StoreRun {
                store: name,
                gatehouse,
                ceiling: Row {
                    name: String::new(),
                    tools: Load::default(),
                    refresh: None,
                    idle_rss_mb: 0.0,
                    after_rss_mb: 0.0,
                },
            });
            continue;
        }
        let Some(mut ceiling) = gatehouse.ceiling.take() else {
            return Err("the ceiling was not measured".into());
        };
        ceiling.name = format!("ceiling, {name}: bare axum handler, hash + 1 read");
        rows.push(StoreRun {
            store: name,
            gatehouse,
            ceiling,
        });
    }
    yardsticks.direct.close().await;
    yardsticks.proxied.close().await;
    yardsticks.one.close().await;
    drop(proxy);
    drop(upstream);
    if opts.gateway_only {
        let _ = std::fs::remove_dir_all(&data);
        print_gateway_table(&rows);
        return Ok(());
    }
    eprintln!("\n== reference");
    let reference = bench_reference(&opts, &http, duration).await?;
    let _ = std::fs::remove_dir_all(&data);

    print_table(&rows, &reference, opts.seconds);
    print_gateway_table(&rows);
    Ok(())
}

/// Starts `bench upstream --http` and waits until it answers; returns its MCP URL.
async fn start_upstream(http: &reqwest::Client) -> Result<(Server, String)> {
    let port = free_port()?;
    let server = Server::this_binary(&["upstream", "--http", &port.to_string()])?;
    let url = format!("http://127.0.0.1:{port}/mcp");
    wait_until_up(http, &url).await?;
    Ok((server, url))
}

/// The bare handler on one store (`bench ceiling`), with a random token whose hash
/// it stores first: the server, its MCP URL and the token.
async fn start_ceiling(
    http: &reqwest::Client,
    store: &str,
    prefix: Option<&str>,
) -> Result<(Server, String, String)> {
    let token = random(32);
    let port = free_port()?;
    let server = Server::this_binary(&[
        "ceiling",
        "--port",
        &port.to_string(),
        "--store",
        store,
        "--prefix",
        prefix.unwrap_or(""),
        "--hash",
        &ceiling::hash(&token),
    ])?;
    let url = format!("http://127.0.0.1:{port}/mcp");
    wait_until_up(http, &url).await?;
    Ok((server, url, token))
}

fn print_table(runs: &[StoreRun], reference: &Row, seconds: u64) {
    let reference_rate = reference.tools.rate();
    println!();
    println!("tools/call at concurrency {CONCURRENCY} for {seconds} s each; refresh grants likewise (64 grants rotating).");
    println!();
    println!("| Server | tools/call req/s | p50 ms | p99 ms | errors | × reference | % of ceiling | server CPU µs per call | refresh req/s | p50 ms | p99 ms | errors | idle RSS MB | RSS after MB |");
    println!(
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for run in runs {
        let ceiling = run.ceiling.tools.rate();
        print_row(&run.gatehouse.row, reference_rate, Some(ceiling));
        print_row(&run.ceiling, reference_rate, Some(ceiling));
    }
    print_row(reference, reference_rate, None);
}

fn print_row(row: &Row, reference_rate: f64, ceiling_rate: Option<f64>) {
    let dash = || "–".to_owned();
    let refresh = |f: &dyn Fn(&Load) -> String| row.refresh.as_ref().map(f).unwrap_or_else(dash);
    println!(
        "| {} | {:.0} | {:.2} | {:.2} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} |",
        row.name,
        row.tools.rate(),
        row.tools.p50_ms,
        row.tools.p99_ms,
        row.tools.errors,
        row.tools.rate() / reference_rate.max(1e-9),
        ceiling_rate.map_or_else(dash, |c| percent(row.tools.rate(), c)),
        row.tools
            .cpu
            .and_then(|cpu| cpu.server)
            .map_or_else(dash, |us| format!("{us:.0}")),
        refresh(&|l| format!("{:.0}", l.rate())),
        refresh(&|l| format!("{:.2}", l.p50_ms)),
        refresh(&|l| format!("{:.2}", l.p99_ms)),
        refresh(&|l| l.errors.to_string()),
        row.idle_rss_mb,
        row.after_rss_mb,
    );
}

fn percent(part: f64, whole: f64) -> String {
    format!("{:.0}%", 100.0 * part / whole.max(1e-9))
}

/// How many slices each load that is compared with another is cut into.
const ROUNDS: u32 = 5;

/// The yardsticks of the gateway rows: the upstream called directly, and through the
/// bare proxy, each with its sessions open for the whole run. A gateway row at full
/// concurrency runs in [`ROUNDS`] slices, each right after a slice of each of these,
/// so that all three see the machine alike: on these shared machines the speed of a
/// core drifts by a third within a minute, more than the difference being measured.
struct Yardsticks {
    direct: Sessions,
    proxied: Sessions,
    /// One session, for the rows of one call at a time.
    one: Sessions,
    upstream: Option<u32>,
    proxy: Option<u32>,
    /// Where the rows with Gatehouse on a core of its own put each process.
    cores: Option<cores::Cores>,
}

/// The three loads at full concurrency that alternate in slices: the upstream
/// called directly, through the bare proxy and through the gateway.
struct Trio {
    direct: Load,
    proxied: Load,
    gateway: Load,
}

/// The loads of one store's run that alternate in slices: the [`Trio`] with every
/// process on every core, and again with Gatehouse (or the proxy) on a core of its
/// own (see `cores`); and with one session, the upstream called directly and through
/// the gateway.
struct Paired {
    shared: Trio,
    /// `None` on a machine with one core, or without `taskset`.
    own_core: Option<Trio>,
    direct_one: Load,
    gateway_one: Load,
}

impl Yardsticks {
    /// `gateway` and the two yardsticks in turn, [`ROUNDS`] times, for `duration`
    /// each in all, with every process on every core and then with Gatehouse and the
    /// proxy on a core of their own; then `one` (a single gateway session) and the
    /// direct single session likewise, for half of `duration` each.
    async fn paired(
        &mut self,
        gateway: &mut Sessions,
        one: &mut Sessions,
        gatehouse: u32,
        duration: Duration,
    ) -> Paired {
        let slice = duration / ROUNDS;
        let shared = self.trio(gateway, gatehouse, slice).await;
        // Taken while the trio runs, which borrows all of `self`.
        let own_core = match self.cores.take() {
            Some(cores) => {
                let clients: Vec<u32> = [Some(std::process::id()), self.upstream]
                    .into_iter()
                    .flatten()
                    .collect();
                let relays: Vec<u32> = [Some(gatehouse), self.proxy]
                    .into_iter()
                    .flatten()
                    .collect();
                let trio = if cores.split(&clients, &relays) {
                    let trio = self.trio(gateway, gatehouse, slice).await;
                    cores.unpin(&[clients, relays].concat());
                    Some(trio)
                } else {
                    None
                };
                self.cores = Some(cores);
                trio
            }
            None => None,
        };
        let (mut direct_one, mut through_one) = (Tally::default(), Tally::default());
        for _ in 0..ROUNDS {
            direct_one
                .run(&mut self.one, slice / 2, self.upstream, None)
                .await;
            through_one
                .run(one, slice / 2, self.upstream, Some(gatehouse))
                .await;
        }
        Paired {
            shared,
            own_core,
            direct_one: direct_one.load(),
            gateway_one: through_one.load(),
        }
    }

    /// The [`Trio`]: each load [`ROUNDS`] times for `slice`, in turn.
    async fn trio(&mut self, gateway: &mut Sessions, gatehouse: u32, slice: Duration) -> Trio {
        let (mut direct, mut proxied, mut through) =
            (Tally::default(), Tally::default(), Tally::default());
        for _ in 0..ROUNDS {
            direct
                .run(&mut self.direct, slice, self.upstream, None)
                .await;
            proxied
                .run(&mut self.proxied, slice, self.upstream, self.proxy)
                .await;
            through
                .run(gateway, slice, self.upstream, Some(gatehouse))
                .await;
        }
        Trio {
            direct: direct.load(),
            proxied: proxied.load(),
            gateway: through.load(),
        }
    }
}

/// The gateway rows: the upstream called directly, then through Gatehouse on each
/// store; throughput as a share of direct and of the store's ceiling, the p50 the
/// gateway adds, and where the CPU time goes.
fn print_gateway_table(runs: &[StoreRun]) {
    println!();
    println!("The gateway: tools/call of the bench upstream's read-only tool, directly and through Gatehouse at /mcp/NAME.");
    println!();
    println!("| Path | sessions | tools/call req/s | p50 ms | p99 ms | errors | % of direct | added p50 ms | % of ceiling | CPU µs per call: load generator · upstream · Gatehouse (or proxy) |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let line =
        |name: &str, sessions: usize, load: &Load, versus: Option<&Load>, ceiling: Option<f64>| {
            let dash = || "–".to_owned();
            let micros = |v: Option<f64>| v.map_or_else(dash, |v| format!("{v:.0}"));
            let cpu = load.cpu.map_or_else(dash, |cpu| {
                format!(
                    "{} · {} · {}",
                    micros(Some(cpu.load)),
                    micros(cpu.upstream),
                    micros(cpu.server)
                )
            });
            println!(
                "| {name} | {sessions} | {:.0} | {:.2} | {:.2} | {} | {} | {} | {} | {cpu} |",
                load.rate(),
                load.p50_ms,
                load.p99_ms,
                load.errors,
                versus.map_or_else(dash, |d| percent(load.rate(), d.rate())),
                versus.map_or_else(dash, |d| format!("{:.2}", load.p50_ms - d.p50_ms)),
                ceiling.map_or_else(dash, |c| percent(load.rate(), c)),
            );
        };
    for run in runs {
        // None with --gateway-only, which runs no ceiling.
        let ceiling = Some(run.ceiling.tools.rate()).filter(|rate| *rate > 0.0);
        let store = run.store;
        let paired = &run.gatehouse.gateway_http;
        let trios = std::iter::once((&paired.shared, "")).chain(
            paired
                .own_core
                .as_ref()
                .map(|trio| (trio, ", Gatehouse (or the proxy) on a core of its own")),
        );
        for (trio, cores) in trios {
            line(
                &format!("upstream called directly (rmcp, Streamable HTTP), alternating with {store}{cores}"),
                CONCURRENCY,
                &trio.direct,
                Some(&trio.direct),
                None,
            );
            line(
                &format!(
                    "bare proxy → HTTP upstream (hyper, no auth, no parsing), alternating with {store}{cores}"
                ),
                CONCURRENCY,
                &trio.proxied,
                Some(&trio.direct),
                None,
            );
            line(
                &format!("gateway → HTTP upstream, {store}{cores}"),
                CONCURRENCY,
                &trio.gateway,
                Some(&trio.direct),
                ceiling.filter(|_| cores.is_empty()),
            );
        }
    }
    for run in runs {
        let ceiling = Some(run.ceiling.tools.rate()).filter(|rate| *rate > 0.0);
        let store = run.store;
        let paired = &run.gatehouse.gateway_http;
        line(
            &format!("upstream called directly, one call at a time, alternating with {store}"),
            1,
            &paired.direct_one,
            Some(&paired.direct_one),
            None,
        );
        line(
            &format!("gateway → HTTP upstream, {store}, one call at a time"),
            1,
            &paired.gateway_one,
            Some(&paired.direct_one),
            None,
        );
        line(
            &format!("gateway → stdio upstream, {store}"),
            STDIO_SESSIONS,
            &run.gatehouse.gateway_stdio,
            None,
            ceiling,
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
    /// This binary run with `args` (one of the servers it holds), its stderr shown.
    fn this_binary(args: &[&str]) -> Result<Self> {
        Ok(Server {
            child: Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| e.to_string())?,
        })
    }

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

/// The gateway's upstreams: the bench's own fast server, over HTTP and over stdio.
const HTTP_UPSTREAM: &str = "fast";
const STDIO_UPSTREAM: &str = "stdio";
/// A stdio upstream is one process per session, and Gatehouse's default cap is 16
/// sessions per upstream; the stdio row keeps that default, so 16 workers.
const STDIO_SESSIONS: usize = 16;

/// Gatehouse's `--config` for the gateway rows. The HTTP upstream may have one session
/// per load worker, and one for the single-session row (the default cap is 16); the
/// stdio one keeps its default cap. Every session is the bench's one client's, so
/// each upstream lets one client hold all of them (by default, half). The stdio
/// upstream's pool of connections for sessionless requests (none here but Gatehouse's
/// own listings, when a tool's hint ages after 30 s) is one process, there from the
/// start: with the default two, a listing could start a second one mid-load, which
/// the soak, counting processes by id, would take for a session's left behind.
fn gateway_config(data: &std::path::Path, upstream_url: &str) -> Result<PathBuf> {
    let bench = std::env::current_exe().map_err(|e| e.to_string())?;
    let config = format!(
        "[[upstream]]\nname = \"{HTTP_UPSTREAM}\"\nurl = \"{upstream_url}\"\nmax_sessions = {0}\n\
         max_sessions_per_client = {0}\n\n\
         [[upstream]]\nname = \"{STDIO_UPSTREAM}\"\ncommand = {1:?}\nargs = [\"upstream\", \"--stdio\"]\n\
         max_sessions_per_client = {STDIO_SESSIONS}\npool_size = 1\n",
        CONCURRENCY + 1,
        bench.display().to_string()
    );
    let path = data.join("gatehouse.toml");
    std::fs::write(&path, config).map_err(|e| e.to_string())?;
    Ok(path)
}

/// What one store's Gatehouse measured.
struct GatehouseRun {
    row: Row,
    /// At full concurrency, alternating with the upstream called directly and
    /// through the bare proxy; and one session, one call at a time (the latency the
    /// gateway adds, without queueing behind 63 other calls), alternating with one
    /// direct session.
    gateway_http: Paired,
    gateway_stdio: Load,
    /// The bare handler on the same store, its load in slices alternating with
    /// Gatehouse's `tools/call` (not with `--gateway-only`).
    ceiling: Option<Row>,
}

/// One store's Gatehouse and the bare handler on the same store beside it.
struct StoreRun {
    store: &'static str,
    gatehouse: GatehouseRun,
    ceiling: Row,
}

#[allow(clippy::too_many_arguments)]
async fn bench_gatehouse(
    opts: &Options,
    http: &reqwest::Client,
    name: &str,
    (store, ceiling_store): (&str, &str),
    prefix: Option<&str>,
    config: &std::path::Path,
    duration: Duration,
    yardsticks: &mut Yardsticks,
) -> Result<GatehouseRun> {
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
            .arg("--config")
            .arg(config)
            .args(&store_args)
            // Each load opens a session per worker, all of them the bench's one client.
            .args(["--sessions-per-minute", "100000"])
            .args(["--sessions-per-day", "1000000000"])
            .args(["--max-sessions-per-client", "100000"])
            // Each refresh worker rotates its grant as fast as it is answered, as no
            // client does: a rotation would otherwise wait for a token retired within
            // the hour to be remembered that long.
            .args(["--refresh-reuse-window", "0s"])
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
    if opts.gateway_only {
        let (gateway_http, gateway_stdio) =
            gateway_loads(&flow, http, &base, duration, yardsticks, server.child.id()).await?;
        return Ok(GatehouseRun {
            row: Row {
                name: name.to_owned(),
                tools: Load::default(),
                refresh: None,
                idle_rss_mb,
                after_rss_mb: server.rss_mb(),
            },
            gateway_http,
            gateway_stdio,
            ceiling: None,
        });
    }
    // One token for the tool calls; an article to read.
    let writer = flow.tokens("read:articles write:articles").await?;
    let token = writer["access_token"]
        .as_str()
        .ok_or("no access token")?
        .to_owned();
    let session = mcp_session(http, &format!("{base}/mcp"), Some(&token)).await?;
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

    // The bare handler on the same store, in slices alternating with Gatehouse's, so
    // that both see the machine alike.
    let (bare, bare_url, bare_token) = start_ceiling(http, ceiling_store, prefix).await?;
    let bare_idle_rss_mb = bare.rss_mb();
    eprintln!("tools/call get_article, alternating with the ceiling …");
    let mut ours = Sessions::open(
        http,
        &format!("{base}/mcp"),
        Some(&token),
        json!({"name": "get_article", "arguments": {"slug": "benchmark"}}),
        "Read me quickly.",
        CONCURRENCY,
    )
    .await?;
    let mut theirs = Sessions::open(
        http,
        &bare_url,
        Some(&bare_token),
        fast_params(),
        upstream::ANSWER,
        CONCURRENCY,
    )
    .await?;
    let (mut tools, mut ceiling) = (Tally::default(), Tally::default());
    for _ in 0..ROUNDS {
        tools
            .run(&mut ours, duration / ROUNDS, None, Some(server.child.id()))
            .await;
        ceiling
            .run(&mut theirs, duration / ROUNDS, None, Some(bare.child.id()))
            .await;
    }
    ours.close().await;
    theirs.close().await;
    let tools = tools.load();
    let ceiling = Row {
        name: String::new(),
        tools: ceiling.load(),
        refresh: None,
        idle_rss_mb: bare_idle_rss_mb,
        after_rss_mb: bare.rss_mb(),
    };
    drop(bare);
    let (gateway_http, gateway_stdio) =
        gateway_loads(&flow, http, &base, duration, yardsticks, server.child.id()).await?;

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
    Ok(GatehouseRun {
        row: Row {
            name: name.to_owned(),
            tools,
            refresh: Some(refresh),
            idle_rss_mb,
            after_rss_mb,
        },
        gateway_http,
        gateway_stdio,
        ceiling: Some(ceiling),
    })
}

/// The gateway rows of one Gatehouse: the HTTP upstream at full concurrency (in
/// slices alternating with the yardsticks) and with one session, and the stdio
/// upstream.
async fn gateway_loads(
    flow: &Flow,
    http: &reqwest::Client,
    base: &str,
    duration: Duration,
    yardsticks: &mut Yardsticks,
    gatehouse: u32,
) -> Result<(Paired, Load)> {
    // 64 sessions and one: the bench's `--config` lets the upstream have 65.
    let mut sessions = gateway_sessions(flow, http, base, HTTP_UPSTREAM, CONCURRENCY).await?;
    let mut one = gateway_sessions(flow, http, base, HTTP_UPSTREAM, 1).await?;
    let paired = yardsticks
        .paired(&mut sessions, &mut one, gatehouse, duration)
        .await;
    sessions.close().await;
    one.close().await;
    // The stdio upstreams are Gatehouse's children, whose time the kernel counts
    // apart from Gatehouse's own until they exit.
    let stdio = with_cpu(
        None,
        Some(gatehouse),
        gateway_load(flow, http, base, STDIO_UPSTREAM, STDIO_SESSIONS, duration),
    )
    .await?;
    Ok((paired, stdio))
}

/// Sessions at `/mcp/NAME`, with a token from the real flow for that resource and
/// only `NAME:read`, for `tools/call` of the upstream's read-only tool.
async fn gateway_sessions(
    flow: &Flow,
    http: &reqwest::Client,
    base: &str,
    upstream: &str,
    workers: usize,
) -> Result<Sessions> {
    let resource = format!("{base}/mcp/{upstream}");
    let tokens = flow
        .tokens_for(&format!("{upstream}:read"), Some(&resource))
        .await?;
    let token = tokens["access_token"]
        .as_str()
        .ok_or_else(|| format!("no access token for {resource}"))?;
    eprintln!("tools/call through the gateway, {upstream} upstream ({workers} sessions) …");
    Sessions::open(
        http,
        &resource,
        Some(token),
        fast_params(),
        upstream::ANSWER,
        workers,
    )
    .await
}

/// `tools/call` of the upstream's read-only tool through Gatehouse at `/mcp/NAME`,
/// for `duration`.
async fn gateway_load(
    flow: &Flow,
    http: &reqwest::Client,
    base: &str,
    upstream: &str,
    workers: usize,
    duration: Duration,
) -> Result<Load> {
    let sessions = gateway_sessions(flow, http, base, upstream, workers).await?;
    Ok(sessions.once(duration).await)
}

/// The OAuth flow as a client and the owner's browser perform it.
struct Flow {
    http: reqwest::Client,
    base: String,
    /// The owner's session, signed in again when it has opened its share of
    /// consent pages for the minute.
    cookie: std::sync::Mutex<String>,
    client_id: String,
}

/// The owner's sign-in: the session cookie.
async fn sign_in(http: &reqwest::Client, base: &str) -> Result<String> {
    let login = http
        .post(format!("{base}/oauth/login"))
        .form(&[("password", PASSWORD), ("return_to", "/")])
        .send()
        .await
        .map_err(|e| e.to_string())?;
    Ok(login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .ok_or("sign-in failed")?
        .to_owned())
}

const REDIRECT: &str = "http://127.0.0.1:9/callback";

impl Flow {
    async fn new(http: reqwest::Client, base: String) -> Result<Self> {
        let cookie = std::sync::Mutex::new(sign_in(&http, &base).await?);
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
        self.tokens_for(scope, None).await
    }

    /// Tokens for `scope` at `resource` (RFC 8707; without one, the built-in `/mcp`).
    async fn tokens_for(&self, scope: &str, resource: Option<&str>) -> Result<Value> {
        let (verifier, challenge) = pkce();
        let url = authorize_url(
            &format!("{}/oauth/authorize", self.base),
            &self.client_id,
            &challenge,
            Some(scope),
            resource,
        )?;
        let cookie = || {
            self.cookie
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        };
        let mut consent = String::new();
        for _ in 0..2 {
            consent = self
                .http
                .get(url.clone())
                .header("cookie", cookie())
                .send()
                .await
                .map_err(|e| e.to_string())?
                .text()
                .await
                .map_err(|e| e.to_string())?;
            // A session opens 30 consent pages a minute: the owner signs in again.
            if !consent.contains("Too many consent pages") {
                break;
            }
            let fresh = sign_in(&self.http, &self.base).await?;
            *self.cookie.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
        }
        let start = consent
            .find("/oauth/authorize/approve?ticket=")
            .ok_or("no consent page")?;
        let end = start + consent[start..].find('"').ok_or("no approve link")?;
        let approve = self
            .http
            .get(format!("{}{}", self.base, &consent[start..end]))
            .header("cookie", cookie())
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
            resource,
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

/// A request to `url` with the bearer token when there is one (the upstream called
/// directly takes none).
fn post(http: &reqwest::Client, url: &str, token: Option<&str>) -> reqwest::RequestBuilder {
    let request = http.post(url);
    match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}

async fn mcp_session(http: &reqwest::Client, url: &str, token: Option<&str>) -> Result<String> {
    let init = post(http, url, token)
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
    post(http, url, token)
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

/// `tools/call` with `params` from `workers` MCP sessions (one per worker, as separate
/// clients would have), each worker on its own keep-alive connection; an answer counts
/// only when it contains `expect` and no tool error.
/// `tools/call` of the bench upstream's tool at `mcp`: the upstream itself, or a
/// server in front of it.
/// The `tools/call` params of the bench upstream's read-only tool.
fn fast_params() -> Value {
    json!({"name": upstream::TOOL, "arguments": {}})
}

async fn tools_load(
    http: &reqwest::Client,
    mcp: &str,
    token: Option<&str>,
    params: Value,
    expect: &'static str,
    duration: Duration,
    workers: usize,
) -> Result<Load> {
    let sessions = Sessions::open(http, mcp, token, params, expect, workers).await?;
    Ok(sessions.once(duration).await)
}

/// MCP sessions, each on its own connection, that loads drive again and again: the
/// gateway rows run in slices interleaved with the upstream called directly and
/// through the bare proxy, on the same sessions throughout.
struct Sessions {
    path: String,
    host: String,
    authorization: Option<String>,
    body: bytes::Bytes,
    expect: &'static str,
    open: Vec<(
        hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
        String,
    )>,
}

/// A keep-alive HTTP/1.1 connection to `address`, for one session's calls.
async fn connect(
    address: &str,
) -> Result<hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>> {
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok(sender)
}

impl Sessions {
    async fn open(
        http: &reqwest::Client,
        mcp: &str,
        token: Option<&str>,
        params: Value,
        expect: &'static str,
        workers: usize,
    ) -> Result<Self> {
        let url = url::Url::parse(mcp).map_err(|e| e.to_string())?;
        let address = format!(
            "{}:{}",
            url.host_str().unwrap_or("127.0.0.1"),
            url.port().unwrap_or(80)
        );
        let mut open = Vec::new();
        for _ in 0..workers {
            let session = mcp_session(http, mcp, token).await?;
            open.push((connect(&address).await?, session));
        }
        Ok(Sessions {
            path: url.path().to_owned(),
            host: address,
            authorization: token.map(|token| format!("Bearer {token}")),
            body: bytes::Bytes::from(
                json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params})
                    .to_string(),
            ),
            expect,
            open,
        })
    }

    /// A request in `session`, with the token when there is one.
    fn request(
        path: &str,
        host: &str,
        authorization: Option<&str>,
        method: hyper::Method,
        session: &str,
    ) -> hyper::http::request::Builder {
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", host)
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", "2025-06-18");
        match authorization {
            Some(authorization) => request.header("authorization", authorization),
            None => request,
        }
    }

    /// Calls the tool on every session at once, each as fast as it answers, for
    /// `duration`: each successful call's latency in microseconds, and the errors.
    async fn run(&mut self, duration: Duration) -> (Vec<u32>, u64) {
        let deadline = Instant::now() + duration;
        let tasks: Vec<_> = std::mem::take(&mut self.open)
            .into_iter()
            .map(|(mut sender, session)| {
                let (path, host, authorization) = (
                    self.path.clone(),
                    self.host.clone(),
                    self.authorization.clone(),
                );
                let (body, expect) = (self.body.clone(), self.expect);
                tokio::spawn(async move {
                    let (mut latencies, mut errors) = (Vec::new(), 0u64);
                    // A connection left unused longer than Gatehouse waits for a
                    // request (other rows ran meanwhile) was closed: a client opens
                    // another.
                    if sender.is_closed() {
                        match connect(&host).await {
                            Ok(fresh) => sender = fresh,
                            Err(e) => {
                                eprintln!("  error: {e}");
                                return (sender, session, latencies, 1);
                            }
                        }
                    }
                    while Instant::now() < deadline {
                        let request = Sessions::request(
                            &path,
                            &host,
                            authorization.as_deref(),
                            hyper::Method::POST,
                            &session,
                        )
                        .header("content-type", "application/json")
                        .header("accept", "application/json, text/event-stream")
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
                    (sender, session, latencies, errors)
                })
            })
            .collect();
        let (mut all, mut errors) = (Vec::new(), 0);
        for task in tasks {
            if let Ok((sender, session, latencies, e)) = task.await {
                self.open.push((sender, session));
                all.extend(latencies);
                errors += e;
            }
        }
        (all, errors)
    }

    /// One load of `duration` on these sessions, which it then ends. CPU per call is
    /// read around the whole load (`with_cpu`), where it is wanted.
    async fn once(mut self, duration: Duration) -> Load {
        let mut tally = Tally::default();
        tally.run(&mut self, duration, None, None).await;
        self.close().await;
        let mut load = tally.load();
        load.cpu = None;
        load
    }

    /// Ends every session as a client ends its own, so that the next load finds the
    /// gateway's upstream places free.
    async fn close(self) {
        let ends = self.open.into_iter().map(|(mut sender, session)| {
            let end = Sessions::request(
                &self.path,
                &self.host,
                self.authorization.as_deref(),
                hyper::Method::DELETE,
                &session,
            );
            let host = self.host.clone();
            async move {
                if sender.is_closed() {
                    match connect(&host).await {
                        Ok(fresh) => sender = fresh,
                        Err(_) => return,
                    }
                }
                if let (Ok(end), Ok(())) = (
                    end.body(http_body_util::Full::new(bytes::Bytes::new())),
                    sender.ready().await,
                ) {
                    if let Ok(response) = sender.send_request(end).await {
                        let _ = http_body_util::BodyExt::collect(response.into_body()).await;
                    }
                }
            }
        });
        futures::future::join_all(ends).await;
    }
}

/// A load's calls, errors, time and CPU, summed over the slices it ran in.
#[derive(Default)]
struct Tally {
    latencies: Vec<u32>,
    errors: u64,
    seconds: f64,
    /// CPU seconds of the load generator, the upstream and the server under test.
    cpu: [Option<f64>; 3],
}

impl Tally {
    /// Drives `sessions` for `duration` and adds what it took, with the CPU time of
    /// this process, `upstream` and `server` in that time.
    async fn run(
        &mut self,
        sessions: &mut Sessions,
        duration: Duration,
        upstream: Option<u32>,
        server: Option<u32>,
    ) {
        let read = |pid: Option<u32>| pid.and_then(|pid| cpu_seconds(&pid.to_string()));
        let before = [cpu_seconds("self"), read(upstream), read(server)];
        let started = Instant::now();
        let (latencies, errors) = sessions.run(duration).await;
        self.seconds += started.elapsed().as_secs_f64();
        let after = [cpu_seconds("self"), read(upstream), read(server)];
        for (i, spent) in self.cpu.iter_mut().enumerate() {
            *spent = match (before[i], after[i]) {
                (Some(b), Some(a)) => Some(spent.unwrap_or(0.0) + a - b),
                _ => None,
            };
        }
        self.latencies.extend(latencies);
        self.errors += errors;
    }

    fn load(self) -> Load {
        let calls = self.latencies.len().max(1) as f64;
        let per_call = |spent: Option<f64>| spent.map(|s| s * 1e6 / calls);
        let cpu = CpuPerCall {
            load: per_call(self.cpu[0]).unwrap_or(0.0),
            upstream: per_call(self.cpu[1]),
            server: per_call(self.cpu[2]),
        };
        let mut load = summarize(self.latencies, self.errors, self.seconds);
        load.cpu = Some(cpu);
        load
    }
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
        cpu: None,
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
    let tools = with_cpu(
        None,
        Some(server.child.id()),
        tools_load(
            http,
            &format!("{base}/mcp"),
            Some(&token),
            json!({"name": "greet", "arguments": {"name": "bench"}}),
            "Hello, bench",
            duration,
            CONCURRENCY,
        ),
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
