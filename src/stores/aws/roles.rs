//! Roles a store assumes: `roleArn` on top of the default chain
//! (`AssumeRole`, with `externalId` and the session name), and with
//! `identity: pod` a role per ServiceAccount, assumed with a TokenRequest
//! token of that account (`AssumeRoleWithWebIdentity`, as IRSA does with
//! a projected token, but for the Pod's account instead of Sesame's).

use std::fmt;
use std::time::SystemTime;

use aws_config::sts::AssumeRoleProvider;
use aws_config::SdkConfig;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{future, ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_sdk_sts::error::ProvideErrorMetadata;

use super::imp::code_error;
use super::AwsStoreConfig;
use crate::stores::identity::{PodIdentity, WorkloadIdentity};
use crate::stores::StoreError;

/// The audience of the ServiceAccount tokens requested for STS, unless
/// `podIdentity.audience` says otherwise (the IAM OIDC provider's client id).
const STS_AUDIENCE: &str = "sts.amazonaws.com";

/// `roleArn` assumed with the chain's credentials.
pub(super) async fn assume_role(
    sts: &SdkConfig,
    chain: SharedCredentialsProvider,
    role_arn: &str,
    config: &AwsStoreConfig,
) -> SharedCredentialsProvider {
    let mut builder = AssumeRoleProvider::builder(role_arn)
        .session_name(config.session_name.clone().unwrap_or_else(|| "sesame".to_owned()))
        .configure(sts);
    if let Some(id) = &config.external_id {
        builder = builder.external_id(id.clone());
    }
    SharedCredentialsProvider::new(builder.build_from_provider(chain).await)
}

/// The session name of a workload: `<namespace>.<serviceAccount>`, at most
/// 64 characters (both names are DNS names, so every character is allowed).
fn session_name(identity: &WorkloadIdentity) -> String {
    let mut name = format!("{}.{}", identity.namespace, identity.service_account);
    name.truncate(64);
    name
}

/// `AssumeRoleWithWebIdentity` for ServiceAccounts: the role template and
/// the STS client (the call is not signed: the token is the credential).
pub(super) struct WebIdentity {
    sts: aws_sdk_sts::Client,
    template: String,
    session_name: Option<String>,
}

impl WebIdentity {
    pub(super) fn new(sdk: &SdkConfig, template: String, session_name: Option<String>) -> Self {
        Self {
            sts: aws_sdk_sts::Client::new(sdk),
            template,
            session_name,
        }
    }

    /// The credentials provider of one ServiceAccount.
    pub(super) fn provider(
        self: &std::sync::Arc<Self>,
        pod: PodIdentity,
        identity: WorkloadIdentity,
    ) -> WorkloadRole {
        WorkloadRole {
            web: self.clone(),
            pod,
            identity,
        }
    }
}

/// The role of one ServiceAccount, assumed with its token.
pub(super) struct WorkloadRole {
    web: std::sync::Arc<WebIdentity>,
    pod: PodIdentity,
    identity: WorkloadIdentity,
}

impl fmt::Debug for WorkloadRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WorkloadRole({})", self.identity)
    }
}

/// A failure to get a workload's credentials, with its class kept for
/// [`credentials_failure`].
#[derive(Debug)]
struct RoleError(StoreError);

impl fmt::Display for RoleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for RoleError {}

impl WorkloadRole {
    async fn assume(&self) -> Result<Credentials, StoreError> {
        let token = self.pod.token(&self.identity, STS_AUDIENCE).await?;
        let token = token
            .expose_str()
            .ok_or_else(|| StoreError::InvalidResponse("the ServiceAccount token is not text".into()))?;
        let session = self
            .web
            .session_name
            .as_ref()
            .map(|t| self.identity.render(t))
            .unwrap_or_else(|| session_name(&self.identity));
        let out = self
            .web
            .sts
            .assume_role_with_web_identity()
            .role_arn(self.identity.render(&self.web.template))
            .role_session_name(session)
            .web_identity_token(token)
            .send()
            .await
            .map_err(|e| match e.as_service_error() {
                Some(service) => code_error(
                    service.code(),
                    e.raw_response().map_or(400, |r| r.status().as_u16()),
                    false,
                ),
                None => StoreError::Unreachable("STS could not be reached".into()),
            })?;
        let creds = out
            .credentials()
            .ok_or_else(|| StoreError::InvalidResponse("STS returned no credentials".into()))?;
        let expiry = SystemTime::try_from(*creds.expiration()).ok();
        Ok(Credentials::new(
            creds.access_key_id(),
            creds.secret_access_key(),
            Some(creds.session_token().to_owned()),
            expiry,
            "sesame-identity-pod",
        ))
    }
}

impl ProvideCredentials for WorkloadRole {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            self.assume()
                .await
                .map_err(|e| CredentialsError::provider_error(RoleError(e)))
        })
    }
}

/// What a failed credentials fetch means for the store: a workload's
/// failure keeps its class; `AssumeRole` failures keep STS's error code;
/// anything else of the default chain is "no credentials".
pub(super) fn credentials_failure(e: &CredentialsError) -> StoreError {
    let mut source = std::error::Error::source(e);
    while let Some(error) = source {
        if let Some(RoleError(e)) = error.downcast_ref::<RoleError>() {
            return e.clone();
        }
        type AssumeRole = aws_sdk_sts::error::SdkError<
            aws_sdk_sts::operation::assume_role::AssumeRoleError,
            aws_sdk_sts::config::http::HttpResponse,
        >;
        if let Some(sdk) = error.downcast_ref::<AssumeRole>() {
            if let Some(service) = sdk.as_service_error() {
                return match code_error(service.code(), 403, false) {
                    StoreError::Unauthorized(code) => StoreError::Unauthorized(format!("AssumeRole: {code}")),
                    other => other,
                };
            }
            return StoreError::Unreachable("AssumeRole: STS could not be reached".into());
        }
        source = error.source();
    }
    StoreError::Unauthorized("no AWS credentials from the default chain".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names_fit_sts() {
        let id = WorkloadIdentity::new("team-a", "web").unwrap();
        assert_eq!(session_name(&id), "team-a.web");
        let long = WorkloadIdentity::new(&"n".repeat(63), &"s".repeat(63)).unwrap();
        let name = session_name(&long);
        assert_eq!(name.len(), 64);
        assert!(super::super::is_session_name(&name));
    }
}
