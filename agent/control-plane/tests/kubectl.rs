//! The real thing: a real etcd (Debian's `etcd-server`) on loopback, the API server over it, and the real
//! kubectl driving it with a generated kubeconfig. Every step checks what kubectl printed or what the
//! server then holds. `cargo test --features fault-ignore-resource-version` shows the stale-replace check
//! failing against a server that ignores resourceVersion.

use serde_json::Value;
use testbed_control_plane::store::Store;

mod common;
mod kubectl_lab;

use kubectl_lab::{events, json, pair, pod, wait_for, watch_in_background, Lab};

#[test]
fn kubectl_against_real_etcd() {
    let lab = Lab::start();

    // Credentials are checked: a wrong token gets nothing.
    let denied = lab
        .command(&["get", "pods", "--kubeconfig", &lab.root.join("wrong-kubeconfig").to_string_lossy()])
        .output()
        .expect("kubectl");
    assert!(!denied.status.success(), "a wrong token was accepted");

    // Discovery and an empty list, then a node registered through the API.
    let nodes = lab.kubectl(&["get", "nodes"]);
    assert!(nodes.status.success() && String::from_utf8_lossy(&nodes.stderr).contains("No resources found"));
    let node =
        lab.write("node.yaml", "apiVersion: v1\nkind: Node\nmetadata: {name: node1}\nspec: {podCIDR: 10.244.1.0/24}\n");
    lab.ok(&["create", "-f", &node]);
    assert!(lab.ok(&["get", "nodes"]).contains("node1"));

    let start = json(&lab.ok(&["get", "--raw", "/api/v1/namespaces/default/pods"]));
    let start_rv = start["metadata"]["resourceVersion"].as_str().expect("list resourceVersion").to_string();

    // create -f, and the server-set metadata as kubectl reads it back.
    let web = lab.write("web.yaml", &pod("web", "{name: srv, image: busybox, command: [sleep, \"3600\"]}"));
    assert!(lab.ok(&["create", "-f", &web]).contains("pod/web created"));
    let list = json(&lab.ok(&["get", "pods", "-o", "json"]));
    let item = &list["items"][0];
    assert_eq!(item["metadata"]["name"], "web");
    assert_eq!(item["metadata"]["generation"], 1);
    assert_eq!(item["status"]["phase"], "Pending");
    assert!(item["metadata"]["uid"].as_str().is_some_and(|u| u.len() == 36));
    assert!(item["metadata"]["creationTimestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert!(item["metadata"]["resourceVersion"].as_str().is_some_and(|rv| rv.parse::<i64>().is_ok()));

    // Validation names the field, and nothing is stored.
    let bad = lab.write("bad.yaml", &pod("bad", "{name: srv, image: busybox}"));
    let err = lab.fails(&["create", "-f", &bad]);
    assert!(err.contains("spec.containers[0].command"), "{err}");
    assert!(lab.fails(&["get", "pod", "bad"]).contains("NotFound"));
    let unknown = lab.write("unknown.yaml", &pod("unk", "{name: srv, command: [sleep], tty: true}"));
    let err = lab.fails(&["create", "-f", &unknown]);
    assert!(err.contains("unknown field \"spec.containers[0].tty\""), "{err}");

    // kubectl get -w sees every change from here on.
    let (_watcher, seen) = watch_in_background(&lab, &["get", "pods", "-w", "--output-watch-events", "-o", "json"]);
    wait_for(&seen, |ev| ev.contains(&pair("ADDED", "web")));

    // replace -f with the current resourceVersion, then the same (now stale) file again: 409.
    let current = lab.ok(&["get", "pod", "web", "-o", "json"]);
    let edited = lab.write("web-edited.json", &current.replace("\"app\": \"web\"", "\"app\": \"web2\""));
    assert!(lab.ok(&["replace", "-f", &edited]).contains("pod/web replaced"));
    assert_eq!(json(&lab.ok(&["get", "pod", "web", "-o", "json"]))["metadata"]["labels"]["app"], "web2");
    let stale = lab.fails(&["replace", "-f", &edited]);
    assert!(stale.contains("Conflict") && stale.contains("the object has been modified"), "{stale}");

    // A second pod: created, merge-patched, deleted.
    let w2 = lab.write("w2.yaml", &pod("w2", "{name: srv, command: [sleep, \"1\"]}"));
    lab.ok(&["create", "-f", &w2]);
    lab.ok(&["patch", "pod", "w2", "--type=merge", "-p", "{\"metadata\":{\"labels\":{\"tier\":\"x\"}}}"]);
    assert!(lab.ok(&["delete", "pod", "w2"]).contains("pod \"w2\" deleted"));
    let watched = wait_for(&seen, |ev| ev.contains(&pair("DELETED", "w2")));
    for want in [pair("MODIFIED", "web"), pair("ADDED", "w2"), pair("MODIFIED", "w2"), pair("DELETED", "w2")] {
        assert!(watched.contains(&want), "get -w missed {want:?}: {watched:?}");
    }
    lab.ok(&["delete", "pod", "web"]);
    assert!(lab.fails(&["get", "pod", "web"]).contains("NotFound"));

    // A watch resumed from the revision of the first list sees every change after it, in order.
    let path = format!("/api/v1/namespaces/default/pods?watch=true&resourceVersion={start_rv}&timeoutSeconds=2");
    let resumed = events(&lab.ok(&["get", "--raw", &path]));
    let expected = [
        ("ADDED", "web"),
        ("MODIFIED", "web"),
        ("ADDED", "w2"),
        ("MODIFIED", "w2"),
        ("DELETED", "w2"),
        ("DELETED", "web"),
    ];
    assert_eq!(resumed, expected.map(|(k, n)| pair(k, n)), "resumed watch");

    // After a compaction, resuming from the old revision is 410 Gone ("too old resource version").
    let (_, now) = lab.rt.block_on(lab.etcd.list("/registry/")).expect("list");
    lab.rt.block_on(lab.etcd.compact(now)).expect("compact");
    let gone = lab.fails(&["get", "--raw", &path]);
    assert!(gone.contains("Expired") && gone.contains("too old resource version"), "{gone}");
}

/// The lines of kubectl's table output, each split into its cells (columns are 3+ spaces apart).
fn table(text: &str) -> Vec<Vec<String>> {
    let split = |line: &str| line.split("   ").map(str::trim).filter(|c| !c.is_empty()).map(str::to_string).collect();
    text.lines().map(split).collect()
}

#[test]
fn kubectl_prints_the_servers_tables() {
    let lab = Lab::start();
    let node = lab.write(
        "node.yaml",
        "apiVersion: v1\nkind: Node\nmetadata: {name: node1, labels: {node-role.kubernetes.io/control-plane: \"\"}}\nspec: {podCIDR: 10.244.1.0/24}\n",
    );
    lab.ok(&["create", "-f", &node]);
    let web = lab.write("web.yaml", &pod("web", "{name: srv, command: [sleep, \"3600\"]}"));
    lab.ok(&["create", "-f", &web]);

    let pods = table(&lab.ok(&["get", "pods"]));
    assert_eq!(pods[0], ["NAME", "READY", "STATUS", "RESTARTS", "AGE"], "{pods:?}");
    assert_eq!(pods[1][..4], ["web", "0/1", "Pending", "0"], "{pods:?}");
    let wide = table(&lab.ok(&["get", "pods", "-o", "wide"]));
    assert_eq!(wide[0][5..], ["IP", "NODE"], "{wide:?}");
    assert_eq!(wide[1][5..], ["<none>", "<none>"], "{wide:?}");
    let all = table(&lab.ok(&["get", "pods", "-A"]));
    assert_eq!((all[0][0].as_str(), all[1][0].as_str(), all[1][1].as_str()), ("NAMESPACE", "default", "web"));
    let one = table(&lab.ok(&["get", "pod", "web"]));
    assert_eq!(one[1][..2], ["web", "0/1"], "{one:?}");
    let nodes = table(&lab.ok(&["get", "nodes"]));
    assert_eq!(nodes[0], ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]);
    assert_eq!(nodes[1][..3], ["node1", "Unknown", "control-plane"], "{nodes:?}");

    // get -w: the header once, then a row per change.
    let (_watcher, seen) = watch_in_background(&lab, &["get", "pods", "-w"]);
    let rows_within_20s = |n: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let rows = table(&seen.lock().expect("lock"));
            if rows.len() >= n || std::time::Instant::now() > deadline {
                break rows;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    // The change comes once the watch has listed: a label written before its list is in the listed row.
    assert_eq!(rows_within_20s(2).len(), 2, "header and the pod, listed");
    lab.ok(&["label", "pod", "web", "tier=front"]);
    let rows = rows_within_20s(3);
    assert_eq!(rows.len(), 3, "header, the pod, its change: {rows:?}");
    assert_eq!(rows[0], ["NAME", "READY", "STATUS", "RESTARTS", "AGE"], "{rows:?}");
    assert!(rows[1..].iter().all(|r| r[..3] == ["web", "0/1", "Pending"]), "{rows:?}");
}

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: srv, command: [sleep, 1d]}
";

const EVENTS: &str = "apiVersion: v1
kind: Event
metadata: {name: web.1}
involvedObject: {apiVersion: apps/v1, kind: Deployment, name: web, namespace: default}
reason: ScalingReplicaSet
message: Scaled up replica set web-rs to 1
type: Normal
---
apiVersion: v1
kind: Event
metadata: {name: db.1}
involvedObject: {kind: Pod, name: db, namespace: default}
reason: FailedScheduling
message: no node fits
type: Warning
";

/// A ReplicaSet `web-rs` owned by the Deployment of uid `owner`.
fn replica_set(owner: &str) -> String {
    let rs = DEPLOYMENT.replace("kind: Deployment", "kind: ReplicaSet").replace("name: web}", "name: web-rs");
    rs.replacen(
        "name: web-rs",
        &format!(
            "name: web-rs, ownerReferences: [{{apiVersion: apps/v1, kind: Deployment, name: web, uid: {owner}, controller: true}}]}}"
        ),
        1,
    )
}

fn deployment(lab: &Lab) -> Value {
    json(&lab.ok(&["get", "deployment", "web", "-o", "json"]))
}

#[test]
fn kubectl_drives_workloads() {
    let lab = Lab::start();

    // create -f of a Deployment and a ReplicaSet it owns; get of both kinds at once.
    assert!(lab.ok(&["create", "-f", &lab.write("deploy.yaml", DEPLOYMENT)]).contains("deployment.apps/web created"));
    let uid = deployment(&lab)["metadata"]["uid"].as_str().expect("uid").to_string();
    let rs = lab.write("rs.yaml", &replica_set(&uid));
    assert!(lab.ok(&["create", "-f", &rs]).contains("replicaset.apps/web-rs created"));
    let table = lab.ok(&["get", "deploy,rs"]);
    assert!(table.contains("deployment.apps/web") && table.contains("replicaset.apps/web-rs"), "{table}");

    // scale (the scale subresource), strategic merge patch (kubectl's default), JSON patch, rollout.
    assert!(lab.ok(&["scale", "deployment/web", "--replicas=3"]).contains("deployment.apps/web scaled"));
    assert_eq!(deployment(&lab)["spec"]["replicas"], 3);
    lab.ok(&["patch", "deployment", "web", "-p", r#"{"spec":{"paused":true}}"#]);
    assert_eq!(deployment(&lab)["spec"]["paused"], true);
    lab.ok(&[
        "patch",
        "deployment",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/replicas","value":2}]"#,
    ]);
    assert_eq!(deployment(&lab)["spec"]["replicas"], 2);
    assert!(lab.ok(&["rollout", "resume", "deployment/web"]).contains("resumed"));
    assert_eq!(deployment(&lab)["spec"].get("paused"), None);
    assert!(lab.ok(&["rollout", "pause", "deployment/web"]).contains("paused"));
    assert_eq!(deployment(&lab)["spec"]["paused"], true);
    assert_eq!(deployment(&lab)["metadata"]["generation"], 6, "every spec change bumps the generation");

    // apply of a changed file, rollout restart and edit: strategic merge patches computed by kubectl
    // (apply's with `$setElementOrder/containers`), the container merged by its name.
    let changed = DEPLOYMENT.replace("replicas: 1", "replicas: 4").replace("1d]}", "2d], env: [{name: A, value: x}]}");
    lab.ok(&["apply", "-f", &lab.write("deploy.yaml", DEPLOYMENT)]);
    assert!(lab.ok(&["apply", "-f", &lab.write("deploy2.yaml", &changed)]).contains("deployment.apps/web configured"));
    // kubectl refuses to restart a paused deployment.
    lab.ok(&["rollout", "resume", "deployment/web"]);
    assert!(lab.ok(&["rollout", "restart", "deployment/web"]).contains("restarted"));
    let editor = lab.write("editor.sh", "#!/bin/sh\nsed -i 's/replicas: 4/replicas: 6/' \"$1\"\n");
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let edited = lab.command(&["edit", "deployment/web"]).env("KUBE_EDITOR", &editor).output().expect("kubectl");
    assert!(edited.status.success(), "{}", String::from_utf8_lossy(&edited.stderr));
    let d = deployment(&lab);
    assert_eq!(d["spec"]["replicas"], 6);
    let template = &d["spec"]["template"];
    assert_eq!(template["spec"]["containers"][0]["env"][0]["name"], "A");
    assert_eq!(template["spec"]["containers"][0]["command"][1], "2d");
    assert!(template["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"].is_string(), "{template}");

    // Events selected by the object they are about.
    lab.ok(&["create", "-f", &lab.write("events.yaml", EVENTS)]);
    let about_web = lab.ok(&["get", "events", "--field-selector", "involvedObject.name=web", "-o", "name"]);
    assert_eq!(about_web.trim(), "event/web.1");

    // Set-based label selectors, and a pod named by generateName.
    for app in ["a", "b", "c"] {
        lab.ok(&[
            "create",
            "-f",
            &lab.write(&format!("{app}.yaml"), &pod(app, "{name: srv, command: [sleep, \"1\"]}")),
        ]);
    }
    let selected = lab.ok(&["get", "pods", "-l", "app in (a,b)", "-o", "name"]);
    assert_eq!(selected.lines().collect::<Vec<_>>(), ["pod/a", "pod/b"]);
    let generated = pod("x", "{name: srv, command: [sleep, \"1\"]}").replace("name: x", "generateName: gen-");
    let created = lab.ok(&["create", "-f", &lab.write("gen.yaml", &generated)]);
    assert!(created.starts_with("pod/gen-") && created.trim().ends_with(" created"), "{created}");

    // --cascade=orphan: the ReplicaSet outlives its Deployment, without the owner reference.
    assert!(lab.ok(&["delete", "deployment", "web", "--cascade=orphan"]).contains("deployment.apps \"web\" deleted"));
    let rs = json(&lab.ok(&["get", "rs", "web-rs", "-o", "json"]));
    assert_eq!(rs["metadata"].get("ownerReferences"), None, "{rs}");
}

#[test]
fn kubectl_delete_pod_shows_terminating_until_it_is_finished() {
    let lab = Lab::start();
    let node = lab.write("node.yaml", "apiVersion: v1\nkind: Node\nmetadata: {name: node1}\n");
    lab.ok(&["create", "-f", &node]);
    let bound = "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  nodeName: node1\n  \
                 terminationGracePeriodSeconds: 20\n  containers:\n  - {name: srv, command: [sleep, \"3600\"]}\n";
    let web = lab.write("bound.yaml", bound);
    lab.ok(&["create", "-f", &web]);

    // No kubelet runs here to stop the pod, so this kubectl does not wait for it to go.
    assert!(lab.ok(&["delete", "pod", "web", "--wait=false"]).contains("pod \"web\" deleted"));
    let pods = table(&lab.ok(&["get", "pods"]));
    assert_eq!(pods.get(1).map(|r| &r[..3]), Some(&["web", "0/1", "Terminating"].map(String::from)[..]), "{pods:?}");
    let terminating = json(&lab.ok(&["get", "pod", "web", "-o", "json"]));
    assert_eq!(terminating["metadata"]["deletionGracePeriodSeconds"], 20, "{terminating}");

    // A waiting `kubectl delete` returns once the pod is gone: here when it is force-deleted (grace 0, what
    // the kubelet sends once the pod has stopped).
    let child = lab.command(&["delete", "pod", "web"]).stdout(std::process::Stdio::null()).spawn().expect("kubectl");
    let mut waiting = common::Killed(child);
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(waiting.0.try_wait().expect("kubectl").is_none(), "kubectl delete returned while the pod was terminating");
    let forced = lab.kubectl(&["delete", "pod", "web", "--grace-period=0", "--force"]);
    assert!(forced.status.success(), "{}", String::from_utf8_lossy(&forced.stderr));
    assert!(String::from_utf8_lossy(&forced.stdout).contains("pod \"web\" force deleted"), "{forced:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = waiting.0.try_wait().expect("kubectl") {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "kubectl delete still waiting after the pod went");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(status.success(), "the waiting kubectl delete failed: {status}");
    let gone = lab.kubectl(&["get", "pods"]);
    assert!(String::from_utf8_lossy(&gone.stderr).contains("No resources found"), "{gone:?}");
}
