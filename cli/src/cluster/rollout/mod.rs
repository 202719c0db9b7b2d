//! `testbed rollout status|history|undo|pause|resume deployment/NAME`: kubectl's rollout commands, reading
//! and writing the Deployment and its ReplicaSets the way kubectl does, so the two agree on a lab.

mod history;
mod status;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::Client;
use serde_json::json;

use crate::exit::CliResult;
use crate::ui::Ui;

use super::kinds::{self, Kind};
use super::{connect, run, ClientArgs, ClusterError};

/// The annotation the deployment controller numbers ReplicaSets (and the Deployment) with.
pub(super) const REVISION: &str = "deployment.kubernetes.io/revision";

#[derive(Debug, clap::Args)]
pub struct RolloutArgs {
    #[command(subcommand)]
    pub action: RolloutAction,
}

#[derive(Debug, clap::Subcommand)]
pub enum RolloutAction {
    /// Wait until the rollout finishes (exit 0) or fails its progress deadline (exit 1).
    Status(StatusArgs),
    /// The revisions of a Deployment, or one revision's pod template.
    History(HistoryArgs),
    /// Go back to the previous revision (or `--to-revision`).
    Undo(UndoArgs),
    /// Stop rolling out template changes until `resume` (scaling still applies).
    Pause(TargetArgs),
    /// Roll out the changes made while paused, as one rollout.
    Resume(TargetArgs),
}

#[derive(Debug, clap::Args)]
pub struct TargetArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// `deployment/NAME` or `deployment NAME`.
    #[arg(required = true, num_args = 1..=2, value_name = "TYPE[/NAME]")]
    pub what: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Give up after this many seconds (exit 1); 0 waits as long as it takes.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub timeout: u64,
    /// Print the status once instead of waiting.
    #[arg(long = "watch", default_value_t = true, action = clap::ArgAction::Set)]
    pub watch: bool,
}

#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Show this revision's pod template.
    #[arg(long, value_name = "N")]
    pub revision: Option<i64>,
}

#[derive(Debug, clap::Args)]
pub struct UndoArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// The revision to go back to (default: the one before the current).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub to_revision: i64,
}

pub async fn cmd_rollout(ui: &Ui, args: RolloutArgs) -> CliResult {
    run(rollout(ui, args)).await
}

async fn rollout(ui: &Ui, args: RolloutArgs) -> Result<(), ClusterError> {
    match args.action {
        RolloutAction::Status(a) => {
            let (api, name) = deployment_api(&a.target).await?;
            status::wait(ui, &api, &name, a.timeout, a.watch).await
        }
        RolloutAction::History(a) => {
            let (api, name) = deployment_api(&a.target).await?;
            let client = connect(&a.target.client).await?;
            let rs = replica_sets_of(&client, &api, &name).await?;
            history::print(ui, &name, &rs, a.revision)
        }
        RolloutAction::Undo(a) => {
            let (api, name) = deployment_api(&a.target).await?;
            let client = connect(&a.target.client).await?;
            let rs = replica_sets_of(&client, &api, &name).await?;
            history::undo(&client, &api, &name, &rs, a.to_revision).await
        }
        RolloutAction::Pause(a) => set_paused(&a, true).await,
        RolloutAction::Resume(a) => set_paused(&a, false).await,
    }
}

/// The Deployments API of the target's namespace, and the Deployment's name.
async fn deployment_api(target: &TargetArgs) -> Result<(Api<Deployment>, String), ClusterError> {
    let targets = kinds::targets(&target.what)?;
    let name = match targets.as_slice() {
        [t] if t.kind == Kind::Deployment && t.names.len() == 1 => t.names[0].clone(),
        _ => return Err(ClusterError::Document("give one deployment: `deployment/NAME` or `deployment NAME`".into())),
    };
    let client = connect(&target.client).await?;
    let namespace = target.client.namespace.as_deref().unwrap_or("default");
    Ok((Api::namespaced(client, namespace), name))
}

/// The ReplicaSets the Deployment controls (its controller owner reference names the Deployment's uid).
async fn replica_sets_of(client: &Client, api: &Api<Deployment>, name: &str) -> Result<Vec<ReplicaSet>, ClusterError> {
    let what = format!("deployment.apps/{name}");
    let deployment = api.get(name).await.map_err(|e| ClusterError::from_kube(&what, e))?;
    let uid = deployment.metadata.uid.clone().unwrap_or_default();
    let namespace = deployment.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let rs_api: Api<ReplicaSet> = Api::namespaced(client.clone(), &namespace);
    let list = rs_api.list(&ListParams::default()).await.map_err(|e| ClusterError::from_kube(&what, e))?;
    let owned = |rs: &ReplicaSet| {
        rs.metadata.owner_references.iter().flatten().any(|o| o.uid == uid && o.controller == Some(true))
    };
    Ok(list.items.into_iter().filter(owned).collect())
}

/// `pause` and `resume`: one field, as kubectl patches it.
async fn set_paused(target: &TargetArgs, paused: bool) -> Result<(), ClusterError> {
    let (api, name) = deployment_api(target).await?;
    let what = format!("deployment.apps/{name}");
    let deployment = api.get(&name).await.map_err(|e| ClusterError::from_kube(&what, e))?;
    let now = deployment.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
    let verb = if paused { "paused" } else { "resumed" };
    if now == paused {
        if paused {
            println!("{what} already paused");
            return Ok(());
        }
        return Err(ClusterError::Document(format!("{what} is not paused")));
    }
    let patch = json!({"spec": {"paused": paused}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| ClusterError::from_kube(&what, e))?;
    println!("{what} {verb}");
    Ok(())
}

/// A ReplicaSet's revision number, 0 when it has none.
fn revision_of(rs: &ReplicaSet) -> i64 {
    rs.metadata.annotations.as_ref().and_then(|a| a.get(REVISION)).and_then(|r| r.parse().ok()).unwrap_or(0)
}
