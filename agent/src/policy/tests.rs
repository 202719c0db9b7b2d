//! The enforcer on a fake kernel that lists back what was written (the real kernel: agent/tests/policy_real.rs).

use std::sync::{Arc, Mutex};

use testbed_api::{NetworkPolicyNodeSpec, PolicedPod, PolicyRule};

use super::*;

/// The table as text: a write replaces it with the script's table part, a read lists it.
#[derive(Clone, Default)]
struct FakeKernel(Arc<Mutex<Option<String>>>);

impl Nft for FakeKernel {
    fn read(&mut self) -> Result<Option<String>, NftError> {
        Ok(self.0.lock().unwrap().clone())
    }

    fn apply(&mut self, script: &str) -> Result<(), NftError> {
        let table = script.split_once(&format!("delete table {} {}\n", render::FAMILY, render::TABLE));
        *self.0.lock().unwrap() = table.map(|(_, t)| t.to_string());
        Ok(())
    }
}

fn spec(ingress: Option<Vec<PolicyRule>>) -> NetworkPolicyNodeSpec {
    let pod = PolicedPod {
        namespace: "default".into(),
        name: "db".into(),
        ip: "10.244.1.2".parse().unwrap(),
        ingress,
        egress: None,
    };
    NetworkPolicyNodeSpec { pods: vec![pod] }
}

#[test]
fn the_same_spec_twice_runs_nothing_and_drift_is_rewritten() {
    let kernel = FakeKernel::default();
    let enforcer = Enforcer::new(Box::new(kernel.clone()));
    assert!(!enforcer.apply(spec(Some(vec![]))).unwrap().is_empty());
    assert!(enforcer.apply(spec(Some(vec![]))).unwrap().is_empty(), "the same spec again");
    assert!(enforcer.reconcile().unwrap().is_empty(), "nothing drifted");
    assert_eq!(enforcer.status().unwrap().transactions, 1);

    *kernel.0.lock().unwrap() = None;
    assert!(!enforcer.reconcile().unwrap().is_empty(), "a deleted table is written again");
    kernel.0.lock().unwrap().as_mut().unwrap().push_str("# a rule added by hand\n");
    assert!(!enforcer.reconcile().unwrap().is_empty(), "a changed table is written again");
    let status = enforcer.status().unwrap();
    assert_eq!((status.transactions, status.drift_repairs), (3, 2));
    assert_eq!(status.ingress_pods, vec!["10.244.1.2".parse::<std::net::Ipv4Addr>().unwrap()]);

    assert!(!enforcer.apply(spec(None)).unwrap().is_empty(), "a changed spec is written");
    assert!(enforcer.status().unwrap().ingress_pods.is_empty(), "the pod is open again");
}

#[test]
fn a_bad_spec_changes_nothing() {
    let kernel = FakeKernel::default();
    let enforcer = Enforcer::new(Box::new(kernel.clone()));
    enforcer.apply(spec(Some(vec![]))).unwrap();
    let before = kernel.0.lock().unwrap().clone();
    let mut bad = spec(None);
    bad.pods[0].ip = "0.0.0.0".parse().unwrap();
    match enforcer.apply(bad) {
        Err(PolicyError::Invalid(e)) => assert_eq!(e.field.as_deref(), Some("pods[0].ip")),
        other => panic!("{other:?}"),
    }
    assert_eq!(*kernel.0.lock().unwrap(), before);
    assert!(enforcer.reconcile().unwrap().is_empty(), "the refused spec did not become the target");
}

/// A kernel that refuses every write.
struct RefusingKernel;

impl Nft for RefusingKernel {
    fn read(&mut self) -> Result<Option<String>, NftError> {
        Ok(None)
    }

    fn apply(&mut self, _script: &str) -> Result<(), NftError> {
        Err(NftError::Failed { args: "-f -".into(), stderr: "refused".into() })
    }
}

#[test]
fn the_status_names_the_api_policies_only_once_the_kernel_holds_them() {
    let sources = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    let enforcer = Enforcer::new(Box::new(FakeKernel::default()));
    enforcer.apply_built_from(spec(Some(vec![])), sources(&[("default/deny", "7")])).unwrap();
    assert_eq!(enforcer.status().unwrap().built_from, sources(&[("default/deny", "7")]));
    enforcer.still_built_from(sources(&[("default/deny", "7"), ("other/elsewhere", "9")]));
    assert_eq!(enforcer.status().unwrap().built_from.len(), 2, "a policy that changed no rule is listed");
    enforcer.apply(spec(None)).unwrap();
    assert!(enforcer.status().unwrap().built_from.is_empty(), "a PUT's table is not the API's");

    let refused = Enforcer::new(Box::new(RefusingKernel));
    assert!(refused.apply_built_from(spec(Some(vec![])), sources(&[("default/deny", "7")])).is_err());
    assert!(refused.status().unwrap().built_from.is_empty(), "not enforced, so not listed");
}
