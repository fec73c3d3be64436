//! Queueing for hosts running many migrations: at most
//! `parallelMigrationsPerCluster` at once overall and
//! `parallelOutboundMigrationsPerNode` per source host; the rest wait in
//! `Pending`, as KubeVirt queues them.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Counts {
    total: usize,
    per_node: HashMap<String, usize>,
}

/// A shared limiter; clone it freely.
#[derive(Clone)]
pub struct MigrationLimiter {
    inner: Arc<(Mutex<Counts>, Condvar)>,
    per_cluster: usize,
    per_node: usize,
}

/// A running slot; dropping it frees the slot and wakes a waiter.
pub struct Permit {
    limiter: MigrationLimiter,
    node: String,
}

impl MigrationLimiter {
    /// Limits of at least 1 each.
    pub fn new(per_cluster: usize, per_node: usize) -> Self {
        MigrationLimiter {
            inner: Arc::new((Mutex::new(Counts::default()), Condvar::new())),
            per_cluster: per_cluster.max(1),
            per_node: per_node.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.inner.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fits(&self, c: &Counts, node: &str) -> bool {
        c.total < self.per_cluster && c.per_node.get(node).copied().unwrap_or(0) < self.per_node
    }

    fn take(&self, c: &mut Counts, node: &str) -> Permit {
        c.total += 1;
        *c.per_node.entry(node.to_string()).or_insert(0) += 1;
        Permit {
            limiter: self.clone(),
            node: node.to_string(),
        }
    }

    /// A slot for a migration out of `source_node`, if one is free now.
    pub fn try_acquire(&self, source_node: &str) -> Option<Permit> {
        let mut c = self.lock();
        self.fits(&c, source_node)
            .then(|| self.take(&mut c, source_node))
    }

    /// Wait up to `timeout` for a slot.
    pub fn acquire_timeout(&self, source_node: &str, timeout: Duration) -> Option<Permit> {
        let deadline = Instant::now() + timeout;
        let mut c = self.lock();
        loop {
            if self.fits(&c, source_node) {
                return Some(self.take(&mut c, source_node));
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            c = self
                .inner
                .1
                .wait_timeout(c, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Migrations running now (overall, and out of `node`).
    pub fn running(&self, node: &str) -> (usize, usize) {
        let c = self.lock();
        (c.total, c.per_node.get(node).copied().unwrap_or(0))
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut c = self.limiter.lock();
        c.total -= 1;
        if let Some(n) = c.per_node.get_mut(&self.node) {
            *n -= 1;
        }
        self.limiter.inner.1.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_node_and_cluster_limits_queue_the_rest() {
        let l = MigrationLimiter::new(5, 2);
        let a = l.try_acquire("node1").unwrap();
        let _b = l.try_acquire("node1").unwrap();
        assert!(
            l.try_acquire("node1").is_none(),
            "third outbound waits (Pending)"
        );
        let others: Vec<_> = (0..3)
            .map(|i| l.try_acquire(&format!("n{i}")).unwrap())
            .collect();
        assert!(l.try_acquire("n9").is_none(), "cluster limit 5 reached");
        assert_eq!(l.running("node1"), (5, 2));
        let l2 = l.clone();
        let waiter =
            std::thread::spawn(move || l2.acquire_timeout("node1", Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(50));
        drop(others);
        drop(a);
        let _c = waiter
            .join()
            .unwrap()
            .expect("a freed slot wakes the waiter");
        assert!(l
            .acquire_timeout("node1", Duration::from_millis(20))
            .is_none());
    }
}
