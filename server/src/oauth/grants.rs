//! The owner's view of what has access: every live grant with the client it was
//! given to, and revoking a grant or every grant of a client at once.

use std::collections::HashSet;

use serde::Serialize;

use super::{
    client::{Client, ClientId, ClientKind},
    metadata_document,
    records::Grant,
    redirect::RedirectUri,
    AuthServer, TokenError,
};
use crate::{
    audit::{Event, EventKind},
    resource::ResourceUri,
    store::{decode, Group, Kind, StoreError, StoreResult},
};

/// How a client is identified, for the console.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "host", rename_all = "snake_case")]
pub enum Identity {
    /// Its client-ID metadata document, published on this host.
    Document(String),
    /// The client configured with `--static-client-id`.
    Static,
    /// Registered itself: its name is its own choice.
    SelfRegistered,
    /// Registered itself, and its registration is gone since.
    Unknown,
}

/// A live grant as the console lists it.
#[derive(Clone, Debug, Serialize)]
pub struct GrantSummary {
    pub grant: String,
    pub client_id: ClientId,
    pub client_name: String,
    pub identity: Identity,
    /// The hosts of the client's redirect URIs.
    pub redirect_hosts: Vec<String>,
    pub scopes: String,
    pub resource: String,
    /// Seconds since the epoch.
    pub approved_at: u64,
    /// Approved, and its code not redeemed yet (it may be, for 10 minutes).
    pub pending: bool,
}

impl AuthServer {
    /// Every grant that is not revoked or expired: those whose code was redeemed, and
    /// those approved a moment ago whose code may still be (`pending`).
    pub async fn grants(&self) -> StoreResult<Vec<GrantSummary>> {
        let mut out = Vec::new();
        for (group, grant) in self.live_grants().await?.0 {
            let (client_name, identity, redirect_hosts) = self.describe(&grant.client_id).await?;
            out.push(GrantSummary {
                grant: group.as_str().to_owned(),
                client_id: grant.client_id,
                client_name,
                identity,
                redirect_hosts,
                scopes: grant.scopes.to_string(),
                resource: grant.resource.to_string(),
                approved_at: grant.created_at,
                pending: grant.refresh.is_none(),
            });
        }
        out.sort_by_key(|g| std::cmp::Reverse(g.approved_at));
        Ok(out)
    }

    /// Which clients hold a grant (redeemed or pending) for which resource: what may
    /// keep an MCP session open (see `crate::http::mcp::gateway::end_ungranted`).
    /// A grant record it cannot read fails it: that grant's client could be
    /// taken for one without a grant.
    pub async fn granted(&self) -> StoreResult<HashSet<(ClientId, ResourceUri)>> {
        let (grants, unreadable) = self.live_grants().await?;
        if unreadable > 0 {
            tracing::error!(
                unreadable,
                "grant records cannot be read: no gateway session is ended until they are removed"
            );
            return Err(StoreError::Corrupt(format!(
                "{unreadable} grant records cannot be read"
            )));
        }
        Ok(grants
            .into_iter()
            .map(|(_, grant)| (grant.client_id, grant.resource))
            .collect())
    }

    /// Every grant record in the store, with its group, and how many could not be
    /// read (each logged).
    async fn live_grants(&self) -> StoreResult<(Vec<(Group, Grant)>, usize)> {
        let prefix = format!("{}:", Kind::GRANT.as_str());
        let (mut out, mut unreadable) = (Vec::new(), 0);
        for (key, raw) in self.store.scan(&prefix).await? {
            if !key.as_str().ends_with(":record") {
                continue;
            }
            let (Ok(grant), Some(group)) = (decode::<Grant>(&raw), key.group()) else {
                tracing::warn!(key = %key, "skipping an unreadable grant");
                unreadable += 1;
                continue;
            };
            out.push((group, grant));
        }
        Ok((out, unreadable))
    }

    /// What the console says of a client, without fetching anything: a metadata
    /// document client is named from the cache when it is there, else by its URL.
    async fn describe(&self, client_id: &ClientId) -> StoreResult<(String, Identity, Vec<String>)> {
        let hosts = |uris: &[RedirectUri]| {
            let mut hosts: Vec<String> = uris.iter().map(RedirectUri::host).collect();
            hosts.sort();
            hosts.dedup();
            hosts
        };
        if let Some(fixed) = &self.settings.static_client {
            if fixed.client_id == *client_id {
                return Ok((
                    client_id.to_string(),
                    Identity::Static,
                    hosts(&fixed.redirect_uris),
                ));
            }
        }
        if let Some(Ok(url)) = metadata_document::document_url(
            client_id.as_str(),
            self.settings.allow_loopback_client_metadata,
        ) {
            let host = url.host_str().unwrap_or_default().to_owned();
            let cached = self
                .settings
                .pinned_documents
                .get(&url)
                .map(|pinned| pinned.client.clone())
                .or_else(|| self.document_cache().get(&url, self.clock.now_ms()));
            return Ok(match cached {
                Some(client) => (
                    client.display_name().to_owned(),
                    Identity::Document(host),
                    hosts(&client.redirect_uris),
                ),
                None => (client_id.to_string(), Identity::Document(host), Vec::new()),
            });
        }
        match self.client(client_id.as_str()).await {
            Ok(Some(client)) if client.kind == ClientKind::Registered => Ok((
                client.display_name().to_owned(),
                Identity::SelfRegistered,
                hosts(&client.redirect_uris),
            )),
            Ok(Some(client)) => Ok((
                client.display_name().to_owned(),
                Identity::Unknown,
                Vec::new(),
            )),
            Ok(None)
            | Err(super::ClientError::Document(_) | super::ClientError::Unavailable(_)) => {
                Ok((client_id.to_string(), Identity::Unknown, Vec::new()))
            }
            Err(super::ClientError::Store(e)) => Err(e),
        }
    }

    /// Ends a grant at once: its tokens stop working at their next request.
    pub async fn revoke_grant(&self, grant: &Group) -> StoreResult<bool> {
        let removed = self.store.delete_group(grant).await? > 0;
        if removed {
            self.audit
                .record(Event::new(EventKind::GrantRevoked).grant(grant.as_str()));
        }
        Ok(removed)
    }

    /// Ends every grant of one client; returns how many.
    pub async fn revoke_client(&self, client_id: &ClientId) -> StoreResult<usize> {
        let mut revoked = 0;
        for grant in self.grants().await? {
            let Some(group) = Group::parse(&grant.grant) else {
                continue;
            };
            if grant.client_id == *client_id && self.revoke_grant(&group).await? {
                revoked += 1;
            }
        }
        Ok(revoked)
    }
}

impl AuthServer {
    /// Whether `grant`'s MCP server is still the one the owner consented to: a grant
    /// made for the server configured under a name passes to no other server
    /// configured under that name later. A server not configured on this instance
    /// (taken out, or not yet added during a rolling change) is not judged here (its
    /// tokens work nowhere it is not served), nor is a grant made before grants
    /// named their server.
    pub(super) fn same_server(&self, grant: &Grant) -> bool {
        self.same_server_as(grant.server.as_deref(), &grant.resource)
    }

    /// [`Self::same_server`] for what a grant or token names.
    pub(super) fn same_server_as(&self, server: Option<&str>, resource: &ResourceUri) -> bool {
        let Some(server) = server else {
            return true;
        };
        match self.settings.resources.get(resource.as_str()) {
            Some(configured) => configured.server.as_deref() == Some(server),
            None => true,
        }
    }

    /// The server a grant's next records name: its own, or for a grant made before
    /// grants named one (or rewritten by such a version), the one serving it now.
    pub(super) fn server_of(&self, grant: &Grant) -> Option<String> {
        grant.server.clone().or_else(|| {
            self.settings
                .resources
                .get(grant.resource.as_str())
                .and_then(|r| r.server.clone())
        })
    }

    /// Revokes a grant whose server is another one now; the error for its client.
    pub(super) async fn another_server(&self, client: &Client, grant: &Group) -> TokenError {
        if let Err(e) = self.store.delete_group(grant).await {
            return e.into();
        }
        self.audit.record(
            Event::new(EventKind::TokenRevoked)
                .client(client.client_id.to_string())
                .grant(grant.as_str()),
        );
        tracing::warn!(client_id = %client.client_id, "the MCP server of a grant is another server now; the grant is revoked");
        TokenError::InvalidGrant(
            "the MCP server this was granted for has been replaced; ask the owner again".into(),
        )
    }
}
