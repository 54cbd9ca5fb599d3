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

/// A whole HTML document around [`ErrorPage`], for handlers that answer outside the
/// Leptos router (it needs no hydration: it has nothing interactive). Leptos escapes
/// every text node, so `title` and `message` may carry anything a request sent.
#[cfg(feature = "ssr")]
pub fn error_document(status: u16, title: &str, message: &str) -> String {
    let page_title = format!("{title} · Gatehouse");
    let body = view! {
        <ErrorPage status title=title.to_owned() message=message.to_owned() />
    }
    .to_html();
    let head = view! {
        <title>{page_title}</title>
    }
    .to_html();
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">{head}\
         <link rel=\"stylesheet\" href=\"{href}\"></head><body>{body}</body></html>",
        href = super::STYLESHEET_HREF,
    )
}
