//! An exec into a named container takes on what the container's own process has: its user, group and
//! supplementary groups, its capability sets and no_new_privs (from `/proc/<pid>/status`), its environment
//! (`/proc/<pid>/environ`) and its working directory, as `kubectl exec` gets the container's process spec
//! from its runtime. Without this the command ran as root with the agent's capabilities in every container,
//! whatever the container's securityContext said.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStringExt;

use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};

use super::launcher::{sys, LaunchError};

/// What the exec copies from the container's process, read before the launcher changes namespaces.
#[derive(Debug)]
pub struct Creds {
    status: Status,
    /// The highest capability number this kernel knows (`/proc/sys/kernel/cap_last_cap`).
    last_cap: u32,
    env: Vec<CString>,
    cwd: Option<File>,
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Status {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    inheritable: u64,
    permitted: u64,
    effective: u64,
    bounding: u64,
    ambient: u64,
    no_new_privs: bool,
}

impl Creds {
    pub fn of(pid: u32) -> Result<Creds, LaunchError> {
        let read = |path: String| {
            std::fs::read(&path).map_err(|source| LaunchError::Io { what: format!("read {path}"), source })
        };
        let text = String::from_utf8_lossy(&read(format!("/proc/{pid}/status"))?).into_owned();
        let status = parse_status(&text).ok_or_else(|| LaunchError::Io {
            what: format!("parse /proc/{pid}/status"),
            source: std::io::Error::other("a credential field is missing"),
        })?;
        let last_cap =
            String::from_utf8_lossy(&read("/proc/sys/kernel/cap_last_cap".into())?).trim().parse().unwrap_or(40);
        let env = read(format!("/proc/{pid}/environ"))?
            .split(|b| *b == 0)
            .filter(|v| !v.is_empty())
            .filter_map(|v| CString::new(v).ok())
            .collect();
        // Where the container's process is: the exec starts there (its image's WorkingDir or the pod's).
        let cwd = File::open(format!("/proc/{pid}/cwd")).ok();
        Ok(Creds { status, last_cap, env, cwd })
    }

    /// Becomes the container's process (in this single-threaded process, just before exec). The order
    /// matters: the bounding set first (dropping needs CAP_SETPCAP, which the user switch takes), the user
    /// last but for the sets it clears (the ambient set always, the permitted one unless KEEPCAPS).
    pub fn apply(&self) -> Result<(), LaunchError> {
        let s = &self.status;
        if let Some(dir) = &self.cwd {
            nix::unistd::fchdir(dir.as_raw_fd()).map_err(sys("chdir to the container's working directory"))?;
        }
        for cap in 0..=self.last_cap.min(63) {
            if s.bounding & (1 << cap) == 0 {
                prctl(libc::PR_CAPBSET_DROP, cap.into(), 0, "drop a bounding capability")?;
            }
        }
        let groups: Vec<Gid> = s.groups.iter().copied().map(Gid::from_raw).collect();
        setgroups(&groups).map_err(sys("setgroups"))?;
        let gid = Gid::from_raw(s.gid);
        setresgid(gid, gid, gid).map_err(sys("setresgid"))?;
        if s.uid != 0 {
            prctl(libc::PR_SET_KEEPCAPS, 1, 0, "keep capabilities across setuid")?;
        }
        let uid = Uid::from_raw(s.uid);
        setresuid(uid, uid, uid).map_err(sys("setresuid"))?;
        capset(s.effective, s.permitted, s.inheritable)?;
        for cap in (0..64).filter(|c| s.ambient & (1 << c) != 0) {
            prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                cap,
                "raise an ambient capability",
            )?;
        }
        if s.no_new_privs {
            prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, "set no_new_privs")?;
        }
        Ok(())
    }

    /// The container's environment, for the command.
    pub fn env(&self) -> impl Iterator<Item = (OsString, OsString)> + '_ {
        self.env.iter().filter_map(|kv| {
            let bytes = kv.as_bytes();
            let eq = bytes.iter().position(|b| *b == b'=')?;
            Some((OsString::from_vec(bytes[..eq].to_vec()), OsString::from_vec(bytes[eq + 1..].to_vec())))
        })
    }
}

fn prctl(option: libc::c_int, arg2: libc::c_ulong, arg3: libc::c_ulong, what: &str) -> Result<(), LaunchError> {
    // SAFETY: the options used here take integer arguments only.
    let rc = unsafe { libc::prctl(option, arg2, arg3, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    if rc < 0 {
        return Err(LaunchError::Io { what: format!("prctl: {what}"), source: std::io::Error::last_os_error() });
    }
    Ok(())
}

/// `capset(2)` with version 3 (64-bit sets as two 32-bit halves).
fn capset(effective: u64, permitted: u64, inheritable: u64) -> Result<(), LaunchError> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header { version: VERSION_3, pid: 0 };
    let half = |shift: u32| Data {
        effective: (effective >> shift) as u32,
        permitted: (permitted >> shift) as u32,
        inheritable: (inheritable >> shift) as u32,
    };
    let data = [half(0), half(32)];
    // SAFETY: a version-3 header and the two data structs it requires, both alive for the call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) };
    if rc < 0 {
        return Err(LaunchError::Io { what: "capset".into(), source: std::io::Error::last_os_error() });
    }
    Ok(())
}

fn parse_status(text: &str) -> Option<Status> {
    let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')).map(str::trim);
    let first_id = |name: &str| field(name)?.split_whitespace().next()?.parse().ok();
    let caps = |name: &str| u64::from_str_radix(field(name)?, 16).ok();
    Some(Status {
        // The real ids: a container's process has all four the same, and exec starts it so.
        uid: first_id("Uid")?,
        gid: first_id("Gid")?,
        groups: field("Groups")?.split_whitespace().filter_map(|g| g.parse().ok()).collect(),
        inheritable: caps("CapInh")?,
        permitted: caps("CapPrm")?,
        effective: caps("CapEff")?,
        bounding: caps("CapBnd")?,
        ambient: caps("CapAmb").unwrap_or(0),
        no_new_privs: field("NoNewPrivs").is_some_and(|v| v == "1"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_file_gives_ids_groups_capability_sets_and_no_new_privs() {
        let text = "Name:\tsleep\nUid:\t1000\t1000\t1000\t1000\nGid:\t3000\t3000\t3000\t3000\nGroups:\t3000 4000 \n\
                    CapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n\
                    CapBnd:\t00000000a80425fb\nCapAmb:\t0000000000002000\nNoNewPrivs:\t1\n";
        let s = parse_status(text).expect("parsed");
        assert_eq!(
            s,
            Status {
                uid: 1000,
                gid: 3000,
                groups: vec![3000, 4000],
                bounding: 0xa804_25fb,
                ambient: 0x2000,
                no_new_privs: true,
                ..Default::default()
            }
        );
        assert!(parse_status("Uid:\t0\t0\t0\t0\n").is_none(), "a missing field is an error, not root");
    }
}
