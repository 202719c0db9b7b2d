//! The scheduling queue, without I/O: pending pods in arrival order, and the pods that did not fit parked
//! with a back-off (1 s doubling to 10 s, Kubernetes' `podInitialBackoff`/`podMaxBackoff`). A parked pod
//! is tried again once its back-off is over and something changed that could make it fit (a node added or
//! changed, a pod gone), or after `MAX_PARKED` without any change, as Kubernetes flushes its
//! unschedulable pods.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use super::cache::PodKey;

const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A parked pod is tried again after this long even when nothing seemed to change.
const MAX_PARKED: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Parked {
    /// Its back-off ends.
    retry_at: Instant,
    /// Parked since.
    since: Instant,
    /// Something changed since it was parked.
    woken: bool,
}

/// Pods waiting for a scheduling attempt.
#[derive(Debug, Default)]
pub struct Queue {
    active: VecDeque<PodKey>,
    queued: HashSet<PodKey>,
    parked: HashMap<PodKey, Parked>,
    /// Failed attempts per pod, for its back-off; cleared when it is bound or gone.
    attempts: HashMap<PodKey, u32>,
}

impl Queue {
    /// A pending pod: queued unless it is queued or parked already.
    pub fn add(&mut self, key: &PodKey) {
        if !self.queued.contains(key) && !self.parked.contains_key(key) {
            self.queued.insert(key.clone());
            self.active.push_back(key.clone());
        }
    }

    /// The next pod to try.
    pub fn pop(&mut self) -> Option<PodKey> {
        let key = self.active.pop_front()?;
        self.queued.remove(&key);
        Some(key)
    }

    /// The pod did not fit (or its binding failed): parked with its next back-off.
    pub fn park(&mut self, key: &PodKey, now: Instant) {
        let attempts = self.attempts.entry(key.clone()).or_default();
        *attempts += 1;
        let backoff = BACKOFF_MIN.saturating_mul(1 << (*attempts - 1).min(8)).min(BACKOFF_MAX);
        self.parked.insert(key.clone(), Parked { retry_at: now + backoff, since: now, woken: false });
    }

    /// The pod is bound or gone: no longer waiting.
    pub fn forget(&mut self, key: &PodKey) {
        self.parked.remove(key);
        self.attempts.remove(key);
        if self.queued.remove(key) {
            self.active.retain(|k| k != key);
        }
    }

    /// Something changed that could make parked pods fit.
    pub fn wake(&mut self) {
        self.parked.values_mut().for_each(|p| p.woken = true);
    }

    /// Moves the parked pods that are due to the active queue.
    pub fn promote(&mut self, now: Instant) {
        let due: Vec<PodKey> = self.parked.iter().filter(|(_, p)| due_at(p) <= now).map(|(k, _)| k.clone()).collect();
        for key in due {
            self.parked.remove(&key);
            self.add(&key);
        }
    }

    /// When the next parked pod becomes due, if any.
    pub fn next_due(&self) -> Option<Instant> {
        self.parked.values().map(due_at).min()
    }
}

fn due_at(p: &Parked) -> Instant {
    if p.woken {
        p.retry_at
    } else {
        (p.since + MAX_PARKED).max(p.retry_at)
    }
}
