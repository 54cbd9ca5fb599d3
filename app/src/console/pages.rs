//! The console's pages. Reading and revoking work with plain links and forms (no
//! JavaScript); once hydrated, the same forms run as server actions and the pages
//! refresh in place.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::{
    components::{Form, Outlet, A},
    hooks::{use_params_map, use_query_map},
};

use super::*;
use crate::McpEndpoint;

/// Percent-encodes a query value (everything but unreserved characters).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A textarea's initial text. Leptos writes a textarea's children into the server's
/// HTML without escaping them (it is raw text to the parser, up to `</textarea>`),
/// and a client wrote this text: escape it there. The browser decodes it back; in
/// the browser, Leptos makes a text node, which needs no escaping. (The parser also
/// drops one newline right after the start tag, so the server sends one to keep a
/// body's own leading newline.)
fn textarea_text(text: String) -> String {
    #[cfg(feature = "ssr")]
    let text = format!(
        "\n{}",
        text.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    );
    text
}

/// A server function's error, in words.
fn message(error: &ServerFnError) -> String {
    match error {
        ServerFnError::ServerError(message) => message.clone(),
        other => other.to_string(),
    }
}

#[component]
fn Failure(error: ServerFnError) -> impl IntoView {
    view! {
        <p class="badge danger" role="alert" data-testid="console-error">
            {message(&error)}
        </p>
    }
}

/// An action's failure, once it has one.
fn action_error<T: Clone + Send + Sync + 'static>(
    value: impl Get<Value = Option<Result<T, ServerFnError>>> + Send + Sync + 'static,
) -> impl IntoView {
    move || match value.get() {
        Some(Err(error)) => Some(view! { <Failure error /> }),
        _ => None,
    }
}

/// The frame around every console page: the navigation and sign-out.
#[component]
pub fn ConsoleLayout() -> impl IntoView {
    view! {
        <Title text="Console" />
        <div class="console">
            <header class="console-header">
                <a class="console-brand" href="/">
                    <img class="brand-mark" src="/favicon.svg" alt="" width="28" height="28" />
                    "Gatehouse"
                </a>
                <nav class="console-nav" aria-label="Console">
                    <A href="/console" exact=true>
                        "Connected apps"
                    </A>
                    <A href="/console/activity">"Activity"</A>
                    <A href="/console/articles">"Articles"</A>
                    <A href="/console/connect">"Connect"</A>
                </nav>
                <form method="post" action="/oauth/logout" class="sign-out" rel="external">
                    <button class="button secondary" type="submit">
                        "Sign out"
                    </button>
                </form>
            </header>
            <Outlet />
        </div>
    }
}

#[component]
pub fn AppsPage() -> impl IntoView {
    let revoke = ServerAction::<RevokeGrant>::new();
    let revoke_all = ServerAction::<RevokeClient>::new();
    let query = use_query_map();
    let apps = Resource::new(
        move || (revoke.version().get(), revoke_all.version().get()),
        |_| console_apps(),
    );
    view! {
        <main class="console-main">
            <h1>"Connected apps"</h1>
            <p class="muted">
                "Every client that holds access now. Revoking ends it at once: the client's next request is refused, and it must ask you again."
            </p>
            {action_error(revoke.value())}
            {action_error(revoke_all.value())}
            <Suspense fallback=|| view! { <p>"Loading…"</p> }>
                {move || {
                    let confirm_grant = query.read().get("revoke");
                    let confirm_client = query.read().get("revoke_client");
                    Suspend::new(async move {
                        match apps.await {
                            Ok(AppsView { csrf, apps }) => {
                                let confirm = confirm_panel(
                                    &apps,
                                    confirm_grant,
                                    confirm_client,
                                    &csrf,
                                    revoke,
                                    revoke_all,
                                );
                                view! {
                                    {confirm}
                                    <AppsTable apps />
                                }
                                    .into_any()
                            }
                            Err(error) => view! { <Failure error /> }.into_any(),
                        }
                    })
                }}
            </Suspense>
        </main>
    }
}

/// The confirmation a revoke link opens: a form that ends one grant, or every grant
/// of one client.
fn confirm_panel(
    apps: &[AppRow],
    grant: Option<String>,
    client: Option<String>,
    csrf: &str,
    revoke: ServerAction<RevokeGrant>,
    revoke_all: ServerAction<RevokeClient>,
) -> Option<AnyView> {
    if let Some(app) = grant.and_then(|g| apps.iter().find(|a| a.grant == g)) {
        let (csrf, grant) = (csrf.to_owned(), app.grant.clone());
        return Some(
            view! {
                <section class="card confirm" data-testid="confirm-revoke">
                    <h2>"Revoke " {app.client_name.clone()} "?"</h2>
                    <p>
                        "It loses access to " <code>{app.resource.clone()}</code>
                        " (" {app.scopes.clone()} ") now."
                    </p>
                    <ActionForm action=revoke>
                        <input type="hidden" name="csrf" value=csrf />
                        <input type="hidden" name="grant" value=grant />
                        <div class="actions">
                            <button class="button danger arm" type="submit" data-testid="confirm">
                                "Revoke access"
                            </button>
                            <a class="button secondary" href="/console">
                                "Cancel"
                            </a>
                        </div>
                    </ActionForm>
                </section>
            }
            .into_any(),
        );
    }
    let client = client?;
    let of_client: Vec<&AppRow> = apps.iter().filter(|a| a.client_id == client).collect();
    let name = of_client.first()?.client_name.clone();
    let count = of_client.len();
    let csrf = csrf.to_owned();
    Some(
        view! {
            <section class="card confirm" data-testid="confirm-revoke">
                <h2>"Revoke all access of " {name} "?"</h2>
                <p>{format!("This ends its {count} grant(s) now.")}</p>
                <ActionForm action=revoke_all>
                    <input type="hidden" name="csrf" value=csrf />
                    <input type="hidden" name="client_id" value=client />
                    <div class="actions">
                        <button class="button danger arm" type="submit" data-testid="confirm">
                            "Revoke all"
                        </button>
                        <a class="button secondary" href="/console">
                            "Cancel"
                        </a>
                    </div>
                </ActionForm>
            </section>
        }
        .into_any(),
    )
}

#[component]
fn AppsTable(apps: Vec<AppRow>) -> impl IntoView {
    if apps.is_empty() {
        return view! {
            <p class="card notice" data-testid="no-apps">
                "No client has access. Connect one from the "
                <a href="/console/connect">"Connect"</a>
                " page."
            </p>
        }
        .into_any();
    }
    view! {
        <div class="table-wrap">
            <table class="console-table" data-testid="apps">
                <thead>
                    <tr>
                        <th>"App"</th>
                        <th>"Sends codes to"</th>
                        <th>"Access"</th>
                        <th>"Approved"</th>
                        <th>"Last used"</th>
                        <th>"Tool calls (24 h)"</th>
                        <th></th>
                    </tr>
                </thead>
                <tbody>
                    {apps
                        .into_iter()
                        .map(|app| {
                            let revoke_href = format!("/console?revoke={}", encode(&app.grant));
                            let revoke_all_href = format!(
                                "/console?revoke_client={}",
                                encode(&app.client_id),
                            );
                            let badge = if app.verified { "badge" } else { "badge warning" };
                            view! {
                                <tr data-testid="app" data-grant=app.grant.clone()>
                                    <td>
                                        <strong data-testid="app-name">{app.client_name}</strong>
                                        <br />
                                        <span class=badge data-testid="app-identity">
                                            {app.identity}
                                        </span>
                                        <br />
                                        <code class="small">{app.client_id}</code>
                                    </td>
                                    <td>{app.redirect_hosts.join(", ")}</td>
                                    <td>
                                        <code data-testid="app-scopes">{app.scopes}</code>
                                        <br />
                                        <code class="small">{app.resource}</code>
                                    </td>
                                    <td>{app.approved}</td>
                                    <td data-testid="app-last-used">
                                        {match (app.pending, app.last_used) {
                                            (true, _) => "code not yet redeemed".to_owned(),
                                            (false, Some(when)) => when,
                                            (false, None) => "never".to_owned(),
                                        }}
                                    </td>
                                    <td data-testid="app-calls">{app.calls_last_day}</td>
                                    <td class="row-actions">
                                        <a
                                            class="button danger small"
                                            href=revoke_href
                                            data-testid="revoke"
                                        >
                                            "Revoke…"
                                        </a>
                                        <a class="small" href=revoke_all_href data-testid="revoke-all">
                                            "Revoke all of this app"
                                        </a>
                                    </td>
                                </tr>
                            }
                        })
                        .collect_view()}
                </tbody>
            </table>
        </div>
    }
    .into_any()
}

#[component]
pub fn ActivityPage() -> impl IntoView {
    let query = use_query_map();
    let filter = move || {
        let q = query.read();
        (q.get("client"), q.get("kind"), q.get("before"))
    };
    let activity = Resource::new(filter, |(client, kind, before)| {
        console_activity(client, kind, before)
    });
    view! {
        <main class="console-main">
            <h1>"Activity"</h1>
            <Suspense fallback=|| view! { <p>"Loading…"</p> }>
                {move || {
                    let (client, kind, _) = filter();
                    Suspend::new(async move {
                        match activity.await {
                            Ok(view) => view! { <ActivityList view client kind /> }.into_any(),
                            Err(error) => view! { <Failure error /> }.into_any(),
                        }
                    })
                }}
            </Suspense>
        </main>
    }
}

#[component]
fn ActivityList(view: ActivityView, client: Option<String>, kind: Option<String>) -> impl IntoView {
    let ActivityView {
        events,
        next,
        clients,
    } = view;
    let (client, kind) = (client.unwrap_or_default(), kind.unwrap_or_default());
    let older = next.map(|cursor| {
        format!(
            "/console/activity?client={}&kind={}&before={}",
            encode(&client),
            encode(&kind),
            encode(&cursor)
        )
    });
    let client_options = clients
        .into_iter()
        .map(|(id, name)| {
            let selected = id == client;
            view! {
                <option value=id selected=selected>
                    {name}
                </option>
            }
        })
        .collect_view();
    let kind_options = EVENT_KINDS
        .iter()
        .map(|(name, words)| {
            view! {
                <option value=*name selected=*name == kind>
                    {*words}
                </option>
            }
        })
        .collect_view();
    view! {
        <Form method="GET" action="/console/activity">
            <div class="filters">
                <label>
                    "Client "
                    <select name="client" data-testid="filter-client">
                        <option value="">"Any client"</option>
                        {client_options}
                    </select>
                </label>
                <label>
                    "Kind "
                    <select name="kind" data-testid="filter-kind">
                        <option value="">"Anything"</option>
                        {kind_options}
                    </select>
                </label>
                <button class="button secondary" type="submit">
                    "Filter"
                </button>
            </div>
        </Form>
        {if events.is_empty() {
            view! { <p class="card notice" data-testid="no-events">"Nothing yet."</p> }.into_any()
        } else {
            view! {
                <div class="table-wrap">
                    <table class="console-table" data-testid="events">
                        <thead>
                            <tr>
                                <th>"When (UTC)"</th>
                                <th>"What"</th>
                                <th>"Client"</th>
                                <th>"Details"</th>
                            </tr>
                        </thead>
                        <tbody>
                            {events
                                .into_iter()
                                .map(|event| {
                                    let class = match event.outcome.as_deref() {
                                        Some("ok") | None => "",
                                        _ => "attention",
                                    };
                                    view! {
                                        <tr data-testid="event" data-kind=event.kind.clone() class=class>
                                            <td>{event.at}</td>
                                            <td>{kind_words(&event.kind).to_owned()}</td>
                                            <td>{event.client.unwrap_or_default()}</td>
                                            <td data-testid="event-detail">{event.detail}</td>
                                        </tr>
                                    }
                                })
                                .collect_view()}
                        </tbody>
                    </table>
                </div>
            }
                .into_any()
        }}
        {older.map(|href| view! { <p><a href=href data-testid="older">"Older events"</a></p> })}
    }
}

#[component]
pub fn ArticlesPage() -> impl IntoView {
    let articles = Resource::new(|| (), |_| console_articles());
    view! {
        <main class="console-main">
            <h1>"Articles"</h1>
            <p class="muted">"What the MCP tools read and write. Correct what clients wrote here."</p>
            <p>
                <a class="button" href="/console/articles/new" data-testid="new-article">
                    "New article"
                </a>
            </p>
            <Suspense fallback=|| view! { <p>"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match articles.await {
                        Ok(ArticlesView { articles, .. }) if articles.is_empty() => {
                            view! { <p class="card notice">"No articles yet."</p> }.into_any()
                        }
                        Ok(ArticlesView { articles, .. }) => {
                            view! {
                                <div class="table-wrap">
                                    <table class="console-table" data-testid="articles">
                                        <thead>
                                            <tr>
                                                <th>"Title"</th>
                                                <th>"Status"</th>
                                                <th>"Updated (UTC)"</th>
                                            </tr>
                                        </thead>
                                        <tbody>
                                            {articles
                                                .into_iter()
                                                .map(|a| {
                                                    let href = format!("/console/articles/{}", a.slug);
                                                    view! {
                                                        <tr data-testid="article">
                                                            <td>
                                                                <a href=href>{a.title}</a>
                                                                <br />
                                                                <code class="small">{a.slug}</code>
                                                            </td>
                                                            <td>{if a.published { "published" } else { "draft" }}</td>
                                                            <td>{a.updated}</td>
                                                        </tr>
                                                    }
                                                })
                                                .collect_view()}
                                        </tbody>
                                    </table>
                                </div>
                            }
                                .into_any()
                        }
                        Err(error) => view! { <Failure error /> }.into_any(),
                    }
                })}
            </Suspense>
        </main>
    }
}

#[component]
pub fn ArticlePage() -> impl IntoView {
    let params = use_params_map();
    let query = use_query_map();
    let save = ServerAction::<SaveArticle>::new();
    let publish = ServerAction::<PublishArticle>::new();
    let delete = ServerAction::<DeleteArticle>::new();
    let slug = move || params.read().get("slug").unwrap_or_default();
    let article = Resource::new(
        move || (slug(), save.version().get(), publish.version().get()),
        |(slug, _, _)| console_article(slug),
    );
    view! {
        <main class="console-main">
            <p>
                <a href="/console/articles">"← Articles"</a>
            </p>
            {action_error(save.value())}
            {action_error(publish.value())}
            {action_error(delete.value())}
            <Suspense fallback=|| view! { <p>"Loading…"</p> }>
                {move || {
                    let slug = slug();
                    let saved = query.read().get("saved").is_some();
                    let confirm_delete = query.read().get("delete").is_some();
                    Suspend::new(async move {
                        match article.await {
                            Ok(ArticleView { enabled: false, .. }) => {
                                view! {
                                    <p class="card notice">
                                        "The built-in article server is turned off on this Gatehouse."
                                    </p>
                                }
                                    .into_any()
                            }
                            Ok(ArticleView { csrf, article: None, .. }) if slug == "new" => {
                                view! { <ArticleForm csrf article=None save /> }.into_any()
                            }
                            Ok(ArticleView { article: None, .. }) => {
                                view! { <p class="card notice">"There is no such article."</p> }
                                    .into_any()
                            }
                            Ok(ArticleView { csrf, article: Some(article), .. }) => {
                                let (slug, published) = (article.slug.clone(), article.published);
                                let status = if published { "Published" } else { "Draft" };
                                let delete_href = format!("/console/articles/{slug}?delete=1");
                                view! {
                                    // A fixed title: leptos_meta writes the title into the
                                    // head unescaped, and a client chose this one.
                                    <Title text="Edit article" />
                                    {saved.then(|| view! { <p class="badge" data-testid="saved">"Saved."</p> })}
                                    <p class="muted">
                                        <span data-testid="article-status">{status}</span>
                                        " · created " {article.created.clone()}
                                        " · updated " {article.updated.clone()}
                                    </p>
                                    <ArticleForm csrf=csrf.clone() article=Some(article) save />
                                    <div class="actions">
                                        {(!published).then(|| {
                                            let (csrf, slug) = (csrf.clone(), slug.clone());
                                            view! {
                                                <ActionForm action=publish>
                                                    <input type="hidden" name="csrf" value=csrf />
                                                    <input type="hidden" name="slug" value=slug />
                                                    <button class="button secondary arm" type="submit" data-testid="publish">
                                                        "Publish"
                                                    </button>
                                                </ActionForm>
                                            }
                                        })}
                                        {if confirm_delete {
                                            view! {
                                                <ActionForm action=delete>
                                                    <input type="hidden" name="csrf" value=csrf />
                                                    <input type="hidden" name="slug" value=slug />
                                                    <button class="button danger arm" type="submit" data-testid="confirm-delete">
                                                        "Delete for good"
                                                    </button>
                                                </ActionForm>
                                            }
                                                .into_any()
                                        } else {
                                            view! {
                                                <a class="button secondary" href=delete_href data-testid="delete">
                                                    "Delete…"
                                                </a>
                                            }
                                                .into_any()
                                        }}
                                    </div>
                                }
                                    .into_any()
                            }
                            Err(error) => view! { <Failure error /> }.into_any(),
                        }
                    })
                }}
            </Suspense>
        </main>
    }
}

#[component]
fn ArticleForm(
    csrf: String,
    article: Option<ArticleDetail>,
    save: ServerAction<SaveArticle>,
) -> impl IntoView {
    let is_new = article.is_none();
    let (slug, title, body, version) = match article {
        Some(a) => (a.slug, a.title, a.body, a.version.to_string()),
        None => Default::default(),
    };
    view! {
        <h1>{if is_new { "New article" } else { "Edit article" }}</h1>
        <ActionForm action=save>
            <div class="form">
                <input type="hidden" name="csrf" value=csrf />
                <input type="hidden" name="version" value=version />
                {if is_new {
                    view! {
                        <label for="slug">"Slug (optional: made from the title)"</label>
                        <input id="slug" name="slug" type="text" maxlength="80" pattern="[a-z0-9]+(-[a-z0-9]+)*" />
                    }
                        .into_any()
                } else {
                    view! { <input type="hidden" name="slug" value=slug /> }.into_any()
                }}
                <label for="title">"Title"</label>
                <input id="title" name="title" type="text" maxlength="200" required value=title />
                <label for="body">"Body (Markdown)"</label>
                <textarea id="body" name="body" rows="16" data-testid="article-body">
                    {textarea_text(body)}
                </textarea>
                <button class="button" type="submit" data-testid="save">
                    {if is_new { "Create draft" } else { "Save" }}
                </button>
            </div>
        </ActionForm>
    }
}

#[component]
pub fn ConnectPage() -> impl IntoView {
    let query = use_query_map();
    let check = move || query.read().get("check").is_some();
    let connect = Resource::new(check, console_connect);
    view! {
        <main class="console-main">
            <h1>"Connect a client"</h1>
            <Suspense fallback=|| view! { <p>"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match connect.await {
                        Ok(view) => view! { <ConnectSteps view /> }.into_any(),
                        Err(error) => view! { <Failure error /> }.into_any(),
                    }
                })}
            </Suspense>
        </main>
    }
}

#[component]
fn ConnectSteps(view: ConnectView) -> impl IntoView {
    let ConnectView {
        endpoints, checks, ..
    } = view;
    view! {
        {endpoints.into_iter().map(|endpoint| view! { <EndpointSteps endpoint /> }).collect_view()}
        <section class="card">
            <h2>"Does it work from outside?"</h2>
            <p>
                "The doctor checks, from this server through whatever is in front of it, what Claude and other clients need. "
                "From another machine, run " <code>"gatehouse doctor <public URL>"</code> "."
            </p>
            <p>
                <a class="button secondary" href="/console/connect?check=1" data-testid="run-checks">
                    "Run the checks"
                </a>
            </p>
            {checks.map(|checks| view! {
                <ul class="checks" data-testid="checks">
                    {checks.into_iter().map(|c| {
                        let class = if c.ok { "check ok" } else { "check failed" };
                        view! {
                            <li class=class data-testid="check" data-ok=c.ok.to_string()>
                                <strong>{if c.ok { "✓ " } else { "✗ " }} {c.check}</strong>
                                " " {c.detail}
                                {c.fix.map(|fix| view! { <p class="fix">"Fix: " {fix}</p> })}
                            </li>
                        }
                    }).collect_view()}
                </ul>
            })}
        </section>
    }
}

#[component]
fn CopyButton(text: String) -> impl IntoView {
    let (copied, set_copied) = signal(false);
    let on_click = move |_| {
        #[cfg(feature = "hydrate")]
        {
            let clipboard = window().navigator().clipboard();
            let _ = clipboard.write_text(&text);
        }
        #[cfg(not(feature = "hydrate"))]
        let _ = &text;
        set_copied.set(true);
    };
    view! {
        <button class="button secondary small" type="button" on:click=on_click data-testid="copy">
            {move || if copied.get() { "Copied" } else { "Copy" }}
        </button>
    }
}

#[component]
fn EndpointSteps(endpoint: McpEndpoint) -> impl IntoView {
    let McpEndpoint { name, title, url } = endpoint;
    let claude_code = format!("claude mcp add --transport http {name} {url}");
    let mcp_remote = format!(
        "{{\n  \"mcpServers\": {{\n    \"{name}\": {{\n      \"command\": \"npx\",\n      \"args\": [\"-y\", \"mcp-remote\", \"{url}\"]\n    }}\n  }}\n}}"
    );
    view! {
        <section class="card" data-testid="endpoint">
            <h2>{title}</h2>
            <div class="copy-row">
                <code class="mcp-url" data-testid="mcp-url">{url.clone()}</code>
                <CopyButton text=url.clone() />
            </div>
            <h3>"Claude Code"</h3>
            <div class="copy-row">
                <pre>{claude_code.clone()}</pre>
                <CopyButton text=claude_code />
            </div>
            <p>"Then run " <code>"/mcp"</code> " in Claude Code, choose " <code>{name}</code> " and authenticate."</p>
            <h3>"Claude.ai and Claude Desktop"</h3>
            <p>
                "Settings → Connectors → Add custom connector; paste the URL above. "
                "Claude's servers must reach this Gatehouse over https."
            </p>
            <h3>"mcp-remote (for clients that speak only stdio)"</h3>
            <div class="copy-row">
                <pre>{mcp_remote.clone()}</pre>
                <CopyButton text=mcp_remote />
            </div>
            <h3>"MCP Inspector"</h3>
            <p>
                <code>"npx @modelcontextprotocol/inspector"</code>
                ", choose Streamable HTTP, enter the URL above and connect."
            </p>
        </section>
    }
}
