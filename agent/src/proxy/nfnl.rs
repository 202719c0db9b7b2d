//! nf_tables over a NETLINK_NETFILTER socket, without nft: a transaction is one batch
//! (`NFNL_MSG_BATCH_BEGIN`, messages, `NFNL_MSG_BATCH_END`) that the kernel commits whole or not at all,
//! and the ruleset's generation id (`NFT_MSG_GETGEN`), which moves on every commit by anyone.
//!
//! Nothing here knows the proxy's table: callers write messages with `Batch::message` and attributes with
//! `Attrs`, and learn which of their messages the kernel refused by the `owner` they gave it.

use rtnetlink::sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

/// `NFNL_SUBSYS_NFTABLES`: the high byte of every nf_tables message type.
const SUBSYS_NFTABLES: u16 = 10;
const BATCH_BEGIN: u16 = 0x10;
const BATCH_END: u16 = 0x11;
/// `NFNL_BATCH_GENID`: the batch applies only if the ruleset is still at this generation.
const BATCH_GENID: u16 = 1;
const NFT_MSG_NEWGEN: u8 = 15;
const NFT_MSG_GETGEN: u8 = 16;
const NFTA_GEN_ID: u16 = 1;
const NLA_F_NESTED: u16 = 1 << 15;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;
/// `NLM_F_ACK_TLVS` on an error message: extended-ack attributes follow.
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const HEADER: usize = 16;

/// The message owner `Batch` gives the begin message: a refusal there is about the whole batch.
pub const WHOLE_BATCH: usize = usize::MAX;

#[derive(Debug, thiserror::Error)]
pub enum NfnlError {
    #[error("netlink {step}: {source}")]
    Io { step: &'static str, source: std::io::Error },
    /// The kernel refused message `owner` (the batch's own number for it) with `errno`.
    #[error("errno {errno}")]
    Refused { owner: usize, errno: i32, message: Option<String> },
    /// `NFNL_BATCH_GENID` did not match: someone committed since the generation the batch was built on.
    #[error("the ruleset's generation moved")]
    GenerationMoved,
    #[error("netlink: {0}")]
    Malformed(&'static str),
    /// The kernel did not answer message `seq` (a batch's last message, which asks for an ack; a request
    /// within `ANSWER_TIMEOUT`).
    #[error("no answer from the kernel to message {seq} (its answers: {received})")]
    NoAnswer { seq: u32, received: String },
}

/// How long a request (`generation`) waits for the kernel's answer: without a bound a lost answer would
/// hang the proxy, and with it every later apply and reconcile, in silence.
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

fn io(step: &'static str) -> impl FnOnce(std::io::Error) -> NfnlError {
    move |source| NfnlError::Io { step, source }
}

/// Netlink attributes appended to a message being written.
pub struct Attrs<'a>(&'a mut Vec<u8>);

impl Attrs<'_> {
    pub fn bytes(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        let len = 4 + data.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(data);
        self.pad();
        self
    }

    /// A NUL-terminated string, as nf_tables wants names.
    pub fn str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut data = Vec::with_capacity(s.len() + 1);
        data.extend_from_slice(s.as_bytes());
        data.push(0);
        self.bytes(ty, &data)
    }

    /// nf_tables integers are big-endian.
    pub fn u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.bytes(ty, &v.to_be_bytes())
    }

    pub fn u64(&mut self, ty: u16, v: u64) -> &mut Self {
        self.bytes(ty, &v.to_be_bytes())
    }

    pub fn nest(&mut self, ty: u16, inner: impl FnOnce(&mut Attrs<'_>)) -> &mut Self {
        let start = self.0.len();
        self.0.extend_from_slice(&[0, 0]);
        self.0.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        inner(&mut Attrs(self.0));
        let len = self.0.len() - start;
        self.0[start..start + 2].copy_from_slice(&(len as u16).to_ne_bytes());
        self
    }

    fn pad(&mut self) {
        self.0.resize(self.0.len().next_multiple_of(4), 0);
    }
}

/// One transaction being written: the begin message, the caller's messages, then `finish` adds the end.
pub struct Batch {
    buf: Vec<u8>,
    /// Per message after the begin: the caller's number for the thing it is part of.
    owners: Vec<usize>,
}

impl Batch {
    /// A batch that the kernel applies only while the ruleset is at `generation`, if given.
    pub fn new(generation: Option<u32>) -> Batch {
        let mut batch = Batch { buf: Vec::with_capacity(64 * 1024), owners: Vec::new() };
        // The begin message names the subsystem in the res_id of its nfgenmsg.
        batch.header(BATCH_BEGIN, NLM_F_REQUEST, libc::AF_UNSPEC as u8, SUBSYS_NFTABLES);
        if let Some(g) = generation {
            Attrs(&mut batch.buf).u32(BATCH_GENID, g);
        }
        batch.seal(0);
        batch
    }

    /// Appends an nf_tables message (`NFT_MSG_*`) of family `family` for `owner`.
    pub fn message(&mut self, msg: u8, flags: u16, family: u8, owner: usize, attrs: impl FnOnce(&mut Attrs<'_>)) {
        let start = self.buf.len();
        self.header(SUBSYS_NFTABLES << 8 | u16::from(msg), NLM_F_REQUEST | flags, family, 0);
        attrs(&mut Attrs(&mut self.buf));
        self.seal(start);
        self.owners.push(owner);
    }

    /// A message of a bare netlink header, without the nfgenmsg every nf_tables message starts with: the
    /// kernel refuses the whole batch at it and answers nothing else (the tests' way to a batch whose last
    /// message is never acked).
    #[cfg(test)]
    pub fn truncated_message(&mut self, owner: usize) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&16u32.to_ne_bytes());
        self.buf.extend_from_slice(&(SUBSYS_NFTABLES << 8).to_ne_bytes());
        self.buf.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        self.buf.extend_from_slice(&[0; 8]);
        debug_assert_eq!(self.buf.len() - start, 16);
        self.owners.push(owner);
    }

    fn header(&mut self, ty: u16, flags: u16, family: u8, res_id: u16) {
        // Length and sequence are written by `seal` and `commit`; the port id is the kernel's to fill.
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&[0; 8]);
        // nfgenmsg: family, NFNETLINK_V0, res_id.
        self.buf.extend_from_slice(&[family, 0]);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
    }

    fn seal(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }
}

/// One datagram's messages: (type, sequence, payload after the header).
type Messages = Vec<(u16, u32, Vec<u8>)>;

/// A NETLINK_NETFILTER socket in the network namespace of the thread that opened it.
pub struct NfnlSocket {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl NfnlSocket {
    pub fn new() -> Result<NfnlSocket, NfnlError> {
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(io("socket"))?;
        sock.bind_auto().map_err(io("bind"))?;
        sock.connect(&SocketAddr::new(0, 0)).map_err(io("connect"))?;
        // Errors name the refused message by sequence without echoing it, plus the kernel's reason.
        sock.set_cap_ack(true).map_err(io("NETLINK_CAP_ACK"))?;
        sock.set_ext_ack(true).map_err(io("NETLINK_EXT_ACK"))?;
        let timeout = libc::timeval { tv_sec: ANSWER_TIMEOUT.as_secs() as libc::time_t, tv_usec: 0 };
        setsockopt(&sock, libc::SO_RCVTIMEO, "SO_RCVTIMEO", &timeout)?;
        Ok(NfnlSocket { sock, seq: 0, buf: Vec::with_capacity(64 * 1024) })
    }

    /// The ruleset's generation id.
    pub fn generation(&mut self) -> Result<u32, NfnlError> {
        let mut req = Batch { buf: Vec::new(), owners: Vec::new() };
        req.header(SUBSYS_NFTABLES << 8 | u16::from(NFT_MSG_GETGEN), NLM_F_REQUEST, libc::AF_UNSPEC as u8, 0);
        req.seal(0);
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        req.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.send(&req.buf)?;
        loop {
            let messages = self.receive(0, seq, &[])?.unwrap_or_default();
            for (ty, msg_seq, payload) in messages {
                if msg_seq != seq {
                    continue;
                }
                if ty == NLMSG_ERROR {
                    let (errno, message) = error(&payload)?;
                    return Err(NfnlError::Refused { owner: WHOLE_BATCH, errno, message });
                }
                if ty == SUBSYS_NFTABLES << 8 | u16::from(NFT_MSG_NEWGEN) {
                    let id = attrs(payload.get(4..).unwrap_or_default())
                        .find(|(t, _)| *t == NFTA_GEN_ID)
                        .and_then(|(_, v)| Some(u32::from_be_bytes(v.try_into().ok()?)));
                    return id.ok_or(NfnlError::Malformed("NEWGEN without NFTA_GEN_ID"));
                }
            }
        }
    }

    /// Sends `batch` and waits for the kernel's verdict on it: Ok once committed, else the first refusal
    /// in message order (later ones mostly follow from it). A commit moves the generation by one.
    pub fn commit(&mut self, mut batch: Batch) -> Result<(), NfnlError> {
        // The last message asks for an ack: its answer comes after every error of the batch, so it says
        // the kernel is done; without it a successful batch would be answered by silence.
        let last = batch.buf.len();
        batch.header(BATCH_END, NLM_F_REQUEST, libc::AF_UNSPEC as u8, SUBSYS_NFTABLES);
        batch.seal(last);
        let count = batch.owners.len() + 2;
        let first = self.seq.wrapping_add(1);
        let mut off = 0;
        let acked = first.wrapping_add(count as u32 - 2);
        for i in 0..count {
            let len = u32::from_ne_bytes(batch.buf[off..off + 4].try_into().unwrap_or_default()) as usize;
            batch.buf[off + 8..off + 12].copy_from_slice(&first.wrapping_add(i as u32).to_ne_bytes());
            if i == count - 2 {
                let flags = u16::from_ne_bytes([batch.buf[off + 6], batch.buf[off + 7]]) | NLM_F_ACK;
                batch.buf[off + 6..off + 8].copy_from_slice(&flags.to_ne_bytes());
            }
            off += len;
        }
        self.seq = first.wrapping_add(count as u32);
        // The kernel copies the whole batch into one buffer: the send buffer must hold it (root may force).
        let size = libc::c_int::try_from(batch.buf.len() + 4096).unwrap_or(libc::c_int::MAX);
        setsockopt(&self.sock, libc::SO_SNDBUFFORCE, "SO_SNDBUFFORCE", &size)?;
        self.send(&batch.buf)?;
        let owner = |seq: u32| match seq.wrapping_sub(first) as usize {
            0 => WHOLE_BATCH,
            i => batch.owners.get(i - 1).copied().unwrap_or(WHOLE_BATCH),
        };
        // The kernel runs a batch inside the send: every answer it has for it is queued by now. Waiting for
        // one that is not there would hang (6.1 answers only the refused message when the batch loaded a
        // module on its first run, and nothing for the rest), so the queue is drained, not waited on.
        let mut refusal = None;
        let mut answered = false;
        let mut received = Vec::new();
        while let Some(messages) = self.receive(libc::MSG_DONTWAIT, acked, &received)? {
            for (ty, seq, payload) in messages {
                if ty != NLMSG_ERROR || seq.wrapping_sub(first) as usize >= count {
                    continue;
                }
                let (errno, message) = error(&payload)?;
                received.push((seq, errno));
                if errno == libc::ERESTART && seq == first {
                    return Err(NfnlError::GenerationMoved);
                }
                if errno != 0 && refusal.is_none() {
                    refusal = Some(NfnlError::Refused { owner: owner(seq), errno, message });
                }
                answered |= seq == acked;
            }
        }
        match refusal {
            Some(refusal) => Err(refusal),
            None if answered => Ok(()),
            None => Err(NfnlError::NoAnswer { seq: acked, received: answers(&received) }),
        }
    }

    fn send(&mut self, buf: &[u8]) -> Result<(), NfnlError> {
        let sent = self.sock.send(buf, 0).map_err(io("send"))?;
        if sent != buf.len() {
            return Err(NfnlError::Malformed("short send"));
        }
        Ok(())
    }

    /// One datagram's messages: (type, sequence, payload after the header); None when `flags` has
    /// MSG_DONTWAIT and nothing is queued. A blocking receive that times out names `awaited` and what came
    /// before it (`received`, as (sequence, errno)).
    fn receive(
        &mut self,
        flags: libc::c_int,
        awaited: u32,
        received: &[(u32, i32)],
    ) -> Result<Option<Messages>, NfnlError> {
        self.buf.clear();
        if let Err(e) = self.sock.recv(&mut self.buf, flags) {
            if !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) {
                return Err(NfnlError::Io { step: "recv", source: e });
            }
            if flags & libc::MSG_DONTWAIT != 0 {
                return Ok(None);
            }
            return Err(NfnlError::NoAnswer { seq: awaited, received: answers(received) });
        }
        let mut out = Vec::new();
        let mut off = 0;
        while off + HEADER <= self.buf.len() {
            let b = &self.buf[off..];
            let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
            if len < HEADER || len > b.len() {
                return Err(NfnlError::Malformed("truncated message"));
            }
            let ty = u16::from_ne_bytes([b[4], b[5]]);
            let seq = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
            out.push((ty, seq, b[HEADER..len].to_vec()));
            off += len.next_multiple_of(4);
        }
        Ok(Some(out))
    }
}

/// (sequence, errno) answers as the `NoAnswer` error lists them.
fn answers(received: &[(u32, i32)]) -> String {
    if received.is_empty() {
        return "nothing".into();
    }
    let each = received.iter().map(|(seq, errno)| match errno {
        0 => format!("ack of {seq}"),
        e => format!("{seq}: {}", std::io::Error::from_raw_os_error(*e)),
    });
    each.collect::<Vec<_>>().join(", ")
}

/// Sets SOL_SOCKET option `opt` (named `step` in an error) to `value`: a c_int, or a timeval for a timeout.
fn setsockopt<T>(sock: &Socket, opt: libc::c_int, step: &'static str, value: &T) -> Result<(), NfnlError> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid socket and an option value of the size given.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            std::ptr::from_ref(value).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(NfnlError::Io { step, source: std::io::Error::last_os_error() });
    }
    Ok(())
}

/// An NLMSG_ERROR payload: (errno, the extended ack's message). With NETLINK_CAP_ACK the refused message
/// is not echoed: only its header follows the error code.
fn error(payload: &[u8]) -> Result<(i32, Option<String>), NfnlError> {
    let code = payload.get(..4).ok_or(NfnlError::Malformed("short error message"))?;
    let errno = -i32::from_ne_bytes([code[0], code[1], code[2], code[3]]);
    let flags = payload.get(4 + 6..4 + 8).map(|f| u16::from_ne_bytes([f[0], f[1]])).unwrap_or_default();
    let message = (flags & NLM_F_ACK_TLVS != 0)
        .then(|| attrs(payload.get(4 + HEADER..).unwrap_or_default()).find(|(t, _)| *t == NLMSGERR_ATTR_MSG))
        .flatten()
        .map(|(_, v)| String::from_utf8_lossy(v.strip_suffix(&[0]).unwrap_or(v)).into_owned());
    Ok((errno, message))
}

/// The attributes in `buf`: (type without flags, value).
fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut off = 0;
    std::iter::from_fn(move || {
        let b = buf.get(off..off + 4)?;
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let ty = u16::from_ne_bytes([b[2], b[3]]) & !NLA_F_NESTED;
        let value = buf.get(off + 4..off + len.max(4))?;
        off += len.max(4).next_multiple_of(4);
        Some((ty, value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_nests_measure_their_content() {
        let mut buf = Vec::new();
        Attrs(&mut buf).str(1, "ab").nest(2, |a| {
            a.u32(1, 7);
        });
        assert_eq!(buf[..8], [7, 0, 1, 0, b'a', b'b', 0, 0]);
        assert_eq!(buf[8..12], [12, 0, 2, 0x80]);
        assert_eq!(buf[12..], [8, 0, 1, 0, 0, 0, 0, 7]);
        let found: Vec<_> = attrs(&buf).map(|(t, v)| (t, v.len())).collect();
        assert_eq!(found, [(1, 3), (2, 8)]);
    }

    #[test]
    fn a_batch_is_begin_messages_end_with_the_subsystem_in_res_id() {
        let mut batch = Batch::new(Some(42));
        batch.message(0, NLM_F_CREATE, libc::AF_INET as u8, 7, |a| {
            a.str(1, "t");
        });
        assert_eq!(batch.owners, [7]);
        // Begin: 16 + 4 + an 8-byte genid attribute; its nfgenmsg's res_id is NFNL_SUBSYS_NFTABLES.
        assert_eq!(u32::from_ne_bytes(batch.buf[..4].try_into().expect("4")), 28);
        assert_eq!(batch.buf[18..20], 10u16.to_be_bytes());
        assert_eq!(batch.buf[24..28], 42u32.to_be_bytes());
    }
}
