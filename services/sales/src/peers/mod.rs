//! HTTP clients of sales' neighbours, each behind its own circuit breaker.
//! Every call's outcome is classified the same way: the peer answered (2xx), the
//! peer refused the request (4xx with a problem document: our request is wrong
//! or the state forbids it), or the peer is unavailable (cannot connect, timeout,
//! 5xx, 429, unreadable answer, or its breaker is open; also a 401/403: the peer
//! refuses sales' own service credential, a fault of the deployment that no retry
//! of the customer's request fixes; and a 404 "no such route" or a 405: what answered is not
//! the service sales expects there). Only the last kind counts as a failure for
//! the breaker. Every call carries sales' service token for that peer as a bearer.
//!
//! Each peer also has a bulkhead ([`resilience::Bulkhead`]): a cap on the calls in
//! flight to it. A call over the cap is not sent and comes back `Unavailable`
//! with `not_sent`, exactly like one refused by an open breaker, so a peer that
//! hangs while its breaker is still closed holds at most that many requests.

pub mod delivery;
pub mod product;

use std::time::Duration;

use contracts::Problem;
use reqwest::{Method, StatusCode};
use resilience::{CallError, CircuitBreaker, Outcome};
use serde::{Serialize, de::DeserializeOwned};
use tracing::Instrument;

/// Why a call to a peer did not give the answer asked for.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The peer could not be asked, or failed: a fault of the peer or the network,
    /// or its breaker is open or its bulkhead full (`not_sent`: no call was made).
    #[error("{peer} unavailable: {reason}")]
    Unavailable {
        peer: &'static str,
        reason: String,
        not_sent: bool,
    },
    /// The peer refused the request with a 4xx problem.
    #[error("{peer} refused the request: {problem}")]
    Rejected {
        peer: &'static str,
        problem: Problem,
    },
}

/// A JSON-over-HTTP peer with connect and request timeouts, behind a breaker.
#[derive(Clone)]
pub struct HttpPeer {
    name: &'static str,
    base: String,
    http: reqwest::Client,
    breaker: CircuitBreaker,
    bulkhead: resilience::Bulkhead,
    /// `Authorization: Bearer <service token>`, marked sensitive (never logged).
    authorization: Option<reqwest::header::HeaderValue>,
}

impl std::fmt::Debug for HttpPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpPeer")
            .field("name", &self.name)
            .field("base", &self.base)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<set>"),
            )
            .finish_non_exhaustive()
    }
}

impl HttpPeer {
    pub fn new(
        name: &'static str,
        base: &str,
        service_token: Option<&str>,
        connect_timeout: Duration,
        request_timeout: Duration,
        breaker: CircuitBreaker,
        max_concurrent: usize,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .timeout(request_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        let authorization = service_token
            .map(|token| {
                let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))?;
                value.set_sensitive(true);
                Ok::<_, reqwest::header::InvalidHeaderValue>(value)
            })
            .transpose()?;
        Ok(Self {
            name,
            base: base.trim_end_matches('/').to_owned(),
            http,
            breaker,
            bulkhead: resilience::Bulkhead::new(name, max_concurrent),
            authorization,
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The breaker guarding this peer.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    fn unavailable(&self, reason: impl Into<String>) -> PeerError {
        PeerError::Unavailable {
            peer: self.name,
            reason: reason.into(),
            not_sent: false,
        }
    }

    /// Sends a request through the breaker and decodes a 2xx JSON answer.
    pub async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + Sync)>,
    ) -> Result<(StatusCode, T), PeerError> {
        let _slot = self
            .bulkhead
            .try_enter()
            .map_err(|full| PeerError::Unavailable {
                peer: self.name,
                reason: full.to_string(),
                not_sent: true,
            })?;
        let classify = |result: &Result<(StatusCode, T), PeerError>| match result {
            Err(PeerError::Unavailable { .. }) => Outcome::Failure,
            Ok(_) | Err(PeerError::Rejected { .. }) => Outcome::Success,
        };
        match self
            .breaker
            .call(classify, || self.send_unguarded(method, path, body))
            .await
        {
            Ok(answer) => Ok(answer),
            Err(CallError::Inner(e)) => Err(e),
            Err(CallError::Timeout(after)) => {
                Err(self.unavailable(format!("timed out after {} ms", after.as_millis())))
            }
            Err(CallError::Rejected(rejected)) => Err(PeerError::Unavailable {
                peer: self.name,
                reason: rejected.to_string(),
                not_sent: true,
            }),
        }
    }

    /// One call in a client span whose context goes out as `traceparent`, so the
    /// peer's request span continues this trace.
    async fn send_unguarded<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + Sync)>,
    ) -> Result<(StatusCode, T), PeerError> {
        let span = tracing::info_span!(
            "peer_call",
            peer = self.name,
            %method,
            path,
            status = tracing::field::Empty,
            otel.name = format!("{method} {}", self.name),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
        );
        let result = self
            .send_traced(method, path, body)
            .instrument(span.clone())
            .await;
        match &result {
            Ok((status, _)) => span.record("status", status.as_u16()),
            Err(PeerError::Rejected { problem, .. }) => span.record("status", problem.status),
            Err(PeerError::Unavailable { .. }) => span.record("otel.status_code", "error"),
        };
        result
    }

    async fn send_traced<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + Sync)>,
    ) -> Result<(StatusCode, T), PeerError> {
        let mut headers = reqwest::header::HeaderMap::new();
        platform::trace_context::inject_current_headers(&mut headers);
        if let Some(authorization) = &self.authorization {
            headers.insert(reqwest::header::AUTHORIZATION, authorization.clone());
        }
        let mut request = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .headers(headers);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| {
            let kind = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "connection failed"
            } else {
                "request failed"
            };
            self.unavailable(format!("{kind}: {e}"))
        })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.unavailable(format!("reading the answer failed: {e}")))?;
        if status.is_success() {
            let value = serde_json::from_slice(&bytes)
                .map_err(|e| self.unavailable(format!("unreadable answer: {e}")))?;
            return Ok((status, value));
        }
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            tracing::error!(peer = self.name, %status,
                "the peer refuses sales' service credential: check SALES_{}_SERVICE_TOKEN",
                self.name.to_ascii_uppercase());
            return Err(self.unavailable(format!("refused sales' service credential ({status})")));
        }
        if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS {
            let problem = serde_json::from_slice::<Problem>(&bytes)
                .unwrap_or_else(|_| Problem::from_status(status));
            let no_route = status == StatusCode::METHOD_NOT_ALLOWED
                || (status == StatusCode::NOT_FOUND
                    && problem.kind.ends_with(contracts::problem::NO_SUCH_ROUTE));
            if no_route {
                tracing::error!(peer = self.name, %status,
                    "the peer serves no such route: check SALES_{}_URL",
                    self.name.to_ascii_uppercase());
                return Err(self.unavailable(format!("serves no such route ({status})")));
            }
            return Err(PeerError::Rejected {
                peer: self.name,
                problem,
            });
        }
        Err(self.unavailable(format!("answered {status}")))
    }
}
