//! The node's NetworkPolicy enforcer: a `NetworkPolicyNodeSpec` (per restricted pod of this node, what it may
//! receive and send, selectors already resolved to IPs) becomes the table `inet testbed-policy`
//! (`render.rs`), written whole in one nft transaction (`nft.rs`).
//!
//! The kernel's listing of the table right after a write is kept as the fingerprint of what the agent
//! wrote: the same spec again with the kernel still matching it runs nothing, and the periodic reconcile
//! rewrites the table when its listing differs (a deleted rule, a flushed or deleted table).

mod nft;
mod render;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use testbed_api::{ApiError, NetworkPolicyNodeSpec, NetworkPolicyStatus};

pub use nft::{Nft, NftCli, NftError};

/// How often the table is read back and repaired (the service proxy's period).
pub const RECONCILE_PERIOD: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The caller's fault (4xx); nothing was changed.
    #[error("{0}")]
    Invalid(ApiError),
    #[error(transparent)]
    Nft(#[from] NftError),
}

/// The node's policy enforcer. The kernel work is blocking (it runs `nft`): call it from a blocking task.
pub struct Enforcer {
    inner: Mutex<Inner>,
}

struct Inner {
    kernel: Box<dyn Nft>,
    /// The spec last PUT; None until the first one (the agent then leaves nftables alone).
    want: Option<Arc<NetworkPolicyNodeSpec>>,
    /// The spec last written and the kernel's listing right after it.
    written: Option<(Arc<NetworkPolicyNodeSpec>, String)>,
    /// The API's NetworkPolicies (`namespace/name` -> resourceVersion) the spec in force was built from;
    /// empty when it came from a PUT.
    sources: BTreeMap<String, String>,
    transactions: u64,
    drift_repairs: u64,
    last_error: Option<String>,
}

impl Enforcer {
    pub fn new(kernel: Box<dyn Nft>) -> Enforcer {
        let inner = Inner {
            kernel,
            want: None,
            written: None,
            sources: BTreeMap::new(),
            transactions: 0,
            drift_repairs: 0,
            last_error: None,
        };
        Enforcer { inner: Mutex::new(inner) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `spec` the node's policies (a PUT: not built from the API's objects). One line per line of the
    /// nft script run; empty when the kernel already held it.
    pub fn apply(&self, spec: NetworkPolicyNodeSpec) -> Result<Vec<String>, PolicyError> {
        self.apply_built_from(spec, BTreeMap::new())
    }

    /// As [`Enforcer::apply`], for a spec built from the API's NetworkPolicies `sources` (`namespace/name` ->
    /// resourceVersion), which the status lists once the kernel holds it: a client that wrote a policy knows
    /// from there when this node enforces it.
    pub fn apply_built_from(
        &self,
        spec: NetworkPolicyNodeSpec,
        sources: BTreeMap<String, String>,
    ) -> Result<Vec<String>, PolicyError> {
        testbed_api::validate_network_policies(&spec).map_err(PolicyError::Invalid)?;
        let spec = Arc::new(spec);
        let mut inner = self.lock();
        // The spec is the target even when the kernel refuses it: the reconcile retries.
        inner.want = Some(Arc::clone(&spec));
        let result = inner.converge(&spec);
        if result.is_ok() {
            inner.sources = sources;
        }
        inner.record(result)
    }

    /// The spec in force, unchanged, is now also what `sources` give (a policy that selects no pod of this
    /// node, a new version of one that changes none of its rules).
    pub fn still_built_from(&self, sources: BTreeMap<String, String>) {
        self.lock().sources = sources;
    }

    /// Reads the table back and rewrites it when it is not what was written. Lines are the script run.
    pub fn reconcile(&self) -> Result<Vec<String>, PolicyError> {
        let mut inner = self.lock();
        let Some(want) = inner.want.clone() else { return Ok(Vec::new()) };
        let result = inner.converge(&want);
        if matches!(&result, Ok(lines) if !lines.is_empty()) {
            inner.drift_repairs += 1;
        }
        inner.record(result)
    }

    /// The lookup maps and the table as the kernel holds them now.
    pub fn status(&self) -> Result<NetworkPolicyStatus, PolicyError> {
        let mut inner = self.lock();
        let table = inner.kernel.read()?;
        let keys = |map| table.as_deref().map(|t| render::map_keys(t, map)).unwrap_or_default();
        Ok(NetworkPolicyStatus {
            transactions: inner.transactions,
            drift_repairs: inner.drift_repairs,
            last_error: inner.last_error.clone(),
            built_from: inner.sources.clone(),
            ingress_pods: keys(render::INGRESS_PODS),
            egress_pods: keys(render::EGRESS_PODS),
            table,
        })
    }

    /// Every `RECONCILE_PERIOD`, on blocking threads.
    pub async fn reconcile_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(RECONCILE_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let enforcer = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || enforcer.reconcile()).await {
                Ok(Ok(lines)) if !lines.is_empty() => {
                    tracing::info!(lines = lines.len(), "network policy: the table had drifted; rewritten")
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!("network policy reconcile: {e}"),
                Err(e) => tracing::warn!("network policy reconcile task: {e}"),
            }
        }
    }
}

impl Inner {
    /// Writes `spec` unless it is what was last written and the kernel still lists what it listed then.
    fn converge(&mut self, spec: &Arc<NetworkPolicyNodeSpec>) -> Result<Vec<String>, NftError> {
        let listed = self.kernel.read()?;
        if let (Some((written, fingerprint)), Some(listed)) = (&self.written, &listed) {
            if written == spec && fingerprint == listed {
                return Ok(Vec::new());
            }
        }
        let script = render::script(spec);
        self.transactions += 1;
        self.written = None;
        self.kernel.apply(&script)?;
        let fingerprint = self.kernel.read()?.unwrap_or_default();
        self.written = Some((Arc::clone(spec), fingerprint));
        Ok(script.lines().map(str::to_string).collect())
    }

    fn record(&mut self, result: Result<Vec<String>, NftError>) -> Result<Vec<String>, PolicyError> {
        self.last_error = result.as_ref().err().map(|e| e.to_string());
        Ok(result?)
    }
}

#[cfg(test)]
mod tests;
