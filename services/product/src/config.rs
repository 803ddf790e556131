//! Settings of the product service, from `PRODUCT_*` environment variables.

use std::time::Duration;

use platform::config::{ConfigError, DatabaseConfig, Env, ServerConfig};

/// Every setting of the product service.
#[derive(Debug, Clone)]
pub struct Config {
    /// `PRODUCT_LISTEN_ADDR` (default `127.0.0.1:8081`) and the other server settings.
    pub server: ServerConfig,
    /// `PRODUCT_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/product`) and pool settings.
    pub database: DatabaseConfig,
    /// `PRODUCT_STAFF_TOKEN` (no default): bearer token for staff endpoints; unset disables them.
    pub staff_token: Option<String>,
    /// `PRODUCT_RESERVATION_TTL_MS` (default 900000 = 15 min): an uncommitted reservation's life.
    pub reservation_ttl: Duration,
    /// `PRODUCT_EXPIRY_SWEEP_INTERVAL_MS` (default 5000): how often expired reservations are released.
    pub expiry_sweep_interval: Duration,
    /// `PRODUCT_SEED_DEMO_CATALOG` (default false): insert the demo products at start if missing.
    pub seed_demo_catalog: bool,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from(&Env::from_process("PRODUCT_"))
    }

    pub fn from(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            server: ServerConfig::from_env(env, "127.0.0.1:8081")?,
            database: DatabaseConfig::from_env(env, "postgres://postgres@127.0.0.1:5432/product")?,
            staff_token: env.optional("STAFF_TOKEN"),
            reservation_ttl: env.millis("RESERVATION_TTL_MS", 15 * 60 * 1000)?,
            expiry_sweep_interval: env.millis("EXPIRY_SWEEP_INTERVAL_MS", 5_000)?,
            seed_demo_catalog: env.flag("SEED_DEMO_CATALOG", false)?,
        })
    }
}
