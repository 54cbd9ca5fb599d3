//! `POST /oauth/token` (RFC 6749 §3.2) and `POST /oauth/revoke` (RFC 7009). Both take
//! form-encoded bodies and authenticate the client the way it registered.

use axum::{
    extract::State,
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use base64::{engine::general_purpose::STANDARD, Engine};
use serde::Deserialize;

use super::{no_store, OAuthBody, OAuthError};
use crate::{
    http::{address::ClientAddress, AppState},
    net::content_type_is,
    oauth::{clients::ClientCredentials, token::TokenParams, ErrorCode},
    telemetry,
};

/// A form body that may carry the client's id and secret.
pub(crate) trait ClientForm {
    fn client_id(&self) -> Option<&str>;
    fn client_secret(&self) -> Option<&str>;
}

impl ClientForm for TokenParams {
    fn client_id(&self) -> Option<&str> {
        self.client_id.as_deref()
    }
    fn client_secret(&self) -> Option<&str> {
        self.client_secret.as_deref()
    }
}

/// The form and the client's credentials, as both endpoints read them.
pub(crate) fn client_request<T: serde::de::DeserializeOwned + ClientForm>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(T, ClientCredentials), OAuthError> {
    let params: T = form(headers, body)?;
    let credentials = credentials(headers, params.client_id(), params.client_secret())?;
    Ok((params, credentials))
}

pub async fn token(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    headers: HeaderMap,
    OAuthBody(body): OAuthBody,
) -> Result<Response, OAuthError> {
    let (params, credentials) = client_request::<TokenParams>(&headers, &body)?;
    if let Some(refused) = document_fetch(&state, address, &credentials) {
        return Ok(refused);
    }
    let grant_type = match params.grant_type.as_deref() {
        Some(t @ ("authorization_code" | "refresh_token")) => t.to_owned(),
        _ => "other".to_owned(),
    };
    let outcome = state.auth.token(&credentials, params).await;
    let label = match &outcome {
        Ok(_) => "ok",
        Err(e) => e.code().as_str(),
    };
    metrics::counter!(telemetry::TOKEN_GRANTS, "grant_type" => grant_type, "outcome" => label)
        .increment(1);
    let mut response = Json(outcome?).into_response();
    no_store(response.headers_mut());
    Ok(response)
}

#[derive(Deserialize)]
pub(crate) struct RevokeParams {
    pub(crate) token: Option<String>,
    #[allow(dead_code)]
    token_type_hint: Option<String>,
    pub(crate) client_id: Option<String>,
    client_secret: Option<String>,
}

impl ClientForm for RevokeParams {
    fn client_id(&self) -> Option<&str> {
        self.client_id.as_deref()
    }
    fn client_secret(&self) -> Option<&str> {
        self.client_secret.as_deref()
    }
}

pub async fn revoke(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    headers: HeaderMap,
    OAuthBody(body): OAuthBody,
) -> Result<Response, OAuthError> {
    let (params, credentials) = client_request::<RevokeParams>(&headers, &body)?;
    if let Some(refused) = document_fetch(&state, address, &credentials) {
        return Ok(refused);
    }
    let token = params
        .token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| OAuthError::bad_request(ErrorCode::InvalidRequest, "token is required"))?;
    state.auth.revoke(&credentials, &token).await?;
    // RFC 7009 §2.2: 200 whether or not the token was valid.
    let mut response = StatusCode::OK.into_response();
    no_store(response.headers_mut());
    Ok(response)
}

/// The refusal of a client whose metadata document would be fetched, past its
/// address's share of such fetches: `503 temporarily_unavailable` with
/// `Retry-After`, which clients retry (as for a document that cannot be had just
/// now), never `invalid_client`.
fn document_fetch(
    state: &AppState,
    address: std::net::IpAddr,
    credentials: &ClientCredentials,
) -> Option<Response> {
    let wait = super::count_document_fetch(state, address, credentials.client_id()).err()?;
    let mut refused = OAuthError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::TemporarilyUnavailable,
        format!("too many new clients from this address; try again in {wait} second(s)"),
    )
    .into_response();
    refused
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(wait));
    Some(refused)
}

/// Parses an `application/x-www-form-urlencoded` body.
pub(crate) fn form<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, OAuthError> {
    if !content_type_is(headers, "application/x-www-form-urlencoded") {
        return Err(OAuthError::bad_request(
            ErrorCode::InvalidRequest,
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    super::oauth_params(body).map_err(|e| {
        OAuthError::bad_request(
            ErrorCode::InvalidRequest,
            format!("the form is malformed: {e}"),
        )
    })
}

/// The client's credentials: HTTP Basic (RFC 6749 §2.3.1, with form-encoded id and
/// secret) or the form body. Using both at once is refused.
pub(crate) fn credentials(
    headers: &HeaderMap,
    body_id: Option<&str>,
    body_secret: Option<&str>,
) -> Result<ClientCredentials, OAuthError> {
    let basic_refused = |description: &str| OAuthError {
        basic_challenge: true,
        ..OAuthError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::InvalidClient,
            description,
        )
    };
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value
            .to_str()
            .map_err(|_| basic_refused("malformed Authorization header"))?;
        // The scheme name is case-insensitive (RFC 9110 §11.1).
        let Some(encoded) = value
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
            .map(|(_, encoded)| encoded)
        else {
            return Err(basic_refused(
                "only HTTP Basic client authentication is supported here",
            ));
        };
        if body_secret.is_some() {
            return Err(OAuthError::bad_request(
                ErrorCode::InvalidRequest,
                "use one client authentication method, not Basic and client_secret together",
            ));
        }
        let decoded = STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .ok_or_else(|| basic_refused("malformed Basic credentials"))?;
        let (id, secret) = decoded
            .split_once(':')
            .ok_or_else(|| basic_refused("malformed Basic credentials"))?;
        let decode = |s: &str| {
            form_urlencoded::parse(format!("v={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let client_id = decode(id);
        if body_id.is_some_and(|b| b != client_id) {
            return Err(basic_refused(
                "client_id in the body differs from the Basic credentials",
            ));
        }
        return Ok(ClientCredentials::Basic {
            client_id,
            secret: decode(secret),
        });
    }
    Ok(match body_id {
        Some(client_id) if !client_id.is_empty() => ClientCredentials::Body {
            client_id: client_id.to_owned(),
            secret: body_secret.map(str::to_owned),
        },
        _ => ClientCredentials::Missing,
    })
}

#[cfg(test)]
mod properties {
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    use super::*;
    use crate::strategies::tricky_text;

    const FORM: &str = "application/x-www-form-urlencoded";

    fn headers(content_type: Option<&[u8]>, authorization: Option<&[u8]>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            (header::CONTENT_TYPE, content_type),
            (header::AUTHORIZATION, authorization),
        ] {
            if let Some(value) = value.and_then(|v| HeaderValue::from_bytes(v).ok()) {
                headers.insert(name, value);
            }
        }
        headers
    }

    fn encode(s: &str) -> String {
        form_urlencoded::byte_serialize(s.as_bytes()).collect()
    }

    /// A Content-Type: the form type in various spellings, or anything.
    fn content_type() -> impl Strategy<Value = Option<Vec<u8>>> {
        prop::option::of(prop_oneof![
            Just(FORM.as_bytes().to_vec()),
            Just(b"Application/X-WWW-Form-URLEncoded; charset=utf-8".to_vec()),
            Just(b"application/json".to_vec()),
            any::<Vec<u8>>(),
        ])
    }

    /// An Authorization value: Basic with any base64 payload, another scheme, or bytes.
    fn authorization() -> impl Strategy<Value = Option<Vec<u8>>> {
        prop::option::of(prop_oneof![
            any::<Vec<u8>>()
                .prop_map(|payload| format!("Basic {}", STANDARD.encode(payload)).into_bytes()),
            "(Basic|basic|Bearer|BASIC) ?[A-Za-z0-9+/=: ]{0,40}".prop_map(String::into_bytes),
            any::<Vec<u8>>(),
        ])
    }

    /// A form body: pairs of known and unknown fields, or any bytes.
    fn body() -> impl Strategy<Value = Vec<u8>> {
        let field = prop_oneof![
            Just("client_id"),
            Just("client_secret"),
            Just("grant_type"),
            Just("token"),
            Just("scope"),
            Just("x"),
        ];
        prop_oneof![
            prop::collection::vec((field, tricky_text()), 0..5).prop_map(|pairs| {
                pairs
                    .iter()
                    .map(|(k, v)| format!("{k}={}", encode(v)))
                    .collect::<Vec<_>>()
                    .join("&")
                    .into_bytes()
            }),
            any::<Vec<u8>>(),
        ]
    }

    /// The rules both endpoints keep, given the form's client fields.
    fn check(
        headers: &HeaderMap,
        form_id: Option<&str>,
        form_secret: Option<Option<&str>>,
        credentials: &ClientCredentials,
    ) -> Result<(), TestCaseError> {
        let basic = headers.contains_key(header::AUTHORIZATION);
        match credentials {
            ClientCredentials::Basic { client_id, .. } => {
                prop_assert!(basic);
                prop_assert!(form_id.is_none_or(|f| f == client_id));
                prop_assert!(form_secret.is_none_or(|s| s.is_none()), "never both");
            }
            ClientCredentials::Body { client_id, secret } => {
                prop_assert!(!basic);
                prop_assert!(!client_id.is_empty());
                prop_assert_eq!(Some(client_id.as_str()), form_id);
                if let Some(form_secret) = form_secret {
                    prop_assert_eq!(secret.as_deref(), form_secret);
                }
            }
            ClientCredentials::Missing => {
                prop_assert!(!basic);
                prop_assert!(form_id.is_none_or(str::is_empty));
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn token_and_revoke_requests_never_panic_and_keep_the_credential_rules(
            content_type in content_type(),
            authorization in authorization(),
            body in body(),
        ) {
            let headers = headers(content_type.as_deref(), authorization.as_deref());
            let is_form = content_type_is(&headers, FORM);
            match client_request::<TokenParams>(&headers, &body) {
                Ok((params, credentials)) => {
                    prop_assert!(is_form);
                    check(
                        &headers,
                        params.client_id.as_deref(),
                        Some(params.client_secret.as_deref()),
                        &credentials,
                    )?;
                }
                Err(e) => prop_assert!(e.status.is_client_error() && !e.description.is_empty()),
            }
            match client_request::<RevokeParams>(&headers, &body) {
                Ok((params, credentials)) => {
                    prop_assert!(is_form);
                    check(&headers, params.client_id.as_deref(), None, &credentials)?;
                }
                Err(e) => prop_assert!(e.status.is_client_error() && !e.description.is_empty()),
            }
        }

        /// RFC 6749 §2.3.1: id and secret are form-encoded, then joined by a colon and
        /// base64-encoded; any id and secret survive the trip.
        #[test]
        fn basic_credentials_round_trip(id in tricky_text(), secret in tricky_text()) {
            let value = format!("Basic {}", STANDARD.encode(format!("{}:{}", encode(&id), encode(&secret))));
            let headers = headers(Some(FORM.as_bytes()), Some(value.as_bytes()));
            match credentials(&headers, None, None) {
                Ok(ClientCredentials::Basic { client_id, secret: read }) => {
                    prop_assert_eq!(client_id, id);
                    prop_assert_eq!(read, secret);
                }
                _ => prop_assert!(false, "refused {:?}", value),
            }
        }

        #[test]
        fn form_fields_round_trip(
            id in prop::option::of(tricky_text()),
            secret in prop::option::of(tricky_text()),
            code in prop::option::of(tricky_text()),
        ) {
            let pairs: Vec<String> = [("client_id", &id), ("client_secret", &secret), ("code", &code)]
                .into_iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
                .collect();
            let headers = headers(Some(FORM.as_bytes()), None);
            let Ok(params) = form::<TokenParams>(&headers, pairs.join("&").as_bytes()) else {
                return Err(TestCaseError::fail("a well-formed form was refused"));
            };
            // A field sent without a value reads as omitted (RFC 6749 §3.1).
            let sent = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
            prop_assert_eq!(&params.client_id, &sent(&id));
            prop_assert_eq!(&params.client_secret, &sent(&secret));
            prop_assert_eq!(&params.code, &sent(&code));
        }
    }
}
