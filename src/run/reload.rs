//! The configuration reload: a valid changed configuration replaces the
//! engine. It comes from the ConfigMap as the API serves it, when `serve`
//! watches it (a change applies within about a second, on every replica
//! alike), else from the mounted file, re-read every interval.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::start_upkeeps;
use crate::config::{Config, ConfigError, LoadedConfig};
use crate::kube::config_map::Seen;
use crate::pipeline::SharedEngine;
use crate::tasks::Tasks;
use crate::telemetry::Metrics;

/// Where the configuration is read from.
pub(super) struct ConfigSource {
    /// The mounted file.
    pub(super) path: PathBuf,
    /// The watch of the ConfigMap the file is mounted from, and its name
    /// for logs.
    pub(super) api: Option<(watch::Receiver<Option<Seen>>, String)>,
}

impl ConfigSource {
    /// The configuration as the ConfigMap holds it once the watch has seen
    /// it; until then, or while the ConfigMap or its key is missing, the
    /// mounted file. The file is not read while the watch has the text: it
    /// lags the ConfigMap by up to a minute or two, and reading it would
    /// bring back the configuration the ConfigMap just replaced.
    fn read(&self) -> Result<LoadedConfig, ConfigError> {
        let api_text = self.api.as_ref().and_then(|(rx, origin)| match &*rx.borrow() {
            Some(Seen::Text(text)) => Some((text.clone(), origin.clone())),
            Some(Seen::Missing) | None => None,
        });
        match api_text {
            Some((text, origin)) => Config::load_text(&text, &origin, &self.path),
            None => Config::load(Some(&self.path)),
        }
    }

    /// Resolves when the ConfigMap changed, at once when the watch has
    /// ended (then the file is the only source left), never without a watch.
    async fn changed(&mut self) {
        let ended = match self.api.as_mut() {
            Some((rx, _)) => rx.changed().await.is_err(),
            None => std::future::pending().await,
        };
        if ended {
            self.api = None;
        }
    }
}

/// Reads the configuration every `interval` and whenever the watched
/// ConfigMap changes (a mounted ConfigMap changes by symlink swap, so its
/// content is compared, not its path's events). A valid new configuration
/// replaces the engine; an invalid one is logged and ignored. Stores whose
/// section did not change are kept (see `Engine::reload`). Runs until
/// dropped.
pub(super) async fn reload_config(
    mut source: ConfigSource,
    mut current: Config,
    engine: SharedEngine,
    metrics: Arc<Metrics>,
    kube: Option<::kube::Client>,
    interval: Duration,
    tasks: Tasks,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = source.changed() => {}
        }
        let loaded = match source.read() {
            Ok(l) => l,
            Err(e) => {
                metrics.config_reload("invalid");
                tracing::warn!(error = %e, "configuration file changed but is not valid; keeping the running configuration");
                continue;
            }
        };
        if loaded.config == current {
            continue;
        }
        let reloaded = engine.load().reload(&loaded, &metrics, kube.as_ref()).await;
        match reloaded {
            Ok(new_engine) => {
                start_upkeeps(&tasks, &new_engine);
                engine.store(Arc::new(new_engine));
                current = loaded.config;
                metrics.config_reload("applied");
                tracing::info!(config = %loaded.origin, "configuration reloaded");
            }
            Err(e) => {
                metrics.config_reload("invalid");
                tracing::warn!(error = %e, "new configuration could not be applied; keeping the running one");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "resolveTimeout: 2s\n";
    const B: &str = "resolveTimeout: 4s\n";

    fn timeout(source: &ConfigSource) -> Duration {
        source.read().unwrap().config.resolve_timeout
    }

    #[test]
    fn the_configmap_wins_over_the_file_once_seen_and_the_file_is_the_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sesame.yaml");
        std::fs::write(&path, A).unwrap();
        let (tx, rx) = watch::channel(None);
        let source = ConfigSource {
            path,
            api: Some((rx, "ConfigMap sesame-system/sesame-config key sesame.yaml".into())),
        };
        assert_eq!(
            timeout(&source),
            Duration::from_secs(2),
            "nothing seen yet: the file"
        );
        tx.send_replace(Some(Seen::Text(B.into())));
        assert_eq!(
            timeout(&source),
            Duration::from_secs(4),
            "the ConfigMap, ahead of the file"
        );
        assert_eq!(
            source.read().unwrap().origin,
            "ConfigMap sesame-system/sesame-config key sesame.yaml"
        );
        tx.send_replace(Some(Seen::Missing));
        assert_eq!(timeout(&source), Duration::from_secs(2), "gone: the file again");
        tx.send_replace(Some(Seen::Text("resolveTimeout: [".into())));
        let e = source.read().unwrap_err().to_string();
        assert!(e.starts_with("ConfigMap sesame-system/sesame-config"), "{e}");
    }
}
