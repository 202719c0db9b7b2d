//! `up`'s work inside the lab layer's lock and rollback frame (`up.rs`), the same for every provider: the
//! agent binary and the lab's client key, the provider's lab-wide preparation, the control plane's credentials
//! and the host's forwarder to its API, then every node at once (the provider makes its machine reachable and
//! `node_setup` does the rest, starting etcd and the API server on the control-plane nodes and joining each
//! agent), and last the control plane: answering, a kubeconfig, every joined agent's Node Ready, and the
//! topology's API objects. When `up` adds nodes to a running lab (`resize.rs`), only those nodes are brought up
//! and joined; the others are not contacted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::guest::agent_client::JoinOutcome;
use crate::guest::agent_deploy;
use crate::plan::Plan;
use crate::ui::Ui;

use super::container_images::LabImages;
use super::control_plane;
use super::dir::LabDir;
use super::forwarder;
use super::keys;
use super::node_setup::{self, NodeSetup};
use super::progress::NodeProgress;
use super::provider::{Provider, Targets, UpContext};
use super::recorder::StateRecorder;
use super::state::{LabState, Stage};
use super::up::{InFlight, UpError, UpNode, UpOptions, UpOutcome};
use super::workloads::Workloads;

/// Where a converge starts: what the lab recorded before (when it was up) and which nodes to bring up.
pub(super) struct Start {
    pub(super) previous: Option<LabState>,
    pub(super) targets: Targets,
}

pub(super) async fn converge(
    ui: &Ui,
    plan: Plan,
    dir: LabDir,
    Start { previous, targets }: Start,
    opts: &UpOptions,
    provider: &dyn Provider,
    inflight: InFlight,
) -> Result<UpOutcome, UpError> {
    dir.write_plan(&plan)?;
    // Fail fast on a missing agent before any machine starts.
    let agent_binary = agent_deploy::locate_agent_binary().map_err(UpError::AgentBinary)?;
    let client_public_key = keys::client_public_key(&dir)?;
    // Before any machine starts too: a first build fetches a .deb, a path may not hold an image.
    let resolving = plan.clone();
    let images = super::up::blocking(move || LabImages::resolve(&resolving))
        .await?
        .map_err(|(image, source)| UpError::Image { image: image.to_string(), source })?;
    let ctx = UpContext {
        ui: ui.clone(),
        plan: plan.clone(),
        dir: dir.clone(),
        previous,
        targets,
        agent_binary,
        client_public_key,
        deadline: Instant::now() + opts.timeout,
        inflight,
    };
    let prepared = provider.prepare(&ctx).await?;
    keys::write_known_hosts(&dir, plan.nodes.iter().filter_map(|n| prepared.state.nodes.get(&n.name)))?;
    let credentials = control_plane::credentials(&dir, &plan)?;
    // The forwarder starts now and connects to the first control-plane node while the VMs boot. A running
    // lab's forwarder is kept: its clients (kubectl watches) stay connected.
    let fwd = match ctx.targets {
        Targets::All => forwarder::restart(&dir).await?,
        Targets::Only(_) => forwarder::ensure(&dir).await?,
    };
    let deadline = ctx.deadline;
    let reused = |n: &String| prepared.state.nodes.get(n).is_some_and(|s| s.pid.is_some());
    let running_members = plan.cluster.control_plane.iter().filter(|n| reused(n)).cloned().collect();
    let setup = Arc::new(NodeSetup {
        ctx,
        impairments_in_guest: prepared.impairments_in_guest,
        state: Arc::new(StateRecorder::new(dir.clone(), prepared.state)),
        credentials: credentials.clone(),
        running_members,
        images,
    });
    let (nodes, joins): (Vec<UpNode>, Vec<JoinOutcome>) =
        bring_up_nodes(&setup, prepared.machines, opts.timeout).await?.into_iter().unzip();
    let nodes_ready = Instant::now();
    let task = ui.task("control-plane");
    task.stage(format!("waiting for the API server through 127.0.0.1:{}", fwd.port));
    if let Err(e) = control_plane::wait_ready(fwd.port, &credentials, deadline).await {
        task.fail(e.to_string());
        return Err(e.into());
    }
    let kubeconfig = control_plane::write_kubeconfig(&dir, fwd.port, &credentials)?;
    let (mut joined, mut old) = (Vec::new(), Vec::new());
    for (node, outcome) in nodes.iter().zip(&joins) {
        match outcome {
            JoinOutcome::Joined => joined.push(node.name.clone()),
            JoinOutcome::NotSupported => old.push(node.name.as_str()),
        }
    }
    control_plane::warn_not_joined(ui, &old);
    task.stage(format!("waiting for {} to register Ready", joined.join(", ")));
    // The topology's Namespaces, Services and NetworkPolicies need no Node: they go in while the agents
    // register. Its Deployments wait for every Node, so that the scheduler spreads their pods over all of them.
    let (registered, configured) = tokio::join!(
        control_plane::wait_nodes_ready(fwd.port, &credentials, &joined, deadline),
        super::workloads::apply(ui, &plan, &kubeconfig, Workloads::Configuration)
    );
    if let Err(e) = registered {
        task.fail(e.to_string());
        return Err(e.into());
    }
    let control_plane_wait = nodes_ready.elapsed().as_secs_f64();
    task.finish(format!("API ready {control_plane_wait:.1} s after the nodes; kubeconfig {}", kubeconfig.display()));
    configured?;
    super::workloads::apply(ui, &plan, &kubeconfig, Workloads::Deployments).await?;
    let st = setup.state.snapshot();
    Ok(UpOutcome {
        lab: plan.lab.clone(),
        dir: dir.root.clone(),
        already_up: false,
        accelerator: st.accelerator,
        accelerator_reason: st.accelerator_reason.clone(),
        // Filled in by `up`, which started the clock.
        seconds: 0.0,
        nodes,
        kubeconfig: Some(kubeconfig),
        api_port: Some(fwd.port),
        control_plane_wait_seconds: control_plane_wait,
        // Filled in by `up`, which knows the change.
        added: Vec::new(),
        removed: Vec::new(),
    })
}

/// Every node at once, bounded by `timeout` (plus a margin for the nodes' own deadline errors).
async fn bring_up_nodes(
    setup: &Arc<NodeSetup>,
    machines: Arc<dyn super::provider::Machines>,
    timeout: Duration,
) -> Result<Vec<(UpNode, JoinOutcome)>, UpError> {
    let targets = setup.ctx.plan.nodes.iter().filter(|n| setup.ctx.targets.includes(&n.name));
    let nodes = targets.map(|node| {
        let (setup, machines) = (setup.clone(), machines.clone());
        async move {
            let mut progress = NodeProgress::new(setup.ctx.ui.task(&node.name));
            let result = node_setup::bring_up(&setup, machines, node, &mut progress).await;
            let task = progress.task();
            match &result {
                Ok((n, _)) => task.finish(format!(
                    "ready: ssh 127.0.0.1:{} pid {}{} [{}]",
                    n.ssh_port,
                    n.pid.map_or_else(|| "?".into(), |p| p.to_string()),
                    if n.reused { " (reused)" } else { "" },
                    n.stage_seconds.iter().map(|(s, t)| format!("{s} {t:.1}s")).collect::<Vec<_>>().join(", ")
                )),
                Err(UpError::Node { stage, message, .. }) => task.fail(format!("{stage}: {message}")),
                Err(e) => task.fail(e.to_string()),
            }
            result
        }
    });
    match tokio::time::timeout(timeout + Duration::from_secs(5), futures::future::try_join_all(nodes)).await {
        Ok(r) => r,
        Err(_) => Err(UpError::Node {
            node: "(all)".into(),
            stage: Stage::Ready,
            message: format!("not ready within --timeout {} s", timeout.as_secs()),
            serial_log: None,
            serial_tail: String::new(),
        }),
    }
}
