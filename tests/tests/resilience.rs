//! Faults with real processes: product hanging, delivery gone, the sales
//! database cut off. Each test asserts the databases' state, not log lines.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use contracts::orders::Order;
use serde_json::Value;
use system_tests::{SalesClient, Stack, StackOptions, order_request};

/// `POST /orders` of one mouse for `customer`, unchecked: these tests read the status.
async fn place(sales: &SalesClient, customer: &str) -> reqwest::Response {
    sales
        .place_raw(&order_request(customer, &[("SKU-MOUSE", 1)]), None)
        .await
}

#[tokio::test]
async fn product_hanging_orders_are_flagged_and_fail_fast_once_the_breaker_opens() {
    let stack = Stack::start_with(StackOptions {
        sales_env: vec![
            ("SALES_BREAKER_PRODUCT_VOLUME_THRESHOLD", "3".into()),
            ("SALES_BREAKER_PRODUCT_CALL_TIMEOUT_MS", "1000".into()),
            ("SALES_BREAKER_PRODUCT_RESET_TIMEOUT_MS", "60000".into()),
        ],
        ..StackOptions::default()
    })
    .await;
    let sales = stack.sales_api();
    stack.product.pause(); // accepts connections, never answers

    let mut slow = Vec::new();
    let mut ids = Vec::new();
    for i in 0..3 {
        let started = Instant::now();
        let response = place(&sales, &format!("c{i}")).await;
        slow.push(started.elapsed());
        assert_eq!(response.status(), 201);
        let order: Order = response.json().await.unwrap();
        assert!(order.requires_manual_review && order.fallback_used);
        ids.push(order.id);
    }
    let states = sales.reliability().await;
    assert_eq!(states["circuitBreakerStates"]["product-service"], "OPEN");

    let started = Instant::now();
    let response = place(&sales, "fast").await;
    let fast = started.elapsed();
    assert_eq!(response.status(), 201);
    let order: Order = response.json().await.unwrap();
    assert!(order.requires_manual_review && order.fallback_used);
    ids.push(order.id);
    println!("fallback latency: while timing out {slow:?}; with the breaker open {fast:?}");
    // Until the breaker opened, calls waited for the timeout (the availability re-check,
    // woken by the first fallback order, calls product too and may open it sooner).
    assert!(
        slow[0] >= Duration::from_millis(1000),
        "the first call waited for the timeout: {slow:?}"
    );
    assert!(
        fast < Duration::from_millis(500),
        "an open breaker answers without waiting for the timeout: {fast:?}"
    );

    let sales = stack.db("sales").await;
    for id in &ids {
        let (flagged, fallback): (bool, bool) = sqlx::query_as(
            "SELECT requires_manual_review, fallback_used FROM orders WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&sales)
        .await
        .unwrap();
        assert!(flagged && fallback);
        let reviews: Vec<String> = sqlx::query_scalar(
            "SELECT reason FROM manual_reviews WHERE order_id = $1 AND status = 'OPEN'",
        )
        .bind(id)
        .fetch_all(&sales)
        .await
        .unwrap();
        assert_eq!(reviews, ["AVAILABILITY_UNVERIFIED"]);
        let events: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox_events WHERE aggregate_id = $1 AND event_type = 'AVAILABILITY_CHECK_FALLBACK_USED'",
        )
        .bind(id)
        .fetch_one(&sales)
        .await
        .unwrap();
        assert_eq!(events, 1);
    }
    sales.close().await;
    stack.product.resume();
    assert!(stack.shutdown().await);
}

#[tokio::test]
async fn delivery_down_every_order_gets_exactly_one_delivery_once_it_returns() {
    let mut stack = Stack::start_with(StackOptions {
        sales_env: vec![
            ("SALES_DELIVERY_RETRY_FIRST_DELAY_MS", "200".into()),
            ("SALES_DELIVERY_RETRY_MAX_DELAY_MS", "1000".into()),
            ("SALES_DELIVERY_RETRY_POLL_INTERVAL_MS", "100".into()),
            ("SALES_BREAKER_DELIVERY_RESET_TIMEOUT_MS", "500".into()),
        ],
        ..StackOptions::default()
    })
    .await;
    let sales = stack.sales_api();
    stack.delivery.stop().await;

    let mut ids = Vec::new();
    for i in 0..8 {
        let response = place(&sales, &format!("d{i}")).await;
        assert_eq!(response.status(), 201);
        let order: Order = response.json().await.unwrap();
        assert_eq!(order.delivery_id, None);
        ids.push(order.id);
    }
    let sales = stack.db("sales").await;
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM delivery_retries WHERE status = 'PENDING'")
            .fetch_one(&sales)
            .await
            .unwrap();
    assert_eq!(pending, 8);
    let failed_events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox_events WHERE event_type = 'DELIVERY_INITIATION_FAILED'",
    )
    .fetch_one(&sales)
    .await
    .unwrap();
    // Attempts made before the delivery breaker opened are recorded as events
    // (the retry worker's attempts count toward opening it too); the rest were
    // refused by the open breaker without a call. All 8 wait in retry rows.
    assert!(
        (1..=8).contains(&failed_events),
        "failed initiations are recorded as events ({failed_events})"
    );

    stack.delivery.start().await;
    let back = Instant::now();
    let deadline = back + Duration::from_secs(30);
    loop {
        let missing: i64 =
            sqlx::query_scalar("SELECT count(*) FROM orders WHERE delivery_id IS NULL")
                .fetch_one(&sales)
                .await
                .unwrap();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} orders still without a delivery after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "delivery back → all {} pending deliveries initiated in {:?}",
        ids.len(),
        back.elapsed()
    );

    let delivery = stack.db("delivery").await;
    for id in &ids {
        let (count, delivery_id): (i64, Option<uuid::Uuid>) = sqlx::query_as(
            "SELECT count(*), min(id::text)::uuid FROM deliveries WHERE order_id = $1",
        )
        .bind(id)
        .fetch_one(&delivery)
        .await
        .unwrap();
        assert_eq!(count, 1, "exactly one delivery for {id}");
        let recorded: Option<uuid::Uuid> =
            sqlx::query_scalar("SELECT delivery_id FROM orders WHERE id = $1")
                .bind(id)
                .fetch_one(&sales)
                .await
                .unwrap();
        assert_eq!(recorded, delivery_id);
    }
    let done: i64 =
        sqlx::query_scalar("SELECT count(*) FROM delivery_retries WHERE status = 'DONE'")
            .fetch_one(&sales)
            .await
            .unwrap();
    assert_eq!(done, 8);
    let initiated: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox_events WHERE event_type = 'DELIVERY_INITIATED'",
    )
    .fetch_one(&sales)
    .await
    .unwrap();
    assert_eq!(initiated, 8);
    sales.close().await;
    delivery.close().await;
    assert!(stack.shutdown().await);
}

#[tokio::test]
async fn database_cut_off_answers_503_then_recovers_without_restart() {
    let stack = Stack::start_with(StackOptions {
        sales_env: vec![
            ("SALES_BREAKER_DATABASE_RESET_TIMEOUT_MS", "1000".into()),
            ("SALES_DATABASE_ACQUIRE_TIMEOUT_MS", "500".into()),
        ],
        sales_db_proxy: true,
        ..StackOptions::default()
    })
    .await;
    let sales = stack.sales_api();
    assert_eq!(place(&sales, "before").await.status(), 201);
    let product = stack.db("product").await;
    let reservations = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM reservations")
            .fetch_one(&product)
            .await
            .unwrap()
    };

    let proxy = stack.sales_db_proxy.as_ref().unwrap();
    proxy.set_down(true);
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let response = sales.get_raw("/orders?limit=1").await;
        assert!(response.headers().contains_key("retry-after"));
        statuses.push(response.status().as_u16());
    }
    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");
    let states = sales.reliability().await;
    assert_eq!(states["circuitBreakerStates"]["database"], "OPEN");
    let ready = sales.get_raw("/health/ready").await;
    assert_eq!(ready.status(), 503);

    let before = reservations().await;
    let response = place(&sales, "during").await;
    assert_eq!(response.status(), 503);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=1).contains(&retry_after),
        "Retry-After is the breaker's remaining open time: {retry_after}"
    );
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["title"], "System temporarily unavailable");
    assert_eq!(
        reservations().await,
        before,
        "no downstream call while the database breaker is open"
    );

    proxy.set_down(false);
    let back = Instant::now();
    let deadline = back + Duration::from_secs(20);
    loop {
        let response = place(&sales, "after").await;
        if response.status() == 201 {
            break;
        }
        assert_eq!(response.status(), 503);
        assert!(
            Instant::now() < deadline,
            "sales did not recover without a restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "database back → orders accepted again in {:?}",
        back.elapsed()
    );
    let ready = sales.get_raw("/health/ready").await;
    assert_eq!(ready.status(), 200);
    product.close().await;
    assert!(stack.shutdown().await);
}

/// The value of one sample in a Prometheus scrape, e.g. `bulkhead_rejected_total{bulkhead="product"}`.
fn sample(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_hung_product_holds_no_more_requests_than_its_bulkhead() {
    // Product hangs (connections accepted, never answered) while its breaker is still
    // closed: without a cap every order of a burst would wait for the 3 s call timeout.
    let hung = system_tests::proxy::Proxy::start("127.0.0.1:9".parse().unwrap()).await;
    hung.set_hung(true);
    let stack = Stack::start_with(StackOptions {
        sales_env: vec![
            (
                "SALES_PRODUCT_URL",
                format!("http://127.0.0.1:{}", hung.port),
            ),
            ("SALES_BULKHEAD_PRODUCT_MAX_CONCURRENT", "4".into()),
        ],
        ..StackOptions::default()
    })
    .await;
    let sales = stack.sales_api();
    let burst = 40;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..burst {
        let sales = sales.clone();
        tasks.spawn(async move {
            let began = Instant::now();
            let response = place(&sales, &format!("burst{i}")).await;
            let status = response.status();
            let order: Order = response.json().await.unwrap();
            (status, order, began.elapsed())
        });
    }
    let answers = tasks.join_all().await;
    let took = started.elapsed();
    let mut latencies: Vec<Duration> = answers.iter().map(|(_, _, d)| *d).collect();
    latencies.sort();
    println!(
        "{burst} orders with product hung: all answered in {took:?}; p50 {:?}, slowest {:?}; \
         product saw at most {} connections at once",
        latencies[burst / 2],
        latencies[burst - 1],
        hung.peak_connections()
    );
    for (status, order, _) in &answers {
        assert_eq!(status.as_u16(), 201);
        assert!(order.fallback_used && order.requires_manual_review);
    }
    assert!(
        hung.peak_connections() <= 4,
        "the bulkhead caps the calls in flight to product: {}",
        hung.peak_connections()
    );
    let scrape = sales.get_raw("/metrics").await.text().await.unwrap();
    let refused = sample(&scrape, "bulkhead_rejected_total{bulkhead=\"product\"}");
    assert!(
        refused >= (burst - 4 - 10) as f64,
        "the calls over the cap took the fallback at once: {refused}"
    );
    assert!(stack.shutdown().await);
}
