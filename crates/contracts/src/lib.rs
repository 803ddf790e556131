//! Request and response types the three services exchange over HTTP, plus the
//! RFC 9457 problem document every service answers errors with.
//!
//! Plain data: serde for the wire, `utoipa::ToSchema` for the OpenAPI documents,
//! and `validate()` methods that report every bad field at once.
//!
//! # Layout
//! - [`problem`]: `Problem` (application/problem+json) and `FieldError`.
//! - [`catalog`]: products, availability checks, reservations (served by product).
//! - [`delivery`]: deliveries and their statuses (served by delivery).
//! - [`orders`]: orders and their statuses (served by sales).
//! - [`common`]: line items and addresses shared by all of them.
//! - [`text_enum`]: statuses as PostgreSQL text values that refuse unknown strings.

pub mod catalog;
pub mod common;
pub mod delivery;
pub mod orders;
pub mod problem;
pub mod text_enum;

pub use common::{Address, LineItem};
pub use problem::{FieldError, Problem};
