//! Building and running the product service: state, router, OpenAPI document,
//! and the background expiry worker.

use std::time::Duration;

use anyhow::Context;
use axum::{Router, extract::FromRef};
use platform::{
    auth::{ServiceToken, StaffToken},
    server::{ServiceSecurity, StaffSecurity},
    service::{Server, Workers, warn_if_unset},
};
use sqlx::{PgPool, migrate::Migrator};
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;

use crate::{catalog, config::Config, demo_catalog, expiry, order_events, reservations};

/// The product database's migrations, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/product");

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub staff_token: StaffToken,
    /// Who may reserve, commit and release stock (sales).
    pub service_token: ServiceToken,
    pub reservation_ttl: Duration,
}

impl FromRef<AppState> for StaffToken {
    fn from_ref(state: &AppState) -> Self {
        state.staff_token.clone()
    }
}

impl FromRef<AppState> for ServiceToken {
    fn from_ref(state: &AppState) -> Self {
        state.service_token.clone()
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "product", description = "Catalog, stock and reservations."),
    paths(
        catalog::list_products,
        catalog::get_product,
        catalog::create_product,
        catalog::set_stock,
        catalog::check_availability,
        reservations::create_reservation,
        reservations::get_reservation,
        reservations::commit_reservation,
        reservations::release_reservation,
        reservations::renew_reservations,
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
    let api = Router::new()
        .merge(catalog::router())
        .merge(reservations::router())
        .with_state(state.clone());
    let router = api
        .merge(platform::health::router(state.pool, &MIGRATOR))
        .merge(platform::server::openapi_router(openapi()))
        .merge(platform::metrics::router());
    platform::server::with_common_layers(router, &config.server)
}

/// A bound, ready-to-run product service.
pub struct Application {
    server: Server,
    pool: PgPool,
    config: Config,
    consumer: Option<messaging::Consumer>,
}

/// Provisions (if asked) and builds the consumer of order events.
async fn order_events_consumer(config: &Config) -> anyhow::Result<Option<messaging::Consumer>> {
    let broker = &config.broker;
    if !broker.enabled {
        return Ok(None);
    }
    let sdk = messaging::aws::sdk_config().await;
    let queue = messaging::QueueSpec {
        name: broker.queue_name.clone(),
        event_types: order_events::CONSUMED
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        excluded_statuses: vec![],
        max_receive_count: broker.max_receive_count,
        visibility_timeout_secs: broker.visibility_timeout_secs,
    };
    let consumer = messaging::Consumer::subscribed(
        &sdk,
        &broker.topic_name,
        queue,
        broker.provision,
        broker.wait_time_secs,
    )
    .await?
    .gathering(broker.gather);
    tracing::info!(queue = %broker.queue_name, "consuming order events");
    Ok(Some(consumer))
}

impl Application {
    /// Connects to the database (creating and migrating it), seeds the demo
    /// catalog if configured, and binds the listener.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let pool = platform::db::connect_and_migrate(&config.database, &MIGRATOR).await?;
        Self::with_pool(config, pool).await
    }

    /// Same as [`Application::build`] with a pool whose database is already migrated.
    pub async fn with_pool(config: Config, pool: PgPool) -> anyhow::Result<Self> {
        platform::metrics::install();
        if config.seed_demo_catalog {
            let n = demo_catalog::seed(&pool)
                .await
                .context("seeding the demo catalog")?;
            tracing::info!(inserted = n, "demo catalog seeded");
        }
        let staff_token = StaffToken::new(config.staff_token.clone());
        warn_if_unset(
            "PRODUCT_STAFF_TOKEN",
            staff_token.is_set(),
            "staff endpoints refuse every caller",
        );
        let service_token = ServiceToken::new(config.service_token.clone());
        warn_if_unset(
            "PRODUCT_SERVICE_TOKEN",
            service_token.is_set(),
            "reservations refuse every caller but staff",
        );
        let state = AppState {
            pool: pool.clone(),
            staff_token,
            service_token,
            reservation_ttl: config.reservation_ttl,
        };
        let consumer = order_events_consumer(&config).await?;
        let router = router(state, &config);
        let server = Server::bind("product", &config.server, router, pool.clone()).await?;
        Ok(Self {
            server,
            pool,
            config,
            consumer,
        })
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// Serves and runs the workers (expiry, the order events consumer) until `token` is
    /// cancelled, then drains.
    pub async fn run(self, token: CancellationToken) -> anyhow::Result<()> {
        let mut workers = Workers::new();
        let (pool, interval) = (self.pool.clone(), self.config.expiry_sweep_interval);
        workers.add(move |token| expiry::run(pool, interval, token));
        if let Some(consumer) = self.consumer {
            let handler = order_events::OrderEvents { pool: self.pool };
            workers.add(move |token| async move { consumer.run(handler, token).await });
        }
        self.server.run(token, workers).await
    }
}
