//! The owner's console: connected apps, activity, articles and connection help.
//!
//! The pages ([`pages`]) read and act through the server functions below, all under
//! `/api/console/`. Each one asks the server's [`ConsoleBackend`] (provided as
//! context) to authorize the request first: the owner's session for everything, and
//! for every call that changes something also a same-origin request and the
//! session's CSRF token. The data types travel between server and browser; they hold
//! display-ready strings, so that the server's rendering and the browser's hydration
//! agree.

use leptos::prelude::*;
use serde::{Deserialize, Serialize};

use crate::McpEndpoint;

pub mod pages;

/// A live grant, as the Connected apps table shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRow {
    pub grant: String,
    pub client_id: String,
    pub client_name: String,
    /// How the client is identified: a metadata document's host (`claude.ai`), the
    /// static client, self-registered (it chose its own name), or unknown.
    pub identity: String,
    /// Whether anything but the client itself vouches for its name.
    pub verified: bool,
    pub redirect_hosts: Vec<String>,
    pub scopes: String,
    pub resource: String,
    pub approved: String,
    /// Approved a moment ago, its code not yet redeemed.
    pub pending: bool,
    /// When a token of this grant was last used; updated about once a minute.
    pub last_used: Option<String>,
    pub calls_last_day: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppsView {
    /// The token every form that changes something carries.
    pub csrf: String,
    pub apps: Vec<AppRow>,
}

/// One line of the activity log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityRow {
    pub at: String,
    /// The kind's stable name (`tool_call`), one of [`EVENT_KINDS`].
    pub kind: String,
    pub client: Option<String>,
    /// Whatever else the event carries, in words: the address of a sign-in, the
    /// scopes of a consent, a tool call's tool, outcome and duration.
    pub detail: String,
    /// `ok`, `error`, `denied`, or nothing.
    pub outcome: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityView {
    pub events: Vec<ActivityRow>,
    /// The cursor of the next (older) page, when there is one.
    pub next: Option<String>,
    /// The clients to filter by: (client id, name).
    pub clients: Vec<(String, String)>,
}

/// The kinds of events in the activity log: (stable name, words).
pub const EVENT_KINDS: [(&str, &str); 11] = [
    ("sign_in_succeeded", "Sign-in succeeded"),
    ("sign_in_failed", "Sign-in failed"),
    ("consent_approved", "Consent approved"),
    ("consent_denied", "Consent denied"),
    ("client_registered", "Client registered"),
    ("code_redeemed", "Code redeemed"),
    ("token_refreshed", "Token refreshed"),
    ("refresh_reuse_detected", "Refresh-token reuse detected"),
    ("token_revoked", "Token revoked"),
    ("grant_revoked", "Access revoked"),
    ("tool_call", "Tool call"),
];

fn kind_words(kind: &str) -> &str {
    EVENT_KINDS
        .iter()
        .find(|(name, _)| *name == kind)
        .map_or(kind, |(_, words)| words)
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArticleRow {
    pub slug: String,
    pub title: String,
    pub published: bool,
    pub updated: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArticlesView {
    pub csrf: String,
    pub articles: Vec<ArticleRow>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArticleDetail {
    pub slug: String,
    pub title: String,
    pub body: String,
    pub published: bool,
    pub created: String,
    pub updated: String,
    /// The version the edit form was opened on (the article's revision): a save
    /// over a newer version is refused instead of losing it.
    pub version: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArticleView {
    pub csrf: String,
    /// `None` when the articles are turned off or there is no such article.
    pub article: Option<ArticleDetail>,
    /// Whether the built-in article server is on.
    pub enabled: bool,
}

/// One line of the doctor's checklist.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRow {
    pub check: String,
    pub ok: bool,
    pub detail: String,
    pub fix: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectView {
    pub public_url: String,
    pub endpoints: Vec<McpEndpoint>,
    /// The doctor's checks against this server's public URL, when asked for.
    pub checks: Option<Vec<CheckRow>>,
}

/// What a console call failed with: the HTTP status and words for the owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleError {
    pub status: u16,
    pub message: String,
}

impl ConsoleError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        ConsoleError {
            status,
            message: message.into(),
        }
    }
}

/// The server's side of the console: authorization and the data behind each page.
#[cfg(feature = "ssr")]
#[async_trait::async_trait]
pub trait ConsoleBackend: Send + Sync + 'static {
    /// Whether the request carries the owner's live session.
    async fn signed_in(&self, headers: &http::HeaderMap) -> bool;
    /// Authorizes a console call: the owner's session, and for a call that changes
    /// something (`csrf` given) a same-origin request carrying the session's token.
    /// Returns the session's CSRF token.
    async fn authorize(
        &self,
        headers: &http::HeaderMap,
        csrf: Option<&str>,
    ) -> Result<String, ConsoleError>;
    async fn apps(&self) -> Result<Vec<AppRow>, ConsoleError>;
    async fn revoke_grant(&self, grant: &str) -> Result<(), ConsoleError>;
    /// Returns how many grants were revoked.
    async fn revoke_client(&self, client_id: &str) -> Result<usize, ConsoleError>;
    async fn activity(
        &self,
        client: Option<&str>,
        kind: Option<&str>,
        before: Option<&str>,
    ) -> Result<ActivityView, ConsoleError>;
    fn articles_enabled(&self) -> bool;
    async fn articles(&self) -> Result<Vec<ArticleRow>, ConsoleError>;
    async fn article(&self, slug: &str) -> Result<Option<ArticleDetail>, ConsoleError>;
    /// Creates (`version` is `None`) or edits an article; returns its slug.
    async fn save_article(
        &self,
        slug: &str,
        title: &str,
        body: &str,
        version: Option<u64>,
    ) -> Result<String, ConsoleError>;
    async fn publish_article(&self, slug: &str) -> Result<(), ConsoleError>;
    async fn delete_article(&self, slug: &str) -> Result<(), ConsoleError>;
    /// The doctor's checks against the public URL.
    async fn checks(&self) -> Vec<CheckRow>;
}

#[cfg(feature = "ssr")]
mod ssr {
    use std::sync::Arc;

    use leptos::prelude::*;

    use super::{ConsoleBackend, ConsoleError};

    /// The backend and the session's CSRF token, once the request is authorized.
    pub async fn owner(
        csrf: Option<&str>,
    ) -> Result<(Arc<dyn ConsoleBackend>, String), ServerFnError> {
        let backend = use_context::<Arc<dyn ConsoleBackend>>()
            .ok_or_else(|| ServerFnError::new("the console is not configured"))?;
        let headers = use_context::<http::request::Parts>()
            .map(|parts| parts.headers)
            .unwrap_or_default();
        match backend.authorize(&headers, csrf).await {
            Ok(token) => Ok((backend, token)),
            Err(e) => Err(fail(e)),
        }
    }

    /// The error for the caller, with its status on the response.
    pub fn fail(error: ConsoleError) -> ServerFnError {
        if let Some(response) = use_context::<leptos_axum::ResponseOptions>() {
            if let Ok(status) = http::StatusCode::from_u16(error.status) {
                response.set_status(status);
            }
        }
        ServerFnError::new(error.message)
    }

    /// After a change, back to `to`: a plain form post (no JavaScript) follows the
    /// redirect, and the hydrated page navigates there.
    pub fn then_go(to: &str) {
        // `redirect` panics on a value that cannot be a header; ours are built from
        // checked slugs, but a refusal is better than a panic.
        if http::HeaderValue::from_str(to).is_ok() {
            leptos_axum::redirect(to);
        }
    }
}

/// Whether the owner is signed in (the home page links the console then).
#[server(prefix = "/api/console", endpoint = "signed_in")]
pub async fn console_signed_in() -> Result<bool, ServerFnError> {
    let Some(backend) = use_context::<std::sync::Arc<dyn ConsoleBackend>>() else {
        return Ok(false);
    };
    let headers = use_context::<http::request::Parts>()
        .map(|parts| parts.headers)
        .unwrap_or_default();
    Ok(backend.signed_in(&headers).await)
}

#[server(prefix = "/api/console", endpoint = "apps")]
pub async fn console_apps() -> Result<AppsView, ServerFnError> {
    let (backend, csrf) = ssr::owner(None).await?;
    let apps = backend.apps().await.map_err(ssr::fail)?;
    Ok(AppsView { csrf, apps })
}

#[server(prefix = "/api/console", endpoint = "revoke_grant")]
pub async fn revoke_grant(csrf: String, grant: String) -> Result<(), ServerFnError> {
    let (backend, _) = ssr::owner(Some(&csrf)).await?;
    backend.revoke_grant(&grant).await.map_err(ssr::fail)?;
    ssr::then_go("/console");
    Ok(())
}

#[server(prefix = "/api/console", endpoint = "revoke_client")]
pub async fn revoke_client(csrf: String, client_id: String) -> Result<usize, ServerFnError> {
    let (backend, _) = ssr::owner(Some(&csrf)).await?;
    let revoked = backend.revoke_client(&client_id).await.map_err(ssr::fail)?;
    ssr::then_go("/console");
    Ok(revoked)
}

#[server(prefix = "/api/console", endpoint = "activity")]
pub async fn console_activity(
    client: Option<String>,
    kind: Option<String>,
    before: Option<String>,
) -> Result<ActivityView, ServerFnError> {
    let (backend, _) = ssr::owner(None).await?;
    let nonempty = |v: &Option<String>| v.as_deref().filter(|s| !s.is_empty()).map(str::to_owned);
    backend
        .activity(
            nonempty(&client).as_deref(),
            nonempty(&kind).as_deref(),
            nonempty(&before).as_deref(),
        )
        .await
        .map_err(ssr::fail)
}

#[server(prefix = "/api/console", endpoint = "articles")]
pub async fn console_articles() -> Result<ArticlesView, ServerFnError> {
    let (backend, csrf) = ssr::owner(None).await?;
    let articles = backend.articles().await.map_err(ssr::fail)?;
    Ok(ArticlesView { csrf, articles })
}

#[server(prefix = "/api/console", endpoint = "article")]
pub async fn console_article(slug: String) -> Result<ArticleView, ServerFnError> {
    let (backend, csrf) = ssr::owner(None).await?;
    let enabled = backend.articles_enabled();
    let article = if slug == "new" || !enabled {
        None
    } else {
        backend.article(&slug).await.map_err(ssr::fail)?
    };
    Ok(ArticleView {
        csrf,
        article,
        enabled,
    })
}

/// Creates an article (`version` empty) or saves an edit of the version the form
/// was opened on.
#[server(prefix = "/api/console", endpoint = "save_article")]
pub async fn save_article(
    csrf: String,
    slug: String,
    title: String,
    body: String,
    version: String,
) -> Result<String, ServerFnError> {
    let (backend, _) = ssr::owner(Some(&csrf)).await?;
    let version = match version.trim() {
        "" => None,
        v => Some(v.parse::<u64>().map_err(|_| {
            ssr::fail(ConsoleError::new(400, "the form's version is not a number"))
        })?),
    };
    let slug = backend
        .save_article(slug.trim(), &title, &body, version)
        .await
        .map_err(ssr::fail)?;
    ssr::then_go(&format!("/console/articles/{slug}?saved=1"));
    Ok(slug)
}

#[server(prefix = "/api/console", endpoint = "publish_article")]
pub async fn publish_article(csrf: String, slug: String) -> Result<(), ServerFnError> {
    let (backend, _) = ssr::owner(Some(&csrf)).await?;
    backend.publish_article(&slug).await.map_err(ssr::fail)?;
    ssr::then_go(&format!("/console/articles/{slug}"));
    Ok(())
}

#[server(prefix = "/api/console", endpoint = "delete_article")]
pub async fn delete_article(csrf: String, slug: String) -> Result<(), ServerFnError> {
    let (backend, _) = ssr::owner(Some(&csrf)).await?;
    backend.delete_article(&slug).await.map_err(ssr::fail)?;
    ssr::then_go("/console/articles");
    Ok(())
}

/// The MCP URLs and, with `check`, the doctor's checks run by the server against its
/// own public URL.
#[server(prefix = "/api/console", endpoint = "connect")]
pub async fn console_connect(check: bool) -> Result<ConnectView, ServerFnError> {
    let (backend, _) = ssr::owner(None).await?;
    let info = use_context::<crate::SiteInfo>()
        .ok_or_else(|| ServerFnError::new("site information is not configured"))?;
    let checks = if check {
        Some(backend.checks().await)
    } else {
        None
    };
    Ok(ConnectView {
        public_url: info.public_url,
        endpoints: info.endpoints,
        checks,
    })
}
