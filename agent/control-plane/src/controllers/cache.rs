//! client-go's informer, reduced to what the loops need: a list+watch of one kind kept in a local cache
//! (keyed `namespace/name`), a handler told of every change (old and new state), and a flag for "the first
//! list is in" so no controller acts on an empty cache (it would create every pod again).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;

use crate::client::{list_watch, Change, Client, Object, WatchEvent};

/// The key of an object: `namespace/name` (`name` for cluster-scoped kinds), as client-go's
/// `MetaNamespaceKeyFunc`.
pub fn key_of<T: Object>(object: &T) -> String {
    let meta = object.metadata();
    match &meta.namespace {
        Some(ns) => format!("{ns}/{}", meta.name),
        None => meta.name.clone(),
    }
}

/// What an informer tells its handler: the object's state before and after (`None` when it did not
/// exist / no longer does).
pub type Handler<T> = Box<dyn Fn(Option<&T>, Option<&T>) + Send + Sync>;

/// The objects of one kind as last seen; cheap to clone.
pub struct Cache<T> {
    items: Arc<RwLock<HashMap<String, T>>>,
    synced: watch::Sender<bool>,
}

impl<T> Clone for Cache<T> {
    fn clone(&self) -> Self {
        Self { items: self.items.clone(), synced: self.synced.clone() }
    }
}

impl<T: Object + Clone> Default for Cache<T> {
    fn default() -> Self {
        Self { items: Arc::default(), synced: watch::Sender::new(false) }
    }
}

impl<T: Object + Clone> Cache<T> {
    /// The object with `key`.
    pub fn get(&self, key: &str) -> Option<T> {
        self.items.read().ok()?.get(key).cloned()
    }

    /// The objects of `namespace`.
    pub fn list(&self, namespace: &str) -> Vec<T> {
        let Ok(items) = self.items.read() else { return Vec::new() };
        items.values().filter(|o| o.metadata().namespace.as_deref() == Some(namespace)).cloned().collect()
    }

    /// Every object.
    pub fn all(&self) -> Vec<T> {
        self.items.read().map(|items| items.values().cloned().collect()).unwrap_or_default()
    }

    /// Waits until the first list is in.
    pub async fn synced(&self) {
        let mut rx = self.synced.subscribe();
        // The sender lives in `self`: wait_for cannot fail while we hold it.
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Keeps the cache in step with the collection at `path` for good, telling `handler` of every change.
    /// Errors are logged and retried after a second: the list+watch stream resumes where it was.
    pub async fn run(self, client: Arc<Client>, path: String, handler: Handler<T>) {
        let mut changes = list_watch::<T>(client, &path, &[]);
        while let Some(change) = changes.next().await {
            match change {
                Ok(Change::Listed(objects)) => self.replace(objects, &handler),
                Ok(Change::Event(event)) => self.apply(event, &handler),
                Err(e) => {
                    tracing::warn!(path, error = %e, "list/watch failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn replace(&self, objects: Vec<T>, handler: &Handler<T>) {
        let new: HashMap<String, T> = objects.into_iter().map(|o| (key_of(&o), o)).collect();
        let old = match self.items.write() {
            Ok(mut items) => std::mem::replace(&mut *items, new.clone()),
            Err(_) => return,
        };
        for (key, object) in &new {
            handler(old.get(key), Some(object));
        }
        for (key, object) in &old {
            if !new.contains_key(key) {
                handler(Some(object), None);
            }
        }
        self.synced.send_replace(true);
    }

    fn apply(&self, event: WatchEvent<T>, handler: &Handler<T>) {
        let Ok(mut items) = self.items.write() else { return };
        match event {
            WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                let old = items.insert(key_of(&o), o.clone());
                drop(items);
                handler(old.as_ref(), Some(&o));
            }
            WatchEvent::Deleted(o) => {
                let old = items.remove(&key_of(&o));
                drop(items);
                handler(Some(old.as_ref().unwrap_or(&o)), None);
            }
        }
    }
}
