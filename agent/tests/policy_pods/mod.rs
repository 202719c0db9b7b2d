//! Pods as the NetworkPolicy tests use them: a server in each pod's network namespace answering its name on
//! TCP 8080 and 8090 and echoing on UDP 5353 (threads of the test inside the namespace), and clients that
//! connect from inside another pod's namespace, so the traffic crosses the node's cni0 bridge.

// Each test file compiles this module on its own, and not every one uses every function.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

pub const TCP_PORTS: [u16; 2] = [8080, 8090];
pub const UDP_PORT: u16 = 5353;

pub struct Pod {
    pub name: &'static str,
    pub ip: String,
    /// The pod's infra process: its network namespace is `/proc/<pid>/ns/net`.
    pub infra_pid: u64,
}

fn enter_netns(pid: u64) {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).expect("the pod's netns");
    nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

/// Starts the pod's servers; returns once they listen.
pub fn serve(pod: &Pod) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let name = pod.name;
    for port in TCP_PORTS {
        let (pid, ready) = (pod.infra_pid, ready_tx.clone());
        std::thread::spawn(move || {
            enter_netns(pid);
            let listener = TcpListener::bind(("0.0.0.0", port)).expect("bind");
            ready.send(()).expect("ready");
            for conn in listener.incoming().flatten() {
                let _ = (&conn).write_all(name.as_bytes());
            }
        });
    }
    let pid = pod.infra_pid;
    std::thread::spawn(move || {
        enter_netns(pid);
        let socket = UdpSocket::bind(("0.0.0.0", UDP_PORT)).expect("bind");
        ready_tx.send(()).expect("ready");
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
        }
    });
    for _ in 0..3 {
        ready_rx.recv().expect("servers listening");
    }
}

/// Runs `f` on a thread inside `from`'s network namespace.
fn inside<T: Send + 'static>(from: &Pod, f: impl FnOnce() -> T + Send + 'static) -> T {
    let pid = from.infra_pid;
    std::thread::spawn(move || {
        enter_netns(pid);
        f()
    })
    .join()
    .expect("client thread")
}

/// A TCP connection from `from` to `ip:port` answered with the server's name (a drop is a 1 s timeout).
pub fn tcp(from: &Pod, ip: &str, port: u16) -> bool {
    let addr: SocketAddr = format!("{ip}:{port}").parse().expect("address");
    inside(from, move || {
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else { return false };
        s.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        let mut answer = String::new();
        s.read_to_string(&mut answer).is_ok() && !answer.is_empty()
    })
}

/// A UDP datagram from `from` echoed back by `ip`.
pub fn udp(from: &Pod, ip: &str) -> bool {
    let addr: SocketAddr = format!("{ip}:{UDP_PORT}").parse().expect("address");
    inside(from, move || {
        let socket = UdpSocket::bind("0.0.0.0:0").expect("bind");
        socket.set_read_timeout(Some(Duration::from_secs(1))).expect("timeout");
        socket.send_to(b"ping", addr).expect("send");
        let mut buf = [0u8; 16];
        matches!(socket.recv_from(&mut buf), Ok((4, _)))
    })
}

/// The (client, server, port, connects) cases that do not hold now.
fn wrong(cases: &[(&Pod, &Pod, u16, bool)]) -> Vec<String> {
    cases
        .iter()
        .filter_map(|(from, to, port, want)| {
            let got = tcp(from, &to.ip, *port);
            (got != *want).then(|| format!("{} -> {}:{port}: {got} (want {want})", from.name, to.name))
        })
        .collect()
}

/// Every case holds now; all that do not are reported at once.
pub fn expect(what: &str, cases: &[(&Pod, &Pod, u16, bool)]) {
    let wrong = wrong(cases);
    assert!(wrong.is_empty(), "{what}:\n{}", wrong.join("\n"));
    println!("ok: {what}");
}

/// Every case holds within `secs` (the node follows the API asynchronously).
pub fn expect_within(secs: u64, what: &str, cases: &[(&Pod, &Pod, u16, bool)]) {
    let started = Instant::now();
    loop {
        let wrong = wrong(cases);
        if wrong.is_empty() {
            println!("ok after {:?}: {what}", started.elapsed());
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(secs), "{what}: not within {secs} s:\n{}", wrong.join("\n"));
        std::thread::sleep(Duration::from_millis(200));
    }
}
