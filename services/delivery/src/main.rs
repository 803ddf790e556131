//! The delivery service's binary.

use delivery::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::service::main("delivery", Config::from_env, async |config, token| {
        Application::build(config).await?.run(token).await
    })
    .await
}
