//! The CLI as a client of a lab's control plane: `testbed get`, `apply`, `delete` and `describe`, with kube-rs
//! (the standard Kubernetes client and the `k8s-openapi` types) over the kubeconfig `up` writes for the lab,
//! so what they show is what kubectl would show.

mod apply;
mod describe;
mod documents;
mod get;
mod kinds;
mod pods;
mod rollout;
mod scale;
mod table;

use std::path::PathBuf;

use kube::api::{Api, DynamicObject};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;

use crate::exit::{CliError, CliResult};
use crate::lab::select::LabError;
use crate::lab::LabSelector;

pub use apply::{apply_topology_objects, cmd_apply, ApplyArgs};
pub use describe::{cmd_describe, DescribeArgs};
pub use get::{cmd_delete, cmd_get, DeleteArgs, GetArgs};
use kinds::Served;
pub use kinds::UnknownKind;
pub use pods::{cmd_logs, exec_in_pod, LogsArgs};
pub use rollout::{cmd_rollout, RolloutArgs};
pub use scale::{cmd_scale, ScaleArgs};

/// Which API server a command talks to, and in which namespace.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    #[command(flatten)]
    pub lab: LabSelector,
    /// A kubeconfig to use instead of the lab's (`<lab dir>/kubeconfig`, written by `up`).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["lab", "topology"])]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace of namespaced objects (default: `default`, or the document's own for `apply`).
    #[arg(long, short = 'n', value_name = "NS")]
    pub namespace: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error("lab `{lab}` has no kubeconfig at {path}: its control plane did not come up (see `testbed status`)")]
    NoKubeconfig { lab: String, path: PathBuf },
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig { path: PathBuf, message: String },
    #[error(transparent)]
    Kind(#[from] UnknownKind),
    #[error("{0}")]
    Document(String),
    #[error("{what}: the server answered {code} {reason}: {message}")]
    Api { what: String, code: u16, reason: String, message: String },
    #[error("{what}: {source}")]
    Transport {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{0} of the objects asked for failed (each is named above)")]
    Some(usize),
    /// A rollout failed its progress deadline or did not finish in time: exit 1, like a failed check.
    #[error("{0}")]
    RolloutFailed(String),
}

impl ClusterError {
    /// The server's answer to `what`, as a typed error: its `Status` when it sent one.
    fn from_kube(what: impl Into<String>, e: kube::Error) -> Self {
        match e {
            kube::Error::Api(status) => ClusterError::Api {
                what: what.into(),
                code: status.code,
                reason: status.reason.clone(),
                message: status.message.clone(),
            },
            source => ClusterError::Transport { what: what.into(), source },
        }
    }

    fn is_not_found(&self) -> bool {
        matches!(self, ClusterError::Api { code: 404, .. })
    }

    /// Exit 2 for what the user asked wrongly (an unknown kind or name, an object the server refused), 3
    /// when the control plane cannot be reached or fails.
    pub fn into_cli(self) -> CliError {
        if let ClusterError::RolloutFailed(message) = self {
            // Under `-o json` the status document is already out: TestsFailed adds no second one.
            return CliError::TestsFailed(message);
        }
        let bad_input = match &self {
            ClusterError::Lab(e) => e.is_bad_input(),
            ClusterError::Api { code, .. } => (400..500).contains(code) && ![401, 403, 429].contains(code),
            ClusterError::NoKubeconfig { .. }
            | ClusterError::Kubeconfig { .. }
            | ClusterError::Kind(_)
            | ClusterError::Document(_)
            | ClusterError::Some(_) => true,
            ClusterError::RolloutFailed(_) => false,
            ClusterError::Transport { .. } => false,
        };
        if bad_input {
            CliError::bad_input(self)
        } else {
            CliError::infra(self)
        }
    }
}

/// The kubeconfig the command uses: `--kubeconfig`, else the selected lab's.
fn kubeconfig_path(args: &ClientArgs) -> Result<PathBuf, ClusterError> {
    if let Some(path) = &args.kubeconfig {
        return Ok(path.clone());
    }
    let dir = args.lab.resolve_existing()?;
    let path = crate::lab::control_plane::kubeconfig_path(&dir);
    if !path.exists() {
        return Err(ClusterError::NoKubeconfig { lab: dir.name, path });
    }
    Ok(path)
}

async fn connect(args: &ClientArgs) -> Result<Client, ClusterError> {
    client_of(&kubeconfig_path(args)?).await
}

/// A client of the API server a kubeconfig names.
pub async fn client_of(path: &std::path::Path) -> Result<Client, ClusterError> {
    let path = path.to_path_buf();
    if !path.exists() {
        return Err(ClusterError::Kubeconfig {
            path,
            message: "no such file (the lab's control plane is not up)".into(),
        });
    }
    let bad = |message: String| ClusterError::Kubeconfig { path: path.clone(), message };
    let kubeconfig = Kubeconfig::read_from(&path).map_err(|e| bad(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| bad(e.to_string()))?;
    Client::try_from(config).map_err(|e| bad(e.to_string()))
}

/// The API of `kind` in `namespace` (ignored for cluster-scoped kinds; `None`: across namespaces).
fn api(client: &Client, kind: kinds::Kind, namespace: Option<&str>) -> Api<DynamicObject> {
    let resource = kind.api_resource();
    match namespace {
        Some(ns) if kind.namespaced() => Api::namespaced_with(client.clone(), ns, &resource),
        _ => Api::all_with(client.clone(), &resource),
    }
}

/// What `apply` or `delete` did to one object.
#[derive(Debug, serde::Serialize)]
struct Outcome {
    #[serde(serialize_with = "kind_name")]
    kind: kinds::Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    name: String,
    /// `created`, `configured`, `unchanged` or `deleted`.
    action: &'static str,
}

fn kind_name<S: serde::Serializer>(kind: &kinds::Kind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(kind.kind())
}

/// kubectl's `pod/web created` lines, or one JSON array of outcomes under `-o json`.
fn print_outcomes(ui: &crate::ui::Ui, outcomes: &[Outcome]) {
    if ui.is_json() {
        println!("{}", serde_json::to_string_pretty(outcomes).unwrap_or_default());
        return;
    }
    for o in outcomes {
        println!("{}/{} {}", o.kind.qualified(), o.name, o.action);
    }
}

/// Runs a cluster command, mapping its error to the CLI's exit codes.
pub async fn run<F: std::future::Future<Output = Result<(), ClusterError>>>(f: F) -> CliResult {
    f.await.map_err(ClusterError::into_cli)
}

#[cfg(test)]
mod tests;
