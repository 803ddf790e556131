//! Integration tests of the delivery service: the real app on port 0 against a
//! fresh PostgreSQL database per test (`#[sqlx::test]`).
#![allow(clippy::unwrap_used)]

mod deliveries;
mod outbox;

use delivery::{Application, Config};
use platform::config::Env;
use sqlx::PgPool;
use testkit::{Api, Running, SERVICE_TOKEN, STAFF_TOKEN};

/// Starts the service on a free port. Its `api` calls as sales does, with the
/// service token (`api.anonymous()` calls without any credential).
pub async fn spawn(pool: PgPool) -> Running {
    let vars = [
        ("DELIVERY_LISTEN_ADDR", "127.0.0.1:0"),
        ("DELIVERY_STAFF_TOKEN", STAFF_TOKEN),
        ("DELIVERY_SERVICE_TOKEN", SERVICE_TOKEN),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let config = Config::from(&Env::from_map("DELIVERY_", vars)).unwrap();
    let app = Application::with_pool(config, pool).await.unwrap();
    let port = app.port();
    let mut running = Running::spawn(port, |token| app.run(token));
    running.api = Api::with_bearer(running.api.base.clone(), SERVICE_TOKEN);
    running
}
