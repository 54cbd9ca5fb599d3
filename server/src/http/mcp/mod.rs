//! MCP endpoints over HTTP, each a protected resource behind one bearer guard.
//!
//! - [`policy`]: which `Host`s and `Origin`s may call (checked first);
//! - [`guard`]: the bearer token, its audience and the scope a call needs, for any
//!   [`Endpoint`];
//! - [`front`]: the common case (a client's POST) served without the router;
//! - [`articles`]: the built-in article server at `/mcp`, with its direct path for
//!   tool calls in live sessions;
//! - [`gateway`]: the upstreams at `/mcp/NAME`, with an HTTP upstream's direct path
//!   for tool calls in live sessions;
//! - [`sessions`]: MCP sessions kept in the store for cross-instance recovery;
//! - [`metadata`]: RFC 9728 protected-resource metadata;
//! - [`reply`]: the JSON-RPC and `WWW-Authenticate` answers.

pub mod articles;
pub mod front;
pub mod gateway;
pub mod guard;
pub mod metadata;
pub mod policy;
pub mod reply;
pub mod sessions;

use std::{future::Future, sync::Arc};

use axum::{
    body::{Body, Bytes},
    http::{header, request::Parts, HeaderMap, HeaderName},
    response::Response,
};

use crate::{
    mcp::{Call, Need},
    net::content_type_is,
    oauth::records::AccessToken,
    resource::Resource,
    store::Key,
};

/// Request bodies larger than this are refused with 413 (one constant for every route).
pub use super::MAX_BODY_BYTES;

/// An MCP server behind the guard. The guard knows only what this trait tells it: the
/// resource (URL, scopes), which scope a call needs, and what to read with the token.
pub trait Endpoint: Send + Sync + 'static {
    /// What [`Endpoint::prepare`] learnt from a request, handed back to
    /// [`Endpoint::serve`].
    type Prepared: Send;

    fn resource(&self) -> &Arc<Resource>;

    /// The scope a JSON-RPC request needs. It may look something up first (the
    /// gateway asks an upstream for its tools when it meets one it does not know).
    fn needs(&self, call: &Call<'_>) -> impl Future<Output = Need> + Send;

    /// Looks at a request before its token is checked (nothing learnt here is used
    /// unless the token passes): what to read from the store together with the
    /// token, in one round trip, and the scope the request needs when preparing
    /// already found out (so the body is parsed once).
    fn prepare(&self, parts: &Parts, body: Option<&Bytes>) -> Prepared<Self::Prepared>;

    /// Serves a request that passed the guard.
    fn serve(&self, request: Guarded<Self::Prepared>) -> impl Future<Output = Response> + Send;

    /// Ends a session this instance has just opened but whose client will never
    /// use it (it could not be bound to the client: the answer is an error), so that
    /// it holds no upstream, process or place until a sweep finds it.
    fn abandon(&self, session: &str) -> impl Future<Output = ()> + Send;

    /// Whether `session` may still be served: held here, or with a record rmcp
    /// could bring it back from (a store failure counts as yes).
    fn holds(&self, session: &str) -> impl Future<Output = bool> + Send;
}

/// What [`Endpoint::prepare`] returns.
pub struct Prepared<P> {
    pub state: P,
    pub read_ahead: Option<Key>,
    pub need: Option<Need>,
    /// The tool a `tools/call` names, when preparing read it (for the activity log).
    pub tool: Option<String>,
}

/// A request that passed the guard: its token (also in `parts.extensions`), its body
/// (already read for POSTs), and what was read ahead.
pub struct Guarded<P> {
    pub parts: Parts,
    pub body: GuardedBody,
    pub access: AccessToken,
    pub prepared: P,
    /// The record named by [`Prepared::read_ahead`], read with the token.
    pub read_ahead: Option<(Key, Option<Vec<u8>>)>,
}

/// A POST body the guard has read, or the untouched body of any other method.
pub enum GuardedBody {
    Read(Bytes),
    Stream(Body),
}

impl GuardedBody {
    pub fn into_body(self) -> Body {
        match self {
            GuardedBody::Read(bytes) => Body::from(bytes),
            GuardedBody::Stream(body) => body,
        }
    }
}

/// Header names the MCP transport uses, as `HeaderName`s: a lookup by `&str` parses
/// the name again on every call.
pub static SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
pub static PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
/// SEP-2243 (2026-07-28): the method and target of a request, for intermediaries.
pub static METHOD: HeaderName = HeaderName::from_static("mcp-method");
pub static NAME: HeaderName = HeaderName::from_static("mcp-name");

/// The revisions with sessions and without per-request metadata or standard headers.
const SESSION_REVISIONS: [&str; 3] = ["2025-03-26", "2025-06-18", "2025-11-25"];

/// The session id and revision (when sent) of a POST that a direct path may answer
/// without rmcp: a session id, a 2025 revision (no per-request metadata or standard
/// headers), a JSON `Content-Type`, and `Accept` naming JSON and SSE without weights.
/// Everything else goes to rmcp, which answers it (400, 404, 406, 415, ...) as it
/// always has.
pub fn direct_session(headers: &HeaderMap) -> Option<(&str, Option<&str>)> {
    let session = headers.get(&SESSION_ID)?.to_str().ok()?;
    let version = match headers.get(&PROTOCOL_VERSION) {
        Some(v) => Some(v.to_str().ok()?),
        None => None,
    };
    if !version.is_none_or(|v| SESSION_REVISIONS.contains(&v)) {
        return None;
    }
    let is_json = content_type_is(headers, "application/json");
    (is_json && accepts_json_and_sse(headers)).then_some((session, version))
}

/// `Accept` names both `application/json` and `text/event-stream`. Weighted entries
/// (`;q=`) are left to rmcp's full parser.
fn accepts_json_and_sse(headers: &HeaderMap) -> bool {
    let (mut json, mut sse) = (false, false);
    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else {
            return false;
        };
        // Without allocating: this runs twice for every call.
        for entry in value.split(',') {
            let mut params = entry.split(';');
            let essence = params.next().unwrap_or("").trim();
            let weighted = |p: &str| {
                p.trim_start()
                    .as_bytes()
                    .get(..2)
                    .is_some_and(|q| q.eq_ignore_ascii_case(b"q="))
            };
            if params.any(weighted) {
                return false;
            }
            json |= essence.eq_ignore_ascii_case("application/json");
            sse |= essence.eq_ignore_ascii_case("text/event-stream");
        }
    }
    json && sse
}

/// The session id a request carries, if any.
pub fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers.get(&SESSION_ID).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(values: &[&str]) -> bool {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(header::ACCEPT, value.parse().expect("header"));
        }
        accepts_json_and_sse(&headers)
    }

    #[test]
    fn the_direct_path_takes_accept_lists_that_name_both_types_without_weights() {
        assert!(accept(&["application/json, text/event-stream"]));
        assert!(accept(&[
            "Application/JSON ;charset=utf-8",
            " TEXT/event-stream"
        ]));
        assert!(!accept(&["application/json"]));
        assert!(!accept(&["application/json, text/event-stream;q=0.5"]));
        assert!(!accept(&["application/json, text/event-stream; Q=1"]));
        // A parameter that is not a weight, even one shorter than "q=", is no reason
        // to refuse.
        assert!(accept(&["application/json;v, text/event-stream"]));
        assert!(!accept(&[]));
    }
}
