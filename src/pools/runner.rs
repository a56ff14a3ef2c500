//! `HealthRunner`: where the health checks of pools and object hosts run, so that a reload can
//! start the checks of a new pool and stop those of a removed one (Pingora's own background
//! services are fixed once the server runs).
//!
//! Cold path: `run` once per pool built (startup or reload). The checks themselves are Pingora's
//! load-balancer loops, spawned on the runtime of one Pingora background service
//! (`RunnerService`); each is aborted when its `HealthTask` (held by the pool) is dropped.

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::runtime::Handle;
use tokio::task::AbortHandle;

/// A health-check loop to run: Pingora's `LoadBalancer` as a background service.
pub type Check = Arc<dyn BackgroundService + Send + Sync>;

/// One running (or pending) check; dropping it stops the check.
pub struct HealthTask(Arc<Mutex<Slot>>);

/// A check waiting for the runner to start, running, or stopped.
enum Slot {
    Pending(Check),
    Running(AbortHandle),
    Stopped,
}

impl Drop for HealthTask {
    fn drop(&mut self) {
        let mut slot = crate::sync::lock(&self.0);
        if let Slot::Running(h) = std::mem::replace(&mut *slot, Slot::Stopped) {
            h.abort();
        }
    }
}

/// Runs health checks on one runtime; checks handed over before it starts begin when it does.
#[derive(Default)]
pub struct HealthRunner {
    handle: OnceLock<Handle>,
    pending: Mutex<Vec<std::sync::Weak<Mutex<Slot>>>>,
    /// Never signalled: a check stops when its task is aborted or its runtime ends.
    quiet: OnceLock<tokio::sync::watch::Sender<bool>>,
}

impl HealthRunner {
    /// A runner that starts its checks once `service()` runs.
    pub fn new() -> Arc<HealthRunner> {
        Arc::new(HealthRunner::default())
    }

    /// Run `check` until the returned task is dropped.
    pub fn run(&self, check: Check) -> HealthTask {
        let slot = Arc::new(Mutex::new(Slot::Pending(check)));
        match self.handle.get() {
            Some(h) => self.spawn(h, &slot),
            None => crate::sync::lock(&self.pending).push(Arc::downgrade(&slot)),
        }
        HealthTask(slot)
    }

    fn spawn(&self, handle: &Handle, slot: &Mutex<Slot>) {
        let mut slot = crate::sync::lock(slot);
        if let Slot::Pending(check) = std::mem::replace(&mut *slot, Slot::Stopped) {
            let shutdown = self.quiet.get_or_init(|| tokio::sync::watch::channel(false).0).subscribe();
            let task = handle.spawn(async move { check.start(shutdown).await });
            *slot = Slot::Running(task.abort_handle());
        }
    }

    /// The Pingora background service whose runtime runs the checks.
    pub fn service(self: &Arc<Self>) -> RunnerService {
        RunnerService(self.clone())
    }
}

/// The background service that lends `HealthRunner` its runtime.
pub struct RunnerService(Arc<HealthRunner>);

#[async_trait]
impl BackgroundService for RunnerService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let runner = &self.0;
        let handle = runner.handle.get_or_init(Handle::current).clone();
        let pending = std::mem::take(&mut *crate::sync::lock(&runner.pending));
        for slot in pending.iter().filter_map(std::sync::Weak::upgrade) {
            runner.spawn(&handle, &slot);
        }
        // The checks run on this runtime until the process stops.
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting(Arc<AtomicUsize>);

    #[async_trait]
    impl BackgroundService for Counting {
        async fn start(&self, _shutdown: ShutdownWatch) {
            loop {
                self.0.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
    }

    async fn grows(n: &AtomicUsize) -> bool {
        let before = n.load(Ordering::SeqCst);
        for _ in 0..2000 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            if n.load(Ordering::SeqCst) > before + 2 {
                return true;
            }
        }
        false
    }

    #[tokio::test]
    async fn checks_start_with_the_runner_and_stop_when_their_task_drops() {
        let runner = HealthRunner::new();
        let early = Arc::new(AtomicUsize::new(0));
        let early_task = runner.run(Arc::new(Counting(early.clone())));
        assert_eq!(early.load(Ordering::SeqCst), 0, "nothing runs before the runner starts");
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let service = runner.service();
        tokio::spawn(async move { service.start(rx).await });
        assert!(grows(&early).await, "a pending check starts with the runner");
        let late = Arc::new(AtomicUsize::new(0));
        let late_task = runner.run(Arc::new(Counting(late.clone())));
        assert!(grows(&late).await, "a check handed over later starts at once");
        drop(early_task);
        // Current-thread runtime: an aborted task is never polled again.
        let stopped_at = early.load(Ordering::SeqCst);
        assert!(grows(&late).await);
        assert_eq!(early.load(Ordering::SeqCst), stopped_at, "a dropped task's check stopped");
        drop(late_task);
    }
}
