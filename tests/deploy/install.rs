//! The whole install from deploy/, applied to a real API server and run as
//! its own ServiceAccount.

use std::path::PathBuf;

use clap::Parser as _;
use futures::FutureExt as _;
use serde_json::Value;

use crate::render::{kustomize_with, run};
use crate::schema::validate_all;
use crate::scratch::{marked, Scratch};
use crate::{MARKER, NS};

/// The flags `sesame serve` reads from the environment variable `env`.
pub(crate) fn flag_for_env(env: &str) -> Option<String> {
    use clap::CommandFactory;
    let cli = sesame::cli::Cli::command();
    let serve = cli.find_subcommand("serve").unwrap();
    let flag = serve
        .get_arguments()
        .chain(cli.get_arguments())
        .find(|a| a.get_env().is_some_and(|e| e == env))
        .map(|a| format!("--{}", a.get_long().unwrap()));
    flag
}

/// The whole install, as deploy/overlays/self-managed renders it, applied to
/// a real API server under a fresh namespace (set by kustomize's own
/// namespace transformer) and, for cluster-scoped objects, fresh names. The
/// Deployment's container is replaced by a Sesame started here on 127.0.0.1
/// (no container runtime runs here) with the Deployment's own arguments and
/// environment, authenticated as the install's ServiceAccount with a token
/// from the TokenRequest API, so that the installed RBAC is what lets it
/// work. The webhook's endpoint becomes `url: https://127.0.0.1:PORT/mutate`
/// and its namespace selectors are narrowed to one test namespace; the
/// caBundle is left to Sesame (self-managed certificates). Checks: the
/// server accepts every object (dry run, then for real), Sesame creates its
/// certificate Secret and writes the caBundle, and a Pod in the test
/// namespace is mutated end to end with a secret read by the `kubernetes`
/// store and written as a managed Secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installs_from_deploy_and_mutates_a_pod() {
    let Some(mut scratch) = Scratch::new("install") else {
        return;
    };
    let suffix = scratch.name.trim_start_matches("sesame-install-").to_owned();
    let install_ns = format!("sesame-inst-{suffix}");
    let objects = kustomize_with(
        &scratch.kubectl,
        &format!("install-{suffix}"),
        &format!("resources:\n  - {{root}}/deploy/overlays/self-managed\nnamespace: {install_ns}\n"),
    );
    validate_all("install render", &objects);

    // Fresh names for cluster-scoped objects, and every reference to them.
    let unique = |name: &str| format!("{name}-{suffix}");
    let webhook_name = unique("sesame");
    let only_test_ns =
        serde_json::json!({"key": "kubernetes.io/metadata.name", "operator": "In", "values": [scratch.name]});
    let mut namespace_obj = None;
    let mut rest = Vec::new();
    let mut container = None;
    let mut config_yaml = String::new();
    for mut o in objects {
        let kind = o["kind"].as_str().unwrap().to_owned();
        match kind.as_str() {
            "Namespace" => {
                o["metadata"]["name"] = Value::String(install_ns.clone());
                namespace_obj = Some(o);
                continue;
            }
            "ClusterRole" | "ClusterRoleBinding" | "ValidatingAdmissionPolicy" => {
                let name = o["metadata"]["name"].as_str().unwrap().to_owned();
                o["metadata"]["name"] = Value::String(unique(&name));
            }
            _ => {}
        }
        match kind.as_str() {
            "ClusterRole" => {
                for rule in o["rules"].as_array_mut().unwrap() {
                    if let Some(names) = rule["resourceNames"].as_array_mut() {
                        assert_eq!(names, &vec![Value::String("sesame".into())]);
                        *names = vec![Value::String(webhook_name.clone())];
                    }
                }
            }
            "ClusterRoleBinding" | "RoleBinding" => {
                if kind == "ClusterRoleBinding" {
                    let role = o["roleRef"]["name"].as_str().unwrap().to_owned();
                    o["roleRef"]["name"] = Value::String(unique(&role));
                }
                // kustomize's `namespace:` leaves binding subjects alone
                // (docs/install.md says to patch them when moving Sesame).
                assert_eq!(o["subjects"][0]["namespace"], NS);
                o["subjects"][0]["namespace"] = Value::String(install_ns.clone());
            }
            "MutatingWebhookConfiguration" => {
                o["metadata"]["name"] = Value::String(webhook_name.clone());
                for w in o["webhooks"].as_array_mut().unwrap() {
                    assert!(w["clientConfig"]["caBundle"].is_null());
                    w["clientConfig"] = serde_json::json!({"url": "https://127.0.0.1:1/mutate"});
                    w["namespaceSelector"]["matchExpressions"]
                        .as_array_mut()
                        .unwrap()
                        .push(only_test_ns.clone());
                }
            }
            "ValidatingAdmissionPolicyBinding" => {
                o["metadata"]["name"] = Value::String(unique("sesame-injection-guard"));
                o["spec"]["policyName"] = Value::String(unique("sesame-injection-guard"));
                o["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"]
                    .as_array_mut()
                    .unwrap()
                    .push(only_test_ns.clone());
            }
            "Deployment" => {
                let c = &mut o["spec"]["template"]["spec"]["containers"][0];
                for e in c["env"].as_array_mut().unwrap() {
                    if e["name"] == "SESAME_WEBHOOK_CONFIG" {
                        e["value"] = Value::String(webhook_name.clone());
                    }
                }
                container = Some(c.clone());
            }
            "ConfigMap" => {
                // The shipped configuration with a `kubernetes` store added:
                // Sesame reads the application's Secret with its own
                // ServiceAccount. In the ConfigMap too, which Sesame watches.
                let mut config: Value =
                    serde_norway::from_str(o["data"]["sesame.yaml"].as_str().unwrap()).unwrap();
                config["stores"] = serde_json::json!([{"name": "k8s", "kubernetes": {}}]);
                config["policy"]["rules"] = serde_json::json!([
                    {"name": "own", "namespaces": ["*"], "stores": ["k8s"], "paths": ["{namespace}/*"]}
                ]);
                config_yaml = serde_norway::to_string(&config).unwrap();
                o["data"]["sesame.yaml"] = Value::String(config_yaml.clone());
            }
            _ => {}
        }
        assert!(
            o["metadata"]["namespace"].is_null() || o["metadata"]["namespace"] == install_ns,
            "{kind} in {}",
            o["metadata"]["namespace"]
        );
        rest.push(o);
    }
    let container = container.expect("a Deployment");

    // The namespace first (the server dry-runs objects only into an existing
    // one), then every object as a dry run, then for real.
    scratch.install(vec![namespace_obj.expect("a Namespace")]);
    if let Err(stderr) = scratch.dry_run("install-all", rest.clone()) {
        panic!("dry run refused: {stderr}");
    }
    let sa = container_sa(&rest);
    scratch.install(rest);
    run(&mut scratch.kubectl(&[
        "get",
        &format!("mutatingwebhookconfiguration/{webhook_name}"),
        &format!("validatingadmissionpolicy/{}", unique("sesame-injection-guard")),
        &format!(
            "validatingadmissionpolicybinding/{}",
            unique("sesame-injection-guard")
        ),
    ]));

    // A kubeconfig for the install's ServiceAccount (TokenRequest API).
    let token = run(&mut scratch.kubectl(&["create", "token", &sa, "-n", &install_ns, "--duration=1h"]));
    let admin = serde_norway::from_str::<Value>(
        &std::fs::read_to_string(std::env::var("SESAME_E2E_KUBECONFIG").unwrap()).unwrap(),
    )
    .unwrap();
    let cluster = admin["clusters"][0]["cluster"].clone();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(&scratch.name);
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("sesame-sa.kubeconfig");
    std::fs::write(
        &kubeconfig,
        serde_json::json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "sa",
            "clusters": [{"name": "c", "cluster": cluster}],
            "users": [{"name": "sa", "user": {"token": token.trim()}}],
            "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa"}}],
        })
        .to_string(),
    )
    .unwrap();

    let config_file = dir.join("sesame.yaml");
    std::fs::write(&config_file, &config_yaml).unwrap();

    // The container's command, arguments and environment, with what must
    // differ on this machine: files, loopback ports, the kubeconfig.
    let command: Vec<String> = container["command"]
        .as_array()
        .expect("an explicit command")
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(command, ["/sesame", "serve"]);
    let mut argv = command;
    for a in container["args"].as_array().unwrap() {
        let a = a.as_str().unwrap();
        let local = match a.split_once('=').map(|(f, _)| f) {
            Some("--config") => format!("--config={}", config_file.display()),
            Some("--cert-dir") => format!("--cert-dir={}", dir.join("no-tls").display()),
            Some("--tls-port") => "--tls-port=0".into(),
            Some("--admin-port") => "--admin-port=0".into(),
            Some("--log-format") => "--log-format=text".into(),
            _ => a.to_owned(),
        };
        argv.push(local);
    }
    for e in container["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        let value = match (&e["value"], e["valueFrom"]["fieldRef"]["fieldPath"].as_str()) {
            (Value::String(v), _) => v.clone(),
            (_, Some("metadata.namespace")) => install_ns.clone(),
            (_, Some("metadata.name")) => continue, // the Lease identity; read from the env
            other => panic!("unexpected env {name}: {other:?}"),
        };
        let flag = flag_for_env(name).unwrap_or_else(|| panic!("{name} is not a flag of sesame serve"));
        argv.push(format!("{flag}={value}"));
    }
    argv.extend([
        "--bind-address=127.0.0.1".into(),
        "--kube=required".into(),
        format!("--kubeconfig={}", kubeconfig.display()),
        "--reload-interval=1s".into(),
    ]);
    let args = match sesame::cli::Cli::parse_from(&argv).command {
        sesame::cli::Command::Serve(a) => a,
        _ => unreachable!(),
    };
    assert_eq!(args.kube.certs.cert_mode, sesame::kube::CertMode::SelfManaged);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = sesame::run::start(&args).await.unwrap();
    let outcome =
        std::panic::AssertUnwindSafe(installed_checks(&scratch, &install_ns, &webhook_name, &server))
            .catch_unwind()
            .await;
    server.shutdown();
    server.wait().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// The ServiceAccount the rendered Deployment runs as.
pub(crate) fn container_sa(objects: &[Value]) -> String {
    let d = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
    d["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .unwrap()
        .to_owned()
}

pub(crate) async fn installed_checks(
    scratch: &Scratch,
    install_ns: &str,
    webhook_name: &str,
    server: &sesame::run::ServerHandle,
) {
    // Sesame made its certificate Secret and wrote the caBundle of every
    // webhook, all as the install's ServiceAccount.
    let secret: Value = serde_json::from_str(&run(&mut scratch.kubectl(&[
        "-n",
        install_ns,
        "get",
        "secret",
        "sesame-certs",
        "-o",
        "json",
    ])))
    .unwrap();
    let ca = secret["data"]["ca.crt"].as_str().unwrap().to_owned();
    let mwc: Value = serde_json::from_str(&run(&mut scratch.kubectl(&[
        "get",
        "mutatingwebhookconfiguration",
        webhook_name,
        "-o",
        "json",
        "--show-managed-fields",
    ])))
    .unwrap();
    for w in mwc["webhooks"].as_array().unwrap() {
        assert_eq!(
            w["clientConfig"]["caBundle"].as_str(),
            Some(ca.as_str()),
            "{}",
            w["name"]
        );
    }
    assert!(mwc["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["manager"] == sesame::kube::certs::FIELD_MANAGER));

    // The endpoint: this Sesame.
    run(scratch
        .kubectl(&["patch", "mutatingwebhookconfiguration", webhook_name, "--type=json", "-p"])
        .arg(
            Value::Array(
                (0..2)
                    .map(|i| serde_json::json!({"op": "replace", "path": format!("/webhooks/{i}/clientConfig/url"), "value": format!("https://127.0.0.1:{}/mutate", server.webhook_addr.port())}))
                    .collect(),
            )
            .to_string(),
        ));

    // The application's Secret, read by the `kubernetes` store.
    run(&mut scratch.kubectl(&[
        "-n",
        &scratch.name,
        "create",
        "secret",
        "generic",
        "app-db",
        "--from-literal=password=install-test-password",
    ]));
    let asks = serde_json::json!({"sesame.dev/env.DB_PASSWORD": "k8s:app-db#password"});
    let dry = scratch.eventually(&asks, |r| r.as_ref().is_ok_and(marked));
    let dry = dry.unwrap_or_else(|e| panic!("the installed webhook did not mutate: {e}"));
    assert!(marked(&dry));

    // For real: the Pod is stored mutated and its managed Secret exists.
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "app", "namespace": scratch.name, "annotations": asks},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]}
    });
    let file = scratch.file("app-pod", &pod);
    let created: Value =
        serde_json::from_str(&run(scratch.kubectl(&["create", "-o", "json", "-f"]).arg(&file))).unwrap();
    let env = &created["spec"]["containers"][0]["env"][0];
    assert_eq!(env["name"], "DB_PASSWORD", "{created}");
    let managed = env["valueFrom"]["secretKeyRef"]["name"].as_str().unwrap();
    assert_eq!(created["metadata"]["annotations"][MARKER], managed);
    let secret: Value = serde_json::from_str(&run(&mut scratch.kubectl(&[
        "-n",
        &scratch.name,
        "get",
        "secret",
        managed,
        "-o",
        "json",
    ])))
    .unwrap();
    assert_eq!(
        secret["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "sesame"
    );
    // Signed with the provenance key Sesame created in its own namespace,
    // as the install's ServiceAccount.
    assert!(
        secret["metadata"]["annotations"]["sesame.dev/provenance"]
            .as_str()
            .is_some_and(|m| m.starts_with("v1:1:")),
        "{secret}"
    );
    let keys: Value = serde_json::from_str(&run(&mut scratch.kubectl(&[
        "-n",
        install_ns,
        "get",
        "secret",
        "sesame-provenance",
        "-o",
        "json",
    ])))
    .unwrap();
    assert!(keys["data"]["key-1"].is_string(), "a key 1");
    let key = env["valueFrom"]["secretKeyRef"]["key"].as_str().unwrap();
    use base64::Engine as _;
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(secret["data"][key].as_str().unwrap())
            .unwrap(),
        b"install-test-password"
    );
    assert!(server.readiness.get(), "ready");
    // Leader election ran on the installed Role.
    let lease: Value = serde_json::from_str(&run(&mut scratch.kubectl(&[
        "-n",
        install_ns,
        "get",
        "lease",
        "sesame-leader",
        "-o",
        "json",
    ])))
    .unwrap();
    assert!(lease["spec"]["holderIdentity"].is_string(), "{lease}");
    // The alerts and the dashboard use what this Sesame exports, certificate
    // metrics included.
    crate::monitoring::check_scrape(&server.metrics.encode());

    // A change of the installed ConfigMap applies through the watch the
    // installed Role allows (the file here never changes): without the
    // rule, the same Pod is denied.
    let cm: Value = serde_json::from_str(&run(&mut scratch.kubectl(&[
        "-n",
        install_ns,
        "get",
        "configmap",
        "sesame-config",
        "-o",
        "json",
    ])))
    .unwrap();
    let mut config: Value = serde_norway::from_str(cm["data"]["sesame.yaml"].as_str().unwrap()).unwrap();
    config["policy"]["rules"] = serde_json::json!([]);
    let patch = serde_json::json!({"data": {"sesame.yaml": serde_norway::to_string(&config).unwrap()}});
    run(&mut scratch.kubectl(&[
        "-n",
        install_ns,
        "patch",
        "configmap",
        "sesame-config",
        "--type=merge",
        "-p",
        &patch.to_string(),
    ]));
    // (The dry run's Pod is named like the one created above: admitted, it
    // would fail with AlreadyExists instead.)
    let denied = scratch.eventually(&asks, |r| {
        r.as_ref().is_err_and(|e| e.contains("denied the request"))
    });
    let e = denied.expect_err("the ConfigMap's change never applied");
    assert!(e.contains("no policy rule lets namespace"), "{e}");
}
