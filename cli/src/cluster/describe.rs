//! `testbed describe TYPE [NAME...]`: one object at a time, for a person, in kubectl's layout (fields, then
//! the kind's own sections: a node's addresses, capacity and conditions; a pod's containers and conditions).

use std::fmt::Write;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{DynamicObject, ListParams};

use crate::exit::CliResult;
use crate::ui::Ui;

use super::kinds::{self, Kind, Served, Target};
use super::{api, connect, run, ClientArgs, ClusterError};

#[derive(Debug, clap::Args)]
pub struct DescribeArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// `TYPE [NAME...]` or `TYPE/NAME...` (no name: every object of the type).
    #[arg(required = true, value_name = "TYPE[/NAME]")]
    pub what: Vec<String>,
}

pub async fn cmd_describe(_ui: &Ui, args: DescribeArgs) -> CliResult {
    run(describe(args)).await
}

async fn describe(args: DescribeArgs) -> Result<(), ClusterError> {
    let targets = kinds::targets(&args.what)?;
    let client = connect(&args.client).await?;
    let namespace = args.client.namespace.as_deref().unwrap_or("default");
    let mut texts = Vec::new();
    for Target { kind, names } in targets {
        let api = api(&client, kind, Some(namespace));
        let what = |name: &str| format!("{} \"{name}\"", kind.plural());
        if names.is_empty() {
            let list = api.list(&ListParams::default()).await.map_err(|e| ClusterError::from_kube(what("*"), e))?;
            texts.extend(list.items.iter().map(|o| text(kind, o)));
        }
        for name in names {
            let object = api.get(&name).await.map_err(|e| ClusterError::from_kube(what(&name), e))?;
            texts.push(text(kind, &object));
        }
    }
    print!("{}", texts.join("\n\n"));
    Ok(())
}

/// The description of one object.
fn text(kind: Kind, object: &DynamicObject) -> String {
    let meta = &object.metadata;
    let mut out = String::new();
    field(&mut out, "Name", meta.name.as_deref().unwrap_or_default());
    if kind.namespaced() {
        field(&mut out, "Namespace", meta.namespace.as_deref().unwrap_or_default());
    }
    map(&mut out, "Labels", meta.labels.iter().flatten());
    map(&mut out, "Annotations", meta.annotations.iter().flatten());
    let created = meta.creation_timestamp.as_ref().map(|t| t.0.to_string()).unwrap_or_default();
    field(&mut out, "CreationTimestamp", &created);
    field(&mut out, "ResourceVersion", meta.resource_version.as_deref().unwrap_or_default());
    let parsed = match kind {
        Kind::Node => object.clone().try_parse::<Node>().map(|n| node(&mut out, &n)),
        Kind::Pod => object.clone().try_parse::<Pod>().map(|p| pod(&mut out, &p)),
        Kind::Namespace => object.clone().try_parse::<Namespace>().map(|ns| {
            let phase = ns.status.and_then(|s| s.phase).unwrap_or_else(|| "Active".into());
            field(&mut out, "Status", &phase);
        }),
        Kind::Lease => object.clone().try_parse::<Lease>().map(|l| lease(&mut out, &l)),
        // Their own sections come with the controllers; the common fields above describe them meanwhile.
        Kind::Event | Kind::ReplicaSet | Kind::Deployment => Ok(()),
    };
    if let Err(e) = parsed {
        field(&mut out, "Invalid", &e.to_string());
    }
    out.push_str("Events:            <none> (this control plane does not serve events yet)\n");
    out
}

fn field(out: &mut String, name: &str, value: &str) {
    let value = if value.is_empty() { "<none>" } else { value };
    let _ = writeln!(out, "{:<18} {value}", format!("{name}:"));
}

fn map<'a>(out: &mut String, name: &str, entries: impl Iterator<Item = (&'a String, &'a String)>) {
    let lines: Vec<String> = entries.map(|(k, v)| format!("{k}={v}")).collect();
    field(out, name, &lines.join(&format!("\n{:19}", "")));
}

fn node(out: &mut String, node: &Node) {
    field(out, "PodCIDR", node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()).unwrap_or_default());
    let Some(status) = &node.status else { return };
    for address in status.addresses.iter().flatten() {
        field(out, &format!("  {}", address.type_), &address.address);
    }
    let quantities = |q: &Option<
        std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >| { q.iter().flatten().map(|(k, v)| format!("{k}: {}", v.0)).collect::<Vec<_>>().join(", ") };
    field(out, "Capacity", &quantities(&status.capacity));
    field(out, "Allocatable", &quantities(&status.allocatable));
    if let Some(info) = &status.node_info {
        field(out, "Kernel Version", &info.kernel_version);
        field(out, "OS Image", &info.os_image);
        field(out, "Agent Version", &info.kubelet_version);
    }
    out.push_str("Conditions:\n  Type    Status  LastHeartbeatTime  Reason  Message\n");
    for c in status.conditions.iter().flatten() {
        let heartbeat = c.last_heartbeat_time.as_ref().map(|t| t.0.to_string()).unwrap_or_default();
        let reason = c.reason.as_deref().unwrap_or_default();
        let message = c.message.as_deref().unwrap_or_default();
        let _ = writeln!(out, "  {}  {}  {heartbeat}  {reason}  {message}", c.type_, c.status);
    }
}

fn pod(out: &mut String, pod: &Pod) {
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    field(out, "Node", spec.and_then(|s| s.node_name.as_deref()).unwrap_or_default());
    field(out, "Status", status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending"));
    field(out, "IP", status.and_then(|s| s.pod_ip.as_deref()).unwrap_or_default());
    out.push_str("Containers:\n");
    for c in spec.map(|s| s.containers.as_slice()).unwrap_or_default() {
        let _ = writeln!(out, "  {}:", c.name);
        let command: Vec<String> = c.command.iter().chain(c.args.iter()).flatten().cloned().collect();
        let _ = writeln!(out, "    Command:       {}", command.join(" "));
        let found =
            status.and_then(|s| s.container_statuses.as_ref()).and_then(|cs| cs.iter().find(|s| s.name == c.name));
        if let Some(cs) = found {
            let state = cs.state.as_ref().map_or("Unknown".to_string(), |s| {
                if s.running.is_some() {
                    "Running".into()
                } else if let Some(t) = &s.terminated {
                    format!("Terminated (exit code {})", t.exit_code)
                } else {
                    format!("Waiting ({})", s.waiting.as_ref().and_then(|w| w.reason.clone()).unwrap_or_default())
                }
            });
            let _ = writeln!(out, "    State:         {state}");
            let _ = writeln!(out, "    Ready:         {}", cs.ready);
            let _ = writeln!(out, "    Restart Count: {}", cs.restart_count);
        }
    }
    out.push_str("Conditions:\n  Type  Status\n");
    for c in status.and_then(|s| s.conditions.as_ref()).into_iter().flatten() {
        let _ = writeln!(out, "  {}  {}", c.type_, c.status);
    }
}

fn lease(out: &mut String, lease: &Lease) {
    let spec = lease.spec.as_ref();
    field(out, "Holder", spec.and_then(|s| s.holder_identity.as_deref()).unwrap_or_default());
    let duration = spec.and_then(|s| s.lease_duration_seconds).map(|d| format!("{d}s")).unwrap_or_default();
    field(out, "Duration", &duration);
    let renewed = spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0.to_string()).unwrap_or_default();
    field(out, "Renewed", &renewed);
}
