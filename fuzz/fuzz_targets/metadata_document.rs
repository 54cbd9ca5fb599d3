//! Client-ID metadata documents: any `client_id` through `document_url`, any body
//! through `client_from_document` (with its `client_id` set to the URL when asked, so
//! the fuzzer gets past that check).
#![no_main]

use arbitrary::Arbitrary;
use gatehouse::oauth::{
    client::{AuthMethod, ClientKind, MAX_CLIENT_NAME, MAX_REDIRECT_URIS},
    metadata_document::{client_from_document, document_url, MAX_URL_LEN},
    scope::ScopeSet,
};
use libfuzzer_sys::fuzz_target;
use url::Url;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    client_id: &'a str,
    allow_loopback_http: bool,
    body: &'a [u8],
    claim_the_url: bool,
}

fuzz_target!(|input: Input| {
    let known = ScopeSet::parse("read:articles write:articles").expect("scopes");
    let judged = document_url(input.client_id, input.allow_loopback_http);
    let looks_like_url = input.client_id.starts_with("https://")
        || (input.allow_loopback_http && input.client_id.starts_with("http://"));
    assert_eq!(judged.is_some(), looks_like_url);
    let url = match judged {
        Some(Ok(url)) => {
            assert_eq!(url.as_str(), input.client_id, "normal form only");
            assert!(input.client_id.len() <= MAX_URL_LEN);
            assert!(url.scheme() == "https" || input.allow_loopback_http);
            assert!(url.fragment().is_none() && url.username().is_empty());
            assert!(url.path() != "/" && !url.path().is_empty());
            url
        }
        _ => Url::parse("https://client.example/doc").expect("url"),
    };

    let mut body = input.body.to_vec();
    if input.claim_the_url {
        if let Ok(serde_json::Value::Object(mut doc)) = serde_json::from_slice(&body) {
            doc.insert("client_id".into(), url.as_str().into());
            body = serde_json::to_vec(&doc).expect("json");
        }
    }
    let Ok(client) = client_from_document(&url, &body, &known, 7) else {
        return;
    };
    assert_eq!(client.client_id.as_str(), url.as_str());
    assert_eq!(client.kind, ClientKind::MetadataDocument);
    assert_eq!(client.auth_method, AuthMethod::None);
    assert!(client.secret_hash.is_none());
    assert!(!client.redirect_uris.is_empty() && client.redirect_uris.len() <= MAX_REDIRECT_URIS);
    if let Some(scope) = &client.scope {
        assert!(!scope.is_empty() && scope.is_subset_of(&known));
    }
    if let Some(name) = &client.client_name {
        assert!(!name.is_empty() && name.chars().count() <= MAX_CLIENT_NAME);
        assert!(!name.chars().any(char::is_control));
    }
});
