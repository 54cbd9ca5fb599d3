//! RFC 9728 protected-resource metadata, one document per resource, at
//! `/.well-known/oauth-protected-resource<path>` (and, for the default resource, at
//! `/.well-known/oauth-protected-resource` too, where older clients look).

use axum::{response::IntoResponse, Json};
use serde_json::json;

use crate::resource::Resource;

pub fn document(public_url: &str, resource: &Resource) -> impl IntoResponse {
    let scopes: Vec<String> = resource
        .scopes()
        .iter()
        .map(|s| s.scope.to_string())
        .collect();
    Json(json!({
        "resource": resource.uri.as_str(),
        "authorization_servers": [public_url],
        "scopes_supported": scopes,
        "bearer_methods_supported": ["header"],
        "resource_name": format!("Gatehouse: {}", resource.title),
        "resource_documentation": format!("{public_url}/"),
    }))
}
