//! QEMU provider and lab lifecycle: netns, bridges, taps, VMs, SSH, lab state. (owner: provider)
//!
//! Layout: `labdir` (directory, state, lock), `hostnet` (netns/bridge/tap/netem behind a trait), `qemu`
//! (command line, launch, QMP), `accel` (KVM probe), `up`/`down` (orchestration), `lab` (selector and the
//! suites' handle), `doctor`. The command handlers below only parse, call and print.

pub mod accel;
pub mod doctor;
mod doctor_qemu;
pub mod down;
pub mod hostnet;
pub mod lab;
pub mod labdir;
pub mod procs;
pub mod qemu;
pub mod up;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use serde_json::json;

use crate::exit::{CliError, CliResult};
use crate::ui::Ui;

pub use lab::{Lab, LabSelector};

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Topology file (YAML); its `name:` is the lab's name.
    pub file: PathBuf,
    /// On failure, keep the VMs, netns and lab directory for inspection (remove them with `down`).
    #[arg(long)]
    pub keep: bool,
    /// Seconds allowed for all nodes to boot and get a ready agent (image builds not included).
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub timeout: u64,
}

#[derive(Debug, clap::Args)]
pub struct DownArgs {
    #[command(flatten)]
    pub lab: LabSelector,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub lab: LabSelector,
}

#[derive(Debug, clap::Args)]
pub struct SshArgs {
    #[command(flatten)]
    pub lab: LabSelector,
    /// Node name.
    pub node: String,
    /// A command to run instead of a login shell, as with ssh: its words are joined and given to the node's
    /// shell, and its exit code is testbed's.
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub lab: LabSelector,
    /// Node name.
    pub node: String,
    /// The command. One argument is handed to the guest's shell as is (pipes work); several are quoted
    /// one by one.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {}

fn print_json(value: &serde_json::Value) -> CliResult {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{value:#}").map_err(CliError::infra)
}

/// `up` and `down` make and remove network namespaces, bridges and taps, which only root may: say so before
/// anything is made, instead of failing half-way with EPERM.
fn require_root(command: &str) -> CliResult {
    if nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    Err(CliError::bad_input(anyhow!(
        "`testbed {command}` needs root (it creates and removes network namespaces, bridges and taps): \
         run it as root or with sudo (`sudo testbed {command} ...`)"
    )))
}

pub async fn cmd_up(ui: &Ui, a: UpArgs) -> CliResult {
    require_root("up")?;
    let plan = crate::topology::load_plan(&a.file).map_err(CliError::bad_input)?;
    let opts = up::UpOptions { keep: a.keep, timeout: Duration::from_secs(a.timeout) };
    let outcome = up::up(ui, plan, &opts, Arc::new(hostnet::IpHostNet)).await?;
    if ui.is_json() {
        return print_json(&serde_json::to_value(&outcome).map_err(CliError::infra)?);
    }
    if !outcome.already_up {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "lab {} up in {:.1} s (accelerator {}: {})",
            outcome.lab, outcome.seconds, outcome.accelerator, outcome.accelerator_reason
        );
        for n in &outcome.nodes {
            let _ = writeln!(
                out,
                "  {:<12} ssh 127.0.0.1:{}  testbed ssh --lab {} {}",
                n.name, n.ssh_port, outcome.lab, n.name
            );
        }
    }
    Ok(())
}

pub async fn cmd_down(ui: &Ui, a: DownArgs) -> CliResult {
    require_root("down")?;
    let Some(dir) = a.lab.resolve()? else {
        ui.info("no lab; nothing to do");
        if ui.is_json() {
            return print_json(&json!({"lab": null, "removed": false}));
        }
        return Ok(());
    };
    let net = hostnet::IpHostNet;
    // Always under the lock (it lives outside the directory), so an `up` starting now cannot have its new
    // directory removed by this `down`.
    let _lock = dir.lock().map_err(CliError::infra)?;
    let d = dir.clone();
    let t = tokio::task::spawn_blocking(move || down::teardown(&d, &net))
        .await
        .map_err(CliError::infra)?
        .map_err(CliError::infra)?;
    if ui.is_json() {
        return print_json(&json!({
            "lab": dir.name,
            "stopped": t.stopped.iter().map(|(n, p)| json!({"node": n, "pid": p})).collect::<Vec<_>>(),
            "netns_deleted": t.netns_deleted,
            "dir_removed": t.dir_removed,
        }));
    }
    if t.is_noop() {
        ui.info(format!("lab `{}`: nothing left to remove", dir.name));
    } else {
        ui.info(format!(
            "lab `{}` down: {} VM(s) stopped, netns {}, directory {}",
            dir.name,
            t.stopped.len(),
            t.netns_deleted.as_deref().unwrap_or("(already gone)"),
            if t.dir_removed { "removed" } else { "(already gone)" }
        ));
    }
    Ok(())
}

pub async fn cmd_status(ui: &Ui, a: StatusArgs) -> CliResult {
    let lab = Lab::open(&a.lab)?;
    let checks = lab.plan.nodes.iter().map(|n| {
        let lab = &lab;
        async move {
            let ns = lab.state.nodes.get(&n.name);
            let alive = ns.is_some_and(|s| match (s.pid, s.pid_start_time) {
                (Some(pid), Some(st)) => down::is_node_vm(&lab.paths, &n.name, pid, st),
                _ => false,
            });
            let agent = if alive {
                match lab.connect_node(&n.name, Duration::from_secs(5)).await {
                    Ok(c) => match c.agent.health().await {
                        Ok(h) => match c.agent.node_status().await {
                            Ok(ns) => json!({
                                "healthy": true,
                                "version": h.agent_version,
                                "converged": ns.converged,
                                "last_error": ns.last_error,
                                "pods": ns.pods.len(),
                                "pod_status": ns.pods,
                                "kernel": ns.kernel,
                            }),
                            Err(e) => json!({"healthy": true, "version": h.agent_version, "error": e.to_string()}),
                        },
                        Err(e) => json!({"healthy": false, "error": e.to_string()}),
                    },
                    Err(e) => json!({"healthy": false, "error": e.to_string()}),
                }
            } else {
                json!({"healthy": false, "error": "VM not running"})
            };
            json!({
                "name": n.name,
                "pid": ns.and_then(|s| s.pid),
                "alive": alive,
                "ssh_port": n.ssh_port,
                "accelerator": ns.map(|s| s.accelerator),
                "stage": ns.map(|s| s.stage.clone()),
                "underlay_ip": n.nics.first().map(|x| x.ip.to_string()),
                "serial_log": lab.paths.serial_log(&n.name),
                "agent": agent,
            })
        }
    });
    let nodes = futures::future::join_all(checks).await;
    let healthy = nodes.iter().all(|n| n["agent"]["healthy"] == json!(true));
    let doc = json!({
        "lab": lab.plan.lab,
        "dir": lab.dir,
        "netns": lab.plan.netns,
        "backend": lab.plan.cluster.backend,
        "accelerator": lab.state.accelerator,
        "accelerator_reason": lab.state.accelerator_reason,
        "qemu_version": lab.state.qemu_version,
        "created_at": lab.state.created_at,
        "healthy": healthy,
        "nodes": nodes,
    });
    let verdict = status_verdict(&lab.plan.lab, &nodes);
    if ui.is_json() {
        print_json(&doc)?;
        return verdict;
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "lab {}  backend {}  accelerator {}  qemu {}  created {}",
        lab.plan.lab,
        lab.plan.cluster.backend.as_str(),
        lab.state.accelerator,
        lab.state.qemu_version,
        lab.state.created_at
    );
    let _ = writeln!(out, "{:<12} {:>8} {:<6} {:>6} {:<16} AGENT", "NODE", "PID", "ALIVE", "SSH", "UNDERLAY");
    for n in &nodes {
        let agent = if n["agent"]["healthy"] == json!(true) {
            let converged = match n["agent"]["converged"].as_bool() {
                Some(true) => "converged".to_string(),
                Some(false) => format!("NOT converged: {}", n["agent"]["last_error"].as_str().unwrap_or("pending")),
                None => "no node status".to_string(),
            };
            format!(
                "healthy {}, {converged}, {} pod(s)",
                n["agent"]["version"].as_str().unwrap_or_default(),
                n["agent"]["pods"].as_u64().unwrap_or(0)
            )
        } else {
            format!("DOWN: {}", n["agent"]["error"].as_str().unwrap_or_default())
        };
        let _ = writeln!(
            out,
            "{:<12} {:>8} {:<6} {:>6} {:<16} {}",
            n["name"].as_str().unwrap_or_default(),
            n["pid"].as_u64().map_or_else(|| "-".into(), |p| p.to_string()),
            if n["alive"] == json!(true) { "yes" } else { "NO" },
            n["ssh_port"],
            n["underlay_ip"].as_str().unwrap_or("-"),
            agent
        );
    }
    let pods: Vec<(&str, &serde_json::Value)> = nodes
        .iter()
        .flat_map(|n| {
            let node = n["name"].as_str().unwrap_or_default();
            n["agent"]["pod_status"].as_array().into_iter().flatten().map(move |p| (node, p))
        })
        .collect();
    if !pods.is_empty() {
        let _ = writeln!(out, "\n{:<24} {:<12} {:<10} {:<16} {:>8}  QOS", "POD", "NODE", "PHASE", "IP", "RESTARTS");
        for (node, p) in pods {
            let restarts: u64 =
                p["containers"].as_array().into_iter().flatten().filter_map(|c| c["restart_count"].as_u64()).sum();
            let _ = writeln!(
                out,
                "{:<24} {:<12} {:<10} {:<16} {:>8}  {}",
                p["name"].as_str().unwrap_or_default(),
                node,
                p["phase"].as_str().unwrap_or("?"),
                p["ip"].as_str().unwrap_or("-"),
                restarts,
                p["qos_class"].as_str().unwrap_or("?")
            );
        }
    }
    verdict
}

/// `status` exits 3 when a node's VM is dead or its agent does not answer (scripts rely on the code), 0 when
/// every node is healthy. The report is already on stdout, so the error must not add a second document.
fn status_verdict(lab: &str, nodes: &[serde_json::Value]) -> CliResult {
    let sick: Vec<String> = nodes
        .iter()
        .filter(|n| n["agent"]["healthy"] != json!(true))
        .map(|n| {
            let why = if n["alive"] == json!(true) { "agent not healthy" } else { "VM not running" };
            format!("{} ({why})", n["name"].as_str().unwrap_or("?"))
        })
        .collect();
    if sick.is_empty() {
        Ok(())
    } else {
        // InfraReported: exit 3 with the results already printed (no error document follows on stdout).
        Err(CliError::InfraReported(format!("lab `{lab}` is not healthy: {}", sick.join(", "))))
    }
}

pub async fn cmd_ssh(_ui: &Ui, a: SshArgs) -> CliResult {
    use std::os::unix::process::CommandExt;
    let lab = Lab::open(&a.lab)?;
    let (port, _) = lab.node_endpoint(&a.node)?;
    let mut cmd = crate::guest::interactive::interactive_ssh_command(
        port,
        &lab.paths.client_key(),
        &lab.paths.known_hosts(),
        &a.command,
    );
    // Replaces this process: the terminal belongs to ssh, and its exit code is ours.
    let err = cmd.exec();
    Err(CliError::infra(anyhow!("cannot run ssh (apt-get install -y openssh-client): {err}")))
}

pub async fn cmd_exec(_ui: &Ui, a: ExecArgs) -> CliResult {
    let lab = Lab::open(&a.lab)?;
    let session = lab.session(&a.node, Duration::from_secs(30)).await?;
    let command = match a.command.as_slice() {
        [one] => one.clone(),
        many => many.iter().map(|s| crate::guest::shell_quote(s)).collect::<Vec<_>>().join(" "),
    };
    let out = session
        .exec(&command, None)
        .await
        .map_err(|e| CliError::infra(anyhow!("node {}: exec `{command}`: {e}", a.node)))?;
    let _ = std::io::stdout().write_all(&out.stdout);
    let _ = std::io::stderr().write_all(&out.stderr);
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    if out.exit_code != 0 {
        // The remote command's exit code is testbed's (like `ssh host cmd`), beyond the 0-3 classes.
        std::process::exit(out.exit_code.clamp(1, 255));
    }
    Ok(())
}

pub async fn cmd_doctor(ui: &Ui, _a: DoctorArgs) -> CliResult {
    let checks = tokio::task::spawn_blocking(doctor::run_checks).await.map_err(CliError::infra)?;
    let failed: Vec<&str> = checks.iter().filter(|c| c.status == doctor::Status::Fail).map(|c| c.name).collect();
    if ui.is_json() {
        print_json(&json!({"ok": failed.is_empty(), "checks": checks}))?;
    } else {
        let mut out = std::io::stdout().lock();
        for c in &checks {
            let tag = match c.status {
                doctor::Status::Ok => "ok  ",
                doctor::Status::Warn => "warn",
                doctor::Status::Fail => "FAIL",
            };
            let _ = writeln!(out, "{tag} {:<11} {}", c.name, c.detail);
            if let (Some(fix), true) = (&c.fix, c.status != doctor::Status::Ok) {
                let _ = writeln!(out, "     {:<11} fix: {fix}", "");
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CliError::infra(anyhow!("this host cannot run labs: {} missing", failed.join(", "))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_exits_3_for_a_dead_vm_or_sick_agent_and_0_when_all_healthy() {
        let node = |name: &str, alive: bool, healthy: bool| json!({"name": name, "alive": alive, "agent": {"healthy": healthy}});
        assert!(status_verdict("l", &[node("a", true, true), node("b", true, true)]).is_ok());
        let err =
            status_verdict("l", &[node("a", true, true), node("b", false, false), node("c", true, false)]).unwrap_err();
        assert_eq!(err.exit_code(), 3);
        assert!(err.results_printed(), "no second JSON document after the status report");
        let text = err.to_string();
        assert!(text.contains("b (VM not running)") && text.contains("c (agent not healthy)"), "{text}");
    }
}
