//! `rollout history` and `rollout undo`: a Deployment's revisions are its ReplicaSets, numbered by the
//! controller's revision annotation; going back replaces the Deployment's template with an old
//! ReplicaSet's, with the JSON patch kubectl sends, and the controller makes that ReplicaSet current again.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::api::Api;
use serde_json::json;

use crate::ui::Ui;

use super::super::ClusterError;
use super::{revision_of, REVISION};

/// The label the controller adds to tell its ReplicaSets' pods apart; not part of the user's template.
const HASH_LABEL: &str = "pod-template-hash";
/// The annotation kubectl shows as CHANGE-CAUSE.
const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";
/// Annotations the controller owns on each object: an undo keeps the Deployment's own and does not copy
/// the ReplicaSet's (kubectl's `annotationsToSkip`).
const CONTROLLER_ANNOTATIONS: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
    "deprecated.deployment.rollback.to",
];

pub(super) fn print(
    ui: &Ui,
    name: &str,
    replica_sets: &[ReplicaSet],
    revision: Option<i64>,
) -> Result<(), ClusterError> {
    let mut revisions: Vec<(i64, &ReplicaSet)> =
        replica_sets.iter().map(|rs| (revision_of(rs), rs)).filter(|(r, _)| *r > 0).collect();
    revisions.sort_by_key(|(r, _)| *r);
    if let Some(wanted) = revision {
        let (_, rs) = revisions
            .iter()
            .find(|(r, _)| *r == wanted)
            .ok_or_else(|| ClusterError::Document(format!("unable to find the specified revision {wanted}")))?;
        let template = rs.spec.as_ref().and_then(|s| s.template.clone()).unwrap_or_default();
        let text = if ui.is_json() {
            serde_json::to_string_pretty(&template).unwrap_or_default()
        } else {
            serde_yaml::to_string(&template).unwrap_or_default()
        };
        println!("deployment.apps/{name} with revision #{wanted}\n{text}");
        return Ok(());
    }
    let rows: Vec<(i64, String)> = revisions
        .iter()
        .map(|(r, rs)| {
            let cause = rs.metadata.annotations.as_ref().and_then(|a| a.get(CHANGE_CAUSE)).cloned();
            (*r, cause.unwrap_or_else(|| "<none>".into()))
        })
        .collect();
    if ui.is_json() {
        let rows: Vec<_> = rows.iter().map(|(r, c)| json!({"revision": r, "changeCause": c})).collect();
        println!("{}", json!({"deployment": name, "revisions": rows}));
        return Ok(());
    }
    println!("deployment.apps/{name}");
    let header = ["REVISION", "CHANGE-CAUSE"];
    let cells: Vec<Vec<String>> = rows.into_iter().map(|(r, c)| vec![r.to_string(), c]).collect();
    print!("{}", crate::cluster::table::render(&header, &cells));
    Ok(())
}

pub(super) async fn undo(
    client: &kube::Client,
    api: &Api<Deployment>,
    name: &str,
    replica_sets: &[ReplicaSet],
    to_revision: i64,
) -> Result<(), ClusterError> {
    let what = format!("deployment.apps/{name}");
    let deployment = api.get(name).await.map_err(|e| ClusterError::from_kube(&what, e))?;
    if deployment.spec.as_ref().and_then(|s| s.paused).unwrap_or(false) {
        return Err(ClusterError::Document(format!(
            "{what}: you cannot rollback a paused deployment; resume it first with `testbed rollout resume` and try again"
        )));
    }
    let target = revision_to_restore(replica_sets, to_revision)?;
    let mut template = target.spec.as_ref().and_then(|s| s.template.clone()).unwrap_or_default();
    let current = deployment.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
    if without_hash(&template) == without_hash(&current) {
        println!("{what} skipped rollback (current template already matches revision {})", revision_of(target));
        return Ok(());
    }
    template = without_hash(&template);
    let annotations = restored_annotations(&deployment, target);
    let patch = json!([
        {"op": "replace", "path": "/spec/template", "value": template},
        {"op": "replace", "path": "/metadata/annotations", "value": annotations},
    ]);
    // The JSON patch kubectl sends: kube-rs would need its `jsonpatch` feature (another crate) for one call.
    let namespace = deployment.metadata.namespace.as_deref().unwrap_or("default");
    let request = http::Request::patch(format!("/apis/apps/v1/namespaces/{namespace}/deployments/{name}"))
        .header(http::header::CONTENT_TYPE, "application/json-patch+json")
        .body(patch.to_string().into_bytes())
        .map_err(|e| ClusterError::Document(format!("{what}: {e}")))?;
    client.request::<Deployment>(request).await.map_err(|e| ClusterError::from_kube(&what, e))?;
    println!("{what} rolled back");
    Ok(())
}

/// The ReplicaSet of `to_revision`, or for 0 the one before the newest, as kubectl picks it.
fn revision_to_restore(replica_sets: &[ReplicaSet], to_revision: i64) -> Result<&ReplicaSet, ClusterError> {
    let mut numbered: Vec<(i64, &ReplicaSet)> =
        replica_sets.iter().map(|rs| (revision_of(rs), rs)).filter(|(r, _)| *r > 0).collect();
    numbered.sort_by_key(|(r, _)| std::cmp::Reverse(*r));
    let found = if to_revision == 0 {
        numbered.get(1).map(|(_, rs)| *rs).ok_or_else(|| ClusterError::Document("no rollout history found".into()))
    } else {
        numbered.iter().find(|(r, _)| *r == to_revision).map(|(_, rs)| *rs).ok_or_else(|| {
            ClusterError::Document(format!("unable to find specified revision {to_revision} in history"))
        })
    };
    found
}

fn without_hash(template: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = template.clone();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(HASH_LABEL);
    }
    t
}

/// The Deployment's controller-owned annotations, plus the ReplicaSet's other ones.
fn restored_annotations(deployment: &Deployment, rs: &ReplicaSet) -> BTreeMap<String, String> {
    let own = deployment.metadata.annotations.clone().unwrap_or_default();
    let mut out: BTreeMap<String, String> =
        own.into_iter().filter(|(k, _)| CONTROLLER_ANNOTATIONS.contains(&k.as_str())).collect();
    for (k, v) in rs.metadata.annotations.clone().unwrap_or_default() {
        if !CONTROLLER_ANNOTATIONS.contains(&k.as_str()) {
            out.insert(k, v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(name: &str, revision: i64, image: &str) -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": {REVISION: revision.to_string(), "team": "a"}},
            "spec": {"selector": {}, "template": {"metadata": {"labels": {"app": "web", HASH_LABEL: name}},
                                                   "spec": {"containers": [{"name": "c", "image": image}]}}}
        }))
        .unwrap()
    }

    #[test]
    fn undo_picks_the_revision_before_the_newest_or_the_one_asked() {
        let sets = [rs("a", 1, "v1"), rs("c", 3, "v3"), rs("b", 2, "v2")];
        assert_eq!(revision_to_restore(&sets, 0).unwrap().metadata.name.as_deref(), Some("b"));
        assert_eq!(revision_to_restore(&sets, 1).unwrap().metadata.name.as_deref(), Some("a"));
        assert!(revision_to_restore(&sets, 7).is_err());
        assert!(revision_to_restore(&sets[..1], 0).is_err());
    }

    #[test]
    fn the_restored_template_loses_the_hash_and_annotations_keep_the_controllers() {
        let old = rs("a", 1, "v1");
        let t = without_hash(old.spec.as_ref().unwrap().template.as_ref().unwrap());
        assert_eq!(t.metadata.unwrap().labels.unwrap().len(), 1);
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web", "annotations": {REVISION: "3", "note": "dropped"}},
            "spec": {"selector": {}, "template": {}}
        }))
        .unwrap();
        let a = restored_annotations(&d, &old);
        assert_eq!(a.get(REVISION).map(String::as_str), Some("3"));
        assert_eq!(a.get("team").map(String::as_str), Some("a"));
        assert!(!a.contains_key("note"));
    }
}
