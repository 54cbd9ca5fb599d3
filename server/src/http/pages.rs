//! Browser-facing answers outside the Leptos router: the shared error page with its
//! status code, for endpoints that must show an error instead of redirecting.

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};

/// An HTML error page. Everything in `title` and `message` is escaped.
pub struct ErrorPage {
    pub status: StatusCode,
    pub title: String,
    pub message: String,
}

impl ErrorPage {
    pub fn new(status: StatusCode, title: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorPage {
            status,
            title: title.into(),
            message: message.into(),
        }
    }
}

impl IntoResponse for ErrorPage {
    fn into_response(self) -> Response {
        let html = app::error_document(self.status.as_u16(), &self.title, &self.message);
        (
            self.status,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
                (header::X_FRAME_OPTIONS, "DENY"),
                (header::CONTENT_SECURITY_POLICY, "frame-ancestors 'none'"),
            ],
            html,
        )
            .into_response()
    }
}

/// A 303 redirect that no cache keeps.
pub fn see_other(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(location) => (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, location),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
        )
            .into_response(),
        Err(_) => ErrorPage::new(
            StatusCode::BAD_REQUEST,
            "Invalid redirect",
            "The redirect target is malformed.",
        )
        .into_response(),
    }
}
