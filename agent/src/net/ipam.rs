//! Pod IP allocation from the node subnet, persisted like CNI's host-local plugin: one file per allocated IP
//! (`<state_dir>/ipam/10.244.1.2`) holding the pod name. A file appears atomically with its content (written
//! to a temporary name, then hard-linked: `link(2)` fails if the IP is taken), so an IP is never handed out
//! twice and the same pod finds its IP again after an agent restart.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

use super::NetError;

pub struct Ipam {
    dir: PathBuf,
    /// Mirror of the directory, loaded once, so allocation needs no directory scan.
    by_ip: BTreeMap<Ipv4Addr, String>,
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
        Ok(Ipam { dir: dir.to_path_buf(), by_ip })
    }

    pub fn lookup(&self, pod: &str) -> Option<Ipv4Addr> {
        self.by_ip.iter().find(|(_, p)| p.as_str() == pod).map(|(ip, _)| *ip)
    }

    /// The pod's IP: its existing one if it lies in `subnet`, else the lowest free address from `.2` up
    /// (`.0` is flannel's device address, `.1` the bridge, the last the broadcast address).
    pub fn allocate(&mut self, pod: &str, subnet: Ipv4Net) -> Result<Ipv4Addr, NetError> {
        if let Some(ip) = self.lookup(pod) {
            if subnet.contains(&ip) {
                return Ok(ip);
            }
            self.release(pod)?;
        }
        let first = u32::from(subnet.network()) + 2;
        let last = u32::from(subnet.broadcast()).saturating_sub(1);
        for n in first..=last {
            let ip = Ipv4Addr::from(n);
            if self.by_ip.contains_key(&ip) {
                continue;
            }
            if self.claim(ip, pod)? {
                self.by_ip.insert(ip, pod.to_string());
                return Ok(ip);
            }
        }
        Err(NetError::Ipam(format!("no free address left in {subnet} for pod {pod}")))
    }

    /// Creates the IP's file; false if another writer holds it already.
    fn claim(&self, ip: Ipv4Addr, pod: &str) -> Result<bool, NetError> {
        let path = self.dir.join(ip.to_string());
        let tmp = self.dir.join(format!(".tmp-{ip}-{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(pod.as_bytes())?;
            f.sync_all()
        };
        write().map_err(|e| NetError::io(format!("write {}", tmp.display()), e))?;
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(NetError::io(format!("link {}", path.display()), e)),
        }
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
        assert_eq!(ipam.allocate("c", subnet()).unwrap(), Ipv4Addr::new(10, 244, 1, 2));
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
