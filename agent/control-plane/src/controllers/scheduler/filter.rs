//! Which nodes a pod fits on, without I/O: Kubernetes' filter plugins in their order (NodeUnschedulable,
//! TaintToleration for the not-ready and unreachable taints the node lifecycle puts on a node whose Ready
//! is not True, NodeAffinity for `nodeSelector`, NodeResourcesFit), each node failing with the reasons of
//! the first plugin that rejects it, and the FailedScheduling message built from them as `FitError` words it.

use std::collections::{BTreeMap, HashMap};

use testbed_api::objects::{Node, Pod};
use testbed_api::quantity::{cpu_millis, memory_bytes};

/// `node(s) were unschedulable`: `spec.unschedulable` (cordoned).
pub const UNSCHEDULABLE: &str = "node(s) were unschedulable";
/// Ready is False (or not reported yet).
pub const NOT_READY: &str = "node(s) had untolerated taint {node.kubernetes.io/not-ready: }";
/// Ready is Unknown: the node stopped renewing its Lease.
pub const UNREACHABLE: &str = "node(s) had untolerated taint {node.kubernetes.io/unreachable: }";
/// A `nodeSelector` label is missing or different.
pub const SELECTOR: &str = "node(s) didn't match Pod's node affinity/selector";
/// `allocatable.pods` reached.
pub const TOO_MANY_PODS: &str = "Too many pods";
/// The cpu requests do not fit in what is left of `allocatable.cpu`.
pub const INSUFFICIENT_CPU: &str = "Insufficient cpu";
/// The memory requests do not fit in what is left of `allocatable.memory`.
pub const INSUFFICIENT_MEMORY: &str = "Insufficient memory";

/// What a pod without a cpu request counts as when nodes are scored (Kubernetes' `DefaultMilliCPURequest`).
const DEFAULT_CPU_MILLIS: u64 = 100;
/// The same for memory (`DefaultMemoryRequest`, 200 MiB).
const DEFAULT_MEMORY_BYTES: u64 = 200 * 1024 * 1024;

/// CPU and memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Amounts {
    /// Millicores.
    pub cpu_millis: u64,
    /// Bytes.
    pub memory_bytes: u64,
}

/// What a pod asks of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Demand {
    /// Sum of the containers' requests (a limit without a request counts as the request).
    pub requests: Amounts,
    /// The same with Kubernetes' defaults for what a container leaves out: used for scoring only.
    pub nonzero: Amounts,
    /// Labels the node must carry.
    pub node_selector: BTreeMap<String, String>,
    /// The uid of the controller owning the pod (`ownerReferences[].controller`), for spreading.
    pub owner: Option<String>,
}

impl Demand {
    /// The demand of `pod`. Quantities that do not parse count as nothing: the API server refuses them.
    pub fn of(pod: &Pod) -> Self {
        let mut requests = Amounts::default();
        let mut nonzero = Amounts::default();
        for c in &pod.spec.containers {
            let r = c.resources.clone().unwrap_or_default();
            let amount = |name: &str, parse: fn(&str) -> Result<u64, String>| {
                r.requests.get(name).or_else(|| r.limits.get(name)).and_then(|q| parse(q).ok()).unwrap_or(0)
            };
            let (cpu, memory) = (amount("cpu", cpu_millis), amount("memory", memory_bytes));
            requests.cpu_millis += cpu;
            requests.memory_bytes += memory;
            nonzero.cpu_millis += if cpu == 0 { DEFAULT_CPU_MILLIS } else { cpu };
            nonzero.memory_bytes += if memory == 0 { DEFAULT_MEMORY_BYTES } else { memory };
        }
        let owner = pod.metadata.owner_references.iter().find(|o| o.controller == Some(true)).map(|o| o.uid.clone());
        Self { requests, nonzero, node_selector: pod.spec.node_selector.clone(), owner }
    }
}

/// A node's Ready condition as the filter sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// `True`.
    Ready,
    /// `False`, or no Ready condition yet.
    NotReady,
    /// `Unknown`.
    Unreachable,
}

/// What the filter and the scores read of a Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// The node's name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its Ready condition.
    pub readiness: Readiness,
    /// `spec.unschedulable`.
    pub unschedulable: bool,
    /// `status.allocatable` cpu and memory (none counts as 0: nothing that requests either fits).
    pub allocatable: Amounts,
    /// `status.allocatable.pods`, when given.
    pub max_pods: Option<u64>,
}

impl NodeFacts {
    /// The facts of `node`.
    pub fn of(node: &Node) -> Self {
        let status = node.status.clone().unwrap_or_default();
        let readiness = match status.conditions.iter().find(|c| c.type_ == "Ready").map(|c| c.status.as_str()) {
            Some("True") => Readiness::Ready,
            Some("Unknown") => Readiness::Unreachable,
            _ => Readiness::NotReady,
        };
        let get = |name: &str, parse: fn(&str) -> Result<u64, String>| {
            status.allocatable.get(name).and_then(|q| parse(q).ok()).unwrap_or(0)
        };
        Self {
            name: node.metadata.name.clone(),
            labels: node.metadata.labels.clone(),
            readiness,
            unschedulable: node.spec.unschedulable,
            allocatable: Amounts { cpu_millis: get("cpu", cpu_millis), memory_bytes: get("memory", memory_bytes) },
            max_pods: status.allocatable.get("pods").and_then(|p| p.parse().ok()),
        }
    }
}

/// What the pods placed on a node (bound, or assumed while their binding is under way) take of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Sum of their requests.
    pub requested: Amounts,
    /// Sum of their requests with the defaults, for scoring.
    pub nonzero: Amounts,
    /// How many.
    pub pods: u64,
    /// How many per controller owner uid.
    pub owners: HashMap<String, u32>,
}

impl Usage {
    /// Counts `d` in.
    pub fn add(&mut self, d: &Demand) {
        self.requested.cpu_millis += d.requests.cpu_millis;
        self.requested.memory_bytes += d.requests.memory_bytes;
        self.nonzero.cpu_millis += d.nonzero.cpu_millis;
        self.nonzero.memory_bytes += d.nonzero.memory_bytes;
        self.pods += 1;
        if let Some(owner) = &d.owner {
            *self.owners.entry(owner.clone()).or_default() += 1;
        }
    }

    /// Counts `d` out (it was counted in before).
    pub fn remove(&mut self, d: &Demand) {
        self.requested.cpu_millis = self.requested.cpu_millis.saturating_sub(d.requests.cpu_millis);
        self.requested.memory_bytes = self.requested.memory_bytes.saturating_sub(d.requests.memory_bytes);
        self.nonzero.cpu_millis = self.nonzero.cpu_millis.saturating_sub(d.nonzero.cpu_millis);
        self.nonzero.memory_bytes = self.nonzero.memory_bytes.saturating_sub(d.nonzero.memory_bytes);
        self.pods = self.pods.saturating_sub(1);
        if let Some(owner) = &d.owner {
            if let Some(n) = self.owners.get_mut(owner) {
                *n -= 1;
                if *n == 0 {
                    self.owners.remove(owner);
                }
            }
        }
    }
}

/// Whether `pod` fits on `node` given what is placed there; the reasons it does not.
pub fn filter(pod: &Demand, node: &NodeFacts, usage: &Usage) -> Result<(), Vec<&'static str>> {
    if node.unschedulable {
        return Err(vec![UNSCHEDULABLE]);
    }
    match node.readiness {
        Readiness::Ready => {}
        Readiness::NotReady => return Err(vec![NOT_READY]),
        Readiness::Unreachable => return Err(vec![UNREACHABLE]),
    }
    if !pod.node_selector.iter().all(|(k, v)| node.labels.get(k) == Some(v)) {
        return Err(vec![SELECTOR]);
    }
    let mut reasons = Vec::new();
    if node.max_pods.is_some_and(|max| usage.pods + 1 > max) {
        reasons.push(TOO_MANY_PODS);
    }
    let (want, used, have) = (pod.requests, usage.requested, node.allocatable);
    if want.cpu_millis > 0 && want.cpu_millis > have.cpu_millis.saturating_sub(used.cpu_millis) {
        reasons.push(INSUFFICIENT_CPU);
    }
    if want.memory_bytes > 0 && want.memory_bytes > have.memory_bytes.saturating_sub(used.memory_bytes) {
        reasons.push(INSUFFICIENT_MEMORY);
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons)
    }
}

/// The FailedScheduling message: `0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match
/// Pod's node affinity/selector.` (counts per reason, sorted as strings, as Kubernetes' `FitError`).
pub fn fit_error<'a>(nodes: usize, failures: impl IntoIterator<Item = &'a [&'static str]>) -> String {
    if nodes == 0 {
        return "no nodes available to schedule pods".into();
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for reasons in failures {
        for reason in reasons {
            *counts.entry(reason).or_default() += 1;
        }
    }
    let mut histogram: Vec<String> = counts.iter().map(|(reason, n)| format!("{n} {reason}")).collect();
    histogram.sort();
    format!("0/{nodes} nodes are available: {}.", histogram.join(", "))
}
