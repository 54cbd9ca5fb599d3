//! Gatehouse's pages: the Leptos components rendered on the server and hydrated in the
//! browser. Nothing here knows about OAuth or storage; the server hands pages what they
//! show through context and server functions.

use leptos::prelude::*;
use leptos_meta::{provide_meta_context, MetaTags, Stylesheet, Title};
use leptos_router::{
    components::{ParentRoute, Route, Router, Routes},
    ParamSegment, SsrMode, StaticSegment,
};
use serde::{Deserialize, Serialize};

pub mod console;
#[cfg(feature = "ssr")]
mod document;
mod error_page;
#[cfg(feature = "ssr")]
pub mod oauth_pages;
#[cfg(feature = "ssr")]
pub use error_page::error_document;
pub use error_page::ErrorPage;

/// Where the compiled stylesheet is served (cargo-leptos writes `<site-pkg-dir>/<name>.css`).
pub const STYLESHEET_HREF: &str = "/pkg/gatehouse.css";

/// What the pages show about this deployment. The server provides it as context.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteInfo {
    /// The externally visible origin, e.g. `https://gate.example.com`.
    pub public_url: String,
    /// Every MCP server Gatehouse guards: the built-in one at `/mcp` (unless it is
    /// off) and each upstream at `/mcp/NAME`.
    pub endpoints: Vec<McpEndpoint>,
}

/// One MCP URL to paste into a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpEndpoint {
    /// A short name for `claude mcp add NAME URL`.
    pub name: String,
    pub title: String,
    pub url: String,
}

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

/// The HTML document around the app, rendered on the server only.
pub fn shell(options: LeptosOptions) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8" />
                <meta name="viewport" content="width=device-width, initial-scale=1" />
                <link rel="icon" href="/favicon.svg" type="image/svg+xml" />
                <AutoReload options=options.clone() />
                <HydrationScripts options />
                <MetaTags />
                // The console's revoke, delete and publish buttons hold still while
                // the window is away (see `HOLD_WHILE_AWAY`).
                <script inner_html=HOLD_WHILE_AWAY></script>
            </head>
            <body>
                <App />
            </body>
        </html>
    }
}

#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    // Effects run only in the browser: this marks the page once the wasm bundle has
    // taken over, which browser tests wait for before they click.
    #[cfg(feature = "hydrate")]
    Effect::new(|_| {
        if let Some(body) = document().body() {
            let _ = body.set_attribute("data-hydrated", "true");
        }
    });
    view! {
        <Stylesheet id="leptos" href=STYLESHEET_HREF />
        <Title text="Gatehouse" />
        <Router>
            <Routes fallback=NotFound>
                <Route path=StaticSegment("") view=HomePage />
                // The console renders whole before it is sent (no streamed-in parts),
                // so that it reads and revokes with JavaScript off.
                <ParentRoute
                    path=StaticSegment("console")
                    view=console::pages::ConsoleLayout
                    ssr=SsrMode::Async
                >
                    <Route path=StaticSegment("") view=console::pages::AppsPage ssr=SsrMode::Async />
                    <Route
                        path=StaticSegment("activity")
                        view=console::pages::ActivityPage
                        ssr=SsrMode::Async
                    />
                    <Route
                        path=StaticSegment("articles")
                        view=console::pages::ArticlesPage
                        ssr=SsrMode::Async
                    />
                    <Route
                        path=(StaticSegment("articles"), ParamSegment("slug"))
                        view=console::pages::ArticlePage
                        ssr=SsrMode::Async
                    />
                    <Route
                        path=StaticSegment("connect")
                        view=console::pages::ConnectPage
                        ssr=SsrMode::Async
                    />
                </ParentRoute>
            </Routes>
        </Router>
    }
}

/// Reads the deployment's public URLs from the server's context.
#[server]
pub async fn get_site_info() -> Result<SiteInfo, ServerFnError> {
    use_context::<SiteInfo>()
        .ok_or_else(|| ServerFnError::new("site information is not configured"))
}

#[component]
fn HomePage() -> impl IntoView {
    let info = Resource::new_blocking(|| (), |_| get_site_info());
    let signed_in = Resource::new(|| (), |_| console::console_signed_in());
    view! {
        <main class="page">
            <header class="brand">
                <img class="brand-mark" src="/favicon.svg" alt="" width="36" height="36" />
                <h1>"Gatehouse"</h1>
            </header>
            <p class="lede">
                "An OAuth 2.1 authorization server and the MCP server it protects. "
                "MCP clients such as Claude Code, Claude.ai connectors, mcp-remote and the "
                "MCP Inspector sign in here before they may call this server's tools."
            </p>
            <Suspense fallback=|| ()>
                {move || Suspend::new(async move {
                    matches!(signed_in.await, Ok(true)).then(|| view! {
                        <p class="card owner-link">
                            "You are signed in as the owner. "
                            <a class="button" href="/console" data-testid="open-console">"Open the console"</a>
                        </p>
                    })
                })}
            </Suspense>
            <Suspense fallback=|| view! { <p>"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match info.await {
                        Ok(info) => {
                            view! {
                                <section class="card">
                                    <h2>"Connect a client"</h2>
                                    <p>"Paste one of these URLs into your MCP client:"</p>
                                    <ul class="endpoints">
                                        {info
                                            .endpoints
                                            .into_iter()
                                            .map(|endpoint| view! { <McpUrl endpoint /> })
                                            .collect_view()}
                                    </ul>
                                </section>
                            }
                                .into_any()
                        }
                        Err(_) => {
                            view! {
                                <p class="notice">"This server's address is not configured."</p>
                            }
                                .into_any()
                        }
                    }
                })}
            </Suspense>
        </main>
    }
}

#[component]
fn McpUrl(endpoint: McpEndpoint) -> impl IntoView {
    let (show_setup, set_show_setup) = signal(false);
    let claude_code = format!(
        "claude mcp add --transport http {} {}",
        endpoint.name, endpoint.url
    );
    view! {
        <li class="endpoint">
            <h3>{endpoint.title}</h3>
            <code class="mcp-url" data-testid="mcp-url">
                {endpoint.url.clone()}
            </code>
            <button
                class="button"
                data-testid="toggle-setup"
                on:click=move |_| set_show_setup.update(|shown| *shown = !*shown)
            >
                {move || if show_setup.get() { "Hide setup commands" } else { "Show setup commands" }}
            </button>
            <Show when=move || show_setup.get()>
                <div class="setup" data-testid="setup">
                    <h4>"Claude Code"</h4>
                    <pre>{claude_code.clone()}</pre>
                    <p>"Then run " <code>"/mcp"</code> " in Claude Code to sign in."</p>
                </div>
            </Show>
        </li>
    }
}

/// The page for any path the router does not know.
#[component]
fn NotFound() -> impl IntoView {
    #[cfg(feature = "ssr")]
    if let Some(response) = use_context::<leptos_axum::ResponseOptions>() {
        response.set_status(http::StatusCode::NOT_FOUND);
    }
    view! {
        <ErrorPage
            status=404
            title="Page not found"
            message="There is nothing at this address. The MCP endpoints are listed on the home page."
        />
    }
}
