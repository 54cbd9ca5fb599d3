//! Whether this server can use the client-ID metadata documents Claude identifies
//! itself with. Claude Code sends its document's URL as `client_id` whenever the
//! server advertises `client_id_metadata_document_supported`, so a server that cannot
//! fetch it (no outbound access, a firewall) fails every Claude Code sign-in. The
//! check runs inside the server, through its own guarded fetcher: only the server's
//! network position matters, not the doctor's.

use url::Url;

use super::{fixes, Check};
use crate::oauth::{metadata_document, AuthServer};

/// The documents Claude Code and Claude.ai use (see SPEC-NOTES), with their checks'
/// names.
pub const CLAUDE_DOCUMENTS: [(&str, &str); 2] = [
    (
        "claude-code-client-metadata",
        "https://claude.ai/oauth/claude-code-client-metadata",
    ),
    (
        "claude-ai-client-metadata",
        "https://claude.ai/oauth/mcp-oauth-client-metadata",
    ),
];

/// [`check_client_document`] for each of [`CLAUDE_DOCUMENTS`], concurrently.
pub async fn check_client_documents(auth: &AuthServer) -> Vec<Check> {
    futures::future::join_all(
        CLAUDE_DOCUMENTS
            .iter()
            .map(|(name, url)| check_client_document(auth, name, url)),
    )
    .await
}

/// Whether `auth` can use the document at `url`: pinned in the configuration, or
/// fetched now by its own fetcher (SSRF guard, size and time limits; the cache is
/// bypassed, so the answer is about now) and valid by the same rules as at sign-in.
pub async fn check_client_document(auth: &AuthServer, name: &'static str, url: &str) -> Check {
    let parsed = match Url::parse(url) {
        Ok(parsed) => parsed,
        Err(e) => {
            return Check::fail(
                name,
                format!("{url:?} is not a URL: {e}"),
                "Name a client-ID metadata document's https URL.",
            )
        }
    };
    if let Some(pinned) = auth.settings().pinned_documents.get(&parsed) {
        return Check::pass(
            name,
            format!(
                "{url} is pinned in the configuration (from {}); it is never fetched",
                pinned.file.display()
            ),
        );
    }
    let host = parsed.host_str().unwrap_or(url);
    // Claude's documents may use the places kept for known clients: anonymous
    // fetches holding the others must not make the doctor blame the network.
    let fetched = match auth.document_fetcher().fetch(&parsed, true).await {
        Ok(fetched) => fetched,
        Err(reason) => {
            return Check::fail(
                name,
                format!("this server could not fetch {url}: {reason}"),
                fixes::pin_document(url, host),
            )
        }
    };
    let known = auth.settings().resources.all_scopes();
    match metadata_document::client_from_document(&parsed, &fetched.body, &known, 0) {
        Ok(client) => Check::pass(
            name,
            format!(
                "this server fetched {url}: a valid document with {} redirect URIs",
                client.redirect_uris.len()
            ),
        ),
        Err(reason) => Check::fail(
            name,
            format!("this server fetched {url}, but cannot use it: {reason}"),
            format!(
                "Something between this server and {host} changes the document (a proxy or a \
                 captive portal?), or the document changed. Pin a valid copy in the --config \
                 file ([[client_document]], README: \"Pinned client metadata documents\")."
            ),
        ),
    }
}
