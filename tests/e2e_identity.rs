//! `identity: pod` end to end: a real kube-apiserver (`SESAME_E2E_KUBECONFIG`,
//! docs/e2e.md; without it this prints one line and passes as skipped) and
//! a real OpenBao dev server (`bao`, scripts/deps/10-openbao.sh) whose
//! Kubernetes auth method checks every login with a TokenReview on that API
//! server, as in a cluster.
//!
//! Two ServiceAccounts in one namespace have a Vault role each, bound to
//! that account only, with a Vault policy for one path each. Sesame's own
//! policy grants both paths to every Pod of the namespace: Vault is the
//! second barrier. Each Pod gets what its own role allows, and a read its
//! role does not allow is a 403 denial that names the store.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/tools.rs"]
mod tools;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use clap::Parser;
use futures::FutureExt;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use sesame::cli::{Cli, Command as SesameCommand};
use sesame::kube::client::connect;
use sesame::kube::KubeMode;

const PREFIX: &str = "sesame.dev";
const ROOT_TOKEN: &str = "root-token-for-tests";

fn obj<T: DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

async fn create<K>(api: &Api<K>, v: Value) -> K
where
    K: kube::Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.create(&PostParams::default(), &obj(v)).await.unwrap()
}

/// A running OpenBao dev server, killed on drop.
struct Bao {
    _server: tools::Server,
    address: String,
    http: reqwest::Client,
    _home: tempfile::TempDir,
}

impl Bao {
    async fn start() -> Option<Self> {
        let bin = tools::find_tool("bao", "scripts/deps/10-openbao.sh")?;
        let port = tools::free_port();
        let home = tempfile::tempdir().unwrap();
        let mut command = Command::new(bin);
        command
            .args([
                "server",
                "-dev",
                &format!("-dev-root-token-id={ROOT_TOKEN}"),
                &format!("-dev-listen-address=127.0.0.1:{port}"),
            ])
            .env("HOME", home.path());
        let bao = Self {
            _server: tools::Server::spawn(command),
            address: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            _home: home,
        };
        tools::wait_healthy(&format!("{}/v1/sys/health", bao.address)).await;
        Some(bao)
    }

    async fn write(&self, method: reqwest::Method, path: &str, body: Value) {
        let resp = self
            .http
            .request(method, format!("{}/v1/{path}", self.address))
            .header("X-Vault-Token", ROOT_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        assert!(
            status.is_success(),
            "{path}: {status} {}",
            resp.text().await.unwrap()
        );
    }

    async fn post(&self, path: &str, body: Value) {
        self.write(reqwest::Method::POST, path, body).await;
    }
}

/// Serving certificate for 127.0.0.1 and its CA: the harness PKI beside the
/// kubeconfig when present (run/pki/webhook.crt), else a generated pair.
fn certificates(kubeconfig: &Path, dir: &Path) -> String {
    let pki = kubeconfig.parent().unwrap_or(Path::new(".")).join("pki");
    let cert_dir = dir.join("certs");
    std::fs::create_dir_all(&cert_dir).unwrap();
    let ca = if pki.join("webhook.crt").exists() {
        std::fs::copy(pki.join("webhook.crt"), cert_dir.join("tls.crt")).unwrap();
        std::fs::copy(pki.join("webhook.key"), cert_dir.join("tls.key")).unwrap();
        std::fs::read_to_string(pki.join("ca.crt")).unwrap()
    } else {
        let certs = sesame::certs::generate(&["127.0.0.1".to_owned()], 1).unwrap();
        sesame::certs::write(&cert_dir, &certs).unwrap();
        certs.ca_cert_pem
    };
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(ca)
}

/// The CA that signed the API server's certificate, for OpenBao: the
/// harness's (run/pki/ca.crt) or the kubeconfig's own.
fn api_server_ca(kubeconfig: &Path) -> String {
    let pki = kubeconfig.parent().unwrap_or(Path::new(".")).join("pki/ca.crt");
    if let Ok(ca) = std::fs::read_to_string(&pki) {
        return ca;
    }
    let config: Value = serde_norway::from_str(&std::fs::read_to_string(kubeconfig).unwrap()).unwrap();
    let data = config["clusters"][0]["cluster"]["certificate-authority-data"]
        .as_str()
        .unwrap();
    use base64::Engine as _;
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(data).unwrap()).unwrap()
}

fn api_server_url(kubeconfig: &Path) -> String {
    let config: Value = serde_norway::from_str(&std::fs::read_to_string(kubeconfig).unwrap()).unwrap();
    config["clusters"][0]["cluster"]["server"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn unique_suffix() -> String {
    format!(
        "{}-{:04x}",
        k8s_openapi::jiff::Timestamp::now().as_second(),
        fastrand::u16(..)
    )
}

async fn eventually<F, Fut>(what: &str, f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(what, Duration::from_secs(30), f).await;
}

/// `eventually` with its own bound (a rotation pass comes at its interval).
async fn eventually_within<F, Fut>(what: &str, bound: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while start.elapsed() < bound {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Everything the scenarios touch, for the clean-up.
struct Env {
    client: Client,
    ns: String,
    binding: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_pod_reads_vault_as_its_own_service_account() {
    let Some(kubeconfig) = std::env::var_os("SESAME_E2E_KUBECONFIG").map(PathBuf::from) else {
        println!("skipped: set SESAME_E2E_KUBECONFIG to a kubeconfig to run the identity: pod end-to-end test (docs/e2e.md)");
        return;
    };
    let Some(bao) = Bao::start().await else { return };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = connect(KubeMode::Required, Some(&kubeconfig))
        .await
        .unwrap()
        .expect("a client");
    let suffix = unique_suffix();
    let ns = format!("sesame-identity-{suffix}");
    let env = Env {
        client: client.clone(),
        ns: ns.clone(),
        binding: format!("sesame-identity-{suffix}-reviewer"),
    };
    let outcome = std::panic::AssertUnwindSafe(scenarios(&env, &bao, &kubeconfig))
        .catch_unwind()
        .await;
    let _ = Api::<ClusterRoleBinding>::all(client.clone())
        .delete(&env.binding, &DeleteParams::default())
        .await;
    let _ = Api::<Namespace>::all(client.clone())
        .delete(&ns, &DeleteParams::default())
        .await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn scenarios(env: &Env, bao: &Bao, kubeconfig: &Path) {
    let (client, ns) = (&env.client, env.ns.as_str());
    create(
        &Api::<Namespace>::all(client.clone()),
        json!({"metadata": {"name": ns}}),
    )
    .await;
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), ns);
    for name in ["app-a", "app-b", "vault-reviewer"] {
        create(&accounts, json!({"metadata": {"name": name}})).await;
    }
    // The reviewer OpenBao calls TokenReview as: system:auth-delegator.
    create(
        &Api::<ClusterRoleBinding>::all(client.clone()),
        json!({
            "metadata": {"name": env.binding},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"},
            "subjects": [{"kind": "ServiceAccount", "name": "vault-reviewer", "namespace": ns}]
        }),
    )
    .await;
    let review: TokenRequest = obj(json!({"spec": {"expirationSeconds": 3600}}));
    let reviewer = accounts
        .create_token_request("vault-reviewer", &PostParams::default(), &review)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
        .unwrap();

    // OpenBao: Kubernetes auth against the real API server, a role and a
    // policy per ServiceAccount, a secret per account.
    bao.post("sys/auth/kubernetes", json!({"type": "kubernetes"}))
        .await;
    bao.post(
        "auth/kubernetes/config",
        json!({
            "kubernetes_host": api_server_url(kubeconfig),
            "kubernetes_ca_cert": api_server_ca(kubeconfig),
            "token_reviewer_jwt": reviewer,
            "disable_local_ca_jwt": true,
        }),
    )
    .await;
    for app in ["a", "b"] {
        bao.write(
            reqwest::Method::PUT,
            &format!("sys/policies/acl/read-{app}"),
            json!({"policy": format!("path \"secret/data/{ns}/{app}\" {{ capabilities = [\"read\"] }}\n")}),
        )
        .await;
        bao.post(
            &format!("auth/kubernetes/role/{ns}-app-{app}"),
            json!({
                "bound_service_account_names": [format!("app-{app}")],
                "bound_service_account_namespaces": [ns],
                "audience": "vault",
                "token_policies": [format!("read-{app}")],
                "token_ttl": "10m",
            }),
        )
        .await;
        bao.post(
            &format!("secret/data/{ns}/{app}"),
            json!({"data": {"password": format!("password-of-{app}")}}),
        )
        .await;
    }

    // Sesame, whose own policy grants both paths to every Pod of the namespace.
    let dir = tempfile::tempdir().unwrap();
    let ca_bundle = certificates(kubeconfig, dir.path());
    std::fs::write(
        dir.path().join("sesame.yaml"),
        format!(
            "stores:\n  - name: vault\n    identity: pod\n    cacheTtl: 1m\n    vault:\n      address: {address}\n      auth:\n        kubernetes: {{role: '{{namespace}}-{{serviceAccount}}'}}\n\
             \x20 - name: rotating\n    identity: pod\n    cacheTtl: 0s\n    refreshInterval: 10s\n    vault:\n      address: {address}\n      auth:\n        kubernetes: {{role: '{{namespace}}-{{serviceAccount}}'}}\n\
             policy:\n  rules:\n    - {{name: both, namespaces: ['{ns}'], stores: [vault, rotating], paths: ['{{namespace}}/*']}}\n",
            address = bao.address
        ),
    )
    .unwrap();
    let args = match Cli::parse_from([
        "sesame",
        "serve",
        "--config",
        dir.path().join("sesame.yaml").to_str().unwrap(),
        "--bind-address",
        "127.0.0.1",
        "--tls-port",
        "0",
        "--admin-port",
        "0",
        "--cert-dir",
        dir.path().join("certs").to_str().unwrap(),
        "--kube",
        "required",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--lease-namespace",
        ns,
    ])
    .command
    {
        SesameCommand::Serve(a) => a,
        _ => unreachable!(),
    };
    let handle = sesame::run::start(&args).await.unwrap();
    let webhooks = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let webhook_name = ns.to_owned();
    create(
        &webhooks,
        json!({
            "metadata": {"name": webhook_name},
            "webhooks": [{
                "name": "pods.sesame.dev",
                "clientConfig": {"url": format!("https://127.0.0.1:{}/mutate", handle.webhook_addr.port()), "caBundle": ca_bundle},
                "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                "sideEffects": "NoneOnDryRun",
                "admissionReviewVersions": ["v1"],
                "failurePolicy": "Fail",
                "timeoutSeconds": 10
            }]
        }),
    )
    .await;
    let outcome = std::panic::AssertUnwindSafe(pods(client, ns, bao))
        .catch_unwind()
        .await;
    let _ = webhooks.delete(&webhook_name, &DeleteParams::default()).await;
    handle.shutdown();
    handle.wait().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

fn pod(name: &str, account: &str, path: &str) -> Value {
    pod_from(name, account, &format!("vault:{path}#password"))
}

fn pod_from(name: &str, account: &str, reference: &str) -> Value {
    json!({
        "metadata": {"name": name, "annotations": {format!("{PREFIX}/env.PASSWORD"): reference}},
        "spec": {
            "serviceAccountName": account,
            "containers": [{"name": "app", "image": "registry.invalid/app:1"}]
        }
    })
}

/// The value the Pod's managed Secret holds for its one env var.
async fn injected(client: &Client, ns: &str, created: &Pod) -> String {
    let env = &created.spec.as_ref().unwrap().containers[0].env.as_ref().unwrap()[0];
    let key = env.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get(&key.name)
        .await
        .unwrap();
    String::from_utf8(secret.data.unwrap()[&key.key].0.clone()).unwrap()
}

async fn pods(client: &Client, ns: &str, bao: &Bao) {
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    // The webhook configuration takes a moment to reach the API server.
    eventually("the webhook to mutate Pods", || {
        let pods = pods.clone();
        async move {
            let dry = PostParams {
                dry_run: true,
                ..Default::default()
            };
            match pods
                .create(&dry, &obj(pod("probe", "app-a", &format!("{ns}/a"))))
                .await
            {
                Ok(p) => p
                    .metadata
                    .annotations
                    .is_some_and(|a| a.contains_key(&format!("{PREFIX}/injected"))),
                Err(_) => false,
            }
        }
    })
    .await;

    let a = pods
        .create(
            &PostParams::default(),
            &obj(pod("a", "app-a", &format!("{ns}/a"))),
        )
        .await
        .unwrap();
    assert_eq!(injected(client, ns, &a).await, "password-of-a");
    let b = pods
        .create(
            &PostParams::default(),
            &obj(pod("b", "app-b", &format!("{ns}/b"))),
        )
        .await
        .unwrap();
    assert_eq!(injected(client, ns, &b).await, "password-of-b");

    // Sesame's policy allows it; Vault, asked as app-a, does not: 403, the store named.
    let denial = |e: kube::Error| match e {
        kube::Error::Api(status) => (status.code, status.message),
        other => panic!("not an API answer: {other}"),
    };
    let err = pods
        .create(
            &PostParams::default(),
            &obj(pod("a-reads-b", "app-a", &format!("{ns}/b"))),
        )
        .await
        .unwrap_err();
    let (code, message) = denial(err);
    assert_eq!(code, 403, "{message}");
    assert!(message.contains("store \"vault\""), "{message}");
    assert!(message.contains(&format!("{ns}/app-a")), "{message}");
    assert!(message.contains("permission denied"), "{message}");
    assert!(!message.contains("password-of-b"), "{message}");

    // b's value was cached when b read it: a's read of the same secret is
    // its own, and refused, not served from b's cache entry.
    let err = pods
        .create(
            &PostParams::default(),
            &obj(pod("a-reads-b-again", "app-a", &format!("{ns}/b"))),
        )
        .await
        .unwrap_err();
    assert_eq!(denial(err).0, 403);

    // An account without a Vault role cannot log in at all: 403 too.
    let err = pods
        .create(
            &PostParams::default(),
            &obj(pod("default-reads-a", "default", &format!("{ns}/a"))),
        )
        .await
        .unwrap_err();
    let (code, message) = denial(err);
    assert_eq!(code, 403, "{message}");
    assert!(message.contains("store \"vault\""), "{message}");

    // Rotation reads as the ServiceAccount the Secret was admitted under,
    // as the Secret records it under its MAC: Sesame has no Vault login of
    // its own, so only app-a's login can bring the new value.
    let rotated = pods
        .create(
            &PostParams::default(),
            &obj(pod_from(
                "rotated-a",
                "app-a",
                &format!("rotating:{ns}/a#password"),
            )),
        )
        .await
        .unwrap();
    assert_eq!(injected(client, ns, &rotated).await, "password-of-a");
    bao.post(
        &format!("secret/data/{ns}/a"),
        json!({"data": {"password": "password-of-a-2"}}),
    )
    .await;
    eventually_within(
        "rotation to refresh the Secret as app-a",
        Duration::from_secs(120),
        || async { injected(client, ns, &rotated).await == "password-of-a-2" },
    )
    .await;
}
