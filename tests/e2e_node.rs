//! End to end on a real node: Sesame installed from deploy/ as real Pods
//! (kustomize's self-managed overlay, then Helm), and app Pods that really
//! start and read what Sesame injected. Runs when
//! `SESAME_E2E_NODE_KUBECONFIG` names the kubeconfig of a cluster with nodes
//! (the one-node cluster of `shared/tools/kube/node`, see docs/e2e.md);
//! otherwise prints one line and passes as skipped.
//!
//! The commands are docs/install.md's worked example: the suite reads its
//! marked blocks (`<!-- e2e: NAME -->` before a fence) from that file and
//! runs them in order in a scratch copy of `deploy/` and `examples/`, with
//! the three variables of its `env` block set to the images under test, and
//! checks the outputs the document shows. Between them it checks what a
//! user would look at: values in the container, events, caBundle, Pods not
//! restarted, rollouts, and counts every admission made while Sesame Pods
//! are deleted, force-deleted, upgraded and killed.
//!
//! The image: `SESAME_E2E_NODE_IMAGE` (`name:tag`, already on the node, e.g.
//! made by the node harness's `image.sh target/release/sesame sesame:dev`),
//! or `SESAME_E2E_NODE_IMAGE_SH` (that `image.sh`), which the suite runs on
//! `target/release/sesame` (build it first; the worked example also runs
//! `sesame check-config` from there). The app image:
//! `SESAME_E2E_NODE_BUSYBOX` (default: the node harness's busybox).
//! The crash is a SIGKILL of the container through the node harness's
//! containerd (`ctr`, its socket beside the kubeconfig), skipped where
//! there is none.
//!
//! It takes over the namespaces `sesame-system`, `team-a` and `team-b` and
//! the cluster-scoped objects named `sesame*`: use a cluster of its own.
//! Timings are printed (`cargo test --test e2e_node -- --nocapture`), never
//! asserted; waits have generous bounds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

const NS: &str = "sesame-system";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------
// The worked example of docs/install.md

/// The marked blocks of docs/install.md's worked example, by name.
struct Example {
    blocks: BTreeMap<String, String>,
    order: Vec<String>,
}

const SECTION: &str = "## Worked example:";

impl Example {
    fn load() -> Self {
        let text = std::fs::read_to_string(root().join("docs/install.md")).unwrap();
        Self::parse(&text)
    }

    /// Every fenced block of the section must carry a marker (so that no
    /// command of the example goes unrun), names are unique.
    fn parse(text: &str) -> Self {
        let start = text
            .find(SECTION)
            .expect("docs/install.md has the worked example");
        let rest = &text[start + SECTION.len()..];
        let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
        let mut blocks = BTreeMap::new();
        let mut order = Vec::new();
        let mut marker: Option<String> = None;
        let mut lines = section.lines();
        while let Some(line) = lines.next() {
            let trimmed = line.trim_start();
            if let Some(name) = trimmed
                .strip_prefix("<!-- e2e:")
                .and_then(|r| r.strip_suffix("-->"))
            {
                marker = Some(name.trim().to_owned());
                continue;
            }
            if !trimmed.starts_with("```") {
                continue;
            }
            let indent = line.len() - trimmed.len();
            let name = marker
                .take()
                .unwrap_or_else(|| panic!("a block of the worked example without an e2e marker: {line}"));
            let mut body = String::new();
            for l in lines.by_ref() {
                if l.trim_start().starts_with("```") {
                    break;
                }
                body.push_str(l.get(indent..).unwrap_or(l.trim_start()));
                body.push('\n');
            }
            assert!(
                blocks.insert(name.clone(), body).is_none(),
                "two blocks named {name}"
            );
            order.push(name);
        }
        Self { blocks, order }
    }

    fn block(&self, name: &str) -> &str {
        self.blocks
            .get(name)
            .unwrap_or_else(|| panic!("docs/install.md has no block <!-- e2e: {name} -->"))
    }

    /// The expected lines of `<name>-output`.
    fn output(&self, name: &str) -> Vec<String> {
        self.block(&format!("{name}-output"))
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// Whether `line` matches `pattern`: the same text with runs of whitespace
/// counted as one space, where `…` in the pattern stands for any text.
fn matches(pattern: &str, line: &str) -> bool {
    let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let (pattern, line) = (norm(pattern), norm(line));
    let pieces: Vec<&str> = pattern.split('…').collect();
    let mut at = 0;
    for (i, piece) in pieces.iter().enumerate() {
        let piece = piece.trim();
        if i == 0 {
            if !line.starts_with(piece) {
                return false;
            }
            at = piece.len();
            continue;
        }
        if i == pieces.len() - 1 {
            return line.len() >= at + piece.len() && line[at..].ends_with(piece);
        }
        match line[at..].find(piece) {
            Some(p) => at += p + piece.len(),
            None => return false,
        }
    }
    line.len() == at
}

/// Every expected line matches a line of `out`, in order.
fn shows(expected: &[String], out: &str) -> bool {
    let mut lines = out.lines();
    expected
        .iter()
        .all(|want| lines.by_ref().any(|l| matches(want, l)))
}

// ---------------------------------------------------------------------------
// The cluster

struct Node {
    kubeconfig: PathBuf,
    kubectl: PathBuf,
    helm: PathBuf,
    image: (String, String),
    busybox: String,
    dir: PathBuf,
    /// The node harness's containerd socket, for a SIGKILL of a container.
    containerd: Option<PathBuf>,
    example: Example,
    used: Mutex<BTreeSet<String>>,
    timings: Mutex<Vec<String>>,
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

/// Runs `cmd` for at most `limit`: its output, or the error output (and
/// output) when it failed or was stopped.
fn run_bounded(cmd: &mut Command, limit: Duration) -> Result<String, String> {
    let out_file = tempfile::NamedTempFile::new().unwrap();
    let err_file = tempfile::NamedTempFile::new().unwrap();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out_file.reopen().unwrap())
        .stderr(err_file.reopen().unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = std::fs::read_to_string(out_file.path()).unwrap_or_default();
    let err = std::fs::read_to_string(err_file.path()).unwrap_or_default();
    match status {
        Some(s) if s.success() => Ok(out),
        Some(s) => Err(format!("{s}: {err}{out}")),
        None => Err(format!("stopped after {limit:?}: {err}{out}")),
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

impl Node {
    fn new() -> Option<Self> {
        let Some(kubeconfig) = std::env::var_os("SESAME_E2E_NODE_KUBECONFIG").map(PathBuf::from) else {
            println!("skipped: set SESAME_E2E_NODE_KUBECONFIG to a cluster with nodes to run the real-node suite (docs/e2e.md)");
            return None;
        };
        let bin = root().join("target/release/sesame");
        assert!(
            bin.is_file(),
            "{} missing: cargo build --release first",
            bin.display()
        );
        let image = match (
            std::env::var("SESAME_E2E_NODE_IMAGE"),
            std::env::var_os("SESAME_E2E_NODE_IMAGE_SH"),
        ) {
            (Ok(image), _) => image,
            (Err(_), Some(image_sh)) => {
                let out = Command::new(image_sh)
                    .arg(&bin)
                    .arg("sesame:e2e")
                    .arg("serve")
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
        let containerd = kubeconfig
            .parent()
            .map(|run| run.join("containerd/containerd.sock"))
            .filter(|s| s.exists());
        Some(Self {
            kubectl: tool(&kubeconfig, "kubectl"),
            helm: tool(&kubeconfig, "helm"),
            kubeconfig,
            image: (name.to_owned(), tag.to_owned()),
            busybox,
            dir,
            containerd,
            example: Example::load(),
            used: Mutex::new(BTreeSet::new()),
            timings: Mutex::new(Vec::new()),
        })
    }

    fn timing(&self, method: Method, what: &str, value: String) {
        println!("[{method:?}] time: {what}: {value}");
        self.timings
            .lock()
            .unwrap()
            .push(format!("{method:?}: {what}: {value}"));
    }

    fn cmd(&self, program: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("KUBECONFIG", &self.kubeconfig).args(args);
        cmd
    }

    /// kubectl; its output, or the error output when it failed.
    fn try_kubectl(&self, args: &[&str]) -> Result<String, String> {
        run_bounded(
            self.cmd(&self.kubectl, &["--request-timeout=30s"]).args(args),
            Duration::from_secs(60),
        )
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

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let file = self.dir.join(name);
        std::fs::write(&file, text).unwrap();
        file
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
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Where the worked example runs: a fresh copy of deploy/ and examples/.
    fn work(&self, method: Method) -> PathBuf {
        let work = self.dir.join(format!("work-{method:?}").to_lowercase());
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        for d in ["deploy", "examples"] {
            let out = Command::new("cp")
                .arg("-r")
                .arg(root().join(d))
                .arg(&work)
                .output()
                .unwrap();
            assert!(out.status.success(), "cp {d}");
        }
        work
    }

    /// Runs a block of the worked example with bash in `work`, with the
    /// `env` block's variables set to the images under test: its output,
    /// or its error output.
    fn try_block(&self, work: &Path, name: &str) -> Result<String, String> {
        self.used.lock().unwrap().insert(name.to_owned());
        let inherited = std::env::var_os("PATH").unwrap_or_default();
        let path: Vec<PathBuf> = [
            self.kubectl.parent().unwrap().to_path_buf(),
            self.helm.parent().unwrap().to_path_buf(),
            root().join("target/release"),
        ]
        .into_iter()
        .chain(std::env::split_paths(&inherited))
        .collect();
        let mut cmd = Command::new("bash");
        cmd.args(["-euo", "pipefail", "-c", self.example.block(name)])
            .current_dir(work)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("PATH", std::env::join_paths(path).unwrap())
            .env("IMAGE", &self.image.0)
            .env("TAG", &self.image.1)
            .env("APP_IMAGE", &self.busybox);
        run_bounded(&mut cmd, Duration::from_secs(600))
    }

    fn block(&self, work: &Path, name: &str) -> Duration {
        let started = Instant::now();
        let out = self
            .try_block(work, name)
            .unwrap_or_else(|e| panic!("docs/install.md block {name}: {e}"));
        let took = started.elapsed();
        println!("ran block {name} ({}):\n{out}", secs(took));
        took
    }

    /// Runs block `name` until its output shows the lines of
    /// `<name>-output` (the block only reads), for up to `limit`.
    fn expect(&self, work: &Path, name: &str, limit: Duration) -> Duration {
        let expected = self.example.output(name);
        self.used.lock().unwrap().insert(format!("{name}-output"));
        let started = Instant::now();
        loop {
            let last = match self.try_block(work, name) {
                Ok(out) if shows(&expected, &out) => {
                    println!("block {name} shows what docs/install.md says:\n{out}");
                    return started.elapsed();
                }
                Ok(out) => out,
                Err(e) => e,
            };
            assert!(
                started.elapsed() < limit,
                "block {name} never showed {expected:#?} within {limit:?}; last:\n{last}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Removes either install, the app namespaces and the cluster-scoped
    /// objects, and waits until the namespaces are gone.
    fn clean(&self) {
        let _ = run_bounded(
            &mut self.cmd(&self.helm, &["uninstall", "sesame", "-n", NS, "--wait"]),
            Duration::from_secs(120),
        );
        let _ = self.try_kubectl(&[
            "delete",
            "mutatingwebhookconfiguration,validatingwebhookconfiguration,validatingadmissionpolicy,validatingadmissionpolicybinding,clusterrole,clusterrolebinding",
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

    /// The Sesame Pods: name → (ready, restart count, terminating).
    fn sesame_pods(&self) -> BTreeMap<String, (bool, i64, bool)> {
        let pods = self.json(&["-n", NS, "get", "pods", "-l", "app.kubernetes.io/name=sesame"]);
        pods["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let ready = p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                let restarts = p["status"]["containerStatuses"][0]["restartCount"]
                    .as_i64()
                    .unwrap_or(0);
                let terminating = !p["metadata"]["deletionTimestamp"].is_null();
                (
                    p["metadata"]["name"].as_str().unwrap().to_owned(),
                    (ready, restarts, terminating),
                )
            })
            .collect()
    }

    /// Two Sesame Pods, both ready, no other (terminating ones gone).
    fn wait_two_ready(&self) -> BTreeMap<String, (bool, i64, bool)> {
        self.wait(
            "two ready Sesame Pods and no other",
            Duration::from_secs(180),
            || {
                let pods = self.sesame_pods();
                (pods.len() == 2 && pods.values().all(|(ready, _, t)| *ready && !t)).then_some(pods)
            },
        )
    }

    /// `sesame_config_reloads_total{outcome="applied"}` of one Sesame Pod,
    /// through the API server's proxy to its admin port.
    fn reloads_applied(&self, pod: &str) -> f64 {
        let text = self
            .try_kubectl(&[
                "get",
                "--raw",
                &format!("/api/v1/namespaces/{NS}/pods/{pod}:8080/proxy/metrics"),
            ])
            .unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("sesame_config_reloads_total{outcome=\"applied\"} "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// A bare Pod in `ns` that asks for team-a's API token, as a server-side
    /// dry run: the Pod as admitted, or the error.
    fn dry_run_pod(&self, ns: &str) -> Result<Value, String> {
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "probe", "namespace": ns,
                         "annotations": {"sesame.dev/env.API_TOKEN": "dev:apps/team-a/api-token"}},
            "spec": {"containers": [{"name": "app", "image": self.busybox, "command": ["true"]}]}
        });
        let file = self.file("probe-pod.json", &pod.to_string());
        self.try_kubectl(&[
            "create",
            "--dry-run=server",
            "-o",
            "json",
            "-f",
            file.to_str().unwrap(),
        ])
        .map(|out| serde_json::from_str(&out).unwrap())
    }

    /// The newest Pod of Deployment `app` in `ns` that is not terminating.
    fn newest_pod(&self, ns: &str, app: &str) -> Value {
        let pods = self.json(&["-n", ns, "get", "pods", "-l", &format!("app={app}")]);
        let mut items: Vec<Value> = pods["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .cloned()
            .collect();
        items.sort_by_key(|p| p["metadata"]["creationTimestamp"].as_str().unwrap().to_owned());
        items.pop().unwrap_or_else(|| panic!("no Pod of {ns}/{app}"))
    }
}

// ---------------------------------------------------------------------------
// Admissions in a loop

/// When one Pod was created, and whether it was admitted and mutated.
type Attempt = (Instant, Result<(), String>);

/// Creates a Pod that asks for a secret every 200 ms (a real create, then a
/// delete), through the API server, and records whether Sesame mutated it.
struct Admissions {
    stop: Arc<AtomicBool>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Admissions {
    fn start(node: &Node) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let kubeconfig = node.kubeconfig.clone();
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "admit-", "labels": {"sesame-e2e": "admit"},
                         "annotations": {"sesame.dev/env.API_TOKEN": "dev:apps/team-a/api-token"}},
            // No node has this label: the Pod stays Pending and is deleted
            // right away; admission is what counts.
            "spec": {"nodeSelector": {"sesame-e2e/nowhere": "true"},
                     "containers": [{"name": "app", "image": node.busybox, "command": ["true"]}]}
        }))
        .unwrap();
        let (s, a) = (stop.clone(), attempts.clone());
        let thread = std::thread::spawn(move || {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let client =
                    sesame::kube::client::connect(sesame::kube::KubeMode::Required, Some(&kubeconfig))
                        .await
                        .unwrap()
                        .unwrap();
                let api: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client, "team-a");
                while !s.load(Ordering::SeqCst) {
                    let created = tokio::time::timeout(
                        Duration::from_secs(30),
                        api.create(&kube::api::PostParams::default(), &pod),
                    )
                    .await;
                    let outcome = match created {
                        Ok(Ok(p)) => {
                            let name = p.metadata.name.clone().unwrap_or_default();
                            let _ = api
                                .delete(&name, &kube::api::DeleteParams::default().grace_period(0))
                                .await;
                            let marked = p
                                .metadata
                                .annotations
                                .as_ref()
                                .is_some_and(|a| a.contains_key("sesame.dev/injected"));
                            if marked {
                                Ok(())
                            } else {
                                Err(format!("{name} admitted without Sesame's marker"))
                            }
                        }
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("no answer within 30 s".to_owned()),
                    };
                    a.lock().unwrap().push((Instant::now(), outcome));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
        });
        Self {
            stop,
            attempts,
            thread: Some(thread),
        }
    }

    /// Admitted and failed attempts between two instants, with the first
    /// few failures.
    fn count(&self, from: Instant, to: Instant) -> (usize, Vec<String>) {
        let attempts = self.attempts.lock().unwrap();
        let window = attempts.iter().filter(|(at, _)| *at >= from && *at <= to);
        let (mut ok, mut failed) = (0, Vec::new());
        for (_, outcome) in window {
            match outcome {
                Ok(()) => ok += 1,
                Err(e) => failed.push(e.clone()),
            }
        }
        (ok, failed)
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Admissions {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------
// The suite

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Kustomize,
    Helm,
}

impl Method {
    fn suffix(self) -> &'static str {
        match self {
            Method::Kustomize => "kustomize",
            Method::Helm => "helm",
        }
    }
}

fn run_method(node: &Node, method: Method) {
    node.clean();
    let work = node.work(method);
    let m = method.suffix();

    // 1. Install from the worked example, to two Ready replicas.
    node.block(&work, "namespace");
    node.block(&work, "config");
    let took = node.block(&work, &format!("install-{m}"));
    node.timing(method, "install command -> 2 replicas Ready", secs(took));
    let d = node.json(&["-n", NS, "get", "deployment", "sesame"]);
    assert_eq!(d["status"]["readyReplicas"], 2, "{method:?}: two replicas Ready");
    let ca = node.kubectl(&[
        "-n",
        NS,
        "get",
        "secret",
        "sesame-certs",
        "-o",
        "jsonpath={.data.ca\\.crt}",
    ]);
    // Both webhook configurations: the Pods' and the workload warnings'.
    node.wait("the workload webhook's caBundle", Duration::from_secs(60), || {
        let vwc = node.json(&["get", "validatingwebhookconfiguration", "sesame"]);
        (vwc["webhooks"][0]["clientConfig"]["caBundle"].as_str() == Some(ca.as_str())).then_some(())
    });
    let mwc = node.json(&["get", "mutatingwebhookconfiguration", "sesame"]);
    for w in mwc["webhooks"].as_array().unwrap() {
        assert_eq!(
            w["clientConfig"]["caBundle"].as_str(),
            Some(ca.as_str()),
            "{method:?}: caBundle"
        );
    }
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

    // 2. The app reads its values; none is in its Pod spec.
    let took = node.block(&work, "app");
    node.timing(
        method,
        "app Deployment applied -> Pod Running and ready",
        secs(took),
    );
    node.expect(&work, "look", Duration::from_secs(60));
    let pod = node.newest_pod("team-a", "orders");
    let orders = pod["metadata"]["name"].as_str().unwrap().to_owned();
    let env = node.kubectl(&[
        "-n",
        "team-a",
        "exec",
        &orders,
        "--",
        "sh",
        "-c",
        "echo $DB_PASSWORD $API_TOKEN $DB_URL; cat /var/run/secrets/db/password",
    ]);
    assert_eq!(
        env.split_whitespace().collect::<Vec<_>>(),
        [
            "dev-password-team-a",
            "dev-token-team-a",
            "postgres://team_a:dev-password-team-a@db.team-a.svc/orders",
            "dev-password-team-a"
        ],
        "{method:?}: the values the container sees"
    );
    let spec = node.kubectl(&["-n", "team-a", "get", "pod", &orders, "-o", "yaml"]);
    assert!(
        !spec.contains("dev-password") && !spec.contains("dev-token"),
        "{method:?}: a value in the Pod spec"
    );

    // The other two kinds the worked example does not show: every property
    // as env vars (env-from) and as files in a directory (dir).
    let inventory = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "inventory", "namespace": "team-a"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "inventory"}},
          "template": {"metadata": {"labels": {"app": "inventory"}, "annotations": {
              "sesame.dev/env-from.db": "dev:apps/team-a/db prefix=DB_",
              "sesame.dev/dir.tls": "dev:apps/team-a/tls path=/etc/tls mode=0440"}},
            // The volume's files are owned by root and the group fsGroup:
            // without fsGroup, mode 0440 is unreadable by a non-root user.
            "spec": {"securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532},
              "containers": [{"name": "app", "image": node.busybox, "command": ["sleep", "86400"]}]}}}
    });
    let file = node.file("inventory.json", &inventory.to_string());
    node.kubectl(&["apply", "-f", file.to_str().unwrap()]);
    node.kubectl(&[
        "-n",
        "team-a",
        "rollout",
        "status",
        "deployment/inventory",
        "--timeout=120s",
    ]);
    let pod = node.newest_pod("team-a", "inventory");
    let inventory = pod["metadata"]["name"].as_str().unwrap().to_owned();
    let seen = node.kubectl(&[
        "-n",
        "team-a",
        "exec",
        &inventory,
        "--",
        "sh",
        "-c",
        "echo $DB_HOST $DB_PORT $DB_USERNAME $DB_PASSWORD $DB_DATABASE; ls /etc/tls; cat /etc/tls/ca.crt",
    ]);
    assert_eq!(
        seen.split_whitespace().collect::<Vec<_>>(),
        [
            "db.team-a.svc",
            "5432",
            "team_a",
            "dev-password-team-a",
            "orders",
            "ca.crt",
            "tls.crt",
            "tls.key",
            "-----BEGIN",
            "CERTIFICATE-----",
            "DEVELOPMENT",
            "CA",
            "-----END",
            "CERTIFICATE-----",
        ],
        "{method:?}: env-from and dir as the container sees them"
    );
    let spec = node.kubectl(&["-n", "team-a", "get", "pod", &inventory, "-o", "yaml"]);
    assert!(
        !spec.contains("dev-password") && !spec.contains("DEVELOPMENT"),
        "{method:?}: a value in the Pod spec"
    );

    // 4. A team reading outside its subtree: `kubectl apply` warns (the
    // workload webhook, as Pods), and the ReplicaSet's event says why.
    let applied = node
        .try_block(&work, "deny")
        .unwrap_or_else(|e| panic!("docs/install.md block deny: {e}"));
    node.used.lock().unwrap().insert("deny-output".to_owned());
    assert!(
        shows(&node.example.output("deny"), &applied),
        "{method:?}: kubectl apply did not warn as docs/install.md says:\n{applied}"
    );
    node.expect(&work, "deny-look", Duration::from_secs(60));
    let written = node.kubectl(&[
        "-n",
        "team-b",
        "get",
        "secret",
        "-l",
        "app.kubernetes.io/managed-by=sesame",
        "-o",
        "name",
    ]);
    assert!(
        written.trim().is_empty(),
        "{method:?}: a Secret written for a denied Pod: {written}"
    );

    // A configuration change: through the API watch, without a restart.
    let denied = node.try_block(&work, "change-look");
    assert!(
        denied
            .as_ref()
            .is_err_and(|e| e.contains("is outside what namespace \"team-a\" may read")),
        "{method:?}: before the change the flags are denied: {denied:?}"
    );
    let before = node.wait_two_ready();
    node.block(&work, "change");
    node.block(&work, &format!("change-{m}"));
    let changed = Instant::now();
    let first = node.expect(&work, "change-look", Duration::from_secs(180));
    node.timing(
        method,
        "config change applied -> first admission under the new rule",
        secs(first),
    );
    node.wait(
        "both replicas to apply the change",
        Duration::from_secs(180),
        || {
            before
                .keys()
                .all(|p| node.reloads_applied(p) >= 1.0)
                .then_some(())
        },
    );
    node.timing(
        method,
        "config change applied -> both replicas reloaded",
        secs(changed.elapsed()),
    );
    assert_eq!(
        node.sesame_pods(),
        before,
        "{method:?}: no Sesame Pod restarted or replaced by the change"
    );

    // 3. Rotation: the running container's file changes without a restart,
    // the opted-in Deployment is rolled.
    let orders_before = node.newest_pod("team-a", "orders");
    node.block(&work, "rotate");
    let rotated = Instant::now();
    let file = node.wait(
        "the rotated value in orders' file",
        Duration::from_secs(420),
        || {
            let out = node.try_kubectl(&[
                "-n",
                "team-a",
                "exec",
                &orders,
                "--",
                "cat",
                "/var/run/secrets/db/password",
            ]);
            (out.ok()?.trim() == "rotated-password-team-a").then(|| rotated.elapsed())
        },
    );
    node.timing(
        method,
        "store changed -> file changed in the running container",
        secs(file),
    );
    let rolled = node.wait("the restart of reports", Duration::from_secs(420), || {
        let d = node.json(&["-n", "team-a", "get", "deployment", "reports"]);
        d["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
            .as_str()
            .map(|_| rotated.elapsed())
    });
    node.timing(
        method,
        "store changed -> reports restarted by Sesame",
        secs(rolled),
    );
    let both = node.expect(&work, "rotate-look", Duration::from_secs(420));
    node.timing(
        method,
        "store changed -> both show the new value",
        secs(rotated.elapsed()),
    );
    let _ = both;
    let orders_after = node.newest_pod("team-a", "orders");
    assert_eq!(
        orders_after["metadata"]["uid"], orders_before["metadata"]["uid"],
        "{method:?}: orders was not replaced"
    );
    assert_eq!(
        orders_after["status"]["containerStatuses"][0]["restartCount"], 0,
        "{method:?}: orders' container was not restarted"
    );

    // 5. Disruptions while Pods are created in a loop: a delete, a force
    // delete, an upgrade with a changed value, then a SIGKILL.
    disruptions(node, method, &work);

    // 6. Sesame scaled to 0, then back.
    node.block(&work, "down");
    node.expect(&work, "down-look", Duration::from_secs(120));
    let refused = node
        .dry_run_pod("team-a")
        .expect_err("refused while Sesame is down");
    assert!(
        refused.contains("failed calling webhook \"inject.sesame.dev\""),
        "{method:?}: {refused}"
    );
    let policy = |p: &str| {
        node.kubectl(&[
            "patch",
            "mutatingwebhookconfiguration",
            "sesame",
            "--type=json",
            "-p",
            &format!(r#"[{{"op":"replace","path":"/webhooks/0/failurePolicy","value":"{p}"}}]"#),
        ]);
    };
    policy("Ignore");
    let guard = node.wait(
        "the guard's refusal under Ignore",
        Duration::from_secs(30),
        || {
            node.dry_run_pod("team-a")
                .err()
                .filter(|e| e.contains("ValidatingAdmissionPolicy 'sesame-injection-guard'"))
        },
    );
    assert!(
        guard.contains("Sesame did not process this Pod"),
        "{method:?}: {guard}"
    );
    policy("Fail");
    node.wait("failurePolicy Fail again", Duration::from_secs(30), || {
        node.dry_run_pod("team-a")
            .err()
            .filter(|e| e.contains("failed calling webhook"))
    });
    node.block(&work, "open");
    let unmutated = node.newest_pod("team-a", "orders");
    assert!(
        unmutated["metadata"]["annotations"]["sesame.dev/injected"].is_null()
            && unmutated["spec"]["containers"][0]["env"].is_null(),
        "{method:?}: admitted unmutated in the fail-open namespace: {}",
        unmutated["metadata"]
    );
    assert_eq!(unmutated["status"]["phase"], "Running", "{method:?}");
    let back = Instant::now();
    node.block(&work, "back");
    node.expect(&work, "back-look", Duration::from_secs(60));
    node.timing(
        method,
        "scale 0 -> 2, label removed, orders restarted and mutated",
        secs(back.elapsed()),
    );
    let admitted = node.dry_run_pod("team-a").expect("admitted once Sesame is back");
    assert!(
        !admitted["metadata"]["annotations"]["sesame.dev/injected"].is_null(),
        "{method:?}: mutated again"
    );

    // 7. Uninstall: docs/install.md says managed Secrets stay, the webhook
    // configuration and the guard go, and Helm leaves the namespace (with
    // the certificate and provenance key Secrets) while kustomize deletes it.
    let managed = node.newest_pod("team-a", "orders")["metadata"]["annotations"]["sesame.dev/injected"]
        .as_str()
        .unwrap()
        .to_owned();
    node.block(&work, &format!("uninstall-{m}"));
    for kind in [
        "mutatingwebhookconfiguration",
        "validatingwebhookconfiguration",
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
    match method {
        Method::Helm => {
            for secret in ["sesame-certs", "sesame-provenance"] {
                assert!(
                    node.try_kubectl(&["-n", NS, "get", "secret", secret, "-o", "name"])
                        .is_ok(),
                    "Helm leaves sesame-system with the Secret {secret}"
                );
            }
        }
        Method::Kustomize => {
            let phase = node.try_kubectl(&["get", "namespace", NS, "-o", "jsonpath={.status.phase}"]);
            assert!(
                phase.is_err() || phase.as_deref() == Ok("Terminating"),
                "kustomize deletes sesame-system: {phase:?}"
            );
        }
    }
}

/// Deletes one Sesame Pod, force-deletes another and upgrades with a
/// changed value (a rollout), while Pods are created in a loop: every one
/// of them must be admitted and mutated. Then a crash: a SIGKILL of one
/// container. Nothing in Sesame runs on SIGKILL, and the API server does
/// not retry a refused connection, so the Pods created in the moment
/// between the death and the endpoint's removal may fail; the test asserts
/// that every such failure is a refused connection at the killed Pod's
/// address (never a denial or an unmutated Pod), and that every admission
/// after the restart succeeds.
fn disruptions(node: &Node, method: Method, work: &Path) {
    let pods = node.wait_two_ready();
    let mut names = pods.keys().cloned();
    let (first, second) = (names.next().unwrap(), names.next().unwrap());
    let mut admissions = Admissions::start(node);
    std::thread::sleep(Duration::from_secs(5));
    let mut marks = vec![("before", Instant::now())];

    // Delete: graceful termination, as a drain or an eviction does it.
    node.kubectl(&["-n", NS, "delete", "pod", &first, "--wait=false"]);
    node.wait_two_ready();
    std::thread::sleep(Duration::from_secs(5));
    marks.push(("delete", Instant::now()));

    node.kubectl(&["-n", NS, "delete", "pod", &second, "--force", "--grace-period=0"]);
    node.wait_two_ready();
    std::thread::sleep(Duration::from_secs(5));
    marks.push(("force-delete", Instant::now()));

    let started = Instant::now();
    match method {
        Method::Helm => {
            let out = run_bounded(
                node.cmd(
                    &node.helm,
                    &[
                        "upgrade",
                        "sesame",
                        "deploy/helm/sesame",
                        "-n",
                        NS,
                        "-f",
                        "my-values.yaml",
                        "--set",
                        "logLevel=debug",
                    ],
                )
                .current_dir(work),
                Duration::from_secs(300),
            );
            out.unwrap_or_else(|e| panic!("helm upgrade: {e}"));
        }
        Method::Kustomize => {
            let k = work.join("my-sesame/kustomization.yaml");
            let mut text = std::fs::read_to_string(&k).unwrap();
            text.push_str(
                "patches:\n  - patch: |-\n      apiVersion: apps/v1\n      kind: Deployment\n      metadata: {name: sesame, namespace: sesame-system}\n      spec:\n        template:\n          spec:\n            containers:\n              - name: sesame\n                env:\n                  - {name: SESAME_LOG_LEVEL, value: debug}\n",
            );
            std::fs::write(&k, text).unwrap();
            node.kubectl(&["apply", "-k", work.join("my-sesame").to_str().unwrap()]);
        }
    }
    node.kubectl(&[
        "-n",
        NS,
        "rollout",
        "status",
        "deployment/sesame",
        "--timeout=300s",
    ]);
    let upgraded = node.wait_two_ready();
    assert!(
        upgraded.keys().all(|p| !pods.contains_key(p)),
        "{method:?}: the upgrade replaced both Pods"
    );
    node.timing(
        method,
        "upgrade with a changed value -> 2 new replicas Ready",
        secs(started.elapsed()),
    );
    std::thread::sleep(Duration::from_secs(5));
    marks.push(("upgrade", Instant::now()));

    let mut report = Vec::new();
    let mut all_failed = Vec::new();
    for pair in marks.windows(2) {
        let ((_, from), (what, to)) = (pair[0], pair[1]);
        let (ok, failed) = admissions.count(from, to);
        report.push(format!("{what}: {ok} admitted, {} failed", failed.len()));
        all_failed.extend(failed);
    }

    // The crash: SIGKILL of one container (it restarts in the same Pod).
    if let Some(socket) = &node.containerd {
        let crashed = upgraded.keys().next().unwrap().clone();
        let pod = node.json(&["-n", NS, "get", "pod", &crashed]);
        let ip = pod["status"]["podIP"].as_str().unwrap().to_owned();
        let id = pod["status"]["containerStatuses"][0]["containerID"]
            .as_str()
            .unwrap()
            .trim_start_matches("containerd://")
            .to_owned();
        let killed_at = Instant::now();
        let out = Command::new("ctr")
            .arg("--address")
            .arg(socket)
            .args(["-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", &id])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ctr kill: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        node.wait(
            "the killed container to restart",
            Duration::from_secs(120),
            || {
                node.sesame_pods()
                    .get(&crashed)
                    .is_some_and(|(_, restarts, _)| *restarts > upgraded[&crashed].1)
                    .then_some(())
            },
        );
        node.wait_two_ready();
        let back = Instant::now();
        std::thread::sleep(Duration::from_secs(5));
        let end = Instant::now();
        let (ok, lost) = admissions.count(killed_at, back);
        let refused_at_the_crashed_pod = |e: &String| {
            e.contains(&format!("{ip}:"))
                && (e.contains("connection refused") || e.contains("connection reset"))
        };
        assert!(
            lost.iter().all(refused_at_the_crashed_pod),
            "{method:?}: a failure during the crash that is not a refused connection at {ip}: {:#?}",
            &lost[..lost.len().min(5)]
        );
        let (after, failed_after) = admissions.count(back, end);
        report.push(format!(
            "SIGKILL: {ok} admitted, {} refused at the killed Pod until its endpoint went; after the restart {after} admitted, {} failed",
            lost.len(),
            failed_after.len()
        ));
        all_failed.extend(failed_after);
    } else {
        report.push("SIGKILL: skipped (no containerd socket)".to_owned());
    }
    admissions.stop();
    node.timing(
        method,
        "admissions (delete, force delete, upgrade, SIGKILL)",
        report.join("; "),
    );
    assert!(
        all_failed.is_empty(),
        "{method:?}: failed admissions: {:#?}",
        &all_failed[..all_failed.len().min(5)]
    );
}

/// The chart's platform options on a real node: the ServiceAccount's cloud
/// identity annotation, a store's CA file from a ConfigMap through
/// `extraVolumes`/`extraVolumeMounts` (the vault store reads it at start, so
/// a missing mount would keep the Pod from becoming ready), and
/// `hostNetwork` with other ports; the webhook then answers the API server
/// through the node's network.
fn platform_options(node: &Node) {
    let started = Instant::now();
    let dir = node.dir.join("platform");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.crt");
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=store-ca",
            "-keyout",
        ])
        .arg(dir.join("ca.key"))
        .arg("-out")
        .arg(&ca)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    node.kubectl(&[
        "apply",
        "-f",
        root().join("deploy/base/namespace.yaml").to_str().unwrap(),
    ]);
    // Host networking is forbidden at the restricted level (docs/install.md).
    node.kubectl(&[
        "label",
        "namespace",
        NS,
        "pod-security.kubernetes.io/enforce=privileged",
        "--overwrite",
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
    node.kubectl(&[
        "-n",
        NS,
        "create",
        "configmap",
        "store-ca",
        &format!("--from-file=ca.crt={}", ca.display()),
    ]);
    let values = serde_json::json!({
        "image": {"repository": node.image.0, "tag": node.image.1},
        "replicas": 1,
        "hostNetwork": true,
        "ports": {"webhook": 18443, "admin": 18080},
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/sesame"}},
        "extraVolumes": [{"name": "store-ca", "configMap": {"name": "store-ca"}}],
        "extraVolumeMounts": [{"name": "store-ca", "mountPath": "/etc/sesame/ca", "readOnly": true}],
        "config": {
            "stores": [
                {"name": "dev", "file": {"path": "/etc/sesame/stores/secrets.yaml"}},
                {"name": "vault", "vault": {
                    "address": "https://vault.invalid:8200",
                    "caFile": "/etc/sesame/ca/ca.crt",
                    "auth": {"kubernetes": {"role": "sesame"}}}},
            ],
            "policy": {"rules": [{"name": "own-subtree", "namespaces": ["*"], "stores": ["dev", "vault"], "paths": ["apps/{namespace}/**"]}]},
        },
    });
    let values_file = node.file("platform-values.json", &values.to_string());
    let install = run_bounded(
        &mut node.cmd(
            &node.helm,
            &[
                "install",
                "sesame",
                root().join("deploy/helm/sesame").to_str().unwrap(),
                "-n",
                NS,
                "-f",
                values_file.to_str().unwrap(),
            ],
        ),
        Duration::from_secs(120),
    );
    assert!(install.is_ok(), "helm install with platform options: {install:?}");
    let rollout = run_bounded(
        &mut node.cmd(
            &node.kubectl,
            &[
                "-n",
                NS,
                "rollout",
                "status",
                "deployment/sesame",
                "--timeout=180s",
            ],
        ),
        Duration::from_secs(200),
    );
    let logs = node
        .try_kubectl(&["-n", NS, "logs", "deployment/sesame", "--tail=20"])
        .unwrap_or_default();
    assert!(
        rollout.is_ok(),
        "platform options: not ready: {rollout:?}\n{logs}"
    );
    let pod =
        node.json(&["-n", NS, "get", "pods", "-l", "app.kubernetes.io/name=sesame"])["items"][0].clone();
    assert_eq!(pod["spec"]["hostNetwork"], true, "{pod}");
    let ports: Vec<i64> = pod["spec"]["containers"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_i64().unwrap())
        .collect();
    assert!(ports.contains(&18443) && ports.contains(&18080), "{ports:?}");
    assert!(
        pod["spec"]["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["mountPath"] == "/etc/sesame/ca"),
        "{pod}"
    );
    let sa = node.json(&[
        "-n",
        NS,
        "get",
        "serviceaccount",
        pod["spec"]["serviceAccountName"].as_str().unwrap(),
    ]);
    assert_eq!(
        sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::123456789012:role/sesame"
    );
    // The API server reaches the webhook on the node's network.
    node.kubectl(&["create", "namespace", "team-a"]);
    let mutated = node.wait(
        "a Pod mutated through hostNetwork",
        Duration::from_secs(60),
        || {
            node.dry_run_pod("team-a")
                .ok()
                .filter(|p| !p["metadata"]["annotations"]["sesame.dev/injected"].is_null())
        },
    );
    assert!(mutated["spec"]["containers"][0]["env"]
        .to_string()
        .contains("secretKeyRef"));
    node.timing(
        Method::Helm,
        "platform options (hostNetwork, extraVolumes, serviceAccount.annotations): install -> a Pod mutated",
        secs(started.elapsed()),
    );
    node.clean();
}

#[test]
fn installs_on_a_real_node_with_kustomize_and_helm() {
    let Some(node) = Node::new() else {
        return;
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // `SESAME_E2E_NODE_RUNS=platform` (say) runs some of the three alone.
        let runs = std::env::var("SESAME_E2E_NODE_RUNS").unwrap_or_else(|_| "kustomize,helm,platform".into());
        let runs: Vec<&str> = runs.split(',').map(str::trim).collect();
        if runs.contains(&"kustomize") {
            run_method(&node, Method::Kustomize);
        }
        if runs.contains(&"helm") {
            run_method(&node, Method::Helm);
        }
        if runs.contains(&"platform") {
            node.clean();
            platform_options(&node);
        }
    }));
    node.clean();
    println!("== timings\n{}", node.timings.lock().unwrap().join("\n"));
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    // Every block of the worked example ran (the `env` block's variables
    // were set by the suite).
    let used = node.used.lock().unwrap().clone();
    if std::env::var_os("SESAME_E2E_NODE_RUNS").is_some() {
        return;
    }
    let unrun: Vec<&String> = node
        .example
        .order
        .iter()
        .filter(|b| *b != "env" && !used.contains(*b))
        .collect();
    assert!(
        unrun.is_empty(),
        "blocks of the worked example the suite did not run: {unrun:?}"
    );
}

/// Offline: the worked example is what the suite can run. Every block is
/// marked, the `env` block sets exactly the variables the suite sets, and
/// every block the suite names exists.
#[test]
fn the_worked_example_is_the_suites_commands() {
    let example = Example::load();
    let env = example.block("env");
    let vars: BTreeSet<&str> = env
        .trim()
        .strip_prefix("export ")
        .expect("the env block exports")
        .split_whitespace()
        .map(|a| a.split_once('=').expect("NAME=value").0)
        .collect();
    assert_eq!(vars, BTreeSet::from(["IMAGE", "TAG", "APP_IMAGE"]));
    for name in [
        "namespace",
        "config",
        "install-kustomize",
        "install-helm",
        "app",
        "look",
        "deny",
        "deny-look",
        "change",
        "change-kustomize",
        "change-helm",
        "change-look",
        "rotate",
        "rotate-look",
        "down",
        "down-look",
        "open",
        "back",
        "back-look",
        "uninstall-kustomize",
        "uninstall-helm",
    ] {
        example.block(name);
    }
    for name in [
        "look",
        "deny-look",
        "change-look",
        "rotate-look",
        "down-look",
        "back-look",
    ] {
        assert!(!example.output(name).is_empty(), "{name}-output");
    }
    // Outputs are only for blocks that exist, and no other block is unknown.
    for name in &example.order {
        if let Some(base) = name.strip_suffix("-output") {
            example.block(base);
        }
    }
}

#[test]
fn output_patterns_match_as_documented() {
    assert!(matches("sesame-…", "sesame-17d302cdfc898b12"));
    assert!(matches(
        "sesame-… Opaque …",
        "sesame-17d302cdfc898b12   Opaque   3      12s"
    ));
    assert!(!matches("sesame-… Opaque …", "NAME   TYPE   DATA   AGE"));
    assert!(matches("rotated-password-team-a", "rotated-password-team-a"));
    assert!(!matches("rotated-password-team-a", "dev-password-team-a"));
    assert!(!matches("sesame-", "sesame-17d3"), "no wildcard, whole line");
    assert!(matches("a … c … e", "a b c d e"));
    assert!(!matches("a … c … e", "a b d e"));
    let out = "sesame-1\nnoise\nDB_PASSWORD has 19 characters\n";
    assert!(shows(
        &["sesame-…".into(), "DB_PASSWORD has 19 characters".into()],
        out
    ));
    assert!(
        !shows(&["DB_PASSWORD has 19 characters".into(), "sesame-…".into()], out),
        "in order"
    );
}
