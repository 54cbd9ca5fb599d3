//! The MCP endpoints' common case, served without axum's router: a POST from a
//! client that is not a browser (no `Origin`), to one of the exact MCP paths, with a
//! body within the limit. That is every tool call of Claude Code, mcp-remote and the
//! SDK clients. It goes straight to the guard, with what the router's stack would
//! have done to it: the request counted by route and status, and the CORS headers
//! every MCP answer carries.
//!
//! Why: `perf` of the gateway load put about a tenth of the server's time in the
//! router's per-request work for these calls: matching, cloning each route's boxed
//! service stack, two `from_fn` middlewares that box their futures, and the CORS
//! layer rebuilding its headers. Everything else (browsers, preflights, other
//! methods, bodies announced over the limit) takes the router as before.

use std::{collections::HashMap, convert::Infallible, sync::Arc, task::Poll};

use axum::{
    body::Body,
    extract::Request,
    http::{header, HeaderMap, Method, StatusCode},
    response::{IntoResponse, Response},
    Router,
};
use futures::{future::BoxFuture, FutureExt};
use tower::{Layer, Service, ServiceExt};
use tower_http::cors::CorsLayer;

use super::{guard, Endpoint, MAX_BODY_BYTES};
use crate::http::{bodies::Unread, AppState};

type Serve = Arc<dyn Fn(AppState, Request) -> BoxFuture<'static, Response> + Send + Sync>;

/// The router, with the MCP endpoints' common case in front of it.
#[derive(Clone)]
pub struct McpFirst {
    routes: Router,
    front: Arc<Front>,
}

struct Front {
    state: AppState,
    /// Each MCP path, with its guarded endpoint and the route it is counted as.
    endpoints: HashMap<String, (Arc<str>, Serve)>,
    /// The headers the router's CORS layer adds to an answer to a request without
    /// `Origin`, read off that very layer (see [`cors_headers`]).
    cors: HeaderMap,
}

impl McpFirst {
    /// `routes` (with its state) behind the direct way to `state`'s MCP endpoints;
    /// `cors` is the layer the router puts around those endpoints.
    pub fn new(state: AppState, routes: Router, cors: &CorsLayer) -> Self {
        let mut endpoints: HashMap<String, (Arc<str>, Serve)> = HashMap::new();
        if let Some(endpoint) = state.article_endpoint.clone() {
            let path = crate::mcp::articles::PATH;
            endpoints.insert(path.to_owned(), (path.into(), serve(endpoint)));
        }
        for endpoint in &state.upstreams {
            let path = endpoint.resource().path.clone();
            endpoints.insert(path.clone(), (path.into(), serve(endpoint.clone())));
        }
        McpFirst {
            routes,
            front: Arc::new(Front {
                state,
                endpoints,
                cors: cors_headers(cors),
            }),
        }
    }

    /// The endpoint that serves `request` here, if it is the common case.
    fn endpoint(&self, request: &Request) -> Option<(Arc<str>, Serve)> {
        if request.method() != Method::POST || request.headers().contains_key(header::ORIGIN) {
            return None;
        }
        // A body announced over the limit gets the router's answer to it.
        let announced = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .map(|v| v.to_str().ok().and_then(|v| v.parse::<u64>().ok()));
        if announced.is_some_and(|n| n.is_none_or(|n| n > MAX_BODY_BYTES as u64)) {
            return None;
        }
        self.front.endpoints.get(request.uri().path()).cloned()
    }
}

/// The error language of an API path, for the router's own refusals there.
#[derive(Clone, Copy)]
enum Speaks {
    /// RFC 6749 JSON: the token, revocation and registration endpoints.
    OAuth,
    /// JSON-RPC: the MCP endpoints.
    JsonRpc,
}

/// The OAuth endpoints that take a body.
const OAUTH_BODIES: [&str; 3] = ["/oauth/token", "/oauth/revoke", "/oauth/register"];

impl McpFirst {
    fn speaks(&self, path: &str) -> Option<Speaks> {
        if self.front.endpoints.contains_key(path) {
            Some(Speaks::JsonRpc)
        } else if OAUTH_BODIES.contains(&path) {
            Some(Speaks::OAuth)
        } else {
            None
        }
    }
}

impl Speaks {
    /// tower-http's body limit answers a body announced over the limit with a
    /// plain-text 413 before any handler runs; here it says so as the endpoint
    /// would (as it does for a body found too large while reading it).
    fn too_large(self, answer: Response) -> Response {
        if answer.status() != StatusCode::PAYLOAD_TOO_LARGE
            || crate::net::content_type_is(answer.headers(), "application/json")
        {
            return answer;
        }
        let Unread { status, why } = Unread::TOO_LARGE;
        match self {
            Speaks::OAuth => crate::http::oauth::OAuthError::new(
                status,
                crate::oauth::ErrorCode::InvalidRequest,
                why,
            )
            .into_response(),
            Speaks::JsonRpc => {
                super::reply::rpc_error(status, super::reply::code::INVALID_REQUEST, why)
            }
        }
    }
}

fn serve<E: Endpoint>(endpoint: Arc<E>) -> Serve {
    Arc::new(move |state, request| guard::handle(state, endpoint.clone(), request).boxed())
}

/// What `cors` adds to the answer to a POST without `Origin`: the same headers, by
/// construction, as the router's answers carry.
fn cors_headers(cors: &CorsLayer) -> HeaderMap {
    fn empty(_: Request) -> std::future::Ready<Result<Response, Infallible>> {
        std::future::ready(Ok(Response::new(Body::empty())))
    }
    let service = cors.layer(tower::service_fn(empty));
    let mut request = Request::new(Body::empty());
    *request.method_mut() = Method::POST;
    // Everything involved is ready at once: no runtime is needed.
    match service.oneshot(request).now_or_never() {
        Some(Ok(response)) => response.headers().clone(),
        _ => HeaderMap::new(),
    }
}

impl<B> Service<axum::http::Request<B>> for McpFirst
where
    B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<Request>::poll_ready(&mut self.routes, cx)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let request = request.map(Body::new);
        let Some((route, serve)) = self.endpoint(&request) else {
            let speaks = self.speaks(request.uri().path());
            let routed = self.routes.call(request);
            return match speaks {
                None => routed.boxed(),
                Some(speaks) => routed
                    .map(move |answer| answer.map(|answer| speaks.too_large(answer)))
                    .boxed(),
            };
        };
        let front = self.front.clone();
        async move {
            let started = std::time::Instant::now();
            let mut response = serve(front.state.clone(), request).await;
            // As the CORS layer does: `Vary` added to, the rest set.
            let headers = response.headers_mut();
            for (name, value) in &front.cors {
                if name == header::VARY {
                    headers.append(name, value.clone());
                } else {
                    headers.insert(name, value.clone());
                }
            }
            crate::http::count_request_as(&route, response.status(), started);
            Ok(response)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cors_headers_are_read_off_the_layer() {
        let cors = CorsLayer::new()
            .allow_origin(tower_http::cors::AllowOrigin::any())
            .expose_headers([header::WWW_AUTHENTICATE]);
        let headers = cors_headers(&cors);
        assert_eq!(
            headers
                .get(header::ACCESS_CONTROL_EXPOSE_HEADERS)
                .map(|v| v.as_bytes()),
            Some(&b"www-authenticate"[..])
        );
        assert!(headers.get(header::VARY).is_some(), "{headers:?}");
    }
}
