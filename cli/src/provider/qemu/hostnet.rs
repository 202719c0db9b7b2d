//! Host-side networking of a lab, all of it inside the lab's own network namespace `tb-<lab>`:
//! one bridge per underlay network, one tap per VM NIC (master = that bridge), netem on the taps.
//! Nothing is created in the host's root namespace.
//!
//! Tap handling (the choice): taps are created *persistent* inside the lab netns with `ip -n <ns> tuntap add`,
//! so plain `ip`/`tc` configure them (master, MTU, up, netem) before QEMU exists. QEMU itself runs in the
//! host netns (its user-net `hostfwd` must bind the host's 127.0.0.1), so the CLI opens each tap for it: a
//! dedicated thread `setns`es into the lab netns, opens /dev/net/tun and attaches to the tap by name with
//! TUNSETIFF (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR), and QEMU inherits that fd (`-netdev tap,fd=N`). The thread
//! ends right after, so no other work ever runs in the lab netns. Deleting the netns destroys the taps and
//! bridges with it, which is all `down` needs.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Command;

use crate::lab::node_setup::netem_args;
use crate::plan::Impairment;

#[derive(Debug, thiserror::Error)]
pub enum HostNetError {
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("cannot run `{program}` (is iproute2 installed?): {source}")]
    Spawn { program: String, source: std::io::Error },
    /// The host kernel lacks sch_netem (some minimal VM kernels); impairments then go inside the guests.
    #[error("the host kernel has no netem qdisc (CONFIG_NET_SCH_NETEM)")]
    NetemUnsupported,
    #[error("cannot open tap {tap} in netns {netns}: {step}: {source}")]
    Tap { netns: String, tap: String, step: &'static str, source: std::io::Error },
}

/// Kernel work of the host network, behind a trait so the up/down orchestration can be unit-tested with a fake.
pub trait HostNet: Send + Sync {
    fn netns_exists(&self, netns: &str) -> Result<bool, HostNetError>;
    /// Creates the namespace (and brings its `lo` up); fine when it exists.
    fn create_netns(&self, netns: &str) -> Result<(), HostNetError>;
    /// Deletes the namespace and with it every bridge and tap inside; fine when it is gone.
    fn delete_netns(&self, netns: &str) -> Result<(), HostNetError>;
    /// A bridge, up, with that MTU; converges an existing one.
    fn ensure_bridge(&self, netns: &str, bridge: &str, mtu: u32) -> Result<(), HostNetError>;
    /// A persistent tap enslaved to `bridge`, up, with that MTU; converges an existing one.
    fn ensure_tap(&self, netns: &str, tap: &str, bridge: &str, mtu: u32) -> Result<(), HostNetError>;
    /// Deletes a tap (a node removed from a running lab); fine when it is gone.
    fn delete_tap(&self, netns: &str, tap: &str) -> Result<(), HostNetError>;
    /// Replaces (or removes, when `impair` is none) the netem qdisc on a tap's egress (= towards its VM).
    fn set_impairment(&self, netns: &str, dev: &str, impair: &Impairment) -> Result<(), HostNetError>;
    /// An fd attached to the tap, for QEMU to inherit.
    fn open_tap(&self, netns: &str, tap: &str) -> Result<OwnedFd, HostNetError>;
}

/// The real thing: `ip` and `tc` from iproute2, always with `-n <netns>` (never the root namespace).
#[derive(Debug, Default)]
pub struct IpHostNet;

fn run(program: &str, args: &[&str]) -> Result<String, HostNetError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| HostNetError::Spawn { program: program.to_string(), source })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(HostNetError::Command {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn link_exists(netns: &str, dev: &str) -> Result<bool, HostNetError> {
    match run("ip", &["-n", netns, "link", "show", "dev", dev]) {
        Ok(_) => Ok(true),
        Err(HostNetError::Command { stderr, .. }) if stderr.contains("does not exist") => Ok(false),
        Err(e) => Err(e),
    }
}

/// `ip netns add` (unless it `exists`) and `lo up`, through `ip`. A namespace this call added is deleted
/// again when bringing `lo` up fails, so an error never leaves a namespace behind for the caller to find.
fn create_netns_with(
    netns: &str,
    exists: bool,
    ip: &dyn Fn(&[&str]) -> Result<String, HostNetError>,
) -> Result<(), HostNetError> {
    if !exists {
        ip(&["netns", "add", netns])?;
    }
    if let Err(e) = ip(&["-n", netns, "link", "set", "lo", "up"]) {
        if !exists {
            let _ = ip(&["netns", "delete", netns]);
        }
        return Err(e);
    }
    Ok(())
}

impl HostNet for IpHostNet {
    fn netns_exists(&self, netns: &str) -> Result<bool, HostNetError> {
        let list = run("ip", &["netns", "list"])?;
        Ok(list.lines().any(|l| l.split_whitespace().next() == Some(netns)))
    }

    fn create_netns(&self, netns: &str) -> Result<(), HostNetError> {
        create_netns_with(netns, self.netns_exists(netns)?, &|args| run("ip", args))
    }

    fn delete_netns(&self, netns: &str) -> Result<(), HostNetError> {
        if self.netns_exists(netns)? {
            run("ip", &["netns", "delete", netns])?;
        }
        Ok(())
    }

    fn ensure_bridge(&self, netns: &str, bridge: &str, mtu: u32) -> Result<(), HostNetError> {
        if !link_exists(netns, bridge)? {
            run("ip", &["-n", netns, "link", "add", "name", bridge, "type", "bridge"])?;
        }
        let mtu = mtu.to_string();
        run("ip", &["-n", netns, "link", "set", "dev", bridge, "mtu", &mtu, "up"])?;
        Ok(())
    }

    fn ensure_tap(&self, netns: &str, tap: &str, bridge: &str, mtu: u32) -> Result<(), HostNetError> {
        if !link_exists(netns, tap)? {
            run("ip", &["-n", netns, "tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr"])?;
        }
        let mtu = mtu.to_string();
        run("ip", &["-n", netns, "link", "set", "dev", tap, "master", bridge, "mtu", &mtu, "up"])?;
        Ok(())
    }

    fn delete_tap(&self, netns: &str, tap: &str) -> Result<(), HostNetError> {
        if link_exists(netns, tap)? {
            run("ip", &["-n", netns, "link", "delete", "dev", tap])?;
        }
        Ok(())
    }

    fn set_impairment(&self, netns: &str, dev: &str, impair: &Impairment) -> Result<(), HostNetError> {
        let netem = netem_args(impair);
        if netem.is_empty() {
            // Back to the default qdisc; "no qdisc" errors just mean there was none.
            match run("tc", &["-n", netns, "qdisc", "del", "dev", dev, "root"]) {
                Ok(_) => Ok(()),
                Err(HostNetError::Command { stderr, .. })
                    if stderr.contains("Cannot delete qdisc with handle of zero")
                        || stderr.contains("No such file or directory") =>
                {
                    Ok(())
                }
                Err(e) => Err(e),
            }
        } else {
            let mut args = vec!["-n", netns, "qdisc", "replace", "dev", dev, "root", "netem"];
            args.extend(netem.iter().map(String::as_str));
            match run("tc", &args) {
                Ok(_) => Ok(()),
                Err(HostNetError::Command { stderr, .. }) if stderr.contains("qdisc kind is unknown") => {
                    Err(HostNetError::NetemUnsupported)
                }
                Err(e) => Err(e),
            }
        }
    }

    fn open_tap(&self, netns: &str, tap: &str) -> Result<OwnedFd, HostNetError> {
        let (ns, name) = (netns.to_string(), tap.to_string());
        // A throwaway thread: setns changes only the calling thread's namespace, and this one exits right after.
        std::thread::spawn(move || open_tap_in(&ns, &name)).join().unwrap_or_else(|_| {
            Err(HostNetError::Tap {
                netns: netns.to_string(),
                tap: tap.to_string(),
                step: "thread",
                source: std::io::Error::other("tap thread panicked"),
            })
        })
    }
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca; // _IOW('T', 202, int)
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// `struct ifreq` as TUNSETIFF reads it: the name and the flags member of the union (40 bytes in all).
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn open_tap_in(netns: &str, tap: &str) -> Result<OwnedFd, HostNetError> {
    let err = |step: &'static str| {
        move |source: std::io::Error| HostNetError::Tap { netns: netns.to_string(), tap: tap.to_string(), step, source }
    };
    let ns = File::open(format!("/run/netns/{netns}")).map_err(err("open netns"))?;
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| err("setns")(std::io::Error::from(e)))?;
    let tun = OpenOptions::new().read(true).write(true).open("/dev/net/tun").map_err(err("open /dev/net/tun"))?;
    if tap.len() >= libc::IFNAMSIZ {
        return Err(err("name")(std::io::Error::other("tap name longer than 15 bytes")));
    }
    let mut req = IfReqFlags { name: [0; libc::IFNAMSIZ], flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, _pad: [0; 22] };
    req.name[..tap.len()].copy_from_slice(tap.as_bytes());
    // SAFETY: TUNSETIFF reads a `struct ifreq` (name + flags) from a pointer valid for its 40 bytes.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReqFlags) };
    if rc != 0 {
        return Err(err("TUNSETIFF")(std::io::Error::last_os_error()));
    }
    Ok(OwnedFd::from(tun))
}

#[cfg(test)]
pub mod fake {
    //! Records every operation in order; `fail_on` makes one operation fail (rollback tests).
    use super::*;
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    #[derive(Debug, Default)]
    pub struct FakeHostNet {
        pub ops: Mutex<Vec<String>>,
        pub namespaces: Mutex<BTreeSet<String>>,
        pub fail_on: Option<String>,
    }

    impl FakeHostNet {
        fn record(&self, op: String) -> Result<(), HostNetError> {
            let fail = self.fail_on.as_deref().is_some_and(|f| op.starts_with(f));
            self.ops.lock().unwrap().push(op.clone());
            if fail {
                return Err(HostNetError::Command { command: op, stderr: "injected failure".into() });
            }
            Ok(())
        }
    }

    impl HostNet for FakeHostNet {
        fn netns_exists(&self, netns: &str) -> Result<bool, HostNetError> {
            Ok(self.namespaces.lock().unwrap().contains(netns))
        }
        fn create_netns(&self, netns: &str) -> Result<(), HostNetError> {
            self.record(format!("netns add {netns}"))?;
            self.namespaces.lock().unwrap().insert(netns.to_string());
            Ok(())
        }
        fn delete_netns(&self, netns: &str) -> Result<(), HostNetError> {
            self.record(format!("netns del {netns}"))?;
            self.namespaces.lock().unwrap().remove(netns);
            Ok(())
        }
        fn ensure_bridge(&self, netns: &str, bridge: &str, mtu: u32) -> Result<(), HostNetError> {
            self.record(format!("bridge {netns} {bridge} {mtu}"))
        }
        fn ensure_tap(&self, netns: &str, tap: &str, bridge: &str, mtu: u32) -> Result<(), HostNetError> {
            self.record(format!("tap {netns} {tap} {bridge} {mtu}"))
        }
        fn delete_tap(&self, netns: &str, tap: &str) -> Result<(), HostNetError> {
            self.record(format!("tap del {netns} {tap}"))
        }
        fn set_impairment(&self, netns: &str, dev: &str, impair: &Impairment) -> Result<(), HostNetError> {
            self.record(format!("netem {netns} {dev} {}", netem_args(impair).join(" ")))
        }
        fn open_tap(&self, netns: &str, tap: &str) -> Result<OwnedFd, HostNetError> {
            self.record(format!("open {netns} {tap}"))?;
            Ok(OwnedFd::from(File::open("/dev/null").unwrap()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_added_is_deleted_when_lo_up_fails() {
        let calls = std::sync::Mutex::new(Vec::new());
        let ip = |args: &[&str]| -> Result<String, HostNetError> {
            calls.lock().unwrap().push(args.join(" "));
            if args.contains(&"lo") {
                return Err(HostNetError::Command { command: "ip ... lo up".into(), stderr: "boom".into() });
            }
            Ok(String::new())
        };
        assert!(create_netns_with("tb-x", false, &ip).is_err());
        assert_eq!(*calls.lock().unwrap(), ["netns add tb-x", "-n tb-x link set lo up", "netns delete tb-x"]);
        // A namespace that existed before is not ours to delete.
        calls.lock().unwrap().clear();
        assert!(create_netns_with("tb-x", true, &ip).is_err());
        assert_eq!(*calls.lock().unwrap(), ["-n tb-x link set lo up"]);
    }

    /// Real kernel objects: needs root and iproute2; skipped otherwise.
    #[test]
    fn real_netns_bridge_tap_netem_roundtrip() {
        if !nix::unistd::Uid::effective().is_root() || Command::new("ip").arg("-V").output().is_err() {
            eprintln!("skipped: needs root and iproute2");
            return;
        }
        let net = IpHostNet;
        let ns = format!("tb-ut-{}", std::process::id());
        // Created inside the guard: a panic at any step still reaches the delete below.
        let result = std::panic::catch_unwind(|| {
            net.create_netns(&ns).unwrap();
            net.ensure_bridge(&ns, "tbut-br", 1400).unwrap();
            net.ensure_bridge(&ns, "tbut-br", 1400).unwrap();
            net.ensure_tap(&ns, "tbut-tap", "tbut-br", 1400).unwrap();
            net.ensure_tap(&ns, "tbut-tap", "tbut-br", 1400).unwrap();
            let i = Impairment { delay_ms: 5.0, ..Default::default() };
            match net.set_impairment(&ns, "tbut-tap", &i) {
                Ok(()) => {
                    let q = run("tc", &["-n", &ns, "qdisc", "show", "dev", "tbut-tap"]).unwrap();
                    assert!(q.contains("netem") && q.contains("delay 5ms"), "{q}");
                }
                Err(HostNetError::NetemUnsupported) => eprintln!("host kernel without netem"),
                Err(e) => panic!("{e}"),
            }
            net.set_impairment(&ns, "tbut-tap", &Impairment::default()).unwrap();
            net.set_impairment(&ns, "tbut-tap", &Impairment::default()).unwrap();
            let fd = net.open_tap(&ns, "tbut-tap").unwrap();
            assert!(fd.as_raw_fd() > 2);
            let link = run("ip", &["-n", &ns, "link", "show", "dev", "tbut-tap"]).unwrap();
            assert!(link.contains("master tbut-br") && link.contains("mtu 1400"), "{link}");
            // Not in the root namespace.
            assert!(!link_exists_root("tbut-tap"));
        });
        net.delete_netns(&ns).unwrap();
        assert!(!net.netns_exists(&ns).unwrap());
        result.unwrap();
    }

    fn link_exists_root(dev: &str) -> bool {
        Command::new("ip").args(["link", "show", "dev", dev]).output().map(|o| o.status.success()).unwrap_or(false)
    }
}
