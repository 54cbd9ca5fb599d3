//! `RedirectUri::parse` and `allows` on any two strings and a port: what is accepted is
//! https or loopback http, re-serialises to itself, and is matched exactly except for
//! the port of a loopback URI.
#![no_main]

use gatehouse::oauth::redirect::RedirectUri;
use libfuzzer_sys::fuzz_target;
use url::Url;

fuzz_target!(|input: (&str, &str, u16)| {
    let (registered, requested, port) = input;
    let raws = [registered, requested];
    let uris = raws.map(|raw| RedirectUri::parse(raw).ok());
    for (raw, uri) in raws.iter().zip(&uris) {
        let Some(uri) = uri else { continue };
        let url = Url::parse(raw).expect("an accepted URI is a URL");
        assert!(url.scheme() == "https" || (url.scheme() == "http" && uri.is_loopback()));
        assert!(url.fragment().is_none() && url.username().is_empty());
        let again = RedirectUri::parse(uri.as_str()).expect("the serialised form parses");
        assert_eq!(&again, uri);
        assert_eq!(again.as_str(), uri.as_str());
        assert!(uri.allows(uri));
        let _ = uri.host();
        let answer = uri.with_params(&[("code", raw), ("state", raw)]);
        assert!(Url::parse(&answer).is_ok_and(|u| u.fragment().is_none()));

        // Another port: allowed only for a loopback URI (RFC 8252 §7.3).
        let mut moved = url.clone();
        if moved.set_port(Some(port)).is_ok() {
            let moved = RedirectUri::parse(moved.as_str()).expect("same URI, another port");
            assert_eq!(uri.allows(&moved), uri.is_loopback() || moved == *uri);
        }
    }
    if let [Some(registered), Some(requested)] = &uris {
        let allowed = registered.allows(requested);
        assert_eq!(
            allowed,
            requested.allows(registered),
            "matching is symmetric"
        );
        if allowed && !(registered.is_loopback() && requested.is_loopback()) {
            assert_eq!(registered, requested);
        }
        if registered == requested {
            assert!(allowed);
        }
    }
});
