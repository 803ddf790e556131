//! Typed settings from environment variables.
//!
//! Each service names its variables with its own prefix (`SALES_`, `PRODUCT_`,
//! `DELIVERY_`); a bad value stops start-up with an error naming the variable. Durations
//! are bounded ([`MAX_DURATION`], or a setting's own maximum): a huge value is refused at
//! start-up rather than overflowing the arithmetic of deadlines later.

use std::{collections::HashMap, fmt::Display, net::SocketAddr, str::FromStr, time::Duration};

/// The longest duration any setting takes unless it names its own maximum: 30 days.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 86_400);

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

    /// A duration given in milliseconds (variables end in `_MS`), greater than zero and at
    /// most [`MAX_DURATION`].
    pub fn millis(&self, key: &str, default_ms: u64) -> Result<Duration, ConfigError> {
        self.millis_at_most(key, default_ms, MAX_DURATION)
    }

    /// [`Env::millis`] for a setting with a maximum of its own (at most [`MAX_DURATION`]
    /// makes sense for any).
    pub fn millis_at_most(
        &self,
        key: &str,
        default_ms: u64,
        max: Duration,
    ) -> Result<Duration, ConfigError> {
        let value = Duration::from_millis(self.positive(key, default_ms)?);
        self.bounded(key, value, max)
    }

    /// A duration in milliseconds where 0 means "none" (a pause, a delay), at most
    /// [`MAX_DURATION`].
    pub fn millis_or_zero(&self, key: &str, default_ms: u64) -> Result<Duration, ConfigError> {
        let value = Duration::from_millis(self.parse(key, default_ms)?);
        self.bounded(key, value, MAX_DURATION)
    }

    /// A duration given in seconds (variables end in `_SECS`), greater than zero and at most
    /// [`MAX_DURATION`].
    pub fn secs(&self, key: &str, default_secs: u64) -> Result<Duration, ConfigError> {
        let value = Duration::from_secs(self.positive(key, default_secs)?);
        self.bounded(key, value, MAX_DURATION)
    }

    /// An integer within `min..=max`, with a default (e.g. an SQS setting with a range of
    /// its own).
    pub fn in_range<T>(&self, key: &str, default: T, min: T, max: T) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + Display,
        T::Err: Display,
    {
        let value = self.parse(key, default)?;
        if value < min || value > max {
            return Err(self.error(key, format!("must be from {min} to {max}, got {value}")));
        }
        Ok(value)
    }

    fn bounded(&self, key: &str, value: Duration, max: Duration) -> Result<Duration, ConfigError> {
        if value > max {
            return Err(self.error(
                key,
                format!(
                    "must be at most {} ({}), got {}",
                    in_unit(key, max),
                    human(max),
                    in_unit(key, value)
                ),
            ));
        }
        Ok(value)
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

/// `d` in the unit the variable `key` is given in (`_SECS` or milliseconds).
fn in_unit(key: &str, d: Duration) -> String {
    if key.ends_with("_SECS") {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// `d` in the largest unit it is a whole number of: days, hours, minutes or seconds.
fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() == 0 && secs > 0 {
        for (unit, size) in [("days", 86_400), ("hours", 3_600), ("minutes", 60)] {
            if secs.is_multiple_of(size) {
                return format!("{} {unit}", secs / size);
            }
        }
    }
    format!("{d:?}")
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
    fn durations_beyond_their_bound_are_refused_naming_the_variable() {
        let e = env(&[
            ("SALES_A_MS", "2592000000"),
            ("SALES_B_MS", "2592000001"),
            ("SALES_C_MS", "18446744073709551615"),
            ("SALES_D_SECS", "2592001"),
            ("SALES_E_MS", "0"),
            ("SALES_F_MS", "6001"),
        ]);
        assert_eq!(
            e.millis("A_MS", 1).expect("30 days is allowed"),
            MAX_DURATION
        );
        let err = e.millis("B_MS", 1).expect_err("over 30 days");
        assert_eq!(err.variable, "SALES_B_MS");
        assert_eq!(
            err.to_string(),
            "invalid value for SALES_B_MS: must be at most 2592000000 ms (30 days), got 2592000001 ms"
        );
        let err = e.millis_or_zero("C_MS", 0).expect_err("u64::MAX ms");
        assert_eq!(err.variable, "SALES_C_MS");
        let err = e.secs("D_SECS", 1).expect_err("over 30 days");
        assert_eq!(
            err.to_string(),
            "invalid value for SALES_D_SECS: must be at most 2592000 s (30 days), got 2592001 s"
        );
        assert_eq!(e.millis_or_zero("E_MS", 5).expect("zero"), Duration::ZERO);
        assert!(
            e.millis("E_MS", 5).is_err(),
            "zero is refused where a wait is needed"
        );
        let err = e
            .millis_at_most("F_MS", 1, Duration::from_secs(6))
            .expect_err("a setting's own maximum");
        assert_eq!(
            err.to_string(),
            "invalid value for SALES_F_MS: must be at most 6000 ms (6s), got 6001 ms"
        );
        assert_eq!(
            e.millis("UNSET_MS", 1_000).expect("default"),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn ranges_are_enforced_naming_the_variable() {
        let e = env(&[("SALES_WAIT_SECS", "21"), ("SALES_OK", "20")]);
        let err = e.in_range("WAIT_SECS", 10, 0, 20).expect_err("above");
        assert_eq!(
            err.to_string(),
            "invalid value for SALES_WAIT_SECS: must be from 0 to 20, got 21"
        );
        assert_eq!(e.in_range("OK", 10, 0, 20).expect("within"), 20);
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
