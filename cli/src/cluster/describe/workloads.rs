//! The sections of ReplicaSets and Deployments, in kubectl's layout: replicas, strategy, the pod template,
//! conditions, and which ReplicaSets (for a Deployment) or pods (for a ReplicaSet) they have now.

use std::fmt::Write;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{field, map};

use super::super::rollout::REVISION;

pub(super) fn deployment(out: &mut String, d: &Deployment, replica_sets: &[ReplicaSet]) {
    let spec = d.spec.clone().unwrap_or_default();
    let status = d.status.clone().unwrap_or_default();
    field(out, "Selector", &selector(&spec.selector));
    let unavailable = status.unavailable_replicas.unwrap_or(0);
    let replicas = format!(
        "{} desired | {} updated | {} total | {} available | {unavailable} unavailable",
        spec.replicas.unwrap_or(1),
        status.updated_replicas.unwrap_or(0),
        status.replicas.unwrap_or(0),
        status.available_replicas.unwrap_or(0),
    );
    field(out, "Replicas", &replicas);
    let strategy = spec.strategy.clone().unwrap_or_default();
    let kind = strategy.type_.clone().unwrap_or_else(|| "RollingUpdate".into());
    field(out, "StrategyType", &kind);
    field(out, "MinReadySeconds", &spec.min_ready_seconds.unwrap_or(0).to_string());
    if kind == "RollingUpdate" {
        let ru = strategy.rolling_update.unwrap_or_default();
        let text = |v: Option<IntOrString>| match v {
            Some(IntOrString::Int(n)) => n.to_string(),
            Some(IntOrString::String(s)) => s,
            None => "25%".into(),
        };
        let limits = format!("{} max unavailable, {} max surge", text(ru.max_unavailable), text(ru.max_surge));
        field(out, "RollingUpdateStrategy", &limits);
    }
    if spec.paused == Some(true) {
        field(out, "Paused", "true");
    }
    template(out, &spec.template);
    conditions(out, status.conditions.iter().flatten().map(|c| (&c.type_, &c.status, c.reason.as_deref())));
    let revision = |rs: &ReplicaSet| rs.metadata.annotations.as_ref().and_then(|a| a.get(REVISION)).cloned();
    let current = d.metadata.annotations.as_ref().and_then(|a| a.get(REVISION)).cloned();
    let summary = |rs: &ReplicaSet| {
        let name = rs.metadata.name.clone().unwrap_or_default();
        let have = rs.status.as_ref().map_or(0, |s| s.replicas);
        let want = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        format!("{name} ({have}/{want} replicas created)")
    };
    let (new, old): (Vec<&ReplicaSet>, Vec<&ReplicaSet>) =
        replica_sets.iter().partition(|rs| current.is_some() && revision(rs) == current);
    let old: Vec<String> =
        old.into_iter().filter(|rs| rs.status.as_ref().is_some_and(|s| s.replicas > 0)).map(summary).collect();
    field(out, "OldReplicaSets", &old.join(", "));
    field(out, "NewReplicaSet", &new.first().map(|rs| summary(rs)).unwrap_or_default());
}

pub(super) fn replica_set(out: &mut String, rs: &ReplicaSet, pods: &[Pod]) {
    let spec = rs.spec.clone().unwrap_or_default();
    let status = rs.status.clone().unwrap_or_default();
    field(out, "Selector", &selector(&spec.selector));
    field(out, "Replicas", &format!("{} current / {} desired", status.replicas, spec.replicas.unwrap_or(1)));
    let phase = |p: &Pod| p.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_else(|| "Pending".into());
    let count = |want: &str| pods.iter().filter(|p| phase(p) == want).count();
    let counts = format!(
        "{} Running / {} Waiting / {} Succeeded / {} Failed",
        count("Running"),
        count("Pending"),
        count("Succeeded"),
        count("Failed")
    );
    field(out, "Pods Status", &counts);
    if let Some(t) = &spec.template {
        template(out, t);
    }
    conditions(out, status.conditions.iter().flatten().map(|c| (&c.type_, &c.status, c.reason.as_deref())));
}

/// `app=web,tier in (a,b)`, as kubectl prints a selector.
fn selector(s: &LabelSelector) -> String {
    let mut parts: Vec<String> = s.match_labels.iter().flatten().map(|(k, v)| format!("{k}={v}")).collect();
    for r in s.match_expressions.iter().flatten() {
        let values = r.values.clone().unwrap_or_default().join(",");
        parts.push(match r.operator.as_str() {
            "In" => format!("{} in ({values})", r.key),
            "NotIn" => format!("{} notin ({values})", r.key),
            "Exists" => r.key.clone(),
            _ => format!("!{}", r.key),
        });
    }
    parts.join(",")
}

fn template(out: &mut String, t: &PodTemplateSpec) {
    out.push_str("Pod Template:\n");
    let labels = t.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
    let mut labels_text = String::new();
    map(&mut labels_text, "  Labels", labels.iter());
    out.push_str(&labels_text);
    out.push_str("  Containers:\n");
    for c in t.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default() {
        let _ = writeln!(out, "   {}:", c.name);
        let _ = writeln!(out, "    Image:      {}", c.image.as_deref().unwrap_or("<none>"));
        let command: Vec<String> = c.command.iter().chain(c.args.iter()).flatten().cloned().collect();
        let _ = writeln!(out, "    Command:    {}", command.join(" "));
        if let Some(r) = &c.resources {
            let amounts = |m: &Option<
                std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
            >| {
                m.iter().flatten().map(|(k, v)| format!("{k}: {}", v.0)).collect::<Vec<_>>().join(", ")
            };
            let _ = writeln!(out, "    Requests:   {}", amounts(&r.requests));
            let _ = writeln!(out, "    Limits:     {}", amounts(&r.limits));
        }
    }
}

fn conditions<'a>(out: &mut String, rows: impl Iterator<Item = (&'a String, &'a String, Option<&'a str>)>) {
    let rows: Vec<Vec<String>> =
        rows.map(|(t, s, r)| vec![t.clone(), s.clone(), r.unwrap_or_default().to_string()]).collect();
    if rows.is_empty() {
        return;
    }
    out.push_str("Conditions:\n");
    let header = ["Type", "Status", "Reason"];
    let mut all = vec![header.iter().map(|h| "-".repeat(h.len())).collect::<Vec<_>>()];
    all.extend(rows);
    for line in super::super::table::render(&header, &all).lines() {
        let _ = writeln!(out, "  {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_deployment_reads_as_kubectl_describes_it() {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web", "annotations": {REVISION: "2"}},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                     "strategy": {"rollingUpdate": {"maxSurge": 1}},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "srv", "command": ["sleep", "1d"]}]}}},
            "status": {"replicas": 4, "updatedReplicas": 2, "availableReplicas": 3, "unavailableReplicas": 1,
                       "conditions": [{"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}]}
        }))
        .unwrap();
        let rs = |name: &str, rev: &str, have: i32| -> ReplicaSet {
            serde_json::from_value(json!({"metadata": {"name": name, "annotations": {REVISION: rev}},
                "spec": {"replicas": have, "selector": {}}, "status": {"replicas": have}}))
            .unwrap()
        };
        let mut out = String::new();
        deployment(&mut out, &d, &[rs("web-old", "1", 2), rs("web-new", "2", 2)]);
        for want in [
            "Selector:          app=web",
            "Replicas:          3 desired | 2 updated | 4 total | 3 available | 1 unavailable",
            "RollingUpdateStrategy: 25% max unavailable, 1 max surge",
            "OldReplicaSets:    web-old (2/2 replicas created)",
            "NewReplicaSet:     web-new (2/2 replicas created)",
        ] {
            assert!(out.contains(want), "missing {want:?} in\n{out}");
        }
        let condition = out.lines().find(|l| l.trim_start().starts_with("Progressing")).expect(&out);
        assert_eq!(condition.split_whitespace().collect::<Vec<_>>(), ["Progressing", "True", "ReplicaSetUpdated"]);
    }
}
