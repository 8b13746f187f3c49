//! Per-workload identity (`identity: pod` on a store): the store is read as
//! the Pod's own ServiceAccount, so that the store's access control is a
//! second barrier behind Sesame's policy.
//!
//! What a provider needs for that lives here: the identity itself
//! ([`WorkloadIdentity`], from `request.namespace` and the Pod's
//! `serviceAccountName`), the `podIdentity` settings, the port through
//! which a short-lived ServiceAccount token is requested
//! ([`ServiceAccountTokens`], the Kubernetes TokenRequest API), templates
//! such as `role: "{namespace}-{serviceAccount}"`, and the bounded cache of
//! per-identity sessions ([`Sessions`]) each provider keeps its logins in.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{RequestLimit, SecretData, SecretLocator, SecretValue, StoreError};
use crate::validate::{is_dns_label, is_dns_subdomain, FieldError};

/// Whose identity a store reads with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum IdentityMode {
    /// Sesame's own credentials (the default).
    #[default]
    Sesame,
    /// The Pod's ServiceAccount, through a TokenRequest token.
    Pod,
}

impl IdentityMode {
    pub fn is_pod(self) -> bool {
        self == Self::Pod
    }
}

/// The shortest lifetime the TokenRequest API issues.
pub(crate) const MIN_TOKEN_LIFETIME: Duration = Duration::from_secs(600);

/// `stores[].podIdentity`: how the Pod's ServiceAccount token is requested
/// and how many per-identity sessions are kept.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodIdentityConfig {
    /// The token's audience; defaults to what the provider expects (`vault`,
    /// `sts.amazonaws.com`, the workload identity provider,
    /// `api://AzureADTokenExchange`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// The token's lifetime; 10 minutes (the least Kubernetes issues) by
    /// default, at most an hour. It is used once, to log in.
    #[serde(default = "default_token_lifetime", with = "humantime_serde")]
    pub token_lifetime: Duration,
    /// At most so many ServiceAccounts have a session (a store login) at
    /// once; the least recently used one gives way.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
}

impl Default for PodIdentityConfig {
    fn default() -> Self {
        Self {
            audience: None,
            token_lifetime: default_token_lifetime(),
            max_sessions: default_max_sessions(),
        }
    }
}

fn default_token_lifetime() -> Duration {
    MIN_TOKEN_LIFETIME
}

fn default_max_sessions() -> usize {
    256
}

impl PodIdentityConfig {
    /// Checks what serde cannot; fields are below `podIdentity`.
    pub fn validate(&self) -> Result<(), FieldError> {
        if let Some(audience) = &self.audience {
            if audience.is_empty() || audience.len() > 512 || audience.chars().any(char::is_whitespace) {
                return Err(FieldError::new(
                    "audience",
                    "must be one audience, without spaces",
                ));
            }
        }
        if self.token_lifetime < MIN_TOKEN_LIFETIME || self.token_lifetime > Duration::from_secs(3600) {
            return Err(FieldError::new("tokenLifetime", "must be between 10m and 1h"));
        }
        if self.max_sessions == 0 || self.max_sessions > 100_000 {
            return Err(FieldError::new("maxSessions", "must be between 1 and 100000"));
        }
        Ok(())
    }

    /// The audience to request: the configured one, else the provider's.
    pub(crate) fn audience_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.audience.as_deref().unwrap_or(default)
    }
}

/// The Kubernetes identity a Pod runs as. The namespace is the
/// AdmissionRequest's (set by the API server), the ServiceAccount the one
/// the Pod names: Kubernetes lets whoever may create the Pod run it as any
/// ServiceAccount of its namespace, so reading as it grants the Pod nothing
/// it could not read itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadIdentity {
    pub namespace: String,
    pub service_account: String,
}

impl WorkloadIdentity {
    /// Both names are checked here: the ServiceAccount name comes from a
    /// Pod that the API server has not validated yet (webhooks run first),
    /// and it goes into an API path and into templates.
    pub fn new(namespace: &str, service_account: &str) -> Result<Self, StoreError> {
        if !is_dns_label(namespace) || !is_dns_subdomain(service_account) {
            return Err(StoreError::InvalidRequest(
                "the namespace or ServiceAccount name is not a valid Kubernetes name".into(),
            ));
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })
    }

    /// The token subject, `system:serviceaccount:<namespace>:<name>`.
    pub fn subject(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace, self.service_account
        )
    }

    /// `template` with `{namespace}` and `{serviceAccount}` filled in.
    pub(crate) fn render(&self, template: &str) -> String {
        template
            .replace("{namespace}", &self.namespace)
            .replace("{serviceAccount}", &self.service_account)
    }
}

impl std::fmt::Display for WorkloadIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.service_account)
    }
}

/// Whether `template` uses only the placeholders [`WorkloadIdentity::render`]
/// knows, for the checks of the configuration.
pub(crate) fn check_template(template: &str, field: &str) -> Result<(), FieldError> {
    let rest = template
        .replace("{namespace}", "")
        .replace("{serviceAccount}", "");
    if rest.contains(['{', '}']) {
        return Err(FieldError::new(
            field,
            "knows the placeholders {namespace} and {serviceAccount} only",
        ));
    }
    if template.trim().is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    Ok(())
}

/// The port through which a store obtains a token of the Pod's
/// ServiceAccount: the Kubernetes TokenRequest API
/// (`POST serviceaccounts/<name>/token`). Errors name no token.
#[async_trait]
pub trait ServiceAccountTokens: Send + Sync + 'static {
    async fn token(
        &self,
        identity: &WorkloadIdentity,
        audience: &str,
        lifetime: Duration,
    ) -> Result<SecretValue, StoreError>;
}

/// The TokenRequest API through Sesame's Kubernetes client. The token is
/// bound to no object: the Pod it is for does not exist yet while it is
/// admitted, so its only bounds are its audience and its lifetime.
pub(crate) struct KubeTokens {
    client: ::kube::Client,
}

impl KubeTokens {
    pub(crate) fn new(client: ::kube::Client) -> Self {
        Self { client }
    }
}

#[async_trait]
impl ServiceAccountTokens for KubeTokens {
    async fn token(
        &self,
        identity: &WorkloadIdentity,
        audience: &str,
        lifetime: Duration,
    ) -> Result<SecretValue, StoreError> {
        use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
        use k8s_openapi::api::core::v1::ServiceAccount;
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(vec![audience.to_owned()]),
                expiration_seconds: Some(i64::try_from(lifetime.as_secs()).unwrap_or(600)),
                bound_object_ref: None,
            }),
            ..Default::default()
        };
        let api: ::kube::Api<ServiceAccount> =
            ::kube::Api::namespaced(self.client.clone(), &identity.namespace);
        let answer = api
            .create_token_request(&identity.service_account, &Default::default(), &request)
            .await
            .map_err(|e| match e {
                ::kube::Error::Api(s) if s.code == 404 => {
                    StoreError::Denied(format!("ServiceAccount {identity} does not exist"))
                }
                ::kube::Error::Api(s) if s.code == 403 => StoreError::Unauthorized(
                    "Sesame may not request ServiceAccount tokens (RBAC: create serviceaccounts/token)"
                        .into(),
                ),
                ::kube::Error::Api(s) => {
                    StoreError::Unreachable(format!("the TokenRequest API answered HTTP {}", s.code))
                }
                _ => StoreError::Unreachable("the TokenRequest API could not be reached".into()),
            })?;
        let token = answer.status.and_then(|s| s.token).unwrap_or_default();
        if token.is_empty() {
            return Err(StoreError::InvalidResponse(
                "the TokenRequest API returned no token".into(),
            ));
        }
        Ok(SecretValue::from(token))
    }
}

/// Stands in for the TokenRequest API where there is no cluster (`sesame
/// mutate`, `--kube off`): every request fails and says why.
pub(crate) struct NoCluster;

#[async_trait]
impl ServiceAccountTokens for NoCluster {
    async fn token(&self, _: &WorkloadIdentity, _: &str, _: Duration) -> Result<SecretValue, StoreError> {
        Err(StoreError::Unauthorized(
            "identity: pod needs the Kubernetes API to request the Pod's ServiceAccount token".into(),
        ))
    }
}

/// What a provider gets for `identity: pod`: the settings and the port.
#[derive(Clone)]
pub struct PodIdentity {
    pub(crate) config: PodIdentityConfig,
    pub(crate) tokens: Arc<dyn ServiceAccountTokens>,
}

impl PodIdentity {
    pub fn new(config: PodIdentityConfig, tokens: Arc<dyn ServiceAccountTokens>) -> Self {
        Self { config, tokens }
    }

    /// A token of the identity's ServiceAccount for `default_audience`
    /// (unless `podIdentity.audience` says otherwise).
    pub(crate) async fn token(
        &self,
        identity: &WorkloadIdentity,
        default_audience: &str,
    ) -> Result<SecretValue, StoreError> {
        self.tokens
            .token(
                identity,
                self.config.audience_or(default_audience),
                self.config.token_lifetime,
            )
            .await
    }

    /// A bounded cache of per-identity sessions of this store.
    pub(crate) fn sessions<S>(&self) -> Sessions<S> {
        Sessions::new(self.config.max_sessions)
    }
}

/// Per-identity sessions of one store (a login, a set of credentials),
/// at most `capacity`; the least recently used one is dropped to make room.
/// A session is made without I/O: its login happens on first use, within
/// its own single flight, so that one slow login holds up no other
/// ServiceAccount.
pub(crate) struct Sessions<S> {
    capacity: usize,
    inner: Mutex<SessionMap<S>>,
}

struct SessionMap<S> {
    clock: u64,
    entries: HashMap<WorkloadIdentity, (Arc<S>, u64)>,
}

impl<S> Sessions<S> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(SessionMap {
                clock: 0,
                entries: HashMap::new(),
            }),
        }
    }

    /// The session of `identity`, made by `make` when there is none.
    pub(crate) fn get(&self, identity: &WorkloadIdentity, make: impl FnOnce() -> S) -> Arc<S> {
        let Ok(mut map) = self.inner.lock() else {
            // A poisoned lock: serve a session of its own rather than fail.
            return Arc::new(make());
        };
        map.clock += 1;
        let now = map.clock;
        if let Some((session, used)) = map.entries.get_mut(identity) {
            *used = now;
            return session.clone();
        }
        if map.entries.len() >= self.capacity {
            // O(n) only when full; the cap is small (hundreds).
            if let Some(oldest) = map
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
            {
                map.entries.remove(&oldest);
            }
        }
        let session = Arc::new(make());
        map.entries.insert(identity.clone(), (session.clone(), now));
        session
    }

    /// How many sessions there are.
    pub(crate) fn len(&self) -> usize {
        self.inner.lock().map(|m| m.entries.len()).unwrap_or(0)
    }
}

/// The per-workload state of a store with `identity: pod`, or, for a store
/// that reads with Sesame's identity (`workloads` is `None`), the answer for
/// each of `count` references: that store cannot read as the Pod.
pub(crate) fn pod_workloads<W>(
    workloads: Option<&W>,
    count: usize,
) -> Result<&W, Vec<Result<SecretData, StoreError>>> {
    workloads.ok_or_else(|| {
        vec![
            Err(StoreError::InvalidRequest(
                "the store reads with Sesame's identity; set identity: pod to read as the Pod".into(),
            ));
            count
        ]
    })
}

/// `Store::fetch_as` of a provider with per-identity sessions: the session
/// of the identity is opened once for the batch (`open`, usually a lookup in
/// [`Sessions`]), then every locator is read in it (`read`) under `limit`,
/// in order. A session that cannot be opened fails every locator with its
/// error; a store without `identity: pod` refuses them ([`pod_workloads`]).
pub(crate) async fn fetch_in_session<'a, W, S, Open, Read, Fut>(
    workloads: Option<&W>,
    locators: &'a [SecretLocator],
    limit: &RequestLimit,
    open: Open,
    read: Read,
) -> Vec<Result<SecretData, StoreError>>
where
    Open: FnOnce(&W) -> Result<Arc<S>, StoreError>,
    Read: Fn(Arc<S>, &'a SecretLocator) -> Fut,
    Fut: Future<Output = Result<SecretData, StoreError>>,
{
    let workloads = match pod_workloads(workloads, locators.len()) {
        Ok(w) => w,
        Err(answers) => return answers,
    };
    match open(workloads) {
        Ok(session) => limit.each(locators, |l| read(session.clone(), l)).await,
        Err(e) => vec![Err(e); locators.len()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn id(ns: &str, sa: &str) -> WorkloadIdentity {
        WorkloadIdentity::new(ns, sa).unwrap()
    }

    fn locators() -> Vec<SecretLocator> {
        ["a", "b", "c"]
            .iter()
            .map(|p| SecretLocator::new(*p, None))
            .collect()
    }

    #[tokio::test]
    async fn a_session_is_opened_once_per_batch_and_its_failure_fails_every_locator() {
        let limit = RequestLimit::new(2);
        let opened = AtomicUsize::new(0);
        let read = |session: Arc<String>, l: &SecretLocator| {
            let text = format!("{session}:{}", l.path);
            async move { Ok(SecretData::from_text(&text)) }
        };
        let locators = locators();
        let got = fetch_in_session(
            Some(&"workloads"),
            &locators,
            &limit,
            |w| {
                opened.fetch_add(1, Ordering::SeqCst);
                Ok(Arc::new(format!("session of {w}")))
            },
            read,
        )
        .await;
        assert_eq!(opened.load(Ordering::SeqCst), 1);
        let texts: Vec<String> = got
            .iter()
            .map(|r| {
                r.as_ref()
                    .unwrap()
                    .get(None)
                    .unwrap()
                    .expose_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(
            texts,
            [
                "session of workloads:a",
                "session of workloads:b",
                "session of workloads:c"
            ]
        );

        let failed = fetch_in_session(
            Some(&"workloads"),
            &locators,
            &limit,
            |_| Err::<Arc<String>, _>(StoreError::Unauthorized("denied".into())),
            read,
        )
        .await;
        assert_eq!(failed, vec![Err(StoreError::Unauthorized("denied".into())); 3]);
    }

    #[tokio::test]
    async fn a_store_without_pod_identity_refuses_to_read_as_the_pod() {
        let locators = locators();
        let got = fetch_in_session(
            None::<&()>,
            &locators,
            &RequestLimit::new(2),
            |_| -> Result<Arc<()>, StoreError> { panic!("no session without identity: pod") },
            |_, _| async { panic!("nothing is read") },
        )
        .await;
        assert_eq!(got.len(), 3);
        for answer in got {
            let Err(StoreError::InvalidRequest(message)) = answer else {
                panic!("{answer:?}");
            };
            assert!(message.contains("set identity: pod"), "{message}");
        }
    }

    #[test]
    fn names_are_checked_before_they_reach_a_path() {
        assert!(WorkloadIdentity::new("team-a", "app").is_ok());
        for (ns, sa) in [
            ("team-a", "../../secrets/x"),
            ("team-a", "app/token"),
            ("team-a", ""),
            ("Team", "app"),
            ("team-a", "app?x=1"),
        ] {
            assert!(WorkloadIdentity::new(ns, sa).is_err(), "{ns}/{sa}");
        }
    }

    #[test]
    fn templates_fill_and_are_checked() {
        let who = id("team-a", "web");
        assert_eq!(who.render("{namespace}-{serviceAccount}"), "team-a-web");
        assert_eq!(who.subject(), "system:serviceaccount:team-a:web");
        check_template("{namespace}-{serviceAccount}", "role").unwrap();
        assert_eq!(check_template("{pod}", "role").unwrap_err().field, "role");
        assert!(check_template(" ", "role").is_err());
    }

    #[test]
    fn sessions_are_per_identity_and_bounded() {
        let sessions: Sessions<String> = Sessions::new(2);
        let a = sessions.get(&id("ns", "a"), || "a".into());
        let again = sessions.get(&id("ns", "a"), || "other".into());
        assert!(Arc::ptr_eq(&a, &again), "one session per identity");
        let b = sessions.get(&id("ns", "b"), || "b".into());
        assert_ne!(*a, *b, "another identity never gets a's session");
        // Used: a, a, b, then a again; adding c drops b, the least recent.
        sessions.get(&id("ns", "a"), || unreachable!());
        sessions.get(&id("ns", "c"), || "c".into());
        assert_eq!(sessions.len(), 2);
        let b2 = sessions.get(&id("ns", "b"), || "b-new".into());
        assert_eq!(*b2, "b-new", "the least recently used session was dropped");
    }

    #[test]
    fn pod_identity_settings_are_checked() {
        PodIdentityConfig::default().validate().unwrap();
        let short = PodIdentityConfig {
            token_lifetime: Duration::from_secs(60),
            ..Default::default()
        };
        assert_eq!(short.validate().unwrap_err().field, "tokenLifetime");
        let none = PodIdentityConfig {
            max_sessions: 0,
            ..Default::default()
        };
        assert_eq!(none.validate().unwrap_err().field, "maxSessions");
        let spaced = PodIdentityConfig {
            audience: Some("a b".into()),
            ..Default::default()
        };
        assert_eq!(spaced.validate().unwrap_err().field, "audience");
    }
}
