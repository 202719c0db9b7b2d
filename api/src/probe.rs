//! Container probes with Kubernetes' names and defaults (`core/v1 Probe`): the same type in a topology's
//! container, an API Pod's container and the agent's `ContainerSpec`, checked by one function
//! ([`validate_probe`]) on all three paths.

use serde::{Deserialize, Serialize};

/// Kubernetes' default `periodSeconds`.
pub const DEFAULT_PERIOD_SECONDS: i32 = 10;
/// Kubernetes' default `timeoutSeconds`.
pub const DEFAULT_TIMEOUT_SECONDS: i32 = 1;
/// Kubernetes' default `successThreshold` (and the only value liveness and startup probes may have).
pub const DEFAULT_SUCCESS_THRESHOLD: i32 = 1;
/// Kubernetes' default `failureThreshold`.
pub const DEFAULT_FAILURE_THRESHOLD: i32 = 3;

/// A port by number or by the name of one of the container's `ports` (Kubernetes' IntOrString).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum PortRef {
    /// 1-65535.
    Number(i32),
    /// An entry of the container's `ports` by its `name`.
    Name(String),
}

/// `exec`: run a command in the container; exit 0 is success.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ExecAction {
    /// argv, run in every namespace and the cgroup of the container (as `testbed exec --pod -c`).
    #[serde(default)]
    pub command: Vec<String>,
}

/// `httpGet`: a GET to the pod's IP; a status from 200 to 399 is success.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct HttpGetAction {
    /// Request path (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Port number or container port name.
    pub port: PortRef,
}

/// `tcpSocket`: a TCP connection to the pod's IP; an established connection is success.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct TcpSocketAction {
    /// Port number or container port name.
    pub port: PortRef,
}

/// One probe of a container. Exactly one handler (`exec`, `httpGet`, `tcpSocket`); the numbers default as
/// in Kubernetes (see the `DEFAULT_*` constants; `initialDelaySeconds` 0).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    /// Run a command in the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecAction>,
    /// GET a path of the pod's IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetAction>,
    /// Connect to a port of the pod's IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocketAction>,
    /// Seconds after the container started before the first probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay_seconds: Option<i32>,
    /// Seconds between probes (default 10, at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<i32>,
    /// Seconds after which a probe counts as failed (default 1, at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i32>,
    /// Consecutive successes after a failure to count as succeeded (default 1; must be 1 for liveness
    /// and startup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<i32>,
    /// Consecutive failures to count as failed (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<i32>,
    /// Seconds between SIGTERM and SIGKILL when a liveness or startup failure kills the container (default:
    /// the pod's grace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<i64>,
}

/// Which probe of a container: they differ in what a failure does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// Failure kills the container (restarted as `restartPolicy` says).
    Liveness,
    /// Failure takes the container (and so the pod) out of `Ready`.
    Readiness,
    /// Until it succeeds, liveness and readiness are not probed; failure kills the container.
    Startup,
}

impl ProbeKind {
    /// The field of a Kubernetes container: `livenessProbe`, `readinessProbe`, `startupProbe`.
    pub fn field(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "livenessProbe",
            ProbeKind::Readiness => "readinessProbe",
            ProbeKind::Startup => "startupProbe",
        }
    }
}

/// The three probes of a container (the agent's `ContainerSpec::probes`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probes {
    /// `livenessProbe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    /// `readinessProbe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    /// `startupProbe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<Probe>,
}

impl Probes {
    /// True when no probe is set (the field is then left out of the JSON).
    pub fn is_empty(&self) -> bool {
        self.liveness_probe.is_none() && self.readiness_probe.is_none() && self.startup_probe.is_none()
    }

    /// Each probe that is set, with its kind.
    pub fn iter(&self) -> impl Iterator<Item = (ProbeKind, &Probe)> {
        [
            (ProbeKind::Liveness, &self.liveness_probe),
            (ProbeKind::Readiness, &self.readiness_probe),
            (ProbeKind::Startup, &self.startup_probe),
        ]
        .into_iter()
        .filter_map(|(kind, probe)| probe.as_ref().map(|p| (kind, p)))
    }

    /// The probes with every port name the container declares (`ports`: name -> number) replaced by its
    /// number, as the kubelet resolves them against the container's own ports. A name it does not declare
    /// stays a name, which [`validate_probe`] refuses.
    pub fn with_port_numbers(&self, ports: &dyn Fn(&str) -> Option<i32>) -> Probes {
        let resolve = |probe: &Option<Probe>| {
            probe.clone().map(|mut p| {
                let port = p.http_get.as_mut().map(|h| &mut h.port).or(p.tcp_socket.as_mut().map(|t| &mut t.port));
                if let Some(port) = port {
                    if let PortRef::Name(name) = port {
                        if let Some(number) = ports(name) {
                            *port = PortRef::Number(number);
                        }
                    }
                }
                p
            })
        };
        Probes {
            liveness_probe: resolve(&self.liveness_probe),
            readiness_probe: resolve(&self.readiness_probe),
            startup_probe: resolve(&self.startup_probe),
        }
    }
}

impl Probe {
    /// `initialDelaySeconds` with its default.
    pub fn initial_delay(&self) -> std::time::Duration {
        secs(self.initial_delay_seconds.unwrap_or(0))
    }
    /// `periodSeconds` with its default.
    pub fn period(&self) -> std::time::Duration {
        secs(self.period_seconds.unwrap_or(DEFAULT_PERIOD_SECONDS))
    }
    /// `timeoutSeconds` with its default.
    pub fn timeout(&self) -> std::time::Duration {
        secs(self.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS))
    }
    /// `successThreshold` with its default.
    pub fn success_threshold(&self) -> u32 {
        self.success_threshold.unwrap_or(DEFAULT_SUCCESS_THRESHOLD).max(1) as u32
    }
    /// `failureThreshold` with its default.
    pub fn failure_threshold(&self) -> u32 {
        self.failure_threshold.unwrap_or(DEFAULT_FAILURE_THRESHOLD).max(1) as u32
    }
}

fn secs(n: i32) -> std::time::Duration {
    std::time::Duration::from_secs(n.max(0) as u64)
}

/// Why `probe` (a container's `kind` probe) is refused, as (field below the probe, message) in the API
/// server's words: exactly one handler, numbers in range, `successThreshold` 1 for liveness and startup,
/// ports numbers 1-65535 once the container's port names are resolved
/// ([`Probes::with_port_numbers`]).
pub fn validate_probe(kind: ProbeKind, probe: &Probe) -> Result<(), (String, String)> {
    let handlers = [probe.exec.is_some(), probe.http_get.is_some(), probe.tcp_socket.is_some()];
    match handlers.iter().filter(|set| **set).count() {
        0 => return Err((String::new(), "Required value: must specify a handler type".into())),
        1 => {}
        _ => return Err((String::new(), "Forbidden: may not specify more than 1 handler type".into())),
    }
    if let Some(exec) = &probe.exec {
        if exec.command.first().is_none_or(String::is_empty) {
            return Err(("exec.command".into(), "Required value: must name a program".into()));
        }
    }
    let port = match (&probe.http_get, &probe.tcp_socket) {
        (Some(h), _) => Some(("httpGet.port", &h.port)),
        (_, Some(t)) => Some(("tcpSocket.port", &t.port)),
        _ => None,
    };
    match port {
        Some((field, PortRef::Number(n))) if !(1..=65535).contains(n) => {
            return Err((field.into(), format!("Invalid value: {n}: must be between 1 and 65535, inclusive")));
        }
        Some((field, PortRef::Name(name))) => {
            return Err((
                field.into(),
                format!("Invalid value: \"{name}\": the container declares no port of this name in `ports`"),
            ));
        }
        _ => {}
    }
    let at_least = |field: &str, value: Option<i32>, min: i32| match value {
        Some(v) if v < min => {
            Err((field.to_string(), format!("Invalid value: {v}: must be greater than or equal to {min}")))
        }
        _ => Ok(()),
    };
    at_least("initialDelaySeconds", probe.initial_delay_seconds, 0)?;
    at_least("periodSeconds", probe.period_seconds, 1)?;
    at_least("timeoutSeconds", probe.timeout_seconds, 1)?;
    at_least("successThreshold", probe.success_threshold, 1)?;
    at_least("failureThreshold", probe.failure_threshold, 1)?;
    if let Some(g) = probe.termination_grace_period_seconds.filter(|g| *g < 1) {
        return Err(("terminationGracePeriodSeconds".into(), format!("Invalid value: {g}: must be greater than 0")));
    }
    if kind != ProbeKind::Readiness && probe.success_threshold.is_some_and(|s| s != 1) {
        return Err(("successThreshold".into(), "Invalid value: must be 1".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(port: PortRef) -> Probe {
        Probe { http_get: Some(HttpGetAction { path: None, port }), ..Default::default() }
    }

    #[test]
    fn one_handler_numbers_in_range_and_declared_port_names() {
        assert_eq!(validate_probe(ProbeKind::Liveness, &http(PortRef::Number(80))), Ok(()));
        let none = Probe::default();
        assert_eq!(validate_probe(ProbeKind::Liveness, &none).unwrap_err().0, "");
        let two = Probe { tcp_socket: Some(TcpSocketAction { port: PortRef::Number(1) }), ..http(PortRef::Number(80)) };
        assert!(validate_probe(ProbeKind::Readiness, &two).unwrap_err().1.contains("more than 1 handler"));
        let period = Probe { period_seconds: Some(0), ..http(PortRef::Number(80)) };
        assert_eq!(validate_probe(ProbeKind::Readiness, &period).unwrap_err().0, "periodSeconds");
        let success = Probe { success_threshold: Some(2), ..http(PortRef::Number(80)) };
        assert_eq!(validate_probe(ProbeKind::Readiness, &success), Ok(()));
        assert_eq!(validate_probe(ProbeKind::Startup, &success).unwrap_err().0, "successThreshold");

        let probes = Probes { liveness_probe: Some(http(PortRef::Name("web".into()))), ..Default::default() };
        let declared = probes.with_port_numbers(&|name| (name == "web").then_some(8080));
        let live = declared.liveness_probe.as_ref().expect("liveness");
        assert_eq!(live.http_get.as_ref().map(|h| &h.port), Some(&PortRef::Number(8080)));
        let undeclared = probes.with_port_numbers(&|_| None);
        let err = validate_probe(ProbeKind::Liveness, undeclared.liveness_probe.as_ref().expect("liveness"));
        assert_eq!(err.unwrap_err().0, "httpGet.port");
    }

    #[test]
    fn kubernetes_defaults_and_json_names() {
        let p: Probe = serde_json::from_str(r#"{"tcpSocket":{"port":"http"},"periodSeconds":2}"#).expect("probe");
        assert_eq!(p.tcp_socket.as_ref().map(|t| &t.port), Some(&PortRef::Name("http".into())));
        assert_eq!((p.period().as_secs(), p.timeout().as_secs(), p.initial_delay().as_secs()), (2, 1, 0));
        assert_eq!((p.success_threshold(), p.failure_threshold()), (1, 3));
        // Fields testbed does not act on (`scheme`, `httpHeaders`, `grpc`) are dropped, as the API server
        // drops unknown fields with a warning, so manifests written for Kubernetes load.
        let p: Probe = serde_json::from_str(r#"{"httpGet":{"port":80,"scheme":"HTTP"},"grpc":{}}"#).expect("probe");
        assert!(p.http_get.is_some());
    }
}
