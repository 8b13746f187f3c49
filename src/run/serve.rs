//! `serve`: the admin port (first, so that start-up shows its progress),
//! configuration, stores, certificates (checked before the webhook port
//! binds), the Kubernetes side, the webhook port and the background loops.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;

use super::readiness::keep_ready;
use super::reload::{reload_config, ConfigSource};
use super::start_upkeeps;
use crate::admission::{Admission, DryRunWriter, LastKnownGood, NamespaceLabels, SecretWriter};
use crate::certs::{CertPaths, CertResolver};
use crate::cli::ServeArgs;
use crate::config::Config;
use crate::kube::certs::{CertManager, Material, Policy};
use crate::kube::config_map::{watch_config_map, ConfigMapRef};
use crate::kube::CertMode;
use crate::pipeline::{Caller, Engine, SharedEngine};
use crate::server::admin::Readiness;
use crate::server::{self, Limits};
use crate::tasks::Tasks;
use crate::telemetry::Metrics;

/// A running server.
pub struct ServerHandle {
    pub webhook_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
    pub engine: SharedEngine,
    /// Present when Sesame made its own certificate (generated, or
    /// self-managed at start): the caBundle PEM.
    pub generated_ca_pem: Option<String>,
    /// `kubernetes` or `dry-run`: how managed Secrets are written.
    pub writer_kind: &'static str,
    tasks: Tasks,
}

impl ServerHandle {
    /// Starts the graceful drain: every task is told to stop.
    pub fn shutdown(&self) {
        self.tasks.shutdown();
    }

    /// Waits until every task has stopped: both servers drained, the Lease
    /// released.
    pub async fn wait(self) {
        self.tasks.wait().await;
    }

    /// The server's background tasks.
    pub fn tasks(&self) -> &Tasks {
        &self.tasks
    }

    /// Serves until `signal` (SIGTERM or SIGINT for `sesame serve`), or until
    /// a background task dies, then drains. The exit code is a failure when
    /// a task died, so that the Pod is restarted. A second signal during the
    /// drain exits at once.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> ExitCode {
        let died = tokio::select! {
            _ = signal => None,
            failure = self.tasks.failed() => Some(failure),
        };
        match &died {
            None => tracing::info!(
                "shutdown signal received; draining in-flight requests (send again to exit now)"
            ),
            Some(f) => tracing::error!(
                task = %f.task,
                reason = %f.reason,
                "a background task died; draining and exiting with a failure"
            ),
        }
        self.shutdown();
        tokio::select! {
            _ = self.tasks.wait() => {}
            _ = server::wait_for_signal() => {
                tracing::warn!("second signal; exiting now");
                std::process::exit(130);
            }
        }
        if died.is_some() {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        }
    }
}

/// Binds the admin port, loads configuration and certificates, binds the
/// webhook port and starts serving. Managed Secrets are written through the
/// Kubernetes API when one is configured (`--kube`), else only reported (the
/// dry-run writer). Whatever it started is stopped again when it fails.
pub async fn start(args: &ServeArgs) -> anyhow::Result<ServerHandle> {
    let tasks = Tasks::new();
    let started = start_with(args, tasks.clone()).await;
    if started.is_err() {
        tasks.shutdown();
        tasks.wait().await;
    }
    started
}

/// [`start`], unless `stop` resolves first (a signal during start-up):
/// then whatever was started is stopped, and there is no server.
pub(crate) async fn start_unless(
    args: &ServeArgs,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<Option<ServerHandle>> {
    let tasks = Tasks::new();
    let started = tokio::select! {
        started = start_with(args, tasks.clone()) => Some(started),
        () = stop => None,
    };
    match started {
        Some(Ok(handle)) => Ok(Some(handle)),
        Some(Err(e)) => {
            tasks.shutdown();
            tasks.wait().await;
            Err(e)
        }
        None => {
            tracing::info!("shutdown signal received during start-up; stopping");
            tasks.shutdown();
            tasks.wait().await;
            Ok(None)
        }
    }
}

async fn start_with(args: &ServeArgs, tasks: Tasks) -> anyhow::Result<ServerHandle> {
    let metrics = Arc::new(Metrics::new());
    let readiness = Arc::new(Readiness::default());
    let limits = Limits::new(
        args.max_body_bytes,
        args.client_timeout,
        args.drain_timeout,
        &args.connections,
    );

    // The admin port first: /livez answers from here on, and /startupz and
    // /readyz say which step start-up waits for. On a thread of its own, so
    // that the probes and metrics answer however busy the webhook port's
    // workers are; and the last to stop, so that /readyz says 503 (and
    // /livez 200) through the whole drain.
    let admin_listener = server::bind(SocketAddr::new(args.bind_address, args.admin_port)).await?;
    let admin_addr = admin_listener.local_addr()?;
    tasks
        .spawn_on_own_thread(
            "admin server",
            server::serve_std(
                admin_listener.into_std()?,
                server::Port::admin(limits),
                server::admin::router(readiness.clone(), metrics.clone()),
                metrics.clone(),
                tasks.drained_signal(),
            ),
        )
        .context("starting the admin port's thread")?;
    tracing::info!(%admin_addr, "admin port listening");

    readiness.starting("the configuration");
    let config_path = args.config.resolve();
    let loaded = Config::load(config_path.as_deref())?;
    let kube = crate::kube::client::connect(args.kube.mode, args.kube.kubeconfig.as_deref()).await?;
    readiness.starting("the stores of the configuration");
    let engine: SharedEngine = Arc::new(ArcSwap::from_pointee(
        Engine::from_config(&loaded, &metrics, kube.as_ref()).await?,
    ));
    tracing::info!(config = %loaded.origin, stores = loaded.config.stores.len(), rules = loaded.config.policy.rules.len(), "configuration loaded");
    start_upkeeps(&tasks, &engine.load());

    // Certificates are checked before the webhook port binds.
    let paths = CertPaths::in_dir(&args.cert_dir);
    let mut cert_manager = None;
    let (resolver, generated_ca_pem) = if args.kube.certs.cert_mode == CertMode::SelfManaged {
        let client = kube.as_ref().context(
            "--cert-mode=self-managed needs the Kubernetes API (in a cluster it is found by itself; else --kube and --kubeconfig)",
        )?;
        let (manager, material, resolver) = self_managed(client, args, &metrics, &readiness).await?;
        let resolver = Arc::new(resolver);
        let ca = material.trust_bundle();
        cert_manager = Some((manager, material));
        (resolver, Some(ca))
    } else if paths.exist() {
        readiness.starting("the serving certificate (files)");
        let (key, digest) = crate::certs::load(&paths)?;
        let resolver = Arc::new(CertResolver::new(key));
        tasks.spawn(
            "reload of the certificate files",
            crate::certs::reload(resolver.clone(), paths.clone(), digest, args.reload_interval),
        );
        tracing::info!(cert = %paths.cert.display(), "serving certificate loaded");
        (resolver, None)
    } else {
        let certs = crate::certs::generate(&crate::certs::service_sans("sesame", "sesame-system"), 365)
            .context("generating a self-signed certificate")?;
        let key = crate::certs::certified_key(
            certs.cert_pem.as_bytes(),
            certs.key_pem.as_bytes(),
            Path::new("generated"),
        )?;
        tracing::warn!(
            cert_dir = %args.cert_dir.display(),
            ca_bundle = %certs.ca_bundle(),
            "no tls.crt/tls.key found; serving a generated self-signed certificate (caBundle logged)"
        );
        (Arc::new(CertResolver::new(key)), Some(certs.ca_cert_pem))
    };
    let clients = match &args.client_ca_file {
        Some(path) => {
            let (verifier, digest) = crate::certs::load_client_ca(path)?;
            tasks.spawn(
                "reload of the client CA file",
                crate::certs::reload_client_ca(verifier.clone(), path.clone(), digest, args.reload_interval),
            );
            tracing::info!(client_ca = %path.display(), "the webhook port requires client certificates");
            Some(verifier)
        }
        None => None,
    };
    let caller = if clients.is_some() {
        Caller::Trusted
    } else {
        tracing::warn!("no --client-ca-file: any caller is served and treated as unauthenticated (inline values are refused unless policy.inline.allowWithoutClientAuth)");
        Caller::Unauthenticated
    };
    let tls_config = Arc::new(crate::certs::server_config(resolver.clone(), clients)?);

    type Ports = (
        Arc<dyn SecretWriter>,
        Option<Arc<dyn NamespaceLabels>>,
        Option<Arc<dyn LastKnownGood>>,
    );
    let (writer, namespaces, known_good): Ports = match &kube {
        Some(client) => {
            readiness.starting("the caches of managed Secrets and Namespaces");
            let started = crate::kube::start(
                client,
                &loaded.config.annotation_prefix,
                &args.kube,
                engine.clone(),
                metrics.clone(),
                &tasks,
            )
            .await;
            if let Some((manager, material)) = cert_manager.take() {
                tasks.spawn(
                    "upkeep of the self-managed certificate",
                    manager.run(
                        resolver.clone(),
                        material,
                        started.leading.clone(),
                        args.reload_interval,
                    ),
                );
            }
            (started.writer, Some(started.namespaces), Some(started.known_good))
        }
        None => {
            tracing::info!("no Kubernetes API configured: managed Secrets are not written (dry-run writer)");
            (Arc::new(DryRunWriter), None, None)
        }
    };
    let mut admission = Admission::new(engine.clone(), writer, metrics.clone()).with_callers(caller);
    if let Some(namespaces) = namespaces {
        admission = admission.with_namespaces(namespaces);
    }
    if let Some(known_good) = known_good {
        admission = admission.with_last_known_good(known_good);
    }
    let writer_kind = admission.writer_kind();
    tracing::info!(writer = writer_kind, "managed Secret writer");
    let admission = Arc::new(admission);

    readiness.starting("the webhook port");
    let webhook_listener = server::bind(SocketAddr::new(args.bind_address, args.tls_port)).await?;
    let webhook_addr = webhook_listener.local_addr()?;
    tasks.spawn_draining(
        "webhook server",
        server::serve(
            webhook_listener,
            server::Port::webhook(tls_config, limits),
            server::webhook_router(admission, limits),
            metrics.clone(),
            tasks.shutdown_signal(),
        ),
    );
    readiness.started();
    tracing::info!(%webhook_addr, %admin_addr, "serving");

    tasks.spawn_draining(
        "readiness",
        keep_ready(engine.clone(), readiness.clone(), metrics.clone(), tasks.token()),
    );
    if let Some(path) = config_path {
        let api = match (&kube, ConfigMapRef::from_args(&args.kube, &path)) {
            (Some(client), Some(target)) => {
                let (seen, watch) = watch_config_map(client.clone(), &target);
                tasks.spawn("watch of the configuration ConfigMap", watch);
                tracing::info!(source = %target.origin(), file = %path.display(), "configuration changes come from the API, the mounted file until the ConfigMap is seen");
                Some((seen, target.origin()))
            }
            _ => None,
        };
        tasks.spawn(
            "configuration reload",
            reload_config(
                ConfigSource { path, api },
                loaded.config,
                engine.clone(),
                metrics.clone(),
                kube,
                args.reload_interval,
                tasks.clone(),
            ),
        );
    }
    Ok(ServerHandle {
        webhook_addr,
        admin_addr,
        readiness,
        metrics,
        engine,
        generated_ca_pem,
        writer_kind,
        tasks,
    })
}

/// Creates or reads the self-managed certificate before the webhook port binds.
async fn self_managed(
    client: &::kube::Client,
    args: &ServeArgs,
    metrics: &Metrics,
    readiness: &Readiness,
) -> anyhow::Result<(CertManager, Material, CertResolver)> {
    let c = &args.kube.certs;
    let namespace = args.kube.own_namespace();
    readiness.starting(&format!(
        "the serving certificate (Secret {namespace}/{})",
        c.cert_secret
    ));
    let policy = Policy {
        sans: crate::certs::service_sans(&c.service, &namespace),
        serving_validity: c.serving_cert_validity,
        ca_validity: c.ca_validity,
        // The API server sees a new caBundle within seconds; replicas re-read
        // the Secret every reload interval.
        overlap: args.reload_interval * 3,
    };
    let manager = CertManager::new(
        client.clone(),
        &namespace,
        &c.cert_secret,
        &c.webhook_config,
        policy,
        metrics,
    );
    let (material, resolver) = manager
        .bootstrap(CERT_BOOTSTRAP_DEADLINE)
        .await
        .context("self-managed certificate")?;
    Ok((manager, material, resolver))
}

/// How long start-up keeps trying to get the self-managed certificate.
const CERT_BOOTSTRAP_DEADLINE: Duration = Duration::from_secs(60);
