//! The staff credential: `Authorization: Bearer <token>` compared with the
//! tokens the service was configured with (`{P}STAFF_TOKEN`, several separated
//! by commas, so a token can be rotated without locking anyone out). Without a
//! configured token, staff endpoints refuse everyone.
//!
//! No credential (or not a bearer one) → 401; a bearer token that is not a
//! staff token, such as a customer's → 403.

use std::sync::Arc;

use axum::{
    extract::{FromRef, FromRequestParts},
    http::{HeaderMap, header, request::Parts},
};
use contracts::Problem;
use sha2::{Digest, Sha256};

/// The configured staff tokens, kept only as digests.
#[derive(Clone, Default)]
pub struct StaffToken(Arc<[[u8; 32]]>);

impl std::fmt::Debug for StaffToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StaffToken(<{} set>)", self.0.len())
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Equality of two digests in time independent of where they differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl StaffToken {
    /// The tokens of a `{P}STAFF_TOKEN` value: comma-separated, blanks ignored.
    pub fn new(tokens: Option<String>) -> Self {
        let digests: Vec<[u8; 32]> = tokens
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(digest)
            .collect();
        Self(digests.into())
    }

    pub fn is_set(&self) -> bool {
        !self.0.is_empty()
    }

    /// Compares digests, each of them, so the time taken says nothing about
    /// the tokens or which one matched.
    pub fn verify(&self, presented: &str) -> bool {
        let presented = digest(presented);
        self.0
            .iter()
            .fold(false, |found, expected| found | same(expected, &presented))
    }
}

/// Who acts, for audit records: `X-Staff-Member` if given (1–100 characters), else `staff`.
pub fn staff_member(headers: &HeaderMap) -> String {
    headers
        .get("x-staff-member")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 100)
        .unwrap_or("staff")
        .to_owned()
}

/// Extractor proving the caller holds a staff credential (else 401 or 403).
#[derive(Debug, Clone, Copy)]
pub struct Staff;

impl<S> FromRequestParts<S> for Staff
where
    StaffToken: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = StaffToken::from_ref(state);
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty());
        match presented {
            None => Err(Problem::unauthorized()),
            Some(p) if token.verify(p) => Ok(Staff),
            Some(_) => Err(Problem::forbidden()),
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderValue, Request};

    use super::*;

    #[test]
    fn only_the_configured_tokens_pass() {
        let token = StaffToken::new(Some("s3cret".into()));
        assert!(token.verify("s3cret"));
        assert!(!token.verify("s3cre"));
        assert!(!StaffToken::new(None).verify(""));
        assert!(!StaffToken::new(Some(" , ".into())).is_set());
        assert!(!format!("{token:?}").contains("s3cret"));
    }

    #[test]
    fn several_tokens_are_comma_separated() {
        let token = StaffToken::new(Some("old-token, new-token".into()));
        assert!(token.verify("old-token") && token.verify("new-token"));
        assert!(!token.verify("old-token, new-token"));
        assert!(!token.verify(""));
    }

    async fn check(authorization: Option<&str>) -> Result<Staff, u16> {
        let mut request = Request::builder().uri("/");
        if let Some(value) = authorization {
            request = request.header(
                header::AUTHORIZATION,
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        let (mut parts, ()) = request.body(()).expect("request").into_parts();
        let state = StaffToken::new(Some("a,b".into()));
        Staff::from_request_parts(&mut parts, &state)
            .await
            .map_err(|p| p.status)
    }

    #[tokio::test]
    async fn missing_credentials_are_401_and_wrong_ones_403() {
        assert!(check(Some("Bearer b")).await.is_ok());
        assert_eq!(check(None).await.expect_err("no credential"), 401);
        assert_eq!(
            check(Some("Basic YTpi")).await.expect_err("not bearer"),
            401
        );
        assert_eq!(check(Some("Bearer ")).await.expect_err("empty"), 401);
        assert_eq!(
            check(Some("Bearer customer-token"))
                .await
                .expect_err("not staff"),
            403
        );
    }

    #[test]
    fn the_staff_member_defaults_to_staff() {
        let mut headers = HeaderMap::new();
        assert_eq!(staff_member(&headers), "staff");
        headers.insert("x-staff-member", HeaderValue::from_static(" alice "));
        assert_eq!(staff_member(&headers), "alice");
    }
}
