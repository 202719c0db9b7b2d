//! Semantic checks of a parsed topology, all before anything is created. Every error is pinned to the
//! offending key or value in the file. The result is the checked model (`checked::CheckedTopology`).

use std::collections::BTreeMap;
use std::path::Path;

use ipnet::Ipv4Net;
use sha2::Digest;
use testbed_api::probe::Probes;
use testbed_api::validate::{is_dns_label, label_error, validate_pod};
use testbed_api::{Backend, ContainerSpec, PodSpec, ResourceAmounts, Resources, RestartPolicy};
use testbed_control_plane::resources::INITIAL_NAMESPACES;

use super::checked::{
    CheckedCluster, CheckedNetwork, CheckedNode, CheckedPod, CheckedTopology, DeclaredTest, ImageRef, Impairment,
    TestKind, TestLevel, TestSource, TestTarget,
};
use super::locate::{FieldPath, Locator};
use super::manifests::{self, DEPLOYMENTS, NAMESPACES, NETWORK_POLICIES};
use super::model::{
    AmountsDef, BackendDef, ExpectDef, ImageDef, ImpairDef, LevelDef, NodeDef, RestartPolicyDef, Scalar, TestDef,
    TestKindDef, Topology,
};
use super::TopologyError;
use super::{container_images, control_plane, services};
use testbed_api::quantity;

/// Longest lab name: keeps `tb-<lab>` and lab directory names short and readable.
pub const MAX_LAB_NAME: usize = 24;
/// Most nodes per lab: each lab owns a block of 32 SSH ports, and tap names hold a two-digit index.
pub const MAX_NODES: usize = 32;
/// Most underlay networks: guest NICs eth1..eth8, one-digit bridge index.
pub const MAX_NETWORKS: usize = 8;
/// Longest network name (it appears in `plan` output and tc commands, not in interface names).
pub const MAX_NETWORK_NAME: usize = 15;
/// Node i gets host address `FIRST_HOST_OFFSET + i` on each of its networks (.1-.10 stay free for gateways
/// or host-side addresses a later provider may need).
pub const FIRST_HOST_OFFSET: u32 = 11;
/// QEMU user networking puts every guest's management NIC here; no lab network may overlap it.
pub const MANAGEMENT_CIDR: &str = "10.0.2.0/24";

pub const DEFAULT_POD_CIDR: &str = "10.244.0.0/16";
/// Where Services' cluster IPs come from unless `cluster.service_cidr` says (the API server's default).
pub use testbed_control_plane::apiserver::DEFAULT_SERVICE_CIDR;
pub const DEFAULT_NODE_SUBNET_PREFIX: u8 = 24;
pub const DEFAULT_MEMORY_MIB: u64 = 512;
pub const DEFAULT_IMAGE: &str = "debian-12";
pub const DEFAULT_MTU: u32 = 1500;

pub(super) struct Ctx<'a> {
    file: &'a Path,
    loc: &'a Locator,
}

impl Ctx<'_> {
    /// The topology file: relative paths in it are taken from its directory.
    pub(super) fn file(&self) -> &Path {
        self.file
    }

    /// An error at the value of `path`.
    pub(super) fn at(&self, path: &FieldPath, message: impl Into<String>) -> TopologyError {
        let pos = self.loc.locate(path);
        TopologyError::invalid(self.file, pos.line, pos.column, path.to_string(), message)
    }

    /// An error at the key ending `path` (names of nodes and networks).
    fn at_key(&self, path: &FieldPath, message: impl Into<String>) -> TopologyError {
        let pos = self.loc.locate_key(path);
        TopologyError::invalid(self.file, pos.line, pos.column, path.to_string(), message)
    }
}

pub(super) fn root() -> FieldPath {
    FieldPath::root()
}

fn reserved_ranges() -> Vec<(Ipv4Net, &'static str)> {
    [
        (MANAGEMENT_CIDR, "QEMU's management network inside every guest"),
        ("0.0.0.0/8", "the \"this network\" range"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("224.0.0.0/3", "multicast and reserved space"),
    ]
    .into_iter()
    .filter_map(|(c, why)| c.parse().ok().map(|n| (n, why)))
    .collect()
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn parse_cidr(ctx: &Ctx<'_>, path: &FieldPath, text: &str) -> Result<Ipv4Net, TopologyError> {
    let net: Ipv4Net = text
        .trim()
        .parse()
        .map_err(|_| ctx.at(path, format!("\"{text}\" is not an IPv4 CIDR (use 192.168.50.0/24)")))?;
    if net.trunc() != net {
        return Err(ctx.at(path, format!("\"{text}\" has host bits set (did you mean {}?)", net.trunc())));
    }
    for (reserved, why) in reserved_ranges() {
        if overlaps(&net, &reserved) {
            return Err(ctx.at(path, format!("{net} overlaps {reserved} ({why})")));
        }
    }
    Ok(net)
}

fn is_name(s: &str, max: usize) -> bool {
    is_dns_label(s, max) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

/// Whether `s` is a valid lab name (the rule of the topology's `name:`). `--lab` and lab directories use it
/// too, so a name can never be a path (`..`, `/`, empty).
pub fn is_lab_name(s: &str) -> bool {
    is_name(s, MAX_LAB_NAME)
}

/// Checks a parsed topology against the file it came from: `source` is its bytes (hashed into the result)
/// and `loc` their position index, which pins every error to a line and column of `file`.
pub fn check(t: &Topology, file: &Path, source: &[u8], loc: &Locator) -> Result<CheckedTopology, TopologyError> {
    let ctx = Ctx { file, loc };
    if !is_name(&t.name, MAX_LAB_NAME) {
        return Err(ctx.at(
            &root().key("name"),
            format!(
                "`{}` is not a lab name (lowercase letters, digits and '-', starting with a letter, at most {MAX_LAB_NAME})",
                t.name
            ),
        ));
    }
    let networks = check_networks(&ctx, t)?;
    let (mut cluster, underlay) = check_cluster(&ctx, t, &networks)?;
    let nodes = check_nodes(&ctx, t, &networks, underlay)?;
    cluster.control_plane = control_plane::members(&ctx, t, &nodes)?;
    cluster.node_lifecycle = control_plane::node_lifecycle(&ctx, t)?;
    check_subnet_capacity(&ctx, t, &cluster, &nodes)?;
    let namespaces = manifests::check(&ctx, &NAMESPACES, &t.namespaces)?;
    let pods = check_pods(&ctx, t, &namespaces)?;
    let tests = check_tests(&ctx, t)?;
    let deployments = manifests::check(&ctx, &DEPLOYMENTS, &t.deployments)?;
    let services = services::check(&ctx, t, cluster.service_cidr)?;
    let network_policies = manifests::check(&ctx, &NETWORK_POLICIES, &t.network_policies)?;
    let source_sha256 = hex::encode(sha2::Sha256::digest(source));
    Ok(CheckedTopology {
        lab: t.name.clone(),
        source_sha256,
        networks,
        nodes,
        cluster,
        pods,
        tests,
        namespaces,
        deployments,
        services,
        network_policies,
    })
}

fn check_networks(ctx: &Ctx<'_>, t: &Topology) -> Result<Vec<CheckedNetwork>, TopologyError> {
    if t.networks.is_empty() {
        return Err(
            ctx.at(&root().key("networks"), "at least one network is needed (e.g. underlay: {cidr: 192.168.50.0/24})")
        );
    }
    if t.networks.len() > MAX_NETWORKS {
        return Err(ctx.at(&root().key("networks"), format!("at most {MAX_NETWORKS} networks are supported")));
    }
    let mut out: Vec<CheckedNetwork> = Vec::new();
    for (name, def) in t.networks.iter() {
        let path = root().key("networks").key(name);
        if !is_name(name, MAX_NETWORK_NAME) {
            return Err(ctx.at_key(
                &path,
                format!("`{name}` is not a network name (lowercase letters, digits and '-', starting with a letter, at most {MAX_NETWORK_NAME})"),
            ));
        }
        let cidr = parse_cidr(ctx, &path.key("cidr"), &def.cidr)?;
        if cidr.prefix_len() > 30 {
            return Err(ctx.at(&path.key("cidr"), format!("{cidr} is too small for any node (use a /24)")));
        }
        if let Some(other) = out.iter().find(|o| overlaps(&o.cidr, &cidr)) {
            return Err(ctx.at(&path.key("cidr"), format!("{cidr} overlaps network `{}` ({})", other.name, other.cidr)));
        }
        let mtu = def.mtu.unwrap_or(DEFAULT_MTU);
        if !(576..=9000).contains(&mtu) {
            return Err(ctx.at(&path.key("mtu"), format!("{mtu} is outside 576..=9000")));
        }
        let impair = check_impair(ctx, &path.key("impair"), &def.impair)?;
        out.push(CheckedNetwork { name: name.to_string(), cidr, mtu, impair });
    }
    Ok(out)
}

fn check_impair(ctx: &Ctx<'_>, path: &FieldPath, d: &ImpairDef) -> Result<Impairment, TopologyError> {
    let field = |name: &str, v: &Option<Scalar>, f: fn(&str) -> Result<f64, String>| -> Result<f64, TopologyError> {
        v.as_ref().map_or(Ok(0.0), |s| f(&s.0).map_err(|m| ctx.at(&path.key(name), m)))
    };
    let delay_ms = field("delay", &d.delay, quantity::duration_ms)?;
    let jitter_ms = field("jitter", &d.jitter, quantity::duration_ms)?;
    let loss_percent = field("loss", &d.loss, quantity::percent)?;
    if jitter_ms > 0.0 && delay_ms == 0.0 {
        return Err(ctx.at(&path.key("jitter"), "jitter needs a delay (netem varies the delay by the jitter)"));
    }
    let rate_mbit = match &d.rate {
        Some(s) => Some(quantity::rate_mbit(&s.0).map_err(|m| ctx.at(&path.key("rate"), m))?),
        None => None,
    };
    Ok(Impairment { delay_ms, jitter_ms, loss_percent, rate_mbit })
}

fn check_cluster(
    ctx: &Ctx<'_>,
    t: &Topology,
    networks: &[CheckedNetwork],
) -> Result<(CheckedCluster, usize), TopologyError> {
    let path = root().key("cluster");
    let pod_cidr_text = t.cluster.pod_cidr.as_deref().unwrap_or(DEFAULT_POD_CIDR);
    let pod_cidr = parse_cidr(ctx, &path.key("pod_cidr"), pod_cidr_text)?;
    if let Some(n) = networks.iter().find(|n| overlaps(&n.cidr, &pod_cidr)) {
        return Err(ctx.at(&path.key("pod_cidr"), format!("{pod_cidr} overlaps network `{}` ({})", n.name, n.cidr)));
    }
    let prefix = t.cluster.node_subnet_prefix.unwrap_or(DEFAULT_NODE_SUBNET_PREFIX);
    if prefix <= pod_cidr.prefix_len() || prefix > 29 {
        return Err(ctx.at(
            &path.key("node_subnet_prefix"),
            format!("{prefix} must be longer than the pod CIDR's /{} and at most 29", pod_cidr.prefix_len()),
        ));
    }
    let backend = backend_of(t.cluster.backend.unwrap_or(BackendDef::Vxlan));
    let underlay = match &t.cluster.underlay {
        None => 0,
        Some(name) => t.networks.position(name).ok_or_else(|| {
            ctx.at(
                &path.key("underlay"),
                format!("unknown network `{name}` (networks: {})", names(t.networks.iter().map(|(k, _)| k))),
            )
        })?,
    };
    let service_text = t.cluster.service_cidr.as_deref().unwrap_or(DEFAULT_SERVICE_CIDR);
    let service_cidr = parse_cidr(ctx, &path.key("service_cidr"), service_text)?;
    if service_cidr.prefix_len() > 29 {
        return Err(ctx.at(&path.key("service_cidr"), format!("{service_cidr} is too small: give at most a /29")));
    }
    if let Some(n) = networks.iter().find(|n| overlaps(&n.cidr, &service_cidr)) {
        let message = format!("{service_cidr} overlaps network `{}` ({})", n.name, n.cidr);
        return Err(ctx.at(&path.key("service_cidr"), message));
    }
    if overlaps(&pod_cidr, &service_cidr) {
        return Err(ctx.at(&path.key("service_cidr"), format!("{service_cidr} overlaps cluster.pod_cidr {pod_cidr}")));
    }
    // The control plane is checked once the nodes are (`control_plane`).
    let cluster = CheckedCluster {
        pod_cidr,
        node_subnet_prefix: prefix,
        backend,
        service_cidr,
        control_plane: Vec::new(),
        node_lifecycle: Default::default(),
    };
    Ok((cluster, underlay))
}

fn backend_of(b: BackendDef) -> Backend {
    match b {
        BackendDef::Vxlan => Backend::Vxlan,
        BackendDef::HostGw => Backend::HostGw,
        BackendDef::Udp => Backend::Udp,
        BackendDef::None => Backend::None,
    }
}

pub(super) fn names<'a>(it: impl Iterator<Item = &'a str>) -> String {
    it.collect::<Vec<_>>().join(", ")
}

/// A node field with the default applied, and the path the value came from (for error positions).
fn pick<'a, T>(
    node: &'a Option<T>,
    default: &'a Option<T>,
    node_path: FieldPath,
    field: &str,
) -> Option<(&'a T, FieldPath)> {
    match (node, default) {
        (Some(v), _) => Some((v, node_path.key(field))),
        (None, Some(v)) => Some((v, root().key("defaults").key(field))),
        (None, None) => None,
    }
}

fn check_nodes(
    ctx: &Ctx<'_>,
    t: &Topology,
    networks: &[CheckedNetwork],
    underlay: usize,
) -> Result<Vec<CheckedNode>, TopologyError> {
    if t.nodes.is_empty() {
        return Err(ctx.at(&root().key("nodes"), "at least one node is needed (e.g. node1: {})"));
    }
    if t.nodes.len() > MAX_NODES {
        return Err(
            ctx.at(&root().key("nodes"), format!("at most {MAX_NODES} nodes per lab ({} given)", t.nodes.len()))
        );
    }
    let d = &t.defaults;
    let mut out = Vec::new();
    for (index, (name, def)) in t.nodes.iter().enumerate() {
        let path = root().key("nodes").key(name);
        if !is_name(name, 63) {
            return Err(ctx.at_key(
                &path,
                format!("`{name}` is not a node name (a DNS label: lowercase letters, digits and '-', starting with a letter)"),
            ));
        }
        let NodeDef { cpus, memory, image, kernel_args, networks: node_networks } = def;
        let cpus = match pick(cpus, &d.cpus, path.clone(), "cpus") {
            Some((&c, p)) if !(1..=64).contains(&c) => return Err(ctx.at(&p, format!("{c} is outside 1..=64"))),
            Some((&c, _)) => c,
            None => 1,
        };
        let memory_mib = match pick(memory, &d.memory, path.clone(), "memory") {
            Some((m, p)) => {
                let mib = quantity::vm_memory_mib(&m.0).map_err(|e| ctx.at(&p, e))?;
                if !(128..=65536).contains(&mib) {
                    return Err(ctx.at(&p, format!("\"{}\" is outside 128M..=64G", m.0)));
                }
                mib
            }
            None => DEFAULT_MEMORY_MIB,
        };
        let image = match pick(image, &d.image, path.clone(), "image") {
            Some((img, p)) => check_image(ctx, &p, img)?,
            None => ImageRef::Named(DEFAULT_IMAGE.into()),
        };
        let kernel_args = match pick(kernel_args, &d.kernel_args, path.clone(), "kernel_args") {
            Some((args, p)) => {
                for (i, a) in args.iter().enumerate() {
                    if a.is_empty() || a.chars().any(char::is_whitespace) {
                        return Err(ctx.at(
                            &p.index(i),
                            format!(
                                "\"{a}\" must be one non-empty argument without spaces (one list item per argument)"
                            ),
                        ));
                    }
                }
                if matches!(image, ImageRef::Url { .. }) && !args.is_empty() {
                    return Err(ctx.at(
                        &p,
                        "kernel_args need an image testbed builds: a downloaded image boots its own boot loader, \
                         which keeps its own kernel command line (set `kernel_args: []` on this node)",
                    ));
                }
                args.clone()
            }
            None => Vec::new(),
        };
        let attached = match node_networks {
            None => {
                let mut v = vec![underlay];
                v.extend((0..networks.len()).filter(|&i| i != underlay));
                v
            }
            Some(list) => {
                let mut idx = Vec::new();
                for (i, net) in list.iter().enumerate() {
                    let p = path.key("networks").index(i);
                    let n = t.networks.position(net).ok_or_else(|| {
                        ctx.at(
                            &p,
                            format!("unknown network `{net}` (networks: {})", names(t.networks.iter().map(|(k, _)| k))),
                        )
                    })?;
                    if idx.contains(&n) {
                        return Err(ctx.at(&p, format!("network `{net}` is listed twice")));
                    }
                    idx.push(n);
                }
                if !idx.contains(&underlay) {
                    return Err(ctx.at(
                        &path.key("networks"),
                        format!("every node must be on the cluster underlay `{}`", networks[underlay].name),
                    ));
                }
                // The underlay NIC comes first (eth1), the others keep the order of `networks:`.
                idx.sort_by_key(|&n| (n != underlay, n));
                idx
            }
        };
        for &n in &attached {
            let net = &networks[n];
            let needed = FIRST_HOST_OFFSET as u64 + index as u64;
            let broadcast = (1u64 << (32 - net.cidr.prefix_len())) - 1;
            if needed >= broadcast {
                return Err(ctx.at(
                    &root().key("networks").key(&net.name).key("cidr"),
                    format!(
                        "{} is too small for node `{name}` (node {index} gets host address {needed}; node i gets {FIRST_HOST_OFFSET} + i, so {} nodes need a /{} or larger)",
                        net.cidr,
                        t.nodes.len(),
                        prefix_for(FIRST_HOST_OFFSET as u64 + t.nodes.len() as u64 - 1)
                    ),
                ));
            }
        }
        out.push(CheckedNode { name: name.to_string(), cpus, memory_mib, image, kernel_args, networks: attached });
    }
    Ok(out)
}

/// Longest prefix whose network has host offset `highest` below its broadcast address.
fn prefix_for(highest: u64) -> u8 {
    (2..=30u8).rev().find(|p| (1u64 << (32 - p)) - 1 > highest).unwrap_or(2)
}

fn check_image(ctx: &Ctx<'_>, path: &FieldPath, img: &ImageDef) -> Result<ImageRef, TopologyError> {
    match img {
        ImageDef::Named(n) => {
            let ok = !n.is_empty()
                && n.len() <= 64
                && n.starts_with(|c: char| c.is_ascii_lowercase())
                && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
            if !ok {
                return Err(ctx.at(path, format!("\"{n}\" is not an image name (e.g. debian-12) or {{url, sha256}}")));
            }
            Ok(ImageRef::Named(n.clone()))
        }
        ImageDef::Url(u) => {
            if !(u.url.starts_with("https://") || u.url.starts_with("http://") || u.url.starts_with("file://")) {
                return Err(ctx.at(&path.key("url"), format!("\"{}\" must be an http(s):// or file:// URL", u.url)));
            }
            if u.sha256.len() != 64 || !u.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ctx.at(&path.key("sha256"), "must be 64 hex digits (the sha256 of the image file)"));
            }
            Ok(ImageRef::Url { url: u.url.clone(), sha256: u.sha256.to_ascii_lowercase() })
        }
    }
}

fn check_subnet_capacity(
    ctx: &Ctx<'_>,
    t: &Topology,
    cluster: &CheckedCluster,
    nodes: &[CheckedNode],
) -> Result<(), TopologyError> {
    let available = 1u64 << (cluster.node_subnet_prefix - cluster.pod_cidr.prefix_len());
    if (nodes.len() as u64) > available {
        let path =
            if t.cluster.pod_cidr.is_some() { root().key("cluster").key("pod_cidr") } else { root().key("cluster") };
        return Err(ctx.at(
            &path,
            format!(
                "{} holds only {available} node subnets of /{} but there are {} nodes",
                cluster.pod_cidr,
                cluster.node_subnet_prefix,
                nodes.len()
            ),
        ));
    }
    Ok(())
}

fn amounts(ctx: &Ctx<'_>, path: &FieldPath, a: &AmountsDef) -> Result<ResourceAmounts, TopologyError> {
    let cpu_millis = match &a.cpu {
        Some(s) => Some(quantity::cpu_millis(&s.0).map_err(|m| ctx.at(&path.key("cpu"), m))?),
        None => None,
    };
    let memory_bytes = match &a.memory {
        Some(s) => Some(quantity::memory_bytes(&s.0).map_err(|m| ctx.at(&path.key("memory"), m))?),
        None => None,
    };
    Ok(ResourceAmounts { cpu_millis, memory_bytes })
}

fn check_pods(ctx: &Ctx<'_>, t: &Topology, namespaces: &[serde_json::Value]) -> Result<Vec<CheckedPod>, TopologyError> {
    let mut out: Vec<CheckedPod> = Vec::new();
    for (i, pod) in t.pods.iter().enumerate() {
        let path = root().key("pods").index(i);
        if let Some(ns) = &pod.namespace {
            let declared = namespaces.iter().any(|n| n["metadata"]["name"] == ns.as_str());
            if !declared && !INITIAL_NAMESPACES.contains(&ns.as_str()) {
                let message = format!(
                    "namespace `{ns}` is neither declared in `namespaces:` nor one every cluster has ({})",
                    INITIAL_NAMESPACES.join(", ")
                );
                return Err(ctx.at(&path.key("namespace"), message));
            }
        }
        for (key, value) in pod.labels.iter() {
            if let Some(message) = label_error(key, value) {
                return Err(ctx.at(&path.key("labels").key(key), message));
            }
        }
        if t.nodes.get(&pod.node).is_none() {
            return Err(ctx.at(
                &path.key("node"),
                format!("unknown node `{}` (nodes: {})", pod.node, names(t.nodes.iter().map(|(k, _)| k))),
            ));
        }
        if let Some(j) = out.iter().position(|p| p.spec.name == pod.name) {
            return Err(ctx.at(&path.key("name"), format!("duplicate pod name `{}` (also pods[{j}])", pod.name)));
        }
        let mut containers = Vec::new();
        let mut images = BTreeMap::new();
        for (c_index, c) in pod.containers.iter().enumerate() {
            if let Some(image) = &c.image {
                let ipath = path.key("containers").index(c_index).key("image");
                images.insert(c.name.clone(), container_images::check(ctx, &ipath, image)?);
            }
            let cpath = path.key("containers").index(c_index).key("resources");
            containers.push(ContainerSpec {
                name: c.name.clone(),
                command: c.command.clone(),
                env: c.env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
                resources: Resources {
                    requests: amounts(ctx, &cpath.key("requests"), &c.resources.requests)?,
                    limits: amounts(ctx, &cpath.key("limits"), &c.resources.limits)?,
                },
                pids_limit: c.pids_limit,
                args: vec![],
                image: None,
                volume_mounts: c.volume_mounts.iter().map(Into::into).collect(),
                security_context: c.security_context.as_ref().map(Into::into),
                probes: Probes {
                    liveness_probe: c.liveness_probe.clone(),
                    readiness_probe: c.readiness_probe.clone(),
                    startup_probe: c.startup_probe.clone(),
                }
                .with_port_numbers(&|name| {
                    c.ports.iter().find(|p| p.name.as_deref() == Some(name)).map(|p| p.container_port)
                }),
            });
        }
        let spec = PodSpec {
            name: pod.name.clone(),
            containers,
            restart_policy: match pod.restart_policy {
                None | Some(RestartPolicyDef::Always) => RestartPolicy::Always,
                Some(RestartPolicyDef::OnFailure) => RestartPolicy::OnFailure,
                Some(RestartPolicyDef::Never) => RestartPolicy::Never,
            },
            share_process_namespace: pod.share_process_namespace,
            host_network: pod.host_network,
            namespace: pod.namespace.clone(),
            labels: pod.labels.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
            volumes: pod.volumes.iter().map(Into::into).collect(),
            security_context: pod.security_context.as_ref().map(Into::into),
        };
        validate_pod(&container_images::with_stand_in_digests(&spec, &images)).map_err(|e| {
            let field = e.field.as_deref().map_or_else(|| path.clone(), |f| path.join_dotted(f));
            ctx.at(&field, e.message)
        })?;
        out.push(CheckedPod { node: pod.node.clone(), spec, images });
    }
    Ok(out)
}

/// Most attempts of one declared test.
pub const MAX_TEST_ATTEMPTS: u32 = 100;
/// Longest declared test name (it is part of a JUnit testcase name).
pub const MAX_TEST_NAME: usize = 100;

/// What `pod:<name>` may name: a pod of `pods:` (the suites' own pods come and go with each backend).
fn known_pod(ctx: &Ctx<'_>, t: &Topology, path: &FieldPath, name: &str) -> Result<String, TopologyError> {
    if t.pods.iter().any(|p| p.name == name) {
        return Ok(name.to_string());
    }
    let known = if t.pods.is_empty() {
        "the topology declares no pods".to_string()
    } else {
        format!("pods: {}", names(t.pods.iter().map(|p| p.name.as_str())))
    };
    Err(ctx.at(path, format!("unknown pod `{name}` ({known})")))
}

fn known_node(ctx: &Ctx<'_>, t: &Topology, path: &FieldPath, name: &str) -> Result<String, TopologyError> {
    if t.nodes.get(name).is_some() {
        return Ok(name.to_string());
    }
    Err(ctx.at(path, format!("unknown node `{name}` (nodes: {})", names(t.nodes.iter().map(|(k, _)| k)))))
}

fn check_tests(ctx: &Ctx<'_>, t: &Topology) -> Result<Vec<DeclaredTest>, TopologyError> {
    let mut out: Vec<DeclaredTest> = Vec::new();
    for (i, def) in t.tests.iter().flatten().enumerate() {
        out.push(check_test(ctx, t, &root().key("tests").index(i), def, &out)?);
    }
    Ok(out)
}

fn check_test(
    ctx: &Ctx<'_>,
    t: &Topology,
    path: &FieldPath,
    def: &TestDef,
    earlier: &[DeclaredTest],
) -> Result<DeclaredTest, TopologyError> {
    let name = def.name.trim();
    if name.is_empty() || name.len() > MAX_TEST_NAME || name.chars().any(char::is_control) {
        return Err(ctx.at(&path.key("name"), format!("must be one line of 1..={MAX_TEST_NAME} characters")));
    }
    if let Some(j) = earlier.iter().position(|e| e.name == name) {
        return Err(ctx.at(&path.key("name"), format!("duplicate test name `{name}` (also tests[{j}])")));
    }
    let from_path = path.key("from");
    let from = match def.from.split_once(':') {
        Some(("pod", n)) if !n.is_empty() => TestSource::Pod(known_pod(ctx, t, &from_path, n)?),
        Some(("node", n)) if !n.is_empty() => TestSource::Node(known_node(ctx, t, &from_path, n)?),
        _ => return Err(ctx.at(&from_path, format!("`{}` is not pod:<name> or node:<name>", def.from))),
    };
    let to_path = path.key("to");
    let bad_to = || ctx.at(&to_path, format!("`{}` is not pod:<name>, node:<name> or ip:<IPv4 address>", def.to));
    let to = match def.to.split_once(':') {
        Some(("pod", n)) if !n.is_empty() => TestTarget::Pod(known_pod(ctx, t, &to_path, n)?),
        Some(("node", n)) if !n.is_empty() => TestTarget::Node(known_node(ctx, t, &to_path, n)?),
        Some(("ip", a)) => TestTarget::Ip(a.parse().map_err(|_| bad_to())?),
        _ => return Err(bad_to()),
    };
    let kind = match def.kind {
        TestKindDef::Ping => TestKind::Ping,
        TestKindDef::Tcp => TestKind::Tcp,
        TestKindDef::Http => TestKind::Http,
    };
    let port_path = path.key("port");
    let port = match (kind, def.port) {
        (TestKind::Ping, Some(_)) => return Err(ctx.at(&port_path, "ping takes no port")),
        (TestKind::Ping, None) => None,
        (TestKind::Tcp, None) => return Err(ctx.at(&port_path, "a tcp test needs a port")),
        (TestKind::Http, None) => Some(80),
        (_, Some(p)) => Some(
            u16::try_from(p)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| ctx.at(&port_path, format!("{p} is outside 1..=65535")))?,
        ),
    };
    let (attempts, wait_ms) = match &def.retry {
        None => (1, 1000),
        Some(r) => {
            let attempts = r.attempts.unwrap_or(3);
            if !(1..=MAX_TEST_ATTEMPTS).contains(&attempts) {
                return Err(ctx
                    .at(&path.key("retry").key("attempts"), format!("{attempts} is outside 1..={MAX_TEST_ATTEMPTS}")));
            }
            let wait = match &r.wait {
                Some(w) => quantity::wait_ms(&w.0).map_err(|m| ctx.at(&path.key("retry").key("wait"), m))?,
                None => 1000,
            };
            (attempts, wait)
        }
    };
    let mut backends = Vec::new();
    for (j, b) in def.backends.iter().enumerate() {
        let b = backend_of(*b);
        if backends.contains(&b) {
            return Err(ctx.at(&path.key("backends").index(j), format!("backend `{b}` is listed twice")));
        }
        backends.push(b);
    }
    Ok(DeclaredTest {
        name: name.to_string(),
        from,
        to,
        kind,
        port,
        expect_pass: def.expect != Some(ExpectDef::Fail),
        attempts,
        wait_ms,
        level: match def.level {
            None | Some(LevelDef::Error) => TestLevel::Error,
            Some(LevelDef::Warning) => TestLevel::Warning,
        },
        stop_on_error: def.stop_on_error,
        backends,
    })
}
