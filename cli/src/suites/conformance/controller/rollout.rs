//! Rollouts: the limits a rolling update keeps, a broken version stopping at its deadline, undo, history
//! and pause, each on a Deployment of its own.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::Client;

use super::super::super::cluster::Cluster;
use super::super::super::harness::{evidence, nexec};
use super::super::super::probe;
use super::super::super::runner::{CheckError, CheckOutcome};
use super::{api_err, create, deployment, pods, wait, NAMESPACE};

/// A command no node has: a container running it never starts.
pub(in crate::suites) const NEVER_STARTS: &str = "/nonexistent/testbed-never-starts";

/// The `VERSION` env var of a pod's first container.
fn version_of(p: &Pod) -> Option<String> {
    let c = p.spec.as_ref()?.containers.first()?;
    c.env.iter().flatten().find(|e| e.name == "VERSION").and_then(|e| e.value.clone())
}

/// Replaces the Deployment's template with `version` (and `command` when given); read again and retried
/// when the controller wrote the object in between (its annotations, its status), as kubectl edit would.
async fn set_version(
    api: &Api<Deployment>,
    name: &str,
    version: &str,
    command: Option<&[&str]>,
) -> Result<(), CheckError> {
    for _ in 0..5 {
        let mut d = api.get(name).await.map_err(api_err("get deployment"))?;
        let container = d
            .spec
            .as_mut()
            .and_then(|s| s.template.spec.as_mut())
            .and_then(|s| s.containers.first_mut())
            .ok_or_else(|| CheckError::Fail(format!("deployment {name} has no container")))?;
        for e in container.env.iter_mut().flatten() {
            if e.name == "VERSION" {
                e.value = Some(version.into());
            }
        }
        if let Some(command) = command {
            container.command = Some(command.iter().map(|s| s.to_string()).collect());
        }
        match api.replace(name, &PostParams::default(), &d).await {
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            other => return other.map(drop).map_err(api_err("replace deployment")),
        }
    }
    Err(CheckError::Fail(format!("deployment {name}: 5 updates in a row lost to concurrent writes")))
}

/// The ReplicaSets of Deployment `name` (by its label).
async fn replica_sets(client: &Client, name: &str) -> Result<Vec<ReplicaSet>, CheckError> {
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), NAMESPACE);
    let list = api.list(&ListParams::default().labels(&format!("app={name}"))).await.map_err(api_err("list rs"))?;
    Ok(list.items)
}

/// Every pod on `version`.
async fn all_on(client: &Client, name: &str, version: &str) -> Result<(), CheckError> {
    let now = pods(client, name).await?;
    let stray: Vec<String> = now
        .iter()
        .filter(|p| version_of(p).as_deref() != Some(version))
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    if stray.is_empty() {
        return Ok(());
    }
    Err(CheckError::Fail(format!("pods not on version {version}: {stray:?}")))
}

pub(super) async fn rolling_bounds(client: &Client) -> CheckOutcome {
    let (replicas, surge, unavailable) = (4, 1, 1);
    let api = create(client, &deployment("rolling", replicas, "1")).await?;
    wait::rolled_out(&api, "rolling", replicas).await?;
    // Sample the pods continuously through the whole rollout: the most that exist (not terminating), the
    // fewest Ready.
    let stop = Arc::new(AtomicBool::new(false));
    let (most, fewest) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(usize::MAX)));
    let sampler = {
        let (client, stop, most, fewest) = (client.clone(), stop.clone(), most.clone(), fewest.clone());
        tokio::spawn(async move {
            let mut samples = 0usize;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(now) = pods(&client, "rolling").await {
                    // Terminating pods are no longer the Deployment's (Kubernetes counts neither them
                    // against maxSurge nor as available): their replacements start at once.
                    let counted = now.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).count();
                    most.fetch_max(counted, Ordering::Relaxed);
                    fewest.fetch_min(now.iter().filter(|p| wait::is_ready(p)).count(), Ordering::Relaxed);
                    samples += 1;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            samples
        })
    };
    set_version(&api, "rolling", "2", None).await?;
    let rolled = wait::rolled_out(&api, "rolling", replicas).await;
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.await.unwrap_or(0);
    let took = rolled?;
    all_on(client, "rolling", "2").await?;
    let old: Vec<String> = replica_sets(client, "rolling")
        .await?
        .iter()
        .filter(|rs| rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1) > 0)
        .filter(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .and_then(|t| t.spec.as_ref())
                .and_then(|s| s.containers.first())
                .and_then(|c| c.env.as_ref())
                .is_some_and(|e| e.iter().any(|v| v.value.as_deref() == Some("1")))
        })
        .filter_map(|rs| rs.metadata.name.clone())
        .collect();
    let (most, fewest) = (most.load(Ordering::Relaxed), fewest.load(Ordering::Relaxed));
    let _ = api.delete("rolling", &DeleteParams::default()).await;
    let bounds = format!(
        "pods at most {most} (bound {}), Ready at least {fewest} (bound {})",
        replicas + surge,
        replicas - unavailable
    );
    if most > (replicas + surge) as usize || fewest < (replicas - unavailable) as usize {
        return Err(CheckError::Fail(format!("{bounds}, over {samples} samples")));
    }
    if !old.is_empty() {
        return Err(CheckError::Fail(format!("old ReplicaSets still want pods: {old:?}")));
    }
    Ok(format!("rolled out in {took:.1} s; {bounds}, over {samples} samples"))
}

/// Serves `v<VERSION>` over HTTP on [`SERVE_PORT`], from a directory of the pod's own (containers without an
/// image share the node's files).
fn version_server() -> Vec<String> {
    let script = format!(
        "d=/tmp/tb-ctl-$(hostname); mkdir -p $d && echo v$VERSION > $d/index.html && \
         exec busybox httpd -f -p {SERVE_PORT} -h $d"
    );
    vec!["sh".into(), "-c".into(), script]
}

const SERVE_PORT: u16 = 8080;

pub(super) async fn stuck<C: Cluster>(c: &C, client: &Client) -> CheckOutcome {
    let mut d = deployment("stuck", 2, "1");
    if let Some(spec) = d.spec.as_mut() {
        // A node agent reports a container Running (so Ready) from its launcher's start until the exec of a
        // missing program fails, a moment later: minReadySeconds keeps such a flicker from counting as
        // available, which a kubelet never reports in the first place (docs/architecture.md).
        spec.min_ready_seconds = Some(if cfg!(test) { 1 } else { 5 });
        if let Some(container) = spec.template.spec.as_mut().and_then(|s| s.containers.first_mut()) {
            container.command = Some(version_server());
        }
    }
    let api = create(client, &d).await?;
    let service = serving_service(client, "stuck", SERVE_PORT).await?;
    wait::rolled_out(&api, "stuck", 2).await?;
    // A short deadline for the broken rollout only: the first one may take longer on a loaded host, and the
    // check waits the deadline out.
    let deadline = serde_json::json!({"spec": {"progressDeadlineSeconds": if cfg!(test) { 3 } else { 10 }}});
    api.patch("stuck", &PatchParams::default(), &Patch::Merge(&deadline)).await.map_err(api_err("patch deployment"))?;
    // A program that does not exist never starts, so its pods are never Ready (Kubernetes' e2e test uses an
    // image that cannot be pulled). `false` would not do: it runs for a moment, which counts as Ready.
    set_version(&api, "stuck", "2", Some(&[NEVER_STARTS])).await?;
    let reason = wait::until("Progressing=False with ProgressDeadlineExceeded", wait::LONG, || async {
        let d = api.get("stuck").await.map_err(api_err("get deployment"))?;
        let conditions = d.status.and_then(|s| s.conditions).unwrap_or_default();
        let progressing = conditions.iter().find(|c| c.type_ == "Progressing");
        Ok(progressing.filter(|c| c.status == "False").and_then(|c| c.reason.clone()))
    })
    .await?;
    let serving: Vec<Pod> = pods(client, "stuck")
        .await?
        .into_iter()
        .filter(|p| version_of(p).as_deref() == Some("1") && wait::is_ready(p))
        .collect();
    let answers = through_service(c, service).await;
    let _ = api.delete("stuck", &DeleteParams::default()).await;
    let _ = Api::<Service>::namespaced(client.clone(), NAMESPACE).delete("stuck", &DeleteParams::default()).await;
    if reason != "ProgressDeadlineExceeded" {
        return Err(CheckError::Fail(format!("Progressing=False with reason {reason}")));
    }
    // maxUnavailable 1 of 2: one old pod at least keeps serving.
    if serving.is_empty() {
        return Err(CheckError::Fail(
            "no pod of the old version is Ready: the broken rollout took them all down".into(),
        ));
    }
    Ok(format!("stopped with {reason}; {} old pod(s) still Ready; {}", serving.len(), answers?))
}

/// A ClusterIP Service `name` on port 80 in front of the Deployment's pods; its address.
async fn serving_service(client: &Client, name: &str, target: u16) -> Result<Ipv4Addr, CheckError> {
    let api: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let _ = api.delete(name, &DeleteParams::default()).await;
    let spec = ServiceSpec {
        selector: Some(BTreeMap::from([("app".to_string(), name.to_string())])),
        ports: Some(vec![ServicePort {
            port: 80,
            target_port: Some(IntOrString::Int(target.into())),
            ..Default::default()
        }]),
        ..Default::default()
    };
    let svc = Service {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        spec: Some(spec),
        ..Default::default()
    };
    let made = api.create(&PostParams::default(), &svc).await.map_err(api_err("create service"))?;
    let ip = made.spec.and_then(|s| s.cluster_ip);
    ip.as_deref()
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| CheckError::Fail(format!("Service {name} got no IPv4 clusterIP: {ip:?}")))
}

/// Ten requests from the first node to the Service, each answered by an old pod (`v1`). Where the nodes
/// run no service proxy (the unit tests' fake) the Service part is left out, and said so.
async fn through_service<C: Cluster>(c: &C, ip: Ipv4Addr) -> Result<String, CheckError> {
    if !c.follows_api_networking() {
        return Ok("no service proxy on these nodes: not asked through the Service".into());
    }
    let node = c.plan().nodes.first().map(|n| n.name.clone()).unwrap_or_default();
    let cmd = probe::node_gets(ip, 80, "/", 10);
    let r = nexec(c, &node, &cmd).await?;
    let answers: Vec<&str> = r.stdout.lines().map(str::trim).collect();
    if answers.len() != 10 || answers.iter().any(|a| *a != "v1") {
        return Err(CheckError::Fail(format!(
            "through Service {ip}:80 from {node}, not every request was answered by an old pod\n{}",
            evidence(&cmd, &r)
        )));
    }
    Ok(format!("10 requests through Service {ip}:80 from {node} answered by the old version"))
}

pub(super) async fn undo(client: &Client) -> CheckOutcome {
    let api = create(client, &deployment("undo", 2, "1")).await?;
    wait::rolled_out(&api, "undo", 2).await?;
    set_version(&api, "undo", "2", None).await?;
    wait::rolled_out(&api, "undo", 2).await?;
    // What `kubectl rollout undo` sends: the previous ReplicaSet's template, as a JSON patch.
    let sets = replica_sets(client, "undo").await?;
    let previous = sets
        .iter()
        .find(|rs| rs.spec.as_ref().and_then(|s| s.replicas) == Some(0))
        .ok_or_else(|| CheckError::Fail(format!("no old ReplicaSet among {}", sets.len())))?;
    let mut template = previous.spec.as_ref().and_then(|s| s.template.clone()).unwrap_or_default();
    if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove("pod-template-hash");
    }
    let patch = serde_json::json!([{"op": "replace", "path": "/spec/template", "value": template}]);
    let request = http::Request::patch(format!("/apis/apps/v1/namespaces/{NAMESPACE}/deployments/undo"))
        .header(http::header::CONTENT_TYPE, "application/json-patch+json")
        .body(patch.to_string().into_bytes())
        .map_err(|e| CheckError::Infra(e.to_string()))?;
    client.request::<Deployment>(request).await.map_err(api_err("json patch deployment"))?;
    let took = wait::rolled_out(&api, "undo", 2).await?;
    all_on(client, "undo", "1").await?;
    let _ = api.delete("undo", &DeleteParams::default()).await;
    Ok(format!("back on version 1 in {took:.1} s"))
}

pub(super) async fn history_limit(client: &Client) -> CheckOutcome {
    let mut d = deployment("history", 1, "1");
    if let Some(spec) = d.spec.as_mut() {
        spec.revision_history_limit = Some(1);
    }
    let api = create(client, &d).await?;
    wait::rolled_out(&api, "history", 1).await?;
    for version in ["2", "3"] {
        set_version(&api, "history", version, None).await?;
        wait::rolled_out(&api, "history", 1).await?;
    }
    let kept = wait::until("the oldest ReplicaSet is removed", wait::SHORT, || async {
        let n = replica_sets(client, "history").await?.len();
        Ok((n == 2).then_some(n))
    })
    .await;
    let _ = api.delete("history", &DeleteParams::default()).await;
    kept.map(|n| format!("3 revisions, {n} ReplicaSets kept (current + revisionHistoryLimit 1)"))
}

pub(super) async fn pause_resume(client: &Client) -> CheckOutcome {
    let api = create(client, &deployment("pause", 2, "1")).await?;
    wait::rolled_out(&api, "pause", 2).await?;
    let paused = |p: bool| serde_json::json!({"spec": {"paused": p}});
    api.patch("pause", &PatchParams::default(), &Patch::Merge(&paused(true))).await.map_err(api_err("pause"))?;
    set_version(&api, "pause", "2", None).await?;
    set_version(&api, "pause", "3", None).await?;
    tokio::time::sleep(wait::SHORT / 10).await;
    let while_paused = replica_sets(client, "pause").await?.len();
    api.patch("pause", &PatchParams::default(), &Patch::Merge(&paused(false))).await.map_err(api_err("resume"))?;
    let took = wait::rolled_out(&api, "pause", 2).await?;
    all_on(client, "pause", "3").await?;
    let after = replica_sets(client, "pause").await?.len();
    let _ = api.delete("pause", &DeleteParams::default()).await;
    if while_paused != 1 || after != 2 {
        return Err(CheckError::Fail(format!(
            "ReplicaSets: {while_paused} while paused (want 1), {after} after resume (want 2: one rollout)"
        )));
    }
    Ok(format!("two changes while paused, one new ReplicaSet on resume, rolled out in {took:.1} s"))
}
