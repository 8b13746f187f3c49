use clap::Parser;

/// Reviews are small-object JSON work (decode, plan, patch, encode); mimalloc
/// serves that churn with far fewer instructions than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = sesame::cli::Cli::parse();
    let _log = sesame::telemetry::init_logging(cli.log_format, &cli.log_level);
    let serving = matches!(cli.command, sesame::cli::Command::Serve(_));
    match sesame::run::run(cli.command).await {
        Ok(code) => code,
        Err(e) => {
            // The server reports through its (possibly JSON) log; the other commands to the terminal.
            if serving {
                tracing::error!("{e:#}");
            } else {
                eprintln!("error: {e:#}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
