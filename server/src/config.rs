//! Configuration: command-line flags (each also read from a `GATEHOUSE_*` environment
//! variable), validated once at start-up into a [`Config`]. Every mistake is reported,
//! one line each, before anything starts.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::{
    gateway::config::{parse_short, FileConfig, RawClientDocument, RawUpstream, Upstream},
    net::{AllowedHost, Origin},
    oauth::{
        client::ClientId,
        metadata_document::{self, PinnedDocuments},
        redirect::RedirectUri,
        secret::SecretHash,
        OAuthSettings, StaticClient,
    },
    resource::Resources,
};

/// The longest lifetime or timeout a flag may set: ten years of 365.25 days, as
/// `10y` reads.
pub const MAX_LIFETIME: Duration = Duration::from_secs(10 * 36_525 * 24 * 36);

/// Gatehouse: an OAuth 2.1 authorization server and the MCP server it protects.
#[derive(Debug, Parser)]
#[command(
    name = "gatehouse",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// How the log is written: `text` for people, `json` (one object per line) for
    /// machines. Activity events carry `target` `gatehouse::audit` in both.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = LogFormat::Text,
        env = "GATEHOUSE_LOG_FORMAT"
    )]
    pub log_format: LogFormat,

    /// `gatehouse` alone runs `gatehouse serve`.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Which forwarding header a trusted proxy writes (`--forwarded-header`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ForwardedHeader {
    /// Either: when both are sent and disagree, the proxy itself is the client.
    #[default]
    Any,
    /// `Forwarded` (RFC 7239) only; `X-Forwarded-For` is ignored.
    Forwarded,
    /// `X-Forwarded-For` only; `Forwarded` is ignored.
    XForwardedFor,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Cli {
    /// Parses `args` as the command line, without reading `GATEHOUSE_*` environment
    /// variables: for tests, which must not depend on the developer's shell.
    pub fn parse_ignoring_env<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let command = Cli::command().mut_args(|arg| arg.env(None::<&str>));
        let command = command.mut_subcommands(|sub| {
            sub.mut_args(|arg| arg.env(None::<&str>))
                .mut_subcommands(|sub| sub.mut_args(|arg| arg.env(None::<&str>)))
        });
        let mut matches = command.try_get_matches_from(args)?;
        Cli::from_arg_matches_mut(&mut matches)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve(Box<ServeArgs>),
    /// Manage the owner, the one person who may approve clients.
    Owner {
        #[command(subcommand)]
        command: OwnerCommand,
    },
    /// Move state between stores (e.g. from the embedded file to Redis).
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Check a deployment from here as Claude and other MCP clients reach it, and
    /// say how to fix what fails. Exits 1 when a check fails.
    Doctor(DoctorArgs),
}

#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// The URL clients use: the public URL (e.g. https://gate.example.com) or the MCP
    /// URL (…/mcp, …/mcp/NAME).
    pub url: String,

    /// Print a JSON array of {check, ok, detail, fix} instead of the checklist.
    #[arg(long)]
    pub json: bool,

    /// The MCP endpoint's path: /mcp, or /mcp/NAME for an upstream. Default: the
    /// URL's path, else /mcp.
    #[arg(long)]
    pub mcp_path: Option<String>,

    /// Do not register a throwaway client (which also skips the authorization page
    /// check). By default one is registered; unused, it is forgotten after a day.
    #[arg(long)]
    pub no_register: bool,
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Write every record (clients, grants, tokens' hashes, articles…) as JSON lines
    /// to standard output, or to a new file readable by its owner only.
    Export {
        #[command(flatten)]
        store: StoreArgs,
        /// Write to this new file (created with mode 0600; never overwritten) instead
        /// of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Read an export from standard input into this store, which must be empty.
    Import {
        #[command(flatten)]
        store: StoreArgs,
        /// Import into a store that holds records already, writing over those with
        /// the same keys (and keeping the others).
        #[arg(long)]
        replace: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum OwnerCommand {
    /// Set the owner's password, read from standard input (one line).
    SetPassword(StoreArgs),
}

/// Where state lives; shared by `serve` and the maintenance commands.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Where state lives: `embedded:PATH` (a redb file) or a `redis://…` URL.
    /// Default: `embedded:<data-dir>/gatehouse.redb`.
    #[arg(long, env = "GATEHOUSE_STORE", hide_env_values = true)]
    pub store: Option<String>,

    /// The directory for the embedded store. Default: `$XDG_DATA_HOME/gatehouse`, or
    /// `~/.local/share/gatehouse`.
    #[arg(long, env = "GATEHOUSE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// With a Redis store: the prefix of every key, so one Redis can serve several
    /// deployments. No braces (they would form a Cluster hash tag).
    #[arg(long, env = "GATEHOUSE_REDIS_KEY_PREFIX", default_value = "gatehouse:")]
    pub redis_key_prefix: String,

    /// With a Redis store: how many connections each instance opens. Commands are
    /// pipelined on each, and one connection batches best; more help only when one
    /// instance has many cores to keep busy.
    #[arg(
        long,
        env = "GATEHOUSE_REDIS_CONNECTIONS",
        default_value_t = 1,
        value_parser = clap::value_parser!(u8).range(1..=32)
    )]
    pub redis_connections: u8,
}

impl StoreArgs {
    /// The store these flags name, or every mistake, one line each.
    pub fn into_spec(self) -> Result<StoreSpec, Vec<String>> {
        let mut errors = Vec::new();
        let spec = match self.store.as_deref() {
            None => match self.data_dir.or_else(default_data_dir) {
                Some(dir) => Some(StoreSpec::Embedded(dir.join("gatehouse.redb"))),
                None => {
                    errors.push(
                        "no data directory: set --data-dir or --store (HOME is not set)".into(),
                    );
                    None
                }
            },
            Some(spec) => parse_store(spec, &self.redis_key_prefix, self.redis_connections)
                .map_err(|e| errors.push(e))
                .ok(),
        };
        if let Some(StoreSpec::Embedded(path)) = &spec {
            if let Err(e) = check_writable_parent(path) {
                errors.push(e);
            }
        }
        match spec {
            Some(spec) if errors.is_empty() => Ok(spec),
            _ => Err(errors),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The address to listen on.
    #[arg(long, env = "GATEHOUSE_BIND", default_value = "127.0.0.1:3000")]
    pub bind: String,

    /// The externally visible origin, e.g. `https://gate.example.com` (no path, no
    /// trailing slash). It becomes the OAuth issuer and the base of the MCP resource
    /// URL; it is never taken from request headers. Default: `http://<bind>`.
    #[arg(long, env = "GATEHOUSE_PUBLIC_URL")]
    pub public_url: Option<String>,

    #[command(flatten)]
    pub store: StoreArgs,

    /// The directory with the compiled site (`pkg/` with the wasm, JS and CSS), as
    /// `cargo leptos build` writes it. Default: `$LEPTOS_SITE_ROOT`, else `target/site`.
    #[arg(long, env = "GATEHOUSE_SITE_ROOT")]
    pub site_root: Option<PathBuf>,

    /// The owner's password as an Argon2id PHC string (`$argon2id$…`), for automated
    /// deployments. Without it the password is set at first start through a one-time
    /// setup link in the log, or with `gatehouse owner set-password`.
    #[arg(long, env = "GATEHOUSE_OWNER_PASSWORD_HASH", hide_env_values = true)]
    pub owner_password_hash: Option<String>,

    /// How long access tokens live (e.g. `1h`, `15m`).
    #[arg(long, env = "GATEHOUSE_ACCESS_TOKEN_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub access_token_ttl: Duration,

    /// How long refresh tokens live; each rotation starts a new lifetime.
    #[arg(long, env = "GATEHOUSE_REFRESH_TOKEN_TTL", default_value = "30d", value_parser = humantime::parse_duration)]
    pub refresh_token_ttl: Duration,

    /// How long a just-rotated refresh token still yields the same successor pair
    /// (for clients that lost the response). A reuse after it revokes the grant.
    #[arg(long, env = "GATEHOUSE_REFRESH_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub refresh_grace: Duration,

    /// How long a rotated refresh token is at least still recognised as a reuse
    /// (which revokes its grant): a rotation that would forget one rotated more
    /// lately waits. Default: `--access-token-ttl`; `0s` turns the wait off.
    #[arg(long, env = "GATEHOUSE_REFRESH_REUSE_WINDOW", value_parser = humantime::parse_duration)]
    pub refresh_reuse_window: Option<Duration>,

    /// Registered clients that never obtain a grant are forgotten after this long.
    #[arg(long, env = "GATEHOUSE_UNUSED_CLIENT_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub unused_client_ttl: Duration,

    /// A connection's first request head must arrive within this long of connecting,
    /// and each next one within this long of waiting for it (HTTP/2: within once to
    /// twice this long); else the connection is closed.
    #[arg(long, env = "GATEHOUSE_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// A request's body must arrive in full within this long of its head (a deadline,
    /// not a wait between bytes).
    #[arg(long, env = "GATEHOUSE_REQUEST_BODY_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_body_timeout: Duration,

    /// Connections served at once; more wait in the kernel's backlog.
    #[arg(
        long,
        env = "GATEHOUSE_MAX_CONNECTIONS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000)
    )]
    pub max_connections: u32,

    /// Connections served at once from one address (an IPv6 /64; four times as many
    /// from one /48); more are closed. Trusted proxies, 127.0.0.1 and ::1 are not
    /// counted.
    #[arg(
        long,
        env = "GATEHOUSE_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 256,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000)
    )]
    pub max_connections_per_address: u32,

    /// MiB of request bodies held at once: what has arrived of the bodies of requests
    /// not yet answered. One address (an IPv6 /64) may hold 1/32 of it, one /48 four
    /// times that; past either, a body is refused (429, or 503 when all is spent;
    /// bodies announced larger than 8 KiB get only seven eighths of it).
    /// Behind a trusted proxy the client it names holds the share (one it does not
    /// name counts as the proxy); without one, 127.0.0.1 and ::1 count in the whole
    /// only.
    #[arg(
        long,
        env = "GATEHOUSE_MAX_BODY_MEMORY",
        default_value_t = 128,
        value_parser = clap::value_parser!(u32).range(8..=65_536)
    )]
    pub max_body_memory: u32,

    /// Dynamic registrations allowed per client address per minute (more get 429).
    #[arg(
        long,
        env = "GATEHOUSE_REGISTRATIONS_PER_MINUTE",
        default_value_t = 20,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub registrations_per_minute: u32,

    /// Dynamic registrations kept per hour from all addresses together, per
    /// instance (more get 429): what unused registrations may take in the store,
    /// however many addresses a flood comes from. One address (an IPv6 /64), and
    /// one IPv6 /48, may take a tenth of it; invalid requests take nothing.
    #[arg(
        long,
        env = "GATEHOUSE_REGISTRATIONS_PER_HOUR",
        default_value_t = 200,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub registrations_per_hour: u32,

    /// New MCP sessions allowed per client per minute, on all MCP URLs together (more
    /// get 429): each keeps its `initialize` in the store for a day.
    #[arg(
        long,
        env = "GATEHOUSE_SESSIONS_PER_MINUTE",
        default_value_t = 30,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub sessions_per_minute: u32,

    /// New MCP sessions allowed per client per day, on all MCP URLs together and per
    /// instance, less those it ended with DELETE (more get 429): what one client can
    /// make the store hold.
    #[arg(
        long,
        env = "GATEHOUSE_SESSIONS_PER_DAY",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub sessions_per_day: u32,

    /// Sessions one client may hold live at the built-in `/mcp` on an instance (an
    /// idle one closes after five minutes); past that, new ones get 429.
    #[arg(
        long,
        env = "GATEHOUSE_MAX_SESSIONS_PER_CLIENT",
        default_value_t = crate::mcp::articles::MAX_SESSIONS_PER_CLIENT as u32,
        value_parser = clap::value_parser!(u32).range(1..=100_000)
    )]
    pub max_sessions_per_client: u32,

    /// The largest registration request body, in bytes.
    #[arg(
        long,
        env = "GATEHOUSE_MAX_REGISTRATION_BYTES",
        default_value_t = 8192,
        value_parser = clap::value_parser!(u32).range(512..=65536)
    )]
    pub max_registration_bytes: u32,

    /// Client-ID metadata documents kept in memory at once.
    #[arg(
        long,
        env = "GATEHOUSE_MAX_CACHED_CLIENT_DOCUMENTS",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000)
    )]
    pub max_cached_client_documents: u32,

    /// A reverse proxy (address or CIDR range, repeatable) whose
    /// `Forwarded`/`X-Forwarded-For` header names the client. Requests from other
    /// peers are identified by their own address.
    #[arg(
        long = "trusted-proxy",
        env = "GATEHOUSE_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<String>,

    /// The forwarding header the trusted proxies write: `x-forwarded-for` (Caddy,
    /// nginx, Traefik, HAProxy) or `forwarded`; the other is then ignored, so a
    /// client cannot send it. `any` reads both, and takes the proxy itself as the
    /// client when they disagree.
    #[arg(
        long,
        value_enum,
        default_value_t = ForwardedHeader::Any,
        env = "GATEHOUSE_FORWARDED_HEADER"
    )]
    pub forwarded_header: ForwardedHeader,

    /// Allow an `http://` public URL on a host that is not loopback. Tokens and the
    /// session cookie then travel in clear: only behind a TLS-terminating proxy on a
    /// private network.
    #[arg(long, env = "GATEHOUSE_INSECURE_HTTP")]
    pub insecure_http: bool,

    /// A fixed client id, for clients that cannot register themselves (Claude.ai's
    /// advanced settings take a client id and secret).
    #[arg(
        long,
        env = "GATEHOUSE_STATIC_CLIENT_ID",
        requires = "static_client_secret"
    )]
    pub static_client_id: Option<String>,

    /// The fixed client's secret (at least 32 characters). Only its hash is kept.
    #[arg(
        long,
        env = "GATEHOUSE_STATIC_CLIENT_SECRET",
        hide_env_values = true,
        requires = "static_client_id"
    )]
    pub static_client_secret: Option<String>,

    /// The fixed client's redirect URIs (comma-separated).
    #[arg(
        long,
        env = "GATEHOUSE_STATIC_CLIENT_REDIRECT_URIS",
        value_delimiter = ',',
        default_value = "https://claude.ai/api/mcp/auth_callback,https://claude.com/api/mcp/auth_callback"
    )]
    pub static_client_redirect_uris: Vec<String>,

    /// Another browser origin that may call `/mcp` (repeatable, e.g.
    /// `https://app.example.com`). The public URL's origin and loopback origins are
    /// always allowed.
    #[arg(
        long = "allowed-origin",
        env = "GATEHOUSE_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// Another `Host` under which `/mcp` may be reached (repeatable). The public
    /// URL's host and loopback hosts are always allowed.
    #[arg(
        long = "allowed-host",
        env = "GATEHOUSE_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub allowed_hosts: Vec<String>,

    /// How often an open MCP stream checks that its token is still valid. For tests;
    /// the default suits production.
    #[arg(long, env = "GATEHOUSE_STREAM_RECHECK", default_value = "30s", value_parser = humantime::parse_duration, hide = true)]
    pub stream_recheck: Duration,

    /// How long the activity log keeps events.
    #[arg(long, env = "GATEHOUSE_ACTIVITY_RETENTION", default_value = "30d", value_parser = humantime::parse_duration)]
    pub activity_retention: Duration,

    /// The most events the activity log keeps, tool calls and everything else
    /// counted apart (the oldest go first).
    #[arg(
        long,
        env = "GATEHOUSE_ACTIVITY_MAX_EVENTS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u32).range(100..=10_000_000)
    )]
    pub activity_max_events: u32,

    /// Serve Prometheus metrics at `/metrics` on the main listener to requests that
    /// send `Authorization: Bearer <this>` (at least 32 characters; only its hash is
    /// kept).
    #[arg(long, env = "GATEHOUSE_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,

    /// Serve Prometheus metrics at `/metrics` on this address of their own, without
    /// authentication (bind it to a private interface).
    #[arg(long, env = "GATEHOUSE_METRICS_BIND")]
    pub metrics_bind: Option<String>,

    /// A TOML file listing upstream MCP servers to guard (`[[upstream]]` tables; see
    /// the README). Every flag works without it.
    #[arg(long, env = "GATEHOUSE_CONFIG")]
    pub config: Option<PathBuf>,

    /// An upstream MCP server to guard at `/mcp/NAME` (repeatable): `NAME=URL` for a
    /// Streamable HTTP server, or `'NAME=stdio:COMMAND ARGS…'` for one Gatehouse
    /// starts itself.
    #[arg(long = "upstream", env = "GATEHOUSE_UPSTREAM")]
    pub upstreams: Vec<String>,

    /// Turn off the built-in article server at `/mcp`.
    #[arg(long, env = "GATEHOUSE_NO_ARTICLES")]
    pub no_articles: bool,

    /// Fetch client-ID metadata documents from loopback http URLs. For tests only: it
    /// turns off part of the SSRF guard.
    #[arg(
        long,
        env = "GATEHOUSE_INSECURE_ALLOW_LOOPBACK_CLIENT_METADATA",
        hide = true
    )]
    pub insecure_allow_loopback_client_metadata: bool,
}

/// Validated configuration. Everything past start-up reads this, never raw flags.
#[derive(Debug, Clone)]
pub struct Config {
    pub bind: SocketAddr,
    pub public_url: PublicUrl,
    pub store: StoreSpec,
    pub site_root: PathBuf,
    pub owner_password_hash: Option<String>,
    pub oauth: OAuthSettings,
    pub allowed_origins: Vec<Origin>,
    pub allowed_hosts: Vec<AllowedHost>,
    pub limits: Limits,
    /// Peers whose forwarding headers name the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Which of their headers is read.
    pub forwarded_header: ForwardedHeader,
    /// Whether the built-in article server answers at `/mcp`.
    pub articles: bool,
    /// The upstream MCP servers guarded at `/mcp/NAME`.
    pub upstreams: Vec<Upstream>,
    pub metrics: Metrics,
}

/// Where `/metrics` is served, if anywhere.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// On the main listener, to this bearer secret (its hash).
    pub token: Option<SecretHash>,
    /// On a listener of its own.
    pub bind: Option<SocketAddr>,
}

/// What one client, or all of them, may cost: each limit is a flag.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub request_body_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    /// Bytes of request bodies held at once.
    pub max_body_memory: usize,
    pub registrations_per_minute: u32,
    pub registrations_per_hour: u32,
    pub sessions_per_minute: u32,
    pub sessions_per_day: u32,
    pub max_sessions_per_client: usize,
    pub max_registration_bytes: usize,
    /// How often an open MCP stream checks that its token is still valid.
    pub stream_recheck: Duration,
    pub activity_retention: Duration,
    pub activity_max_events: usize,
}

/// The externally visible origin: scheme, host and optional port, with no path, no
/// query and no trailing slash, so that `issuer` and resource URLs built from it are
/// byte-identical to what clients derive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl(String);

impl PublicUrl {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let url =
            url::Url::parse(raw).map_err(|e| format!("--public-url {raw:?} is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("--public-url {raw:?} must use http or https"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("--public-url {raw:?} has no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("--public-url must not carry credentials (user:password@)".into());
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "--public-url {raw:?} must not have a query or fragment"
            ));
        }
        if raw.ends_with('/') {
            return Err(format!(
                "--public-url {raw:?} must not end with a slash (use {:?})",
                raw.trim_end_matches('/')
            ));
        }
        if url.path() != "/" {
            return Err(format!(
                "--public-url {raw:?} must be an origin without a path (Gatehouse serves from the root)"
            ));
        }
        // `url` normalises (lower-cases the host, drops default ports); use its form so
        // the issuer we advertise is canonical.
        let canonical = url.as_str().trim_end_matches('/').to_owned();
        Ok(PublicUrl(canonical))
    }

    /// Refuses `http://` on a host that is not loopback unless `allowed`: tokens and
    /// the session cookie would travel in clear.
    pub fn refuse_clear_text(&self, allowed: bool) -> Result<(), String> {
        let loopback = url::Url::parse(&self.0).is_ok_and(|u| crate::net::is_loopback_url(&u));
        if self.is_https() || loopback || allowed {
            return Ok(());
        }
        Err(format!(
            "--public-url {:?} uses http on a host that is not loopback, so tokens and the sign-in cookie would travel in clear; use https, or pass --insecure-http behind a TLS-terminating proxy",
            self.0
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_https(&self) -> bool {
        self.0.starts_with("https://")
    }

    /// `<public-url><path>`; `path` starts with `/`.
    pub fn join(&self, path: &str) -> String {
        format!("{}{path}", self.0)
    }

    /// The MCP endpoint's URL, which is also its OAuth resource identifier.
    pub fn mcp_url(&self) -> String {
        self.join("/mcp")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    Embedded(PathBuf),
    /// A Redis URL in any form fred accepts, and the key prefix.
    Redis {
        url: String,
        prefix: String,
        connections: u8,
    },
}

impl ServeArgs {
    /// Turns flags into a [`Config`], or every mistake found, one line each.
    pub fn into_config(self) -> Result<Config, Vec<String>> {
        let mut errors = Vec::new();

        let bind = match self.bind.parse::<SocketAddr>() {
            Ok(bind) => Some(bind),
            Err(_) => {
                errors.push(format!(
                    "--bind {:?} is not an address like 127.0.0.1:3000",
                    self.bind
                ));
                None
            }
        };

        let public_url = match (&self.public_url, bind) {
            (Some(raw), _) => PublicUrl::parse(raw)
                .and_then(|url| url.refuse_clear_text(self.insecure_http).map(|()| url))
                .map_err(|e| errors.push(e))
                .ok(),
            (None, Some(bind)) if bind.ip().is_unspecified() => {
                errors.push(format!(
                    "--bind {bind} listens on every interface; set --public-url to the address clients use"
                ));
                None
            }
            // The issuer and every resource would name port 0, which no client
            // can reach.
            (None, Some(bind)) if bind.port() == 0 => {
                errors.push(format!(
                    "--bind {bind} lets the system choose the port; set --public-url to the address clients use"
                ));
                None
            }
            (None, Some(bind)) => PublicUrl::parse(&format!("http://{bind}"))
                .and_then(|url| url.refuse_clear_text(self.insecure_http).map(|()| url))
                .map_err(|e| errors.push(e))
                .ok(),
            (None, None) => None,
        };

        let mut upstream_errors = Vec::new();
        let file = self.config_file(&mut upstream_errors);
        let (articles, upstreams) =
            self.upstreams_and_articles(file.articles, file.upstreams, &mut upstream_errors);
        let store = self.store.into_spec().map_err(|e| errors.extend(e)).ok();
        errors.extend(upstream_errors);

        if let Some(hash) = &self.owner_password_hash {
            if let Err(e) = crate::oauth::owner::check_password_hash(hash) {
                errors.push(format!("--owner-password-hash: {e}"));
            }
        }
        for (flag, ttl) in [
            ("--access-token-ttl", self.access_token_ttl),
            ("--refresh-token-ttl", self.refresh_token_ttl),
            ("--unused-client-ttl", self.unused_client_ttl),
            ("--header-read-timeout", self.header_read_timeout),
            ("--request-body-timeout", self.request_body_timeout),
            ("--activity-retention", self.activity_retention),
        ] {
            if ttl.as_secs() == 0 {
                errors.push(format!("{flag} must be at least one second"));
            }
            // Far beyond any use, and still a lifetime every store can keep (Redis
            // would keep one past 2^63 ms for ever, and refuse some shorter ones).
            if ttl > MAX_LIFETIME {
                errors.push(format!("{flag} must be at most ten years"));
            }
        }
        // Zero turns the wait off; past the refresh token's lifetime it would hold a
        // grant's rotations back for longer than any of its tokens lives.
        if self
            .refresh_reuse_window
            .is_some_and(|window| window > self.refresh_token_ttl)
        {
            errors
                .push("--refresh-reuse-window must not be longer than --refresh-token-ttl".into());
        }
        // Zero turns the grace off; a successor kept longer than its grant is of no use.
        if self.refresh_grace > self.refresh_token_ttl {
            errors.push("--refresh-grace must not be longer than --refresh-token-ttl".into());
        }
        // A grant is kept for the refresh token's lifetime from its last rotation:
        // an access token living longer would outlive the grant it came from.
        if self.access_token_ttl > self.refresh_token_ttl {
            errors.push("--access-token-ttl must not be longer than --refresh-token-ttl".into());
        }
        let static_client = match (&self.static_client_id, &self.static_client_secret) {
            (Some(id), Some(secret)) => {
                if secret.chars().count() < 32 {
                    errors.push("--static-client-secret must have at least 32 characters".into());
                }
                let uris: Vec<RedirectUri> = self
                    .static_client_redirect_uris
                    .iter()
                    .filter_map(|u| {
                        RedirectUri::parse(u)
                            .map_err(|e| errors.push(format!("--static-client-redirect-uris: {e}")))
                            .ok()
                    })
                    .collect();
                match ClientId::parse(id).filter(|_| id.len() <= 256) {
                    Some(client_id) => Some(StaticClient {
                        client_id,
                        secret_hash: SecretHash::of(secret),
                        redirect_uris: uris,
                    }),
                    None => {
                        errors.push(
                            "--static-client-id must have 1 to 256 visible ASCII characters".into(),
                        );
                        None
                    }
                }
            }
            _ => None,
        };
        let allowed_origins: Vec<Origin> = self
            .allowed_origins
            .iter()
            .filter(|o| !o.trim().is_empty())
            .filter_map(|o| {
                Origin::parse(o)
                    .map_err(|e| errors.push(format!("--allowed-origin {e}")))
                    .ok()
            })
            .collect();
        if self.stream_recheck < Duration::from_millis(100) {
            errors.push("--stream-recheck must be at least 100ms".into());
        }
        let metrics = Metrics {
            token: match &self.metrics_token {
                Some(token) if token.chars().count() < 32 => {
                    errors.push("--metrics-token must have at least 32 characters".into());
                    None
                }
                Some(token) => Some(SecretHash::of(token)),
                None => None,
            },
            bind: self.metrics_bind.as_deref().and_then(|raw| {
                raw.parse::<SocketAddr>()
                    .map_err(|_| {
                        errors.push(format!(
                            "--metrics-bind {raw:?} is not an address like 127.0.0.1:9090"
                        ))
                    })
                    .ok()
            }),
        };
        let trusted_proxies: Vec<ipnet::IpNet> = self
            .trusted_proxies
            .iter()
            .filter(|p| !p.trim().is_empty())
            .filter_map(|p| {
                let p = p.trim();
                p.parse::<ipnet::IpNet>()
                    .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        errors.push(format!(
                            "--trusted-proxy {p:?} is not an address or CIDR range (e.g. 10.0.0.0/8)"
                        ))
                    })
                    .ok()
            })
            .collect();
        let allowed_hosts: Vec<AllowedHost> = self
            .allowed_hosts
            .iter()
            .filter(|h| !h.trim().is_empty())
            .filter_map(|h| {
                AllowedHost::parse(h)
                    .map_err(|e| errors.push(format!("--allowed-host {e}")))
                    .ok()
            })
            .collect();

        let site_root = self
            .site_root
            .or_else(|| std::env::var_os("LEPTOS_SITE_ROOT").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("target/site"));

        let resources = match &public_url {
            Some(public_url) => resources(public_url, articles, &upstreams)
                .map_err(|e| errors.push(e))
                .unwrap_or_default(),
            None => Resources::default(),
        };
        let pinned_documents = pinned_documents(
            self.config.as_deref(),
            file.client_documents,
            &resources.all_scopes(),
            &mut errors,
        );

        match (bind, public_url, store) {
            (Some(bind), Some(public_url), Some(store)) if errors.is_empty() => Ok(Config {
                bind,
                oauth: OAuthSettings {
                    issuer: public_url.as_str().to_owned(),
                    resources: Arc::new(resources),
                    access_token_ttl: self.access_token_ttl,
                    refresh_token_ttl: self.refresh_token_ttl,
                    refresh_grace: self.refresh_grace,
                    refresh_reuse_window: self
                        .refresh_reuse_window
                        .unwrap_or(self.access_token_ttl),
                    unused_client_ttl: self.unused_client_ttl,
                    max_cached_documents: self.max_cached_client_documents as usize,
                    static_client,
                    pinned_documents: Arc::new(pinned_documents),
                    allow_loopback_client_metadata: self.insecure_allow_loopback_client_metadata,
                },
                public_url,
                store,
                site_root,
                owner_password_hash: self.owner_password_hash,
                allowed_origins,
                allowed_hosts,
                limits: Limits {
                    header_read_timeout: self.header_read_timeout,
                    request_body_timeout: self.request_body_timeout,
                    max_connections: self.max_connections as usize,
                    max_connections_per_address: self.max_connections_per_address as usize,
                    max_body_memory: usize::try_from(u64::from(self.max_body_memory) << 20)
                        .unwrap_or(usize::MAX),
                    registrations_per_minute: self.registrations_per_minute,
                    registrations_per_hour: self.registrations_per_hour,
                    sessions_per_minute: self.sessions_per_minute,
                    sessions_per_day: self.sessions_per_day,
                    max_sessions_per_client: self.max_sessions_per_client as usize,
                    max_registration_bytes: self.max_registration_bytes as usize,
                    stream_recheck: self.stream_recheck,
                    activity_retention: self.activity_retention,
                    activity_max_events: self.activity_max_events as usize,
                },
                trusted_proxies,
                forwarded_header: self.forwarded_header,
                articles,
                upstreams,
                metrics,
            }),
            _ => Err(errors),
        }
    }

    /// The `--config` file, empty without one or when it cannot be read (the
    /// mistake goes to `errors`). Pinned documents' files are made relative to the
    /// config file's directory.
    fn config_file(&self, errors: &mut Vec<String>) -> FileConfig {
        let Some(path) = &self.config else {
            return FileConfig::default();
        };
        let parsed = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| {
                toml::from_str::<FileConfig>(&text).map_err(|e| toml_mistake(&text, &e))
            });
        match parsed {
            Ok(mut file) => {
                let dir = path.parent().unwrap_or(Path::new(""));
                for document in &mut file.client_documents {
                    document.file = dir.join(&document.file);
                }
                // As documents' files: relative to the file that names them, not to
                // wherever Gatehouse was started.
                for upstream in &mut file.upstreams {
                    if let Some(cwd) = &mut upstream.cwd {
                        *cwd = dir.join(&*cwd);
                    }
                }
                file
            }
            Err(e) => {
                errors.push(format!("--config {}: {e}", path.display()));
                FileConfig::default()
            }
        }
    }

    /// The upstreams of `--config` and `--upstream`, and whether the article server
    /// runs; mistakes go to `errors`.
    fn upstreams_and_articles(
        &self,
        section: Option<crate::gateway::config::ArticlesSection>,
        from_file: Vec<RawUpstream>,
        errors: &mut Vec<String>,
    ) -> (bool, Vec<Upstream>) {
        let mut articles = !self.no_articles;
        if let Some(section) = section {
            articles &= section.enabled;
        }
        let mut raw = from_file;
        for short in &self.upstreams {
            match parse_short(short) {
                Ok(upstream) => raw.push(upstream),
                Err(e) => errors.push(e),
            }
        }
        let lookup = |name: &str| std::env::var(name).ok();
        let mut upstreams: Vec<Upstream> = Vec::new();
        for upstream in raw {
            match upstream.validate(&lookup) {
                Ok(upstream) if upstreams.iter().any(|u| u.name == upstream.name) => {
                    errors.push(format!("upstream {:?} is configured twice", upstream.name))
                }
                Ok(upstream) => upstreams.push(upstream),
                Err(mistakes) => errors.extend(mistakes),
            }
        }
        if !articles && upstreams.is_empty() {
            errors.push(
                "nothing to serve: the article server is off and no upstream is configured".into(),
            );
        }
        (articles, upstreams)
    }
}

/// The `[[client_document]]` pins of the `config` file, each read and validated now
/// as a fetched document would be; mistakes go to `errors`.
fn pinned_documents(
    config: Option<&Path>,
    raw: Vec<RawClientDocument>,
    known: &crate::oauth::scope::ScopeSet,
    errors: &mut Vec<String>,
) -> PinnedDocuments {
    let mut pinned = PinnedDocuments::default();
    let config = config.map(|p| p.display().to_string()).unwrap_or_default();
    for document in raw {
        let outcome = metadata_document::pin(&document.url, &document.file, known)
            .and_then(|(url, doc)| pinned.insert(&url, doc));
        if let Err(e) = outcome {
            errors.push(format!("--config {config}: [[client_document]] {e}"));
        }
    }
    pinned
}

/// The protected resources: the article server (when on) first, then each upstream.
fn resources(
    public_url: &PublicUrl,
    articles: bool,
    upstreams: &[Upstream],
) -> Result<Resources, String> {
    let mut list = Vec::new();
    if articles {
        list.push(Arc::new(crate::mcp::articles::resource(
            public_url.as_str(),
        )));
    }
    for upstream in upstreams {
        list.push(crate::gateway::resource(public_url.as_str(), upstream)?);
    }
    Ok(Resources::new(list))
}

fn parse_store(spec: &str, redis_prefix: &str, connections: u8) -> Result<StoreSpec, String> {
    if let Some(path) = spec.strip_prefix("embedded:") {
        if path.is_empty() {
            return Err("--store embedded: needs a file path, e.g. embedded:/var/lib/gatehouse/gatehouse.redb".into());
        }
        return Ok(StoreSpec::Embedded(PathBuf::from(path)));
    }
    let redis_schemes = [
        "redis://",
        "rediss://",
        "redis-cluster://",
        "rediss-cluster://",
        "redis-sentinel://",
        "rediss-sentinel://",
    ];
    if redis_schemes.iter().any(|s| spec.starts_with(s)) {
        // Never echo the URL: it may carry a password.
        fred::types::config::Config::from_url(spec)
            .map_err(|e| format!("--store: the Redis URL is not valid: {}", e.details()))?;
        if redis_prefix.contains(['{', '}']) {
            return Err("--redis-key-prefix must not contain braces".into());
        }
        return Ok(StoreSpec::Redis {
            url: spec.to_owned(),
            prefix: redis_prefix.to_owned(),
            connections,
        });
    }
    // Not echoed either: a Redis URL mistyped (`REDIS://`, quotes kept from an
    // environment file) still carries its password.
    Err(
        "--store is not a store: use embedded:PATH or a redis:// URL \
         (redis, rediss, redis-cluster or redis-sentinel, in lower case)"
            .into(),
    )
}

fn default_data_dir() -> Option<PathBuf> {
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(xdg).join("gatehouse"));
    }
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|home| PathBuf::from(home).join(".local/share/gatehouse"))
}

/// Creates the store's directory if needed and proves we can write there, so a bad
/// data directory fails at start-up with its name rather than at the first request.
/// Creates a directory (and its parents) readable by its owner only: it will hold the
/// store, with every grant and the owner's password hash.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

fn check_writable_parent(path: &Path) -> Result<(), String> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    create_private_dir(dir)
        .map_err(|e| format!("data directory {} cannot be created: {e}", dir.display()))?;
    let probe = dir.join(format!(".gatehouse-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .map_err(|e| format!("data directory {} is not writable: {e}", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// Where the config file is wrong and why, without the line itself: toml's own
/// message quotes it, and serde's may quote a value, and a line may hold a secret (a
/// header's value). Quoted text in the message is left out.
fn toml_mistake(text: &str, error: &toml::de::Error) -> String {
    let mut message = String::new();
    let (mut quoted, mut escaped) = (false, false);
    for c in error.message().chars() {
        match c {
            // Quoted values are written as Rust strings: `\"` is inside them.
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' if quoted => {
                quoted = false;
                message.push_str("…\"");
            }
            '"' => {
                quoted = true;
                message.push('"');
            }
            _ if quoted => {}
            c => message.push(c),
        }
    }
    let place = error
        .span()
        .and_then(|span| text.get(..span.start))
        .map(|before| {
            let line = before.matches('\n').count() + 1;
            let column = before.chars().rev().take_while(|c| *c != '\n').count() + 1;
            format!("line {line}, column {column}: ")
        });
    format!("{}{message}", place.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> ServeArgs {
        let mut argv = vec!["gatehouse"];
        argv.extend_from_slice(extra);
        Cli::parse_ignoring_env(argv).expect("flags parse").serve
    }

    #[test]
    fn public_url_must_be_a_bare_origin() {
        assert_eq!(
            PublicUrl::parse("https://Gate.Example.com")
                .expect("valid")
                .as_str(),
            "https://gate.example.com"
        );
        assert_eq!(
            PublicUrl::parse("http://127.0.0.1:8080")
                .expect("valid")
                .mcp_url(),
            "http://127.0.0.1:8080/mcp"
        );
        assert_eq!(
            PublicUrl::parse("https://gate.example.com:443")
                .expect("valid")
                .as_str(),
            "https://gate.example.com"
        );
        for bad in [
            "https://gate.example.com/",
            "https://gate.example.com/base",
            "https://gate.example.com?x=1",
            "https://user:pw@gate.example.com",
            "ftp://gate.example.com",
            "gate.example.com",
        ] {
            assert!(PublicUrl::parse(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn defaults_derive_from_bind_and_data_dir() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = args(&["--data-dir", dir.path().to_str().expect("utf-8")])
            .into_config()
            .expect("valid");
        assert_eq!(config.bind.to_string(), "127.0.0.1:3000");
        assert_eq!(config.public_url.as_str(), "http://127.0.0.1:3000");
        assert_eq!(
            config.store,
            StoreSpec::Embedded(dir.path().join("gatehouse.redb"))
        );
    }

    #[test]
    fn every_mistake_is_reported_on_its_own_line() {
        let errors = args(&[
            "--bind",
            "nonsense",
            "--public-url",
            "https://gate.example.com/",
            "--store",
            "postgres://db",
        ])
        .into_config()
        .expect_err("invalid");
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].contains("--bind"));
        assert!(errors[1].contains("must not end with a slash"));
        assert!(errors[2].contains("is not a store"));
    }

    #[test]
    fn a_port_chosen_by_the_system_needs_a_public_url() {
        let errors = args(&["--bind", "127.0.0.1:0"])
            .into_config()
            .expect_err("invalid");
        assert!(
            errors.iter().any(|e| e.contains("--public-url")),
            "{errors:?}"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().to_str().expect("utf-8");
        let given = [
            "--bind",
            "127.0.0.1:0",
            "--public-url",
            "http://127.0.0.1:8080",
            "--data-dir",
            data,
        ];
        assert!(args(&given).into_config().is_ok());
    }

    /// A mistyped Redis URL, or a public URL with credentials, is refused without
    /// its password in the message (which goes to the service's log).
    #[test]
    fn refused_urls_are_not_echoed() {
        for (flag, value) in [
            ("--store", "REDIS://:hunter2secret@db:6379"),
            ("--store", "\"redis://:hunter2secret@db:6379\""),
            ("--store", "valkey://:hunter2secret@db"),
            (
                "--public-url",
                "https://owner:hunter2secret@gate.example.com",
            ),
        ] {
            let errors = args(&[flag, value]).into_config().expect_err("invalid");
            assert!(errors.iter().any(|e| e.contains(flag)), "{errors:?}");
            assert!(
                errors.iter().all(|e| !e.contains("hunter2secret")),
                "{errors:?}"
            );
        }
    }

    #[test]
    fn an_access_token_cannot_outlive_its_grant() {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().to_str().expect("utf-8");
        let ttls = |access: &str, refresh: &str| {
            args(&[
                "--data-dir",
                data,
                "--access-token-ttl",
                access,
                "--refresh-token-ttl",
                refresh,
            ])
            .into_config()
        };
        let errors = ttls("2d", "1d").expect_err("longer than the grant");
        assert_eq!(
            errors,
            ["--access-token-ttl must not be longer than --refresh-token-ttl"]
        );
        assert!(ttls("1d", "1d").is_ok());
        let errors = ttls("1d", "300000000y").expect_err("for ever");
        assert_eq!(errors, ["--refresh-token-ttl must be at most ten years"]);
        assert!(ttls("1d", "10y").is_ok());
        assert!(ttls("1d", "11y").is_err());
        let grace = |grace: &str| {
            args(&[
                "--data-dir",
                data,
                "--refresh-token-ttl",
                "1d",
                "--refresh-grace",
                grace,
            ])
            .into_config()
        };
        assert!(grace("0s").is_ok());
        assert_eq!(
            grace("300000000y").expect_err("for ever"),
            ["--refresh-grace must not be longer than --refresh-token-ttl"]
        );
        let window = |window: &str| {
            args(&[
                "--data-dir",
                data,
                "--refresh-token-ttl",
                "1d",
                "--refresh-reuse-window",
                window,
            ])
            .into_config()
        };
        assert_eq!(
            window("0s").expect("off").oauth.refresh_reuse_window,
            Duration::ZERO
        );
        assert_eq!(
            window("2d").expect_err("longer than the grant"),
            ["--refresh-reuse-window must not be longer than --refresh-token-ttl"]
        );
        // By default, an access token's lifetime.
        let default = args(&["--data-dir", data, "--access-token-ttl", "15m"])
            .into_config()
            .expect("valid");
        assert_eq!(
            default.oauth.refresh_reuse_window,
            Duration::from_secs(15 * 60)
        );
    }

    #[test]
    fn unwritable_data_dirs_and_bad_redis_prefixes_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"").expect("write");
        let errors = args(&["--data-dir", file.join("sub").to_str().expect("utf-8")])
            .into_config()
            .expect_err("a file is not a directory");
        assert!(errors[0].contains("cannot be created"), "{errors:?}");

        let config = args(&["--store", "rediss://user:pw@redis.example:6380/2"])
            .into_config()
            .expect("a Redis URL");
        assert_eq!(
            config.store,
            StoreSpec::Redis {
                url: "rediss://user:pw@redis.example:6380/2".into(),
                prefix: "gatehouse:".into(),
                connections: 1,
            }
        );
        let errors = args(&[
            "--store",
            "redis://127.0.0.1:6379",
            "--redis-key-prefix",
            "a{b}",
        ])
        .into_config()
        .expect_err("braces");
        assert!(errors[0].contains("braces"), "{errors:?}");

        let config = args(&["--store", "redis://127.0.0.1", "--redis-connections", "4"])
            .into_config()
            .expect("four connections");
        assert!(matches!(
            config.store,
            StoreSpec::Redis { connections: 4, .. }
        ));
        for bad in ["0", "33", "many"] {
            let argv = ["gatehouse", "--redis-connections", bad];
            assert!(Cli::parse_ignoring_env(argv).is_err(), "{bad}");
        }
    }

    #[test]
    fn wildcard_bind_needs_a_public_url() {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().to_str().expect("utf-8");
        let errors = args(&["--bind", "0.0.0.0:3000", "--data-dir", data])
            .into_config()
            .expect_err("needs public url");
        assert!(errors[0].contains("--public-url"), "{errors:?}");
        let config = args(&[
            "--bind",
            "0.0.0.0:3000",
            "--data-dir",
            data,
            "--public-url",
            "https://gate.example.com",
        ])
        .into_config()
        .expect("valid");
        assert_eq!(config.public_url.mcp_url(), "https://gate.example.com/mcp");
    }

    #[test]
    fn serve_subcommand_takes_the_same_flags() {
        let cli = Cli::parse_ignoring_env(["gatehouse", "serve", "--bind", "127.0.0.1:4000"])
            .expect("parses");
        match cli.command {
            Some(Command::Serve(serve)) => assert_eq!(serve.bind, "127.0.0.1:4000"),
            other => panic!("expected serve, got {other:?}"),
        }
    }

    #[test]
    fn clear_text_public_urls_need_an_explicit_flag() {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().to_str().expect("utf-8");
        let errors = args(&[
            "--public-url",
            "http://gate.example.com",
            "--data-dir",
            data,
        ])
        .into_config()
        .expect_err("clear text");
        assert!(errors[0].contains("--insecure-http"), "{errors:?}");
        for ok in [
            &["--public-url", "http://gate.example.com", "--insecure-http"][..],
            &["--public-url", "http://localhost:3000"][..],
            &["--public-url", "http://127.0.0.1:3000"][..],
        ] {
            let mut argv = ok.to_vec();
            argv.extend(["--data-dir", data]);
            assert!(args(&argv).into_config().is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn trusted_proxies_are_addresses_or_ranges() {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().to_str().expect("utf-8");
        let config = args(&[
            "--trusted-proxy",
            "10.0.0.0/8,127.0.0.1",
            "--data-dir",
            data,
        ])
        .into_config()
        .expect("valid");
        assert_eq!(config.trusted_proxies.len(), 2);
        let errors = args(&["--trusted-proxy", "10.0.0.0/33", "--data-dir", data])
            .into_config()
            .expect_err("bad range");
        assert!(errors[0].contains("--trusted-proxy"), "{errors:?}");
    }

    #[test]
    fn bad_allowed_origins_and_hosts_stop_start_up() {
        let errors = args(&[
            "--allowed-origin",
            "https://app.example.org/path",
            "--allowed-origin",
            "https://ok.example.org",
            "--allowed-host",
            "a b",
        ])
        .into_config()
        .expect_err("invalid");
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("--allowed-origin"), "{errors:?}");
        assert!(errors[1].starts_with("--allowed-host"), "{errors:?}");
    }

    #[test]
    fn pinned_client_documents_are_read_and_checked_at_start_up() {
        const URL: &str = "https://claude.ai/oauth/claude-code-client-metadata";
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let data = data.to_str().expect("utf-8");
        let document = |client_id: &str| {
            serde_json::json!({"client_id": client_id, "redirect_uris": ["http://localhost/callback"]})
                .to_string()
        };
        std::fs::write(dir.path().join("claude-code.json"), document(URL)).expect("write");
        std::fs::write(
            dir.path().join("other.json"),
            document("https://claude.ai/oauth/mcp-oauth-client-metadata"),
        )
        .expect("write");
        let config_file = |name: &str, file: &str| {
            let path = dir.path().join(name);
            std::fs::write(
                &path,
                format!("[[client_document]]\nurl = \"{URL}\"\nfile = \"{file}\"\n"),
            )
            .expect("write");
            path.to_str().expect("utf-8").to_owned()
        };

        // A relative file is found beside the config file, wherever Gatehouse runs.
        let good = config_file("good.toml", "claude-code.json");
        let config = args(&["--config", &good, "--data-dir", data])
            .into_config()
            .expect("valid");
        let url = url::Url::parse(URL).expect("url");
        let pinned = config.oauth.pinned_documents.get(&url).expect("pinned");
        assert_eq!(pinned.file, dir.path().join("claude-code.json"));

        let mismatch = config_file("mismatch.toml", "other.json");
        let errors = args(&["--config", &mismatch, "--data-dir", data])
            .into_config()
            .expect_err("another client's document");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("[[client_document]]"), "{errors:?}");
        assert!(errors[0].contains("client_id differs"), "{errors:?}");

        let missing = config_file("missing.toml", "nowhere.json");
        let errors = args(&["--config", &missing, "--data-dir", data])
            .into_config()
            .expect_err("no such file");
        assert!(errors[0].contains("nowhere.json"), "{errors:?}");
    }

    /// A stdio server's `cwd` is found as a pinned document's file is (beside the
    /// config file), and one that is not a directory is refused at start-up, not
    /// by every session's process failing to start.
    #[test]
    fn a_stdio_servers_cwd_is_beside_the_config_file_and_must_exist() {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let data = data.to_str().expect("utf-8");
        std::fs::create_dir(dir.path().join("work")).expect("mkdir");
        let config_file = |name: &str, cwd: &str| {
            let path = dir.path().join(name);
            std::fs::write(
                &path,
                format!("[[upstream]]\nname = \"local\"\ncommand = \"true\"\ncwd = \"{cwd}\"\n"),
            )
            .expect("write");
            path.to_str().expect("utf-8").to_owned()
        };
        let good = config_file("good.toml", "work");
        let config = args(&["--config", &good, "--data-dir", data])
            .into_config()
            .expect("valid");
        let crate::gateway::config::Transport::Stdio { cwd, .. } = &config.upstreams[0].transport
        else {
            panic!("a stdio upstream");
        };
        assert_eq!(cwd.as_deref(), Some(dir.path().join("work").as_path()));

        let missing = config_file("missing.toml", "nowhere");
        let errors = args(&["--config", &missing, "--data-dir", data])
            .into_config()
            .expect_err("no such directory");
        assert!(errors.iter().any(|e| e.contains("cwd")), "{errors:?}");
    }

    /// A mistake in the config file is told by line and column, never by quoting
    /// the line or a value in it, which may be a secret.
    #[test]
    fn config_file_mistakes_quote_no_values() {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let data = data.to_str().expect("utf-8");
        for (name, text) in [
            (
                "unknown.toml",
                "[[upstream]]\nname = \"gh\"\nurl = \"https://gh.example/mcp\"\nheader = { Authorization = \"Bearer sk-secret-1\" }\n",
            ),
            (
                "type.toml",
                "[[upstream]]\nname = \"gh\"\nurl = \"https://gh.example/mcp\"\nheaders = \"Bearer sk-secret-1\"\n",
            ),
            (
                "quote.toml",
                "[[upstream]]\nname = \"gh\"\nurl = \"https://gh.example/mcp\"\nheaders = \"Bearer ab\\\"cd-sk-secret-2\"\n",
            ),
            ("syntax.toml", "[[upstream]]\nname = \"gh\nheaders = \"Bearer sk-secret-1\"\n"),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            let errors = args(&["--config", path.to_str().expect("utf-8"), "--data-dir", data])
                .into_config()
                .expect_err("a mistake");
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(!errors[0].contains("sk-secret"), "{errors:?}");
            assert!(errors[0].contains("line "), "{errors:?}");
        }
    }

    #[test]
    fn tests_parse_flags_without_the_environment() {
        // A flag's variable in the environment must not leak into a test's config.
        std::env::set_var("GATEHOUSE_BIND", "127.0.0.1:9");
        let parsed = args(&[]);
        std::env::remove_var("GATEHOUSE_BIND");
        assert_eq!(parsed.bind, "127.0.0.1:3000");
    }
}
