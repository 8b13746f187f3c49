//! Metrics of the self-managed certificates: expiry times and changes,
//! labelled by kind and change only.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::state::{Decision, Material};
use crate::certs::CertInfo;
use crate::telemetry::Metrics;

/// Certificate metrics, registered in the server's registry.
#[derive(Default)]
pub(crate) struct CertMetrics {
    expiry: Family<KindLabel, Gauge>,
    changes: Family<ChangeLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChangeLabel {
    change: String,
}

impl CertMetrics {
    /// Creates the metrics and registers them with `metrics`.
    pub fn register(metrics: &Metrics) -> Self {
        let m = Self::default();
        metrics.with_registry(|r| {
            r.register(
                "certificate_expiry_timestamp_seconds",
                "When the self-managed certificates expire (kind: ca, serving), Unix time",
                m.expiry.clone(),
            );
            r.register(
                "certificate_changes",
                "Writes of the self-managed certificate Secret, by change",
                m.changes.clone(),
            );
        });
        m
    }

    /// Records when the certificates being served expire.
    pub(crate) fn observe(&self, material: &Material) {
        for (kind, pem) in [
            ("ca", &material.ca.cert_pem),
            ("serving", &material.serving.cert_pem),
        ] {
            if let Ok(info) = CertInfo::parse(pem) {
                self.expiry
                    .get_or_create(&KindLabel {
                        kind: kind.to_owned(),
                    })
                    .set(info.not_after.unix_timestamp());
            }
        }
    }

    /// Counts a write of the Secret.
    pub fn changed(&self, decision: &Decision) {
        self.changes
            .get_or_create(&ChangeLabel {
                change: decision.label().to_owned(),
            })
            .inc();
    }
}
