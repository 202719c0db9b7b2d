//! Checks both sides run on specs: the CLI before sending, the agent before touching the kernel.
//! Errors name the field as a path so a 4xx tells exactly what is wrong.

use crate::{ApiError, NodeSpec, PodSpec};

fn err(field: impl Into<String>, message: impl Into<String>) -> ApiError {
    ApiError { field: Some(field.into()), message: message.into() }
}

/// A DNS-1123 label (Kubernetes pod and container names), at most `max` characters.
pub fn is_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn validate_pod(pod: &PodSpec) -> Result<(), ApiError> {
    if !is_dns_label(&pod.name, 63) {
        return Err(err("name", format!("`{}` is not a DNS label (a-z, 0-9, '-', at most 63)", pod.name)));
    }
    if pod.containers.is_empty() {
        return Err(err("containers", "a pod needs at least one container"));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, c) in pod.containers.iter().enumerate() {
        let at = |f: &str| format!("containers[{i}].{f}");
        if !is_dns_label(&c.name, 63) {
            return Err(err(at("name"), format!("`{}` is not a DNS label", c.name)));
        }
        if !seen.insert(c.name.as_str()) {
            return Err(err(at("name"), format!("duplicate container name `{}`", c.name)));
        }
        if c.command.is_empty() || c.command[0].is_empty() {
            return Err(err(at("command"), "command must name a program"));
        }
        let (req, lim) = (c.resources.requests, c.resources.limits);
        if let (Some(r), Some(l)) = (req.cpu_millis, lim.cpu_millis) {
            if r > l {
                return Err(err(at("resources.requests.cpu"), format!("request {r}m exceeds limit {l}m")));
            }
        }
        if let (Some(r), Some(l)) = (req.memory_bytes, lim.memory_bytes) {
            if r > l {
                return Err(err(at("resources.requests.memory"), format!("request {r} exceeds limit {l}")));
            }
        }
        if lim.cpu_millis == Some(0) {
            return Err(err(at("resources.limits.cpu"), "must be greater than 0"));
        }
        if matches!(lim.memory_bytes, Some(m) if m < 1 << 20) {
            return Err(err(at("resources.limits.memory"), "must be at least 1Mi"));
        }
        if c.pids_limit == Some(0) {
            return Err(err(at("pids_limit"), "must be greater than 0"));
        }
    }
    Ok(())
}

pub fn validate_node(spec: &NodeSpec) -> Result<(), ApiError> {
    if spec.node_name.is_empty() {
        return Err(err("node_name", "must not be empty"));
    }
    if !(576..=9000).contains(&spec.underlay.mtu) {
        return Err(err("underlay.mtu", format!("{} is outside 576..=9000", spec.underlay.mtu)));
    }
    if spec.underlay.prefix_len > 32 {
        return Err(err("underlay.prefix_len", "must be at most 32"));
    }
    if !spec.pod_cidr.contains(&spec.pod_subnet) {
        return Err(err("pod_subnet", format!("{} is not inside pod_cidr {}", spec.pod_subnet, spec.pod_cidr)));
    }
    if spec.pod_subnet.prefix_len() > 29 {
        return Err(err("pod_subnet", "must be /29 or larger"));
    }
    if !is_mac(&spec.vtep_mac) {
        return Err(err("vtep_mac", format!("`{}` is not a MAC address", spec.vtep_mac)));
    }
    for (i, p) in spec.peers.iter().enumerate() {
        if !spec.pod_cidr.contains(&p.pod_subnet) {
            return Err(err(format!("peers[{i}].pod_subnet"), "not inside pod_cidr"));
        }
        if p.pod_subnet == spec.pod_subnet || spec.peers[..i].iter().any(|q| q.pod_subnet == p.pod_subnet) {
            return Err(err(format!("peers[{i}].pod_subnet"), format!("{} is used twice", p.pod_subnet)));
        }
        if !is_mac(&p.vtep_mac) {
            return Err(err(format!("peers[{i}].vtep_mac"), format!("`{}` is not a MAC address", p.vtep_mac)));
        }
    }
    Ok(())
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ContainerSpec, Resources, RestartPolicy};

    fn pod() -> PodSpec {
        PodSpec {
            name: "web".into(),
            containers: vec![ContainerSpec {
                name: "srv".into(),
                command: vec!["sleep".into(), "1".into()],
                env: Default::default(),
                resources: Resources::default(),
                pids_limit: None,
            }],
            restart_policy: RestartPolicy::Never,
            share_process_namespace: false,
            host_network: false,
        }
    }

    #[test]
    fn pod_errors_name_the_field() {
        assert!(validate_pod(&pod()).is_ok());
        let mut p = pod();
        p.containers[0].resources.requests.cpu_millis = Some(600);
        p.containers[0].resources.limits.cpu_millis = Some(500);
        assert_eq!(validate_pod(&p).unwrap_err().field.as_deref(), Some("containers[0].resources.requests.cpu"));
        let mut p = pod();
        p.containers.push(p.containers[0].clone());
        assert_eq!(validate_pod(&p).unwrap_err().field.as_deref(), Some("containers[1].name"));
        let mut p = pod();
        p.name = "Web".into();
        assert_eq!(validate_pod(&p).unwrap_err().field.as_deref(), Some("name"));
    }
}
