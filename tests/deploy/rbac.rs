//! The RBAC is least privilege, and names what Sesame is told to use.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role};

use crate::lookup::{env_of, named, one};
use crate::render::{helm, overlay, pod_identity, tools};
use crate::NS;

#[test]
fn rbac_is_least_privilege() {
    let Some((kubectl, _)) = tools() else { return };
    let objects = overlay(&kubectl, "self-managed");
    let roles: Vec<ClusterRole> = objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRole")
        .map(|o| serde_json::from_value(o.clone()).unwrap())
        .collect();
    assert_eq!(roles.len(), 2);
    for rule in roles.into_iter().flat_map(|r| r.rules.unwrap_or_default()) {
        let verbs = rule.verbs.clone();
        assert!(
            !verbs
                .iter()
                .any(|v| v == "*" || v == "escalate" || v == "bind" || v == "impersonate"),
            "{rule:?}"
        );
        let resources = rule.resources.clone().unwrap_or_default();
        assert!(!resources.iter().any(|r| r == "*"), "{rule:?}");
        if resources.contains(&"mutatingwebhookconfigurations".to_string()) {
            assert_eq!(
                rule.resource_names,
                Some(vec!["sesame".to_string()]),
                "only its own webhook"
            );
        }
        if resources.contains(&"pods".to_string()) {
            assert_eq!(
                verbs,
                ["list"],
                "Pods are never read one by one, watched nor changed"
            );
        }
    }
    let role: Role = one(&objects, "Role");
    assert_eq!(role.metadata.namespace.as_deref(), Some(NS));
    for rule in role.rules.unwrap_or_default() {
        let resources = rule.resources.clone().unwrap_or_default();
        match resources.as_slice() {
            [r] if r == "leases" && rule.verbs.iter().any(|v| v != "create") => assert_eq!(
                rule.resource_names,
                Some(vec!["sesame-leader".to_string()]),
                "only the leader Lease is read and renewed"
            ),
            [r] if r == "leases" => {}
            [r] if r == "configmaps" => {
                assert_eq!(
                    rule.resource_names,
                    Some(vec![env_of(&objects, "SESAME_CONFIG_MAP")]),
                    "only the ConfigMap Sesame is told to watch"
                );
                assert_eq!(rule.verbs, ["list", "watch"], "watched, never changed");
            }
            other => panic!("unexpected rule for {other:?}"),
        }
    }
    let sa: ServiceAccount = one(&objects, "ServiceAccount");
    for name in ["sesame", "sesame-certificates"] {
        let binding: ClusterRoleBinding = named(&objects, "ClusterRoleBinding", name);
        assert_eq!(binding.role_ref.name, name);
        let subject = &binding.subjects.unwrap()[0];
        assert_eq!(
            (subject.name.as_str(), subject.namespace.as_deref()),
            (sa.metadata.name.as_deref().unwrap(), Some(NS))
        );
    }
    // Sesame is told the names its RBAC grants.
    assert_eq!(env_of(&objects, "SESAME_CERT_MODE"), "self-managed");
    assert_eq!(env_of(&objects, "SESAME_WEBHOOK_CONFIG"), "sesame");
    assert_eq!(env_of(&objects, "SESAME_CONFIG_MAP"), "sesame-config");
}

/// `identity: pod` needs `serviceaccounts/token` create, which lets Sesame
/// act as any ServiceAccount it may make tokens for: it is opt-in, grants
/// nothing else, and the chart scopes it to namespaces and names.
#[test]
fn pod_identity_rbac_is_opt_in_and_scoped() {
    let Some((kubectl, helm_bin)) = tools() else {
        return;
    };
    let grants_tokens = |objects: &[serde_json::Value]| {
        objects.iter().any(|o| {
            o["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["resources"].to_string().contains("serviceaccounts"))
        })
    };
    assert!(!grants_tokens(&overlay(&kubectl, "self-managed")));
    assert!(!grants_tokens(&helm(&helm_bin, &[])));

    let objects = pod_identity(&kubectl);
    let role: ClusterRole = named(&objects, "ClusterRole", "sesame-pod-identity");
    let rules = role.rules.unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].resources.as_deref(),
        Some(&["serviceaccounts/token".to_owned()][..])
    );
    assert_eq!(rules[0].verbs, ["create"]);
    let binding: ClusterRoleBinding = named(&objects, "ClusterRoleBinding", "sesame-pod-identity");
    assert_eq!(binding.subjects.unwrap()[0].name, "sesame");

    // Scoped: a RoleBinding per namespace, no ClusterRoleBinding, and the
    // named ServiceAccounts only.
    let scoped = helm(
        &helm_bin,
        &[
            "podIdentity.enabled=true",
            "podIdentity.namespaces={team-a,team-b}",
            "podIdentity.serviceAccounts={app}",
        ],
    );
    assert!(!scoped
        .iter()
        .any(|o| o["kind"] == "ClusterRoleBinding" && o["metadata"]["name"] == "sesame-pod-identity"));
    let mut namespaces: Vec<String> = scoped
        .iter()
        .filter(|o| o["kind"] == "RoleBinding" && o["metadata"]["name"] == "sesame-pod-identity")
        .map(|o| o["metadata"]["namespace"].as_str().unwrap().to_owned())
        .collect();
    namespaces.sort();
    assert_eq!(namespaces, ["team-a", "team-b"]);
    let role: ClusterRole = named(&scoped, "ClusterRole", "sesame-pod-identity");
    assert_eq!(
        role.rules.unwrap()[0].resource_names,
        Some(vec!["app".to_owned()])
    );
}
