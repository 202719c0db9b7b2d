//! The proxy's operations as one nf_tables netlink batch (`nfnl.rs`): what `nft -f` would send for the
//! same script, without nft's cache (nft 1.0.6 dumps and parses the whole table before running even one
//! command, 27 s at 10,000 Services). Rules are compiled from their text by `expr.rs`.

use std::net::Ipv4Addr;

use super::compile::{self, protocol};
use super::expr::{self, Verdict, VerdictKind};
use super::nfnl::{Attrs, Batch, NfnlError, NfnlSocket, NLM_F_APPEND, NLM_F_CREATE, WHOLE_BATCH};
use super::nft::{self, Nft, NftError};
use super::render;
use super::ruleset::{script, Op, Ruleset, TABLE};

const NEWTABLE: u8 = 0;
const NEWCHAIN: u8 = 3;
const DELCHAIN: u8 = 5;
const NEWRULE: u8 = 6;
const DELRULE: u8 = 8;
const NEWSET: u8 = 9;
const DELSET: u8 = 11;
const NEWSETELEM: u8 = 12;
const DELSETELEM: u8 = 14;
const FAMILY_IP: u8 = libc::AF_INET as u8;
/// Elements per message: a message's element list is one attribute, whose length is 16 bits.
const ELEMENTS_PER_MESSAGE: usize = 256;
/// The name an anonymous set is created with; the kernel numbers it (`__map0`, ...).
const ANONYMOUS_MAP: &str = "__map%d";

/// The kernel through netlink; the table is read back with nft (`nft::list_table`).
pub struct NftNetlink {
    sock: NfnlSocket,
}

impl NftNetlink {
    /// A socket in the calling thread's network namespace.
    pub fn new() -> Result<NftNetlink, NftError> {
        Ok(NftNetlink { sock: NfnlSocket::new()? })
    }
}

impl Nft for NftNetlink {
    fn read(&mut self) -> Result<Option<Ruleset>, NftError> {
        nft::list_table()
    }

    fn generation(&mut self) -> Result<u32, NftError> {
        Ok(self.sock.generation()?)
    }

    fn apply(&mut self, ops: &[Op], generation: Option<u32>) -> Result<Option<u32>, NftError> {
        let mut result = self.sock.commit(batch(ops, generation)?);
        // A batch whose expressions need a module the kernel has not loaded yet makes the kernel load it
        // and run the batch again; Debian 12's 6.1 then answered the first run with a refusal of one rule
        // and no ack of the rest (and the table stayed empty). The same batch again, with the modules
        // loaded, is what the nft CLI's run amounts to; a refusal that is real repeats and is reported.
        if let Err(e @ (NfnlError::Refused { .. } | NfnlError::NoAnswer { .. })) = &result {
            tracing::info!("service proxy: nf_tables answered the batch with `{e}`; sending it once more");
            result = self.sock.commit(batch(ops, generation)?);
        }
        match result {
            // A commit moves the id by one (the kernel skips 0 when it wraps).
            Ok(()) => Ok(generation.map(|g| g.wrapping_add(1).max(1))),
            Err(NfnlError::GenerationMoved) => Err(NftError::GenerationMoved(generation.unwrap_or_default())),
            Err(NfnlError::Refused { owner, errno, message }) => Err(NftError::Refused {
                op: match ops.get(owner) {
                    Some(op) => script(std::slice::from_ref(op)).trim_end().to_string(),
                    None if owner == WHOLE_BATCH => "the batch's commit".into(),
                    None => format!("message of op {owner}"),
                },
                reason: refusal(errno, message),
            }),
            Err(e) => Err(e.into()),
        }
    }
}

fn refusal(errno: i32, message: Option<String>) -> String {
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    match message {
        Some(m) => format!("{text} ({m})"),
        None => text,
    }
}

/// `ops` as batch messages, each owned by its op's index (so a refusal names the op).
pub fn batch(ops: &[Op], generation: Option<u32>) -> Result<Batch, NftError> {
    let mut b = Batch::new(generation);
    // Every new set has an id unique in the batch; rules refer to an anonymous map by it.
    let mut set_id = 0u32;
    for (i, op) in ops.iter().enumerate() {
        let table = |a: &mut Attrs<'_>| {
            a.str(1, TABLE);
        };
        match op {
            Op::AddTable => b.message(NEWTABLE, NLM_F_CREATE, FAMILY_IP, i, table),
            Op::AddSet { name, decl } | Op::AddMap { name, decl } => {
                let set = SetDecl::parse(decl).ok_or_else(|| bad_decl(op))?;
                set_id += 1;
                b.message(NEWSET, NLM_F_CREATE, FAMILY_IP, i, |a| set.put(a.str(1, TABLE), name, set_id));
            }
            Op::AddChain { name, base } => {
                let hook = match base {
                    Some(decl) => Some(BaseChain::parse(decl).ok_or_else(|| bad_decl(op))?),
                    None => None,
                };
                b.message(NEWCHAIN, NLM_F_CREATE, FAMILY_IP, i, |a| {
                    // NFTA_CHAIN_TABLE, _NAME, _HOOK { _HOOKNUM, _PRIORITY }, _POLICY (NF_ACCEPT), _TYPE
                    a.str(1, TABLE).str(3, name);
                    if let Some(h) = &hook {
                        a.nest(4, |a| {
                            a.u32(1, h.hook).u32(2, h.priority as u32);
                        })
                        .u32(5, 1)
                        .str(7, h.kind);
                    }
                });
            }
            Op::FlushChain(chain) => b.message(DELRULE, 0, FAMILY_IP, i, |a| {
                a.str(1, TABLE).str(2, chain);
            }),
            Op::AddRule { chain, rule } => {
                let compiled = compile::compile(&rule.text)?;
                if let Some(arms) = &compiled.anonymous_map {
                    set_id += 1;
                    put_anonymous_map(&mut b, i, set_id, arms);
                }
                b.message(NEWRULE, NLM_F_CREATE | NLM_F_APPEND, FAMILY_IP, i, |a| {
                    a.str(1, TABLE).str(2, chain);
                    a.nest(4, |a| expr::put_exprs(a, &compiled.exprs, (ANONYMOUS_MAP, set_id)));
                    // The comment as nft stores it (NFTNL_UDATA_RULE_COMMENT, NUL-terminated): the rule's id.
                    let mut udata = vec![0, rule.id.len() as u8 + 1];
                    udata.extend_from_slice(rule.id.as_bytes());
                    udata.push(0);
                    a.bytes(7, &udata);
                });
            }
            Op::DeleteElements { map, keys } => {
                let keys: Vec<Vec<u8>> =
                    keys.iter().map(|k| map_key(map, k).ok_or_else(|| bad_decl(op))).collect::<Result<_, _>>()?;
                for chunk in keys.chunks(ELEMENTS_PER_MESSAGE) {
                    b.message(DELSETELEM, 0, FAMILY_IP, i, |a| {
                        put_elements(a, map, chunk.iter().map(|k| (k.as_slice(), &Data::None)));
                    });
                }
            }
            Op::AddElements { map, elements } => {
                let elements: Vec<(Vec<u8>, Data)> = elements
                    .iter()
                    .map(|(k, v)| Some((map_key(map, k)?, Data::parse(v)?)))
                    .collect::<Option<_>>()
                    .ok_or_else(|| bad_decl(op))?;
                for chunk in elements.chunks(ELEMENTS_PER_MESSAGE) {
                    b.message(NEWSETELEM, NLM_F_CREATE, FAMILY_IP, i, |a| {
                        put_elements(a, map, chunk.iter().map(|(k, v)| (k.as_slice(), v)));
                    });
                }
            }
            Op::DeleteChain(chain) => b.message(DELCHAIN, 0, FAMILY_IP, i, |a| {
                a.str(1, TABLE).str(3, chain);
            }),
            Op::DeleteSet(set) | Op::DeleteMap(set) => {
                b.message(DELSET, 0, FAMILY_IP, i, |a| {
                    a.str(1, TABLE).str(2, set);
                });
            }
        }
    }
    Ok(b)
}

fn bad_decl(op: &Op) -> NftError {
    NftError::Unencodable(script(std::slice::from_ref(op)).trim_end().to_string())
}

/// What a map element maps to: nothing (a set), a verdict, or a value (`10.244.0.2 . 8080`).
enum Data {
    None,
    Verdict(Verdict),
    Value(Vec<u8>),
}

impl Data {
    fn parse(text: &str) -> Option<Data> {
        if text.is_empty() {
            return Some(Data::None);
        }
        Some(match verdict(text) {
            Some(v) => Data::Verdict(v),
            None => Data::Value(key(text)?),
        })
    }
}

/// NFTA_SET_ELEM_LIST_TABLE, _SET, _ELEMENTS { { NFTA_SET_ELEM_KEY, _DATA } ... }
fn put_elements<'k>(a: &mut Attrs<'_>, set: &str, elements: impl Iterator<Item = (&'k [u8], &'k Data)>) {
    a.str(1, TABLE).str(2, set);
    a.nest(3, |a| {
        for (k, v) in elements {
            a.nest(1, |a| {
                expr::put_value(a, 1, k);
                match v {
                    Data::None => {}
                    Data::Verdict(v) => {
                        a.nest(2, |a| expr::put_verdict(a, v));
                    }
                    Data::Value(bytes) => expr::put_value(a, 2, bytes),
                }
            });
        }
    });
}

/// `numgen random mod N vmap { ... }`'s map: anonymous, constant, bound to the rule (it goes with it).
fn put_anonymous_map(b: &mut Batch, owner: usize, id: u32, arms: &[(u32, Verdict)]) {
    b.message(NEWSET, NLM_F_CREATE, FAMILY_IP, owner, |a| {
        // _FLAGS (ANONYMOUS | CONSTANT | MAP), _KEY_TYPE (integer), _KEY_LEN, _DATA_TYPE (verdict), _DATA_LEN,
        // _ID, _DESC { _SIZE }, _USERDATA (key byte order: host, so nft lists the keys as numbers)
        a.str(1, TABLE).str(2, ANONYMOUS_MAP).u32(3, 0xb).u32(4, 4).u32(5, 4).u32(6, 0xffff_ff00).u32(7, 0);
        a.u32(10, id).nest(9, |a| {
            a.u32(1, arms.len() as u32);
        });
        a.bytes(13, &[0, 4, 1, 0, 0, 0]);
    });
    let keys: Vec<[u8; 4]> = arms.iter().map(|(k, _)| k.to_ne_bytes()).collect();
    b.message(NEWSETELEM, NLM_F_CREATE, FAMILY_IP, owner, |a| {
        let data: Vec<Data> = arms.iter().map(|(_, v)| Data::Verdict(v.clone())).collect();
        put_elements(a, ANONYMOUS_MAP, keys.iter().zip(&data).map(|(k, v)| (k.as_slice(), v)));
        a.u32(4, id);
    });
}

/// A key of `map`: an index (host order, as numgen loads it) in an endpoint map, else as `key` reads it.
fn map_key(map: &str, text: &str) -> Option<Vec<u8>> {
    if render::is_endpoint_map(map) {
        return Some(text.parse::<u32>().ok()?.to_ne_bytes().to_vec());
    }
    key(text)
}

/// A map key (or value) as the renderer writes it (`10.96.0.10 . tcp . 80`, `tcp . 30080`): each part padded to 4
/// bytes as a concatenation's registers are.
fn key(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for part in text.split(" . ") {
        let bytes = if let Ok(ip) = part.parse::<Ipv4Addr>() {
            ip.octets().to_vec()
        } else if let Some(p) = protocol(part) {
            vec![p]
        } else {
            part.parse::<u16>().ok()?.to_be_bytes().to_vec()
        };
        out.extend_from_slice(&bytes);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    Some(out)
}

fn verdict(text: &str) -> Option<Verdict> {
    match text.split_once(' ')? {
        ("goto", chain) => Some(Verdict::Chain(VerdictKind::Goto, chain.to_string())),
        ("jump", chain) => Some(Verdict::Chain(VerdictKind::Jump, chain.to_string())),
        _ => None,
    }
}

/// A named set or map's declaration (`type ipv4_addr . inet_proto . inet_service : verdict;`,
/// `type ipv4_addr; flags dynamic,timeout; timeout 60s;`).
#[derive(Debug, PartialEq, Eq)]
struct SetDecl {
    key_type: u32,
    key_len: u32,
    flags: u32,
    /// A map's data type and length (a verdict's length is 0).
    data: Option<(u32, u32)>,
    timeout_ms: Option<u64>,
}

/// nft's type id of a concatenation: 6 bits per part. Its length: the parts' registers (4 bytes each).
fn concat_type(text: &str) -> Option<(u32, u32)> {
    let parts: Vec<(u32, u32)> = text.split(" . ").map(datatype).collect::<Option<_>>()?;
    let id = parts.iter().fold(0, |t, (id, _)| t << 6 | id);
    let len = match parts.as_slice() {
        [(_, len)] => *len,
        _ => parts.iter().map(|(_, len)| len.next_multiple_of(4)).sum(),
    };
    Some((id, len))
}

impl SetDecl {
    fn parse(decl: &str) -> Option<SetDecl> {
        let mut d = SetDecl { key_type: 0, key_len: 0, flags: 0, data: None, timeout_ms: None };
        for clause in decl.split(';').map(str::trim).filter(|c| !c.is_empty()) {
            let (word, rest) = clause.split_once(' ')?;
            match word {
                "type" => {
                    let (key, data) = match rest.split_once(" : ") {
                        Some((k, "verdict")) => (k, Some((0xffff_ff00, 0))),
                        Some((k, data)) => (k, Some(concat_type(data)?)),
                        None => (rest, None),
                    };
                    (d.key_type, d.key_len) = concat_type(key)?;
                    d.data = data;
                    d.flags |= if data.is_some() { 0x8 } else { 0 }; // NFT_SET_MAP
                }
                "flags" => {
                    for f in rest.split(',') {
                        d.flags |= match f.trim() {
                            "timeout" => 0x10,
                            "dynamic" => 0x20,
                            _ => return None,
                        };
                    }
                }
                "timeout" => d.timeout_ms = Some(rest.strip_suffix('s')?.parse::<u64>().ok()? * 1000),
                _ => return None,
            }
        }
        (d.key_len > 0).then_some(d)
    }

    /// NFTA_SET_NAME, _FLAGS, _KEY_TYPE, _KEY_LEN, _ID (the kernel wants one, unique in the batch),
    /// [_DATA_TYPE, _DATA_LEN], [_TIMEOUT], [_USERDATA].
    fn put(&self, a: &mut Attrs<'_>, name: &str, id: u32) {
        // An endpoint map is declared as nft declares `typeof numgen ... : ip daddr . th dport`: no key type
        // for the kernel, the expressions in the user data for nft's listing.
        let key_type = if self.key_type == INTEGER { 0 } else { self.key_type };
        a.str(2, name).u32(3, self.flags).u32(4, key_type).u32(5, self.key_len).u32(10, id);
        if let Some((ty, len)) = self.data {
            a.u32(6, ty).u32(7, len);
        }
        if let Some(t) = self.timeout_ms {
            a.u64(11, t);
        }
        if self.key_type == INTEGER {
            a.bytes(13, ENDPOINT_MAP_TYPEOF);
        }
    }
}

/// nft's `integer` type, written `type integer` here for what nft declares as `typeof numgen ...`.
const INTEGER: u32 = 4;

/// NFTA_SET_USERDATA as nft 1.0.6 sends it for `typeof numgen random mod 1 : ip daddr . th dport` (read
/// with strace): the key's byte order (host), the data's, and both `typeof` expressions (numgen; the
/// concatenation of the two payloads).
const ENDPOINT_MAP_TYPEOF: &[u8] = &[
    0x00, 0x04, 0x01, 0x00, 0x00, 0x00, 0x01, 0x04, 0x00, 0x00, 0x00, 0x00, 0x03, 0x1a, 0x00, 0x04, 0x17, 0x00, 0x00,
    0x00, 0x01, 0x12, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00, 0x01, 0x04, 0x01, 0x00, 0x00, 0x00, 0x02, 0x04, 0x00, 0x00,
    0x00, 0x00, 0x04, 0x34, 0x00, 0x04, 0x0d, 0x00, 0x00, 0x00, 0x01, 0x2c, 0x00, 0x14, 0x00, 0x04, 0x07, 0x00, 0x00,
    0x00, 0x01, 0x0c, 0x00, 0x04, 0x0c, 0x00, 0x00, 0x00, 0x01, 0x04, 0x0c, 0x00, 0x00, 0x00, 0x01, 0x14, 0x00, 0x04,
    0x07, 0x00, 0x00, 0x00, 0x01, 0x0c, 0x00, 0x04, 0x0b, 0x00, 0x00, 0x00, 0x01, 0x04, 0x02, 0x00, 0x00, 0x00, 0x06,
    0x04, 0x00, 0x00, 0x00, 0x00,
];

/// nft's datatype ids and widths (src/datatype.h).
fn datatype(name: &str) -> Option<(u32, u32)> {
    match name {
        "integer" => Some((INTEGER, 4)),
        "ipv4_addr" => Some((7, 4)),
        "inet_proto" => Some((12, 1)),
        "inet_service" => Some((13, 2)),
        _ => None,
    }
}

/// A base chain's declaration (`type nat hook output priority -100; policy accept;`).
struct BaseChain {
    kind: &'static str,
    hook: u32,
    priority: i32,
}

impl BaseChain {
    fn parse(decl: &str) -> Option<BaseChain> {
        let words: Vec<&str> = decl.split([' ', ';']).filter(|w| !w.is_empty()).collect();
        let [_, kind, _, hook, _, priority, _, "accept"] = words.as_slice() else { return None };
        Some(BaseChain {
            kind: match *kind {
                "nat" => "nat",
                "filter" => "filter",
                _ => return None,
            },
            hook: match *hook {
                "prerouting" => 0,
                "input" => 1,
                "forward" => 2,
                "output" => 3,
                "postrouting" => 4,
                _ => return None,
            },
            priority: match *priority {
                "dstnat" => -100,
                "srcnat" => 100,
                "filter" => 0,
                p => p.parse().ok()?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_become_nft_datatypes() {
        let map = SetDecl::parse("type ipv4_addr . inet_proto . inet_service : verdict;").expect("map");
        let verdict = Some((0xffff_ff00, 0));
        let key_type = (7 << 6 | 12) << 6 | 13;
        assert_eq!(map, SetDecl { key_type, key_len: 12, flags: 0x8, data: verdict, timeout_ms: None });
        let set = SetDecl::parse("type ipv4_addr; flags dynamic,timeout; timeout 60s;").expect("set");
        assert_eq!(set, SetDecl { key_type: 7, key_len: 4, flags: 0x30, data: None, timeout_ms: Some(60_000) });
        let endpoints = SetDecl::parse("type integer : ipv4_addr . inet_service;").expect("endpoint map");
        let data = Some((7 << 6 | 13, 8));
        assert_eq!(endpoints, SetDecl { key_type: INTEGER, key_len: 4, flags: 0x8, data, timeout_ms: None });
        let pairs = SetDecl::parse("type ipv4_addr . ipv4_addr;").expect("hairpin set");
        assert_eq!(pairs, SetDecl { key_type: 7 << 6 | 7, key_len: 8, flags: 0, data: None, timeout_ms: None });
        let base = BaseChain::parse("type nat hook prerouting priority dstnat; policy accept;").expect("chain");
        assert_eq!((base.kind, base.hook, base.priority), ("nat", 0, -100));
        assert!(BaseChain::parse("type nat hook output priority -100; policy drop;").is_none());
    }

    #[test]
    fn every_rendered_rule_and_declaration_encodes() {
        let ops = crate::proxy::ruleset::diff(None, &crate::proxy::render::render(&crate::proxy::tests::every_shape()));
        batch(&ops, Some(1)).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn keys_are_padded_per_part() {
        assert_eq!(key("10.96.0.10 . tcp . 80"), Some(vec![10, 96, 0, 10, 6, 0, 0, 0, 0, 80, 0, 0]));
        assert_eq!(key("udp . 30080"), Some(vec![17, 0, 0, 0, 0x75, 0x80, 0, 0]));
        assert_eq!(key("10.96.0.10 . icmp"), None);
        assert_eq!(map_key("endpoints-x", "3"), Some(3u32.to_ne_bytes().to_vec()));
        assert_eq!(map_key("hairpin-endpoints", "10.0.0.1 . 10.0.0.1"), Some(vec![10, 0, 0, 1, 10, 0, 0, 1]));
    }
}
