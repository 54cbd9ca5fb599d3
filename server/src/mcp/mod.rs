//! MCP, protocol side: what a JSON-RPC request asks for ([`call`]), which scope it
//! needs, and the MCP servers Gatehouse runs itself ([`articles`]). The HTTP side (the
//! bearer guard, Streamable HTTP) is `crate::http::mcp`.

pub mod articles;
pub mod call;

pub use call::Call;

/// Which of a resource's two scopes a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// What the guard must check before a request reaches an MCP server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Any valid token for the resource will do (`initialize`, `tools/list`, …).
    Nothing,
    /// The token must hold this scope; without it the answer is `403
    /// insufficient_scope`, so the client can step up.
    Scope(Access),
}

/// How an MCP server's requests map to scopes. Each protected resource provides one;
/// the guard knows nothing about tools.
pub trait CallPolicy: Send + Sync {
    fn needs(&self, call: &Call<'_>) -> Need;
}
