//! AWS Secrets Manager and SSM Parameter Store (`service:
//! parameterStore`, in `aws/parameters.rs`), through the official SDK
//! (cargo feature `aws`). A store may assume a role (`roleArn`) on top of
//! the default chain, and with `identity: pod` it assumes a role per
//! ServiceAccount with that account's token (`aws/roles.rs`).
//!
//! The SDK brings the default credential chain we would otherwise write by
//! hand: environment keys, web identity (IRSA), EKS Pod Identity and ECS
//! container credentials, shared profiles, and instance metadata. It talks
//! TLS through rustls with *ring*, the crypto provider the rest of Sesame uses.
//!
//! Credentials are fetched at start and refreshed by the store's upkeep at
//! two thirds of their lifetime; requests only read them from memory.
//!
//! A version is a `VersionId` when it is 32 to 64 characters long (the length
//! AWS requires of version ids, which are UUIDs unless a client chose its
//! own), otherwise a `VersionStage` such as `AWSCURRENT`, `AWSPREVIOUS` or a
//! custom label.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::identity::{check_template, PodIdentity};
use super::Store;
use crate::validate::{check_url, FieldError};

#[cfg(feature = "aws")]
mod parameters;
#[cfg(feature = "aws")]
mod roles;

/// Which AWS service a store reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum AwsService {
    /// AWS Secrets Manager (the default).
    #[default]
    SecretsManager,
    /// SSM Parameter Store: `String`, `StringList` and `SecureString`
    /// parameters, decrypted.
    ParameterStore,
}

/// `stores[].aws`: which service, region and endpoint, and which role.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AwsStoreConfig {
    /// `secretsManager` (the default) or `parameterStore`.
    #[serde(default, skip_serializing_if = "is_secrets_manager")]
    pub service: AwsService,
    /// A role to assume with the default chain's credentials (another
    /// account's, say); with `identity: pod` a template such as
    /// `arn:aws:iam::123456789012:role/{namespace}-{serviceAccount}`,
    /// assumed with the Pod's token (`AssumeRoleWithWebIdentity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    /// The `ExternalId` the role's trust policy asks for (not with `identity: pod`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// The role session name; default `sesame` (with `identity: pod`,
    /// `<namespace>.<serviceAccount>`), shown in CloudTrail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_name: Option<String>,
    /// STS endpoint override (a VPC endpoint, or a local emulator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sts_endpoint: Option<String>,
    /// e.g. `eu-west-1`. When absent, the SDK's region chain decides
    /// (`AWS_REGION`, the shared profile, instance metadata).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Endpoint override: a VPC interface endpoint, or a local emulator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

fn is_secrets_manager(service: &AwsService) -> bool {
    *service == AwsService::SecretsManager
}

/// Role ARNs: `arn:<partition>:iam::<account>:role/<path and name>`.
fn is_role_arn(arn: &str) -> bool {
    let mut parts = arn.splitn(6, ':');
    let fields: Vec<&str> = parts.by_ref().collect();
    matches!(fields.as_slice(), ["arn", partition, "iam", "", account, resource]
        if partition.starts_with("aws")
            && account.len() == 12
            && account.bytes().all(|b| b.is_ascii_digit())
            && resource.starts_with("role/")
            && resource.len() > 5
            && !resource.contains(char::is_whitespace))
}

/// Role session names: 2 to 64 of `[\w+=,.@-]`.
pub(crate) fn is_session_name(name: &str) -> bool {
    (2..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b))
}

impl AwsStoreConfig {
    /// The checks of `identity: pod`: a role template to assume with the
    /// Pod's token; fields are below `aws`.
    pub fn validate_pod_identity(&self) -> Result<(), FieldError> {
        let Some(template) = &self.role_arn else {
            return Err(FieldError::new(
                "roleArn",
                "is needed with identity: pod: the role each ServiceAccount assumes, e.g. arn:aws:iam::123456789012:role/{namespace}-{serviceAccount}",
            ));
        };
        check_template(template, "roleArn")?;
        if self.external_id.is_some() {
            return Err(FieldError::new(
                "externalId",
                "is not sent with a web identity (identity: pod)",
            ));
        }
        Ok(())
    }

    /// Checks what serde cannot; fields are below `aws`.
    pub fn validate(&self) -> Result<(), FieldError> {
        if let Some(arn) = &self.role_arn {
            // A template is checked by `validate_pod_identity`; its filled-in
            // form must be an ARN too.
            let sample = arn.replace("{namespace}", "ns").replace("{serviceAccount}", "sa");
            if !is_role_arn(&sample) {
                return Err(FieldError::new(
                    "roleArn",
                    "must be a role ARN such as arn:aws:iam::123456789012:role/sesame",
                ));
            }
        }
        if let Some(id) = &self.external_id {
            let ok = (2..=1224).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_+=,.@:/-".contains(&b));
            if !ok {
                return Err(FieldError::new(
                    "externalId",
                    "must be 2 to 1224 of letters, digits and _+=,.@:/-",
                ));
            }
        }
        if let Some(name) = &self.session_name {
            if !is_session_name(name) {
                return Err(FieldError::new(
                    "sessionName",
                    "must be 2 to 64 of letters, digits and _+=,.@-",
                ));
            }
        }
        if let Some(endpoint) = &self.sts_endpoint {
            check_url(endpoint, "stsEndpoint")?;
        }
        if let Some(region) = &self.region {
            let ok = !region.is_empty()
                && region
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                return Err(FieldError::new("region", "must look like eu-west-1"));
            }
        }
        if let Some(endpoint) = &self.endpoint {
            check_url(endpoint, "endpoint")?;
        }
        Ok(())
    }
}

/// How a reference's version is sent to AWS.
#[cfg(any(feature = "aws", test))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VersionSelector<'a> {
    Id(&'a str),
    Stage(&'a str),
}

#[cfg(any(feature = "aws", test))]
impl<'a> VersionSelector<'a> {
    /// 32 to 64 characters: a `VersionId`; anything else: a `VersionStage`.
    pub fn of(version: &'a str) -> Self {
        if (32..=64).contains(&version.len()) {
            Self::Id(version)
        } else {
            Self::Stage(version)
        }
    }
}

/// Builds the AWS store, or explains that this build has none.
pub async fn build(config: &AwsStoreConfig, pod: Option<PodIdentity>) -> anyhow::Result<Arc<dyn Store>> {
    #[cfg(feature = "aws")]
    {
        Ok(Arc::new(AwsStore::with_identity(config, pod).await?))
    }
    #[cfg(not(feature = "aws"))]
    {
        let _ = (config, pod);
        anyhow::bail!("this build of Sesame has no AWS support (cargo feature `aws`)")
    }
}

#[cfg(feature = "aws")]
pub use imp::AwsStore;

#[cfg(feature = "aws")]
mod imp {
    use std::collections::HashMap;
    use std::fmt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Weak};
    use std::time::{Duration, SystemTime};

    use arc_swap::ArcSwapOption;
    use async_trait::async_trait;
    use aws_config::SdkConfig;
    use aws_credential_types::provider::error::CredentialsError;
    use aws_credential_types::provider::{future, ProvideCredentials, SharedCredentialsProvider};
    use aws_credential_types::Credentials;
    use aws_sdk_secretsmanager as sm;
    use aws_smithy_http_client::tls;
    use sm::config::retry::RetryConfig;
    use sm::config::timeout::TimeoutConfig;
    use sm::config::{BehaviorVersion, IdentityCache, Region};
    use sm::error::{ProvideErrorMetadata, SdkError};
    use sm::primitives::Blob;

    use super::parameters;
    use super::roles::{self, WebIdentity};
    use super::{AwsService, AwsStoreConfig, VersionSelector};
    use crate::stores::identity::{pod_workloads, PodIdentity, Sessions, WorkloadIdentity};
    use crate::stores::{RequestLimit, SecretData, SecretLocator, SecretValue, Store, StoreError, Upkeep};

    /// Ids per `BatchGetSecretValue` call (the API's limit).
    const BATCH_LIMIT: usize = 20;

    /// An AWS Secrets Manager or Parameter Store store.
    pub struct AwsStore {
        /// Sesame's own identity (the default chain, or the role it
        /// assumes); `None` with `identity: pod`.
        own: Option<Reader>,
        /// `identity: pod`: a role per ServiceAccount.
        workloads: Option<Workloads>,
        clients: Clients,
        region: String,
        endpoint: Option<String>,
    }

    impl fmt::Debug for AwsStore {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let batch = self.own.as_ref().is_some_and(|r| r.batch.load(Ordering::Relaxed));
            f.debug_struct("AwsStore")
                .field("service", &self.clients.service)
                .field("region", &self.region)
                .field("endpoint", &self.endpoint)
                .field("batch", &batch)
                .field("identity_pod", &self.workloads.is_some())
                .finish_non_exhaustive()
        }
    }

    /// The client of one identity: the service's client with those
    /// credentials.
    pub(super) struct Reader {
        api: Api,
        credentials: Arc<RefreshingCredentials>,
        /// Cleared when the role may not call `BatchGetSecretValue`; single
        /// `GetSecretValue` calls are used from then on.
        batch: AtomicBool,
    }

    enum Api {
        SecretsManager(sm::Client),
        ParameterStore(aws_sdk_ssm::Client),
    }

    /// Builds the service's client for a set of credentials.
    struct Clients {
        sdk: SdkConfig,
        endpoint: Option<String>,
        service: AwsService,
    }

    impl Clients {
        fn reader(&self, credentials: Arc<RefreshingCredentials>) -> Reader {
            let provider = SharedCredentialsProvider::new(CredentialsHandle(credentials.clone()));
            let retry = RetryConfig::standard()
                .with_max_attempts(3)
                .with_initial_backoff(Duration::from_millis(50))
                .with_max_backoff(Duration::from_millis(800));
            let timeouts = TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(5))
                .build();
            // Our provider is itself an in-memory cache refreshed in the
            // background: the SDK's own identity cache is off.
            let api = match self.service {
                AwsService::SecretsManager => {
                    let mut builder = sm::config::Builder::from(&self.sdk)
                        .credentials_provider(provider)
                        .identity_cache(IdentityCache::no_cache())
                        .retry_config(retry)
                        .timeout_config(timeouts);
                    if let Some(endpoint) = &self.endpoint {
                        builder = builder.endpoint_url(endpoint);
                    }
                    Api::SecretsManager(sm::Client::from_conf(builder.build()))
                }
                AwsService::ParameterStore => {
                    let mut builder = aws_sdk_ssm::config::Builder::from(&self.sdk)
                        .credentials_provider(provider)
                        .identity_cache(IdentityCache::no_cache())
                        .retry_config(retry)
                        .timeout_config(timeouts);
                    if let Some(endpoint) = &self.endpoint {
                        builder = builder.endpoint_url(endpoint);
                    }
                    Api::ParameterStore(aws_sdk_ssm::Client::from_conf(builder.build()))
                }
            };
            Reader {
                api,
                credentials,
                batch: AtomicBool::new(true),
            }
        }
    }

    /// The per-ServiceAccount side of a store with `identity: pod`.
    struct Workloads {
        pod: PodIdentity,
        web_identity: Arc<WebIdentity>,
        sessions: Sessions<Reader>,
    }

    impl AwsStore {
        /// A store with Sesame's own identity.
        pub async fn new(config: &AwsStoreConfig) -> anyhow::Result<Self> {
            Self::with_identity(config, None).await
        }

        /// Loads region and credential chain, fetches credentials once (a
        /// failure is logged and retried in the background, not fatal), and
        /// builds the client with retries that fit the resolve budget. With
        /// `pod`, the store has no credentials of its own: each
        /// ServiceAccount assumes the role its template names.
        pub async fn with_identity(
            config: &AwsStoreConfig,
            pod: Option<PodIdentity>,
        ) -> anyhow::Result<Self> {
            config
                .validate()
                .and_then(|()| match &pod {
                    Some(_) => config.validate_pod_identity(),
                    None => Ok(()),
                })
                .map_err(|e| anyhow::anyhow!("{}", e.within("aws")))?;
            let http = aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
                .build_https();
            let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http);
            if let Some(region) = &config.region {
                loader = loader.region(Region::new(region.clone()));
            }
            let sdk = loader.load().await;
            let region = sdk
                .region()
                .map(|r| r.as_ref().to_owned())
                .ok_or_else(|| anyhow::anyhow!("aws.region: not set, and AWS_REGION is not set either"))?;
            let sts_sdk = match &config.sts_endpoint {
                Some(endpoint) => sdk.to_builder().endpoint_url(endpoint).build(),
                None => sdk.clone(),
            };
            let clients = Clients {
                sdk,
                endpoint: config.endpoint.clone(),
                service: config.service,
            };
            let (own, workloads) = match pod {
                Some(pod) => {
                    let template = config.role_arn.clone().unwrap_or_default();
                    let web_identity =
                        Arc::new(WebIdentity::new(&sts_sdk, template, config.session_name.clone()));
                    let sessions = pod.sessions();
                    (
                        None,
                        Some(Workloads {
                            pod,
                            web_identity,
                            sessions,
                        }),
                    )
                }
                None => {
                    let chain = clients
                        .sdk
                        .credentials_provider()
                        .ok_or_else(|| anyhow::anyhow!("aws: the SDK found no credential chain"))?;
                    let provider = match &config.role_arn {
                        Some(arn) => roles::assume_role(&sts_sdk, chain, arn, config).await,
                        None => chain,
                    };
                    let credentials = Arc::new(RefreshingCredentials::new(provider));
                    if let Err(e) = credentials.refresh().await {
                        tracing::warn!(error = %e, "no AWS credentials yet; retrying in the background");
                    }
                    (Some(clients.reader(credentials)), None)
                }
            };
            Ok(Self {
                own,
                workloads,
                clients,
                region,
                endpoint: config.endpoint.clone(),
            })
        }

        /// The reader of one ServiceAccount: credentials of the role it
        /// assumes with its own token, fetched when first needed and again
        /// once they near their end.
        fn session(&self, workloads: &Workloads, identity: &WorkloadIdentity) -> Arc<Reader> {
            workloads.sessions.get(identity, || {
                let provider = workloads
                    .web_identity
                    .provider(workloads.pod.clone(), identity.clone());
                let credentials = Arc::new(RefreshingCredentials::new(SharedCredentialsProvider::new(
                    provider,
                )));
                self.clients.reader(credentials)
            })
        }
    }

    impl Reader {
        pub(super) fn has_credentials(&self) -> bool {
            self.credentials.current().is_some()
        }

        async fn fetch(
            &self,
            locators: &[SecretLocator],
            limit: &RequestLimit,
        ) -> Vec<Result<SecretData, StoreError>> {
            match &self.api {
                Api::SecretsManager(client) => self.secrets_manager(client, locators, limit).await,
                Api::ParameterStore(client) => {
                    limit.each(locators, |l| parameters::read(client, self, l)).await
                }
            }
        }

        /// Current versions go through `BatchGetSecretValue` (20 per call)
        /// when there are several; pinned versions, and everything when the
        /// batch API is not allowed, through `GetSecretValue` calls. Each
        /// call, batch or single, is one request under `limit`.
        async fn secrets_manager(
            &self,
            client: &sm::Client,
            locators: &[SecretLocator],
            limit: &RequestLimit,
        ) -> Vec<Result<SecretData, StoreError>> {
            let mut results: Vec<Option<Result<SecretData, StoreError>>> = vec![None; locators.len()];
            let current: Vec<usize> = (0..locators.len())
                .filter(|&i| locators[i].version.is_none())
                .collect();
            if current.len() > 1 && self.batch.load(Ordering::Relaxed) {
                for chunk in current.chunks(BATCH_LIMIT) {
                    let ids: Vec<&str> = chunk.iter().map(|&i| locators[i].path.as_str()).collect();
                    let Some(mut found) = limit.run(self.get_batch(client, &ids)).await else {
                        break;
                    };
                    for &i in chunk {
                        results[i] = found.remove(&locators[i].path);
                    }
                }
            }
            // Whatever the batch did not answer (pinned versions, ids it did not echo).
            let rest: Vec<usize> = (0..locators.len()).filter(|&i| results[i].is_none()).collect();
            let rest_locators: Vec<&SecretLocator> = rest.iter().map(|&i| &locators[i]).collect();
            let singles = limit.each(&rest_locators, |l| self.get_one(client, l)).await;
            for (i, answer) in rest.into_iter().zip(singles) {
                results[i] = Some(answer);
            }
            results
                .into_iter()
                .map(|r| r.unwrap_or(Err(StoreError::Timeout)))
                .collect()
        }

        async fn get_one(
            &self,
            client: &sm::Client,
            locator: &SecretLocator,
        ) -> Result<SecretData, StoreError> {
            let mut request = client.get_secret_value().secret_id(&locator.path);
            request = match locator.version.as_deref().map(VersionSelector::of) {
                Some(VersionSelector::Id(id)) => request.version_id(id),
                Some(VersionSelector::Stage(stage)) => request.version_stage(stage),
                None => request,
            };
            match request.send().await {
                Ok(out) => secret_data(out.secret_string(), out.secret_binary()),
                Err(e) => Err(self.sdk_error(&e, locator.version.is_some())),
            }
        }

        /// Current versions of up to `BATCH_LIMIT` secrets in one call. `None`
        /// when the batch API may not be used (then single calls follow).
        async fn get_batch(
            &self,
            client: &sm::Client,
            ids: &[&str],
        ) -> Option<HashMap<String, Result<SecretData, StoreError>>> {
            let list: Vec<String> = ids.iter().map(|s| (*s).to_owned()).collect();
            let out = match client
                .batch_get_secret_value()
                .set_secret_id_list(Some(list))
                .send()
                .await
            {
                Ok(out) => out,
                Err(e) => {
                    let err = self.sdk_error(&e, false);
                    if matches!(err, StoreError::Unauthorized(_)) && self.has_credentials() {
                        tracing::info!("BatchGetSecretValue is not allowed; using GetSecretValue per secret");
                        self.batch.store(false, Ordering::Relaxed);
                        return None;
                    }
                    return Some(
                        ids.iter()
                            .map(|id| ((*id).to_owned(), Err(err.clone())))
                            .collect(),
                    );
                }
            };
            let mut found = HashMap::new();
            for entry in out.secret_values() {
                let data = secret_data(entry.secret_string(), entry.secret_binary());
                // A reference may name the secret or give its ARN.
                for id in ids {
                    if Some(*id) == entry.name() || Some(*id) == entry.arn() {
                        found.insert((*id).to_owned(), data.clone());
                    }
                }
            }
            for error in out.errors() {
                if let Some(id) = error.secret_id() {
                    found.insert(id.to_owned(), Err(code_error(error.error_code(), 400, false)));
                }
            }
            Some(found)
        }

        /// Every service's raw answer is the same smithy HTTP response type.
        pub(super) fn sdk_error<E>(
            &self,
            e: &SdkError<E, sm::config::http::HttpResponse>,
            versioned: bool,
        ) -> StoreError
        where
            E: ProvideErrorMetadata,
        {
            match e {
                SdkError::ServiceError(service) => {
                    let meta = service.err();
                    code_error(meta.code(), service.raw().status().as_u16(), versioned)
                }
                SdkError::TimeoutError(_) => StoreError::Timeout,
                // The credentials could not be had (the SDK reports their
                // provider's failure as one to dispatch the request).
                SdkError::DispatchFailure(_) | SdkError::ConstructionFailure(_)
                    if !self.has_credentials() =>
                {
                    self.credentials.failure()
                }
                SdkError::DispatchFailure(failure) if failure.is_timeout() => StoreError::Timeout,
                SdkError::DispatchFailure(_) => StoreError::Unreachable("connection failed".into()),
                SdkError::ResponseError(_) => {
                    StoreError::InvalidResponse("the answer could not be read".into())
                }
                _ => StoreError::InvalidRequest("the request could not be built".into()),
            }
        }
    }

    /// Maps an AWS error code (or, failing that, the HTTP status) to a
    /// failure class. Only the code is kept: messages may quote identifiers.
    /// A missing resource on a versioned read is a missing version (AWS and
    /// emulators word the two cases differently, so messages are no guide).
    pub(super) fn code_error(code: Option<&str>, status: u16, versioned: bool) -> StoreError {
        let code = code.unwrap_or_default();
        match code {
            "ResourceNotFoundException" | "ParameterNotFound" if versioned => StoreError::VersionNotFound,
            "ResourceNotFoundException" | "ParameterNotFound" => StoreError::NotFound,
            "ParameterVersionNotFound" | "ParameterVersionLabelNotFound" => StoreError::VersionNotFound,
            "ThrottlingException" | "TooManyRequestsException" | "RequestLimitExceeded" => {
                StoreError::Throttled
            }
            "AccessDeniedException"
            | "AccessDenied"
            | "UnrecognizedClientException"
            | "InvalidClientTokenId"
            | "InvalidSignatureException"
            | "SignatureDoesNotMatch"
            | "IncompleteSignature"
            | "MissingAuthenticationToken"
            | "ExpiredTokenException"
            | "InvalidIdentityToken"
            | "IDPRejectedClaim"
            | "InvalidKeyId"
            | "DecryptionFailure" => StoreError::Unauthorized(code.to_owned()),
            "InternalServiceError" | "InternalFailure" | "InternalServerError" | "ServiceUnavailable" => {
                StoreError::Unreachable(code.to_owned())
            }
            _ => {
                // Only a code AWS documents is repeated: the code comes from
                // the answer, and an endpoint is trusted only so far.
                let code = crate::stores::common::error_code(Some(code), OTHER_CODES);
                match status {
                    429 => StoreError::Throttled,
                    401 | 403 => {
                        StoreError::Unauthorized(format!("HTTP {status} {code}").trim_end().to_owned())
                    }
                    500..=599 => {
                        StoreError::Unreachable(format!("HTTP {status} {code}").trim_end().to_owned())
                    }
                    _ if code.is_empty() => StoreError::InvalidRequest(format!("HTTP {status}")),
                    _ => StoreError::InvalidRequest(code.to_owned()),
                }
            }
        }
    }

    /// Secrets Manager's other documented error codes, and the common ones
    /// of every AWS API, that a message may name.
    const OTHER_CODES: &[&str] = &[
        "InvalidParameterException",
        "InvalidRequestException",
        "InvalidNextTokenException",
        "LimitExceededException",
        "ResourceExistsException",
        "EncryptionFailure",
        "MalformedPolicyDocumentException",
        "PreconditionNotMetException",
        "PublicPolicyException",
        "ValidationException",
        "ValidationError",
        "SerializationException",
        "UnknownOperationException",
        "InvalidAction",
        "InvalidParameterCombination",
        "InvalidParameterValue",
        "InvalidQueryParameter",
        "MissingAction",
        "MissingParameter",
        "NotAuthorized",
        "OptInRequired",
        "RequestExpired",
    ];

    /// SecretString: a JSON object becomes properties, other text one value.
    /// SecretBinary: one value.
    fn secret_data(string: Option<&str>, binary: Option<&Blob>) -> Result<SecretData, StoreError> {
        match (string, binary) {
            (Some(text), _) => Ok(SecretData::from_text(text)),
            (None, Some(blob)) => Ok(SecretData::Value(SecretValue::new(blob.as_ref().to_vec()))),
            (None, None) => Err(StoreError::InvalidResponse(
                "the secret version has no value".into(),
            )),
        }
    }

    #[async_trait]
    impl Store for AwsStore {
        fn provider(&self) -> &'static str {
            "aws"
        }

        async fn read(&self, locator: &SecretLocator) -> Result<SecretData, StoreError> {
            self.fetch(std::slice::from_ref(locator), &RequestLimit::new(1))
                .await
                .pop()
                .unwrap_or(Err(StoreError::Timeout))
        }

        async fn fetch(
            &self,
            locators: &[SecretLocator],
            limit: &RequestLimit,
        ) -> Vec<Result<SecretData, StoreError>> {
            match &self.own {
                Some(reader) => reader.fetch(locators, limit).await,
                None => vec![
                    Err(StoreError::Unauthorized(
                        "the store reads as the Pod's ServiceAccount (identity: pod) only".into(),
                    ));
                    locators.len()
                ],
            }
        }

        /// Reads with the credentials of the role the ServiceAccount assumes.
        async fn fetch_as(
            &self,
            identity: &WorkloadIdentity,
            locators: &[SecretLocator],
            limit: &RequestLimit,
        ) -> Vec<Result<SecretData, StoreError>> {
            // One batched fetch in the session, not one request a locator.
            match pod_workloads(self.workloads.as_ref(), locators.len()) {
                Ok(workloads) => self.session(workloads, identity).fetch(locators, limit).await,
                Err(answers) => answers,
            }
        }

        /// Credentials from the chain are at hand (the chain did its own
        /// calls, such as the web-identity exchange, to get them). With
        /// `identity: pod` there are none of Sesame's to check.
        async fn check(&self) -> Result<(), StoreError> {
            let Some(reader) = &self.own else {
                return Ok(());
            };
            match reader.credentials.current() {
                Some(_) => Ok(()),
                None => reader
                    .credentials
                    .refresh()
                    .await
                    .map_err(|_| reader.credentials.failure()),
            }
        }

        /// Refreshes the credentials before they expire.
        fn upkeep(&self) -> Option<Upkeep> {
            let reader = self.own.as_ref()?;
            Some(Box::pin(maintain(Arc::downgrade(&reader.credentials))))
        }
    }

    /// A credentials provider behind an in-memory copy that a background
    /// task renews before expiry, so that requests never wait for STS or
    /// IMDS. The copies of `identity: pod` sessions have no task: they are
    /// fetched again on the request path once they near their end.
    pub(super) struct RefreshingCredentials {
        chain: SharedCredentialsProvider,
        current: ArcSwapOption<Credentials>,
        lock: tokio::sync::Mutex<()>,
        /// Why the last fetch failed, as a store error (without secrets).
        last_error: std::sync::Mutex<Option<StoreError>>,
    }

    impl RefreshingCredentials {
        fn new(chain: SharedCredentialsProvider) -> Self {
            Self {
                chain,
                current: ArcSwapOption::empty(),
                lock: tokio::sync::Mutex::new(()),
                last_error: std::sync::Mutex::new(None),
            }
        }

        /// The credentials in memory, unless they are about to expire.
        fn current(&self) -> Option<Credentials> {
            let creds = self.current.load_full()?;
            match creds.expiry() {
                Some(expiry) if expiry <= SystemTime::now() + Duration::from_secs(5) => None,
                _ => Some((*creds).clone()),
            }
        }

        async fn refresh(&self) -> Result<(), CredentialsError> {
            match self.chain.provide_credentials().await {
                Ok(creds) => {
                    self.current.store(Some(Arc::new(creds)));
                    Ok(())
                }
                Err(e) => {
                    if let Ok(mut last) = self.last_error.lock() {
                        *last = Some(roles::credentials_failure(&e));
                    }
                    Err(e)
                }
            }
        }

        /// Why there are no credentials: the last failure's class and code.
        fn failure(&self) -> StoreError {
            self.last_error
                .lock()
                .ok()
                .and_then(|e| e.clone())
                .unwrap_or_else(|| {
                    StoreError::Unauthorized("no AWS credentials from the default chain".into())
                })
        }

        /// Time until the next refresh: two thirds of what is left.
        fn next_refresh(&self) -> Duration {
            let left = self
                .current
                .load()
                .as_ref()
                .and_then(|c| c.expiry())
                .map(|expiry| expiry.duration_since(SystemTime::now()).unwrap_or_default());
            match left {
                // Divided first: `left` comes from the credential source and may be huge.
                Some(left) => (left / 3 * 2).max(Duration::from_secs(1)),
                // Credentials without expiry (static keys) are read again now and then.
                None if self.current.load().is_some() => Duration::from_secs(600),
                None => Duration::ZERO,
            }
        }
    }

    /// Keeps the credentials fresh; ends once the store is dropped.
    async fn maintain(weak: Weak<RefreshingCredentials>) {
        let mut failures: u32 = 0;
        loop {
            let wait = {
                let Some(creds) = weak.upgrade() else { return };
                if failures > 0 {
                    Duration::from_secs(1)
                        .saturating_mul(1 << failures.min(5))
                        .min(Duration::from_secs(30))
                } else {
                    creds.next_refresh()
                }
            };
            tokio::time::sleep(wait).await;
            let Some(creds) = weak.upgrade() else { return };
            let _guard = creds.lock.lock().await;
            match creds.refresh().await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, "could not refresh AWS credentials; will try again");
                }
            }
        }
    }

    /// What the SDK holds: answers from memory, and fetches only when there
    /// is nothing usable (the first fetch failed, the upkeep fell behind,
    /// or an `identity: pod` session's credentials near their end).
    #[derive(Clone)]
    struct CredentialsHandle(Arc<RefreshingCredentials>);

    impl fmt::Debug for CredentialsHandle {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("CredentialsHandle")
        }
    }

    impl ProvideCredentials for CredentialsHandle {
        fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            future::ProvideCredentials::new(async move {
                if let Some(creds) = self.0.current() {
                    return Ok(creds);
                }
                let _guard = self.0.lock.lock().await;
                if let Some(creds) = self.0.current() {
                    return Ok(creds);
                }
                self.0.refresh().await?;
                self.0
                    .current()
                    .ok_or_else(|| CredentialsError::not_loaded("the credentials have expired"))
            })
        }
    }
    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn error_codes_map_to_classes() {
            assert_eq!(
                code_error(Some("ResourceNotFoundException"), 400, false),
                StoreError::NotFound
            );
            assert_eq!(
                code_error(Some("ResourceNotFoundException"), 400, true),
                StoreError::VersionNotFound
            );
            assert_eq!(
                code_error(Some("ThrottlingException"), 400, false),
                StoreError::Throttled
            );
            assert_eq!(
                code_error(Some("AccessDeniedException"), 400, false).class(),
                "unauthorised"
            );
            assert_eq!(
                code_error(Some("UnrecognizedClientException"), 400, false).class(),
                "unauthorised"
            );
            assert_eq!(
                code_error(Some("InternalServiceError"), 500, false).class(),
                "unreachable"
            );
            assert_eq!(code_error(None, 503, false).class(), "unreachable");
            assert_eq!(code_error(None, 429, false), StoreError::Throttled);
            assert_eq!(
                code_error(Some("InvalidParameterException"), 400, false),
                StoreError::InvalidRequest("InvalidParameterException".into())
            );
            // A code AWS does not document is not repeated: it came from the answer.
            assert_eq!(
                code_error(Some("secret-id-1234"), 400, false),
                StoreError::InvalidRequest("HTTP 400".into())
            );
            assert_eq!(
                code_error(Some("secret-id-1234"), 403, false),
                StoreError::Unauthorized("HTTP 403".into())
            );
        }

        #[test]
        fn string_json_and_binary_secrets() {
            let plain = secret_data(Some("hunter2"), None).unwrap();
            assert_eq!(plain.get(None).unwrap().expose(), b"hunter2");
            let json = secret_data(Some(r#"{"user":"u","port":5432}"#), None).unwrap();
            assert_eq!(json.get(Some("port")).unwrap().expose(), b"5432");
            let blob = Blob::new(vec![0u8, 159, 146, 150]);
            let binary = secret_data(None, Some(&blob)).unwrap();
            assert_eq!(binary.get(None).unwrap().expose(), &[0u8, 159, 146, 150]);
            assert_eq!(secret_data(None, None).unwrap_err().class(), "invalid_response");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_ids_or_stages() {
        assert_eq!(
            VersionSelector::of("AWSPREVIOUS"),
            VersionSelector::Stage("AWSPREVIOUS")
        );
        assert_eq!(
            VersionSelector::of("blue-green"),
            VersionSelector::Stage("blue-green")
        );
        let uuid = "EXAMPLE1-90ab-cdef-fedc-ba987EXAMPLE";
        assert_eq!(VersionSelector::of(uuid), VersionSelector::Id(uuid));
        let token = "a".repeat(64);
        assert_eq!(VersionSelector::of(&token), VersionSelector::Id(&token));
        let long_stage = "a".repeat(65);
        assert!(matches!(
            VersionSelector::of(&long_stage),
            VersionSelector::Stage(_)
        ));
    }

    #[test]
    fn validation_names_the_field() {
        let ok = AwsStoreConfig {
            region: Some("eu-west-1".into()),
            endpoint: Some("http://127.0.0.1:5000".into()),
            role_arn: Some("arn:aws:iam::123456789012:role/team/sesame".into()),
            external_id: Some("sesame-1".into()),
            ..Default::default()
        };
        ok.validate().unwrap();
        let bad_region = AwsStoreConfig {
            region: Some("EU West".into()),
            ..Default::default()
        };
        assert_eq!(bad_region.validate().unwrap_err().field, "region");
        let bad_endpoint = AwsStoreConfig {
            endpoint: Some("secretsmanager.local".into()),
            ..Default::default()
        };
        assert_eq!(bad_endpoint.validate().unwrap_err().field, "endpoint");
        for (config, field) in [
            (
                AwsStoreConfig {
                    role_arn: Some("arn:aws:iam::12:role/x".into()),
                    ..Default::default()
                },
                "roleArn",
            ),
            (
                AwsStoreConfig {
                    role_arn: Some("arn:aws:s3:::bucket".into()),
                    ..Default::default()
                },
                "roleArn",
            ),
            (
                AwsStoreConfig {
                    session_name: Some("a b".into()),
                    ..Default::default()
                },
                "sessionName",
            ),
            (
                AwsStoreConfig {
                    external_id: Some("x".into()),
                    ..Default::default()
                },
                "externalId",
            ),
        ] {
            assert_eq!(config.validate().unwrap_err().field, field, "{config:?}");
        }
        // identity: pod needs a role template and sends no external id.
        let pod = AwsStoreConfig {
            role_arn: Some("arn:aws:iam::123456789012:role/{namespace}-{serviceAccount}".into()),
            ..Default::default()
        };
        pod.validate().unwrap();
        pod.validate_pod_identity().unwrap();
        assert_eq!(
            AwsStoreConfig::default()
                .validate_pod_identity()
                .unwrap_err()
                .field,
            "roleArn"
        );
        let with_id = AwsStoreConfig {
            external_id: Some("abc".into()),
            ..pod
        };
        assert_eq!(with_id.validate_pod_identity().unwrap_err().field, "externalId");
    }

    #[test]
    fn config_file_section() {
        let config = crate::config::Config::from_yaml(
            "stores:\n  - name: aws\n    aws: {region: eu-west-1}\n",
            "t.yaml",
        )
        .unwrap();
        assert_eq!(
            config.stores[0].aws.as_ref().unwrap().region.as_deref(),
            Some("eu-west-1")
        );
        let err = crate::config::Config::from_yaml(
            "stores:\n  - name: aws\n    aws: {endpoint: localhost}\n",
            "t.yaml",
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("t.yaml: stores[0].aws.endpoint:"),
            "{err}"
        );
        let err = crate::config::Config::from_yaml(
            "stores:\n  - name: aws\n    aws: {region: eu-west-1, roleArn: x}\n",
            "t.yaml",
        )
        .unwrap_err();
        assert!(err.to_string().contains("stores[0].aws.roleArn"), "{err}");
        let ssm = crate::config::Config::from_yaml(
            "stores:\n  - name: ssm\n    aws: {service: parameterStore}\n",
            "t.yaml",
        )
        .unwrap();
        assert_eq!(
            ssm.stores[0].aws.as_ref().unwrap().service,
            AwsService::ParameterStore
        );
    }
}
