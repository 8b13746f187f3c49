//! AWS Secrets Manager, through the official SDK (cargo feature `aws`).
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

use super::Store;
use crate::validate::{check_url, FieldError};

/// `stores[].aws`: which region and, optionally, which endpoint.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AwsStoreConfig {
    /// e.g. `eu-west-1`. When absent, the SDK's region chain decides
    /// (`AWS_REGION`, the shared profile, instance metadata).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Endpoint override: a VPC interface endpoint, or a local emulator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

impl AwsStoreConfig {
    /// Checks what serde cannot; fields are below `aws`.
    pub fn validate(&self) -> Result<(), FieldError> {
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
pub async fn build(config: &AwsStoreConfig) -> anyhow::Result<Arc<dyn Store>> {
    #[cfg(feature = "aws")]
    {
        Ok(Arc::new(AwsStore::new(config).await?))
    }
    #[cfg(not(feature = "aws"))]
    {
        let _ = config;
        anyhow::bail!("this build of Sesame has no AWS Secrets Manager support (cargo feature `aws`)")
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

    use super::{AwsStoreConfig, VersionSelector};
    use crate::stores::{RequestLimit, SecretData, SecretLocator, SecretValue, Store, StoreError, Upkeep};

    /// Ids per `BatchGetSecretValue` call (the API's limit).
    const BATCH_LIMIT: usize = 20;

    /// An AWS Secrets Manager store.
    pub struct AwsStore {
        client: sm::Client,
        credentials: Arc<RefreshingCredentials>,
        /// Cleared when the role may not call `BatchGetSecretValue`; single
        /// `GetSecretValue` calls are used from then on.
        batch: AtomicBool,
        region: String,
        endpoint: Option<String>,
    }

    impl fmt::Debug for AwsStore {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("AwsStore")
                .field("region", &self.region)
                .field("endpoint", &self.endpoint)
                .field("batch", &self.batch.load(Ordering::Relaxed))
                .finish_non_exhaustive()
        }
    }

    impl AwsStore {
        /// Loads region and credential chain, fetches credentials once (a
        /// failure is logged and retried in the background, not fatal), and
        /// builds the client with retries that fit the resolve budget.
        pub async fn new(config: &AwsStoreConfig) -> anyhow::Result<Self> {
            config
                .validate()
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
            let chain = sdk
                .credentials_provider()
                .ok_or_else(|| anyhow::anyhow!("aws: the SDK found no credential chain"))?;
            let credentials = Arc::new(RefreshingCredentials::new(chain));
            if let Err(e) = credentials.refresh().await {
                tracing::warn!(error = %e, "no AWS credentials yet; retrying in the background");
            }
            let mut builder = sm::config::Builder::from(&sdk)
                .credentials_provider(SharedCredentialsProvider::new(CredentialsHandle(
                    credentials.clone(),
                )))
                // Our provider is itself an in-memory cache refreshed in the background.
                .identity_cache(IdentityCache::no_cache())
                .retry_config(
                    RetryConfig::standard()
                        .with_max_attempts(3)
                        .with_initial_backoff(Duration::from_millis(50))
                        .with_max_backoff(Duration::from_millis(800)),
                )
                .timeout_config(
                    TimeoutConfig::builder()
                        .connect_timeout(Duration::from_secs(3))
                        .operation_attempt_timeout(Duration::from_secs(5))
                        .build(),
                );
            if let Some(endpoint) = &config.endpoint {
                builder = builder.endpoint_url(endpoint);
            }
            Ok(Self {
                client: sm::Client::from_conf(builder.build()),
                credentials,
                batch: AtomicBool::new(true),
                region,
                endpoint: config.endpoint.clone(),
            })
        }

        async fn get_one(&self, locator: &SecretLocator) -> Result<SecretData, StoreError> {
            let mut request = self.client.get_secret_value().secret_id(&locator.path);
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
        async fn get_batch(&self, ids: &[&str]) -> Option<HashMap<String, Result<SecretData, StoreError>>> {
            let list: Vec<String> = ids.iter().map(|s| (*s).to_owned()).collect();
            let out = match self
                .client
                .batch_get_secret_value()
                .set_secret_id_list(Some(list))
                .send()
                .await
            {
                Ok(out) => out,
                Err(e) => {
                    let err = self.sdk_error(&e, false);
                    if matches!(err, StoreError::Unauthorized(_)) && self.credentials.current().is_some() {
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

        fn sdk_error<E>(&self, e: &SdkError<E, sm::config::http::HttpResponse>, versioned: bool) -> StoreError
        where
            E: ProvideErrorMetadata,
        {
            match e {
                SdkError::ServiceError(service) => {
                    let meta = service.err();
                    code_error(meta.code(), service.raw().status().as_u16(), versioned)
                }
                SdkError::TimeoutError(_) => StoreError::Timeout,
                SdkError::DispatchFailure(failure) if failure.is_timeout() => StoreError::Timeout,
                SdkError::DispatchFailure(_) => StoreError::Unreachable("connection failed".into()),
                SdkError::ResponseError(_) => {
                    StoreError::InvalidResponse("the answer could not be read".into())
                }
                // Building the request fails chiefly when no credentials could be had.
                _ if self.credentials.current().is_none() => {
                    StoreError::Unauthorized("no AWS credentials from the default chain".into())
                }
                _ => StoreError::InvalidRequest("the request could not be built".into()),
            }
        }
    }

    /// Maps an AWS error code (or, failing that, the HTTP status) to a
    /// failure class. Only the code is kept: messages may quote identifiers.
    /// A missing resource on a versioned read is a missing version (AWS and
    /// emulators word the two cases differently, so messages are no guide).
    fn code_error(code: Option<&str>, status: u16, versioned: bool) -> StoreError {
        let code = code.unwrap_or_default();
        match code {
            "ResourceNotFoundException" if versioned => StoreError::VersionNotFound,
            "ResourceNotFoundException" => StoreError::NotFound,
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
            | "DecryptionFailure" => StoreError::Unauthorized(code.to_owned()),
            "InternalServiceError" | "InternalFailure" | "ServiceUnavailable" => {
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
            self.get_one(locator).await
        }

        /// Current versions go through `BatchGetSecretValue` (20 per call)
        /// when there are several; pinned versions, and everything when the
        /// batch API is not allowed, through `GetSecretValue` calls. Each
        /// call, batch or single, is one request under `limit`.
        async fn fetch(
            &self,
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
                    let Some(mut found) = limit.run(self.get_batch(&ids)).await else {
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
            let singles = limit.each(&rest_locators, |l| self.get_one(l)).await;
            for (i, answer) in rest.into_iter().zip(singles) {
                results[i] = Some(answer);
            }
            results
                .into_iter()
                .map(|r| r.unwrap_or(Err(StoreError::Timeout)))
                .collect()
        }

        /// Credentials from the chain are at hand (the chain did its own
        /// calls, such as the web-identity exchange, to get them).
        async fn check(&self) -> Result<(), StoreError> {
            match self.credentials.current() {
                Some(_) => Ok(()),
                None => self.credentials.refresh().await.map_err(|_| {
                    StoreError::Unauthorized("no AWS credentials from the default chain".into())
                }),
            }
        }

        /// Refreshes the credentials before they expire.
        fn upkeep(&self) -> Option<Upkeep> {
            Some(Box::pin(maintain(Arc::downgrade(&self.credentials))))
        }
    }

    /// The default chain behind an in-memory copy that a background task
    /// renews before expiry, so that requests never wait for STS or IMDS.
    struct RefreshingCredentials {
        chain: SharedCredentialsProvider,
        current: ArcSwapOption<Credentials>,
        lock: tokio::sync::Mutex<()>,
    }

    impl RefreshingCredentials {
        fn new(chain: SharedCredentialsProvider) -> Self {
            Self {
                chain,
                current: ArcSwapOption::empty(),
                lock: tokio::sync::Mutex::new(()),
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
            let creds = self.chain.provide_credentials().await?;
            self.current.store(Some(Arc::new(creds)));
            Ok(())
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
    /// is nothing usable (the first fetch failed, or the upkeep fell behind).
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
        };
        ok.validate().unwrap();
        let bad_region = AwsStoreConfig {
            region: Some("EU West".into()),
            endpoint: None,
        };
        assert_eq!(bad_region.validate().unwrap_err().field, "region");
        let bad_endpoint = AwsStoreConfig {
            region: None,
            endpoint: Some("secretsmanager.local".into()),
        };
        assert_eq!(bad_endpoint.validate().unwrap_err().field, "endpoint");
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
        assert!(err.to_string().contains("roleArn"), "{err}");
    }
}
