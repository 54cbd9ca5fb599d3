//! `Origin::parse`, `AllowedHost::parse`/`matches` and the MCP endpoint's Host and
//! Origin policy on any strings and header bytes.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use gatehouse::{
    http::mcp::policy::{HostPolicy, Refusal},
    net::{normalise_host, AllowedHost, Origin},
};
use http::{header, uri::Authority, HeaderMap, HeaderValue, Uri};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    origin: &'a str,
    allowed: &'a str,
    port: Option<u16>,
    host_header: Option<&'a [u8]>,
    origin_header: Option<&'a [u8]>,
}

/// The policy of `https://gate.example.com` with one extra host and one extra origin.
fn policy() -> &'static HostPolicy {
    static POLICY: OnceLock<HostPolicy> = OnceLock::new();
    POLICY.get_or_init(gatehouse::fuzzing::example_host_policy)
}

fuzz_target!(|input: Input| {
    if let Ok(origin) = Origin::parse(input.origin) {
        let serialised = origin.as_str();
        let rest = serialised
            .strip_prefix("https://")
            .or_else(|| serialised.strip_prefix("http://"))
            .expect("an http(s) origin");
        assert!(!rest.is_empty() && !rest.contains('/'), "{serialised}");
        assert_eq!(Origin::parse(serialised).as_ref(), Ok(&origin));
        let _ = origin.is_loopback();
    }

    if let Ok(allowed) = AllowedHost::parse(input.allowed) {
        let authority: Authority = input.allowed.trim().parse().expect("checked by parse");
        let host = normalise_host(authority.host());
        // An entry matches its own host, on its own port, and on any port when it
        // names none.
        assert!(allowed.matches(&host, authority.port_u16()));
        let any_port = authority.port_u16().is_none();
        assert_eq!(
            allowed.matches(&host, input.port),
            any_port || input.port == authority.port_u16()
        );
    }

    let mut headers = HeaderMap::new();
    if let Some(value) = input
        .host_header
        .and_then(|h| HeaderValue::from_bytes(h).ok())
    {
        headers.insert(header::HOST, value);
    }
    if let Some(value) = input
        .origin_header
        .and_then(|o| HeaderValue::from_bytes(o).ok())
    {
        headers.insert(header::ORIGIN, value);
    }
    let verdict = policy().check(&Uri::from_static("/mcp"), &headers);
    let Some(host) = headers.get(header::HOST) else {
        assert_eq!(verdict, Err(Refusal::MalformedHost));
        return;
    };
    if verdict == Err(Refusal::MalformedHost) {
        return;
    }
    let authority: Authority = host
        .to_str()
        .expect("a checked Host is text")
        .parse()
        .expect("a checked Host is an authority");
    let name = normalise_host(authority.host());
    let ours = matches!(
        name.as_str(),
        "localhost" | "127.0.0.1" | "::1" | "gate.example.com"
    ) || (name == "alias.example.com" && authority.port_u16() == Some(8443));
    if verdict != Err(Refusal::HostNotAllowed) {
        assert!(ours, "{name:?} passed");
    } else {
        assert!(!ours, "{name:?} refused");
    }
    if verdict == Ok(()) {
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = Origin::parse(origin.to_str().expect("text")).expect("an origin");
            assert!(
                origin.is_loopback()
                    || ["https://gate.example.com", "https://app.example.org"]
                        .contains(&origin.as_str())
            );
        }
    }
});
