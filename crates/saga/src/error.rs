//! The crate's error type. A saga that compensated or failed is not an error: it is a
//! [`SagaEnd`](crate::SagaEnd). Errors are what stopped the orchestrator from running it.

use uuid::Uuid;

/// Why a call on the orchestrator or the store did not do its job.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No saga with this id (HTTP: 404).
    #[error("saga {0} not found")]
    NotFound(Uuid),
    /// A saga with this id exists already (HTTP: 409).
    #[error("saga {0} already exists")]
    AlreadyExists(Uuid),
    /// Another owner holds the saga's lease, or this orchestrator is running it right now
    /// (HTTP: 409). Try again later; it will be finished by whoever holds it.
    #[error("saga {0} is being run by another owner")]
    Busy(Uuid),
    /// The saga's lease passed to another owner while this one was running it (the process
    /// stalled longer than the lease). This run stopped; the new owner carries on.
    #[error("lost the lease on saga {0}")]
    LeaseLost(Uuid),
    /// The saga exists but is of another type than the definition given (HTTP: 409).
    #[error("saga {id} is a {found} saga, not {expected}")]
    WrongType {
        id: Uuid,
        expected: &'static str,
        found: String,
    },
    /// The stored context or an output does not match the definition's types.
    #[error("saga context (de)serialization: {0}")]
    Context(#[from] serde_json::Error),
    /// A value in the saga tables that this crate does not know.
    #[error("unexpected value in the saga tables: {0}")]
    Corrupt(String),
    /// The database failed (HTTP: 500, or 503 when unreachable).
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
