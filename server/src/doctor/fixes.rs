//! What to change for each failure: the "Fix" column of the README's troubleshooting
//! table and the rules of its "Deploying" section, one place for the doctor's words.

pub const UNREACHABLE: &str = "Check that the host name resolves (publicly, for Claude.ai), the port \
is open in the firewall, and the reverse proxy (or Gatehouse, with --bind) listens there. Claude.ai \
connects from Anthropic's servers, so the URL must be reachable from the internet.";

pub const CERTIFICATE: &str = "Serve a certificate from a public CA for this host name, with its \
intermediate certificates (the full chain), e.g. Let's Encrypt through Caddy or certbot. Clients \
refuse self-signed and expired certificates.";

pub const CLEAR_TEXT: &str =
    "Put a reverse proxy that terminates TLS in front of Gatehouse, start \
it with --public-url https://…, and give clients the https URL (README: Deploying). Claude.ai and \
Claude Desktop need https; over http, tokens travel in clear.";

pub const NO_REDIRECTS: &str = "Remove the redirect in front of /mcp, /oauth/* and /.well-known/* \
(apex to www, http to https for API calls, trailing-slash rewrites), or give clients the URL it \
redirects to: clients do not follow redirects on API calls, and a redirected POST arrives as a GET.";

pub const ROUTE_TO_GATEHOUSE: &str = "Route every path of this host to Gatehouse, in particular \
/mcp, /oauth/* and /.well-known/*, so that no other server (or the proxy's own page) answers \
them.";

pub const CHALLENGE: &str = "Exempt /mcp, /oauth/* and /.well-known/* from WAF and bot protection \
(e.g. Cloudflare's bot fight mode, \"under attack\" mode, managed challenges): Claude.ai calls them \
from Anthropic's servers and nobody is there to solve a challenge.";

pub const HOST: &str = "Pass the client's Host header through to Gatehouse (nginx: \
proxy_set_header Host $host; Caddy does by default), or start Gatehouse with --allowed-host naming \
the host the proxy sends.";

pub const PROXY_AUTH: &str =
    "Remove the proxy's own authentication (basic auth, an SSO gate) from \
/mcp, /oauth/* and /.well-known/*: MCP clients speak only OAuth, which Gatehouse does itself.";

pub const UPSTREAM_DOWN: &str =
    "The proxy could not reach Gatehouse, or Gatehouse's store is down: \
check that Gatehouse runs, the proxy's upstream address, and Gatehouse's /healthz.";

pub const PREFLIGHT: &str = "Let OPTIONS requests reach Gatehouse without authentication and keep \
its Access-Control-* headers: browser clients such as the MCP Inspector send a preflight, without \
credentials, before every call.";

pub const RATE_LIMITED: &str = "Wait a minute (Retry-After). Behind a reverse proxy every client \
shares the proxy's address unless --trusted-proxy names it; --registrations-per-minute raises the \
limit.";

pub const SHARED_STORE: &str = "Every instance behind the load balancer must use one store \
(--store redis://…, the same --redis-key-prefix): a client registered on one instance is unknown \
on the others.";

pub const AUTHORIZE_ELSEWHERE: &str = "Set --public-url to the origin in front of Gatehouse and \
forward every path to it, not only /mcp: the browser is sent to <issuer>/oauth/authorize, and \
Gatehouse signs the owner in itself.";

/// The issuer and the resource URL come from `--public-url`, never from requests.
pub fn public_url(base: &str) -> String {
    format!(
        "Start Gatehouse with --public-url {base}: exactly the origin clients use (scheme, host, \
         port; no path, no trailing slash). It becomes the issuer and the MCP resource URL."
    )
}

/// The README's row for "Incompatible auth server: does not support dynamic client
/// registration".
pub fn registration_missing(base: &str) -> String {
    format!(
        "`curl {base}/.well-known/oauth-authorization-server` must return Gatehouse's JSON with \
         \"issuer\": \"{base}\" and registration_endpoint; route /.well-known/* to Gatehouse."
    )
}

/// The README's row for "Couldn't reach the MCP server".
pub fn mcp_challenge(mcp_url: &str) -> String {
    format!(
        "`curl -i -X POST {mcp_url} -H 'content-type: application/json' -d '{{}}'` from outside \
         must return 401 with WWW-Authenticate: Bearer resource_metadata=\"…\"."
    )
}

pub fn mcp_path(mcp_path: &str) -> String {
    format!(
        "Check the MCP URL ({mcp_path}): the built-in server is at /mcp (unless --no-articles), \
         each upstream at /mcp/NAME (doctor: --mcp-path); and forward every path to Gatehouse."
    )
}

/// This server cannot fetch a client-ID metadata document: allow the fetch, or pin
/// the document in `--config`.
pub fn pin_document(url: &str, host: &str) -> String {
    let who = if host == "claude.ai" {
        "Claude Code and Claude.ai cannot sign in"
    } else {
        "the clients this document describes cannot sign in"
    };
    let name = url
        .rsplit('/')
        .find(|s| !s.is_empty())
        .unwrap_or("client-metadata");
    format!(
        "this server cannot reach {host}: {who} unless outbound access is allowed, or the \
         document is pinned (see below).\n\
         Allow outbound https from this server to {host}, or save the document to a file and pin \
         it in the --config file:\n\
         \x20 [[client_document]]\n\
         \x20 url = \"{url}\"\n\
         \x20 file = \"/etc/gatehouse/{name}.json\"\n\
         (README: \"Pinned client metadata documents\")"
    )
}
