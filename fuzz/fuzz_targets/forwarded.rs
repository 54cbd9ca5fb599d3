//! `Forwarded` / `X-Forwarded-For` chains behind any peer and any trusted ranges: the
//! client is always the peer or an address from the headers, an untrusted peer is
//! always its own client, and two headers that disagree name nobody but the peer.
#![no_main]

use std::net::IpAddr;

use arbitrary::Arbitrary;
use gatehouse::{
    fuzzing::check_client_address,
    http::address::{forwarded_chains, ForwardedHeader},
};
use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    peer: IpAddr,
    /// The header the proxy is said to write: 0 either, 1 Forwarded, 2 X-Forwarded-For.
    read: u8,
    trusted: Vec<(IpAddr, u8)>,
    /// Header values, each sent as `Forwarded` when its flag is set, else as
    /// `X-Forwarded-For`.
    headers: Vec<(bool, &'a [u8])>,
}

fuzz_target!(|input: Input| {
    let trusted: Vec<IpNet> = input
        .trusted
        .iter()
        .filter_map(|(ip, len)| {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            IpNet::new(*ip, len % (max + 1)).ok()
        })
        .collect();
    let mut headers = HeaderMap::new();
    let mut entries = 0;
    for (forwarded, value) in &input.headers {
        let name = if *forwarded {
            "forwarded"
        } else {
            "x-forwarded-for"
        };
        if let Ok(value) = HeaderValue::from_bytes(value) {
            entries += value.as_bytes().split(|b| *b == b',').count();
            headers.append(HeaderName::from_static(name), value);
        }
    }
    let chains = forwarded_chains(&headers);
    let lengths = [&chains.forwarded, &chains.x_forwarded_for]
        .into_iter()
        .flatten()
        .map(Vec::len)
        .sum::<usize>();
    assert!(lengths <= entries);
    // Independently of how the chain is read: a last X-Forwarded-For entry that is an
    // address (what our proxy appended) always ends that chain.
    {
        let last = headers
            .get_all("x-forwarded-for")
            .iter()
            .last()
            .and_then(|v| v.as_bytes().rsplit(|b| *b == b',').next())
            .and_then(|entry| std::str::from_utf8(entry).ok())
            .and_then(|entry| entry.trim().parse::<IpAddr>().ok());
        if let Some(last) = last {
            assert_eq!(
                chains.x_forwarded_for.as_ref().and_then(|c| c.last()),
                Some(&last)
            );
        }
    }
    let read = match input.read % 3 {
        0 => ForwardedHeader::Any,
        1 => ForwardedHeader::Forwarded,
        _ => ForwardedHeader::XForwardedFor,
    };
    check_client_address(input.peer, &headers, &trusted, read);
});
