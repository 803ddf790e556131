//! `idempotency_keys`: the first answer of each `Idempotency-Key` (the key's rules live in
//! `orders::idempotency`).

use sqlx::PgConnection;
use uuid::Uuid;

/// What the first request with a key left behind.
#[derive(Debug)]
pub struct StoredKey {
    pub request_hash: String,
    pub order_id: Uuid,
    pub response_status: i16,
}

pub async fn find(
    conn: &mut PgConnection,
    customer_id: &str,
    key: &str,
) -> Result<Option<StoredKey>, sqlx::Error> {
    sqlx::query_as!(
        StoredKey,
        "SELECT request_hash, order_id, response_status FROM idempotency_keys
         WHERE customer_id = $1 AND key = $2",
        customer_id,
        key,
    )
    .fetch_optional(conn)
    .await
}

/// Records the key in the caller's transaction (the one that writes the order).
pub async fn insert(
    conn: &mut PgConnection,
    customer_id: &str,
    key: &str,
    request_hash: &str,
    order_id: Uuid,
    response_status: i16,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO idempotency_keys (customer_id, key, request_hash, order_id, response_status)
         VALUES ($1, $2, $3, $4, $5)",
        customer_id,
        key,
        request_hash,
        order_id,
        response_status,
    )
    .execute(conn)
    .await?;
    Ok(())
}
