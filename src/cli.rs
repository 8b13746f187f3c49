//! Command-line interface. Every flag also reads a `SESAME_…` env var.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::kube::{KubeArgs, KubeMode};
use crate::server::ConnectionArgs;
use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "sesame",
    version,
    about = "Kubernetes admission webhook that injects secrets from external stores"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "SESAME_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// Log level or tracing filter (RUST_LOG overrides it).
    #[arg(long, global = true, env = "SESAME_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

// Parsed once at start; boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the mutating webhook over TLS, with an admin port for probes and metrics.
    Serve(ServeArgs),
    /// Run the admission pipeline on a Pod or workload manifest and print the result.
    Mutate(MutateArgs),
    /// Validate the configuration file and exit.
    CheckConfig(ConfigArg),
    /// Write a CA and a serving certificate for the webhook Service, and print the caBundle.
    GenCerts(GenCertsArgs),
    /// Ask the configuration's policy, offline.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

/// `sesame policy ...`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// For each reference, print the rule that grants it to the namespace
    /// and service account, or why none does.
    Explain(ExplainArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The namespace of the Pods asking.
    #[arg(long, short = 'n')]
    pub namespace: String,
    /// The Pods' service account.
    #[arg(long, default_value = "default")]
    pub service_account: String,
    /// A label of the namespace, `key=value` (repeatable), for rules with a
    /// namespaceSelector; `kubernetes.io/metadata.name` is always set.
    #[arg(long = "namespace-label", value_name = "KEY=VALUE")]
    pub namespace_labels: Vec<String>,
    /// References as written in an annotation, e.g. `vault:apps/web/db#password`.
    #[arg(required = true, value_name = "REFERENCE")]
    pub references: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ConfigArg {
    /// Configuration file; default `sesame.yaml` if present, else the built-in example.
    #[arg(long, short = 'c', env = "SESAME_CONFIG")]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    /// The file to read, or `None` for the built-in example.
    pub fn resolve(&self) -> Option<PathBuf> {
        match &self.config {
            Some(p) => Some(p.clone()),
            None => {
                let local = PathBuf::from("sesame.yaml");
                local.exists().then_some(local)
            }
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Address to listen on.
    #[arg(long, env = "SESAME_BIND_ADDRESS", default_value = "0.0.0.0")]
    pub(crate) bind_address: IpAddr,
    /// HTTPS port for the API server (`POST /mutate`).
    #[arg(long, env = "SESAME_TLS_PORT", default_value_t = 8443)]
    pub(crate) tls_port: u16,
    /// Plain-HTTP port for /livez, /readyz and /metrics.
    #[arg(long, env = "SESAME_ADMIN_PORT", default_value_t = 8080)]
    pub(crate) admin_port: u16,
    /// Directory with tls.crt and tls.key; without them a self-signed pair is generated.
    #[arg(long, env = "SESAME_CERT_DIR", default_value = "certs")]
    pub cert_dir: PathBuf,
    /// How often certificate files and the configuration file are re-read.
    #[arg(long, env = "SESAME_RELOAD_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub reload_interval: Duration,
    /// Largest accepted request body in bytes.
    #[arg(long, env = "SESAME_MAX_BODY_BYTES", default_value_t = 3 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Time a client gets to finish the TLS handshake, and then to send its
    /// first request's headers.
    #[arg(long, env = "SESAME_CLIENT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub client_timeout: Duration,
    /// How long in-flight requests may finish after SIGTERM.
    #[arg(long, env = "SESAME_DRAIN_TIMEOUT", default_value = "25s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// PEM file of the CA(s) whose client certificates the webhook port
    /// requires (the API server presents one when its AdmissionConfiguration
    /// gives it a kubeconfig for the webhook). Without it any caller is
    /// served, and is treated as unauthenticated (docs/security.md).
    #[arg(long, env = "SESAME_CLIENT_CA_FILE")]
    pub client_ca_file: Option<PathBuf>,
    #[command(flatten)]
    pub connections: ConnectionArgs,
    #[command(flatten)]
    pub kube: KubeArgs,
}

impl ServeArgs {
    /// Serving on 127.0.0.1 with ephemeral ports, without a cluster: for
    /// embedding and tests. Fields can be changed afterwards.
    pub fn loopback(config: PathBuf, cert_dir: PathBuf) -> Self {
        Self {
            config: ConfigArg { config: Some(config) },
            bind_address: IpAddr::from([127, 0, 0, 1]),
            tls_port: 0,
            admin_port: 0,
            cert_dir,
            reload_interval: Duration::from_secs(10),
            max_body_bytes: 3 * 1024 * 1024,
            client_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
            client_ca_file: None,
            connections: ConnectionArgs::default(),
            kube: KubeArgs {
                mode: KubeMode::Off,
                ..KubeArgs::default()
            },
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct MutateArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Manifest to read (YAML or JSON, several documents allowed); `-` reads stdin.
    #[arg(long, short = 'f')]
    pub file: PathBuf,
    /// Namespace the objects are created in (default: their own, else `default`).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Print secret values in the Secret (base64). Off by default: keys only.
    #[arg(long)]
    pub(crate) show_values: bool,
}

#[derive(Debug, Clone, Args)]
pub struct GenCertsArgs {
    /// Name of the webhook Service.
    #[arg(long, default_value = "sesame")]
    pub service: String,
    /// Namespace of the webhook Service.
    #[arg(long, default_value = "sesame-system")]
    pub namespace: String,
    /// Where to write ca.crt, tls.crt and tls.key.
    #[arg(long, default_value = "certs")]
    pub out: PathBuf,
    /// Validity of the serving certificate in days (the CA lives twice as long).
    #[arg(long, default_value_t = 365)]
    pub(crate) days: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::{CertMode, KubeArgs};
    use clap::CommandFactory;

    #[test]
    fn flags_are_consistent() {
        Cli::command().debug_assert();
        let cli = Cli::parse_from([
            "sesame",
            "serve",
            "--cert-mode",
            "self-managed",
            "--namespace",
            "ns",
        ]);
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(args.kube.certs.cert_mode, CertMode::SelfManaged);
        assert_eq!(args.kube.namespace.as_deref(), Some("ns"));
        assert_eq!(args.kube.certs.webhook_config, "sesame");
        assert_eq!(
            args.kube.certs.serving_cert_validity,
            KubeArgs::default().certs.serving_cert_validity
        );
    }
}
