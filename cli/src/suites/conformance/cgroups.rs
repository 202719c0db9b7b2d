//! The `cgroups` group: the limits a container asks for are written to its cgroup and enforced (CPU quota
//! throttles, memory limit OOM-kills). Backend-independent: runs once, on the first backend.

use std::time::Instant;

use testbed_api::{ContainerState, PodSpec, ResourceAmounts, RestartPolicy};

use super::super::cluster::Cluster;
use super::super::harness::{
    container, create_tracked, evidence, nexec, pod, wait_running, CreatedPods, POD_READY_TIMEOUT, POLL,
};
use super::super::probe;
use super::super::runner::{CheckError, CheckOutcome, Level, Runner};
use super::fixture::Fixture;

pub(super) const POD_CPU: &str = "tb-c-cpu";
pub const POD_MEM: &str = "tb-c-mem";
const CPU_LIMIT_MILLIS: u64 = 200;
const CPU_MEMORY_LIMIT: u64 = 64 << 20;
const PIDS_LIMIT: u64 = 64;
const OOM_MEMORY_LIMIT: u64 = 32 << 20;

/// Runs the group's checks on the first node; the pods they create are added to `created`.
pub(super) async fn run<C: Cluster>(c: &C, r: &mut Runner, f: &Fixture, created: &CreatedPods) {
    let (g, e) = ("cgroups", Level::Error);
    let node = f.a.name.as_str();
    r.run(g, None, "limits written: cpu.max, memory.max, pids.max", e, cgroup_limits(c, node, created)).await;
    r.run(g, None, "CPU quota of 200m enforced: throttled, within quota", e, cpu_enforced(c, node, created)).await;
    r.run(g, None, "memory limit enforced: OOM kill", e, oom_kill(c, node, created)).await;
}

fn cpu_pod() -> PodSpec {
    let mut c = container("spin", probe::sh("while :; do :; done"));
    c.resources.limits = ResourceAmounts { cpu_millis: Some(CPU_LIMIT_MILLIS), memory_bytes: Some(CPU_MEMORY_LIMIT) };
    c.pids_limit = Some(PIDS_LIMIT);
    pod(POD_CPU, vec![c], RestartPolicy::Always)
}

fn mem_pod() -> PodSpec {
    // dd's buffer is allocated and touched whole: 128 MiB against a 32 MiB limit.
    let mut c = container("hog", probe::sh("sleep 1; exec dd if=/dev/zero of=/dev/null bs=128M count=1"));
    c.resources.limits.memory_bytes = Some(OOM_MEMORY_LIMIT);
    pod(POD_MEM, vec![c], RestartPolicy::Never)
}

async fn cgroup_limits<C: Cluster>(c: &C, node: &str, created: &CreatedPods) -> CheckOutcome {
    create_tracked(c, node, &cpu_pod(), created).await?;
    let p = wait_running(c, node, POD_CPU).await?;
    let cg = p.status.containers.first().map(|c| c.cgroup.clone()).unwrap_or_default();
    let cmd = format!("cat {cg}/cpu.max {cg}/memory.max {cg}/pids.max");
    let r = nexec(c, node, &cmd).await?;
    let ev = evidence(&cmd, &r);
    let lines: Vec<&str> = r.stdout.lines().map(str::trim).collect();
    let mut problems = Vec::new();
    match lines.first().map(|l| l.split_whitespace().collect::<Vec<_>>()).as_deref() {
        Some([quota, period]) => match (quota.parse::<u64>(), period.parse::<u64>()) {
            (Ok(q), Ok(p)) if p > 0 && q * 1000 / p == CPU_LIMIT_MILLIS => {}
            _ => problems.push(format!("cpu.max `{}` is not {CPU_LIMIT_MILLIS}m", lines[0])),
        },
        _ => problems.push("cpu.max unreadable".into()),
    }
    if lines.get(1).and_then(|l| l.parse::<u64>().ok()) != Some(CPU_MEMORY_LIMIT) {
        problems.push(format!("memory.max `{}` is not {CPU_MEMORY_LIMIT}", lines.get(1).unwrap_or(&"")));
    }
    if lines.get(2).and_then(|l| l.parse::<u64>().ok()) != Some(PIDS_LIMIT) {
        problems.push(format!("pids.max `{}` is not {PIDS_LIMIT}", lines.get(2).unwrap_or(&"")));
    }
    if problems.is_empty() {
        Ok(ev)
    } else {
        Err(CheckError::Fail(format!("{}\n{ev}", problems.join("; "))))
    }
}

/// The spinning container of `tb-c-cpu` (created by `cgroup_limits`) is throttled and stays within its quota.
async fn cpu_enforced<C: Cluster>(c: &C, node: &str, created: &CreatedPods) -> CheckOutcome {
    if !created.borrow().iter().any(|(_, n)| n == POD_CPU) {
        create_tracked(c, node, &cpu_pod(), created).await?;
    }
    let p = wait_running(c, node, POD_CPU).await?;
    let cg = p.status.containers.first().map(|c| c.cgroup.clone()).unwrap_or_default();
    // Each sample is read and timestamped by shell builtins (`read`: the first line of cpu.stat is usage_usec;
    // /proc/uptime gives the time), with no process start in between: under TCG a fork+exec costs 0.1-0.5 s,
    // which would skew the measured window against the usage counters.
    let cmd = format!(
        "read u0 < {cg}/cpu.stat; read t0 _ < /proc/uptime; sleep 3; read u1 < {cg}/cpu.stat; \
         read t1 _ < /proc/uptime; echo \"T0 $t0\"; echo \"$u0\"; echo \"T1 $t1\"; echo \"$u1\"; cat {cg}/cpu.stat"
    );
    let r = nexec(c, node, &cmd).await?;
    let ev = evidence(&cmd, &r);
    let parsed = (|| {
        let (first, second) = r.stdout.split_once("T1 ")?;
        let t0 = uptime_micros(first.lines().next()?.strip_prefix("T0 ")?)?;
        let t1 = uptime_micros(second.lines().next()?)?;
        let u0 = probe::flat_keyed(first, "usage_usec")?;
        let u1 = probe::flat_keyed(second, "usage_usec")?;
        let thr = probe::flat_keyed(second, "nr_throttled")?;
        Some((t1.saturating_sub(t0), u1.saturating_sub(u0), thr))
    })();
    let Some((wall_us, used_us, throttled)) = parsed else {
        return Err(CheckError::Fail(format!("cannot read cpu.stat\n{ev}")));
    };
    let allowed = wall_us as f64 * CPU_LIMIT_MILLIS as f64 / 1000.0 * 1.15;
    let summary = format!(
        "used {used_us} us of CPU in {wall_us} us (quota {CPU_LIMIT_MILLIS}m allows {:.0} us with 15% slack), nr_throttled {throttled}",
        allowed
    );
    if throttled == 0 {
        return Err(CheckError::Fail(format!("never throttled: {summary}\n{ev}")));
    }
    if used_us as f64 > allowed {
        return Err(CheckError::Fail(format!("over quota: {summary}\n{ev}")));
    }
    Ok(format!("{summary}\n{ev}"))
}

/// Seconds with a fraction (`/proc/uptime`'s `12345.67`) as microseconds.
fn uptime_micros(s: &str) -> Option<u64> {
    let secs: f64 = s.trim().parse().ok()?;
    Some((secs * 1e6).round() as u64)
}

async fn oom_kill<C: Cluster>(c: &C, node: &str, created: &CreatedPods) -> CheckOutcome {
    create_tracked(c, node, &mem_pod(), created).await?;
    let deadline = Instant::now() + POD_READY_TIMEOUT;
    let st = loop {
        let st = c.get_pod(node, POD_MEM).await?;
        if st.containers.iter().any(|c| matches!(c.state, ContainerState::Terminated { .. })) {
            break st;
        }
        if Instant::now() > deadline {
            return Err(CheckError::Fail(format!(
                "the memory hog was not killed within {} s: {st:?}",
                POD_READY_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(POLL).await;
    };
    let hog = st.containers.first();
    let reason = match hog.map(|c| &c.state) {
        Some(ContainerState::Terminated { reason, exit_code }) => format!("{reason} (exit {exit_code})"),
        _ => String::new(),
    };
    let cg = hog.map(|c| c.cgroup.clone()).unwrap_or_default();
    let cmd = format!("cat {cg}/memory.events");
    let events = nexec(c, node, &cmd).await?;
    let oom_kills = probe::flat_keyed(&events.stdout, "oom_kill").unwrap_or(0);
    let ev = format!("container terminated: {reason}\n{}", evidence(&cmd, &events));
    if reason.starts_with("OOMKilled") || oom_kills > 0 {
        Ok(ev)
    } else {
        Err(CheckError::Fail(format!("the container over its memory limit was not OOM-killed\n{ev}")))
    }
}
