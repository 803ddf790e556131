//! The staff credential: `Authorization: Bearer <token>` compared with the token
//! the service was configured with. Without a configured token, staff endpoints
//! refuse everyone.

use std::sync::Arc;

use axum::{
    extract::{FromRef, FromRequestParts},
    http::{header, request::Parts},
};
use contracts::Problem;
use sha2::{Digest, Sha256};

/// The configured staff token, kept only as a digest.
#[derive(Clone, Default)]
pub struct StaffToken(Option<Arc<[u8; 32]>>);

impl std::fmt::Debug for StaffToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "StaffToken(<set>)"
        } else {
            "StaffToken(<unset>)"
        })
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl StaffToken {
    pub fn new(token: Option<String>) -> Self {
        Self(token.map(|t| Arc::new(digest(&t))))
    }

    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// Compares digests, so the time taken says nothing about the token.
    pub fn verify(&self, presented: &str) -> bool {
        self.0
            .as_deref()
            .is_some_and(|expected| *expected == digest(presented))
    }
}

/// Extractor proving the caller holds the staff credential (else 401).
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
            .map(str::trim);
        match presented {
            Some(p) if token.verify(p) => Ok(Staff),
            _ => Err(Problem::unauthorized()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_configured_token_passes() {
        let token = StaffToken::new(Some("s3cret".into()));
        assert!(token.verify("s3cret"));
        assert!(!token.verify("s3cre"));
        assert!(!StaffToken::new(None).verify(""));
        assert!(!format!("{token:?}").contains("s3cret"));
    }
}
