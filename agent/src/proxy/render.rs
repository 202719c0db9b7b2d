//! A `ServiceProxySpec` as the ruleset kube-proxy's nftables mode would write for it (see
//! docs/architecture.md, "Service proxy"): fixed base chains and lookup maps, then per Service port a
//! service chain that picks an endpoint at random, and per endpoint a chain that DNATs.

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
    chain(r, "nat-postrouting", Some(&nat("postrouting", "srcnat")), &["jump masquerading"]);
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
    let ready: Vec<&ProxyEndpoint> = p.endpoints.iter().filter(|e| e.ready).collect();
    let pick = |policy: TrafficPolicy| -> Vec<&ProxyEndpoint> {
        ready.iter().copied().filter(|e| policy == TrafficPolicy::Cluster || e.local).collect()
    };
    let (internal, external) = (pick(s.internal_traffic_policy), pick(s.external_traffic_policy));
    let key = format!("{} . {proto} . {}", s.cluster_ip, p.port);
    if internal.is_empty() {
        insert(r, NO_ENDPOINT_SERVICES, key, format!("goto {REJECT_CHAIN}"));
    } else {
        let svc = name("service", s, p, "");
        let rules = pick_endpoint(s, p, &internal);
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
            rules.extend(pick_endpoint(s, p, &external));
            r.chains.insert(ext.clone(), Chain { base: None, rules });
            insert(r, SERVICE_NODEPORTS, key, format!("goto {ext}"));
        }
    }
    // An endpoint in both lists renders the same chain twice; the second insert changes nothing.
    for e in internal.iter().chain(&external) {
        endpoint(r, s, p, e);
    }
}

fn insert(r: &mut Ruleset, map: &str, key: String, verdict: String) {
    r.maps.entry(map.into()).or_default().elements.insert(key, verdict);
}

/// A client with a live affinity entry goes back to its endpoint; everyone else picks one at random.
fn pick_endpoint(s: &ProxiedService, p: &ServicePort, endpoints: &[&ProxyEndpoint]) -> Vec<Rule> {
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

    #[test]
    fn a_service_picks_among_its_endpoints_which_dnat() {
        let r =
            render(&ServiceProxySpec { services: vec![service(&[([10, 244, 0, 2], true), ([10, 244, 1, 2], false)])] });
        let svc =
            r.chains.keys().find(|n| n.ends_with("-ns/web/tcp/http") && n.starts_with("service-")).expect("chain");
        let key = "10.96.0.10 . tcp . 80";
        assert_eq!(r.maps[SERVICE_IPS].elements.get(key).map(String::as_str), Some(&*format!("goto {svc}")));
        let rules = &r.chains[svc].rules;
        assert_eq!(rules.len(), 1);
        assert!(rules[0].text.starts_with("numgen random mod 2 vmap { 0 : goto endpoint-"), "{}", rules[0].text);
        let mut dnat: Vec<_> = r.chains.values().filter_map(|c| c.rules.iter().find_map(|r| r.dnat)).collect();
        dnat.sort();
        assert_eq!(dnat, ["10.244.0.2:8080".parse().expect("addr"), "10.244.1.2:8080".parse().expect("addr")]);
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
        assert_eq!(chain_texts(&r, "endpoint-").len(), 1, "only the local endpoint");
        let ext = chain_texts(&r, "external-");
        assert_eq!(ext[0][0], "fib saddr type local jump mark-for-masquerade");
        assert!(ext[0][1].starts_with("numgen random mod 1 "));
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
        let r = render(&ServiceProxySpec { services: vec![service(&[([10, 244, 0, 2], true)])] });
        let ep = &chain_texts(&r, "endpoint-")[0];
        assert_eq!(ep, &["ip saddr 10.244.0.2 jump mark-for-masquerade", "meta l4proto tcp dnat to 10.244.0.2:8080"]);
    }
}
