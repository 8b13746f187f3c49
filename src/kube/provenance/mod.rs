//! Provenance of managed Secrets. Anyone with Secret rights in a namespace
//! can create a Secret that looks managed (the label, the annotations);
//! rotation, garbage collection and restarts must act only on Secrets that
//! Sesame wrote. Sesame keeps MAC keys in a Secret of its own namespace
//! (`--provenance-secret`, default `sesame-provenance`) and writes on every
//! managed Secret an HMAC-SHA256 over what it recorded there (`mac`); the
//! leader's loops act only on Secrets whose MAC verifies with a known key,
//! and report the others once each (`UnverifiedReport`).
//!
//! Agreement between replicas, as for the self-managed certificate: the
//! first replica to start creates the key Secret (a 409 means another won:
//! read theirs); a Secret without a usable key gets one with an update that
//! carries the resourceVersion read. Every replica re-reads the Secret
//! periodically, so a key added by the operator is used everywhere within
//! one check interval (`keys` is the Secret's format, `manager` the runner).
//!
//! Without the key (the Secret cannot be read), admission goes on and
//! writes Secrets without a MAC; rotation and garbage collection wait until
//! the key is available (fail closed: an unsigned Secret is never acted on).

mod keys;
mod mac;
mod manager;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use k8s_openapi::api::core::v1::Secret;

pub use mac::KeyRing;
pub(crate) use mac::{MacError, Record, Verified};
pub use manager::{ProvenanceError, ProvenanceManager};

use super::metrics::KubeMetrics;

/// The MAC keys every part of Sesame shares: the writer signs with them,
/// rotation and garbage collection verify. Empty until the key Secret has
/// been read.
#[derive(Clone, Default)]
pub struct Provenance {
    ring: Arc<ArcSwapOption<KeyRing>>,
}

impl std::fmt::Debug for Provenance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Provenance").field(&self.current()).finish()
    }
}

impl Provenance {
    /// No key (yet): nothing is signed, nothing verifies.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Fixed keys (`(id, bytes)`, at least 32 bytes each), for tests and
    /// tools; `serve` reads them from the key Secret.
    pub fn with_keys(keys: Vec<(u32, Vec<u8>)>) -> Result<Self, String> {
        let ring = KeyRing::new(keys).map_err(|e| e.to_string())?;
        let p = Self::default();
        p.set(ring);
        Ok(p)
    }

    /// The keys, when known.
    pub fn current(&self) -> Option<Arc<KeyRing>> {
        self.ring.load_full()
    }

    pub(crate) fn set(&self, ring: KeyRing) {
        self.ring.store(Some(Arc::new(ring)));
    }
}

/// Reports managed Secrets that do not verify: once per Secret (by uid) and
/// action, in the log (namespace, name and why; never content) and in
/// `sesame_managed_secret_unverified_total{action,reason}`, so that a
/// tenant's forgeries cost one line each, not one per pass.
pub(crate) struct UnverifiedReport {
    action: &'static str,
    seen: Mutex<HashSet<String>>,
    metrics: Arc<KubeMetrics>,
}

impl UnverifiedReport {
    pub(crate) fn new(action: &'static str, metrics: Arc<KubeMetrics>) -> Self {
        Self {
            action,
            seen: Mutex::new(HashSet::new()),
            metrics,
        }
    }

    fn id(secret: &Secret) -> String {
        secret.metadata.uid.clone().unwrap_or_else(|| {
            format!(
                "{}/{}",
                secret.metadata.namespace.as_deref().unwrap_or(""),
                secret.metadata.name.as_deref().unwrap_or("")
            )
        })
    }

    /// Notes that `secret` was skipped because of `reason` (a label) and `why`.
    pub(crate) fn note(&self, secret: &Secret, reason: &'static str, why: &dyn std::fmt::Display) {
        let first = self
            .seen
            .lock()
            .map(|mut seen| seen.insert(Self::id(secret)))
            .unwrap_or(true);
        if first {
            self.metrics.unverified(self.action, reason);
            tracing::warn!(
                namespace = secret.metadata.namespace.as_deref().unwrap_or(""),
                secret = secret.metadata.name.as_deref().unwrap_or(""),
                action = self.action,
                reason,
                "ignoring a Secret labelled as managed by Sesame: {why}; Sesame did not write it as it is"
            );
        }
    }

    /// Forgets Secrets that are gone, so that the set stays as large as the
    /// cache at most.
    pub(crate) fn retain<'a>(&self, live: impl IntoIterator<Item = &'a Secret>) {
        let live: HashSet<String> = live.into_iter().map(Self::id).collect();
        if let Ok(mut seen) = self.seen.lock() {
            seen.retain(|id| live.contains(id));
        }
    }
}
