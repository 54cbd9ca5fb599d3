//! OAuth clients: registered dynamically (RFC 7591), named by a client-ID metadata
//! document, or configured statically. How they authenticate at the token endpoint.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{redirect::RedirectUri, scope::ScopeSet, secret::SecretHash};

/// A `client_id`: 1 to [`ClientId::MAX_LEN`] visible ASCII characters (RFC 6749
/// Appendix A.1). Registered clients get random ones; metadata-document clients use
/// their document's URL.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClientId(String);

impl ClientId {
    pub const MAX_LEN: usize = 2048;

    pub fn parse(raw: &str) -> Option<Self> {
        let valid = !raw.is_empty()
            && raw.len() <= Self::MAX_LEN
            && raw.bytes().all(|b| (0x20..=0x7e).contains(&b));
        valid.then(|| ClientId(raw.to_owned()))
    }

    /// A fresh id for a registered client (128 random bits).
    pub fn random() -> Self {
        ClientId(super::secret::random_id())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ClientId {
    type Error = &'static str;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        ClientId::parse(&raw).ok_or("not a client_id")
    }
}

impl From<ClientId> for String {
    fn from(id: ClientId) -> String {
        id.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientId({})", self.0)
    }
}

/// A client-provided name made safe to show: control characters and Unicode format
/// characters (bidi overrides, zero-width joiners: category Cf) removed, trimmed, at
/// most [`MAX_CLIENT_NAME`] characters. `None` when nothing is left.
pub fn clean_name(raw: &str) -> Option<String> {
    let name: String = raw
        .chars()
        .filter(|c| !is_hidden_char(*c))
        .take(MAX_CLIENT_NAME)
        .collect();
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

/// Whether `c` is not text to show as it is: a control character, a format
/// character ([`is_format_char`]), or a line or paragraph separator. Names lose
/// them; what goes to a log or a terminal has them escaped or blanked.
pub fn is_hidden_char(c: char) -> bool {
    c.is_control() || is_format_char(c) || matches!(c, '\u{2028}' | '\u{2029}')
}

/// Unicode general category Cf (format characters), and the other default-ignorable
/// code points, that can disguise a name: soft hyphen, Arabic and Syriac marks, the
/// combining grapheme joiner, Hangul fillers, Khmer inherent vowels, Mongolian
/// variation selectors and vowel separator, zero-width and bidirectional controls,
/// invisible operators, variation selectors, the BOM, interlinear annotation marks,
/// and the tag characters and supplementary variation selectors.
fn is_format_char(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{0600}'..='\u{0605}' | '\u{061C}' | '\u{06DD}'
        | '\u{070F}' | '\u{0890}'..='\u{0891}' | '\u{08E2}' | '\u{115F}'..='\u{1160}'
        | '\u{17B4}'..='\u{17B5}' | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}'
        | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}'
        | '\u{FFF9}'..='\u{FFFB}' | '\u{110BD}' | '\u{110CD}' | '\u{13430}'..='\u{1343F}'
        | '\u{1BCA0}'..='\u{1BCA3}' | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E0FFF}')
}

/// How a client authenticates at the token endpoint (RFC 7591 §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// A public client: no secret (Claude, Claude Code, mcp-remote).
    None,
    ClientSecretPost,
    ClientSecretBasic,
}

impl AuthMethod {
    pub const SUPPORTED: [&'static str; 3] = ["none", "client_secret_post", "client_secret_basic"];

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "none" => Some(AuthMethod::None),
            "client_secret_post" => Some(AuthMethod::ClientSecretPost),
            "client_secret_basic" => Some(AuthMethod::ClientSecretBasic),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::None => "none",
            AuthMethod::ClientSecretPost => "client_secret_post",
            AuthMethod::ClientSecretBasic => "client_secret_basic",
        }
    }
}

/// Where a client's metadata came from; the consent page marks the unverified ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientKind {
    /// Registered through `/oauth/register`: anyone can claim any name.
    Registered,
    /// Its `client_id` is an https URL whose document we fetched.
    MetadataDocument,
    /// Configured by the operator.
    Static,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Client {
    pub client_id: ClientId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_name: Option<String>,
    pub redirect_uris: Vec<RedirectUri>,
    pub auth_method: AuthMethod,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_hash: Option<SecretHash>,
    /// The scopes the client registered with, used when a request names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<ScopeSet>,
    pub kind: ClientKind,
    /// Seconds since the epoch.
    pub issued_at: u64,
    /// Whether a code was ever redeemed; registered clients without one expire.
    #[serde(default)]
    pub has_grant: bool,
    /// When a registered client's record was last given its lifetime (seconds since
    /// the epoch; 0 for records kept for good before lifetimes were renewed).
    #[serde(default)]
    pub kept_at: u64,
}

impl Client {
    /// The registered URI that allows `requested`, if any.
    pub fn redirect_uri_for(&self, requested: &RedirectUri) -> Option<&RedirectUri> {
        self.redirect_uris.iter().find(|r| r.allows(requested))
    }

    /// The name to show on the consent page.
    pub fn display_name(&self) -> &str {
        self.client_name
            .as_deref()
            .unwrap_or(self.client_id.as_str())
    }
}

/// A registration request (RFC 7591 §2). Fields we do not use are accepted and ignored.
#[derive(Debug, Default, Deserialize)]
pub struct RegistrationRequest {
    #[serde(default)]
    pub redirect_uris: Option<Vec<String>>,
    #[serde(default)]
    pub token_endpoint_auth_method: Option<String>,
    #[serde(default)]
    pub grant_types: Option<Vec<String>>,
    #[serde(default)]
    pub response_types: Option<Vec<String>>,
    #[serde(default)]
    pub client_name: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
}

/// Why a registration was refused (RFC 7591 §3.2.2).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("{0}")]
    InvalidRedirectUri(String),
    #[error("{0}")]
    InvalidClientMetadata(String),
}

/// A registration that passed validation.
#[derive(Debug)]
pub struct ValidRegistration {
    pub redirect_uris: Vec<RedirectUri>,
    pub auth_method: AuthMethod,
    pub client_name: Option<String>,
    pub scope: Option<ScopeSet>,
}

pub const MAX_CLIENT_NAME: usize = 200;
pub const MAX_REDIRECT_URIS: usize = 20;

impl RegistrationRequest {
    /// Validates the request; scopes outside `known` are dropped, not fatal
    /// (Claude.ai has sent `scope: "claudeai"`).
    pub fn validate(self, known: &ScopeSet) -> Result<ValidRegistration, MetadataError> {
        use MetadataError::*;
        let uris = self
            .redirect_uris
            .filter(|uris| !uris.is_empty())
            .ok_or_else(|| {
                InvalidRedirectUri("redirect_uris is required and must not be empty".into())
            })?;
        if uris.len() > MAX_REDIRECT_URIS {
            return Err(InvalidRedirectUri(format!(
                "at most {MAX_REDIRECT_URIS} redirect_uris"
            )));
        }
        let redirect_uris = super::redirect::parse_all(&uris).map_err(InvalidRedirectUri)?;

        // RFC 7591 §2: the default method is client_secret_basic.
        let auth_method = match self.token_endpoint_auth_method.as_deref() {
            None => AuthMethod::ClientSecretBasic,
            Some(raw) => AuthMethod::parse(raw).ok_or_else(|| {
                InvalidClientMetadata(format!(
                    "token_endpoint_auth_method {raw:?} is not supported; use one of {}",
                    AuthMethod::SUPPORTED.join(", ")
                ))
            })?,
        };
        if let Some(grant_types) = &self.grant_types {
            if let Some(bad) = grant_types
                .iter()
                .find(|g| !matches!(g.as_str(), "authorization_code" | "refresh_token"))
            {
                return Err(InvalidClientMetadata(format!(
                    "grant type {bad:?} is not supported; use authorization_code and refresh_token"
                )));
            }
        }
        if let Some(response_types) = &self.response_types {
            if response_types.iter().any(|r| r != "code") {
                return Err(InvalidClientMetadata(
                    "only the response type \"code\" is supported".into(),
                ));
            }
        }
        let client_name = match self.client_name {
            Some(name) if name.chars().count() > MAX_CLIENT_NAME => {
                return Err(InvalidClientMetadata(format!(
                    "client_name is longer than {MAX_CLIENT_NAME} characters"
                )))
            }
            Some(name) => clean_name(&name),
            None => None,
        };
        let scope = match self.scope.as_deref().map(ScopeSet::parse) {
            Some(Ok(requested)) => Some(requested.intersection(known)).filter(|s| !s.is_empty()),
            Some(Err(e)) => return Err(InvalidClientMetadata(format!("scope: {e}"))),
            None => None,
        };
        Ok(ValidRegistration {
            redirect_uris,
            auth_method,
            client_name,
            scope,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: serde_json::Value) -> RegistrationRequest {
        serde_json::from_value(json).expect("parses")
    }

    fn known() -> ScopeSet {
        ScopeSet::parse("read:articles write:articles").expect("scopes")
    }

    #[test]
    fn accepts_what_claude_sends() {
        let valid = request(serde_json::json!({
            "client_name": "Claude",
            "redirect_uris": ["https://claude.ai/api/mcp/auth_callback"],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
            "scope": "claudeai",
        }))
        .validate(&known())
        .expect("valid");
        assert_eq!(valid.auth_method, AuthMethod::None);
        assert_eq!(valid.scope, None);
        assert_eq!(valid.client_name.as_deref(), Some("Claude"));
    }

    #[test]
    fn refuses_bad_metadata_with_the_right_error() {
        let err = |json| request(json).validate(&known()).expect_err("invalid");
        assert!(matches!(
            err(serde_json::json!({})),
            MetadataError::InvalidRedirectUri(_)
        ));
        assert!(matches!(
            err(serde_json::json!({"redirect_uris": ["http://evil.example/cb"]})),
            MetadataError::InvalidRedirectUri(_)
        ));
        assert!(matches!(
            err(serde_json::json!({"redirect_uris": ["https://a.example/cb#x"]})),
            MetadataError::InvalidRedirectUri(_)
        ));
        assert!(matches!(
            err(
                serde_json::json!({"redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "private_key_jwt"})
            ),
            MetadataError::InvalidClientMetadata(_)
        ));
        assert!(matches!(
            err(
                serde_json::json!({"redirect_uris": ["https://a.example/cb"], "grant_types": ["implicit"]})
            ),
            MetadataError::InvalidClientMetadata(_)
        ));
    }

    #[test]
    fn names_lose_format_and_control_characters() {
        assert_eq!(
            clean_name("Claude\u{202E}edoC\u{200B} \u{0007}").as_deref(),
            Some("ClaudeedoC")
        );
        assert_eq!(clean_name("\u{200B}\u{FEFF} "), None);
        assert_eq!(clean_name("Zoë's app").as_deref(), Some("Zoë's app"));
    }

    #[test]
    fn scopes_are_bounded_and_unknown_ones_dropped() {
        let valid = request(serde_json::json!({
            "redirect_uris": ["https://a.example/cb"],
            "scope": "read:articles claudeai",
        }))
        .validate(&known())
        .expect("valid");
        assert_eq!(valid.scope.expect("scope").to_string(), "read:articles");
        let many = vec!["x"; 40].join(" ");
        let refused = request(serde_json::json!({
            "redirect_uris": ["https://a.example/cb"],
            "scope": many,
        }))
        .validate(&known())
        .expect_err("too many scopes");
        assert!(
            matches!(refused, MetadataError::InvalidClientMetadata(m) if m.contains("at most"))
        );
    }

    #[test]
    fn client_ids_are_visible_ascii() {
        assert!(ClientId::parse("abc-123").is_some());
        assert!(ClientId::parse("https://claude.ai/oauth/doc").is_some());
        for bad in ["", "a\u{0}b", "é", "tab\there"] {
            assert!(ClientId::parse(bad).is_none(), "{bad:?}");
        }
        assert!(ClientId::parse(&"a".repeat(ClientId::MAX_LEN + 1)).is_none());
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;
    use crate::strategies::{json, tricky_text, url};

    const FIELDS: &[&str] = &[
        "redirect_uris",
        "token_endpoint_auth_method",
        "grant_types",
        "response_types",
        "client_name",
        "scope",
    ];

    fn known() -> ScopeSet {
        ScopeSet::parse("read:articles write:articles").expect("scopes")
    }

    /// A registration body that is mostly well-typed, so that cases reach `validate`.
    fn near_valid_request() -> impl Strategy<Value = Value> {
        (
            prop::option::of(prop::collection::vec(url(), 0..22)),
            prop::option::of(prop::sample::select(vec![
                "none",
                "client_secret_post",
                "client_secret_basic",
                "private_key_jwt",
            ])),
            prop::option::of(prop::collection::vec(
                prop::sample::select(vec!["authorization_code", "refresh_token", "implicit"]),
                0..3,
            )),
            prop::option::of(prop::collection::vec(
                prop::sample::select(vec!["code", "token"]),
                0..2,
            )),
            prop::option::of(prop_oneof![tricky_text(), "[a-z ]{190,210}"]),
            prop::option::of(prop_oneof![
                Just("read:articles claudeai".to_owned()),
                "(read:articles|write:articles|x|a\"b)( (read:articles|write:articles|x)){0,40}",
            ]),
        )
            .prop_map(|(uris, method, grants, responses, name, scope)| {
                let mut object = serde_json::Map::new();
                let mut put = |key: &str, value: Option<Value>| {
                    if let Some(value) = value {
                        object.insert(key.to_owned(), value);
                    }
                };
                put("redirect_uris", uris.map(Value::from));
                put("token_endpoint_auth_method", method.map(Value::from));
                put("grant_types", grants.map(Value::from));
                put("response_types", responses.map(Value::from));
                put("client_name", name.map(Value::from));
                put("scope", scope.map(Value::from));
                Value::Object(object)
            })
    }

    fn assert_clean(name: &str) -> Result<(), TestCaseError> {
        prop_assert!(!name.is_empty());
        prop_assert!(name.chars().count() <= MAX_CLIENT_NAME);
        prop_assert_eq!(name, name.trim());
        prop_assert!(
            !name.chars().any(|c| c.is_control() || is_format_char(c)),
            "{:?}",
            name
        );
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn any_json_registration_is_parsed_or_refused_without_panic(
            body in prop_oneof![json(FIELDS), near_valid_request()]
        ) {
            let text = serde_json::to_vec(&body).expect("json");
            let from_value = serde_json::from_value::<RegistrationRequest>(body);
            let from_bytes = serde_json::from_slice::<RegistrationRequest>(&text);
            prop_assert_eq!(from_value.is_ok(), from_bytes.is_ok());
            let Ok(request) = from_value else { return Ok(()) };
            let method = request.token_endpoint_auth_method.clone();
            let name = request.client_name.clone();
            let Ok(valid) = request.validate(&known()) else { return Ok(()) };
            prop_assert!(!valid.redirect_uris.is_empty());
            prop_assert!(valid.redirect_uris.len() <= MAX_REDIRECT_URIS);
            prop_assert_eq!(
                valid.auth_method.as_str(),
                method.as_deref().unwrap_or("client_secret_basic")
            );
            if let Some(scope) = &valid.scope {
                prop_assert!(!scope.is_empty() && scope.is_subset_of(&known()));
            }
            if let Some(cleaned) = &valid.client_name {
                assert_clean(cleaned)?;
            }
            prop_assert_eq!(valid.client_name, name.as_deref().and_then(clean_name));
        }

        #[test]
        fn clean_names_are_safe_bounded_and_stable(raw in prop_oneof![tricky_text(), "[a-z\u{202E} ]{150,260}"]) {
            let Some(name) = clean_name(&raw) else {
                // Registration refuses longer names before cleaning them.
                if raw.chars().count() <= MAX_CLIENT_NAME {
                    prop_assert!(raw
                        .chars()
                        .all(|c| c.is_control() || is_format_char(c) || c.is_whitespace()));
                }
                return Ok(());
            };
            assert_clean(&name)?;
            prop_assert_eq!(clean_name(&name), Some(name.clone()), "idempotent");
            // Only removals: the name is a subsequence of what was sent.
            let mut sent = raw.chars();
            prop_assert!(name.chars().all(|c| sent.any(|s| s == c)));
        }

        #[test]
        fn client_ids_are_1_to_2048_visible_ascii(raw in prop_oneof![tricky_text(), url(), "[ -~]{2040,2050}"]) {
            let expected = !raw.is_empty()
                && raw.len() <= ClientId::MAX_LEN
                && raw.bytes().all(|b| (0x20..=0x7e).contains(&b));
            let parsed = ClientId::parse(&raw);
            prop_assert_eq!(parsed.is_some(), expected);
            if let Some(id) = parsed {
                prop_assert_eq!(id.as_str(), raw.as_str());
                let json = serde_json::to_string(&id).expect("json");
                prop_assert_eq!(serde_json::from_str::<ClientId>(&json).expect("back"), id);
            }
        }
    }
}
