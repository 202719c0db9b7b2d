//! The node's service proxy follows the API: every Service and EndpointSlice, listed and watched (a 410
//! re-lists), becomes the proxy's spec (`proxy_spec.rs`), applied when it changes. A burst of changes (a
//! Deployment's pods starting) is one apply: changes are gathered for [`GATHER`] after the first. While the
//! node follows an API the Services are the API's: a `PUT /v1/services` meanwhile lasts until the next
//! change. A failed watch ends the session, and the next one lists afresh after a second; the proxy keeps
//! its rules meanwhile (as kube-proxy does while the API is away).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use testbed_api::objects::{EndpointSlice, Service};
use testbed_control_plane::client::{list_watch, paths, Change, Client, ClientError, Object, WatchEvent};
use testbed_control_plane::resources::Kind;

use super::proxy_spec;
use crate::proxy::Proxy;

/// How long changes are gathered before one apply.
const GATHER: Duration = Duration::from_millis(50);
/// Pause before a new session after a failed one.
const RETRY: Duration = Duration::from_secs(1);

/// Follows the API's Services for good.
pub async fn run(api: Arc<Client>, node: String, proxy: Arc<Proxy>) {
    loop {
        if let Err(e) = session(&api, &node, &proxy).await {
            tracing::warn!(error = %e, "service proxy: the Service/EndpointSlice watch failed; listing again");
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Objects of one kind by `namespace/name`, and whether the first list is in.
pub(super) struct Known<T> {
    objects: HashMap<String, T>,
    pub(super) listed: bool,
}

impl<T: Object + Clone> Known<T> {
    pub(super) fn new() -> Self {
        Self { objects: HashMap::new(), listed: false }
    }

    pub(super) fn apply(&mut self, change: Change<T>) {
        let key = |o: &T| format!("{}/{}", o.metadata().namespace.as_deref().unwrap_or(""), o.metadata().name);
        match change {
            Change::Listed(all) => {
                self.objects = all.into_iter().map(|o| (key(&o), o)).collect();
                self.listed = true;
            }
            Change::Event(WatchEvent::Added(o) | WatchEvent::Modified(o)) => {
                self.objects.insert(key(&o), o);
            }
            Change::Event(WatchEvent::Deleted(o)) => {
                self.objects.remove(&key(&o));
            }
        }
    }

    pub(super) fn all(&self) -> Vec<T> {
        self.objects.values().cloned().collect()
    }
}

async fn session(api: &Arc<Client>, node: &str, proxy: &Arc<Proxy>) -> Result<(), ClientError> {
    let mut services = list_watch::<Service>(api.clone(), &paths::collection(Kind::Service, None), &[]);
    let mut slices = list_watch::<EndpointSlice>(api.clone(), &paths::collection(Kind::EndpointSlice, None), &[]);
    let (mut known_services, mut known_slices) = (Known::new(), Known::new());
    let mut applied = None;
    let mut due: Option<tokio::time::Instant> = None;
    loop {
        let gather = async {
            match due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            change = services.next() => {
                known_services.apply(change.unwrap_or_else(|| Err(ClientError::Unreachable("the Service watch ended".into())))?);
                due.get_or_insert_with(|| tokio::time::Instant::now() + GATHER);
            }
            change = slices.next() => {
                known_slices.apply(change.unwrap_or_else(|| Err(ClientError::Unreachable("the EndpointSlice watch ended".into())))?);
                due.get_or_insert_with(|| tokio::time::Instant::now() + GATHER);
            }
            _ = gather => {
                due = None;
                if !(known_services.listed && known_slices.listed) {
                    continue;
                }
                let spec = proxy_spec::build(&known_services.all(), &known_slices.all(), node);
                if applied.as_ref() == Some(&spec) {
                    continue;
                }
                let (p, s) = (proxy.clone(), spec.clone());
                // The nft work blocks; a task of its own also finishes when the session is stopped.
                match tokio::task::spawn_blocking(move || p.apply(s)).await {
                    Ok(Ok(changes)) => {
                        tracing::info!(services = spec.services.len(), commands = changes.len(), "service proxy follows the API");
                        applied = Some(spec);
                    }
                    // Kept as the target by the proxy: its reconcile retries the kernel; a refused spec waits for
                    // the next change.
                    Ok(Err(e)) => tracing::warn!(error = %e, "service proxy: applying the API's Services failed"),
                    Err(e) => tracing::warn!(error = %e, "service proxy: the apply task failed"),
                }
            }
        }
    }
}
