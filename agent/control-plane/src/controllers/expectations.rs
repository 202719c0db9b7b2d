//! client-go's `ControllerExpectations` (with the UID-tracking deletions of the ReplicaSet controller): a
//! controller that created 3 pods does not act on its ReplicaSet again until its informer has seen those 3
//! creations, so the lag between a write and its watch event never makes it create twice. Expectations
//! older than 5 minutes are given up on (an event lost for good must not stall the controller).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long expectations hold before the controller acts anyway (client-go's `ExpectationsTimeout`).
const TIMEOUT: Duration = Duration::from_secs(300);

/// Pending creations and deletions per controller key; cheap to clone.
#[derive(Clone, Default)]
pub struct Expectations {
    inner: Arc<Mutex<HashMap<String, Expected>>>,
}

struct Expected {
    adds: i64,
    /// Keys (`namespace/name`) of the pods being deleted.
    deletes: HashSet<String>,
    set_at: Instant,
}

impl Expectations {
    /// Whether the controller of `key` may act: every expected event was seen, or they timed out, or none
    /// were set.
    pub fn satisfied(&self, key: &str) -> bool {
        let Ok(map) = self.inner.lock() else { return true };
        map.get(key).is_none_or(|e| (e.adds <= 0 && e.deletes.is_empty()) || e.set_at.elapsed() > TIMEOUT)
    }

    /// Expects `adds` creations for `key` (replacing what was expected).
    pub fn expect_creations(&self, key: &str, adds: usize) {
        self.set(key, adds as i64, HashSet::new());
    }

    /// Expects the deletion of the pods `deleted` for `key`.
    pub fn expect_deletions(&self, key: &str, deleted: HashSet<String>) {
        self.set(key, 0, deleted);
    }

    fn set(&self, key: &str, adds: i64, deletes: HashSet<String>) {
        if let Ok(mut map) = self.inner.lock() {
            map.insert(key.to_string(), Expected { adds, deletes, set_at: Instant::now() });
        }
    }

    /// One creation for `key` was seen (or will never happen: its request failed).
    pub fn creation_observed(&self, key: &str) {
        if let Ok(mut map) = self.inner.lock() {
            if let Some(e) = map.get_mut(key) {
                e.adds -= 1;
            }
        }
    }

    /// The deletion of `pod` for `key` was seen (or will never happen).
    pub fn deletion_observed(&self, key: &str, pod: &str) {
        if let Ok(mut map) = self.inner.lock() {
            if let Some(e) = map.get_mut(key) {
                e.deletes.remove(pod);
            }
        }
    }

    /// Forgets `key` (its controller object is gone).
    pub fn delete(&self, key: &str) {
        if let Ok(mut map) = self.inner.lock() {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn satisfied_once_every_expected_event_is_seen() {
        let e = Expectations::default();
        assert!(e.satisfied("ns/rs"), "nothing expected");
        e.expect_creations("ns/rs", 2);
        assert!(!e.satisfied("ns/rs"));
        e.creation_observed("ns/rs");
        assert!(!e.satisfied("ns/rs"));
        e.creation_observed("ns/rs");
        assert!(e.satisfied("ns/rs"));

        e.expect_deletions("ns/rs", HashSet::from(["ns/p1".to_string(), "ns/p2".to_string()]));
        e.deletion_observed("ns/rs", "ns/p1");
        e.deletion_observed("ns/rs", "ns/p1");
        assert!(!e.satisfied("ns/rs"), "p2 is still expected");
        e.deletion_observed("ns/rs", "ns/p2");
        assert!(e.satisfied("ns/rs"));
        e.expect_creations("ns/rs", 1);
        e.delete("ns/rs");
        assert!(e.satisfied("ns/rs"));
    }
}
