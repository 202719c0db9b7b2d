//! The kubelet's pure rules for probes and restarts, without I/O or clocks of their own: a probe worker's
//! threshold counting (pkg/kubelet/prober/worker.go doProbe) and the crash back-off
//! (pkg/kubelet/kuberuntime doBackOff over client-go's flowcontrol.Backoff).

use std::time::Duration;

use testbed_api::probe::{Probe, ProbeKind};
use tokio::time::Instant;

/// The kubelet's first restart delay after the first immediate restart.
pub(super) const RESTART_BACKOFF_START: Duration = Duration::from_secs(10);
/// The kubelet's `MaxContainerBackOff`.
pub(super) const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Consecutive results of one probe of one container run, and the result they have set so far.
#[derive(Debug, Clone)]
pub(super) struct ProbeCounter {
    success_threshold: u32,
    failure_threshold: u32,
    last: Option<bool>,
    run: u32,
}

impl ProbeCounter {
    pub(super) fn new(probe: &Probe) -> ProbeCounter {
        ProbeCounter {
            success_threshold: probe.success_threshold(),
            failure_threshold: probe.failure_threshold(),
            last: None,
            run: 0,
        }
    }

    /// One probe's result. Some(result) when it sets the probe's result (`successThreshold` successes or
    /// `failureThreshold` failures in a row, and every probe after those while it stays the same), None while
    /// a run is below its threshold and the previous result stands.
    pub(super) fn observe(&mut self, success: bool) -> Option<bool> {
        if self.last == Some(success) {
            self.run += 1;
        } else {
            self.last = Some(success);
            self.run = 1;
        }
        let threshold = if success { self.success_threshold } else { self.failure_threshold };
        (self.run >= threshold).then_some(success)
    }
}

/// What a probe's result does to the container (worker.go: a failed liveness or startup probe has the
/// container killed; readiness and startup successes are recorded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Liveness or startup failed: kill the container (restarted as its pod's restartPolicy says).
    Kill,
    /// Readiness set to this.
    Ready(bool),
    /// The startup probe succeeded: liveness and readiness probing begin.
    Started,
    /// Nothing changes.
    None,
}

pub(super) fn verdict(kind: ProbeKind, result: bool) -> Verdict {
    match (kind, result) {
        (ProbeKind::Liveness | ProbeKind::Startup, false) => Verdict::Kill,
        (ProbeKind::Readiness, ready) => Verdict::Ready(ready),
        (ProbeKind::Startup, true) => Verdict::Started,
        (ProbeKind::Liveness, true) => Verdict::None,
    }
}

/// The kubelet's per-container crash back-off: the first restart is immediate, each later one waits 10 s
/// doubling to 5 min, counted from the exit; an exit more than 10 min (twice the maximum) after the previous
/// one starts over, as client-go's Backoff expires an entry (so a container that ran 10 min restarts at once).
#[derive(Debug, Clone, Default)]
pub(super) struct RestartBackOff {
    /// The delay the next exit gets, and the previous exit's time.
    entry: Option<(Duration, Instant)>,
}

impl RestartBackOff {
    /// For an exit at `finished`: how long to wait before starting the container again.
    pub(super) fn on_exit(&mut self, finished: Instant) -> Duration {
        let current =
            self.entry.filter(|(_, last)| finished.saturating_duration_since(*last) <= 2 * RESTART_BACKOFF_MAX);
        let (delay, next) = match current {
            Some((delay, _)) => (delay, (delay * 2).min(RESTART_BACKOFF_MAX)),
            None => (Duration::ZERO, RESTART_BACKOFF_START),
        };
        self.entry = Some((next, finished));
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(success: i32, failure: i32) -> Probe {
        Probe { success_threshold: Some(success), failure_threshold: Some(failure), ..Default::default() }
    }

    #[test]
    fn a_result_is_set_once_its_threshold_is_reached_in_a_row() {
        let mut c = ProbeCounter::new(&probe(1, 3));
        assert_eq!(c.observe(true), Some(true));
        assert_eq!((c.observe(false), c.observe(false)), (None, None), "2 failures are below 3");
        assert_eq!(c.observe(true), Some(true), "a success breaks the run");
        let fails: Vec<_> = (0..4).map(|_| c.observe(false)).collect();
        assert_eq!(fails, [None, None, Some(false), Some(false)]);

        let mut readiness = ProbeCounter::new(&probe(2, 1));
        assert_eq!(readiness.observe(false), Some(false));
        assert_eq!((readiness.observe(true), readiness.observe(true)), (None, Some(true)));
    }

    #[test]
    fn liveness_and_startup_failures_kill_readiness_flips() {
        assert_eq!(verdict(ProbeKind::Liveness, false), Verdict::Kill);
        assert_eq!(verdict(ProbeKind::Startup, false), Verdict::Kill);
        assert_eq!(verdict(ProbeKind::Startup, true), Verdict::Started);
        assert_eq!(verdict(ProbeKind::Readiness, false), Verdict::Ready(false));
        assert_eq!(verdict(ProbeKind::Liveness, true), Verdict::None);
    }

    #[test]
    fn back_off_is_immediate_then_10s_doubling_to_5min_and_resets_after_10min() {
        let t0 = Instant::now();
        let mut b = RestartBackOff::default();
        // A container that exits as soon as it starts: each exit comes when the previous delay is over.
        let mut exit = t0;
        let mut delays = vec![];
        for _ in 0..8 {
            let d = b.on_exit(exit);
            delays.push(d.as_secs());
            exit += d;
        }
        assert_eq!(delays, [0, 10, 20, 40, 80, 160, 300, 300]);
        // The last exit was 300 s before `exit`: an exit 10 min after it keeps the history.
        let last = exit - Duration::from_secs(300);
        let kept = last + Duration::from_secs(600);
        assert_eq!(b.on_exit(kept).as_secs(), 300);
        // An exit more than 10 min after that one: the history has expired, at once, and the next waits 10 s.
        let later = kept + Duration::from_secs(601);
        assert_eq!((b.on_exit(later).as_secs(), b.on_exit(later).as_secs()), (0, 10));
    }
}
