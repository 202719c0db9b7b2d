//! Reaching a pod's containers, as kubectl reaches them through the kubelet: `testbed logs` and `testbed exec
//! --pod` find the node that runs the pod and the name its agent knows it by, then ask that agent over the
//! lab's SSH forward.

use std::io::Write;
use std::time::Duration;

use anyhow::anyhow;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use testbed_api::objects::MIRROR_ANNOTATION;
use testbed_api::{ExecRequest, LogChunk, LogQuery};

use super::{connect, ClientArgs, ClusterError};
use crate::exit::{CliError, CliResult};
use crate::lab::Lab;
use crate::ui::Ui;

/// How often `logs --follow` asks for more.
const FOLLOW_PERIOD: Duration = Duration::from_millis(500);
const CONNECT_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The pod: its API name, or with --node the name the node's agent shows (`testbed status`).
    pub pod: String,
    /// The container (may be left out when the pod has one).
    #[arg(long, short = 'c', value_name = "NAME")]
    pub container: Option<String>,
    /// Keep printing what the container writes until the pod is gone (Ctrl-C to stop); a restarted
    /// container's new instance is followed from its first line.
    #[arg(long, short = 'f', conflicts_with = "previous")]
    pub follow: bool,
    /// The log of the container's previous instance (before its last restart), as `kubectl logs --previous`.
    #[arg(long, short = 'p')]
    pub previous: bool,
    /// Read the pod straight from this node's agent, without the control plane (static pods, a lab whose
    /// API server is down).
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
}

/// Where a pod runs, the name of its node pod and its containers (none known with `--node`).
#[derive(Debug, PartialEq, Eq)]
pub struct NodePod {
    pub node: String,
    pub name: String,
    pub containers: Vec<String>,
}

impl NodePod {
    /// `given`, else the pod's first container as kubectl defaults to it (saying so when there are more).
    fn container(&self, given: Option<String>) -> Option<String> {
        if given.is_some() {
            return given;
        }
        let first = self.containers.first()?;
        if self.containers.len() > 1 {
            eprintln!("Defaulted container \"{first}\" out of: {}", self.containers.join(", "));
        }
        Some(first.clone())
    }
}

/// The node pod of API pod `pod`: a mirror pod is its node's static pod (`<name>-<node>` in the API);
/// any other runs under [`testbed_api::objects::node_pod_name`].
pub fn node_pod_of(pod: &Pod) -> Result<NodePod, String> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).ok_or_else(|| {
        format!("pod {namespace}/{name} is not scheduled to a node yet (see `testbed describe pod {name}`)")
    })?;
    let mirror = pod.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(MIRROR_ANNOTATION));
    let local = match mirror {
        true => name
            .strip_suffix(&format!("-{node}"))
            .map(str::to_string)
            .ok_or_else(|| format!("mirror pod {namespace}/{name} does not end in its node's name `-{node}`"))?,
        false => testbed_api::objects::node_pod_name(&namespace, &name),
    };
    let containers = pod.spec.iter().flat_map(|s| &s.containers).map(|c| c.name.clone()).collect();
    Ok(NodePod { node, name: local, containers })
}

/// `--node`'s pod as it is, else the API pod's node pod.
async fn locate(args: &ClientArgs, pod: &str, node: Option<&str>) -> Result<NodePod, CliError> {
    if let Some(node) = node {
        return Ok(NodePod { node: node.to_string(), name: pod.to_string(), containers: vec![] });
    }
    let client = connect(args).await.map_err(ClusterError::into_cli)?;
    let namespace = args.namespace.as_deref().unwrap_or("default");
    let api: Api<Pod> = Api::namespaced(client, namespace);
    let found =
        api.get(pod).await.map_err(|e| ClusterError::from_kube(format!("get pod {namespace}/{pod}"), e).into_cli())?;
    node_pod_of(&found).map_err(|e| CliError::bad_input(anyhow!(e)))
}

pub async fn cmd_logs(_ui: &Ui, a: LogsArgs) -> CliResult {
    let target = locate(&a.client, &a.pod, a.node.as_deref()).await?;
    let lab = Lab::open(&a.client.lab)?;
    let node = lab.connect_node(&target.node, CONNECT_DEADLINE).await?;
    let mut query = LogQuery { container: target.container(a.container), offset: Some(0), previous: a.previous };
    let mut out = std::io::stdout().lock();
    let mut instance = None;
    loop {
        let chunk = match node.agent.container_log(&target.name, &query).await {
            Ok(chunk) => chunk,
            // Following a pod that was deleted ends the stream, as kubectl's does.
            Err(e) if a.follow && instance.is_some() && e.is_not_found() => return Ok(()),
            Err(e) => return Err(agent_error(&target, e)),
        };
        let restarted = instance.is_some_and(|seen| seen != chunk.restart_count);
        instance = Some(chunk.restart_count);
        if reread_from_start(restarted, &chunk) {
            query.offset = Some(0);
            continue;
        }
        let _ = out.write_all(chunk.text.as_bytes());
        let _ = out.flush();
        query.container = Some(chunk.container);
        query.offset = Some(chunk.next_offset);
        if chunk.next_offset < chunk.size {
            continue;
        }
        if !a.follow {
            return Ok(());
        }
        tokio::time::sleep(FOLLOW_PERIOD).await;
    }
}

/// Whether a follower must read `chunk`'s log again from its start: the container restarted since the last
/// read and this answer starts past the new instance's beginning (the old offset).
fn reread_from_start(restarted: bool, chunk: &LogChunk) -> bool {
    restarted && chunk.offset > 0
}

/// `testbed exec --pod`: `command` in the pod's container (its first when none is named, as kubectl), its
/// output and exit code passed through.
pub async fn exec_in_pod(args: &ClientArgs, pod: &str, container: Option<String>, command: Vec<String>) -> CliResult {
    let target = locate(args, pod, None).await?;
    let lab = Lab::open(&args.lab)?;
    let connected = lab.connect_node(&target.node, CONNECT_DEADLINE).await?;
    let req = ExecRequest { container: target.container(container), command, stdin: None, timeout_secs: None };
    let out = connected.agent.exec(&target.name, &req).await.map_err(|e| agent_error(&target, e))?;
    crate::commands::pass_on(out.stdout.as_bytes(), out.stderr.as_bytes(), out.exit_code)
}

/// An agent's refusal (no such pod or container) is bad input; anything else is the lab's failure.
fn agent_error(target: &NodePod, e: crate::guest::AgentError) -> CliError {
    let message = anyhow!("node {}, pod {}: {e}", target.node, target.name);
    if e.is_client_error() {
        CliError::bad_input(message)
    } else {
        CliError::infra(message)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use kube::api::ObjectMeta;

    use super::*;

    fn pod(name: &str, node: Option<&str>, mirror: bool) -> Pod {
        let annotations = mirror.then(|| BTreeMap::from([(MIRROR_ANNOTATION.to_string(), "h".to_string())]));
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("team".into()),
                annotations,
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(Into::into),
                containers: ["app", "side"].map(|name| Container { name: name.into(), ..Default::default() }).into(),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn a_follower_rereads_a_restarted_containers_log_from_its_start() {
        let chunk = |offset| LogChunk {
            container: "app".into(),
            restart_count: 1,
            offset,
            next_offset: offset,
            size: offset,
            text: String::new(),
        };
        // The old instance was read to byte 40; the new one has written 12: clamped to 12, read again from 0.
        assert!(reread_from_start(true, &chunk(12)));
        // The new instance has written nothing yet: nothing is skipped.
        assert!(!reread_from_start(true, &chunk(0)));
        assert!(!reread_from_start(false, &chunk(12)), "the same instance goes on from where it was");
    }

    #[test]
    fn an_api_pod_runs_under_its_node_pod_name_and_a_mirror_under_its_static_name() {
        let api = node_pod_of(&pod("db", Some("node2"), false)).unwrap();
        let name = testbed_api::objects::node_pod_name("team", "db");
        assert_eq!(api, NodePod { node: "node2".into(), name, containers: vec!["app".into(), "side".into()] });
        assert_eq!(api.container(None).as_deref(), Some("app"), "the first, as kubectl defaults");
        assert_eq!(api.container(Some("side".into())).as_deref(), Some("side"));
        let mirror = node_pod_of(&pod("web-node1", Some("node1"), true)).unwrap();
        assert_eq!((mirror.node.as_str(), mirror.name.as_str()), ("node1", "web"));
        assert!(node_pod_of(&pod("db", None, false)).unwrap_err().contains("not scheduled"));
        assert!(node_pod_of(&pod("web", Some("node1"), true)).is_err(), "a mirror not named after its node");
    }
}
