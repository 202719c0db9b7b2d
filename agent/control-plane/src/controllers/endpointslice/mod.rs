//! The EndpointSlice controller (pkg/controller/endpointslice): keeps each Service's EndpointSlices equal
//! to what its selector picks (`desired.rs`). It watches Services, pods and EndpointSlices: a pod's change
//! queues the Services that select it before or after the change, a slice's change queues its Service (so a
//! slice edited or deleted by hand is put back), and a Service gone takes the slices this controller made
//! for it with it.

mod desired;

use std::sync::Arc;

use testbed_api::objects::{EndpointSlice, Pod, Service, MANAGED_BY_LABEL, SERVICE_NAME_LABEL};

use super::cache::{key_of, Cache};
use super::queue::Queue;
use super::{resync, work, Context};
use crate::client::{paths, ClientError};
use crate::resources::Kind;

pub use desired::MANAGED_BY;

#[derive(Clone)]
struct Controller {
    ctx: Context,
    services: Cache<Service>,
    pods: Cache<Pod>,
    slices: Cache<EndpointSlice>,
    queue: Queue,
}

/// Runs the EndpointSlice controller until dropped.
pub async fn run(ctx: Context) -> Result<(), ClientError> {
    let c = Controller {
        ctx,
        services: Cache::default(),
        pods: Cache::default(),
        slices: Cache::default(),
        queue: Queue::default(),
    };
    let client = c.ctx.client.clone();
    let services = c.services.clone().run(
        client.clone(),
        paths::collection(Kind::Service, None),
        Box::new({
            let c = c.clone();
            move |old: Option<&Service>, new: Option<&Service>| {
                if let Some(svc) = new.or(old) {
                    c.queue.add(&key_of(svc));
                }
            }
        }),
    );
    let pods = c.pods.clone().run(
        client.clone(),
        paths::collection(Kind::Pod, None),
        Box::new({
            let c = c.clone();
            move |old, new| c.pod_changed(old, new)
        }),
    );
    let slices = c.slices.clone().run(
        client,
        paths::collection(Kind::EndpointSlice, None),
        Box::new({
            let c = c.clone();
            move |old: Option<&EndpointSlice>, new: Option<&EndpointSlice>| {
                if let Some(key) = new.or(old).and_then(service_key) {
                    c.queue.add(&key);
                }
            }
        }),
    );
    let workers = async {
        c.services.synced().await;
        c.pods.synced().await;
        c.slices.synced().await;
        let c = Arc::new(c.clone());
        futures::join!(resync(&c.queue, || c.services.all()), work(&c.queue, |key| c.sync(key)));
    };
    futures::join!(services, pods, slices, workers);
    Ok(())
}

/// `namespace/service` of a slice this controller manages.
fn service_key(slice: &EndpointSlice) -> Option<String> {
    let labels = &slice.metadata.labels;
    if labels.get(MANAGED_BY_LABEL).map(String::as_str) != Some(MANAGED_BY) {
        return None;
    }
    let service = labels.get(SERVICE_NAME_LABEL)?;
    Some(format!("{}/{service}", slice.metadata.namespace.as_deref().unwrap_or_default()))
}

impl Controller {
    fn pod_changed(&self, old: Option<&Pod>, new: Option<&Pod>) {
        let Some(ns) = new.or(old).and_then(|p| p.metadata.namespace.clone()) else { return };
        for svc in self.services.list(&ns) {
            if old.is_some_and(|p| desired::selects(&svc, p)) || new.is_some_and(|p| desired::selects(&svc, p)) {
                self.queue.add(&key_of(&svc));
            }
        }
    }

    /// Makes the slices of the Service `key` what they should be: creates, updates and deletes.
    async fn sync(&self, key: String) -> Result<(), ClientError> {
        let (ns, name) = key.split_once('/').unwrap_or(("", &key));
        let wanted = match self.services.get(&key) {
            Some(svc) => desired::slices(&svc, &self.pods.list(ns)),
            None => Vec::new(),
        };
        let current: Vec<EndpointSlice> =
            self.slices.list(ns).into_iter().filter(|s| service_key(s).as_deref() == Some(key.as_str())).collect();
        let api = &self.ctx.client;
        for slice in &wanted {
            let path = paths::object(Kind::EndpointSlice, ns, &slice.metadata.name);
            match current.iter().find(|c| c.metadata.name == slice.metadata.name) {
                None => {
                    api.create(&paths::collection(Kind::EndpointSlice, Some(ns)), slice).await?;
                }
                Some(have) if differs(have, slice) => {
                    let mut update = slice.clone();
                    update.metadata.resource_version.clone_from(&have.metadata.resource_version);
                    api.update(&path, &update).await?;
                }
                Some(_) => {}
            }
        }
        for stale in current.iter().filter(|c| !wanted.iter().any(|w| w.metadata.name == c.metadata.name)) {
            match api.delete(&paths::object(Kind::EndpointSlice, ns, &stale.metadata.name)).await {
                Err(e) if !e.is_not_found() => return Err(e),
                _ => {}
            }
        }
        if !wanted.is_empty() || !current.is_empty() {
            tracing::debug!(service = name, slices = wanted.len(), "endpoint slices in step");
        }
        Ok(())
    }
}

/// What the controller owns of a slice differs: its endpoints, ports, labels or owner.
fn differs(have: &EndpointSlice, want: &EndpointSlice) -> bool {
    have.endpoints != want.endpoints
        || have.ports != want.ports
        || have.address_type != want.address_type
        || want.metadata.labels.iter().any(|(k, v)| have.metadata.labels.get(k) != Some(v))
        || have.metadata.owner_references != want.metadata.owner_references
}
