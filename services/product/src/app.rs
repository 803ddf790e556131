//! Building and running the product service: state, router, OpenAPI document,
//! and the background expiry worker.

use std::time::Duration;

use anyhow::Context;
use axum::{Router, extract::FromRef};
use platform::{auth::StaffToken, server::StaffSecurity};
use sqlx::{PgPool, migrate::Migrator};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use utoipa::OpenApi;

use crate::{catalog, config::Config, demo_catalog, expiry, reservations};

/// The product database's migrations, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/product");

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub staff_token: StaffToken,
    pub reservation_ttl: Duration,
}

impl FromRef<AppState> for StaffToken {
    fn from_ref(state: &AppState) -> Self {
        state.staff_token.clone()
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
    ),
    modifiers(&StaffSecurity)
)]
pub struct ApiDoc;

/// The OpenAPI document of the service, health routes included.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(platform::health::HealthApi::openapi());
    doc
}

/// The complete router, middleware included.
pub fn router(state: AppState, config: &Config) -> Router {
    let api = Router::new()
        .merge(catalog::router())
        .merge(reservations::router())
        .with_state(state.clone());
    let router = api
        .merge(platform::health::router(state.pool, &MIGRATOR))
        .merge(platform::server::openapi_router(openapi()));
    platform::server::with_common_layers(router, &config.server)
}

/// A bound, ready-to-run product service.
pub struct Application {
    listener: TcpListener,
    router: Router,
    pool: PgPool,
    config: Config,
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
        if config.seed_demo_catalog {
            let n = demo_catalog::seed(&pool)
                .await
                .context("seeding the demo catalog")?;
            tracing::info!(inserted = n, "demo catalog seeded");
        }
        let staff_token = StaffToken::new(config.staff_token.clone());
        if !staff_token.is_set() {
            tracing::warn!("PRODUCT_STAFF_TOKEN is not set: staff endpoints refuse every caller");
        }
        let state = AppState {
            pool: pool.clone(),
            staff_token,
            reservation_ttl: config.reservation_ttl,
        };
        let router = router(state, &config);
        let listener = TcpListener::bind(config.server.listen_addr)
            .await
            .with_context(|| format!("binding {}", config.server.listen_addr))?;
        Ok(Self {
            listener,
            router,
            pool,
            config,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Serves and runs the workers until `token` is cancelled, then drains.
    pub async fn run(self, token: CancellationToken) -> anyhow::Result<()> {
        let tracker = TaskTracker::new();
        tracker.spawn(expiry::run(
            self.pool.clone(),
            self.config.expiry_sweep_interval,
            token.clone(),
        ));
        tracker.close();
        platform::server::serve(
            self.listener,
            self.router,
            token.clone(),
            self.config.server.shutdown_grace,
        )
        .await?;
        token.cancel();
        let _ = tokio::time::timeout(self.config.server.shutdown_grace, tracker.wait()).await;
        self.pool.close().await;
        tracing::info!("product stopped");
        Ok(())
    }
}
