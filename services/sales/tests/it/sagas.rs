//! Orders placed as persisted sagas whose checkpoints ride in the order's own
//! transactions: completed (two transactions), delivery left to the retry worker,
//! held (one transaction), refused (nothing written), cancelled (compensated), and
//! carried on when the client goes away — each visible at `GET /sagas/{order_id}`.

use chrono::{Duration, Utc};
use contracts::orders::Order;
use reqwest::Method;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use testkit::{expect_json, expect_problem};
use uuid::Uuid;

use crate::{Peers, Stack, order_body};

/// The order's saga, at `GET /sagas/{order_id}` (an order saga has its order's id).
async fn saga_of(stack: &Stack, order: Uuid) -> Value {
    expect_json(
        stack
            .api()
            .staff(Method::GET, &format!("/sagas/{order}"), None)
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
    assert!(order.delivery_id.is_some());
    let saga = saga_of(&stack, order.id).await;
    assert_eq!(
        saga["id"],
        order.id.to_string(),
        "the saga has the order's id"
    );
    assert_eq!(saga["status"], "COMPLETED");
    assert!(saga["locked_by"].is_null());
    assert_eq!(
        steps(&saga),
        [
            action("reserve_inventory", "SUCCEEDED"),
            action("record_order", "SUCCEEDED"),
            action("initiate_delivery", "SUCCEEDED"),
            action("record_delivery", "SUCCEEDED"),
        ]
    );
    assert_eq!(
        saga["context"]["order"]["delivery_id"],
        serde_json::json!(order.delivery_id)
    );
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
    let anonymous = stack.api().get(&format!("/sagas/{}", order.id)).await;
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
async fn a_delivery_that_could_not_be_made_is_left_to_the_retry_worker(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let mut stack = Stack::start_with(options, Peers::DeliveryDown).await;
    let order: Order = expect_json(
        stack.place(&order_body("w", &[("SKU-A", 1)]), None).await,
        201,
    )
    .await;
    assert_eq!(order.delivery_id, None);
    let saga = saga_of(&stack, order.id).await;
    assert_eq!(
        saga["status"], "COMPLETED",
        "the saga's part is done: one mechanism, the retry row, takes the delivery on"
    );
    assert_eq!(saga["context"]["delivery"]["outcome"], "failed", "{saga}");
    let (status, attempts): (String, i32) =
        sqlx::query_as("SELECT status, attempts FROM delivery_retries WHERE order_id = $1")
            .bind(order.id)
            .fetch_one(&stack.sales_db)
            .await
            .unwrap();
    assert_eq!((status.as_str(), attempts), ("PENDING", 1));
    assert!(
        stack
            .events_of(order.id)
            .await
            .contains(&"DELIVERY_INITIATION_FAILED".to_owned())
    );

    stack.start_delivery().await;
    let report = stack
        .retry_worker
        .run_once(Utc::now() + Duration::minutes(2))
        .await
        .unwrap();
    assert_eq!(report.initiated, 1);
    let read: Order =
        expect_json(stack.api().get(&format!("/orders/{}", order.id)).await, 200).await;
    assert!(read.delivery_id.is_some());
    assert_eq!(saga_of(&stack, order.id).await["status"], "COMPLETED");
}

#[sqlx::test(migrations = false)]
async fn a_flagged_order_is_a_saga_of_one_transaction(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let stack = Stack::start_with(options, Peers::ProductDown).await;
    let order: Order = expect_json(
        stack.place(&order_body("f", &[("SKU-A", 1)]), None).await,
        201,
    )
    .await;
    assert!(order.fallback_used);
    let saga = saga_of(&stack, order.id).await;
    assert_eq!(saga["status"], "COMPLETED");
    assert_eq!(
        steps(&saga),
        [
            action("reserve_inventory", "SUCCEEDED"),
            action("record_order", "SUCCEEDED"),
            action("initiate_delivery", "SKIPPED"),
            action("record_delivery", "SKIPPED"),
        ],
        "its delivery is held: the saga completes with the order's transaction"
    );
}

#[sqlx::test(migrations = false)]
async fn a_refused_order_leaves_no_saga_and_no_order(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let stack = Stack::start(options).await;
    let problem = expect_problem(
        stack.place(&order_body("r", &[("SKU-B", 99)]), None).await,
        409,
    )
    .await;
    assert_eq!(problem.kind, "/problems/insufficient-stock");
    assert_eq!(stack.count(&stack.sales_db, "saga_instances").await, 0);
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
        "what the cancellation undid, in reverse order, recorded on the saga"
    );
    let delivery: String = sqlx::query_scalar("SELECT status FROM deliveries WHERE order_id = $1")
        .bind(order.id)
        .fetch_one(&stack.delivery_db)
        .await
        .unwrap();
    assert_eq!(delivery, "CANCELLED");
    assert_eq!(stack.stock("SKU-A").await, (10, 0), "its units are back");
}

#[sqlx::test(migrations = false)]
async fn a_client_that_goes_away_does_not_stop_its_order(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    // Product hangs: the reservation waits for sales' 2 s call timeout, then falls back.
    let hung = testkit::proxy::Proxy::start("127.0.0.1:9".parse().unwrap()).await;
    hung.set_hung(true);
    let product_url = format!("http://127.0.0.1:{}", hung.port);
    let stack = Stack::start_configured(
        options,
        Peers::Both,
        &[("SALES_PRODUCT_URL", product_url.as_str())],
    )
    .await;
    let body = order_body("gone", &[("SKU-A", 1)]);
    let impatient = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(300))
        .build()
        .unwrap();
    let sent = impatient
        .post(stack.api().url("/orders"))
        .header("Idempotency-Key", "left-early")
        .json(&body)
        .send()
        .await;
    assert!(sent.is_err(), "the client gave up before the answer");
    // The saga went on in its own task: the order is recorded once the fallback kicks in.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let completed = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM saga_instances WHERE status = 'COMPLETED' AND locked_by IS NULL",
        )
        .fetch_one(&stack.sales_db)
        .await
        .unwrap()
    };
    while completed().await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the order was never recorded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(stack.count(&stack.sales_db, "orders").await, 1);
    let replay = stack.place(&body, Some("left-early")).await;
    assert_eq!(replay.status(), 201);
    assert_eq!(
        replay.headers()["idempotent-replayed"],
        "true",
        "the retry is answered from the recorded order"
    );
    let order: Order = replay.json().await.unwrap();
    assert!(order.fallback_used);
    assert_eq!(saga_of(&stack, order.id).await["status"], "COMPLETED");
}
