//! The guard's answers: JSON-RPC error bodies with the right status, and the RFC 6750
//! challenges that send clients to a resource's metadata (401) or ask them to step up
//! (403 `insufficient_scope`).

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde_json::json;

use crate::{oauth::scope::ScopeSet, resource::Resource, store::StoreError};

/// JSON-RPC error codes the guard uses.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const INTERNAL_ERROR: i64 = -32603;
    /// Implementation-defined: authorization failed (401/403).
    pub const UNAUTHORIZED: i64 = -32001;
    /// 2026-07-28 (SEP-2243): `Mcp-Method`/`Mcp-Name` disagree with the body.
    pub const HEADER_MISMATCH: i64 = -32020;
}

/// A JSON-RPC error body with an HTTP status.
pub fn rpc_error(status: StatusCode, code: i64, message: &str) -> Response {
    error_answer(status, code, message, serde_json::Value::Null)
}

fn error_answer(status: StatusCode, code: i64, message: &str, id: serde_json::Value) -> Response {
    (
        status,
        Json(json!({ "jsonrpc": "2.0", "error": { "code": code, "message": message }, "id": id })),
    )
        .into_response()
}

/// A JSON-RPC error answering the request in `body`, with its `id` when it has one.
pub fn rpc_error_to(status: StatusCode, code: i64, message: &str, body: &[u8]) -> Response {
    error_answer(status, code, message, request_id(body))
}

/// `error` (with its `data`) answering the request in `body`, as 200 with a JSON
/// body: a refusal that an MCP client shows as the call's error.
pub fn error_data_to(error: &rmcp::ErrorData, body: &[u8]) -> Response {
    Json(json!({ "jsonrpc": "2.0", "error": error, "id": request_id(body) })).into_response()
}

/// Whether `id` is one rmcp takes a request by (a string, or an integer, also
/// written as a whole float below 2^53): with another, or none, nothing runs.
pub fn is_request_id(id: &serde_json::Value) -> bool {
    id.is_string()
        || id.as_i64().is_some()
        || id
            .as_f64()
            .is_some_and(|f| f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0)
}

/// The `id` of the request in `body`, or null.
pub fn request_id(body: &[u8]) -> serde_json::Value {
    #[derive(serde::Deserialize)]
    struct Id<'a> {
        #[serde(borrow)]
        id: Option<&'a serde_json::value::RawValue>,
    }
    serde_json::from_slice::<Id>(body)
        .ok()
        .and_then(|request| request.id)
        .and_then(|raw| serde_json::from_str::<serde_json::Value>(raw.get()).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// The absolute URL of a resource's metadata (RFC 9728 §3.1).
fn metadata_url(public_url: &str, resource: &Resource) -> String {
    format!("{public_url}{}", resource.metadata_path())
}

fn with_challenge(mut response: Response, challenge: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// RFC 6750 §3 and RFC 9728 §5.1: 401 naming the metadata and the baseline scope
/// (without one, some clients request every scope).
pub fn unauthorized(public_url: &str, resource: &Resource, invalid: Option<&str>) -> Response {
    let mut challenge = String::from("Bearer ");
    if let Some(description) = invalid {
        challenge.push_str(&format!(
            "error=\"invalid_token\", error_description=\"{description}\", "
        ));
    }
    challenge.push_str(&format!(
        "resource_metadata=\"{}\", scope=\"{}\"",
        metadata_url(public_url, resource),
        resource.baseline()
    ));
    let response = rpc_error(
        StatusCode::UNAUTHORIZED,
        code::UNAUTHORIZED,
        invalid.unwrap_or(
            "authorization required: send a bearer token from this server's authorization server",
        ),
    );
    with_challenge(response, &challenge)
}

/// RFC 6750 §3.1: 403 with every scope the call needs, so clients step up.
///
/// The body answers the request in `body` by its id.
pub fn insufficient_scope(
    public_url: &str,
    resource: &Resource,
    wanted: &ScopeSet,
    body: &[u8],
) -> Response {
    let challenge = format!(
        "Bearer error=\"insufficient_scope\", scope=\"{wanted}\", resource_metadata=\"{}\"",
        metadata_url(public_url, resource)
    );
    let response = rpc_error_to(
        StatusCode::FORBIDDEN,
        code::UNAUTHORIZED,
        &format!("this call needs the scopes {wanted}; authorize again to grant them"),
        body,
    );
    with_challenge(response, &challenge)
}

/// The store did not answer: 503, the cause to the log only.
pub fn store_unavailable(cause: &StoreError) -> Response {
    tracing::error!(error = %cause, "store failure at an MCP endpoint");
    rpc_error(
        StatusCode::SERVICE_UNAVAILABLE,
        code::INTERNAL_ERROR,
        "the server cannot reach its store; try again shortly",
    )
}
