//! How a node agent joins the cluster control plane: the API server to follow and the credentials for it.
//! `testbed up` sends one to every node (`PUT /v1/control-plane`) once the API server answers; the agent keeps
//! it on disk so that it follows the API again after a restart.

use serde::{Deserialize, Serialize};

/// The agent's side of a lab's control plane: where the API server is and how to trust and reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneJoin {
    /// The API servers' URLs on the underlay (`https://10.0.0.1:6443`), tried in order.
    pub servers: Vec<String>,
    /// PEM of the lab's CA, the only root the agent trusts for these servers.
    pub ca_pem: String,
    /// Bearer token sent with every request.
    pub token: String,
    /// The name of this node's Node object (the topology's node name).
    pub node_name: String,
}
