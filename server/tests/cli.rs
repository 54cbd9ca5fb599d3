//! The binary's maintenance commands, run as a person would run them.

use std::{
    io::Write,
    process::{Command, Output, Stdio},
    time::Duration,
};

use gatehouse::{
    config::StoreSpec,
    oauth::owner::{Owner, PasswordCheck},
    open_store,
    store::{
        embedded::EmbeddedStore,
        redis::{PurgeOnDrop, RedisStore},
        Entry, Group, Key, Kind, Put, Store,
    },
};

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
    // It says where the password went: run without the service's flags, it would
    // set one in a store no server uses.
    assert!(output.contains("gatehouse.redb"), "{output}");
    assert!(!output.contains("new and empty"), "{output}");
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let fresh = run(
        &[
            "owner",
            "set-password",
            "--data-dir",
            elsewhere.path().to_str().expect("utf-8"),
        ],
        b"a perfectly long password\n",
    );
    assert!(fresh.status.success());
    assert!(
        String::from_utf8_lossy(&fresh.stderr).contains("new and empty"),
        "{}",
        String::from_utf8_lossy(&fresh.stderr)
    );

    let store = open_store(&StoreSpec::Embedded(dir.path().join("gatehouse.redb")))
        .await
        .expect("store");
    let owner = Owner::new(store, None);
    assert_eq!(
        owner
            .verify_password("a perfectly long password")
            .await
            .expect("store"),
        PasswordCheck::Right
    );
    assert_eq!(
        owner
            .verify_password("another password")
            .await
            .expect("store"),
        PasswordCheck::Wrong
    );
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

fn redis_url() -> String {
    std::env::var("GATEHOUSE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A fresh key prefix on the test Redis, and the guard that deletes its keys.
fn redis_prefix() -> (String, PurgeOnDrop) {
    let prefix = format!("gatehouse-test:{}:", gatehouse::oauth::secret::random_id());
    let purge = PurgeOnDrop {
        url: redis_url(),
        prefix: prefix.clone(),
    };
    (prefix, purge)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn sorted(store: &dyn Store) -> Vec<Entry> {
    let mut entries = store.export().await.expect("export");
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    entries
}

#[tokio::test]
async fn store_export_and_import_move_every_record_between_stores() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("gatehouse.redb");
    let group = Group::random();
    let written = {
        let store = EmbeddedStore::open(&path).expect("store");
        let hour = Duration::from_secs(3600);
        store
            .put(&Key::new(Kind::CLIENT, "kept"), b"forever", Put::forever())
            .await
            .expect("put");
        store
            .put(
                &Key::new(Kind::SESSION, "short"),
                b"an hour",
                Put::ttl(hour),
            )
            .await
            .expect("put");
        for id in ["record", "member"] {
            store
                .put(
                    &Key::in_group(Kind::GRANT, &group, id),
                    id.as_bytes(),
                    Put::ttl(hour).in_group(&group),
                )
                .await
                .expect("put");
        }
        sorted(&store).await
        // The store closes here: the commands below open the file themselves.
    };
    assert_eq!(written.len(), 4);

    let embedded = format!("embedded:{}", path.display());
    let exported = run(&["store", "export", "--store", &embedded], b"");
    assert!(exported.status.success(), "{}", text(&exported.stderr));
    assert!(text(&exported.stderr).contains("4 records exported from the store"));
    assert_eq!(
        text(&exported.stdout).lines().count(),
        5,
        "4 records and the end"
    );
    assert_eq!(text(&exported.stdout).lines().last(), Some(r#"{"end":4}"#));

    // Cut short at a line's end, it is refused, and nothing is written.
    let whole = text(&exported.stdout);
    let cut: Vec<&str> = whole.lines().take(3).collect();
    let (cut_prefix, _purge_cut) = redis_prefix();
    let refused = run(
        &[
            "store",
            "import",
            "--store",
            &redis_url(),
            "--redis-key-prefix",
            &cut_prefix,
        ],
        format!("{}\n", cut.join("\n")).as_bytes(),
    );
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));
    assert!(
        text(&refused.stderr).contains("cut short"),
        "{}",
        text(&refused.stderr)
    );
    let untouched = RedisStore::connect(&redis_url(), &cut_prefix, 1)
        .await
        .expect("Redis");
    assert!(untouched.export().await.expect("export").is_empty());

    let (prefix, _purge) = redis_prefix();
    let url = redis_url();
    let imported = run(
        &[
            "store",
            "import",
            "--store",
            &url,
            "--redis-key-prefix",
            &prefix,
        ],
        &exported.stdout,
    );
    assert!(imported.status.success(), "{}", text(&imported.stderr));
    assert!(text(&imported.stderr).contains("4 records imported into the Redis store"));
    assert!(
        !text(&imported.stderr).contains(&url),
        "never the Redis URL"
    );

    let redis = RedisStore::connect(&url, &prefix, 1).await.expect("Redis");
    let moved = sorted(&redis).await;
    assert_eq!(moved.len(), written.len(), "{moved:?}");
    for (old, new) in written.iter().zip(&moved) {
        assert_eq!(new.key, old.key);
        assert_eq!(new.value, old.value, "{}", old.key);
        assert_eq!(new.group, old.group, "{}", old.key);
        match (old.ttl, new.ttl) {
            (None, None) => {}
            (Some(old_ttl), Some(new_ttl)) => assert!(
                new_ttl <= old_ttl && old_ttl - new_ttl < Duration::from_secs(60),
                "{}: {old_ttl:?} became {new_ttl:?}",
                old.key
            ),
            (old_ttl, new_ttl) => panic!("{}: {old_ttl:?} became {new_ttl:?}", old.key),
        }
    }
    // The group moved with its members: deleting it deletes both.
    assert_eq!(redis.delete_group(&group).await.expect("delete"), 2);
}

#[tokio::test]
async fn an_import_with_a_malformed_line_writes_nothing() {
    let (prefix, _purge) = redis_prefix();
    let url = redis_url();
    let input = concat!(
        r#"{"key":"client:one","value":"b25l"}"#,
        "\n",
        r#"{"key":"client:two","value":"dHdv","ttl_ms":60000}"#,
        "\n",
        r#"{"key":"client:three","value":"#,
        "\n",
    );
    let output = run(
        &[
            "store",
            "import",
            "--store",
            &url,
            "--redis-key-prefix",
            &prefix,
        ],
        input.as_bytes(),
    );
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("line 3 of the import is not a record"),
        "{stderr}"
    );
    let redis = RedisStore::connect(&url, &prefix, 1).await.expect("Redis");
    assert!(
        redis.export().await.expect("export").is_empty(),
        "the lines before the bad one were not written either"
    );
}
