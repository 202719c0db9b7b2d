//! The loop's decisions, without I/O: from the API pods bound to this node, the pods the loop created (its
//! ownership records) and the names on the node, what to create and what to delete. A pod on the node that
//! the loop did not create (a static pod of the node-local API) is never an action's target.

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

/// An API pod this node should run, as the loop needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    pub uid: String,
    pub spec: testbed_api::PodSpec,
    /// `terminationGracePeriodSeconds`.
    pub grace_secs: Option<u64>,
}

/// A node pod the loop created for an API pod (persisted, `owned.rs`): the node pod's name is the API
/// pod's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub key: PodKey,
    pub uid: String,
    pub grace_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Run the API pod on the node.
    Create { key: PodKey, wanted: Wanted },
    /// Remove the node pod `name` (its API pod is gone, replaced, or no longer bound here).
    Delete { name: String, grace_secs: Option<u64> },
    /// The API pod cannot run here: the name is taken on the node (a node-local pod, or another namespace's
    /// pod of the same name). Its status says so; nothing on the node changes.
    Blocked { key: PodKey, reason: String },
}

/// What the loop knows when it decides.
pub struct Inputs<'a> {
    pub wanted: &'a BTreeMap<PodKey, Wanted>,
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
        let still_wanted = inp.wanted.get(&owner.key).is_some_and(|w| w.uid == owner.uid);
        if !still_wanted && !inp.busy.contains(name) {
            actions.push(Action::Delete { name: name.clone(), grace_secs: owner.grace_secs });
        }
    }
    // Names a create was decided for in this pass (two namespaces' pods of one name: the first wins).
    let mut claimed: BTreeMap<&str, &PodKey> = BTreeMap::new();
    for (key, wanted) in inp.wanted {
        let name = key.name.as_str();
        if let Some(first) = claimed.get(name) {
            let reason = format!("pod {first} of the same name runs on this node");
            actions.push(Action::Blocked { key: key.clone(), reason });
            continue;
        }
        match inp.owned.get(name) {
            Some(owner) if owner.key == *key && owner.uid == wanted.uid => {
                claimed.insert(name, key);
                // Ours; gone from the node only if someone removed it behind the loop's back.
                if !inp.on_node.contains(name) && !inp.busy.contains(name) && !inp.rejected.contains(&wanted.uid) {
                    actions.push(Action::Create { key: key.clone(), wanted: wanted.clone() });
                }
            }
            // Another incarnation (same key, new uid) or another namespace's pod: created once it is deleted.
            Some(owner) if owner.key != *key && inp.wanted.get(&owner.key).is_some_and(|w| w.uid == owner.uid) => {
                let reason = format!("pod {} of the same name runs on this node", owner.key);
                actions.push(Action::Blocked { key: key.clone(), reason });
            }
            Some(_) => {}
            None if inp.on_node.contains(name) => {
                let reason = "a node-local pod of the same name runs on this node".to_string();
                actions.push(Action::Blocked { key: key.clone(), reason });
            }
            None => {
                claimed.insert(name, key);
                if !inp.busy.contains(name) && !inp.rejected.contains(&wanted.uid) {
                    actions.push(Action::Create { key: key.clone(), wanted: wanted.clone() });
                }
            }
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
        };
        Wanted { uid: uid.into(), spec, grace_secs: Some(0) }
    }
    fn owner(ns: &str, name: &str, uid: &str) -> (String, Owner) {
        (name.into(), Owner { key: key(ns, name), uid: uid.into(), grace_secs: Some(5) })
    }

    struct Case {
        wanted: BTreeMap<PodKey, Wanted>,
        owned: BTreeMap<String, Owner>,
        on_node: BTreeSet<String>,
        busy: HashSet<String>,
        rejected: HashSet<String>,
    }
    impl Case {
        fn new() -> Self {
            Case {
                wanted: BTreeMap::new(),
                owned: BTreeMap::new(),
                on_node: BTreeSet::new(),
                busy: HashSet::new(),
                rejected: HashSet::new(),
            }
        }
        fn plan(&self) -> Vec<Action> {
            plan(&Inputs {
                wanted: &self.wanted,
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
            })
            .collect()
    }

    #[test]
    fn creates_missing_and_deletes_gone_leaving_node_local_pods_alone() {
        let mut c = Case::new();
        c.wanted.insert(key("default", "new"), wanted("new", "u1"));
        c.owned.extend([owner("default", "gone", "u2")]);
        c.on_node.extend(["gone".to_string(), "static".to_string()]);
        assert_eq!(names(&c.plan()), ["delete gone Some(5)", "create default/new"]);
        // Converged: nothing more to do, and the static pod is never named.
        c.owned = BTreeMap::from([owner("default", "new", "u1")]);
        c.on_node = BTreeSet::from(["new".to_string(), "static".to_string()]);
        assert_eq!(names(&c.plan()), Vec::<String>::new());
    }

    #[test]
    fn a_name_held_by_a_node_local_pod_or_another_namespace_is_blocked() {
        let mut c = Case::new();
        c.wanted.insert(key("default", "static"), wanted("static", "u1"));
        c.on_node.insert("static".into());
        assert_eq!(names(&c.plan()), ["blocked default/static"]);

        let mut c = Case::new();
        c.wanted.insert(key("a", "web"), wanted("web", "u1"));
        c.wanted.insert(key("b", "web"), wanted("web", "u2"));
        assert_eq!(names(&c.plan()), ["create a/web", "blocked b/web"]);
        // b/web first on the node: a/web waits for it.
        c.owned = BTreeMap::from([owner("b", "web", "u2")]);
        c.on_node.insert("web".into());
        assert_eq!(names(&c.plan()), ["blocked a/web"]);
    }

    #[test]
    fn a_recreated_api_pod_replaces_the_old_one_after_its_delete() {
        let mut c = Case::new();
        c.wanted.insert(key("default", "web"), wanted("web", "new-uid"));
        c.owned.extend([owner("default", "web", "old-uid")]);
        c.on_node.insert("web".into());
        assert_eq!(names(&c.plan()), ["delete web Some(5)"]);
        c.busy.insert("web".into());
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
        c.busy.insert("slow".into());
        c.wanted.insert(key("default", "lost"), wanted("lost", "u3"));
        c.owned.extend([owner("default", "lost", "u3")]);
        assert_eq!(names(&c.plan()), ["create default/lost"]);
    }
}
