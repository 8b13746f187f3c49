//! The configuration from the API: with `--config-map`, `serve` watches the
//! ConfigMap its file is mounted from and applies a change as soon as the
//! API serves it, without waiting for the kubelet to update the file; the
//! file is the fallback while the watch has seen nothing. Against the
//! in-memory API server of tests/support/fake_api.rs (it follows the
//! documented wire format; field selectors as the API concepts page
//! describes them, `metadata.name` only).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "support/fake_api.rs"]
mod fake_api;

use std::time::{Duration, Instant};

use clap::Parser as _;
use common::*;
use fake_api::FakeApi;
use serde_json::{json, Value};

const BARE: &str = "real-pod-create-bare.json";

/// `CONFIG` plus a rule that lets team-a read team-b's database secret.
fn shared_config() -> String {
    CONFIG.replace(
        "  rules:\n",
        "  rules:\n    - {name: share, namespaces: [team-a], stores: [dev], paths: [\"apps/team-b/db\"]}\n",
    )
}

struct Running {
    api: FakeApi,
    dir: tempfile::TempDir,
    handle: sesame::run::ServerHandle,
    client: reqwest::Client,
    url: String,
}

async fn start(api: FakeApi) -> Running {
    // Reviews for a namespace the cache does not know are refused.
    api.put("namespaces", "", "team-a", json!({"metadata": {}}));
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), CONFIG, SECRETS);
    let ca = write_certs(&dir.path().join("certs"));
    let kubeconfig = api.write_kubeconfig(dir.path());
    let p = |name: &str| dir.path().join(name).display().to_string();
    let cli = sesame::cli::Cli::parse_from([
        "sesame".to_owned(),
        "serve".into(),
        format!("--config={}", p("sesame.yaml")),
        format!("--cert-dir={}", p("certs")),
        "--bind-address=127.0.0.1".into(),
        "--tls-port=0".into(),
        "--admin-port=0".into(),
        "--reload-interval=100ms".into(),
        "--kube=required".into(),
        format!("--kubeconfig={}", kubeconfig.display()),
        "--namespace=sesame-system".into(),
        "--config-map=sesame-config".into(),
    ]);
    let sesame::cli::Command::Serve(args) = cli.command else {
        unreachable!()
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let handle = sesame::run::start(&args).await.unwrap();
    let url = format!("https://127.0.0.1:{}/mutate", handle.webhook_addr.port());
    Running {
        api,
        dir,
        handle,
        client: client_for(&ca, false),
        url,
    }
}

impl Running {
    /// Whether team-a's Pod that reads team-b's secret is admitted.
    async fn shares(&self) -> bool {
        let review = with_annotations(BARE, &[("sesame.dev/env.X", "dev:apps/team-b/db#password")]);
        let body: Value = self
            .client
            .post(&self.url)
            .json(&review)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["response"]["allowed"].as_bool().unwrap()
    }

    async fn eventually_shares(&self, want: bool, what: &str) -> Duration {
        let started = Instant::now();
        while self.shares().await != want {
            assert!(started.elapsed() < Duration::from_secs(20), "{what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        started.elapsed()
    }

    fn put_config_map(&self, name: &str, config: &str) {
        self.api.put(
            "configmaps",
            "sesame-system",
            name,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": name, "namespace": "sesame-system"},
                   "data": {"sesame.yaml": config}}),
        );
    }

    async fn stop(self) {
        self.handle.shutdown();
        self.handle.wait().await;
        drop(self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_configmap_applies_without_the_file_and_the_stale_file_does_not_undo_it() {
    let s = start(FakeApi::start().await).await;
    assert!(!s.shares().await, "the file's rules: own subtree only");

    // Another ConfigMap in the namespace is none of Sesame's business.
    s.put_config_map("other", "annotationPrefix: [not valid\n");
    s.put_config_map("sesame-config", &shared_config());
    let took = s
        .eventually_shares(true, "the ConfigMap's new rule never applied")
        .await;
    println!("ConfigMap change applied after {took:?}, the file unchanged");
    assert_eq!(
        std::fs::read_to_string(s.dir.path().join("sesame.yaml")).unwrap(),
        CONFIG,
        "the mounted file still holds the old configuration"
    );
    // Twenty reload intervals on, the stale file has not brought it back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(s.shares().await, "the lagging file undid the ConfigMap's change");

    // One object, by name: what RBAC's resourceNames allow.
    let watches: Vec<_> = s
        .api
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/v1/namespaces/sesame-system/configmaps")
        .collect();
    assert!(!watches.is_empty());
    for r in &watches {
        assert_eq!(
            r.query.get("fieldSelector").map(String::as_str),
            Some("metadata.name=sesame-config"),
            "{r:?}"
        );
    }

    // Back to the file's rules through the ConfigMap, as `kubectl apply` would.
    s.put_config_map("sesame-config", CONFIG);
    s.eventually_shares(false, "the ConfigMap's revert never applied")
        .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_access_to_the_configmap_the_mounted_file_still_applies() {
    let api = FakeApi::start().await;
    // RBAC without the ConfigMap rule: every list and watch is forbidden.
    api.fail_next("GET", "/configmaps", 403, 1_000_000);
    let s = start(api).await;
    assert!(!s.shares().await);
    std::fs::write(s.dir.path().join("sesame.yaml"), shared_config()).unwrap();
    s.eventually_shares(true, "the file's change never applied").await;
    assert!(
        !s.api.calls("GET", "/configmaps").is_empty(),
        "the watch was tried"
    );
    s.stop().await;
}
