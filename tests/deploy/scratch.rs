//! A scratch namespace on a real API server, and the objects a test put there.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::render::{run, tools};
use crate::MARKER;

/// A scratch namespace on the API server that `SESAME_E2E_KUBECONFIG` names,
/// plus the cluster-scoped objects a test installed there; all are deleted
/// when it drops, also when the test fails.
pub(crate) struct Scratch {
    pub(crate) kubectl: PathBuf,
    pub(crate) kubeconfig: std::ffi::OsString,
    pub(crate) name: String,
    pub(crate) installed: Vec<PathBuf>,
}

impl Scratch {
    /// `None` (with one line) when no API server is configured.
    pub(crate) fn new(purpose: &str) -> Option<Self> {
        let Some(kubeconfig) = std::env::var_os("SESAME_E2E_KUBECONFIG") else {
            eprintln!("skipping: SESAME_E2E_KUBECONFIG not set (no API server for this check)");
            return None;
        };
        let (kubectl, _) = tools()?;
        let scratch = Self {
            kubectl,
            kubeconfig,
            // The random part keeps a reused pid from colliding with a
            // namespace of an earlier run that is still terminating.
            name: format!(
                "sesame-{purpose}-{}-{:04x}",
                std::process::id(),
                fastrand::u16(..)
            ),
            installed: Vec::new(),
        };
        run(&mut scratch.kubectl(&["create", "namespace", &scratch.name]));
        // Pods need the namespace's `default` ServiceAccount, which the
        // serviceaccount controller makes (creating it here would race it).
        let made = (0..150).any(|_| {
            let found = scratch
                .kubectl(&["-n", &scratch.name, "get", "serviceaccount", "default"])
                .output()
                .is_ok_and(|o| o.status.success());
            if !found {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            found
        });
        assert!(
            made,
            "no ServiceAccount {}/default after 30 s: is kube-controller-manager running?",
            scratch.name
        );
        Some(scratch)
    }

    pub(crate) fn kubectl(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.kubectl);
        cmd.env("KUBECONFIG", &self.kubeconfig).args(args);
        cmd
    }

    /// Writes `value` as a JSON file named after the scratch namespace.
    pub(crate) fn file(&self, suffix: &str, value: &Value) -> PathBuf {
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-{suffix}.json", self.name));
        std::fs::write(&path, value.to_string()).unwrap();
        path
    }

    /// Server-side dry run of `items`; the API server's answer when it
    /// refused or warned. A warning (e.g. a Pod Security violation) counts as
    /// a refusal; the note about a missing last-applied annotation on an
    /// object that already exists on the server does not.
    pub(crate) fn dry_run(&self, name: &str, items: Vec<Value>) -> Result<(), String> {
        let file = self.file(
            name,
            &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}),
        );
        let out = self
            .kubectl(&["apply", "--dry-run=server", "-f"])
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let warned = stderr
            .lines()
            .any(|l| l.contains("Warning") && !l.contains("last-applied-configuration"));
        if out.status.success() && !warned {
            Ok(())
        } else {
            Err(stderr.into_owned())
        }
    }

    /// Creates `items` for real; they are deleted on drop.
    pub(crate) fn install(&mut self, items: Vec<Value>) {
        let file = self.file(
            &format!("install-{}", self.installed.len()),
            &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}),
        );
        run(self.kubectl(&["apply", "-f"]).arg(&file));
        self.installed.push(file);
    }

    /// A rendered cluster-scoped object under the scratch name, with its
    /// namespace selectors narrowed to the scratch namespace so that nothing
    /// else on the server is affected.
    pub(crate) fn scoped(&self, objects: &[Value], kind: &str) -> Value {
        let mut o = objects.iter().find(|o| o["kind"] == kind).unwrap().clone();
        o["metadata"] = serde_json::json!({"name": self.name});
        let only = serde_json::json!({"key": "kubernetes.io/metadata.name", "operator": "In", "values": [self.name]});
        let mut selectors: Vec<&mut Value> = match kind {
            "MutatingWebhookConfiguration" => o["webhooks"]
                .as_array_mut()
                .unwrap()
                .iter_mut()
                .map(|w| &mut w["namespaceSelector"])
                .collect(),
            "ValidatingAdmissionPolicyBinding" => vec![&mut o["spec"]["matchResources"]["namespaceSelector"]],
            _ => Vec::new(),
        };
        for s in &mut selectors {
            s["matchExpressions"].as_array_mut().unwrap().push(only.clone());
        }
        if kind == "ValidatingAdmissionPolicyBinding" {
            o["spec"]["policyName"] = Value::String(self.name.clone());
        }
        o
    }

    /// Creates a Pod with `annotations` in the scratch namespace as a server
    /// dry run: the admitted (mutated) Pod, or the API server's refusal.
    pub(crate) fn create_pod(&self, annotations: Value) -> Result<Value, String> {
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "app", "namespace": self.name, "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "app:1"}]}
        });
        let file = self.file("pod", &pod);
        let out = self
            .kubectl(&["create", "--dry-run=server", "-o", "json", "-f"])
            .arg(&file)
            .output()
            .unwrap();
        if out.status.success() {
            Ok(serde_json::from_slice(&out.stdout).unwrap())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Creates (for real with `dry_run` false) a Pod named `name` without
    /// annotations whose spec is `spec`: the admitted Pod, or the refusal.
    pub(crate) fn create_pod_with_spec(
        &self,
        name: &str,
        spec: Value,
        dry_run: bool,
    ) -> Result<Value, String> {
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": self.name},
            "spec": spec,
        });
        let file = self.file(&format!("pod-{name}"), &pod);
        let mut args = vec!["create", "-o", "json", "-f"];
        if dry_run {
            args.insert(1, "--dry-run=server");
        }
        let out = self.kubectl(&args).arg(&file).output().unwrap();
        if out.status.success() {
            Ok(serde_json::from_slice(&out.stdout).unwrap())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Repeats `create_pod` until `want` holds (for up to 10 s): new webhook
    /// configurations, policies and namespace labels reach the API server's
    /// admission chain within a second or two.
    pub(crate) fn eventually(
        &self,
        annotations: &Value,
        want: impl Fn(&Result<Value, String>) -> bool,
    ) -> Result<Value, String> {
        let mut last = self.create_pod(annotations.clone());
        for _ in 0..40 {
            if want(&last) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
            last = self.create_pod(annotations.clone());
        }
        last
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for file in &self.installed {
            // No waiting: the namespace controller finishes in the background.
            let _ = self
                .kubectl(&["delete", "--ignore-not-found", "--wait=false", "-f"])
                .arg(file)
                .output();
        }
        let _ = self
            .kubectl(&["delete", "namespace", &self.name, "--wait=false"])
            .output();
    }
}

pub(crate) fn marked(pod: &Value) -> bool {
    !pod["metadata"]["annotations"][MARKER].is_null()
}
