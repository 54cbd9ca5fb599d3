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
pub mod oauth;
pub mod outbound;
pub mod store;

use std::sync::Arc;

use config::{Config, StoreSpec};
use store::{embedded::EmbeddedStore, SharedStore, StoreError};

/// Opens the store that `config` names.
pub fn open_store(config: &Config) -> Result<SharedStore, StoreError> {
    open_store_spec(&config.store)
}

pub fn open_store_spec(spec: &StoreSpec) -> Result<SharedStore, StoreError> {
    match spec {
        StoreSpec::Embedded(path) => Ok(Arc::new(EmbeddedStore::open(path)?)),
        StoreSpec::Redis(_) => Err(StoreError::Unavailable(
            "the Redis store is not available in this version yet".into(),
        )),
    }
}
