//! Leader election through a coordination.k8s.io/v1 Lease, the way
//! client-go's leaderelection does it: the holder renews `renewTime`; anyone
//! may take over a Lease whose `renewTime + leaseDurationSeconds` has
//! passed. Every write carries the `resourceVersion` it read, so two
//! replicas racing for the same Lease get one success and one 409.

use std::time::Duration;

use ::kube::api::PostParams;
use ::kube::{Api, Client};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// What to do with the Lease as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaseAction {
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it over (one more transition).
    TakeOver,
    /// Someone else holds a live Lease.
    Wait,
}

/// Decides from the Lease's spec alone (pure).
pub(crate) fn decide(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> LeaseAction {
    let Some(spec) = spec else {
        return LeaseAction::TakeOver;
    };
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == me => LeaseAction::Renew,
        None | Some("") => LeaseAction::TakeOver,
        Some(_) => {
            let seconds = i64::from(spec.lease_duration_seconds.unwrap_or(0).max(0));
            let expired = spec
                .renew_time
                .as_ref()
                .or(spec.acquire_time.as_ref())
                .is_none_or(|t| {
                    t.0.saturating_add(SignedDuration::from_secs(seconds))
                        .unwrap_or(t.0)
                        < now
                });
            if expired {
                LeaseAction::TakeOver
            } else {
                LeaseAction::Wait
            }
        }
    }
}

/// The spec to write for `action` (pure).
pub(crate) fn next_spec(
    current: Option<&LeaseSpec>,
    action: LeaseAction,
    me: &str,
    duration: Duration,
    now: Timestamp,
) -> LeaseSpec {
    let mut spec = current.cloned().unwrap_or_default();
    let seconds = i32::try_from(duration.as_secs()).unwrap_or(i32::MAX).max(1);
    if action == LeaseAction::TakeOver {
        let had_holder = spec.holder_identity.as_deref().is_some_and(|h| !h.is_empty());
        spec.holder_identity = Some(me.to_owned());
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + i32::from(had_holder));
    }
    spec.lease_duration_seconds = Some(seconds);
    spec.renew_time = Some(MicroTime(now));
    spec
}

/// Why the Lease could not be read or written (other than losing a race).
#[derive(Debug, thiserror::Error)]
#[error("leader election Lease {namespace}/{name}: {reason}")]
pub struct LeaseError {
    pub namespace: String,
    pub name: String,
    pub reason: String,
}

/// One replica's view of one Lease.
pub struct LeaseElector {
    api: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    duration: Duration,
}

impl LeaseElector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str, duration: Duration) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    fn error(&self, e: &::kube::Error) -> LeaseError {
        LeaseError {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            reason: match e {
                ::kube::Error::Api(s) => format!("{} {}: {}", s.code, s.reason, s.message),
                other => other.to_string(),
            },
        }
    }

    /// Acquires or renews the Lease. `Ok(true)`: we lead until
    /// `now + duration`; `Ok(false)`: someone else does, or won the race.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, LeaseError> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.name).await.map_err(|e| self.error(&e))?;
        let Some(lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(next_spec(
                    None,
                    LeaseAction::TakeOver,
                    &self.identity,
                    self.duration,
                    now,
                )),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(::kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(self.error(&e)),
            };
        };
        let action = decide(lease.spec.as_ref(), &self.identity, now);
        if action == LeaseAction::Wait {
            return Ok(false);
        }
        let updated = Lease {
            // Keeps `resourceVersion`: the PUT fails with 409 if anyone wrote since.
            metadata: lease.metadata.clone(),
            spec: Some(next_spec(
                lease.spec.as_ref(),
                action,
                &self.identity,
                self.duration,
                now,
            )),
        };
        match self
            .api
            .replace(&self.name, &PostParams::default(), &updated)
            .await
        {
            Ok(_) => Ok(true),
            Err(::kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(self.error(&e)),
        }
    }

    /// Gives the Lease up at shutdown so that another replica takes over at
    /// once instead of after the Lease expires.
    pub async fn release(&self) {
        let Ok(Some(lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_ref() else { return };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        let released = Lease {
            metadata: lease.metadata.clone(),
            spec: Some(LeaseSpec {
                holder_identity: None,
                ..spec.clone()
            }),
        };
        if let Err(e) = self
            .api
            .replace(&self.name, &PostParams::default(), &released)
            .await
        {
            tracing::debug!(error = %self.error(&e), "could not release the Lease");
        }
    }
}

/// A unique identity for this replica: the Pod name (or host name) and a
/// random suffix, so that a restarted Pod is a new holder.
pub fn identity() -> String {
    let host = std::env::var("SESAME_POD_NAME")
        .or_else(|_| std::env::var("POD_NAME"))
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "sesame".to_owned());
    format!("{host}-{:08x}", fastrand::u32(..))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn held(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(at(renewed))),
            acquire_time: Some(MicroTime(at(renewed))),
            lease_transitions: Some(2),
            ..Default::default()
        }
    }

    #[test]
    fn decisions() {
        assert_eq!(decide(None, "a", at(0)), LeaseAction::TakeOver);
        assert_eq!(decide(Some(&held("a", 0)), "a", at(100)), LeaseAction::Renew);
        assert_eq!(decide(Some(&held("b", 0)), "a", at(10)), LeaseAction::Wait);
        assert_eq!(decide(Some(&held("b", 0)), "a", at(15)), LeaseAction::Wait);
        assert_eq!(decide(Some(&held("b", 0)), "a", at(16)), LeaseAction::TakeOver);
        let released = LeaseSpec {
            holder_identity: None,
            ..held("b", 0)
        };
        assert_eq!(decide(Some(&released), "a", at(1)), LeaseAction::TakeOver);
    }

    #[test]
    fn takeover_counts_a_transition_and_renew_does_not() {
        let s = next_spec(
            Some(&held("b", 0)),
            LeaseAction::TakeOver,
            "a",
            Duration::from_secs(15),
            at(20),
        );
        assert_eq!(s.holder_identity.as_deref(), Some("a"));
        assert_eq!(s.lease_transitions, Some(3));
        assert_eq!(s.acquire_time.unwrap().0, at(20));
        let r = next_spec(
            Some(&held("a", 0)),
            LeaseAction::Renew,
            "a",
            Duration::from_secs(15),
            at(5),
        );
        assert_eq!(r.lease_transitions, Some(2));
        assert_eq!(r.acquire_time.unwrap().0, at(0));
        assert_eq!(r.renew_time.unwrap().0, at(5));
        let first = next_spec(None, LeaseAction::TakeOver, "a", Duration::from_secs(15), at(0));
        assert_eq!(first.lease_transitions, Some(0));
        assert_eq!(first.lease_duration_seconds, Some(15));
    }
}
