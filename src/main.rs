use clap::Parser;

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
