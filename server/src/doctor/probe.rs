//! The doctor's HTTP side: one client that behaves like an MCP client's (the default
//! certificate verification, no redirects followed, a short timeout), the answers it
//! gets, and what gives away an answer that is not Gatehouse's (an HTML page where
//! JSON belongs, a bot challenge, a redirect).

use std::time::Duration;

use reqwest::{header, Method, RequestBuilder};
use serde_json::Value;

/// Enough of any answer to judge it; a larger body is cut here.
const MAX_BODY: usize = 64 * 1024;

/// What a request expects back, to tell Gatehouse's answers from someone else's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// JSON: metadata, registration, token and `/mcp` answers (even errors).
    Json,
    /// A page for a person (the authorization endpoint), or a preflight's empty body.
    Any,
}

/// An answer, its body cut at [`MAX_BODY`].
pub struct Answer {
    pub status: u16,
    pub headers: header::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: impl header::AsHeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The media type, lower case, without parameters.
    pub fn media_type(&self) -> String {
        crate::net::media_type(self.header(header::CONTENT_TYPE).unwrap_or(""))
    }

    pub fn is_html(&self) -> bool {
        let media = self.media_type();
        media == "text/html"
            || media == "application/xhtml+xml"
            || (media.is_empty() && self.text().trim_start().starts_with('<'))
    }

    pub fn is_redirect(&self) -> bool {
        (300..400).contains(&self.status)
    }

    pub fn location(&self) -> Option<&str> {
        self.header(header::LOCATION)
    }

    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }

    /// The body as JSON, whatever its media type says.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The `<title>` of an HTML page, with white space collapsed.
    pub fn title(&self) -> Option<String> {
        let text = self.text();
        let lower = text.to_ascii_lowercase();
        let open = lower.find("<title")?;
        let start = open + lower[open..].find('>')? + 1;
        let end = start + lower[start..].find("</title")?;
        let title = decode_entities(&text[start..end]);
        let title = title.split_whitespace().collect::<Vec<_>>().join(" ");
        (!title.is_empty()).then_some(title)
    }

    /// The name of Gatehouse's own page: its server-rendered pages are titled
    /// "… · Gatehouse", those of its app (home, not found) "Gatehouse".
    pub fn gatehouse_page(&self) -> Option<String> {
        let title = self.title()?;
        if let Some(name) = title.strip_suffix(" · Gatehouse") {
            return Some(name.to_owned());
        }
        (title == "Gatehouse").then(|| self.tagged("error-title", "</h1>").unwrap_or(title))
    }

    /// The message of Gatehouse's error page, as a person reads it.
    pub fn error_message(&self) -> Option<String> {
        self.tagged("error-message", "</p>")
    }

    /// The text of the element marked `data-testid="{id}"`, up to `close`.
    fn tagged(&self, id: &str, close: &str) -> Option<String> {
        let text = self.text();
        let marker = format!("data-testid=\"{id}\"");
        let at = text.find(&marker)? + marker.len();
        let start = at + text[at..].find('>')? + 1;
        let end = start + text[start..].find(close)?;
        let mut plain = String::new();
        let mut in_tag = false;
        for c in text[start..end].chars() {
            match c {
                '<' => in_tag = true,
                '>' => in_tag = false,
                c if !in_tag => plain.push(c),
                _ => {}
            }
        }
        Some(super::printable(&decode_entities(plain.trim())))
    }

    /// A bot challenge or WAF block page, whatever the request expected.
    pub fn challenge(&self) -> Option<&'static str> {
        if self
            .header("cf-mitigated")
            .is_some_and(|v| v.contains("challenge"))
        {
            return Some("a Cloudflare challenge (cf-mitigated: challenge)");
        }
        if !self.is_html() {
            return None;
        }
        let text = self.text().to_ascii_lowercase();
        let cloudflare = self.header("cf-ray").is_some()
            || self
                .header(header::SERVER)
                .is_some_and(|s| s.eq_ignore_ascii_case("cloudflare"));
        let challenge = [
            "challenge-platform",
            "cf-chl",
            "just a moment...",
            "cf_chl_opt",
        ]
        .iter()
        .any(|marker| text.contains(marker));
        match (challenge, cloudflare) {
            (true, true) => Some("a Cloudflare challenge page"),
            (true, false) => Some("a bot-challenge page"),
            (false, true) if text.contains("attention required") => Some("a Cloudflare block page"),
            _ if text.contains("captcha") => Some("a CAPTCHA page"),
            _ => None,
        }
    }

    /// Why this answer is not Gatehouse's, if it is plainly not: a challenge, an HTML
    /// page where JSON belongs, or a body that is not JSON. Redirects are judged on
    /// their own.
    pub fn foreign(&self, expect: Expect) -> Option<String> {
        if let Some(challenge) = self.challenge() {
            return Some(challenge.to_owned());
        }
        // Gatehouse's own pages (a 404 for a path it does not serve) are judged by
        // their status.
        if self.is_redirect() || expect == Expect::Any || self.gatehouse_page().is_some() {
            return None;
        }
        if self.is_html() {
            return Some(match self.title() {
                Some(title) => format!("an HTML page ({title:?})"),
                None => "an HTML page".to_owned(),
            });
        }
        if !self.body.is_empty() && self.json().is_none() {
            let media = self.media_type();
            return Some(if media.is_empty() {
                "a body that is not JSON".to_owned()
            } else {
                format!("a {media} body that is not JSON")
            });
        }
        None
    }

    /// `status`, with the reason phrase.
    pub fn status_line(&self) -> String {
        match reqwest::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
        {
            Some(reason) => format!("{} {reason}", self.status),
            None => self.status.to_string(),
        }
    }
}

fn decode_entities(text: &str) -> String {
    text.replace("&middot;", "·")
        .replace("&#183;", "·")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// Why a request got no answer.
#[derive(Debug)]
pub enum Failure {
    Timeout(Duration),
    /// The TLS handshake failed: the certificate, usually.
    Tls(String),
    /// No connection: DNS, a refused or unreachable port.
    Connect(String),
    Other(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout(after) => write!(f, "no answer within {} s", after.as_secs()),
            Failure::Tls(why) => write!(f, "the TLS handshake failed: {why}"),
            Failure::Connect(why) => write!(f, "no connection: {why}"),
            Failure::Other(why) => write!(f, "the request failed: {why}"),
        }
    }
}

/// The errors behind `error`, innermost last, looking inside `io::Error`s (whose
/// `source` skips the error they wrap).
fn causes<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Vec<&'a (dyn std::error::Error + 'static)> {
    let mut all = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        all.push(e);
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    all
}

fn classify(error: reqwest::Error, timeout: Duration) -> Failure {
    if error.is_timeout() {
        return Failure::Timeout(timeout);
    }
    let causes = causes(&error);
    if let Some(tls) = causes
        .iter()
        .find_map(|e| e.downcast_ref::<rustls::Error>())
    {
        return Failure::Tls(tls.to_string());
    }
    let innermost = causes
        .last()
        .map(|e| e.to_string())
        .unwrap_or_else(|| error.to_string());
    if causes.iter().any(|e| {
        let text = e.to_string().to_ascii_lowercase();
        text.contains("certificate") || text.contains("handshake")
    }) {
        return Failure::Tls(innermost);
    }
    if error.is_connect() {
        return Failure::Connect(innermost);
    }
    Failure::Other(innermost)
}

/// The client, and what its answers revealed across checks: redirects on API paths
/// and answers that were not Gatehouse's.
pub struct Probe {
    client: reqwest::Client,
    timeout: Duration,
    base: String,
    /// API requests made.
    pub api_requests: usize,
    /// "POST /oauth/register answered 301 Moved Permanently, Location: …".
    pub redirects: Vec<String>,
    /// "GET /.well-known/…: an HTML page (…)".
    pub foreign: Vec<String>,
    /// Whether one of `foreign` is a challenge page.
    pub challenged: bool,
}

impl Probe {
    pub fn new(base: &str, timeout: Duration) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("gatehouse-doctor/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        Ok(Probe {
            client,
            timeout,
            base: base.to_owned(),
            api_requests: 0,
            redirects: Vec::new(),
            foreign: Vec::new(),
            challenged: false,
        })
    }

    pub fn request(&self, method: Method, url: &str) -> RequestBuilder {
        self.client.request(method, url)
    }

    /// "POST /mcp": the path on our origin, the whole URL elsewhere.
    pub fn label(&self, method: &Method, url: &str) -> String {
        let shown = url
            .strip_prefix(&self.base)
            .filter(|rest| rest.starts_with('/'))
            .unwrap_or(url);
        let shown = shown.split('?').next().unwrap_or(shown);
        format!("{method} {shown}")
    }

    /// Sends `request` (labelled `what`) and notes what its answer gives away. `api`:
    /// the path is one where any redirect breaks clients.
    pub async fn send(
        &mut self,
        what: &str,
        request: RequestBuilder,
        api: bool,
        expect: Expect,
    ) -> Result<Answer, Failure> {
        if api {
            self.api_requests += 1;
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| classify(e, self.timeout))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = MAX_BODY - body.len();
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if body.len() >= MAX_BODY {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(classify(e, self.timeout)),
            }
        }
        let answer = Answer {
            status,
            headers,
            body,
        };
        if api && answer.is_redirect() {
            self.redirects.push(format!(
                "{what} answered {}, Location: {}",
                answer.status_line(),
                answer.location().unwrap_or("(none)")
            ));
        }
        if let Some(foreign) = answer.foreign(expect) {
            self.challenged |= answer.challenge().is_some();
            self.foreign.push(format!("{what}: {foreign}"));
        }
        Ok(answer)
    }

    /// Notes an answer that is not Gatehouse's for a reason only its check knows.
    pub fn not_gatehouse(&mut self, what: &str, why: &str) {
        self.foreign.push(format!("{what}: {why}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, headers: &[(&'static str, &str)], body: &str) -> Answer {
        let mut map = header::HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, value.parse().expect("header"));
        }
        Answer {
            status,
            headers: map,
            body: body.as_bytes().to_vec(),
        }
    }

    /// A page's words reach the operator's terminal without control characters.
    #[test]
    fn page_messages_lose_control_characters() {
        let page = answer(
            400,
            &[("content-type", "text/html; charset=utf-8")],
            "<html><body><p data-testid=\"error-message\">bad\u{1b}[2J\r\nclient &amp; more\u{9b}31m</p></body></html>",
        );
        assert_eq!(
            page.error_message().as_deref(),
            Some("bad [2J  client & more 31m")
        );
    }

    #[test]
    fn challenge_pages_and_html_are_told_from_gatehouse_json() {
        let cloudflare = answer(
            403,
            &[
                ("content-type", "text/html; charset=UTF-8"),
                ("cf-mitigated", "challenge"),
            ],
            "<html><head><title>Just a moment...</title></head></html>",
        );
        assert_eq!(
            cloudflare.challenge(),
            Some("a Cloudflare challenge (cf-mitigated: challenge)")
        );
        let older = answer(
            503,
            &[("content-type", "text/html"), ("server", "cloudflare")],
            "<title>Just a moment...</title><script src=\"/cdn-cgi/challenge-platform/x\">",
        );
        assert_eq!(older.challenge(), Some("a Cloudflare challenge page"));
        assert!(older.foreign(Expect::Any).is_some(), "a challenge anywhere");

        let welcome = answer(
            200,
            &[("content-type", "text/html")],
            "<html><title>Welcome to  nginx!</title></html>",
        );
        assert_eq!(welcome.challenge(), None);
        assert_eq!(
            welcome.foreign(Expect::Json).as_deref(),
            Some("an HTML page (\"Welcome to nginx!\")")
        );
        assert_eq!(welcome.foreign(Expect::Any), None);

        let json = answer(401, &[("content-type", "application/json")], "{\"a\":1}");
        assert_eq!(json.foreign(Expect::Json), None);
        let text = answer(200, &[("content-type", "text/plain")], "ok");
        assert_eq!(
            text.foreign(Expect::Json).as_deref(),
            Some("a text/plain body that is not JSON")
        );

        let ours = answer(
            400,
            &[("content-type", "text/html; charset=utf-8")],
            "<title>Unknown client &middot; Gatehouse</title>\
             <p data-testid=\"error-message\">This client is not registered here.</p>",
        );
        assert_eq!(ours.gatehouse_page().as_deref(), Some("Unknown client"));
        assert_eq!(
            ours.error_message().as_deref(),
            Some("This client is not registered here.")
        );
        let notice = answer(
            400,
            &[("content-type", "text/html")],
            "<title>Authorization request refused · Gatehouse</title><p data-testid=\"error-message\">\
             <code>invalid_target</code>: this server does not serve the resource</p>",
        );
        assert_eq!(
            notice.error_message().as_deref(),
            Some("invalid_target: this server does not serve the resource")
        );
    }
}
