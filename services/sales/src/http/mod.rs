//! HTTP, the only place that sees [`AppState`]: one router per feature ([`orders`],
//! [`cancel`], [`reviews`], [`sagas`], [`reliability`], the staff console [`console`], and
//! the outbox's admin routes), the OpenAPI document and the middleware. Handlers parse and
//! answer; the work is done below (`placement`, `orders`, `store`).

pub mod cancel;
pub mod console;
pub mod dead_letters;
pub mod orders;
pub mod reliability;
pub mod reviews;
pub mod sagas;

use std::sync::Arc;

use axum::{Router, extract::FromRef, routing::get};
use platform::auth::StaffToken;
use resilience::Registry;
use utoipa::OpenApi;

use crate::{
    cache::OrderCache,
    config::Config,
    db::{Db, MIGRATOR},
    orders::cancellation::Canceller,
    peers::{delivery::DeliveryClient, product::ProductClient},
    placement::OrderSagas,
    rate_limit::RateLimiter,
    reliability::{Alerts, Sources},
};

/// What the handlers share (the workers get narrow dependencies of their own).
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    /// The order cache ([`crate::cache::orders`]); disabled without Redis.
    pub cache: OrderCache,
    /// Verifies staff members' credentials ([`crate::staff`]).
    pub staff: crate::staff::Verifier,
    /// Limits the console's sign-in attempts.
    pub login_limiter: console::LoginLimiter,
    pub product: ProductClient,
    pub delivery: DeliveryClient,
    pub breakers: Registry,
    pub config: Arc<Config>,
    /// When this instance started (the reconciliation status counts its grace from it).
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// The saga engine and the order saga.
    pub sagas: OrderSagas,
    /// Per-client limits of the customer endpoints.
    pub rate_limiter: RateLimiter,
    /// Open reliability alert episodes (the alert checker's, shown by `/health/reliability`).
    pub alerts: Alerts,
    /// Wakes the availability re-check when an order is accepted on the fallback.
    pub recheck_wake: Arc<tokio::sync::Notify>,
}

impl AppState {
    /// What a cancellation needs.
    pub fn canceller(&self) -> Canceller {
        Canceller {
            db: self.db.clone(),
            cache: self.cache.clone(),
            delivery: self.delivery.clone(),
            product: self.product.clone(),
        }
    }

    /// What the reliability figures are taken from.
    pub fn reliability_sources(&self) -> Sources {
        Sources {
            db: self.db.clone(),
            breakers: self.breakers.clone(),
            reconciliation: self.config.reconciliation.clone(),
            started_at: self.started_at,
            alerts: self.alerts.clone(),
        }
    }
}

/// Sales has no shared staff token: only people verified by [`crate::staff::authenticate`]
/// pass [`platform::auth::Staff`].
impl FromRef<AppState> for StaffToken {
    fn from_ref(_: &AppState) -> Self {
        StaffToken::default()
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "sales", description = "Customers place and follow orders."),
    paths(
        orders::place::place_order,
        orders::read::get_order,
        orders::read::list_orders,
        cancel::cancel,
        reviews::queue::list_reviews,
        reviews::queue::review_detail,
        reviews::decide::approve,
        reviews::decide::reject,
        reliability::reliability,
        sagas::get_saga,
        dead_letters::list_failed,
        dead_letters::replay_all,
        dead_letters::replay_one,
        dead_letters::discard_one,
    ),
    modifiers(&PersonalStaffSecurity)
)]
pub struct ApiDoc;

/// The `staff` security scheme of sales: each person's own credential.
struct PersonalStaffSecurity;

impl utoipa::Modify for PersonalStaffSecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "staff",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("<name>:<secret>")
                    .description(Some(
                        "A staff member's own credential, `<name>:<secret>` of an account made by \
                         `sales staff add NAME` (revoked by `sales staff revoke NAME`). Audits of \
                         decisions, replays and discards name that person.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document of the service, health routes included.
pub fn openapi() -> utoipa::openapi::OpenApi {
    platform::openapi::service_document(ApiDoc::openapi())
}

/// The complete router, middleware included.
pub fn router(state: AppState) -> Router {
    let readiness = crate::reliability::readiness(
        state.breakers.clone(),
        state.config.breakers.database.name.clone(),
    );
    // Each scrape first refreshes the gauges taken from the database.
    let metrics_refresh = {
        let sources = state.reliability_sources();
        platform::metrics::refresh_hook(move || {
            let sources = sources.clone();
            async move { crate::reliability::refresh_metrics(&sources).await }
        })
    };
    // Only the customer endpoints are rate limited (route_layer: matched routes only).
    let customer =
        orders::router()
            .merge(cancel::router())
            .route_layer(axum::middleware::from_fn_with_state(
                state.rate_limiter.clone(),
                crate::rate_limit::enforce,
            ));
    // The staff routes verify the person first (and drop any client-supplied name).
    let staff = reviews::router()
        .merge(dead_letters::router())
        .route("/sagas/{id}", get(sagas::get_saga))
        .route_layer(axum::middleware::from_fn_with_state(
            crate::staff::Gate {
                db: state.db.clone(),
                staff: state.staff.clone(),
            },
            crate::staff::authenticate,
        ));
    let router = customer
        .merge(staff)
        .merge(console::router())
        .route("/health/reliability", get(reliability::reliability))
        .with_state(state.clone())
        .merge(platform::health::router_with(
            state.db.pool.clone(),
            &MIGRATOR,
            Some(readiness),
        ))
        .merge(platform::server::openapi_router(openapi()))
        .merge(platform::metrics::router_with(Some(metrics_refresh)));
    platform::server::with_common_layers(router, &state.config.server)
}
