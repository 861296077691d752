//! Offline operations behind the CLI: provisioning and listing gateways.
//!
//! They open the same SQLite file as the running sink (WAL allows that), so a
//! gateway added while the sink runs can post at once.

use crate::auth;
use crate::config::Config;
use crate::storage::sqlite::SqliteStorage;
use crate::storage::{GatewayStats, Storage, StorageError};

/// Why an admin operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("invalid gateway name: {0}")]
    InvalidName(String),
    #[error("config has no storage.sqlite_path")]
    NoStorage,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

fn open(config: &Config) -> Result<SqliteStorage, AdminError> {
    let path = config
        .storage
        .sqlite_path
        .as_deref()
        .ok_or(AdminError::NoStorage)?;
    Ok(SqliteStorage::open(path, config.storage.busy_timeout)?)
}

/// Registers gateway `name` and returns its new token. The token is not stored
/// (only its hash is): this is the one chance to see it.
pub fn add_gateway(config: &Config, name: &str) -> Result<String, AdminError> {
    auth::check_gateway_name(name).map_err(AdminError::InvalidName)?;
    let storage = open(config)?;
    let token = auth::generate_token();
    storage.add_gateway(name, &auth::hash_token(&token))?;
    Ok(token)
}

/// Every registered gateway with its counters.
pub fn list_gateways(config: &Config) -> Result<Vec<GatewayStats>, AdminError> {
    Ok(open(config)?.gateways()?)
}
