//! Whole HTML documents for pages the server renders outside the Leptos router: the
//! error page, sign-in, first-run setup and consent. They need no hydration (plain
//! links and forms work without JavaScript), so they ship no wasm. Leptos escapes
//! every text node and attribute, so what they echo from a request is inert.

use leptos::prelude::*;

/// Buttons and links marked `arm` (the consent page's approve links, the console's
/// revoke, delete and publish buttons) take no click unless their window has been in
/// front for a moment. The CSS holds them for their first 0.8 s on the page (see
/// `.arm`), which another site can wait out by opening the page behind a window of
/// its own, then closing that window under the person's double-click: the second
/// click would land here ("double-clickjacking"). So they are held while the window
/// is not focused or not visible, and for 0.6 s after it is again; a click (or Enter)
/// on a held one does nothing. The hold is a class on the root element and the click
/// check listens on the document, so it covers what the console renders later too.
/// Without JavaScript only the CSS holds.
pub const HOLD_WHILE_AWAY: &str = "(()=>{\
const root=document.documentElement;let t=0;\
const front=()=>document.hasFocus()&&!document.hidden;\
const hold=()=>{clearTimeout(t);root.classList.add('held');};\
const wake=()=>{clearTimeout(t);t=setTimeout(()=>{if(front())root.classList.remove('held');},600);};\
hold();if(front())wake();\
addEventListener('blur',hold);addEventListener('focus',wake);\
document.addEventListener('visibilitychange',()=>document.hidden?hold():wake());\
document.addEventListener('click',e=>{if(root.classList.contains('held')&&e.target instanceof Element&&e.target.closest('.arm')){e.preventDefault();e.stopImmediatePropagation();}},true);\
})();";

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
