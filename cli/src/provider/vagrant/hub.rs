//! The Vagrant lab's multi-access underlay: a QEMU UDP socket NIC (`-netdev socket,udp=`) is point to point, so
//! a network of more than two nodes gets a hub, `testbed vagrant-hub --lab LAB` (hidden), a detached process of
//! the lab: one UDP socket on 127.0.0.1 per such network, which repeats each frame a member's NIC sends to every
//! other member (as a hub does; each NIC drops what is not for its MAC). It takes frames only from the members'
//! own ports, which the plan gives, so nothing else on loopback can put a frame on a segment, and it sends only
//! to them: nothing leaves 127.0.0.1. Its ports, PID and start time are in `<lab dir>/vagrant/hub.json`; the
//! Vagrantfile points those networks' NICs at its ports, and `down` stops it by PID while its start time and
//! command line still match.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::lab::LabDir;
use crate::plan::Plan;
use crate::provider::qemu::procs;

use super::VagrantError;

/// The hidden subcommand (also what `down` looks for in the process's command line).
pub const SUBCOMMAND: &str = "vagrant-hub";

/// What `up` recorded about the running hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubRecord {
    pub pid: u32,
    /// Field 22 of /proc/<pid>/stat at start.
    pub start_time: u64,
    /// Each hubbed network's port on 127.0.0.1.
    pub ports: BTreeMap<String, u16>,
}

fn record_path(dir: &LabDir) -> PathBuf {
    dir.root.join("vagrant").join("hub.json")
}

/// The UDP port of `node`'s `k`-th NIC on 127.0.0.1: its SSH port (TCP, lab-unique) reused as a UDP number,
/// plus 1000 per further NIC. The Vagrantfile's `udp_port` is the same rule.
pub fn member_port(ssh_port: u16, k: usize) -> u16 {
    ssh_port + 1000 * k as u16
}

/// The networks of `plan` with more than two members, each with its members' ports.
pub fn hubbed_networks(plan: &Plan) -> BTreeMap<String, Vec<u16>> {
    let mut members: BTreeMap<String, Vec<u16>> = BTreeMap::new();
    for node in &plan.nodes {
        for (k, nic) in node.nics.iter().enumerate() {
            members.entry(nic.network.clone()).or_default().push(member_port(node.ssh_port, k));
        }
    }
    members.retain(|_, ports| ports.len() > 2);
    members
}

fn read_record(dir: &LabDir) -> Option<HubRecord> {
    serde_json::from_slice(&std::fs::read(record_path(dir)).ok()?).ok()
}

fn is_running(dir: &LabDir, rec: &HubRecord) -> bool {
    procs::is_same_process(rec.pid, rec.start_time)
        && procs::argv(rec.pid).is_some_and(|a| {
            a.iter().any(|x| x == SUBCOMMAND) && a.windows(2).any(|w| w[0] == "--lab" && w[1] == dir.name)
        })
}

/// Stops the lab's hub when it runs and forgets it; returns its PID when one ran.
pub fn stop(dir: &LabDir) -> Result<Option<u32>, VagrantError> {
    let Some(rec) = read_record(dir) else { return Ok(None) };
    let mut stopped = None;
    if is_running(dir, &rec) {
        procs::terminate(rec.pid, rec.start_time, Duration::from_secs(2));
        if is_running(dir, &rec) {
            return Err(VagrantError::Survivor { domain: format!("{SUBCOMMAND} of lab {}", dir.name), pid: rec.pid });
        }
        stopped = Some(rec.pid);
    }
    match std::fs::remove_file(record_path(dir)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(VagrantError::Io { what: format!("remove {}", record_path(dir).display()), source: e })
        }
        _ => Ok(stopped),
    }
}

/// A hub for the lab's plan in place of the one that runs (on the ports it had: the running machines send to
/// them), or none when no network has more than two nodes. Returns the ports.
pub fn restart(dir: &LabDir, plan: &Plan) -> Result<BTreeMap<String, u16>, VagrantError> {
    let previous = read_record(dir).map(|r| r.ports).unwrap_or_default();
    stop(dir)?;
    if hubbed_networks(plan).is_empty() {
        return Ok(BTreeMap::new());
    }
    let exe = std::env::current_exe().map_err(VagrantError::io("find the testbed executable"))?;
    let log = dir.root.join("vagrant").join("hub.log");
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(VagrantError::io(format!("open {}", log.display())))?;
    let mut cmd = Command::new(exe);
    cmd.args([SUBCOMMAND, "--lab", &dir.name]).env("TESTBED_STATE_DIR", &dir.state_root);
    for (net, port) in &previous {
        cmd.args(["--port", &format!("{net}={port}")]);
    }
    use std::os::unix::process::CommandExt;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .process_group(0)
        .spawn()
        .map_err(VagrantError::io(format!("start `testbed {SUBCOMMAND}`")))?;
    let mut line = String::new();
    let read = child.stdout.take().map(|out| BufReader::new(out).read_line(&mut line));
    let ports: Option<BTreeMap<String, u16>> = match read {
        Some(Ok(_)) => serde_json::from_str(line.trim()).ok(),
        _ => None,
    };
    let (Some(ports), Some(start_time)) = (ports, procs::start_time(child.id())) else {
        // Our own child, not reaped yet: its PID cannot have been reused.
        let _ = child.kill();
        let _ = child.wait();
        let tail = crate::lab::dir::log_tail(&log, 1000);
        return Err(VagrantError::Io {
            what: format!("`testbed {SUBCOMMAND}` announced no ports; {}: {}", log.display(), tail.trim()),
            source: std::io::Error::other("no ports"),
        });
    };
    let rec = HubRecord { pid: child.id(), start_time, ports: ports.clone() };
    let path = record_path(dir);
    std::fs::write(&path, serde_json::to_vec(&rec).unwrap_or_default())
        .map_err(VagrantError::io(format!("write {}", path.display())))?;
    Ok(ports)
}

/// The hub itself: binds each hubbed network's socket (on `ports` where given, else any free port), prints the
/// ports as one JSON line, then repeats frames until it is signalled.
pub fn run(plan: &Plan, ports: &BTreeMap<String, u16>) -> std::io::Result<()> {
    let mut sockets = Vec::new();
    let mut bound = BTreeMap::new();
    for (net, members) in hubbed_networks(plan) {
        let socket = UdpSocket::bind(("127.0.0.1", ports.get(&net).copied().unwrap_or(0)))?;
        bound.insert(net.clone(), socket.local_addr()?.port());
        sockets.push((net, socket, members));
    }
    println!("{}", serde_json::to_string(&bound).map_err(std::io::Error::other)?);
    let threads: Vec<_> = sockets
        .into_iter()
        .map(|(net, socket, members)| std::thread::spawn(move || repeat(&net, &socket, &members)))
        .collect();
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// One segment: every frame from a member to every other member.
fn repeat(net: &str, socket: &UdpSocket, members: &[u16]) {
    let mut frame = vec![0u8; 65536];
    let mut refused = 0u64;
    let mut last_report = Instant::now();
    loop {
        let Ok((len, from)) = socket.recv_from(&mut frame) else { continue };
        let is_member = matches!(from, SocketAddr::V4(a) if a.ip().is_loopback() && members.contains(&a.port()));
        if !is_member {
            refused += 1;
            if last_report.elapsed() > Duration::from_secs(10) {
                eprintln!("vagrant-hub {net}: {refused} frame(s) from non-members dropped (last from {from})");
                last_report = Instant::now();
            }
            continue;
        }
        for port in members.iter().filter(|p| **p != from.port()) {
            let _ = socket.send_to(&frame[..len], ("127.0.0.1", *port));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::fixtures::test_plan;

    #[test]
    fn only_networks_of_more_than_two_nodes_are_hubbed() {
        let mut plan = test_plan();
        assert!(hubbed_networks(&plan).is_empty());
        let mut third = plan.nodes[1].clone();
        third.name = "n3".into();
        third.ssh_port += 1;
        plan.nodes.push(third);
        let hubbed = hubbed_networks(&plan);
        let ports: Vec<u16> = plan.nodes.iter().map(|n| n.ssh_port).collect();
        assert_eq!(hubbed.into_iter().collect::<Vec<_>>(), vec![(plan.networks[0].name.clone(), ports)]);
    }

    /// Three members on loopback through a real hub socket: a frame reaches both others, never its sender, and
    /// a stranger's frame reaches nobody.
    #[test]
    fn a_frame_reaches_every_other_member_and_a_strangers_none() {
        let members: Vec<UdpSocket> = (0..3).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        let ports: Vec<u16> = members.iter().map(|s| s.local_addr().unwrap().port()).collect();
        let hub = UdpSocket::bind("127.0.0.1:0").unwrap();
        let hub_port = hub.local_addr().unwrap().port();
        let p = ports.clone();
        std::thread::spawn(move || repeat("t", &hub, &p));
        for s in &members {
            s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        }
        members[0].send_to(b"frame", ("127.0.0.1", hub_port)).unwrap();
        let mut buf = [0u8; 16];
        for s in &members[1..] {
            let (n, from) = s.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], from.port()), (&b"frame"[..], hub_port));
        }
        assert!(members[0].recv_from(&mut buf).is_err(), "the sender got its own frame back");
        let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
        stranger.send_to(b"intruder", ("127.0.0.1", hub_port)).unwrap();
        for s in &members {
            assert!(s.recv_from(&mut buf).is_err(), "a stranger's frame was repeated");
        }
    }
}
