//! The product service's binary.

use product::{Application, Config};

/// mimalloc: a request allocates many small, short-lived buffers (JSON, SQL arguments,
/// headers), which it serves with less CPU than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::service::main("product", Config::from_env, async |config, token| {
        Application::build(config).await?.run(token).await
    })
    .await
}
