//! The order endpoints: placing an order (the write path), reading one, and
//! listing them with keyset pagination.

pub mod place;
pub mod read;

use axum::{Router, routing::get};

use super::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/orders", get(read::list_orders).post(place::place_order))
        .route("/orders/{id}", get(read::get_order))
}
