//! Leader election through a coordination.k8s.io/v1 Lease: the holder
//! renews it; anyone may take over a Lease whose record has not changed for
//! `leaseDurationSeconds`, timed on the observer's own monotonic clock from
//! when it saw the record change (so clock skew between nodes cannot make
//! two leaders). Every write carries the `resourceVersion` it read, so two
//! replicas racing for the same Lease get one success and one 409.

use std::time::Duration;

use ::kube::api::PostParams;
use ::kube::{Api, Client};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use tokio::time::Instant;

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

/// The holder's record as this replica last saw it, and when (on this
/// replica's monotonic clock) it last changed. Expiry is timed from that
/// instant, never from the holder's `renewTime`: the holder's clock and
/// ours need not agree, and a skewed one must not make a live holder look
/// expired (two leaders) or a dead one look alive for ever.
#[derive(Debug, Clone, Default)]
pub(crate) struct Observed {
    last: Option<(LeaseSpec, Instant)>,
}

impl Observed {
    /// Records `spec` as read at `now`; the instant moves only when the
    /// record differs from the last one seen.
    pub(crate) fn observe(&mut self, spec: &LeaseSpec, now: Instant) {
        match &self.last {
            Some((seen, _)) if seen == spec => {}
            _ => self.last = Some((spec.clone(), now)),
        }
    }

    /// When the record last changed, as far as this replica knows.
    fn changed_at(&self) -> Option<Instant> {
        self.last.as_ref().map(|(_, at)| *at)
    }
}

/// Decides from the Lease's spec and what this replica observed of it
/// (pure). Call `observed.observe(spec, now)` first.
pub(crate) fn decide(spec: Option<&LeaseSpec>, observed: &Observed, me: &str, now: Instant) -> LeaseAction {
    let Some(spec) = spec else {
        return LeaseAction::TakeOver;
    };
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == me => LeaseAction::Renew,
        None | Some("") => LeaseAction::TakeOver,
        Some(_) => {
            let seconds = u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0);
            // A record never observed counts as just changed: a replica
            // that starts waits one full duration before taking over.
            let changed = observed.changed_at().unwrap_or(now);
            if changed + Duration::from_secs(seconds) < now {
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
    observed: std::sync::Mutex<Observed>,
}

impl LeaseElector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str, duration: Duration) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration,
            observed: std::sync::Mutex::new(Observed::default()),
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
        self.try_acquire_or_renew_at(Instant::now()).await
    }

    fn observe(&self, spec: &LeaseSpec, at: Instant) -> Observed {
        let mut observed = self
            .observed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        observed.observe(spec, at);
        observed.clone()
    }

    /// As `try_acquire_or_renew`, with `at` as this replica's monotonic
    /// "now" (tests pass a later instant instead of waiting a duration).
    #[doc(hidden)]
    pub async fn try_acquire_or_renew_at(&self, at: Instant) -> Result<bool, LeaseError> {
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
                Ok(created) => {
                    self.observe(&created.spec.unwrap_or_default(), at);
                    Ok(true)
                }
                Err(::kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(self.error(&e)),
            };
        };
        let observed = self.observe(&lease.spec.clone().unwrap_or_default(), at);
        let action = decide(lease.spec.as_ref(), &observed, &self.identity, at);
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
            Ok(written) => {
                self.observe(&written.spec.unwrap_or_default(), at);
                Ok(true)
            }
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

    fn after(start: Instant, secs: u64) -> Instant {
        start + Duration::from_secs(secs)
    }

    /// Reads `spec` at `now` and decides, as the runner does.
    fn read(observed: &mut Observed, spec: &LeaseSpec, now: Instant) -> LeaseAction {
        observed.observe(spec, now);
        decide(Some(spec), observed, "a", now)
    }

    #[test]
    fn decisions() {
        let t0 = Instant::now();
        let none = Observed::default();
        assert_eq!(decide(None, &none, "a", t0), LeaseAction::TakeOver);
        assert_eq!(decide(Some(&held("a", 0)), &none, "a", t0), LeaseAction::Renew);
        let released = LeaseSpec {
            holder_identity: None,
            ..held("b", 0)
        };
        assert_eq!(decide(Some(&released), &none, "a", t0), LeaseAction::TakeOver);

        // Timed from when this replica saw the record, not from renewTime.
        let mut seen = Observed::default();
        assert_eq!(read(&mut seen, &held("b", 0), t0), LeaseAction::Wait);
        assert_eq!(read(&mut seen, &held("b", 0), after(t0, 15)), LeaseAction::Wait);
        assert_eq!(
            read(&mut seen, &held("b", 0), after(t0, 16)),
            LeaseAction::TakeOver
        );
    }

    #[test]
    fn a_replica_that_starts_waits_a_full_duration_even_for_an_old_record() {
        // renewTime years ago by our clock: the old rule took over at once.
        let t0 = Instant::now();
        let mut seen = Observed::default();
        let stale = held("b", -400_000_000);
        assert_eq!(read(&mut seen, &stale, t0), LeaseAction::Wait);
        assert_eq!(read(&mut seen, &stale, after(t0, 15)), LeaseAction::Wait);
        assert_eq!(read(&mut seen, &stale, after(t0, 16)), LeaseAction::TakeOver);
    }

    #[test]
    fn a_holder_whose_clock_lags_keeps_the_lease_while_it_renews() {
        // The holder's clock is ~12 years behind ours: every renewTime it
        // writes is "expired" by our clock, yet it is alive and renewing.
        let t0 = Instant::now();
        let mut seen = Observed::default();
        for i in 0..100u64 {
            let renewed = held("b", -400_000_000 + i64::try_from(i * 5).unwrap());
            assert_eq!(
                read(&mut seen, &renewed, after(t0, i * 5)),
                LeaseAction::Wait,
                "no takeover at {}s while the record keeps changing",
                i * 5
            );
        }
        // It stops renewing: one full duration later, not before, it is ours.
        let last = held("b", -400_000_000 + 99 * 5);
        assert_eq!(read(&mut seen, &last, after(t0, 99 * 5 + 15)), LeaseAction::Wait);
        assert_eq!(
            read(&mut seen, &last, after(t0, 99 * 5 + 16)),
            LeaseAction::TakeOver
        );
    }

    #[test]
    fn a_holder_whose_clock_runs_ahead_loses_the_lease_once_it_stops() {
        // renewTime ~12 years ahead of ours: the old rule never took over.
        let t0 = Instant::now();
        let mut seen = Observed::default();
        for i in 0..10u64 {
            let renewed = held("b", 400_000_000 + i64::try_from(i * 5).unwrap());
            assert_eq!(read(&mut seen, &renewed, after(t0, i * 5)), LeaseAction::Wait);
        }
        let last = held("b", 400_000_000 + 45);
        assert_eq!(read(&mut seen, &last, after(t0, 45 + 15)), LeaseAction::Wait);
        assert_eq!(read(&mut seen, &last, after(t0, 45 + 16)), LeaseAction::TakeOver);
    }

    #[test]
    fn any_change_of_the_record_restarts_the_wait() {
        let t0 = Instant::now();
        let mut seen = Observed::default();
        assert_eq!(read(&mut seen, &held("b", 0), t0), LeaseAction::Wait);
        // Another replica took it over (same renewTime, new holder).
        assert_eq!(read(&mut seen, &held("c", 0), after(t0, 10)), LeaseAction::Wait);
        assert_eq!(read(&mut seen, &held("c", 0), after(t0, 20)), LeaseAction::Wait);
        assert_eq!(
            read(&mut seen, &held("c", 0), after(t0, 26)),
            LeaseAction::TakeOver
        );
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
