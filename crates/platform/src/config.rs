//! Typed settings from environment variables.
//!
//! Each service names its variables with its own prefix (`SALES_`, `PRODUCT_`,
//! `DELIVERY_`); a bad value stops start-up with an error naming the variable.

use std::{collections::HashMap, fmt::Display, net::SocketAddr, str::FromStr, time::Duration};

/// A variable that is set but cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid value for {variable}: {message}")]
pub struct ConfigError {
    pub variable: String,
    pub message: String,
}

/// Reads prefixed variables from a snapshot of the environment.
#[derive(Debug, Clone)]
pub struct Env {
    prefix: String,
    vars: HashMap<String, String>,
}

impl Env {
    /// Reads from the process environment.
    pub fn from_process(prefix: &str) -> Self {
        Self::from_map(prefix, std::env::vars().collect())
    }

    /// Reads from a given map (tests).
    pub fn from_map(prefix: &str, vars: HashMap<String, String>) -> Self {
        Self {
            prefix: prefix.to_owned(),
            vars,
        }
    }

    /// The full variable name of `key`, e.g. `SALES_LISTEN_ADDR`.
    pub fn name(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key)
    }

    fn error(&self, key: &str, message: impl Display) -> ConfigError {
        ConfigError {
            variable: self.name(key),
            message: message.to_string(),
        }
    }

    /// The raw value, if set and not empty.
    pub fn optional(&self, key: &str) -> Option<String> {
        self.vars
            .get(&self.name(key))
            .filter(|v| !v.trim().is_empty())
            .cloned()
    }

    /// A string with a default.
    pub fn string(&self, key: &str, default: &str) -> String {
        self.optional(key).unwrap_or_else(|| default.to_owned())
    }

    /// Any `FromStr` value with a default.
    pub fn parse<T>(&self, key: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.optional(key) {
            None => Ok(default),
            Some(raw) => raw.trim().parse().map_err(|e| self.error(key, e)),
        }
    }

    /// A positive integer with a default.
    pub fn positive<T>(&self, key: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + Default + Display,
        T::Err: Display,
    {
        let value = self.parse(key, default)?;
        if value <= T::default() {
            return Err(self.error(key, format!("must be greater than 0, got {value}")));
        }
        Ok(value)
    }

    /// A boolean (`true/false/1/0/yes/no`) with a default.
    pub fn flag(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.optional(key).map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) if ["1", "true", "yes", "on"].contains(&v.as_str()) => Ok(true),
            Some(v) if ["0", "false", "no", "off"].contains(&v.as_str()) => Ok(false),
            Some(v) => Err(self.error(key, format!("expected true or false, got {v:?}"))),
        }
    }

    /// A duration given in milliseconds (variables end in `_MS`), greater than zero.
    pub fn millis(&self, key: &str, default_ms: u64) -> Result<Duration, ConfigError> {
        self.positive(key, default_ms).map(Duration::from_millis)
    }

    /// A socket address such as `127.0.0.1:8080`.
    pub fn socket_addr(&self, key: &str, default: &str) -> Result<SocketAddr, ConfigError> {
        let raw = self.string(key, default);
        raw.parse().map_err(|e| {
            self.error(
                key,
                format!("{e} (expected host:port, e.g. 127.0.0.1:8080)"),
            )
        })
    }

    /// An absolute http(s) URL, returned without a trailing slash.
    pub fn http_url(&self, key: &str, default: &str) -> Result<String, ConfigError> {
        let raw = self.string(key, default);
        let url = url::Url::parse(&raw).map_err(|e| self.error(key, e))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(self.error(key, "must be an http:// or https:// URL"));
        }
        Ok(raw.trim_end_matches('/').to_owned())
    }

    /// A `postgres://` URL.
    pub fn postgres_url(&self, key: &str, default: &str) -> Result<String, ConfigError> {
        let raw = self.string(key, default);
        let url = url::Url::parse(&raw).map_err(|e| self.error(key, e))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(self.error(key, "must be a postgres:// URL"));
        }
        if url.path().trim_start_matches('/').is_empty() {
            return Err(self.error(key, "must name a database, e.g. postgres://host/sales"));
        }
        Ok(raw)
    }
}

/// Settings of the HTTP server, common to every service.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `{P}LISTEN_ADDR`: where to listen. Port 0 picks a free port.
    pub listen_addr: SocketAddr,
    /// `{P}REQUEST_TIMEOUT_MS` (default 10000): longest a request may take.
    pub request_timeout: Duration,
    /// `{P}BODY_LIMIT_BYTES` (default 65536): largest accepted request body.
    pub body_limit_bytes: usize,
    /// `{P}SHUTDOWN_GRACE_MS` (default 10000): how long in-flight work may finish after a signal.
    pub shutdown_grace: Duration,
}

impl ServerConfig {
    pub fn from_env(env: &Env, default_listen: &str) -> Result<Self, ConfigError> {
        Ok(Self {
            listen_addr: env.socket_addr("LISTEN_ADDR", default_listen)?,
            request_timeout: env.millis("REQUEST_TIMEOUT_MS", 10_000)?,
            body_limit_bytes: env.positive("BODY_LIMIT_BYTES", 64 * 1024)?,
            shutdown_grace: env.millis("SHUTDOWN_GRACE_MS", 10_000)?,
        })
    }
}

/// Settings of the database pool, common to every service.
#[derive(Clone)]
pub struct DatabaseConfig {
    /// `{P}DATABASE_URL`: the service's own database.
    pub url: String,
    /// `{P}DATABASE_MAX_CONNECTIONS` (default 10).
    pub max_connections: u32,
    /// `{P}DATABASE_ACQUIRE_TIMEOUT_MS` (default 3000): wait for a connection before answering 503.
    pub acquire_timeout: Duration,
    /// `{P}DATABASE_CONNECT_TIMEOUT_MS` (default 30000): how long start-up waits for the database.
    pub startup_timeout: Duration,
    /// `{P}DATABASE_CREATE` (default true): create the database at start if it is missing.
    pub create_if_missing: bool,
}

impl std::fmt::Debug for DatabaseConfig {
    // The URL may hold a password: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &"<redacted>")
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("startup_timeout", &self.startup_timeout)
            .field("create_if_missing", &self.create_if_missing)
            .finish()
    }
}

impl DatabaseConfig {
    pub fn from_env(env: &Env, default_url: &str) -> Result<Self, ConfigError> {
        Ok(Self {
            url: env.postgres_url("DATABASE_URL", default_url)?,
            max_connections: env.positive("DATABASE_MAX_CONNECTIONS", 10)?,
            acquire_timeout: env.millis("DATABASE_ACQUIRE_TIMEOUT_MS", 3_000)?,
            startup_timeout: env.millis("DATABASE_CONNECT_TIMEOUT_MS", 30_000)?,
            create_if_missing: env.flag("DATABASE_CREATE", true)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_map(
            "SALES_",
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn defaults_apply_when_unset_or_empty() {
        let e = env(&[("SALES_REQUEST_TIMEOUT_MS", "")]);
        let server = ServerConfig::from_env(&e, "127.0.0.1:8080").expect("defaults are valid");
        assert_eq!(server.request_timeout, Duration::from_secs(10));
        assert_eq!(server.listen_addr.port(), 8080);
    }

    #[test]
    fn errors_name_the_variable() {
        let e = env(&[("SALES_REQUEST_TIMEOUT_MS", "soon")]);
        let err = ServerConfig::from_env(&e, "127.0.0.1:8080").expect_err("bad value");
        assert_eq!(err.variable, "SALES_REQUEST_TIMEOUT_MS");
        let e = env(&[("SALES_DATABASE_MAX_CONNECTIONS", "0")]);
        let err = DatabaseConfig::from_env(&e, "postgres://h/sales").expect_err("zero");
        assert_eq!(err.variable, "SALES_DATABASE_MAX_CONNECTIONS");
        let e = env(&[("SALES_PRODUCT_URL", "ftp://x")]);
        let err = e.http_url("PRODUCT_URL", "http://a").expect_err("scheme");
        assert!(err.to_string().contains("SALES_PRODUCT_URL"), "{err}");
    }

    #[test]
    fn database_url_must_name_a_database_and_is_never_printed() {
        let e = env(&[("SALES_DATABASE_URL", "postgres://u:secret@h:5432")]);
        assert!(DatabaseConfig::from_env(&e, "postgres://h/sales").is_err());
        let e = env(&[("SALES_DATABASE_URL", "postgres://u:secret@h:5432/sales")]);
        let cfg = DatabaseConfig::from_env(&e, "postgres://h/sales").expect("valid");
        assert!(!format!("{cfg:?}").contains("secret"));
    }

    #[test]
    fn flags_accept_common_spellings() {
        let e = env(&[("SALES_A", "yes"), ("SALES_B", "0"), ("SALES_C", "maybe")]);
        assert!(e.flag("A", false).expect("yes"));
        assert!(!e.flag("B", true).expect("0"));
        assert!(e.flag("C", true).is_err());
    }
}
