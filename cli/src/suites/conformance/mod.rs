//! The conformance suite: for each backend, switch the lab to it, create the suite's own test pods, run the
//! named checks against them, remove the pods. Backend-independent checks (namespaces, cgroups) run once.
//!
//! One file per check group, in the order the report lists them: `pod_network`, `mtu`, `overlay`, then the
//! backend-independent `sandbox`, `cgroups`, `control_plane`, `controller`, `container` and `probe`; `fixture`
//! holds the test pods they share, `images` what the two groups of image containers share.

mod cgroups;
mod container;
mod control_plane;
mod controller;

#[cfg(test)]
pub(super) use controller::NEVER_STARTS;
mod fixture;
mod images;
mod mtu;
mod network_policy;
mod overlay;
mod pod_network;
mod probe;
mod sandbox;
mod service;

use std::cell::RefCell;

use testbed_api::results::CheckStatus;
use testbed_api::Backend;

use super::cluster::Cluster;
use super::declared::{run_declared, DeclaredTest};
use super::harness::{switch_backend, CreatedPods};
use super::runner::{CheckError, CheckOutcome, Runner};
use fixture::{cleanup_checked, remove_leftovers, setup, Fixture};

/// The fake cluster answers the suite's own pods the way a lab would (a web pod serves, the memory hog is killed).
#[cfg(test)]
pub use cgroups::POD_MEM;
#[cfg(test)]
pub use container::PING_SCRIPT;
#[cfg(test)]
pub use fixture::web_pod;
#[cfg(test)]
pub use probe::{DOC_ROOT, INSTANCE_MARKER, PORT_CLOSED};

/// Runs `check` unless the lab or backend cannot carry it (then the check is a skip with the reason).
async fn gated(skip: Option<&str>, check: impl std::future::Future<Output = CheckOutcome>) -> CheckOutcome {
    match skip {
        Some(why) => Err(CheckError::Skip(why.to_string())),
        None => check.await,
    }
}

/// Why the cross-node checks cannot run on this lab and backend, if they cannot.
fn skip_cross(backend: Backend, f: &Fixture) -> Option<String> {
    if f.b1.is_none() {
        Some("the lab has a single node".into())
    } else if backend == Backend::None {
        Some("backend none routes no pod traffic between nodes".into())
    } else {
        None
    }
}

/// One backend: switch, set up pods, run every check, clean up. `once` adds the backend-independent checks.
pub async fn run_backend<C: Cluster>(c: &C, r: &mut Runner, backend: Backend, once: bool, declared: &[DeclaredTest]) {
    let b = Some(backend);
    let switched =
        r.run_setup("setup", b, "apply NodeSpec to every node and converge", switch_backend(c, backend)).await;
    if switched != CheckStatus::Pass {
        return;
    }
    remove_leftovers(c).await;
    let created = RefCell::new(Vec::new());
    let mut fixture = None;
    r.run_setup("setup", b, "test pods running and serving", async {
        let f = setup(c, &created).await?;
        let names =
            f.pods().into_iter().map(|p| format!("{}@{} {}", p.name, p.node, p.ip)).collect::<Vec<_>>().join(", ");
        fixture = Some(f);
        Ok(names)
    })
    .await;
    if let Some(f) = &fixture {
        checks(c, r, backend, once, f, &created).await;
        run_declared(c, r, backend, declared).await;
    }
    r.run_setup("setup", b, "test pods removed", cleanup_checked(c, &created)).await;
}

/// Every check group of one backend, in report order. `once` adds the backend-independent groups.
async fn checks<C: Cluster>(c: &C, r: &mut Runner, backend: Backend, once: bool, f: &Fixture, created: &CreatedPods) {
    let skip = skip_cross(backend, f);
    let skip = skip.as_deref();
    pod_network::run(c, r, backend, f, skip).await;
    mtu::run(c, r, backend, f, skip).await;
    overlay::run(c, r, backend, f, skip).await;
    if c.follows_api_networking() {
        service::run(c, r, backend, skip).await;
        network_policy::run(c, r, backend, skip).await;
    }
    if once {
        sandbox::run(c, r, f).await;
        control_plane::run(c, r).await;
        controller::run(c, r).await;
        container::run(c, r, created).await;
        probe::run(c, r, created).await;
        // Last: its CPU pod spins at its quota until the test pods are removed, which the groups after it
        // would share the node with (a 1-vCPU TCG guest).
        cgroups::run(c, r, f, created).await;
    }
}
