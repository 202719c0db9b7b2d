//! `testbed scale deployment/NAME --replicas N`: writes the `scale` subresource, as `kubectl scale` does, so
//! the change is one field and the controller does the rest.

use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::exit::CliResult;
use crate::ui::Ui;

use super::kinds::{self, Kind, Served};
use super::{api, connect, run, ClientArgs, ClusterError};

#[derive(Debug, clap::Args)]
pub struct ScaleArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The new number of replicas.
    #[arg(long, value_name = "N")]
    pub replicas: u32,
    /// Only scale if the object has this many replicas now (a precondition, as `kubectl scale` has).
    #[arg(long, value_name = "N")]
    pub current_replicas: Option<u32>,
    /// `deployment/NAME`, `replicaset/NAME`, or `deployment NAME`.
    #[arg(required = true, num_args = 1..=2, value_name = "TYPE[/NAME]")]
    pub what: Vec<String>,
}

pub async fn cmd_scale(ui: &Ui, args: ScaleArgs) -> CliResult {
    run(scale(ui, args)).await
}

async fn scale(ui: &Ui, args: ScaleArgs) -> Result<(), ClusterError> {
    let (kind, name) = scalable(&args.what)?;
    let client = connect(&args.client).await?;
    let namespace = args.client.namespace.as_deref().unwrap_or("default");
    let api = api(&client, kind, Some(namespace));
    let what = format!("{}/{name}", kind.qualified());
    let mut patch = json!({"spec": {"replicas": args.replicas}});
    if let Some(current) = args.current_replicas {
        let scale = api.get_scale(&name).await.map_err(|e| ClusterError::from_kube(&what, e))?;
        let now = scale.spec.and_then(|s| s.replicas).unwrap_or(0);
        if now != current as i32 {
            return Err(ClusterError::Document(format!(
                "{what}: expected {current} replicas (--current-replicas), it has {now}"
            )));
        }
        // The write must apply to the version checked.
        patch["metadata"] = json!({"resourceVersion": scale.metadata.resource_version});
    }
    api.patch_scale(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| ClusterError::from_kube(&what, e))?;
    if ui.is_json() {
        println!("{}", json!({"kind": kind.kind(), "namespace": namespace, "name": name, "replicas": args.replicas}));
    } else {
        println!("{what} scaled");
    }
    Ok(())
}

/// The one Deployment or ReplicaSet the arguments name.
pub(super) fn scalable(what: &[String]) -> Result<(Kind, String), ClusterError> {
    let targets = kinds::targets(what)?;
    match targets.as_slice() {
        [t] if t.names.len() == 1 && matches!(t.kind, Kind::Deployment | Kind::ReplicaSet) => {
            Ok((t.kind, t.names[0].clone()))
        }
        [t] if t.names.len() == 1 => Err(ClusterError::Document(format!(
            "{} cannot be scaled: give a deployment or a replicaset",
            t.kind.plural()
        ))),
        _ => Err(ClusterError::Document("give one object: `deployment/NAME` or `deployment NAME`".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_one_deployment_or_replica_set_is_scalable() {
        assert_eq!(scalable(&args(&["deploy/web"])).unwrap(), (Kind::Deployment, "web".into()));
        assert_eq!(scalable(&args(&["rs", "web-1"])).unwrap(), (Kind::ReplicaSet, "web-1".into()));
        for bad in [&["pod/web"][..], &["deploy/a", "deploy/b"], &["deploy"], &["svc/web"]] {
            assert!(scalable(&args(bad)).is_err(), "{bad:?}");
        }
    }
}
