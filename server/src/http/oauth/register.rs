//! `POST /oauth/register`: RFC 7591 dynamic client registration.

use axum::{
    extract::State,
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};

use super::{no_store, OAuthBody, OAuthError};
use crate::{
    audit::{Event, EventKind},
    http::{address::ClientAddress, AppState},
    net::content_type_is,
    oauth::{client::RegistrationRequest, ErrorCode},
};

pub async fn register(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    headers: HeaderMap,
    OAuthBody(body): OAuthBody,
) -> Result<Response, OAuthError> {
    // Every registration is a record kept for --unused-client-ttl: bounded per
    // address, and in all (an IPv6 range holds many addresses). One address's flood
    // does not use up what all may register.
    let refused = match state.registrations.hit(address) {
        Err(wait) => Some(("registration", "from this address", wait)),
        Ok(()) => state
            .all_registrations
            .hit_key(&())
            .err()
            .map(|wait| ("registrations", "in all", wait)),
    };
    if let Some((limit, whose, wait)) = refused {
        crate::warn_throttled!(client = %address, "registration refused: too many {whose}");
        crate::telemetry::rate_limited(limit);
        let mut refused = OAuthError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TemporarilyUnavailable,
            format!(
                "too many registrations {whose}; try again in {} second(s)",
                wait.seconds()
            ),
        )
        .into_response();
        refused
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(wait.seconds()));
        return Ok(refused);
    }
    // The body is already bounded by the router (64 KiB); a registration, which is
    // kept for --unused-client-ttl, by its own smaller limit.
    if body.len() > state.config.limits.max_registration_bytes {
        return Err(OAuthError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::InvalidClientMetadata,
            format!(
                "the registration is larger than {} bytes",
                state.config.limits.max_registration_bytes
            ),
        ));
    }
    if !content_type_is(&headers, "application/json") {
        return Err(OAuthError::bad_request(
            ErrorCode::InvalidClientMetadata,
            "send the metadata as application/json",
        ));
    }
    let request: RegistrationRequest = serde_json::from_slice(&body).map_err(|e| {
        OAuthError::bad_request(
            ErrorCode::InvalidClientMetadata,
            format!("the body is not valid client metadata: {e}"),
        )
    })?;
    let client = state.auth.register(request).await?;
    state.audit.record(
        Event::new(EventKind::ClientRegistered)
            .client(client.client_id.to_string())
            .address(address),
    );
    let mut response = (StatusCode::CREATED, Json(client)).into_response();
    no_store(response.headers_mut());
    Ok(response)
}
