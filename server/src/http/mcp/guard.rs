//! The bearer guard in front of every MCP endpoint. In order:
//! 1. `Host` (DNS-rebinding protection) and `Origin` ([`super::policy`]): 400/403;
//! 2. a bearer token from the `Authorization` header only (RFC 6750 §2.1): 401 with
//!    `WWW-Authenticate` naming the resource's metadata;
//! 3. the token's record, read by its hash in one round trip together with whatever
//!    the endpoint reads ahead: unexpired, unrevoked and issued for this very resource
//!    (RFC 8707 audience), else 401 `invalid_token`;
//! 4. one JSON-RPC message per POST (batches 400), and the scope the call needs: 403
//!    `insufficient_scope` so clients can step up;
//! 5. the store answering within [`VERIFY_TIMEOUT`], else 503.
//!
//! The guard knows no tools: each [`Endpoint`] says which scope a call needs.

use std::{sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::Request,
    http::{header, HeaderMap, Method, StatusCode},
    response::Response,
};

use super::{
    policy::Refusal,
    reply::{code, insufficient_scope, rpc_error, store_unavailable, unauthorized},
    Endpoint, Guarded, GuardedBody, MAX_BODY_BYTES,
};
use crate::{
    http::AppState,
    mcp::{call::Message, Access, Need},
    oauth::AuthServer,
    store::{Key, StoreError},
};

/// A token check that does not answer within this long counts as a store outage.
pub const VERIFY_TIMEOUT: Duration = Duration::from_secs(5);

const INVALID_TOKEN: &str = "the access token is invalid, expired or revoked";

/// The bearer token of `Authorization: Bearer <token>`; never from the query string.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Guards one request for `endpoint`, then lets it serve.
pub async fn handle<E: Endpoint>(state: AppState, endpoint: Arc<E>, request: Request) -> Response {
    let public_url = state.config.public_url.as_str();
    let resource = endpoint.resource();
    match state.hosts.check(request.uri(), request.headers()) {
        Ok(()) => {}
        Err(Refusal::MalformedHost) => {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                code::INVALID_REQUEST,
                "the Host header is invalid",
            )
        }
        Err(Refusal::HostNotAllowed) => {
            tracing::warn!("refused an MCP request for a Host that is not ours");
            return rpc_error(
                StatusCode::FORBIDDEN,
                code::INVALID_REQUEST,
                "this Host is not served here; add it with --allowed-host",
            );
        }
        Err(Refusal::OriginNotAllowed) => {
            return rpc_error(
                StatusCode::FORBIDDEN,
                code::INVALID_REQUEST,
                "this Origin may not call the MCP endpoint",
            )
        }
    }
    let Some(token) = bearer(request.headers()) else {
        return unauthorized(public_url, resource, None);
    };
    let Some(token_key) = AuthServer::access_token_key(token) else {
        return unauthorized(public_url, resource, Some(INVALID_TOKEN));
    };

    // A POST's body is read before the token is looked up, so that what the endpoint
    // reads ahead travels to the store with the token: one round trip per call.
    // Nothing read is used before the token and its scopes pass.
    let (parts, body) = request.into_parts();
    let body = if parts.method == Method::POST {
        match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
            Ok(bytes) => GuardedBody::Read(bytes),
            Err(_) => {
                return rpc_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    code::INVALID_REQUEST,
                    "the request body is too large",
                )
            }
        }
    } else {
        GuardedBody::Stream(body)
    };
    let bytes = match &body {
        GuardedBody::Read(bytes) => Some(bytes),
        GuardedBody::Stream(_) => None,
    };
    let prepared = endpoint.prepare(&parts, bytes);
    let keys: Vec<&Key> = std::iter::once(&token_key)
        .chain(prepared.read_ahead.as_ref())
        .collect();
    let mut records = match tokio::time::timeout(VERIFY_TIMEOUT, state.store.get_many(&keys)).await
    {
        Ok(Ok(records)) if records.len() == keys.len() => records,
        Ok(Ok(_)) => {
            return store_unavailable(&StoreError::Backend(
                "the store answered the wrong number of records".into(),
            ))
        }
        Ok(Err(e)) => return store_unavailable(&e),
        Err(_) => {
            return store_unavailable(&StoreError::Unavailable("the token check timed out".into()))
        }
    };
    let read_ahead = prepared
        .read_ahead
        .map(|key| (key, records.pop().flatten()));
    let access = match state
        .auth
        .access_token_from(records[0].as_deref(), &resource.uri)
    {
        Ok(Some(access)) => access,
        Ok(None) => return unauthorized(public_url, resource, Some(INVALID_TOKEN)),
        Err(e) => return store_unavailable(&e),
    };

    if let Some(bytes) = bytes {
        let need = match prepared.need {
            Some(need) => need,
            None => match Message::peek(bytes) {
                // One JSON-RPC message per POST since 2025-06-18.
                Message::Batch => {
                    return rpc_error(
                        StatusCode::BAD_REQUEST,
                        code::INVALID_REQUEST,
                        "batched JSON-RPC requests are not supported",
                    )
                }
                Message::Single(call) => endpoint.needs(&call),
            },
        };
        if let Need::Scope(access_needed) = need {
            let needed = match access_needed {
                Access::Read => &resource.read,
                Access::Write => &resource.write,
            };
            if !access.scopes.contains(needed) {
                let mut wanted = access.scopes.clone();
                wanted.insert(needed.clone());
                return insufficient_scope(public_url, resource, &wanted);
            }
        }
    }

    let mut parts = parts;
    parts.extensions.insert(access.clone());
    endpoint
        .serve(Guarded {
            parts,
            body,
            access,
            prepared: prepared.state,
            read_ahead,
        })
        .await
}

/// A request's body, for endpoints that hand the request on.
pub fn rebuild(parts: axum::http::request::Parts, body: GuardedBody) -> Request<Body> {
    Request::from_parts(parts, body.into_body())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn bearer_tokens_come_from_the_authorization_header() {
        let headers = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(value).expect("v"),
            );
            h
        };
        assert_eq!(bearer(&headers("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&headers("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&headers("Basic abc")), None);
        assert_eq!(bearer(&headers("Bearer ")), None);
        assert_eq!(bearer(&headers("Bearer")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }
}
