//! The credentials: `Authorization: Bearer <token>` compared with the tokens the
//! service was configured with, several separated by commas, so a token can be
//! rotated without locking anyone out:
//!
//! - staff (`{P}STAFF_TOKEN`): people's endpoints, [`Staff`];
//! - services (`{P}SERVICE_TOKEN` at product and delivery): the internal endpoints
//!   that change an order's stock or delivery, which only sales calls, [`Internal`]
//!   (a staff token passes too, for operators).
//!
//! A service that knows its staff one by one (sales) verifies the person itself,
//! in a layer before its handlers, and records who it is as a [`StaffMember`]
//! request extension and in the `X-Staff-Member` header (any such header a
//! client sent is removed first); [`Staff`] then passes and [`staff_member`]
//! names that person.
//!
//! Without a configured token, the endpoints it guards refuse everyone. No
//! credential (or not a bearer one) → 401 with `WWW-Authenticate: Bearer`; a
//! bearer token that is not one of them, such as a customer's → 403.

use std::sync::Arc;

use axum::{
    extract::{FromRef, FromRequestParts},
    http::{HeaderMap, header, request::Parts},
};
use contracts::Problem;
use sha2::{Digest, Sha256};

/// A set of accepted tokens, kept only as digests.
#[derive(Clone, Default)]
struct Digests(Arc<[[u8; 32]]>);

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Equality of two digests in time independent of where they differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Digests {
    /// The tokens of a `{P}…_TOKEN` value: comma-separated, blanks ignored.
    fn new(tokens: Option<&str>) -> Self {
        let digests: Vec<[u8; 32]> = tokens
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(digest)
            .collect();
        Self(digests.into())
    }

    /// Compares digests, each of them, so the time taken says nothing about
    /// the tokens or which one matched.
    fn verify(&self, presented: &str) -> bool {
        let presented = digest(presented);
        self.0
            .iter()
            .fold(false, |found, expected| found | same(expected, &presented))
    }
}

macro_rules! token_set {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Default)]
        pub struct $name(Digests);

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}(<{} set>)", stringify!($name), self.0.0.len())
            }
        }

        impl $name {
            /// The tokens of the variable's value: comma-separated, blanks ignored.
            pub fn new(tokens: Option<String>) -> Self {
                Self(Digests::new(tokens.as_deref()))
            }

            pub fn is_set(&self) -> bool {
                !self.0.0.is_empty()
            }

            /// Whether `presented` is one of the tokens (in constant time).
            pub fn verify(&self, presented: &str) -> bool {
                self.0.verify(presented)
            }
        }
    };
}

token_set!(
    /// The configured staff tokens (`{P}STAFF_TOKEN`), kept only as digests.
    StaffToken
);
token_set!(
    /// The configured service tokens (`{P}SERVICE_TOKEN`), kept only as digests.
    ServiceToken
);

/// The bearer token of a request, if it presents one.
fn bearer(parts: &Parts) -> Option<&str> {
    bearer_token(&parts.headers)
}

/// The bearer token of `Authorization`, if the request presents one.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The header a service's authentication layer writes the authenticated person's
/// name into (after removing any the client sent).
pub const STAFF_MEMBER_HEADER: &str = "x-staff-member";

/// The staff member a service's authentication layer verified (a request extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaffMember {
    pub name: String,
}

/// Who acts, for audit records: the name the service's authentication layer wrote
/// into `X-Staff-Member` (1–100 characters), else `staff`.
pub fn staff_member(headers: &HeaderMap) -> String {
    headers
        .get(STAFF_MEMBER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 100)
        .unwrap_or("staff")
        .to_owned()
}

/// Extractor proving the caller holds a staff credential (else 401 or 403): a
/// person the service's authentication layer verified, or a configured token.
#[derive(Debug, Clone, Copy)]
pub struct Staff;

impl<S> FromRequestParts<S> for Staff
where
    StaffToken: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if parts.extensions.get::<StaffMember>().is_some() {
            return Ok(Staff);
        }
        match bearer(parts) {
            None => Err(Problem::unauthorized()),
            Some(p) if StaffToken::from_ref(state).verify(p) => Ok(Staff),
            Some(_) => Err(Problem::forbidden()),
        }
    }
}

/// Extractor proving the caller holds a service credential, or a staff one
/// (else 401 or 403): the internal endpoints sales calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Internal {
    Service,
    Staff,
}

impl<S> FromRequestParts<S> for Internal
where
    ServiceToken: FromRef<S>,
    StaffToken: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Some(presented) = bearer(parts) else {
            return Err(Problem::service_unauthorized());
        };
        // Both are compared, whichever matches, so the time taken says nothing.
        let service = ServiceToken::from_ref(state).verify(presented);
        let staff = StaffToken::from_ref(state).verify(presented);
        match (service, staff) {
            (true, _) => Ok(Self::Service),
            (false, true) => Ok(Self::Staff),
            (false, false) => Err(Problem::service_forbidden()),
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

    #[derive(Clone)]
    struct Both {
        staff: StaffToken,
        service: ServiceToken,
    }

    impl FromRef<Both> for StaffToken {
        fn from_ref(s: &Both) -> Self {
            s.staff.clone()
        }
    }

    impl FromRef<Both> for ServiceToken {
        fn from_ref(s: &Both) -> Self {
            s.service.clone()
        }
    }

    async fn internal(authorization: Option<&str>, service: Option<&str>) -> Result<Internal, u16> {
        let mut request = Request::builder().uri("/");
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        let (mut parts, ()) = request.body(()).expect("request").into_parts();
        let state = Both {
            staff: StaffToken::new(Some("staff".into())),
            service: ServiceToken::new(service.map(str::to_owned)),
        };
        Internal::from_request_parts(&mut parts, &state)
            .await
            .map_err(|p| p.status)
    }

    #[tokio::test]
    async fn internal_endpoints_take_a_service_or_staff_token() {
        let tokens = Some("old-svc,new-svc");
        assert_eq!(
            internal(Some("Bearer new-svc"), tokens).await,
            Ok(Internal::Service)
        );
        assert_eq!(
            internal(Some("Bearer old-svc"), tokens).await,
            Ok(Internal::Service)
        );
        assert_eq!(
            internal(Some("Bearer staff"), tokens).await,
            Ok(Internal::Staff)
        );
        assert_eq!(internal(None, tokens).await, Err(401));
        assert_eq!(internal(Some("Bearer customer"), tokens).await, Err(403));
        // Unset: no service token passes, not even an empty one.
        assert_eq!(internal(Some("Bearer new-svc"), None).await, Err(403));
        assert_eq!(internal(Some("Bearer "), None).await, Err(401));
        assert!(!format!("{:?}", ServiceToken::new(tokens.map(str::to_owned))).contains("svc"));
    }

    #[tokio::test]
    async fn a_verified_person_passes_without_a_token() {
        let (mut parts, ()) = Request::builder()
            .uri("/")
            .body(())
            .expect("request")
            .into_parts();
        parts.extensions.insert(StaffMember {
            name: "alice".into(),
        });
        let state = StaffToken::default();
        assert!(Staff::from_request_parts(&mut parts, &state).await.is_ok());
    }

    #[test]
    fn the_staff_member_defaults_to_staff() {
        let mut headers = HeaderMap::new();
        assert_eq!(staff_member(&headers), "staff");
        headers.insert("x-staff-member", HeaderValue::from_static(" alice "));
        assert_eq!(staff_member(&headers), "alice");
    }
}
