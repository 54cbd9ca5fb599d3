//! The store's behaviour, written once and run against every backend with
//! [`suite!`]: `suite!(fresh)` where `async fn fresh() -> (Guard, impl Store, Time)`
//! returns a store that holds nothing, a guard that keeps its resources (a temp dir, a
//! key prefix) alive for the test, and how time passes for that store: a manual clock
//! for the embedded store (no sleeping), real time for Redis, whose TTLs are its own.

use std::{sync::Arc, time::Duration};

use super::{Group, Key, Kind, Put, Store};
use crate::clock::Clock;

/// How time passes for a backend under test.
pub enum Time {
    /// The store reads this clock: passing time is advancing it.
    Manual(Clock),
    /// The backend keeps its own time (Redis TTLs): passing time is waiting.
    Real,
}

impl Time {
    async fn pass(&self, by: Duration) {
        match self {
            Time::Manual(clock) => clock.advance(by),
            Time::Real => tokio::time::sleep(by).await,
        }
    }
}

macro_rules! suite {
    ($fresh:path) => {
        mod conformance_suite {
            use super::*;
            $crate::store::conformance::suite!(@tests $fresh;
                put_then_get, get_many_reads_each_key, put_replaces_value_ttl_and_group, put_in_a_group_needs_its_tag, missing_keys_are_none,
                ttl_expiry_hides_records_everywhere, take_is_single_use,
                take_under_concurrency_yields_exactly_once, put_new_writes_only_once,
                put_new_under_concurrency_writes_exactly_once, compare_and_swap_needs_the_expected_value,
                compare_and_swap_under_concurrency_swaps_once, delete_reports_live_records,
                delete_group_removes_exactly_its_members, scan_lists_live_records_by_prefix,
                export_reads_back_lifetimes_and_groups, logs_keep_order_cap_and_age, ping_answers);
        }
    };
    (@tests $fresh:path; $($name:ident),+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let (_guard, store, time) = $fresh().await;
                $crate::store::conformance::$name(std::sync::Arc::new(store), time).await;
            }
        )+
    };
}
pub(crate) use suite;

const SHORT_TTL: Duration = Duration::from_millis(150);
/// Long enough after [`SHORT_TTL`] for any backend to have expired the record.
const PAST_SHORT_TTL: Duration = Duration::from_millis(300);

fn group(id: &str) -> Group {
    Group::parse(id).expect("a plain group id")
}

fn key(id: &str) -> Key {
    Key::new(Kind::TEST, id)
}

pub async fn put_then_get<S: Store>(store: Arc<S>, _time: Time) {
    store
        .put(&key("a"), b"one", Put::forever())
        .await
        .expect("put");
    assert_eq!(
        store.get(&key("a")).await.expect("get"),
        Some(b"one".to_vec())
    );
    // Values are bytes, not strings.
    let binary = [0u8, 255, 1, 254];
    store
        .put(&key("bin"), &binary, Put::forever())
        .await
        .expect("put");
    assert_eq!(
        store.get(&key("bin")).await.expect("get"),
        Some(binary.to_vec())
    );
}

pub async fn get_many_reads_each_key<S: Store>(store: Arc<S>, time: Time) {
    store
        .put(&key("a"), b"one", Put::forever())
        .await
        .expect("put");
    store
        .put(&key("b"), b"two", Put::ttl(Duration::from_secs(60)))
        .await
        .expect("put");
    store
        .put(&key("gone"), b"old", Put::ttl(SHORT_TTL))
        .await
        .expect("put");
    time.pass(PAST_SHORT_TTL).await;
    let (a, b, gone, none) = (key("a"), key("b"), key("gone"), key("none"));
    assert_eq!(
        store
            .get_many(&[&b, &none, &a, &gone, &a])
            .await
            .expect("get_many"),
        vec![
            Some(b"two".to_vec()),
            None,
            Some(b"one".to_vec()),
            None,
            Some(b"one".to_vec())
        ],
        "values in the order asked, expired and missing records as None"
    );
    assert_eq!(
        store.get_many(&[&a]).await.expect("one"),
        vec![Some(b"one".to_vec())]
    );
    assert!(store.get_many(&[]).await.expect("none").is_empty());
}

pub async fn put_replaces_value_ttl_and_group<S: Store>(store: Arc<S>, time: Time) {
    let group = group("replace");
    let k = Key::in_group(Kind::TEST, &group, "k");
    store
        .put(&k, b"short-lived", Put::ttl(SHORT_TTL).in_group(&group))
        .await
        .expect("put");
    // Rewriting without a TTL or group makes the record permanent and ungrouped.
    store.put(&k, b"kept", Put::forever()).await.expect("put");
    time.pass(PAST_SHORT_TTL).await;
    assert_eq!(store.get(&k).await.expect("get"), Some(b"kept".to_vec()));
    assert_eq!(store.delete_group(&group).await.expect("delete group"), 0);
    assert_eq!(store.get(&k).await.expect("get"), Some(b"kept".to_vec()));
}

/// Both backends refuse a record in a group its key does not name, whatever the
/// write: what one holds, the other must be able to import.
pub async fn put_in_a_group_needs_its_tag<S: Store>(store: Arc<S>, _time: Time) {
    let group = group("tagged");
    let other = super::conformance::group("other");
    let k = Key::in_group(Kind::TEST, &other, "k");
    let put = || Put::forever().in_group(&group);
    assert!(store.put(&k, b"x", put()).await.is_err());
    assert!(store.put_new(&k, b"x", put()).await.is_err());
    assert!(store.put(&key("plain"), b"x", put()).await.is_err());
    assert_eq!(store.get(&k).await.expect("get"), None);
}

pub async fn missing_keys_are_none<S: Store>(store: Arc<S>, _time: Time) {
    assert_eq!(store.get(&key("nothing")).await.expect("get"), None);
    assert_eq!(store.take(&key("nothing")).await.expect("take"), None);
    assert!(!store.delete(&key("nothing")).await.expect("delete"));
    assert!(!store
        .compare_and_swap(&key("nothing"), b"", b"x", Put::forever())
        .await
        .expect("cas"));
}

pub async fn ttl_expiry_hides_records_everywhere<S: Store>(store: Arc<S>, time: Time) {
    for id in ["get", "take", "scan", "new", "cas"] {
        store
            .put(&key(id), b"soon gone", Put::ttl(SHORT_TTL))
            .await
            .expect("put");
    }
    let long = key("long");
    store
        .put(&long, b"stays", Put::ttl(Duration::from_secs(3600)))
        .await
        .expect("put");
    assert_eq!(
        store.get(&key("get")).await.expect("get"),
        Some(b"soon gone".to_vec())
    );

    time.pass(PAST_SHORT_TTL).await;

    assert_eq!(store.get(&key("get")).await.expect("get"), None);
    assert_eq!(store.take(&key("take")).await.expect("take"), None);
    let listed = store.scan("test:").await.expect("scan");
    assert_eq!(listed, vec![(long.clone(), b"stays".to_vec())]);
    assert!(store
        .put_new(&key("new"), b"fresh", Put::forever())
        .await
        .expect("put_new"));
    assert!(!store
        .compare_and_swap(&key("cas"), b"soon gone", b"x", Put::forever())
        .await
        .expect("cas"));
    assert_eq!(
        store.get(&long).await.expect("get"),
        Some(b"stays".to_vec())
    );
}

pub async fn take_is_single_use<S: Store>(store: Arc<S>, _time: Time) {
    store
        .put(&key("code"), b"grant", Put::ttl(Duration::from_secs(600)))
        .await
        .expect("put");
    assert_eq!(
        store.take(&key("code")).await.expect("take"),
        Some(b"grant".to_vec())
    );
    assert_eq!(store.take(&key("code")).await.expect("take"), None);
    assert_eq!(store.get(&key("code")).await.expect("get"), None);
}

pub async fn take_under_concurrency_yields_exactly_once<S: Store>(store: Arc<S>, _time: Time) {
    for round in 0..5 {
        let k = key(&format!("race-{round}"));
        store
            .put(&k, b"once", Put::ttl(Duration::from_secs(60)))
            .await
            .expect("put");
        let takers: Vec<_> = (0..50)
            .map(|_| {
                let (store, k) = (store.clone(), k.clone());
                tokio::spawn(async move { store.take(&k).await.expect("take") })
            })
            .collect();
        let mut winners = 0;
        for taker in takers {
            if let Some(value) = taker.await.expect("join") {
                assert_eq!(value, b"once");
                winners += 1;
            }
        }
        assert_eq!(winners, 1, "round {round}: exactly one take must win");
    }
}

pub async fn put_new_writes_only_once<S: Store>(store: Arc<S>, _time: Time) {
    assert!(store
        .put_new(&key("slug"), b"first", Put::forever())
        .await
        .expect("put_new"));
    assert!(!store
        .put_new(&key("slug"), b"second", Put::forever())
        .await
        .expect("put_new"));
    assert_eq!(
        store.get(&key("slug")).await.expect("get"),
        Some(b"first".to_vec())
    );
}

pub async fn put_new_under_concurrency_writes_exactly_once<S: Store>(store: Arc<S>, _time: Time) {
    let writers: Vec<_> = (0..50u8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let won = store
                    .put_new(&key("contended"), &[i], Put::forever())
                    .await
                    .expect("put_new");
                won.then_some(i)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for writer in writers {
        winners.extend(writer.await.expect("join"));
    }
    assert_eq!(winners.len(), 1);
    assert_eq!(
        store.get(&key("contended")).await.expect("get"),
        Some(vec![winners[0]])
    );
}

pub async fn compare_and_swap_needs_the_expected_value<S: Store>(store: Arc<S>, time: Time) {
    store
        .put(&key("rt"), b"active", Put::forever())
        .await
        .expect("put");
    assert!(!store
        .compare_and_swap(&key("rt"), b"other", b"rotated", Put::forever())
        .await
        .expect("cas"));
    assert_eq!(
        store.get(&key("rt")).await.expect("get"),
        Some(b"active".to_vec())
    );
    assert!(store
        .compare_and_swap(&key("rt"), b"active", b"rotated", Put::ttl(SHORT_TTL))
        .await
        .expect("cas"));
    assert_eq!(
        store.get(&key("rt")).await.expect("get"),
        Some(b"rotated".to_vec())
    );
    // The swap applied the new TTL.
    time.pass(PAST_SHORT_TTL).await;
    assert_eq!(store.get(&key("rt")).await.expect("get"), None);
}

pub async fn compare_and_swap_under_concurrency_swaps_once<S: Store>(store: Arc<S>, _time: Time) {
    store
        .put(&key("rotate"), b"v0", Put::forever())
        .await
        .expect("put");
    let swappers: Vec<_> = (0..50u8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .compare_and_swap(&key("rotate"), b"v0", &[i], Put::forever())
                    .await
                    .expect("cas")
                    .then_some(i)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for swapper in swappers {
        winners.extend(swapper.await.expect("join"));
    }
    assert_eq!(winners.len(), 1);
    assert_eq!(
        store.get(&key("rotate")).await.expect("get"),
        Some(vec![winners[0]])
    );
}

pub async fn delete_reports_live_records<S: Store>(store: Arc<S>, _time: Time) {
    store
        .put(&key("d"), b"x", Put::forever())
        .await
        .expect("put");
    assert!(store.delete(&key("d")).await.expect("delete"));
    assert!(!store.delete(&key("d")).await.expect("delete"));
    assert_eq!(store.get(&key("d")).await.expect("get"), None);
}

pub async fn delete_group_removes_exactly_its_members<S: Store>(store: Arc<S>, _time: Time) {
    let grant = group("grant1");
    let other = group("grant2");
    let members = [
        Key::in_group(Kind::ACCESS, &grant, "h1"),
        Key::in_group(Kind::REFRESH, &grant, "h2"),
        Key::in_group(Kind::GRANT, &grant, "record"),
    ];
    for k in &members {
        store
            .put(
                k,
                b"member",
                Put::ttl(Duration::from_secs(3600)).in_group(&grant),
            )
            .await
            .expect("put");
    }
    let outsider = Key::in_group(Kind::ACCESS, &other, "h3");
    store
        .put(&outsider, b"other grant", Put::forever().in_group(&other))
        .await
        .expect("put");
    let ungrouped = key("client");
    store
        .put(&ungrouped, b"client", Put::forever())
        .await
        .expect("put");

    assert_eq!(store.delete_group(&grant).await.expect("delete group"), 3);
    for k in &members {
        assert_eq!(store.get(k).await.expect("get"), None, "{k} must be gone");
    }
    assert_eq!(
        store.get(&outsider).await.expect("get"),
        Some(b"other grant".to_vec())
    );
    assert_eq!(
        store.get(&ungrouped).await.expect("get"),
        Some(b"client".to_vec())
    );
    // Deleting again finds nothing; a member written afterwards is a new member.
    assert_eq!(store.delete_group(&grant).await.expect("delete group"), 0);
    store
        .put(&members[0], b"again", Put::forever().in_group(&grant))
        .await
        .expect("put");
    assert_eq!(store.delete_group(&grant).await.expect("delete group"), 1);
}

pub async fn scan_lists_live_records_by_prefix<S: Store>(store: Arc<S>, _time: Time) {
    for slug in ["b-second", "a-first", "c-third"] {
        store
            .put(
                &Key::new(Kind::ARTICLE, slug),
                slug.as_bytes(),
                Put::forever(),
            )
            .await
            .expect("put");
    }
    store
        .put(&Key::from_raw("articles-index:x"), b"no", Put::forever())
        .await
        .expect("put");
    store
        .put(&Key::new(Kind::CLIENT, "x"), b"no", Put::forever())
        .await
        .expect("put");
    let listed = store.scan("article:").await.expect("scan");
    let slugs: Vec<_> = listed
        .iter()
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert_eq!(slugs, ["a-first", "b-second", "c-third"]);
    assert_eq!(listed[0].0, Key::new(Kind::ARTICLE, "a-first"));
    assert!(store.scan("nothing-here:").await.expect("scan").is_empty());

    // More than one batch of reads (Redis reads what SCAN found 200 at a time).
    for n in 0..450 {
        let key = Key::new(Kind::TEST, &format!("many-{n:03}"));
        store
            .put(&key, n.to_string().as_bytes(), Put::forever())
            .await
            .expect("put");
    }
    let listed = store.scan("test:many-").await.expect("scan");
    assert_eq!(listed.len(), 450);
    for (n, (key, value)) in listed.iter().enumerate() {
        assert_eq!(key.as_str(), format!("test:many-{n:03}"));
        assert_eq!(value, n.to_string().as_bytes());
    }
}

pub async fn export_reads_back_lifetimes_and_groups<S: Store>(store: Arc<S>, time: Time) {
    let grant = group("exported");
    let member = Key::in_group(Kind::REFRESH, &grant, "h");
    store
        .put(
            &member,
            b"token",
            Put::ttl(Duration::from_secs(600)).in_group(&grant),
        )
        .await
        .expect("put");
    store
        .put(&key("client"), b"forever", Put::forever())
        .await
        .expect("put");
    store
        .put(&key("gone"), b"x", Put::ttl(SHORT_TTL))
        .await
        .expect("put");
    time.pass(PAST_SHORT_TTL).await;

    let mut entries = store.export().await.expect("export");
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(entries.len(), 2, "{entries:?}");
    let (token, client) = (&entries[0], &entries[1]);
    assert_eq!(token.key, member);
    assert_eq!(token.value, b"token");
    assert_eq!(token.group.as_ref(), Some(&grant));
    let ttl = token.ttl.expect("a lifetime");
    assert!(
        ttl > Duration::from_secs(590) && ttl <= Duration::from_secs(600),
        "{ttl:?}"
    );
    assert_eq!(client.key, key("client"));
    assert_eq!((client.ttl, client.group.as_ref()), (None, None));
}

pub async fn logs_keep_order_cap_and_age<S: Store>(store: Arc<S>, time: Time) {
    let entries: Vec<Vec<u8>> = (0..5).map(|i| format!("e{i}").into_bytes()).collect();
    store
        .log_append("activity", &entries[..3], 100, Duration::from_secs(3600))
        .await
        .expect("append");
    store
        .log_append("activity", &entries[3..], 100, Duration::from_secs(3600))
        .await
        .expect("append");
    let read = store.log_read("activity", 10, None).await.expect("read");
    let values: Vec<&[u8]> = read.iter().map(|(_, v)| v.as_slice()).collect();
    assert_eq!(values, [b"e4", b"e3", b"e2", b"e1", b"e0"], "newest first");
    // Paging: the next page starts after the last id seen.
    let first = store.log_read("activity", 2, None).await.expect("read");
    let next = store
        .log_read("activity", 2, Some(&first[1].0))
        .await
        .expect("read");
    assert_eq!(next[0].1, b"e2");
    assert_eq!(next[1].1, b"e1");
    // Logs are not records.
    assert!(store.scan("").await.expect("scan").is_empty());
    // The cap keeps the newest.
    store
        .log_append("capped", &entries, 3, Duration::from_secs(3600))
        .await
        .expect("append");
    let capped = store.log_read("capped", 10, None).await.expect("read");
    assert_eq!(capped.len(), 3);
    assert_eq!(capped[2].1, b"e2");
    // Entries older than the age limit go at the next append.
    store
        .log_append("aged", &entries[..1], 100, SHORT_TTL)
        .await
        .expect("append");
    time.pass(PAST_SHORT_TTL).await;
    store
        .log_append("aged", &entries[1..2], 100, SHORT_TTL)
        .await
        .expect("append");
    let aged = store.log_read("aged", 10, None).await.expect("read");
    assert_eq!(aged.len(), 1, "{aged:?}");
    assert_eq!(aged[0].1, b"e1");
    // Appending nothing only trims: what aged since, and past a lower cap (a log
    // nothing is written to any more keeps to its retention too).
    time.pass(PAST_SHORT_TTL).await;
    store
        .log_append("aged", &[], 100, SHORT_TTL)
        .await
        .expect("trim");
    let aged = store.log_read("aged", 10, None).await.expect("read");
    assert!(aged.is_empty(), "{aged:?}");
    store
        .log_append("capped", &[], 1, Duration::from_secs(3600))
        .await
        .expect("trim");
    let capped = store.log_read("capped", 10, None).await.expect("read");
    assert_eq!(capped.len(), 1);
    assert_eq!(capped[0].1, b"e4");
}

pub async fn ping_answers<S: Store>(store: Arc<S>, _time: Time) {
    store.ping().await.expect("ping");
    assert!(!store.backend().is_empty());
}
