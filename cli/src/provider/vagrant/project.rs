//! The lab's Vagrant project: the repository's Vagrantfile copied into `<lab dir>/vagrant/` and run in its
//! managed mode (the lab's plan.json and client key, seeds written by testbed), so `vagrant status`/`ssh` work
//! there too (`VAGRANT_CWD=<lab dir>/vagrant TESTBED_PLAN=<lab dir>/plan.json TESTBED_SSH_KEY=<lab dir>/id_ed25519`).
//! Vagrant's output goes to a log file; each line is also handed to the caller for the progress bar.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::lab::LabDir;

use super::VagrantError;

/// The repository's Vagrantfile, as built into this binary.
const VAGRANTFILE: &str = include_str!("../../../../Vagrantfile");

pub struct Project {
    dir: PathBuf,
    plan: PathBuf,
    key: PathBuf,
}

impl Project {
    pub fn of(lab: &LabDir) -> Project {
        Project { dir: lab.root.join("vagrant"), plan: lab.plan_path(), key: lab.client_key() }
    }

    /// Writes the Vagrantfile (again: the binary may be newer than the lab).
    pub fn write(&self) -> Result<(), VagrantError> {
        std::fs::create_dir_all(&self.dir).map_err(VagrantError::io(format!("create {}", self.dir.display())))?;
        let file = self.dir.join("Vagrantfile");
        std::fs::write(&file, VAGRANTFILE).map_err(VagrantError::io(format!("write {}", file.display())))
    }

    /// Whether `vagrant` can run here: the Vagrantfile and the plan it reads are both in place.
    pub fn is_usable(&self) -> bool {
        self.dir.join("Vagrantfile").is_file() && self.plan.is_file()
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("vagrant.log")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("vagrant");
        c.args(args)
            .current_dir(&self.dir)
            .env("VAGRANT_CWD", &self.dir)
            .env("TESTBED_PLAN", &self.plan)
            .env("TESTBED_SSH_KEY", &self.key)
            .env("TESTBED_HUB", self.dir.join("hub.json"))
            .env("VAGRANT_NO_COLOR", "1")
            .env("VAGRANT_CHECKPOINT_DISABLE", "1")
            .env("LIBVIRT_DEFAULT_URI", super::libvirt::URI)
            .stdin(Stdio::null());
        c
    }

    /// Runs `vagrant ARGS`, appending its output to the project's log and handing each line to `line`; kills it
    /// (by its PID: the child this started) once `cancelled` says so.
    pub fn run(
        &self,
        args: &[&str],
        cancelled: impl Fn() -> bool + Send + 'static,
        mut line: impl FnMut(&str),
    ) -> Result<(), VagrantError> {
        let shown = format!("vagrant {}", args.join(" "));
        let log_path = self.log();
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(VagrantError::io(format!("open {}", log_path.display())))?;
        let _ = writeln!(log, "$ {shown}");
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(VagrantError::io("run vagrant (is it installed? tests/install-packages.sh)"))?;
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watch_done = done.clone();
        // Kills vagrant when the `up` it serves is cancelled; the rollback then removes what it made.
        let watcher = std::thread::spawn(move || {
            while !watch_done.load(std::sync::atomic::Ordering::Relaxed) {
                if cancelled() {
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let err_reader = std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(e) = stderr {
                for l in BufReader::new(e).lines().map_while(Result::ok) {
                    text.push_str(&l);
                    text.push('\n');
                }
            }
            text
        });
        let mut output = String::new();
        if let Some(out) = stdout {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = writeln!(log, "{l}");
                line(&l);
                output.push_str(&l);
                output.push('\n');
            }
        }
        let status = child.wait().map_err(VagrantError::io(format!("wait for {shown}")))?;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = watcher.join();
        let errors = err_reader.join().unwrap_or_default();
        let _ = log.write_all(errors.as_bytes());
        output.push_str(&errors);
        if status.success() {
            return Ok(());
        }
        Err(VagrantError::Failed { command: shown, status: status.to_string(), log: log_path, output })
    }
}

/// The Vagrant home (`VAGRANT_HOME`, else `~/.vagrant.d`), where added boxes live.
pub fn vagrant_home() -> Option<PathBuf> {
    std::env::var_os("VAGRANT_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".vagrant.d")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_project_reads_the_labs_plan_and_key() {
        let tmp = tempfile::tempdir().unwrap();
        let lab = LabDir::new(tmp.path(), "l");
        let p = Project::of(&lab);
        assert!(!p.is_usable());
        p.write().unwrap();
        std::fs::write(lab.plan_path(), "{}").unwrap();
        assert!(p.is_usable());
        let c = p.command(&["status"]);
        let env: Vec<_> = c.get_envs().map(|(k, v)| (k.to_owned(), v.map(|v| v.to_owned()))).collect();
        assert!(env.contains(&("TESTBED_PLAN".into(), Some(lab.plan_path().into_os_string()))));
        assert!(env.contains(&("TESTBED_SSH_KEY".into(), Some(lab.client_key().into_os_string()))));
        let vagrantfile = std::fs::read_to_string(tmp.path().join("l/vagrant/Vagrantfile")).unwrap();
        assert!(vagrantfile.contains("managed = ENV.key?(\"TESTBED_PLAN\")"));
    }
}
