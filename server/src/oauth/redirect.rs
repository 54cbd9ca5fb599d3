//! Redirect URIs (OAuth 2.1 §2.3.1, RFC 8252 §7.3): https, or http on a loopback host;
//! never a fragment. Requests must match a registered URI exactly, except that the port
//! of a loopback URI is ignored, because native clients (mcp-remote, Claude Code) pick
//! their callback port at run time.

use std::fmt;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::net::is_loopback_url;

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RedirectUri(Url);

/// How much longer a client's redirect URIs may be as kept (normalised: spaces,
/// quotes and every byte of a non-ASCII character percent-encoded, three bytes
/// each) than as sent: without a bound, a registration within its size limit
/// could be kept, and echoed, at three times it.
pub const MAX_GROWTH: usize = 1024;

/// Each of `raw`, parsed, as long as they grow by at most [`MAX_GROWTH`] in all.
pub fn parse_all(raw: &[String]) -> Result<Vec<RedirectUri>, String> {
    let parsed = raw
        .iter()
        .map(|u| RedirectUri::parse(u))
        .collect::<Result<Vec<_>, _>>()?;
    let sent: usize = raw.iter().map(String::len).sum();
    let kept: usize = parsed.iter().map(|u| u.as_str().len()).sum();
    if kept > sent + MAX_GROWTH {
        return Err(format!(
            "the redirect URIs are {kept} bytes percent-encoded, {sent} as sent: send them \
             encoded (at most {MAX_GROWTH} bytes may be added)"
        ));
    }
    Ok(parsed)
}

impl RedirectUri {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let url = Url::parse(raw).map_err(|_| format!("{raw:?} is not an absolute URL"))?;
        if url.fragment().is_some() || raw.contains('#') {
            return Err(format!("{raw:?} must not contain a fragment"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!("{raw:?} must not contain credentials"));
        }
        match url.scheme() {
            "https" if url.host().is_some() => Ok(RedirectUri(url)),
            "http" if is_loopback_url(&url) => Ok(RedirectUri(url)),
            "http" => Err(format!(
                "{raw:?} uses http on a host that is not loopback; use https, or http://localhost, http://127.0.0.1 or http://[::1]"
            )),
            _ => Err(format!("{raw:?} must use https (or http on a loopback host)")),
        }
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn is_loopback(&self) -> bool {
        is_loopback_url(&self.0)
    }

    /// The host the code will be sent to, for the consent page.
    pub fn host(&self) -> String {
        match self.0.port() {
            Some(port) => format!("{}:{port}", self.0.host_str().unwrap_or("")),
            None => self.0.host_str().unwrap_or("").to_owned(),
        }
    }

    /// Whether a requested URI is allowed by this registered one.
    pub fn allows(&self, requested: &RedirectUri) -> bool {
        if self.is_loopback() && requested.is_loopback() {
            let (mut registered, mut requested) = (self.0.clone(), requested.0.clone());
            // Infallible for http URLs with a host.
            let _ = registered.set_port(None);
            let _ = requested.set_port(None);
            return registered == requested;
        }
        self.0 == requested.0
    }

    /// This URI with the authorization response's parameters appended to its query.
    pub fn with_params(&self, params: &[(&str, &str)]) -> String {
        let mut url = self.0.clone();
        {
            let mut query = url.query_pairs_mut();
            for (name, value) in params {
                query.append_pair(name, value);
            }
        }
        url.to_string()
    }
}

impl TryFrom<String> for RedirectUri {
    type Error = String;
    fn try_from(raw: String) -> Result<Self, String> {
        RedirectUri::parse(&raw)
    }
}

impl From<RedirectUri> for String {
    fn from(uri: RedirectUri) -> String {
        uri.0.into()
    }
}

impl fmt::Debug for RedirectUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedirectUri({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> RedirectUri {
        RedirectUri::parse(s).expect(s)
    }

    #[test]
    fn redirect_uris_may_not_grow_threefold_when_kept() {
        let spaced = format!("https://a.example/{}cb", " ".repeat(2000));
        let refused = parse_all(std::slice::from_ref(&spaced)).expect_err("grows");
        assert!(refused.contains("percent-encoded"), "{refused}");
        // Encoded as sent, the same URI is kept as it came.
        let encoded = format!("https://a.example/{}cb", "%20".repeat(2000));
        let kept = parse_all(std::slice::from_ref(&encoded)).expect("kept");
        assert_eq!(kept[0].as_str(), encoded);
        // A few characters that need encoding are fine.
        assert!(parse_all(&["https://a.example/café cb".to_owned()]).is_ok());
    }

    #[test]
    fn accepts_https_and_loopback_http_only() {
        for ok in [
            "https://claude.ai/api/mcp/auth_callback",
            "http://localhost:8080/oauth/callback",
            "http://127.0.0.1/callback",
            "http://[::1]:3334/cb",
        ] {
            assert!(RedirectUri::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://example.com/cb",
            "https://example.com/cb#frag",
            "javascript:alert(1)",
            "/relative",
            "ftp://example.com/",
            "https://user:pw@example.com/cb",
        ] {
            assert!(RedirectUri::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn matches_exactly_but_ignores_loopback_ports() {
        assert!(uri("https://claude.ai/api/mcp/auth_callback")
            .allows(&uri("https://claude.ai/api/mcp/auth_callback")));
        assert!(!uri("https://claude.ai/api/mcp/auth_callback")
            .allows(&uri("https://claude.ai/api/mcp/auth_callback2")));
        assert!(!uri("https://claude.ai/cb").allows(&uri("https://claude.ai:8443/cb")));
        assert!(uri("http://localhost/callback").allows(&uri("http://localhost:53127/callback")));
        assert!(uri("http://127.0.0.1:1/callback").allows(&uri("http://127.0.0.1:2/callback")));
        assert!(!uri("http://localhost/callback").allows(&uri("http://localhost:5/other")));
        assert!(!uri("http://localhost/callback").allows(&uri("http://127.0.0.1/callback")));
    }

    #[test]
    fn appends_response_parameters_to_an_existing_query() {
        let with = uri("https://app.example/cb?tenant=a")
            .with_params(&[("code", "x y"), ("state", "s&t")]);
        assert_eq!(with, "https://app.example/cb?tenant=a&code=x+y&state=s%26t");
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::strategies::{tricky_text, url};

    fn candidate() -> impl Strategy<Value = String> {
        prop_oneof![4 => url(), 1 => tricky_text()]
    }

    proptest! {
        #[test]
        fn accepts_only_https_or_loopback_http(raw in candidate()) {
            let Ok(uri) = RedirectUri::parse(&raw) else { return Ok(()) };
            let url = Url::parse(&raw).expect("an accepted URI is a URL");
            match url.scheme() {
                "https" => prop_assert!(url.host().is_some()),
                "http" => prop_assert!(uri.is_loopback(), "{raw} is http off loopback"),
                other => prop_assert!(false, "{raw} has scheme {other}"),
            }
            prop_assert!(url.fragment().is_none() && !raw.contains('#'));
            prop_assert!(url.username().is_empty() && url.password().is_none());
        }

        /// What is stored (the serialised form) parses to the same value, and that value
        /// is what requests are matched against.
        #[test]
        fn the_serialised_form_parses_to_the_same_uri(raw in candidate()) {
            let Ok(uri) = RedirectUri::parse(&raw) else { return Ok(()) };
            let again = RedirectUri::parse(uri.as_str()).expect("the serialised form parses");
            prop_assert_eq!(&again, &uri);
            prop_assert_eq!(again.as_str(), uri.as_str());
            let json = serde_json::to_string(&uri).expect("json");
            let stored: RedirectUri = serde_json::from_str(&json).expect("back");
            prop_assert_eq!(&stored, &uri);
            prop_assert!(stored.allows(&uri) && uri.allows(&stored));
        }

        #[test]
        fn allows_is_reflexive_and_symmetric(a in candidate(), b in candidate()) {
            let (Ok(a), Ok(b)) = (RedirectUri::parse(&a), RedirectUri::parse(&b)) else {
                return Ok(());
            };
            prop_assert!(a.allows(&a) && b.allows(&b));
            prop_assert_eq!(a.allows(&b), b.allows(&a));
            if a.allows(&b) && !(a.is_loopback() && b.is_loopback()) {
                prop_assert_eq!(&a, &b, "only loopback URIs match inexactly");
            }
        }

        /// RFC 8252 §7.3: the port of a loopback URI is ignored; any other URI on
        /// another port is another URI.
        #[test]
        fn only_loopback_uris_ignore_the_port(raw in candidate(), port in any::<u16>()) {
            let Ok(uri) = RedirectUri::parse(&raw) else { return Ok(()) };
            let mut moved = Url::parse(uri.as_str()).expect("url");
            prop_assume!(moved.set_port(Some(port)).is_ok());
            let moved = RedirectUri::parse(moved.as_str()).expect("same URI, another port");
            prop_assert_eq!(moved.is_loopback(), uri.is_loopback());
            if uri.is_loopback() {
                prop_assert!(uri.allows(&moved) && moved.allows(&uri));
            } else {
                prop_assert_eq!(uri.allows(&moved), moved == uri);
            }
        }

        #[test]
        fn never_accepts_http_off_loopback(host in crate::strategies::host(), path in "(/[a-z]{0,5}){0,3}") {
            let raw = format!("http://{host}{path}");
            if let Ok(url) = Url::parse(&raw) {
                if !is_loopback_url(&url) {
                    prop_assert!(RedirectUri::parse(&raw).is_err(), "{raw}");
                }
            }
        }

        #[test]
        fn response_parameters_keep_it_a_redirect_uri(raw in candidate(), code in tricky_text(), state in tricky_text()) {
            let Ok(uri) = RedirectUri::parse(&raw) else { return Ok(()) };
            let with = uri.with_params(&[("code", &code), ("state", &state)]);
            let url = Url::parse(&with).expect("still a URL");
            prop_assert!(url.fragment().is_none());
            let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
            let n = pairs.len();
            prop_assert!(n >= 2);
            prop_assert_eq!(&pairs[n - 2], &("code".to_owned(), code));
            prop_assert_eq!(&pairs[n - 1], &("state".to_owned(), state));
        }
    }
}
