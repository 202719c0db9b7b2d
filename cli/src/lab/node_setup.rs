//! One node from a reachable machine to ready, the same for every provider: SSH with the pinned host key, the
//! agent (and on a control-plane node, etcd and the API server, started meanwhile), the node's NodeSpec (and
//! the links' impairments inside the guest when the host could not apply them), the container images its pods
//! name, the topology's pods on it, and last the agent told to follow the API (before the API answers: it
//! retries). Errors name the node and the stage.

use std::sync::Arc;

use testbed_control_plane::tls::Credentials;

use crate::guest::agent_client::JoinOutcome;
use crate::guest::{agent_deploy, AgentClient, Session};
use crate::plan::{Impairment, NodePlan};

use super::container_images::{self, LabImages, NodeStore};
use super::control_plane;
use super::progress::NodeProgress;
use super::provider::{Machines, UpContext};
use super::recorder::StateRecorder;
use super::state::Stage;
use super::up::{UpError, UpNode};

/// What every node's setup shares.
pub(super) struct NodeSetup {
    pub(super) ctx: UpContext,
    pub(super) impairments_in_guest: bool,
    pub(super) state: Arc<StateRecorder>,
    /// The lab's control-plane credentials, installed on the control-plane nodes.
    pub(super) credentials: Credentials,
    /// The control-plane nodes whose machines were still running when this `up` began (reused): their etcd
    /// members form the cluster a rebooted member rejoins.
    pub(super) running_members: Vec<String>,
    /// The container images the topology's pods name, built or read on the host.
    pub(super) images: LabImages,
}

/// Brings `node` to ready: its machine through `machines`, then the agent, its network and its pods, and its
/// agent joined to the control plane. Returns whether it joined (an old agent cannot).
pub(super) async fn bring_up(
    setup: &NodeSetup,
    machines: Arc<dyn Machines>,
    node: &NodePlan,
    progress: &mut NodeProgress,
) -> Result<(UpNode, JoinOutcome), UpError> {
    let name = &node.name;
    let dir = &setup.ctx.dir;
    let machine = machines.reach(node, &setup.state, progress).await?;
    setup.state.record_endpoint(name, &machine.ssh)?;

    progress.enter(Stage::Ssh);
    let session = Session::connect(machine.ssh.port, &dir.client_key(), &machine.ssh.host_key, setup.ctx.remaining())
        .await
        .map_err(|e| UpError::node(dir, name, Stage::Ssh, e))?;

    progress.enter(Stage::Agent);
    let plan = &setup.ctx.plan;
    // etcd and the API server start beside the node's own setup (nothing of it waits for them): under TCG
    // both wait mostly on the guest.
    let launch = async {
        if !plan.cluster.control_plane.contains(name) {
            return Ok(());
        }
        let start = match !machine.reused && setup.running_members.iter().any(|m| m != name) {
            true => control_plane::EtcdStart::Rejoin,
            false => control_plane::EtcdStart::Bootstrap,
        };
        control_plane::launch(&session, plan, node, &setup.credentials, start).await
    };
    let setup_node = async {
        let agent = agent_deploy::deploy(&session, name, &setup.ctx.agent_binary, machine.agent_disk_size)
            .await
            .map_err(|e| UpError::node(dir, name, Stage::Agent, e))?;
        progress.enter(Stage::Network);
        apply_network(setup, node, &session, &agent).await?;
        let images = setup.images.for_node(plan, name);
        if !images.is_empty() {
            progress.enter(Stage::Images);
            container_images::deliver(&session, NodeStore::GUEST, &images)
                .await
                .map_err(|e| UpError::node(dir, name, Stage::Images, e))?;
            progress.enter(Stage::Pods);
        }
        for pod in plan.pods.iter().filter(|p| p.node == *name) {
            let spec = setup.images.agent_spec(pod);
            agent.create_pod(&spec).await.map_err(|e| UpError::node(dir, name, Stage::Pods, e))?;
        }
        control_plane::join(plan, &setup.credentials, name, &agent)
            .await
            .map_err(|e| UpError::node(dir, name, Stage::Agent, e))
    };
    let (launched, joined) = tokio::join!(launch, setup_node);
    let joined = joined?;
    launched.map_err(|e| UpError::node(dir, name, Stage::Agent, e))?;
    setup.state.record_stage(name, Stage::Ready)?;
    let up = UpNode {
        name: name.clone(),
        pid: machine.pid,
        ssh_port: machine.ssh.port,
        reused: machine.reused,
        stage_seconds: progress.finish(),
    };
    Ok((up, joined))
}

/// The node's NodeSpec through its agent, and the links' impairments inside the guest when the host could not
/// apply them.
async fn apply_network(
    setup: &NodeSetup,
    node: &NodePlan,
    session: &Session,
    agent: &AgentClient,
) -> Result<(), UpError> {
    let (plan, dir, name) = (&setup.ctx.plan, &setup.ctx.dir, &node.name);
    let spec = plan.node_spec(node, plan.cluster.backend);
    agent.apply_node(&spec).await.map_err(|e| UpError::node(dir, name, Stage::Network, e))?;
    if !setup.impairments_in_guest {
        return Ok(());
    }
    for nic in &node.nics {
        let Some(nw) = plan.networks.iter().find(|n| n.name == nic.network) else { continue };
        if nw.impair.is_none() {
            continue;
        }
        let cmd =
            format!("tc qdisc replace dev {} root netem {}", nic.guest_interface, netem_args(&nw.impair).join(" "));
        session
            .exec_checked("netem in the guest", &cmd, None)
            .await
            .map_err(|e| UpError::node(dir, name, Stage::Network, e))?;
    }
    Ok(())
}

/// The netem arguments for an impairment (`delay 10ms 2ms loss 1% rate 100mbit`); empty when none. The same on
/// the host (a provider's taps) and inside a guest.
pub fn netem_args(impair: &Impairment) -> Vec<String> {
    let mut args = Vec::new();
    if impair.delay_ms > 0.0 || impair.jitter_ms > 0.0 {
        args.push("delay".into());
        args.push(format!("{}ms", impair.delay_ms));
        if impair.jitter_ms > 0.0 {
            args.push(format!("{}ms", impair.jitter_ms));
        }
    }
    if impair.loss_percent > 0.0 {
        args.push("loss".into());
        args.push(format!("{}%", impair.loss_percent));
    }
    if let Some(rate) = impair.rate_mbit {
        args.push("rate".into());
        args.push(format!("{rate}mbit"));
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netem_args_cover_each_field() {
        assert!(netem_args(&Impairment::default()).is_empty());
        let i = Impairment { delay_ms: 10.0, jitter_ms: 2.5, loss_percent: 1.0, rate_mbit: Some(100) };
        assert_eq!(netem_args(&i), ["delay", "10ms", "2.5ms", "loss", "1%", "rate", "100mbit"]);
        let j = Impairment { loss_percent: 0.5, ..Default::default() };
        assert_eq!(netem_args(&j), ["loss", "0.5%"]);
    }
}
