//! Input generators shared by the property tests beside each parser: text that is near
//! a grammar (so that generated cases reach past the first check), URLs built from
//! parts, and arbitrary JSON.

use proptest::prelude::*;
use serde_json::Value;

/// Any string, or text of characters that parsers treat specially: spaces, controls,
/// bidi and zero-width format characters, quotes, separators, non-ASCII.
pub fn tricky_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::collection::vec(
            prop_oneof![
                Just(' '),
                Just('\t'),
                Just('\u{0}'),
                Just('\u{7f}'),
                Just('\u{85}'),
                Just('\u{200B}'),
                Just('\u{202E}'),
                Just('\u{2066}'),
                Just('\u{FEFF}'),
                Just('\u{E0041}'),
                Just('"'),
                Just('\\'),
                Just(':'),
                Just(','),
                Just(';'),
                Just('='),
                Just('%'),
                Just('é'),
                Just('界'),
                proptest::char::range('a', 'e'),
            ],
            0..80,
        )
        .prop_map(|chars| chars.into_iter().collect()),
    ]
}

/// A host as a URL may name it: loopback names and addresses, public names, other
/// addresses, odd cases and spellings.
pub fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("localhost".to_owned()),
        Just("LocalHost".to_owned()),
        Just("127.0.0.1".to_owned()),
        Just("127.1.2.3".to_owned()),
        Just("[::1]".to_owned()),
        Just("[0:0:0:0:0:0:0:1]".to_owned()),
        Just("localhost.evil.example".to_owned()),
        Just("10.0.0.1".to_owned()),
        Just("[2001:db8::1]".to_owned()),
        Just("0x7f.1".to_owned()),
        Just("xn--bcher-kva.example".to_owned()),
        "[a-z][a-z0-9-]{0,8}(\\.[a-z]{2,5}){0,2}",
        "[A-Za-z0-9.-]{1,12}",
    ]
}

/// `scheme://[user@]host[:port]path[?query][#fragment]`, each part sometimes odd.
pub fn url() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            Just("https"),
            Just("http"),
            Just("HTTPS"),
            Just("ftp"),
            Just("javascript")
        ],
        prop::option::weighted(0.1, "[a-z]{1,4}(:[a-z]{0,4})?@"),
        host(),
        prop::option::of(any::<u16>()),
        "(/([a-zA-Z0-9._~%+-]|\\.\\.){0,8}){0,4}",
        prop::option::weighted(0.3, "\\?[a-z0-9=&%]{0,10}"),
        prop::option::weighted(0.1, "#[a-z]{0,4}"),
    )
        .prop_map(|(scheme, user, host, port, path, query, fragment)| {
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            format!(
                "{scheme}://{}{host}{port}{path}{}{}",
                user.unwrap_or_default(),
                query.unwrap_or_default(),
                fragment.unwrap_or_default()
            )
        })
}

/// Any JSON value, at most a few levels deep, whose object keys are often `keys`.
pub fn json(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        tricky_text().prop_map(Value::from),
        url().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 6, move |inner| {
        let key = prop_oneof![
            3 => prop::sample::select(keys).prop_map(str::to_owned),
            1 => "[a-z_]{1,8}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
