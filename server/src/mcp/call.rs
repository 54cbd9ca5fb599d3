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
    /// One JSON-RPC message (or something that is not JSON-RPC at all, which the MCP
    /// server answers itself).
    Single(Call<'a>),
    /// A JSON array: batches are refused since 2025-06-18.
    Batch,
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
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    uri: Option<Cow<'a, str>>,
}

impl<'a> Message<'a> {
    /// Reads `body`. Anything unparsable is a `Single` with no method: the MCP server
    /// answers it with the proper JSON-RPC error.
    pub fn peek(body: &'a [u8]) -> Self {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if first == Some(&b'[') {
            return Message::Batch;
        }
        match serde_json::from_slice::<Peek<'a>>(body) {
            Ok(peek) => {
                let (name, uri) = match peek.params {
                    Some(p) => (p.name, p.uri),
                    None => (None, None),
                };
                Message::Single(Call {
                    method: peek.method,
                    name,
                    uri,
                })
            }
            Err(_) => Message::Single(Call::default()),
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
        assert_eq!(Message::peek(b"not json"), Message::Single(Call::default()));
        assert_eq!(Message::peek(b""), Message::Single(Call::default()));
        assert_eq!(
            Message::peek(br#"{"method":7}"#),
            Message::Single(Call::default())
        );
    }
}
