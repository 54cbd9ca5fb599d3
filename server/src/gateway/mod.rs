//! The gateway: Gatehouse in front of any MCP server, HTTP or stdio, with the same
//! sign-in, consent and per-tool scopes as its own `/mcp`.
//!
//! - [`config`]: upstreams from `--config` and `--upstream`, validated at start-up;
//! - [`policy`]: which scope each request needs, and which tools are hidden;
//! - [`upstream`]: connections (a process or upstream session per client session, a
//!   pool for sessionless requests), the session cap, health;
//! - [`relay`]: the faithful relay between the two legs, on rmcp;
//! - [`direct`]: an HTTP upstream's direct path for tool calls in live sessions,
//!   around rmcp's session machinery;
//! - [`plain`]: the direct path's connections to an `http://` upstream, driven by
//!   the calls that use them;
//! - [`text`]: JSON-RPC messages as text, for the direct path.
//!
//! The HTTP side (the bearer guard, Streamable HTTP) is `crate::http::mcp::gateway`.

pub mod config;
pub mod direct;
pub mod plain;
pub mod policy;
pub mod relay;
pub mod text;
pub mod upstream;

use std::sync::{Arc, Mutex, MutexGuard};

use crate::{oauth::scope::Scope, resource::Resource};

/// A std mutex's guard, even after a panic while it was held: what the gateway
/// keeps under one is consistent between statements, never half-written.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// An upstream as a protected resource: `<public-url>/mcp/NAME`, with the scopes
/// `NAME:read` and `NAME:write`.
pub fn resource(public_url: &str, upstream: &config::Upstream) -> Result<Arc<Resource>, String> {
    let scope = |suffix: &str| {
        Scope::parse(&format!("{}:{suffix}", upstream.name))
            .map_err(|e| format!("upstream {:?}: {e}", upstream.name))
    };
    // The server a grant is for: an HTTP server's URL without its query (which may
    // hold a key that rotates), or a stdio server's command line.
    let server = match &upstream.transport {
        config::Transport::Http { url, .. } => {
            format!("http {}", &url[..url::Position::AfterPath])
        }
        config::Transport::Stdio { command, args, .. } => {
            format!("stdio {}", serde_json::json!([command, args]))
        }
    };
    Ok(Arc::new(
        Resource::new(
            public_url,
            &format!("/mcp/{}", upstream.name),
            upstream.title.clone(),
            (
                scope("read")?,
                format!(
                    "Use the read-only tools, resources and prompts of {}",
                    upstream.title
                ),
            ),
            (
                scope("write")?,
                format!(
                    "Use every tool of {}, including those that change things",
                    upstream.title
                ),
            ),
        )
        .with_server(&server),
    ))
}
