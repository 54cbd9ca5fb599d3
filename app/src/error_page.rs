//! The error page that every browser-facing failure uses: unknown pages, and (from the
//! authorization endpoint) requests that must not be redirected back to a client.

use leptos::prelude::*;

#[component]
pub fn ErrorPage(
    /// The HTTP status shown to the person (the response carries it too).
    status: u16,
    #[prop(into)] title: String,
    #[prop(into)] message: String,
) -> impl IntoView {
    view! {
        <main class="page error-page">
            <section class="card error-card" role="alert">
                <p class="error-status">{status}</p>
                <h1 data-testid="error-title">{title}</h1>
                <p data-testid="error-message">{message}</p>
                <p>
                    <a href="/">"Back to Gatehouse"</a>
                </p>
            </section>
        </main>
    }
}

/// A whole HTML document around [`ErrorPage`].
#[cfg(feature = "ssr")]
pub fn error_document(status: u16, title: &str, message: &str) -> String {
    crate::document::document(
        title,
        view! { <ErrorPage status title=title.to_owned() message=message.to_owned() /> },
    )
}
