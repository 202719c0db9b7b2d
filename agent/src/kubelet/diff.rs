//! The loop's decisions, without I/O: from the API pods bound to this node, the pods the loop created (its
//! ownership records) and the names on the node, what to create and what to delete. A pod on the node that
//! the loop did not create (a static pod of the node-local API) is never an action's target. An API pod runs
//! on the node under [`node_pod_name`], so pods of one name in two namespaces both run.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::{Deserialize, Serialize};

/// An API pod: namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for PodKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The node pod that runs API pod `key` ([`testbed_api::objects::node_pod_name`]).
pub fn node_pod_name(key: &PodKey) -> String {
    testbed_api::objects::node_pod_name(&key.namespace, &key.name)
}

/// An API pod this node should run, as the loop needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    pub uid: String,
    pub spec: testbed_api::PodSpec,
    /// `terminationGracePeriodSeconds`.
    pub grace_secs: Option<u64>,
}

/// A node pod the loop created for an API pod (persisted, `owned.rs`, by node pod name: [`node_pod_name`] of
/// `key`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub key: PodKey,
    pub uid: String,
    pub grace_secs: Option<u64>,
}

/// An API pod bound here that was deleted gracefully (it has a `deletionTimestamp`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terminating {
    pub uid: String,
    /// `deletionGracePeriodSeconds`: SIGTERM, then SIGKILL after this long.
    pub grace_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Run the API pod on the node.
    Create { key: PodKey, wanted: Box<Wanted> },
    /// Remove the node pod `name` (its API pod is gone, replaced, terminating, or no longer bound here).
    Delete { name: String, grace_secs: Option<u64> },
    /// The terminating API pod runs nothing here any more: delete it from the API (grace 0, on its uid).
    Finish { key: PodKey, uid: String },
    /// The API pod cannot run here: a node-local pod holds its node pod name. Its status says so; nothing on
    /// the node changes.
    Blocked { key: PodKey, reason: String },
}

/// What the loop knows when it decides.
pub struct Inputs<'a> {
    /// The API pods to run: bound here, not terminating.
    pub wanted: &'a BTreeMap<PodKey, Wanted>,
    /// The API pods bound here that are terminating.
    pub terminating: &'a BTreeMap<PodKey, Terminating>,
    pub owned: &'a BTreeMap<String, Owner>,
    /// Every pod name on the node, whoever created it.
    pub on_node: &'a BTreeSet<String>,
    /// Names with a create or delete under way: left alone until it ends.
    pub busy: &'a HashSet<String>,
    /// UIDs whose spec the runtime refused: not tried again (their status says Failed).
    pub rejected: &'a HashSet<String>,
}

pub fn plan(inp: &Inputs<'_>) -> Vec<Action> {
    let mut actions = Vec::new();
    for (name, owner) in inp.owned {
        // A record under another name than its key's is from an agent that named node pods otherwise: that
        // pod goes, and the pod comes back under its name now.
        let still_wanted =
            *name == node_pod_name(&owner.key) && inp.wanted.get(&owner.key).is_some_and(|w| w.uid == owner.uid);
        if !still_wanted && !inp.busy.contains(name) {
            // A terminating pod stops with the grace of its deletion (the kubelet's killPod); one gone from
            // the API with the grace it was created with.
            let grace_secs = match inp.terminating.get(&owner.key) {
                Some(t) if t.uid == owner.uid => t.grace_secs,
                _ => owner.grace_secs,
            };
            actions.push(Action::Delete { name: name.clone(), grace_secs });
        }
    }
    for (key, t) in inp.terminating {
        let name = node_pod_name(key);
        let runs_here = inp.owned.get(&name).is_some_and(|o| o.key == *key && o.uid == t.uid);
        if !runs_here && !inp.busy.contains(&name) {
            actions.push(Action::Finish { key: key.clone(), uid: t.uid.clone() });
        }
    }
    for (key, wanted) in inp.wanted {
        let name = node_pod_name(key);
        let startable = !inp.busy.contains(&name) && !inp.rejected.contains(&wanted.uid);
        match inp.owned.get(&name) {
            // Ours, and gone from the node: someone removed it behind the loop's back.
            Some(owner)
                if owner.key == *key && owner.uid == wanted.uid && !inp.on_node.contains(&name) && startable =>
            {
                actions.push(Action::Create { key: key.clone(), wanted: Box::new(wanted.clone()) });
            }
            // Ours and there (or busy), or another incarnation (same key, new uid): created once it is deleted.
            Some(_) => {}
            None if inp.on_node.contains(&name) => {
                let reason = format!("a node-local pod named {name} runs on this node");
                actions.push(Action::Blocked { key: key.clone(), reason });
            }
            None if startable => actions.push(Action::Create { key: key.clone(), wanted: Box::new(wanted.clone()) }),
            None => {}
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ns: &str, name: &str) -> PodKey {
        PodKey { namespace: ns.into(), name: name.into() }
    }
    fn wanted(name: &str, uid: &str) -> Wanted {
        let spec = testbed_api::PodSpec {
            name: name.into(),
            containers: vec![],
            restart_policy: Default::default(),
            share_process_namespace: false,
            host_network: false,
            ..Default::default()
        };
        Wanted { uid: uid.into(), spec, grace_secs: Some(0) }
    }
    fn owner(ns: &str, name: &str, uid: &str) -> (String, Owner) {
        let key = key(ns, name);
        (node_pod_name(&key), Owner { key, uid: uid.into(), grace_secs: Some(5) })
    }
    fn node(ns: &str, name: &str) -> String {
        node_pod_name(&key(ns, name))
    }

    struct Case {
        wanted: BTreeMap<PodKey, Wanted>,
        owned: BTreeMap<String, Owner>,
        terminating: BTreeMap<PodKey, Terminating>,
        on_node: BTreeSet<String>,
        busy: HashSet<String>,
        rejected: HashSet<String>,
    }
    impl Case {
        fn new() -> Self {
            Case {
                wanted: BTreeMap::new(),
                owned: BTreeMap::new(),
                terminating: BTreeMap::new(),
                on_node: BTreeSet::new(),
                busy: HashSet::new(),
                rejected: HashSet::new(),
            }
        }
        fn plan(&self) -> Vec<Action> {
            plan(&Inputs {
                wanted: &self.wanted,
                terminating: &self.terminating,
                owned: &self.owned,
                on_node: &self.on_node,
                busy: &self.busy,
                rejected: &self.rejected,
            })
        }
    }
    fn names(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Action::Create { key, .. } => format!("create {key}"),
                Action::Delete { name, grace_secs } => format!("delete {name} {grace_secs:?}"),
                Action::Blocked { key, .. } => format!("blocked {key}"),
                Action::Finish { key, uid } => format!("finish {key} {uid}"),
            })
            .collect()
    }

    #[test]
    fn creates_missing_and_deletes_gone_leaving_node_local_pods_alone() {
        let mut c = Case::new();
        c.wanted.insert(key("default", "new"), wanted("new", "u1"));
        c.owned.extend([owner("default", "gone", "u2")]);
        c.on_node.extend([node("default", "gone"), "static".to_string()]);
        let gone = node("default", "gone");
        assert_eq!(names(&c.plan()), [format!("delete {gone} Some(5)"), "create default/new".into()]);
        // Converged: nothing more to do, and the static pod is never named.
        c.owned = BTreeMap::from([owner("default", "new", "u1")]);
        c.on_node = BTreeSet::from([node("default", "new"), "static".to_string()]);
        assert_eq!(names(&c.plan()), Vec::<String>::new());
    }

    #[test]
    fn one_name_in_two_namespaces_runs_twice_and_a_node_local_holder_blocks() {
        let mut c = Case::new();
        c.wanted.insert(key("a", "web"), wanted("web", "u1"));
        c.wanted.insert(key("b", "web"), wanted("web", "u2"));
        assert_eq!(names(&c.plan()), ["create a/web", "create b/web"]);
        c.owned = BTreeMap::from([owner("a", "web", "u1"), owner("b", "web", "u2")]);
        c.on_node = BTreeSet::from([node("a", "web"), node("b", "web")]);
        assert_eq!(names(&c.plan()), Vec::<String>::new());

        let mut c = Case::new();
        c.wanted.insert(key("default", "static"), wanted("static", "u1"));
        c.on_node.insert(node("default", "static"));
        assert_eq!(names(&c.plan()), ["blocked default/static"]);
    }

    #[test]
    fn node_pod_names_are_distinct_dns_labels() {
        let names = [key("a-b", "c"), key("a", "b-c"), key("default", "web"), key("kube-system", "web")]
            .map(|k| node_pod_name(&k));
        assert_eq!(names.iter().collect::<BTreeSet<_>>().len(), names.len(), "{names:?}");
        assert!(names[2].starts_with("default-web-"), "{}", names[2]);
        let long = node_pod_name(&key(&"n".repeat(63), &"p".repeat(63)));
        assert!(testbed_api::validate::is_dns_label(&long, 63), "{long}");
        let cut_at_dash = node_pod_name(&key(&format!("{}-", "n".repeat(53)), "x"));
        assert!(testbed_api::validate::is_dns_label(&cut_at_dash, 63), "{cut_at_dash}");
    }

    #[test]
    fn a_record_of_an_older_naming_is_replaced_under_the_new_name() {
        let mut c = Case::new();
        c.wanted.insert(key("default", "web"), wanted("web", "u1"));
        c.owned.insert("web".into(), Owner { key: key("default", "web"), uid: "u1".into(), grace_secs: Some(5) });
        c.on_node.insert("web".into());
        assert_eq!(names(&c.plan()), ["delete web Some(5)", "create default/web"]);
    }

    #[test]
    fn a_recreated_api_pod_replaces_the_old_one_after_its_delete() {
        let mut c = Case::new();
        let web = node("default", "web");
        c.wanted.insert(key("default", "web"), wanted("web", "new-uid"));
        c.owned.extend([owner("default", "web", "old-uid")]);
        c.on_node.insert(web.clone());
        assert_eq!(names(&c.plan()), [format!("delete {web} Some(5)")]);
        c.busy.insert(web.clone());
        assert_eq!(names(&c.plan()), Vec::<String>::new(), "nothing while the delete runs");
        c.busy.clear();
        c.owned.clear();
        c.on_node.clear();
        assert_eq!(names(&c.plan()), ["create default/web"]);
    }

    #[test]
    fn busy_and_rejected_pods_wait_and_a_vanished_own_pod_comes_back() {
        let mut c = Case::new();
        c.wanted.insert(key("default", "bad"), wanted("bad", "u1"));
        c.rejected.insert("u1".into());
        c.wanted.insert(key("default", "slow"), wanted("slow", "u2"));
        c.busy.insert(node("default", "slow"));
        c.wanted.insert(key("default", "lost"), wanted("lost", "u3"));
        c.owned.extend([owner("default", "lost", "u3")]);
        assert_eq!(names(&c.plan()), ["create default/lost"]);
    }

    #[test]
    fn a_terminating_pod_is_stopped_with_its_deletion_grace_then_finished_in_the_api() {
        let mut c = Case::new();
        let web = node("default", "web");
        c.owned.extend([owner("default", "web", "u1")]);
        c.on_node.insert(web.clone());
        c.terminating.insert(key("default", "web"), Terminating { uid: "u1".into(), grace_secs: Some(2) });
        assert_eq!(names(&c.plan()), [format!("delete {web} Some(2)")], "the deletion's grace, not the spec's 5");
        c.busy.insert(web.clone());
        assert_eq!(names(&c.plan()), Vec::<String>::new(), "nothing while it stops");
        c.busy.clear();
        c.owned.clear();
        c.on_node.clear();
        assert_eq!(names(&c.plan()), ["finish default/web u1"]);
        // Another incarnation's record: that pod goes with its own grace, this one is finished.
        c.owned.extend([owner("default", "web", "u0")]);
        assert_eq!(names(&c.plan()), [format!("delete {web} Some(5)"), "finish default/web u1".into()]);
    }
}
