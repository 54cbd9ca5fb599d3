//! The owner's pages on the authorization server: sign-in, first-run setup and
//! consent. Server-rendered Leptos components with plain forms and links.

use leptos::prelude::*;

use crate::{
    document::{document, document_with_script},
    HOLD_WHILE_AWAY,
};

/// What the consent page shows. Everything here may come from a client and is
/// escaped when rendered.
#[derive(Clone, Debug)]
pub struct ConsentView {
    pub client_name: String,
    pub client_id: String,
    /// Self-registered clients choose their own names: say so.
    pub unverified: bool,
    /// For a client named by a metadata document: the host that published it, which
    /// is all that vouches for the name.
    pub document_host: Option<String>,
    /// The host that will receive the code.
    pub redirect_host: String,
    pub redirect_is_loopback: bool,
    /// The protected resource being granted: its name and URL.
    pub resource_title: String,
    pub resource_url: String,
    /// Each granted scope: (name, plain words).
    pub scopes: Vec<(String, String)>,
    /// Requested scopes this server does not have; not granted.
    pub ignored_scopes: Vec<String>,
    pub approve_href: String,
    pub deny_href: String,
    /// "Approve read-only", when the request asks to write too.
    pub read_only: Option<ReadOnlyChoice>,
}

/// The lesser choice on the consent page: its own single-use link.
#[derive(Clone, Debug)]
pub struct ReadOnlyChoice {
    pub href: String,
    /// The scopes it grants.
    pub scopes: Vec<String>,
}

pub fn consent_document(view: ConsentView) -> String {
    let ConsentView {
        client_name,
        client_id,
        unverified,
        document_host,
        redirect_host,
        redirect_is_loopback,
        resource_title,
        resource_url,
        scopes,
        ignored_scopes,
        approve_href,
        deny_href,
        read_only,
    } = view;
    let title = format!("Allow {client_name}?");
    document_with_script(
        &title,
        view! {
            <main class="page">
                <section class="card consent">
                    <h1>
                        "Allow " <span data-testid="client-name" class="client-name">{client_name}</span>
                        " to use Gatehouse?"
                    </h1>
                    {unverified.then(|| view! {
                        <p class="badge warning" data-testid="unverified">
                            "Unverified: this client registered itself and chose its own name."
                        </p>
                    })}
                    {document_host.map(|host| view! {
                        <p class="badge" data-testid="document-host">
                            <strong>{host}</strong> " says this is this client. Only that site vouches for the name."
                        </p>
                    })}
                    <p class="muted">"Client ID: " <code data-testid="client-id">{client_id}</code></p>
                    <h2>"On " <span data-testid="resource-title">{resource_title}</span></h2>
                    <p class="muted">
                        "MCP server " <code data-testid="resource-url">{resource_url}</code>
                    </p>
                    <h2>"It asks to"</h2>
                    <ul class="scopes" data-testid="scopes">
                        {scopes.into_iter().map(|(name, words)| view! {
                            <li><strong>{words}</strong> " " <code>{name}</code></li>
                        }).collect_view()}
                    </ul>
                    {(!ignored_scopes.is_empty()).then(|| view! {
                        <p class="muted" data-testid="ignored-scopes">
                            "It also asked for scopes this server does not have; they will not be granted: "
                            {ignored_scopes.into_iter().map(|s| view! { <code>{s}</code> " " }).collect_view()}
                        </p>
                    })}
                    <h2>"Where the approval goes"</h2>
                    <p>
                        "The authorization code will be sent to "
                        <strong data-testid="redirect-host">{redirect_host}</strong> "."
                    </p>
                    {redirect_is_loopback.then(|| view! {
                        <p class="badge warning" data-testid="loopback-warning">
                            "This is a program on your own computer (localhost). Approve only if you just started it."
                        </p>
                    })}
                    <div class="actions">
                        <a class="button arm" data-testid="approve" href=approve_href>"Approve"</a>
                        {read_only.map(|choice| view! {
                            <a
                                class="button secondary arm"
                                data-testid="approve-read-only"
                                title=format!("Grants only {}", choice.scopes.join(" "))
                                href=choice.href
                            >
                                "Approve read-only"
                            </a>
                        })}
                        <a class="button secondary" data-testid="deny" href=deny_href>"Deny"</a>
                    </div>
                </section>
            </main>
        },
        HOLD_WHILE_AWAY,
    )
}

pub fn sign_in_document(return_to: &str, notice: Option<&str>, error: Option<&str>) -> String {
    let return_to = return_to.to_owned();
    let notice = notice.map(str::to_owned);
    let error = error.map(str::to_owned);
    document(
        "Sign in",
        view! {
            <main class="page">
                <section class="card">
                    <h1>"Sign in"</h1>
                    <p>"Only the owner of this Gatehouse can approve clients."</p>
                    {notice.map(|n| view! { <p class="badge" data-testid="notice">{n}</p> })}
                    {error.map(|e| view! { <p class="badge danger" role="alert" data-testid="error">{e}</p> })}
                    <form method="post" action="/oauth/login" class="form">
                        <input type="hidden" name="return_to" value=return_to />
                        <label for="password">"Password"</label>
                        <input id="password" name="password" type="password" autocomplete="current-password" required autofocus />
                        <button class="button" type="submit">"Sign in"</button>
                    </form>
                </section>
            </main>
        },
    )
}

pub fn setup_document(token: &str, error: Option<&str>) -> String {
    let token = token.to_owned();
    let error = error.map(str::to_owned);
    document(
        "Set the owner password",
        view! {
            <main class="page">
                <section class="card">
                    <h1>"Set the owner password"</h1>
                    <p>"This password lets you sign in and approve the clients that connect to your tools. Use at least 12 characters."</p>
                    {error.map(|e| view! { <p class="badge danger" role="alert" data-testid="error">{e}</p> })}
                    <form method="post" action="/setup" class="form">
                        <input type="hidden" name="token" value=token />
                        <label for="password">"New password"</label>
                        <input id="password" name="password" type="password" autocomplete="new-password" minlength="12" required autofocus />
                        <label for="confirm">"Repeat it"</label>
                        <input id="confirm" name="confirm" type="password" autocomplete="new-password" minlength="12" required />
                        <button class="button" type="submit">"Set password"</button>
                    </form>
                </section>
            </main>
        },
    )
}

/// Where an authorization error would go, for a client whose redirect URI anyone may
/// have registered: the error and the destination, with a link instead of an
/// automatic redirect (RFC 9700 §4.11.2), so Gatehouse is no open redirector.
pub fn redirect_notice_document(error: &str, description: &str, host: &str, href: &str) -> String {
    let (error, description, href) = (error.to_owned(), description.to_owned(), href.to_owned());
    let (host, link_host) = (host.to_owned(), host.to_owned());
    document(
        "Authorization request refused",
        view! {
            <main class="page error-page">
                <section class="card error-card" role="alert">
                    <h1 data-testid="error-title">"This authorization request was refused"</h1>
                    <p data-testid="error-message">
                        <code>{error}</code> ": " {description}
                    </p>
                    <p>
                        "The app that sent you here asked for the answer to go to "
                        <strong data-testid="redirect-host">{host}</strong>
                        ". Continue only if you trust it."
                    </p>
                    <p><a class="button secondary" data-testid="continue" href=href>"Continue to " {link_host}</a></p>
                </section>
            </main>
        },
    )
}
