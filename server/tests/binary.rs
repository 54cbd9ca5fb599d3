//! The real binary, as an operator runs it: file permissions, what `--help` prints,
//! what `owner set-password` ends, and memory under a burst of sign-ins.

use std::{
    io::Write,
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::Duration,
};

fn gatehouse() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    // Nothing from the developer's shell configures the binary under test.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("GATEHOUSE_") {
            command.env_remove(name);
        }
    }
    command
}

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[cfg(unix)]
#[test]
fn the_data_directory_database_and_export_are_owner_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("fresh/data");
    let set = gatehouse()
        .args(["owner", "set-password", "--data-dir"])
        .arg(&data)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(b"a long enough password\n")?;
            child.wait_with_output()
        })
        .expect("run");
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    assert_eq!(mode(&data), 0o700, "data directory");
    assert_eq!(mode(&data.join("gatehouse.redb")), 0o600, "database file");

    let export = dir.path().join("export.jsonl");
    let exported = gatehouse()
        .args(["store", "export", "--data-dir"])
        .arg(&data)
        .arg("--output")
        .arg(&export)
        .output()
        .expect("run");
    assert!(
        exported.status.success(),
        "{}",
        String::from_utf8_lossy(&exported.stderr)
    );
    assert_eq!(mode(&export), 0o600, "export file");
    assert!(std::fs::read_to_string(&export)
        .expect("read")
        .contains("owner:password"));
    // An existing file is never overwritten.
    let again = gatehouse()
        .args(["store", "export", "--data-dir"])
        .arg(&data)
        .arg("--output")
        .arg(&export)
        .output()
        .expect("run");
    assert!(!again.status.success());
}

#[test]
fn help_never_prints_secrets_taken_from_the_environment() {
    let output = gatehouse()
        .arg("--help")
        .env(
            "GATEHOUSE_STORE",
            "redis://:redis-password-123@redis.internal:6379",
        )
        .env(
            "GATEHOUSE_STATIC_CLIENT_SECRET",
            "static-secret-static-secret-static-secret",
        )
        .env(
            "GATEHOUSE_OWNER_PASSWORD_HASH",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
        )
        .output()
        .expect("run");
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("--store"), "{help}");
    for secret in ["redis-password-123", "static-secret-static", "aGFzaA"] {
        assert!(!help.contains(secret), "--help shows {secret}");
    }
}

/// A running server on a free port; killed when dropped.
struct Server {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let bind = format!("127.0.0.1:{port}");
    let child = gatehouse()
        .args(["serve", "--bind", &bind, "--data-dir"])
        .arg(dir.path())
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let server = Server {
        child,
        base: format!("http://{bind}"),
        _dir: dir,
    };
    for _ in 0..200 {
        if std::net::TcpStream::connect(&bind).is_ok() {
            return server;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the server did not start");
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("field")
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// 150 wrong passwords at once from 150 addresses (behind a trusted proxy, so none
/// is slowed down): Argon2 runs two at a time, so memory stays bounded (each run
/// needs about 19 MiB), and 16 more may wait; the rest are told to come back (503
/// with Retry-After) instead of queueing without end.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_sign_ins_keeps_memory_bounded() {
    let hash = gatehouse::oauth::owner::hash_password("the right password").expect("hash");
    let server = start(&[
        "--owner-password-hash",
        &hash,
        "--trusted-proxy",
        "127.0.0.1",
    ]);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let burst: Vec<_> = (0..150u32)
        .map(|i| {
            let (client, url) = (client.clone(), format!("{}/oauth/login", server.base));
            tokio::spawn(async move {
                client
                    .post(url)
                    .header("x-forwarded-for", format!("198.51.100.{}", i % 250))
                    .form(&[("password", "wrong"), ("return_to", "/")])
                    .send()
                    .await
                    .expect("answer")
            })
        })
        .collect();
    let (mut checked, mut refused) = (0, 0);
    for attempt in burst {
        let answer = attempt.await.expect("join");
        match answer.status().as_u16() {
            401 => checked += 1,
            503 => {
                assert_eq!(answer.headers()["retry-after"], "2");
                refused += 1;
            }
            other => panic!("{other}"),
        }
    }
    // Past the places to check and to wait, the rest are refused, not queued.
    assert!(refused > 0, "{checked} checked, none refused");
    let (runs, waiting) = (
        gatehouse::oauth::owner::ARGON2_CONCURRENCY,
        gatehouse::oauth::owner::ARGON2_WAITING,
    );
    assert!(checked >= runs + waiting, "{checked} checked");
    let peak_mib = peak_rss_kib(server.child.id()) / 1024;
    let file_mib = status_kib(server.child.id(), "RssFile:") / 1024;
    eprintln!("peak RSS {peak_mib} MiB, of which the binary's own pages {file_mib} MiB");
    assert!(peak_mib < 150, "peak RSS {peak_mib} MiB");
}

/// Changing the password ends every sign-in session.
#[tokio::test]
async fn set_password_ends_every_sign_in_session() {
    let dir = tempfile::tempdir().expect("temp dir");
    let set = |password: &str| {
        let mut child = gatehouse()
            .args(["owner", "set-password", "--data-dir"])
            .arg(dir.path())
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("{password}\n").as_bytes())
            .expect("write");
        assert!(child.wait_with_output().expect("output").status.success());
    };
    set("the first long password");
    let store = gatehouse::open_store(&gatehouse::config::StoreSpec::Embedded(
        dir.path().join("gatehouse.redb"),
    ))
    .await
    .expect("store");
    let owner = gatehouse::oauth::owner::Owner::new(store.clone(), None);
    let verified = owner
        .check(owner.admit().expect("place"), "the first long password")
        .await
        .expect("store")
        .expect("right");
    let cookie = owner.new_session(&verified).await.expect("session");
    assert!(owner.session(&cookie).await.expect("store").is_some());
    drop(owner);
    drop(store);
    // redb allows one open handle per file: let the store go before the command runs.
    tokio::time::sleep(Duration::from_millis(50)).await;
    set("the second long password");
    let store = gatehouse::open_store(&gatehouse::config::StoreSpec::Embedded(
        dir.path().join("gatehouse.redb"),
    ))
    .await
    .expect("store");
    let owner = gatehouse::oauth::owner::Owner::new(store, None);
    assert!(
        owner.session(&cookie).await.expect("store").is_none(),
        "the old session ended"
    );
}

/// `--log-format json`: one JSON object per line, activity events among them with
/// their kind and particulars, and never the password that was tried.
#[tokio::test]
async fn json_logs_carry_activity_events_for_machines() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let bind = format!("127.0.0.1:{port}");
    let hash = gatehouse::oauth::owner::hash_password("the right password").expect("hash");
    let mut child = gatehouse()
        .args([
            "serve",
            "--log-format",
            "json",
            "--bind",
            &bind,
            "--data-dir",
        ])
        .arg(dir.path())
        .args(["--owner-password-hash", &hash])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut up = false;
    for _ in 0..200 {
        if std::net::TcpStream::connect(&bind).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(up, "the server did not start");
    let answer = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .post(format!("http://{bind}/oauth/login"))
        .form(&[("password", "a-wrong-password-9f3c"), ("return_to", "/")])
        .send()
        .await
        .expect("answer");
    assert_eq!(answer.status().as_u16(), 401);
    let _ = child.kill();
    let output = child.wait_with_output().expect("output");
    let log = String::from_utf8_lossy(&output.stdout);
    assert!(!log.contains("a-wrong-password-9f3c"));
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(!lines.is_empty());
    let event = lines
        .iter()
        .find(|l| l["target"] == "gatehouse::audit" && l["fields"]["kind"] == "sign_in_failed")
        .unwrap_or_else(|| panic!("no sign-in event in {log}"));
    assert_eq!(event["fields"]["address"], "127.0.0.1");
    assert_eq!(event["level"], "INFO");
}

/// The first-run setup link is a secret until used: it goes to standard error,
/// never through the log.
#[test]
fn the_setup_link_is_printed_on_stderr_and_never_logged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let bind = format!("127.0.0.1:{port}");
    let mut child = gatehouse()
        .args([
            "serve",
            "--log-format",
            "json",
            "--bind",
            &bind,
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    for _ in 0..200 {
        if std::net::TcpStream::connect(&bind).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    let _ = child.kill();
    let output = child.wait_with_output().expect("output");
    let (log, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(log.contains("no owner password is set"), "{log}");
    assert!(!log.contains("setup?token="), "{log}");
    assert!(
        stderr.contains(&format!("http://{bind}/setup?token=")),
        "{stderr}"
    );
}
