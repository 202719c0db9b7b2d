//! A rule's nft text, as `render.rs` writes it, compiled into nf_tables expressions: the same register
//! programs nft 1.0.6 generates for them (`nft --debug=netlink` shows them), so that `nft list` prints the
//! rule the renderer wrote. The grammar is the renderer's vocabulary, not nft's: a phrase outside it is an
//! error naming the phrase (`kernel.rs`' test `every_rendered_rule_and_declaration_encodes` runs every shape
//! the renderer has through it).

use std::net::Ipv4Addr;

use super::expr::{Compiled, Expr, Verdict, VerdictKind, REG32_00, REG_VERDICT};

#[derive(Debug, thiserror::Error)]
#[error("rule `{rule}`: {reason}")]
pub struct CompileError {
    pub rule: String,
    pub reason: String,
}

/// A selector: what it loads and how its values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Selector {
    IpAddr { offset: u32 },
    L4Proto,
    Mark,
    ThDport,
    CtState,
    FibType { flags: u32 },
    Numgen { modulus: u32 },
}

impl Selector {
    fn len(self) -> u32 {
        match self {
            Selector::IpAddr { .. } | Selector::Mark | Selector::CtState | Selector::FibType { .. } => 4,
            Selector::Numgen { .. } => 4,
            Selector::L4Proto => 1,
            Selector::ThDport => 2,
        }
    }

    fn load(self, dreg: u32) -> Expr {
        match self {
            Selector::IpAddr { offset } => Expr::Payload { base: 1, offset, len: 4, dreg },
            Selector::L4Proto => Expr::Meta { key: META_L4PROTO, dreg },
            Selector::Mark => Expr::Meta { key: META_MARK, dreg },
            Selector::ThDport => Expr::Payload { base: 2, offset: 2, len: 2, dreg },
            Selector::CtState => Expr::Ct { key: 0, dreg },
            Selector::FibType { flags } => Expr::Fib { flags, result: 3, dreg },
            Selector::Numgen { modulus } => Expr::Numgen { modulus, dreg },
        }
    }
}

const META_MARK: u32 = 3;
const META_L4PROTO: u32 = 16;
const CMP_EQ: u32 = 0;
const CMP_NEQ: u32 = 1;

/// A value in the byte order and width `sel` loads it in.
fn encode(sel: Selector, text: &str) -> Option<Vec<u8>> {
    Some(match sel {
        Selector::IpAddr { .. } => text.parse::<Ipv4Addr>().ok()?.octets().to_vec(),
        Selector::L4Proto => vec![protocol(text)?],
        Selector::ThDport => text.parse::<u16>().ok()?.to_be_bytes().to_vec(),
        Selector::Mark | Selector::Numgen { .. } => int(text)?.to_ne_bytes().to_vec(),
        // nf_conntrack's state bits: 1 << (IP_CT_* + 1), host order.
        Selector::CtState => match text {
            "established" => 2u32,
            "related" => 4,
            "new" => 8,
            _ => return None,
        }
        .to_ne_bytes()
        .to_vec(),
        Selector::FibType { .. } => match text {
            "local" => 2u32, // RTN_LOCAL
            _ => return None,
        }
        .to_ne_bytes()
        .to_vec(),
    })
}

pub fn protocol(name: &str) -> Option<u8> {
    match name {
        "tcp" => Some(6),
        "udp" => Some(17),
        "sctp" => Some(132),
        _ => None,
    }
}

fn int(text: &str) -> Option<u32> {
    match text.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

struct Parser<'a> {
    words: Vec<&'a str>,
    at: usize,
    out: Compiled,
}

impl<'a> Parser<'a> {
    fn next(&mut self) -> Result<&'a str, String> {
        let w = self.words.get(self.at).copied().ok_or("ends early")?;
        self.at += 1;
        Ok(w)
    }

    fn peek(&self) -> Option<&'a str> {
        self.words.get(self.at).copied()
    }

    fn expect(&mut self, word: &str) -> Result<(), String> {
        match self.next()? {
            w if w == word => Ok(()),
            w => Err(format!("`{w}` where `{word}` belongs")),
        }
    }

    fn push(&mut self, e: Expr) {
        self.out.exprs.push(e);
    }

    fn selector(&mut self, first: &str) -> Result<Option<Selector>, String> {
        let sel = match (first, self.peek()) {
            ("ip", Some("saddr")) => Selector::IpAddr { offset: 12 },
            ("ip", Some("daddr")) => Selector::IpAddr { offset: 16 },
            ("meta", Some("l4proto")) => Selector::L4Proto,
            ("meta", Some("mark")) => Selector::Mark,
            ("th", Some("dport")) => Selector::ThDport,
            ("ct", Some("state")) => Selector::CtState,
            ("fib", Some(which @ ("saddr" | "daddr"))) => {
                self.at += 1;
                self.expect("type")?;
                return Ok(Some(Selector::FibType { flags: if which == "saddr" { 1 } else { 2 } }));
            }
            ("numgen", Some("random")) => {
                self.at += 1;
                self.expect("mod")?;
                let m = self.next()?;
                return Ok(Some(Selector::Numgen { modulus: int(m).ok_or(format!("modulus `{m}`"))? }));
            }
            _ => return Ok(None),
        };
        self.at += 1;
        Ok(Some(sel))
    }

    fn verdict(&mut self, word: &str) -> Result<Option<Verdict>, String> {
        Ok(Some(match word {
            "jump" => Verdict::Chain(VerdictKind::Jump, self.next()?.to_string()),
            "goto" => Verdict::Chain(VerdictKind::Goto, self.next()?.to_string()),
            "return" => Verdict::Return,
            "accept" => Verdict::Accept,
            _ => return Ok(None),
        }))
    }

    fn statement(&mut self, word: &'a str) -> Result<(), String> {
        if let Some(v) = self.verdict(word)? {
            self.push(Expr::Verdict(v));
            return Ok(());
        }
        match word {
            "reject" => self.push(Expr::Reject),
            "masquerade" => {
                let fully_random = self.peek() == Some("fully-random");
                self.at += usize::from(fully_random);
                self.push(Expr::Masquerade { fully_random });
            }
            "dnat" if self.peek() == Some("ip") => {
                // `dnat ip to numgen random mod N map @M`: the index picks an `address . port` from M.
                let (_, _, first) = (self.next()?, self.expect("to")?, self.next()?);
                let Some(pick @ Selector::Numgen { .. }) = self.selector(first)? else {
                    return Err(format!("dnat ip to `{first}`"));
                };
                self.expect("map")?;
                let map = self.next()?.strip_prefix('@').ok_or("dnat through a map not named with @")?.to_string();
                self.push(pick.load(REG32_00));
                self.push(Expr::Lookup { set: Some(map), sreg: REG32_00, dreg: Some(REG32_00) });
                self.push(Expr::Dnat { addr_reg: REG32_00, port_reg: REG32_00 + 1 });
            }
            "dnat" => {
                self.expect("to")?;
                let to = self.next()?;
                let to: std::net::SocketAddrV4 = to.parse().map_err(|_| format!("dnat to `{to}`"))?;
                self.push(Expr::Immediate { dreg: REG32_00, data: to.ip().octets().to_vec() });
                self.push(Expr::Immediate { dreg: REG32_00 + 1, data: to.port().to_be_bytes().to_vec() });
                self.push(Expr::Dnat { addr_reg: REG32_00, port_reg: REG32_00 + 1 });
            }
            "update" => {
                let set = self.next()?.strip_prefix('@').ok_or("update of a set not named with @")?.to_string();
                self.expect("{")?;
                let first = self.next()?;
                let sel = self.selector(first)?.ok_or(format!("update key `{first}`"))?;
                self.expect("}")?;
                self.push(sel.load(REG32_00));
                self.push(Expr::DynsetUpdate { set, sreg: REG32_00 });
            }
            _ => {
                let sel = self.selector(word)?.ok_or(format!("unknown phrase `{word}`"))?;
                self.matching(sel)?;
            }
        }
        Ok(())
    }

    /// A selector (or a concatenation starting with it) and what is done with what it loaded.
    fn matching(&mut self, first: Selector) -> Result<(), String> {
        let mut reg = REG32_00;
        self.push(first.load(reg));
        reg += first.len().div_ceil(4);
        while self.peek() == Some(".") {
            self.at += 1;
            let w = self.next()?;
            let sel = self.selector(w)?.ok_or(format!("concatenation of `{w}`"))?;
            self.push(sel.load(reg));
            reg += sel.len().div_ceil(4);
        }
        let concatenated = reg - REG32_00 > first.len().div_ceil(4);
        let op = self.next()?;
        match op {
            "vmap" if self.peek() == Some("{") => {
                self.at += 1;
                let mut arms = Vec::new();
                loop {
                    let key = self.next()?;
                    let key = int(key).ok_or(format!("vmap key `{key}`"))?;
                    self.expect(":")?;
                    let v = self.next()?;
                    let v = self.verdict(v)?.ok_or(format!("vmap verdict `{v}`"))?;
                    arms.push((key, v));
                    match self.next()? {
                        "," => continue,
                        "}" => break,
                        w => return Err(format!("`{w}` in a vmap")),
                    }
                }
                self.out.anonymous_map = Some(arms);
                self.push(Expr::Lookup { set: None, sreg: REG32_00, dreg: Some(REG_VERDICT) });
            }
            "vmap" => {
                let map = self.next()?.strip_prefix('@').ok_or("vmap of a map not named with @")?.to_string();
                self.push(Expr::Lookup { set: Some(map), sreg: REG32_00, dreg: Some(REG_VERDICT) });
            }
            _ if op.starts_with('@') => {
                self.push(Expr::Lookup { set: Some(op[1..].to_string()), sreg: REG32_00, dreg: None });
            }
            _ if concatenated => return Err(format!("`{op}` after a concatenation")),
            "set" => {
                // `meta mark set meta mark | 0x4000` and `^`: load (already done), and/xor, store.
                let (src, _) = (self.next()?, self.expect("mark")?);
                if (first, src) != (Selector::Mark, "meta") {
                    return Err("only `meta mark set meta mark ...`".into());
                }
                let how = self.next()?;
                let v = self.next()?;
                let bits = int(v).ok_or(format!("mark `{v}`"))?;
                let (mask, xor) = match how {
                    "|" => (!bits, bits),
                    "^" => (u32::MAX, bits),
                    _ => return Err(format!("mark operator `{how}`")),
                };
                self.push(Expr::Bitwise {
                    reg: REG32_00,
                    mask: mask.to_ne_bytes().into(),
                    xor: xor.to_ne_bytes().into(),
                });
                self.push(Expr::MetaSet { key: META_MARK, sreg: REG32_00 });
            }
            "&" => {
                let (m, _) = (self.next()?, self.expect("==")?);
                let mask = int(m).ok_or(format!("mask `{m}`"))?;
                let v = self.next()?;
                let v = int(v).ok_or(format!("value `{v}`"))?;
                self.push(Expr::Bitwise { reg: REG32_00, mask: mask.to_ne_bytes().into(), xor: vec![0; 4] });
                self.push(Expr::Cmp { op: CMP_EQ, sreg: REG32_00, data: v.to_ne_bytes().into() });
            }
            _ => {
                let (cmp, v) = match op {
                    "!=" => (CMP_NEQ, self.next()?),
                    "==" => (CMP_EQ, self.next()?),
                    v => (CMP_EQ, v),
                };
                self.compare(first, cmp, v)?;
            }
        }
        Ok(())
    }

    fn compare(&mut self, sel: Selector, op: u32, v: &str) -> Result<(), String> {
        if sel == Selector::CtState {
            // A state is a bit of the state mask: (state & bit) != 0, as nft writes it.
            let bit = encode(sel, v).ok_or(format!("ct state `{v}`"))?;
            self.push(Expr::Bitwise { reg: REG32_00, mask: bit, xor: vec![0; 4] });
            let op = if op == CMP_EQ { CMP_NEQ } else { CMP_EQ };
            self.push(Expr::Cmp { op, sreg: REG32_00, data: vec![0; 4] });
            return Ok(());
        }
        if let (Selector::IpAddr { .. }, Some((addr, prefix))) = (sel, v.split_once('/')) {
            // A whole-byte prefix loads only its bytes (nft's own shortening: 127.0.0.0/8 is one byte).
            let prefix: u32 = prefix.parse().map_err(|_| format!("prefix `{v}`"))?;
            let addr: Ipv4Addr = addr.parse().map_err(|_| format!("address `{v}`"))?;
            if !prefix.is_multiple_of(8) || prefix == 0 || prefix > 32 {
                return Err(format!("prefix `{v}` (whole bytes only)"));
            }
            let len = prefix / 8;
            if let Some(Expr::Payload { len: l, .. }) = self.out.exprs.last_mut() {
                *l = len;
            }
            self.push(Expr::Cmp { op, sreg: REG32_00, data: addr.octets()[..len as usize].to_vec() });
            return Ok(());
        }
        let data = encode(sel, v).ok_or(format!("value `{v}`"))?;
        self.push(Expr::Cmp { op, sreg: REG32_00, data });
        Ok(())
    }
}

/// `text` (a rendered rule, without its comment) as expressions.
pub fn compile(text: &str) -> Result<Compiled, CompileError> {
    let spaced = text.replace(',', " , ");
    let mut p = Parser {
        words: spaced.split_whitespace().collect(),
        at: 0,
        out: Compiled { exprs: Vec::new(), anonymous_map: None },
    };
    while let Some(w) = p.peek() {
        p.at += 1;
        p.statement(w).map_err(|reason| CompileError { rule: text.to_string(), reason })?;
    }
    Ok(p.out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exprs(text: &str) -> Vec<Expr> {
        compile(text).unwrap_or_else(|e| panic!("{e}")).exprs
    }

    #[test]
    fn a_concatenated_lookup_loads_consecutive_registers() {
        assert_eq!(
            exprs("ip daddr . meta l4proto . th dport vmap @service-ips"),
            [
                Expr::Payload { base: 1, offset: 16, len: 4, dreg: 8 },
                Expr::Meta { key: META_L4PROTO, dreg: 9 },
                Expr::Payload { base: 2, offset: 2, len: 2, dreg: 10 },
                Expr::Lookup { set: Some("service-ips".into()), sreg: 8, dreg: Some(0) },
            ]
        );
    }

    #[test]
    fn ct_state_and_prefixes_are_compiled_as_nft_does() {
        assert_eq!(
            exprs("ct state new jump x"),
            [
                Expr::Ct { key: 0, dreg: 8 },
                Expr::Bitwise { reg: 8, mask: 8u32.to_ne_bytes().into(), xor: vec![0; 4] },
                Expr::Cmp { op: CMP_NEQ, sreg: 8, data: vec![0; 4] },
                Expr::Verdict(Verdict::Chain(VerdictKind::Jump, "x".into())),
            ]
        );
        assert_eq!(
            exprs("ip daddr != 127.0.0.0/8")[..],
            [
                Expr::Payload { base: 1, offset: 16, len: 1, dreg: 8 },
                Expr::Cmp { op: CMP_NEQ, sreg: 8, data: vec![127] }
            ]
        );
    }

    #[test]
    fn numgen_picks_through_an_anonymous_map() {
        let c = compile("numgen random mod 2 vmap { 0 : goto a, 1 : goto b }").expect("compiles");
        assert_eq!(c.exprs[0], Expr::Numgen { modulus: 2, dreg: 8 });
        assert_eq!(c.exprs[1], Expr::Lookup { set: None, sreg: 8, dreg: Some(0) });
        let goto = |c: &str| Verdict::Chain(VerdictKind::Goto, c.into());
        assert_eq!(c.anonymous_map, Some(vec![(0, goto("a")), (1, goto("b"))]));
    }

    #[test]
    fn dnat_through_an_endpoint_map_and_a_pair_lookup() {
        assert_eq!(
            exprs("meta l4proto tcp dnat ip to numgen random mod 3 map @endpoints-x")[2..],
            [
                Expr::Numgen { modulus: 3, dreg: 8 },
                Expr::Lookup { set: Some("endpoints-x".into()), sreg: 8, dreg: Some(8) },
                Expr::Dnat { addr_reg: 8, port_reg: 9 },
            ]
        );
        assert_eq!(
            exprs("ip saddr . ip daddr @hairpin-endpoints jump mark-for-masquerade")[..3],
            [
                Expr::Payload { base: 1, offset: 12, len: 4, dreg: 8 },
                Expr::Payload { base: 1, offset: 16, len: 4, dreg: 9 },
                Expr::Lookup { set: Some("hairpin-endpoints".into()), sreg: 8, dreg: None },
            ]
        );
    }

    #[test]
    fn dnat_and_marks() {
        assert_eq!(
            exprs("meta l4proto tcp dnat to 10.244.0.5:8080")[..],
            [
                Expr::Meta { key: META_L4PROTO, dreg: 8 },
                Expr::Cmp { op: CMP_EQ, sreg: 8, data: vec![6] },
                Expr::Immediate { dreg: 8, data: vec![10, 244, 0, 5] },
                Expr::Immediate { dreg: 9, data: 8080u16.to_be_bytes().into() },
                Expr::Dnat { addr_reg: 8, port_reg: 9 },
            ]
        );
        assert_eq!(
            exprs("meta mark set meta mark | 0x4000")[1],
            Expr::Bitwise { reg: 8, mask: (!0x4000u32).to_ne_bytes().into(), xor: 0x4000u32.to_ne_bytes().into() }
        );
    }

    #[test]
    fn a_phrase_outside_the_vocabulary_is_named() {
        let e = compile("ip daddr 10.0.0.1 counter accept").expect_err("counter is not rendered");
        assert_eq!(e.to_string(), "rule `ip daddr 10.0.0.1 counter accept`: unknown phrase `counter`");
    }
}
