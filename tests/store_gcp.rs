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

use std::collections::HashSet;
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
