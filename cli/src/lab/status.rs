//! `testbed status`: every node's machine and agent, as a typed report. Its JSON (`status -o json`) is a
//! contract for scripts: the field names and shapes must not change.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use testbed_api::{Backend, PodStatus};

use super::handle::Lab;
use super::provider::Provider;
use super::state::{Accel, ProviderKind, Stage};
use crate::exit::{CliError, CliResult};

/// How long `status` waits for each node's sshd: the VM is up, so this is short.
const CONNECT_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Serialize)]
pub struct LabStatus {
    pub lab: String,
    pub dir: PathBuf,
    pub netns: String,
    /// What made the machines.
    pub provider: ProviderKind,
    pub backend: Backend,
    pub accelerator: Accel,
    pub accelerator_reason: String,
    pub qemu_version: String,
    pub created_at: String,
    /// Every node's agent answers.
    pub healthy: bool,
    pub nodes: Vec<NodeReport>,
    pub control_plane: ControlPlaneReport,
}

/// Where the lab's control plane runs and how the host reaches it.
#[derive(Debug, Clone, Serialize)]
pub struct ControlPlaneReport {
    pub nodes: Vec<String>,
    /// The API forwarder `up` started (absent before `up` got that far).
    pub forwarder: Option<ForwarderReport>,
    pub kubeconfig: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct ForwarderReport {
    pub pid: u32,
    /// Its port on the host's 127.0.0.1.
    pub port: u16,
    /// Still running (and still this lab's forwarder).
    pub running: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    pub name: String,
    pub pid: Option<u32>,
    /// The recorded machine still runs.
    pub alive: bool,
    pub ssh_port: u16,
    pub accelerator: Option<Accel>,
    pub stage: Option<Stage>,
    pub underlay_ip: Option<String>,
    pub serial_log: PathBuf,
    pub agent: AgentReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentReport {
    /// The agent answers `GET /healthz`.
    pub healthy: bool,
    #[serde(flatten)]
    pub detail: AgentDetail,
}

/// What is known of a node's agent; each shape has its own JSON fields.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum AgentDetail {
    /// Healthy, with its node status.
    Node {
        version: String,
        converged: bool,
        last_error: Option<String>,
        pods: usize,
        pod_status: Vec<PodStatus>,
        kernel: String,
    },
    /// Healthy, but `GET /v1/node` failed.
    NoNodeStatus { version: String, error: String },
    /// Not reachable or not healthy.
    Down { error: String },
}

impl AgentReport {
    fn down(error: impl ToString) -> Self {
        AgentReport { healthy: false, detail: AgentDetail::Down { error: error.to_string() } }
    }
}

/// Looks at every node at once: its machine through the provider, its agent through SSH.
pub async fn collect(lab: &Lab, provider: &dyn Provider) -> LabStatus {
    let checks = lab.plan.nodes.iter().map(|n| async move {
        let ns = lab.state.nodes.get(&n.name);
        let alive = ns.is_some_and(|s| provider.is_running(&lab.paths, &n.name, s));
        let agent = if alive { agent_report(lab, &n.name).await } else { AgentReport::down("VM not running") };
        NodeReport {
            name: n.name.clone(),
            pid: ns.and_then(|s| s.pid),
            alive,
            ssh_port: n.ssh_port,
            accelerator: ns.map(|s| s.accelerator),
            stage: ns.map(|s| s.stage),
            underlay_ip: n.nics.first().map(|x| x.ip.to_string()),
            serial_log: lab.paths.serial_log(&n.name),
            agent,
        }
    });
    let nodes = futures::future::join_all(checks).await;
    LabStatus {
        lab: lab.plan.lab.clone(),
        dir: lab.dir.clone(),
        netns: lab.plan.netns.clone(),
        provider: lab.state.provider,
        backend: lab.plan.cluster.backend,
        accelerator: lab.state.accelerator,
        accelerator_reason: lab.state.accelerator_reason.clone(),
        qemu_version: lab.state.qemu_version.clone(),
        created_at: lab.state.created_at.clone(),
        healthy: nodes.iter().all(|n| n.agent.healthy),
        nodes,
        control_plane: ControlPlaneReport {
            nodes: lab.plan.cluster.control_plane.clone(),
            forwarder: super::forwarder::read_record(&lab.paths).map(|r| ForwarderReport {
                pid: r.pid,
                port: r.port,
                running: super::forwarder::is_running(&lab.paths, &r),
            }),
            kubeconfig: super::control_plane::kubeconfig_path(&lab.paths),
        },
    }
}

async fn agent_report(lab: &Lab, node: &str) -> AgentReport {
    let c = match lab.connect_node(node, CONNECT_DEADLINE).await {
        Ok(c) => c,
        Err(e) => return AgentReport::down(e),
    };
    let health = match c.agent.health().await {
        Ok(h) => h,
        Err(e) => return AgentReport::down(e),
    };
    let detail = match c.agent.node_status().await {
        Ok(ns) => AgentDetail::Node {
            version: health.agent_version,
            converged: ns.converged,
            last_error: ns.last_error,
            pods: ns.pods.len(),
            pod_status: ns.pods,
            kernel: ns.kernel,
        },
        Err(e) => AgentDetail::NoNodeStatus { version: health.agent_version, error: e.to_string() },
    };
    AgentReport { healthy: true, detail }
}

impl LabStatus {
    /// `status` exits 3 when a node's VM is dead or its agent does not answer (scripts rely on the code), 0 when
    /// every node is healthy. The report is already on stdout, so the error must not add a second document.
    pub fn verdict(&self) -> CliResult {
        let sick: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| !n.agent.healthy)
            .map(|n| format!("{} ({})", n.name, if n.alive { "agent not healthy" } else { "VM not running" }))
            .collect();
        if sick.is_empty() {
            Ok(())
        } else {
            // InfraReported: exit 3 with the results already printed (no error document follows on stdout).
            Err(CliError::InfraReported(format!("lab `{}` is not healthy: {}", self.lab, sick.join(", "))))
        }
    }

    /// The report for people: one line for the lab, a table of nodes, and one of pods when there are any.
    pub fn write_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            out,
            "lab {}  provider {}  backend {}  accelerator {}  qemu {}  created {}",
            self.lab,
            self.provider,
            self.backend.as_str(),
            self.accelerator,
            self.qemu_version,
            self.created_at
        )?;
        let cp = &self.control_plane;
        let forwarder = match &cp.forwarder {
            Some(f) => format!(
                "API 127.0.0.1:{} via forwarder pid {} ({})",
                f.port,
                f.pid,
                if f.running { "running" } else { "NOT running: `testbed up` starts it again" }
            ),
            None => "no API forwarder".into(),
        };
        writeln!(out, "control plane {}  {forwarder}  kubeconfig {}", cp.nodes.join(","), cp.kubeconfig.display())?;
        writeln!(out, "{:<12} {:>8} {:<6} {:>6} {:<16} AGENT", "NODE", "PID", "ALIVE", "SSH", "UNDERLAY")?;
        for n in &self.nodes {
            writeln!(
                out,
                "{:<12} {:>8} {:<6} {:>6} {:<16} {}",
                n.name,
                n.pid.map_or_else(|| "-".into(), |p| p.to_string()),
                if n.alive { "yes" } else { "NO" },
                n.ssh_port,
                n.underlay_ip.as_deref().unwrap_or("-"),
                agent_summary(&n.agent)
            )?;
        }
        let pods: Vec<(&str, &PodStatus)> = self
            .nodes
            .iter()
            .flat_map(|n| {
                let pods = match &n.agent.detail {
                    AgentDetail::Node { pod_status, .. } => pod_status.as_slice(),
                    _ => &[],
                };
                pods.iter().map(move |p| (n.name.as_str(), p))
            })
            .collect();
        if pods.is_empty() {
            return Ok(());
        }
        writeln!(out, "\n{:<24} {:<12} {:<10} {:<16} {:>8}  QOS", "POD", "NODE", "PHASE", "IP", "RESTARTS")?;
        for (node, p) in pods {
            let restarts: u64 = p.containers.iter().map(|c| u64::from(c.restart_count)).sum();
            writeln!(
                out,
                "{:<24} {:<12} {:<10} {:<16} {:>8}  {}",
                p.name,
                node,
                json_word(&p.phase),
                p.ip.map_or_else(|| "-".into(), |ip| ip.to_string()),
                restarts,
                json_word(&p.qos_class)
            )?;
        }
        Ok(())
    }
}

fn agent_summary(agent: &AgentReport) -> String {
    match &agent.detail {
        AgentDetail::Node { version, converged: true, pods, .. } => {
            format!("healthy {version}, converged, {pods} pod(s)")
        }
        AgentDetail::Node { version, converged: false, last_error, pods, .. } => {
            format!("healthy {version}, NOT converged: {}, {pods} pod(s)", last_error.as_deref().unwrap_or("pending"))
        }
        AgentDetail::NoNodeStatus { version, .. } => format!("healthy {version}, no node status, 0 pod(s)"),
        AgentDetail::Down { error } => format!("DOWN: {error}"),
    }
}

/// An enum's word as the agent's API spells it (`Running`, `Guaranteed`): the table shows what the JSON says.
fn json_word(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "?".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(name: &str, alive: bool, healthy: bool) -> NodeReport {
        NodeReport {
            name: name.into(),
            pid: Some(1),
            alive,
            ssh_port: 2201,
            accelerator: Some(Accel::Tcg),
            stage: Some(Stage::Ready),
            underlay_ip: None,
            serial_log: PathBuf::from("/x/serial.log"),
            agent: if healthy {
                AgentReport {
                    healthy: true,
                    detail: AgentDetail::NoNodeStatus { version: "v".into(), error: "e".into() },
                }
            } else {
                AgentReport::down("gone")
            },
        }
    }

    fn status(nodes: Vec<NodeReport>) -> LabStatus {
        LabStatus {
            lab: "l".into(),
            dir: PathBuf::from("/x"),
            netns: "tb-l".into(),
            provider: ProviderKind::Qemu,
            backend: Backend::Vxlan,
            accelerator: Accel::Tcg,
            accelerator_reason: String::new(),
            qemu_version: String::new(),
            created_at: String::new(),
            healthy: nodes.iter().all(|n| n.agent.healthy),
            nodes,
            control_plane: ControlPlaneReport {
                nodes: vec!["a".into()],
                forwarder: Some(ForwarderReport { pid: 7, port: 40000, running: false }),
                kubeconfig: PathBuf::from("/x/kubeconfig"),
            },
        }
    }

    #[test]
    fn status_exits_3_for_a_dead_vm_or_sick_agent_and_0_when_all_healthy() {
        assert!(status(vec![report("a", true, true), report("b", true, true)]).verdict().is_ok());
        let sick = status(vec![report("a", true, true), report("b", false, false), report("c", true, false)]);
        let err = sick.verdict().unwrap_err();
        assert_eq!(err.exit_code(), 3);
        assert!(err.results_printed(), "no second JSON document after the status report");
        let text = err.to_string();
        assert!(text.contains("b (VM not running)") && text.contains("c (agent not healthy)"), "{text}");
    }

    #[test]
    fn agent_json_keeps_the_fields_of_each_shape() {
        let down = serde_json::to_value(AgentReport::down("VM not running")).unwrap();
        assert_eq!(down, serde_json::json!({"healthy": false, "error": "VM not running"}));
        let node = AgentReport {
            healthy: true,
            detail: AgentDetail::Node {
                version: "1".into(),
                converged: false,
                last_error: None,
                pods: 0,
                pod_status: vec![],
                kernel: "6.1".into(),
            },
        };
        assert_eq!(
            serde_json::to_value(node).unwrap(),
            serde_json::json!({"healthy": true, "version": "1", "converged": false, "last_error": null, "pods": 0,
                "pod_status": [], "kernel": "6.1"})
        );
        let n = serde_json::to_value(report("a", true, true)).unwrap();
        let keys: Vec<&str> = n.as_object().unwrap().keys().map(String::as_str).collect();
        for k in ["name", "pid", "alive", "ssh_port", "accelerator", "stage", "underlay_ip", "serial_log", "agent"] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
        assert_eq!(n["stage"], "ready");
    }
}
