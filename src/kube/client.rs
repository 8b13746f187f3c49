//! The Kubernetes client: from an explicit kubeconfig, else in-cluster
//! config or KUBECONFIG (`kube::Config::infer`). Without any of them `serve`
//! keeps the dry-run writer.

use std::path::Path;

use ::kube::config::{KubeConfigOptions, Kubeconfig};
use ::kube::{Client, Config};

use super::args::KubeMode;

/// Why no client could be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read kubeconfig {path}: {reason}")]
    Kubeconfig { path: String, reason: String },
    #[error("no Kubernetes API configuration found (not in a cluster, no KUBECONFIG): {0}")]
    NotConfigured(String),
    #[error("cannot build the Kubernetes client: {0}")]
    Build(String),
}

/// Builds a client from a configuration. The library's own retry layer is
/// turned off: it would retry a throttled request for minutes, far past the
/// admission deadline. Sesame retries where it has time (the writer once,
/// watches with backoff, background loops on their next pass).
pub fn build(mut config: Config) -> Result<Client, ClientError> {
    config.default_retry = false;
    Client::try_from(config).map_err(|e| ClientError::Build(e.to_string()))
}

/// Builds the client, or `None` when the mode allows running without one.
pub async fn connect(mode: KubeMode, kubeconfig: Option<&Path>) -> Result<Option<Client>, ClientError> {
    if mode == KubeMode::Off {
        return Ok(None);
    }
    let config = match kubeconfig {
        Some(path) => {
            let kc_error = |reason: String| ClientError::Kubeconfig {
                path: path.display().to_string(),
                reason,
            };
            let kc = Kubeconfig::read_from(path).map_err(|e| kc_error(e.to_string()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| kc_error(e.to_string()))?
        }
        None => match Config::infer().await {
            Ok(c) => c,
            Err(e) if mode == KubeMode::Auto => {
                tracing::debug!(error = %e, "no Kubernetes configuration");
                return Ok(None);
            }
            Err(e) => return Err(ClientError::NotConfigured(e.to_string())),
        },
    };
    let url = config.cluster_url.to_string();
    let client = build(config)?;
    tracing::info!(api = %url, "Kubernetes API configured");
    Ok(Some(client))
}

/// A safe reason for a failed request: the API status (code, reason,
/// message; the API server's messages name fields and keys, never values),
/// or the transport failure.
pub(crate) fn api_reason(e: &::kube::Error) -> String {
    match e {
        ::kube::Error::Api(s) => format!("{} {}: {}", s.code, s.reason, s.message),
        other => other.to_string(),
    }
}

/// A 409: another client wrote first (or the object already exists).
pub(crate) fn is_conflict(e: &::kube::Error) -> bool {
    matches!(e, ::kube::Error::Api(s) if s.code == 409)
}
