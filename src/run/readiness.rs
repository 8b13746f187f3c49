//! Readiness: ready once every store passes its check, checked again every
//! few seconds so that a store outage shows on /readyz.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::pipeline::SharedEngine;
use crate::server::admin::Readiness;
use crate::telemetry::Metrics;

/// Keeps `readiness` current until `stop`; then readiness drops, so that
/// the Service stops sending new reviews during the drain.
pub(super) async fn keep_ready(
    engine: SharedEngine,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    tokio::select! {
        _ = check_forever(&engine, &readiness, &metrics) => {}
        _ = stop.cancelled() => {}
    }
    readiness.unready("shutting down");
    metrics.set_ready(false);
}

async fn check_forever(engine: &SharedEngine, readiness: &Readiness, metrics: &Metrics) {
    let mut logged_failures = true;
    loop {
        let failures = engine.load().stores().check_all(Duration::from_secs(5)).await;
        let ready = failures.is_empty();
        if !ready && logged_failures {
            for (store, e) in &failures {
                tracing::warn!(store = %store, error = %e, "store not usable; not ready");
            }
        }
        logged_failures = ready;
        if readiness.get() != ready {
            tracing::info!(ready, "readiness changed");
        }
        if ready {
            readiness.set(true);
        } else {
            // Store names come from the configuration: no secret in them.
            let names: Vec<&str> = failures.iter().map(|(store, _)| store.as_str()).collect();
            readiness.unready(format!("stores failing their check: {}", names.join(", ")));
        }
        metrics.set_ready(ready);
        let pause = if ready {
            Duration::from_secs(10)
        } else {
            Duration::from_secs(1)
        };
        tokio::time::sleep(pause).await;
    }
}
