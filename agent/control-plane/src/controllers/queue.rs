//! client-go's work queue: keys (`namespace/name`) waiting to be reconciled. A key queued twice before a
//! worker takes it is reconciled once; a key added while a worker has it is reconciled again after, never
//! by two workers at once. Failed keys come back after a growing delay (5 ms doubling, up to 10 s).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// The longest retry delay of a key that keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A deduplicating queue of keys; cheap to clone.
#[derive(Clone, Default)]
pub struct Queue {
    inner: Arc<Mutex<Inner>>,
    ready: Arc<Notify>,
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<String>,
    /// Keys queued and not yet taken (and keys re-added while being processed).
    dirty: HashSet<String>,
    /// Keys a worker has taken and not marked done.
    processing: HashSet<String>,
    /// Consecutive failures per key, for the retry delay.
    failures: HashMap<String, u32>,
}

impl Queue {
    /// Queues `key` unless it is already waiting.
    pub fn add(&self, key: &str) {
        let Ok(mut q) = self.inner.lock() else { return };
        if !q.dirty.insert(key.to_string()) || q.processing.contains(key) {
            return;
        }
        q.queue.push_back(key.to_string());
        drop(q);
        self.ready.notify_one();
    }

    /// Queues `key` after `delay` (a pod that becomes available when `minReadySeconds` have passed).
    pub fn add_after(&self, key: &str, delay: Duration) {
        let (queue, key) = (self.clone(), key.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.add(&key);
        });
    }

    /// Queues `key` again after its failure delay, and counts the failure.
    pub fn retry(&self, key: &str) {
        let n = self.inner.lock().map(|mut q| {
            let n = q.failures.entry(key.to_string()).or_default();
            *n += 1;
            *n
        });
        let delay = Duration::from_millis(5).saturating_mul(1 << n.unwrap_or(1).min(12)).min(MAX_BACKOFF);
        self.add_after(key, delay);
    }

    /// Forgets the failures of `key` (it was reconciled).
    pub fn forget(&self, key: &str) {
        if let Ok(mut q) = self.inner.lock() {
            q.failures.remove(key);
        }
    }

    /// The next key, waiting for one; the caller calls [`Queue::done`] with it.
    pub async fn next(&self) -> String {
        loop {
            let notified = self.ready.notified();
            if let Ok(mut q) = self.inner.lock() {
                if let Some(key) = q.queue.pop_front() {
                    q.dirty.remove(&key);
                    q.processing.insert(key.clone());
                    // Others may be waiting too: pass the wake-up on while keys remain.
                    if !q.queue.is_empty() {
                        self.ready.notify_one();
                    }
                    return key;
                }
            }
            notified.await;
        }
    }

    /// Marks `key` processed; queues it again if it was added meanwhile.
    pub fn done(&self, key: &str) {
        let Ok(mut q) = self.inner.lock() else { return };
        q.processing.remove(key);
        if q.dirty.contains(key) {
            q.queue.push_back(key.to_string());
            drop(q);
            self.ready.notify_one();
        }
    }

    /// Keys waiting now (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().map(|q| q.queue.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deduplicates_and_never_hands_out_a_key_twice_at_once() {
        let q = Queue::default();
        q.add("a/x");
        q.add("a/x");
        q.add("a/y");
        assert_eq!(q.len(), 2);
        let first = q.next().await;
        assert_eq!(first, "a/x");
        // Added while being processed: not handed out until done.
        q.add("a/x");
        assert_eq!(q.next().await, "a/y");
        assert_eq!(q.len(), 0);
        q.done("a/x");
        assert_eq!(q.next().await, "a/x");
        q.done("a/x");
        q.done("a/y");
        assert_eq!(q.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_back_off() {
        let q = Queue::default();
        // First failure: back in 10 ms.
        q.retry("k");
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(q.len(), 0, "not before its delay");
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(q.next().await, "k");
        q.done("k");
        // Second failure in a row: 20 ms.
        q.retry("k");
        tokio::time::sleep(Duration::from_millis(15)).await;
        assert_eq!(q.len(), 0, "the delay doubled");
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(q.len(), 1);
        // Forgotten: back to 10 ms.
        q.forget("k");
        assert_eq!(q.next().await, "k");
        q.done("k");
        q.retry("k");
        tokio::time::sleep(Duration::from_millis(11)).await;
        assert_eq!(q.len(), 1);
    }
}
