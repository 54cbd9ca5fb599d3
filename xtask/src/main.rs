//! `cargo xtask`: the project's two entry points.
//!
//! - `cargo xtask dev`: install what is missing, then run the server on the embedded
//!   store with live reload (`cargo leptos watch`).
//! - `cargo xtask test`: install what is missing, then run every check and test:
//!   formatting, clippy, unit and router tests, and the Playwright suite against the
//!   real server.
//! - `cargo xtask fuzz [--seconds N] [TARGET…]`: run the libFuzzer targets in `fuzz/`
//!   one after the other (not part of `test`: it takes minutes per target).
//! - `cargo xtask soak [--seconds N]`: a mixed load on each store for N seconds (60),
//!   Redis killed and restarted halfway; fails when a goal of issue #12 is missed (not
//!   part of `test`: it takes minutes and wants a quiet machine).
//!
//! Installs come from the package registries only and are skipped when the right
//! version is already present, so repeated runs are fast.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

/// cargo-leptos 0.3.11 does not build on rustc 1.95; 0.3.10 does.
const CARGO_LEPTOS_VERSION: &str = "0.3.10";
const CHROMIUM: &str = "/usr/bin/chromium";

type Result<T = ()> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let outcome = match args.first().map(String::as_str) {
        Some("dev") => dev(&args[1..]),
        Some("test") => test(),
        Some("setup") => setup(Needs::Everything),
        Some("bench") => bench(&args[1..]),
        Some("fuzz") => fuzz(&args[1..]),
        Some("soak") => soak(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n\
                 commands:\n  \
                 dev     install what is missing, then run the server (cargo leptos watch)\n  \
                 test    install what is missing, then run every check and test\n  \
                 bench   build the release server and run the benchmark (table on stdout)\n  \
                 fuzz    run each fuzz target for N seconds: fuzz [--seconds N] [TARGET…]\n  \
                 soak    mixed load on each store, Redis killed halfway: soak [--seconds N]\n  \
                 setup   only install what is missing (what `test` needs, a Redis too)"
            );
            return ExitCode::from(2);
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Needs {
    /// What building and serving needs.
    Build,
    /// That plus the browser tests' tools.
    Everything,
}

fn dev(extra: &[String]) -> Result {
    setup(Needs::Build)?;
    let mut cmd = cargo();
    cmd.args(["leptos", "watch"]);
    if !extra.is_empty() {
        // `cargo xtask dev -- --public-url …` passes flags to the server.
        cmd.arg("--").args(extra.iter().skip_while(|a| *a == "--"));
    }
    run(&mut cmd)
}

fn test() -> Result {
    setup(Needs::Everything)?;
    step("formatting");
    run(cargo().args(["fmt", "--all", "--check"]))?;

    step("clippy");
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;

    step("unit and router tests");
    run(cargo().args(["test", "-p", "gatehouse", "-p", "xtask", "-p", "bench"]))?;

    step("site build");
    run(cargo().args(["leptos", "build"]))?;

    step("Playwright");
    let root = workspace_root();
    let status = Command::new("npx")
        .args(["playwright", "test"])
        .current_dir(root.join("end2end"))
        .env("GATEHOUSE_BIN", target_dir().join("debug/gatehouse"))
        .env("GATEHOUSE_SITE_ROOT", root.join("target/site"))
        .status()
        .map_err(|e| format!("cannot run npx: {e}"))?;
    if !status.success() {
        return Err("Playwright tests failed".into());
    }
    step("all checks passed");
    Ok(())
}

/// Builds the release server and the load generator, installs the reference server
/// (the MCP TypeScript SDK's example) into `bench/reference`, and runs the benchmark.
fn bench(extra: &[String]) -> Result {
    ensure_redis()?;
    let root = workspace_root();
    let reference = root.join("bench/reference");
    if !reference
        .join("node_modules/@modelcontextprotocol/sdk")
        .exists()
    {
        step("installing the reference server (@modelcontextprotocol/sdk) into bench/reference");
        run(Command::new("npm")
            .args(["install", "--no-audit", "--no-fund"])
            .current_dir(&reference))?;
    }
    step("building the release server and the load generator");
    run(cargo().args(["build", "--release", "-p", "gatehouse", "-p", "bench"]))?;
    step("benchmarking");
    run(Command::new(target_dir().join("release/bench"))
        .arg("--gatehouse")
        .arg(target_dir().join("release/gatehouse"))
        .arg("--reference")
        .arg(&reference)
        .args(extra)
        .current_dir(&root))
}

/// Builds the release server and the load generator and runs the soak (`bench soak`):
/// a mixed load on each store, its own `redis-server` killed and restarted halfway.
/// Exits non-zero when a goal is missed.
fn soak(extra: &[String]) -> Result {
    install_redis_server()?;
    let root = workspace_root();
    step("building the release server and the load generator");
    run(cargo().args(["build", "--release", "-p", "gatehouse", "-p", "bench"]))?;
    step("soaking");
    run(Command::new(target_dir().join("release/bench"))
        .arg("soak")
        .arg("--gatehouse")
        .arg(target_dir().join("release/gatehouse"))
        .args(extra)
        .current_dir(&root))
}

/// The libFuzzer targets in `fuzz/`, one per group of parsers that read outside input.
const FUZZ_TARGETS: [&str; 11] = [
    "scope",
    "redirect_uri",
    "registration_json",
    "token_form",
    "grant_token",
    "bearer_and_peek",
    "host_origin",
    "forwarded",
    "metadata_document",
    "pkce",
    "gateway_text",
];
const CARGO_FUZZ_VERSION: &str = "0.13.2";
const DEFAULT_FUZZ_SECONDS: u64 = 300;

/// `--seconds N` and the targets to run (all when none is named).
fn fuzz_args(args: &[String]) -> Result<(u64, Vec<&'static str>)> {
    let mut seconds = DEFAULT_FUZZ_SECONDS;
    let mut targets = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "--seconds" {
            seconds = args
                .next()
                .and_then(|n| n.parse().ok())
                .filter(|n| *n > 0)
                .ok_or("--seconds needs a whole number of seconds above 0")?;
        } else if let Some(target) = FUZZ_TARGETS.iter().find(|t| **t == arg) {
            targets.push(*target);
        } else {
            return Err(format!(
                "{arg:?} is not a fuzz target; the targets are {}",
                FUZZ_TARGETS.join(", ")
            ));
        }
    }
    if targets.is_empty() {
        targets = FUZZ_TARGETS.to_vec();
    }
    Ok((seconds, targets))
}

/// Runs each fuzz target for `--seconds`, one after the other, and prints per target
/// the executions and any crash. cargo-fuzz passes nightly-only flags to rustc
/// (sanitizer coverage); `RUSTC_BOOTSTRAP=1` lets the stable toolchain take them.
/// No sanitizer: the targets and the parsers are safe Rust, where a bug shows as a
/// panic, and without AddressSanitizer the build is quicker and runs about twice as
/// many inputs. libFuzzer's own output goes to `fuzz/logs/TARGET.log`.
fn fuzz(args: &[String]) -> Result {
    let (seconds, targets) = fuzz_args(args)?;
    ensure_cargo_install(
        "cargo-fuzz",
        CARGO_FUZZ_VERSION,
        &["cargo-fuzz", "--version"],
        true,
    )?;
    let root = workspace_root();
    let dir = root.join("fuzz");
    let target_dir = target_dir().join("fuzz");
    let fuzz_cargo = |subcommand: &str| {
        let mut cmd = cargo();
        cmd.current_dir(&dir)
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", subcommand, "--sanitizer", "none", "--target-dir"])
            .arg(&target_dir);
        cmd
    };
    step("building the fuzz targets");
    run(&mut fuzz_cargo("build"))?;
    let mut summary = Vec::new();
    for target in targets {
        step(&format!("fuzzing {target} for {seconds} s"));
        let corpus = dir.join("corpus").join(target);
        let seeds = dir.join("seeds").join(target);
        let logs = dir.join("logs");
        for made in [&corpus, &logs] {
            std::fs::create_dir_all(made)
                .map_err(|e| format!("cannot create {}: {e}", made.display()))?;
        }
        let log_path = logs.join(format!("{target}.log"));
        let log = std::fs::File::create(&log_path)
            .map_err(|e| format!("cannot write {}: {e}", log_path.display()))?;
        let mut cmd = fuzz_cargo("run");
        cmd.arg(target).arg(&corpus);
        if seeds.is_dir() {
            cmd.arg(&seeds);
        }
        cmd.args([
            "--".to_owned(),
            format!("-max_total_time={seconds}"),
            "-print_final_stats=1".to_owned(),
        ]);
        // Names a target's parser looks for, which random bytes seldom spell.
        let dict = dir.join("dicts").join(format!("{target}.dict"));
        if dict.is_file() {
            cmd.arg(format!("-dict={}", dict.display()));
        }
        let started = std::time::Instant::now();
        let status = cmd
            .stdout(
                log.try_clone()
                    .map_err(|e| format!("cannot write {}: {e}", log_path.display()))?,
            )
            .stderr(log)
            .status()
            .map_err(|e| format!("cannot run cargo fuzz: {e}"))?;
        // Measured, not assumed: a crash stops libFuzzer before its time is up.
        let ran = started.elapsed().as_secs();
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let report = FuzzReport::read(&text, status.success());
        eprintln!(
            "{target}: {} executions in {ran} s, {}",
            report.executions.as_deref().unwrap_or("?"),
            report.finding()
        );
        summary.push((target, ran, report));
    }
    step("fuzzing done");
    println!("| target | seconds | executions | findings |\n| --- | --- | --- | --- |");
    for (target, ran, report) in &summary {
        println!(
            "| {target} | {ran} | {} | {} |",
            report.executions.as_deref().unwrap_or("?"),
            report.finding()
        );
    }
    if summary.iter().any(|(_, _, r)| !r.clean) {
        return Err("a fuzz target failed; see fuzz/logs/ and fuzz/artifacts/".into());
    }
    Ok(())
}

/// What one libFuzzer run printed that matters.
struct FuzzReport {
    executions: Option<String>,
    clean: bool,
    /// The panic message and the input libFuzzer saved, for a crash.
    panic: Option<String>,
    input: Option<String>,
}

impl FuzzReport {
    fn read(log: &str, success: bool) -> Self {
        let after = |prefix: &str| {
            log.lines()
                .rev()
                .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_owned()))
        };
        FuzzReport {
            executions: after("stat::number_of_executed_units:"),
            clean: success,
            // `thread '…' panicked at FILE:LINE:COL:` and the message on the next line.
            panic: log
                .split_once("panicked at ")
                .map(|(_, rest)| rest.lines().take(2).collect::<Vec<_>>().join(" ")),
            input: log
                .lines()
                .find_map(|l| l.split_once("Test unit written to "))
                .map(|(_, path)| path.trim().to_owned()),
        }
    }

    fn finding(&self) -> String {
        if self.clean {
            return "no crash".into();
        }
        match (&self.panic, &self.input) {
            (Some(panic), Some(input)) => format!("CRASH: {panic}; input {input}"),
            (None, Some(input)) => format!("CRASH; input {input}"),
            (Some(panic), None) => format!("FAILED: {panic}"),
            (None, None) => "FAILED (see the log)".into(),
        }
    }
}

fn setup(needs: Needs) -> Result {
    ensure_wasm_target()?;
    ensure_cargo_install(
        "cargo-leptos",
        CARGO_LEPTOS_VERSION,
        &["leptos", "--version"],
        true,
    )?;
    let wasm_bindgen = locked_version("wasm-bindgen")?;
    // wasm-bindgen-cli's own lock file names a crate version the registry lacks, so it
    // is installed without --locked.
    ensure_cargo_install(
        "wasm-bindgen-cli",
        &wasm_bindgen,
        &["wasm-bindgen", "--version"],
        false,
    )?;
    if needs == Needs::Everything {
        ensure_chromium()?;
        ensure_npm_packages()?;
        ensure_python_venv()?;
        ensure_redis()?;
    }
    Ok(())
}

fn ensure_wasm_target() -> Result {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if installed
        .lines()
        .any(|l| l.trim() == "wasm32-unknown-unknown")
    {
        return Ok(());
    }
    step("installing the wasm32-unknown-unknown target");
    run(Command::new("rustup").args(["target", "add", "wasm32-unknown-unknown"]))
}

/// Installs `krate` at exactly `version` unless `probe` (a command after `cargo` for
/// cargo subcommands, else a binary) already reports that version.
fn ensure_cargo_install(krate: &str, version: &str, probe: &[&str], locked: bool) -> Result {
    let found = if probe[0] == "leptos" {
        output(cargo().args(probe)).ok()
    } else {
        output(Command::new(probe[0]).args(&probe[1..])).ok()
    };
    if found
        .as_deref()
        .is_some_and(|v| v.split_whitespace().any(|w| w == version))
    {
        return Ok(());
    }
    step(&format!(
        "installing {krate} {version} (once; this takes minutes)"
    ));
    let mut cmd = cargo();
    cmd.args(["install", krate, "--version", version, "--force"]);
    if locked {
        cmd.arg("--locked");
    }
    run(&mut cmd)
}

/// Where cargo puts what it builds: `CARGO_TARGET_DIR`, or the workspace's `target`.
fn target_dir() -> PathBuf {
    // Relative to the workspace, as cargo reads it: the browser tests run elsewhere.
    env::var_os("CARGO_TARGET_DIR")
        .map(|dir| workspace_root().join(dir))
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn ensure_chromium() -> Result {
    // The browser the Playwright config runs: `CHROMIUM_PATH`, when set, is the
    // person's own choice, and nothing is installed for it.
    if let Some(chosen) = std::env::var_os("CHROMIUM_PATH") {
        return if Path::new(&chosen).exists() {
            Ok(())
        } else {
            Err(format!(
                "CHROMIUM_PATH names {}, which does not exist",
                Path::new(&chosen).display()
            ))
        };
    }
    if Path::new(CHROMIUM).exists() {
        return Ok(());
    }
    step("installing Debian's chromium for the browser tests");
    let apt = |args: &[&str]| {
        run(Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    apt(&["update"])?;
    apt(&["install", "-y", "--no-install-recommends", "chromium"])
        .map_err(|e| format!("{e}; the browser tests need {CHROMIUM} (apt-get install chromium)"))
}

/// The Python SDK test runs in `end2end/.venv`, made from `python/requirements.txt`
/// when missing or older than it.
fn ensure_python_venv() -> Result {
    let dir = workspace_root().join("end2end");
    let requirements = dir.join("python/requirements.txt");
    let stamp = dir.join(".venv/.installed");
    if let (Some(req), Some(done)) = (modified(&requirements), modified(&stamp)) {
        if done >= req {
            return Ok(());
        }
    }
    step("creating the Python virtual environment for the MCP Python SDK test");
    if !dir.join(".venv/bin/python").exists() {
        let made = Command::new("python3")
            .args(["-m", "venv", ".venv"])
            .current_dir(&dir)
            .status();
        if !made.is_ok_and(|s| s.success()) {
            // Debian's python3 needs its venv package for this.
            let apt = |args: &[&str]| {
                run(Command::new("apt-get")
                    .args(args)
                    .env("DEBIAN_FRONTEND", "noninteractive"))
            };
            apt(&["update"])?;
            apt(&["install", "-y", "--no-install-recommends", "python3-venv"])?;
            run(Command::new("python3")
                .args(["-m", "venv", ".venv"])
                .current_dir(&dir))?;
        }
    }
    run(Command::new(dir.join(".venv/bin/pip"))
        .args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            "python/requirements.txt",
        ])
        .current_dir(&dir))?;
    std::fs::write(&stamp, b"").map_err(|e| format!("cannot write {}: {e}", stamp.display()))
}

/// The Redis store's tests use the Redis on 127.0.0.1:6379 (or
/// `GATEHOUSE_TEST_REDIS_URL`); start one if none answers. Debian's `redis-server`
/// is installed if it is missing either way: the outage tests start their own.
fn ensure_redis() -> Result {
    install_redis_server()?;
    let answers = || std::net::TcpStream::connect(("127.0.0.1", 6379)).is_ok();
    if env::var_os("GATEHOUSE_TEST_REDIS_URL").is_some() || answers() {
        return Ok(());
    }
    step("starting redis-server on 127.0.0.1:6379");
    run(Command::new("redis-server").args([
        "--daemonize",
        "yes",
        "--bind",
        "127.0.0.1",
        "--port",
        "6379",
        "--save",
        "",
        "--appendonly",
        "no",
    ]))?;
    for _ in 0..50 {
        if answers() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Err("redis-server did not start on 127.0.0.1:6379".into())
}

/// Debian's `redis-server`, when it is missing.
fn install_redis_server() -> Result {
    if output(Command::new("redis-server").arg("--version")).is_ok() {
        return Ok(());
    }
    step("installing Debian's redis-server");
    let apt = |args: &[&str]| {
        run(Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    apt(&["update"])?;
    apt(&["install", "-y", "--no-install-recommends", "redis-server"])
}

/// `npm ci` in end2end/ when node_modules is missing or older than the lock file.
fn ensure_npm_packages() -> Result {
    let dir = workspace_root().join("end2end");
    let lock = dir.join("package-lock.json");
    let stamp = dir.join("node_modules/.package-lock.json");
    let fresh = match (modified(&lock), modified(&stamp)) {
        (Some(lock), Some(stamp)) => stamp >= lock,
        _ => false,
    };
    if fresh {
        return Ok(());
    }
    step("installing the end2end npm packages");
    run(Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        // Playwright must never download its own browsers: we use Debian's chromium.
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1"))
}

/// The version of `name` that Cargo.lock pins.
fn locked_version(name: &str) -> Result<String> {
    let lock = std::fs::read_to_string(workspace_root().join("Cargo.lock"))
        .map_err(|e| format!("cannot read Cargo.lock: {e}"))?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == format!("name = \"{name}\"") {
            if let Some(version) = lines.next().and_then(|l| l.strip_prefix("version = \"")) {
                return Ok(version.trim_end_matches('"').to_owned());
            }
        }
    }
    Err(format!("Cargo.lock does not name {name}"))
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

fn step(what: &str) {
    eprintln!("\n==> {what}");
}

fn run(cmd: &mut Command) -> Result {
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{:?} failed ({status})", display(cmd)))
    }
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{} failed", display(cmd)))
    }
}

fn display(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzz_targets_are_the_fuzz_packages_binaries() {
        let manifest =
            std::fs::read_to_string(workspace_root().join("fuzz/Cargo.toml")).expect("manifest");
        let bins: Vec<&str> = manifest
            .lines()
            .filter_map(|l| l.strip_prefix("name = \""))
            .map(|n| n.trim_end_matches('"'))
            .filter(|n| *n != "gatehouse-fuzz")
            .collect();
        assert_eq!(bins, FUZZ_TARGETS);
    }

    #[test]
    fn fuzz_arguments() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            fuzz_args(&[]).expect("none"),
            (DEFAULT_FUZZ_SECONDS, FUZZ_TARGETS.to_vec())
        );
        assert_eq!(
            fuzz_args(&args(&["pkce", "--seconds", "5", "scope"])).expect("some"),
            (5, vec!["pkce", "scope"])
        );
        assert!(fuzz_args(&args(&["--seconds"])).is_err());
        assert!(fuzz_args(&args(&["--seconds", "0"])).is_err());
        assert!(fuzz_args(&args(&["nope"])).is_err());
    }

    #[test]
    fn reads_libfuzzers_final_stats_and_crashes() {
        let clean = FuzzReport::read("#2 INITED\nstat::number_of_executed_units: 1234\n", true);
        assert_eq!(clean.executions.as_deref(), Some("1234"));
        assert_eq!(clean.finding(), "no crash");
        let crash = FuzzReport::read(
            "thread '<unnamed>' panicked at src/x.rs:1:2:\nboom\n==1== ERROR: libFuzzer: deadly signal\n\
             artifact_prefix='a/'; Test unit written to a/crash-12\nstat::number_of_executed_units: 9\n",
            false,
        );
        assert_eq!(
            crash.finding(),
            "CRASH: src/x.rs:1:2: boom; input a/crash-12"
        );
    }

    #[test]
    fn reads_the_pinned_wasm_bindgen_version_from_the_lock_file() {
        let version = locked_version("wasm-bindgen").expect("pinned");
        let manifest =
            std::fs::read_to_string(workspace_root().join("Cargo.toml")).expect("manifest");
        assert!(
            manifest.contains(&format!("wasm-bindgen = \"={version}\"")),
            "Cargo.toml must pin wasm-bindgen to the locked {version}, which the CLI matches"
        );
    }
}
