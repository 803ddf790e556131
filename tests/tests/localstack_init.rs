//! The LocalStack init script of docker compose
//! (`localstack/init/ready.d/10-sales-events.sh`) against the host-mode LocalStack:
//! it creates exactly what `messaging::provision` creates (same topic, queues, DLQ,
//! attributes and one subscription) through its boto3 path, it is idempotent
//! either way round, and the services run on its topology with their own
//! provisioning off. Also: every shell script parses. Its AWS CLI path (the one
//! the LocalStack container takes) is not run here: no AWS CLI is installed on
//! this machine or CI, and a test that skips itself would pass unchecked.
#![allow(clippy::unwrap_used)]

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aws_config::SdkConfig;
use aws_sdk_sqs::types::QueueAttributeName;
use messaging::{QueueSpec, Topology, provision::filter_policy};
use serde_json::{Value, json};
use system_tests::{Stack, StackOptions, aws_endpoint};
use uuid::Uuid;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn script() -> PathBuf {
    root().join("localstack/init/ready.d/10-sales-events.sh")
}

/// Unique topic and queue names for one test.
fn names(label: &str) -> (String, String) {
    let run = Uuid::new_v4().simple().to_string();
    (
        format!("init-{label}-events-{}", &run[..10]),
        format!("init-{label}-queue-{}", &run[..10]),
    )
}

/// The event types product consumes, as product provisions them.
fn consumed() -> Vec<String> {
    product::order_events::CONSUMED
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

/// What product's start-up provisioning asks for with the default settings.
fn topology(topic: &str, queue: &str) -> Topology {
    Topology {
        topic_name: topic.to_owned(),
        queues: vec![QueueSpec {
            name: queue.to_owned(),
            event_types: consumed(),
            excluded_statuses: vec![],
            max_receive_count: 5,
            visibility_timeout_secs: 30,
        }],
    }
}

/// What sales' start-up provisioning of delivery's events asks for with the default settings.
fn delivery_topology(topic: &str, queue: &str) -> Topology {
    Topology {
        topic_name: topic.to_owned(),
        queues: vec![QueueSpec {
            name: queue.to_owned(),
            event_types: sales::workers::delivery_events::CONSUMED
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            excluded_statuses: sales::workers::delivery_events::NOT_DELIVERED
                .iter()
                .map(|s| s.as_str().to_owned())
                .collect(),
            max_receive_count: 5,
            visibility_timeout_secs: 30,
        }],
    }
}

/// The delivery-events hook (boto3 path) creates what sales provisions, byte for byte:
/// delivery's topic, sales' queue and DLQ, and a subscription dropping CREATED; the code's
/// provisioning after it finds nothing to change.
#[tokio::test]
async fn the_delivery_events_hook_creates_what_sales_provisions() {
    let sdk = messaging::aws::emulator_sdk_config(&aws_endpoint()).await;
    let (topic, queue) = names("delivery");
    for _ in 0..2 {
        let out = tokio::process::Command::new("bash")
            .arg(root().join("localstack/init/ready.d/20-delivery-events.sh"))
            .env("AWS_ENDPOINT_URL", aws_endpoint())
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("DELIVERY_TOPIC_NAME", &topic)
            .env("DELIVERY_QUEUE_NAME", &queue)
            .env("PROVISION_WITH", "python")
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "20-delivery-events.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let by_script = snapshot(&sdk, &topic, &queue).await;
    assert_eq!(by_script.subscriptions.len(), 1, "{by_script:#?}");
    assert_eq!(
        by_script.subscriptions[0]["FilterPolicy"],
        r#"{"event_type":["DELIVERY_STATUS_CHANGED"],"status":[{"anything-but":["CREATED"]}]}"#
    );
    messaging::provision(&sdk, &delivery_topology(&topic, &queue))
        .await
        .unwrap();
    let after_code = snapshot(&sdk, &topic, &queue).await;
    assert_eq!(after_code, by_script, "provision() found nothing to change");
    cleanup(&sdk, &after_code).await;
}

/// Runs the init script (`with`: `cli`, `python` or `auto`) against the test LocalStack.
async fn run_script(with: &str, topic: &str, queue: &str) {
    let out = tokio::process::Command::new("bash")
        .arg(script())
        .env("AWS_ENDPOINT_URL", aws_endpoint())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("TOPIC_NAME", topic)
        .env("QUEUE_NAME", queue)
        .env("PROVISION_WITH", with)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "init script ({with}) failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Everything observable about the topology of `topic`/`queue`, read without creating anything.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    topic_arn: String,
    queue_url: String,
    dlq_url: String,
    /// VisibilityTimeout, RedrivePolicy, Policy and QueueArn of the queue.
    queue: BTreeMap<String, String>,
    /// MessageRetentionPeriod and QueueArn of the DLQ.
    dlq: BTreeMap<String, String>,
    /// Each subscription of the topic: Protocol, Endpoint, RawMessageDelivery, FilterPolicy.
    subscriptions: Vec<BTreeMap<String, String>>,
}

async fn snapshot(sdk: &SdkConfig, topic: &str, queue: &str) -> Snapshot {
    let sns = aws_sdk_sns::Client::new(sdk);
    let sqs = aws_sdk_sqs::Client::new(sdk);

    let mut topic_arn = None;
    let mut pages = sns.list_topics().into_paginator().send();
    while let Some(page) = pages.next().await {
        for t in page.unwrap().topics() {
            let arn = t.topic_arn().unwrap_or_default();
            if arn.rsplit(':').next() == Some(topic) {
                topic_arn = Some(arn.to_owned());
            }
        }
    }
    let topic_arn = topic_arn.unwrap_or_else(|| panic!("topic {topic} does not exist"));

    let url_of = |name: String| {
        let sqs = sqs.clone();
        async move {
            sqs.get_queue_url()
                .queue_name(&name)
                .send()
                .await
                .unwrap_or_else(|e| panic!("queue {name}: {e:?}"))
                .queue_url()
                .unwrap()
                .to_owned()
        }
    };
    let attrs_of = |url: String, keep: &'static [&'static str]| {
        let sqs = sqs.clone();
        async move {
            let out = sqs
                .get_queue_attributes()
                .queue_url(&url)
                .attribute_names(QueueAttributeName::All)
                .send()
                .await
                .unwrap();
            out.attributes()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
                .filter(|(k, _)| keep.contains(&k.as_str()))
                .collect::<BTreeMap<_, _>>()
        }
    };
    let queue_url = url_of(queue.to_owned()).await;
    let dlq_url = url_of(format!("{queue}-dlq")).await;
    let queue_attrs = attrs_of(
        queue_url.clone(),
        &["VisibilityTimeout", "RedrivePolicy", "Policy", "QueueArn"],
    )
    .await;
    let dlq_attrs = attrs_of(dlq_url.clone(), &["MessageRetentionPeriod", "QueueArn"]).await;

    let mut subscriptions = Vec::new();
    let mut pages = sns
        .list_subscriptions_by_topic()
        .topic_arn(&topic_arn)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        for s in page.unwrap().subscriptions() {
            let out = sns
                .get_subscription_attributes()
                .subscription_arn(s.subscription_arn().unwrap())
                .send()
                .await
                .unwrap();
            let attrs = out.attributes().unwrap();
            subscriptions.push(
                ["Protocol", "Endpoint", "RawMessageDelivery", "FilterPolicy"]
                    .into_iter()
                    .map(|k| (k.to_owned(), attrs.get(k).cloned().unwrap_or_default()))
                    .collect::<BTreeMap<_, _>>(),
            );
        }
    }
    subscriptions.sort();
    Snapshot {
        topic_arn,
        queue_url,
        dlq_url,
        queue: queue_attrs,
        dlq: dlq_attrs,
        subscriptions,
    }
}

/// The values themselves, besides "the same as the code's".
fn assert_expected(s: &Snapshot) {
    assert_eq!(s.queue["VisibilityTimeout"], "30", "{s:#?}");
    assert_eq!(s.dlq["MessageRetentionPeriod"], "1209600", "{s:#?}");
    let redrive: Value = serde_json::from_str(&s.queue["RedrivePolicy"]).unwrap();
    assert_eq!(
        redrive,
        json!({"deadLetterTargetArn": s.dlq["QueueArn"], "maxReceiveCount": 5})
    );
    let policy: Value = serde_json::from_str(&s.queue["Policy"]).unwrap();
    let statement = &policy["Statement"][0];
    assert_eq!(statement["Action"], "sqs:SendMessage");
    assert_eq!(statement["Resource"], s.queue["QueueArn"].as_str());
    assert_eq!(
        statement["Condition"]["ArnEquals"]["aws:SourceArn"],
        s.topic_arn.as_str()
    );
    assert_eq!(s.subscriptions.len(), 1, "exactly one subscription: {s:#?}");
    let sub = &s.subscriptions[0];
    assert_eq!(sub["Protocol"], "sqs");
    assert_eq!(sub["Endpoint"], s.queue["QueueArn"]);
    assert_eq!(sub["RawMessageDelivery"], "true");
    assert_eq!(
        sub["FilterPolicy"],
        filter_policy(&consumed()).unwrap(),
        "the filter is the code's, byte for byte"
    );
}

/// Script first (twice), then the code's provisioning: the code finds the same resources and
/// changes nothing.
async fn script_then_code(with: &str) {
    let sdk = messaging::aws::emulator_sdk_config(&aws_endpoint()).await;
    let (topic, queue) = names(with);
    run_script(with, &topic, &queue).await;
    run_script(with, &topic, &queue).await;
    let by_script = snapshot(&sdk, &topic, &queue).await;
    assert_expected(&by_script);

    let provisioned = messaging::provision(&sdk, &topology(&topic, &queue))
        .await
        .unwrap();
    assert_eq!(provisioned.topic_arn, by_script.topic_arn);
    assert_eq!(provisioned.queue_urls[&queue], by_script.queue_url);
    assert_eq!(provisioned.dlq_urls[&queue], by_script.dlq_url);
    let after_code = snapshot(&sdk, &topic, &queue).await;
    assert_eq!(after_code, by_script, "provision() found nothing to change");
    cleanup(&sdk, &after_code).await;
}

async fn cleanup(sdk: &SdkConfig, s: &Snapshot) {
    let sns = aws_sdk_sns::Client::new(sdk);
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let _ = sns.delete_topic().topic_arn(&s.topic_arn).send().await;
    for url in [&s.queue_url, &s.dlq_url] {
        let _ = sqs.delete_queue().queue_url(url).send().await;
    }
}

#[tokio::test]
async fn boto3_fallback_creates_what_the_code_provisions() {
    script_then_code("python").await;
}

/// The code first, then the script (as when LocalStack restarts its hooks under running
/// services): the script changes nothing, and makes no second subscription.
#[tokio::test]
async fn script_over_code_provisioned_topology_changes_nothing() {
    let sdk = messaging::aws::emulator_sdk_config(&aws_endpoint()).await;
    let (topic, queue) = names("over");
    messaging::provision(&sdk, &topology(&topic, &queue))
        .await
        .unwrap();
    let by_code = snapshot(&sdk, &topic, &queue).await;
    assert_expected(&by_code);
    run_script("auto", &topic, &queue).await;
    assert_eq!(snapshot(&sdk, &topic, &queue).await, by_code);
    cleanup(&sdk, &by_code).await;
}

/// docker compose's set-up: the init script makes the topology, the services only use it
/// (`*_BROKER_PROVISION=false`, sales given the topic ARN); an order's ORDER_CREATED reaches
/// product's inbox.
#[tokio::test]
async fn services_run_on_the_scripts_topology_with_provisioning_off() {
    let sdk = messaging::aws::emulator_sdk_config(&aws_endpoint()).await;
    let (topic, queue) = names("svc");
    run_script("auto", &topic, &queue).await;
    let s = snapshot(&sdk, &topic, &queue).await;
    let stack = Stack::start_with(StackOptions {
        broker: true,
        sales_env: vec![
            ("SALES_BROKER_PROVISION", "false".into()),
            ("SALES_BROKER_TOPIC_ARN", s.topic_arn.clone()),
        ],
        product_env: vec![
            ("PRODUCT_BROKER_PROVISION", "false".into()),
            ("PRODUCT_BROKER_QUEUE_NAME", queue.clone()),
        ],
        ..StackOptions::default()
    })
    .await;
    stack
        .sales_api()
        .place(&system_tests::order_request(
            "init-script",
            &[("SKU-HEADSET", 1)],
        ))
        .await;
    let product = stack.db("product").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM inbox WHERE event_type = 'ORDER_CREATED'")
                .fetch_one(&product)
                .await
                .unwrap();
        if n == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ORDER_CREATED did not reach product through the script's queue"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Provisioning was off: the topology is still exactly the script's.
    assert_eq!(snapshot(&sdk, &topic, &queue).await, s);
    product.close().await;
    assert!(stack.shutdown().await, "the services stopped cleanly");
    cleanup(&sdk, &s).await;
}

/// What docker compose relies on, with LocalStack itself running the hook: a second host-mode
/// LocalStack whose init directory is `localstack/init` (the compose mount) runs
/// `ready.d/10-sales-events.sh` on start, reports it SUCCESSFUL at `/_localstack/init/ready`
/// (what the compose health check waits for), and the default topology is then exactly the
/// code's.
#[tokio::test]
async fn localstack_runs_the_hook_on_start() {
    let venv_python = root().join(".local/localstack/venv/bin/python");
    assert!(
        venv_python.exists(),
        "{} is missing: run scripts/ensure-localstack (scripts/test does)",
        venv_python.display()
    );
    let port = system_tests::free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let dir = system_tests::binaries_dir()
        .join("system-tests")
        .join(format!("localstack-hook-{}", Uuid::new_v4().simple()));
    let etc = dir.join("fs/etc/localstack");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    std::os::unix::fs::symlink(root().join("localstack/init"), etc.join("init")).unwrap();
    let log = std::fs::File::create(dir.join("localstack.log")).unwrap();
    let mut child = tokio::process::Command::new(&venv_python)
        .args(["-m", "localstack.runtime.main"])
        .envs([
            ("OVERRIDE_IN_DOCKER", "0"),
            ("DNS_ADDRESS", "0"),
            ("GATEWAY_SERVER", "hypercorn"),
            ("GATEWAY_LISTEN", &format!("127.0.0.1:{port}")),
            ("LOCALSTACK_HOST", &format!("127.0.0.1:{port}")),
            ("SERVICES", "sqs,sns"),
            ("EAGER_SERVICE_LOADING", "1"),
            ("SQS_ENDPOINT_STRATEGY", "path"),
            ("DISABLE_EVENTS", "1"),
            ("SKIP_SSL_CERT_DOWNLOAD", "1"),
            ("SQS_DISABLE_CLOUDWATCH_METRICS", "1"),
            ("IN_MEMORY_CLIENT", "1"),
            ("FILESYSTEM_ROOT", dir.join("fs").to_str().unwrap()),
            ("TMPDIR", dir.join("tmp").to_str().unwrap()),
            // In the container the hook's default, http://localhost:4566, is LocalStack itself.
            ("AWS_ENDPOINT_URL", &endpoint),
        ])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let body = loop {
        let got = http
            .get(format!("{endpoint}/_localstack/init/ready"))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if let Ok(r) = got
            && r.status() == 200
        {
            let body = r.text().await.unwrap();
            let doc: Value = serde_json::from_str(&body).unwrap();
            if doc["completed"] == true && !doc["scripts"].as_array().unwrap().is_empty() {
                break body;
            }
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "LocalStack exited; log: {}",
            std::fs::read_to_string(dir.join("localstack.log")).unwrap_or_default()
        );
        assert!(
            Instant::now() < deadline,
            "the ready hook did not complete; log: {}",
            std::fs::read_to_string(dir.join("localstack.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let doc: Value = serde_json::from_str(&body).unwrap();
    let scripts = doc["scripts"].as_array().unwrap();
    assert_eq!(
        scripts.len(),
        2,
        "two hooks, provision.py is not run: {body}"
    );
    for (script, name) in scripts
        .iter()
        .zip(["10-sales-events.sh", "20-delivery-events.sh"])
    {
        assert!(script["name"].as_str().unwrap().ends_with(name), "{body}");
        assert_eq!(script["state"], "SUCCESSFUL", "{body}");
    }
    // The compose health check: `grep -q '"completed": *true'` and no "ERROR".
    assert!(
        body.contains("\"completed\": true") && !body.contains("ERROR"),
        "{body}"
    );

    let sdk = messaging::aws::emulator_sdk_config(&endpoint).await;
    let by_hook = snapshot(&sdk, "sales-events", "product-order-events").await;
    assert_expected(&by_hook);
    let provisioned = messaging::provision(&sdk, &topology("sales-events", "product-order-events"))
        .await
        .unwrap();
    assert_eq!(
        provisioned.topic_arn, "arn:aws:sns:us-east-1:000000000000:sales-events",
        "the ARN docker-compose.yml gives sales"
    );
    assert_eq!(
        snapshot(&sdk, "sales-events", "product-order-events").await,
        by_hook
    );
    let by_hook = snapshot(&sdk, "delivery-events", "sales-delivery-events").await;
    let provisioned = messaging::provision(
        &sdk,
        &delivery_topology("delivery-events", "sales-delivery-events"),
    )
    .await
    .unwrap();
    assert_eq!(
        provisioned.topic_arn, "arn:aws:sns:us-east-1:000000000000:delivery-events",
        "the ARN docker-compose.yml gives delivery"
    );
    assert_eq!(
        snapshot(&sdk, "delivery-events", "sales-delivery-events").await,
        by_hook
    );

    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// `bash -n` on every shell script of the project.
#[test]
fn every_shell_script_parses() {
    let mut scripts = Vec::new();
    for dir in ["scripts", ".ci", "localstack/init/ready.d"] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let head = std::fs::read_to_string(&path).unwrap_or_default();
            if path.is_file()
                && head.starts_with("#!")
                && head.lines().next().unwrap().contains("sh")
            {
                scripts.push(path);
            }
        }
    }
    assert!(scripts.len() >= 8, "found only {scripts:?}");
    for path in &scripts {
        let out = std::process::Command::new("bash")
            .arg("-n")
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
