//! The authorization server's rules: which authorization requests are valid, how a
//! consent ticket becomes a code, how codes and refresh tokens become tokens, and how
//! grants are revoked. Storage goes through [`Store`](crate::store::Store); nothing
//! here knows about HTTP.

use std::{sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};

use super::{
    client::{AuthMethod, Client, ClientKind, MetadataError, RegistrationRequest},
    grace, metadata_document, now_secs,
    pkce::CodeChallenge,
    redirect::RedirectUri,
    scope::{Scope, ScopeSet},
    secret::{random_id, random_token, GrantToken, SecretHash, TokenKind},
};
use crate::{
    outbound::DocumentFetcher,
    store::{Group, Key, Put, SharedStore, StoreError},
};

/// Codes live 10 minutes (RFC 6749 §4.1.2 recommends at most 10).
pub const CODE_TTL: Duration = Duration::from_secs(600);
/// A consent page's approve link lives as long as the code it would mint.
pub const TICKET_TTL: Duration = Duration::from_secs(600);

#[derive(Clone, Debug)]
pub struct OAuthSettings {
    /// The issuer: the public URL, byte for byte.
    pub issuer: String,
    /// The one resource we serve: `<issuer>/mcp`.
    pub resource: String,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    pub refresh_grace: Duration,
    /// Registered clients that never obtain a grant are forgotten after this long.
    pub unused_client_ttl: Duration,
    pub static_client: Option<StaticClient>,
    /// Admit client-ID metadata documents on loopback http URLs. Tests only.
    pub allow_loopback_client_metadata: bool,
}

/// A client configured by the operator, for clients that cannot register (a fixed id
/// and secret pasted into Claude.ai's advanced settings).
#[derive(Clone, Debug)]
pub struct StaticClient {
    pub client_id: String,
    pub secret_hash: SecretHash,
    pub redirect_uris: Vec<RedirectUri>,
}

pub struct AuthServer {
    store: SharedStore,
    settings: OAuthSettings,
    fetcher: DocumentFetcher,
}

/// Why a client could not be looked up.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The client's metadata document is unusable (unreachable, invalid, not public).
    #[error("{0}")]
    Document(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

// ---------------------------------------------------------------------------------
// Errors, one type per endpoint. The HTTP layer maps each to the wire.

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("{0}")]
    InvalidRedirectUri(String),
    #[error("{0}")]
    InvalidClientMetadata(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A failed authorization request. RFC 6749 §4.1.2.1: while the client or redirect URI
/// is in doubt, the error is shown to the person and never sent to the URI.
#[derive(Debug, thiserror::Error)]
pub enum AuthorizeError {
    #[error("{title}: {message}")]
    Page {
        title: &'static str,
        message: String,
    },
    #[error("{error}: {description}")]
    Redirect {
        redirect_uri: RedirectUri,
        error: &'static str,
        description: String,
        state: Option<String>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why an approve or deny link did nothing.
#[derive(Debug, thiserror::Error)]
pub enum TicketError {
    #[error("this approval link is not valid: it expired, was already used, or belongs to another sign-in")]
    Invalid,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// RFC 6749 §5.2 errors.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("invalid_request: {0}")]
    InvalidRequest(String),
    /// `basic` is whether the client tried HTTP Basic (the answer then carries
    /// `WWW-Authenticate: Basic`).
    #[error("invalid_client: {description}")]
    InvalidClient { description: String, basic: bool },
    #[error("invalid_grant: {0}")]
    InvalidGrant(String),
    #[error("unsupported_grant_type: {0}")]
    UnsupportedGrantType(String),
    #[error("invalid_scope: {0}")]
    InvalidScope(String),
    #[error("invalid_target: {0}")]
    InvalidTarget(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<serde_json::Error> for TokenError {
    fn from(e: serde_json::Error) -> Self {
        TokenError::Store(StoreError::Backend(format!("corrupt record: {e}")))
    }
}

impl From<serde_json::Error> for AuthorizeError {
    fn from(e: serde_json::Error) -> Self {
        AuthorizeError::Store(StoreError::Backend(format!("corrupt record: {e}")))
    }
}

impl From<serde_json::Error> for TicketError {
    fn from(e: serde_json::Error) -> Self {
        TicketError::Store(StoreError::Backend(format!("corrupt record: {e}")))
    }
}

fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Backend(format!("corrupt record: {e}"))
}

// ---------------------------------------------------------------------------------
// Requests and records.

/// The query of `GET /oauth/authorize`, as sent.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct AuthorizeParams {
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub response_type: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub scope: Option<String>,
    pub state: Option<String>,
    pub resource: Option<String>,
}

/// An authorization request that passed every check, waiting for the owner.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PendingAuthorization {
    pub client_id: String,
    pub client_name: String,
    pub client_kind: ClientKind,
    pub redirect_uri: RedirectUri,
    /// Whether the request named the redirect URI (then the token request must too).
    pub redirect_uri_explicit: bool,
    pub challenge: CodeChallenge,
    pub scopes: ScopeSet,
    /// Requested scopes we do not know, shown on the consent page and not granted.
    pub ignored_scopes: Vec<String>,
    pub resource: String,
    pub state: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Ticket {
    session: SecretHash,
    request: PendingAuthorization,
}

/// What a grant binds: who, which client, which scopes, which resource.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Grant {
    pub id: String,
    pub subject: String,
    pub client_id: String,
    pub scopes: ScopeSet,
    pub resource: String,
    pub created_at: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct CodeRecord {
    used: bool,
    client_id: String,
    redirect_uri: RedirectUri,
    redirect_uri_explicit: bool,
    challenge: CodeChallenge,
    scopes: ScopeSet,
    resource: String,
    subject: String,
    expires_at: u64,
}

/// What a valid access token grants; the MCP layer reads this.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessToken {
    pub subject: String,
    pub client_id: String,
    pub scopes: ScopeSet,
    pub resource: String,
    pub expires_at: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum RefreshRecord {
    Active {
        subject: String,
        client_id: String,
        scopes: ScopeSet,
        resource: String,
    },
    /// Rotated at `at`; `successor` is the sealed [`TokenResponse`] (see `grace`).
    Rotated {
        client_id: String,
        at: u64,
        successor: String,
    },
}

/// RFC 6749 §5.1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: u64,
    pub refresh_token: String,
    pub scope: String,
}

/// The form of `POST /oauth/token`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct TokenParams {
    pub grant_type: Option<String>,
    pub code: Option<String>,
    pub redirect_uri: Option<String>,
    pub code_verifier: Option<String>,
    pub refresh_token: Option<String>,
    pub scope: Option<String>,
    pub resource: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
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

/// A successful registration (RFC 7591 §3.2.1). The secret appears here once.
#[derive(Debug, Serialize)]
pub struct RegisteredClient {
    pub client_id: String,
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

fn client_key(client_id: &str) -> Key {
    Key::new("client", client_id)
}

fn grant_key(grant: &Group) -> Key {
    Key::in_group("grant", grant, "record")
}

fn token_key(token: &GrantToken) -> Key {
    let kind = match token.kind {
        TokenKind::Code => "code",
        TokenKind::Access => "at",
        TokenKind::Refresh => "rt",
    };
    Key::in_group(kind, &token.grant, token.hash.as_str())
}

const OWNER: &str = "owner";

impl AuthServer {
    pub fn new(store: SharedStore, settings: OAuthSettings) -> Arc<Self> {
        let fetcher = DocumentFetcher::new(settings.allow_loopback_client_metadata);
        Arc::new(AuthServer {
            store,
            settings,
            fetcher,
        })
    }

    // ----- clients ---------------------------------------------------------------

    /// RFC 7591 dynamic registration: a fresh client id, and a fresh secret for
    /// confidential clients, of which only the hash is kept.
    pub async fn register(
        &self,
        request: RegistrationRequest,
    ) -> Result<RegisteredClient, RegisterError> {
        let valid = request.validate().map_err(|e| match e {
            MetadataError::InvalidRedirectUri(m) => RegisterError::InvalidRedirectUri(m),
            MetadataError::InvalidClientMetadata(m) => RegisterError::InvalidClientMetadata(m),
        })?;
        let secret = (valid.auth_method != AuthMethod::None).then(random_token);
        let client = Client {
            client_id: random_id(),
            client_name: valid.client_name,
            redirect_uris: valid.redirect_uris,
            auth_method: valid.auth_method,
            secret_hash: secret.as_deref().map(SecretHash::of),
            scope: valid.scope,
            kind: ClientKind::Registered,
            issued_at: now_secs(),
            has_grant: false,
        };
        let record = serde_json::to_vec(&client).map_err(corrupt)?;
        self.store
            .put(
                &client_key(&client.client_id),
                &record,
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

    /// Finds a client: the static one, a metadata document (fetched, or cached in the
    /// store), or a registered one.
    pub async fn client(&self, client_id: &str) -> Result<Option<Client>, ClientError> {
        if let Some(fixed) = &self.settings.static_client {
            if fixed.client_id == client_id {
                return Ok(Some(Client {
                    client_id: fixed.client_id.clone(),
                    client_name: None,
                    redirect_uris: fixed.redirect_uris.clone(),
                    auth_method: AuthMethod::ClientSecretPost,
                    secret_hash: Some(fixed.secret_hash.clone()),
                    scope: None,
                    kind: ClientKind::Static,
                    issued_at: 0,
                    has_grant: true,
                }));
            }
        }
        if let Some(url) =
            metadata_document::document_url(client_id, self.settings.allow_loopback_client_metadata)
        {
            let url = url.map_err(ClientError::Document)?;
            return self.document_client(&url).await.map(Some);
        }
        if client_id.is_empty() || client_id.len() > 256 {
            return Ok(None);
        }
        match self.store.get(&client_key(client_id)).await? {
            Some(raw) => Ok(Some(serde_json::from_slice(&raw).map_err(corrupt)?)),
            None => Ok(None),
        }
    }

    /// A metadata-document client, from the cache while the document's HTTP caching
    /// headers allow, else fetched and validated.
    async fn document_client(&self, url: &url::Url) -> Result<Client, ClientError> {
        let cache_key = Key::new("cimd", SecretHash::of(url.as_str()).as_str());
        if let Some(raw) = self.store.get(&cache_key).await? {
            if let Ok(client) = serde_json::from_slice(&raw) {
                return Ok(client);
            }
        }
        let fetched = self
            .fetcher
            .fetch(url)
            .await
            .map_err(ClientError::Document)?;
        let client = metadata_document::client_from_document(url, &fetched.body)
            .map_err(ClientError::Document)?;
        if let Some(max_age) = fetched.max_age {
            let record = serde_json::to_vec(&client).map_err(corrupt)?;
            self.store
                .put(&cache_key, &record, Put::ttl(max_age))
                .await?;
        }
        Ok(client)
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

    // ----- authorization ---------------------------------------------------------

    /// Validates an authorization request in the order RFC 6749 §4.1.2.1 requires:
    /// client, then redirect URI (errors shown, never redirected), then the rest
    /// (errors redirected to the client with `state` and `iss`).
    pub async fn validate_authorization(
        &self,
        params: AuthorizeParams,
    ) -> Result<PendingAuthorization, AuthorizeError> {
        let page = |title: &'static str, message: String| AuthorizeError::Page { title, message };
        let client_id = params
            .client_id
            .as_deref()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| page("Missing client", "The request names no client_id.".into()))?;
        let client = match self.client(client_id).await {
            Ok(Some(client)) => client,
            Ok(None) => {
                return Err(page(
                    "Unknown client",
                    "This client is not registered here. Remove the connection from your app and add it again."
                        .into(),
                ))
            }
            Err(ClientError::Document(reason)) => {
                return Err(page("Client metadata unavailable", format!("{reason}.")))
            }
            Err(ClientError::Store(e)) => return Err(e.into()),
        };

        let (redirect_uri, explicit) = match params.redirect_uri.as_deref() {
            Some(raw) => {
                let requested = RedirectUri::parse(raw)
                    .map_err(|e| page("Invalid redirect URI", format!("The redirect_uri {e}.")))?;
                if client.redirect_uri_for(&requested).is_none() {
                    return Err(page(
                        "Unregistered redirect URI",
                        format!(
                            "The redirect_uri {raw:?} is not one this client registered, so no code will be sent there."
                        ),
                    ));
                }
                (requested, true)
            }
            // OAuth 2.1 §4.1.1: optional only when the client registered exactly one.
            None => {
                match client.redirect_uris.as_slice() {
                    [only] => (only.clone(), false),
                    _ => return Err(page(
                        "Missing redirect URI",
                        "This client registered several redirect URIs; the request must name one."
                            .into(),
                    )),
                }
            }
        };

        let state = params.state.clone();
        let fail = |error: &'static str, description: String| AuthorizeError::Redirect {
            redirect_uri: redirect_uri.clone(),
            error,
            description,
            state: state.clone(),
        };
        match params.response_type.as_deref() {
            Some("code") => {}
            None => return Err(fail("invalid_request", "response_type is required".into())),
            Some(other) => {
                return Err(fail(
                    "unsupported_response_type",
                    format!("response_type {other:?} is not supported; use code"),
                ))
            }
        }
        let challenge = CodeChallenge::parse(
            params.code_challenge.as_deref(),
            params.code_challenge_method.as_deref(),
        )
        .map_err(|e| fail("invalid_request", e.into()))?;

        let (scopes, ignored_scopes) = match params.scope.as_deref() {
            Some(raw) if !raw.trim().is_empty() => {
                let parsed = ScopeSet::parse(raw);
                if parsed.known.is_empty() {
                    return Err(fail(
                        "invalid_scope",
                        format!(
                            "none of the requested scopes exist here; use {}",
                            ScopeSet::all()
                        ),
                    ));
                }
                (parsed.known, parsed.unknown)
            }
            // No scope: what the client registered, else the least: read only.
            _ => (
                client.scope.unwrap_or(ScopeSet::only(Scope::ReadArticles)),
                Vec::new(),
            ),
        };

        let resource = match params.resource.as_deref() {
            None => self.settings.resource.clone(),
            Some(r) if r == self.settings.resource => r.to_owned(),
            Some(r) => {
                return Err(fail(
                    "invalid_target",
                    format!(
                        "this server does not serve the resource {r:?}; it serves {}",
                        self.settings.resource
                    ),
                ))
            }
        };

        Ok(PendingAuthorization {
            client_id: client.client_id.clone(),
            client_name: client.display_name().to_owned(),
            client_kind: client.kind,
            redirect_uri,
            redirect_uri_explicit: explicit,
            challenge,
            scopes,
            ignored_scopes,
            resource,
            state: params.state,
        })
    }

    /// The redirect that carries an error back to the client (RFC 6749 §4.1.2.1 with
    /// RFC 9207's `iss`).
    pub fn error_redirect(
        &self,
        redirect_uri: &RedirectUri,
        error: &str,
        description: &str,
        state: Option<&str>,
    ) -> String {
        let mut params = vec![("error", error), ("error_description", description)];
        if let Some(state) = state {
            params.push(("state", state));
        }
        params.push(("iss", &self.settings.issuer));
        redirect_uri.with_params(&params)
    }

    /// Creates the single-use ticket behind the consent page's approve and deny links,
    /// bound to this sign-in session and this request.
    pub async fn create_ticket(
        &self,
        session: &SecretHash,
        request: PendingAuthorization,
    ) -> Result<String, StoreError> {
        let ticket = random_token();
        let record = serde_json::to_vec(&Ticket {
            session: session.clone(),
            request,
        })
        .map_err(corrupt)?;
        self.store
            .put(
                &Key::new("ticket", SecretHash::of(&ticket).as_str()),
                &record,
                Put::ttl(TICKET_TTL),
            )
            .await?;
        Ok(ticket)
    }

    /// Redeems a ticket for this session, once.
    async fn redeem_ticket(
        &self,
        ticket: &str,
        session: &SecretHash,
    ) -> Result<PendingAuthorization, TicketError> {
        let key = Key::new("ticket", SecretHash::of(ticket).as_str());
        // Check the session before taking, so that a link opened in someone else's
        // browser does not burn the owner's ticket.
        let raw = self.store.get(&key).await?.ok_or(TicketError::Invalid)?;
        let stored: Ticket = serde_json::from_slice(&raw)?;
        if stored.session != *session {
            return Err(TicketError::Invalid);
        }
        self.store.take(&key).await?.ok_or(TicketError::Invalid)?;
        Ok(stored.request)
    }

    /// Approves: creates the grant and its code; returns the redirect to the client.
    pub async fn approve(&self, ticket: &str, session: &SecretHash) -> Result<String, TicketError> {
        let request = self.redeem_ticket(ticket, session).await?;
        let grant = Group::new(random_id());
        let record = serde_json::to_vec(&Grant {
            id: grant.as_str().to_owned(),
            subject: OWNER.to_owned(),
            client_id: request.client_id.clone(),
            scopes: request.scopes,
            resource: request.resource.clone(),
            created_at: now_secs(),
        })?;
        let group_ttl = Put::ttl(self.settings.refresh_token_ttl).in_group(&grant);
        self.store
            .put(&grant_key(&grant), &record, group_ttl)
            .await?;

        let (code, code_token) = GrantToken::issue(TokenKind::Code, &grant);
        let record = serde_json::to_vec(&CodeRecord {
            used: false,
            client_id: request.client_id,
            redirect_uri: request.redirect_uri.clone(),
            redirect_uri_explicit: request.redirect_uri_explicit,
            challenge: request.challenge,
            scopes: request.scopes,
            resource: request.resource,
            subject: OWNER.to_owned(),
            expires_at: now_secs() + CODE_TTL.as_secs(),
        })?;
        self.store
            .put(
                &token_key(&code_token),
                &record,
                Put::ttl(CODE_TTL).in_group(&grant),
            )
            .await?;

        let mut params = vec![("code", code.as_str())];
        if let Some(state) = &request.state {
            params.push(("state", state));
        }
        params.push(("iss", &self.settings.issuer));
        Ok(request.redirect_uri.with_params(&params))
    }

    /// Denies: returns the redirect with `access_denied`.
    pub async fn deny(&self, ticket: &str, session: &SecretHash) -> Result<String, TicketError> {
        let request = self.redeem_ticket(ticket, session).await?;
        Ok(self.error_redirect(
            &request.redirect_uri,
            "access_denied",
            "the owner denied the request",
            request.state.as_deref(),
        ))
    }

    // ----- tokens ------------------------------------------------------------------

    pub async fn token(
        &self,
        credentials: &ClientCredentials,
        params: TokenParams,
    ) -> Result<TokenResponse, TokenError> {
        let grant_type = params
            .grant_type
            .clone()
            .ok_or_else(|| TokenError::InvalidRequest("grant_type is required".into()))?;
        if !matches!(grant_type.as_str(), "authorization_code" | "refresh_token") {
            return Err(TokenError::UnsupportedGrantType(format!(
                "grant_type {grant_type:?} is not supported; use authorization_code or refresh_token"
            )));
        }
        let client = self.authenticate(credentials).await?;
        match grant_type.as_str() {
            "authorization_code" => self.redeem_code(&client, params).await,
            _ => self.refresh(&client, params).await,
        }
    }

    /// RFC 6749 §4.1.3 with PKCE and RFC 8707. A code works once: a second use revokes
    /// every token issued from it (OAuth 2.1 §4.1.3).
    async fn redeem_code(
        &self,
        client: &Client,
        params: TokenParams,
    ) -> Result<TokenResponse, TokenError> {
        let raw_code = params
            .code
            .as_deref()
            .ok_or_else(|| TokenError::InvalidRequest("code is required".into()))?;
        let verifier = params
            .code_verifier
            .as_deref()
            .ok_or_else(|| TokenError::InvalidRequest("code_verifier is required (PKCE)".into()))?;
        let invalid =
            || TokenError::InvalidGrant("the code is invalid, expired or already used".into());
        let token = GrantToken::parse(raw_code)
            .filter(|t| t.kind == TokenKind::Code)
            .ok_or_else(invalid)?;
        let key = token_key(&token);
        let current = self.store.get(&key).await?.ok_or_else(invalid)?;
        let record: CodeRecord = serde_json::from_slice(&current)?;
        if record.used {
            self.store.delete_group(&token.grant).await?;
            tracing::warn!(client_id = %client.client_id, "authorization code replayed; its grant is revoked");
            return Err(invalid());
        }
        if record.client_id != client.client_id {
            return Err(invalid());
        }
        match (params.redirect_uri.as_deref(), record.redirect_uri_explicit) {
            (Some(sent), _) if sent == record.redirect_uri.as_str() => {}
            (None, false) => {}
            _ => {
                return Err(TokenError::InvalidGrant(
                    "redirect_uri does not match the authorization request".into(),
                ))
            }
        }
        if !record.challenge.verify(verifier) {
            return Err(TokenError::InvalidGrant(
                "the PKCE code_verifier does not match".into(),
            ));
        }
        if let Some(resource) = params.resource.as_deref() {
            if resource != record.resource {
                return Err(TokenError::InvalidTarget(format!(
                    "the code was issued for {}, not {resource:?}",
                    record.resource
                )));
            }
        }

        // Write the tokens first, then mark the code used. Of concurrent redemptions
        // exactly one swap succeeds; the losers undo their tokens and count as replays.
        let (response, access, refresh) = self.mint(
            &token.grant,
            &record.subject,
            &client.client_id,
            record.scopes,
            record.scopes,
            &record.resource,
        )?;
        self.store_pair(&access, &refresh).await?;
        let used = serde_json::to_vec(&CodeRecord {
            used: true,
            ..record
        })?;
        let swapped = self
            .store
            .compare_and_swap(
                &key,
                &current,
                &used,
                Put::ttl(CODE_TTL).in_group(&token.grant),
            )
            .await?;
        if !swapped {
            self.store.delete_group(&token.grant).await?;
            return Err(invalid());
        }
        if client.kind == ClientKind::Registered && !client.has_grant {
            // A client with a grant no longer expires.
            let kept = serde_json::to_vec(&Client {
                has_grant: true,
                ..client.clone()
            })?;
            self.store
                .put(&client_key(&client.client_id), &kept, Put::forever())
                .await?;
        }
        Ok(response)
    }

    /// RFC 6749 §6 with rotation (OAuth 2.1 §4.3.1) and a grace window for lost
    /// responses; a reuse after the window revokes the grant.
    async fn refresh(
        &self,
        client: &Client,
        params: TokenParams,
    ) -> Result<TokenResponse, TokenError> {
        let raw = params
            .refresh_token
            .as_deref()
            .ok_or_else(|| TokenError::InvalidRequest("refresh_token is required".into()))?;
        let invalid =
            || TokenError::InvalidGrant("the refresh token is invalid, expired or revoked".into());
        let token = GrantToken::parse(raw)
            .filter(|t| t.kind == TokenKind::Refresh)
            .ok_or_else(invalid)?;
        let key = token_key(&token);
        let requested = params.scope.as_deref().map(|s| ScopeSet::parse(s).known);

        // At most a few rounds: a lost compare-and-swap means someone rotated first,
        // and the next round sees their successor.
        for _ in 0..3 {
            let current = self.store.get(&key).await?.ok_or_else(invalid)?;
            match serde_json::from_slice::<RefreshRecord>(&current)? {
                RefreshRecord::Rotated {
                    client_id,
                    at,
                    successor,
                } => {
                    if client_id != client.client_id {
                        return Err(invalid());
                    }
                    let within_grace =
                        now_secs().saturating_sub(at) <= self.settings.refresh_grace.as_secs();
                    if let (true, Some(pair)) = (within_grace, grace::open(raw, &successor)) {
                        return Ok(serde_json::from_slice(&pair)?);
                    }
                    self.store.delete_group(&token.grant).await?;
                    tracing::warn!(client_id = %client.client_id, "refresh token reused after rotation; its grant is revoked");
                    return Err(invalid());
                }
                RefreshRecord::Active {
                    subject,
                    client_id,
                    scopes,
                    resource,
                } => {
                    if client_id != client.client_id {
                        return Err(invalid());
                    }
                    if let Some(sent) = params.resource.as_deref() {
                        if sent != resource {
                            return Err(TokenError::InvalidTarget(format!(
                                "this grant is for {resource}, not {sent:?}"
                            )));
                        }
                    }
                    let access_scopes = match requested {
                        Some(requested) if requested.is_empty() => {
                            return Err(TokenError::InvalidScope(
                                "no known scope was requested".into(),
                            ))
                        }
                        Some(requested) if !requested.is_subset_of(scopes) => {
                            return Err(TokenError::InvalidScope(format!(
                                "a refresh may narrow scopes but not widen them beyond {scopes}"
                            )))
                        }
                        Some(requested) => requested,
                        None => scopes,
                    };
                    let (response, access, refresh) = self.mint(
                        &token.grant,
                        &subject,
                        &client_id,
                        scopes,
                        access_scopes,
                        &resource,
                    )?;
                    self.store_pair(&access, &refresh).await?;
                    let rotated = serde_json::to_vec(&RefreshRecord::Rotated {
                        client_id,
                        at: now_secs(),
                        successor: grace::seal(raw, &serde_json::to_vec(&response)?),
                    })?;
                    let keep = Put::ttl(self.settings.refresh_token_ttl).in_group(&token.grant);
                    if self
                        .store
                        .compare_and_swap(&key, &current, &rotated, keep)
                        .await?
                    {
                        return Ok(response);
                    }
                    // Someone else rotated first: drop ours and answer with theirs.
                    self.store.delete(&token_key(&access.0)).await?;
                    self.store.delete(&token_key(&refresh.0)).await?;
                }
            }
        }
        Err(invalid())
    }

    /// New access and refresh tokens for a grant (not yet stored).
    #[allow(clippy::type_complexity)]
    fn mint(
        &self,
        grant: &Group,
        subject: &str,
        client_id: &str,
        grant_scopes: ScopeSet,
        access_scopes: ScopeSet,
        resource: &str,
    ) -> Result<(TokenResponse, (GrantToken, Vec<u8>), (GrantToken, Vec<u8>)), TokenError> {
        let (access_raw, access) = GrantToken::issue(TokenKind::Access, grant);
        let (refresh_raw, refresh) = GrantToken::issue(TokenKind::Refresh, grant);
        let ttl = self.settings.access_token_ttl.as_secs();
        let access_record = serde_json::to_vec(&AccessToken {
            subject: subject.to_owned(),
            client_id: client_id.to_owned(),
            scopes: access_scopes,
            resource: resource.to_owned(),
            expires_at: now_secs() + ttl,
        })?;
        let refresh_record = serde_json::to_vec(&RefreshRecord::Active {
            subject: subject.to_owned(),
            client_id: client_id.to_owned(),
            scopes: grant_scopes,
            resource: resource.to_owned(),
        })?;
        let response = TokenResponse {
            access_token: access_raw,
            token_type: "Bearer".into(),
            expires_in: ttl,
            refresh_token: refresh_raw,
            scope: access_scopes.to_string(),
        };
        Ok((response, (access, access_record), (refresh, refresh_record)))
    }

    async fn store_pair(
        &self,
        access: &(GrantToken, Vec<u8>),
        refresh: &(GrantToken, Vec<u8>),
    ) -> Result<(), StoreError> {
        let grant = &access.0.grant;
        self.store
            .put(
                &token_key(&access.0),
                &access.1,
                Put::ttl(self.settings.access_token_ttl).in_group(grant),
            )
            .await?;
        self.store
            .put(
                &token_key(&refresh.0),
                &refresh.1,
                Put::ttl(self.settings.refresh_token_ttl).in_group(grant),
            )
            .await
    }

    /// RFC 7009: revoking a refresh token revokes its grant; an access token goes
    /// alone. Unknown tokens, and tokens of other clients, are not an error.
    pub async fn revoke(
        &self,
        credentials: &ClientCredentials,
        raw_token: &str,
    ) -> Result<(), TokenError> {
        let client = self.authenticate(credentials).await?;
        let Some(token) = GrantToken::parse(raw_token) else {
            return Ok(());
        };
        let key = token_key(&token);
        let Some(raw) = self.store.get(&key).await? else {
            return Ok(());
        };
        let owner = match token.kind {
            TokenKind::Access => serde_json::from_slice::<AccessToken>(&raw)?.client_id,
            TokenKind::Refresh => match serde_json::from_slice::<RefreshRecord>(&raw)? {
                RefreshRecord::Active { client_id, .. }
                | RefreshRecord::Rotated { client_id, .. } => client_id,
            },
            TokenKind::Code => return Ok(()),
        };
        if owner != client.client_id {
            return Ok(());
        }
        match token.kind {
            TokenKind::Refresh => {
                self.store.delete_group(&token.grant).await?;
            }
            _ => {
                self.store.delete(&key).await?;
            }
        }
        Ok(())
    }

    /// The bearer check: one store read by the token's hash. Expired and revoked tokens
    /// are absent from the store; the resource must be ours.
    pub async fn verify_access_token(&self, raw: &str) -> Result<Option<AccessToken>, StoreError> {
        let Some(key) = Self::access_token_key(raw) else {
            return Ok(None);
        };
        let record = self.store.get(&key).await?;
        self.access_token_from(record.as_deref())
    }

    /// Where the record of the access token `raw` lives, if `raw` has the shape of
    /// one of ours. For callers that read it together with other records.
    pub fn access_token_key(raw: &str) -> Option<Key> {
        GrantToken::parse(raw)
            .filter(|t| t.kind == TokenKind::Access)
            .map(|token| token_key(&token))
    }

    /// The token a record read under [`Self::access_token_key`] stands for, when it
    /// is unexpired and issued for our resource. A revoked token has no record.
    pub fn access_token_from(
        &self,
        record: Option<&[u8]>,
    ) -> Result<Option<AccessToken>, StoreError> {
        let Some(record) = record else {
            return Ok(None);
        };
        let access: AccessToken = serde_json::from_slice(record).map_err(corrupt)?;
        let valid = access.expires_at > now_secs() && access.resource == self.settings.resource;
        Ok(valid.then_some(access))
    }
}
