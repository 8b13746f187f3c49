//! Shared test harness: a real Sesame server on 127.0.0.1 with generated
//! certificates and a file store, and a TLS client that trusts it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use sesame::cli::ServeArgs;
use sesame::run::{start, ServerHandle};

pub const SECRETS: &str = r#"
apps/team-a/db:
  host: db.team-a.svc
  port: "5432"
  username: team_a
  password: s3cr3t-team-a-password
  database: orders
apps/team-a/api-token: tok-team-a-0123456789
apps/team-a/tls:
  tls.crt: CERT-PEM-TEAM-A
  tls.key: KEY-PEM-TEAM-A
  ca.crt: CA-PEM-TEAM-A
apps/team-a/signing-key:
  versions:
    1: signing-key-v1-secret
    2: signing-key-v2-secret
apps/team-a/bad-names:
  "1st": x
apps/dev-team/signing-key:
  versions:
    1: inline-v1
    2: inline-v2
apps/dev-team/db:
  user: inline-user
apps/team-b/db:
  password: s3cr3t-team-b-password
"#;

/// Every value in `SECRETS`: none of them may show up in a message or log.
pub const SECRET_VALUES: &[&str] = &[
    "s3cr3t-team-a-password",
    "tok-team-a-0123456789",
    "KEY-PEM-TEAM-A",
    "signing-key-v1-secret",
    "signing-key-v2-secret",
    "s3cr3t-team-b-password",
];

pub const CONFIG: &str = r#"
annotationPrefix: sesame.dev
resolveTimeout: 2s
stores:
  - name: dev
    file: {path: secrets.yaml}
    cacheTtl: 60s
policy:
  rules:
    - name: own-subtree
      namespaces: ["*"]
      stores: [dev]
      paths: ["apps/{namespace}/**"]
  inline:
    namespaces: ["dev-*"]
"#;

pub struct TestServer {
    pub handle: ServerHandle,
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
    pub url: String,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(CONFIG, SECRETS).await
    }

    pub async fn start_with(config: &str, secrets: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("sesame.yaml"), config).unwrap();
        std::fs::write(dir.path().join("secrets.yaml"), secrets).unwrap();
        let certs = sesame::certs::generate(&["localhost".into(), "127.0.0.1".into()], 30).unwrap();
        sesame::certs::write(&dir.path().join("certs"), &certs).unwrap();
        let handle = start(&serve_args(dir.path()), None).await.unwrap();
        let url = format!("https://127.0.0.1:{}/mutate", handle.webhook_addr.port());
        Self {
            handle,
            dir,
            ca_pem: certs.ca_cert_pem,
            url,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A client that trusts the server's CA; `h2` picks the protocol through ALPN.
    pub fn client(&self, h2: bool) -> reqwest::Client {
        client_for(&self.ca_pem, h2)
    }

    pub fn admin(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.handle.admin_addr.port())
    }

    /// POSTs a review and returns the parsed `response`.
    pub async fn review(&self, review: &Value) -> Value {
        let resp = self
            .client(false)
            .post(&self.url)
            .json(review)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(body["kind"], "AdmissionReview");
        assert_eq!(body["response"]["uid"], review["request"]["uid"]);
        body["response"].clone()
    }
}

pub fn serve_args(dir: &Path) -> ServeArgs {
    let mut args = ServeArgs::loopback(dir.join("sesame.yaml"), dir.join("certs"));
    args.reload_interval = Duration::from_millis(100);
    args.max_body_bytes = 64 * 1024;
    args.client_timeout = Duration::from_millis(500);
    args
}

pub fn client_for(ca_pem: &str, h2: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(15));
    if !h2 {
        b = b.http1_only();
    }
    b.build().unwrap()
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/admission")
}

pub fn fixture(name: &str) -> Value {
    let text = std::fs::read_to_string(fixtures_dir().join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A fixture with its Pod's Sesame annotations replaced by `annotations`.
pub fn with_annotations(name: &str, annotations: &[(&str, &str)]) -> Value {
    let mut review = fixture(name);
    let meta = review["request"]["object"]["metadata"].as_object_mut().unwrap();
    let mut map = serde_json::Map::new();
    for (k, v) in annotations {
        map.insert(k.to_string(), Value::String(v.to_string()));
    }
    meta.insert("annotations".into(), Value::Object(map));
    review
}

/// Applies the response's patch to the review's Pod and returns the Pod.
pub fn patched_pod(review: &Value, response: &Value) -> Value {
    let mut pod = review["request"]["object"].clone();
    if let Some(p) = response["patch"].as_str() {
        assert_eq!(response["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD.decode(p).unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        json_patch::patch(&mut pod, &patch).unwrap();
    }
    pod
}

pub fn env_of<'a>(pod: &'a Value, container: &str) -> Vec<&'a Value> {
    let all = pod["spec"]["containers"].as_array().into_iter().flatten();
    let init = pod["spec"]["initContainers"].as_array().into_iter().flatten();
    all.chain(init)
        .filter(|c| c["name"] == container)
        .flat_map(|c| c["env"].as_array().into_iter().flatten())
        .collect()
}

pub fn env_var<'a>(pod: &'a Value, container: &str, name: &str) -> Option<&'a Value> {
    env_of(pod, container).into_iter().find(|e| e["name"] == name)
}

/// Asserts that no secret value appears in `text`.
pub fn assert_no_secret(text: &str) {
    for v in SECRET_VALUES {
        assert!(!text.contains(v), "a secret value leaked: {text}");
    }
}
