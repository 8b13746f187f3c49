//! The managed Secret as the API server stores it: the one body Sesame
//! writes (labels, annotations, owners, data and the provenance MAC built
//! from a `ManagedSecret`), what a stored copy records about itself and
//! whether that record is Sesame's own (its MAC verifies), and the pure
//! decision whether a stored copy is current. No I/O here; the writer, the
//! rotation, garbage collection and `sesame mutate` call these.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference as KubeOwnerReference;
use serde::Serialize;
use serde_json::{json, Value};

use super::digest::holds_exactly;
use super::provenance::{KeyRing, MacError, Provenance, Record, Verified};
use crate::inject::annotations::SecretRef;
use crate::inject::data::KeySource;
use crate::inject::pod::OwnerReference;
use crate::inject::ManagedSecret;
use crate::stores::SecretValue;

/// The field manager of every write Sesame makes.
pub const FIELD_MANAGER: &str = "sesame";
pub(crate) const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub(crate) const MANAGED_BY_VALUE: &str = "sesame";
/// `app.kubernetes.io/managed-by=sesame`, for lists and watches.
pub(crate) const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=sesame";

/// Annotation keys on a managed Secret, under the configured prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SecretAnnotations {
    /// Compact references, one per line, for people (`kubectl describe`).
    pub references: String,
    /// JSON object: key → reference (every field of it); what rotation re-resolves.
    pub sources: String,
    /// The Pod's service account: the subject rotation authorises again.
    pub service_account: String,
    /// RFC 3339 time of the last write or check against the stores.
    pub(crate) refreshed_at: String,
    /// `"true"` when a Pod asked for its workload to be restarted on rotation.
    pub restart_on_rotation: String,
    /// `v1:<key id>:<hex>`: the HMAC-SHA256 over everything above, the
    /// namespace and the name, with Sesame's provenance key.
    pub provenance: String,
}

impl SecretAnnotations {
    pub fn new(prefix: &str) -> Self {
        Self {
            references: format!("{prefix}/references"),
            sources: format!("{prefix}/sources"),
            service_account: format!("{prefix}/service-account"),
            refreshed_at: format!("{prefix}/refreshed-at"),
            restart_on_rotation: format!("{prefix}/restart-on-rotation"),
            provenance: format!("{prefix}/provenance"),
        }
    }
}

/// The server-side apply body. `Debug` shows no values, because the client
/// library may log what it sends.
pub(crate) struct ApplyBody(pub Value);

impl Serialize for ApplyBody {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl fmt::Debug for ApplyBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self
            .0
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        write!(f, "ApplyBody({name}, data redacted)")
    }
}

/// Owner references as the Secret carries them: never `controller` (a
/// Secret shared across a rollout has several owners, and only one may be
/// the controller) and never `blockOwnerDeletion` (that needs delete rights
/// on the owner's finalizers).
pub(crate) fn secret_owner(o: &OwnerReference) -> KubeOwnerReference {
    KubeOwnerReference {
        api_version: o.api_version.clone(),
        kind: o.kind.clone(),
        name: o.name.clone(),
        uid: o.uid.clone(),
        controller: None,
        block_owner_deletion: None,
    }
}

/// Owners to apply: the ones already on the Secret, then the plan's, one
/// per uid. Applying the union keeps every ReplicaSet of a rollout as owner,
/// since server-side apply drops list entries a manager stops sending.
pub(crate) fn merged_owners(
    existing: &[KubeOwnerReference],
    wanted: &[OwnerReference],
) -> Vec<KubeOwnerReference> {
    let mut out: Vec<KubeOwnerReference> = existing
        .iter()
        .map(|o| KubeOwnerReference {
            controller: None,
            block_owner_deletion: None,
            ..o.clone()
        })
        .collect();
    for w in wanted {
        if !out.iter().any(|o| o.uid == w.uid) {
            out.push(secret_owner(w));
        }
    }
    out
}

/// What the writer does with a plan's Secret.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ApplyDecision {
    /// The stored Secret has the same data, owners and flags: no API call.
    UpToDate,
    /// Apply with these owners.
    Apply { owners: Vec<KubeOwnerReference> },
    /// The Secret is being deleted (e.g. foreground deletion of its last
    /// owner): a Pod admitted now would lose it. The caller denies; the
    /// Pod's controller retries once it is gone.
    Terminating,
}

/// Compares the stored Secret (if any) with the plan. The data is compared
/// with the stored bytes, so a Secret edited by hand is written again; so is
/// one whose MAC does not verify with `ring` (written by someone else, or
/// before the keys were available). Without keys the MAC is not looked at.
pub(crate) fn decide(
    existing: Option<&Secret>,
    wanted: &ManagedSecret,
    keys: &SecretAnnotations,
    ring: Option<&KeyRing>,
) -> ApplyDecision {
    let Some(existing) = existing else {
        return ApplyDecision::Apply {
            owners: merged_owners(&[], &wanted.owners),
        };
    };
    if existing.metadata.deletion_timestamp.is_some() {
        return ApplyDecision::Terminating;
    }
    let current_owners = existing.metadata.owner_references.as_deref().unwrap_or(&[]);
    let owners = merged_owners(current_owners, &wanted.owners);
    let annotations = existing.metadata.annotations.as_ref();
    let labelled = existing
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == MANAGED_BY_VALUE);
    let restart_recorded = annotations
        .and_then(|a| a.get(&keys.restart_on_rotation))
        .is_some_and(|v| v == "true");
    let signed = ring.is_none_or(|ring| verify(existing, keys, ring).is_ok());
    let up_to_date = labelled
        && owners.len() == current_owners.len()
        && holds_exactly(existing, &wanted.data)
        && annotations.and_then(|a| a.get(&keys.sources)) == Some(&sources_json(wanted))
        && annotations.and_then(|a| a.get(&keys.service_account)) == Some(&wanted.service_account)
        && restart_recorded == wanted.restart_on_rotation
        && signed;
    if up_to_date {
        ApplyDecision::UpToDate
    } else {
        ApplyDecision::Apply { owners }
    }
}

/// The `sources` annotation: key → the reference (every field) or the
/// template (its text and placeholders) it holds.
pub(crate) fn sources_json(secret: &ManagedSecret) -> String {
    serde_json::to_string(&secret.sources).unwrap_or_default()
}

/// What a stored managed Secret records about itself, read back from its
/// labels' and annotations' text: exactly what its MAC covers. Input, not
/// fact, until [`verify`] said the MAC is Sesame's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recorded {
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    pub references: Vec<SecretRef>,
    pub sources: BTreeMap<String, KeySource>,
    pub restart_on_rotation: bool,
    pub refreshed_at: String,
}

/// Why a Secret's record cannot be read (names the annotation, never a value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Unverified {
    #[error("annotation {0} is missing or unreadable")]
    Unreadable(String),
    #[error(transparent)]
    Mac(#[from] MacError),
}

impl Unverified {
    /// Metric label.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::Unreadable(_) => "unreadable",
            Self::Mac(e) => e.label(),
        }
    }
}

impl Recorded {
    /// Reads the record of a stored Secret.
    pub(crate) fn read(secret: &Secret, keys: &SecretAnnotations) -> Result<Self, Unverified> {
        let empty = BTreeMap::new();
        let annotations = secret.metadata.annotations.as_ref().unwrap_or(&empty);
        let text = |key: &String| {
            annotations
                .get(key)
                .ok_or_else(|| Unverified::Unreadable(key.clone()))
        };
        let sources: BTreeMap<String, KeySource> = serde_json::from_str(text(&keys.sources)?)
            .map_err(|_| Unverified::Unreadable(keys.sources.clone()))?;
        let references_text = text(&keys.references)?;
        let references = if references_text.is_empty() {
            Vec::new()
        } else {
            references_text
                .lines()
                .map(str::parse)
                .collect::<Result<Vec<SecretRef>, _>>()
                .map_err(|_| Unverified::Unreadable(keys.references.clone()))?
        };
        Ok(Self {
            namespace: secret.metadata.namespace.clone().unwrap_or_default(),
            name: secret.metadata.name.clone().unwrap_or_default(),
            service_account: text(&keys.service_account)?.clone(),
            references,
            sources,
            restart_on_rotation: annotations
                .get(&keys.restart_on_rotation)
                .is_some_and(|v| v == "true"),
            refreshed_at: text(&keys.refreshed_at)?.clone(),
        })
    }

    fn record(&self) -> Record<'_> {
        Record {
            namespace: &self.namespace,
            name: &self.name,
            service_account: &self.service_account,
            references: &self.references,
            sources: &self.sources,
            restart_on_rotation: self.restart_on_rotation,
            refreshed_at: &self.refreshed_at,
        }
    }

    /// The MAC of this record with the newest key of `ring` (to sign a
    /// verified Secret again after a key was added).
    pub(crate) fn mac(&self, ring: &KeyRing) -> String {
        ring.sign(&self.record())
    }

    /// The Secret as Sesame would write it now: this record with `sources`
    /// (the ones still granted) holding `data`. References that no source
    /// uses any more are dropped with them.
    pub(crate) fn with_data(
        &self,
        sources: BTreeMap<String, KeySource>,
        data: BTreeMap<String, SecretValue>,
    ) -> ManagedSecret {
        let used: std::collections::BTreeSet<(&str, &str, Option<&str>)> = sources
            .values()
            .flat_map(KeySource::references)
            .map(|r| (r.store.as_str(), r.path.as_str(), r.version.as_deref()))
            .collect();
        let references = self
            .references
            .iter()
            .filter(|r| used.contains(&(r.store.as_str(), r.path.as_str(), r.version.as_deref())))
            .cloned()
            .collect();
        ManagedSecret {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            service_account: self.service_account.clone(),
            data,
            references,
            sources,
            restart_on_rotation: self.restart_on_rotation,
            owners: Vec::new(),
        }
    }
}

/// Whether `secret` is a managed Secret as Sesame wrote it: its record is
/// readable and its MAC verifies with one of `ring`'s keys. Rotation,
/// garbage collection and restarts act on nothing else.
pub(crate) fn verify(
    secret: &Secret,
    keys: &SecretAnnotations,
    ring: &KeyRing,
) -> Result<(Recorded, Verified), Unverified> {
    let mac = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(&keys.provenance));
    let recorded = Recorded::read(secret, keys)?;
    let verified = ring.verify(&recorded.record(), mac.map(String::as_str))?;
    Ok((recorded, verified))
}

/// What the MAC of `secret`, written at `refreshed_at`, covers.
fn record_of<'a>(secret: &'a ManagedSecret, refreshed_at: &'a str) -> Record<'a> {
    Record {
        namespace: &secret.namespace,
        name: &secret.name,
        service_account: &secret.service_account,
        references: &secret.references,
        sources: &secret.sources,
        restart_on_rotation: secret.restart_on_rotation,
        refreshed_at,
    }
}

/// The Secret Sesame writes for `secret`, with `owners`: the body of the
/// writer's server-side apply and of rotation's update alike. With keys
/// (`ring`) it carries the MAC; without (no API, or the keys cannot be
/// read yet) it does not, and the leader's loops will leave it alone.
pub(crate) fn apply_body(
    secret: &ManagedSecret,
    owners: &[KubeOwnerReference],
    keys: &SecretAnnotations,
    now_rfc3339: &str,
    ring: Option<&KeyRing>,
) -> ApplyBody {
    let data: serde_json::Map<String, Value> = secret
        .data
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                Value::String(base64::engine::general_purpose::STANDARD.encode(v.expose())),
            )
        })
        .collect();
    let references: Vec<String> = secret.references.iter().map(ToString::to_string).collect();
    let mut annotations = serde_json::Map::new();
    annotations.insert(keys.references.clone(), Value::String(references.join("\n")));
    annotations.insert(keys.sources.clone(), Value::String(sources_json(secret)));
    annotations.insert(
        keys.service_account.clone(),
        Value::String(secret.service_account.clone()),
    );
    annotations.insert(keys.refreshed_at.clone(), Value::String(now_rfc3339.to_owned()));
    if secret.restart_on_rotation {
        annotations.insert(keys.restart_on_rotation.clone(), Value::String("true".into()));
    }
    if let Some(ring) = ring {
        let mac = ring.sign(&record_of(secret, now_rfc3339));
        annotations.insert(keys.provenance.clone(), Value::String(mac));
    }
    let mut metadata = json!({
        "name": secret.name,
        "namespace": secret.namespace,
        "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE},
        "annotations": annotations,
    });
    if !owners.is_empty() {
        metadata["ownerReferences"] = serde_json::to_value(owners).unwrap_or(Value::Null);
    }
    ApplyBody(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "data": data,
    }))
}

/// The managed Secret `secret` as Sesame writes it, refreshed at
/// `refreshed_at`, with its own owners and (when `provenance` holds keys)
/// its MAC: what `sesame mutate` prints, and what tests store as a genuine
/// managed Secret.
pub fn manifest(secret: &ManagedSecret, prefix: &str, provenance: &Provenance, refreshed_at: &str) -> Value {
    let owners: Vec<KubeOwnerReference> = secret.owners.iter().map(secret_owner).collect();
    let keys = SecretAnnotations::new(prefix);
    let ring = provenance.current();
    apply_body(secret, &owners, &keys, refreshed_at, ring.as_deref()).0
}

/// Now, as the API server writes times.
pub fn now_rfc3339() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn owner(name: &str, uid: &str) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: name.into(),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    fn managed(owners: Vec<OwnerReference>) -> ManagedSecret {
        let data: BTreeMap<String, SecretValue> =
            [("db.password".to_owned(), SecretValue::from("s3cr3t"))].into();
        let r = SecretRef {
            store: "vault".into(),
            path: "secret/app/db".into(),
            property: Some("password".into()),
            version: None,
            refresh: None,
        };
        ManagedSecret {
            name: "sesame-0123456789abcdef".into(),
            namespace: "team-a".into(),
            service_account: "web".into(),
            data,
            references: vec![r.clone()],
            sources: [("db.password".to_owned(), r.into())].into(),
            restart_on_rotation: false,
            owners,
        }
    }

    fn ring() -> KeyRing {
        KeyRing::new(vec![(1, vec![7; 32])]).unwrap()
    }

    /// The Secret as the API server would return it after applying `wanted`.
    fn stored(wanted: &ManagedSecret, keys: &SecretAnnotations) -> Secret {
        let ApplyDecision::Apply { owners } = decide(None, wanted, keys, Some(&ring())) else {
            unreachable!()
        };
        let body = apply_body(wanted, &owners, keys, "2026-01-01T00:00:00Z", Some(&ring()));
        // As the cache of managed Secrets holds it.
        let mut secret = serde_json::from_value(body.0).unwrap();
        super::super::digest::digested(&mut secret, "sesame.dev");
        secret
    }

    fn annotate(secret: &mut Secret, key: &str, value: &str) {
        secret
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(key.to_owned(), value.to_owned());
    }

    #[test]
    fn owners_drop_controller_and_merge_by_uid() {
        let existing = vec![secret_owner(&owner("web-1", "u1"))];
        let merged = merged_owners(&existing, &[owner("web-2", "u2"), owner("web-1", "u1")]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].uid, "u1");
        assert_eq!(merged[1].uid, "u2");
        assert!(merged
            .iter()
            .all(|o| o.controller.is_none() && o.block_owner_deletion.is_none()));
    }

    #[test]
    fn new_secret_is_applied_with_the_pods_controller() {
        let keys = SecretAnnotations::new("sesame.dev");
        let wanted = managed(vec![owner("web-1", "u1")]);
        match decide(None, &wanted, &keys, Some(&ring())) {
            ApplyDecision::Apply { owners } => {
                assert_eq!(owners.len(), 1);
                assert_eq!(owners[0].name, "web-1");
                assert_eq!(owners[0].controller, None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn current_secret_costs_nothing() {
        let keys = SecretAnnotations::new("sesame.dev");
        let wanted = managed(vec![owner("web-1", "u1")]);
        let s = stored(&wanted, &keys);
        assert_eq!(
            decide(Some(&s), &wanted, &keys, Some(&ring())),
            ApplyDecision::UpToDate
        );
        // A Pod without a controller (bare Pod) asks for nothing new either.
        assert_eq!(
            decide(Some(&s), &managed(vec![]), &keys, Some(&ring())),
            ApplyDecision::UpToDate
        );
        // Signed with an older key that is still listed: current too (the
        // leader signs it again).
        let newer = KeyRing::new(vec![(1, vec![7; 32]), (2, vec![8; 32])]).unwrap();
        assert_eq!(
            decide(Some(&s), &wanted, &keys, Some(&newer)),
            ApplyDecision::UpToDate
        );
    }

    #[test]
    fn a_second_replicaset_is_added_not_swapped() {
        let keys = SecretAnnotations::new("sesame.dev");
        let s = stored(&managed(vec![owner("web-1", "u1")]), &keys);
        match decide(
            Some(&s),
            &managed(vec![owner("web-2", "u2")]),
            &keys,
            Some(&ring()),
        ) {
            ApplyDecision::Apply { owners } => {
                let uids: Vec<&str> = owners.iter().map(|o| o.uid.as_str()).collect();
                assert_eq!(uids, ["u1", "u2"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn changed_tampered_or_forged_secrets_are_written_again() {
        let keys = SecretAnnotations::new("sesame.dev");
        let wanted = managed(vec![]);
        let apply = |s: &Secret, w: &ManagedSecret| {
            matches!(
                decide(Some(s), w, &keys, Some(&ring())),
                ApplyDecision::Apply { .. }
            )
        };
        let mut s = stored(&wanted, &keys);
        s.data
            .get_or_insert_with(Default::default)
            .insert("db.password".into(), ByteString(b"edited".to_vec()));
        assert!(apply(&s, &wanted));

        let mut unlabelled = stored(&wanted, &keys);
        unlabelled.metadata.labels = None;
        assert!(apply(&unlabelled, &wanted));

        let mut restart = wanted.clone();
        restart.restart_on_rotation = true;
        assert!(apply(&stored(&wanted, &keys), &restart));

        // Another service account's Secret of the same name (cannot happen
        // through Sesame: the name hashes the account) is not taken as ours.
        let mut other_account = stored(&wanted, &keys);
        annotate(&mut other_account, &keys.service_account, "ci");
        assert!(apply(&other_account, &wanted));

        // A Secret someone else wrote with the same content (a tenant's
        // copy, or one written while the keys were unavailable): its MAC
        // does not verify, so Sesame writes its own.
        let mut forged = stored(&wanted, &keys);
        forged
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(&keys.provenance);
        assert!(apply(&forged, &wanted));
        annotate(&mut forged, &keys.provenance, "v1:1:00");
        assert!(apply(&forged, &wanted));
        // Without keys, the MAC is not looked at.
        assert_eq!(
            decide(Some(&forged), &wanted, &keys, None),
            ApplyDecision::UpToDate
        );
    }

    #[test]
    fn a_terminating_secret_is_not_reused() {
        let keys = SecretAnnotations::new("sesame.dev");
        let wanted = managed(vec![]);
        let mut s = stored(&wanted, &keys);
        s.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ));
        assert_eq!(
            decide(Some(&s), &wanted, &keys, Some(&ring())),
            ApplyDecision::Terminating
        );
    }

    #[test]
    fn apply_body_records_references_not_values() {
        let keys = SecretAnnotations::new("sesame.dev");
        let mut wanted = managed(vec![owner("web-1", "u1")]);
        wanted.restart_on_rotation = true;
        let body = apply_body(
            &wanted,
            &[secret_owner(&owner("web-1", "u1"))],
            &keys,
            "t",
            Some(&ring()),
        );
        let v = &body.0;
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["kind"], "Secret");
        assert_eq!(v["metadata"]["labels"][MANAGED_BY_LABEL], "sesame");
        let a = &v["metadata"]["annotations"];
        assert_eq!(a["sesame.dev/references"], "vault:secret/app/db#password");
        assert_eq!(a["sesame.dev/service-account"], "web");
        assert_eq!(a["sesame.dev/restart-on-rotation"], "true");
        assert!(a["sesame.dev/provenance"].as_str().unwrap().starts_with("v1:1:"));
        // No plain hash of the values: a short value could be recovered from it.
        assert!(a.get("sesame.dev/content-hash").is_none());
        let annotations_text = a.to_string();
        assert!(!annotations_text.contains("s3cr3t"));
        assert_eq!(v["data"]["db.password"], "czNjcjN0");
        assert_eq!(v["metadata"]["ownerReferences"][0]["uid"], "u1");
        assert!(v["metadata"]["ownerReferences"][0].get("controller").is_none());
        assert!(!format!("{body:?}").contains("czNjcjN0"));

        let s: Secret = serde_json::from_value(body.0.clone()).unwrap();
        let (recorded, verified) = verify(&s, &keys, &ring()).unwrap();
        assert!(verified.current);
        assert_eq!(
            recorded.sources["db.password"].as_reference().unwrap().path,
            "secret/app/db"
        );
        assert_eq!(
            recorded.sources["db.password"]
                .as_reference()
                .unwrap()
                .property
                .as_deref(),
            Some("password")
        );
        assert_eq!(recorded.service_account, "web");

        // Without keys: no MAC, and nothing else changes.
        let unsigned = apply_body(&wanted, &[], &keys, "t", None);
        assert!(unsigned.0["metadata"]["annotations"]
            .get("sesame.dev/provenance")
            .is_none());
        assert_eq!(
            unsigned.0["metadata"]["annotations"]["sesame.dev/sources"],
            v["metadata"]["annotations"]["sesame.dev/sources"]
        );
    }

    /// The attacker's view of a stored Secret: every annotation the MAC
    /// covers, and the name and namespace, edited one at a time; each
    /// edit makes the Secret unverified.
    #[test]
    fn editing_what_a_stored_secret_records_breaks_its_mac() {
        let keys = SecretAnnotations::new("sesame.dev");
        let mut wanted = managed(vec![]);
        wanted.restart_on_rotation = true;
        let genuine = stored(&wanted, &keys);
        assert!(verify(&genuine, &keys, &ring()).is_ok());
        let other_team =
            r#"{"db.password":{"store":"vault","path":"secret/team-b/db","property":"password"}}"#;
        type Edit<'a> = (&'static str, Box<dyn Fn(&mut Secret) + 'a>);
        let edits: Vec<Edit<'_>> = vec![
            ("sources", Box::new(|s| annotate(s, &keys.sources, other_team))),
            (
                "references",
                Box::new(|s| annotate(s, &keys.references, "vault:secret/team-b/db")),
            ),
            (
                "service account",
                Box::new(|s| annotate(s, &keys.service_account, "ci")),
            ),
            (
                "refreshed-at",
                Box::new(|s| annotate(s, &keys.refreshed_at, "2099-01-01T00:00:00Z")),
            ),
            ("restart flag", {
                Box::new(|s| {
                    s.metadata
                        .annotations
                        .as_mut()
                        .unwrap()
                        .remove(&keys.restart_on_rotation);
                })
            }),
            (
                "name",
                Box::new(|s| s.metadata.name = Some("sesame-ffffffffffffffff".into())),
            ),
            (
                "namespace",
                Box::new(|s| s.metadata.namespace = Some("team-b".into())),
            ),
        ];
        for (what, edit) in edits {
            let mut forged = genuine.clone();
            edit(&mut forged);
            let e = verify(&forged, &keys, &ring()).unwrap_err();
            assert_eq!(e, Unverified::Mac(MacError::Mismatch), "{what}");
        }
        let mut no_account = genuine.clone();
        no_account
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(&keys.service_account);
        assert_eq!(
            verify(&no_account, &keys, &ring()).unwrap_err().label(),
            "unreadable"
        );
        let mut garbled = genuine.clone();
        annotate(&mut garbled, &keys.sources, "{not json");
        assert_eq!(
            verify(&garbled, &keys, &ring()).unwrap_err().label(),
            "unreadable"
        );
        // Owners and data are not part of the record: Kubernetes' own
        // garbage collector edits owners, and rotation compares the data.
        let mut owned = genuine.clone();
        owned.metadata.owner_references = Some(vec![secret_owner(&owner("x", "u9"))]);
        owned.data = None;
        assert!(verify(&owned, &keys, &ring()).is_ok());
    }

    #[test]
    fn a_cached_secret_is_current_only_with_the_same_values() {
        let wanted = managed(vec![]);
        let stored = |pairs: &[(&str, &[u8])]| {
            let mut s = Secret {
                data: Some(
                    pairs
                        .iter()
                        .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                        .collect(),
                ),
                ..Default::default()
            };
            super::super::digest::digested(&mut s, "sesame.dev");
            s
        };
        assert!(holds_exactly(
            &stored(&[("db.password", b"s3cr3t")]),
            &wanted.data
        ));
        assert!(!holds_exactly(
            &stored(&[("db.password", b"other")]),
            &wanted.data
        ));
        assert!(!holds_exactly(
            &stored(&[("db.password", b"s3cr3t"), ("x", b"y")]),
            &wanted.data
        ));
        assert!(!holds_exactly(&stored(&[("db.user", b"s3cr3t")]), &wanted.data));
        assert!(!holds_exactly(&Secret::default(), &wanted.data));
    }

    /// The record → read round trip on a stored Secret: every field of a
    /// reference comes back, and rotation's view of the Secret (the same
    /// ManagedSecret with new data) yields the same body as admission's.
    #[test]
    fn recorded_references_round_trip_every_field() {
        let keys = SecretAnnotations::new("sesame.dev");
        let pinned = SecretRef {
            store: "vault".into(),
            path: "secret/app/db".into(),
            property: Some("password".into()),
            version: Some("7".into()),
            refresh: None,
        };
        let mut wanted = managed(vec![owner("web-1", "u1")]);
        wanted.references = vec![SecretRef {
            property: None,
            ..pinned.clone()
        }];
        wanted.sources = [("db.password".to_owned(), pinned.into())].into();
        wanted.restart_on_rotation = true;
        let s = stored(&wanted, &keys);
        let (recorded, _) = verify(&s, &keys, &ring()).unwrap();
        assert_eq!(recorded.sources, wanted.sources);

        let again = recorded.with_data(wanted.sources.clone(), wanted.data.clone());
        assert_eq!(again.references, wanted.references);
        assert!(again.restart_on_rotation);
        let owners = merged_owners(s.metadata.owner_references.as_deref().unwrap_or(&[]), &[]);
        let t = "2026-01-01T00:00:00Z";
        let mut rotated = apply_body(&again, &owners, &keys, t, Some(&ring())).0;
        let ApplyDecision::Apply { owners } = decide(None, &wanted, &keys, Some(&ring())) else {
            unreachable!()
        };
        let mut admitted = apply_body(&wanted, &owners, &keys, t, Some(&ring())).0;
        assert_eq!(rotated.take(), admitted.take());

        // Fewer sources (a revoked reference): its reference goes too.
        let fewer = recorded.with_data(BTreeMap::new(), BTreeMap::new());
        assert!(fewer.references.is_empty());
    }

    /// Secrets written before provenance (no service account, no MAC) are
    /// not Sesame's as far as the leader's loops are concerned; the format
    /// of their sources is still read.
    #[test]
    fn secrets_written_by_earlier_versions_are_unverified() {
        let keys = SecretAnnotations::new("sesame.dev");
        let mut s = Secret {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                annotations: Some(
                    [
                        (
                            keys.sources.clone(),
                            r#"{"db.password":{"store":"vault","path":"secret/app/db","property":"password"},"k":{"store":"aws","path":"x","version":"AWSPREVIOUS"}}"#.to_owned(),
                        ),
                        (keys.references.clone(), "vault:secret/app/db#password\naws:x version=AWSPREVIOUS".to_owned()),
                        (keys.refreshed_at.clone(), "2026-01-01T00:00:00Z".to_owned()),
                        ("sesame.dev/content-hash".to_owned(), "ab".repeat(32)),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            verify(&s, &keys, &ring()).unwrap_err(),
            Unverified::Unreadable(keys.service_account.clone())
        );
        annotate(&mut s, &keys.service_account, "default");
        let recorded = Recorded::read(&s, &keys).unwrap();
        assert_eq!(
            recorded.sources["k"].as_reference().unwrap().version.as_deref(),
            Some("AWSPREVIOUS")
        );
        assert_eq!(recorded.references.len(), 2);
        assert_eq!(
            verify(&s, &keys, &ring()).unwrap_err(),
            Unverified::Mac(MacError::Missing)
        );
    }

    #[test]
    fn the_manifest_is_the_apply_body() {
        let wanted = managed(vec![owner("web-1", "u1")]);
        let keys = SecretAnnotations::new("sesame.dev");
        let p = Provenance::with_keys(vec![(1, vec![7; 32])]).unwrap();
        let m = manifest(&wanted, "sesame.dev", &p, "2026-01-01T00:00:00Z");
        let s: Secret = serde_json::from_value(m.clone()).unwrap();
        assert!(verify(&s, &keys, &ring()).is_ok());
        assert_eq!(m["metadata"]["ownerReferences"][0]["uid"], "u1");
        let unsigned = manifest(&wanted, "sesame.dev", &Provenance::empty(), "t");
        assert!(unsigned["metadata"]["annotations"]
            .get("sesame.dev/provenance")
            .is_none());
    }
}
