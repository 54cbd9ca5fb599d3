//! `POST /oauth/register`: RFC 7591 dynamic client registration.

use std::net::IpAddr;

use axum::{
    extract::State,
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};

use super::{no_store, OAuthBody, OAuthError};
use crate::{
    audit::{Event, EventKind},
    http::{
        address::{is_unnamed_local_proxy, ClientAddress},
        AppState,
    },
    net::content_type_is,
    oauth::{client::RegistrationRequest, ErrorCode},
    ratelimit::{Network, RetryAfter},
};

/// The part of `--registrations-per-hour` one address (an IPv6 /64), and one IPv6
/// /48, may take: a tenth, so that registrations from a few addresses cannot use up
/// what all may register.
pub const REGISTRATION_SHARE: u32 = 10;

pub async fn register(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    headers: HeaderMap,
    OAuthBody(body): OAuthBody,
) -> Result<Response, OAuthError> {
    // Every request is read and checked: bounded per address and minute. Not for a
    // proxy on this machine that names nobody (see `is_unnamed_local_proxy`): all
    // its clients would share one address's minute, which one of them could spend
    // for everyone; what is kept stays bounded in all by the hour.
    let local = is_unnamed_local_proxy(address, &state.config.trusted_proxies);
    if !local {
        if let Err(wait) = state.registrations.hit_networks(address) {
            return Ok(too_many(address, "registration", "from this address", wait));
        }
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
    // Every registration is a record kept for --unused-client-ttl: those kept are
    // bounded in all and, so that a few addresses cannot use up what all may
    // register (an IPv6 range holds many addresses), per address and per /48. Only
    // what is kept counts: a request refused as invalid takes nothing.
    let kept = match take_place(&state, address) {
        Ok(kept) => kept,
        Err((limit, whose, wait)) => return Ok(too_many(address, limit, whose, wait)),
    };
    let client = match state.auth.register(request).await {
        Ok(client) => client,
        Err(e) => {
            give_back(&state, &kept);
            return Err(e.into());
        }
    };
    state.audit.record(
        Event::new(EventKind::ClientRegistered)
            .client(client.client_id.to_string())
            .address(address),
    );
    let mut response = (StatusCode::CREATED, Json(client)).into_response();
    no_store(response.headers_mut());
    Ok(response)
}

/// Where a registration from `address` counts besides the whole: its IPv6 /48, then
/// its address (an IPv6 /64), the wider first so that a refusal there takes nothing
/// in the narrower one; none for a local proxy (see [`is_unnamed_local_proxy`]).
fn kept_networks(state: &AppState, address: IpAddr) -> Vec<Network> {
    if is_unnamed_local_proxy(address, &state.config.trusted_proxies) {
        return Vec::new();
    }
    Network::wide_first(address).collect()
}

/// What one kept registration took.
struct Kept {
    networks: Vec<Network>,
}

/// Which limit refused a registration (the metrics' label), whose it is, and when
/// to try again.
type Refusal = (&'static str, &'static str, RetryAfter);

/// A place for one kept registration from `address` in its networks' shares and in
/// the whole, or what refuses it (and then it takes nothing).
fn take_place(state: &AppState, address: IpAddr) -> Result<Kept, Refusal> {
    let networks = kept_networks(state, address);
    if let Err((network, wait)) = state.registration_shares.hit_all(&networks) {
        let whose = match network {
            Network::Address(_) => "from this address",
            Network::Wide(_) => "from this network",
        };
        return Err(("registration", whose, wait));
    }
    if let Err(wait) = state.all_registrations.hit_key(&()) {
        for network in &networks {
            state.registration_shares.give_back(network);
        }
        return Err(("registrations", "in all", wait));
    }
    Ok(Kept { networks })
}

/// Gives back what [`take_place`] took, for a registration not kept after all.
fn give_back(state: &AppState, kept: &Kept) {
    for network in &kept.networks {
        state.registration_shares.give_back(network);
    }
    state.all_registrations.give_back(&());
}

/// `429 temporarily_unavailable` with `Retry-After`, logged at most once a minute
/// and counted under `limit`.
fn too_many(address: IpAddr, limit: &'static str, whose: &str, wait: RetryAfter) -> Response {
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
    refused
}
