//! RFC 9457 problem details: the one error shape of every HTTP API here.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Media type of a problem document.
pub const PROBLEM_JSON: &str = "application/problem+json";
/// Problem type slug of a 404 for a path the service has no route for.
pub const NO_SUCH_ROUTE: &str = "no-such-route";

/// One invalid field of a request: a JSON-pointer-like path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    /// Path of the field, e.g. `items[0].quantity`.
    pub field: String,
    /// What is wrong with it, for a person.
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// An `application/problem+json` document (RFC 9457).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// A URI reference naming the kind of problem, e.g. `/problems/validation`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the kind of problem.
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// Explanation specific to this occurrence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Field-level errors of a rejected request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Extension members (e.g. the short items of an insufficient-stock answer).
    #[serde(flatten, default, skip_serializing_if = "serde_json::Map::is_empty")]
    #[schema(value_type = Object)]
    pub extensions: serde_json::Map<String, serde_json::Value>,
    /// Seconds the client should wait before retrying (sent as `Retry-After`).
    #[serde(skip)]
    pub retry_after_secs: Option<u64>,
}

impl Problem {
    /// A problem with the given status, kind slug (`/problems/{slug}`) and title.
    pub fn new(status: StatusCode, slug: &str, title: impl Into<String>) -> Self {
        Self {
            kind: format!("/problems/{slug}"),
            title: title.into(),
            status: status.as_u16(),
            detail: None,
            errors: Vec::new(),
            extensions: serde_json::Map::new(),
            retry_after_secs: None,
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_errors(mut self, errors: Vec<FieldError>) -> Self {
        self.errors = errors;
        self
    }

    /// Adds an extension member; `key` must not be one of the standard members.
    pub fn with_extension(mut self, key: &str, value: impl Serialize) -> Self {
        debug_assert!(
            !["type", "title", "status", "detail", "errors"].contains(&key),
            "extension {key} would shadow a standard member"
        );
        let value = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
        self.extensions.insert(key.to_owned(), value);
        self
    }

    /// `Retry-After` of a wait: whole seconds, rounded up, at least 1.
    pub fn retry_after_secs(wait: std::time::Duration) -> u64 {
        (wait.as_nanos().div_ceil(1_000_000_000) as u64).max(1)
    }

    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// 422: the request was well-formed JSON but some fields are invalid.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "The request has invalid fields",
        )
        .with_errors(errors)
    }

    /// 400: the request could not be read at all.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", "Bad request").with_detail(detail)
    }

    /// 400 for a query parameter that cannot be used.
    pub fn bad_query(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad-query",
            "Invalid query parameters",
        )
        .with_errors(vec![FieldError::new(field, message)])
    }

    /// 404 for a path no route serves (type [`NO_SUCH_ROUTE`]), unlike [`Problem::not_found`]
    /// for a resource of a route that exists: a caller told this expected another service.
    pub fn no_such_route() -> Self {
        Self::new(StatusCode::NOT_FOUND, NO_SUCH_ROUTE, "Not found")
            .with_detail("no such route; see /openapi.json")
    }

    /// 404 for a resource that does not exist.
    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found")
            .with_detail(format!("{what} was not found"))
    }

    /// 409: the request conflicts with the resource's current state.
    pub fn conflict(slug: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, slug, "Conflict").with_detail(detail)
    }

    /// 401 (with `WWW-Authenticate: Bearer`): a staff credential is needed.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "A valid staff credential is required",
        )
    }

    /// 403: a credential was presented, but it does not grant this.
    pub fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "This credential does not grant staff access",
        )
    }

    /// 401 of an internal endpoint: a service (or staff) credential is needed.
    pub fn service_unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "A valid service credential is required",
        )
        .with_detail("this endpoint is for the services of the system: send Authorization: Bearer <service token>")
    }

    /// 403 of an internal endpoint: the credential is neither a service's nor staff's.
    pub fn service_forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "This credential does not grant access to internal endpoints",
        )
    }

    /// 503 with `Retry-After`: a dependency this request needs is unavailable.
    pub fn unavailable(detail: impl Into<String>, retry_after_secs: u64) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "System temporarily unavailable",
        )
        .with_detail(detail)
        .with_retry_after(retry_after_secs)
    }

    /// 500 that reveals nothing; the cause is logged where it happened.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal server error",
        )
    }

    /// A generic problem for a bare status (used for framework-made errors such as 405).
    pub fn from_status(status: StatusCode) -> Self {
        let title = status.canonical_reason().unwrap_or("Error");
        let slug = title.to_ascii_lowercase().replace(' ', "-");
        Self::new(status, &slug, title)
    }

    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.title)?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problem {}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            // RFC 9110 §11.6.1: a 401 names the scheme that would be accepted.
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_as_rfc9457_with_extensions() {
        let problem = Problem::conflict("insufficient-stock", "not enough")
            .with_extension("short_items", vec!["a"]);
        let json = serde_json::to_value(&problem).expect("serializable");
        assert_eq!(json["type"], "/problems/insufficient-stock");
        assert_eq!(json["status"], 409);
        assert_eq!(json["short_items"][0], "a");
        assert!(json.get("errors").is_none());
        let back: Problem = serde_json::from_value(json).expect("round trip");
        assert_eq!(back.extensions["short_items"][0], "a");
    }

    #[test]
    fn retry_after_becomes_a_header() {
        let response = Problem::unavailable("db down", 5).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "5");
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
    }

    #[test]
    fn a_401_names_the_bearer_scheme() {
        let response = Problem::unauthorized().into_response();
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let response = Problem::forbidden().into_response();
        assert!(response.headers().get(header::WWW_AUTHENTICATE).is_none());
    }
}
