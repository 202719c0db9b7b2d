//! `v1 Pod`, its containers and status, and the pod template of ReplicaSets and Deployments.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Condition, ObjectMeta};
use crate::probe::{Probe, Probes};
use crate::{PodPhase, RestartPolicy};

/// Marks a mirror pod, the API's copy of a node's static pod (the kubelet's annotation; its value is the
/// static pod's config hash). The node's agent keeps it; nothing else runs or adopts it.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// `v1 Pod`: containers run together on one node by its agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    /// `v1`.
    #[serde(default)]
    pub api_version: String,
    /// `Pod`.
    #[serde(default)]
    pub kind: String,
    /// Name, namespace, labels.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What to run.
    #[serde(default)]
    pub spec: PodSpec,
    /// Where it runs and how it is going, written by the node's agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PodStatus>,
}

/// `spec` of a Pod: the Kubernetes fields that map onto testbed's own [`crate::PodSpec`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    /// At least one.
    #[serde(default)]
    pub containers: Vec<Container>,
    /// The node the pod runs on; empty until it is placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// `Always` (default), `OnFailure` or `Never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    /// The pod uses the node's network namespace.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_network: bool,
    /// Containers share one PID namespace.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub share_process_namespace: bool,
    /// Seconds between SIGTERM and SIGKILL at deletion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<i64>,
    /// The pod may only be placed on a node carrying all these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// The scheduler that places the pod; `default-scheduler` when left out. Other schedulers' pods are
    /// left alone by testbed's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler_name: Option<String>,
    /// What the containers' `volumeMounts` can mount (`emptyDir`, `hostPath`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<crate::Volume>,
    /// Defaults of the containers' `securityContext` (`runAsUser`, `runAsGroup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<crate::PodSecurityContext>,
}

/// `spec.template` of a ReplicaSet or Deployment: the metadata and spec of the pods it makes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateSpec {
    /// Labels (which the owner's selector must match) and annotations of every pod.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The pods' spec.
    #[serde(default)]
    pub spec: PodSpec,
}

/// One container of a Pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    /// DNS label, unique in the pod.
    #[serde(default)]
    pub name: String,
    /// A digest reference (`busybox@sha256:<hex>`, or `sha256:<hex>` alone) runs the container in that image,
    /// which must be in its node's store (a topology's `image:` or `testbed image load` puts it there; nothing
    /// is pulled). So does a name with `imagePullPolicy: Never` or `IfNotPresent`: the image the node's store
    /// has under that name ([`crate::image_ref`]). Any other name is kept as given and not run: the container
    /// runs programs of the guest's root file system, so manifests written for Kubernetes load unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// `Never` or `IfNotPresent`: run the image the node has under `image`'s name (where it has none, the
    /// container waits as `ErrImageNeverPull`, since testbed pulls nothing). `Always` or unset: a name without a
    /// digest runs on the guest's files (see `image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// The program and its first arguments, resolved with the guest's PATH.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// More arguments, appended to `command`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Ports the container listens on, by name (Services' `targetPort` may name one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    /// CPU and memory requests (what the scheduler reserves) and limits (what the kernel enforces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Volumes of the pod mounted into the container (a digest-pinned `image` only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<crate::VolumeMount>,
    /// User, capabilities, read-only root (a digest-pinned `image` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<crate::SecurityContext>,
    /// Restarts the container when it fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    /// Takes the pod out of `Ready` (and its Services' endpoints) while it fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    /// Holds liveness and readiness probing back until it succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<Probe>,
}

/// Kubernetes' `imagePullPolicy`. testbed pulls nothing: the policies that use an image already on the
/// node run it by name; `Always` keeps the guest's files for a name without a digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImagePullPolicy {
    /// Pull every time: nothing to pull from here, so a name without a digest runs on the guest's files.
    Always,
    /// Use the node's image of that name (pulling none when it is missing).
    IfNotPresent,
    /// Use the node's image of that name; `ErrImageNeverPull` when it has none.
    Never,
}

impl Container {
    /// The name of the node's image this container runs, normalized, when its pull policy says to use the
    /// node's (`Never`, `IfNotPresent`) and its image is not a digest. A name that does not parse is passed on
    /// as written, for the pod's validation to refuse with the field named.
    fn local_image_name(&self) -> Option<String> {
        let local = matches!(self.image_pull_policy, Some(ImagePullPolicy::Never | ImagePullPolicy::IfNotPresent));
        let image = self.image.as_deref().filter(|_| local)?;
        Some(crate::image_ref::normalize(image).unwrap_or_else(|_| image.to_string()))
    }

    /// The three probes, each port name of the container's `ports` replaced by its number.
    pub fn probes(&self) -> Probes {
        let probes = Probes {
            liveness_probe: self.liveness_probe.clone(),
            readiness_probe: self.readiness_probe.clone(),
            startup_probe: self.startup_probe.clone(),
        };
        probes.with_port_numbers(&|name| {
            self.ports.iter().find(|p| p.name.as_deref() == Some(name)).map(|p| p.container_port)
        })
    }
}

/// One entry of a Container's `ports`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    /// An IANA service name (at most 15 characters), unique in the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// 1-65535.
    pub container_port: i32,
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// A Container's `resources`: Kubernetes quantities by resource name (`cpu: 250m`, `memory: 64Mi`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRequirements {
    /// What the container is guaranteed; the scheduler places it only where this fits.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, String>,
    /// Caps the kernel enforces; a request left out defaults to the limit.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, String>,
}

/// One environment variable of a Container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    /// Variable name.
    pub name: String,
    /// Its value (empty when absent).
    #[serde(default)]
    pub value: String,
}

/// `status` of a Pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    /// `Pending` until the node's agent reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<PodPhase>,
    /// The node's underlay address.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "hostIP")]
    pub host_ip: Option<String>,
    /// The pod's address in its node's pod subnet.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "podIP")]
    pub pod_ip: Option<String>,
    /// `Ready` and the other pod conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// A sentence about the phase, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// One entry per container of the spec, in its order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub container_statuses: Vec<ContainerStatus>,
}

/// One entry of a Pod's `status.containerStatuses`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    /// The container's name from the spec.
    pub name: String,
    /// The container runs, its startup probe (if any) has passed and its readiness probe (if any) passes.
    #[serde(default)]
    pub ready: bool,
    /// The container runs and its startup probe (if any) has passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<bool>,
    /// How many times the node's agent started the container again after it exited.
    #[serde(default)]
    pub restart_count: u32,
    /// The image as the spec names it (testbed runs the guest's programs, see [`Container::image`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Exactly one of `waiting`, `running`, `terminated`.
    #[serde(default)]
    pub state: ContainerState,
    /// How the previous run ended (`terminated`), once the container has been restarted.
    #[serde(default, skip_serializing_if = "ContainerState::is_empty")]
    pub last_state: ContainerState,
}

impl ContainerState {
    /// No field set (`lastState` of a container that has not been restarted).
    pub fn is_empty(&self) -> bool {
        self.waiting.is_none() && self.running.is_none() && self.terminated.is_none()
    }
}

/// `state` of a [`ContainerStatus`]: one of its fields is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerState {
    /// Not running yet, or between restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<ContainerStateWaiting>,
    /// The process is alive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<ContainerStateRunning>,
    /// The process exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminated: Option<ContainerStateTerminated>,
}

/// `state.waiting` of a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStateWaiting {
    /// `ContainerCreating`, `CrashLoopBackOff`, `ErrImageNeverPull`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `state.running` of a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStateRunning {
    /// RFC 3339 time the node's agent first saw it running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
}

/// `state.terminated` of a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStateTerminated {
    /// The exit code, or 128 + the signal that killed it.
    #[serde(default)]
    pub exit_code: i32,
    /// `Completed`, `Error` or `OOMKilled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The agent's pod names are DNS labels of at most this many characters (`crate::validate`).
const NODE_POD_NAME_MAX: usize = 63;
/// Hex digits of the key's hash that end a node pod name.
const NODE_POD_HASH_DIGITS: usize = 8;

/// The name API pod `namespace/name` runs under on its node (the agent's pod: its cgroup, record, hostname;
/// its veth is named by a hash of it): `<namespace>-<name>` cut to fit, then 8 hex digits of the SHA-256 of
/// `<namespace>/<name>`. The namespace keeps pods of one name in two namespaces apart; the hash keeps apart
/// keys that read alike once joined or cut (`a-b`/`c` and `a`/`b-c`). A DNS label of at most 63 characters.
pub fn node_pod_name(namespace: &str, name: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("{namespace}/{name}").as_bytes());
    let hash = &hex::encode(digest)[..NODE_POD_HASH_DIGITS];
    let joined = format!("{namespace}-{name}");
    let readable = joined[..joined.len().min(NODE_POD_NAME_MAX - 1 - NODE_POD_HASH_DIGITS)].trim_end_matches('-');
    format!("{readable}-{hash}")
}

impl Pod {
    /// The node agent's [`crate::PodSpec`] for this pod (`command` and `args` joined, as the runtime does),
    /// so the control plane runs the same checks ([`crate::validate::validate_pod`]) as the CLI and the agent.
    pub fn to_agent_spec(&self) -> crate::PodSpec {
        let containers = self
            .spec
            .containers
            .iter()
            .map(|c| {
                let image = pinned_image(c.image.as_deref()).or_else(|| c.local_image_name());
                // In an image, command and args replace its Entrypoint and Cmd one by one; without one the
                // guest runs them as one argv.
                let (command, args) = match image {
                    Some(_) => (c.command.clone(), c.args.clone()),
                    None => (c.command.iter().chain(&c.args).cloned().collect(), vec![]),
                };
                crate::ContainerSpec {
                    name: c.name.clone(),
                    command,
                    env: c.env.iter().map(|e| (e.name.clone(), e.value.clone())).collect(),
                    resources: c.resources.as_ref().map(ResourceRequirements::to_agent).unwrap_or_default(),
                    pids_limit: None,
                    args,
                    image,
                    volume_mounts: c.volume_mounts.clone(),
                    security_context: c.security_context.clone(),
                    probes: c.probes(),
                }
            })
            .collect();
        crate::PodSpec {
            name: self.metadata.name.clone(),
            containers,
            restart_policy: self.spec.restart_policy.unwrap_or_default(),
            share_process_namespace: self.spec.share_process_namespace,
            host_network: self.spec.host_network,
            volumes: self.spec.volumes.clone(),
            security_context: self.spec.security_context.clone(),
            ..Default::default()
        }
    }
}

/// The digest of a digest reference (`name@sha256:<hex>` or `sha256:<hex>`), the form of
/// [`crate::ContainerSpec::image`] that names an image in the node's store; None for a name without one.
fn pinned_image(image: Option<&str>) -> Option<String> {
    let image = image?;
    let digest = image.rsplit_once('@').map_or(image, |(_, digest)| digest);
    digest.starts_with("sha256:").then(|| digest.to_string())
}

impl ResourceRequirements {
    /// The agent's [`crate::Resources`]: cgroup weights, quotas and `memory.max`. Quantities that do not
    /// parse are left out here; the control plane refuses them before they are stored.
    pub fn to_agent(&self) -> crate::Resources {
        let amounts = |m: &BTreeMap<String, String>| crate::ResourceAmounts {
            cpu_millis: m.get("cpu").and_then(|q| crate::quantity::cpu_millis(q).ok()),
            memory_bytes: m.get("memory").and_then(|q| crate::quantity::memory_bytes(q).ok()),
        };
        crate::Resources { requests: amounts(&self.requests), limits: amounts(&self.limits) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_with(image: &str) -> Pod {
        let container = Container {
            name: "c".into(),
            image: Some(image.into()),
            command: vec!["sh".into()],
            args: vec!["-c".into(), "true".into()],
            ..Default::default()
        };
        Pod { spec: PodSpec { containers: vec![container], ..Default::default() }, ..Default::default() }
    }

    #[test]
    fn a_digest_reference_runs_in_its_image_and_a_name_alone_on_the_guest() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        for reference in [format!("busybox@{digest}"), format!("registry.example/busybox:1@{digest}"), digest.clone()] {
            let c = &pod_with(&reference).to_agent_spec().containers[0];
            assert_eq!(c.image.as_deref(), Some(digest.as_str()), "{reference}");
            assert_eq!(
                (c.command.as_slice(), c.args.as_slice()),
                (&["sh".to_string()][..], &["-c".to_string(), "true".into()][..])
            );
        }
        let c = &pod_with("busybox:1.36").to_agent_spec().containers[0];
        assert_eq!(c.image, None, "a name without a digest is not run");
        assert_eq!(c.command, ["sh", "-c", "true"], "command and args as one argv on the guest");
    }

    #[test]
    fn a_name_with_a_local_pull_policy_runs_the_nodes_image_of_that_name() {
        for policy in [ImagePullPolicy::Never, ImagePullPolicy::IfNotPresent] {
            let mut pod = pod_with("busybox");
            pod.spec.containers[0].image_pull_policy = Some(policy);
            let c = &pod.to_agent_spec().containers[0];
            assert_eq!(c.image.as_deref(), Some("docker.io/library/busybox:latest"), "{policy:?}");
            assert_eq!(c.command, ["sh"], "command and args kept apart for the image's Entrypoint and Cmd");
        }
        let mut pod = pod_with("busybox");
        pod.spec.containers[0].image_pull_policy = Some(ImagePullPolicy::Always);
        assert_eq!(pod.to_agent_spec().containers[0].image, None, "Always: the guest's files");
        pod.spec.containers[0].image = Some("Busybox".into());
        pod.spec.containers[0].image_pull_policy = Some(ImagePullPolicy::Never);
        let mut spec = pod.to_agent_spec();
        spec.name = "web".into();
        assert_eq!(spec.containers[0].image.as_deref(), Some("Busybox"), "passed on as written");
        let refused = crate::validate::validate_pod(&spec).unwrap_err();
        assert_eq!(refused.field.as_deref(), Some("containers[0].image"));
    }
}
