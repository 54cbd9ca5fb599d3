//! Small network vocabulary used across layers, each rule in one place: what counts as
//! a loopback host, how an allowed browser origin and an allowed `Host` are parsed and
//! matched, and how a `Content-Type` is read.

use std::fmt;

use url::{Host, Url};

/// Whether `host` is a loopback host: `localhost`, `127.0.0.0/8` or `::1`.
pub fn is_loopback_host(host: &Host<&str>) -> bool {
    match host {
        Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        Host::Ipv4(ip) => ip.is_loopback(),
        Host::Ipv6(ip) => ip.is_loopback(),
    }
}

/// Whether the URL's host is a loopback host.
pub fn is_loopback_url(url: &Url) -> bool {
    url.host().is_some_and(|h| is_loopback_host(&h))
}

/// The media type of a `Content-Type` value (`application/json; charset=utf-8` →
/// `application/json`), lower-cased.
pub fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Whether a request's or answer's `Content-Type` names the media type `essence`
/// (lower case), whatever its parameters and case; without allocating.
pub fn content_type_is(headers: &axum::http::HeaderMap, essence: &str) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(essence))
}

/// A browser origin (RFC 6454): scheme, host and port, serialised the way browsers
/// send it in `Origin`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Origin(String);

impl Origin {
    /// Parses an origin as a browser sends it, or as an operator writes it (a trailing
    /// slash is tolerated). Anything with a path, query, credentials or another
    /// scheme than http(s) is refused.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let trimmed = raw.trim().trim_end_matches('/');
        let url = Url::parse(trimmed).map_err(|_| format!("{raw:?} is not an origin"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(format!("{raw:?} is not an http or https origin"));
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "{raw:?} has a path; an origin is scheme://host[:port] only"
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!("{raw:?} carries credentials"));
        }
        Ok(Origin(url.origin().ascii_serialization()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_loopback(&self) -> bool {
        Url::parse(&self.0).is_ok_and(|u| is_loopback_url(&u))
    }
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Origin({})", self.0)
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An allowed `Host`: a name, and a port when the entry names one (then only that
/// port matches).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedHost {
    host: String,
    port: Option<u16>,
}

impl AllowedHost {
    pub fn parse(entry: &str) -> Result<Self, String> {
        let trimmed = entry.trim();
        let authority = trimmed
            .parse::<http::uri::Authority>()
            .map_err(|_| format!("{entry:?} is not a host or host:port"))?;
        let after_brackets = trimmed.rsplit_once(']').map_or(trimmed, |(_, rest)| rest);
        let bad_port = after_brackets.contains(':') && authority.port_u16().is_none();
        if trimmed.contains('@') || authority.host().is_empty() || bad_port {
            return Err(format!("{entry:?} is not a host or host:port"));
        }
        Ok(AllowedHost {
            host: normalise_host(authority.host()),
            port: authority.port_u16(),
        })
    }

    /// Whether a request's `Host` (already split) matches.
    pub fn matches(&self, host: &str, port: Option<u16>) -> bool {
        self.host == host && self.port.is_none_or(|p| Some(p) == port)
    }
}

/// A `Host` name as compared: lower case, IPv6 without brackets, and without the
/// one final dot of a fully qualified name (`gate.example.com.` is the same name).
pub fn normalise_host(host: &str) -> String {
    let host = host.trim_matches(['[', ']']);
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for ok in ["http://localhost:1", "http://127.0.0.2", "http://[::1]:8"] {
            assert!(is_loopback_url(&Url::parse(ok).expect(ok)), "{ok}");
        }
        for bad in ["http://localhost.evil", "http://10.0.0.1", "http://[::2]"] {
            assert!(!is_loopback_url(&Url::parse(bad).expect(bad)), "{bad}");
        }
    }

    #[test]
    fn origins_are_scheme_host_and_port_only() {
        assert_eq!(
            Origin::parse("HTTPS://App.Example.org/")
                .expect("origin")
                .as_str(),
            "https://app.example.org"
        );
        assert_eq!(
            Origin::parse("https://app.example.org:443")
                .expect("origin")
                .as_str(),
            "https://app.example.org"
        );
        for bad in [
            "app.example.org",
            "https://app.example.org/path",
            "ftp://app.example.org",
            "https://user@app.example.org",
            "null",
            "",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad}");
        }
        assert!(Origin::parse("http://127.0.0.2:9")
            .expect("o")
            .is_loopback());
    }

    #[test]
    fn allowed_hosts() {
        let any_port = AllowedHost::parse("Gate.Example.com").expect("host");
        assert!(any_port.matches("gate.example.com", Some(8443)));
        let one_port = AllowedHost::parse("gate.example.com:8443").expect("host");
        assert!(one_port.matches("gate.example.com", Some(8443)));
        assert!(!one_port.matches("gate.example.com", None));
        assert!(AllowedHost::parse("[::1]:3000")
            .expect("v6")
            .matches("::1", Some(3000)));
        for bad in ["", "a b", "user@host", "host:port", "https://x/"] {
            assert!(AllowedHost::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn media_types() {
        assert_eq!(
            media_type("Application/JSON; charset=utf-8"),
            "application/json"
        );
        assert_eq!(media_type(""), "");
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::strategies::{host, tricky_text, url};

    proptest! {
        /// An origin is `scheme://host[:port]` as browsers send it, and parsing that
        /// again gives the same origin.
        #[test]
        fn origins_are_canonical_and_idempotent(
            raw in prop_oneof![url(), tricky_text(), (url(), " {0,2}", "/?").prop_map(|(u, s, slash)| format!("{s}{u}{slash}"))]
        ) {
            let Ok(origin) = Origin::parse(&raw) else { return Ok(()) };
            let text = origin.as_str();
            let rest = text
                .strip_prefix("https://")
                .or_else(|| text.strip_prefix("http://"));
            prop_assert!(rest.is_some_and(|r| !r.is_empty() && !r.contains('/') && !r.contains('@')), "{}", text);
            prop_assert_eq!(text, text.to_ascii_lowercase());
            prop_assert_eq!(Origin::parse(text), Ok(origin.clone()));
            prop_assert_eq!(Origin::parse(&format!("{text}/")), Ok(origin.clone()));
            let url = Url::parse(text).expect("an origin is a URL");
            prop_assert_eq!(origin.is_loopback(), is_loopback_url(&url));
        }

        /// An entry matches its own host (in any case), on its own port, or on any
        /// port when it names none; never another name.
        #[test]
        fn allowed_hosts_match_their_host_and_port(
            name in host(),
            port in prop::option::of(any::<u16>()),
            asked in prop::option::of(any::<u16>()),
            other in host(),
        ) {
            let entry = match port {
                Some(port) => format!("{name}:{port}"),
                None => name.clone(),
            };
            let Ok(allowed) = AllowedHost::parse(&entry) else { return Ok(()) };
            let normal = normalise_host(&name);
            prop_assert!(allowed.matches(&normal, port.or(asked)));
            prop_assert_eq!(allowed.matches(&normal, asked), port.is_none() || port == asked);
            if normalise_host(&other) != normal {
                prop_assert!(!allowed.matches(&normalise_host(&other), asked));
            }
            prop_assert_eq!(AllowedHost::parse(&entry.to_ascii_uppercase()), Ok(allowed));
        }

        #[test]
        fn allowed_host_entries_of_any_text_never_panic(raw in prop_oneof![tricky_text(), url(), "[a-z:\\[\\]0-9@.]{0,20}"]) {
            if let Ok(allowed) = AllowedHost::parse(&raw) {
                prop_assert!(!raw.contains('@'));
                let authority: http::uri::Authority = raw.trim().parse().expect("an authority");
                prop_assert!(allowed.matches(&normalise_host(authority.host()), authority.port_u16()));
            }
        }
    }
}
