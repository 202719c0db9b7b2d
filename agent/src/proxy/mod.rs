//! The service proxy's data plane (kube-proxy's nftables mode): a `ServiceProxySpec` becomes the table
//! `ip testbed-proxy` (`render.rs`), and the kernel is brought to it by the difference only (`ruleset.rs`),
//! in one nft transaction (`nft.rs`).
//!
//! A PUT is diffed against what the agent last wrote, so an endpoint change at 10,000 Services costs a few
//! chain rewrites, not a read of the whole table; the periodic reconcile reads the table back and repairs
//! whatever was changed behind the agent's back (a deleted rule, a flushed or deleted table).

mod nft;
mod render;
mod ruleset;

use std::sync::Mutex;
use std::time::Duration;

use testbed_api::{ApiError, ObservedDestination, ServiceProxySpec, ServiceProxyStatus};

pub use nft::{Nft, NftCli, NftError};
use ruleset::Ruleset;

/// How often the table is read back and repaired: a flushed table is back within this (and the read).
pub const RECONCILE_PERIOD: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The caller's fault (4xx); nothing was changed.
    #[error("{0}")]
    Invalid(ApiError),
    #[error(transparent)]
    Nft(#[from] NftError),
}

/// The node's service proxy. The kernel work is blocking (it runs `nft`): call it from a blocking task.
pub struct Proxy {
    inner: Mutex<Inner>,
}

struct Inner {
    kernel: Box<dyn Nft>,
    /// The table last rendered from a PUT; None until the first one (the agent then leaves nftables alone).
    want: Option<Ruleset>,
    /// What the agent last wrote, assumed to be the kernel's until a transaction fails or a reconcile looks.
    written: Option<Ruleset>,
    transactions: u64,
    drift_repairs: u64,
    last_error: Option<String>,
}

impl Proxy {
    pub fn new(kernel: Box<dyn Nft>) -> Proxy {
        let inner = Inner { kernel, want: None, written: None, transactions: 0, drift_repairs: 0, last_error: None };
        Proxy { inner: Mutex::new(inner) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `spec` the node's whole set of Services. One line per nft command run; empty when the kernel
    /// already held it.
    pub fn apply(&self, spec: &ServiceProxySpec) -> Result<Vec<String>, ProxyError> {
        testbed_api::validate_services(spec).map_err(ProxyError::Invalid)?;
        let want = render::render(spec);
        let mut inner = self.lock();
        let result = inner.converge(&want, false);
        // The spec is the target even when the kernel refused it: the reconcile retries.
        inner.want = Some(want);
        inner.record(result)
    }

    /// Reads the table back and repairs it. Lines describe repairs (none when nothing had drifted).
    pub fn reconcile(&self) -> Result<Vec<String>, ProxyError> {
        let mut inner = self.lock();
        let Some(want) = inner.want.take() else { return Ok(Vec::new()) };
        let result = inner.converge(&want, true);
        inner.want = Some(want);
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
    pub async fn reconcile_loop(self: std::sync::Arc<Self>) {
        let mut tick = tokio::time::interval(RECONCILE_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let proxy = std::sync::Arc::clone(&self);
            match tokio::task::spawn_blocking(move || proxy.reconcile()).await {
                Ok(Ok(lines)) => lines.iter().for_each(|l| tracing::info!("service proxy repaired: {l}")),
                Ok(Err(e)) => tracing::warn!("service proxy reconcile: {e}"),
                Err(e) => tracing::warn!("service proxy reconcile task: {e}"),
            }
        }
    }
}

impl Inner {
    /// `read_back`: diff against the kernel's table rather than against what was last written.
    fn converge(&mut self, want: &Ruleset, read_back: bool) -> Result<Vec<String>, NftError> {
        if read_back || self.written.is_none() {
            self.written = self.kernel.read()?;
        }
        let ops = ruleset::diff(self.written.as_ref(), want);
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        self.transactions += 1;
        let ops = match self.kernel.apply(&ops) {
            Ok(()) => ops,
            Err(e) if !read_back => {
                // The kernel was not what the agent last wrote (someone changed it): diff against it instead.
                tracing::info!("service proxy: {e}; diffing against the table read back");
                self.written = self.kernel.read()?;
                let ops = ruleset::diff(self.written.as_ref(), want);
                self.transactions += 1;
                self.kernel.apply(&ops).inspect_err(|_| self.written = None)?;
                ops
            }
            Err(e) => {
                self.written = None;
                return Err(e);
            }
        };
        ruleset::apply_ops(&mut self.written, &ops);
        Ok(ruleset::script(&ops).lines().map(str::to_string).collect())
    }

    fn record(&mut self, result: Result<Vec<String>, NftError>) -> Result<Vec<String>, ProxyError> {
        self.last_error = result.as_ref().err().map(|e| e.to_string());
        Ok(result?)
    }
}

/// Each lookup map's entries, followed through their chain to the endpoint chains' DNAT destinations.
fn destinations(r: &Ruleset) -> Vec<ObservedDestination> {
    let mut out = Vec::new();
    for map in
        [render::SERVICE_IPS, render::SERVICE_NODEPORTS, render::NO_ENDPOINT_SERVICES, render::NO_ENDPOINT_NODEPORTS]
    {
        for (key, verdict) in r.maps.get(map).map(|m| &m.elements).into_iter().flatten() {
            let chain = verdict.split_whitespace().last().unwrap_or_default().to_string();
            let rules = r.chains.get(&chain).map(|c| c.rules.as_slice()).unwrap_or_default();
            let targets = rules.iter().flat_map(|r| &r.targets);
            let mut endpoints: Vec<_> = targets
                .filter(|t| t.starts_with("endpoint-"))
                .filter_map(|t| r.chains.get(t)?.rules.iter().find_map(|r| r.dnat))
                .collect();
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
mod tests;
