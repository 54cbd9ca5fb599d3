//! Gatehouse: an OAuth 2.1 authorization server and the MCP server it protects.
//!
//! - [`config`]: flags and environment, validated once;
//! - [`resource`]: the protected resources (MCP endpoints) and their scopes;
//! - [`oauth`]: the authorization server's rules (no HTTP types);
//! - [`mcp`]: what MCP requests need, and the built-in article server;
//! - [`store`]: the storage trait and its backends;
//! - [`http`]: the route table and handlers;
//! - [`doctor`]: checks a deployment the way clients reach it.

pub mod articles;
pub mod audit;
pub mod clock;
pub mod config;
pub mod doctor;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod http;
pub mod mcp;
pub mod migrate;
pub mod net;
pub mod oauth;
pub mod outbound;
pub mod places;
pub mod ratelimit;
pub mod resource;
pub mod store;
#[cfg(test)]
mod strategies;
pub mod telemetry;

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
