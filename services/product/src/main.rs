//! The product service's binary.

use product::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::service::main("product", Config::from_env, async |config, token| {
        Application::build(config).await?.run(token).await
    })
    .await
}
