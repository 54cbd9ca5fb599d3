//! `GET /oauth/authorize` and the consent page's two links,
//! `GET /oauth/authorize/approve` and `GET /oauth/authorize/deny`.
//!
//! Approval is a GET link (mcp-remote's callback accepts only GET, and the flow must
//! end in a GET redirect). The link carries a random single-use ticket bound to the
//! signed-in session and to the one pending request, so a forged or replayed link, or
//! one opened in another browser, approves nothing.

use axum::{
    extract::{RawQuery, State},
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Deserialize;

use super::{page_headers, unavailable_page};
use crate::{
    http::{
        address::ClientAddress,
        pages::{see_other, ErrorPage},
        session::current_session,
        AppState,
    },
    oauth::{authorize::AuthorizeParams, client::ClientKind, AuthorizeError, TicketError},
};

pub async fn authorize(
    State(state): State<AppState>,
    headers: HeaderMap,
    ClientAddress(address): ClientAddress,
    RawQuery(query): RawQuery,
) -> Response {
    let query = one_resource(&query.unwrap_or_default());
    let params: AuthorizeParams = match super::oauth_params(query.as_bytes()) {
        Ok(params) => params,
        Err(_) => {
            return ErrorPage::new(
                StatusCode::BAD_REQUEST,
                "Malformed authorization request",
                "The request's parameters could not be read (a parameter may be repeated).",
            )
            .into_response()
        }
    };
    if let Err(wait) = super::count_document_fetch(&state, address, params.client_id.as_deref()) {
        let mut page = ErrorPage::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many new applications",
            format!(
                "This address has asked to connect too many applications new to this server \
                 in the last minute. Try again in {wait} second(s)."
            ),
        )
        .into_response();
        page.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(wait));
        return page;
    }
    let pending = match state.auth.validate_authorization(params).await {
        Ok(pending) => pending,
        // RFC 6749 §4.1.2.1: with a bad client or redirect URI, tell the person and
        // never redirect.
        Err(AuthorizeError::Page { title, message }) => {
            return ErrorPage::new(StatusCode::BAD_REQUEST, title, message).into_response()
        }
        Err(AuthorizeError::Redirect {
            redirect_uri,
            code,
            description,
            state: client_state,
            trusted,
        }) => {
            let target = state.auth.error_redirect(
                &redirect_uri,
                code,
                &description,
                client_state.as_deref(),
            );
            if trusted {
                return see_other(&target);
            }
            // Nobody has approved anything yet, and a self-registered client's URI
            // may be anyone's: show where it would go instead of sending the person.
            return (
                StatusCode::BAD_REQUEST,
                page_headers(),
                app::oauth_pages::redirect_notice_document(
                    code.as_str(),
                    &description,
                    &redirect_uri.host(),
                    &target,
                ),
            )
                .into_response();
        }
        Err(AuthorizeError::Store(e)) => return unavailable_page(&e).into_response(),
    };

    let session = match current_session(&state, &headers).await {
        Ok(Some(session)) => session,
        // Sign in first, then come back to this very request.
        Ok(None) => {
            let return_to = format!("/oauth/authorize?{query}");
            let login: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("return_to", &return_to)
                .finish();
            return see_other(&format!("/oauth/login?{login}"));
        }
        Err(e) => return unavailable_page(&e).into_response(),
    };

    let resource = state
        .auth
        .settings()
        .resources
        .get(pending.resource.as_str());
    let view = app::oauth_pages::ConsentView {
        client_name: pending.client_name.clone(),
        client_id: pending.client_id.to_string(),
        unverified: pending.client_kind == ClientKind::Registered,
        document_host: (pending.client_kind == ClientKind::MetadataDocument)
            .then(|| url::Url::parse(pending.client_id.as_str()).ok())
            .flatten()
            .and_then(|u| u.host_str().map(str::to_owned)),
        redirect_host: pending.redirect_uri.host(),
        redirect_is_loopback: pending.redirect_uri.is_loopback(),
        resource_title: resource.map(|r| r.title.clone()).unwrap_or_default(),
        resource_url: pending.resource.to_string(),
        scopes: pending
            .scopes
            .iter()
            .map(|s| {
                let words = resource.and_then(|r| r.description(s)).unwrap_or("");
                (s.to_string(), words.to_owned())
            })
            .collect(),
        ignored_scopes: pending
            .ignored_scopes
            .iter()
            .map(|s| s.to_string())
            .collect(),
        approve_href: String::new(),
        deny_href: String::new(),
        read_only: None,
    };
    if let Err(wait) = state.consent_pages.hit_key(&session) {
        crate::warn_throttled!("consent page refused: too many for one sign-in session");
        crate::telemetry::rate_limited("consent_pages");
        let mut page = ErrorPage::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many consent pages",
            format!(
                "This sign-in opened too many consent pages in the last minute (a page \
                 elsewhere may be opening them). Try again in {} second(s).",
                wait.seconds()
            ),
        )
        .into_response();
        page.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(wait.seconds()));
        return page;
    }
    let read_only = resource.and_then(|r| r.read_only(&pending.scopes));
    let read_only_scopes = read_only
        .as_ref()
        .map(|scopes| scopes.iter().map(|s| s.to_string()).collect());
    let tickets = match state
        .auth
        .create_tickets(&session, pending, read_only)
        .await
    {
        Ok(tickets) => tickets,
        Err(e) => return unavailable_page(&e).into_response(),
    };
    let encode =
        |ticket: &str| -> String { form_urlencoded::byte_serialize(ticket.as_bytes()).collect() };
    let full = encode(&tickets.full);
    let view = app::oauth_pages::ConsentView {
        approve_href: format!("/oauth/authorize/approve?ticket={full}"),
        deny_href: format!("/oauth/authorize/deny?ticket={full}"),
        read_only: tickets
            .read_only
            .map(|ticket| app::oauth_pages::ReadOnlyChoice {
                href: format!("/oauth/authorize/approve?ticket={}", encode(&ticket)),
                scopes: read_only_scopes.unwrap_or_default(),
            }),
        ..view
    };
    (
        StatusCode::OK,
        page_headers(),
        app::oauth_pages::consent_document(view),
    )
        .into_response()
}

#[derive(Deserialize)]
pub struct TicketParams {
    ticket: Option<String>,
}

/// RFC 8707 §2 lets a request name several resources; a grant here is for one.
/// Several different ones become one value no resource has (URIs hold no spaces), so
/// the request fails with `invalid_target`, sent to the client once it and its
/// redirect URI are known, rather than as an unreadable request; one named twice is
/// that one. Other parameters given twice still make the request unreadable.
fn one_resource(query: &str) -> String {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect();
    let mut resources: Vec<&str> = Vec::new();
    for (name, value) in &pairs {
        if name == "resource" && !value.is_empty() && !resources.contains(&value.as_str()) {
            resources.push(value);
        }
    }
    if pairs.iter().filter(|(name, _)| name == "resource").count() < 2 {
        return query.to_owned();
    }
    let joined = resources.join(" ");
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs.iter().filter(|(name, _)| name != "resource"))
        .append_pair("resource", &joined)
        .finish()
}

pub async fn approve(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    super::PageQuery(params): super::PageQuery<TicketParams>,
) -> Response {
    decide(state, &method, headers, params, true).await
}

pub async fn deny(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    super::PageQuery(params): super::PageQuery<TicketParams>,
) -> Response {
    decide(state, &method, headers, params, false).await
}

/// Whether a browser fetched the link on its own (a prefetch or prerender) or another
/// site sent the person here: then nothing is decided, and the ticket stays.
fn unintended(headers: &HeaderMap) -> Option<&'static str> {
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let prefetch = [value("sec-purpose"), value("purpose")]
        .into_iter()
        .flatten()
        .any(|v| v.to_ascii_lowercase().contains("prefetch"));
    if prefetch {
        return Some("The browser fetched this link ahead of time. Click it on the consent page.");
    }
    if value("sec-fetch-site") == Some("cross-site") {
        return Some("Another site sent you to this link. Use the buttons on the consent page.");
    }
    None
}

async fn decide(
    state: AppState,
    method: &Method,
    headers: HeaderMap,
    params: TicketParams,
    approve: bool,
) -> Response {
    // axum answers HEAD with the GET handler; a link checker's HEAD must not decide.
    if method != Method::GET {
        let mut page = ErrorPage::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "Nothing was decided",
            "Only a click on the consent page decides.",
        )
        .into_response();
        page.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return page;
    }
    if let Some(reason) = unintended(&headers) {
        return ErrorPage::new(StatusCode::BAD_REQUEST, "Nothing was decided", reason)
            .into_response();
    }
    let invalid = || {
        ErrorPage::new(
            StatusCode::BAD_REQUEST,
            "This link is not valid",
            "Approval links work once, for a few minutes, in the browser that signed in. \
             Start the connection again from your app.",
        )
        .into_response()
    };
    let Some(ticket) = params.ticket.filter(|t| !t.is_empty()) else {
        return invalid();
    };
    let session = match current_session(&state, &headers).await {
        Ok(Some(session)) => session,
        Ok(None) => return invalid(),
        Err(e) => return unavailable_page(&e).into_response(),
    };
    let outcome = if approve {
        state.auth.approve(&ticket, &session).await
    } else {
        state.auth.deny(&ticket, &session).await
    };
    match outcome {
        Ok(target) => {
            tracing::info!(approved = approve, "authorization decided");
            see_other(&target)
        }
        Err(TicketError::Invalid) => invalid(),
        Err(TicketError::ServerChanged) => ErrorPage::new(
            StatusCode::CONFLICT,
            "Nothing was approved",
            "The MCP server this page asked about was replaced by another one since. \
             Start the connection again from your app.",
        )
        .into_response(),
        Err(TicketError::Store(e)) => unavailable_page(&e).into_response(),
    }
}
