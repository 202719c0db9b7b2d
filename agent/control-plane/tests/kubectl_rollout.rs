//! The real kubectl's `rollout` verbs against the controller manager: a real etcd and API server, the
//! manager's loops, and the fake kubelet of `controllers_lab` (pods Ready unless their image is `broken`).
//! `kubectl rollout status` reads the Deployment's generation, observedGeneration, replica counts and the
//! Progressing condition's reason, so it passes only when the controllers keep all of them as Kubernetes
//! does: it first times out with no manager running (the fault), then sees the rollout through, reports a
//! stuck one as past its progress deadline, and sees `undo` through.

#![allow(clippy::unwrap_used)]

mod apiserver_lab;
mod common;
// Each test file compiles the module on its own; this one uses part of it.
#[allow(dead_code)]
mod controllers_lab;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use controllers_lab::{deployment, image_patch, Cluster, BROKEN};

/// kubectl with a kubeconfig for `c`'s API server; its discovery cache under `home`.
async fn kubectl(kubeconfig: &Path, home: &Path, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new("kubectl");
    cmd.args(args).env("KUBECONFIG", kubeconfig).env("HOME", home);
    cmd.output().await.expect("kubectl must be installed")
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn write_kubeconfig(c: &Cluster, dir: &Path) -> PathBuf {
    let path = dir.join("kubeconfig");
    let config = testbed_control_plane::kubeconfig("lab", &c.lab.server, &c.lab.creds.ca_pem, &c.lab.creds.token);
    std::fs::write(&path, config).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_rollout_follows_the_controllers() {
    let home = tempfile::tempdir().unwrap();
    let mut c = Cluster::without_manager().await;
    let config = write_kubeconfig(&c, home.path());
    let status = ["rollout", "status", "deployment/web", "--timeout=60s"];

    // The fault: with no controller manager nothing observes the Deployment, and kubectl says so.
    let mut d = deployment("web", 3, 1, 0);
    d.spec.progress_deadline_seconds = Some(4);
    let d = c.create(&d).await;
    let waiting = kubectl(&config, home.path(), &["rollout", "status", "deployment/web", "--timeout=3s"]).await;
    assert!(!waiting.status.success(), "rollout status passed with no controller: {}", text(&waiting));
    assert!(
        String::from_utf8_lossy(&waiting.stdout).contains("Waiting for deployment spec update to be observed"),
        "{}",
        text(&waiting)
    );

    c.start_manager("cp1");
    let done = kubectl(&config, home.path(), &status).await;
    assert!(done.status.success(), "{}", text(&done));
    assert!(
        String::from_utf8_lossy(&done.stdout).contains("deployment \"web\" successfully rolled out"),
        "{}",
        text(&done)
    );

    // A version that never becomes Ready: kubectl reports the deadline the controller marked, and exits 1.
    c.patch("web", image_patch(&d, BROKEN)).await;
    let stuck = kubectl(&config, home.path(), &status).await;
    assert_eq!(stuck.status.code(), Some(1), "{}", text(&stuck));
    assert!(
        String::from_utf8_lossy(&stuck.stderr).contains("deployment \"web\" exceeded its progress deadline"),
        "{}",
        text(&stuck)
    );

    // History names both revisions; undo goes back to the first template and the rollout completes.
    let history = kubectl(&config, home.path(), &["rollout", "history", "deployment/web"]).await;
    let lines = String::from_utf8_lossy(&history.stdout).into_owned();
    assert!(
        history.status.success()
            && lines.lines().any(|l| l.starts_with("1 "))
            && lines.lines().any(|l| l.starts_with("2 ")),
        "{}",
        text(&history)
    );
    let undo = kubectl(&config, home.path(), &["rollout", "undo", "deployment/web"]).await;
    assert!(undo.status.success() && String::from_utf8_lossy(&undo.stdout).contains("rolled back"), "{}", text(&undo));
    let back = kubectl(&config, home.path(), &status).await;
    assert!(back.status.success(), "{}", text(&back));
    controllers_lab::wait_for("three pods of the first template after undo", Duration::from_secs(30), || async {
        let pods = c.pods().await;
        (pods.len() == 3 && pods.iter().all(|p| controllers_lab::image(p) == "v1")).then_some(())
    })
    .await;
}
