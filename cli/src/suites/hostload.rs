//! What else ran while a perf sample did: the host's CPU counters (/proc/stat, /proc/loadavg) minus the lab's
//! own QEMU processes and testbed, and the guests' steal time. Counters are read at checkpoints between
//! samples; a sample's conditions are the difference of the checkpoints around it.

use testbed_api::results::SampleConditions;

/// A sample is disturbed when the host spent more than this many CPUs on other work. What is left on an
/// idle lab host (kernel threads, an editor) is a few hundredths; one compiler process is a whole CPU, so
/// anything that competes with two single-vCPU guests for real crosses it.
pub const DISTURBED_OTHER_CPUS: f64 = 0.25;
/// A sample is disturbed when steal (host or guest) or host iowait exceeded this share of CPU time.
pub const DISTURBED_STEAL_IOWAIT_PERCENT: f64 = 5.0;

/// The `cpu` line of /proc/stat, in USER_HZ ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub total: u64,
    pub idle: u64,
    pub iowait: u64,
    /// irq + softirq: on a lab host this is mostly the lab's own packets crossing the bridge, so it is not
    /// counted as other work.
    pub irq: u64,
    pub steal: u64,
}

impl CpuTimes {
    /// The first (aggregate) `cpu ` line of /proc/stat: user nice system idle iowait irq softirq steal
    /// [guest guest_nice]. guest time is already inside user, so it is not added twice.
    pub fn parse(stat: &str) -> Option<CpuTimes> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let v: Vec<u64> = line.split_whitespace().skip(1).take(8).map(|t| t.parse().ok()).collect::<Option<_>>()?;
        (v.len() >= 5).then(|| CpuTimes {
            total: v.iter().sum(),
            idle: v[3],
            iowait: v[4],
            irq: v.get(5).copied().unwrap_or(0) + v.get(6).copied().unwrap_or(0),
            steal: v.get(7).copied().unwrap_or(0),
        })
    }

    fn since(self, before: CpuTimes) -> CpuTimes {
        CpuTimes {
            total: self.total.saturating_sub(before.total),
            idle: self.idle.saturating_sub(before.idle),
            iowait: self.iowait.saturating_sub(before.iowait),
            irq: self.irq.saturating_sub(before.irq),
            steal: self.steal.saturating_sub(before.steal),
        }
    }

    fn percent(part: u64, total: u64) -> Option<f64> {
        (total > 0).then(|| 100.0 * part as f64 / total as f64)
    }
}

/// The host's counters at one checkpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HostCounters {
    pub cpu: CpuTimes,
    /// CPU ticks (utime + stime) the lab's QEMU processes and testbed itself have used so far.
    pub lab_ticks: u64,
    pub load1: Option<f64>,
    /// Logical CPUs (the `cpuN` lines).
    pub cpus: u32,
}

/// utime + stime (fields 14 and 15) of a /proc/PID/stat line; the command name may hold spaces and
/// parentheses, so fields are counted after its last `)`.
pub fn proc_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, index 11 here.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Host counters from the texts of /proc/stat, /proc/loadavg and the lab processes' /proc/PID/stat.
pub fn host_counters(stat: &str, loadavg: &str, lab_stats: &[String]) -> Option<HostCounters> {
    Some(HostCounters {
        cpu: CpuTimes::parse(stat)?,
        lab_ticks: lab_stats.iter().filter_map(|s| proc_ticks(s)).sum(),
        load1: loadavg.split_whitespace().next().and_then(|t| t.parse().ok()),
        cpus: stat.lines().filter(|l| l.starts_with("cpu") && !l.starts_with("cpu ")).count() as u32,
    })
}

/// Counters read at one checkpoint: the host's and each perf node's (name, guest /proc/stat).
#[derive(Debug, Clone, Default)]
pub struct Checkpoint {
    pub host: Option<HostCounters>,
    pub guests: Vec<(String, CpuTimes)>,
}

/// Conditions of a sample between checkpoints `a` and `b` that ran on `nodes`; `loss` as measured.
pub fn conditions(a: &Checkpoint, b: &Checkpoint, nodes: &[&str], loss: Option<f64>) -> SampleConditions {
    let host = a.host.zip(b.host).map(|(a, b)| {
        let d = b.cpu.since(a.cpu);
        let busy = d.total.saturating_sub(d.idle + d.iowait + d.steal + d.irq);
        let other = busy.saturating_sub(b.lab_ticks.saturating_sub(a.lab_ticks));
        // /proc/stat sums every CPU: its total over the interval is cpus x wall time.
        let other_cpus = (d.total > 0).then(|| other as f64 * f64::from(b.cpus.max(1)) / d.total as f64);
        (other_cpus, CpuTimes::percent(d.steal, d.total), CpuTimes::percent(d.iowait, d.total), b.load1)
    });
    let guest_steal = nodes
        .iter()
        .filter_map(|n| {
            let before = a.guests.iter().find(|(g, _)| g == n)?.1;
            let after = b.guests.iter().find(|(g, _)| g == n)?.1;
            let d = after.since(before);
            CpuTimes::percent(d.steal, d.total)
        })
        .reduce(f64::max);
    let (other, steal, iowait, load1) = host.unwrap_or_default();
    let over = |v: Option<f64>, limit: f64| v.is_some_and(|v| v > limit);
    let disturbed = over(other, DISTURBED_OTHER_CPUS)
        || over(steal, DISTURBED_STEAL_IOWAIT_PERCENT)
        || over(iowait, DISTURBED_STEAL_IOWAIT_PERCENT)
        || over(guest_steal, DISTURBED_STEAL_IOWAIT_PERCENT);
    SampleConditions {
        host_load1: load1,
        host_other_cpus: other,
        host_steal_percent: steal,
        host_iowait_percent: iowait,
        guest_steal_percent: guest_steal,
        loss_percent: loss,
        disturbed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT0: &str = "cpu  100 0 100 1000 0 0 0 0 0 0\ncpu0 50 0 50 500 0 0 0 0 0 0\ncpu1 50 0 50 500 0 0 0 0 0 0\n";

    fn stat(user: u64, idle: u64, iowait: u64, steal: u64) -> String {
        format!("cpu  {user} 0 100 {idle} {iowait} 0 0 {steal} 0 0\ncpu0 0\ncpu1 0\n")
    }

    #[test]
    fn parses_proc_files() {
        let c = CpuTimes::parse(STAT0).expect("cpu line");
        assert_eq!((c.total, c.idle, c.iowait, c.steal), (1200, 1000, 0, 0));
        assert_eq!(proc_ticks("42 (qemu (x) y) S 1 2 3 4 5 6 7 8 9 10 300 40 0 0"), Some(340));
        let h = host_counters(STAT0, "0.52 1.00 2.00 1/90 123\n", &["1 (q) S 1 2 3 4 5 6 7 8 9 10 7 3".into()])
            .expect("host");
        assert_eq!((h.cpus, h.lab_ticks, h.load1), (2, 10, Some(0.52)));
        assert!(CpuTimes::parse("intr 1 2 3").is_none());
    }

    #[test]
    fn other_work_on_the_host_disturbs_a_sample() {
        let at = |user: u64, lab: u64, idle: u64| Checkpoint {
            host: host_counters(&stat(user, idle, 0, 0), "1.0 1.0 1.0 1/1 1", &[])
                .map(|h| HostCounters { lab_ticks: lab, ..h }),
            guests: vec![],
        };
        // 200 ticks of 2 CPUs: the lab used all 150 busy ticks -> quiet.
        let quiet = conditions(&at(100, 0, 1000), &at(250, 150, 1050), &[], None);
        assert_eq!(quiet.host_other_cpus, Some(0.0));
        assert!(!quiet.disturbed);
        // 150 busy, the lab 50: 100 ticks of 200 on 2 CPUs = 1 CPU of other work.
        let busy = conditions(&at(100, 0, 1000), &at(250, 50, 1050), &[], None);
        assert_eq!(busy.host_other_cpus, Some(1.0));
        assert!(busy.disturbed);
    }

    #[test]
    fn steal_and_iowait_disturb_a_sample() {
        let host = |s: &str| Checkpoint { host: host_counters(s, "", &[]), guests: vec![] };
        let stolen = conditions(&host(&stat(100, 1000, 0, 0)), &host(&stat(100, 1080, 0, 20)), &[], None);
        assert_eq!(stolen.host_steal_percent, Some(20.0));
        assert!(stolen.disturbed);
        let io = conditions(&host(&stat(100, 1000, 0, 0)), &host(&stat(100, 1090, 10, 0)), &[], None);
        assert!(io.disturbed && io.host_iowait_percent == Some(10.0));
        let g = |steal: u64, total: u64| Checkpoint {
            host: None,
            guests: vec![("node1".into(), CpuTimes { total, idle: 0, iowait: 0, irq: 0, steal })],
        };
        let guest = conditions(&g(0, 100), &g(30, 200), &["node1"], Some(0.5));
        assert_eq!(
            (guest.guest_steal_percent, guest.loss_percent, guest.host_other_cpus),
            (Some(30.0), Some(0.5), None)
        );
        assert!(guest.disturbed);
        // A node the sample did not run on does not count.
        assert!(!conditions(&g(0, 100), &g(30, 200), &["node2"], None).disturbed);
    }
}
