//! Just enough of a JSON-RPC message to decide what it needs, read without copying the
//! rest of the body. Everything a client sends passes through here first, so it must
//! never panic and must stay cheap on any input.

use std::borrow::Cow;

use serde::Deserialize;

/// One JSON-RPC message's method and the names it acts on.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Call<'a> {
    pub method: Option<Cow<'a, str>>,
    /// `params.name`: the tool of `tools/call`, the prompt of `prompts/get`.
    pub name: Option<Cow<'a, str>>,
    /// `params.uri`: the resource of `resources/read`.
    pub uri: Option<Cow<'a, str>>,
}

/// What a POST body holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// One JSON-RPC message: a request, a notification or a response.
    Single(Call<'a>),
    /// A JSON array: batches are refused since 2025-06-18.
    Batch,
    /// Not JSON, not an object, a `method` that is not a string, `method`, `params`,
    /// `params.name` or `params.uri` given twice (where rmcp, ignoring members it
    /// does not know, might still read a message): refused, so the guard never
    /// decides on less than the server reads.
    Unreadable,
}

#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow)]
    params: Option<PeekParams<'a>>,
}

#[derive(Deserialize)]
struct PeekParams<'a> {
    #[serde(borrow)]
    name: Option<Lenient<'a>>,
    #[serde(borrow)]
    uri: Option<Lenient<'a>>,
}

/// A member read when it is a string and passed over otherwise. Typed as a string,
/// a `"uri": 0` beside a tool's `name` made the whole message unreadable here (no
/// method, so no scope needed), while rmcp, which ignores members a method does not
/// have, ran the call all the same.
struct Lenient<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for Lenient<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
        struct Text<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Text<'a> {
            type Value = Option<Cow<'a, str>>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Some(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Some(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Some(Cow::Owned(v)))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(None)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(None)
            }
        }
        deserializer
            .deserialize_any(Text(std::marker::PhantomData))
            .map(Lenient)
    }
}

impl<'a> Message<'a> {
    /// Reads `body`.
    pub fn peek(body: &'a [u8]) -> Self {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if first == Some(&b'[') {
            return Message::Batch;
        }
        match serde_json::from_slice::<Peek<'a>>(body) {
            Ok(peek) => {
                let (name, uri) = match peek.params {
                    Some(p) => (p.name.and_then(|n| n.0), p.uri.and_then(|u| u.0)),
                    None => (None, None),
                };
                Message::Single(Call {
                    method: peek.method,
                    name,
                    uri,
                })
            }
            Err(_) => Message::Unreadable,
        }
    }
}

impl Call<'_> {
    pub fn method(&self) -> &str {
        self.method.as_deref().unwrap_or("")
    }

    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_method_name_and_uri() {
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_article","arguments":{"slug":"a"}}}"#;
        let Message::Single(call) = Message::peek(body) else {
            panic!("single")
        };
        assert_eq!(call.method(), "tools/call");
        assert_eq!(call.name(), Some("get_article"));
        let body = br#"{"method":"resources/read","params":{"uri":"article://x"}}"#;
        let Message::Single(call) = Message::peek(body) else {
            panic!("single")
        };
        assert_eq!(call.uri.as_deref(), Some("article://x"));
    }

    #[test]
    fn a_member_of_another_type_does_not_hide_the_method() {
        // rmcp runs this call (it ignores `uri` on `tools/call`): the guard must see
        // it as the call it is, to check its scope.
        for body in [
            br#"{"method":"tools/call","params":{"name":"delete_article","uri":0}}"#.as_slice(),
            br#"{"method":"tools/call","params":{"uri":{"a":[1,null]},"name":"delete_article"}}"#,
            br#"{"method":"tools/call","params":{"name":"delete_article","uri":[true,1.5,"x"]}}"#,
        ] {
            let Message::Single(call) = Message::peek(body) else {
                panic!("single")
            };
            assert_eq!(call.method(), "tools/call");
            assert_eq!(call.name(), Some("delete_article"));
            assert_eq!(call.uri, None);
        }
        let body = br#"{"method":"tools/call","params":{"name":7}}"#;
        let Message::Single(call) = Message::peek(body) else {
            panic!("single")
        };
        assert_eq!((call.method(), call.name()), ("tools/call", None));
    }

    #[test]
    fn escaped_names_are_unescaped() {
        let body = br#"{"method":"tools\/call","params":{"name":"get_\u0061rticle"}}"#;
        let Message::Single(call) = Message::peek(body) else {
            panic!("single")
        };
        assert_eq!(call.method(), "tools/call");
        assert_eq!(call.name(), Some("get_article"));
    }

    #[test]
    fn batches_and_garbage() {
        assert_eq!(Message::peek(b" \n[{}]"), Message::Batch);
        assert_eq!(Message::peek(b"not json"), Message::Unreadable);
        assert_eq!(Message::peek(b""), Message::Unreadable);
        assert_eq!(Message::peek(br#"{"method":7}"#), Message::Unreadable);
        assert_eq!(
            Message::peek(br#"{"method":"initialize","params":{"uri":0,"uri":0}}"#),
            Message::Unreadable
        );
        assert_eq!(
            Message::peek(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#),
            Message::Single(Call::default())
        );
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;
    use crate::strategies::{json, tricky_text};

    const FIELDS: &[&str] = &[
        "jsonrpc",
        "id",
        "method",
        "params",
        "name",
        "uri",
        "arguments",
    ];

    /// What the peek should read from a JSON value without duplicate keys: the
    /// method when it is a string, null or absent (else nothing at all), and name
    /// and uri when they are strings (passed over otherwise, as rmcp passes over
    /// members a method does not have).
    type Expected<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>);
    fn expected(value: &Value) -> Option<Expected<'_>> {
        fn as_text(v: Option<&Value>) -> Result<Option<&str>, ()> {
            match v {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(()),
            }
        }
        let object = value.as_object()?;
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

    /// A member that is usually a string.
    fn text() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::from("tools/call")),
            tricky_text().prop_map(Value::from),
            json(FIELDS),
        ]
    }

    /// A JSON-RPC message, mostly well-formed, with any extra fields.
    fn message() -> impl Strategy<Value = Value> {
        (
            prop::option::of(text()),
            prop::option::of(prop_oneof![
                (
                    prop::option::of(text()),
                    prop::option::of(text()),
                    json(FIELDS)
                )
                    .prop_map(|(name, uri, arguments)| {
                        let mut params = serde_json::Map::new();
                        params.extend(name.map(|n| ("name".to_owned(), n)));
                        params.extend(uri.map(|u| ("uri".to_owned(), u)));
                        params.insert("arguments".to_owned(), arguments);
                        Value::Object(params)
                    }),
                json(FIELDS),
            ]),
            json(FIELDS),
        )
            .prop_map(|(method, params, extra)| {
                let mut object = serde_json::Map::new();
                object.insert("jsonrpc".to_owned(), "2.0".into());
                object.insert("id".to_owned(), extra);
                object.extend(method.map(|m| ("method".to_owned(), m)));
                object.extend(params.map(|p| ("params".to_owned(), p)));
                Value::Object(object)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn any_bytes_are_a_batch_exactly_when_they_open_an_array(
            body in prop_oneof![any::<Vec<u8>>(), "[ \t\r\n]{0,3}[\\[{\"a-z0-9]{0,20}".prop_map(String::into_bytes)]
        ) {
            let first = body.iter().find(|b| !b.is_ascii_whitespace());
            prop_assert_eq!(Message::peek(&body) == Message::Batch, first == Some(&b'['));
        }

        /// For well-formed objects the peek reads what serde_json reads.
        #[test]
        fn the_peek_agrees_with_serde_json(value in prop_oneof![3 => message(), 1 => json(FIELDS)], pretty in any::<bool>()) {
            let body = if pretty {
                serde_json::to_vec_pretty(&value)
            } else {
                serde_json::to_vec(&value)
            }
            .expect("json");
            match (Message::peek(&body), value.is_array()) {
                (Message::Batch, true) => {}
                (Message::Single(call), false) => {
                    let expected = expected(&value);
                    prop_assert!(expected.is_some(), "read {:?} from {}", call, value);
                    if let Some((method, name, uri)) = expected {
                        prop_assert_eq!(call.method.as_deref(), method);
                        prop_assert_eq!(call.name(), name);
                        prop_assert_eq!(call.uri.as_deref(), uri);
                    }
                }
                (Message::Unreadable, false) => {
                    prop_assert!(expected(&value).is_none(), "could not read {}", value)
                }
                (peeked, _) => prop_assert!(false, "{:?} for {}", peeked, value),
            }
        }
    }
}
