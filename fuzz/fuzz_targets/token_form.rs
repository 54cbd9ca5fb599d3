//! The token and revocation endpoints' request parsing: any body, any Content-Type,
//! any Authorization header, and well-formed Basic credentials with any id and secret.
#![no_main]

use arbitrary::Arbitrary;
use base64::{engine::general_purpose::STANDARD, Engine};
use gatehouse::{fuzzing, oauth::clients::ClientCredentials};
use http::{header, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    /// `application/x-www-form-urlencoded`, or `content_type` when false.
    form: bool,
    content_type: Option<&'a [u8]>,
    /// A Basic header built from an id and a secret, else `authorization` raw.
    basic: Option<(&'a str, &'a str)>,
    authorization: Option<&'a [u8]>,
    body: &'a [u8],
}

fn unreserved(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// What both endpoints promise about the credentials they read.
fn check(
    input: &Input,
    headers: &HeaderMap,
    form_id: Option<&str>,
    form_secret: Option<Option<&str>>,
    credentials: &ClientCredentials,
) {
    match credentials {
        ClientCredentials::Basic { client_id, secret } => {
            assert!(headers.contains_key(header::AUTHORIZATION));
            assert!(form_id.is_none_or(|f| f == client_id));
            if let Some(form_secret) = form_secret {
                assert!(form_secret.is_none(), "Basic and client_secret together");
            }
            if let Some((id, plain_secret)) = input.basic {
                if unreserved(id) && unreserved(plain_secret) {
                    assert_eq!((client_id.as_str(), secret.as_str()), (id, plain_secret));
                }
            }
        }
        ClientCredentials::Body { client_id, secret } => {
            assert!(!headers.contains_key(header::AUTHORIZATION));
            assert!(!client_id.is_empty());
            assert_eq!(Some(client_id.as_str()), form_id);
            if let Some(form_secret) = form_secret {
                assert_eq!(secret.as_deref(), form_secret);
            }
        }
        ClientCredentials::Missing => {
            assert!(!headers.contains_key(header::AUTHORIZATION));
            assert!(form_id.is_none_or(str::is_empty));
        }
    }
}

fuzz_target!(|input: Input| {
    let mut headers = HeaderMap::new();
    let content_type = if input.form {
        Some(HeaderValue::from_static(
            "application/x-www-form-urlencoded",
        ))
    } else {
        input
            .content_type
            .and_then(|v| HeaderValue::from_bytes(v).ok())
    };
    if let Some(value) = content_type {
        headers.insert(header::CONTENT_TYPE, value);
    }
    let authorization = match input.basic {
        Some((id, secret)) => {
            let encoded = STANDARD.encode(format!("{id}:{secret}"));
            HeaderValue::from_str(&format!("Basic {encoded}")).ok()
        }
        None => input
            .authorization
            .and_then(|v| HeaderValue::from_bytes(v).ok()),
    };
    if let Some(value) = authorization {
        headers.insert(header::AUTHORIZATION, value);
    }
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';').next().is_some_and(|t| {
                t.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        });

    match fuzzing::token_request(&headers, input.body) {
        Ok((params, credentials)) => {
            assert!(is_form);
            check(
                &input,
                &headers,
                params.client_id.as_deref(),
                Some(params.client_secret.as_deref()),
                &credentials,
            );
        }
        Err(description) => assert!(!description.is_empty()),
    }
    match fuzzing::revoke_request(&headers, input.body) {
        Ok((_token, client_id, credentials)) => {
            assert!(is_form);
            check(&input, &headers, client_id.as_deref(), None, &credentials);
        }
        Err(description) => assert!(!description.is_empty()),
    }
});
