//! The checks, in the order a client meets them: the first `POST /mcp` (reachable,
//! TLS, the 401 challenge, the `Host` the proxy sends), discovery (RFC 9728, then
//! RFC 8414), CORS for browser clients, registration (RFC 7591), the authorization
//! page and the token endpoint; then what every answer revealed (redirects on API
//! paths, answers that were not Gatehouse's).

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use reqwest::{header, Method};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{
    fixes,
    probe::{Answer, Expect, Failure, Probe},
    Check, Options, Target,
};
use crate::oauth::secret::random_token;

/// The redirect URI of the throwaway client: loopback, as Claude Code's is. Nothing
/// is ever sent there: the doctor never signs in.
const REDIRECT_URI: &str = "http://127.0.0.1/callback";

/// The guard's answer to a `Host` that is not ours (see `http::mcp::guard`).
const HOST_REFUSED: &str = "this Host is not served here";

/// Where a client goes after discovery: from the authorization server's metadata,
/// else Gatehouse's own paths.
struct Endpoints {
    authorization: String,
    token: String,
    registration: String,
}

impl Endpoints {
    fn from(target: &Target, metadata: Option<&Value>) -> Self {
        let pick = |field: &str, path: &str| {
            metadata
                .and_then(|m| m[field].as_str())
                .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
                .map(str::to_owned)
                .unwrap_or_else(|| target.url(path))
        };
        Endpoints {
            authorization: pick("authorization_endpoint", "/oauth/authorize"),
            token: pick("token_endpoint", "/oauth/token"),
            registration: pick("registration_endpoint", "/oauth/register"),
        }
    }
}

/// Every URL check against `target`. Without an answer to the first request nothing
/// else can be judged, so the list then ends there.
pub(super) async fn url_checks(target: &Target, options: &Options) -> Vec<Check> {
    let mut probe = match Probe::new(target.base(), options.timeout) {
        Ok(probe) => probe,
        Err(e) => return vec![Check::fail("reachable", e, fixes::UNREACHABLE)],
    };
    let mut checks = Vec::new();
    let mcp_url = target.mcp_url();

    // What every client sends first: an MCP request without a token.
    let what = probe.label(&Method::POST, &mcp_url);
    let started = std::time::Instant::now();
    let request = probe
        .request(Method::POST, &mcp_url)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, text/event-stream")
        .body(initialize().to_string());
    let mcp = match probe.send(&what, request, true, Expect::Json).await {
        Ok(answer) => answer,
        Err(failure) => {
            checks.extend(no_answer(target, &what, &failure));
            return checks;
        }
    };
    checks.push(Check::pass(
        "reachable",
        format!(
            "{what} answered {} in {} ms",
            mcp.status_line(),
            started.elapsed().as_millis()
        ),
    ));
    checks.push(https(target));
    checks.push(mcp_challenge(&mut probe, target, &what, &mcp));
    checks.push(host(target, &what, &mcp));

    // RFC 9728 §3.1: the path-suffixed document, and the bare one older clients read.
    let suffixed = format!("/.well-known/oauth-protected-resource{}", target.mcp_path());
    checks.push(resource_metadata(&mut probe, target, "resource-metadata", &suffixed).await);
    if target.mcp_path() == "/mcp" {
        checks.push(
            resource_metadata(
                &mut probe,
                target,
                "resource-metadata-root",
                "/.well-known/oauth-protected-resource",
            )
            .await,
        );
    }

    let (check, metadata) = authorization_server(&mut probe, target).await;
    checks.push(check);
    let endpoints = Endpoints::from(target, metadata.as_ref());

    checks.push(cors(&mut probe, target, &endpoints, &options.browser_origin).await);

    let mut client_id = None;
    if options.register {
        let (check, registered) = registration(&mut probe, target, &endpoints).await;
        checks.push(check);
        checks.push(match &registered {
            Some(id) => authorization_page(&mut probe, target, &endpoints, id).await,
            None => Check::fail(
                "authorization-page",
                "not checked: it needs the throwaway client (see registration)",
                "Fix registration first.",
            ),
        });
        client_id = registered;
    }
    checks.push(token_endpoint(&mut probe, target, &endpoints, client_id.as_deref()).await);

    checks.push(no_redirects(&probe));
    checks.push(answers_from_gatehouse(&probe));
    checks
}

/// An `initialize` request, as a client opens a session with.
fn initialize() -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "gatehouse-doctor", "version": env!("CARGO_PKG_VERSION")}
        }
    })
}

/// The first request got no answer. A failed TLS handshake means something answers
/// but its certificate is refused.
fn no_answer(target: &Target, what: &str, failure: &Failure) -> Vec<Check> {
    match failure {
        Failure::Tls(why) if target.is_https() => vec![
            Check::pass(
                "reachable",
                format!("a TLS server answers at {}", target.host()),
            ),
            Check::fail(
                "https",
                format!(
                    "the certificate of {} is refused: {why}; nothing else was checked",
                    target.host()
                ),
                fixes::CERTIFICATE,
            ),
        ],
        _ => vec![Check::fail(
            "reachable",
            format!("{what}: {failure}; nothing else was checked"),
            fixes::UNREACHABLE,
        )],
    }
}

fn https(target: &Target) -> Check {
    let loopback = url::Url::parse(target.base())
        .map(|u| crate::net::is_loopback_url(&u))
        .unwrap_or(false);
    if target.is_https() {
        Check::pass(
            "https",
            format!(
                "the certificate of {} is valid (verified as clients verify it)",
                target.host()
            ),
        )
    } else if loopback {
        Check::pass(
            "https",
            "plain http on a loopback address: fine for clients on this machine; Claude.ai \
             needs a public https URL",
        )
    } else {
        Check::fail(
            "https",
            format!(
                "plain http on {}: Claude.ai and Claude Desktop refuse it, and tokens would \
                 travel in clear",
                target.host()
            ),
            fixes::CLEAR_TEXT,
        )
    }
}

/// The value of `name="…"` (or `name=token`) in a `WWW-Authenticate` challenge.
fn auth_param<'a>(challenge: &'a str, name: &str) -> Option<&'a str> {
    let at = challenge.find(&format!("{name}="))? + name.len() + 1;
    let rest = &challenge[at..];
    match rest.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next(),
        None => rest.split([',', ' ']).next(),
    }
}

/// Gatehouse's answer to a proxy that rewrote `Host`: 403 with a JSON-RPC error.
fn host_refused(answer: &Answer) -> bool {
    answer.status == 403
        && answer
            .json()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .is_some_and(|m| m.contains(HOST_REFUSED))
}

fn bearer_challenge(answer: &Answer) -> Option<&str> {
    answer
        .header(header::WWW_AUTHENTICATE)
        .filter(|c| c.len() >= 6 && c[..6].eq_ignore_ascii_case("bearer"))
}

/// RFC 9728 §5.1: `401` with `WWW-Authenticate: Bearer resource_metadata="…"`, the
/// answer that starts every client's discovery.
fn mcp_challenge(probe: &mut Probe, target: &Target, what: &str, answer: &Answer) -> Check {
    const NAME: &str = "mcp-challenge";
    let mcp_url = target.mcp_url();
    let see_curl = fixes::mcp_challenge(&mcp_url);
    let status = answer.status_line();
    if answer.is_redirect() {
        return Check::fail(
            NAME,
            format!(
                "{what} answered {status}, a redirect to {}: clients do not follow it (see \
                 no-redirects)",
                answer.location().unwrap_or("(no Location)")
            ),
            fixes::NO_REDIRECTS,
        );
    }
    if let Some(challenge) = answer.challenge() {
        return Check::fail(
            NAME,
            format!("{what} answered {status} with {challenge} instead of Gatehouse's 401"),
            format!("{} {see_curl}", fixes::CHALLENGE),
        );
    }
    match answer.status {
        401 => {
            let Some(challenge) = answer.header(header::WWW_AUTHENTICATE) else {
                probe.not_gatehouse(what, "401 without WWW-Authenticate");
                return Check::fail(
                    NAME,
                    format!(
                        "{what} answered 401 without WWW-Authenticate: that is not Gatehouse's \
                         challenge (another server, or the proxy, answered)"
                    ),
                    format!("{} {see_curl}", fixes::ROUTE_TO_GATEHOUSE),
                );
            };
            if bearer_challenge(answer).is_none() {
                let scheme = challenge.split_whitespace().next().unwrap_or(challenge);
                return Check::fail(
                    NAME,
                    format!(
                        "{what} asks for {scheme} authentication: the proxy's own login, not \
                         Gatehouse's bearer token"
                    ),
                    fixes::PROXY_AUTH,
                );
            }
            let expected = target.url(&format!(
                "/.well-known/oauth-protected-resource{}",
                target.mcp_path()
            ));
            match auth_param(challenge, "resource_metadata") {
                None => {
                    probe.not_gatehouse(what, "a Bearer challenge without resource_metadata");
                    Check::fail(
                        NAME,
                        format!(
                            "{what} answered 401 but its challenge names no resource_metadata \
                             ({challenge}): not Gatehouse's challenge"
                        ),
                        format!("{} {see_curl}", fixes::ROUTE_TO_GATEHOUSE),
                    )
                }
                Some(url) if url != expected => Check::fail(
                    NAME,
                    format!(
                        "{what} answered 401, but resource_metadata is {url}, not {expected}: \
                         Gatehouse's --public-url is not the URL given"
                    ),
                    fixes::public_url(target.base()),
                ),
                Some(url) => Check::pass(
                    NAME,
                    format!(
                        "{what} answered 401 with WWW-Authenticate: Bearer \
                         resource_metadata=\"{url}\""
                    ),
                ),
            }
        }
        403 if host_refused(answer) => Check::fail(
            NAME,
            format!(
                "{what} answered 403 instead of 401: Gatehouse refused the Host the proxy sent \
                 (see host)"
            ),
            fixes::HOST,
        ),
        404 | 405 => Check::fail(
            NAME,
            format!("{what} answered {status}: no MCP endpoint answers there"),
            fixes::mcp_path(target.mcp_path()),
        ),
        500..=599 => Check::fail(
            NAME,
            format!("{what} answered {status} instead of 401"),
            fixes::UPSTREAM_DOWN,
        ),
        _ => match answer.foreign(Expect::Json) {
            Some(foreign) => Check::fail(
                NAME,
                format!("{what} answered {status} with {foreign} instead of Gatehouse's 401"),
                format!("{} {see_curl}", fixes::ROUTE_TO_GATEHOUSE),
            ),
            None => Check::fail(
                NAME,
                format!("{what} answered {status} instead of 401"),
                see_curl,
            ),
        },
    }
}

/// A proxy that rewrites `Host` makes Gatehouse's DNS-rebinding check refuse every
/// MCP request with this one answer.
fn host(target: &Target, what: &str, answer: &Answer) -> Check {
    const NAME: &str = "host";
    if host_refused(answer) {
        return Check::fail(
            NAME,
            format!(
                "{what} answered 403 \"{HOST_REFUSED}\": the proxy sent Gatehouse a Host other \
                 than {}",
                target.host()
            ),
            fixes::HOST,
        );
    }
    if answer.status == 401 && bearer_challenge(answer).is_some() {
        return Check::pass(
            NAME,
            format!("Gatehouse accepted the Host {}", target.host()),
        );
    }
    Check::fail(
        NAME,
        format!("not checked: {what} did not answer as Gatehouse (see mcp-challenge)"),
        "Fix mcp-challenge first.",
    )
}

/// What is wrong with an answer that should be Gatehouse's JSON with one of `ok`
/// statuses: no answer, a redirect, a challenge, a page, or another status.
fn unexpected(
    name: &'static str,
    target: &Target,
    what: &str,
    answer: &Result<Answer, Failure>,
    ok: &[u16],
) -> Option<Check> {
    let answer = match answer {
        Ok(answer) => answer,
        Err(failure) => {
            return Some(Check::fail(
                name,
                format!("{what}: {failure}"),
                fixes::UNREACHABLE,
            ))
        }
    };
    let status = answer.status_line();
    if answer.is_redirect() {
        return Some(Check::fail(
            name,
            format!(
                "{what} answered {status}, a redirect to {}: clients do not follow redirects \
                 on API calls (see no-redirects)",
                answer.location().unwrap_or("(no Location)")
            ),
            fixes::NO_REDIRECTS,
        ));
    }
    if let Some(challenge) = answer.challenge() {
        return Some(Check::fail(
            name,
            format!("{what} answered {status} with {challenge}"),
            fixes::CHALLENGE,
        ));
    }
    let foreign = answer.foreign(Expect::Json);
    if ok.contains(&answer.status) && foreign.is_none() {
        return None;
    }
    if let Some(page) = answer.gatehouse_page() {
        // Gatehouse itself answered with a page: it serves nothing at this path.
        return Some(Check::fail(
            name,
            format!("{what} answered {status} with Gatehouse's page {page:?}"),
            fixes::mcp_path(target.mcp_path()),
        ));
    }
    if let Some(foreign) = foreign {
        return Some(Check::fail(
            name,
            format!("{what} answered {status} with {foreign}, not Gatehouse's JSON"),
            fixes::ROUTE_TO_GATEHOUSE,
        ));
    }
    let reason = answer
        .json()
        .and_then(|v| {
            let error = v["error"].as_str()?.to_owned();
            Some(match v["error_description"].as_str() {
                Some(description) => format!(" ({error}: {description})"),
                None => format!(" ({error})"),
            })
        })
        .unwrap_or_default();
    let fix = match answer.status {
        429 => fixes::RATE_LIMITED,
        500..=599 => fixes::UPSTREAM_DOWN,
        _ => fixes::ROUTE_TO_GATEHOUSE,
    };
    Some(Check::fail(
        name,
        format!("{what} answered {status}{reason}"),
        fix,
    ))
}

/// Collects problems, each with its fix, into one check.
#[derive(Default)]
struct Problems(Vec<(String, String)>);

impl Problems {
    fn add(&mut self, problem: impl Into<String>, fix: impl Into<String>) {
        self.0.push((problem.into(), fix.into()));
    }

    fn into_check(self, name: &'static str, what: &str, passed: String) -> Check {
        if self.0.is_empty() {
            return Check::pass(name, passed);
        }
        let detail = self
            .0
            .iter()
            .map(|(p, _)| p.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        let mut fixes: Vec<&str> = Vec::new();
        for (_, fix) in &self.0 {
            if !fixes.contains(&fix.as_str()) {
                fixes.push(fix);
            }
        }
        Check::fail(name, format!("{what}: {detail}"), fixes.join(" "))
    }
}

async fn get_json(probe: &mut Probe, url: &str) -> (String, Result<Answer, Failure>) {
    let what = probe.label(&Method::GET, url);
    let request = probe
        .request(Method::GET, url)
        .header(header::ACCEPT, "application/json");
    let answer = probe.send(&what, request, true, Expect::Json).await;
    (what, answer)
}

/// RFC 9728: `resource` is the MCP URL and `authorization_servers` names this origin.
async fn resource_metadata(
    probe: &mut Probe,
    target: &Target,
    name: &'static str,
    path: &str,
) -> Check {
    let (what, answer) = get_json(probe, &target.url(path)).await;
    if let Some(failed) = unexpected(name, target, &what, &answer, &[200]) {
        return failed;
    }
    let document = answer.ok().and_then(|a| a.json()).unwrap_or(Value::Null);
    let (mcp_url, base) = (target.mcp_url(), target.base());
    let mut problems = Problems::default();
    match document["resource"].as_str() {
        None => {
            probe.not_gatehouse(&what, "JSON without a resource");
            problems.add("it has no resource", fixes::ROUTE_TO_GATEHOUSE);
        }
        Some(resource) if resource != mcp_url => problems.add(
            format!("its resource is {resource:?}, not {mcp_url:?}"),
            fixes::public_url(base),
        ),
        Some(_) => {}
    }
    let servers: Vec<&str> = document["authorization_servers"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if servers.is_empty() {
        problems.add(
            "it lists no authorization_servers",
            fixes::ROUTE_TO_GATEHOUSE,
        );
    } else if !servers.contains(&base) {
        problems.add(
            format!("its authorization_servers {servers:?} do not name {base:?}"),
            fixes::public_url(base),
        );
    }
    problems.into_check(
        name,
        &what,
        format!("{what}: resource {mcp_url}, authorization server {base}"),
    )
}

/// RFC 8414: the issuer byte-equal to the origin clients derive, a registration
/// endpoint, and PKCE with S256. Returns the document for the endpoints it names.
async fn authorization_server(probe: &mut Probe, target: &Target) -> (Check, Option<Value>) {
    const NAME: &str = "authorization-server-metadata";
    let url = target.url("/.well-known/oauth-authorization-server");
    let (what, answer) = get_json(probe, &url).await;
    if let Some(failed) = unexpected(NAME, target, &what, &answer, &[200]) {
        return (failed, None);
    }
    let document = answer.ok().and_then(|a| a.json()).unwrap_or(Value::Null);
    let base = target.base();
    let mut problems = Problems::default();
    match document["issuer"].as_str() {
        None => {
            probe.not_gatehouse(&what, "JSON without an issuer");
            problems.add("it has no issuer", fixes::registration_missing(base));
        }
        Some(issuer) if issuer == base => {}
        Some(issuer) if issuer.trim_end_matches('/') == base => problems.add(
            format!(
                "its issuer {issuer:?} ends with a slash; clients derive {base:?} and compare \
                 byte for byte"
            ),
            fixes::public_url(base),
        ),
        Some(issuer) => problems.add(
            format!(
                "its issuer is {issuer:?}, not {base:?}; clients compare them byte for byte \
                 (scheme, host, port)"
            ),
            fixes::public_url(base),
        ),
    }
    if document["registration_endpoint"].as_str().is_none() {
        problems.add(
            "it has no registration_endpoint (clients say \"Incompatible auth server: does not \
             support dynamic client registration\")",
            fixes::registration_missing(base),
        );
    }
    let s256 = document["code_challenge_methods_supported"]
        .as_array()
        .is_some_and(|m| m.iter().any(|m| m == "S256"));
    if !s256 {
        problems.add(
            "its code_challenge_methods_supported lacks S256, so clients refuse to continue \
             (Gatehouse always lists it: another server answered)",
            fixes::ROUTE_TO_GATEHOUSE,
        );
    }
    for field in ["authorization_endpoint", "token_endpoint"] {
        if document[field].as_str().is_none() {
            problems.add(format!("it has no {field}"), fixes::ROUTE_TO_GATEHOUSE);
        }
    }
    let check = problems.into_check(
        NAME,
        &what,
        format!("{what}: issuer {base}, a registration_endpoint, PKCE S256"),
    );
    (check, Some(document))
}

/// Browser clients (the MCP Inspector) send a preflight before calling `/mcp` and
/// the token endpoint; it carries no credentials, so it must never meet a 401.
async fn cors(probe: &mut Probe, target: &Target, endpoints: &Endpoints, origin: &str) -> Check {
    const NAME: &str = "cors";
    let mut problems = Problems::default();
    let mut answered = Vec::new();
    let preflights = [
        (
            target.mcp_url(),
            "authorization, content-type, accept, mcp-session-id, mcp-protocol-version",
        ),
        (endpoints.token.clone(), "content-type"),
    ];
    for (url, headers) in preflights {
        let what = probe.label(&Method::OPTIONS, &url);
        let request = probe
            .request(Method::OPTIONS, &url)
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(header::ACCESS_CONTROL_REQUEST_HEADERS, headers);
        let answer = match probe.send(&what, request, true, Expect::Any).await {
            Ok(answer) => answer,
            Err(failure) => {
                problems.add(format!("{what}: {failure}"), fixes::UNREACHABLE);
                continue;
            }
        };
        let status = answer.status_line();
        let allowed = answer.header(header::ACCESS_CONTROL_ALLOW_ORIGIN);
        if answer.is_redirect() {
            problems.add(
                format!("{what} answered {status}, a redirect: browsers refuse it"),
                fixes::NO_REDIRECTS,
            );
        } else if let Some(challenge) = answer.challenge() {
            problems.add(format!("{what} answered {challenge}"), fixes::CHALLENGE);
        } else if answer.status == 401 {
            problems.add(
                format!(
                    "{what} answered 401: a preflight carries no credentials, so browser \
                     clients cannot call it"
                ),
                fixes::PREFLIGHT,
            );
        } else if !(200..300).contains(&answer.status) {
            problems.add(format!("{what} answered {status}"), fixes::PREFLIGHT);
        } else if allowed != Some(origin) && allowed != Some("*") {
            problems.add(
                format!(
                    "{what} answered {status} without Access-Control-Allow-Origin for {origin}"
                ),
                fixes::PREFLIGHT,
            );
        } else {
            answered.push(what);
        }
    }
    problems.into_check(
        NAME,
        &format!("preflights from {origin}"),
        format!("{} allowed {origin}", answered.join(" and ")),
    )
}

/// RFC 7591: a public client as Claude registers it. Returns its `client_id`.
async fn registration(
    probe: &mut Probe,
    target: &Target,
    endpoints: &Endpoints,
) -> (Check, Option<String>) {
    const NAME: &str = "registration";
    let url = &endpoints.registration;
    let what = probe.label(&Method::POST, url);
    let metadata = json!({
        "client_name": "gatehouse doctor (throwaway check)",
        "redirect_uris": [REDIRECT_URI],
        "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
    });
    let request = probe
        .request(Method::POST, url)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json")
        .body(metadata.to_string());
    let answer = probe.send(&what, request, true, Expect::Json).await;
    if let Some(failed) = unexpected(NAME, target, &what, &answer, &[201]) {
        return (failed, None);
    }
    let client_id = answer
        .ok()
        .and_then(|a| a.json())
        .and_then(|v| v["client_id"].as_str().map(str::to_owned));
    match client_id {
        Some(id) => (
            Check::pass(
                NAME,
                format!(
                    "{what} answered 201 with client_id {id}. This created a throwaway \
                     registration; unused, Gatehouse forgets it after a day \
                     (--unused-client-ttl)"
                ),
            ),
            Some(id),
        ),
        None => {
            probe.not_gatehouse(&what, "201 without a client_id");
            (
                Check::fail(
                    NAME,
                    format!("{what} answered 201 without a client_id"),
                    fixes::ROUTE_TO_GATEHOUSE,
                ),
                None,
            )
        }
    }
}

/// The authorization endpoint as a browser reaches it: Gatehouse sends a person who
/// is not signed in to its sign-in page (303), never a 404 or someone else's page.
async fn authorization_page(
    probe: &mut Probe,
    target: &Target,
    endpoints: &Endpoints,
    client_id: &str,
) -> Check {
    const NAME: &str = "authorization-page";
    let verifier = random_token();
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let mcp_url = target.mcp_url();
    let state = random_token();
    let params = [
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", REDIRECT_URI),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("resource", mcp_url.as_str()),
        ("state", state.as_str()),
    ];
    let url = match url::Url::parse_with_params(&endpoints.authorization, params) {
        Ok(url) => url,
        Err(e) => {
            return Check::fail(
                NAME,
                format!(
                    "the authorization_endpoint {:?} is not a URL: {e}",
                    endpoints.authorization
                ),
                fixes::ROUTE_TO_GATEHOUSE,
            )
        }
    };
    let what = probe.label(&Method::GET, url.as_str());
    let request = probe
        .request(Method::GET, url.as_str())
        .header(header::ACCEPT, "text/html");
    // A browser path: a person follows its redirects, so they are not API redirects.
    let answer = match probe.send(&what, request, false, Expect::Any).await {
        Ok(answer) => answer,
        Err(failure) => return Check::fail(NAME, format!("{what}: {failure}"), fixes::UNREACHABLE),
    };
    let status = answer.status_line();
    if let Some(challenge) = answer.challenge() {
        // People pass challenges in their browser; only the doctor is stopped.
        return Check::pass(
            NAME,
            format!(
                "{what} answered {challenge}: a person passes it in a browser, but the doctor \
                 cannot see past it"
            ),
        );
    }
    if answer.is_redirect() {
        let location = answer.location().unwrap_or("");
        let Ok(next) = url.join(location) else {
            return Check::fail(
                NAME,
                format!("{what} answered {status} with an unusable Location {location:?}"),
                fixes::AUTHORIZE_ELSEWHERE,
            );
        };
        let origin = next.origin().ascii_serialization();
        if origin == target.base() && next.path() == "/oauth/login" {
            return Check::pass(
                NAME,
                format!("{what} answered {status} to Gatehouse's sign-in page, as it should"),
            );
        }
        if next.as_str().starts_with(REDIRECT_URI) {
            let error = |name: &str| {
                next.query_pairs()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            let code = error("error");
            let fix = if code == "invalid_target" {
                fixes::public_url(target.base())
            } else {
                fixes::ROUTE_TO_GATEHOUSE.to_owned()
            };
            return Check::fail(
                NAME,
                format!(
                    "{what} sent the browser back to the client with {code}: {}",
                    error("error_description")
                ),
                fix,
            );
        }
        let place = if origin == target.base() {
            format!("{} on this host", next.path())
        } else {
            next.as_str().split('?').next().unwrap_or("").to_owned()
        };
        return Check::fail(
            NAME,
            format!(
                "{what} answered {status} to {place}, not to Gatehouse's sign-in page: something \
                 in front of Gatehouse answers /oauth/authorize, or the issuer names another host"
            ),
            fixes::AUTHORIZE_ELSEWHERE,
        );
    }
    let page = answer.gatehouse_page();
    match (answer.status, page) {
        (200, Some(page)) => {
            Check::pass(NAME, format!("{what} answered 200: Gatehouse's {page:?}"))
        }
        (404, _) => Check::fail(
            NAME,
            format!("{what} answered 404: a person would land on a 404 page"),
            fixes::AUTHORIZE_ELSEWHERE,
        ),
        (400..=499, Some(page)) => {
            let message = answer.error_message().unwrap_or_default();
            let fix = if message.contains("does not answer under this address") {
                // The pages answer only under a Host of Gatehouse's, as /mcp does.
                fixes::HOST.to_owned()
            } else if message.contains("not registered here") {
                fixes::SHARED_STORE.to_owned()
            } else if message.contains("does not serve the resource") {
                format!(
                    "{} {}",
                    fixes::public_url(target.base()),
                    fixes::mcp_path(target.mcp_path())
                )
            } else {
                fixes::ROUTE_TO_GATEHOUSE.to_owned()
            };
            Check::fail(
                NAME,
                format!("{what} answered {status}, Gatehouse's page {page:?}: {message}"),
                fix,
            )
        }
        (500..=599, _) => Check::fail(
            NAME,
            format!("{what} answered {status}"),
            fixes::UPSTREAM_DOWN,
        ),
        (_, _) => {
            let shown = answer
                .title()
                .map(|t| format!(" with a page titled {t:?}"))
                .unwrap_or_default();
            Check::fail(
                NAME,
                format!("{what} answered {status}{shown}, not Gatehouse's sign-in redirect"),
                fixes::AUTHORIZE_ELSEWHERE,
            )
        }
    }
}

/// The token endpoint answers a made-up code with an RFC 6749 JSON error: proof that
/// token requests reach Gatehouse unredirected.
async fn token_endpoint(
    probe: &mut Probe,
    target: &Target,
    endpoints: &Endpoints,
    client_id: Option<&str>,
) -> Check {
    const NAME: &str = "token-endpoint";
    let url = &endpoints.token;
    let what = probe.label(&Method::POST, url);
    let form = [
        ("grant_type", "authorization_code"),
        ("code", "gatehouse-doctor-made-up-code"),
        ("redirect_uri", REDIRECT_URI),
        (
            "code_verifier",
            "gatehouse-doctor-made-up-verifier-0123456789abcdef",
        ),
        ("client_id", client_id.unwrap_or("gatehouse-doctor")),
    ];
    let body = serde_urlencoded::to_string(form).unwrap_or_default();
    let request = probe
        .request(Method::POST, url)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/json")
        .body(body);
    let answer = probe.send(&what, request, true, Expect::Json).await;
    if let Some(failed) = unexpected(NAME, target, &what, &answer, &[400, 401]) {
        return failed;
    }
    let error = answer
        .as_ref()
        .ok()
        .and_then(|a| a.json())
        .and_then(|v| v["error"].as_str().map(str::to_owned));
    let status = answer.map(|a| a.status_line()).unwrap_or_default();
    match error {
        Some(error) => Check::pass(
            NAME,
            format!("{what} answered {status} {error} to a made-up code, as it should"),
        ),
        None => {
            probe.not_gatehouse(&what, "an error without an OAuth error code");
            Check::fail(
                NAME,
                format!("{what} answered {status} without an OAuth error code"),
                fixes::ROUTE_TO_GATEHOUSE,
            )
        }
    }
}

fn no_redirects(probe: &Probe) -> Check {
    const NAME: &str = "no-redirects";
    if probe.redirects.is_empty() {
        Check::pass(
            NAME,
            format!(
                "none of the {} requests to /mcp, /oauth/* and /.well-known/* was redirected",
                probe.api_requests
            ),
        )
    } else {
        Check::fail(NAME, probe.redirects.join("; "), fixes::NO_REDIRECTS)
    }
}

fn answers_from_gatehouse(probe: &Probe) -> Check {
    const NAME: &str = "answers-from-gatehouse";
    if probe.foreign.is_empty() {
        return Check::pass(
            NAME,
            "every answer was Gatehouse's (its JSON shapes and challenges; no HTML or challenge \
             pages)",
        );
    }
    let fix = if probe.challenged {
        format!("{} {}", fixes::CHALLENGE, fixes::ROUTE_TO_GATEHOUSE)
    } else {
        fixes::ROUTE_TO_GATEHOUSE.to_owned()
    };
    Check::fail(NAME, probe.foreign.join("; "), fix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_parameters_are_read_quoted_or_not() {
        let challenge =
            "Bearer resource_metadata=\"https://g.example/.well-known/x\", scope=\"a b\"";
        assert_eq!(
            auth_param(challenge, "resource_metadata"),
            Some("https://g.example/.well-known/x")
        );
        assert_eq!(auth_param(challenge, "scope"), Some("a b"));
        assert_eq!(auth_param("Bearer realm=x, error=y", "realm"), Some("x"));
        assert_eq!(auth_param("Bearer", "resource_metadata"), None);
    }
}
