//! `Forwarded` / `X-Forwarded-For` chains behind any peer and any trusted ranges: the
//! client is always the peer or an address from the headers, and an untrusted peer
//! is always its own client.
#![no_main]

use std::net::IpAddr;

use arbitrary::Arbitrary;
use gatehouse::http::address::{client_address, forwarded_chain};
use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    peer: IpAddr,
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
    let chain = forwarded_chain(&headers);
    assert!(chain.len() <= entries);
    // Independently of how the chain is read: with X-Forwarded-For alone, a last entry
    // that is an address (what our proxy appended) always ends the chain.
    if !headers.contains_key("forwarded") {
        let last = headers
            .get_all("x-forwarded-for")
            .iter()
            .last()
            .and_then(|v| v.as_bytes().rsplit(|b| *b == b',').next())
            .and_then(|entry| std::str::from_utf8(entry).ok())
            .and_then(|entry| entry.trim().parse::<IpAddr>().ok());
        if let Some(last) = last {
            assert_eq!(chain.last(), Some(&last));
        }
    }
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));

    let client = client_address(input.peer, &headers, &trusted);
    if !is_trusted(&input.peer) {
        assert_eq!(client, input.peer);
    } else if chain.is_empty() {
        assert_eq!(client, input.peer);
    } else {
        assert!(chain.contains(&client));
        // The right-most untrusted hop, or the first hop when every hop is ours.
        match chain.iter().rev().find(|ip| !is_trusted(ip)) {
            Some(hop) => assert_eq!(client, *hop),
            None => assert_eq!(client, chain[0]),
        }
    }
});
