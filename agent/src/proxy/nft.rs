//! What the proxy needs of the kernel (`Nft`), its errors, and the read-back: `nft -j list table`, parsed
//! into the model. Transactions go through netlink (`kernel.rs`); the read-back stays with nft, whose JSON
//! already names what the model compares (rule comments, map elements in the renderer's text), and it runs
//! only when the ruleset's generation says someone else changed it. `list` and `run_script` are the nft runs the
//! policy enforcer applies its own table with.

use std::io::Write;
use std::net::SocketAddrV4;
use std::process::{Command, Stdio};

use serde_json::Value;

use super::compile::CompileError;
use super::nfnl::NfnlError;
use super::ruleset::{Chain, Map, Op, Rule, Ruleset, TABLE};

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("running nft: {0}")]
    Spawn(std::io::Error),
    #[error("nft {args}: {stderr}")]
    Failed { args: String, stderr: String },
    #[error("nft -j output: {0}")]
    Parse(String),
    #[error("nf_tables {0}")]
    Netlink(#[from] NfnlError),
    /// The kernel refused the transaction at `op` (nothing of it was applied).
    #[error("the kernel refused `{op}`: {reason}")]
    Refused { op: String, reason: String },
    /// Someone committed since the generation the transaction was planned against; nothing was applied.
    #[error("the ruleset changed since generation {0}")]
    GenerationMoved(u32),
    #[error("cannot encode {0}")]
    Unencodable(String),
    #[error(transparent)]
    Compile(#[from] CompileError),
}

/// What the proxy needs of the kernel: its table, read back; the ruleset's generation; a list of
/// operations, applied all or nothing.
pub trait Nft: Send {
    /// None when the table does not exist.
    fn read(&mut self) -> Result<Option<Ruleset>, NftError>;
    /// The ruleset's generation id: it moves on every commit, by anyone, to any table.
    fn generation(&mut self) -> Result<u32, NftError>;
    /// Applies `ops` in one transaction, if given only while the ruleset is still at `generation` (else
    /// `GenerationMoved`, nothing applied); returns the generation the transaction made, when known.
    fn apply(&mut self, ops: &[Op], generation: Option<u32>) -> Result<Option<u32>, NftError>;
}

/// The table as `nft -j list table` shows it, in the calling thread's network namespace.
pub fn list_table() -> Result<Option<Ruleset>, NftError> {
    let Some(out) = list(&["-j", "list", "table", "ip", TABLE])? else { return Ok(None) };
    let json: Value = serde_json::from_slice(&out).map_err(|e| NftError::Parse(e.to_string()))?;
    parse(&json).map(Some)
}

/// `nft ARGS` (a listing): its output, or None when the table does not exist. The policy enforcer reads
/// its own table through this too.
pub fn list(args: &[&str]) -> Result<Option<Vec<u8>>, NftError> {
    let out = Command::new("nft").args(args).stdin(Stdio::null()).output().map_err(NftError::Spawn)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("No such file or directory") {
            return Ok(None);
        }
        return Err(NftError::Failed { args: args.join(" "), stderr: stderr.trim().into() });
    }
    Ok(Some(out.stdout))
}

/// One `nft -f -` run of `text`: nft applies a whole file atomically.
pub fn run_script(text: &str) -> Result<(), NftError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    // Dropping stdin after the write closes it: nft reads to the end, then commits.
    let written = child.stdin.take().map(|mut stdin| stdin.write_all(text.as_bytes()));
    let out = child.wait_with_output().map_err(NftError::Spawn)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        // nft quotes the failing line; the first lines say enough.
        let stderr: Vec<&str> = stderr.lines().take(6).collect();
        return Err(NftError::Failed { args: "-f -".into(), stderr: stderr.join("\n") });
    }
    written.transpose().map_err(NftError::Spawn)?;
    Ok(())
}

/// `nft -j list table` output as a `Ruleset`: rules are known by their comment (the id `Rule::new` gave
/// them), map elements in the text form the renderer writes.
pub fn parse(json: &Value) -> Result<Ruleset, NftError> {
    let items = json["nftables"].as_array().ok_or_else(|| NftError::Parse("no `nftables` array".into()))?;
    let mut r = Ruleset::default();
    let name = |o: &Value, what: &str| -> Result<String, NftError> {
        o["name"].as_str().map(str::to_string).ok_or_else(|| NftError::Parse(format!("a {what} without a name")))
    };
    for item in items {
        if let Some(c) = item.get("chain") {
            let base = c.get("hook").map(|h| h.to_string());
            r.chains.entry(name(c, "chain")?).or_default().base = base;
        } else if let Some(s) = item.get("set").or_else(|| item.get("map")) {
            // Packets write a dynamic set's elements (the affinity sets, with a timeout): only its existence
            // is the agent's.
            let dynamic =
                s.get("timeout").is_some() || s["flags"].as_array().is_some_and(|f| f.iter().any(|f| f == "dynamic"));
            if dynamic {
                r.sets.insert(name(s, "set")?, String::new());
            } else {
                let elements = s["elem"].as_array().map(|e| e.iter().filter_map(element).collect()).unwrap_or_default();
                r.maps.insert(name(s, "map")?, Map { decl: String::new(), elements });
            }
        } else if let Some(rule) = item.get("rule") {
            let chain = rule["chain"].as_str().ok_or_else(|| NftError::Parse("a rule without a chain".into()))?;
            let mut parsed = Rule {
                // A rule someone added by hand has no comment: it never matches a wanted rule, so it goes.
                id: rule["comment"].as_str().unwrap_or_default().to_string(),
                text: String::new(),
                targets: Vec::new(),
                sets: Vec::new(),
                dnat: None,
            };
            walk(&rule["expr"], &mut parsed);
            r.chains.entry(chain.to_string()).or_insert_with(Chain::default).rules.push(parsed);
        }
    }
    Ok(r)
}

/// `[{"concat": ["10.96.0.10", "tcp", 80]}, {"goto": {"target": "service-x"}}]` -> (`10.96.0.10 . tcp . 80`,
/// `goto service-x`); `[0, {"concat": ["10.244.0.2", 8080]}]` -> (`0`, `10.244.0.2 . 8080`); a set's
/// `{"concat": ["10.244.0.2", "10.244.0.2"]}` -> (`10.244.0.2 . 10.244.0.2`, ``).
fn element(e: &Value) -> Option<(String, String)> {
    let scalar = |v: &Value| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    let text = |v: &Value| match v.get("concat").and_then(Value::as_array) {
        Some(parts) => parts.iter().map(scalar).collect::<Vec<_>>().join(" . "),
        None => scalar(v),
    };
    let [key, data] = e.as_array().map(Vec::as_slice).unwrap_or_default() else {
        return Some((text(e), String::new()));
    };
    match data.as_object()?.iter().next()? {
        (kind, target) if kind == "goto" || kind == "jump" => {
            Some((text(key), format!("{kind} {}", target["target"].as_str()?)))
        }
        _ => Some((text(key), text(data))),
    }
}

/// Collects a rule's jump/goto targets and DNAT destination wherever they sit in its expression tree.
fn walk(v: &Value, rule: &mut Rule) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| walk(i, rule)),
        Value::Object(o) => {
            for (k, inner) in o {
                match (k.as_str(), inner["target"].as_str()) {
                    ("goto" | "jump", Some(t)) => rule.targets.push(t.to_string()),
                    ("dnat", _) => {
                        let addr = inner["addr"].as_str().and_then(|a| a.parse().ok());
                        let port = inner["port"].as_u64().and_then(|p| u16::try_from(p).ok());
                        rule.dnat = addr.zip(port).map(|(a, p)| SocketAddrV4::new(a, p));
                        // `dnat ip to numgen ... map @endpoints-...`: the map it picks from.
                        walk(inner, rule);
                    }
                    _ => walk(inner, rule),
                }
            }
        }
        Value::String(s) => {
            if let Some(set) = s.strip_prefix('@') {
                rule.sets.push(set.to_string());
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_reads_back_as_the_model() {
        let json: Value = serde_json::from_str(
            r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": "ip", "name": "testbed-proxy"}},
            {"map": {"name": "service-ips", "elem": [[{"concat": ["10.96.0.10", "tcp", 80]}, {"goto": {"target": "service-a"}}]]}},
            {"set": {"name": "affinity-x", "type": "ipv4_addr", "timeout": 60}},
            {"chain": {"name": "nat-output", "hook": "output", "prio": -100}},
            {"chain": {"name": "service-a"}}, {"chain": {"name": "endpoint-a"}},
            {"rule": {"chain": "service-a", "comment": "c1", "expr": [{"vmap": {"key": {"numgen": {"mode": "random", "mod": 1}},
              "data": {"set": [[0, {"goto": {"target": "endpoint-a"}}]]}}}]}},
            {"rule": {"chain": "endpoint-a", "comment": "c2", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
              {"dnat": {"addr": "10.244.0.2", "port": 8080}}]}}]}"#,
        )
        .expect("json");
        let r = parse(&json).expect("parses");
        assert_eq!(r.maps["service-ips"].elements["10.96.0.10 . tcp . 80"], "goto service-a");
        assert!(r.sets.contains_key("affinity-x"));
        assert!(r.chains["nat-output"].base.is_some());
        assert_eq!(r.chains["service-a"].rules[0].targets, ["endpoint-a"]);
        assert_eq!(r.chains["service-a"].rules[0].id, "c1");
        assert_eq!(r.chains["endpoint-a"].rules[0].dnat, Some("10.244.0.2:8080".parse().expect("addr")));
    }

    #[test]
    fn endpoint_maps_and_the_hairpin_set_read_back_as_the_renderer_writes_them() {
        // nft 1.0.6's listing of both.
        let json: Value = serde_json::from_str(
            r#"{"nftables": [{"map": {"family": "ip", "name": "endpoints-a", "table": "t", "type": "integer", "handle": 4,
              "map": "ipv4_addr . inet_service", "elem": [[0, {"concat": ["10.0.0.1", 80]}], [1, {"concat": ["10.0.0.2", 81]}]]}},
            {"set": {"family": "ip", "name": "hairpin-endpoints", "table": "t", "type": ["ipv4_addr", "ipv4_addr"], "handle": 5,
              "elem": [{"concat": ["10.0.0.1", "10.0.0.1"]}]}},
            {"set": {"name": "affinity-x", "type": "ipv4_addr", "flags": ["timeout", "dynamic"], "elem": [{"elem": {"val": "10.1.1.1"}}]}}]}"#,
        )
        .expect("json");
        let r = parse(&json).expect("parses");
        let endpoints: Vec<_> = r.maps["endpoints-a"].elements.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(endpoints, [("0", "10.0.0.1 . 80"), ("1", "10.0.0.2 . 81")]);
        assert_eq!(r.maps["hairpin-endpoints"].elements["10.0.0.1 . 10.0.0.1"], "");
        assert!(r.sets.contains_key("affinity-x") && !r.maps.contains_key("affinity-x"));
    }
}
