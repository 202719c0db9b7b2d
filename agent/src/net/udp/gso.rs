//! The TUN offloads done in userspace, so that the forwarder handles one 64 KB TCP segment per syscall instead
//! of one MTU-sized packet, while the wire keeps flannel's format (one IP packet of at most the pod MTU per UDP
//! datagram, with its own valid checksums).
//!
//! - Out (TUN -> wire): `flannel0` hands us TCP/IPv4 GSO packets (`virtio_net_hdr` + up to 64 KB). They are cut
//!   here into the packets the kernel would have sent (same headers, sequence numbers and checksums) and go out
//!   as one UDP GSO send, which the kernel splits into one datagram per packet.
//! - In (wire -> TUN): consecutive TCP packets of one flow, as UDP GRO or a drained socket delivers them, are
//!   merged back into one GSO packet and written to the TUN once.

/// Size of `struct virtio_net_hdr`, which precedes every packet on a TUN opened with `IFF_VNET_HDR`.
pub const VNET_HDR_LEN: usize = 10;
const F_NEEDS_CSUM: u8 = 1;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_CWR: u8 = 0x80;
const IPPROTO_TCP: u8 = 6;
/// The largest IPv4 packet (total length is 16 bits).
const MAX_IP_LEN: usize = 65535;

/// `struct virtio_net_hdr`; the TUN uses the host's byte order (no TUNSETVNETBE/LE here).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn parse(b: &[u8; VNET_HDR_LEN]) -> VnetHdr {
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        }
    }

    pub fn to_bytes(self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        for (i, v) in [self.hdr_len, self.gso_size, self.csum_start, self.csum_offset].into_iter().enumerate() {
            b[2 + 2 * i..4 + 2 * i].copy_from_slice(&v.to_ne_bytes());
        }
        b
    }
}

/// One's complement sum (RFC 1071) of `data` added to `acc`, unfolded. Words are read in the host's byte order,
/// which is correct as long as the result is stored in the same order (`finish`/`partial`) and every piece
/// summed separately starts at an even offset of the checksummed range. 8 bytes per step: under TCG every
/// instruction counts.
fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut add = |w: u64| {
        let (s, carry) = acc.overflowing_add(w);
        acc = s + u64::from(carry);
    };
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        add(u64::from_ne_bytes(b));
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        // Zero padding at the end, as RFC 1071 pads an odd last byte.
        let mut b = [0u8; 8];
        b[..rest.len()].copy_from_slice(rest);
        add(u64::from_ne_bytes(b));
    }
    acc
}

fn fold(mut acc: u64) -> u16 {
    for _ in 0..2 {
        acc = (acc & 0xffff_ffff) + (acc >> 32);
    }
    for _ in 0..3 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum field's bytes for a sum over the whole checksummed range.
fn finish(acc: u64) -> [u8; 2] {
    (!fold(acc)).to_ne_bytes()
}

/// TCP/UDP pseudo-header sum (RFC 793): source, destination, protocol, transport length.
fn pseudo(ip: &[u8], proto: u8, len: usize) -> u64 {
    let mut p = [0u8; 12];
    p[..8].copy_from_slice(&ip[12..20]);
    p[9] = proto;
    p[10..12].copy_from_slice(&(len as u16).to_be_bytes());
    sum(&p, 0)
}

fn set_ip_checksum(ip: &mut [u8], ihl: usize) {
    ip[10..12].fill(0);
    let c = finish(sum(&ip[..ihl], 0));
    ip[10..12].copy_from_slice(&c);
}

/// Completes a checksum the kernel left partial (`VIRTIO_NET_HDR_F_NEEDS_CSUM`): the field holds the
/// pseudo-header sum, the rest is summed from `start` to the end. A flannel peer writes packets to its TUN
/// without offload metadata, so every packet on the wire must carry its final checksum. False: out of bounds.
fn complete_checksum(pkt: &mut [u8], start: usize, offset: usize) -> bool {
    let at = start + offset;
    if at + 2 > pkt.len() {
        return false;
    }
    let c = finish(sum(&pkt[start..], 0));
    pkt[at..at + 2].copy_from_slice(&c);
    true
}

/// Offsets of an IPv4/TCP packet without IP fragmentation: IP header length, IP+TCP header length.
fn tcp4_headers(pkt: &[u8]) -> Option<(usize, usize)> {
    if pkt.len() < 40 || pkt[0] >> 4 != 4 || pkt[9] != IPPROTO_TCP {
        return None;
    }
    let ihl = usize::from(pkt[0] & 0xf) * 4;
    let frag = u16::from_be_bytes([pkt[6], pkt[7]]);
    if ihl < 20 || frag & 0x3fff != 0 || pkt.len() < ihl + 20 {
        return None;
    }
    let hlen = ihl + usize::from(pkt[ihl + 12] >> 4) * 4;
    (hlen >= ihl + 20 && hlen <= pkt.len()).then_some((ihl, hlen))
}

/// What `prepare_out` made of a packet read from the TUN.
#[derive(Debug, PartialEq, Eq)]
pub enum Out {
    /// Send `pkt` as it is (its checksum completed if it was partial).
    Whole,
    /// TCP segmentation: segment `i` is `headers[i * hlen..][..hlen]` followed by
    /// `pkt[hlen + i * mss..]` (at most `mss` bytes); every segment but the last has exactly `mss`.
    Segments { hlen: usize, mss: usize, count: usize },
    /// Malformed or an offload we did not ask for: drop.
    Drop,
}

/// Makes wire packets of one TUN read (`hdr`, `pkt`). For GSO, the per-segment headers go to `headers`; the
/// payload stays where it is, so sending needs no copy of it.
pub fn prepare_out(hdr: VnetHdr, pkt: &mut [u8], headers: &mut Vec<u8>) -> Out {
    match hdr.gso_type {
        GSO_NONE => {
            if hdr.flags & F_NEEDS_CSUM != 0
                && !complete_checksum(pkt, usize::from(hdr.csum_start), usize::from(hdr.csum_offset))
            {
                return Out::Drop;
            }
            Out::Whole
        }
        GSO_TCPV4 => segment_tcp4(pkt, usize::from(hdr.gso_size), headers),
        _ => Out::Drop,
    }
}

fn segment_tcp4(pkt: &[u8], mss: usize, headers: &mut Vec<u8>) -> Out {
    let Some((ihl, hlen)) = tcp4_headers(pkt) else { return Out::Drop };
    let payload = pkt.len() - hlen;
    if mss == 0 || payload == 0 {
        return Out::Drop;
    }
    let count = payload.div_ceil(mss);
    let id0 = u16::from_be_bytes([pkt[4], pkt[5]]);
    let seq0 = u32::from_be_bytes([pkt[ihl + 4], pkt[ihl + 5], pkt[ihl + 6], pkt[ihl + 7]]);
    let flags0 = pkt[ihl + 13];
    headers.clear();
    for i in 0..count {
        let start = hlen + i * mss;
        let len = mss.min(pkt.len() - start);
        let at = headers.len();
        headers.extend_from_slice(&pkt[..hlen]);
        let h = &mut headers[at..];
        h[2..4].copy_from_slice(&((hlen + len) as u16).to_be_bytes());
        // The kernel's own segmentation numbers the IDs of a TSO burst consecutively; so do we.
        h[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
        set_ip_checksum(h, ihl);
        let tcp = &mut h[ihl..hlen];
        tcp[4..8].copy_from_slice(&seq0.wrapping_add((i * mss) as u32).to_be_bytes());
        let mut flags = flags0;
        if i + 1 < count {
            flags &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            flags &= !TCP_CWR;
        }
        tcp[13] = flags;
        tcp[16..18].fill(0);
        let acc = pseudo(&h[..ihl], IPPROTO_TCP, hlen - ihl + len);
        let acc = sum(&pkt[start..start + len], sum(&h[ihl..hlen], acc));
        h[ihl + 16..ihl + 18].copy_from_slice(&finish(acc));
    }
    Out::Segments { hlen, mss, count }
}

/// Merges consecutive TCP/IPv4 packets of each flow into GSO packets for the TUN, the way the kernel's GRO
/// would. `out` receives, per packet to write, its `virtio_net_hdr` and bytes; `ends` the end offset of each
/// in `out`. Packets that cannot merge are passed through with an empty header (the kernel checks them).
/// Several flows keep a run open at once, as GRO keeps one per flow: with one run, the interleaved segments of
/// parallel streams broke each other's runs and were written one by one. Order is kept within a flow only.
#[derive(Default)]
pub struct Coalescer {
    pub out: Vec<u8>,
    pub ends: Vec<usize>,
    /// Open merge runs, oldest first.
    runs: Vec<Run>,
    /// Buffers of closed runs, kept for the next ones.
    spare: Vec<Vec<u8>>,
}

/// Open runs at most, as GRO's per-NAPI bucket limit; the oldest is closed to make room.
const MAX_RUNS: usize = 8;

struct Run {
    /// The run's `virtio_net_hdr` (filled when it closes) and its packet so far.
    buf: Vec<u8>,
    ihl: usize,
    hlen: usize,
    mss: usize,
    next_seq: u32,
    /// The last merged packet was shorter than `mss` or carried PSH: nothing may follow it.
    closed: bool,
}

impl Run {
    fn packet(&self) -> &[u8] {
        &self.buf[VNET_HDR_LEN..]
    }

    /// Same flow: addresses and ports.
    fn is_flow_of(&self, pkt: &[u8], ihl: usize) -> bool {
        let first = self.packet();
        first[12..20] == pkt[12..20] && first[self.ihl..self.ihl + 4] == pkt[ihl..ihl + 4]
    }
}

impl Coalescer {
    pub fn clear(&mut self) {
        self.out.clear();
        self.ends.clear();
        let spare = &mut self.spare;
        spare.extend(self.runs.drain(..).map(|r| r.buf));
    }

    pub fn push(&mut self, pkt: &[u8]) {
        if let Some(tcp) = tcp4_headers(pkt) {
            let (ihl, hlen) = tcp;
            if let Some(i) = self.runs.iter().position(|r| r.is_flow_of(pkt, ihl)) {
                if try_merge(&mut self.runs[i], pkt, tcp) {
                    return;
                }
                self.close_run(i);
            }
            let flags = pkt[ihl + 13];
            let payload = pkt.len() - hlen;
            // Only plain data segments start a run: SYN/FIN/RST/URG/ECN go through alone, as GRO does.
            if flags & !TCP_PSH == TCP_ACK && payload > 0 {
                if self.runs.len() == MAX_RUNS {
                    self.close_run(0);
                }
                let mut buf = self.spare.pop().unwrap_or_default();
                buf.clear();
                buf.extend_from_slice(&[0u8; VNET_HDR_LEN]);
                buf.extend_from_slice(pkt);
                let seq = u32::from_be_bytes([pkt[ihl + 4], pkt[ihl + 5], pkt[ihl + 6], pkt[ihl + 7]]);
                self.runs.push(Run {
                    buf,
                    ihl,
                    hlen,
                    mss: payload,
                    next_seq: seq.wrapping_add(payload as u32),
                    closed: flags & TCP_PSH != 0,
                });
                return;
            }
        }
        self.out.extend_from_slice(&[0u8; VNET_HDR_LEN]);
        self.out.extend_from_slice(pkt);
        self.ends.push(self.out.len());
    }

    /// Ends run `i`: a run of one packet is written as it came; a longer one becomes a GSO packet with a
    /// partial checksum, which the receiving stack takes as verified (the UDP checksum covered each part on
    /// the wire).
    fn close_run(&mut self, i: usize) {
        let mut run = self.runs.remove(i);
        let (ihl, hlen, mss) = (run.ihl, run.hlen, run.mss);
        let pkt = &mut run.buf[VNET_HDR_LEN..];
        let len = pkt.len();
        if len - hlen > mss {
            pkt[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            set_ip_checksum(pkt, ihl);
            let partial = fold(pseudo(pkt, IPPROTO_TCP, len - ihl));
            pkt[ihl + 16..ihl + 18].copy_from_slice(&partial.to_ne_bytes());
            let hdr = VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: GSO_TCPV4,
                hdr_len: hlen as u16,
                gso_size: mss as u16,
                csum_start: ihl as u16,
                csum_offset: 16,
            };
            run.buf[..VNET_HDR_LEN].copy_from_slice(&hdr.to_bytes());
        }
        self.out.extend_from_slice(&run.buf);
        self.ends.push(self.out.len());
        self.spare.push(run.buf);
    }

    /// Closes the open runs; `out`/`ends` are then complete.
    pub fn finish(&mut self) {
        while !self.runs.is_empty() {
            self.close_run(0);
        }
    }
}

/// Appends `pkt` to `run` when GRO would: the next segment of the same flow, same headers, no flags.
fn try_merge(run: &mut Run, pkt: &[u8], (ihl, hlen): (usize, usize)) -> bool {
    let first = run.packet();
    let payload = pkt.len() - hlen;
    let flags = pkt[ihl + 13];
    let seq = u32::from_be_bytes([pkt[ihl + 4], pkt[ihl + 5], pkt[ihl + 6], pkt[ihl + 7]]);
    let fits = first.len() + payload <= MAX_IP_LEN;
    // Same IP header apart from length, ID and checksum (TOS, DF, TTL, protocol, addresses, options);
    // same TCP header apart from sequence number, PSH and checksum (ports, ack, window, options).
    let same_ip =
        ihl == run.ihl && first[..2] == pkt[..2] && first[6..10] == pkt[6..10] && first[12..ihl] == pkt[12..ihl];
    let (t0, t1) = (&first[ihl..run.hlen], &pkt[ihl..hlen]);
    let same_tcp = hlen == run.hlen
        && t0[..4] == t1[..4]
        && t0[8..13] == t1[8..13]
        && t0[14..16] == t1[14..16]
        && t0[18..] == t1[18..];
    if run.closed
        || !fits
        || !same_ip
        || !same_tcp
        || flags & !TCP_PSH != TCP_ACK
        || seq != run.next_seq
        || payload == 0
        || payload > run.mss
    {
        return false;
    }
    run.buf.extend_from_slice(&pkt[hlen..]);
    run.next_seq = seq.wrapping_add(payload as u32);
    run.closed = payload < run.mss || flags & TCP_PSH != 0;
    if flags & TCP_PSH != 0 {
        run.buf[VNET_HDR_LEN + ihl + 13] |= TCP_PSH;
    }
    true
}

#[cfg(test)]
#[path = "gso_tests.rs"]
mod tests;
