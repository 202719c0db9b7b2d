//! The debug bundle written beside the results when a run did not pass: per node, what the agent reports and
//! what the kernel holds, the agent's log and the serial console, so a failure can be read without the lab.

use std::path::Path;

use super::cluster::Cluster;

/// Commands run on every node; each output goes to `debug/<node>/<file>`.
const NODE_COMMANDS: [(&str, &str); 6] = [
    ("ip-link.txt", "ip -d link"),
    ("ip-addr.txt", "ip addr"),
    ("ip-route.txt", "ip route"),
    ("ip-neigh.txt", "ip neigh"),
    ("bridge-fdb.txt", "bridge fdb show"),
    ("agent-log.txt", "tail -n 200 /var/log/testbed-agent.log"),
];

/// Collects what it can; a node that does not answer gets an `errors.txt` instead of aborting the bundle.
/// Returns one line per problem met while collecting.
pub async fn collect<C: Cluster>(c: &C, out: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for n in &c.plan().nodes {
        let dir = out.join(&n.name);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            problems.push(format!("{}: {e}", dir.display()));
            continue;
        }
        let mut errors = Vec::new();
        match c.node_status(&n.name).await {
            Ok(st) => match serde_json::to_string_pretty(&st) {
                Ok(j) => write(&dir.join("node-status.json"), &j, &mut errors),
                Err(e) => errors.push(format!("node-status.json: {e}")),
            },
            Err(e) => errors.push(format!("GET /v1/node: {e}")),
        }
        for (file, cmd) in NODE_COMMANDS {
            match c.node_exec(&n.name, cmd).await {
                Ok(o) => write(&dir.join(file), &format!("$ {cmd}\n{}{}", o.stdout, o.stderr), &mut errors),
                Err(e) => errors.push(format!("{cmd}: {e}")),
            }
        }
        if let Some(serial) = c.serial_log(&n.name) {
            if let Err(e) = std::fs::copy(&serial, dir.join("serial.log")) {
                errors.push(format!("copy {}: {e}", serial.display()));
            }
        }
        if !errors.is_empty() {
            write(&dir.join("errors.txt"), &(errors.join("\n") + "\n"), &mut problems);
            problems.extend(errors.into_iter().map(|e| format!("{}: {e}", n.name)));
        }
    }
    problems
}

fn write(path: &Path, text: &str, errors: &mut Vec<String>) {
    if let Err(e) = std::fs::write(path, text) {
        errors.push(format!("{}: {e}", path.display()));
    }
}
