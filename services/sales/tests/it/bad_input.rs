//! Bad input gets a 4xx problem naming the field and changes nothing: every
//! handler of sales with effects (place, cancel, approve, reject, replay and
//! discard dead letters) is sent each kind of bad input — a NUL or another
//! control character, a value too long or blank, a wrong type, a missing field,
//! a body that is not JSON or not sent as JSON, a bad path parameter, no or a
//! wrong credential — and the three databases are compared row by row before and
//! after. None of it counts as a database failure for the breaker.

use contracts::orders::{Order, OrderStatus};
use reqwest::{Method, RequestBuilder};
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use testkit::{STAFF_TOKEN, expect_json, expect_rejected, snapshot};
use uuid::Uuid;

use crate::{Stack, order_body};

/// What a request is sent with.
enum Body {
    Json(Value),
    Raw(&'static str, &'static str),
    None,
}

struct Case {
    method: Method,
    path: String,
    body: Body,
    staff: bool,
    status: u16,
    field: Option<&'static str>,
}

fn case(method: Method, path: &str, body: Body, status: u16, field: Option<&'static str>) -> Case {
    Case {
        method,
        path: path.to_owned(),
        body,
        staff: true,
        status,
        field,
    }
}

fn build(stack: &Stack, c: &Case) -> RequestBuilder {
    let mut request = stack.api().request(c.method.clone(), &c.path);
    if c.staff {
        request = request.bearer_auth(STAFF_TOKEN);
    }
    match &c.body {
        Body::Json(v) => request.json(v),
        Body::Raw(content_type, text) => request.header("content-type", *content_type).body(*text),
        Body::None => request,
    }
}

/// The bad inputs of a text field `field` whose longest valid value is `max`.
fn bad_texts(max: usize) -> Vec<Value> {
    vec![
        json!("a\u{0}b"),
        json!("line\u{7}bell"),
        json!("\u{1b}[31mred"),
        json!("x".repeat(max + 1)),
        json!(12),
        json!(["a"]),
    ]
}

async fn database_state(
    stack: &Stack,
    product_db: &sqlx::PgPool,
) -> Vec<std::collections::BTreeMap<String, String>> {
    vec![
        snapshot(&stack.sales_db).await,
        snapshot(product_db).await,
        snapshot(&stack.delivery_db).await,
    ]
}

#[sqlx::test(migrations = false)]
async fn bad_input_to_any_handler_with_effects_changes_nothing(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let mut stack = Stack::start(options.clone()).await;
    // Product's own pool closes when it stops: read its tables through another.
    let product_db = crate::schema_pool(&options, "product").await;
    // A normal order (reserved, committed, delivery created) and a fallback one
    // (product down: flagged, an open review), as in the issue.
    let normal: Order = expect_json(
        stack
            .place(&order_body("bad-input", &[("SKU-A", 2)]), None)
            .await,
        201,
    )
    .await;
    stack.product.take().unwrap().stop().await;
    let fallback: Order = expect_json(
        stack
            .place(&order_body("bad-input", &[("SKU-B", 1)]), None)
            .await,
        201,
    )
    .await;
    assert!(fallback.requires_manual_review && fallback.delivery_hold.is_some());
    // A dead letter, to replay and discard.
    let dead = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO outbox_events (id, aggregate_type, aggregate_id, aggregate_version, event_type, payload, status, retry_count, last_error)
         VALUES ($1, 'order', $2, 1, 'ORDER_CREATED', '{}'::jsonb, 'FAILED', 5, 'broker down')",
    )
    .bind(dead)
    .bind(normal.id)
    .execute(&stack.sales_db)
    .await
    .unwrap();

    let mut cases = Vec::new();
    // Placing an order: NUL and friends in every text field, and the rest.
    let text_fields = [
        ("customer_id", "/customer_id"),
        ("items[0].product_id", "/items/0/product_id"),
        ("shipping_address.recipient", "/shipping_address/recipient"),
        ("shipping_address.line1", "/shipping_address/line1"),
        ("shipping_address.line2", "/shipping_address/line2"),
        ("shipping_address.city", "/shipping_address/city"),
        (
            "shipping_address.postal_code",
            "/shipping_address/postal_code",
        ),
        ("shipping_address.country", "/shipping_address/country"),
    ];
    for (field, pointer) in text_fields {
        for bad in bad_texts(200) {
            let mut body = order_body("bad-input", &[("SKU-A", 1)]);
            let (parent, key) = pointer.rsplit_once('/').unwrap();
            body.pointer_mut(parent).unwrap()[key] = bad;
            cases.push(case(
                Method::POST,
                "/orders",
                Body::Json(body),
                422,
                Some(field),
            ));
        }
    }
    let mut blank = order_body(" ", &[(" ", 1)]);
    blank["shipping_address"]["city"] = json!("\t");
    cases.push(case(
        Method::POST,
        "/orders",
        Body::Json(blank),
        422,
        Some("items[0].product_id"),
    ));
    cases.push(case(
        Method::POST,
        "/orders",
        Body::Json(json!({})),
        422,
        Some("shipping_address"),
    ));
    cases.push(case(
        Method::POST,
        "/orders",
        Body::Raw("text/plain", "hello"),
        415,
        None,
    ));
    cases.push(case(
        Method::POST,
        "/orders",
        Body::Raw("application/json", "{not json"),
        400,
        None,
    ));

    // Cancelling, rejecting and approving both orders.
    for order in [normal.id, fallback.id] {
        let cancel = format!("/orders/{order}/cancel");
        for bad in bad_texts(500) {
            cases.push(case(
                Method::POST,
                &cancel,
                Body::Json(json!({"reason": bad})),
                422,
                Some("reason"),
            ));
        }
        cases.push(case(
            Method::POST,
            &cancel,
            Body::Json(json!("why")),
            422,
            Some("body"),
        ));
        cases.push(case(
            Method::POST,
            &cancel,
            Body::Raw("text/plain", "why"),
            415,
            None,
        ));
        cases.push(case(
            Method::POST,
            &cancel,
            Body::Raw("application/json", "{"),
            400,
            None,
        ));
        for decision in ["approve", "reject"] {
            let path = format!("/review/orders/{order}/{decision}");
            for bad in bad_texts(2000)
                .into_iter()
                .chain([json!(" \n "), json!(null)])
            {
                cases.push(case(
                    Method::POST,
                    &path,
                    Body::Json(json!({"note": bad})),
                    422,
                    Some("note"),
                ));
            }
            cases.push(case(
                Method::POST,
                &path,
                Body::Json(json!({})),
                422,
                Some("note"),
            ));
            cases.push(case(Method::POST, &path, Body::None, 415, None));
            cases.push(case(
                Method::POST,
                &path,
                Body::Raw("text/plain", "ok"),
                415,
                None,
            ));
            let mut anonymous = case(
                Method::POST,
                &path,
                Body::Json(json!({"note": "ok"})),
                401,
                None,
            );
            anonymous.staff = false;
            cases.push(anonymous);
        }
    }
    for path in [
        "/orders/not-a-uuid/cancel",
        "/orders/a%00b/cancel",
        "/review/orders/a%00b/reject",
    ] {
        cases.push(case(
            Method::POST,
            path,
            Body::Json(json!({"note": "ok"})),
            400,
            Some("id"),
        ));
    }
    let long = "x".repeat(201);
    cases.push(case(
        Method::POST,
        &format!("/review/orders/{long}/approve"),
        Body::Json(json!({"note": "ok"})),
        400,
        Some("id"),
    ));

    // Dead letters.
    let discard = format!("/outbox/failed/{dead}/discard");
    for bad in bad_texts(1000).into_iter().chain([json!(""), json!(" ")]) {
        cases.push(case(
            Method::POST,
            &discard,
            Body::Json(json!({"reason": bad})),
            422,
            Some("reason"),
        ));
    }
    cases.push(case(
        Method::POST,
        &discard,
        Body::Json(json!({})),
        422,
        Some("reason"),
    ));
    cases.push(case(
        Method::POST,
        &discard,
        Body::Raw("text/plain", "dup"),
        415,
        None,
    ));
    cases.push(case(
        Method::POST,
        "/outbox/failed/a%00b/discard",
        Body::Json(json!({"reason": "dup"})),
        400,
        Some("id"),
    ));
    cases.push(case(
        Method::POST,
        "/outbox/failed/nope/replay",
        Body::None,
        400,
        Some("id"),
    ));
    for path in [
        format!("/outbox/failed/{dead}/replay"),
        "/outbox/failed/replay".to_owned(),
        discard.clone(),
    ] {
        let mut anonymous = case(
            Method::POST,
            &path,
            Body::Json(json!({"reason": "dup"})),
            401,
            None,
        );
        anonymous.staff = false;
        cases.push(anonymous);
    }
    // Reads with bad parameters (no effects, but no 500 either).
    cases.push(case(
        Method::GET,
        "/orders?customer_id=a%00b",
        Body::None,
        400,
        Some("customer_id"),
    ));
    cases.push(case(
        Method::GET,
        &format!("/orders?cursor={long}"),
        Body::None,
        400,
        Some("cursor"),
    ));
    cases.push(case(
        Method::GET,
        "/review/orders?reason=%01",
        Body::None,
        400,
        Some("reason"),
    ));

    let before = database_state(&stack, &product_db).await;
    for c in &cases {
        let response = build(&stack, c).send().await.unwrap();
        let problem = expect_rejected(response, c.status, c.field).await;
        if c.status == 401 {
            assert!(problem.title.contains("credential"), "{problem:?}");
        }
    }
    assert_eq!(
        database_state(&stack, &product_db).await,
        before,
        "a rejected request changed something"
    );

    // Nothing changed: the orders are as they were, delivery and reservation too.
    for (order, status) in [
        (&normal, OrderStatus::PendingShipment),
        (&fallback, OrderStatus::PendingShipment),
    ] {
        let now: Order =
            expect_json(stack.api().get(&format!("/orders/{}", order.id)).await, 200).await;
        assert_eq!((now.status, now.version), (status, order.version));
    }
    // And the breaker saw no database failure.
    let reliability: Value = expect_json(stack.api().get("/health/reliability").await, 200).await;
    let database = reliability["breakers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "database")
        .cloned()
        .unwrap();
    let state = database["state"].as_str().map(str::to_ascii_uppercase);
    assert_eq!(
        (state.as_deref(), database["failures"].as_u64()),
        (Some("CLOSED"), Some(0)),
        "{database}"
    );
    println!("{} bad requests, none changed anything", cases.len());

    // The same orders do change with a valid request: the checks above can fail.
    let cancelled: Order = expect_json(
        stack
            .api()
            .post(
                &format!("/orders/{}/cancel", normal.id),
                &json!({"reason": "changed my mind\nreally"}),
            )
            .await,
        200,
    )
    .await;
    assert_eq!(cancelled.status, OrderStatus::Cancelled);
    assert_ne!(database_state(&stack, &product_db).await, before);
}

#[sqlx::test(migrations = false)]
async fn cancel_takes_no_body_null_or_an_object(_pool: PgPoolOptions, options: PgConnectOptions) {
    let stack = Stack::start(options).await;
    for body in [
        Body::None,
        Body::Raw("application/json", "null"),
        Body::Json(json!({})),
        Body::Json(json!({"reason": null})),
    ] {
        let order: Order = expect_json(
            stack.place(&order_body("c", &[("SKU-A", 1)]), None).await,
            201,
        )
        .await;
        let c = Case {
            method: Method::POST,
            path: format!("/orders/{}/cancel", order.id),
            body,
            staff: false,
            status: 200,
            field: None,
        };
        let cancelled: Order = expect_json(build(&stack, &c).send().await.unwrap(), 200).await;
        assert_eq!(cancelled.status, OrderStatus::Cancelled);
    }
}
