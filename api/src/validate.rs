//! Checks both sides run on specs: the CLI before sending, the agent before touching the kernel.
//! Errors name the field as a path so a 4xx tells exactly what is wrong.

use ipnet::Ipv4Net;

use crate::{ApiError, Backend, NodeSpec, PodSpec};

mod volumes;

fn err(field: impl Into<String>, message: impl Into<String>) -> ApiError {
    ApiError { field: Some(field.into()), message: message.into(), leaked: vec![] }
}

/// A DNS-1123 label (Kubernetes pod and container names), at most `max` characters.
pub fn is_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Kubernetes' label syntax: `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, at most 63 characters.
fn is_label_name(s: &str) -> bool {
    let edge = |b: Option<&u8>| b.is_some_and(u8::is_ascii_alphanumeric);
    s.len() <= 63
        && edge(s.as_bytes().first())
        && edge(s.as_bytes().last())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A DNS-1123 subdomain: dot-separated DNS labels, at most 253 characters.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(|part| is_dns_label(part, 63))
}

/// Why `key: value` is not a Kubernetes label (keys are qualified names, `prefix/name` with an optional
/// DNS-subdomain prefix; values are empty or a label name), in the API server's words.
pub fn label_error(key: &str, value: &str) -> Option<String> {
    const SYNTAX: &str = "consist of alphanumeric characters, '-', '_' or '.', and must start and end with an \
                          alphanumeric character, at most 63";
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if prefix.is_some_and(|p| !is_dns_subdomain(p)) {
        return Some(format!("Invalid value: \"{key}\": prefix part must be a DNS subdomain (a-z, 0-9, '-', '.')"));
    }
    if !is_label_name(name) {
        return Some(format!("Invalid value: \"{key}\": name part must {SYNTAX}"));
    }
    if !value.is_empty() && !is_label_name(value) {
        return Some(format!("Invalid value: \"{value}\": a valid label must be an empty string or {SYNTAX}"));
    }
    None
}

/// Everything the agent can check before creating a pod: names are unique DNS labels, every container
/// names a program, requests do not exceed limits, limits are usable (CPU above 0, memory at least
/// 1Mi, pids above 0), and probes are well formed (`crate::probe::validate_probe`).
pub fn validate_pod(pod: &PodSpec) -> Result<(), ApiError> {
    if !is_dns_label(&pod.name, 63) {
        return Err(err("name", format!("`{}` is not a DNS label (a-z, 0-9, '-', at most 63)", pod.name)));
    }
    if pod.containers.is_empty() {
        return Err(err("containers", "a pod needs at least one container"));
    }
    if let Some(ns) = pod.namespace.as_deref().filter(|ns| !is_dns_label(ns, 63)) {
        return Err(err("namespace", format!("`{ns}` is not a DNS label (a-z, 0-9, '-', at most 63)")));
    }
    if let Some((key, message)) = pod.labels.iter().find_map(|(k, v)| label_error(k, v).map(|m| (k, m))) {
        return Err(err(format!("labels.{key}"), message));
    }
    volumes::volumes(pod)?;
    let mut seen = std::collections::BTreeSet::new();
    for (i, c) in pod.containers.iter().enumerate() {
        let at = |f: &str| format!("containers[{i}].{f}");
        if !is_dns_label(&c.name, 63) {
            return Err(err(at("name"), format!("`{}` is not a DNS label", c.name)));
        }
        if !seen.insert(c.name.as_str()) {
            return Err(err(at("name"), format!("duplicate container name `{}`", c.name)));
        }
        if let Some(image) = &c.image {
            if !crate::is_sha256_digest(image) && !image.starts_with('/') {
                if let Err(why) = crate::image_ref::normalize(image) {
                    return Err(err(
                        at("image"),
                        format!("`{image}` is none of sha256:<64 lowercase hex digits>, an absolute path, an image name ({why})"),
                    ));
                }
            }
        }
        let image_gives_the_command = c.image.is_some() && c.command.is_empty();
        if !image_gives_the_command && (c.command.is_empty() || c.command[0].is_empty()) {
            return Err(err(at("command"), "command must name a program"));
        }
        let (req, lim) = (c.resources.requests, c.resources.limits);
        if let (Some(r), Some(l)) = (req.cpu_millis, lim.cpu_millis) {
            if r > l {
                return Err(err(at("resources.requests.cpu"), format!("request {r}m exceeds limit {l}m")));
            }
        }
        if let (Some(r), Some(l)) = (req.memory_bytes, lim.memory_bytes) {
            if r > l {
                return Err(err(at("resources.requests.memory"), format!("request {r} exceeds limit {l}")));
            }
        }
        if lim.cpu_millis == Some(0) {
            return Err(err(at("resources.limits.cpu"), "must be greater than 0"));
        }
        if matches!(lim.memory_bytes, Some(m) if m < 1 << 20) {
            return Err(err(at("resources.limits.memory"), "must be at least 1Mi"));
        }
        if c.pids_limit == Some(0) {
            return Err(err(at("pids_limit"), "must be greater than 0"));
        }
        volumes::container(pod, i, c)?;
        for (kind, probe) in c.probes.iter() {
            crate::probe::validate_probe(kind, probe).map_err(|(field, message)| {
                let probe_field = at(kind.field());
                err(if field.is_empty() { probe_field } else { format!("{probe_field}.{field}") }, message)
            })?;
        }
    }
    Ok(())
}

/// Everything the agent can check before touching the kernel: a spec that passes must not be refused by the
/// kernel half-way (overlapping routes, an off-link host-gw gateway, a multicast VTEP MAC), which would
/// leave the node half-changed.
pub fn validate_node(spec: &NodeSpec) -> Result<(), ApiError> {
    if !is_dns_label(&spec.node_name, 63) {
        return Err(err("node_name", format!("`{}` is not a DNS label (a-z, 0-9, '-', at most 63)", spec.node_name)));
    }
    if !(576..=9000).contains(&spec.underlay.mtu) {
        return Err(err("underlay.mtu", format!("{} is outside 576..=9000", spec.underlay.mtu)));
    }
    let underlay_net = Ipv4Net::new(spec.underlay.address, spec.underlay.prefix_len)
        .map_err(|_| err("underlay.prefix_len", "must be at most 32"))?;
    if !spec.pod_cidr.contains(&spec.pod_subnet) {
        return Err(err("pod_subnet", format!("{} is not inside pod_cidr {}", spec.pod_subnet, spec.pod_cidr)));
    }
    if spec.pod_subnet.prefix_len() > 29 {
        return Err(err("pod_subnet", "must be /29 or larger"));
    }
    if let Some(services) = spec.service_cidr {
        // One route would shadow the other: pods' or Services' traffic would go to the wrong place.
        if services.contains(&spec.pod_cidr) || spec.pod_cidr.contains(&services) {
            return Err(err("service_cidr", format!("{services} overlaps pod_cidr {}", spec.pod_cidr)));
        }
    }
    vtep_mac("vtep_mac", &spec.vtep_mac)?;
    for (i, p) in spec.peers.iter().enumerate() {
        let at = |f: &str| format!("peers[{i}].{f}");
        let earlier = &spec.peers[..i];
        if !is_dns_label(&p.name, 63) {
            return Err(err(at("name"), format!("`{}` is not a DNS label", p.name)));
        }
        if p.name == spec.node_name {
            return Err(err(at("name"), format!("`{}` is this node's own name", p.name)));
        }
        if earlier.iter().any(|q| q.name == p.name) {
            return Err(err(at("name"), format!("duplicate peer name `{}`", p.name)));
        }
        if p.underlay_ip == spec.underlay.address {
            return Err(err(at("underlay_ip"), format!("{} is this node's own underlay address", p.underlay_ip)));
        }
        if let Some(q) = earlier.iter().find(|q| q.underlay_ip == p.underlay_ip) {
            return Err(err(at("underlay_ip"), format!("{} is also the address of peer `{}`", p.underlay_ip, q.name)));
        }
        // host-gw routes go straight to the peer: the kernel refuses a gateway that is not on-link.
        if spec.backend == Backend::HostGw && !underlay_net.contains(&p.underlay_ip) {
            return Err(err(
                at("underlay_ip"),
                format!(
                    "{} is outside the underlay subnet {} (host-gw needs every peer on-link)",
                    p.underlay_ip,
                    underlay_net.trunc()
                ),
            ));
        }
        if !spec.pod_cidr.contains(&p.pod_subnet) {
            return Err(err(at("pod_subnet"), "not inside pod_cidr"));
        }
        if overlap(p.pod_subnet, spec.pod_subnet) {
            return Err(err(
                at("pod_subnet"),
                format!("{} overlaps this node's pod_subnet {}", p.pod_subnet, spec.pod_subnet),
            ));
        }
        if let Some(q) = earlier.iter().find(|q| overlap(q.pod_subnet, p.pod_subnet)) {
            return Err(err(
                at("pod_subnet"),
                format!("{} overlaps {} of peer `{}`", p.pod_subnet, q.pod_subnet, q.name),
            ));
        }
        vtep_mac(&at("vtep_mac"), &p.vtep_mac)?;
    }
    Ok(())
}

/// Two CIDR blocks overlap exactly when one contains the other.
fn overlap(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b) || b.contains(&a)
}

/// A unicast MAC the kernel accepts for a vxlan device and as an FDB/neighbour address: not zero, and
/// not multicast (which includes broadcast).
fn vtep_mac(field: &str, s: &str) -> Result<(), ApiError> {
    let Some(bytes) = parse_mac(s) else {
        return Err(err(field, format!("`{s}` is not a MAC address")));
    };
    if bytes == [0; 6] {
        return Err(err(field, format!("`{s}` is the zero MAC address")));
    }
    if bytes[0] & 1 == 1 {
        return Err(err(field, format!("`{s}` is a multicast or broadcast MAC address, not a unicast one")));
    }
    Ok(())
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ContainerSpec, PeerSpec, Resources, RestartPolicy, UnderlaySpec};

    fn pod() -> PodSpec {
        PodSpec {
            name: "web".into(),
            containers: vec![ContainerSpec {
                name: "srv".into(),
                command: vec!["sleep".into(), "1".into()],
                env: Default::default(),
                resources: Resources::default(),
                pids_limit: None,
                args: vec![],
                image: None,
                volume_mounts: vec![],
                security_context: None,
                probes: Default::default(),
            }],
            restart_policy: RestartPolicy::Never,
            share_process_namespace: false,
            host_network: false,
            ..Default::default()
        }
    }

    #[test]
    fn labels_and_namespace_of_a_static_pod_are_checked() {
        assert_eq!(label_error("app", "web"), None);
        assert_eq!(label_error("example.com/tier", "front_end.v1"), None);
        assert_eq!(label_error("a", ""), None);
        assert!(label_error("", "x").is_some());
        assert!(label_error("a/", "x").is_some());
        assert!(label_error("UPPER.example/x", "v").is_some(), "the prefix is a DNS subdomain");
        assert!(label_error("x", "ends-").is_some());
        assert!(label_error(&"k".repeat(64), "v").is_some());
        let mut p = pod();
        p.labels.insert("app".into(), "-web".into());
        assert_eq!(validate_pod(&p).unwrap_err().field.as_deref(), Some("labels.app"));
        let mut p = pod();
        p.namespace = Some("Team".into());
        assert_eq!(validate_pod(&p).unwrap_err().field.as_deref(), Some("namespace"));
    }

    #[test]
    fn pod_errors_name_the_field() {
        assert!(validate_pod(&pod()).is_ok());
        let mut p = pod();
        p.containers[0].resources.requests.cpu_millis = Some(600);
        p.containers[0].resources.limits.cpu_millis = Some(500);
        assert_eq!(validate_pod(&p).unwrap_err().field.as_deref(), Some("containers[0].resources.requests.cpu"));
        let mut p = pod();
        p.containers.push(p.containers[0].clone());
        assert_eq!(validate_pod(&p).unwrap_err().field.as_deref(), Some("containers[1].name"));
        let mut p = pod();
        p.name = "Web".into();
        assert_eq!(validate_pod(&p).unwrap_err().field.as_deref(), Some("name"));
    }

    #[test]
    fn an_image_is_a_digest_an_absolute_path_or_a_name_and_may_give_the_command() {
        let with_image = |image: &str, command: Vec<String>| {
            let mut p = pod();
            p.containers[0].image = Some(image.into());
            p.containers[0].command = command;
            validate_pod(&p).map_err(|e| e.field.unwrap_or_default())
        };
        let digest = format!("sha256:{}", "0f".repeat(32));
        assert_eq!(with_image(&digest, vec![]), Ok(()), "the image's Entrypoint/Cmd");
        assert_eq!(with_image("/var/lib/images/busybox.tar", vec!["sh".into()]), Ok(()));
        assert_eq!(with_image("busybox:latest", vec![]), Ok(()), "a name the node's store indexes");
        let upper = format!("sha256:{}", "0F".repeat(32));
        for bad in ["Busybox", "sha256:abc", "./relative/dir", &upper] {
            assert_eq!(with_image(bad, vec![]), Err("containers[0].image".into()), "{bad}");
        }
        let mut p = pod();
        p.containers[0].command = vec![];
        assert_eq!(validate_pod(&p).unwrap_err().field.as_deref(), Some("containers[0].command"), "no image");
    }

    fn node(backend: Backend) -> NodeSpec {
        NodeSpec {
            node_name: "n1".into(),
            underlay: UnderlaySpec {
                interface: "eth1".into(),
                address: "192.168.50.1".parse().unwrap(),
                prefix_len: 24,
                mtu: 1500,
            },
            pod_cidr: "10.244.0.0/16".parse().unwrap(),
            pod_subnet: "10.244.1.0/24".parse().unwrap(),
            backend,
            vtep_mac: "02:00:00:00:00:01".into(),
            peers: (2..4u8)
                .map(|i| PeerSpec {
                    name: format!("n{i}"),
                    underlay_ip: format!("192.168.50.{i}").parse().unwrap(),
                    pod_subnet: format!("10.244.{i}.0/24").parse().unwrap(),
                    vtep_mac: format!("02:00:00:00:00:{i:02x}"),
                })
                .collect(),
            service_cidr: Some("10.96.0.0/12".parse().unwrap()),
        }
    }

    /// The field the error names, after `change` is applied to a valid spec.
    fn field_of(backend: Backend, change: impl FnOnce(&mut NodeSpec)) -> Option<String> {
        let mut s = node(backend);
        change(&mut s);
        validate_node(&s).err().map(|e| e.field.unwrap_or_default())
    }

    #[test]
    fn valid_node_specs_pass() {
        for b in Backend::ALL {
            assert_eq!(validate_node(&node(b)), Ok(()), "{b}");
        }
        // Peers on another subnet are fine for the encapsulating backends.
        let mut s = node(Backend::Vxlan);
        s.peers[1].underlay_ip = "172.16.0.9".parse().unwrap();
        assert_eq!(validate_node(&s), Ok(()));
    }

    #[test]
    fn pod_subnets_must_not_overlap() {
        let f = |c: fn(&mut NodeSpec)| field_of(Backend::Vxlan, c);
        // Equal, contained and containing, against this node and against an earlier peer.
        assert_eq!(
            f(|s| s.peers[0].pod_subnet = "10.244.1.0/24".parse().unwrap()).as_deref(),
            Some("peers[0].pod_subnet")
        );
        assert_eq!(
            f(|s| s.peers[0].pod_subnet = "10.244.1.128/25".parse().unwrap()).as_deref(),
            Some("peers[0].pod_subnet")
        );
        assert_eq!(
            f(|s| s.peers[0].pod_subnet = "10.244.0.0/23".parse().unwrap()).as_deref(),
            Some("peers[0].pod_subnet")
        );
        assert_eq!(
            f(|s| s.peers[1].pod_subnet = "10.244.2.64/26".parse().unwrap()).as_deref(),
            Some("peers[1].pod_subnet")
        );
        assert_eq!(
            f(|s| s.peers[1].pod_subnet = "10.244.2.0/23".parse().unwrap()).as_deref(),
            Some("peers[1].pod_subnet")
        );
        assert_eq!(f(|s| s.peers[1].pod_subnet = "10.244.4.0/24".parse().unwrap()), None);
    }

    #[test]
    fn the_service_cidr_may_not_overlap_the_pod_cidr() {
        let f = |c: fn(&mut NodeSpec)| field_of(Backend::Vxlan, c);
        assert_eq!(f(|s| s.service_cidr = Some("10.244.128.0/20".parse().unwrap())).as_deref(), Some("service_cidr"));
        assert_eq!(f(|s| s.service_cidr = Some("10.0.0.0/8".parse().unwrap())).as_deref(), Some("service_cidr"));
        assert_eq!(f(|s| s.service_cidr = None), None);
    }

    #[test]
    fn peer_addresses_and_names() {
        let hostgw = |c: fn(&mut NodeSpec)| field_of(Backend::HostGw, c);
        assert_eq!(
            hostgw(|s| s.peers[0].underlay_ip = "192.168.51.2".parse().unwrap()).as_deref(),
            Some("peers[0].underlay_ip")
        );
        assert_eq!(hostgw(|s| s.underlay.prefix_len = 32).as_deref(), Some("peers[0].underlay_ip"));
        assert_eq!(hostgw(|s| s.underlay.prefix_len = 33).as_deref(), Some("underlay.prefix_len"));
        let vx = |c: fn(&mut NodeSpec)| field_of(Backend::Vxlan, c);
        assert_eq!(
            vx(|s| s.peers[1].underlay_ip = "192.168.50.1".parse().unwrap()).as_deref(),
            Some("peers[1].underlay_ip")
        );
        assert_eq!(
            vx(|s| s.peers[1].underlay_ip = "192.168.50.2".parse().unwrap()).as_deref(),
            Some("peers[1].underlay_ip")
        );
        assert_eq!(vx(|s| s.peers[1].name = "n2".into()).as_deref(), Some("peers[1].name"));
        assert_eq!(vx(|s| s.peers[0].name = "n1".into()).as_deref(), Some("peers[0].name"));
        assert_eq!(vx(|s| s.peers[0].name = "N2".into()).as_deref(), Some("peers[0].name"));
        assert_eq!(vx(|s| s.node_name = "node_1".into()).as_deref(), Some("node_name"));
        assert_eq!(vx(|s| s.node_name = String::new()).as_deref(), Some("node_name"));
    }

    #[test]
    fn vtep_macs_must_be_unicast() {
        let vx = |c: fn(&mut NodeSpec)| field_of(Backend::Vxlan, c);
        assert_eq!(vx(|s| s.vtep_mac = "00:00:00:00:00:00".into()).as_deref(), Some("vtep_mac"));
        assert_eq!(vx(|s| s.vtep_mac = "ff:ff:ff:ff:ff:ff".into()).as_deref(), Some("vtep_mac"));
        assert_eq!(vx(|s| s.vtep_mac = "01:00:5e:00:00:01".into()).as_deref(), Some("vtep_mac"));
        assert_eq!(vx(|s| s.vtep_mac = "02:00:00:00:00".into()).as_deref(), Some("vtep_mac"));
        assert_eq!(vx(|s| s.vtep_mac = "02:00:00:00:00:01:02".into()).as_deref(), Some("vtep_mac"));
        assert_eq!(vx(|s| s.peers[1].vtep_mac = "33:33:00:00:00:01".into()).as_deref(), Some("peers[1].vtep_mac"));
        assert_eq!(vx(|s| s.peers[0].vtep_mac = "00:00:00:00:00:00".into()).as_deref(), Some("peers[0].vtep_mac"));
        assert_eq!(vx(|s| s.vtep_mac = "0a:1B:2c:3D:4e:5F".into()), None);
    }
}
