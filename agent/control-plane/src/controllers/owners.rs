//! Adoption and release (controller_ref_manager.go): a controller claims the objects its selector
//! matches that no controller owns by adding itself as their controller, and lets go of those it owns that
//! stopped matching. Written as merge patches of `metadata.ownerReferences`, so no read is needed first.

use testbed_api::objects::{LabelSelector, ObjectMeta, OwnerReference, MIRROR_ANNOTATION};

use crate::client::{Client, ClientError, Object};
use crate::controllers::podutil::{controller_of, controller_ref};

/// What a controller does with one candidate.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// Already its own and matching.
    Owned,
    /// An orphan that matches: adopt it.
    Adopt,
    /// Its own but no longer matching: release it.
    Release,
    /// Someone else's, or an orphan that does not match.
    Ignore,
}

/// How the controller `owner` (with `selector`) stands to `dependent`. An empty selector claims nothing:
/// it would take the whole namespace. A mirror pod is never adopted: its node's agent keeps it as the
/// copy of a static pod, so a ReplicaSet counting or deleting it would fight that agent (Kubernetes
/// leaves this case open; testbed closes it).
pub fn claim(owner: &ObjectMeta, selector: &LabelSelector, dependent: &ObjectMeta) -> Claim {
    let matches = *selector != LabelSelector::default() && selector.matches(&dependent.labels);
    match controller_of(dependent) {
        Some(r) if Some(&r.uid) == owner.uid.as_ref() => {
            if matches {
                Claim::Owned
            } else {
                Claim::Release
            }
        }
        Some(_) => Claim::Ignore,
        None if matches && !dependent.annotations.contains_key(MIRROR_ANNOTATION) => Claim::Adopt,
        None => Claim::Ignore,
    }
}

/// Makes `owner` (of `kind`) the controller of the object at `path`; answers the object as written.
pub async fn adopt<T: Object>(
    client: &Client,
    path: &str,
    kind: &str,
    owner: &ObjectMeta,
    dependent: &ObjectMeta,
) -> Result<T, ClientError> {
    let mut refs = dependent.owner_references.clone();
    refs.push(controller_ref(kind, owner));
    write(client, path, &refs).await
}

/// Removes `owner` from the owners of the object at `path`.
pub async fn release<T: Object>(
    client: &Client,
    path: &str,
    owner: &ObjectMeta,
    dependent: &ObjectMeta,
) -> Result<T, ClientError> {
    let refs: Vec<_> =
        dependent.owner_references.iter().filter(|r| Some(&r.uid) != owner.uid.as_ref()).cloned().collect();
    write(client, path, &refs).await
}

async fn write<T: Object>(client: &Client, path: &str, refs: &[OwnerReference]) -> Result<T, ClientError> {
    // Merge patch replaces lists whole; `null` removes the field when nothing is left.
    let refs = if refs.is_empty() { serde_json::Value::Null } else { serde_json::json!(refs) };
    client.merge_patch(path, &serde_json::json!({"metadata": {"ownerReferences": refs}})).await
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn claims_orphans_that_match_and_releases_its_own_that_do_not() {
        let owner = ObjectMeta { name: "rs".into(), uid: Some("u1".into()), ..Default::default() };
        let selector =
            LabelSelector { match_labels: BTreeMap::from([("app".into(), "web".into())]), ..Default::default() };
        let web = BTreeMap::from([("app".into(), "web".into())]);
        let orphan = ObjectMeta { labels: web.clone(), ..Default::default() };
        assert_eq!(claim(&owner, &selector, &orphan), Claim::Adopt);
        assert_eq!(claim(&owner, &LabelSelector::default(), &orphan), Claim::Ignore);
        let mut own = orphan.clone();
        own.owner_references.push(controller_ref("ReplicaSet", &owner));
        assert_eq!(claim(&owner, &selector, &own), Claim::Owned);
        own.labels.clear();
        assert_eq!(claim(&owner, &selector, &own), Claim::Release);
        let other = ObjectMeta { uid: Some("u2".into()), ..owner.clone() };
        let mut theirs = orphan.clone();
        theirs.owner_references.push(controller_ref("ReplicaSet", &other));
        assert_eq!(claim(&owner, &selector, &theirs), Claim::Ignore);
        assert_eq!(claim(&owner, &selector, &ObjectMeta::default()), Claim::Ignore);
        let mut mirror = orphan.clone();
        mirror.annotations.insert(MIRROR_ANNOTATION.into(), "hash".into());
        assert_eq!(claim(&owner, &selector, &mirror), Claim::Ignore, "a static pod's mirror is its node's");
    }
}
