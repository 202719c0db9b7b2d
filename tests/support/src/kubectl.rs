//! The real kubectl against a lab, for the end-to-end tests and lab benchmarks: the lab's kubeconfig, and a
//! discovery cache in the test's own directory (not the user's ~/.kube).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// kubectl with one lab's kubeconfig.
pub struct Kubectl {
    pub kubeconfig: PathBuf,
    pub cache_dir: PathBuf,
}

impl Kubectl {
    /// `cache_dir` takes kubectl's discovery cache.
    pub fn new(kubeconfig: &Path, cache_dir: &Path) -> Self {
        Self { kubeconfig: kubeconfig.to_path_buf(), cache_dir: cache_dir.to_path_buf() }
    }

    /// A kubectl command with the kubeconfig and cache set, for callers that stream its output.
    pub fn command(&self) -> Command {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig").arg(&self.kubeconfig).arg("--cache-dir").arg(&self.cache_dir);
        c
    }

    /// Runs kubectl with `args` (and `stdin` fed to it) to its end; each request bounded to 20 s.
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = self
            .command()
            .arg("--request-timeout=20s")
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            std::io::Write::write_all(&mut pipe, text.as_bytes()).expect("kubectl stdin");
        }
        child.wait_with_output().expect("kubectl output")
    }

    /// Runs kubectl, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin);
        assert!(out.status.success(), "{}", crate::lab::show(&format!("kubectl {args:?}"), &out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
