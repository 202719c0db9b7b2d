//! The follow loop: one session per connection to the API server. A session registers the Node, renews the
//! Lease, lists and watches the pods bound here (`list_watch` re-lists after a 410), converges the node's
//! pods to them (`diff::plan`; creates and deletes run in tasks of their own, so they finish even when the
//! session ends) and writes pod status back when it changes. It lists and watches every Node too, and hands
//! their subnet leases to `subnets.rs` whenever one changes. Any API error ends the session; pods and
//! network stay as they are, and the next session, after a capped back-off, registers and lists again,
//! which applies whatever changed meanwhile.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use testbed_api::objects::{Node, NodeStatus, Pod, PodStatus};
use testbed_api::{ControlPlaneStatus, PodPhase};
use testbed_control_plane::client::{list_watch, now_rfc3339, paths, Change, Client, ClientError, WatchEvent};

use super::diff::{self, node_pod_name, Action, Owner, PodKey, Terminating, Wanted};
use super::leases::{Leases, SubnetLease};
use super::mirror::{self, MirrorAction, NodeRef};
use super::node::{self, Machine, NodeView};
use super::owned::Owned;
use super::status::{self, Note};
use super::subnets::Subnets;
use super::{lock, tasks::Tasks};
use crate::pod::Agent;

const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// A control plane that is down is asked again at least this often (the kubelet's cap is 7 s for its
/// node status; 10 s keeps a lab that lost its API server quiet without slowing its return much).
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Until the API has answered once. `up` joins each agent as soon as its node is set up, while etcd and
/// the API server may still be starting: the Node registers within this of the API's first answer, which is
/// what `up` waits for.
const BACKOFF_FIRST_CONTACT: Duration = Duration::from_secs(1);
/// How often the runtime's pod states are compared with what the API was told (a container that exited,
/// a restart). An in-memory read; writes happen only on a change.
const STATUS_SYNC: Duration = Duration::from_millis(500);
/// A full pass even without events: retries failed creates and catches a pod that was moved to another
/// node by an update (the watch's field selector then no longer shows it at all).
const RESYNC: Duration = Duration::from_secs(30);
/// Status writes in flight at once (100 pods turning Running together).
const WRITERS: usize = 8;
/// A Lease renewal due this long after the last one means the node was away (a paused VM, a cut link): the
/// node lifecycle controller may have marked it NotReady and evicted its pods meanwhile, and the session's
/// watches may be stale (their connections resume with events the server is still retransmitting). The
/// session ends, and the next one writes the node's status at once and lists its pods afresh.
const AWAY: Duration = Duration::from_secs(testbed_api::NODE_LEASE_RENEW_SECS * 3 / 2);

/// What a loop is given.
pub struct Follower {
    pub agent: Arc<Agent>,
    pub api: Arc<Client>,
    pub node: String,
    pub owned: Arc<Owned>,
    pub shared: Arc<Mutex<ControlPlaneStatus>>,
    pub tasks: Tasks,
    pub subnets: Arc<Subnets>,
}

impl Follower {
    pub fn into_loop(self) -> Loop {
        Loop {
            f: self,
            machine: Machine::read(),
            pods: BTreeMap::new(),
            blocked: HashMap::new(),
            written: HashMap::new(),
            node_status: None,
            node_written: None,
            node_spec: None,
            leases: None,
            host_ip: None,
            node_ref: None,
            mirror_errors: HashMap::new(),
            reached: false,
        }
    }
}

pub struct Loop {
    f: Follower,
    machine: Machine,
    /// The API pods bound here, as last listed or watched.
    pods: BTreeMap<PodKey, Pod>,
    blocked: HashMap<PodKey, String>,
    /// The status last written per pod.
    written: HashMap<PodKey, Written>,
    /// The Node status last written, and when (a new session writes it at once).
    node_status: Option<NodeStatus>,
    node_written: Option<Instant>,
    node_spec: Option<node::Registration>,
    /// Every Node's subnet lease as last listed or watched (None until the first list).
    leases: Option<Leases>,
    host_ip: Option<String>,
    /// This node's Node (its uid owns the mirror pods), from the Node watch.
    node_ref: Option<NodeRef>,
    /// Mirror pods whose create or delete failed, with the error, so each is logged once.
    mirror_errors: HashMap<PodKey, String>,
    reached: bool,
}

/// A pod status this agent wrote, and the version of the pod its write made.
struct Written {
    uid: String,
    resource_version: Option<String>,
    status: PodStatus,
}

/// The status a new one is compared with: the API's when someone else wrote the pod after this agent did
/// (the node lifecycle controller marks the pods of a node it lost touch with not Ready; the kubelet's status
/// manager likewise sets its own status again when the API's differs), else the one last written, which
/// the watch may not have delivered yet.
fn reference_status<'a>(pod: &'a Pod, written: Option<&'a Written>) -> Option<&'a PodStatus> {
    let Some(w) = written else { return pod.status.as_ref() };
    let version = |v: Option<&String>| v.and_then(|v| v.parse::<u64>().ok());
    match (version(pod.metadata.resource_version.as_ref()), version(w.resource_version.as_ref())) {
        (Some(api), Some(ours)) if api <= ours => Some(&w.status),
        _ => pod.status.as_ref(),
    }
}

impl Loop {
    pub async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        let mut cap = BACKOFF_FIRST_CONTACT;
        loop {
            let error = match self.session().await {
                Err(e) => e,
                Ok(never) => match never {},
            };
            tracing::warn!(error = %error, "control plane: session ended; pods and network stay as they are");
            {
                let mut s = lock(&self.f.shared);
                s.connected = false;
                s.last_error = Some(error.to_string());
            }
            if std::mem::take(&mut self.reached) {
                backoff = BACKOFF_MIN;
                cap = BACKOFF_MAX;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(cap);
        }
    }

    async fn session(&mut self) -> Result<std::convert::Infallible, ClientError> {
        self.node_spec = None;
        self.node_written = None;
        self.node_heartbeat().await?;
        self.renew_lease().await?;
        let mut renewed = Instant::now();
        self.reached = true;
        {
            let mut s = lock(&self.f.shared);
            s.connected = true;
            s.last_error = None;
            s.server = Some(self.f.api.server().to_string());
        }
        let selector = format!("spec.nodeName={}", self.f.node);
        let mut changes = list_watch::<Pod>(self.f.api.clone(), &paths::pods(None), &[("fieldSelector", &selector)]);
        let mut nodes = list_watch::<Node>(self.f.api.clone(), &paths::nodes(), &[]);
        let done = self.f.tasks.done.clone();
        let mut lease = tokio::time::interval(node::LEASE_RENEW);
        let mut sync = tokio::time::interval(STATUS_SYNC);
        let mut resync = tokio::time::interval(RESYNC);
        for tick in [&mut lease, &mut sync, &mut resync] {
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.reset();
        }
        loop {
            tokio::select! {
                change = changes.next() => {
                    match change {
                        Some(Ok(change)) => self.apply(change),
                        Some(Err(e)) => return Err(e),
                        None => return Err(ClientError::Unreachable("the pod watch ended".into())),
                    }
                    self.reconcile();
                }
                change = nodes.next() => match change {
                    Some(Ok(change)) => {
                        // Renewed with it: the controller times the Lease, not the status.
                        if self.apply_nodes(change) {
                            self.renew_lease().await?;
                            renewed = Instant::now();
                            self.node_written = None;
                            self.node_heartbeat().await?;
                        }
                    }
                    Some(Err(e)) => return Err(e),
                    None => return Err(ClientError::Unreachable("the node watch ended".into())),
                },
                _ = done.notified() => {
                    self.reconcile();
                    self.sync_statuses().await?;
                }
                _ = lease.tick() => {
                    let since = renewed.elapsed();
                    if since > AWAY {
                        return Err(ClientError::Unreachable(format!(
                            "no Lease renewal for {:.1} s: the node was away, listing again",
                            since.as_secs_f64()
                        )));
                    }
                    self.renew_lease().await?;
                    renewed = Instant::now();
                    self.node_heartbeat().await?;
                }
                _ = sync.tick() => {
                    self.sync_mirrors().await?;
                    self.sync_statuses().await?;
                }
                _ = resync.tick() => self.reconcile(),
            }
        }
    }

    fn apply(&mut self, change: Change<Pod>) {
        let key = |p: &Pod| PodKey {
            namespace: p.metadata.namespace.clone().unwrap_or_default(),
            name: p.metadata.name.clone(),
        };
        match change {
            Change::Listed(pods) => self.pods = pods.into_iter().map(|p| (key(&p), p)).collect(),
            Change::Event(WatchEvent::Added(p) | WatchEvent::Modified(p)) => {
                if p.spec.node_name.as_deref() == Some(self.f.node.as_str()) {
                    self.pods.insert(key(&p), p);
                } else {
                    self.pods.remove(&key(&p));
                }
            }
            Change::Event(WatchEvent::Deleted(p)) => {
                let k = key(&p);
                if self.pods.get(&k).is_some_and(|mine| mine.metadata.uid == p.metadata.uid) {
                    self.pods.remove(&k);
                }
            }
        }
    }

    /// Keeps every Node's lease and publishes them when one changed (a Node's status heartbeat is none).
    /// Answers whether this node's Ready condition in the API is not the one last written here: the node
    /// lifecycle controller sets it Unknown when the Lease went unrenewed for its grace period (a loaded
    /// guest, a slow API), and the kubelet then writes its own status again at once rather than at the next
    /// `NODE_STATUS_PERIOD`, before the eviction timeout takes the node's pods.
    fn apply_nodes(&mut self, change: Change<Node>) -> bool {
        let own = |n: &Node| {
            (n.metadata.name == self.f.node)
                .then(|| NodeRef { name: n.metadata.name.clone(), uid: n.metadata.uid.clone().unwrap_or_default() })
        };
        let mut overwritten = false;
        match &change {
            Change::Listed(nodes) => {
                self.node_ref = nodes.iter().find_map(own);
                let me = nodes.iter().find(|n| own(n).is_some());
                overwritten = me.is_some_and(|n| self.ready_overwritten(n));
            }
            Change::Event(WatchEvent::Added(n) | WatchEvent::Modified(n)) => {
                if let Some(me) = own(n) {
                    self.node_ref = Some(me);
                    overwritten = self.ready_overwritten(n);
                }
            }
            Change::Event(WatchEvent::Deleted(n)) => {
                if own(n).is_some() {
                    self.node_ref = None;
                }
            }
        }
        let mut leases = self.leases.clone().unwrap_or_default();
        match change {
            Change::Listed(nodes) => {
                leases = nodes.iter().map(|n| (n.metadata.name.clone(), SubnetLease::of(n))).collect();
            }
            Change::Event(WatchEvent::Added(n) | WatchEvent::Modified(n)) => {
                leases.insert(n.metadata.name.clone(), SubnetLease::of(&n));
            }
            Change::Event(WatchEvent::Deleted(n)) => {
                leases.remove(&n.metadata.name);
            }
        }
        if self.leases.as_ref() != Some(&leases) {
            self.f.subnets.publish(leases.clone());
            self.leases = Some(leases);
        }
        overwritten
    }

    /// Whether the API's Ready condition of this node differs from the one this session last wrote.
    fn ready_overwritten(&self, api: &Node) -> bool {
        let Some(written) = self.node_status.as_ref().filter(|_| self.node_written.is_some()) else { return false };
        node::ready(api.status.as_ref()) != node::ready(Some(written))
    }

    /// Decides and starts the creates and deletes that bring the node to the API's pods.
    fn reconcile(&mut self) {
        let owned = self.f.owned.snapshot();
        let terminating: BTreeMap<PodKey, Terminating> = self
            .pods
            .iter()
            .filter(|(_, p)| !mirror::is_mirror(p) && p.metadata.deletion_timestamp.is_some())
            .map(|(k, p)| {
                let grace_secs = p.metadata.deletion_grace_period_seconds.and_then(|g| u64::try_from(g).ok());
                (k.clone(), Terminating { uid: p.metadata.uid.clone().unwrap_or_default(), grace_secs })
            })
            .collect();
        let wanted: BTreeMap<PodKey, Wanted> = self
            .pods
            .iter()
            .filter(|(k, p)| !mirror::is_mirror(p) && !terminating.contains_key(*k))
            .filter(|(k, p)| {
                // A finished pod is not started again (the kubelet's rule), unless the node still runs it.
                let finished =
                    matches!(p.status.as_ref().and_then(|s| s.phase), Some(PodPhase::Succeeded | PodPhase::Failed));
                !finished || owned.get(&node_pod_name(k)).is_some_and(|o| o.key == **k)
            })
            .map(|(k, p)| {
                let grace_secs = p.spec.termination_grace_period_seconds.and_then(|g| u64::try_from(g).ok());
                let spec = testbed_api::PodSpec { name: node_pod_name(k), ..p.to_agent_spec() };
                let wanted = Wanted { uid: p.metadata.uid.clone().unwrap_or_default(), spec, grace_secs };
                (k.clone(), wanted)
            })
            .collect();
        let on_node: BTreeSet<String> = self.f.agent.list_pods().into_iter().map(|p| p.name).collect();
        let busy = self.f.tasks.busy();
        let rejected: HashSet<String> = self.f.tasks.rejected().into_keys().collect();
        let actions = diff::plan(&diff::Inputs {
            wanted: &wanted,
            terminating: &terminating,
            owned: &owned,
            on_node: &on_node,
            busy: &busy,
            rejected: &rejected,
        });
        self.blocked.clear();
        for action in actions {
            match action {
                Action::Create { key, wanted } => {
                    let owner = Owner { key, uid: wanted.uid.clone(), grace_secs: wanted.grace_secs };
                    self.f.tasks.create(&self.f.agent, &self.f.owned, owner, *wanted);
                }
                Action::Delete { name, grace_secs } => {
                    self.f.tasks.delete(&self.f.agent, &self.f.owned, name, grace_secs)
                }
                Action::Blocked { key, reason } => {
                    self.blocked.insert(key, reason);
                }
                Action::Finish { key, uid } => self.f.tasks.finish(&self.f.api, key, uid),
            }
        }
        lock(&self.f.shared).pods = owned.len();
    }

    /// Writes the status of every pod whose computed status differs from the one last written.
    async fn sync_statuses(&mut self) -> Result<(), ClientError> {
        let node_pods: HashMap<String, testbed_api::PodStatus> =
            self.f.agent.list_pods().into_iter().map(|p| (p.name.clone(), p)).collect();
        let owned = self.f.owned.snapshot();
        let rejected = self.f.tasks.rejected();
        let now = now_rfc3339();
        // Each mirror's static pod, by the mirror's key.
        let specs = self.f.agent.pod_specs();
        let statics: HashMap<PodKey, &str> = mirror::statics(&specs, &owned)
            .into_iter()
            .filter_map(|s| mirror::mirror_key(s, &self.f.node).map(|k| (k, s.name.as_str())))
            .collect();
        let mut writes = Vec::new();
        for (key, pod) in &self.pods {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let on_node = if mirror::is_mirror(pod) {
                statics.get(key).and_then(|name| node_pods.get(*name))
            } else {
                let name = node_pod_name(key);
                let ours = owned.get(&name).is_some_and(|o| o.key == *key && o.uid == uid);
                if ours {
                    node_pods.get(&name)
                } else {
                    None
                }
            };
            let note = match (rejected.get(&uid), self.blocked.get(key)) {
                (Some(m), _) => Some(Note::Rejected(m.clone())),
                (None, Some(m)) => Some(Note::Blocked(m.clone())),
                (None, None) => None,
            };
            let prev = reference_status(pod, self.written.get(key).filter(|w| w.uid == uid));
            let Some(new) = status::compute(pod, on_node, note.as_ref(), self.host_ip.as_deref(), prev, &now) else {
                continue;
            };
            if prev != Some(&new) {
                writes.push((key.clone(), uid, new));
            }
        }
        let api = &self.f.api;
        let results: Vec<_> = futures::stream::iter(writes)
            .map(|(key, uid, new)| async move {
                let r = api.patch_pod_status(&key.namespace, &key.name, &status::patch_body(&new)).await;
                (key, uid, new, r)
            })
            .buffer_unordered(WRITERS)
            .collect()
            .await;
        for (key, uid, new, result) in results {
            match result {
                Ok(pod) => {
                    let resource_version = pod.metadata.resource_version;
                    self.written.insert(key, Written { uid, resource_version, status: new });
                }
                // Deleted meanwhile: the watch tells.
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        let pods = &self.pods;
        self.written.retain(|k, _| pods.contains_key(k));
        Ok(())
    }

    /// Brings the mirror pods to the node's static pods (`mirror.rs`). An API error about one mirror (its
    /// namespace missing, say) is logged once and tried again on the next pass; only an unreachable API
    /// server ends the session.
    async fn sync_mirrors(&mut self) -> Result<(), ClientError> {
        let Some(node) = self.node_ref.clone() else { return Ok(()) };
        let specs = self.f.agent.pod_specs();
        let statics = mirror::statics(&specs, &self.f.owned.snapshot());
        for action in mirror::plan(&statics, &self.pods, &node) {
            let (key, result) = match action {
                MirrorAction::Create(pod) => {
                    let key = PodKey {
                        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                        name: pod.metadata.name.clone(),
                    };
                    let created = self.f.api.create::<Pod>(&paths::pods(Some(&key.namespace)), &pod).await;
                    (key, created.map(drop))
                }
                MirrorAction::Delete(key) => {
                    let path = paths::pod(&key.namespace, &key.name);
                    let deleted = self.f.api.delete_with(&path, &serde_json::json!({"gracePeriodSeconds": 0})).await;
                    (key, deleted.or_else(|e| if e.is_not_found() { Ok(()) } else { Err(e) }))
                }
            };
            match result {
                Ok(()) => {
                    self.mirror_errors.remove(&key);
                }
                Err(e @ ClientError::Unreachable(_)) => return Err(e),
                Err(e) => {
                    let message = e.to_string();
                    if self.mirror_errors.get(&key) != Some(&message) {
                        tracing::warn!(pod = %key, error = %message, "mirror pod: not written; retried");
                        self.mirror_errors.insert(key, message);
                    }
                }
            }
        }
        Ok(())
    }

    async fn renew_lease(&mut self) -> Result<(), ClientError> {
        let at = node::renew_lease(&self.f.api, &self.f.node).await?;
        lock(&self.f.shared).last_heartbeat = Some(at);
        Ok(())
    }

    /// Registers the Node when its spec is not known to be current, and writes its status when it changed
    /// or `NODE_STATUS_PERIOD` passed.
    async fn node_heartbeat(&mut self) -> Result<(), ClientError> {
        let st = self.f.agent.node_status().await;
        let view = NodeView {
            name: &self.f.node,
            spec: st.spec.as_ref(),
            converged: st.converged,
            last_error: st.last_error.as_deref(),
        };
        self.host_ip = st.spec.as_ref().map(|s| s.underlay.address.to_string());
        let reg = node::registration(&view);
        if self.node_spec.as_ref() != Some(&reg) {
            let held = node::register(&self.f.api, &self.f.node, &reg).await?;
            self.node_spec = Some(reg);
            // What the API holds dates the Ready condition's last transition.
            if self.node_status.is_none() {
                self.node_status = held;
            }
        }
        let prev = self.node_status.as_ref();
        let new = node::status_of(&view, &self.machine, prev, &now_rfc3339());
        let due = self.node_written.is_none_or(|at| at.elapsed() >= node::NODE_STATUS_PERIOD)
            || prev.is_none_or(|p| node::changed(p, &new));
        if due {
            self.f.api.patch_node_status(&self.f.node, &serde_json::to_value(&new).unwrap_or_default()).await?;
            self.node_status = Some(new);
            self.node_written = Some(Instant::now());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use testbed_api::objects::{Pod, PodStatus};

    use super::{reference_status, Written};

    fn pod(version: &str, ip: &str) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.resource_version = Some(version.into());
        pod.status = Some(PodStatus { pod_ip: Some(ip.into()), ..PodStatus::default() });
        pod
    }

    #[test]
    fn a_status_someone_else_wrote_after_ours_is_the_reference_and_a_lagging_watch_is_not() {
        let ours = Written {
            uid: "u".into(),
            resource_version: Some("7".into()),
            status: PodStatus { pod_ip: Some("ours".into()), ..PodStatus::default() },
        };
        let ip = |p: Option<&PodStatus>| p.and_then(|s| s.pod_ip.clone());
        // The watch has not delivered our write yet: compare with what we wrote.
        assert_eq!(ip(reference_status(&pod("6", "old"), Some(&ours))).as_deref(), Some("ours"));
        assert_eq!(ip(reference_status(&pod("7", "ours"), Some(&ours))).as_deref(), Some("ours"));
        // Written after us (the node lifecycle controller): the API's status, so ours is written again.
        assert_eq!(ip(reference_status(&pod("9", "theirs"), Some(&ours))).as_deref(), Some("theirs"));
        assert_eq!(ip(reference_status(&pod("x", "theirs"), Some(&ours))).as_deref(), Some("theirs"));
        assert_eq!(ip(reference_status(&pod("3", "old"), None)).as_deref(), Some("old"));
    }
}
