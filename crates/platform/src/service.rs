//! One bootstrap for the services: what every binary's `main` does ([`main`]: telemetry,
//! configuration, cancellation on a signal, build, run, telemetry flushed) and what every
//! `Application` does with its database, listener and workers ([`Server`], [`Workers`]):
//! bind with a message naming the address, serve until cancelled, then give the workers the
//! shutdown grace to finish and close the pool.

use std::{future::Future, pin::Pin, time::Duration};

use anyhow::Context;
use axum::Router;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::config::{ConfigError, ServerConfig};

/// A service binary's `main`: initialises telemetry as `name`, reads the configuration
/// (`config`; an error says which variables, e.g. `reading PRODUCT_* configuration`), cancels
/// one token on ctrl-c or SIGTERM, runs `start` with the configuration and that token, and
/// flushes telemetry whatever `start` returned.
pub async fn main<C>(
    name: &'static str,
    config: impl FnOnce() -> Result<C, ConfigError>,
    start: impl AsyncFnOnce(C, CancellationToken) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let telemetry = crate::telemetry::init(name)?;
    let result = match config()
        .with_context(|| format!("reading {}_* configuration", name.to_ascii_uppercase()))
    {
        Ok(config) => {
            let token = CancellationToken::new();
            crate::shutdown::cancel_on_signal(token.clone());
            start(config, token).await
        }
        Err(e) => Err(e),
    };
    // Exports the spans of the last requests.
    telemetry.shutdown().await;
    result
}

/// Warns at start-up when a credential is not configured: `variable` names it, `consequence`
/// says what callers will find.
pub fn warn_if_unset(variable: &str, set: bool, consequence: &str) {
    if !set {
        tracing::warn!("{variable} is not set: {consequence}");
    }
}

type Worker = Box<dyn FnOnce(CancellationToken) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// The background workers of a service, started by [`Server::run`] with its token.
#[derive(Default)]
pub struct Workers(Vec<Worker>);

impl Workers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a worker: `worker(token)` runs until the token is cancelled.
    pub fn add<F, Fut>(&mut self, worker: F) -> &mut Self
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.0.push(Box::new(move |token| Box::pin(worker(token))));
        self
    }
}

/// A service's bound listener, router and pool, ready to run.
pub struct Server {
    name: &'static str,
    listener: TcpListener,
    router: Router,
    pool: PgPool,
    grace: Duration,
}

impl Server {
    /// Binds `config.listen_addr` (the error names it) for `router`; `pool` is closed when
    /// the service stops.
    pub async fn bind(
        name: &'static str,
        config: &ServerConfig,
        router: Router,
        pool: PgPool,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.listen_addr)
            .await
            .with_context(|| format!("binding {}", config.listen_addr))?;
        Ok(Self {
            name,
            listener,
            router,
            pool,
            grace: config.shutdown_grace,
        })
    }

    /// The port listened on (the one picked when configured with port 0).
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Starts `workers`, serves until `token` is cancelled, then cancels the workers and
    /// waits for them up to the shutdown grace, and closes the pool.
    pub async fn run(self, token: CancellationToken, workers: Workers) -> anyhow::Result<()> {
        let tracker = TaskTracker::new();
        for worker in workers.0 {
            tracker.spawn(worker(token.clone()));
        }
        tracker.close();
        crate::server::serve(self.listener, self.router, token.clone(), self.grace).await?;
        token.cancel();
        if tokio::time::timeout(self.grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                service = self.name,
                "workers did not stop within the shutdown grace"
            );
        }
        self.pool.close().await;
        tracing::info!(service = self.name, "{} stopped", self.name);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    #[tokio::test]
    async fn workers_run_until_cancelled_and_the_server_stops_with_them() {
        let config = ServerConfig {
            listen_addr: "127.0.0.1:0".parse().expect("address"),
            request_timeout: Duration::from_secs(1),
            body_limit_bytes: 1024,
            shutdown_grace: Duration::from_secs(5),
        };
        // A lazy pool never connects: closing it is all the server does with it.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://127.0.0.1:1/none")
            .expect("lazy pool");
        let server = Server::bind("test", &config, Router::new(), pool.clone())
            .await
            .expect("bound");
        assert_ne!(server.port(), 0, "port 0 picks a free port");
        let stopped = Arc::new(AtomicUsize::new(0));
        let mut workers = Workers::new();
        for _ in 0..2 {
            let stopped = stopped.clone();
            workers.add(move |token: CancellationToken| async move {
                token.cancelled().await;
                stopped.fetch_add(1, Ordering::SeqCst);
            });
        }
        let token = CancellationToken::new();
        let run = tokio::spawn(server.run(token.clone(), workers));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            stopped.load(Ordering::SeqCst),
            0,
            "workers run while serving"
        );
        token.cancel();
        run.await.expect("joined").expect("clean stop");
        assert_eq!(stopped.load(Ordering::SeqCst), 2, "every worker stopped");
        assert!(pool.is_closed());
    }

    #[tokio::test]
    async fn a_taken_address_is_named() {
        let taken = TcpListener::bind("127.0.0.1:0").await.expect("bound");
        let config = ServerConfig {
            listen_addr: taken.local_addr().expect("address"),
            request_timeout: Duration::from_secs(1),
            body_limit_bytes: 1024,
            shutdown_grace: Duration::from_secs(1),
        };
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://127.0.0.1:1/none")
            .expect("lazy pool");
        let err = Server::bind("test", &config, Router::new(), pool)
            .await
            .err()
            .expect("address in use");
        assert_eq!(err.to_string(), format!("binding {}", config.listen_addr));
    }
}
