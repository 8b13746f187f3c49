//! Metrics of the Kubernetes side, registered in the server's registry.
//! Labels are outcomes, failure classes and workload kinds: never names.

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

/// Rotation, garbage collection and leadership.
#[derive(Default)]
pub struct KubeMetrics {
    rotations: Family<OutcomeLabel, Counter>,
    rotation_failures: Family<ClassLabel, Counter>,
    oldest_unrefreshed: Gauge,
    restarts: Family<KindLabel, Counter>,
    gc_deleted: Counter,
    leader: Gauge,
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
}
