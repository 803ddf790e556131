//! The error type of HTTP handlers: a problem to answer as is, or a database error
//! answered as 503 (unavailable) or an opaque 500.

use axum::response::{IntoResponse, Response};
use contracts::{FieldError, Problem};

/// Error of a request handler.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Answered as the problem says (4xx, or a 503 decided by the handler).
    #[error("{0}")]
    Problem(#[from] Problem),
    /// 503 + `Retry-After` when the database is unavailable, else an opaque 500.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// Result of a request handler.
pub type ApiResult<T> = Result<T, ApiError>;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::Problem(p) => p.into_response(),
            Self::Database(e) => crate::db::problem(&e).into_response(),
        }
    }
}

/// `Err(422)` when `errors` is not empty.
pub fn ensure_valid(errors: Vec<FieldError>) -> Result<(), ApiError> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Problem::validation(errors).into())
    }
}
