//! Real results.json documents for the report tests: a perf run of the fake cluster through the suite code (so
//! every field is what `testbed run perf` writes), with its constant fake samples spread a little so that every
//! figure has an interval, and variants of it (a regressed figure, another kernel). Also the in-process CLI:
//! `testbed report ...` parsed and dispatched exactly as main() does, returning the exit code.

use std::future::Future;
use std::path::Path;
use std::sync::OnceLock;

use clap::Parser;
use testbed_api::results::{Stats, SuiteResults};
use testbed_api::Backend;

use crate::suites::fake::{plan, FakeCluster, Faults};
use crate::suites::perf::PerfOptions;
use crate::ui::{OutputFormat, Ui};

pub fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(f)
}

/// A perf run of the fake cluster with vxlan and host-gw, each figure's 3 samples at -2 %, 0, +2 % of the fake's
/// value (a 95 % interval of about +-5 %).
pub fn perf_run() -> SuiteResults {
    static RUN: OnceLock<SuiteResults> = OnceLock::new();
    RUN.get_or_init(|| {
        let c = FakeCluster::new(plan(2, Backend::Vxlan), Faults::default());
        let ui = Ui::new(OutputFormat::Json, true);
        let opts = PerfOptions::new(3, 0, 1, 4);
        let mut r = block_on(crate::suites::run_perf(
            &c,
            &ui,
            &[Backend::Vxlan, Backend::HostGw],
            crate::suites::runner::Selection::default(),
            &opts,
        ));
        assert!(r.measurements.len() >= 20, "the fake perf run measured {} figures", r.measurements.len());
        r.started = "2026-01-01T02:00:00Z".into();
        r.metadata.kernel = Some("6.1.0-28-amd64".into());
        r.metadata.accelerator = Some("tcg".into());
        scale(&mut r, |_| 1.0);
        r
    })
    .clone()
}

/// Every figure's samples multiplied by `factor(figure name)`, spread by -2 %, 0, +2 %, stats recomputed.
pub fn scale(r: &mut SuiteResults, factor: impl Fn(&str) -> f64) {
    for m in &mut r.measurements {
        let name = match m.backend {
            Some(b) => format!("{b} {} {}", m.path, m.kind),
            None => format!("{} {}", m.path, m.kind),
        };
        let v = m.stats.median * factor(&name);
        m.samples = vec![v * 0.98, v, v * 1.02];
        m.stats = Stats::of(&m.samples);
    }
}

/// The same run a day later, with `factor` applied to its figures.
pub fn later(day: u32, factor: impl Fn(&str) -> f64) -> SuiteResults {
    let mut r = perf_run();
    r.started = format!("2026-01-{day:02}T02:00:00Z");
    scale(&mut r, factor);
    r
}

pub const REGRESSED: &str = "vxlan pod->pod cross-node tcp-1";

/// `r` as `testbed run` leaves it in `dir`: results.json and its renders.
pub fn write_run(dir: &Path, r: &SuiteResults) {
    super::write_all(dir, r).expect("write the fixture run");
}

/// `testbed ARGS...` in process: the exit code main() would return (clap's usage errors are 2, as there).
pub fn testbed(args: &[&str]) -> u8 {
    let cli = match crate::Cli::try_parse_from(std::iter::once("testbed").chain(args.iter().copied())) {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("{e}");
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let ui = Ui::new(OutputFormat::Text, true);
    match block_on(crate::dispatch(cli, &ui)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}
