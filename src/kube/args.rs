//! The Kubernetes side's command-line arguments, flattened into `serve`'s:
//! whether and how to reach the API, leader election, garbage collection,
//! the ConfigMap of the configuration, and where the serving certificate
//! comes from.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// Whether `serve` talks to the Kubernetes API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum KubeMode {
    /// Use the API when a configuration is found; otherwise dry-run.
    #[default]
    Auto,
    /// Never: managed Secrets are not written (dry-run).
    Off,
    /// Fail at start when no configuration is found.
    Required,
}

/// Where the serving certificate comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum CertMode {
    /// tls.crt and tls.key in the certificate directory, re-read when they change.
    #[default]
    Files,
    /// A CA and a serving certificate kept by Sesame in a Secret.
    SelfManaged,
}

/// The Kubernetes API side of `serve`.
#[derive(Debug, Clone, Args)]
pub struct KubeArgs {
    /// Write managed Secrets through the Kubernetes API: `auto` when in a
    /// cluster or KUBECONFIG is set (else dry-run), `off`, or `required`.
    #[arg(long = "kube", env = "SESAME_KUBE", value_enum, default_value = "auto")]
    pub mode: KubeMode,
    /// Kubeconfig file to use instead of in-cluster config or KUBECONFIG.
    #[arg(long, env = "SESAME_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Sesame's own namespace: where its certificate Secret lives, the
    /// Service's namespace in the certificate, and the default for the Lease
    /// (default: from the service-account mount, else `default`).
    #[arg(long, env = "SESAME_NAMESPACE")]
    pub namespace: Option<String>,
    /// Namespace of the leader-election Lease (default: Sesame's own).
    #[arg(long, env = "SESAME_LEASE_NAMESPACE")]
    pub(crate) lease_namespace: Option<String>,
    /// Name of the leader-election Lease for garbage collection and rotation.
    #[arg(long, env = "SESAME_LEASE_NAME", default_value = "sesame-leader")]
    pub(crate) lease_name: String,
    /// How long an unreferenced managed Secret is kept before it is deleted.
    #[arg(long, env = "SESAME_GC_GRACE", default_value = "10m", value_parser = humantime::parse_duration)]
    pub(crate) gc_grace: Duration,
    /// How often the leader looks for unreferenced managed Secrets.
    #[arg(long, env = "SESAME_GC_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub(crate) gc_interval: Duration,
    /// After a rotation, a workload is restarted at most once in this
    /// period, however many of its Secrets rotate; a restart held back is
    /// made once the period is over (0s: no bound).
    #[arg(long, env = "SESAME_RESTART_COOLDOWN", default_value = "10m", value_parser = humantime::parse_duration)]
    pub(crate) restart_cooldown: Duration,
    /// At most this many rolling restarts after rotations in any minute,
    /// cluster-wide; the rest wait for a later pass.
    #[arg(long, env = "SESAME_MAX_RESTARTS_PER_MINUTE", default_value = "10", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_restarts_per_minute: u32,
    /// At most this many Secret writes a second in a rotation pass: a
    /// rotation that changes thousands of Secrets is spread out instead of
    /// sent to the API server at once. Unchanged Secrets are not written.
    #[arg(long, env = "SESAME_ROTATION_WRITES_PER_SECOND", default_value_t = DEFAULT_WRITES_PER_SECOND, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) rotation_writes_per_second: u32,
    /// The ConfigMap holding the configuration file: watched through the
    /// API, so that a change applies within a second on every replica
    /// instead of when the kubelet updates the mounted file (which stays the
    /// fallback). Unset: the file only.
    #[arg(long, env = "SESAME_CONFIG_MAP")]
    pub(crate) config_map: Option<String>,
    /// Namespace of `--config-map` (default: Sesame's own).
    #[arg(long, env = "SESAME_CONFIG_MAP_NAMESPACE")]
    pub(crate) config_map_namespace: Option<String>,
    /// The key of `--config-map` that holds the file (default: the file name
    /// of `--config`).
    #[arg(long, env = "SESAME_CONFIG_MAP_KEY")]
    pub(crate) config_map_key: Option<String>,
    /// The Secret (in Sesame's namespace) holding the provenance keys that
    /// sign every managed Secret; created at first start.
    #[arg(long, env = "SESAME_PROVENANCE_SECRET", default_value = "sesame-provenance")]
    pub(crate) provenance_secret: String,
    #[command(flatten)]
    pub certs: CertArgs,
}

/// Where the serving certificate comes from.
#[derive(Debug, Clone, Args)]
pub struct CertArgs {
    /// `files`: tls.crt/tls.key in --cert-dir (cert-manager, or your own);
    /// `self-managed`: Sesame keeps a CA and a serving certificate in a
    /// Secret and writes the caBundle of its webhook configuration.
    #[arg(long, env = "SESAME_CERT_MODE", value_enum, default_value = "files")]
    pub cert_mode: CertMode,
    /// Self-managed: the Secret (in Sesame's namespace) holding the CA and
    /// the serving certificate.
    #[arg(long, env = "SESAME_CERT_SECRET", default_value = "sesame-certs")]
    pub(crate) cert_secret: String,
    /// Self-managed: the MutatingWebhookConfiguration whose caBundle Sesame writes.
    #[arg(long, env = "SESAME_WEBHOOK_CONFIG", default_value = "sesame")]
    pub(crate) webhook_config: String,
    /// Self-managed: the Service the API server calls (names in the certificate).
    #[arg(long, env = "SESAME_SERVICE", default_value = "sesame")]
    pub service: String,
    /// Self-managed: lifetime of a serving certificate; renewed at two thirds.
    #[arg(long, env = "SESAME_SERVING_CERT_VALIDITY", default_value = "365d", value_parser = humantime::parse_duration)]
    pub(crate) serving_cert_validity: Duration,
    /// Self-managed: lifetime of the CA; replaced at two thirds, announced in
    /// the caBundle before it signs anything.
    #[arg(long, env = "SESAME_CA_VALIDITY", default_value = "3650d", value_parser = humantime::parse_duration)]
    pub ca_validity: Duration,
}

impl Default for CertArgs {
    fn default() -> Self {
        Self {
            cert_mode: CertMode::Files,
            cert_secret: "sesame-certs".into(),
            webhook_config: "sesame".into(),
            service: "sesame".into(),
            serving_cert_validity: Duration::from_secs(365 * 86_400),
            ca_validity: Duration::from_secs(3650 * 86_400),
        }
    }
}

/// Writes a rotation pass may send the API server per second, unless configured.
pub const DEFAULT_WRITES_PER_SECOND: u32 = 50;

impl Default for KubeArgs {
    fn default() -> Self {
        Self {
            mode: KubeMode::Auto,
            kubeconfig: None,
            namespace: None,
            lease_namespace: None,
            lease_name: "sesame-leader".into(),
            gc_grace: Duration::from_secs(600),
            gc_interval: Duration::from_secs(300),
            restart_cooldown: Duration::from_secs(600),
            max_restarts_per_minute: 10,
            rotation_writes_per_second: DEFAULT_WRITES_PER_SECOND,
            config_map: None,
            config_map_namespace: None,
            config_map_key: None,
            provenance_secret: "sesame-provenance".into(),
            certs: CertArgs::default(),
        }
    }
}

impl KubeArgs {
    /// The namespace Sesame runs in: `--namespace` (the Deployment sets it
    /// from the downward API), else the service-account mount; `default`
    /// outside a cluster.
    pub(crate) fn own_namespace(&self) -> String {
        if let Some(ns) = self.namespace.as_deref().filter(|s| !s.is_empty()) {
            return ns.to_owned();
        }
        std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".to_owned())
    }

    /// The bounds on restarts after rotations.
    pub(crate) fn restart_limits(&self) -> RestartLimits {
        RestartLimits {
            cooldown: self.restart_cooldown,
            per_minute: self.max_restarts_per_minute,
        }
    }

    /// Namespace of the leader-election Lease: `--lease-namespace`, else Sesame's own.
    pub(crate) fn lease_namespace(&self) -> String {
        self.lease_namespace
            .clone()
            .unwrap_or_else(|| self.own_namespace())
    }
}

/// How restarts are bounded: `kube::KubeArgs`' `--restart-cooldown` and
/// `--max-restarts-per-minute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartLimits {
    /// A workload is restarted at most once in this period (zero: no bound).
    pub cooldown: Duration,
    /// At most this many restarts in any minute, cluster-wide.
    pub per_minute: u32,
}

impl Default for RestartLimits {
    fn default() -> Self {
        Self {
            cooldown: Duration::from_secs(600),
            per_minute: 10,
        }
    }
}
