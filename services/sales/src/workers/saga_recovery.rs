//! Saga recovery: resumes order sagas left running by a crashed instance.

use std::time::Duration;

use chrono::Utc;

use crate::placement::OrderSagas;

/// Resumes sagas left running by a crashed instance: once at start-up, then every `interval`.
pub async fn run(
    sagas: OrderSagas,
    interval: Duration,
    token: tokio_util::sync::CancellationToken,
) {
    use platform::worker::{Next, Start, run_every};
    run_every(
        "saga-recovery",
        interval,
        Start::Immediately,
        token,
        || async {
            let report = sagas
                .orchestrator
                .recover(&[sagas.definition.as_ref()], Utc::now())
                .await?;
            if report.found > 0 {
                tracing::info!(?report, "order sagas recovered");
            }
            Ok::<_, saga::Error>(Next::Wait)
        },
    )
    .await;
}
