//! The proxy against a fake kernel that applies operations to the model and counts transactions.

use std::sync::{Arc, Mutex};

use testbed_api::{
    Protocol, ProxiedService, ProxyEndpoint, ServicePort, ServiceProxySpec, SessionAffinity, TrafficPolicy,
};

use super::ruleset::{apply_ops, Op, Ruleset};
use super::{Nft, NftError, Proxy, ProxyError};

#[derive(Default)]
struct Kernel {
    table: Option<Ruleset>,
    transactions: Vec<Vec<Op>>,
    /// Refuse the next transaction (as the kernel does when the table changed under the agent).
    refuse_next: bool,
    reads: usize,
}

impl Kernel {
    /// Moves with every transaction and with every change a test makes to the table behind the proxy's
    /// back, as the kernel's generation id moves with every commit by anyone.
    fn generation(&self) -> u32 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.transactions.len(), format!("{:?}", self.table)).hash(&mut h);
        h.finish() as u32
    }
}

#[derive(Clone, Default)]
struct FakeNft(Arc<Mutex<Kernel>>);

impl FakeNft {
    fn kernel(&self) -> std::sync::MutexGuard<'_, Kernel> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Nft for FakeNft {
    fn read(&mut self) -> Result<Option<Ruleset>, NftError> {
        let mut k = self.kernel();
        k.reads += 1;
        Ok(k.table.clone())
    }

    fn generation(&mut self) -> Result<u32, NftError> {
        Ok(self.kernel().generation())
    }

    fn apply(&mut self, ops: &[Op], generation: Option<u32>) -> Result<Option<u32>, NftError> {
        let mut k = self.kernel();
        if let Some(g) = generation.filter(|g| *g != k.generation()) {
            return Err(NftError::GenerationMoved(g));
        }
        if std::mem::take(&mut k.refuse_next) {
            return Err(NftError::Refused { op: "flush chain".into(), reason: "No such file or directory".into() });
        }
        k.transactions.push(ops.to_vec());
        apply_ops(&mut k.table, ops);
        Ok(generation.map(|_| k.generation()))
    }
}

pub(super) fn service(i: u8, endpoints: &[u8]) -> ProxiedService {
    ProxiedService {
        namespace: "default".into(),
        name: format!("svc{i}"),
        cluster_ip: [10, 96, 0, i].into(),
        ports: vec![ServicePort {
            name: String::new(),
            protocol: Protocol::Tcp,
            port: 80,
            node_port: None,
            endpoints: endpoints
                .iter()
                .map(|e| ProxyEndpoint { ip: [10, 244, 0, *e].into(), port: 8080, local: true, ready: true })
                .collect(),
        }],
        session_affinity: SessionAffinity::None,
        internal_traffic_policy: TrafficPolicy::Cluster,
        external_traffic_policy: TrafficPolicy::Cluster,
    }
}

/// Every shape the renderer has: endpoints with and without affinity, NodePorts with Local and Cluster
/// policies, a Service without endpoints (reject), one whose NodePort has none.
pub(super) fn every_shape() -> ServiceProxySpec {
    let mut affinity = service(1, &[2, 3]);
    affinity.session_affinity = SessionAffinity::ClientIp { timeout_seconds: 60 };
    affinity.ports[0].node_port = Some(30080);
    let mut local = service(2, &[4, 5]);
    local.ports[0].endpoints[1].local = false;
    local.ports[0].node_port = Some(30081);
    local.external_traffic_policy = TrafficPolicy::Local;
    local.internal_traffic_policy = TrafficPolicy::Local;
    let mut udp = service(3, &[6]);
    udp.ports[0].protocol = Protocol::Udp;
    let mut no_local = service(4, &[7]);
    no_local.ports[0].endpoints[0].local = false;
    no_local.ports[0].node_port = Some(30082);
    no_local.external_traffic_policy = TrafficPolicy::Local;
    ServiceProxySpec { services: vec![affinity, local, udp, service(5, &[]), no_local] }
}

fn proxy() -> (Proxy, FakeNft) {
    let fake = FakeNft::default();
    (Proxy::new(Box::new(fake.clone())), fake)
}

#[test]
fn the_same_spec_twice_runs_no_transaction() {
    let (proxy, fake) = proxy();
    let spec = ServiceProxySpec { services: vec![service(1, &[2, 3]), service(2, &[])] };
    assert!(!proxy.apply(spec.clone()).expect("applies").is_empty());
    assert_eq!(proxy.apply(spec.clone()).expect("applies"), Vec::<String>::new());
    assert_eq!(proxy.reconcile().expect("reconciles"), Vec::<String>::new());
    assert_eq!(fake.kernel().transactions.len(), 1);
    let status = proxy.status().expect("status");
    assert_eq!((status.transactions, status.drift_repairs), (1, 0));
    let d: Vec<_> = status.destinations.iter().map(|d| (d.key.as_str(), d.map.as_str(), d.endpoints.len())).collect();
    assert_eq!(d, [("10.96.0.1 . tcp . 80", "service-ips", 2), ("10.96.0.2 . tcp . 80", "no-endpoint-services", 0)]);
}

#[test]
fn an_endpoint_change_touches_only_its_service() {
    let (proxy, fake) = proxy();
    let mut spec = ServiceProxySpec { services: (1..=50).map(|i| service(i, &[2, 3])).collect() };
    proxy.apply(spec.clone()).expect("applies");
    spec.services[7].ports[0].endpoints[1].ip = [10, 244, 0, 9].into();
    let lines = proxy.apply(spec.clone()).expect("applies");
    let k = fake.kernel();
    assert_eq!(k.transactions.len(), 2, "one transaction per change");
    // Map elements only: no rule or chain (which would make the kernel validate the whole table). The old
    // endpoint's hairpin pair stays: the other Services have it.
    assert_eq!(
        lines,
        [
            "delete element ip testbed-proxy endpoints-5e1d224d-default/svc8/tcp/80 { 1 }",
            "add element ip testbed-proxy endpoints-5e1d224d-default/svc8/tcp/80 { 1 : 10.244.0.9 . 8080 }",
            "add element ip testbed-proxy hairpin-endpoints { 10.244.0.9 . 10.244.0.9 }",
        ]
        .map(String::from),
        "{lines:#?}"
    );
}

#[test]
fn a_hairpin_pair_stays_while_another_service_has_the_endpoint() {
    let (proxy, fake) = proxy();
    let mut spec = ServiceProxySpec { services: vec![service(1, &[2, 3]), service(2, &[3])] };
    proxy.apply(spec.clone()).expect("applies");
    spec.services[0].ports[0].endpoints.truncate(1);
    let lines = proxy.apply(spec.clone()).expect("applies");
    assert!(lines.iter().all(|l| !l.contains("hairpin")), "svc2 still has 10.244.0.3: {lines:#?}");
    spec.services.remove(1);
    let lines = proxy.apply(spec.clone()).expect("applies");
    assert!(lines.contains(&"delete element ip testbed-proxy hairpin-endpoints { 10.244.0.3 . 10.244.0.3 }".into()));
    assert_eq!(fake.kernel().table, Some(super::render::render(&spec)), "as a whole render of the last spec");
}

#[test]
fn bad_input_changes_nothing_and_names_the_field() {
    let (proxy, fake) = proxy();
    let mut bad = service(1, &[2]);
    bad.ports[0].port = 0;
    let spec = ServiceProxySpec { services: vec![service(2, &[2]), bad] };
    match proxy.apply(spec.clone()) {
        Err(ProxyError::Invalid(e)) => assert_eq!(e.field.as_deref(), Some("services[1].ports[0].port")),
        other => panic!("expected a 4xx, got {other:?}"),
    }
    assert!(fake.kernel().table.is_none());
}

#[test]
fn a_flushed_table_or_a_deleted_rule_is_repaired_by_the_reconcile() {
    let (proxy, fake) = proxy();
    proxy.apply(ServiceProxySpec { services: vec![service(1, &[2, 3])] }).expect("applies");
    let want = fake.kernel().table.clone();
    fake.kernel().table = None;
    assert!(!proxy.reconcile().expect("repairs").is_empty());
    assert_eq!(fake.kernel().table, want);
    // A hand-deleted DNAT rule.
    let svc = {
        let mut k = fake.kernel();
        let table = k.table.as_mut().expect("table");
        let (name, chain) = table.chains.iter_mut().find(|(n, _)| n.starts_with("service-")).expect("service chain");
        chain.rules.clear();
        name.clone()
    };
    let lines = proxy.reconcile().expect("repairs");
    assert!(lines.iter().any(|l| l.contains(&svc) && l.contains("dnat ip to")), "{lines:#?}");
    assert_eq!(fake.kernel().table, want);
    // A hand-deleted endpoint.
    fake.kernel().table.as_mut().expect("table").maps.iter_mut().for_each(|(name, map)| {
        if name.starts_with("endpoints-") {
            map.elements.remove("1");
        }
    });
    let lines = proxy.reconcile().expect("repairs");
    assert!(lines.iter().any(|l| l.contains("add element") && l.contains("{ 1 : 10.244.0.3 . 8080 }")), "{lines:#?}");
    assert_eq!(fake.kernel().table, want);
    assert_eq!(proxy.status().expect("status").drift_repairs, 3);
}

#[test]
fn a_put_renders_only_the_services_that_changed() {
    let old = ServiceProxySpec { services: vec![service(1, &[2]), service(2, &[2]), service(3, &[4])] };
    let mut new = old.clone();
    new.services.remove(0);
    new.services[1].ports[0].endpoints[0].ip = [10, 244, 0, 5].into();
    let text = super::ruleset::script(&super::changed_services(&old, &new));
    let chains = text.lines().filter(|l| !l.contains(" element "));
    assert!(chains.clone().all(|l| l.contains("/svc1/") || l.contains("/svc3/")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("delete element") && l.contains("10.96.0.1 . tcp . 80")), "{text}");
    // Applied to the old table, they make the new one.
    let mut table = Some(super::render::render(&old));
    apply_ops(&mut table, &super::changed_services(&old, &new));
    assert_eq!(table, Some(super::render::render(&new)));
}

#[test]
fn a_put_onto_a_changed_kernel_diffs_against_what_is_there() {
    let (proxy, fake) = proxy();
    proxy.apply(ServiceProxySpec { services: vec![service(1, &[2])] }).expect("applies");
    fake.kernel().table = None;
    fake.kernel().refuse_next = true;
    proxy.apply(ServiceProxySpec { services: vec![service(1, &[3])] }).expect("applies after a read-back");
    let status = proxy.status().expect("status");
    assert_eq!(status.destinations[0].endpoints, ["10.244.0.3:8080".parse().expect("addr")]);
    assert_eq!(status.last_error, None);
}

#[test]
fn the_reconcile_reads_back_only_when_someone_else_committed() {
    let (proxy, fake) = proxy();
    let spec = ServiceProxySpec { services: vec![service(1, &[2, 3])] };
    proxy.apply(spec.clone()).expect("applies");
    let mut changed = spec.clone();
    changed.services[0].ports[0].endpoints[0].ip = [10, 244, 0, 9].into();
    proxy.apply(changed).expect("applies");
    let reads = fake.kernel().reads;
    assert_eq!(reads, 1, "only the first PUT reads the table (the agent knows nothing yet)");
    assert_eq!(proxy.reconcile().expect("reconciles"), Vec::<String>::new());
    assert_eq!(fake.kernel().reads, reads, "the generation is the agent's own: no read-back");
    // Someone else's commit (here: to an unrelated part of the ruleset, which moves the generation too).
    fake.kernel().transactions.push(Vec::new());
    assert_eq!(proxy.reconcile().expect("reconciles"), Vec::<String>::new(), "nothing of ours drifted");
    assert_eq!(fake.kernel().reads, reads + 1, "a moved generation is read back");
    assert_eq!(proxy.reconcile().expect("reconciles"), Vec::<String>::new());
    assert_eq!(fake.kernel().reads, reads + 1, "and the generation read then is remembered");
}

#[test]
fn a_put_after_someone_elses_commit_applies_without_a_read_back() {
    let (proxy, fake) = proxy();
    let mut spec = ServiceProxySpec { services: vec![service(1, &[2])] };
    proxy.apply(spec.clone()).expect("applies");
    fake.kernel().transactions.push(Vec::new());
    spec.services[0].ports[0].endpoints[0].ip = [10, 244, 0, 3].into();
    proxy.apply(spec).expect("applies");
    assert_eq!(fake.kernel().reads, 1, "the change applied to what the agent wrote");
    assert_eq!(proxy.reconcile().expect("reconciles"), Vec::<String>::new());
    assert_eq!(fake.kernel().reads, 2, "the generation after it was unknown: the reconcile looks");
}
