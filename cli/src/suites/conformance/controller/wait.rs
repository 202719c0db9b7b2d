//! Waiting on the controllers: poll until a condition holds or a deadline passes, and the conditions the
//! checks share (a rollout finished, a pod Ready).

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;

pub(super) use super::super::super::poll::until;
use super::super::super::runner::CheckError;
pub(super) use super::super::control_plane::is_ready;
use super::api_err;

/// For what the controllers do alone (a count to match, an object to go).
pub(super) const SHORT: Duration = Duration::from_secs(if cfg!(test) { 10 } else { 30 });
/// For what also needs the kubelets to start pods (several per node on 1-vCPU TCG guests).
pub(super) const LONG: Duration = Duration::from_secs(if cfg!(test) { 20 } else { 120 });

/// Whether the Deployment's status says its rollout to `replicas` is done, as `kubectl rollout status`
/// reads it: the controller saw the current generation, and every replica is updated and available.
pub(super) fn is_rolled_out(d: &Deployment, replicas: i32) -> bool {
    let s = d.status.clone().unwrap_or_default();
    d.metadata.generation.unwrap_or(0) <= s.observed_generation.unwrap_or(0)
        && s.updated_replicas.unwrap_or(0) == replicas
        && s.replicas.unwrap_or(0) == replicas
        && s.available_replicas.unwrap_or(0) == replicas
}

/// Waits for the rollout of `name` to `replicas`; the seconds it took.
pub(super) async fn rolled_out(api: &Api<Deployment>, name: &str, replicas: i32) -> Result<f64, CheckError> {
    let started = Instant::now();
    let what = format!("deployment {name} rolled out to {replicas} available replicas");
    let last = std::sync::Mutex::new(String::new());
    let result = until(&what, LONG, || async {
        let d = api.get(name).await.map_err(api_err("get deployment"))?;
        if let Ok(mut l) = last.lock() {
            *l = format!("{:?}", d.status.clone().unwrap_or_default());
        }
        Ok(is_rolled_out(&d, replicas).then_some(()))
    })
    .await;
    match result {
        Ok(()) => Ok(started.elapsed().as_secs_f64()),
        Err(CheckError::Fail(m)) => {
            Err(CheckError::Fail(format!("{m}; last status {}", last.lock().map(|l| l.clone()).unwrap_or_default())))
        }
        Err(e) => Err(e),
    }
}
