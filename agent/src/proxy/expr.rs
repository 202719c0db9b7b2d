//! nf_tables expressions (what a rule is made of in the kernel) and their netlink encoding. `compile.rs`
//! makes them from a rule's text.

use super::nfnl::Attrs;

/// The first 32-bit register (`NFT_REG32_00`); loads of a concatenation take consecutive ones.
pub const REG32_00: u32 = 8;
pub const REG_VERDICT: u32 = 0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerdictKind {
    Jump,
    Goto,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Chain(VerdictKind, String),
    Return,
    Accept,
}

/// One nf_tables expression with its attributes (`NFTA_*`), in the order nft prints them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Payload {
        base: u32,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    Meta {
        key: u32,
        dreg: u32,
    },
    MetaSet {
        key: u32,
        sreg: u32,
    },
    Ct {
        key: u32,
        dreg: u32,
    },
    Fib {
        flags: u32,
        result: u32,
        dreg: u32,
    },
    Numgen {
        modulus: u32,
        dreg: u32,
    },
    Bitwise {
        reg: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    Cmp {
        op: u32,
        sreg: u32,
        data: Vec<u8>,
    },
    /// `set: None` is the rule's own anonymous map (`Compiled::anonymous_map`).
    Lookup {
        set: Option<String>,
        sreg: u32,
        dreg: Option<u32>,
    },
    DynsetUpdate {
        set: String,
        sreg: u32,
    },
    Immediate {
        dreg: u32,
        data: Vec<u8>,
    },
    Verdict(Verdict),
    Dnat {
        addr_reg: u32,
        port_reg: u32,
    },
    Masquerade {
        fully_random: bool,
    },
    /// ICMP port unreachable.
    Reject,
}

/// A rule's expressions, and the anonymous verdict map its `vmap { ... }` needs (numgen index -> verdict).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    pub exprs: Vec<Expr>,
    pub anonymous_map: Option<Vec<(u32, Verdict)>>,
}

// nf_tables attribute numbers (linux/netfilter/nf_tables.h).
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

/// A verdict as `NFTA_DATA_VERDICT` (inside an immediate or a map element's data).
pub fn put_verdict(a: &mut Attrs<'_>, v: &Verdict) {
    a.nest(NFTA_DATA_VERDICT, |a| {
        let (code, chain) = match v {
            Verdict::Chain(VerdictKind::Jump, c) => (-3i32, Some(c)),
            Verdict::Chain(VerdictKind::Goto, c) => (-4, Some(c)),
            Verdict::Return => (-5, None),
            Verdict::Accept => (1, None),
        };
        a.u32(NFTA_VERDICT_CODE, code as u32);
        if let Some(c) = chain {
            a.str(NFTA_VERDICT_CHAIN, c);
        }
    });
}

pub fn put_value(a: &mut Attrs<'_>, ty: u16, data: &[u8]) {
    a.nest(ty, |a| {
        a.bytes(NFTA_DATA_VALUE, data);
    });
}

/// `NFTA_RULE_EXPRESSIONS`' content. `anonymous`: the name and batch id of the rule's anonymous map.
pub fn put_exprs(a: &mut Attrs<'_>, exprs: &[Expr], anonymous: (&str, u32)) {
    for e in exprs {
        a.nest(NFTA_LIST_ELEM, |a| put_expr(a, e, anonymous));
    }
}

fn put_expr(a: &mut Attrs<'_>, e: &Expr, (anon_name, anon_id): (&str, u32)) {
    let name = match e {
        Expr::Payload { .. } => "payload",
        Expr::Meta { .. } | Expr::MetaSet { .. } => "meta",
        Expr::Ct { .. } => "ct",
        Expr::Fib { .. } => "fib",
        Expr::Numgen { .. } => "numgen",
        Expr::Bitwise { .. } => "bitwise",
        Expr::Cmp { .. } => "cmp",
        Expr::Lookup { .. } => "lookup",
        Expr::DynsetUpdate { .. } => "dynset",
        Expr::Immediate { .. } | Expr::Verdict(_) => "immediate",
        Expr::Dnat { .. } => "nat",
        Expr::Masquerade { .. } => "masq",
        Expr::Reject => "reject",
    };
    a.str(NFTA_EXPR_NAME, name);
    a.nest(NFTA_EXPR_DATA, |a| match e {
        // NFTA_PAYLOAD_DREG, _BASE, _OFFSET, _LEN
        Expr::Payload { base, offset, len, dreg } => {
            a.u32(1, *dreg).u32(2, *base).u32(3, *offset).u32(4, *len);
        }
        // NFTA_META_DREG, _KEY / NFTA_META_KEY, _SREG
        Expr::Meta { key, dreg } => {
            a.u32(1, *dreg).u32(2, *key);
        }
        Expr::MetaSet { key, sreg } => {
            a.u32(2, *key).u32(3, *sreg);
        }
        // NFTA_CT_DREG, _KEY
        Expr::Ct { key, dreg } => {
            a.u32(1, *dreg).u32(2, *key);
        }
        // NFTA_FIB_DREG, _RESULT, _FLAGS
        Expr::Fib { flags, result, dreg } => {
            a.u32(1, *dreg).u32(2, *result).u32(3, *flags);
        }
        // NFTA_NG_DREG, _MODULUS, _TYPE (NFT_NG_RANDOM), _OFFSET
        Expr::Numgen { modulus, dreg } => {
            a.u32(1, *dreg).u32(2, *modulus).u32(3, 1).u32(4, 0);
        }
        // NFTA_BITWISE_SREG, _DREG, _LEN, _MASK, _XOR
        Expr::Bitwise { reg, mask, xor } => {
            a.u32(1, *reg).u32(2, *reg).u32(3, mask.len() as u32);
            put_value(a, 4, mask);
            put_value(a, 5, xor);
        }
        // NFTA_CMP_SREG, _OP, _DATA
        Expr::Cmp { op, sreg, data } => {
            a.u32(1, *sreg).u32(2, *op);
            put_value(a, 3, data);
        }
        // NFTA_LOOKUP_SET, _SREG, _DREG, _SET_ID
        Expr::Lookup { set, sreg, dreg } => {
            a.str(1, set.as_deref().unwrap_or(anon_name)).u32(2, *sreg);
            if let Some(d) = dreg {
                a.u32(3, *d);
            }
            if set.is_none() {
                a.u32(4, anon_id);
            }
        }
        // NFTA_DYNSET_SET_NAME, _OP (NFT_DYNSET_OP_UPDATE), _SREG_KEY
        Expr::DynsetUpdate { set, sreg } => {
            a.str(1, set).u32(3, 1).u32(4, *sreg);
        }
        // NFTA_IMMEDIATE_DREG, _DATA
        Expr::Immediate { dreg, data } => {
            a.u32(1, *dreg);
            put_value(a, 2, data);
        }
        Expr::Verdict(v) => {
            a.u32(1, REG_VERDICT);
            a.nest(2, |a| put_verdict(a, v));
        }
        // NFTA_NAT_TYPE (NFT_NAT_DNAT), _FAMILY (NFPROTO_IPV4), _REG_ADDR_MIN, _REG_PROTO_MIN, _FLAGS
        // (NF_NAT_RANGE_PROTO_SPECIFIED, as nft sends it)
        Expr::Dnat { addr_reg, port_reg } => {
            a.u32(1, 1).u32(2, 2).u32(3, *addr_reg).u32(5, *port_reg).u32(7, 2);
        }
        // NFTA_MASQ_FLAGS: NF_NAT_RANGE_PROTO_RANDOM_FULLY
        Expr::Masquerade { fully_random } => {
            if *fully_random {
                a.u32(1, 0x10);
            }
        }
        // NFTA_REJECT_TYPE (NFT_REJECT_ICMP_UNREACH), _ICMP_CODE (port unreachable)
        Expr::Reject => {
            a.u32(1, 0).bytes(2, &[3]);
        }
    });
}
