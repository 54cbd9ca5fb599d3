//! `cargo xtask`: the project's two entry points.
//!
//! - `cargo xtask dev`: install what is missing, then run the server on the embedded
//!   store with live reload (`cargo leptos watch`).
//! - `cargo xtask test`: install what is missing, then run every check and test:
//!   formatting, clippy, unit and router tests, and the Playwright suite against the
//!   real server.
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
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n\
                 commands:\n  \
                 dev     install what is missing, then run the server (cargo leptos watch)\n  \
                 test    install what is missing, then run every check and test\n  \
                 bench   build the release server and run the benchmark (table on stdout)\n  \
                 setup   only install what is missing"
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
    run(cargo().args(["test", "-p", "gatehouse", "-p", "xtask"]))?;

    step("site build");
    run(cargo().args(["leptos", "build"]))?;

    step("Playwright");
    let root = workspace_root();
    let status = Command::new("npx")
        .args(["playwright", "test"])
        .current_dir(root.join("end2end"))
        .env("GATEHOUSE_BIN", root.join("target/debug/gatehouse"))
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
    run(Command::new(root.join("target/release/bench"))
        .arg("--gatehouse")
        .arg(root.join("target/release/gatehouse"))
        .arg("--reference")
        .arg(&reference)
        .args(extra)
        .current_dir(&root))
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

fn ensure_chromium() -> Result {
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
/// `GATEHOUSE_TEST_REDIS_URL`); start one if none answers, installing Debian's
/// `redis-server` if it is missing (the outage tests also start their own).
fn ensure_redis() -> Result {
    let answers = || std::net::TcpStream::connect(("127.0.0.1", 6379)).is_ok();
    if env::var_os("GATEHOUSE_TEST_REDIS_URL").is_some() || answers() {
        return Ok(());
    }
    if output(Command::new("redis-server").arg("--version")).is_err() {
        step("installing Debian's redis-server for the Redis store tests");
        let apt = |args: &[&str]| {
            run(Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"))
        };
        apt(&["update"])?;
        apt(&["install", "-y", "--no-install-recommends", "redis-server"])?;
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
