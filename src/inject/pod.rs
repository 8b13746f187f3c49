//! The parts of a Pod that injection reads. Deserialising only these (and
//! skipping the rest) keeps the no-annotation path cheap.
//!
//! Serialised, a view is the pipeline's memo key: every field the pipeline
//! reads is in it. Left out are the Pod's name and labels, which only logs
//! read, and the names of volumes that are not Sesame's, which differ
//! between the Pods of one ReplicaSet (`kube-api-access-xxxxx`) and which
//! no plan or patch depends on.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

/// Names of managed Secrets and volumes start with this.
pub(crate) const MANAGED_PREFIX: &str = "sesame-";

/// A Pod, or the `template` of a workload, as far as Sesame looks at it.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodView {
    #[serde(default)]
    pub metadata: MetaView,
    #[serde(default)]
    pub spec: SpecView,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetaView {
    // The name and labels name the Pod in logs and differ between the Pods
    // of one StatefulSet; no verdict depends on them, so the memo key
    // leaves them out. A pipeline that starts reading one must key it.
    #[serde(skip_serializing)]
    pub name: Option<String>,
    #[serde(skip_serializing)]
    pub generate_name: Option<String>,
    pub namespace: Option<String>,
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing)]
    pub labels: Option<BTreeMap<String, String>>,
    pub owner_references: Option<Vec<OwnerReference>>,
}

/// An owner reference, kept whole so that it can be copied to the managed Secret.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerReference {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_owner_deletion: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SpecView {
    #[serde(default)]
    pub containers: Vec<ContainerView>,
    pub init_containers: Option<Vec<ContainerView>>,
    /// Never injected into; read only for the Secrets they name.
    pub(crate) ephemeral_containers: Option<Vec<ContainerView>>,
    #[serde(serialize_with = "volumes_for_key")]
    pub volumes: Option<Vec<serde_json::Value>>,
    pub(crate) image_pull_secrets: Option<Vec<serde_json::Value>>,
    pub service_account_name: Option<String>,
}

/// Where the Pod (template) sits in each kind of object: the one table the
/// offline CLI and any server path that reads workloads share.
pub(crate) fn pod_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" | "ReplicationController" => {
            Some("/spec/template")
        }
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        "PodTemplate" => Some("/template"),
        _ => None,
    }
}

/// Every field of a Pod volume that names a Secret of the Pod's namespace
/// (`projected` sources are read apart). The webhook's `matchConditions`
/// (deploy/, the chart) list the same fields; tests/deploy checks both
/// against a real API server.
pub(crate) const VOLUME_SECRET_FIELDS: [&str; 10] = [
    "/secret/secretName",
    "/csi/nodePublishSecretRef/name",
    "/cephfs/secretRef/name",
    "/rbd/secretRef/name",
    "/iscsi/secretRef/name",
    "/flexVolume/secretRef/name",
    "/scaleIO/secretRef/name",
    "/storageos/secretRef/name",
    "/cinder/secretRef/name",
    "/azureFile/secretName",
];

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerView {
    #[serde(default)]
    pub name: String,
    pub env: Option<Vec<serde_json::Value>>,
    pub(crate) env_from: Option<Vec<serde_json::Value>>,
    pub volume_mounts: Option<Vec<MountView>>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MountView {
    #[serde(default, serialize_with = "name_for_key")]
    pub name: String,
    #[serde(default)]
    pub mount_path: String,
}

/// A volume or mount name in the memo key: Sesame's own as it is, any
/// other as one stand-in. The patch looks volumes up by Sesame's names and
/// mounts by path, so a name that is not Sesame's only ever decides a
/// conflict (a denial, never memoised).
fn key_name(name: &str) -> &str {
    if name.starts_with(MANAGED_PREFIX) {
        name
    } else {
        "*"
    }
}

fn name_for_key<S: Serializer>(name: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(key_name(name))
}

fn volumes_for_key<S: Serializer>(volumes: &Option<Vec<Value>>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::{SerializeMap, SerializeSeq};
    struct Volume<'a>(&'a Value);
    impl Serialize for Volume<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let Value::Object(fields) = self.0 else {
                return self.0.serialize(s);
            };
            let mut map = s.serialize_map(Some(fields.len()))?;
            for (k, v) in fields {
                match (k.as_str(), v) {
                    ("name", Value::String(name)) => map.serialize_entry(k, key_name(name))?,
                    _ => map.serialize_entry(k, v)?,
                }
            }
            map.end()
        }
    }
    let Some(volumes) = volumes else {
        return s.serialize_none();
    };
    let mut seq = s.serialize_seq(Some(volumes.len()))?;
    for v in volumes {
        seq.serialize_element(&Volume(v))?;
    }
    seq.end()
}

impl PodView {
    pub fn annotations(&self) -> impl Iterator<Item = (&String, &String)> {
        self.metadata.annotations.iter().flatten()
    }

    /// The name for logs: the name, or `generateName` followed by `*` for
    /// controller-created Pods, which have no name yet at admission.
    pub fn display_name(&self) -> String {
        match (&self.metadata.name, &self.metadata.generate_name) {
            (Some(n), _) if !n.is_empty() => n.clone(),
            (_, Some(g)) => format!("{g}*"),
            _ => String::from("(unnamed)"),
        }
    }

    /// The controller owner (ReplicaSet, StatefulSet, Job, ...), if any.
    pub fn controller(&self) -> Option<&OwnerReference> {
        self.metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
    }

    pub fn init_containers(&self) -> &[ContainerView] {
        self.spec.init_containers.as_deref().unwrap_or(&[])
    }

    /// Every Secret name starting with `prefix` that the Pod itself refers
    /// to: env `valueFrom.secretKeyRef` and `envFrom.secretRef` of every
    /// container (init and ephemeral too), every volume field that names a
    /// Secret (`secret`, `projected` sources, the volume plugins' secret
    /// references) and `imagePullSecrets`.
    pub fn secret_names_with_prefix(&self, prefix: &str) -> BTreeSet<String> {
        let mut out = self.ephemeral_secret_names_with_prefix(prefix);
        let mut add = |v: Option<&Value>| {
            if let Some(name) = v.and_then(Value::as_str).filter(|n| n.starts_with(prefix)) {
                out.insert(name.to_owned());
            }
        };
        for c in self.spec.containers.iter().chain(self.init_containers()) {
            container_secret_names(c, &mut add);
        }
        for v in self.spec.volumes.iter().flatten() {
            for field in VOLUME_SECRET_FIELDS {
                add(v.pointer(field));
            }
            let sources = v.pointer("/projected/sources").and_then(Value::as_array);
            for source in sources.into_iter().flatten() {
                add(source.pointer("/secret/name"));
            }
        }
        for s in self.spec.image_pull_secrets.iter().flatten() {
            add(s.pointer("/name"));
        }
        out
    }

    /// The Secret names starting with `prefix` that ephemeral containers
    /// refer to (env and `envFrom`: they cannot add volumes).
    pub(crate) fn ephemeral_secret_names_with_prefix(&self, prefix: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut add = |v: Option<&Value>| {
            if let Some(name) = v.and_then(Value::as_str).filter(|n| n.starts_with(prefix)) {
                out.insert(name.to_owned());
            }
        };
        for c in self.spec.ephemeral_containers.iter().flatten() {
            container_secret_names(c, &mut add);
        }
        out
    }
}

fn container_secret_names<'v>(c: &'v ContainerView, add: &mut impl FnMut(Option<&'v Value>)) {
    for e in c.env.iter().flatten() {
        add(e.pointer("/valueFrom/secretKeyRef/name"));
    }
    for e in c.env_from.iter().flatten() {
        add(e.pointer("/secretRef/name"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every workload kind with a Pod template, and nothing else.
    #[test]
    fn pod_pointer_finds_the_template_of_each_workload_kind() {
        assert_eq!(pod_pointer("Pod"), Some(""));
        for kind in ["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"] {
            assert_eq!(pod_pointer(kind), Some("/spec/template"), "{kind}");
        }
        assert_eq!(pod_pointer("CronJob"), Some("/spec/jobTemplate/spec/template"));
        assert_eq!(pod_pointer("ConfigMap"), None);
    }

    #[test]
    fn finds_managed_secret_names_everywhere_a_pod_can_use_a_secret() {
        let pod: PodView = serde_json::from_value(serde_json::json!({
            "spec": {
                "containers": [{
                    "name": "app",
                    "env": [
                        {"name": "A", "valueFrom": {"secretKeyRef": {"name": "sesame-env", "key": "k"}}},
                        {"name": "B", "valueFrom": {"secretKeyRef": {"name": "app-own", "key": "k"}}},
                        {"name": "C", "value": "sesame-literal"}
                    ],
                    "envFrom": [{"secretRef": {"name": "sesame-envfrom"}}]
                }],
                "initContainers": [{
                    "name": "init",
                    "env": [{"name": "D", "valueFrom": {"secretKeyRef": {"name": "sesame-init", "key": "k"}}}]
                }],
                "ephemeralContainers": [{
                    "name": "debug",
                    "env": [{"name": "E", "valueFrom": {"secretKeyRef": {"name": "sesame-debug", "key": "k"}}}],
                    "envFrom": [{"secretRef": {"name": "sesame-debug-from"}}]
                }],
                "imagePullSecrets": [{"name": "sesame-pull"}, {"name": "registry"}],
                "volumes": [
                    {"name": "sesame-vol", "emptyDir": {}},
                    {"name": "v1", "secret": {"secretName": "sesame-volume"}},
                    {"name": "v2", "projected": {"sources": [
                        {"configMap": {"name": "sesame-cm"}},
                        {"secret": {"name": "sesame-projected"}}
                    ]}},
                    {"name": "v3", "csi": {"driver": "d", "nodePublishSecretRef": {"name": "sesame-csi"}}},
                    {"name": "v4", "cephfs": {"monitors": ["m"], "secretRef": {"name": "sesame-cephfs"}}},
                    {"name": "v5", "rbd": {"monitors": ["m"], "image": "i", "secretRef": {"name": "sesame-rbd"}}},
                    {"name": "v6", "iscsi": {"targetPortal": "t", "iqn": "q", "lun": 0, "secretRef": {"name": "sesame-iscsi"}}},
                    {"name": "v7", "flexVolume": {"driver": "d", "secretRef": {"name": "sesame-flex"}}},
                    {"name": "v8", "scaleIO": {"gateway": "g", "system": "s", "secretRef": {"name": "sesame-scaleio"}}},
                    {"name": "v9", "storageos": {"secretRef": {"name": "sesame-storageos"}}},
                    {"name": "v10", "cinder": {"volumeID": "v", "secretRef": {"name": "sesame-cinder"}}},
                    {"name": "v11", "azureFile": {"secretName": "sesame-azurefile", "shareName": "s"}}
                ]
            }
        }))
        .unwrap();
        let names: Vec<String> = pod.secret_names_with_prefix("sesame-").into_iter().collect();
        assert_eq!(
            names,
            [
                "sesame-azurefile",
                "sesame-cephfs",
                "sesame-cinder",
                "sesame-csi",
                "sesame-debug",
                "sesame-debug-from",
                "sesame-env",
                "sesame-envfrom",
                "sesame-flex",
                "sesame-init",
                "sesame-iscsi",
                "sesame-projected",
                "sesame-pull",
                "sesame-rbd",
                "sesame-scaleio",
                "sesame-storageos",
                "sesame-volume"
            ]
        );
        let ephemeral: Vec<String> = pod
            .ephemeral_secret_names_with_prefix("sesame-")
            .into_iter()
            .collect();
        assert_eq!(ephemeral, ["sesame-debug", "sesame-debug-from"]);
    }
}
