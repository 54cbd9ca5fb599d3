//! Whole HTML documents for pages the server renders outside the Leptos router: the
//! error page, sign-in, first-run setup and consent. They need no hydration (plain
//! links and forms work without JavaScript), so they ship no wasm. Leptos escapes
//! every text node and attribute, so what they echo from a request is inert.

use leptos::prelude::*;

/// `<!DOCTYPE html>` around `body` with the shared stylesheet.
pub fn document(title: &str, body: impl RenderHtml) -> String {
    document_with_script(title, body, "")
}

/// [`document`] with `script` (a constant, never anything from a request) run at the
/// end of the body.
pub fn document_with_script(title: &str, body: impl RenderHtml, script: &'static str) -> String {
    let script = if script.is_empty() {
        String::new()
    } else {
        format!("<script>{script}</script>")
    };
    let head = view! { <title>{format!("{title} · Gatehouse")}</title> }.to_html();
    let body = body.to_html();
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">{head}\
         <link rel=\"icon\" href=\"/favicon.svg\" type=\"image/svg+xml\">\
         <link rel=\"stylesheet\" href=\"{href}\"></head><body>{body}{script}</body></html>",
        href = super::STYLESHEET_HREF,
    )
}
