//! Which `Host`s and browser `Origin`s may reach an MCP endpoint: the guard's first two
//! checks, and the only place they are made (rmcp's own checks are turned off, so the
//! direct path and rmcp's path cannot disagree).

use axum::http::{header, uri::Authority, HeaderMap, Uri};

use crate::{
    config::Config,
    net::{normalise_host, AllowedHost, Origin},
};

/// Why a request was refused before its token was looked at.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `Host` is missing or not an authority.
    MalformedHost,
    /// DNS-rebinding protection: a `Host` that is not ours.
    HostNotAllowed,
    OriginNotAllowed,
}

/// `Host` and `Origin` policy. Allowed hosts: loopback names, the public URL's host,
/// and `--allowed-host`. Allowed origins: the public URL's origin, loopback origins on
/// any port (local tools such as the MCP Inspector), and `--allowed-origin`. Requests
/// without an `Origin` (non-browser clients) pass.
#[derive(Clone, Debug)]
pub struct HostPolicy {
    hosts: Vec<AllowedHost>,
    origins: Vec<Origin>,
}

impl HostPolicy {
    pub fn new(config: &Config) -> Self {
        let mut hosts: Vec<AllowedHost> = ["localhost", "127.0.0.1", "[::1]"]
            .into_iter()
            .filter_map(|h| AllowedHost::parse(h).ok())
            .collect();
        if let Some(host) = url::Url::parse(config.public_url.as_str())
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
        {
            hosts.extend(AllowedHost::parse(&host).ok());
        }
        hosts.extend(config.allowed_hosts.iter().cloned());
        let mut origins: Vec<Origin> = Origin::parse(config.public_url.as_str())
            .into_iter()
            .collect();
        origins.extend(config.allowed_origins.iter().cloned());
        HostPolicy { hosts, origins }
    }

    /// The `Host` check, made first so that a rebound name learns nothing, not even
    /// whether a token is needed; then the `Origin` check.
    pub fn check(&self, uri: &Uri, headers: &HeaderMap) -> Result<(), Refusal> {
        let Ok(Some(authority)) = requested_authority(uri, headers) else {
            return Err(Refusal::MalformedHost);
        };
        if !self.allows_authority(&authority) {
            return Err(Refusal::HostNotAllowed);
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let allowed = origin
                .to_str()
                .ok()
                .and_then(|o| Origin::parse(o).ok())
                .is_some_and(|o| self.allows_origin(&o));
            if !allowed {
                return Err(Refusal::OriginNotAllowed);
            }
        }
        Ok(())
    }

    fn allows_authority(&self, authority: &Authority) -> bool {
        let host = normalise_host(authority.host());
        let port = authority.port_u16();
        self.hosts.iter().any(|a| a.matches(&host, port))
    }

    /// The `Host` check alone, for the pages, the owner's sign-in and consent: a
    /// rebound name must not reach them either (an instance bound to loopback would
    /// take sign-in attempts, and then set a session, for another site's name). A
    /// request naming no authority at all (no browser sends one) passes. Not their
    /// `Origin`, which Gatehouse's own forms send as `null`.
    pub fn allows_host(&self, uri: &Uri, headers: &HeaderMap) -> bool {
        match requested_authority(uri, headers) {
            Ok(Some(authority)) => self.allows_authority(&authority),
            Ok(None) => true,
            Err(()) => false,
        }
    }

    pub fn allows_origin(&self, origin: &Origin) -> bool {
        origin.is_loopback() || self.origins.contains(origin)
    }
}

/// The authority a request names: its `Host`, else the URI's (HTTP/2's
/// `:authority`, which hyper does not copy into `Host`); `None` when it names none,
/// `Err` when its `Host` is not an authority.
fn requested_authority(uri: &Uri, headers: &HeaderMap) -> Result<Option<Authority>, ()> {
    match headers.get(header::HOST) {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.parse::<Authority>().ok())
            .map(Some)
            .ok_or(()),
        None => Ok(uri.authority().cloned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    pub(super) fn policy() -> HostPolicy {
        crate::fuzzing::example_host_policy()
    }

    fn check(host: Option<&str>, origin: Option<&str>) -> Result<(), Refusal> {
        let mut headers = HeaderMap::new();
        if let Some(host) = host {
            headers.insert(header::HOST, HeaderValue::from_str(host).expect("header"));
        }
        if let Some(origin) = origin {
            headers.insert(
                header::ORIGIN,
                HeaderValue::from_str(origin).expect("header"),
            );
        }
        policy().check(&Uri::from_static("/mcp"), &headers)
    }

    #[test]
    fn hosts() {
        for ok in [
            "gate.example.com",
            "GATE.example.com:443",
            "localhost:3000",
            "127.0.0.1",
            "[::1]:80",
            "alias.example.com:8443",
            // The same name, fully qualified (a browser sends what was typed).
            "gate.example.com.",
            "localhost.:3000",
        ] {
            assert_eq!(check(Some(ok), None), Ok(()), "{ok}");
        }
        for bad in [
            "evil.example",
            "alias.example.com",
            "gate.example.com.evil.example",
            "gate.example.com..",
            "gate.example.com.evil.example.",
        ] {
            assert_eq!(
                check(Some(bad), None),
                Err(Refusal::HostNotAllowed),
                "{bad}"
            );
        }
        assert_eq!(check(None, None), Err(Refusal::MalformedHost));
        assert_eq!(check(Some("a b"), None), Err(Refusal::MalformedHost));
    }

    #[test]
    fn origins() {
        for ok in [
            "https://gate.example.com",
            "http://localhost:6274",
            "http://127.0.0.1:1234",
            "http://127.0.0.2:1",
            "http://[::1]:80",
            "https://app.example.org",
        ] {
            assert_eq!(check(Some("gate.example.com"), Some(ok)), Ok(()), "{ok}");
        }
        for bad in [
            "https://evil.example",
            "null",
            "https://gate.example.com.evil.example",
            "http://gate.example.com",
        ] {
            assert_eq!(
                check(Some("gate.example.com"), Some(bad)),
                Err(Refusal::OriginNotAllowed),
                "{bad}"
            );
        }
    }
}

#[cfg(test)]
mod properties {
    use axum::http::{uri::Authority, HeaderValue};
    use proptest::prelude::*;

    use super::*;
    use crate::strategies::{host, url};

    /// What [`tests::policy`] serves: loopback, its public host, and one alias on one port.
    fn ours(host: &str, port: Option<u16>) -> bool {
        matches!(host, "localhost" | "127.0.0.1" | "::1" | "gate.example.com")
            || (host == "alias.example.com" && port == Some(8443))
    }

    fn host_header() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            (
                prop_oneof![
                    host(),
                    Just("gate.example.com".to_owned()),
                    Just("GATE.example.com".to_owned()),
                    Just("alias.example.com".to_owned()),
                ],
                prop::option::of(prop_oneof![Just(8443u16), any::<u16>()]),
            )
                .prop_map(|(host, port)| match port {
                    Some(port) => format!("{host}:{port}").into_bytes(),
                    None => host.into_bytes(),
                }),
            any::<Vec<u8>>(),
        ]
    }

    fn origin_header() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"https://gate.example.com".to_vec()),
            Just(b"https://app.example.org".to_vec()),
            url().prop_map(String::into_bytes),
            any::<Vec<u8>>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn only_our_hosts_and_allowed_origins_pass(
            host in prop::option::of(host_header()),
            origin in prop::option::of(origin_header()),
        ) {
            let policy = tests::policy();
            let mut headers = HeaderMap::new();
            if let Some(value) = host.and_then(|h| HeaderValue::from_bytes(&h).ok()) {
                headers.insert(header::HOST, value);
            }
            if let Some(value) = origin.and_then(|o| HeaderValue::from_bytes(&o).ok()) {
                headers.insert(header::ORIGIN, value);
            }
            let verdict = policy.check(&Uri::from_static("/mcp"), &headers);
            let authority = headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<Authority>().ok());
            let Some(authority) = authority else {
                prop_assert_eq!(verdict, Err(Refusal::MalformedHost));
                return Ok(());
            };
            let allowed_host = ours(&normalise_host(authority.host()), authority.port_u16());
            prop_assert_eq!(verdict != Err(Refusal::HostNotAllowed), allowed_host);
            if !allowed_host {
                return Ok(());
            }
            let origin_ok = headers.get(header::ORIGIN).is_none_or(|o| {
                o.to_str()
                    .ok()
                    .and_then(|o| Origin::parse(o).ok())
                    .is_some_and(|o| {
                        o.is_loopback()
                            || ["https://gate.example.com", "https://app.example.org"]
                                .contains(&o.as_str())
                    })
            });
            prop_assert_eq!(verdict, if origin_ok { Ok(()) } else { Err(Refusal::OriginNotAllowed) });
        }
    }
}
