//! The authorization server's errors, one type per flow, each naming its OAuth error
//! code once. `crate::http` turns them into responses in one place per wire format
//! (RFC 6749 JSON for API endpoints, the HTML error page for browser endpoints).

use std::fmt;

use super::redirect::RedirectUri;
use crate::store::StoreError;

/// An `error_description` as RFC 6749 §5.2 allows it: printable ASCII without `"`
/// and `\` (which become `'` and `/`); anything else (an echoed non-ASCII value, a
/// control character) becomes `?`.
pub fn description_text(description: &str) -> String {
    description
        .chars()
        .map(|c| match c {
            '"' => '\'',
            '\\' => '/',
            ' '..='~' => c,
            _ => '?',
        })
        .collect()
}

/// The OAuth error codes Gatehouse answers with (RFC 6749 §4.1.2.1 and §5.2,
/// RFC 7591 §3.2.2, RFC 8707 §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    UnsupportedResponseType,
    InvalidScope,
    InvalidTarget,
    AccessDenied,
    InvalidRedirectUri,
    InvalidClientMetadata,
    TemporarilyUnavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidClient => "invalid_client",
            ErrorCode::InvalidGrant => "invalid_grant",
            ErrorCode::UnauthorizedClient => "unauthorized_client",
            ErrorCode::UnsupportedGrantType => "unsupported_grant_type",
            ErrorCode::UnsupportedResponseType => "unsupported_response_type",
            ErrorCode::InvalidScope => "invalid_scope",
            ErrorCode::InvalidTarget => "invalid_target",
            ErrorCode::AccessDenied => "access_denied",
            ErrorCode::InvalidRedirectUri => "invalid_redirect_uri",
            ErrorCode::InvalidClientMetadata => "invalid_client_metadata",
            ErrorCode::TemporarilyUnavailable => "temporarily_unavailable",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a client could not be looked up.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The client's metadata document is unusable (unreachable, invalid, not public).
    #[error("{0}")]
    Document(String),
    /// The document could not be had just now (this server is busy, its host is
    /// slow or failing): nothing is known against the client.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<crate::outbound::FetchError> for ClientError {
    fn from(e: crate::outbound::FetchError) -> Self {
        if e.transient {
            ClientError::Unavailable(e.reason)
        } else {
            ClientError::Document(e.reason)
        }
    }
}

/// RFC 7591 §3.2.2.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("{0}")]
    InvalidRedirectUri(String),
    #[error("{0}")]
    InvalidClientMetadata(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RegisterError {
    pub fn code(&self) -> ErrorCode {
        match self {
            RegisterError::InvalidRedirectUri(_) => ErrorCode::InvalidRedirectUri,
            RegisterError::InvalidClientMetadata(_) => ErrorCode::InvalidClientMetadata,
            RegisterError::Store(_) => ErrorCode::TemporarilyUnavailable,
        }
    }
}

/// A failed authorization request. RFC 6749 §4.1.2.1: while the client or redirect URI
/// is in doubt, the error is shown to the person and never sent to the URI.
#[derive(Debug, thiserror::Error)]
pub enum AuthorizeError {
    /// Shown as a page; nothing is redirected.
    #[error("{title}: {message}")]
    Page {
        title: &'static str,
        message: String,
    },
    /// Sent back to the client's verified redirect URI.
    #[error("{code}: {description}")]
    Redirect {
        redirect_uri: RedirectUri,
        code: ErrorCode,
        description: String,
        state: Option<String>,
        /// Whether the operator vouches for the client's redirect URIs (the static
        /// client, a pinned document). Anyone can register a client, or publish a
        /// metadata document, naming any URI: such a client's errors are shown with a
        /// link instead of redirected, so that a link to this server cannot send
        /// a person on to anywhere at once (RFC 9700 §4.11.2).
        trusted: bool,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why an approve or deny link did nothing.
#[derive(Debug, thiserror::Error)]
pub enum TicketError {
    #[error("this approval link is not valid: it expired, was already used, or belongs to another sign-in")]
    Invalid,
    #[error("the MCP server this approval was for was replaced after the consent page was shown")]
    ServerChanged,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// RFC 6749 §5.2 errors of the token and revocation endpoints.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{0}")]
    InvalidRequest(String),
    /// `basic` is whether the client tried HTTP Basic (the answer then carries
    /// `WWW-Authenticate: Basic`).
    #[error("{description}")]
    InvalidClient { description: String, basic: bool },
    #[error("{0}")]
    InvalidGrant(String),
    /// RFC 7009 §2.1: the token was issued to another client.
    #[error("{0}")]
    UnauthorizedClient(String),
    #[error("{0}")]
    UnsupportedGrantType(String),
    #[error("{0}")]
    InvalidScope(String),
    #[error("{0}")]
    InvalidTarget(String),
    /// Something this server needs is not available right now (a client's metadata
    /// document): 503, and the client may retry.
    #[error("{0}")]
    Unavailable(String),
    /// Not now, for `seconds` more: 503 with `Retry-After`.
    #[error("{description}")]
    Wait { description: String, seconds: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl TokenError {
    pub fn code(&self) -> ErrorCode {
        match self {
            TokenError::InvalidRequest(_) => ErrorCode::InvalidRequest,
            TokenError::InvalidClient { .. } => ErrorCode::InvalidClient,
            TokenError::InvalidGrant(_) => ErrorCode::InvalidGrant,
            TokenError::UnauthorizedClient(_) => ErrorCode::UnauthorizedClient,
            TokenError::UnsupportedGrantType(_) => ErrorCode::UnsupportedGrantType,
            TokenError::InvalidScope(_) => ErrorCode::InvalidScope,
            TokenError::InvalidTarget(_) => ErrorCode::InvalidTarget,
            TokenError::Unavailable(_) | TokenError::Wait { .. } | TokenError::Store(_) => {
                ErrorCode::TemporarilyUnavailable
            }
        }
    }
}

#[cfg(test)]
mod description_tests {
    use super::description_text;

    #[test]
    fn a_description_keeps_to_the_characters_rfc_6749_allows() {
        let text = description_text("scope \"caf\u{e9}\\x\"\n ok");
        assert_eq!(text, "scope 'caf?/x'? ok");
        assert!(text
            .bytes()
            .all(|b| matches!(b, 0x20..=0x21 | 0x23..=0x5B | 0x5D..=0x7E)));
    }
}
