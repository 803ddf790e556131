//! `Idempotency-Key` for placing orders. Keys are scoped by customer. A repeat
//! with the same key and the same body replays the first answer (its status, and
//! the order as it is now); the same key with another body is a 422. The order id
//! is derived from (customer, key), so even a retry of a request that died
//! half-way reuses the same reservation and delivery at the peers.

use axum::http::HeaderMap;
use contracts::{FieldError, Problem, orders::PlaceOrder};
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use uuid::Uuid;

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// Longest accepted key.
pub const MAX_LEN: usize = 200;

/// Namespace of order ids derived from idempotency keys.
const ORDER_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2b0e_8a4d_4c37_9e21_5d0b_7a93_e4c1);

/// A validated key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Reads the header: absent is fine; present must be 1–200 visible ASCII characters.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, Problem> {
        let Some(value) = headers.get(HEADER) else {
            return Ok(None);
        };
        let bad = |message: &str| {
            Problem::new(
                axum::http::StatusCode::BAD_REQUEST,
                "bad-idempotency-key",
                "Invalid Idempotency-Key header",
            )
            .with_errors(vec![FieldError::new("Idempotency-Key", message)])
        };
        let key = value
            .to_str()
            .map_err(|_| bad("must be visible ASCII characters"))?
            .trim();
        if key.is_empty() || key.len() > MAX_LEN || !key.chars().all(|c| c.is_ascii_graphic()) {
            return Err(bad(
                "must be 1 to 200 visible ASCII characters, e.g. a UUID",
            ));
        }
        Ok(Some(Self(key.to_owned())))
    }

    /// A key validated earlier (e.g. stored in a saga's context).
    pub fn from_validated(key: &str) -> Self {
        Self(key.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The order id every attempt with this key uses.
    pub fn order_id(&self, customer_id: &str) -> Uuid {
        let name = format!("{}\n{}", customer_id.trim(), self.0);
        Uuid::new_v5(&ORDER_ID_NAMESPACE, name.as_bytes())
    }
}

/// Fingerprint of a request body (its parsed form, so spacing and key order do not matter).
pub fn request_hash(request: &PlaceOrder) -> String {
    let bytes = serde_json::to_vec(request).unwrap_or_default();
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub use crate::store::idempotency::StoredKey;

/// The first answer of `key` for `customer_id`, if it was recorded.
pub async fn find(
    conn: &mut PgConnection,
    customer_id: &str,
    key: &IdempotencyKey,
) -> Result<Option<StoredKey>, sqlx::Error> {
    crate::store::idempotency::find(conn, customer_id.trim(), key.as_str()).await
}

/// Records the key in the caller's transaction (the one that writes the order).
pub async fn insert(
    conn: &mut PgConnection,
    customer_id: &str,
    key: &IdempotencyKey,
    request_hash: &str,
    order_id: Uuid,
    response_status: u16,
) -> Result<(), sqlx::Error> {
    crate::store::idempotency::insert(
        conn,
        customer_id.trim(),
        key.as_str(),
        request_hash,
        order_id,
        response_status as i16,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER, value.parse().expect("header value"));
        h
    }

    #[test]
    fn keys_are_bounded_visible_ascii() {
        assert!(
            IdempotencyKey::from_headers(&HeaderMap::new())
                .expect("absent")
                .is_none()
        );
        assert!(
            IdempotencyKey::from_headers(&headers("abc-123"))
                .expect("ok")
                .is_some()
        );
        assert!(IdempotencyKey::from_headers(&headers("has space")).is_err());
        assert!(IdempotencyKey::from_headers(&headers(&"k".repeat(201))).is_err());
    }

    #[test]
    fn order_ids_are_stable_per_customer_and_key() {
        let key = IdempotencyKey("k1".into());
        assert_eq!(key.order_id("alice"), key.order_id("alice"));
        assert_ne!(key.order_id("alice"), key.order_id("bob"));
        assert_ne!(
            key.order_id("alice"),
            IdempotencyKey("k2".into()).order_id("alice")
        );
    }
}
