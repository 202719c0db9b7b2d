//! What kube-apiserver does for a Service beyond storing it: Kubernetes' defaults, and its addresses. The
//! cluster IP comes from the service CIDR and node ports from 30000-32767, the lowest free one first (so a
//! lab's addresses are the same every time it is built in the same order); a given one is checked against
//! the range and taken if free. Each address is held by a key of its own under `/registry/ranges/`, created
//! only if absent, so two writes racing for one address cannot both get it. An update keeps the addresses
//! of the stored version (the cluster IP cannot change); what a write took is given back when the write
//! fails, and what a Service no longer holds once the write (or its delete) is through.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::{json, Value};

use super::objects::meta_str;
use super::{ApiError, Server};
use crate::resources::{Kind, Resource, RESOURCES};
use crate::store::{Store, StoreError};
use crate::validation::{invalid, ValidationError};

/// kubeadm's service CIDR, which the issue and most clusters use.
pub const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/12";
/// Kubernetes' default `--service-node-port-range`.
pub const NODE_PORTS: std::ops::RangeInclusive<i32> = 30000..=32767;
const CLUSTER_IP_KEYS: &str = "/registry/ranges/serviceips/";
const NODE_PORT_KEYS: &str = "/registry/ranges/servicenodeports/";

fn service_resource() -> &'static Resource {
    RESOURCES.iter().find(|r| r.kind == Kind::Service).expect("services are served")
}

/// Fills in what Kubernetes defaults in a Service, before it is checked.
pub(super) fn default_service(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else { return };
    let node_port = spec.get("type").and_then(Value::as_str) == Some("NodePort");
    spec.entry("type").or_insert(json!("ClusterIP"));
    spec.entry("sessionAffinity").or_insert(json!("None"));
    if spec.get("sessionAffinity").and_then(Value::as_str) == Some("ClientIP") {
        let config = spec.entry("sessionAffinityConfig").or_insert(json!({}));
        if let Some(client_ip) = config.as_object_mut().map(|c| c.entry("clientIP").or_insert(json!({}))) {
            if let Some(c) = client_ip.as_object_mut() {
                c.entry("timeoutSeconds").or_insert(json!(10800));
            }
        }
    }
    spec.entry("internalTrafficPolicy").or_insert(json!("Cluster"));
    if node_port {
        spec.entry("externalTrafficPolicy").or_insert(json!("Cluster"));
    }
    spec.entry("ipFamilyPolicy").or_insert(json!("SingleStack"));
    spec.entry("ipFamilies").or_insert(json!(["IPv4"]));
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            port.entry("protocol").or_insert(json!("TCP"));
            if let Some(number) = port.get("port").cloned() {
                port.entry("targetPort").or_insert(number);
            }
        }
    }
}

/// The addresses a Service holds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Held {
    pub cluster_ip: Option<Ipv4Addr>,
    pub node_ports: BTreeSet<i32>,
}

/// Kubernetes' rule for node ports within one Service: a port with the same number as an earlier port of
/// another protocol (DNS's 53 over TCP and UDP) shares that port's node port, so a client of both protocols
/// reaches one address. The earlier port's index, if any (`ports`: the Service's `spec.ports`).
pub fn node_port_sibling(ports: &[Value], index: usize) -> Option<usize> {
    let protocol = |p: &Value| p.get("protocol").and_then(Value::as_str).unwrap_or("TCP").to_string();
    let port = ports.get(index)?;
    ports[..index].iter().position(|o| o.get("port") == port.get("port") && protocol(o) != protocol(port))
}

impl Held {
    pub fn of(obj: &Value) -> Held {
        let cluster_ip = obj.pointer("/spec/clusterIP").and_then(Value::as_str).and_then(|s| s.parse().ok());
        let node_ports = obj
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("nodePort").and_then(Value::as_i64))
            .filter_map(|n| i32::try_from(n).ok())
            .filter(|n| *n != 0)
            .collect();
        Held { cluster_ip, node_ports }
    }

    /// What `self` holds that `other` does not.
    pub fn minus(&self, other: &Held) -> Held {
        Held {
            cluster_ip: self.cluster_ip.filter(|ip| other.cluster_ip != Some(*ip)),
            node_ports: self.node_ports.difference(&other.node_ports).copied().collect(),
        }
    }
}

fn refuse(name: &str, field: String, message: String) -> ApiError {
    ApiError::invalid(service_resource(), name, ValidationError::Invalid { field, message })
}

impl<S: Store> Server<S> {
    /// Gives the Service `obj` its addresses: those of `old` (the stored version, on an update) where `obj`
    /// names none, the ones it names, and new ones for the rest. Answers what was newly taken (to give back
    /// if the write fails).
    pub(super) async fn take_service_addresses(&self, obj: &mut Value, old: Option<&Value>) -> Result<Held, ApiError> {
        let name = meta_str(obj, "name").to_string();
        let owner = format!("{}/{name}", meta_str(obj, "namespace"));
        let before = old.map(Held::of).unwrap_or_default();
        let mut taken = Held::default();
        let result = self.fill_addresses(obj, old, &name, &owner, &before, &mut taken).await;
        if let Err(e) = result {
            self.release_service_addresses(&taken).await;
            return Err(e);
        }
        Ok(taken)
    }

    async fn fill_addresses(
        &self,
        obj: &mut Value,
        old: Option<&Value>,
        name: &str,
        owner: &str,
        before: &Held,
        taken: &mut Held,
    ) -> Result<(), ApiError> {
        let given = obj.pointer("/spec/clusterIP").and_then(Value::as_str).unwrap_or("").to_string();
        let old_ip = old.and_then(|o| o.pointer("/spec/clusterIP")).and_then(Value::as_str).unwrap_or("");
        let ip = match (given.as_str(), old_ip) {
            ("", "") => Some(self.take_free_ip(owner).await?),
            ("", kept) => {
                // An update without the field keeps the address (kubectl apply and replace often omit it).
                set_cluster_ip(obj, kept);
                None
            }
            (g, kept) if !kept.is_empty() && g != kept => {
                return Err(refuse(
                    name,
                    "spec.clusterIP".into(),
                    format!("Invalid value: \"{g}\": field is immutable"),
                ))
            }
            (_, kept) if !kept.is_empty() => None,
            ("None", _) => None,
            (g, _) => Some(self.take_given_ip(name, owner, g).await?),
        };
        if let Some(ip) = ip {
            taken.cluster_ip = Some(ip);
            set_cluster_ip(obj, &ip.to_string());
        }
        if obj.pointer("/spec/type").and_then(Value::as_str) != Some("NodePort") {
            return Ok(());
        }
        let old_ports: Vec<Value> =
            old.and_then(|o| o.pointer("/spec/ports")).and_then(Value::as_array).cloned().unwrap_or_default();
        let count = obj.pointer("/spec/ports").and_then(Value::as_array).map_or(0, Vec::len);
        for i in 0..count {
            let port = &obj["spec"]["ports"][i];
            let wanted = port.get("nodePort").and_then(Value::as_i64).unwrap_or(0) as i32;
            let same = |o: &&Value| o.get("port") == port.get("port") && o.get("protocol") == port.get("protocol");
            let kept =
                old_ports.iter().find(same).and_then(|o| o.get("nodePort")).and_then(Value::as_i64).unwrap_or(0) as i32;
            let ports = obj["spec"]["ports"].as_array().map_or(&[][..], Vec::as_slice);
            // Its earlier ports have their node ports by now.
            let sibling = node_port_sibling(ports, i)
                .and_then(|k| ports[k].get("nodePort").and_then(Value::as_i64))
                .map(|n| n as i32);
            let number = match wanted {
                0 if kept != 0 => kept,
                0 => match sibling {
                    Some(n) => n,
                    None => self.take_free_port(owner).await?,
                },
                n if before.node_ports.contains(&n) || sibling == Some(n) => n,
                n => self.take_given_port(name, owner, i, n).await?,
            };
            if !before.node_ports.contains(&number) {
                taken.node_ports.insert(number);
            }
            obj["spec"]["ports"][i]["nodePort"] = json!(number);
        }
        Ok(())
    }

    /// The lowest free address of the range after the first (Kubernetes gives the first to the API's own
    /// `kubernetes` Service).
    async fn take_free_ip(&self, owner: &str) -> Result<Ipv4Addr, ApiError> {
        let range = self.service_cidr;
        loop {
            let held = self.held_keys(CLUSTER_IP_KEYS).await?;
            let free = range.hosts().skip(1).find(|ip| !held.contains(&ip.to_string())).ok_or_else(|| {
                ApiError::new(
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    format!("failed to allocate a serviceIP: range is full ({range})"),
                )
            })?;
            match self.hold(CLUSTER_IP_KEYS, &free.to_string(), owner).await {
                Ok(true) => return Ok(free),
                Ok(false) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    async fn take_given_ip(&self, name: &str, owner: &str, given: &str) -> Result<Ipv4Addr, ApiError> {
        let range = self.service_cidr;
        let ip: Ipv4Addr = given.parse().map_err(|_| {
            refuse(name, "spec.clusterIP".into(), format!("Invalid value: \"{given}\": must be a valid IPv4 address"))
        })?;
        if !range.contains(&ip) || ip == range.network() || ip == range.broadcast() {
            return Err(refuse(
                name,
                "spec.clusterIP".into(),
                format!("Invalid value: \"{given}\": provided IP is not in the valid range. The range of valid IPs is {range}"),
            ));
        }
        if !self.hold(CLUSTER_IP_KEYS, given, owner).await? {
            return Err(refuse(
                name,
                "spec.clusterIP".into(),
                format!("Invalid value: \"{given}\": provided IP is already allocated"),
            ));
        }
        Ok(ip)
    }

    async fn take_free_port(&self, owner: &str) -> Result<i32, ApiError> {
        loop {
            let held = self.held_keys(NODE_PORT_KEYS).await?;
            let free = NODE_PORTS.clone().find(|p| !held.contains(&p.to_string())).ok_or_else(|| {
                ApiError::new(
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    "failed to allocate a nodePort: range is full",
                )
            })?;
            if self.hold(NODE_PORT_KEYS, &free.to_string(), owner).await? {
                return Ok(free);
            }
        }
    }

    async fn take_given_port(&self, name: &str, owner: &str, index: usize, port: i32) -> Result<i32, ApiError> {
        let field = format!("spec.ports[{index}].nodePort");
        if !NODE_PORTS.contains(&port) {
            let (lo, hi) = (NODE_PORTS.start(), NODE_PORTS.end());
            return Err(refuse(
                name,
                field,
                format!("Invalid value: {port}: provided port is not in the valid range. The range of valid ports is {lo}-{hi}"),
            ));
        }
        if !self.hold(NODE_PORT_KEYS, &port.to_string(), owner).await? {
            return Err(refuse(name, field, format!("Invalid value: {port}: provided port is already allocated")));
        }
        Ok(port)
    }

    /// The names of the keys under `prefix`.
    async fn held_keys(&self, prefix: &str) -> Result<BTreeSet<String>, ApiError> {
        let (kvs, _) = self.store.list(prefix).await.map_err(store_error)?;
        Ok(kvs.into_iter().filter_map(|kv| kv.key.strip_prefix(prefix).map(str::to_string)).collect())
    }

    /// Creates the key `prefix + item` naming `owner`; false when someone holds it already.
    async fn hold(&self, prefix: &str, item: &str, owner: &str) -> Result<bool, ApiError> {
        match self.store.create(&format!("{prefix}{item}"), owner.as_bytes().to_vec()).await {
            Ok(_) => Ok(true),
            Err(StoreError::AlreadyExists(_)) => Ok(false),
            Err(e) => Err(store_error(e)),
        }
    }

    /// Gives the addresses of `held` back (logged when a key cannot be removed: it stays taken, nothing
    /// else breaks).
    pub(super) async fn release_service_addresses(&self, held: &Held) {
        let keys = held
            .cluster_ip
            .map(|ip| format!("{CLUSTER_IP_KEYS}{ip}"))
            .into_iter()
            .chain(held.node_ports.iter().map(|p| format!("{NODE_PORT_KEYS}{p}")));
        for key in keys {
            let result = match self.store.get(&key).await {
                Ok(Some(kv)) => self.store.delete(&key, kv.mod_revision).await.map(drop),
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                tracing::warn!(key, error = %e, "could not give a Service address back");
            }
        }
    }
}

fn set_cluster_ip(obj: &mut Value, ip: &str) {
    obj["spec"]["clusterIP"] = json!(ip);
    obj["spec"]["clusterIPs"] = json!([ip]);
}

fn store_error(e: StoreError) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        "InternalError",
        format!("service address registry: {e}"),
    )
}

/// Parses `--service-cluster-ip-range`: an IPv4 CIDR of at least 8 addresses.
pub fn parse_service_cidr(text: &str) -> Result<Ipv4Net, ValidationError> {
    let net: Ipv4Net =
        text.parse().map_err(|_| invalid("service-cluster-ip-range", format!("\"{text}\" is not an IPv4 CIDR")))?;
    if net.prefix_len() > 29 {
        return Err(invalid("service-cluster-ip-range", format!("{net} is too small: give at most /29")));
    }
    Ok(net.trunc())
}
