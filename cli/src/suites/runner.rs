//! Runs named checks, times them, applies the name filter and turns each outcome into a `CheckResult`.

use std::future::Future;
use std::time::{Duration, Instant};

use testbed_api::results::{CheckResult, CheckStatus};
use testbed_api::Backend;

use super::cluster::ClusterError;
use crate::ui::Task;

/// Longest a single check may take before it is recorded as an infrastructure error (a hung exec or SSH
/// channel). Generous: under TCG a cross-node iperf3 with retries takes tens of seconds.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(180);

/// Why a check did not pass.
#[derive(Debug, Clone)]
pub enum CheckError {
    /// The system under test misbehaved.
    Fail(String),
    /// The check does not apply here.
    Skip(String),
    /// The check could not run (SSH, agent API, setup).
    Infra(String),
    /// The feature works but misses a speed target of the issue: a warning at any level, so the miss is
    /// in every report without failing the run (a broken feature is a `Fail`).
    Slow(String),
}

impl From<ClusterError> for CheckError {
    fn from(e: ClusterError) -> Self {
        CheckError::Infra(e.to_string())
    }
}

/// `Ok(details)`: passed, with the evidence worth keeping.
pub type CheckOutcome = Result<String, CheckError>;

/// How much a failing check matters (topology-declared tests can be warnings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Level {
    #[default]
    Error,
    Warning,
}

/// Which checks a run keeps: those whose full name contains `filter` (every one when None) and none of the
/// `skip` texts. Set-up steps always run.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub filter: Option<String>,
    pub skip: Vec<String>,
}

impl Selection {
    fn selects(&self, full_name: &str) -> bool {
        self.filter.as_deref().is_none_or(|f| full_name.contains(f))
            && !self.skip.iter().any(|s| full_name.contains(s.as_str()))
    }

    /// Whether it leaves any check out.
    pub fn narrows(&self) -> bool {
        self.filter.is_some() || !self.skip.is_empty()
    }
}

impl From<Option<String>> for Selection {
    fn from(filter: Option<String>) -> Self {
        Selection { filter, skip: Vec::new() }
    }
}

pub struct Runner {
    selection: Selection,
    checks: Vec<CheckResult>,
    task: Option<Task>,
    timeout: Duration,
}

impl Runner {
    pub fn new(selection: impl Into<Selection>) -> Self {
        Runner { selection: selection.into(), checks: Vec::new(), task: None, timeout: CHECK_TIMEOUT }
    }

    #[cfg(test)]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The progress line the current check is shown on (one per backend).
    pub fn set_task(&mut self, task: Option<Task>) -> Option<Task> {
        std::mem::replace(&mut self.task, task)
    }

    /// Shows what runs now on the progress line (the perf rounds run outside `run`).
    pub fn stage(&self, what: &str) {
        if let Some(t) = &self.task {
            t.stage(what);
        }
    }

    pub fn full_name(group: &str, backend: Option<Backend>, name: &str) -> String {
        match backend {
            Some(b) => format!("[{group}] {b} {name}"),
            None => format!("[{group}] {name}"),
        }
    }

    pub fn selected(&self, full_name: &str) -> bool {
        self.selection.selects(full_name)
    }

    /// Runs `check` unless the filter excludes it, and records the outcome. Returns the status, or None when
    /// the check was filtered out. The future is not polled at all when filtered out.
    pub async fn run(
        &mut self,
        group: &str,
        backend: Option<Backend>,
        name: &str,
        level: Level,
        check: impl Future<Output = CheckOutcome>,
    ) -> Option<CheckStatus> {
        let full = Self::full_name(group, backend, name);
        if !self.selected(&full) {
            return None;
        }
        if let Some(t) = &self.task {
            t.stage(&full);
        }
        let started = Instant::now();
        let outcome = match tokio::time::timeout(self.timeout, check).await {
            Ok(o) => o,
            Err(_) => Err(CheckError::Infra(format!("check did not finish within {} s", self.timeout.as_secs()))),
        };
        Some(self.push(group, backend, full, level, outcome, started.elapsed()))
    }

    /// Records a check whose work already ran elsewhere (the perf suite measures its figures in interleaved
    /// rounds, then records one check per figure): `took` is the time spent on it.
    pub fn record_outcome(
        &mut self,
        group: &str,
        backend: Option<Backend>,
        name: &str,
        level: Level,
        outcome: CheckOutcome,
        took: Duration,
    ) {
        let full = Self::full_name(group, backend, name);
        if self.selected(&full) {
            self.push(group, backend, full, level, outcome, took);
        }
    }

    fn push(
        &mut self,
        group: &str,
        backend: Option<Backend>,
        full: String,
        level: Level,
        outcome: CheckOutcome,
        took: Duration,
    ) -> CheckStatus {
        let duration_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        let (status, message, details) = match outcome {
            Ok(details) => (CheckStatus::Pass, None, details),
            Err(CheckError::Fail(m)) if level == Level::Warning => (CheckStatus::Warn, Some(m), String::new()),
            Err(CheckError::Fail(m)) => (CheckStatus::Fail, Some(m), String::new()),
            Err(CheckError::Skip(m)) => (CheckStatus::Skip, Some(m), String::new()),
            Err(CheckError::Infra(m)) => (CheckStatus::Error, Some(m), String::new()),
            Err(CheckError::Slow(m)) => (CheckStatus::Warn, Some(m), String::new()),
        };
        let (message, details) = match message {
            // Keep the first line as the message (JUnit attribute, table cell); the rest is evidence.
            Some(m) => match m.split_once('\n') {
                Some((first, rest)) => (Some(first.to_string()), Some(rest.trim().to_string())),
                None => (Some(m), None),
            },
            None => (None, Some(details).filter(|d| !d.is_empty())),
        };
        self.checks.push(CheckResult {
            name: full,
            group: group.to_string(),
            backend,
            status,
            duration_ms,
            message,
            details,
        });
        status
    }

    /// Runs a setup or cleanup step: never filtered out (the selected checks need it), recorded like a check.
    pub async fn run_setup(
        &mut self,
        group: &str,
        backend: Option<Backend>,
        name: &str,
        step: impl Future<Output = CheckOutcome>,
    ) -> CheckStatus {
        let selection = std::mem::take(&mut self.selection);
        let status = self.run(group, backend, name, Level::Error, step).await;
        self.selection = selection;
        status.unwrap_or(CheckStatus::Error)
    }

    /// Records a check that was not run because an earlier step made it meaningless.
    pub fn record(&mut self, group: &str, backend: Option<Backend>, name: &str, status: CheckStatus, msg: &str) {
        let full = Self::full_name(group, backend, name);
        if self.selected(&full) {
            self.checks.push(CheckResult {
                name: full,
                group: group.to_string(),
                backend,
                status,
                duration_ms: 0,
                message: Some(msg.to_string()),
                details: None,
            });
        }
    }

    pub fn checks(&self) -> &[CheckResult] {
        &self.checks
    }

    pub fn into_checks(self) -> Vec<CheckResult> {
        self.checks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn statuses_follow_outcomes_and_levels() {
        let mut r = Runner::new(Selection::default());
        let b = Some(Backend::Vxlan);
        assert_eq!(r.run("g", b, "ok", Level::Error, async { Ok("evidence".into()) }).await, Some(CheckStatus::Pass));
        assert_eq!(
            r.run("g", b, "bad", Level::Error, async { Err(CheckError::Fail("boom\nmore".into())) }).await,
            Some(CheckStatus::Fail)
        );
        assert_eq!(
            r.run("g", b, "meh", Level::Warning, async { Err(CheckError::Fail("slow".into())) }).await,
            Some(CheckStatus::Warn)
        );
        assert_eq!(
            r.run("g", None, "na", Level::Error, async { Err(CheckError::Skip("single node".into())) }).await,
            Some(CheckStatus::Skip)
        );
        assert_eq!(
            r.run("g", None, "late", Level::Error, async { Err(CheckError::Slow("3 s, target 2 s".into())) }).await,
            Some(CheckStatus::Warn),
            "a missed speed target warns even at error level"
        );
        let infra: CheckOutcome = Err(ClusterError::new("node1", "pod exec", "connection reset").into());
        assert_eq!(r.run("g", b, "down", Level::Warning, async { infra }).await, Some(CheckStatus::Error));
        let c = r.checks();
        assert_eq!(c[0].name, "[g] vxlan ok");
        assert_eq!(c[0].details.as_deref(), Some("evidence"));
        assert_eq!(c[1].message.as_deref(), Some("boom"));
        assert_eq!(c[1].details.as_deref(), Some("more"));
        assert_eq!(c[3].name, "[g] na");
        assert_eq!(c[4].message.as_deref(), Some("3 s, target 2 s"));
        assert_eq!(c[5].message.as_deref(), Some("node node1: pod exec: connection reset"));
    }

    #[tokio::test]
    async fn filter_skips_without_polling() {
        let mut r = Runner::new(Some("cross-node".into()));
        let polled = std::cell::Cell::new(false);
        let st = r
            .run("pod-network", Some(Backend::HostGw), "pod->pod same-node: icmp", Level::Error, async {
                polled.set(true);
                Ok(String::new())
            })
            .await;
        assert_eq!(st, None);
        assert!(!polled.get());
        let st = r
            .run("pod-network", Some(Backend::HostGw), "pod->pod cross-node: icmp", Level::Error, async {
                Ok(String::new())
            })
            .await;
        assert_eq!(st, Some(CheckStatus::Pass));
        assert_eq!(r.checks().len(), 1);
    }

    #[test]
    fn skip_leaves_out_what_it_names_and_filter_keeps_what_it_names() {
        let s = Selection { filter: Some("vxlan".into()), skip: vec!["[controller]".into(), "udp".into()] };
        assert!(s.selects("[service] vxlan should serve a basic endpoint from pods"));
        assert!(!s.selects("[controller] vxlan a deleted pod is replaced"));
        assert!(!s.selects("[service] host-gw should serve a basic endpoint from pods"));
        assert!(s.narrows() && !Selection::default().narrows());
        assert!(Selection::default().selects("[cgroups] memory limit enforced: OOM kill"));
    }

    #[tokio::test]
    async fn a_hung_check_is_an_infrastructure_error() {
        let mut r = Runner::new(Selection::default()).with_timeout(Duration::from_millis(20));
        let st = r
            .run("g", None, "hang", Level::Error, async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(String::new())
            })
            .await;
        assert_eq!(st, Some(CheckStatus::Error));
    }
}
