//! Mirror pods, as the kubelet keeps them for static pods: every pod of the node-local API (the topology's
//! and the suites' pods, which the loop did not create) gets a read-only copy in the cluster API, named
//! `<pod>-<node>`, in the namespace and with the labels of its spec, bound to this node and owned by its
//! Node. So the cluster sees every pod that runs: `get pods` lists them, Services select them, the
//! EndpointSlice controller and NetworkPolicies see their addresses. The mirror carries the kubelet's
//! annotations (`kubernetes.io/config.mirror` with the spec's hash), so the loop never runs a mirror and
//! replaces one whose static pod changed. A deleted mirror is created again; a mirror whose static pod is gone
//! is deleted. The decisions are pure; `follow.rs` does the API calls.

use std::collections::BTreeMap;

use sha2::Digest as _;
use testbed_api::objects::{
    Container, EnvVar, ObjectMeta, OwnerReference, Pod, PodSpec as ApiPodSpec, ResourceRequirements, MIRROR_ANNOTATION,
};
use testbed_api::validate::is_dns_label;
use testbed_api::PodSpec;

use super::diff::PodKey;

const SOURCE_ANNOTATION: &str = "kubernetes.io/config.source";
const HASH_ANNOTATION: &str = "kubernetes.io/config.hash";

/// Whether the API pod is a mirror: the loop reports on it but never runs it.
pub fn is_mirror(pod: &Pod) -> bool {
    pod.metadata.annotations.contains_key(MIRROR_ANNOTATION)
}

/// The API key of `spec`'s mirror on `node`: `<pod>-<node>` in the spec's namespace (default `default`),
/// or None when that is longer than a DNS label.
pub fn mirror_key(spec: &PodSpec, node: &str) -> Option<PodKey> {
    let name = format!("{}-{node}", spec.name);
    is_dns_label(&name, 63).then(|| PodKey { namespace: spec.namespace.clone().unwrap_or("default".into()), name })
}

/// What identifies a version of the static pod: its spec's JSON, hashed.
fn config_hash(spec: &PodSpec) -> String {
    let json = serde_json::to_vec(spec).unwrap_or_default();
    hex::encode(sha2::Sha256::digest(json))[..32].to_string()
}

/// The Node a mirror belongs to (its owner reference; the garbage collector removes mirrors with it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRef {
    pub name: String,
    pub uid: String,
}

/// The mirror of `spec` on `node`.
pub fn mirror_of(spec: &PodSpec, key: &PodKey, node: &NodeRef) -> Pod {
    let hash = config_hash(spec);
    let annotations = BTreeMap::from([
        (MIRROR_ANNOTATION.to_string(), hash.clone()),
        (SOURCE_ANNOTATION.to_string(), "file".to_string()),
        (HASH_ANNOTATION.to_string(), hash),
    ]);
    let owner = OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: node.name.clone(),
        uid: node.uid.clone(),
        ..Default::default()
    };
    let containers = spec
        .containers
        .iter()
        .map(|c| Container {
            name: c.name.clone(),
            command: c.command.clone(),
            env: c.env.iter().map(|(name, value)| EnvVar { name: name.clone(), value: value.clone() }).collect(),
            resources: resources_of(&c.resources),
            liveness_probe: c.probes.liveness_probe.clone(),
            readiness_probe: c.probes.readiness_probe.clone(),
            startup_probe: c.probes.startup_probe.clone(),
            ..Default::default()
        })
        .collect();
    Pod {
        api_version: "v1".into(),
        kind: "Pod".into(),
        metadata: ObjectMeta {
            name: key.name.clone(),
            namespace: Some(key.namespace.clone()),
            labels: spec.labels.clone(),
            annotations,
            owner_references: vec![owner],
            ..Default::default()
        },
        spec: ApiPodSpec {
            containers,
            node_name: Some(node.name.clone()),
            restart_policy: Some(spec.restart_policy),
            host_network: spec.host_network,
            share_process_namespace: spec.share_process_namespace,
            ..Default::default()
        },
        status: None,
    }
}

/// Kubernetes quantities of the agent's parsed amounts (`250m`, bytes), so the scheduler counts them.
fn resources_of(r: &testbed_api::Resources) -> Option<ResourceRequirements> {
    let amounts = |a: &testbed_api::ResourceAmounts| {
        let mut m = BTreeMap::new();
        if let Some(cpu) = a.cpu_millis {
            m.insert("cpu".to_string(), format!("{cpu}m"));
        }
        if let Some(mem) = a.memory_bytes {
            m.insert("memory".to_string(), mem.to_string());
        }
        m
    };
    let (requests, limits) = (amounts(&r.requests), amounts(&r.limits));
    (!requests.is_empty() || !limits.is_empty()).then_some(ResourceRequirements { requests, limits })
}

#[derive(Debug, Clone, PartialEq)]
pub enum MirrorAction {
    Create(Box<Pod>),
    /// Delete this mirror at once (grace 0, as the kubelet deletes mirrors: stale, terminating, or its
    /// static pod is gone); a current one is created by a later pass.
    Delete(PodKey),
}

/// From the static pods on the node (by node pod name) and the API pods bound here, what to create and
/// delete so that every static pod has one current mirror and no mirror outlives its static pod. A pod of
/// the mirror's name that is no mirror (someone's own pod) is left alone, and the static pod goes without.
pub fn plan(statics: &[&PodSpec], api_pods: &BTreeMap<PodKey, Pod>, node: &NodeRef) -> Vec<MirrorAction> {
    let wanted: BTreeMap<PodKey, &PodSpec> =
        statics.iter().filter_map(|s| mirror_key(s, &node.name).map(|k| (k, *s))).collect();
    let mut actions = Vec::new();
    for (key, pod) in api_pods.iter().filter(|(_, p)| is_mirror(p)) {
        let current = wanted.get(key).is_some_and(|spec| {
            pod.metadata.annotations.get(MIRROR_ANNOTATION) == Some(&config_hash(spec))
                && pod.metadata.owner_references.iter().any(|o| o.uid == node.uid)
        });
        // A mirror deleted through the API is terminating: finished at once, and created afresh.
        if !current || pod.metadata.deletion_timestamp.is_some() {
            actions.push(MirrorAction::Delete(key.clone()));
        }
    }
    for (key, spec) in wanted {
        if !api_pods.contains_key(&key) {
            actions.push(MirrorAction::Create(Box::new(mirror_of(spec, &key, node))));
        }
    }
    actions
}

/// The static pods among the node's pods: those the loop did not create for an API pod (it records a pod
/// before creating it, so one being created is never taken for a static pod).
pub fn statics<'a>(on_node: &'a [PodSpec], owned: &BTreeMap<String, super::diff::Owner>) -> Vec<&'a PodSpec> {
    on_node.iter().filter(|s| !owned.contains_key(&s.name)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use testbed_api::ContainerSpec;

    fn node() -> NodeRef {
        NodeRef { name: "node1".into(), uid: "n-uid".into() }
    }
    fn static_pod(name: &str, app: &str) -> PodSpec {
        PodSpec {
            name: name.into(),
            containers: vec![ContainerSpec {
                name: "c".into(),
                command: vec!["sleep".into(), "1d".into()],
                env: Default::default(),
                resources: Default::default(),
                pids_limit: None,
                args: vec![],
                image: None,
                volume_mounts: vec![],
                security_context: None,
                probes: Default::default(),
            }],
            labels: BTreeMap::from([("app".to_string(), app.to_string())]),
            ..Default::default()
        }
    }
    fn stored(mut pod: Pod, uid: &str) -> (PodKey, Pod) {
        pod.metadata.uid = Some(uid.into());
        let key =
            PodKey { namespace: pod.metadata.namespace.clone().unwrap_or_default(), name: pod.metadata.name.clone() };
        (key, pod)
    }

    #[test]
    fn a_static_pod_gets_a_mirror_bound_here_with_its_labels_and_the_kubelet_annotations() {
        let web = static_pod("web", "web");
        let actions = plan(&[&web], &BTreeMap::new(), &node());
        let [MirrorAction::Create(pod)] = actions.as_slice() else { panic!("{actions:?}") };
        assert_eq!((pod.metadata.name.as_str(), pod.metadata.namespace.as_deref()), ("web-node1", Some("default")));
        assert_eq!(pod.metadata.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(pod.spec.node_name.as_deref(), Some("node1"));
        assert!(is_mirror(pod));
        assert_eq!(pod.metadata.annotations.get("kubernetes.io/config.source").map(String::as_str), Some("file"));
        assert_eq!(pod.metadata.owner_references[0].uid, "n-uid");
        assert_eq!(pod.spec.containers[0].command, ["sleep", "1d"]);
    }

    #[test]
    fn a_current_mirror_is_kept_a_stale_or_orphaned_one_deleted_and_a_missing_one_made_again() {
        let web = static_pod("web", "web");
        let key = mirror_key(&web, "node1").expect("short");
        let current = BTreeMap::from([stored(mirror_of(&web, &key, &node()), "u1")]);
        assert_eq!(plan(&[&web], &current, &node()), []);
        // The static pod changed (a new label): the old mirror goes; the next pass creates the new one.
        let relabelled = static_pod("web", "web2");
        assert_eq!(plan(&[&relabelled], &current, &node()), [MirrorAction::Delete(key.clone())]);
        // The static pod is gone.
        assert_eq!(plan(&[], &current, &node()), [MirrorAction::Delete(key.clone())]);
        // The Node was recreated (new uid): the mirror names a dead owner.
        let renamed = NodeRef { uid: "n-uid-2".into(), ..node() };
        assert_eq!(plan(&[&web], &current, &renamed), [MirrorAction::Delete(key)]);
    }

    #[test]
    fn someone_elses_pod_of_the_mirror_name_is_left_alone() {
        let web = static_pod("web", "web");
        let key = mirror_key(&web, "node1").expect("short");
        let mut theirs = mirror_of(&web, &key, &node());
        theirs.metadata.annotations.clear();
        let api = BTreeMap::from([stored(theirs, "u9")]);
        assert_eq!(plan(&[&web], &api, &node()), []);
    }

    #[test]
    fn the_mirror_lives_in_the_static_pods_namespace_and_too_long_names_get_none() {
        let mut web = static_pod("web", "web");
        web.namespace = Some("team-a".into());
        assert_eq!(mirror_key(&web, "node1"), Some(PodKey { namespace: "team-a".into(), name: "web-node1".into() }));
        let long = static_pod(&"p".repeat(60), "x");
        assert_eq!(mirror_key(&long, "node1"), None);
        assert_eq!(plan(&[&long], &BTreeMap::new(), &node()), []);
    }
}
