//! Settings of the sales service, from `SALES_*` environment variables.

use std::time::Duration;

use platform::config::{ConfigError, DatabaseConfig, Env, ServerConfig};

/// Every setting of the sales service.
#[derive(Debug, Clone)]
pub struct Config {
    /// `SALES_LISTEN_ADDR` (default `127.0.0.1:8080`) and the other server settings.
    pub server: ServerConfig,
    /// `SALES_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/sales`) and pool settings.
    pub database: DatabaseConfig,
    /// `SALES_STAFF_TOKEN` (no default): bearer token for staff endpoints.
    pub staff_token: Option<String>,
    /// `SALES_PRODUCT_URL` (default `http://127.0.0.1:8081`).
    pub product_url: String,
    /// `SALES_DELIVERY_URL` (default `http://127.0.0.1:8082`).
    pub delivery_url: String,
    /// `SALES_HTTP_CONNECT_TIMEOUT_MS` (default 1000): connecting to product or delivery.
    pub http_connect_timeout: Duration,
    /// `SALES_HTTP_REQUEST_TIMEOUT_MS` (default 3000): a whole call to product or delivery.
    pub http_request_timeout: Duration,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from(&Env::from_process("SALES_"))
    }

    pub fn from(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            server: ServerConfig::from_env(env, "127.0.0.1:8080")?,
            database: DatabaseConfig::from_env(env, "postgres://postgres@127.0.0.1:5432/sales")?,
            staff_token: env.optional("STAFF_TOKEN"),
            product_url: env.http_url("PRODUCT_URL", "http://127.0.0.1:8081")?,
            delivery_url: env.http_url("DELIVERY_URL", "http://127.0.0.1:8082")?,
            http_connect_timeout: env.millis("HTTP_CONNECT_TIMEOUT_MS", 1_000)?,
            http_request_timeout: env.millis("HTTP_REQUEST_TIMEOUT_MS", 3_000)?,
        })
    }
}
