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
    // hold a key that rotates), or a stdio server's command line and directory. Not
    // its credentials or environment, which change as keys rotate.
    let server = match &upstream.transport {
        config::Transport::Http { url, .. } => {
            format!("http {}", &url[..url::Position::AfterPath])
        }
        config::Transport::Stdio {
            command, args, cwd, ..
        } => {
            // As JSON, a path that is not UTF-8 (which JSON cannot hold) written
            // out with its bytes escaped.
            let cwd = cwd.as_ref().map(|cwd| {
                cwd.to_str()
                    .map_or_else(|| format!("{cwd:?}"), str::to_owned)
            });
            format!("stdio {}", serde_json::json!([command, args, cwd]))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What grants of the upstream `short` (edited by `edit`) name as its server.
    fn server_of(short: &str, edit: impl FnOnce(&mut config::RawUpstream)) -> Option<String> {
        let mut raw = config::parse_short(short).expect("short form");
        edit(&mut raw);
        let upstream = raw.validate(&|_| Some("v".into())).expect("valid");
        resource("https://gate.example.com", &upstream)
            .expect("resource")
            .server
            .clone()
    }

    /// A grant names its server by what picks the server (address; program,
    /// arguments and directory), not by what rotates (a key in the query, headers,
    /// the environment), so another server under the same name is told apart and a
    /// new key is not.
    #[test]
    fn a_server_is_named_by_its_address_or_its_command_line_and_directory() {
        let url = |url: &str| server_of(&format!("web={url}"), |_| {});
        assert!(url("https://a.example/mcp").is_some());
        assert_eq!(
            url("https://a.example/mcp?key=1"),
            url("https://a.example/mcp?key=2")
        );
        assert_ne!(url("https://a.example/mcp"), url("https://b.example/mcp"));
        assert_ne!(url("https://a.example/mcp"), url("https://a.example/x"));
        let header = server_of("web=https://a.example/mcp", |raw| {
            raw.headers
                .insert("Authorization".into(), "Bearer 2".into());
        });
        assert_eq!(header, url("https://a.example/mcp"));

        // Directories that exist: a `cwd` is checked at start-up.
        let (a, b) = (
            tempfile::tempdir().expect("temp dir"),
            tempfile::tempdir().expect("temp dir"),
        );
        let (a, b) = (
            a.path().to_str().expect("utf-8"),
            b.path().to_str().expect("utf-8"),
        );
        let stdio = |cwd: Option<&str>, key: &str| {
            server_of("s=stdio:node server.js", |raw| {
                raw.cwd = cwd.map(Into::into);
                raw.env.insert("KEY".into(), key.into());
            })
        };
        assert_ne!(stdio(Some(a), "1"), stdio(Some(b), "1"));
        assert_ne!(stdio(None, "1"), stdio(Some(a), "1"));
        assert_eq!(stdio(Some(a), "1"), stdio(Some(a), "2"));
        assert_ne!(
            server_of("s=stdio:node a.js", |_| {}),
            server_of("s=stdio:node b.js", |_| {})
        );
        assert_ne!(
            server_of("s=stdio:node a.js", |_| {}),
            url("https://a.example/mcp")
        );
    }

    /// A directory whose name is not UTF-8 (Latin-1, say) names its server too; it
    /// panicked at start-up.
    #[test]
    fn a_directory_that_is_not_utf8_names_its_server() {
        use std::os::unix::ffi::OsStrExt;
        let parent = tempfile::tempdir().expect("temp dir");
        let dir = |name: &[u8]| {
            let dir = parent.path().join(std::ffi::OsStr::from_bytes(name));
            std::fs::create_dir(&dir).expect("mkdir");
            dir
        };
        let (latin, other) = (dir(b"caf\xe9"), dir(b"caf\xe8"));
        let server = |cwd: &std::path::Path| {
            server_of("s=stdio:node server.js", |raw| raw.cwd = Some(cwd.into()))
        };
        assert!(server(&latin).is_some());
        assert_ne!(server(&latin), server(&other));
    }
}
