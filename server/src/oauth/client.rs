//! OAuth clients: registered dynamically (RFC 7591), named by a client-ID metadata
//! document, or configured statically. How they authenticate at the token endpoint.

use serde::{Deserialize, Serialize};

use super::{redirect::RedirectUri, scope::ScopeSet, secret::SecretHash};

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
    pub client_id: String,
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
}

impl Client {
    /// The registered URI that allows `requested`, if any.
    pub fn redirect_uri_for(&self, requested: &RedirectUri) -> Option<&RedirectUri> {
        self.redirect_uris.iter().find(|r| r.allows(requested))
    }

    /// The name to show on the consent page.
    pub fn display_name(&self) -> &str {
        self.client_name.as_deref().unwrap_or(&self.client_id)
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
#[derive(Debug, PartialEq, Eq)]
pub enum MetadataError {
    InvalidRedirectUri(String),
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
    pub fn validate(self) -> Result<ValidRegistration, MetadataError> {
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
        let redirect_uris = uris
            .iter()
            .map(|u| RedirectUri::parse(u).map_err(InvalidRedirectUri))
            .collect::<Result<Vec<_>, _>>()?;

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
            Some(name) => {
                let name: String = name.chars().filter(|c| !c.is_control()).collect();
                let name = name.trim();
                if name.chars().count() > MAX_CLIENT_NAME {
                    return Err(InvalidClientMetadata(format!(
                        "client_name is longer than {MAX_CLIENT_NAME} characters"
                    )));
                }
                (!name.is_empty()).then(|| name.to_owned())
            }
            None => None,
        };
        // Unknown scopes are dropped, not fatal.
        let scope = self
            .scope
            .map(|s| ScopeSet::parse(&s).known)
            .filter(|s| !s.is_empty());
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
        .validate()
        .expect("valid");
        assert_eq!(valid.auth_method, AuthMethod::None);
        assert_eq!(valid.scope, None);
        assert_eq!(valid.client_name.as_deref(), Some("Claude"));
    }

    #[test]
    fn refuses_bad_metadata_with_the_right_error() {
        let err = |json| request(json).validate().expect_err("invalid");
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
}
