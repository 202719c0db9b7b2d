//! Requests and limits to QoS class and cgroup values, following the kubelet (pkg/kubelet/cm and
//! pkg/apis/core/v1/helper/qos): requests default to limits when only limits are set.

use testbed_api::{ContainerSpec, PodSpec, QosClass, ResourceAmounts};

use crate::cgroups::{CgroupLimits, CPU_PERIOD_US};

/// cpu.shares bounds of the kernel and the kubelet.
const MIN_SHARES: u64 = 2;
const MAX_SHARES: u64 = 262_144;
/// The kubelet never writes a CFS quota below 1 ms.
const MIN_QUOTA_US: u64 = 1_000;

/// Requests as the API server defaults them: an unset request takes the limit.
fn effective_requests(c: &ContainerSpec) -> ResourceAmounts {
    let (r, l) = (c.resources.requests, c.resources.limits);
    ResourceAmounts { cpu_millis: r.cpu_millis.or(l.cpu_millis), memory_bytes: r.memory_bytes.or(l.memory_bytes) }
}

pub fn qos_class(pod: &PodSpec) -> QosClass {
    let any_set = pod.containers.iter().any(|c| {
        let (r, l) = (c.resources.requests, c.resources.limits);
        r.cpu_millis.is_some() || r.memory_bytes.is_some() || l.cpu_millis.is_some() || l.memory_bytes.is_some()
    });
    if !any_set {
        return QosClass::BestEffort;
    }
    let guaranteed = pod.containers.iter().all(|c| {
        let (req, lim) = (effective_requests(c), c.resources.limits);
        lim.cpu_millis.is_some() && lim.memory_bytes.is_some() && req == lim
    });
    if guaranteed {
        QosClass::Guaranteed
    } else {
        QosClass::Burstable
    }
}

/// kubelet MilliCPUToShares.
pub fn cpu_shares(millis: Option<u64>) -> u64 {
    match millis {
        None | Some(0) => MIN_SHARES,
        Some(m) => (m * 1024 / 1000).clamp(MIN_SHARES, MAX_SHARES),
    }
}

/// kubelet/runc CpuSharesToCpuWeight: maps [2, 262144] onto cgroup v2's [1, 10000].
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(MIN_SHARES, MAX_SHARES);
    1 + ((shares - MIN_SHARES) * 9999) / (MAX_SHARES - MIN_SHARES)
}

/// kubelet MilliCPUToQuota with the 100 ms period.
pub fn cpu_quota_us(limit_millis: u64) -> u64 {
    (limit_millis * CPU_PERIOD_US / 1000).max(MIN_QUOTA_US)
}

pub fn container_limits(c: &ContainerSpec) -> CgroupLimits {
    let lim = c.resources.limits;
    CgroupLimits {
        cpu_quota_us: lim.cpu_millis.map(cpu_quota_us),
        cpu_shares: cpu_shares(effective_requests(c).cpu_millis),
        memory_max: lim.memory_bytes,
        pids_max: c.pids_limit,
    }
}

/// The pod cgroup: shares = sum of requests; quota and memory = sum of limits, only when every container
/// has one (an unlimited container makes the pod unlimited), as the kubelet's pod-level cgroup does.
pub fn pod_limits(pod: &PodSpec) -> CgroupLimits {
    let sum_all = |f: &dyn Fn(&ContainerSpec) -> Option<u64>| -> Option<u64> {
        pod.containers.iter().map(f).try_fold(0u64, |acc, v| v.map(|v| acc.saturating_add(v)))
    };
    let cpu_requests: u64 = pod.containers.iter().filter_map(|c| effective_requests(c).cpu_millis).sum();
    CgroupLimits {
        cpu_quota_us: sum_all(&|c| c.resources.limits.cpu_millis).map(cpu_quota_us),
        cpu_shares: cpu_shares(Some(cpu_requests)),
        memory_max: sum_all(&|c| c.resources.limits.memory_bytes),
        pids_max: sum_all(&|c| c.pids_limit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testbed_api::{Resources, RestartPolicy};

    fn container(req: (Option<u64>, Option<u64>), lim: (Option<u64>, Option<u64>)) -> ContainerSpec {
        ContainerSpec {
            name: "c".into(),
            command: vec!["true".into()],
            env: Default::default(),
            resources: Resources {
                requests: ResourceAmounts { cpu_millis: req.0, memory_bytes: req.1 },
                limits: ResourceAmounts { cpu_millis: lim.0, memory_bytes: lim.1 },
            },
            pids_limit: None,
            args: vec![],
            image: None,
            volume_mounts: vec![],
            security_context: None,
            probes: Default::default(),
        }
    }

    fn pod(containers: Vec<ContainerSpec>) -> PodSpec {
        PodSpec {
            name: "p".into(),
            containers,
            restart_policy: RestartPolicy::Always,
            share_process_namespace: false,
            host_network: false,
            ..Default::default()
        }
    }

    #[test]
    fn qos_classes_like_kubernetes() {
        let mi = 1 << 20;
        assert_eq!(qos_class(&pod(vec![container((None, None), (None, None))])), QosClass::BestEffort);
        // Limits only: requests default to limits -> Guaranteed.
        assert_eq!(qos_class(&pod(vec![container((None, None), (Some(500), Some(64 * mi)))])), QosClass::Guaranteed);
        assert_eq!(
            qos_class(&pod(vec![container((Some(500), Some(64 * mi)), (Some(500), Some(64 * mi)))])),
            QosClass::Guaranteed
        );
        assert_eq!(
            qos_class(&pod(vec![container((Some(100), None), (Some(500), Some(64 * mi)))])),
            QosClass::Burstable
        );
        assert_eq!(qos_class(&pod(vec![container((Some(100), None), (None, None))])), QosClass::Burstable);
        // Memory limit without CPU limit is not Guaranteed.
        assert_eq!(qos_class(&pod(vec![container((None, None), (None, Some(64 * mi)))])), QosClass::Burstable);
        // One BestEffort container next to a Guaranteed one makes the pod Burstable.
        assert_eq!(
            qos_class(&pod(vec![
                container((None, None), (Some(500), Some(64 * mi))),
                container((None, None), (None, None))
            ])),
            QosClass::Burstable
        );
    }

    #[test]
    fn cpu_conversions_match_kubelet() {
        assert_eq!(cpu_shares(None), 2);
        assert_eq!(cpu_shares(Some(1)), 2);
        assert_eq!(cpu_shares(Some(100)), 102);
        assert_eq!(cpu_shares(Some(1000)), 1024);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(102), 4);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(cpu_quota_us(500), 50_000);
        assert_eq!(cpu_quota_us(2000), 200_000);
        assert_eq!(cpu_quota_us(5), 1_000);
    }

    #[test]
    fn pod_limits_sum_containers() {
        let mi = 1 << 20;
        let p = pod(vec![
            container((Some(100), None), (Some(200), Some(16 * mi))),
            container((None, None), (Some(300), Some(32 * mi))),
        ]);
        let l = pod_limits(&p);
        assert_eq!(l.cpu_quota_us, Some(50_000));
        assert_eq!(l.memory_max, Some(48 * mi));
        assert_eq!(l.cpu_shares, cpu_shares(Some(400)));
        let p = pod(vec![container((None, None), (Some(200), None)), container((None, None), (None, None))]);
        let l = pod_limits(&p);
        assert_eq!(l.cpu_quota_us, None);
        assert_eq!(l.memory_max, None);
        let c = container_limits(&p.containers[0]);
        assert_eq!((c.cpu_quota_us, c.cpu_shares, c.memory_max), (Some(20_000), 204, None));
    }
}
