//! `GET /.well-known/oauth-authorization-server` (RFC 8414), also served at
//! `/.well-known/openid-configuration` for clients that only look there. Only what
//! works is advertised, and optional fields are omitted rather than `null` (the
//! TypeScript SDK's schemas reject nulls).

use axum::{extract::State, response::IntoResponse, Json};
use serde_json::json;

use crate::{http::AppState, oauth::client::AuthMethod};

pub async fn authorization_server(State(state): State<AppState>) -> impl IntoResponse {
    let issuer = state.config.public_url.as_str();
    let url = |path: &str| state.config.public_url.join(path);
    let scopes = state.auth.settings().resources.scopes_supported();
    Json(json!({
        "issuer": issuer,
        "authorization_endpoint": url("/oauth/authorize"),
        "token_endpoint": url("/oauth/token"),
        "registration_endpoint": url("/oauth/register"),
        "revocation_endpoint": url("/oauth/revoke"),
        "scopes_supported": scopes,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_methods_supported": AuthMethod::SUPPORTED,
        "revocation_endpoint_auth_methods_supported": AuthMethod::SUPPORTED,
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": true,
        "client_id_metadata_document_supported": true,
        "service_documentation": url("/"),
    }))
}
