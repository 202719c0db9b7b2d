//! `testbed describe TYPE [NAME...]`: one object at a time, for a person, in kubectl's layout (fields, then
//! the kind's own sections: a node's addresses, capacity and conditions; a pod's containers and conditions;
//! a Deployment's replicas, strategy and ReplicaSets; a ReplicaSet's pods; a Service's addresses and ports;
//! an EndpointSlice's endpoints), and the object's Events.

mod core_kinds;
mod events;
mod network_policies;
mod services;
mod workloads;

use std::fmt::Write;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, DynamicObject, ListParams};
use kube::Client;

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
        let mut objects = Vec::new();
        if names.is_empty() {
            let list = api.list(&ListParams::default()).await.map_err(|e| ClusterError::from_kube(what("*"), e))?;
            objects.extend(list.items);
        }
        for name in names {
            objects.push(api.get(&name).await.map_err(|e| ClusterError::from_kube(what(&name), e))?);
        }
        for object in objects {
            let related = Related::fetch(&client, kind, &object).await?;
            texts.push(text(kind, &object, &related));
        }
    }
    print!("{}", texts.join("\n\n"));
    Ok(())
}

/// What a description shows besides the object: its Events, and the objects it controls.
struct Related {
    events: Vec<k8s_openapi::api::core::v1::Event>,
    replica_sets: Vec<ReplicaSet>,
    pods: Vec<Pod>,
}

impl Related {
    async fn fetch(client: &Client, kind: Kind, object: &DynamicObject) -> Result<Self, ClusterError> {
        let namespace = object.metadata.namespace.as_deref();
        let uid = object.metadata.uid.clone().unwrap_or_default();
        let events = events::of(client, namespace, &uid).await?;
        let what = format!("{}/{}", kind.qualified(), object.metadata.name.as_deref().unwrap_or_default());
        let owned = |refs: Option<&Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>>| {
            refs.into_iter().flatten().any(|o| o.uid == uid && o.controller == Some(true))
        };
        let ns = namespace.unwrap_or("default");
        let mut related = Self { events, replica_sets: Vec::new(), pods: Vec::new() };
        match kind {
            Kind::Deployment => {
                let api: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
                let list = api.list(&ListParams::default()).await.map_err(|e| ClusterError::from_kube(&what, e))?;
                related.replica_sets =
                    list.items.into_iter().filter(|rs| owned(rs.metadata.owner_references.as_ref())).collect();
            }
            Kind::ReplicaSet => {
                let api: Api<Pod> = Api::namespaced(client.clone(), ns);
                let list = api.list(&ListParams::default()).await.map_err(|e| ClusterError::from_kube(&what, e))?;
                related.pods = list.items.into_iter().filter(|p| owned(p.metadata.owner_references.as_ref())).collect();
            }
            _ => {}
        }
        Ok(related)
    }
}

/// The description of one object.
fn text(kind: Kind, object: &DynamicObject, related: &Related) -> String {
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
    if let Some(owner) = meta.owner_references.iter().flatten().find(|o| o.controller == Some(true)) {
        field(&mut out, "Controlled By", &format!("{}/{}", owner.kind, owner.name));
    }
    let parsed = match kind {
        Kind::Node => object.clone().try_parse::<Node>().map(|n| core_kinds::node(&mut out, &n)),
        Kind::Pod => object.clone().try_parse::<Pod>().map(|p| core_kinds::pod(&mut out, &p)),
        Kind::Namespace => object.clone().try_parse::<Namespace>().map(|ns| {
            let phase = ns.status.and_then(|s| s.phase).unwrap_or_else(|| "Active".into());
            field(&mut out, "Status", &phase);
        }),
        Kind::Lease => object.clone().try_parse::<Lease>().map(|l| core_kinds::lease(&mut out, &l)),
        Kind::Deployment => {
            object.clone().try_parse::<Deployment>().map(|d| workloads::deployment(&mut out, &d, &related.replica_sets))
        }
        Kind::ReplicaSet => {
            object.clone().try_parse::<ReplicaSet>().map(|rs| workloads::replica_set(&mut out, &rs, &related.pods))
        }
        Kind::Event => {
            object.clone().try_parse::<k8s_openapi::api::core::v1::Event>().map(|e| events::event(&mut out, &e))
        }
        Kind::Service => object.clone().try_parse().map(|s| services::service(&mut out, &s)),
        Kind::EndpointSlice => object.clone().try_parse().map(|s| services::endpoint_slice(&mut out, &s)),
        Kind::NetworkPolicy => object.clone().try_parse().map(|p| network_policies::network_policy(&mut out, &p)),
    };
    if let Err(e) = parsed {
        field(&mut out, "Invalid", &e.to_string());
    }
    if kind != Kind::Event {
        events::section(&mut out, &related.events, k8s_openapi::jiff::Timestamp::now());
    }
    out
}

pub(super) fn field(out: &mut String, name: &str, value: &str) {
    let value = if value.is_empty() { "<none>" } else { value };
    let _ = writeln!(out, "{:<18} {value}", format!("{name}:"));
}

pub(super) fn map<'a>(out: &mut String, name: &str, entries: impl Iterator<Item = (&'a String, &'a String)>) {
    let lines: Vec<String> = entries.map(|(k, v)| format!("{k}={v}")).collect();
    field(out, name, &lines.join(&format!("\n{:19}", "")));
}
