//! The built-in MCP server behind `/mcp`: article tools and `article://{slug}`
//! resources, on the official Rust SDK (`rmcp`), which also speaks the Streamable HTTP
//! transport for every protocol revision. The bearer guard in `http::mcp` has already
//! checked the token and the scope a request needs ([`ArticlePolicy`]); the handlers
//! here check the scope again from the token the guard attached, so a routing mistake
//! or a body the guard read differently cannot open a write path.

use std::{
    borrow::Cow,
    sync::{Arc, Mutex},
};

use rmcp::{
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
        InitializeRequestParams, InitializeResult, ListResourceTemplatesResult,
        ListResourcesResult, ListToolsResult, PaginatedRequestParams, ReadResourceRequestParams,
        ReadResourceResponse, ReadResourceResult, Resource, ResourceContents, ResourceTemplate,
        ServerCapabilities, ServerConfig, Tool, ToolAnnotations,
    },
    service::RequestContext,
    ErrorData, RoleServer, ServerHandler,
};
use serde::Deserialize;
use serde_json::{json, value::RawValue, Map, Value};

use super::{Access, Call, CallPolicy, Need};
use crate::{
    articles::{Article, ArticleError, Articles, Slug, Status, MAX_PAGE},
    oauth::{
        client::ClientId,
        records::AccessToken,
        scope::{Scope, ScopeSet},
    },
    places::{Place, Places},
    resource,
    store::Key,
};

/// The path of the built-in article server.
pub const PATH: &str = "/mcp";

/// The article server as a protected resource: `<public-url>/mcp` with
/// `read:articles` and `write:articles`.
pub fn resource(public_url: &str) -> resource::Resource {
    let scope = |s: &str| Scope::parse(s).unwrap_or_else(|e| unreachable!("{s}: {e}"));
    resource::Resource::new(
        public_url,
        PATH,
        "Articles",
        (
            scope("read:articles"),
            "Read your articles, drafts included".into(),
        ),
        (
            scope("write:articles"),
            "Create, edit, publish and delete your articles".into(),
        ),
    )
}

/// What each tool needs. `tools/list` shows them all, so clients know what a step-up
/// would unlock.
pub fn tool_access(tool: &str) -> Option<Access> {
    match tool {
        "list_articles" | "get_article" | "search_articles" => Some(Access::Read),
        "create_article" | "update_article" | "publish_article" | "delete_article" => {
            Some(Access::Write)
        }
        _ => None,
    }
}

/// The article server's scopes per request: tools by [`tool_access`], resources need
/// reading, everything else only a valid token. Unknown tools need nothing here: the
/// server answers them with an error.
pub struct ArticlePolicy;

impl CallPolicy for ArticlePolicy {
    fn needs(&self, call: &Call<'_>) -> Need {
        match call.method() {
            "tools/call" => call
                .name()
                .and_then(tool_access)
                .map_or(Need::Nothing, Need::Scope),
            "resources/read" | "resources/list" | "resources/templates/list" => {
                Need::Scope(Access::Read)
            }
            _ => Need::Nothing,
        }
    }
}

/// A record read ahead of a tool call, with the key it was read under.
pub struct Prefetched {
    pub key: Key,
    pub value: Option<Vec<u8>>,
}

/// Sessions one client may hold live on one instance, unless
/// `--max-sessions-per-client` says otherwise. A session idles out after five
/// minutes (rmcp's keep-alive), but a client that opens one every two seconds (the
/// default `--sessions-per-minute`) and keeps touching them all, or restores its
/// stored ones, would otherwise hold thousands, each with its tasks and streams.
pub const MAX_SESSIONS_PER_CLIENT: usize = 128;

#[derive(Clone)]
pub struct ArticleServer {
    articles: Articles,
    tools: Arc<Vec<Tool>>,
    resource: Arc<resource::Resource>,
    /// Sessions each client holds live here, and how many it may.
    sessions: Places<ClientId>,
    max_sessions: usize,
    /// This session's place, taken at `initialize` (each session's handler is its own
    /// copy, [`ArticleServer::for_session`]) and given back when rmcp drops it.
    place: Arc<Mutex<Option<Place<ClientId>>>>,
}

fn schema(value: Value) -> Arc<Map<String, Value>> {
    match value {
        Value::Object(map) => Arc::new(map),
        _ => Arc::new(Map::new()),
    }
}

fn summary_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "slug": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "string", "enum": ["draft", "published"]},
            "updated_at": {"type": "integer", "description": "seconds since the Unix epoch"}
        },
        "required": ["slug", "title", "status", "updated_at"]
    })
}

/// A written article as the write tools return it: the body only to tokens that may
/// also read (a write-only token must not read drafts through `update_article`).
fn written_schema() -> Value {
    let mut schema = article_schema();
    schema["required"] = json!(["slug", "title", "status", "created_at", "updated_at"]);
    schema["properties"]["body"]["description"] =
        json!("Markdown; present only when the token also holds the read scope");
    schema
}

fn article_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "slug": {"type": "string"},
            "title": {"type": "string"},
            "body": {"type": "string", "description": "Markdown"},
            "status": {"type": "string", "enum": ["draft", "published"]},
            "created_at": {"type": "integer"},
            "updated_at": {"type": "integer"},
            "published_at": {"type": "integer"},
            "revision": {"type": "integer", "description": "How many times the article changed"}
        },
        "required": ["slug", "title", "body", "status", "created_at", "updated_at"]
    })
}

fn slug_property() -> Value {
    json!({"type": "string", "pattern": "^[a-z0-9]+(-[a-z0-9]+)*$", "maxLength": 80,
           "description": "The article's slug, e.g. hello-world"})
}

fn tool(
    name: &'static str,
    description: &'static str,
    input: Value,
    output: Value,
    hints: (bool, bool, bool),
) -> Tool {
    let (read_only, destructive, idempotent) = hints;
    Tool::new(name, description, schema(input))
        .with_raw_output_schema(schema(output))
        .with_annotations(
            ToolAnnotations::new()
                .read_only(read_only)
                .destructive(destructive)
                .idempotent(idempotent)
                .open_world(false),
        )
}

fn tools() -> Vec<Tool> {
    vec![
        tool(
            "list_articles",
            "List the blog's articles, newest first. Needs read:articles.",
            json!({"type": "object", "properties": {
                "status": {"type": "string", "enum": ["draft", "published"], "description": "Only articles with this status"},
                "limit": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 20},
                "cursor": {"type": "string", "description": "next_cursor from the previous page"}
            }, "additionalProperties": false}),
            json!({"type": "object", "properties": {
                "articles": {"type": "array", "items": summary_schema()},
                "next_cursor": {"type": "string"}
            }, "required": ["articles"]}),
            (true, false, true),
        ),
        tool(
            "get_article",
            "Read one article, with its body. Needs read:articles.",
            json!({"type": "object", "properties": {"slug": slug_property()}, "required": ["slug"], "additionalProperties": false}),
            article_schema(),
            (true, false, true),
        ),
        tool(
            "search_articles",
            "Find articles whose title or body contains the query (case-insensitive). Needs read:articles.",
            json!({"type": "object", "properties": {
                "query": {"type": "string", "minLength": 1},
                "limit": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 20}
            }, "required": ["query"], "additionalProperties": false}),
            json!({"type": "object", "properties": {"articles": {"type": "array", "items": summary_schema()}}, "required": ["articles"]}),
            (true, false, true),
        ),
        tool(
            "create_article",
            "Create a draft article. The slug defaults to one made from the title. Needs write:articles.",
            json!({"type": "object", "properties": {
                "title": {"type": "string", "minLength": 1, "maxLength": 200},
                "body": {"type": "string", "description": "Markdown"},
                "slug": slug_property()
            }, "required": ["title", "body"], "additionalProperties": false}),
            written_schema(),
            (false, false, false),
        ),
        tool(
            "update_article",
            "Replace an article's title, body, or both. Give the revision you read to change only that version: if the article changed since, nothing is written and you are told. Needs write:articles.",
            json!({"type": "object", "properties": {
                "slug": slug_property(),
                "title": {"type": "string", "minLength": 1, "maxLength": 200},
                "body": {"type": "string"},
                "revision": {"type": "integer", "minimum": 0, "description": "The article's revision as read; the update applies only if it is still that"}
            }, "required": ["slug"], "additionalProperties": false}),
            written_schema(),
            (false, true, true),
        ),
        tool(
            "publish_article",
            "Publish a draft article (publishing a published one changes nothing). Needs write:articles.",
            json!({"type": "object", "properties": {"slug": slug_property()}, "required": ["slug"], "additionalProperties": false}),
            written_schema(),
            (false, false, true),
        ),
        tool(
            "delete_article",
            "Delete an article for good. Needs write:articles.",
            json!({"type": "object", "properties": {"slug": slug_property()}, "required": ["slug"], "additionalProperties": false}),
            json!({"type": "object", "properties": {"deleted": {"type": "string"}}, "required": ["deleted"]}),
            (false, true, true),
        ),
    ]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListArgs {
    status: Option<Status>,
    limit: Option<usize>,
    cursor: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SlugArgs {
    slug: Slug,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchArgs {
    query: String,
    limit: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateArgs {
    title: String,
    body: String,
    slug: Option<Slug>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateArgs {
    slug: Slug,
    title: Option<String>,
    body: Option<String>,
    revision: Option<u64>,
}

/// A tool failure the model can read and act on (MCP: tool errors are results with
/// `isError`, not protocol errors).
fn tool_error(message: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message.into())])
}

fn parse<T: serde::de::DeserializeOwned>(
    arguments: Option<Map<String, Value>>,
) -> Result<T, CallToolResult> {
    serde_json::from_value(Value::Object(arguments.unwrap_or_default()))
        .map_err(|e| tool_error(format!("invalid arguments: {e}")))
}

/// A tool's result. A structured one stays the JSON text it was written as until
/// rmcp needs it as a `CallToolResult`: the direct path (`http::mcp::articles`)
/// writes that text into its answer as it is, where building a `serde_json::Value`
/// of it, writing that out as the text content and then again as the structured
/// content was about a tenth of the server's time per call.
pub enum Outcome {
    /// A successful structured result: its JSON text is also its text content.
    Structured(Box<RawValue>),
    Result(CallToolResult),
}

impl Outcome {
    pub fn into_result(self) -> CallToolResult {
        match self {
            Outcome::Result(result) => result,
            Outcome::Structured(raw) => match serde_json::from_str::<Value>(raw.get()) {
                Ok(value) => {
                    let mut result = CallToolResult::structured(value);
                    // The same text as the direct path sends (members in the order
                    // written, not sorted as a `Value` writes them).
                    result.content = vec![ContentBlock::text(raw.get())];
                    result
                }
                Err(e) => tool_error(format!("cannot encode the result: {e}")),
            },
        }
    }
}

impl From<CallToolResult> for Outcome {
    fn from(result: CallToolResult) -> Self {
        Outcome::Result(result)
    }
}

fn structured(value: impl serde::Serialize) -> Outcome {
    match serde_json::value::to_raw_value(&value) {
        Ok(raw) => Outcome::Structured(raw),
        Err(e) => tool_error(format!("cannot encode the result: {e}")).into(),
    }
}

/// The token the guard attached to this request.
fn token(context: &RequestContext<RoleServer>) -> Option<&AccessToken> {
    context
        .extensions
        .get::<axum::http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<AccessToken>())
}

/// The scopes of that token (none without one).
fn granted(context: &RequestContext<RoleServer>) -> ScopeSet {
    token(context)
        .map(|token| token.scopes.clone())
        .unwrap_or_default()
}

impl ArticleServer {
    pub fn new(articles: Articles, resource: Arc<resource::Resource>) -> Self {
        ArticleServer {
            articles,
            tools: Arc::new(tools()),
            resource,
            sessions: Places::default(),
            max_sessions: MAX_SESSIONS_PER_CLIENT,
            place: Arc::default(),
        }
    }

    pub fn with_max_sessions_per_client(self, max_sessions: usize) -> Self {
        ArticleServer {
            max_sessions,
            ..self
        }
    }

    /// A copy for one new session, with a place of its own.
    pub fn for_session(&self) -> Self {
        ArticleServer {
            place: Arc::default(),
            ..self.clone()
        }
    }

    /// Why a client may not open another session.
    pub fn too_many_sessions(&self) -> String {
        format!(
            "this client has {} MCP sessions open here, its maximum; \
             end one (DELETE) or let one close when idle (five minutes)",
            self.max_sessions
        )
    }

    /// Whether `client` may open (or restore) one more session here.
    pub fn has_room_for(&self, client: &ClientId) -> bool {
        self.sessions.held(client) < self.max_sessions
    }

    fn scope(&self, access: Access) -> &Scope {
        match access {
            Access::Read => &self.resource.read,
            Access::Write => &self.resource.write,
        }
    }

    /// The one record a call starts by reading, for the calls that only read one
    /// (`get_article`), so the guard can read it together with the caller's token.
    pub fn first_read(request: &CallToolRequestParams) -> Option<Key> {
        if request.name != "get_article" {
            return None;
        }
        let slug = request.arguments.as_ref()?.get("slug")?.as_str()?;
        Slug::parse(slug).ok().map(|slug| Articles::key_of(&slug))
    }

    /// `tools/call` for a token with the `granted` scopes. rmcp's dispatch and the
    /// direct JSON path for established sessions (`http::mcp`) both end here;
    /// `prefetched` is the record [`ArticleServer::first_read`] named, when the caller
    /// has already read it.
    pub async fn call(
        &self,
        request: CallToolRequestParams,
        granted: &ScopeSet,
        prefetched: Option<Prefetched>,
    ) -> Result<Outcome, ErrorData> {
        let Some(access) = tool_access(&request.name) else {
            return Err(ErrorData::invalid_params(
                format!("unknown tool {:?}", request.name),
                None,
            ));
        };
        let needed = self.scope(access);
        if !granted.contains(needed) {
            return Ok(tool_error(format!("this token lacks the {needed} scope")).into());
        }
        let can_read = granted.contains(self.scope(Access::Read));
        self.run(&request.name, request.arguments, prefetched, can_read)
            .await
    }

    async fn run(
        &self,
        name: &str,
        arguments: Option<Map<String, Value>>,
        prefetched: Option<Prefetched>,
        can_read: bool,
    ) -> Result<Outcome, ErrorData> {
        let written = |article: Article| {
            if can_read {
                structured(article)
            } else {
                let mut value = serde_json::to_value(article).unwrap_or_default();
                if let Some(map) = value.as_object_mut() {
                    map.remove("body");
                }
                structured(value)
            }
        };
        let outcome = match name {
            "list_articles" => match parse::<ListArgs>(arguments) {
                Ok(a) => self
                    .articles
                    .list(a.status, a.limit.unwrap_or(20), a.cursor.as_deref())
                    .await
                    .map(structured),
                Err(e) => return Ok(e.into()),
            },
            "get_article" => match parse::<SlugArgs>(arguments) {
                Ok(a) => match prefetched.filter(|p| Articles::key_of(&a.slug) == p.key) {
                    Some(read) => Articles::decode(&a.slug, read.value).map(structured),
                    None => self.articles.get(&a.slug).await.map(structured),
                },
                Err(e) => return Ok(e.into()),
            },
            "search_articles" => match parse::<SearchArgs>(arguments) {
                Ok(a) => self
                    .articles
                    .search(&a.query, a.limit.unwrap_or(20))
                    .await
                    .map(|articles| structured(json!({ "articles": articles }))),
                Err(e) => return Ok(e.into()),
            },
            "create_article" => match parse::<CreateArgs>(arguments) {
                Ok(a) => self
                    .articles
                    .create(a.slug, &a.title, &a.body)
                    .await
                    .map(written),
                Err(e) => return Ok(e.into()),
            },
            "update_article" => match parse::<UpdateArgs>(arguments) {
                Ok(a) => self
                    .articles
                    .update(&a.slug, a.title.as_deref(), a.body.as_deref(), a.revision)
                    .await
                    .map(written),
                Err(e) => return Ok(e.into()),
            },
            "publish_article" => match parse::<SlugArgs>(arguments) {
                Ok(a) => self.articles.publish(&a.slug).await.map(written),
                Err(e) => return Ok(e.into()),
            },
            "delete_article" => match parse::<SlugArgs>(arguments) {
                Ok(a) => self
                    .articles
                    .delete(&a.slug)
                    .await
                    .map(|()| structured(json!({ "deleted": a.slug.as_str() }))),
                Err(e) => return Ok(e.into()),
            },
            other => {
                return Err(ErrorData::invalid_params(
                    format!("unknown tool {other:?}"),
                    None,
                ))
            }
        };
        match outcome {
            Ok(result) => Ok(result),
            Err(ArticleError::Store(e)) => {
                tracing::error!(error = %e, "store failure in a tool");
                Err(ErrorData::internal_error(e.for_caller(), None))
            }
            Err(e) => Ok(tool_error(e.to_string()).into()),
        }
    }
}

impl ServerHandler for ArticleServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .build(),
        )
        .with_server_info(
            Implementation::new("gatehouse", env!("CARGO_PKG_VERSION")).with_title("Gatehouse"),
        )
        .with_instructions(
            "Tools for the owner's blog. Reading needs the read:articles scope; \
                 creating, editing, publishing and deleting need write:articles.",
        )
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        // The endpoint refuses past the maximum before rmcp is asked; this settles
        // two sessions racing for the last place.
        if let Some(client) = token(&context).map(|t| &t.client_id) {
            let place = self
                .sessions
                .take(client, self.max_sessions)
                .ok_or_else(|| ErrorData::invalid_request(self.too_many_sessions(), None))?;
            *self.place.lock().unwrap_or_else(|e| e.into_inner()) = Some(place);
        }
        context.peer.set_peer_info(request.clone());
        self.negotiate_initialize(&request)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.tools.as_ref().clone()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        self.call(request, &granted(&context), None)
            .await
            .map(|outcome| outcome.into_result().into())
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let read = self.scope(Access::Read);
        if !granted(&context).contains(read) {
            return Err(ErrorData::invalid_request(
                format!("this token lacks the {read} scope"),
                None,
            ));
        }
        let cursor = request.and_then(|r| r.cursor);
        let page = match self.articles.list(None, MAX_PAGE, cursor.as_deref()).await {
            Ok(page) => page,
            // The store's detail goes to the log, never to the caller.
            Err(ArticleError::Store(e)) => {
                tracing::error!(error = %e, "store failure listing resources");
                return Err(ErrorData::internal_error(e.for_caller(), None));
            }
            Err(e) => return Err(ErrorData::invalid_params(e.to_string(), None)),
        };
        let resources = page
            .articles
            .into_iter()
            .map(|a| {
                Resource::new(format!("article://{}", a.slug), a.slug.to_string())
                    .with_title(a.title)
                    .with_mime_type("text/markdown")
            })
            .collect();
        let mut result = ListResourcesResult::with_all_items(resources);
        result.next_cursor = page.next_cursor;
        Ok(result)
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new("article://{slug}", "article")
                .with_title("A blog article")
                .with_description("An article's Markdown, by slug")
                .with_mime_type("text/markdown"),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let read = self.scope(Access::Read);
        if !granted(&context).contains(read) {
            return Err(ErrorData::invalid_request(
                format!("this token lacks the {read} scope"),
                None,
            ));
        }
        let Some(slug) = request.uri.strip_prefix("article://") else {
            return Err(ErrorData::resource_not_found(
                Cow::Owned(format!(
                    "no resource {:?}; articles are article://{{slug}}",
                    request.uri
                )),
                None,
            ));
        };
        let slug =
            Slug::parse(slug).map_err(|e| ErrorData::resource_not_found(e.to_string(), None))?;
        match self.articles.get(&slug).await {
            Ok(article) => Ok(ReadResourceResult::new(vec![ResourceContents::text(
                format!("# {}\n\n{}", article.title, article.body),
                request.uri.clone(),
            )
            .with_mime_type("text/markdown")])
            .into()),
            Err(ArticleError::Store(e)) => {
                tracing::error!(error = %e, "store failure reading a resource");
                Err(ErrorData::internal_error(e.for_caller(), None))
            }
            Err(e) => Err(ErrorData::resource_not_found(e.to_string(), None)),
        }
    }
}
