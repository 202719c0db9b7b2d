//! Volumes and securityContext of containers with an image, run by crun on this host's kernel: two
//! containers share an emptyDir (on disk and as a sized tmpfs) and nothing else of each other's root; a
//! read-only hostPath is read-only; readOnlyRootFilesystem refuses writes; runAsUser is the uid inside, the
//! pod's supplementalGroups and fsGroup are groups of the process (fsGroup owning the emptyDirs);
//! dropped capabilities are gone; allowPrivilegeEscalation: false sets no_new_privs. A missing hostPath fails
//! the pod naming pod, container and path and leaves no cgroup or directory; `hostPath.type` is checked as the
//! kubelet checks it (the `*OrCreate` types made). Root and crun are required
//! (tests/packages.txt), as for image_real.rs.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::MetadataExt;
use std::process::Command;

use serde_json::{json, Value};

mod busybox_layout;
mod test_agent;

use busybox_layout::busybox_layout;
use test_agent::TestAgent;
use testbed_test_support::agent_http::request as http;
use testbed_test_support::host::cgroup_roots;

/// Runs `script` in `container` of pod `v`; returns (exit code, stdout + stderr).
fn sh(container: &str, script: &str) -> (i64, String) {
    let req = json!({ "container": container, "command": ["/bin/sh", "-c", script] });
    let (code, body) = http("POST", "/v1/pods/v/exec", Some(req));
    assert_eq!(code, 200, "{body}");
    let text = format!("{}{}", body["stdout"].as_str().unwrap(), body["stderr"].as_str().unwrap());
    (body["exit_code"].as_i64().unwrap(), text)
}

/// A field of the container's own process (PID 1 of its PID namespace), e.g. `CapEff` or the real `Uid`, as
/// a number.
fn status_field(container: &str, field: &str) -> u64 {
    proc_status_field(container, "1", field)
}

/// A field of `/proc/<pid>/status` as a process in `container` reads it (`self`: the exec's own command).
fn proc_status_field(container: &str, pid: &str, field: &str) -> u64 {
    let (_, text) = sh(container, &format!("grep ^{field}: /proc/{pid}/status"));
    let value = text.split(':').nth(1).unwrap().split_whitespace().next().unwrap();
    u64::from_str_radix(value, if field.starts_with("Cap") { 16 } else { 10 }).unwrap()
}

/// `/proc/1/status`'s line `field` in `container`, after its colon.
fn status_line(container: &str, field: &str) -> String {
    let (_, text) = sh(container, &format!("grep ^{field}: /proc/1/status"));
    text.split_once(':').map(|(_, v)| v.trim().to_string()).unwrap_or_default()
}

const CAP_NET_RAW: u64 = 1 << 13;

#[test]
fn volumes_are_shared_and_security_contexts_confine_the_process() {
    testbed_test_support::require_root!();
    let crun = Command::new("crun").arg("--version").output();
    assert!(crun.is_ok_and(|o| o.status.success()), "crun is missing: apt-get install crun (tests/packages.txt)");
    let scratch = tempfile::tempdir().unwrap();
    let layout = scratch.path().join("busybox");
    busybox_layout(&layout);
    let host_dir = scratch.path().join("conf");
    std::fs::create_dir(&host_dir).unwrap();
    std::fs::write(host_dir.join("f"), "from the node\n").unwrap();

    let agent = TestAgent::start("volumes", &["--kill-grace-secs", "1"]);
    agent.apply_node();
    let image = layout.to_str().unwrap();
    let mounts = json!([
        {"name": "data", "mountPath": "/data"},
        {"name": "mem", "mountPath": "/mem"},
        {"name": "conf", "mountPath": "/conf", "readOnly": true},
    ]);
    let spec = json!({
        "name": "v",
        "volumes": [
            {"name": "data", "emptyDir": {}},
            {"name": "mem", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
            {"name": "conf", "hostPath": {"path": host_dir.to_str().unwrap()}},
        ],
        "securityContext": {"runAsGroup": 3000, "supplementalGroups": [4000], "fsGroup": 2000},
        "containers": [
            {"name": "a", "image": image, "volumeMounts": mounts,
             "command": ["sh", "-c", "echo a > /data/x && echo a > /mem/x && exec sleep 1000"],
             "securityContext": {"runAsUser": 1000, "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
                                 "capabilities": {"drop": ["NET_RAW"]}}},
            {"name": "b", "image": image, "command": ["sleep", "1000"], "volumeMounts": mounts},
        ],
    });
    let (code, pod) = http("POST", "/v1/pods", Some(spec));
    assert_eq!(code, 201, "{pod}");
    assert_eq!(pod["phase"], "Running", "{pod}");

    // The user: the container's runAsUser, the pod's runAsGroup; b has the image's user (root).
    assert_eq!((status_field("a", "Uid"), status_field("a", "Gid")), (1000, 3000));
    assert_eq!((status_field("b", "Uid"), status_field("b", "Gid")), (0, 3000));
    let groups = |c: &str| status_line(c, "Groups");
    // The image's memberships (a), the pod's supplementalGroups and fsGroup (both); the kernel sorts them.
    assert_eq!(
        (groups("a").as_str(), groups("b").as_str()),
        ("29 50 2000 3000 4000", "2000 3000 4000"),
        "the processes' own groups"
    );
    // The emptyDirs are shared, on disk and as a 1 MiB tmpfs (a wrote them as uid 1000); each container's
    // root is its own.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while sh("b", "cat /data/x /mem/x") != (0, "a\na\n".into()) {
        assert!(std::time::Instant::now() < deadline, "b does not see a's writes: {:?}", sh("b", "cat /data/x /mem/x"));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // fsGroup owns the emptyDirs, set-group-ID: what a wrote there (uid 1000, gid 3000) is the fsGroup's.
    let volume = agent.state_dir.path().join("pods/v/volumes");
    for name in ["data", "mem", "data/x", "mem/x"] {
        let meta = std::fs::metadata(volume.join(name)).unwrap();
        assert_eq!(meta.gid(), 2000, "{name}'s group");
        if meta.is_dir() {
            assert_eq!(meta.mode() & 0o7777, 0o2777, "{name}'s mode");
        }
    }
    let (_, mem) = sh("b", "grep ' /mem ' /proc/mounts");
    assert!(mem.starts_with("tmpfs /mem tmpfs") && mem.contains("size=1024k"), "{mem}");
    assert_eq!(sh("b", "echo b > /tmp/own").0, 0);
    assert_eq!(sh("a", "test -e /tmp/own || echo absent"), (0, "absent\n".into()));
    // readOnlyRootFilesystem in a, not in b; the read-only hostPath in both.
    let (code, out) = sh("a", "touch /tmp/x");
    assert_ne!(code, 0, "a wrote into its read-only root: {out}");
    assert!(out.contains("Read-only file system"), "{out}");
    assert_eq!(sh("b", "cat /conf/f"), (0, "from the node\n".into()));
    assert_ne!(sh("b", "touch /conf/y").0, 0, "b wrote into a read-only hostPath");
    assert!(!host_dir.join("y").exists());
    // Dropped NET_RAW is in no set of a's; b keeps containerd's default set, NET_RAW with it.
    for set in ["CapBnd", "CapEff", "CapPrm"] {
        assert_eq!(status_field("a", set) & CAP_NET_RAW, 0, "a's {set} has NET_RAW");
    }
    assert_ne!(status_field("b", "CapEff") & CAP_NET_RAW, 0, "b's CapEff lacks NET_RAW");
    assert_eq!((status_field("a", "NoNewPrivs"), status_field("b", "NoNewPrivs")), (1, 0));
    // An exec runs as the container's process does, as kubectl exec does: a's user and group, no capability
    // and no_new_privs; b's root with b's sets (containerd's default), not the agent's every capability.
    for c in ["a", "b"] {
        for field in ["Uid", "Gid", "CapEff", "CapPrm", "CapBnd", "CapAmb", "NoNewPrivs"] {
            assert_eq!(proc_status_field(c, "self", field), status_field(c, field), "{c}'s exec: {field}");
        }
    }
    assert_eq!(proc_status_field("a", "self", "CapEff"), 0, "a's exec has capabilities");
    // a's uid 1000 is `web` in the image's /etc/passwd, whose /etc/group lists it in audio (29) and staff (50):
    // supplementary groups as containerd gives them; b's root is in none.
    assert_eq!(
        sh("a", "id -G; pwd; echo $PATH"),
        (0, "3000 29 50 2000 4000\n/tmp\n/bin\n".into()),
        "a's exec: groups, cwd, env"
    );
    assert_eq!(sh("b", "id -G"), (0, "3000 2000 4000\n".into()), "b's exec: groups");

    let pod_dir = agent.state_dir.path().join("pods/v");
    let (code, body) = http("DELETE", "/v1/pods/v?grace_period_secs=0", None);
    assert_eq!(code, 204, "{body}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(pod_dir.to_str().unwrap()), "the memory emptyDir outlived its pod");
    assert!(!pod_dir.exists(), "the emptyDir outlived its pod");
    assert_eq!(std::fs::read_to_string(host_dir.join("f")).unwrap(), "from the node\n", "the hostPath is kept");
    drop(agent);
}

#[test]
fn a_missing_host_path_fails_the_pod_naming_it_and_leaves_nothing() {
    testbed_test_support::require_root!();
    let scratch = tempfile::tempdir().unwrap();
    let layout = scratch.path().join("busybox");
    busybox_layout(&layout);
    let missing = scratch.path().join("not-there");
    let agent = TestAgent::start("hostpath", &["--kill-grace-secs", "1"]);
    agent.apply_node();
    let spec = json!({
        "name": "h",
        "volumes": [{"name": "gone", "hostPath": {"path": missing.to_str().unwrap()}}],
        "containers": [{"name": "c", "image": layout.to_str().unwrap(), "command": ["sleep", "1000"],
                        "volumeMounts": [{"name": "gone", "mountPath": "/gone"}]}],
    });
    let (code, body): (u16, Value) = http("POST", "/v1/pods", Some(spec));
    assert_eq!(code, 500, "{body}");
    let message = body["message"].as_str().unwrap();
    for part in ["pod h", "container c", missing.to_str().unwrap()] {
        assert!(message.contains(part), "{message:?} does not name {part}");
    }
    assert_eq!(http("GET", "/v1/pods/h", None).0, 404);
    assert!(!agent.state_dir.path().join("pods/h").exists(), "a directory of the failed pod");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(agent.state_dir.path().to_str().unwrap()), "a mount of the failed pod");
    // TestAgent's cgroup subtree (`tbtest-<pid>-<test>`) holds no cgroup of the pod.
    for root in cgroup_roots(&format!("tbtest-{}-hostpath", std::process::id())) {
        assert!(!root.join("pod-h").exists(), "a cgroup of the failed pod: {}", root.display());
    }
    drop(agent);
}

#[test]
fn host_path_types_are_checked_and_the_or_create_ones_made() {
    use std::os::unix::fs::PermissionsExt;
    testbed_test_support::require_root!();
    let scratch = tempfile::tempdir().unwrap();
    let layout = scratch.path().join("busybox");
    busybox_layout(&layout);
    let image = layout.to_str().unwrap();
    let (dir, file) = (scratch.path().join("made-dir"), scratch.path().join("made-file"));
    let agent = TestAgent::start("hostpathtype", &["--kill-grace-secs", "1"]);
    agent.apply_node();
    let pod = |name: &str, volumes: Value| {
        let mounts: Vec<Value> = volumes
            .as_array()
            .unwrap()
            .iter()
            .map(|v| json!({"name": v["name"], "mountPath": format!("/{}", v["name"].as_str().unwrap())}))
            .collect();
        json!({"name": name, "volumes": volumes,
               "containers": [{"name": "c", "image": image, "command": ["sleep", "1000"], "volumeMounts": mounts}]})
    };

    // The *OrCreate types make what is missing, as the kubelet does (0755 / 0644), and the container mounts it.
    let made = json!([{"name": "d", "hostPath": {"path": dir, "type": "DirectoryOrCreate"}},
                      {"name": "f", "hostPath": {"path": file, "type": "FileOrCreate"}},
                      {"name": "null", "hostPath": {"path": "/dev/null", "type": "CharDevice"}}]);
    let (code, body): (u16, Value) = http("POST", "/v1/pods", Some(pod("v", made)));
    assert_eq!(code, 201, "{body}");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert!(dir.is_dir() && file.is_file(), "made: {} {}", dir.is_dir(), file.is_file());
    assert_eq!((mode(&dir), mode(&file), std::fs::metadata(&file).unwrap().len()), (0o755, 0o644, 0));
    assert_eq!(sh("c", "test -d /d && test -f /f && test -c /null && echo ok"), (0, "ok\n".into()));
    assert_eq!(http("DELETE", "/v1/pods/v?grace_period_secs=0", None).0, 204);
    assert!(dir.is_dir() && file.is_file(), "a hostPath outlives its pod");

    // A path of another kind (or none, for a type without OrCreate) fails the pod in the kubelet's words,
    // naming pod and volume, and leaves nothing of it.
    let missing = scratch.path().join("not-there");
    let cases = [
        ("Directory", file.clone(), "directory"),
        ("DirectoryOrCreate", file.clone(), "directory"),
        ("File", dir.clone(), "file"),
        ("FileOrCreate", dir.clone(), "file"),
        ("Socket", dir.clone(), "socket file"),
        ("BlockDevice", "/dev/null".into(), "block device"),
        ("CharDevice", dir.clone(), "character device"),
        ("Directory", missing.clone(), "directory"),
    ];
    for (type_, path, kind) in cases {
        let volumes = json!([{"name": "x", "hostPath": {"path": path, "type": type_}}]);
        let (code, body): (u16, Value) = http("POST", "/v1/pods", Some(pod("w", volumes)));
        assert_eq!(code, 500, "{type_} on {}: {body}", path.display());
        let message = body["message"].as_str().unwrap();
        let words = format!("hostPath type check failed: {} is not a {kind}", path.display());
        for part in ["pod w", "volume `x`", words.as_str()] {
            assert!(message.contains(part), "{type_}: {message:?} does not say {part:?}");
        }
        assert_eq!(http("GET", "/v1/pods/w", None).0, 404);
        assert!(!agent.state_dir.path().join("pods/w").exists(), "a directory of the failed pod");
    }
    assert!(!missing.exists(), "a type without OrCreate made its path");
    for root in cgroup_roots(&format!("tbtest-{}-hostpathtype", std::process::id())) {
        assert!(!root.join("pod-w").exists(), "a cgroup of a failed pod: {}", root.display());
    }
    drop(agent);
}
