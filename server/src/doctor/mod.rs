//! The doctor: checks, from wherever it runs, what Claude and other MCP clients need
//! from a Gatehouse deployment, and says how to fix each failure. It is the README's
//! troubleshooting table, made executable.
//!
//! - [`run`] makes the requests a client makes, against a URL, from this machine:
//!   `gatehouse doctor URL` runs it;
//! - [`run_checks`] is what the server runs against its own public URL (so through
//!   whatever proxy is in front of it), adding whether its own outbound fetcher can
//!   use the client-ID metadata documents Claude identifies itself with.
//!
//! Every request has a short timeout and follows no redirect: a client that meets a
//! redirect on an API path fails, so the doctor reports it instead. The core speaks
//! plain HTTP through `reqwest`; nothing here depends on the server's router.

mod checks;
mod documents;
mod fixes;
mod probe;

use std::{fmt::Write as _, time::Duration};

use serde::Serialize;

pub use documents::{check_client_document, check_client_documents, CLAUDE_DOCUMENTS};

use crate::oauth::AuthServer;

/// How the doctor runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// The MCP endpoint's path: `/mcp` (the built-in server), or `/mcp/NAME` for an
    /// upstream. `None`: the path of the URL given when it has one, else `/mcp`
    /// ([`run_checks`]: the server's default resource).
    pub mcp_path: Option<String>,
    /// The limit for each request.
    pub timeout: Duration,
    /// The browser origin whose CORS preflights are checked (the MCP Inspector's).
    pub browser_origin: String,
    /// Register a throwaway public client, to check registration and the
    /// authorization page. Each run then creates one registration, which Gatehouse
    /// forgets after `--unused-client-ttl` (a day) unused.
    pub register: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            mcp_path: None,
            timeout: Duration::from_secs(10),
            browser_origin: "http://localhost:6274".into(),
            register: true,
        }
    }
}

/// One line of the checklist.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// A short, stable name, e.g. `mcp-challenge`.
    pub check: &'static str,
    pub ok: bool,
    /// What the doctor saw.
    pub detail: String,
    /// What to change when the check failed; `null` when it passed.
    pub fix: Option<String>,
}

/// `text` without control or format characters (each becomes a space; bidi
/// overrides among them), nor line separators: what a checked server
/// says reaches the operator's terminal, where an escape sequence could redraw what
/// the doctor printed.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if crate::oauth::client::is_hidden_char(c) {
                ' '
            } else {
                c
            }
        })
        .collect()
}

impl Check {
    pub fn pass(check: &'static str, detail: impl Into<String>) -> Self {
        Check {
            check,
            ok: true,
            detail: printable(&detail.into()),
            fix: None,
        }
    }

    pub fn fail(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Check {
            check,
            ok: false,
            detail: printable(&detail.into()),
            fix: Some(fix.into()),
        }
    }
}

/// The checklist, in the order the checks ran. Serialized as a JSON array of
/// `{check, ok, detail, fix}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    /// Whether every check passed.
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    /// The check named `name`, if it ran.
    pub fn get(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.check == name)
    }

    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.ok)
    }

    /// The checklist for a terminal: one line per check (✓ or ✗, its name, what was
    /// seen), the fix under each failure, and a count.
    pub fn render(&self) -> String {
        let width = self.checks.iter().map(|c| c.check.len()).max().unwrap_or(0);
        let mut out = String::new();
        for check in &self.checks {
            let mark = if check.ok { '✓' } else { '✗' };
            let _ = writeln!(out, "{mark} {:width$}  {}", check.check, check.detail);
            if let Some(fix) = &check.fix {
                let mut lines = fix.lines();
                if let Some(first) = lines.next() {
                    let _ = writeln!(out, "    fix: {first}");
                }
                for line in lines {
                    let _ = writeln!(out, "         {line}");
                }
            }
        }
        let failed = self.failures().count();
        let _ = match failed {
            0 => writeln!(out, "All {} checks passed.", self.checks.len()),
            n => writeln!(out, "{n} of {} checks failed.", self.checks.len()),
        };
        out
    }
}

/// What the doctor checks: the deployment's origin and the MCP endpoint's path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    base: String,
    mcp_path: String,
}

impl Target {
    /// `url` is the deployment's public URL, or its MCP URL (`…/mcp`, `…/mcp/NAME`),
    /// as pasted into a client. `mcp_path` overrides the path.
    pub fn parse(url: &str, mcp_path: Option<&str>) -> Result<Target, String> {
        let parsed = url::Url::parse(url.trim()).map_err(|e| {
            format!("{url:?} is not a URL ({e}); give one like https://gate.example.com")
        })?;
        if !matches!(parsed.scheme(), "https" | "http") {
            return Err(format!("{url:?} must start with https:// (or http://)"));
        }
        let Some(host) = parsed.host_str() else {
            return Err(format!("{url:?} has no host"));
        };
        if !parsed.username().is_empty()
            || parsed.password().is_some()
            || parsed.query().is_some()
            || parsed.fragment().is_some()
        {
            return Err(format!(
                "{url:?} must be a plain URL: no credentials, query or fragment"
            ));
        }
        let path = parsed.path().trim_end_matches('/');
        let from_url = match path {
            "" => None,
            p if p == "/mcp" || p.starts_with("/mcp/") => Some(p.to_owned()),
            _ => {
                return Err(format!(
                    "{url:?}: Gatehouse serves from the root of its host; give its origin \
                     (e.g. https://gate.example.com) or its MCP URL (…/mcp)"
                ))
            }
        };
        let mcp_path = match mcp_path {
            Some(p) if !p.starts_with('/') => {
                return Err(format!("--mcp-path {p:?} must start with /"))
            }
            Some(p) => p.trim_end_matches('/').to_owned(),
            None => from_url.unwrap_or_else(|| "/mcp".into()),
        };
        let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
        Ok(Target {
            base: format!("{}://{host}{port}", parsed.scheme()),
            mcp_path,
        })
    }

    /// The origin: what the issuer must equal, byte for byte.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn mcp_path(&self) -> &str {
        &self.mcp_path
    }

    /// The MCP URL, which is also the resource identifier.
    pub fn mcp_url(&self) -> String {
        self.url(&self.mcp_path)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn is_https(&self) -> bool {
        self.base.starts_with("https://")
    }

    fn host(&self) -> &str {
        self.base
            .split_once("://")
            .map(|(_, host)| host)
            .unwrap_or(&self.base)
    }
}

/// The checks a client's requests make, from this machine, against `url` (the
/// public URL or the MCP URL). An unusable `url` is itself a failed check.
pub async fn run(url: &str, options: &Options) -> Report {
    match Target::parse(url, options.mcp_path.as_deref()) {
        Ok(target) => run_target(&target, options).await,
        Err(e) => Report {
            checks: vec![Check::fail(
                "url",
                e,
                "Give the URL clients use: the public URL (https://gate.example.com) or the MCP URL.",
            )],
        },
    }
}

/// [`run`] for a parsed target.
pub async fn run_target(target: &Target, options: &Options) -> Report {
    Report {
        checks: checks::url_checks(target, options).await,
    }
}

/// Everything the doctor checks, as the server runs it on itself: [`run`] against
/// its own `public_url` (through the network, so through whatever proxy is in
/// front), and, with `auth`, whether its own outbound fetcher (with its SSRF guard)
/// can use the client-ID metadata documents Claude Code and Claude.ai identify
/// themselves with, or has them pinned ([`check_client_documents`]). The checks run
/// concurrently; the report is Serialize-able for a page or an API.
///
/// ```ignore
/// let report = gatehouse::doctor::run_checks(
///     state.config.public_url.as_str(),
///     Some(state.auth.as_ref()),
///     &gatehouse::doctor::Options::default(),
/// )
/// .await;
/// ```
///
/// Without `options.mcp_path`, the MCP path is that of the server's default
/// resource (`/mcp`, or the first upstream's when the article server is off).
/// With `options.register` (the default), each call registers a throwaway client.
pub async fn run_checks(public_url: &str, auth: Option<&AuthServer>, options: &Options) -> Report {
    let mut options = options.clone();
    if options.mcp_path.is_none() {
        options.mcp_path = auth
            .and_then(|a| a.settings().resources.default_resource())
            .map(|r| r.path.clone());
    }
    let documents = async {
        match auth {
            Some(auth) => check_client_documents(auth).await,
            None => Vec::new(),
        }
    };
    let (mut report, documents) = tokio::join!(run(public_url, &options), documents);
    report.checks.extend(documents);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever a checked server said (a page's words, a JSON error's description),
    /// a check's detail holds no control characters.
    #[test]
    fn details_lose_control_characters() {
        let check = Check::fail("x", "answered \u{1b}[2J\r\nforged", "fix it");
        assert_eq!(check.detail, "answered  [2J  forged");
        assert_eq!(Check::pass("x", "ok\u{9b}1m").detail, "ok 1m");
    }

    #[test]
    fn targets_are_origins_with_an_mcp_path() {
        let t = Target::parse("https://Gate.Example.com", None).expect("origin");
        assert_eq!(t.base(), "https://gate.example.com");
        assert_eq!(t.mcp_url(), "https://gate.example.com/mcp");
        let t = Target::parse("https://gate.example.com:443/", None).expect("default port");
        assert_eq!(t.base(), "https://gate.example.com");
        let t = Target::parse("http://127.0.0.1:3000/mcp/github", None).expect("mcp url");
        assert_eq!(t.base(), "http://127.0.0.1:3000");
        assert_eq!(t.mcp_path(), "/mcp/github");
        let t = Target::parse("http://[::1]:3000", Some("/mcp/notes")).expect("flag");
        assert_eq!(t.mcp_url(), "http://[::1]:3000/mcp/notes");
        for bad in [
            "gate.example.com",
            "ftp://gate.example.com",
            "https://user:pw@gate.example.com",
            "https://gate.example.com/?x=1",
            "https://gate.example.com/base",
        ] {
            assert!(Target::parse(bad, None).is_err(), "{bad}");
        }
        assert!(Target::parse("https://gate.example.com", Some("mcp")).is_err());
    }

    #[test]
    fn the_checklist_shows_each_failure_with_its_fix() {
        let report = Report {
            checks: vec![
                Check::pass("reachable", "answered"),
                Check::fail("host", "403", "pass Host\nor --allowed-host"),
            ],
        };
        assert!(!report.ok());
        let text = report.render();
        assert!(text.contains("✓ reachable  answered"), "{text}");
        assert!(text.contains("✗ host       403"), "{text}");
        assert!(
            text.contains("    fix: pass Host\n         or --allowed-host"),
            "{text}"
        );
        assert!(text.ends_with("1 of 2 checks failed.\n"), "{text}");
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(
            json[1],
            serde_json::json!({"check": "host", "ok": false, "detail": "403", "fix": "pass Host\nor --allowed-host"})
        );
        assert_eq!(json[0]["fix"], serde_json::Value::Null);
    }
}
