//! The owner's console on the server: the backend its server functions call
//! (`app::console`), and the middleware in front of its pages and calls.
//!
//! Every call needs the owner's session. Every call that changes something also
//! needs a same-origin request (`Sec-Fetch-Site`, else `Origin`) and the session's
//! CSRF token: the SHA-256 of the session cookie under a fixed label, so it needs no
//! storage, dies with the session, and reveals nothing of the cookie.

use std::{
    collections::BTreeMap,
    time::{Duration, UNIX_EPOCH},
};

use app::console::{
    ActivityRow, ActivityView, AppRow, ArticleDetail, ArticleRow, CheckRow, ConsoleBackend,
    ConsoleError,
};
use axum::{
    extract::{Request, State},
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::{
    engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD},
    Engine as _,
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{
    bodies::{Refused, Unread},
    oauth::same_origin_post,
    pages::see_other,
    session::{cookie_name, cookie_value},
    AppState,
};
use crate::{
    articles::{ArticleError, Slug, Status, MAX_PAGE},
    audit::{Cursor, Event, EventKind},
    oauth::{
        client::ClientId,
        grants::{GrantSummary, Identity},
    },
    store::{Group, StoreError},
};

/// Events on one page of the activity log, and how many the filter may look
/// through for them.
const ACTIVITY_PAGE: usize = 50;
const ACTIVITY_SCAN: usize = 5_000;
const ACTIVITY_BATCH: usize = 200;

/// The doctor's requests from the Connect page: shorter than the CLI's, as someone
/// waits for the page.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// A run of the doctor is reused for this long: the Connect page runs it on a GET,
/// which a link from another site can make the owner's browser send.
const CHECKS_REUSED_FOR: Duration = Duration::from_secs(30);

pub struct Console {
    state: AppState,
    /// The last run of the doctor, and when it ended; one run at a time.
    checks: tokio::sync::Mutex<Option<(tokio::time::Instant, Vec<CheckRow>)>>,
}

impl Console {
    pub fn new(state: AppState) -> Self {
        Console {
            state,
            checks: tokio::sync::Mutex::new(None),
        }
    }
}

/// The CSRF token of the session whose cookie is `cookie`.
pub fn csrf_token(cookie: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(b"gatehouse console csrf\0");
    hash.update(cookie.as_bytes());
    URL_SAFE_NO_PAD.encode(hash.finalize())
}

/// `2026-12-01 14:03:05`, in UTC.
fn when(secs: u64) -> String {
    let stamp = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs));
    stamp
        .to_string()
        .replace('T', " ")
        .trim_end_matches('Z')
        .to_owned()
}

/// Ends, on this instance, the gateway sessions a revocation left without a grant
/// (each other instance does within `SWEEP_EVERY`). The revocation holds whatever
/// happens here.
async fn end_ungranted_sessions(state: &AppState) {
    let sweep = {
        let state = state.clone();
        tokio::spawn(async move { crate::http::mcp::gateway::end_ungranted(&state).await })
    };
    // The owner's page does not wait long: what is left goes on without it.
    match tokio::time::timeout(Duration::from_secs(5), sweep).await {
        Ok(Ok(Ok(_))) => {}
        Ok(Ok(Err(e))) => {
            tracing::warn!(error = %e, "cannot end the sessions of a revoked grant")
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "ending the sessions of a revoked grant failed"),
        Err(_) => tracing::warn!("still ending the sessions of a revoked grant"),
    }
}

fn unavailable(error: &StoreError) -> ConsoleError {
    tracing::error!(error = %error, "store failure in the console");
    let message = match error {
        StoreError::Unavailable(_) => "The store is unavailable; try again shortly.".to_owned(),
        // Trying again will not help: say so.
        other => format!("{}.", capitalized(other.for_caller())),
    };
    ConsoleError::new(503, message)
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn article_error(error: ArticleError) -> ConsoleError {
    match error {
        ArticleError::Invalid(message) => ConsoleError::new(400, message),
        ArticleError::NotFound(_) => ConsoleError::new(404, error.to_string()),
        ArticleError::Exists(_) => ConsoleError::new(409, error.to_string()),
        ArticleError::Changed(_) => ConsoleError::new(
            409,
            "Someone changed this article since you opened it. Open it again to see their change, then redo yours.",
        ),
        ArticleError::Store(e) => unavailable(&e),
    }
}

fn identity(summary: &GrantSummary) -> (String, bool) {
    match &summary.identity {
        Identity::Document(host) => (host.clone(), true),
        Identity::Static => ("static client".into(), true),
        Identity::SelfRegistered => ("self-registered".into(), false),
        Identity::Unknown => ("unknown".into(), false),
    }
}

/// An event's particulars in words; never a secret (events hold none).
fn detail(event: &Event) -> String {
    let mut parts = Vec::new();
    if let Some(tool) = &event.tool {
        parts.push(format!("tool {tool}"));
    }
    if let Some(outcome) = &event.outcome {
        parts.push(outcome.clone());
    }
    match (event.calls, event.duration_ms) {
        (Some(calls), Some(ms)) => parts.push(format!("{calls} calls, the longest {ms} ms")),
        (Some(calls), None) => parts.push(format!("{calls} calls")),
        (None, Some(ms)) => parts.push(format!("{ms} ms")),
        (None, None) => {}
    }
    if let Some(scopes) = &event.scopes {
        parts.push(format!("scopes {scopes}"));
    }
    if let Some(resource) = &event.resource {
        parts.push(format!("on {resource}"));
    }
    if let Some(address) = &event.address {
        parts.push(format!("from {address}"));
    }
    if event.kind == Some(EventKind::RefreshReuseDetected) {
        parts.push("the grant was revoked".into());
    }
    parts.join(" · ")
}

impl Console {
    async fn live_grants(&self) -> Result<Vec<GrantSummary>, ConsoleError> {
        self.state.auth.grants().await.map_err(|e| unavailable(&e))
    }

    fn slug(raw: &str) -> Result<Slug, ConsoleError> {
        Slug::parse(raw).map_err(article_error)
    }
}

#[async_trait::async_trait]
impl ConsoleBackend for Console {
    async fn signed_in(&self, headers: &HeaderMap) -> bool {
        matches!(
            super::session::current_session(&self.state, headers).await,
            Ok(Some(_))
        )
    }

    async fn authorize(
        &self,
        headers: &HeaderMap,
        csrf: Option<&str>,
    ) -> Result<String, ConsoleError> {
        let sign_in = || ConsoleError::new(401, "Sign in to use the console.");
        let cookie = cookie_value(headers, cookie_name(&self.state))
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .ok_or_else(sign_in)?;
        match self.state.owner.session(cookie).await {
            Ok(Some(_)) => {}
            Ok(None) => return Err(sign_in()),
            Err(e) => return Err(unavailable(&e)),
        }
        let token = csrf_token(cookie);
        if let Some(given) = csrf {
            if same_origin_post(&self.state, headers).is_err() {
                return Err(ConsoleError::new(
                    403,
                    "Cross-site request refused: console actions work only from the console's own pages.",
                ));
            }
            if !bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
                tracing::warn!("refused a console action without this session's CSRF token");
                return Err(ConsoleError::new(
                    403,
                    "This form has expired. Reload the page and try again.",
                ));
            }
        }
        Ok(token)
    }

    async fn apps(&self) -> Result<Vec<AppRow>, ConsoleError> {
        // Usage counters are written about once a minute; write this instance's now.
        if let Err(e) = self.state.audit.flush().await {
            tracing::warn!(error = %e, "could not write usage before listing apps");
        }
        let now_ms = self.state.clock.now_ms();
        let mut rows = Vec::new();
        for summary in self.live_grants().await? {
            let usage = match Group::parse(&summary.grant) {
                Some(group) => self
                    .state
                    .audit
                    .usage(&group)
                    .await
                    .map_err(|e| unavailable(&e))?,
                None => Default::default(),
            };
            let (identity, verified) = identity(&summary);
            rows.push(AppRow {
                identity,
                verified,
                approved: when(summary.approved_at),
                pending: summary.pending,
                last_used: (usage.last_used > 0).then(|| when(usage.last_used / 1000)),
                calls_last_day: usage.calls_last_day(now_ms),
                grant: summary.grant,
                client_id: summary.client_id.to_string(),
                client_name: summary.client_name,
                redirect_hosts: summary.redirect_hosts,
                scopes: summary.scopes,
                resource: summary.resource,
            });
        }
        Ok(rows)
    }

    async fn revoke_grant(&self, grant: &str) -> Result<(), ConsoleError> {
        let group = Group::parse(grant).ok_or_else(|| ConsoleError::new(400, "no such grant"))?;
        // Gone already (revoked elsewhere, expired): the owner's wish holds.
        self.state
            .auth
            .revoke_grant(&group)
            .await
            .map_err(|e| unavailable(&e))?;
        tracing::info!("the owner revoked a grant from the console");
        end_ungranted_sessions(&self.state).await;
        Ok(())
    }

    async fn revoke_client(&self, client_id: &str) -> Result<usize, ConsoleError> {
        let client_id = ClientId::parse(client_id)
            .ok_or_else(|| ConsoleError::new(400, "that is not a client id"))?;
        let revoked = self
            .state
            .auth
            .revoke_client(&client_id)
            .await
            .map_err(|e| unavailable(&e))?;
        tracing::info!(
            revoked,
            "the owner revoked a client's grants from the console"
        );
        end_ungranted_sessions(&self.state).await;
        Ok(revoked)
    }

    async fn activity(
        &self,
        client: Option<&str>,
        kind: Option<&str>,
        before: Option<&str>,
    ) -> Result<ActivityView, ConsoleError> {
        let kind = match kind {
            Some(raw) => Some(
                EventKind::parse(raw)
                    .ok_or_else(|| ConsoleError::new(400, "no such kind of event"))?,
            ),
            None => None,
        };
        if let Err(e) = self.state.audit.flush().await {
            tracing::warn!(error = %e, "could not write pending events before reading them");
        }
        let names: BTreeMap<String, String> = self
            .live_grants()
            .await?
            .into_iter()
            .map(|g| {
                // A client other than the operator's chose its own name ("Claude",
                // say): the activity says who vouches for it (the host of its
                // metadata document) or that nobody does, as the consent page did.
                let name = match &g.identity {
                    Identity::Static => g.client_name,
                    _ => format!("{} ({})", g.client_name, identity(&g).0),
                };
                (g.client_id.to_string(), name)
            })
            .collect();

        let mut cursor = match before {
            Some(raw) => Cursor::parse(raw)
                .ok_or_else(|| ConsoleError::new(400, "not a cursor of this activity log"))?,
            None => Cursor::default(),
        };
        let mut events = Vec::new();
        let mut scanned = 0;
        let mut next = None;
        'pages: for round in 1.. {
            let reading = self
                .state
                .audit
                .read(ACTIVITY_BATCH, &cursor, kind)
                .await
                .map_err(|e| unavailable(&e))?;
            for (after, event) in reading.events {
                scanned += 1;
                cursor = after;
                let wanted = kind.is_none_or(|k| event.kind == Some(k))
                    && client.is_none_or(|c| event.client_id.as_deref() == Some(c));
                if wanted {
                    events.push(ActivityRow {
                        at: when(event.at / 1000),
                        kind: event.kind.map_or("unknown", EventKind::as_str).to_owned(),
                        client: event
                            .client_id
                            .as_ref()
                            .map(|id| names.get(id).cloned().unwrap_or_else(|| id.clone())),
                        detail: detail(&event),
                        outcome: event.outcome.clone(),
                    });
                    if events.len() == ACTIVITY_PAGE {
                        next = (!cursor.is_done()).then(|| cursor.to_string());
                        break 'pages;
                    }
                }
            }
            cursor = reading.end;
            if cursor.is_done() {
                break;
            }
            // Bounded in events looked at, and in readings (should entries not
            // decode, a reading can look at many and yield none).
            if scanned >= ACTIVITY_SCAN || round * ACTIVITY_BATCH >= 2 * ACTIVITY_SCAN {
                next = Some(cursor.to_string());
                break;
            }
        }
        let mut clients: Vec<(String, String)> = names.into_iter().collect();
        if let Some(filtered) = client {
            if !clients.iter().any(|(id, _)| id == filtered) {
                // Not its id as its name: a link from any site chooses it, and the
                // page would show that site's words as the owner's own filter.
                clients.push((filtered.to_owned(), "a client not seen here".to_owned()));
            }
        }
        Ok(ActivityView {
            events,
            next,
            clients,
        })
    }

    fn articles_enabled(&self) -> bool {
        self.state.article_endpoint.is_some()
    }

    async fn articles(&self) -> Result<Vec<ArticleRow>, ConsoleError> {
        let mut rows = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .state
                .articles
                .list(None, MAX_PAGE, cursor.as_deref())
                .await
                .map_err(article_error)?;
            rows.extend(page.articles.into_iter().map(|a| ArticleRow {
                slug: a.slug.as_str().to_owned(),
                title: a.title,
                published: a.status == Status::Published,
                updated: when(a.updated_at),
            }));
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        Ok(rows)
    }

    async fn article(&self, slug: &str) -> Result<Option<ArticleDetail>, ConsoleError> {
        let Ok(slug) = Slug::parse(slug) else {
            return Ok(None);
        };
        match self.state.articles.get(&slug).await {
            Ok(a) => Ok(Some(ArticleDetail {
                slug: a.slug.as_str().to_owned(),
                title: a.title,
                body: a.body,
                published: a.status == Status::Published,
                created: when(a.created_at),
                updated: when(a.updated_at),
                version: a.revision,
            })),
            Err(ArticleError::NotFound(_)) => Ok(None),
            Err(e) => Err(article_error(e)),
        }
    }

    async fn save_article(
        &self,
        slug: &str,
        title: &str,
        body: &str,
        version: Option<u64>,
    ) -> Result<String, ConsoleError> {
        if !self.articles_enabled() {
            return Err(ConsoleError::new(404, "The article server is turned off."));
        }
        // Browsers send a textarea's line breaks as CRLF.
        let body = body.replace("\r\n", "\n");
        let article = match version {
            None => {
                let slug = match slug {
                    "" => None,
                    given => Some(Self::slug(given)?),
                };
                self.state.articles.create(slug, title, &body).await
            }
            Some(seen) => {
                let slug = Self::slug(slug)?;
                self.state.articles.edit(&slug, title, &body, seen).await
            }
        }
        .map_err(article_error)?;
        Ok(article.slug.as_str().to_owned())
    }

    async fn publish_article(&self, slug: &str) -> Result<(), ConsoleError> {
        let slug = Self::slug(slug)?;
        self.state
            .articles
            .publish(&slug)
            .await
            .map_err(article_error)?;
        Ok(())
    }

    async fn delete_article(&self, slug: &str) -> Result<(), ConsoleError> {
        let slug = Self::slug(slug)?;
        self.state
            .articles
            .delete(&slug)
            .await
            .map_err(article_error)
    }

    async fn checks(&self) -> Vec<CheckRow> {
        let mut last = self.checks.lock().await;
        if let Some((at, rows)) = last.as_ref() {
            if at.elapsed() < CHECKS_REUSED_FOR {
                return rows.clone();
            }
        }
        let options = crate::doctor::Options {
            register: false,
            timeout: CHECK_TIMEOUT,
            ..Default::default()
        };
        let report = crate::doctor::run_checks(
            self.state.config.public_url.as_str(),
            Some(&self.state.auth),
            &options,
        )
        .await;
        let rows: Vec<CheckRow> = report
            .checks
            .into_iter()
            .map(|c| CheckRow {
                check: c.check.to_owned(),
                ok: c.ok,
                detail: c.detail,
                fix: c.fix,
            })
            .collect();
        *last = Some((tokio::time::Instant::now(), rows.clone()));
        rows
    }
}

/// Leptos answers a call whose arguments do not parse with 500; it is the caller's
/// error: 400. A body refused by the budget for request bodies (Leptos reports it
/// as unreadable arguments, with the refusal's words) gets that refusal's status.
async fn caller_errors_are_400(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "error").into_response();
    };
    if bytes.starts_with(b"Args|") || bytes.starts_with(b"Deserialization|") {
        let text = String::from_utf8_lossy(&bytes);
        let refused = [Refused::Address, Refused::All]
            .into_iter()
            .find(|refused| text.contains(&refused.to_string()));
        let Some(refused) = refused else {
            // Past the 64 KiB a call anyone may make takes (see `guard`).
            if text.contains("length limit exceeded") {
                let unread = Unread::TOO_LARGE;
                return unread.finish((unread.status, unread.why).into_response());
            }
            parts.status = StatusCode::BAD_REQUEST;
            return Response::from_parts(parts, axum::body::Body::from(bytes));
        };
        let unread = Unread::of(&refused);
        return unread.finish((unread.status, unread.why).into_response());
    }
    Response::from_parts(parts, axum::body::Body::from(bytes))
}

fn is_console_page(path: &str) -> bool {
    path == "/console" || path.starts_with("/console/")
}

fn is_console_call(path: &str) -> bool {
    path.starts_with("/api/console/")
}

/// The console's confirmations (`?revoke=`, `?revoke_client=`, `?delete=`) put the
/// button that ends a grant or an article where the page opens. Another site that
/// opens one under the person's double-click would get the second click on it
/// ("double-clickjacking"; the buttons also hold still, see `HOLD_WHILE_AWAY`), so a
/// navigation from another site (or a sibling subdomain) gets the page without the
/// confirmation: the path to send it to instead. The console's own links are
/// same-origin, and a typed or bookmarked address says `none`.
fn confirmation_from_elsewhere(uri: &axum::http::Uri, headers: &HeaderMap) -> Option<String> {
    let site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())?;
    if site != "cross-site" && site != "same-site" {
        return None;
    }
    let confirms = form_urlencoded::parse(uri.query()?.as_bytes())
        .any(|(name, _)| CONFIRMATIONS.contains(&&*name));
    confirms.then(|| uri.path().to_owned())
}

/// The query parameters that open a confirmation (see
/// [`confirmation_from_elsewhere`]).
const CONFIRMATIONS: [&str; 3] = ["revoke", "revoke_client", "delete"];

/// A console path without the parameters that open a confirmation, for where the
/// owner goes after signing in: the sign-in's answer follows a same-origin post, so
/// a link from another site to the sign-in page (or to a confirmation, which sends a
/// signed-out owner to sign in) would otherwise land the owner on an armed button.
/// Nor does it keep a failed form's report ([`FORM_REPORT`]).
pub(crate) fn without_confirmations(path_and_query: &str) -> String {
    without(path_and_query, |name| {
        CONFIRMATIONS.contains(&name) || FORM_REPORT.contains(&name)
    })
}

/// Where Leptos's forms without JavaScript say which server function failed and
/// how (`server_fn`'s `form-redirects`): a console page shows that text as the
/// function's error, in its red alert, straight from its address. Gatehouse never
/// sends a browser there (a failed plain form gets an error page), so a console
/// address that carries them came from someone else, with words of their choosing
/// ("your password leaked, sign in at …"): the page opens without them.
const FORM_REPORT: [&str; 2] = ["__err", "__path"];

/// A console page's address without a failed form's report, when it has one.
fn without_form_report(uri: &axum::http::Uri) -> Option<String> {
    let path_and_query = uri.path_and_query()?.as_str();
    let plain = without(path_and_query, |name| FORM_REPORT.contains(&name));
    (plain != path_and_query).then_some(plain)
}

/// `path_and_query` without the query parameters `drop` names.
fn without(path_and_query: &str, drop: impl Fn(&str) -> bool) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_owned();
    };
    let pairs = form_urlencoded::parse(query.as_bytes());
    if !pairs.clone().any(|(name, _)| drop(&name)) {
        return path_and_query.to_owned();
    }
    let kept: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs.filter(|(name, _)| !drop(name)))
        .finish();
    if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{kept}")
    }
}

/// In front of the console: its pages send a visitor without a session to sign in
/// (and back); its pages and calls carry the owner pages' headers (never cached,
/// never framed); and a failed call made by a plain form (no JavaScript) gets an
/// error page rather than the server function's bare text.
pub async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (page, call) = {
        let path = request.uri().path();
        (is_console_page(path), is_console_call(path))
    };
    // Server functions anyone may call (the pages' own, and whether one is signed
    // in) take no arguments: their bodies get the 64 KiB of every other anonymous
    // request, not the console's 160 KiB.
    let anyones = {
        let path = request.uri().path();
        path.starts_with("/api/") && (!call || path == "/api/console/signed_in")
    };
    if anyones
        && request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|length| length > super::MAX_BODY_BYTES as u64)
    {
        let unread = Unread::TOO_LARGE;
        return unread.finish((unread.status, unread.why).into_response());
    }
    let request = if anyones {
        request.map(|body| {
            axum::body::Body::new(http_body_util::Limited::new(body, super::MAX_BODY_BYTES))
        })
    } else {
        request
    };
    if !page && !call {
        let server_function = request.uri().path().starts_with("/api/");
        let response = next.run(request).await;
        if server_function && response.status() == StatusCode::INTERNAL_SERVER_ERROR {
            return caller_errors_are_400(response).await;
        }
        return response;
    }
    let path = request.uri().path().to_owned();
    let headers = request.headers().clone();
    let wants_html = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    // A store that fails is not a signed-out owner: no sign-in would help.
    let signed_in = || async {
        match super::session::current_session(&state, &headers).await {
            Ok(session) => Ok(session.is_some()),
            Err(e) => {
                let page = super::oauth::unavailable_page(&e);
                let mut refused = if call && !wants_html {
                    server_error(StatusCode::SERVICE_UNAVAILABLE, e.for_caller())
                } else {
                    page.into_response()
                };
                refused
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                Err(with_owner_headers(refused))
            }
        }
    };
    // Calls take bodies of up to 160 KiB: only from the owner. (Each checks the
    // session again, and more.)
    if call && path != "/api/console/signed_in" {
        match signed_in().await {
            Err(refused) => return refused,
            Ok(true) => {}
            Ok(false) => {
                let why = "Sign in to use the console, then repeat what you did.";
                if !wants_html {
                    return with_owner_headers(server_error(StatusCode::UNAUTHORIZED, why));
                }
                return (
                    StatusCode::UNAUTHORIZED,
                    super::oauth::page_headers(),
                    app::error_document(401, "Sign in again", why),
                )
                    .into_response();
            }
        }
    }
    if page && matches!(*request.method(), Method::GET | Method::HEAD) {
        if let Some(plain) = without_form_report(request.uri()) {
            return see_other(&plain);
        }
        match signed_in().await {
            Err(refused) => return refused,
            Ok(true) => {}
            Ok(false) => {
                let return_to = request
                    .uri()
                    .path_and_query()
                    .map_or("/console", |p| p.as_str());
                let login: String = form_urlencoded::Serializer::new(String::new())
                    .append_pair("return_to", return_to)
                    .finish();
                return see_other(&format!("/oauth/login?{login}"));
            }
        }
        if let Some(plain) = confirmation_from_elsewhere(request.uri(), &headers) {
            return see_other(&plain);
        }
    }
    let mut request = request;
    if call && wants_html {
        request
            .headers_mut()
            .insert(header::REFERER, HeaderValue::from_static(FORM_RETURN));
    }
    let mut response = next.run(request).await;
    if call && wants_html {
        response = form_returned(response).await;
    }
    if call && response.status() == StatusCode::INTERNAL_SERVER_ERROR {
        response = caller_errors_are_400(response).await;
    }
    if call && !wants_html && is_error(response.status()) {
        response = in_server_function_words(response).await;
    }
    if call && wants_html && is_error(response.status()) {
        let status = response.status();
        let (title, message) = match status {
            StatusCode::UNAUTHORIZED => (
                "Sign in again",
                "Your session has ended. Sign in, then repeat what you did.",
            ),
            StatusCode::FORBIDDEN => (
                "Request refused",
                "Console actions work only from the console's own pages, in the browser that signed in. Reload the page and try again.",
            ),
            StatusCode::NOT_FOUND => ("Not found", "There is no such item any more."),
            StatusCode::CONFLICT => (
                "Not saved",
                "Something changed since you opened the page. Open it again, then redo your change.",
            ),
            s if s.is_client_error() => (
                "That did not work",
                "The form had a value the console cannot accept. Go back and check it.",
            ),
            _ => (
                "Something went wrong",
                "Gatehouse could not do that just now. Try again shortly.",
            ),
        };
        let kept = [header::RETRY_AFTER, header::CONNECTION]
            .map(|name| (name.clone(), response.headers().get(name).cloned()));
        response = (
            status,
            super::oauth::page_headers(),
            app::error_document(status.as_u16(), title, message),
        )
            .into_response();
        for (name, value) in kept {
            if let Some(value) = value {
                response.headers_mut().insert(name, value);
            }
        }
    }
    with_owner_headers(response)
}

/// Where `server_fn` sends a plain form (no JavaScript) back after its call
/// (`form-redirects`): to the request's `Referer`, with the failure in the query.
/// Browsers send none to us (`Referrer-Policy: no-referrer`), which made a failure
/// a silent redirect to `/`; the guard names this one, which cannot be anywhere,
/// and reads the failure back from it.
const FORM_RETURN: &str = "http://console.invalid/";

/// A plain form's call as `server_fn` answered it: a failure sent back to
/// [`FORM_RETURN`] becomes the error it is (a refusal by the body budget keeps its
/// status, arguments that do not parse are 400); a call that succeeded without
/// saying where to go leads to the console.
async fn form_returned(mut response: Response) -> Response {
    let location = response
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok());
    let Some(query) = location.and_then(|l| l.strip_prefix(FORM_RETURN)) else {
        return response;
    };
    let failure = form_urlencoded::parse(query.trim_start_matches('?').as_bytes())
        .find(|(name, _)| name == "__err")
        .and_then(|(_, value)| URL_SAFE.decode(value.as_bytes()).ok());
    if is_error(response.status()) {
        // A console error with its own status (`fail`).
        response.headers_mut().remove(header::LOCATION);
        return response;
    }
    match failure {
        Some(failure) => {
            caller_errors_are_400((StatusCode::INTERNAL_SERVER_ERROR, failure).into_response())
                .await
        }
        None => see_other("/console"),
    }
}

fn is_error(status: StatusCode) -> bool {
    status.is_client_error() || status.is_server_error()
}

/// What the owner pages' answers carry: never cached, never framed.
fn with_owner_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("frame-ancestors 'none'"),
    );
    response
}

/// A failed call's answer as the console's script reads one (`server_fn`'s
/// `Type|message`), so that it shows the words, not a complaint about their format.
fn server_error(status: StatusCode, why: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("ServerError|{why}"),
    )
        .into_response()
}

/// An error answer to a call from the console's script whose body is not in
/// `server_fn`'s words (a refusal by the body budget, a size limit: plain text):
/// the same words in them, with the same status and headers.
async fn in_server_function_words(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return server_error(parts.status, "Gatehouse could not do that just now.");
    };
    let text = String::from_utf8_lossy(&bytes);
    let typed = text
        .split_once('|')
        .is_some_and(|(kind, _)| !kind.is_empty() && kind.bytes().all(|b| b.is_ascii_alphabetic()));
    if typed {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    let words = format!("ServerError|{}", text.trim());
    Response::from_parts(parts, axum::body::Body::from(words))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_kind_has_words_in_the_console() {
        for kind in EventKind::ALL {
            assert!(
                app::console::EVENT_KINDS
                    .iter()
                    .any(|(name, _)| *name == kind.as_str()),
                "{kind:?}"
            );
        }
        assert_eq!(app::console::EVENT_KINDS.len(), EventKind::ALL.len());
    }

    #[test]
    fn the_csrf_token_depends_on_the_session_and_reveals_nothing_of_it() {
        let a = csrf_token("session-a");
        assert_eq!(a, csrf_token("session-a"));
        assert_ne!(a, csrf_token("session-b"));
        assert!(!a.contains("session"));
        assert_eq!(a.len(), 43);
    }

    #[test]
    fn times_read_as_utc() {
        assert_eq!(when(0), "1970-01-01 00:00:00");
        assert_eq!(when(1_764_597_785), "2025-12-01 14:03:05");
    }
}
