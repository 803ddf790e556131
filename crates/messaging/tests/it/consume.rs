use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use messaging::{Consumer, ConsumerConfig, Envelope, HandlerError, handler_fn, provision};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::common::{drain, envelope, eventually, publish_all, sdk, single_queue, teardown};

fn config(queue_url: &str, wait: i32, visibility: i32, extend_after: Duration) -> ConsumerConfig {
    ConsumerConfig {
        queue_url: queue_url.to_owned(),
        wait_time_secs: wait,
        max_messages: 10,
        visibility_timeout_secs: visibility,
        extend_after,
        gather: Duration::ZERO,
    }
}

#[tokio::test]
async fn consumer_deletes_only_handled_messages() {
    let sdk = sdk().await;
    let (topology, name) = single_queue("cons-del", 10, 1);
    let provisioned = provision(&sdk, &topology).await.unwrap();
    let url = provisioned.queue_urls[&name].clone();

    let events = [
        envelope("ORDER_CREATED"),
        envelope("ORDER_CREATED"),
        envelope("ORDER_CONFIRMED"),
    ];
    let failing = events[1].event_id;
    publish_all(&sdk, &provisioned.topic_arn, &events).await;

    let seen: Arc<std::sync::Mutex<Vec<Uuid>>> = Arc::default();
    let handler = handler_fn({
        let seen = seen.clone();
        move |e: Envelope| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(e.event_id);
                if e.event_id == failing {
                    Err(HandlerError::retry("stock service unavailable"))
                } else {
                    Ok(())
                }
            }
        }
    });
    let consumer = Consumer::new(&sdk, config(&url, 1, 1, Duration::from_secs(30)));

    // Until the failing event has been handled twice (so it came back), and everything once.
    let mut totals = messaging::PollReport::default();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let count = |id| seen.lock().unwrap().iter().filter(|s| **s == id).count();
        if count(failing) >= 2 && events.iter().all(|e| count(e.event_id) >= 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "timed out; handled {:?}",
            seen.lock().unwrap()
        );
        let report = consumer.poll_once(&handler).await.unwrap();
        totals.received += report.received;
        totals.handled += report.handled;
        totals.failed += report.failed;
        totals.malformed += report.malformed;
    }

    let seen = seen.lock().unwrap().clone();
    for e in &events {
        let n = seen.iter().filter(|s| **s == e.event_id).count();
        if e.event_id == failing {
            assert!(n >= 2, "the failing event reappears: {n}");
        } else {
            assert_eq!(n, 1, "a handled event is deleted and not seen again");
        }
    }
    assert_eq!(totals.handled, 2);
    assert_eq!(totals.malformed, 0);
    assert_eq!(totals.failed, totals.received - 2);
    // Only the failing one is left.
    let left = drain(
        &sdk,
        &url,
        1,
        Duration::from_secs(10),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(left.len(), 1);
    assert_eq!(
        Envelope::from_json(left[0].body().unwrap())
            .unwrap()
            .event_id,
        failing
    );

    teardown(&sdk, &provisioned).await;
}

#[tokio::test]
async fn malformed_message_lands_in_the_dlq() {
    let sdk = sdk().await;
    let (topology, name) = single_queue("cons-dlq", 2, 1);
    let provisioned = provision(&sdk, &topology).await.unwrap();
    let url = provisioned.queue_urls[&name].clone();
    let dlq_url = provisioned.dlq_urls[&name].clone();

    let body = "this is not an envelope";
    aws_sdk_sqs::Client::new(&sdk)
        .send_message()
        .queue_url(&url)
        .message_body(body)
        .send()
        .await
        .unwrap();

    let handled = Arc::new(AtomicUsize::new(0));
    let handler = handler_fn({
        let handled = handled.clone();
        move |_| {
            handled.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        }
    });
    let consumer = Consumer::new(&sdk, config(&url, 1, 1, Duration::from_secs(30)));
    let mut malformed = 0;
    let deadline = Instant::now() + Duration::from_secs(40);
    while consumer.queue_depth(&dlq_url).await.unwrap() == 0 {
        assert!(
            Instant::now() < deadline,
            "not in the DLQ after 40 s ({malformed} receives)"
        );
        let report = consumer.poll_once(&handler).await.unwrap();
        assert_eq!(report.handled + report.failed, 0, "{report:?}");
        malformed += report.malformed;
    }
    assert_eq!(
        malformed, 2,
        "received max_receive_count times before redrive"
    );
    assert_eq!(handled.load(Ordering::SeqCst), 0);

    let dead = drain(
        &sdk,
        &dlq_url,
        1,
        Duration::from_secs(10),
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body(), Some(body));
    assert_eq!(consumer.queue_depth(&url).await.unwrap(), 0);

    teardown(&sdk, &provisioned).await;
}

#[tokio::test]
async fn visibility_extension_keeps_a_slow_handlers_message_invisible() {
    let sdk = sdk().await;
    let (topology, name) = single_queue("cons-slow", 10, 2);
    let provisioned = provision(&sdk, &topology).await.unwrap();
    let url = provisioned.queue_urls[&name].clone();

    let started = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let handler = handler_fn({
        let (started, finished) = (started.clone(), finished.clone());
        move |_| {
            let (started, finished) = (started.clone(), finished.clone());
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                // Well over the 2 s visibility timeout.
                tokio::time::sleep(Duration::from_secs(6)).await;
                finished.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        }
    });
    // Two consumers on the queue, like two replicas: without extension the second would receive
    // the message once the first one's visibility timeout expired.
    let consumer = Consumer::new(&sdk, config(&url, 1, 2, Duration::from_millis(700)));
    let token = CancellationToken::new();
    let replicas: Vec<_> = (0..2)
        .map(|_| {
            let (consumer, handler, token) = (consumer.clone(), handler.clone(), token.clone());
            tokio::spawn(async move { consumer.run(handler, token).await })
        })
        .collect();

    publish_all(&sdk, &provisioned.topic_arn, &[envelope("ORDER_CREATED")]).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            finished.load(Ordering::SeqCst) == 1
        })
        .await,
        "the slow handler did not finish"
    );
    // Give a wrongly re-shown message time to be received by the other replica.
    tokio::time::sleep(Duration::from_secs(3)).await;
    token.cancel();
    for replica in replicas {
        tokio::time::timeout(Duration::from_secs(15), replica)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(started.load(Ordering::SeqCst), 1, "received once only");
    assert_eq!(
        consumer.queue_depth(&url).await.unwrap(),
        0,
        "deleted after success"
    );

    teardown(&sdk, &provisioned).await;
}

#[tokio::test]
async fn run_stops_when_cancelled_after_finishing_in_flight_messages() {
    let sdk = sdk().await;
    let (topology, name) = single_queue("cons-run", 5, 30);
    let provisioned = provision(&sdk, &topology).await.unwrap();
    let url = provisioned.queue_urls[&name].clone();

    let started = Arc::new(Notify::new());
    let done = Arc::new(AtomicBool::new(false));
    let handler = handler_fn({
        let (started, done) = (started.clone(), done.clone());
        move |_| {
            let (started, done) = (started.clone(), done.clone());
            async move {
                started.notify_one();
                tokio::time::sleep(Duration::from_secs(1)).await;
                done.store(true, Ordering::SeqCst);
                Ok(())
            }
        }
    });
    let consumer = Consumer::new(&sdk, config(&url, 10, 30, Duration::from_secs(10)));
    let token = CancellationToken::new();
    let run = tokio::spawn({
        let (consumer, token) = (consumer.clone(), token.clone());
        async move { consumer.run(handler, token).await }
    });

    publish_all(&sdk, &provisioned.topic_arn, &[envelope("ORDER_CREATED")]).await;
    tokio::time::timeout(Duration::from_secs(20), started.notified())
        .await
        .expect("the event was not handled");
    // Cancelled while the handler runs: run finishes it (and deletes the message) first.
    token.cancel();
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .unwrap()
        .unwrap();
    assert!(done.load(Ordering::SeqCst), "in-flight handler finished");
    assert_eq!(consumer.queue_depth(&url).await.unwrap(), 0);

    // Cancelled while idle in a 10 s long poll: stops at once.
    let token = CancellationToken::new();
    let idle = tokio::spawn({
        let (consumer, token) = (consumer.clone(), token.clone());
        async move { consumer.run(handler_fn(|_| async { Ok(()) }), token).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cancelled_at = Instant::now();
    token.cancel();
    tokio::time::timeout(Duration::from_secs(2), idle)
        .await
        .unwrap()
        .unwrap();
    assert!(cancelled_at.elapsed() < Duration::from_secs(2));

    teardown(&sdk, &provisioned).await;
}

#[tokio::test]
async fn run_backs_off_while_the_broker_is_unreachable_and_still_stops() {
    // Nothing listens on port 9 of loopback: every receive fails to connect.
    let sdk = messaging::aws::emulator_sdk_config("http://127.0.0.1:9").await;
    let consumer = Consumer::new(
        &sdk,
        ConsumerConfig::new("http://127.0.0.1:9/queue/us-east-1/000000000000/nowhere"),
    );
    assert!(
        consumer
            .poll_once(&handler_fn(|_| async { Ok(()) }))
            .await
            .is_err()
    );
    assert!(
        consumer
            .queue_depth(&consumer.config().queue_url)
            .await
            .is_err()
    );

    let token = CancellationToken::new();
    let run = tokio::spawn({
        let (consumer, token) = (consumer.clone(), token.clone());
        async move { consumer.run(handler_fn(|_| async { Ok(()) }), token).await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!run.is_finished(), "run keeps retrying");
    token.cancel();
    tokio::time::timeout(Duration::from_secs(2), run)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn gathering_receives_what_arrived_in_the_pause_in_one_batch() {
    let sdk = sdk().await;
    let (topology, name) = single_queue("cons-gather", 5, 30);
    let provisioned = provision(&sdk, &topology).await.unwrap();
    let url = provisioned.queue_urls[&name].clone();

    let gather = Duration::from_millis(1500);
    let handled: Arc<std::sync::Mutex<Vec<(Uuid, Instant)>>> = Arc::default();
    let handler = handler_fn({
        let handled = handled.clone();
        move |e: Envelope| {
            let handled = handled.clone();
            async move {
                handled.lock().unwrap().push((e.event_id, Instant::now()));
                Ok(())
            }
        }
    });
    let consumer =
        Consumer::new(&sdk, config(&url, 10, 30, Duration::from_secs(10))).gathering(gather);
    let token = CancellationToken::new();
    let run = tokio::spawn({
        let (consumer, token) = (consumer.clone(), token.clone());
        async move { consumer.run(handler, token).await }
    });

    // A lone event is received at once (the long poll is waiting for it).
    let first = envelope("ORDER_CREATED");
    publish_all(&sdk, &provisioned.topic_arn, std::slice::from_ref(&first)).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            handled.lock().unwrap().len() == 1
        })
        .await,
        "the first event was not handled"
    );
    let first_at = handled.lock().unwrap()[0].1;
    // Three more while the consumer pauses: received together, not before the pause ends.
    let later = [
        envelope("ORDER_CREATED"),
        envelope("ORDER_CREATED"),
        envelope("ORDER_CREATED"),
    ];
    publish_all(&sdk, &provisioned.topic_arn, &later).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            handled.lock().unwrap().len() == 4
        })
        .await,
        "the later events were not handled: {:?}",
        handled.lock().unwrap()
    );
    let times: Vec<Instant> = handled.lock().unwrap()[1..]
        .iter()
        .map(|(_, at)| *at)
        .collect();
    // The pause is measured from the first receive, which ended just before its handler ran.
    let slack = Duration::from_millis(200);
    for at in &times {
        assert!(
            *at + slack >= first_at + gather,
            "an event was received {:?} after the first, inside the {gather:?} pause",
            at.duration_since(first_at)
        );
    }
    let (earliest, latest) = (times.iter().min().unwrap(), times.iter().max().unwrap());
    assert!(
        latest.duration_since(*earliest) < Duration::from_millis(500),
        "what arrived in the pause came in one receive: {times:?}"
    );

    token.cancel();
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(consumer.queue_depth(&url).await.unwrap(), 0);
    teardown(&sdk, &provisioned).await;
}
