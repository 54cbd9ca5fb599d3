//! What the authorization server keeps in the store, and the keys it keeps it under.
//! Every secret appears here only as its SHA-256 ([`SecretHash`]).

use serde::{Deserialize, Serialize};

use super::{
    client::{ClientId, ClientKind},
    pkce::CodeChallenge,
    redirect::RedirectUri,
    scope::{Scope, ScopeSet},
    secret::{GrantToken, SecretHash, TokenKind},
};
use crate::{
    resource::ResourceUri,
    store::{Group, Key, Kind},
};

/// The one subject this server knows: the owner.
pub const OWNER: &str = "owner";

/// An authorization request that passed every check, waiting for the owner.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PendingAuthorization {
    pub client_id: ClientId,
    pub client_name: String,
    pub client_kind: ClientKind,
    pub redirect_uri: RedirectUri,
    /// Whether the request named the redirect URI (then the token request must too).
    pub redirect_uri_explicit: bool,
    pub challenge: CodeChallenge,
    pub scopes: ScopeSet,
    /// Requested scopes the resource does not have, shown and not granted.
    pub ignored_scopes: Vec<Scope>,
    pub resource: ResourceUri,
    pub state: Option<String>,
    /// The server behind `resource` when the consent page was shown: the one the
    /// owner approves ([`Grant::server`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
}

/// The consent page's approve/deny ticket: which session saw the page, and what it
/// would approve.
#[derive(Serialize, Deserialize)]
pub struct Ticket {
    pub session: SecretHash,
    pub request: PendingAuthorization,
    /// Shared by every ticket of one consent page (approve, approve read-only): the
    /// first one used decides, and the others stop working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
}

/// The marker the first ticket of a consent page leaves: its siblings are void.
pub fn decision_key(decision: &str) -> Key {
    Key::new(
        Kind::TICKET,
        &format!("decided-{}", SecretHash::of(decision).as_str()),
    )
}

/// A grant: who approved which client for which scopes of which resource, and the
/// state of its refresh-token chain. One record per grant, whatever the number of
/// rotations; rotation replaces it with compare-and-swap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub id: String,
    pub subject: String,
    pub client_id: ClientId,
    pub scopes: ScopeSet,
    pub resource: ResourceUri,
    /// What identified the server behind `resource` when the owner consented
    /// ([`crate::resource::Resource::server`]); `None` for the built-in article
    /// server, and in grants made before grants named their server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    pub created_at: u64,
    /// The live refresh token; `None` until the code is redeemed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<SecretHash>,
    /// The refresh tokens rotated before, with when, newest first, at most
    /// [`RETIRED_KEPT`]: the newest so that a client that lost the response gets
    /// the same successor again within the grace window, and all so that a rotation
    /// which would forget a token retired lately is held back (see
    /// `--refresh-reuse-window`). Grants written before kept one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rotated: Vec<Rotation>,
    /// The refresh tokens rotated before, newest first, at most
    /// [`RETIRED_KEPT`]: what makes a presented token a reuse, which revokes the
    /// grant. A token of this grant that was never issued (the grant id is in clear
    /// in every token, so anyone who saw one can make one up) is only refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<SecretHash>,
    /// The access tokens still kept: the newest and the one before it. Older ones are
    /// deleted at rotation, so a grant holds a bounded number of keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access: Vec<SecretHash>,
}

impl Grant {
    /// Whether `hash` is a refresh token this grant issued and has since rotated
    /// (one it remembers): presented again, a reuse. (`rotated` too: grants stored
    /// before `retired` existed.)
    pub fn was_rotated(&self, hash: &SecretHash) -> bool {
        self.retired.iter().any(|h| h.same(hash)) || self.rotated.iter().any(|r| r.hash.same(hash))
    }
}

/// Earlier refresh tokens a grant remembers. A client refreshes about once an
/// access token's lifetime while in use, so a stolen token is recognised for at
/// least that many rotations; an older one is refused without revoking.
pub const RETIRED_KEPT: usize = 16;

/// One rotation of a refresh token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    pub hash: SecretHash,
    pub at: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CodeRecord {
    pub used: bool,
    pub client_id: ClientId,
    pub redirect_uri: RedirectUri,
    pub redirect_uri_explicit: bool,
    pub challenge: CodeChallenge,
    pub scopes: ScopeSet,
    pub resource: ResourceUri,
    pub subject: String,
    pub expires_at: u64,
}

/// What a valid access token grants; the bearer guard reads this.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessToken {
    pub subject: String,
    pub client_id: ClientId,
    pub scopes: ScopeSet,
    pub resource: ResourceUri,
    pub expires_at: u64,
    /// Its grant's server ([`Grant::server`]): the token works at no other server
    /// configured under the same name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
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

pub fn client_key(client_id: &ClientId) -> Key {
    Key::new(Kind::CLIENT, client_id.as_str())
}

/// Where the store notes that the client of the metadata document at `url` obtained
/// tokens here (see `AuthServer::document_is_proven`).
pub fn proven_key(url: &str) -> Key {
    Key::new(Kind::PROVEN, SecretHash::of(url).as_str())
}

pub fn grant_key(grant: &Group) -> Key {
    Key::in_group(Kind::GRANT, grant, "record")
}

/// Where a code or access token's record lives. Refresh tokens have none of their
/// own: the grant record names the live one.
pub fn token_key(token: &GrantToken) -> Key {
    let kind = match token.kind {
        TokenKind::Code => Kind::CODE,
        TokenKind::Access => Kind::ACCESS,
        TokenKind::Refresh => Kind::REFRESH,
    };
    Key::in_group(kind, &token.grant, token.hash.as_str())
}

pub fn access_key(grant: &Group, hash: &SecretHash) -> Key {
    Key::in_group(Kind::ACCESS, grant, hash.as_str())
}

/// The sealed successor of a rotated refresh token, kept for the grace window only.
pub fn successor_key(grant: &Group, rotated: &SecretHash) -> Key {
    Key::in_group(Kind::SUCCESSOR, grant, rotated.as_str())
}

pub fn ticket_key(ticket: &str) -> Key {
    Key::new(Kind::TICKET, SecretHash::of(ticket).as_str())
}
