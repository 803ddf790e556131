//! Advisory locks: one instance at a time runs reconciliation or the availability re-check.

use sqlx::PgConnection;

/// Takes advisory lock `key` until the caller's transaction ends; false if another holds it.
pub async fn try_for_transaction(conn: &mut PgConnection, key: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT pg_try_advisory_xact_lock($1) AS "locked!""#, key)
        .fetch_one(conn)
        .await
}

/// Takes advisory lock `key` for the connection's session; false if another holds it.
pub async fn try_for_session(conn: &mut PgConnection, key: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT pg_try_advisory_lock($1) AS "locked!""#, key)
        .fetch_one(conn)
        .await
}

/// Releases the session's advisory lock `key`; whether it held it.
pub async fn unlock(conn: &mut PgConnection, key: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT pg_advisory_unlock($1) AS "unlocked!""#, key)
        .fetch_one(conn)
        .await
}
