//! The sales service's binary, and `sales staff …`, the operator command for staff accounts.

use sales::{Application, Config};

/// mimalloc: a request allocates many small, short-lived buffers (JSON, SQL arguments,
/// headers), which it serves with less CPU than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `sales staff …`: the operator command for staff accounts, no service.
    if args.first().map(String::as_str) == Some("staff") {
        match sales::staff::cli::run(&args[1..]).await {
            Ok(out) => print!("{out}"),
            Err(e) => {
                // An operator's mistake: the message, not a backtrace.
                eprintln!("sales staff: {e:#}");
                std::process::exit(1);
            }
        }
        return Ok(());
    }
    platform::service::main("sales", Config::from_env, async |config, token| {
        Application::build(config).await?.run(token).await
    })
    .await
}
