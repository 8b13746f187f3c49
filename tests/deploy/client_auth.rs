//! The client-certificate set-up of docs/install.md ("Client certificate"):
//! its AdmissionConfiguration and kubeconfig blocks (marked
//! `<!-- client-auth: NAME -->` before their fence) are read as the API
//! server reads them, and must name what the manifests install: the
//! webhook's Service host and the files the component and the chart mount.
//! (Starting a second kube-apiserver with them is too heavy for this suite;
//! `tests/e2e_kube.rs`, `with_client_auth_the_api_server_is_served_and_nobody_else`,
//! runs against one started so.)

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use serde_json::Value;

use crate::lookup::{env_of, named, one};
use crate::render::{client_auth, helm, root, tools, HELM_CLIENT_AUTH};
use crate::NS;

/// The YAML blocks of docs/install.md marked `<!-- client-auth: NAME -->`.
fn blocks() -> BTreeMap<String, Value> {
    let text = std::fs::read_to_string(root().join("docs/install.md")).unwrap();
    let mut out = BTreeMap::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .trim()
            .strip_prefix("<!-- client-auth: ")
            .and_then(|l| l.strip_suffix(" -->"))
        else {
            continue;
        };
        assert_eq!(
            lines.next().map(str::trim),
            Some("```yaml"),
            "{name}: a yaml fence follows"
        );
        let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        let parsed: Value = serde_norway::from_str(&body.join("\n"))
            .unwrap_or_else(|e| panic!("the block {name} is not YAML: {e}"));
        assert!(
            out.insert(name.to_owned(), parsed).is_none(),
            "two blocks named {name}"
        );
    }
    out
}

fn block<'a>(blocks: &'a BTreeMap<String, Value>, name: &str) -> &'a Value {
    blocks
        .get(name)
        .unwrap_or_else(|| panic!("docs/install.md has no block <!-- client-auth: {name} -->"))
}

#[test]
fn the_documented_admission_configuration_gives_the_mutating_plugin_the_kubeconfig() {
    let blocks = blocks();
    let admission = block(&blocks, "admission-configuration");
    assert_eq!(admission["apiVersion"], "apiserver.config.k8s.io/v1");
    assert_eq!(admission["kind"], "AdmissionConfiguration");
    let plugins = admission["plugins"].as_array().expect("plugins");
    let mutating: Vec<&Value> = plugins
        .iter()
        .filter(|p| p["name"] == "MutatingAdmissionWebhook")
        .collect();
    assert_eq!(mutating.len(), 1, "one entry for the mutating webhook plugin");
    let config = &mutating[0]["configuration"];
    assert_eq!(config["apiVersion"], "apiserver.config.k8s.io/v1");
    // The API server accepts both kind names for this type.
    assert!(
        config["kind"] == "WebhookAdmissionConfiguration" || config["kind"] == "WebhookAdmission",
        "{config}"
    );
    let kubeconfig_file = config["kubeConfigFile"].as_str().expect("kubeConfigFile");
    assert!(
        kubeconfig_file.starts_with('/'),
        "the API server needs an absolute path"
    );

    let kubeconfig = block(&blocks, "kubeconfig");
    assert_eq!(kubeconfig["apiVersion"], "v1");
    assert_eq!(kubeconfig["kind"], "Config");
    let users = kubeconfig["users"].as_array().expect("users");
    assert_eq!(users.len(), 1, "one user: Sesame's webhook alone");
    let user = &users[0]["user"];
    for (file, data) in [
        ("client-certificate", "client-certificate-data"),
        ("client-key", "client-key-data"),
    ] {
        assert!(
            user[file].is_string() || user[data].is_string(),
            "the user presents {file}: {user}"
        );
    }
    let name = users[0]["name"].as_str().expect("a user name");
    assert_ne!(name, "*", "a wildcard hands the certificate to every webhook");
}

/// The kubeconfig's user is the host the API server calls for the installed
/// webhook: `<service>.<namespace>.svc` (port 443, so no `:port`), in both
/// renderings; and the documented ConfigMap is what the component mounts.
#[test]
fn the_documented_user_is_the_installed_webhooks_service_host() {
    let Some((kubectl, helm_bin)) = tools() else {
        return;
    };
    let blocks = blocks();
    let user = block(&blocks, "kubeconfig")["users"][0]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    for (what, objects) in [
        ("kustomize client-auth", client_auth(&kubectl)),
        ("helm client auth", helm(&helm_bin, HELM_CLIENT_AUTH)),
    ] {
        let hooks = crate::lookup::webhooks(&objects);
        assert!(!hooks.is_empty(), "{what}");
        for hook in &hooks {
            let service = hook
                .client_config
                .service
                .as_ref()
                .unwrap_or_else(|| panic!("{what}: {} is called through a Service", hook.name));
            let port = service.port.unwrap_or(443);
            let host = format!("{}.{}.svc", service.name, service.namespace);
            let expected = if port == 443 {
                host.clone()
            } else {
                format!("{host}:{port}")
            };
            assert_eq!(user, expected, "{what}: webhook {}", hook.name);
            // The Service exists, in Sesame's namespace, and serves that port.
            let s: Service = named(&objects, "Service", &service.name);
            assert_eq!(s.metadata.namespace.as_deref(), Some(NS), "{what}");
            assert!(
                s.spec
                    .unwrap()
                    .ports
                    .unwrap_or_default()
                    .iter()
                    .any(|p| p.port == port),
                "{what}: the Service serves port {port}"
            );
        }
        let file = env_of(&objects, "SESAME_CLIENT_CA_FILE");
        let text = std::fs::read_to_string(root().join("docs/install.md")).unwrap();
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let d: Deployment = one(&objects, "Deployment");
        let pod = d.spec.unwrap().template.spec.unwrap();
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "client-ca")
            .unwrap_or_else(|| panic!("{what}: the client-ca volume"));
        let cm = volume.config_map.as_ref().unwrap();
        for documented in [
            format!("`{}`, key `ca.crt`", cm.name),
            format!("mounted at `{}`", file.trim_end_matches("/ca.crt")),
        ] {
            assert!(
                text.contains(&documented),
                "{what}: docs/install.md must say {documented}"
            );
        }
    }
}
