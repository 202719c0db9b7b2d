//! `rollout status`: kubectl's reading of a Deployment's status (`DeploymentStatusViewer`), printed each
//! time it changes, until the rollout is done or has failed its progress deadline.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;

use crate::ui::Ui;

use super::super::ClusterError;

/// Where a rollout stands.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Progress {
    /// Still going: what kubectl prints while it waits.
    Waiting(String),
    /// Every replica is on the current template and available.
    Done(String),
    /// Progressing=False with ProgressDeadlineExceeded.
    Failed(String),
}

/// kubectl's rules, in its order: the controller must have seen the current generation; then updated,
/// old-pending-termination and available counts.
pub(super) fn progress(d: &Deployment) -> Progress {
    let name = d.metadata.name.as_deref().unwrap_or_default();
    let status = d.status.clone().unwrap_or_default();
    if d.metadata.generation.unwrap_or(0) > status.observed_generation.unwrap_or(0) {
        return Progress::Waiting("Waiting for deployment spec update to be observed...".into());
    }
    let timed_out = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded"));
    if timed_out {
        return Progress::Failed(format!("deployment \"{name}\" exceeded its progress deadline"));
    }
    let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let replicas = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let waiting =
        |what: String| Progress::Waiting(format!("Waiting for deployment \"{name}\" rollout to finish: {what}"));
    if updated < wanted {
        return waiting(format!("{updated} out of {wanted} new replicas have been updated..."));
    }
    if replicas > updated {
        return waiting(format!("{} old replicas are pending termination...", replicas - updated));
    }
    if available < updated {
        return waiting(format!("{available} of {updated} updated replicas are available..."));
    }
    Progress::Done(format!("deployment \"{name}\" successfully rolled out"))
}

/// Polls the Deployment until `progress` says done (exit 0) or failed, or `timeout_secs` pass (exit 1).
pub(super) async fn wait(
    ui: &Ui,
    api: &Api<Deployment>,
    name: &str,
    timeout_secs: u64,
    watch: bool,
) -> Result<(), ClusterError> {
    let what = format!("deployment.apps/{name}");
    let deadline = (timeout_secs > 0).then(|| Instant::now() + Duration::from_secs(timeout_secs));
    let mut last = String::new();
    loop {
        let d = api.get(name).await.map_err(|e| ClusterError::from_kube(&what, e))?;
        let now = progress(&d);
        let (text, finished) = match &now {
            Progress::Waiting(t) => (t, false),
            Progress::Done(t) | Progress::Failed(t) => (t, true),
        };
        if *text != last && !ui.is_json() {
            println!("{text}");
            last = text.clone();
        }
        if finished || !watch {
            if ui.is_json() {
                let state = match &now {
                    Progress::Waiting(_) => "waiting",
                    Progress::Done(_) => "done",
                    Progress::Failed(_) => "failed",
                };
                println!("{}", serde_json::json!({"deployment": name, "state": state, "message": text}));
            }
            return match now {
                Progress::Failed(t) => Err(ClusterError::RolloutFailed(t)),
                _ => Ok(()),
            };
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(ClusterError::RolloutFailed(format!(
                "{what}: timed out waiting for the rollout after {timeout_secs} s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(generation: i64, status: serde_json::Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "generation": generation},
            "spec": {"replicas": 3, "selector": {}, "template": {}},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn reads_the_status_as_kubectl_does() {
        let at = |g, s| progress(&deployment(g, s));
        assert_eq!(
            at(2, json!({"observedGeneration": 1})),
            Progress::Waiting("Waiting for deployment spec update to be observed...".into())
        );
        let msg = |m: &str| Progress::Waiting(format!("Waiting for deployment \"web\" rollout to finish: {m}"));
        assert_eq!(
            at(2, json!({"observedGeneration": 2, "updatedReplicas": 1, "replicas": 4})),
            msg("1 out of 3 new replicas have been updated...")
        );
        assert_eq!(
            at(2, json!({"observedGeneration": 2, "updatedReplicas": 3, "replicas": 4})),
            msg("1 old replicas are pending termination...")
        );
        assert_eq!(
            at(2, json!({"observedGeneration": 2, "updatedReplicas": 3, "replicas": 3, "availableReplicas": 2})),
            msg("2 of 3 updated replicas are available...")
        );
        assert_eq!(
            at(2, json!({"observedGeneration": 2, "updatedReplicas": 3, "replicas": 3, "availableReplicas": 3})),
            Progress::Done("deployment \"web\" successfully rolled out".into())
        );
        let stuck = json!({"observedGeneration": 2, "updatedReplicas": 1, "conditions": [
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]});
        assert_eq!(at(2, stuck), Progress::Failed("deployment \"web\" exceeded its progress deadline".into()));
    }
}
