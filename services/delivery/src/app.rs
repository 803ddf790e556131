//! Building and running the delivery service.

use axum::{Router, extract::FromRef};
use platform::{
    auth::{ServiceToken, StaffToken},
    server::{ServiceSecurity, StaffSecurity},
    service::{Server, Workers, warn_if_unset},
};
use sqlx::{PgPool, migrate::Migrator};
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;

use crate::{config::Config, deliveries};
use outbox::dead_letters::http as dead_letters;

/// The delivery database's migrations, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/delivery");

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub staff_token: StaffToken,
    /// Who may initiate and cancel deliveries (sales).
    pub service_token: ServiceToken,
    /// What this instance's relay published and has not marked yet: status changes carry
    /// the marks in their own transactions (none when the broker is off).
    pub outbox_marks: Option<std::sync::Arc<outbox::owned::InFlight>>,
}

impl FromRef<AppState> for StaffToken {
    fn from_ref(state: &AppState) -> Self {
        state.staff_token.clone()
    }
}

/// The dead-letter endpoints ([`outbox::dead_letters::http`]) use the pool as is.
impl FromRef<AppState> for dead_letters::Store {
    fn from_ref(state: &AppState) -> Self {
        dead_letters::Store {
            pool: state.pool.clone(),
            breaker: None,
        }
    }
}

impl FromRef<AppState> for ServiceToken {
    fn from_ref(state: &AppState) -> Self {
        state.service_token.clone()
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "delivery", description = "Deliveries of orders and their courier statuses."),
    paths(
        deliveries::create_delivery,
        deliveries::list_deliveries,
        deliveries::get_delivery,
        deliveries::delivery_history,
        deliveries::cancel_delivery,
        deliveries::update_status,
        dead_letters::list_failed,
        dead_letters::replay_all,
        dead_letters::replay_one,
        dead_letters::discard_one,
    ),
    modifiers(&StaffSecurity, &ServiceSecurity)
)]
pub struct ApiDoc;

/// The OpenAPI document of the service, health routes included.
pub fn openapi() -> utoipa::openapi::OpenApi {
    platform::openapi::service_document(ApiDoc::openapi())
}

/// The complete router, middleware included.
pub fn router(state: AppState, config: &Config) -> Router {
    let router = deliveries::router()
        .merge(dead_letters::router())
        .with_state(state.clone())
        .merge(platform::health::router(state.pool, &MIGRATOR))
        .merge(platform::server::openapi_router(openapi()))
        .merge(platform::metrics::router());
    platform::server::with_common_layers(router, &config.server)
}

/// A bound, ready-to-run delivery service.
pub struct Application {
    server: Server,
    pool: PgPool,
    config: Config,
    relay: Option<outbox::Relay>,
}

impl Application {
    /// Connects to the database (creating and migrating it) and binds the listener.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let pool = platform::db::connect_and_migrate(&config.database, &MIGRATOR).await?;
        Self::with_pool(config, pool).await
    }

    /// Same as [`Application::build`] with a pool whose database is already migrated.
    pub async fn with_pool(config: Config, pool: PgPool) -> anyhow::Result<Self> {
        platform::metrics::install();
        let staff_token = StaffToken::new(config.staff_token.clone());
        warn_if_unset(
            "DELIVERY_STAFF_TOKEN",
            staff_token.is_set(),
            "status updates refuse every caller",
        );
        let service_token = ServiceToken::new(config.service_token.clone());
        warn_if_unset(
            "DELIVERY_SERVICE_TOKEN",
            service_token.is_set(),
            "initiating and cancelling deliveries refuse every caller but staff",
        );
        let breaker = resilience::CircuitBreaker::new(config.broker_breaker.clone());
        let relay = outbox::Relay::from_config(&config.outbox, &pool, breaker).await?;
        if relay.is_none() {
            tracing::warn!("DELIVERY_BROKER_ENABLED is false: status changes stay in the outbox");
        }
        let state = AppState {
            pool: pool.clone(),
            staff_token,
            service_token,
            outbox_marks: relay.as_ref().map(|r| r.flight.clone()),
        };
        let router = router(state, &config);
        let server = Server::bind("delivery", &config.server, router, pool.clone()).await?;
        Ok(Self {
            server,
            pool,
            config,
            relay,
        })
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// The outbox relay of this instance, if the broker is enabled (tests drive it).
    pub fn relay(&self) -> Option<&outbox::Relay> {
        self.relay.as_ref()
    }

    /// Serves and runs the outbox workers (relay, retention, alerts) until `token` is
    /// cancelled, then drains.
    pub async fn run(self, token: CancellationToken) -> anyhow::Result<()> {
        let mut workers = Workers::new();
        if let Some(relay) = self.relay {
            workers.add(move |token| relay.run(token));
        }
        let (pool, config) = (self.pool.clone(), self.config.outbox);
        workers.add(move |token| outbox::cleanup::run(pool, config, token));
        let (pool, alerts) = (self.pool, self.config.alerts);
        workers.add(move |token| outbox::monitor::run(pool, alerts, token));
        self.server.run(token, workers).await
    }
}
