//! The scheduler's view of the cluster: every pod and node as last listed or watched, and what each node
//! has placed on it. A pod counts on its node while it is bound there and not finished, and also from the
//! moment the scheduler picks the node until the watch shows it bound (an *assumed* pod): a burst of pods
//! is placed against the nodes as they will be, not as the last event showed them.

use std::collections::{BTreeMap, HashMap};

use testbed_api::objects::{Node, Pod};
use testbed_api::PodPhase;

use super::filter::{Demand, NodeFacts, Usage};

/// A pod's namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodKey {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl PodKey {
    /// The key of `pod`.
    pub fn of(pod: &Pod) -> Self {
        Self { namespace: pod.metadata.namespace.clone().unwrap_or_default(), name: pod.metadata.name.clone() }
    }
}

impl std::fmt::Display for PodKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The pod's node, when it is bound.
pub fn bound_node(pod: &Pod) -> Option<&str> {
    pod.spec.node_name.as_deref().filter(|n| !n.is_empty())
}

/// Whether the pod ended (Succeeded or Failed): it takes nothing on its node any more.
pub fn finished(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase), Some(PodPhase::Succeeded | PodPhase::Failed))
}

/// Pods, nodes, and what is placed where.
#[derive(Debug, Default)]
pub struct Cache {
    pods: HashMap<PodKey, Pod>,
    nodes: BTreeMap<String, NodeFacts>,
    /// Pods this scheduler picked a node for that the watch has not shown bound yet: (uid, node).
    assumed: HashMap<PodKey, (String, String)>,
    /// The pods counted on a node: (node, demand).
    placed: HashMap<PodKey, (String, Demand)>,
    usage: HashMap<String, Usage>,
}

impl Cache {
    /// Replaces every pod (a fresh list); assumptions about pods still unbound with the same uid stay.
    pub fn set_pods(&mut self, pods: Vec<Pod>) {
        self.pods = pods.into_iter().map(|p| (PodKey::of(&p), p)).collect();
        self.placed.clear();
        self.usage.clear();
        let keys: Vec<PodKey> = self.pods.keys().chain(self.assumed.keys()).cloned().collect();
        for key in keys {
            self.place(&key);
        }
    }

    /// A pod added or changed.
    pub fn upsert_pod(&mut self, pod: Pod) {
        let key = PodKey::of(&pod);
        self.pods.insert(key.clone(), pod);
        self.place(&key);
    }

    /// A pod deleted; whether it was counted on a node (its room is free now).
    pub fn remove_pod(&mut self, pod: &Pod) -> bool {
        let key = PodKey::of(pod);
        if self.pods.get(&key).is_some_and(|p| p.metadata.uid != pod.metadata.uid) {
            return false;
        }
        self.pods.remove(&key);
        let was_placed = self.placed.contains_key(&key);
        self.place(&key);
        was_placed
    }

    /// Counts the pod on `node` until the watch shows it bound (or [`Cache::forget`]).
    pub fn assume(&mut self, key: &PodKey, uid: &str, node: &str) {
        self.assumed.insert(key.clone(), (uid.to_string(), node.to_string()));
        self.place(key);
    }

    /// Its binding failed: no longer counted where it was assumed.
    pub fn forget(&mut self, key: &PodKey) {
        self.assumed.remove(key);
        self.place(key);
    }

    /// Replaces every node; whether anything a filter reads changed.
    pub fn set_nodes(&mut self, nodes: &[Node]) -> bool {
        let new: BTreeMap<String, NodeFacts> =
            nodes.iter().map(|n| (n.metadata.name.clone(), NodeFacts::of(n))).collect();
        let changed = new != self.nodes;
        self.nodes = new;
        changed
    }

    /// A node added or changed; whether anything a filter reads changed (not a mere heartbeat).
    pub fn upsert_node(&mut self, node: &Node) -> bool {
        let facts = NodeFacts::of(node);
        self.nodes.insert(facts.name.clone(), facts.clone()) != Some(facts)
    }

    /// A node deleted.
    pub fn remove_node(&mut self, node: &Node) {
        self.nodes.remove(&node.metadata.name);
    }

    /// The pod, as last seen.
    pub fn pod(&self, key: &PodKey) -> Option<&Pod> {
        self.pods.get(key)
    }

    /// Every pod.
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods.values()
    }

    /// Every node in name order, with what is placed on it.
    pub fn nodes(&self) -> impl Iterator<Item = (&NodeFacts, &Usage)> {
        static NOTHING: std::sync::OnceLock<Usage> = std::sync::OnceLock::new();
        self.nodes
            .iter()
            .map(|(name, n)| (n, self.usage.get(name).unwrap_or_else(|| NOTHING.get_or_init(Usage::default))))
    }

    /// Brings the pod's count to where it belongs now: its bound node, its assumed node, or none.
    fn place(&mut self, key: &PodKey) {
        let pod = self.pods.get(key);
        if pod.is_some_and(|p| bound_node(p).is_some()) || pod.is_none() {
            // Bound (the watch caught up) or gone: the assumption has served.
            self.assumed.remove(key);
        }
        let want = match pod {
            Some(p) if finished(p) => None,
            Some(p) => match (bound_node(p), self.assumed.get(key)) {
                (Some(node), _) => Some(node.to_string()),
                (None, Some((uid, node))) if p.metadata.uid.as_ref() == Some(uid) => Some(node.clone()),
                _ => None,
            },
            None => None,
        };
        if let Some((node, demand)) = self.placed.remove(key) {
            if let Some(usage) = self.usage.get_mut(&node) {
                usage.remove(&demand);
            }
        }
        if let (Some(node), Some(pod)) = (want, pod) {
            let demand = Demand::of(pod);
            self.usage.entry(node.clone()).or_default().add(&demand);
            self.placed.insert(key.clone(), (node, demand));
        }
    }
}
