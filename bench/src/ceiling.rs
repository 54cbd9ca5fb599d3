//! `bench ceiling --port N --store SPEC [--prefix P] --hash H`: what this machine
//! allows for a guarded `tools/call`. A bare axum handler that does the least any
//! token-checking server must: hash the bearer token (SHA-256, as Gatehouse does),
//! read that one key from the store (a redb read transaction, or one Redis GET on one
//! pipelined connection, as Gatehouse's defaults), and answer a small JSON-RPC result.
//! No sessions, no scopes, no policy: Gatehouse's rows read as a share of this.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use fred::prelude::*;
use redb::{ReadableDatabase, TableDefinition};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::upstream::ANSWER;

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");

/// About the size of an access token's record in Gatehouse's store.
const RECORD: &[u8] = &[b'r'; 256];

enum Store {
    Embedded(redb::Database),
    Redis(Pool),
}

struct Ceiling {
    store: Store,
    prefix: String,
}

/// The key of the token whose SHA-256 (base64url) is `hash`.
fn key_of(prefix: &str, hash: &str) -> String {
    format!("{prefix}access:{hash}")
}

pub fn hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

/// Opens the store and writes the one record the requests will read.
async fn prepare(spec: &str, prefix: &str, hash: &str) -> Result<Store, String> {
    let key = key_of(prefix, hash);
    if let Some(path) = spec.strip_prefix("embedded:") {
        let db = redb::Database::create(path).map_err(|e| e.to_string())?;
        let txn = db.begin_write().map_err(|e| e.to_string())?;
        {
            let mut kv = txn.open_table(KV).map_err(|e| e.to_string())?;
            kv.insert(key.as_str(), RECORD).map_err(|e| e.to_string())?;
        }
        txn.commit().map_err(|e| e.to_string())?;
        return Ok(Store::Embedded(db));
    }
    let config = Config::from_url(spec).map_err(|e| e.to_string())?;
    let pool = Builder::from_config(config)
        .build_pool(1)
        .map_err(|e| e.to_string())?;
    pool.init().await.map_err(|e| e.to_string())?;
    // It expires by itself; the bench leaves nothing behind in a shared Redis.
    let _: () = pool
        .set(key, RECORD, Some(Expiration::EX(600)), None, false)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Store::Redis(pool))
}

impl Ceiling {
    /// Whether the record of the token hashed to `hash` exists.
    async fn known(&self, hash: &str) -> Result<bool, String> {
        let key = key_of(&self.prefix, hash);
        match &self.store {
            // On the calling task, as Gatehouse reads its embedded store.
            Store::Embedded(db) => {
                let txn = db.begin_read().map_err(|e| e.to_string())?;
                let kv = txn.open_table(KV).map_err(|e| e.to_string())?;
                Ok(kv.get(key.as_str()).map_err(|e| e.to_string())?.is_some())
            }
            Store::Redis(pool) => {
                let value: Option<Bytes> = pool.get(key).await.map_err(|e| e.to_string())?;
                Ok(value.is_some())
            }
        }
    }
}

async fn handle(State(ceiling): State<Arc<Ceiling>>, headers: HeaderMap, body: Bytes) -> Response {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = token else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    match ceiling.known(&hash(token)).await {
        Ok(true) => {}
        Ok(false) => return StatusCode::UNAUTHORIZED.into_response(),
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let Some(id) = request.get("id") else {
        return StatusCode::ACCEPTED.into_response(); // a notification
    };
    // Enough of `initialize` for the load generator's session set-up.
    let session = [("mcp-session-id", "ceiling")];
    let answer = json!({"jsonrpc": "2.0", "id": id, "result": {
        "content": [{"type": "text", "text": ANSWER}], "isError": false}});
    (session, axum::Json(answer)).into_response()
}

pub async fn serve(port: u16, spec: &str, prefix: &str, hash: &str) -> Result<(), String> {
    let ceiling = Arc::new(Ceiling {
        store: prepare(spec, prefix, hash).await?,
        prefix: prefix.to_owned(),
    });
    let app = axum::Router::new()
        .route("/mcp", axum::routing::post(handle))
        .with_state(ceiling);
    crate::serve_local(port, app).await
}
