//! The service proxy's data plane (kube-proxy's nftables mode): a `ServiceProxySpec` becomes the table
//! `ip testbed-proxy` (`render.rs`), and the kernel is brought to it by the difference only (`ruleset.rs`),
//! in one nf_tables netlink batch (`kernel.rs`, `expr.rs`, `nfnl.rs`).
//!
//! A PUT is diffed against what the agent last wrote, so an endpoint change at 10,000 Services costs a few
//! chain rewrites, not a read of the whole table. The periodic reconcile asks the kernel for the ruleset's
//! generation id, which every commit by anyone moves: when it is the one the agent's own last commit made,
//! nothing changed; otherwise it reads the table back (`nft.rs`) and repairs whatever was changed behind the
//! agent's back (a deleted rule, a flushed or deleted table).

mod compile;
mod expr;
mod kernel;
mod nfnl;
mod nft;
mod render;
mod ruleset;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use testbed_api::{ApiError, ObservedDestination, ProxiedService, ServiceProxySpec, ServiceProxyStatus};

pub use kernel::NftNetlink;
pub use nft::{list as nft_list, run_script as nft_run_script, Nft, NftError};
use ruleset::{Op, Ruleset};

/// How often the table is read back and repaired: a flushed table is back within this (and the read).
pub const RECONCILE_PERIOD: Duration = Duration::from_secs(5);
/// Read-backs in a row that someone else's commits may overtake before the agent gives up until the next
/// reconcile.
const READ_BACK_ATTEMPTS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The caller's fault (4xx); nothing was changed.
    #[error("{0}")]
    Invalid(ApiError),
    #[error(transparent)]
    Nft(#[from] NftError),
}

/// The node's service proxy. The kernel work is blocking (netlink, and `nft` for a read-back): call it from
/// a blocking task.
pub struct Proxy {
    inner: Mutex<Inner>,
}

struct Inner {
    kernel: Box<dyn Nft>,
    /// The spec last PUT; None until the first one (the agent then leaves nftables alone).
    want: Option<Arc<ServiceProxySpec>>,
    /// What the agent last wrote, assumed to be the kernel's until a transaction fails or a reconcile looks.
    written: Option<Ruleset>,
    /// The spec `written` was rendered from, when it was: a PUT is then diffed Service by Service against it.
    written_spec: Option<Arc<ServiceProxySpec>>,
    /// The ruleset's generation when the kernel was known to hold `written`: None once unknown (someone
    /// else committed between the agent's look and its commit), which the next reconcile settles.
    generation: Option<u32>,
    transactions: u64,
    drift_repairs: u64,
    last_error: Option<String>,
}

impl Proxy {
    pub fn new(kernel: Box<dyn Nft>) -> Proxy {
        let inner = Inner {
            kernel,
            want: None,
            written: None,
            written_spec: None,
            generation: None,
            transactions: 0,
            drift_repairs: 0,
            last_error: None,
        };
        Proxy { inner: Mutex::new(inner) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `spec` the node's whole set of Services. One line per operation applied; empty when the kernel
    /// already held it.
    pub fn apply(&self, spec: ServiceProxySpec) -> Result<Vec<String>, ProxyError> {
        testbed_api::validate_services(&spec).map_err(ProxyError::Invalid)?;
        let spec = Arc::new(spec);
        let mut inner = self.lock();
        // The spec is the target even when the kernel refuses it: the reconcile retries.
        inner.want = Some(Arc::clone(&spec));
        let old = inner.written_spec.take();
        let result = match (inner.written.is_some(), old) {
            (true, Some(old)) => {
                let ops = changed_services(&old, &spec);
                let generation = inner.generation;
                inner.commit(ops, &spec, generation, true)
            }
            _ => inner.read_back_and_commit(&spec),
        };
        inner.record(result)
    }

    /// Repairs the table if anyone else committed since the agent did (read back and diffed). Lines
    /// describe repairs (none when nothing had drifted).
    pub fn reconcile(&self) -> Result<Vec<String>, ProxyError> {
        let mut inner = self.lock();
        let Some(want) = inner.want.clone() else { return Ok(Vec::new()) };
        let in_place = inner.written.is_some() && inner.written_spec.as_ref().is_some_and(|w| Arc::ptr_eq(w, &want));
        if let (true, Some(ours)) = (in_place, inner.generation) {
            match inner.kernel.generation() {
                Ok(now) if now == ours => return inner.record(Ok(Vec::new())),
                Ok(_) => {}
                Err(e) => return inner.record(Err(e)),
            }
        }
        let result = inner.read_back_and_commit(&want);
        if matches!(&result, Ok(lines) if !lines.is_empty()) {
            inner.drift_repairs += 1;
        }
        inner.record(result)
    }

    /// The maps' destinations and their endpoints as the kernel holds them now.
    pub fn status(&self) -> Result<ServiceProxyStatus, ProxyError> {
        let mut inner = self.lock();
        let table = inner.kernel.read()?;
        Ok(ServiceProxyStatus {
            transactions: inner.transactions,
            drift_repairs: inner.drift_repairs,
            last_error: inner.last_error.clone(),
            destinations: table.as_ref().map(destinations).unwrap_or_default(),
        })
    }

    /// Every `RECONCILE_PERIOD`, on blocking threads.
    pub async fn reconcile_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(RECONCILE_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let proxy = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || proxy.reconcile()).await {
                Ok(Ok(lines)) => lines.iter().for_each(|l| tracing::info!("service proxy repaired: {l}")),
                Ok(Err(e)) => tracing::warn!("service proxy reconcile: {e}"),
                Err(e) => tracing::warn!("service proxy reconcile task: {e}"),
            }
        }
    }
}

/// The operations from `old`'s table to `new`'s, rendering only the Services that differ (removed ones
/// first, so that a ClusterIP passed from one Service to another is free before it is taken).
fn changed_services(old: &ServiceProxySpec, new: &ServiceProxySpec) -> Vec<Op> {
    fn key(s: &ProxiedService) -> (&str, &str) {
        (&s.namespace, &s.name)
    }
    // The usual PUT lists the same Services in the same order: compared pairwise, without an index (at
    // 10,000 Services the two maps cost more than the comparison).
    if old.services.len() == new.services.len() && old.services.iter().zip(&new.services).all(|(a, b)| key(a) == key(b))
    {
        let mut ops = Vec::new();
        for (was, s) in old.services.iter().zip(&new.services).filter(|(a, b)| a != b) {
            ops.extend(ruleset::diff(Some(&render::render_service(Some(was))), &render::render_service(Some(s))));
        }
        keep_shared_hairpins(&mut ops, new);
        return ops;
    }
    let before: HashMap<_, &ProxiedService> = old.services.iter().map(|s| (key(s), s)).collect();
    let after: HashMap<_, &ProxiedService> = new.services.iter().map(|s| (key(s), s)).collect();
    let mut ops = Vec::new();
    for s in old.services.iter().filter(|s| !after.contains_key(&key(s))) {
        ops.extend(ruleset::diff(Some(&render::render_service(Some(s))), &render::render_service(None)));
    }
    for s in &new.services {
        let was = before.get(&key(s)).copied();
        if was != Some(s) {
            ops.extend(ruleset::diff(Some(&render::render_service(was)), &render::render_service(Some(s))));
        }
    }
    keep_shared_hairpins(&mut ops, new);
    ops
}

/// A hairpin pair one Service's diff deletes stays while another Service still has the endpoint (the set
/// is the union of all Services' endpoints). Only deletions are looked at, so an unchanged table costs nothing.
fn keep_shared_hairpins(ops: &mut Vec<Op>, new: &ServiceProxySpec) {
    for op in ops.iter_mut() {
        if let Op::DeleteElements { map, keys } = op {
            if map == render::HAIRPIN {
                keys.retain(|k| {
                    let ip = k.split(" . ").next().and_then(|ip| ip.parse().ok());
                    !ip.is_some_and(|ip| new.services.iter().any(|s| render::has_hairpin(s, ip)))
                });
            }
        }
    }
    ops.retain(|op| !matches!(op, Op::DeleteElements { keys, .. } if keys.is_empty()));
}

impl Inner {
    /// Reads the table back and brings it to `spec`, in a transaction bound to the generation read: if
    /// someone commits in between, it is read again (a few times).
    fn read_back_and_commit(&mut self, spec: &Arc<ServiceProxySpec>) -> Result<Vec<String>, NftError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.written_spec = None;
            self.generation = None;
            let generation = self.kernel.generation()?;
            self.written = self.kernel.read()?;
            let ops = ruleset::diff(self.written.as_ref(), &render::render(spec));
            match self.commit(ops, spec, Some(generation), false) {
                Err(NftError::GenerationMoved(_)) if attempt < READ_BACK_ATTEMPTS => continue,
                result => return result,
            }
        }
    }

    /// Runs `ops` as one transaction (none when empty), bound to `generation` when known. `from_memory`:
    /// they were diffed against what the agent last wrote. If someone committed since, they still apply to
    /// that if it is still there (unbound; the next reconcile reads back); if the kernel refuses them
    /// because it is not, they are diffed again against the table read back.
    fn commit(
        &mut self,
        ops: Vec<Op>,
        spec: &Arc<ServiceProxySpec>,
        generation: Option<u32>,
        from_memory: bool,
    ) -> Result<Vec<String>, NftError> {
        if ops.is_empty() {
            self.generation = generation;
        } else {
            self.transactions += 1;
            let result = match self.kernel.apply(&ops, generation) {
                Err(NftError::GenerationMoved(_)) if from_memory => self.kernel.apply(&ops, None),
                result => result,
            };
            match result {
                Ok(after) => self.generation = after,
                Err(e) => {
                    self.written = None;
                    self.generation = None;
                    if !from_memory {
                        return Err(e);
                    }
                    tracing::info!("service proxy: {e}; diffing against the table read back");
                    return self.read_back_and_commit(spec);
                }
            }
            ruleset::apply_ops(&mut self.written, &ops);
        }
        self.written_spec = Some(Arc::clone(spec));
        Ok(ruleset::script(&ops).lines().map(str::to_string).collect())
    }

    fn record(&mut self, result: Result<Vec<String>, NftError>) -> Result<Vec<String>, ProxyError> {
        self.last_error = result.as_ref().err().map(|e| e.to_string());
        Ok(result?)
    }
}

/// Each lookup map's entries, followed through their chain to its endpoint map's or endpoint chains' DNAT
/// destinations.
fn destinations(r: &Ruleset) -> Vec<ObservedDestination> {
    let mut out = Vec::new();
    for map in
        [render::SERVICE_IPS, render::SERVICE_NODEPORTS, render::NO_ENDPOINT_SERVICES, render::NO_ENDPOINT_NODEPORTS]
    {
        for (key, verdict) in r.maps.get(map).map(|m| &m.elements).into_iter().flatten() {
            let chain = verdict.split_whitespace().last().unwrap_or_default().to_string();
            let rules = r.chains.get(&chain).map(|c| c.rules.as_slice()).unwrap_or_default();
            let targets = rules.iter().flat_map(|r| &r.targets);
            let chained = targets
                .filter(|t| t.starts_with("endpoint-"))
                .filter_map(|t| r.chains.get(t)?.rules.iter().find_map(|r| r.dnat));
            let mapped = rules
                .iter()
                .flat_map(|r| &r.sets)
                .filter(|m| render::is_endpoint_map(m))
                .filter_map(|m| r.maps.get(m))
                .flat_map(|m| m.elements.values())
                .filter_map(|v| v.replace(" . ", ":").parse().ok());
            let mut endpoints: Vec<_> = chained.chain(mapped).collect();
            endpoints.sort();
            endpoints.dedup();
            let session_affinity = rules.iter().any(|r| r.sets.iter().any(|s| s.starts_with("affinity-")));
            out.push(ObservedDestination {
                key: key.clone(),
                map: map.to_string(),
                chain,
                endpoints,
                session_affinity,
            });
        }
    }
    out
}

#[cfg(test)]
mod bench;
#[cfg(test)]
mod kernel_tests;
#[cfg(test)]
mod tests;
