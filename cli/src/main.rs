//! `testbed`: emulate a whole container cluster on real QEMU VMs.

mod cluster;
mod commands;
mod exit;
mod guest;
mod image;
mod lab;
mod plan;
mod provider;
mod suites;
mod topology;
mod ui;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::exit::{CliError, CliResult};
use crate::ui::{OutputFormat, Ui};

#[derive(Debug, Parser)]
#[command(name = "testbed", version, about = "Emulate a whole container cluster on real QEMU VMs", long_about = None)]
struct Cli {
    /// Output format: text for people, json for machines (data on stdout, nothing else); `get` also takes
    /// wide and yaml.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,
    /// No progress or informational lines.
    #[arg(long, short = 'q', global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Boot every node of a topology as a QEMU VM, start the agents and apply the cluster network.
    Up(commands::UpArgs),
    /// Remove everything a lab's `up` made, from the lab directory alone.
    Down(commands::DownArgs),
    /// Show the lab's nodes, PIDs, ports, accelerator and agent health.
    Status(commands::StatusArgs),
    /// Open an interactive shell on a node.
    Ssh(commands::SshArgs),
    /// Run a command on a node, or with --pod in a pod's container, and return its exit code.
    Exec(commands::ExecArgs),
    /// Print a container's log (what it wrote to stdout and stderr); --follow keeps printing.
    Logs(cluster::LogsArgs),
    /// List objects of the lab's control plane (nodes, pods, leases, namespaces), as kubectl would.
    Get(cluster::GetArgs),
    /// Create or update the objects of Kubernetes-style YAML files in the lab's control plane.
    Apply(cluster::ApplyArgs),
    /// Delete objects from the lab's control plane.
    Delete(cluster::DeleteArgs),
    /// Show objects of the lab's control plane in detail.
    Describe(cluster::DescribeArgs),
    /// Set a Deployment's or ReplicaSet's replicas (the `scale` subresource, as `kubectl scale`).
    Scale(cluster::ScaleArgs),
    /// A Deployment's rollout: status, history, undo, pause, resume (as `kubectl rollout`).
    Rollout(cluster::RolloutArgs),
    /// Print the path of the lab's kubeconfig (kubectl reaches the lab's API server with it).
    Kubeconfig(commands::KubeconfigArgs),
    /// Forward 127.0.0.1:PORT to the lab's API server over SSH (`up` starts it; `down` stops it).
    #[command(hide = true, name = "forward-api")]
    ForwardApi(commands::ForwardApiArgs),
    /// Repeat a Vagrant lab's underlay frames between the nodes of each network of more than two (`up --provider
    /// vagrant` starts it; `down` stops it).
    #[command(hide = true, name = "vagrant-hub")]
    VagrantHub(commands::VagrantHubArgs),
    /// Run a suite (conformance, perf) against a running lab and write results.
    Run(suites::RunArgs),
    /// Render a run's reports again (report.md, report.html, junit.xml), compare two runs (--compare, the
    /// nightly gate) or draw the trend of many (--history).
    Report(suites::ReportArgs),
    /// Check a topology file; exit 2 with file:line:column and the field when it is wrong.
    Validate(topology::ValidateArgs),
    /// Print the fully resolved plan of a topology.
    Plan(plan::PlanArgs),
    /// Build, fetch, list and remove guest images.
    Image(image::ImageArgs),
    /// Check this host: QEMU, a real KVM probe, mmdebstrap, network namespaces, free disk.
    Doctor(commands::DoctorArgs),
    /// Print shell completions for bash, zsh, fish, elvish or powershell.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    Man,
}

async fn dispatch(cli: Cli, ui: &Ui) -> CliResult {
    match cli.command {
        Command::Up(a) => commands::cmd_up(ui, a).await,
        Command::Down(a) => commands::cmd_down(ui, a).await,
        Command::Status(a) => commands::cmd_status(ui, a).await,
        Command::Ssh(a) => commands::cmd_ssh(ui, a).await,
        Command::Exec(a) => commands::cmd_exec(ui, a).await,
        Command::Logs(a) => cluster::cmd_logs(ui, a).await,
        Command::Get(a) => cluster::cmd_get(ui, a).await,
        Command::Apply(a) => cluster::cmd_apply(ui, a).await,
        Command::Delete(a) => cluster::cmd_delete(ui, a).await,
        Command::Describe(a) => cluster::cmd_describe(ui, a).await,
        Command::Scale(a) => cluster::cmd_scale(ui, a).await,
        Command::Rollout(a) => cluster::cmd_rollout(ui, a).await,
        Command::Kubeconfig(a) => commands::cmd_kubeconfig(ui, a).await,
        Command::ForwardApi(a) => commands::cmd_forward_api(ui, a).await,
        Command::VagrantHub(a) => commands::cmd_vagrant_hub(ui, a).await,
        Command::Run(a) => suites::cmd_run(ui, a).await,
        Command::Report(a) => suites::cmd_report(ui, a).await,
        Command::Validate(a) => topology::cmd_validate(ui, a),
        Command::Plan(a) => plan::cmd_plan(ui, a),
        Command::Image(a) => image::cmd_image(ui, a).await,
        Command::Doctor(a) => commands::cmd_doctor(ui, a).await,
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "testbed", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()).map_err(CliError::infra),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // clap uses 0 for --help/--version and 2 for usage errors, which is our contract too.
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    if matches!(cli.output, OutputFormat::Wide | OutputFormat::Yaml) && !matches!(cli.command, Command::Get(_)) {
        eprintln!("error: --output wide and --output yaml apply to `testbed get` only");
        return ExitCode::from(2);
    }
    let ui = Ui::new(cli.output, cli.quiet);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(3);
        }
    };
    let result = runtime.block_on(dispatch(cli, &ui));
    // Blocking work still running after a failure (an image build thread, say) must not hold the exit back:
    // the command has already cleaned up what it owns, and such a thread only writes into a temporary
    // directory that the next run sweeps.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A failed suite has already printed its results document; a second document would break parsers.
            if ui.is_json() && !e.results_printed() {
                let doc = serde_json::json!({"error": {"kind": e.kind(), "message": e.to_string()}});
                println!("{doc}");
            }
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
