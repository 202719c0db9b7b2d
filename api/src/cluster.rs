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

/// `GET /v1/control-plane`: whether the agent follows a lab's API server and how that goes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlPlaneStatus {
    /// A join is stored and the follow loop runs (`PUT` starts it, `DELETE` stops it).
    pub following: bool,
    /// The Node object the agent keeps (the join's `node_name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The API server the loop last talked to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The loop's last request to the API server succeeded.
    pub connected: bool,
    /// Why the loop last lost the API server (kept until it is reached again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// RFC 3339 time of the node Lease's last renewal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<String>,
    /// API pods bound to this node that the agent runs (node-local pods are not counted).
    pub pods: usize,
}
