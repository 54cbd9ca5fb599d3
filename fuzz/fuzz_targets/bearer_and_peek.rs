//! What every MCP request meets first: the bearer header (any bytes) and the JSON-RPC
//! peek at the body (any bytes), which must agree with serde_json.
#![no_main]

use gatehouse::{
    http::mcp::guard::bearer,
    mcp::call::Message,
};
use http::{header, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// What the peek should report for a JSON value without duplicate keys: the method
/// when it is a string, null or absent (else nothing at all: unreadable), and name and
/// uri when they are strings (passed over otherwise, as rmcp passes over members a
/// method does not have).
fn expected(value: &Value) -> Option<(Option<&str>, Option<&str>, Option<&str>)> {
    let object = value.as_object()?;
    fn as_text(v: Option<&Value>) -> Result<Option<&str>, ()> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(()),
        }
    }
    let method = as_text(object.get("method")).ok()?;
    let (name, uri) = match object.get("params") {
        None | Some(Value::Null) => (None, None),
        Some(Value::Object(params)) => (
            params.get("name").and_then(Value::as_str),
            params.get("uri").and_then(Value::as_str),
        ),
        // serde reads a struct from a sequence too (as rmcp reads its params):
        // positional `[name, uri]`.
        Some(Value::Array(items)) if items.len() == 2 => (
            items.first().and_then(Value::as_str),
            items.get(1).and_then(Value::as_str),
        ),
        Some(_) => return None,
    };
    Some((method, name, uri))
}

fuzz_target!(|input: (&[u8], &[u8])| {
    let (authorization, body) = input;
    if let Ok(value) = HeaderValue::from_bytes(authorization) {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value);
        if let Some(token) = bearer(&headers) {
            assert!(!token.is_empty() && token == token.trim());
            let value = headers[header::AUTHORIZATION]
                .to_str()
                .expect("a token came from a text header");
            let (scheme, rest) = value.split_once(' ').expect("scheme and token");
            assert!(scheme.eq_ignore_ascii_case("bearer"));
            assert_eq!(rest.trim(), token);
        }
    }

    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    match Message::peek(body) {
        Message::Batch => assert_eq!(first, Some(&b'[')),
        Message::Single(call) => {
            assert_ne!(first, Some(&b'['));
            // Whatever the peek read, serde_json reads the same: a key the peek reads
            // given twice (which serde_json's Value accepts, keeping the last) made
            // the body unreadable instead. (What the peek passes over unread, a
            // Value may refuse: a number beyond f64, nesting past 128; so does rmcp.)
            if let Ok(value) = serde_json::from_slice::<Value>(body) {
                let read = (call.method.as_deref(), call.name(), call.uri.as_deref());
                assert_eq!(expected(&value), Some(read));
            }
        }
        Message::Unreadable => assert_ne!(first, Some(&b'[')),
    }

    // On the same message re-serialised (no duplicate keys), the peek agrees fully.
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let Ok(canonical) = serde_json::to_vec(&value) else {
        return;
    };
    let peeked = Message::peek(&canonical);
    if value.is_array() {
        assert_eq!(peeked, Message::Batch);
        return;
    }
    match (peeked, expected(&value)) {
        (Message::Single(call), Some((method, name, uri))) => {
            assert_eq!(call.method.as_deref(), method);
            assert_eq!(call.name.as_deref(), name);
            assert_eq!(call.uri.as_deref(), uri);
        }
        (Message::Unreadable, None) => {}
        (peeked, expected) => panic!("peeked {peeked:?} where {expected:?} was expected"),
    }
});
