//! Start-up: runs one CLI command. `serve` builds its pieces in `serve`,
//! and keeps them current with the loops of `readiness` and `reload`.

mod readiness;
mod reload;
mod serve;

use std::process::ExitCode;

use anyhow::Context;

pub use serve::{start, ServerHandle};

use crate::cli::{Command, ConfigArg, GenCertsArgs};
use crate::config::Config;
use crate::pipeline::Engine;
use crate::tasks::Tasks;

/// Runs one CLI command.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(args) => {
            // Before anything else: as PID 1 in its container Sesame would
            // ignore SIGTERM until a handler exists, and start-up can wait
            // a minute for its certificate.
            let mut signals =
                crate::server::Signals::install().context("installing the SIGTERM/SIGINT handlers")?;
            match serve::start_unless(&args, signals.recv()).await? {
                Some(handle) => Ok(handle.run_until(async move { signals.recv().await }).await),
                None => Ok(ExitCode::SUCCESS),
            }
        }
        Command::Mutate(args) => crate::mutate::run(&args).await,
        Command::CheckConfig(arg) => check_config(&arg),
        Command::GenCerts(args) => gen_certs(&args),
        Command::Policy(crate::cli::PolicyCommand::Explain(args)) => crate::explain::run(&args).await,
    }
}

fn check_config(arg: &ConfigArg) -> anyhow::Result<ExitCode> {
    let path = arg.resolve();
    let loaded = Config::load(path.as_deref())?;
    println!(
        "{}: valid ({} stores, {} policy rules)",
        loaded.origin,
        loaded.config.stores.len(),
        loaded.config.policy.rules.len()
    );
    Ok(ExitCode::SUCCESS)
}

fn gen_certs(args: &GenCertsArgs) -> anyhow::Result<ExitCode> {
    let sans = crate::certs::service_sans(&args.service, &args.namespace);
    let certs = crate::certs::generate(&sans, args.days).context("generating certificates")?;
    crate::certs::write(&args.out, &certs).with_context(|| format!("writing to {}", args.out.display()))?;
    eprintln!(
        "wrote {0}/ca.crt, {0}/tls.crt and {0}/tls.key for {1}; caBundle:",
        args.out.display(),
        sans.join(", ")
    );
    println!("{}", certs.ca_bundle());
    Ok(ExitCode::SUCCESS)
}

/// Runs the upkeep of every store of `engine` (token and credential
/// renewal) as a task that ends with its store.
fn start_upkeeps(tasks: &Tasks, engine: &Engine) {
    for (name, stop, upkeep) in engine.stores().upkeeps() {
        tasks.spawn_until(format!("upkeep of store {name}"), stop, upkeep);
    }
}
