//! Watch-backed caches (kube-runtime reflectors): the store to read and the
//! future that keeps it current, for the caller to run as a task.

use std::fmt::Debug;
use std::future::Future;

use ::kube::runtime::reflector::{self, Store};
use ::kube::runtime::{watcher, WatchStreamExt};
use ::kube::{Api, Resource, ResourceExt};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;

/// A reflector over `api` (an `Api<PartialObjectMeta<K>>` watches metadata
/// only); managed fields are dropped to save memory, and `reduce` takes out
/// whatever else the cache need not hold. The cache fills while the
/// returned future runs.
pub(crate) fn reflector<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    mut reduce: impl FnMut(&mut K) + Send + 'static,
) -> (Store<K>, impl Future<Output = ()> + Send + 'static)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config).default_backoff().modify(move |o: &mut K| {
        o.managed_fields_mut().clear();
        reduce(o);
    });
    (reader, drive(reflector::reflector(writer, stream), what))
}

/// Polls the stream. The watcher re-lists and backs off on errors by
/// itself; errors are logged without object contents. The stream does not
/// end while the watch works: when it does, so does this future.
async fn drive<S, T, E>(stream: S, what: &'static str)
where
    S: Stream<Item = Result<T, E>> + Send + 'static,
    E: std::fmt::Display,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        if let Err(e) = item {
            tracing::warn!(cache = what, error = %e, "watch failed; retrying");
        }
    }
    tracing::warn!(cache = what, "watch stream ended");
}
