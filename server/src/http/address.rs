//! Which client a request comes from, for rate limits and the activity log: the TCP
//! peer, or, when the peer is a trusted reverse proxy (`--trusted-proxy`), the address
//! its `Forwarded` (RFC 7239) or `X-Forwarded-For` header names. The chain is read
//! from the right, skipping trusted proxies, so a client cannot choose its address by
//! sending the header itself. A proxy writes one of the two headers, and a client can
//! send the other: when both name a client and disagree, the proxy itself is taken
//! as the client.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::{
    extract::FromRequestParts,
    http::{request::Parts, HeaderMap},
};
use ipnet::IpNet;

use super::{listener::peer, AppState};
pub use crate::config::ForwardedHeader;

/// The client's address as rate limits see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddress(pub IpAddr);

impl FromRequestParts<AppState> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = peer(&parts.extensions)
            .map(|addr| addr.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        Ok(ClientAddress(client_address(
            peer,
            &parts.headers,
            &state.config.trusted_proxies,
            state.config.forwarded_header,
        )))
    }
}

/// Whether a client at `ip` is a proxy on this machine that cannot name its clients
/// (127.0.0.1 or ::1, with no trusted proxy configured): per-address shares (of
/// request bodies, of registrations) do not apply to it, only the whole. With a
/// trusted proxy, a client it does not name (or whose forwarding headers disagree)
/// counts as the proxy, in a share of its own: a header a client sends must not
/// lift its limit.
pub fn is_unnamed_local_proxy(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = ip.to_canonical();
    trusted.is_empty()
        && (ip == IpAddr::from(Ipv4Addr::LOCALHOST)
            || ip == IpAddr::from(std::net::Ipv6Addr::LOCALHOST))
}

/// Whether `ip` is in a `--trusted-proxy` range, whichever way either writes an IPv4
/// address (`10.0.0.2` or `::ffff:10.0.0.2`).
pub fn is_trusted_proxy(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = ip.to_canonical();
    let mapped = match ip {
        IpAddr::V4(v4) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
        IpAddr::V6(_) => None,
    };
    trusted
        .iter()
        .any(|net| net.contains(&ip) || mapped.is_some_and(|m| net.contains(&m)))
}

/// The client behind `peer`: `peer` itself unless it is a trusted proxy, else the
/// right-most address of the forwarding chain that is not a trusted proxy.
///
/// `read` names the header the proxy writes; the other is ignored. Unnamed
/// ([`ForwardedHeader::Any`]), a client may send either: when a proxy that writes
/// `X-Forwarded-For` passes on a `Forwarded` the client made up (or the other way
/// round), believing one header over the other would let the client pick a fresh
/// address, and so fresh rate limits, at every request. So when both headers are
/// sent and name different clients, the client is the proxy itself: a client that
/// forges the other header only shares the proxy's limits.
pub fn client_address(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
    read: ForwardedHeader,
) -> IpAddr {
    // On a `[::]` bind an IPv4 proxy comes as `::ffff:…`, and a proxy listening on
    // `[::]` writes its IPv4 peers that way in the headers too.
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| is_trusted_proxy(*ip, trusted);
    if !is_trusted(&peer) {
        return peer;
    }
    let client = |chain: &[IpAddr]| {
        chain
            .iter()
            .rev()
            .find(|ip| !is_trusted(ip))
            .or(chain.first())
            .copied()
            .unwrap_or(peer)
    };
    let chains = forwarded_chains(headers);
    let (forwarded, xff) = match read {
        ForwardedHeader::Any => (chains.forwarded, chains.x_forwarded_for),
        ForwardedHeader::Forwarded => (chains.forwarded, None),
        ForwardedHeader::XForwardedFor => (None, chains.x_forwarded_for),
    };
    match (forwarded, xff) {
        (Some(forwarded), Some(xff)) => {
            let (a, b) = (client(&forwarded), client(&xff));
            if a == b {
                a
            } else {
                peer
            }
        }
        (Some(chain), None) | (None, Some(chain)) => client(&chain),
        (None, None) => peer,
    }
}

/// The chains each forwarding header names, client first; `None` for a header not
/// sent.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Chains {
    /// `Forwarded` (RFC 7239): its `for=` parameters.
    pub forwarded: Option<Vec<IpAddr>>,
    pub x_forwarded_for: Option<Vec<IpAddr>>,
}

/// The addresses of the forwarding chains, client first. In each, entries that are
/// not addresses (`unknown`, obfuscated names) end the chain there, so nothing left
/// of them is believed.
pub fn forwarded_chains(headers: &HeaderMap) -> Chains {
    // Values are split as bytes: an entry that is not visible ASCII (which HTTP allows
    // as obs-text) is unparsable and ends the chain like `unknown`. Dropping its whole
    // value instead would drop the hops a proxy appended after it, and let a client
    // pass as the proxy.
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(|entry| String::from_utf8_lossy(entry).trim().to_owned())
            .collect()
    };
    // Keep only the trustworthy tail: everything right of the last unparsable entry.
    let tail = |entries: Vec<Option<IpAddr>>| -> Vec<IpAddr> {
        let start = entries
            .iter()
            .rposition(Option::is_none)
            .map_or(0, |i| i + 1);
        entries[start..].iter().flatten().copied().collect()
    };
    let sent = |name: &str| headers.contains_key(name).then(|| values(name));
    Chains {
        forwarded: sent("forwarded").map(|elements| {
            tail(
                elements
                    .iter()
                    .map(|element| {
                        element
                            .split(';')
                            .filter_map(|pair| pair.trim().split_once('='))
                            .find(|(name, _)| name.trim().eq_ignore_ascii_case("for"))
                            .and_then(|(_, value)| parse_node(value.trim().trim_matches('"')))
                    })
                    .collect(),
            )
        }),
        x_forwarded_for: sent("x-forwarded-for")
            .map(|entries| tail(entries.iter().map(|entry| parse_node(entry)).collect())),
    }
}

/// An address as a node: `192.0.2.1`, `192.0.2.1:4711`, `[2001:db8::1]:4711`,
/// `2001:db8::1`.
/// IPv4 addresses written as `::ffff:…` come back in their IPv4 form.
fn parse_node(raw: &str) -> Option<IpAddr> {
    let ip = if let Ok(ip) = raw.parse::<IpAddr>() {
        Some(ip)
    } else if let Ok(addr) = raw.parse::<SocketAddr>() {
        Some(addr.ip())
    } else {
        raw.strip_prefix('[')
            .and_then(|r| r.split_once(']'))
            .and_then(|(ip, _)| ip.parse().ok())
    };
    ip.map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect(s)
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_sends() {
        let h = headers(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(
            client_address(ip("203.0.113.9"), &h, &[], ForwardedHeader::Any),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn a_trusted_proxy_names_the_client_from_the_right() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        // The client sent a forged entry first; the proxy appended the real peer.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7")]);
        assert_eq!(
            client_address(ip("10.0.0.2"), &h, &trusted, ForwardedHeader::Any),
            ip("198.51.100.7")
        );
        // Two proxies of ours in a row.
        let h = headers(&[("x-forwarded-for", "198.51.100.7, 10.0.0.3")]);
        assert_eq!(
            client_address(ip("10.0.0.2"), &h, &trusted, ForwardedHeader::Any),
            ip("198.51.100.7")
        );
        // Forwarded, with ports and IPv6.
        let forwarded = (
            "forwarded",
            "for=\"[2001:db8:cafe::17]:4711\";proto=https, for=10.0.0.3",
        );
        assert_eq!(
            client_address(
                ip("10.0.0.2"),
                &headers(&[forwarded]),
                &trusted,
                ForwardedHeader::Any
            ),
            ip("2001:db8:cafe::17")
        );
        // Both headers, naming the same client.
        let h = headers(&[forwarded, ("x-forwarded-for", "2001:db8:cafe::17")]);
        assert_eq!(
            client_address(ip("10.0.0.2"), &h, &trusted, ForwardedHeader::Any),
            ip("2001:db8:cafe::17")
        );
        // Nothing usable: the proxy itself.
        assert_eq!(
            client_address(
                ip("10.0.0.2"),
                &HeaderMap::new(),
                &trusted,
                ForwardedHeader::Any
            ),
            ip("10.0.0.2")
        );
    }

    /// On a `[::]` bind an IPv4 proxy's connection comes as `::ffff:…`, and a
    /// proxy listening on `[::]` writes IPv4 hops that way: both are the IPv4
    /// addresses a trusted range names, and the client comes back in IPv4 form.
    #[test]
    fn ipv4_written_as_ipv6_is_the_same_address() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7")]);
        assert_eq!(
            client_address(ip("::ffff:10.0.0.2"), &h, &trusted, ForwardedHeader::Any),
            ip("198.51.100.7")
        );
        // The load balancer's hop, as nginx on `[::]` appends it.
        let h = headers(&[("x-forwarded-for", "198.51.100.7, ::ffff:10.0.0.3")]);
        assert_eq!(
            client_address(ip("10.0.0.2"), &h, &trusted, ForwardedHeader::Any),
            ip("198.51.100.7")
        );
        let h = headers(&[("x-forwarded-for", "::ffff:198.51.100.7")]);
        assert_eq!(
            client_address(ip("10.0.0.2"), &h, &trusted, ForwardedHeader::Any),
            ip("198.51.100.7")
        );
        // A range written in IPv6 form trusts the IPv4 peer too.
        let mapped: Vec<IpNet> = vec!["::ffff:10.0.0.0/104".parse().expect("net")];
        let h = headers(&[("x-forwarded-for", "198.51.100.7")]);
        assert_eq!(
            client_address(ip("10.0.0.2"), &h, &mapped, ForwardedHeader::Any),
            ip("198.51.100.7")
        );
        // An untrusted peer is its own client, in IPv4 form.
        assert_eq!(
            client_address(ip("::ffff:203.0.113.9"), &h, &trusted, ForwardedHeader::Any),
            ip("203.0.113.9")
        );
    }

    /// The proxy writes one header; the client sent the other, naming whom it
    /// likes. Neither is believed over the other: the client is the proxy, whatever
    /// address the client picks.
    #[test]
    fn a_client_cannot_pick_its_address_with_the_header_the_proxy_does_not_write() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let proxy = ip("10.0.0.2");
        for forged in ["for=6.6.6.6", "for=7.7.7.7;proto=https", "for=unknown"] {
            let h = headers(&[("forwarded", forged), ("x-forwarded-for", "198.51.100.7")]);
            assert_eq!(
                client_address(proxy, &h, &trusted, ForwardedHeader::Any),
                proxy,
                "{forged}"
            );
            // Told which header the proxy writes, the other is not read at all.
            assert_eq!(
                client_address(proxy, &h, &trusted, ForwardedHeader::XForwardedFor),
                ip("198.51.100.7"),
                "{forged}"
            );
        }
        for forged in ["6.6.6.6", "1.1.1.1, 7.7.7.7", "unknown"] {
            let h = headers(&[
                ("x-forwarded-for", forged),
                ("forwarded", "for=198.51.100.7"),
            ]);
            assert_eq!(
                client_address(proxy, &h, &trusted, ForwardedHeader::Any),
                proxy,
                "{forged}"
            );
            assert_eq!(
                client_address(proxy, &h, &trusted, ForwardedHeader::Forwarded),
                ip("198.51.100.7"),
                "{forged}"
            );
        }
    }

    #[test]
    fn nothing_left_of_an_unparsable_entry_is_believed() {
        let h = headers(&[("x-forwarded-for", "1.1.1.1, unknown, 198.51.100.7")]);
        assert_eq!(
            forwarded_chains(&h),
            Chains {
                forwarded: None,
                x_forwarded_for: Some(vec![ip("198.51.100.7")]),
            }
        );
        let h = headers(&[("forwarded", "for=1.1.1.1, for=_hidden, for=192.0.2.1:80")]);
        assert_eq!(
            forwarded_chains(&h),
            Chains {
                forwarded: Some(vec![ip("192.0.2.1")]),
                x_forwarded_for: None,
            }
        );
    }

    /// Found by the property test: a value with a byte outside visible ASCII was
    /// dropped whole, with the hop the proxy had appended to it, so the client was
    /// taken for the proxy itself.
    #[test]
    fn non_ascii_entries_end_the_chain_without_hiding_the_proxys_hop() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let obs_text = |name: &str, value: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                axum::http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_bytes(value.as_bytes()).expect("obs-text is allowed"),
            );
            h
        };
        let h = obs_text("x-forwarded-for", "1.1.1.1, \u{1B164}, 198.51.100.7");
        assert_eq!(
            forwarded_chains(&h).x_forwarded_for,
            Some(vec![ip("198.51.100.7")])
        );
        assert_eq!(
            client_address(ip("10.0.0.2"), &h, &trusted, ForwardedHeader::Any),
            ip("198.51.100.7")
        );
        let h = obs_text("forwarded", "for=\"é\", for=198.51.100.7;proto=https");
        assert_eq!(
            client_address(ip("10.0.0.2"), &h, &trusted, ForwardedHeader::Any),
            ip("198.51.100.7")
        );
    }
}

#[cfg(test)]
mod properties {
    use axum::http::{HeaderName, HeaderValue};
    use proptest::prelude::*;

    use super::*;
    use crate::strategies::tricky_text;

    /// Addresses from a few small ranges, so that trusted ranges and chains overlap.
    fn address() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            (0u8..4, 0u8..4).prop_map(|(a, b)| IpAddr::from([10, 0, a, b])),
            (0u8..4).prop_map(|b| IpAddr::from([198, 51, 100, b])),
            (0u16..4).prop_map(|b| IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, b])),
            // IPv4 as a `[::]` socket or a proxy listening there writes it.
            (0u8..4, 0u8..4)
                .prop_map(|(a, b)| IpAddr::V6(Ipv4Addr::new(10, 0, a, b).to_ipv6_mapped())),
            any::<IpAddr>(),
        ]
    }

    fn trusted() -> impl Strategy<Value = Vec<IpNet>> {
        prop::collection::vec(
            prop_oneof![
                Just("10.0.0.0/8"),
                Just("10.0.1.0/24"),
                Just("198.51.100.2/32"),
                Just("2001:db8::/64"),
                Just("::ffff:10.0.0.0/120"),
                Just("0.0.0.0/0"),
            ]
            .prop_map(|net| net.parse::<IpNet>().expect("net")),
            0..3,
        )
    }

    /// One hop as proxies write it: an address with or without a port, in or out of
    /// brackets and quotes, or junk (`unknown`, an obfuscated name, anything).
    fn node() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => (address(), prop::option::of(any::<u16>()), any::<bool>()).prop_map(|(ip, port, quoted)| {
                let node = match (ip, port) {
                    (IpAddr::V6(ip), Some(port)) => format!("[{ip}]:{port}"),
                    (IpAddr::V6(ip), None) if quoted => format!("[{ip}]"),
                    (ip, Some(port)) => format!("{ip}:{port}"),
                    (ip, None) => ip.to_string(),
                };
                if quoted { format!("\"{node}\"") } else { node }
            }),
            1 => prop_oneof![Just("unknown".to_owned()), Just("_hidden".to_owned()), tricky_text()],
        ]
    }

    /// Header values: `Forwarded` elements (`for=` among other parameters) or
    /// `X-Forwarded-For` lists, several values per header.
    fn headers() -> impl Strategy<Value = HeaderMap> {
        let forwarded = prop::collection::vec(
            (node(), any::<bool>()).prop_map(|(node, proto)| {
                if proto {
                    format!("proto=https;For={node}")
                } else {
                    format!("for={node}")
                }
            }),
            1..4,
        );
        let xff = prop::collection::vec(node(), 1..4);
        prop::collection::vec(
            prop_oneof![
                forwarded.prop_map(|v| ("forwarded", v.join(", "))),
                xff.prop_map(|v| ("x-forwarded-for", v.join(", "))),
            ],
            0..3,
        )
        .prop_map(|values| {
            let mut headers = HeaderMap::new();
            for (name, value) in values {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    headers.append(HeaderName::from_static(name), value);
                }
            }
            headers
        })
    }

    proptest! {
        #[test]
        fn the_client_is_the_peer_or_a_hop_the_headers_name(
            peer in address(),
            trusted in trusted(),
            headers in headers(),
            read in prop_oneof![
                Just(ForwardedHeader::Any),
                Just(ForwardedHeader::Forwarded),
                Just(ForwardedHeader::XForwardedFor),
            ],
        ) {
            crate::fuzzing::check_client_address(peer, &headers, &trusted, read);
        }

        /// Whatever a client writes into the header, a trusted proxy's appended hop
        /// for an untrusted client wins.
        #[test]
        fn a_client_cannot_choose_its_address(
            forged in prop::collection::vec(node(), 0..4),
            real in address(),
            peer in (0u8..4).prop_map(|b| IpAddr::from([10, 0, 0, b])),
        ) {
            let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
            prop_assume!(!is_trusted_proxy(real, &trusted));
            let mut list = forged;
            list.push(real.to_string());
            let mut headers = HeaderMap::new();
            if let Ok(value) = HeaderValue::from_str(&list.join(", ")) {
                headers.insert("x-forwarded-for", value);
                prop_assert_eq!(
                    client_address(peer, &headers, &trusted, ForwardedHeader::Any),
                    real.to_canonical()
                );
            }
        }

        /// Whatever a client writes into the header the proxy does not write, it is
        /// its real address or the proxy's, never one it picked.
        #[test]
        fn a_client_cannot_choose_its_address_with_the_other_header(
            forged in prop::collection::vec(node(), 1..4),
            real in address(),
            peer in (0u8..4).prop_map(|b| IpAddr::from([10, 0, 0, b])),
            proxy_writes_forwarded in any::<bool>(),
        ) {
            let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
            prop_assume!(!is_trusted_proxy(real, &trusted));
            let real = real.to_canonical();
            let (written, forged_name, forged_value) = if proxy_writes_forwarded {
                (format!("for=\"{real}\""), "x-forwarded-for", forged.join(", "))
            } else {
                let elements: Vec<String> = forged.iter().map(|n| format!("for={n}")).collect();
                (real.to_string(), "forwarded", elements.join(", "))
            };
            let mut headers = HeaderMap::new();
            let written_name = if proxy_writes_forwarded { "forwarded" } else { "x-forwarded-for" };
            headers.insert(written_name, HeaderValue::from_str(&written).expect("address"));
            if let Ok(value) = HeaderValue::from_str(&forged_value) {
                headers.insert(forged_name, value);
                let client = client_address(peer, &headers, &trusted, ForwardedHeader::Any);
                prop_assert!(client == real || client == peer, "{client} from {headers:?}");
                // Told which header the proxy writes: exactly the real address.
                let read = if proxy_writes_forwarded {
                    ForwardedHeader::Forwarded
                } else {
                    ForwardedHeader::XForwardedFor
                };
                prop_assert_eq!(client_address(peer, &headers, &trusted, read), real);
            }
        }
    }
}
