//! Protected resources (RFC 8707, RFC 9728): the MCP endpoints Gatehouse guards. Each
//! has its own URL, which is also its resource identifier and the audience of every
//! token issued for it, and its own scopes. The authorization server judges
//! `resource` and `scope` parameters against this catalogue; the bearer guard checks
//! tokens against the one resource a request reaches.

use std::{fmt, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::oauth::scope::{Scope, ScopeSet};

/// A resource identifier: an absolute URL, compared byte for byte (RFC 8707 §2).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ResourceUri(String);

impl ResourceUri {
    /// Builds the identifier of a resource we serve; callers pass URLs made from the
    /// configured public URL, never request input.
    pub fn new(url: String) -> Self {
        ResourceUri(url)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResourceUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ResourceUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResourceUri({})", self.0)
    }
}

/// A scope a resource defines, with what it allows in plain words (consent page).
#[derive(Clone, Debug)]
pub struct ScopeInfo {
    pub scope: Scope,
    pub description: String,
}

/// One protected resource.
#[derive(Debug)]
pub struct Resource {
    pub uri: ResourceUri,
    /// Its path under the public URL: `/mcp` or `/mcp/<name>`.
    pub path: String,
    /// What the consent page and the home page call it.
    pub title: String,
    /// Reading: the scope advertised in 401 challenges, granted when a request names
    /// none, and needed by every read-only call.
    pub read: Scope,
    /// Everything else.
    pub write: Scope,
    read_description: String,
    write_description: String,
    /// What identifies the server behind it, for grants to name (a hash of an
    /// upstream's URL without its query, or of its command line); `None` for the
    /// built-in article server.
    pub server: Option<String>,
}

impl Resource {
    pub fn new(
        public_url: &str,
        path: &str,
        title: impl Into<String>,
        read: (Scope, String),
        write: (Scope, String),
    ) -> Self {
        Resource {
            uri: ResourceUri::new(format!("{public_url}{path}")),
            path: path.to_owned(),
            title: title.into(),
            read: read.0,
            write: write.0,
            read_description: read.1,
            write_description: write.1,
            server: None,
        }
    }

    /// The same resource, naming its server by `identity` (hashed: a URL's path may
    /// be a secret of its own).
    pub fn with_server(mut self, identity: &str) -> Self {
        use base64::Engine as _;
        use sha2::Digest as _;
        let hash = sha2::Sha256::digest(identity.as_bytes());
        self.server = Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(hash));
        self
    }

    /// Every scope this resource defines, with its description.
    pub fn scopes(&self) -> [ScopeInfo; 2] {
        [
            ScopeInfo {
                scope: self.read.clone(),
                description: self.read_description.clone(),
            },
            ScopeInfo {
                scope: self.write.clone(),
                description: self.write_description.clone(),
            },
        ]
    }

    pub fn all_scopes(&self) -> ScopeSet {
        [self.read.clone(), self.write.clone()]
            .into_iter()
            .collect()
    }

    pub fn baseline(&self) -> ScopeSet {
        ScopeSet::only(self.read.clone())
    }

    /// What "approve read-only" grants of `requested`: everything but the write
    /// scope, when the request includes it and something is left.
    pub fn read_only(&self, requested: &ScopeSet) -> Option<ScopeSet> {
        if !requested.contains(&self.write) {
            return None;
        }
        let narrowed: ScopeSet = requested
            .iter()
            .filter(|s| **s != self.write)
            .cloned()
            .collect();
        (!narrowed.is_empty()).then_some(narrowed)
    }

    pub fn description(&self, scope: &Scope) -> Option<&str> {
        if *scope == self.read {
            Some(&self.read_description)
        } else if *scope == self.write {
            Some(&self.write_description)
        } else {
            None
        }
    }

    /// Splits requested scopes into those this resource defines and the rest, which
    /// are shown on the consent page and not granted.
    pub fn split(&self, requested: &ScopeSet) -> (ScopeSet, Vec<Scope>) {
        let known = requested.intersection(&self.all_scopes());
        let unknown = requested
            .iter()
            .filter(|s| !known.contains(s))
            .cloned()
            .collect();
        (known, unknown)
    }

    /// RFC 9728 §3.1: the metadata path for this resource's URL.
    pub fn metadata_path(&self) -> String {
        format!("/.well-known/oauth-protected-resource{}", self.path)
    }
}

/// Every resource of a deployment. The first is the default: the one a request
/// without a `resource` parameter is for.
#[derive(Debug, Default)]
pub struct Resources(Vec<Arc<Resource>>);

impl Resources {
    pub fn new(resources: Vec<Arc<Resource>>) -> Self {
        Resources(resources)
    }

    pub fn get(&self, uri: &str) -> Option<&Arc<Resource>> {
        self.0.iter().find(|r| r.uri.as_str() == uri)
    }

    pub fn default_resource(&self) -> Option<&Arc<Resource>> {
        self.0.first()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Resource>> {
        self.0.iter()
    }

    /// Every scope some resource defines: what a client may register or be
    /// described with.
    pub fn all_scopes(&self) -> ScopeSet {
        self.0
            .iter()
            .fold(ScopeSet::default(), |all, r| all.union(&r.all_scopes()))
    }

    /// Every scope of every resource, for the authorization server's metadata.
    pub fn scopes_supported(&self) -> Vec<String> {
        self.0
            .iter()
            .flat_map(|r| [r.read.to_string(), r.write.to_string()])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(s: &str) -> Scope {
        Scope::parse(s).expect(s)
    }

    #[test]
    fn splits_requests_into_known_and_unknown_scopes() {
        let resource = Resource::new(
            "https://gate.example.com",
            "/mcp/github",
            "github",
            (scope("github:read"), "read".into()),
            (scope("github:write"), "write".into()),
        );
        assert_eq!(resource.uri.as_str(), "https://gate.example.com/mcp/github");
        assert_eq!(
            resource.metadata_path(),
            "/.well-known/oauth-protected-resource/mcp/github"
        );
        let requested = ScopeSet::parse("github:read claudeai read:articles").expect("scopes");
        let (known, unknown) = resource.split(&requested);
        assert_eq!(known.to_string(), "github:read");
        assert_eq!(unknown, [scope("claudeai"), scope("read:articles")]);
    }
}
