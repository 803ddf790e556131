//! Building and running the sales service, the composition root: breakers, peers,
//! the cache, the HTTP state and router ([`crate::http`]) and the background workers
//! ([`crate::workers`]), each given the narrow dependencies it needs.

use std::sync::Arc;

use platform::service::{Server, Workers};
use resilience::Registry;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{
    cache::OrderCache,
    config::Config,
    db::{Db, MIGRATOR},
    http::{AppState, router},
    outbox::{self, relay::Relay},
    peers::{HttpPeer, delivery::DeliveryClient, product::ProductClient},
    placement::{self, OrderSagas},
    rate_limit::RateLimiter,
    reliability::Alerts,
    workers::{
        alerts, availability_recheck, delivery_events, delivery_retry, reconciliation,
        reservation_keeper, saga_recovery,
    },
};

/// A bound, ready-to-run sales service.
pub struct Application {
    server: Server,
    state: AppState,
    relay: Option<Relay>,
    delivery_events: Option<messaging::Consumer>,
}

/// The relay, when the broker is enabled (provisioning the topic if asked).
async fn relay(
    config: &Config,
    pool: &PgPool,
    breakers: &Registry,
) -> anyhow::Result<Option<Relay>> {
    let breaker = breakers.register(config.breakers.broker.clone());
    let relay = Relay::from_config(&config.outbox, pool, breaker).await?;
    if relay.is_none() {
        tracing::warn!("SALES_BROKER_ENABLED is false: events stay in the outbox");
    }
    Ok(relay)
}

/// The consumer of delivery's status events, when enabled (provisioning delivery's topic,
/// the queue, its DLQ and the filtered subscription if asked).
async fn delivery_events_consumer(config: &Config) -> anyhow::Result<Option<messaging::Consumer>> {
    let events = &config.delivery_events;
    if !events.enabled {
        tracing::warn!(
            "SALES_DELIVERY_EVENTS_ENABLED is false: orders follow their deliveries through reconciliation only"
        );
        return Ok(None);
    }
    let sdk = messaging::aws::sdk_config().await;
    let queue = messaging::QueueSpec {
        name: events.queue_name.clone(),
        event_types: delivery_events::CONSUMED
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        excluded_statuses: delivery_events::NOT_DELIVERED
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect(),
        max_receive_count: events.max_receive_count,
        visibility_timeout_secs: events.visibility_timeout_secs,
    };
    let consumer = messaging::Consumer::subscribed(
        &sdk,
        &events.topic_name,
        queue,
        events.provision,
        events.wait_time_secs,
    )
    .await?;
    tracing::info!(queue = %events.queue_name, "following delivery's status events");
    Ok(Some(consumer))
}

impl Application {
    /// Connects to the database (creating and migrating it) and binds the listener.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let pool = platform::db::connect_and_migrate(&config.database, &MIGRATOR).await?;
        Self::with_pool(config, pool).await
    }

    /// Same as [`Application::build`] with a pool whose database is already migrated.
    pub async fn with_pool(config: Config, pool: PgPool) -> anyhow::Result<Self> {
        // Before the breakers: they take their metric handles when built.
        platform::metrics::install();
        let breakers = Registry::new();
        let peer =
            |name: &'static str, url: &str, token: &Option<String>, breaker, max_concurrent| {
                platform::service::warn_if_unset(
                    &format!("SALES_{}_SERVICE_TOKEN", name.to_ascii_uppercase()),
                    token.is_some(),
                    &format!("{name} refuses sales' reservations or deliveries"),
                );
                HttpPeer::new(
                    name,
                    url,
                    token.as_deref(),
                    config.http_connect_timeout,
                    config.http_request_timeout,
                    breaker,
                    max_concurrent,
                )
            };
        let product = peer(
            "product",
            &config.product_url,
            &config.product_service_token,
            breakers.register(config.breakers.product.clone()),
            config.bulkheads.product,
        )?;
        let delivery = peer(
            "delivery",
            &config.delivery_url,
            &config.delivery_service_token,
            breakers.register(config.breakers.delivery.clone()),
            config.bulkheads.delivery,
        )?;
        let relay = relay(&config, &pool, &breakers).await?;
        let delivery_events = delivery_events_consumer(&config).await?;
        let redis = crate::cache::Redis::connect(&config.cache, config.bulkheads.redis).await?;
        let db = Db {
            pool,
            breaker: breakers.register(config.breakers.database.clone()),
        };
        let cache = OrderCache::new(redis.clone(), config.cache.order_ttl);
        let rate_limiter = RateLimiter::new(&config.rate_limit, redis);
        let (product, delivery) = (ProductClient::new(product), DeliveryClient::new(delivery));
        let config = Arc::new(config);
        let recheck_wake = Arc::new(tokio::sync::Notify::new());
        let sagas = OrderSagas::new(
            placement::Deps {
                db: db.clone(),
                product: product.clone(),
                delivery: delivery.clone(),
                config: config.clone(),
                recheck_wake: recheck_wake.clone(),
                outbox_marks: relay.as_ref().map(|r| r.flight.clone()),
            },
            format!("sales-{}-{}", std::process::id(), uuid::Uuid::now_v7()),
            config.saga_lease,
        );
        let state = AppState {
            db,
            cache,
            staff: crate::staff::Verifier::default(),
            login_limiter: crate::http::console::LoginLimiter::new(
                config.console.login_attempts_per_minute,
            ),
            product,
            delivery,
            breakers,
            config,
            started_at: chrono::Utc::now(),
            sagas,
            alerts: Alerts::default(),
            rate_limiter,
            recheck_wake,
        };
        let server = Server::bind(
            "sales",
            &state.config.server,
            router(state.clone()),
            state.db.pool.clone(),
        )
        .await?;
        Ok(Self {
            server,
            state,
            relay,
            delivery_events,
        })
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// The delivery retry worker of this instance (tests drive it step by step).
    pub fn delivery_retry_worker(&self) -> delivery_retry::Worker {
        delivery_retry::Worker {
            db: self.state.db.clone(),
            cache: self.state.cache.clone(),
            delivery: self.state.delivery.clone(),
            config: self.state.config.delivery_retry.clone(),
        }
    }

    /// The reconciliation worker of this instance (tests drive it step by step).
    pub fn reconciliation_worker(&self) -> reconciliation::Worker {
        reconciliation::Worker {
            db: self.state.db.clone(),
            cache: self.state.cache.clone(),
            delivery: self.state.delivery.clone(),
            product: self.state.product.clone(),
            config: self.state.config.reconciliation.clone(),
        }
    }

    /// The availability re-check worker of this instance (tests drive it step by step).
    pub fn availability_recheck_worker(&self) -> availability_recheck::Worker {
        availability_recheck::Worker {
            db: self.state.db.clone(),
            cache: self.state.cache.clone(),
            product: self.state.product.clone(),
            config: self.state.config.availability_recheck.clone(),
            wake: self.state.recheck_wake.clone(),
        }
    }

    /// The reservation keeper of this instance (tests drive it step by step).
    pub fn reservation_keeper(&self) -> reservation_keeper::Worker {
        reservation_keeper::Worker {
            db: self.state.db.clone(),
            cache: self.state.cache.clone(),
            product: self.state.product.clone(),
            config: self.state.config.reservation_keeper.clone(),
        }
    }

    /// The reliability alert checker of this instance (tests drive it step by step).
    pub fn alert_checker(&self) -> alerts::Checker {
        alerts::Checker::new(
            self.state.reliability_sources(),
            self.state.config.alerts.clone(),
        )
    }

    /// The outbox relay of this instance, if the broker is enabled.
    pub fn relay(&self) -> Option<&Relay> {
        self.relay.as_ref()
    }

    /// Serves and runs the workers until `token` is cancelled, then drains.
    pub async fn run(self, token: CancellationToken) -> anyhow::Result<()> {
        let mut workers = Workers::new();
        let (sagas, every) = (
            self.state.sagas.clone(),
            self.state.config.saga_recovery_interval,
        );
        workers.add(move |token| saga_recovery::run(sagas, every, token));
        let retry = self.delivery_retry_worker();
        workers.add(move |token| retry.run(token));
        if self.state.config.reconciliation.enabled {
            let reconciliation = self.reconciliation_worker();
            workers.add(move |token| reconciliation.run(token));
        } else {
            tracing::warn!(
                "SALES_RECONCILIATION_ENABLED is false: no safety net for lost delivery events"
            );
        }
        if let Some(consumer) = self.delivery_events.clone() {
            let handler = delivery_events::Consumer {
                db: self.state.db.clone(),
                cache: self.state.cache.clone(),
            };
            workers.add(move |token| async move { consumer.run(handler, token).await });
        }
        let recheck = self.availability_recheck_worker();
        workers.add(move |token| recheck.run(token));
        let alerts = self.alert_checker();
        workers.add(move |token| alerts.run(token));
        let keeper = self.reservation_keeper();
        workers.add(move |token| keeper.run(token));
        if let Some(relay) = self.relay.clone() {
            workers.add(move |token| relay.run(token));
        }
        let (pool, outbox_config) = (self.state.db.pool.clone(), self.state.config.outbox.clone());
        workers.add(move |token| outbox::cleanup::run(pool, outbox_config, token));
        self.server.run(token, workers).await
    }
}
