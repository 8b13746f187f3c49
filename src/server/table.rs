//! The open connections of one port, capped. A connection is idle while no
//! request of it is being answered; when the port is full, the connection
//! idle for longest makes room for the new one, and only when every
//! connection has a request in flight is the new one refused. So idle or
//! slow connections cannot lock the API server out: they are the first to go.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

/// What a connection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activity {
    /// No request in flight since `since`; `served` once one was answered.
    Idle { since: Instant, served: bool },
    /// This many requests are being answered.
    Busy(usize),
}

#[derive(Debug)]
struct SlotState {
    in_flight: usize,
    idle_since: Instant,
    served: bool,
}

/// One connection's entry: its activity, and the signal to close it.
#[derive(Debug)]
pub(crate) struct Slot {
    state: Mutex<SlotState>,
    evict: Notify,
    /// The port's requests in flight (a metric).
    requests: Gauge,
}

impl Slot {
    fn new(now: Instant, requests: Gauge) -> Self {
        Self {
            state: Mutex::new(SlotState {
                in_flight: 0,
                idle_since: now,
                served: false,
            }),
            evict: Notify::new(),
            requests,
        }
    }

    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // The state is plain data, consistent after any panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn activity(&self) -> Activity {
        let s = self.lock();
        if s.in_flight > 0 {
            Activity::Busy(s.in_flight)
        } else {
            Activity::Idle {
                since: s.idle_since,
                served: s.served,
            }
        }
    }

    /// Restarts the idle clock (the handshake is done: the wait for the first request starts).
    pub(crate) fn restart_idle_clock(&self) {
        let mut s = self.lock();
        if s.in_flight == 0 {
            s.idle_since = Instant::now();
        }
    }

    /// Marks a request in flight until the guard is dropped.
    pub(crate) fn begin_request(self: &Arc<Self>) -> RequestGuard {
        let mut s = self.lock();
        s.in_flight += 1;
        s.served = true;
        self.requests.inc();
        RequestGuard { slot: self.clone() }
    }

    /// Resolves once the table asked this connection to close.
    pub(crate) async fn evicted(&self) {
        self.evict.notified().await;
    }
}

/// A request of a connection being answered.
pub(crate) struct RequestGuard {
    slot: Arc<Slot>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.slot.requests.dec();
        let mut s = self.slot.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.in_flight == 0 {
            s.idle_since = Instant::now();
        }
    }
}

/// The outcome of a new connection at the door.
pub(crate) enum Admission {
    /// Take it; `evicted` tells whether an idle connection was asked to make room.
    Accepted { entry: Entry, evicted: bool },
    /// Every connection has a request in flight: close this one.
    Refused,
}

#[derive(Debug)]
pub(crate) struct ConnectionTable {
    max: usize,
    next_id: AtomicU64,
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    requests: Gauge,
}

impl ConnectionTable {
    /// A table of at most `max` connections; `requests` counts their requests in flight.
    pub(crate) fn new(max: usize, requests: Gauge) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            next_id: AtomicU64::new(0),
            slots: Mutex::new(HashMap::new()),
            requests,
        })
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<u64, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connections in the table now.
    pub(crate) fn len(&self) -> usize {
        self.slots().len()
    }

    /// Admits a new connection, making room by evicting the one idle for
    /// longest when the table is full.
    pub(crate) fn admit(self: &Arc<Self>) -> Admission {
        let now = Instant::now();
        let mut slots = self.slots();
        let mut evicted = false;
        if slots.len() >= self.max {
            let victim = slots
                .iter()
                .filter_map(|(id, slot)| match slot.activity() {
                    Activity::Idle { since, .. } => Some((since, *id)),
                    Activity::Busy(_) => None,
                })
                .min();
            let Some((_, id)) = victim else {
                return Admission::Refused;
            };
            if let Some(slot) = slots.remove(&id) {
                // A permit is stored when the connection is not waiting yet.
                slot.evict.notify_one();
                evicted = true;
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot::new(now, self.requests.clone()));
        slots.insert(id, slot.clone());
        Admission::Accepted {
            entry: Entry {
                table: self.clone(),
                id,
                slot,
            },
            evicted,
        }
    }
}

/// A connection's place in the table, given up when dropped.
#[derive(Debug)]
pub(crate) struct Entry {
    table: Arc<ConnectionTable>,
    id: u64,
    slot: Arc<Slot>,
}

impl Entry {
    pub(crate) fn slot(&self) -> &Arc<Slot> {
        &self.slot
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.table.slots().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(table: &Arc<ConnectionTable>) -> (Entry, bool) {
        match table.admit() {
            Admission::Accepted { entry, evicted } => (entry, evicted),
            Admission::Refused => panic!("refused"),
        }
    }

    #[tokio::test]
    async fn a_full_table_evicts_the_longest_idle_connection() {
        let table = ConnectionTable::new(3, Gauge::default());
        let (oldest, _) = accepted(&table);
        let (busy, _) = accepted(&table);
        let (young, _) = accepted(&table);
        let _request = busy.slot().begin_request();
        // The oldest connection answers a request after the youngest
        // arrived: now the youngest has been idle for longest.
        std::thread::sleep(std::time::Duration::from_millis(2));
        drop(oldest.slot().begin_request());
        let (_new, evicted) = accepted(&table);
        assert!(evicted);
        assert_eq!(table.len(), 3);
        // The evicted one was told to go, and only it.
        tokio::time::timeout(std::time::Duration::from_secs(5), young.slot().evicted())
            .await
            .expect("the longest idle connection is asked to close");
        use futures::FutureExt;
        assert!(
            oldest.slot().evicted().now_or_never().is_none(),
            "only one is evicted"
        );
        assert!(
            busy.slot().evicted().now_or_never().is_none(),
            "only one is evicted"
        );
    }

    #[test]
    fn a_table_of_busy_connections_refuses_newcomers() {
        let table = ConnectionTable::new(2, Gauge::default());
        let (a, _) = accepted(&table);
        let (b, _) = accepted(&table);
        let _ra = a.slot().begin_request();
        let rb = b.slot().begin_request();
        assert!(matches!(table.admit(), Admission::Refused));
        drop(rb);
        assert!(matches!(table.admit(), Admission::Accepted { evicted: true, .. }));
    }

    #[test]
    fn a_closed_connection_leaves_the_table() {
        let table = ConnectionTable::new(2, Gauge::default());
        let (a, _) = accepted(&table);
        let (_b, _) = accepted(&table);
        drop(a);
        assert_eq!(table.len(), 1);
        let (_c, evicted) = accepted(&table);
        assert!(!evicted, "there was room");
    }

    #[test]
    fn activity_follows_requests() {
        let requests = Gauge::default();
        let table = ConnectionTable::new(1, requests.clone());
        let (a, _) = accepted(&table);
        let slot = a.slot();
        assert!(matches!(slot.activity(), Activity::Idle { served: false, .. }));
        let r1 = slot.begin_request();
        let r2 = slot.begin_request();
        assert_eq!(slot.activity(), Activity::Busy(2));
        assert_eq!(requests.get(), 2);
        drop(r1);
        assert_eq!(slot.activity(), Activity::Busy(1));
        drop(r2);
        assert!(matches!(slot.activity(), Activity::Idle { served: true, .. }));
        assert_eq!(requests.get(), 0);
    }
}
