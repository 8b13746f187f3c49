//! Infisical store against an HTTP fake. The fake follows:
//! - Infisical API v3 raw secrets: "Retrieve" `GET /api/v3/secrets/raw/{secretName}`
//!   (query `workspaceId`, `environment`, `secretPath`, `version`; answer
//!   `{"secret":{"secretKey","secretValue","version",…}}`) and "List"
//!   `GET /api/v3/secrets/raw` (query `include_imports`, `recursive`; answer
//!   `{"secrets":[…],"imports":[{"secretPath","secrets":[…]}]}`);
//! - machine identity logins: Universal Auth
//!   `POST /api/v1/auth/universal-auth/login` (`{clientId, clientSecret}`) and
//!   Kubernetes Auth `POST /api/v1/auth/kubernetes-auth/login`
//!   (`{identityId, jwt}`), both answering
//!   `{accessToken, expiresIn, accessTokenMaxTTL, tokenType}`; service tokens
//!   as a static bearer;
//! - errors as the Infisical backend's error handler writes them,
//!   `{"reqId","statusCode","message","error"}`, with an expired or malformed
//!   access token refused as 403 `TokenError` and rate limits as 429
//!   `RateLimitError`.
#![cfg(feature = "infisical")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cloud_fake;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloud_fake::{assert_hidden, fetch, Fake, Reply, Request};
use serde_json::json;
use sesame::config::Config;
use sesame::stores::{build_store, SecretData, SecretLocator, Store, StoreError};

const CLIENT_SECRET: &str = "ua-client-secret-hunter2";
const SA_JWT: &str = "eyJhbGciOiJSUzI1NiJ9.sesame-service-account";
const VALUE: &str = "db-password-hunter2";

#[derive(Default)]
struct Infisical {
    issued: AtomicU32,
    valid: Mutex<HashSet<String>>,
    expired: Mutex<HashSet<String>>,
    lifetime: AtomicU64,
    service_token: Mutex<String>,
}

fn error(status: u16, name: &str, message: &str) -> Reply {
    Reply::json(
        status,
        json!({"reqId": "req-1", "statusCode": status, "message": message, "error": name}),
    )
}

fn raw(key: &str, value: &str, version: u32) -> serde_json::Value {
    json!({"_id": format!("id-{key}"), "id": format!("id-{key}"), "workspace": "proj-1", "environment": "prod",
           "version": version, "type": "shared", "secretKey": key, "secretValue": value, "secretComment": ""})
}

impl Infisical {
    fn login(&self) -> Reply {
        let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        let token = format!("eyJhbGciOiJIUzI1NiJ9.identity-token-{n}");
        self.valid.lock().unwrap().insert(token.clone());
        let lifetime = self.lifetime.load(Ordering::SeqCst);
        Reply::json(
            200,
            json!({"accessToken": token, "expiresIn": lifetime, "accessTokenMaxTTL": 2592000, "tokenType": "Bearer"}),
        )
    }

    /// Access tokens expire server-side: further use is 403 `TokenError`.
    fn expire_all(&self) {
        let mut valid = self.valid.lock().unwrap();
        self.expired.lock().unwrap().extend(valid.drain());
    }

    fn handle(&self, req: &Request) -> Reply {
        match (req.method.as_str(), req.path.as_str()) {
            ("POST", "/api/v1/auth/universal-auth/login") => {
                let body = req.json();
                if body["clientId"] == "client-1" && body["clientSecret"] == CLIENT_SECRET {
                    self.login()
                } else {
                    error(
                        401,
                        "UnauthorizedError",
                        &format!("Invalid credentials {}", body["clientSecret"]),
                    )
                }
            }
            ("POST", "/api/v1/auth/kubernetes-auth/login") => {
                let body = req.json();
                if body["identityId"] == "identity-1" && body["jwt"] == SA_JWT {
                    self.login()
                } else {
                    error(
                        401,
                        "UnauthorizedError",
                        "Access denied: Kubernetes token review failed",
                    )
                }
            }
            ("GET", path) if path.starts_with("/api/v3/secrets/raw") => {
                let bearer = req.bearer().unwrap_or_default();
                if self.expired.lock().unwrap().contains(bearer) {
                    return error(
                        403,
                        "TokenError",
                        "Your token has expired. Please re-authenticate.",
                    );
                }
                let ok = self.valid.lock().unwrap().contains(bearer)
                    || *self.service_token.lock().unwrap() == bearer;
                if !ok {
                    return error(401, "UnauthorizedError", "Failed to authenticate");
                }
                if req.query("workspaceId") != Some("proj-1") || req.query("environment") != Some("prod") {
                    return error(
                        404,
                        "NotFoundError",
                        "Environment with slug 'x' in project not found",
                    );
                }
                let folder = req.query("secretPath").unwrap_or("/");
                match path.strip_prefix("/api/v3/secrets/raw/") {
                    Some(key) => self.retrieve(folder, key, req.query("version")),
                    None if path == "/api/v3/secrets/raw" => self.list(req, folder),
                    None => error(404, "NotFoundError", "Route not found"),
                }
            }
            _ => error(404, "NotFoundError", "Route not found"),
        }
    }

    fn retrieve(&self, folder: &str, key: &str, version: Option<&str>) -> Reply {
        let versions: Vec<String> = match (folder, key) {
            ("/", "API_KEY") => vec!["root-key".into()],
            ("/backend/db", "DB_PASSWORD") => vec!["old-password".into(), VALUE.into()],
            ("/backend/db", "CONFIG") => vec![json!({"host": "db.internal", "password": VALUE}).to_string()],
            ("/backend/db", "FORBIDDEN") => {
                return error(
                    403,
                    "PermissionDenied",
                    &format!("You are not allowed to read {VALUE}"),
                )
            }
            _ => vec![],
        };
        let index = match version {
            None => versions.len(),
            Some(v) => v.parse().unwrap_or(0),
        };
        match index.checked_sub(1).and_then(|i| versions.get(i)) {
            Some(value) => Reply::json(200, json!({"secret": raw(key, value, index as u32)})),
            None => error(
                404,
                "NotFoundError",
                &format!("Secret with name '{key}' not found"),
            ),
        }
    }

    fn list(&self, req: &Request, folder: &str) -> Reply {
        let with_imports = req.query("include_imports") == Some("true");
        let (secrets, imports) = match folder {
            "/" => (vec![raw("API_KEY", "root-key", 1)], vec![]),
            "/backend/db" => (
                vec![raw("DB_PASSWORD", VALUE, 2), raw("DB_USER", "app", 1)],
                vec![
                    json!({"secretPath": "/shared", "environment": "prod", "folderId": "f-shared",
                            "secrets": [raw("SHARED_URL", "https://shared.internal", 1), raw("DB_USER", "imported-user", 1)]}),
                ],
            ),
            _ => (vec![], vec![]),
        };
        let imports = if with_imports { imports } else { vec![] };
        Reply::json(200, json!({"secrets": secrets, "imports": imports}))
    }
}

struct Setup {
    fake: Fake,
    infisical: Arc<Infisical>,
    store: Arc<dyn Store>,
    dir: tempfile::TempDir,
}

async fn setup(lifetime: u64, auth: &str) -> Setup {
    let infisical = Arc::new(Infisical::default());
    infisical.lifetime.store(lifetime, Ordering::SeqCst);
    *infisical.service_token.lock().unwrap() = "st.service-token-1.hunter2".into();
    let state = infisical.clone();
    let fake = Fake::start(move |req| state.handle(req)).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("client-secret"), CLIENT_SECRET).unwrap();
    std::fs::write(dir.path().join("sa-token"), SA_JWT).unwrap();
    std::fs::write(dir.path().join("service-token"), "st.service-token-1.hunter2\n").unwrap();
    let yaml = format!(
        "stores:\n  - name: infisical\n    infisical:\n      apiUrl: {}/\n      projectId: proj-1\n      environment: prod\n      auth:\n        {auth}\n",
        fake.url
    );
    let config = Config::from_yaml(&yaml, "test").unwrap();
    let store = build_store(&config.stores[0], dir.path(), None).await.unwrap();
    Setup {
        fake,
        infisical,
        store,
        dir,
    }
}

const UNIVERSAL: &str = "universalAuth: {clientId: client-1, clientSecret: {file: client-secret}}";

#[tokio::test]
async fn universal_auth_reads_secrets_by_folder_key_and_version() {
    let s = setup(7200, UNIVERSAL).await;
    let answers = s
        .store
        .fetch(
            &[
                SecretLocator::new("API_KEY", None),
                SecretLocator::new("backend/db/DB_PASSWORD", None),
                SecretLocator::new("backend/db/DB_PASSWORD", Some("1".into())),
                SecretLocator::new("backend/db/CONFIG", None),
            ],
            &sesame::stores::RequestLimit::default(),
        )
        .await;
    let answers: Vec<SecretData> = answers.into_iter().map(Result::unwrap).collect();
    assert_eq!(answers[0].get(None).unwrap().expose(), b"root-key");
    assert_eq!(answers[1].get(None).unwrap().expose(), VALUE.as_bytes());
    assert_eq!(answers[2].get(None).unwrap().expose(), b"old-password");
    assert_eq!(answers[3].get(Some("host")).unwrap().expose(), b"db.internal");

    let logins = s.fake.requests_to("/api/v1/auth/universal-auth/login");
    assert_eq!(logins.len(), 1);
    assert_eq!(logins[0].header("content-type"), Some("application/json"));
    assert_eq!(
        logins[0].json(),
        json!({"clientId": "client-1", "clientSecret": CLIENT_SECRET})
    );
    let reads = s.fake.requests_to("/api/v3/secrets/raw/");
    assert_eq!(reads.len(), 4);
    for r in &reads {
        assert_eq!(r.query("workspaceId"), Some("proj-1"));
        assert_eq!(r.query("environment"), Some("prod"));
        assert_eq!(r.bearer(), Some("eyJhbGciOiJIUzI1NiJ9.identity-token-1"));
    }
    let root = reads.iter().find(|r| r.path.ends_with("/API_KEY")).unwrap();
    assert_eq!(root.query("secretPath"), Some("/"));
    let versioned = reads.iter().find(|r| r.query("version").is_some()).unwrap();
    assert_eq!(versioned.path, "/api/v3/secrets/raw/DB_PASSWORD");
    assert_eq!(versioned.query("secretPath"), Some("/backend/db"));
    assert_eq!(versioned.query("version"), Some("1"));
}

#[tokio::test]
async fn a_folder_reference_lists_the_folder_with_its_imports() {
    let s = setup(7200, UNIVERSAL).await;
    let folder = fetch(&s.store, "backend/db/@all", None).await.unwrap();
    let properties = folder.properties().unwrap();
    let keys: Vec<&str> = properties.keys().map(String::as_str).collect();
    assert_eq!(keys, ["DB_PASSWORD", "DB_USER", "SHARED_URL"]);
    // The folder's own secret wins over the imported one of the same key.
    assert_eq!(properties["DB_USER"].expose(), b"app");
    assert_eq!(properties["SHARED_URL"].expose(), b"https://shared.internal");
    let list = s.fake.requests_to("/api/v3/secrets/raw").pop().unwrap();
    assert_eq!(list.path, "/api/v3/secrets/raw");
    assert_eq!(list.query("secretPath"), Some("/backend/db"));
    assert_eq!(list.query("include_imports"), Some("true"));

    let root = fetch(&s.store, "@all", None).await.unwrap();
    assert_eq!(root.get(Some("API_KEY")).unwrap().expose(), b"root-key");
    assert_eq!(
        s.fake
            .requests_to("/api/v3/secrets/raw")
            .pop()
            .unwrap()
            .query("secretPath"),
        Some("/")
    );
    // An empty or absent folder is not found; folders have no versions.
    assert_eq!(
        fetch(&s.store, "nowhere/@all", None).await,
        Err(StoreError::NotFound)
    );
    assert!(matches!(
        fetch(&s.store, "backend/db/@all", Some("2")).await,
        Err(StoreError::InvalidRequest(_))
    ));
}

#[tokio::test]
async fn kubernetes_auth_signs_in_with_the_service_account_token() {
    let s = setup(
        7200,
        "kubernetesAuth: {identityId: identity-1, tokenFile: sa-token}",
    )
    .await;
    assert_eq!(
        fetch(&s.store, "API_KEY", None)
            .await
            .unwrap()
            .get(None)
            .unwrap()
            .expose(),
        b"root-key"
    );
    let logins = s.fake.requests_to("/api/v1/auth/kubernetes-auth/login");
    assert_eq!(logins.len(), 1);
    assert_eq!(
        logins[0].json(),
        json!({"identityId": "identity-1", "jwt": SA_JWT})
    );
    assert!(s.store.check().await.is_ok());
}

#[tokio::test]
async fn a_service_token_is_sent_as_is_and_reread_when_refused() {
    let s = setup(7200, "serviceToken: {token: {file: service-token}}").await;
    assert!(fetch(&s.store, "API_KEY", None).await.is_ok());
    assert_eq!(s.fake.requests()[0].bearer(), Some("st.service-token-1.hunter2"));
    // Rotated: the old token is refused (401), the file holds the new one.
    *s.infisical.service_token.lock().unwrap() = "st.service-token-2.hunter2".into();
    std::fs::write(s.dir.path().join("service-token"), "st.service-token-2.hunter2").unwrap();
    assert!(fetch(&s.store, "API_KEY", None).await.is_ok());
    let bearers: Vec<String> = s
        .fake
        .requests()
        .iter()
        .filter_map(|r| r.bearer().map(str::to_owned))
        .collect();
    assert_eq!(
        bearers,
        [
            "st.service-token-1.hunter2",
            "st.service-token-1.hunter2",
            "st.service-token-2.hunter2"
        ]
    );
    assert!(
        s.fake.requests_to("/api/v1/auth/").is_empty(),
        "no login with a service token"
    );
}

#[tokio::test]
async fn missing_and_forbidden_secrets_map_to_classes() {
    let s = setup(7200, UNIVERSAL).await;
    assert_eq!(
        fetch(&s.store, "backend/db/NOPE", None).await,
        Err(StoreError::NotFound)
    );
    assert_eq!(
        fetch(&s.store, "backend/db/DB_PASSWORD", Some("9")).await,
        Err(StoreError::VersionNotFound)
    );
    let e = fetch(&s.store, "backend/db/FORBIDDEN", None).await.unwrap_err();
    assert_eq!(e.class(), "unauthorised");
    assert!(e.to_string().contains("PermissionDenied"), "{e}");
    assert_hidden(&e.to_string(), &[VALUE]);
    assert!(matches!(
        fetch(&s.store, "API_KEY", Some("latest")).await,
        Err(StoreError::InvalidRequest(_))
    ));
}

#[tokio::test]
async fn an_expired_token_is_replaced_once() {
    let s = setup(7200, UNIVERSAL).await;
    fetch(&s.store, "API_KEY", None).await.unwrap();
    // Infisical answers 403 TokenError for an expired access token.
    s.infisical.expire_all();
    assert!(fetch(&s.store, "API_KEY", None).await.is_ok());
    assert_eq!(s.infisical.issued.load(Ordering::SeqCst), 2);

    s.fake.clear_log();
    for _ in 0..3 {
        s.fake.push_reply(
            "/api/v3/",
            error(401, "UnauthorizedError", "Failed to authenticate"),
        );
    }
    let e = fetch(&s.store, "API_KEY", None).await.unwrap_err();
    assert_eq!(e.class(), "unauthorised");
    assert_eq!(s.fake.requests_to("/api/v3/").len(), 2);
    assert_eq!(s.fake.requests_to("/api/v1/auth/").len(), 1);
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried() {
    let s = setup(7200, UNIVERSAL).await;
    s.fake.push_reply(
        "/api/v3/",
        error(
            429,
            "RateLimitError",
            "Rate limit exceeded. Please try again in 1 seconds",
        ),
    );
    s.fake.push_reply(
        "/api/v3/",
        error(500, "InternalServerError", "Something went wrong"),
    );
    assert!(fetch(&s.store, "API_KEY", None).await.is_ok());
    assert_eq!(s.fake.requests_to("/api/v3/").len(), 3);
    for _ in 0..3 {
        s.fake
            .push_reply("/api/v3/", error(429, "RateLimitError", "Rate limit exceeded"));
    }
    assert_eq!(fetch(&s.store, "API_KEY", None).await, Err(StoreError::Throttled));
    for _ in 0..3 {
        s.fake
            .push_reply("/api/v3/", error(504, "GatewayTimeoutError", "timeout"));
    }
    assert_eq!(
        fetch(&s.store, "API_KEY", None).await.unwrap_err().class(),
        "unreachable"
    );
    let cold = setup(7200, UNIVERSAL).await;
    cold.fake.push_reply(
        "/api/v1/auth/",
        error(429, "RateLimitError", "Rate limit exceeded"),
    );
    assert!(fetch(&cold.store, "API_KEY", None).await.is_ok());
    assert_eq!(cold.fake.requests_to("/api/v1/auth/").len(), 2);
}

#[tokio::test]
async fn the_token_is_refreshed_in_the_background_before_it_expires() {
    let s = setup(2, UNIVERSAL).await;
    fetch(&s.store, "API_KEY", None).await.unwrap();
    // The store's upkeep, as `serve` runs it.
    let _upkeep = s.store.upkeep().map(tokio::spawn);
    tokio::time::sleep(Duration::from_millis(1900)).await;
    assert_eq!(s.infisical.issued.load(Ordering::SeqCst), 2);
    assert_eq!(s.fake.requests_to("/api/v3/").len(), 1);
    s.fake.clear_log();
    fetch(&s.store, "API_KEY", None).await.unwrap();
    assert!(s.fake.requests_to("/api/v1/").is_empty());
    assert_eq!(
        s.fake.requests()[0].bearer(),
        Some("eyJhbGciOiJIUzI1NiJ9.identity-token-2")
    );
}

#[tokio::test]
async fn errors_and_debug_never_show_values_secrets_or_tokens() {
    let s = setup(7200, UNIVERSAL).await;
    let mut shown = String::new();
    for (path, version) in [("backend/db/@all", None), ("backend/db/CONFIG", None)] {
        shown.push_str(&format!("{:?} ", fetch(&s.store, path, version).await.unwrap()));
    }
    for path in ["backend/db/FORBIDDEN", "backend/db/NOPE"] {
        let e = fetch(&s.store, path, None).await.unwrap_err();
        shown.push_str(&format!(" {e} {e:?}"));
    }
    // A wrong client secret: the login error names the class and code only
    // (the fake's message quotes the secret it was sent).
    std::fs::write(s.dir.path().join("client-secret"), "wrong-hunter2").unwrap();
    s.infisical.expire_all();
    let e = fetch(&s.store, "API_KEY", None).await.unwrap_err();
    assert_eq!(e.class(), "unauthorised");
    assert!(e.to_string().contains("UnauthorizedError"), "{e}");
    shown.push_str(&format!(" {e} {e:?}"));
    assert_hidden(
        &shown,
        &[
            VALUE,
            CLIENT_SECRET,
            "wrong-hunter2",
            "identity-token",
            "root-key",
        ],
    );
    assert!(shown.contains("DB_PASSWORD"), "key names may show: {shown}");
}
