//! Why a Pod is denied, as a type: each class knows the HTTP code of the
//! AdmissionResponse status, the label of the decision's log line, and the
//! admission metric outcome it is counted under. No catch-all remapping of
//! strings: a new class does not compile until all three are said.

use crate::stores::StoreError;

/// The class of a denial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenialClass {
    /// An annotation, or the Pod itself, could not be read.
    Malformed,
    /// A reference names a store the configuration does not define.
    UnknownStore,
    /// The Pod asks for more than a limit of the configuration allows
    /// (references, store requests, entries, patch size).
    Limit,
    /// The policy does not grant a reference (or inline mode, or the use of
    /// another Pod's managed Secret).
    Policy,
    /// The store has no such secret or version.
    NotFound,
    /// The secret has no such property.
    MissingProperty,
    /// What the Pod asks for cannot be placed (a bad file name, a value
    /// that is not text for an env var).
    Invalid,
    /// An annotation names a container the Pod does not have.
    UnknownContainer,
    /// The Pod already defines what the plan would set.
    Conflict,
    /// The store did not answer within the time budget.
    Timeout,
    /// The store refused Sesame's credentials.
    Unauthorised,
    /// The store's own access control refused the Pod's ServiceAccount
    /// (`identity: pod`).
    StoreDenied,
    /// The store could not be reached.
    Unreachable,
    /// The store throttled Sesame.
    Throttled,
    /// The store answered something Sesame cannot read.
    InvalidResponse,
    /// The store refused the request as malformed.
    InvalidRequest,
    /// The managed Secret could not be written.
    SecretWrite,
    /// The review itself is not one the webhook is registered for (kind,
    /// operation, subresource, namespace): forged or misrouted.
    Request,
    /// The namespace has had its share of new managed Secrets for now.
    RateLimited,
    /// Sesame itself failed (a bug, not the Pod's fault).
    Internal,
}

impl DenialClass {
    /// The HTTP code of the AdmissionResponse status.
    pub fn code(self) -> u16 {
        match self {
            Self::Malformed | Self::UnknownStore | Self::Request => 400,
            Self::Limit => 413,
            Self::RateLimited => 429,
            Self::Policy | Self::StoreDenied => 403,
            Self::NotFound | Self::MissingProperty => 404,
            Self::Invalid | Self::UnknownContainer | Self::Conflict => 422,
            Self::Internal => 500,
            Self::Timeout
            | Self::Unauthorised
            | Self::Unreachable
            | Self::Throttled
            | Self::InvalidResponse
            | Self::InvalidRequest
            | Self::SecretWrite => 503,
        }
    }

    /// The class in the decision's log line.
    pub fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownStore => "unknown_store",
            Self::Limit => "limit",
            Self::Policy => "policy",
            Self::NotFound => "not_found",
            Self::MissingProperty => "missing_property",
            Self::Invalid => "invalid",
            Self::UnknownContainer => "unknown_container",
            Self::Conflict => "conflict",
            Self::Timeout => "timeout",
            Self::Unauthorised => "unauthorised",
            Self::StoreDenied => "denied",
            Self::Unreachable => "unreachable",
            Self::Throttled => "throttled",
            Self::InvalidResponse => "invalid_response",
            Self::InvalidRequest => "invalid_request",
            Self::SecretWrite => "secret_write",
            Self::Request => "request",
            Self::RateLimited => "rate_limited",
            Self::Internal => "internal",
        }
    }

    /// The `outcome` label of `sesame_admission_reviews_total`: classes that
    /// call for the same action share one (every store failure is
    /// `denied_store_error`).
    pub fn outcome(self) -> &'static str {
        match self {
            Self::Malformed => "denied_malformed",
            Self::UnknownStore => "denied_unknown_store",
            Self::Limit => "denied_limit",
            // The store's policy said no, as Sesame's may: the same action.
            Self::Policy | Self::StoreDenied => "denied_policy",
            Self::NotFound | Self::MissingProperty => "denied_not_found",
            Self::Invalid | Self::UnknownContainer | Self::InvalidRequest => "denied_invalid",
            Self::Conflict => "denied_conflict",
            Self::Timeout => "denied_timeout",
            Self::Unauthorised | Self::Unreachable | Self::Throttled | Self::InvalidResponse => {
                "denied_store_error"
            }
            Self::SecretWrite => "denied_secret_write",
            Self::Request => "denied_request",
            Self::RateLimited => "denied_rate_limited",
            Self::Internal => "error",
        }
    }
}

impl From<&StoreError> for DenialClass {
    fn from(e: &StoreError) -> Self {
        match e {
            StoreError::NotFound | StoreError::VersionNotFound => Self::NotFound,
            StoreError::Unauthorized(_) => Self::Unauthorised,
            StoreError::Denied(_) => Self::StoreDenied,
            StoreError::Unreachable(_) => Self::Unreachable,
            StoreError::Throttled => Self::Throttled,
            StoreError::Timeout => Self::Timeout,
            StoreError::InvalidResponse(_) => Self::InvalidResponse,
            StoreError::InvalidRequest(_) => Self::InvalidRequest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_failures_keep_their_store_label() {
        let errors = [
            StoreError::NotFound,
            StoreError::VersionNotFound,
            StoreError::Unauthorized("x".into()),
            StoreError::Unreachable("x".into()),
            StoreError::Throttled,
            StoreError::Timeout,
            StoreError::InvalidResponse("x".into()),
            StoreError::InvalidRequest("x".into()),
            StoreError::Denied("x".into()),
        ];
        for e in errors {
            let class = DenialClass::from(&e);
            assert_eq!(class.label(), e.class(), "{e:?}");
            let code = match e {
                _ if e.is_not_found() => 404,
                StoreError::Denied(_) => 403,
                _ => 503,
            };
            assert_eq!(class.code(), code, "{e:?}");
        }
        assert_eq!(DenialClass::StoreDenied.outcome(), "denied_policy");
        assert_eq!(DenialClass::Timeout.outcome(), "denied_timeout");
        assert_eq!(DenialClass::Throttled.outcome(), "denied_store_error");
        assert_eq!(DenialClass::MissingProperty.outcome(), "denied_not_found");
    }
}
