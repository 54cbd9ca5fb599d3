//! The authorization endpoint's rules (RFC 6749 §4.1.1 with PKCE and RFC 8707): which
//! requests are valid, the consent page's single-use tickets, and what approving or
//! denying does.

use std::sync::Arc;

use serde::Deserialize;

use super::{
    pkce::CodeChallenge,
    records::{
        decision_key, grant_key, ticket_key, token_key, CodeRecord, Grant, PendingAuthorization,
        Ticket, OWNER,
    },
    redirect::RedirectUri,
    scope::ScopeSet,
    secret::{random_token, GrantToken, SecretHash, TokenKind},
    AuthServer, AuthorizeError, ClientError, ErrorCode, TicketError, CODE_TTL, TICKET_TTL,
};
use crate::{
    audit::{Event, EventKind},
    resource::Resource,
    store::{decode, encode, Group, Put, StoreError},
};

/// The tickets of one consent page.
/// The longest `state` an authorization request may carry.
pub const MAX_STATE_BYTES: usize = 2048;

#[derive(Debug)]
pub struct ConsentTickets {
    /// Approves what was asked; also the deny link's.
    pub full: String,
    /// Approves the read-only part of it, when the request asked to write too.
    pub read_only: Option<String>,
}

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

impl AuthServer {
    /// Validates an authorization request in the order RFC 6749 §4.1.2.1 requires:
    /// client, then redirect URI (errors shown, never redirected), then the rest
    /// (errors sent to the client with `state` and `iss`).
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
            // The person who lands here is often the owner: say how to fix it.
            Err(ClientError::Document(reason) | ClientError::Unavailable(reason)) => {
                return Err(page(
                    "Client metadata unavailable",
                    format!(
                        "{reason}. If this server cannot reach the document's host, its owner can \
                         pin the document in Gatehouse's configuration instead (README: \
                         \"Pinned client metadata documents\")."
                    ),
                ))
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

        let fail = |code: ErrorCode, description: String| AuthorizeError::Redirect {
            redirect_uri: redirect_uri.clone(),
            code,
            description,
            state: params.state.clone(),
            trusted: self.vouched_for(&client),
        };
        match params.response_type.as_deref() {
            Some("code") => {}
            None => {
                return Err(fail(
                    ErrorCode::InvalidRequest,
                    "response_type is required".into(),
                ))
            }
            Some(other) => {
                return Err(fail(
                    ErrorCode::UnsupportedResponseType,
                    format!("response_type {other:?} is not supported; use code"),
                ))
            }
        }
        // Each consent page keeps the request (its `state` too) for ten minutes, once
        // per link on it; clients send a few dozen random characters.
        if params
            .state
            .as_ref()
            .is_some_and(|s| s.len() > MAX_STATE_BYTES)
        {
            return Err(AuthorizeError::Redirect {
                redirect_uri: redirect_uri.clone(),
                code: ErrorCode::InvalidRequest,
                description: format!("state is longer than {MAX_STATE_BYTES} bytes"),
                state: None,
                trusted: self.vouched_for(&client),
            });
        }
        let challenge = CodeChallenge::parse(
            params.code_challenge.as_deref(),
            params.code_challenge_method.as_deref(),
        )
        .map_err(|e| fail(ErrorCode::InvalidRequest, e.into()))?;

        let resources = &self.settings.resources;
        let resource: &Arc<Resource> = match params.resource.as_deref() {
            None => resources.default_resource(),
            Some(r) => resources.get(r),
        }
        .ok_or_else(|| {
            let several = params.resource.as_deref().is_some_and(|r| r.contains(' '));
            let why = if several {
                // See `http::oauth::authorize::one_resource`.
                "a grant here is for one resource, and the request named several".to_owned()
            } else {
                format!(
                    "this server does not serve the resource {:?}",
                    params.resource.as_deref().unwrap_or("")
                )
            };
            fail(ErrorCode::InvalidTarget, why)
        })?;

        let (scopes, ignored_scopes) = match params.scope.as_deref() {
            Some(raw) if !raw.trim().is_empty() => {
                let requested = ScopeSet::parse(raw)
                    .map_err(|e| fail(ErrorCode::InvalidScope, e.to_string()))?;
                let (known, unknown) = resource.split(&requested);
                if known.is_empty() {
                    return Err(fail(
                        ErrorCode::InvalidScope,
                        format!(
                            "none of the requested scopes exist for {}; use {}",
                            resource.uri,
                            resource.all_scopes()
                        ),
                    ));
                }
                (known, unknown)
            }
            // No scope: what the client registered for this resource, else the least.
            _ => {
                let registered = client
                    .scope
                    .as_ref()
                    .map(|s| s.intersection(&resource.all_scopes()))
                    .filter(|s| !s.is_empty());
                (
                    registered.unwrap_or_else(|| resource.baseline()),
                    Vec::new(),
                )
            }
        };

        Ok(PendingAuthorization {
            client_name: client.display_name().to_owned(),
            client_id: client.client_id,
            client_kind: client.kind,
            redirect_uri,
            redirect_uri_explicit: explicit,
            challenge,
            scopes,
            ignored_scopes,
            resource: resource.uri.clone(),
            state: params.state,
            server: resource.server.clone(),
        })
    }

    /// The redirect that carries an error back to the client (RFC 6749 §4.1.2.1 with
    /// RFC 9207's `iss`).
    pub fn error_redirect(
        &self,
        redirect_uri: &RedirectUri,
        code: ErrorCode,
        description: &str,
        state: Option<&str>,
    ) -> String {
        let description = super::error::description_text(description);
        let mut params = vec![
            ("error", code.as_str()),
            ("error_description", &description),
        ];
        if let Some(state) = state {
            params.push(("state", state));
        }
        params.push(("iss", &self.settings.issuer));
        redirect_uri.with_params(&params)
    }

    /// Creates the single-use tickets behind the consent page's links, bound to this
    /// sign-in session and this request: one to approve (or deny) what was asked and,
    /// when `read_only` is given, one to approve only those scopes. Whichever is used
    /// first decides; the other then stops working.
    pub async fn create_tickets(
        &self,
        session: &SecretHash,
        request: PendingAuthorization,
        read_only: Option<ScopeSet>,
    ) -> Result<ConsentTickets, StoreError> {
        let decision = random_token();
        let narrowed = read_only.map(|scopes| PendingAuthorization {
            scopes,
            ..request.clone()
        });
        let full = self.put_ticket(session, request, &decision).await?;
        let read_only = match narrowed {
            Some(request) => Some(self.put_ticket(session, request, &decision).await?),
            None => None,
        };
        Ok(ConsentTickets { full, read_only })
    }

    async fn put_ticket(
        &self,
        session: &SecretHash,
        request: PendingAuthorization,
        decision: &str,
    ) -> Result<String, StoreError> {
        let ticket = random_token();
        let record = encode(&Ticket {
            session: session.clone(),
            request,
            decision: Some(decision.to_owned()),
        })?;
        self.store
            .put(&ticket_key(&ticket), &record, Put::ttl(TICKET_TTL))
            .await?;
        Ok(ticket)
    }

    /// Redeems a ticket for this session, once, and only if no other ticket of the
    /// same consent page was used.
    async fn redeem_ticket(
        &self,
        ticket: &str,
        session: &SecretHash,
    ) -> Result<PendingAuthorization, TicketError> {
        let key = ticket_key(ticket);
        // Check the session before taking, so that a link opened in someone else's
        // browser does not burn the owner's ticket.
        let raw = self.store.get(&key).await?.ok_or(TicketError::Invalid)?;
        let stored: Ticket = decode(&raw)?;
        if stored.session != *session {
            return Err(TicketError::Invalid);
        }
        self.store.take(&key).await?.ok_or(TicketError::Invalid)?;
        if let Some(decision) = &stored.decision {
            let first = self
                .store
                .put_new(&decision_key(decision), b"1", Put::ttl(TICKET_TTL))
                .await?;
            if !first {
                return Err(TicketError::Invalid);
            }
        }
        Ok(stored.request)
    }

    /// Approves: creates the grant and its code; returns the redirect to the client.
    pub async fn approve(&self, ticket: &str, session: &SecretHash) -> Result<String, TicketError> {
        let request = self.redeem_ticket(ticket, session).await?;
        // The server the page named, still behind its URL (where this instance
        // serves it: during a rolling change, one that does not yet may approve).
        // A page shown by a version that did not name it takes the one serving now.
        let now_served = self.settings.resources.get(request.resource.as_str());
        if let (Some(served), Some(shown)) = (now_served, request.server.as_deref()) {
            if served.server.as_deref() != Some(shown) {
                return Err(TicketError::ServerChanged);
            }
        }
        let server = request
            .server
            .clone()
            .or_else(|| now_served.and_then(|r| r.server.clone()));
        let grant = Group::random();
        let record = encode(&Grant {
            id: grant.as_str().to_owned(),
            subject: OWNER.to_owned(),
            client_id: request.client_id.clone(),
            scopes: request.scopes.clone(),
            resource: request.resource.clone(),
            server,
            created_at: self.now(),
            refresh: None,
            rotated: Vec::new(),
            retired: Vec::new(),
            access: Vec::new(),
        })?;
        // Until the code is redeemed the grant needs to live only as long as the code.
        self.store
            .put(
                &grant_key(&grant),
                &record,
                Put::ttl(CODE_TTL).in_group(&grant),
            )
            .await?;

        let approved = Event::new(EventKind::ConsentApproved)
            .client(request.client_id.to_string())
            .grant(grant.as_str())
            .scopes(&request.scopes)
            .resource(request.resource.to_string());
        let (code, code_token) = GrantToken::issue(TokenKind::Code, &grant);
        let record = encode(&CodeRecord {
            used: false,
            client_id: request.client_id,
            redirect_uri: request.redirect_uri.clone(),
            redirect_uri_explicit: request.redirect_uri_explicit,
            challenge: request.challenge,
            scopes: request.scopes,
            resource: request.resource,
            subject: OWNER.to_owned(),
            expires_at: self.now() + CODE_TTL.as_secs(),
        })?;
        self.store
            .put(
                &token_key(&code_token),
                &record,
                Put::ttl(CODE_TTL).in_group(&grant),
            )
            .await?;

        self.audit.record(approved);
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
        self.audit.record(
            Event::new(EventKind::ConsentDenied)
                .client(request.client_id.to_string())
                .resource(request.resource.to_string()),
        );
        Ok(self.error_redirect(
            &request.redirect_uri,
            ErrorCode::AccessDenied,
            "the owner denied the request",
            request.state.as_deref(),
        ))
    }
}
