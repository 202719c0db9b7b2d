//! Pod IP allocation from the node subnet, persisted like CNI's host-local plugin: one file per allocated IP
//! (`<state_dir>/ipam/10.244.1.2`) holding the pod name. A file is created with O_EXCL (fails if the IP is
//! taken), so an IP is never handed out twice and the same pod finds its IP again after an agent restart.
//!
//! Crash safety without fsync (an fsync per pod was a large share of attaching one): after a crash a file may
//! exist with its content lost (empty). `open` keeps such an IP as taken by an unknown owner: at worst an
//! address leaks, it is never handed out twice. A file that never made it to disk belongs to a pod whose
//! state file (written the same way, later) did not either, so that pod is created again from scratch.
//!
//! Allocation goes round the subnet from the address after the last one handed out (`last_reserved_ip`, as
//! host-local does) instead of taking the lowest free one: a pod deleted and another created at once must not
//! get the same IP with a new MAC, or peers whose neighbour caches still hold the old MAC drop its traffic for
//! seconds. Losing that file in a crash only restarts the walk at `.2`.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

use super::NetError;

/// File (not an IP, so never taken for an allocation) holding the last address handed out.
const LAST_RESERVED: &str = "last_reserved_ip";

pub struct Ipam {
    dir: PathBuf,
    /// Mirror of the directory, loaded once, so allocation needs no directory scan.
    by_ip: BTreeMap<Ipv4Addr, String>,
    by_pod: HashMap<String, Ipv4Addr>,
    last_reserved: Option<Ipv4Addr>,
}

impl Ipam {
    pub fn open(dir: &Path) -> Result<Ipam, NetError> {
        std::fs::create_dir_all(dir).map_err(|e| NetError::io(format!("create {}", dir.display()), e))?;
        let mut by_ip = BTreeMap::new();
        let entries = std::fs::read_dir(dir).map_err(|e| NetError::io(format!("read {}", dir.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| NetError::io(format!("read {}", dir.display()), e))?;
            let name = entry.file_name();
            let Some(ip) = name.to_str().and_then(|n| n.parse::<Ipv4Addr>().ok()) else {
                // Leftover temporary file of an interrupted allocation: it never became an allocation.
                if name.to_string_lossy().starts_with(".tmp-") {
                    let _ = std::fs::remove_file(entry.path());
                }
                continue;
            };
            let pod = std::fs::read_to_string(entry.path())
                .map_err(|e| NetError::io(format!("read {}", entry.path().display()), e))?;
            by_ip.insert(ip, pod.trim().to_string());
        }
        // An empty owner (content lost in a crash) stays taken in `by_ip` but belongs to no pod.
        let by_pod = by_ip.iter().filter(|(_, p)| !p.is_empty()).map(|(ip, p)| (p.clone(), *ip)).collect();
        let last_reserved =
            std::fs::read_to_string(dir.join(LAST_RESERVED)).ok().and_then(|s| s.trim().parse::<Ipv4Addr>().ok());
        Ok(Ipam { dir: dir.to_path_buf(), by_ip, by_pod, last_reserved })
    }

    pub fn lookup(&self, pod: &str) -> Option<Ipv4Addr> {
        self.by_pod.get(pod).copied()
    }

    /// The pod's IP: its existing one if it lies in `subnet`, else the next free address after the last one
    /// handed out, going round `.2 ..= broadcast-1` (`.0` is flannel's device address, `.1` the bridge).
    pub fn allocate(&mut self, pod: &str, subnet: Ipv4Net) -> Result<Ipv4Addr, NetError> {
        if let Some(ip) = self.lookup(pod) {
            if subnet.contains(&ip) {
                return Ok(ip);
            }
            self.release(pod)?;
        }
        let first = u32::from(subnet.network()) + 2;
        let last = u32::from(subnet.broadcast()).saturating_sub(1);
        let start = match self.last_reserved.map(u32::from) {
            Some(prev) if (first..last).contains(&prev) => prev + 1,
            _ => first,
        };
        for n in (start..=last).chain(first..start) {
            let ip = Ipv4Addr::from(n);
            if self.by_ip.contains_key(&ip) || !self.claim(ip, pod)? {
                continue;
            }
            self.by_ip.insert(ip, pod.to_string());
            self.by_pod.insert(pod.to_string(), ip);
            self.last_reserved = Some(ip);
            // Best effort: losing it only restarts the walk at `.2` (see the module comment).
            let _ = std::fs::write(self.dir.join(LAST_RESERVED), ip.to_string());
            return Ok(ip);
        }
        Err(NetError::Ipam(format!("no free address left in {subnet} for pod {pod}")))
    }

    /// Creates the IP's file (O_EXCL); false if another writer holds it already.
    fn claim(&self, ip: Ipv4Addr, pod: &str) -> Result<bool, NetError> {
        let path = self.dir.join(ip.to_string());
        let mut f = match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(NetError::io(format!("create {}", path.display()), e)),
        };
        if let Err(e) = f.write_all(pod.as_bytes()) {
            let _ = std::fs::remove_file(&path);
            return Err(NetError::io(format!("write {}", path.display()), e));
        }
        Ok(true)
    }

    pub fn release(&mut self, pod: &str) -> Result<Option<Ipv4Addr>, NetError> {
        let Some(ip) = self.lookup(pod) else { return Ok(None) };
        let path = self.dir.join(ip.to_string());
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(NetError::io(format!("remove {}", path.display()), e)),
        }
        self.by_ip.remove(&ip);
        self.by_pod.remove(pod);
        Ok(Some(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet() -> Ipv4Net {
        "10.244.1.0/29".parse().unwrap()
    }

    #[test]
    fn allocates_from_two_upward_and_reuses_per_pod() {
        let dir = tempfile::tempdir().unwrap();
        let mut ipam = Ipam::open(dir.path()).unwrap();
        assert_eq!(ipam.allocate("a", subnet()).unwrap(), Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(ipam.allocate("b", subnet()).unwrap(), Ipv4Addr::new(10, 244, 1, 3));
        assert_eq!(ipam.allocate("a", subnet()).unwrap(), Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(std::fs::read_to_string(dir.path().join("10.244.1.3")).unwrap(), "b");
    }

    #[test]
    fn survives_restart_and_releases() {
        let dir = tempfile::tempdir().unwrap();
        let mut ipam = Ipam::open(dir.path()).unwrap();
        ipam.allocate("a", subnet()).unwrap();
        let b = ipam.allocate("b", subnet()).unwrap();
        drop(ipam);
        let mut ipam = Ipam::open(dir.path()).unwrap();
        assert_eq!(ipam.allocate("b", subnet()).unwrap(), b);
        assert_eq!(ipam.release("a").unwrap(), Some(Ipv4Addr::new(10, 244, 1, 2)));
        assert_eq!(ipam.release("a").unwrap(), None);
        // The walk goes on after the last address handed out, also across a restart: a freed address is not
        // reused at once.
        assert_eq!(ipam.allocate("c", subnet()).unwrap(), Ipv4Addr::new(10, 244, 1, 4));
    }

    #[test]
    fn allocation_goes_round_the_subnet() {
        let dir = tempfile::tempdir().unwrap();
        let mut ipam = Ipam::open(dir.path()).unwrap();
        // /29: .2 ..= .6 are usable.
        for i in 0..5 {
            ipam.allocate(&format!("p{i}"), subnet()).unwrap();
        }
        ipam.release("p1").unwrap();
        ipam.release("p3").unwrap();
        assert_eq!(ipam.allocate("x", subnet()).unwrap(), Ipv4Addr::new(10, 244, 1, 3));
        assert_eq!(ipam.allocate("y", subnet()).unwrap(), Ipv4Addr::new(10, 244, 1, 5));
        assert!(matches!(ipam.allocate("z", subnet()), Err(NetError::Ipam(_))));
    }

    #[test]
    fn never_hands_out_an_ip_another_writer_claimed() {
        let dir = tempfile::tempdir().unwrap();
        let mut one = Ipam::open(dir.path()).unwrap();
        let mut two = Ipam::open(dir.path()).unwrap();
        let a = one.allocate("a", subnet()).unwrap();
        let b = two.allocate("b", subnet()).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn a_file_without_owner_stays_taken() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("10.244.1.2"), "").unwrap();
        let mut ipam = Ipam::open(dir.path()).unwrap();
        assert_eq!(ipam.allocate("a", subnet()).unwrap(), Ipv4Addr::new(10, 244, 1, 3));
        assert_eq!(ipam.lookup(""), None);
    }

    #[test]
    fn exhaustion_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut ipam = Ipam::open(dir.path()).unwrap();
        // /29: .2 ..= .6 are usable.
        for i in 0..5 {
            ipam.allocate(&format!("p{i}"), subnet()).unwrap();
        }
        assert!(matches!(ipam.allocate("x", subnet()), Err(NetError::Ipam(_))));
    }

    #[test]
    fn a_new_subnet_moves_the_pod() {
        let dir = tempfile::tempdir().unwrap();
        let mut ipam = Ipam::open(dir.path()).unwrap();
        ipam.allocate("a", subnet()).unwrap();
        let other: Ipv4Net = "10.244.2.0/24".parse().unwrap();
        assert_eq!(ipam.allocate("a", other).unwrap(), Ipv4Addr::new(10, 244, 2, 2));
        assert!(!dir.path().join("10.244.1.2").exists());
    }
}
