//! A lab that `up` created, opened from its directory, and the SSH and agent connections the suites and
//! `status` drive it with.

use std::path::PathBuf;
use std::time::Duration;

use crate::guest::{AgentClient, Session};
use crate::plan::Plan;
use crate::ui::Ui;

use super::dir::LabDir;
use super::select::{LabError, LabSelector};
use super::state::LabState;

/// A lab that `up` created: its directory, plan and state.
#[derive(Debug, Clone)]
pub struct Lab {
    pub dir: PathBuf,
    pub paths: LabDir,
    pub plan: Plan,
    pub state: LabState,
}

/// SSH and agent connection to every node of a lab.
pub struct ConnectedLab {
    pub lab: Lab,
    pub nodes: Vec<ConnectedNode>,
}

pub struct ConnectedNode {
    pub name: String,
    pub session: Session,
    pub agent: AgentClient,
}

/// How long `connect` waits for each node's sshd (the VMs are already up, so this is short).
const CONNECT_DEADLINE: Duration = Duration::from_secs(30);

impl Lab {
    pub fn open(sel: &LabSelector) -> Result<Lab, LabError> {
        let paths = sel.resolve_existing()?;
        Lab::open_dir(paths)
    }

    pub fn open_dir(paths: LabDir) -> Result<Lab, LabError> {
        let plan = paths.read_plan()?;
        let state = paths.read_state()?.ok_or_else(|| LabError::NoState(paths.name.clone()))?;
        Ok(Lab { dir: paths.root.clone(), paths, plan, state })
    }

    /// SSH session, pinned host key and port of `node`.
    pub fn node_endpoint(&self, node: &str) -> Result<(u16, String), LabError> {
        let ns = self.state.nodes.get(node).ok_or_else(|| LabError::UnknownNode {
            lab: self.plan.lab.clone(),
            node: node.to_string(),
            known: self.plan.nodes.iter().map(|n| n.name.clone()).collect(),
        })?;
        Ok((ns.ssh_port, ns.host_key_public.clone()))
    }

    /// SSH session to one node (pinned host key, the lab's client key).
    pub async fn session(&self, node: &str, deadline: Duration) -> Result<Session, LabError> {
        let (port, host_key) = self.node_endpoint(node)?;
        Session::connect(port, &self.paths.client_key(), &host_key, deadline)
            .await
            .map_err(|source| LabError::Ssh { node: node.to_string(), source: Box::new(source) })
    }

    /// SSH session plus agent client (through a forward of the agent port) for one node.
    pub async fn connect_node(&self, node: &str, deadline: Duration) -> Result<ConnectedNode, LabError> {
        let session = self.session(node, deadline).await?;
        let port = session
            .forward(testbed_api::AGENT_PORT)
            .await
            .map_err(|source| LabError::Ssh { node: node.to_string(), source: Box::new(source) })?;
        Ok(ConnectedNode { name: node.to_string(), agent: AgentClient::new(node, port), session })
    }

    /// Connects to every node in parallel.
    pub async fn connect(&self, ui: &Ui) -> Result<ConnectedLab, LabError> {
        let futures = self.plan.nodes.iter().map(|n| async move {
            let task = ui.task(&n.name);
            task.stage("connecting");
            match self.connect_node(&n.name, CONNECT_DEADLINE).await {
                Ok(c) => {
                    task.finish("connected");
                    Ok(c)
                }
                Err(e) => {
                    task.fail(e.to_string());
                    Err(e)
                }
            }
        });
        let nodes = futures::future::try_join_all(futures).await?;
        Ok(ConnectedLab { lab: self.clone(), nodes })
    }
}

impl ConnectedLab {
    pub fn node(&self, name: &str) -> Option<&ConnectedNode> {
        self.nodes.iter().find(|n| n.name == name)
    }
}
