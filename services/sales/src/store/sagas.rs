//! The order saga's rows in `saga_instances` that sales reads itself (the `saga` crate
//! owns the table and the rest of its SQL).

use uuid::Uuid;

/// The saga of an order, if it has one: the saga with the order's id (placed since sagas
/// take their order's id), or an older one naming the order in its context.
pub async fn saga_of(pool: &sqlx::PgPool, order_id: Uuid) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT id AS "id!" FROM saga_instances WHERE id = $1
           UNION ALL
           (SELECT id FROM saga_instances WHERE saga_type = 'order' AND context->>'order_id' = $1::text
            ORDER BY created_at DESC)
           LIMIT 1"#,
        order_id
    )
    .fetch_optional(pool)
    .await
}
