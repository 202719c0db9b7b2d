//! The scheduler (`default-scheduler`): places every pending pod that names it (or no scheduler) on a node,
//! as Kubernetes' does. It lists and watches every pod (the pending ones to place, the bound ones for what
//! each node already holds) and every node, filters the nodes (`filter.rs`), scores the feasible ones
//! (`score.rs`) and binds the pod through the `pods/binding` subresource. A pod that fits nowhere stays
//! Pending with `PodScheduled: False` (reason `Unschedulable`) and a `FailedScheduling` event, and is tried
//! again with a back-off when nodes or pods change (`queue.rs`). Decisions are made one pod at a time
//! against the cache (`cache.rs`), which counts a pod on its node from the decision on, so bindings run
//! concurrently without overcommitting a node.

mod cache;
mod filter;
mod queue;
mod report;
mod score;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::time::Instant;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use testbed_api::objects::{Node, Pod};

use super::Context;
use crate::client::{list_watch, paths, Change, ClientError, WatchEvent};
use cache::{bound_node, finished, Cache, PodKey};
use filter::Demand;
use queue::Queue;

/// How the scheduler runs.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// The `spec.schedulerName` it serves: `default-scheduler`.
    pub name: String,
    /// Bindings (and failure reports) in flight at once. Throughput grows with it (each binding waits on two
    /// etcd round trips through the API server): 55 pods/s at 16, 231 at 64 in the benchmark.
    pub parallel_binds: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self { name: "default-scheduler".into(), parallel_binds: 64 }
    }
}

/// How one binding or failure report ended.
enum Done {
    Bound { key: PodKey, result: Result<(), ClientError> },
    Reported,
}

struct Scheduler {
    ctx: Context,
    config: SchedulerConfig,
    cache: Cache,
    queue: Queue,
    /// Pods whose binding is under way.
    binding: HashSet<PodKey>,
    pods_listed: bool,
    nodes_listed: bool,
}

/// Schedules until a watch fails (the manager starts it again, which lists afresh).
pub async fn run(ctx: Context, config: SchedulerConfig) -> Result<(), ClientError> {
    let mut pods = list_watch::<Pod>(ctx.client.clone(), &paths::pods(None), &[]);
    let mut nodes = list_watch::<Node>(ctx.client.clone(), &paths::nodes(), &[]);
    let mut s = Scheduler {
        ctx,
        config,
        cache: Cache::default(),
        queue: Queue::default(),
        binding: HashSet::new(),
        pods_listed: false,
        nodes_listed: false,
    };
    let mut work: FuturesUnordered<BoxFuture<'static, Done>> = FuturesUnordered::new();
    loop {
        // Nothing is placed before both lists are in: the cache would not know what nodes hold.
        if s.pods_listed && s.nodes_listed {
            s.queue.promote(Instant::now());
            while work.len() < s.config.parallel_binds {
                let Some(key) = s.queue.pop() else { break };
                if let Some(job) = s.schedule_one(key) {
                    work.push(job);
                }
            }
        }
        let due = s.queue.next_due().map(tokio::time::Instant::from_std);
        tokio::select! {
            change = pods.next() => s.on_pods(change.ok_or_else(ended)??),
            change = nodes.next() => s.on_nodes(change.ok_or_else(ended)??),
            Some(done) = work.next(), if !work.is_empty() => s.finish(done),
            _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {}
        }
    }
}

fn ended() -> ClientError {
    ClientError::Unreachable("a watch ended".into())
}

impl Scheduler {
    /// Whether the pod waits for this scheduler.
    fn is_pending(&self, pod: &Pod) -> bool {
        let name = pod.spec.scheduler_name.as_deref().unwrap_or("default-scheduler");
        name == self.config.name && bound_node(pod).is_none() && !finished(pod)
    }

    fn on_pods(&mut self, change: Change<Pod>) {
        match change {
            Change::Listed(pods) => {
                self.cache.set_pods(pods);
                let pending: Vec<PodKey> = self.cache.pods().filter(|p| self.is_pending(p)).map(PodKey::of).collect();
                for key in pending.iter().filter(|k| !self.binding.contains(*k)) {
                    self.queue.add(key);
                }
                self.pods_listed = true;
                self.queue.wake();
            }
            Change::Event(WatchEvent::Added(pod) | WatchEvent::Modified(pod)) => {
                let key = PodKey::of(&pod);
                let was_placed = self.cache.pod(&key).is_some_and(|p| bound_node(p).is_some() && !finished(p));
                let pending = self.is_pending(&pod);
                if was_placed && finished(&pod) {
                    self.queue.wake();
                }
                self.cache.upsert_pod(pod);
                if pending && !self.binding.contains(&key) {
                    self.queue.add(&key);
                } else if !pending {
                    self.queue.forget(&key);
                }
            }
            Change::Event(WatchEvent::Deleted(pod)) => {
                self.queue.forget(&PodKey::of(&pod));
                if self.cache.remove_pod(&pod) {
                    self.queue.wake();
                }
            }
        }
    }

    fn on_nodes(&mut self, change: Change<Node>) {
        let changed = match change {
            Change::Listed(nodes) => {
                self.nodes_listed = true;
                self.cache.set_nodes(&nodes)
            }
            Change::Event(WatchEvent::Added(node) | WatchEvent::Modified(node)) => self.cache.upsert_node(&node),
            Change::Event(WatchEvent::Deleted(node)) => {
                self.cache.remove_node(&node);
                false
            }
        };
        if changed {
            self.queue.wake();
        }
    }

    /// Filters and scores the nodes for one pod: a binding to start, or a failure report.
    fn schedule_one(&mut self, key: PodKey) -> Option<BoxFuture<'static, Done>> {
        let pod = self.cache.pod(&key).filter(|p| self.is_pending(p))?.clone();
        let demand = Demand::of(&pod);
        let mut feasible = Vec::new();
        let mut failures = Vec::new();
        for (node, usage) in self.cache.nodes() {
            match filter::filter(&demand, node, usage) {
                Ok(()) => feasible.push((node, usage)),
                Err(reasons) => failures.push(reasons),
            }
        }
        let Some(node) = score::pick(&demand, &key.to_string(), &feasible).map(|n| n.name.clone()) else {
            let message = filter::fit_error(failures.len(), failures.iter().map(Vec::as_slice));
            self.queue.park(&key, Instant::now());
            let ctx = self.ctx.clone();
            return Some(Box::pin(async move {
                report::unschedulable(&ctx, &pod, &message).await;
                Done::Reported
            }));
        };
        self.cache.assume(&key, pod.metadata.uid.as_deref().unwrap_or(""), &node);
        self.binding.insert(key.clone());
        let ctx = self.ctx.clone();
        Some(Box::pin(async move {
            let result = report::bind(&ctx, &pod, &node).await;
            Done::Bound { key, result }
        }))
    }

    fn finish(&mut self, done: Done) {
        let Done::Bound { key, result } = done else { return };
        self.binding.remove(&key);
        match result {
            Ok(()) => self.queue.forget(&key),
            // Bound by someone else, or deleted: the watch shows which.
            Err(e) if e.is_conflict() || e.is_not_found() => {
                self.cache.forget(&key);
                self.queue.forget(&key);
            }
            Err(e) => {
                tracing::warn!(pod = %key, error = %e, "binding failed; tried again after a back-off");
                self.cache.forget(&key);
                self.queue.park(&key, Instant::now());
            }
        }
    }
}
