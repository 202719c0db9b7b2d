use super::*;

/// A TCP/IPv4 packet 10.244.1.2:40000 -> 10.244.2.2:5201 with timestamps (hlen 52) and valid checksums.
fn tcp_packet(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 52];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&((52 + payload.len()) as u16).to_be_bytes());
    p[4..6].copy_from_slice(&7u16.to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = IPPROTO_TCP;
    p[12..16].copy_from_slice(&[10, 244, 1, 2]);
    p[16..20].copy_from_slice(&[10, 244, 2, 2]);
    let t = &mut p[20..];
    t[0..2].copy_from_slice(&40000u16.to_be_bytes());
    t[2..4].copy_from_slice(&5201u16.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&99u32.to_be_bytes());
    t[12] = 8 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&502u16.to_be_bytes());
    t[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
    p.extend_from_slice(payload);
    set_ip_checksum(&mut p, 20);
    let acc = sum(&p[20..], pseudo(&p, IPPROTO_TCP, p.len() - 20));
    p[36..38].copy_from_slice(&finish(acc));
    p
}

/// Independent check: a correct checksum makes the sum over the covered range fold to 0xffff.
fn checksums_ok(p: &[u8]) -> bool {
    fold(sum(&p[..20], 0)) == 0xffff && fold(sum(&p[20..], pseudo(p, IPPROTO_TCP, p.len() - 20))) == 0xffff
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn checksum_matches_a_known_ipv4_header() {
    let mut h = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0, 0, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00,
        0xc7,
    ];
    set_ip_checksum(&mut h, 20);
    assert_eq!(h[10..12], [0xb8, 0x61]);
}

#[test]
fn vnet_header_round_trips() {
    let h = VnetHdr { flags: 1, gso_type: 1, hdr_len: 52, gso_size: 1420, csum_start: 20, csum_offset: 16 };
    assert_eq!(VnetHdr::parse(&h.to_bytes()), h);
}

#[test]
fn a_gso_packet_becomes_the_wire_packets_the_kernel_would_send() {
    let data = payload(4000);
    // The kernel hands over a GSO packet whose TCP checksum is partial; segmentation recomputes it anyway.
    let mut gso = tcp_packet(1000, TCP_ACK | TCP_PSH, &data);
    let hdr = VnetHdr { flags: F_NEEDS_CSUM, gso_type: GSO_TCPV4, hdr_len: 52, gso_size: 1420, ..Default::default() };
    let mut headers = Vec::new();
    let out = prepare_out(hdr, &mut gso, &mut headers);
    assert_eq!(out, Out::Segments { hlen: 52, mss: 1420, count: 3 });
    let mut joined = Vec::new();
    for i in 0..3 {
        let start = 52 + i * 1420;
        let body = &gso[start..(start + 1420).min(gso.len())];
        let mut seg = headers[i * 52..(i + 1) * 52].to_vec();
        seg.extend_from_slice(body);
        assert!(seg.len() <= 1472, "segment {i} is {} bytes, above the pod MTU", seg.len());
        assert!(checksums_ok(&seg), "segment {i}");
        assert_eq!(usize::from(u16::from_be_bytes([seg[2], seg[3]])), seg.len());
        assert_eq!(u32::from_be_bytes([seg[24], seg[25], seg[26], seg[27]]), 1000 + (i * 1420) as u32);
        assert_eq!(u16::from_be_bytes([seg[4], seg[5]]), 7 + i as u16);
        // PSH only on the last segment, as the kernel's segmentation does.
        assert_eq!(seg[33] & TCP_PSH != 0, i == 2, "segment {i}");
        joined.extend_from_slice(body);
    }
    assert_eq!(joined, data);
}

#[test]
fn a_partial_checksum_is_completed_before_the_wire() {
    let mut p = tcp_packet(1, TCP_ACK, &payload(301));
    let good = p.clone();
    // What the kernel leaves with CHECKSUM_PARTIAL: the pseudo-header sum, not complemented.
    let partial = fold(pseudo(&p, IPPROTO_TCP, p.len() - 20));
    p[36..38].copy_from_slice(&partial.to_ne_bytes());
    let hdr = VnetHdr { flags: F_NEEDS_CSUM, csum_start: 20, csum_offset: 16, ..Default::default() };
    assert_eq!(prepare_out(hdr, &mut p, &mut Vec::new()), Out::Whole);
    assert_eq!(p, good);
    let bad = VnetHdr { flags: F_NEEDS_CSUM, csum_start: 20, csum_offset: 400, ..Default::default() };
    assert_eq!(prepare_out(bad, &mut p, &mut Vec::new()), Out::Drop);
    let udp_gso = VnetHdr { gso_type: 3, ..Default::default() };
    assert_eq!(prepare_out(udp_gso, &mut p, &mut Vec::new()), Out::Drop);
}

#[test]
fn consecutive_segments_of_a_flow_merge_into_one_gso_write() {
    let data = payload(5000);
    let segs: Vec<Vec<u8>> = data
        .chunks(1420)
        .enumerate()
        .map(|(i, c)| tcp_packet(1000 + (i * 1420) as u32, if i == 3 { TCP_ACK | TCP_PSH } else { TCP_ACK }, c))
        .collect();
    let mut c = Coalescer::default();
    for s in &segs {
        c.push(s);
    }
    // A packet of another kind after the run: written alone, unmerged.
    let fin = tcp_packet(1000 + 5000, TCP_ACK | TCP_FIN, &[]);
    c.push(&fin);
    c.finish();
    assert_eq!(c.ends.len(), 2);
    let first = &c.out[..c.ends[0]];
    let hdr = VnetHdr::parse(first[..VNET_HDR_LEN].try_into().unwrap());
    assert_eq!(
        hdr,
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 52,
            gso_size: 1420,
            csum_start: 20,
            csum_offset: 16
        }
    );
    let merged = &first[VNET_HDR_LEN..];
    assert_eq!(&merged[52..], &data[..]);
    assert_eq!(usize::from(u16::from_be_bytes([merged[2], merged[3]])), merged.len());
    assert_eq!(merged[33], TCP_ACK | TCP_PSH);
    assert_eq!(fold(sum(&merged[..20], 0)), 0xffff);
    assert_eq!(c.out[c.ends[0]..c.ends[0] + VNET_HDR_LEN], [0u8; VNET_HDR_LEN]);
    assert_eq!(&c.out[c.ends[0] + VNET_HDR_LEN..c.ends[1]], &fin[..]);
}

#[test]
fn packets_that_gro_would_not_merge_pass_through_unchanged() {
    let a = tcp_packet(1000, TCP_ACK, &payload(1420));
    let gap = tcp_packet(5000, TCP_ACK, &payload(1420));
    let mut other_flow = tcp_packet(6420, TCP_ACK, &payload(1420));
    other_flow[19] = 3;
    // A run's segment size is its first packet's payload: a larger one cannot follow.
    let short_then = [tcp_packet(9000, TCP_ACK, &payload(100)), tcp_packet(9100, TCP_ACK, &payload(200))];
    let icmp = {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[9] = 1;
        p
    };
    let all = [&a, &gap, &other_flow, &short_then[0], &short_then[1], &icmp];
    let mut c = Coalescer::default();
    for p in all {
        c.push(p);
    }
    c.finish();
    let written = writes(&c);
    assert!(written.iter().all(|(hdr, _)| *hdr == [0u8; VNET_HDR_LEN]), "no GSO header on a lone packet");
    let mut got: Vec<&[u8]> = written.iter().map(|(_, p)| *p).collect();
    // Order is kept within a flow (a, gap, short_then), not between flows.
    let flow: Vec<&[u8]> = got.iter().copied().filter(|p| p[9] == 6 && p[19] != 3).collect();
    assert_eq!(flow, [&a[..], &gap, &short_then[0], &short_then[1]]);
    let mut want: Vec<&[u8]> = all.iter().map(|p| &p[..]).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

/// The writes of a finished coalescer: (virtio header, packet) each.
fn writes(c: &Coalescer) -> Vec<([u8; VNET_HDR_LEN], &[u8])> {
    let mut start = 0;
    let mut out = Vec::new();
    for &end in &c.ends {
        let hdr: [u8; VNET_HDR_LEN] = c.out[start..start + VNET_HDR_LEN].try_into().expect("header");
        out.push((hdr, &c.out[start + VNET_HDR_LEN..end]));
        start = end;
    }
    out
}

#[test]
fn interleaved_streams_merge_each_into_its_own_gso_write() {
    // Four streams' segments arrive interleaved, as from iperf3 -P 4: one GSO write per stream, not one per
    // segment.
    let streams = 4u8;
    let mut c = Coalescer::default();
    for i in 0..10u32 {
        for s in 0..streams {
            let mut p = tcp_packet(1000 + i * 1420, TCP_ACK, &payload(1420));
            p[21] = s; // the source port's low byte: another flow (the coalescer checks no checksum)
            c.push(&p);
        }
    }
    c.finish();
    let written = writes(&c);
    assert_eq!(written.len(), usize::from(streams));
    for (hdr, p) in written {
        let hdr = VnetHdr::parse(&hdr);
        assert_eq!((hdr.gso_type, hdr.gso_size), (GSO_TCPV4, 1420));
        assert_eq!(p.len(), 52 + 10 * 1420);
    }
}

#[test]
fn segmenting_then_merging_gives_back_the_original_stream() {
    let data = payload(60000);
    let mut gso = tcp_packet(u32::MAX - 5000, TCP_ACK, &data);
    let hdr = VnetHdr { gso_type: GSO_TCPV4, gso_size: 1420, ..Default::default() };
    let mut headers = Vec::new();
    let Out::Segments { hlen, mss, count } = prepare_out(hdr, &mut gso, &mut headers) else { panic!("not segmented") };
    let mut c = Coalescer::default();
    for i in 0..count {
        let mut seg = headers[i * hlen..(i + 1) * hlen].to_vec();
        seg.extend_from_slice(&gso[hlen + i * mss..(hlen + (i + 1) * mss).min(gso.len())]);
        c.push(&seg);
    }
    c.finish();
    assert_eq!(c.ends.len(), 1, "sequence numbers wrap inside the run");
    assert_eq!(&c.out[VNET_HDR_LEN + 52..], &data[..]);
}
