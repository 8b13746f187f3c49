//! Watch-backed caches (kube-runtime reflectors) that end at shutdown.

use std::fmt::Debug;

use ::kube::runtime::reflector::{self, Store};
use ::kube::runtime::{watcher, WatchStreamExt};
use ::kube::{Api, Resource, ResourceExt};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

/// Starts a reflector over `api` (an `Api<PartialObjectMeta<K>>` watches
/// metadata only); managed fields are dropped to save memory.
pub fn spawn<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    shutdown: watch::Receiver<bool>,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(|o: &mut K| o.managed_fields_mut().clear());
    drive(reflector::reflector(writer, stream), what, shutdown);
    reader
}

/// Polls the stream until shutdown. The watcher re-lists and backs off on
/// errors by itself; errors are logged without object contents.
fn drive<S, T, E>(stream: S, what: &'static str, mut shutdown: watch::Receiver<bool>)
where
    S: Stream<Item = Result<T, E>> + Send + 'static,
    E: std::fmt::Display,
{
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            tokio::select! {
                item = stream.next() => match item {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => tracing::warn!(cache = what, error = %e, "watch failed; retrying"),
                    None => return,
                },
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    });
}
