//! The leader-only background work: one task keeps the Lease, another runs
//! rotation and garbage collection while this replica holds it (the caller
//! runs both). Both stop at shutdown; the Lease is released so another
//! replica takes over at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::gc::GarbageCollector;
use super::lease::LeaseElector;
use super::metrics::KubeMetrics;
use super::rotation::Rotator;
use crate::pipeline::SharedEngine;

/// Timing of the background work.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// How often the Lease is renewed (a third of its duration).
    pub(crate) renew_every: Duration,
    /// How often rotation looks for due Secrets (cheap: reads the cache).
    pub(crate) tick: Duration,
    pub(crate) gc_interval: Duration,
}

impl Schedule {
    pub fn new(lease_duration: Duration, gc_interval: Duration) -> Self {
        Self {
            renew_every: lease_duration / 3,
            tick: gc_interval.min(Duration::from_secs(10)),
            gc_interval,
        }
    }
}

/// Keeps (or tries to get) the Lease and says on `leading` whether this
/// replica holds it. At shutdown (`stop`) it releases a held Lease, so that
/// the next leader starts at once, and ends.
pub(crate) async fn keep_lease(
    elector: LeaseElector,
    leading: watch::Sender<bool>,
    metrics: Arc<KubeMetrics>,
    schedule: Schedule,
    stop: CancellationToken,
) {
    loop {
        let now_leading =
            match tokio::time::timeout(schedule.renew_every, elector.try_acquire_or_renew()).await {
                Ok(Ok(l)) => l,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "leader election failed; not leading");
                    false
                }
                Err(_) => {
                    tracing::warn!("leader election timed out; not leading");
                    false
                }
            };
        if now_leading != *leading.borrow() {
            tracing::info!(
                identity = elector.identity(),
                leading = now_leading,
                "leadership changed"
            );
        }
        let _ = leading.send(now_leading);
        metrics.set_leader(now_leading);
        let stopping = tokio::select! {
            _ = tokio::time::sleep(schedule.renew_every) => false,
            _ = stop.cancelled() => true,
        };
        if stopping {
            let _ = leading.send(false);
            metrics.set_leader(false);
            if now_leading {
                elector.release().await;
            }
            return;
        }
    }
}

/// Rotation and garbage collection while this replica leads; runs until
/// dropped.
pub async fn work(
    gc: GarbageCollector,
    rotator: Rotator,
    engine: SharedEngine,
    mut leading: watch::Receiver<bool>,
    schedule: Schedule,
) {
    let mut next_gc = Instant::now() + schedule.gc_interval;
    let mut waiting = false;
    loop {
        if leading.wait_for(|l| *l).await.is_err() {
            // The election is gone: so is any chance of leading.
            std::future::pending::<()>().await;
        }
        let started = Instant::now();
        let report = rotator.run_once(&leading).await;
        if report.waiting_for_keys != waiting {
            waiting = report.waiting_for_keys;
            if waiting {
                tracing::warn!("rotation and garbage collection wait for the provenance keys");
            } else {
                tracing::info!("provenance keys available: rotation and garbage collection run");
            }
        }
        // At info only when the pass changed or missed something: with short
        // intervals, a pass that confirmed everything runs every tick.
        let seconds = started.elapsed().as_secs_f64();
        if report.writes > 0 || report.failed > 0 {
            tracing::info!(
                checked = report.checked,
                written = report.writes,
                unchanged = report.unchanged,
                failed = report.failed,
                store_reads = report.reads,
                seconds,
                "rotation pass"
            );
        } else if report.checked > 0 {
            tracing::debug!(
                checked = report.checked,
                unchanged = report.unchanged,
                store_reads = report.reads,
                seconds,
                "rotation pass"
            );
        }
        if Instant::now() >= next_gc {
            let prefix = engine.load().prefix().to_owned();
            match gc.run_once(&prefix, &leading).await {
                Ok(r) => tracing::debug!(
                    namespaces = r.namespaces,
                    pods = r.pods_seen,
                    deleted = r.deleted.len(),
                    "garbage collection pass"
                ),
                Err(e) => tracing::warn!(error = %e, "garbage collection pass failed"),
            }
            next_gc = Instant::now() + schedule.gc_interval;
        }
        tokio::time::sleep(schedule.tick).await;
    }
}
