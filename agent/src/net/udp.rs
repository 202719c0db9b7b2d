//! flannel's `udp` backend: the TUN device `flannel0` and the userspace forwarder that carries IP packets
//! between it and UDP port 8285 of the peers. Two blocking threads (TUN -> UDP, UDP -> TUN) make the fast
//! path: they read in a loop and only `poll` (together with a stop pipe) when a non-blocking read finds
//! nothing, so a busy forwarder does one syscall per packet each way.
//!
//! The TUN is not persistent: it belongs to the fd opened here, so stopping the forwarder removes `flannel0`
//! from the kernel, and a crashed agent leaves nothing behind.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use ipnet::Ipv4Net;

use super::plan::{TUN_DEV, UDP_PORT};
use super::NetError;

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
    let flags = (libc::IFF_TUN | libc::IFF_NO_PI) as i16;
    ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which fits in `ifr` (40 bytes); the fd is open.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF as _, ifr.as_mut_ptr()) };
    if rc < 0 {
        return Err(NetError::io(format!("TUNSETIFF {name}"), std::io::Error::last_os_error()));
    }
    set_nonblocking(file.as_fd())?;
    Ok(file)
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

const MAX_PACKET: usize = 65536;

fn tun_to_udp(tun: &File, sock: &UdpSocket, stop: &OwnedFd, peers: &RwLock<PeerTable>, alive: &AtomicBool) {
    let mut buf = vec![0u8; MAX_PACKET];
    loop {
        match (&*tun).read(&mut buf) {
            Ok(n) if n >= 20 => {
                let dst = Ipv4Addr::new(buf[16], buf[17], buf[18], buf[19]);
                let target = {
                    let table = peers.read().unwrap_or_else(|p| p.into_inner());
                    table.iter().find(|(net, _)| net.contains(&dst)).map(|(_, ip)| *ip)
                };
                // No peer owns the destination: drop, as flannel does.
                if let Some(ip) = target {
                    let _ = sock.send_to(&buf[..n], SocketAddrV4::new(ip, UDP_PORT));
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

fn udp_to_tun(tun: &File, sock: &UdpSocket, stop: &OwnedFd, alive: &AtomicBool) {
    let mut buf = vec![0u8; MAX_PACKET];
    loop {
        // The socket stays blocking so that sends wait for buffer space under load instead of dropping;
        // only this receive is non-blocking (MSG_DONTWAIT), to fall back to poll with the stop pipe.
        match nix::sys::socket::recv(sock.as_raw_fd(), &mut buf, nix::sys::socket::MsgFlags::MSG_DONTWAIT)
            .map_err(std::io::Error::from)
        {
            Ok(n) if n >= 20 && buf[0] >> 4 == 4 => {
                // The TUN may refuse a packet (e.g. device down); that is a drop, not a reason to stop.
                let _ = (&*tun).write(&buf[..n]);
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if !wait_readable(sock.as_fd(), stop) {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!("udp backend: receiving on :{UDP_PORT} failed, forwarder stops: {e}");
                alive.store(false, Ordering::Relaxed);
                return;
            }
        }
    }
}
