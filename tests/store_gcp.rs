//! GCP Secret Manager store against an HTTP fake. The fake follows:
//! - Secret Manager REST v1 `projects.secrets.versions.access`
//!   (`GET /v1/{name=projects/*/secrets/*/versions/*}:access`,
//!   `AccessSecretVersionResponse` with `payload.data` base64 and
//!   `payload.dataCrc32c` as an int64 string), errors as `google.rpc.Status`
//!   JSON (`{"error":{"code","message","status"}}`, AIP-193);
//! - the Compute Engine / GKE metadata server
//!   (`/computeMetadata/v1/instance/service-accounts/default/token` and
//!   `/computeMetadata/v1/project/project-id`, request header
//!   `Metadata-Flavor: Google`);
//! - "Using OAuth 2.0 for Server to Server Applications": an RS256 JWT
//!   (`iss`, `scope`, `aud`, `iat`, `exp`) posted to the key's `token_uri`
//!   with `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` (RFC 7523),
//!   OAuth errors as `{"error","error_description"}` (RFC 6749 §5.2).
#![cfg(feature = "gcp")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cloud_fake;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine;
use cloud_fake::{assert_hidden, fetch, Fake, Reply, Request};
use serde_json::json;
use sesame::config::Config;
use sesame::stores::{build_store, SecretLocator, Store, StoreError};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
const PASSWORD: &str = "hunter2-gcp";

/// What the fake Google knows: issued tokens, their lifetime, the key it
/// trusts, and the JWT claims it received.
#[derive(Default)]
struct Google {
    issued: AtomicU32,
    valid: Mutex<HashSet<String>>,
    lifetime: AtomicU64,
    public_key: Mutex<Option<Vec<u8>>>,
    url: OnceLock<String>,
    claims: Mutex<Vec<serde_json::Value>>,
    reject_grants: AtomicBool,
}

impl Google {
    fn issue(&self) -> serde_json::Value {
        let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        let token = format!("ya29.fake-token-{n}");
        self.valid.lock().unwrap().insert(token.clone());
        json!({"access_token": token, "expires_in": self.lifetime.load(Ordering::SeqCst), "token_type": "Bearer"})
    }

    fn revoke_all(&self) {
        self.valid.lock().unwrap().clear();
    }

    fn handle(&self, req: &Request) -> Reply {
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/computeMetadata/v1/instance/service-accounts/default/token") => {
                if req.header("metadata-flavor") != Some("Google") {
                    return Reply::text(403, "Missing Metadata-Flavor:Google header.");
                }
                Reply::json(200, self.issue()).with_header("Metadata-Flavor", "Google")
            }
            ("GET", "/computeMetadata/v1/project/project-id") => {
                if req.header("metadata-flavor") != Some("Google") {
                    return Reply::text(403, "Missing Metadata-Flavor:Google header.");
                }
                Reply::text(200, "meta-project").with_header("Metadata-Flavor", "Google")
            }
            ("POST", "/token") => self.token_endpoint(req),
            ("GET", path) if path.starts_with("/v1/") => self.access(req, &path[4..]),
            _ => Reply::json(
                404,
                json!({"error": {"code": 404, "message": "no such route", "status": "NOT_FOUND"}}),
            ),
        }
    }

    fn token_endpoint(&self, req: &Request) -> Reply {
        let invalid = |description: &str| {
            Reply::json(
                400,
                json!({"error": "invalid_grant", "error_description": description}),
            )
        };
        if req.form("grant_type").as_deref() != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
            return Reply::json(400, json!({"error": "unsupported_grant_type"}));
        }
        if self.reject_grants.load(Ordering::SeqCst) {
            return invalid("Invalid JWT Signature; key hunter2-gcp rejected.");
        }
        let Some(jwt) = req.form("assertion") else {
            return invalid("no assertion");
        };
        let parts: Vec<&str> = jwt.split('.').collect();
        if parts.len() != 3 {
            return invalid("malformed JWT");
        }
        let header: serde_json::Value = serde_json::from_slice(&B64URL.decode(parts[0]).unwrap()).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(&B64URL.decode(parts[1]).unwrap()).unwrap();
        let signature = B64URL.decode(parts[2]).unwrap();
        let public_key = self.public_key.lock().unwrap().clone().unwrap();
        let verified =
            ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, public_key)
                .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
                .is_ok();
        if !verified || header["alg"] != "RS256" {
            return invalid("Invalid JWT Signature.");
        }
        self.claims
            .lock()
            .unwrap()
            .push(json!({"header": header, "claims": claims}));
        Reply::json(200, self.issue())
    }

    fn access(&self, req: &Request, name: &str) -> Reply {
        let authorised = req
            .bearer()
            .is_some_and(|t| self.valid.lock().unwrap().contains(t));
        if !authorised {
            return Reply::json(
                401,
                json!({"error": {"code": 401, "message": "Request had invalid authentication credentials. Expected OAuth 2 access token.", "status": "UNAUTHENTICATED"}}),
            )
            .with_header("WWW-Authenticate", "Bearer realm=\"https://accounts.google.com/\", error=\"invalid_token\"");
        }
        let Some((secret, version)) = name
            .strip_suffix(":access")
            .and_then(|n| n.split_once("/versions/"))
        else {
            return Reply::json(
                404,
                json!({"error": {"code": 404, "message": "Not found", "status": "NOT_FOUND"}}),
            );
        };
        let versions: Vec<Vec<u8>> = match secret {
            "projects/meta-project/secrets/db-url" => {
                vec![b"postgres://v1".to_vec(), b"postgres://v2".to_vec()]
            }
            "projects/meta-project/secrets/db" => {
                vec![json!({"username": "app", "password": PASSWORD, "port": 5432})
                    .to_string()
                    .into_bytes()]
            }
            "projects/meta-project/secrets/blob" => vec![vec![0xff, 0xfe, 0x00, 0x01]],
            "projects/other/secrets/shared" => vec![b"shared-value".to_vec()],
            "projects/meta-project/secrets/gone" => {
                return Reply::json(
                    400,
                    json!({"error": {"code": 400, "message": format!("Secret Version [{secret}/versions/1] is in DESTROYED state."), "status": "FAILED_PRECONDITION"}}),
                )
            }
            "projects/meta-project/secrets/forbidden" => {
                return Reply::json(
                    403,
                    json!({"error": {"code": 403, "message": format!("Permission 'secretmanager.versions.access' denied ({PASSWORD})"), "status": "PERMISSION_DENIED"}}),
                )
            }
            _ => {
                return Reply::json(
                    404,
                    json!({"error": {"code": 404, "message": format!("Secret [{secret}] not found or has no versions."), "status": "NOT_FOUND"}}),
                )
            }
        };
        let index = match version {
            "latest" => versions.len(),
            n => n.parse().unwrap_or(0),
        };
        let Some(data) = index.checked_sub(1).and_then(|i| versions.get(i)) else {
            return Reply::json(
                404,
                json!({"error": {"code": 404, "message": format!("Secret Version [{secret}/versions/{version}] not found."), "status": "NOT_FOUND"}}),
            );
        };
        let number = secret.replace("meta-project", "123456789");
        Reply::json(
            200,
            json!({"name": format!("{number}/versions/{index}"), "payload": {"data": B64.encode(data), "dataCrc32c": crc32c(data).to_string()}}),
        )
    }
}

/// CRC-32C bit by bit: the test's own oracle for `dataCrc32c`.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

struct Setup {
    fake: Fake,
    google: Arc<Google>,
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

/// A fake and a store built from YAML through the normal config path;
/// `extra` adds lines to the `gcp` section.
async fn setup(lifetime: u64, extra: &str, files: &[(&str, &str)], public_key: Option<Vec<u8>>) -> Setup {
    let google = Arc::new(Google::default());
    google.lifetime.store(lifetime, Ordering::SeqCst);
    *google.public_key.lock().unwrap() = public_key;
    let handler_state = google.clone();
    let fake = Fake::start(move |req| handler_state.handle(req)).await;
    google.url.set(fake.url.clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content.replace("{url}", &fake.url)).unwrap();
    }
    let host = fake.url.trim_start_matches("http://");
    let yaml = format!(
        "stores:\n  - name: gcp\n    gcp:\n      endpoint: {}\n      metadataHost: \"{host}\"\n{extra}",
        fake.url
    );
    let config = Config::from_yaml(&yaml, "test").unwrap();
    let store = build_store(&config.stores[0], dir.path(), None).await.unwrap();
    Setup {
        fake,
        google,
        store,
        _dir: dir,
    }
}

#[tokio::test]
async fn reads_text_json_binary_and_versions_with_a_metadata_token() {
    let s = setup(3600, "", &[], None).await;
    let answers = s
        .store
        .fetch(
            &[
                SecretLocator::new("db-url", None),
                SecretLocator::new("db-url", Some("1".into())),
                SecretLocator::new("db", None),
                SecretLocator::new("blob", None),
                SecretLocator::new("projects/other/secrets/shared", None),
            ],
            &sesame::stores::RequestLimit::default(),
        )
        .await;
    let answers: Vec<_> = answers.into_iter().map(Result::unwrap).collect();
    assert_eq!(answers[0].get(None).unwrap().expose(), b"postgres://v2");
    assert_eq!(answers[1].get(None).unwrap().expose(), b"postgres://v1");
    assert_eq!(
        answers[2].get(Some("password")).unwrap().expose(),
        PASSWORD.as_bytes()
    );
    assert_eq!(answers[2].get(Some("port")).unwrap().expose(), b"5432");
    assert_eq!(answers[3].get(None).unwrap().expose(), &[0xff, 0xfe, 0x00, 0x01]);
    assert_eq!(answers[4].get(None).unwrap().expose(), b"shared-value");

    // One token for the whole batch, asked with the metadata header.
    let token_requests = s.fake.requests_to("/computeMetadata/v1/instance");
    assert_eq!(token_requests.len(), 1);
    assert_eq!(token_requests[0].header("metadata-flavor"), Some("Google"));
    // The project of short references came from the metadata server.
    assert_eq!(
        s.fake.requests_to("/computeMetadata/v1/project/project-id").len(),
        1
    );
    let mut paths: Vec<String> = s.fake.requests_to("/v1/").into_iter().map(|r| r.path).collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/v1/projects/meta-project/secrets/blob/versions/latest:access",
            "/v1/projects/meta-project/secrets/db-url/versions/1:access",
            "/v1/projects/meta-project/secrets/db-url/versions/latest:access",
            "/v1/projects/meta-project/secrets/db/versions/latest:access",
            "/v1/projects/other/secrets/shared/versions/latest:access",
        ]
    );
    for request in s.fake.requests_to("/v1/") {
        assert_eq!(request.header("authorization"), Some("Bearer ya29.fake-token-1"));
    }
    assert!(s.store.check().await.is_ok());
}

#[tokio::test]
async fn missing_secrets_versions_and_permissions_map_to_classes() {
    let s = setup(3600, "      project: meta-project\n", &[], None).await;
    assert_eq!(fetch(&s.store, "nope", None).await, Err(StoreError::NotFound));
    assert_eq!(
        fetch(&s.store, "db-url", Some("9")).await,
        Err(StoreError::VersionNotFound)
    );
    assert_eq!(
        fetch(&s.store, "gone", Some("1")).await,
        Err(StoreError::VersionNotFound)
    );
    let denied = fetch(&s.store, "forbidden", None).await.unwrap_err();
    assert_eq!(denied.class(), "unauthorised");
    assert!(denied.to_string().contains("PERMISSION_DENIED"), "{denied}");
    assert_hidden(&denied.to_string(), &[PASSWORD]);
    // Malformed references never reach the server.
    let before = s.fake.requests_to("/v1/").len();
    for bad in ["a/b", "projects/p/secrets/s/versions/1", "projects/P!/secrets/s"] {
        assert!(
            matches!(
                fetch(&s.store, bad, None).await,
                Err(StoreError::InvalidRequest(_))
            ),
            "{bad}"
        );
    }
    assert!(matches!(
        fetch(&s.store, "db", Some("../x")).await,
        Err(StoreError::InvalidRequest(_))
    ));
    assert_eq!(s.fake.requests_to("/v1/").len(), before);
    // The configured project is used; the metadata server is not asked for one.
    assert!(s.fake.requests_to("/computeMetadata/v1/project").is_empty());
}

#[tokio::test]
async fn a_rejected_token_is_replaced_once() {
    let s = setup(3600, "      project: meta-project\n", &[], None).await;
    fetch(&s.store, "db-url", None).await.unwrap();
    // The token is revoked server-side: the store sees 401, obtains a new
    // token and succeeds.
    s.google.revoke_all();
    assert!(fetch(&s.store, "db-url", None).await.is_ok());
    assert_eq!(s.google.issued.load(Ordering::SeqCst), 2);
    let last = s.fake.requests_to("/v1/").pop().unwrap();
    assert_eq!(last.bearer(), Some("ya29.fake-token-2"));

    // When every token is refused, it asks once more and then gives up.
    s.fake.clear_log();
    for _ in 0..3 {
        s.fake.push_reply(
            "/v1/",
            Reply::json(401, json!({"error": {"code": 401, "message": "Request had invalid authentication credentials.", "status": "UNAUTHENTICATED"}})),
        );
    }
    let e = fetch(&s.store, "db-url", None).await.unwrap_err();
    assert_eq!(e.class(), "unauthorised");
    assert!(e.to_string().contains("UNAUTHENTICATED"), "{e}");
    assert_eq!(s.fake.requests_to("/v1/").len(), 2);
    assert_eq!(s.fake.requests_to("/computeMetadata/v1/instance").len(), 1);
}

#[tokio::test]
async fn throttling_and_server_errors_are_retried() {
    let s = setup(3600, "      project: meta-project\n", &[], None).await;
    s.fake.push_reply(
        "/v1/",
        Reply::json(
            429,
            json!({"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}}),
        ),
    );
    s.fake.push_reply(
        "/v1/",
        Reply::json(503, json!({"error": {"code": 503, "message": "The service is currently unavailable.", "status": "UNAVAILABLE"}})),
    );
    assert_eq!(
        fetch(&s.store, "db-url", None)
            .await
            .unwrap()
            .get(None)
            .unwrap()
            .expose(),
        b"postgres://v2"
    );
    assert_eq!(s.fake.requests_to("/v1/").len(), 3);

    // Past the attempts, the failure class is what the store said last.
    for _ in 0..3 {
        s.fake.push_reply(
            "/v1/",
            Reply::json(
                429,
                json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}}),
            ),
        );
    }
    assert_eq!(fetch(&s.store, "db-url", None).await, Err(StoreError::Throttled));
    for _ in 0..3 {
        s.fake.push_reply(
            "/v1/",
            Reply::json(500, json!({"error": {"code": 500, "status": "INTERNAL"}})),
        );
    }
    assert_eq!(
        fetch(&s.store, "db-url", None).await.unwrap_err().class(),
        "unreachable"
    );
    // A 5xx from the metadata server is retried too.
    let cold = setup(3600, "      project: meta-project\n", &[], None).await;
    cold.fake
        .push_reply("/computeMetadata/", Reply::text(503, "busy"));
    assert!(fetch(&cold.store, "db-url", None).await.is_ok());
    assert_eq!(cold.fake.requests_to("/computeMetadata/").len(), 2);
}

#[tokio::test]
async fn the_token_is_refreshed_in_the_background_before_it_expires() {
    // A two-second token is due for refresh two thirds into its life.
    let s = setup(2, "      project: meta-project\n", &[], None).await;
    fetch(&s.store, "db-url", None).await.unwrap();
    // The store's upkeep, as `serve` runs it.
    let _upkeep = s.store.upkeep().map(tokio::spawn);
    tokio::time::sleep(Duration::from_millis(1900)).await;
    // Refreshed without any secret request asking for it.
    assert_eq!(s.google.issued.load(Ordering::SeqCst), 2);
    assert_eq!(s.fake.requests_to("/v1/").len(), 1);
    s.fake.clear_log();
    fetch(&s.store, "db-url", None).await.unwrap();
    // The request path used the new token and asked for none.
    assert!(s.fake.requests_to("/computeMetadata/").is_empty());
    assert_eq!(s.fake.requests_to("/v1/")[0].bearer(), Some("ya29.fake-token-2"));
}

/// `openssl` makes the test's RSA key; ring (the store's signer) cannot
/// generate RSA keys.
fn generate_rsa_key() -> Option<String> {
    let output = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
        .output();
    match output {
        Ok(o) if o.status.success() => Some(String::from_utf8(o.stdout).unwrap()),
        _ if std::env::var("SESAME_REQUIRE_TOOLS").as_deref() == Ok("1") => {
            panic!("openssl is required to generate the test RSA key (SESAME_REQUIRE_TOOLS=1)")
        }
        _ => {
            println!("skipping: openssl not found on PATH");
            None
        }
    }
}

fn public_key_of(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).unwrap();
    let key = ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).unwrap();
    ring::signature::KeyPair::public_key(&key).as_ref().to_vec()
}

#[tokio::test]
async fn a_service_account_key_signs_a_jwt_exchanged_at_its_token_uri() {
    let Some(pem) = generate_rsa_key() else { return };
    let key = json!({
        "type": "service_account",
        "project_id": "meta-project",
        "private_key_id": "key-1",
        "private_key": pem,
        "client_email": "sesame@meta-project.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "{url}/token",
    });
    let s = setup(
        3600,
        "      credentials: {file: key.json}\n",
        &[("key.json", &key.to_string())],
        Some(public_key_of(&pem)),
    )
    .await;
    let data = fetch(&s.store, "db", None).await.unwrap();
    assert_eq!(data.get(Some("username")).unwrap().expose(), b"app");
    // The project came from the key; the metadata server was never asked.
    assert!(s.fake.requests_to("/computeMetadata/").is_empty());

    let seen = s.google.claims.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "the fake verified one signed JWT");
    let (header, claims) = (&seen[0]["header"], &seen[0]["claims"]);
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["kid"], "key-1");
    assert_eq!(claims["iss"], "sesame@meta-project.iam.gserviceaccount.com");
    assert_eq!(claims["aud"], format!("{}/token", s.fake.url));
    assert_eq!(claims["scope"], "https://www.googleapis.com/auth/cloud-platform");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let iat = claims["iat"].as_u64().unwrap();
    assert!(iat.abs_diff(now) < 60);
    assert_eq!(claims["exp"].as_u64().unwrap() - iat, 3600);
    let exchange = &s.fake.requests_to("/token")[0];
    assert_eq!(
        exchange.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );

    // A refused grant is unauthorised, naming the OAuth code only.
    s.google.reject_grants.store(true, Ordering::SeqCst);
    s.google.revoke_all();
    let e = fetch(&s.store, "db", None).await.unwrap_err();
    assert_eq!(e.class(), "unauthorised");
    assert!(e.to_string().contains("invalid_grant"), "{e}");
    assert_hidden(&format!("{e} {e:?}"), &[PASSWORD, "BEGIN PRIVATE KEY", "ya29."]);
}

#[tokio::test]
async fn errors_and_debug_never_show_values_keys_or_tokens() {
    let dir_key = json!({"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----\nnot-a-key-hunter2\n-----END PRIVATE KEY-----\n", "client_email": "x@y", "token_uri": "{url}/token"});
    let s = setup(
        3600,
        "      project: meta-project\n      credentials: {file: key.json}\n",
        &[("key.json", &dir_key.to_string())],
        None,
    )
    .await;
    let e = fetch(&s.store, "db", None).await.unwrap_err();
    assert_eq!(e.class(), "unauthorised");
    assert_hidden(&format!("{e} {e:?}"), &["hunter2", "not-a-key"]);
    assert!(
        s.fake.requests_to("/token").is_empty(),
        "an unusable key is not sent anywhere"
    );

    let s = setup(3600, "      project: meta-project\n", &[], None).await;
    let data = fetch(&s.store, "db", None).await.unwrap();
    let mut shown = format!("{data:?}");
    for (path, version) in [("forbidden", None), ("nope", None), ("db-url", Some("7"))] {
        let e = fetch(&s.store, path, version).await.unwrap_err();
        shown.push_str(&format!(" {e} {e:?}"));
    }
    s.google.revoke_all();
    s.fake.push_reply(
        "/computeMetadata/v1/instance",
        Reply::json(500, json!({"error": "ya29.leaked"})),
    );
    s.fake.push_reply(
        "/computeMetadata/v1/instance",
        Reply::json(500, json!({"error": "ya29.leaked"})),
    );
    s.fake.push_reply(
        "/computeMetadata/v1/instance",
        Reply::json(500, json!({"error": "ya29.leaked"})),
    );
    let e = fetch(&s.store, "db", None).await.unwrap_err();
    shown.push_str(&format!(" {e} {e:?}"));
    assert_hidden(&shown, &[PASSWORD, "ya29."]);
    assert!(shown.contains("password"), "property names may show: {shown}");
}

// ---------------------------------------------------------------------
// Workload identity federation and impersonation. The fake below follows:
// - the Security Token Service's token exchange, "Method: token"
//   (https://cloud.google.com/iam/docs/reference/sts/rest/v1/TopLevel/token):
//   `POST /v1/token` with a form of `grant_type`
//   (`urn:ietf:params:oauth:grant-type:token-exchange`), `audience` (the
//   workload identity provider), `scope`, `requested_token_type`
//   (`urn:ietf:params:oauth:token-type:access_token`), `subject_token` and
//   `subject_token_type`; answers `{access_token, issued_token_type,
//   token_type, expires_in}`, errors `{error, error_description}`;
// - IAM Service Account Credentials "Method:
//   projects.serviceAccounts.generateAccessToken"
//   (https://cloud.google.com/iam/docs/reference/credentials/rest/v1/projects.serviceAccounts/generateAccessToken):
//   `POST /v1/projects/-/serviceAccounts/{email}:generateAccessToken` with
//   the caller's bearer token and `{scope: [...], lifetime: "3600s"}`;
//   answers `{accessToken, expireTime}` (RFC 3339), errors `google.rpc.Status`;
// - `external_account` credential configurations (AIP-4117, "Workload
//   identity federation with other providers": file, URL with `headers`
//   and `format`, and executable sources with their JSON answer).

const PROVIDER: &str =
    "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/pool/providers/k8s";
const PRINCIPAL: &str =
    "principal://iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/pool/subject/";
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// What the fake federation knows: which subject token is which external
/// identity, who may impersonate which service account, and who may read
/// which secret.
#[derive(Default)]
struct Federation {
    /// subject token → external subject.
    subjects: Mutex<HashMap<String, String>>,
    /// issued token → the principal or service account it stands for.
    tokens: Mutex<HashMap<String, String>>,
    /// (principal, service account) pairs with `roles/iam.workloadIdentityUser`
    /// (or `serviceAccountTokenCreator`).
    may_impersonate: Mutex<HashSet<(String, String)>>,
    /// secret → who may read it.
    readers: Mutex<HashMap<String, String>>,
    issued: AtomicU32,
}

impl Federation {
    fn issue(&self, prefix: &str, who: &str) -> String {
        let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        let token = format!("{prefix}-{n}");
        self.tokens.lock().unwrap().insert(token.clone(), who.to_owned());
        token
    }

    fn caller(&self, req: &Request) -> Option<String> {
        req.bearer()
            .and_then(|t| self.tokens.lock().unwrap().get(t).cloned())
    }

    fn handle(&self, req: &Request) -> Reply {
        let rpc = |code: u16, status: &str, message: &str| {
            Reply::json(
                code,
                json!({"error": {"code": code, "message": message, "status": status}}),
            )
        };
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/computeMetadata/v1/instance/service-accounts/default/token") => {
                let token = self.issue("ya29.metadata", "sesame@proj.iam.gserviceaccount.com");
                Reply::json(
                    200,
                    json!({"access_token": token, "expires_in": 3600, "token_type": "Bearer"}),
                )
            }
            ("GET", "/subject") => {
                // A URL source, e.g. a local token server that wants a header.
                if req.header("metadata") != Some("True") {
                    return Reply::text(400, "missing header");
                }
                Reply::json(200, json!({"value": "url-subject-token", "other": "x"}))
            }
            ("POST", "/v1/token") => self.exchange(req),
            ("POST", path) if path.ends_with(":generateAccessToken") => {
                let Some(email) = path
                    .strip_prefix("/v1/projects/-/serviceAccounts/")
                    .and_then(|p| p.strip_suffix(":generateAccessToken"))
                else {
                    return rpc(404, "NOT_FOUND", "no such route");
                };
                let Some(caller) = self.caller(req) else {
                    return rpc(
                        401,
                        "UNAUTHENTICATED",
                        "Request had invalid authentication credentials.",
                    );
                };
                let body = req.json();
                if body["scope"] != json!(["https://www.googleapis.com/auth/cloud-platform"])
                    || !body["lifetime"].as_str().is_some_and(|l| l.ends_with('s'))
                {
                    return rpc(400, "INVALID_ARGUMENT", "bad request body");
                }
                let allowed = self
                    .may_impersonate
                    .lock()
                    .unwrap()
                    .contains(&(caller, email.to_owned()));
                if !allowed {
                    return rpc(
                        403,
                        "PERMISSION_DENIED",
                        "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).",
                    );
                }
                let token = self.issue("ya29.impersonated", email);
                let expires = k8s_openapi::jiff::Timestamp::now()
                    .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(3600))
                    .unwrap();
                Reply::json(
                    200,
                    json!({"accessToken": token, "expireTime": expires.to_string()}),
                )
            }
            ("GET", path) if path.starts_with("/v1/projects/proj/secrets/") => {
                let Some(caller) = self.caller(req) else {
                    return rpc(
                        401,
                        "UNAUTHENTICATED",
                        "Request had invalid authentication credentials.",
                    );
                };
                let secret = path
                    .trim_start_matches("/v1/projects/proj/secrets/")
                    .trim_end_matches("/versions/latest:access");
                let reader = self.readers.lock().unwrap().get(secret).cloned();
                match reader {
                    None => rpc(404, "NOT_FOUND", "Secret not found or has no versions."),
                    Some(r) if r != caller => rpc(
                        403,
                        "PERMISSION_DENIED",
                        "Permission 'secretmanager.versions.access' denied for resource.",
                    ),
                    Some(_) => {
                        let data = format!("value-of-{secret}").into_bytes();
                        Reply::json(
                            200,
                            json!({"name": format!("projects/1/secrets/{secret}/versions/1"), "payload": {"data": B64.encode(&data), "dataCrc32c": crc32c(&data).to_string()}}),
                        )
                    }
                }
            }
            _ => rpc(404, "NOT_FOUND", "no such route"),
        }
    }

    fn exchange(&self, req: &Request) -> Reply {
        let invalid = |error: &str, description: String| {
            Reply::json(400, json!({"error": error, "error_description": description}))
        };
        if req.form("grant_type").as_deref() != Some("urn:ietf:params:oauth:grant-type:token-exchange") {
            return invalid("unsupported_grant_type", "grant_type".into());
        }
        if req.form("requested_token_type").as_deref()
            != Some("urn:ietf:params:oauth:token-type:access_token")
            || req.form("scope").as_deref() != Some("https://www.googleapis.com/auth/cloud-platform")
            || req.form("audience").as_deref() != Some(PROVIDER)
        {
            return invalid("invalid_request", "bad audience, scope or requested type".into());
        }
        if req.form("subject_token_type").as_deref() != Some(JWT_TYPE) {
            return invalid("invalid_request", "subject_token_type".into());
        }
        let subject_token = req.form("subject_token").unwrap_or_default();
        let Some(subject) = self.subjects.lock().unwrap().get(&subject_token).cloned() else {
            // STS echoes what it could not verify; the store must not.
            return invalid(
                "invalid_grant",
                format!("The given subject token {subject_token} could not be verified."),
            );
        };
        let token = self.issue("ya29.federated", &format!("{PRINCIPAL}{subject}"));
        Reply::json(
            200,
            json!({"access_token": token, "issued_token_type": "urn:ietf:params:oauth:token-type:access_token", "token_type": "Bearer", "expires_in": 3600}),
        )
    }
}

struct FederationSetup {
    fake: Fake,
    fed: Arc<Federation>,
    dir: tempfile::TempDir,
}

async fn federation() -> FederationSetup {
    let fed = Arc::new(Federation::default());
    let state = fed.clone();
    let fake = Fake::start(move |req| state.handle(req)).await;
    FederationSetup {
        fake,
        fed,
        dir: tempfile::tempdir().unwrap(),
    }
}

impl FederationSetup {
    /// A store built through the config path from the `gcp` section lines.
    async fn store(&self, section: &str) -> Result<Arc<dyn Store>, String> {
        let host = self.fake.url.trim_start_matches("http://");
        let yaml = format!(
            "stores:\n  - name: gcp\n    gcp:\n      project: proj\n      endpoint: {url}\n      metadataHost: \"{host}\"\n      stsEndpoint: {url}\n      iamCredentialsEndpoint: {url}\n{section}",
            url = self.fake.url
        );
        let config = Config::from_yaml(&yaml, "test").map_err(|e| e.to_string())?;
        build_store(&config.stores[0], self.dir.path(), None)
            .await
            .map_err(|e| e.to_string())
    }

    /// The start-up error of a store that must not build.
    async fn refused(&self, section: &str) -> String {
        match self.store(section).await {
            Ok(_) => panic!("the store was built from {section}"),
            Err(e) => e,
        }
    }

    fn write(&self, name: &str, content: &str) {
        std::fs::write(
            self.dir.path().join(name),
            content.replace("{url}", &self.fake.url),
        )
        .unwrap();
    }
}

fn value(data: &sesame::stores::SecretData) -> String {
    String::from_utf8(data.get(None).unwrap().expose().to_vec()).unwrap()
}

#[tokio::test]
async fn an_external_account_file_source_is_exchanged_then_impersonated() {
    let s = federation().await;
    s.fed
        .subjects
        .lock()
        .unwrap()
        .insert("oidc-subject-token".into(), "ci-runner".into());
    s.fed.may_impersonate.lock().unwrap().insert((
        format!("{PRINCIPAL}ci-runner"),
        "reader@proj.iam.gserviceaccount.com".into(),
    ));
    s.fed
        .readers
        .lock()
        .unwrap()
        .insert("db".into(), "reader@proj.iam.gserviceaccount.com".into());
    // A token file as an OIDC provider's agent writes it, with a newline.
    s.write("subject.jwt", "oidc-subject-token\n");
    s.write(
        "wif.json",
        &json!({
            "type": "external_account",
            "audience": PROVIDER,
            "subject_token_type": JWT_TYPE,
            "token_url": "{url}/v1/token",
            "credential_source": {"file": "subject.jwt"},
            "service_account_impersonation_url": "{url}/v1/projects/-/serviceAccounts/reader@proj.iam.gserviceaccount.com:generateAccessToken",
            "service_account_impersonation": {"token_lifetime_seconds": 1800},
        })
        .to_string(),
    );
    let store = s.store("      credentials: {file: wif.json}\n").await.unwrap();
    assert_eq!(value(&fetch(&store, "db", None).await.unwrap()), "value-of-db");

    let exchange = &s.fake.requests_to("/v1/token")[0];
    assert_eq!(
        exchange.form("subject_token").as_deref(),
        Some("oidc-subject-token")
    );
    assert_eq!(exchange.form("subject_token_type").as_deref(), Some(JWT_TYPE));
    let generate = &s.fake.requests_to("/v1/projects/-/serviceAccounts/")[0];
    assert_eq!(generate.bearer(), Some("ya29.federated-1"));
    assert_eq!(generate.json()["lifetime"], "1800s");
    // Secret Manager saw the impersonated account's token, not the federated one.
    assert_eq!(
        s.fake.requests_to("/v1/projects/proj/secrets/")[0].bearer(),
        Some("ya29.impersonated-2")
    );
    // The token is cached: another read exchanges nothing.
    fetch(&store, "db", None).await.unwrap();
    assert_eq!(s.fake.requests_to("/v1/token").len(), 1);
    assert!(s.fake.requests_to("/computeMetadata/").is_empty());

    // A subject token STS refuses: its echo stays out of the error.
    s.fed.tokens.lock().unwrap().clear();
    s.write("subject.jwt", "stolen-or-stale-token");
    let e = fetch(&store, "db", None).await.unwrap_err();
    assert_eq!(e.class(), "unauthorised");
    assert!(e.to_string().contains("invalid_grant"), "{e}");
    assert_hidden(&format!("{e} {e:?}"), &["stolen-or-stale-token", "ya29."]);
}

#[tokio::test]
async fn a_url_source_with_headers_and_a_json_field_reads_with_the_federated_token() {
    let s = federation().await;
    s.fed
        .subjects
        .lock()
        .unwrap()
        .insert("url-subject-token".into(), "vm-1".into());
    // No impersonation: the federated principal itself has access.
    s.fed
        .readers
        .lock()
        .unwrap()
        .insert("db".into(), format!("{PRINCIPAL}vm-1"));
    s.write(
        "wif.json",
        &json!({
            "type": "external_account",
            "audience": PROVIDER,
            "subject_token_type": JWT_TYPE,
            "token_url": "{url}/v1/token",
            "credential_source": {
                "url": "{url}/subject",
                "headers": {"Metadata": "True"},
                "format": {"type": "json", "subject_token_field_name": "value"},
            },
        })
        .to_string(),
    );
    let store = s.store("      credentials: {file: wif.json}\n").await.unwrap();
    assert_eq!(value(&fetch(&store, "db", None).await.unwrap()), "value-of-db");
    assert_eq!(s.fake.requests_to("/subject")[0].header("metadata"), Some("True"));
    assert_eq!(
        s.fake.requests_to("/v1/token")[0]
            .form("subject_token")
            .as_deref(),
        Some("url-subject-token")
    );
    assert!(s.fake.requests_to("/v1/projects/-/").is_empty());

    // A field the answer lacks is a clear error, and nothing is exchanged.
    s.fed.tokens.lock().unwrap().clear();
    s.write(
        "wif.json",
        &json!({
            "type": "external_account",
            "audience": PROVIDER,
            "subject_token_type": JWT_TYPE,
            "token_url": "{url}/v1/token",
            "credential_source": {"url": "{url}/subject", "headers": {"Metadata": "True"}, "format": {"type": "json", "subject_token_field_name": "token"}},
        })
        .to_string(),
    );
    let e = fetch(&store, "db", None).await.unwrap_err();
    assert_eq!(e.class(), "unauthorised");
    assert!(e.to_string().contains("no such field"), "{e}");
    assert_eq!(s.fake.requests_to("/v1/token").len(), 1);
}

/// Executable sources run a command named in a file, so, as the
/// documented format requires, only where the process was started with
/// `GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1`. No other test in this
/// file reads that variable.
#[tokio::test]
async fn an_executable_source_runs_only_when_allowed() {
    let s = federation().await;
    s.fed
        .subjects
        .lock()
        .unwrap()
        .insert("exec-subject-token".into(), "job".into());
    s.fed
        .readers
        .lock()
        .unwrap()
        .insert("db".into(), format!("{PRINCIPAL}job"));
    let ran = s.dir.path().join("ran");
    let script = s.dir.path().join("token.sh");
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE $GOOGLE_EXTERNAL_ACCOUNT_INTERACTIVE\" > {}\nprintf '%s' '{{\"version\": 1, \"success\": true, \"token_type\": \"{JWT_TYPE}\", \"id_token\": \"exec-subject-token\", \"expiration_time\": {expires}}}'\n",
            ran.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    s.write(
        "wif.json",
        &json!({
            "type": "external_account",
            "audience": PROVIDER,
            "subject_token_type": JWT_TYPE,
            "token_url": "{url}/v1/token",
            "credential_source": {"executable": {"command": format!("{} --flag", script.display()), "timeout_millis": 5000}},
        })
        .to_string(),
    );
    let store = s.store("      credentials: {file: wif.json}\n").await.unwrap();
    let e = fetch(&store, "db", None).await.unwrap_err();
    assert_eq!(e.class(), "unauthorised");
    assert!(
        e.to_string()
            .contains("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1"),
        "{e}"
    );
    assert!(!ran.exists(), "the command must not run without the opt-in");

    std::env::set_var("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES", "1");
    assert_eq!(value(&fetch(&store, "db", None).await.unwrap()), "value-of-db");
    assert_eq!(
        std::fs::read_to_string(&ran).unwrap().trim(),
        format!("{PROVIDER} 0"),
        "the command is told the audience and that no one is there to answer"
    );
    assert_eq!(
        s.fake.requests_to("/v1/token")[0]
            .form("subject_token")
            .as_deref(),
        Some("exec-subject-token")
    );
}

#[tokio::test]
async fn a_store_impersonates_a_service_account_with_sesames_own_token() {
    let s = federation().await;
    s.fed.may_impersonate.lock().unwrap().insert((
        "sesame@proj.iam.gserviceaccount.com".into(),
        "team-reader@proj.iam.gserviceaccount.com".into(),
    ));
    s.fed
        .readers
        .lock()
        .unwrap()
        .insert("db".into(), "team-reader@proj.iam.gserviceaccount.com".into());
    let store = s
        .store("      impersonate: team-reader@proj.iam.gserviceaccount.com\n")
        .await
        .unwrap();
    assert_eq!(value(&fetch(&store, "db", None).await.unwrap()), "value-of-db");
    let generate = s.fake.requests_to("/v1/projects/-/serviceAccounts/");
    assert_eq!(
        generate[0].path,
        "/v1/projects/-/serviceAccounts/team-reader@proj.iam.gserviceaccount.com:generateAccessToken"
    );
    assert_eq!(generate[0].bearer(), Some("ya29.metadata-1"));
    assert!(store.check().await.is_ok());

    // Without the IAM binding, the store says so and reads nothing.
    let other = s
        .store("      impersonate: admin@proj.iam.gserviceaccount.com\n")
        .await
        .unwrap();
    let e = fetch(&other, "db", None).await.unwrap_err();
    assert_eq!(e.class(), "unauthorised");
    assert!(e.to_string().contains("PERMISSION_DENIED"), "{e}");

    // A template is for identity: pod; a malformed e-mail is refused at start.
    let e = s
        .refused("      impersonate: \"{serviceAccount}@proj.iam.gserviceaccount.com\"\n")
        .await;
    assert!(e.contains("impersonate") && e.contains("identity: pod"), "{e}");
    let e = s.refused("      impersonate: \"a/b@proj\"\n").await;
    assert!(e.contains("impersonate"), "{e}");
}

/// A stand-in for the TokenRequest API: a token naming the account and
/// the audience it was asked for.
struct FakeTokens(Mutex<Vec<(String, String)>>);

#[async_trait::async_trait]
impl sesame::stores::ServiceAccountTokens for FakeTokens {
    async fn token(
        &self,
        identity: &sesame::stores::WorkloadIdentity,
        audience: &str,
        _: Duration,
    ) -> Result<sesame::stores::SecretValue, StoreError> {
        self.0
            .lock()
            .unwrap()
            .push((identity.to_string(), audience.to_owned()));
        Ok(sesame::stores::SecretValue::from(format!(
            "k8s-token:{}:{}",
            identity.namespace, identity.service_account
        )))
    }
}

/// `identity: pod`: each ServiceAccount's token is exchanged at the
/// workload identity provider, the federated principal impersonates the
/// service account the template names for it, and IAM decides: `team/a`
/// reads its own secret, not `team/b`'s, and `team/c` (no IAM binding)
/// reads nothing.
#[tokio::test]
async fn identity_pod_federates_each_service_account() {
    use sesame::stores::gcp::{GcpStore, GcpStoreConfig};
    use sesame::stores::{PodIdentity, PodIdentityConfig, WorkloadIdentity};

    let s = federation().await;
    for sa in ["a", "b", "c"] {
        s.fed.subjects.lock().unwrap().insert(
            format!("k8s-token:team:{sa}"),
            format!("system:serviceaccount:team:{sa}"),
        );
    }
    for sa in ["a", "b"] {
        s.fed.may_impersonate.lock().unwrap().insert((
            format!("{PRINCIPAL}system:serviceaccount:team:{sa}"),
            format!("team-{sa}@proj.iam.gserviceaccount.com"),
        ));
        s.fed.readers.lock().unwrap().insert(
            format!("{sa}-secret"),
            format!("team-{sa}@proj.iam.gserviceaccount.com"),
        );
    }
    let config: GcpStoreConfig = serde_json::from_value(json!({
        "project": "proj",
        "endpoint": s.fake.url,
        "stsEndpoint": s.fake.url,
        "iamCredentialsEndpoint": s.fake.url,
        "workloadIdentityProvider": PROVIDER,
        "impersonate": "{namespace}-{serviceAccount}@proj.iam.gserviceaccount.com",
    }))
    .unwrap();
    let tokens = Arc::new(FakeTokens(Mutex::default()));
    let pod = PodIdentity::new(PodIdentityConfig::default(), tokens.clone());
    let store = GcpStore::with_identity(&config, s.dir.path(), Some(pod)).unwrap();
    let read_as = |sa: &'static str, secret: &'static str| {
        let store = &store;
        async move {
            store
                .fetch_as(
                    &WorkloadIdentity::new("team", sa).unwrap(),
                    &[SecretLocator::new(secret, None)],
                    &sesame::stores::RequestLimit::default(),
                )
                .await
                .remove(0)
        }
    };
    assert_eq!(
        value(&read_as("a", "a-secret").await.unwrap()),
        "value-of-a-secret"
    );
    assert_eq!(
        value(&read_as("b", "b-secret").await.unwrap()),
        "value-of-b-secret"
    );
    let e = read_as("a", "b-secret").await.unwrap_err();
    assert_eq!(e.class(), "unauthorised", "{e}");
    assert!(e.to_string().contains("PERMISSION_DENIED"), "{e}");
    let e = read_as("c", "a-secret").await.unwrap_err();
    assert_eq!(e.class(), "unauthorised", "{e}");
    assert!(e.to_string().contains("generateAccessToken"), "{e}");

    // The TokenRequest asked for the provider's default audience; STS got
    // each ServiceAccount's own token as a JWT for the provider.
    let asked = tokens.0.lock().unwrap().clone();
    let audience = format!("https:{PROVIDER}");
    assert_eq!(
        asked,
        [
            ("team/a".to_owned(), audience.clone()),
            ("team/b".to_owned(), audience.clone()),
            ("team/c".to_owned(), audience.clone())
        ]
    );
    let subjects: Vec<_> = s
        .fake
        .requests_to("/v1/token")
        .iter()
        .map(|r| r.form("subject_token").unwrap())
        .collect();
    assert_eq!(
        subjects,
        ["k8s-token:team:a", "k8s-token:team:b", "k8s-token:team:c"]
    );
    let impersonated: Vec<_> = s
        .fake
        .requests_to("/v1/projects/-/serviceAccounts/")
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(
        impersonated,
        [
            "/v1/projects/-/serviceAccounts/team-a@proj.iam.gserviceaccount.com:generateAccessToken",
            "/v1/projects/-/serviceAccounts/team-b@proj.iam.gserviceaccount.com:generateAccessToken",
            "/v1/projects/-/serviceAccounts/team-c@proj.iam.gserviceaccount.com:generateAccessToken",
        ]
    );

    // Sessions are cached per ServiceAccount: another read asks nothing new.
    read_as("a", "a-secret").await.unwrap();
    assert_eq!(tokens.0.lock().unwrap().len(), 3);
    assert_eq!(s.fake.requests_to("/v1/token").len(), 3);
    // Sesame's own identity is never used: not for reads, not at start.
    assert_eq!(
        store
            .read(&SecretLocator::new("a-secret", None))
            .await
            .unwrap_err()
            .class(),
        "unauthorised"
    );
    assert!(store.check().await.is_ok());
    assert!(s.fake.requests_to("/computeMetadata/").is_empty());
}

#[tokio::test]
async fn identity_pod_needs_a_provider_and_no_own_credentials() {
    let s = federation().await;
    let pod = "    identity: pod\n";
    let e = s.refused(pod).await;
    assert!(e.contains("workloadIdentityProvider"), "{e}");
    let e = s
        .refused(&format!(
            "      workloadIdentityProvider: \"//evil.example/x\"\n{pod}"
        ))
        .await;
    assert!(e.contains("workloadIdentityProvider"), "{e}");
    let e = s
        .refused(&format!(
            "      workloadIdentityProvider: \"{PROVIDER}\"\n      credentials: {{file: key.json}}\n{pod}"
        ))
        .await;
    assert!(e.contains("credentials"), "{e}");
    let e = s.refused(&format!(
            "      workloadIdentityProvider: \"{PROVIDER}\"\n      impersonate: \"{{pod}}@p.iam.gserviceaccount.com\"\n{pod}"
        )).await;
    assert!(e.contains("impersonate"), "{e}");
    s.store(&format!("      workloadIdentityProvider: \"{PROVIDER}\"\n{pod}"))
        .await
        .unwrap();
}
