//! API types shared by the `testbed` CLI and `testbed-agent` (the kube-core role): the desired state the CLI
//! sends (NodeSpec, PodSpec), what the agent reports back (NodeStatus, PodStatus), exec, and errors.
//! This crate does no I/O so both sides (and tests) can use it freely.

// Every public item documented: this crate is the contract between the CLI and the agent (and, next, the
// control plane), read by people who do not read the code behind it. (`[lints] workspace = true` in
// Cargo.toml cannot be combined with crate-local lints, so the lint is set here.)
#![warn(missing_docs)]

pub mod cluster;
pub mod image_ref;
pub mod logs;
pub mod network_policy;
pub mod node;
pub mod objects;
pub mod pod;
pub mod probe;
pub mod quantity;
pub mod results;
pub mod service;
pub mod validate;
pub mod volume;

pub use cluster::{ControlPlaneJoin, ControlPlaneStatus};
pub use logs::{LogChunk, LogQuery};
pub use network_policy::*;
pub use node::*;
pub use pod::*;
pub use service::*;
pub use volume::*;

/// TCP port the agent listens on, on the guest's 127.0.0.1 only. The CLI reaches it over SSH forwarding.
pub const AGENT_PORT: u16 = 7070;
/// How often each node's agent renews its Lease `kube-node-lease/<node>` (the kubelet's 10 s). The topology
/// refuses a node monitor grace period that is not longer: every node would flap NotReady between renewals.
pub const NODE_LEASE_RENEW_SECS: u64 = 10;
/// The agent's state directory on a node (`testbed-agent serve --state-dir`'s default): NodeSpec, pod records
/// and logs, images.
pub const AGENT_STATE_DIR: &str = "/var/lib/testbed-agent";
/// The image store in it (`<state-dir>/images`): where `import-image` puts an image and pods find it.
pub const AGENT_IMAGE_STORE: &str = "/var/lib/testbed-agent/images";
/// Whether `text` is a sha256 content digest as the image-spec writes it: `sha256:` and 64 lowercase hex
/// digits (the spec's encoded form; upper case is not the same digest string). The one rule the CLI, the API
/// server and the agent apply to an image digest.
pub fn is_sha256_digest(text: &str) -> bool {
    text.strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// Version prefix of every agent endpoint, e.g. `PUT /v1/node`.
pub const API_PREFIX: &str = "/v1";

/// Body of every non-2xx answer from the agent.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApiError {
    /// The offending field as a path (`pods[0].containers[1].resources.limits.memory`), when one is to blame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The error itself, for a person: what is wrong and, where it helps, what would be accepted.
    pub message: String,
    /// What a `DELETE /v1/pods/{pod}` that failed left on the node (empty, and absent in JSON, otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leaked: Vec<Leak>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}
