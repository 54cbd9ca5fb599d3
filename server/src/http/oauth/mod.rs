//! HTTP adapters for the authorization server: they parse requests into the domain's
//! types, call [`AuthServer`](crate::oauth::AuthServer), and map its errors to the
//! wire: RFC 6749 JSON for API endpoints, the HTML error page for browser endpoints.

pub mod authorize;
pub mod metadata;
pub mod owner;
pub mod register;
pub mod token;

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request},
    http::{header, request::Parts, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde_json::json;

use super::{bodies::Unread, pages::ErrorPage, AppState};
use crate::{
    oauth::{ErrorCode, RegisterError, TokenError},
    store::StoreError,
};

/// An RFC 6749 §5.2 error body with its status, never cached: the one mapping of
/// OAuth errors to the wire for API endpoints.
pub struct OAuthError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub description: String,
    /// `WWW-Authenticate: Basic` for `invalid_client` after HTTP Basic (RFC 6749 §5.2).
    pub basic_challenge: bool,
    /// `Retry-After`, in seconds, for a refusal that ends by itself.
    pub retry_after: Option<u64>,
}

impl OAuthError {
    pub fn new(status: StatusCode, code: ErrorCode, description: impl Into<String>) -> Self {
        OAuthError {
            status,
            code,
            description: description.into(),
            basic_challenge: false,
            retry_after: None,
        }
    }

    pub fn bad_request(code: ErrorCode, description: impl Into<String>) -> Self {
        OAuthError::new(StatusCode::BAD_REQUEST, code, description)
    }

    /// The store failed: the cause goes to the log, the client may retry.
    pub fn unavailable(cause: &StoreError) -> Self {
        tracing::error!(error = %cause, "store failure");
        OAuthError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::TemporarilyUnavailable,
            "the server cannot reach its store; try again shortly",
        )
    }
}

impl From<TokenError> for OAuthError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Store(cause) => OAuthError::unavailable(&cause),
            TokenError::Unavailable(description) => OAuthError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::TemporarilyUnavailable,
                description,
            ),
            TokenError::Wait {
                description,
                seconds,
            } => OAuthError {
                retry_after: Some(seconds),
                ..OAuthError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::TemporarilyUnavailable,
                    description,
                )
            },
            // RFC 6749 §5.2: invalid_client is 401 (it makes Claude register again).
            TokenError::InvalidClient { description, basic } => OAuthError {
                basic_challenge: basic,
                ..OAuthError::new(
                    StatusCode::UNAUTHORIZED,
                    ErrorCode::InvalidClient,
                    description,
                )
            },
            other => OAuthError::bad_request(other.code(), other.to_string()),
        }
    }
}

impl From<RegisterError> for OAuthError {
    fn from(e: RegisterError) -> Self {
        match e {
            RegisterError::Store(cause) => OAuthError::unavailable(&cause),
            other => OAuthError::bad_request(other.code(), other.to_string()),
        }
    }
}

impl IntoResponse for TokenError {
    fn into_response(self) -> Response {
        OAuthError::from(self).into_response()
    }
}

impl IntoResponse for RegisterError {
    fn into_response(self) -> Response {
        OAuthError::from(self).into_response()
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(json!({
                "error": self.code.as_str(),
                "error_description": crate::oauth::error::description_text(&self.description),
            })),
        )
            .into_response();
        let headers = response.headers_mut();
        no_store(headers);
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.basic_challenge {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"gatehouse\", charset=\"UTF-8\""),
            );
        }
        response
    }
}

/// A request body as the OAuth API endpoints read it: one that misses its deadline
/// (`--request-body-timeout`), grows past the router's limit or breaks off gets an
/// RFC 6749 JSON error like every other refusal there, not axum's plain text.
pub struct OAuthBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for OAuthBody {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        read_body(request, state)
            .await
            .map(OAuthBody)
            .map_err(|unread| {
                // Refused by the budget: not the request's fault, so clients retry.
                let code = if matches!(
                    unread.status,
                    StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                ) {
                    ErrorCode::TemporarilyUnavailable
                } else {
                    ErrorCode::InvalidRequest
                };
                unread.finish(OAuthError::new(unread.status, code, unread.why).into_response())
            })
    }
}

/// The same for the browser endpoints that take a form (sign-in, setup): the HTML
/// error page.
pub struct PageBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for PageBody {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        read_body(request, state)
            .await
            .map(PageBody)
            .map_err(|unread| {
                unread.finish(
                    ErrorPage::new(unread.status, "Request refused", format!("{}.", unread.why))
                        .into_response(),
                )
            })
    }
}

/// A request's body, or why it could not be read.
async fn read_body<S: Send + Sync>(request: Request, state: &S) -> Result<Bytes, Unread> {
    let rejection = match Bytes::from_request(request, state).await {
        Ok(body) => return Ok(body),
        Err(rejection) => rejection,
    };
    Err(if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Unread::TOO_LARGE
    } else {
        Unread::of(&rejection)
    })
}

/// Reads an OAuth request's parameters (a query or a form body). RFC 6749 §3.1 and
/// §3.2: "Parameters sent without a value MUST be treated as if they were omitted
/// from the request": a public client sending `client_secret=` authenticates with
/// `none`, and `scope=` or `resource=` asks for nothing narrower or other. A
/// parameter given twice with a value is still refused ("MUST NOT be included
/// more than once").
pub fn oauth_params<T: serde::de::DeserializeOwned>(
    raw: &[u8],
) -> Result<T, serde_urlencoded::de::Error> {
    let valued = form_urlencoded::parse(raw).filter(|(_, value)| !value.is_empty());
    let kept = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(valued)
        .finish();
    serde_urlencoded::from_str(&kept)
}

/// A browser endpoint's query string: one that cannot be read (a parameter given
/// twice, say) gets the HTML error page, not axum's plain-text rejection.
pub struct PageQuery<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for PageQuery<T> {
    type Rejection = ErrorPage;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ErrorPage> {
        serde_urlencoded::from_str(parts.uri.query().unwrap_or_default())
            .map(PageQuery)
            .map_err(|_| {
                ErrorPage::new(
                    StatusCode::BAD_REQUEST,
                    "Malformed link",
                    "This link's parameters cannot be read (one given twice, say). \
                     Go back and use the link or button again.",
                )
            })
    }
}

/// Counts a request that would fetch the metadata document of `client_id` (not yet
/// proven here) against `address`'s share ([`super::DOCUMENT_FETCHES_PER_MINUTE`]),
/// and for IPv6 against its /48's too (anyone can get a /48 and its 65,536 /64s);
/// `Err(seconds to wait)` once a share is spent, and then nothing is counted.
///
/// Not for a proxy on this machine that cannot name its clients (see
/// [`super::address::is_unnamed_local_proxy`]): everyone behind it would share one
/// address's share, so anyone could keep every new client from signing in. Fetches
/// are bounded in all as well (places at once, one per document, a timeout each).
pub fn count_document_fetch(
    state: &AppState,
    address: std::net::IpAddr,
    client_id: Option<&str>,
) -> Result<(), u64> {
    if super::address::is_unnamed_local_proxy(address, &state.config.trusted_proxies) {
        return Ok(());
    }
    match client_id {
        Some(id) if state.auth.would_fetch_unproven(id) => {
            state.document_fetches.hit_networks(address).map_err(|wait| {
                crate::telemetry::rate_limited("document_fetch");
                crate::warn_throttled!(client = %address, "refused a metadata document fetch: too many from this address");
                wait.seconds()
            })
        }
        _ => Ok(()),
    }
}

/// What the token, revocation and registration endpoints answer to any method but
/// POST: an RFC 6749 error like their other refusals, not axum's empty 405.
pub async fn post_only() -> Response {
    let mut answer = OAuthError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::InvalidRequest,
        "this endpoint takes POST",
    )
    .into_response();
    answer
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    answer
}

/// RFC 6749 §5.1: responses with tokens or credentials are never cached.
pub fn no_store(headers: &mut HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// The error page for a store failure on a browser endpoint: the one mapping of
/// store failures to HTML.
pub fn unavailable_page(cause: &StoreError) -> ErrorPage {
    tracing::error!(error = %cause, "store failure");
    ErrorPage::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "Temporarily unavailable",
        "Gatehouse cannot reach its store right now. Try again in a moment.",
    )
}

/// Form posts that change state (sign-in, sign-out, setup) must come from our own
/// pages. A browser says where a request comes from in `Sec-Fetch-Site`, which pages
/// cannot forge: it must be `same-origin` (or `none`, typed by the person). Without it
/// (an older browser, or no browser at all), a present `Origin` must be ours. Our
/// pages send `Referrer-Policy: no-referrer`, under which browsers send `Origin:
/// null` even for our own forms, so `Sec-Fetch-Site` comes first.
pub fn same_origin_post(
    state: &crate::http::AppState,
    headers: &HeaderMap,
) -> Result<(), ErrorPage> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let ours = match (header("sec-fetch-site"), header("origin")) {
        (Some(site), _) => site == "same-origin" || site == "none",
        (None, Some(origin)) => origin.trim_end_matches('/') == state.config.public_url.as_str(),
        (None, None) => true,
    };
    if ours {
        Ok(())
    } else {
        crate::warn_throttled!("refused a cross-site form post");
        Err(ErrorPage::new(
            StatusCode::FORBIDDEN,
            "Cross-site request refused",
            "This form can only be sent from this server's own pages.",
        ))
    }
}

/// Headers every page an owner acts on carries: never framed (clickjacking), never
/// cached.
pub fn page_headers() -> [(header::HeaderName, &'static str); 4] {
    [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CONTENT_SECURITY_POLICY, "frame-ancestors 'none'"),
    ]
}
