//! The testbed GSO frame: how a whole TCP GSO packet (up to 64 KB) crosses the underlay as one UDP datagram,
//! which the sending kernel fragments and the receiving kernel reassembles. Under TCG the forwarder's per-byte
//! work costs more than anything else, and the frame needs none: the sender neither cuts the packet nor sums
//! its payload, the receiver writes it to the TUN as it arrived, and the TCP checksum stays partial from end to
//! end, as it does inside a vxlan packet (docs/architecture.md, "udp wire format").
//!
//! Layout: byte 0 is [`FRAME_TAG`] (high nibble 0xF, which is no IP version, so a frame is never mistaken for
//! flannel's raw IPv4 datagrams; low nibble the format version), byte 1 is 0, bytes 2..12 the
//! `virtio_net_hdr` in little-endian order, then the IPv4 packet.

use super::gso::{VnetHdr, F_NEEDS_CSUM, GSO_TCPV4, VNET_HDR_LEN};

/// First byte of a frame: format version 1.
pub const FRAME_TAG: u8 = 0xF1;
/// Tag, reserved byte and `virtio_net_hdr`.
pub const FRAME_HDR_LEN: usize = 2 + VNET_HDR_LEN;

/// Whether the frame format carries the packet the TUN handed over with `hdr`: TCP/IPv4 GSO with a partial
/// checksum, the only offload the forwarder asks the TUN for. Everything else goes raw, as flannel sends it.
pub fn carries(hdr: &VnetHdr) -> bool {
    hdr.gso_type == GSO_TCPV4 && hdr.flags == F_NEEDS_CSUM && hdr.gso_size > 0
}

/// The bytes that precede the packet in a frame.
pub fn header(hdr: &VnetHdr) -> [u8; FRAME_HDR_LEN] {
    let mut b = [0u8; FRAME_HDR_LEN];
    b[0] = FRAME_TAG;
    b[2] = hdr.flags;
    b[3] = hdr.gso_type;
    for (i, v) in [hdr.hdr_len, hdr.gso_size, hdr.csum_start, hdr.csum_offset].into_iter().enumerate() {
        b[4 + 2 * i..6 + 2 * i].copy_from_slice(&v.to_le_bytes());
    }
    b
}

/// Turns a received frame into what the TUN takes (its `virtio_net_hdr` in host order, then the packet), in
/// place, and returns that part of `dgram`. `None`: not a frame of this version or not what [`carries`] sends,
/// which is dropped as a malformed datagram is.
pub fn open(dgram: &mut [u8]) -> Option<&[u8]> {
    if dgram.len() < FRAME_HDR_LEN + 20 || dgram[0] != FRAME_TAG || dgram[1] != 0 {
        return None;
    }
    let le = |i: usize| u16::from_le_bytes([dgram[i], dgram[i + 1]]);
    let hdr = VnetHdr {
        flags: dgram[2],
        gso_type: dgram[3],
        hdr_len: le(4),
        gso_size: le(6),
        csum_start: le(8),
        csum_offset: le(10),
    };
    if !carries(&hdr) || dgram[FRAME_HDR_LEN] >> 4 != 4 {
        return None;
    }
    dgram[2..FRAME_HDR_LEN].copy_from_slice(&hdr.to_bytes());
    Some(&dgram[2..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gso_hdr() -> VnetHdr {
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 52,
            gso_size: 1420,
            csum_start: 20,
            csum_offset: 16,
        }
    }

    #[test]
    fn the_wire_header_is_little_endian_whatever_the_host() {
        assert_eq!(header(&gso_hdr()), [0xF1, 0, 1, 1, 52, 0, 0x8c, 0x05, 20, 0, 16, 0]);
    }

    #[test]
    fn a_frame_opens_to_the_tun_header_and_the_packet() {
        let pkt: Vec<u8> = [0x45].into_iter().chain((1..3000).map(|i| i as u8)).collect();
        let mut dgram = header(&gso_hdr()).to_vec();
        dgram.extend_from_slice(&pkt);
        let tun = open(&mut dgram).expect("frame").to_vec();
        assert_eq!(tun[..VNET_HDR_LEN], gso_hdr().to_bytes());
        assert_eq!(&tun[VNET_HDR_LEN..], &pkt[..]);
    }

    #[test]
    fn raw_packets_other_versions_and_other_offloads_are_no_frames() {
        let mut pkt = vec![0x45u8; 100];
        assert!(!carries(&VnetHdr::default()), "a packet without offload goes raw");
        assert_eq!(open(&mut pkt.clone()), None, "flannel's raw IPv4");
        let mut v2 = header(&gso_hdr()).to_vec();
        v2[0] = 0xF2;
        v2.append(&mut pkt.clone());
        assert_eq!(open(&mut v2), None, "a later format version");
        let udp_gso = VnetHdr { gso_type: 5, ..gso_hdr() };
        assert!(!carries(&udp_gso));
        let mut other = header(&udp_gso).to_vec();
        other.append(&mut pkt);
        assert_eq!(open(&mut other), None, "an offload the forwarder never sends");
        assert_eq!(open(&mut header(&gso_hdr())), None, "no packet");
    }
}
