//! Helpers for the end-to-end tests, which drive labs through the `testbed` binary: bundled topologies under
//! test-only lab names, the output of a failed command, what a lab leaves in the host.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace's root directory (this crate lives in tests/support).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A copy of the bundled topology `bundled` (a file in topologies/) renamed to lab `lab`, written to
/// `dir/<lab>.yaml`: a test-only lab name, so a user's own lab of the bundled name is never touched.
pub fn topology_copy(dir: &Path, bundled: &str, lab: &str) -> PathBuf {
    let src = workspace_root().join("topologies").join(bundled);
    let text = std::fs::read_to_string(&src).unwrap_or_else(|e| panic!("read {}: {e}", src.display()));
    let renamed: Vec<String> =
        text.lines().map(|l| if l.starts_with("name:") { format!("name: {lab}") } else { l.to_string() }).collect();
    let path = dir.join(format!("{lab}.yaml"));
    std::fs::write(&path, renamed.join("\n") + "\n").expect("write topology copy");
    path
}

/// A finished command's status, stdout and stderr, for an assertion message.
pub fn show(what: &str, out: &Output) -> String {
    format!(
        "--- {what}: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// True when the host has a network namespace called `name` (a lab's is `tb-<lab>`).
pub fn netns_exists(name: &str) -> bool {
    let out = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    String::from_utf8_lossy(&out.stdout).lines().any(|l| l.split_whitespace().next() == Some(name))
}

/// Runs `testbed down --lab LAB` (with the test's state directory) when dropped, so that a lab is removed even
/// when an assertion fails halfway. `binary` is the test's `env!("CARGO_BIN_EXE_testbed")`.
pub struct LabGuard {
    pub binary: PathBuf,
    pub state_dir: PathBuf,
    pub lab: String,
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new(&self.binary)
            .env("TESTBED_STATE_DIR", &self.state_dir)
            .args(["down", "--lab", &self.lab])
            .output();
    }
}

/// Runs `binary` (the test's `env!("CARGO_BIN_EXE_testbed")`) with `args` on the labs under `state_dir`.
pub fn run_testbed(binary: &Path, state_dir: &Path, args: &[&str]) -> Output {
    Command::new(binary).env("TESTBED_STATE_DIR", state_dir).args(args).output().expect("run testbed")
}

/// Makes sure a static agent exists where `testbed` looks for it (or `$TESTBED_AGENT` is set), building it
/// when neither is there.
pub fn ensure_agent() {
    if std::env::var_os("TESTBED_AGENT").is_some() {
        return;
    }
    let workspace = workspace_root();
    let target = workspace.join("target/x86_64-unknown-linux-gnu");
    if ["release", "debug"].iter().any(|p| target.join(p).join("testbed-agent").is_file()) {
        return;
    }
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&workspace)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .args(["build", "-p", "testbed-agent", "--release", "--target", "x86_64-unknown-linux-gnu"])
        .status()
        .expect("run cargo to build the static agent");
    assert!(status.success(), "building the static agent failed");
}

/// The checks of `dir/results.json` (a `testbed run --out dir`) that failed or errored, each with its message
/// and details (a policy check's truth tables, a probe's output), for an assertion message: CI's log is all that
/// remains of a run on a clean clone, the results directory goes with the test's temporary directory. Empty
/// when the file is missing or not JSON (the caller's exit code assertion says why).
pub fn failed_checks(dir: &Path) -> String {
    let Ok(text) = std::fs::read(dir.join("results.json")) else { return String::new() };
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&text) else { return String::new() };
    let checks = doc["checks"].as_array().cloned().unwrap_or_default();
    checks
        .iter()
        .filter(|c| c["status"] == "fail" || c["status"] == "error")
        .map(|c| format!("{}: {}\n{}\n", c["name"], c["message"], c["details"].as_str().unwrap_or_default()))
        .collect()
}

/// Whether a check of `results.json` passed, or warned only because the Service endpoints followed an unready pod
/// later than the 2 s target (`CheckError::Slow`: the endpoint did leave every node, as the check proves; how
/// fast depends on the host's load under TCG, which CI does not control). Any other warning is not a pass.
pub fn passed_or_missed_only_the_follow_target(check: &serde_json::Value) -> bool {
    check["status"] == "pass"
        || (check["status"] == "warn" && check["name"].as_str().is_some_and(|n| n.contains("within 2 s")))
}
