//! The lab commands: `up`, `down`, `status`, `ssh`, `exec`, `kubeconfig` and `doctor` (and the hidden
//! `forward-api` that `up` leaves running for kubectl). Each handler only parses, calls the
//! lab layer (`crate::lab`) with the provider, and prints.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::anyhow;
use serde_json::json;

use crate::cluster::{self, ClientArgs};
use crate::exit::{CliError, CliResult};
use crate::guest::{interactive, shell_quote};
use crate::lab::{self, Lab, LabArgs, LabDir, LabSelector};
use crate::provider::{self, qemu::doctor};
use crate::ui::Ui;

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
    /// What makes the machines: QEMU processes of testbed's own, or vagrant-libvirt through the repository's
    /// Vagrantfile. Default: the one a running lab was made with, else qemu.
    #[arg(long, value_enum)]
    pub provider: Option<lab::ProviderKind>,
}

#[derive(Debug, clap::Args)]
pub struct DownArgs {
    #[command(flatten)]
    pub lab: LabArgs,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub lab: LabArgs,
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
    pub client: ClientArgs,
    /// Node name (without --pod).
    #[arg(required_unless_present = "pod")]
    pub node: Option<String>,
    /// Run in this pod instead (its API name; `-n` for its namespace): the command's argv as it is, in the
    /// container's namespaces and cgroup (`-c`), as `kubectl exec` runs it.
    #[arg(long, value_name = "POD", conflicts_with = "node")]
    pub pod: Option<String>,
    /// With --pod: the container (default: the pod's first, as kubectl).
    #[arg(long, short = 'c', value_name = "NAME", requires = "pod")]
    pub container: Option<String>,
    /// The command. On a node, one argument is handed to the guest's shell as is (pipes work); several are
    /// quoted one by one.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct KubeconfigArgs {
    #[command(flatten)]
    pub lab: LabSelector,
    /// Print the file's content instead of its path.
    #[arg(long)]
    pub content: bool,
}

#[derive(Debug, clap::Args)]
pub struct ForwardApiArgs {
    /// The lab whose API server to forward to.
    #[arg(long)]
    pub lab: String,
    /// Port on 127.0.0.1 to listen on (0: any free port); printed on stdout once listening.
    #[arg(long, default_value_t = 0)]
    pub port: u16,
}

#[derive(Debug, clap::Args)]
pub struct VagrantHubArgs {
    /// The Vagrant lab whose networks to serve (their members come from its plan.json).
    #[arg(long)]
    pub lab: String,
    /// A network's port on 127.0.0.1 (NETWORK=PORT), kept across restarts: the running machines send to it.
    #[arg(long = "port", value_name = "NETWORK=PORT", value_parser = network_port)]
    pub ports: Vec<(String, u16)>,
}

/// `--port NETWORK=PORT` of `vagrant-hub`: refused at parsing (a usage error, exit 2) when it is not that.
fn network_port(s: &str) -> Result<(String, u16), String> {
    let (net, port) = s.split_once('=').ok_or("expected NETWORK=PORT")?;
    if net.is_empty() {
        return Err("expected NETWORK=PORT: the network's name is empty".into());
    }
    let port = port.parse::<u16>().map_err(|e| format!("expected NETWORK=PORT: port `{port}`: {e}"))?;
    Ok((net.to_string(), port))
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
    let plan = crate::plan::load(&a.file).map_err(CliError::bad_input)?;
    let opts = lab::UpOptions { keep: a.keep, timeout: Duration::from_secs(a.timeout) };
    let dir = LabDir::new(&lab::dir::state_root().map_err(CliError::infra)?, &plan.lab);
    let recorded = dir.exists().then(|| provider::recorded_kind(&dir));
    let kind = match (a.provider, recorded) {
        (Some(asked), Some(made)) if asked != made => {
            return Err(CliError::bad_input(anyhow!(
                "lab `{}` was made with the {made} provider, not {asked}: run `testbed down --lab {}` first",
                plan.lab,
                plan.lab
            )));
        }
        (asked, made) => asked.or(made).unwrap_or_default(),
    };
    let outcome = lab::up(ui, plan, &opts, provider::of_kind(kind)).await?;
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
        for (what, nodes) in [("added", &outcome.added), ("removed", &outcome.removed)] {
            if !nodes.is_empty() {
                let _ = writeln!(out, "  {what} in place: {}", nodes.join(", "));
            }
        }
        for n in &outcome.nodes {
            let _ = writeln!(
                out,
                "  {:<12} ssh 127.0.0.1:{}  testbed ssh --lab {} {}",
                n.name, n.ssh_port, outcome.lab, n.name
            );
        }
    }
    if let (Some(kubeconfig), false) = (&outcome.kubeconfig, ui.is_json()) {
        let _ = writeln!(
            std::io::stdout().lock(),
            "  API server   https://127.0.0.1:{}  kubectl --kubeconfig {} get ns",
            outcome.api_port.unwrap_or(0),
            kubeconfig.display()
        );
    }
    Ok(())
}

/// `testbed kubeconfig`: where the lab's kubeconfig is (or what it says, with `--content`).
pub async fn cmd_kubeconfig(_ui: &Ui, a: KubeconfigArgs) -> CliResult {
    let lab = Lab::open(&a.lab)?;
    let path = lab::control_plane::kubeconfig_path(&lab.paths);
    if !path.is_file() {
        return Err(CliError::infra(anyhow!(
            "lab `{}` has no kubeconfig ({} is missing): its `up` did not finish; run `testbed up` again",
            lab.plan.lab,
            path.display()
        )));
    }
    let mut out = std::io::stdout().lock();
    if a.content {
        let text = std::fs::read(&path).map_err(CliError::infra)?;
        out.write_all(&text).map_err(CliError::infra)
    } else {
        writeln!(out, "{}", path.display()).map_err(CliError::infra)
    }
}

/// The hub process `up --provider vagrant` starts (see `provider::vagrant::hub`).
pub async fn cmd_vagrant_hub(_ui: &Ui, a: VagrantHubArgs) -> CliResult {
    let dir = LabSelector { lab: Some(a.lab), topology: None }.resolve_existing()?;
    let plan = dir.read_plan().map_err(CliError::infra)?;
    let ports: std::collections::BTreeMap<String, u16> = a.ports.into_iter().collect();
    tokio::task::spawn_blocking(move || provider::vagrant::hub::run(&plan, &ports))
        .await
        .map_err(CliError::infra)?
        .map_err(CliError::infra)
}

/// The forwarder process `up` starts (see `lab::forwarder`).
pub async fn cmd_forward_api(_ui: &Ui, a: ForwardApiArgs) -> CliResult {
    let lab = Lab::open(&LabSelector { lab: Some(a.lab), topology: None })?;
    lab::forwarder::run(lab, a.port).await.map_err(CliError::infra)
}

pub async fn cmd_down(ui: &Ui, a: DownArgs) -> CliResult {
    require_root("down")?;
    let Some(dir) = a.lab.selector().resolve()? else {
        ui.info("no lab; nothing to do");
        if ui.is_json() {
            return print_json(&serde_json::to_value(lab::DownReport::no_lab()).map_err(CliError::infra)?);
        }
        return Ok(());
    };
    let kind = provider::recorded_kind(&dir);
    let provider = provider::of_kind(kind);
    // Always under the lock (it lives outside the directory), so an `up` starting now cannot have its new
    // directory removed by this `down`.
    let _lock = dir.lock().map_err(CliError::infra)?;
    let d = dir.clone();
    let t = tokio::task::spawn_blocking(move || lab::teardown(&d, provider.as_ref()))
        .await
        .map_err(CliError::infra)?
        .map_err(CliError::infra)?;
    if ui.is_json() {
        return print_json(&serde_json::to_value(lab::DownReport::torn_down(&dir.name, &t)).map_err(CliError::infra)?);
    }
    if t.is_noop() {
        ui.info(format!("lab `{}`: nothing left to remove", dir.name));
    } else {
        // A Vagrant lab has no netns of its own: say nothing of one.
        let netns = match (&t.netns_deleted, kind) {
            (Some(n), _) => format!(", netns {n}"),
            (None, lab::ProviderKind::Qemu) => ", netns (already gone)".into(),
            (None, lab::ProviderKind::Vagrant) => String::new(),
        };
        ui.info(format!(
            "lab `{}` down ({kind}): API forwarder {}, {} VM(s) stopped{netns}, directory {}",
            dir.name,
            t.forwarder_stopped.map_or_else(|| "(not running)".into(), |pid| format!("pid {pid} stopped")),
            t.stopped.len(),
            if t.dir_removed { "removed" } else { "(already gone)" }
        ));
    }
    Ok(())
}

pub async fn cmd_status(ui: &Ui, a: StatusArgs) -> CliResult {
    let lab = Lab::open(&a.lab.selector())?;
    let status = lab::status::collect(&lab, provider::of_lab(&lab.paths).as_ref()).await;
    if ui.is_json() {
        print_json(&serde_json::to_value(&status).map_err(CliError::infra)?)?;
    } else {
        let _ = status.write_text(&mut std::io::stdout().lock());
    }
    status.verdict()
}

pub async fn cmd_ssh(_ui: &Ui, a: SshArgs) -> CliResult {
    use std::os::unix::process::CommandExt;
    let lab = Lab::open(&a.lab)?;
    let (port, _) = lab.node_endpoint(&a.node)?;
    let mut cmd =
        interactive::interactive_ssh_command(port, &lab.paths.client_key(), &lab.paths.known_hosts(), &a.command);
    // Replaces this process: the terminal belongs to ssh, and its exit code is ours.
    let err = cmd.exec();
    Err(CliError::infra(anyhow!("cannot run ssh (apt-get install -y openssh-client): {err}")))
}

pub async fn cmd_exec(_ui: &Ui, a: ExecArgs) -> CliResult {
    let node = match (a.pod, a.node) {
        (Some(pod), _) => return cluster::exec_in_pod(&a.client, &pod, a.container, a.command).await,
        (None, Some(node)) => node,
        (None, None) => return Err(CliError::bad_input(anyhow!("name a node, or a pod with --pod"))),
    };
    let lab = Lab::open(&a.client.lab)?;
    let session = lab.session(&node, Duration::from_secs(30)).await?;
    let command = match a.command.as_slice() {
        [one] => one.clone(),
        many => many.iter().map(|s| shell_quote(s)).collect::<Vec<_>>().join(" "),
    };
    let out = session
        .exec(&command, None)
        .await
        .map_err(|e| CliError::infra(anyhow!("node {node}: exec `{command}`: {e}")))?;
    pass_on(&out.stdout, &out.stderr, out.exit_code)
}

/// A remote command's output, written as it came, and its exit code made testbed's (as `ssh host cmd` and
/// `kubectl exec` do), beyond the 0-3 classes.
pub fn pass_on(stdout: &[u8], stderr: &[u8], exit_code: i32) -> CliResult {
    let _ = std::io::stdout().write_all(stdout);
    let _ = std::io::stderr().write_all(stderr);
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    if exit_code != 0 {
        std::process::exit(exit_code.clamp(1, 255));
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
            let _ = writeln!(out, "{tag} {:<13} {}", c.name, c.detail);
            if let (Some(fix), true) = (&c.fix, c.status != doctor::Status::Ok) {
                let _ = writeln!(out, "     {:<13} fix: {fix}", "");
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
    use clap::Parser;

    use super::network_port;

    #[test]
    fn a_hub_port_is_network_equals_port_or_a_usage_error() {
        assert_eq!(network_port("underlay=30000"), Ok(("underlay".into(), 30000)));
        for (bad, says) in [
            ("underlay", "expected NETWORK=PORT"),
            ("=30000", "name is empty"),
            ("underlay=70000", "port `70000`"),
            ("underlay=", "port ``"),
        ] {
            let e = network_port(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
        // Through the command line: clap's usage error (exit 2), naming the option.
        let e = crate::Cli::try_parse_from(["testbed", "vagrant-hub", "--lab", "l", "--port", "underlay"])
            .expect_err("refused");
        assert_eq!((e.kind(), e.exit_code()), (clap::error::ErrorKind::ValueValidation, 2));
        assert!(e.to_string().contains("--port <NETWORK=PORT>"), "{e}");
    }
}
