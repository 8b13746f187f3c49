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
    serde_norway::Deserializer::from_str(text)
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
    // Tests render the same scratch kustomization in parallel: write it
    // aside and rename it into place, so that kubectl never reads a file
    // another test has just truncated.
    let aside = dir.join(format!("kustomization.yaml.{:?}", std::thread::current().id()));
    std::fs::write(&aside, text).unwrap();
    std::fs::rename(&aside, dir.join("kustomization.yaml")).unwrap();
    kustomize(kubectl, &dir)
}

pub(crate) fn overlay(kubectl: &Path, name: &str) -> Vec<Value> {
    kustomize(kubectl, &root().join("deploy/overlays").join(name))
}

/// The self-managed overlay with every component that renders on any
/// cluster (host-network has its own rendering: it needs a privileged
/// namespace).
pub(crate) fn all_components(kubectl: &Path) -> Vec<Value> {
    kustomize_with(
        kubectl,
        "all-components",
        "resources:\n  - {root}/deploy/overlays/self-managed\ncomponents:\n  - {root}/deploy/components/servicemonitor\n  - {root}/deploy/components/prometheusrule\n  - {root}/deploy/components/grafana-dashboard\n  - {root}/deploy/components/object-selector\n  - {root}/deploy/components/networkpolicy\n",
    )
}

/// The self-managed overlay with the host-network component.
pub(crate) fn host_network(kubectl: &Path) -> Vec<Value> {
    kustomize_with(
        kubectl,
        "host-network",
        "resources:\n  - {root}/deploy/overlays/self-managed\ncomponents:\n  - {root}/deploy/components/host-network\n",
    )
}

/// The self-managed overlay with the `identity: pod` RBAC component.
pub(crate) fn pod_identity(kubectl: &Path) -> Vec<Value> {
    kustomize_with(
        kubectl,
        "pod-identity",
        "resources:\n  - {root}/deploy/overlays/self-managed\ncomponents:\n  - {root}/deploy/components/pod-identity\n",
    )
}

/// The self-managed overlay with the client-auth component.
pub(crate) fn client_auth(kubectl: &Path) -> Vec<Value> {
    kustomize_with(
        kubectl,
        "client-auth",
        "resources:\n  - {root}/deploy/overlays/self-managed\ncomponents:\n  - {root}/deploy/components/client-auth\n",
    )
}

/// Client certificates required, the CA bundle from a ConfigMap of the
/// platform's: what the client-auth component does.
pub(crate) const HELM_CLIENT_AUTH: &[&str] = &[
    "clientAuth.enabled=true",
    "clientAuth.existingConfigMap=sesame-client-ca",
];

/// Client certificates required, the CA bundle rendered by the chart under
/// another key.
pub(crate) const HELM_CLIENT_AUTH_BUNDLE: &[&str] = &[
    "clientAuth.enabled=true",
    "clientAuth.key=bundle.pem",
    "clientAuth.caBundle=-----BEGIN CERTIFICATE-----",
];

pub(crate) fn helm(helm: &Path, set: &[&str]) -> Vec<Value> {
    helm_values(helm, "", set)
}

/// `helm template` with `values` (YAML, as a values file) and `set`.
pub(crate) fn helm_values(helm: &Path, values: &str, set: &[&str]) -> Vec<Value> {
    parse_stream(&run(&mut helm_command(helm, "template", values, set)))
}

/// `helm <verb> sesame <chart> --namespace sesame-system -f <values> --set ...`.
pub(crate) fn helm_command(helm: &Path, verb: &str, values: &str, set: &[&str]) -> Command {
    let mut cmd = Command::new(helm);
    cmd.arg(verb);
    if verb == "template" {
        cmd.arg("sesame");
    }
    cmd.arg(root().join("deploy/helm/sesame"))
        .args(["--namespace", NS]);
    if !values.is_empty() {
        cmd.arg("-f").arg(values_file(values));
    }
    for s in set {
        cmd.args(["--set", s]);
    }
    cmd
}

/// `values` in a file of its own (named by its content: tests run in parallel).
pub(crate) fn values_file(values: &str) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    values.hash(&mut h);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("deploy-test");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("values-{:016x}.yaml", h.finish()));
    // Written beside and renamed into place: tests asking for the same
    // values at once must never read a file another is still writing.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let partial = dir.join(format!(
        "values-{:016x}.{}-{n}.partial",
        h.finish(),
        std::process::id()
    ));
    std::fs::write(&partial, values).unwrap();
    std::fs::rename(&partial, &path).unwrap();
    path
}

/// Values that switch every option away from its default, but for
/// `hostNetwork` (HELM_HOST_NETWORK: it needs a privileged namespace).
pub(crate) const HELM_NON_DEFAULT: &[&str] = &[
    "certificates.mode=cert-manager",
    "serviceMonitor.enabled=true",
    "networkPolicy.enabled=true",
    "networkPolicy.apiServerCIDRs={10.0.0.1/32}",
    "networkPolicy.stores[0].cidr=10.1.0.0/16",
    "networkPolicy.stores[0].ports={8200}",
    "webhook.objectSelector.enabled=true",
    "webhook.failurePolicy=Ignore",
    "webhook.timeoutSeconds=25",
    "webhook.excludedNamespaces={kube-system,monitoring}",
    "replicas=3",
    "priorityClassName=system-cluster-critical",
    "image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
];

/// The platform options of the non-default rendering: cloud identity on the
/// ServiceAccount and the Pods, a store's CA and a projected token mounted,
/// extra environment and arguments, other ports and scheduling, monitoring.
pub(crate) const HELM_PLATFORM_VALUES: &str = r#"
serviceAccount:
  name: sesame-runner
  annotations:
    eks.amazonaws.com/role-arn: arn:aws:iam::111122223333:role/sesame
    azure.workload.identity/client-id: 00000000-0000-0000-0000-000000000000
podLabels:
  azure.workload.identity/use: "true"
podAnnotations:
  example.com/owner: platform
extraEnv:
  - name: AWS_REGION
    value: eu-west-1
  - name: SSL_CERT_FILE
    value: /etc/sesame/store-ca/ca.crt
extraArgs:
  - --reload-interval=30s
extraVolumes:
  - name: store-ca
    configMap:
      name: store-ca
  - name: vault-token
    projected:
      sources:
        - serviceAccountToken:
            audience: vault
            expirationSeconds: 3600
            path: token
extraVolumeMounts:
  - name: store-ca
    mountPath: /etc/sesame/store-ca
    readOnly: true
  - name: vault-token
    mountPath: /var/run/secrets/vault
    readOnly: true
ports:
  webhook: 9443
  admin: 9080
nodeSelector:
  kubernetes.io/os: linux
  example.com/pool: platform
tolerations:
  - key: example.com/pool
    operator: Equal
    value: platform
    effect: NoSchedule
updateStrategy:
  type: RollingUpdate
  rollingUpdate:
    maxSurge: 0
    maxUnavailable: 1
prometheusRule:
  enabled: true
  labels:
    release: prometheus
  alertLabels:
    team: platform
grafanaDashboard:
  enabled: true
"#;

/// The chart with every option away from its default (but `hostNetwork`).
pub(crate) fn helm_non_default(helm: &Path) -> Vec<Value> {
    helm_values(helm, HELM_PLATFORM_VALUES, HELM_NON_DEFAULT)
}

/// Host networking on other ports, as for a control plane that cannot reach
/// Pod IPs.
pub(crate) const HELM_HOST_NETWORK: &[&str] =
    &["hostNetwork=true", "ports.webhook=10443", "ports.admin=10080"];

/// OpenShift's restricted SCC assigns the UID: the chart's fixed IDs removed.
pub(crate) const HELM_NO_FIXED_IDS: &[&str] = &[
    "podSecurityContext.runAsUser=null",
    "podSecurityContext.runAsGroup=null",
    "podSecurityContext.fsGroup=null",
];
