//! Sesame's own configuration as the API serves it: a watch of the one
//! ConfigMap whose key is the configuration file. A change arrives within
//! about a second, where the kubelet takes up to a minute or two to update
//! the mounted file, each Pod on its own schedule (so replicas would
//! disagree for that long). `run` applies what the watch sees and falls
//! back to the mounted file while the watch has seen nothing.

use std::future::Future;
use std::path::Path;

use ::kube::runtime::watcher::{self, Event};
use ::kube::runtime::WatchStreamExt;
use ::kube::{Api, Client};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use tokio::sync::watch;

use super::args::KubeArgs;

/// Which ConfigMap and key hold the configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigMapRef {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) key: String,
}

impl ConfigMapRef {
    /// From `--config-map` (unset: no watch), `--config-map-namespace`
    /// (default: Sesame's own) and `--config-map-key` (default: the file
    /// name of `--config`, as a ConfigMap volume names its files).
    pub(crate) fn from_args(args: &KubeArgs, config_path: &Path) -> Option<Self> {
        let name = args.config_map.clone().filter(|n| !n.is_empty())?;
        let key = args
            .config_map_key
            .clone()
            .filter(|k| !k.is_empty())
            .or_else(|| config_path.file_name().map(|f| f.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "sesame.yaml".to_owned());
        let namespace = args
            .config_map_namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| args.own_namespace());
        Some(Self { namespace, name, key })
    }

    /// `ConfigMap <namespace>/<name> key <key>`, for logs and errors.
    pub(crate) fn origin(&self) -> String {
        format!("ConfigMap {}/{} key {}", self.namespace, self.name, self.key)
    }
}

/// What the watch last saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seen {
    /// The configuration file's text.
    Text(String),
    /// The ConfigMap is gone, or has no such key.
    Missing,
}

/// Turns watch events into what the ConfigMap holds (pure). A re-list
/// (`Init` … `InitDone`) that does not list the object means it is gone.
#[derive(Debug)]
struct Fold {
    key: String,
    /// During a re-list: what it listed so far.
    listing: Option<Seen>,
}

impl Fold {
    fn new(key: &str) -> Self {
        Self {
            key: key.to_owned(),
            listing: None,
        }
    }

    fn seen(&self, cm: &ConfigMap) -> Seen {
        cm.data
            .as_ref()
            .and_then(|d| d.get(&self.key))
            .map_or(Seen::Missing, |t| Seen::Text(t.clone()))
    }

    /// What to publish after `event`, if anything.
    fn step(&mut self, event: &Event<ConfigMap>) -> Option<Seen> {
        match event {
            Event::Init => {
                self.listing = Some(Seen::Missing);
                None
            }
            Event::InitApply(cm) => {
                self.listing = Some(self.seen(cm));
                None
            }
            Event::InitDone => self.listing.take(),
            Event::Apply(cm) => Some(self.seen(cm)),
            Event::Delete(_) => Some(Seen::Missing),
        }
    }
}

/// Watches the ConfigMap: the receiver holds `None` until the first list
/// came back, then what the ConfigMap last held. A failing watch is retried
/// with backoff and keeps the last view (logged once per outage, without
/// contents). The future runs until dropped.
pub(crate) fn watch_config_map(
    client: Client,
    target: &ConfigMapRef,
) -> (
    watch::Receiver<Option<Seen>>,
    impl Future<Output = ()> + Send + 'static,
) {
    let (tx, rx) = watch::channel(None);
    let api: Api<ConfigMap> = Api::namespaced(client, &target.namespace);
    // By name: RBAC grants list and watch of this one ConfigMap
    // (resourceNames), which a metadata.name field selector satisfies.
    let config = watcher::Config::default().fields(&format!("metadata.name={}", target.name));
    let mut fold = Fold::new(&target.key);
    let origin = target.origin();
    let task = async move {
        let stream = watcher::watcher(api, config).default_backoff();
        let mut stream = std::pin::pin!(stream);
        let mut failing = false;
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => {
                    if failing {
                        tracing::info!(source = %origin, "watch of the configuration works again");
                        failing = false;
                    }
                    if let Some(seen) = fold.step(&event) {
                        tx.send_if_modified(|last| {
                            let changed = last.as_ref() != Some(&seen);
                            *last = Some(seen);
                            changed
                        });
                    }
                }
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(source = %origin, error = %e, "watch of the configuration failed; retrying, and reading the mounted file until it has seen the ConfigMap");
                }
                Err(e) => {
                    tracing::debug!(source = %origin, error = %e, "watch of the configuration still failing")
                }
            }
        }
        tracing::warn!(source = %origin, "watch of the configuration ended");
    };
    (rx, task)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn cm(data: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some("sesame-config".into()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn events_become_the_text_under_the_key_or_missing() {
        let mut f = Fold::new("sesame.yaml");
        assert_eq!(f.step(&Event::Init), None);
        assert_eq!(f.step(&Event::InitApply(cm(&[("sesame.yaml", "a: 1")]))), None);
        assert_eq!(f.step(&Event::InitDone), Some(Seen::Text("a: 1".into())));
        assert_eq!(
            f.step(&Event::Apply(cm(&[("sesame.yaml", "a: 2")]))),
            Some(Seen::Text("a: 2".into()))
        );
        assert_eq!(
            f.step(&Event::Apply(cm(&[("other.yaml", "a: 3")]))),
            Some(Seen::Missing),
            "the key went away"
        );
        assert_eq!(f.step(&Event::Delete(cm(&[]))), Some(Seen::Missing));
        // A re-list that finds nothing: gone.
        assert_eq!(f.step(&Event::Init), None);
        assert_eq!(f.step(&Event::InitDone), Some(Seen::Missing));
    }

    #[test]
    fn the_reference_comes_from_the_flags_and_the_file_name() {
        let mut args = KubeArgs {
            namespace: Some("sesame-system".into()),
            ..Default::default()
        };
        let path = Path::new("/etc/sesame/config/sesame.yaml");
        assert_eq!(ConfigMapRef::from_args(&args, path), None, "no flag, no watch");
        args.config_map = Some("sesame-config".into());
        assert_eq!(
            ConfigMapRef::from_args(&args, path),
            Some(ConfigMapRef {
                namespace: "sesame-system".into(),
                name: "sesame-config".into(),
                key: "sesame.yaml".into()
            })
        );
        args.config_map_namespace = Some("platform".into());
        args.config_map_key = Some("config.yaml".into());
        let r = ConfigMapRef::from_args(&args, path).unwrap();
        assert_eq!(
            (r.namespace.as_str(), r.key.as_str()),
            ("platform", "config.yaml")
        );
        assert_eq!(r.origin(), "ConfigMap platform/sesame-config key config.yaml");
    }
}
