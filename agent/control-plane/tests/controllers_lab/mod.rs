//! What the controller tests share: a real etcd and API server ([`ApiLab`]), three Ready Node objects whose
//! Leases a fake kubelet renews, the fake kubelet reporting the pods the manager's scheduler binds Running
//! and Ready, each with an IP of its own (the real kubelets are another part), a controller manager in a
//! task, and Deployments to roll out.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use testbed_api::objects::{
    Container, Deployment, DeploymentSpec, DeploymentStrategy, IntOrString, LabelSelector, Node, ObjectMeta, Pod,
    PodSpec, PodTemplateSpec, ReplicaSet, RollingUpdateDeployment,
};
use testbed_control_plane::client::{list_watch, now_rfc3339, paths, Change, Client, WatchEvent};
use testbed_control_plane::controllers::leader::Timing;
use testbed_control_plane::controllers::{manager, Context};
use testbed_control_plane::resources::Kind;
use tokio::sync::oneshot;

use crate::apiserver_lab::ApiLab;

/// The image the fake kubelet never makes Ready: a version that does not start.
pub const BROKEN: &str = "broken";

/// A pod annotation the fake kubelet honours: a pod carrying it stays terminating after a graceful delete
/// (a container taking its whole grace period to stop), so tests can look at it meanwhile.
pub const LINGER: &str = "test.testbed/linger";

/// The nodes pods are bound to.
const NODES: [&str; 3] = ["n1", "n2", "n3"];

/// An API server with nodes, a fake kubelet, and a controller manager.
pub struct Cluster {
    pub lab: ApiLab,
    pub api: Arc<Client>,
    managers: Vec<(String, Option<oneshot::Sender<()>>, tokio::task::JoinHandle<()>)>,
}

impl Cluster {
    /// A lab with one controller manager (`cp1`).
    pub async fn start() -> Self {
        let mut c = Self::without_manager().await;
        c.start_manager("cp1");
        c
    }

    /// A lab with nodes and the fake kubelet but no controller manager.
    pub async fn without_manager() -> Self {
        let lab = ApiLab::start().await;
        let api = lab.client();
        for name in NODES {
            let node = Node {
                api_version: "v1".into(),
                kind: "Node".into(),
                metadata: ObjectMeta { name: name.into(), ..Default::default() },
                ..Default::default()
            };
            api.create(&paths::nodes(), &node).await.expect("node");
            let status = json!({"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now_rfc3339()}],
                                "allocatable": {"cpu": "4", "memory": "8Gi"}});
            api.patch_node_status(name, &status).await.expect("node status");
        }
        tokio::spawn(renew_leases(api.clone()));
        tokio::spawn(fake_kubelet(api.clone()));
        Self { lab, api, managers: Vec::new() }
    }

    /// Starts a controller manager named `identity`.
    pub fn start_manager(&mut self, identity: &str) {
        let (stop, stopped) = oneshot::channel::<()>();
        let ctx = Context::new(self.lab.client(), identity);
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            manager::run(ctx, Timing::default(), shutdown).await;
        });
        self.managers.push((identity.to_string(), Some(stop), task));
    }

    /// Stops the manager `identity` as a SIGTERM would (it gives its Lease up); waits until it is gone.
    pub async fn stop_manager(&mut self, identity: &str) {
        let at = self.managers.iter().position(|(id, _, _)| id == identity).expect("manager");
        let (_, stop, task) = self.managers.remove(at);
        let _ = stop.expect("running").send(());
        task.await.expect("manager task");
    }

    /// Creates `d` in `default`.
    pub async fn create(&self, d: &Deployment) -> Deployment {
        self.api.create(&paths::collection(Kind::Deployment, Some("default")), d).await.expect("create deployment")
    }

    /// Merge-patches the Deployment `name`.
    pub async fn patch(&self, name: &str, patch: serde_json::Value) -> Deployment {
        self.api.merge_patch(&paths::object(Kind::Deployment, "default", name), &patch).await.expect("patch")
    }

    /// The Deployment `name`.
    pub async fn deployment(&self, name: &str) -> Deployment {
        self.api.get(&paths::object(Kind::Deployment, "default", name)).await.expect("get deployment")
    }

    /// The pods of `default`.
    pub async fn pods(&self) -> Vec<Pod> {
        self.api.list(&paths::pods(Some("default")), &[]).await.expect("pods").items
    }

    /// The ReplicaSets of `default`.
    pub async fn replicasets(&self) -> Vec<ReplicaSet> {
        self.api.list(&paths::collection(Kind::ReplicaSet, Some("default")), &[]).await.expect("rs").items
    }

    /// Waits until the Deployment `name` has observed its generation with `replicas` updated and available
    /// pods and nothing else left.
    pub async fn wait_rolled_out(&self, name: &str, replicas: i32, within: Duration) -> Deployment {
        let what = format!("{name} rolled out with {replicas} available");
        wait_for(&what, within, || async {
            let d = self.deployment(name).await;
            let s = d.status.clone().unwrap_or_default();
            let n = |v: Option<i32>| v.unwrap_or(0);
            let done = s.observed_generation >= d.metadata.generation
                && n(s.updated_replicas) == replicas
                && n(s.replicas) == replicas
                && n(s.available_replicas) == replicas
                && self.pods().await.len() == replicas as usize;
            done.then_some(d)
        })
        .await
    }
}

/// Polls `check` every 100 ms until it answers; panics with `what` after `within`.
pub async fn wait_for<T, F, Fut>(what: &str, within: Duration, check: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Deployment `name` of `replicas` pods labelled `app=name`, image `v1`, RollingUpdate with these limits.
pub fn deployment(name: &str, replicas: i32, max_surge: i32, max_unavailable: i32) -> Deployment {
    let labels = std::collections::BTreeMap::from([("app".to_string(), name.to_string())]);
    Deployment {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        metadata: ObjectMeta { name: name.into(), namespace: Some("default".into()), ..Default::default() },
        spec: DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector { match_labels: labels.clone(), ..Default::default() },
            template: PodTemplateSpec {
                metadata: ObjectMeta { labels, ..Default::default() },
                spec: PodSpec {
                    containers: vec![Container {
                        name: "app".into(),
                        image: Some("v1".into()),
                        command: vec!["sleep".into(), "3600".into()],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(max_surge)),
                    max_unavailable: Some(IntOrString::Int(max_unavailable)),
                }),
            }),
            ..Default::default()
        },
        status: None,
    }
}

/// A merge patch setting the image of the first container (a new template version).
pub fn image_patch(d: &Deployment, image: &str) -> serde_json::Value {
    let mut containers = d.spec.template.spec.containers.clone();
    containers[0].image = Some(image.into());
    json!({"spec": {"template": {"spec": {"containers": containers}}}})
}

/// The image of a pod.
pub fn image(pod: &Pod) -> &str {
    pod.spec.containers.first().and_then(|c| c.image.as_deref()).unwrap_or("")
}

/// A pod's Ready condition is True.
pub fn ready(pod: &Pod) -> bool {
    pod.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The nodes' heartbeats: each node's Lease renewed every second, so the node lifecycle controller keeps
/// them Ready.
async fn renew_leases(api: Arc<Client>) {
    loop {
        for name in NODES {
            let lease = testbed_api::objects::Lease {
                api_version: "coordination.k8s.io/v1".into(),
                kind: "Lease".into(),
                metadata: ObjectMeta {
                    name: name.into(),
                    namespace: Some("kube-node-lease".into()),
                    ..Default::default()
                },
                spec: testbed_api::objects::LeaseSpec {
                    holder_identity: Some(name.into()),
                    lease_duration_seconds: Some(40),
                    renew_time: Some(testbed_control_plane::client::now_rfc3339_micro()),
                    ..Default::default()
                },
            };
            let path = paths::lease("kube-node-lease", name);
            if api.update(&path, &lease).await.is_err() {
                let _ = api.create(&paths::leases("kube-node-lease"), &lease).await;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The kubelet stand-in: reports each pod the scheduler bound Running and (unless its image is [`BROKEN`])
/// Ready, and removes a pod deleted gracefully at once (unless it carries [`LINGER`]).
async fn fake_kubelet(api: Arc<Client>) {
    // Pod IPs, one per pod started: 10.244.0.1, 10.244.0.2, ...
    let mut started = 0u32;
    let mut changes = list_watch::<Pod>(api.clone(), &paths::pods(None), &[]);
    while let Some(change) = changes.next().await {
        let pods = match change {
            Ok(Change::Listed(pods)) => pods,
            Ok(Change::Event(WatchEvent::Added(p) | WatchEvent::Modified(p))) => vec![p],
            Ok(Change::Event(WatchEvent::Deleted(_))) => continue,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        for pod in pods {
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            if pod.spec.node_name.is_none() {
                continue;
            }
            if pod.metadata.deletion_timestamp.is_some() && !pod.metadata.annotations.contains_key(LINGER) {
                // Deleted gracefully: "stopped" at once and removed with grace 0, as a kubelet finishes it.
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                let _ = api.force_delete_pod(&ns, &pod.metadata.name, &uid).await;
                continue;
            }
            let running = pod.status.as_ref().and_then(|s| s.phase) == Some(testbed_api::PodPhase::Running);
            if running {
                continue;
            }
            let is_ready = if image(&pod) == BROKEN { "False" } else { "True" };
            started += 1;
            let ip = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 244, 0, 0)) + started);
            let status = json!({"phase": "Running", "podIP": ip.to_string(), "conditions": [
                {"type": "Ready", "status": is_ready, "lastTransitionTime": now_rfc3339()}]});
            let _ = api.patch_pod_status(&ns, &pod.metadata.name, &status).await;
        }
    }
}
