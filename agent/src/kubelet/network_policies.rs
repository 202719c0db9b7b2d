//! The node's policy enforcer follows the API: every NetworkPolicy, every Pod of the cluster (a second
//! list/watch beside the follow loop's node-selected one: peers are pods anywhere) and every Namespace (their
//! labels pick peers), listed and watched, become this node's spec (`policy_spec.rs`), applied when it
//! changes. As the services follower: changes gathered for [`GATHER`] are one apply; a failed watch lists
//! afresh a second later, and the kernel keeps its rules meanwhile.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use testbed_api::objects::{Namespace, NetworkPolicy, Pod};
use testbed_control_plane::client::{list_watch, paths, Client, ClientError};
use testbed_control_plane::resources::Kind;

use super::policy_spec;
use super::services::Known;
use crate::policy::Enforcer;

/// How long changes are gathered before one apply.
const GATHER: Duration = Duration::from_millis(50);
/// Pause before a new session after a failed one.
const RETRY: Duration = Duration::from_secs(1);

/// Follows the API's NetworkPolicies for good.
pub async fn run(api: Arc<Client>, node: String, enforcer: Arc<Enforcer>) {
    loop {
        if let Err(e) = session(&api, &node, &enforcer).await {
            tracing::warn!(error = %e, "network policy: a NetworkPolicy/Pod/Namespace watch failed; listing again");
        }
        tokio::time::sleep(RETRY).await;
    }
}

fn ended(what: &str) -> ClientError {
    ClientError::Unreachable(format!("the {what} watch ended"))
}

async fn session(api: &Arc<Client>, node: &str, enforcer: &Arc<Enforcer>) -> Result<(), ClientError> {
    let mut policies = list_watch::<NetworkPolicy>(api.clone(), &paths::collection(Kind::NetworkPolicy, None), &[]);
    let mut pods = list_watch::<Pod>(api.clone(), &paths::collection(Kind::Pod, None), &[]);
    let mut namespaces = list_watch::<Namespace>(api.clone(), &paths::collection(Kind::Namespace, None), &[]);
    let (mut known_policies, mut known_pods, mut known_namespaces) = (Known::new(), Known::new(), Known::new());
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
            change = policies.next() => {
                known_policies.apply(change.unwrap_or_else(|| Err(ended("NetworkPolicy")))?);
                due.get_or_insert_with(|| tokio::time::Instant::now() + GATHER);
            }
            change = pods.next() => {
                known_pods.apply(change.unwrap_or_else(|| Err(ended("Pod")))?);
                due.get_or_insert_with(|| tokio::time::Instant::now() + GATHER);
            }
            change = namespaces.next() => {
                known_namespaces.apply(change.unwrap_or_else(|| Err(ended("Namespace")))?);
                due.get_or_insert_with(|| tokio::time::Instant::now() + GATHER);
            }
            _ = gather => {
                due = None;
                if !(known_policies.listed && known_pods.listed && known_namespaces.listed) {
                    continue;
                }
                let policies = known_policies.all();
                let spec = policy_spec::build(&policies, &known_pods.all(), &known_namespaces.all(), node);
                let sources = versions(&policies);
                if applied.as_ref() == Some(&spec) {
                    enforcer.still_built_from(sources);
                    continue;
                }
                let (e, s) = (enforcer.clone(), spec.clone());
                // The nft work blocks; a task of its own also finishes when the session is stopped.
                match tokio::task::spawn_blocking(move || e.apply_built_from(s, sources)).await {
                    Ok(Ok(_)) => {
                        tracing::info!(pods = spec.pods.len(), "network policy follows the API");
                        applied = Some(spec);
                    }
                    // Kept as the target by the enforcer: its reconcile retries the kernel.
                    Ok(Err(e)) => tracing::warn!(error = %e, "network policy: applying the API's policies failed"),
                    Err(e) => tracing::warn!(error = %e, "network policy: the apply task failed"),
                }
            }
        }
    }
}

/// `namespace/name` -> resourceVersion of each policy: what the enforcer's status says its table is built from.
fn versions(policies: &[NetworkPolicy]) -> BTreeMap<String, String> {
    policies
        .iter()
        .map(|p| {
            let m = &p.metadata;
            let key = format!("{}/{}", m.namespace.as_deref().unwrap_or_default(), m.name);
            (key, m.resource_version.clone().unwrap_or_default())
        })
        .collect()
}
