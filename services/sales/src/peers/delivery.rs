//! The delivery service as sales sees it: initiate a delivery for an order.

use contracts::delivery::{Delivery, DeliveryRequest};
use reqwest::Method;

use super::{HttpPeer, PeerError};

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
}
