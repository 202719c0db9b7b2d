//! Everything the plan derives from the lab name and a node's or network's position: host-side interface
//! names, MACs, SSH ports and underlay addresses. These values are a lab's identity on the host (a running lab
//! is found and torn down by them), so a change here moves every existing lab and must bump `PLAN_VERSION`.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use sha2::Digest;

use crate::topology::validate::{FIRST_HOST_OFFSET, MAX_NODES};

/// SSH ports: each lab owns a block of `MAX_NODES` ports starting at `SSH_PORT_BASE + slot * MAX_NODES`,
/// slot = hash(lab) % `SSH_PORT_SLOTS`, so every port is in 10000..=32399: below Linux's ephemeral range
/// (32768-60999), where any outgoing connection on the host could be holding the port. Two labs may hash to
/// one slot; the provider checks that a port is free before it starts QEMU and fails with a clear message.
const SSH_PORT_BASE: u16 = 10000;
const SSH_PORT_SLOTS: u64 = 700;
/// The MAC byte that stands in for the network index in VTEP MACs (networks are numbered 0..8).
const VTEP_MAC_MARKER: u8 = 0xff;

const _: () = assert!(
    SSH_PORT_BASE as u64 + SSH_PORT_SLOTS * MAX_NODES as u64 <= 32768,
    "SSH port blocks must stay below the ephemeral port range"
);

/// Per-lab values derived from the lab name alone (sha256 of it), so that two labs on one host get
/// different names, MACs and ports without any shared registry.
pub(super) struct LabIds {
    /// 6 hex digits prefixing host-side interface names.
    short: String,
    /// Two bytes in every MAC of the lab.
    mac: [u8; 2],
    /// Which block of `MAX_NODES` SSH ports the lab owns.
    ssh_slot: u64,
}

impl LabIds {
    pub(super) fn of(lab: &str) -> LabIds {
        let h = sha2::Sha256::digest(lab.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&h[..8]);
        LabIds { short: hex::encode(&h[..3]), mac: [h[3], h[4]], ssh_slot: u64::from_be_bytes(first) % SSH_PORT_SLOTS }
    }

    /// Bridge of network `net` inside the lab netns: `tb<id>-br<net>` (12 characters).
    pub(super) fn bridge_name(&self, net: usize) -> String {
        format!("tb{}-br{net}", self.short)
    }

    /// Tap of node `node`'s guest NIC `eth<nic>`: `tb<id>-n<node>e<nic>` (at most 14 characters).
    pub(super) fn tap_name(&self, node: usize, nic: usize) -> String {
        format!("tb{}-n{node}e{nic}", self.short)
    }

    /// MAC of node `node`'s NIC on network `net`.
    pub(super) fn nic_mac(&self, net: usize, node: usize) -> String {
        self.mac(net as u8, node as u8)
    }

    /// MAC of node `node`'s VXLAN device; the marker byte keeps it apart from every NIC MAC.
    pub(super) fn vtep_mac(&self, node: usize) -> String {
        self.mac(VTEP_MAC_MARKER, node as u8)
    }

    /// Host port on 127.0.0.1 forwarded to node `node`'s SSH port.
    pub(super) fn ssh_port(&self, node: usize) -> u16 {
        SSH_PORT_BASE + (self.ssh_slot as u16) * (MAX_NODES as u16) + node as u16
    }

    /// `52:54:..`: locally administered (bit 1 of the first byte set), unicast (bit 0 clear), like QEMU's own.
    fn mac(&self, a: u8, b: u8) -> String {
        format!("52:54:{:02x}:{:02x}:{a:02x}:{b:02x}", self.mac[0], self.mac[1])
    }
}

/// Underlay address of node `index` on `net`: host address `FIRST_HOST_OFFSET + index`, so a node keeps its
/// address on every network and when nodes are appended.
pub(super) fn host_address(net: &Ipv4Net, index: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + FIRST_HOST_OFFSET + index as u32)
}
