//! Reading orders: by id, and pages by customer and status with a cursor.

use std::collections::HashSet;

use contracts::orders::{Order, OrderPage};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use testkit::{expect_json, expect_problem, fields};

use crate::{Stack, order_body};

#[sqlx::test(migrations = false)]
async fn pages_walk_a_customers_orders_newest_first(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let stack = Stack::start(options).await;
    stack.add_product("SKU-MANY", 100).await;
    let mut placed = Vec::new();
    for i in 0..5 {
        let order: Order = expect_json(
            stack
                .place(&order_body("dana", &[("SKU-MANY", 1)]), None)
                .await,
            201,
        )
        .await;
        placed.push(order.id);
        if i == 0 {
            expect_json::<Order>(
                stack
                    .place(&order_body("erin", &[("SKU-MANY", 1)]), None)
                    .await,
                201,
            )
            .await;
        }
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/orders?customer_id=dana&limit=2".to_owned();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page: OrderPage = expect_json(stack.api().get(&path).await, 200).await;
        assert!(page.orders.len() <= 2);
        seen.extend(page.orders.iter().map(|o| o.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    placed.reverse();
    assert_eq!(seen, placed, "every order once, newest first");
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), 5);

    let all: OrderPage = expect_json(
        stack
            .api()
            .get("/orders?status=PENDING_SHIPMENT&limit=100")
            .await,
        200,
    )
    .await;
    assert_eq!(all.orders.len(), 6);
    assert!(all.next_cursor.is_none());
    let none: OrderPage = expect_json(stack.api().get("/orders?status=DELIVERED").await, 200).await;
    assert!(none.orders.is_empty());
}

#[sqlx::test(migrations = false)]
async fn bad_queries_and_unknown_orders_are_problems(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let stack = Stack::start(options).await;
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=x", "limit"),
        ("status=LOST", "status"),
        ("cursor=garbage", "cursor"),
    ] {
        let problem = expect_problem(stack.api().get(&format!("/orders?{query}")).await, 400).await;
        assert_eq!(fields(&problem), [field], "{query}");
    }
    expect_problem(
        stack
            .api()
            .get(&format!("/orders/{}", uuid::Uuid::new_v4()))
            .await,
        404,
    )
    .await;
    expect_problem(stack.api().get("/orders/not-a-uuid").await, 400).await;
}
