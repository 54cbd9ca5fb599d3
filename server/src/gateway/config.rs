//! Upstream servers as configured: in the `--config` file (`[[upstream]]` tables) or
//! with `--upstream NAME=URL` / `--upstream 'NAME=stdio:COMMAND ARGS…'`. Everything is
//! checked at start-up, one message per mistake; `${VAR}` in the url and in header
//! and environment values is replaced from Gatehouse's own environment, so secrets
//! stay out of the file. `command` and `args` are passed as written (a shell the
//! command starts may expand them itself).

use std::{collections::BTreeMap, fmt, path::PathBuf, time::Duration};

use serde::Deserialize;

/// The `--config` file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub articles: Option<ArticlesSection>,
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<RawUpstream>,
    #[serde(default, rename = "client_document")]
    pub client_documents: Vec<RawClientDocument>,
}

/// One `[[client_document]]` table: a client-ID metadata document whose content is
/// read from `file` instead of fetched from `url` (for servers without outbound
/// access). A relative `file` is relative to the config file's directory.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientDocument {
    pub url: String,
    pub file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArticlesSection {
    pub enabled: bool,
}

/// One `[[upstream]]` table, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub name: String,
    pub title: Option<String>,
    pub url: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub cwd: Option<PathBuf>,
    pub timeout: Option<String>,
    pub connect_timeout: Option<String>,
    pub max_sessions: Option<u32>,
    pub max_sessions_per_client: Option<u32>,
    pub idle_timeout: Option<String>,
    pub pool_size: Option<u32>,
    #[serde(default)]
    pub tools: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    #[serde(rename = "match")]
    pub pattern: String,
    pub access: String,
}

/// How Gatehouse reaches an upstream.
#[derive(Clone)]
pub enum Transport {
    /// A Streamable HTTP MCP server, with the static headers it needs (its own
    /// credentials, never the client's token).
    Http {
        url: url::Url,
        headers: Vec<(http::HeaderName, http::HeaderValue)>,
    },
    /// A stdio MCP server Gatehouse starts, one process per session.
    Stdio {
        command: String,
        args: Vec<String>,
        /// The configured variables; `PATH` and `HOME` are added from Gatehouse's
        /// environment, nothing else.
        env: Vec<(String, String)>,
        cwd: Option<PathBuf>,
    },
}

/// Header values and environment values may hold secrets: never printed.
impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::Http { url, headers } => f
                .debug_struct("Http")
                .field("url", &shown(url))
                .field(
                    "headers",
                    &headers.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
                )
                .finish(),
            Transport::Stdio {
                command, args, env, ..
            } => f
                .debug_struct("Stdio")
                .field("command", command)
                .field("args", args)
                .field(
                    "env",
                    &env.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
                )
                .finish(),
        }
    }
}

/// An upstream's URL without its query, which may hold a key (see [`interpolate`]).
fn shown(url: &url::Url) -> String {
    let mut shown = url.clone();
    let query = shown.query().is_some();
    shown.set_query(None);
    shown.set_fragment(None);
    let mut shown = String::from(shown);
    if query {
        shown.push_str("?…");
    }
    shown
}

/// What a tool rule grants or forbids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleAccess {
    Read,
    Write,
    /// Hidden from `tools/list` and refused at `tools/call`.
    Deny,
}

#[derive(Clone, Debug)]
pub struct ToolRule {
    pub pattern: String,
    matcher: globset::GlobMatcher,
    pub access: RuleAccess,
}

impl ToolRule {
    pub fn parse(pattern: &str, access: &str) -> Result<Self, String> {
        let access = match access {
            "read" => RuleAccess::Read,
            "write" => RuleAccess::Write,
            "deny" => RuleAccess::Deny,
            other => {
                return Err(format!(
                    "tool rule {pattern:?}: access {other:?} must be read, write or deny"
                ))
            }
        };
        // A deny rule ignores case: an upstream that looks its tools up without
        // regard to case would otherwise run `Delete_all` past a rule for
        // `delete_*`. Hiding too much is the safe side; read and write rules match
        // the name exactly, so that none widens a read scope by accident.
        let matcher = globset::GlobBuilder::new(pattern)
            .case_insensitive(access == RuleAccess::Deny)
            .build()
            .map_err(|e| format!("tool rule {pattern:?} is not a glob: {e}"))?
            .compile_matcher();
        Ok(ToolRule {
            pattern: pattern.to_owned(),
            matcher,
            access,
        })
    }

    /// Whether the rule names `tool`. The matcher of a deny rule ignores the case of
    /// ASCII letters only, while JavaScript's and Python's case mappings turn some
    /// other letters into ASCII ones (the Kelvin sign into `k`, `ſ` into `S`, `ẞ`
    /// into `ss`): the policy also tries a deny rule on the name as such an upstream
    /// may read it ([`ascii_folded`]).
    pub fn matches(&self, tool: &str) -> bool {
        self.matcher.is_match(tool)
    }
}

/// `name` with each letter that a case mapping (lower, upper, or one after the
/// other: Python's `casefold` takes `ẞ` to `ss`) makes ASCII replaced by that,
/// when it has such letters outside ASCII.
pub fn ascii_folded(name: &str) -> Option<String> {
    if name.is_ascii() {
        return None;
    }
    let mut folded = String::with_capacity(name.len());
    let mut changed = false;
    for c in name.chars() {
        let mapped = if c.is_ascii() { None } else { ascii_mapping(c) };
        match mapped {
            Some(mapped) => {
                folded.push_str(&mapped);
                changed = true;
            }
            None => folded.push(c),
        }
    }
    changed.then_some(folded)
}

/// What a case mapping makes of `c`, when that is ASCII. (Called only for names of
/// at most 512 bytes, once per policy decision.)
fn ascii_mapping(c: char) -> Option<String> {
    let lower: String = c.to_lowercase().collect();
    let upper: String = c.to_uppercase().collect();
    let upper_of_lower: String = lower.chars().flat_map(char::to_uppercase).collect();
    let lower_of_upper: String = upper.chars().flat_map(char::to_lowercase).collect();
    [lower, upper, upper_of_lower, lower_of_upper]
        .into_iter()
        .find(|mapped| mapped.is_ascii())
}

/// A validated upstream.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub name: String,
    pub title: String,
    pub transport: Transport,
    /// How long one request may take upstream (reset by progress notifications).
    pub timeout: Duration,
    /// How long connecting and the upstream's `initialize` may take.
    pub connect_timeout: Duration,
    /// Downstream sessions (each with its own upstream session or process) at once.
    pub max_sessions: usize,
    /// Of those, the most one client may hold, so that a client (a runaway script, a
    /// leaked token) cannot take every place, and every process, from the others.
    pub max_sessions_per_client: usize,
    /// A session without requests for this long is closed.
    pub idle_timeout: Duration,
    /// Upstream connections shared by sessionless (2026-07-28) requests.
    pub pool_size: usize,
    /// First match wins; tools no rule matches follow their `readOnlyHint`.
    pub tools: Vec<ToolRule>,
    /// The values its `${VAR}`s were filled with, wherever they went (a header, the
    /// environment, the url's path or query): credentials, hidden in what Gatehouse
    /// logs of the upstream.
    pub filled: Filled,
}

/// What `${VAR}`s filled in: credentials, never printed.
#[derive(Clone, Default)]
pub struct Filled(pub Vec<String>);

impl fmt::Debug for Filled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{} hidden]", self.0.len())
    }
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_SESSIONS: usize = 16;
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
pub const DEFAULT_POOL_SIZE: usize = 2;

/// A name is the path segment `/mcp/NAME` and the prefix of its scopes.
pub fn check_name(name: &str) -> Result<(), String> {
    let valid = (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "upstream name {name:?} must be 1 to 32 lower-case letters, digits and hyphens, \
             not starting with a hyphen"
        ))
    }
}

/// Replaces `${NAME}` with the variable's value from `lookup`. A variable that is
/// not set, or set but empty, is a mistake: an empty credential would be sent as if
/// it were one. Errors never repeat `value`, which may hold a secret of its own.
pub fn interpolate(value: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "the value has an unclosed ${".to_string())?;
        let name = &after[..end];
        let valid =
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(
                "the value has a ${…} that is not a variable name (letters, digits and _)".into(),
            );
        }
        match lookup(name) {
            Some(found) if !found.is_empty() => out.push_str(&found),
            Some(_) => return Err(format!("${{{name}}} is set but empty")),
            None => return Err(format!("${{{name}}} is not set (or not Unicode)")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The longest any of an upstream's durations may be: far past any real need, and
/// far from what a deadline computed from it (ten timeouts) could overflow.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

fn duration(field: &str, raw: Option<&str>, default: Duration) -> Result<Duration, String> {
    match raw {
        None => Ok(default),
        Some(raw) => humantime::parse_duration(raw)
            .map_err(|e| format!("{field} {raw:?} is not a duration: {e}"))
            .and_then(|d| {
                if d.is_zero() {
                    Err(format!("{field} must be more than zero"))
                } else if d > MAX_DURATION {
                    Err(format!("{field} must be at most 7 days"))
                } else {
                    Ok(d)
                }
            }),
    }
}

impl RawUpstream {
    /// Validates one upstream; `lookup` reads environment variables.
    pub fn validate(
        self,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Upstream, Vec<String>> {
        let mut errors = Vec::new();
        let name = self.name.clone();
        let mut fail = |e: String| errors.push(format!("upstream {name:?}: {e}"));
        let filled = std::cell::RefCell::new(Vec::new());
        let lookup = &|name: &str| {
            let value = lookup(name);
            if let Some(value) = &value {
                filled.borrow_mut().push(value.clone());
            }
            value
        };
        if let Err(e) = check_name(&self.name) {
            fail(e);
        }
        let transport = match (&self.url, &self.command) {
            (Some(url), None) => {
                if !self.args.is_empty() || !self.env.is_empty() || self.cwd.is_some() {
                    fail("args, env and cwd are for command upstreams, not url ones".into());
                }
                // A key some servers take only in the query comes from the
                // environment like a header's; messages below name the url as
                // written, never as filled in.
                let parsed = interpolate(url, lookup)
                    .map_err(|e| format!("url: {e}"))
                    .and_then(|filled| {
                        url::Url::parse(&filled)
                            // Not repeated: it may hold credentials.
                            .map_err(|e| format!("the url is not a URL: {e}"))
                    })
                    .and_then(|u| match u.scheme() {
                        _ if !u.username().is_empty() || u.password().is_some() => Err(
                            // It would show wherever the URL does (logs, /healthz), and
                            // not every HTTP client sends it.
                            "the url must not carry credentials: put them in headers, \
                             from an environment variable"
                                .to_string(),
                        ),
                        "http" | "https" => Ok(u),
                        _ => Err(format!("url {url:?} must be http or https")),
                    });
                let mut headers = Vec::new();
                for (name, value) in &self.headers {
                    let header = http::HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| format!("header {name:?} is not a header name"));
                    let value = interpolate(value, lookup)
                        .map_err(|e| format!("header {name}: {e}"))
                        .and_then(|v| {
                            http::HeaderValue::from_str(&v).map_err(|_| {
                                format!("header {name}: the value is not a valid header value")
                            })
                        });
                    // What the transport sets, and what frames or negotiates the
                    // connection: a fixed value would break it or the revision.
                    let reserved = [
                        "accept",
                        "mcp-session-id",
                        "mcp-protocol-version",
                        "last-event-id",
                        "host",
                        "content-length",
                        "content-type",
                        "transfer-encoding",
                        "connection",
                        "keep-alive",
                        "te",
                        "upgrade",
                        "expect",
                    ];
                    match (header, value) {
                        (Ok(h), _) if reserved.contains(&h.as_str()) => {
                            fail(format!("header {h} is set by the MCP transport itself"))
                        }
                        (Ok(h), Ok(mut v)) => {
                            v.set_sensitive(true);
                            headers.push((h, v));
                        }
                        (Err(e), _) | (_, Err(e)) => fail(e),
                    }
                }
                match parsed {
                    Ok(url) => Some(Transport::Http { url, headers }),
                    Err(e) => {
                        fail(e);
                        None
                    }
                }
            }
            (None, Some(command)) => {
                if !self.headers.is_empty() {
                    fail(
                        "headers are for url upstreams; pass a command's credentials in env".into(),
                    );
                }
                if command.trim().is_empty() {
                    fail("command is empty".into());
                }
                // Checked now: otherwise each session's process would fail to start.
                if let Some(cwd) = self.cwd.as_ref().filter(|cwd| !cwd.is_dir()) {
                    fail(format!("cwd {} is not a directory", cwd.display()));
                }
                let mut env = Vec::new();
                for (name, value) in &self.env {
                    if name.is_empty() || name.contains(['=', '\0']) {
                        fail(format!("env {name:?} is not a variable"));
                        continue;
                    }
                    if value.contains('\0') {
                        fail(format!("env {name}: the value holds a NUL character"));
                        continue;
                    }
                    match interpolate(value, lookup) {
                        Ok(v) => env.push((name.clone(), v)),
                        Err(e) => fail(format!("env {name}: {e}")),
                    }
                }
                Some(Transport::Stdio {
                    command: command.clone(),
                    args: self.args.clone(),
                    env,
                    cwd: self.cwd.clone(),
                })
            }
            (Some(_), Some(_)) => {
                fail("give either url or command, not both".into());
                None
            }
            (None, None) => {
                fail("needs a url (Streamable HTTP) or a command (stdio)".into());
                None
            }
        };
        let timeout = duration("timeout", self.timeout.as_deref(), DEFAULT_TIMEOUT)
            .map_err(&mut fail)
            .unwrap_or(DEFAULT_TIMEOUT);
        let connect_timeout = duration(
            "connect_timeout",
            self.connect_timeout.as_deref(),
            DEFAULT_CONNECT_TIMEOUT,
        )
        .map_err(&mut fail)
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let idle_timeout = duration(
            "idle_timeout",
            self.idle_timeout.as_deref(),
            DEFAULT_IDLE_TIMEOUT,
        )
        .map_err(&mut fail)
        .unwrap_or(DEFAULT_IDLE_TIMEOUT);
        let max_sessions = self
            .max_sessions
            .map_or(DEFAULT_MAX_SESSIONS, |n| n as usize);
        let pool_size = self.pool_size.map_or(DEFAULT_POOL_SIZE, |n| n as usize);
        if !(1..=10_000).contains(&max_sessions) {
            fail("max_sessions must be 1 to 10000".into());
        }
        // Half the places by default (at least one): two clients can always work.
        let max_sessions_per_client = self
            .max_sessions_per_client
            .map_or(max_sessions.div_ceil(2), |n| n as usize);
        if max_sessions > 0 && !(1..=max_sessions).contains(&max_sessions_per_client) {
            fail("max_sessions_per_client must be 1 to max_sessions".into());
        }
        if !(1..=64).contains(&pool_size) {
            fail("pool_size must be 1 to 64".into());
        }
        let mut tools = Vec::new();
        for rule in &self.tools {
            match ToolRule::parse(&rule.pattern, &rule.access) {
                Ok(rule) => tools.push(rule),
                Err(e) => fail(e),
            }
        }
        match transport {
            Some(transport) if errors.is_empty() => Ok(Upstream {
                title: self.title.clone().unwrap_or_else(|| self.name.clone()),
                name: self.name,
                transport,
                timeout,
                connect_timeout,
                max_sessions,
                max_sessions_per_client,
                idle_timeout,
                pool_size,
                tools,
                filled: Filled(filled.into_inner()),
            }),
            _ => Err(errors),
        }
    }
}

/// `--upstream NAME=https://…` or `--upstream 'NAME=stdio:COMMAND ARGS…'`.
pub fn parse_short(raw: &str) -> Result<RawUpstream, String> {
    let (name, target) = raw
        .split_once('=')
        .ok_or_else(|| format!("--upstream {raw:?} must be NAME=URL or NAME=stdio:COMMAND"))?;
    let mut upstream = RawUpstream {
        name: name.trim().to_owned(),
        ..RawUpstream::default()
    };
    match target.strip_prefix("stdio:") {
        Some(command) => {
            let words = shlex::split(command).ok_or_else(|| {
                format!("--upstream {name}: the command {command:?} has unbalanced quotes")
            })?;
            if words.is_empty() {
                return Err(format!("--upstream {name}: the command is empty"));
            }
            let mut words = words.into_iter();
            upstream.command = words.next();
            upstream.args = words.collect();
        }
        None => upstream.url = Some(target.trim().to_owned()),
    }
    Ok(upstream)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cret".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn variables_are_replaced_and_missing_ones_refused() {
        assert_eq!(
            interpolate("Bearer ${TOKEN}", &env).as_deref(),
            Ok("Bearer s3cret")
        );
        assert_eq!(
            interpolate("no vars $HOME", &env).as_deref(),
            Ok("no vars $HOME")
        );
        assert!(interpolate("${MISSING}", &env)
            .expect_err("unset")
            .contains("not set"));
        assert!(interpolate("${EMPTY}", &env)
            .expect_err("empty")
            .contains("empty"));
        // Errors name the mistake, never the value, which may hold a secret inline.
        let unclosed = interpolate("Bearer hunter2 ${OPEN", &env).expect_err("unclosed");
        assert!(!unclosed.contains("hunter2"), "{unclosed}");
        let bad = interpolate("Bearer hunter2 ${bad-name}", &env).expect_err("bad name");
        assert!(!bad.contains("hunter2"), "{bad}");
    }

    #[test]
    fn short_forms() {
        let http = parse_short("github=https://api.example.com/mcp").expect("valid");
        assert_eq!(http.url.as_deref(), Some("https://api.example.com/mcp"));
        let stdio =
            parse_short("everything=stdio:npx -y '@modelcontextprotocol/server-everything'")
                .expect("valid");
        assert_eq!(stdio.command.as_deref(), Some("npx"));
        assert_eq!(
            stdio.args,
            ["-y", "@modelcontextprotocol/server-everything"]
        );
        assert!(parse_short("no-equals").is_err());
        let unbalanced = parse_short("x=stdio:npx 'unbalanced").expect_err("unbalanced");
        assert!(unbalanced.contains("unbalanced quotes"), "{unbalanced}");
        for empty in ["x=stdio:", "x=stdio:   "] {
            let said = parse_short(empty).expect_err("empty");
            assert!(said.contains("the command is empty"), "{empty}: {said}");
        }
    }

    /// A NUL in a value is the value's fault, not the name's, and the value is not
    /// repeated (it may be a secret).
    #[test]
    fn a_nul_in_an_env_value_says_so() {
        let errors =
            one_upstream("command = \"x\"\nenv = { KEY = \"s3cret\\u0000\" }\n").expect_err("NUL");
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(
            errors[0].contains("env KEY: the value holds a NUL"),
            "{errors:#?}"
        );
        assert!(!errors[0].contains("s3cret"), "{errors:#?}");
    }

    #[test]
    fn upstreams_are_validated_with_every_mistake_reported() {
        let file: FileConfig = toml::from_str(
            r#"
            [[upstream]]
            name = "GitHub"
            url = "ftp://x"
            headers = { Authorization = "Bearer ${MISSING}", Accept = "x", "MCP-Protocol-Version" = "2025-03-26", "Transfer-Encoding" = "chunked" }
            tools = [{ match = "get_*", access = "sometimes" }]
            timeout = "30days"

            [[upstream]]
            name = "ok"
            command = "npx"
            args = ["-y", "server"]
            env = { API_KEY = "${TOKEN}" }
            tools = [{ match = "delete_*", access = "deny" }, { match = "get_*", access = "read" }]
            "#,
        )
        .expect("toml");
        let mut upstreams = file.upstreams.into_iter();
        let errors = upstreams
            .next()
            .expect("first")
            .validate(&env)
            .expect_err("invalid");
        assert_eq!(errors.len(), 8, "{errors:#?}");
        for said in [
            "header accept is set",
            "header mcp-protocol-version is set",
            "header transfer-encoding is set",
            "timeout must be at most 7 days",
        ] {
            assert!(
                errors.iter().any(|e| e.contains(said)),
                "{said}: {errors:#?}"
            );
        }
        let ok = upstreams
            .next()
            .expect("second")
            .validate(&env)
            .expect("valid");
        match &ok.transport {
            Transport::Stdio { env, .. } => assert_eq!(env, &[("API_KEY".into(), "s3cret".into())]),
            other => panic!("{other:?}"),
        }
        assert!(
            !format!("{ok:?}").contains("s3cret"),
            "secrets are never printed"
        );
        assert_eq!(ok.tools[0].access, RuleAccess::Deny);
        assert!(ok.tools[0].matches("delete_everything"));
        assert!(!ok.tools[0].matches("get_thing"));
    }

    #[test]
    fn credentials_in_an_upstream_url_are_refused_without_repeating_them() {
        let file: FileConfig = toml::from_str(
            r#"
            [[upstream]]
            name = "a"
            url = "http://me:hunter2@example.com/mcp"
            "#,
        )
        .expect("toml");
        let errors = file
            .upstreams
            .into_iter()
            .next()
            .expect("one")
            .validate(&env)
            .expect_err("credentials in the URL");
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(errors[0].contains("headers"), "{errors:#?}");
        assert!(!errors[0].contains("hunter2"), "{errors:#?}");
    }

    /// The one `[[upstream]]` named "a" with `body`, validated.
    fn one_upstream(body: &str) -> Result<Upstream, Vec<String>> {
        let file: FileConfig =
            toml::from_str(&format!("[[upstream]]\nname = \"a\"\n{body}")).expect("toml");
        file.upstreams
            .into_iter()
            .next()
            .expect("one")
            .validate(&env)
    }

    #[test]
    fn a_key_in_the_url_comes_from_the_environment_and_is_never_printed() {
        let upstream = |url: &str| one_upstream(&format!("url = \"{url}\"\n"));
        let ok = upstream("https://example.com/mcp?key=${TOKEN}").expect("valid");
        match &ok.transport {
            Transport::Http { url, .. } => {
                assert_eq!(url.as_str(), "https://example.com/mcp?key=s3cret");
            }
            other => panic!("{other:?}"),
        }
        let printed = format!("{ok:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("https://example.com/mcp?…"), "{printed}");
        // Noted wherever it went, to be hidden in what is logged of the upstream.
        assert_eq!(ok.filled.0, ["s3cret"]);
        let in_path = upstream("https://example.com/k/${TOKEN}/mcp").expect("valid");
        assert_eq!(in_path.filled.0, ["s3cret"]);
        let errors = upstream("https://example.com/mcp?key=${MISSING}").expect_err("unset");
        assert!(
            errors[0].contains("url: ${MISSING} is not set"),
            "{errors:#?}"
        );
        // A filled-in URL that is wrong is named as written, not as filled in.
        let errors = upstream("ftp://example.com/?key=${TOKEN}").expect_err("scheme");
        assert!(errors[0].contains("${TOKEN}"), "{errors:#?}");
        assert!(!errors[0].contains("s3cret"), "{errors:#?}");
    }

    #[test]
    fn a_client_may_hold_half_the_sessions_unless_configured() {
        let upstream = |extra: &str| one_upstream(&format!("command = \"x\"\n{extra}"));
        let per_client = |extra: &str| upstream(extra).expect("valid").max_sessions_per_client;
        assert_eq!(per_client(""), 8);
        assert_eq!(per_client("max_sessions = 5"), 3);
        assert_eq!(per_client("max_sessions = 1"), 1);
        assert_eq!(
            per_client("max_sessions = 4\nmax_sessions_per_client = 4"),
            4
        );
        for wrong in [
            "max_sessions_per_client = 0",
            "max_sessions_per_client = 17",
        ] {
            let errors = upstream(wrong).expect_err(wrong);
            assert!(errors[0].contains("max_sessions_per_client"), "{errors:#?}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<FileConfig>("[[upstream]]\nname = \"a\"\nurll = \"x\"").is_err());
    }
}
