//! The interactive `testbed ssh`: the system `ssh` with the lab's key and known_hosts, because a real terminal
//! is what people expect there (the russh client in `session` serves every other use).

use std::ffi::OsStr;
use std::path::Path;

use super::session::USER;

/// The system `ssh` for an interactive shell (or a one-off command in `remote_args`) on a node. Strict host key
/// checking against the lab's own known_hosts, only the lab key, no user or global config surprises.
pub fn interactive_ssh_command<S: AsRef<OsStr>>(
    port: u16,
    key: &Path,
    known_hosts: &Path,
    extra_args: &[S],
) -> std::process::Command {
    let mut cmd = std::process::Command::new("ssh");
    cmd.arg("-i").arg(key).arg("-p").arg(port.to_string());
    // ssh splits this option's value at spaces: quoted, a state directory like `/home/Jo Doe/...` still works.
    let mut kh = std::ffi::OsString::from("UserKnownHostsFile=\"");
    kh.push(known_hosts);
    kh.push("\"");
    cmd.arg("-o").arg(kh);
    for opt in [
        "StrictHostKeyChecking=yes",
        "GlobalKnownHostsFile=/dev/null",
        "IdentitiesOnly=yes",
        "PreferredAuthentications=publickey",
        "LogLevel=ERROR",
    ] {
        cmd.arg("-o").arg(opt);
    }
    cmd.arg(format!("{USER}@127.0.0.1"));
    if !extra_args.is_empty() {
        // ssh parses options after the host too: a command starting with `-` must not become one.
        cmd.arg("--");
    }
    cmd.args(extra_args);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::keys::{generate_host_key, write_known_hosts};
    use crate::guest::test_sshd::Sshd;
    use std::process::Stdio;

    #[test]
    fn interactive_command_pins_the_lab_known_hosts() {
        let cmd = interactive_ssh_command(
            2222,
            Path::new("/lab/id_ed25519"),
            Path::new("/lab/known_hosts"),
            &["uname", "-a"],
        );
        let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(cmd.get_program(), "ssh");
        let joined = args.join(" ");
        for want in [
            "-i /lab/id_ed25519",
            "-p 2222",
            "-o UserKnownHostsFile=\"/lab/known_hosts\"",
            "-o StrictHostKeyChecking=yes",
            "-o IdentitiesOnly=yes",
            "-o LogLevel=ERROR",
            "root@127.0.0.1 -- uname -a",
        ] {
            assert!(joined.contains(want), "missing `{want}` in `{joined}`");
        }
    }

    #[test]
    fn system_ssh_with_our_known_hosts_reaches_sshd_and_rejects_a_wrong_key() {
        let Some(sshd) = Sshd::start() else { return };
        if std::process::Command::new("ssh").arg("-V").output().is_err() {
            eprintln!("SKIP: no system ssh (openssh-client)");
            return;
        }
        // A space in the path, as in a home directory like `/home/Jo Doe`.
        let known_hosts = sshd.dir.path().join("lab dir").join("known_hosts");
        std::fs::create_dir_all(known_hosts.parent().expect("parent")).expect("mkdir");
        write_known_hosts(&known_hosts, &[(sshd.port, sshd.host.host_public_openssh.clone())]).expect("known_hosts");
        let out = interactive_ssh_command(sshd.port, &sshd.client_key, &known_hosts, &["echo", "via-system-ssh"])
            .stdin(Stdio::null())
            .output()
            .expect("run ssh");
        assert!(out.status.success(), "ssh failed: {}\n{}", String::from_utf8_lossy(&out.stderr), sshd.log());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "via-system-ssh\n");

        let other = generate_host_key().expect("other key");
        write_known_hosts(&known_hosts, &[(sshd.port, other.host_public_openssh)]).expect("known_hosts");
        let out = interactive_ssh_command(sshd.port, &sshd.client_key, &known_hosts, &["true"])
            .stdin(Stdio::null())
            .output()
            .expect("run ssh");
        assert_eq!(out.status.code(), Some(255), "StrictHostKeyChecking must refuse a changed host key");
    }
}
