//! flannel's `udp` backend: the TUN device `flannel0` and the userspace forwarder that carries IP packets
//! between it and UDP port 8285 of the peers. Two blocking threads (TUN -> UDP, UDP -> TUN) make the fast
//! path: they read in a loop and only `poll` (together with a stop pipe) when a non-blocking read finds
//! nothing. Under TCG a syscall, a copy and a checksum pass cost more than anything else, so TCP crosses in
//! 64 KB GSO units: one TUN read and one send of a `frame` (one UDP datagram, fragmented and reassembled by
//! the kernels) out, one receive and one TUN write in. Everything else keeps flannel's format, one IP packet per
//! datagram, and packets from a peer that sends that format are merged per flow (`gso`) before the TUN.
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
use nix::sys::socket::SockaddrIn;

use super::plan::{TUN_DEV, UDP_PORT};
use super::NetError;
use gso::{VnetHdr, VNET_HDR_LEN};

mod frame;
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
    // The kernel may now hand over partial checksums and TCP/IPv4 segments up to 64 KB (`frame` carries them,
    // `gso` completes the checksums of single packets). No TSO6/USO: flannel's udp backend carries IPv4 only, and UDP is sent as the pods wrote it.
    let offload = libc::TUN_F_CSUM | libc::TUN_F_TSO4;
    // SAFETY: TUNSETOFFLOAD takes its flags by value; the fd is an attached TUN.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETOFFLOAD as _, offload as libc::c_ulong) };
    if rc < 0 {
        return Err(NetError::io(format!("TUNSETOFFLOAD {name}"), std::io::Error::last_os_error()));
    }
    set_nonblocking(file.as_fd())?;
    Ok(file)
}

/// Larger buffers, UDP GRO and no UDP checksums. Each is an optimisation the forwarder works without (an older
/// kernel, a lower rmem_max), so a refusal is logged and not an error.
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
    // A frame is fragmented, so no NIC can checksum it: the kernel would sum 64 KB in software on both ends.
    // IPv4 allows a zero UDP checksum, and vxlan sends none either (the inner packets carry their own).
    let off: libc::c_int = 1;
    // SAFETY: SO_NO_CHECK reads one int from the pointer given with its size; the socket is open.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NO_CHECK,
            std::ptr::from_ref(&off).cast(),
            std::mem::size_of_val(&off) as libc::socklen_t,
        )
    };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        tracing::info!("udp backend: UDP checksums stay on :{UDP_PORT} ({e})");
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
/// UDP payload limit of one send (65535 - IP 20 - UDP 8): a frame must fit.
const MAX_UDP_PAYLOAD: usize = 65507;
/// How much the receiver drains from the socket before writing to the TUN: several GRO batches, so that
/// datagrams the NIC did not coalesce still merge here.
const RX_ARENA: usize = 4 * MAX_PACKET;
/// Socket buffers: a 64 KB burst is ~45 datagrams or fragments, and the guest's default (208 KB) overflowed
/// under TCG, where the forwarder thread is often descheduled for a whole tick.
const SOCK_BUF: usize = 4 << 20;

fn tun_to_udp(tun: &File, sock: &UdpSocket, stop: &OwnedFd, peers: &RwLock<PeerTable>, alive: &AtomicBool) {
    let mut buf = vec![0u8; VNET_HDR_LEN + MAX_PACKET];
    let mut headers = Vec::new();
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
                let to = SockaddrIn::from(SocketAddrV4::new(ip, UDP_PORT));
                let hdr = VnetHdr::parse(&h);
                // A failed send is a lost packet, as on any link; TCP recovers.
                if frame::carries(&hdr) && frame::FRAME_HDR_LEN + pkt.len() <= MAX_UDP_PAYLOAD {
                    let head = frame::header(&hdr);
                    let _ = send(sock, &to, &[IoSlice::new(&head), IoSlice::new(pkt)]);
                    continue;
                }
                match gso::prepare_out(hdr, pkt, &mut headers) {
                    gso::Out::Whole => drop(send(sock, &to, &[IoSlice::new(pkt)])),
                    // Only a GSO packet too large for one frame (IPv4's 64 KB less the frame header) comes
                    // here: it leaves as the packets the kernel would have sent, one datagram each.
                    gso::Out::Segments { hlen, mss, count } => {
                        for i in 0..count {
                            let start = hlen + i * mss;
                            let body = &pkt[start..(start + mss).min(pkt.len())];
                            let head = &headers[i * hlen..(i + 1) * hlen];
                            let _ = send(sock, &to, &[IoSlice::new(head), IoSlice::new(body)]);
                        }
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

/// One datagram of the gathered `iov`, without copying it together first.
fn send(sock: &UdpSocket, to: &SockaddrIn, iov: &[IoSlice<'_>]) -> nix::Result<usize> {
    nix::sys::socket::sendmsg(sock.as_raw_fd(), iov, &[], nix::sys::socket::MsgFlags::empty(), Some(to))
}

fn udp_to_tun(tun: &File, sock: &UdpSocket, stop: &OwnedFd, alive: &AtomicBool) {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
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
        for &(start, len, size) in &received {
            for dgram in arena[start..start + len].chunks_mut(size.max(1)) {
                // flannel's format: each datagram is one IPv4 packet; else one of our frames.
                if dgram.len() >= 20 && dgram[0] >> 4 == 4 {
                    merge.push(dgram);
                } else if let Some(packet) = frame::open(dgram) {
                    // What was merged so far goes first, so that a flow's packets keep their order.
                    flush(tun, &mut merge);
                    let _ = (&*tun).write(packet);
                }
            }
        }
        flush(tun, &mut merge);
    }
}

/// Writes what `merge` holds to the TUN and empties it.
fn flush(tun: &File, merge: &mut gso::Coalescer) {
    merge.finish();
    let mut start = 0;
    for &end in &merge.ends {
        // The TUN may refuse a packet (e.g. device down); that is a drop, not a reason to stop.
        let _ = (&*tun).write(&merge.out[start..end]);
        start = end;
    }
    merge.clear();
}
