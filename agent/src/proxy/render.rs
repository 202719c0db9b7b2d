//! A `ServiceProxySpec` as an nftables table (see docs/architecture.md, "Service proxy"): kube-proxy's
//! nftables mode (fixed base chains and lookup maps, then per Service port a service chain), except that a
//! Service without session affinity DNATs straight through a map of its endpoints instead of jumping to a
//! chain per endpoint. Its endpoint changes are then map elements only, which the kernel commits without
//! validating the table's jump graph (see `endpoint_map`). A ClientIP-affinity Service keeps kube-proxy's
//! chain per endpoint: its affinity is remembered per endpoint.

use std::collections::BTreeMap;

use sha2::Digest;
use testbed_api::{ProxiedService, ProxyEndpoint, ServicePort, ServiceProxySpec, SessionAffinity, TrafficPolicy};

use super::ruleset::{Chain, Map, Rule, Ruleset};

/// The mark `mark-for-masquerade` sets and `masquerading` consumes (kube-proxy's 0x4000).
const MASQ_MARK: &str = "0x4000";
/// NodePorts answer on the node's own addresses, but not on loopback (kube-proxy's default).
const NODE_LOCAL: &str = "fib daddr type local ip daddr != 127.0.0.0/8";

pub const SERVICE_IPS: &str = "service-ips";
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
/// `endpoint . endpoint` pairs: a packet from an endpoint to itself after DNAT is a pod reaching itself
/// through its Service (hairpin), which must be masqueraded.
pub const HAIRPIN: &str = "hairpin-endpoints";
/// The prefixes of the endpoint maps (index -> endpoint) of service and external chains.
pub const ENDPOINT_MAP_KINDS: [&str; 2] = ["endpoints-", "external-endpoints-"];
const REJECT_CHAIN: &str = "reject-chain";

/// The table for `spec` (validated: names are DNS labels, so chain names need no quoting).
pub fn render(spec: &ServiceProxySpec) -> Ruleset {
    let mut r = Ruleset::default();
    fixed(&mut r);
    for s in &spec.services {
        for p in &s.ports {
            service_port(&mut r, s, p);
        }
    }
    r
}

/// One Service's part of the table (None: nothing), with the lookup maps declared even when it has no
/// element in them, so that a diff of two parts never adds or deletes a map. An endpoint change is the diff
/// of the Service's part before and after: the other Services are not rendered again.
pub fn render_service(service: Option<&ProxiedService>) -> Ruleset {
    let mut r = Ruleset::default();
    lookup_maps(&mut r);
    if let Some(s) = service {
        for p in &s.ports {
            service_port(&mut r, s, p);
        }
    }
    r
}

fn lookup_maps(r: &mut Ruleset) {
    let by_ip = "type ipv4_addr . inet_proto . inet_service : verdict;";
    let by_port = "type inet_proto . inet_service : verdict;";
    for (name, decl) in [
        (SERVICE_IPS, by_ip),
        (NO_ENDPOINT_SERVICES, by_ip),
        (SERVICE_NODEPORTS, by_port),
        (NO_ENDPOINT_NODEPORTS, by_port),
    ] {
        r.maps.insert(name.into(), Map { decl: decl.into(), elements: BTreeMap::new() });
    }
    r.maps.insert(HAIRPIN.into(), Map { decl: "type ipv4_addr . ipv4_addr;".into(), elements: BTreeMap::new() });
}

/// Whether `map` is a Service's endpoint map (its keys are integers, not addresses).
pub fn is_endpoint_map(map: &str) -> bool {
    ENDPOINT_MAP_KINDS.iter().any(|k| map.starts_with(k))
}

fn chain(r: &mut Ruleset, name: &str, base: Option<&str>, rules: &[&str]) {
    let rules = rules.iter().map(|t| Rule::new(t.to_string())).collect();
    r.chains.insert(name.to_string(), Chain { base: base.map(str::to_string), rules });
}

/// What every node has whatever its Services: hooks, lookup maps, masquerading and rejection.
fn fixed(r: &mut Ruleset) {
    lookup_maps(r);
    // DNAT where pods' packets arrive from cni0 (prerouting) and where the node's own start (output).
    let nat = |hook: &str, prio: &str| format!("type nat hook {hook} priority {prio}; policy accept;");
    chain(r, "nat-prerouting", Some(&nat("prerouting", "dstnat")), &["jump services"]);
    chain(r, "nat-output", Some(&nat("output", "-100")), &["jump services"]);
    chain(
        r,
        "nat-postrouting",
        Some(&nat("postrouting", "srcnat")),
        &[&format!("ip saddr . ip daddr @{HAIRPIN} jump mark-for-masquerade"), "jump masquerading"],
    );
    // Rejection runs before DNAT (-110 < -100) on new connections only, as kube-proxy's filter chains do.
    let filter = |hook: &str| format!("type filter hook {hook} priority -110; policy accept;");
    for hook in ["input", "forward", "output"] {
        chain(r, &format!("filter-{hook}"), Some(&filter(hook)), &["ct state new jump service-endpoints-check"]);
    }
    // One hash lookup whatever the number of Services: the first packet's cost does not grow with them.
    chain(
        r,
        "services",
        None,
        &[
            &format!("ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}"),
            &format!("{NODE_LOCAL} meta l4proto . th dport vmap @{SERVICE_NODEPORTS}"),
        ],
    );
    chain(
        r,
        "service-endpoints-check",
        None,
        &[
            &format!("ip daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}"),
            &format!("{NODE_LOCAL} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}"),
        ],
    );
    chain(r, "mark-for-masquerade", None, &[&format!("meta mark set meta mark | {MASQ_MARK}")]);
    chain(
        r,
        "masquerading",
        None,
        &[
            &format!("meta mark & {MASQ_MARK} == 0 return"),
            &format!("meta mark set meta mark ^ {MASQ_MARK}"),
            "masquerade fully-random",
        ],
    );
    // ICMP port unreachable: a TCP client's connect fails at once with ECONNREFUSED.
    chain(r, REJECT_CHAIN, None, &["reject"]);
}

/// `<kind>-<hash>-<ns>/<name>/<proto>/<port>`, kube-proxy's naming: readable, and unique through the hash
/// of the whole identity (`extra`: the endpoint, the affinity timeout).
fn name(kind: &str, s: &ProxiedService, p: &ServicePort, extra: &str) -> String {
    let port = if p.name.is_empty() { p.port.to_string() } else { p.name.clone() };
    let id = format!("{}/{}/{}/{port}{extra}", s.namespace, s.name, p.protocol.nft_name());
    let hash = hex::encode(&sha2::Sha256::digest(format!("{kind}{id}").as_bytes())[..4]);
    format!("{kind}-{hash}-{id}")
}

fn endpoint_suffix(e: &ProxyEndpoint) -> String {
    format!("__{}/{}", e.ip, e.port)
}

fn affinity_set(s: &ProxiedService, p: &ServicePort, e: &ProxyEndpoint) -> Option<(String, u32)> {
    match s.session_affinity {
        SessionAffinity::None => None,
        SessionAffinity::ClientIp { timeout_seconds } => {
            Some((name("affinity", s, p, &format!("{}/{timeout_seconds}", endpoint_suffix(e))), timeout_seconds))
        }
    }
}

fn service_port(r: &mut Ruleset, s: &ProxiedService, p: &ServicePort) {
    let proto = p.protocol.nft_name();
    let (internal, external) = (served(p, s.internal_traffic_policy), served(p, s.external_traffic_policy));
    let key = format!("{} . {proto} . {}", s.cluster_ip, p.port);
    if internal.is_empty() {
        insert(r, NO_ENDPOINT_SERVICES, key, format!("goto {REJECT_CHAIN}"));
    } else {
        let svc = name("service", s, p, "");
        let rules = pick_endpoint(r, s, p, "endpoints", &internal);
        r.chains.insert(svc.clone(), Chain { base: None, rules });
        insert(r, SERVICE_IPS, key, format!("goto {svc}"));
    }
    if let Some(node_port) = p.node_port {
        let key = format!("{proto} . {node_port}");
        if external.is_empty() {
            insert(r, NO_ENDPOINT_NODEPORTS, key, format!("goto {REJECT_CHAIN}"));
        } else {
            let ext = name("external", s, p, "");
            // Cluster: the endpoint may be on another node, whose reply must come back through this one.
            // Local: the client's address is kept; only the node's own connections need masquerading.
            let masq = match s.external_traffic_policy {
                TrafficPolicy::Cluster => "jump mark-for-masquerade",
                TrafficPolicy::Local => "fib saddr type local jump mark-for-masquerade",
            };
            let mut rules = vec![Rule::new(masq.into())];
            rules.extend(pick_endpoint(r, s, p, "external-endpoints", &external));
            r.chains.insert(ext.clone(), Chain { base: None, rules });
            insert(r, SERVICE_NODEPORTS, key, format!("goto {ext}"));
        }
    }
    // An endpoint in both lists renders the same chain twice; the second insert changes nothing.
    for e in internal.iter().chain(&external) {
        match s.session_affinity {
            SessionAffinity::None => insert(r, HAIRPIN, format!("{0} . {0}", e.ip), String::new()),
            SessionAffinity::ClientIp { .. } => endpoint(r, s, p, e),
        }
    }
}

/// The endpoints of `p` that traffic under `policy` goes to: the ready ones (on this node, for Local).
fn served(p: &ServicePort, policy: TrafficPolicy) -> Vec<&ProxyEndpoint> {
    p.endpoints.iter().filter(|e| e.ready && (policy == TrafficPolicy::Cluster || e.local)).collect()
}

/// Whether `s`'s part of the table has `ip . ip` in the hairpin set (as `service_port` puts it there).
pub fn has_hairpin(s: &ProxiedService, ip: std::net::Ipv4Addr) -> bool {
    let policies = [s.internal_traffic_policy, s.external_traffic_policy];
    let served = |e: &ProxyEndpoint| e.ready && policies.iter().any(|p| *p == TrafficPolicy::Cluster || e.local);
    s.session_affinity == SessionAffinity::None
        && s.ports.iter().flat_map(|p| &p.endpoints).any(|e| e.ip == ip && served(e))
}

fn insert(r: &mut Ruleset, map: &str, key: String, value: String) {
    r.maps.entry(map.into()).or_default().elements.insert(key, value);
}

/// A client with a live affinity entry goes back to its endpoint; everyone else picks one at random.
fn pick_endpoint(
    r: &mut Ruleset,
    s: &ProxiedService,
    p: &ServicePort,
    kind: &str,
    endpoints: &[&ProxyEndpoint],
) -> Vec<Rule> {
    if s.session_affinity == SessionAffinity::None {
        return vec![endpoint_map(r, s, p, kind, endpoints)];
    }
    let mut rules = Vec::new();
    for e in endpoints {
        if let Some((set, _)) = affinity_set(s, p, e) {
            rules.push(Rule::new(format!("ip saddr @{set} goto {}", name("endpoint", s, p, &endpoint_suffix(e)))));
        }
    }
    let arms: Vec<String> = endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| format!("{i} : goto {}", name("endpoint", s, p, &endpoint_suffix(e))))
        .collect();
    rules.push(Rule::new(format!("numgen random mod {} vmap {{ {} }}", endpoints.len(), arms.join(", "))));
    rules
}

/// The endpoints as the map `kind-...` (index -> address . port) and the rule that DNATs through it. An
/// endpoint moving is then a map element deleted and added: the kernel validates a table's whole jump graph
/// at a commit that adds a rule with a DNAT or a jump, or a verdict map element, and kube-proxy's chain per
/// endpoint made every endpoint change one (250 ms at 10,000 Services, docs/benchmarks.md). Only a change of
/// the number of endpoints rewrites the rule (its modulus).
fn endpoint_map(
    r: &mut Ruleset,
    s: &ProxiedService,
    p: &ServicePort,
    kind: &str,
    endpoints: &[&ProxyEndpoint],
) -> Rule {
    let map = name(kind, s, p, "");
    let elements = endpoints.iter().enumerate().map(|(i, e)| (i.to_string(), format!("{} . {}", e.ip, e.port)));
    r.maps.insert(
        map.clone(),
        Map { decl: "type integer : ipv4_addr . inet_service;".into(), elements: elements.collect() },
    );
    let proto = p.protocol.nft_name();
    Rule::new(format!("meta l4proto {proto} dnat ip to numgen random mod {} map @{map}", endpoints.len()))
}

fn endpoint(r: &mut Ruleset, s: &ProxiedService, p: &ServicePort, e: &ProxyEndpoint) {
    // Hairpin: a pod reaching itself through its Service would otherwise answer itself from its own address.
    let mut rules = vec![Rule::new(format!("ip saddr {} jump mark-for-masquerade", e.ip))];
    if let Some((set, timeout)) = affinity_set(s, p, e) {
        r.sets.insert(set.clone(), format!("type ipv4_addr; flags dynamic,timeout; timeout {timeout}s;"));
        rules.push(Rule::new(format!("update @{set} {{ ip saddr }}")));
    }
    rules.push(Rule::new(format!("meta l4proto {} dnat to {}:{}", p.protocol.nft_name(), e.ip, e.port)));
    r.chains.insert(name("endpoint", s, p, &endpoint_suffix(e)), Chain { base: None, rules });
}

#[cfg(test)]
mod tests {
    use super::*;
    use testbed_api::{Protocol, ServicePort};

    pub(crate) fn service(eps: &[([u8; 4], bool)]) -> ProxiedService {
        ProxiedService {
            namespace: "ns".into(),
            name: "web".into(),
            cluster_ip: [10, 96, 0, 10].into(),
            ports: vec![ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                node_port: None,
                endpoints: eps
                    .iter()
                    .map(|(ip, local)| ProxyEndpoint { ip: (*ip).into(), port: 8080, local: *local, ready: true })
                    .collect(),
            }],
            session_affinity: SessionAffinity::None,
            internal_traffic_policy: TrafficPolicy::Cluster,
            external_traffic_policy: TrafficPolicy::Cluster,
        }
    }

    fn chain_texts(r: &Ruleset, prefix: &str) -> Vec<Vec<String>> {
        r.chains
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(_, c)| c.rules.iter().map(|r| r.text.clone()).collect())
            .collect()
    }

    fn elements<'a>(r: &'a Ruleset, prefix: &str) -> Vec<(&'a str, &'a str)> {
        let map = r.maps.iter().find(|(n, _)| n.starts_with(prefix)).map(|(_, m)| m).expect("map");
        map.elements.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    #[test]
    fn a_service_picks_among_its_endpoints_through_a_map_and_dnats() {
        let r =
            render(&ServiceProxySpec { services: vec![service(&[([10, 244, 0, 2], true), ([10, 244, 1, 2], false)])] });
        let svc =
            r.chains.keys().find(|n| n.ends_with("-ns/web/tcp/http") && n.starts_with("service-")).expect("chain");
        let key = "10.96.0.10 . tcp . 80";
        assert_eq!(r.maps[SERVICE_IPS].elements.get(key).map(String::as_str), Some(&*format!("goto {svc}")));
        let rules = &r.chains[svc].rules;
        assert_eq!(rules.len(), 1);
        let map = r.maps.keys().find(|n| n.starts_with("endpoints-")).expect("endpoint map");
        assert_eq!(rules[0].text, format!("meta l4proto tcp dnat ip to numgen random mod 2 map @{map}"));
        assert_eq!(elements(&r, "endpoints-"), [("0", "10.244.0.2 . 8080"), ("1", "10.244.1.2 . 8080")]);
        assert!(chain_texts(&r, "endpoint-").is_empty(), "no chain per endpoint");
        assert!(r.maps[NO_ENDPOINT_SERVICES].elements.is_empty());
    }

    #[test]
    fn a_service_without_ready_endpoints_rejects() {
        let mut s = service(&[([10, 244, 0, 2], true)]);
        s.ports[0].endpoints[0].ready = false;
        let r = render(&ServiceProxySpec { services: vec![s] });
        assert!(r.maps[SERVICE_IPS].elements.is_empty());
        assert_eq!(r.maps[NO_ENDPOINT_SERVICES].elements["10.96.0.10 . tcp . 80"], "goto reject-chain");
        assert!(chain_texts(&r, "endpoint-").is_empty());
    }

    #[test]
    fn local_policies_keep_to_the_nodes_endpoints() {
        let mut s = service(&[([10, 244, 0, 2], true), ([10, 244, 1, 2], false)]);
        s.internal_traffic_policy = TrafficPolicy::Local;
        s.external_traffic_policy = TrafficPolicy::Local;
        s.ports[0].node_port = Some(30080);
        let r = render(&ServiceProxySpec { services: vec![s] });
        assert_eq!(elements(&r, "endpoints-"), [("0", "10.244.0.2 . 8080")], "only the local endpoint");
        assert_eq!(elements(&r, "external-endpoints-"), [("0", "10.244.0.2 . 8080")]);
        let ext = chain_texts(&r, "external-");
        assert_eq!(ext[0][0], "fib saddr type local jump mark-for-masquerade");
        assert!(ext[0][1].starts_with("meta l4proto tcp dnat ip to numgen random mod 1 map @external-endpoints-"));
        assert!(r.maps[SERVICE_NODEPORTS].elements.contains_key("tcp . 30080"));
    }

    #[test]
    fn client_ip_affinity_remembers_the_client_per_endpoint() {
        let mut s = service(&[([10, 244, 0, 2], true)]);
        s.session_affinity = SessionAffinity::ClientIp { timeout_seconds: 60 };
        let r = render(&ServiceProxySpec { services: vec![s] });
        let (set, decl) = r.sets.iter().next().expect("one affinity set");
        assert!(decl.contains("timeout 60s"));
        let svc = &chain_texts(&r, "service-")[0];
        assert!(svc[0].starts_with(&format!("ip saddr @{set} goto endpoint-")), "{svc:?}");
        let ep = &chain_texts(&r, "endpoint-")[0];
        assert_eq!(ep[1], format!("update @{set} {{ ip saddr }}"));
    }

    #[test]
    fn endpoints_masquerade_only_their_own_hairpin_traffic() {
        let mut s = service(&[([10, 244, 0, 2], true)]);
        let r = render(&ServiceProxySpec { services: vec![s.clone()] });
        assert_eq!(elements(&r, HAIRPIN), [("10.244.0.2 . 10.244.0.2", "")]);
        assert_eq!(
            chain_texts(&r, "nat-postrouting")[0][0],
            "ip saddr . ip daddr @hairpin-endpoints jump mark-for-masquerade"
        );
        assert!(has_hairpin(&s, [10, 244, 0, 2].into()) && !has_hairpin(&s, [10, 244, 0, 3].into()));
        // With affinity, the endpoint's own chain marks it (kube-proxy's layout).
        s.session_affinity = SessionAffinity::ClientIp { timeout_seconds: 60 };
        let r = render(&ServiceProxySpec { services: vec![s.clone()] });
        assert!(elements(&r, HAIRPIN).is_empty() && !has_hairpin(&s, [10, 244, 0, 2].into()));
        let ep = &chain_texts(&r, "endpoint-")[0];
        assert_eq!(ep[0], "ip saddr 10.244.0.2 jump mark-for-masquerade");
        assert_eq!(ep[2], "meta l4proto tcp dnat to 10.244.0.2:8080");
    }
}
