//! Entry points for the fuzz targets in `fuzz/` into parsers that are private to the
//! crate. Not an API: nothing else may call these.

use axum::http::HeaderMap;

use crate::{
    http::oauth::token::{client_request, RevokeParams},
    oauth::{clients::ClientCredentials, token::TokenParams},
};

/// What `POST /oauth/token` reads before it touches the store: the form and the
/// client's credentials, or the error description it would answer with.
pub fn token_request(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(TokenParams, ClientCredentials), String> {
    client_request::<TokenParams>(headers, body).map_err(|e| e.description)
}

/// What `POST /oauth/revoke` reads before it touches the store: the `token` and
/// `client_id` fields of the form, and the client's credentials.
pub fn revoke_request(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Option<String>, Option<String>, ClientCredentials), String> {
    client_request::<RevokeParams>(headers, body)
        .map(|(params, credentials)| (params.token, params.client_id, credentials))
        .map_err(|e| e.description)
}

/// The Host and Origin policy of `https://gate.example.com` with one extra host
/// (`alias.example.com:8443`) and one extra origin (`https://app.example.org`): what
/// the policy's unit and property tests and its fuzz target check against.
pub fn example_host_policy() -> crate::http::mcp::policy::HostPolicy {
    let config = crate::config::Cli::parse_ignoring_env([
        "gatehouse",
        "--public-url",
        "https://gate.example.com",
        "--data-dir",
        "/tmp",
        "--allowed-origin",
        "https://app.example.org",
        "--allowed-host",
        "alias.example.com:8443",
    ])
    .expect("flags")
    .serve
    .into_config()
    .expect("config");
    crate::http::mcp::policy::HostPolicy::new(&config)
}

/// The id the direct path's oracles below give a call on the upstream leg.
pub const OURS: &str = "gatehouse-9";

/// A JSON object's members in order, names unescaped and repeats kept: what any
/// upstream's parser may make of it, whichever repeat it keeps and however it
/// matches names.
struct Pairs(Vec<(String, Box<serde_json::value::RawValue>)>);

impl<'de> serde::Deserialize<'de> for Pairs {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> serde::de::Visitor<'de> for Object {
            type Value = Pairs;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Pairs, A::Error> {
                let mut pairs = Vec::new();
                while let Some(pair) = map.next_entry()? {
                    pairs.push(pair);
                }
                Ok(Pairs(pairs))
            }
        }
        deserializer.deserialize_map(Object)
    }
}

impl Pairs {
    fn of(text: &str) -> Self {
        serde_json::from_str(text).expect("the direct path read this object")
    }

    /// The one member whose name is `name` to a parser that ignores case; it panics
    /// when there are more (or none), as a reader could then take another.
    fn only(&self, name: &str) -> &str {
        self.at_most(name)
            .unwrap_or_else(|| panic!("no {name:?} member"))
    }

    /// The member whose name is `name` to any parser, if there is one: it panics
    /// when there are more, or one that only a parser ignoring case takes for it.
    fn at_most(&self, name: &str) -> Option<&str> {
        let mut found = self.0.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name));
        let (written, value) = found.next()?;
        assert!(found.next().is_none(), "{name:?} is named twice");
        assert_eq!(written, name, "{name:?} is named in another case");
        Some(value.get())
    }

    /// Every name is ASCII: Go folds some others into ASCII ones (`ſ` is `s`, the
    /// Kelvin sign `k`), which a check of ASCII case alone would not see.
    fn ascii(&self) -> &Self {
        for (name, _) in &self.0 {
            assert!(name.is_ascii(), "the name {name:?} is not ASCII");
        }
        self
    }
}

fn string(text: &str) -> String {
    serde_json::from_str(text).expect("a string")
}

/// What the direct path makes of `body` as a `tools/call` (the tool it names, and the
/// text it sends upstream) must be what any parser reads in it: one `jsonrpc`, `id`,
/// `method` and `params` after unescaping and ignoring case (every name ASCII, so
/// Go's Unicode folding is ASCII's), and in `params` one `name`, the tool the gateway
/// authorized, and nothing the relay handles instead in any case (`inputResponses`,
/// `requestState`, per-request `_meta`); and what goes upstream is the same message
/// with only its id and progress token changed. Panics where that fails; nothing to
/// check for a body the direct path leaves to the relay (the property tests assert
/// that plain calls are taken).
pub fn check_direct_call(body: &[u8]) {
    use crate::http::mcp::gateway::{Direct, Read};
    let Some(Read::Call(call, tool)) = Direct::of(&bytes::Bytes::copy_from_slice(body)) else {
        return;
    };
    let text = std::str::from_utf8(body).expect("JSON is UTF-8");
    let message = Pairs::of(text);
    message.ascii();
    assert_eq!(string(message.only("jsonrpc")), "2.0");
    assert_eq!(string(message.only("method")), "tools/call");
    message.only("id");
    let params = Pairs::of(message.only("params"));
    params.ascii();
    assert_eq!(string(params.only("name")), tool);
    // What the relay handles (answers to input requests, per-request metadata) is
    // not there for any parser, and the progress token is where the path saw it.
    assert!(params.at_most("inputResponses").is_none());
    assert!(params.at_most("requestState").is_none());
    if let Some(meta) = params.at_most("_meta").filter(|m| m.starts_with('{')) {
        let meta = Pairs::of(meta);
        meta.ascii().at_most("progressToken");
        for (name, _) in &meta.0 {
            let prefix = name.get(..24).unwrap_or_default();
            assert!(!prefix.eq_ignore_ascii_case("io.modelcontextprotocol/"));
        }
    }

    let sent = call.with_id(OURS).expect("the spans are in order");
    let Ok(mut meant) = serde_json::from_slice::<serde_json::Value>(body) else {
        // Beyond what a tree reads (a number past f64, say): the upstream's to judge.
        return;
    };
    meant["id"] = OURS.into();
    if let Some(token) = meant.pointer_mut("/params/_meta/progressToken") {
        *token = OURS.into();
    }
    let sent: serde_json::Value = serde_json::from_slice(&sent).expect("JSON goes upstream");
    assert_eq!(sent, meant);
}

/// What the direct path makes of an upstream's `message` as the answer to the call it
/// sent as [`OURS`]: the same message with the client's id (`client_id`, a JSON string
/// or integer) in place of ours, flagged as an error exactly when it has an `error`
/// or its result says `isError: true`. Panics where that fails.
pub fn check_direct_answer(message: &[u8], client_id: &serde_json::Value) {
    let client_text = serde_json::to_vec(client_id).expect("JSON");
    let Some((answer, error)) = crate::gateway::direct::answer_text(message, OURS, &client_text)
    else {
        return;
    };
    let Ok(mut meant) = serde_json::from_slice::<serde_json::Value>(message) else {
        return;
    };
    assert!(meant.get("method").is_none(), "a request is no answer");
    assert_eq!(meant["id"], OURS);
    let is_error = meant.get("error").is_some()
        || meant.pointer("/result/isError") == Some(&serde_json::Value::Bool(true));
    assert_eq!(error, is_error);
    meant["id"] = client_id.clone();
    let answer: serde_json::Value = serde_json::from_slice(&answer).expect("JSON");
    assert_eq!(answer, meant);
}

/// A JSON message sent to the client as SSE is one event whose data means the same,
/// whatever line breaks the upstream wrote in it. Panics where that fails.
pub fn check_sse_frame(json: &[u8]) {
    let Ok(meant) = serde_json::from_slice::<serde_json::Value>(json) else {
        return;
    };
    let frame = crate::http::mcp::gateway::sse_frame(json.to_vec());
    let data = frame
        .strip_prefix(b"event: message\ndata: ")
        .and_then(|rest| rest.strip_suffix(b"\n\n"))
        .expect("one event");
    assert!(!data.iter().any(|b| matches!(b, b'\n' | b'\r')));
    let read: serde_json::Value = serde_json::from_slice(data).expect("JSON");
    assert_eq!(read, meant);
}

/// Checks `client_address` against its rule, read independently of how it is
/// written: an untrusted peer is its own client; otherwise each header that is read
/// names the right-most hop that is not a trusted proxy (the first hop when every
/// hop is ours, the peer for an empty chain), and the client is that address when
/// the headers read name exactly one, else the peer. Panics on a difference, for
/// the property tests and the `forwarded` fuzz target alike.
pub fn check_client_address(
    peer: std::net::IpAddr,
    headers: &HeaderMap,
    trusted: &[ipnet::IpNet],
    read: crate::http::address::ForwardedHeader,
) {
    use crate::http::address::{client_address, forwarded_chains, ForwardedHeader};
    let client = client_address(peer, headers, trusted, read);
    // An IPv4 address is the same written as `::ffff:…`, in an address or a range.
    let peer = peer.to_canonical();
    let is_trusted = |ip: &std::net::IpAddr| {
        let forms = match ip.to_canonical() {
            std::net::IpAddr::V4(v4) => [v4.into(), v4.to_ipv6_mapped().into()],
            v6 => [v6, v6],
        };
        trusted
            .iter()
            .any(|net| forms.iter().any(|form| net.contains(form)))
    };
    if !is_trusted(&peer) {
        assert_eq!(client, peer, "an untrusted peer is its own client");
        return;
    }
    let mut chains = forwarded_chains(headers);
    match read {
        ForwardedHeader::Any => {}
        ForwardedHeader::Forwarded => chains.x_forwarded_for = None,
        ForwardedHeader::XForwardedFor => chains.forwarded = None,
    }
    let named = |chain: &Vec<std::net::IpAddr>| match chain.iter().rev().find(|ip| !is_trusted(ip))
    {
        Some(hop) => *hop,
        None => chain.first().copied().unwrap_or(peer),
    };
    let mut said: Vec<std::net::IpAddr> = [&chains.forwarded, &chains.x_forwarded_for]
        .into_iter()
        .flatten()
        .map(named)
        .collect();
    said.dedup();
    match said.as_slice() {
        [one] => assert_eq!(client, *one, "{headers:?}"),
        _ => assert_eq!(
            client, peer,
            "no header read, or two that disagree: {headers:?}"
        ),
    }
}
