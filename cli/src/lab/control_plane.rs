//! The lab's control plane at `up`: per-lab credentials in the lab directory, etcd and the API server started on
//! the control-plane nodes (supervised by `testbed-service` under the guests' busybox init), the wait until the
//! API answers through the host's forwarder (`forwarder.rs`), the kubeconfig, and every agent told to follow
//! the API. Everything listens on the nodes' underlay addresses only: nothing on the management NIC.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use testbed_api::ControlPlaneJoin;
use testbed_control_plane::tls::{CertKey, Credentials};

use crate::guest::agent_client::JoinOutcome;
use crate::guest::{shell_quote, AgentClient, Session, SshError};
use crate::plan::{NodePlan, Plan, API_PORT, ETCD_CLIENT_PORT, ETCD_PEER_PORT};
use crate::ui::Ui;

use super::dir::LabDir;

/// Where a control-plane node keeps what `up` copies to it, and etcd's data (the node's own disk).
const GUEST_DIR: &str = "/etc/testbed/control-plane";
const ETCD_DATA_DIR: &str = "/var/lib/testbed-etcd";
/// etcd compacts its history older than this; a watch resumed from before it gets "too old" (410).
const ETCD_RETENTION: &str = "1h";
/// Between readiness probes of the API through the forwarder.
const PROBE_PAUSE: Duration = Duration::from_millis(250);

/// Each message carries its cause's text, so no variant names a `source`: `{:#}` would print it twice.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("cannot {action} {}: {error}", path.display())]
    Io { action: &'static str, path: PathBuf, error: std::io::Error },
    #[error("generating the lab's credentials: {0}")]
    Credentials(testbed_control_plane::tls::TlsError),
    #[error("starting etcd and the API server: {0}")]
    Launch(SshError),
    #[error("the API server did not answer through 127.0.0.1:{port} within {waited:.0?}: {last}")]
    NotReady { port: u16, waited: Duration, last: String },
    #[error("{0}")]
    Join(Box<crate::guest::agent_client::AgentError>),
    #[error("the agents of {} joined the API but their Nodes are not Ready in it after {waited:.0?}: {last}", nodes.join(", "))]
    NodesNotReady { nodes: Vec<String>, waited: Duration, last: String },
}

/// The files of the lab's credentials, in the lab directory and on the control-plane nodes alike.
const CREDENTIAL_FILES: [&str; 8] = [
    "ca.pem",
    "apiserver.pem",
    "apiserver-key.pem",
    "token",
    "etcd.pem",
    "etcd-key.pem",
    "etcd-client.pem",
    "etcd-client-key.pem",
];

/// The texts of [`CREDENTIAL_FILES`], in that order.
fn credential_texts(c: &Credentials) -> [&str; 8] {
    [
        &c.ca_pem,
        &c.cert_pem,
        &c.key_pem,
        &c.token,
        &c.etcd.cert_pem,
        &c.etcd.key_pem,
        &c.etcd_client.cert_pem,
        &c.etcd_client.key_pem,
    ]
}

/// The lab's control-plane credentials: made at the first `up`, kept in the lab directory (0600) so that a
/// later `up` of the same lab keeps the kubeconfig users already have. A lab directory from before etcd's
/// certificates gets new credentials altogether: the CA's key is not kept, so nothing can be added to them.
pub fn credentials(dir: &LabDir, plan: &Plan) -> Result<Credentials, ControlPlaneError> {
    let d = dir.root.join("control-plane");
    let files = CREDENTIAL_FILES.map(|f| d.join(f));
    if let [Ok(ca_pem), Ok(cert_pem), Ok(key_pem), Ok(token), Ok(etcd_cert), Ok(etcd_key), Ok(client_cert), Ok(client_key)] =
        files.clone().map(std::fs::read_to_string)
    {
        let etcd = CertKey { cert_pem: etcd_cert, key_pem: etcd_key };
        let etcd_client = CertKey { cert_pem: client_cert, key_pem: client_key };
        return Ok(Credentials { ca_pem, cert_pem, key_pem, token, etcd, etcd_client });
    }
    // SANs: every control-plane node's underlay address (agents and peers reach it there) and the host's
    // loopback, where the forwarder listens (`localhost` is added by `generate`).
    let mut ips: Vec<IpAddr> = plan.control_plane_members().iter().map(|(_, ip)| IpAddr::V4(*ip)).collect();
    ips.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let creds = Credentials::generate(&ips).map_err(ControlPlaneError::Credentials)?;
    std::fs::create_dir_all(&d).map_err(|error| ControlPlaneError::Io { action: "create", path: d.clone(), error })?;
    for (path, text) in files.iter().zip(credential_texts(&creds)) {
        write_private(path, text)?;
    }
    Ok(creds)
}

/// Writes `text` to `path`, readable by its owner only (keys, the token, the kubeconfig).
pub fn write_private(path: &std::path::Path, text: &str) -> Result<(), ControlPlaneError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |error| ControlPlaneError::Io { action: "write", path: path.to_path_buf(), error };
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// How a control-plane node's etcd member starts when its data directory is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtcdStart {
    /// With the other members, all new: the lab's first `up`, or every member's machine replaced.
    Bootstrap,
    /// Into the cluster the other, running members already form: its machine died and `up` boots it from a
    /// fresh disk. Bootstrapping again would fail ("member ... has already been bootstrapped"), so it asks
    /// the running members for the cluster and catches up from them (etcd's `--initial-cluster-state
    /// existing`). The member keeps its ID rather than being removed and added again: its lost raft vote can
    /// at worst let it vote twice in one term, which a lab accepts.
    Rejoin,
}

/// The shell script that installs the credentials and both services' commands on control-plane node `node`
/// and starts them. Only shell builtins write files (printf): every process start costs 0.1-0.5 s under TCG.
/// A member whose data directory exists ignores `start`: etcd reads the cluster from it.
fn launch_script(plan: &Plan, node: &NodePlan, creds: &Credentials, start: EtcdStart) -> String {
    let members = plan.control_plane_members();
    let ip = node.nics.first().map_or(Ipv4Addr::UNSPECIFIED, |n| n.ip);
    let initial: Vec<String> =
        members.iter().map(|(n, ip)| format!("{}=https://{ip}:{ETCD_PEER_PORT}", n.name)).collect();
    // Both ports take only clients with a certificate of the lab CA: pods share the underlay with them.
    let etcd = format!(
        "exec etcd --name {name} --data-dir {ETCD_DATA_DIR} \
         --listen-client-urls https://{ip}:{ETCD_CLIENT_PORT} --advertise-client-urls https://{ip}:{ETCD_CLIENT_PORT} \
         --listen-peer-urls https://{ip}:{ETCD_PEER_PORT} --initial-advertise-peer-urls https://{ip}:{ETCD_PEER_PORT} \
         --initial-cluster {initial} --initial-cluster-state {state} --initial-cluster-token tb-{lab} \
         --cert-file {GUEST_DIR}/etcd.pem --key-file {GUEST_DIR}/etcd-key.pem \
         --client-cert-auth --trusted-ca-file {GUEST_DIR}/ca.pem \
         --peer-cert-file {GUEST_DIR}/etcd.pem --peer-key-file {GUEST_DIR}/etcd-key.pem \
         --peer-client-cert-auth --peer-trusted-ca-file {GUEST_DIR}/ca.pem \
         --auto-compaction-mode periodic --auto-compaction-retention {ETCD_RETENTION} --logger zap",
        name = node.name,
        initial = initial.join(","),
        state = match start {
            EtcdStart::Bootstrap => "new",
            EtcdStart::Rejoin => "existing",
        },
        lab = plan.lab,
    );
    // Every member, its own first: the API server moves to the next when one refuses the connection.
    let endpoints: Vec<String> = std::iter::once(ip)
        .chain(members.iter().map(|(_, m)| *m).filter(|m| *m != ip))
        .map(|m| format!("https://{m}:{ETCD_CLIENT_PORT}"))
        .collect();
    let apiserver = format!(
        "exec /usr/local/bin/testbed-agent apiserver --listen {ip}:{API_PORT} --etcd {endpoints} \
         --etcd-cafile {GUEST_DIR}/ca.pem --etcd-certfile {GUEST_DIR}/etcd-client.pem \
         --etcd-keyfile {GUEST_DIR}/etcd-client-key.pem \
         --token-file {GUEST_DIR}/token --tls-cert-file {GUEST_DIR}/apiserver.pem \
         --tls-key-file {GUEST_DIR}/apiserver-key.pem --service-cluster-ip-range {service_cidr}",
        endpoints = endpoints.join(","),
        service_cidr = plan.cluster.service_cidr,
    );
    // Every member's API server, this node's first: the manager keeps working while one is down.
    let servers: Vec<String> = std::iter::once(ip)
        .chain(members.iter().map(|(_, ip)| *ip).filter(|m| *m != ip))
        .map(|ip| format!("--server https://{ip}:{API_PORT}"))
        .collect();
    let lifecycle = &plan.cluster.node_lifecycle;
    let manager = format!(
        "exec /usr/local/bin/testbed-agent controller-manager {} --ca-file {GUEST_DIR}/ca.pem \
         --token-file {GUEST_DIR}/token --identity {} --node-monitor-grace-period {} --pod-eviction-timeout {}",
        servers.join(" "),
        node.name,
        lifecycle.node_monitor_grace_period_seconds,
        lifecycle.pod_eviction_timeout_seconds
    );
    let file = |name: &str, text: &str| format!("printf '%s' {} >{GUEST_DIR}/{name}\n", shell_quote(text));
    let mut s = format!("set -e\numask 077\nmkdir -p {GUEST_DIR} {ETCD_DATA_DIR}\n");
    for (name, text) in CREDENTIAL_FILES.iter().zip(credential_texts(creds)) {
        s += &file(name, text);
    }
    s += &format!("printf '%s\\n' {} >/etc/testbed/etcd.cmd\n", shell_quote(&etcd));
    s += &format!("printf '%s\\n' {} >/etc/testbed/apiserver.cmd\n", shell_quote(&apiserver));
    // First time: supervise both (busybox init reads inittab again on SIGHUP). Again (a re-up of a reused
    // machine): restart the API server so that it serves with the credentials just written.
    s += "if grep -q testbed-service /etc/inittab; then\n\
          \x20 if [ -f /run/testbed-apiserver.pid ]; then kill \"$(cat /run/testbed-apiserver.pid)\" || true; fi\n\
          else\n\
          \x20 printf '%s\\n' '::respawn:/usr/local/sbin/testbed-service etcd' \
          '::respawn:/usr/local/sbin/testbed-service apiserver' >>/etc/inittab\n\
          \x20 kill -HUP 1\n\
          fi\n";
    // The controller manager, supervised the same way (its own check: it joined after the other two).
    s += &format!("printf '%s\\n' {} >/etc/testbed/controller-manager.cmd\n", shell_quote(&manager));
    s += "if grep -q 'testbed-service controller-manager' /etc/inittab; then\n\
          \x20 if [ -f /run/testbed-controller-manager.pid ]; then kill \"$(cat /run/testbed-controller-manager.pid)\" || true; fi\n\
          else\n\
          \x20 printf '%s\\n' '::respawn:/usr/local/sbin/testbed-service controller-manager' >>/etc/inittab\n\
          \x20 kill -HUP 1\n\
          fi\n";
    s
}

/// Installs and starts etcd and the API server on control-plane node `node` (returns once they are started,
/// not ready: etcd of three members waits for its peers, which other nodes' setups start meanwhile).
pub async fn launch(
    session: &Session,
    plan: &Plan,
    node: &NodePlan,
    creds: &Credentials,
    start: EtcdStart,
) -> Result<(), ControlPlaneError> {
    let script = launch_script(plan, node, creds, start);
    session
        .exec_checked("start etcd and the API server", "sh -s", Some(script.as_bytes()))
        .await
        .map(|_| ())
        .map_err(ControlPlaneError::Launch)
}

/// Waits until the API server answers a read of the `default` namespace (which goes to etcd) through the
/// forwarder on `127.0.0.1:port`, with the lab's CA and token: the same path kubectl takes.
pub async fn wait_ready(port: u16, creds: &Credentials, deadline: Instant) -> Result<(), ControlPlaneError> {
    let started = Instant::now();
    let not_ready = |last: String| ControlPlaneError::NotReady { port, waited: started.elapsed(), last };
    let http = api_http(creds).map_err(not_ready)?;
    let url = format!("https://127.0.0.1:{port}/api/v1/namespaces/default");
    loop {
        let last = match http.get(&url).bearer_auth(&creds.token).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => format!("answered {}", r.status()),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() + PROBE_PAUSE >= deadline {
            return Err(not_ready(last));
        }
        tokio::time::sleep(PROBE_PAUSE).await;
    }
}

/// An HTTP client of the API through the forwarder: trusting the lab CA only, each request bounded.
fn api_http(creds: &Credentials) -> Result<reqwest::Client, String> {
    let ca = reqwest::Certificate::from_pem(creds.ca_pem.as_bytes()).map_err(|e| e.to_string())?;
    reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([ca])
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())
}

/// Waits until every node of `nodes` has registered its Node and reports it Ready, as `kind` waits for its
/// nodes: once `up` returns, `testbed get nodes` and kubectl show the whole lab.
pub async fn wait_nodes_ready(
    port: u16,
    creds: &Credentials,
    nodes: &[String],
    deadline: Instant,
) -> Result<(), ControlPlaneError> {
    let started = Instant::now();
    let url = format!("https://127.0.0.1:{port}/api/v1/nodes");
    let mut missing = nodes.to_vec();
    let mut last = String::from("not asked yet");
    let http = api_http(creds);
    loop {
        if let Ok(http) = &http {
            match http.get(&url).bearer_auth(&creds.token).send().await {
                Ok(r) if r.status().is_success() => match r.json::<serde_json::Value>().await {
                    Ok(list) => {
                        missing.retain(|n| !is_ready(&list, n));
                        last = "not Ready yet".into();
                    }
                    Err(e) => last = e.to_string(),
                },
                Ok(r) => last = format!("answered {}", r.status()),
                Err(e) => last = format!("{e:#}"),
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() + PROBE_PAUSE >= deadline {
            let last = http.err().unwrap_or(last);
            return Err(ControlPlaneError::NodesNotReady { nodes: missing, waited: started.elapsed(), last });
        }
        tokio::time::sleep(PROBE_PAUSE).await;
    }
}

/// Whether the NodeList `list` holds node `name` with condition Ready True.
fn is_ready(list: &serde_json::Value, name: &str) -> bool {
    list["items"].as_array().into_iter().flatten().any(|n| {
        n["metadata"]["name"] == name
            && n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// The kubeconfig `up` writes to `<lab dir>/kubeconfig`: the forwarder's local address, the lab CA, the token.
pub fn write_kubeconfig(dir: &LabDir, port: u16, creds: &Credentials) -> Result<PathBuf, ControlPlaneError> {
    let path = kubeconfig_path(dir);
    let server = format!("https://127.0.0.1:{port}");
    let text =
        testbed_control_plane::kubeconfig(&format!("testbed-{}", dir.name), &server, &creds.ca_pem, &creds.token);
    write_private(&path, &text)?;
    Ok(path)
}

pub fn kubeconfig_path(dir: &LabDir) -> PathBuf {
    dir.root.join("kubeconfig")
}

/// Tells `node`'s agent to follow the API servers. It is told as soon as its own setup is done, before the
/// API answers: the agent retries until it does, so its Node registers as soon as the API is up rather than
/// after another round trip from here.
pub async fn join(
    plan: &Plan,
    creds: &Credentials,
    node: &str,
    agent: &AgentClient,
) -> Result<JoinOutcome, ControlPlaneError> {
    let join = ControlPlaneJoin {
        servers: plan.api_servers(),
        ca_pem: creds.ca_pem.clone(),
        token: creds.token.clone(),
        node_name: node.to_string(),
    };
    agent.join_control_plane(&join).await.map_err(|e| ControlPlaneError::Join(Box::new(e)))
}

/// Names the agents that could not join (404: a build from before agents followed the API), which are left as
/// they are: the lab still works, driven by the CLI.
pub fn warn_not_joined(ui: &Ui, old: &[&str]) {
    if !old.is_empty() {
        ui.info(format!(
            "warning: the agents of {} do not follow an API server yet (PUT /v1/control-plane answered 404); \
             the control plane runs, the nodes are driven by the CLI as before",
            old.join(", ")
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::fixtures;

    #[test]
    fn a_node_counts_as_ready_only_with_its_ready_condition_true() {
        let list = serde_json::json!({"items": [
            {"metadata": {"name": "node1"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}},
            {"metadata": {"name": "node2"}, "status": {"conditions": [{"type": "Ready", "status": "False"}]}},
        ]});
        assert!(is_ready(&list, "node1"));
        assert!(!is_ready(&list, "node2"));
        assert!(!is_ready(&list, "node3"));
    }

    #[test]
    fn launch_script_binds_the_underlay_only_and_names_every_member() {
        let mut plan = fixtures::test_plan();
        plan.cluster.control_plane = vec!["node1".into(), "node2".into()];
        let pair = |c: &str, k: &str| CertKey { cert_pem: c.into(), key_pem: k.into() };
        let creds = Credentials {
            ca_pem: "CA".into(),
            cert_pem: "CERT".into(),
            key_pem: "KEY".into(),
            token: "tok'en".into(),
            etcd: pair("ETCD", "ETCDKEY"),
            etcd_client: pair("CLIENT", "CLIENTKEY"),
        };
        let script = launch_script(&plan, &plan.nodes[1], &creds, EtcdStart::Bootstrap);
        let ip = plan.nodes[1].nics[0].ip;
        assert!(script.contains(&format!("--listen {ip}:6443")), "{script}");
        assert!(script.contains(&format!("--listen-client-urls https://{ip}:2379")), "{script}");
        assert!(script.contains(&format!("--listen-peer-urls https://{ip}:2380")), "{script}");
        assert!(!script.contains("0.0.0.0") && !script.contains("10.0.2."), "{script}");
        let first = plan.nodes[0].nics[0].ip;
        assert!(script.contains(&format!("--initial-cluster node1=https://{first}:2380,node2=https://{ip}:2380")));
        // Both of etcd's ports ask for a certificate of the lab CA; the API server presents its own.
        for flag in ["--client-cert-auth --trusted-ca-file", "--peer-client-cert-auth --peer-trusted-ca-file"] {
            assert!(script.contains(&format!("{flag} {GUEST_DIR}/ca.pem")), "{flag}: {script}");
        }
        assert!(script.contains(&format!("--etcd-certfile {GUEST_DIR}/etcd-client.pem")), "{script}");
        assert!(script.contains("'CLIENTKEY'") && script.contains("'ETCDKEY'"), "{script}");
        // Every member, its own first.
        assert!(script.contains(&format!("--etcd https://{ip}:2379,https://{first}:2379 ")), "{script}");
        assert!(script.contains("--auto-compaction-mode periodic --auto-compaction-retention 1h"));
        assert!(script.contains("--initial-cluster-state new "), "{script}");
        let rejoin = launch_script(&plan, &plan.nodes[1], &creds, EtcdStart::Rejoin);
        assert!(rejoin.contains("--initial-cluster-state existing "), "{rejoin}");
        // Quoted for the shell: a quote in a value cannot end the string early.
        assert!(script.contains(r"'tok'\''en'"), "{script}");
        // The controller manager reaches this node's API server first, then every other member's.
        let manager = format!("controller-manager --server https://{ip}:6443 --server https://{first}:6443 ");
        assert!(script.contains(&manager), "{script}");
        assert!(
            script.contains("--identity node2 --node-monitor-grace-period 40 --pod-eviction-timeout 300"),
            "{script}"
        );
        plan.cluster.node_lifecycle =
            crate::plan::NodeLifecycle { node_monitor_grace_period_seconds: 12, pod_eviction_timeout_seconds: 10 };
        let script = launch_script(&plan, &plan.nodes[1], &creds, EtcdStart::Bootstrap);
        assert!(script.contains("--node-monitor-grace-period 12 --pod-eviction-timeout 10"), "{script}");
        assert!(script.contains("'::respawn:/usr/local/sbin/testbed-service controller-manager'"), "{script}");
    }
}
