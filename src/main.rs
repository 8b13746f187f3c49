use clap::Parser;

/// Reviews are small-object JSON work (decode, plan, patch, encode); mimalloc
/// serves that churn with far fewer instructions than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = sesame::cli::Cli::parse();
    sesame::telemetry::init_logging(cli.log_format, &cli.log_level);
    match sesame::run::run(cli.command).await {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
