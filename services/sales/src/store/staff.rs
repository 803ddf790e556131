//! `staff_accounts` and `staff_sessions`: every SQL statement on them (the rules of names,
//! secrets and sessions live in `staff` and the console).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// A staff account (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Adds an account with its argon2id hash; fails with `staff_accounts_active_name` when an
/// active account has the name.
pub async fn insert(pool: &PgPool, name: &str, hash: &str) -> Result<Account, sqlx::Error> {
    sqlx::query_as!(
        Account,
        "INSERT INTO staff_accounts (id, name, secret_hash) VALUES ($1, $2, $3)
         RETURNING id, name, created_at, revoked_at",
        Uuid::now_v7(),
        name,
        hash,
    )
    .fetch_one(pool)
    .await
}

/// Every account, active and revoked, by name.
pub async fn list(pool: &PgPool) -> Result<Vec<Account>, sqlx::Error> {
    sqlx::query_as!(
        Account,
        "SELECT id, name, created_at, revoked_at FROM staff_accounts ORDER BY name, created_at"
    )
    .fetch_all(pool)
    .await
}

/// Revokes the active account `name` and ends its sessions; false if there is none.
pub async fn revoke(pool: &PgPool, name: &str) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let id = sqlx::query_scalar!(
        "UPDATE staff_accounts SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL RETURNING id",
        name
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(id) = id {
        sqlx::query!("DELETE FROM staff_sessions WHERE staff_id = $1", id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(id.is_some())
}

/// The id and secret hash of the active account `name`.
pub async fn active(pool: &PgPool, name: &str) -> Result<Option<(Uuid, String)>, sqlx::Error> {
    Ok(sqlx::query!(
        "SELECT id, secret_hash FROM staff_accounts WHERE name = $1 AND revoked_at IS NULL",
        name
    )
    .fetch_optional(pool)
    .await?
    .map(|r| (r.id, r.secret_hash)))
}

/// A session row: its person and CSRF token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub staff_id: Uuid,
    pub name: String,
    pub csrf_token: String,
}

/// Starts a session (the token stored as its digest).
pub async fn insert_session(
    pool: &PgPool,
    token_digest: &[u8],
    staff_id: Uuid,
    csrf_token: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO staff_sessions (token_digest, staff_id, csrf_token) VALUES ($1, $2, $3)",
        token_digest,
        staff_id,
        csrf_token,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The session of `token_digest` if used within `idle` and its account is active,
/// touched (its idle time starts again).
pub async fn touch_session(
    pool: &PgPool,
    token_digest: &[u8],
    idle: Duration,
) -> Result<Option<SessionRow>, sqlx::Error> {
    sqlx::query_as!(
        SessionRow,
        "UPDATE staff_sessions s SET last_seen_at = now() FROM staff_accounts a
         WHERE s.token_digest = $1 AND a.id = s.staff_id AND a.revoked_at IS NULL
           AND s.last_seen_at > now() - make_interval(secs => $2)
         RETURNING s.staff_id, a.name, s.csrf_token",
        token_digest,
        idle.as_secs_f64(),
    )
    .fetch_optional(pool)
    .await
}

/// Deletes the session of `token_digest`; whether there was one.
pub async fn delete_session(pool: &PgPool, token_digest: &[u8]) -> Result<bool, sqlx::Error> {
    let gone = sqlx::query!(
        "DELETE FROM staff_sessions WHERE token_digest = $1",
        token_digest
    )
    .execute(pool)
    .await?;
    Ok(gone.rows_affected() > 0)
}
