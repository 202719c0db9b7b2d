//! Suites (conformance, perf) and their reports: `testbed run` and `testbed report`.
//!
//! The suites drive a lab only through the `Cluster` trait (SSH node commands + the agents' API), so the runner,
//! the result model and the renderers are unit-tested against a fake cluster; `lab_adapter` is the real one.

mod api;
mod cluster;
mod conformance;
mod debug;
mod declared;
#[cfg(test)]
mod fake;
#[cfg(test)]
mod fake_api;
#[cfg(test)]
mod fake_pods;
mod fsops;
mod harness;
mod hostload;
mod lab_adapter;
mod overlay;
mod perf;
mod poll;
mod probe;
mod report;
mod runner;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::anyhow;
use testbed_api::results::{
    CheckResult, CheckStatus, RunMetadata, RunOutcome, SuiteResults, Summary, RESULTS_SCHEMA_VERSION,
};
use testbed_api::Backend;

use crate::exit::{CliError, CliResult};
use crate::lab::{now_rfc3339, Lab, LabArgs, LabSelector};
use crate::plan::Plan;
use crate::ui::Ui;
use cluster::Cluster;
use declared::DeclaredTest;
use runner::{Runner, Selection};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Suite to run: conformance or perf.
    pub suite: String,
    #[command(flatten)]
    pub lab: LabArgs,
    /// Directory for results.json, junit.xml, report.md, report.html [default: results/<lab>-<UTC time>/].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Backend to test: vxlan, host-gw, udp, none, or all (each in turn, switched on the running lab)
    /// [default: the topology's].
    #[arg(long, value_name = "BACKEND")]
    pub backend: Option<String>,
    /// Run only the checks whose full name contains this text (e.g. `cross-node`, `[cgroups]`).
    #[arg(long, value_name = "SUBSTR")]
    pub filter: Option<String>,
    /// Leave out the checks whose full name contains this text (repeatable; e.g. `--skip '[controller]'`).
    #[arg(long, value_name = "SUBSTR")]
    pub skip: Vec<String>,
    /// perf: measured rounds; each round takes one sample of every figure of a backend.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub repeats: u32,
    /// perf: discarded warm-up rounds before the measured ones (every iperf3 run also omits its first second).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=10))]
    pub warmup: u32,
    /// perf: seconds each iperf3 run measures, after its omitted first second (ping runs send 5 echoes a
    /// second for as long). 4 keeps `--backend all` near 20 minutes under TCG.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=120))]
    pub duration: u32,
    /// perf: parallel TCP streams of the multi-stream figure.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(2..=64))]
    pub streams: u32,
    /// perf: the loss bound, percent: a UDP figure that lost more is flagged `loss`, and the `udp-max` figures
    /// are the highest rate whose loss stayed at most this.
    #[arg(long, value_name = "PCT", default_value_t = perf::UDP_LOSS_BOUND_PERCENT, value_parser = parse_percent)]
    pub udp_loss_bound: f64,
    /// perf: probes (iperf3 UDP runs of 2 s) per `udp-max` search, one search per path and round; 0 leaves
    /// the `udp-max` figures out.
    #[arg(long, value_name = "N", default_value_t = perf::UDP_PROBES, value_parser = clap::value_parser!(u32).range(0..=20))]
    pub udp_probes: u32,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("mode").args(["dir", "compare", "history"]).required(true)))]
pub struct ReportArgs {
    /// Directory holding results.json: render its junit.xml, report.md and report.html again.
    pub dir: Option<PathBuf>,
    /// Compare the perf figures of two runs (directories holding results.json) and write compare.md,
    /// compare.html and compare.json. Exit 1 when a figure got worse beyond noise and tolerance or went
    /// missing, or when the comparison is inconclusive (see --max-unstable); 2 when the runs are not
    /// comparable (topology, accelerator, kernel release or command line, or testbed version differ). A figure
    /// flagged wide_interval or disturbed_host in either run is `unstable`: never worse nor better.
    #[arg(long, num_args = 2, value_names = ["OLD", "NEW"])]
    pub compare: Option<Vec<PathBuf>>,
    /// --compare: a change of the median up to PCT percent is never a regression (nor an improvement)
    /// [default: 5].
    #[arg(long, value_name = "PCT", value_parser = parse_tolerance)]
    pub tolerance: Option<f64>,
    /// --compare: the comparison is inconclusive (exit 1) when more than PCT percent of the figures in both runs
    /// are unstable or have too few samples, or when all of them are [default: 50].
    #[arg(long, value_name = "PCT", value_parser = parse_percent)]
    pub max_unstable: Option<f64>,
    /// --compare: compare runs whose topology, accelerator, kernel or testbed version differ anyway.
    #[arg(long)]
    pub allow_mismatch: bool,
    /// Write history.html: a trend chart per perf figure over these runs (directories holding results.json).
    #[arg(long, num_args = 1.., value_name = "DIR")]
    pub history: Option<Vec<PathBuf>>,
    /// Where --compare writes its files [default: NEW] and --history its page [default: the current directory].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// `--tolerance` when not given: TCG figures of clean back-to-back runs agree within a few percent.
const DEFAULT_TOLERANCE: f64 = 5.0;
/// `--max-unstable` when not given: a night that could verify at most half of its figures proves little.
const DEFAULT_MAX_UNSTABLE: f64 = 50.0;

fn parse_percent(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=100.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a percentage between 0 and 100")),
    }
}

fn parse_tolerance(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=1000.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a percentage between 0 and 1000")),
    }
}

/// Which backends `--backend` asks for; None means the plan's own.
pub fn parse_backends(arg: Option<&str>) -> Result<Option<Vec<Backend>>, String> {
    match arg {
        None => Ok(None),
        Some("all") => Ok(Some(Backend::ALL.to_vec())),
        Some(b) => b.parse::<Backend>().map(|b| Some(vec![b])).map_err(|e| format!("--backend: {e}, or all")),
    }
}

/// Exit status of a finished run (0 passed, 1 a check failed, 3 infrastructure).
pub fn outcome_to_result(results: &SuiteResults, out: &Path) -> CliResult {
    let s = &results.summary;
    let counts = format!(
        "{} checks: {} passed, {} failed, {} errors, {} warnings, {} skipped; report: {}",
        s.total,
        s.passed,
        s.failed,
        s.errors,
        s.warned,
        s.skipped,
        out.join("report.md").display()
    );
    match results.outcome() {
        RunOutcome::Passed => Ok(()),
        RunOutcome::Failed => Err(CliError::TestsFailed(format!("{} failed: {counts}", results.suite))),
        RunOutcome::InfraError => {
            let first = results.checks.iter().find(|c| c.status == CheckStatus::Error);
            let why = first.map(|c| format!("{}: {}", c.name, c.message.as_deref().unwrap_or(""))).unwrap_or_default();
            Err(CliError::InfraReported(format!("{} could not run completely ({why}); {counts}", results.suite)))
        }
    }
}

fn host_name() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "unknown".into())
}

fn host_cpu() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines().find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, v)| v.trim().to_string()))
}

/// Runs the conformance suite on `c` for each backend in turn and returns the results document.
pub async fn run_conformance<C: Cluster>(
    c: &C,
    ui: &Ui,
    backends: &[Backend],
    selection: impl Into<Selection>,
    declared: &[DeclaredTest],
) -> SuiteResults {
    let started = now_rfc3339();
    let clock = Instant::now();
    let kernel = kernel_of(c).await;
    let mut r = Runner::new(selection);
    for (i, &b) in backends.iter().enumerate() {
        r.set_task(Some(ui.task(&format!("conformance {b}"))));
        let before = r.checks().len();
        conformance::run_backend(c, &mut r, b, i == 0, declared).await;
        // This backend's checks and the backend-independent ones that ran with it (on the first backend).
        let mine = &r.checks()[before..];
        let (total, bad) =
            (mine.len(), mine.iter().filter(|x| matches!(x.status, CheckStatus::Fail | CheckStatus::Error)).count());
        if let Some(t) = r.set_task(None) {
            if bad == 0 {
                t.finish(format!("{total} checks passed or skipped"));
            } else {
                t.fail(format!("{bad} of {total} checks failed"));
            }
        }
    }
    restore_backend(c, &mut r, backends).await;
    finish(c, "conformance", backends, started, clock, kernel, r.into_checks(), Vec::new())
}

/// Leaves the lab on the backend its topology asked for.
async fn restore_backend<C: Cluster>(c: &C, r: &mut Runner, backends: &[Backend]) {
    let home = c.plan().cluster.backend;
    if backends.last().is_some_and(|b| *b != home) {
        r.run_setup("setup", Some(home), "restore the topology's backend", harness::switch_backend(c, home)).await;
    }
}

#[allow(clippy::too_many_arguments)]
fn finish<C: Cluster>(
    c: &C,
    suite: &str,
    backends: &[Backend],
    started: String,
    clock: Instant,
    kernel: GuestKernel,
    checks: Vec<CheckResult>,
    measurements: Vec<testbed_api::results::Measurement>,
) -> SuiteResults {
    let plan = c.plan();
    let facts = c.facts();
    SuiteResults {
        schema_version: RESULTS_SCHEMA_VERSION,
        suite: suite.into(),
        started,
        finished: now_rfc3339(),
        duration_ms: u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX),
        metadata: RunMetadata {
            lab: plan.lab.clone(),
            topology_hash: plan.topology_hash.clone(),
            kernel: kernel.release,
            kernel_cmdline: kernel.cmdline,
            qemu_version: facts.qemu_version,
            accelerator: facts.accelerator,
            provider: facts.provider,
            backends: backends.to_vec(),
            testbed_version: env!("CARGO_PKG_VERSION").into(),
            host: host_name(),
            host_cpu: host_cpu(),
            nodes: plan.nodes.iter().map(|n| format!("{} {} vCPU {} MiB", n.name, n.cpus, n.memory_mib)).collect(),
            iperf3_version: None,
            host_cpus: std::thread::available_parallelism().ok().and_then(|n| u32::try_from(n.get()).ok()),
            perf_settings: None,
        },
        summary: Summary::of(&checks),
        checks,
        measurements,
    }
}

/// The first node's kernel as its agent reports it (each unknown when the agent does not answer or is older).
#[derive(Default)]
struct GuestKernel {
    release: Option<String>,
    cmdline: Option<String>,
}

async fn kernel_of<C: Cluster>(c: &C) -> GuestKernel {
    let Some(n) = c.plan().nodes.first() else { return GuestKernel::default() };
    match c.node_status(&n.name).await {
        Ok(s) => GuestKernel { release: Some(s.kernel), cmdline: Some(s.kernel_cmdline).filter(|l| !l.is_empty()) },
        Err(_) => GuestKernel::default(),
    }
}

/// Runs the perf suite on `c` for each backend in turn.
pub async fn run_perf<C: Cluster>(
    c: &C,
    ui: &Ui,
    backends: &[Backend],
    selection: impl Into<Selection>,
    opts: &perf::PerfOptions,
) -> SuiteResults {
    let started = now_rfc3339();
    let clock = Instant::now();
    let kernel = kernel_of(c).await;
    let mut r = Runner::new(selection);
    let mut measurements = Vec::new();
    for &b in backends {
        r.set_task(Some(ui.task(&format!("perf {b}"))));
        perf::run_backend(c, &mut r, b, opts, &mut measurements).await;
        if let Some(t) = r.set_task(None) {
            t.finish("done");
        }
    }
    restore_backend(c, &mut r, backends).await;
    let mut results = finish(c, "perf", backends, started, clock, kernel, r.into_checks(), measurements);
    results.metadata.iperf3_version = perf::iperf3_version(c).await;
    results.metadata.perf_settings = Some(opts.settings());
    results
}

fn default_out_dir(lab: &str) -> PathBuf {
    let stamp: String = now_rfc3339().chars().filter(|c| !matches!(c, '-' | ':')).collect();
    PathBuf::from("results").join(format!("{lab}-{stamp}"))
}

/// True when the selection left checks out and no check (other than setup steps) was left.
fn selection_matched_nothing(selection: &Selection, checks: &[CheckResult]) -> bool {
    selection.narrows() && !checks.iter().any(|c| c.group != "setup")
}

/// The declared tests to run: those `up` recorded in plan.json, or, when the lab is chosen with `-t FILE` and
/// the file still describes the running lab, the file's own (so edited tests run without another `up`).
fn declared_tests(ui: &Ui, sel: &LabSelector, recorded: &Plan) -> Result<Vec<DeclaredTest>, CliError> {
    let Some(file) = &sel.topology else { return Ok(recorded.tests.clone()) };
    let current = crate::plan::load(file).map_err(CliError::bad_input)?;
    if current.same_lab(recorded) {
        return Ok(current.tests);
    }
    if current.tests != recorded.tests {
        ui.info(format!(
            "{} no longer describes lab {} (run `testbed up` again): running the declared tests recorded at up",
            file.display(),
            recorded.lab
        ));
    }
    Ok(recorded.tests.clone())
}

pub async fn cmd_run(ui: &Ui, a: RunArgs) -> CliResult {
    match a.suite.as_str() {
        "conformance" | "perf" => {}
        other => return Err(CliError::bad_input(anyhow!("unknown suite `{other}` (expected conformance or perf)"))),
    }
    let backends = parse_backends(a.backend.as_deref()).map_err(|e| CliError::bad_input(anyhow!(e)))?;
    let selector = a.lab.selector();
    let lab = Lab::open(&selector)?;
    let declared = declared_tests(ui, &selector, &lab.plan)?;
    let backends = backends.unwrap_or_else(|| vec![lab.plan.cluster.backend]);
    let out = a.out.clone().unwrap_or_else(|| default_out_dir(&lab.plan.lab));
    let selection = Selection { filter: a.filter.clone(), skip: a.skip.clone() };
    let connected = lab.connect(ui).await?;
    let results = if a.suite == "perf" {
        let opts = perf::PerfOptions {
            udp_loss_bound: a.udp_loss_bound,
            udp_probes: a.udp_probes,
            ..perf::PerfOptions::new(a.repeats, a.warmup, a.duration, a.streams)
        };
        run_perf(&connected, ui, &backends, selection.clone(), &opts).await
    } else {
        run_conformance(&connected, ui, &backends, selection.clone(), &declared).await
    };
    if selection_matched_nothing(&selection, &results.checks) {
        return Err(CliError::bad_input(anyhow!(
            "--filter {:?} with --skip {:?} left no check to run",
            a.filter.unwrap_or_default(),
            a.skip
        )));
    }
    report::write_all(&out, &results).map_err(CliError::infra)?;
    if results.outcome() != RunOutcome::Passed {
        // What failed, at the end of the output as Ginkgo summarises its failures: a CI log shows it without the
        // results directory (the details, such as a policy check's truth tables, are in the report).
        for c in results.checks.iter().filter(|c| matches!(c.status, CheckStatus::Fail | CheckStatus::Error)) {
            ui.info(format!("{}: {}: {}", c.status.as_str(), c.name, c.message.as_deref().unwrap_or("")));
        }
        let dir = out.join("debug");
        for p in debug::collect(&connected, &dir).await {
            ui.info(format!("debug bundle: {p}"));
        }
        ui.info(format!("debug bundle: {}", dir.display()));
    }
    if ui.is_json() {
        let doc = serde_json::to_string(&results).map_err(CliError::infra)?;
        println!("{doc}");
    } else {
        ui.info(format!("results: {}", out.display()));
    }
    outcome_to_result(&results, &out)
}

pub async fn cmd_report(ui: &Ui, a: ReportArgs) -> CliResult {
    if let Some([old, new]) = a.compare.as_deref() {
        let gate = report::compare::Gate {
            tolerance_percent: a.tolerance.unwrap_or(DEFAULT_TOLERANCE),
            max_unstable_percent: a.max_unstable.unwrap_or(DEFAULT_MAX_UNSTABLE),
            allow_mismatch: a.allow_mismatch,
        };
        return report::cmd_compare(ui, old, new, gate, a.out.as_deref());
    }
    // clap's `requires` does not fire inside the required mode group, so the mode-specific options are checked
    // here: an option that would be silently ignored is bad input.
    if a.tolerance.is_some() || a.max_unstable.is_some() || a.allow_mismatch {
        return Err(CliError::bad_input(anyhow!("--tolerance, --max-unstable and --allow-mismatch go with --compare")));
    }
    if let Some(dirs) = &a.history {
        return report::cmd_history(ui, dirs, a.out.as_deref());
    }
    if a.out.is_some() {
        return Err(CliError::bad_input(anyhow!("--out goes with --compare or --history; DIR is rendered in place")));
    }
    let Some(dir) = a.dir else {
        return Err(CliError::bad_input(anyhow!("give DIR, --compare OLD NEW or --history DIR...")));
    };
    let results = report::load(&dir).map_err(|e| match e {
        report::ReportError::Io { .. } | report::ReportError::Parse { .. } | report::ReportError::Schema { .. } => {
            CliError::bad_input(e)
        }
        report::ReportError::Render { .. } => CliError::infra(e),
    })?;
    report::write_renders(&dir, &results).map_err(CliError::infra)?;
    if ui.is_json() {
        let doc = serde_json::to_string(&results).map_err(CliError::infra)?;
        println!("{doc}");
    } else {
        ui.info(format!("rendered junit.xml, report.md, report.html in {}", dir.display()));
    }
    Ok(())
}
