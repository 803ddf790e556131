//! The load of a chaos run: concurrent clients placing orders on the demo
//! catalog, each request with its own `Idempotency-Key`, as a real client would:
//! a timeout, a connection error, a 5xx, a 429 or a 409 "in progress" is
//! retried with the SAME key and body, with bounded exponential backoff
//! (honouring `Retry-After`). A small share of requests is bad input (expecting
//! 400/422), oversized (10 000 headsets: 409 while product can be asked), or a
//! cancellation of one of the client's acknowledged orders.
//!
//! Every attempt is recorded with its instants (since the run's `t0`) and
//! outcome, so the ledger can judge each status against the fault windows.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::task::JoinSet;
use uuid::Uuid;

/// Client-side timeout of one attempt (sales' own request timeout is shorter).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(12);
/// Attempts of one request before the client gives up.
pub const MAX_ATTEMPTS: usize = 20;
/// Longest pause between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3);

/// What a client asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A normal order (1–3 lines of 1–3 units).
    Place,
    /// 10 000 headsets: more than product has.
    Oversized,
    /// Invalid on purpose; the name says how.
    BadInput(&'static str),
    /// Cancel an order this client placed.
    Cancel(Uuid),
}

impl Kind {
    pub fn is_place(&self) -> bool {
        matches!(self, Kind::Place | Kind::Oversized)
    }
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An HTTP answer; `problem` is the slug of a problem document's `type`.
    Status {
        code: u16,
        problem: Option<String>,
        detail: Option<String>,
    },
    /// No answer within [`ATTEMPT_TIMEOUT`].
    Timeout,
    /// No connection (refused, reset while connecting).
    Connect,
    /// The connection broke during the exchange.
    Transport(String),
}

impl Outcome {
    pub fn code(&self) -> Option<u16> {
        match self {
            Outcome::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// One attempt: when it started and ended (since `t0`) and how.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub start: Duration,
    pub end: Duration,
    pub outcome: Outcome,
}

/// One request with all its attempts.
#[derive(Debug, Clone)]
pub struct Request {
    pub client: usize,
    pub kind: Kind,
    pub customer: String,
    /// The `Idempotency-Key` of a placement (the same on every attempt).
    pub key: Option<String>,
    pub attempts: Vec<Attempt>,
    /// The order a 201 acknowledged (placements), or the order cancelled with 200.
    pub order_id: Option<Uuid>,
    /// The retries ran out without a final answer.
    pub gave_up: bool,
}

impl Request {
    /// The final status, if the request got one.
    pub fn final_code(&self) -> Option<u16> {
        if self.gave_up {
            return None;
        }
        self.attempts.last().and_then(|a| a.outcome.code())
    }
}

/// What the clients need.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub base_url: String,
    pub clients: usize,
    pub seed: u64,
    /// Unique to the stack, part of every customer id (so runs with the same
    /// seed never share customers, keys or order ids).
    pub run_tag: String,
    pub think: Duration,
    pub t0: Instant,
}

/// The running clients.
pub struct Load {
    tasks: JoinSet<Vec<Request>>,
}

/// Starts `config.clients` clients; they run until `stop` is set, then finish
/// the request in hand (with its retries).
pub fn start(config: LoadConfig, stop: Arc<AtomicBool>) -> Load {
    let mut tasks = JoinSet::new();
    for client in 0..config.clients {
        let (config, stop) = (config.clone(), stop.clone());
        tasks.spawn(async move { run_client(client, &config, &stop).await });
    }
    Load { tasks }
}

impl Load {
    /// Waits for every client (after `stop` was set) and returns all requests.
    pub async fn finish(mut self) -> Vec<Request> {
        let mut all = Vec::new();
        while let Some(done) = self.tasks.join_next().await {
            all.extend(done.unwrap());
        }
        all
    }
}

const SKUS: [&str; 5] = [
    "SKU-KEYBOARD",
    "SKU-MOUSE",
    "SKU-MONITOR",
    "SKU-DOCK",
    "SKU-HEADSET",
];

fn address() -> Value {
    json!({"recipient": "Chaos Monkey", "line1": "1 Main St", "city": "Berlin",
           "postal_code": "10115", "country": "DE"})
}

fn order(customer: &str, rng: &mut fastrand::Rng) -> Value {
    let lines = rng.usize(1..=3);
    let mut skus = SKUS.to_vec();
    rng.shuffle(&mut skus);
    let items: Vec<Value> = skus[..lines]
        .iter()
        .map(|sku| json!({"product_id": sku, "quantity": rng.i32(1..=3)}))
        .collect();
    json!({"customer_id": customer, "items": items, "shipping_address": address()})
}

/// A bad request: (how it is bad, body, Idempotency-Key header).
fn bad_input(customer: &str, key: &str, rng: &mut fastrand::Rng) -> (&'static str, String, String) {
    let good = order(customer, rng);
    match rng.u8(0..5) {
        0 => {
            let mut body = good;
            body["items"] = json!([]);
            ("no items", body.to_string(), key.to_owned())
        }
        1 => {
            let mut body = good;
            body["items"][0]["quantity"] = json!(0);
            ("quantity 0", body.to_string(), key.to_owned())
        }
        2 => {
            let mut body = good;
            body.as_object_mut().unwrap().remove("shipping_address");
            ("no address", body.to_string(), key.to_owned())
        }
        3 => (
            "malformed JSON",
            r#"{"customer_id": "x", "items": ["#.to_owned(),
            key.to_owned(),
        ),
        _ => (
            "bad Idempotency-Key",
            good.to_string(),
            "has spaces in it".to_owned(),
        ),
    }
}

async fn run_client(client: usize, config: &LoadConfig, stop: &AtomicBool) -> Vec<Request> {
    let mut rng = fastrand::Rng::with_seed(
        config
            .seed
            .wrapping_add((client as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
    );
    let customer = format!("chaos-{}-{client}", config.run_tag);
    // Each client is its own client for sales' rate limiter, as distinct
    // customers' apps would be (not one shared loopback address).
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-api-key", customer.parse().unwrap());
    let http = reqwest::Client::builder()
        .timeout(ATTEMPT_TIMEOUT)
        .connect_timeout(Duration::from_secs(2))
        .default_headers(headers)
        .build()
        .unwrap();
    let mut placed: Vec<Uuid> = Vec::new();
    let mut records = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let key = format!("{}-{client}-{n}", config.seed);
        let roll = rng.u32(0..100);
        let record = if roll < 4 && !placed.is_empty() {
            let order_id = placed.swap_remove(rng.usize(..placed.len()));
            let url = format!("{}/orders/{order_id}/cancel", config.base_url);
            let body = json!({"reason": "changed my mind (chaos run)"}).to_string();
            let (attempts, answer, gave_up) = send(config.t0, &mut rng, || {
                http.post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
            })
            .await;
            let ok = answer.as_ref().is_some_and(|(code, _)| *code == 200);
            Request {
                client,
                kind: Kind::Cancel(order_id),
                customer: customer.clone(),
                key: None,
                attempts,
                order_id: ok.then_some(order_id),
                gave_up,
            }
        } else if roll < 8 {
            let (what, body, header) = bad_input(&customer, &key, &mut rng);
            let url = format!("{}/orders", config.base_url);
            let (attempts, _, gave_up) = send(config.t0, &mut rng, || {
                http.post(&url)
                    .header("content-type", "application/json")
                    .header("idempotency-key", &header)
                    .body(body.clone())
            })
            .await;
            Request {
                client,
                kind: Kind::BadInput(what),
                customer: customer.clone(),
                key: None,
                attempts,
                order_id: None,
                gave_up,
            }
        } else {
            let (kind, body) = if roll < 10 {
                let body = json!({"customer_id": customer,
                    "items": [{"product_id": "SKU-HEADSET", "quantity": 10_000}],
                    "shipping_address": address()});
                (Kind::Oversized, body)
            } else {
                (Kind::Place, order(&customer, &mut rng))
            };
            let body = body.to_string();
            let url = format!("{}/orders", config.base_url);
            let (attempts, answer, gave_up) = send(config.t0, &mut rng, || {
                http.post(&url)
                    .header("content-type", "application/json")
                    .header("idempotency-key", &key)
                    .body(body.clone())
            })
            .await;
            let order_id = answer
                .filter(|(code, _)| *code == 201)
                .and_then(|(_, body)| body["id"].as_str().and_then(|s| s.parse().ok()));
            if let Some(id) = order_id {
                placed.push(id);
            }
            Request {
                client,
                kind,
                customer: customer.clone(),
                key: Some(key),
                attempts,
                order_id,
                gave_up,
            }
        };
        records.push(record);
        let think = config.think.as_millis() as u64;
        tokio::time::sleep(Duration::from_millis(rng.u64(0..=think))).await;
    }
    records
}

/// Sends a request until it gets a final answer or the attempts run out.
/// Returns the attempts, the final answer (status and JSON body) and whether
/// the client gave up.
async fn send(
    t0: Instant,
    rng: &mut fastrand::Rng,
    build: impl Fn() -> reqwest::RequestBuilder,
) -> (Vec<Attempt>, Option<(u16, Value)>, bool) {
    let mut attempts = Vec::new();
    for attempt in 0..MAX_ATTEMPTS {
        let start = t0.elapsed();
        let (outcome, body, retry_after) = match build().send().await {
            Ok(response) => {
                let code = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(Duration::from_secs);
                match response.bytes().await {
                    Ok(bytes) => {
                        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                        let problem = body["type"]
                            .as_str()
                            .map(|t| t.rsplit('/').next().unwrap_or(t).to_owned());
                        let detail = body["detail"].as_str().map(str::to_owned);
                        (
                            Outcome::Status {
                                code,
                                problem,
                                detail,
                            },
                            body,
                            retry_after,
                        )
                    }
                    Err(e) => (classify(&e), Value::Null, None),
                }
            }
            Err(e) => (classify(&e), Value::Null, None),
        };
        let end = t0.elapsed();
        let retry = match &outcome {
            Outcome::Status { code, problem, .. } => {
                *code >= 500
                    || *code == 429
                    || (*code == 409 && problem.as_deref() == Some("in-progress"))
            }
            _ => true,
        };
        let code = outcome.code();
        attempts.push(Attempt {
            start,
            end,
            outcome,
        });
        if !retry {
            return (attempts, code.map(|c| (c, body)), false);
        }
        let backoff = Duration::from_millis(100u64 << attempt.min(5)).min(MAX_BACKOFF);
        let jittered = backoff.mul_f64(0.5 + rng.f64() / 2.0);
        let wait = retry_after
            .map_or(jittered, |r| r.max(jittered))
            .min(MAX_BACKOFF);
        tokio::time::sleep(wait).await;
    }
    (attempts, None, true)
}

fn classify(e: &reqwest::Error) -> Outcome {
    if e.is_timeout() {
        Outcome::Timeout
    } else if e.is_connect() {
        Outcome::Connect
    } else {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            text = format!("{text}: {s}");
            source = s.source();
        }
        Outcome::Transport(text)
    }
}
