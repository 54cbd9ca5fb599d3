//! The owner's cookies: the sign-in session (a random id, the store keeps its hash;
//! `SameSite=Lax`) and the device cookie of a browser the owner signed in with
//! (`SameSite=Strict`), both `HttpOnly`, and `Secure` with the `__Host-` prefix
//! under https.

use axum::http::{header, HeaderMap, HeaderValue};

use crate::{http::AppState, oauth::secret::SecretHash, store::StoreError};

pub fn cookie_name(state: &AppState) -> &'static str {
    if state.config.public_url.is_https() {
        "__Host-gatehouse_session"
    } else {
        "gatehouse_session"
    }
}

pub fn session_cookie(state: &AppState, value: &str, max_age: u64) -> HeaderValue {
    cookie(state, cookie_name(state), value, "Lax", max_age)
}

/// A cookie of ours: `HttpOnly`, for the whole site, `Secure` under https (where
/// its name has the `__Host-` prefix).
fn cookie(state: &AppState, name: &str, value: &str, same_site: &str, max_age: u64) -> HeaderValue {
    let secure = if state.config.public_url.is_https() {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{name}={value}; Path=/; HttpOnly; SameSite={same_site}; Max-Age={max_age}{secure}"
    );
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The cookie that names a browser the owner signed in with
/// ([`crate::oauth::owner::KnownDevice`]).
pub fn device_cookie_name(state: &AppState) -> &'static str {
    if state.config.public_url.is_https() {
        "__Host-gatehouse_device"
    } else {
        "gatehouse_device"
    }
}

/// The device cookie: sent back only to this site's own pages (`SameSite=Strict`),
/// never to scripts.
pub fn device_cookie(state: &AppState, value: &str, max_age: u64) -> HeaderValue {
    cookie(state, device_cookie_name(state), value, "Strict", max_age)
}

pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The signed-in session's hash, if the request carries a live session cookie.
pub async fn current_session(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<SecretHash>, StoreError> {
    match cookie_value(headers, cookie_name(state)) {
        Some(value) if !value.is_empty() && value.len() <= 128 => state.owner.session(value).await,
        _ => Ok(None),
    }
}
