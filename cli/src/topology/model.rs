//! The topology file as written: serde types with `deny_unknown_fields`. Amounts stay strings here so that
//! validation can report a bad value at its own line and column; `validate` turns them into numbers.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::volumes::{PodSecurityContextDef, SecurityContextDef, VolumeDef, VolumeMountDef};

/// A mapping that keeps the file's order (node index = position in the file, which fixes addresses, MACs and
/// ports) and rejects duplicate keys.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderedMap<V>(pub Vec<(String, V)>);

impl<V> Default for OrderedMap<V> {
    fn default() -> Self {
        OrderedMap(Vec::new())
    }
}

impl<V> OrderedMap<V> {
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn get(&self, key: &str) -> Option<&V> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    pub fn position(&self, key: &str) -> Option<usize> {
        self.0.iter().position(|(k, _)| k == key)
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V2<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for V2<V> {
            type Value = OrderedMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of names")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out: Vec<(String, V)> = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, V>()? {
                    if out.iter().any(|(e, _)| *e == k) {
                        return Err(de::Error::custom(format!("duplicate key `{k}`")));
                    }
                    out.push((k, v));
                }
                Ok(OrderedMap(out))
            }
        }
        d.deserialize_map(V2(PhantomData))
    }
}

impl<V: JsonSchema> JsonSchema for OrderedMap<V> {
    fn schema_name() -> Cow<'static, str> {
        format!("Map_of_{}", V::schema_name()).into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        <std::collections::BTreeMap<String, V>>::json_schema(generator)
    }
}

/// A scalar written as a string or a number (`cpu: 2`, `cpu: "500m"`, `memory: 1000`), kept as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a quantity such as 500m, 64Mi or 2")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(ScalarVisitor)
    }
}

// Exists only to describe `Scalar` in the JSON schema.
/// A quantity, as text (`500m`, `64Mi`, `5ms`) or a plain number.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum ScalarSchema {
    Text(String),
    Number(f64),
}

impl JsonSchema for Scalar {
    fn schema_name() -> Cow<'static, str> {
        "Quantity".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        ScalarSchema::json_schema(generator)
    }
}

/// A testbed topology: the lab's VMs, their underlay networks, the cluster network and optional pods.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Lab name: lowercase letters, digits and '-', starting with a letter, at most 24 characters. It names
    /// the lab's network namespace (`tb-<name>`) and directory, and seeds every MAC, port and host-side name.
    pub name: String,
    /// Values every node gets unless it sets its own.
    #[serde(default)]
    pub defaults: Defaults,
    /// The VMs, in order: a node's position fixes its addresses, MACs, pod subnet and SSH port.
    pub nodes: OrderedMap<NodeDef>,
    /// Underlay L2 segments (one Linux bridge each, inside the lab's network namespace).
    pub networks: OrderedMap<NetworkDef>,
    /// The pod network: pod CIDR, per-node subnets and the overlay backend.
    #[serde(default)]
    pub cluster: ClusterDef,
    /// Pods created on `up`, after the cluster network is applied.
    #[serde(default)]
    pub pods: Vec<PodDef>,
    /// Namespaces created through the control plane at `up`, before everything else: each a Kubernetes
    /// `v1 Namespace` manifest (`metadata.name`, `metadata.labels` for NetworkPolicies' namespace
    /// selectors).
    #[serde(default)]
    pub namespaces: Vec<serde_json::Value>,
    /// Deployments created through the control plane at `up`, once every node is Ready: each a Kubernetes
    /// `apps/v1 Deployment` manifest (`metadata`, `spec`; `apiVersion` and `kind` may be left out), checked
    /// here with the API server's own rules.
    #[serde(default)]
    pub deployments: Vec<serde_json::Value>,
    /// Services created through the control plane at `up`: each a Kubernetes `v1 Service` manifest
    /// (ClusterIP or NodePort), checked with the API server's rules; cluster IPs and node ports not given are
    /// decided here, in file order, lowest free first (`testbed plan` shows them).
    #[serde(default)]
    pub services: Vec<serde_json::Value>,
    /// NetworkPolicies created through the control plane at `up`: each a Kubernetes `networking.k8s.io/v1
    /// NetworkPolicy` manifest, checked with the API server's rules; every node's agent enforces them.
    #[serde(default)]
    pub network_policies: Vec<serde_json::Value>,
    /// Checks the conformance suite runs once per backend, after its own (docs/tests.md).
    #[serde(default)]
    pub tests: Option<Vec<TestDef>>,
}

/// Where a node's disk, kernel and initrd come from.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ImageDef {
    /// An image testbed builds itself from Debian packages, e.g. `debian-12`.
    Named(String),
    /// A downloaded disk image, verified against its sha256 before use.
    Url(UrlImage),
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UrlImage {
    pub url: String,
    /// 64 hex digits.
    pub sha256: String,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// vCPUs per node (default 1).
    pub cpus: Option<u32>,
    /// Memory per node: `512M`, `1G`, `1024Mi` (M and G are binary, as with `qemu -m`; default 512M).
    pub memory: Option<Scalar>,
    /// Guest image (default `debian-12`).
    pub image: Option<ImageDef>,
    /// Extra kernel command-line arguments, one per item (default none).
    pub kernel_args: Option<Vec<String>>,
}

/// One VM. Every field overrides the one in `defaults`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeDef {
    pub cpus: Option<u32>,
    pub memory: Option<Scalar>,
    pub image: Option<ImageDef>,
    pub kernel_args: Option<Vec<String>>,
    /// Networks this node is attached to, by name (default: every network). Must include the cluster underlay.
    pub networks: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkDef {
    /// IPv4 network, e.g. `192.168.50.0/24`; node i gets host address 11 + i.
    pub cidr: String,
    /// MTU of the bridge, taps and guest NICs (576..=9000, default 1500).
    pub mtu: Option<u32>,
    /// tc netem impairments on every tap of this network.
    #[serde(default)]
    pub impair: ImpairDef,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImpairDef {
    /// One-way delay added per tap: `5ms`, `200us`, `1s`.
    pub delay: Option<Scalar>,
    /// Delay variation (needs `delay`): `1ms`.
    pub jitter: Option<Scalar>,
    /// Random loss: `0.1%`.
    pub loss: Option<Scalar>,
    /// Rate limit in whole Mbit/s: `100mbit`, `1gbit`.
    pub rate: Option<Scalar>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BackendDef {
    Vxlan,
    HostGw,
    Udp,
    None,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterDef {
    /// Cluster pod CIDR (default `10.244.0.0/16`).
    pub pod_cidr: Option<String>,
    /// Prefix length of each node's pod subnet (default 24, at most 29).
    pub node_subnet_prefix: Option<u8>,
    /// Overlay backend (default `vxlan`).
    pub backend: Option<BackendDef>,
    /// The network carrying cross-node pod traffic (default: the first network). Every node must be on it.
    pub underlay: Option<String>,
    /// Where the control plane (etcd and the API server) runs (default: the first node).
    pub control_plane: Option<ControlPlaneDef>,
    /// Where Services' cluster IPs come from (default `10.96.0.0/12`); must not overlap the pod CIDR or a
    /// network.
    pub service_cidr: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneDef {
    /// The control-plane nodes: one, or three for an etcd cluster that survives losing a member (default:
    /// the first node).
    pub nodes: Option<Vec<String>>,
    /// How long a node's Lease may go unrenewed before the node is NotReady: a Kubernetes duration such as
    /// `40s` or `1m30s` (default `40s`; more than the agents' 10 s renew interval).
    pub node_monitor_grace_period: Option<Scalar>,
    /// How long a node may stay NotReady before its pods are deleted and replaced on other nodes: a
    /// Kubernetes duration such as `5m` (default `5m`).
    pub pod_eviction_timeout: Option<Scalar>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum RestartPolicyDef {
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PodDef {
    /// DNS label, unique in the lab.
    pub name: String,
    /// The node the pod runs on.
    pub node: String,
    /// The namespace of the pod's mirror in the cluster API (default `default`): a built-in one or one of
    /// `namespaces:`.
    pub namespace: Option<String>,
    /// Kubernetes labels, on the pod's mirror in the cluster API: what Services and NetworkPolicies select.
    #[serde(default)]
    pub labels: OrderedMap<String>,
    /// Default `Always`.
    pub restart_policy: Option<RestartPolicyDef>,
    #[serde(default)]
    pub share_process_namespace: bool,
    #[serde(default)]
    pub host_network: bool,
    pub containers: Vec<ContainerDef>,
    /// What the containers' `volumeMounts` can mount (Kubernetes' `emptyDir` and `hostPath`).
    #[serde(default)]
    pub volumes: Vec<VolumeDef>,
    /// Defaults of the containers' `securityContext`.
    #[serde(rename = "securityContext")]
    pub security_context: Option<PodSecurityContextDef>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContainerDef {
    pub name: String,
    /// argv, resolved with the guest's PATH (the image's with an `image`). Required without an `image`;
    /// with one, Kubernetes' `command`: it replaces the image's Entrypoint and Cmd, and empty keeps them.
    #[serde(default)]
    pub command: Vec<String>,
    /// The container's own root filesystem: an image testbed builds (`busybox`, `debian-tools`) or the path of
    /// an OCI image layout directory or `oci-archive` tarball on the host (relative to this file). `up` copies
    /// it to the node, whose agent checks every digest. Without it the container shares the node's files.
    pub image: Option<String>,
    #[serde(default)]
    pub env: OrderedMap<String>,
    #[serde(default)]
    pub resources: ResourcesDef,
    /// `pids.max` of the container's cgroup.
    pub pids_limit: Option<u64>,
    /// Volumes of the pod mounted into the container (with an `image` only).
    #[serde(default, rename = "volumeMounts")]
    pub volume_mounts: Vec<VolumeMountDef>,
    /// Kubernetes' container `securityContext` (with an `image` only).
    #[serde(rename = "securityContext")]
    pub security_context: Option<SecurityContextDef>,
    /// Kubernetes' container `ports` (`name`, `containerPort`): what a probe's port may name.
    #[serde(default)]
    pub ports: Vec<testbed_api::objects::ContainerPort>,
    /// Kubernetes' `livenessProbe`: failing it restarts the container.
    #[serde(rename = "livenessProbe")]
    pub liveness_probe: Option<testbed_api::probe::Probe>,
    /// Kubernetes' `readinessProbe`: failing it takes the pod out of `Ready` and its Services' endpoints.
    #[serde(rename = "readinessProbe")]
    pub readiness_probe: Option<testbed_api::probe::Probe>,
    /// Kubernetes' `startupProbe`: liveness and readiness wait for it to succeed.
    #[serde(rename = "startupProbe")]
    pub startup_probe: Option<testbed_api::probe::Probe>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourcesDef {
    #[serde(default)]
    pub requests: AmountsDef,
    #[serde(default)]
    pub limits: AmountsDef,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AmountsDef {
    /// Kubernetes CPU quantity: `250m`, `0.5`, `2`.
    pub cpu: Option<Scalar>,
    /// Kubernetes memory quantity: `64Mi`, `1Gi`, `128M`, `1000`.
    pub memory: Option<Scalar>,
}

/// One declared test: a probe from a pod or node to a pod, node or address, expected to pass or to fail.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestDef {
    /// Unique in the file; the check is named `[declared] <backend> <name>`.
    pub name: String,
    /// Where the probe runs: `pod:<name>` (a pod of `pods:`) or `node:<name>`.
    pub from: String,
    /// What it probes: `pod:<name>` (a pod of `pods:`), `node:<name>` (its underlay address) or `ip:<IPv4>`.
    pub to: String,
    pub kind: TestKindDef,
    /// tcp: required; http: default 80; ping: not allowed.
    pub port: Option<u32>,
    /// `pass` (default) or `fail` (an isolation test: the probe must fail).
    pub expect: Option<ExpectDef>,
    /// Without it the probe runs once.
    pub retry: Option<RetryDef>,
    /// `error` (default) or `warning` (a failure is `warn` and does not fail the run).
    pub level: Option<LevelDef>,
    /// When this test fails, the remaining declared tests are skipped.
    #[serde(default)]
    pub stop_on_error: bool,
    /// Only with these backends (skipped with the others); default: every backend.
    #[serde(default)]
    pub backends: Vec<BackendDef>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TestKindDef {
    /// One ICMP echo.
    Ping,
    /// A TCP connect, whatever the server speaks.
    Tcp,
    /// `GET /` answered with any 2xx.
    Http,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExpectDef {
    Pass,
    Fail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LevelDef {
    Error,
    Warning,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryDef {
    /// Attempts in all (1..=100, default 3).
    pub attempts: Option<u32>,
    /// Pause between attempts: `500ms`, `2s`, `1m`, or a number of seconds (default 1s, at most 10m).
    pub wait: Option<Scalar>,
}
