//! A container with an OCI image on this host's kernel, run by crun: it sees the image's files and not the
//! node's, writes only into its own upper directory, keeps the pod's network namespace and IP, and leaves
//! nothing behind when the pod is deleted. The image (a busybox-static layout) is built in the test. Root
//! (namespaces, overlayfs, cgroups) and crun (tests/packages.txt) are required; see `TestAgent` for the
//! private network namespace and cgroup subtree.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
mod busybox_layout;
mod test_agent;

use busybox_layout::{busybox_layout, BUSYBOX_APPLETS};

use test_agent::TestAgent;
use testbed_test_support::agent_http::request as http;

fn exec_sh(pod: &str, container: &str, script: &str) -> Value {
    let req = json!({ "container": container, "command": ["/bin/sh", "-c", script] });
    let (code, body) = http("POST", &format!("/v1/pods/{pod}/exec"), Some(req));
    assert_eq!(code, 200, "{body}");
    body
}

/// Exists and is not a zombie.
fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !matches!(s.rsplit_once(')').and_then(|(_, r)| r.trim_start().chars().next()), Some('Z') | None))
        .unwrap_or(false)
}

fn ns(pid: u64, kind: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap()
}

#[test]
fn a_container_from_an_image_sees_its_own_files_and_the_pods_network() {
    testbed_test_support::require_root!();
    let crun = Command::new("crun").arg("--version").output();
    assert!(crun.is_ok_and(|o| o.status.success()), "crun is missing: apt-get install crun (tests/packages.txt)");
    let scratch = tempfile::tempdir().unwrap();
    let layout = scratch.path().join("busybox");
    busybox_layout(&layout);
    // A file of the node's that the container must not see.
    let marker = std::env::temp_dir().join(format!("tb-image-marker-{}", std::process::id()));
    std::fs::write(&marker, "the node's\n").unwrap();

    let agent = TestAgent::start("image", &["--kill-grace-secs", "1"]);
    agent.apply_node();
    let spec = json!({"name": "img", "containers": [{
        "name": "c", "image": layout.to_str().unwrap(), "env": {"EXTRA": "from-the-spec"},
    }]});
    let started = std::time::Instant::now();
    let (code, pod) = http("POST", "/v1/pods", Some(spec));
    eprintln!(
        "pod create through the API, image by path (cold: import and unpack): {:.1} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    assert_eq!(code, 201, "{pod}");
    assert_eq!(pod["phase"], "Running", "{pod}");
    assert_eq!(pod["containers"][0]["state"]["state"], "running", "{pod}");
    let pid = pod["containers"][0]["state"]["pid"].as_u64().unwrap();
    let infra = pod["infra_pid"].as_u64().unwrap();
    let ip = pod["ip"].as_str().unwrap().to_string();

    // Its root is the image: busybox's files, not the node's /tmp marker, nor the node's /usr. The command
    // runs in the image's WorkingDir with the spec's env over the image's.
    let seen = exec_sh(
        "img",
        "c",
        &format!(
            "test -e {} && echo marker; test -e /usr && echo usr; ls /bin | wc -l; readlink /proc/1/cwd; echo $EXTRA",
            marker.display()
        ),
    );
    assert_eq!(seen["stdout"], format!("{}\n/tmp\nfrom-the-spec\n", BUSYBOX_APPLETS.len() + 1), "{seen}");
    // Entrypoint + Cmd and Env from the image config; it wrote into its upper directory only.
    let upper = agent.state_dir.path().join("pods/img/c.oci/upper");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !upper.join("written").exists() {
        assert!(std::time::Instant::now() < deadline, "the container's write is not in {}", upper.display());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(std::fs::read_to_string(upper.join("written")).unwrap(), "from-the-image\n");
    assert!(!Path::new("/written").exists(), "the container wrote into the node's root");
    let lower_busybox = std::fs::read_dir(agent.state_dir.path().join("images/layers")).unwrap().count();
    assert_eq!(lower_busybox, 2, "two layers unpacked in the node's store");
    // The top layer's whiteout and opaque directory, as overlayfs reads them from the store.
    let merged = exec_sh("img", "c", "test -e /etc/gone || echo gone; ls /d");
    assert_eq!(merged["stdout"], "gone\nnew\n", "{merged}");

    // Its own PID namespace (the command is PID 1), /proc, read-only /sys, the pod's /etc files.
    let inside = exec_sh(
        "img",
        "c",
        "cat /proc/1/cmdline | tr '\\0' ' '; echo; cat /etc/hostname; \
        grep -c img /etc/hosts; touch /sys/x 2>/dev/null || echo sys-ro; hostname",
    );
    let expected = "sleep 1000 \nimg\n1\nsys-ro\nimg\n";
    assert_eq!(inside["stdout"], expected, "{inside}");
    let hosts = exec_sh("img", "c", "cat /etc/hosts");
    assert!(hosts["stdout"].as_str().unwrap().contains(&format!("{ip}\timg\n")), "{hosts}");
    // Adopted by its launcher (now its reaper), with no zombie of crun's beside it.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let reaper = status.lines().find_map(|l| l.strip_prefix("PPid:")).unwrap().trim().to_string();
    let cmdline = std::fs::read_to_string(format!("/proc/{reaper}/cmdline")).unwrap();
    assert!(cmdline.contains("run-container"), "the container's parent is {cmdline:?}");
    let children = std::fs::read_to_string(format!("/proc/{reaper}/task/{reaper}/children")).unwrap();
    assert_eq!(children.trim(), pid.to_string(), "the reaper's children");
    // The pod's network, IPC and UTS namespaces, as for any container; its own mount and PID namespaces.
    for kind in ["net", "ipc", "uts"] {
        assert_eq!(ns(pid, kind), ns(infra, kind), "{kind}");
    }
    for kind in ["mnt", "pid"] {
        assert_ne!(ns(pid, kind), ns(infra, kind), "{kind}");
    }
    // The overlay is in the container's mount namespace only.
    let bundle = agent.state_dir.path().join("pods/img/c.oci");
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!host_mounts.contains(bundle.to_str().unwrap()), "the overlay shows in the node's mounts");

    // By digest, from the node's store (warm: the layer is unpacked already), next to a pod without image.
    // Printed, not asserted (figures in docs/benchmarks.md; `-- --nocapture` shows them).
    let digest = std::fs::read_dir(agent.state_dir.path().join("images/images")).unwrap().next().unwrap().unwrap();
    let digest = format!("sha256:{}", digest.file_name().to_str().unwrap().trim_end_matches(".json"));
    let mut timings = Vec::new();
    for (kind, container) in [
        ("image, warm", json!({"name": "c", "image": digest, "command": ["sleep", "1000"]})),
        ("no image", json!({"name": "c", "command": ["sleep", "1000"]})),
    ] {
        let mut ms: Vec<f64> = (0..5)
            .map(|i| {
                let name = format!("t{i}");
                let started = std::time::Instant::now();
                let (code, pod) = http("POST", "/v1/pods", Some(json!({"name": name, "containers": [container]})));
                let elapsed = started.elapsed().as_secs_f64() * 1000.0;
                assert_eq!((code, pod["phase"].as_str()), (201, Some("Running")), "{kind}: {pod}");
                assert_eq!(http("DELETE", &format!("/v1/pods/{name}?grace_period_secs=0"), None).0, 204);
                elapsed
            })
            .collect();
        ms.sort_by(f64::total_cmp);
        timings.push(format!("{kind}: median {:.1} ms (min {:.1}, max {:.1})", ms[2], ms[0], ms[4]));
    }
    eprintln!("pod create through the API, 5 each: {}", timings.join("; "));

    let (code, body) = http("DELETE", "/v1/pods/img?grace_period_secs=0", None);
    assert_eq!(code, 204, "{body}");
    // 204: no leak either (a cgroup that kept a process would answer 500 naming it).
    assert!(!alive(pid), "the container outlived its pod");
    assert!(!bundle.exists(), "the bundle (upper directory) outlived its pod");
    drop(agent);
    std::fs::remove_file(&marker).unwrap();
}

#[test]
fn a_corrupt_layer_fails_the_container_and_leaves_nothing_behind() {
    testbed_test_support::require_root!();
    let scratch = tempfile::tempdir().unwrap();
    let layout = scratch.path().join("busybox");
    busybox_layout(&layout);
    // Flip one byte of the biggest blob (the busybox layer): its digest no longer matches.
    let blobs = layout.join("blobs/sha256");
    let biggest =
        std::fs::read_dir(&blobs).unwrap().map(|e| e.unwrap().path()).max_by_key(|p| p.metadata().unwrap().len());
    let biggest = biggest.unwrap();
    let mut bytes = std::fs::read(&biggest).unwrap();
    bytes[4096] ^= 0xff;
    std::fs::write(&biggest, bytes).unwrap();

    let agent = TestAgent::start("badimage", &["--kill-grace-secs", "1"]);
    agent.apply_node();
    let spec = json!({"name": "bad", "restart_policy": "Never", "containers": [{"name": "c", "image": layout.to_str().unwrap()}]});
    let (code, pod) = http("POST", "/v1/pods", Some(spec));
    assert_eq!(code, 201, "{pod}");
    assert_eq!(pod["containers"][0]["state"]["state"], "terminated", "{pod}");
    assert_eq!(pod["containers"][0]["state"]["reason"], "StartError", "{pod}");
    let state = agent.state_dir.path();
    assert!(!state.join("pods/bad/c.oci").exists(), "a bundle (upper directory) for an image that failed its check");
    let layers = state.join("images/layers");
    assert!(!layers.exists() || std::fs::read_dir(&layers).unwrap().count() == 0, "a corrupt layer entered the store");
    let (code, body) = http("DELETE", "/v1/pods/bad?grace_period_secs=0", None);
    assert_eq!(code, 204, "{body}");
    drop(agent);
}
