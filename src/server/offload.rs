//! Where a review's CPU work runs. The async workers also drive every
//! connection's TLS and HTTP, so a review that computes for a long time on
//! one of them holds up every other connection scheduled there: with one
//! worker (a one-CPU container), all of them. A review whose body is larger
//! than a threshold therefore runs on the blocking pool, where the OS
//! shares the CPU between it and the workers. At most one such review per
//! CPU runs at a time, so that a burst of them cannot crowd out the workers;
//! the rest wait their turn without holding a thread. Small reviews, which
//! are most of them and take microseconds, stay on the worker: the hand-off
//! would cost more than they do (docs/performance.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::admission::{Admission, ReviewError};

/// Runs reviews on the worker or on the blocking pool, by body size.
#[derive(Debug)]
pub struct ReviewLane {
    above_bytes: usize,
    permits: Arc<Semaphore>,
}

impl ReviewLane {
    /// Bodies larger than `above_bytes` go to the blocking pool.
    pub fn new(above_bytes: usize) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Self {
            above_bytes,
            permits: Arc::new(Semaphore::new(cpus)),
        }
    }

    /// Answers one review. `received` is when its body was complete.
    pub async fn review(
        &self,
        admission: &Arc<Admission>,
        body: Bytes,
        timeout: Option<Duration>,
        received: Instant,
    ) -> Result<Vec<u8>, ReviewError> {
        if body.len() <= self.above_bytes {
            let mut out = Vec::with_capacity(1024);
            admission.review_into(&body, timeout, received, &mut out).await?;
            return Ok(out);
        }
        let admission = admission.clone();
        let runtime = tokio::runtime::Handle::current();
        self.offloaded(move || {
            let mut out = Vec::with_capacity(4096);
            // Store calls inside are still driven by the runtime's I/O driver.
            runtime
                .block_on(admission.review_into(&body, timeout, received, &mut out))
                .map(|()| out)
        })
        .await
    }

    /// Answers one workload review (no store call: all of it is CPU).
    pub(crate) async fn review_workload(
        &self,
        admission: &Arc<Admission>,
        body: Bytes,
    ) -> Result<Vec<u8>, ReviewError> {
        let work = |admission: &Admission, body: &[u8]| {
            let mut out = Vec::with_capacity(1024);
            admission.review_workload_into(body, &mut out).map(|()| out)
        };
        if body.len() <= self.above_bytes {
            return work(admission, &body);
        }
        let admission = admission.clone();
        self.offloaded(move || work(&admission, &body)).await
    }

    /// Runs `work` on the blocking pool, one per CPU at a time.
    async fn offloaded<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, ReviewError> + Send + 'static,
    ) -> Result<T, ReviewError> {
        // The semaphore is never closed.
        let permit = self.permits.clone().acquire_owned().await.ok();
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        });
        match task.await {
            Ok(answer) => answer,
            Err(e) => {
                tracing::error!(error = %e, "a review task failed");
                Err(ReviewError::Encode("the review could not be completed".into()))
            }
        }
    }
}
