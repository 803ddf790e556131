//! Console sessions and their protections: the session cookie (HttpOnly,
//! SameSite=Strict, `Secure` unless configured off), the session's CSRF token
//! that every form carries, the idle expiry, and the sign-in rate limit.

use std::{num::NonZeroU32, sync::Arc, time::Duration};

use axum::{
    extract::FromRequestParts,
    http::{HeaderMap, header, request::Parts},
};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use super::views::Failure;
use crate::{http::AppState, staff::random_token, store};

/// The session cookie.
pub const COOKIE: &str = "sales_console";
/// The cookie pairing the sign-in form with the browser that loaded it.
pub const LOGIN_COOKIE: &str = "sales_console_login";

/// A signed-in staff member.
#[derive(Debug, Clone)]
pub struct Session {
    pub staff_id: Uuid,
    /// The account's name: what audits record.
    pub name: String,
    /// The token every form of this session carries.
    pub csrf: String,
}

fn digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Equality in time independent of where the values differ.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// A `Set-Cookie` value for the console's paths.
pub fn set_cookie(
    name: &str,
    value: &str,
    path: &str,
    secure: bool,
    max_age: Option<u64>,
) -> String {
    let mut cookie = format!("{name}={value}; Path={path}; HttpOnly; SameSite=Strict");
    if let Some(secs) = max_age {
        cookie.push_str(&format!("; Max-Age={secs}"));
    }
    if secure {
        cookie.push_str("; Secure");
    }
    cookie
}

/// Starts a session for `staff_id`; the cookie's token.
pub async fn create(pool: &PgPool, staff_id: Uuid) -> Result<String, sqlx::Error> {
    let token = random_token(32);
    store::staff::insert_session(pool, &digest(&token), staff_id, &random_token(32)).await?;
    Ok(token)
}

/// What a session cookie is worth.
pub enum Lookup {
    Active(Session),
    /// It was a session, unused for longer than the idle timeout or of a revoked
    /// account (now deleted).
    Expired,
    Unknown,
}

/// The session of `token`, touched (its idle time starts again) if still active.
pub async fn lookup(pool: &PgPool, token: &str, idle: Duration) -> Result<Lookup, sqlx::Error> {
    if let Some(row) = store::staff::touch_session(pool, &digest(token), idle).await? {
        return Ok(Lookup::Active(Session {
            staff_id: row.staff_id,
            name: row.name,
            csrf: row.csrf_token,
        }));
    }
    Ok(
        if store::staff::delete_session(pool, &digest(token)).await? {
            Lookup::Expired
        } else {
            Lookup::Unknown
        },
    )
}

/// Ends the session of `token`.
pub async fn delete(pool: &PgPool, token: &str) -> Result<(), sqlx::Error> {
    store::staff::delete_session(pool, &digest(token)).await?;
    Ok(())
}

/// Pages of a signed-in person; anyone else is sent to the sign-in page (told
/// when their session expired).
impl FromRequestParts<AppState> for Session {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Failure> {
        let Some(token) = cookie(&parts.headers, COOKIE) else {
            return Err(Failure::SignIn { expired: false });
        };
        let found = state
            .db
            .guard(async {
                Ok(lookup(&state.db.pool, token, state.config.console.idle_timeout).await?)
            })
            .await
            .map_err(Failure::from)?;
        match found {
            Lookup::Active(session) => Ok(session),
            Lookup::Expired => Err(Failure::SignIn { expired: true }),
            Lookup::Unknown => Err(Failure::SignIn { expired: false }),
        }
    }
}

impl Session {
    /// Refuses a form without this session's CSRF token (403 page).
    pub fn check_csrf(&self, presented: Option<&String>) -> Result<(), Failure> {
        match presented {
            Some(p) if same(p, &self.csrf) => Ok(()),
            _ => Err(Failure::Csrf),
        }
    }
}

/// Sign-in attempts: so many per minute for each staff name, ten times as many
/// in all (whatever names are tried).
#[derive(Clone)]
pub struct LoginLimiter {
    per_name: Arc<DefaultKeyedRateLimiter<String>>,
    overall: Arc<DefaultDirectRateLimiter>,
}

impl LoginLimiter {
    pub fn new(per_minute: u32) -> Self {
        let per_name = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        let overall = per_name.saturating_mul(NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN));
        Self {
            per_name: Arc::new(RateLimiter::keyed(Quota::per_minute(per_name))),
            overall: Arc::new(RateLimiter::direct(Quota::per_minute(overall))),
        }
    }

    /// Whether one more attempt for `name` may be tried now.
    pub fn allow(&self, name: &str) -> bool {
        self.per_name.check_key(&name.to_ascii_lowercase()).is_ok() && self.overall.check().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn cookies_are_found_by_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; sales_console=tok; sales_console_login=x"),
        );
        assert_eq!(cookie(&headers, COOKIE), Some("tok"));
        assert_eq!(cookie(&headers, LOGIN_COOKIE), Some("x"));
        assert_eq!(cookie(&headers, "b"), None);
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_when_asked() {
        let c = set_cookie(COOKIE, "v", "/console", true, None);
        assert_eq!(
            c,
            "sales_console=v; Path=/console; HttpOnly; SameSite=Strict; Secure"
        );
        assert!(!set_cookie(COOKIE, "v", "/console", false, Some(0)).contains("Secure"));
    }

    #[test]
    fn sign_ins_are_limited_per_name() {
        let limiter = LoginLimiter::new(2);
        assert!(limiter.allow("alice") && limiter.allow("Alice"));
        assert!(!limiter.allow("alice"));
        assert!(limiter.allow("bob"));
    }

    #[test]
    fn csrf_tokens_compare_whole() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
        assert!(!same("abc", ""));
    }
}
