//! Source positions for topology fields. serde_yaml's `Value` carries no positions, so the file is parsed a
//! second time with yaml-rust2's event parser into a small tree of marks; semantic errors found after
//! deserialization are then pinned to `line:column` by field path. The same pass rejects duplicate keys,
//! which serde's maps would silently collapse.

use std::fmt;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column, as editors and serde_yaml count them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    fn from_marker(m: &Marker) -> Pos {
        // yaml-rust2 lines are 1-based, columns 0-based.
        Pos { line: m.line(), column: m.col() + 1 }
    }
}

/// One step of a field path: a mapping key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A field path like `pods[0].containers[1].resources.limits.cpu`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(pub Vec<Seg>);

impl FieldPath {
    pub fn root() -> Self {
        FieldPath(Vec::new())
    }

    pub fn key(&self, k: &str) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_string()));
        p
    }

    pub fn index(&self, i: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }

    /// Appends a dotted path as produced by `testbed_api::validate` (`containers[0].resources.limits.cpu`).
    pub fn join_dotted(&self, dotted: &str) -> Self {
        let mut p = self.clone();
        for part in dotted.split('.').filter(|s| !s.is_empty()) {
            let (name, rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
            if !name.is_empty() {
                p.0.push(Seg::Key(name.to_string()));
            }
            for idx in rest.split('[') {
                if let Ok(i) = idx.trim_end_matches(']').parse::<usize>() {
                    p.0.push(Seg::Index(i));
                }
            }
        }
        p
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
enum Node {
    /// A scalar or an alias.
    Leaf(Pos),
    Seq(Pos, Vec<Node>),
    /// Entries: key text, key position, value.
    Map(Pos, Vec<(String, Pos, Node)>),
}

impl Node {
    fn pos(&self) -> Pos {
        match self {
            Node::Leaf(p) | Node::Seq(p, _) | Node::Map(p, _) => *p,
        }
    }
}

/// A syntax or duplicate-key problem found while building the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocateError {
    /// True for YAML syntax errors; false for well-formed YAML that a topology cannot be (duplicate keys,
    /// several documents).
    pub syntax: bool,
    pub pos: Pos,
    pub path: FieldPath,
    pub message: String,
}

/// Positions of every key and value of one YAML document.
#[derive(Debug)]
pub struct Locator {
    root: Option<Node>,
}

impl Locator {
    pub fn parse(source: &str) -> Result<Locator, LocateError> {
        let mut events = Vec::new();
        let mut parser = Parser::new_from_str(source);
        loop {
            match parser.next_token() {
                Ok((Event::StreamEnd, _)) => break,
                Ok((ev, mark)) => events.push((ev, Pos::from_marker(&mark))),
                Err(e) => {
                    return Err(LocateError {
                        syntax: true,
                        pos: Pos::from_marker(e.marker()),
                        path: FieldPath::root(),
                        message: format!("YAML syntax error: {}", e.info()),
                    })
                }
            }
        }
        let mut it = events.into_iter().peekable();
        let mut root = None;
        let mut document_start = Pos { line: 1, column: 1 };
        while let Some((ev, pos)) = it.next() {
            match ev {
                Event::DocumentStart => document_start = pos,
                Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
                other => {
                    if root.is_some() {
                        return Err(LocateError {
                            syntax: false,
                            pos: document_start,
                            path: FieldPath::root(),
                            message: "a topology file holds exactly one YAML document".into(),
                        });
                    }
                    root = Some(build(other, pos, &mut it, &FieldPath::root())?);
                }
            }
        }
        Ok(Locator { root })
    }

    /// Position of the value at `path`, or of the deepest part of it that exists in the file (a field that was
    /// left out is reported where its parent is). Containers are reported at their key, which is where
    /// people look.
    pub fn locate(&self, path: &FieldPath) -> Pos {
        let origin = Pos { line: 1, column: 1 };
        let Some(mut node) = self.root.as_ref() else { return origin };
        let mut best = node.pos();
        for seg in &path.0 {
            let next = match (node, seg) {
                (Node::Map(_, entries), Seg::Key(k)) => {
                    entries.iter().find(|(key, _, _)| key == k).map(|(_, kp, v)| {
                        let at = match v {
                            Node::Leaf(p) => *p,
                            _ => *kp,
                        };
                        (at, v)
                    })
                }
                (Node::Seq(_, items), Seg::Index(i)) => items.get(*i).map(|v| (v.pos(), v)),
                _ => None,
            };
            match next {
                Some((at, v)) => {
                    best = at;
                    node = v;
                }
                None => break,
            }
        }
        best
    }

    /// Position of the key at the end of `path` (for "this name is wrong" errors on map keys).
    pub fn locate_key(&self, path: &FieldPath) -> Pos {
        let Some((last, parent)) = path.0.split_last() else { return self.locate(path) };
        let parent = FieldPath(parent.to_vec());
        if let (Seg::Key(k), Some(Node::Map(_, entries))) = (last, self.node(&parent)) {
            if let Some((_, kp, _)) = entries.iter().find(|(key, _, _)| key == k) {
                return *kp;
            }
        }
        self.locate(path)
    }

    fn node(&self, path: &FieldPath) -> Option<&Node> {
        let mut node = self.root.as_ref()?;
        for seg in &path.0 {
            node = match (node, seg) {
                (Node::Map(_, entries), Seg::Key(k)) => {
                    entries.iter().find(|(key, _, _)| key == k).map(|(_, _, v)| v)?
                }
                (Node::Seq(_, items), Seg::Index(i)) => items.get(*i)?,
                _ => return None,
            };
        }
        Some(node)
    }
}

fn build(
    ev: Event,
    pos: Pos,
    it: &mut std::iter::Peekable<std::vec::IntoIter<(Event, Pos)>>,
    path: &FieldPath,
) -> Result<Node, LocateError> {
    let eof = |path: &FieldPath| LocateError {
        syntax: true,
        pos,
        path: path.clone(),
        message: "unexpected end of YAML".into(),
    };
    match ev {
        Event::MappingStart(..) => {
            let mut entries: Vec<(String, Pos, Node)> = Vec::new();
            loop {
                let (kev, kpos) = it.next().ok_or_else(|| eof(path))?;
                let key = match kev {
                    Event::MappingEnd => break,
                    Event::Scalar(text, ..) => text,
                    // Complex keys (a mapping as a key) never appear in a topology; serde rejects them later.
                    other => {
                        build(other, kpos, it, path)?;
                        String::new()
                    }
                };
                let (vev, vpos) = it.next().ok_or_else(|| eof(path))?;
                let child = path.key(&key);
                if let Some((_, first, _)) = entries.iter().find(|(k, _, _)| *k == key) {
                    return Err(LocateError {
                        syntax: false,
                        pos: kpos,
                        path: child,
                        message: format!("duplicate key `{key}` (first defined at line {})", first.line),
                    });
                }
                let value = build(vev, vpos, it, &child)?;
                entries.push((key, kpos, value));
            }
            // Block mappings report their start after the first key; the first key is where the mapping begins.
            let start = entries.first().map_or(pos, |(_, kp, _)| (*kp).min(pos));
            Ok(Node::Map(start, entries))
        }
        Event::SequenceStart(..) => {
            let mut items = Vec::new();
            loop {
                let (iev, ipos) = it.next().ok_or_else(|| eof(path))?;
                if iev == Event::SequenceEnd {
                    break;
                }
                items.push(build(iev, ipos, it, &path.index(items.len()))?);
            }
            Ok(Node::Seq(pos, items))
        }
        _ => Ok(Node::Leaf(pos)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "name: x\nnodes:\n  a:\n    cpus: foo\n  b: {memory: 1G}\npods:\n  - name: web\n    containers:\n      - {name: c, command: [sh]}\n";

    fn at(l: &Locator, dotted: &str) -> (usize, usize) {
        let p = l.locate(&FieldPath::root().join_dotted(dotted));
        (p.line, p.column)
    }

    #[test]
    fn locates_values_keys_and_items() {
        let l = Locator::parse(SRC).expect("parses");
        assert_eq!(at(&l, "name"), (1, 7));
        assert_eq!(at(&l, "nodes.a.cpus"), (4, 11));
        assert_eq!(at(&l, "nodes.a"), (3, 3));
        assert_eq!(at(&l, "nodes.b.memory"), (5, 15));
        assert_eq!(at(&l, "pods[0].name"), (7, 11));
        assert_eq!(at(&l, "pods[0].containers[0].command"), (9, 19));
        assert_eq!(at(&l, "pods[0].containers[0].command[0]"), (9, 29));
        // Missing parts fall back to the deepest existing parent.
        assert_eq!(at(&l, "nodes.b.cpus"), (5, 3));
        let k = l.locate_key(&FieldPath::root().key("nodes").key("b"));
        assert_eq!((k.line, k.column), (5, 3));
    }

    #[test]
    fn rejects_duplicate_keys_at_the_second_one() {
        let e = Locator::parse("name: x\nnodes:\n  a: {}\n  a: {}\n").expect_err("duplicate");
        assert_eq!((e.pos.line, e.pos.column), (4, 3));
        assert_eq!(e.path.to_string(), "nodes.a");
        assert!(e.message.contains("duplicate key `a`"), "{}", e.message);
    }

    #[test]
    fn dotted_paths_round_trip() {
        let p = FieldPath::root().key("pods").index(2).join_dotted("containers[1].resources.limits.cpu");
        assert_eq!(p.to_string(), "pods[2].containers[1].resources.limits.cpu");
    }
}
