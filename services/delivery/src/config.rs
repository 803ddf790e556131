//! Settings of the delivery service, from `DELIVERY_*` environment variables.

use platform::config::{ConfigError, DatabaseConfig, Env, ServerConfig};

/// Every setting of the delivery service.
#[derive(Debug, Clone)]
pub struct Config {
    /// `DELIVERY_LISTEN_ADDR` (default `127.0.0.1:8082`) and the other server settings.
    pub server: ServerConfig,
    /// `DELIVERY_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/delivery`) and pool settings.
    pub database: DatabaseConfig,
    /// `DELIVERY_STAFF_TOKEN` (no default): bearer token(s) for courier/ops status
    /// updates, comma-separated.
    pub staff_token: Option<String>,
    /// `DELIVERY_SERVICE_TOKEN` (no default): bearer token(s) of the services allowed to
    /// initiate and cancel deliveries (sales), comma-separated; unset refuses every
    /// caller but staff.
    pub service_token: Option<String>,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from(&Env::from_process("DELIVERY_"))
    }

    pub fn from(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            server: ServerConfig::from_env(env, "127.0.0.1:8082")?,
            database: DatabaseConfig::from_env(env, "postgres://postgres@127.0.0.1:5432/delivery")?,
            staff_token: env.optional("STAFF_TOKEN"),
            service_token: env.optional("SERVICE_TOKEN"),
        })
    }
}
