//! Which feasible node a pod goes to, without I/O: fewest pods of the same controller first (Kubernetes
//! spreads a ReplicaSet's pods across nodes with its default topology spread), then the least allocated
//! node (NodeResourcesFit's `LeastAllocated`), and among nodes still tied, one chosen by a hash of the
//! pod's name: deterministic, yet a burst of pods does not all land on the first node by name.

use super::filter::{Demand, NodeFacts, Usage};

/// Kubernetes' score range.
const MAX_SCORE: u64 = 100;

/// `LeastAllocated`: the free share of cpu and memory once the pod is placed, 0-100, averaged.
pub fn least_allocated(pod: &Demand, node: &NodeFacts, usage: &Usage) -> u64 {
    let free = |requested: u64, allocatable: u64| {
        if allocatable == 0 {
            return 0;
        }
        allocatable.saturating_sub(requested) * MAX_SCORE / allocatable
    };
    let cpu = free(usage.nonzero.cpu_millis + pod.nonzero.cpu_millis, node.allocatable.cpu_millis);
    let memory = free(usage.nonzero.memory_bytes + pod.nonzero.memory_bytes, node.allocatable.memory_bytes);
    (cpu + memory) / 2
}

/// The pod's siblings (same controller owner) already on the node.
pub fn siblings(pod: &Demand, usage: &Usage) -> u32 {
    pod.owner.as_ref().and_then(|o| usage.owners.get(o)).copied().unwrap_or(0)
}

/// The node for `pod` (named `key`, `namespace/name`) among `feasible` (in name order); none when empty.
pub fn pick<'a>(pod: &Demand, key: &str, feasible: &[(&'a NodeFacts, &Usage)]) -> Option<&'a NodeFacts> {
    let rank =
        |(node, usage): &(&NodeFacts, &Usage)| (siblings(pod, usage), MAX_SCORE - least_allocated(pod, node, usage));
    let best = feasible.iter().map(rank).min()?;
    let tied: Vec<&'a NodeFacts> = feasible.iter().filter(|n| rank(n) == best).map(|(node, _)| *node).collect();
    let at = (fnv1a(key) % tied.len() as u64) as usize;
    Some(tied[at])
}

/// FNV-1a: a stable hash (std's is seeded per process, which would make placements differ run to run).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}
