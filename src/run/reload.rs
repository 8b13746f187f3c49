//! The configuration reload: a valid changed file replaces the engine.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::start_upkeeps;
use crate::config::Config;
use crate::pipeline::SharedEngine;
use crate::tasks::Tasks;
use crate::telemetry::Metrics;

/// Re-reads the configuration file every `interval` (a mounted ConfigMap
/// changes by symlink swap, so its content is compared, not its path's
/// events). A valid new configuration replaces the engine; an invalid one
/// is logged and ignored. Stores whose section did not change are kept
/// (see `Engine::reload`). Runs until dropped.
pub(super) async fn reload_config(
    path: PathBuf,
    mut current: Config,
    engine: SharedEngine,
    metrics: Arc<Metrics>,
    kube: Option<::kube::Client>,
    interval: Duration,
    tasks: Tasks,
) {
    loop {
        tokio::time::sleep(interval).await;
        let loaded = match Config::load(Some(&path)) {
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
                tracing::info!(config = %path.display(), "configuration reloaded");
            }
            Err(e) => {
                metrics.config_reload("invalid");
                tracing::warn!(error = %e, "new configuration could not be applied; keeping the running one");
            }
        }
    }
}
