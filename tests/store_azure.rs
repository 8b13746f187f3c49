//! Azure Key Vault store against an HTTP fake. The fake follows:
//! - Key Vault REST API 2025-07-01 "Get Secret"
//!   (`GET {vaultBaseUrl}/secrets/{secret-name}/{secret-version}?api-version=2025-07-01`,
//!   a `SecretBundle` answer, errors as `KeyVaultError`
//!   `{"error":{"code","message","innererror"}}`, e.g. `SecretNotFound`,
//!   `Forbidden`/`ForbiddenByRbac`, `Forbidden`/`SecretDisabled`, `Throttled`);
//! - Microsoft identity platform "OAuth 2.0 client credentials flow" at
//!   `{authority}/{tenant}/oauth2/v2.0/token` with a shared secret
//!   (`client_secret`) or a federated credential (`client_assertion_type=
//!   urn:ietf:params:oauth:client-assertion-type:jwt-bearer`, `client_assertion`),
//!   the AKS workload identity variables, and OAuth errors
//!   `{"error","error_description","error_codes"}`;
//! - Azure Instance Metadata Service managed identity tokens
//!   (`GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=…`,
//!   header `Metadata: true`, `expires_in` as a string);
//! - "Azure Key Vault authentication" / the Key Vault REST API's
//!   "Authentication, requests and responses" (challenge-based
//!   authentication): a 401 carries `WWW-Authenticate: Bearer
//!   authorization="<authority>/<tenant>", resource="<resource>"` (or
//!   `scope="<resource>/.default"`), naming the tenant and the resource a
//!   token must be for when the vault is in another tenant or cloud.
#![cfg(feature = "azure")]
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

const CLIENT_SECRET: &str = "client-secret-hunter2";
const VALUE: &str = "kv-value-hunter2";
const OLD: &str = "0123456789abcdef0123456789abcdef";
const CURRENT: &str = "fedcba9876543210fedcba9876543210";

/// The fake Entra ID, IMDS and vault.
#[derive(Default)]
struct Azure {
    issued: AtomicU32,
    valid: Mutex<HashSet<String>>,
    lifetime: AtomicU64,
    assertion: Mutex<String>,
}

impl Azure {
    fn token(&self) -> String {
        let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        let token = format!("eyJ0eXAi.fake-access-token-{n}");
        self.valid.lock().unwrap().insert(token.clone());
        token
    }

    fn revoke_all(&self) {
        self.valid.lock().unwrap().clear();
    }

    fn handle(&self, req: &Request) -> Reply {
        match (req.method.as_str(), req.path.as_str()) {
            ("POST", "/tenant-1/oauth2/v2.0/token") => self.entra(req),
            ("POST", p) if p.ends_with("/oauth2/v2.0/token") => oauth_error(
                400,
                "invalid_request",
                "AADSTS90002: Tenant 'x' not found. Check to make sure you have the correct tenant ID.",
            ),
            ("GET", "/metadata/identity/oauth2/token") => self.imds(req),
            ("GET", p) if p.starts_with("/secrets/") => self.get_secret(req, &p["/secrets/".len()..]),
            _ => Reply::text(404, "not found"),
        }
    }

    fn entra(&self, req: &Request) -> Reply {
        if req.form("grant_type").as_deref() != Some("client_credentials") {
            return oauth_error(400, "unsupported_grant_type", "AADSTS70003");
        }
        if req.form("scope").as_deref() != Some("https://vault.azure.net/.default") {
            return oauth_error(
                400,
                "invalid_scope",
                "AADSTS70011: The provided value for scope is not valid.",
            );
        }
        if req.form("client_id").as_deref() != Some("client-1") {
            return oauth_error(400, "unauthorized_client", "AADSTS700016: Application not found.");
        }
        let accepted = match (req.form("client_secret"), req.form("client_assertion")) {
            (Some(secret), None) => secret == CLIENT_SECRET,
            (None, Some(assertion)) => {
                req.form("client_assertion_type").as_deref()
                    == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
                    && assertion == *self.assertion.lock().unwrap()
            }
            _ => false,
        };
        if !accepted {
            return oauth_error(
                401,
                "invalid_client",
                &format!("AADSTS7000215: Invalid client secret provided: {CLIENT_SECRET}"),
            );
        }
        let lifetime = self.lifetime.load(Ordering::SeqCst);
        Reply::json(
            200,
            json!({"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": self.token()}),
        )
    }

    fn imds(&self, req: &Request) -> Reply {
        if req.header("metadata") != Some("true") {
            return oauth_error(400, "invalid_request", "Required metadata header not specified");
        }
        if req.query("api-version") != Some("2018-02-01")
            || req.query("resource") != Some("https://vault.azure.net")
        {
            return oauth_error(400, "invalid_request", "Invalid resource or api-version");
        }
        if req.query("client_id").is_some_and(|id| id != "mi-client-1") {
            return oauth_error(400, "invalid_request", "Identity not found");
        }
        let lifetime = self.lifetime.load(Ordering::SeqCst).to_string();
        Reply::json(
            200,
            json!({"access_token": self.token(), "refresh_token": "", "expires_in": lifetime, "expires_on": "1700000000",
                   "not_before": "1699996400", "resource": "https://vault.azure.net", "token_type": "Bearer"}),
        )
    }

    fn get_secret(&self, req: &Request, rest: &str) -> Reply {
        if req.query("api-version") != Some("2025-07-01") {
            return vault_error(
                400,
                "BadParameter",
                "The specified version is not recognized",
                None,
            );
        }
        if !req
            .bearer()
            .is_some_and(|t| self.valid.lock().unwrap().contains(t))
        {
            return vault_error(401, "Unauthorized", "AKV10000: Request is missing a Bearer or PoP token.", None)
                .with_header("WWW-Authenticate", "Bearer authorization=\"https://login.microsoftonline.com/tenant-1\", resource=\"https://vault.azure.net\"");
        }
        let (name, version) = rest.split_once('/').map_or((rest, None), |(n, v)| (n, Some(v)));
        let versions: &[(&str, String)] = &match name {
            "db-password" => vec![(OLD, "old-password".to_owned()), (CURRENT, VALUE.to_owned())],
            "db-config" => vec![(
                CURRENT,
                json!({"host": "db.internal", "password": VALUE}).to_string(),
            )],
            "disabled" => {
                return vault_error(
                    403,
                    "Forbidden",
                    "Operation get is not allowed on a disabled secret.",
                    Some("SecretDisabled"),
                )
            }
            "rbac" => {
                return vault_error(
                    403,
                    "Forbidden",
                    &format!("Caller is not authorized to read {VALUE}"),
                    Some("ForbiddenByRbac"),
                )
            }
            _ => vec![],
        };
        let found = match version {
            None => versions.last(),
            Some(v) => versions.iter().find(|(id, _)| *id == v),
        };
        let Some((id, value)) = found else {
            return vault_error(
                404,
                "SecretNotFound",
                &format!("A secret with (name/id) {rest} was not found in this key vault."),
                None,
            );
        };
        Reply::json(
            200,
            json!({"value": value, "id": format!("https://fake.vault.azure.net/secrets/{name}/{id}"),
                   "attributes": {"enabled": true, "created": 1700000000, "updated": 1700000000, "recoveryLevel": "Recoverable+Purgeable"},
                   "tags": {}}),
        )
    }
}

fn oauth_error(status: u16, code: &str, description: &str) -> Reply {
    Reply::json(
        status,
        json!({"error": code, "error_description": description, "error_codes": [7000215], "trace_id": "t", "correlation_id": "c"}),
    )
}

fn vault_error(status: u16, code: &str, message: &str, inner: Option<&str>) -> Reply {
    let mut error = json!({"code": code, "message": message});
    if let Some(inner) = inner {
        error["innererror"] = json!({"code": inner});
    }
    Reply::json(status, json!({"error": error}))
}

struct Setup {
    fake: Fake,
    azure: Arc<Azure>,
    store: Arc<dyn Store>,
    dir: tempfile::TempDir,
}

/// `auth` is the YAML of the `auth` section; `{url}` and `{dir}` are filled in.
async fn setup(lifetime: u64, auth: &str, extra: &str) -> Setup {
    let azure = Arc::new(Azure::default());
    azure.lifetime.store(lifetime, Ordering::SeqCst);
    *azure.assertion.lock().unwrap() = "eyJhbGciOiJSUzI1NiJ9.projected-sa-token-1".into();
    let state = azure.clone();
    let fake = Fake::start(move |req| state.handle(req)).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("client-secret"), format!("{CLIENT_SECRET}\n")).unwrap();
    std::fs::write(
        dir.path().join("azure-identity-token"),
        "eyJhbGciOiJSUzI1NiJ9.projected-sa-token-1",
    )
    .unwrap();
    let yaml = format!(
        "stores:\n  - name: kv\n    azure:\n      vaultUrl: {url}\n      imdsEndpoint: {url}\n{extra}      auth:\n        {auth}\n",
        url = fake.url
    )
    .replace("{url}", &fake.url)
    .replace("{dir}", &dir.path().display().to_string());
    let config = Config::from_yaml(&yaml, "test").unwrap();
    let store = build_store(&config.stores[0], dir.path(), None).await.unwrap();
    Setup {
        fake,
        azure,
        store,
        dir,
    }
}

const CLIENT_SECRET_AUTH: &str =
    "clientSecret: {tenantId: tenant-1, clientId: client-1, clientSecret: {file: client-secret}}";
const AUTHORITY: &str = "      authorityHost: {url}\n";

#[tokio::test]
async fn client_secret_reads_values_properties_and_versions() {
    let s = setup(3600, CLIENT_SECRET_AUTH, AUTHORITY).await;
    let answers = s
        .store
        .fetch(
            &[
                SecretLocator::new("db-password", None),
                SecretLocator::new("db-password", Some(OLD.into())),
                SecretLocator::new("db-config", None),
            ],
            &sesame::stores::RequestLimit::default(),
        )
        .await;
    let answers: Vec<SecretData> = answers.into_iter().map(Result::unwrap).collect();
    assert_eq!(answers[0].get(None).unwrap().expose(), VALUE.as_bytes());
    assert_eq!(answers[1].get(None).unwrap().expose(), b"old-password");
    assert_eq!(answers[2].get(Some("host")).unwrap().expose(), b"db.internal");
    assert_eq!(
        answers[2].get(Some("password")).unwrap().expose(),
        VALUE.as_bytes()
    );

    let token_requests = s.fake.requests_to("/tenant-1/oauth2/v2.0/token");
    assert_eq!(token_requests.len(), 1);
    let t = &token_requests[0];
    assert_eq!(t.form("grant_type").as_deref(), Some("client_credentials"));
    assert_eq!(t.form("client_id").as_deref(), Some("client-1"));
    assert_eq!(
        t.form("client_secret").as_deref(),
        Some(CLIENT_SECRET),
        "read from the file, trimmed"
    );
    assert_eq!(
        t.form("scope").as_deref(),
        Some("https://vault.azure.net/.default")
    );
    let mut paths: Vec<String> = s
        .fake
        .requests_to("/secrets/")
        .into_iter()
        .map(|r| r.path)
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/secrets/db-config",
            "/secrets/db-password",
            &format!("/secrets/db-password/{OLD}")
        ]
    );
    for r in s.fake.requests_to("/secrets/") {
        assert_eq!(r.query("api-version"), Some("2025-07-01"));
        assert_eq!(r.bearer(), Some("eyJ0eXAi.fake-access-token-1"));
    }
}

#[tokio::test]
async fn workload_identity_takes_the_aks_environment_and_rereads_the_token_file() {
    // The variables AKS workload identity injects into the Pod.
    let s0 = setup(3600, CLIENT_SECRET_AUTH, AUTHORITY).await;
    let token_file = s0.dir.path().join("azure-identity-token");
    std::env::set_var("AZURE_TENANT_ID", "tenant-1");
    std::env::set_var("AZURE_CLIENT_ID", "client-1");
    std::env::set_var("AZURE_FEDERATED_TOKEN_FILE", &token_file);
    std::env::set_var("AZURE_AUTHORITY_HOST", format!("{}/", s0.fake.url));
    let config = Config::from_yaml(
        &format!(
            "stores:\n  - name: kv\n    azure:\n      vaultUrl: {}\n      auth:\n        workloadIdentity: {{}}\n",
            s0.fake.url
        ),
        "test",
    )
    .unwrap();
    let store = build_store(&config.stores[0], s0.dir.path(), None).await.unwrap();
    for var in [
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_ID",
        "AZURE_FEDERATED_TOKEN_FILE",
        "AZURE_AUTHORITY_HOST",
    ] {
        std::env::remove_var(var);
    }
    assert_eq!(
        fetch(&store, "db-password", None)
            .await
            .unwrap()
            .get(None)
            .unwrap()
            .expose(),
        VALUE.as_bytes()
    );
    let t = s0.fake.requests_to("/tenant-1/oauth2/v2.0/token").pop().unwrap();
    assert_eq!(
        t.form("client_assertion_type").as_deref(),
        Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    );
    assert_eq!(
        t.form("client_assertion").as_deref(),
        Some("eyJhbGciOiJSUzI1NiJ9.projected-sa-token-1")
    );
    assert_eq!(t.form("client_secret"), None);

    // The kubelet rotates the projected token; the next sign-in sends the new one.
    std::fs::write(&token_file, "eyJhbGciOiJSUzI1NiJ9.projected-sa-token-2\n").unwrap();
    *s0.azure.assertion.lock().unwrap() = "eyJhbGciOiJSUzI1NiJ9.projected-sa-token-2".into();
    s0.azure.revoke_all();
    assert!(fetch(&store, "db-password", None).await.is_ok());
    let t = s0.fake.requests_to("/tenant-1/oauth2/v2.0/token").pop().unwrap();
    assert_eq!(
        t.form("client_assertion").as_deref(),
        Some("eyJhbGciOiJSUzI1NiJ9.projected-sa-token-2")
    );
}

#[tokio::test]
async fn workload_identity_fields_in_the_config_override_the_environment() {
    let s = setup(
        3600,
        "workloadIdentity: {tenantId: tenant-1, clientId: client-1, tokenFile: azure-identity-token}",
        AUTHORITY,
    )
    .await;
    assert!(fetch(&s.store, "db-password", None).await.is_ok());
    assert_eq!(s.fake.requests_to("/tenant-1/oauth2/v2.0/token").len(), 1);
}

#[tokio::test]
async fn managed_identity_asks_the_instance_metadata_service() {
    let s = setup(3600, "managedIdentity: {clientId: mi-client-1}", "").await;
    assert_eq!(
        fetch(&s.store, "db-password", None)
            .await
            .unwrap()
            .get(None)
            .unwrap()
            .expose(),
        VALUE.as_bytes()
    );
    let imds = s.fake.requests_to("/metadata/identity/oauth2/token");
    assert_eq!(imds.len(), 1);
    assert_eq!(imds[0].header("metadata"), Some("true"));
    assert_eq!(imds[0].query("api-version"), Some("2018-02-01"));
    assert_eq!(imds[0].query("resource"), Some("https://vault.azure.net"));
    assert_eq!(imds[0].query("client_id"), Some("mi-client-1"));
    assert!(s.store.check().await.is_ok());
}

#[tokio::test]
async fn missing_disabled_and_forbidden_secrets_map_to_classes() {
    let s = setup(3600, CLIENT_SECRET_AUTH, AUTHORITY).await;
    assert_eq!(fetch(&s.store, "nope", None).await, Err(StoreError::NotFound));
    assert_eq!(
        fetch(&s.store, "db-password", Some("00000000000000000000000000000000")).await,
        Err(StoreError::VersionNotFound)
    );
    assert_eq!(fetch(&s.store, "disabled", None).await, Err(StoreError::NotFound));
    let e = fetch(&s.store, "rbac", None).await.unwrap_err();
    assert_eq!(e.class(), "unauthorised");
    assert!(e.to_string().contains("ForbiddenByRbac"), "{e}");
    assert_hidden(&e.to_string(), &[VALUE]);
    // Names Key Vault cannot hold never reach it.
    let before = s.fake.requests().len();
    for bad in ["a/b", "under_score", "dots.too"] {
        assert!(
            matches!(
                fetch(&s.store, bad, None).await,
                Err(StoreError::InvalidRequest(_))
            ),
            "{bad}"
        );
    }
    assert_eq!(s.fake.requests().len(), before);
}

#[tokio::test]
async fn a_rejected_token_is_replaced_once() {
    let s = setup(3600, CLIENT_SECRET_AUTH, AUTHORITY).await;
    fetch(&s.store, "db-password", None).await.unwrap();
    s.azure.revoke_all();
    assert!(fetch(&s.store, "db-password", None).await.is_ok());
    assert_eq!(s.azure.issued.load(Ordering::SeqCst), 2);
    assert_eq!(
        s.fake.requests_to("/secrets/").pop().unwrap().bearer(),
        Some("eyJ0eXAi.fake-access-token-2")
    );

    s.fake.clear_log();
    for _ in 0..3 {
        s.fake.push_reply(
            "/secrets/",
            vault_error(401, "Unauthorized", "AKV10022: Invalid audience.", None),
        );
    }
    let e = fetch(&s.store, "db-password", None).await.unwrap_err();
    assert_eq!(e.class(), "unauthorised");
    assert_eq!(s.fake.requests_to("/secrets/").len(), 2);
    assert_eq!(s.fake.requests_to("/tenant-1/").len(), 1);
}

#[tokio::test]
async fn throttling_and_server_errors_are_retried() {
    let s = setup(3600, CLIENT_SECRET_AUTH, AUTHORITY).await;
    s.fake.push_reply(
        "/secrets/",
        vault_error(
            429,
            "Throttled",
            "Request was not processed because too many requests were received.",
            None,
        )
        .with_header("Retry-After", "0"),
    );
    s.fake.push_reply(
        "/secrets/",
        vault_error(503, "ServiceUnavailable", "Service unavailable", None),
    );
    assert!(fetch(&s.store, "db-password", None).await.is_ok());
    assert_eq!(s.fake.requests_to("/secrets/").len(), 3);
    for _ in 0..3 {
        s.fake
            .push_reply("/secrets/", vault_error(429, "Throttled", "too many", None));
    }
    assert_eq!(
        fetch(&s.store, "db-password", None).await,
        Err(StoreError::Throttled)
    );
    for _ in 0..3 {
        s.fake
            .push_reply("/secrets/", vault_error(502, "BadGateway", "bad gateway", None));
    }
    assert_eq!(
        fetch(&s.store, "db-password", None).await.unwrap_err().class(),
        "unreachable"
    );
    // The token endpoint's 5xx is retried as well.
    let cold = setup(3600, CLIENT_SECRET_AUTH, AUTHORITY).await;
    cold.fake.push_reply(
        "/tenant-1/",
        oauth_error(503, "temporarily_unavailable", "AADSTS"),
    );
    assert!(fetch(&cold.store, "db-password", None).await.is_ok());
    assert_eq!(cold.fake.requests_to("/tenant-1/").len(), 2);
}

#[tokio::test]
async fn the_token_is_refreshed_in_the_background_before_it_expires() {
    // IMDS gives the lifetime as a string; two seconds, refreshed two thirds in.
    let s = setup(2, "managedIdentity: {}", "").await;
    fetch(&s.store, "db-password", None).await.unwrap();
    // The store's upkeep, as `serve` runs it.
    let _upkeep = s.store.upkeep().map(tokio::spawn);
    tokio::time::sleep(Duration::from_millis(1900)).await;
    assert_eq!(s.azure.issued.load(Ordering::SeqCst), 2);
    assert_eq!(s.fake.requests_to("/secrets/").len(), 1);
    s.fake.clear_log();
    fetch(&s.store, "db-password", None).await.unwrap();
    assert!(s.fake.requests_to("/metadata/").is_empty());
    assert_eq!(
        s.fake.requests_to("/secrets/")[0].bearer(),
        Some("eyJ0eXAi.fake-access-token-2")
    );
}

#[tokio::test]
async fn errors_and_debug_never_show_values_secrets_or_tokens() {
    let s = setup(3600, CLIENT_SECRET_AUTH, AUTHORITY).await;
    let data = fetch(&s.store, "db-config", None).await.unwrap();
    let mut shown = format!("{data:?}");
    for name in ["rbac", "nope", "disabled"] {
        let e = fetch(&s.store, name, None).await.unwrap_err();
        shown.push_str(&format!(" {e} {e:?}"));
    }
    // A wrong client secret: the class and the OAuth code, not Entra's text.
    std::fs::write(s.dir.path().join("client-secret"), "wrong-hunter2").unwrap();
    s.azure.revoke_all();
    let e = fetch(&s.store, "db-password", None).await.unwrap_err();
    assert_eq!(e.class(), "unauthorised");
    assert!(e.to_string().contains("invalid_client"), "{e}");
    assert!(!e.to_string().contains("AADSTS"), "{e}");
    shown.push_str(&format!(" {e} {e:?}"));
    assert_hidden(
        &shown,
        &[VALUE, CLIENT_SECRET, "wrong-hunter2", "fake-access-token"],
    );
}

/// A vault in another tenant and cloud, behind challenge-based
/// authentication: it accepts only tokens issued by `tenant-2` for its own
/// resource, and says so in the `WWW-Authenticate` of its 401s.
#[derive(Default)]
struct OtherTenant {
    /// issued token → (tenant, scope).
    issued: Mutex<std::collections::HashMap<String, (String, String)>>,
    /// The challenge the vault sends.
    challenge: Mutex<String>,
}

impl OtherTenant {
    fn handle(&self, req: &Request) -> Reply {
        match (req.method.as_str(), req.path.as_str()) {
            ("POST", p) if p.ends_with("/oauth2/v2.0/token") => {
                let tenant = p.trim_start_matches('/').split('/').next().unwrap().to_owned();
                if req.form("client_secret").as_deref() != Some(CLIENT_SECRET) {
                    return oauth_error(401, "invalid_client", "AADSTS7000215");
                }
                let scope = req.form("scope").unwrap_or_default();
                let mut issued = self.issued.lock().unwrap();
                let token = format!("token-{}-{tenant}", issued.len() + 1);
                issued.insert(token.clone(), (tenant, scope));
                Reply::json(
                    200,
                    json!({"token_type": "Bearer", "expires_in": 3600, "access_token": token}),
                )
            }
            ("GET", "/secrets/db-password") => {
                let wanted = ("tenant-2".to_owned(), "https://localhost/.default".to_owned());
                let ok = req
                    .bearer()
                    .and_then(|t| self.issued.lock().unwrap().get(t).cloned())
                    .is_some_and(|t| t == wanted);
                if !ok {
                    return vault_error(401, "Unauthorized", "AKV10032: Invalid issuer.", None)
                        .with_header("WWW-Authenticate", &self.challenge.lock().unwrap());
                }
                Reply::json(
                    200,
                    json!({"value": VALUE, "id": "https://localhost/secrets/db-password/1"}),
                )
            }
            _ => Reply::text(404, "not found"),
        }
    }

    fn token_requests(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self.issued.lock().unwrap().values().cloned().collect();
        v.sort();
        v
    }
}

#[tokio::test]
async fn a_vault_in_another_tenant_says_where_to_sign_in() {
    let vault = Arc::new(OtherTenant::default());
    *vault.challenge.lock().unwrap() =
        r#"Bearer authorization="https://login.microsoftonline.com/tenant-2", resource="https://localhost""#
            .into();
    let state = vault.clone();
    let fake = Fake::start(move |req| state.handle(req)).await;
    // The vault's host is a name, as real vaults' are, so that the
    // challenge's resource can be checked against it.
    let url = fake.url.replace("127.0.0.1", "localhost");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("client-secret"), CLIENT_SECRET).unwrap();
    let yaml = format!(
        "stores:\n  - name: kv\n    azure:\n      vaultUrl: {url}\n      authorityHost: {url}\n      auth:\n        {CLIENT_SECRET_AUTH}\n"
    );
    let config = Config::from_yaml(&yaml, "test").unwrap();
    let store = build_store(&config.stores[0], dir.path(), None).await.unwrap();

    let data = fetch(&store, "db-password", None).await.unwrap();
    assert_eq!(data.get(None).unwrap().expose(), VALUE.as_bytes());
    // Tokens of the configured tenant were refused (and replaced once, as
    // any refused token is); then one of the challenge's tenant and resource,
    // asked of the configured authority host.
    assert_eq!(
        vault.token_requests(),
        [
            (
                "tenant-1".to_owned(),
                "https://vault.azure.net/.default".to_owned()
            ),
            (
                "tenant-1".to_owned(),
                "https://vault.azure.net/.default".to_owned()
            ),
            ("tenant-2".to_owned(), "https://localhost/.default".to_owned()),
        ]
    );
    // The next read goes straight to the tenant the vault named.
    fake.clear_log();
    fetch(&store, "db-password", None).await.unwrap();
    assert_eq!(fake.requests_to("/secrets/").len(), 1);
    assert_eq!(vault.token_requests().len(), 3);

    // A challenge that would send a token elsewhere, or a tenant that is
    // a path, is refused: no token is asked for it.
    for challenge in [
        r#"Bearer authorization="https://login.microsoftonline.com/tenant-3", resource="https://vault.azure.net""#,
        r#"Bearer authorization="https://login.microsoftonline.com/..%2Fcommon", scope="https://localhost/.default""#,
    ] {
        let fresh = build_store(&config.stores[0], dir.path(), None).await.unwrap();
        *vault.challenge.lock().unwrap() = challenge.into();
        let before = vault.token_requests().len();
        let e = fetch(&fresh, "db-password", None).await.unwrap_err();
        assert_eq!(e.class(), "unauthorised", "{challenge}");
        assert!(e.to_string().contains("challenge"), "{e}");
        assert_hidden(&format!("{e} {e:?}"), &[CLIENT_SECRET, "token-"]);
        let asked = vault.token_requests();
        assert_eq!(asked.len(), before + 2, "only the configured tenant's two tokens");
        assert!(asked
            .iter()
            .all(|(tenant, _)| tenant != "tenant-3" && !tenant.contains("..")));
    }
}

/// Microsoft Entra with two apps whose federated credentials trust one
/// ServiceAccount each ("Workload identity federation": the assertion's
/// subject must match a federated identity credential of the app, else
/// `invalid_client`, AADSTS700213), and a vault whose RBAC lets each app
/// read its own secret.
#[derive(Default)]
struct Federated {
    /// issued token → app (client id).
    issued: Mutex<std::collections::HashMap<String, String>>,
}

const APP_A: &str = "00000000-0000-0000-0000-00000000000a";
const APP_B: &str = "00000000-0000-0000-0000-00000000000b";

impl Federated {
    fn handle(&self, req: &Request) -> Reply {
        match (req.method.as_str(), req.path.as_str()) {
            ("POST", "/tenant-1/oauth2/v2.0/token") => {
                if req.form("grant_type").as_deref() != Some("client_credentials")
                    || req.form("scope").as_deref() != Some("https://vault.azure.net/.default")
                    || req.form("client_assertion_type").as_deref()
                        != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
                {
                    return oauth_error(400, "invalid_request", "AADSTS900144");
                }
                let client = req.form("client_id").unwrap_or_default();
                let trusted = match client.as_str() {
                    APP_A => "k8s-token:team:a",
                    APP_B => "k8s-token:team:b",
                    _ => {
                        return oauth_error(
                            400,
                            "unauthorized_client",
                            "AADSTS700016: Application not found.",
                        )
                    }
                };
                let assertion = req.form("client_assertion").unwrap_or_default();
                if assertion != trusted {
                    return oauth_error(
                        401,
                        "invalid_client",
                        &format!("AADSTS700213: No matching federated identity record found for presented assertion subject {assertion}."),
                    );
                }
                let mut issued = self.issued.lock().unwrap();
                let token = format!("eyJ0eXAi.app-token-{}", issued.len() + 1);
                issued.insert(token.clone(), client);
                Reply::json(
                    200,
                    json!({"token_type": "Bearer", "expires_in": 3600, "access_token": token}),
                )
            }
            ("GET", path) if path.starts_with("/secrets/") => {
                let Some(app) = req
                    .bearer()
                    .and_then(|t| self.issued.lock().unwrap().get(t).cloned())
                else {
                    return vault_error(
                        401,
                        "Unauthorized",
                        "AKV10000: Request is missing a Bearer or PoP token.",
                        None,
                    );
                };
                let name = &path["/secrets/".len()..];
                let reader = match name {
                    "a-secret" => APP_A,
                    "b-secret" => APP_B,
                    _ => {
                        return vault_error(
                            404,
                            "SecretNotFound",
                            "A secret with (name/id) was not found.",
                            None,
                        )
                    }
                };
                if app != reader {
                    return vault_error(
                        403,
                        "Forbidden",
                        "Caller is not authorized.",
                        Some("ForbiddenByRbac"),
                    );
                }
                Reply::json(
                    200,
                    json!({"value": format!("value-of-{name}"), "id": format!("https://v/secrets/{name}/1")}),
                )
            }
            _ => Reply::text(404, "not found"),
        }
    }
}

/// A stand-in for the TokenRequest API: a token naming the account.
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

/// `identity: pod`: each ServiceAccount's token is the client assertion of
/// its own app's federated credential (`clientIds`, else `clientId`), and
/// the vault's RBAC decides: `team/a` reads its secret, not `team/b`'s, and
/// `team/c`, which no federated credential trusts, signs in nowhere.
#[tokio::test]
async fn identity_pod_signs_in_with_each_service_accounts_federated_credential() {
    use sesame::stores::azure::{AzureStore, AzureStoreConfig};
    use sesame::stores::{PodIdentity, PodIdentityConfig, RequestLimit, WorkloadIdentity};

    let entra = Arc::new(Federated::default());
    let state = entra.clone();
    let fake = Fake::start(move |req| state.handle(req)).await;
    let config: AzureStoreConfig = serde_norway::from_str(&format!(
        "vaultUrl: {url}\nauthorityHost: {url}\nauth:\n  workloadIdentity:\n    tenantId: tenant-1\n    clientId: {APP_B}\n    clientIds: {{team/a: {APP_A}}}\n",
        url = fake.url
    ))
    .unwrap();
    config.validate().unwrap();
    let tokens = Arc::new(FakeTokens(Mutex::default()));
    let pod = PodIdentity::new(PodIdentityConfig::default(), tokens.clone());
    let dir = tempfile::tempdir().unwrap();
    let store = AzureStore::with_identity(&config, dir.path(), Some(pod)).unwrap();
    let read_as = |sa: &'static str, secret: &'static str| {
        let store = &store;
        async move {
            store
                .fetch_as(
                    &WorkloadIdentity::new("team", sa).unwrap(),
                    &[SecretLocator::new(secret, None)],
                    &RequestLimit::default(),
                )
                .await
                .remove(0)
        }
    };
    let text = |d: SecretData| String::from_utf8(d.get(None).unwrap().expose().to_vec()).unwrap();
    assert_eq!(text(read_as("a", "a-secret").await.unwrap()), "value-of-a-secret");
    assert_eq!(text(read_as("b", "b-secret").await.unwrap()), "value-of-b-secret");
    let e = read_as("a", "b-secret").await.unwrap_err();
    assert_eq!(e.class(), "unauthorised");
    assert!(e.to_string().contains("ForbiddenByRbac"), "{e}");
    let e = read_as("c", "b-secret").await.unwrap_err();
    assert_eq!(e.class(), "unauthorised");
    assert!(e.to_string().contains("invalid_client"), "{e}");
    assert_hidden(&format!("{e} {e:?}"), &["k8s-token"]);

    // Each token was asked for Entra's federation audience, and the
    // sign-ins are cached per ServiceAccount.
    read_as("a", "a-secret").await.unwrap();
    let asked = tokens.0.lock().unwrap().clone();
    assert_eq!(asked.len(), 3, "{asked:?}");
    assert!(asked
        .iter()
        .all(|(_, audience)| audience == "api://AzureADTokenExchange"));
    let clients: Vec<_> = fake
        .requests_to("/tenant-1/")
        .iter()
        .map(|r| r.form("client_id").unwrap())
        .collect();
    assert_eq!(clients, [APP_A, APP_B, APP_B]);
    // Sesame's own identity is never used.
    assert_eq!(
        store
            .read(&SecretLocator::new("a-secret", None))
            .await
            .unwrap_err()
            .class(),
        "unauthorised"
    );
    assert!(store.check().await.is_ok());
    assert_eq!(fake.requests_to("/tenant-1/").len(), 3);

    // The configuration path: identity: pod needs workloadIdentity, and
    // clientIds means nothing without identity: pod.
    for (yaml, expected) in [
        (
            format!("stores:\n  - name: kv\n    identity: pod\n    azure:\n      vaultUrl: {url}\n      auth:\n        {CLIENT_SECRET_AUTH}\n", url = fake.url),
            "workloadIdentity",
        ),
        (
            format!("stores:\n  - name: kv\n    azure:\n      vaultUrl: {url}\n      auth:\n        workloadIdentity: {{clientIds: {{team/a: {APP_A}}}}}\n", url = fake.url),
            "clientIds",
        ),
        (
            format!("stores:\n  - name: kv\n    identity: pod\n    azure:\n      vaultUrl: {url}\n      auth:\n        workloadIdentity: {{tenantId: t, clientIds: {{'a/b/c': {APP_A}}}}}\n", url = fake.url),
            "clientIds",
        ),
    ] {
        let e = match Config::from_yaml(&yaml, "test") {
            Ok(_) => panic!("accepted: {yaml}"),
            Err(e) => format!("{e:#}"),
        };
        assert!(e.contains(expected), "{yaml}\n{e}");
    }
}
