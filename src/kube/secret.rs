//! The managed Secret as the API server stores it: the one body Sesame
//! writes (labels, annotations, owners and data built from a
//! `ManagedSecret`), what a stored copy records about itself, and the pure
//! decision whether a stored copy is current. No I/O here; the writer, the
//! rotation and `sesame mutate` call these.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference as KubeOwnerReference;
use serde::Serialize;
use serde_json::{json, Value};

use crate::inject::annotations::SecretRef;
use crate::inject::plan::content_hash;
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
    /// One-way hash of keys and values, for people and audits comparing
    /// copies; Sesame itself compares the stored data byte for byte.
    pub content_hash: String,
    /// RFC 3339 time of the last write or check against the stores.
    pub(crate) refreshed_at: String,
    /// `"true"` when a rotation restarts the owning workloads.
    pub restart_on_rotation: String,
}

impl SecretAnnotations {
    pub fn new(prefix: &str) -> Self {
        Self {
            references: format!("{prefix}/references"),
            sources: format!("{prefix}/sources"),
            content_hash: format!("{prefix}/content-hash"),
            refreshed_at: format!("{prefix}/refreshed-at"),
            restart_on_rotation: format!("{prefix}/restart-on-rotation"),
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
/// with the stored bytes, not with the recorded hash, so a Secret edited by
/// hand is written again.
pub(crate) fn decide(
    existing: Option<&Secret>,
    wanted: &ManagedSecret,
    keys: &SecretAnnotations,
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
    let up_to_date = labelled
        && owners.len() == current_owners.len()
        && stored_data_equals(existing, &wanted.data)
        && annotations.and_then(|a| a.get(&keys.sources)) == Some(&sources_json(wanted))
        && restart_recorded == wanted.restart_on_rotation;
    if up_to_date {
        ApplyDecision::UpToDate
    } else {
        ApplyDecision::Apply { owners }
    }
}

/// Whether a stored Secret holds exactly `data`: compared byte for byte,
/// which is cheaper on the admission path than hashing both sides.
pub(crate) fn stored_data_equals(secret: &Secret, data: &BTreeMap<String, SecretValue>) -> bool {
    let stored = secret.data.as_ref();
    stored.map_or(0, BTreeMap::len) == data.len()
        && data
            .iter()
            .all(|(k, v)| stored.and_then(|s| s.get(k)).is_some_and(|b| b.0 == v.expose()))
}

/// The `sources` annotation: key → the reference it holds, every field.
pub(crate) fn sources_json(secret: &ManagedSecret) -> String {
    serde_json::to_string(&secret.sources).unwrap_or_default()
}

/// Reads the `sources` annotation back: key → reference.
pub(crate) fn parse_sources(
    secret: &Secret,
    keys: &SecretAnnotations,
) -> Option<BTreeMap<String, SecretRef>> {
    let text = secret.metadata.annotations.as_ref()?.get(&keys.sources)?;
    serde_json::from_str(text).ok()
}

/// A stored managed Secret with new data, as Sesame would write it: what
/// else it records (references, the restart flag) read back from its
/// annotations; `sources` as [`parse_sources`] read them. The references
/// fall back to the sources when their text cannot be read.
pub(crate) fn with_new_data(
    secret: &Secret,
    keys: &SecretAnnotations,
    sources: BTreeMap<String, SecretRef>,
    data: BTreeMap<String, SecretValue>,
) -> ManagedSecret {
    let annotations = secret.metadata.annotations.as_ref();
    let parsed: Option<Vec<SecretRef>> = annotations
        .and_then(|a| a.get(&keys.references))
        .map(|text| text.lines().map(str::parse).collect::<Result<_, _>>().ok())
        .unwrap_or_default();
    let references = parsed.unwrap_or_else(|| {
        let set: std::collections::BTreeSet<&SecretRef> = sources.values().collect();
        set.into_iter().cloned().collect()
    });
    ManagedSecret {
        name: secret.metadata.name.clone().unwrap_or_default(),
        namespace: secret.metadata.namespace.clone().unwrap_or_default(),
        data,
        references,
        sources,
        restart_on_rotation: annotations
            .and_then(|a| a.get(&keys.restart_on_rotation))
            .is_some_and(|v| v == "true"),
        owners: Vec::new(),
    }
}

/// The Secret Sesame writes for `secret`, with `owners`: the body of the
/// writer's server-side apply and of rotation's update alike.
pub(crate) fn apply_body(
    secret: &ManagedSecret,
    owners: &[KubeOwnerReference],
    keys: &SecretAnnotations,
    now_rfc3339: &str,
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
        keys.content_hash.clone(),
        Value::String(content_hash(&secret.data)),
    );
    annotations.insert(keys.refreshed_at.clone(), Value::String(now_rfc3339.to_owned()));
    if secret.restart_on_rotation {
        annotations.insert(keys.restart_on_rotation.clone(), Value::String("true".into()));
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
        };
        ManagedSecret {
            name: "sesame-0123456789abcdef".into(),
            namespace: "team-a".into(),
            data,
            references: vec![r.clone()],
            sources: [("db.password".to_owned(), r)].into(),
            restart_on_rotation: false,
            owners,
        }
    }

    /// The Secret as the API server would return it after applying `wanted`.
    fn stored(wanted: &ManagedSecret, keys: &SecretAnnotations) -> Secret {
        let ApplyDecision::Apply { owners } = decide(None, wanted, keys) else {
            unreachable!()
        };
        let body = apply_body(wanted, &owners, keys, "2026-01-01T00:00:00Z");
        serde_json::from_value(body.0).unwrap()
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
        match decide(None, &wanted, &keys) {
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
        assert_eq!(decide(Some(&s), &wanted, &keys), ApplyDecision::UpToDate);
        // A Pod without a controller (bare Pod) asks for nothing new either.
        assert_eq!(decide(Some(&s), &managed(vec![]), &keys), ApplyDecision::UpToDate);
    }

    #[test]
    fn a_second_replicaset_is_added_not_swapped() {
        let keys = SecretAnnotations::new("sesame.dev");
        let s = stored(&managed(vec![owner("web-1", "u1")]), &keys);
        match decide(Some(&s), &managed(vec![owner("web-2", "u2")]), &keys) {
            ApplyDecision::Apply { owners } => {
                let uids: Vec<&str> = owners.iter().map(|o| o.uid.as_str()).collect();
                assert_eq!(uids, ["u1", "u2"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn changed_or_tampered_data_is_written_again() {
        let keys = SecretAnnotations::new("sesame.dev");
        let wanted = managed(vec![]);
        let mut s = stored(&wanted, &keys);
        s.data
            .get_or_insert_with(Default::default)
            .insert("db.password".into(), ByteString(b"edited".to_vec()));
        assert!(matches!(
            decide(Some(&s), &wanted, &keys),
            ApplyDecision::Apply { .. }
        ));

        let mut unlabelled = stored(&wanted, &keys);
        unlabelled.metadata.labels = None;
        assert!(matches!(
            decide(Some(&unlabelled), &wanted, &keys),
            ApplyDecision::Apply { .. }
        ));

        let mut restart = wanted.clone();
        restart.restart_on_rotation = true;
        assert!(matches!(
            decide(Some(&stored(&wanted, &keys)), &restart, &keys),
            ApplyDecision::Apply { .. }
        ));
    }

    #[test]
    fn a_terminating_secret_is_not_reused() {
        let keys = SecretAnnotations::new("sesame.dev");
        let wanted = managed(vec![]);
        let mut s = stored(&wanted, &keys);
        s.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ));
        assert_eq!(decide(Some(&s), &wanted, &keys), ApplyDecision::Terminating);
    }

    #[test]
    fn apply_body_records_references_not_values() {
        let keys = SecretAnnotations::new("sesame.dev");
        let mut wanted = managed(vec![owner("web-1", "u1")]);
        wanted.restart_on_rotation = true;
        let body = apply_body(&wanted, &[secret_owner(&owner("web-1", "u1"))], &keys, "t");
        let v = &body.0;
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["kind"], "Secret");
        assert_eq!(v["metadata"]["labels"][MANAGED_BY_LABEL], "sesame");
        let a = &v["metadata"]["annotations"];
        assert_eq!(a["sesame.dev/references"], "vault:secret/app/db#password");
        assert_eq!(a["sesame.dev/content-hash"], content_hash(&wanted.data).as_str());
        assert_eq!(a["sesame.dev/restart-on-rotation"], "true");
        let annotations_text = a.to_string();
        assert!(!annotations_text.contains("s3cr3t"));
        assert_eq!(v["data"]["db.password"], "czNjcjN0");
        assert_eq!(v["metadata"]["ownerReferences"][0]["uid"], "u1");
        assert!(v["metadata"]["ownerReferences"][0].get("controller").is_none());
        assert!(!format!("{body:?}").contains("czNjcjN0"));

        let s: Secret = serde_json::from_value(body.0.clone()).unwrap();
        let sources = parse_sources(&s, &keys).unwrap();
        assert_eq!(sources["db.password"].path, "secret/app/db");
        assert_eq!(sources["db.password"].property.as_deref(), Some("password"));
    }

    #[test]
    fn stored_data_is_compared_byte_for_byte() {
        let wanted = managed(vec![]);
        let stored = |pairs: &[(&str, &[u8])]| Secret {
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                    .collect(),
            ),
            ..Default::default()
        };
        assert!(stored_data_equals(
            &stored(&[("db.password", b"s3cr3t")]),
            &wanted.data
        ));
        assert!(!stored_data_equals(
            &stored(&[("db.password", b"other")]),
            &wanted.data
        ));
        assert!(!stored_data_equals(
            &stored(&[("db.password", b"s3cr3t"), ("x", b"y")]),
            &wanted.data
        ));
        assert!(!stored_data_equals(
            &stored(&[("db.user", b"s3cr3t")]),
            &wanted.data
        ));
        assert!(!stored_data_equals(&Secret::default(), &wanted.data));
    }

    /// The record → parse round trip on a stored Secret: every field of a
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
        };
        let mut wanted = managed(vec![owner("web-1", "u1")]);
        wanted.references = vec![SecretRef {
            property: None,
            ..pinned.clone()
        }];
        wanted.sources = [("db.password".to_owned(), pinned)].into();
        wanted.restart_on_rotation = true;
        let s = stored(&wanted, &keys);
        assert_eq!(parse_sources(&s, &keys).unwrap(), wanted.sources);

        let again = with_new_data(&s, &keys, wanted.sources.clone(), wanted.data.clone());
        assert_eq!(again.references, wanted.references);
        assert!(again.restart_on_rotation);
        let owners = merged_owners(s.metadata.owner_references.as_deref().unwrap_or(&[]), &[]);
        let mut rotated = apply_body(&again, &owners, &keys, "2026-01-01T00:00:00Z").0;
        let ApplyDecision::Apply { owners } = decide(None, &wanted, &keys) else {
            unreachable!()
        };
        let mut admitted = apply_body(&wanted, &owners, &keys, "2026-01-01T00:00:00Z").0;
        assert_eq!(rotated.take(), admitted.take());
    }

    /// Secrets written before the reference type was recorded as such keep
    /// working: the format is the same JSON.
    #[test]
    fn sources_written_by_earlier_versions_parse() {
        let keys = SecretAnnotations::new("sesame.dev");
        let s = Secret {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                annotations: Some(
                    [(
                        keys.sources.clone(),
                        r#"{"db.password":{"store":"vault","path":"secret/app/db","property":"password"},"k":{"store":"aws","path":"x","version":"AWSPREVIOUS"}}"#.to_owned(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        let sources = parse_sources(&s, &keys).unwrap();
        assert_eq!(sources["db.password"].property.as_deref(), Some("password"));
        assert_eq!(sources["k"].version.as_deref(), Some("AWSPREVIOUS"));
        let references = with_new_data(&s, &keys, sources, BTreeMap::new()).references;
        assert_eq!(references.len(), 2, "without a references text, from the sources");
    }
}
