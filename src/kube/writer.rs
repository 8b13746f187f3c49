//! `KubeSecretWriter`: writes a plan's Secret with server-side apply before
//! the Pod is admitted, signed with the provenance key. A watch-backed cache
//! of managed Secrets (digests, not values: `digest`) makes an up-to-date
//! Secret cost no API call.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ::kube::api::{Patch, PatchParams};
use ::kube::runtime::reflector::{ObjectRef, Store};
use ::kube::runtime::watcher;
use ::kube::{Api, Client};
use async_trait::async_trait;
use k8s_openapi::api::core::v1::Secret;

use super::digest::digested;
use super::provenance::Provenance;
use super::secret::{
    apply_body, decide, now_rfc3339, ApplyDecision, SecretAnnotations, FIELD_MANAGER, MANAGED_SELECTOR,
};
use crate::admission::{CreationBudget, SecretWriter, WriteError, WriteOutcome};
use crate::inject::ManagedSecret;

/// Writes managed Secrets through the API.
pub struct KubeSecretWriter {
    client: Client,
    prefix: String,
    keys: SecretAnnotations,
    cache: Store<Secret>,
    provenance: Provenance,
}

impl KubeSecretWriter {
    /// The writer over a watch of managed Secrets (every namespace, by
    /// label), and the future that keeps that cache current, for the caller
    /// to run. `prefix` is the annotation prefix; `provenance` the keys
    /// Secrets are signed with.
    pub fn watching(
        client: Client,
        prefix: &str,
        provenance: Provenance,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let api: Api<Secret> = Api::all(client.clone());
        let config = watcher::Config::default().labels(MANAGED_SELECTOR);
        let owned = prefix.to_owned();
        let (cache, watch) =
            super::reflect::reflector(api, config, "managed-secrets", move |s| digested(s, &owned));
        (Self::new(client, prefix, cache, provenance), watch)
    }

    /// A writer over a cache of managed Secrets (shared with GC and
    /// rotation), each reduced by [`digested`].
    pub fn new(client: Client, prefix: &str, cache: Store<Secret>, provenance: Provenance) -> Self {
        Self {
            client,
            prefix: prefix.to_owned(),
            keys: SecretAnnotations::new(prefix),
            cache,
            provenance,
        }
    }

    /// The cache of managed Secrets, shared with GC and rotation.
    pub fn cache(&self) -> &Store<Secret> {
        &self.cache
    }

    async fn stored(
        &self,
        api: &Api<Secret>,
        secret: &ManagedSecret,
    ) -> Result<Option<Arc<Secret>>, WriteError> {
        let key = ObjectRef::new(&secret.name).within(&secret.namespace);
        if let Some(s) = self.cache.get(&key) {
            return Ok(Some(s));
        }
        // Not in the cache (new, or the cache is still syncing): read it so
        // that owners another replica added are kept.
        match api.get_opt(&secret.name).await {
            Ok(s) => Ok(s.map(|mut s| {
                digested(&mut s, &self.prefix);
                Arc::new(s)
            })),
            Err(e) => Err(write_error(&secret.name, &e)),
        }
    }
}

/// The whole write, retry included, must fit in what is left of the
/// admission deadline after the stores were read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

#[async_trait]
impl SecretWriter for KubeSecretWriter {
    async fn apply(
        &self,
        secret: &ManagedSecret,
        budget: &dyn CreationBudget,
    ) -> Result<WriteOutcome, WriteError> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.write(secret, budget)).await {
            Ok(r) => r,
            Err(_) => Err(WriteError::Unreachable {
                name: secret.name.clone(),
                reason: format!("no answer within {}s", WRITE_TIMEOUT.as_secs()),
            }),
        }
    }

    fn kind(&self) -> &'static str {
        "kubernetes"
    }
}

impl KubeSecretWriter {
    async fn write(
        &self,
        secret: &ManagedSecret,
        budget: &dyn CreationBudget,
    ) -> Result<WriteOutcome, WriteError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &secret.namespace);
        let existing = self.stored(&api, secret).await?;
        let ring = self.provenance.current();
        let owners = match decide(existing.as_deref(), secret, &self.keys, ring.as_deref()) {
            ApplyDecision::UpToDate => return Ok(WriteOutcome::Unchanged),
            ApplyDecision::Apply { owners } => owners,
            ApplyDecision::Terminating => {
                return Err(WriteError::Refused {
                    name: secret.name.clone(),
                    reason: "it is being deleted; the Pod can be created again once it is gone".into(),
                })
            }
        };
        if existing.is_none() && !budget.may_create(&secret.namespace) {
            return Err(WriteError::TooManyNew {
                namespace: secret.namespace.clone(),
                name: secret.name.clone(),
            });
        }
        let body = apply_body(secret, &owners, &self.keys, &now_rfc3339(), ring.as_deref());
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let patch = Patch::Apply(&body);
        let mut attempt = 0;
        loop {
            match api.patch(&secret.name, &params, &patch).await {
                Ok(_) => return Ok(WriteOutcome::Applied),
                // One quick retry for throttling and transient server errors;
                // the admission deadline leaves no room for more.
                Err(e) if attempt == 0 && is_transient(&e) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(write_error(&secret.name, &e)),
            }
        }
    }
}

/// Throttling, a server error or no answer: worth one more try.
pub(crate) fn is_transient(e: &::kube::Error) -> bool {
    match e {
        ::kube::Error::Api(s) => matches!(s.code, 429 | 500 | 502 | 503 | 504),
        ::kube::Error::HyperError(_) | ::kube::Error::Service(_) => true,
        _ => false,
    }
}

/// A safe message: the API status (code, reason, message) or the transport
/// failure. The API server's messages name fields and keys, never values.
pub(crate) fn write_error(name: &str, e: &::kube::Error) -> WriteError {
    match e {
        ::kube::Error::Api(s) => WriteError::Refused {
            name: name.to_owned(),
            reason: format!("{} {}: {}", s.code, s.reason, s.message),
        },
        other => WriteError::Unreachable {
            name: name.to_owned(),
            reason: other.to_string(),
        },
    }
}
