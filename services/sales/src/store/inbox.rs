//! `delivery_events_inbox`: one row per delivery event applied (or deliberately
//! ignored), written in the transaction of its effect.

use sqlx::PgConnection;
use uuid::Uuid;

/// Claims event `event_id` (outcome `APPLYING` until [`settle`]); false when it was
/// seen before.
pub async fn claim(
    conn: &mut PgConnection,
    event_id: Uuid,
    delivery_id: Uuid,
    delivery_version: i32,
    order_id: Uuid,
) -> Result<bool, sqlx::Error> {
    let fresh = sqlx::query!(
        "INSERT INTO delivery_events_inbox (event_id, delivery_id, delivery_version, order_id, outcome)
         VALUES ($1, $2, $3, $4, 'APPLYING') ON CONFLICT (event_id) DO NOTHING",
        event_id,
        delivery_id,
        delivery_version,
        order_id,
    )
    .execute(conn)
    .await?
    .rows_affected();
    Ok(fresh == 1)
}

/// What the event came to.
pub async fn settle(
    conn: &mut PgConnection,
    event_id: Uuid,
    outcome: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE delivery_events_inbox SET outcome = $2 WHERE event_id = $1",
        event_id,
        outcome
    )
    .execute(conn)
    .await?;
    Ok(())
}
