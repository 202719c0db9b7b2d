//! An in-memory store with etcd's semantics (one revision counter, compare-and-swap on `mod_revision`,
//! history for watches, compaction), for the API server's unit tests.

use std::collections::BTreeMap;
use std::sync::Mutex;

use futures::StreamExt;
use tokio::sync::broadcast;

use super::{Event, KeyValue, Store, StoreError, WatchStream};

#[derive(Default)]
struct State {
    revision: i64,
    compacted: i64,
    keys: BTreeMap<String, KeyValue>,
    history: Vec<(i64, Event)>,
}

/// The fake etcd.
pub struct Memory {
    state: Mutex<State>,
    changes: broadcast::Sender<(i64, Event)>,
}

impl Default for Memory {
    fn default() -> Self {
        Self { state: Mutex::new(State::default()), changes: broadcast::channel(1024).0 }
    }
}

impl Memory {
    /// Forgets the history up to `revision`, as etcd's compaction.
    pub fn compact(&self, revision: i64) {
        let mut st = self.lock();
        st.compacted = revision;
        st.history.retain(|(rev, _)| *rev > revision);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, st: &mut State, event: Event) -> i64 {
        let rev = st.revision;
        st.history.push((rev, event.clone()));
        let _ = self.changes.send((rev, event));
        rev
    }

    fn check(st: &State, key: &str, expected: i64) -> Result<KeyValue, StoreError> {
        let kv = st.keys.get(key).ok_or_else(|| StoreError::NotFound(key.to_string()))?;
        if kv.mod_revision != expected {
            return Err(StoreError::Conflict { key: key.to_string(), expected, current: kv.mod_revision });
        }
        Ok(kv.clone())
    }
}

fn key_of(event: &Event) -> &str {
    match event {
        Event::Put(kv) => &kv.key,
        Event::Delete { prev, .. } => &prev.key,
    }
}

impl Store for Memory {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.lock().keys.get(key).cloned())
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), StoreError> {
        let st = self.lock();
        let kvs = st.keys.range(prefix.to_string()..).take_while(|(k, _)| k.starts_with(prefix));
        Ok((kvs.map(|(_, v)| v.clone()).collect(), st.revision))
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64, StoreError> {
        let mut st = self.lock();
        if st.keys.contains_key(key) {
            return Err(StoreError::AlreadyExists(key.to_string()));
        }
        st.revision += 1;
        let rev = st.revision;
        let kv = KeyValue { key: key.to_string(), value, create_revision: rev, mod_revision: rev };
        st.keys.insert(key.to_string(), kv.clone());
        Ok(self.record(&mut st, Event::Put(kv)))
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: i64) -> Result<i64, StoreError> {
        let mut st = self.lock();
        let old = Self::check(&st, key, expected)?;
        st.revision += 1;
        let kv = KeyValue { value, mod_revision: st.revision, ..old };
        st.keys.insert(key.to_string(), kv.clone());
        Ok(self.record(&mut st, Event::Put(kv)))
    }

    async fn delete(&self, key: &str, expected: i64) -> Result<i64, StoreError> {
        let mut st = self.lock();
        let prev = Self::check(&st, key, expected)?;
        st.revision += 1;
        st.keys.remove(key);
        let revision = st.revision;
        Ok(self.record(&mut st, Event::Delete { prev, revision }))
    }

    async fn watch(&self, prefix: &str, after: i64) -> Result<WatchStream, StoreError> {
        let st = self.lock();
        if after < st.compacted {
            return Err(StoreError::Compacted(after));
        }
        // Subscribe before reading the history, under the lock, so no change falls between the two.
        let live = broadcast_stream(self.changes.subscribe());
        let past: Vec<(i64, Event)> = st.history.iter().filter(|(rev, _)| *rev > after).cloned().collect();
        drop(st);
        let prefix = prefix.to_string();
        let stream = futures::stream::iter(past.into_iter().map(Ok))
            .chain(live)
            .filter(move |item| {
                let keep = match item {
                    Ok((rev, ev)) => *rev > after && key_of(ev).starts_with(&prefix),
                    Err(_) => true,
                };
                futures::future::ready(keep)
            })
            .map(|item| item.map(|(_, ev)| vec![ev]).map_err(|_| StoreError::Backend("watcher lagged".into())));
        Ok(Box::pin(stream))
    }
}

/// A broadcast receiver as a `Stream` (tokio-stream's wrapper, without the dependency).
fn broadcast_stream<T: Clone + Send + 'static>(
    rx: broadcast::Receiver<T>,
) -> impl futures::Stream<Item = Result<T, broadcast::error::RecvError>> + Send {
    futures::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Err(broadcast::error::RecvError::Closed) => None,
            other => Some((other, rx)),
        }
    })
}
