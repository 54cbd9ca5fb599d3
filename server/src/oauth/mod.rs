//! The OAuth 2.1 authorization server's domain: clients, scopes, redirect URIs, PKCE,
//! grants, codes and tokens. No HTTP types here: `crate::http::oauth` adapts requests
//! to these calls and these errors to the wire.

pub mod client;
pub mod grace;
pub mod metadata_document;
pub mod owner;
pub mod pkce;
pub mod redirect;
pub mod scope;
pub mod secret;
pub mod server;

pub use server::{AuthServer, OAuthSettings};

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
