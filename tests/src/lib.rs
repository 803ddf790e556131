//! Harness of the system tests: starts the real `sales`, `product` and
//! `delivery` binaries as child processes on free ports, each against its own
//! fresh PostgreSQL database, and stops, kills or restarts them on demand.
//!
//! The binaries come from the same target directory as the test executable:
//! build them first with `cargo build --workspace --bins` (`scripts/test` does).
//!
//! # Layout
//! - [`Service`]: one child process with its environment, log file and port.
//! - [`Stack`]: the three services wired together, and their databases.
//! - [`client`]: typed clients of the three services' APIs ([`SalesClient`] …).
//! - [`proxy`]: a TCP proxy that cuts and refuses connections to a dependency.
//! - [`bench`]: the benchmarks' knobs and percentiles.
//! - [`chaos`]: the chaos run: order load, scheduled faults, a ledger of invariants.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

pub mod bench;
pub mod chaos;
pub mod client;
pub use testkit::proxy;

pub use client::{
    DeliveryClient, ProductClient, SalesClient, eventually, expect_json, order_request,
};

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};
use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio::process::{Child, Command};
use uuid::Uuid;

/// The staff account `sales staff add` makes for each stack.
pub const STAFF_NAME: &str = "system-staff";
/// Its secret (the console password).
pub const STAFF_SECRET: &str = "system-test-staff-secret";
/// Staff token product and delivery are started with, which is also the
/// credential of sales' account [`STAFF_NAME`] (`Bearer <name>:<secret>`).
pub const STAFF_TOKEN: &str = "system-staff:system-test-staff-secret";

/// Service token product and delivery are started with, and sales sends them.
pub const SERVICE_TOKEN: &str = "system-test-service-token";

/// Base URL of the PostgreSQL server the tests use (no database name).
pub fn postgres_base() -> String {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    // postgres://user@host:port/db → postgres://user@host:port
    let (scheme, rest) = url.split_once("://").expect("DATABASE_URL is a URL");
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    format!("{scheme}://{authority}")
}

/// Address of the PostgreSQL server of [`postgres_base`].
pub fn postgres_socket_addr() -> std::net::SocketAddr {
    let base = postgres_base();
    let authority = base.split_once("://").unwrap().1;
    let host_port = authority.rsplit('@').next().unwrap();
    let host_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5432")
    };
    let host_port = host_port.replace("localhost", "127.0.0.1");
    host_port.parse().unwrap()
}

/// The directory holding the workspace's binaries (next to the test executable).
pub fn binaries_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> → target/<profile>
    let dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    for name in ["sales", "product", "delivery"] {
        assert!(
            dir.join(name).exists(),
            "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
            dir.join(name).display()
        );
    }
    dir
}

/// Ports [`free_port`] draws from: below the kernel's ephemeral range (32768 and up here and
/// on Linux by default), where every server binding port 0 — other tests', in parallel
/// processes — is given its port. A port taken from that range and released could be handed
/// to one of them before our process binds it, and a request would reach a stranger.
const TEST_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A free TCP port on loopback for a service process to bind: drawn at random from
/// [`TEST_PORTS`] until one binds (then released for the process).
pub fn free_port() -> u16 {
    let span = u32::from(TEST_PORTS.end - TEST_PORTS.start);
    loop {
        let draw = uuid::Uuid::new_v4().as_u128() as u32 % span;
        let port = TEST_PORTS.start + u16::try_from(draw).unwrap_or(0);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// One service binary running as a child process.
pub struct Service {
    pub name: &'static str,
    pub port: u16,
    env: BTreeMap<String, String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Service {
    pub fn new(
        name: &'static str,
        port: u16,
        env: BTreeMap<String, String>,
        log_dir: &Path,
    ) -> Self {
        Self {
            name,
            port,
            env,
            log: log_dir.join(format!("{name}.log")),
            child: None,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the process (appending to its log) and waits until `/health/ready` answers 200.
    /// Runs the binary as a command (e.g. `sales staff add NAME`) with the
    /// service's settings and `env`; its standard output, or a panic if it fails.
    pub async fn command(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let output = Command::new(binaries_dir().join(self.name))
            .args(args)
            .envs(&self.env)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "{} {args:?} failed: {}",
            self.name,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(binaries_dir().join(self.name))
            .envs(&self.env)
            .env("LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(60)).await;
    }

    /// Polls `/health/ready` until it answers 200.
    pub async fn wait_ready(&mut self, limit: Duration) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + limit;
        let url = format!("{}/health/ready", self.base_url());
        loop {
            if let Ok(r) = client
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await
                && r.status() == 200
            {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "{} exited during start-up ({status}); log: {}",
                    self.name,
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready in time; log: {}",
                self.name,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then waits for the exit; returns whether it exited successfully.
    pub async fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        match tokio::time::timeout(Duration::from_secs(20), child.wait()).await {
            Ok(Ok(status)) => status.success(),
            _ => {
                let _ = child.kill().await;
                false
            }
        }
    }

    /// Sets (or overrides) a variable for the next start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.insert(key.to_owned(), value.to_owned());
    }

    /// Another process of the same binary and settings, on its own port (`prefix` is `SALES_` etc.).
    pub fn another(&self, name_suffix: &str, prefix: &str, log_dir: &Path) -> Service {
        let port = free_port();
        let mut env = self.env.clone();
        env.insert(format!("{prefix}LISTEN_ADDR"), format!("127.0.0.1:{port}"));
        let mut other = Service::new(self.name, port, env, log_dir);
        other.log = log_dir.join(format!("{}-{name_suffix}.log", self.name));
        other
    }

    /// SIGSTOP: the process hangs (accepts connections, never answers) until resumed.
    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    pub fn pause(&self) {
        self.signal(Signal::SIGSTOP);
    }

    /// SIGCONT after [`Service::pause`].
    pub fn resume(&self) {
        self.signal(Signal::SIGCONT);
    }

    fn signal(&self, signal: Signal) {
        if let Some(pid) = self.child.as_ref().and_then(Child::id) {
            nix::sys::signal::kill(Pid::from_raw(pid as i32), signal).unwrap();
        }
    }

    /// SIGKILL: no chance to clean up, as in a crash.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// How to start a [`Stack`].
#[derive(Default)]
pub struct StackOptions {
    /// Extra `SALES_*` settings (e.g. shorter breaker timeouts).
    pub sales_env: Vec<(&'static str, String)>,
    /// Extra `PRODUCT_*` settings.
    pub product_env: Vec<(&'static str, String)>,
    /// Route sales' database connections through a [`proxy::Proxy`].
    pub sales_db_proxy: bool,
    /// Relay the outbox to SNS and consume it at product (names unique to this stack).
    pub broker: bool,
    /// Route sales' SNS calls through a [`proxy::Proxy`] (needs `broker`).
    pub broker_proxy: bool,
    /// Route product's SQS calls through the same proxy as sales' SNS calls
    /// (needs `broker_proxy`), so cutting it takes the broker away from both.
    pub product_broker_proxy: bool,
    /// Extra `DELIVERY_*` settings.
    pub delivery_env: Vec<(&'static str, String)>,
    /// Relay delivery's outbox to its own SNS topic and have sales follow it from its own
    /// queue (names unique to this stack).
    pub delivery_events: bool,
    /// Route delivery's SNS calls through a [`proxy::Proxy`] of their own (needs
    /// `delivery_events`), so a test can cut delivery's broker alone.
    pub delivery_broker_proxy: bool,
}

/// The SQS/SNS emulator the tests use (`AWS_ENDPOINT_URL`, default LocalStack on 4566).
pub fn aws_endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:4566".into())
}

/// The standard AWS environment pointing at `endpoint`.
pub fn aws_env(endpoint: &str) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The three services wired together, each on its own fresh database.
pub struct Stack {
    pub sales: Service,
    pub product: Service,
    pub delivery: Service,
    pub databases: BTreeMap<&'static str, String>,
    pub log_dir: PathBuf,
    /// Between sales and PostgreSQL, when asked for.
    pub sales_db_proxy: Option<proxy::Proxy>,
    /// Between sales and the SNS emulator, when asked for.
    pub broker_proxy: Option<proxy::Proxy>,
    /// Names of this stack's topic and product queue, when the broker is on.
    pub topic_name: String,
    pub queue_name: String,
    /// Between delivery and the SNS emulator, when asked for.
    pub delivery_broker_proxy: Option<proxy::Proxy>,
    /// Names of this stack's delivery topic and sales' delivery-events queue, when on.
    pub delivery_topic_name: String,
    pub delivery_queue_name: String,
}

impl Stack {
    /// Starts product (with the demo catalog), delivery, then sales.
    pub async fn start() -> Self {
        Self::start_with(StackOptions::default()).await
    }

    /// Starts the stack with options.
    pub async fn start_with(options: StackOptions) -> Self {
        let run = Uuid::new_v4().simple().to_string();
        let log_dir = binaries_dir().join("system-tests").join(&run);
        std::fs::create_dir_all(&log_dir).unwrap();
        let base = postgres_base();
        let databases: BTreeMap<&'static str, String> = ["sales", "product", "delivery"]
            .into_iter()
            .map(|s| (s, format!("systest_{s}_{}", &run[..12])))
            .collect();
        let (sales_port, product_port, delivery_port) = (free_port(), free_port(), free_port());
        let common = |prefix: &str, port: u16, db: &str| -> BTreeMap<String, String> {
            [
                ("LISTEN_ADDR", format!("127.0.0.1:{port}")),
                ("DATABASE_URL", format!("{base}/{db}")),
                ("STAFF_TOKEN", STAFF_TOKEN.to_owned()),
                ("SHUTDOWN_GRACE_MS", "5000".to_owned()),
            ]
            .into_iter()
            .map(|(k, v)| (format!("{prefix}{k}"), v))
            .collect()
        };
        let mut product_env = common("PRODUCT_", product_port, &databases["product"]);
        product_env.insert("PRODUCT_SEED_DEMO_CATALOG".into(), "true".into());
        product_env.insert("PRODUCT_SERVICE_TOKEN".into(), SERVICE_TOKEN.into());
        let mut delivery_env = common("DELIVERY_", delivery_port, &databases["delivery"]);
        delivery_env.insert("DELIVERY_SERVICE_TOKEN".into(), SERVICE_TOKEN.into());
        let mut sales_env = common("SALES_", sales_port, &databases["sales"]);
        for peer in ["PRODUCT", "DELIVERY"] {
            sales_env.insert(format!("SALES_{peer}_SERVICE_TOKEN"), SERVICE_TOKEN.into());
        }
        sales_env.insert(
            "SALES_PRODUCT_URL".into(),
            format!("http://127.0.0.1:{product_port}"),
        );
        sales_env.insert(
            "SALES_DELIVERY_URL".into(),
            format!("http://127.0.0.1:{delivery_port}"),
        );
        sales_env.insert("SALES_HTTP_REQUEST_TIMEOUT_MS".into(), "2000".into());
        let sales_db_proxy = if options.sales_db_proxy {
            let upstream = postgres_socket_addr();
            let proxy = proxy::Proxy::start(upstream).await;
            let (scheme, rest) = base.split_once("://").unwrap();
            let user = rest
                .split('@')
                .next()
                .filter(|_| rest.contains('@'))
                .map(|u| format!("{u}@"))
                .unwrap_or_default();
            sales_env.insert(
                "SALES_DATABASE_URL".into(),
                format!(
                    "{scheme}://{user}127.0.0.1:{}/{}",
                    proxy.port, databases["sales"]
                ),
            );
            Some(proxy)
        } else {
            None
        };
        let topic_name = format!("sales-events-{}", &run[..12]);
        let queue_name = format!("product-order-events-{}", &run[..12]);
        let mut broker_proxy = None;
        if options.broker {
            let endpoint = if options.broker_proxy {
                let upstream = aws_endpoint()
                    .trim_start_matches("http://")
                    .replace("localhost", "127.0.0.1");
                let proxy = proxy::Proxy::start(upstream.parse().unwrap()).await;
                let endpoint = format!("http://127.0.0.1:{}", proxy.port);
                broker_proxy = Some(proxy);
                endpoint
            } else {
                aws_endpoint()
            };
            sales_env.extend(aws_env(&endpoint));
            sales_env.insert("SALES_BROKER_ENABLED".into(), "true".into());
            sales_env.insert("SALES_BROKER_PROVISION".into(), "true".into());
            sales_env.insert("SALES_BROKER_TOPIC_NAME".into(), topic_name.clone());
            sales_env.insert("SALES_OUTBOX_POLL_INTERVAL_MS".into(), "200".into());
            let product_endpoint = if options.product_broker_proxy && broker_proxy.is_some() {
                endpoint
            } else {
                aws_endpoint()
            };
            product_env.extend(aws_env(&product_endpoint));
            for (k, v) in [
                ("PRODUCT_BROKER_ENABLED", "true".to_owned()),
                ("PRODUCT_BROKER_PROVISION", "true".to_owned()),
                ("PRODUCT_BROKER_TOPIC_NAME", topic_name.clone()),
                ("PRODUCT_BROKER_QUEUE_NAME", queue_name.clone()),
                ("PRODUCT_BROKER_WAIT_TIME_SECS", "1".to_owned()),
                ("PRODUCT_BROKER_VISIBILITY_TIMEOUT_SECS", "2".to_owned()),
                ("PRODUCT_BROKER_MAX_RECEIVE_COUNT", "3".to_owned()),
            ] {
                product_env.insert(k.into(), v);
            }
        }
        let delivery_topic_name = format!("delivery-events-{}", &run[..12]);
        let delivery_queue_name = format!("sales-delivery-events-{}", &run[..12]);
        let mut delivery_broker_proxy = None;
        if options.delivery_events {
            let endpoint = if options.delivery_broker_proxy {
                let upstream = aws_endpoint()
                    .trim_start_matches("http://")
                    .replace("localhost", "127.0.0.1");
                let proxy = proxy::Proxy::start(upstream.parse().unwrap()).await;
                let endpoint = format!("http://127.0.0.1:{}", proxy.port);
                delivery_broker_proxy = Some(proxy);
                endpoint
            } else {
                aws_endpoint()
            };
            delivery_env.extend(aws_env(&endpoint));
            for (k, v) in [
                ("DELIVERY_BROKER_ENABLED", "true".to_owned()),
                ("DELIVERY_BROKER_PROVISION", "true".to_owned()),
                ("DELIVERY_BROKER_TOPIC_NAME", delivery_topic_name.clone()),
                // A shorter safety-net poll than the default (1 s); LISTEN/NOTIFY wakes it.
                ("DELIVERY_OUTBOX_POLL_INTERVAL_MS", "200".to_owned()),
            ] {
                delivery_env.insert(k.into(), v);
            }
            if !options.broker {
                sales_env.extend(aws_env(&aws_endpoint()));
            }
            for (k, v) in [
                ("SALES_DELIVERY_EVENTS_ENABLED", "true".to_owned()),
                ("SALES_DELIVERY_EVENTS_PROVISION", "true".to_owned()),
                (
                    "SALES_DELIVERY_EVENTS_TOPIC_NAME",
                    delivery_topic_name.clone(),
                ),
                (
                    "SALES_DELIVERY_EVENTS_QUEUE_NAME",
                    delivery_queue_name.clone(),
                ),
                ("SALES_DELIVERY_EVENTS_WAIT_TIME_SECS", "1".to_owned()),
                (
                    "SALES_DELIVERY_EVENTS_VISIBILITY_TIMEOUT_SECS",
                    "2".to_owned(),
                ),
            ] {
                sales_env.insert(k.into(), v);
            }
        }
        for (k, v) in options.sales_env {
            sales_env.insert(k.to_owned(), v);
        }
        for (k, v) in options.product_env {
            product_env.insert(k.to_owned(), v);
        }
        for (k, v) in options.delivery_env {
            delivery_env.insert(k.to_owned(), v);
        }

        let mut stack = Self {
            sales: Service::new("sales", sales_port, sales_env, &log_dir),
            product: Service::new("product", product_port, product_env, &log_dir),
            delivery: Service::new("delivery", delivery_port, delivery_env, &log_dir),
            databases,
            log_dir,
            sales_db_proxy,
            broker_proxy,
            topic_name,
            queue_name,
            delivery_broker_proxy,
            delivery_topic_name,
            delivery_queue_name,
        };
        stack.product.start().await;
        stack.delivery.start().await;
        stack
            .sales
            .command(
                &["staff", "add", STAFF_NAME],
                &[("SALES_STAFF_SECRET", STAFF_SECRET)],
            )
            .await;
        stack.sales.start().await;
        stack
    }

    /// A pool on one service's database.
    pub async fn db(&self, service: &str) -> PgPool {
        PgPoolOptions::new()
            .max_connections(2)
            .connect(&format!("{}/{}", postgres_base(), self.databases[service]))
            .await
            .unwrap()
    }

    /// Stops every service gracefully (returning whether all exited cleanly) and drops the databases.
    pub async fn shutdown(mut self) -> bool {
        let clean =
            self.sales.stop().await & self.delivery.stop().await & self.product.stop().await;
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&format!("{}/postgres", postgres_base()))
            .await
            .unwrap();
        for db in self.databases.values() {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                .execute(&admin)
                .await;
        }
        if clean {
            let _ = std::fs::remove_dir_all(&self.log_dir);
        }
        clean
    }
}
