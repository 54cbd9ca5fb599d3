//! Gatehouse: an OAuth 2.1 authorization server and the MCP server it protects.
//!
//! - [`config`]: flags and environment, validated once;
//! - [`oauth`]: the authorization server's rules (no HTTP types);
//! - [`store`]: the storage trait and its backends;
//! - [`http`]: the route table and handlers.

pub mod articles;
pub mod config;
pub mod http;
pub mod mcp;
pub mod migrate;
pub mod oauth;
pub mod outbound;
pub mod store;

use std::sync::Arc;

use config::StoreSpec;
use store::{embedded::EmbeddedStore, redis::RedisStore, SharedStore, StoreError};

/// Opens (or connects to) the store that `spec` names.
pub async fn open_store(spec: &StoreSpec) -> Result<SharedStore, StoreError> {
    match spec {
        StoreSpec::Embedded(path) => Ok(Arc::new(EmbeddedStore::open(path)?)),
        StoreSpec::Redis {
            url,
            prefix,
            connections,
        } => Ok(Arc::new(
            RedisStore::connect(url, prefix, usize::from(*connections)).await?,
        )),
    }
}
