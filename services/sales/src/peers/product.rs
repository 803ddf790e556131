//! The product service as sales sees it: reserve, commit and release stock.

use contracts::{
    LineItem,
    catalog::{INSUFFICIENT_STOCK, Reservation, ReservationRequest, ShortItem},
};
use reqwest::{Method, StatusCode};
use uuid::Uuid;

use super::{HttpPeer, PeerError};

/// What product said to a reservation.
#[derive(Debug)]
pub enum ReserveOutcome {
    /// Stock is held for the order.
    Reserved(Reservation),
    /// Not enough stock: these items are short. A healthy answer, not a failure.
    Insufficient(Vec<ShortItem>),
}

/// Client of the product service.
#[derive(Debug, Clone)]
pub struct ProductClient {
    peer: HttpPeer,
}

impl ProductClient {
    pub fn new(peer: HttpPeer) -> Self {
        Self { peer }
    }

    /// The breaker guarding calls to this peer.
    pub fn breaker(&self) -> &resilience::CircuitBreaker {
        self.peer.breaker()
    }

    /// Reserves `items` for `order_id` (idempotent at product by order id).
    pub async fn reserve(
        &self,
        order_id: Uuid,
        items: &[LineItem],
    ) -> Result<ReserveOutcome, PeerError> {
        let request = ReservationRequest {
            order_id,
            items: items.to_vec(),
        };
        match self
            .peer
            .send::<Reservation>(Method::POST, "/reservations", Some(&request))
            .await
        {
            Ok((_, reservation)) => Ok(ReserveOutcome::Reserved(reservation)),
            Err(PeerError::Rejected { problem, .. })
                if problem.status == StatusCode::CONFLICT.as_u16()
                    && problem.kind.ends_with(INSUFFICIENT_STOCK) =>
            {
                let short = problem
                    .extensions
                    .get("short_items")
                    .cloned()
                    .and_then(|v| serde_json::from_value(v).ok())
                    .unwrap_or_default();
                Ok(ReserveOutcome::Insufficient(short))
            }
            Err(e) => Err(e),
        }
    }

    /// Commits the reservation of `order_id`: its units leave stock for good.
    pub async fn commit(&self, order_id: Uuid) -> Result<Reservation, PeerError> {
        let path = format!("/reservations/{order_id}/commit");
        let (_, reservation) = self
            .peer
            .send::<Reservation>(Method::POST, &path, None::<&()>)
            .await?;
        Ok(reservation)
    }

    /// Gives a cancelled order's units back: releases its reservation, restocking committed
    /// units, and marks it so that it is never taken again (product does this once, whoever
    /// asks first: this call or its `ORDER_CANCELLED` consumer).
    pub async fn release_cancelled(&self, order_id: Uuid) -> Result<Reservation, PeerError> {
        let path = format!("/reservations/{order_id}?reason=order-cancelled");
        let (_, reservation) = self
            .peer
            .send::<Reservation>(Method::DELETE, &path, None::<&()>)
            .await?;
        Ok(reservation)
    }

    /// Keeps the reservations of `order_ids` (at most [`contracts::catalog::MAX_RENEWALS`])
    /// alive; one outcome per order.
    pub async fn renew(
        &self,
        order_ids: &[Uuid],
    ) -> Result<Vec<contracts::catalog::Renewal>, PeerError> {
        let request = contracts::catalog::RenewalRequest {
            order_ids: order_ids.to_vec(),
        };
        let (_, renewals) = self
            .peer
            .send::<Vec<contracts::catalog::Renewal>>(
                Method::POST,
                "/reservations/renewals",
                Some(&request),
            )
            .await?;
        Ok(renewals)
    }

    /// Releases the reservation of `order_id`; one that does not exist is fine.
    pub async fn release(&self, order_id: Uuid) -> Result<(), PeerError> {
        let path = format!("/reservations/{order_id}");
        match self
            .peer
            .send::<Reservation>(Method::DELETE, &path, None::<&()>)
            .await
        {
            Ok(_) => Ok(()),
            Err(PeerError::Rejected { problem, .. })
                if problem.status == StatusCode::NOT_FOUND.as_u16() =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}
