//! Metrics of the Kubernetes side, registered in the server's registry.
//! Labels are outcomes, failure classes, actions, reasons and workload
//! kinds: never names.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::telemetry::Metrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ClassLabel {
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct UnverifiedLabels {
    pub action: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    pub reason: String,
}

/// Rotation, garbage collection and leadership.
#[derive(Default)]
pub struct KubeMetrics {
    rotations: Family<OutcomeLabel, Counter>,
    rotation_failures: Family<ClassLabel, Counter>,
    oldest_unrefreshed: Gauge,
    restarts: Family<KindLabel, Counter>,
    gc_deleted: Counter,
    leader: Gauge,
    unverified: Family<UnverifiedLabels, Counter>,
    provenance_keys: Gauge,
    on_older_keys: Gauge,
    resigned: Counter,
    revoked: Counter,
    restarts_refused: Family<ReasonLabel, Counter>,
}

impl KubeMetrics {
    /// Creates the metrics and registers them with `metrics`.
    pub fn register(metrics: &Metrics) -> Self {
        let m = Self::default();
        metrics.with_registry(|r| {
            r.register(
                "secret_rotations",
                "Managed Secrets re-resolved by the leader, by outcome (updated, unchanged)",
                m.rotations.clone(),
            );
            r.register(
                "secret_rotation_failures",
                "Managed Secrets that could not be re-resolved or written, by class",
                m.rotation_failures.clone(),
            );
            r.register(
                "secret_oldest_unrefreshed_seconds",
                "Age of the least recently refreshed managed Secret that has a refresh interval",
                m.oldest_unrefreshed.clone(),
            );
            r.register(
                "workload_restarts",
                "Rolling restarts triggered by a rotation, by workload kind",
                m.restarts.clone(),
            );
            r.register(
                "secret_gc_deleted",
                "Unreferenced managed Secrets deleted",
                m.gc_deleted.clone(),
            );
            r.register(
                "leader",
                "1 while this replica holds the Lease for garbage collection and rotation",
                m.leader.clone(),
            );
            r.register(
                "managed_secret_unverified",
                "Secrets labelled as managed whose MAC does not verify, ignored by rotation or garbage collection (action), counted once per Secret, by reason",
                m.unverified.clone(),
            );
            r.register(
                "provenance_keys",
                "Provenance MAC keys this replica knows (0: unavailable; managed Secrets are then written unsigned and the leader's loops wait)",
                m.provenance_keys.clone(),
            );
            r.register(
                "managed_secrets_on_older_keys",
                "Managed Secrets still signed with a provenance key older than the newest, after the last rotation pass (an old key can be removed at 0)",
                m.on_older_keys.clone(),
            );
            r.register(
                "managed_secret_resigned",
                "Managed Secrets signed again with the newest provenance key",
                m.resigned.clone(),
            );
            r.register(
                "secret_keys_revoked",
                "Keys removed from managed Secrets by rotation because the policy no longer grants their reference",
                m.revoked.clone(),
            );
            r.register(
                "workload_restarts_refused",
                "Owners of a rotated Secret not restarted, by reason (the workload's template did not opt in, or does not produce this Secret)",
                m.restarts_refused.clone(),
            );
        });
        m
    }

    pub fn rotation(&self, outcome: &str) {
        self.rotations
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn rotation_failure(&self, class: &str) {
        self.rotation_failures
            .get_or_create(&ClassLabel {
                class: class.to_owned(),
            })
            .inc();
    }

    pub fn set_oldest_unrefreshed(&self, seconds: i64) {
        self.oldest_unrefreshed.set(seconds);
    }

    pub fn restart(&self, kind: &str) {
        self.restarts
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }

    pub fn gc_deleted(&self) {
        self.gc_deleted.inc();
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    pub(crate) fn unverified(&self, action: &str, reason: &str) {
        self.unverified
            .get_or_create(&UnverifiedLabels {
                action: action.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub(crate) fn set_provenance_keys(&self, count: usize) {
        self.provenance_keys.set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub(crate) fn set_on_older_keys(&self, count: usize) {
        self.on_older_keys.set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub(crate) fn resigned(&self) {
        self.resigned.inc();
    }

    pub(crate) fn revoked(&self, keys: usize) {
        self.revoked.inc_by(u64::try_from(keys).unwrap_or(u64::MAX));
    }

    pub(crate) fn restart_refused(&self, reason: &str) {
        self.restarts_refused
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }
}
