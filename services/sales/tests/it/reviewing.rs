//! The staff review queue: listing (oldest first, keyset pages, filters), an
//! order's detail, approve and reject with notes, one decision only, and the
//! staff credential (401 without, 403 with a customer's token).

use contracts::{
    catalog::{Reservation, ReservationStatus},
    delivery::{Delivery, DeliveryStatus},
    orders::{Order, OrderStatus},
};
use reqwest::Method;
use sales::orders::reviews::ReviewReason;
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use testkit::{expect_json, expect_problem, fields};
use uuid::Uuid;

use crate::{Peers, Stack, order_body};

async fn staff(
    stack: &Stack,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> reqwest::Response {
    stack.api().staff(method, path, body.as_ref()).await
}

/// Decides as staff member `who` (an account made on first use), with an
/// `X-Staff-Member` header naming someone else: audits must name `who`.
async fn decide(
    stack: &Stack,
    id: Uuid,
    decision: &str,
    who: &str,
    note: &str,
) -> reqwest::Response {
    let secret = format!("{who}-secret-of-the-tests");
    match sales::staff::add(&stack.sales_db, who, &secret).await {
        Ok(_) | Err(sales::staff::AddError::Exists(_)) => {}
        Err(e) => panic!("adding {who}: {e}"),
    }
    stack
        .api()
        .request(Method::POST, &format!("/review/orders/{id}/{decision}"))
        .bearer_auth(format!("{who}:{secret}"))
        .header("X-Staff-Member", "mallory")
        .json(&json!({"note": note}))
        .send()
        .await
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn staff_list_read_and_approve_reviews(_pool: PgPoolOptions, options: PgConnectOptions) {
    let stack = Stack::start_with(options, Peers::ProductDown).await;
    let mut ids = Vec::new();
    for customer in ["a", "b", "c"] {
        let order: Order = expect_json(
            stack
                .place(&order_body(customer, &[("SKU-A", 1)]), None)
                .await,
            201,
        )
        .await;
        ids.push(order.id);
    }

    let health: Value = expect_json(stack.api().get("/health/reliability").await, 200).await;
    assert_eq!(health["manualReviewQueueLength"], 3);

    // The credential: none → 401, a customer's → 403.
    expect_problem(stack.api().get("/review/orders").await, 401).await;
    let customer = stack
        .api()
        .request(Method::GET, "/review/orders")
        .bearer_auth("customer-token")
        .send()
        .await
        .unwrap();
    expect_problem(customer, 403).await;
    let anonymous = stack
        .api()
        .post(
            &format!("/review/orders/{}/approve", ids[0]),
            &json!({"note": "ok"}),
        )
        .await;
    expect_problem(anonymous, 401).await;

    // Oldest first, two pages.
    let page: Value = expect_json(
        staff(&stack, Method::GET, "/review/orders?limit=2", None).await,
        200,
    )
    .await;
    let listed: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["order"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [ids[0].to_string(), ids[1].to_string()]);
    assert_eq!(
        page["items"][0]["review"]["reason"],
        "AVAILABILITY_UNVERIFIED"
    );
    assert_eq!(page["items"][0]["review"]["status"], "OPEN");
    assert_eq!(page["items"][0]["order"]["requires_manual_review"], true);
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest: Value = expect_json(
        staff(
            &stack,
            Method::GET,
            &format!("/review/orders?status=open&limit=2&cursor={cursor}"),
            None,
        )
        .await,
        200,
    )
    .await;
    assert_eq!(rest["items"][0]["order"]["id"], ids[2].to_string());
    assert!(rest["next_cursor"].is_null());
    let none: Value = expect_json(
        staff(
            &stack,
            Method::GET,
            "/review/orders?reason=DELIVERY_FAILED",
            None,
        )
        .await,
        200,
    )
    .await;
    assert_eq!(none["items"], json!([]));
    for bad in ["status=closed", "reason=NOPE", "limit=0", "cursor=zzz"] {
        expect_problem(
            staff(&stack, Method::GET, &format!("/review/orders?{bad}"), None).await,
            400,
        )
        .await;
    }

    // One order's picture.
    let detail: Value = expect_json(
        staff(
            &stack,
            Method::GET,
            &format!("/review/orders/{}", ids[0]),
            None,
        )
        .await,
        200,
    )
    .await;
    assert_eq!(detail["order"]["id"], ids[0].to_string());
    assert_eq!(detail["reviews"][0]["reason"], "AVAILABILITY_UNVERIFIED");
    assert_eq!(
        detail["reviews"][0]["details"]["product_ids"],
        json!(["SKU-A"])
    );
    assert_eq!(detail["history"][0]["to_status"], "PENDING_SHIPMENT");
    // A fallback order holds its delivery until the re-check or a person clears it.
    assert_eq!(detail["delivery_retry"]["status"], "HELD");
    assert_eq!(detail["order"]["delivery_hold"], "AVAILABILITY_UNVERIFIED");
    expect_problem(
        staff(
            &stack,
            Method::GET,
            &format!("/review/orders/{}", Uuid::new_v4()),
            None,
        )
        .await,
        404,
    )
    .await;

    // Approve: a note is required; who, when, what and the note are stored.
    let no_note = staff(
        &stack,
        Method::POST,
        &format!("/review/orders/{}/approve", ids[0]),
        Some(json!({})),
    )
    .await;
    assert_eq!(fields(&expect_problem(no_note, 422).await), ["note"]);
    let empty = stack
        .api()
        .request(Method::POST, &format!("/review/orders/{}/approve", ids[0]))
        .bearer_auth(testkit::STAFF_TOKEN)
        .send()
        .await
        .unwrap();
    // The body is a JSON document, as for every other body.
    expect_problem(empty, 415).await;
    let plain = stack
        .api()
        .request(Method::POST, &format!("/review/orders/{}/approve", ids[0]))
        .bearer_auth(testkit::STAFF_TOKEN)
        .header("content-type", "text/plain")
        .body("stock counted")
        .send()
        .await
        .unwrap();
    expect_problem(plain, 415).await;
    let approved: Value = expect_json(
        decide(&stack, ids[0], "approve", "alice", "stock counted by hand").await,
        200,
    )
    .await;
    assert_eq!(approved["order"]["requires_manual_review"], false);
    assert!(approved["order"]["delivery_hold"].is_null(), "{approved}");
    // Approving released the held delivery: due now, initiated by the retry worker.
    assert_eq!(approved["delivery_retry"]["status"], "PENDING");
    assert_eq!(
        approved["saga"]["status"], "COMPLETED",
        "the answer is the same detail as GET /review/orders/{{id}}: {approved}"
    );
    let step = stack
        .retry_worker
        .run_once(chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(step.initiated, 1, "{step:?}");
    let after: Value = expect_json(
        staff(
            &stack,
            Method::GET,
            &format!("/review/orders/{}", ids[0]),
            None,
        )
        .await,
        200,
    )
    .await;
    assert!(after["order"]["delivery_id"].is_string(), "{after}");
    assert_eq!(after["saga"]["status"], "COMPLETED");
    let review = &approved["reviews"][0];
    assert_eq!(
        (
            &review["status"],
            &review["resolved_by"],
            &review["resolution"],
            &review["note"]
        ),
        (
            &json!("APPROVED"),
            &json!("alice"),
            &json!("APPROVED"),
            &json!("stock counted by hand")
        )
    );
    assert!(review["resolved_at"].is_string());
    assert!(
        stack
            .events_of(ids[0])
            .await
            .contains(&"ORDER_REVIEW_APPROVED".to_owned())
    );

    let health: Value = expect_json(stack.api().get("/health/reliability").await, 200).await;
    assert_eq!(health["manualReviewQueueLength"], 2);

    // A second decision on the same review is a conflict.
    for decision in ["approve", "reject"] {
        let again = decide(&stack, ids[0], decision, "bob", "again").await;
        assert_eq!(
            expect_problem(again, 409).await.kind,
            "/problems/review-already-resolved"
        );
    }
    let approved_list: Value = expect_json(
        staff(&stack, Method::GET, "/review/orders?status=approved", None).await,
        200,
    )
    .await;
    assert_eq!(approved_list["items"][0]["order"]["id"], ids[0].to_string());

    // Customers see only the flag.
    let customer_view: Value =
        expect_json(stack.api().get(&format!("/orders/{}", ids[1])).await, 200).await;
    let mut keys: Vec<&str> = customer_view
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "created_at",
            "customer_id",
            "delivery_hold",
            "delivery_id",
            "fallback_used",
            "id",
            "items",
            "requires_manual_review",
            "shipping_address",
            "status",
            "updated_at",
            "version"
        ]
    );
}

#[sqlx::test(migrations = false)]
async fn rejecting_cancels_the_order_through_its_compensations(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let stack = Stack::start(options).await;
    let order: Order = expect_json(
        stack.place(&order_body("r", &[("SKU-A", 3)]), None).await,
        201,
    )
    .await;
    let picked: Order = expect_json(
        stack.place(&order_body("p", &[("SKU-A", 1)]), None).await,
        201,
    )
    .await;
    for id in [order.id, picked.id] {
        let mut tx = stack.sales_db.begin().await.unwrap();
        let mut lock = sales::store::lock(&mut tx, id).await.unwrap().unwrap();
        sales::orders::reviews::open_flagged(
            &mut lock,
            ReviewReason::StalePendingShipment,
            &json!({}),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(stack.relay_to_product(id, "ORDER_CREATED").await, 1);
    }
    assert_eq!(stack.stock("SKU-A").await, (6, 0));

    let no_note = decide(&stack, order.id, "reject", "bob", "  ").await;
    expect_problem(no_note, 422).await;
    let rejected: Value = expect_json(
        decide(&stack, order.id, "reject", "bob", "customer unreachable").await,
        200,
    )
    .await;
    assert_eq!(rejected["order"]["status"], "CANCELLED");
    assert_eq!(rejected["saga"]["status"], "COMPENSATED", "{rejected}");
    assert_eq!(rejected["order"]["requires_manual_review"], false);
    assert_eq!(rejected["reviews"][0]["status"], "REJECTED");
    assert_eq!(rejected["reviews"][0]["resolved_by"], "bob");
    assert_eq!(rejected["reviews"][0]["note"], "customer unreachable");
    let delivery: Delivery = expect_json(
        stack
            .delivery_api()
            .get(&format!("/deliveries/{}", order.delivery_id.unwrap()))
            .await,
        200,
    )
    .await;
    assert_eq!(delivery.status, DeliveryStatus::Cancelled);
    assert_eq!(stack.relay_to_product(order.id, "ORDER_CANCELLED").await, 1);
    let reservation: Reservation = expect_json(
        stack
            .product
            .as_ref()
            .unwrap()
            .api
            .get(&format!("/reservations/{}", order.id))
            .await,
        200,
    )
    .await;
    assert_eq!(reservation.status, ReservationStatus::Released);
    assert_eq!(stack.stock("SKU-A").await, (9, 0));
    expect_problem(
        decide(&stack, order.id, "reject", "bob", "again").await,
        409,
    )
    .await;
    expect_problem(
        decide(&stack, order.id, "approve", "carol", "oops").await,
        409,
    )
    .await;

    // Picked up meanwhile: the rejection cannot cancel it; the review stays open.
    stack
        .courier(picked.delivery_id.unwrap(), &["PICKED_UP"])
        .await;
    let refused = decide(&stack, picked.id, "reject", "bob", "too slow").await;
    assert_eq!(
        expect_problem(refused, 409).await.kind,
        "/problems/order-not-cancellable"
    );
    let read: Order = expect_json(
        stack.api().get(&format!("/orders/{}", picked.id)).await,
        200,
    )
    .await;
    assert_eq!(read.status, OrderStatus::PendingShipment);
    assert_eq!(
        stack.reviews_of(picked.id).await,
        [("STALE_PENDING_SHIPMENT".to_owned(), "OPEN".to_owned())]
    );
}

#[sqlx::test(migrations = false)]
async fn approving_exhausted_delivery_retries_asks_for_them_again(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let mut stack = Stack::start_configured(
        options,
        Peers::DeliveryDown,
        &[("SALES_DELIVERY_RETRY_MAX_ATTEMPTS", "1")],
    )
    .await;
    let order: Order = expect_json(
        stack.place(&order_body("x", &[("SKU-A", 1)]), None).await,
        201,
    )
    .await;
    let read: Order =
        expect_json(stack.api().get(&format!("/orders/{}", order.id)).await, 200).await;
    assert!(
        read.requires_manual_review,
        "exhausted retries flag the order"
    );
    assert_eq!(
        stack.reviews_of(order.id).await,
        [("DELIVERY_RETRIES_EXHAUSTED".to_owned(), "OPEN".to_owned())]
    );
    expect_json::<Value>(
        decide(&stack, order.id, "approve", "dana", "delivery is back").await,
        200,
    )
    .await;
    stack.start_delivery().await;
    let report = stack
        .retry_worker
        .run_once(chrono::Utc::now() + chrono::Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(report.initiated, 1);
    let read: Order =
        expect_json(stack.api().get(&format!("/orders/{}", order.id)).await, 200).await;
    assert!(read.delivery_id.is_some() && !read.requires_manual_review);
}
