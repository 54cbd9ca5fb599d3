//! `POST /oauth/token` (RFC 6749 §3.2) and `POST /oauth/revoke` (RFC 7009). Both take
//! form-encoded bodies and authenticate the client the way it registered.

use axum::{
    body::Bytes,
    extract::State,
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use base64::{engine::general_purpose::STANDARD, Engine};
use serde::Deserialize;

use super::{no_store, OAuthError};
use crate::{
    http::AppState,
    net::media_type,
    oauth::{clients::ClientCredentials, token::TokenParams, ErrorCode},
    telemetry,
};

/// A form body that may carry the client's id and secret.
trait ClientForm {
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
fn client_request<T: serde::de::DeserializeOwned + ClientForm>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(T, ClientCredentials), OAuthError> {
    let params: T = form(headers, body)?;
    let credentials = credentials(headers, params.client_id(), params.client_secret())?;
    Ok((params, credentials))
}

pub async fn token(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let (params, credentials) = client_request::<TokenParams>(&headers, &body)?;
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
struct RevokeParams {
    token: Option<String>,
    #[allow(dead_code)]
    token_type_hint: Option<String>,
    client_id: Option<String>,
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
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let (params, credentials) = client_request::<RevokeParams>(&headers, &body)?;
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

/// Parses an `application/x-www-form-urlencoded` body.
fn form<T: serde::de::DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> Result<T, OAuthError> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| media_type(v) == "application/x-www-form-urlencoded");
    if !is_form {
        return Err(OAuthError::bad_request(
            ErrorCode::InvalidRequest,
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    serde_urlencoded::from_bytes(body).map_err(|e| {
        OAuthError::bad_request(
            ErrorCode::InvalidRequest,
            format!("the form is malformed: {e}"),
        )
    })
}

/// The client's credentials: HTTP Basic (RFC 6749 §2.3.1, with form-encoded id and
/// secret) or the form body. Using both at once is refused.
fn credentials(
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
        let Some(encoded) = value
            .strip_prefix("Basic ")
            .or_else(|| value.strip_prefix("basic "))
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
