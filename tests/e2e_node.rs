//! End to end on a real node: Sesame installed from deploy/ as real Pods
//! (Helm, then the kustomize self-managed overlay), and app Pods that really
//! start and read what Sesame injected. Runs when
//! `SESAME_E2E_NODE_KUBECONFIG` names the kubeconfig of a cluster with nodes
//! (the one-node cluster of `shared/tools/kube/node`, see docs/e2e.md);
//! otherwise prints one line and passes as skipped.
//!
//! The image: `SESAME_E2E_NODE_IMAGE` (`name:tag`, already on the node, e.g.
//! made by the node harness's `image.sh target/release/sesame sesame:dev`),
//! or `SESAME_E2E_NODE_IMAGE_SH` (that `image.sh`), which the suite runs on
//! `target/release/sesame` (build it first). The app image:
//! `SESAME_E2E_NODE_BUSYBOX` (default: the node harness's busybox).
//!
//! It takes over the namespaces `sesame-system`, `team-a` and `team-b` and
//! the cluster-scoped objects named `sesame*`: use a cluster of its own.
//! Covered so far, per install method (issue 13's suite, items 1, 2, 4 and 7):
//! install to two Ready replicas with self-managed certificates and the
//! caBundle written; an app Deployment whose container prints the injected
//! env and file values, with no value in its Pod spec; the FailedCreate event
//! of a Deployment that reads outside its subtree; and what an uninstall
//! leaves, as docs/install.md says.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

const NS: &str = "sesame-system";

struct Node {
    kubeconfig: PathBuf,
    kubectl: PathBuf,
    helm: PathBuf,
    image: (String, String),
    busybox: String,
    dir: PathBuf,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A tool from the node harness's `bin/` beside the kubeconfig's `run/`,
/// .tools/bin or PATH.
fn tool(kubeconfig: &Path, name: &str) -> PathBuf {
    let mut dirs = vec![kubeconfig
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("bin"))
        .unwrap_or_default()];
    dirs.push(root().join(".tools/bin"));
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found"))
}

impl Node {
    fn new() -> Option<Self> {
        let Some(kubeconfig) = std::env::var_os("SESAME_E2E_NODE_KUBECONFIG").map(PathBuf::from) else {
            println!("skipped: set SESAME_E2E_NODE_KUBECONFIG to a cluster with nodes to run the real-node suite (docs/e2e.md)");
            return None;
        };
        let image = match (
            std::env::var("SESAME_E2E_NODE_IMAGE"),
            std::env::var_os("SESAME_E2E_NODE_IMAGE_SH"),
        ) {
            (Ok(image), _) => image,
            (Err(_), Some(image_sh)) => {
                let bin = root().join("target/release/sesame");
                assert!(
                    bin.is_file(),
                    "{} missing: cargo build --release first",
                    bin.display()
                );
                let out = Command::new(image_sh)
                    .arg(&bin)
                    .arg("sesame:e2e")
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "image.sh: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                "sesame:e2e".to_owned()
            }
            _ => panic!("set SESAME_E2E_NODE_IMAGE or SESAME_E2E_NODE_IMAGE_SH"),
        };
        let (name, tag) = image.rsplit_once(':').expect("image as name:tag");
        let busybox = std::env::var("SESAME_E2E_NODE_BUSYBOX")
            .unwrap_or_else(|_| "localhost/kube-node/busybox:1.35.0".to_owned());
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-node");
        std::fs::create_dir_all(&dir).unwrap();
        Some(Self {
            kubectl: tool(&kubeconfig, "kubectl"),
            helm: tool(&kubeconfig, "helm"),
            kubeconfig,
            image: (name.to_owned(), tag.to_owned()),
            busybox,
            dir,
        })
    }

    fn cmd(&self, program: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("KUBECONFIG", &self.kubeconfig).args(args);
        cmd
    }

    /// kubectl; its output, or the error output when it failed.
    fn try_kubectl(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .cmd(&self.kubectl, &["--request-timeout=30s"])
            .args(args)
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn kubectl(&self, args: &[&str]) -> String {
        self.try_kubectl(args)
            .unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"))
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl(&all)).unwrap()
    }

    fn apply(&self, name: &str, yaml: &str) {
        let file = self.dir.join(format!("{name}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        self.kubectl(&["apply", "-f", file.to_str().unwrap()]);
    }

    /// Polls `f` for up to `limit`.
    fn wait<T>(&self, what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                start.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Removes either install, the app namespaces and the cluster-scoped
    /// objects, and waits until the namespaces are gone.
    fn clean(&self) {
        let _ = self
            .cmd(&self.helm, &["uninstall", "sesame", "-n", NS, "--wait"])
            .output();
        let _ = self.try_kubectl(&[
            "delete",
            "mutatingwebhookconfiguration,validatingadmissionpolicy,validatingadmissionpolicybinding,clusterrole,clusterrolebinding",
            "-l",
            "app.kubernetes.io/part-of=sesame",
            "--ignore-not-found",
        ]);
        let _ = self.try_kubectl(&[
            "delete",
            "namespace",
            NS,
            "team-a",
            "team-b",
            "--ignore-not-found",
            "--wait=false",
        ]);
        self.wait("the namespaces to go", Duration::from_secs(180), || {
            let left = self.kubectl(&[
                "get",
                "namespace",
                NS,
                "team-a",
                "team-b",
                "-o",
                "name",
                "--ignore-not-found",
            ]);
            left.trim().is_empty().then_some(())
        });
    }
}

const CONFIG: &str = "annotationPrefix: sesame.dev
resolveTimeout: 3s
stores:
  - name: dev
    file:
      path: /etc/sesame/stores/secrets.yaml
policy:
  rules:
    - name: own-subtree
      namespaces: [\"*\"]
      stores: [dev]
      paths: [\"apps/{namespace}/**\"]
";

#[derive(Clone, Copy, Debug)]
enum Method {
    Helm,
    Kustomize,
}

fn app(ns: &str, busybox: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: orders, namespace: {ns}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: orders}}}}
  template:
    metadata:
      labels: {{app: orders}}
      annotations:
        sesame.dev/env.DB_PASSWORD: "dev:apps/team-a/db#password"
        sesame.dev/file.db-password: "dev:apps/team-a/db#password path=/var/run/secrets/db/password"
    spec:
      securityContext: {{runAsUser: 65532, runAsGroup: 65532, runAsNonRoot: true}}
      containers:
        - name: app
          image: {busybox}
          imagePullPolicy: IfNotPresent
          command: ["sh", "-c", "echo DB_PASSWORD=$DB_PASSWORD; echo file=$(cat /var/run/secrets/db/password); echo ready; sleep 86400"]
"#
    )
}

fn install(node: &Node, method: Method) {
    node.kubectl(&[
        "apply",
        "-f",
        root().join("deploy/base/namespace.yaml").to_str().unwrap(),
    ]);
    node.kubectl(&[
        "-n",
        NS,
        "create",
        "secret",
        "generic",
        "sesame-file-store",
        &format!(
            "--from-file=secrets.yaml={}",
            root().join("examples/secrets.yaml").display()
        ),
    ]);
    let (name, tag) = &node.image;
    match method {
        Method::Helm => {
            let values = node.dir.join("values.yaml");
            let config: String = CONFIG.lines().map(|l| format!("  {l}\n")).collect();
            std::fs::write(
                &values,
                format!(
                    "image: {{repository: {name}, tag: {tag}, pullPolicy: IfNotPresent}}\nconfig:\n{config}"
                ),
            )
            .unwrap();
            let out = node
                .cmd(
                    &node.helm,
                    &[
                        "install",
                        "sesame",
                        root().join("deploy/helm/sesame").to_str().unwrap(),
                        "-n",
                        NS,
                        "-f",
                    ],
                )
                .arg(&values)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "helm install: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Method::Kustomize => {
            let overlay = node.dir.join("my-sesame");
            std::fs::create_dir_all(&overlay).unwrap();
            let up = "../".repeat(overlay.components().count() - 1);
            let base = format!("{up}{}", root().display().to_string().trim_start_matches('/'));
            std::fs::write(
                overlay.join("kustomization.yaml"),
                format!(
                    "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {base}/deploy/overlays/self-managed\nimages:\n  - name: sesame\n    newName: {name}\n    newTag: {tag}\nconfigMapGenerator:\n  - name: sesame-config\n    namespace: {NS}\n    behavior: replace\n    files:\n      - sesame.yaml\n    options:\n      disableNameSuffixHash: true\n"
                ),
            )
            .unwrap();
            std::fs::write(overlay.join("sesame.yaml"), CONFIG).unwrap();
            let out = node.try_kubectl(&["apply", "-k", overlay.to_str().unwrap()]);
            let out = out.unwrap_or_else(|e| panic!("kubectl apply -k: {e}"));
            assert!(!out.contains("Warning"), "{out}");
        }
    }
}

fn run_method(node: &Node, method: Method) {
    node.clean();
    let started = Instant::now();
    install(node, method);
    node.kubectl(&[
        "-n",
        NS,
        "rollout",
        "status",
        "deployment/sesame",
        "--timeout=180s",
    ]);
    let ready = started.elapsed();
    let d = node.json(&["-n", NS, "get", "deployment", "sesame"]);
    assert_eq!(d["status"]["readyReplicas"], 2, "{method:?}: two replicas Ready");

    // Self-managed certificates: the caBundle of both webhooks is the CA.
    let ca = node.kubectl(&[
        "-n",
        NS,
        "get",
        "secret",
        "sesame-certs",
        "-o",
        "jsonpath={.data.ca\\.crt}",
    ]);
    let mwc = node.json(&["get", "mutatingwebhookconfiguration", "sesame"]);
    for w in mwc["webhooks"].as_array().unwrap() {
        assert_eq!(
            w["clientConfig"]["caBundle"].as_str(),
            Some(ca.as_str()),
            "{method:?}"
        );
    }
    // No probe failed while the replicas started.
    let events = node.kubectl(&[
        "-n",
        NS,
        "get",
        "events",
        "--field-selector",
        "reason=Unhealthy",
        "-o",
        "name",
    ]);
    assert!(
        events.trim().is_empty(),
        "{method:?}: probe failures at start-up: {events}"
    );

    // An app that reads its values.
    for ns in ["team-a", "team-b"] {
        node.kubectl(&["create", "namespace", ns]);
        node.wait("the default ServiceAccount", Duration::from_secs(30), || {
            node.try_kubectl(&["-n", ns, "get", "serviceaccount", "default"])
                .ok()
        });
    }
    let app_started = Instant::now();
    node.apply("app-team-a", &app("team-a", &node.busybox));
    node.kubectl(&[
        "-n",
        "team-a",
        "rollout",
        "status",
        "deployment/orders",
        "--timeout=120s",
    ]);
    let app_ready = app_started.elapsed();
    let pods = node.json(&["-n", "team-a", "get", "pods", "-l", "app=orders"]);
    let pod = pods["items"][0]["metadata"]["name"].as_str().unwrap().to_owned();
    let logs = node.wait("the app's output", Duration::from_secs(60), || {
        node.try_kubectl(&["-n", "team-a", "logs", &pod])
            .ok()
            .filter(|l| l.lines().any(|x| x == "ready"))
    });
    assert!(
        logs.lines().any(|l| l == "DB_PASSWORD=dev-password-team-a"),
        "{method:?}: {logs}"
    );
    assert!(
        logs.lines().any(|l| l == "file=dev-password-team-a"),
        "{method:?}: {logs}"
    );
    let spec = node.kubectl(&["-n", "team-a", "get", "pod", &pod, "-o", "yaml"]);
    assert!(
        !spec.contains("dev-password"),
        "{method:?}: a value in the Pod spec"
    );
    let managed = pods["items"][0]["metadata"]["annotations"]["sesame.dev/injected"]
        .as_str()
        .unwrap()
        .to_owned();

    // A team reading outside its subtree: the ReplicaSet's event says why.
    node.apply("app-team-b", &app("team-b", &node.busybox));
    let message = node.wait("the FailedCreate event", Duration::from_secs(60), || {
        let events = node.json(&[
            "-n",
            "team-b",
            "get",
            "events",
            "--field-selector",
            "reason=FailedCreate",
        ]);
        events["items"]
            .as_array()
            .and_then(|i| i.last())
            .and_then(|e| e["message"].as_str())
            .map(str::to_owned)
    });
    assert!(
        message.contains("denied the request")
            && message.contains(r#"is outside what namespace "team-b" may read from store "dev""#),
        "{method:?}: {message}"
    );

    // Uninstall: docs/install.md says managed Secrets stay, the webhook
    // configuration and the guard go, and Helm leaves the namespace (with
    // Sesame's certificate Secret) while kustomize deletes it.
    match method {
        Method::Helm => {
            let out = node
                .cmd(&node.helm, &["uninstall", "sesame", "-n", NS, "--wait"])
                .output()
                .unwrap();
            assert!(out.status.success(), "helm uninstall");
        }
        Method::Kustomize => {
            node.kubectl(&[
                "delete",
                "-k",
                node.dir.join("my-sesame").to_str().unwrap(),
                "--wait=false",
            ]);
        }
    }
    for kind in [
        "mutatingwebhookconfiguration",
        "validatingadmissionpolicy",
        "validatingadmissionpolicybinding",
    ] {
        let left = node.kubectl(&[
            "get",
            kind,
            "-l",
            "app.kubernetes.io/part-of=sesame",
            "-o",
            "name",
        ]);
        assert!(left.trim().is_empty(), "{method:?}: {left} left after uninstall");
    }
    assert!(
        node.try_kubectl(&["-n", "team-a", "get", "secret", &managed])
            .is_ok(),
        "{method:?}: the managed Secret {managed} stays"
    );
    let certs = node.try_kubectl(&["-n", NS, "get", "secret", "sesame-certs", "-o", "name"]);
    match method {
        Method::Helm => assert!(
            certs.is_ok(),
            "Helm leaves sesame-system and its certificate Secret"
        ),
        Method::Kustomize => {
            let phase = node.try_kubectl(&["get", "namespace", NS, "-o", "jsonpath={.status.phase}"]);
            assert!(
                phase.as_deref().is_err() || phase.as_deref() == Ok("Terminating"),
                "kustomize deletes sesame-system: {phase:?}"
            );
        }
    }
    println!(
        "{method:?}: install -> 2 replicas Ready {:.1} s, app Deployment -> ready {:.1} s",
        ready.as_secs_f64(),
        app_ready.as_secs_f64()
    );
}

#[test]
fn installs_on_a_real_node_with_helm_and_kustomize() {
    let Some(node) = Node::new() else {
        return;
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_method(&node, Method::Helm);
        run_method(&node, Method::Kustomize);
    }));
    node.clean();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
