//! The OAuth 2.1 authorization server's domain: clients, scopes, redirect URIs, PKCE,
//! grants, codes and tokens. No HTTP types here: `crate::http::oauth` adapts requests
//! to these calls and these errors to the wire.
//!
//! [`AuthServer`] holds what every flow shares; each flow lives in its own file:
//! - [`clients`]: registration, client lookup (static, metadata document,
//!   registered) and client authentication;
//! - [`authorize`]: authorization requests, consent tickets, approve and deny;
//! - [`code`]: redeeming a code for tokens;
//! - [`refresh`]: refresh-token rotation with its grace window and reuse detection;
//! - [`revoke`]: RFC 7009 revocation;
//! - [`bearer`]: checking an access token for a protected resource;
//! - [`grants`]: the owner's list of live grants and revoking them.

pub mod authorize;
pub mod bearer;
pub mod client;
pub mod clients;
pub mod code;
pub mod error;
pub mod grace;
pub mod grants;
pub mod metadata_document;
pub mod owner;
pub mod pkce;
pub mod records;
pub mod redirect;
pub mod refresh;
pub mod revoke;
pub mod scope;
pub mod secret;
pub mod token;

use std::{sync::Arc, time::Duration};

pub use error::{AuthorizeError, ClientError, ErrorCode, RegisterError, TicketError, TokenError};

use self::{client::ClientId, redirect::RedirectUri, secret::SecretHash};
use crate::{
    audit::Audit, clock::Clock, outbound::DocumentFetcher, resource::Resources, store::SharedStore,
};

/// Codes live 10 minutes (RFC 6749 §4.1.2 recommends at most 10).
pub const CODE_TTL: Duration = Duration::from_secs(600);
/// A consent page's approve link lives as long as the code it would mint.
pub const TICKET_TTL: Duration = Duration::from_secs(600);

#[derive(Clone, Debug)]
pub struct OAuthSettings {
    /// The issuer: the public URL, byte for byte.
    pub issuer: String,
    /// The resources tokens may be issued for.
    pub resources: Arc<Resources>,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    pub refresh_grace: Duration,
    /// How long a rotated refresh token is at least remembered (see
    /// `refresh::too_soon_to_forget`); zero for no wait.
    pub refresh_reuse_window: Duration,
    /// Registered clients that never obtain a grant are forgotten after this long.
    pub unused_client_ttl: Duration,
    /// Client-ID metadata documents kept in memory at once.
    pub max_cached_documents: usize,
    pub static_client: Option<StaticClient>,
    /// Client-ID metadata documents pinned in the `--config` file: used instead of
    /// fetching, for servers that cannot reach the documents' hosts.
    pub pinned_documents: Arc<metadata_document::PinnedDocuments>,
    /// Admit client-ID metadata documents on loopback http URLs. Tests only.
    pub allow_loopback_client_metadata: bool,
}

/// A client configured by the operator, for clients that cannot register (a fixed id
/// and secret pasted into Claude.ai's advanced settings).
#[derive(Clone, Debug)]
pub struct StaticClient {
    pub client_id: ClientId,
    pub secret_hash: SecretHash,
    pub redirect_uris: Vec<RedirectUri>,
}

/// What every flow shares: the store, the settings, the clock, and the fetcher of
/// client-ID metadata documents.
pub struct AuthServer {
    store: SharedStore,
    audit: Arc<Audit>,
    settings: OAuthSettings,
    fetcher: Arc<DocumentFetcher>,
    documents: Arc<std::sync::Mutex<metadata_document::DocumentCache>>,
    /// Metadata-document fetches under way, by URL (see `AuthServer::document_client`).
    fetching: clients::Fetches,
    /// Access-token records as the guard last decoded them.
    decoded: bearer::DecodedTokens,
    clock: Clock,
}

impl AuthServer {
    /// Fails when the guarded HTTP client for metadata documents cannot be built: a
    /// start-up error, never a silently weaker client.
    pub fn new(
        store: SharedStore,
        settings: OAuthSettings,
        clock: Clock,
        audit: Arc<Audit>,
    ) -> Result<Arc<Self>, String> {
        let fetcher = DocumentFetcher::new(settings.allow_loopback_client_metadata)?;
        Ok(Arc::new(AuthServer {
            decoded: bearer::DecodedTokens::default(),
            documents: Arc::new(std::sync::Mutex::new(
                metadata_document::DocumentCache::new(settings.max_cached_documents),
            )),
            fetching: Default::default(),
            store,
            audit,
            settings,
            fetcher: Arc::new(fetcher),
            clock,
        }))
    }

    pub fn settings(&self) -> &OAuthSettings {
        &self.settings
    }

    /// The guarded fetcher of client-ID metadata documents, for the doctor's check
    /// that this server can reach the documents Claude uses.
    pub fn document_fetcher(&self) -> &DocumentFetcher {
        &self.fetcher
    }

    fn now(&self) -> u64 {
        self.clock.now_secs()
    }
}
