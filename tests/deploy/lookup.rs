//! Finding objects and settings in a rendering.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::de::DeserializeOwned;
use serde_json::Value;

use sesame::config::Config;

pub(crate) fn kinds_and_names(objects: &[Value]) -> BTreeSet<(String, String)> {
    objects
        .iter()
        .map(|o| {
            (
                o["kind"].as_str().unwrap().to_owned(),
                o["metadata"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

pub(crate) fn one<T: DeserializeOwned>(objects: &[Value], kind: &str) -> T {
    let found: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind}, found {}", found.len());
    serde_json::from_value(found[0].clone()).unwrap()
}

/// The object of `kind` named `name`.
pub(crate) fn named<T: DeserializeOwned>(objects: &[Value], kind: &str, name: &str) -> T {
    let found = objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"));
    serde_json::from_value(found.clone()).unwrap()
}

pub(crate) fn has_kind(objects: &[Value], kind: &str) -> bool {
    objects.iter().any(|o| o["kind"] == kind)
}

/// Label-selector semantics (the subset Kubernetes defines for
/// matchLabels and the four operators), to check which namespaces match.
pub(crate) fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            other => panic!("unknown selector operator {other}"),
        }
    });
    labels_ok && exprs_ok
}

/// A namespace's labels as the API server sets them, plus `extra`.
pub(crate) fn namespace(name: &str, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    labels.insert("kubernetes.io/metadata.name".into(), name.into());
    labels
}

pub(crate) fn webhooks(objects: &[Value]) -> Vec<MutatingWebhook> {
    one::<MutatingWebhookConfiguration>(objects, "MutatingWebhookConfiguration")
        .webhooks
        .unwrap_or_default()
}

pub(crate) fn webhook<'a>(hooks: &'a [MutatingWebhook], name: &str) -> &'a MutatingWebhook {
    hooks
        .iter()
        .find(|w| w.name == name)
        .unwrap_or_else(|| panic!("no webhook {name}"))
}

/// The literal value of the Sesame container's environment variable `name`.
pub(crate) fn env_of(objects: &[Value], name: &str) -> String {
    let d: Deployment = one(objects, "Deployment");
    let container = d.spec.unwrap().template.spec.unwrap().containers.remove(0);
    container
        .env
        .unwrap_or_default()
        .into_iter()
        .find(|e| e.name == name)
        .and_then(|e| e.value)
        .unwrap_or_else(|| panic!("no {name} in the Deployment"))
}

/// The ConfigMap that holds Sesame's configuration file.
pub(crate) fn config_configmap(objects: &[Value]) -> ConfigMap {
    let found: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "ConfigMap" && o["data"]["sesame.yaml"].is_string())
        .collect();
    assert_eq!(found.len(), 1, "one ConfigMap with sesame.yaml");
    serde_json::from_value(found[0].clone()).unwrap()
}

pub(crate) fn configmap_config(objects: &[Value]) -> Config {
    let cm = config_configmap(objects);
    let text = cm
        .data
        .unwrap_or_default()
        .remove("sesame.yaml")
        .expect("sesame.yaml in the ConfigMap");
    Config::from_yaml(&text, "ConfigMap sesame.yaml").unwrap_or_else(|e| panic!("{e}"))
}
