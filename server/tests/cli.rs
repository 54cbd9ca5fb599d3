//! The binary's maintenance commands, run as a person would run them.

use std::{
    io::Write,
    process::{Command, Output, Stdio},
};

use gatehouse::{config::StoreSpec, oauth::owner::Owner, open_store};

/// The binary, without the developer's environment: a `GATEHOUSE_*` variable in the
/// shell that runs the tests must not configure it, only the flags a test passes.
fn gatehouse() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    command.env_clear();
    for name in ["PATH", "HOME"] {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    command
}

/// Runs the binary with `args`, `input` on standard input.
fn run(args: &[&str], input: &[u8]) -> Output {
    let mut child = gatehouse()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write");
    child.wait_with_output().expect("output")
}

#[tokio::test]
async fn owner_set_password_reads_stdin_and_stores_an_argon2id_hash() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().to_str().expect("utf-8");
    let set = |password: &str| {
        run(
            &["owner", "set-password", "--data-dir", data_dir],
            format!("{password}\n").as_bytes(),
        )
    };

    let weak = set("short");
    assert_eq!(weak.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&weak.stderr).contains("at least 12 characters"));

    let ok = set("a perfectly long password");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        !output.contains("a perfectly long password"),
        "the password is never echoed"
    );

    let store = open_store(&StoreSpec::Embedded(dir.path().join("gatehouse.redb")))
        .await
        .expect("store");
    let owner = Owner::new(store, None);
    assert!(owner
        .verify_password("a perfectly long password")
        .await
        .expect("store"));
    assert!(!owner
        .verify_password("another password")
        .await
        .expect("store"));
}

#[test]
fn invalid_configuration_stops_start_up_with_one_line_per_mistake() {
    let output = gatehouse()
        .args([
            "serve",
            "--public-url",
            "https://gate.example.com/",
            "--owner-password-hash",
            "not-a-hash",
            "--store",
            "postgres://127.0.0.1:5432",
        ])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<_> = stderr
        .lines()
        .filter(|l| l.starts_with("gatehouse: "))
        .collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(stderr.contains("must not end with a slash"));
    assert!(stderr.contains("--owner-password-hash"));
    assert!(stderr.contains("is not a store"));
}
