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
    net::media_type,
    oauth::{client::RegistrationRequest, ErrorCode},
};

pub async fn register(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| media_type(v) == "application/json");
    if !is_json {
        return Err(OAuthError::bad_request(
            ErrorCode::InvalidClientMetadata,
            "send the metadata as application/json",
        ));
    }
    let request: RegistrationRequest = serde_json::from_slice(&body).map_err(|e| {
        OAuthError::bad_request(
            ErrorCode::InvalidClientMetadata,
            format!("the body is not valid client metadata: {e}"),
        )
    })?;
    let client = state.auth.register(request).await?;
    tracing::info!(client_id = %client.client_id, method = client.token_endpoint_auth_method, "client registered");
    let mut response = (StatusCode::CREATED, Json(client)).into_response();
    no_store(response.headers_mut());
    Ok(response)
}
