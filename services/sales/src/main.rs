use anyhow::Context;
use sales::{Application, Config};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::telemetry::init("sales");
    let config = Config::from_env().context("reading SALES_* configuration")?;
    let token = CancellationToken::new();
    platform::shutdown::cancel_on_signal(token.clone());
    let app = Application::build(config).await?;
    app.run(token).await
}
