//! A synchronous NETLINK_ROUTE socket for the per-pod hot path (`attach_pod`). Requests go out as one batch
//! (one `send`), the kernel handles them in order, and the answers are collected afterwards: a batch costs
//! one round trip however many requests it holds. A netlink socket stays bound to the network namespace it
//! was created in, so the worker can open one inside a pod's netns (`open_in`) and drive it from the node's
//! namespace, without a thread or a runtime per pod.

use std::os::fd::BorrowedFd;

use rtnetlink::packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::NetError;

/// How a request is sent and which refusal counts as success.
#[derive(Clone, Copy)]
pub enum Mode {
    /// Create; EEXIST is success (idempotent add).
    Create,
    /// Create; EEXIST is an error (the caller needs to know).
    CreateNew,
    /// Change or query an existing object.
    Plain,
}

pub struct Req {
    pub msg: RouteNetlinkMessage,
    pub mode: Mode,
    /// Names the step in errors, e.g. "pod: addr add 10.244.0.2/20 dev eth0".
    pub step: String,
}

impl Req {
    pub fn new(msg: RouteNetlinkMessage, mode: Mode, step: impl Into<String>) -> Req {
        Req { msg, mode, step: step.into() }
    }
}

pub struct RtSocket {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl RtSocket {
    /// A socket in the calling thread's network namespace.
    pub fn new() -> std::io::Result<RtSocket> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(RtSocket { sock, seq: 0, buf: Vec::with_capacity(32 * 1024) })
    }

    /// A socket in the network namespace `netns`, opened by entering it for the duration of `socket(2)` and
    /// returning to `home` (the calling thread's namespace).
    pub fn open_in(netns: BorrowedFd<'_>, home: BorrowedFd<'_>) -> Result<RtSocket, NetError> {
        nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| NetError::io("setns into the pod netns".into(), e.into()))?;
        let sock = RtSocket::new().map_err(|e| NetError::io("pod netlink socket".into(), e));
        if let Err(e) = nix::sched::setns(home, nix::sched::CloneFlags::CLONE_NEWNET) {
            // Every later step of this thread would act on the pod's namespace instead of the node's: stop
            // here (the worker's callers then get `WorkerGone`).
            panic!("setns back into the node netns failed: {e}");
        }
        sock
    }

    /// Sends `reqs` as one batch, waits for every answer, and returns each request's reply message (for
    /// gets) in order. All requests are answered even when one fails; the first failure is returned.
    pub fn batch(&mut self, reqs: &[Req]) -> Result<Vec<Option<RouteNetlinkMessage>>, NetError> {
        self.buf.clear();
        let first = self.seq.wrapping_add(1);
        for (i, r) in reqs.iter().enumerate() {
            let mut header = NetlinkHeader::default();
            header.flags = NLM_F_REQUEST
                | NLM_F_ACK
                | match r.mode {
                    Mode::Create | Mode::CreateNew => NLM_F_CREATE | NLM_F_EXCL,
                    Mode::Plain => 0,
                };
            header.sequence_number = first.wrapping_add(i as u32);
            let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(r.msg.clone()));
            m.finalize();
            let start = self.buf.len();
            self.buf.resize(start + m.buffer_len(), 0);
            m.serialize(&mut self.buf[start..]);
        }
        self.seq = first.wrapping_add(reqs.len() as u32);
        let io = |step: &str| {
            let step = step.to_string();
            move |e| NetError::io(format!("netlink {step}"), e)
        };
        let sent = self.sock.send(&self.buf, 0).map_err(io("send"))?;
        if sent != self.buf.len() {
            return Err(NetError::io("netlink send".into(), std::io::Error::other("short write")));
        }
        let mut replies: Vec<Option<RouteNetlinkMessage>> = reqs.iter().map(|_| None).collect();
        let mut done = vec![false; reqs.len()];
        let mut failure = None;
        while done.iter().any(|d| !d) {
            self.buf.clear();
            self.sock.recv(&mut self.buf, 0).map_err(io("recv"))?;
            let mut off = 0;
            while off + 16 <= self.buf.len() {
                let len = u32::from_ne_bytes([self.buf[off], self.buf[off + 1], self.buf[off + 2], self.buf[off + 3]])
                    as usize;
                if len < 16 || off + len > self.buf.len() {
                    break;
                }
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..off + len])
                    .map_err(|e| NetError::io("netlink decode".into(), std::io::Error::other(e.to_string())))?;
                // Netlink messages are 4-byte aligned.
                off += (len + 3) & !3;
                let idx = msg.header.sequence_number.wrapping_sub(first) as usize;
                if idx >= reqs.len() {
                    continue; // an answer to an earlier, abandoned batch
                }
                match msg.payload {
                    NetlinkPayload::InnerMessage(inner) => replies[idx] = Some(inner),
                    NetlinkPayload::Error(err) => {
                        done[idx] = true;
                        let errno = err.code.map(|c| -c.get());
                        let tolerated = matches!((reqs[idx].mode, errno), (Mode::Create, Some(libc::EEXIST)));
                        if errno.is_some() && !tolerated && failure.is_none() {
                            failure = Some(NetError::Netlink {
                                step: reqs[idx].step.clone(),
                                source: rtnetlink::Error::NetlinkError(err),
                            });
                        }
                    }
                    _ => {}
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(replies),
        }
    }
}
