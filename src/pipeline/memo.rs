//! The Pods of one ReplicaSet share their template, so their verdicts are
//! the same: the first is kept, keyed by everything the pipeline reads, and
//! the others are answered from it while the store answers it was made from
//! are still the ones the cache holds. A configuration change builds a new
//! engine, and with it an empty memo.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::{Caller, Mutation, PodInput};
use crate::inject::PodView;
use crate::stores::{SecretData, StoreRequest, WorkloadIdentity};

/// A key longer than this is not kept: such a Pod is evaluated each time.
const MAX_KEY_BYTES: usize = 64 * 1024;
/// What the memo may hold in all, keys and verdicts, as estimated: about
/// as much again as a replica's 10,000 managed Secrets cost it in tenant
/// data digests. A burst of one template needs one entry.
const MAX_BYTES: usize = 4 * 1024 * 1024;
const MAX_ENTRIES: usize = 256;

/// Whether a review was answered from the memo: the `result` of
/// `sesame_plan_memo_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoUse {
    /// Answered from a kept verdict.
    Hit,
    /// Evaluated (and kept, when it can be).
    Miss,
    /// Evaluated, never kept: the key is too long.
    Skipped,
}

impl MemoUse {
    pub fn label(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Skipped => "skipped",
        }
    }
}

/// The store answers a verdict was made from, in the order of its requests.
#[derive(Debug)]
pub(crate) struct Answers {
    pub requests: Vec<StoreRequest>,
    pub identity: Option<WorkloadIdentity>,
    pub data: Vec<Arc<SecretData>>,
}

#[derive(Debug)]
pub(crate) struct Entry {
    pub answers: Answers,
    pub mutation: Arc<Mutation>,
    size: usize,
}

/// Everything of a review the pipeline reads, serialised. Two reviews with
/// one key get one verdict from the same store answers. The key holds the
/// whole key, not a hash of it: a collision would hand one Pod another's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key(Arc<[u8]>);

#[derive(Serialize)]
struct Fingerprint<'a> {
    namespace: &'a str,
    base: &'a str,
    trusted: bool,
    labels: Option<&'a BTreeMap<String, String>>,
    pod: &'a PodView,
}

impl Key {
    /// `None` for a review too large to keep.
    pub(crate) fn of(input: &PodInput<'_>) -> Option<Self> {
        let fingerprint = Fingerprint {
            namespace: input.namespace,
            base: input.base,
            trusted: input.caller == Caller::Trusted,
            labels: input.namespace_labels,
            pod: input.pod,
        };
        let mut out = Vec::with_capacity(2048);
        serde_json::to_writer(&mut out, &fingerprint).ok()?;
        (out.len() <= MAX_KEY_BYTES).then(|| Self(out.into()))
    }
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Key, Arc<Entry>>,
    /// Oldest first: the first to go when the memo is full.
    order: VecDeque<Key>,
    bytes: usize,
}

/// The kept verdicts of one engine.
#[derive(Default)]
pub(crate) struct Memo {
    inner: Mutex<Inner>,
}

impl Memo {
    pub(crate) fn get(&self, key: &Key) -> Option<Arc<Entry>> {
        self.inner.lock().ok()?.entries.get(key).cloned()
    }

    /// Forgets a verdict whose answers the cache no longer holds.
    pub(crate) fn forget(&self, key: &Key) {
        if let Ok(mut inner) = self.inner.lock() {
            if let Some(old) = inner.entries.remove(key) {
                inner.bytes -= old.size;
                inner.order.retain(|k| k != key);
            }
        }
    }

    pub(crate) fn keep(&self, key: Key, answers: Answers, mutation: Arc<Mutation>) {
        let size = key.0.len() + estimated_size(&mutation);
        if size > MAX_BYTES / 16 {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let entry = Arc::new(Entry {
            answers,
            mutation,
            size,
        });
        match inner.entries.insert(key.clone(), entry) {
            Some(old) => inner.bytes -= old.size,
            None => inner.order.push_back(key),
        }
        inner.bytes += size;
        while inner.bytes > MAX_BYTES || inner.entries.len() > MAX_ENTRIES {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some(old) = inner.entries.remove(&oldest) {
                inner.bytes -= old.size;
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner.lock().map(|i| i.entries.len()).unwrap_or(0)
    }
}

/// About what a verdict holds in memory. Measured with the five references
/// of benches/data: 3,000 distinct Pods grew the heap by 37 KB per kept
/// verdict, 16 times its patch's 2.2 KB of JSON (the operations are trees
/// of small maps), the rest its Secret, grants and key.
fn estimated_size(m: &Mutation) -> usize {
    let patch = crate::inject::patch::encoded_len(&m.patch);
    let secret = m.secret.as_ref().map_or(0, |s| {
        s.data.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() + 512 * s.references.len()
    });
    16 * patch + 2 * secret + 4096
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::plan::MANAGED_PREFIX;

    fn pod(json: serde_json::Value) -> PodView {
        serde_json::from_value(json).expect("pod")
    }

    fn key(pod: &PodView, namespace: &str) -> Key {
        let input = PodInput {
            namespace,
            pod,
            base: "",
            budget: None,
            namespace_labels: None,
            caller: Caller::Unauthenticated,
            last_known_good: None,
        };
        Key::of(&input).expect("key")
    }

    fn with_volume(volume: &str, secret: &str) -> PodView {
        pod(serde_json::json!({
            "metadata": {"generateName": "api-", "annotations": {"sesame.dev/env.A": "dev:apps/a#x"}},
            "spec": {
                "containers": [{"name": "app", "volumeMounts": [
                    {"name": volume, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]}],
                "volumes": [{"name": volume, "secret": {"secretName": secret}}]
            }
        }))
    }

    /// The Pods of one ReplicaSet differ in their token volume's random
    /// name, those of a StatefulSet in their names and labels: neither may
    /// split the key; anything the pipeline reads must.
    #[test]
    fn the_key_leaves_out_names_labels_and_foreign_volume_names_only() {
        let a = with_volume("kube-api-access-p6sh2", "token");
        let b = with_volume("kube-api-access-x9q7k", "token");
        assert_eq!(key(&a, "team-a"), key(&b, "team-a"));
        // Another namespace, another Secret named by a volume, another
        // name of Sesame's own: all another key.
        assert_ne!(key(&a, "team-a"), key(&a, "team-b"));
        assert_ne!(
            key(&a, "team-a"),
            key(&with_volume("kube-api-access-p6sh2", "other"), "team-a")
        );
        let own = format!("{MANAGED_PREFIX}0123456789");
        let other = format!("{MANAGED_PREFIX}9876543210");
        assert_ne!(
            key(&with_volume(&own, "token"), "team-a"),
            key(&with_volume(&other, "token"), "team-a")
        );
        assert_ne!(key(&with_volume(&own, "token"), "team-a"), key(&a, "team-a"));
        // The Pods of one StatefulSet: their names and labels differ.
        let mut web_0 = a.clone();
        web_0.metadata.name = Some("web-0".into());
        web_0.metadata.labels = Some([("apps.kubernetes.io/pod-index".to_owned(), "0".to_owned())].into());
        let mut web_1 = a.clone();
        web_1.metadata.name = Some("web-1".into());
        web_1.metadata.labels = Some([("apps.kubernetes.io/pod-index".to_owned(), "1".to_owned())].into());
        assert_eq!(key(&web_0, "team-a"), key(&web_1, "team-a"));
        // Annotations (what the Pod asks for) are always in it.
        let mut asks_more = a.clone();
        if let Some(annotations) = asks_more.metadata.annotations.as_mut() {
            annotations.insert("sesame.dev/env.B".into(), "dev:apps/a#y".into());
        }
        assert_ne!(key(&a, "team-a"), key(&asks_more, "team-a"));
    }

    #[test]
    fn a_full_memo_lets_its_oldest_verdicts_go() {
        let memo = Memo::default();
        let mutation = Arc::new(Mutation {
            patch: Vec::new(),
            secret: None,
            grants: Vec::new(),
            warnings: Vec::new(),
            last_known_good: None,
            encoded: Default::default(),
        });
        for i in 0..MAX_ENTRIES + 10 {
            let k = Key(format!("pod-{i}").into_bytes().into());
            let answers = Answers {
                requests: Vec::new(),
                identity: None,
                data: Vec::new(),
            };
            memo.keep(k, answers, mutation.clone());
        }
        assert_eq!(memo.len(), MAX_ENTRIES);
        assert!(memo.get(&Key(b"pod-0".to_vec().into())).is_none());
        let newest = format!("pod-{}", MAX_ENTRIES + 9);
        assert!(memo.get(&Key(newest.into_bytes().into())).is_some());
    }
}
