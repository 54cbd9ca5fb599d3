//! Entry points for the fuzz targets in `fuzz/` into parsers that are private to the
//! crate. Not an API: nothing else may call these.

use axum::http::HeaderMap;

use crate::{
    http::oauth::token::{client_request, RevokeParams},
    oauth::{clients::ClientCredentials, token::TokenParams},
};

/// What `POST /oauth/token` reads before it touches the store: the form and the
/// client's credentials, or the error description it would answer with.
pub fn token_request(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(TokenParams, ClientCredentials), String> {
    client_request::<TokenParams>(headers, body).map_err(|e| e.description)
}

/// What `POST /oauth/revoke` reads before it touches the store: the `token` and
/// `client_id` fields of the form, and the client's credentials.
pub fn revoke_request(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Option<String>, Option<String>, ClientCredentials), String> {
    client_request::<RevokeParams>(headers, body)
        .map(|(params, credentials)| (params.token, params.client_id, credentials))
        .map_err(|e| e.description)
}

/// The Host and Origin policy of `https://gate.example.com` with one extra host
/// (`alias.example.com:8443`) and one extra origin (`https://app.example.org`): what
/// the policy's unit and property tests and its fuzz target check against.
pub fn example_host_policy() -> crate::http::mcp::policy::HostPolicy {
    let config = crate::config::Cli::parse_ignoring_env([
        "gatehouse",
        "--public-url",
        "https://gate.example.com",
        "--data-dir",
        "/tmp",
        "--allowed-origin",
        "https://app.example.org",
        "--allowed-host",
        "alias.example.com:8443",
    ])
    .expect("flags")
    .serve
    .into_config()
    .expect("config");
    crate::http::mcp::policy::HostPolicy::new(&config)
}
