//! `POST /oauth/register`: RFC 7591 dynamic client registration.

use axum::{
    body::Bytes,
    extract::State,
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};

use super::{no_store, OAuthError};
use crate::{
    http::AppState,
    oauth::{client::RegistrationRequest, server::RegisterError},
};

pub async fn register(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
    if !is_json {
        return OAuthError::bad_request(
            "invalid_client_metadata",
            "send the metadata as application/json",
        )
        .into_response();
    }
    let request: RegistrationRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return OAuthError::bad_request(
                "invalid_client_metadata",
                format!("the body is not valid client metadata: {e}"),
            )
            .into_response()
        }
    };
    match state.auth.register(request).await {
        Ok(client) => {
            tracing::info!(client_id = %client.client_id, method = client.token_endpoint_auth_method, "client registered");
            let mut response = (StatusCode::CREATED, Json(client)).into_response();
            no_store(response.headers_mut());
            response
        }
        Err(RegisterError::InvalidRedirectUri(m)) => {
            OAuthError::bad_request("invalid_redirect_uri", m).into_response()
        }
        Err(RegisterError::InvalidClientMetadata(m)) => {
            OAuthError::bad_request("invalid_client_metadata", m).into_response()
        }
        Err(RegisterError::Store(e)) => OAuthError::unavailable(&e).into_response(),
    }
}
