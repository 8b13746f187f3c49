//! The one bound on concurrent requests to a store, its `maxConcurrency`.
//! The cache owns it and hands it to the provider with every batch; every
//! request a provider sends holds one permit while it runs, whether it
//! reads one secret or a batch of them. Providers have no fan-out of their
//! own.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::Semaphore;

/// `maxConcurrency` when the configuration gives none.
pub(crate) const DEFAULT_MAX_CONCURRENCY: usize = 16;

/// At most so many requests to one store at once.
#[derive(Debug, Clone)]
pub struct RequestLimit {
    permits: Arc<Semaphore>,
}

impl Default for RequestLimit {
    /// The default of `maxConcurrency`.
    fn default() -> Self {
        Self::new(DEFAULT_MAX_CONCURRENCY)
    }
}

impl RequestLimit {
    pub fn new(max_concurrency: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_concurrency.max(1))),
        }
    }

    /// Runs one request while holding a permit.
    pub async fn run<F: Future>(&self, request: F) -> F::Output {
        // The semaphore is never closed, so a permit always comes.
        let _permit = self.permits.acquire().await.ok();
        request.await
    }

    /// One request per item, each under a permit; answers keep the items'
    /// order.
    pub async fn each<'a, T, F, Fut>(&self, items: &'a [T], request: F) -> Vec<Fut::Output>
    where
        F: Fn(&'a T) -> Fut,
        Fut: Future,
    {
        // Collected first: a lazy `map` in the future would keep the closure
        // in it, which trips the `Send` bound of `async_trait` methods.
        let requests: Vec<_> = items.iter().map(|item| self.run(request(item))).collect();
        futures::future::join_all(requests).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn at_most_the_limit_runs_at_once() {
        let limit = RequestLimit::new(2);
        let (now, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let items: Vec<u32> = (0..6).collect();
        let answers = limit
            .each(&items, |i| {
                let (now, most) = (&now, &most);
                async move {
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(n, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    i * 10
                }
            })
            .await;
        assert_eq!(answers, [0, 10, 20, 30, 40, 50]);
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }
}
