//! The background tasks of `serve`, owned: each is named (it runs in a
//! `task` span), stopped at shutdown, and watched. A task that ends before
//! shutdown when it should not, or panics, is logged and reported through
//! [`Tasks::failed`]; `serve` then drains and exits non-zero, so that the
//! Pod is restarted instead of running on without a watch or an upkeep.
//! A task can have a thread and a runtime of its own, to run however busy
//! the shared workers are; such a task is the last to stop, once every
//! other task has ended (the admin port answers its probes through the
//! whole drain). A leaf module: it knows nothing of what the tasks do.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// A task that died: its name and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFailure {
    pub task: String,
    /// `ended` (it returned before shutdown) or `panicked: <message>`.
    pub reason: String,
}

/// Whether a task may end by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// It runs until shutdown; ending earlier is a failure.
    AtShutdown,
    /// It may end by itself (a store's upkeep ends with its store).
    WhenDone,
    /// It runs until every other task has ended; ending earlier is a failure.
    AfterDrain,
}

struct Inner {
    tracker: TaskTracker,
    /// The tasks on threads of their own, which stop last.
    last: TaskTracker,
    stop: CancellationToken,
    /// The same signal for code that watches a channel (the listeners).
    shutdown: watch::Sender<bool>,
    /// Turns true once every task of `tracker` has ended after shutdown.
    drained: watch::Sender<bool>,
    failure: watch::Sender<Option<TaskFailure>>,
}

/// The owner of every background task; cheap to clone.
#[derive(Clone)]
pub struct Tasks {
    inner: Arc<Inner>,
}

impl Default for Tasks {
    fn default() -> Self {
        Self::new()
    }
}

impl Tasks {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                tracker: TaskTracker::new(),
                last: TaskTracker::new(),
                stop: CancellationToken::new(),
                shutdown: watch::channel(false).0,
                drained: watch::channel(false).0,
                failure: watch::channel(None).0,
            }),
        }
    }

    /// Runs `task` until shutdown, when it is dropped. Ending before, or
    /// panicking, is a failure.
    pub fn spawn(&self, name: impl Into<String>, task: impl Future<Output = ()> + Send + 'static) {
        self.run(
            name.into(),
            Some(self.inner.stop.clone()),
            Ending::AtShutdown,
            task,
        );
    }

    /// Runs `task`, which watches [`Tasks::token`] itself and ends after its
    /// own clean-up (draining connections, releasing a Lease). Ending before
    /// shutdown, or panicking, is a failure.
    pub(crate) fn spawn_draining(
        &self,
        name: impl Into<String>,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        self.run(name.into(), None, Ending::AtShutdown, task);
    }

    /// Runs `task` until it ends by itself, `stop` is cancelled, or
    /// shutdown, whichever comes first. Only a panic is a failure.
    pub(crate) fn spawn_until(
        &self,
        name: impl Into<String>,
        stop: CancellationToken,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        let all = self.inner.stop.clone();
        let stopped = async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = all.cancelled() => {}
            }
        };
        let task = async move {
            tokio::select! {
                _ = stopped => {}
                _ = task => {}
            }
        };
        self.run(name.into(), None, Ending::WhenDone, task);
    }

    /// Runs `task` on a thread of its own, with a single-threaded runtime of
    /// its own, so that it keeps running however busy the shared workers
    /// are. It watches [`Tasks::drained_signal`] itself: told to stop only
    /// once every other task has ended, it works on through their drain.
    /// Ending before that, or panicking, is a failure. Fails when the thread
    /// or its runtime cannot be made.
    pub(crate) fn spawn_on_own_thread(
        &self,
        name: impl Into<String>,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let name = name.into();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (ended_tx, ended_rx) = tokio::sync::oneshot::channel();
        let span = tracing::info_span!("task", task = %name);
        std::thread::Builder::new()
            .name(format!("sesame {name}"))
            .spawn(move || {
                let ended = runtime.block_on(AssertUnwindSafe(task.instrument(span)).catch_unwind());
                let _ = ended_tx.send(ended);
            })?;
        // The task's stand-in among the others: it ends when the thread's
        // task did, and raises its panic again where `run` reports it.
        let ended = async move {
            if let Ok(Err(panic)) = ended_rx.await {
                std::panic::resume_unwind(panic);
            }
        };
        self.run(name, None, Ending::AfterDrain, ended);
        Ok(())
    }

    fn run(
        &self,
        name: String,
        stop: Option<CancellationToken>,
        ending: Ending,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        let inner = self.inner.clone();
        let span = tracing::info_span!("task", task = %name);
        let tracker = match ending {
            Ending::AfterDrain => &self.inner.last,
            Ending::AtShutdown | Ending::WhenDone => &self.inner.tracker,
        };
        tracker.spawn(
            async move {
                let guarded = AssertUnwindSafe(task).catch_unwind();
                let outcome = match stop {
                    Some(stop) => tokio::select! {
                        _ = stop.cancelled() => return,
                        outcome = guarded => outcome,
                    },
                    None => guarded.await,
                };
                let may_end = match ending {
                    Ending::WhenDone => true,
                    Ending::AtShutdown => inner.stop.is_cancelled(),
                    Ending::AfterDrain => *inner.drained.borrow(),
                };
                let reason = match outcome {
                    Ok(()) if may_end => return,
                    Ok(()) => "ended".to_owned(),
                    Err(panic) => format!("panicked: {}", panic_message(panic.as_ref())),
                };
                tracing::error!(task = %name, %reason, "background task died");
                inner.failure.send_if_modified(|first| {
                    let new = first.is_none();
                    if new {
                        *first = Some(TaskFailure { task: name, reason });
                    }
                    new
                });
            }
            .instrument(span),
        );
    }

    /// Cancelled at shutdown, for tasks that stop by themselves.
    pub fn token(&self) -> CancellationToken {
        self.inner.stop.clone()
    }

    /// Turns true at shutdown, for code that watches a channel.
    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }

    /// Turns true once, after shutdown, every task has ended but those on
    /// threads of their own: their signal to stop.
    pub(crate) fn drained_signal(&self) -> watch::Receiver<bool> {
        self.inner.drained.subscribe()
    }

    /// Starts the shutdown: every task is told to stop.
    pub fn shutdown(&self) {
        self.inner.stop.cancel();
        self.inner.shutdown.send_replace(true);
    }

    /// The first task that died; pending while none has.
    pub async fn failed(&self) -> TaskFailure {
        let mut failure = self.inner.failure.subscribe();
        loop {
            if let Some(f) = failure.borrow_and_update().clone() {
                return f;
            }
            if failure.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Waits until every task has ended (they end once told to stop):
    /// first all but those on threads of their own, then, told to stop
    /// now, those.
    pub async fn wait(&self) {
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
        self.inner.drained.send_replace(true);
        self.inner.last.close();
        self.inner.last.wait().await;
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_ends_before_shutdown_is_a_failure() {
        let tasks = Tasks::new();
        tasks.spawn("watch of Namespaces", async {});
        let failure = tasks.failed().await;
        assert_eq!(failure.task, "watch of Namespaces");
        assert_eq!(failure.reason, "ended");
    }

    #[tokio::test]
    #[allow(clippy::panic)]
    async fn a_task_that_panics_is_a_failure() {
        let tasks = Tasks::new();
        tasks.spawn("long", std::future::pending());
        tasks.spawn_until("upkeep", CancellationToken::new(), async {
            panic!("boom");
        });
        let failure = tasks.failed().await;
        assert_eq!(failure.task, "upkeep");
        assert_eq!(failure.reason, "panicked: boom");
        tasks.shutdown();
        tasks.wait().await;
    }

    #[tokio::test]
    async fn shutdown_stops_every_task_and_is_no_failure() {
        let tasks = Tasks::new();
        tasks.spawn("forever", std::future::pending());
        let token = tasks.token();
        let (drained_tx, drained_rx) = tokio::sync::oneshot::channel();
        tasks.spawn_draining("drains", async move {
            token.cancelled().await;
            let _ = drained_tx.send(());
        });
        let mut signal = tasks.shutdown_signal();
        tasks.spawn_until("store upkeep", CancellationToken::new(), std::future::pending());
        // One that ends by itself as it may.
        tasks.spawn_until("done", CancellationToken::new(), async {});
        tasks.shutdown();
        tasks.wait().await;
        assert!(drained_rx.await.is_ok(), "the draining task ran its clean-up");
        assert!(*signal.borrow_and_update());
        assert!(tasks.inner.failure.borrow().is_none());
    }

    #[tokio::test]
    async fn a_task_on_its_own_thread_stops_after_the_others_have_drained() {
        let tasks = Tasks::new();
        let token = tasks.token();
        let (drained_tx, drained_rx) = watch::channel(false);
        tasks.spawn_draining("drains slowly", async move {
            token.cancelled().await;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            drained_tx.send_replace(true);
        });
        let mut stop = tasks.drained_signal();
        let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
        let main_thread = std::thread::current().id();
        tasks
            .spawn_on_own_thread("probes", async move {
                let _ = stop.wait_for(|s| *s).await;
                let _ = seen_tx.send((
                    *drained_rx.borrow(),
                    std::thread::current().id() != main_thread,
                    std::thread::current().name().map(str::to_owned),
                ));
            })
            .expect("thread");
        tasks.shutdown();
        tasks.wait().await;
        let (after_drain, other_thread, thread_name) = seen_rx.await.expect("the task ran to its end");
        assert!(after_drain, "told to stop only once the others had ended");
        assert!(other_thread);
        assert_eq!(thread_name.as_deref(), Some("sesame probes"));
        assert!(tasks.inner.failure.borrow().is_none());
    }

    #[tokio::test]
    #[allow(clippy::panic)]
    async fn a_task_on_its_own_thread_that_ends_early_or_panics_is_a_failure() {
        let tasks = Tasks::new();
        tasks.spawn_on_own_thread("ends", async {}).expect("thread");
        let failure = tasks.failed().await;
        assert_eq!(
            (failure.task.as_str(), failure.reason.as_str()),
            ("ends", "ended")
        );

        let tasks = Tasks::new();
        tasks
            .spawn_on_own_thread("panics", async {
                panic!("boom");
            })
            .expect("thread");
        let failure = tasks.failed().await;
        assert_eq!(failure.task, "panics");
        assert_eq!(failure.reason, "panicked: boom");
        tasks.shutdown();
        tasks.wait().await;
    }

    #[tokio::test]
    async fn a_task_stopped_by_its_own_token_is_no_failure() {
        let tasks = Tasks::new();
        let stop = CancellationToken::new();
        tasks.spawn_until("store upkeep", stop.clone(), std::future::pending());
        stop.cancel();
        tasks.shutdown();
        tasks.wait().await;
        assert!(tasks.inner.failure.borrow().is_none());
    }
}
