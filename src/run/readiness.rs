//! Readiness and store health. Ready means "can serve reviews" and is set
//! once start-up has finished; store health is checked every few seconds
//! beside it: each store's state goes to the `sesame_store_up` gauge, to
//! `/readyz?verbose`, and to one log line when it changes. A store outage
//! never makes a replica unready: reviews that do not need that store, or
//! that the cache or a managed Secret can serve, keep being admitted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::pipeline::SharedEngine;
use crate::server::admin::{Readiness, StoreState};
use crate::stores::StoreError;
use crate::telemetry::Metrics;

/// Keeps the stores' health current until `stop`; then readiness drops, so
/// that the Service stops sending new reviews during the drain.
pub(super) async fn keep_ready(
    engine: SharedEngine,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    metrics.set_ready(readiness.get());
    tokio::select! {
        _ = check_forever(&engine, &readiness, &metrics) => {}
        _ = stop.cancelled() => {}
    }
    readiness.unready("shutting down");
    metrics.set_ready(false);
}

async fn check_forever(engine: &SharedEngine, readiness: &Readiness, metrics: &Metrics) {
    loop {
        let engine = engine.load_full();
        let stores = engine.stores();
        let failures: HashMap<String, StoreError> = stores
            .check_all(Duration::from_secs(5))
            .await
            .into_iter()
            .collect();
        let checked: Vec<(String, Option<&'static str>)> = stores
            .names()
            .map(|name| (name.to_owned(), failures.get(name).map(StoreError::class)))
            .collect();
        let previous = readiness.stores();
        let (states, changes) = observe(&previous, &checked, SystemTime::now());
        for change in &changes {
            match change {
                Change::Up(store) => tracing::info!(store = %store, "store check passes again"),
                Change::Down(store, class) => {
                    tracing::warn!(store = %store, error_class = class, "store check fails")
                }
            }
        }
        for gone in previous
            .iter()
            .filter(|p| !states.iter().any(|s| s.store == p.store))
        {
            metrics.forget_store(&gone.store);
        }
        for s in &states {
            metrics.set_store_up(&s.store, s.up);
        }
        let any_down = states.iter().any(|s| !s.up);
        readiness.set_stores(states);
        drop(engine);
        // A store that is down is checked more often, to see it return soon.
        let pause = if any_down {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(10)
        };
        tokio::time::sleep(pause).await;
    }
}

/// A store whose state changed with the last check.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    Up(String),
    Down(String, &'static str),
}

/// The stores' new states from one round of checks (`None` passed,
/// `Some(class)` failed), and what changed since `previous`. A store keeps
/// its `since` while its up/down state stays; a store seen for the first
/// time counts as a change only when it is down.
fn observe(
    previous: &[StoreState],
    checked: &[(String, Option<&'static str>)],
    now: SystemTime,
) -> (Vec<StoreState>, Vec<Change>) {
    let mut states = Vec::with_capacity(checked.len());
    let mut changes = Vec::new();
    for (store, failure) in checked {
        let up = failure.is_none();
        let before = previous.iter().find(|p| &p.store == store);
        let since = match before {
            Some(b) if b.up == up => b.since,
            _ => now,
        };
        match (before.map(|b| b.up), failure) {
            (Some(false), None) => changes.push(Change::Up(store.clone())),
            (Some(true) | None, Some(class)) => changes.push(Change::Down(store.clone(), class)),
            // Still down with another class: the new class is shown, not logged again.
            _ => {}
        }
        states.push(StoreState {
            store: store.clone(),
            up,
            since,
            error_class: *failure,
        });
    }
    (states, changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn a_change_of_state_is_reported_once_and_keeps_its_time() {
        let checked = |v: Option<&'static str>| vec![("a".to_owned(), None), ("v".to_owned(), v)];
        let (s1, c1) = observe(&[], &checked(None), at(1));
        assert!(c1.is_empty(), "stores that start up are no news");
        assert!(s1.iter().all(|s| s.up && s.since == at(1)));

        let (s2, c2) = observe(&s1, &checked(Some("unreachable")), at(5));
        assert_eq!(c2, vec![Change::Down("v".into(), "unreachable")]);
        let v = s2.iter().find(|s| s.store == "v").unwrap();
        assert_eq!(
            (v.up, v.since, v.error_class),
            (false, at(5), Some("unreachable"))
        );
        assert_eq!(s2.iter().find(|s| s.store == "a").unwrap().since, at(1));

        // Still down, another class: no new line, same since, the class shown.
        let (s3, c3) = observe(&s2, &checked(Some("timeout")), at(7));
        assert!(c3.is_empty());
        let v = s3.iter().find(|s| s.store == "v").unwrap();
        assert_eq!((v.since, v.error_class), (at(5), Some("timeout")));

        let (s4, c4) = observe(&s3, &checked(None), at(9));
        assert_eq!(c4, vec![Change::Up("v".into())]);
        assert_eq!(s4.iter().find(|s| s.store == "v").unwrap().since, at(9));
    }

    #[test]
    fn a_store_down_from_the_start_is_reported() {
        let (s, c) = observe(&[], &[("v".to_owned(), Some("unauthorised"))], at(1));
        assert_eq!(c, vec![Change::Down("v".into(), "unauthorised")]);
        assert!(!s[0].up);
    }
}
