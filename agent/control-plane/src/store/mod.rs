//! The object store: etcd's data model (keys under a prefix, one global revision, compare-and-swap on a key's
//! `mod_revision`, watches from a revision) behind a trait, so the API server's rules have unit tests on an
//! in-memory fake and run against the real etcd in a lab.

pub mod etcd;
// The in-memory fake also serves other crates' unit tests (the CLI's fake cluster), through a feature.
#[cfg(any(test, feature = "memory-store"))]
pub mod memory;

use std::future::Future;
use std::pin::Pin;

use futures::Stream;

/// One stored key at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The full key, e.g. `/registry/pods/default/web`.
    pub key: String,
    /// The object's JSON.
    pub value: Vec<u8>,
    /// Revision of the key's creation (a watch event is ADDED when it equals `mod_revision`).
    pub create_revision: i64,
    /// Revision of the key's last change: the object's `resourceVersion`.
    pub mod_revision: i64,
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The key was created or changed: its new value.
    Put(KeyValue),
    /// The key was deleted at `revision`; `prev` is its last value.
    Delete {
        /// The value before the deletion.
        prev: KeyValue,
        /// Revision of the deletion.
        revision: i64,
    },
}

/// A watch: batches of events in revision order, ending with an error (compaction, lost connection).
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Vec<Event>, StoreError>> + Send>>;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A create found the key already there.
    #[error("key {0} already exists")]
    AlreadyExists(String),
    /// The key is not there.
    #[error("key {0} not found")]
    NotFound(String),
    /// The key changed since the revision the caller expected (its `mod_revision` now).
    #[error("key {key} is at revision {current}, not {expected}")]
    Conflict {
        /// The key.
        key: String,
        /// The revision the caller expected.
        expected: i64,
        /// The key's revision now.
        current: i64,
    },
    /// The history after this revision was compacted away: a watch cannot resume from it.
    #[error("revision {0} is compacted")]
    Compacted(i64),
    /// etcd could not be reached or answered something unexpected.
    #[error("etcd: {0}")]
    Backend(String),
}

/// etcd's operations as the API server uses them. Every write returns the revision it made, which becomes
/// the object's `resourceVersion`.
pub trait Store: Send + Sync + 'static {
    /// The key's current value.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<KeyValue>, StoreError>> + Send;
    /// Every key under `prefix`, and the store's revision they were read at.
    fn list(&self, prefix: &str) -> impl Future<Output = Result<(Vec<KeyValue>, i64), StoreError>> + Send;
    /// Creates the key; `AlreadyExists` when it is there.
    fn create(&self, key: &str, value: Vec<u8>) -> impl Future<Output = Result<i64, StoreError>> + Send;
    /// Replaces the key's value when its `mod_revision` is still `expected`; else `Conflict` (or `NotFound`).
    fn update(&self, key: &str, value: Vec<u8>, expected: i64) -> impl Future<Output = Result<i64, StoreError>> + Send;
    /// Deletes the key when its `mod_revision` is still `expected`; returns the deletion's revision.
    fn delete(&self, key: &str, expected: i64) -> impl Future<Output = Result<i64, StoreError>> + Send;
    /// Changes under `prefix` after revision `after` (exclusive). `Compacted` when `after` is older than what
    /// the store keeps, at once when that is known at the start, else as the stream's last item.
    fn watch(&self, prefix: &str, after: i64) -> impl Future<Output = Result<WatchStream, StoreError>> + Send;
}
