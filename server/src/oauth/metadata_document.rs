//! Client-ID metadata documents (draft-ietf-oauth-client-id-metadata-document, adopted
//! by the MCP authorization spec): a `client_id` that is an https URL with a path
//! names a JSON document, published by the client, that describes it. This module
//! judges the URL and the document; fetching lives in [`crate::outbound`].

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use serde::Deserialize;
use url::Url;

use super::{
    client::{clean_name, AuthMethod, Client, ClientId, ClientKind, MAX_REDIRECT_URIS},
    scope::ScopeSet,
};

pub const MAX_URL_LEN: usize = 2048;

/// Whether `client_id` is meant as a metadata document URL (rather than a registered
/// id), and if so whether it is an acceptable one. `allow_loopback_http` admits
/// `http://127.0.0.1:…` documents, for tests only.
pub fn document_url(client_id: &str, allow_loopback_http: bool) -> Option<Result<Url, String>> {
    let looks_like_url = client_id.starts_with("https://")
        || (allow_loopback_http && client_id.starts_with("http://"));
    if !looks_like_url {
        return None;
    }
    Some(check_url(client_id, allow_loopback_http))
}

fn check_url(raw: &str, allow_loopback_http: bool) -> Result<Url, String> {
    if raw.len() > MAX_URL_LEN {
        return Err("the client_id URL is too long".into());
    }
    let url = Url::parse(raw).map_err(|_| "the client_id is not a valid URL".to_owned())?;
    let loopback_http =
        allow_loopback_http && url.scheme() == "http" && crate::net::is_loopback_url(&url);
    if url.scheme() != "https" && !loopback_http {
        return Err("a client_id URL must use https".into());
    }
    if url.host().is_none() || !url.username().is_empty() || url.password().is_some() {
        return Err("a client_id URL needs a host and no credentials".into());
    }
    // A name without a dot is no public name: only this server's search domains
    // would give it an address.
    let loopback_allowed = allow_loopback_http && crate::net::is_loopback_url(&url);
    if matches!(url.host(), Some(url::Host::Domain(name)) if !name.trim_end_matches('.').contains('.'))
        && !loopback_allowed
    {
        return Err("a client_id URL must name a public host".into());
    }
    if url.fragment().is_some() || raw.contains('#') {
        return Err("a client_id URL must not have a fragment".into());
    }
    if url.path() == "/" || url.path().is_empty() {
        return Err("a client_id URL must have a path".into());
    }
    // The URL must be in its normal form: no dot segments, nothing the parser rewrote.
    if url.as_str() != raw || raw.split('/').any(|s| s == "." || s == "..") {
        return Err("a client_id URL must be in normal form (no dot segments)".into());
    }
    Ok(url)
}

#[derive(Deserialize)]
struct Document {
    client_id: Option<String>,
    client_name: Option<String>,
    redirect_uris: Option<Vec<String>>,
    token_endpoint_auth_method: Option<String>,
    /// The methods the client can use, of which `token_endpoint_auth_method` is its
    /// preference (OpenID Connect RP Metadata Choices; proposed for metadata
    /// documents in draft-ietf-oauth-client-id-metadata-document issue 87). ChatGPT's
    /// document prefers `private_key_jwt` and lists `none` here.
    /// Read loosely: a member of another shape is passed over, as unknown members
    /// are, and the client is judged by `token_endpoint_auth_method` alone.
    token_endpoint_auth_methods_supported: Option<serde_json::Value>,
    scope: Option<String>,
}

/// Validates a fetched document for `url` and turns it into a client. Scopes outside
/// `known` are dropped.
pub fn client_from_document(
    url: &Url,
    body: &[u8],
    known: &ScopeSet,
    now: u64,
) -> Result<Client, String> {
    let doc: Document = serde_json::from_slice(body)
        // Not serde's message: it quotes the document, which anyone may have this
        // server fetch from a host that trusts it, back to whoever asked.
        .map_err(|e| {
            format!(
                "the metadata document is not valid JSON, or a member has the wrong type \
                 (line {}, column {})",
                e.line(),
                e.column()
            )
        })?;
    if doc.client_id.as_deref() != Some(url.as_str()) {
        return Err("the metadata document's client_id differs from its URL".into());
    }
    let uris = doc
        .redirect_uris
        .filter(|u| !u.is_empty())
        .ok_or("the metadata document lists no redirect_uris")?;
    if uris.len() > MAX_REDIRECT_URIS {
        return Err("the metadata document lists too many redirect_uris".into());
    }
    let redirect_uris = super::redirect::parse_all(&uris)
        .map_err(|e| format!("the metadata document has a bad redirect URI: {e}"))?;
    // A document is public: it cannot carry a shared secret, so only `none` works.
    // A client that prefers another method but lists `none` among those it can use
    // is taken as the public client it can be; this server offers it nothing else
    // (its metadata lists no `private_key_jwt`), so it authenticates with `none`.
    let chosen = doc.token_endpoint_auth_method.as_deref();
    let can_use_none = matches!(chosen, None | Some("none"))
        || doc
            .token_endpoint_auth_methods_supported
            .as_ref()
            .and_then(serde_json::Value::as_array)
            .is_some_and(|methods| methods.iter().any(|m| m == "none"));
    if !can_use_none {
        return Err(format!(
            "the metadata document asks for {:?}; only \"none\" is supported for metadata documents",
            chosen.unwrap_or_default()
        ));
    }
    let client_id = ClientId::parse(url.as_str()).ok_or("the client_id URL is too long")?;
    let scope = doc
        .scope
        .as_deref()
        .map(ScopeSet::parse)
        .transpose()
        .map_err(|e| format!("the metadata document's scope is invalid: {e}"))?
        .map(|s| s.intersection(known))
        .filter(|s| !s.is_empty());
    Ok(Client {
        client_id,
        client_name: doc.client_name.as_deref().and_then(clean_name),
        redirect_uris,
        auth_method: AuthMethod::None,
        secret_hash: None,
        scope,
        kind: ClientKind::MetadataDocument,
        issued_at: now,
        has_grant: true,
        kept_at: 0,
    })
}

/// A document pinned in the `--config` file: its content read from a file at
/// start-up and used instead of fetching, for servers without outbound access.
#[derive(Clone, Debug)]
pub struct PinnedDocument {
    pub client: Client,
    /// Where the content came from, for the doctor and error messages.
    pub file: PathBuf,
}

/// Every pinned document, by URL.
#[derive(Clone, Debug, Default)]
pub struct PinnedDocuments(BTreeMap<String, PinnedDocument>);

impl PinnedDocuments {
    pub fn get(&self, url: &Url) -> Option<&PinnedDocument> {
        self.0.get(url.as_str())
    }

    /// Adds a document; a URL pinned twice is a configuration mistake.
    pub fn insert(&mut self, url: &Url, document: PinnedDocument) -> Result<(), String> {
        if self.0.contains_key(url.as_str()) {
            return Err(format!("{url} is pinned twice"));
        }
        self.0.insert(url.as_str().to_owned(), document);
        Ok(())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &PinnedDocument)> {
        self.0.iter().map(|(url, doc)| (url.as_str(), doc))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Reads the document pinned for `url` from `file`, under the rules of a fetched
/// one: an https `client_id` URL with a path, at most
/// [`crate::outbound::MAX_DOCUMENT_BYTES`], and content that describes that URL
/// ([`client_from_document`]). A pin must not let through what a fetch would refuse.
pub fn pin(url: &str, file: &Path, known: &ScopeSet) -> Result<(Url, PinnedDocument), String> {
    let url = document_url(url, false)
        .unwrap_or_else(|| Err("a client_id URL must use https".into()))
        .map_err(|e| format!("{url:?}: {e}"))?;
    let body = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    if body.len() > crate::outbound::MAX_DOCUMENT_BYTES {
        return Err(format!(
            "{}: the metadata document is too large (at most {} bytes)",
            file.display(),
            crate::outbound::MAX_DOCUMENT_BYTES
        ));
    }
    let client = client_from_document(&url, &body, known, 0)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    Ok((
        url,
        PinnedDocument {
            client,
            file: file.to_owned(),
        },
    ))
}

/// Fetched documents, in memory and bounded: an anonymous caller who names a new
/// document URL at every request costs a fetch, never storage. When full, expired
/// entries go first, then the one closest to expiry among those never *proven*.
///
/// A document is proven once its client redeemed a code or refreshed a token: the
/// owner approved it. Anonymous callers can only add unproven entries, so however
/// many documents they name they cannot push Claude's out, and a proven document's
/// next fetch may use places they cannot take (see `outbound`). The proven URLs are
/// remembered (as many as the cache holds) after their entries expire, and in the
/// store (see `AuthServer::document_is_proven`), so that a restart or another
/// instance knows them too.
pub struct DocumentCache {
    max: usize,
    entries: HashMap<String, (Client, u64)>,
    proven: HashMap<String, Proven>,
}

struct Proven {
    /// When last proven (for eviction, oldest first).
    at: u64,
    /// When this instance last wrote the store's record of it, if it did.
    stored_at: Option<u64>,
}

impl DocumentCache {
    pub fn new(max: usize) -> Self {
        DocumentCache {
            max: max.max(1),
            entries: HashMap::new(),
            proven: HashMap::new(),
        }
    }

    pub fn get(&self, url: &Url, now_ms: u64) -> Option<Client> {
        self.entries
            .get(url.as_str())
            .filter(|(_, expires)| *expires > now_ms)
            .map(|(client, _)| client.clone())
    }

    pub fn insert(&mut self, url: &Url, client: Client, expires_ms: u64, now_ms: u64) {
        if self.entries.len() >= self.max && !self.entries.contains_key(url.as_str()) {
            self.entries.retain(|_, (_, expires)| *expires > now_ms);
            if self.entries.len() >= self.max {
                let proven = &self.proven;
                let doomed = self
                    .entries
                    .iter()
                    .min_by_key(|(url, (_, expires))| (proven.contains_key(*url), *expires))
                    .map(|(url, _)| url.clone());
                if let Some(url) = doomed {
                    self.entries.remove(&url);
                }
            }
        }
        self.entries
            .insert(url.as_str().to_owned(), (client, expires_ms));
    }

    /// Notes that `url`'s client obtained tokens. Whether the store's record of it
    /// is to be written: never written here, or `rewrite_after_ms` ago.
    pub fn prove(&mut self, url: &str, now_ms: u64, rewrite_after_ms: u64) -> bool {
        let proven = self.proven_entry(url, now_ms);
        proven.at = now_ms;
        proven
            .stored_at
            .is_none_or(|at| now_ms.saturating_sub(at) >= rewrite_after_ms)
    }

    /// Notes that the store's record of `url` was written.
    pub fn stored(&mut self, url: &str, now_ms: u64) {
        if let Some(proven) = self.proven.get_mut(url) {
            proven.stored_at = Some(now_ms);
        }
    }

    /// Notes that the store says `url` is proven (another instance, or this one
    /// before a restart, saw its client obtain tokens).
    pub fn proven_elsewhere(&mut self, url: &str, now_ms: u64) {
        self.proven_entry(url, now_ms);
    }

    fn proven_entry(&mut self, url: &str, now_ms: u64) -> &mut Proven {
        if self.proven.len() >= self.max && !self.proven.contains_key(url) {
            let oldest = self
                .proven
                .iter()
                .min_by_key(|(_, proven)| proven.at)
                .map(|(url, _)| url.clone());
            if let Some(oldest) = oldest {
                self.proven.remove(&oldest);
            }
        }
        self.proven.entry(url.to_owned()).or_insert(Proven {
            at: now_ms,
            stored_at: None,
        })
    }

    pub fn is_proven(&self, url: &Url) -> bool {
        self.proven.contains_key(url.as_str())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLAUDE: &str = "https://claude.ai/oauth/claude-code-client-metadata";

    fn known() -> ScopeSet {
        ScopeSet::parse("read:articles write:articles").expect("scopes")
    }

    #[test]
    fn recognises_document_urls() {
        assert!(document_url("abc123", false).is_none());
        assert!(document_url(CLAUDE, false).is_some_and(|r| r.is_ok()));
        for bad in [
            "https://claude.ai",
            "https://claude.ai/",
            "https://claude.ai/a/../b",
            "https://claude.ai/a#frag",
            "https://user@claude.ai/doc",
            "https://intranet/doc",
            "https://intranet./doc",
        ] {
            assert!(
                document_url(bad, false).is_some_and(|r| r.is_err()),
                "{bad}"
            );
        }
        assert!(document_url("http://127.0.0.1:8000/doc", false).is_none());
        assert!(document_url("http://127.0.0.1:8000/doc", true).is_some_and(|r| r.is_ok()));
        // The test switch admits a dotless loopback name too.
        assert!(document_url("https://localhost:8443/doc", true).is_some_and(|r| r.is_ok()));
        assert!(document_url("https://localhost:8443/doc", false).is_some_and(|r| r.is_err()));
        // The test switch admits plain http on loopback only.
        assert!(document_url("http://example.com:8000/doc", true).is_some_and(|r| r.is_err()));
    }

    #[test]
    fn accepts_claude_codes_document_with_portless_loopback_redirects() {
        let url = Url::parse(CLAUDE).expect("url");
        let body = serde_json::json!({
            "client_id": CLAUDE,
            "client_name": "Claude Code",
            "redirect_uris": ["http://localhost/callback", "http://127.0.0.1/callback"],
            "grant_types": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_method": "none",
        });
        let client =
            client_from_document(&url, body.to_string().as_bytes(), &known(), 0).expect("valid");
        assert_eq!(client.kind, ClientKind::MetadataDocument);
        let requested =
            crate::oauth::redirect::RedirectUri::parse("http://localhost:54321/callback")
                .expect("uri");
        assert!(client.redirect_uri_for(&requested).is_some());
    }

    /// ChatGPT's document, as published (2026-08): it prefers `private_key_jwt`,
    /// which this server does not offer, and lists `none` as well.
    #[test]
    fn a_document_that_can_use_none_is_a_public_client_whatever_it_prefers() {
        let url = Url::parse("https://chatgpt.example/oauth/client.json").expect("url");
        let document = |method: serde_json::Value, methods: serde_json::Value| {
            let mut body = serde_json::json!({
                "client_id": url.as_str(),
                "client_name": "ChatGPT",
                "client_uri": "https://chatgpt.example/",
                "redirect_uris": ["https://chatgpt.example/connector/oauth/x"],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_signing_alg": "RS256",
                "jwks_uri": "https://chatgpt.example/oauth/jwks.json",
            });
            for (name, value) in [
                ("token_endpoint_auth_method", method),
                ("token_endpoint_auth_methods_supported", methods),
            ] {
                if !value.is_null() {
                    body[name] = value;
                }
            }
            client_from_document(&url, body.to_string().as_bytes(), &known(), 0)
        };
        let jwt = serde_json::json!("private_key_jwt");
        let both = serde_json::json!(["none", "private_key_jwt"]);
        let client = document(jwt.clone(), both).expect("ChatGPT's document");
        assert_eq!(client.auth_method, AuthMethod::None);
        assert!(client.secret_hash.is_none());
        // A client that cannot be public is still refused.
        let null = serde_json::Value::Null;
        assert!(document(jwt.clone(), null.clone()).is_err());
        assert!(document(jwt.clone(), serde_json::json!(["private_key_jwt"])).is_err());
        assert!(document(serde_json::json!("client_secret_basic"), null.clone()).is_err());
        // A list of another shape is passed over, as an unknown member would be.
        assert!(
            document(jwt, serde_json::json!("none")).is_err(),
            "not a list"
        );
        assert!(document(null.clone(), serde_json::json!("none")).is_ok());
        assert!(document(null, serde_json::json!([1, {"none": true}])).is_ok());
    }

    #[test]
    fn refuses_documents_that_do_not_describe_their_url() {
        let url = Url::parse(CLAUDE).expect("url");
        let cases = [
            serde_json::json!({"client_id": "https://evil.example/doc", "redirect_uris": ["https://a.example/cb"]}),
            serde_json::json!({"client_id": CLAUDE}),
            serde_json::json!({"client_id": CLAUDE, "redirect_uris": ["http://evil.example/cb"]}),
            serde_json::json!({"client_id": CLAUDE, "redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "client_secret_basic"}),
        ];
        for case in cases {
            assert!(
                client_from_document(&url, case.to_string().as_bytes(), &known(), 0).is_err(),
                "{case}"
            );
        }
        assert!(client_from_document(&url, b"not json", &known(), 0).is_err());
    }

    #[test]
    fn pinned_documents_follow_the_rules_of_fetched_ones() {
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, content: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, content).expect("write");
            path
        };
        let valid = write(
            "claude-code.json",
            serde_json::json!({
                "client_id": CLAUDE,
                "client_name": "Claude Code",
                "redirect_uris": ["http://localhost/callback", "http://127.0.0.1/callback"],
                "token_endpoint_auth_method": "none",
            })
            .to_string()
            .as_bytes(),
        );
        let (url, pinned) = pin(CLAUDE, &valid, &known()).expect("a valid document");
        assert_eq!(url.as_str(), CLAUDE);
        assert_eq!(pinned.client.kind, ClientKind::MetadataDocument);
        assert_eq!(pinned.client.client_name.as_deref(), Some("Claude Code"));
        assert_eq!(pinned.file, valid);
        let mut all = PinnedDocuments::default();
        all.insert(&url, pinned.clone()).expect("first");
        assert!(all.get(&url).is_some());
        assert!(all.insert(&url, pinned).is_err(), "pinned twice");

        let missing = dir.path().join("missing.json");
        let refused = pin(CLAUDE, &missing, &known()).expect_err("no such file");
        assert!(refused.contains("missing.json"), "{refused}");

        let garbage = write("garbage.json", b"<html>not json</html>");
        let refused = pin(CLAUDE, &garbage, &known()).expect_err("not JSON");
        assert!(refused.contains("not valid JSON"), "{refused}");
        // What a document holds is never repeated (a fetched one's error reaches
        // whoever named it): only where it went wrong.
        for body in [
            &br#""internal-secret""#[..],
            br#"{"client_id": ["internal-secret"]}"#,
            br#"{"scope": {"internal-secret": 1}}"#,
        ] {
            let refused = client_from_document(&url, body, &known(), 0).expect_err("refused");
            assert!(!refused.contains("internal-secret"), "{refused}");
            assert!(refused.contains("line 1"), "{refused}");
        }

        let other = write(
            "other.json",
            serde_json::json!({
                "client_id": "https://claude.ai/oauth/mcp-oauth-client-metadata",
                "redirect_uris": ["https://claude.ai/api/mcp/auth_callback"],
            })
            .to_string()
            .as_bytes(),
        );
        let refused = pin(CLAUDE, &other, &known()).expect_err("another client_id");
        assert!(
            refused.contains("client_id differs from its URL"),
            "{refused}"
        );

        let huge = write(
            "huge.json",
            &vec![b' '; crate::outbound::MAX_DOCUMENT_BYTES + 1],
        );
        let refused = pin(CLAUDE, &huge, &known()).expect_err("too large");
        assert!(refused.contains("too large"), "{refused}");

        for bad_url in ["http://claude.ai/doc", "https://claude.ai/", "claude-code"] {
            let refused = pin(bad_url, &valid, &known()).expect_err(bad_url);
            assert!(refused.contains(bad_url), "{refused}");
        }
    }

    /// A valid document's client for `url`.
    fn client(url: &Url) -> Client {
        let body = serde_json::json!({"client_id": url.as_str(), "redirect_uris": ["https://a.example/cb"]});
        client_from_document(url, body.to_string().as_bytes(), &known(), 0).expect("valid")
    }

    #[test]
    fn the_document_cache_is_bounded_and_forgets_expired_entries() {
        let mut cache = DocumentCache::new(2);
        let urls: Vec<Url> = (0..3)
            .map(|i| Url::parse(&format!("https://c{i}.example/doc")).expect("url"))
            .collect();
        cache.insert(&urls[0], client(&urls[0]), 1_000, 0);
        cache.insert(&urls[1], client(&urls[1]), 5_000, 0);
        cache.insert(&urls[2], client(&urls[2]), 9_000, 0);
        assert_eq!(cache.len(), 2);
        assert!(
            cache.get(&urls[0], 10).is_none(),
            "the soonest to expire went"
        );
        assert!(cache.get(&urls[2], 10).is_some());
        assert!(cache.get(&urls[1], 5_000).is_none(), "expired");
        for i in 0..100 {
            let url = Url::parse(&format!("https://many{i}.example/doc")).expect("url");
            cache.insert(&url, client(&url), 99_000, 6_000);
        }
        assert_eq!(cache.len(), 2);
    }

    /// Documents named by anonymous callers, however many and however long they
    /// may be cached, do not push out one whose client obtained tokens.
    #[test]
    fn a_proven_document_outlasts_a_flood_of_unproven_ones() {
        let mut cache = DocumentCache::new(3);
        let claude = Url::parse(CLAUDE).expect("url");
        cache.insert(&claude, client(&claude), 300_000, 0);
        assert!(cache.prove(claude.as_str(), 0, 1_000), "to be stored");
        assert!(cache.prove(claude.as_str(), 10, 1_000), "until it was");
        cache.stored(claude.as_str(), 10);
        assert!(
            !cache.prove(claude.as_str(), 999, 1_000),
            "not again so soon"
        );
        assert!(cache.prove(claude.as_str(), 1_010, 1_000), "then again");
        for i in 0..100 {
            let url = Url::parse(&format!("https://flood{i}.example/doc")).expect("url");
            cache.insert(&url, client(&url), 86_400_000, 1_000);
        }
        assert!(cache.get(&claude, 2_000).is_some());
        assert!(cache.is_proven(&claude));
        assert_eq!(cache.len(), 3);
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;
    use crate::strategies::{json, tricky_text, url};

    const FIELDS: &[&str] = &[
        "client_id",
        "client_name",
        "redirect_uris",
        "token_endpoint_auth_method",
        "token_endpoint_auth_methods_supported",
        "scope",
    ];

    fn known() -> ScopeSet {
        ScopeSet::parse("read:articles write:articles").expect("scopes")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// A document URL is taken only in its normal form: what is accepted is
        /// exactly what the URL serialises to, https (or loopback http when allowed),
        /// with a path, without a fragment or credentials.
        #[test]
        fn document_urls_are_https_in_normal_form(
            raw in prop_oneof![url(), tricky_text(), "https://[a-z.]{1,10}(/[a-z.]{0,3}){0,3}"],
            allow in any::<bool>(),
        ) {
            let looks_like_url = raw.starts_with("https://") || (allow && raw.starts_with("http://"));
            let judged = document_url(&raw, allow);
            prop_assert_eq!(judged.is_some(), looks_like_url);
            let Some(Ok(url)) = judged else { return Ok(()) };
            prop_assert_eq!(url.as_str(), raw.as_str());
            prop_assert!(raw.len() <= MAX_URL_LEN);
            prop_assert!(url.scheme() == "https" || allow);
            prop_assert!(url.fragment().is_none() && url.username().is_empty());
            prop_assert!(url.path() != "/");
            prop_assert!(!raw.split('/').any(|s| s == "." || s == ".."));
            let dotless = matches!(url.host(), Some(url::Host::Domain(name)) if !name.trim_end_matches('.').contains('.'));
            prop_assert!(!dotless || (allow && crate::net::is_loopback_url(&url)));
            prop_assert!(matches!(document_url(url.as_str(), allow), Some(Ok(again)) if again == url));
        }

        /// Any JSON body, and bodies that claim the URL, become a public client whose id
        /// is the URL and whose scopes are known ones, or are refused.
        #[test]
        fn documents_become_public_clients_or_are_refused(
            mut document in json(FIELDS),
            claim in any::<bool>(),
            uris in prop::option::of(prop::collection::vec(url(), 0..3)),
            name in prop::option::of(tricky_text()),
        ) {
            let url = Url::parse("https://client.example/doc").expect("url");
            if let Value::Object(fields) = &mut document {
                if claim {
                    fields.insert("client_id".into(), url.as_str().into());
                }
                if let Some(uris) = uris {
                    fields.insert("redirect_uris".into(), uris.into());
                }
                if let Some(name) = name {
                    fields.insert("client_name".into(), name.into());
                }
            }
            let body = serde_json::to_vec(&document).expect("json");
            let Ok(client) = client_from_document(&url, &body, &known(), 7) else {
                return Ok(());
            };
            prop_assert_eq!(client.client_id.as_str(), url.as_str());
            prop_assert_eq!(client.kind, ClientKind::MetadataDocument);
            prop_assert_eq!(client.auth_method, AuthMethod::None);
            prop_assert!(client.secret_hash.is_none());
            prop_assert!(!client.redirect_uris.is_empty());
            prop_assert!(client.redirect_uris.len() <= MAX_REDIRECT_URIS);
            if let Some(scope) = &client.scope {
                prop_assert!(!scope.is_empty() && scope.is_subset_of(&known()));
            }
            if let Some(name) = &client.client_name {
                prop_assert_eq!(Some(name.clone()), clean_name(name));
            }
        }
    }
}
