//! The chart renders what the kustomize base does, object for object.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use serde_json::Value;

use crate::lookup::{kinds_and_names, one, webhooks};
use crate::render::{
    all_components, client_auth, helm, host_network, overlay, pod_identity, tools, HELM_CLIENT_AUTH,
};
use crate::NS;

#[test]
fn chart_matches_the_kustomize_base() {
    let Some((kubectl, helm_bin)) = tools() else {
        return;
    };
    let pairs = [
        (overlay(&kubectl, "self-managed"), helm(&helm_bin, &[])),
        (
            overlay(&kubectl, "cert-manager"),
            helm(&helm_bin, &["certificates.mode=cert-manager"]),
        ),
        (host_network(&kubectl), helm(&helm_bin, &["hostNetwork=true"])),
        (
            pod_identity(&kubectl),
            helm(&helm_bin, &["podIdentity.enabled=true"]),
        ),
        (client_auth(&kubectl), helm(&helm_bin, HELM_CLIENT_AUTH)),
    ];
    for (k, h) in &pairs {
        // The chart leaves the namespace to `helm install --create-namespace`.
        let mut k_names = kinds_and_names(k);
        k_names.remove(&("Namespace".to_owned(), NS.to_owned()));
        assert_eq!(k_names, kinds_and_names(h));
        let k_hooks = serde_json::to_value(webhooks(k)).unwrap();
        let h_hooks = serde_json::to_value(webhooks(h)).unwrap();
        assert_eq!(k_hooks, h_hooks, "webhook rules and settings");
        for kind in ["ClusterRole", "Role"] {
            let rules = |objs: &[Value]| -> BTreeMap<String, Value> {
                objs.iter()
                    .filter(|o| o["kind"] == kind)
                    .map(|o| {
                        (
                            o["metadata"]["name"].as_str().unwrap().to_owned(),
                            o["rules"].clone(),
                        )
                    })
                    .collect()
            };
            assert_eq!(rules(k), rules(h), "{kind} rules");
        }
        for kind in ["ValidatingAdmissionPolicy", "Certificate", "Issuer", "Service"] {
            // By name: the two renderers order objects of one kind differently.
            let specs = |objs: &[Value]| -> BTreeMap<String, Value> {
                objs.iter()
                    .filter(|o| o["kind"] == kind)
                    .map(|o| {
                        let mut s = o["spec"].clone();
                        s.as_object_mut().unwrap().remove("selector");
                        (o["metadata"]["name"].as_str().unwrap().to_owned(), s)
                    })
                    .collect()
            };
            assert_eq!(specs(k), specs(h), "{kind} specs");
        }
        let annotations = |objs: &[Value]| {
            one::<MutatingWebhookConfiguration>(objs, "MutatingWebhookConfiguration")
                .metadata
                .annotations
        };
        assert_eq!(
            annotations(k),
            annotations(h),
            "webhook annotations (CA injection)"
        );
        // The container is the same, and so are the volumes.
        let pod = |objs: &[Value]| {
            let d: Deployment = one(objs, "Deployment");
            d.spec.unwrap().template.spec.unwrap()
        };
        let (kp, hp) = (pod(k), pod(h));
        let mut kc = serde_json::to_value(&kp.containers).unwrap();
        let mut hc = serde_json::to_value(&hp.containers).unwrap();
        for c in [&mut kc, &mut hc] {
            c[0].as_object_mut().unwrap().remove("image");
            // The chart passes the log level explicitly.
            let args = c[0]["args"].as_array_mut().unwrap();
            args.retain(|a| !a.as_str().unwrap().starts_with("--log-level="));
        }
        assert_eq!(kc, hc, "container");
        // By name: a strategic-merge patch moves the patched volume first.
        let volumes = |p: &k8s_openapi::api::core::v1::PodSpec| -> BTreeMap<String, Value> {
            p.volumes
                .iter()
                .flatten()
                .map(|v| (v.name.clone(), serde_json::to_value(v).unwrap()))
                .collect()
        };
        assert_eq!(volumes(&kp), volumes(&hp), "volumes");
        assert_eq!(
            kp.termination_grace_period_seconds,
            hp.termination_grace_period_seconds
        );
        assert_eq!(kp.security_context, hp.security_context);
        assert_eq!(kp.node_selector, hp.node_selector);
        assert_eq!(
            kp.automount_service_account_token,
            hp.automount_service_account_token
        );
        assert_eq!(
            (kp.host_network, kp.dns_policy.as_deref()),
            (hp.host_network, hp.dns_policy.as_deref()),
            "host network"
        );
        let strategy = |objs: &[Value]| one::<Deployment>(objs, "Deployment").spec.unwrap().strategy;
        assert_eq!(strategy(k), strategy(h), "update strategy");
    }
}

/// The kustomize monitoring components carry what the chart renders with
/// `prometheusRule.enabled` and `grafanaDashboard.enabled`.
#[test]
fn monitoring_components_match_the_chart() {
    let Some((kubectl, helm_bin)) = tools() else {
        return;
    };
    let k = all_components(&kubectl);
    let h = helm(
        &helm_bin,
        &["prometheusRule.enabled=true", "grafanaDashboard.enabled=true"],
    );
    let spec = |objs: &[Value]| {
        objs.iter()
            .find(|o| o["kind"] == "PrometheusRule")
            .expect("a PrometheusRule")["spec"]
            .clone()
    };
    assert_eq!(spec(&k), spec(&h), "PrometheusRule rules");
    let dashboard = |objs: &[Value]| {
        objs.iter()
            .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "sesame-dashboard")
            .expect("the dashboard ConfigMap")["data"]
            .clone()
    };
    assert_eq!(dashboard(&k), dashboard(&h), "dashboard");
}
