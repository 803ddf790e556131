//! Orders placed as persisted sagas: completed, waiting for delivery, refused,
//! and cancelled — each visible at `GET /sagas/{id}` for staff.

use chrono::{Duration, Utc};
use contracts::orders::Order;
use reqwest::Method;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use testkit::{expect_json, expect_problem};
use uuid::Uuid;

use crate::{Peers, Stack, order_body};

async fn saga_of(stack: &Stack, order: Uuid) -> Value {
    let id: Uuid =
        sqlx::query_scalar("SELECT id FROM saga_instances WHERE context->>'order_id' = $1")
            .bind(order.to_string())
            .fetch_one(&stack.sales_db)
            .await
            .unwrap();
    expect_json(
        stack
            .api()
            .staff(Method::GET, &format!("/sagas/{id}"), None)
            .await,
        200,
    )
    .await
}

fn steps(saga: &Value) -> Vec<(String, String, String)> {
    saga["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap().to_owned(),
                s["kind"].as_str().unwrap().to_owned(),
                s["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn action(step: &str, status: &str) -> (String, String, String) {
    (step.to_owned(), "ACTION".to_owned(), status.to_owned())
}

#[sqlx::test(migrations = false)]
async fn an_order_is_a_completed_saga(_pool: PgPoolOptions, options: PgConnectOptions) {
    let stack = Stack::start(options).await;
    let order: Order = expect_json(
        stack.place(&order_body("s", &[("SKU-A", 1)]), None).await,
        201,
    )
    .await;
    let saga = saga_of(&stack, order.id).await;
    assert_eq!(saga["status"], "COMPLETED");
    assert_eq!(
        steps(&saga),
        [
            action("reserve_inventory", "SUCCEEDED"),
            action("record_order", "SUCCEEDED"),
            action("initiate_delivery", "SUCCEEDED")
        ]
    );
    assert_eq!(
        saga["context"]["delivery_id"],
        serde_json::json!(order.delivery_id)
    );
    let id = saga["id"].as_str().unwrap();
    let detail: Value = expect_json(
        stack
            .api()
            .staff(Method::GET, &format!("/review/orders/{}", order.id), None)
            .await,
        200,
    )
    .await;
    assert_eq!(
        detail["saga"]["id"], saga["id"],
        "staff see the saga with the order"
    );
    let anonymous = stack.api().get(&format!("/sagas/{id}")).await;
    expect_problem(anonymous, 401).await;
    expect_problem(
        stack
            .api()
            .staff(Method::GET, &format!("/sagas/{}", Uuid::new_v4()), None)
            .await,
        404,
    )
    .await;
}

#[sqlx::test(migrations = false)]
async fn a_saga_waits_for_delivery_and_completes_when_it_is_initiated(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let mut stack = Stack::start_with(options, Peers::DeliveryDown).await;
    let order: Order = expect_json(
        stack.place(&order_body("w", &[("SKU-A", 1)]), None).await,
        201,
    )
    .await;
    let saga = saga_of(&stack, order.id).await;
    assert_eq!(
        saga["status"], "WAITING",
        "a failed delivery parks the saga, it does not compensate"
    );
    assert_eq!(steps(&saga)[2], action("initiate_delivery", "PARKED"));

    stack.start_delivery().await;
    let report = stack
        .retry_worker
        .run_once(Utc::now() + Duration::minutes(2))
        .await
        .unwrap();
    assert_eq!(report.initiated, 1);
    let saga = saga_of(&stack, order.id).await;
    assert_eq!(saga["status"], "COMPLETED");
    assert!(saga["context"]["delivery_id"].is_string());
}

#[sqlx::test(migrations = false)]
async fn a_refused_order_is_a_compensated_saga_with_no_order(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let stack = Stack::start(options).await;
    expect_problem(
        stack.place(&order_body("r", &[("SKU-B", 99)]), None).await,
        409,
    )
    .await;
    let (status, failed): (String, Option<String>) =
        sqlx::query_as("SELECT status, failed_step FROM saga_instances")
            .fetch_one(&stack.sales_db)
            .await
            .unwrap();
    assert_eq!(
        (status.as_str(), failed.as_deref()),
        ("COMPENSATED", Some("reserve_inventory"))
    );
    assert_eq!(stack.count(&stack.sales_db, "orders").await, 0);
}

#[sqlx::test(migrations = false)]
async fn a_cancelled_order_is_a_compensated_saga(_pool: PgPoolOptions, options: PgConnectOptions) {
    let stack = Stack::start(options).await;
    let order: Order = expect_json(
        stack.place(&order_body("c", &[("SKU-A", 2)]), None).await,
        201,
    )
    .await;
    let cancelled: Order = expect_json(
        stack
            .api()
            .post(
                &format!("/orders/{}/cancel", order.id),
                &serde_json::json!({}),
            )
            .await,
        200,
    )
    .await;
    assert_eq!(cancelled.status.as_str(), "CANCELLED");
    let saga = saga_of(&stack, order.id).await;
    assert_eq!(saga["status"], "COMPENSATED");
    let compensations: Vec<String> = steps(&saga)
        .into_iter()
        .filter(|(_, kind, _)| kind == "COMPENSATION")
        .map(|(step, _, status)| format!("{step}:{status}"))
        .collect();
    assert_eq!(
        compensations,
        [
            "initiate_delivery:SUCCEEDED",
            "record_order:SUCCEEDED",
            "reserve_inventory:SUCCEEDED"
        ],
        "compensated in reverse order"
    );
    let delivery: String = sqlx::query_scalar("SELECT status FROM deliveries WHERE order_id = $1")
        .bind(order.id)
        .fetch_one(&stack.delivery_db)
        .await
        .unwrap();
    assert_eq!(delivery, "CANCELLED");
}

#[sqlx::test(migrations = false)]
async fn a_cancelled_orders_saga_is_compensated_even_if_delivery_went_down_since(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let mut stack = Stack::start(options).await;
    let order: Order = expect_json(
        stack.place(&order_body("c", &[("SKU-A", 1)]), None).await,
        201,
    )
    .await;
    // What a cancellation did: the delivery cancelled at delivery, then the
    // order CANCELLED; delivery goes down before the saga is marked compensated.
    let delivery_id = order.delivery_id.unwrap();
    let path = format!("/deliveries/{delivery_id}/cancel");
    assert_eq!(
        stack
            .delivery_api()
            .post(&path, &serde_json::json!({}))
            .await
            .status(),
        200
    );
    sqlx::query("UPDATE orders SET status = 'CANCELLED' WHERE id = $1")
        .bind(order.id)
        .execute(&stack.sales_db)
        .await
        .unwrap();
    stack.delivery.take().unwrap().stop().await;
    let sagas = stack.retry_worker.sagas.clone().unwrap();
    sagas
        .compensated_by_cancel(order.id, "cancelled by the customer")
        .await;
    let saga = saga_of(&stack, order.id).await;
    assert_eq!(
        saga["status"], "COMPENSATED",
        "nothing was left to undo: not FAILED, waiting for staff: {saga}"
    );
}
