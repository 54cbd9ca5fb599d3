//! The owner's sign-in (`/oauth/login`, `/oauth/logout`) and first-run setup
//! (`/setup`), with the session cookie: a random id (the store keeps its hash),
//! `HttpOnly`, `SameSite=Lax`, and `Secure` with the `__Host-` prefix under https.

use axum::{
    extract::State,
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Deserialize;

use super::{page_headers, same_origin_post, unavailable_page, PageBody, PageQuery};
use crate::{
    audit::{Event, EventKind},
    http::{
        address::ClientAddress,
        pages::{see_other, ErrorPage},
        session::{cookie_name, cookie_value, device_cookie, device_cookie_name, session_cookie},
        AppState,
    },
    oauth::owner::SetupError,
};

/// Where to go after signing in: only back into an authorization request, the
/// console (never to one of its confirmations), or home, so the parameter cannot be
/// used as an open redirect.
fn safe_return_to(raw: Option<&str>) -> String {
    let one_line = |path: &str| !path.contains(['\r', '\n']);
    // A console path: plain characters only, so it cannot turn into another host.
    let console = |path: &str| {
        (path == "/console" || path.starts_with("/console/") || path.starts_with("/console?"))
            && path.bytes().all(|b| b.is_ascii_graphic() && b != b'\\')
            && !path.contains("//")
            && !path.contains("/..")
            && !["%2e", "%2f", "%5c"]
                .iter()
                .any(|encoded| path.to_ascii_lowercase().contains(encoded))
    };
    match raw {
        Some(path) if path.starts_with("/oauth/authorize?") && one_line(path) => path.to_owned(),
        Some(path) if console(path) => crate::http::console::without_confirmations(path),
        _ => "/".to_owned(),
    }
}

#[derive(Deserialize)]
pub struct LoginQuery {
    return_to: Option<String>,
    setup: Option<String>,
}

pub async fn login_page(PageQuery(query): PageQuery<LoginQuery>) -> Response {
    let notice = query
        .setup
        .as_deref()
        .map(|_| "Your password is set. Sign in with it.");
    let html = app::oauth_pages::sign_in_document(
        &safe_return_to(query.return_to.as_deref()),
        notice,
        None,
    );
    (StatusCode::OK, page_headers(), html).into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    password: Option<String>,
    return_to: Option<String>,
}

pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    ClientAddress(address): ClientAddress,
    PageBody(body): PageBody,
) -> Response {
    if let Err(refused) = same_origin_post(&state, &headers) {
        return refused.into_response();
    }
    let form: LoginForm = serde_urlencoded::from_bytes(&body).unwrap_or(LoginForm {
        password: None,
        return_to: None,
    });
    let return_to = safe_return_to(form.return_to.as_deref());
    let retry = |status: StatusCode, message: &str| {
        (
            status,
            page_headers(),
            app::oauth_pages::sign_in_document(&return_to, None, Some(message)),
        )
            .into_response()
    };
    // A browser the owner signed in with counts against itself alone, so strangers
    // at the owner's address cannot slow the owner down.
    let device = match cookie_value(&headers, device_cookie_name(&state)) {
        Some(cookie) => match state.owner.known_device(cookie).await {
            Ok(device) => device,
            Err(e) => return unavailable_page(&e).into_response(),
        },
        None => None,
    };
    // Reserved before the password is checked: a burst from one address is checked
    // only as often as its budget allows, and never locks out another address.
    let reserved = match device {
        Some(device) => state.limiter.reserve_known(device, address),
        None => state.limiter.reserve(address),
    };
    let mut attempt = match reserved {
        Ok(attempt) => attempt,
        Err(wait) => {
            crate::warn_throttled!(client = %address, "sign-in slowed down: too many failures from this address");
            crate::telemetry::rate_limited("sign_in");
            let mut response = retry(
                StatusCode::TOO_MANY_REQUESTS,
                &format!(
                    "Too many failed sign-ins from your address. Try again in {} second(s).",
                    wait.seconds()
                ),
            );
            response.headers_mut().insert(
                header::RETRY_AFTER,
                axum::http::HeaderValue::from(wait.seconds()),
            );
            return response;
        }
    };
    let password = form.password.unwrap_or_default();
    let admission = match device {
        Some(_) => state.owner.admit_known(),
        None => state.owner.admit(),
    };
    let Some(admission) = admission else {
        // Nothing was checked, so nothing counts against the address.
        drop(attempt);
        crate::warn_throttled!(client = %address, "sign-in refused: too many sign-ins wait to be checked");
        crate::telemetry::rate_limited("sign_in_busy");
        let mut response = retry(
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many sign-ins are being checked right now. Try again in a few seconds.",
        );
        response.headers_mut().insert(
            header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("2"),
        );
        return response;
    };
    attempt.checking();
    // The same answer whether or not a password exists.
    let verified = match state.owner.check(admission, &password).await {
        Ok(Some(verified)) => {
            attempt.succeeded();
            state
                .audit
                .record(Event::new(EventKind::SignInSucceeded).address(address));
            verified
        }
        Ok(None) => {
            attempt.failed();
            state
                .audit
                .record(Event::new(EventKind::SignInFailed).address(address));
            tracing::warn!(client = %address, "failed sign-in");
            return retry(StatusCode::UNAUTHORIZED, "That password is not right.");
        }
        Err(e) => {
            attempt.release();
            return unavailable_page(&e).into_response();
        }
    };
    // A new id at every sign-in (no session fixation).
    if let Some(old) = cookie_value(&headers, cookie_name(&state)) {
        let _ = state.owner.end_session(old).await;
    }
    let session = match state.owner.new_session(&verified).await {
        Ok(session) => session,
        Err(e) => return unavailable_page(&e).into_response(),
    };
    let mut response = see_other(&return_to);
    let max_age = crate::oauth::owner::SIGN_IN_TTL.as_secs();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie(&state, &session, max_age),
    );
    if device.is_none() {
        match state.owner.new_device(&verified).await {
            Ok(device) => {
                let max_age = crate::oauth::owner::DEVICE_TTL.as_secs();
                response
                    .headers_mut()
                    .append(header::SET_COOKIE, device_cookie(&state, &device, max_age));
            }
            // Signed in all the same; the next sign-in counts by address.
            Err(e) => tracing::warn!(error = %e, "cannot remember the owner's browser"),
        }
    }
    response
}

pub async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(refused) = same_origin_post(&state, &headers) {
        return refused.into_response();
    }
    if let Some(value) = cookie_value(&headers, cookie_name(&state)) {
        if let Err(e) = state.owner.end_session(value).await {
            return unavailable_page(&e).into_response();
        }
    }
    let mut response = see_other("/");
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session_cookie(&state, "", 0));
    response
}

#[derive(Deserialize)]
pub struct SetupQuery {
    token: Option<String>,
}

fn invalid_setup() -> Response {
    ErrorPage::new(
        StatusCode::BAD_REQUEST,
        "This setup link is not valid",
        "Setup links work once, for an hour, and only while no password is set. \
         Restart Gatehouse for a new one, or use `gatehouse owner set-password`.",
    )
    .into_response()
}

pub async fn setup_page(
    State(state): State<AppState>,
    PageQuery(query): PageQuery<SetupQuery>,
) -> Response {
    let Some(token) = query.token.filter(|t| !t.is_empty()) else {
        return invalid_setup();
    };
    match state.owner.setup_token_is_valid(&token).await {
        Ok(true) => (
            StatusCode::OK,
            page_headers(),
            app::oauth_pages::setup_document(&token, None),
        )
            .into_response(),
        Ok(false) => invalid_setup(),
        Err(e) => unavailable_page(&e).into_response(),
    }
}

#[derive(Deserialize)]
struct SetupForm {
    token: Option<String>,
    password: Option<String>,
    confirm: Option<String>,
}

pub async fn setup(
    State(state): State<AppState>,
    headers: HeaderMap,
    PageBody(body): PageBody,
) -> Response {
    if let Err(refused) = same_origin_post(&state, &headers) {
        return refused.into_response();
    }
    let Ok(form) = serde_urlencoded::from_bytes::<SetupForm>(&body) else {
        return invalid_setup();
    };
    let token = form.token.unwrap_or_default();
    let password = form.password.unwrap_or_default();
    let again = |message: &str| {
        (
            StatusCode::BAD_REQUEST,
            page_headers(),
            app::oauth_pages::setup_document(&token, Some(message)),
        )
            .into_response()
    };
    if form.confirm.as_deref() != Some(password.as_str()) {
        return again("The two passwords differ.");
    }
    match state.owner.complete_setup(&token, &password).await {
        Ok(()) => {
            tracing::info!("owner password set through the setup link");
            see_other("/oauth/login?setup=done")
        }
        Err(SetupError::WeakPassword(message)) => again(&message),
        Err(SetupError::Hashing(cause)) => {
            tracing::error!(error = %cause, "cannot hash the new owner password");
            ErrorPage::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The password could not be set",
                "Hashing the password failed. Try again; if it keeps failing, see the server log.",
            )
            .into_response()
        }
        Err(SetupError::InvalidToken) => invalid_setup(),
        Err(SetupError::Store(e)) => unavailable_page(&e).into_response(),
    }
}
