//! Node networking: the `cni0` bridge, pod IPAM and veths, and flannel's backends (vxlan, host-gw, udp, none).
//! The agent converges the kernel to a `NodeSpec` by reading it back over netlink and applying the difference.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use testbed_api::{NodeSpec, ObservedNetwork};

/// Errors of the networking module. `InvalidInput` is the caller's fault (maps to 4xx); the rest are node faults.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("networking is not ready: {0}")]
    NotReady(String),
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

/// Where a pod was plugged in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodAttachment {
    pub ip: Ipv4Addr,
    pub host_veth: String,
}

/// Handle to the node's network state. Send + Sync; share it in an Arc.
pub struct Network {
    state_dir: PathBuf,
}

impl Network {
    pub async fn new(state_dir: &Path) -> Result<Network, NetError> {
        Ok(Network { state_dir: state_dir.to_path_buf() })
    }

    pub async fn apply(&self, _spec: &NodeSpec) -> Result<Vec<String>, NetError> {
        Err(self.not_ready())
    }

    pub async fn observe(&self) -> Result<ObservedNetwork, NetError> {
        Err(self.not_ready())
    }

    pub async fn attach_pod(&self, _pod: &str, _infra_pid: u32) -> Result<PodAttachment, NetError> {
        Err(self.not_ready())
    }

    pub async fn detach_pod(&self, _pod: &str) -> Result<(), NetError> {
        Err(self.not_ready())
    }

    pub async fn repair_pods(&self, _pods: &[(String, u32)]) -> Result<Vec<String>, NetError> {
        Err(self.not_ready())
    }

    fn not_ready(&self) -> NetError {
        NetError::NotReady(format!("network module under construction (state dir {})", self.state_dir.display()))
    }
}
