//! flannel's `udp` backend: the TUN device `flannel0` and the userspace forwarder that carries IP packets
//! between it and UDP port 8285 of the peers. Two blocking threads (TUN -> UDP, UDP -> TUN) make the fast
//! path: they read in a loop and only `poll` (together with a stop pipe) when a non-blocking read finds
//! nothing. Under TCG a syscall and a NIC kick cost more than the bytes, so the forwarder moves TCP in 64 KB
//! GSO units (`gso`): one TUN read and one UDP GSO send out, one drain of the socket and one TUN write per
//! merged flow in, while every datagram on the wire stays one IP packet as flannel sends it.
//!
//! The TUN is not persistent: it belongs to the fd opened here, so stopping the forwarder removes `flannel0`
//! from the kernel, and a crashed agent leaves nothing behind.

use std::fs::File;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use ipnet::Ipv4Net;

use super::plan::{TUN_DEV, UDP_PORT};
use super::NetError;
use gso::{VnetHdr, VNET_HDR_LEN};

mod gso;

/// Peer pod subnets and where to send their packets.
pub type PeerTable = Vec<(Ipv4Net, Ipv4Addr)>;

pub struct UdpForwarder {
    pub local: Ipv4Addr,
    peers: Arc<RwLock<PeerTable>>,
    alive: Arc<AtomicBool>,
    stop_tx: Option<OwnedFd>,
    threads: Vec<JoinHandle<()>>,
}

impl UdpForwarder {
    /// Creates `flannel0` and binds `local:8285` in the calling thread's network namespace.
    pub fn start(local: Ipv4Addr, peers: PeerTable) -> Result<UdpForwarder, NetError> {
        let tun = Arc::new(open_tun(TUN_DEV)?);
        let sock = UdpSocket::bind(SocketAddrV4::new(local, UDP_PORT))
            .map_err(|e| NetError::io(format!("bind udp {local}:{UDP_PORT}"), e))?;
        tune_socket(&sock);
        let sock = Arc::new(sock);
        // CLOEXEC: a child the agent spawns (an infra process) must not inherit the write end, or closing
        // ours would never wake the threads.
        let (stop_rx, stop_tx) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| NetError::io("stop pipe".into(), e.into()))?;
        let stop_rx = Arc::new(stop_rx);
        let peers = Arc::new(RwLock::new(peers));
        let alive = Arc::new(AtomicBool::new(true));

        let mut threads = Vec::new();
        {
            let (tun, sock, stop, peers, alive) =
                (tun.clone(), sock.clone(), stop_rx.clone(), peers.clone(), alive.clone());
            threads.push(spawn("udp-tun-rx", move || tun_to_udp(&tun, &sock, &stop, &peers, &alive))?);
        }
        {
            let (tun, sock, stop, alive) = (tun, sock, stop_rx, alive.clone());
            threads.push(spawn("udp-sock-rx", move || udp_to_tun(&tun, &sock, &stop, &alive))?);
        }
        Ok(UdpForwarder { local, peers, alive, stop_tx: Some(stop_tx), threads })
    }

    /// False once a thread gave up (e.g. `flannel0` was deleted under it); the caller restarts it.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    /// Replaces the peer table; returns whether it changed.
    pub fn set_peers(&self, peers: PeerTable) -> bool {
        let mut cur = self.peers.write().unwrap_or_else(|p| p.into_inner());
        if *cur == peers {
            return false;
        }
        *cur = peers;
        true
    }
}

impl Drop for UdpForwarder {
    fn drop(&mut self) {
        // Closing the write end makes the pipe readable (EOF): both threads wake from poll and exit.
        self.stop_tx.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, NetError> {
    std::thread::Builder::new().name(name.into()).spawn(f).map_err(|e| NetError::io(format!("spawn {name}"), e))
}

fn open_tun(name: &str) -> Result<File, NetError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| NetError::io("open /dev/net/tun".into(), e))?;
    // struct ifreq: 16 bytes of name, then the flags as a short (padded to the union's 24 bytes).
    let mut ifr = [0u8; 40];
    let bytes = name.as_bytes();
    ifr[..bytes.len()].copy_from_slice(bytes);
    // VNET_HDR: every read and write carries a virtio_net_hdr, which is how GSO packets cross the TUN.
    let flags = (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
    ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which fits in `ifr` (40 bytes); the fd is open.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF as _, ifr.as_mut_ptr()) };
    if rc < 0 {
        return Err(NetError::io(format!("TUNSETIFF {name}"), std::io::Error::last_os_error()));
    }
    // The kernel may now hand over partial checksums and TCP/IPv4 segments up to 64 KB (`gso` completes and
    // cuts them). No TSO6/USO: flannel's udp backend carries IPv4 only, and UDP is sent as the pods wrote it.
    let offload = libc::TUN_F_CSUM | libc::TUN_F_TSO4;
    // SAFETY: TUNSETOFFLOAD takes its flags by value; the fd is an attached TUN.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETOFFLOAD as _, offload as libc::c_ulong) };
    if rc < 0 {
        return Err(NetError::io(format!("TUNSETOFFLOAD {name}"), std::io::Error::last_os_error()));
    }
    set_nonblocking(file.as_fd())?;
    Ok(file)
}

/// Larger buffers and UDP GRO. Each is an optimisation the forwarder works without (an older kernel, a
/// lower rmem_max), so a refusal is logged and not an error.
fn tune_socket(sock: &UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    // The FORCE variants pass net.core.[rw]mem_max (the agent runs as root); the plain ones are the fallback.
    if setsockopt(sock, sockopt::RcvBufForce, &SOCK_BUF).is_err() {
        let _ = setsockopt(sock, sockopt::RcvBuf, &SOCK_BUF);
    }
    if setsockopt(sock, sockopt::SndBufForce, &SOCK_BUF).is_err() {
        let _ = setsockopt(sock, sockopt::SndBuf, &SOCK_BUF);
    }
    if let Err(e) = setsockopt(sock, sockopt::UdpGroSegment, &true) {
        tracing::info!("udp backend: no UDP GRO on :{UDP_PORT} ({e}); one receive per datagram");
    }
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> Result<(), NetError> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(|e| NetError::io("F_GETFL".into(), e.into()))?;
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK))
        .map_err(|e| NetError::io("F_SETFL".into(), e.into()))?;
    Ok(())
}

/// Waits until `fd` is readable; false when the stop pipe fired.
fn wait_readable(fd: BorrowedFd<'_>, stop: &OwnedFd) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    loop {
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN), PollFd::new(stop.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {
                let stopped = fds[1].revents().is_some_and(|r| !r.is_empty());
                return !stopped;
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return false,
        }
    }
}

/// Room for one TUN read: the virtio header and the largest (GSO) IP packet.
const MAX_PACKET: usize = 65536;
/// UDP payload limit of one send (65535 - IP 20 - UDP 8), which a GSO send must respect as a whole.
const MAX_UDP_PAYLOAD: usize = 65507;
/// Segments per UDP GSO send: the kernel's UDP_MAX_SEGMENTS before 6.10 (later kernels take 128). At the pod
/// MTU the 64 KB payload limit binds first (about 45 segments).
const MAX_GSO_SEGMENTS: usize = 64;
/// How much the receiver drains from the socket before writing to the TUN: several GRO batches, so that
/// datagrams the NIC did not coalesce still merge here.
const RX_ARENA: usize = 4 * MAX_PACKET;
/// Socket buffers: a 64 KB burst is ~45 datagrams, and the guest's default (208 KB) overflowed under TCG,
/// where the forwarder thread is often descheduled for a whole tick.
const SOCK_BUF: usize = 4 << 20;

fn tun_to_udp(tun: &File, sock: &UdpSocket, stop: &OwnedFd, peers: &RwLock<PeerTable>, alive: &AtomicBool) {
    let mut buf = vec![0u8; VNET_HDR_LEN + MAX_PACKET];
    let mut headers = Vec::new();
    let mut gso = true;
    loop {
        match (&*tun).read(&mut buf) {
            Ok(n) if n >= VNET_HDR_LEN + 20 => {
                let (hdr, pkt) = buf[..n].split_at_mut(VNET_HDR_LEN);
                let mut h = [0u8; VNET_HDR_LEN];
                h.copy_from_slice(hdr);
                let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
                let target = {
                    let table = peers.read().unwrap_or_else(|p| p.into_inner());
                    table.iter().find(|(net, _)| net.contains(&dst)).map(|(_, ip)| *ip)
                };
                // No peer owns the destination: drop, as flannel does.
                let Some(ip) = target else { continue };
                let to = SocketAddrV4::new(ip, UDP_PORT);
                match gso::prepare_out(VnetHdr::parse(&h), pkt, &mut headers) {
                    gso::Out::Whole => drop(sock.send_to(pkt, to)),
                    gso::Out::Segments { hlen, mss, count } => {
                        send_segments(sock, to, pkt, &headers, (hlen, mss, count), &mut gso)
                    }
                    gso::Out::Drop => {}
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if !wait_readable(tun.as_fd(), stop) {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!("udp backend: reading {TUN_DEV} failed, forwarder stops: {e}");
                alive.store(false, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// Sends the segments of one TUN read, one datagram each, in as few syscalls as UDP GSO allows. Without UDP
/// GSO (`gso` turns false on the first refusal, e.g. a NIC without checksum offload) one send per segment.
fn send_segments(
    sock: &UdpSocket,
    to: SocketAddrV4,
    pkt: &[u8],
    headers: &[u8],
    (hlen, mss, count): (usize, usize, usize),
    gso: &mut bool,
) {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, SockaddrIn};
    let addr = SockaddrIn::from(to);
    let seg = |i: usize| {
        let start = hlen + i * mss;
        [IoSlice::new(&headers[i * hlen..(i + 1) * hlen]), IoSlice::new(&pkt[start..(start + mss).min(pkt.len())])]
    };
    let per_send = if *gso { (MAX_UDP_PAYLOAD / (hlen + mss)).clamp(1, MAX_GSO_SEGMENTS) } else { 1 };
    let size = (hlen + mss) as u16;
    let mut i = 0;
    while i < count {
        let n = per_send.min(count - i);
        let iov: Vec<IoSlice<'_>> = (i..i + n).flat_map(seg).collect();
        let gso_cmsg = [ControlMessage::UdpGsoSegments(&size)];
        let cmsgs: &[ControlMessage<'_>] = if n > 1 { &gso_cmsg } else { &[] };
        match sendmsg(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), Some(&addr)) {
            Err(e @ (nix::errno::Errno::EIO | nix::errno::Errno::EINVAL)) if n > 1 => {
                tracing::warn!("udp backend: UDP GSO refused ({e}); sending one datagram per packet");
                *gso = false;
                return send_segments(sock, to, pkt, headers, (hlen, mss, count), gso);
            }
            // A failed send is a lost packet, as on any link; TCP recovers.
            _ => i += n,
        }
    }
}

fn udp_to_tun(tun: &File, sock: &UdpSocket, stop: &OwnedFd, alive: &AtomicBool) {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrIn};
    let mut arena = vec![0u8; RX_ARENA];
    // (start, length, datagram size): one receive, which UDP GRO may have made of several datagrams.
    let mut received: Vec<(usize, usize, usize)> = Vec::new();
    let mut merge = gso::Coalescer::default();
    let mut cmsg = nix::cmsg_space!(i32);
    loop {
        received.clear();
        let mut used = 0;
        // Drains the socket (or fills the arena) first, so that one flow's packets merge into one TUN write.
        while RX_ARENA - used >= MAX_PACKET {
            let mut iov = [IoSliceMut::new(&mut arena[used..used + MAX_PACKET])];
            // The socket stays blocking so that sends wait for buffer space under load instead of dropping;
            // only this receive is non-blocking (MSG_DONTWAIT), to fall back to poll with the stop pipe.
            match recvmsg::<SockaddrIn>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT) {
                Ok(msg) => {
                    let gro = msg.cmsgs().ok().and_then(|mut c| {
                        c.find_map(|m| match m {
                            ControlMessageOwned::UdpGroSegments(size) => usize::try_from(size).ok(),
                            _ => None,
                        })
                    });
                    let len = msg.bytes;
                    received.push((used, len, gro.filter(|s| *s > 0).unwrap_or(len)));
                    used += len;
                }
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    tracing::warn!("udp backend: receiving on :{UDP_PORT} failed, forwarder stops: {e}");
                    alive.store(false, Ordering::Relaxed);
                    return;
                }
            }
        }
        if received.is_empty() {
            if !wait_readable(sock.as_fd(), stop) {
                return;
            }
            continue;
        }
        merge.clear();
        for &(start, len, size) in &received {
            for dgram in arena[start..start + len].chunks(size.max(1)) {
                // flannel's format: each datagram is one IPv4 packet.
                if dgram.len() >= 20 && dgram[0] >> 4 == 4 {
                    merge.push(dgram);
                }
            }
        }
        merge.finish();
        let mut start = 0;
        for &end in &merge.ends {
            // The TUN may refuse a packet (e.g. device down); that is a drop, not a reason to stop.
            let _ = (&*tun).write(&merge.out[start..end]);
            start = end;
        }
    }
}
