//! The tools (`kubectl`, `helm`) and the renderings of deploy/.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

use crate::NS;

pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The tool from .tools/bin (what scripts/test.sh installs) or PATH; `None`
/// (with one line) when missing, a failure when tools are required.
pub(crate) fn tool(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(t) = std::env::var_os("SESAME_TOOLS") {
        dirs.push(PathBuf::from(t).join("bin"));
    }
    dirs.push(root().join(".tools/bin"));
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    if let Some(found) = dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file()) {
        return Some(found);
    }
    if std::env::var("SESAME_REQUIRE_TOOLS").as_deref() == Ok("1") {
        panic!(
            "{name} is required (SESAME_REQUIRE_TOOLS=1) but not found; run scripts/deps/30-kubectl-helm.sh"
        );
    }
    eprintln!("skipping: {name} not found (scripts/deps/30-kubectl-helm.sh installs it)");
    None
}

pub(crate) fn tools() -> Option<(PathBuf, PathBuf)> {
    Some((tool("kubectl")?, tool("helm")?))
}

pub(crate) fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every YAML document of a rendered stream, as JSON.
pub(crate) fn parse_stream(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

pub(crate) fn kustomize(kubectl: &Path, dir: &Path) -> Vec<Value> {
    parse_stream(&run(Command::new(kubectl).arg("kustomize").arg(dir)))
}

/// A kustomization in a scratch directory on top of `resources` and
/// `components` (paths relative to the repository root).
pub(crate) fn kustomize_with(kubectl: &Path, name: &str, extra: &str) -> Vec<Value> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("deploy-test")
        .join(name);
    std::fs::create_dir_all(&dir).unwrap();
    // kustomize wants relative paths; climb from the scratch dir to `/`.
    let up = "../".repeat(dir.components().count() - 1);
    let base = format!("{up}{}", root().display().to_string().trim_start_matches('/'));
    let text = extra.replace("{root}", &base);
    std::fs::write(dir.join("kustomization.yaml"), text).unwrap();
    kustomize(kubectl, &dir)
}

pub(crate) fn overlay(kubectl: &Path, name: &str) -> Vec<Value> {
    kustomize(kubectl, &root().join("deploy/overlays").join(name))
}

pub(crate) fn all_components(kubectl: &Path) -> Vec<Value> {
    kustomize_with(
        kubectl,
        "all-components",
        "resources:\n  - {root}/deploy/overlays/self-managed\ncomponents:\n  - {root}/deploy/components/servicemonitor\n  - {root}/deploy/components/object-selector\n  - {root}/deploy/components/networkpolicy\n",
    )
}

pub(crate) fn helm(helm: &Path, set: &[&str]) -> Vec<Value> {
    let mut cmd = Command::new(helm);
    cmd.args(["template", "sesame"])
        .arg(root().join("deploy/helm/sesame"))
        .args(["--namespace", NS]);
    for s in set {
        cmd.args(["--set", s]);
    }
    parse_stream(&run(&mut cmd))
}

/// Values that switch every option away from its default.
pub(crate) const HELM_NON_DEFAULT: &[&str] = &[
    "certificates.mode=cert-manager",
    "serviceMonitor.enabled=true",
    "networkPolicy.enabled=true",
    "networkPolicy.apiServerCIDRs={10.0.0.1/32}",
    "networkPolicy.stores[0].cidr=10.1.0.0/16",
    "networkPolicy.stores[0].ports={8200}",
    "webhook.objectSelector.enabled=true",
    "webhook.failurePolicy=Ignore",
    "webhook.timeoutSeconds=8",
    "webhook.excludedNamespaces={kube-system,monitoring}",
    "replicas=3",
    "priorityClassName=system-cluster-critical",
    "image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
];
