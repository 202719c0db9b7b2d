//! The proxy's nftables table as data, the difference between two of them as operations, and those
//! operations as one `nft -f` transaction. The same model holds what the agent wants (rendered from the
//! spec) and what the kernel has (read back from `nft -j`), so one comparison serves both a PUT and the
//! periodic repair.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddrV4;

use sha2::Digest;

/// The proxy's own table: everything it does lives here, so it never touches another program's rules.
pub const TABLE: &str = "testbed-proxy";

/// One rule. Rules are compared by `id`, a hash of their text that the rule carries as its nft comment, so
/// that a rule read back from the kernel (whose JSON form differs from the text) can be matched to its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub id: String,
    /// nft syntax, without the comment. Empty for rules read back from the kernel.
    pub text: String,
    /// Chains the rule jumps or goes to.
    pub targets: Vec<String>,
    /// Named sets and maps the rule looks up or updates (`@affinity-...`), without the `@`.
    pub sets: Vec<String>,
    /// Where the rule DNATs to, if it does.
    pub dnat: Option<SocketAddrV4>,
}

impl Rule {
    pub fn new(text: String) -> Rule {
        let id = hex::encode(&sha2::Sha256::digest(text.as_bytes())[..6]);
        let mut words = text.split_whitespace().peekable();
        let (mut targets, mut sets, mut dnat) = (Vec::new(), Vec::new(), None);
        while let Some(w) = words.next() {
            match (w, words.peek()) {
                ("goto" | "jump", Some(t)) => targets.push(t.trim_end_matches([',', '}']).to_string()),
                ("to", Some(addr)) => dnat = addr.parse().ok(),
                _ => {}
            }
            if let Some(set) = w.strip_prefix('@') {
                sets.push(set.to_string());
            }
        }
        Rule { id, text, targets, sets, dnat }
    }
}

/// A chain; `base` is the hook declaration of a base chain (`type nat hook output priority -100; policy accept;`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chain {
    pub base: Option<String>,
    pub rules: Vec<Rule>,
}

/// A map, or a set whose elements the agent writes; `decl` is its type (`type ipv4_addr . inet_proto .
/// inet_service : verdict;`, `type ipv4_addr . ipv4_addr;` for a set).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Map {
    pub decl: String,
    /// key -> value, both as nft writes them (`10.96.0.10 . tcp . 80` -> `goto service-...`, `0` ->
    /// `10.244.0.2 . 8080`); the value is empty in a set.
    pub elements: BTreeMap<String, String>,
}

impl Map {
    pub fn is_set(decl: &str) -> bool {
        !decl.contains(" : ")
    }
}

/// The whole table. `sets` are the per-endpoint affinity sets: their elements are the kernel's (written by
/// packets), so only their existence is compared; the timeout is part of their name. A set whose elements
/// the agent writes (the hairpin pairs) is one of `maps`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub chains: BTreeMap<String, Chain>,
    pub sets: BTreeMap<String, String>,
    pub maps: BTreeMap<String, Map>,
}

/// One step of a transaction, in the order `diff` puts them (things are created before anything refers to
/// them and unreferenced before they are deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    AddTable,
    AddSet { name: String, decl: String },
    AddMap { name: String, decl: String },
    AddChain { name: String, base: Option<String> },
    FlushChain(String),
    AddRule { chain: String, rule: Rule },
    DeleteElements { map: String, keys: Vec<String> },
    AddElements { map: String, elements: Vec<(String, String)> },
    DeleteChain(String),
    DeleteSet(String),
    DeleteMap(String),
}

/// The operations that turn `have` (None: no table) into `want`. Empty when they already match.
pub fn diff(have: Option<&Ruleset>, want: &Ruleset) -> Vec<Op> {
    let empty = Ruleset::default();
    let mut ops = Vec::new();
    if have.is_none() {
        ops.push(Op::AddTable);
    }
    let have = have.unwrap_or(&empty);
    // The kernel finds a set by name by walking the table's list of them in the order they were made, for
    // every element operation: the few that every change touches (the lookup maps, the hairpin pairs) come
    // first, the per-Service ones after them.
    let mut new_maps: Vec<(&String, &Map)> = want.maps.iter().filter(|(n, _)| !have.maps.contains_key(*n)).collect();
    new_maps.sort_by_key(|(name, _)| (name.contains("/"), name.as_str()));
    for (name, map) in new_maps {
        ops.push(Op::AddMap { name: name.clone(), decl: map.decl.clone() });
    }
    for (name, decl) in want.sets.iter().filter(|(n, _)| !have.sets.contains_key(*n)) {
        ops.push(Op::AddSet { name: name.clone(), decl: decl.clone() });
    }
    for (name, chain) in want.chains.iter().filter(|(n, _)| !have.chains.contains_key(*n)) {
        ops.push(Op::AddChain { name: name.clone(), base: chain.base.clone() });
    }
    // A chain whose rules differ in any way is rewritten whole: its rules are few (at most one per endpoint
    // and three), and flush + add in one transaction never shows a half-written chain to a packet.
    for (name, chain) in &want.chains {
        let had = have.chains.get(name).map(|c| c.rules.as_slice()).unwrap_or_default();
        if had.iter().map(|r| &r.id).ne(chain.rules.iter().map(|r| &r.id)) {
            if !had.is_empty() {
                ops.push(Op::FlushChain(name.clone()));
            }
            ops.extend(chain.rules.iter().map(|r| Op::AddRule { chain: name.clone(), rule: r.clone() }));
        }
    }
    for (name, map) in &want.maps {
        let had = have.maps.get(name).map(|m| &m.elements);
        let stale: Vec<String> = had
            .into_iter()
            .flatten()
            .filter(|(k, v)| map.elements.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .collect();
        let missing: Vec<(String, String)> = map
            .elements
            .iter()
            .filter(|(k, v)| had.and_then(|h| h.get(*k)) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !stale.is_empty() {
            ops.push(Op::DeleteElements { map: name.clone(), keys: stale });
        }
        if !missing.is_empty() {
            ops.push(Op::AddElements { map: name.clone(), elements: missing });
        }
    }
    // Stale chains may refer to each other (a service chain to its endpoint chains): all are emptied first.
    let stale_chains: Vec<(&String, &Chain)> =
        have.chains.iter().filter(|(n, _)| !want.chains.contains_key(*n)).collect();
    ops.extend(stale_chains.iter().filter(|(_, c)| !c.rules.is_empty()).map(|(n, _)| Op::FlushChain((*n).clone())));
    ops.extend(stale_chains.iter().map(|(n, _)| Op::DeleteChain((*n).clone())));
    ops.extend(have.sets.keys().filter(|n| !want.sets.contains_key(*n)).map(|n| Op::DeleteSet(n.clone())));
    ops.extend(have.maps.keys().filter(|n| !want.maps.contains_key(*n)).map(|n| Op::DeleteMap(n.clone())));
    ops
}

/// The operations as one `nft -f` script: nft runs a whole file as one transaction, all or nothing.
pub fn script(ops: &[Op]) -> String {
    let mut s = String::new();
    let t = format!("ip {TABLE}");
    for op in ops {
        // Writing to a String cannot fail.
        let _ = match op {
            Op::AddTable => writeln!(s, "add table {t}"),
            Op::AddSet { name, decl } => writeln!(s, "add set {t} {name} {{ {decl} }}"),
            Op::AddMap { name, decl } if Map::is_set(decl) => writeln!(s, "add set {t} {name} {{ {decl} }}"),
            Op::AddMap { name, decl } => writeln!(s, "add map {t} {name} {{ {} }}", nft_decl(decl)),
            Op::AddChain { name, base: None } => writeln!(s, "add chain {t} {name}"),
            Op::AddChain { name, base: Some(base) } => writeln!(s, "add chain {t} {name} {{ {base} }}"),
            Op::FlushChain(name) => writeln!(s, "flush chain {t} {name}"),
            Op::AddRule { chain, rule } => writeln!(s, "add rule {t} {chain} {} comment \"{}\"", rule.text, rule.id),
            Op::DeleteElements { map, keys } => writeln!(s, "delete element {t} {map} {{ {} }}", keys.join(", ")),
            Op::AddElements { map, elements } => {
                let element = |(k, v): &(String, String)| if v.is_empty() { k.clone() } else { format!("{k} : {v}") };
                let list: Vec<String> = elements.iter().map(element).collect();
                writeln!(s, "add element {t} {map} {{ {} }}", list.join(", "))
            }
            Op::DeleteChain(name) => writeln!(s, "delete chain {t} {name}"),
            Op::DeleteSet(name) => writeln!(s, "delete set {t} {name}"),
            Op::DeleteMap(name) => writeln!(s, "delete map {t} {name}"),
        };
    }
    s
}

/// `decl` as nft's grammar has it: an integer key (an endpoint map's index) has no type name there, only
/// the `typeof` of the expression that makes it.
fn nft_decl(decl: &str) -> String {
    match decl.strip_prefix("type integer : ipv4_addr . inet_service;") {
        Some(rest) => format!("typeof numgen random mod 1 : ip daddr . th dport;{rest}"),
        None => decl.to_string(),
    }
}

/// What a kernel that applied `ops` holds: the fake kernel of the unit tests, and the agent's own record of
/// what it wrote (so that the next PUT is diffed without reading the kernel back).
pub fn apply_ops(ruleset: &mut Option<Ruleset>, ops: &[Op]) {
    for op in ops {
        let r = ruleset.get_or_insert_with(Ruleset::default);
        match op {
            Op::AddTable => {}
            Op::AddSet { name, decl } => drop(r.sets.insert(name.clone(), decl.clone())),
            Op::AddMap { name, decl } => {
                r.maps.entry(name.clone()).or_insert_with(|| Map { decl: decl.clone(), elements: BTreeMap::new() });
            }
            Op::AddChain { name, base } => {
                r.chains.entry(name.clone()).or_insert_with(|| Chain { base: base.clone(), rules: Vec::new() });
            }
            Op::FlushChain(name) => r.chains.entry(name.clone()).or_default().rules.clear(),
            Op::AddRule { chain, rule } => r.chains.entry(chain.clone()).or_default().rules.push(rule.clone()),
            Op::DeleteElements { map, keys } => {
                let m = r.maps.entry(map.clone()).or_default();
                keys.iter().for_each(|k| drop(m.elements.remove(k)));
            }
            Op::AddElements { map, elements } => {
                r.maps.entry(map.clone()).or_default().elements.extend(elements.iter().cloned());
            }
            Op::DeleteChain(name) => drop(r.chains.remove(name)),
            Op::DeleteSet(name) => drop(r.sets.remove(name)),
            Op::DeleteMap(name) => drop(r.maps.remove(name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ruleset(chains: &[(&str, &[&str])], elements: &[(&str, &str)]) -> Ruleset {
        let mut r = Ruleset::default();
        for (name, rules) in chains {
            let rules = rules.iter().map(|t| Rule::new(t.to_string())).collect();
            r.chains.insert(name.to_string(), Chain { base: None, rules });
        }
        let map = r.maps.entry("service-ips".into()).or_default();
        map.elements.extend(elements.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        r
    }

    #[test]
    fn rules_know_their_targets_and_dnat() {
        let r = Rule::new("numgen random mod 2 vmap { 0 : goto endpoint-a, 1 : goto endpoint-b }".into());
        assert_eq!(r.targets, ["endpoint-a", "endpoint-b"]);
        let r = Rule::new("meta l4proto tcp dnat to 10.244.0.5:8080".into());
        assert_eq!(r.dnat, Some("10.244.0.5:8080".parse().expect("addr")));
    }

    #[test]
    fn equal_rulesets_need_nothing_and_a_missing_table_everything() {
        let want = ruleset(&[("svc", &["goto ep"]), ("ep", &["dnat to 1.2.3.4:80"])], &[("k", "goto svc")]);
        assert_eq!(diff(Some(&want), &want), []);
        let ops = diff(None, &want);
        assert_eq!(ops[0], Op::AddTable);
        let mut have = None;
        apply_ops(&mut have, &ops);
        assert_eq!(have.as_ref(), Some(&want));
    }

    #[test]
    fn one_changed_endpoint_rewrites_only_its_chains() {
        let have = ruleset(
            &[("svc", &["goto ep1"]), ("ep1", &["dnat to 1.1.1.1:80"]), ("other", &["dnat to 9.9.9.9:80"])],
            &[("k", "goto svc"), ("k2", "goto other")],
        );
        let want = ruleset(
            &[("svc", &["goto ep2"]), ("ep2", &["dnat to 2.2.2.2:80"]), ("other", &["dnat to 9.9.9.9:80"])],
            &[("k", "goto svc"), ("k2", "goto other")],
        );
        let ops = diff(Some(&have), &want);
        let text = script(&ops);
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                "add chain ip testbed-proxy ep2",
                &format!(
                    "add rule ip testbed-proxy ep2 dnat to 2.2.2.2:80 comment \"{}\"",
                    Rule::new("dnat to 2.2.2.2:80".into()).id
                ),
                "flush chain ip testbed-proxy svc",
                &format!("add rule ip testbed-proxy svc goto ep2 comment \"{}\"", Rule::new("goto ep2".into()).id),
                "flush chain ip testbed-proxy ep1",
                "delete chain ip testbed-proxy ep1",
            ]
        );
    }

    #[test]
    fn a_changed_map_value_is_deleted_then_added() {
        let have = ruleset(&[], &[("k", "goto a"), ("gone", "goto a")]);
        let want = ruleset(&[], &[("k", "goto b")]);
        let ops = diff(Some(&have), &want);
        assert_eq!(
            ops,
            [
                Op::DeleteElements { map: "service-ips".into(), keys: vec!["gone".into(), "k".into()] },
                Op::AddElements { map: "service-ips".into(), elements: vec![("k".into(), "goto b".into())] },
            ]
        );
    }
}
