//! Every rendered object against the Kubernetes schema: a strict round trip
//! through the typed `k8s-openapi` structs (and strict structs for the CRDs),
//! the renders it judges, and the values the chart refuses.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::lookup::{has_kind, kinds_and_names, one};
use crate::render::{
    all_components, client_auth, helm, helm_command, helm_non_default, host_network, kustomize, overlay,
    root, run, tools, HELM_CLIENT_AUTH_BUNDLE, HELM_HOST_NETWORK, HELM_NON_DEFAULT, HELM_NO_FIXED_IDS,
    HELM_PLATFORM_VALUES,
};
use crate::NS;

/// Deserializes `obj` into `T` and serializes it back: a field `T` does not
/// know (a typo, a wrong nesting) is missing from the round trip, and a value
/// of the wrong type fails to deserialize.
pub(crate) fn strict<T: DeserializeOwned + Serialize>(obj: &Value) -> Result<T, String> {
    let typed: T = serde_json::from_value(obj.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut problems = Vec::new();
    diff(obj, &back, String::new(), &mut problems);
    if problems.is_empty() {
        Ok(typed)
    } else {
        Err(problems.join("; "))
    }
}

pub(crate) fn diff(rendered: &Value, typed: &Value, path: String, out: &mut Vec<String>) {
    match (rendered, typed) {
        (Value::Object(r), Value::Object(t)) => {
            for (k, v) in r {
                let p = format!("{path}.{k}");
                match t.get(k) {
                    None if v.is_null() => out.push(format!("{p}: null value")),
                    None => out.push(format!("{p}: unknown field")),
                    Some(tv) => diff(v, tv, p, out),
                }
            }
        }
        (Value::Array(r), Value::Array(t)) if r.len() == t.len() => {
            for (i, (rv, tv)) in r.iter().zip(t).enumerate() {
                diff(rv, tv, format!("{path}[{i}]"), out);
            }
        }
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        (a, b) if a == b => {}
        (a, b) => out.push(format!("{path}: rendered {a}, schema gives {b}")),
    }
}

// The CRDs below are not in k8s-openapi: strict structs for the fields the
// manifests use, following the CRD references (monitoring.coreos.com/v1
// ServiceMonitor of the Prometheus Operator API docs; cert-manager.io/v1
// Issuer and Certificate of the cert-manager API reference).

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct CustomObject<S> {
    pub(crate) api_version: String,
    pub(crate) kind: String,
    pub(crate) metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    pub(crate) spec: S,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct ServiceMonitorSpec {
    selector: LabelSelector,
    endpoints: Vec<ServiceMonitorEndpoint>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct ServiceMonitorEndpoint {
    port: String,
    path: String,
    interval: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct IssuerSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    self_signed: Option<BTreeMap<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ca: Option<CaIssuer>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct CaIssuer {
    secret_name: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct CertificateSpec {
    secret_name: String,
    #[serde(rename = "isCA", skip_serializing_if = "Option::is_none")]
    is_ca: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    common_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dns_names: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    renew_before: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usages: Option<Vec<String>>,
    private_key: CertificatePrivateKey,
    issuer_ref: IssuerRef,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct CertificatePrivateKey {
    algorithm: String,
    size: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rotation_policy: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct IssuerRef {
    kind: String,
    name: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct PrometheusRuleSpec {
    pub(crate) groups: Vec<RuleGroup>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RuleGroup {
    pub(crate) name: String,
    pub(crate) rules: Vec<Rule>,
}

/// An alerting rule (monitoring.coreos.com/v1 PrometheusRule, Prometheus
/// Operator API reference: `alert`, `expr`, `for`, `labels`, `annotations`).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct Rule {
    pub(crate) alert: String,
    pub(crate) expr: String,
    #[serde(rename = "for", skip_serializing_if = "Option::is_none")]
    pub(crate) for_: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) annotations: BTreeMap<String, String>,
}

pub(crate) fn custom<S: DeserializeOwned + Serialize>(obj: &Value, api_version: &str) -> Result<(), String> {
    let typed: CustomObject<S> = strict(obj)?;
    if typed.api_version != api_version {
        return Err(format!("apiVersion {} is not {api_version}", typed.api_version));
    }
    Ok(())
}

/// Validates one rendered object against the schema of its kind; an object
/// of a kind the manifests are not expected to hold fails.
pub(crate) fn validate(obj: &Value) -> Result<(), String> {
    let kind = obj["kind"].as_str().unwrap_or_default();
    match kind {
        "Namespace" => strict::<Namespace>(obj).map(drop),
        "ServiceAccount" => strict::<ServiceAccount>(obj).map(drop),
        "ClusterRole" => strict::<ClusterRole>(obj).map(drop),
        "ClusterRoleBinding" => strict::<ClusterRoleBinding>(obj).map(drop),
        "Role" => strict::<Role>(obj).map(drop),
        "RoleBinding" => strict::<RoleBinding>(obj).map(drop),
        "ConfigMap" => strict::<ConfigMap>(obj).map(drop),
        "Service" => strict::<Service>(obj).map(drop),
        "Deployment" => strict::<Deployment>(obj).map(drop),
        "PodDisruptionBudget" => strict::<PodDisruptionBudget>(obj).map(drop),
        "MutatingWebhookConfiguration" => strict::<MutatingWebhookConfiguration>(obj).map(drop),
        "ValidatingWebhookConfiguration" => strict::<ValidatingWebhookConfiguration>(obj).map(drop),
        "ValidatingAdmissionPolicy" => strict::<ValidatingAdmissionPolicy>(obj).map(drop),
        "ValidatingAdmissionPolicyBinding" => strict::<ValidatingAdmissionPolicyBinding>(obj).map(drop),
        "NetworkPolicy" => strict::<NetworkPolicy>(obj).map(drop),
        "ServiceMonitor" => custom::<ServiceMonitorSpec>(obj, "monitoring.coreos.com/v1"),
        "PrometheusRule" => custom::<PrometheusRuleSpec>(obj, "monitoring.coreos.com/v1"),
        "Issuer" => custom::<IssuerSpec>(obj, "cert-manager.io/v1"),
        "Certificate" => custom::<CertificateSpec>(obj, "cert-manager.io/v1"),
        other => Err(format!("no schema for kind {other:?}")),
    }
}

pub(crate) fn validate_all(what: &str, objects: &[Value]) {
    assert!(!objects.is_empty(), "{what}: rendered nothing");
    let problems: Vec<String> = objects
        .iter()
        .filter_map(|o| {
            validate(o)
                .err()
                .map(|e| format!("{} {}: {e}", o["kind"], o["metadata"]["name"]))
        })
        .collect();
    assert!(problems.is_empty(), "{what}:\n{}", problems.join("\n"));
}

/// Kinds without a namespace.
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
];

/// Every namespaced object of a kustomize rendering is in `NS` (objects of a
/// component are not under the base's `namespace:` and must say it).
fn all_in_namespace(what: &str, objects: &[Value]) {
    for o in objects {
        let kind = o["kind"].as_str().unwrap_or_default();
        // kustomize's namespace transformer does not know that the admission
        // policy kinds are cluster-scoped and sets theirs; the API server
        // ignores it there.
        if !CLUSTER_SCOPED.contains(&kind) {
            assert_eq!(
                o["metadata"]["namespace"], NS,
                "{what}: {kind} {} must be in {NS}",
                o["metadata"]["name"]
            );
        }
    }
}

fn set_of(pairs: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    pairs
        .iter()
        .map(|(k, n)| (k.to_string(), n.to_string()))
        .collect()
}

#[test]
fn kustomize_renders_schema_valid_objects() {
    let Some((kubectl, _)) = tools() else { return };
    let base = kustomize(&kubectl, &root().join("deploy/base"));
    let expected = set_of(&[
        ("Namespace", NS),
        ("ServiceAccount", "sesame"),
        ("ClusterRole", "sesame"),
        ("ClusterRoleBinding", "sesame"),
        ("ClusterRole", "sesame-certificates"),
        ("ClusterRoleBinding", "sesame-certificates"),
        ("Role", "sesame"),
        ("RoleBinding", "sesame"),
        ("ConfigMap", "sesame-config"),
        ("Service", "sesame"),
        ("Deployment", "sesame"),
        ("PodDisruptionBudget", "sesame"),
        ("MutatingWebhookConfiguration", "sesame"),
        ("ValidatingWebhookConfiguration", "sesame"),
        ("ValidatingAdmissionPolicy", "sesame-injection-guard"),
        ("ValidatingAdmissionPolicyBinding", "sesame-injection-guard"),
    ]);
    assert_eq!(kinds_and_names(&base), expected);
    all_in_namespace("base", &base);
    validate_all("base", &base);

    let self_managed = overlay(&kubectl, "self-managed");
    assert_eq!(kinds_and_names(&self_managed), expected);
    validate_all("overlays/self-managed", &self_managed);

    let cm = overlay(&kubectl, "cert-manager");
    let extra: BTreeSet<_> = kinds_and_names(&cm).difference(&expected).cloned().collect();
    let missing: BTreeSet<_> = expected.difference(&kinds_and_names(&cm)).cloned().collect();
    assert_eq!(
        missing,
        set_of(&[
            ("ClusterRole", "sesame-certificates"),
            ("ClusterRoleBinding", "sesame-certificates"),
        ]),
        "cert-manager drops the certificate RBAC"
    );
    assert_eq!(
        extra,
        set_of(&[
            ("Issuer", "sesame-selfsigned"),
            ("Issuer", "sesame-ca"),
            ("Certificate", "sesame-ca"),
            ("Certificate", "sesame-tls"),
        ])
    );
    all_in_namespace("overlays/cert-manager", &cm);
    validate_all("overlays/cert-manager", &cm);

    let all = all_components(&kubectl);
    let extra: BTreeSet<_> = kinds_and_names(&all).difference(&expected).cloned().collect();
    assert_eq!(
        extra,
        set_of(&[
            ("ServiceMonitor", "sesame"),
            ("PrometheusRule", "sesame"),
            ("ConfigMap", "sesame-dashboard"),
            ("NetworkPolicy", "sesame"),
        ])
    );
    all_in_namespace("all components", &all);
    validate_all("all components", &all);

    let host = host_network(&kubectl);
    assert_eq!(kinds_and_names(&host), expected);
    all_in_namespace("host-network", &host);
    validate_all("host-network", &host);

    // The ConfigMap with the CA bundle is the platform's: not rendered.
    let client = client_auth(&kubectl);
    assert_eq!(kinds_and_names(&client), expected);
    all_in_namespace("client-auth", &client);
    validate_all("client-auth", &client);
}

#[test]
fn helm_chart_renders_schema_valid_objects_and_lints_clean() {
    let Some((_, helm_bin)) = tools() else { return };
    for (values, set) in [
        ("", &[][..]),
        (HELM_PLATFORM_VALUES, HELM_NON_DEFAULT),
        ("", HELM_HOST_NETWORK),
        ("", HELM_CLIENT_AUTH_BUNDLE),
    ] {
        let lint = run(helm_command(&helm_bin, "lint", values, set).arg("--strict"));
        assert!(lint.contains("0 chart(s) failed"), "{set:?}: {lint}");
    }

    let default = helm(&helm_bin, &[]);
    validate_all("helm defaults", &default);
    for kind in ["ServiceMonitor", "PrometheusRule", "NetworkPolicy", "Certificate"] {
        assert!(!has_kind(&default, kind), "{kind} is off by default");
    }
    assert_eq!(
        default.iter().filter(|o| o["kind"] == "ConfigMap").count(),
        1,
        "no dashboard by default"
    );

    let custom = helm_non_default(&helm_bin);
    validate_all("helm non-default values", &custom);
    for kind in [
        "ServiceMonitor",
        "PrometheusRule",
        "NetworkPolicy",
        "Certificate",
        "Issuer",
    ] {
        assert!(has_kind(&custom, kind), "{kind} rendered");
    }
    let d: Deployment = one(&custom, "Deployment");
    let pod = d.spec.unwrap().template.spec.unwrap();
    assert!(pod.containers[0]
        .image
        .as_deref()
        .unwrap()
        .starts_with("sesame@sha256:"));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-cluster-critical")
    );

    for (what, set) in [
        ("host network", HELM_HOST_NETWORK),
        ("no fixed IDs", HELM_NO_FIXED_IDS),
        ("client auth", HELM_CLIENT_AUTH_BUNDLE),
        (
            "existing ServiceAccount",
            &[
                "serviceAccount.create=false",
                "serviceAccount.name=platform-sesame",
            ][..],
        ),
    ] {
        validate_all(&format!("helm {what}"), &helm(&helm_bin, set));
    }

    let no_guard = helm(&helm_bin, &["guard.enabled=false", "replicas=1"]);
    validate_all("helm without guard", &no_guard);
    assert!(
        !has_kind(&no_guard, "ValidatingAdmissionPolicy")
            && !has_kind(&no_guard, "ValidatingAdmissionPolicyBinding")
    );
    assert!(
        !has_kind(&no_guard, "PodDisruptionBudget"),
        "no PDB for one replica: it would block every drain"
    );
}

/// The render of `set` (and `values`) fails; its error output.
fn refused(helm_bin: &std::path::Path, values: &str, set: &[&str], skip_schema: bool) -> String {
    let mut cmd = helm_command(helm_bin, "template", values, set);
    if skip_schema {
        cmd.arg("--skip-schema-validation");
    }
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "{values} {set:?} must fail the render");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn helm_rejects_values_that_would_break_the_webhook() {
    let Some((_, helm_bin)) = tools() else { return };
    // values.schema.json: wrong values and misspelt keys.
    for (set, message) in [
        (
            "webhook.timeoutSeconds=31",
            "'/webhook/timeoutSeconds': maximum: got 31, want 30",
        ),
        (
            "webhook.timeoutSeconds=0",
            "'/webhook/timeoutSeconds': minimum: got 0, want 1",
        ),
        (
            "webhook.failurePolicy=Sometimes",
            "'/webhook/failurePolicy': value must be one of",
        ),
        (
            "certificates.mode=manual",
            "'/certificates/mode': value must be one of",
        ),
        (
            "webhook.timeoutSecond=3",
            "additional properties 'timeoutSecond' not allowed",
        ),
        ("logFormat=xml", "'/logFormat': value must be one of"),
        ("hostNetwork=yes", "'/hostNetwork': got string, want boolean"),
        (
            "ports.webhook=70000",
            "'/ports/webhook': maximum: got 70,000, want 65,535",
        ),
        ("ports.admin=0", "'/ports/admin': minimum: got 0, want 1"),
        (
            "ports.metrics=9090",
            "additional properties 'metrics' not allowed",
        ),
        (
            "serviceAccount.name=Not_A_Name",
            "'/serviceAccount/name': 'Not_A_Name' does not match pattern",
        ),
        (
            "serviceAccount.annotation.x=y",
            "additional properties 'annotation' not allowed",
        ),
        (
            "extraArgs={serve}",
            "'/extraArgs/0': 'serve' does not match pattern",
        ),
        ("extraEnv[0].value=x", "'/extraEnv/0': missing property 'name'"),
        (
            "extraVolumes[0].emptyDir.medium=Memory",
            "'/extraVolumes/0': missing property 'name'",
        ),
        (
            "extraVolumeMounts[0].name=ca",
            "'/extraVolumeMounts/0': missing property 'mountPath'",
        ),
        (
            "extraVolumeMounts[0].name=ca,extraVolumeMounts[0].mountPath=relative",
            "'/extraVolumeMounts/0/mountPath': 'relative' does not match pattern",
        ),
        (
            "nodeSelector.zone=1",
            "'/nodeSelector/zone': got number, want string",
        ),
        (
            "prometheusRule.enable=true",
            "additional properties 'enable' not allowed",
        ),
        (
            "prometheusRule.certificateExpiryDays=0",
            "'/prometheusRule/certificateExpiryDays': minimum: got 0, want 1",
        ),
        (
            "grafanaDashboard.labels.grafana_dashboard=1",
            "'/grafanaDashboard/labels/grafana_dashboard': got number, want string",
        ),
        (
            "clientAuth.existingConfigMap=Not_A_Name",
            "'/clientAuth/existingConfigMap': 'Not_A_Name' does not match pattern",
        ),
        (
            "clientAuth.caFile=ca.crt",
            "additional properties 'caFile' not allowed",
        ),
        (
            "updateStrategy.type=BlueGreen",
            "'/updateStrategy/type': value must be one of",
        ),
    ] {
        let stderr = refused(&helm_bin, "", &[set], false);
        assert!(stderr.contains(message), "{set}: {stderr}");
    }
    // The templates check again, for renders that skip the schema, and check
    // what a schema cannot: values against each other.
    for (set, message) in [
        (
            &["webhook.timeoutSeconds=31"][..],
            "timeoutSeconds must be between 1 and 30",
        ),
        (
            &["webhook.failurePolicy=Sometimes"],
            "failurePolicy must be Fail or Ignore",
        ),
        (&["certificates.mode=manual"], "certificates.mode must be"),
        (
            &["networkPolicy.enabled=true"],
            "needs networkPolicy.apiServerCIDRs",
        ),
        (
            &["serviceAccount.create=false"],
            "serviceAccount.create=false needs serviceAccount.name",
        ),
        (
            &["ports.webhook=9000", "ports.admin=9000"],
            "ports.webhook and ports.admin must differ",
        ),
        (
            &["clientAuth.enabled=true"],
            "clientAuth.enabled needs clientAuth.caBundle or clientAuth.existingConfigMap",
        ),
        (
            &[
                "clientAuth.enabled=true",
                "clientAuth.caBundle=x",
                "clientAuth.existingConfigMap=mine",
            ],
            "clientAuth.caBundle and clientAuth.existingConfigMap exclude each other",
        ),
    ] {
        let stderr = refused(&helm_bin, "", set, true);
        assert!(stderr.contains(message), "{set:?}: {stderr}");
    }
    // Sesame's store budget must end before the API server gives up.
    for (set, message) in [
        (
            &["config.resolveTimeout=5s"][..],
            "config.resolveTimeout (5s) must be below webhook.timeoutSeconds (5 s)",
        ),
        (
            &["config.resolveTimeout=9000ms", "webhook.timeoutSeconds=8"],
            "config.resolveTimeout (9000ms) must be below webhook.timeoutSeconds (8 s)",
        ),
    ] {
        let stderr = refused(&helm_bin, "", set, false);
        assert!(stderr.contains(message), "{set:?}: {stderr}");
    }
    // and the same values pass once the webhook waits longer.
    validate_all(
        "resolveTimeout 9s, timeoutSeconds 30",
        &helm(
            &helm_bin,
            &["config.resolveTimeout=9s", "webhook.timeoutSeconds=30"],
        ),
    );
}
