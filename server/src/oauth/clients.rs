//! Clients: dynamic registration (RFC 7591), lookup of the static client, of
//! client-ID metadata documents (fetched and cached) and of registered clients, and
//! client authentication at the token and revocation endpoints (RFC 6749 §2.3).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use futures::future::{BoxFuture, FutureExt, Shared};
use serde::Serialize;

use super::{
    client::{AuthMethod, Client, ClientId, ClientKind, MetadataError, RegistrationRequest},
    metadata_document,
    records::{client_key, proven_key},
    redirect::RedirectUri,
    scope::ScopeSet,
    secret::{random_token, SecretHash},
    AuthServer, ClientError, RegisterError, TokenError,
};
use crate::{
    outbound::FetchError,
    store::{decode, encode, Put},
};

/// The fetch of one metadata document, which every request naming the document
/// while it runs awaits: the client it describes, or why there is none.
type SharedFetch = Shared<BoxFuture<'static, Result<Client, FetchError>>>;

/// Fetches under way, by URL, each with a number of its own.
pub(super) type Fetches = Arc<std::sync::Mutex<HashMap<url::Url, (u64, SharedFetch)>>>;

/// Numbers the fetches, so that one ending removes its own entry, not a later one's.
static FETCH_NUMBER: AtomicU64 = AtomicU64::new(0);

/// Removes a fetch's entry when its task ends, however it ends.
struct FetchDone {
    fetches: Fetches,
    url: url::Url,
    number: u64,
}

impl Drop for FetchDone {
    fn drop(&mut self) {
        let mut fetching = self.fetches.lock().unwrap_or_else(|p| p.into_inner());
        if fetching
            .get(&self.url)
            .is_some_and(|(number, _)| *number == self.number)
        {
            fetching.remove(&self.url);
        }
    }
}

/// How the client identified itself at the token or revocation endpoint.
#[derive(Clone, Debug)]
pub enum ClientCredentials {
    Basic {
        client_id: String,
        secret: String,
    },
    /// From the form body; `secret` is absent for public clients.
    Body {
        client_id: String,
        secret: Option<String>,
    },
    Missing,
}

impl ClientCredentials {
    /// The client id it names, if any.
    pub fn client_id(&self) -> Option<&str> {
        match self {
            ClientCredentials::Basic { client_id, .. }
            | ClientCredentials::Body { client_id, .. } => Some(client_id),
            ClientCredentials::Missing => None,
        }
    }
}

/// A successful registration (RFC 7591 §3.2.1). The secret appears here once.
#[derive(Debug, Serialize)]
pub struct RegisteredClient {
    pub client_id: ClientId,
    pub client_id_issued_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret_expires_at: Option<u64>,
    pub redirect_uris: Vec<RedirectUri>,
    pub token_endpoint_auth_method: &'static str,
    pub grant_types: [&'static str; 2],
    pub response_types: [&'static str; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<ScopeSet>,
}

/// Whether the metadata document at `url` is proven (see
/// [`metadata_document::DocumentCache`]): remembered here, or in the store, which
/// keeps it for as long as the client's refresh token may live, so that after a
/// restart, and on every instance, its fetch may use the reserved places: those
/// keep a flood of slow documents from holding up Claude's refresh, and a restart
/// is when Claude's document is not cached. A store that fails counts as not
/// proven.
async fn is_proven(
    documents: &std::sync::Mutex<metadata_document::DocumentCache>,
    store: &crate::store::SharedStore,
    clock: &crate::clock::Clock,
    url: &url::Url,
) -> bool {
    fn cache(
        documents: &std::sync::Mutex<metadata_document::DocumentCache>,
    ) -> std::sync::MutexGuard<'_, metadata_document::DocumentCache> {
        documents.lock().unwrap_or_else(|p| p.into_inner())
    }
    if cache(documents).is_proven(url) {
        return true;
    }
    match store.get(&proven_key(url.as_str())).await {
        Ok(Some(_)) => {
            cache(documents).proven_elsewhere(url.as_str(), clock.now_ms());
            true
        }
        Ok(None) => false,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read whether a metadata document is proven");
            false
        }
    }
}

impl AuthServer {
    /// Every scope some resource defines: what a client may register with.
    fn known_scopes(&self) -> ScopeSet {
        self.settings.resources.all_scopes()
    }

    /// RFC 7591 dynamic registration: a fresh client id, and a fresh secret for
    /// confidential clients, of which only the hash is kept.
    pub async fn register(
        &self,
        request: RegistrationRequest,
    ) -> Result<RegisteredClient, RegisterError> {
        let valid = request
            .validate(&self.known_scopes())
            .map_err(|e| match e {
                MetadataError::InvalidRedirectUri(m) => RegisterError::InvalidRedirectUri(m),
                MetadataError::InvalidClientMetadata(m) => RegisterError::InvalidClientMetadata(m),
            })?;
        let secret = (valid.auth_method != AuthMethod::None).then(random_token);
        let client = Client {
            client_id: ClientId::random(),
            client_name: valid.client_name,
            redirect_uris: valid.redirect_uris,
            auth_method: valid.auth_method,
            secret_hash: secret.as_deref().map(SecretHash::of),
            scope: valid.scope,
            kind: ClientKind::Registered,
            issued_at: self.now(),
            has_grant: false,
            kept_at: 0,
        };
        self.store
            .put(
                &client_key(&client.client_id),
                &encode(&client)?,
                Put::ttl(self.settings.unused_client_ttl),
            )
            .await?;
        Ok(RegisteredClient {
            client_secret_expires_at: secret.as_ref().map(|_| 0),
            client_secret: secret,
            client_id: client.client_id,
            client_id_issued_at: client.issued_at,
            redirect_uris: client.redirect_uris,
            token_endpoint_auth_method: client.auth_method.as_str(),
            grant_types: ["authorization_code", "refresh_token"],
            response_types: ["code"],
            client_name: client.client_name,
            scope: client.scope,
        })
    }

    /// Finds a client: the static one, a metadata document (pinned, fetched, or
    /// cached in memory), or a registered one.
    pub async fn client(&self, raw_id: &str) -> Result<Option<Client>, ClientError> {
        let Some(client_id) = ClientId::parse(raw_id) else {
            return Ok(None);
        };
        if let Some(fixed) = &self.settings.static_client {
            if fixed.client_id == client_id {
                return Ok(Some(Client {
                    client_id,
                    client_name: None,
                    redirect_uris: fixed.redirect_uris.clone(),
                    auth_method: AuthMethod::ClientSecretPost,
                    secret_hash: Some(fixed.secret_hash.clone()),
                    scope: None,
                    kind: ClientKind::Static,
                    issued_at: 0,
                    has_grant: true,
                    kept_at: 0,
                }));
            }
        }
        if let Some(url) =
            metadata_document::document_url(raw_id, self.settings.allow_loopback_client_metadata)
        {
            let url = url.map_err(ClientError::Document)?;
            return self.document_client(&url).await.map(Some);
        }
        match self.store.get(&client_key(&client_id)).await? {
            Some(raw) => Ok(Some(decode(&raw)?)),
            None => Ok(None),
        }
    }

    /// Whether finding `raw_id` would fetch a metadata document not yet proven
    /// here: a document URL neither pinned, nor cached, nor of a client that
    /// obtained tokens. A stranger can name any host's document, so these are the
    /// fetches the HTTP layer counts per address.
    pub fn would_fetch_unproven(&self, raw_id: &str) -> bool {
        let allow_loopback = self.settings.allow_loopback_client_metadata;
        let Some(Ok(url)) = metadata_document::document_url(raw_id, allow_loopback) else {
            return false;
        };
        if self.settings.pinned_documents.get(&url).is_some() {
            return false;
        }
        let cache = self.document_cache();
        cache.get(&url, self.clock.now_ms()).is_none() && !cache.is_proven(&url)
    }

    /// Whether the client-ID metadata document at `url` is proven: its client
    /// obtained tokens here (see [`metadata_document::DocumentCache`]).
    pub async fn document_is_proven(&self, url: &url::Url) -> bool {
        is_proven(&self.documents, &self.store, &self.clock, url).await
    }

    /// Notes that the client of the metadata document at `url` obtained tokens. The
    /// store's record lives half as long again as a refresh token, and is rewritten
    /// once half a refresh token's life has passed: a refresh token renewed just
    /// before that outlives it by at most the other half.
    pub(super) async fn prove_document(&self, url: &str) {
        let ttl = self.settings.refresh_token_ttl;
        let rewrite_after = (ttl / 2).as_millis() as u64;
        let write = self
            .document_cache()
            .prove(url, self.clock.now_ms(), rewrite_after);
        if write {
            let written = self
                .store
                .put(&proven_key(url), url.as_bytes(), Put::ttl(ttl + ttl / 2))
                .await;
            match written {
                Ok(()) => self.document_cache().stored(url, self.clock.now_ms()),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot note that a metadata document is proven")
                }
            }
        }
    }

    /// Whether the operator configured `client` (the static client, a pinned
    /// document), and so vouches for its redirect URIs.
    pub fn vouched_for(&self, client: &Client) -> bool {
        match client.kind {
            ClientKind::Static => true,
            ClientKind::MetadataDocument => url::Url::parse(client.client_id.as_str())
                .is_ok_and(|url| self.settings.pinned_documents.get(&url).is_some()),
            ClientKind::Registered => false,
        }
    }

    /// A metadata-document client: pinned in the configuration (never fetched), else
    /// from the cache while the document's HTTP caching headers allow, else fetched
    /// and validated.
    async fn document_client(&self, url: &url::Url) -> Result<Client, ClientError> {
        if let Some(pinned) = self.settings.pinned_documents.get(url) {
            return Ok(pinned.client.clone());
        }
        if let Some(client) = self.document_cache().get(url, self.clock.now_ms()) {
            return Ok(client);
        }
        Ok(self.shared_fetch(url).await?)
    }

    /// The fetch of the document at `url`: the one under way, or a new one.
    ///
    /// One fetch of a document at a time: requests that name a document being
    /// fetched await that fetch and share what it found, so a flood naming one
    /// document while it is not cached (Claude's after a restart, or one served
    /// `no-store`) costs one fetch, one of the fetcher's places and one reading of
    /// the document, not one each. The fetch is a task of its own, which no
    /// request's going away cancels (nor makes start again), bounded by the
    /// fetcher's own deadline. It reads the document and caches it as its HTTP
    /// caching headers allow, then its entry goes (also if it panics), and the next
    /// request looks in the cache, then fetches anew.
    fn shared_fetch(&self, url: &url::Url) -> SharedFetch {
        let number = FETCH_NUMBER.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let shared = {
            let mut fetching = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, fetch)) = fetching.get(url) {
                return fetch.clone();
            }
            // A fetch that ended just now may have cached it: looked at again
            // under this lock, which every fetch's end takes after caching.
            if let Some(client) = self.document_cache().get(url, self.clock.now_ms()) {
                return futures::future::ready(Ok(client)).boxed().shared();
            }
            let fetch = async move {
                receiver.await.unwrap_or_else(|_| {
                    Err(FetchError {
                        reason: "the metadata document could not be fetched".into(),
                        transient: true,
                    })
                })
            }
            .boxed()
            .shared();
            fetching.insert(url.clone(), (number, fetch.clone()));
            fetch
        };
        let done = FetchDone {
            fetches: self.fetching.clone(),
            url: url.clone(),
            number,
        };
        let (fetcher, documents, clock, store) = (
            self.fetcher.clone(),
            self.documents.clone(),
            self.clock.clone(),
            self.store.clone(),
        );
        let (scopes, url) = (self.known_scopes(), url.clone());
        // Spawned once the entry is in place and the lock is let go: a runtime that
        // is stopping drops the task at once, and `done` takes the lock.
        tokio::spawn(async move {
            let _done = done;
            let found = async {
                // Asked once per fetch, not once per request waiting on it.
                let known = is_proven(&documents, &store, &clock, &url).await;
                let fetched = fetcher.fetch(&url, known).await?;
                let client = metadata_document::client_from_document(
                    &url,
                    &fetched.body,
                    &scopes,
                    clock.now_secs(),
                )
                .map_err(|reason| FetchError {
                    reason,
                    transient: false,
                })?;
                if let Some(max_age) = fetched.max_age {
                    let now_ms = clock.now_ms();
                    let expires = now_ms + max_age.as_millis() as u64;
                    documents.lock().unwrap_or_else(|p| p.into_inner()).insert(
                        &url,
                        client.clone(),
                        expires,
                        now_ms,
                    );
                }
                Ok(client)
            };
            let _ = sender.send(found.await);
        });
        shared
    }

    pub(super) fn document_cache(
        &self,
    ) -> std::sync::MutexGuard<'_, metadata_document::DocumentCache> {
        self.documents.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps a registered client that obtains tokens for as long as the refresh
    /// token it gets may live, and `--unused-client-ttl` more: renewed at a code
    /// redemption, and at a refresh once half of that margin has passed (so a
    /// record is rewritten at most about twice a margin, not at every refresh). A
    /// client thus outlives its grants, and is forgotten once they are all gone,
    /// instead of being kept for good after its first grant.
    pub(super) async fn keep_client(&self, client: &Client) -> Result<(), TokenError> {
        if client.kind != ClientKind::Registered {
            return Ok(());
        }
        let now = self.now();
        let margin = self.settings.unused_client_ttl.as_secs();
        if client.has_grant && now.saturating_sub(client.kept_at) < margin / 2 {
            return Ok(());
        }
        let kept = encode(&Client {
            has_grant: true,
            kept_at: now,
            ..client.clone()
        })?;
        let life = self.settings.refresh_token_ttl + self.settings.unused_client_ttl;
        self.store
            .put(&client_key(&client.client_id), &kept, Put::ttl(life))
            .await?;
        Ok(())
    }

    /// RFC 6749 §2.3 and RFC 7591: the client must authenticate the way it registered.
    /// Secrets are compared through their hashes in constant time.
    pub async fn authenticate(
        &self,
        credentials: &ClientCredentials,
    ) -> Result<Client, TokenError> {
        let basic = matches!(credentials, ClientCredentials::Basic { .. });
        let refuse = |description: &str| TokenError::InvalidClient {
            description: description.to_owned(),
            basic,
        };
        let (client_id, secret) = match credentials {
            ClientCredentials::Basic { client_id, secret } => (client_id, Some(secret)),
            ClientCredentials::Body { client_id, secret } => (client_id, secret.as_ref()),
            ClientCredentials::Missing => return Err(refuse("client authentication is required")),
        };
        let client = match self.client(client_id).await {
            Ok(Some(client)) => client,
            Ok(None) => return Err(refuse("unknown client; register again")),
            Err(ClientError::Document(reason)) => return Err(refuse(&reason)),
            Err(ClientError::Unavailable(reason)) => return Err(TokenError::Unavailable(reason)),
            Err(ClientError::Store(e)) => return Err(e.into()),
        };
        let method_used = match (basic, secret) {
            (true, _) => AuthMethod::ClientSecretBasic,
            (false, Some(_)) => AuthMethod::ClientSecretPost,
            (false, None) => AuthMethod::None,
        };
        let static_post_or_basic =
            client.kind == ClientKind::Static && method_used != AuthMethod::None;
        if method_used != client.auth_method && !static_post_or_basic {
            return Err(refuse(&format!(
                "this client must authenticate with {}",
                client.auth_method.as_str()
            )));
        }
        if let (Some(secret), Some(hash)) = (secret, &client.secret_hash) {
            if !hash.matches(secret) {
                return Err(refuse("client authentication failed"));
            }
        }
        Ok(client)
    }
}
