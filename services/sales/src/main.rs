use anyhow::Context;
use sales::{Application, Config};
use tokio_util::sync::CancellationToken;

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
    let telemetry = platform::telemetry::init("sales")?;
    let config = Config::from_env().context("reading SALES_* configuration")?;
    let token = CancellationToken::new();
    platform::shutdown::cancel_on_signal(token.clone());
    let result = match Application::build(config).await {
        Ok(app) => app.run(token).await,
        Err(e) => Err(e),
    };
    // Exports the spans of the last requests.
    telemetry.shutdown().await;
    result
}
