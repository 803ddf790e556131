//! The delivery service as sales sees it: initiate, read and cancel the
//! delivery of an order.

use contracts::delivery::{Delivery, DeliveryRequest, DeliveryStatus};
use reqwest::{Method, StatusCode};
use uuid::Uuid;

use super::{HttpPeer, PeerError};

/// What delivery said to a cancellation.
#[derive(Debug)]
pub enum CancelOutcome {
    /// The delivery is cancelled (now, or it already was).
    Cancelled(Box<Delivery>),
    /// Too late: the courier has it (or it is finished). `status` is delivery's
    /// current status when it said so.
    TooLate { status: Option<DeliveryStatus> },
    /// Delivery does not know this delivery: nothing to cancel.
    Unknown,
}

/// Client of the delivery service.
#[derive(Debug, Clone)]
pub struct DeliveryClient {
    peer: HttpPeer,
}

impl DeliveryClient {
    pub fn new(peer: HttpPeer) -> Self {
        Self { peer }
    }

    /// The breaker guarding calls to this peer.
    pub fn breaker(&self) -> &resilience::CircuitBreaker {
        self.peer.breaker()
    }

    /// Initiates the delivery of an order. Delivery dedups on the order id, so a
    /// retry returns the delivery made the first time.
    pub async fn initiate(&self, request: &DeliveryRequest) -> Result<Delivery, PeerError> {
        let (_, delivery) = self
            .peer
            .send::<Delivery>(Method::POST, "/deliveries", Some(request))
            .await?;
        Ok(delivery)
    }

    /// Reads a delivery: its authoritative status. A 404 is `Rejected`.
    pub async fn get(&self, delivery_id: Uuid) -> Result<Delivery, PeerError> {
        let path = format!("/deliveries/{delivery_id}");
        let (_, delivery) = self
            .peer
            .send::<Delivery>(Method::GET, &path, None::<&()>)
            .await?;
        Ok(delivery)
    }

    /// The delivery made for `order_id`, if any (delivery keeps one per order).
    pub async fn find_for_order(&self, order_id: Uuid) -> Result<Option<Delivery>, PeerError> {
        let path = format!("/deliveries?order_id={order_id}&limit=1");
        let (_, mut found) = self
            .peer
            .send::<Vec<Delivery>>(Method::GET, &path, None::<&()>)
            .await?;
        Ok(found.pop())
    }

    /// Cancels a delivery before pickup. Idempotent at delivery.
    pub async fn cancel(&self, delivery_id: Uuid) -> Result<CancelOutcome, PeerError> {
        let path = format!("/deliveries/{delivery_id}/cancel");
        match self
            .peer
            .send::<Delivery>(Method::POST, &path, None::<&()>)
            .await
        {
            Ok((_, delivery)) => Ok(CancelOutcome::Cancelled(Box::new(delivery))),
            Err(PeerError::Rejected { problem, .. })
                if problem.status == StatusCode::CONFLICT.as_u16() =>
            {
                let status = problem
                    .extensions
                    .get("current_status")
                    .and_then(|v| v.as_str())
                    .and_then(DeliveryStatus::parse);
                Ok(CancelOutcome::TooLate { status })
            }
            Err(PeerError::Rejected { problem, .. })
                if problem.status == StatusCode::NOT_FOUND.as_u16() =>
            {
                Ok(CancelOutcome::Unknown)
            }
            Err(e) => Err(e),
        }
    }
}
