//! `bench upstream --http PORT | --stdio`: the fast MCP server the gateway rows relay
//! to. It is rmcp's own server with one read-only tool that answers at once, so the
//! rows measure the gateway's work and not the upstream's.

use std::{os::fd::AsFd, sync::Arc};

use rmcp::{
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
        ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
        ToolAnnotations,
    },
    service::RequestContext,
    transport::streamable_http_server::{
        session::local::LocalSessionManager, StreamableHttpServerConfig, StreamableHttpService,
    },
    ErrorData, RoleServer, ServerHandler, ServiceExt,
};

/// The tool's name and its whole answer; the load generator checks for the answer.
pub const TOOL: &str = "ping";
pub const ANSWER: &str = "pong from the bench upstream";

#[derive(Clone, Default)]
struct Fast;

impl ServerHandler for Fast {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("bench-upstream", "1"))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        // Read-only, so a token with only `NAME:read` may call it through Gatehouse.
        let tool = Tool::new(TOOL, "answers at once", Arc::new(serde_json::Map::new()))
            .with_annotations(ToolAnnotations::new().read_only(true));
        Ok(ListToolsResult::with_all_items(vec![tool]))
    }

    async fn call_tool(
        &self,
        _request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        Ok(CallToolResult::success(vec![ContentBlock::text(ANSWER)]).into())
    }
}

/// Streamable HTTP at `http://127.0.0.1:PORT/mcp`, with rmcp's default configuration
/// (sessions, as most servers run it).
pub async fn serve_http(port: u16) -> Result<(), String> {
    let service = StreamableHttpService::new(
        || Ok(Fast),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    );
    crate::serve_local(port, axum::Router::new().nest_service("/mcp", service)).await
}

/// MCP over this process's stdin and stdout, as Gatehouse starts a stdio server (one
/// process per client session). Gatehouse connects both through pipes; tokio's pipe
/// types read them without the blocking thread pool that `tokio::io::stdin` needs.
pub async fn serve_stdio() -> Result<(), String> {
    let duplicate = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned();
    let stdin = duplicate(std::io::stdin().as_fd())
        .and_then(tokio::net::unix::pipe::Receiver::from_owned_fd)
        .map_err(|e| format!("stdin must be a pipe: {e}"))?;
    let stdout = duplicate(std::io::stdout().as_fd())
        .and_then(tokio::net::unix::pipe::Sender::from_owned_fd)
        .map_err(|e| format!("stdout must be a pipe: {e}"))?;
    let running = Fast
        .serve((stdin, stdout))
        .await
        .map_err(|e| e.to_string())?;
    // Gatehouse ends the session by closing stdin (or ending the process group).
    let _ = running.waiting().await;
    Ok(())
}
